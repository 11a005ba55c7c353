//! Validation of `POST /trigger` bodies, as plain data: bytes in, a plan or an HTTP error out.

use crate::config::DatabaseConfig;
use serde::Deserialize;

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
struct TriggerBody {
    databases: Option<Vec<String>>,
    reason: Option<String>,
}

/// What a valid trigger asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerPlan {
    /// Configured database names, in configuration order.
    pub databases: Vec<String>,
    pub reason: Option<String>,
}

/// Parses a trigger body (empty means "every database, no reason").
pub fn plan_trigger(body: &[u8], configured: &[DatabaseConfig]) -> Result<TriggerPlan, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(413, "body_too_large", format!("body exceeds {MAX_BODY_BYTES} bytes")));
    }
    let all: Vec<String> = configured.iter().map(|d| d.name.clone()).collect();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TriggerPlan { databases: all, reason: None });
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
    Ok(TriggerPlan { databases, reason: parsed.reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> Vec<DatabaseConfig> {
        ["chinook", "demo"]
            .iter()
            .map(|n| DatabaseConfig { name: n.to_string(), binding: n.to_uppercase(), gzip: false })
            .collect()
    }

    #[test]
    fn empty_body_means_every_database() {
        let plan = plan_trigger(b"", &configured()).unwrap();
        assert_eq!(plan.databases, ["chinook", "demo"]);
        assert_eq!(plan_trigger(b" \n", &configured()).unwrap(), plan);
        assert_eq!(plan_trigger(b"{}", &configured()).unwrap(), plan);
    }

    #[test]
    fn chosen_databases_and_reason() {
        let plan = plan_trigger(br#"{"databases":["demo"],"reason":"before migration"}"#, &configured()).unwrap();
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
            let err = plan_trigger(body, &configured()).unwrap_err();
            assert_eq!((err.status, err.code), (status, code), "{}", String::from_utf8_lossy(body));
        }
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(plan_trigger(&huge, &configured()).unwrap_err().status, 413);
    }

    #[test]
    fn unknown_database_error_lists_the_valid_ones() {
        let err = plan_trigger(br#"{"databases":["x"]}"#, &configured()).unwrap_err();
        assert!(err.message.contains("chinook") && err.message.contains("demo"), "{}", err.message);
    }
}
