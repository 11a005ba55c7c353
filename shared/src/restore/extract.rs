//! Taking one daily out of a weekly archive, so it can be restored like any dump.
//!
//! The archive (`weekly/YYYY-Www.tar.gz`) is read from the start, a bounded piece per step, and
//! the member's bytes are copied into an object of their own with the streamed upload the
//! exporter uses. The copy must have the SHA-256 the archive recorded for the member.

use super::reader::{DumpReader, ReadError, ReadPosition};
use super::RestoreError;
use crate::ports::{ByteSink, ObjectStore};
use crate::upload::{self, StreamingUpload, UploadProgress, UploadSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const BLOCK: usize = 512;
/// Bytes passed over or copied at a time, so a step stops close to its budget.
const PIECE: u64 = 64 * 1024;

/// A dump inside a weekly archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedDump {
    pub archive_key: String,
    /// The member's path in the archive.
    pub path: String,
    /// The member's SHA-256, as recorded when it was archived.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum TarState {
    /// At a header block.
    Header,
    /// Passing over another member's data and padding.
    Skip { remaining: u64 },
    /// Copying the member's data, then passing its padding.
    Copy { remaining: u64 },
}

/// Where an extraction stands between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractCheckpoint {
    position: ReadPosition,
    state: TarState,
    upload: UploadProgress,
    step: u32,
}

impl ExtractCheckpoint {
    /// The copy's upload so far (an open multipart upload once it outgrew one part).
    pub fn upload(&self) -> &UploadProgress {
        &self.upload
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractProgress {
    /// Continue from the checkpoint; `superseded` (the previous step's parked tail) can go once
    /// the checkpoint is saved.
    Paused { checkpoint: ExtractCheckpoint, superseded: Option<String> },
    /// The member is at `dest.key`, checked.
    Done { bytes: u64, superseded: Option<String> },
}

fn corrupt(e: ReadError) -> RestoreError {
    match e {
        ReadError::Store(e) => RestoreError::Port(e),
        ReadError::Corrupt(message) => RestoreError::Dump { table: None, message: format!("the weekly archive: {message}") },
    }
}

/// Runs one step of copying `member` to `dest` (a plain object: no gzip of its own), reading
/// at most about `max_bytes` of the archive's tar stream.
pub async fn extract_step<O: ObjectStore>(
    store: &mut O,
    member: &ArchivedDump,
    dest: &UploadSpec,
    max_bytes: u64,
    from: Option<&ExtractCheckpoint>,
) -> Result<ExtractProgress, RestoreError> {
    let superseded = from.and_then(|c| c.upload.tail_key.clone());
    let step = from.map_or(0, |c| c.step) + 1;
    let mut state = from.map_or(TarState::Header, |c| c.state.clone());
    let mut reader = DumpReader::open(&member.archive_key, true, &from.map(|c| c.position.clone()).unwrap_or_default());
    let mut writer = StreamingUpload::resume(store, dest, from.map(|c| &c.upload)).await?;
    let mut read = 0u64;
    let result: Result<bool, RestoreError> = async {
        loop {
            if read >= max_bytes {
                return Ok(false);
            }
            let buffered = reader.buffered().len();
            let wanted = if state == TarState::Header { BLOCK } else { 1 };
            if buffered < wanted {
                if !reader.fill(writer.store()).await.map_err(corrupt)? {
                    return Err(RestoreError::Dump {
                        table: None,
                        message: format!("{} ends before its member {}", member.archive_key, member.path),
                    });
                }
                continue;
            }
            match state {
                TarState::Header => {
                    let block = &reader.buffered()[..BLOCK];
                    if block.iter().all(|b| *b == 0) {
                        return Err(RestoreError::Dump {
                            table: None,
                            message: format!("{} holds no member {}", member.archive_key, member.path),
                        });
                    }
                    let header = tar::Header::from_byte_slice(block);
                    let size = header.entry_size().map_err(|e| RestoreError::Dump {
                        table: None,
                        message: format!("{} has an unreadable tar header: {e}", member.archive_key),
                    })?;
                    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    let is_member = header.path_bytes().as_ref() == member.path.as_bytes();
                    state = if is_member { TarState::Copy { remaining: size } } else { TarState::Skip { remaining: padded } };
                    reader.consume(BLOCK);
                    read += BLOCK as u64;
                }
                TarState::Skip { remaining } => {
                    let n = (buffered as u64).min(remaining).min(PIECE);
                    reader.consume(n as usize);
                    read += n;
                    state = if n == remaining { TarState::Header } else { TarState::Skip { remaining: remaining - n } };
                }
                TarState::Copy { remaining } => {
                    let n = (buffered as u64).min(remaining).min(PIECE) as usize;
                    let bytes = reader.buffered()[..n].to_vec();
                    writer.write(&bytes).await?;
                    reader.consume(n);
                    read += n as u64;
                    if n as u64 == remaining {
                        return Ok(true);
                    }
                    state = TarState::Copy { remaining: remaining - n as u64 };
                }
            }
        }
    }
    .await;
    let copied = match result {
        Ok(copied) => copied,
        Err(e) => {
            writer.abandon().await;
            return Err(e);
        }
    };
    if !copied {
        let checkpoint = ExtractCheckpoint { position: reader.position(), state, upload: writer.pause(step).await?, step };
        return Ok(ExtractProgress::Paused { checkpoint, superseded });
    }
    if let Err(e) = writer.end().await {
        writer.abandon().await;
        return Err(e.into());
    }
    let (bytes, sha256) = if writer.is_multipart() {
        let progress = writer.pause(step).await?;
        let done = upload::complete(store, dest, &progress).await?;
        if let Some(tail) = &progress.tail_key {
            store.delete(tail).await?;
        }
        done
    } else {
        writer.put_whole(BTreeMap::new()).await?
    };
    if sha256 != member.sha256 {
        return Err(RestoreError::Dump {
            table: None,
            message: format!(
                "{} in {} has SHA-256 {sha256}, not the {} recorded when it was archived",
                member.path, member.archive_key, member.sha256
            ),
        });
    }
    Ok(ExtractProgress::Done { bytes, superseded })
}
