//! Read models for the API: the inventory listing, restore-guide facts and storage totals.

use crate::meta::{number, statement, text};
use serde::{Deserialize, Serialize};
use shared::guide::GuideBackup;
use shared::keys::IsoWeek;
use shared::listing::{encode_cursor, ListQuery};
use shared::retention::StoredKind;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, Result};

/// One stored object: a backup or a weekly archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct InventoryItem {
    pub key: String,
    pub kind: String,
    /// `None` for weekly archives.
    pub database: Option<String>,
    /// A backup's date; a weekly archive's last day.
    pub date: String,
    pub bytes: u64,
    pub sha256: String,
    /// For an encrypted backup (`.age`), the SHA-256 of its plaintext (what `age -d` gives
    /// back); `None` for every other object.
    pub plaintext_sha256: Option<String>,
    /// Rows in a backup; members in a weekly archive.
    pub rows: u64,
    pub tables: Option<u64>,
    pub created_at: String,
    pub bookmark: Option<String>,
    pub deleted_at: Option<String>,
    pub delete_reason: Option<String>,
    /// The latest verification of a backup: `pending`, `verifying`, `verified`,
    /// `verify_failed` or `skipped` (`None` for weekly archives and older backups).
    pub verify_state: Option<String>,
    /// The first table that differed, when verification failed.
    pub verify_table: Option<String>,
    /// What matched, what was wrong, or why verification was skipped.
    pub verify_detail: Option<String>,
    pub verified_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPage {
    pub items: Vec<InventoryItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

const INVENTORY: &str = "SELECT b.key, b.kind, b.database, b.date, b.bytes, b.sha256, b.plaintext_sha256, b.rows, \
                           b.tables, b.created_at, b.bookmark, b.deleted_at, b.delete_reason, r.verify_state, \
                           r.verify_table, r.verify_detail, r.verified_at \
                         FROM backups AS b LEFT JOIN runs AS r ON r.id = b.run_id \
                         UNION ALL \
                         SELECT key, 'weekly', NULL, date, bytes, sha256, NULL, members, NULL, created_at, NULL, \
                           deleted_at, delete_reason, NULL, NULL, NULL, NULL FROM archives";

/// A page of the inventory, newest first (by creation time, then key), by keyset. Creation
/// time, not the backup's date: a backup made today of a past night (a cron fired late, a
/// retried run) is listed where it appeared, and manual backups mix with nightly ones in the
/// order they were made.
pub async fn list_inventory(db: &D1Database, query: &ListQuery) -> Result<InventoryPage> {
    let mut conditions = Vec::new();
    let mut params: Vec<JsValue> = Vec::new();
    let mut param = |value: JsValue| {
        params.push(value);
        format!("?{}", params.len())
    };
    if !query.include_deleted {
        conditions.push("deleted_at IS NULL".to_owned());
    }
    if let Some(database) = &query.database {
        conditions.push(format!("database = {}", param(text(database))));
    }
    if let Some(kind) = query.kind {
        let kind = match kind {
            StoredKind::Daily => "daily",
            StoredKind::Manual => "manual",
            StoredKind::Weekly => "weekly",
        };
        conditions.push(format!("kind = {}", param(text(kind))));
    }
    if let Some(date) = query.date {
        // A weekly archive matches every day of its week.
        let day = date.format("%Y-%m-%d").to_string();
        let sunday = IsoWeek::of(date).last_day().format("%Y-%m-%d").to_string();
        conditions.push(format!(
            "((kind != 'weekly' AND date = {}) OR (kind = 'weekly' AND date = {}))",
            param(text(&day)),
            param(text(&sunday))
        ));
    }
    if let Some((created_at, key)) = &query.after {
        conditions.push(format!("(created_at, key) < ({}, {})", param(text(created_at)), param(text(key))));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    // One more than asked tells whether there is a next page.
    let limit = param(number(u64::from(query.limit) + 1));
    let sql = format!("SELECT * FROM ({INVENTORY}) {filter} ORDER BY created_at DESC, key DESC LIMIT {limit}");
    let mut items: Vec<InventoryItem> = statement(db, &sql, &params)?.all().await?.results()?;
    let next_cursor = if items.len() > query.limit as usize {
        items.truncate(query.limit as usize);
        items.last().map(|i| encode_cursor(&i.created_at, &i.key))
    } else {
        None
    };
    Ok(InventoryPage { items, next_cursor })
}

/// The facts a restore guide needs about `database`'s newest live backup, or its nightly
/// backup of `date`.
pub async fn guide_backup(db: &D1Database, database: &str, date: Option<&str>) -> Result<Option<GuideBackup>> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        kind: String,
        date: String,
        sha256: String,
        plaintext_sha256: Option<String>,
        bytes: u64,
        rows: u64,
        bookmark: Option<String>,
        created_at: String,
    }
    let row: Option<Row> = match date {
        Some(date) => statement(
            db,
            "SELECT key, kind, date, sha256, plaintext_sha256, bytes, rows, bookmark, created_at FROM backups \
             WHERE database = ?1 AND date = ?2 AND kind = 'daily' AND deleted_at IS NULL",
            &[text(database), text(date)],
        )?,
        None => statement(
            db,
            "SELECT key, kind, date, sha256, plaintext_sha256, bytes, rows, bookmark, created_at FROM backups \
             WHERE database = ?1 AND deleted_at IS NULL ORDER BY date DESC, created_at DESC LIMIT 1",
            &[text(database)],
        )?,
    }
    .first(None)
    .await?;
    let Some(row) = row else { return Ok(None) };
    #[derive(Deserialize)]
    struct Table {
        table_name: String,
        rows: u64,
    }
    let tables: Vec<Table> = statement(
        db,
        "SELECT table_name, rows FROM backup_tables WHERE key = ?1 ORDER BY table_name",
        &[text(&row.key)],
    )?
    .all()
    .await?
    .results()?;
    Ok(Some(GuideBackup {
        database: database.to_owned(),
        key: row.key,
        kind: row.kind,
        date: row.date,
        sha256: row.sha256,
        plaintext_sha256: row.plaintext_sha256,
        bytes: row.bytes,
        rows: row.rows,
        bookmark: row.bookmark,
        created_at: row.created_at,
        tables: tables.into_iter().map(|t| (t.table_name, t.rows)).collect(),
    }))
}

/// Live objects in storage: how many, how big, the oldest and newest dates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct StorageTotals {
    pub kind: String,
    pub count: u64,
    pub bytes: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

/// Totals per kind (`daily`, `manual`, `weekly`) and over everything (`all`).
pub async fn storage_totals(db: &D1Database) -> Result<Vec<StorageTotals>> {
    let sql = format!(
        "SELECT kind, count(*) AS count, coalesce(sum(bytes), 0) AS bytes, min(date) AS oldest, max(date) AS newest \
         FROM ({INVENTORY}) WHERE deleted_at IS NULL GROUP BY kind \
         UNION ALL \
         SELECT 'all', count(*), coalesce(sum(bytes), 0), min(date), max(date) FROM ({INVENTORY}) WHERE deleted_at IS NULL"
    );
    db.prepare(sql).all().await?.results()
}

/// Per database: its newest successful run and how many runs died.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseHealth {
    pub database: String,
    pub last_success_at: Option<String>,
    pub last_started_at: Option<String>,
    pub last_bytes: Option<u64>,
    pub last_rows: Option<u64>,
    pub dead_runs: u64,
    pub succeeded_runs: u64,
}

pub async fn database_health(db: &D1Database) -> Result<Vec<DatabaseHealth>> {
    db.prepare(
        "SELECT d.database, \
           (SELECT finished_at FROM runs r WHERE r.database = d.database AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 1) AS last_success_at, \
           (SELECT started_at FROM runs r WHERE r.database = d.database AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 1) AS last_started_at, \
           (SELECT bytes FROM runs r WHERE r.database = d.database AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 1) AS last_bytes, \
           (SELECT rows FROM runs r WHERE r.database = d.database AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 1) AS last_rows, \
           (SELECT count(*) FROM runs r WHERE r.database = d.database AND state = 'dead') AS dead_runs, \
           (SELECT count(*) FROM runs r WHERE r.database = d.database AND state = 'succeeded') AS succeeded_runs \
         FROM (SELECT DISTINCT database FROM runs) d ORDER BY d.database",
    )
    .all()
    .await?
    .results()
}

/// Counts for the metrics page: rejected messages, alerts by kind, archive jobs by state,
/// backups by verification state.
pub async fn event_counts(db: &D1Database) -> Result<Vec<(String, String, u64)>> {
    #[derive(Deserialize)]
    struct Row {
        family: String,
        label: String,
        n: u64,
    }
    let rows: Vec<Row> = db
        .prepare(
            "SELECT 'rejected' AS family, queue AS label, count(*) AS n FROM rejected_messages GROUP BY queue \
             UNION ALL SELECT 'alerts', kind, count(*) FROM alerts GROUP BY kind \
             UNION ALL SELECT 'archive_jobs', state, count(*) FROM archive_jobs GROUP BY state \
             UNION ALL SELECT 'verifications', verify_state, count(*) FROM runs WHERE verify_state IS NOT NULL \
               GROUP BY verify_state",
        )
        .all()
        .await?
        .results()?;
    Ok(rows.into_iter().map(|r| (r.family, r.label, r.n)).collect())
}

/// Per database: how its newest backup's verification stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))]
pub struct DatabaseVerification {
    pub database: String,
    pub key: String,
    pub run_id: String,
    pub verify_state: Option<String>,
    pub verify_table: Option<String>,
    pub verify_detail: Option<String>,
    pub verified_at: Option<String>,
}

pub async fn latest_verifications(db: &D1Database) -> Result<Vec<DatabaseVerification>> {
    db.prepare(
        "SELECT r.database, r.r2_key AS key, r.id AS run_id, r.verify_state, r.verify_table, r.verify_detail, \
           r.verified_at \
         FROM runs AS r \
         WHERE r.id = (SELECT n.id FROM runs AS n WHERE n.database = r.database AND n.state = 'succeeded' \
                       ORDER BY n.finished_at DESC, n.id DESC LIMIT 1) \
         ORDER BY r.database",
    )
    .all()
    .await?
    .results()
}
