//! The check pass of a restore: the whole dump is read, in as many steps as it takes, before
//! anything in the target changes. It must be the object whose SHA-256 was recorded when it was
//! stored (or, out of an archive, the member's), readable to its end (a gzip stream whole, its
//! CRCs right), and end with its `-- Dump complete` line. A dump that fails any of these is
//! refused with the reason, and the target is never touched.

use super::reader::{ReadError, ReadPosition};
use super::DumpObject;
use crate::dump::COMPLETE_MARKER;
use crate::ports::{Clock, ObjectStore, PortError};
use serde::{Deserialize, Serialize};

/// How far the check has read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckCursor {
    pub position: ReadPosition,
    /// The last bytes of SQL read (the dump's last line must be its complete marker).
    pub tail: Vec<u8>,
}

/// Bytes of the dump's end kept between steps: its last line, with room to spare.
const TAIL_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckProgress {
    /// Read on from here in the next step.
    Paused(CheckCursor),
    /// The dump is whole and the one recorded.
    Passed { sql_bytes: u64 },
    /// The dump must not be restored: why.
    Refused(String),
}

/// Reads `dump` on from `from` until its end or until `max_bytes` of SQL (or `max_millis`) have
/// been read in this step.
pub async fn check_step<O: ObjectStore, C: Clock>(
    store: &mut O,
    clock: &C,
    dump: &DumpObject,
    max_bytes: u64,
    max_millis: u64,
    from: Option<CheckCursor>,
) -> Result<CheckProgress, PortError> {
    let started = clock.now_millis();
    let mut cursor = from.unwrap_or_default();
    let mut reader = dump.reader(&cursor.position);
    let mut read = 0u64;
    loop {
        let buffered = reader.buffered().len();
        if buffered > 0 {
            let bytes = reader.buffered();
            cursor.tail.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL_BYTES)..]);
            let excess = cursor.tail.len().saturating_sub(TAIL_BYTES);
            cursor.tail.drain(..excess);
            reader.consume(buffered);
            read += buffered as u64;
        }
        if reader.at_end() {
            break;
        }
        if read >= max_bytes || clock.now_millis().saturating_sub(started) as u64 >= max_millis {
            cursor.position = reader.position();
            return Ok(CheckProgress::Paused(cursor));
        }
        match reader.fill(store).await {
            Ok(_) => {}
            Err(ReadError::Store(e)) => return Err(e),
            Err(ReadError::Corrupt(reason)) => {
                return Ok(CheckProgress::Refused(format!("{} cannot be read to its end: {reason}", dump.key)))
            }
        }
    }
    let position = reader.position();
    let sha256 = position.hash.hex_digest();
    if sha256 != dump.sha256 {
        return Ok(CheckProgress::Refused(format!(
            "{} has SHA-256 {sha256}, not the {} recorded when it was stored: it was changed or damaged",
            dump.key, dump.sha256
        )));
    }
    let text = String::from_utf8_lossy(&cursor.tail);
    let last_line = text.trim_end().rsplit('\n').next().unwrap_or("");
    if !last_line.starts_with(COMPLETE_MARKER) {
        return Ok(CheckProgress::Refused(format!(
            "{} does not end with its \"{COMPLETE_MARKER}\" line: it is not a whole dump",
            dump.key
        )));
    }
    Ok(CheckProgress::Passed { sql_bytes: position.sql_offset })
}
