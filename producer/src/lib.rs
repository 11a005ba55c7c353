//! The producer Worker: fans out one queue message per database at cron time or on an
//! authenticated `POST /trigger`, and serves the HTTP API. This file routes and authenticates;
//! the handlers live in `backups`, `weekly` and `reads`.

use platform::http::{authorize, error, json, Auth};
use platform::meta::Trigger;
use platform::{bindings, config, millis_to_utc, now};
use shared::config::Settings;
use shared::keys::BackupKind;
use shared::trigger::{ApiError, TriggerPlan, MAX_BODY_BYTES};
use worker::*;

mod backups;
mod reads;
mod restores;
mod weekly;

use backups::*;
use reads::*;
use restores::*;
use weekly::*;

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let settings = match config::settings(&env) {
        Ok(settings) => settings,
        Err(e) => {
            console_error!("{} {}: {e}", req.method(), req.path());
            return error(500, "bad_configuration", format!("the producer's configuration is invalid: {e}"));
        }
    };
    match route(&mut req, &env, &settings).await {
        Ok(response) => Ok(response),
        Err(e) => {
            console_error!("{} {} failed: {e}", req.method(), req.path());
            error(500, "internal", "internal error; see the Worker's logs")
        }
    }
}

async fn route(req: &mut Request, env: &Env, settings: &Settings) -> Result<Response> {
    let path = req.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method();

    // Public endpoints.
    match (&method, segments.as_slice()) {
        (Method::Get, []) => return info(settings),
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
        // Backups are the data itself: downloading one needs the admin token.
        Auth::ReadOnly if matches!(segments.as_slice(), ["download", ..] | ["runs", _, "download"]) => {
            return error(403, "forbidden", "downloading a backup needs the admin token; the read-only token reads status and metadata only")
        }
        Auth::ReadOnly if method == Method::Get || method == Method::Head => {}
        Auth::ReadOnly => return error(403, "forbidden", "the read-only token cannot change anything; use the admin token"),
        Auth::Missing => return unauthorized("send Authorization: Bearer <token>"),
        Auth::Wrong => return unauthorized("this token is not valid here"),
    }

    match (method, segments.as_slice()) {
        (Method::Post, ["trigger"]) => trigger(req, env, settings).await,
        (Method::Get, ["status"]) => status(env, settings).await,
        (Method::Get, ["jobs", id]) => job(env, id).await,
        (Method::Get, ["list"]) => list(req, env).await,
        (Method::Get, ["openapi.json"]) => openapi(),
        (Method::Get, ["metrics"]) => metrics(env, settings).await,
        (Method::Get, ["jobs"]) => recent_jobs(req, env).await,
        (Method::Get, ["dead-letters"]) => dead_letters(req, env).await,
        (Method::Get, ["restore-guide", database]) => restore_guide(req, env, settings, database).await,
        (Method::Post, ["runs", id, "retry"]) => retry_run(env, settings, id).await,
        (Method::Post, ["runs", id, "verify"]) => verify_run(env, settings, id).await,
        (Method::Post, ["restore"]) => restore(req, env, settings).await,
        (Method::Get, ["operations"]) => recent_operations(req, env).await,
        (Method::Get, ["operations", id]) => operation(env, id).await,
        (Method::Post, ["archive"]) => archive(req, env, settings).await,
        (Method::Post, ["cleanup"]) => cleanup(env, settings).await,
        (Method::Get, ["download"]) => download_by_key(req, env).await,
        (Method::Get, ["runs", id, "download"]) => download_run(env, id).await,
        (Method::Get, ["download", "weekly", week]) => download_weekly(env, week).await,
        (Method::Get, ["download", date, database]) => download_daily(env, settings, date, database).await,
        (_, ["trigger"]) | (_, ["status"]) | (_, ["jobs", _]) | (_, ["archive"]) | (_, ["cleanup"])
        | (_, ["download", _, _]) | (_, ["download"]) | (_, ["runs", _, "download"]) | (_, ["list"]) | (_, ["restore-guide", _]) | (_, ["runs", _, "retry"])
        | (_, ["jobs"]) | (_, ["dead-letters"]) | (_, ["openapi.json"]) | (_, ["metrics"])
        | (_, ["runs", _, "verify"]) | (_, ["restore"]) | (_, ["operations"]) | (_, ["operations", _]) => {
            error(405, "method_not_allowed", "method not allowed on this path")
        }
        _ => error(404, "not_found", format!("no endpoint at {path}")),
    }
}

pub(crate) fn unauthorized(message: &str) -> Result<Response> {
    let mut response = error(401, "unauthorized", message)?;
    response.headers_mut().set("WWW-Authenticate", "Bearer realm=\"d1-backup\"")?;
    Ok(response)
}

/// A request's body, or the 413 answer when its declared length is over the limit (the
/// validators check the bytes again, since a body need not declare its length).
pub(crate) async fn read_body(req: &mut Request) -> Result<std::result::Result<Vec<u8>, Response>> {
    let declared = req.headers().get("Content-Length")?.and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return error(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes")).map(Err);
    }
    Ok(Ok(req.bytes().await?))
}

pub(crate) fn api_error(e: ApiError) -> Result<Response> {
    error(e.status, e.code, e.message)
}

/// The `limit` query parameter (1 to `max`, `default` when absent); nothing else is accepted.
pub(crate) fn limit_param(req: &Request, default: u32, max: u32) -> std::result::Result<u32, ApiError> {
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

/// The sweeper's cron (see wrangler.toml): re-sends the message of every task that is overdue.
pub(crate) const SWEEP_CRON: &str = "*/10 * * * *";

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let requested_at = millis_to_utc(event.schedule() as i64);
    let settings = match config::settings(&env) {
        Ok(settings) => settings,
        Err(e) => return console_error!("cron {} at {requested_at}: {e}", event.cron()),
    };
    if event.cron() == SWEEP_CRON {
        return match platform::tasks::sweep(&env, &settings, now()).await {
            Ok(resent) if resent.is_empty() => console_log!("sweep at {requested_at}: nothing overdue"),
            Ok(resent) => {
                for (kind, id, step) in &resent {
                    console_log!("sweep at {requested_at}: re-sent {} {id} step {step}", kind.as_str());
                }
            }
            Err(e) => console_error!("sweep at {requested_at}: {e}"),
        };
    }
    let result = async {
        let databases: Vec<String> = settings.databases.iter().map(|d| d.name.clone()).collect();
        let plan = TriggerPlan { databases, ..TriggerPlan::default() };
        enqueue_job(&env, &settings, BackupKind::Daily, Trigger::Cron, requested_at, &plan, None).await
    }
    .await;
    // The checks compare what is stored before tonight's job adds to it; alerting never
    // stops the backups, so its errors are logged only.
    let checks = async {
        let meta_db = env.d1(bindings::META)?;
        let raised = platform::alerts::run_cron_checks(&settings, &meta_db, now()).await?;
        for alert in &raised {
            console_log!("alert {}: {}", alert.kind, alert.message);
        }
        // The digest of the period before this night, once per period (a second firing finds
        // it recorded); a failure to read it leaves the other alerts to be delivered.
        match platform::digest::record_digest(&settings, &meta_db, requested_at, now()).await {
            Ok(Some(digest)) => console_log!("digest recorded: {}", digest.message),
            Ok(None) => {}
            Err(e) => console_error!("cron {} at {requested_at}: the digest failed: {e}", event.cron()),
        }
        platform::alerts::deliver_pending(&env, &settings, &meta_db, now()).await
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
