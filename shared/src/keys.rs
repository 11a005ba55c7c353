//! The R2 key layout, built and parsed in one place.
//!
//! - `daily/YYYY-MM-DD/<db>.sql`: the nightly backup; the date is the cron run's scheduled
//!   time (UTC), so one scheduled night maps to exactly one key per database.
//! - `manual/YYYY-MM-DD/<job-id>/<db>.sql`: an on-demand backup; the job id keeps two manual
//!   backups on the same day apart and never overwrites the nightly one.
//! - Either ends in `.sql.gz` instead of `.sql` for a database configured with gzip, and has
//!   `.age` appended for a database whose dumps are encrypted (`.sql.age`, `.sql.gz.age`).
//! - `weekly/YYYY-Www.tar.gz`: the weekly archive of an ISO week's dailies.

use crate::config::is_valid_database_name;
use chrono::{Datelike, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Daily,
    Manual,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Daily => "daily",
            BackupKind::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<BackupKind> {
        match s {
            "daily" => Some(BackupKind::Daily),
            "manual" => Some(BackupKind::Manual),
            _ => None,
        }
    }
}

/// How a stored object's bytes are to be read, as its name's ending says: `.gz` compressed, and
/// `.age` (last) encrypted. One reading of names for keys, content types, restores and guides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredFormat {
    pub gzip: bool,
    pub encrypted: bool,
}

impl StoredFormat {
    /// The format a name (key, archive member path, file) ends with.
    pub fn of(name: &str) -> StoredFormat {
        let (plain, encrypted) = match name.strip_suffix(".age") {
            Some(plain) => (plain, true),
            None => (name, false),
        };
        StoredFormat { gzip: plain.ends_with(".gz"), encrypted }
    }

    /// A dump's ending in this format: `.sql`, `.sql.gz`, `.sql.age` or `.sql.gz.age`.
    pub fn dump_extension(self) -> &'static str {
        match (self.gzip, self.encrypted) {
            (false, false) => ".sql",
            (true, false) => ".sql.gz",
            (false, true) => ".sql.age",
            (true, true) => ".sql.gz.age",
        }
    }

    /// What an object of this format is served and stored as.
    pub fn content_type(self) -> &'static str {
        match (self.gzip, self.encrypted) {
            (_, true) => "application/octet-stream",
            (true, false) => "application/gzip",
            (false, false) => "application/sql; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKey {
    pub kind: BackupKind,
    pub date: NaiveDate,
    pub database: String,
    /// Present for manual backups only.
    pub job_id: Option<Uuid>,
    /// Stored gzip-compressed.
    pub gzip: bool,
    /// Stored encrypted in the age format (after compression).
    pub encrypted: bool,
}

impl BackupKey {
    pub fn daily(date: NaiveDate, database: &str) -> BackupKey {
        BackupKey { kind: BackupKind::Daily, date, database: database.to_owned(), job_id: None, gzip: false, encrypted: false }
    }

    pub fn manual(date: NaiveDate, job_id: Uuid, database: &str) -> BackupKey {
        BackupKey {
            kind: BackupKind::Manual,
            date,
            database: database.to_owned(),
            job_id: Some(job_id),
            gzip: false,
            encrypted: false,
        }
    }

    pub fn gzipped(self, gzip: bool) -> BackupKey {
        BackupKey { gzip, ..self }
    }

    pub fn encrypted(self, encrypted: bool) -> BackupKey {
        BackupKey { encrypted, ..self }
    }

    pub fn for_run(kind: BackupKind, date: NaiveDate, job_id: Uuid, database: &str) -> BackupKey {
        match kind {
            BackupKind::Daily => BackupKey::daily(date, database),
            BackupKind::Manual => BackupKey::manual(date, job_id, database),
        }
    }

    pub fn format(&self) -> StoredFormat {
        StoredFormat { gzip: self.gzip, encrypted: self.encrypted }
    }

    pub fn to_key(&self) -> String {
        let date = self.date.format("%Y-%m-%d");
        let extension = self.format().dump_extension();
        match (self.kind, self.job_id) {
            (BackupKind::Manual, Some(job)) => format!("manual/{date}/{job}/{}{extension}", self.database),
            _ => format!("daily/{date}/{}{extension}", self.database),
        }
    }

    /// Parses a key written by [`BackupKey::to_key`]; anything else is `None`.
    pub fn parse(key: &str) -> Option<BackupKey> {
        let parts: Vec<&str> = key.split('/').collect();
        let (kind, date, job_id, file) = match parts.as_slice() {
            ["daily", date, file] => (BackupKind::Daily, *date, None, *file),
            ["manual", date, job, file] => {
                (BackupKind::Manual, *date, Some(Uuid::parse_str(job).ok()?), *file)
            }
            _ => return None,
        };
        let date = parse_date(date)?;
        let StoredFormat { gzip, encrypted } = StoredFormat::of(file);
        let database = file.strip_suffix(StoredFormat { gzip, encrypted }.dump_extension())?;
        if !is_valid_database_name(database) {
            return None;
        }
        Some(BackupKey { kind, date, database: database.to_owned(), job_id, gzip, encrypted })
    }
}

/// An ISO 8601 week (Monday to Sunday), named `YYYY-Www`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IsoWeek {
    pub year: i32,
    pub week: u32,
}

impl IsoWeek {
    /// Strict `YYYY-Www`, and only weeks that exist (`2026-W53` does not).
    pub fn parse(s: &str) -> Option<IsoWeek> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 8
            && b[4] == b'-'
            && b[5] == b'W'
            && b.iter().enumerate().all(|(i, c)| i == 4 || i == 5 || c.is_ascii_digit());
        if !shape_ok {
            return None;
        }
        let week = IsoWeek { year: s[..4].parse().ok()?, week: s[6..].parse().ok()? };
        NaiveDate::from_isoywd_opt(week.year, week.week, Weekday::Mon)?;
        Some(week)
    }

    /// The week `date` falls in.
    pub fn of(date: NaiveDate) -> IsoWeek {
        let w = date.iso_week();
        IsoWeek { year: w.year(), week: w.week() }
    }

    /// Its Monday.
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_isoywd_opt(self.year, self.week, Weekday::Mon).expect("a parsed ISO week exists")
    }

    /// Its Sunday.
    pub fn last_day(self) -> NaiveDate {
        NaiveDate::from_isoywd_opt(self.year, self.week, Weekday::Sun).expect("a parsed ISO week exists")
    }

    pub fn previous(self) -> IsoWeek {
        IsoWeek::of(self.first_day() - chrono::Duration::days(1))
    }

    pub fn label(self) -> String {
        format!("{:04}-W{:02}", self.year, self.week)
    }

    /// The R2 key of this week's archive.
    pub fn archive_key(self) -> String {
        format!("weekly/{}.tar.gz", self.label())
    }
}

/// Strict `YYYY-MM-DD` (chrono alone would accept `2026-1-5`).
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_and_manual_keys_round_trip() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let daily = BackupKey::daily(date, "chinook");
        assert_eq!(daily.to_key(), "daily/2026-11-23/chinook.sql");
        assert_eq!(BackupKey::parse(&daily.to_key()), Some(daily.clone()));

        let job = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        let manual = BackupKey::manual(date, job, "demo");
        assert_eq!(
            manual.to_key(),
            "manual/2026-11-23/0f8fad5b-d9cb-469f-a165-70867728950e/demo.sql"
        );
        assert_eq!(BackupKey::parse(&manual.to_key()), Some(manual.clone()));

        let gzipped = manual.gzipped(true);
        assert_eq!(gzipped.to_key(), "manual/2026-11-23/0f8fad5b-d9cb-469f-a165-70867728950e/demo.sql.gz");
        assert_eq!(BackupKey::parse(&gzipped.to_key()), Some(gzipped.clone()));

        let sealed = gzipped.encrypted(true);
        assert_eq!(sealed.to_key(), "manual/2026-11-23/0f8fad5b-d9cb-469f-a165-70867728950e/demo.sql.gz.age");
        assert_eq!(BackupKey::parse(&sealed.to_key()), Some(sealed));
        let plain_sealed = daily.encrypted(true);
        assert_eq!(plain_sealed.to_key(), "daily/2026-11-23/chinook.sql.age");
        assert_eq!(BackupKey::parse(&plain_sealed.to_key()), Some(plain_sealed));
    }

    #[test]
    fn iso_weeks_parse_strictly_and_span_monday_to_sunday() {
        let week = IsoWeek::parse("2026-W48").unwrap();
        assert_eq!(week.first_day(), NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert_eq!(week.last_day(), NaiveDate::from_ymd_opt(2026, 11, 29).unwrap());
        assert_eq!(week.archive_key(), "weekly/2026-W48.tar.gz");
        assert_eq!(week.previous().label(), "2026-W47");
        // 2027-01-01 is a Friday: it belongs to the last week of 2026, which is W53.
        assert_eq!(IsoWeek::of(NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()).label(), "2026-W53");
        assert_eq!(IsoWeek::parse("2026-W01").unwrap().previous().label(), "2025-W52");
        for bad in ["2026-W54", "2025-W53", "2026-W00", "2026-W4", "2026W48", "2026-w48", "../W48", "2026-W48x"] {
            assert_eq!(IsoWeek::parse(bad), None, "{bad}");
        }
        assert!(IsoWeek::parse("2026-W53").is_some());
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        for key in [
            "daily/2026-11-23/../x.sql",
            "daily/2026-1-3/x.sql",
            "daily/2026-11-23/x.txt",
            "daily/2026-11-23/x.gz",
            "daily/2026-11-23/x.sql.gz.sql",
            "daily/2026-11-23/x.age",
            "daily/2026-11-23/x.sql.age.gz",
            "daily/2026-11-23/x.sql.age.age",
            "weekly/2026-W47.tar.gz",
            "manual/2026-11-23/not-a-uuid/x.sql",
            "daily/2026-02-30/x.sql",
        ] {
            assert_eq!(BackupKey::parse(key), None, "{key}");
        }
    }
}
