//! `SqlSource` over a D1 binding.

use shared::ports::{PortError, SqlSource};
use worker::D1Database;

pub struct D1Source {
    db: D1Database,
}

impl D1Source {
    pub fn new(db: D1Database) -> D1Source {
        D1Source { db }
    }
}

impl SqlSource for D1Source {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let rows: Vec<Vec<serde_json::Value>> = self
            .db
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
}
