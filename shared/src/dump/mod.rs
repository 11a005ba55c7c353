//! The exporter: reads a database through [`SqlSource`] and writes a SQL dump that both
//! `sqlite3` and `wrangler d1 execute --file` can import.
//!
//! Layout of a dump:
//! 1. a header of `--` comments (format, tool, database, time) and `PRAGMA defer_foreign_keys`;
//! 2. every `CREATE TABLE`, then per table a `-- Table: <name>` marker and its rows as
//!    multi-row `INSERT`s, each statement under D1's statement size limit;
//! 3. the AUTOINCREMENT counters (`sqlite_sequence`), then indexes, views and triggers, after
//!    all rows so triggers do not fire during a restore;
//! 4. a footer with every table's row count and a `-- Dump complete` line. A dump without its
//!    footer is incomplete.
//!
//! Rows are read by keyset pagination (rowid, or the primary key of a `WITHOUT ROWID` table),
//! never `OFFSET`, so every page costs the same however deep into the table it is.

mod oversized;
pub mod sql;

use crate::ports::{ByteSink, PortError, SqlSource};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use sql::{comment_safe, ident, literal_expr, string_literal};
use std::fmt;

pub const DUMP_FORMAT_VERSION: u32 = 1;

/// The line that closes every complete dump.
pub const COMPLETE_MARKER: &str = "-- Dump complete:";

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub database: String,
    pub created_at: DateTime<Utc>,
    /// Rows fetched per query.
    pub rows_per_query: u32,
    /// Upper bound for one INSERT statement, in bytes (D1 refuses statements over 100,000).
    pub max_statement_bytes: usize,
}

impl DumpOptions {
    pub fn new(database: &str, created_at: DateTime<Utc>) -> DumpOptions {
        DumpOptions {
            database: database.to_owned(),
            created_at,
            rows_per_query: 500,
            max_statement_bytes: 99_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub name: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSummary {
    pub tables: Vec<TableCount>,
    pub rows: u64,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole dump.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpError {
    /// Reading from the database failed.
    Source(PortError),
    /// Writing the dump failed.
    Sink(PortError),
    /// The database holds something the exporter cannot represent faithfully.
    Unsupported(String),
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Source(e) => write!(f, "reading the database failed: {e}"),
            DumpError::Sink(e) => write!(f, "writing the dump failed: {e}"),
            DumpError::Unsupported(m) => write!(f, "cannot export faithfully: {m}"),
        }
    }
}

impl std::error::Error for DumpError {}

/// Counts and hashes every byte on its way to the sink.
struct HashingWriter<'a, W: ByteSink> {
    sink: &'a mut W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: ByteSink> HashingWriter<'_, W> {
    async fn write(&mut self, text: &str) -> Result<(), DumpError> {
        self.hasher.update(text.as_bytes());
        self.bytes += text.len() as u64;
        self.sink.write(text.as_bytes()).await.map_err(DumpError::Sink)
    }
}

/// How a table's rows are paged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PageKey {
    /// By rowid, through whichever of `rowid`, `_rowid_`, `oid` no column shadows.
    Rowid(&'static str),
    /// By the primary key columns, in key order (`WITHOUT ROWID` tables).
    PrimaryKey(Vec<String>),
}

#[derive(Debug, Clone)]
struct TablePlan {
    name: String,
    create_sql: String,
    /// What an INSERT writes, as SQL identifiers. Generated columns are computed, never
    /// inserted. A rowid table without an INTEGER PRIMARY KEY gets its rowid alias first, so
    /// sparse and negative rowids survive the restore.
    insert_columns: Vec<String>,
    key: PageKey,
}

/// Where an FTS5 table's values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fts5Content {
    /// In the table itself: its rows are exported like any table's.
    Own,
    /// In another table (`content='t'`): the index is rebuilt after that table's rows.
    External,
    /// Nowhere (`content=''`): only the index exists.
    Contentless,
}

/// `Some` for an FTS5 table, with where its values live; `None` for other virtual tables.
fn fts5_content(create_sql: &str) -> Option<Fts5Content> {
    let compact: String = create_sql.to_ascii_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("usingfts5(") {
        return None;
    }
    Some(if compact.contains("content=''") || compact.contains("content=\"\"") {
        Fts5Content::Contentless
    } else if compact.contains("content=") {
        Fts5Content::External
    } else {
        Fts5Content::Own
    })
}

#[derive(Debug, Clone)]
struct SchemaPlan {
    tables: Vec<TablePlan>,
    /// `CREATE VIRTUAL TABLE` of external-content FTS5 tables, which hold no rows of their own.
    virtual_without_rows: Vec<String>,
    /// Statements rebuilding external-content FTS5 indexes once every row is in.
    fts_rebuilds: Vec<String>,
    /// Indexes, views and triggers, in creation order.
    after_data: Vec<String>,
}

async fn query<S: SqlSource>(source: &mut S, sql: &str) -> Result<Vec<Vec<Option<String>>>, DumpError> {
    source.query(sql).await.map_err(DumpError::Source)
}

fn text(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

async fn plan_schema<S: SqlSource>(source: &mut S) -> Result<SchemaPlan, DumpError> {
    // `pragma_table_list` tells plain tables from virtual and shadow tables and marks
    // WITHOUT ROWID ones; sqlite_master holds the SQL, in creation order.
    let objects = query(
        source,
        "SELECT m.type, m.name, m.sql, coalesce(t.type, ''), coalesce(t.wr, 0) \
         FROM sqlite_master AS m LEFT JOIN pragma_table_list AS t \
           ON t.schema = 'main' AND t.name = m.name AND m.type = 'table' \
         WHERE m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
           AND m.sql IS NOT NULL \
         ORDER BY m.rowid",
    )
    .await?;

    let mut plan = SchemaPlan {
        tables: Vec::new(),
        virtual_without_rows: Vec::new(),
        fts_rebuilds: Vec::new(),
        after_data: Vec::new(),
    };
    for row in objects {
        let (kind, name, create_sql, table_type) = (text(&row, 0), text(&row, 1), text(&row, 2), text(&row, 3));
        let without_rowid = text(&row, 4) == "1";
        match kind.as_str() {
            "table" if table_type == "table" => {
                let table = plan_table(source, name, create_sql, without_rowid).await?;
                plan.tables.push(table);
            }
            // FTS5 keeps its index in shadow tables; recreating the virtual table recreates
            // them, and its rows (or a rebuild) refill them.
            "table" if table_type == "shadow" => {}
            "table" if table_type == "virtual" => match fts5_content(&create_sql) {
                Some(Fts5Content::Own) => {
                    plan.tables.push(plan_table(source, name, create_sql, false).await?);
                }
                Some(Fts5Content::External) => {
                    plan.fts_rebuilds.push(format!(
                        "INSERT INTO {t} ({t}) VALUES ('rebuild');",
                        t = ident(&name)
                    ));
                    plan.virtual_without_rows.push(create_sql);
                }
                Some(Fts5Content::Contentless) => {
                    return Err(DumpError::Unsupported(format!(
                        "contentless FTS5 table {name:?} keeps no values to export"
                    )))
                }
                None => {
                    return Err(DumpError::Unsupported(format!(
                        "virtual table {name:?} is not FTS5; only FTS5 virtual tables are exported"
                    )))
                }
            },
            "table" => {
                return Err(DumpError::Unsupported(format!("table {name:?} of type {table_type:?}")))
            }
            _ => plan.after_data.push(create_sql),
        }
    }
    Ok(plan)
}

async fn plan_table<S: SqlSource>(
    source: &mut S,
    name: String,
    create_sql: String,
    without_rowid: bool,
) -> Result<TablePlan, DumpError> {
    // hidden: 0 ordinary, 1 hidden (virtual tables), 2 generated VIRTUAL, 3 generated STORED.
    let info = query(
        source,
        &format!(
            "SELECT name, hidden, pk, upper(type) FROM pragma_table_xinfo({}) ORDER BY cid",
            string_literal(&name)
        ),
    )
    .await?;
    let mut insert_columns: Vec<String> =
        info.iter().filter(|r| text(r, 1) == "0").map(|r| ident(&text(r, 0))).collect();
    let pk_columns = info.iter().filter(|r| text(r, 2) != "0").count();
    let key = if without_rowid {
        let mut pk: Vec<(u32, String)> = info
            .iter()
            .filter_map(|r| text(r, 2).parse::<u32>().ok().filter(|n| *n > 0).map(|n| (n, text(r, 0))))
            .collect();
        pk.sort();
        PageKey::PrimaryKey(pk.into_iter().map(|(_, c)| c).collect())
    } else {
        let shadowed = |alias: &str| info.iter().any(|r| text(r, 0).eq_ignore_ascii_case(alias));
        let alias = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !shadowed(a))
            .ok_or_else(|| {
                DumpError::Unsupported(format!(
                    "table {name:?} has columns named rowid, _rowid_ and oid, so its rows cannot be paged"
                ))
            })?;
        // A lone INTEGER PRIMARY KEY column is the rowid itself and already inserted.
        let has_integer_primary_key =
            pk_columns == 1 && info.iter().any(|r| text(r, 2) == "1" && text(r, 3) == "INTEGER");
        if !has_integer_primary_key {
            insert_columns.insert(0, alias.to_string());
        }
        PageKey::Rowid(alias)
    };
    Ok(TablePlan { name, create_sql, insert_columns, key })
}

/// The query for one page of rows: the key columns' literals, then each column's literal.
fn page_query(table: &TablePlan, after: Option<&[String]>, limit: u32) -> String {
    let key_columns: Vec<String> = match &table.key {
        PageKey::Rowid(alias) => vec![alias.to_string()],
        PageKey::PrimaryKey(cols) => cols.iter().map(|c| ident(c)).collect(),
    };
    let select: Vec<String> = key_columns
        .iter()
        .map(|k| literal_expr(k))
        .chain(table.insert_columns.iter().map(|c| literal_expr(c)))
        .collect();
    let filter = match after {
        None => String::new(),
        Some(last) => format!(" WHERE ({}) > ({})", key_columns.join(", "), last.join(", ")),
    };
    format!(
        "SELECT {} FROM {}{} ORDER BY {} LIMIT {}",
        select.join(", "),
        ident(&table.name),
        filter,
        key_columns.join(", "),
        limit
    )
}

/// A WHERE condition matching one row by its key literals, in the restored table.
fn row_filter(table: &TablePlan, key: &[String]) -> String {
    match &table.key {
        PageKey::Rowid(alias) => format!("{alias} = {}", key[0]),
        PageKey::PrimaryKey(cols) => {
            let cols: Vec<String> = cols.iter().map(|c| ident(c)).collect();
            format!("({}) = ({})", cols.join(", "), key.join(", "))
        }
    }
}

/// Packs row tuples into multi-row INSERT statements below the size limit.
struct InsertPacker {
    prefix: String,
    statement: String,
    max_bytes: usize,
}

impl InsertPacker {
    fn new(table: &TablePlan, max_bytes: usize) -> InsertPacker {
        InsertPacker {
            prefix: format!("INSERT INTO {} ({}) VALUES\n", ident(&table.name), table.insert_columns.join(",")),
            statement: String::new(),
            max_bytes,
        }
    }

    /// Whether a statement holding only this tuple stays within the limit.
    fn fits_alone(&self, tuple: &str) -> bool {
        self.prefix.len() + tuple.len() + 2 <= self.max_bytes
    }

    /// Adds a tuple; returns a finished statement when the tuple did not fit beside it.
    fn push(&mut self, tuple: &str) -> Option<String> {
        let finished = if !self.statement.is_empty()
            && self.statement.len() + 2 + tuple.len() + 2 > self.max_bytes
        {
            self.finish()
        } else {
            None
        };
        if self.statement.is_empty() {
            self.statement.push_str(&self.prefix);
        } else {
            self.statement.push_str(",\n");
        }
        self.statement.push_str(tuple);
        finished
    }

    fn finish(&mut self) -> Option<String> {
        if self.statement.is_empty() {
            return None;
        }
        let mut done = std::mem::take(&mut self.statement);
        done.push_str(";\n");
        Some(done)
    }
}

fn header(opts: &DumpOptions) -> String {
    format!(
        "-- d1-backup SQL dump\n\
         -- format: {DUMP_FORMAT_VERSION}\n\
         -- tool: d1-backup {}\n\
         -- database: {}\n\
         -- created: {}\n\
         -- Restore: wrangler d1 execute <db> --remote --file <this file>, or sqlite3 <file.db> < <this file>\n\
         PRAGMA defer_foreign_keys = on;\n",
        crate::TOOL_VERSION,
        comment_safe(&opts.database),
        opts.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// Exports the whole database to `sink` and returns what was written.
pub async fn export<S: SqlSource, W: ByteSink>(
    source: &mut S,
    sink: &mut W,
    opts: &DumpOptions,
) -> Result<DumpSummary, DumpError> {
    let mut out = HashingWriter { sink, hasher: Sha256::new(), bytes: 0 };
    out.write(&header(opts)).await?;

    let plan = plan_schema(source).await?;
    // Every table exists before any row goes in: with foreign keys enforced (always, in D1) an
    // INSERT into a child table fails outright while its parent table does not exist yet, even
    // with the checks themselves deferred.
    let mut schema = String::from("\n-- Tables\n");
    for create_sql in plan.tables.iter().map(|t| &t.create_sql).chain(&plan.virtual_without_rows) {
        schema.push_str(&format!("{create_sql};\n"));
    }
    out.write(&schema).await?;

    let mut counts = Vec::with_capacity(plan.tables.len());
    for table in &plan.tables {
        out.write(&format!("\n-- Table: {}\n", comment_safe(&table.name))).await?;
        let rows = export_rows(source, &mut out, table, opts).await?;
        counts.push(TableCount { name: table.name.clone(), rows });
    }

    // AUTOINCREMENT counters: inserting rows with explicit ids only raises a counter to the
    // largest id restored, but the source's counter can be higher (rows deleted since), and a
    // restored database must not hand out those ids again.
    let has_sequence = !query(
        source,
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
    )
    .await?
    .is_empty();
    if has_sequence {
        let sequences = query(source, "SELECT quote(name), quote(seq) FROM sqlite_sequence ORDER BY name").await?;
        if !sequences.is_empty() {
            let mut section = String::from("\n-- AUTOINCREMENT counters\n");
            for row in &sequences {
                let (name, seq) = (text(row, 0), text(row, 1));
                section.push_str(&format!(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT {name}, 0 \
                     WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = {name});\n\
                     UPDATE sqlite_sequence SET seq = {seq} WHERE name = {name};\n"
                ));
            }
            out.write(&section).await?;
        }
    }

    if !plan.fts_rebuilds.is_empty() {
        out.write(&format!("\n-- Full-text indexes over other tables\n{}\n", plan.fts_rebuilds.join("\n"))).await?;
    }

    if !plan.after_data.is_empty() {
        out.write("\n-- Indexes, views and triggers\n").await?;
        for create_sql in &plan.after_data {
            out.write(&format!("{create_sql};\n")).await?;
        }
    }

    let total_rows: u64 = counts.iter().map(|c| c.rows).sum();
    let mut footer = String::from("\n-- Row counts\n");
    for count in &counts {
        footer.push_str(&format!("-- rows {}: {}\n", comment_safe(&count.name), count.rows));
    }
    footer.push_str(&format!(
        "{COMPLETE_MARKER} {} tables, {} rows\n",
        counts.len(),
        total_rows
    ));
    out.write(&footer).await?;

    let sha256 = out.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(DumpSummary { tables: counts, rows: total_rows, bytes: out.bytes, sha256 })
}

async fn export_rows<S: SqlSource, W: ByteSink>(
    source: &mut S,
    out: &mut HashingWriter<'_, W>,
    table: &TablePlan,
    opts: &DumpOptions,
) -> Result<u64, DumpError> {
    let key_len = match &table.key {
        PageKey::Rowid(_) => 1,
        PageKey::PrimaryKey(cols) => cols.len(),
    };
    let mut packer = InsertPacker::new(table, opts.max_statement_bytes);
    let mut last_key: Option<Vec<String>> = None;
    let mut rows = 0u64;
    loop {
        let page = query(source, &page_query(table, last_key.as_deref(), opts.rows_per_query)).await?;
        let page_len = page.len();
        let mut chunk = String::new();
        for row in &page {
            let literal = |i: usize| row.get(i).cloned().flatten().unwrap_or_else(|| "NULL".into());
            let values: Vec<String> = (key_len..key_len + table.insert_columns.len()).map(literal).collect();
            let key: Vec<String> = (0..key_len).map(literal).collect();
            let tuple = format!("({})", values.join(","));
            if packer.fits_alone(&tuple) {
                if let Some(statement) = packer.push(&tuple) {
                    chunk.push_str(&statement);
                }
            } else {
                chunk.extend(packer.finish());
                let statements = oversized::split_row(
                    &packer.prefix,
                    &ident(&table.name),
                    &table.insert_columns,
                    &row_filter(table, &key),
                    &values,
                    opts.max_statement_bytes,
                )
                .ok_or_else(|| {
                    DumpError::Unsupported(format!(
                        "a row of {:?} cannot be split into statements of at most {} bytes",
                        table.name, opts.max_statement_bytes
                    ))
                })?;
                statements.iter().for_each(|s| chunk.push_str(s));
            }
            last_key = Some(key);
        }
        rows += page_len as u64;
        if !chunk.is_empty() {
            out.write(&chunk).await?;
        }
        if page_len < opts.rows_per_query as usize {
            break;
        }
    }
    if let Some(statement) = packer.finish() {
        out.write(&statement).await?;
    }
    Ok(rows)
}
