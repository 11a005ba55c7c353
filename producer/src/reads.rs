//! Read-only views: info, status, inventory, restore guides, downloads, metrics, the OpenAPI
//! document and the dashboard page.

use chrono::{DateTime, Utc};
use platform::archives;
use platform::http::{error, json};
use platform::reports;
use shared::cron::CronSchedule;
use shared::metrics::{MetricType, MetricsWriter};
use shared::listing::{parse_download_query, parse_list_query};
use shared::task::TaskState;
use uuid::Uuid;
use platform::meta;
use platform::{bindings, now};
use shared::config::Settings;
use shared::keys::{parse_date, IsoWeek};
use worker::*;
use crate::api_error;

/// The R2 bucket's name, for the restore guide's `wrangler r2` commands (see wrangler.toml).
pub(crate) const BUCKET_NAME: &str = "d1-backups";

/// The Workers' cron schedules (see the three wrangler.toml files).
pub(crate) const SCHEDULES: [(&str, &str, &str); 3] = [
    ("producer", "0 3 * * *", "nightly backup of every configured database"),
    ("producer", crate::SWEEP_CRON, "sweep: re-send the message of every overdue task"),
    ("archiver", "0 4 * * SUN", "weekly archive of the last finished ISO week, then retention"),
];

pub(crate) fn info(settings: &Settings) -> Result<Response> {
    let databases = &settings.databases;
    let schedules: Vec<serde_json::Value> = SCHEDULES
        .iter()
        .map(|(worker, cron, what)| serde_json::json!({ "worker": worker, "cron": cron, "what": what }))
        .collect();
    json(
        200,
        &serde_json::json!({
            "name": "d1-backup",
            "version": shared::TOOL_VERSION,
            "databases": databases.len(),
            "schedules": schedules,
            "retention": settings.retention,
        }),
    )
}

/// When each Worker's cron fires next.
pub(crate) fn next_runs(after: DateTime<Utc>) -> Vec<serde_json::Value> {
    SCHEDULES
        .iter()
        .map(|(worker, cron, what)| {
            let next = CronSchedule::parse(cron).ok().and_then(|c| c.next_after(after)).map(meta::timestamp);
            serde_json::json!({ "worker": worker, "cron": cron, "what": what, "next": next })
        })
        .collect()
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(env: &Env, settings: &Settings) -> Result<Response> {
    let meta_db = env.d1(bindings::META)?;
    let health = reports::database_health(&meta_db).await?;
    let storage = reports::storage_totals(&meta_db).await?;
    let events = reports::event_counts(&meta_db).await?;
    let seconds = |t: &Option<String>| {
        t.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis() as f64 / 1000.0)
    };
    let mut m = MetricsWriter::new();
    m.family("d1_backup_last_success_timestamp_seconds", "When the newest successful backup of a database finished (Unix time).", MetricType::Gauge);
    for h in &health {
        if let Some(t) = seconds(&h.last_success_at) {
            m.sample("d1_backup_last_success_timestamp_seconds", &[("database", &h.database)], t);
        }
    }
    m.family("d1_backup_last_duration_seconds", "How long the newest successful backup of a database took.", MetricType::Gauge);
    for h in &health {
        if let (Some(end), Some(start)) = (seconds(&h.last_success_at), seconds(&h.last_started_at)) {
            m.sample("d1_backup_last_duration_seconds", &[("database", &h.database)], end - start);
        }
    }
    m.family("d1_backup_last_size_bytes", "Size of the newest successful backup of a database.", MetricType::Gauge);
    for h in &health {
        if let Some(bytes) = h.last_bytes {
            m.sample("d1_backup_last_size_bytes", &[("database", &h.database)], bytes as f64);
        }
    }
    m.family("d1_backup_last_rows", "Rows in the newest successful backup of a database.", MetricType::Gauge);
    for h in &health {
        if let Some(rows) = h.last_rows {
            m.sample("d1_backup_last_rows", &[("database", &h.database)], rows as f64);
        }
    }
    m.family("d1_backup_runs_total", "Finished backup runs by outcome.", MetricType::Counter);
    for h in &health {
        m.sample("d1_backup_runs_total", &[("database", &h.database), ("outcome", "succeeded")], h.succeeded_runs as f64);
        m.sample("d1_backup_runs_total", &[("database", &h.database), ("outcome", "dead")], h.dead_runs as f64);
    }
    m.family("d1_backup_dead_letters_total", "Dead runs and unreadable queue messages.", MetricType::Counter);
    m.sample("d1_backup_dead_letters_total", &[("type", "run")], health.iter().map(|h| h.dead_runs).sum::<u64>() as f64);
    let rejected: u64 = events.iter().filter(|(f, _, _)| f == "rejected").map(|(_, _, n)| n).sum();
    m.sample("d1_backup_dead_letters_total", &[("type", "unreadable_message")], rejected as f64);
    m.family("d1_backup_alerts_total", "Alert events recorded, by kind.", MetricType::Counter);
    for (_, kind, n) in events.iter().filter(|(f, _, _)| f == "alerts") {
        m.sample("d1_backup_alerts_total", &[("kind", kind)], *n as f64);
    }
    m.family("d1_backup_archive_jobs", "Weekly archive jobs by state.", MetricType::Gauge);
    for (_, state, n) in events.iter().filter(|(f, _, _)| f == "archive_jobs") {
        m.sample("d1_backup_archive_jobs", &[("state", state)], *n as f64);
    }
    m.family("d1_backup_verifications", "Backups by the state of their latest verification.", MetricType::Gauge);
    for (_, state, n) in events.iter().filter(|(f, _, _)| f == "verifications") {
        m.sample("d1_backup_verifications", &[("state", state)], *n as f64);
    }
    m.family("d1_backup_storage_objects", "Objects stored (not deleted), by kind.", MetricType::Gauge);
    for t in &storage {
        m.sample("d1_backup_storage_objects", &[("kind", &t.kind)], t.count as f64);
    }
    m.family("d1_backup_storage_bytes", "Bytes stored (not deleted), by kind.", MetricType::Gauge);
    for t in &storage {
        m.sample("d1_backup_storage_bytes", &[("kind", &t.kind)], t.bytes as f64);
    }
    if settings.offsite.is_some() {
        let offsite = platform::replicas::summary(&meta_db).await?;
        m.family("d1_backup_offsite_lag_seconds", "How long the oldest object not yet copied off-site has waited (0: all copied).", MetricType::Gauge);
        m.sample("d1_backup_offsite_lag_seconds", &[], offsite.lag_seconds(now()) as f64);
        m.family("d1_backup_offsite_copies", "Off-site copies by state.", MetricType::Gauge);
        for (state, n) in [("copied", offsite.copied), ("pending", offsite.pending), ("dead", offsite.dead)] {
            m.sample("d1_backup_offsite_copies", &[("state", state)], n as f64);
        }
        m.family("d1_backup_offsite_bytes", "Bytes copied off-site (not deleted there).", MetricType::Gauge);
        m.sample("d1_backup_offsite_bytes", &[], offsite.copied_bytes as f64);
    }
    let mut response = Response::ok(m.finish())?;
    response.headers_mut().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
    Ok(response)
}

pub(crate) fn openapi() -> Result<Response> {
    let mut response = Response::ok(include_str!("openapi.json"))?;
    response.headers_mut().set("Content-Type", "application/json")?;
    Ok(response)
}

pub(crate) fn dashboard() -> Result<Response> {
    let mut response = Response::from_html(include_str!("dashboard.html"))?;
    let headers = response.headers_mut();
    headers.set("Cache-Control", "no-store")?;
    headers.set(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
    )?;
    headers.set("X-Frame-Options", "DENY")?;
    headers.set("Referrer-Policy", "no-referrer")?;
    Ok(response)
}

/// `GET /status`: where things stand: the last job, what runs next, what is stored.
pub(crate) async fn status(env: &Env, settings: &Settings) -> Result<Response> {
    let meta_db = env.d1(bindings::META)?;
    let last_job = meta::last_job(&meta_db).await?;
    let storage = reports::storage_totals(&meta_db).await?;
    let verification = reports::latest_verifications(&meta_db).await?;
    let databases: Vec<String> = settings.databases.iter().map(|d| d.name.clone()).collect();
    let offsite = offsite_status(&meta_db, settings).await?;
    let status = match &last_job {
        None => "no backups yet",
        Some(job) => match job.status {
            shared::state::JobStatus::Completed => "ok",
            shared::state::JobStatus::Queued | shared::state::JobStatus::Running => "backing up",
            shared::state::JobStatus::Partial | shared::state::JobStatus::Failed => "last job had failures",
        },
    };
    // A newest backup that does not restore to its source's data is as bad as a failed job.
    let status = if status == "ok" && verification.iter().any(|v| v.verify_state.as_deref() == Some("verify_failed")) {
        "a backup failed verification"
    } else {
        status
    };
    json(
        200,
        &serde_json::json!({
            "status": status,
            "lastJob": last_job,
            "nextRuns": next_runs(now()),
            "storage": storage,
            "databases": databases,
            "verification": verification,
            "offsite": offsite,
            "email": email_status(settings),
        }),
    )
}

/// Email alerts (`ALERT_EMAIL`): who sends and receives, and the digest. A malformed address
/// or a missing binding never gets here: it is the producer's `bad_configuration`.
fn email_status(settings: &Settings) -> serde_json::Value {
    match &settings.email {
        None => serde_json::json!({ "configured": false }),
        Some(email) => serde_json::json!({
            "configured": true,
            "from": email.from,
            "to": email.to,
            "digest": email.digest,
            "dashboard": email.dashboard,
        }),
    }
}

/// The off-site copies at a glance: where they go, how many are done, waiting or dead, the
/// replication lag (how long the oldest object not yet off-site has waited) and the newest error.
async fn offsite_status(meta_db: &D1Database, settings: &Settings) -> Result<serde_json::Value> {
    let Some(config) = &settings.offsite else {
        return Ok(serde_json::json!({ "configured": false }));
    };
    let summary = platform::replicas::summary(meta_db).await?;
    let retention = match config.retention {
        shared::offsite::OffsiteRetention::Mirror { grace_days } => format!("mirror, {grace_days} days after the local copy"),
        shared::offsite::OffsiteRetention::AppendOnly => "append-only".into(),
    };
    Ok(serde_json::json!({
        "configured": true,
        "endpoint": config.endpoint,
        "bucket": config.bucket,
        "prefix": config.prefix,
        "retention": retention,
        "lagSeconds": summary.lag_seconds(now()),
        "copied": summary.copied,
        "copiedBytes": summary.copied_bytes,
        "pending": summary.pending,
        "dead": summary.dead,
        "lastCopiedAt": summary.last_copied_at,
        "lastError": summary.last_error,
        "lastErrorKey": summary.last_error_key,
    }))
}

/// `GET /list`: the inventory, newest first (by creation time), a page at a time.
pub(crate) async fn list(req: &Request, env: &Env) -> Result<Response> {
    let pairs: Vec<(String, String)> = req.url()?.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let query = match parse_list_query(&pairs) {
        Ok(query) => query,
        Err(e) => return api_error(e),
    };
    json(200, &reports::list_inventory(&env.d1(bindings::META)?, &query).await?)
}

/// `GET /restore-guide/:db[?date=YYYY-MM-DD]`: restore steps for the newest backup of a
/// database (or its nightly backup of `date`).
pub(crate) async fn restore_guide(req: &Request, env: &Env, settings: &Settings, database: &str) -> Result<Response> {
    let url = req.url()?;
    let mut date = None;
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "date" if date.is_none() => match parse_date(&value) {
                Some(d) => date = Some(d.format("%Y-%m-%d").to_string()),
                None => return error(400, "invalid_date", "date must be YYYY-MM-DD"),
            },
            _ => return error(400, "invalid_query", format!("unknown or repeated parameter {name:?}; use date")),
        }
    }
    if !shared::config::is_valid_database_name(database) {
        return error(400, "invalid_database", format!("{database:?} is not a database name"));
    }
    let meta_db = env.d1(bindings::META)?;
    match reports::guide_backup(&meta_db, database, date.as_deref()).await? {
        Some(backup) => {
            let origin = url.origin().ascii_serialization();
            json(200, &shared::guide::restore_guide(&backup, &origin, BUCKET_NAME))
        }
        None => {
            let configured = settings.database(database).is_some();
            let what = match &date {
                Some(date) => format!("no nightly backup of {database} on {date}"),
                None if configured => format!("{database} has no backup yet"),
                None => format!("no database {database:?} has backups"),
            };
            error(404, "backup_not_found", what)
        }
    }
}

/// `GET /download/:date/:db`: that day's nightly backup, streamed from R2.
pub(crate) async fn download_daily(env: &Env, settings: &Settings, date: &str, database: &str) -> Result<Response> {
    let Some(date) = parse_date(date) else {
        return error(400, "invalid_date", "date must be YYYY-MM-DD");
    };
    if settings.database(database).is_none() {
        let names: Vec<&str> = settings.databases.iter().map(|d| d.name.as_str()).collect();
        return error(404, "unknown_database", format!("no database {database:?}; configured: {names:?}"));
    }
    match meta::daily_backup(&env.d1(bindings::META)?, database, date).await? {
        Some((key, sha256)) => stream_object(env, &key, &sha256).await,
        None => error(404, "backup_not_found", format!("no nightly backup of {database} on {date}")),
    }
}

/// `GET /download/weekly/:week`: that week's archive, streamed from R2.
pub(crate) async fn download_weekly(env: &Env, week: &str) -> Result<Response> {
    let Some(week) = IsoWeek::parse(week) else {
        return error(400, "invalid_week", "week must be an ISO week such as 2026-W47");
    };
    match archives::live_archive(&env.d1(bindings::META)?, week).await? {
        Some(sha256) => stream_object(env, &week.archive_key(), &sha256).await,
        None => error(404, "archive_not_found", format!("no weekly archive of {}", week.label())),
    }
}

/// `GET /download?key=<key>`: any backup (nightly or manual) or weekly archive by its key, as
/// `/list` shows it. Only keys the inventory holds are read: the key is checked for the
/// inventory's shapes first, then looked up; R2 is never asked for a key it does not know.
pub(crate) async fn download_by_key(req: &Request, env: &Env) -> Result<Response> {
    let pairs: Vec<(String, String)> = req.url()?.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let key = match parse_download_query(&pairs) {
        Ok(key) => key,
        Err(e) => return api_error(e),
    };
    let meta_db = env.d1(bindings::META)?;
    if let Some(week) = key.strip_prefix("weekly/").and_then(|k| k.strip_suffix(".tar.gz")).and_then(IsoWeek::parse) {
        return match archives::live_archive(&meta_db, week).await? {
            Some(sha256) => stream_object(env, &key, &sha256).await,
            None => error(404, "archive_not_found", format!("no weekly archive is stored at {key}")),
        };
    }
    stream_recorded_backup(env, &meta_db, &key).await
}

/// `GET /runs/:id/download`: the backup a run wrote (nightly or manual).
pub(crate) async fn download_run(env: &Env, run_id: &str) -> Result<Response> {
    if Uuid::parse_str(run_id).is_err() {
        return error(400, "invalid_run_id", "run id must be a UUID");
    }
    let meta_db = env.d1(bindings::META)?;
    let Some((state, key, _)) = platform::operations::run_backup(&meta_db, run_id).await? else {
        return error(404, "not_found", format!("no run {run_id}"));
    };
    if state != TaskState::Succeeded {
        return error(409, "no_backup", format!("run {run_id} is {state}: only a succeeded run has a backup to download"));
    }
    stream_recorded_backup(env, &meta_db, &key).await
}

/// Streams the backup the inventory records at `key`; 404 when it records none or the backup
/// was deleted (by retention), saying when and why.
async fn stream_recorded_backup(env: &Env, meta_db: &D1Database, key: &str) -> Result<Response> {
    match meta::recorded_backup(meta_db, key).await? {
        None => error(404, "backup_not_found", format!("no backup is recorded at {key}; GET /list shows the backups")),
        Some(meta::RecordedBackup { deleted_at: Some(at), delete_reason, .. }) => error(
            404,
            "backup_deleted",
            format!("{key} was deleted at {at} ({}); a weekly archive may still hold it", delete_reason.unwrap_or_default()),
        ),
        Some(backup) => stream_object(env, key, &backup.sha256).await,
    }
}

/// Streams an object (never buffered) with its type, a download name and its SHA-256.
pub(crate) async fn stream_object(env: &Env, key: &str, sha256: &str) -> Result<Response> {
    let Some(object) = env.bucket(bindings::BACKUPS)?.get(key).execute().await? else {
        // The inventory says it is there: that is a storage fault, not the caller's.
        console_error!("{key} is in the inventory but missing from R2");
        return error(502, "object_missing", format!("{key} is recorded but missing from storage"));
    };
    let size = object.size();
    let Some(body) = object.body() else {
        return error(502, "object_missing", format!("{key} has no body"));
    };
    let filename = key.replace('/', "_");
    let content_type = shared::keys::StoredFormat::of(key).content_type();
    let headers = Headers::new();
    headers.set("Content-Type", content_type)?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{filename}\""))?;
    headers.set("Content-Length", &size.to_string())?;
    headers.set("X-Backup-SHA256", sha256)?;
    Ok(ResponseBuilder::new().with_headers(headers).body(body.response_body()?))
}
