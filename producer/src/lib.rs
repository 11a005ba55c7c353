//! The producer Worker: fans out one queue message per database at cron time or on an
//! authenticated `POST /trigger`, and serves the HTTP API.

use chrono::{DateTime, Utc};
use platform::http::{authorize, error, json, Auth};
use platform::meta::{self, NewJob, Trigger};
use platform::{bindings, config, millis_to_utc, now};
use shared::keys::{BackupKey, BackupKind};
use shared::message::BackupMessage;
use shared::trigger::{fault_injection_allowed, plan_trigger, ApiError, TriggerPlan, MAX_BODY_BYTES};
use uuid::Uuid;
use worker::*;

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
        _ => {}
    }

    let admin_token = env.secret("ADMIN_TOKEN").map(|s| s.to_string()).unwrap_or_default();
    match authorize(req, &admin_token) {
        Auth::Admin => {}
        Auth::Missing => {
            return error(401, "unauthorized", "send Authorization: Bearer <token>");
        }
        Auth::Wrong => return error(403, "forbidden", "this token is not allowed here"),
    }

    match (method, segments.as_slice()) {
        (Method::Post, ["trigger"]) => trigger(req, env).await,
        (Method::Get, ["status"]) => status(env).await,
        (Method::Get, ["jobs", id]) => job(env, id).await,
        (_, ["trigger"]) | (_, ["status"]) | (_, ["jobs", _]) => {
            error(405, "method_not_allowed", "method not allowed on this path")
        }
        _ => error(404, "not_found", format!("no endpoint at {path}")),
    }
}

fn info(env: &Env) -> Result<Response> {
    let databases = config::databases(env)?;
    json(
        200,
        &serde_json::json!({
            "name": "d1-backup",
            "version": shared::TOOL_VERSION,
            "databases": databases.len(),
        }),
    )
}

fn api_error(e: ApiError) -> Result<Response> {
    error(e.status, e.code, e.message)
}

async fn trigger(req: &mut Request, env: &Env) -> Result<Response> {
    let declared = req.headers().get("Content-Length")?.and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return error(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes"));
    }
    let body = req.bytes().await?;
    let configured = config::databases(env)?;
    let environment = env.var("ENVIRONMENT").ok().map(|v| v.to_string());
    let plan = match plan_trigger(&body, &configured, fault_injection_allowed(environment.as_deref())) {
        Ok(plan) => plan,
        Err(e) => return api_error(e),
    };
    let job_id =
        enqueue_job(env, BackupKind::Manual, Trigger::Http, now(), &plan)
            .await?;
    json(
        202,
        &serde_json::json!({ "jobId": job_id, "databases": plan.databases, "status": "queued" }),
    )
}

/// Records a job with one queued run per database, then sends one message per database.
async fn enqueue_job(
    env: &Env,
    kind: BackupKind,
    trigger: Trigger,
    requested_at: DateTime<Utc>,
    plan: &TriggerPlan,
) -> Result<Uuid> {
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
    meta::create_job(&meta_db, &NewJob { id: job_id, kind, trigger, reason, requested_at, keys: &keys }, now())
        .await?;
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
    Ok(job_id)
}

async fn status(env: &Env) -> Result<Response> {
    let last_job = meta::last_job(&env.d1(bindings::META)?).await?;
    json(200, &serde_json::json!({ "lastJob": last_job }))
}

async fn job(env: &Env, id: &str) -> Result<Response> {
    let Ok(id) = Uuid::parse_str(id) else {
        return error(400, "invalid_job_id", "job id must be a UUID");
    };
    match meta::get_job(&env.d1(bindings::META)?, &id).await? {
        Some(job) => json(200, &job),
        None => error(404, "job_not_found", format!("no job {id}")),
    }
}

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let requested_at = millis_to_utc(event.schedule() as i64);
    let result = async {
        let databases: Vec<String> = config::databases(&env)?.into_iter().map(|d| d.name).collect();
        let plan = TriggerPlan { databases, ..TriggerPlan::default() };
        enqueue_job(&env, BackupKind::Daily, Trigger::Cron, requested_at, &plan).await
    }
    .await;
    match result {
        Ok(job_id) => console_log!("cron {} at {requested_at}: queued job {job_id}", event.cron()),
        Err(e) => console_error!("cron {} at {requested_at}: fan-out failed: {e}", event.cron()),
    }
}
