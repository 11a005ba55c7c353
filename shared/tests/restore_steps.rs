//! Restores and verifications run over many steps (as over many queue messages) against
//! rusqlite targets that enforce foreign keys and commit batch by batch, as D1 does.

mod support;

use chrono::{TimeZone, Utc};
use futures::executor::block_on;
use rusqlite::Connection;
use shared::backup::{BackupSummary, BackupTarget};
use shared::dump::StepBudget;
use shared::restore::operation::{
    give_up, operation_step, DumpSource, OperationKind, OperationOutcome, OperationPhase, OperationPlan, OperationProgress,
    Rollback,
};
use shared::restore::verify::{verify_step, Expected, VerifyOutcome, VerifyProgress, SCRATCH_MARKER};
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
        recipients: Vec::new(),
    };
    // Small export steps: a gzip dump gets many members.
    let budget = StepBudget { max_queries: 4, ..StepBudget::UNLIMITED };
    run_to_completion(conn, store, &target, budget).summary
}

fn plan(summary: &BackupSummary, table: Option<&str>) -> RestorePlan {
    RestorePlan {
        operation: "op-1".into(),
        dump: DumpObject::named(&summary.key, &summary.sha256),
        table: table.map(str::to_owned),
        keep_progress: false,
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
        match block_on(restore_step(target, store, &clock(), plan, SMALL, 1)) {
            Ok(RestoreProgress::Paused(_)) => {}
            Ok(RestoreProgress::Finished(report)) => return (Ok(report), steps),
            Err(RestoreError::Port(e)) if e.message.contains("died") => target.die_after_batch = None,
            Err(e) => return (Err(e), steps),
        }
    }
}

/// Everything the export recorded, as a verification compares it.
fn expected(summary: &BackupSummary) -> Expected<'_> {
    Expected { tables: &summary.tables, schema: &summary.schema, sequences: &summary.sequences }
}

fn verify(scratch: &Connection, store: &mut MemoryStore, summary: &BackupSummary) -> VerifyOutcome {
    verify_or_refuse(scratch, store, summary).unwrap_or_else(|reason| panic!("refused: {reason}"))
}

fn verify_or_refuse(scratch: &Connection, store: &mut MemoryStore, summary: &BackupSummary) -> Result<VerifyOutcome, String> {
    let mut target = RusqliteTarget::new(scratch);
    let mut phase = None;
    for _ in 0..10_000 {
        let (tick, plan) = (clock(), RestorePlan { keep_progress: true, ..plan(summary, None) });
        let step = verify_step(&mut target, store, &tick, &plan, expected(summary), 100, SMALL, phase.take(), 1);
        match block_on(step).unwrap() {
            VerifyProgress::Paused(next) => {
                let saved = serde_json::to_string(&next).unwrap();
                phase = Some(serde_json::from_str(&saved).unwrap());
            }
            VerifyProgress::Done(outcome) => {
                let left: Vec<String> = scratch
                    .prepare("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite%'").unwrap()
                    .query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
                assert_eq!(left, [SCRATCH_MARKER], "the scratch database is emptied after verification, its marker kept");
                return Ok(outcome);
            }
            VerifyProgress::Refused(reason) => return Err(reason),
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

/// A delivery that lost its lease mid-restore (it ran past it; a newer delivery took over) must
/// not apply one more batch: every batch is fenced on the token in the target's progress row.
#[test]
fn a_delivery_that_lost_its_lease_applies_nothing_more() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);
    let plan = plan(&summary, None);
    let restored = Connection::open_in_memory().unwrap();
    let mut target = RusqliteTarget::new(&restored);
    let step = |target: &mut RusqliteTarget, store: &mut MemoryStore, token| {
        block_on(restore_step(target, store, &clock(), &plan, SMALL, token))
    };
    // The delivery with token 1 does two steps, then stalls; token 2 takes over for one step.
    assert!(matches!(step(&mut target, &mut store, 1), Ok(RestoreProgress::Paused(_))));
    assert!(matches!(step(&mut target, &mut store, 1), Ok(RestoreProgress::Paused(_))));
    assert!(matches!(step(&mut target, &mut store, 2), Ok(RestoreProgress::Paused(_))));
    let statements: i64 = restored.query_row(
        &format!("SELECT json_extract(cursor, '$.statements') FROM \"{PROGRESS_TABLE}\""), [], |r| r.get(0)).unwrap();
    // Token 1 wakes up: refused before it runs a single statement, the target as token 2 left it.
    let snapshot = |conn: &Connection| -> Vec<(String, i64)> {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap()
            .query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        names.into_iter().map(|n| {
            let rows = conn.query_row(&format!("SELECT count(*) FROM \"{n}\""), [], |r| r.get(0)).unwrap();
            (n, rows)
        }).collect()
    };
    let held = snapshot(&restored);
    match step(&mut target, &mut store, 1) {
        Err(RestoreError::LostLease(message)) => assert!(message.contains("token 2"), "{message}"),
        other => panic!("expected a lost lease, got {other:?}"),
    }
    assert_eq!(snapshot(&restored), held, "the stale delivery committed nothing");
    let after: i64 = restored.query_row(
        &format!("SELECT json_extract(cursor, '$.statements') FROM \"{PROGRESS_TABLE}\""), [], |r| r.get(0)).unwrap();
    assert_eq!(after, statements);
    // A stale delivery that read the cursor before the take-over and tries to commit a batch:
    // the fence in that very batch refuses it.
    let fence = shared::task::fence_check_sql(shared::restore::FENCE_TABLE, PROGRESS_TABLE, "operation", "op-1", 1);
    let refused = block_on(shared::restore::SqlTarget::execute_batch(
        &mut target,
        &[fence, "CREATE TABLE sneaked_in (x)".into()],
    ));
    assert_eq!(refused.unwrap_err().kind, shared::ports::PortErrorKind::Rejected);
    let sneaked: i64 = restored.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'sneaked_in'", [], |r| r.get(0)).unwrap();
    assert_eq!(sneaked, 0);
    // Token 2 (or a later one) finishes, exactly.
    let mut token = 3;
    loop {
        match step(&mut target, &mut store, token).unwrap() {
            RestoreProgress::Paused(_) => token += 1,
            RestoreProgress::Finished(report) => {
                assert!(report.sha256_matches);
                break;
            }
        }
    }
    assert_same_data(&source, &restored);
    let ours: i64 = restored
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_d1\\_backup\\_%' ESCAPE '\\'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ours, 0, "the progress and fence tables are gone");
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
    // A scratch database with leftovers of an interrupted verification: emptied, then used.
    let scratch = chinook();
    scratch.execute_batch(&format!("CREATE TABLE {SCRATCH_MARKER} (marked_at TEXT)")).unwrap();
    let outcome = verify(&scratch, &mut store, &summary);
    assert!(outcome.passed, "{:?}", outcome.problems);
}

/// `VERIFY_DB` bound by mistake to a database that holds data (the metadata database, a
/// source): refused before anything in it is touched.
#[test]
fn a_database_that_is_not_a_scratch_database_is_never_emptied() {
    let mut store = MemoryStore::default();
    let summary = back_up(&chinook(), &mut store, false);
    let source = chinook();
    let before = everything(&source);
    let reason = verify_or_refuse(&source, &mut store, &summary).unwrap_err();
    assert!(reason.contains("VERIFY_DB is not a scratch database") && reason.contains("\"Album\""), "{reason}");
    assert_eq!(everything(&source), before);
    // An empty database is taken as scratch, and marked.
    let empty = Connection::open_in_memory().unwrap();
    assert!(verify(&empty, &mut store, &summary).passed);
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

#[test]
fn a_daily_comes_out_of_a_weekly_archive_over_many_steps_and_restores() {
    use shared::archive::{archive_step, ArchiveBudget, ArchiveCheckpoint, ArchiveMember, ArchivePlan, ArchiveProgress};
    use shared::restore::extract::{extract_step, ArchivedDump, ExtractProgress};
    use shared::upload::UploadSpec;

    let source = chinook();
    let mut store = MemoryStore::default();
    let mut members = Vec::new();
    for gzip in [false, true] {
        let summary = back_up(&source, &mut store, gzip);
        // Move each daily to its own date, as two nights would have stored them.
        let key = summary.key.replace("2026-11-23", if gzip { "2026-11-17" } else { "2026-11-16" });
        let object = store.objects.remove(&summary.key).unwrap();
        store.objects.insert(key.clone(), object);
        members.push(ArchiveMember {
            database: "db".into(),
            date: chrono::NaiveDate::parse_from_str(&key[6..16], "%Y-%m-%d").unwrap(),
            path: ArchiveMember::path_for(&key).unwrap(),
            source_key: key,
            bytes: summary.bytes,
            sha256: summary.sha256.clone(),
            rows: summary.rows,
            tables: summary.tables.len() as u64,
            mtime: 0,
        });
    }
    let plan = ArchivePlan {
        week: "2026-W47".into(),
        key: "weekly/2026-W47.tar.gz".into(),
        staging_prefix: "staging/archive/".into(),
        part_size: 64 * 1024,
        created_at: Utc.with_ymd_and_hms(2026, 11, 23, 4, 0, 0).unwrap(),
        members: members.clone(),
    };
    let mut checkpoint = ArchiveCheckpoint::start(plan);
    let budget = ArchiveBudget { max_read_bytes: 256 * 1024, max_millis: u64::MAX };
    loop {
        match block_on(archive_step(&mut store, &|| 0, budget, &checkpoint)).unwrap() {
            ArchiveProgress::Paused { checkpoint: next, .. } => checkpoint = next,
            ArchiveProgress::Complete { .. } => break,
        }
    }

    for member in &members {
        let archived = ArchivedDump {
            archive_key: "weekly/2026-W47.tar.gz".into(),
            path: member.path.clone(),
            sha256: member.sha256.clone(),
        };
        let gzip = member.path.ends_with(".gz");
        let dest = UploadSpec {
            key: format!("restore-staging/op-1/{}", if gzip { "db.sql.gz" } else { "db.sql" }),
            staging_prefix: "restore-staging/op-1/tails/".into(),
            content_type: "application/octet-stream".into(),
            metadata: BTreeMap::new(),
            part_size: 64 * 1024,
            gzip: false,
            recipients: Vec::new(),
        };
        let (mut from, mut steps) = (None, 0);
        loop {
            steps += 1;
            match block_on(extract_step(&mut store, &archived, &dest, 100_000, from.as_ref())).unwrap() {
                ExtractProgress::Paused { checkpoint, superseded } => {
                    if let Some(key) = superseded {
                        store.objects.remove(&key);
                    }
                    from = Some(serde_json::from_str(&serde_json::to_string(&checkpoint).unwrap()).unwrap());
                }
                ExtractProgress::Done { bytes, superseded } => {
                    if let Some(key) = superseded {
                        store.objects.remove(&key);
                    }
                    assert_eq!(bytes, member.bytes);
                    break;
                }
            }
        }
        assert!(steps > 3, "{steps} steps");
        assert_eq!(store.objects[&dest.key].0, store.objects[&member.source_key].0, "the copy is the daily byte for byte");
        assert!(store.objects.keys().all(|k| !k.contains("/tails/")), "no tail left behind");

        let restored = Connection::open_in_memory().unwrap();
        let plan = RestorePlan {
            operation: "op-1".into(),
            dump: DumpObject { gzip, ..DumpObject::named(&dest.key, &member.sha256) },
            table: None,
            keep_progress: false,
        };
        restore(&mut RusqliteTarget::new(&restored), &mut store, &plan).0.unwrap();
        assert_same_data(&source, &restored);
    }

    // A member the archive does not hold is a clear error.
    let missing = ArchivedDump { archive_key: "weekly/2026-W47.tar.gz".into(), path: "2026-11-18/db.sql".into(), sha256: String::new() };
    let dest = UploadSpec {
        key: "restore-staging/op-2/db.sql".into(),
        staging_prefix: "restore-staging/op-2/tails/".into(),
        content_type: "application/octet-stream".into(),
        metadata: BTreeMap::new(),
        part_size: 64 * 1024,
        gzip: false,
        recipients: Vec::new(),
    };
    match block_on(extract_step(&mut store, &missing, &dest, u64::MAX, None)) {
        Err(RestoreError::Dump { message, .. }) => assert!(message.contains("holds no member"), "{message}"),
        other => panic!("expected a missing member, got {other:?}"),
    }
}

#[test]
fn the_reader_resumes_inside_gzip_members_at_any_point() {
    use shared::ports::{ObjectInfo, ObjectStore};
    use shared::restore::reader::{DumpReader, ReadPosition};
    use std::io::Write;

    // Five members of barely compressible bytes, so reads of 1 MiB end inside members.
    let (mut plain, mut gz, mut x) = (Vec::new(), Vec::new(), 7u64);
    for _ in 0..5 {
        let member: Vec<u8> = (0..400_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 59) as u8 + b'a'
            })
            .collect();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(&member).unwrap();
        gz.extend(encoder.finish().unwrap());
        plain.extend(member);
    }
    let mut store = MemoryStore::default();
    let info = ObjectInfo { content_type: "application/gzip".into(), custom: BTreeMap::new() };
    block_on(store.put("k.gz", gz, &info)).unwrap();
    for step_bytes in [77_777, 400_000, 1_500_000] {
        let (mut read, mut position, mut steps) = (Vec::new(), ReadPosition::default(), 0);
        loop {
            steps += 1;
            // Each step starts from the saved position alone, as a new invocation would.
            let saved: ReadPosition = serde_json::from_str(&serde_json::to_string(&position).unwrap()).unwrap();
            let mut reader = DumpReader::open("k.gz", true, &saved);
            let mut taken = 0;
            while taken < step_bytes {
                if reader.buffered().is_empty() && !block_on(reader.fill(&mut store)).unwrap() {
                    break;
                }
                let n = reader.buffered().len().min(step_bytes - taken).min(70_001);
                read.extend_from_slice(&reader.buffered()[..n]);
                reader.consume(n);
                taken += n;
            }
            position = reader.position();
            if taken == 0 {
                break;
            }
            assert!(steps < 5_000_000 / step_bytes + 10);
        }
        assert!(read == plain, "steps of {step_bytes} bytes read {} of {} bytes", read.len(), plain.len());
        assert_eq!(position.sql_offset, plain.len() as u64);
    }
}


#[test]
fn a_verification_whose_scratch_copy_vanished_restores_again() {
    let mut store = MemoryStore::default();
    let summary = back_up(&chinook(), &mut store, false);
    let scratch = Connection::open_in_memory().unwrap();
    let mut target = RusqliteTarget::new(&scratch);
    let plan = RestorePlan { keep_progress: true, ..plan(&summary, None) };
    let mut phase = None;
    let mut emptied = false;
    loop {
        let tick = clock();
        let step = verify_step(&mut target, &mut store, &tick, &plan, expected(&summary), 100, SMALL, phase.take(), 1);
        match block_on(step).unwrap() {
            VerifyProgress::Paused(next) => {
                if matches!(next, shared::restore::verify::VerifyPhase::Exporting { .. }) && !emptied {
                    // Another verification takes the scratch database and empties it.
                    scratch.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
                    let tables: Vec<String> = scratch
                        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
                        .unwrap()
                        .query_map([], |r| r.get(0))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect();
                    for t in tables {
                        scratch.execute_batch(&format!("DROP TABLE \"{t}\"")).unwrap();
                    }
                    scratch.execute_batch("PRAGMA foreign_keys = ON").unwrap();
                    emptied = true;
                }
                phase = Some(next);
            }
            VerifyProgress::Done(outcome) => {
                assert!(emptied);
                assert!(outcome.passed, "{:?}", outcome.problems);
                return;
            }
            VerifyProgress::Refused(reason) => panic!("{reason}"),
        }
    }
}

/// Runs a restore operation step by step, each from nothing but its saved phase, as the
/// consumer does; returns its outcome.
fn run_restore_operation(target: &Connection, store: &mut MemoryStore, summary: &BackupSummary) -> OperationOutcome {
    run_restore_operation_with(&mut RusqliteTarget::new(target), store, summary, &Rollback::Empty)
}

fn run_restore_operation_with(
    target: &mut RusqliteTarget,
    store: &mut MemoryStore,
    summary: &BackupSummary,
    rollback: &Rollback,
) -> OperationOutcome {
    let plan = OperationPlan {
        id: "op-check".into(),
        kind: OperationKind::Restore,
        source: DumpSource::Stored(DumpObject::named(&summary.key, &summary.sha256)),
        table: None,
        expected: summary.tables.clone(),
        expected_schema: summary.schema.clone(),
        expected_sequences: summary.sequences.clone(),
        rows_per_query: 100,
        fault: None,
        identity: None,
    };
    let mut phase = plan.start();
    assert!(matches!(phase, OperationPhase::Checking(None)), "a restore starts by checking the dump");
    for token in 1..10_000 {
        let budget = StepBudget { max_bytes: 20_000, ..SMALL };
        match block_on(operation_step(target, store, &clock(), &plan, budget, phase.clone(), token, rollback)).unwrap() {
            OperationProgress::Paused { phase: next, .. } => {
                phase = serde_json::from_str(&serde_json::to_string(&next).unwrap()).unwrap();
            }
            OperationProgress::Done(outcome) => return outcome,
        }
    }
    panic!("the restore does not advance");
}

/// Everything in a database, as rows of text, to compare before and after.
fn everything(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    let objects: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name").unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    for (kind, name, sql) in objects {
        out.push(format!("{kind} {name} {sql:?}"));
        if kind == "table" {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
            let columns = stmt.column_count();
            let rows: Vec<String> = stmt
                .query_map([], |r| (0..columns).map(|i| Ok(format!("{:?}", r.get_ref(i)?))).collect::<rusqlite::Result<Vec<_>>>())
                .unwrap()
                .map(|row| row.unwrap().join("|"))
                .collect();
            out.extend(rows);
        }
    }
    out
}

#[test]
fn a_damaged_or_cut_dump_is_refused_before_the_target_is_touched() {
    let source = chinook();
    for gzip in [false, true] {
        let mut clean = MemoryStore::default();
        let summary = back_up(&source, &mut clean, gzip);
        let damages: [(&str, fn(&mut Vec<u8>)); 3] = [
            ("a byte changed", |dump| {
                let at = dump.len() * 3 / 4;
                dump[at] ^= 0x20;
            }),
            ("cut short", |dump| dump.truncate(dump.len() * 9 / 10)),
            ("its last line gone", |dump| dump.truncate(dump.len() - 40)),
        ];
        for (what, damage) in damages {
            let mut store = MemoryStore { objects: clean.objects.clone(), ..MemoryStore::default() };
            damage(&mut store.objects.get_mut(&summary.key).unwrap().0);
            let target = Connection::open_in_memory().unwrap();
            target.execute_batch("CREATE TABLE precious (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO precious VALUES (1, 'keep me');").unwrap();
            let before = everything(&target);
            match run_restore_operation(&target, &mut store, &summary) {
                OperationOutcome::Failed { message, .. } => {
                    assert!(message.contains("nothing in the target was changed"), "{what} (gzip {gzip}): {message}")
                }
                other => panic!("{what} (gzip {gzip}): expected a refusal, got {other:?}"),
            }
            assert_eq!(everything(&target), before, "{what} (gzip {gzip}): the target was touched");
        }
        // The undamaged dump passes its check over many steps and restores exactly.
        let target = Connection::open_in_memory().unwrap();
        match run_restore_operation(&target, &mut clean, &summary) {
            OperationOutcome::Restored(report) => assert!(report.sha256_matches),
            other => panic!("gzip {gzip}: {other:?}"),
        }
        assert_same_data(&source, &target);
    }
}

/// Verification compares the schema too: every index, view and trigger as `sqlite_master`
/// holds it, and the AUTOINCREMENT counters, not only each table's rows.
#[test]
fn a_restored_copy_whose_schema_or_counters_differ_fails_verification() {
    let source = hostile_database();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);
    assert!(summary.schema.iter().any(|o| o.kind == "trigger" && o.name == "doc_guard"), "{:?}", summary.schema);
    assert!(!summary.sequences.is_empty(), "hostile has an AUTOINCREMENT counter");
    assert!(verify(&Connection::open_in_memory().unwrap(), &mut store, &summary).passed);

    // The export recorded an index the dump does not create (a dump that lost it).
    let mut lost_index = summary.clone();
    lost_index.schema.push(shared::dump::SchemaObject {
        kind: "index".into(),
        name: "doc_extra".into(),
        sql: "CREATE INDEX doc_extra ON doc (id, body)".into(),
    });
    let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &lost_index);
    assert!(!outcome.passed && outcome.problems.iter().any(|p| p.contains("index \"doc_extra\" is missing")), "{:?}", outcome.problems);

    // A trigger restored with other SQL than exported.
    let mut changed_trigger = summary.clone();
    let trigger = changed_trigger.schema.iter_mut().find(|o| o.name == "doc_guard").unwrap();
    trigger.sql = trigger.sql.replace("no; updates", "no updates");
    let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &changed_trigger);
    assert!(!outcome.passed && outcome.problems.iter().any(|p| p.contains("trigger \"doc_guard\" is restored as")), "{:?}", outcome.problems);

    // A counter the source had higher than the restored copy's.
    let mut counter = summary.clone();
    counter.sequences[0].seq = "999999".into();
    let outcome = verify(&Connection::open_in_memory().unwrap(), &mut store, &counter);
    assert!(!outcome.passed && outcome.problems.iter().any(|p| p.contains("AUTOINCREMENT counters")), "{:?}", outcome.problems);
}

/// A restore that D1 stops mid-way, after the target was emptied and partly filled, puts the
/// target back as it was: from the backup taken before it, or empty when it was empty.
#[test]
fn a_restore_failing_after_it_changed_the_target_rolls_it_back() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);

    // The target holds data: its backup, taken first, is what the rollback restores.
    let target = Connection::open_in_memory().unwrap();
    target.execute_batch(
        "CREATE TABLE precious (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT); INSERT INTO precious (v) VALUES ('keep'), ('me');
         CREATE INDEX precious_v ON precious (v);",
    ).unwrap();
    let before = everything(&target);
    let pre = {
        let t = shared::backup::BackupTarget {
            database: "target".into(),
            key: "manual/2026-12-03/pre/target.sql".into(),
            staging_prefix: "staging/pre/".into(),
            gzip: false,
            metadata: std::collections::BTreeMap::new(),
            part_size: 64 * 1024,
            started_at: Utc.with_ymd_and_hms(2026, 12, 3, 3, 0, 0).unwrap(),
            rows_per_query: 100,
            recipients: Vec::new(),
        };
        support::run_to_completion(&target, &mut store, &t, StepBudget::UNLIMITED).summary
    };
    let rollback = Rollback::Restore(DumpObject::named(&pre.key, &pre.sha256));
    let mut faulty = RusqliteTarget::new(&target);
    // D1 refuses a batch of Track's rows: by then the target was emptied and partly restored.
    faulty.refuse_statement = Some("INSERT INTO \"Track\"".into());
    let outcome = run_restore_operation_with(&mut faulty, &mut store, &summary, &rollback);
    match &outcome {
        OperationOutcome::RolledBack { error, restored: Some(report), .. } => {
            assert!(error.contains("injected"), "{error}");
            assert!(report.sha256_matches);
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(everything(&target), before, "the target is back as it was");

    // An empty target is emptied again.
    let empty = Connection::open_in_memory().unwrap();
    let mut faulty = RusqliteTarget::new(&empty);
    faulty.refuse_statement = Some("INSERT INTO \"Track\"".into());
    let outcome = run_restore_operation_with(&mut faulty, &mut store, &summary, &Rollback::Empty);
    assert!(matches!(outcome, OperationOutcome::RolledBack { restored: None, .. }), "{outcome:?}");
    assert_eq!(everything(&empty), Vec::<String>::new());
}

/// A restore whose attempts are spent (D1 failing again and again) puts its target back only
/// once it has begun changing it.
#[test]
fn a_restore_gives_up_into_a_rollback_only_once_it_has_changed_the_target() {
    let source = chinook();
    let mut store = MemoryStore::default();
    let summary = back_up(&source, &mut store, false);
    let plan = OperationPlan {
        id: "op-give-up".into(),
        kind: OperationKind::Restore,
        source: DumpSource::Stored(DumpObject::named(&summary.key, &summary.sha256)),
        table: None,
        expected: Vec::new(),
        expected_schema: Vec::new(),
        expected_sequences: Vec::new(),
        rows_per_query: 100,
        fault: None,
        identity: None,
    };
    let conn = Connection::open_in_memory().unwrap();
    let mut target = RusqliteTarget::new(&conn);
    let error = shared::task::TaskError::transient("D1 is overloaded");
    let untouched = block_on(give_up(&mut target, &plan, &OperationPhase::Restoring, &error)).unwrap();
    assert_eq!(untouched, None, "nothing changed yet: nothing to undo");
    // One restore step: the target is emptied and partly restored.
    let tick = clock();
    let step = operation_step(&mut target, &mut store, &tick, &plan, SMALL, OperationPhase::Restoring, 1, &Rollback::Empty);
    assert!(matches!(block_on(step).unwrap(), OperationProgress::Paused { phase: OperationPhase::Restoring, .. }));
    let rolling_back = block_on(give_up(&mut target, &plan, &OperationPhase::Restoring, &error)).unwrap();
    assert_eq!(rolling_back, Some(OperationPhase::RollingBack { error: "D1 is overloaded".into(), table: None }));
    // Checking and verifying phases never touch a target worth undoing.
    assert_eq!(block_on(give_up(&mut target, &plan, &OperationPhase::Checking(None), &error)).unwrap(), None);
}
