//! Verifications and restores in the metadata database (`operations`), the verification state
//! of runs, and the locks that give one operation a database to itself across its steps.

use crate::meta::{number, opt_text, statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::dump::sql::ident;
use shared::dump::TableCount;
use shared::restore::extract::ArchivedDump;
use shared::restore::operation::{DumpSource, OperationKind, OperationOutcome, OperationPlan};
use shared::dump::{SchemaObject, Sequence};
use shared::restore::verify::VerifyState;
use shared::restore::request::RestoreFrom;
use shared::restore::DumpObject;
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use shared::task::TaskState;
use worker::{D1Database, D1PreparedStatement, Result};

/// An operation to record.
pub struct NewOperation<'a> {
    pub plan: &'a OperationPlan,
    pub source_key: &'a str,
    pub database: &'a str,
    pub run_id: Option<&'a str>,
    pub archive_key: Option<&'a str>,
    pub target: Option<&'a str>,
    pub pre_backup_job_id: Option<Uuid>,
}

/// Records a queued operation and sends its first message. A send that fails is logged: the
/// operation is recorded and due, so the sweeper sends it.
pub async fn start_operation(env: &worker::Env, db: &D1Database, op: &NewOperation<'_>, now: DateTime<Utc>) -> Result<()> {
    create_operation(db, op, now).await?;
    let id = Uuid::parse_str(&op.plan.id).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let message = shared::message::OperationMessage::new(id);
    if let Err(e) = env.queue(crate::bindings::RESTORE_QUEUE)?.send(message).await {
        worker::console_error!("operation {id}: sending its first message failed ({e}); the sweeper will send it");
    }
    Ok(())
}

/// Records a queued operation; for a verification, marks its run's verification pending.
async fn create_operation(db: &D1Database, op: &NewOperation<'_>, now: DateTime<Utc>) -> Result<()> {
    let at = timestamp(now);
    let kind = match op.plan.kind {
        OperationKind::Verify => "verify",
        OperationKind::Restore => "restore",
    };
    let plan_json = serde_json::to_string(op.plan).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let mut statements = vec![statement(
        db,
        "INSERT INTO operations (id, kind, state, source_key, database, run_id, archive_key, target, table_name, \
           pre_backup_job_id, plan, requested_at, updated_at, next_attempt_at) \
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?11)",
        &[
            text(&op.plan.id),
            text(kind),
            text(op.source_key),
            text(op.database),
            opt_text(op.run_id),
            opt_text(op.archive_key),
            opt_text(op.target),
            opt_text(op.plan.table.as_deref()),
            opt_text(op.pre_backup_job_id.map(|id| id.to_string()).as_deref()),
            text(&plan_json),
            text(&at),
        ],
    )?];
    if let (OperationKind::Verify, Some(run_id)) = (op.plan.kind, op.run_id) {
        statements.push(statement(
            db,
            "UPDATE runs SET verify_state = 'pending', verify_operation = ?2, verify_table = NULL, \
               verify_detail = NULL, verify_ms = NULL WHERE id = ?1",
            &[text(run_id), text(&op.plan.id)],
        )?);
    }
    db.batch(statements).await?;
    Ok(())
}

/// Records why a run's dump is not verified.
pub async fn skip_verification(db: &D1Database, run_id: &str, reason: &str) -> Result<()> {
    statement(
        db,
        "UPDATE runs SET verify_state = 'skipped', verify_detail = ?2, verify_operation = NULL, verify_table = NULL \
         WHERE id = ?1",
        &[text(run_id), text(reason)],
    )?
    .run()
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct OperationView {
    pub id: String,
    pub kind: OperationKind,
    pub state: TaskState,
    pub source_key: String,
    pub database: String,
    pub run_id: Option<String>,
    pub archive_key: Option<String>,
    pub target: Option<String>,
    pub table_name: Option<String>,
    pub pre_backup_job_id: Option<String>,
    pub step: u32,
    pub attempts: u32,
    #[serde(skip_serializing)]
    pub failures: u32,
    /// JSON text (shown parsed by the API).
    #[serde(skip_serializing)]
    pub outcome: Option<String>,
    pub failed_table: Option<String>,
    pub error: Option<String>,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip_serializing)]
    pub plan: String,
    #[serde(skip_serializing)]
    pub checkpoint: Option<String>,
    /// The task engine's lease (see `tasks::task_record`); internal.
    #[serde(default, skip_serializing)]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing)]
    pub lease_until: Option<String>,
}

impl OperationView {
    pub fn plan(&self) -> std::result::Result<OperationPlan, String> {
        serde_json::from_str(&self.plan).map_err(|e| format!("unreadable operation plan: {e}"))
    }

    /// The operation as a task of the engine.
    pub fn task(&self) -> shared::task::TaskRecord {
        let (owner, until) = (self.lease_owner.as_deref(), self.lease_until.as_deref());
        crate::tasks::task_record(&self.id, self.state, self.step, self.attempts, self.failures, owner, until)
    }

    /// The API's view, with the outcome parsed.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            let outcome = self.outcome.as_deref().and_then(|o| serde_json::from_str(o).ok());
            object.insert("outcome".into(), outcome.unwrap_or(serde_json::Value::Null));
        }
        value
    }
}

const COLUMNS: &str = "id, kind, state, source_key, database, run_id, archive_key, target, table_name, \
                       pre_backup_job_id, step, attempts, failures, outcome, failed_table, error, requested_at, \
                       started_at, finished_at, plan, checkpoint, lease_owner, lease_until";

pub async fn get_operation(db: &D1Database, id: &str) -> Result<Option<OperationView>> {
    statement(db, &format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"), &[text(id)])?.first(None).await
}

/// The newest operations first.
pub async fn recent_operations(db: &D1Database, limit: u32) -> Result<Vec<OperationView>> {
    statement(
        db,
        &format!("SELECT {COLUMNS} FROM operations ORDER BY requested_at DESC, id LIMIT ?1"),
        &[number(u64::from(limit))],
    )?
    .all()
    .await?
    .results()
}

/// Recorded with an operation's checkpoint: a verification's run shows `verifying` from its
/// first step on.
pub fn checkpoint_statement(db: &D1Database, op: &OperationView) -> Result<D1PreparedStatement> {
    statement(
        db,
        "UPDATE runs SET verify_state = 'verifying' WHERE verify_operation = ?1 AND verify_state = 'pending'",
        &[text(&op.id)],
    )
}

/// Recorded with an operation's death: a dead verification leaves its run `verify_failed` (a
/// dump nobody could check is not verified), and the operation's lock goes.
pub fn death_statements(db: &D1Database, op: &OperationView, error: &str, now: DateTime<Utc>) -> Result<Vec<D1PreparedStatement>> {
    Ok(vec![
        verification_result(db, op, "verify_failed", None, &format!("could not verify: {error}"), now)?,
        crate::tasks::release_locks(db, &op.id)?,
    ])
}

fn verification_result(
    db: &D1Database,
    op: &OperationView,
    state: &str,
    table: Option<&str>,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<worker::D1PreparedStatement> {
    let started = op.started_at.as_deref().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
    let millis = started.map(|s| (now - s.with_timezone(&Utc)).num_milliseconds().max(0) as u64);
    statement(
        db,
        "UPDATE runs SET verify_state = ?2, verify_table = ?3, verify_detail = ?4, verify_ms = ?5, verified_at = ?6 \
         WHERE id = (SELECT run_id FROM operations WHERE id = ?1 AND kind = 'verify') AND verify_operation = ?1",
        &[
            text(&op.id),
            text(state),
            opt_text(table),
            text(detail),
            millis.map(number).unwrap_or(JsValue::NULL),
            text(&timestamp(now)),
        ],
    )
}

/// How an operation ended, for its last fenced batch: the state and error for the task's
/// `finish`, and the rows to write with it (the outcome; a verification's verdict on its run;
/// the lock released).
pub fn outcome_statements(
    db: &D1Database,
    op: &OperationView,
    outcome: &OperationOutcome,
    now: DateTime<Utc>,
) -> Result<(TaskState, Option<String>, Vec<D1PreparedStatement>)> {
    let (table, error) = match outcome {
        OperationOutcome::Verified(v) if !v.passed => (v.failed_table.clone(), Some(v.problems.join("; "))),
        OperationOutcome::Failed { table, message } => (table.clone(), Some(message.clone())),
        OperationOutcome::Refused { message } => (None, Some(message.clone())),
        OperationOutcome::RolledBack { error, table, restored } => (
            table.clone(),
            Some(format!(
                "{error}; the target was put back as it was before the restore ({})",
                if restored.is_some() { "from the backup taken first" } else { "emptied again" }
            )),
        ),
        OperationOutcome::Restored(r) if !r.sha256_matches => (
            None,
            Some("restored, but the dump's SHA-256 differs from the one recorded when it was stored".to_string()),
        ),
        _ => (None, None),
    };
    let state = if outcome.succeeded() { TaskState::Succeeded } else { TaskState::Failed };
    let outcome_json = serde_json::to_string(outcome).unwrap_or_default();
    let mut statements = vec![
        statement(
            db,
            "UPDATE operations SET outcome = ?2, failed_table = ?3 WHERE id = ?1",
            &[text(&op.id), text(&outcome_json), opt_text(table.as_deref())],
        )?,
        crate::tasks::release_locks(db, &op.id)?,
    ];
    if op.kind == OperationKind::Verify {
        let (verdict, detail) = match outcome {
            OperationOutcome::Verified(v) if v.passed => {
                let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
                ("verified", format!("{} and {} restored and matched", plural(v.tables, "table", "tables"), plural(v.rows, "row", "rows")))
            }
            // No verdict on the dump: it could not be checked here.
            OperationOutcome::Refused { message } => ("skipped", format!("not verified: {message}")),
            _ => ("verify_failed", error.clone().unwrap_or_default()),
        };
        statements.push(verification_result(db, op, verdict, table.as_deref(), &detail, now)?);
    }
    Ok((state, error, statements))
}

/// The tables of a stored backup as its export recorded them, in dump order.
pub async fn recorded_tables(db: &D1Database, key: &str) -> Result<Vec<TableCount>> {
    #[derive(Deserialize)]
    struct Row {
        table_name: String,
        rows: u64,
        sha256: Option<String>,
    }
    let rows: Vec<Row> = statement(
        db,
        "SELECT table_name, rows, sha256 FROM backup_tables WHERE key = ?1 ORDER BY position, table_name",
        &[text(key)],
    )?
    .all()
    .await?
    .results()?;
    Ok(rows.into_iter().map(|r| TableCount { name: r.table_name, rows: r.rows, sha256: r.sha256.unwrap_or_default() }).collect())
}

/// A backup chosen to restore or verify, and where its dump can be read.
#[derive(Debug, Clone)]
pub struct ResolvedBackup {
    pub key: String,
    pub database: String,
    pub kind: String,
    pub date: String,
    pub run_id: Option<String>,
    pub bytes: u64,
    pub rows: u64,
    pub tables: u64,
    pub source: DumpSource,
    /// Set when the dump is read out of this weekly archive.
    pub archive_key: Option<String>,
    /// The dump's verification (`None` for dumps older than verification).
    pub verify_state: Option<VerifyState>,
    pub verify_detail: Option<String>,
    /// The schema and AUTOINCREMENT counters its export recorded (empty when not recorded).
    pub schema: Vec<SchemaObject>,
    pub sequences: Vec<Sequence>,
}

/// Finds the backup stored at `key`: its own object while it exists (unless `week` asks for
/// the weekly archive), else its copy in a live weekly archive; or, `from` off-site, its copy
/// there (whether or not retention deleted it here). `Ok(Err(reason))` when there is no such
/// backup or no readable copy of it.
pub async fn resolve_backup(
    db: &D1Database,
    key: &str,
    week: Option<&str>,
    from: RestoreFrom,
) -> Result<std::result::Result<ResolvedBackup, String>> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        database: String,
        kind: String,
        date: String,
        run_id: Option<String>,
        bytes: u64,
        rows: u64,
        tables: u64,
        sha256: String,
        deleted_at: Option<String>,
        verify_state: Option<VerifyState>,
        verify_detail: Option<String>,
        schema: Option<String>,
        sequences: Option<String>,
    }
    #[derive(Deserialize)]
    struct Member {
        archive_key: String,
        path: Option<String>,
        sha256: String,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT b.key, b.database, b.kind, b.date, b.run_id, b.bytes, b.rows, b.tables, b.sha256, b.deleted_at, \
           r.verify_state, r.verify_detail, b.schema, b.sequences \
         FROM backups AS b LEFT JOIN runs AS r ON r.id = b.run_id WHERE b.key = ?1",
        &[text(key)],
    )?
    .first(None)
    .await?;
    let Some(row) = row else {
        return Ok(Err(format!("no backup is recorded at {key:?}; GET /list shows the backups")));
    };
    let mut resolved = ResolvedBackup {
        key: row.key.clone(),
        database: row.database,
        kind: row.kind,
        date: row.date,
        run_id: row.run_id,
        bytes: row.bytes,
        rows: row.rows,
        tables: row.tables,
        source: DumpSource::Stored(DumpObject::named(&row.key, &row.sha256)),
        archive_key: None,
        verify_state: row.verify_state,
        verify_detail: row.verify_detail,
        // Both or neither: a backup recorded before its counters were has its schema compared
        // without them, which would report every counter as lost.
        schema: match (row.schema.as_deref(), row.sequences.as_deref()) {
            (Some(schema), Some(_)) => serde_json::from_str(schema).unwrap_or_default(),
            _ => Vec::new(),
        },
        sequences: row.sequences.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default(),
    };
    if from == RestoreFrom::Offsite {
        #[derive(Deserialize)]
        struct Copy {
            offsite_key: String,
        }
        let copy: Option<Copy> = statement(
            db,
            "SELECT offsite_key FROM replicas WHERE source_key = ?1 AND state = 'succeeded' AND deleted_at IS NULL",
            &[text(key)],
        )?
        .first(None)
        .await?;
        return Ok(match copy {
            Some(copy) => {
                resolved.source = DumpSource::Offsite(DumpObject::named(&copy.offsite_key, &row.sha256));
                Ok(resolved)
            }
            None => Err(format!("{key} has no off-site copy (see /status: offsite); restore it from R2")),
        });
    }
    if row.deleted_at.is_none() && week.is_none() {
        return Ok(Ok(resolved));
    }
    let member: Option<Member> = statement(
        db,
        "SELECT m.archive_key, m.path, m.sha256 FROM archive_members AS m JOIN archives AS a ON a.key = m.archive_key \
         WHERE m.source_key = ?1 AND m.excluded_reason IS NULL AND a.deleted_at IS NULL AND (?2 IS NULL OR a.week = ?2) \
         ORDER BY a.week DESC LIMIT 1",
        &[text(key), opt_text(week)],
    )?
    .first(None)
    .await?;
    match member {
        Some(Member { archive_key, path: Some(path), sha256 }) => {
            resolved.source = DumpSource::Archived(ArchivedDump { archive_key: archive_key.clone(), path, sha256 });
            resolved.archive_key = Some(archive_key);
            Ok(Ok(resolved))
        }
        _ => Ok(Err(match week {
            Some(week) => format!("the weekly archive of {week} does not hold {key}"),
            None => format!("{key} was deleted by retention and no live weekly archive holds it"),
        })),
    }
}

/// What a database holds, as a dry run reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseContents {
    /// Tables and their row counts (D1's own `_cf_` tables and SQLite's left out).
    pub tables: Vec<TableRows>,
    /// Indexes, views and triggers.
    pub other_objects: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

impl DatabaseContents {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.other_objects == 0
    }
}

/// Reads what `db` holds: its objects, then every table's row count in one query.
pub async fn database_contents(db: &D1Database) -> Result<DatabaseContents> {
    #[derive(Deserialize)]
    struct Object {
        kind: String,
        name: String,
    }
    let objects: Vec<Object> = db
        .prepare(
            "SELECT m.type AS kind, m.name FROM sqlite_master AS m \
             LEFT JOIN pragma_table_list AS t ON t.schema = 'main' AND t.name = m.name \
             WHERE m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
               AND m.sql IS NOT NULL AND coalesce(t.type, '') <> 'shadow' ORDER BY m.name",
        )
        .all()
        .await?
        .results()?;
    let tables: Vec<&str> = objects.iter().filter(|o| o.kind == "table").map(|o| o.name.as_str()).collect();
    // One batch of counts (D1 allows only a few terms in a compound SELECT).
    #[derive(Deserialize)]
    struct Count {
        rows: u64,
    }
    let mut counted = Vec::with_capacity(tables.len());
    if !tables.is_empty() {
        let counts = tables.iter().map(|t| db.prepare(format!("SELECT count(*) AS rows FROM {}", ident(t)))).collect();
        for (name, result) in tables.iter().zip(db.batch(counts).await?) {
            let rows = result.results::<Count>()?.first().map_or(0, |c| c.rows);
            counted.push(TableRows { name: name.to_string(), rows });
        }
    }
    Ok(DatabaseContents { other_objects: (objects.len() - tables.len()) as u64, tables: counted })
}

/// The run behind `run_id`: its state, key and database.
pub async fn run_backup(db: &D1Database, run_id: &str) -> Result<Option<(TaskState, String, String)>> {
    #[derive(Deserialize)]
    struct Row {
        state: TaskState,
        r2_key: String,
        database: String,
    }
    let row: Option<Row> =
        statement(db, "SELECT state, r2_key, database FROM runs WHERE id = ?1", &[text(run_id)])?.first(None).await?;
    Ok(row.map(|r| (r.state, r.r2_key, r.database)))
}
