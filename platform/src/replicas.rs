//! Off-site copies in the metadata database (`replicas`, migration 0010): one task per stored
//! object, queued in the same fenced batch that records the object, so a backup or archive is
//! never recorded without its copy being due.

use crate::meta::{number, opt_text, statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::keys::StoredFormat;
use shared::message::ReplicaMessage;
use shared::offsite::{OffsiteConfig, OffsiteRetention, ReplicaPlan};
use shared::ports::ObjectStore;
use shared::task::TaskState;
use uuid::Uuid;
use worker::{D1Database, D1PreparedStatement, Env, Result};

/// What kind of object a copy is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Backup,
    Archive,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Backup => "backup",
            ObjectKind::Archive => "archive",
        }
    }
}

/// A copy as the consumer works from it and the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct ReplicaView {
    pub id: String,
    pub source_key: String,
    pub object_kind: ObjectKind,
    pub offsite_key: String,
    pub state: TaskState,
    pub step: u32,
    pub attempts: u32,
    #[serde(skip_serializing)]
    pub failures: u32,
    pub bytes: u64,
    pub sha256: String,
    pub etag: Option<String>,
    pub error: Option<String>,
    pub stored_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip_serializing)]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing)]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing)]
    pub lease_until: Option<String>,
}

impl ReplicaView {
    /// The copy as a task of the engine.
    pub fn task(&self) -> shared::task::TaskRecord {
        let (owner, until) = (self.lease_owner.as_deref(), self.lease_until.as_deref());
        crate::tasks::task_record(&self.id, self.state, self.step, self.attempts, self.failures, owner, until)
    }

    /// What the consumer copies, with `config`'s part size.
    pub fn plan(&self, config: &OffsiteConfig) -> ReplicaPlan {
        ReplicaPlan {
            source_key: self.source_key.clone(),
            offsite_key: self.offsite_key.clone(),
            bytes: self.bytes,
            sha256: self.sha256.clone(),
            content_type: StoredFormat::of(&self.source_key).content_type().into(),
            part_size: config.part_size,
        }
    }
}

const COLUMNS: &str = "id, source_key, object_kind, offsite_key, state, step, attempts, failures, bytes, sha256, etag, \
                       error, stored_at, started_at, finished_at, checkpoint, lease_owner, lease_until";

pub async fn get_replica(db: &D1Database, id: &str) -> Result<Option<ReplicaView>> {
    statement(db, &format!("SELECT {COLUMNS} FROM replicas WHERE id = ?1"), &[text(id)])?.first(None).await
}

/// With `OFFSITE` configured, adds to `batch` (the one that records the stored object) the
/// statement queueing its copy, and returns the copy's id; `None` without it. An object already
/// queued (its recording retried) keeps its first copy.
#[allow(clippy::too_many_arguments)]
pub fn queue_copy(
    db: &D1Database,
    batch: &mut Vec<D1PreparedStatement>,
    offsite: Option<&OffsiteConfig>,
    kind: ObjectKind,
    key: &str,
    bytes: u64,
    sha256: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let Some(config) = offsite else { return Ok(None) };
    let id = Uuid::new_v4().to_string();
    let now = timestamp(now);
    batch.push(statement(
        db,
        "INSERT INTO replicas (id, source_key, object_kind, offsite_key, state, bytes, sha256, stored_at, queued_at, \
           updated_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?7, ?7, ?7) \
         ON CONFLICT (source_key) DO NOTHING",
        &[text(&id), text(key), text(kind.as_str()), text(&config.offsite_key(key)), number(bytes), text(sha256), text(&now)],
    )?);
    Ok(Some(id))
}

/// Sends the first message of a copy just recorded. A lost send strands nothing: the sweeper
/// sends the message of every copy that is due.
pub async fn send_first(env: &Env, id: &str) {
    let Ok(replica_id) = Uuid::parse_str(id) else { return };
    let sent = match env.queue(crate::bindings::OFFSITE_QUEUE) {
        Ok(queue) => queue.send(ReplicaMessage::new(replica_id)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        worker::console_error!("replica {id}: sending its first message failed ({e}); the sweeper will");
    }
}

/// The copy's result, for its last step's fenced batch.
pub fn copied_statement(db: &D1Database, id: &str, etag: Option<&str>) -> Result<D1PreparedStatement> {
    statement(db, "UPDATE replicas SET etag = ?2 WHERE id = ?1", &[text(id), opt_text(etag)])
}

/// The alert of a copy that failed for good, for its dead batch.
/// `attempts`: the dying delivery's attempt (the view was read before its lease was taken).
pub fn dead_alert(db: &D1Database, replica: &ReplicaView, attempts: u32, error: &str, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(
        db,
        "INSERT INTO alerts (kind, message, subject, created_at) VALUES ('replica_dead', ?1, ?2, ?3) \
         ON CONFLICT DO NOTHING",
        &[
            text(&format!(
                "the off-site copy of {} failed for good after {attempts} attempts: {error} (the backup itself is intact in R2)",
                replica.source_key
            )),
            text(&replica.source_key),
            text(&timestamp(now)),
        ],
    )
}

/// Mirrored retention: deletes off-site the copies whose local object retention deleted more
/// than the grace period ago (never under `append-only`), a bounded number per call, and
/// records each deletion. Only a copy this system made is deleted, at the key it recorded.
/// Returns the keys deleted off-site.
pub async fn prune<D: ObjectStore>(db: &D1Database, dest: &mut D, config: &OffsiteConfig, now: DateTime<Utc>) -> Result<Vec<String>> {
    /// Deletions per call: a call stays well inside one invocation's subrequests.
    const PRUNE_LIMIT: u64 = 50;
    let OffsiteRetention::Mirror { grace_days } = config.retention else { return Ok(Vec::new()) };
    #[derive(Deserialize)]
    struct Due {
        id: String,
        offsite_key: String,
        local_deleted_at: String,
    }
    let cutoff = timestamp(now - chrono::Duration::days(i64::from(grace_days)));
    let due: Vec<Due> = statement(
        db,
        "SELECT r.id, r.offsite_key, coalesce(b.deleted_at, a.deleted_at) AS local_deleted_at FROM replicas AS r \
           LEFT JOIN backups AS b ON r.object_kind = 'backup' AND b.key = r.source_key \
           LEFT JOIN archives AS a ON r.object_kind = 'archive' AND a.key = r.source_key \
         WHERE r.state = 'succeeded' AND r.deleted_at IS NULL AND coalesce(b.deleted_at, a.deleted_at) <= ?1 \
         ORDER BY local_deleted_at LIMIT ?2",
        &[text(&cutoff), number(PRUNE_LIMIT)],
    )?
    .all()
    .await?
    .results()?;
    let mut deleted = Vec::new();
    for copy in due {
        dest.delete(&copy.offsite_key).await.map_err(|e| worker::Error::RustError(e.message))?;
        let reason = format!("mirrored retention: deleted locally at {}, {grace_days} days' grace", copy.local_deleted_at);
        statement(
            db,
            "UPDATE replicas SET deleted_at = ?2, delete_reason = ?3, updated_at = ?2 WHERE id = ?1",
            &[text(&copy.id), text(&timestamp(now)), text(&reason)],
        )?
        .run()
        .await?;
        deleted.push(copy.offsite_key);
    }
    Ok(deleted)
}

/// Off-site copies at a glance, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct ReplicationSummary {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Queued, running or retrying.
    pub pending: u64,
    pub dead: u64,
    /// When the oldest object not yet copied was stored.
    pub oldest_pending_stored_at: Option<String>,
    pub last_copied_at: Option<String>,
    /// The newest failure, of a dead or a retrying copy.
    pub last_error: Option<String>,
    pub last_error_key: Option<String>,
}

impl ReplicationSummary {
    /// Seconds the oldest object not yet off-site has waited (0 when everything is copied).
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> u64 {
        self.oldest_pending_stored_at
            .as_deref()
            .and_then(shared::task::parse_timestamp)
            .map_or(0, |t| (now - t).num_seconds().max(0) as u64)
    }
}

pub async fn summary(db: &D1Database) -> Result<ReplicationSummary> {
    let row: Option<ReplicationSummary> = statement(
        db,
        "SELECT \
           (SELECT count(*) FROM replicas WHERE state = 'succeeded' AND deleted_at IS NULL) AS copied, \
           (SELECT coalesce(sum(bytes), 0) FROM replicas WHERE state = 'succeeded' AND deleted_at IS NULL) AS copied_bytes, \
           (SELECT count(*) FROM replicas WHERE state IN ('queued', 'running', 'retrying')) AS pending, \
           (SELECT count(*) FROM replicas WHERE state = 'dead') AS dead, \
           (SELECT min(stored_at) FROM replicas WHERE state NOT IN ('succeeded')) AS oldest_pending_stored_at, \
           (SELECT max(finished_at) FROM replicas WHERE state = 'succeeded') AS last_copied_at, \
           (SELECT error FROM replicas WHERE error IS NOT NULL AND state IN ('dead', 'retrying') \
              ORDER BY updated_at DESC LIMIT 1) AS last_error, \
           (SELECT source_key FROM replicas WHERE error IS NOT NULL AND state IN ('dead', 'retrying') \
              ORDER BY updated_at DESC LIMIT 1) AS last_error_key",
        &[],
    )?
    .first(None)
    .await?;
    Ok(row.unwrap_or_default())
}
