//! `POST /restore`: what a request asks for, checked before anything is looked up, and what
//! a dry run reports.

use crate::config::DatabaseConfig;
use crate::faults::{Fault, FaultStage};
use crate::keys::{BackupKey, IsoWeek};
use crate::trigger::{ApiError, MAX_BODY_BYTES};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    backup: Option<String>,
    week: Option<String>,
    target: Option<String>,
    table: Option<String>,
    dry_run: Option<bool>,
    confirm: Option<String>,
    allow_unverified: Option<bool>,
    from: Option<String>,
    fault: Option<Fault>,
}

/// Where a restore reads the backup from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreFrom {
    /// R2: the backup's own object, or its weekly archive (`week`, or once retention deleted it).
    R2,
    /// The backup's copy in the off-site bucket (`OFFSITE`).
    Offsite,
}

/// A restore request, well formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequest {
    /// The backup's key, as `/list` shows it.
    pub backup: String,
    /// Read the backup from this week's archive instead of its own object.
    pub week: Option<String>,
    /// The configured database restored into.
    pub target: String,
    /// Restore this table alone.
    pub table: Option<String>,
    /// Report what would happen, change nothing (the default).
    pub dry_run: bool,
    /// The target's name again: required to restore over a database that holds anything.
    pub confirm: Option<String>,
    /// Restore a backup whose verification failed (refused otherwise).
    pub allow_unverified: bool,
    pub from: RestoreFrom,
    /// Fault injection (local and test stacks only).
    pub fault: Option<Fault>,
}

impl RestoreRequest {
    /// Whether the request carries the confirmation a restore over data needs.
    pub fn confirmed(&self) -> bool {
        self.confirm.as_deref() == Some(self.target.as_str())
    }
}

const USAGE: &str = "send {\"backup\": \"<key from GET /list>\", \"target\": \"<configured database>\"}, \
                     optionally with \"week\", \"table\", \"dryRun\" (default true), \"confirm\", \"allowUnverified\" \
                     and \"from\" (\"r2\" or \"offsite\")";

/// Checks a request body against the configured databases.
pub fn parse_restore_request(body: &[u8], configured: &[DatabaseConfig], faults_allowed: bool) -> Result<RestoreRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes")));
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_body", format!("the body is not a restore request ({e}); {USAGE}")))?;
    let backup = body.backup.ok_or_else(|| ApiError::new(400, "invalid_body", format!("\"backup\" is missing; {USAGE}")))?;
    if BackupKey::parse(&backup).is_none() {
        return Err(ApiError::new(
            400,
            "invalid_backup",
            "\"backup\" must be a backup key such as daily/2026-11-20/chinook.sql (see GET /list)",
        ));
    }
    if let Some(week) = &body.week {
        if IsoWeek::parse(week).is_none() {
            return Err(ApiError::new(400, "invalid_week", "\"week\" must be an ISO week such as 2026-W47"));
        }
    }
    let from = match body.from.as_deref() {
        None | Some("r2") => RestoreFrom::R2,
        Some("offsite") if body.week.is_some() => {
            return Err(ApiError::new(400, "invalid_body", "\"week\" reads a weekly archive in R2: it cannot go with \"from\": \"offsite\""))
        }
        Some("offsite") => RestoreFrom::Offsite,
        Some(other) => return Err(ApiError::new(400, "invalid_from", format!("\"from\" must be \"r2\" or \"offsite\", not {other:?}"))),
    };
    let target = body.target.ok_or_else(|| ApiError::new(400, "invalid_body", format!("\"target\" is missing; {USAGE}")))?;
    if !configured.iter().any(|d| d.name == target) {
        let names: Vec<&str> = configured.iter().map(|d| d.name.as_str()).collect();
        return Err(ApiError::new(
            422,
            "unknown_database",
            format!("target {target:?} is not a configured database; configured: {}", names.join(", ")),
        ));
    }
    if let Some(table) = &body.table {
        if table.is_empty() || table.len() > 1024 {
            return Err(ApiError::new(400, "invalid_table", "\"table\" must be a table name of 1 to 1024 bytes"));
        }
    }
    if body.fault.is_some() && !faults_allowed {
        return Err(ApiError::new(
            400,
            "fault_injection_disabled",
            "fault is for local and test stacks only; this deployment refuses it",
        ));
    }
    if body.fault.is_some_and(|f| f.stage != FaultStage::RestoreBatch) {
        return Err(ApiError::new(400, "invalid_fault", "a restore takes the restore_batch fault only"));
    }
    Ok(RestoreRequest {
        backup,
        week: body.week,
        target,
        table: body.table,
        dry_run: body.dry_run.unwrap_or(true),
        confirm: body.confirm,
        allow_unverified: body.allow_unverified.unwrap_or(false),
        from,
        fault: body.fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> Vec<DatabaseConfig> {
        ["chinook", "scratchpad"]
            .iter()
            .map(|n| DatabaseConfig { name: n.to_string(), binding: n.to_uppercase(), gzip: false, verify: true, recipients: Vec::new() })
            .collect()
    }

    #[test]
    fn a_dry_run_is_the_default_and_confirmation_names_the_target() {
        let r = parse_restore_request(br#"{"backup":"daily/2026-11-20/chinook.sql","target":"scratchpad"}"#, &configured(), false).unwrap();
        assert!(r.dry_run && !r.confirmed());
        let r = parse_restore_request(
            br#"{"backup":"daily/2026-11-20/chinook.sql.gz","target":"chinook","dryRun":false,"confirm":"chinook","table":"Track","week":"2026-W47"}"#,
            &configured(),
            false,
        )
        .unwrap();
        assert!(!r.dry_run && r.confirmed());
        assert_eq!(r.table.as_deref(), Some("Track"));
    }

    #[test]
    fn bad_requests_are_client_errors_with_a_reason() {
        for (body, status, code) in [
            (&b"not json"[..], 400, "invalid_body"),
            (br#"[]"#, 400, "invalid_body"),
            (br#"{"target":"chinook"}"#, 400, "invalid_body"),
            (br#"{"backup":"../etc/passwd","target":"chinook"}"#, 400, "invalid_backup"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql"}"#, 400, "invalid_body"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"nope"}"#, 422, "unknown_database"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","week":"2026-47"}"#, 400, "invalid_week"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","table":""}"#, 400, "invalid_table"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","dryRun":"no"}"#, 400, "invalid_body"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","force":true}"#, 400, "invalid_body"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","from":"s3"}"#, 400, "invalid_from"),
            (br#"{"backup":"daily/2026-11-20/chinook.sql","target":"chinook","from":"offsite","week":"2026-W47"}"#, 400, "invalid_body"),
        ] {
            let e = parse_restore_request(body, &configured(), false).unwrap_err();
            assert_eq!((e.status, e.code), (status, code), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
    }
}
