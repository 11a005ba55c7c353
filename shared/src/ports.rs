//! Traits at the seams. The consumer implements them over D1 and R2; tests implement them
//! over rusqlite and memory, so the same core code runs in both places.

#![allow(async_fn_in_trait)] // Workers are single-threaded: the futures need not be Send.

use std::fmt;

/// An error from the platform behind a port (D1, R2, ...), carried as its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortError(pub String);

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
