//! Alerts: the checks run at every cron (stale backups, shrinking dumps, schema changes) and the
//! webhook payloads that carry alerts to Discord, Slack or any JSON endpoint. Pure functions;
//! the Workers record alerts in the metadata database and deliver them.

use crate::dump::SchemaObject;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an alert is about; stored in `alerts.kind` as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    RunDead,
    MessageRejected,
    JobFailed,
    JobSucceeded,
    BackupStale,
    BackupShrank,
    SchemaChanged,
    VerifyFailed,
    ArchiveMemberBad,
    ArchiveDead,
    ReplicaDead,
    /// The daily or weekly summary sent by email (see `crate::email::Digest`): recorded in
    /// the alerts table so that it is sent once per period and retried like any alert.
    Digest,
}

impl AlertKind {
    pub const ALL: [AlertKind; 12] = [
        AlertKind::RunDead,
        AlertKind::MessageRejected,
        AlertKind::JobFailed,
        AlertKind::JobSucceeded,
        AlertKind::BackupStale,
        AlertKind::BackupShrank,
        AlertKind::SchemaChanged,
        AlertKind::VerifyFailed,
        AlertKind::ArchiveMemberBad,
        AlertKind::ArchiveDead,
        AlertKind::ReplicaDead,
        AlertKind::Digest,
    ];

    /// The name stored in `alerts.kind` and shown in webhook bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RunDead => "run_dead",
            AlertKind::MessageRejected => "message_rejected",
            AlertKind::JobFailed => "job_failed",
            AlertKind::JobSucceeded => "job_succeeded",
            AlertKind::BackupStale => "backup_stale",
            AlertKind::BackupShrank => "backup_shrank",
            AlertKind::SchemaChanged => "schema_changed",
            AlertKind::VerifyFailed => "verify_failed",
            AlertKind::ArchiveMemberBad => "archive_member_bad",
            AlertKind::ArchiveDead => "archive_dead",
            AlertKind::ReplicaDead => "replica_dead",
            AlertKind::Digest => "digest",
        }
    }

    pub fn parse(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// What happened, as a heading.
    pub fn title(self) -> &'static str {
        match self {
            AlertKind::RunDead => "Backup failed for good",
            AlertKind::MessageRejected => "Unreadable queue message",
            AlertKind::JobFailed => "Backup job finished with failures",
            AlertKind::JobSucceeded => "Backup job succeeded",
            AlertKind::BackupStale => "No recent backup",
            AlertKind::BackupShrank => "Backup shrank",
            AlertKind::SchemaChanged => "Schema changed",
            AlertKind::VerifyFailed => "Backup verification failed",
            AlertKind::ArchiveMemberBad => "Daily left out of the weekly archive",
            AlertKind::ArchiveDead => "Weekly archive failed",
            AlertKind::ReplicaDead => "Off-site copy failed",
            AlertKind::Digest => "Backup digest",
        }
    }

    /// Good news (a success, a summary) rather than something to look into.
    pub fn is_bad_news(self) -> bool {
        !matches!(self, AlertKind::JobSucceeded | AlertKind::Digest)
    }

    /// Which channels carry alerts of this kind. Every alert goes to every channel, except the
    /// digest: it is an email (a summary too long for a chat message, asked for with the email
    /// configuration).
    pub fn goes_to(self, channel: Channel) -> bool {
        match (self, channel) {
            (AlertKind::Digest, Channel::Webhooks) => false,
            _ => true,
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where alerts are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The URLs in `WEBHOOK_URL`.
    Webhooks,
    /// The recipients of `ALERT_EMAIL`, through the `send_email` binding.
    Email,
}

/// The kinds that at least one of `channels` delivers: the alerts a Worker with those channels
/// picks up (one with none delivers nothing and leaves every alert for a Worker that can).
pub fn deliverable_kinds(channels: &[Channel]) -> Vec<AlertKind> {
    AlertKind::ALL.into_iter().filter(|k| channels.iter().any(|c| k.goes_to(*c))).collect()
}

/// An alert to record (and deliver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub kind: AlertKind,
    pub database: Option<String>,
    pub job_id: Option<String>,
    pub message: String,
    pub details: serde_json::Value,
    /// What the alert is about, so that a check repeated at every cron raises it once (for
    /// example the backup key a schema change was seen in).
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Discord,
    Slack,
    Json,
}

/// One configured webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
}

/// Parses `WEBHOOK_URL`: one or more URLs separated by whitespace. The format of each comes
/// from an explicit `discord+`, `slack+` or `json+` prefix, else from its host (discord.com and
/// discordapp.com are Discord, hooks.slack.com is Slack), else generic JSON.
pub fn parse_webhooks(value: &str) -> Result<Vec<Webhook>, String> {
    value
        .split_whitespace()
        .enumerate()
        .map(|(i, entry)| {
            let (format, url) = match entry.split_once('+') {
                Some(("discord", url)) => (Some(WebhookFormat::Discord), url),
                Some(("slack", url)) => (Some(WebhookFormat::Slack), url),
                Some(("json", url)) => (Some(WebhookFormat::Json), url),
                _ => (None, entry),
            };
            // The URL is a secret: errors name the webhook by position only.
            let host = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .and_then(|rest| rest.split(['/', '?', '#']).next())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("WEBHOOK_URL entry {} is not an http(s) URL", i + 1))?;
            let host = host.rsplit('@').next().unwrap_or(host).split(':').next().unwrap_or(host);
            let format = format.unwrap_or(match host {
                "discord.com" | "discordapp.com" | "ptb.discord.com" | "canary.discord.com" => WebhookFormat::Discord,
                "hooks.slack.com" => WebhookFormat::Slack,
                _ => WebhookFormat::Json,
            });
            Ok(Webhook { url: url.to_owned(), format })
        })
        .collect()
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The alert's heading: what happened, and to which database.
pub fn title(alert: &Alert) -> String {
    let what = alert.kind.title();
    match &alert.database {
        Some(db) => format!("{what}: {db}"),
        None => what.to_owned(),
    }
}

/// The body to POST to `format`'s webhook, within each service's limits (Discord: content
/// 2000, embed title 256, description 4096, field value 1024 characters).
pub fn webhook_body(alert: &Alert, format: WebhookFormat, source: &str, at: DateTime<Utc>) -> serde_json::Value {
    let title = title(alert);
    match format {
        WebhookFormat::Discord => {
            let mut fields = Vec::new();
            if let Some(db) = &alert.database {
                fields.push(serde_json::json!({ "name": "Database", "value": truncate(db, 1024), "inline": true }));
            }
            if let Some(job) = &alert.job_id {
                fields.push(serde_json::json!({ "name": "Job", "value": truncate(job, 1024), "inline": true }));
            }
            serde_json::json!({
                // Text from errors must never ping @everyone or anyone else.
                "allowed_mentions": { "parse": [] },
                "username": truncate(source, 80),
                "content": truncate(&format!("**{title}**"), 2000),
                "embeds": [{
                    "title": truncate(&title, 256),
                    "description": truncate(&alert.message, 4096),
                    "color": if alert.kind.is_bad_news() { 0xd93f0b } else { 0x2da44e },
                    "fields": fields,
                    "timestamp": at.to_rfc3339(),
                    "footer": { "text": truncate(&format!("{source} · {}", alert.kind), 2048) },
                }],
            })
        }
        WebhookFormat::Slack => {
            // Slack reads <...> as links and mentions: escape what the alert quotes.
            let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let title = escape(&title);
            let message = escape(&alert.message);
            let mut context = vec![format!("*{}*", alert.kind)];
            if let Some(job) = &alert.job_id {
                context.push(format!("job `{job}`"));
            }
            context.push(at.to_rfc3339());
            serde_json::json!({
                "text": truncate(&format!("{title}: {message}"), 3000),
                "blocks": [
                    { "type": "header", "text": { "type": "plain_text", "text": truncate(&title, 150) } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": truncate(&message, 3000) } },
                    { "type": "context", "elements": [{ "type": "mrkdwn", "text": truncate(&format!("{source} · {}", context.join(" · ")), 3000) }] },
                ],
            })
        }
        WebhookFormat::Json => serde_json::json!({
            "source": source,
            "kind": alert.kind,
            "title": title,
            "database": alert.database,
            "jobId": alert.job_id,
            "message": alert.message,
            "details": alert.details,
            "at": at.to_rfc3339(),
        }),
    }
}

/// Thresholds of the checks run at every cron (`ALERT_STALE_HOURS`, `ALERT_SHRINK_PERCENT`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertThresholds {
    pub stale_hours: u32,
    pub shrink_percent: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds { stale_hours: 36, shrink_percent: 20.0 }
    }
}

impl AlertThresholds {
    /// Reads the thresholds from vars (`None` when unset), refusing nonsense as the other
    /// readers of `config` do: a typo must not silently change what is watched.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<AlertThresholds, crate::config::ConfigError> {
        let default = AlertThresholds::default();
        // 0 is allowed: every database counts as stale at every cron (the test suite uses it).
        let stale_hours = match get("ALERT_STALE_HOURS") {
            None => default.stale_hours,
            Some(text) => match text.trim().parse::<u32>() {
                Ok(v) if v <= 8760 => v,
                _ => {
                    return Err(crate::config::ConfigError(format!(
                        "ALERT_STALE_HOURS must be a whole number of hours from 0 to 8760, not {text:?}"
                    )))
                }
            },
        };
        let shrink_percent = match get("ALERT_SHRINK_PERCENT") {
            None => default.shrink_percent,
            Some(text) => match text.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => v,
                _ => {
                    return Err(crate::config::ConfigError(format!(
                        "ALERT_SHRINK_PERCENT must be a number above 0 and at most 100, not {text:?}"
                    )))
                }
            },
        };
        Ok(AlertThresholds { stale_hours, shrink_percent })
    }
}

/// A configured database with no successful backup for longer than the threshold (or never,
/// once it has been configured that long). One alert per database per day at most.
pub fn stale_alerts(
    last_success: &[(String, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
    thresholds: AlertThresholds,
) -> Vec<Alert> {
    let limit = Duration::hours(i64::from(thresholds.stale_hours));
    last_success
        .iter()
        .filter(|(_, last)| last.is_none_or(|t| now - t > limit))
        .map(|(db, last)| {
            let message = match last {
                Some(t) => format!(
                    "{db} has no successful backup since {} ({} hours; the limit is {}).",
                    t.to_rfc3339(),
                    (now - *t).num_hours(),
                    thresholds.stale_hours
                ),
                None => format!("{db} has never been backed up successfully."),
            };
            Alert {
                kind: AlertKind::BackupStale,
                database: Some(db.clone()),
                job_id: None,
                message,
                details: serde_json::json!({ "lastSuccess": last.map(|t| t.to_rfc3339()), "staleHours": thresholds.stale_hours }),
                subject: Some(format!("{db}@{}", now.format("%Y-%m-%d"))),
            }
        })
        .collect()
}

/// The facts about one stored backup that the comparisons need.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFacts {
    pub key: String,
    pub bytes: u64,
    pub rows: u64,
    /// `None` when the backup predates schema recording.
    pub schema: Option<Vec<SchemaObject>>,
}

/// The newest backup of `database` against the one before it: shrank by more than the
/// threshold (bytes or rows), or a changed schema (objects named).
pub fn comparison_alerts(database: &str, previous: &BackupFacts, newest: &BackupFacts, thresholds: AlertThresholds) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let shrink = |before: u64, after: u64| {
        if before == 0 || after >= before {
            0.0
        } else {
            (before - after) as f64 * 100.0 / before as f64
        }
    };
    let (bytes_drop, rows_drop) = (shrink(previous.bytes, newest.bytes), shrink(previous.rows, newest.rows));
    if bytes_drop > thresholds.shrink_percent || rows_drop > thresholds.shrink_percent {
        alerts.push(Alert {
            kind: AlertKind::BackupShrank,
            database: Some(database.to_owned()),
            job_id: None,
            message: format!(
                "{database}'s newest backup is {bytes_drop:.1}% smaller ({} → {} bytes) with {rows_drop:.1}% fewer rows ({} → {}) than the one before (threshold {}%).",
                previous.bytes, newest.bytes, previous.rows, newest.rows, thresholds.shrink_percent
            ),
            details: serde_json::json!({
                "previousKey": previous.key, "key": newest.key,
                "previousBytes": previous.bytes, "bytes": newest.bytes,
                "previousRows": previous.rows, "rows": newest.rows,
            }),
            subject: Some(newest.key.clone()),
        });
    }
    if let (Some(before), Some(after)) = (&previous.schema, &newest.schema) {
        let diff = schema_diff(before, after);
        if !diff.is_empty() {
            let mut parts = Vec::new();
            for (label, names) in [("created", &diff.created), ("dropped", &diff.dropped), ("changed", &diff.changed)] {
                if !names.is_empty() {
                    parts.push(format!("{label} {}", names.join(", ")));
                }
            }
            alerts.push(Alert {
                kind: AlertKind::SchemaChanged,
                database: Some(database.to_owned()),
                job_id: None,
                message: format!("{database}'s schema changed since the previous backup: {}.", parts.join("; ")),
                details: serde_json::json!({ "previousKey": previous.key, "key": newest.key, "diff": diff }),
                subject: Some(newest.key.clone()),
            });
        }
    }
    alerts
}

/// Schema objects created, dropped and changed, each named `<type> <name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchemaDiff {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub changed: Vec<String>,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.dropped.is_empty() && self.changed.is_empty()
    }
}

/// Compares by (type, name); SQL is compared with whitespace runs collapsed, since SQLite
/// keeps a statement's text as written.
pub fn schema_diff(before: &[SchemaObject], after: &[SchemaObject]) -> SchemaDiff {
    let index = |objects: &[SchemaObject]| -> BTreeMap<(String, String), String> {
        objects
            .iter()
            .map(|o| ((o.kind.clone(), o.name.clone()), o.sql.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect()
    };
    let (before, after) = (index(before), index(after));
    let label = |(kind, name): &(String, String)| format!("{kind} {name}");
    SchemaDiff {
        created: after.keys().filter(|k| !before.contains_key(*k)).map(label).collect(),
        dropped: before.keys().filter(|k| !after.contains_key(*k)).map(label).collect(),
        changed: after
            .iter()
            .filter(|(k, sql)| before.get(*k).is_some_and(|old| old != *sql))
            .map(|(k, _)| label(k))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn object(kind: &str, name: &str, sql: &str) -> SchemaObject {
        SchemaObject { kind: kind.into(), name: name.into(), sql: sql.into() }
    }

    #[test]
    fn every_alert_goes_to_email_and_the_digest_only_there() {
        for kind in AlertKind::ALL {
            assert!(kind.goes_to(Channel::Email), "{kind}");
            assert_eq!(kind.goes_to(Channel::Webhooks), kind != AlertKind::Digest, "{kind}");
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
            // Stored and serialized under the same name.
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(AlertKind::parse("digest "), None);
        let webhooks_only = deliverable_kinds(&[Channel::Webhooks]);
        assert_eq!(webhooks_only.len(), AlertKind::ALL.len() - 1);
        assert!(!webhooks_only.contains(&AlertKind::Digest));
        assert_eq!(deliverable_kinds(&[Channel::Email]), AlertKind::ALL);
        assert_eq!(deliverable_kinds(&[Channel::Webhooks, Channel::Email]), AlertKind::ALL);
        assert!(deliverable_kinds(&[]).is_empty());
    }

    #[test]
    fn the_newest_alerts_table_allows_every_kind_and_no_other() {
        // The CHECK constraint of the latest rebuild of the alerts table, and the enum, agree.
        let migration = include_str!("../../migrations/0011_email_alerts.sql");
        let check = migration.split("kind IN (").nth(1).unwrap().split(')').next().unwrap();
        let allowed: Vec<&str> = check.split(',').map(|k| k.trim().trim_matches('\'')).collect();
        let kinds: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(allowed, kinds);
    }

    #[test]
    fn webhooks_parse_with_prefixes_and_hosts() {
        let hooks = parse_webhooks(
            "https://discord.com/api/webhooks/1/x  https://hooks.slack.com/services/T/B/x\n\
             slack+http://127.0.0.1:9/s json+http://h/j http://user@example.com:8080/hook",
        )
        .unwrap();
        let formats: Vec<WebhookFormat> = hooks.iter().map(|h| h.format).collect();
        use WebhookFormat::*;
        assert_eq!(formats, [Discord, Slack, Slack, Json, Json]);
        assert_eq!(hooks[2].url, "http://127.0.0.1:9/s");
        let err = parse_webhooks("https://ok/x ftp://secret-host/x").unwrap_err();
        assert_eq!(err, "WEBHOOK_URL entry 2 is not an http(s) URL");
    }

    #[test]
    fn discord_limits_are_respected_on_character_boundaries() {
        let alert = Alert {
            kind: AlertKind::RunDead,
            database: Some("é".repeat(2000)),
            job_id: None,
            message: "ü".repeat(5000),
            details: serde_json::Value::Null,
            subject: None,
        };
        let body = webhook_body(&alert, WebhookFormat::Discord, "d1-backup", at("2026-11-23T03:00:00Z"));
        let embed = &body["embeds"][0];
        assert_eq!(embed["description"].as_str().unwrap().chars().count(), 4096);
        assert!(embed["description"].as_str().unwrap().ends_with('…'));
        assert_eq!(embed["title"].as_str().unwrap().chars().count(), 256);
        assert_eq!(embed["fields"][0]["value"].as_str().unwrap().chars().count(), 1024);
        assert!(body["content"].as_str().unwrap().chars().count() <= 2000);
        let slack = webhook_body(&alert, WebhookFormat::Slack, "d1-backup", at("2026-11-23T03:00:00Z"));
        assert_eq!(slack["blocks"][1]["text"]["text"].as_str().unwrap().chars().count(), 3000);
        assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
        let html = Alert { message: "<@everyone> & <http://x|y>".into(), ..alert.clone() };
        let slack = webhook_body(&html, WebhookFormat::Slack, "d1-backup", at("2026-11-23T03:00:00Z"));
        assert_eq!(slack["blocks"][1]["text"]["text"], "&lt;@everyone&gt; &amp; &lt;http://x|y&gt;");
        let json = webhook_body(&alert, WebhookFormat::Json, "d1-backup", at("2026-11-23T03:00:00Z"));
        assert_eq!(json["kind"], "run_dead");
        assert_eq!(json["message"].as_str().unwrap().chars().count(), 5000);
    }

    #[test]
    fn stale_databases_are_named_once_a_day() {
        let now = at("2026-11-23T10:00:00Z");
        let alerts = stale_alerts(
            &[
                ("fresh".into(), Some(at("2026-11-23T03:00:00Z"))),
                ("old".into(), Some(at("2026-11-21T03:00:00Z"))),
                ("never".into(), None),
            ],
            now,
            AlertThresholds::default(),
        );
        let names: Vec<&str> = alerts.iter().map(|a| a.database.as_deref().unwrap()).collect();
        assert_eq!(names, ["old", "never"]);
        assert_eq!(alerts[0].subject.as_deref(), Some("old@2026-11-23"));
        assert!(alerts[0].message.contains("55 hours"));
    }

    #[test]
    fn shrinking_and_schema_changes_are_reported_with_names() {
        let before = BackupFacts {
            key: "daily/2026-11-22/a.sql".into(),
            bytes: 1000,
            rows: 100,
            schema: Some(vec![
                object("table", "t", "CREATE TABLE t(a)"),
                object("index", "i", "CREATE INDEX i ON t(a)"),
                object("view", "v", "CREATE VIEW v AS SELECT 1"),
            ]),
        };
        let mut after = BackupFacts {
            key: "daily/2026-11-23/a.sql".into(),
            bytes: 700,
            rows: 95,
            schema: Some(vec![
                object("table", "t", "CREATE TABLE t(a, b)"),
                object("index", "i", "CREATE  INDEX i\n ON t(a)"),
                object("trigger", "tr", "CREATE TRIGGER tr ..."),
            ]),
        };
        let alerts = comparison_alerts("a", &before, &after, AlertThresholds::default());
        assert_eq!(alerts.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(), ["backup_shrank", "schema_changed"]);
        assert_eq!(
            alerts[1].message,
            "a's schema changed since the previous backup: created trigger tr; dropped view v; changed table t."
        );
        assert_eq!(alerts[0].subject.as_deref(), Some("daily/2026-11-23/a.sql"));
        after.bytes = 900;
        after.schema = before.schema.clone();
        assert!(comparison_alerts("a", &before, &after, AlertThresholds::default()).is_empty());
    }

    #[test]
    fn thresholds_default_and_refuse_nonsense() {
        assert_eq!(AlertThresholds::from_vars(|_| None).unwrap(), AlertThresholds::default());
        let set = AlertThresholds::from_vars(|n| match n {
            "ALERT_STALE_HOURS" => Some("48".into()),
            "ALERT_SHRINK_PERCENT" => Some("12.5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set, AlertThresholds { stale_hours: 48, shrink_percent: 12.5 });
        assert_eq!(AlertThresholds::from_vars(|n| (n == "ALERT_STALE_HOURS").then(|| "0".into())).unwrap().stale_hours, 0);
        for (name, bad) in [("ALERT_STALE_HOURS", "36h"), ("ALERT_STALE_HOURS", "-1"), ("ALERT_SHRINK_PERCENT", "twenty"), ("ALERT_SHRINK_PERCENT", "150")] {
            let err = AlertThresholds::from_vars(|n| (n == name).then(|| bad.to_string())).unwrap_err();
            assert!(err.0.contains(name), "{err}");
        }
    }
}
