//! The daily or weekly digest (`"digest"` in `ALERT_EMAIL`): the facts read from the metadata
//! database at the nightly cron, put together by `shared::digest`, and recorded as a `digest`
//! alert once per period. Delivery is every alert's (see `crate::alerts::deliver_pending`).

use crate::alerts::{last_successes, record};
use crate::meta::{statement, text, timestamp};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::alerts::{Alert, AlertKind};
use shared::config::Settings;
use shared::digest::{build_digest, DigestFacts, DigestPeriod, PeriodBackup};
use shared::email::BackupSummary;
use shared::restore::verify::VerifyState;
use worker::{D1Database, Result};

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

/// Records the digest of the period before `cron_at` (the cron's scheduled time), unless it is
/// recorded already or no digest is configured. Returns the alert when newly recorded.
pub async fn record_digest(settings: &Settings, db: &D1Database, cron_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<Option<Alert>> {
    let Some(schedule) = settings.email.as_ref().and_then(|e| e.digest) else { return Ok(None) };
    let period = DigestPeriod::before(schedule, cron_at);
    // Recorded by an earlier firing (the same night's, or an earlier night of the same week):
    // nothing to read. A firing racing this one is stopped by the unique (kind, subject) index.
    #[derive(Deserialize)]
    struct Found {
        #[allow(dead_code)]
        id: u64,
    }
    let found: Option<Found> = statement(
        db,
        "SELECT id FROM alerts WHERE kind = ?1 AND subject = ?2",
        &[text(AlertKind::Digest.as_str()), text(&period.alert_subject())],
    )?
    .first(None)
    .await?;
    if found.is_some() {
        return Ok(None);
    }
    // Up to now: the digest says what was stored when it was made, even when made early (a
    // cron fired by hand for a night to come).
    let (start, end) = (timestamp(period.start), timestamp(period.end.min(now)));

    #[derive(Deserialize)]
    struct Stored {
        database: String,
        key: String,
        bytes: u64,
        rows: u64,
        created_at: String,
        verify_state: Option<VerifyState>,
    }
    let stored: Vec<Stored> = statement(
        db,
        "SELECT b.database, b.key, b.bytes, b.rows, b.created_at, r.verify_state FROM backups b \
         LEFT JOIN runs r ON r.id = b.run_id WHERE b.created_at >= ?1 AND b.created_at < ?2",
        &[text(&start), text(&end)],
    )?
    .all()
    .await?
    .results()?;
    let backups = stored
        .into_iter()
        .filter_map(|s| {
            let created_at = parse_time(&s.created_at)?;
            Some(PeriodBackup {
                database: s.database,
                backup: BackupSummary { key: s.key, bytes: s.bytes, rows: s.rows, created_at },
                verify: s.verify_state,
            })
        })
        .collect();

    #[derive(Deserialize)]
    struct Count {
        database: String,
        n: u32,
    }
    let dead_runs: Vec<Count> = statement(
        db,
        "SELECT database, count(*) AS n FROM runs WHERE state = 'dead' AND finished_at >= ?1 AND finished_at < ?2 \
         GROUP BY database",
        &[text(&start), text(&end)],
    )?
    .all()
    .await?
    .results()?;

    // SQLite gives the bare column of the row holding the max().
    #[derive(Deserialize)]
    struct Before {
        database: String,
        bytes: u64,
    }
    let before: Vec<Before> = statement(
        db,
        "SELECT database, bytes, max(created_at) AS created_at FROM backups WHERE created_at < ?1 GROUP BY database",
        &[text(&start)],
    )?
    .all()
    .await?
    .results()?;

    let digest = build_digest(&DigestFacts {
        period,
        now,
        stale_hours: settings.alerts.stale_hours,
        databases: settings.databases.iter().map(|d| d.name.clone()).collect(),
        backups,
        dead_runs: dead_runs.into_iter().map(|c| (c.database, c.n)).collect(),
        before: before.into_iter().map(|b| (b.database, b.bytes)).collect(),
        last_success: last_successes(db).await?,
    });
    let alert = digest.alert();
    Ok(record(db, &alert, now).await?.then_some(alert))
}
