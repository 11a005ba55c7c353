//! Test support: the exporter's `SqlSource` over rusqlite, and table-by-table comparison.


use rusqlite::types::ValueRef;
use rusqlite::Connection;
use shared::ports::{PortError, SqlSource};

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
        let mut stmt = self.conn.prepare(sql).map_err(|e| PortError(format!("{e}: {sql}")))?;
        let width = stmt.column_count();
        let rows = stmt
            .query_map([], |row| (0..width).map(|i| row.get_ref(i).map(as_text)).collect())
            .map_err(|e| PortError(e.to_string()))?;
        rows.collect::<Result<Vec<Vec<Option<String>>>, _>>().map_err(|e| PortError(e.to_string()))
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
