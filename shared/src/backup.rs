//! One backup, exported in as many steps as its budgets need, into one object.
//!
//! Each step streams the dump into an [`ObjectStore`] multipart upload in parts of exactly
//! `part_size` bytes (R2 wants every part but the last to be the same size). What a step
//! produced beyond its last whole part (the tail, less than one part) is parked in a staging
//! object and picked up by the next step, so memory never holds more than about one part.
//! The object appears at its final key only when the last step completes the upload: a
//! half-done backup is never visible as a backup.
//!
//! The steps of an export are byte for byte the dump a single step would write; with gzip,
//! each step writes one gzip member, and gzip readers join members into the same SQL.

use crate::dump::{export_step, DumpError, DumpOptions, ExportCursor, ExportProgress, ExportTotals, StepBudget, TableCount};
use crate::ports::{ByteSink, Clock, ObjectInfo, ObjectStore, PortError, SqlSource, UploadedPart};
use crate::sha256::ResumableSha256;
use chrono::{DateTime, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

/// R2's minimum part size, and the size of every part but the last.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

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
}

impl BackupTarget {
    pub fn content_type(&self) -> &'static str {
        if self.gzip {
            "application/gzip"
        } else {
            "application/sql; charset=utf-8"
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
    pub upload_id: Option<String>,
    pub parts: Vec<UploadedPart>,
    /// Over every byte of the object produced so far, the tail included.
    pub hash: ResumableSha256,
    /// The staging object holding the tail, when there is one.
    pub tail_key: Option<String>,
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
    pub steps: u32,
    /// The D1 bookmark the export started at, when the source has one.
    pub bookmark: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupProgress {
    /// Continue with `checkpoint` in another step; once the checkpoint is saved, the staging
    /// object `superseded` (the previous step's tail) can be deleted.
    Paused { checkpoint: BackupCheckpoint, superseded: Option<String> },
    /// The object is complete at its key; once that is recorded, `superseded` can be deleted.
    Complete { summary: BackupSummary, superseded: Option<String> },
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
    let superseded = resume.and_then(|c| c.tail_key.clone());
    let step = resume.map_or(0, |c| c.step) + 1;
    let cursor = match resume.map(|c| &c.export) {
        Some(ExportState::Finished(totals)) => {
            return complete_multipart(store, resume.unwrap(), totals, step, superseded).await
        }
        Some(ExportState::Exporting(cursor)) => Some(cursor.clone()),
        None => None,
    };

    let mut writer = ObjectWriter::resume(store, target, resume).await?;
    let result = export_step(
        source,
        &mut writer,
        clock,
        &target.dump_options(),
        budget,
        cursor,
    )
    .await;
    let outcome = match result {
        Ok(ExportProgress::Paused(cursor)) => writer.pause(step, ExportState::Exporting(cursor)).await.map(|checkpoint| {
            BackupProgress::Paused { checkpoint, superseded }
        }),
        // A multipart dump is completed in a step of its own, which can tell from the object
        // whether an earlier attempt already completed it (R2 forgets a completed upload).
        Ok(ExportProgress::Finished(totals)) if writer.upload_id.is_some() => writer
            .pause(step, ExportState::Finished(totals))
            .await
            .map(|checkpoint| BackupProgress::Paused { checkpoint, superseded }),
        Ok(ExportProgress::Finished(totals)) => writer.put_whole(&totals).await.map(|(bytes, sha256)| {
            BackupProgress::Complete {
                summary: BackupSummary {
                    key: target.key.clone(),
                    tables: totals.tables,
                    rows: totals.rows,
                    bytes,
                    sha256,
                    steps: step,
                    bookmark: totals.bookmark,
                },
                superseded,
            }
        }),
        Err(e) => Err(BackupError::Dump(e)),
    };
    if outcome.is_err() {
        writer.abandon().await;
    }
    outcome
}

/// The last step of a multipart dump: uploads the tail as the last part and completes the
/// upload, unless an earlier attempt of this step already did.
async fn complete_multipart<O: ObjectStore>(
    store: &mut O,
    checkpoint: &BackupCheckpoint,
    totals: &ExportTotals,
    step: u32,
    superseded: Option<String>,
) -> Result<BackupProgress, BackupError> {
    let target = &checkpoint.target;
    let totals = totals.clone();
    let (bytes, sha256) = (checkpoint.hash.len(), checkpoint.hash.hex_digest());
    let already_complete = store.head(&target.key).await? == Some(bytes);
    if !already_complete {
        let mut writer = ObjectWriter::resume(store, target, Some(checkpoint)).await?;
        // The tail was hashed when it was produced; only its upload is left.
        let tail = std::mem::take(&mut writer.buffer);
        if !tail.is_empty() {
            writer.upload_part(tail).await?;
        }
        let upload_id = writer.upload_id.clone().expect("a multipart checkpoint has an upload");
        let parts = std::mem::take(&mut writer.parts);
        store.complete_multipart(&target.key, &upload_id, &parts).await?;
        verify_size(store, &target.key, bytes).await?;
    }
    Ok(BackupProgress::Complete {
        summary: BackupSummary {
            key: target.key.clone(),
            tables: totals.tables,
            rows: totals.rows,
            bytes,
            sha256,
            steps: step,
            bookmark: totals.bookmark,
        },
        superseded,
    })
}

/// No run is recorded as a success without its whole object in place.
async fn verify_size<O: ObjectStore>(store: &mut O, key: &str, bytes: u64) -> Result<(), BackupError> {
    match store.head(key).await? {
        Some(size) if size == bytes => Ok(()),
        found => Err(BackupError::Store(PortError(format!(
            "{key} holds {found:?} bytes after completion, expected {bytes}"
        )))),
    }
}

/// Frees what a backup that will never finish holds: its upload's parts and its tail.
pub async fn discard<O: ObjectStore>(store: &mut O, checkpoint: &BackupCheckpoint) -> Result<(), PortError> {
    if let Some(upload_id) = &checkpoint.upload_id {
        store.abort_multipart(&checkpoint.target.key, upload_id).await?;
    }
    if let Some(tail) = &checkpoint.tail_key {
        store.delete(tail).await?;
    }
    Ok(())
}

/// The object being written: hashes every byte, cuts parts, starts the multipart upload only
/// once a whole part exists (a small dump is stored with one `put`).
struct ObjectWriter<'a, O: ObjectStore> {
    store: &'a mut O,
    target: &'a BackupTarget,
    upload_id: Option<String>,
    /// Whether this step started the upload (and so must abort it if the step fails).
    started_upload: bool,
    parts: Vec<UploadedPart>,
    buffer: Vec<u8>,
    hash: ResumableSha256,
    gzip: Option<GzEncoder<Vec<u8>>>,
}

impl<'a, O: ObjectStore> ObjectWriter<'a, O> {
    async fn resume(
        store: &'a mut O,
        target: &'a BackupTarget,
        from: Option<&BackupCheckpoint>,
    ) -> Result<ObjectWriter<'a, O>, BackupError> {
        let buffer = match from.and_then(|c| c.tail_key.as_deref()) {
            Some(tail) => store
                .get(tail)
                .await?
                .ok_or_else(|| PortError(format!("the staging object {tail} holding the dump's tail is missing")))?,
            None => Vec::new(),
        };
        Ok(ObjectWriter {
            store,
            target,
            upload_id: from.and_then(|c| c.upload_id.clone()),
            started_upload: false,
            parts: from.map(|c| c.parts.clone()).unwrap_or_default(),
            buffer,
            hash: from.map(|c| c.hash.clone()).unwrap_or_default(),
            gzip: target.gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
        })
    }

    /// Takes bytes as they will be stored.
    async fn accept(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        self.hash.update(bytes);
        self.buffer.extend_from_slice(bytes);
        while self.buffer.len() >= self.target.part_size {
            let rest = self.buffer.split_off(self.target.part_size);
            let part = std::mem::replace(&mut self.buffer, rest);
            self.upload_part(part).await?;
        }
        Ok(())
    }

    async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let info = ObjectInfo {
                    content_type: self.target.content_type().into(),
                    custom: self.target.metadata.clone(),
                };
                let id = self.store.create_multipart(&self.target.key, &info).await?;
                self.upload_id = Some(id.clone());
                self.started_upload = true;
                id
            }
        };
        let number = u16::try_from(self.parts.len() + 1)
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| PortError("the dump needs more than R2's 10,000 parts".into()))?;
        let etag = self.store.upload_part(&self.target.key, &upload_id, number, bytes).await?;
        self.parts.push(UploadedPart { number, etag });
        Ok(())
    }

    /// Closes this step's gzip member, if any.
    async fn end_member(&mut self) -> Result<(), PortError> {
        if let Some(encoder) = self.gzip.take() {
            let rest = encoder.finish().map_err(|e| PortError(format!("gzip: {e}")))?;
            self.accept(&rest).await?;
        }
        Ok(())
    }

    /// Parks the tail and returns the checkpoint to continue from.
    async fn pause(
        &mut self,
        step: u32,
        export: ExportState,
    ) -> Result<BackupCheckpoint, BackupError> {
        self.end_member().await?;
        let tail_key = if self.buffer.is_empty() {
            None
        } else {
            let key = format!("{}tail-{step:06}", self.target.staging_prefix);
            let info = ObjectInfo { content_type: "application/octet-stream".into(), custom: BTreeMap::new() };
            self.store.put(&key, std::mem::take(&mut self.buffer), &info).await?;
            Some(key)
        };
        self.started_upload = false;
        Ok(BackupCheckpoint {
            step,
            target: self.target.clone(),
            export,
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
            hash: self.hash.clone(),
            tail_key,
        })
    }

    /// Stores a dump that never needed a multipart upload with one put, which can carry the
    /// verified facts as metadata; returns its size and SHA-256.
    async fn put_whole(&mut self, totals: &ExportTotals) -> Result<(u64, String), BackupError> {
        self.end_member().await?;
        let (bytes, sha256) = (self.hash.len(), self.hash.hex_digest());
        let mut custom = self.target.metadata.clone();
        custom.insert("sha256".into(), sha256.clone());
        custom.insert("bytes".into(), bytes.to_string());
        custom.insert("rows".into(), totals.rows.to_string());
        custom.insert("tables".into(), totals.tables.len().to_string());
        let info = ObjectInfo { content_type: self.target.content_type().into(), custom };
        let body = std::mem::take(&mut self.buffer);
        self.store.put(&self.target.key, body, &info).await?;
        verify_size(self.store, &self.target.key, bytes).await?;
        Ok((bytes, sha256))
    }

    /// After a failed step: aborts an upload this step started (an upload from an earlier
    /// step stays, since retrying the step resumes it).
    async fn abandon(self) {
        if let (true, Some(upload_id)) = (self.started_upload, &self.upload_id) {
            let _ = self.store.abort_multipart(&self.target.key, upload_id).await;
        }
    }
}

impl<O: ObjectStore> ByteSink for ObjectWriter<'_, O> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        match &mut self.gzip {
            Some(encoder) => {
                encoder.write_all(bytes).map_err(|e| PortError(format!("gzip: {e}")))?;
                let compressed = std::mem::take(encoder.get_mut());
                self.accept(&compressed).await
            }
            None => self.accept(bytes).await,
        }
    }
}
