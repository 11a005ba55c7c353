//! Retention: which stored backups to delete, decided from the inventory alone.
//!
//! Ages are whole days between an object's date and today (UTC): a daily dated D is kept while
//! `today - D <= daily_days`. These rules override every age limit, so cleanup never deletes the
//! last good copy of anything:
//! - the newest successful backup of each database is kept, whatever its age;
//! - so is the newest backup of each database whose verification passed (the newest backup
//!   may be one that failed it);
//! - a backup whose verification is still under way is kept until it has a verdict;
//! - a daily past its retention is deleted only when a verified weekly archive holds it, or
//!   when it is older than the weekly retention itself (an archive would be gone by then too).

use crate::restore::verify::VerifyState;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long each kind of backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    pub daily_days: u32,
    pub weekly_weeks: u32,
    pub manual_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { daily_days: 7, weekly_weeks: 12, manual_days: 30 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    Daily,
    Manual,
    Weekly,
}

/// A live (not yet deleted) object from the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub kind: StoredKind,
    /// The database it backs up (`None` for weekly archives, which hold many).
    pub database: Option<String>,
    /// A backup's date; for a weekly archive, the last day (Sunday) of its week.
    pub date: NaiveDate,
    pub created_at: DateTime<Utc>,
    /// For a daily: the verified weekly archive that holds it, if any.
    pub archived_in: Option<String>,
    /// A backup's verification (`None`: never verified, or a weekly archive).
    pub verify: Option<VerifyState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub key: String,
    pub delete: bool,
    pub reason: String,
}

/// One decision per object, in the order given.
pub fn plan_retention(objects: &[StoredObject], today: NaiveDate, policy: RetentionPolicy) -> Vec<Decision> {
    let newest = newest_per_database(objects.iter());
    let newest_verified = newest_per_database(objects.iter().filter(|o| o.verify == Some(VerifyState::Verified)));
    let weekly_days = i64::from(policy.weekly_weeks) * 7;
    objects
        .iter()
        .map(|object| {
            let age = (today - object.date).num_days();
            let keep = |reason: String| Decision { key: object.key.clone(), delete: false, reason };
            let delete = |reason: String| Decision { key: object.key.clone(), delete: true, reason };
            // Whether this object is the one `newest` holds for its database.
            let is_in = |newest: &BTreeMap<&str, &StoredObject>| {
                object.database.as_deref().and_then(|db| newest.get(db)).is_some_and(|n| n.key == object.key)
            };
            let database = object.database.as_deref().unwrap_or_default();
            if is_in(&newest) {
                return keep(format!("newest backup of {database}"));
            }
            if is_in(&newest_verified) {
                return keep(format!("newest backup of {database} whose verification passed"));
            }
            if matches!(object.verify, Some(VerifyState::Pending | VerifyState::Verifying)) {
                return keep("its verification is under way".into());
            }
            match object.kind {
                StoredKind::Daily if age <= i64::from(policy.daily_days) => {
                    keep(format!("within the daily retention ({} days)", policy.daily_days))
                }
                StoredKind::Daily => match &object.archived_in {
                    Some(archive) => delete(format!(
                        "older than {} days and held by the verified archive {archive}",
                        policy.daily_days
                    )),
                    None if age > weekly_days => delete(format!(
                        "older than the weekly retention ({} weeks) and in no archive",
                        policy.weekly_weeks
                    )),
                    None => keep(format!(
                        "older than {} days but in no verified weekly archive yet",
                        policy.daily_days
                    )),
                },
                StoredKind::Manual if age <= i64::from(policy.manual_days) => {
                    keep(format!("within the manual retention ({} days)", policy.manual_days))
                }
                StoredKind::Manual => delete(format!("older than the manual retention ({} days)", policy.manual_days)),
                StoredKind::Weekly if age <= weekly_days => {
                    keep(format!("within the weekly retention ({} weeks)", policy.weekly_weeks))
                }
                StoredKind::Weekly => delete(format!("older than the weekly retention ({} weeks)", policy.weekly_weeks)),
            }
        })
        .collect()
}

/// The newest of `objects` (by date, then creation) for each database; weekly archives aside.
fn newest_per_database<'a>(objects: impl Iterator<Item = &'a StoredObject>) -> BTreeMap<&'a str, &'a StoredObject> {
    let mut newest: BTreeMap<&str, &StoredObject> = BTreeMap::new();
    for object in objects.filter(|o| o.kind != StoredKind::Weekly) {
        if let Some(db) = object.database.as_deref() {
            let entry = newest.entry(db).or_insert(object);
            if (object.date, object.created_at, &object.key) > (entry.date, entry.created_at, &entry.key) {
                *entry = object;
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn object(key: &str, kind: StoredKind, db: Option<&str>, date: &str, archived_in: Option<&str>) -> StoredObject {
        StoredObject {
            key: key.into(),
            kind,
            database: db.map(Into::into),
            date: day(date),
            created_at: day(date).and_hms_opt(3, 0, 0).unwrap().and_utc(),
            archived_in: archived_in.map(Into::into),
            verify: None,
        }
    }

    fn deleted(decisions: &[Decision]) -> Vec<&str> {
        decisions.iter().filter(|d| d.delete).map(|d| d.key.as_str()).collect()
    }

    #[test]
    fn dailies_go_only_once_archived_or_past_the_weekly_retention() {
        let w = Some("weekly/2026-W45.tar.gz");
        let objects = [
            object("daily/2026-11-23/a.sql", StoredKind::Daily, Some("a"), "2026-11-23", None),
            object("daily/2026-11-16/a.sql", StoredKind::Daily, Some("a"), "2026-11-16", None),
            object("daily/2026-11-09/a.sql", StoredKind::Daily, Some("a"), "2026-11-09", w),
            object("daily/2026-11-10/a.sql", StoredKind::Daily, Some("a"), "2026-11-10", None),
            object("daily/2026-08-01/a.sql", StoredKind::Daily, Some("a"), "2026-08-01", None),
        ];
        let decisions = plan_retention(&objects, day("2026-11-23"), RetentionPolicy::default());
        assert_eq!(deleted(&decisions), ["daily/2026-11-09/a.sql", "daily/2026-08-01/a.sql"]);
        // Exactly 7 days old: still kept.
        assert!(!decisions[1].delete && decisions[1].reason.contains("daily retention"));
        assert!(decisions[3].reason.contains("no verified weekly archive"));
    }

    #[test]
    fn the_newest_backup_of_a_database_is_never_deleted() {
        let objects = [
            object("daily/2025-01-01/gone.sql", StoredKind::Daily, Some("gone"), "2025-01-01", None),
            object("daily/2024-12-31/gone.sql", StoredKind::Daily, Some("gone"), "2024-12-31", None),
            object("manual/2025-02-01/j/old.sql", StoredKind::Manual, Some("old"), "2025-02-01", None),
        ];
        let decisions = plan_retention(&objects, day("2026-11-23"), RetentionPolicy::default());
        assert_eq!(deleted(&decisions), ["daily/2024-12-31/gone.sql"]);
        assert_eq!(decisions[0].reason, "newest backup of gone");
        assert_eq!(decisions[2].reason, "newest backup of old");
    }

    #[test]
    fn manual_and_weekly_ages() {
        let objects = [
            object("daily/2026-11-23/a.sql", StoredKind::Daily, Some("a"), "2026-11-23", None),
            object("manual/2026-10-24/j/a.sql", StoredKind::Manual, Some("a"), "2026-10-24", None),
            object("manual/2026-10-23/j/a.sql", StoredKind::Manual, Some("a"), "2026-10-23", None),
            object("weekly/2026-W35.tar.gz", StoredKind::Weekly, None, "2026-08-30", None),
            object("weekly/2026-W36.tar.gz", StoredKind::Weekly, None, "2026-09-06", None),
        ];
        let decisions = plan_retention(&objects, day("2026-11-23"), RetentionPolicy::default());
        // 2026-11-23 - 84 days = 2026-08-31.
        assert_eq!(deleted(&decisions), ["manual/2026-10-23/j/a.sql", "weekly/2026-W35.tar.gz"]);
    }

    #[test]
    fn a_manual_backup_newer_than_the_daily_is_the_newest() {
        let objects = [
            object("daily/2026-10-01/a.sql", StoredKind::Daily, Some("a"), "2026-10-01", None),
            object("manual/2026-10-02/j/a.sql", StoredKind::Manual, Some("a"), "2026-10-02", None),
        ];
        let policy = RetentionPolicy { daily_days: 1, weekly_weeks: 1, manual_days: 1 };
        let decisions = plan_retention(&objects, day("2026-11-23"), policy);
        assert_eq!(deleted(&decisions), ["daily/2026-10-01/a.sql"]);
    }

    #[test]
    fn the_newest_verified_backup_is_kept_and_verdicts_are_awaited() {
        let verified = |mut o: StoredObject, state| {
            o.verify = Some(state);
            o
        };
        let objects = [
            // The newest failed its verification: the newest verified one stays too.
            verified(object("daily/2026-11-23/a.sql", StoredKind::Daily, Some("a"), "2026-11-23", None), VerifyState::VerifyFailed),
            verified(object("manual/2026-09-01/j/a.sql", StoredKind::Manual, Some("a"), "2026-09-01", None), VerifyState::Verified),
            verified(object("manual/2026-08-01/j/a.sql", StoredKind::Manual, Some("a"), "2026-08-01", None), VerifyState::Verified),
            // Past its age, but its verification has not finished: kept until it has.
            verified(object("manual/2026-08-02/j/b.sql", StoredKind::Manual, Some("b"), "2026-08-02", None), VerifyState::Verifying),
            verified(object("manual/2026-11-20/j/b.sql", StoredKind::Manual, Some("b"), "2026-11-20", None), VerifyState::Skipped),
        ];
        let decisions = plan_retention(&objects, day("2026-11-23"), RetentionPolicy::default());
        assert_eq!(deleted(&decisions), ["manual/2026-08-01/j/a.sql"]);
        assert_eq!(decisions[1].reason, "newest backup of a whose verification passed");
        assert_eq!(decisions[3].reason, "its verification is under way");
    }
}
