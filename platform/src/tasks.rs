//! The task store and the delivery protocol, once for every kind of task (see `shared::task`
//! for the engine and its SQL): backup runs, operations and archive jobs are admitted, leased,
//! fenced, retried, buried and swept by these functions. The Worker crates supply only their
//! step bodies ([`StepBody`]).

#![allow(async_fn_in_trait)] // Workers are single-threaded: the futures need not be Send.

use crate::meta::{number, opt_text, statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::config::Settings;
use shared::message::{ArchiveMessage, BackupMessage, OperationMessage};
use shared::ports::PortError;
use shared::task::{
    acquire_sql, admit, checkpoint_sql, dead_sql, due_sql, finish_sql, parse_timestamp, postpone_sql,
    resent_sql, retry_sql, task_fence_sql, Admission, Lease, TaskError, TaskKind, TaskPolicy, TaskRecord, TaskState,
    Verdict, FENCE_RELEASE_SQL,
};
use uuid::Uuid;
use worker::{console_error, console_log, D1Database, D1PreparedStatement, D1Result, Env, MessageBuilder, Result};

/// The engine's columns of a task, as a worker read them with the rest of its row (one read
/// per delivery: the row the step body works from).
pub fn task_record(
    id: &str,
    state: TaskState,
    step: u32,
    attempts: u32,
    failures: u32,
    lease_owner: Option<&str>,
    lease_until: Option<&str>,
) -> TaskRecord {
    TaskRecord {
        id: id.to_owned(),
        state,
        step,
        attempts,
        failures,
        lease_owner: lease_owner.map(str::to_owned),
        lease_until: lease_until.and_then(parse_timestamp),
    }
}

/// Takes the lease of step `step` of task `id` for delivery `owner`: the new fencing token, or
/// `None` when the task is not to be had (ended, moved on, or held by another delivery).
pub async fn acquire(
    db: &D1Database,
    policy: &TaskPolicy,
    kind: TaskKind,
    id: &str,
    step: u32,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<Option<Lease>> {
    #[derive(Deserialize)]
    struct Row {
        lease_token: u64,
        failures: u32,
    }
    let params = [text(id), number(u64::from(step)), text(owner), text(&timestamp(policy.lease_until(now))), text(&timestamp(now))];
    let row: Option<Row> = statement(db, &acquire_sql(kind), &params)?.first(None).await?;
    Ok(row.map(|r| Lease { kind, id: id.to_owned(), step, token: r.lease_token, attempt: r.failures + 1 }))
}

/// Runs `statements` as one D1 batch (one transaction) fenced on `lease`: all of them take
/// effect while the lease is this delivery's, none once another delivery has taken the task.
/// Returns the statements' results.
pub async fn commit(db: &D1Database, lease: &Lease, statements: Vec<D1PreparedStatement>) -> std::result::Result<Vec<D1Result>, TaskError> {
    let mut batch = Vec::with_capacity(statements.len() + 2);
    batch.push(db.prepare(task_fence_sql(lease)));
    batch.extend(statements);
    batch.push(db.prepare(FENCE_RELEASE_SQL));
    match db.batch(batch).await {
        Ok(mut results) => {
            results.pop();
            results.remove(0);
            Ok(results)
        }
        Err(e) => Err(failed_commit(db, lease, &e.to_string()).await),
    }
}

/// The task's current fencing token (`None`: no such task).
async fn current_token(db: &D1Database, kind: TaskKind, id: &str) -> Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Row {
        lease_token: u64,
    }
    let sql = format!("SELECT lease_token FROM {} WHERE id = ?1", kind.table());
    Ok(statement(db, &sql, &[text(id)])?.first::<Row>(None).await?.map(|r| r.lease_token))
}

/// Why a fenced batch failed: the token is read back (a lost lease is a fact of the row, not
/// a guess from the error's text); otherwise it is the database's error, typed at the boundary.
async fn failed_commit(db: &D1Database, lease: &Lease, error: &str) -> TaskError {
    match current_token(db, lease.kind, &lease.id).await {
        Ok(Some(token)) if token == lease.token => TaskError::from(PortError::from_d1_message(error)),
        Ok(token) => TaskError::lost_lease(format!(
            "{} {} was taken over by another delivery (token {} is now {token:?})",
            lease.kind.as_str(),
            lease.id,
            lease.token
        )),
        Err(read) => TaskError::transient(format!("{error}; reading the lease back failed too: {read}")),
    }
}

/// Fault injection (`lease_expiry`): this delivery's lease is taken over at the end of its
/// step, before it records the step, as when a step outlasts its lease: the fencing token moves
/// on (the local queue runs one delivery at a time, so the taking over is done here), and the
/// step's message is sent again for the delivery that redoes it. The caller then goes on to
/// record its step, which the fence refuses.
pub async fn take_over_for_fault<B: StepBody>(db: &D1Database, body: &B, lease: &Lease) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET lease_token = lease_token + 1, lease_owner = NULL, lease_until = NULL \
         WHERE id = ?1 AND lease_token = ?2",
        lease.kind.table()
    );
    statement(db, &sql, &[text(&lease.id), number(lease.token)])?.run().await?;
    console_log!("{} {}: injected fault: lease {} taken over", lease.kind.as_str(), lease.id, lease.token);
    body.send(lease.step, 0).await
}

/// An error of the metadata database (or of preparing a statement for it) as a step meets it,
/// typed at the boundary like every D1 error.
pub fn meta_error(e: worker::Error) -> TaskError {
    TaskError::from(PortError::from_d1_message(e.to_string()))
}

/// Step done: the task moves to the next step from `checkpoint`, due now. Goes in the step's
/// fenced batch with whatever the step recorded.
pub fn checkpoint(db: &D1Database, lease: &Lease, checkpoint: &str, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(db, &checkpoint_sql(lease.kind), &[text(&lease.id), text(checkpoint), text(&timestamp(now))])
}

/// The task ran to its end in `state` (`succeeded`, or `failed` for an operation whose verdict
/// is negative). Goes in the last step's fenced batch with the kind's result rows.
pub fn finish(db: &D1Database, lease: &Lease, state: TaskState, error: Option<&str>, now: DateTime<Utc>) -> Result<D1PreparedStatement> {
    statement(db, &finish_sql(lease.kind), &[text(&lease.id), text(state.as_str()), text(&timestamp(now)), opt_text(error)])
}

/// What a task's lock on a database is called: the database restored into or backed up (one
/// lock for both, so a backup never reads a database a restore is rewriting, nor the other way
/// round), or the scratch database of verifications.
pub fn database_lock(database: Option<&str>) -> String {
    match database {
        Some(name) => format!("database:{name}"),
        None => "scratch".into(),
    }
}

/// Seconds before a task that found its database locked asks again (a new message: waiting is
/// not a failure).
pub const LOCK_WAIT_SECONDS: u32 = 5;

/// Takes the lock `name` for task `owner`, or renews it: every step of the task does, so the lock
/// is a lease that lasts a step and the longest backoff before the next attempt, and a task
/// keeps its database across retries. False when another task holds it.
pub async fn lock(db: &D1Database, name: &str, owner: &str, policy: &TaskPolicy, now: DateTime<Utc>) -> Result<bool> {
    let until = policy.lease_until(now) + chrono::Duration::seconds(i64::from(policy.retry.max_seconds));
    let result = statement(
        db,
        "INSERT INTO locks (name, owner, until) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until \
         WHERE locks.owner = excluded.owner OR locks.until < ?4",
        &[text(name), text(owner), text(&timestamp(until)), text(&timestamp(now))],
    )?
    .run()
    .await?;
    crate::meta::changed_one(&result)
}

/// Releases every lock task `owner` holds (with its last write: its end or its death).
pub fn release_locks(db: &D1Database, owner: &str) -> Result<D1PreparedStatement> {
    statement(db, "DELETE FROM locks WHERE owner = ?1", &[text(owner)])
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Recorded its checkpoint (with [`checkpoint`], fenced): the next step's message goes now.
    Continued,
    /// Recorded the task's end (with [`finish`], fenced).
    Finished,
    /// Could not start yet (a lock held, a backup to finish first): ask again in this many
    /// seconds. Waiting is not a failure.
    Wait(u32),
}

/// The kind-specific side of a task: its step and what its failures and death record.
pub trait StepBody {
    fn kind(&self) -> TaskKind;
    /// The task as read with the row the body works from (see [`task_record`]).
    fn task(&self) -> TaskRecord;
    /// How the task is named in logs.
    fn label(&self) -> String;
    /// Runs one step under `lease`; every write goes through [`commit`] with `lease`.
    async fn run(&mut self, db: &D1Database, lease: &Lease) -> std::result::Result<StepOutcome, TaskError>;
    /// Rows written with a failed attempt, in its fenced batch (history, the alert of a death).
    fn failure_statements(
        &self,
        db: &D1Database,
        lease: &Lease,
        error: &TaskError,
        verdict: &Verdict,
        now: DateTime<Utc>,
    ) -> Result<Vec<D1PreparedStatement>>;
    /// The task was recorded dead of `error` (under this delivery's lease): free what it held
    /// (an open upload, its staging area).
    async fn dying(&mut self, db: &D1Database, error: &TaskError);
    /// After the task ended (succeeded, failed or dead): raise and deliver its alerts. Never fails.
    async fn ended(&mut self, db: &D1Database);
    /// Sends the task's message for `step`, delivered after `delay_seconds`.
    async fn send(&self, step: u32, delay_seconds: u32) -> Result<()>;
}

/// What becomes of the delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Deliver it again after this many seconds (the queue's retry: a failed attempt, already
    /// counted by the task).
    RetryIn(u32),
}

/// Seconds before a message whose task could not even be read (the metadata database itself
/// failing) comes back.
const UNREADABLE_TASK_RETRY_SECONDS: u32 = 30;

/// Handles one delivery of the message for step `step` of `body`'s task (`owner`: the queue
/// message's id), and says what to do with the message.
pub async fn deliver<B: StepBody>(db: &D1Database, settings: &Settings, body: &mut B, step: u32, owner: &str) -> Disposition {
    let label = format!("{} step {step}", body.label());
    let kind = body.kind();
    let policy = settings.task_policy(kind);
    let now = crate::now();
    let task = body.task();
    match admit(&task, step, owner, now) {
        Admission::Work => {}
        other => {
            console_log!("{label}: {other:?}; acknowledged without work");
            return Disposition::Ack;
        }
    }
    let lease = match acquire(db, &policy, kind, &task.id, step, owner, now).await {
        Ok(Some(lease)) => lease,
        Ok(None) => {
            console_log!("{label}: another delivery took the task first; acknowledged");
            return Disposition::Ack;
        }
        Err(e) => {
            console_error!("{label}: taking the lease failed: {e}");
            return Disposition::RetryIn(UNREADABLE_TASK_RETRY_SECONDS);
        }
    };
    let label = format!("{label} attempt {} (token {})", lease.attempt, lease.token);
    let error = match body.run(db, &lease).await {
        Ok(StepOutcome::Continued) => {
            // The checkpoint is recorded: a lost send strands nothing, the sweeper re-sends it.
            if let Err(e) = body.send(step + 1, 0).await {
                console_error!("{label}: sending step {} failed ({e}); the sweeper will send it", step + 1);
            }
            return Disposition::Ack;
        }
        Ok(StepOutcome::Finished) => {
            body.ended(db).await;
            return Disposition::Ack;
        }
        Ok(StepOutcome::Wait(seconds)) => {
            let at = now + chrono::Duration::seconds(i64::from(seconds));
            let postponed = statement(db, &postpone_sql(kind), &[text(&lease.id), text(&timestamp(at)), text(&timestamp(now))]);
            match postponed.map_err(meta_error) {
                Ok(s) => match commit(db, &lease, vec![s]).await {
                    Ok(_) => {
                        if let Err(e) = body.send(step, seconds).await {
                            console_error!("{label}: sending the wait failed ({e}); the sweeper will send it");
                        }
                        return Disposition::Ack;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    fail(db, &policy, body, &lease, error, &label).await
}

/// Records a failed attempt as the policy decides: retried with backoff, dead, or (a lost
/// lease) nothing at all.
async fn fail<B: StepBody>(db: &D1Database, policy: &TaskPolicy, body: &mut B, lease: &Lease, error: TaskError, label: &str) -> Disposition {
    let now = crate::now();
    let verdict = policy.on_error(lease, &error, now);
    let (sql, params) = match &verdict {
        Verdict::Abandon => {
            console_log!("{label}: {error}; stopping without writing");
            return Disposition::Ack;
        }
        Verdict::Retry { delay_seconds, at } => {
            console_error!("{label}: failed ({:?}): {error}; retrying in {delay_seconds} s", error.kind);
            (retry_sql(lease.kind), vec![text(&lease.id), text(&error.message), text(&timestamp(*at)), text(&timestamp(now))])
        }
        Verdict::Dead => {
            console_error!("{label}: failed ({:?}): {error}; giving up", error.kind);
            (dead_sql(lease.kind), vec![text(&lease.id), text(&error.message), text(&timestamp(now))])
        }
    };
    let statements = statement(db, &sql, &params)
        .and_then(|s| Ok(std::iter::once(s).chain(body.failure_statements(db, lease, &error, &verdict, now)?).collect()));
    let recorded = match statements {
        Ok(statements) => commit(db, lease, statements).await,
        Err(e) => Err(meta_error(e)),
    };
    match (recorded, verdict) {
        (Err(e), _) if e.kind == shared::task::ErrorKind::LostLease => {
            console_log!("{label}: {e}; the failure is not recorded");
            Disposition::Ack
        }
        (Err(e), Verdict::Retry { delay_seconds, .. }) => {
            console_error!("{label}: recording the failure failed too: {e}");
            Disposition::RetryIn(delay_seconds)
        }
        (Err(e), _) => {
            console_error!("{label}: recording the death failed: {e}");
            Disposition::RetryIn(UNREADABLE_TASK_RETRY_SECONDS)
        }
        (Ok(_), Verdict::Retry { delay_seconds, .. }) => Disposition::RetryIn(delay_seconds),
        (Ok(_), _) => {
            // Only once its death is recorded under its own lease: a delivery that lost the
            // task must not free what the new holder is using.
            body.dying(db, &error).await;
            body.ended(db).await;
            Disposition::Ack
        }
    }
}

/// The sweeper's work: every task of every kind whose message is overdue (due more than
/// `SWEEP_GRACE_SECONDS` ago, no lease in force) gets its message again. Covers a send lost
/// after a checkpoint, a job whose messages were never sent, a delivery that died holding its
/// lease, and messages lost with a local queue. Returns what was re-sent.
pub async fn sweep(env: &Env, settings: &Settings, now: DateTime<Utc>) -> Result<Vec<(TaskKind, String, u32)>> {
    /// Messages per kind per sweep: a sweep stays well inside one invocation's subrequests.
    const SWEEP_LIMIT: u64 = 200;
    #[derive(Deserialize)]
    struct Due {
        id: String,
        step: u32,
    }
    let db = env.d1(crate::bindings::META)?;
    let cutoff = now - chrono::Duration::seconds(i64::from(settings.sweep_grace_seconds));
    let mut resent = Vec::new();
    for kind in TaskKind::ALL {
        let due: Vec<Due> = statement(&db, &due_sql(kind), &[text(&timestamp(cutoff)), text(&timestamp(now)), number(SWEEP_LIMIT)])?
            .all()
            .await?
            .results()?;
        for task in due {
            match send_task_message(env, &db, kind, &task.id, task.step).await {
                Ok(true) => {
                    statement(&db, &resent_sql(kind), &[text(&task.id), text(&timestamp(now))])?.run().await?;
                    resent.push((kind, task.id, task.step));
                }
                Ok(false) => console_error!("sweep: {} {} has no message to send", kind.as_str(), task.id),
                Err(e) => console_error!("sweep: sending {} {} step {} failed: {e}", kind.as_str(), task.id, task.step),
            }
        }
    }
    Ok(resent)
}

/// Sends the message for step `step` of a task, built from its row: false when the row is gone.
async fn send_task_message(env: &Env, db: &D1Database, kind: TaskKind, id: &str, step: u32) -> Result<bool> {
    let parse_id = |id: &str| Uuid::parse_str(id).map_err(|e| worker::Error::RustError(format!("task id {id}: {e}")));
    match kind {
        TaskKind::Backup => {
            #[derive(Deserialize)]
            struct Row {
                job_id: String,
                database: String,
                kind: String,
                requested_at: String,
            }
            let row: Option<Row> = statement(
                db,
                "SELECT r.job_id, r.database, j.kind, j.requested_at FROM runs AS r JOIN jobs AS j ON j.id = r.job_id \
                 WHERE r.id = ?1",
                &[text(id)],
            )?
            .first(None)
            .await?;
            let Some(row) = row else { return Ok(false) };
            let backup_kind = shared::keys::BackupKind::parse(&row.kind)
                .ok_or_else(|| worker::Error::RustError(format!("job {} has kind {:?}", row.job_id, row.kind)))?;
            let requested_at = parse_timestamp(&row.requested_at)
                .ok_or_else(|| worker::Error::RustError(format!("job {} has time {:?}", row.job_id, row.requested_at)))?;
            let message = BackupMessage::new(parse_id(&row.job_id)?, &row.database, backup_kind, requested_at).continuation(step);
            env.queue(crate::bindings::BACKUP_QUEUE)?.send(message).await?;
        }
        TaskKind::Operation => {
            let message = OperationMessage::new(parse_id(id)?).continuation(step);
            env.queue(crate::bindings::RESTORE_QUEUE)?.send(message).await?;
        }
        TaskKind::Archive => {
            #[derive(Deserialize)]
            struct Row {
                week: String,
            }
            let row: Option<Row> = statement(db, "SELECT week FROM archive_jobs WHERE id = ?1", &[text(id)])?.first(None).await?;
            let Some(row) = row else { return Ok(false) };
            let message = ArchiveMessage::new(parse_id(id)?, &row.week).continuation(step);
            env.queue(crate::bindings::ARCHIVE_QUEUE)?.send(MessageBuilder::new(message).build()).await?;
        }
        TaskKind::Replica => {
            let message = shared::message::ReplicaMessage::new(parse_id(id)?).continuation(step);
            env.queue(crate::bindings::OFFSITE_QUEUE)?.send(message).await?;
        }
    }
    Ok(true)
}
