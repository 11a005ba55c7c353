//! Queue messages between the producer and the consumer.
//!
//! Every message carries a format version `v`; a consumer refuses versions it does not know
//! instead of guessing. Messages stay far below the Queues limit of 128 KB.

use crate::faults::Fault;
use crate::keys::BackupKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const MESSAGE_VERSION: u32 = 1;

/// Export one database for one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupMessage {
    pub v: u32,
    pub job_id: Uuid,
    pub database: String,
    pub kind: BackupKind,
    /// For a nightly run, the cron's scheduled time (which names the daily); for a manual
    /// run, the time of the request.
    pub requested_at: DateTime<Utc>,
    /// The export step this message runs: 0 starts the export, n > 0 continues it from the
    /// checkpoint that step n - 1 saved in the metadata database.
    #[serde(default)]
    pub step: u32,
    /// Fault injection, on local and test stacks only (see `faults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl BackupMessage {
    pub fn new(job_id: Uuid, database: &str, kind: BackupKind, requested_at: DateTime<Utc>) -> Self {
        BackupMessage { v: MESSAGE_VERSION, job_id, database: database.to_owned(), kind, requested_at, step: 0, fault: None }
    }

    /// The message that continues this export at `step`.
    pub fn continuation(&self, step: u32) -> BackupMessage {
        BackupMessage { step, ..self.clone() }
    }

    /// Parses a message body, refusing unknown versions.
    pub fn from_json(value: serde_json::Value) -> Result<BackupMessage, String> {
        parse_versioned(value, "backup")
    }
}

/// Checks the format version `v`, then parses the rest.
fn parse_versioned<T: serde::de::DeserializeOwned>(value: serde_json::Value, what: &str) -> Result<T, String> {
    let v = value.get("v").and_then(|v| v.as_u64());
    if v != Some(u64::from(MESSAGE_VERSION)) {
        return Err(format!("unsupported message version {v:?}, expected {MESSAGE_VERSION}"));
    }
    serde_json::from_value(value).map_err(|e| format!("malformed {what} message: {e}"))
}

/// Build (or continue building) one week's archive. The archiver's own queue carries these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveMessage {
    pub v: u32,
    pub job_id: Uuid,
    /// `YYYY-Www`.
    pub week: String,
    /// As for [`BackupMessage::step`].
    #[serde(default)]
    pub step: u32,
    /// Fault injection, on local and test stacks only (stages `r2_part` and `complete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl ArchiveMessage {
    pub fn new(job_id: Uuid, week: &str) -> Self {
        ArchiveMessage { v: MESSAGE_VERSION, job_id, week: week.to_owned(), step: 0, fault: None }
    }

    pub fn continuation(&self, step: u32) -> ArchiveMessage {
        ArchiveMessage { step, ..self.clone() }
    }

    /// Parses a message body, refusing unknown versions.
    pub fn from_json(value: serde_json::Value) -> Result<ArchiveMessage, String> {
        parse_versioned(value, "archive")
    }
}

/// Run (or continue) a verification or a restore, recorded in the metadata database's
/// `operations` table under `operation_id`. The consumer's `restore-jobs` queue carries these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationMessage {
    pub v: u32,
    pub operation_id: Uuid,
    /// As for [`BackupMessage::step`].
    #[serde(default)]
    pub step: u32,
}

impl OperationMessage {
    pub fn new(operation_id: Uuid) -> Self {
        OperationMessage { v: MESSAGE_VERSION, operation_id, step: 0 }
    }

    pub fn continuation(&self, step: u32) -> OperationMessage {
        OperationMessage { step, ..self.clone() }
    }

    /// Parses a message body, refusing unknown versions.
    pub fn from_json(value: serde_json::Value) -> Result<OperationMessage, String> {
        parse_versioned(value, "operation")
    }
}

/// Copy (or continue copying) one stored object off-site. The consumer's `offsite-jobs` queue
/// carries these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaMessage {
    pub v: u32,
    pub replica_id: Uuid,
    /// As for [`BackupMessage::step`].
    #[serde(default)]
    pub step: u32,
}

impl ReplicaMessage {
    pub fn new(replica_id: Uuid) -> Self {
        ReplicaMessage { v: MESSAGE_VERSION, replica_id, step: 0 }
    }

    pub fn continuation(&self, step: u32) -> ReplicaMessage {
        ReplicaMessage { step, ..self.clone() }
    }

    /// Parses a message body, refusing unknown versions.
    pub fn from_json(value: serde_json::Value) -> Result<ReplicaMessage, String> {
        parse_versioned(value, "replica")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trips_through_json_and_names_its_key() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap();
        let msg = BackupMessage::new(Uuid::nil(), "chinook", BackupKind::Daily, at);
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["jobId"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(BackupMessage::from_json(json).unwrap(), msg);
        let next = msg.continuation(3);
        assert_eq!(BackupMessage::from_json(serde_json::to_value(&next).unwrap()).unwrap().step, 3);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        assert!(BackupMessage::from_json(serde_json::json!({"v": 2})).is_err());
        assert!(BackupMessage::from_json(serde_json::json!("hello")).is_err());
        assert!(BackupMessage::from_json(serde_json::json!({"v": 1, "jobId": "x"})).is_err());
    }
}
