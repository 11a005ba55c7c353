//! Configuration read from the Worker's vars: once per invocation, into one typed value.

use shared::config::{DatabaseEntry, Settings};
use std::collections::BTreeMap;
use worker::Env;

/// Every setting of this Worker (see `shared::config::Settings`). The entry points call this
/// once and pass the value down; nothing else reads vars.
pub fn settings(env: &Env) -> worker::Result<Settings> {
    let declared = worker::js_sys::Reflect::get(env, &"DATABASES".into()).map(|v| !v.is_undefined()).unwrap_or(false);
    let databases: Option<BTreeMap<String, DatabaseEntry>> = match declared {
        // Absent: a Worker that backs up nothing itself (the archiver).
        false => None,
        true => Some(
            env.object_var("DATABASES")
                .map_err(|e| worker::Error::RustError(format!("DATABASES var is malformed: {e}")))?,
        ),
    };
    let settings = Settings::from_vars(|name| env.var(name).ok().map(|v| v.to_string()), databases)
        .and_then(|settings| {
            settings.check_bindings(|name| {
                worker::js_sys::Reflect::get(env, &name.into()).map(|v| !v.is_undefined()).unwrap_or(false)
            })?;
            Ok(settings)
        })
        .map_err(|e| worker::Error::RustError(format!("configuration: {e}")))?;
    Ok(settings)
}
