//! Verifications and restores, one step per message of the `restore-jobs` queue.
//!
//! Each operation has its database to itself for as long as it runs (a lock in the metadata
//! database: the scratch database for verifications, the target for restores); a message that
//! finds the lock taken, or a restore still waiting for the backup of its target, comes back
//! later as a new message, without counting as a failure.

use crate::{wasm_memory_mib, Delivery};
use platform::d1_source::D1Target;
use platform::meta;
use platform::operations::{self, OperationView};
use platform::r2_store::R2Store;
use platform::{bindings, config, now};
use shared::alerts::Alert;
use shared::backup::BackupSummary;
use shared::message::OperationMessage;
use shared::ports::ObjectStore;
use shared::restore::operation::{
    operation_step, DumpSource, OperationKind, OperationOutcome, OperationPhase, OperationPlan, OperationProgress,
};
use shared::restore::DumpObject;
use shared::state::JobStatus;
use uuid::Uuid;
use worker::*;

/// Seconds before a message that waits (for a lock or a backup) comes back.
const WAIT_SECONDS: u32 = 5;

/// Starts verifying a dump just stored, or records why it is not verified. Never fails the
/// backup: errors are logged.
pub(crate) async fn start_verification(env: &Env, meta_db: &D1Database, database: &str, run_id: &str, summary: &BackupSummary) {
    if let Err(e) = try_start_verification(env, meta_db, database, run_id, summary).await {
        console_error!("run {run_id}: starting its verification failed: {e}");
    }
}

async fn try_start_verification(
    env: &Env,
    meta_db: &D1Database,
    database: &str,
    run_id: &str,
    summary: &BackupSummary,
) -> Result<()> {
    let configured = config::databases(env)?;
    let has_scratch = env.d1(bindings::VERIFY_DB).is_ok();
    let skip = config::operation_limits(env)?.skip_reason(
        configured.iter().find(|d| d.name == database),
        has_scratch,
        summary.bytes,
    );
    if let Some(reason) = skip {
        console_log!("run {run_id}: not verified: {reason}");
        return operations::skip_verification(meta_db, run_id, &reason).await;
    }
    let plan = OperationPlan {
        id: Uuid::new_v4().to_string(),
        kind: OperationKind::Verify,
        source: DumpSource::Stored(DumpObject {
            key: summary.key.clone(),
            gzip: summary.key.ends_with(".gz"),
            sha256: summary.sha256.clone(),
        }),
        table: None,
        expected: summary.tables.clone(),
        rows_per_query: config::export_limits(env)?.rows_per_query,
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
    operations::create_operation(meta_db, &op, now()).await?;
    let id = Uuid::parse_str(&plan.id).map_err(|e| Error::RustError(e.to_string()))?;
    env.queue(bindings::RESTORE_QUEUE)?.send(OperationMessage::new(id)).await
}

/// Handles one message of the `restore-jobs` queue.
pub(crate) async fn operate(env: &Env, delivery: &Delivery) {
    let body = crate::body_text(delivery);
    let msg = match serde_json::from_str(&body).map_err(|e| e.to_string()).and_then(OperationMessage::from_json) {
        Ok(msg) => msg,
        Err(e) => {
            console_error!("operation message {} is unreadable ({e}); recording it", delivery.id);
            if let Ok(db) = env.d1(bindings::META) {
                if let Err(e) = meta::record_rejected(&db, &delivery.id, "restore-jobs", &body, &e, now()).await {
                    console_error!("recording it failed: {e}");
                    return delivery.retry_in(30);
                }
            }
            return delivery.ack();
        }
    };
    let label = format!("operation {} step {} attempt {}", msg.operation_id, msg.step, delivery.attempt);
    match step(env, &msg, delivery, &label).await {
        Ok(Retry::No) => delivery.ack(),
        Ok(Retry::In(seconds)) => delivery.retry_in(seconds),
        Err(e) => {
            console_error!("{label}: {e}");
            delivery.retry_in(30);
        }
    }
}

/// What becomes of the message once its step is handled.
enum Retry {
    /// Acknowledge it.
    No,
    /// Deliver it again after this many seconds.
    In(u32),
}

/// Comes back later as a new message: waiting is not a failed attempt.
async fn wait(env: &Env, msg: &OperationMessage) -> Result<Retry> {
    let again = MessageBuilder::new(msg.clone()).delay_seconds(WAIT_SECONDS).build();
    env.queue(bindings::RESTORE_QUEUE)?.send(again).await?;
    Ok(Retry::No)
}

async fn step(env: &Env, msg: &OperationMessage, delivery: &Delivery, label: &str) -> Result<Retry> {
    let meta_db = env.d1(bindings::META)?;
    let Some(op) = operations::get_operation(&meta_db, &msg.operation_id.to_string()).await? else {
        console_error!("{label}: no such operation recorded; dropping the message");
        return Ok(Retry::No);
    };
    if op.is_final() || msg.step < op.step {
        console_log!("{label}: operation {} at step {}; duplicate or late delivery acknowledged", op.state, op.step);
        return Ok(Retry::No);
    }
    if msg.step > op.step {
        console_log!("{label}: checkpoint of step {} not recorded yet", msg.step - 1);
        return Ok(Retry::In(1));
    }
    let limits = config::export_limits(env)?;
    let started_at = now();

    // A restore over data waits for the backup of its target.
    if let (0, Some(job_id)) = (msg.step, op.pre_backup_job_id.as_deref()) {
        let job_id = Uuid::parse_str(job_id).map_err(|e| Error::RustError(e.to_string()))?;
        match meta::get_job(&meta_db, &job_id).await?.map(|j| j.status) {
            Some(JobStatus::Completed) => {}
            Some(JobStatus::Queued | JobStatus::Running) => return wait(env, msg).await,
            _ => {
                let outcome = OperationOutcome::Failed {
                    table: None,
                    message: format!("the backup of the target taken before restoring (job {job_id}) failed; nothing was changed"),
                };
                finish(env, &meta_db, &op, &outcome, label).await?;
                return Ok(Retry::No);
            }
        }
    }

    let lock = match &op.target {
        None => "scratch".to_string(),
        Some(target) => format!("database:{target}"),
    };
    let lease_until = started_at + chrono::Duration::seconds(limits.max_seconds as i64 + 120);
    if !operations::acquire_lock(&meta_db, &lock, &op.id, lease_until, started_at).await? {
        console_log!("{label}: {lock} is in use by another operation; waiting");
        return wait(env, msg).await;
    }
    if !meta::acquire_lease(&meta_db, meta::Leased::Operation, &op.id, msg.step, &delivery.id, lease_until, started_at).await? {
        console_log!("{label}: another delivery is running this step; duplicate acknowledged");
        return Ok(Retry::No);
    }

    match run(env, &meta_db, &op, msg, limits, label).await {
        Ok(()) => Ok(Retry::No),
        Err(error) => {
            let max_attempts = config::operation_limits(env).map(|l| l.max_attempts).unwrap_or(5);
            let dead = op.failures + 1 >= max_attempts;
            console_error!("{label}: attempt failed: {error}{}", if dead { "; giving up" } else { "" });
            operations::fail_operation(&meta_db, &op, &error, dead, now()).await?;
            if dead {
                raise_verify_alert(env, &meta_db, &op, None, &format!("could not verify: {error}")).await;
                return Ok(Retry::No);
            }
            let delay = config::retry_policy(env).map(|r| r.delay_seconds(op.failures + 1)).unwrap_or(30);
            Ok(Retry::In(delay))
        }
    }
}

/// Runs one step of the operation and records what it did.
async fn run(
    env: &Env,
    meta_db: &D1Database,
    op: &OperationView,
    msg: &OperationMessage,
    limits: shared::config::ExportLimits,
    label: &str,
) -> std::result::Result<(), String> {
    let plan = op.plan()?;
    let phase = match &op.checkpoint {
        Some(json) => serde_json::from_str(json).map_err(|e| format!("unreadable checkpoint: {e}"))?,
        None => plan.start(),
    };
    let binding = match &op.target {
        None => bindings::VERIFY_DB.to_string(),
        Some(target) => config::databases(env)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|d| &d.name == target)
            .map(|d| d.binding)
            .ok_or_else(|| format!("database {target:?} is not configured"))?,
    };
    let mut target = D1Target::new(env.d1(&binding).map_err(|e| format!("binding {binding}: {e}"))?);
    let mut store = R2Store::new(env.bucket(bindings::BACKUPS).map_err(|e| e.to_string())?);
    let clock = || Date::now().as_millis() as i64;
    let progress = operation_step(&mut target, &mut store, &clock, &plan, limits.step_budget(), phase)
        .await
        .map_err(|e| e.to_string())?;
    match progress {
        OperationProgress::Paused { phase, superseded } => {
            let json = serde_json::to_string::<OperationPhase>(&phase).map_err(|e| e.to_string())?;
            let queue = env.queue(bindings::RESTORE_QUEUE).map_err(|e| e.to_string())?;
            queue.send(msg.continuation(msg.step + 1)).await.map_err(|e| format!("queueing the next step: {e}"))?;
            operations::save_operation_checkpoint(meta_db, op, msg.step, &json, now())
                .await
                .map_err(|e| format!("saving the checkpoint: {e}"))?;
            if let Some(key) = superseded {
                let _ = store.delete(&key).await;
            }
            console_log!("{label}: paused; continuing in step {}; wasm memory {} MiB", msg.step + 1, wasm_memory_mib());
        }
        OperationProgress::Done(outcome) => {
            if let Some(key) = plan.extracted_key() {
                if let Err(e) = store.delete(&key).await {
                    console_error!("{label}: could not delete the extracted copy {key}: {e}");
                }
            }
            finish(env, meta_db, op, &outcome, label).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn finish(env: &Env, meta_db: &D1Database, op: &OperationView, outcome: &OperationOutcome, label: &str) -> Result<()> {
    operations::finish_operation(meta_db, op, outcome, now()).await?;
    let verdict = serde_json::to_string(outcome).unwrap_or_default();
    console_log!("{label}: {} {}; wasm memory {} MiB", op.kind, if outcome.succeeded() { "succeeded" } else { "failed" }, wasm_memory_mib());
    if !outcome.succeeded() {
        let table = match outcome {
            OperationOutcome::Verified(v) => v.failed_table.clone(),
            OperationOutcome::Failed { table, .. } => table.clone(),
            OperationOutcome::Restored(_) => None,
        };
        console_error!("{label}: {verdict}");
        raise_verify_alert(env, meta_db, op, table.as_deref(), &verdict).await;
    }
    Ok(())
}

/// A failed verification raises `verify_failed` (once per operation) and is delivered at once.
async fn raise_verify_alert(env: &Env, meta_db: &D1Database, op: &OperationView, table: Option<&str>, detail: &str) {
    if op.kind != "verify" {
        return;
    }
    let table_note = table.map(|t| format!(" (first differing table: {t})")).unwrap_or_default();
    let alert = Alert {
        kind: "verify_failed".into(),
        database: Some(op.database.clone()),
        job_id: None,
        message: format!("backup {} of {} failed verification{table_note}", op.source_key, op.database),
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
    if let Err(e) = platform::alerts::deliver_pending(env, meta_db, now()).await {
        console_error!("delivering alerts failed: {e}");
    }
}
