//! The producer Worker: fans out one queue message per database at cron time or on an
//! authenticated `POST /trigger`, and serves the HTTP API.

use chrono::{DateTime, Utc};
use platform::http::{authorize, error, json, Auth};
use platform::meta::{self, Idempotency, NewJob, Trigger};
use platform::{bindings, config, millis_to_utc, now};
use shared::keys::{BackupKey, BackupKind};
use shared::message::BackupMessage;
use shared::sha256::ResumableSha256;
use shared::trigger::{
    check_idempotency_key, fault_injection_allowed, plan_trigger, ApiError, TriggerPlan, MAX_BODY_BYTES,
};
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
        enqueue_job(&env, BackupKind::Daily, Trigger::Cron, requested_at, &plan, None).await
    }
    .await;
    match result {
        Ok(Some(job_id)) => console_log!("cron {} at {requested_at}: queued job {job_id}", event.cron()),
        // A second firing for the same night (retried cron, overlapping deploys): one job.
        Ok(None) => console_log!("cron {} at {requested_at}: this night's job exists already", event.cron()),
        Err(e) => console_error!("cron {} at {requested_at}: fan-out failed: {e}", event.cron()),
    }
}
