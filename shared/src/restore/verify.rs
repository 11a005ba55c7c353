//! Verifying a dump: restore it into a scratch database, export that database again through
//! the same exporter (to nowhere, keeping only each table's row count and digest), compare with
//! what the export of the source recorded, and ask SQLite to check the copy's integrity. The
//! scratch database is emptied before and after, so it never keeps a copy of the data.

use super::{emptying_statements, recorded_cursor, restore_step, RestoreError, RestorePlan, RestoreProgress, RestoreReport, SqlTarget};
use crate::dump::{export_step, DumpOptions, ExportCursor, ExportProgress, ExportTotals, SchemaObject, Sequence, StepBudget, TableCount};
use crate::ports::{ByteSink, Clock, ObjectStore, PortError};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Where a verification stands between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VerifyPhase {
    /// Restoring the dump (the restore keeps its own progress in the scratch database).
    Restoring,
    /// Exporting the restored copy from this cursor (or from the start).
    Exporting { restored: RestoreReport, cursor: Option<ExportCursor> },
}

/// Where a stored dump's verification stands (`runs.verify_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyState {
    Pending,
    Verifying,
    Verified,
    VerifyFailed,
    Skipped,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOutcome {
    pub passed: bool,
    /// The first table, in dump order, whose restored rows differ from the source's (or whose
    /// rows were being restored when the dump failed).
    pub failed_table: Option<String>,
    /// Everything found wrong, most important first (at most a few dozen).
    pub problems: Vec<String>,
    pub tables: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProgress {
    Paused(VerifyPhase),
    Done(VerifyOutcome),
    /// The scratch database is not one: nothing was touched, and why.
    Refused(String),
}

/// The table that marks a D1 database as this project's scratch database. It is written when a
/// verification first finds the database empty; a database holding tables without it is never
/// emptied (it may be the metadata database, or a source, bound as `VERIFY_DB` by mistake).
pub const SCRATCH_MARKER: &str = "_d1_backup_scratch";

/// Whether `scratch` may be emptied for a verification: `None` when it carries the scratch
/// marker, or is empty (then it is marked); else why not.
pub async fn scratch_guard<T: SqlTarget>(scratch: &mut T) -> Result<Option<String>, PortError> {
    let rows = scratch
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
               AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY name",
        )
        .await?;
    let tables: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    if tables.iter().any(|t| t == SCRATCH_MARKER) {
        return Ok(None);
    }
    let theirs: Vec<&str> = tables.iter().map(String::as_str).filter(|t| !t.starts_with("_d1_backup_")).collect();
    if theirs.is_empty() {
        scratch
            .execute_batch(&[format!("CREATE TABLE IF NOT EXISTS \"{SCRATCH_MARKER}\" (marked_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"),
                format!("INSERT INTO \"{SCRATCH_MARKER}\" DEFAULT VALUES")])
            .await?;
        return Ok(None);
    }
    let shown = theirs.iter().take(5).map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
    let more = if theirs.len() > 5 { format!(" and {} more", theirs.len() - 5) } else { String::new() };
    Ok(Some(format!(
        "VERIFY_DB is not a scratch database: it holds tables ({shown}{more}) and no {SCRATCH_MARKER} marker, so it \
         may be the metadata database or a source bound by mistake; nothing in it was touched. Bind an empty D1 \
         database used for nothing else"
    )))
}

/// Discards the SQL: only the totals of the export matter here.
struct Discard;

impl ByteSink for Discard {
    async fn write(&mut self, _bytes: &[u8]) -> Result<(), PortError> {
        Ok(())
    }
}

const MAX_PROBLEMS: usize = 40;

/// What the export of the source recorded, to compare the restored copy with.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Each table's rows and digest, in dump order.
    pub tables: &'a [TableCount],
    /// Every table, index, view and trigger as `sqlite_master` held it (empty: not recorded,
    /// not compared).
    pub schema: &'a [SchemaObject],
    /// The AUTOINCREMENT counters.
    pub sequences: &'a [Sequence],
}

/// Runs one step of the verification of `plan.dump`, whose source export recorded `expected`
/// (in dump order). `phase` is `None` for the first step.
pub async fn verify_step<T: SqlTarget, O: ObjectStore, C: Clock>(
    scratch: &mut T,
    store: &mut O,
    clock: &C,
    plan: &RestorePlan,
    expected: Expected<'_>,
    rows_per_query: u32,
    budget: StepBudget,
    phase: Option<VerifyPhase>,
    token: u64,
) -> Result<VerifyProgress, RestoreError> {
    if phase.is_none() {
        if let Some(reason) = scratch_guard(scratch).await? {
            return Ok(VerifyProgress::Refused(reason));
        }
    }
    let (restored, cursor) = match phase.unwrap_or(VerifyPhase::Restoring) {
        VerifyPhase::Restoring => match restore_step(scratch, store, clock, plan, budget, token).await {
            Ok(RestoreProgress::Paused(_)) => return Ok(VerifyProgress::Paused(VerifyPhase::Restoring)),
            Ok(RestoreProgress::Finished(report)) => {
                return Ok(VerifyProgress::Paused(VerifyPhase::Exporting { restored: report, cursor: None }))
            }
            Err(e @ (RestoreError::Port(_) | RestoreError::LostLease(_))) => return Err(e),
            Err(RestoreError::Dump { table, message }) => {
                empty(scratch).await?;
                return Ok(VerifyProgress::Done(VerifyOutcome {
                    passed: false,
                    failed_table: table,
                    problems: vec![message],
                    tables: 0,
                    rows: 0,
                }));
            }
        },
        VerifyPhase::Exporting { restored, cursor } => {
            // Another verification may have had the scratch database meanwhile (a lock that ran
            // out while this one waited to be retried): then this restore is gone, and is redone.
            match recorded_cursor(scratch, &plan.operation).await? {
                Some(progress) if progress.done => (restored, cursor),
                _ => return Ok(VerifyProgress::Paused(VerifyPhase::Restoring)),
            }
        }
    };

    let mut opts = DumpOptions::new("verification", Utc.timestamp_opt(0, 0).unwrap());
    opts.rows_per_query = rows_per_query;
    let totals = match export_step(scratch, &mut Discard, clock, &opts, budget, cursor).await {
        Ok(ExportProgress::Paused(cursor)) => {
            return Ok(VerifyProgress::Paused(VerifyPhase::Exporting { restored, cursor: Some(cursor) }))
        }
        Ok(ExportProgress::Finished(totals)) => totals,
        Err(e) => return Err(PortError::unavailable(format!("exporting the restored copy: {e}")).into()),
    };
    let mut outcome = compare(&expected, &totals, &restored);
    integrity(scratch, &mut outcome).await?;
    empty(scratch).await?;
    outcome.passed = outcome.problems.is_empty();
    Ok(VerifyProgress::Done(outcome))
}

/// Drops everything in the scratch database.
async fn empty<T: SqlTarget>(scratch: &mut T) -> Result<(), PortError> {
    let mut statements = vec!["PRAGMA defer_foreign_keys = on".to_string()];
    statements.extend(emptying_statements(scratch).await?);
    scratch.execute_batch(&statements).await
}

/// Compares the restored copy's tables with the source's, in dump order.
pub fn compare(expected: &Expected<'_>, restored: &ExportTotals, report: &RestoreReport) -> VerifyOutcome {
    let mut outcome = compare_tables(expected.tables, restored, report);
    if !expected.schema.is_empty() {
        compare_schema(expected, restored, &mut outcome);
    }
    outcome
}

/// The schema as restored against the schema exported: the SQL of every table, index, view and
/// trigger, and every AUTOINCREMENT counter.
fn compare_schema(expected: &Expected<'_>, restored: &ExportTotals, outcome: &mut VerifyOutcome) {
    let key = |o: &SchemaObject| (o.kind.clone(), o.name.clone());
    let mut problems = Vec::new();
    for want in expected.schema {
        match restored.schema.iter().find(|o| key(o) == key(want)) {
            None => problems.push(format!("{} {:?} is missing from the restored copy", want.kind, want.name)),
            Some(got) if got.sql != want.sql => {
                problems.push(format!("{} {:?} is restored as {:?}, exported as {:?}", want.kind, want.name, got.sql, want.sql))
            }
            Some(_) => {}
        }
    }
    for got in &restored.schema {
        if !expected.schema.iter().any(|o| key(o) == key(got)) {
            problems.push(format!("{} {:?} was restored but not exported", got.kind, got.name));
        }
    }
    let (mut want, mut got) = (expected.sequences.to_vec(), restored.sequences.clone());
    want.sort();
    got.sort();
    if want != got {
        problems.push(format!(
            "the AUTOINCREMENT counters are restored as {}, exported as {}",
            sequences_text(&got),
            sequences_text(&want)
        ));
    }
    for problem in problems {
        if outcome.problems.len() < MAX_PROBLEMS {
            outcome.problems.push(problem);
        }
    }
}

fn sequences_text(sequences: &[Sequence]) -> String {
    let shown: Vec<String> = sequences.iter().map(|s| format!("{} = {}", s.name, s.seq)).collect();
    format!("[{}]", shown.join(", "))
}

/// Each table's rows and digest, as restored against as exported.
fn compare_tables(expected: &[TableCount], restored: &ExportTotals, report: &RestoreReport) -> VerifyOutcome {
    let mut problems = Vec::new();
    let mut failed_table = None;
    let mut fail = |table: &str, problem: String, problems: &mut Vec<String>| {
        failed_table.get_or_insert_with(|| table.to_owned());
        if problems.len() < MAX_PROBLEMS {
            problems.push(problem);
        }
    };
    for want in expected {
        match restored.tables.iter().find(|t| t.name == want.name) {
            None => fail(&want.name, format!("table {:?} is missing from the restored copy", want.name), &mut problems),
            Some(got) if got.rows != want.rows => fail(
                &want.name,
                format!("table {:?} has {} rows restored, {} exported", want.name, got.rows, want.rows),
                &mut problems,
            ),
            Some(got) if !want.sha256.is_empty() && got.sha256 != want.sha256 => fail(
                &want.name,
                format!("table {:?} restores to different values (digest {} instead of {})", want.name, got.sha256, want.sha256),
                &mut problems,
            ),
            Some(_) => {}
        }
    }
    for got in &restored.tables {
        if !expected.iter().any(|t| t.name == got.name) {
            fail(&got.name, format!("table {:?} was restored but not exported", got.name), &mut problems);
        }
    }
    if !report.sha256_matches {
        problems.push("the stored object's SHA-256 differs from the one recorded when it was written".into());
    }
    VerifyOutcome { passed: false, failed_table, problems, tables: restored.tables.len() as u64, rows: restored.rows }
}

/// `PRAGMA quick_check` and `PRAGMA foreign_key_check` on the restored copy.
async fn integrity<T: SqlTarget>(scratch: &mut T, outcome: &mut VerifyOutcome) -> Result<(), PortError> {
    let quick = scratch.query("PRAGMA quick_check").await?;
    let verdicts: Vec<String> = quick.iter().filter_map(|r| r.first().cloned().flatten()).collect();
    if verdicts != ["ok"] {
        outcome.problems.push(format!("PRAGMA quick_check: {}", verdicts.join("; ")));
    }
    let orphans = scratch.query("PRAGMA foreign_key_check").await?;
    if let Some(row) = orphans.first() {
        let table = row.first().cloned().flatten().unwrap_or_default();
        outcome.failed_table.get_or_insert_with(|| table.clone());
        outcome.problems.push(format!(
            "PRAGMA foreign_key_check: {} rows refer to missing rows, the first in table {table:?}",
            orphans.len()
        ));
    }
    Ok(())
}
