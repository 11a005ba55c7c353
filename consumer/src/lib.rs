//! The consumer Worker: exports one database per queue message into R2 and records the run.
//!
//! An export runs in steps, one per message: when a step's budget (queries, bytes, time) runs
//! out, its checkpoint goes into the run's row in the metadata database and a message for the
//! next step goes onto the queue. The dump appears in R2 only when the last step completes it.
//! The consumer also drains the dead-letter queue, where messages land after their last retry.

use platform::d1_source::D1Source;
use platform::meta::{self, RunView};
use platform::r2_store::R2Store;
use platform::{bindings, config, now};
use shared::backup::{backup_step, discard, BackupCheckpoint, BackupProgress, BackupTarget, PART_SIZE};
use shared::keys::BackupKey;
use shared::message::BackupMessage;
use shared::ports::ObjectStore;
use shared::state::RunState;
use std::collections::BTreeMap;
use worker::*;

/// Name of the dead-letter queue (see consumer/wrangler.toml).
const DEAD_LETTER_QUEUE: &str = "backup-jobs-dlq";

#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    let dead_letters = batch.queue() == DEAD_LETTER_QUEUE;
    // Each message is acknowledged or retried on its own: one failing database never makes
    // the others in the batch run again.
    for message in batch.messages()? {
        let parsed = BackupMessage::from_json(message.body().clone());
        let outcome = match parsed {
            Err(e) => {
                console_error!("dropping unreadable message {}: {e}", message.id());
                Outcome::Done
            }
            Ok(msg) if dead_letters => bury(&env, &msg).await,
            Ok(msg) => back_up(&env, &msg).await,
        };
        match outcome {
            Outcome::Done => message.ack(),
            Outcome::Retry => message.retry(),
        }
    }
    Ok(())
}

enum Outcome {
    Done,
    Retry,
}

fn label(msg: &BackupMessage) -> String {
    format!("job {} database {} step {}", msg.job_id, msg.database, msg.step)
}

async fn back_up(env: &Env, msg: &BackupMessage) -> Outcome {
    let label = label(msg);
    let meta_db = match env.d1(bindings::META) {
        Ok(db) => db,
        Err(e) => {
            console_error!("{label}: META binding unavailable: {e}");
            return Outcome::Retry;
        }
    };
    let run = match meta::find_run(&meta_db, &msg.job_id, &msg.database).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            console_error!("{label}: no such run recorded; dropping the message");
            return Outcome::Done;
        }
        Err(e) => {
            console_error!("{label}: reading the run failed: {e}");
            return Outcome::Retry;
        }
    };
    if matches!(run.state(), RunState::Succeeded | RunState::Dead) {
        console_log!("{label}: run already {}; duplicate delivery acknowledged", run.state);
        return Outcome::Done;
    }
    if msg.step < run.step {
        console_log!("{label}: step {} already done; stale delivery acknowledged", msg.step);
        return Outcome::Done;
    }
    if msg.step > run.step {
        // The continuation arrived before its checkpoint was recorded: try again shortly.
        console_log!("{label}: checkpoint of step {} not recorded yet", msg.step - 1);
        return Outcome::Retry;
    }
    if let Err(e) = meta::start_run(&meta_db, &run.id, now()).await {
        console_error!("{label}: recording the start failed: {e}");
        return Outcome::Retry;
    }
    match run_step(env, msg, &run).await {
        Ok(StepResult::Continued) => Outcome::Done,
        Ok(StepResult::Completed) => Outcome::Done,
        Err(error) => {
            console_error!("{label}: attempt failed: {error}");
            if let Err(e) = meta::fail_run(&meta_db, &run.id, RunState::Retrying, &error, now()).await {
                console_error!("{label}: recording the failure failed too: {e}");
            }
            Outcome::Retry
        }
    }
}

enum StepResult {
    Continued,
    Completed,
}

/// Runs one export step and records what it did.
async fn run_step(env: &Env, msg: &BackupMessage, run: &RunView) -> std::result::Result<StepResult, String> {
    let label = label(msg);
    let meta_db = env.d1(bindings::META).map_err(|e| e.to_string())?;
    let limits = config::export_limits(env).map_err(|e| e.to_string())?;
    let checkpoint: Option<BackupCheckpoint> = match (&run.checkpoint, msg.step) {
        (_, 0) => None,
        (Some(json), _) => Some(serde_json::from_str(json).map_err(|e| format!("unreadable checkpoint: {e}"))?),
        (None, step) => return Err(format!("step {step} has no checkpoint to resume from")),
    };
    let target = match &checkpoint {
        Some(c) => c.target.clone(),
        None => first_target(msg, run, limits.rows_per_query)?,
    };

    let databases = config::databases(env).map_err(|e| e.to_string())?;
    let binding = databases
        .iter()
        .find(|d| d.name == msg.database)
        .map(|d| d.binding.clone())
        .ok_or_else(|| format!("database {:?} is not configured", msg.database))?;
    let source_db = env.d1(&binding).map_err(|e| format!("binding {binding}: {e}"))?;
    let bookmark = checkpoint.as_ref().and_then(|c| c.bookmark().map(str::to_owned));
    let mut source = D1Source::open(&source_db, bookmark.as_deref()).map_err(|e| e.to_string())?;
    let mut store = R2Store::new(env.bucket(bindings::BACKUPS).map_err(|e| e.to_string())?);
    let clock = || Date::now().as_millis() as i64;

    let progress = backup_step(&mut source, &mut store, &clock, &target, limits.step_budget(), checkpoint.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    match progress {
        BackupProgress::Paused { checkpoint: next, superseded } => {
            let json = serde_json::to_string(&next).map_err(|e| e.to_string())?;
            // The next message goes first, then the checkpoint it needs: a message that
            // arrives before its checkpoint is retried, while a checkpoint without its message
            // would strand the run.
            let queue = env.queue(bindings::BACKUP_QUEUE).map_err(|e| e.to_string())?;
            queue.send(msg.continuation(next.step)).await.map_err(|e| format!("queueing step {}: {e}", next.step))?;
            let recorded = meta::save_checkpoint(&meta_db, &run.id, msg.step, &json, now())
                .await
                .map_err(|e| format!("saving the checkpoint: {e}"))?;
            if !recorded {
                console_log!("{label}: another delivery recorded this step first");
            }
            delete_staging(&mut store, superseded.as_deref()).await;
            console_log!("{label}: paused after {} parts; continuing in step {}", next.parts.len(), next.step);
            Ok(StepResult::Continued)
        }
        BackupProgress::Complete { summary, superseded } => {
            let key = BackupKey::parse(&summary.key).ok_or_else(|| format!("unexpected key {}", summary.key))?;
            meta::succeed_run(&meta_db, run, &key, &summary, now())
                .await
                .map_err(|e| format!("recording the backup failed: {e}"))?;
            delete_staging(&mut store, superseded.as_deref()).await;
            console_log!(
                "{label}: {} bytes, {} rows in {} tables in {} steps -> {}",
                summary.bytes,
                summary.rows,
                summary.tables.len(),
                summary.steps,
                summary.key
            );
            Ok(StepResult::Completed)
        }
    }
}

/// What the first step of a run writes where; later steps take it from the checkpoint.
fn first_target(msg: &BackupMessage, run: &RunView, rows_per_query: u32) -> std::result::Result<BackupTarget, String> {
    // The key was decided when the job was created (it says whether the dump is gzipped).
    let key = BackupKey::parse(&run.r2_key).ok_or_else(|| format!("run has an unexpected key {}", run.r2_key))?;
    let metadata = BTreeMap::from([
        ("database".to_string(), msg.database.clone()),
        ("job".to_string(), msg.job_id.to_string()),
        ("run".to_string(), run.id.clone()),
        ("kind".to_string(), msg.kind.as_str().to_string()),
        ("format".to_string(), shared::dump::DUMP_FORMAT_VERSION.to_string()),
        ("tool".to_string(), format!("d1-backup {}", shared::TOOL_VERSION)),
    ]);
    Ok(BackupTarget {
        database: msg.database.clone(),
        key: run.r2_key.clone(),
        staging_prefix: format!("staging/{}/{}/", msg.job_id, msg.database),
        gzip: key.gzip,
        metadata,
        part_size: PART_SIZE,
        started_at: now(),
        rows_per_query,
    })
}

/// Staging objects are only ever read by the step after the one that wrote them; once a newer
/// checkpoint is recorded, deleting one is housekeeping, and a failure only leaves litter.
async fn delete_staging(store: &mut R2Store, key: Option<&str>) {
    if let Some(key) = key {
        if let Err(e) = store.delete(key).await {
            console_error!("could not delete staging object {key}: {e}");
        }
    }
}

/// A message whose retries are exhausted: the run is dead, with its last error kept, and what
/// its export held in R2 (an open upload, a staging tail) is freed.
async fn bury(env: &Env, msg: &BackupMessage) -> Outcome {
    let label = label(msg);
    let result = async {
        let meta_db = env.d1(bindings::META)?;
        if let Some(run) = meta::find_run(&meta_db, &msg.job_id, &msg.database).await? {
            if !matches!(run.state(), RunState::Succeeded | RunState::Dead) && msg.step >= run.step {
                if let Some(checkpoint) = run.checkpoint.as_deref().and_then(|j| serde_json::from_str::<BackupCheckpoint>(j).ok()) {
                    let mut store = R2Store::new(env.bucket(bindings::BACKUPS)?);
                    if let Err(e) = discard(&mut store, &checkpoint).await {
                        console_error!("{label}: freeing the unfinished upload failed: {e}");
                    }
                }
                let error = run.error.clone().unwrap_or_else(|| "retries exhausted".into());
                meta::fail_run(&meta_db, &run.id, RunState::Dead, &error, now()).await?;
                console_error!("{label}: dead after {} attempts: {error}", run.attempts);
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => {
            console_error!("{label}: recording the dead letter failed: {e}");
            Outcome::Retry
        }
    }
}
