//! The durable task engine behind backups (runs), verifications and restores (operations),
//! weekly archives (archive jobs) and off-site copies (replicas).
//!
//! A task advances in steps, one queue message per step. Whatever the kind, a delivery goes
//! through the same protocol:
//!
//! 1. [`admit`]: a message for a finished task, for another step, or for a task another delivery
//!    holds is acknowledged without work.
//! 2. The delivery takes the task's lease ([`acquire_sql`]), which increments its fencing token
//!    (`lease_token`) and counts the attempt.
//! 3. The step body runs. Every write it makes to the metadata database goes into a batch fenced
//!    on that token ([`fence_check_sql`]): a delivery whose lease was taken over (it ran past
//!    its lease, or a duplicate took the task) writes nothing, and learns it lost the lease.
//! 4. The outcome is one transition, in the same fenced batch as the data it guards:
//!    - next step: [`checkpoint_sql`] (step + 1, failures reset, due now), then the continuation
//!      message is sent. A checkpoint whose message is lost is not stranded: the sweeper
//!      re-sends every task that is due and unheld ([`due_sql`]).
//!    - failure: [`TaskPolicy::on_error`] decides; [`retry_sql`] records it with its backoff
//!      (only failures spend the budget; continuations never do) or [`dead_sql`] ends the task.
//!    - wait (a lock, a backup to finish first): [`postpone_sql`], then a new delayed message.
//!    - done: [`finish_sql`] with the kind's own result rows.
//!
//! Everything here is plain data and SQL text; the Worker crates bind the parameters, and the
//! tests run the same SQL against the migrated schema in rusqlite.

use crate::config::RetryPolicy;
use crate::ports::{PortError, PortErrorKind};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The three kinds of task, each kept in its own table of the metadata database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One database's export within a backup job (`runs`).
    Backup,
    /// A verification or a restore (`operations`).
    Operation,
    /// A weekly archive (`archive_jobs`).
    Archive,
    /// An object copied off-site (`replicas`).
    Replica,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [TaskKind::Backup, TaskKind::Operation, TaskKind::Archive, TaskKind::Replica];

    pub fn table(self) -> &'static str {
        match self {
            TaskKind::Backup => "runs",
            TaskKind::Operation => "operations",
            TaskKind::Archive => "archive_jobs",
            TaskKind::Replica => "replicas",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Backup => "backup",
            TaskKind::Operation => "operation",
            TaskKind::Archive => "archive",
            TaskKind::Replica => "replica",
        }
    }
}

/// Where a task stands. Runs and archive jobs end `succeeded` or `dead`; an operation can also
/// end `failed` (it ran to the end and its verdict is negative: a dump that does not verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Dead,
}

impl TaskState {
    pub const ALL: [TaskState; 6] =
        [TaskState::Queued, TaskState::Running, TaskState::Retrying, TaskState::Succeeded, TaskState::Failed, TaskState::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Dead)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine's columns of a task row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: String,
    pub state: TaskState,
    /// Steps finished so far: the message for the next one carries this number.
    pub step: u32,
    /// Leases taken, over the task's life.
    pub attempts: u32,
    /// Consecutive failed attempts of the current step.
    pub failures: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
}

/// What a delivery of the message for `step` may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Take the lease and run the step.
    Work,
    /// The task has ended: acknowledge.
    Finished(TaskState),
    /// The message is for another step (a duplicate of a step done, or a message from before a
    /// dead task was put back): acknowledge. A task is never waiting on such a message: the
    /// sweeper re-sends the one it needs.
    OtherStep { current: u32 },
    /// Another delivery holds the task until `until`: acknowledge. If that delivery dies, the
    /// sweeper re-sends the task once the lease has run out.
    Leased { until: DateTime<Utc> },
}

/// Decides what a delivery of the message for `step`, whose queue message id is `owner`, may do.
/// The same message delivered again may take its own lease back: the fencing token keeps the
/// earlier delivery, should it still be running, from writing anything.
pub fn admit(task: &TaskRecord, step: u32, owner: &str, now: DateTime<Utc>) -> Admission {
    if task.state.is_final() {
        return Admission::Finished(task.state);
    }
    if step != task.step {
        return Admission::OtherStep { current: task.step };
    }
    match task.lease_until {
        Some(until) if until >= now && task.lease_owner.as_deref() != Some(owner) => Admission::Leased { until },
        _ => Admission::Work,
    }
}

/// A lease held by one delivery: the token every write of the delivery is fenced on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub kind: TaskKind,
    pub id: String,
    pub step: u32,
    pub token: u64,
    /// This attempt's number within the step (1 for the first; failures before it + 1).
    pub attempt: u32,
}

/// How errors are handled, per kind of error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Busy, network, 5xx, a reset or overloaded database, a timeout: retried with backoff.
    Transient,
    /// Will fail the same way again (bad configuration, a missing binding, an unreadable
    /// checkpoint): the task ends at once.
    Permanent,
    /// Another delivery took the task: this one stops without writing.
    LostLease,
}

/// An error of a step, typed where it arose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TaskError {
    pub fn transient(message: impl Into<String>) -> TaskError {
        TaskError { kind: ErrorKind::Transient, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> TaskError {
        TaskError { kind: ErrorKind::Permanent, message: message.into() }
    }

    pub fn lost_lease(message: impl Into<String>) -> TaskError {
        TaskError { kind: ErrorKind::LostLease, message: message.into() }
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(self, doing: &str) -> TaskError {
        TaskError { message: format!("{doing}: {}", self.message), ..self }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

/// A port's error, as a step meets it: a platform that could not answer is worth retrying; a
/// statement the database refused is retried too (within the budget), since for an export or
/// an archive it is the database changing under it. Restores turn a refused statement of the
/// dump into their outcome before it gets here.
impl From<PortError> for TaskError {
    fn from(e: PortError) -> TaskError {
        match e.kind {
            PortErrorKind::Unavailable | PortErrorKind::Rejected => TaskError::transient(e.message),
        }
    }
}

/// How one kind of task is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPolicy {
    /// Attempts of one step before the task is dead (the first one included).
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    /// The longest a step may run (its budget's seconds).
    pub step_seconds: u64,
    /// How long a lease outlasts `step_seconds`: the step's own bookkeeping after its budget.
    /// A delivery still running after that loses the task to the next one (its writes are
    /// fenced off), so this trades waiting for a dead delivery against redoing a slow one.
    pub lease_margin_seconds: u64,
}

/// What becomes of a task after a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try the step again after `delay_seconds`.
    Retry { delay_seconds: u32, at: DateTime<Utc> },
    /// Give up: the task is dead.
    Dead,
    /// The lease was lost: write nothing; the delivery that holds the task carries on.
    Abandon,
}

impl TaskPolicy {
    /// Until when a lease taken at `now` holds.
    pub fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + Duration::seconds((self.step_seconds + self.lease_margin_seconds) as i64)
    }

    /// The verdict on attempt `lease.attempt` of a step failing with `error`.
    pub fn on_error(&self, lease: &Lease, error: &TaskError, now: DateTime<Utc>) -> Verdict {
        match error.kind {
            ErrorKind::LostLease => Verdict::Abandon,
            ErrorKind::Permanent => Verdict::Dead,
            ErrorKind::Transient if lease.attempt >= self.max_attempts => Verdict::Dead,
            ErrorKind::Transient => {
                let delay_seconds = self.retry.delay_seconds(lease.attempt);
                Verdict::Retry { delay_seconds, at: now + Duration::seconds(i64::from(delay_seconds)) }
            }
        }
    }
}

/// Timestamps as the metadata database stores them: RFC 3339 UTC with milliseconds, which sort
/// as text.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

const FINAL_STATES: &str = "('succeeded', 'failed', 'dead')";

/// Takes the lease of task `?1` at step `?2` for delivery `?3` until `?4`, at `?5`: counts the
/// attempt and increments the fencing token. Returns the new token and the step's failures so
/// far (no row: the task ended, moved on, or another delivery holds it).
pub fn acquire_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1, error = NULL, \
           lease_owner = ?3, lease_until = ?4, started_at = coalesce(started_at, ?5), updated_at = ?5 \
         WHERE id = ?1 AND step = ?2 AND state NOT IN {FINAL_STATES} \
           AND (lease_until IS NULL OR lease_until < ?5 OR lease_owner = ?3) \
         RETURNING lease_token, failures",
        kind.table()
    )
}

/// The first statement of a fenced batch: inserts into `fence_table` (whose CHECK accepts only
/// 1) how many rows of `guarded_table` with `key_column` = `id` hold `token`. Once another
/// delivery has taken the lease (a newer token), that count is 0 and the whole batch fails,
/// writing nothing. Written out with literals so that the same statement serves D1's prepared
/// statements and a restore target's plain batches.
pub fn fence_check_sql(fence_table: &str, guarded_table: &str, key_column: &str, id: &str, token: u64) -> String {
    format!(
        "INSERT INTO {} (held) SELECT count(*) FROM {} WHERE {} = {} AND lease_token = {token}",
        crate::dump::sql::ident(fence_table),
        crate::dump::sql::ident(guarded_table),
        crate::dump::sql::ident(key_column),
        crate::dump::sql::string_literal(id)
    )
}

/// The fence of a task in the metadata database.
pub fn task_fence_sql(lease: &Lease) -> String {
    fence_check_sql(META_FENCE_TABLE, lease.kind.table(), "id", &lease.id, lease.token)
}

/// The metadata database's fence table (migrations/0007_task_engine.sql).
pub const META_FENCE_TABLE: &str = "lease_fence";

/// The last statement of a fenced batch: leaves the fence empty.
pub const FENCE_RELEASE_SQL: &str = "DELETE FROM lease_fence";

/// Step done: task `?1` moves to the next step, resuming from checkpoint `?2`, due at `?3`
/// (now: its message is sent right after).
pub fn checkpoint_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET step = step + 1, checkpoint = ?2, failures = 0, error = NULL, lease_owner = NULL, \
           lease_until = NULL, next_attempt_at = ?3, updated_at = ?3 WHERE id = ?1",
        kind.table()
    )
}

/// A failed attempt of task `?1` (error `?2`), tried again at `?3`; recorded at `?4`.
pub fn retry_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET state = 'retrying', failures = failures + 1, error = ?2, next_attempt_at = ?3, \
           lease_owner = NULL, lease_until = NULL, updated_at = ?4 WHERE id = ?1",
        kind.table()
    )
}

/// Task `?1` is dead of error `?2` at `?3`: its checkpoint goes (the step body frees what it
/// held first).
pub fn dead_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET state = 'dead', failures = failures + 1, error = ?2, finished_at = ?3, updated_at = ?3, \
           checkpoint = NULL, next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ?1",
        kind.table()
    )
}

/// Task `?1` ran to its end in state `?2` (`succeeded`, or `failed` for an operation), at `?3`,
/// with error `?4` (NULL when it succeeded).
pub fn finish_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET state = ?2, error = ?4, finished_at = ?3, updated_at = ?3, checkpoint = NULL, \
           next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ?1",
        kind.table()
    )
}

/// Task `?1` waits (for a lock, for another task) without failing: its lease goes and it is
/// due again at `?2`; recorded at `?3`. Waiting is not an attempt: the count taken with the
/// lease is given back, and a task that has not done its first step has not started.
pub fn postpone_sql(kind: TaskKind) -> String {
    format!(
        "UPDATE {} SET lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2, updated_at = ?3, \
           attempts = attempts - 1, \
           state = CASE WHEN step = 0 AND failures = 0 THEN 'queued' ELSE state END, \
           started_at = CASE WHEN step = 0 AND failures = 0 THEN NULL ELSE started_at END WHERE id = ?1",
        kind.table()
    )
}

/// Tasks whose message is overdue: unfinished, due before `?1` (now less the grace a message
/// takes to arrive), no lease in force at `?2` (now). At most `?3`, the longest overdue first.
/// Columns: id, step.
pub fn due_sql(kind: TaskKind) -> String {
    format!(
        "SELECT id, step FROM {} WHERE state NOT IN {FINAL_STATES} AND next_attempt_at <= ?1 \
           AND (lease_until IS NULL OR lease_until < ?2) ORDER BY next_attempt_at LIMIT ?3",
        kind.table()
    )
}

/// The sweeper re-sent task `?1`'s message at `?2`: it is due again from then (so a message
/// lost again is re-sent by a later sweep, and one on its way is not sent twice by the next).
pub fn resent_sql(kind: TaskKind) -> String {
    format!("UPDATE {} SET next_attempt_at = ?2 WHERE id = ?1 AND state NOT IN {FINAL_STATES}", kind.table())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 3, 0, second).unwrap()
    }

    fn task(state: TaskState, step: u32, lease: Option<(&str, DateTime<Utc>)>) -> TaskRecord {
        TaskRecord {
            id: "t".into(),
            state,
            step,
            attempts: 0,
            failures: 0,
            lease_owner: lease.map(|(o, _)| o.to_string()),
            lease_until: lease.map(|(_, u)| u),
        }
    }

    #[test]
    fn admission_acks_finished_other_step_and_leased_tasks() {
        let now = at(30);
        assert_eq!(admit(&task(TaskState::Queued, 0, None), 0, "m1", now), Admission::Work);
        assert_eq!(admit(&task(TaskState::Retrying, 2, None), 2, "m1", now), Admission::Work);
        for state in [TaskState::Succeeded, TaskState::Failed, TaskState::Dead] {
            assert_eq!(admit(&task(state, 2, None), 2, "m1", now), Admission::Finished(state));
        }
        // A duplicate of a step done, and a message from before a task was reset, both go.
        assert_eq!(admit(&task(TaskState::Running, 3, None), 2, "m1", now), Admission::OtherStep { current: 3 });
        assert_eq!(admit(&task(TaskState::Queued, 0, None), 4, "m1", now), Admission::OtherStep { current: 0 });
        // Held by another delivery until later: leave it to its holder.
        let held = task(TaskState::Running, 1, Some(("m0", at(40))));
        assert_eq!(admit(&held, 1, "m1", now), Admission::Leased { until: at(40) });
        // The same message again (its delivery died), or a lease run out: take it.
        assert_eq!(admit(&held, 1, "m0", now), Admission::Work);
        assert_eq!(admit(&task(TaskState::Running, 1, Some(("m0", at(20)))), 1, "m1", now), Admission::Work);
    }

    #[test]
    fn failures_back_off_until_the_budget_is_spent() {
        let policy = TaskPolicy {
            max_attempts: 3,
            retry: RetryPolicy { base_seconds: 10, max_seconds: 15 },
            step_seconds: 60,
            lease_margin_seconds: 120,
        };
        let lease = |attempt| Lease { kind: TaskKind::Backup, id: "t".into(), step: 0, token: 1, attempt };
        let transient = TaskError::transient("SQLITE_BUSY");
        assert_eq!(policy.on_error(&lease(1), &transient, at(0)), Verdict::Retry { delay_seconds: 10, at: at(10) });
        assert_eq!(policy.on_error(&lease(2), &transient, at(0)), Verdict::Retry { delay_seconds: 15, at: at(15) });
        assert_eq!(policy.on_error(&lease(3), &transient, at(0)), Verdict::Dead);
        assert_eq!(policy.on_error(&lease(1), &TaskError::permanent("no binding DB_X"), at(0)), Verdict::Dead);
        assert_eq!(policy.on_error(&lease(1), &TaskError::lost_lease("token 2 is gone"), at(0)), Verdict::Abandon);
        assert_eq!(policy.lease_until(at(0)), at(0) + Duration::seconds(180));
    }

    #[test]
    fn port_errors_are_retried() {
        assert_eq!(TaskError::from(PortError::unavailable("reset")).kind, ErrorKind::Transient);
        assert_eq!(TaskError::from(PortError::rejected("no such table")).kind, ErrorKind::Transient);
    }

    #[test]
    fn states_parse_back() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
        assert_eq!(TaskState::parse("done"), None);
        assert!(TaskState::Failed.is_final() && !TaskState::Retrying.is_final());
    }
}
