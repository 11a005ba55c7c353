//! Which databases are backed up: configuration, not code.
//!
//! Workers read the `DATABASES` var, an object from database name to its D1 binding name, or to
//! an object with the binding and options, such as
//! `{"chinook": "DB_CHINOOK", "demo": {"binding": "DB_DEMO", "gzip": true}}` (in wrangler.toml,
//! a `[vars.DATABASES]` table). `"recipients": ["age1…", …]` encrypts a database's dumps to
//! those age public keys (see `crate::age`). The producer uses the names to validate requests and fan out;
//! the consumer uses the binding to reach each database. Databases are ordered by name.
//!
//! The consumer's export budgets come from `EXPORT_*` vars (see [`ExportLimits`]).

use crate::age::{Identity, Recipient};
use crate::archive::ArchiveBudget;
use crate::retention::RetentionPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// Name used in R2 keys, the API and the metadata database.
    pub name: String,
    /// The D1 binding through which the consumer reads this database.
    pub binding: String,
    /// Store this database's dumps gzip-compressed (`.sql.gz`).
    pub gzip: bool,
    /// Verify each new dump by restoring it into the scratch database (on unless turned off).
    pub verify: bool,
    /// Encrypt this database's dumps to these age public keys (`.age`); none: not encrypted.
    /// Several allow a key rotation: any one of their secret keys reads the dump.
    pub recipients: Vec<Recipient>,
}

impl DatabaseConfig {
    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }
}

/// One value of the `DATABASES` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatabaseEntry {
    Binding(String),
    Options(DatabaseOptions),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseOptions {
    pub binding: String,
    #[serde(default)]
    pub gzip: bool,
    #[serde(default = "verify_by_default")]
    pub verify: bool,
    #[serde(default)]
    pub recipients: Vec<String>,
}

fn verify_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A database name is used verbatim inside R2 keys and URLs, so it is restricted to a
/// conservative alphabet: lowercase ASCII letters, digits, `-` and `_`, 1 to 64 characters,
/// starting with a letter or digit.
pub fn is_valid_database_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

fn is_valid_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Turns the `DATABASES` object into validated configs, ordered by name.
pub fn databases_from_map(map: BTreeMap<String, DatabaseEntry>) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let databases: Vec<DatabaseConfig> = map
        .into_iter()
        .map(|(name, entry)| match entry {
            DatabaseEntry::Binding(binding) => {
                Ok(DatabaseConfig { name, binding, gzip: false, verify: true, recipients: Vec::new() })
            }
            DatabaseEntry::Options(DatabaseOptions { binding, gzip, verify, recipients }) => {
                let recipients = recipients
                    .iter()
                    .map(|text| Recipient::parse(text.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError(format!("database {name:?}: {e}")))?;
                Ok(DatabaseConfig { name, binding, gzip, verify, recipients })
            }
        })
        .collect::<Result<_, ConfigError>>()?;
    validate_databases(&databases)?;
    Ok(databases)
}

/// Parses the `DATABASES` var from its JSON text.
pub fn parse_databases(json: &str) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let map: BTreeMap<String, DatabaseEntry> = serde_json::from_str(json).map_err(|e| {
        ConfigError(format!(
            "DATABASES must be an object of database name to a D1 binding name or {{binding, gzip, verify, recipients}}: {e}"
        ))
    })?;
    databases_from_map(map)
}

pub fn validate_databases(databases: &[DatabaseConfig]) -> Result<(), ConfigError> {
    if databases.is_empty() {
        return Err(ConfigError("DATABASES lists no database".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for db in databases {
        if !is_valid_database_name(&db.name) {
            return Err(ConfigError(format!(
                "database name {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                db.name
            )));
        }
        if !is_valid_binding_name(&db.binding) {
            return Err(ConfigError(format!(
                "binding {:?} of database {:?} is not a valid binding name",
                db.binding, db.name
            )));
        }
        if !seen.insert(db.name.as_str()) {
            return Err(ConfigError(format!("database {:?} is listed twice", db.name)));
        }
    }
    Ok(())
}

/// How much one consumer invocation may do for one export before continuing in a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// D1 queries per invocation, the consumer's own bookkeeping included (`EXPORT_MAX_QUERIES`;
    /// the Workers Paid plan allows 1,000 per invocation, the Free plan 50).
    pub max_queries: u32,
    /// Megabytes of SQL per invocation (`EXPORT_MAX_MB`).
    pub max_megabytes: u64,
    /// Seconds per invocation (`EXPORT_MAX_SECONDS`).
    pub max_seconds: u64,
    /// Most rows per query (`EXPORT_ROWS_PER_QUERY`).
    pub rows_per_query: u32,
}

impl ExportLimits {
    pub const DEFAULT: ExportLimits =
        ExportLimits { max_queries: 900, max_megabytes: 1024, max_seconds: 60, rows_per_query: 5000 };
    /// Queries the consumer keeps for itself in every invocation: reading the run, taking the
    /// lease and the database's lock, and the fenced batch that saves the checkpoint (fence,
    /// checkpoint, attempt, fence released), with one to spare.
    pub const BOOKKEEPING_QUERIES: u32 = 8;
    /// The smallest workable query budget: bookkeeping plus two reads of the source.
    pub const MIN_QUERIES: u32 = Self::BOOKKEEPING_QUERIES + 2;

    /// Reads the limits from vars (`None` when unset), refusing nonsense with a clear message.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<ExportLimits, ConfigError> {
        fn read<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
            get: &impl Fn(&str) -> Option<String>,
            name: &str,
            default: T,
            min: T,
            max: T,
        ) -> Result<T, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<T>() {
                    Ok(v) if v >= min && v <= max => Ok(v),
                    _ => Err(ConfigError(format!("{name} must be a whole number from {min} to {max}, not {text:?}"))),
                },
            }
        }
        let d = ExportLimits::DEFAULT;
        Ok(ExportLimits {
            max_queries: read(&get, "EXPORT_MAX_QUERIES", d.max_queries, Self::MIN_QUERIES, 100_000)?,
            max_megabytes: read(&get, "EXPORT_MAX_MB", d.max_megabytes, 1, 1_000_000)?,
            max_seconds: read(&get, "EXPORT_MAX_SECONDS", d.max_seconds, 1, 900)?,
            rows_per_query: read(&get, "EXPORT_ROWS_PER_QUERY", d.rows_per_query, 1, 10_000)?,
        })
    }

    /// The exporter's share of one invocation.
    pub fn step_budget(&self) -> crate::dump::StepBudget {
        crate::dump::StepBudget {
            max_queries: self.max_queries - Self::BOOKKEEPING_QUERIES,
            max_bytes: self.max_megabytes * 1024 * 1024,
            max_millis: self.max_seconds * 1000,
        }
    }
}

/// Backoff between delivery attempts of a failed message (`RETRY_BASE_SECONDS`,
/// `RETRY_MAX_SECONDS`): the delay doubles from the base with every attempt, up to the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_seconds: u32,
    pub max_seconds: u32,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy { base_seconds: 30, max_seconds: 900 };

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<RetryPolicy, ConfigError> {
        let read = |name: &str, default: u32| -> Result<u32, ConfigError> {
            match get(name) {
                None => Ok(default),
                // Queues delay a retry by at most 12 hours.
                Some(text) => match text.trim().parse::<u32>() {
                    Ok(v) if v <= 43_200 => Ok(v),
                    _ => Err(ConfigError(format!("{name} must be a whole number of seconds up to 43200, not {text:?}"))),
                },
            }
        };
        let policy = RetryPolicy {
            base_seconds: read("RETRY_BASE_SECONDS", Self::DEFAULT.base_seconds)?,
            max_seconds: read("RETRY_MAX_SECONDS", Self::DEFAULT.max_seconds)?,
        };
        if policy.base_seconds > policy.max_seconds {
            return Err(ConfigError("RETRY_BASE_SECONDS must not exceed RETRY_MAX_SECONDS".into()));
        }
        Ok(policy)
    }

    /// The delay before the attempt after `attempt` (1-based): base, 2 × base, 4 × base, ...
    pub fn delay_seconds(&self, attempt: u32) -> u32 {
        let doubled = u64::from(self.base_seconds) << attempt.saturating_sub(1).min(32);
        doubled.min(u64::from(self.max_seconds)) as u32
    }
}

/// Reads a whole-number var within `1..=max`, or its default when unset.
pub(crate) fn read_count(get: &impl Fn(&str) -> Option<String>, name: &str, default: u32, max: u32) -> Result<u32, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(text) => match text.trim().parse::<u32>() {
            Ok(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(ConfigError(format!("{name} must be a whole number from 1 to {max}, not {text:?}"))),
        },
    }
}

/// Retention (`RETENTION_DAILY_DAYS`, `RETENTION_WEEKLY_WEEKS`, `RETENTION_MANUAL_DAYS`);
/// defaults 7 days, 12 weeks, 30 days.
pub fn retention_policy_from_vars(get: impl Fn(&str) -> Option<String>) -> Result<RetentionPolicy, ConfigError> {
    let default = RetentionPolicy::default();
    Ok(RetentionPolicy {
        daily_days: read_count(&get, "RETENTION_DAILY_DAYS", default.daily_days, 3650)?,
        weekly_weeks: read_count(&get, "RETENTION_WEEKLY_WEEKS", default.weekly_weeks, 520)?,
        manual_days: read_count(&get, "RETENTION_MANUAL_DAYS", default.manual_days, 3650)?,
    })
}

/// Per-step limits of the archiver (`ARCHIVE_MAX_MB` read per step, `ARCHIVE_MAX_SECONDS`) and
/// how many attempts an archive job gets (`ARCHIVE_MAX_ATTEMPTS`) before it is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_read_mb: u32,
    pub max_seconds: u32,
    pub max_attempts: u32,
}

impl ArchiveLimits {
    /// 256 MiB per step keeps a step to about 70 subrequests and well inside the CPU limit.
    pub const DEFAULT: ArchiveLimits = ArchiveLimits { max_read_mb: 256, max_seconds: 60, max_attempts: 5 };

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<ArchiveLimits, ConfigError> {
        Ok(ArchiveLimits {
            max_read_mb: read_count(&get, "ARCHIVE_MAX_MB", Self::DEFAULT.max_read_mb, 4096)?,
            max_seconds: read_count(&get, "ARCHIVE_MAX_SECONDS", Self::DEFAULT.max_seconds, 900)?,
            max_attempts: read_count(&get, "ARCHIVE_MAX_ATTEMPTS", Self::DEFAULT.max_attempts, 100)?,
        })
    }

    pub fn budget(&self) -> ArchiveBudget {
        ArchiveBudget {
            max_read_bytes: u64::from(self.max_read_mb) * 1024 * 1024,
            max_millis: u64::from(self.max_seconds) * 1000,
        }
    }
}

/// Verification and restores (`VERIFY_MAX_MB`: dumps larger than this are not verified, the
/// reason recorded; `OPERATION_MAX_ATTEMPTS`: failed deliveries before a verification or
/// restore is given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationLimits {
    pub verify_max_mb: u32,
    pub max_attempts: u32,
}

impl OperationLimits {
    pub const DEFAULT: OperationLimits = OperationLimits { verify_max_mb: 1024, max_attempts: 5 };

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<OperationLimits, ConfigError> {
        Ok(OperationLimits {
            verify_max_mb: read_count(&get, "VERIFY_MAX_MB", Self::DEFAULT.verify_max_mb, 10_000_000)?,
            max_attempts: read_count(&get, "OPERATION_MAX_ATTEMPTS", Self::DEFAULT.max_attempts, 100)?,
        })
    }

    /// Why a new dump of `database` (`bytes` long) is not verified, or `None` when it is.
    /// `has_scratch`: whether the consumer has its scratch database binding; `readable`:
    /// whether it can read the dump (an encrypted one needs `AGE_IDENTITY`).
    pub fn skip_reason(&self, database: Option<&DatabaseConfig>, has_scratch: bool, readable: bool, bytes: u64) -> Option<String> {
        let limit = u64::from(self.verify_max_mb) * 1024 * 1024;
        match database {
            None => Some("the database is no longer configured".into()),
            Some(d) if !d.verify => Some("verification is turned off for this database (\"verify\": false in DATABASES)".into()),
            Some(_) if !has_scratch => {
                Some("no VERIFY_DB binding: bind an empty scratch D1 database to verify dumps".into())
            }
            Some(_) if !readable => Some(
                "the dump is encrypted and the consumer has no AGE_IDENTITY secret to read it: set it to verify \
                 encrypted dumps"
                    .into(),
            ),
            Some(_) if bytes > limit => {
                Some(format!("the dump is {bytes} bytes, over VERIFY_MAX_MB ({} MiB)", self.verify_max_mb))
            }
            Some(_) => None,
        }
    }
}

/// Every setting of a Worker, read from its vars once per invocation and passed down: no code
/// below the entry points reads the environment, and a malformed var fails the invocation the
/// same way wherever it is used, never falling back to a default in one place only.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `DATABASES` (empty for a Worker without the var: the archiver).
    pub databases: Vec<DatabaseConfig>,
    pub export: ExportLimits,
    pub retry: RetryPolicy,
    pub retention: RetentionPolicy,
    pub archive: ArchiveLimits,
    pub operation: OperationLimits,
    pub alerts: crate::alerts::AlertThresholds,
    /// `ALERT_ON_SUCCESS`: also alert when a job succeeds.
    pub alert_on_success: bool,
    /// `BACKUP_MAX_ATTEMPTS`: attempts of one export step before its run is dead.
    pub backup_max_attempts: u32,
    /// `SWEEP_GRACE_SECONDS`: how long a task's message may take to arrive before the sweeper
    /// sends it again.
    pub sweep_grace_seconds: u32,
    /// `LEASE_MARGIN_SECONDS`: how long a step's lease outlasts its budget.
    pub lease_margin_seconds: u32,
    /// `ENVIRONMENT` (`local` or `test` allow fault injection).
    pub environment: Option<String>,
    /// `OFFSITE` (with the secrets `OFFSITE_ACCESS_KEY_ID` and `OFFSITE_SECRET_ACCESS_KEY`):
    /// where every finished backup and weekly archive is copied off-site; `None`: nowhere.
    pub offsite: Option<crate::offsite::OffsiteConfig>,
    /// `ALERT_EMAIL`: alerts (and the digest) by email through the `send_email` binding;
    /// `None`: no email.
    pub email: Option<crate::email::EmailConfig>,
    /// `OFFSITE_MAX_ATTEMPTS`: failed attempts of one step of an off-site copy before it is dead.
    pub offsite_max_attempts: u32,
    /// `AGE_IDENTITY` (a secret, the consumer's only): the age secret key that lets
    /// verification and restores read encrypted dumps. Without it they cannot be read here.
    pub age_identity: Option<Identity>,
}

impl Settings {
    pub const DEFAULT_BACKUP_MAX_ATTEMPTS: u32 = 6;
    pub const DEFAULT_SWEEP_GRACE_SECONDS: u32 = 300;
    pub const DEFAULT_LEASE_MARGIN_SECONDS: u32 = 120;
    pub const DEFAULT_OFFSITE_MAX_ATTEMPTS: u32 = 8;

    /// Reads every setting: `get` returns a var's text (`None` when unset), `databases` the
    /// `DATABASES` object when the Worker has one.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        databases: Option<BTreeMap<String, DatabaseEntry>>,
    ) -> Result<Settings, ConfigError> {
        let alert_on_success = match get("ALERT_ON_SUCCESS").as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(ConfigError(format!("ALERT_ON_SUCCESS must be true or false, not {other:?}"))),
        };
        Ok(Settings {
            databases: match databases {
                Some(map) => databases_from_map(map)?,
                None => Vec::new(),
            },
            export: ExportLimits::from_vars(&get)?,
            retry: RetryPolicy::from_vars(&get)?,
            retention: retention_policy_from_vars(&get)?,
            archive: ArchiveLimits::from_vars(&get)?,
            operation: OperationLimits::from_vars(&get)?,
            alerts: crate::alerts::AlertThresholds::from_vars(&get)?,
            alert_on_success,
            backup_max_attempts: read_count(&get, "BACKUP_MAX_ATTEMPTS", Self::DEFAULT_BACKUP_MAX_ATTEMPTS, 100)?,
            // 0 is allowed: every unheld, unfinished task is re-sent at every sweep (tests use it).
            sweep_grace_seconds: match get("SWEEP_GRACE_SECONDS") {
                None => Self::DEFAULT_SWEEP_GRACE_SECONDS,
                Some(text) => text.trim().parse::<u32>().ok().filter(|v| *v <= 86_400).ok_or_else(|| {
                    ConfigError(format!("SWEEP_GRACE_SECONDS must be a whole number of seconds from 0 to 86400, not {text:?}"))
                })?,
            },
            lease_margin_seconds: read_count(&get, "LEASE_MARGIN_SECONDS", Self::DEFAULT_LEASE_MARGIN_SECONDS, 3_600)?,
            environment: get("ENVIRONMENT"),
            offsite: crate::offsite::OffsiteConfig::from_vars(&get)?,
            email: crate::email::EmailConfig::from_vars(&get)?,
            offsite_max_attempts: read_count(&get, "OFFSITE_MAX_ATTEMPTS", Self::DEFAULT_OFFSITE_MAX_ATTEMPTS, 100)?,
            age_identity: match get("AGE_IDENTITY") {
                None => None,
                Some(text) => Some(Identity::parse(&text).map_err(|e| ConfigError(format!("AGE_IDENTITY: {e}")))?),
            },
        })
    }

    /// Checks that the bindings the settings need are there (`has_binding` answers for a
    /// binding's name): email needs its `send_email` binding.
    pub fn check_bindings(&self, has_binding: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        match &self.email {
            Some(email) => email.check_binding(has_binding(crate::email::SEND_EMAIL_BINDING)),
            None => Ok(()),
        }
    }

    /// The configured database named `name`.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// How tasks of `kind` are retried and how long their leases last.
    pub fn task_policy(&self, kind: crate::task::TaskKind) -> crate::task::TaskPolicy {
        use crate::task::{TaskKind, TaskPolicy};
        let (max_attempts, step_seconds) = match kind {
            TaskKind::Backup => (self.backup_max_attempts, self.export.max_seconds),
            TaskKind::Operation => (self.operation.max_attempts, self.export.max_seconds),
            TaskKind::Archive => (self.archive.max_attempts, u64::from(self.archive.max_seconds)),
            TaskKind::Replica => (self.offsite_max_attempts, self.export.max_seconds),
        };
        TaskPolicy { max_attempts, retry: self.retry, step_seconds, lease_margin_seconds: u64::from(self.lease_margin_seconds) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_is_on_by_default_and_limited_by_size() {
        let dbs = parse_databases(r#"{"a":"DB_A","b":{"binding":"DB_B","verify":false},"c":{"binding":"DB_C"}}"#).unwrap();
        assert_eq!(dbs.iter().map(|d| d.verify).collect::<Vec<_>>(), [true, false, true]);
        let limits = OperationLimits::from_vars(|n| (n == "VERIFY_MAX_MB").then(|| "1".into())).unwrap();
        assert_eq!(limits.skip_reason(Some(&dbs[0]), true, true, 1024 * 1024), None);
        assert!(limits.skip_reason(Some(&dbs[0]), true, true, 1024 * 1024 + 1).unwrap().contains("VERIFY_MAX_MB"));
        assert!(limits.skip_reason(Some(&dbs[1]), true, true, 10).unwrap().contains("turned off"));
        assert!(limits.skip_reason(Some(&dbs[0]), false, true, 10).unwrap().contains("VERIFY_DB"));
        assert!(limits.skip_reason(Some(&dbs[0]), true, false, 10).unwrap().contains("AGE_IDENTITY"));
        assert!(limits.skip_reason(None, true, true, 10).is_some());
        assert!(OperationLimits::from_vars(|n| (n == "OPERATION_MAX_ATTEMPTS").then(|| "0".into())).is_err());
    }

    #[test]
    fn settings_read_every_var_once_and_refuse_nonsense() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let defaults = Settings::from_vars(|_| None, None).unwrap();
        assert_eq!(defaults.databases, vec![]);
        assert_eq!(defaults.backup_max_attempts, 6);
        assert!(!defaults.alert_on_success);
        let map = BTreeMap::from([("a".to_string(), DatabaseEntry::Binding("DB_A".into()))]);
        let set = Settings::from_vars(vars(&[("ALERT_ON_SUCCESS", "true"), ("EXPORT_MAX_SECONDS", "30")]), Some(map)).unwrap();
        assert!(set.alert_on_success);
        assert_eq!(set.database("a").map(|d| d.binding.as_str()), Some("DB_A"));
        let policy = set.task_policy(crate::task::TaskKind::Backup);
        assert_eq!((policy.max_attempts, policy.step_seconds), (6, 30));
        assert_eq!(set.task_policy(crate::task::TaskKind::Archive).max_attempts, ArchiveLimits::DEFAULT.max_attempts);
        // Email needs its binding; without ALERT_EMAIL no binding is asked for.
        assert_eq!(defaults.check_bindings(|_| false), Ok(()));
        let email = Settings::from_vars(vars(&[("ALERT_EMAIL", r#"{"from": "b@example.com", "to": "o@example.com"}"#)]), None).unwrap();
        assert!(email.check_bindings(|_| false).unwrap_err().0.contains("SEND_EMAIL"));
        assert_eq!(email.check_bindings(|name| name == "SEND_EMAIL"), Ok(()));
        for bad in [("ALERT_ON_SUCCESS", "yes"), ("BACKUP_MAX_ATTEMPTS", "0"), ("SWEEP_GRACE_SECONDS", "soon"), ("RETRY_MAX_SECONDS", "x"),
                    ("ALERT_EMAIL", r#"{"from": "b@example", "to": "o@example.com"}"#)] {
            let err = Settings::from_vars(|n| (n == bad.0).then(|| bad.1.to_string()), None).unwrap_err();
            assert!(err.0.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn parses_a_valid_list() {
        let dbs = parse_databases(r#"{"demo":"DB_DEMO","chinook":"DB_CHINOOK"}"#).unwrap();
        assert_eq!(dbs.len(), 2);
        assert_eq!(dbs[0].name, "chinook");
        assert_eq!(dbs[1].binding, "DB_DEMO");
    }

    #[test]
    fn a_database_can_ask_for_gzip() {
        let dbs = parse_databases(r#"{"a":"DB_A","b":{"binding":"DB_B","gzip":true},"c":{"binding":"DB_C"}}"#).unwrap();
        assert_eq!(dbs.iter().map(|d| d.gzip).collect::<Vec<_>>(), [false, true, false]);
        assert_eq!(dbs[1].binding, "DB_B");
        assert!(parse_databases(r#"{"a":{"binding":"DB_A","gzp":true}}"#).is_err(), "typos are refused");
    }

    #[test]
    fn export_limits_default_and_refuse_nonsense() {
        assert_eq!(ExportLimits::from_vars(|_| None).unwrap(), ExportLimits::DEFAULT);
        let free = ExportLimits::from_vars(|n| (n == "EXPORT_MAX_QUERIES").then(|| "50".to_string())).unwrap();
        assert_eq!(free.step_budget().max_queries, 50 - ExportLimits::BOOKKEEPING_QUERIES);
        for (name, bad) in [("EXPORT_MAX_QUERIES", "5"), ("EXPORT_MAX_MB", "0"), ("EXPORT_MAX_SECONDS", "ten"), ("EXPORT_ROWS_PER_QUERY", "-1")] {
            let err = ExportLimits::from_vars(|n| (n == name).then(|| bad.to_string())).unwrap_err();
            assert!(err.0.contains(name), "{err}");
        }
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let policy = RetryPolicy { base_seconds: 30, max_seconds: 300 };
        let delays: Vec<u32> = (1..=6).map(|a| policy.delay_seconds(a)).collect();
        assert_eq!(delays, [30, 60, 120, 240, 300, 300]);
        assert_eq!(policy.delay_seconds(1000), 300);
        assert_eq!(RetryPolicy::from_vars(|_| None).unwrap(), RetryPolicy::DEFAULT);
        assert!(RetryPolicy::from_vars(|n| (n == "RETRY_BASE_SECONDS").then(|| "5000".into())).is_err());
        assert!(RetryPolicy::from_vars(|n| (n == "RETRY_MAX_SECONDS").then(|| "soon".into())).is_err());
    }

    #[test]
    fn retention_and_archive_limits_default_and_refuse_nonsense() {
        assert_eq!(retention_policy_from_vars(|_| None).unwrap(), RetentionPolicy::default());
        let short = retention_policy_from_vars(|n| (n == "RETENTION_DAILY_DAYS").then(|| "2".into())).unwrap();
        assert_eq!(short.daily_days, 2);
        assert!(retention_policy_from_vars(|n| (n == "RETENTION_WEEKLY_WEEKS").then(|| "0".into())).is_err());
        assert!(retention_policy_from_vars(|n| (n == "RETENTION_MANUAL_DAYS").then(|| "-1".into())).is_err());
        assert_eq!(ArchiveLimits::from_vars(|_| None).unwrap(), ArchiveLimits::DEFAULT);
        assert!(ArchiveLimits::from_vars(|n| (n == "ARCHIVE_MAX_MB").then(|| "lots".into())).is_err());
    }

    #[test]
    fn rejects_bad_names_bindings_and_empty_maps() {
        for bad in [
            r#"{}"#,
            r#"{"../x":"A"}"#,
            r#"{"Upper":"A"}"#,
            r#"{"":"A"}"#,
            r#"{"a":"1A"}"#,
            r#"{"a":5}"#,
            r#"[{"name":"a","binding":"A"}]"#,
        ] {
            assert!(parse_databases(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn database_names_are_key_safe() {
        assert!(is_valid_database_name("my-db_2"));
        assert!(!is_valid_database_name("-x"));
        assert!(!is_valid_database_name("a/b"));
        assert!(!is_valid_database_name(&"a".repeat(65)));
    }
}
