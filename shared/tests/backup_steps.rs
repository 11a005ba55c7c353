//! A backup exported over many steps (as over many queue messages) against rusqlite and an
//! in-memory object store with R2's rules.

mod support;

use chrono::{TimeZone, Utc};
use futures::executor::block_on;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use shared::backup::{backup_step, discard, BackupCheckpoint, BackupProgress, BackupTarget};
use shared::dump::{export, DumpOptions, StepBudget};
use std::collections::BTreeMap;
use std::io::Read;
use support::{assert_same_data, chinook, run_to_completion, MemoryStore, RusqliteSource};

fn target(gzip: bool, part_size: usize) -> BackupTarget {
    BackupTarget {
        database: "chinook".into(),
        key: format!("daily/2026-11-23/chinook.sql{}", if gzip { ".gz" } else { "" }),
        staging_prefix: "staging/job-1/chinook/".into(),
        gzip,
        metadata: BTreeMap::from([("database".to_string(), "chinook".to_string())]),
        part_size,
        started_at: Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap(),
        rows_per_query: 500,
        recipients: Vec::new(),
    }
}

fn one_shot_sql(conn: &Connection) -> Vec<u8> {
    let t = target(false, 0);
    let mut out = Vec::new();
    let mut opts = DumpOptions::new(&t.database, t.started_at);
    opts.rows_per_query = t.rows_per_query;
    block_on(export(&mut RusqliteSource::new(conn), &mut out, &opts)).unwrap();
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_nothing_left_behind(store: &MemoryStore, key: &str) {
    assert!(store.uploads.is_empty(), "open uploads left: {:?}", store.uploads.keys().collect::<Vec<_>>());
    let keys: Vec<&String> = store.objects.keys().collect();
    assert_eq!(keys, vec![key], "only the backup itself remains");
}

#[test]
fn steps_under_a_query_budget_write_the_one_shot_dump_byte_for_byte() {
    let conn = chinook();
    let expected = one_shot_sql(&conn);
    let mut store = MemoryStore::default();
    let t = target(false, 64 * 1024);
    let budget = StepBudget { max_queries: 3, ..StepBudget::UNLIMITED };
    let run = run_to_completion(&conn, &mut store, &t, budget);

    let (stored, info) = &store.objects[&t.key];
    assert!(stored == &expected, "a stepped export differs from the one-shot dump");
    assert!(run.steps > 10, "expected many steps, got {}", run.steps);
    assert!(run.most_queries_in_a_step <= 3, "a step made {} queries", run.most_queries_in_a_step);
    assert_eq!(run.summary.steps, run.steps);
    assert_eq!(run.summary.sha256, sha256_hex(stored));
    assert_eq!(run.summary.bytes, stored.len() as u64);
    assert_eq!(run.summary.rows, 15_607);
    assert_eq!(info.custom["database"], "chinook");
    assert_nothing_left_behind(&store, &t.key);
    // Memory stays near one part: nothing larger than a part was ever handed over.
    assert!(store.largest_body <= 64 * 1024);
}

#[test]
fn byte_and_time_budgets_pause_too_and_give_the_same_dump() {
    let conn = chinook();
    let expected = one_shot_sql(&conn);
    for budget in [
        StepBudget { max_bytes: 20_000, ..StepBudget::UNLIMITED },
        // The test clock moves 10 ms per reading: a 25 ms budget allows about two pages.
        StepBudget { max_millis: 25, ..StepBudget::UNLIMITED },
    ] {
        let mut store = MemoryStore::default();
        let t = target(false, 100 * 1024);
        let run = run_to_completion(&conn, &mut store, &t, budget);
        assert!(run.steps > 5, "{budget:?}: only {} steps", run.steps);
        assert!(store.objects[&t.key].0 == expected, "{budget:?}: the stepped dump differs");
        assert_nothing_left_behind(&store, &t.key);
    }
}

#[test]
fn a_small_dump_is_one_put_carrying_its_checksum_and_counts_as_metadata() {
    let conn = chinook();
    let mut store = MemoryStore::default();
    let t = target(false, 8 * 1024 * 1024);
    let run = run_to_completion(&conn, &mut store, &t, StepBudget::UNLIMITED);
    assert_eq!(run.steps, 1);
    let (stored, info) = &store.objects[&t.key];
    assert_eq!(info.custom["sha256"], sha256_hex(stored));
    assert_eq!(info.custom["bytes"], stored.len().to_string());
    assert_eq!(info.custom["rows"], "15607");
    assert_eq!(info.custom["tables"], "11");
    assert_eq!(info.content_type, "application/sql; charset=utf-8");
    assert_eq!(store.calls(), 2, "one put and the size check, no multipart upload");
}

#[test]
fn gzip_steps_are_members_that_decompress_to_the_one_shot_dump() {
    let conn = chinook();
    let expected = one_shot_sql(&conn);
    let mut store = MemoryStore::default();
    let t = target(true, 16 * 1024);
    let run = run_to_completion(&conn, &mut store, &t, StepBudget { max_queries: 4, ..StepBudget::UNLIMITED });
    let (stored, info) = &store.objects[&t.key];
    assert!(run.steps > 5);
    assert_eq!(info.content_type, "application/gzip");
    assert!(stored.len() * 3 < expected.len(), "gzip should shrink SQL at least threefold");
    assert_eq!(run.summary.sha256, sha256_hex(stored), "the checksum is of the stored (compressed) bytes");
    let mut sql = Vec::new();
    flate2::read::MultiGzDecoder::new(&stored[..]).read_to_end(&mut sql).unwrap();
    assert!(sql == expected, "decompressed dump differs from the one-shot dump");
    assert_nothing_left_behind(&store, &t.key);
}

#[test]
fn a_failed_step_retried_from_its_checkpoint_writes_the_same_object() {
    let conn = chinook();
    let expected = one_shot_sql(&conn);
    let t = target(false, 32 * 1024);
    let budget = StepBudget { max_queries: 5, ..StepBudget::UNLIMITED };
    // Fail each store call in turn (part uploads, tail puts and gets, completion): the step is
    // then run again from the same checkpoint, as a queue retry would.
    let mut reference = MemoryStore::default();
    run_to_completion(&conn, &mut reference, &t, budget);
    let total_calls = reference.calls();
    for fail_at in (1..=total_calls).step_by(3) {
        let mut store = MemoryStore { fail_call: Some(fail_at), ..MemoryStore::default() };
        let mut checkpoint: Option<BackupCheckpoint> = None;
        let mut failures = 0;
        let summary = loop {
            let mut source = RusqliteSource::new(&conn);
            match block_on(backup_step(&mut source, &mut store, &|| 0, &t, budget, checkpoint.as_ref())) {
                Err(_) => failures += 1,
                Ok(BackupProgress::Paused { checkpoint: next, superseded }) => {
                    checkpoint = Some(next);
                    for key in superseded {
                        store.objects.remove(&key);
                    }
                }
                Ok(BackupProgress::Complete { summary, superseded }) => {
                    for key in superseded {
                        store.objects.remove(&key);
                    }
                    break summary;
                }
            }
            assert!(failures <= 1);
        };
        assert_eq!(failures, 1, "call {fail_at} was made to fail");
        assert!(store.objects[&t.key].0 == expected, "failing call {fail_at} changed the object");
        assert_eq!(summary.sha256, sha256_hex(&expected));
        assert_nothing_left_behind(&store, &t.key);
    }
}

#[test]
fn discarding_a_backup_frees_its_upload_and_tail() {
    let conn = chinook();
    let mut store = MemoryStore::default();
    let t = target(false, 32 * 1024);
    let budget = StepBudget { max_queries: 6, ..StepBudget::UNLIMITED };
    let mut checkpoint = None;
    for _ in 0..3 {
        match block_on(backup_step(&mut RusqliteSource::new(&conn), &mut store, &|| 0, &t, budget, checkpoint.as_ref())) {
            Ok(BackupProgress::Paused { checkpoint: next, .. }) => checkpoint = Some(next),
            other => panic!("expected a pause, got {other:?}"),
        }
    }
    let checkpoint = checkpoint.unwrap();
    assert!(checkpoint.upload.upload_id.is_some() && checkpoint.upload.tail_key.is_some());
    block_on(discard(&mut store, &checkpoint)).unwrap();
    assert!(store.uploads.is_empty());
    assert!(!store.objects.contains_key(checkpoint.upload.tail_key.as_ref().unwrap()));
    assert!(!store.objects.contains_key(&t.key), "no object appears for a discarded backup");
}

#[test]
fn a_restored_stepped_dump_equals_the_source() {
    let conn = chinook();
    let mut store = MemoryStore::default();
    let t = target(false, 10 * 1024);
    run_to_completion(&conn, &mut store, &t, StepBudget { max_queries: 2, ..StepBudget::UNLIMITED });
    let restored = Connection::open_in_memory().unwrap();
    let sql = String::from_utf8(store.objects[&t.key].0.clone()).unwrap();
    restored.execute_batch(&format!("BEGIN;\n{sql}\nCOMMIT;")).unwrap();
    assert_same_data(&conn, &restored);
}
