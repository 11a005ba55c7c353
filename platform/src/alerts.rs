//! Alerts in the metadata database, and their delivery to the webhooks in `WEBHOOK_URL`.
//! Delivery never fails the work that raised the alert: a webhook that fails is retried (now,
//! and at later invocations up to `MAX_DELIVERY_ATTEMPTS`), and its failure is logged and
//! recorded without the URL, which is a secret.

use crate::meta::{changed_one, number, opt_text, statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::alerts::{parse_webhooks, webhook_body, Alert, Webhook};
use shared::config::Settings;
use worker::{console_error, console_log, D1Database, Env, Fetch, Headers, Method, Request, RequestInit, Result};

/// Deliveries of one alert before it is left unsent for good (it stays recorded).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;
/// Alerts delivered per invocation, oldest first.
const DELIVERIES_PER_INVOCATION: u32 = 20;
/// How long a delivering invocation holds an alert (three tries take under 40 s).
const CLAIM_SECONDS: i64 = 60;
/// The name webhooks show as the sender.
const SOURCE: &str = "d1-backup";

/// Records an alert; returns false when one of its kind and subject exists already.
pub async fn record(db: &D1Database, alert: &Alert, now: DateTime<Utc>) -> Result<bool> {
    let result = statement(
        db,
        "INSERT INTO alerts (kind, job_id, database, message, details, subject, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        &[
            text(&alert.kind),
            opt_text(alert.job_id.as_deref()),
            opt_text(alert.database.as_deref()),
            text(&alert.message),
            text(&alert.details.to_string()),
            opt_text(alert.subject.as_deref()),
            text(&timestamp(now)),
        ],
    )?
    .run()
    .await?;
    changed_one(&result)
}

/// Once every run of a backup job is final: a `job_failed` alert when some died, or a
/// `job_succeeded` one when `ALERT_ON_SUCCESS` is on. Raised once per job.
pub async fn record_job_outcome(settings: &Settings, db: &D1Database, job_id: &str, now: DateTime<Utc>) -> Result<()> {
    #[derive(Deserialize)]
    struct Row {
        total: u32,
        dead: u32,
        open: u32,
    }
    let row: Option<Row> = statement(
        db,
        "SELECT count(*) AS total, sum(state = 'dead') AS dead, sum(state NOT IN ('succeeded', 'dead')) AS open \
         FROM runs WHERE job_id = ?1",
        &[text(job_id)],
    )?
    .first(None)
    .await?;
    let Some(row) = row.filter(|r| r.total > 0 && r.open == 0) else { return Ok(()) };
    let on_success = settings.alert_on_success;
    let alert = if row.dead > 0 {
        Alert {
            kind: "job_failed".into(),
            database: None,
            job_id: Some(job_id.to_owned()),
            message: format!("Backup job {job_id} finished with {} of {} databases failed.", row.dead, row.total),
            details: serde_json::json!({ "dead": row.dead, "total": row.total }),
            subject: Some(job_id.to_owned()),
        }
    } else if on_success {
        Alert {
            kind: "job_succeeded".into(),
            database: None,
            job_id: Some(job_id.to_owned()),
            message: format!("Backup job {job_id} finished: all {} databases backed up.", row.total),
            details: serde_json::json!({ "total": row.total }),
            subject: Some(job_id.to_owned()),
        }
    } else {
        return Ok(());
    };
    record(db, &alert, now).await?;
    Ok(())
}

/// Sends unsent alerts to every configured webhook. Returns how many were delivered.
pub async fn deliver_pending(env: &Env, db: &D1Database, now: DateTime<Utc>) -> Result<u32> {
    let Some(configured) = env.secret("WEBHOOK_URL").ok().map(|s| s.to_string()).filter(|s| !s.trim().is_empty()) else {
        return Ok(0);
    };
    let webhooks = match parse_webhooks(&configured) {
        Ok(hooks) => hooks,
        Err(e) => {
            console_error!("alerts not delivered: {e}");
            return Ok(0);
        }
    };
    #[derive(Deserialize)]
    struct Row {
        id: u64,
        kind: String,
        job_id: Option<String>,
        database: Option<String>,
        message: String,
        details: Option<String>,
        subject: Option<String>,
        created_at: String,
    }
    let rows: Vec<Row> = statement(
        db,
        "SELECT id, kind, job_id, database, message, details, subject, created_at FROM alerts \
         WHERE sent_at IS NULL AND attempts < ?1 ORDER BY id LIMIT ?2",
        &[number(u64::from(MAX_DELIVERY_ATTEMPTS)), number(u64::from(DELIVERIES_PER_INVOCATION))],
    )?
    .all()
    .await?
    .results()?;
    let mut delivered = 0;
    for row in rows {
        let alert = Alert {
            kind: row.kind,
            database: row.database,
            job_id: row.job_id,
            message: row.message,
            details: row.details.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(serde_json::Value::Null),
            subject: row.subject,
        };
        // Claim it first: another invocation delivering at the same time skips it.
        let claimed = statement(
            db,
            "UPDATE alerts SET claimed_until = ?2 WHERE id = ?1 AND sent_at IS NULL \
               AND (claimed_until IS NULL OR claimed_until < ?3)",
            &[number(row.id), text(&timestamp(now + chrono::Duration::seconds(CLAIM_SECONDS))), text(&timestamp(now))],
        )?
        .run()
        .await?;
        if claimed.meta()?.and_then(|m| m.changes).unwrap_or(0) != 1 {
            continue;
        }
        let at = DateTime::parse_from_rfc3339(&row.created_at).map(|t| t.with_timezone(&Utc)).unwrap_or(now);
        let mut failures = Vec::new();
        for (i, hook) in webhooks.iter().enumerate() {
            if let Err(e) = post_with_retry(hook, &webhook_body(&alert, hook.format, SOURCE, at)).await {
                failures.push(format!("webhook {}: {e}", i + 1));
            }
        }
        if failures.is_empty() {
            statement(db, "UPDATE alerts SET sent_at = ?2, attempts = attempts + 1, last_error = NULL, claimed_until = NULL WHERE id = ?1",
                      &[number(row.id), text(&timestamp(now))])?
                .run()
                .await?;
            delivered += 1;
        } else {
            let error = failures.join("; ");
            console_error!("alert {} ({}) not delivered: {error}", row.id, alert.kind);
            statement(db, "UPDATE alerts SET attempts = attempts + 1, last_error = ?2, claimed_until = NULL WHERE id = ?1",
                      &[number(row.id), text(&error)])?
                .run()
                .await?;
        }
    }
    if delivered > 0 {
        console_log!("delivered {delivered} alert(s)");
    }
    Ok(delivered)
}

/// POSTs `body`, trying twice more on failure (after 0.5 s and 1 s).
async fn post_with_retry(hook: &Webhook, body: &serde_json::Value) -> std::result::Result<(), String> {
    let mut last = String::new();
    for (attempt, pause_ms) in [(1, 0u64), (2, 500), (3, 1000)] {
        if pause_ms > 0 {
            worker::Delay::from(std::time::Duration::from_millis(pause_ms)).await;
        }
        match post(hook, body).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("attempt {attempt}: {e}"),
        }
    }
    Err(last)
}

async fn post(hook: &Webhook, body: &serde_json::Value) -> std::result::Result<(), String> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json").map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.to_string().into()));
    let request = Request::new_with_init(&hook.url, &init).map_err(|_| "the URL is not valid".to_owned())?;
    match Fetch::Request(request).send().await {
        Ok(response) if (200..300).contains(&response.status_code()) => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status_code())),
        // The runtime's message may quote the URL: keep only the kind of failure.
        Err(_) => Err("request failed (network)".to_owned()),
    }
}

/// The checks run at every cron: databases without a recent successful backup, and each
/// database's newest backup against the one before it (shrinking, schema changes). Each alert
/// is raised once (see `Alert::subject`). Returns the alerts newly recorded.
pub async fn run_cron_checks(settings: &Settings, db: &D1Database, now: DateTime<Utc>) -> Result<Vec<Alert>> {
    use shared::alerts::{comparison_alerts, stale_alerts, BackupFacts};
    let thresholds = settings.alerts;
    let databases: Vec<String> = settings.databases.iter().map(|d| d.name.clone()).collect();
    let databases = databases.as_slice();
    #[derive(Deserialize)]
    struct Last {
        database: String,
        finished_at: Option<String>,
    }
    let rows: Vec<Last> = db
        .prepare(
            "SELECT database, max(finished_at) AS finished_at FROM runs WHERE state = 'succeeded' GROUP BY database",
        )
        .all()
        .await?
        .results()?;
    let last_success: Vec<(String, Option<DateTime<Utc>>)> = databases
        .iter()
        .map(|name| {
            let last = rows
                .iter()
                .find(|r| &r.database == name)
                .and_then(|r| r.finished_at.as_deref())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            (name.clone(), last)
        })
        .collect();
    let mut raised = Vec::new();
    let mut candidates = stale_alerts(&last_success, now, thresholds);
    #[derive(Deserialize)]
    struct Facts {
        key: String,
        bytes: u64,
        rows: u64,
        schema: Option<String>,
    }
    for name in databases {
        let newest: Vec<Facts> = statement(
            db,
            "SELECT key, bytes, rows, schema FROM backups WHERE database = ?1 \
             ORDER BY created_at DESC, key DESC LIMIT 2",
            &[text(name)],
        )?
        .all()
        .await?
        .results()?;
        if let [newest, previous] = newest.as_slice() {
            let facts = |f: &Facts| BackupFacts {
                key: f.key.clone(),
                bytes: f.bytes,
                rows: f.rows,
                schema: f.schema.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            };
            candidates.extend(comparison_alerts(name, &facts(previous), &facts(newest), thresholds));
        }
    }
    for alert in candidates {
        if record(db, &alert, now).await? {
            raised.push(alert);
        }
    }
    Ok(raised)
}
