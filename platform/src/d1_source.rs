//! `SqlSource` over a D1 binding, read through a D1 session.
//!
//! The first step of an export opens its session at the primary (`first-primary`), so the
//! bookmark it reports names the newest state; later steps open theirs at that bookmark, so
//! they never read an older state than the first step did (with read replicas, a replica
//! behind the bookmark waits until it has caught up).

use shared::ports::{PortError, SqlSource};
use shared::restore::SqlTarget;
use worker::{D1Database, D1DatabaseSession};

pub struct D1Source {
    session: D1DatabaseSession,
}

impl D1Source {
    /// A session at `bookmark`, or at the primary when there is none yet.
    pub fn open(db: &D1Database, bookmark: Option<&str>) -> Result<D1Source, PortError> {
        let session = db
            .with_session(Some(bookmark.unwrap_or("first-primary")))
            .map_err(|e| PortError::from_d1_message(format!("opening a D1 session failed: {e}")))?;
        Ok(D1Source { session })
    }
}

impl SqlSource for D1Source {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows = self.session.prepare(sql).raw().await.map_err(|e| PortError::from_d1_message(format!("D1 query failed: {e}")))?;
        Ok(as_text(rows))
    }

    fn bookmark(&self) -> Option<String> {
        self.session.get_bookmark().ok().flatten()
    }
}

/// The exporter asks for SQL literals (text), so numbers here are only small bookkeeping
/// values such as column flags: their decimal text is exact.
fn as_text(rows: Vec<Vec<serde_json::Value>>) -> Vec<Vec<Option<String>>> {
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|value| match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s),
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .collect()
}

/// A D1 database restored into: reads and batches go to the primary.
pub struct D1Target {
    db: D1Database,
}

impl D1Target {
    pub fn new(db: D1Database) -> D1Target {
        D1Target { db }
    }
}

impl SqlSource for D1Target {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows = self.db.prepare(sql).raw().await.map_err(|e| PortError::from_d1_message(format!("D1 query failed: {e}")))?;
        Ok(as_text(rows))
    }
}

impl SqlTarget for D1Target {
    async fn execute_batch(&mut self, statements: &[String]) -> Result<(), PortError> {
        let prepared = statements.iter().map(|s| self.db.prepare(s)).collect();
        // D1's messages end with SQLite's result code (`...: SQLITE_ERROR`) when SQLite refused
        // a statement, which tells a damaged dump from an unreachable database.
        self.db.batch(prepared).await.map_err(|e| PortError::from_d1_message(format!("D1 batch failed: {e}")))?;
        Ok(())
    }
}
