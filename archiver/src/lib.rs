//! The archiver Worker: weekly compaction of the dailies into `weekly/YYYY-Www.tar.gz`, then
//! retention.
//!
//! Its cron (Sundays 04:00 UTC) records an archive job for the ISO week that just ended and
//! queues it; `POST /archive` on the producer does the same for any past week. The archive is
//! built in steps, one per message on the archiver's own queue, like the consumer's exports:
//! each step's checkpoint goes into the job's row and a message continues it. A failed step is
//! retried with backoff from its checkpoint; after `ARCHIVE_MAX_ATTEMPTS` consecutive failures
//! the job is dead, its upload aborted and an alert recorded. When the archive is complete and
//! verified, retention runs and its report is stored with the job.

use platform::archives::{self, ArchiveJobView};
use platform::meta::Trigger;
use platform::r2_store::R2Store;
use platform::{bindings, config, millis_to_utc, now};
use shared::archive::{archive_step, ArchiveCheckpoint, ArchivePlan, ArchiveProgress};
use shared::upload::PART_SIZE;
use shared::faults::FaultyStore;
use shared::keys::IsoWeek;
use shared::message::ArchiveMessage;
use shared::ports::ObjectStore;
use worker::*;

/// A step holds the job at most this long; a delivery that finds an unexpired lease leaves
/// the job to its holder.
const LEASE_SECONDS: i64 = 15 * 60;

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
        let text = js_sys::JSON::stringify(&raw.body()).map(String::from).unwrap_or_default();
        let parsed = serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(ArchiveMessage::from_json);
        match parsed {
            Ok(msg) => match archive(&env, &msg, raw.id().as_str()).await {
                Ok(Next::Ack) => raw.ack(),
                Ok(Next::RetryIn(seconds)) => {
                    raw.retry_with_options(&QueueRetryOptionsBuilder::new().with_delay_seconds(seconds).build())
                }
                Err(e) => {
                    // The metadata database itself failed: try again shortly.
                    console_error!("archive job {} step {}: {e}", msg.job_id, msg.step);
                    raw.retry_with_options(&QueueRetryOptionsBuilder::new().with_delay_seconds(30).build())
                }
            },
            Err(e) => {
                // Nothing can make it readable: keep it on record instead of retrying forever.
                console_error!("archive message {} is unreadable ({e}); dropped: {text}", raw.id());
                if let Ok(db) = env.d1(bindings::META) {
                    let _ = platform::meta::record_rejected(&db, &raw.id(), "archive-jobs", &text, &e, now()).await;
                }
                raw.ack();
            }
        }
    }
    Ok(())
}

enum Next {
    Ack,
    RetryIn(u32),
}

async fn archive(env: &Env, msg: &ArchiveMessage, delivery_id: &str) -> Result<Next> {
    let db = env.d1(bindings::META)?;
    let label = format!("archive job {} ({}) step {}", msg.job_id, msg.week, msg.step);
    let Some(job) = archives::get_archive_job(&db, &msg.job_id).await? else {
        console_error!("{label}: no such job; dropped");
        return Ok(Next::Ack);
    };
    if matches!(job.state.as_str(), "succeeded" | "dead") || job.step != msg.step {
        console_log!("{label}: job is {} at step {}; duplicate delivery acknowledged", job.state, job.step);
        return Ok(Next::Ack);
    }
    let started = now();
    let lease_until = started + chrono::Duration::seconds(LEASE_SECONDS);
    if !platform::meta::acquire_lease(&db, platform::meta::Leased::ArchiveJob, &msg.job_id.to_string(), msg.step, delivery_id, lease_until, started).await? {
        console_log!("{label}: another delivery holds the job; acknowledged");
        return Ok(Next::Ack);
    }
    let limits = config::archive_limits(env)?;
    let retry = config::retry_policy(env)?;
    let attempt = job.failures + 1;
    let outcome = run_step(env, &db, msg, &job, attempt).await;
    // Alerts raised by this step (a daily left out, a dead job) go out now; delivery never
    // fails the archive.
    let deliver = || async {
        if let Err(e) = platform::alerts::deliver_pending(env, &db, now()).await {
            console_error!("{label}: delivering alerts failed: {e}");
        }
    };
    match outcome {
        Ok(()) => {
            deliver().await;
            Ok(Next::Ack)
        }
        Err(e) => {
            let error = e.to_string();
            let dead = attempt >= limits.max_attempts;
            console_error!("{label}: attempt {attempt} failed: {error}{}", if dead { "; giving up" } else { "" });
            if dead {
                // Free what the archive holds: its multipart upload and parked tail.
                if let Some(checkpoint) = job.checkpoint.as_deref().and_then(|c| serde_json::from_str::<ArchiveCheckpoint>(c).ok()) {
                    let mut store = R2Store::new(env.bucket(bindings::BACKUPS)?);
                    if let Err(e) = shared::upload::discard(&mut store, &checkpoint.plan.key, &checkpoint.upload).await {
                        console_error!("{label}: discarding the unfinished archive failed: {e}");
                    }
                }
                archives::fail_archive_job(&db, &job, &error, true, now()).await?;
                deliver().await;
                Ok(Next::Ack)
            } else {
                archives::fail_archive_job(&db, &job, &error, false, now()).await?;
                Ok(Next::RetryIn(retry.delay_seconds(attempt)))
            }
        }
    }
}

async fn run_step(env: &Env, db: &D1Database, msg: &ArchiveMessage, job: &ArchiveJobView, attempt: u32) -> Result<()> {
    let week = IsoWeek::parse(&job.week).ok_or_else(|| Error::RustError(format!("job week {:?} is invalid", job.week)))?;
    let checkpoint = match job.checkpoint.as_deref() {
        Some(text) => serde_json::from_str::<ArchiveCheckpoint>(text)
            .map_err(|e| Error::RustError(format!("the job's checkpoint is unreadable: {e}")))?,
        None => {
            // The first step decides what the archive holds.
            if archives::live_archive(db, week).await?.is_some() {
                // Idempotent: the week has its verified archive; rebuilding it could drop
                // dailies that retention has since deleted.
                archives::finish_archive_job_without_archive(db, &msg.job_id, "already_archived", now()).await?;
                return Ok(());
            }
            let members = archives::week_dailies(db, week).await?;
            if members.is_empty() {
                archives::finish_archive_job_without_archive(db, &msg.job_id, "nothing_to_archive", now()).await?;
                return Ok(());
            }
            ArchiveCheckpoint::start(ArchivePlan {
                week: week.label(),
                key: week.archive_key(),
                staging_prefix: format!("staging/archive-{}/", msg.job_id),
                part_size: PART_SIZE,
                created_at: now(),
                members,
            })
        }
    };
    let limits = config::archive_limits(env)?;
    let store = R2Store::new(env.bucket(bindings::BACKUPS)?);
    // Fault injection (local and test stacks only: the producer refuses it elsewhere).
    let mut store = FaultyStore { inner: store, fault: msg.fault, attempt, target_key: checkpoint.plan.key.clone() };
    let clock = || Date::now().as_millis() as i64;
    let progress = archive_step(&mut store, &clock, limits.budget(), &checkpoint)
        .await
        .map_err(|e| Error::RustError(e.to_string()))?;
    let mut store = store.inner;
    match progress {
        ArchiveProgress::Paused { checkpoint: next, superseded } => {
            let text = serde_json::to_string(&next).map_err(|e| Error::RustError(e.to_string()))?;
            if !archives::save_archive_checkpoint(db, &msg.job_id, msg.step, &text, now()).await? {
                console_log!("archive job {} step {}: another delivery finished this step first", msg.job_id, msg.step);
                return Ok(());
            }
            delete_all(&mut store, &superseded).await;
            env.queue(bindings::ARCHIVE_QUEUE)?.send(msg.continuation(msg.step + 1)).await?;
        }
        ArchiveProgress::Complete { summary, superseded } => {
            archives::succeed_archive_job(db, &msg.job_id, &job.week, &summary, now()).await?;
            delete_all(&mut store, &superseded).await;
            console_log!(
                "archive job {}: {} holds {} dailies ({} left out), {} bytes, verified",
                msg.job_id,
                summary.key,
                summary.members.len(),
                summary.excluded.len(),
                summary.bytes
            );
            // Retention runs after each weekly archive; a failure here never fails the archive.
            match archives::run_cleanup(db, &mut store, config::retention_policy(env)?, now()).await {
                Ok(report) => {
                    console_log!("cleanup after {}: {} deleted, {} kept", summary.key, report.deleted.len(), report.kept.len());
                    archives::save_cleanup_report(db, &msg.job_id, &report).await?;
                }
                Err(e) => console_error!("cleanup after {} failed: {e}", summary.key),
            }
        }
    }
    Ok(())
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
