//! Backup jobs: `POST /trigger` (with idempotency), job views, dead letters and retries.

use chrono::{DateTime, Utc};
use platform::archives;
use platform::http::{error, json};
use platform::meta::{self, Idempotency, NewJob, Trigger};
use platform::{bindings, now};
use shared::config::Settings;
use shared::faults::{Fault, FaultStage};
use shared::keys::{BackupKey, BackupKind};
use shared::message::BackupMessage;
use shared::sha256::ResumableSha256;
use shared::trigger::{
    check_idempotency_key, fault_injection_allowed, plan_trigger, TriggerPlan,
};
use uuid::Uuid;
use worker::*;
use crate::{api_error, limit_param, read_body};

/// Queues accept at most 100 messages per `sendBatch`.
pub(crate) const SEND_BATCH_MAX: usize = 100;

/// `POST /trigger`: records a manual job and queues one message per database (202), or
/// answers with the job of an `Idempotency-Key` seen within 24 hours.
pub(crate) async fn trigger(req: &mut Request, env: &Env, settings: &Settings) -> Result<Response> {
    let idempotency_key = req.headers().get("Idempotency-Key")?;
    if let Some(key) = &idempotency_key {
        if let Err(e) = check_idempotency_key(key) {
            return api_error(e);
        }
    }
    let body = match read_body(req).await? {
        Ok(body) => body,
        Err(response) => return Ok(response),
    };
    let plan = match plan_trigger(&body, &settings.databases, fault_injection_allowed(settings.environment.as_deref())) {
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
    match enqueue_job(env, settings, BackupKind::Manual, Trigger::Http, now(), &plan, idempotency.as_ref()).await? {
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
pub(crate) async fn replay(meta_db: &D1Database, idem: &Idempotency<'_>) -> Result<Option<Response>> {
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

/// Records a job with one queued run per database, then sends one message per database (a
/// message whose send fails is sent by the sweeper).
/// Returns `None`, sending nothing, when the job exists already (the night's nightly job, or
/// the job of the same idempotency key).
pub(crate) async fn enqueue_job(
    env: &Env,
    settings: &Settings,
    kind: BackupKind,
    trigger: Trigger,
    requested_at: DateTime<Utc>,
    plan: &TriggerPlan,
    idempotency: Option<&Idempotency<'_>>,
) -> Result<Option<Uuid>> {
    let job_id = Uuid::new_v4();
    let meta_db = env.d1(bindings::META)?;
    let keys: Vec<BackupKey> = plan
        .databases
        .iter()
        .map(|db| {
            let config = settings.database(db);
            BackupKey::for_run(kind, requested_at.date_naive(), job_id, db)
                .gzipped(config.is_some_and(|c| c.gzip))
                .encrypted(config.is_some_and(|c| c.encrypted()))
        })
        .collect();
    let reason = plan.reason.as_deref();
    let job = NewJob { id: job_id, kind, trigger, reason, requested_at, keys: &keys };
    if !meta::create_job(&meta_db, &job, idempotency, now()).await? {
        return Ok(None);
    }
    // The job is recorded and its runs are due: a send lost here strands nothing, the sweeper
    // sends it. Fault injection can lose one on purpose.
    let queue = env.queue(bindings::BACKUP_QUEUE)?;
    let copies = plan.deliver_copies as usize;
    let messages: Vec<BackupMessage> = plan
        .databases
        .iter()
        .filter(|db| !Fault::fails(plan.faults.get(*db), FaultStage::EnqueueSend, 1))
        .flat_map(|db| {
            let mut message = BackupMessage::new(job_id, db, kind, requested_at);
            message.fault = plan.faults.get(db).copied();
            std::iter::repeat_n(message, copies)
        })
        .collect();
    for chunk in messages.chunks(SEND_BATCH_MAX) {
        if let Err(e) = queue.send_batch(chunk.to_vec()).await {
            console_error!("job {job_id}: sending {} messages failed ({e}); the sweeper will send them", chunk.len());
        }
    }
    // Fault injection: sent as parsed JSON (serde would turn objects into JS Maps).
    for raw in &plan.raw_messages {
        let value = js_sys::JSON::parse(&raw.to_string())?;
        queue.send_raw(RawMessageBuilder::new(value).build_with_content_type(QueueContentType::Json)).await?;
    }
    Ok(Some(job_id))
}

pub(crate) async fn job(env: &Env, id: &str) -> Result<Response> {
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

/// `GET /jobs?limit=`: the newest backup jobs with their runs.
pub(crate) async fn recent_jobs(req: &Request, env: &Env) -> Result<Response> {
    let limit = match limit_param(req, 20, 100) {
        Ok(limit) => limit,
        Err(e) => return api_error(e),
    };
    let jobs = meta::recent_jobs(&env.d1(bindings::META)?, limit).await?;
    json(200, &serde_json::json!({ "jobs": jobs }))
}

/// `GET /dead-letters?limit=`: dead runs (retry them with `POST /runs/:id/retry`) and queue
/// messages no consumer could read.
pub(crate) async fn dead_letters(req: &Request, env: &Env) -> Result<Response> {
    let limit = match limit_param(req, 50, 500) {
        Ok(limit) => limit,
        Err(e) => return api_error(e),
    };
    let (runs, rejected) = meta::dead_letters(&env.d1(bindings::META)?, limit).await?;
    json(200, &serde_json::json!({ "deadRuns": runs, "rejectedMessages": rejected }))
}

/// `POST /runs/:id/retry`: exports a dead run again, from the start.
pub(crate) async fn retry_run(env: &Env, settings: &Settings, id: &str) -> Result<Response> {
    let Ok(run_id) = Uuid::parse_str(id) else {
        return error(400, "invalid_run_id", "run id must be a UUID");
    };
    match meta::requeue_dead_run(&env.d1(bindings::META)?, &run_id, now()).await? {
        None => error(404, "run_not_found", format!("no run {run_id}")),
        Some(Err(state)) => error(409, "run_not_dead", format!("run {run_id} is {state}; only dead runs are retried")),
        Some(Ok(run)) => {
            if settings.database(&run.database).is_none() {
                console_error!("retrying run {run_id} of {}, which is no longer configured", run.database);
            }
            let message = BackupMessage::new(run.job_id, &run.database, run.kind, run.requested_at);
            // The run is due again: if this send is lost, the sweeper sends it.
            if let Err(e) = env.queue(bindings::BACKUP_QUEUE)?.send(message).await {
                console_error!("run {run_id}: sending its message failed ({e}); the sweeper will send it");
            }
            json(202, &serde_json::json!({ "runId": run_id, "jobId": run.job_id, "database": run.database, "status": "queued" }))
        }
    }
}
