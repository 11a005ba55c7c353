//! Archive jobs, weekly archives and their members in the META database, and the retention
//! cleanup that acts on the inventory (used by the archiver and by `POST /cleanup`).

use crate::meta::{changed_one, number, opt_text, statement, text, timestamp, Trigger};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use shared::archive::{ArchiveMember, ArchiveSummary};
use shared::keys::IsoWeek;
use shared::task::TaskState;
use shared::message::ArchiveMessage;
use shared::ports::ObjectStore;
use shared::restore::verify::VerifyState;
use shared::retention::{plan_retention, Decision, RetentionPolicy, StoredKind, StoredObject};
use uuid::Uuid;
use worker::{D1Database, D1PreparedStatement, Result};

/// Records the archive job for `week` (or finds the unfinished one) and queues its first step.
pub async fn enqueue_archive(
    env: &worker::Env,
    week: IsoWeek,
    trigger: Trigger,
    fault: Option<shared::faults::Fault>,
) -> Result<(Uuid, bool)> {
    let db = env.d1(crate::bindings::META)?;
    let (job_id, created) = create_archive_job(&db, week, trigger, crate::now()).await?;
    if created {
        let mut message = ArchiveMessage::new(job_id, &week.label());
        message.fault = fault;
        // The job is recorded and due: if this send is lost, the sweeper sends it.
        if let Err(e) = env.queue(crate::bindings::ARCHIVE_QUEUE)?.send(message).await {
            worker::console_error!("archive job {job_id}: sending its first message failed ({e}); the sweeper will send it");
        }
    }
    Ok((job_id, created))
}

/// Records a queued archive job for `week`, unless one is unfinished already: returns the
/// job to follow and whether it is new.
pub async fn create_archive_job(
    db: &D1Database,
    week: IsoWeek,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<(Uuid, bool)> {
    let id = Uuid::new_v4();
    let at = timestamp(now);
    let inserted = statement(
        db,
        "INSERT INTO archive_jobs (id, week, trigger, state, r2_key, requested_at, queued_at, updated_at, next_attempt_at) \
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?5, ?5, ?5) ON CONFLICT DO NOTHING",
        &[text(&id.to_string()), text(&week.label()), text(trigger.as_str()), text(&week.archive_key()), text(&at)],
    )?
    .run()
    .await?;
    if changed_one(&inserted)? {
        return Ok((id, true));
    }
    #[derive(Deserialize)]
    struct Row {
        id: String,
    }
    let active: Option<Row> = statement(
        db,
        "SELECT id FROM archive_jobs WHERE week = ?1 AND state IN ('queued', 'running', 'retrying')",
        &[text(&week.label())],
    )?
    .first(None)
    .await?;
    match active.and_then(|r| Uuid::parse_str(&r.id).ok()) {
        Some(existing) => Ok((existing, false)),
        // The unfinished job finished between the two statements: try once more.
        None => Box::pin(create_archive_job(db, week, trigger, now)).await,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct ArchiveJobView {
    pub id: String,
    pub week: String,
    pub trigger: String,
    pub state: TaskState,
    pub outcome: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing)]
    pub failures: u32,
    pub step: u32,
    pub r2_key: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub members: Option<u64>,
    pub excluded: Option<u64>,
    /// The retention cleanup that followed, as JSON text (shown parsed by the API).
    #[serde(skip_serializing)]
    pub cleanup: Option<String>,
    pub error: Option<String>,
    pub requested_at: String,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip_serializing)]
    pub checkpoint: Option<String>,
    /// The task engine's lease (see `tasks::task_record`); internal.
    #[serde(default, skip_serializing)]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing)]
    pub lease_until: Option<String>,
}

impl ArchiveJobView {
    /// The job as a task of the engine.
    pub fn task(&self) -> shared::task::TaskRecord {
        let (owner, until) = (self.lease_owner.as_deref(), self.lease_until.as_deref());
        crate::tasks::task_record(&self.id, self.state, self.step, self.attempts, self.failures, owner, until)
    }

    /// The API's view: a job like backup jobs (`jobId`, `kind`, `status`) with the archive.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        let status = match self.state {
            TaskState::Succeeded => "completed",
            TaskState::Dead | TaskState::Failed => "failed",
            TaskState::Queued | TaskState::Running | TaskState::Retrying => "running",
        };
        if let Some(object) = value.as_object_mut() {
            object.insert("jobId".into(), self.id.clone().into());
            object.insert("kind".into(), "archive".into());
            object.insert("status".into(), status.into());
            let cleanup = self.cleanup.as_deref().and_then(|c| serde_json::from_str(c).ok());
            object.insert("cleanup".into(), cleanup.unwrap_or(serde_json::Value::Null));
        }
        value
    }
}

const ARCHIVE_JOB_COLUMNS: &str = "id, week, trigger, state, outcome, attempts, failures, step, r2_key, bytes, sha256, \
                                   members, excluded, cleanup, error, requested_at, queued_at, started_at, \
                                   finished_at, checkpoint, lease_owner, lease_until";

pub async fn get_archive_job(db: &D1Database, id: &Uuid) -> Result<Option<ArchiveJobView>> {
    statement(
        db,
        &format!("SELECT {ARCHIVE_JOB_COLUMNS} FROM archive_jobs WHERE id = ?1"),
        &[text(&id.to_string())],
    )?
    .first(None)
    .await
}

/// The alert of an archive job that died (in the batch that records its death).
pub fn archive_dead_alert(db: &D1Database, job: &ArchiveJobView, error: &str, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(
        db,
        "INSERT INTO alerts (kind, job_id, message, created_at) VALUES ('archive_dead', ?1, ?2, ?3)",
        &[text(&job.id), text(&format!("weekly archive of {} is dead: {error}", job.week)), text(&timestamp(now))],
    )
}

/// The outcome of a job that had nothing to write (`already_archived`, `nothing_to_archive`),
/// for its fenced batch with the task's `finish`.
pub fn no_archive_statement(db: &D1Database, id: &Uuid, outcome: &str) -> Result<D1PreparedStatement> {
    statement(
        db,
        "UPDATE archive_jobs SET outcome = ?2, members = 0, excluded = 0 WHERE id = ?1",
        &[text(&id.to_string()), text(outcome)],
    )
}

/// The rows of a verified archive: the job's outcome, the inventory row, every member and every
/// daily left out (with an alert each), for the last step's fenced batch.
pub fn archive_statements(
    db: &D1Database,
    id: &Uuid,
    week: &str,
    summary: &ArchiveSummary,
    now: DateTime<Utc>,
) -> Result<Vec<D1PreparedStatement>> {
    let at = timestamp(now);
    let job_id = id.to_string();
    let mut statements = vec![
        statement(
            db,
            "UPDATE archive_jobs SET outcome = 'archived', bytes = ?2, sha256 = ?3, members = ?4, excluded = ?5, \
               step = ?6 WHERE id = ?1",
            &[
                text(&job_id),
                number(summary.bytes),
                text(&summary.sha256),
                number(summary.members.len() as u64),
                number(summary.excluded.len() as u64),
                number(u64::from(summary.steps)),
            ],
        )?,
        statement(db, "DELETE FROM archive_members WHERE archive_key = ?1", &[text(&summary.key)])?,
        statement(
            db,
            "INSERT INTO archives (key, week, date, job_id, bytes, sha256, members, excluded, created_at, verified_at) \
             VALUES (?1, ?2, ?9, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, bytes = excluded.bytes, \
               sha256 = excluded.sha256, members = excluded.members, excluded = excluded.excluded, \
               created_at = excluded.created_at, verified_at = excluded.verified_at, deleted_at = NULL, \
               delete_reason = NULL",
            &[
                text(&summary.key),
                text(week),
                text(&job_id),
                number(summary.bytes),
                text(&summary.sha256),
                number(summary.members.len() as u64),
                number(summary.excluded.len() as u64),
                text(&at),
                text(&IsoWeek::parse(week).map(|w| w.last_day().format("%Y-%m-%d").to_string()).unwrap_or_default()),
            ],
        )?,
    ];
    let member_row = |m: &ArchiveMember, path: Option<&str>, reason: Option<&str>| {
        statement(
            db,
            "INSERT INTO archive_members (archive_key, source_key, path, database, date, bytes, sha256, rows, \
               excluded_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[
                text(&summary.key),
                text(&m.source_key),
                opt_text(path),
                text(&m.database),
                text(&m.date.format("%Y-%m-%d").to_string()),
                number(m.bytes),
                text(&m.sha256),
                number(m.rows),
                opt_text(reason),
            ],
        )
    };
    for member in &summary.members {
        statements.push(member_row(member, Some(&member.path), None)?);
    }
    for excluded in &summary.excluded {
        statements.push(member_row(&excluded.member, None, Some(&excluded.reason))?);
        statements.push(statement(
            db,
            "INSERT INTO alerts (kind, job_id, database, message, details, created_at) \
             VALUES ('archive_member_bad', ?1, ?2, ?3, ?4, ?5)",
            &[
                text(&job_id),
                text(&excluded.member.database),
                text(&format!(
                    "{} was left out of {}: {}",
                    excluded.member.source_key, summary.key, excluded.reason
                )),
                text(&serde_json::json!({ "sourceKey": excluded.member.source_key, "reason": excluded.reason }).to_string()),
                text(&at),
            ],
        )?);
    }
    Ok(statements)
}

/// The report of the retention cleanup that followed the archive.
pub fn cleanup_report_statement(db: &D1Database, id: &Uuid, report: &CleanupReport) -> Result<D1PreparedStatement> {
    statement(
        db,
        "UPDATE archive_jobs SET cleanup = ?2 WHERE id = ?1",
        &[text(&id.to_string()), text(&serde_json::to_string(report).unwrap_or_default())],
    )
}

/// The SHA-256 of `week`'s live archive, if it has one.
pub async fn live_archive(db: &D1Database, week: IsoWeek) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct Row {
        sha256: String,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT sha256 FROM archives WHERE key = ?1 AND deleted_at IS NULL",
        &[text(&week.archive_key())],
    )?
    .first(None)
    .await?;
    Ok(row.map(|r| r.sha256))
}

/// The week's live dailies as archive members, sorted by path.
pub async fn week_dailies(db: &D1Database, week: IsoWeek) -> Result<Vec<ArchiveMember>> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        database: String,
        date: String,
        bytes: u64,
        sha256: String,
        rows: u64,
        tables: u64,
        created_at: String,
    }
    let rows: Vec<Row> = statement(
        db,
        "SELECT key, database, date, bytes, sha256, rows, tables, created_at FROM backups \
         WHERE kind = 'daily' AND deleted_at IS NULL AND date BETWEEN ?1 AND ?2 ORDER BY key",
        &[
            text(&week.first_day().format("%Y-%m-%d").to_string()),
            text(&week.last_day().format("%Y-%m-%d").to_string()),
        ],
    )?
    .all()
    .await?
    .results()?;
    let mut members: Vec<ArchiveMember> = rows
        .into_iter()
        .filter_map(|r| {
            Some(ArchiveMember {
                path: ArchiveMember::path_for(&r.key)?,
                date: NaiveDate::parse_from_str(&r.date, "%Y-%m-%d").ok()?,
                mtime: DateTime::parse_from_rfc3339(&r.created_at).map(|t| t.timestamp()).unwrap_or(0),
                source_key: r.key,
                database: r.database,
                bytes: r.bytes,
                sha256: r.sha256,
                rows: r.rows,
                tables: r.tables,
            })
        })
        .collect();
    members.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(members)
}

/// What a cleanup did: every live object with the decision taken, and what failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    pub policy: Option<RetentionPolicy>,
    pub today: Option<NaiveDate>,
    pub deleted: Vec<Decision>,
    pub kept: Vec<Decision>,
    /// Deletions that failed (left in place, retried by the next cleanup).
    pub errors: Vec<String>,
}

/// Applies retention: decides from the inventory, deletes from R2 first, then marks the
/// inventory row deleted (a failure in between leaves a row the next cleanup deletes again,
/// never an object the inventory forgot).
pub async fn run_cleanup<O: ObjectStore>(
    db: &D1Database,
    store: &mut O,
    policy: RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<CleanupReport> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        kind: String,
        database: Option<String>,
        date: String,
        created_at: String,
        archived_in: Option<String>,
        verify_state: Option<VerifyState>,
    }
    // A daily counts as archived only in a live archive that holds it as a member (not one
    // that left it out).
    let rows: Vec<Row> = db
        .prepare(
            "SELECT b.key, b.kind, b.database, b.date, b.created_at, \
               (SELECT a.key FROM archive_members m JOIN archives a ON a.key = m.archive_key \
                 WHERE m.source_key = b.key AND m.path IS NOT NULL AND m.sha256 = b.sha256 \
                   AND a.deleted_at IS NULL ORDER BY a.key LIMIT 1) AS archived_in, \
               (SELECT r.verify_state FROM runs r WHERE r.id = b.run_id) AS verify_state \
             FROM backups b WHERE b.deleted_at IS NULL \
             UNION ALL \
             SELECT key, 'weekly', NULL, date, created_at, NULL, NULL FROM archives WHERE deleted_at IS NULL",
        )
        .all()
        .await?
        .results()?;
    let objects: Vec<StoredObject> = rows
        .into_iter()
        .filter_map(|r| {
            let (kind, date) = match r.kind.as_str() {
                "daily" => (StoredKind::Daily, NaiveDate::parse_from_str(&r.date, "%Y-%m-%d").ok()?),
                "manual" => (StoredKind::Manual, NaiveDate::parse_from_str(&r.date, "%Y-%m-%d").ok()?),
                "weekly" => (StoredKind::Weekly, NaiveDate::parse_from_str(&r.date, "%Y-%m-%d").ok()?),
                _ => return None,
            };
            Some(StoredObject {
                key: r.key,
                kind,
                database: r.database,
                date,
                created_at: DateTime::parse_from_rfc3339(&r.created_at).ok()?.with_timezone(&Utc),
                archived_in: r.archived_in,
                verify: r.verify_state,
            })
        })
        .collect();
    let today = now.date_naive();
    let mut report = CleanupReport { policy: Some(policy), today: Some(today), ..CleanupReport::default() };
    for (decision, object) in plan_retention(&objects, today, policy).into_iter().zip(&objects) {
        if !decision.delete {
            report.kept.push(decision);
            continue;
        }
        if let Err(e) = store.delete(&decision.key).await {
            report.errors.push(format!("{}: {e}", decision.key));
            continue;
        }
        let table = if object.kind == StoredKind::Weekly { "archives" } else { "backups" };
        statement(
            db,
            &format!("UPDATE {table} SET deleted_at = ?2, delete_reason = ?3 WHERE key = ?1 AND deleted_at IS NULL"),
            &[text(&decision.key), text(&timestamp(now)), text(&decision.reason)],
        )?
        .run()
        .await?;
        report.deleted.push(decision);
    }
    Ok(report)
}

