//! Encryption in the age v1 format (<https://age-encryption.org/v1>), written and read a piece
//! at a time so a dump can be encrypted over several Worker invocations.
//!
//! An age file is a text header (one X25519 stanza per recipient, each wrapping the same
//! random 16-byte file key, then a MAC over the header), a 16-byte nonce, and the payload: the
//! plaintext in chunks of 64 KiB, each sealed with ChaCha20-Poly1305 under a key derived from
//! the file key and the nonce, the chunk's number and a "last chunk" flag making up its nonce.
//!
//! Pausing between invocations therefore needs only the payload key, the number of chunks
//! written and the plaintext of the unfinished chunk (at most 64 KiB). [`StreamEncryptor`]
//! exposes exactly that: [`EncryptionState`] goes into the task's checkpoint, and the
//! unfinished chunk is parked in the bucket sealed under a key derived from the payload key
//! ([`StreamEncryptor::seal_pending`]), so the bucket never holds a readable byte.
//!
//! Reading is random access at chunk granularity: chunk `i` starts at
//! `payload_start + i * ENCRYPTED_CHUNK_SIZE`, so a restore resumes at a chunk boundary
//! without decrypting what came before.
//!
//! Only the X25519 recipient type is written. Reading ignores stanzas of other types, as the
//! format requires, and fails unless one of the given identities opens an X25519 stanza.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use x25519_dalek::{PublicKey, StaticSecret};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Poly1305 tag appended to every chunk.
pub const TAG_SIZE: usize = 16;
/// Stored bytes of every chunk but the last.
pub const ENCRYPTED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;
/// The file's first line.
pub const VERSION_LINE: &str = "age-encryption.org/v1";
/// A header longer than this is not one this tool would read (a thousand recipients fit).
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const STAGED_LABEL: &[u8] = b"d1-backup/v1 staged chunk";
const FILE_KEY_SIZE: usize = 16;
const PAYLOAD_NONCE_SIZE: usize = 16;
const BODY_COLUMNS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgeError {
    /// A recipient or identity string is not a valid age X25519 key.
    BadKey(String),
    /// The bytes are not an age v1 file (or not one we can read).
    Malformed(String),
    /// The header needs more bytes than were given: read further and try again.
    HeaderIncomplete,
    /// None of the identities opens any stanza of the file.
    NoMatchingIdentity,
    /// The header MAC or a chunk's tag does not verify: altered, cut or not ours.
    Unauthentic(String),
    /// The platform gave no randomness.
    Randomness(String),
}

impl fmt::Display for AgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgeError::BadKey(m) => f.write_str(m),
            AgeError::Malformed(m) => write!(f, "not a readable age file: {m}"),
            AgeError::HeaderIncomplete => f.write_str("the age header is cut short"),
            AgeError::NoMatchingIdentity => f.write_str("no identity given opens this age file (wrong AGE_IDENTITY?)"),
            AgeError::Unauthentic(m) => write!(f, "the age file does not authenticate: {m}"),
            AgeError::Randomness(m) => write!(f, "no randomness: {m}"),
        }
    }
}

impl std::error::Error for AgeError {}

/// `n` bytes from the platform's cryptographic random source (crypto.getRandomValues in a
/// Worker).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AgeError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AgeError::Randomness(e.to_string()))?;
    Ok(bytes)
}

fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// An X25519 public key: who can read the backups (`age1…`).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    public: [u8; 32],
}

impl Recipient {
    /// Parses `age1…` (Bech32, the form `age-keygen` prints).
    pub fn parse(text: &str) -> Result<Recipient, AgeError> {
        let bad = |why: &str| AgeError::BadKey(format!("{text:?} is not an age X25519 recipient (age1…): {why}"));
        let parsed = CheckedHrpstring::new::<Bech32>(text).map_err(|e| bad(&e.to_string()))?;
        if parsed.hrp() != Hrp::parse_unchecked("age") || !text.starts_with("age1") {
            return Err(bad("it does not start with age1"));
        }
        let public: [u8; 32] =
            parsed.byte_iter().collect::<Vec<u8>>().try_into().map_err(|_| bad("it does not hold 32 bytes"))?;
        Ok(Recipient { public })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = bech32::encode_lower::<Bech32>(Hrp::parse_unchecked("age"), &self.public).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Recipient, D::Error> {
        Recipient::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

/// An X25519 secret key (`AGE-SECRET-KEY-1…`): what reads the backups. Never printed.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
}

impl Identity {
    /// Parses `AGE-SECRET-KEY-1…`; lines starting with `#` and blank lines are skipped, so the
    /// whole file `age-keygen` writes is accepted. The first key found is used.
    pub fn parse(text: &str) -> Result<Identity, AgeError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| AgeError::BadKey("the identity holds no AGE-SECRET-KEY-1… line".into()))?;
        let bad = |why: String| AgeError::BadKey(format!("the identity is not an age X25519 secret key: {why}"));
        let parsed = CheckedHrpstring::new::<Bech32>(line).map_err(|e| bad(e.to_string()))?;
        if parsed.hrp() != Hrp::parse_unchecked("age-secret-key-") {
            return Err(bad("it does not start with AGE-SECRET-KEY-1".into()));
        }
        let secret: [u8; 32] =
            parsed.byte_iter().collect::<Vec<u8>>().try_into().map_err(|_| bad("it does not hold 32 bytes".into()))?;
        Ok(Identity { secret: StaticSecret::from(secret) })
    }

    pub fn from_secret(secret: [u8; 32]) -> Identity {
        Identity { secret: StaticSecret::from(secret) }
    }

    /// The `AGE-SECRET-KEY-1…` form.
    pub fn to_secret_string(&self) -> String {
        bech32::encode_upper::<Bech32>(Hrp::parse_unchecked("age-secret-key-"), self.secret.as_bytes())
            .expect("32 bytes always encode")
    }

    pub fn recipient(&self) -> Recipient {
        Recipient { public: PublicKey::from(&self.secret).to_bytes() }
    }

    /// Opens an X25519 stanza: its file key, or `None` when the stanza is for someone else.
    fn unwrap(&self, share: &[u8; 32], body: &[u8]) -> Result<Option<[u8; FILE_KEY_SIZE]>, AgeError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*share));
        if shared.as_bytes().iter().all(|b| *b == 0) {
            return Err(AgeError::Malformed("an X25519 stanza has a low-order share".into()));
        }
        let mut salt = share.to_vec();
        salt.extend_from_slice(&self.recipient().public);
        let wrap_key = hkdf32(shared.as_bytes(), &salt, X25519_LABEL);
        let cipher = ChaCha20Poly1305::new(&wrap_key.into());
        match cipher.decrypt(&Nonce::default(), body) {
            Ok(key) => Ok(Some(key.try_into().map_err(|_| AgeError::Malformed("a file key is not 16 bytes".into()))?)),
            Err(_) => Ok(None),
        }
    }
}

/// Two identities are the same key when they read for the same recipient.
impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.recipient() == other.recipient()
    }
}

impl Eq for Identity {}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.recipient())
    }
}

/// The randomness one file needs, taken as plain data so the header is reproducible in tests.
pub struct Seed {
    pub file_key: [u8; FILE_KEY_SIZE],
    pub payload_nonce: [u8; PAYLOAD_NONCE_SIZE],
    /// One ephemeral X25519 secret per recipient.
    pub ephemeral: Vec<[u8; 32]>,
}

impl Seed {
    pub fn fresh(recipients: usize) -> Result<Seed, AgeError> {
        Ok(Seed {
            file_key: random_bytes()?,
            payload_nonce: random_bytes()?,
            ephemeral: (0..recipients).map(|_| random_bytes()).collect::<Result<_, _>>()?,
        })
    }
}

/// A 32-byte secret kept as hex in a checkpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadKey(#[serde(with = "crate::sha256::hex_bytes")] Vec<u8>);

impl PayloadKey {
    fn derive(file_key: &[u8; FILE_KEY_SIZE], nonce: &[u8; PAYLOAD_NONCE_SIZE]) -> PayloadKey {
        PayloadKey(hkdf32(file_key, nonce, b"payload").to_vec())
    }

    fn cipher(&self) -> Result<ChaCha20Poly1305, AgeError> {
        ChaCha20Poly1305::new_from_slice(&self.0).map_err(|_| AgeError::Malformed("a payload key is not 32 bytes".into()))
    }

    /// The key the unfinished chunk is sealed under while parked between steps: a different
    /// key from the payload's, so a parked piece can never be confused with a chunk.
    fn staging_cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&hkdf32(&self.0, &[], STAGED_LABEL).into())
    }
}

impl fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PayloadKey(…)")
    }
}

fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce.into()
}

/// The header (with its MAC line) and the payload nonce: the first bytes of the file.
pub fn header(recipients: &[Recipient], seed: &Seed) -> Result<Vec<u8>, AgeError> {
    if recipients.is_empty() {
        return Err(AgeError::BadKey("an age file needs at least one recipient".into()));
    }
    if seed.ephemeral.len() < recipients.len() {
        return Err(AgeError::Randomness("one ephemeral secret per recipient is needed".into()));
    }
    let mut text = format!("{VERSION_LINE}\n");
    for (recipient, ephemeral) in recipients.iter().zip(&seed.ephemeral) {
        let secret = StaticSecret::from(*ephemeral);
        let share = PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&PublicKey::from(recipient.public));
        let mut salt = share.to_vec();
        salt.extend_from_slice(&recipient.public);
        let wrap_key = hkdf32(shared.as_bytes(), &salt, X25519_LABEL);
        let body = ChaCha20Poly1305::new(&wrap_key.into())
            .encrypt(&Nonce::default(), seed.file_key.as_slice())
            .map_err(|_| AgeError::Malformed("wrapping the file key failed".into()))?;
        text.push_str(&format!("-> X25519 {}\n", STANDARD_NO_PAD.encode(share)));
        // 32 bytes are 43 base64 characters: one line, shorter than a full one, as the
        // format wants the last line of a body to be.
        text.push_str(&STANDARD_NO_PAD.encode(body));
        text.push('\n');
    }
    text.push_str("---");
    let mac = header_mac(&seed.file_key, text.as_bytes()).finalize().into_bytes();
    text.push_str(&format!(" {}\n", STANDARD_NO_PAD.encode(mac)));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&seed.payload_nonce);
    Ok(bytes)
}

/// The header's MAC, over the header up to and including `---`.
fn header_mac(file_key: &[u8; FILE_KEY_SIZE], up_to_dashes: &[u8]) -> Hmac<Sha256> {
    let mac_key = hkdf32(file_key, &[], b"header");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).expect("HMAC takes any key length");
    mac.update(up_to_dashes);
    mac
}

/// Where a paused encryption stands: goes into the task's checkpoint. It holds the payload
/// key, a secret, for as long as the object is being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionState {
    pub key: PayloadKey,
    /// Chunks sealed and written so far.
    pub chunks: u64,
    /// The staging object holding the sealed unfinished chunk, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key: Option<String>,
}

/// Encrypts a stream a chunk at a time; pausable at any byte (see the module documentation).
pub struct StreamEncryptor {
    key: PayloadKey,
    cipher: ChaCha20Poly1305,
    chunks: u64,
    /// Plaintext of the chunk being filled: up to a whole chunk, since a full chunk is sealed
    /// only once more bytes show it is not the last.
    pending: Vec<u8>,
}

impl StreamEncryptor {
    /// Starts a file: the encryptor and the bytes to write first (header and nonce).
    pub fn start(recipients: &[Recipient], seed: &Seed) -> Result<(StreamEncryptor, Vec<u8>), AgeError> {
        let header = header(recipients, seed)?;
        let key = PayloadKey::derive(&seed.file_key, &seed.payload_nonce);
        Ok((StreamEncryptor { cipher: key.cipher()?, key, chunks: 0, pending: Vec::new() }, header))
    }

    /// Continues a paused file with its unfinished chunk (opened with [`open_pending`]).
    pub fn resume(state: &EncryptionState, pending: Vec<u8>) -> Result<StreamEncryptor, AgeError> {
        Ok(StreamEncryptor { cipher: state.key.cipher()?, key: state.key.clone(), chunks: state.chunks, pending })
    }

    /// Encrypts `plaintext`, appending every chunk known not to be the last to `out`.
    pub fn push(&mut self, mut plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), AgeError> {
        while !plaintext.is_empty() {
            if self.pending.len() == CHUNK_SIZE {
                self.seal_chunk(false, out)?;
            }
            let take = (CHUNK_SIZE - self.pending.len()).min(plaintext.len());
            self.pending.extend_from_slice(&plaintext[..take]);
            plaintext = &plaintext[take..];
        }
        Ok(())
    }

    /// Ends the file: seals the last chunk (empty only for an empty file).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), AgeError> {
        self.seal_chunk(true, out)
    }

    fn seal_chunk(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), AgeError> {
        let sealed = self
            .cipher
            .encrypt(&chunk_nonce(self.chunks, last), self.pending.as_slice())
            .map_err(|_| AgeError::Malformed("sealing a chunk failed".into()))?;
        out.extend_from_slice(&sealed);
        self.pending.clear();
        self.chunks += 1;
        Ok(())
    }

    /// What a checkpoint keeps; `pending_key` is where the caller parks [`Self::seal_pending`].
    pub fn state(&self, pending_key: Option<String>) -> EncryptionState {
        EncryptionState { key: self.key.clone(), chunks: self.chunks, pending_key }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The unfinished chunk, sealed for parking: a fresh random nonce, then the ciphertext.
    /// A step that runs twice seals different bytes under different nonces, never one nonce
    /// twice.
    pub fn seal_pending(&self, nonce: [u8; 12]) -> Result<Vec<u8>, AgeError> {
        let sealed = self
            .key
            .staging_cipher()
            .encrypt(&nonce.into(), Payload { msg: &self.pending, aad: &self.chunks.to_be_bytes() })
            .map_err(|_| AgeError::Malformed("sealing the unfinished chunk failed".into()))?;
        let mut parked = nonce.to_vec();
        parked.extend_from_slice(&sealed);
        Ok(parked)
    }
}

/// Opens an unfinished chunk parked by [`StreamEncryptor::seal_pending`].
pub fn open_pending(state: &EncryptionState, parked: &[u8]) -> Result<Vec<u8>, AgeError> {
    if parked.len() < 12 + TAG_SIZE {
        return Err(AgeError::Unauthentic("the parked chunk is cut short".into()));
    }
    let (nonce, sealed) = parked.split_at(12);
    state
        .key
        .staging_cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &state.chunks.to_be_bytes() })
        .map_err(|_| AgeError::Unauthentic("the parked chunk is not the one this step sealed".into()))
}

/// An opened header: the key to the payload and where the payload's first chunk starts.
#[derive(Debug, Clone)]
pub struct OpenedHeader {
    pub key: PayloadKey,
    /// Offset of chunk 0: the header's length plus the 16-byte nonce.
    pub payload_start: u64,
}

impl OpenedHeader {
    /// Offset in the file of chunk `index`.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        self.payload_start + index * ENCRYPTED_CHUNK_SIZE as u64
    }

    /// How many chunks a file of `size` bytes holds, or why that size is impossible.
    pub fn chunk_count(&self, size: u64) -> Result<u64, AgeError> {
        let payload = size.checked_sub(self.payload_start).ok_or_else(|| AgeError::Malformed("the file ends inside its header".into()))?;
        let full = payload / ENCRYPTED_CHUNK_SIZE as u64;
        let rest = payload % ENCRYPTED_CHUNK_SIZE as u64;
        match rest {
            0 if full > 0 => Ok(full),
            0 => Err(AgeError::Malformed("the payload is empty: not even a last chunk".into())),
            r if r < TAG_SIZE as u64 => Err(AgeError::Malformed("the last chunk is shorter than its tag".into())),
            _ => Ok(full + 1),
        }
    }

    /// Decrypts chunk `index` of a file of `count` chunks.
    pub fn open_chunk(&self, index: u64, count: u64, sealed: &[u8]) -> Result<Vec<u8>, AgeError> {
        let last = index + 1 == count;
        let plain = self
            .key
            .cipher()?
            .decrypt(&chunk_nonce(index, last), sealed)
            .map_err(|_| AgeError::Unauthentic(format!("chunk {index} was altered, cut or reordered")))?;
        if last && plain.is_empty() && index > 0 {
            return Err(AgeError::Malformed("an empty last chunk after other chunks".into()));
        }
        if !last && plain.len() != CHUNK_SIZE {
            return Err(AgeError::Malformed(format!("chunk {index} is not a full chunk")));
        }
        Ok(plain)
    }
}

/// Reads the header at the start of `bytes` with the identities. `HeaderIncomplete` asks for
/// more bytes (up to [`MAX_HEADER_BYTES`]).
pub fn open_header(bytes: &[u8], identities: &[Identity]) -> Result<OpenedHeader, AgeError> {
    let malformed = |m: &str| AgeError::Malformed(m.to_owned());
    let mut lines = HeaderLines { bytes, at: 0 };
    let first = lines.next_line()?;
    if first != VERSION_LINE.as_bytes() {
        return Err(if VERSION_LINE.as_bytes().starts_with(first) && lines.at >= bytes.len() {
            AgeError::HeaderIncomplete
        } else {
            malformed("it does not start with age-encryption.org/v1")
        });
    }
    let mut stanzas: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let mac_line = loop {
        let line = lines.next_line()?;
        if let Some(rest) = line.strip_prefix(b"-> ") {
            let args = std::str::from_utf8(rest).map_err(|_| malformed("a stanza line is not text"))?;
            let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
            if args.iter().any(|a| a.is_empty() || !a.bytes().all(|b| (33..=126).contains(&b))) {
                return Err(malformed("a stanza has an empty or non-printable argument"));
            }
            let mut body = Vec::new();
            loop {
                let body_line = lines.next_line()?;
                if body_line.len() > BODY_COLUMNS {
                    return Err(malformed("a stanza body line is longer than 64 columns"));
                }
                body.extend_from_slice(&decode_b64(body_line)?);
                if body_line.len() < BODY_COLUMNS {
                    break;
                }
            }
            stanzas.push((args, body));
        } else if line.starts_with(b"---") {
            break line;
        } else {
            return Err(malformed("a header line is neither a stanza nor the MAC"));
        }
    };
    if stanzas.is_empty() {
        return Err(malformed("the header has no stanza"));
    }
    let mac_at = lines.at - mac_line.len() - 1;
    let mac_text = mac_line.strip_prefix(b"--- ").ok_or_else(|| malformed("the MAC line is malformed"))?;
    let mac = decode_b64(mac_text)?;
    if mac.len() != 32 {
        return Err(malformed("the MAC is not 32 bytes"));
    }
    let payload_start = lines.at + PAYLOAD_NONCE_SIZE;
    if bytes.len() < payload_start {
        return Err(AgeError::HeaderIncomplete);
    }
    let nonce: [u8; PAYLOAD_NONCE_SIZE] = bytes[lines.at..payload_start].try_into().expect("16 bytes");

    // Checked before any stanza is opened: an identity that opens an earlier stanza must not
    // make a header with a mixed-in scrypt stanza acceptable.
    if stanzas.len() > 1 && stanzas.iter().any(|(args, _)| args[0] == "scrypt") {
        return Err(malformed("an scrypt stanza is not alone in the header"));
    }
    let mut file_key = None;
    for (args, body) in &stanzas {
        if args[0] != "X25519" {
            continue;
        }
        if args.len() != 2 {
            return Err(malformed("an X25519 stanza does not have exactly one argument"));
        }
        let share: [u8; 32] =
            decode_b64(args[1].as_bytes())?.try_into().map_err(|_| malformed("an X25519 share is not 32 bytes"))?;
        if body.len() != FILE_KEY_SIZE + TAG_SIZE {
            return Err(malformed("an X25519 stanza body is not 32 bytes"));
        }
        for identity in identities {
            if let Some(key) = identity.unwrap(&share, body)? {
                file_key = Some(key);
                break;
            }
        }
        if file_key.is_some() {
            break;
        }
    }
    let file_key = file_key.ok_or(AgeError::NoMatchingIdentity)?;
    header_mac(&file_key, &bytes[..mac_at + 3])
        .verify_slice(&mac)
        .map_err(|_| AgeError::Unauthentic("the header MAC does not match".into()))?;
    Ok(OpenedHeader { key: PayloadKey::derive(&file_key, &nonce), payload_start: payload_start as u64 })
}

/// Canonical unpadded base64, as the format requires (no padding, no stray bits).
fn decode_b64(text: &[u8]) -> Result<Vec<u8>, AgeError> {
    if text.contains(&b'=') || text.contains(&b'\r') {
        return Err(AgeError::Malformed("base64 with padding or a carriage return".into()));
    }
    STANDARD_NO_PAD.decode(text).map_err(|e| AgeError::Malformed(format!("bad base64: {e}")))
}

struct HeaderLines<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> HeaderLines<'a> {
    fn next_line(&mut self) -> Result<&'a [u8], AgeError> {
        let rest = &self.bytes[self.at..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(end) => {
                self.at += end + 1;
                Ok(&rest[..end])
            }
            None if self.bytes.len() >= MAX_HEADER_BYTES => {
                Err(AgeError::Malformed(format!("the header is longer than {MAX_HEADER_BYTES} bytes")))
            }
            None => Err(AgeError::HeaderIncomplete),
        }
    }
}

/// Decrypts a whole file held in memory (tests and small objects).
pub fn decrypt(file: &[u8], identities: &[Identity]) -> Result<Vec<u8>, AgeError> {
    let header = open_header(file, identities)?;
    let count = header.chunk_count(file.len() as u64)?;
    let mut plain = Vec::new();
    for index in 0..count {
        let start = header.chunk_offset(index) as usize;
        let end = (start + ENCRYPTED_CHUNK_SIZE).min(file.len());
        plain.extend_from_slice(&header.open_chunk(index, count, &file[start..end])?);
    }
    Ok(plain)
}

/// Encrypts a whole plaintext held in memory (tests and small objects).
pub fn encrypt(plain: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>, AgeError> {
    let (mut encryptor, mut out) = StreamEncryptor::start(recipients, &Seed::fresh(recipients.len())?)?;
    encryptor.push(plain, &mut out)?;
    encryptor.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    #[test]
    fn round_trips_at_chunk_edges_for_every_recipient() {
        let (alice, bob) = (identity(1), identity(2));
        let recipients = [alice.recipient(), bob.recipient()];
        for size in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 17] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let file = encrypt(&plain, &recipients).unwrap();
            assert_eq!(decrypt(&file, &[alice.clone()]).unwrap(), plain, "alice, size {size}");
            assert_eq!(decrypt(&file, &[bob.clone()]).unwrap(), plain, "bob, size {size}");
            assert_eq!(decrypt(&file, &[identity(3)]), Err(AgeError::NoMatchingIdentity));
        }
    }

    #[test]
    fn paused_anywhere_writes_a_file_that_decrypts_the_same() {
        let alice = identity(1);
        let plain: Vec<u8> = (0..(2 * CHUNK_SIZE + 999)).map(|i| (i % 253) as u8).collect();
        for split in [0, 5, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 998] {
            let (mut first, mut out) = StreamEncryptor::start(&[alice.recipient()], &Seed::fresh(1).unwrap()).unwrap();
            first.push(&plain[..split], &mut out).unwrap();
            let parked = first.seal_pending(random_bytes().unwrap()).unwrap();
            let state = first.state(Some("staging/x".into()));
            let state: EncryptionState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
            let pending = open_pending(&state, &parked).unwrap();
            let mut second = StreamEncryptor::resume(&state, pending).unwrap();
            second.push(&plain[split..], &mut out).unwrap();
            second.finish(&mut out).unwrap();
            assert_eq!(decrypt(&out, &[alice.clone()]).unwrap(), plain, "split at {split}");
        }
    }

    #[test]
    fn a_parked_chunk_opens_only_with_its_own_state() {
        let (mut encryptor, _) = StreamEncryptor::start(&[identity(1).recipient()], &Seed::fresh(1).unwrap()).unwrap();
        encryptor.push(b"secret rows", &mut Vec::new()).unwrap();
        let mut parked = encryptor.seal_pending([9; 12]).unwrap();
        assert!(!parked.windows(6).any(|w| w == b"secret"), "the parked chunk is readable");
        let mut later = encryptor.state(None);
        later.chunks += 1;
        assert!(matches!(open_pending(&later, &parked), Err(AgeError::Unauthentic(_))));
        parked[20] ^= 1;
        assert!(matches!(open_pending(&encryptor.state(None), &parked), Err(AgeError::Unauthentic(_))));
    }

    #[test]
    fn cut_reordered_or_altered_files_are_refused() {
        let alice = identity(1);
        let plain = vec![7u8; 2 * CHUNK_SIZE + 10];
        let file = encrypt(&plain, &[alice.recipient()]).unwrap();
        let header = open_header(&file, &[alice.clone()]).unwrap();
        // Cut at a chunk boundary: the new last chunk was not sealed as last.
        let cut = &file[..header.chunk_offset(2) as usize];
        assert!(matches!(decrypt(cut, &[alice.clone()]), Err(AgeError::Unauthentic(_))));
        let mut flipped = file.clone();
        let at = header.chunk_offset(1) as usize + 100;
        flipped[at] ^= 0x80;
        assert!(matches!(decrypt(&flipped, &[alice.clone()]), Err(AgeError::Unauthentic(_))));
        let mut header_flipped = file.clone();
        header_flipped[30] ^= 1;
        assert!(decrypt(&header_flipped, &[alice.clone()]).is_err());
        assert_eq!(open_header(&file[..40], &[alice]).unwrap_err(), AgeError::HeaderIncomplete);
    }

    #[test]
    fn keys_parse_and_print_as_age_keygen_writes_them() {
        let secret = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
        let identity = Identity::parse(&format!("# created: now\n# public key: x\n{secret}\n")).unwrap();
        assert_eq!(identity.to_secret_string(), secret);
        let recipient = identity.recipient().to_string();
        assert!(recipient.starts_with("age1"));
        assert_eq!(Recipient::parse(&recipient).unwrap(), identity.recipient());
        for bad in ["", "age1", "age1qqqq", &recipient.replace("age1", "agf1"), &recipient[..recipient.len() - 1], secret] {
            let err = Recipient::parse(bad).unwrap_err();
            assert!(matches!(&err, AgeError::BadKey(m) if m.contains(&format!("{bad:?}"))), "{bad}: {err:?}");
        }
    }
}
