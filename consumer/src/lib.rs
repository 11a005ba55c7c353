//! The consumer Worker: exports one database per queue message into R2 and records the run.
//!
//! An export runs in steps, one per message: when a step's budget (queries, bytes, time) runs
//! out, its checkpoint goes into the run's row in the metadata database and a message for the
//! next step goes onto the queue. The dump appears in R2 only when the last step completes it.
//!
//! Deliveries are at least once, so every message is checked against the run first: a message
//! for a finished run or an older step is acknowledged without work, and a run is exported by
//! one delivery at a time (a lease in the metadata database). A failed delivery is retried
//! with exponential backoff; after the last retry the message lands in the dead-letter queue,
//! whose consumer (this Worker too) marks the run dead, frees its unfinished upload and records
//! an alert. A message nobody can read is forwarded to the dead-letter queue, recorded there
//! and acknowledged, never retried forever.

mod operations;

use platform::d1_source::D1Source;
use platform::meta::{self, Attempt, RunView};
use platform::r2_store::R2Store;
use platform::{bindings, config, now};
use shared::backup::{backup_step, discard, BackupCheckpoint, BackupProgress, BackupTarget, PART_SIZE};
use shared::faults::{FaultySource, FaultyStore};
use shared::keys::BackupKey;
use shared::message::BackupMessage;
use shared::ports::ObjectStore;
use shared::state::RunState;
use std::collections::BTreeMap;
use wasm_bindgen::prelude::*;
use worker::js_sys::{Array, Object, Reflect};
use worker::worker_sys::{Message as RawMessage, MessageBatch as RawBatch};
use worker::*;

/// Name of the dead-letter queue (see consumer/wrangler.toml).
const DEAD_LETTER_QUEUE: &str = "backup-jobs-dlq";
/// Name of the queue of verifications and restores (see consumer/wrangler.toml).
const OPERATION_QUEUE: &str = "restore-jobs";
/// Binding through which unreadable messages are forwarded to the dead-letter queue.
const DEAD_LETTERS: &str = "DEAD_LETTERS";

/// One delivered message, read from the runtime's own message object: workers-rs does not
/// expose the delivery attempt number, which the backoff and the run history need.
pub(crate) struct Delivery {
    raw: RawMessage,
    pub(crate) id: String,
    /// The queue's attempt number, 1 for the first delivery.
    pub(crate) attempt: u32,
    pub(crate) body: JsValue,
}

impl Delivery {
    pub(crate) fn ack(&self) {
        if let Err(e) = self.raw.ack() {
            console_error!("acknowledging message {} failed: {e:?}", self.id);
        }
    }

    pub(crate) fn retry_in(&self, seconds: u32) {
        let options = Object::new();
        let _ = Reflect::set(&options, &"delaySeconds".into(), &JsValue::from(seconds));
        if let Err(e) = self.raw.retry(options.into()) {
            console_error!("retrying message {} failed: {e:?}", self.id);
        }
    }
}

/// The queue handler, exported by hand instead of through `#[event(queue)]` so that it sees
/// the runtime's message objects (and their `attempts`).
#[wasm_bindgen]
pub async fn queue(batch: RawBatch, env: Env, _ctx: JsValue) -> std::result::Result<JsValue, JsValue> {
    let queue_name: String = batch.queue().map(String::from).unwrap_or_default();
    let messages: Array = batch.messages()?;
    // Each message is acknowledged or retried on its own: one failing database never makes
    // the others in the batch run again.
    for raw in messages.iter() {
        let raw: RawMessage = raw.unchecked_into();
        let attempt = Reflect::get(&raw, &"attempts".into()).ok().and_then(|a| a.as_f64()).unwrap_or(1.0);
        let delivery = Delivery {
            id: raw.id().map(String::from).unwrap_or_default(),
            attempt: attempt.max(1.0) as u32,
            body: raw.body().unwrap_or(JsValue::UNDEFINED),
            raw,
        };
        if queue_name == DEAD_LETTER_QUEUE {
            bury(&env, &delivery).await;
        } else if queue_name == OPERATION_QUEUE {
            operations::operate(&env, &delivery).await;
        } else {
            back_up(&env, &delivery).await;
        }
    }
    Ok(JsValue::UNDEFINED)
}

fn parse(delivery: &Delivery) -> std::result::Result<BackupMessage, String> {
    // Through JSON text, so numbers keep their integer form (a JS value deserializes as f64).
    let body: serde_json::Value =
        serde_json::from_str(&body_text(delivery)).map_err(|e| format!("body is not JSON: {e}"))?;
    BackupMessage::from_json(body)
}

pub(crate) fn body_text(delivery: &Delivery) -> String {
    worker::js_sys::JSON::stringify(&delivery.body).map(String::from).unwrap_or_else(|_| "<unprintable>".into())
}

fn label(msg: &BackupMessage, delivery: &Delivery) -> String {
    format!("job {} database {} step {} attempt {}", msg.job_id, msg.database, msg.step, delivery.attempt)
}

async fn back_up(env: &Env, delivery: &Delivery) {
    let msg = match parse(delivery) {
        Ok(msg) => msg,
        Err(e) => {
            // Retrying cannot make it readable: hand it to the dead-letter queue, which keeps it.
            console_error!("message {} is unreadable ({e}); forwarding it to {DEAD_LETTER_QUEUE}", delivery.id);
            // Wrapped, so the reason travels with the body.
            let text = body_text(delivery);
            let body = serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::String(text));
            let wrapped = serde_json::json!({ "unreadable": body, "error": e, "messageId": delivery.id });
            // As parsed JSON: serde would turn the objects into JS Maps.
            let forwarded = match (env.queue(DEAD_LETTERS), worker::js_sys::JSON::parse(&wrapped.to_string())) {
                (Ok(dlq), Ok(value)) => {
                    dlq.send_raw(RawMessageBuilder::new(value).build_with_content_type(QueueContentType::Json)).await
                }
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(Error::from(e)),
            };
            match forwarded {
                Ok(()) => delivery.ack(),
                Err(e) => {
                    console_error!("forwarding message {} failed: {e}", delivery.id);
                    delivery.retry_in(5);
                }
            }
            return;
        }
    };
    let label = label(&msg, delivery);
    let started_at = now();
    let (meta_db, retry) = match (env.d1(bindings::META), config::retry_policy(env)) {
        (Ok(db), Ok(retry)) => (db, retry),
        (Err(e), _) | (_, Err(e)) => {
            console_error!("{label}: {e}");
            return delivery.retry_in(shared::config::RetryPolicy::DEFAULT.base_seconds);
        }
    };
    let delay = retry.delay_seconds(delivery.attempt);
    let run = match meta::find_run(&meta_db, &msg.job_id, &msg.database).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            console_error!("{label}: no such run recorded; dropping the message");
            return delivery.ack();
        }
        Err(e) => {
            console_error!("{label}: reading the run failed: {e}");
            return delivery.retry_in(delay);
        }
    };
    if matches!(run.state(), RunState::Succeeded | RunState::Dead) || msg.step < run.step {
        console_log!("{label}: run {} at step {}; duplicate or late delivery acknowledged", run.state, run.step);
        return delivery.ack();
    }
    if msg.step > run.step {
        // The continuation arrived before its checkpoint was recorded: try again shortly.
        console_log!("{label}: checkpoint of step {} not recorded yet", msg.step - 1);
        return delivery.retry_in(1);
    }

    let limits = match config::export_limits(env) {
        Ok(limits) => limits,
        Err(e) => return fail(&meta_db, &run, &msg, delivery, started_at, &e.to_string(), delay).await,
    };
    // The lease outlasts the longest a step may take, with a margin for its bookkeeping.
    let lease_until = started_at + chrono::Duration::seconds(limits.max_seconds as i64 + 120);
    match meta::acquire_lease(&meta_db, meta::Leased::Run, &run.id, msg.step, &delivery.id, lease_until, started_at).await {
        Ok(true) => {}
        Ok(false) => {
            // Another delivery holds the run. Its message is redelivered until it is done, so
            // this duplicate can go.
            console_log!("{label}: another delivery is exporting this run; duplicate acknowledged");
            let attempt = Attempt {
                run_id: &run.id,
                step: msg.step,
                attempt: delivery.attempt,
                started_at,
                outcome: "leased_elsewhere",
                error: None,
                retry_delay_seconds: None,
            };
            if let Err(e) = meta::record_attempt(&meta_db, &attempt, now()).await {
                console_error!("{label}: recording the duplicate failed: {e}");
            }
            return delivery.ack();
        }
        Err(e) => {
            console_error!("{label}: taking the run failed: {e}");
            return delivery.retry_in(delay);
        }
    }

    match run_step(env, &msg, &run, delivery, started_at, limits).await {
        Ok(()) => delivery.ack(),
        Err(error) => fail(&meta_db, &run, &msg, delivery, started_at, &error, delay).await,
    }
}

/// Records a failed delivery and asks the queue to retry it after `delay` seconds.
async fn fail(
    meta_db: &D1Database,
    run: &RunView,
    msg: &BackupMessage,
    delivery: &Delivery,
    started_at: chrono::DateTime<chrono::Utc>,
    error: &str,
    delay: u32,
) {
    let label = label(msg, delivery);
    console_error!("{label}: attempt failed: {error}; retrying in {delay} s");
    let attempt = Attempt {
        run_id: &run.id,
        step: msg.step,
        attempt: delivery.attempt,
        started_at,
        outcome: "retrying",
        error: Some(error),
        retry_delay_seconds: Some(delay),
    };
    let job_id = msg.job_id.to_string();
    if let Err(e) = meta::fail_run(meta_db, run, &job_id, RunState::Retrying, error, Some(&attempt), now()).await {
        console_error!("{label}: recording the failure failed too: {e}");
    }
    delivery.retry_in(delay);
}

/// Runs one export step and records what it did.
async fn run_step(
    env: &Env,
    msg: &BackupMessage,
    run: &RunView,
    delivery: &Delivery,
    started_at: chrono::DateTime<chrono::Utc>,
    limits: shared::config::ExportLimits,
) -> std::result::Result<(), String> {
    let label = label(msg, delivery);
    let meta_db = env.d1(bindings::META).map_err(|e| e.to_string())?;
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
    let source = D1Source::open(&source_db, bookmark.as_deref()).map_err(|e| e.to_string())?;
    let store = R2Store::new(env.bucket(bindings::BACKUPS).map_err(|e| e.to_string())?);
    // Fault injection (local and test stacks only: the producer refuses it elsewhere).
    let mut source = FaultySource { inner: source, fault: msg.fault, attempt: delivery.attempt };
    let mut store = FaultyStore { inner: store, fault: msg.fault, attempt: delivery.attempt, target_key: target.key.clone() };
    let clock = || Date::now().as_millis() as i64;

    let progress = backup_step(&mut source, &mut store, &clock, &target, limits.step_budget(), checkpoint.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let attempt = |outcome| Attempt {
        run_id: &run.id,
        step: msg.step,
        attempt: delivery.attempt,
        started_at,
        outcome,
        error: None,
        retry_delay_seconds: None,
    };
    match progress {
        BackupProgress::Paused { checkpoint: next, superseded } => {
            let json = serde_json::to_string(&next).map_err(|e| e.to_string())?;
            // The next message goes first, then the checkpoint it needs: a message that
            // arrives before its checkpoint is retried, while a checkpoint without its message
            // would strand the run.
            let queue = env.queue(bindings::BACKUP_QUEUE).map_err(|e| e.to_string())?;
            queue.send(msg.continuation(next.step)).await.map_err(|e| format!("queueing step {}: {e}", next.step))?;
            let recorded = meta::save_checkpoint(&meta_db, &run.id, msg.step, &json, &attempt("continued"), now())
                .await
                .map_err(|e| format!("saving the checkpoint: {e}"))?;
            if !recorded {
                console_log!("{label}: another delivery recorded this step first");
            }
            delete_staging(&mut store.inner, superseded.as_deref()).await;
            console_log!(
                "{label}: paused after {} parts; continuing in step {}; wasm memory {} MiB",
                next.upload.parts.len(),
                next.step,
                wasm_memory_mib()
            );
        }
        BackupProgress::Complete { summary, superseded } => {
            let key = BackupKey::parse(&summary.key).ok_or_else(|| format!("unexpected key {}", summary.key))?;
            meta::succeed_run(&meta_db, run, &key, &summary, &attempt("succeeded"), now())
                .await
                .map_err(|e| format!("recording the backup failed: {e}"))?;
            delete_staging(&mut store.inner, superseded.as_deref()).await;
            operations::start_verification(env, &meta_db, &msg.database, &run.id, &summary).await;
            raise_job_alerts(env, &meta_db, &msg.job_id.to_string()).await;
            console_log!(
                "{label}: {} bytes, {} rows in {} tables in {} steps -> {}; wasm memory {} MiB",
                summary.bytes,
                summary.rows,
                summary.tables.len(),
                summary.steps,
                summary.key,
                wasm_memory_mib()
            );
        }
    }
    Ok(())
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

/// The Worker's WebAssembly memory: it only grows, so this is the peak so far. Logged after
/// every step to show that memory stays flat whatever the database's size.
pub(crate) fn wasm_memory_mib() -> usize {
    core::arch::wasm32::memory_size(0) * 65_536 / (1024 * 1024)
}

/// Raises the job's outcome alert once its last run is final, and delivers pending alerts.
/// Alerting never fails a backup: errors are logged.
async fn raise_job_alerts(env: &Env, meta_db: &D1Database, job_id: &str) {
    if let Err(e) = platform::alerts::record_job_outcome(env, meta_db, job_id, now()).await {
        console_error!("job {job_id}: recording its outcome alert failed: {e}");
    }
    deliver_alerts(env, meta_db).await;
}

async fn deliver_alerts(env: &Env, meta_db: &D1Database) {
    if let Err(e) = platform::alerts::deliver_pending(env, meta_db, now()).await {
        console_error!("delivering alerts failed: {e}");
    }
}

/// A message out of retries, or one nobody could read.
async fn bury(env: &Env, delivery: &Delivery) {
    let result = async {
        let meta_db = env.d1(bindings::META)?;
        let msg = match parse(delivery) {
            Ok(msg) => msg,
            Err(error) => {
                console_error!("dead letter {} is unreadable: {error}; recording it", delivery.id);
                meta::record_rejected(&meta_db, &delivery.id, DEAD_LETTER_QUEUE, &body_text(delivery), &error, now())
                    .await?;
                deliver_alerts(env, &meta_db).await;
                return Ok(());
            }
        };
        let label = label(&msg, delivery);
        let Some(run) = meta::find_run(&meta_db, &msg.job_id, &msg.database).await? else {
            console_error!("{label}: dead letter for an unknown run");
            return Ok(());
        };
        // Only the delivery that carries the run's current step can kill it: a late duplicate
        // of a step already done, or a run that ended, leaves the run as it is.
        if matches!(run.state(), RunState::Succeeded | RunState::Dead) || msg.step != run.step {
            console_log!("{label}: dead letter for a run {} at step {}; nothing to do", run.state, run.step);
            return Ok(());
        }
        if let Some(checkpoint) = run.checkpoint.as_deref().and_then(|j| serde_json::from_str::<BackupCheckpoint>(j).ok()) {
            let mut store = R2Store::new(env.bucket(bindings::BACKUPS)?);
            if let Err(e) = discard(&mut store, &checkpoint).await {
                console_error!("{label}: freeing the unfinished upload failed: {e}");
            }
        }
        let error = run.error.clone().unwrap_or_else(|| "retries exhausted".into());
        meta::fail_run(&meta_db, &run, &msg.job_id.to_string(), RunState::Dead, &error, None, now()).await?;
        console_error!("{label}: dead after {} attempts: {error}", run.attempts);
        raise_job_alerts(env, &meta_db, &msg.job_id.to_string()).await;
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => delivery.ack(),
        Err(e) => {
            console_error!("recording dead letter {} failed: {e}", delivery.id);
            delivery.retry_in(30);
        }
    }
}
