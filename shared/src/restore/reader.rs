//! Reading a stored dump (`.sql` or `.sql.gz`) as SQL text, a bounded piece at a time, from a
//! position a restore can save and resume at in another invocation.
//!
//! A plain dump resumes at a byte offset. A gzip dump cannot be entered in the middle of a
//! compressed stream, but the exporter writes one gzip member per 1 MiB of SQL (see
//! `crate::upload`; dumps of earlier versions, one member per step), and every member can be
//! decoded on its own: a position is the member's offset plus the SQL bytes of that member
//! already used. Resuming decodes that much of one member again, never the whole file.
//!
//! An encrypted dump (`.age`) is read through its decryption: offsets above are then offsets
//! in the plaintext (what `age -d` gives back), and a read resumes at the 64 KiB chunk that
//! holds its offset, which is where that chunk starts in the object. Every chunk's tag is
//! checked as it is read, and the SHA-256 is over the stored (encrypted) bytes.

use crate::age::{self, AgeError, Identity, OpenedHeader, CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE};
use crate::ports::{ObjectStore, PortError};
use crate::sha256::ResumableSha256;
use flate2::write::GzDecoder;
use serde::{Deserialize, Serialize};
use std::io::Write;

/// Compressed bytes fetched per read: also what bounds the SQL decoded per read.
const FETCH_BYTES: u64 = 1024 * 1024;

/// Why reading failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The store failed: worth retrying.
    Store(PortError),
    /// The object is not a whole dump (a corrupt or cut gzip stream, or too short).
    Corrupt(String),
}

impl From<PortError> for ReadError {
    fn from(e: PortError) -> Self {
        ReadError::Store(e)
    }
}

/// Where reading resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadPosition {
    /// Offset in the object: for gzip, where a member starts.
    pub object_offset: u64,
    /// SQL bytes to skip from there (gzip: the part of the member already used).
    pub skip: u64,
    /// SQL bytes before this position, over the whole dump.
    pub sql_offset: u64,
    /// SHA-256 of the object's first `hash.len()` bytes, so a finished read can be checked
    /// against the SHA-256 recorded when the dump was stored.
    pub hash: ResumableSha256,
}

/// How an encrypted object is opened: the identity, and its header once read.
struct Decryption {
    identity: Option<Identity>,
    /// The opened header and the object's chunk count.
    header: Option<(OpenedHeader, u64)>,
}

fn age_corrupt(e: AgeError) -> ReadError {
    ReadError::Corrupt(e.to_string())
}

/// A member whose SQL may still be in the buffer: where it starts in the object and in the SQL.
#[derive(Debug, Clone, Copy)]
struct MemberStart {
    object_offset: u64,
    sql_offset: u64,
}

pub struct DumpReader {
    key: String,
    gzip: bool,
    /// Next offset to fetch, in the plaintext (the object itself unless encrypted).
    fetch_at: u64,
    /// For an encrypted object: how to open it.
    decryption: Option<Decryption>,
    /// Compressed bytes fetched but not yet fed to the decoder.
    compressed: Vec<u8>,
    decoder: Option<GzDecoder<Vec<u8>>>,
    /// Offset in the object of the start of `compressed`.
    compressed_at: u64,
    members: Vec<MemberStart>,
    /// SQL read but not yet consumed, starting at SQL offset `buffer_at`.
    buffer: Vec<u8>,
    buffer_at: u64,
    /// SQL bytes still to drop when resuming inside a gzip member.
    to_skip: u64,
    hash: ResumableSha256,
    eof: bool,
    /// The object's size, asked once per reader: R2 refuses a range that starts at the end.
    size: Option<u64>,
}

impl DumpReader {
    /// Reads the object at `key` from `from`; the store is passed to each [`DumpReader::fill`].
    pub fn open(key: &str, gzip: bool, from: &ReadPosition) -> DumpReader {
        DumpReader {
            key: key.to_owned(),
            gzip,
            fetch_at: from.object_offset + if gzip { 0 } else { from.skip },
            compressed: Vec::new(),
            decoder: None,
            compressed_at: from.object_offset,
            members: vec![MemberStart { object_offset: from.object_offset, sql_offset: from.sql_offset - from.skip }],
            decryption: None,
            buffer: Vec::new(),
            buffer_at: from.sql_offset,
            to_skip: if gzip { from.skip } else { 0 },
            hash: from.hash.clone(),
            eof: false,
            size: None,
        }
    }

    /// Reads an encrypted object through its decryption with `identity` (`None`: the object
    /// cannot be read, which the first read says).
    pub fn decrypting(mut self, identity: Option<Identity>) -> DumpReader {
        self.decryption = Some(Decryption { identity, header: None });
        self
    }

    /// SQL read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Whether the whole object has been read.
    pub fn at_end(&self) -> bool {
        self.eof
    }

    /// Drops `n` bytes from the front of the buffer: they have been used.
    pub fn consume(&mut self, n: usize) {
        self.buffer.drain(..n);
        self.buffer_at += n as u64;
    }

    /// The position just after the consumed SQL.
    pub fn position(&self) -> ReadPosition {
        let member = self.members.iter().rev().find(|m| m.sql_offset <= self.buffer_at).copied().unwrap_or(self.members[0]);
        if self.gzip {
            ReadPosition {
                object_offset: member.object_offset,
                skip: self.buffer_at - member.sql_offset,
                sql_offset: self.buffer_at,
                hash: self.hash.clone(),
            }
        } else {
            ReadPosition { object_offset: 0, skip: self.buffer_at, sql_offset: self.buffer_at, hash: self.hash.clone() }
        }
    }

    /// Reads more SQL into the buffer; `false` at the end of the object.
    pub async fn fill<O: ObjectStore>(&mut self, store: &mut O) -> Result<bool, ReadError> {
        loop {
            if self.eof {
                return Ok(false);
            }
            let before = self.buffer.len();
            if self.compressed.is_empty() {
                let chunk = self.fetch(store).await?;
                if chunk.is_empty() {
                    // The decoder may still hold the last member's end.
                    self.finish_member()?;
                    self.eof = true;
                    return Ok(self.buffer.len() > before);
                }
                if !self.gzip {
                    self.push_sql(&chunk);
                    return Ok(true);
                }
                self.compressed = chunk;
            }
            self.decode()?;
            if self.buffer.len() > before {
                return Ok(true);
            }
        }
    }

    /// The next plaintext bytes from `fetch_at` on (empty at the end of the object).
    async fn fetch<O: ObjectStore>(&mut self, store: &mut O) -> Result<Vec<u8>, ReadError> {
        let size = match self.size {
            Some(size) => size,
            None => {
                let size = store
                    .head(&self.key)
                    .await?
                    .ok_or_else(|| ReadError::Corrupt(format!("{} is missing from the bucket", self.key)))?;
                *self.size.insert(size)
            }
        };
        let Some(decryption) = &self.decryption else {
            if self.fetch_at >= size {
                return Ok(Vec::new());
            }
            let bytes = self.get_hashed(store, self.fetch_at, FETCH_BYTES).await?;
            self.fetch_at += bytes.len() as u64;
            return Ok(bytes);
        };
        let (header, count) = match &decryption.header {
            Some(opened) => opened.clone(),
            None => {
                let opened = self.open_header(store, size).await?;
                self.decryption.as_mut().expect("decrypting").header = Some(opened.clone());
                opened
            }
        };
        let plain_size = (count - 1) * CHUNK_SIZE as u64 + (size - header.chunk_offset(count - 1) - age::TAG_SIZE as u64);
        if self.fetch_at >= plain_size {
            return Ok(Vec::new());
        }
        let first = self.fetch_at / CHUNK_SIZE as u64;
        // As many whole chunks as one fetch of FETCH_BYTES holds.
        let chunks = (FETCH_BYTES / ENCRYPTED_CHUNK_SIZE as u64).max(1).min(count - first);
        let from = header.chunk_offset(first);
        let to = header.chunk_offset(first + chunks).min(size);
        let sealed = self.get_hashed(store, from, to - from).await?;
        if sealed.len() as u64 != to - from {
            return Err(ReadError::Corrupt(format!("{} ended while reading its chunk {first}", self.key)));
        }
        let mut plain = Vec::with_capacity(chunks as usize * CHUNK_SIZE);
        for (i, piece) in sealed.chunks(ENCRYPTED_CHUNK_SIZE).enumerate() {
            plain.extend_from_slice(&header.open_chunk(first + i as u64, count, piece).map_err(age_corrupt)?);
        }
        // Resuming inside a chunk: what comes before the offset was used by an earlier step.
        let inside = (self.fetch_at % CHUNK_SIZE as u64) as usize;
        plain.drain(..inside.min(plain.len()));
        self.fetch_at += plain.len() as u64;
        Ok(plain)
    }

    /// Reads the age header (longer headers are read again with more bytes).
    async fn open_header<O: ObjectStore>(&mut self, store: &mut O, size: u64) -> Result<(OpenedHeader, u64), ReadError> {
        let identity = self.decryption.as_ref().and_then(|d| d.identity.clone()).ok_or_else(|| {
            ReadError::Corrupt(format!("{} is encrypted and no AGE_IDENTITY is configured to read it", self.key))
        })?;
        let mut want = 4096u64;
        loop {
            let prefix = self.get_hashed(store, 0, want.min(size)).await?;
            match age::open_header(&prefix, std::slice::from_ref(&identity)) {
                Ok(header) => {
                    let count = header.chunk_count(size).map_err(age_corrupt)?;
                    return Ok((header, count));
                }
                Err(AgeError::HeaderIncomplete) if want < size && want < age::MAX_HEADER_BYTES as u64 => want *= 8,
                Err(e) => return Err(age_corrupt(e)),
            }
        }
    }

    /// Fetches `len` bytes at `at`, hashing those no earlier step hashed: the hash covers the
    /// object from its start, and every read starts within what was read before.
    async fn get_hashed<O: ObjectStore>(&mut self, store: &mut O, at: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let bytes = store
            .get_range(&self.key, at, len)
            .await?
            .ok_or_else(|| ReadError::Corrupt(format!("{} is missing from the bucket", self.key)))?;
        let hashed_to = self.hash.len();
        let end = at + bytes.len() as u64;
        if end > hashed_to && at <= hashed_to {
            self.hash.update(&bytes[(hashed_to - at) as usize..]);
        }
        Ok(bytes)
    }

    fn push_sql(&mut self, sql: &[u8]) {
        let drop = (self.to_skip as usize).min(sql.len());
        self.to_skip -= drop as u64;
        self.buffer.extend_from_slice(&sql[drop..]);
    }

    /// Feeds the fetched compressed bytes to the decoder, member after member.
    fn decode(&mut self) -> Result<(), ReadError> {
        let corrupt = |e: std::io::Error| ReadError::Corrupt(format!("the gzip stream is corrupt: {e}"));
        let mut fed = 0;
        // At most 64 KiB at a time, so a highly compressed piece cannot decode into a lot of
        // memory at once.
        while fed < self.compressed.len() {
            let decoder = self.decoder.get_or_insert_with(|| GzDecoder::new(Vec::new()));
            let end = (fed + 64 * 1024).min(self.compressed.len());
            let n = decoder.write(&self.compressed[fed..end]).map_err(corrupt)?;
            let sql = std::mem::take(decoder.get_mut());
            self.push_sql(&sql);
            if n == 0 {
                // This member is complete; the next starts here.
                self.finish_member()?;
                if self.to_skip > 0 {
                    return Err(ReadError::Corrupt("the dump is shorter than the position it resumes at".into()));
                }
                let sql_offset = self.buffer_at + self.buffer.len() as u64;
                self.members.push(MemberStart { object_offset: self.compressed_at + fed as u64, sql_offset });
                continue;
            }
            fed += n;
        }
        self.compressed_at += self.compressed.len() as u64;
        self.compressed.clear();
        Ok(())
    }

    /// Ends the member being decoded, checking its CRC and length.
    fn finish_member(&mut self) -> Result<(), ReadError> {
        if let Some(decoder) = self.decoder.take() {
            let rest = decoder
                .finish()
                .map_err(|e| ReadError::Corrupt(format!("the gzip stream is corrupt or cut short: {e}")))?;
            self.push_sql(&rest);
        }
        Ok(())
    }
}
