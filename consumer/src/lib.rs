//! The consumer Worker: exports one database per queue message into R2 and records the run.
//!
//! An export runs in steps, one per message: when a step's budget (queries, bytes, time) runs
//! out, its checkpoint goes into the run's row in the metadata database and a message for the
//! next step goes onto the queue. The dump appears in R2 only when the last step completes it.
//!
//! A run is a task of the engine (`shared::task`, driven by `platform::tasks::deliver`): this
//! file holds only its step body. Deliveries are at least once; the engine admits a message,
//! leases the run with a fencing token, fences every write of the step on it, retries failures
//! with backoff and buries a run whose failures are spent (freeing its unfinished upload, with
//! an alert). The dead-letter queue only receives messages the engine could not even record a
//! failure for; its consumer (this Worker too) marks their runs dead. A message nobody can
//! read is forwarded to the dead-letter queue, recorded there and acknowledged, never retried
//! forever.

mod operations;
mod replicas;

use platform::d1_source::D1Source;
use platform::meta::{self, Attempt, RunView};
use platform::r2_store::R2Store;
use platform::replicas::ObjectKind;
use platform::tasks::{self, meta_error, Disposition, StepBody, StepOutcome};
use platform::{bindings, config, now};
use shared::backup::{backup_step, discard, BackupCheckpoint, BackupProgress, BackupTarget, PART_SIZE};
use shared::config::{DatabaseConfig, RetryPolicy, Settings};
use shared::faults::{Fault, FaultStage, FaultySource, FaultyStore};
use shared::keys::BackupKey;
use shared::message::BackupMessage;
use shared::ports::ObjectStore;
use shared::task::{ErrorKind, Lease, TaskError, TaskKind, TaskRecord, TaskState, Verdict};
use std::collections::BTreeMap;
use wasm_bindgen::prelude::*;
use worker::js_sys::{Array, Object, Reflect};
use worker::worker_sys::{Message as RawMessage, MessageBatch as RawBatch};
use worker::*;

/// Name of the dead-letter queue (see consumer/wrangler.toml).
const DEAD_LETTER_QUEUE: &str = "backup-jobs-dlq";
/// Name of the queue of verifications and restores (see consumer/wrangler.toml).
const OPERATION_QUEUE: &str = "restore-jobs";
/// Name of the queue of off-site copies (see consumer/wrangler.toml).
const OFFSITE_QUEUE: &str = "offsite-jobs";
/// Binding through which unreadable messages are forwarded to the dead-letter queue.
const DEAD_LETTERS: &str = "DEAD_LETTERS";

/// One delivered message, read from the runtime's own message object (for `retry` with a
/// delay). Attempts are counted by the task, not by the queue: a continuation is a new message.
pub(crate) struct Delivery {
    raw: RawMessage,
    pub(crate) id: String,
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
/// the runtime's message objects.
#[wasm_bindgen]
pub async fn queue(batch: RawBatch, env: Env, _ctx: JsValue) -> std::result::Result<JsValue, JsValue> {
    let queue_name: String = batch.queue().map(String::from).unwrap_or_default();
    let messages: Array = batch.messages()?;
    // Each message is acknowledged or retried on its own: one failing database never makes
    // the others in the batch run again.
    for raw in messages.iter() {
        let raw: RawMessage = raw.unchecked_into();
        let delivery = Delivery {
            id: raw.id().map(String::from).unwrap_or_default(),
            body: raw.body().unwrap_or(JsValue::UNDEFINED),
            raw,
        };
        if queue_name == DEAD_LETTER_QUEUE {
            bury(&env, &delivery).await;
        } else if queue_name == OPERATION_QUEUE {
            operations::operate(&env, &delivery).await;
        } else if queue_name == OFFSITE_QUEUE {
            replicas::copy(&env, &delivery).await;
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

fn label(msg: &BackupMessage) -> String {
    format!("job {} database {}", msg.job_id, msg.database)
}

/// Reads the settings once for the delivery; an unreadable configuration retries the message.
fn settings(env: &Env, delivery: &Delivery) -> Option<Settings> {
    match config::settings(env) {
        Ok(settings) => Some(settings),
        Err(e) => {
            console_error!("message {}: {e}", delivery.id);
            delivery.retry_in(RetryPolicy::DEFAULT.base_seconds);
            None
        }
    }
}

/// A verification, restore or off-site copy message, parsed. One nobody can read is recorded as
/// rejected (from `queue`) and acknowledged: retrying cannot make it readable.
pub(crate) async fn read_task_message<M>(
    env: &Env,
    delivery: &Delivery,
    queue: &str,
    parse: fn(serde_json::Value) -> std::result::Result<M, String>,
) -> Option<M> {
    let body = body_text(delivery);
    match serde_json::from_str(&body).map_err(|e| e.to_string()).and_then(parse) {
        Ok(msg) => Some(msg),
        Err(e) => {
            console_error!("{queue} message {} is unreadable ({e}); recording it", delivery.id);
            if let Ok(db) = env.d1(bindings::META) {
                if let Err(e) = meta::record_rejected(&db, &delivery.id, queue, &body, &e, now()).await {
                    console_error!("recording it failed: {e}");
                    delivery.retry_in(30);
                    return None;
                }
            }
            delivery.ack();
            None
        }
    }
}

/// The metadata database and the task's row (`read`), or `None` with the delivery settled:
/// retried when either cannot be read, acknowledged when the task is not recorded.
pub(crate) async fn open_task<R>(
    env: &Env,
    delivery: &Delivery,
    settings: &Settings,
    label: &str,
    read: impl AsyncFnOnce(&D1Database) -> Result<Option<R>>,
) -> Option<(D1Database, R)> {
    let meta_db = match env.d1(bindings::META) {
        Ok(db) => db,
        Err(e) => {
            console_error!("{label}: {e}");
            delivery.retry_in(settings.retry.base_seconds);
            return None;
        }
    };
    match read(&meta_db).await {
        Ok(Some(row)) => Some((meta_db, row)),
        Ok(None) => {
            console_error!("{label}: no such task recorded; dropping the message");
            delivery.ack();
            None
        }
        Err(e) => {
            console_error!("{label}: reading the task failed: {e}");
            delivery.retry_in(settings.retry.base_seconds);
            None
        }
    }
}

pub(crate) fn settle(delivery: &Delivery, disposition: Disposition) {
    match disposition {
        Disposition::Ack => delivery.ack(),
        Disposition::RetryIn(seconds) => delivery.retry_in(seconds),
    }
}

async fn back_up(env: &Env, delivery: &Delivery) {
    let msg = match parse(delivery) {
        Ok(msg) => msg,
        Err(e) => return forward_unreadable(env, delivery, e).await,
    };
    let Some(settings) = settings(env, delivery) else { return };
    let meta_db = match env.d1(bindings::META) {
        Ok(db) => db,
        Err(e) => {
            console_error!("{}: {e}", label(&msg));
            return delivery.retry_in(settings.retry.base_seconds);
        }
    };
    let run = match meta::find_run(&meta_db, &msg.job_id, &msg.database).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            console_error!("{}: no such run recorded; dropping the message", label(&msg));
            return delivery.ack();
        }
        Err(e) => {
            console_error!("{}: reading the run failed: {e}", label(&msg));
            return delivery.retry_in(settings.retry.base_seconds);
        }
    };
    let step = msg.step;
    let mut task = BackupTask { env, settings: &settings, msg, run, started_at: now(), ended_job: None };
    settle(delivery, tasks::deliver(&meta_db, &settings, &mut task, step, &delivery.id).await);
}

/// Retrying cannot make a message readable: it goes to the dead-letter queue, which keeps it.
async fn forward_unreadable(env: &Env, delivery: &Delivery, e: String) {
    console_error!("message {} is unreadable ({e}); forwarding it to {DEAD_LETTER_QUEUE}", delivery.id);
    // Wrapped, so the reason travels with the body.
    let text = body_text(delivery);
    let body = serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::String(text));
    let wrapped = serde_json::json!({ "unreadable": body, "error": e, "messageId": delivery.id });
    // As parsed JSON: serde would turn the objects into JS Maps.
    let forwarded = match (env.queue(DEAD_LETTERS), worker::js_sys::JSON::parse(&wrapped.to_string())) {
        (Ok(dlq), Ok(value)) => dlq.send_raw(RawMessageBuilder::new(value).build_with_content_type(QueueContentType::Json)).await,
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
}

/// One run's export, as a task of the engine.
struct BackupTask<'a> {
    env: &'a Env,
    settings: &'a Settings,
    msg: BackupMessage,
    /// The run as read before the lease was taken (its checkpoint is the leased step's).
    run: RunView,
    started_at: chrono::DateTime<chrono::Utc>,
    /// Set once the run has ended: its job's outcome alert is then due.
    ended_job: Option<String>,
}

impl BackupTask<'_> {
    fn attempt<'r>(&'r self, lease: &Lease, outcome: &'r str, error: Option<&'r str>, delay: Option<u32>) -> Attempt<'r> {
        Attempt {
            run_id: &self.run.id,
            step: lease.step,
            attempt: lease.attempt,
            started_at: self.started_at,
            outcome,
            error,
            retry_delay_seconds: delay,
        }
    }

    fn store(&self) -> std::result::Result<R2Store, TaskError> {
        Ok(R2Store::new(self.env.bucket(bindings::BACKUPS).map_err(|e| TaskError::permanent(format!("binding BACKUPS: {e}")))?))
    }
}

impl BackupTask<'_> {
    /// After losing the lease: frees what this delivery wrote that the holder's checkpoint
    /// does not use. A first step opened an upload of its own; any step parked its own tail
    /// (tails are named by their content, so the holder's is never this one unless identical)
    /// and, encrypting, its own unfinished chunk (named by a fresh nonce).
    async fn leave_nothing_behind(&self, db: &D1Database, store: &mut R2Store, lease: &Lease, mine: &BackupCheckpoint, label: &str) {
        let recorded = match meta::find_run(db, &self.msg.job_id, &self.msg.database).await {
            Ok(run) => run.and_then(|r| r.checkpoint).and_then(|j| serde_json::from_str::<BackupCheckpoint>(&j).ok()),
            Err(e) => return console_error!("{label}: reading the holder's checkpoint failed ({e}); leaving my upload"),
        };
        let theirs = recorded.as_ref().map(|c| &c.upload);
        if let (0, Some(upload_id)) = (lease.step, &mine.upload.upload_id) {
            if theirs.and_then(|u| u.upload_id.as_ref()) != Some(upload_id) {
                if let Err(e) = store.abort_multipart(&mine.target.key, upload_id).await {
                    console_error!("{label}: aborting the upload of the step given up failed: {e}");
                }
            }
        }
        let held = theirs.map(|u| u.staged_keys()).unwrap_or_default();
        for parked in mine.upload.staged_keys() {
            if !held.contains(&parked) {
                delete_staging(store, &parked).await;
            }
        }
    }
}

impl StepBody for BackupTask<'_> {
    fn kind(&self) -> TaskKind {
        TaskKind::Backup
    }

    fn task(&self) -> TaskRecord {
        self.run.task()
    }

    fn label(&self) -> String {
        label(&self.msg)
    }

    async fn run(&mut self, db: &D1Database, lease: &Lease) -> std::result::Result<StepOutcome, TaskError> {
        let label = format!("{} step {}", label(&self.msg), lease.step);
        // Never while a restore rewrites the database: the backup would mix its states.
        let lock = tasks::database_lock(Some(&self.msg.database));
        if !tasks::lock(db, &lock, &self.run.id, &self.settings.task_policy(TaskKind::Backup), now()).await.map_err(meta_error)? {
            console_log!("{label}: {lock} is in use by another task (a restore); waiting");
            return Ok(StepOutcome::Wait(tasks::LOCK_WAIT_SECONDS));
        }
        let checkpoint: Option<BackupCheckpoint> = match (&self.run.checkpoint, lease.step) {
            (_, 0) => None,
            (Some(json), _) => {
                Some(serde_json::from_str(json).map_err(|e| TaskError::permanent(format!("unreadable checkpoint: {e}")))?)
            }
            (None, step) => return Err(TaskError::permanent(format!("step {step} has no checkpoint to resume from"))),
        };
        let database = self
            .settings
            .database(&self.msg.database)
            .ok_or_else(|| TaskError::permanent(format!("database {:?} is not configured", self.msg.database)))?;
        let target = match &checkpoint {
            Some(c) => c.target.clone(),
            None => first_target(&self.msg, &self.run, database, self.settings.export.rows_per_query)?,
        };
        let source_db =
            self.env.d1(&database.binding).map_err(|e| TaskError::permanent(format!("binding {}: {e}", database.binding)))?;
        let bookmark = checkpoint.as_ref().and_then(|c| c.bookmark().map(str::to_owned));
        let source = D1Source::open(&source_db, bookmark.as_deref())?;
        // Fault injection (local and test stacks only: the producer refuses it elsewhere).
        let mut source = FaultySource { inner: source, fault: self.msg.fault, attempt: lease.attempt };
        let mut store =
            FaultyStore { inner: self.store()?, fault: self.msg.fault, attempt: lease.attempt, target_key: target.key.clone() };
        let clock = || Date::now().as_millis() as i64;

        let progress = backup_step(&mut source, &mut store, &clock, &target, self.settings.export.step_budget(), checkpoint.as_ref())
            .await
            .map_err(|e| TaskError::transient(e.to_string()))?;
        console_log!("{label}: {}", platform::usage_note(source.inner.usage(), store.inner.operations()));
        match progress {
            BackupProgress::Paused { checkpoint: next, superseded } => {
                let json = serde_json::to_string(&next).map_err(|e| TaskError::permanent(e.to_string()))?;
                let statements = vec![
                    tasks::checkpoint(db, lease, &json, now()).map_err(meta_error)?,
                    meta::attempt_statement(db, &self.attempt(lease, "continued", None, None), now()).map_err(meta_error)?,
                ];
                // Fault injection: this step outlasts its lease (the token counts the leases).
                if Fault::fails(self.msg.fault.as_ref(), FaultStage::LeaseExpiry, lease.token as u32) {
                    tasks::take_over_for_fault(db, &*self, lease).await.map_err(meta_error)?;
                }
                if let Err(e) = tasks::commit(db, lease, statements).await {
                    if e.kind == ErrorKind::LostLease {
                        self.leave_nothing_behind(db, &mut store.inner, lease, &next, &label).await;
                    }
                    return Err(e.context("saving the checkpoint"));
                }
                for key in &superseded {
                    delete_staging(&mut store.inner, key).await;
                }
                console_log!(
                    "{label}: paused after {} parts; continuing in step {}; wasm memory {} MiB",
                    next.upload.parts.len(),
                    next.step,
                    wasm_memory_mib()
                );
                Ok(StepOutcome::Continued)
            }
            BackupProgress::Complete { summary, superseded } => {
                let key = BackupKey::parse(&summary.key)
                    .ok_or_else(|| TaskError::permanent(format!("unexpected key {}", summary.key)))?;
                let mut statements = vec![
                    tasks::finish(db, lease, TaskState::Succeeded, None, now()).map_err(meta_error)?,
                    tasks::release_locks(db, &self.run.id).map_err(meta_error)?,
                ];
                let attempt = self.attempt(lease, "succeeded", None, None);
                statements.extend(meta::backup_statements(db, &self.run, &key, &summary, &attempt, now()).map_err(meta_error)?);
                // The off-site copy is due from the moment the backup is recorded.
                let offsite = self.settings.offsite.as_ref();
                let copy = platform::replicas::queue_copy(db, &mut statements, offsite, ObjectKind::Backup, &summary.key, summary.bytes, &summary.sha256, now())
                    .map_err(meta_error)?;
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("recording the backup"))?;
                if let Some(id) = copy {
                    platform::replicas::send_first(self.env, &id).await;
                }
                // The superseded tail goes with the whole staging area.
                drop(superseded);
                store.inner.clear_staging(&target.staging_prefix, &label).await;
                operations::start_verification(self.env, self.settings, db, &self.msg.database, &self.run.id, &summary).await;
                self.ended_job = Some(self.msg.job_id.to_string());
                console_log!(
                    "{label}: {} bytes, {} rows in {} tables in {} steps -> {}; wasm memory {} MiB",
                    summary.bytes,
                    summary.rows,
                    summary.tables.len(),
                    summary.steps,
                    summary.key,
                    wasm_memory_mib()
                );
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
        Ok(match verdict {
            Verdict::Retry { delay_seconds, .. } => {
                vec![meta::attempt_statement(db, &self.attempt(lease, "retrying", Some(&error.message), Some(*delay_seconds)), now)?]
            }
            Verdict::Dead => vec![
                meta::attempt_statement(db, &self.attempt(lease, "dead", Some(&error.message), None), now)?,
                tasks::release_locks(db, &self.run.id)?,
                meta::run_dead_alert(db, &self.msg.job_id.to_string(), &self.msg.database, &error.message, lease.attempt, now)?,
            ],
            Verdict::Abandon => Vec::new(),
        })
    }

    async fn dying(&mut self, _db: &D1Database, _error: &TaskError) {
        discard_upload(self.env, &self.run, &label(&self.msg)).await;
        self.ended_job = Some(self.msg.job_id.to_string());
    }

    async fn ended(&mut self, db: &D1Database) {
        if let Some(job_id) = self.ended_job.take() {
            raise_job_alerts(self.env, self.settings, db, &job_id).await;
        }
    }

    async fn send(&self, step: u32, delay_seconds: u32) -> Result<()> {
        if step > 0 && Fault::fails(self.msg.fault.as_ref(), FaultStage::ContinueSend, step) {
            return Err(Error::RustError(format!("injected fault: the message of step {step} is lost")));
        }
        let message = MessageBuilder::new(self.msg.continuation(step)).delay_seconds(delay_seconds).build();
        self.env.queue(bindings::BACKUP_QUEUE)?.send(message).await
    }
}

/// Frees what an unfinished run holds in R2: its multipart upload and its staging area.
async fn discard_upload(env: &Env, run: &RunView, label: &str) {
    let Some(checkpoint) = run.checkpoint.as_deref().and_then(|j| serde_json::from_str::<BackupCheckpoint>(j).ok()) else {
        return;
    };
    match env.bucket(bindings::BACKUPS) {
        Ok(bucket) => {
            let mut store = R2Store::new(bucket);
            if let Err(e) = discard(&mut store, &checkpoint).await {
                console_error!("{label}: freeing the unfinished upload failed: {e}");
            }
            store.clear_staging(&checkpoint.target.staging_prefix, label).await;
        }
        Err(e) => console_error!("{label}: freeing the unfinished upload failed: {e}"),
    }
}

/// What the first step of a run writes where; later steps take it from the checkpoint.
fn first_target(
    msg: &BackupMessage,
    run: &RunView,
    database: &DatabaseConfig,
    rows_per_query: u32,
) -> std::result::Result<BackupTarget, TaskError> {
    // The key was decided when the job was created (it says whether the dump is gzipped and
    // whether it is encrypted).
    let key = BackupKey::parse(&run.r2_key).ok_or_else(|| TaskError::permanent(format!("run has an unexpected key {}", run.r2_key)))?;
    if key.encrypted && !database.encrypted() {
        return Err(TaskError::permanent(format!(
            "{} is to be encrypted but database {:?} no longer has recipients configured",
            run.r2_key, database.name
        )));
    }
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
        recipients: if key.encrypted { database.recipients.clone() } else { Vec::new() },
    })
}

/// Staging objects are only ever read by the step after the one that wrote them; once a newer
/// checkpoint is recorded, deleting one is housekeeping, and a failure only leaves litter.
async fn delete_staging(store: &mut R2Store, key: &str) {
    if let Err(e) = store.delete(key).await {
        console_error!("could not delete staging object {key}: {e}");
    }
}


/// The Worker's WebAssembly memory: it only grows, so this is the peak so far. Logged after
/// every step to show that memory stays flat whatever the database's size.
pub(crate) fn wasm_memory_mib() -> usize {
    core::arch::wasm32::memory_size(0) * 65_536 / (1024 * 1024)
}

/// Raises the job's outcome alert once its last run is final, and delivers pending alerts.
/// Alerting never fails a backup: errors are logged.
async fn raise_job_alerts(env: &Env, settings: &Settings, meta_db: &D1Database, job_id: &str) {
    if let Err(e) = platform::alerts::record_job_outcome(settings, meta_db, job_id, now()).await {
        console_error!("job {job_id}: recording its outcome alert failed: {e}");
    }
    deliver_alerts(env, settings, meta_db).await;
}

async fn deliver_alerts(env: &Env, settings: &Settings, meta_db: &D1Database) {
    if let Err(e) = platform::alerts::deliver_pending(env, settings, meta_db, now()).await {
        console_error!("delivering alerts failed: {e}");
    }
}

/// A message out of deliveries (the engine could not even record its failure), or one nobody
/// could read.
async fn bury(env: &Env, delivery: &Delivery) {
    let result = async {
        let meta_db = env.d1(bindings::META)?;
        let settings = config::settings(env)?;
        let msg = match parse(delivery) {
            Ok(msg) => msg,
            Err(error) => {
                console_error!("dead letter {} is unreadable: {error}; recording it", delivery.id);
                meta::record_rejected(&meta_db, &delivery.id, DEAD_LETTER_QUEUE, &body_text(delivery), &error, now())
                    .await?;
                deliver_alerts(env, &settings, &meta_db).await;
                return Ok(());
            }
        };
        let label = label(&msg);
        let Some(run) = meta::find_run(&meta_db, &msg.job_id, &msg.database).await? else {
            console_error!("{label}: dead letter for an unknown run");
            return Ok(());
        };
        // Only the delivery that carries the run's current step can kill it: a late duplicate
        // of a step already done, or a run that ended, leaves the run as it is.
        if run.state.is_final() || msg.step != run.step {
            console_log!("{label}: dead letter for a run {} at step {}; nothing to do", run.state, run.step);
            return Ok(());
        }
        discard_upload(env, &run, &label).await;
        let error = run.error.clone().unwrap_or_else(|| "the message ran out of deliveries".into());
        meta::bury_run(&meta_db, &run, &msg.job_id.to_string(), &error, now()).await?;
        console_error!("{label}: dead after {} attempts: {error}", run.attempts);
        raise_job_alerts(env, &settings, &meta_db, &msg.job_id.to_string()).await;
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
