//! Weekly archives and retention on demand: `POST /archive`, `POST /cleanup`.

use platform::archives;
use platform::http::json;
use platform::r2_store::R2Store;
use platform::meta::Trigger;
use platform::{bindings, now};
use shared::config::Settings;
use shared::trigger::{fault_injection_allowed, plan_archive};
use worker::*;
use crate::{api_error, read_body};

/// `POST /archive {"week": "YYYY-Www"}`: queues the week's archive (or answers with the job
/// already building it).
pub(crate) async fn archive(req: &mut Request, env: &Env, settings: &Settings) -> Result<Response> {
    let body = match read_body(req).await? {
        Ok(body) => body,
        Err(response) => return Ok(response),
    };
    let request = match plan_archive(&body, now().date_naive(), fault_injection_allowed(settings.environment.as_deref())) {
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
pub(crate) async fn cleanup(env: &Env, settings: &Settings) -> Result<Response> {
    let mut store = R2Store::new(env.bucket(bindings::BACKUPS)?);
    let report = archives::run_cleanup(&env.d1(bindings::META)?, &mut store, settings.retention, now()).await?;
    json(200, &report)
}
