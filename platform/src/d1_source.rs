//! `SqlSource` over a D1 binding, read through a D1 session.
//!
//! The first step of an export opens its session at the primary (`first-primary`), so the
//! bookmark it reports names the newest state; later steps open theirs at that bookmark, so
//! they never read an older state than the first step did (with read replicas, a replica
//! behind the bookmark waits until it has caught up).

use shared::ports::{PortError, SqlSource};
use worker::{D1Database, D1DatabaseSession};

pub struct D1Source {
    session: D1DatabaseSession,
}

impl D1Source {
    /// A session at `bookmark`, or at the primary when there is none yet.
    pub fn open(db: &D1Database, bookmark: Option<&str>) -> Result<D1Source, PortError> {
        let session = db
            .with_session(Some(bookmark.unwrap_or("first-primary")))
            .map_err(|e| PortError(format!("opening a D1 session failed: {e}")))?;
        Ok(D1Source { session })
    }
}

impl SqlSource for D1Source {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows: Vec<Vec<serde_json::Value>> = self
            .session
            .prepare(sql)
            .raw()
            .await
            .map_err(|e| PortError(format!("D1 query failed: {e}")))?;
        // The exporter asks for SQL literals (text), so numbers here are only small
        // bookkeeping values such as column flags: their decimal text is exact.
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|value| match value {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s),
                        other => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect())
    }

    fn bookmark(&self) -> Option<String> {
        self.session.get_bookmark().ok().flatten()
    }
}
