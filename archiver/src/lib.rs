//! The archiver Worker: weekly compaction of the dailies into `weekly/YYYY-Www.tar.gz`, then
//! retention.
//!
//! Its cron (Sundays 04:00 UTC) records an archive job for the ISO week that just ended and
//! queues it; `POST /archive` on the producer does the same for any past week. The archive is
//! built in steps, one per message on the archiver's own queue: a task of the engine
//! (`platform::tasks`), like the consumer's exports, of which this file holds the step body. A
//! failed step is retried with backoff from its checkpoint; after `ARCHIVE_MAX_ATTEMPTS`
//! consecutive failures the job is dead, its upload aborted and an alert recorded. When the archive is complete and
//! verified, retention runs and its report is stored with the job.

use platform::archives::{self, ArchiveJobView};
use platform::meta::Trigger;
use platform::r2_store::R2Store;
use platform::replicas::{self, ObjectKind};
use platform::tasks::{self, meta_error, Disposition, StepBody, StepOutcome};
use platform::{bindings, config, millis_to_utc, now};
use shared::archive::{archive_step, ArchiveCheckpoint, ArchivePlan, ArchiveProgress};
use shared::config::{RetryPolicy, Settings};
use shared::faults::{Fault, FaultStage, FaultyStore};
use shared::task::{Lease, TaskError, TaskKind, TaskRecord, TaskState, Verdict};
use shared::upload::PART_SIZE;
use shared::keys::IsoWeek;
use shared::message::ArchiveMessage;
use shared::ports::ObjectStore;
use worker::*;

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let at = millis_to_utc(event.schedule() as i64);
    // The last ISO week that is over: on Sunday 04:00, the week ending today still has its
    // Sunday to run, so the archive is of the week before.
    let week = IsoWeek::of(at.date_naive()).previous();
    match archives::enqueue_archive(&env, week, Trigger::Cron, None).await {
        Ok((job_id, true)) => console_log!("archiver cron {} at {at}: queued job {job_id} for {}", event.cron(), week.label()),
        Ok((job_id, false)) => {
            console_log!("archiver cron {} at {at}: {} is being archived by job {job_id}", event.cron(), week.label())
        }
        Err(e) => console_error!("archiver cron {} at {at}: queuing the archive of {} failed: {e}", event.cron(), week.label()),
    }
}

#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    // Each message is acknowledged or retried on its own.
    for raw in batch.raw_iter() {
        let retry_in = |seconds: u32| raw.retry_with_options(&QueueRetryOptionsBuilder::new().with_delay_seconds(seconds).build());
        let text = js_sys::JSON::stringify(&raw.body()).map(String::from).unwrap_or_default();
        let parsed = serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(ArchiveMessage::from_json);
        let msg = match parsed {
            Ok(msg) => msg,
            Err(e) => {
                // Nothing can make it readable: keep it on record instead of retrying forever.
                console_error!("archive message {} is unreadable ({e}); dropped: {text}", raw.id());
                if let Ok(db) = env.d1(bindings::META) {
                    let _ = platform::meta::record_rejected(&db, &raw.id(), "archive-jobs", &text, &e, now()).await;
                }
                raw.ack();
                continue;
            }
        };
        let label = format!("archive job {} ({})", msg.job_id, msg.week);
        let (settings, db) = match (config::settings(&env), env.d1(bindings::META)) {
            (Ok(settings), Ok(db)) => (settings, db),
            (Err(e), _) | (_, Err(e)) => {
                console_error!("{label}: {e}");
                retry_in(RetryPolicy::DEFAULT.base_seconds);
                continue;
            }
        };
        let job = match archives::get_archive_job(&db, &msg.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                console_error!("{label}: no such job; dropped");
                raw.ack();
                continue;
            }
            Err(e) => {
                console_error!("{label}: reading the job failed: {e}");
                retry_in(settings.retry.base_seconds);
                continue;
            }
        };
        let step = msg.step;
        let mut task = ArchiveTask { env: &env, settings: &settings, msg, job, label };
        match tasks::deliver(&db, &settings, &mut task, step, &raw.id()).await {
            Disposition::Ack => raw.ack(),
            Disposition::RetryIn(seconds) => retry_in(seconds),
        }
    }
    Ok(())
}

/// One weekly archive, as a task of the engine.
struct ArchiveTask<'a> {
    env: &'a Env,
    settings: &'a Settings,
    msg: ArchiveMessage,
    job: ArchiveJobView,
    label: String,
}

impl ArchiveTask<'_> {
    /// Ends a job that had nothing to write.
    async fn finish_without_archive(&self, db: &D1Database, lease: &Lease, outcome: &str) -> std::result::Result<StepOutcome, TaskError> {
        let statements = vec![
            tasks::finish(db, lease, TaskState::Succeeded, None, now()).map_err(meta_error)?,
            archives::no_archive_statement(db, &self.msg.job_id, outcome).map_err(meta_error)?,
        ];
        tasks::commit(db, lease, statements).await.map_err(|e| e.context("recording the outcome"))?;
        console_log!("{}: {outcome}", self.label);
        Ok(StepOutcome::Finished)
    }
}

impl StepBody for ArchiveTask<'_> {
    fn kind(&self) -> TaskKind {
        TaskKind::Archive
    }

    fn task(&self) -> TaskRecord {
        self.job.task()
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    async fn run(&mut self, db: &D1Database, lease: &Lease) -> std::result::Result<StepOutcome, TaskError> {
        let job = &self.job;
        let week = IsoWeek::parse(&job.week).ok_or_else(|| TaskError::permanent(format!("job week {:?} is invalid", job.week)))?;
        let checkpoint = match job.checkpoint.as_deref() {
            Some(text) => serde_json::from_str::<ArchiveCheckpoint>(text)
                .map_err(|e| TaskError::permanent(format!("the job's checkpoint is unreadable: {e}")))?,
            None => {
                // The first step decides what the archive holds.
                if archives::live_archive(db, week).await.map_err(meta_error)?.is_some() {
                    // Idempotent: the week has its verified archive; rebuilding it could drop
                    // dailies that retention has since deleted.
                    return self.finish_without_archive(db, lease, "already_archived").await;
                }
                let members = archives::week_dailies(db, week).await.map_err(meta_error)?;
                if members.is_empty() {
                    return self.finish_without_archive(db, lease, "nothing_to_archive").await;
                }
                ArchiveCheckpoint::start(ArchivePlan {
                    week: week.label(),
                    key: week.archive_key(),
                    staging_prefix: format!("staging/archive-{}/", self.msg.job_id),
                    part_size: PART_SIZE,
                    created_at: now(),
                    members,
                })
            }
        };
        let bucket = self.env.bucket(bindings::BACKUPS).map_err(|e| TaskError::permanent(format!("binding BACKUPS: {e}")))?;
        // Fault injection (local and test stacks only: the producer refuses it elsewhere).
        let mut store = FaultyStore {
            inner: R2Store::new(bucket),
            fault: self.msg.fault,
            attempt: lease.attempt,
            target_key: checkpoint.plan.key.clone(),
        };
        let clock = || Date::now().as_millis() as i64;
        let progress = archive_step(&mut store, &clock, self.settings.archive.budget(), &checkpoint)
            .await
            .map_err(|e| TaskError::transient(e.to_string()))?;
        let mut store = store.inner;
        match progress {
            ArchiveProgress::Paused { checkpoint: next, superseded } => {
                let text = serde_json::to_string(&next).map_err(|e| TaskError::permanent(e.to_string()))?;
                let statements = vec![tasks::checkpoint(db, lease, &text, now()).map_err(meta_error)?];
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("saving the checkpoint"))?;
                delete_all(&mut store, &superseded).await;
                Ok(StepOutcome::Continued)
            }
            ArchiveProgress::Complete { summary, superseded } => {
                let mut statements = vec![tasks::finish(db, lease, TaskState::Succeeded, None, now()).map_err(meta_error)?];
                statements.extend(archives::archive_statements(db, &self.msg.job_id, &job.week, &summary, now()).map_err(meta_error)?);
                // The off-site copy is due from the moment the archive is recorded.
                let offsite = self.settings.offsite.as_ref();
                let copy = replicas::queue_copy(db, &mut statements, offsite, ObjectKind::Archive, &summary.key, summary.bytes, &summary.sha256, now())
                    .map_err(meta_error)?;
                tasks::commit(db, lease, statements).await.map_err(|e| e.context("recording the archive"))?;
                if let Some(id) = copy {
                    replicas::send_first(self.env, &id).await;
                }
                delete_all(&mut store, &superseded).await;
                store.clear_staging(&checkpoint.plan.staging_prefix, &self.label).await;
                console_log!(
                    "{}: {} holds {} dailies ({} left out), {} bytes, verified",
                    self.label,
                    summary.key,
                    summary.members.len(),
                    summary.excluded.len(),
                    summary.bytes
                );
                // Retention runs after each weekly archive; a failure here never fails the archive.
                match archives::run_cleanup(db, &mut store, self.settings.retention, now()).await {
                    Ok(report) => {
                        console_log!("cleanup after {}: {} deleted, {} kept", summary.key, report.deleted.len(), report.kept.len());
                        let recorded = match archives::cleanup_report_statement(db, &self.msg.job_id, &report) {
                            Ok(statement) => tasks::commit(db, lease, vec![statement]).await.map(|_| ()),
                            Err(e) => Err(meta_error(e)),
                        };
                        if let Err(e) = recorded {
                            console_error!("{}: recording the cleanup report failed: {e}", self.label);
                        }
                    }
                    Err(e) => console_error!("cleanup after {} failed: {e}", summary.key),
                }
                Ok(StepOutcome::Finished)
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
    ) -> Result<Vec<D1PreparedStatement>> {
        match verdict {
            Verdict::Dead => Ok(vec![archives::archive_dead_alert(db, &self.job, &error.message, now)?]),
            _ => Ok(Vec::new()),
        }
    }

    /// Frees what the archive holds: its multipart upload and parked tail.
    async fn dying(&mut self, _db: &D1Database, _error: &TaskError) {
        let Some(checkpoint) = self.job.checkpoint.as_deref().and_then(|c| serde_json::from_str::<ArchiveCheckpoint>(c).ok()) else {
            return;
        };
        match self.env.bucket(bindings::BACKUPS) {
            Ok(bucket) => {
                let mut store = R2Store::new(bucket);
                if let Err(e) = shared::upload::discard(&mut store, &checkpoint.plan.key, &checkpoint.upload).await {
                    console_error!("{}: discarding the unfinished archive failed: {e}", self.label);
                }
                store.clear_staging(&checkpoint.plan.staging_prefix, &self.label).await;
            }
            Err(e) => console_error!("{}: discarding the unfinished archive failed: {e}", self.label),
        }
    }

    /// Alerts raised by the job (a daily left out, a dead job) go out now; delivery never fails
    /// the archive.
    async fn ended(&mut self, db: &D1Database) {
        if let Err(e) = platform::alerts::deliver_pending(self.env, self.settings, db, now()).await {
            console_error!("{}: delivering alerts failed: {e}", self.label);
        }
    }

    async fn send(&self, step: u32, delay_seconds: u32) -> Result<()> {
        if step > 0 && Fault::fails(self.msg.fault.as_ref(), FaultStage::ContinueSend, step) {
            return Err(Error::RustError(format!("injected fault: the message of step {step} is lost")));
        }
        let message = MessageBuilder::new(self.msg.continuation(step)).delay_seconds(delay_seconds).build();
        self.env.queue(bindings::ARCHIVE_QUEUE)?.send(message).await
    }
}


/// Deletes staging objects that a saved checkpoint no longer needs; a failure leaves litter
/// under `staging/`, never a wrong archive, so it is logged and not retried.
async fn delete_all<O: ObjectStore>(store: &mut O, keys: &[String]) {
    for key in keys {
        if let Err(e) = store.delete(key).await {
            console_error!("deleting the staging object {key} failed: {e}");
        }
    }
}
