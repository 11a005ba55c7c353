//! SHA-256 whose state can be saved between invocations.
//!
//! A dump that is exported over several queue messages is hashed over several Worker
//! invocations, so the hash state must be stored in the checkpoint. `sha2`'s hasher cannot be
//! serialized; its compression function can, and the state around it is small: eight words,
//! at most 63 pending bytes and a length.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes not yet compressed: always fewer than 64.
    #[serde(with = "hex_bytes")]
    pending: Vec<u8>,
    /// Total bytes hashed so far.
    length: u64,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256 { state: INITIAL_STATE, pending: Vec::with_capacity(64), length: 0 }
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.pending);
            sha2::compress256(&mut self.state, &[block]);
            self.pending.clear();
        }
        let whole = bytes.len() / 64 * 64;
        // Block by block, straight from the input: no copy, no allocation (this runs for every
        // row of every table while exporting).
        for block in bytes[..whole].chunks_exact(64) {
            sha2::compress256(&mut self.state, std::slice::from_ref(GenericArray::from_slice(block)));
        }
        self.pending.extend_from_slice(&bytes[whole..]);
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The digest as lowercase hex (FIPS 180-4 padding: 0x80, zeros, 64-bit bit length).
    pub fn hex_digest(&self) -> String {
        let mut state = self.state;
        let mut tail = self.pending.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.length * 8).to_be_bytes());
        let blocks: Vec<_> = tail.chunks_exact(64).map(GenericArray::clone_from_slice).collect();
        sha2::compress256(&mut state, &blocks);
        state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text` read as hex (either case), or `None` when it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Lowercase hex SHA-256 of bytes held whole (a part, a request body).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

pub(crate) mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::from_hex(&text).ok_or_else(|| D::Error::custom("not hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn reference(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn matches_sha2_for_every_length_around_block_boundaries() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            let mut h = ResumableSha256::new();
            h.update(&data[..n]);
            assert_eq!(h.hex_digest(), reference(&data[..n]), "length {n}");
        }
    }

    #[test]
    fn state_survives_serialization_at_any_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 11) as u8).collect();
        for split in [0, 1, 63, 64, 65, 127, 500, 999, 1000] {
            let mut first = ResumableSha256::new();
            first.update(&data[..split]);
            let saved = serde_json::to_string(&first).unwrap();
            let mut resumed: ResumableSha256 = serde_json::from_str(&saved).unwrap();
            for chunk in data[split..].chunks(37) {
                resumed.update(chunk);
            }
            assert_eq!(resumed.hex_digest(), reference(&data), "split at {split}");
            assert_eq!(resumed.len(), 1000);
        }
    }
}
