//! Verifying a dump: restore it into a scratch database, export that database again through
//! the same exporter (to nowhere, keeping only each table's row count and digest), compare with
//! what the export of the source recorded, and ask SQLite to check the copy's integrity. The
//! scratch database is emptied before and after, so it never keeps a copy of the data.

use super::{emptying_statements, recorded_cursor, restore_step, RestoreError, RestorePlan, RestoreProgress, RestoreReport, SqlTarget};
use crate::dump::{export_step, DumpOptions, ExportCursor, ExportProgress, ExportTotals, StepBudget, TableCount};
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
}

/// Discards the SQL: only the totals of the export matter here.
struct Discard;

impl ByteSink for Discard {
    async fn write(&mut self, _bytes: &[u8]) -> Result<(), PortError> {
        Ok(())
    }
}

const MAX_PROBLEMS: usize = 40;

/// Runs one step of the verification of `plan.dump`, whose source export recorded `expected`
/// (in dump order). `phase` is `None` for the first step.
pub async fn verify_step<T: SqlTarget, O: ObjectStore, C: Clock>(
    scratch: &mut T,
    store: &mut O,
    clock: &C,
    plan: &RestorePlan,
    expected: &[TableCount],
    rows_per_query: u32,
    budget: StepBudget,
    phase: Option<VerifyPhase>,
    token: u64,
) -> Result<VerifyProgress, RestoreError> {
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
    let mut outcome = compare(expected, &totals, &restored);
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
pub fn compare(expected: &[TableCount], restored: &ExportTotals, report: &RestoreReport) -> VerifyOutcome {
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
