//! HTTP helpers: JSON responses, JSON errors and bearer-token checks.

use serde::Serialize;
use worker::{Request, Response, Result};

pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// A JSON error: `{"error": <short code>, "message": <what went wrong>}`.
pub fn error(status: u16, code: &str, message: impl Into<String>) -> Result<Response> {
    json(status, &serde_json::json!({ "error": code, "message": message.into() }))
}

/// Compares two secrets in time that depends neither on where they differ nor on whether their
/// lengths match: both are hashed (SHA-256) and the fixed-length digests compared byte by byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let digest = |bytes: &[u8]| {
        let mut hash = shared::sha256::ResumableSha256::new();
        hash.update(bytes);
        hash.hex_digest().into_bytes()
    };
    let (a, b) = (digest(a), digest(b));
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a request's `Authorization: Bearer` token says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The admin token: everything.
    Admin,
    /// The read-only token: status and metadata (GET) only; never a backup's bytes.
    ReadOnly,
    /// No or malformed credentials: 401.
    Missing,
    /// A token that is neither: 401 too (a wrong token proves nothing about the caller).
    Wrong,
}

/// Parses `Authorization: Bearer <token>` (scheme case-insensitive) and compares the token in
/// constant time with the admin token and the optional read-only token. An empty configured
/// token never matches.
pub fn authorize(req: &Request, admin_token: &str, read_token: Option<&str>) -> Auth {
    let header = req.headers().get("Authorization").ok().flatten();
    authorize_header(header.as_deref(), admin_token, read_token)
}

pub fn authorize_header(header: Option<&str>, admin_token: &str, read_token: Option<&str>) -> Auth {
    let Some((scheme, token)) = header.and_then(|h| h.split_once(' ')) else {
        return Auth::Missing;
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Auth::Missing;
    }
    let matches = |configured: &str| !configured.is_empty() && constant_time_eq(token.as_bytes(), configured.as_bytes());
    // Both comparisons always run, so timing does not tell which token was close.
    let admin = matches(admin_token);
    let read = read_token.is_some_and(matches);
    match (admin, read) {
        (true, _) => Auth::Admin,
        (false, true) => Auth::ReadOnly,
        _ => Auth::Wrong,
    }
}
