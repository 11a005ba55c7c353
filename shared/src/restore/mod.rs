#![allow(async_fn_in_trait)] // as in `ports`: Workers are single-threaded.

//! Restoring a stored dump into a D1 database, in as many steps (invocations) as it takes, and
//! verifying a dump by restoring it into a scratch database.
//!
//! The dump is streamed from the object store and run in batches, each one transaction (D1's
//! `batch`) of whole statements, with `PRAGMA defer_foreign_keys` so rows may refer to rows
//! later in the same batch. The exporter writes parents' rows before their children's, so no
//! commit ever holds a child without its parent.
//!
//! Every batch also records, in a progress table inside the target database, where the restore
//! stands: the record commits with the statements or not at all, so a step that dies anywhere
//! resumes exactly after the last batch that committed, never running a statement twice.

pub mod check;
pub mod extract;
pub mod operation;
pub mod reader;
pub mod request;
pub mod statements;
pub mod verify;

use crate::dump::sql::{comment_safe, ident, string_literal};
use crate::dump::{StepBudget, COMPLETE_MARKER};
use crate::age::Identity;
use crate::keys::StoredFormat;
use crate::ports::{Clock, ObjectStore, PortError, PortErrorKind, SqlSource};
use reader::{DumpReader, ReadError, ReadPosition};
use serde::{Deserialize, Serialize};
use statements::{next_item, subject, Item};
use std::fmt;

/// The table in the target that records a restore's progress until it finishes: one row per
/// operation, with its cursor and the fencing token of the delivery that last wrote it.
pub const PROGRESS_TABLE: &str = "_d1_backup_restore";
/// The target's lease fence (as `lease_fence` in the metadata database): every batch of a
/// restore first proves that its operation's progress row holds the delivery's token.
pub const FENCE_TABLE: &str = "_d1_backup_fence";

/// A database statements can be run against, a batch at a time.
pub trait SqlTarget: SqlSource {
    /// Runs the statements as one transaction: all of them take effect, or none.
    async fn execute_batch(&mut self, statements: &[String]) -> Result<(), PortError>;
}

/// Most statements in one batch.
const BATCH_STATEMENTS: usize = 100;
/// Most SQL in one batch, in bytes.
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// A statement longer than this is no dump's: reading stops instead of buffering on.
const MAX_STATEMENT_BYTES: usize = 4 * 1024 * 1024;

/// The dump to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpObject {
    pub key: String,
    pub gzip: bool,
    /// Stored encrypted in the age format (`.age`).
    #[serde(default)]
    pub encrypted: bool,
    /// The SHA-256 recorded when the dump was stored.
    pub sha256: String,
    /// The secret key that reads an encrypted dump: given to each step by the Worker that
    /// holds it, never stored with the plan.
    #[serde(skip)]
    pub identity: Option<Identity>,
}

impl DumpObject {
    /// The dump stored at `key` (or named `key`, out of an archive): how it is stored is read
    /// from its name (`.sql`, `.sql.gz`, either with `.age`).
    pub fn named(key: &str, sha256: &str) -> DumpObject {
        let StoredFormat { gzip, encrypted } = StoredFormat::of(key);
        DumpObject { key: key.to_owned(), gzip, encrypted, sha256: sha256.to_owned(), identity: None }
    }

    /// Reads it with `identity` when it is encrypted.
    pub fn with_identity(self, identity: Option<&Identity>) -> DumpObject {
        DumpObject { identity: identity.cloned(), ..self }
    }

    /// A reader of its SQL from `from`.
    pub fn reader(&self, from: &ReadPosition) -> DumpReader {
        let reader = DumpReader::open(&self.key, self.gzip, from);
        if self.encrypted {
            reader.decrypting(self.identity.clone())
        } else {
            reader
        }
    }
}

/// What to restore, fixed when the operation starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    /// Identifies the operation in the progress table.
    pub operation: String,
    pub dump: DumpObject,
    /// Restore only this table (its rows, indexes, triggers and counter); `None`: everything.
    pub table: Option<String>,
    /// Keep the progress table once done (a verification: it proves the scratch database
    /// still holds this restore when the copy is exported, and is emptied afterwards anyway).
    #[serde(default)]
    pub keep_progress: bool,
}

/// The part of the dump being read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Section {
    /// Header and `CREATE TABLE`s.
    Schema,
    /// The rows of one table (its name as the marker writes it).
    Rows(String),
    /// Counters, indexes, views, triggers, footer.
    Tail,
}

/// Where a restore stands: stored in the progress table with every batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCursor {
    pub position: ReadPosition,
    pub section: Section,
    /// Statements run so far.
    pub statements: u64,
    /// Whether the footer's `-- Dump complete` line has been read.
    pub complete: bool,
    /// Whether every statement has run (only the progress table is left to drop).
    pub done: bool,
}

/// A finished restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub statements: u64,
    pub sql_bytes: u64,
    /// Whether the object read has the SHA-256 recorded when it was stored.
    pub sha256_matches: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreProgress {
    Paused(RestoreCursor),
    Finished(RestoreReport),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// The dump itself is bad: a statement fails, or the dump ends early. `table` names the
    /// table whose rows were being restored, if any. Running it again would fail again.
    Dump { table: Option<String>, message: String },
    /// The database or the store failed: worth retrying.
    Port(PortError),
    /// A delivery with a newer fencing token has taken the restore over: this one stops.
    LostLease(String),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::Dump { table: Some(t), message } => write!(f, "{message} (in the rows of table {t:?})"),
            RestoreError::Dump { table: None, message } => f.write_str(message),
            RestoreError::Port(e) => e.fmt(f),
            RestoreError::LostLease(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RestoreError {}

impl From<PortError> for RestoreError {
    fn from(e: PortError) -> Self {
        RestoreError::Port(e)
    }
}

impl Section {
    fn table(&self) -> Option<String> {
        match self {
            Section::Rows(t) => Some(t.clone()),
            _ => None,
        }
    }
}

/// The statements that drop every object of the database (FTS5 shadow tables go with their
/// table; D1's own `_cf_` tables are not to be touched). One batch, so foreign keys between
/// the tables are no obstacle.
pub async fn emptying_statements<T: SqlTarget>(target: &mut T) -> Result<Vec<String>, PortError> {
    let objects = target
        .query(
            "SELECT m.type, m.name FROM sqlite_master AS m \
             LEFT JOIN pragma_table_list AS t ON t.schema = 'main' AND t.name = m.name \
             WHERE m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
               AND m.sql IS NOT NULL AND coalesce(t.type, '') <> 'shadow' AND m.name <> '_d1_backup_scratch' \
             ORDER BY CASE m.type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1 WHEN 'index' THEN 2 ELSE 3 END, m.rowid DESC",
        )
        .await?;
    Ok(objects
        .iter()
        .map(|row| {
            let kind = row.first().cloned().flatten().unwrap_or_default().to_ascii_uppercase();
            let name = row.get(1).cloned().flatten().unwrap_or_default();
            format!("DROP {kind} IF EXISTS {}", ident(&name))
        })
        .collect())
}

/// Runs `statements` as one batch under deferred foreign keys, fenced on `token`: the batch
/// fails, changing nothing, unless the operation's progress row holds that token.
async fn run_fenced<T: SqlTarget>(target: &mut T, plan: &RestorePlan, token: u64, statements: &[String]) -> Result<(), PortError> {
    let mut batch = Vec::with_capacity(statements.len() + 3);
    batch.push("PRAGMA defer_foreign_keys = on".to_string());
    batch.push(crate::task::fence_check_sql(FENCE_TABLE, PROGRESS_TABLE, "operation", &plan.operation, token));
    batch.extend_from_slice(statements);
    batch.push(format!("DELETE FROM \"{FENCE_TABLE}\""));
    target.execute_batch(&batch).await
}

async fn progress_table_exists<T: SqlTarget>(target: &mut T) -> Result<bool, PortError> {
    let exists = target
        .query(&format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{PROGRESS_TABLE}'"))
        .await?;
    Ok(exists.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("1"))
}

/// The cursor and fencing token recorded in the target for `operation`, if this operation has
/// begun there.
async fn recorded_progress<T: SqlTarget>(target: &mut T, operation: &str) -> Result<Option<(RestoreCursor, u64)>, PortError> {
    if !progress_table_exists(target).await? {
        return Ok(None);
    }
    let rows = target
        .query(&format!(
            "SELECT cursor, lease_token FROM \"{PROGRESS_TABLE}\" WHERE operation = {}",
            string_literal(operation)
        ))
        .await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let cursor = row.first().cloned().flatten().unwrap_or_default();
    let cursor = serde_json::from_str(&cursor)
        .map_err(|e| PortError::unavailable(format!("unreadable restore progress in the target: {e}")))?;
    let token = row.get(1).cloned().flatten().and_then(|t| t.parse().ok()).unwrap_or(0);
    Ok(Some((cursor, token)))
}

/// The cursor recorded in the target for `operation`, if this operation has begun there.
pub(crate) async fn recorded_cursor<T: SqlTarget>(target: &mut T, operation: &str) -> Result<Option<RestoreCursor>, PortError> {
    Ok(recorded_progress(target, operation).await?.map(|(cursor, _)| cursor))
}

/// Takes the restore over for the delivery holding `token`: from this statement on, batches
/// of deliveries with older tokens fail. The cursor is read after the take-over, so no batch
/// can commit between reading where the restore stands and continuing from there.
async fn take_over<T: SqlTarget>(target: &mut T, plan: &RestorePlan, token: u64) -> Result<Option<RestoreCursor>, RestoreError> {
    if progress_table_exists(target).await? {
        target
            .execute_batch(&[format!(
                "UPDATE \"{PROGRESS_TABLE}\" SET lease_token = {token} WHERE operation = {} AND lease_token < {token}",
                string_literal(&plan.operation)
            )])
            .await?;
    }
    match recorded_progress(target, &plan.operation).await? {
        Some((_, recorded)) if recorded > token => Err(lost_lease(recorded, token)),
        Some((cursor, _)) => Ok(Some(cursor)),
        None => Ok(None),
    }
}

fn lost_lease(recorded: u64, token: u64) -> RestoreError {
    RestoreError::LostLease(format!("the restore was taken over by a newer delivery (token {recorded}, this one {token})"))
}

fn save_cursor_statement(operation: &str, cursor: &RestoreCursor) -> String {
    let json = serde_json::to_string(cursor).expect("a cursor serializes");
    format!(
        "UPDATE \"{PROGRESS_TABLE}\" SET cursor = {} WHERE operation = {}",
        string_literal(&json),
        string_literal(operation)
    )
}

/// The first batch of a restore: makes room in the target and records the start. A whole
/// restore empties the database; a one-table restore drops that table only, and refuses when
/// other tables refer to it (dropping it would delete or orphan their rows). Fenced too: it
/// changes nothing if a delivery with a newer token has begun this restore meanwhile.
async fn begin<T: SqlTarget>(target: &mut T, plan: &RestorePlan, token: u64) -> Result<RestoreCursor, RestoreError> {
    let operation = string_literal(&plan.operation);
    let progress_columns = "(operation TEXT PRIMARY KEY, cursor TEXT NOT NULL, lease_token INTEGER NOT NULL)";
    let fence_columns = "(held INTEGER NOT NULL CHECK (held = 1))";
    let mut statements = vec![
        format!("CREATE TABLE IF NOT EXISTS \"{PROGRESS_TABLE}\" {progress_columns}"),
        format!("CREATE TABLE IF NOT EXISTS \"{FENCE_TABLE}\" {fence_columns}"),
        format!(
            "INSERT INTO \"{FENCE_TABLE}\" (held) SELECT count(*) = 0 FROM \"{PROGRESS_TABLE}\" \
             WHERE operation = {operation} AND lease_token > {token}"
        ),
        format!("DELETE FROM \"{FENCE_TABLE}\""),
    ];
    statements.extend(match &plan.table {
        None => emptying_statements(target).await?,
        Some(table) => {
            let referring = target
                .query(&format!(
                    "SELECT DISTINCT m.name FROM sqlite_master AS m, pragma_foreign_key_list(m.name) AS f \
                     WHERE m.type = 'table' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
                       AND f.\"table\" = {t} COLLATE NOCASE AND m.name <> {t} COLLATE NOCASE",
                    t = string_literal(table)
                ))
                .await?;
            if !referring.is_empty() {
                let names: Vec<String> = referring.iter().filter_map(|r| r.first().cloned().flatten()).collect();
                return Err(RestoreError::Dump {
                    table: None,
                    message: format!(
                        "table {table:?} cannot be restored alone: {} refer to it with foreign keys; restore the whole database instead",
                        names.join(", ")
                    ),
                });
            }
            vec![format!("DROP TABLE IF EXISTS {}", ident(table))]
        }
    });
    let cursor = RestoreCursor {
        position: ReadPosition::default(),
        section: Section::Schema,
        statements: 0,
        complete: false,
        done: false,
    };
    statements.push(format!("DROP TABLE IF EXISTS \"{PROGRESS_TABLE}\""));
    statements.push(format!("DROP TABLE IF EXISTS \"{FENCE_TABLE}\""));
    statements.push(format!("CREATE TABLE \"{PROGRESS_TABLE}\" {progress_columns}"));
    statements.push(format!("CREATE TABLE \"{FENCE_TABLE}\" {fence_columns}"));
    statements.push(format!(
        "INSERT INTO \"{PROGRESS_TABLE}\" (operation, cursor, lease_token) VALUES ({operation}, {}, {token})",
        string_literal(&serde_json::to_string(&cursor).expect("a cursor serializes"))
    ));
    let mut batch = vec!["PRAGMA defer_foreign_keys = on".to_string()];
    batch.extend(statements);
    match target.execute_batch(&batch).await {
        Ok(()) => Ok(cursor),
        Err(e) => Err(batch_error(target, plan, token, e, &Section::Schema, false).await),
    }
}

/// What a failed batch means. A refused batch is the fence's doing when the operation's
/// progress row holds a newer token (read back, not guessed from the message), or has gone
/// after the restore `begun` (another operation restored over the target: this one starts
/// again); otherwise a statement of the dump was refused.
async fn batch_error<T: SqlTarget>(
    target: &mut T,
    plan: &RestorePlan,
    token: u64,
    e: PortError,
    section: &Section,
    begun: bool,
) -> RestoreError {
    if e.kind != PortErrorKind::Rejected {
        return RestoreError::Port(e);
    }
    match recorded_progress(target, &plan.operation).await {
        Ok(Some((_, recorded))) if recorded > token => lost_lease(recorded, token),
        Ok(None) if begun => RestoreError::Port(PortError::unavailable(
            "the target no longer holds this restore's progress (another operation restored over it); starting again",
        )),
        Ok(_) => RestoreError::Dump { table: section.table(), message: format!("a statement of the dump failed: {e}") },
        Err(read) => RestoreError::Port(read),
    }
}

/// Whether a statement belongs to a restore of `table` alone (`None`: every statement does).
fn wanted(statement: &str, section: &Section, table: Option<&str>) -> bool {
    let Some(table) = table else { return true };
    let staging = statement.contains("\"_d1_backup_staging\"")
        && (statement.starts_with("CREATE TABLE IF NOT EXISTS") || statement.starts_with("DROP TABLE IF EXISTS"));
    match section {
        Section::Rows(marker) => *marker == comment_safe(table) || staging,
        Section::Schema | Section::Tail => {
            let literal = string_literal(table);
            staging
                || subject(statement).is_some_and(|s| s.eq_ignore_ascii_case(table))
                || (statement.starts_with("INSERT INTO sqlite_sequence (name, seq) SELECT ")
                    && statement.contains(&format!("SELECT {literal}, 0 ")))
                || (statement.starts_with("UPDATE sqlite_sequence SET seq = ")
                    && statement.ends_with(&format!("WHERE name = {literal};")))
                || statement == format!("INSERT INTO {t} ({t}) VALUES ('rebuild');", t = ident(table))
        }
    }
}

/// Runs one step of a restore for the delivery holding fencing token `token`: from where the
/// target's progress table says it stands (or from the start), until the dump is done or
/// `budget` runs out.
pub async fn restore_step<T: SqlTarget, O: ObjectStore, C: Clock>(
    target: &mut T,
    store: &mut O,
    clock: &C,
    plan: &RestorePlan,
    budget: StepBudget,
    token: u64,
) -> Result<RestoreProgress, RestoreError> {
    let started_at = clock.now_millis();
    let mut cursor = match take_over(target, plan, token).await? {
        Some(cursor) => cursor,
        None => begin(target, plan, token).await?,
    };
    let mut queries = 0u32;
    let mut reader = plan.dump.reader(&cursor.position);
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut sql_bytes_this_step = 0u64;
    while !cursor.done {
        // Cut what is buffered into items; read more when the next item is not whole.
        let text = match std::str::from_utf8(reader.buffered()) {
            Ok(text) => text,
            // A read may end inside a character: use the whole characters.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&reader.buffered()[..e.valid_up_to()]).unwrap_or(""),
            Err(e) => {
                return Err(RestoreError::Dump {
                    table: cursor.section.table(),
                    message: format!("the dump is not UTF-8 text at SQL byte {}", reader.position().sql_offset + e.valid_up_to() as u64),
                })
            }
        };
        let at_end = reader.at_end();
        match next_item(text, at_end) {
            Some((item, n)) => {
                match item {
                    Item::Space => {}
                    Item::Comment(comment) => {
                        if let Some(name) = comment.strip_prefix(" Table: ") {
                            cursor.section = Section::Rows(name.to_owned());
                        } else if comment.starts_with(COMPLETE_MARKER.trim_start_matches("--")) {
                            cursor.complete = true;
                        } else if [" AUTOINCREMENT", " Staging table", " Full-text", " Indexes, views", " Row counts"]
                            .iter()
                            .any(|p| comment.starts_with(p))
                        {
                            cursor.section = Section::Tail;
                        }
                    }
                    Item::Statement(statement) => {
                        if wanted(statement, &cursor.section, plan.table.as_deref()) {
                            batch_bytes += statement.len();
                            batch.push(statement.to_owned());
                            cursor.statements += 1;
                        }
                    }
                }
                sql_bytes_this_step += n as u64;
                reader.consume(n);
            }
            None if at_end => {
                if !text.trim().is_empty() || !cursor.complete {
                    return Err(RestoreError::Dump {
                        table: cursor.section.table(),
                        message: format!(
                            "the dump ends early, after {} bytes of SQL, without its \"-- Dump complete\" line",
                            reader.position().sql_offset + text.len() as u64
                        ),
                    });
                }
                cursor.done = true;
            }
            None => {
                if reader.buffered().len() > MAX_STATEMENT_BYTES {
                    return Err(RestoreError::Dump {
                        table: cursor.section.table(),
                        message: format!("a statement runs past {MAX_STATEMENT_BYTES} bytes: this is not a dump"),
                    });
                }
                reader.fill(store).await.map_err(|e| match e {
                    ReadError::Store(e) => RestoreError::Port(e),
                    ReadError::Corrupt(message) => RestoreError::Dump { table: cursor.section.table(), message },
                })?;
                continue;
            }
        }
        let exhausted = |queries: u32| {
            queries >= budget.max_queries
                || sql_bytes_this_step >= budget.max_bytes
                || clock.now_millis().saturating_sub(started_at) as u64 >= budget.max_millis
        };
        let batch_full = batch.len() >= BATCH_STATEMENTS || batch_bytes >= BATCH_BYTES;
        // A batch counts as its statements against the query budget, as D1 counts them.
        let would_spend = queries + batch.len() as u32 + 2;
        if batch_full || cursor.done || (exhausted(would_spend) && !batch.is_empty()) {
            cursor.position = reader.position();
            batch.push(save_cursor_statement(&plan.operation, &cursor));
            let section = cursor.section.clone();
            if let Err(e) = run_fenced(target, plan, token, &batch).await {
                return Err(batch_error(target, plan, token, e, &section, true).await);
            }
            queries += batch.len() as u32 + 1;
            batch.clear();
            batch_bytes = 0;
            if !cursor.done && exhausted(queries + 2) {
                return Ok(RestoreProgress::Paused(cursor));
            }
        }
    }
    let position = reader.position();
    let sha256_matches = position.hash.hex_digest() == plan.dump.sha256;
    if !plan.keep_progress {
        run_fenced(target, plan, token, &[format!("DROP TABLE IF EXISTS \"{PROGRESS_TABLE}\"")]).await?;
        target.execute_batch(&[format!("DROP TABLE IF EXISTS \"{FENCE_TABLE}\"")]).await?;
    }
    Ok(RestoreProgress::Finished(RestoreReport { statements: cursor.statements, sql_bytes: position.sql_offset, sha256_matches }))
}
