//! The metadata store: jobs, runs and the backup inventory in the META D1 database.
//! The schema lives in `migrations/`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared::backup::BackupSummary;
use shared::keys::{BackupKey, BackupKind};
use shared::state::{job_status, JobStatus, RunState};
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Result};

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn statement(db: &D1Database, sql: &str, params: &[JsValue]) -> Result<D1PreparedStatement> {
    db.prepare(sql).bind(params)
}

fn text(s: &str) -> JsValue {
    JsValue::from_str(s)
}

fn opt_text(s: Option<&str>) -> JsValue {
    s.map(JsValue::from_str).unwrap_or(JsValue::NULL)
}

fn number(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Cron,
    Http,
}

impl Trigger {
    fn as_str(self) -> &'static str {
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
pub async fn create_job(db: &D1Database, job: &NewJob<'_>, now: DateTime<Utc>) -> Result<()> {
    let now = timestamp(now);
    let mut statements = vec![statement(
        db,
        "INSERT INTO jobs (id, kind, trigger, reason, requested_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            text(&job.id.to_string()),
            text(job.kind.as_str()),
            text(job.trigger.as_str()),
            opt_text(job.reason),
            text(&timestamp(job.requested_at)),
            text(&now),
        ],
    )?];
    for key in job.keys {
        statements.push(statement(
            db,
            "INSERT INTO runs (id, job_id, database, state, attempts, r2_key, queued_at, updated_at) \
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?5)",
            &[
                text(&Uuid::new_v4().to_string()),
                text(&job.id.to_string()),
                text(&key.database),
                text(&key.to_key()),
                text(&now),
            ],
        )?);
    }
    db.batch(statements).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct RunView {
    pub id: String,
    pub database: String,
    pub state: String,
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
}

impl RunView {
    pub fn state(&self) -> RunState {
        RunState::parse(&self.state).unwrap_or(RunState::Queued)
    }
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
                           queued_at, started_at, finished_at, step, bookmark, checkpoint";

async fn job_view(db: &D1Database, job: JobRow) -> Result<JobView> {
    let runs: Vec<RunView> = statement(
        db,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ?1 ORDER BY database"),
        &[text(&job.id)],
    )?
    .all()
    .await?
    .results()?;
    let states: Vec<RunState> = runs.iter().map(RunView::state).collect();
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

/// Marks a run as running and counts the attempt.
pub async fn start_run(db: &D1Database, run_id: &str, now: DateTime<Utc>) -> Result<()> {
    let now = timestamp(now);
    statement(
        db,
        "UPDATE runs SET state = 'running', attempts = attempts + 1, error = NULL, \
         started_at = coalesce(started_at, ?2), updated_at = ?2 WHERE id = ?1",
        &[text(run_id), text(&now)],
    )?
    .run()
    .await?;
    Ok(())
}

/// Records a failed attempt: `retrying` while retries remain, `dead` after the last one.
/// Records that step `from_step` finished and where the next one resumes. Only the first
/// delivery to finish a step records it: returns false if the run had moved on already.
pub async fn save_checkpoint(
    db: &D1Database,
    run_id: &str,
    from_step: u32,
    checkpoint: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = statement(
        db,
        "UPDATE runs SET step = ?2 + 1, checkpoint = ?3, updated_at = ?4 \
         WHERE id = ?1 AND step = ?2 AND state NOT IN ('succeeded', 'dead')",
        &[text(run_id), number(u64::from(from_step)), text(checkpoint), text(&timestamp(now))],
    )?
    .run()
    .await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) == 1)
}

pub async fn fail_run(db: &D1Database, run_id: &str, state: RunState, error: &str, now: DateTime<Utc>) -> Result<()> {
    let now = timestamp(now);
    let finished = if state.is_final() { JsValue::from_str(&now) } else { JsValue::NULL };
    statement(
        db,
        "UPDATE runs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?5, \
         checkpoint = CASE WHEN ?2 = 'dead' THEN NULL ELSE checkpoint END WHERE id = ?1",
        &[text(run_id), text(state.as_str()), text(error), finished, text(&now)],
    )?
    .run()
    .await?;
    Ok(())
}

/// Records a verified, complete backup: the run's outcome and the inventory entry with its
/// per-table row counts, in one batch.
pub async fn succeed_run(
    db: &D1Database,
    run: &RunView,
    key: &BackupKey,
    summary: &BackupSummary,
    now: DateTime<Utc>,
) -> Result<()> {
    let now = timestamp(now);
    let r2_key = key.to_key();
    let tables = summary.tables.len() as u64;
    let bookmark = opt_text(summary.bookmark.as_deref());
    let mut statements = vec![
        statement(
            db,
            "UPDATE runs SET state = 'succeeded', error = NULL, bytes = ?2, rows = ?3, tables = ?4, \
             sha256 = ?5, finished_at = ?6, updated_at = ?6, step = ?7, bookmark = ?8, checkpoint = NULL \
             WHERE id = ?1",
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
            "INSERT INTO backups (key, database, kind, date, run_id, bytes, sha256, tables, rows, created_at, bookmark) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, bytes = excluded.bytes, \
               sha256 = excluded.sha256, tables = excluded.tables, rows = excluded.rows, \
               created_at = excluded.created_at, bookmark = excluded.bookmark, \
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
            ],
        )?,
        statement(db, "DELETE FROM backup_tables WHERE key = ?1", &[text(&r2_key)])?,
    ];
    for table in &summary.tables {
        statements.push(statement(
            db,
            "INSERT INTO backup_tables (key, table_name, rows) VALUES (?1, ?2, ?3)",
            &[text(&r2_key), text(&table.name), number(table.rows)],
        )?);
    }
    db.batch(statements).await?;
    Ok(())
}
