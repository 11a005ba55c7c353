//! Verification on demand and restores: `POST /runs/:id/verify`, `POST /restore`,
//! `GET /operations` and `GET /operations/:id`. The consumer does the work (queue
//! `restore-jobs`); these handlers check the request, record the operation and queue it.

use crate::backups::enqueue_job;
use crate::{api_error, limit_param, read_body};
use platform::http::{error, json};
use platform::meta::Trigger;
use platform::operations::{self, NewOperation, ResolvedBackup};
use platform::{bindings, now};
use shared::config::Settings;
use shared::keys::BackupKind;
use shared::restore::operation::{DumpSource, OperationKind, OperationPlan};
use shared::restore::request::{parse_restore_request, RestoreFrom};
use shared::restore::verify::VerifyState;
use shared::task::TaskState;
use shared::trigger::TriggerPlan;
use uuid::Uuid;
use worker::*;

async fn start(env: &Env, meta_db: &D1Database, op: &NewOperation<'_>) -> Result<()> {
    operations::start_operation(env, meta_db, op, now()).await
}

fn plan(settings: &Settings, id: &str, kind: OperationKind, backup: &ResolvedBackup, table: Option<String>) -> Result<OperationPlan> {
    Ok(OperationPlan {
        id: id.to_owned(),
        kind,
        source: backup.source.clone(),
        table,
        expected: Vec::new(),
        expected_schema: backup.schema.clone(),
        expected_sequences: backup.sequences.clone(),
        rows_per_query: settings.export.rows_per_query,
        fault: None,
        // The consumer holds the key (if any) and sets it for each step.
        identity: None,
    })
}

/// `POST /runs/:id/verify`: verifies a stored backup again (202 with the operation).
pub(crate) async fn verify_run(env: &Env, settings: &Settings, run_id: &str) -> Result<Response> {
    if Uuid::parse_str(run_id).is_err() {
        return error(400, "invalid_run_id", "run id must be a UUID");
    }
    let meta_db = env.d1(bindings::META)?;
    let Some((state, key, _)) = operations::run_backup(&meta_db, run_id).await? else {
        return error(404, "not_found", format!("no run {run_id}"));
    };
    if state != TaskState::Succeeded {
        return error(409, "not_verifiable", format!("run {run_id} is {state}: only a succeeded run has a dump to verify"));
    }
    let backup = match operations::resolve_backup(&meta_db, &key, None, RestoreFrom::R2).await? {
        Ok(backup) => backup,
        Err(reason) => return error(409, "backup_unavailable", reason),
    };
    let id = Uuid::new_v4().to_string();
    let mut plan = plan(settings, &id, OperationKind::Verify, &backup, None)?;
    plan.expected = operations::recorded_tables(&meta_db, &key).await?;
    let op = NewOperation {
        plan: &plan,
        source_key: &key,
        database: &backup.database,
        run_id: Some(run_id),
        archive_key: backup.archive_key.as_deref(),
        target: None,
        pre_backup_job_id: None,
    };
    start(env, &meta_db, &op).await?;
    json(202, &serde_json::json!({ "operationId": id, "kind": "verify", "runId": run_id, "backup": key, "status": "queued" }))
}

/// `POST /restore`: a dry run (the default) reports what a restore would do; a real one is
/// recorded and queued (202), after a backup of the target if it holds anything.
pub(crate) async fn restore(req: &mut Request, env: &Env, settings: &Settings) -> Result<Response> {
    let body = match read_body(req).await? {
        Ok(body) => body,
        Err(response) => return Ok(response),
    };
    let configured = &settings.databases;
    let faults_allowed = shared::trigger::fault_injection_allowed(settings.environment.as_deref());
    let request = match parse_restore_request(&body, configured, faults_allowed) {
        Ok(request) => request,
        Err(e) => return api_error(e),
    };
    if request.from == RestoreFrom::Offsite && settings.offsite.is_none() {
        return error(409, "offsite_not_configured", "\"from\": \"offsite\" needs OFFSITE: no copy is kept off-site");
    }
    let meta_db = env.d1(bindings::META)?;
    let backup = match operations::resolve_backup(&meta_db, &request.backup, request.week.as_deref(), request.from).await? {
        Ok(backup) => backup,
        Err(reason) => return error(404, "backup_unavailable", reason),
    };
    let recorded = operations::recorded_tables(&meta_db, &backup.key).await?;
    if let Some(table) = &request.table {
        if !recorded.iter().any(|t| &t.name == table) {
            let names: Vec<&str> = recorded.iter().map(|t| t.name.as_str()).collect();
            return error(
                422,
                "unknown_table",
                format!("backup {} has no table {table:?}; its tables: {}", backup.key, names.join(", ")),
            );
        }
    }
    let binding = configured.iter().find(|d| d.name == request.target).map(|d| d.binding.clone()).unwrap_or_default();
    let target_db = env.d1(&binding)?;
    let contents = operations::database_contents(&target_db).await?;
    let needs_confirmation = !contents.is_empty();

    let rows: u64 = match &request.table {
        Some(table) => recorded.iter().filter(|t| &t.name == table).map(|t| t.rows).sum(),
        None => backup.rows,
    };
    let mut actions = Vec::new();
    if needs_confirmation {
        actions.push(format!(
            "back up {} first (it holds {} tables and {} other objects)",
            request.target,
            contents.tables.len(),
            contents.other_objects
        ));
        actions.push(match &request.table {
            Some(table) => format!("drop table {table:?} in {} (refused if other tables refer to it)", request.target),
            None => format!("drop everything in {}", request.target),
        });
    }
    if backup.archive_key.is_some() {
        actions.push(format!("copy {} out of {}", backup.key, backup.archive_key.as_deref().unwrap_or_default()));
    }
    actions.push(match &request.table {
        Some(table) => format!("restore table {table:?} ({rows} rows) with its indexes and triggers from {}", backup.key),
        None => format!("restore {} tables and {} rows from {}", backup.tables, backup.rows, backup.key),
    });
    let source = match (&backup.source, &backup.archive_key) {
        (DumpSource::Offsite(copy), _) => serde_json::json!({
            "from": "offsite",
            "bucket": settings.offsite.as_ref().map(|o| o.bucket.clone()),
            "key": copy.key,
        }),
        (_, Some(archive)) => serde_json::json!({ "from": "weekly_archive", "archive": archive }),
        (_, None) => serde_json::json!({ "from": "object", "key": backup.key }),
    };
    let failed_verification = backup.verify_state == Some(VerifyState::VerifyFailed);
    if failed_verification {
        actions.insert(0, "restore a backup whose verification FAILED (a real restore needs \"allowUnverified\": true)".into());
    }
    let report = serde_json::json!({
        "backup": {
            "key": backup.key, "database": backup.database, "kind": backup.kind, "date": backup.date,
            "bytes": backup.bytes, "tables": backup.tables, "rows": backup.rows, "source": source,
            "verification": { "state": backup.verify_state, "detail": backup.verify_detail },
        },
        "target": { "database": request.target, "empty": contents.is_empty(), "contents": contents },
        "table": request.table,
        "actions": actions,
        "requiresConfirmation": needs_confirmation,
    });

    if request.dry_run {
        let mut report = report;
        report["dryRun"] = true.into();
        report["toProceed"] = serde_json::json!({
            "dryRun": false,
            "confirm": if needs_confirmation { Some(&request.target) } else { None },
            "allowUnverified": failed_verification,
        });
        return json(200, &report);
    }
    if failed_verification && !request.allow_unverified {
        return error(
            409,
            "backup_failed_verification",
            format!(
                "{} failed its verification ({}): restoring it may not give back the data it was taken from; \
                 send \"allowUnverified\": true to restore it anyway",
                backup.key,
                backup.verify_detail.as_deref().unwrap_or("no detail recorded")
            ),
        );
    }
    if needs_confirmation && !request.confirmed() {
        return error(
            409,
            "confirmation_required",
            format!(
                "{} is not empty ({} tables): send \"confirm\": {:?} to replace its contents (it is backed up first)",
                request.target,
                contents.tables.len(),
                request.target
            ),
        );
    }

    let pre_backup_job_id = if needs_confirmation {
        let plan = TriggerPlan {
            databases: vec![request.target.clone()],
            reason: Some(format!("before restoring {} into {}", backup.key, request.target)),
            ..TriggerPlan::default()
        };
        enqueue_job(env, settings, BackupKind::Manual, Trigger::Http, now(), &plan, None).await?
    } else {
        None
    };
    let id = Uuid::new_v4().to_string();
    let mut plan = plan(settings, &id, OperationKind::Restore, &backup, request.table.clone())?;
    plan.fault = request.fault;
    let op = NewOperation {
        plan: &plan,
        source_key: &backup.key,
        database: &backup.database,
        run_id: backup.run_id.as_deref(),
        archive_key: backup.archive_key.as_deref(),
        target: Some(&request.target),
        pre_backup_job_id,
    };
    start(env, &meta_db, &op).await?;
    let mut report = report;
    report["dryRun"] = false.into();
    report["operationId"] = id.into();
    report["status"] = "queued".into();
    report["preBackupJobId"] = pre_backup_job_id.map(|j| j.to_string()).into();
    json(202, &report)
}

/// `GET /operations/:id`.
pub(crate) async fn operation(env: &Env, id: &str) -> Result<Response> {
    if Uuid::parse_str(id).is_err() {
        return error(400, "invalid_operation_id", "operation id must be a UUID");
    }
    let meta_db = env.d1(bindings::META)?;
    match operations::get_operation(&meta_db, id).await? {
        Some(op) => json(200, &op.to_json()),
        None => error(404, "not_found", format!("no operation {id}")),
    }
}

/// `GET /operations?limit=`: the newest verifications and restores.
pub(crate) async fn recent_operations(req: &Request, env: &Env) -> Result<Response> {
    let limit = match limit_param(req, 20, 100) {
        Ok(limit) => limit,
        Err(e) => return api_error(e),
    };
    let meta_db = env.d1(bindings::META)?;
    let ops = operations::recent_operations(&meta_db, limit).await?;
    let views: Vec<serde_json::Value> = ops.iter().map(|o| o.to_json()).collect();
    json(200, &serde_json::json!({ "operations": views }))
}
