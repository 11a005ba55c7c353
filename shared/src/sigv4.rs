//! AWS Signature Version 4, as S3 and every S3-compatible store (Backblaze B2, MinIO, another
//! R2 account) check it: the canonical request, the string to sign, the signing key and the
//! `Authorization` header. Plain data in, plain data out; the Worker sends what this signs.
//!
//! Written here over `hmac` and `sha2` rather than with rusty-s3: that crate signs presigned
//! URLs, whose payload is unsigned, while every request here signs its body's SHA-256
//! (`x-amz-content-sha256`), so the store refuses a part whose bytes changed on the way.
//!
//! Paths are percent-encoded once, segment by segment (S3's rule; the generic services'
//! double encoding and path normalization are not needed for object keys). Checked against
//! AWS's published SigV4 test suite (shared/tests/sigv4_vectors).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use crate::sha256::{hex, sha256_hex};
use sha2::Sha256;
use std::fmt;

/// The SHA-256 of an empty payload, which every body-less request signs.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key pair (and, for temporary credentials, its session token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, …)", self.access_key_id)
    }
}

/// A request to sign: `path` and `query` as they are (not yet encoded), every header that is to
/// be signed (`host` among them), and the hex SHA-256 of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

/// Where a signature is valid: region and service (`s3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    pub time: DateTime<Utc>,
}

impl Scope<'_> {
    /// `YYYYMMDDTHHMMSSZ`, the `x-amz-date` header's value.
    pub fn amz_date(&self) -> String {
        self.time.format("%Y%m%dT%H%M%SZ").to_string()
    }

    fn date(&self) -> String {
        self.time.format("%Y%m%d").to_string()
    }

    fn credential_scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date(), self.region, self.service)
    }
}

/// Percent-encodes everything but the unreserved characters (`A-Z a-z 0-9 - _ . ~`), and `/`
/// too unless `keep_slash`.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The query string as it is sent and signed: encoded pairs sorted by name, then value.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Header names lowercased and sorted, values trimmed with inner runs of spaces collapsed; a
/// name given more than once has its values joined with commas, in order.
fn canonical_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => merged.push((name, value)),
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    merged
}

/// The names of the signed headers, `;`-separated.
pub fn signed_headers(headers: &[(String, String)]) -> String {
    canonical_headers(headers).into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(";")
}

pub fn canonical_request(request: &Request<'_>) -> String {
    let headers = canonical_headers(request.headers);
    let header_lines: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        uri_encode(request.path, true),
        canonical_query(request.query),
        header_lines,
        signed_headers(request.headers),
        request.payload_sha256
    )
}

pub fn string_to_sign(scope: &Scope<'_>, canonical_request: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        scope.amz_date(),
        scope.credential_scope(),
        sha256_hex(canonical_request.as_bytes())
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn signature(secret_access_key: &str, scope: &Scope<'_>, string_to_sign: &str) -> String {
    let key = hmac(format!("AWS4{secret_access_key}").as_bytes(), scope.date().as_bytes());
    let key = hmac(&key, scope.region.as_bytes());
    let key = hmac(&key, scope.service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    hex(&hmac(&key, string_to_sign.as_bytes()))
}

/// The `Authorization` header's value for `request`, which must already carry `host`,
/// `x-amz-date` (see [`Scope::amz_date`]) and, for S3, `x-amz-content-sha256`.
pub fn authorization(credentials: &Credentials, scope: &Scope<'_>, request: &Request<'_>) -> String {
    let to_sign = string_to_sign(scope, &canonical_request(request));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        credentials.access_key_id,
        scope.credential_scope(),
        signed_headers(request.headers),
        signature(&credentials.secret_access_key, scope, &to_sign)
    )
}
