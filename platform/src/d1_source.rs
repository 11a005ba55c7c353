//! `SqlSource` over a D1 binding, read through a D1 session.
//!
//! The first step of an export opens its session at the primary (`first-primary`), so the
//! bookmark it reports names the newest state; later steps open theirs at that bookmark, so
//! they never read an older state than the first step did (with read replicas, a replica
//! behind the bookmark waits until it has caught up).

use shared::ports::{PortError, SqlSource};
use shared::restore::SqlTarget;
use worker::{js_sys, D1Database, D1DatabaseSession, D1PreparedStatement};

pub struct D1Source {
    session: D1DatabaseSession,
    usage: D1Usage,
}

/// D1 work done through one source or target: what D1 bills is rows read and written, which
/// follow from these (a page query reads about the rows it returns). Logged per step, they are
/// the bench's cost model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct D1Usage {
    pub queries: u32,
    pub rows_returned: u64,
    pub batches: u32,
    pub statements: u32,
}

impl D1Usage {
    fn count_query(&mut self, rows: &[Vec<Option<String>>]) {
        self.queries += 1;
        self.rows_returned += rows.len() as u64;
    }
}

impl D1Source {
    /// A session at `bookmark`, or at the primary when there is none yet.
    pub fn open(db: &D1Database, bookmark: Option<&str>) -> Result<D1Source, PortError> {
        let session = db
            .with_session(Some(bookmark.unwrap_or("first-primary")))
            .map_err(|e| PortError::from_d1_message(format!("opening a D1 session failed: {e}")))?;
        Ok(D1Source { session, usage: D1Usage::default() })
    }

    pub fn usage(&self) -> D1Usage {
        self.usage
    }
}

impl SqlSource for D1Source {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows = rows_as_text(self.session.prepare(sql)).await?;
        self.usage.count_query(&rows);
        Ok(rows)
    }

    fn bookmark(&self) -> Option<String> {
        self.session.get_bookmark().ok().flatten()
    }
}

/// Runs `statement` and returns its rows as text.
///
/// The rows cross from JavaScript into WebAssembly as one JSON text per page, parsed in Rust,
/// instead of one conversion per value (`raw::<T>()` converts every value on its own): a page
/// of 5,000 rows of a dozen columns is one crossing instead of 60,000, which was most of an
/// export's CPU time in the Worker.
async fn rows_as_text(statement: D1PreparedStatement) -> Result<Vec<Vec<Option<String>>>, PortError> {
    let rows = statement.raw_js_value().await.map_err(|e| PortError::from_d1_message(format!("D1 query failed: {e}")))?;
    let page: js_sys::Array = rows.into_iter().collect();
    let json = js_sys::JSON::stringify(&page)
        .map(String::from)
        .map_err(|e| PortError::unavailable(format!("D1 rows could not be read as JSON: {e:?}")))?;
    let rows: Vec<Vec<serde_json::Value>> =
        serde_json::from_str(&json).map_err(|e| PortError::unavailable(format!("D1 rows could not be read: {e}")))?;
    as_text(rows)
}

/// The exporter asks for SQL literals (text), so numbers here are only small bookkeeping
/// values such as column flags: their decimal text is exact. Anything else (a BLOB, which
/// JSON cannot carry) is refused rather than read as something it is not.
fn as_text(rows: Vec<Vec<serde_json::Value>>) -> Result<Vec<Vec<Option<String>>>, PortError> {
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|value| match value {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s)),
                    serde_json::Value::Number(n) => Ok(Some(n.to_string())),
                    serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
                    other => Err(PortError::unavailable(format!("D1 returned a value that is not text or a number: {other}"))),
                })
                .collect()
        })
        .collect()
}

/// A D1 database restored into: reads and batches go to the primary.
pub struct D1Target {
    db: D1Database,
    usage: D1Usage,
}

impl D1Target {
    pub fn new(db: D1Database) -> D1Target {
        D1Target { db, usage: D1Usage::default() }
    }

    pub fn usage(&self) -> D1Usage {
        self.usage
    }
}

impl SqlSource for D1Target {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows = rows_as_text(self.db.prepare(sql)).await?;
        self.usage.count_query(&rows);
        Ok(rows)
    }
}

impl SqlTarget for D1Target {
    async fn execute_batch(&mut self, statements: &[String]) -> Result<(), PortError> {
        let prepared = statements.iter().map(|s| self.db.prepare(s)).collect();
        // D1's messages end with SQLite's result code (`...: SQLITE_ERROR`) when SQLite refused
        // a statement, which tells a damaged dump from an unreachable database.
        self.db.batch(prepared).await.map_err(|e| PortError::from_d1_message(format!("D1 batch failed: {e}")))?;
        self.usage.batches += 1;
        self.usage.statements += statements.len() as u32;
        Ok(())
    }
}
