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
//!
//! Row sections come parents first (a table after the tables its foreign keys reference), so a
//! restore that commits in several transactions, as D1 must, never holds a child row without
//! its parent at a commit. Each table's rows are hashed as they are written: the digest of a
//! table is the SHA-256 of its row tuples, each followed by a newline, in key order. The same
//! tuples come out of any database holding the same values, so exporting a restored copy and
//! comparing digests proves the copy holds exactly what was exported.

mod oversized;
pub mod sql;

use crate::ports::{ByteSink, Clock, PortError, SqlSource};
use crate::sha256::ResumableSha256;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sql::{
    comment_safe, control_text_literal, ident, literal_expr, outside_exact_print_range, printed_real, real_literal, scaled_real_expr,
    unscale_real,
};
use std::fmt;

pub const DUMP_FORMAT_VERSION: u32 = 1;

/// The line that closes every complete dump.
pub const COMPLETE_MARKER: &str = "-- Dump complete:";

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub database: String,
    pub created_at: DateTime<Utc>,
    /// Most rows fetched per query. Pages shrink below this when rows are large, so one page
    /// stays near [`DumpOptions::page_target_bytes`] whatever the rows hold.
    pub rows_per_query: u32,
    /// The size a page of literals aims for: what bounds the exporter's memory.
    pub page_target_bytes: usize,
    /// Upper bound for one INSERT statement, in bytes (D1 refuses statements over 100,000).
    pub max_statement_bytes: usize,
}

impl DumpOptions {
    pub fn new(database: &str, created_at: DateTime<Utc>) -> DumpOptions {
        DumpOptions {
            database: database.to_owned(),
            created_at,
            rows_per_query: 500,
            page_target_bytes: 4 * 1024 * 1024,
            max_statement_bytes: 99_000,
        }
    }
}

/// Rows asked for in the first page of each table, before the size of its rows is known.
const FIRST_PAGE_ROWS: u32 = 32;

/// How much one export step may do before it saves its cursor and stops. A step always makes
/// some progress (at least one page), then stops at the first page boundary past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBudget {
    /// Queries to the source database.
    pub max_queries: u32,
    /// Bytes of SQL produced.
    pub max_bytes: u64,
    /// Wall-clock time, in milliseconds.
    pub max_millis: u64,
}

impl StepBudget {
    pub const UNLIMITED: StepBudget = StepBudget { max_queries: u32::MAX, max_bytes: u64::MAX, max_millis: u64::MAX };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub name: String,
    pub rows: u64,
    /// SHA-256 of the table's row tuples (see the module documentation); empty for dumps made
    /// before digests existed.
    #[serde(default)]
    pub sha256: String,
}

/// What a finished export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportTotals {
    pub tables: Vec<TableCount>,
    pub rows: u64,
    /// The D1 bookmark the export started at, when the source has one.
    pub bookmark: Option<String>,
    /// Every schema object exported, for detecting schema changes between backups.
    #[serde(default)]
    pub schema: Vec<SchemaObject>,
    /// The AUTOINCREMENT counters (`sqlite_sequence`) exported, for verification.
    #[serde(default)]
    pub sequences: Vec<Sequence>,
}

/// One AUTOINCREMENT counter: a table's row of `sqlite_sequence`, its value as a SQL literal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sequence {
    pub name: String,
    pub seq: String,
}

/// A table, index, view or trigger as `sqlite_master` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaObject {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub sql: String,
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

/// Where an export stands between two steps: everything the next step needs, and nothing that
/// grows with the data (the schema plan, the key of the last row written, counters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportCursor {
    plan: SchemaPlan,
    position: Position,
    /// Rows written so far, per table of the plan.
    counts: Vec<u64>,
    /// The digest of each table's rows so far, per table of the plan.
    #[serde(default)]
    digests: Vec<ResumableSha256>,
    /// Length of the INSERT statement left open by the last row written (0: none). The next
    /// row continues it or closes it exactly as an export without the pause would have.
    open_statement_bytes: usize,
    /// Whether an oversized row has created the staging table, which the tail then drops.
    uses_staging: bool,
}

impl ExportCursor {
    /// The D1 bookmark the export started at: later steps read at or after it.
    pub fn bookmark(&self) -> Option<&str> {
        self.plan.bookmark.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Position {
    /// Rows of `plan.tables[table]`, after the row whose key literals are `after`.
    Rows { table: usize, after: Option<Vec<String>>, page_rows: u32 },
    /// Counters, indexes, views, triggers and the footer.
    Tail,
}

/// Where an export step left off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportProgress {
    /// A budget ran out: continue with this cursor.
    Paused(ExportCursor),
    /// The footer is written.
    Finished(ExportTotals),
}

/// Counts what one step has spent against its budget.
struct Meter<'a, S: SqlSource, C: Clock> {
    source: &'a mut S,
    clock: &'a C,
    budget: StepBudget,
    started_at: i64,
    queries: u32,
    bytes: u64,
}

impl<S: SqlSource, C: Clock> Meter<'_, S, C> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DumpError> {
        self.queries += 1;
        self.source.query(sql).await.map_err(DumpError::Source)
    }

    async fn write<W: ByteSink>(&mut self, sink: &mut W, text: &str) -> Result<(), DumpError> {
        self.bytes += text.len() as u64;
        sink.write(text.as_bytes()).await.map_err(DumpError::Sink)
    }

    fn exhausted(&self) -> bool {
        let elapsed = self.clock.now_millis().saturating_sub(self.started_at).max(0) as u64;
        self.queries >= self.budget.max_queries
            || self.bytes >= self.budget.max_bytes
            || elapsed >= self.budget.max_millis
    }
}

/// How a table's rows are paged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum PageKey {
    /// By rowid, through whichever of `rowid`, `_rowid_`, `oid` no column shadows.
    Rowid(String),
    /// By the primary key columns, in key order (`WITHOUT ROWID` tables).
    PrimaryKey(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaPlan {
    /// The D1 bookmark read with the schema, for the header.
    bookmark: Option<String>,
    tables: Vec<TablePlan>,
    /// `CREATE VIRTUAL TABLE` of external-content FTS5 tables, which hold no rows of their own.
    virtual_without_rows: Vec<String>,
    /// Statements rebuilding external-content FTS5 indexes once every row is in.
    fts_rebuilds: Vec<String>,
    /// Indexes, views and triggers, in creation order.
    after_data: Vec<String>,
    /// Whether the database has AUTOINCREMENT counters to restore.
    has_sequence: bool,
    /// Every object above, named (FTS5 shadow tables excluded).
    #[serde(default)]
    schema: Vec<SchemaObject>,
}

fn text(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// A column as `pragma_table_xinfo` describes it.
struct ColumnInfo {
    name: String,
    /// 0 ordinary, 1 hidden (virtual tables), 2 generated VIRTUAL, 3 generated STORED.
    hidden: String,
    /// Position in the primary key, 0 when not part of it.
    pk: u32,
    declared_type: String,
}

/// Reads the whole schema in one query, so planning costs one query of the step's budget
/// however many tables there are.
async fn plan_schema<S: SqlSource, C: Clock>(meter: &mut Meter<'_, S, C>) -> Result<SchemaPlan, DumpError> {
    // `pragma_table_list` tells plain tables from virtual and shadow tables and marks
    // WITHOUT ROWID ones; sqlite_master holds the SQL, in creation order; `pragma_table_xinfo`
    // lists each table's columns, generated and hidden ones included.
    let rows = meter
        .query(
            "SELECT m.type, m.name, m.sql, coalesce(t.type, ''), coalesce(t.wr, 0), \
                    x.name, x.hidden, x.pk, upper(x.type), \
                    (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence') \
             FROM sqlite_master AS m \
             LEFT JOIN pragma_table_list AS t \
               ON t.schema = 'main' AND t.name = m.name AND m.type = 'table' \
             LEFT JOIN pragma_table_xinfo(m.name) AS x \
               ON m.type = 'table' AND t.type IN ('table', 'virtual') \
             WHERE m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
               AND m.name NOT IN ('_d1_backup_staging', '_d1_backup_restore', '_d1_backup_fence', '_d1_backup_scratch') AND m.sql IS NOT NULL \
             ORDER BY m.rowid, x.cid",
        )
        .await?;

    let mut plan = SchemaPlan {
        bookmark: meter.source.bookmark(),
        tables: Vec::new(),
        virtual_without_rows: Vec::new(),
        fts_rebuilds: Vec::new(),
        after_data: Vec::new(),
        has_sequence: rows.first().is_some_and(|r| text(r, 9) != "0"),
        schema: Vec::new(),
    };
    // Rows come grouped by object, one per column (one for an object without columns).
    let mut i = 0;
    while i < rows.len() {
        let (kind, name) = (text(&rows[i], 0), text(&rows[i], 1));
        let mut end = i + 1;
        while end < rows.len() && text(&rows[end], 0) == kind && text(&rows[end], 1) == name {
            end += 1;
        }
        let object = &rows[i..end];
        i = end;
        let (create_sql, table_type) = (text(&object[0], 2), text(&object[0], 3));
        let without_rowid = text(&object[0], 4) == "1";
        if table_type != "shadow" {
            plan.schema.push(SchemaObject { kind: kind.clone(), name: name.clone(), sql: create_sql.clone() });
        }
        let columns: Vec<ColumnInfo> = object
            .iter()
            .filter(|r| r.get(5).is_some_and(Option::is_some))
            .map(|r| ColumnInfo {
                name: text(r, 5),
                hidden: text(r, 6),
                pk: text(r, 7).parse().unwrap_or(0),
                declared_type: text(r, 8),
            })
            .collect();
        match kind.as_str() {
            "table" if table_type == "table" => {
                plan.tables.push(plan_table(name, create_sql, without_rowid, &columns)?);
            }
            // FTS5 keeps its index in shadow tables; recreating the virtual table recreates
            // them, and its rows (or a rebuild) refill them.
            "table" if table_type == "shadow" => {}
            "table" if table_type == "virtual" => match fts5_content(&create_sql) {
                Some(Fts5Content::Own) => {
                    plan.tables.push(plan_table(name, create_sql, false, &columns)?);
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
    if !plan.tables.is_empty() {
        let references = meter
            .query(
                // D1 refuses any look into its own `_cf_` tables, even their foreign keys.
                "SELECT m.name, f.\"table\" FROM sqlite_master AS m, pragma_foreign_key_list(m.name) AS f \
                 WHERE m.type = 'table' AND m.name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY m.rowid",
            )
            .await?;
        let edges: Vec<(String, String)> = references.iter().map(|r| (text(r, 0), text(r, 1))).collect();
        plan.tables = parents_first(std::mem::take(&mut plan.tables), &edges);
    }
    Ok(plan)
}

/// Orders tables so that each comes after the tables it references (`edges` are
/// `(child, parent)` pairs), keeping creation order wherever references do not decide. Tables
/// in a reference cycle keep their creation order; a self-reference is no constraint.
fn parents_first(tables: Vec<TablePlan>, edges: &[(String, String)]) -> Vec<TablePlan> {
    // SQLite matches a REFERENCES target case-insensitively (ASCII).
    let index_of = |name: &str| tables.iter().position(|t| t.name.eq_ignore_ascii_case(name));
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); tables.len()];
    for (child, parent) in edges {
        if let (Some(c), Some(p)) = (index_of(child), index_of(parent)) {
            if c != p && !parents[c].contains(&p) {
                parents[c].push(p);
            }
        }
    }
    let mut placed = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        // The first table in creation order whose parents are all placed; in a cycle, none
        // is ready and the first unplaced table goes next.
        let next = (0..tables.len())
            .find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            .or_else(|| (0..tables.len()).find(|&i| !placed[i]))
            .expect("an unplaced table remains");
        placed[next] = true;
        order.push(next);
    }
    let mut slots: Vec<Option<TablePlan>> = tables.into_iter().map(Some).collect();
    order.into_iter().map(|i| slots[i].take().expect("each table placed once")).collect()
}

fn plan_table(
    name: String,
    create_sql: String,
    without_rowid: bool,
    columns: &[ColumnInfo],
) -> Result<TablePlan, DumpError> {
    let mut insert_columns: Vec<String> =
        columns.iter().filter(|c| c.hidden == "0").map(|c| ident(&c.name)).collect();
    let key = if without_rowid {
        let mut pk: Vec<(u32, String)> =
            columns.iter().filter(|c| c.pk > 0).map(|c| (c.pk, c.name.clone())).collect();
        pk.sort();
        PageKey::PrimaryKey(pk.into_iter().map(|(_, c)| c).collect())
    } else {
        let shadowed = |alias: &str| columns.iter().any(|c| c.name.eq_ignore_ascii_case(alias));
        let alias = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !shadowed(a))
            .ok_or_else(|| {
                DumpError::Unsupported(format!(
                    "table {name:?} has columns named rowid, _rowid_ and oid, so its rows cannot be paged"
                ))
            })?;
        // A lone INTEGER PRIMARY KEY column is the rowid itself and already inserted.
        let pk_columns = columns.iter().filter(|c| c.pk > 0).count();
        let has_integer_primary_key =
            pk_columns == 1 && columns.iter().any(|c| c.pk == 1 && c.declared_type == "INTEGER");
        if !has_integer_primary_key {
            insert_columns.insert(0, alias.to_string());
        }
        PageKey::Rowid(alias.to_string())
    };
    Ok(TablePlan { name, create_sql, insert_columns, key })
}

impl TablePlan {
    fn key_len(&self) -> usize {
        match &self.key {
            PageKey::Rowid(_) => 1,
            PageKey::PrimaryKey(cols) => cols.len(),
        }
    }
}

impl TablePlan {
    /// The key columns, as SQL expressions.
    fn key_columns(&self) -> Vec<String> {
        match &self.key {
            PageKey::Rowid(alias) => vec![alias.clone()],
            PageKey::PrimaryKey(cols) => cols.iter().map(|c| ident(c)).collect(),
        }
    }

    /// What a page reads, in order: the key columns, then each column an INSERT writes.
    fn page_columns(&self) -> Vec<String> {
        self.key_columns().into_iter().chain(self.insert_columns.iter().cloned()).collect()
    }
}

/// The query for one page of rows, selecting `select` (expressions over the page's columns).
fn page_query(table: &TablePlan, select: &[String], after: Option<&[String]>, limit: u32) -> String {
    let key_columns = table.key_columns();
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

/// Reads one page: every column as an exact SQL literal (see `sql::literal_expr`).
async fn read_page<S: SqlSource, C: Clock>(
    meter: &mut Meter<'_, S, C>,
    table: &TablePlan,
    after: Option<&[String]>,
    limit: u32,
) -> Result<Vec<Vec<Option<String>>>, DumpError> {
    let columns = table.page_columns();
    let literals: Vec<String> = columns.iter().map(|c| literal_expr(c)).collect();
    let mut page = meter.query(&page_query(table, &literals, after, limit)).await?;

    // REALs arrive as SQLite's printf digits. Where those are exact they are rewritten as
    // exact literals here; the others are read again, scaled into the exact range. TEXT with
    // control characters is rewritten as hex (see `sql::literal_expr`).
    let mut rescale = std::collections::BTreeSet::new();
    let printed_keys: Vec<Vec<Option<String>>> =
        page.iter().map(|row| row[..table.key_len()].to_vec()).collect();
    for row in page.iter_mut() {
        for (j, cell) in row.iter_mut().enumerate() {
            if let Some(hex) = cell.as_deref().and_then(control_text_literal) {
                *cell = Some(hex);
            } else if let Some(x) = cell.as_deref().and_then(printed_real) {
                if outside_exact_print_range(x) {
                    rescale.insert(j);
                } else {
                    *cell = Some(real_literal(x));
                }
            }
        }
    }
    if rescale.is_empty() {
        return Ok(page);
    }
    let mut select: Vec<String> = literals[..table.key_len()].to_vec();
    select.extend(rescale.iter().map(|j| scaled_real_expr(&columns[*j])));
    let again = meter.query(&page_query(table, &select, after, limit)).await?;
    let same_rows = again.len() == page.len()
        && again.iter().zip(&printed_keys).all(|(row, keys)| row[..table.key_len()] == keys[..]);
    if !same_rows {
        return Err(DumpError::Source(PortError::unavailable(format!(
            "the rows of {:?} changed between two reads of one page; the step will be retried",
            table.name
        ))));
    }
    for (row, scaled) in page.iter_mut().zip(&again) {
        for (n, j) in rescale.iter().enumerate() {
            if let Some(text) = scaled.get(table.key_len() + n).and_then(|v| v.as_deref()) {
                let x = unscale_real(text).ok_or_else(|| {
                    DumpError::Source(PortError::unavailable(format!("unreadable scaled REAL {text:?} in {:?}", table.name)))
                })?;
                row[*j] = Some(real_literal(x));
            }
        }
    }
    Ok(page)
}

/// Packs row tuples into multi-row INSERT statements below the size limit, writing as it
/// goes: its only state is the length of the statement left open, which a cursor can carry.
struct InsertPacker {
    prefix: String,
    open_bytes: usize,
    max_bytes: usize,
}

impl InsertPacker {
    fn new(table: &TablePlan, open_bytes: usize, max_bytes: usize) -> InsertPacker {
        InsertPacker {
            prefix: format!("INSERT INTO {} ({}) VALUES\n", ident(&table.name), table.insert_columns.join(",")),
            open_bytes,
            max_bytes,
        }
    }

    /// Whether a statement holding only this tuple stays within the limit.
    fn fits_alone(&self, tuple: &str) -> bool {
        self.prefix.len() + tuple.len() + 2 <= self.max_bytes
    }

    /// Appends a tuple to the open statement, or closes it and opens the next one.
    fn push(&mut self, tuple: &str, out: &mut String) {
        if self.open_bytes > 0 && self.open_bytes + 2 + tuple.len() + 2 > self.max_bytes {
            self.finish(out);
        }
        if self.open_bytes == 0 {
            out.push_str(&self.prefix);
            self.open_bytes = self.prefix.len();
        } else {
            out.push_str(",\n");
            self.open_bytes += 2;
        }
        out.push_str(tuple);
        self.open_bytes += tuple.len();
    }

    fn finish(&mut self, out: &mut String) {
        if self.open_bytes > 0 {
            out.push_str(";\n");
            self.open_bytes = 0;
        }
    }
}

fn header(opts: &DumpOptions, bookmark: Option<&str>) -> String {
    format!(
        "-- d1-backup SQL dump\n\
         -- format: {DUMP_FORMAT_VERSION}\n\
         -- tool: d1-backup {}\n\
         -- database: {}\n\
         -- created: {}\n\
         -- bookmark: {}\n\
         -- Restore: wrangler d1 execute <db> --remote --file <this file>, or sqlite3 <file.db> < <this file>\n\
         PRAGMA defer_foreign_keys = on;\n",
        crate::TOOL_VERSION,
        comment_safe(&opts.database),
        opts.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        bookmark.map(comment_safe).unwrap_or_else(|| "unavailable".into()),
    )
}

/// Exports the whole database to `sink` in one go.
pub async fn export<S: SqlSource, W: ByteSink>(
    source: &mut S,
    sink: &mut W,
    opts: &DumpOptions,
) -> Result<ExportTotals, DumpError> {
    match export_step(source, sink, &|| 0, opts, StepBudget::UNLIMITED, None).await? {
        ExportProgress::Finished(totals) => Ok(totals),
        ExportProgress::Paused(_) => unreachable!("an unlimited budget never pauses"),
    }
}

/// Exports from `cursor` (or from the start) until the dump is finished or `budget` runs out.
///
/// The bytes written do not depend on where steps pause: the steps of an export, concatenated,
/// are byte for byte the dump a single step writes.
pub async fn export_step<S: SqlSource, W: ByteSink, C: Clock>(
    source: &mut S,
    sink: &mut W,
    clock: &C,
    opts: &DumpOptions,
    budget: StepBudget,
    cursor: Option<ExportCursor>,
) -> Result<ExportProgress, DumpError> {
    let mut meter = Meter { source, clock, budget, started_at: clock.now_millis(), queries: 0, bytes: 0 };
    let mut cursor = match cursor {
        Some(cursor) => cursor,
        None => begin(&mut meter, sink, opts).await?,
    };

    loop {
        // Every step does something before it may pause, so an export always advances.
        if meter.queries > 0 && meter.exhausted() {
            return Ok(ExportProgress::Paused(cursor));
        }
        match cursor.position {
            Position::Rows { .. } => export_page(&mut meter, sink, &mut cursor, opts).await?,
            Position::Tail => return finish(&mut meter, sink, &cursor).await,
        }
    }
}

/// Plans the schema and writes the header and every `CREATE TABLE`.
async fn begin<S: SqlSource, C: Clock, W: ByteSink>(
    meter: &mut Meter<'_, S, C>,
    sink: &mut W,
    opts: &DumpOptions,
) -> Result<ExportCursor, DumpError> {
    let plan = plan_schema(meter).await?;
    let mut start = header(opts, plan.bookmark.as_deref());
    // Every table exists before any row goes in: with foreign keys enforced (always, in D1) an
    // INSERT into a child table fails outright while its parent table does not exist yet, even
    // with the checks themselves deferred.
    start.push_str("\n-- Tables\n");
    for create_sql in plan.tables.iter().map(|t| &t.create_sql).chain(&plan.virtual_without_rows) {
        start.push_str(&format!("{create_sql};\n"));
    }
    let position = if plan.tables.is_empty() {
        Position::Tail
    } else {
        start.push_str(&table_marker(&plan.tables[0]));
        Position::Rows { table: 0, after: None, page_rows: FIRST_PAGE_ROWS }
    };
    meter.write(sink, &start).await?;
    Ok(ExportCursor {
        counts: vec![0; plan.tables.len()],
        digests: vec![ResumableSha256::new(); plan.tables.len()],
        plan,
        position,
        open_statement_bytes: 0,
        uses_staging: false,
    })
}

fn table_marker(table: &TablePlan) -> String {
    format!("\n-- Table: {}\n", comment_safe(&table.name))
}

/// Reads one page of the current table, writes its rows and moves the cursor on: to the next
/// page, the next table (writing its marker), or the tail.
async fn export_page<S: SqlSource, C: Clock, W: ByteSink>(
    meter: &mut Meter<'_, S, C>,
    sink: &mut W,
    cursor: &mut ExportCursor,
    opts: &DumpOptions,
) -> Result<(), DumpError> {
    let Position::Rows { table: index, after, page_rows } = &cursor.position else {
        return Ok(());
    };
    let (index, limit) = (*index, (*page_rows).clamp(1, opts.rows_per_query.max(1)));
    let table = &cursor.plan.tables[index];
    let key_len = table.key_len();
    let page = read_page(meter, table, after.as_deref(), limit).await?;
    // A checkpoint saved before digests existed has none: its digests cover no rows and are
    // not reported (see `finish`).
    cursor.digests.resize_with(cursor.plan.tables.len(), ResumableSha256::new);

    let mut packer = InsertPacker::new(table, cursor.open_statement_bytes, opts.max_statement_bytes);
    let mut chunk = String::new();
    // The page's tuples, hashed at once: one update per page instead of two per row.
    let mut digest_input = String::new();
    let mut literal_bytes = 0usize;
    let mut last_key = None;
    for row in &page {
        let literal = |i: usize| row.get(i).cloned().flatten().unwrap_or_else(|| "NULL".into());
        let values: Vec<String> = (key_len..key_len + table.insert_columns.len()).map(literal).collect();
        let key: Vec<String> = (0..key_len).map(literal).collect();
        let tuple = format!("({})", values.join(","));
        literal_bytes += tuple.len();
        digest_input.push_str(&tuple);
        digest_input.push('\n');
        if packer.fits_alone(&tuple) {
            packer.push(&tuple, &mut chunk);
        } else {
            packer.finish(&mut chunk);
            if !cursor.uses_staging {
                chunk.push_str(&oversized::create_staging());
                cursor.uses_staging = true;
            }
            let statements = oversized::split_row(&packer.prefix, &values, opts.max_statement_bytes)
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
    cursor.counts[index] += page.len() as u64;
    cursor.digests[index].update(digest_input.as_bytes());

    cursor.position = if page.len() as u32 == limit {
        // The next page aims at the target size, judging by the rows just read.
        let fitting = opts.page_target_bytes as u64 * page.len() as u64 / literal_bytes.max(1) as u64;
        let next_rows = fitting.clamp(1, opts.rows_per_query.max(1) as u64) as u32;
        Position::Rows { table: index, after: last_key, page_rows: next_rows }
    } else {
        // The table is done: its last statement closes before the next table's marker.
        packer.finish(&mut chunk);
        match cursor.plan.tables.get(index + 1) {
            Some(next) => {
                chunk.push_str(&table_marker(next));
                Position::Rows { table: index + 1, after: None, page_rows: FIRST_PAGE_ROWS }
            }
            None => Position::Tail,
        }
    };
    cursor.open_statement_bytes = packer.open_bytes;
    if !chunk.is_empty() {
        meter.write(sink, &chunk).await?;
    }
    Ok(())
}

/// Writes the counters, full-text rebuilds, indexes, views, triggers and the footer.
async fn finish<S: SqlSource, C: Clock, W: ByteSink>(
    meter: &mut Meter<'_, S, C>,
    sink: &mut W,
    cursor: &ExportCursor,
) -> Result<ExportProgress, DumpError> {
    let plan = &cursor.plan;
    let mut tail = String::new();
    let mut exported_sequences = Vec::new();
    // AUTOINCREMENT counters: inserting rows with explicit ids only raises a counter to the
    // largest id restored, but the source's counter can be higher (rows deleted since), and a
    // restored database must not hand out those ids again.
    if plan.has_sequence {
        let sequences = meter.query("SELECT quote(name), quote(seq) FROM sqlite_sequence ORDER BY name").await?;
        if !sequences.is_empty() {
            tail.push_str("\n-- AUTOINCREMENT counters\n");
            for row in &sequences {
                let (name, seq) = (text(row, 0), text(row, 1));
                exported_sequences.push(Sequence { name: name.to_string(), seq: seq.to_string() });
                tail.push_str(&format!(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT {name}, 0 \
                     WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = {name});\n\
                     UPDATE sqlite_sequence SET seq = {seq} WHERE name = {name};\n"
                ));
            }
        }
    }

    if cursor.uses_staging {
        tail.push_str(&format!("\n-- Staging table of the rows larger than one statement\n{}", oversized::drop_staging()));
    }

    if !plan.fts_rebuilds.is_empty() {
        tail.push_str(&format!("\n-- Full-text indexes over other tables\n{}\n", plan.fts_rebuilds.join("\n")));
    }

    if !plan.after_data.is_empty() {
        tail.push_str("\n-- Indexes, views and triggers\n");
        for create_sql in &plan.after_data {
            tail.push_str(&format!("{create_sql};\n"));
        }
    }

    let complete_digests = cursor.digests.len() == plan.tables.len()
        && cursor.digests.iter().zip(&cursor.counts).all(|(d, rows)| *rows == 0 || !d.is_empty());
    let counts: Vec<TableCount> = plan
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| TableCount {
            name: t.name.clone(),
            rows: cursor.counts[i],
            sha256: if complete_digests {
                cursor.digests[i].hex_digest()
            } else {
                String::new()
            },
        })
        .collect();
    let total_rows: u64 = counts.iter().map(|c| c.rows).sum();
    tail.push_str("\n-- Row counts\n");
    for count in &counts {
        tail.push_str(&format!("-- rows {}: {}\n", comment_safe(&count.name), count.rows));
    }
    tail.push_str(&format!("{COMPLETE_MARKER} {} tables, {} rows\n", counts.len(), total_rows));
    meter.write(sink, &tail).await?;
    Ok(ExportProgress::Finished(ExportTotals {
        tables: counts,
        rows: total_rows,
        bookmark: plan.bookmark.clone(),
        schema: plan.schema.clone(),
        sequences: exported_sequences,
    }))
}
