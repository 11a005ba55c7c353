//! Alerts in the metadata database, and their delivery to the webhooks in `WEBHOOK_URL` and by
//! email to the recipients of `ALERT_EMAIL`. Delivery never fails the work that raised the
//! alert: a webhook or an email that fails is retried (now, and at later invocations up to
//! `MAX_DELIVERY_ATTEMPTS`), and its failure is logged and recorded (a webhook's without the
//! URL, which is a secret).

use crate::meta::{changed_one, number, opt_text, statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::alerts::{deliverable_kinds, parse_webhooks, webhook_body, Alert, AlertKind, Channel, Webhook};
use shared::config::Settings;
use shared::email::{
    email_for, message_id, mime_message, AlertContext, BackupSummary, EmailConfig, LastGoodBackup,
};
use worker::{
    console_error, console_log, D1Database, EmailMessage, Env, Fetch, Headers, Method, Request, RequestInit, Result, SendEmail,
};

/// Deliveries of one alert before it is left unsent for good (it stays recorded).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;
/// Alerts delivered per invocation, oldest first.
const DELIVERIES_PER_INVOCATION: u32 = 20;
/// How long a delivering invocation holds an alert (three tries per channel take seconds).
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
            text(alert.kind.as_str()),
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
            kind: AlertKind::JobFailed,
            database: None,
            job_id: Some(job_id.to_owned()),
            message: format!("Backup job {job_id} finished with {} of {} databases failed.", row.dead, row.total),
            details: serde_json::json!({ "dead": row.dead, "total": row.total }),
            subject: Some(job_id.to_owned()),
        }
    } else if on_success {
        Alert {
            kind: AlertKind::JobSucceeded,
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

/// The channels this Worker delivers through: the webhooks in `WEBHOOK_URL` and the email of
/// `ALERT_EMAIL` (its binding was checked with the settings).
struct Channels<'a> {
    webhooks: Vec<Webhook>,
    email: Option<(&'a EmailConfig, SendEmail)>,
}

impl Channels<'_> {
    fn list(&self) -> Vec<Channel> {
        let mut channels = Vec::new();
        if !self.webhooks.is_empty() {
            channels.push(Channel::Webhooks);
        }
        if self.email.is_some() {
            channels.push(Channel::Email);
        }
        channels
    }
}

fn channels<'a>(env: &Env, settings: &'a Settings) -> Channels<'a> {
    let webhooks = match env.secret("WEBHOOK_URL").ok().map(|s| s.to_string()).filter(|s| !s.trim().is_empty()) {
        None => Vec::new(),
        Some(configured) => parse_webhooks(&configured).unwrap_or_else(|e| {
            console_error!("alerts not delivered to webhooks: {e}");
            Vec::new()
        }),
    };
    let email = settings.email.as_ref().and_then(|config| match env.send_email(crate::bindings::SEND_EMAIL) {
        Ok(binding) => Some((config, binding)),
        Err(e) => {
            console_error!("alerts not delivered by email: {e}");
            None
        }
    });
    Channels { webhooks, email }
}

/// Sends unsent alerts through every configured channel: each webhook and each email
/// recipient. An alert is sent once every channel that carries its kind took it; otherwise the
/// failures are recorded together and the whole alert is tried again at a later invocation (up
/// to `MAX_DELIVERY_ATTEMPTS`). Returns how many were delivered.
pub async fn deliver_pending(env: &Env, settings: &Settings, db: &D1Database, now: DateTime<Utc>) -> Result<u32> {
    let channels = channels(env, settings);
    // Only the kinds this Worker can deliver: an alert no channel here carries (a digest
    // without email) must not hold up the others.
    let kinds: Vec<&str> = deliverable_kinds(&channels.list()).into_iter().map(AlertKind::as_str).collect();
    if kinds.is_empty() {
        return Ok(0);
    }
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
         WHERE sent_at IS NULL AND attempts < ?1 AND kind IN (SELECT value FROM json_each(?3)) ORDER BY id LIMIT ?2",
        &[
            number(u64::from(MAX_DELIVERY_ATTEMPTS)),
            number(u64::from(DELIVERIES_PER_INVOCATION)),
            text(&serde_json::to_string(&kinds).expect("names serialize")),
        ],
    )?
    .all()
    .await?
    .results()?;
    let mut delivered = 0;
    for row in rows {
        let Some(kind) = AlertKind::parse(&row.kind) else {
            console_error!("alert {} has an unknown kind {:?}; not delivered", row.id, row.kind);
            continue;
        };
        let alert = Alert {
            kind,
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
        if kind.goes_to(Channel::Webhooks) {
            for (i, hook) in channels.webhooks.iter().enumerate() {
                let body = webhook_body(&alert, hook.format, SOURCE, at);
                if let Err(e) = with_retry(|| post(hook, &body)).await {
                    failures.push(format!("webhook {}: {e}", i + 1));
                }
            }
        }
        if let (Some((config, binding)), true) = (&channels.email, kind.goes_to(Channel::Email)) {
            let sent = async {
                let context = email_context(db, settings, config, &alert).await.map_err(|e| format!("email: {e}"))?;
                let content = email_for(&alert, &context, at).map_err(|e| format!("email: {e}"))?;
                let raw = mime_message(&config.from, &config.to, &content, now, &message_id(row.id, at, &config.from));
                let mut failures = Vec::new();
                // The binding takes one envelope recipient per message: a copy each.
                for (i, to) in config.to.iter().enumerate() {
                    if let Err(e) = with_retry(|| send_email(binding, &config.from, to, &raw)).await {
                        failures.push(format!("email to recipient {}: {e}", i + 1));
                    }
                }
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(failures.join("; "))
                }
            }
            .await;
            if let Err(e) = sent {
                failures.push(e);
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

/// Runs `attempt`, trying twice more on failure (after 0.5 s and 1 s): one webhook's POST or
/// one email's send.
async fn with_retry<F, Fut>(mut attempt: F) -> std::result::Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let mut last = String::new();
    for (n, pause_ms) in [(1, 0u64), (2, 500), (3, 1000)] {
        if pause_ms > 0 {
            worker::Delay::from(std::time::Duration::from_millis(pause_ms)).await;
        }
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("attempt {n}: {e}"),
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

/// Hands one copy of `raw` to the `send_email` binding, for the envelope recipient `to`.
async fn send_email(binding: &SendEmail, from: &str, to: &str, raw: &str) -> std::result::Result<(), String> {
    let message = EmailMessage::new(from, to, raw).map_err(|e| String::from(e.message()))?;
    binding.send(&message).await.map(|_| ()).map_err(|e| String::from(e.message()))
}

/// What an alert's email says beyond the alert: the dashboard link, the off-site bucket of a
/// failed copy, and the last good backup (the newest not deleted and not failed verification)
/// of each database the alert is about: its own, or the dead runs' of a failed job.
async fn email_context(db: &D1Database, settings: &Settings, config: &EmailConfig, alert: &Alert) -> Result<AlertContext> {
    let bucket = match alert.kind {
        AlertKind::ReplicaDead => settings.offsite.as_ref().map(|o| o.bucket.clone()),
        _ => None,
    };
    let databases: Vec<String> = match (&alert.database, alert.kind, &alert.job_id) {
        (Some(database), _, _) => vec![database.clone()],
        (None, AlertKind::JobFailed, Some(job_id)) => {
            #[derive(Deserialize)]
            struct Dead {
                database: String,
            }
            statement(db, "SELECT database FROM runs WHERE job_id = ?1 AND state = 'dead' ORDER BY database", &[text(job_id)])?
                .all()
                .await?
                .results::<Dead>()?
                .into_iter()
                .map(|d| d.database)
                .collect()
        }
        _ => Vec::new(),
    };
    let mut last_good = Vec::new();
    for database in databases {
        #[derive(Deserialize)]
        struct Newest {
            key: String,
            bytes: u64,
            rows: u64,
            created_at: String,
        }
        let newest: Option<Newest> = statement(
            db,
            "SELECT b.key, b.bytes, b.rows, b.created_at FROM backups b LEFT JOIN runs r ON r.id = b.run_id \
             WHERE b.database = ?1 AND b.deleted_at IS NULL AND (r.verify_state IS NULL OR r.verify_state != 'verify_failed') \
             ORDER BY b.created_at DESC, b.key DESC LIMIT 1",
            &[text(&database)],
        )?
        .first(None)
        .await?;
        let backup = newest.and_then(|n| {
            let created_at = DateTime::parse_from_rfc3339(&n.created_at).ok()?.with_timezone(&Utc);
            Some(BackupSummary { key: n.key, bytes: n.bytes, rows: n.rows, created_at })
        });
        last_good.push(LastGoodBackup { database, backup });
    }
    Ok(AlertContext { dashboard_link: config.dashboard_link(alert.job_id.as_deref()), bucket, last_good })
}

/// When each database's newest successful run finished (databases never backed up are absent).
pub async fn last_successes(db: &D1Database) -> Result<Vec<(String, DateTime<Utc>)>> {
    #[derive(Deserialize)]
    struct Last {
        database: String,
        finished_at: Option<String>,
    }
    let rows: Vec<Last> = db
        .prepare("SELECT database, max(finished_at) AS finished_at FROM runs WHERE state = 'succeeded' GROUP BY database")
        .all()
        .await?
        .results()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let t = DateTime::parse_from_rfc3339(r.finished_at.as_deref()?).ok()?.with_timezone(&Utc);
            Some((r.database, t))
        })
        .collect())
}

/// The checks run at every cron: databases without a recent successful backup, and each
/// database's newest backup against the one before it (shrinking, schema changes). Each alert
/// is raised once (see `Alert::subject`). Returns the alerts newly recorded.
pub async fn run_cron_checks(settings: &Settings, db: &D1Database, now: DateTime<Utc>) -> Result<Vec<Alert>> {
    use shared::alerts::{comparison_alerts, stale_alerts, BackupFacts};
    let thresholds = settings.alerts;
    let databases: Vec<String> = settings.databases.iter().map(|d| d.name.clone()).collect();
    let databases = databases.as_slice();
    let successes = last_successes(db).await?;
    let last_success: Vec<(String, Option<DateTime<Utc>>)> = databases
        .iter()
        .map(|name| (name.clone(), successes.iter().find(|(d, _)| d == name).map(|(_, t)| *t)))
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
