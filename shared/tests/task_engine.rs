//! The task engine's SQL against the real metadata schema (every migration applied, in order),
//! in rusqlite: leases, fencing tokens, transitions and the sweeper's view, for each kind.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use shared::task::{
    acquire_sql, checkpoint_sql, dead_sql, due_sql, finish_sql, postpone_sql, resent_sql, retry_sql, task_fence_sql,
    timestamp, Lease, TaskKind, FENCE_RELEASE_SQL,
};

fn migrated() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        conn.execute_batch(&std::fs::read_to_string(&file).unwrap()).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    }
    conn
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 3, 0, 0).unwrap() + Duration::seconds(seconds)
}

fn ts(seconds: i64) -> String {
    timestamp(at(seconds))
}

/// One task of each kind, queued at 0 s and due then.
fn seed(conn: &Connection) {
    conn.execute_batch(&format!(
        "INSERT INTO jobs (id, kind, trigger, requested_at, created_at) VALUES ('job', 'daily', 'cron', '{t}', '{t}');
         INSERT INTO runs (id, job_id, database, state, attempts, r2_key, queued_at, updated_at, next_attempt_at)
           VALUES ('backup', 'job', 'db', 'queued', 0, 'daily/2026-12-03/db.sql', '{t}', '{t}', '{t}');
         INSERT INTO operations (id, kind, state, source_key, database, plan, requested_at, updated_at, next_attempt_at)
           VALUES ('operation', 'verify', 'queued', 'daily/2026-12-03/db.sql', 'db', '{{}}', '{t}', '{t}', '{t}');
         INSERT INTO archive_jobs (id, week, trigger, state, r2_key, requested_at, queued_at, updated_at, next_attempt_at)
           VALUES ('archive', '2026-W48', 'cron', 'queued', 'weekly/2026-W48.tar.gz', '{t}', '{t}', '{t}', '{t}');
         INSERT INTO replicas (id, source_key, object_kind, offsite_key, state, bytes, sha256, stored_at, queued_at,
             updated_at, next_attempt_at)
           VALUES ('replica', 'daily/2026-12-03/db.sql', 'backup', 'd1/daily/2026-12-03/db.sql', 'queued', 10, 'ab',
             '{t}', '{t}', '{t}', '{t}');",
        t = ts(0)
    ))
    .unwrap();
}

fn id(kind: TaskKind) -> &'static str {
    kind.as_str()
}

/// Takes the lease as a delivery does; `None` when the task is not to be had.
fn acquire(conn: &Connection, kind: TaskKind, step: u32, owner: &str, now: i64) -> Option<Lease> {
    conn.query_row(&acquire_sql(kind), params![id(kind), step, owner, ts(now + 180), ts(now)], |r| {
        Ok(Lease { kind, id: id(kind).into(), step, token: r.get::<_, i64>(0)? as u64, attempt: r.get::<_, u32>(1)? + 1 })
    })
    .optional()
    .unwrap()
}

/// A fenced batch, as D1 runs one: all statements in one transaction, or none of them.
fn fenced(conn: &Connection, lease: &Lease, sql: &str, values: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        conn.execute(&task_fence_sql(lease), [])?;
        conn.execute(sql, values)?;
        conn.execute(FENCE_RELEASE_SQL, [])?;
        Ok(())
    })();
    conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    result
}

#[derive(Debug, PartialEq)]
struct Row {
    state: String,
    step: u32,
    attempts: u32,
    failures: u32,
    token: u64,
    owner: Option<String>,
    checkpoint: Option<String>,
    next: Option<String>,
}

fn row(conn: &Connection, kind: TaskKind) -> Row {
    conn.query_row(
        &format!(
            "SELECT state, step, attempts, failures, lease_token, lease_owner, checkpoint, next_attempt_at FROM {} WHERE id = ?1",
            kind.table()
        ),
        [id(kind)],
        |r| {
            Ok(Row {
                state: r.get(0)?,
                step: r.get(1)?,
                attempts: r.get(2)?,
                failures: r.get(3)?,
                token: r.get::<_, i64>(4)? as u64,
                owner: r.get(5)?,
                checkpoint: r.get(6)?,
                next: r.get(7)?,
            })
        },
    )
    .unwrap()
}

fn due(conn: &Connection, kind: TaskKind, now: i64, grace: i64) -> Vec<(String, u32)> {
    let mut stmt = conn.prepare(&due_sql(kind)).unwrap();
    stmt.query_map(params![ts(now - grace), ts(now), 100], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_delivery_whose_lease_was_taken_over_writes_nothing() {
    for kind in TaskKind::ALL {
        let conn = migrated();
        seed(&conn);
        let first = acquire(&conn, kind, 0, "m1", 10).expect("the first delivery takes the task");
        assert_eq!((first.token, first.attempt), (1, 1));
        // A duplicate while the lease holds gets nothing.
        assert_eq!(acquire(&conn, kind, 0, "m2", 20), None, "{kind:?}");
        // The first delivery stalls past its lease; a duplicate takes over.
        let second = acquire(&conn, kind, 0, "m2", 10 + 181).expect("an expired lease is taken over");
        assert_eq!(second.token, 2);
        // The stalled delivery wakes up and tries to record its step: refused, nothing written.
        let before = row(&conn, kind);
        let refused = fenced(&conn, &first, &checkpoint_sql(kind), params![id(kind), "{\"stale\":true}", ts(200)]);
        assert!(refused.is_err(), "{kind:?}: the fence lets a stale token write");
        assert_eq!(row(&conn, kind), before, "{kind:?}");
        // So is its failure.
        assert!(fenced(&conn, &first, &retry_sql(kind), params![id(kind), "late", ts(300), ts(200)]).is_err());
        // The holder's checkpoint goes through.
        fenced(&conn, &second, &checkpoint_sql(kind), params![id(kind), "{\"at\":1}", ts(200)]).unwrap();
        let now = row(&conn, kind);
        assert_eq!((now.step, now.failures, now.owner.as_deref()), (1, 0, None));
        assert_eq!(now.checkpoint.as_deref(), Some("{\"at\":1}"));
        assert_eq!((now.attempts, now.token), (2, 2));
        // The message for step 0, delivered again, cannot take the task back.
        assert_eq!(acquire(&conn, kind, 0, "m1", 210), None);
    }
}

#[test]
fn failures_are_counted_by_the_task_and_reset_by_progress() {
    for kind in TaskKind::ALL {
        let conn = migrated();
        seed(&conn);
        let lease = acquire(&conn, kind, 0, "m1", 0).unwrap();
        fenced(&conn, &lease, &retry_sql(kind), params![id(kind), "SQLITE_BUSY", ts(30), ts(5)]).unwrap();
        let lease = acquire(&conn, kind, 0, "m1", 30).unwrap();
        assert_eq!(lease.attempt, 2, "{kind:?}: the second attempt of the step");
        fenced(&conn, &lease, &retry_sql(kind), params![id(kind), "SQLITE_BUSY", ts(90), ts(35)]).unwrap();
        let r = row(&conn, kind);
        assert_eq!((r.state.as_str(), r.failures, r.next.as_deref()), ("retrying", 2, Some(ts(90).as_str())));
        let lease = acquire(&conn, kind, 0, "m1", 90).unwrap();
        assert_eq!(lease.attempt, 3);
        fenced(&conn, &lease, &checkpoint_sql(kind), params![id(kind), "{}", ts(95)]).unwrap();
        // A continuation never spends the budget: the next step starts from its first attempt.
        let lease = acquire(&conn, kind, 1, "m2", 96).unwrap();
        assert_eq!(lease.attempt, 1);
        fenced(&conn, &lease, &dead_sql(kind), params![id(kind), "gave up", ts(100)]).unwrap();
        let r = row(&conn, kind);
        assert_eq!((r.state.as_str(), r.checkpoint, r.next, r.owner), ("dead", None, None, None));
        assert_eq!(acquire(&conn, kind, 1, "m3", 200), None, "a dead task is not taken again");
    }
}

#[test]
fn the_sweeper_sees_tasks_due_and_unheld_only() {
    for kind in TaskKind::ALL {
        let conn = migrated();
        seed(&conn);
        // Queued at 0 s: within the grace its message is still on its way.
        assert_eq!(due(&conn, kind, 60, 300), vec![]);
        assert_eq!(due(&conn, kind, 301, 300), vec![(id(kind).to_string(), 0)]);
        // Held: not due while the lease runs, even if overdue.
        let lease = acquire(&conn, kind, 0, "m1", 400).unwrap();
        assert_eq!(due(&conn, kind, 500, 300), vec![]);
        // Its holder died: due once the lease has run out.
        assert_eq!(due(&conn, kind, 400 + 181, 300), vec![(id(kind).to_string(), 0)]);
        // A checkpoint whose continuation was never sent: due after the grace.
        fenced(&conn, &lease, &checkpoint_sql(kind), params![id(kind), "{}", ts(450)]).unwrap();
        assert_eq!(due(&conn, kind, 600, 300), vec![]);
        assert_eq!(due(&conn, kind, 751, 300), vec![(id(kind).to_string(), 1)]);
        // Re-sent at 751 s: not re-sent again until that message has had its grace.
        conn.execute(&resent_sql(kind), params![id(kind), ts(751)]).unwrap();
        assert_eq!(due(&conn, kind, 800, 300), vec![]);
        // Waiting for a lock: due when it said, and not counted as an attempt.
        let attempts = row(&conn, kind).attempts;
        let lease = acquire(&conn, kind, 1, "m2", 900).unwrap();
        fenced(&conn, &lease, &postpone_sql(kind), params![id(kind), ts(1000), ts(901)]).unwrap();
        assert_eq!(row(&conn, kind).attempts, attempts);
        assert_eq!(due(&conn, kind, 1200, 300), vec![]);
        assert_eq!(due(&conn, kind, 1301, 300), vec![(id(kind).to_string(), 1)]);
        // Finished: never due.
        let lease = acquire(&conn, kind, 1, "m3", 1400).unwrap();
        fenced(&conn, &lease, &finish_sql(kind), params![id(kind), "succeeded", ts(1401), None::<String>]).unwrap();
        assert_eq!(due(&conn, kind, 99_999, 300), vec![]);
        assert_eq!(row(&conn, kind).state, "succeeded");
    }
}

#[test]
fn a_task_waiting_before_its_first_step_has_not_started() {
    for kind in TaskKind::ALL {
        let conn = migrated();
        seed(&conn);
        let lease = acquire(&conn, kind, 0, "m1", 10).unwrap();
        fenced(&conn, &lease, &postpone_sql(kind), params![id(kind), ts(20), ts(11)]).unwrap();
        let (state, started, attempts): (String, Option<String>, u32) = conn
            .query_row(&format!("SELECT state, started_at, attempts FROM {} WHERE id = ?1", kind.table()), [id(kind)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((state.as_str(), started, attempts), ("queued", None, 0), "{kind:?}");
        // Taken again later, it starts then; its token still moved on, fencing the first lease.
        let again = acquire(&conn, kind, 0, "m2", 20).unwrap();
        assert_eq!(again.token, 2);
        assert!(fenced(&conn, &lease, &checkpoint_sql(kind), params![id(kind), "{}", ts(21)]).is_err());
    }
}
