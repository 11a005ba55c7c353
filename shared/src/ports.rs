//! Traits at the seams. The consumer implements them over D1 and R2; tests implement them
//! over rusqlite and memory, so the same core code runs in both places.

#![allow(async_fn_in_trait)] // Workers are single-threaded: the futures need not be Send.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// An error from the platform behind a port (D1, R2, ...), typed where it arises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortError {
    pub kind: PortErrorKind,
    pub message: String,
}

/// What went wrong behind a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortErrorKind {
    /// The platform could not answer (busy, network, 5xx, reset, overloaded, timeout): the
    /// same request may succeed later.
    Unavailable,
    /// The database refused the statement (a syntax error, a constraint, a type mismatch): the
    /// same statement meets the same refusal.
    Rejected,
}

impl PortError {
    pub fn unavailable(message: impl Into<String>) -> PortError {
        PortError { kind: PortErrorKind::Unavailable, message: message.into() }
    }

    pub fn rejected(message: impl Into<String>) -> PortError {
        PortError { kind: PortErrorKind::Rejected, message: message.into() }
    }

    /// The error a D1 database reported, classified once, here at the boundary. D1 reports
    /// SQLite's refusals with the result code's name at the end (`...: SQLITE_CONSTRAINT`);
    /// a busy or locked database, an I/O error, a reset, an overloaded database or a network
    /// failure are worth retrying.
    pub fn from_d1_message(message: impl Into<String>) -> PortError {
        let message = message.into();
        const REFUSALS: [&str; 6] =
            ["SQLITE_ERROR", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE", "SQLITE_AUTH"];
        let kind = if REFUSALS.iter().any(|code| message.contains(code)) {
            PortErrorKind::Rejected
        } else {
            PortErrorKind::Unavailable
        };
        PortError { kind, message }
    }
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PortError {}

/// A database to read from.
///
/// Every value comes back as text (`None` for NULL). The exporter asks SQLite to produce SQL
/// literals itself (`quote()`), so no value ever passes through a lossy number type such as a
/// JavaScript double on its way into the dump.
pub trait SqlSource {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError>;

    /// The D1 bookmark of the state the queries so far have read (pair it with Time Travel),
    /// when the source has one.
    fn bookmark(&self) -> Option<String> {
        None
    }
}

/// Milliseconds since the Unix epoch: budgets are measured against it.
pub trait Clock {
    fn now_millis(&self) -> i64;
}

impl<F: Fn() -> i64> Clock for F {
    fn now_millis(&self) -> i64 {
        self()
    }
}

/// Where a dump's bytes go, in order.
pub trait ByteSink {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError>;
}

/// Collects everything in memory: for tests and small outputs only.
impl ByteSink for Vec<u8> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// How an object is described when stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub content_type: String,
    /// Custom metadata (R2 `customMetadata`).
    pub custom: BTreeMap<String, String>,
}

/// A part of a multipart upload, as the completion needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    pub number: u16,
    pub etag: String,
}

/// An object store with multipart uploads (R2 in the Worker, memory in tests).
pub trait ObjectStore {
    async fn put(&mut self, key: &str, bytes: Vec<u8>, info: &ObjectInfo) -> Result<(), PortError>;
    /// The whole object, or `None` if there is none at `key`. Only for small objects.
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
    /// Up to `length` bytes of the object at `key` from `offset` (fewer at its end), or `None`
    /// if there is no object: large objects are read this way, a bounded piece at a time.
    async fn get_range(&mut self, key: &str, offset: u64, length: u64) -> Result<Option<Vec<u8>>, PortError>;
    /// The size of the object at `key`, or `None` if there is none.
    async fn head(&mut self, key: &str) -> Result<Option<u64>, PortError>;
    async fn delete(&mut self, key: &str) -> Result<(), PortError>;
    /// Starts a multipart upload; returns its id.
    async fn create_multipart(&mut self, key: &str, info: &ObjectInfo) -> Result<String, PortError>;
    /// Uploads (or replaces) part `number`; returns its etag.
    async fn upload_part(&mut self, key: &str, upload_id: &str, number: u16, bytes: Vec<u8>) -> Result<String, PortError>;
    /// Joins the parts into the object at `key`, which only now becomes visible.
    async fn complete_multipart(&mut self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), PortError>;
    async fn abort_multipart(&mut self, key: &str, upload_id: &str) -> Result<(), PortError>;
    /// The object's size and, where the store has one worth recording (the off-site copies),
    /// its ETag, in one request; `None` if there is no object.
    async fn head_with_etag(&mut self, key: &str) -> Result<Option<(u64, Option<String>)>, PortError> {
        Ok(self.head(key).await?.map(|size| (size, None)))
    }

    /// The size and SHA-256 (lowercase hex) of the whole object at `key`, or `None` if there is
    /// none. This default reads it a bounded range at a time; a Worker's store streams the
    /// object through the runtime's native digest instead, without copying it into WebAssembly.
    async fn sha256(&mut self, key: &str) -> Result<Option<(u64, String)>, PortError> {
        const RANGE: u64 = 4 * 1024 * 1024;
        let Some(size) = self.head(key).await? else { return Ok(None) };
        let mut hash = crate::sha256::ResumableSha256::new();
        while hash.len() < size {
            let piece = self.get_range(key, hash.len(), RANGE.min(size - hash.len())).await?;
            match piece {
                Some(piece) if !piece.is_empty() => hash.update(&piece),
                _ => return Err(PortError::unavailable(format!("{key} changed while it was hashed"))),
            }
        }
        Ok(Some((size, hash.hex_digest())))
    }

    /// Starts hashing (SHA-256), natively, what the next `get_range` calls read of `key`, which
    /// must read it in order from its start; `false` when the store cannot, and the caller
    /// hashes what it reads itself. A Worker's store feeds the bytes it already holds in
    /// JavaScript to `crypto.DigestStream`: hashing in WebAssembly was a third of a weekly
    /// archive's time. The state of a native hash cannot be saved, so it only serves reads that
    /// end within one step.
    fn digest_reads(&mut self, _key: &str) -> bool {
        false
    }

    /// Ends what [`Self::digest_reads`] started: the SHA-256 (lowercase hex) of what was read.
    async fn read_digest(&mut self) -> Result<String, PortError> {
        Err(PortError::unavailable("this store hashes no reads".to_owned()))
    }

    /// `plain` as one whole gzip member (RFC 1952) at level 6, like `gzip -6`. Objects are
    /// compressed on their way into the store, a member at a time: this default runs flate2 (the
    /// native tests); a Worker's store hands it to the runtime's native `CompressionStream`,
    /// several times faster than deflate compiled to WebAssembly.
    async fn gzip_member(&mut self, plain: &[u8]) -> Result<Vec<u8>, PortError> {
        gzip_member(plain)
    }
}

/// `plain` as one whole gzip member at level 6, by flate2.
pub fn gzip_member(plain: &[u8]) -> Result<Vec<u8>, PortError> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 3 + 64), flate2::Compression::new(6));
    encoder.write_all(plain).map_err(|e| PortError::unavailable(format!("gzip: {e}")))?;
    encoder.finish().map_err(|e| PortError::unavailable(format!("gzip: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d1_errors_are_typed_once_at_the_boundary() {
        for refused in [
            "D1_ERROR: no such table: Track: SQLITE_ERROR",
            "D1_ERROR: UNIQUE constraint failed: jobs.id: SQLITE_CONSTRAINT",
            "D1_ERROR: CHECK constraint failed: held = 1: SQLITE_CONSTRAINT",
            "D1_ERROR: string or blob too big: SQLITE_TOOBIG",
        ] {
            assert_eq!(PortError::from_d1_message(refused).kind, PortErrorKind::Rejected, "{refused}");
        }
        for transient in [
            "D1_ERROR: database is locked: SQLITE_BUSY",
            "D1_ERROR: Network connection lost.",
            "D1 DB is overloaded. Requests queued for too long.",
            "D1_ERROR: D1 DB reset because its code was updated.",
            "D1_ERROR: disk I/O error: SQLITE_IOERR",
            "Internal error while starting up D1 DB storage caused object to be reset.",
        ] {
            assert_eq!(PortError::from_d1_message(transient).kind, PortErrorKind::Unavailable, "{transient}");
        }
    }
}
