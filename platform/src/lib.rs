//! Worker-side adapters shared by the three Workers: shared's ports implemented over D1 and R2,
//! the metadata store, configuration and HTTP helpers. Everything that decides *what* to do
//! lives in `shared`; this crate only knows *how* to talk to the platform.

pub mod alerts;
pub mod archives;
pub mod config;
pub mod d1_source;
pub mod digest;
pub mod http;
pub mod meta;
pub mod native_streams;
pub mod operations;
pub mod r2_store;
pub mod replicas;
pub mod s3_store;
pub mod reports;
pub mod tasks;

/// Binding names, defined once.
pub mod bindings {
    /// The metadata D1 database (jobs, runs, backup inventory).
    pub const META: &str = "META";
    /// The R2 bucket that holds every backup.
    pub const BACKUPS: &str = "BACKUPS";
    /// The queue of backup messages.
    pub const BACKUP_QUEUE: &str = "BACKUP_QUEUE";
    /// The queue of weekly-archive messages (consumed by the archiver).
    pub const ARCHIVE_QUEUE: &str = "ARCHIVE_QUEUE";
    /// The queue of verifications and restores (consumed by the consumer).
    pub const RESTORE_QUEUE: &str = "RESTORE_QUEUE";
    /// The queue of off-site copies (consumed by the consumer).
    pub const OFFSITE_QUEUE: &str = "OFFSITE_QUEUE";
    /// The scratch D1 database verifications restore into; it holds nothing else.
    pub const VERIFY_DB: &str = "VERIFY_DB";
    /// The `send_email` binding of email alerts (named in shared, whose configuration errors
    /// name it).
    pub const SEND_EMAIL: &str = shared::email::SEND_EMAIL_BINDING;
}

/// The current time, from the Workers clock.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    millis_to_utc(worker::Date::now().as_millis() as i64)
}

pub fn millis_to_utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// One step's billable work, for its log line (`usage: …`), which the bench's cost model reads.
pub fn usage_note(d1: d1_source::D1Usage, r2: r2_store::R2Operations) -> String {
    format!(
        "usage: D1 {} queries returning {} rows, {} batches of {} statements; R2 class A {}, class B {}",
        d1.queries, d1.rows_returned, d1.batches, d1.statements, r2.class_a, r2.class_b
    )
}
