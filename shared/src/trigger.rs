//! Validation of `POST /trigger` bodies, as plain data: bytes in, a plan or an HTTP error out.

use crate::config::DatabaseConfig;
use crate::faults::{Fault, FaultStage};
use crate::keys::IsoWeek;
use chrono::NaiveDate;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest accepted body. A legitimate request names databases and a reason: a few KB at most.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_REASON_CHARS: usize = 500;

/// An error to answer with: HTTP status, short code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct TriggerBody {
    databases: Option<Vec<String>>,
    reason: Option<String>,
    /// Fault injection (local and test stacks only): database name → fault.
    faults: Option<BTreeMap<String, Fault>>,
    /// Fault injection: send every message this many times (2 to 5), as an at-least-once
    /// queue may deliver it.
    deliver_copies: Option<u32>,
    /// Fault injection: extra messages sent to the queue as they are (malformed ones, say).
    raw_messages: Option<Vec<serde_json::Value>>,
}

/// What a valid trigger asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerPlan {
    /// Configured database names, in configuration order.
    pub databases: Vec<String>,
    pub reason: Option<String>,
    pub faults: BTreeMap<String, Fault>,
    /// Copies of each message sent (1 unless fault injection asks for more).
    pub deliver_copies: u32,
    pub raw_messages: Vec<serde_json::Value>,
}

impl Default for TriggerPlan {
    /// Every listed database once, without a reason or faults.
    fn default() -> Self {
        TriggerPlan { databases: Vec::new(), reason: None, faults: BTreeMap::new(), deliver_copies: 1, raw_messages: Vec::new() }
    }
}

/// Whether this deployment accepts fault injection: only a producer whose `ENVIRONMENT` var
/// says `local` or `test`. Unset means production.
pub fn fault_injection_allowed(environment: Option<&str>) -> bool {
    matches!(environment, Some("local") | Some("test"))
}

/// Parses a trigger body (empty means "every database, no reason").
pub fn plan_trigger(
    body: &[u8],
    configured: &[DatabaseConfig],
    faults_allowed: bool,
) -> Result<TriggerPlan, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes")));
    }
    let all: Vec<String> = configured.iter().map(|d| d.name.clone()).collect();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TriggerPlan { databases: all, ..TriggerPlan::default() });
    }
    let parsed: TriggerBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_body",
            format!("body must be a JSON object {{\"databases\": [names], \"reason\": text}}, both optional: {e}"),
        )
    })?;
    if let Some(reason) = &parsed.reason {
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::new(400, "invalid_reason", format!("reason exceeds {MAX_REASON_CHARS} characters")));
        }
    }
    let databases = match parsed.databases {
        None => all,
        Some(requested) => {
            if requested.is_empty() {
                return Err(ApiError::new(400, "no_databases", "databases is empty; omit it to back up every database"));
            }
            let unknown: Vec<&String> = requested.iter().filter(|r| !all.contains(r)).collect();
            if !unknown.is_empty() {
                return Err(ApiError::new(
                    400,
                    "unknown_database",
                    format!("unknown database(s) {unknown:?}; configured: {all:?}"),
                ));
            }
            if let Some(dup) = requested.iter().enumerate().find(|(i, r)| requested[..*i].contains(r)) {
                return Err(ApiError::new(400, "duplicate_database", format!("database {:?} is listed twice", dup.1)));
            }
            // Configuration order, so a job's runs line up the same way every time.
            all.into_iter().filter(|name| requested.contains(name)).collect()
        }
    };
    let injects = parsed.faults.is_some() || parsed.deliver_copies.is_some() || parsed.raw_messages.is_some();
    if injects && !faults_allowed {
        return Err(ApiError::new(
            400,
            "fault_injection_disabled",
            "faults, deliverCopies and rawMessages are for local and test stacks only; this deployment refuses them",
        ));
    }
    let faults = parsed.faults.unwrap_or_default();
    if let Some(name) = faults.keys().find(|name| !databases.contains(name)) {
        return Err(ApiError::new(
            400,
            "unknown_database",
            format!("fault for {name:?}, which this trigger does not back up"),
        ));
    }
    let deliver_copies = parsed.deliver_copies.unwrap_or(1);
    if !(1..=5).contains(&deliver_copies) {
        return Err(ApiError::new(400, "invalid_body", "deliverCopies must be 1 to 5"));
    }
    Ok(TriggerPlan {
        databases,
        reason: parsed.reason,
        faults,
        deliver_copies,
        raw_messages: parsed.raw_messages.unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveBody {
    week: Option<String>,
    /// Fault injection (local and test stacks only).
    fault: Option<Fault>,
}

/// What a valid `POST /archive` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRequest {
    pub week: IsoWeek,
    pub fault: Option<Fault>,
}

/// Parses a `POST /archive` body: `{"week": "YYYY-Www"}`. The week must have ended before
/// `today` (an archive of a week still running would miss its last dailies).
pub fn plan_archive(body: &[u8], today: NaiveDate, faults_allowed: bool) -> Result<ArchiveRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes")));
    }
    let parsed: ArchiveBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, "invalid_body", format!("body must be a JSON object {{\"week\": \"YYYY-Www\"}}: {e}"))
    })?;
    let text = parsed.week.ok_or_else(|| ApiError::new(400, "missing_week", "week is required, as \"YYYY-Www\""))?;
    let week = IsoWeek::parse(&text).ok_or_else(|| {
        ApiError::new(400, "invalid_week", format!("week {text:?} is not an ISO week such as \"2026-W47\""))
    })?;
    if week.last_day() >= today {
        return Err(ApiError::new(
            400,
            "week_not_over",
            format!("week {} ends on {}; archive it once it is over", week.label(), week.last_day()),
        ));
    }
    if parsed.fault.is_some() && !faults_allowed {
        return Err(ApiError::new(
            400,
            "fault_injection_disabled",
            "fault is for local and test stacks only; this deployment refuses it",
        ));
    }
    if let Some(fault) = parsed.fault {
        if fault.stage == FaultStage::D1Query {
            return Err(ApiError::new(400, "invalid_fault", "an archive reads no source database: use r2_part or complete"));
        }
    }
    Ok(ArchiveRequest { week, fault: parsed.fault })
}

/// Checks an `Idempotency-Key` header: 1 to 200 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if (1..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::new(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_requests_name_a_past_iso_week() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let ok = plan_archive(br#"{"week":"2026-W47"}"#, today, false).unwrap();
        assert_eq!(ok.week.label(), "2026-W47");
        for (body, code) in [
            (&b""[..], "invalid_body"),
            (b"[]", "invalid_body"),
            (b"{}", "missing_week"),
            (br#"{"week":47}"#, "invalid_body"),
            (br#"{"week":"2026-W54"}"#, "invalid_week"),
            (br#"{"week":"../../x"}"#, "invalid_week"),
            (br#"{"week":"2026-W48"}"#, "week_not_over"),
            (br#"{"week":"2026-W47","extra":1}"#, "invalid_body"),
            (br#"{"week":"2026-W47","fault":{"stage":"r2_part","failAttempts":1}}"#, "fault_injection_disabled"),
        ] {
            assert_eq!(plan_archive(body, today, false).unwrap_err().code, code, "{}", String::from_utf8_lossy(body));
        }
        let fault = br#"{"week":"2026-W47","fault":{"stage":"d1_query","failAttempts":1}}"#;
        assert_eq!(plan_archive(fault, today, true).unwrap_err().code, "invalid_fault");
        assert_eq!(plan_archive(&vec![b' '; MAX_BODY_BYTES + 1], today, true).unwrap_err().status, 413);
    }

    fn configured() -> Vec<DatabaseConfig> {
        ["chinook", "demo"]
            .iter()
            .map(|n| DatabaseConfig { name: n.to_string(), binding: n.to_uppercase(), gzip: false, verify: true, recipients: Vec::new() })
            .collect()
    }

    #[test]
    fn empty_body_means_every_database() {
        let plan = plan_trigger(b"", &configured(), false).unwrap();
        assert_eq!(plan.databases, ["chinook", "demo"]);
        assert_eq!(plan_trigger(b" \n", &configured(), false).unwrap(), plan);
        assert_eq!(plan_trigger(b"{}", &configured(), false).unwrap(), plan);
    }

    #[test]
    fn chosen_databases_and_reason() {
        let plan = plan_trigger(br#"{"databases":["demo"],"reason":"before migration"}"#, &configured(), false).unwrap();
        assert_eq!(plan.databases, ["demo"]);
        assert_eq!(plan.reason.as_deref(), Some("before migration"));
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        let long_reason = format!(r#"{{"reason":"{}"}}"#, "x".repeat(501));
        let cases: Vec<(&[u8], u16, &str)> = vec![
            (b"{", 400, "invalid_body"),
            (b"[]", 400, "invalid_body"),
            (b"null", 400, "invalid_body"),
            (br#"{"databases":"demo"}"#, 400, "invalid_body"),
            (br#"{"databases":[1]}"#, 400, "invalid_body"),
            (br#"{"reason":5}"#, 400, "invalid_body"),
            (br#"{"extra":1}"#, 400, "invalid_body"),
            (br#"{"databases":[]}"#, 400, "no_databases"),
            (br#"{"databases":["nope"]}"#, 400, "unknown_database"),
            (br#"{"databases":["demo","demo"]}"#, 400, "duplicate_database"),
            (long_reason.as_bytes(), 400, "invalid_reason"),
        ];
        for (body, status, code) in cases {
            let err = plan_trigger(body, &configured(), false).unwrap_err();
            assert_eq!((err.status, err.code), (status, code), "{}", String::from_utf8_lossy(body));
        }
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(plan_trigger(&huge, &configured(), false).unwrap_err().status, 413);
    }

    #[test]
    fn faults_only_where_allowed_and_only_for_backed_up_databases() {
        let body = br#"{"databases":["demo"],"faults":{"demo":{"stage":"r2_part","failAttempts":2}},"deliverCopies":3}"#;
        let err = plan_trigger(body, &configured(), false).unwrap_err();
        assert_eq!((err.status, err.code), (400, "fault_injection_disabled"));
        let plan = plan_trigger(body, &configured(), true).unwrap();
        assert_eq!(plan.faults["demo"].fail_attempts, 2);
        assert_eq!(plan.deliver_copies, 3);
        let many = br#"{"databases":["demo"],"deliverCopies":9}"#;
        assert_eq!(plan_trigger(many, &configured(), true).unwrap_err().code, "invalid_body");
        let other = br#"{"databases":["demo"],"faults":{"chinook":{"stage":"d1_query","failAttempts":1}}}"#;
        assert_eq!(plan_trigger(other, &configured(), true).unwrap_err().code, "unknown_database");
        let bad = br#"{"faults":{"demo":{"stage":"nowhere","failAttempts":1}}}"#;
        assert_eq!(plan_trigger(bad, &configured(), true).unwrap_err().code, "invalid_body");
        assert!(fault_injection_allowed(Some("test")) && fault_injection_allowed(Some("local")));
        assert!(!fault_injection_allowed(None) && !fault_injection_allowed(Some("production")));
    }

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert!(check_idempotency_key("nightly-2026-11-23_a1").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(201)] {
            assert_eq!(check_idempotency_key(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn unknown_database_error_lists_the_valid_ones() {
        let err = plan_trigger(br#"{"databases":["x"]}"#, &configured(), false).unwrap_err();
        assert!(err.message.contains("chinook") && err.message.contains("demo"), "{}", err.message);
    }
}
