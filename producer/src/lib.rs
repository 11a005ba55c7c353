//! The producer Worker: fans out one queue message per database at cron time or on an
//! authenticated `POST /trigger`, and serves the HTTP API.

use chrono::{DateTime, Utc};
use platform::archives;
use platform::http::{authorize, error, json, Auth};
use platform::r2_store::R2Store;
use platform::reports;
use shared::cron::CronSchedule;
use shared::metrics::{MetricType, MetricsWriter};
use shared::listing::parse_list_query;
use platform::meta::{self, Idempotency, NewJob, Trigger};
use platform::{bindings, config, millis_to_utc, now};
use shared::keys::{parse_date, BackupKey, BackupKind, IsoWeek};
use shared::message::BackupMessage;
use shared::sha256::ResumableSha256;
use shared::trigger::{
    check_idempotency_key, fault_injection_allowed, plan_archive, plan_trigger, ApiError, TriggerPlan, MAX_BODY_BYTES,
};
use uuid::Uuid;
use worker::*;

/// The R2 bucket's name, for the restore guide's `wrangler r2` commands (see wrangler.toml).
const BUCKET_NAME: &str = "d1-backups";

/// Queues accept at most 100 messages per `sendBatch`.
const SEND_BATCH_MAX: usize = 100;

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match route(&mut req, &env).await {
        Ok(response) => Ok(response),
        Err(e) => {
            console_error!("{} {} failed: {e}", req.method(), req.path());
            error(500, "internal", "internal error; see the Worker's logs")
        }
    }
}

async fn route(req: &mut Request, env: &Env) -> Result<Response> {
    let path = req.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method();

    // Public endpoints.
    match (&method, segments.as_slice()) {
        (Method::Get, []) => return info(env),
        (Method::Get, ["health"]) => return json(200, &serde_json::json!({ "ok": true })),
        // The dashboard page is a static shell: it holds no data and no secret, and reads
        // everything through the API with the token the operator enters.
        (Method::Get, ["dashboard"]) => return dashboard(),
        _ => {}
    }

    let admin_token = env.secret("ADMIN_TOKEN").map(|s| s.to_string()).unwrap_or_default();
    let read_token = env.secret("READ_TOKEN").ok().map(|s| s.to_string());
    match authorize(req, &admin_token, read_token.as_deref()) {
        Auth::Admin => {}
        Auth::ReadOnly if method == Method::Get || method == Method::Head => {}
        Auth::ReadOnly => return error(403, "forbidden", "the read-only token cannot change anything; use the admin token"),
        Auth::Missing => return unauthorized("send Authorization: Bearer <token>"),
        Auth::Wrong => return unauthorized("this token is not valid here"),
    }

    match (method, segments.as_slice()) {
        (Method::Post, ["trigger"]) => trigger(req, env).await,
        (Method::Get, ["status"]) => status(env).await,
        (Method::Get, ["jobs", id]) => job(env, id).await,
        (Method::Get, ["list"]) => list(req, env).await,
        (Method::Get, ["openapi.json"]) => openapi(),
        (Method::Get, ["metrics"]) => metrics(env).await,
        (Method::Get, ["jobs"]) => recent_jobs(req, env).await,
        (Method::Get, ["dead-letters"]) => dead_letters(req, env).await,
        (Method::Get, ["restore-guide", database]) => restore_guide(req, env, database).await,
        (Method::Post, ["runs", id, "retry"]) => retry_run(env, id).await,
        (Method::Post, ["archive"]) => archive(req, env).await,
        (Method::Post, ["cleanup"]) => cleanup(env).await,
        (Method::Get, ["download", "weekly", week]) => download_weekly(env, week).await,
        (Method::Get, ["download", date, database]) => download_daily(env, date, database).await,
        (_, ["trigger"]) | (_, ["status"]) | (_, ["jobs", _]) | (_, ["archive"]) | (_, ["cleanup"])
        | (_, ["download", _, _]) | (_, ["list"]) | (_, ["restore-guide", _]) | (_, ["runs", _, "retry"])
        | (_, ["jobs"]) | (_, ["dead-letters"]) | (_, ["openapi.json"]) | (_, ["metrics"]) => {
            error(405, "method_not_allowed", "method not allowed on this path")
        }
        _ => error(404, "not_found", format!("no endpoint at {path}")),
    }
}

/// The Workers' cron schedules (see the three wrangler.toml files).
const SCHEDULES: [(&str, &str, &str); 2] = [
    ("producer", "0 3 * * *", "nightly backup of every configured database"),
    ("archiver", "0 4 * * SUN", "weekly archive of the last finished ISO week, then retention"),
];

fn info(env: &Env) -> Result<Response> {
    let databases = config::databases(env)?;
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
            "retention": config::retention_policy(env)?,
        }),
    )
}

/// When each Worker's cron fires next.
fn next_runs(after: DateTime<Utc>) -> Vec<serde_json::Value> {
    SCHEDULES
        .iter()
        .map(|(worker, cron, what)| {
            let next = CronSchedule::parse(cron).ok().and_then(|c| c.next_after(after)).map(meta::timestamp);
            serde_json::json!({ "worker": worker, "cron": cron, "what": what, "next": next })
        })
        .collect()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(env: &Env) -> Result<Response> {
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
    m.family("d1_backup_storage_objects", "Objects stored (not deleted), by kind.", MetricType::Gauge);
    for t in &storage {
        m.sample("d1_backup_storage_objects", &[("kind", &t.kind)], t.count as f64);
    }
    m.family("d1_backup_storage_bytes", "Bytes stored (not deleted), by kind.", MetricType::Gauge);
    for t in &storage {
        m.sample("d1_backup_storage_bytes", &[("kind", &t.kind)], t.bytes as f64);
    }
    let mut response = Response::ok(m.finish())?;
    response.headers_mut().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
    Ok(response)
}

fn openapi() -> Result<Response> {
    let mut response = Response::ok(include_str!("openapi.json"))?;
    response.headers_mut().set("Content-Type", "application/json")?;
    Ok(response)
}

fn unauthorized(message: &str) -> Result<Response> {
    let mut response = error(401, "unauthorized", message)?;
    response.headers_mut().set("WWW-Authenticate", "Bearer realm=\"d1-backup\"")?;
    Ok(response)
}

fn dashboard() -> Result<Response> {
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

fn api_error(e: ApiError) -> Result<Response> {
    error(e.status, e.code, e.message)
}

async fn trigger(req: &mut Request, env: &Env) -> Result<Response> {
    let declared = req.headers().get("Content-Length")?.and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return error(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes"));
    }
    let idempotency_key = req.headers().get("Idempotency-Key")?;
    if let Some(key) = &idempotency_key {
        if let Err(e) = check_idempotency_key(key) {
            return api_error(e);
        }
    }
    let body = req.bytes().await?;
    let configured = config::databases(env)?;
    let environment = env.var("ENVIRONMENT").ok().map(|v| v.to_string());
    let plan = match plan_trigger(&body, &configured, fault_injection_allowed(environment.as_deref())) {
        Ok(plan) => plan,
        Err(e) => return api_error(e),
    };
    let meta_db = env.d1(bindings::META)?;
    let request_sha256 = {
        let mut hash = ResumableSha256::new();
        hash.update(&body);
        hash.hex_digest()
    };
    let idempotency = idempotency_key.as_deref().map(|key| Idempotency { key, request_sha256: &request_sha256 });
    if let Some(idem) = &idempotency {
        if let Some(response) = replay(&meta_db, idem).await? {
            return Ok(response);
        }
    }
    match enqueue_job(env, BackupKind::Manual, Trigger::Http, now(), &plan, idempotency.as_ref()).await? {
        Some(job_id) => json(
            202,
            &serde_json::json!({ "jobId": job_id, "databases": plan.databases, "status": "queued" }),
        ),
        // Another request with the same key won the race: answer with its job.
        None => match &idempotency {
            Some(idem) => match replay(&meta_db, idem).await? {
                Some(response) => Ok(response),
                None => error(409, "idempotency_conflict", "a request with this Idempotency-Key is in progress; retry"),
            },
            None => Err(Error::RustError("job creation conflicted without an idempotency key".into())),
        },
    }
}

/// The answer to a request whose `Idempotency-Key` already has a job: that job (200), or 422
/// when the key came with a different body.
async fn replay(meta_db: &D1Database, idem: &Idempotency<'_>) -> Result<Option<Response>> {
    let Some((job_id, request_sha256)) = meta::find_idempotent_job(meta_db, idem.key, now()).await? else {
        return Ok(None);
    };
    if request_sha256 != idem.request_sha256 {
        return error(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used within 24 hours with a different request body",
        )
        .map(Some);
    }
    let Some(job) = meta::get_job(meta_db, &job_id).await? else {
        return Ok(None);
    };
    let databases: Vec<&str> = job.runs.iter().map(|r| r.database.as_str()).collect();
    let mut response = json(
        200,
        &serde_json::json!({ "jobId": job.job_id, "databases": databases, "status": job.status, "replayed": true }),
    )?;
    response.headers_mut().set("Idempotent-Replayed", "true")?;
    Ok(Some(response))
}

/// Records a job with one queued run per database, then sends one message per database.
/// Returns `None`, sending nothing, when the job exists already (the night's nightly job, or
/// the job of the same idempotency key).
async fn enqueue_job(
    env: &Env,
    kind: BackupKind,
    trigger: Trigger,
    requested_at: DateTime<Utc>,
    plan: &TriggerPlan,
    idempotency: Option<&Idempotency<'_>>,
) -> Result<Option<Uuid>> {
    let job_id = Uuid::new_v4();
    let meta_db = env.d1(bindings::META)?;
    let configured = config::databases(env)?;
    let keys: Vec<BackupKey> = plan
        .databases
        .iter()
        .map(|db| {
            let gzip = configured.iter().any(|c| &c.name == db && c.gzip);
            BackupKey::for_run(kind, requested_at.date_naive(), job_id, db).gzipped(gzip)
        })
        .collect();
    let reason = plan.reason.as_deref();
    let job = NewJob { id: job_id, kind, trigger, reason, requested_at, keys: &keys };
    if !meta::create_job(&meta_db, &job, idempotency, now()).await? {
        return Ok(None);
    }
    let queue = env.queue(bindings::BACKUP_QUEUE)?;
    let copies = if plan.deliver_twice { 2 } else { 1 };
    let messages: Vec<BackupMessage> = plan
        .databases
        .iter()
        .flat_map(|db| {
            let mut message = BackupMessage::new(job_id, db, kind, requested_at);
            message.fault = plan.faults.get(db).copied();
            std::iter::repeat_n(message, copies)
        })
        .collect();
    for chunk in messages.chunks(SEND_BATCH_MAX) {
        queue.send_batch(chunk.to_vec()).await?;
    }
    // Fault injection: sent as parsed JSON (serde would turn objects into JS Maps).
    for raw in &plan.raw_messages {
        let value = js_sys::JSON::parse(&raw.to_string())?;
        queue.send_raw(RawMessageBuilder::new(value).build_with_content_type(QueueContentType::Json)).await?;
    }
    Ok(Some(job_id))
}

/// `GET /status`: where things stand: the last job, what runs next, what is stored.
async fn status(env: &Env) -> Result<Response> {
    let meta_db = env.d1(bindings::META)?;
    let last_job = meta::last_job(&meta_db).await?;
    let storage = reports::storage_totals(&meta_db).await?;
    let databases: Vec<String> = config::databases(env)?.into_iter().map(|d| d.name).collect();
    let status = match &last_job {
        None => "no backups yet",
        Some(job) => match job.status {
            shared::state::JobStatus::Completed => "ok",
            shared::state::JobStatus::Queued | shared::state::JobStatus::Running => "backing up",
            shared::state::JobStatus::Partial | shared::state::JobStatus::Failed => "last job had failures",
        },
    };
    json(
        200,
        &serde_json::json!({
            "status": status,
            "lastJob": last_job,
            "nextRuns": next_runs(now()),
            "storage": storage,
            "databases": databases,
        }),
    )
}

async fn job(env: &Env, id: &str) -> Result<Response> {
    let Ok(id) = Uuid::parse_str(id) else {
        return error(400, "invalid_job_id", "job id must be a UUID");
    };
    let meta_db = env.d1(bindings::META)?;
    if let Some(job) = meta::get_job(&meta_db, &id).await? {
        return json(200, &job);
    }
    match archives::get_archive_job(&meta_db, &id).await? {
        Some(job) => json(200, &job.to_json()),
        None => error(404, "job_not_found", format!("no job {id}")),
    }
}

/// The `limit` query parameter (1 to `max`, `default` when absent); nothing else is accepted.
fn limit_param(req: &Request, default: u32, max: u32) -> std::result::Result<u32, ApiError> {
    let url = req.url().map_err(|_| ApiError::new(400, "invalid_query", "unreadable URL"))?;
    let mut limit = None;
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "limit" if limit.is_none() => {
                limit = Some(value.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                    ApiError::new(400, "invalid_limit", format!("limit must be 1 to {max}"))
                })?)
            }
            _ => return Err(ApiError::new(400, "invalid_query", format!("unknown or repeated parameter {name:?}; use limit"))),
        }
    }
    Ok(limit.unwrap_or(default))
}

/// `GET /jobs?limit=`: the newest backup jobs with their runs.
async fn recent_jobs(req: &Request, env: &Env) -> Result<Response> {
    let limit = match limit_param(req, 20, 100) {
        Ok(limit) => limit,
        Err(e) => return api_error(e),
    };
    let jobs = meta::recent_jobs(&env.d1(bindings::META)?, limit).await?;
    json(200, &serde_json::json!({ "jobs": jobs }))
}

/// `GET /dead-letters?limit=`: dead runs (retry them with `POST /runs/:id/retry`) and queue
/// messages no consumer could read.
async fn dead_letters(req: &Request, env: &Env) -> Result<Response> {
    let limit = match limit_param(req, 50, 500) {
        Ok(limit) => limit,
        Err(e) => return api_error(e),
    };
    let (runs, rejected) = meta::dead_letters(&env.d1(bindings::META)?, limit).await?;
    json(200, &serde_json::json!({ "deadRuns": runs, "rejectedMessages": rejected }))
}

/// `GET /list`: the inventory, newest first, a page at a time.
async fn list(req: &Request, env: &Env) -> Result<Response> {
    let pairs: Vec<(String, String)> = req.url()?.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let query = match parse_list_query(&pairs) {
        Ok(query) => query,
        Err(e) => return api_error(e),
    };
    json(200, &reports::list_inventory(&env.d1(bindings::META)?, &query).await?)
}

/// `GET /restore-guide/:db[?date=YYYY-MM-DD]`: restore steps for the newest backup of a
/// database (or its nightly backup of `date`).
async fn restore_guide(req: &Request, env: &Env, database: &str) -> Result<Response> {
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
            let configured = config::databases(env)?.iter().any(|d| d.name == database);
            let what = match &date {
                Some(date) => format!("no nightly backup of {database} on {date}"),
                None if configured => format!("{database} has no backup yet"),
                None => format!("no database {database:?} has backups"),
            };
            error(404, "backup_not_found", what)
        }
    }
}

/// `POST /runs/:id/retry`: exports a dead run again, from the start.
async fn retry_run(env: &Env, id: &str) -> Result<Response> {
    let Ok(run_id) = Uuid::parse_str(id) else {
        return error(400, "invalid_run_id", "run id must be a UUID");
    };
    let configured = config::databases(env)?;
    match meta::requeue_dead_run(&env.d1(bindings::META)?, &run_id, now()).await? {
        None => error(404, "run_not_found", format!("no run {run_id}")),
        Some(Err(state)) => error(409, "run_not_dead", format!("run {run_id} is {state}; only dead runs are retried")),
        Some(Ok(run)) => {
            if !configured.iter().any(|d| d.name == run.database) {
                console_error!("retrying run {run_id} of {}, which is no longer configured", run.database);
            }
            let message = BackupMessage::new(run.job_id, &run.database, run.kind, run.requested_at);
            env.queue(bindings::BACKUP_QUEUE)?.send(message).await?;
            json(202, &serde_json::json!({ "runId": run_id, "jobId": run.job_id, "database": run.database, "status": "queued" }))
        }
    }
}

/// `POST /archive {"week": "YYYY-Www"}`: queues the week's archive (or answers with the job
/// already building it).
async fn archive(req: &mut Request, env: &Env) -> Result<Response> {
    let declared = req.headers().get("Content-Length")?.and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return error(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes"));
    }
    let body = req.bytes().await?;
    let environment = env.var("ENVIRONMENT").ok().map(|v| v.to_string());
    let request = match plan_archive(&body, now().date_naive(), fault_injection_allowed(environment.as_deref())) {
        Ok(request) => request,
        Err(e) => return api_error(e),
    };
    let (job_id, created) = archives::enqueue_archive(env, request.week, Trigger::Http, request.fault).await?;
    json(
        202,
        &serde_json::json!({
            "jobId": job_id,
            "week": request.week.label(),
            "key": request.week.archive_key(),
            "status": "queued",
            // An unfinished job for the week existed: this is it.
            "joined": !created,
        }),
    )
}

/// `POST /cleanup`: applies retention now and reports every decision.
async fn cleanup(env: &Env) -> Result<Response> {
    let mut store = R2Store::new(env.bucket(bindings::BACKUPS)?);
    let report = archives::run_cleanup(&env.d1(bindings::META)?, &mut store, config::retention_policy(env)?, now()).await?;
    json(200, &report)
}

/// `GET /download/:date/:db`: that day's nightly backup, streamed from R2.
async fn download_daily(env: &Env, date: &str, database: &str) -> Result<Response> {
    let Some(date) = parse_date(date) else {
        return error(400, "invalid_date", "date must be YYYY-MM-DD");
    };
    let configured = config::databases(env)?;
    if !configured.iter().any(|d| d.name == database) {
        let names: Vec<&str> = configured.iter().map(|d| d.name.as_str()).collect();
        return error(404, "unknown_database", format!("no database {database:?}; configured: {names:?}"));
    }
    match meta::daily_backup(&env.d1(bindings::META)?, database, date).await? {
        Some((key, sha256)) => stream_object(env, &key, &sha256).await,
        None => error(404, "backup_not_found", format!("no nightly backup of {database} on {date}")),
    }
}

/// `GET /download/weekly/:week`: that week's archive, streamed from R2.
async fn download_weekly(env: &Env, week: &str) -> Result<Response> {
    let Some(week) = IsoWeek::parse(week) else {
        return error(400, "invalid_week", "week must be an ISO week such as 2026-W47");
    };
    match archives::live_archive(&env.d1(bindings::META)?, week).await? {
        Some(sha256) => stream_object(env, &week.archive_key(), &sha256).await,
        None => error(404, "archive_not_found", format!("no weekly archive of {}", week.label())),
    }
}

/// Streams an object (never buffered) with its type, a download name and its SHA-256.
async fn stream_object(env: &Env, key: &str, sha256: &str) -> Result<Response> {
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
    let content_type = if key.ends_with(".gz") { "application/gzip" } else { "application/sql; charset=utf-8" };
    let headers = Headers::new();
    headers.set("Content-Type", content_type)?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{filename}\""))?;
    headers.set("Content-Length", &size.to_string())?;
    headers.set("X-Backup-SHA256", sha256)?;
    Ok(ResponseBuilder::new().with_headers(headers).body(body.response_body()?))
}

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let requested_at = millis_to_utc(event.schedule() as i64);
    let result = async {
        let databases: Vec<String> = config::databases(&env)?.into_iter().map(|d| d.name).collect();
        let plan = TriggerPlan { databases, ..TriggerPlan::default() };
        enqueue_job(&env, BackupKind::Daily, Trigger::Cron, requested_at, &plan, None).await
    }
    .await;
    // The checks compare what is stored before tonight's job adds to it; alerting never
    // stops the backups, so its errors are logged only.
    let checks = async {
        let meta_db = env.d1(bindings::META)?;
        let databases: Vec<String> = config::databases(&env)?.into_iter().map(|d| d.name).collect();
        let raised = platform::alerts::run_cron_checks(&env, &meta_db, &databases, now()).await?;
        for alert in &raised {
            console_log!("alert {}: {}", alert.kind, alert.message);
        }
        platform::alerts::deliver_pending(&env, &meta_db, now()).await
    }
    .await;
    if let Err(e) = checks {
        console_error!("cron {} at {requested_at}: alert checks failed: {e}", event.cron());
    }
    match result {
        Ok(Some(job_id)) => console_log!("cron {} at {requested_at}: queued job {job_id}", event.cron()),
        // A second firing for the same night (retried cron, overlapping deploys): one job.
        Ok(None) => console_log!("cron {} at {requested_at}: this night's job exists already", event.cron()),
        Err(e) => console_error!("cron {} at {requested_at}: fan-out failed: {e}", event.cron()),
    }
}
