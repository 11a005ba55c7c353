//! The metadata store: jobs, runs and the backup inventory in the META D1 database.
//! The schema lives in `migrations/`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::backup::BackupSummary;
use shared::keys::{BackupKey, BackupKind};
use shared::ports::{PortError, PortErrorKind};
use shared::state::{job_status, JobStatus};
use shared::task::{dead_sql, TaskKind, TaskState};
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Result};

pub use shared::task::timestamp;

pub(crate) fn statement(db: &D1Database, sql: &str, params: &[JsValue]) -> Result<D1PreparedStatement> {
    db.prepare(sql).bind(params)
}

pub(crate) fn text(s: &str) -> JsValue {
    JsValue::from_str(s)
}

pub(crate) fn opt_text(s: Option<&str>) -> JsValue {
    s.map(JsValue::from_str).unwrap_or(JsValue::NULL)
}

/// Whether a statement changed exactly one row (an insert or update that took effect).
pub(crate) fn changed_one(result: &worker::D1Result) -> Result<bool> {
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) == 1)
}

pub(crate) fn number(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Cron,
    Http,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Http => "http",
        }
    }
}

pub struct NewJob<'a> {
    pub id: Uuid,
    pub kind: BackupKind,
    pub trigger: Trigger,
    pub reason: Option<&'a str>,
    pub requested_at: DateTime<Utc>,
    /// Where each database's dump of this job goes.
    pub keys: &'a [BackupKey],
}

/// Records a job and one queued run per database, atomically.
/// An `Idempotency-Key` and the SHA-256 of the request it came with.
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_sha256: &'a str,
}

/// How long an `Idempotency-Key` holds its job.
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// Records a job and its queued runs in one transaction. Returns `false`, recording nothing,
/// when the job already exists in another form: its night's nightly job, or a job under the
/// same idempotency key (see [`find_idempotent_job`] and [`nightly_job`]).
pub async fn create_job(
    db: &D1Database,
    job: &NewJob<'_>,
    idempotency: Option<&Idempotency<'_>>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let created = timestamp(now);
    let mut statements = Vec::new();
    if let Some(idem) = idempotency {
        let expired = timestamp(now - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS));
        statements.push(statement(
            db,
            "DELETE FROM idempotency_keys WHERE key = ?1 AND created_at < ?2",
            &[text(idem.key), text(&expired)],
        )?);
    }
    statements.push(statement(
        db,
        "INSERT INTO jobs (id, kind, trigger, reason, requested_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            text(&job.id.to_string()),
            text(job.kind.as_str()),
            text(job.trigger.as_str()),
            opt_text(job.reason),
            text(&timestamp(job.requested_at)),
            text(&created),
        ],
    )?);
    if let Some(idem) = idempotency {
        statements.push(statement(
            db,
            "INSERT INTO idempotency_keys (key, job_id, request_sha256, created_at) VALUES (?1, ?2, ?3, ?4)",
            &[text(idem.key), text(&job.id.to_string()), text(idem.request_sha256), text(&created)],
        )?);
    }
    for key in job.keys {
        statements.push(statement(
            db,
            "INSERT INTO runs (id, job_id, database, state, attempts, r2_key, queued_at, updated_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?5, ?5)",
            &[
                text(&Uuid::new_v4().to_string()),
                text(&job.id.to_string()),
                text(&key.database),
                text(&key.to_key()),
                text(&created),
            ],
        )?);
    }
    match db.batch(statements).await {
        Ok(_) => Ok(true),
        // The batch is one transaction: a duplicate nightly or idempotency key (the only
        // constraints these inserts can break) leaves nothing.
        Err(e) if PortError::from_d1_message(e.to_string()).kind == PortErrorKind::Rejected => Ok(false),
        Err(e) => Err(e),
    }
}

/// The job recorded under an unexpired idempotency key, with its request's SHA-256.
pub async fn find_idempotent_job(db: &D1Database, key: &str, now: DateTime<Utc>) -> Result<Option<(Uuid, String)>> {
    #[derive(Deserialize)]
    struct Row {
        job_id: String,
        request_sha256: String,
    }
    let expired = timestamp(now - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS));
    let row: Option<Row> = statement(
        db,
        "SELECT job_id, request_sha256 FROM idempotency_keys WHERE key = ?1 AND created_at >= ?2",
        &[text(key), text(&expired)],
    )?
    .first(None)
    .await?;
    Ok(row.and_then(|r| Some((Uuid::parse_str(&r.job_id).ok()?, r.request_sha256))))
}

/// The key and SHA-256 of `database`'s live nightly backup of `date`.
pub async fn daily_backup(db: &D1Database, database: &str, date: chrono::NaiveDate) -> Result<Option<(String, String)>> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        sha256: String,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT key, sha256 FROM backups WHERE kind = 'daily' AND database = ?1 AND date = ?2 AND deleted_at IS NULL",
        &[text(database), text(&date.format("%Y-%m-%d").to_string())],
    )?
    .first(None)
    .await?;
    Ok(row.map(|r| (r.key, r.sha256)))
}

/// A backup object as the inventory records it, deleted or not: what a download by key or by
/// run needs.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedBackup {
    pub sha256: String,
    pub deleted_at: Option<String>,
    pub delete_reason: Option<String>,
}

/// The inventory's record of the backup at `key` (daily or manual), if there is one.
pub async fn recorded_backup(db: &D1Database, key: &str) -> Result<Option<RecordedBackup>> {
    statement(db, "SELECT sha256, deleted_at, delete_reason FROM backups WHERE key = ?1", &[text(key)])?.first(None).await
}

/// The nightly job of the night scheduled at `requested_at`, if one is recorded.
pub async fn nightly_job(db: &D1Database, requested_at: DateTime<Utc>) -> Result<Option<Uuid>> {
    #[derive(Deserialize)]
    struct Row {
        id: String,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT id FROM jobs WHERE kind = 'daily' AND requested_at = ?1",
        &[text(&timestamp(requested_at))],
    )?
    .first(None)
    .await?;
    Ok(row.and_then(|r| Uuid::parse_str(&r.id).ok()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct RunView {
    pub id: String,
    pub database: String,
    pub state: TaskState,
    pub attempts: u32,
    pub r2_key: String,
    pub bytes: Option<u64>,
    pub rows: Option<u64>,
    pub tables: Option<u64>,
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Export steps finished (each a queue message).
    pub step: u32,
    pub bookmark: Option<String>,
    /// Where the next step resumes; internal, never shown by the API.
    #[serde(skip_serializing)]
    pub checkpoint: Option<String>,
    /// The task engine's columns (see `tasks::task_record`); internal.
    #[serde(default, skip_serializing)]
    pub failures: u32,
    #[serde(default, skip_serializing)]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing)]
    pub lease_until: Option<String>,
    /// The dump's latest verification: `pending`, `verifying`, `verified`, `verify_failed` or
    /// `skipped` (`None` before the dump exists, or for dumps older than verification).
    #[serde(default)]
    pub verify_state: Option<String>,
    /// The operation that verifies (or verified) the dump.
    #[serde(default)]
    pub verify_operation: Option<String>,
    /// The first table that differed.
    #[serde(default)]
    pub verify_table: Option<String>,
    /// What was wrong, what matched, or why verification was skipped.
    #[serde(default)]
    pub verify_detail: Option<String>,
    #[serde(default, rename(serialize = "verifyMillis"))]
    pub verify_ms: Option<u64>,
    #[serde(default)]
    pub verified_at: Option<String>,
    /// The dump's off-site copy (with OFFSITE): its task state and its error, if any.
    #[serde(default)]
    pub offsite_state: Option<TaskState>,
    #[serde(default)]
    pub offsite_error: Option<String>,
    /// Every delivery of every step, oldest first.
    #[serde(default)]
    pub history: Vec<AttemptView>,
}

impl RunView {
    /// The run as a task of the engine.
    pub fn task(&self) -> shared::task::TaskRecord {
        let (owner, until) = (self.lease_owner.as_deref(), self.lease_until.as_deref());
        crate::tasks::task_record(&self.id, self.state, self.step, self.attempts, self.failures, owner, until)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct AttemptView {
    #[serde(skip_serializing)]
    pub run_id: String,
    pub step: u32,
    pub attempt: u32,
    pub started_at: String,
    pub finished_at: String,
    pub outcome: String,
    pub error: Option<String>,
    #[serde(rename(serialize = "retryDelaySeconds"))]
    pub retry_delay_s: Option<u32>,
}



#[derive(Debug, Clone, Deserialize)]
struct JobRow {
    id: String,
    kind: String,
    trigger: String,
    reason: Option<String>,
    requested_at: String,
    created_at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    pub kind: String,
    pub trigger: String,
    pub reason: Option<String>,
    pub requested_at: String,
    pub created_at: String,
    pub status: JobStatus,
    pub runs: Vec<RunView>,
}

const RUN_COLUMNS: &str = "id, database, state, attempts, r2_key, bytes, rows, tables, sha256, error, \
                           queued_at, started_at, finished_at, step, bookmark, checkpoint, failures, lease_owner, \
                           lease_until, verify_state, verify_operation, verify_table, verify_detail, verify_ms, \
                           verified_at";

async fn job_view(db: &D1Database, job: JobRow) -> Result<JobView> {
    let runs: Vec<RunView> = statement(
        db,
        &format!(
            "SELECT {RUN_COLUMNS}, \
               (SELECT state FROM replicas WHERE source_key = runs.r2_key) AS offsite_state, \
               (SELECT error FROM replicas WHERE source_key = runs.r2_key) AS offsite_error \
             FROM runs WHERE job_id = ?1 ORDER BY database"
        ),
        &[text(&job.id)],
    )?
    .all()
    .await?
    .results()?;
    let history: Vec<AttemptView> = statement(
        db,
        "SELECT run_id, step, attempt, started_at, finished_at, outcome, error, retry_delay_s FROM run_attempts \
         WHERE run_id IN (SELECT id FROM runs WHERE job_id = ?1) ORDER BY finished_at, rowid",
        &[text(&job.id)],
    )?
    .all()
    .await?
    .results()?;
    let mut runs = runs;
    for run in &mut runs {
        run.history = history.iter().filter(|a| a.run_id == run.id).cloned().collect();
    }
    let states: Vec<TaskState> = runs.iter().map(|r| r.state).collect();
    Ok(JobView {
        job_id: job.id,
        kind: job.kind,
        trigger: job.trigger,
        reason: job.reason,
        requested_at: job.requested_at,
        created_at: job.created_at,
        status: job_status(&states),
        runs,
    })
}

const JOB_COLUMNS: &str = "id, kind, trigger, reason, requested_at, created_at";

pub async fn get_job(db: &D1Database, id: &Uuid) -> Result<Option<JobView>> {
    let row: Option<JobRow> =
        statement(db, &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), &[text(&id.to_string())])?
            .first(None)
            .await?;
    match row {
        Some(job) => Ok(Some(job_view(db, job).await?)),
        None => Ok(None),
    }
}

pub async fn last_job(db: &D1Database) -> Result<Option<JobView>> {
    let row: Option<JobRow> = db
        .prepare(format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT 1"))
        .first(None)
        .await?;
    match row {
        Some(job) => Ok(Some(job_view(db, job).await?)),
        None => Ok(None),
    }
}

pub async fn find_run(db: &D1Database, job_id: &Uuid, database: &str) -> Result<Option<RunView>> {
    statement(
        db,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ?1 AND database = ?2"),
        &[text(&job_id.to_string()), text(database)],
    )?
    .first(None)
    .await
}

/// One delivery of one step, as it ended.
pub struct Attempt<'a> {
    pub run_id: &'a str,
    pub step: u32,
    /// The attempt's number within its step (1-based).
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub retry_delay_seconds: Option<u32>,
}

pub fn attempt_statement(db: &D1Database, a: &Attempt<'_>, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(
        db,
        "INSERT INTO run_attempts (run_id, step, attempt, started_at, finished_at, outcome, error, retry_delay_s) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[
            text(a.run_id),
            number(u64::from(a.step)),
            number(u64::from(a.attempt)),
            text(&timestamp(a.started_at)),
            text(&timestamp(now)),
            text(a.outcome),
            opt_text(a.error),
            a.retry_delay_seconds.map(|d| number(u64::from(d))).unwrap_or(JsValue::NULL),
        ],
    )
}

/// A message no consumer could read: kept, with an alert, instead of retried forever.
pub async fn record_rejected(
    db: &D1Database,
    message_id: &str,
    queue: &str,
    body: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let now = timestamp(now);
    // Bodies are kept whole up to 64 KiB, which is more than any message of ours.
    let body: String = body.chars().take(65_536).collect();
    db.batch(vec![
        statement(
            db,
            "INSERT INTO rejected_messages (message_id, queue, body, error, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[text(message_id), text(queue), text(&body), text(error), text(&now)],
        )?,
        statement(
            db,
            "INSERT INTO alerts (kind, message, created_at) VALUES ('message_rejected', ?1, ?2)",
            &[text(&format!("queue {queue}: message {message_id} rejected: {error}")), text(&now)],
        )?,
    ])
    .await?;
    Ok(())
}

/// The alert of a run that died (in the batch that records its death).
pub fn run_dead_alert(db: &D1Database, job_id: &str, database: &str, error: &str, attempts: u32, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(
        db,
        "INSERT INTO alerts (kind, job_id, database, message, created_at) VALUES ('run_dead', ?1, ?2, ?3, ?4)",
        &[
            text(job_id),
            text(database),
            text(&format!("backup of {database} is dead after {attempts} attempts: {error}")),
            text(&timestamp(now)),
        ],
    )
}

/// Kills a run outside any lease: its message ran out of deliveries (the dead-letter queue)
/// without the task being able to record it.
pub async fn bury_run(db: &D1Database, run: &RunView, job_id: &str, error: &str, now: DateTime<Utc>) -> Result<()> {
    db.batch(vec![
        statement(db, &dead_sql(TaskKind::Backup), &[text(&run.id), text(error), text(&timestamp(now))])?,
        crate::tasks::release_locks(db, &run.id)?,
        run_dead_alert(db, job_id, &run.database, error, run.attempts, now)?,
    ])
    .await?;
    Ok(())
}

/// The rows of a complete backup: the run's result and the inventory entry with its per-table
/// row counts (for the last step's fenced batch, with the task's `finish`).
pub fn backup_statements(
    db: &D1Database,
    run: &RunView,
    key: &BackupKey,
    summary: &BackupSummary,
    attempt: &Attempt<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<D1PreparedStatement>> {
    let attempt_row = attempt_statement(db, attempt, now)?;
    let now = timestamp(now);
    let r2_key = key.to_key();
    let tables = summary.tables.len() as u64;
    let bookmark = opt_text(summary.bookmark.as_deref());
    let mut statements = vec![
        statement(
            db,
            "UPDATE runs SET bytes = ?2, rows = ?3, tables = ?4, sha256 = ?5, finished_at = ?6, updated_at = ?6, \
             step = ?7, bookmark = ?8 WHERE id = ?1",
            &[
                text(&run.id),
                number(summary.bytes),
                number(summary.rows),
                number(tables),
                text(&summary.sha256),
                text(&now),
                number(u64::from(summary.steps)),
                bookmark.clone(),
            ],
        )?,
        statement(
            db,
            "INSERT INTO backups (key, database, kind, date, run_id, bytes, sha256, tables, rows, created_at, bookmark, \
               schema, sequences, plaintext_sha256) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, bytes = excluded.bytes, \
               sha256 = excluded.sha256, tables = excluded.tables, rows = excluded.rows, \
               created_at = excluded.created_at, bookmark = excluded.bookmark, schema = excluded.schema, \
               sequences = excluded.sequences, plaintext_sha256 = excluded.plaintext_sha256, \
               deleted_at = NULL, delete_reason = NULL",
            &[
                text(&r2_key),
                text(&key.database),
                text(key.kind.as_str()),
                text(&key.date.format("%Y-%m-%d").to_string()),
                text(&run.id),
                number(summary.bytes),
                text(&summary.sha256),
                number(tables),
                number(summary.rows),
                text(&now),
                bookmark,
                text(&serde_json::to_string(&summary.schema).unwrap_or_default()),
                text(&serde_json::to_string(&summary.sequences).unwrap_or_default()),
                opt_text(summary.plaintext_sha256.as_deref()),
            ],
        )?,
        statement(db, "DELETE FROM backup_tables WHERE key = ?1", &[text(&r2_key)])?,
        attempt_row,
    ];
    for (position, table) in summary.tables.iter().enumerate() {
        statements.push(statement(
            db,
            "INSERT INTO backup_tables (key, table_name, rows, sha256, position) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[text(&r2_key), text(&table.name), number(table.rows), text(&table.sha256), number(position as u64)],
        )?);
    }
    Ok(statements)
}

/// A dead run put back in the queue by an operator.
pub struct RetriedRun {
    pub job_id: Uuid,
    pub database: String,
    pub kind: BackupKind,
    pub requested_at: DateTime<Utc>,
}

/// Puts a dead run back to `queued` at step 0 (a fresh export; its history stays). Returns
/// `Ok(None)` when there is no such run, `Err`-free `Some(Err(state))` when it is not dead.
pub async fn requeue_dead_run(
    db: &D1Database,
    run_id: &Uuid,
    now: DateTime<Utc>,
) -> Result<Option<std::result::Result<RetriedRun, String>>> {
    #[derive(Deserialize)]
    struct Row {
        job_id: String,
        database: String,
        state: String,
        kind: String,
        requested_at: String,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT r.job_id, r.database, r.state, j.kind, j.requested_at FROM runs r JOIN jobs j ON j.id = r.job_id \
         WHERE r.id = ?1",
        &[text(&run_id.to_string())],
    )?
    .first(None)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let updated = statement(
        db,
        "UPDATE runs SET state = 'queued', step = 0, checkpoint = NULL, error = NULL, finished_at = NULL, \
           failures = 0, lease_owner = NULL, lease_until = NULL, queued_at = ?2, updated_at = ?2, next_attempt_at = ?2 \
         WHERE id = ?1 AND state = 'dead'",
        &[text(&run_id.to_string()), text(&timestamp(now))],
    )?
    .run()
    .await?;
    if updated.meta()?.and_then(|m| m.changes).unwrap_or(0) != 1 {
        return Ok(Some(Err(row.state)));
    }
    let parsed = (
        Uuid::parse_str(&row.job_id).ok(),
        BackupKind::parse(&row.kind),
        DateTime::parse_from_rfc3339(&row.requested_at).ok(),
    );
    match parsed {
        (Some(job_id), Some(kind), Some(at)) => Ok(Some(Ok(RetriedRun {
            job_id,
            database: row.database,
            kind,
            requested_at: at.with_timezone(&Utc),
        }))),
        _ => Err(worker::Error::RustError(format!("run {run_id} has an unreadable job row"))),
    }
}

/// The newest jobs, newest first.
pub async fn recent_jobs(db: &D1Database, limit: u32) -> Result<Vec<JobView>> {
    let rows: Vec<JobRow> = statement(
        db,
        &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1"),
        &[number(u64::from(limit))],
    )?
    .all()
    .await?
    .results()?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(job_view(db, row).await?);
    }
    Ok(jobs)
}

/// A dead run, as the dead-letter list shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct DeadRun {
    pub run_id: String,
    pub job_id: String,
    pub database: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub r2_key: String,
    pub finished_at: Option<String>,
}

/// A queue message no consumer could read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct RejectedMessage {
    pub id: u64,
    pub message_id: String,
    pub queue: String,
    pub body: String,
    pub error: String,
    pub received_at: String,
}

pub async fn dead_letters(db: &D1Database, limit: u32) -> Result<(Vec<DeadRun>, Vec<RejectedMessage>)> {
    let runs = statement(
        db,
        "SELECT id AS run_id, job_id, database, attempts, error, r2_key, finished_at FROM runs \
         WHERE state = 'dead' ORDER BY finished_at DESC, rowid DESC LIMIT ?1",
        &[number(u64::from(limit))],
    )?
    .all()
    .await?
    .results()?;
    let rejected = statement(
        db,
        "SELECT id, message_id, queue, body, error, received_at FROM rejected_messages \
         ORDER BY received_at DESC, id DESC LIMIT ?1",
        &[number(u64::from(limit))],
    )?
    .all()
    .await?
    .results()?;
    Ok((runs, rejected))
}
