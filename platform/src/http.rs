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

/// Compares in time that depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Outcome of checking a request's `Authorization: Bearer` header against the admin token.
pub enum Auth {
    Admin,
    /// No or malformed credentials: 401.
    Missing,
    /// A token that is not the admin token: 403.
    Wrong,
}

pub fn authorize(req: &Request, admin_token: &str) -> Auth {
    let header = req.headers().get("Authorization").ok().flatten();
    let token = match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
        Some(t) if !t.is_empty() => t,
        _ => return Auth::Missing,
    };
    if !admin_token.is_empty() && constant_time_eq(token.as_bytes(), admin_token.as_bytes()) {
        Auth::Admin
    } else {
        Auth::Wrong
    }
}
