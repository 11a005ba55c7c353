//! The pure core of the D1 backup system.
//!
//! Everything here is plain data in, plain data out: no Worker types. The Worker crates
//! implement the traits in [`ports`] over D1 and R2 and hand over to this code, so every
//! behaviour is tested natively (against rusqlite and in-memory stores) before it runs in workerd.

pub mod age;
pub mod alerts;
pub mod archive;
pub mod backup;
pub mod config;
pub mod cron;
pub mod digest;
pub mod dump;
pub mod email;
pub mod faults;
pub mod guide;
pub mod keys;
pub mod listing;
pub mod message;
pub mod offsite;
pub mod metrics;
pub mod ports;
pub mod restore;
pub mod retention;
pub mod state;
pub mod task;
pub mod sha256;
pub mod sigv4;
pub mod trigger;
pub mod upload;

/// Version of this tool, written into every dump header.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
