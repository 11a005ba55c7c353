//! A verification or a restore as the consumer runs it, one step per queue message: first, for
//! a dump kept only in a weekly archive, copying it out of the archive; then restoring it into
//! the target (or, to verify, into the scratch database and checking the copy).

use super::check::{check_step, CheckCursor, CheckProgress};
use super::extract::{extract_step, ArchivedDump, ExtractCheckpoint, ExtractProgress};
use super::verify::{verify_step, Expected, VerifyOutcome, VerifyPhase, VerifyProgress};
use super::{restore_step, DumpObject, RestoreError, RestorePlan, RestoreProgress, RestoreReport, SqlTarget};
use crate::dump::{SchemaObject, Sequence, StepBudget, TableCount};
use crate::ports::{Clock, ObjectStore, PortError};
use crate::task::TaskError;
use crate::upload::{UploadSpec, PART_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Restore into the scratch database and compare with the export.
    Verify,
    /// Restore into a configured database.
    Restore,
}

/// Where the dump is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DumpSource {
    /// An object of its own (a daily or manual backup).
    Stored(DumpObject),
    /// A member of a weekly archive.
    Archived(ArchivedDump),
    /// The backup's copy in the off-site bucket (read through the off-site store; its key
    /// there, and the SHA-256 recorded for the backup).
    Offsite(DumpObject),
}

/// Everything an operation needs, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationPlan {
    pub id: String,
    pub kind: OperationKind,
    pub source: DumpSource,
    /// A restore of one table only.
    #[serde(default)]
    pub table: Option<String>,
    /// What the export recorded per table (verification compares with it).
    #[serde(default)]
    pub expected: Vec<TableCount>,
    /// The schema objects the export recorded, as `sqlite_master` holds them (empty for
    /// backups older than their recording: their schema is then not compared).
    #[serde(default)]
    pub expected_schema: Vec<SchemaObject>,
    /// The AUTOINCREMENT counters the export recorded.
    #[serde(default)]
    pub expected_sequences: Vec<Sequence>,
    pub rows_per_query: u32,
    /// Fault injection (local and test stacks only: the producer refuses it elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::faults::Fault>,
    /// The secret key that reads encrypted dumps, set by the consumer for each step from its
    /// `AGE_IDENTITY`; never stored with the plan.
    #[serde(skip)]
    pub identity: Option<crate::age::Identity>,
}

impl OperationPlan {
    /// Where a dump taken out of an archive is put while it is restored.
    pub fn extracted_key(&self) -> Option<String> {
        match &self.source {
            DumpSource::Archived(member) => {
                let file = member.path.rsplit('/').next().unwrap_or("dump.sql");
                Some(format!("{}{file}", self.staging_prefix()))
            }
            DumpSource::Stored(_) | DumpSource::Offsite(_) => None,
        }
    }

    /// Where the operation keeps its objects (an archived dump's copy and its tails); cleared
    /// when the operation ends.
    pub fn staging_prefix(&self) -> String {
        format!("restore-staging/{}/", self.id)
    }

    /// Frees what an operation that ended in `phase` leaves open: the multipart upload of a copy
    /// out of an archive that did not finish.
    pub async fn discard_extraction<O: ObjectStore>(&self, store: &mut O, phase: &OperationPhase) -> Result<(), PortError> {
        if let (OperationPhase::Extracting(Some(checkpoint)), Some(key)) = (phase, self.extracted_key()) {
            crate::upload::discard(store, &key, checkpoint.upload()).await?;
        }
        Ok(())
    }

    fn extract_spec(&self) -> Option<UploadSpec> {
        Some(UploadSpec {
            key: self.extracted_key()?,
            staging_prefix: format!("{}tails/", self.staging_prefix()),
            content_type: "application/octet-stream".into(),
            metadata: BTreeMap::from([("operation".to_string(), self.id.clone())]),
            part_size: PART_SIZE,
            gzip: false,
            recipients: Vec::new(),
        })
    }

    /// Whether the dump is encrypted (it needs the consumer's `AGE_IDENTITY`).
    pub fn encrypted(&self) -> bool {
        self.dump().encrypted
    }

    /// Whether the dump is read from the off-site store (its check and its restore; a rollback
    /// reads the target's backup, in R2).
    pub fn reads_offsite(&self, phase: &OperationPhase) -> bool {
        matches!(self.source, DumpSource::Offsite(_)) && !matches!(phase, OperationPhase::RollingBack { .. })
    }

    /// The dump as the restore reads it: the stored object, or the copy out of the archive.
    fn dump(&self) -> DumpObject {
        match &self.source {
            DumpSource::Stored(dump) | DumpSource::Offsite(dump) => dump.clone(),
            // The copy is named as the member is (its last path segment).
            DumpSource::Archived(member) => DumpObject::named(&self.extracted_key().unwrap_or_default(), &member.sha256),
        }
        .with_identity(self.identity.as_ref())
    }

    /// Whether this operation's restore has begun changing `target` (its progress is recorded
    /// there: the first batch, which empties the target, committed).
    async fn began<T: SqlTarget>(&self, target: &mut T) -> Result<bool, TaskError> {
        Ok(super::recorded_cursor(target, &self.id).await?.is_some())
    }

    fn restore_plan(&self) -> RestorePlan {
        RestorePlan {
            operation: self.id.clone(),
            dump: self.dump(),
            table: self.table.clone(),
            keep_progress: self.kind == OperationKind::Verify,
        }
    }

    /// The first phase.
    pub fn start(&self) -> OperationPhase {
        match &self.source {
            DumpSource::Archived(_) => OperationPhase::Extracting(None),
            DumpSource::Stored(_) | DumpSource::Offsite(_) => self.after_extraction(),
        }
    }

    /// The phase once the dump is an object of its own: a restore checks it whole before it
    /// touches the target; a verification restores into the scratch database and compares
    /// (a damaged dump is its verdict).
    fn after_extraction(&self) -> OperationPhase {
        match self.kind {
            OperationKind::Restore => OperationPhase::Checking(None),
            OperationKind::Verify => OperationPhase::Verifying(None),
        }
    }
}

/// How a restore that fails after it has changed its target puts the target back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rollback {
    /// Restore the backup of the target taken before the restore.
    Restore(DumpObject),
    /// The target was empty: empty it again.
    Empty,
}

/// Where an operation stands between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationPhase {
    Extracting(Option<ExtractCheckpoint>),
    /// Reading the whole dump before the target is touched (a restore).
    Checking(Option<CheckCursor>),
    /// The target's progress table says how far.
    Restoring,
    Verifying(Option<VerifyPhase>),
    /// The restore failed after changing the target (`error`, `table`): the target is being
    /// put back as it was.
    RollingBack { error: String, table: Option<String> },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum OperationOutcome {
    Restored(RestoreReport),
    Verified(VerifyOutcome),
    /// The dump could not be restored (it is damaged, or the request cannot be carried out).
    Failed { table: Option<String>, message: String },
    /// Nothing was done, for a reason that is not the dump's (a scratch database that is not
    /// one): a verification so refused gives no verdict on the dump.
    Refused { message: String },
    /// The restore failed after it had changed the target (`error`, in `table`), and the
    /// target was put back as it was before: from the backup taken first (`restored`), or
    /// emptied again when it had been empty (`restored` is `None`).
    RolledBack { error: String, table: Option<String>, restored: Option<RestoreReport> },
}

impl OperationOutcome {
    pub fn succeeded(&self) -> bool {
        match self {
            OperationOutcome::Restored(report) => report.sha256_matches,
            OperationOutcome::Verified(outcome) => outcome.passed,
            OperationOutcome::Failed { .. } | OperationOutcome::Refused { .. } | OperationOutcome::RolledBack { .. } => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationProgress {
    /// Continue with `phase`; `superseded` can be deleted once it is saved.
    Paused { phase: OperationPhase, superseded: Option<String> },
    /// Finished; the plan's extracted copy (if any) can be deleted.
    Done(OperationOutcome),
}

/// Runs one step of `plan` from `phase` for the delivery holding fencing token `token`.
/// `target` is the scratch database for a verification, the target database for a restore;
/// `rollback` says how a restore that fails after changing its target puts it back.
/// A damaged dump is an outcome; an `Err` is retried, or (a lost lease) ends the delivery.
#[allow(clippy::too_many_arguments)]
pub async fn operation_step<T: SqlTarget, O: ObjectStore, C: Clock>(
    target: &mut T,
    store: &mut O,
    clock: &C,
    plan: &OperationPlan,
    budget: StepBudget,
    phase: OperationPhase,
    token: u64,
    rollback: &Rollback,
) -> Result<OperationProgress, TaskError> {
    let failed = |table, message| Ok(OperationProgress::Done(OperationOutcome::Failed { table, message }));
    match phase {
        OperationPhase::Extracting(from) => {
            let (DumpSource::Archived(member), Some(spec)) = (&plan.source, plan.extract_spec()) else {
                return failed(None, "only a dump in an archive is extracted".into());
            };
            match extract_step(store, member, &spec, budget.max_bytes, from.as_ref()).await {
                Ok(ExtractProgress::Paused { checkpoint, superseded }) => {
                    Ok(OperationProgress::Paused { phase: OperationPhase::Extracting(Some(checkpoint)), superseded })
                }
                Ok(ExtractProgress::Done { superseded, .. }) => {
                    Ok(OperationProgress::Paused { phase: plan.after_extraction(), superseded })
                }
                // Out of the archive before anything else: the target is untouched.
                Err(RestoreError::Dump { table, message }) => failed(table, format!("{message}; nothing in the target was changed")),
                Err(e) => Err(task_error(e)),
            }
        }
        OperationPhase::Checking(from) => {
            match check_step(store, clock, &plan.dump(), budget.max_bytes, budget.max_millis, from).await? {
                CheckProgress::Paused(cursor) => {
                    Ok(OperationProgress::Paused { phase: OperationPhase::Checking(Some(cursor)), superseded: None })
                }
                CheckProgress::Passed { .. } => Ok(OperationProgress::Paused { phase: OperationPhase::Restoring, superseded: None }),
                CheckProgress::Refused(reason) => failed(None, format!("{reason}; nothing in the target was changed")),
            }
        }
        OperationPhase::Restoring => match restore_step(target, store, clock, &plan.restore_plan(), budget, token).await {
            Ok(RestoreProgress::Paused(_)) => Ok(OperationProgress::Paused { phase: OperationPhase::Restoring, superseded: None }),
            Ok(RestoreProgress::Finished(report)) => Ok(OperationProgress::Done(OperationOutcome::Restored(report))),
            // Refused before the target changed (a table others refer to): nothing to undo.
            Err(RestoreError::Dump { table, message }) if !plan.began(target).await? => failed(table, message),
            Err(RestoreError::Dump { table, message }) => Ok(OperationProgress::Paused {
                phase: OperationPhase::RollingBack { error: message, table },
                superseded: None,
            }),
            Err(e) => Err(task_error(e)),
        },
        OperationPhase::RollingBack { error, table } => {
            let rolled_back = |restored| {
                Ok(OperationProgress::Done(OperationOutcome::RolledBack { error: error.clone(), table: table.clone(), restored }))
            };
            match rollback {
                Rollback::Empty => {
                    let mut statements = vec!["PRAGMA defer_foreign_keys = on".to_string()];
                    statements.extend(super::emptying_statements(target).await?);
                    target.execute_batch(&statements).await?;
                    rolled_back(None)
                }
                Rollback::Restore(dump) => {
                    let undo = RestorePlan { operation: format!("{}:rollback", plan.id), dump: dump.clone(), table: None, keep_progress: false };
                    match restore_step(target, store, clock, &undo, budget, token).await {
                        Ok(RestoreProgress::Paused(_)) => Ok(OperationProgress::Paused {
                            phase: OperationPhase::RollingBack { error, table },
                            superseded: None,
                        }),
                        Ok(RestoreProgress::Finished(report)) => rolled_back(Some(report)),
                        // The backup taken first cannot be restored either: say both.
                        Err(RestoreError::Dump { message, .. }) => failed(
                            table,
                            format!("{error}; putting the target back from {} failed too: {message}", dump.key),
                        ),
                        Err(e) => Err(task_error(e)),
                    }
                }
            }
        }
        OperationPhase::Verifying(from) => {
            let restore = plan.restore_plan();
            let expected = Expected { tables: &plan.expected, schema: &plan.expected_schema, sequences: &plan.expected_sequences };
            let step = verify_step(target, store, clock, &restore, expected, plan.rows_per_query, budget, from, token);
            match step.await.map_err(task_error)? {
                VerifyProgress::Paused(next) => {
                    Ok(OperationProgress::Paused { phase: OperationPhase::Verifying(Some(next)), superseded: None })
                }
                VerifyProgress::Done(outcome) => Ok(OperationProgress::Done(OperationOutcome::Verified(outcome))),
                VerifyProgress::Refused(message) => Ok(OperationProgress::Done(OperationOutcome::Refused { message })),
            }
        }
    }
}

/// What a restore becomes when its attempts are spent on `error` (D1 failing again and again):
/// put the target back, when the restore had begun changing it. `None`: nothing to undo.
pub async fn give_up<T: SqlTarget>(
    target: &mut T,
    plan: &OperationPlan,
    phase: &OperationPhase,
    error: &TaskError,
) -> Result<Option<OperationPhase>, TaskError> {
    if plan.kind != OperationKind::Restore || *phase != OperationPhase::Restoring || !plan.began(target).await? {
        return Ok(None);
    }
    Ok(Some(OperationPhase::RollingBack { error: error.message.clone(), table: None }))
}

/// A restore's error as the task engine handles it (a damaged dump never gets here: it is the
/// operation's outcome).
fn task_error(e: RestoreError) -> TaskError {
    match e {
        RestoreError::Port(e) => TaskError::from(e),
        RestoreError::LostLease(message) => TaskError::lost_lease(message),
        RestoreError::Dump { table, message } => TaskError::permanent(match table {
            Some(table) => format!("{message} (in the rows of table {table:?})"),
            None => message,
        }),
    }
}
