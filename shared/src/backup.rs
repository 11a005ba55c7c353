//! One backup, exported in as many steps as its budgets need, into one object.
//!
//! Each step streams the dump into a [`StreamingUpload`]: parts go to R2 as they fill, the tail
//! is parked between steps, and the object appears at its final key only when the last step
//! completes the upload: a half-done backup is never visible as a backup.
//!
//! The steps of an export are byte for byte the dump a single step would write; with gzip,
//! its pieces are gzip members (see `crate::upload`), and gzip readers join members into the
//! same SQL.

use crate::age::Recipient;
use crate::dump::{SchemaObject, Sequence, export_step, DumpError, DumpOptions, ExportCursor, ExportProgress, ExportTotals, StepBudget, TableCount};
use crate::keys::StoredFormat;
use crate::ports::{Clock, ObjectStore, PortError, SqlSource};
use crate::upload::{self, StreamingUpload, UploadProgress, UploadSpec};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub use crate::upload::PART_SIZE;

/// What to back up where; fixed at the first step and kept in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupTarget {
    pub database: String,
    /// The object's final key.
    pub key: String,
    /// Prefix of the staging objects that carry tails between steps.
    pub staging_prefix: String,
    pub gzip: bool,
    /// Custom metadata identifying the object (job, database, kind, ...).
    pub metadata: BTreeMap<String, String>,
    pub part_size: usize,
    /// The header's creation time.
    pub started_at: DateTime<Utc>,
    pub rows_per_query: u32,
    /// Encrypt the dump to these age recipients (only the first step reads them: later steps
    /// continue the encryption from the checkpoint).
    #[serde(default)]
    pub recipients: Vec<Recipient>,
}

impl BackupTarget {
    pub fn content_type(&self) -> &'static str {
        StoredFormat { gzip: self.gzip, encrypted: !self.recipients.is_empty() }.content_type()
    }

    fn upload_spec(&self) -> UploadSpec {
        UploadSpec {
            key: self.key.clone(),
            staging_prefix: self.staging_prefix.clone(),
            content_type: self.content_type().into(),
            metadata: self.metadata.clone(),
            part_size: self.part_size,
            gzip: self.gzip,
            recipients: self.recipients.clone(),
        }
    }

    fn dump_options(&self) -> DumpOptions {
        let mut opts = DumpOptions::new(&self.database, self.started_at);
        opts.rows_per_query = self.rows_per_query;
        opts
    }
}

/// Everything the next step needs. Small: it grows with the number of tables and parts, never
/// with the rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupCheckpoint {
    /// Steps done so far.
    pub step: u32,
    pub target: BackupTarget,
    pub export: ExportState,
    #[serde(flatten)]
    pub upload: UploadProgress,
}

/// How far the export behind a checkpoint has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportState {
    /// Rows remain: continue from this cursor.
    Exporting(ExportCursor),
    /// Every byte is produced: the next step only completes the multipart upload.
    Finished(ExportTotals),
}

impl BackupCheckpoint {
    /// The D1 bookmark the export started at: later steps read at or after it.
    pub fn bookmark(&self) -> Option<&str> {
        match &self.export {
            ExportState::Exporting(cursor) => cursor.bookmark(),
            ExportState::Finished(totals) => totals.bookmark.as_deref(),
        }
    }
}

/// A finished backup, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub key: String,
    pub tables: Vec<TableCount>,
    pub rows: u64,
    /// Size of the stored object.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the stored object.
    pub sha256: String,
    /// For an encrypted dump, the SHA-256 of its plaintext (what `age -d` gives back).
    pub plaintext_sha256: Option<String>,
    pub steps: u32,
    /// The D1 bookmark the export started at, when the source has one.
    pub bookmark: Option<String>,
    /// The schema objects exported.
    pub schema: Vec<SchemaObject>,
    /// The AUTOINCREMENT counters exported.
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupProgress {
    /// Continue with `checkpoint` in another step; once the checkpoint is saved, the staging
    /// objects `superseded` (what the previous step parked) can be deleted.
    Paused { checkpoint: BackupCheckpoint, superseded: Vec<String> },
    /// The object is complete at its key; once that is recorded, `superseded` can be deleted.
    Complete { summary: BackupSummary, superseded: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupError {
    Dump(DumpError),
    Store(PortError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Dump(e) => e.fmt(f),
            BackupError::Store(e) => write!(f, "storing the dump failed: {e}"),
        }
    }
}

impl std::error::Error for BackupError {}

impl From<PortError> for BackupError {
    fn from(e: PortError) -> Self {
        BackupError::Store(e)
    }
}

/// Runs one step of a backup: the first when `resume` is `None`, else the one after `resume`.
/// On error, nothing of the checkpoint it resumed from is lost: running the same step again
/// from the same checkpoint writes the same bytes to the same parts.
pub async fn backup_step<S: SqlSource, O: ObjectStore, C: Clock>(
    source: &mut S,
    store: &mut O,
    clock: &C,
    target: &BackupTarget,
    budget: StepBudget,
    resume: Option<&BackupCheckpoint>,
) -> Result<BackupProgress, BackupError> {
    let target = resume.map(|c| &c.target).unwrap_or(target);
    let superseded = resume.map(|c| c.upload.staged_keys()).unwrap_or_default();
    let step = resume.map_or(0, |c| c.step) + 1;
    let cursor = match resume.map(|c| &c.export) {
        Some(ExportState::Finished(totals)) => {
            return complete_multipart(store, resume.unwrap(), totals, step, superseded).await
        }
        Some(ExportState::Exporting(cursor)) => Some(cursor.clone()),
        None => None,
    };

    let spec = target.upload_spec();
    let mut writer = StreamingUpload::resume(store, &spec, resume.map(|c| &c.upload)).await?;
    let result = export_step(source, &mut writer, clock, &target.dump_options(), budget, cursor).await;
    let paused = match result {
        Ok(ExportProgress::Paused(cursor)) => ExportState::Exporting(cursor),
        // A multipart dump is completed in a step of its own, which can tell from the object
        // whether an earlier attempt already completed it (R2 forgets a completed upload).
        Ok(ExportProgress::Finished(totals)) => {
            let ended = writer.end().await;
            if let Err(e) = ended {
                writer.abandon().await;
                return Err(e.into());
            }
            if writer.is_multipart() {
                ExportState::Finished(totals)
            } else {
                return put_whole(writer, target, totals, step, superseded).await;
            }
        }
        Err(e) => {
            writer.abandon().await;
            return Err(BackupError::Dump(e));
        }
    };
    let upload = writer.pause(step).await?;
    Ok(BackupProgress::Paused {
        checkpoint: BackupCheckpoint { step, target: target.clone(), export: paused, upload },
        superseded,
    })
}

/// The last step of a dump small enough for one put.
async fn put_whole<O: ObjectStore>(
    writer: StreamingUpload<'_, O>,
    target: &BackupTarget,
    totals: ExportTotals,
    step: u32,
    superseded: Vec<String>,
) -> Result<BackupProgress, BackupError> {
    let plaintext_sha256 = writer.plain_sha256();
    let mut facts = BTreeMap::new();
    facts.insert("rows".to_owned(), totals.rows.to_string());
    facts.insert("tables".to_owned(), totals.tables.len().to_string());
    let (bytes, sha256) = writer.put_whole(facts).await?;
    Ok(BackupProgress::Complete {
        summary: BackupSummary {
            key: target.key.clone(),
            tables: totals.tables,
            rows: totals.rows,
            bytes,
            sha256,
            plaintext_sha256,
            steps: step,
            bookmark: totals.bookmark,
            schema: totals.schema,
            sequences: totals.sequences,
        },
        superseded,
    })
}

/// The last step of a multipart dump: uploads the tail as the last part and completes the
/// upload, unless an earlier attempt of this step already did.
async fn complete_multipart<O: ObjectStore>(
    store: &mut O,
    checkpoint: &BackupCheckpoint,
    totals: &ExportTotals,
    step: u32,
    superseded: Vec<String>,
) -> Result<BackupProgress, BackupError> {
    let (bytes, sha256) = upload::complete(store, &checkpoint.target.upload_spec(), &checkpoint.upload).await?;
    let plaintext_sha256 = checkpoint.upload.plain_hash.as_ref().map(|h| h.hex_digest());
    Ok(BackupProgress::Complete {
        summary: BackupSummary {
            key: checkpoint.target.key.clone(),
            tables: totals.tables.clone(),
            rows: totals.rows,
            bytes,
            sha256,
            plaintext_sha256,
            steps: step,
            bookmark: totals.bookmark.clone(),
            schema: totals.schema.clone(),
            sequences: totals.sequences.clone(),
        },
        superseded,
    })
}

/// Frees what a backup that will never finish holds: its upload's parts and its tail.
pub async fn discard<O: ObjectStore>(store: &mut O, checkpoint: &BackupCheckpoint) -> Result<(), PortError> {
    upload::discard(store, &checkpoint.target.key, &checkpoint.upload).await
}
