//! The exporter against real SQLite: dumps restore to the same data.

mod support;

use chrono::{TimeZone, Utc};
use futures::executor::block_on;
use rusqlite::Connection;
use shared::dump::{export, DumpOptions, COMPLETE_MARKER};
use support::{assert_same_data, RusqliteSource};

fn chinook() -> Connection {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/chinook/Chinook_Sqlite.sql"
    ))
    .expect("the Chinook fixture beside the project");
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(&sql).unwrap();
    conn
}

fn dump(conn: &Connection, opts: &DumpOptions) -> (String, shared::dump::DumpSummary) {
    let mut out = Vec::new();
    let summary = block_on(export(&mut RusqliteSource::new(conn), &mut out, opts)).unwrap();
    (String::from_utf8(out).unwrap(), summary)
}

/// Restores the way D1 imports a file: foreign keys enforced (rusqlite's bundled SQLite turns
/// them on by default, as D1 does) and the whole file in one transaction, so that
/// `PRAGMA defer_foreign_keys` holds the checks until the end.
fn restore(sql: &str) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    assert_eq!(conn.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
    conn.execute_batch(&format!("BEGIN;\n{sql}\nCOMMIT;")).unwrap();
    conn
}

fn options() -> DumpOptions {
    DumpOptions::new("test", Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap())
}

#[test]
fn chinook_round_trips_value_by_value() {
    let source = chinook();
    let (sql, summary) = dump(&source, &options());
    assert_same_data(&source, &restore(&sql));
    assert_eq!(summary.tables.len(), 11);
    assert_eq!(summary.rows, 15_607);
    assert_eq!(summary.bytes, sql.len() as u64);
    assert!(sql.trim_end().lines().last().unwrap().starts_with(COMPLETE_MARKER));
    assert!(sql.contains("\n-- Table: Track\n"));
}

#[test]
fn small_pages_and_small_statements_give_the_same_data() {
    let source = chinook();
    let mut opts = options();
    opts.rows_per_query = 7;
    opts.max_statement_bytes = 2_000;
    let (sql, _) = dump(&source, &opts);
    let inserts: Vec<&str> = sql
        .match_indices("INSERT INTO")
        .map(|(at, _)| &sql[at..at + sql[at..].find(";\n").unwrap() + 2])
        .collect();
    assert!(inserts.len() > 100);
    for statement in inserts {
        assert!(statement.len() <= 2_000, "statement of {} bytes", statement.len());
    }
    assert_same_data(&source, &restore(&sql));
}

#[test]
fn dump_is_deterministic() {
    let source = chinook();
    assert_eq!(dump(&source, &options()).0, dump(&source, &options()).0);
}

#[test]
fn without_rowid_tables_page_by_primary_key() {
    let source = Connection::open_in_memory().unwrap();
    source
        .execute_batch(
            "CREATE TABLE kv (a TEXT, b INTEGER, v BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO kv SELECT 'k' || (i % 13), i, randomblob(i % 40) FROM n;",
        )
        .unwrap();
    let mut opts = options();
    opts.rows_per_query = 33;
    let mut src = RusqliteSource::new(&source);
    let mut out = Vec::new();
    let summary = block_on(export(&mut src, &mut out, &opts)).unwrap();
    assert_eq!(summary.rows, 1000);
    assert_same_data(&source, &restore(std::str::from_utf8(&out).unwrap()));
}
