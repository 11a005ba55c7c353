//! `shared::age` against the reference `age` and `age-keygen` CLIs: each reads the other's
//! files, byte for byte, and both refuse an altered one. The CLIs must be on PATH (`make test`
//! installs them); without them these tests fail rather than pass having checked nothing.

use shared::age::{
    decrypt, encrypt, open_header, open_pending, random_bytes, AgeError, EncryptionState, Identity, Recipient, Seed,
    StreamEncryptor, CHUNK_SIZE,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Empty, then around the chunk size: a short last chunk, a full one, one of a single byte.
const SIZES: [usize; 6] = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 200_000];

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique =
            format!("d1-backup-age-cli-{}-{test}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a CLI; a missing binary fails the test with what to do about it.
fn run(program: &str, args: &[&Path]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{program}` ({e}): the age CLIs must be on PATH for these tests (`apt-get install age`, as `make test` does)")
    })
}

fn run_ok(program: &str, args: &[&Path]) -> Output {
    let output = run(program, args);
    assert!(output.status.success(), "`{program} {args:?}` failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn path(text: &str) -> &Path {
    Path::new(text)
}

/// A key pair made by `age-keygen -o`, parsed from the whole file it writes.
fn keygen(dir: &TempDir, name: &str) -> (PathBuf, Identity) {
    let file = dir.join(name);
    run_ok("age-keygen", &[path("-o"), &file]);
    let identity = Identity::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let public = run_ok("age-keygen", &[path("-y"), &file]).stdout;
    assert_eq!(
        identity.recipient(),
        Recipient::parse(String::from_utf8(public).unwrap().trim()).unwrap(),
        "our recipient for {name} is not the one age-keygen derives"
    );
    (file, identity)
}

fn plaintext(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// `age -d -i key file`: the plaintext (on stdout: with `-o`, age 1.1 creates no file for an
/// empty one), or the CLI's complaint.
fn cli_decrypt(dir: &TempDir, key: &Path, file: &[u8]) -> Result<Vec<u8>, String> {
    let input = dir.join("cli-in.age");
    std::fs::write(&input, file).unwrap();
    let result = run("age", &[path("-d"), path("-i"), key, &input]);
    if result.status.success() {
        Ok(result.stdout)
    } else {
        Err(String::from_utf8_lossy(&result.stderr).into_owned())
    }
}

/// `age <recipient args> file`: the encrypted file.
fn cli_encrypt(dir: &TempDir, recipients: &[&Path], plain: &[u8]) -> Vec<u8> {
    let input = dir.join("cli-plain");
    std::fs::write(&input, plain).unwrap();
    let mut args = recipients.to_vec();
    args.push(&input);
    run_ok("age", &args).stdout
}

#[test]
fn files_we_write_decrypt_with_the_cli_for_every_recipient() {
    let dir = TempDir::new("ours");
    let (alice_key, alice) = keygen(&dir, "alice.txt");
    let (bob_key, bob) = keygen(&dir, "bob.txt");
    for size in SIZES {
        let plain = plaintext(size);
        let file = encrypt(&plain, &[alice.recipient(), bob.recipient()]).unwrap();
        for key in [&alice_key, &bob_key] {
            let opened = cli_decrypt(&dir, key, &file).unwrap_or_else(|e| panic!("size {size}, {key:?}: {e}"));
            assert!(opened == plain, "size {size}, {key:?}: the CLI decrypted other bytes");
        }
    }
}

#[test]
fn files_the_cli_writes_decrypt_with_ours() {
    let dir = TempDir::new("theirs");
    let (_, alice) = keygen(&dir, "alice.txt");
    let (_, bob) = keygen(&dir, "bob.txt");
    let recipients = dir.join("recipients.txt");
    std::fs::write(&recipients, format!("# two readers\n{}\n{}\n", alice.recipient(), bob.recipient())).unwrap();
    let alice_recipient = alice.recipient().to_string();
    for size in SIZES {
        let plain = plaintext(size);
        let to_alice = cli_encrypt(&dir, &[path("-r"), path(&alice_recipient)], &plain);
        assert!(decrypt(&to_alice, std::slice::from_ref(&alice)).unwrap() == plain, "size {size}, -r");
        let to_both = cli_encrypt(&dir, &[path("-R"), &recipients], &plain);
        for identity in [&alice, &bob] {
            let opened =
                decrypt(&to_both, std::slice::from_ref(identity)).unwrap_or_else(|e| panic!("size {size}, -R: {e}"));
            assert!(opened == plain, "size {size}, -R, {identity:?}: other bytes");
        }
    }
}

#[test]
fn a_file_written_across_pauses_decrypts_with_the_cli() {
    let dir = TempDir::new("paused");
    let (alice_key, alice) = keygen(&dir, "alice.txt");
    let plain = plaintext(2 * CHUNK_SIZE + 999);
    // Several pauses in one file, at the start, inside a chunk and on either side of a boundary.
    let pauses = [0, 5, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 998];
    let (mut encryptor, mut file) = StreamEncryptor::start(&[alice.recipient()], &Seed::fresh(1).unwrap()).unwrap();
    let mut written = 0;
    for pause in pauses {
        encryptor.push(&plain[written..pause], &mut file).unwrap();
        written = pause;
        // What one invocation leaves behind: the checkpoint, as JSON, and the parked chunk.
        let parked = encryptor.seal_pending(random_bytes().unwrap()).unwrap();
        let state = serde_json::to_string(&encryptor.state(Some("staging/x".into()))).unwrap();
        let state: EncryptionState = serde_json::from_str(&state).unwrap();
        encryptor = StreamEncryptor::resume(&state, open_pending(&state, &parked).unwrap()).unwrap();
    }
    encryptor.push(&plain[written..], &mut file).unwrap();
    encryptor.finish(&mut file).unwrap();
    assert!(cli_decrypt(&dir, &alice_key, &file).unwrap() == plain, "the CLI decrypted other bytes");
}

#[test]
fn a_flipped_payload_byte_is_refused_by_both() {
    let dir = TempDir::new("flipped");
    let (alice_key, alice) = keygen(&dir, "alice.txt");
    let plain = plaintext(CHUNK_SIZE + 100);
    let alice_recipient = alice.recipient().to_string();
    let ours = encrypt(&plain, &[alice.recipient()]).unwrap();
    let theirs = cli_encrypt(&dir, &[path("-r"), path(&alice_recipient)], &plain);
    for (writer, file) in [("ours", ours), ("the CLI's", theirs)] {
        let header = open_header(&file, std::slice::from_ref(&alice)).unwrap();
        // One byte in each chunk's ciphertext, so the refusal is not just of the last chunk.
        for chunk in 0..2 {
            let mut altered = file.clone();
            altered[header.chunk_offset(chunk) as usize + 40] ^= 0x01;
            let read = decrypt(&altered, std::slice::from_ref(&alice));
            assert!(matches!(read, Err(AgeError::Unauthentic(_))), "{writer} file altered in chunk {chunk}: {read:?}");
            assert!(
                cli_decrypt(&dir, &alice_key, &altered).is_err(),
                "the CLI read {writer} file altered in chunk {chunk}"
            );
        }
        // The untouched file still opens with both, so the refusals above are the flip's doing.
        assert!(decrypt(&file, std::slice::from_ref(&alice)).unwrap() == plain, "{writer} file");
        assert!(cli_decrypt(&dir, &alice_key, &file).unwrap() == plain, "{writer} file with the CLI");
    }
}
