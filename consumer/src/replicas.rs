//! Off-site copies, one step per message of the `offsite-jobs` queue: a stored backup or weekly
//! archive copied from R2 to the S3-compatible bucket of `OFFSITE`, a part at a time
//! (`shared::offsite::replicate_step`). Each copy is a task of the engine (`platform::tasks`):
//! this file holds its step body.

use crate::{wasm_memory_mib, Delivery};
use platform::r2_store::R2Store;
use platform::replicas::{self, ReplicaView};
use platform::s3_store::S3Store;
use platform::tasks::{self, meta_error, StepBody, StepOutcome};
use platform::{bindings, now};
use shared::config::Settings;
use shared::message::ReplicaMessage;
use shared::offsite::{replicate_step, ReplicaCheckpoint, ReplicaError, ReplicaProgress};
use shared::ports::ObjectStore;
use shared::task::{Lease, TaskError, TaskKind, TaskRecord, TaskState, Verdict};
use worker::*;

/// Handles one message of the `offsite-jobs` queue.
pub(crate) async fn copy(env: &Env, delivery: &Delivery) {
    let Some(msg) = crate::read_task_message(env, delivery, "offsite-jobs", ReplicaMessage::from_json).await else { return };
    let Some(settings) = crate::settings(env, delivery) else { return };
    let label = format!("replica {}", msg.replica_id);
    let id = msg.replica_id.to_string();
    let Some((meta_db, replica)) = crate::open_task(env, delivery, &settings, &label, async |db: &D1Database| {
        replicas::get_replica(db, &id).await
    })
    .await
    else {
        return;
    };
    let step = msg.step;
    let mut task = ReplicaTask { env, settings: &settings, msg, replica, label, died: false };
    crate::settle(delivery, tasks::deliver(&meta_db, &settings, &mut task, step, &delivery.id).await);
}

struct ReplicaTask<'a> {
    env: &'a Env,
    settings: &'a Settings,
    msg: ReplicaMessage,
    replica: ReplicaView,
    label: String,
    died: bool,
}

fn task_error(e: ReplicaError) -> TaskError {
    match e {
        // The local object is not the one recorded: copying it again cannot help.
        ReplicaError::Source(message) => TaskError::permanent(message),
        // A refusal (a wrong key, a missing bucket) is retried like an outage: the
        // configuration may be fixed before the attempts are spent, and /status shows the error
        // meanwhile.
        ReplicaError::Store(e) => TaskError::transient(e.message),
    }
}

impl StepBody for ReplicaTask<'_> {
    fn kind(&self) -> TaskKind {
        TaskKind::Replica
    }

    fn task(&self) -> TaskRecord {
        self.replica.task()
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    async fn run(&mut self, db: &D1Database, lease: &Lease) -> std::result::Result<StepOutcome, TaskError> {
        let config = self
            .settings
            .offsite
            .as_ref()
            .ok_or_else(|| TaskError::permanent("OFFSITE is no longer configured: the copy is not made"))?;
        let mut dest = S3Store::new(config).map_err(|e| TaskError::permanent(e.message))?;
        let mut source =
            R2Store::new(self.env.bucket(bindings::BACKUPS).map_err(|e| TaskError::permanent(format!("binding BACKUPS: {e}")))?);
        let checkpoint: Option<ReplicaCheckpoint> = match (&self.replica.checkpoint, lease.step) {
            (_, 0) => None,
            (Some(json), _) => {
                Some(serde_json::from_str(json).map_err(|e| TaskError::permanent(format!("unreadable checkpoint: {e}")))?)
            }
            (None, step) => return Err(TaskError::permanent(format!("step {step} has no checkpoint to resume from"))),
        };
        let plan = self.replica.plan(config);
        let budget = self.settings.export.step_budget();
        let clock = || Date::now().as_millis() as i64;
        let progress = replicate_step(&mut source, &mut dest, &clock, &plan, budget.max_bytes, budget.max_millis, checkpoint)
            .await
            .map_err(task_error)?;
        match progress {
            ReplicaProgress::Paused(next) => {
                let json = serde_json::to_string(&next).map_err(|e| TaskError::permanent(e.to_string()))?;
                let statements = vec![tasks::checkpoint(db, lease, &json, now()).map_err(meta_error)?];
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("saving the checkpoint"))?;
                console_log!(
                    "{}: {} of {} bytes off-site; continuing in step {}; wasm memory {} MiB",
                    self.label,
                    next.offset,
                    plan.bytes,
                    lease.step + 1,
                    wasm_memory_mib()
                );
                Ok(StepOutcome::Continued)
            }
            ReplicaProgress::Done { bytes, etag } => {
                let statements = vec![
                    tasks::finish(db, lease, TaskState::Succeeded, None, now()).map_err(meta_error)?,
                    replicas::copied_statement(db, &self.replica.id, etag.as_deref()).map_err(meta_error)?,
                ];
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("recording the copy"))?;
                console_log!("{}: {} ({bytes} bytes) is off-site at {}", self.label, plan.source_key, plan.offsite_key);
                // Mirrored retention follows each copy (copies are made nightly): it never fails
                // the copy that ran it.
                match replicas::prune(db, &mut dest, config, now()).await {
                    Ok(deleted) if !deleted.is_empty() => {
                        console_log!("{}: mirrored retention deleted {} off-site: {deleted:?}", self.label, deleted.len())
                    }
                    Ok(_) => {}
                    Err(e) => console_error!("{}: mirrored retention failed: {e}", self.label),
                }
                Ok(StepOutcome::Finished)
            }
        }
    }

    fn failure_statements(
        &self,
        db: &D1Database,
        lease: &Lease,
        error: &TaskError,
        verdict: &Verdict,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<D1PreparedStatement>> {
        match verdict {
            Verdict::Dead => Ok(vec![replicas::dead_alert(db, &self.replica, lease.attempt, &error.message, now)?]),
            _ => Ok(Vec::new()),
        }
    }

    async fn dying(&mut self, _db: &D1Database, _error: &TaskError) {
        self.died = true;
        // An unfinished multipart copy is aborted, so the off-site bucket keeps no parts.
        let checkpoint = self.replica.checkpoint.as_deref().and_then(|j| serde_json::from_str::<ReplicaCheckpoint>(j).ok());
        if let (Some(config), Some(ReplicaCheckpoint { upload_id: Some(upload_id), .. })) = (&self.settings.offsite, checkpoint) {
            if let Ok(mut dest) = S3Store::new(config) {
                if let Err(e) = dest.abort_multipart(&self.replica.offsite_key, &upload_id).await {
                    console_error!("{}: aborting the unfinished off-site upload failed: {e}", self.label);
                }
            }
        }
    }

    async fn ended(&mut self, db: &D1Database) {
        if self.died {
            if let Err(e) = platform::alerts::deliver_pending(self.env, self.settings, db, now()).await {
                console_error!("{}: delivering alerts failed: {e}", self.label);
            }
        }
    }

    async fn send(&self, step: u32, delay_seconds: u32) -> Result<()> {
        let message = MessageBuilder::new(self.msg.continuation(step)).delay_seconds(delay_seconds).build();
        self.env.queue(bindings::OFFSITE_QUEUE)?.send(message).await
    }
}
