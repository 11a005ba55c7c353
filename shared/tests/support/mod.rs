//! Test support: the exporter's `SqlSource` over rusqlite, an `ObjectStore` in memory, and
//! table-by-table comparison.

#![allow(dead_code)] // each test file uses its own part of this module

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use futures::executor::block_on;
use shared::backup::{backup_step, BackupCheckpoint, BackupProgress, BackupSummary, BackupTarget};
use shared::dump::StepBudget;
use shared::ports::{ObjectInfo, ObjectStore, PortError, SqlSource, UploadedPart};
use std::cell::Cell;
use std::collections::BTreeMap;

pub struct RusqliteSource<'a> {
    pub conn: &'a Connection,
}

impl<'a> RusqliteSource<'a> {
    pub fn new(conn: &'a Connection) -> Self {
        RusqliteSource { conn }
    }
}

/// Renders a value the way D1 hands it to the consumer: text as is, numbers as their text.
fn as_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

impl SqlSource for RusqliteSource<'_> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| PortError::unavailable(format!("{e}: {sql}")))?;
        let width = stmt.column_count();
        let rows = stmt
            .query_map([], |row| (0..width).map(|i| row.get_ref(i).map(as_text)).collect())
            .map_err(|e| PortError::unavailable(e.to_string()))?;
        rows.collect::<Result<Vec<Vec<Option<String>>>, _>>().map_err(|e| PortError::unavailable(e.to_string()))
    }
}

/// User tables (no sqlite_* or _cf_* internals), sorted by name.
pub fn user_tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
             ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// Every row of a table as (storage class, exact text) pairs, in a stable order.
pub fn table_contents(conn: &Connection, table: &str) -> Vec<Vec<(String, String)>> {
    let columns: Vec<String> = {
        let mut stmt = conn
            .prepare(&format!("SELECT name FROM pragma_table_xinfo('{}')", table.replace('\'', "''")))
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    let select: Vec<String> = columns
        .iter()
        .map(|c| {
            let c = format!("\"{}\"", c.replace('"', "\"\""));
            format!("typeof({c}), CASE typeof({c}) WHEN 'real' THEN printf('%!.17g', {c}) ELSE hex({c}) END")
        })
        .collect();
    // Ordered by every selected column, so both sides list rows the same way.
    let order: Vec<String> = (1..=2 * columns.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {} FROM \"{}\" ORDER BY {}",
        select.join(", "),
        table.replace('"', "\"\""),
        order.join(", ")
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    stmt.query_map([], |r| {
        Ok((0..columns.len())
            .map(|i| (r.get::<_, String>(2 * i).unwrap(), r.get::<_, String>(2 * i + 1).unwrap()))
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Asserts that two databases hold the same user tables with the same values, value by value
/// and storage class by storage class.
pub fn assert_same_data(source: &Connection, restored: &Connection) {
    let tables = user_tables(source);
    assert_eq!(tables, user_tables(restored), "table lists differ");
    for table in tables {
        let expected = table_contents(source, &table);
        let actual = table_contents(restored, &table);
        assert_eq!(expected.len(), actual.len(), "row count of {table}");
        for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
            assert_eq!(e, a, "table {table}, row {i}");
        }
    }
}

/// The Chinook sample database (../shared/fixtures, MIT licensed), loaded into memory.
pub fn chinook() -> Connection {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/chinook/Chinook_Sqlite.sql"
    ))
    .expect("the Chinook fixture beside the project");
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(&sql).unwrap();
    conn
}

/// An object store in memory that keeps R2's rules: parts of one upload are all the same size
/// but the last, an object appears only on completion, and a completed or aborted upload is
/// gone. It can be told to fail one chosen call, to test that a step retried from its
/// checkpoint writes the same object.
#[derive(Default)]
pub struct MemoryStore {
    pub objects: BTreeMap<String, (Vec<u8>, ObjectInfo)>,
    pub uploads: BTreeMap<String, Upload>,
    pub next_upload: u32,
    pub calls: u32,
    /// Fail the call with this number (counting every call from 1).
    pub fail_call: Option<u32>,
    /// Largest body handed over in one call.
    pub largest_body: usize,
    /// Flip a bit of the object stored at this key (by a put or a completed upload), as a
    /// store that damaged it would.
    pub damage_on_store: Option<String>,
    /// Hash reads for the caller, as a Worker's store does natively (`digest_reads`).
    pub hashes_reads: bool,
    /// The key whose reads are being hashed, and the hash so far.
    pub read_hash: Option<(String, shared::sha256::ResumableSha256)>,
}

pub struct Upload {
    pub key: String,
    pub info: ObjectInfo,
    pub parts: BTreeMap<u16, (String, Vec<u8>)>,
}

impl MemoryStore {
    fn damage(&mut self, key: &str) {
        if self.damage_on_store.as_deref() == Some(key) {
            if let Some(last) = self.objects.get_mut(key).and_then(|(bytes, _)| bytes.last_mut()) {
                *last ^= 1;
            }
        }
    }

    fn call(&mut self, what: &str) -> Result<(), PortError> {
        self.calls += 1;
        if self.fail_call == Some(self.calls) {
            return Err(PortError::unavailable(format!("injected failure of call {} ({what})", self.calls)));
        }
        Ok(())
    }

    pub fn calls(&self) -> u32 {
        self.calls
    }
}

impl ObjectStore for MemoryStore {
    async fn put(&mut self, key: &str, bytes: Vec<u8>, info: &ObjectInfo) -> Result<(), PortError> {
        self.call("put")?;
        self.largest_body = self.largest_body.max(bytes.len());
        self.objects.insert(key.to_owned(), (bytes, info.clone()));
        self.damage(key);
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.call("get")?;
        Ok(self.objects.get(key).map(|(bytes, _)| bytes.clone()))
    }

    async fn get_range(&mut self, key: &str, offset: u64, length: u64) -> Result<Option<Vec<u8>>, PortError> {
        self.call("get_range")?;
        match self.objects.get(key) {
            // As R2 (local and remote): a range must start inside the object.
            Some((bytes, _)) if offset as usize >= bytes.len() && !bytes.is_empty() => {
                Err(PortError::unavailable(format!("get_range of {key} at {offset}: past the end ({} bytes)", bytes.len())))
            }
            Some((bytes, _)) => {
                let start = offset as usize;
                let end = start.saturating_add(length as usize).min(bytes.len());
                if let Some((hashed, hash)) = &mut self.read_hash {
                    if hashed == key {
                        assert_eq!(hash.len(), offset, "hashed reads must follow each other");
                        hash.update(&bytes[start..end]);
                    }
                }
                Ok(Some(bytes[start..end].to_vec()))
            }
            None => Ok(None),
        }
    }

    async fn head(&mut self, key: &str) -> Result<Option<u64>, PortError> {
        self.call("head")?;
        Ok(self.objects.get(key).map(|(bytes, _)| bytes.len() as u64))
    }

    async fn delete(&mut self, key: &str) -> Result<(), PortError> {
        self.call("delete")?;
        self.objects.remove(key);
        Ok(())
    }

    async fn create_multipart(&mut self, key: &str, info: &ObjectInfo) -> Result<String, PortError> {
        self.call("create_multipart")?;
        self.next_upload += 1;
        let id = format!("upload-{}", self.next_upload);
        self.uploads.insert(id.clone(), Upload { key: key.to_owned(), info: info.clone(), parts: BTreeMap::new() });
        Ok(id)
    }

    async fn upload_part(&mut self, key: &str, upload_id: &str, number: u16, bytes: Vec<u8>) -> Result<String, PortError> {
        self.call("upload_part")?;
        self.largest_body = self.largest_body.max(bytes.len());
        let upload = self.uploads.get_mut(upload_id).ok_or_else(|| PortError::unavailable(format!("no upload {upload_id}")))?;
        assert_eq!(upload.key, key);
        let etag = format!("{number}-{}-{}", bytes.len(), bytes.iter().map(|b| *b as u64).sum::<u64>());
        upload.parts.insert(number, (etag.clone(), bytes));
        Ok(etag)
    }

    async fn complete_multipart(&mut self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), PortError> {
        self.call("complete_multipart")?;
        let upload = self.uploads.remove(upload_id).ok_or_else(|| PortError::unavailable(format!("no upload {upload_id}")))?;
        assert_eq!(upload.key, key);
        let mut body = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let (etag, bytes) = &upload.parts[&part.number];
            assert_eq!(part.number as usize, i + 1, "parts in order");
            assert_eq!(&part.etag, etag, "etag of part {}", part.number);
            if i + 1 < parts.len() {
                assert_eq!(bytes.len(), upload.parts[&1].1.len(), "all parts but the last are the same size");
            }
            body.extend_from_slice(bytes);
        }
        self.objects.insert(key.to_owned(), (body, upload.info));
        self.damage(key);
        Ok(())
    }

    async fn abort_multipart(&mut self, _key: &str, upload_id: &str) -> Result<(), PortError> {
        self.call("abort_multipart")?;
        self.uploads.remove(upload_id);
        Ok(())
    }

    fn digest_reads(&mut self, key: &str) -> bool {
        if self.hashes_reads {
            self.read_hash = Some((key.to_owned(), shared::sha256::ResumableSha256::new()));
        }
        self.hashes_reads
    }

    async fn read_digest(&mut self) -> Result<String, PortError> {
        let (_, hash) = self.read_hash.take().expect("read_digest after digest_reads");
        Ok(hash.hex_digest())
    }
}

/// Values that lose something on the way through `quote()`, JavaScript numbers or the sqlite3
/// shell, in a column without affinity so each keeps its own storage class.
pub fn hostile_values() -> Connection {
    use rusqlite::types::Value;
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE v (id INTEGER PRIMARY KEY, x)").unwrap();
    let values: Vec<Value> = vec![
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Integer((1 << 53) + 1),
        Value::Real(-0.0), // quote() writes 0.0; kept only in a column without affinity
        Value::Real(0.0),
        Value::Real(f64::from_bits(1)), // smallest denormal
        Value::Real(f64::MIN_POSITIVE),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        Value::Real(0.1),
        Value::Real(1.0 / 3.0),
        Value::Real(f64::MAX),
        Value::Real(-1.5e-300),
        Value::Real(1e16),
        Value::Text(String::new()),
        Value::Text("a\0b".into()),
        Value::Text("\0".into()),
        Value::Text("line\r\nbreak\rcr\nlf".into()),
        Value::Text("tab\there\u{7f}\u{1b}[0m".into()),
        Value::Text("it's \"quoted\" ✓ 𝄞".into()),
        Value::Text("123".into()),
        Value::Blob(Vec::new()),
        Value::Blob(vec![0, 1, 255, b'\'', b'\r']),
        Value::Null,
    ];
    for (i, v) in values.into_iter().enumerate() {
        conn.execute("INSERT INTO v (id, x) VALUES (?1, ?2)", rusqlite::params![i as i64 - 5, v]).unwrap();
    }
    conn
}

/// A restore target over rusqlite that behaves as D1 does: foreign keys always enforced, each
/// batch one transaction, and SQLite's errors ending with their result code's name. It can be
/// told to fail the n-th batch after committing it, as a Worker dying before it records the
/// step would.
pub struct RusqliteTarget<'a> {
    pub conn: &'a Connection,
    pub batches: u32,
    pub die_after_batch: Option<u32>,
    /// Refuse the first batch holding a statement that starts with this, once, as D1 refuses a
    /// statement: nothing of it commits.
    pub refuse_statement: Option<String>,
}

impl<'a> RusqliteTarget<'a> {
    pub fn new(conn: &'a Connection) -> Self {
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        RusqliteTarget { conn, batches: 0, die_after_batch: None, refuse_statement: None }
    }
}

impl SqlSource for RusqliteTarget<'_> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        RusqliteSource::new(self.conn).query(sql).await
    }
}

impl shared::restore::SqlTarget for RusqliteTarget<'_> {
    async fn execute_batch(&mut self, statements: &[String]) -> Result<(), PortError> {
        let refused = self.refuse_statement.as_deref().is_some_and(|p| statements.iter().any(|s| s.starts_with(p)));
        if refused {
            self.refuse_statement = None;
            return Err(PortError::rejected("injected: D1 refused a statement: SQLITE_CONSTRAINT"));
        }
        let as_d1 = |e: rusqlite::Error| match &e {
            // Typed by SQLite's own result code, as D1's boundary types its errors.
            rusqlite::Error::SqliteFailure(code, _) => match code.code {
                rusqlite::ErrorCode::Unknown
                | rusqlite::ErrorCode::ConstraintViolation
                | rusqlite::ErrorCode::TypeMismatch
                | rusqlite::ErrorCode::TooBig => PortError::rejected(e.to_string()),
                _ => PortError::unavailable(e.to_string()),
            },
            _ => PortError::unavailable(e.to_string()),
        };
        self.conn.execute_batch("BEGIN").map_err(as_d1)?;
        for statement in statements {
            if let Err(e) = self.conn.execute_batch(statement) {
                self.conn.execute_batch("ROLLBACK").unwrap();
                return Err(as_d1(e));
            }
        }
        self.conn.execute_batch("COMMIT").map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            as_d1(e)
        })?;
        self.batches += 1;
        if self.die_after_batch == Some(self.batches) {
            return Err(PortError::unavailable("the invocation died after the batch committed"));
        }
        Ok(())
    }
}

/// Counts the queries each step makes.
pub struct CountingSource<'a> {
    pub inner: RusqliteSource<'a>,
    pub queries: u32,
}

impl SqlSource for CountingSource<'_> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        self.queries += 1;
        self.inner.query(sql).await
    }
}

pub struct Run {
    pub summary: BackupSummary,
    pub steps: u32,
    pub most_queries_in_a_step: u32,
}

/// Runs steps until the backup completes, carrying the checkpoint through JSON (as the
/// consumer carries it through the metadata database) and deleting superseded tails.
pub fn run_to_completion(conn: &Connection, store: &mut MemoryStore, target: &BackupTarget, budget: StepBudget) -> Run {
    let clock = Cell::new(0i64);
    // Every reading of the clock moves it on by 10 ms.
    let tick = || {
        clock.set(clock.get() + 10);
        clock.get()
    };
    let mut checkpoint: Option<BackupCheckpoint> = None;
    let (mut steps, mut most_queries) = (0, 0);
    loop {
        let mut source = CountingSource { inner: RusqliteSource::new(conn), queries: 0 };
        let progress = block_on(backup_step(&mut source, store, &tick, target, budget, checkpoint.as_ref())).unwrap();
        steps += 1;
        most_queries = most_queries.max(source.queries);
        match progress {
            BackupProgress::Paused { checkpoint: next, superseded } => {
                let saved = serde_json::to_string(&next).unwrap();
                checkpoint = Some(serde_json::from_str(&saved).unwrap());
                for key in superseded {
                    store.objects.remove(&key);
                }
            }
            BackupProgress::Complete { summary, superseded } => {
                for key in superseded {
                    store.objects.remove(&key);
                }
                return Run { summary, steps, most_queries_in_a_step: most_queries };
            }
        }
    }
}
