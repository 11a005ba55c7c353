//! The weekly archive: an ISO week's dailies in one `weekly/YYYY-Www.tar.gz`, written in as many
//! steps as its budgets need.
//!
//! The archive is a POSIX (ustar) tar, gzip-compressed, with members `YYYY-MM-DD/<db>.sql` (or
//! `.sql.gz`, `.sql.age`, `.sql.gz.age` as the daily is stored: members are the dailies byte
//! for byte, so an encrypted daily stays encrypted inside the archive) and a last
//! member `manifest.json` listing every member and every daily left out.
//!
//! Dailies are read from the store a bounded range at a time and streamed through a
//! [`StreamingUpload`], so memory stays flat whatever their size. Each daily's SHA-256 is
//! computed as it goes in and checked against the inventory: a daily that fails the check (or
//! is missing, or has the wrong size) cannot be taken back out of bytes already uploaded, so
//! the archive starts over without it. That costs a rewrite only when something is already
//! wrong, and keeps the common path to a single read of every daily.
//!
//! After completion the stored archive is read back and its SHA-256 compared with what was
//! written (whole when it fits the step's read budget, through [`ObjectStore::sha256`]): only a
//! verified archive is reported complete, and only a verified archive lets retention delete the
//! dailies inside it.

use crate::ports::{ByteSink, Clock, ObjectStore, PortError};
use crate::sha256::ResumableSha256;
use crate::upload::{self, StreamingUpload, UploadProgress, UploadSpec};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bytes of a daily (or of the archive, when verifying) read per request: bounds memory and
/// keeps the number of subrequests per step small.
pub const READ_CHUNK: u64 = 4 * 1024 * 1024;

const BLOCK: u64 = 512;
pub const MANIFEST_PATH: &str = "manifest.json";
pub const MANIFEST_FORMAT: &str = "d1-backup-weekly/1";

/// A daily to put into the archive, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveMember {
    pub database: String,
    pub date: NaiveDate,
    /// The daily's R2 key.
    pub source_key: String,
    /// Its path inside the archive: `YYYY-MM-DD/<db>.sql` (or `.sql.gz`, either with `.age`).
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub rows: u64,
    pub tables: u64,
    /// Modification time in the tar header: when the daily was stored (Unix seconds).
    pub mtime: i64,
}

impl ArchiveMember {
    /// The member path for a daily at `source_key` (`daily/<date>/<file>` → `<date>/<file>`).
    pub fn path_for(source_key: &str) -> Option<String> {
        source_key.strip_prefix("daily/").map(str::to_owned)
    }
}

/// A daily the archive does not contain, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExcludedMember {
    pub member: ArchiveMember,
    pub reason: String,
}

/// What to archive where; fixed at the first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivePlan {
    /// `YYYY-Www`.
    pub week: String,
    pub key: String,
    pub staging_prefix: String,
    pub part_size: usize,
    pub created_at: DateTime<Utc>,
    /// Sorted by path: the archive's member order.
    pub members: Vec<ArchiveMember>,
}

impl ArchivePlan {
    fn upload_spec(&self) -> UploadSpec {
        let mut metadata = BTreeMap::new();
        metadata.insert("week".to_owned(), self.week.clone());
        metadata.insert("kind".to_owned(), "weekly".to_owned());
        UploadSpec {
            key: self.key.clone(),
            staging_prefix: self.staging_prefix.clone(),
            content_type: "application/gzip".into(),
            metadata,
            part_size: self.part_size,
            gzip: true,
            recipients: Vec::new(),
        }
    }
}

/// Per-step limits, so a step fits one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveBudget {
    /// Bytes read from the store (dailies, or the archive when verifying).
    pub max_read_bytes: u64,
    /// Wall-clock time, in milliseconds.
    pub max_millis: u64,
}

impl ArchiveBudget {
    pub const UNLIMITED: ArchiveBudget = ArchiveBudget { max_read_bytes: u64::MAX, max_millis: u64::MAX };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum ArchivePhase {
    /// Copying member `member` (an index into the plan's members), `offset` bytes in.
    Writing { member: usize, offset: u64, member_hash: ResumableSha256 },
    /// Every byte is produced: complete the multipart upload.
    Completing,
    /// The archive is stored as `bytes` bytes with `sha256`: read it back, `offset` bytes in.
    Verifying { bytes: u64, sha256: String, offset: u64, hash: ResumableSha256 },
}

/// Everything the next step needs; small (it grows with members and parts, never with bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveCheckpoint {
    pub step: u32,
    pub plan: ArchivePlan,
    pub phase: ArchivePhase,
    pub excluded: Vec<ExcludedMember>,
    pub upload: UploadProgress,
}

impl ArchiveCheckpoint {
    pub fn start(plan: ArchivePlan) -> ArchiveCheckpoint {
        ArchiveCheckpoint {
            step: 0,
            plan,
            phase: ArchivePhase::Writing { member: 0, offset: 0, member_hash: ResumableSha256::new() },
            excluded: Vec::new(),
            upload: UploadProgress::default(),
        }
    }
}

/// A verified archive, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub members: Vec<ArchiveMember>,
    pub excluded: Vec<ExcludedMember>,
    pub steps: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveProgress {
    /// Continue from `checkpoint`; once it is saved, the staging objects in `superseded` can go.
    Paused { checkpoint: ArchiveCheckpoint, superseded: Vec<String> },
    /// The archive is stored and verified; once recorded, `superseded` can go.
    Complete { summary: ArchiveSummary, superseded: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    Store(PortError),
    /// The stored archive does not read back as what was written.
    Verification(String),
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveError::Store(e) => write!(f, "archive storage failed: {e}"),
            ArchiveError::Verification(e) => write!(f, "archive verification failed: {e}"),
        }
    }
}

impl std::error::Error for ArchiveError {}

impl From<PortError> for ArchiveError {
    fn from(e: PortError) -> Self {
        ArchiveError::Store(e)
    }
}

/// The manifest member: what the archive holds and what it left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub week: String,
    pub created_at: DateTime<Utc>,
    pub members: Vec<ArchiveMember>,
    pub excluded: Vec<ExcludedMember>,
}

struct Meter<'c, C: Clock> {
    clock: &'c C,
    budget: ArchiveBudget,
    started_at: i64,
    read: u64,
}

impl<C: Clock> Meter<'_, C> {
    /// Whether the step must stop before reading more. Every step reads at least one chunk,
    /// so an archive always makes progress.
    fn exhausted(&self) -> bool {
        self.read > 0
            && (self.read >= self.budget.max_read_bytes
                || (self.clock.now_millis() - self.started_at) as u64 >= self.budget.max_millis)
    }

    /// Whether `bytes` more can be read in this step (so something read whole need not pause).
    fn fits(&self, bytes: u64) -> bool {
        bytes <= self.budget.max_read_bytes.saturating_sub(self.read)
    }
}

/// Runs one step of a weekly archive from `checkpoint` (see [`ArchiveCheckpoint::start`]).
/// On error nothing of `checkpoint` is lost: running the same step again resumes it.
pub async fn archive_step<O: ObjectStore, C: Clock>(
    store: &mut O,
    clock: &C,
    budget: ArchiveBudget,
    checkpoint: &ArchiveCheckpoint,
) -> Result<ArchiveProgress, ArchiveError> {
    let mut state = checkpoint.clone();
    state.step += 1;
    let superseded: Vec<String> = checkpoint.upload.tail_key.iter().cloned().collect();
    let mut meter = Meter { clock, budget, started_at: clock.now_millis(), read: 0 };
    loop {
        match state.phase.clone() {
            ArchivePhase::Writing { member, offset, member_hash } => {
                match write_members(store, &mut meter, &mut state, member, offset, member_hash).await? {
                    Written::Paused => return Ok(ArchiveProgress::Paused { checkpoint: state, superseded }),
                    Written::Restart => continue,
                    // A multipart archive is completed in a step of its own, once the
                    // checkpoint saying every part is uploaded is saved: R2 forgets a completed
                    // upload, so a retry must never go back to uploading parts into it.
                    Written::Done if state.phase == ArchivePhase::Completing => {
                        return Ok(ArchiveProgress::Paused { checkpoint: state, superseded })
                    }
                    Written::Done => {}
                }
            }
            ArchivePhase::Completing => {
                let (bytes, sha256) = upload::complete(store, &state.plan.upload_spec(), &state.upload).await?;
                state.phase = ArchivePhase::Verifying { bytes, sha256, offset: 0, hash: ResumableSha256::new() };
            }
            ArchivePhase::Verifying { bytes: expected, sha256, mut offset, mut hash } => {
                if offset == 0 && meter.fits(expected) {
                    // It fits this step: hashed whole, which a Worker does natively as the
                    // object streams, without copying it into WebAssembly.
                    let found = store.sha256(&state.plan.key).await?;
                    if found.as_ref() != Some(&(expected, sha256.clone())) {
                        return Err(ArchiveError::Verification(format!(
                            "{} does not read back as the archive written ({expected} bytes, SHA-256 {sha256}): {found:?}",
                            state.plan.key
                        )));
                    }
                } else {
                    while offset < expected {
                        if meter.exhausted() {
                            state.phase = ArchivePhase::Verifying { bytes: expected, sha256, offset, hash };
                            return Ok(ArchiveProgress::Paused { checkpoint: state, superseded });
                        }
                        let length = READ_CHUNK.min(expected - offset);
                        let chunk = store.get_range(&state.plan.key, offset, length).await?.ok_or_else(|| {
                            ArchiveError::Verification(format!("{} is missing after completion", state.plan.key))
                        })?;
                        if chunk.len() as u64 != length {
                            return Err(ArchiveError::Verification(format!(
                                "{} is shorter than the {expected} bytes written",
                                state.plan.key
                            )));
                        }
                        meter.read += length;
                        hash.update(&chunk);
                        offset += length;
                    }
                    if hash.hex_digest() != sha256 || store.head(&state.plan.key).await? != Some(expected) {
                        return Err(ArchiveError::Verification(format!(
                            "{} does not read back as the archive written (SHA-256 {sha256})",
                            state.plan.key
                        )));
                    }
                }
                let plan = state.plan;
                return Ok(ArchiveProgress::Complete {
                    summary: ArchiveSummary {
                        key: plan.key,
                        bytes: expected,
                        sha256,
                        members: plan.members,
                        excluded: state.excluded,
                        steps: state.step,
                    },
                    superseded,
                });
            }
        }
    }
}

enum Written {
    /// The budget ran out; `state` holds where to continue.
    Paused,
    /// A daily failed its check and was excluded: start over (the upload is aborted).
    Restart,
    /// Every byte is produced; `state.phase` says what comes next.
    Done,
}

async fn write_members<O: ObjectStore, C: Clock>(
    store: &mut O,
    meter: &mut Meter<'_, C>,
    state: &mut ArchiveCheckpoint,
    mut index: usize,
    mut offset: u64,
    mut member_hash: ResumableSha256,
) -> Result<Written, ArchiveError> {
    let spec = state.plan.upload_spec();
    let mut writer = StreamingUpload::resume(store, &spec, Some(&state.upload)).await?;
    let result: Result<Option<String>, PortError> = async {
        // Whether the store hashes the member being copied (natively) instead of this code.
        let mut native = false;
        while let Some(member) = state.plan.members.get(index) {
            if offset == 0 {
                // Stop between members, never between a member's header and its first byte
                // (the checkpoint's offset 0 means "header not written").
                if meter.exhausted() {
                    return Ok(None);
                }
                match writer.store().head(&member.source_key).await? {
                    Some(size) if size == member.bytes => {}
                    found => {
                        let reason = match found {
                            None => "the daily is missing from R2".to_owned(),
                            Some(size) => format!("R2 holds {size} bytes, the inventory records {}", member.bytes),
                        };
                        return Ok(Some(reason));
                    }
                }
                // A member read whole in this step can be hashed by the store as it reads it
                // (in a Worker, natively); one that may pause midway needs a hash that can be
                // saved in the checkpoint.
                native = meter.fits(member.bytes) && writer.store().digest_reads(&member.source_key);
                writer.write(&tar_header(&member.path, member.bytes, member.mtime)?).await?;
            }
            while offset < member.bytes {
                let length = READ_CHUNK.min(member.bytes - offset);
                let chunk = writer.store().get_range(&member.source_key, offset, length).await?;
                let chunk = match chunk {
                    Some(chunk) if chunk.len() as u64 == length => chunk,
                    _ => return Ok(Some("the daily changed in R2 while it was archived".to_owned())),
                };
                meter.read += length;
                if !native {
                    member_hash.update(&chunk);
                }
                writer.write(&chunk).await?;
                offset += length;
                // A natively hashed member is finished in this step: its read is within budget.
                if offset < member.bytes && !native && meter.exhausted() {
                    return Ok(None);
                }
            }
            let sha256 = if native { writer.store().read_digest().await? } else { member_hash.hex_digest() };
            native = false;
            if sha256 != member.sha256 {
                return Ok(Some(format!("SHA-256 is {sha256}, the inventory records {}", member.sha256)));
            }
            writer.write(&padding(member.bytes)).await?;
            index += 1;
            offset = 0;
            member_hash = ResumableSha256::new();
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            week: state.plan.week.clone(),
            created_at: state.plan.created_at,
            members: state.plan.members.clone(),
            excluded: state.excluded.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| PortError::unavailable(format!("manifest: {e}")))?;
        json.push(b'\n');
        writer.write(&tar_header(MANIFEST_PATH, json.len() as u64, state.plan.created_at.timestamp())?).await?;
        writer.write(&json).await?;
        writer.write(&padding(json.len() as u64)).await?;
        // The end of a tar archive: two zero blocks.
        writer.write(&[0u8; 2 * BLOCK as usize]).await?;
        Ok(None)
    }
    .await;

    // Every byte is written: closing the last gzip member may still upload a part, so whether
    // the archive became a multipart upload is known only after.
    let result = match result {
        Ok(None) if index >= state.plan.members.len() => writer.end().await.map(|()| None),
        other => other,
    };
    match result {
        Err(e) => {
            writer.abandon().await;
            Err(e.into())
        }
        Ok(Some(reason)) => {
            // Bytes already uploaded cannot be taken back: drop the upload and start over.
            writer.abort().await?;
            let member = state.plan.members.remove(index);
            state.excluded.push(ExcludedMember { member, reason });
            state.upload = UploadProgress::default();
            state.phase = ArchivePhase::Writing { member: 0, offset: 0, member_hash: ResumableSha256::new() };
            Ok(Written::Restart)
        }
        Ok(None) if index < state.plan.members.len() => {
            state.upload = writer.pause(state.step).await?;
            state.phase = ArchivePhase::Writing { member: index, offset, member_hash };
            Ok(Written::Paused)
        }
        Ok(None) if writer.is_multipart() => {
            state.upload = writer.pause(state.step).await?;
            state.phase = ArchivePhase::Completing;
            Ok(Written::Done)
        }
        Ok(None) => {
            let mut facts = BTreeMap::new();
            facts.insert("members".to_owned(), state.plan.members.len().to_string());
            // A small archive: one put.
            let (bytes, sha256) = writer.put_whole(facts).await?;
            state.upload = UploadProgress::default();
            state.phase = ArchivePhase::Verifying { bytes, sha256, offset: 0, hash: ResumableSha256::new() };
            Ok(Written::Done)
        }
    }
}

/// A ustar header for a regular file. The `tar` crate builds it (path splitting into
/// prefix/name, octal fields, checksum) rather than hand-written offsets.
fn tar_header(path: &str, size: u64, mtime: i64) -> Result<[u8; BLOCK as usize], PortError> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).map_err(|e| PortError::unavailable(format!("tar path {path}: {e}")))?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime.max(0) as u64);
    header.set_cksum();
    Ok(*header.as_bytes())
}

/// Zeros up to the next 512-byte block after a member of `size` bytes.
fn padding(size: u64) -> Vec<u8> {
    vec![0u8; ((BLOCK - size % BLOCK) % BLOCK) as usize]
}
