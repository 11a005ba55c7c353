//! Configuration read from the Worker's vars.

use shared::config::{databases_from_map, DatabaseConfig};
use std::collections::BTreeMap;
use worker::Env;

/// The `DATABASES` var: database name → D1 binding name (see `shared::config`).
pub fn databases(env: &Env) -> worker::Result<Vec<DatabaseConfig>> {
    let map: BTreeMap<String, String> = env
        .object_var("DATABASES")
        .map_err(|e| worker::Error::RustError(format!("DATABASES var is missing or malformed: {e}")))?;
    databases_from_map(map).map_err(|e| worker::Error::RustError(e.to_string()))
}
