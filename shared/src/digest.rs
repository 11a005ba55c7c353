//! The daily or weekly digest sent by email (`"digest"` in `ALERT_EMAIL`): what was backed up
//! in the period, sizes and their trend, verification results, and anything stale. Built from
//! plain rows the producer reads at its nightly cron, recorded as an alert of kind `digest`
//! whose subject names the period, so a cron that fires twice records (and sends) it once.

use crate::alerts::{Alert, AlertKind};
use crate::email::{html_escape, human_bytes, BackupSummary, EmailContent, SENDER_NAME};
use crate::keys::IsoWeek;
use crate::restore::verify::VerifyState;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// How often the digest goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestSchedule {
    /// Every night, about the UTC day before.
    Daily,
    /// The first night of each ISO week, about the week before.
    Weekly,
}

/// The span a digest reports on: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestPeriod {
    pub schedule: DigestSchedule,
    /// `2026-11-22` (a day) or `2026-W47` (a week).
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

impl DigestPeriod {
    /// The last whole period before `at` (the cron's scheduled time): the UTC day before its
    /// day, or the ISO week before its week. Every cron of a day (or week) names the same one.
    pub fn before(schedule: DigestSchedule, at: DateTime<Utc>) -> DigestPeriod {
        let today = at.date_naive();
        match schedule {
            DigestSchedule::Daily => {
                let day = today - Duration::days(1);
                DigestPeriod { schedule, label: day.format("%Y-%m-%d").to_string(), start: midnight(day), end: midnight(today) }
            }
            DigestSchedule::Weekly => {
                let week = IsoWeek::of(today).previous();
                DigestPeriod {
                    schedule,
                    label: week.label(),
                    start: midnight(week.first_day()),
                    end: midnight(week.last_day() + Duration::days(1)),
                }
            }
        }
    }

    /// The digest alert's subject: one digest per period (the alerts' unique kind and subject).
    pub fn alert_subject(&self) -> String {
        let schedule = match self.schedule {
            DigestSchedule::Daily => "daily",
            DigestSchedule::Weekly => "weekly",
        };
        format!("{schedule} {}", self.label)
    }

    fn name(&self) -> &'static str {
        match self.schedule {
            DigestSchedule::Daily => "Daily",
            DigestSchedule::Weekly => "Weekly",
        }
    }
}

/// A backup stored during the period, with its verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodBackup {
    pub database: String,
    pub backup: BackupSummary,
    /// `None`: not decided yet (verification not started).
    pub verify: Option<VerifyState>,
}

/// What the producer reads for a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFacts {
    pub period: DigestPeriod,
    /// When the digest is made: staleness is judged at this time.
    pub now: DateTime<Utc>,
    pub stale_hours: u32,
    /// The configured databases.
    pub databases: Vec<String>,
    /// Backups created in the period, any order.
    pub backups: Vec<PeriodBackup>,
    /// Per database: runs that died in the period.
    pub dead_runs: Vec<(String, u32)>,
    /// Per database: the size of its newest backup from before the period (the trend's base).
    pub before: Vec<(String, u64)>,
    /// Per database: when its newest successful backup finished.
    pub last_success: Vec<(String, DateTime<Utc>)>,
}

/// The digest: stored as the `digest` alert's details and turned into an email when sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub period: DigestPeriod,
    pub generated_at: DateTime<Utc>,
    pub stale_hours: u32,
    pub databases: Vec<DigestDatabase>,
}

/// One database's line of the digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestDatabase {
    pub name: String,
    /// Backups stored in the period.
    pub backups: u32,
    /// The newest of them.
    pub newest: Option<BackupSummary>,
    /// The size of the newest backup before the period.
    pub previous_bytes: Option<u64>,
    pub verified: u32,
    pub verify_failed: u32,
    /// Skipped or not decided yet.
    pub unverified: u32,
    pub dead_runs: u32,
    pub last_success: Option<DateTime<Utc>>,
    /// No successful backup for longer than the stale threshold (or ever).
    pub stale: bool,
}

impl DigestDatabase {
    /// The newest size against the one before the period: `+12.5%`, `-3.0%`, `unchanged`,
    /// `new` (nothing before), or `—` (nothing in the period).
    pub fn trend(&self) -> String {
        match (&self.newest, self.previous_bytes) {
            (None, _) => "—".into(),
            (Some(_), None) => "new".into(),
            (Some(n), Some(p)) if n.bytes == p => "unchanged".into(),
            (Some(_), Some(0)) => "new".into(),
            (Some(n), Some(p)) => format!("{:+.1}%", (n.bytes as f64 - p as f64) * 100.0 / p as f64),
        }
    }

    fn verification(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [(self.verified, "verified"), (self.verify_failed, "FAILED"), (self.unverified, "not verified")] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join(", ")
        }
    }

    fn last_success_text(&self) -> String {
        match self.last_success {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            None => "never".into(),
        }
    }
}

/// Puts the facts together, one line per configured database (by name).
pub fn build_digest(facts: &DigestFacts) -> Digest {
    let limit = Duration::hours(i64::from(facts.stale_hours));
    let databases = facts
        .databases
        .iter()
        .map(|name| {
            let mut mine: Vec<&PeriodBackup> = facts.backups.iter().filter(|b| &b.database == name).collect();
            mine.sort_by_key(|b| (b.backup.created_at, b.backup.key.clone()));
            let count = |state: Option<VerifyState>| mine.iter().filter(|b| b.verify == state).count() as u32;
            let last_success = facts.last_success.iter().find(|(d, _)| d == name).map(|(_, t)| *t);
            DigestDatabase {
                name: name.clone(),
                backups: mine.len() as u32,
                newest: mine.last().map(|b| b.backup.clone()),
                previous_bytes: facts.before.iter().find(|(d, _)| d == name).map(|(_, bytes)| *bytes),
                verified: count(Some(VerifyState::Verified)),
                verify_failed: count(Some(VerifyState::VerifyFailed)),
                unverified: mine.len() as u32 - count(Some(VerifyState::Verified)) - count(Some(VerifyState::VerifyFailed)),
                dead_runs: facts.dead_runs.iter().filter(|(d, _)| d == name).map(|(_, n)| n).sum(),
                last_success,
                stale: last_success.is_none_or(|t| facts.now - t > limit),
            }
        })
        .collect();
    Digest { period: facts.period.clone(), generated_at: facts.now, stale_hours: facts.stale_hours, databases }
}

impl Digest {
    /// What needs looking into, counted: `["1 failed run", "2 stale"]`; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let sum = |f: fn(&DigestDatabase) -> u32| self.databases.iter().map(f).sum::<u32>();
        let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut problems = Vec::new();
        let dead = sum(|d| d.dead_runs);
        if dead > 0 {
            problems.push(plural(dead, "failed run", "failed runs"));
        }
        let failed = sum(|d| d.verify_failed);
        if failed > 0 {
            problems.push(plural(failed, "failed verification", "failed verifications"));
        }
        let stale = sum(|d| u32::from(d.stale));
        if stale > 0 {
            problems.push(plural(stale, "stale database", "stale databases"));
        }
        problems
    }

    /// One line: the alert's message.
    pub fn summary(&self) -> String {
        let backups: u32 = self.databases.iter().map(|d| d.backups).sum();
        let backed_up = self.databases.iter().filter(|d| d.backups > 0).count();
        let mut line = format!(
            "{} digest for {}: {backups} backup{}; {backed_up} of {} database{} backed up",
            self.period.name(),
            self.period.label,
            if backups == 1 { "" } else { "s" },
            self.databases.len(),
            if self.databases.len() == 1 { "" } else { "s" },
        );
        let problems = self.problems();
        if problems.is_empty() {
            line.push_str("; nothing needs attention.");
        } else {
            line.push_str(&format!("; {}.", problems.join(", ")));
        }
        line
    }

    /// The `digest` alert recording it (once per period).
    pub fn alert(&self) -> Alert {
        Alert {
            kind: AlertKind::Digest,
            database: None,
            job_id: None,
            message: self.summary(),
            details: serde_json::to_value(self).expect("a digest serializes"),
            subject: Some(self.period.alert_subject()),
        }
    }
}

/// The digest as an email: a line per database (backups, newest size and its trend, rows,
/// verification, failed runs, last success), then the stale ones named.
pub fn digest_email(digest: &Digest, dashboard: Option<&str>) -> EmailContent {
    let period = &digest.period;
    let span = format!(
        "{} to {} (UTC)",
        period.start.format("%Y-%m-%d %H:%M"),
        period.end.format("%Y-%m-%d %H:%M")
    );
    let problems = digest.problems();
    let verdict = if problems.is_empty() { "all good".to_owned() } else { problems.join(", ") };
    let subject = format!("[{SENDER_NAME}] {} digest {}: {verdict}", period.name(), period.label);
    let stale: Vec<&DigestDatabase> = digest.databases.iter().filter(|d| d.stale).collect();
    let stale_line = |d: &DigestDatabase| match d.last_success {
        Some(t) => format!(
            "{}: no successful backup since {} (more than {} hours)",
            d.name,
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            digest.stale_hours
        ),
        None => format!("{}: never backed up successfully", d.name),
    };

    let mut text = format!("{}\n{span}\n\n", digest.summary());
    for d in &digest.databases {
        let newest = match &d.newest {
            Some(n) => format!("newest {} ({} bytes, {} rows, trend {})", human_bytes(n.bytes), n.bytes, n.rows, d.trend()),
            None => "no backup in this period".into(),
        };
        text.push_str(&format!(
            "{}\n  backups: {}, {newest}\n  verification: {}\n  failed runs: {}\n  last success: {}\n",
            d.name,
            d.backups,
            d.verification(),
            d.dead_runs,
            d.last_success_text()
        ));
    }
    if stale.is_empty() {
        text.push_str("\nStale: none.\n");
    } else {
        text.push_str("\nStale:\n");
        for d in &stale {
            text.push_str(&format!("  {}\n", stale_line(d)));
        }
    }
    if let Some(link) = dashboard {
        text.push_str(&format!("\nDashboard: {link}\n"));
    }
    text.push_str(&format!("\n-- \nSent by {SENDER_NAME} (digest {})\n", period.alert_subject()));

    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; color: #1f2328;\">\n<h2>{title}</h2>\n<p>{summary}<br>{span}</p>\n\
         <table cellpadding=\"4\" border=\"1\" style=\"border-collapse: collapse;\">\n\
         <tr><th>Database</th><th>Backups</th><th>Newest size</th><th>Trend</th><th>Rows</th>\
         <th>Verification</th><th>Failed runs</th><th>Last success</th></tr>\n",
        title = html_escape(&format!("{} digest {}", period.name(), period.label)),
        summary = html_escape(&digest.summary()),
        span = html_escape(&span),
    );
    for d in &digest.databases {
        let (size, rows) = match &d.newest {
            Some(n) => (human_bytes(n.bytes), n.rows.to_string()),
            None => ("—".into(), "—".into()),
        };
        let style = if d.stale || d.dead_runs > 0 || d.verify_failed > 0 { " style=\"background: #fff1e5;\"" } else { "" };
        html.push_str(&format!(
            "<tr{style}><td>{}</td><td align=\"right\">{}</td><td align=\"right\">{}</td><td>{}</td><td align=\"right\">{}</td>\
             <td>{}</td><td align=\"right\">{}</td><td>{}</td></tr>\n",
            html_escape(&d.name),
            d.backups,
            html_escape(&size),
            html_escape(&d.trend()),
            html_escape(&rows),
            html_escape(&d.verification()),
            d.dead_runs,
            html_escape(&d.last_success_text()),
        ));
    }
    html.push_str("</table>\n");
    if stale.is_empty() {
        html.push_str("<p>Stale: none.</p>\n");
    } else {
        html.push_str("<h3>Stale</h3>\n<ul>\n");
        for d in &stale {
            html.push_str(&format!("<li>{}</li>\n", html_escape(&stale_line(d))));
        }
        html.push_str("</ul>\n");
    }
    if let Some(link) = dashboard {
        html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>\n", html_escape(link)));
    }
    html.push_str(&format!(
        "<p style=\"color: #656d76; font-size: small;\">Sent by {SENDER_NAME} (digest {})</p>\n</body></html>\n",
        html_escape(&period.alert_subject())
    ));
    EmailContent { subject, text, html }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn backup(database: &str, key: &str, bytes: u64, created: &str, verify: Option<VerifyState>) -> PeriodBackup {
        PeriodBackup {
            database: database.into(),
            backup: BackupSummary { key: key.into(), bytes, rows: bytes / 10, created_at: at(created) },
            verify,
        }
    }

    #[test]
    fn periods_are_the_day_or_iso_week_before_the_cron() {
        // Monday 2026-11-23, 03:00 UTC.
        let cron = at("2026-11-23T03:00:00Z");
        let day = DigestPeriod::before(DigestSchedule::Daily, cron);
        assert_eq!((day.label.as_str(), day.start, day.end), ("2026-11-22", at("2026-11-22T00:00:00Z"), at("2026-11-23T00:00:00Z")));
        assert_eq!(day.alert_subject(), "daily 2026-11-22");
        let week = DigestPeriod::before(DigestSchedule::Weekly, cron);
        assert_eq!((week.label.as_str(), week.start, week.end), ("2026-W47", at("2026-11-16T00:00:00Z"), at("2026-11-23T00:00:00Z")));
        // Any cron in the same week names the same week: a retried or late cron finds it recorded.
        assert_eq!(DigestPeriod::before(DigestSchedule::Weekly, at("2026-11-29T23:59:59Z")), week);
        assert_eq!(DigestPeriod::before(DigestSchedule::Daily, at("2026-11-23T23:59:00Z")), day);
        // Across a year boundary: 2027-01-04 is in 2027-W01; the week before is 2026-W53.
        assert_eq!(DigestPeriod::before(DigestSchedule::Weekly, at("2027-01-04T03:00:00Z")).label, "2026-W53");
    }

    fn facts() -> DigestFacts {
        DigestFacts {
            period: DigestPeriod::before(DigestSchedule::Weekly, at("2026-11-23T03:00:00Z")),
            now: at("2026-11-23T03:00:30Z"),
            stale_hours: 36,
            databases: vec!["chinook".into(), "demo".into(), "never".into(), "quiet".into()],
            backups: vec![
                backup("demo", "daily/2026-11-22/demo.sql.gz", 1100, "2026-11-22T03:00:05Z", Some(VerifyState::VerifyFailed)),
                backup("chinook", "daily/2026-11-21/chinook.sql", 2048, "2026-11-21T03:00:09Z", Some(VerifyState::Verified)),
                backup("demo", "daily/2026-11-21/demo.sql.gz", 1000, "2026-11-21T03:00:05Z", Some(VerifyState::Verified)),
                backup("chinook", "daily/2026-11-22/chinook.sql", 1024, "2026-11-22T03:00:09Z", Some(VerifyState::Skipped)),
            ],
            dead_runs: vec![("demo".into(), 2)],
            before: vec![("chinook".into(), 4096), ("demo".into(), 1100), ("quiet".into(), 10)],
            last_success: vec![
                ("chinook".into(), at("2026-11-22T03:00:10Z")),
                ("demo".into(), at("2026-11-22T03:00:06Z")),
                ("quiet".into(), at("2026-11-10T03:00:00Z")),
            ],
        }
    }

    #[test]
    fn the_digest_counts_backups_sizes_trends_verifications_and_staleness() {
        let digest = build_digest(&facts());
        let names: Vec<&str> = digest.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["chinook", "demo", "never", "quiet"]);
        let [chinook, demo, never, quiet] = &digest.databases[..] else { panic!() };
        assert_eq!((chinook.backups, chinook.newest.as_ref().unwrap().key.as_str()), (2, "daily/2026-11-22/chinook.sql"));
        assert_eq!((chinook.verified, chinook.verify_failed, chinook.unverified), (1, 0, 1));
        assert_eq!(chinook.trend(), "-75.0%");
        assert_eq!(demo.trend(), "unchanged");
        assert_eq!((demo.verify_failed, demo.dead_runs, demo.stale), (1, 2, false));
        assert_eq!((never.backups, never.stale, never.trend(), never.last_success), (0, true, "—".to_string(), None));
        assert!(quiet.stale && quiet.newest.is_none());
        assert_eq!(digest.problems(), ["2 failed runs", "1 failed verification", "2 stale databases"]);
        assert_eq!(
            digest.summary(),
            "Weekly digest for 2026-W47: 4 backups; 2 of 4 databases backed up; 2 failed runs, 1 failed verification, 2 stale databases."
        );
        let grew = DigestDatabase { previous_bytes: Some(1000), newest: demo.newest.clone(), ..demo.clone() };
        assert_eq!(grew.trend(), "+10.0%");
        assert_eq!(DigestDatabase { previous_bytes: None, ..grew }.trend(), "new");
    }

    #[test]
    fn the_digest_alert_is_once_per_period_and_its_email_reads_back_from_the_details() {
        let digest = build_digest(&facts());
        let alert = digest.alert();
        assert_eq!((alert.kind, alert.subject.as_deref()), (AlertKind::Digest, Some("weekly 2026-W47")));
        // Stored as JSON in the alerts table and read back when sent.
        let stored: Alert = serde_json::from_str(&serde_json::to_string(&alert).unwrap()).unwrap();
        let context = crate::email::AlertContext { dashboard_link: Some("https://b.example.com/dashboard".into()), ..Default::default() };
        let email = crate::email::email_for(&stored, &context, at("2026-11-23T03:01:00Z")).unwrap();
        assert_eq!(email.subject, "[d1-backup] Weekly digest 2026-W47: 2 failed runs, 1 failed verification, 2 stale databases");
        for expected in [
            "2026-11-16 00:00 to 2026-11-23 00:00 (UTC)",
            "chinook\n  backups: 2, newest 1.0 KiB (1024 bytes, 102 rows, trend -75.0%)\n  verification: 1 verified, 1 not verified\n  failed runs: 0\n",
            "demo\n  backups: 2, newest 1.1 KiB (1100 bytes, 110 rows, trend unchanged)\n  verification: 1 verified, 1 FAILED\n  failed runs: 2\n",
            "never\n  backups: 0, no backup in this period\n",
            "Stale:\n  never: never backed up successfully\n  quiet: no successful backup since 2026-11-10T03:00:00Z (more than 36 hours)\n",
            "Dashboard: https://b.example.com/dashboard",
        ] {
            assert!(email.text.contains(expected), "{expected:?} not in\n{}", email.text);
        }
        assert!(email.html.contains("<td>chinook</td>") && email.html.contains("<td>-75.0%</td>"), "{}", email.html);
        assert!(email.html.contains("<li>never: never backed up successfully</li>"));
        let all_good = build_digest(&DigestFacts {
            databases: vec!["chinook".into()],
            dead_runs: vec![],
            ..facts()
        });
        assert_eq!(digest_email(&all_good, None).subject, "[d1-backup] Weekly digest 2026-W47: all good");
        let unreadable = Alert { details: serde_json::json!({"period": 1}), ..stored };
        assert!(crate::email::email_for(&unreadable, &context, at("2026-11-23T03:01:00Z")).unwrap_err().contains("unreadable"));
    }
}
