//! `shared::age` against the age test vectors of C2SP/CCTV (see `age_vectors/README.md`):
//! every vendored file must decrypt, or fail, the way the reference implementation does.

use flate2::read::ZlibDecoder;
use sha2::{Digest, Sha256};
use shared::age::{decrypt, open_header, AgeError, Identity, CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// What the directory held when it was vendored: a vector that goes missing or stops parsing
/// must fail the test, not shrink it.
const VENDORED: usize = 68;

/// Payload failures where a reader that knows the file's size (a restore does) releases less
/// than the reference, which learns where the file ends only by reaching it: the vector and
/// the bytes released. Whatever is released is authenticated as the chunks at those places,
/// so it is the start of what the reference releases.
const STOPS_EARLIER: [(&str, usize); 8] = [
    // Full chunks, none sealed as last: the final one is opened as the last and fails, where
    // the reference releases it as a middle chunk and then finds nothing after it.
    ("stream_no_final_full", 0),
    ("stream_no_final_two_chunks_full", CHUNK_SIZE),
    // A full chunk, then 12 bytes: the size alone shows a last chunk shorter than its tag.
    ("stream_short_second_chunk", 0),
    // A chunk sealed as last with bytes after it: opened as a middle chunk it fails (or, after
    // 12 bytes of garbage, the size alone is refused), where the reference releases it and
    // then finds the bytes after it.
    ("stream_trailing_garbage_long", 0),
    ("stream_trailing_garbage_short", 0),
    ("stream_two_final_chunks", 0),
    ("stream_two_final_chunks_full", 0),
    ("stream_two_final_chunks_second", CHUNK_SIZE),
];

struct Vector {
    name: String,
    expect: String,
    payload: Option<String>,
    identities: Vec<Identity>,
    passphrase: bool,
    file: Vec<u8>,
}

/// The testkit format: `key: value` lines, a blank line, then the age file (maybe zlib'd).
fn parse(name: &str, bytes: &[u8]) -> Vector {
    let split = bytes.windows(2).position(|w| w == b"\n\n").unwrap_or_else(|| panic!("{name}: no blank line"));
    let head = std::str::from_utf8(&bytes[..split]).unwrap_or_else(|_| panic!("{name}: the header is not text"));
    let mut vector = Vector {
        name: name.to_owned(),
        expect: String::new(),
        payload: None,
        identities: Vec::new(),
        passphrase: false,
        file: bytes[split + 2..].to_vec(),
    };
    for line in head.lines() {
        let (key, value) = line.split_once(": ").unwrap_or_else(|| panic!("{name}: {line:?} is not `key: value`"));
        match key {
            "expect" => vector.expect = value.to_owned(),
            "payload" => vector.payload = Some(value.to_owned()),
            "identity" => vector
                .identities
                .push(Identity::parse(value).unwrap_or_else(|e| panic!("{name}: identity {value:?}: {e}"))),
            "passphrase" => vector.passphrase = true,
            "compressed" => {
                assert_eq!(value, "zlib", "{name}: unknown compression");
                let mut plain = Vec::new();
                ZlibDecoder::new(vector.file.as_slice()).read_to_end(&mut plain).unwrap();
                vector.file = plain;
            }
            "file key" | "comment" => {}
            // Only plain X25519 vectors were vendored: anything else means a wrong file.
            _ => panic!("{name}: unexpected key {key:?}"),
        }
    }
    vector
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The plaintext a chunk-by-chunk reader (a restore) releases before the first error.
fn released_before_error(v: &Vector) -> Vec<u8> {
    let mut plain = Vec::new();
    let Ok(header) = open_header(&v.file, &v.identities) else { return plain };
    let Ok(count) = header.chunk_count(v.file.len() as u64) else { return plain };
    for index in 0..count {
        let start = header.chunk_offset(index) as usize;
        let end = (start + ENCRYPTED_CHUNK_SIZE).min(v.file.len());
        match header.open_chunk(index, count, &v.file[start..end]) {
            Ok(chunk) => plain.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    plain
}

fn variant(err: &AgeError) -> &'static str {
    match err {
        AgeError::BadKey(_) => "BadKey",
        AgeError::Malformed(_) => "Malformed",
        AgeError::HeaderIncomplete => "HeaderIncomplete",
        AgeError::NoMatchingIdentity => "NoMatchingIdentity",
        AgeError::Unauthentic(_) => "Unauthentic",
        AgeError::Randomness(_) => "Randomness",
    }
}

/// Checks one vector: what it came to (`None` for a decryption, else the error's variant), or
/// why that is not what the vector expects.
fn check(v: &Vector) -> Result<Option<&'static str>, String> {
    // scrypt is not implemented: a vector naming a passphrase is only here to show the file
    // is refused whatever the passphrase would have done.
    if v.passphrase && v.expect == "success" {
        return Err("needs a passphrase to succeed".into());
    }
    let result = decrypt(&v.file, &v.identities);
    let payload = v.payload.as_deref();
    match (v.expect.as_str(), result) {
        ("success", Ok(plain)) if Some(hex_sha256(&plain).as_str()) == payload => Ok(None),
        ("success", Ok(_)) => Err("decrypted to the wrong payload".into()),
        (expect, Ok(_)) => Err(format!("decrypted although {expect} was expected")),
        ("success", Err(e)) => Err(format!("refused a valid file: {e:?}")),
        ("no match", Err(AgeError::NoMatchingIdentity)) | ("HMAC failure", Err(AgeError::Unauthentic(_))) => {
            Ok(Some(if v.expect == "no match" { "NoMatchingIdentity" } else { "Unauthentic" }))
        }
        ("no match" | "HMAC failure", Err(e)) => Err(format!("{e:?} instead of {}", v.expect)),
        // A parse error must not be masked as a failure to open or authenticate the header.
        ("header failure", Err(e @ (AgeError::NoMatchingIdentity | AgeError::Unauthentic(_)))) => {
            Err(format!("{e:?} instead of a header failure"))
        }
        ("header failure", Err(e)) => Ok(Some(variant(&e))),
        ("payload failure", Err(AgeError::NoMatchingIdentity)) => Err("no match instead of a payload failure".into()),
        ("payload failure", Err(e)) => {
            // `payload` hashes what the reference releases before the error: releasing other
            // bytes would hand out plaintext the file does not vouch for.
            let released = released_before_error(v);
            let earlier = STOPS_EARLIER.iter().find(|(name, _)| *name == v.name).map(|(_, len)| *len);
            match earlier {
                Some(len) if released.len() == len => Ok(Some(variant(&e))),
                None if Some(hex_sha256(&released).as_str()) == payload => Ok(Some(variant(&e))),
                _ => Err(format!("a chunk-by-chunk reader released {} unexpected bytes", released.len())),
            }
        }
        (expect, Err(_)) => Err(format!("unknown expectation {expect:?}")),
    }
}

#[test]
fn every_cctv_vector_decrypts_or_fails_as_specified() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/age_vectors");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with('.') && name != "README.md")
        .collect();
    names.sort();
    assert_eq!(names.len(), VENDORED, "the vendored vectors in {} changed", dir.display());

    let mut failures = Vec::new();
    let mut by_expectation: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for name in &names {
        let v = parse(name, &std::fs::read(dir.join(name)).unwrap());
        match check(&v) {
            Ok(outcome) => {
                *by_expectation.entry(v.expect.clone()).or_default().entry(outcome.unwrap_or("Ok")).or_default() += 1
            }
            Err(why) => failures.push(format!("{}: {why}", v.name)),
        }
    }
    eprintln!("outcomes by expectation: {by_expectation:?}");
    assert!(failures.is_empty(), "{} vectors misbehave:\n{}", failures.len(), failures.join("\n"));
    let count = |expect: &str| by_expectation.get(expect).map_or(0, |o| o.values().sum::<usize>());
    // Each class must be exercised, so a vector whose header is misread cannot slip through
    // as a failure of another kind.
    for (expect, vectors) in
        [("success", 14), ("header failure", 32), ("payload failure", 18), ("no match", 3), ("HMAC failure", 1)]
    {
        assert_eq!(count(expect), vectors, "{expect} vectors");
    }
}

/// `scrypt_and_x25519` records an identity that opens none of its stanzas. Its X25519 stanza is
/// for the identity most vectors record, and that one must be refused too: a stanza it opens
/// before the scrypt one does not make the mix acceptable.
#[test]
fn a_header_mixing_scrypt_in_is_refused_even_by_an_identity_it_names() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/age_vectors");
    let v = parse("scrypt_and_x25519", &std::fs::read(dir.join("scrypt_and_x25519")).unwrap());
    let named = Identity::parse("AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0").unwrap();
    assert!(
        matches!(decrypt(&v.file, &[named]), Err(AgeError::Malformed(m)) if m.contains("scrypt")),
        "a header with an scrypt stanza beside an X25519 one was accepted"
    );
}
