//! Restores and verifications run over many steps (as over many queue messages) against
//! rusqlite targets that enforce foreign keys and commit batch by batch, as D1 does.

mod support;

use chrono::{TimeZone, Utc};
use futures::executor::block_on;
use rusqlite::Connection;
use shared::backup::{BackupSummary, BackupTarget};
use shared::dump::StepBudget;
use shared::restore::verify::{verify_step, VerifyOutcome, VerifyProgress};
use shared::restore::{restore_step, DumpObject, RestoreError, RestorePlan, RestoreProgress, RestoreReport, PROGRESS_TABLE};
use std::collections::BTreeMap;
use support::{assert_same_data, chinook, hostile_values, run_to_completion, MemoryStore, RusqliteTarget};

fn back_up(conn: &Connection, store: &mut MemoryStore, gzip: bool) -> BackupSummary {
    let target = BackupTarget {
        database: "db".into(),
        key: format!("daily/2026-11-23/db.sql{}", if gzip { ".gz" } else { "" }),
        staging_prefix: "staging/job/db/".into(),
        gzip,
        metadata: BTreeMap::new(),
        part_size: 64 * 1024,
        started_at: Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap(),
        rows_per_query: 200,
    };
    // Small export steps: a gzip dump gets many members.
    let budget = StepBudget { max_queries: 4, ..StepBudget::UNLIMITED };
    run_to_completion(conn, store, &target, budget).summary
}

fn plan(summary: &BackupSummary, table: Option<&str>) -> RestorePlan {
    RestorePlan {
        operation: "op-1".into(),
        dump: DumpObject { key: summary.key.clone(), gzip: summary.key.ends_with(".gz"), sha256: summary.sha256.clone() },
        table: table.map(str::to_owned),
    }
}

fn clock() -> impl Fn() -> i64 {
    let now = std::cell::Cell::new(0i64);
    move || {
        now.set(now.get() + 1);
        now.get()
    }
}

const SMALL: StepBudget = StepBudget { max_queries: 150, max_bytes: 100_000, max_millis: u64::MAX };

/// Runs restore steps until done; each step starts from nothing but the plan, as a new
/// invocation would. A step that fails for want of the database is run again.
fn restore(target: &mut RusqliteTarget, store: &mut MemoryStore, plan: &RestorePlan) -> (Result<RestoreReport, RestoreError>, u32) {
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "the restore does not advance");
        match block_on(restore_step(target, store, &clock(), plan, SMALL)) {
            Ok(RestoreProgress::Paused(_)) => {}
            Ok(RestoreProgress::Finished(report)) => return (Ok(report), steps),
            Err(RestoreError::Port(e)) if e.0.contains("died") => target.die_after_batch = None,
            Err(e) => return (Err(e), steps),
        }
    }
}

fn verify(scratch: &Connection, store: &mut MemoryStore, summary: &BackupSummary) -> VerifyOutcome {
    let mut target = RusqliteTarget::new(scratch);
    let mut phase = None;
    for _ in 0..10_000 {
        let (tick, plan) = (clock(), plan(summary, None));
        let step = verify_step(&mut target, store, &tick, &plan, &summary.tables, 100, SMALL, phase.take());
        match block_on(step).unwrap() {
            VerifyProgress::Paused(next) => {
                let saved = serde_json::to_string(&next).unwrap();
                phase = Some(serde_json::from_str(&saved).unwrap());
            }
            VerifyProgress::Done(outcome) => {
                let left: i64 = scratch.query_row("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite%'", [], |r| r.get(0)).unwrap();
                assert_eq!(left, 0, "the scratch database is emptied after verification");
                return outcome;
            }
        }
    }
    panic!("the verification does not advance");
}

#[test]
fn chinook_restores_over_many_steps_from_plain_and_gzip_dumps() {
    let source = chinook();
    for gzip in [false, true] {
        let mut store = MemoryStore::default();
        let summary = back_up(&source, &mut store, gzip);
        let restored = Connection::open_in_memory().unwrap();
        let (report, steps) = restore(&mut RusqliteTarget::new(&restored), &mut store, &plan(&summary, None));
        let report = report.unwrap();
        // A step stops at the first batch past its 100,000 bytes of SQL.
        assert!(steps as u64 >= report.sql_bytes / 200_000, "{steps} steps for {} bytes (gzip {gzip})", report.sql_bytes);
        assert!(steps > 3, "expected several steps, got {steps} (gzip {gzip})");
        assert!(report.sha256_matches);
        assert_same_data(&source, &restored);
        let progress: i64 = restored
            .query_row(&format!("SELECT count(*) FROM sqlite_master WHERE name = '{PROGRESS_TABLE}'"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(progress, 0, "the progress table is dropped at the end");
    }
}

#[test]
fn a_step_dying_after_a_commit_resumes_without_running_anything_twice() {
    let source = chinook();
    for gzip in [false, true] {
        let mut store = MemoryStore::default();
        let summary = back_up(&source, &mut store, gzip);
        for die_after in [1, 2, 3, 7] {
            let restored = Connection::open_in_memory().unwrap();
            let mut target = RusqliteTarget::new(&restored);
            target.die_after_batch = Some(die_after);
            let (report, _) = restore(&mut target, &mut store, &plan(&summary, None));
            report.unwrap();
            assert_same_data(&source, &restored);
        }
    }
}

#[test]
fn a_restore_replaces_what_the_target_held() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);
    let restored = chinook();
    restored
        .execute_batch("DELETE FROM PlaylistTrack; UPDATE Genre SET Name = 'changed'; CREATE TABLE extra (x); CREATE VIEW v AS SELECT 1;")
        .unwrap();
    restore(&mut RusqliteTarget::new(&restored), &mut store, &plan(&summary, None)).0.unwrap();
    assert_same_data(&source, &restored);
}

#[test]
fn one_table_restores_alone_and_a_referenced_table_is_refused() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, true);
    let restored = chinook();
    restored.execute_batch("DELETE FROM PlaylistTrack WHERE PlaylistId > 3; UPDATE Genre SET Name = 'kept'").unwrap();
    restore(&mut RusqliteTarget::new(&restored), &mut store, &plan(&summary, Some("PlaylistTrack"))).0.unwrap();
    let count = |c: &Connection, sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count(&restored, "SELECT count(*) FROM PlaylistTrack"), 8715);
    assert_eq!(count(&restored, "SELECT count(*) FROM Genre WHERE Name = 'kept'"), 25, "other tables untouched");
    let indexes = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'PlaylistTrack' AND sql IS NOT NULL";
    assert_eq!(count(&restored, indexes), count(&source, indexes), "its indexes come back");

    match restore(&mut RusqliteTarget::new(&restored), &mut store, &plan(&summary, Some("Genre"))).0 {
        Err(RestoreError::Dump { message, .. }) => assert!(message.contains("Track"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(count(&restored, "SELECT count(*) FROM Genre WHERE Name = 'kept'"), 25, "a refusal changes nothing");
}

/// Hostile values, foreign key cycles and forward self-references, a row larger than a
/// statement, full-text search, a trigger, a view and an index.
fn hostile_database() -> Connection {
    let conn = hostile_values();
    let big = "x".repeat(250_000);
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE node (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES node (id));
         INSERT INTO node VALUES (3, 5), (5, NULL), (4, 3), (1, 4);
         CREATE TABLE a (id INTEGER PRIMARY KEY, b_id INTEGER REFERENCES b (id));
         CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL REFERENCES a (id));
         INSERT INTO a VALUES (1, 10), (2, 20);
         INSERT INTO b VALUES (10, 2), (20, 1);
         CREATE TABLE doc (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT CHECK (length(body) > 0));
         INSERT INTO doc (body) VALUES ('{big}'), ('semi; colon -- not a comment');
         DELETE FROM doc WHERE id = 2; INSERT INTO doc (body) VALUES ('after a gap');
         CREATE VIRTUAL TABLE search USING fts5(body);
         INSERT INTO search VALUES ('full text'), ('more; text');
         CREATE INDEX doc_body ON doc (body);
         CREATE VIEW doc_lengths AS SELECT id, length(body) AS n FROM doc;
         CREATE TRIGGER doc_guard AFTER UPDATE ON doc BEGIN SELECT RAISE(ABORT, 'no; updates'); END;
         PRAGMA foreign_keys = ON;"
    ))
    .unwrap();
    conn
}

#[test]
fn verification_passes_for_chinook_and_hostile_data_in_both_formats() {
    for (name, source) in [("chinook", chinook()), ("hostile", hostile_database())] {
        for gzip in [false, true] {
            let mut store = MemoryStore::default();
            let summary = back_up(&source, &mut store, gzip);
            assert!(summary.tables.iter().all(|t| t.sha256.len() == 64), "every table has a digest");
            let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &summary);
            assert!(outcome.passed, "{name} (gzip {gzip}): {:?}", outcome.problems);
            assert_eq!(outcome.rows, summary.rows);
        }
    }
}

#[test]
fn the_scratch_database_is_emptied_first() {
    let mut store = MemoryStore::default();
    let summary = back_up(&chinook(), &mut store, false);
    let outcome = verify(&chinook(), &mut store, &summary);
    assert!(outcome.passed, "{:?}", outcome.problems);
}

/// The name of the table whose rows hold SQL byte `offset` of a plain dump.
fn table_at(sql: &str, offset: usize) -> String {
    let marker = sql[..offset].rfind("\n-- Table: ").expect("inside a table's rows") + "\n-- Table: ".len();
    sql[marker..marker + sql[marker..].find('\n').unwrap()].to_owned()
}

#[test]
fn a_changed_byte_fails_verification_naming_its_table() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);
    let stored = &mut store.objects.get_mut(&summary.key).unwrap().0;
    let at = String::from_utf8_lossy(stored).find("'Princess of the Dawn'").unwrap() + 3;
    stored[at] = b'X';
    let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &summary);
    assert!(!outcome.passed);
    assert_eq!(outcome.failed_table.as_deref(), Some("Track"), "{:?}", outcome.problems);
    assert!(outcome.problems.iter().any(|p| p.contains("SHA-256")), "{:?}", outcome.problems);
}

#[test]
fn a_truncated_dump_fails_verification_naming_the_table_it_cuts() {
    let source = chinook();
    for gzip in [false, true] {
        let mut store = MemoryStore::default();
        let summary = back_up(&source, &mut store, gzip);
        let stored = &mut store.objects.get_mut(&summary.key).unwrap().0;
        let keep = stored.len() * 6 / 10;
        stored.truncate(keep);
        let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &summary);
        assert!(!outcome.passed);
        let expected = if gzip {
            // Where a gzip stream stops is known once decoded.
            let mut decoded = Vec::new();
            let _ = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&store.objects[&summary.key].0[..]), &mut decoded);
            let sql = String::from_utf8_lossy(&decoded).into_owned();
            table_at(&sql, sql.len())
        } else {
            table_at(&String::from_utf8_lossy(&store.objects[&summary.key].0), keep)
        };
        assert_eq!(outcome.failed_table.as_deref(), Some(expected.as_str()), "gzip {gzip}: {:?}", outcome.problems);
    }
}
