//! Configuration read from the Worker's vars.

use shared::config::{databases_from_map, DatabaseConfig, DatabaseEntry, ExportLimits, RetryPolicy};
use std::collections::BTreeMap;
use worker::Env;

/// The `DATABASES` var (see `shared::config`).
pub fn databases(env: &Env) -> worker::Result<Vec<DatabaseConfig>> {
    let map: BTreeMap<String, DatabaseEntry> = env
        .object_var("DATABASES")
        .map_err(|e| worker::Error::RustError(format!("DATABASES var is missing or malformed: {e}")))?;
    databases_from_map(map).map_err(|e| worker::Error::RustError(e.to_string()))
}

/// The `EXPORT_*` vars (see `shared::config::ExportLimits`).
pub fn export_limits(env: &Env) -> worker::Result<ExportLimits> {
    ExportLimits::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| worker::Error::RustError(e.to_string()))
}

/// The `RETRY_*` vars (see `shared::config::RetryPolicy`).
pub fn retry_policy(env: &Env) -> worker::Result<RetryPolicy> {
    RetryPolicy::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| worker::Error::RustError(e.to_string()))
}

/// The `RETENTION_*` vars (see `shared::config::retention_policy_from_vars`).
pub fn retention_policy(env: &Env) -> worker::Result<shared::retention::RetentionPolicy> {
    shared::config::retention_policy_from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| worker::Error::RustError(e.to_string()))
}

/// The `ARCHIVE_*` vars (see `shared::config::ArchiveLimits`).
pub fn archive_limits(env: &Env) -> worker::Result<shared::config::ArchiveLimits> {
    shared::config::ArchiveLimits::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| worker::Error::RustError(e.to_string()))
}

/// `VERIFY_MAX_MB` and `OPERATION_MAX_ATTEMPTS` (see `shared::config::OperationLimits`).
pub fn operation_limits(env: &Env) -> worker::Result<shared::config::OperationLimits> {
    shared::config::OperationLimits::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| worker::Error::RustError(e.to_string()))
}
