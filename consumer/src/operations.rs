//! Verifications and restores, one step per message of the `restore-jobs` queue.
//!
//! Each operation has its database to itself for as long as it runs (a lock in the metadata
//! database: the scratch database for verifications, the target for restores); a message that
//! finds the lock taken, or a restore still waiting for the backup of its target, comes back
//! later as a new message, without counting as a failure. Each operation is a task of the
//! engine (`platform::tasks`); this file holds its step body.

use crate::{wasm_memory_mib, Delivery};
use platform::d1_source::D1Target;
use platform::meta;
use platform::operations::{self, OperationView};
use platform::r2_store::R2Store;
use platform::s3_store::S3Store;
use platform::tasks::{self, meta_error, StepBody, StepOutcome};
use platform::{bindings, now};
use shared::config::Settings;
use shared::task::{ErrorKind, Lease, TaskError, TaskKind, TaskRecord, TaskState, Verdict};
use shared::alerts::Alert;
use shared::backup::BackupSummary;
use shared::faults::FaultyTarget;
use shared::message::OperationMessage;
use shared::ports::ObjectStore;
use shared::restore::operation::{
    give_up, operation_step, DumpSource, OperationKind, OperationOutcome, OperationPhase, OperationPlan, OperationProgress,
    Rollback,
};
use shared::restore::verify::VerifyOutcome;
use shared::restore::DumpObject;
use shared::state::JobStatus;
use uuid::Uuid;
use worker::*;

/// Starts verifying a dump just stored, or records why it is not verified. Never fails the
/// backup: errors are logged.
pub(crate) async fn start_verification(
    env: &Env,
    settings: &Settings,
    meta_db: &D1Database,
    database: &str,
    run_id: &str,
    summary: &BackupSummary,
) {
    if let Err(e) = try_start_verification(env, settings, meta_db, database, run_id, summary).await {
        console_error!("run {run_id}: starting its verification failed: {e}");
    }
}

async fn try_start_verification(
    env: &Env,
    settings: &Settings,
    meta_db: &D1Database,
    database: &str,
    run_id: &str,
    summary: &BackupSummary,
) -> Result<()> {
    let has_scratch = env.d1(bindings::VERIFY_DB).is_ok();
    let dump = DumpObject::named(&summary.key, &summary.sha256);
    let readable = !dump.encrypted || settings.age_identity.is_some();
    let skip = settings.operation.skip_reason(settings.database(database), has_scratch, readable, summary.bytes);
    if let Some(reason) = skip {
        console_log!("run {run_id}: not verified: {reason}");
        return operations::skip_verification(meta_db, run_id, &reason).await;
    }
    let plan = OperationPlan {
        id: Uuid::new_v4().to_string(),
        kind: OperationKind::Verify,
        source: DumpSource::Stored(dump),
        table: None,
        expected: summary.tables.clone(),
        expected_schema: summary.schema.clone(),
        expected_sequences: summary.sequences.clone(),
        fault: None,
        rows_per_query: settings.export.rows_per_query,
        identity: None,
    };
    let op = operations::NewOperation {
        plan: &plan,
        source_key: &summary.key,
        database,
        run_id: Some(run_id),
        archive_key: None,
        target: None,
        pre_backup_job_id: None,
    };
    operations::start_operation(env, meta_db, &op, now()).await
}

/// Handles one message of the `restore-jobs` queue.
pub(crate) async fn operate(env: &Env, delivery: &Delivery) {
    let Some(msg) = crate::read_task_message(env, delivery, "restore-jobs", OperationMessage::from_json).await else { return };
    let Some(settings) = crate::settings(env, delivery) else { return };
    let label = format!("operation {}", msg.operation_id);
    let id = msg.operation_id.to_string();
    let Some((meta_db, op)) = crate::open_task(env, delivery, &settings, &label, async |db: &D1Database| {
        operations::get_operation(db, &id).await
    })
    .await
    else {
        return;
    };
    let step = msg.step;
    let mut task = OperationTask { env, settings: &settings, msg, op, label, outcome: None, died_of: None };
    crate::settle(delivery, tasks::deliver(&meta_db, &settings, &mut task, step, &delivery.id).await);
}

/// A verification or a restore, as a task of the engine.
struct OperationTask<'a> {
    env: &'a Env,
    settings: &'a Settings,
    msg: OperationMessage,
    op: OperationView,
    label: String,
    /// How it ended, once it has.
    outcome: Option<OperationOutcome>,
    died_of: Option<String>,
}

impl OperationTask<'_> {
    /// Records how the operation ended, in the step's fenced batch.
    async fn finish(&mut self, db: &D1Database, lease: &Lease, outcome: OperationOutcome) -> std::result::Result<StepOutcome, TaskError> {
        let (state, error, rows) = operations::outcome_statements(db, &self.op, &outcome, now()).map_err(meta_error)?;
        let mut statements = vec![tasks::finish(db, lease, state, error.as_deref(), now()).map_err(meta_error)?];
        statements.extend(rows);
        tasks::commit(db, lease, statements).await.map_err(|e| e.context("recording the outcome"))?;
        let verdict = serde_json::to_string(&outcome).unwrap_or_default();
        let succeeded = outcome.succeeded();
        let state = if succeeded { "succeeded" } else { "failed" };
        console_log!("{}: {:?} {state}; wasm memory {} MiB", self.label, self.op.kind, wasm_memory_mib());
        if !succeeded {
            console_error!("{}: {verdict}", self.label);
        }
        self.outcome = Some(outcome);
        Ok(StepOutcome::Finished)
    }
}

impl OperationTask<'_> {
    /// How this restore puts its target back if it fails after changing it: from the backup of
    /// the target taken first, or by emptying it when it was empty (no backup was needed).
    async fn rollback(&self, db: &D1Database) -> std::result::Result<Rollback, TaskError> {
        let Some(job_id) = self.op.pre_backup_job_id.as_deref() else { return Ok(Rollback::Empty) };
        let job_id = Uuid::parse_str(job_id).map_err(|e| TaskError::permanent(format!("pre-backup job id: {e}")))?;
        let job = meta::get_job(db, &job_id).await.map_err(meta_error)?;
        let run = job.and_then(|j| j.runs.into_iter().next()).filter(|r| r.state == TaskState::Succeeded);
        match run {
            Some(run) => Ok(Rollback::Restore(
                DumpObject::named(&run.r2_key, &run.sha256.unwrap_or_default()).with_identity(self.settings.age_identity.as_ref()),
            )),
            None => Err(TaskError::permanent(format!("the backup of the target taken first (job {job_id}) is not there to roll back to"))),
        }
    }
}

impl OperationTask<'_> {
    /// Why this consumer cannot do the operation at all, before it starts: an encrypted dump,
    /// or an encrypted backup of the target to roll back to, and no `AGE_IDENTITY` to read it.
    async fn unreadable(&self, db: &D1Database, plan: &OperationPlan) -> std::result::Result<Option<String>, TaskError> {
        if self.settings.age_identity.is_some() {
            return Ok(None);
        }
        if plan.encrypted() {
            return Ok(Some(format!(
                "{} is encrypted and this consumer has no AGE_IDENTITY secret to read it; nothing in the target was changed. \
                 Restore it offline: age -d -i key.txt, then wrangler d1 execute --file (see /restore-guide)",
                self.op.source_key
            )));
        }
        if self.op.pre_backup_job_id.is_some() {
            if let Rollback::Restore(pre) = self.rollback(db).await? {
                if pre.encrypted {
                    return Ok(Some(format!(
                        "the backup of the target taken first ({}) is encrypted and this consumer has no AGE_IDENTITY \
                         secret to roll back with if the restore failed; nothing in the target was changed",
                        pre.key
                    )));
                }
            }
        }
        Ok(None)
    }
}

impl StepBody for OperationTask<'_> {
    fn kind(&self) -> TaskKind {
        TaskKind::Operation
    }

    fn task(&self) -> TaskRecord {
        self.op.task()
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    async fn run(&mut self, db: &D1Database, lease: &Lease) -> std::result::Result<StepOutcome, TaskError> {
        // A restore over data waits for the backup of its target.
        if let (0, Some(job_id)) = (lease.step, self.op.pre_backup_job_id.as_deref()) {
            let job_id = Uuid::parse_str(job_id).map_err(|e| TaskError::permanent(format!("pre-backup job id: {e}")))?;
            match meta::get_job(db, &job_id).await.map_err(meta_error)?.map(|j| j.status) {
                Some(JobStatus::Completed) => {}
                Some(JobStatus::Queued | JobStatus::Running) => return Ok(StepOutcome::Wait(tasks::LOCK_WAIT_SECONDS)),
                _ => {
                    let outcome = OperationOutcome::Failed {
                        table: None,
                        message: format!("the backup of the target taken before restoring (job {job_id}) failed; nothing was changed"),
                    };
                    return self.finish(db, lease, outcome).await;
                }
            }
        }
        let lock = tasks::database_lock(self.op.target.as_deref());
        let policy = self.settings.task_policy(TaskKind::Operation);
        if !tasks::lock(db, &lock, &self.op.id, &policy, now()).await.map_err(meta_error)? {
            console_log!("{}: {lock} is in use by another task; waiting", self.label);
            return Ok(StepOutcome::Wait(tasks::LOCK_WAIT_SECONDS));
        }

        let mut plan = self.op.plan().map_err(TaskError::permanent)?;
        plan.identity = self.settings.age_identity.clone();
        if lease.step == 0 {
            if let Some(message) = self.unreadable(db, &plan).await? {
                return self.finish(db, lease, OperationOutcome::Refused { message }).await;
            }
        }
        let phase = match &self.op.checkpoint {
            Some(json) => serde_json::from_str(json).map_err(|e| TaskError::permanent(format!("unreadable checkpoint: {e}")))?,
            None => plan.start(),
        };
        let binding = match &self.op.target {
            None => bindings::VERIFY_DB.to_string(),
            Some(target) => self
                .settings
                .database(target)
                .map(|d| d.binding.clone())
                .ok_or_else(|| TaskError::permanent(format!("database {target:?} is not configured")))?,
        };
        let target = D1Target::new(self.env.d1(&binding).map_err(|e| TaskError::permanent(format!("binding {binding}: {e}")))?);
        // Fault injection (local and test stacks only: the producer refuses it elsewhere).
        let mut target = FaultyTarget { inner: target, fault: plan.fault, attempt: lease.attempt, operation: plan.id.clone() };
        let mut store =
            R2Store::new(self.env.bucket(bindings::BACKUPS).map_err(|e| TaskError::permanent(format!("binding BACKUPS: {e}")))?);
        let clock = || Date::now().as_millis() as i64;
        let budget = self.settings.export.step_budget();
        // Looked up only when it is needed: the phase that puts the target back.
        let rollback = match phase {
            OperationPhase::RollingBack { .. } => self.rollback(db).await?,
            _ => Rollback::Empty,
        };
        // A restore from the off-site copy reads it there; everything else (a rollback, a copy
        // out of an archive, staging) is in R2.
        let stepped = if plan.reads_offsite(&phase) {
            let config = self
                .settings
                .offsite
                .as_ref()
                .ok_or_else(|| TaskError::permanent("the restore reads the off-site copy but OFFSITE is no longer configured"))?;
            let mut offsite = S3Store::new(config).map_err(|e| TaskError::permanent(e.message))?;
            operation_step(&mut target, &mut offsite, &clock, &plan, budget, phase.clone(), lease.token, &rollback).await
        } else {
            operation_step(&mut target, &mut store, &clock, &plan, budget, phase.clone(), lease.token, &rollback).await
        };
        let progress = match stepped {
            Ok(progress) => progress,
            // The last attempt of a restore that has changed its target: put the target back
            // instead of leaving it half restored.
            Err(error) if error.kind == ErrorKind::Transient
                && lease.attempt >= self.settings.task_policy(TaskKind::Operation).max_attempts =>
            {
                match give_up(&mut target, &plan, &phase, &error).await? {
                    Some(rolling_back) => {
                        console_error!("{}: giving up ({error}); putting the target back", self.label);
                        OperationProgress::Paused { phase: rolling_back, superseded: None }
                    }
                    None => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        console_log!("{} step {}: {}", self.label, lease.step, platform::usage_note(target.inner.usage(), store.operations()));
        match progress {
            OperationProgress::Paused { phase, superseded } => {
                let json = serde_json::to_string::<OperationPhase>(&phase).map_err(|e| TaskError::permanent(e.to_string()))?;
                let statements = vec![
                    tasks::checkpoint(db, lease, &json, now()).map_err(meta_error)?,
                    operations::checkpoint_statement(db, &self.op).map_err(meta_error)?,
                ];
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("saving the checkpoint"))?;
                if let Some(key) = superseded {
                    let _ = store.delete(&key).await;
                }
                console_log!("{}: paused; continuing in step {}; wasm memory {} MiB", self.label, lease.step + 1, wasm_memory_mib());
                Ok(StepOutcome::Continued)
            }
            OperationProgress::Done(outcome) => {
                let finished = self.finish(db, lease, outcome).await?;
                release_staging(&mut store, &plan, &phase, &self.label).await;
                Ok(finished)
            }
        }
    }

    fn failure_statements(
        &self,
        db: &D1Database,
        _lease: &Lease,
        error: &TaskError,
        verdict: &Verdict,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<worker::D1PreparedStatement>> {
        match verdict {
            Verdict::Dead => operations::death_statements(db, &self.op, &error.message, now),
            _ => Ok(Vec::new()),
        }
    }

    async fn dying(&mut self, _db: &D1Database, error: &TaskError) {
        self.died_of = Some(error.message.clone());
        let phase = self.op.checkpoint.as_deref().and_then(|c| serde_json::from_str::<OperationPhase>(c).ok());
        if let (Ok(plan), Some(phase), Ok(bucket)) = (self.op.plan(), phase, self.env.bucket(bindings::BACKUPS)) {
            release_staging(&mut R2Store::new(bucket), &plan, &phase, &self.label).await;
        }
    }

    async fn ended(&mut self, db: &D1Database) {
        if let Some(error) = self.died_of.take() {
            let headline = format!("backup {} of {} could not be verified: {error}", self.op.source_key, self.op.database);
            raise_verify_alert(self.env, self.settings, db, &self.op, None, &headline, &format!("could not verify: {error}")).await;
        } else if let Some(outcome) = self.outcome.take().filter(|o| !o.succeeded()) {
            let (table, headline) = match &outcome {
                OperationOutcome::Refused { message } => {
                    (None, format!("backup {} of {} was not verified: {message}", self.op.source_key, self.op.database))
                }
                OperationOutcome::Verified(VerifyOutcome { failed_table: table, .. })
                | OperationOutcome::Failed { table, .. } => {
                    let note = table.as_ref().map(|t| format!(" (first differing table: {t})")).unwrap_or_default();
                    (table.clone(), format!("backup {} of {} failed verification{note}", self.op.source_key, self.op.database))
                }
                OperationOutcome::Restored(_) | OperationOutcome::RolledBack { .. } => (None, format!("restore {} failed", self.op.id)),
            };
            let verdict = serde_json::to_string(&outcome).unwrap_or_default();
            raise_verify_alert(self.env, self.settings, db, &self.op, table.as_deref(), &headline, &verdict).await;
        }
    }

    async fn send(&self, step: u32, delay_seconds: u32) -> Result<()> {
        let message = MessageBuilder::new(self.msg.continuation(step)).delay_seconds(delay_seconds).build();
        self.env.queue(bindings::RESTORE_QUEUE)?.send(message).await
    }
}

/// Once an operation has ended (recorded under its lease): its copy out of an archive, its
/// tails and any upload left open go. A failure leaves litter, logged.
async fn release_staging(store: &mut R2Store, plan: &OperationPlan, phase: &OperationPhase, label: &str) {
    if let Err(e) = plan.discard_extraction(store, phase).await {
        console_error!("{label}: aborting the unfinished copy out of the archive failed: {e}");
    }
    store.clear_staging(&plan.staging_prefix(), label).await;
}

/// A failed verification raises `verify_failed` (once per operation) and is delivered at once.
async fn raise_verify_alert(
    env: &Env,
    settings: &Settings,
    meta_db: &D1Database,
    op: &OperationView,
    table: Option<&str>,
    headline: &str,
    detail: &str,
) {
    if op.kind != OperationKind::Verify {
        return;
    }
    let alert = Alert {
        kind: shared::alerts::AlertKind::VerifyFailed,
        database: Some(op.database.clone()),
        job_id: None,
        message: headline.to_owned(),
        details: serde_json::json!({
            "backup": op.source_key,
            "operation": op.id,
            "run": op.run_id,
            "table": table,
            "detail": detail,
        }),
        subject: Some(op.id.clone()),
    };
    if let Err(e) = platform::alerts::record(meta_db, &alert, now()).await {
        console_error!("recording the verify_failed alert failed: {e}");
    }
    if let Err(e) = platform::alerts::deliver_pending(env, settings, meta_db, now()).await {
        console_error!("delivering alerts failed: {e}");
    }
}
