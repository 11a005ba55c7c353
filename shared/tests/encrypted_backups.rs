//! Encrypted backups (age) exported over many steps, then checked, restored and verified
//! through their decryption, against rusqlite and the in-memory object store.

mod support;

use chrono::{TimeZone, Utc};
use flate2::read::MultiGzDecoder;
use futures::executor::block_on;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use shared::age::{self, Identity};
use shared::backup::{backup_step, BackupCheckpoint, BackupProgress, BackupSummary, BackupTarget};
use shared::dump::StepBudget;
use shared::restore::check::{check_step, CheckProgress};
use shared::restore::{restore_step, DumpObject, RestoreError, RestorePlan, RestoreProgress};
use std::collections::BTreeMap;
use std::io::Read;
use support::{assert_same_data, chinook, run_to_completion, MemoryStore, RusqliteSource, RusqliteTarget};

fn target(gzip: bool, identities: &[&Identity]) -> BackupTarget {
    let suffix = match (gzip, identities.is_empty()) {
        (false, true) => ".sql",
        (true, true) => ".sql.gz",
        (false, false) => ".sql.age",
        (true, false) => ".sql.gz.age",
    };
    BackupTarget {
        database: "chinook".into(),
        key: format!("daily/2026-11-23/chinook{suffix}"),
        staging_prefix: "staging/job/chinook/".into(),
        gzip,
        metadata: BTreeMap::new(),
        // Small parts: the dump is a multipart upload of many parts.
        part_size: 64 * 1024,
        started_at: Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap(),
        rows_per_query: 200,
        recipients: identities.iter().map(|i| i.recipient()).collect(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Runs an encrypted backup step by step, checking after every step that nothing readable was
/// parked in the bucket.
fn back_up_encrypted(conn: &Connection, store: &mut MemoryStore, target: &BackupTarget) -> (BackupSummary, u32) {
    let budget = StepBudget { max_queries: 3, ..StepBudget::UNLIMITED };
    let mut checkpoint: Option<BackupCheckpoint> = None;
    for step in 1..10_000 {
        let progress = block_on(backup_step(&mut RusqliteSource::new(conn), store, &|| 0, target, budget, checkpoint.as_ref())).unwrap();
        for (key, (bytes, _)) in &store.objects {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains("INSERT INTO") && !text.contains("CREATE TABLE"), "{key} holds readable SQL after step {step}");
        }
        match progress {
            BackupProgress::Paused { checkpoint: next, superseded } => {
                // The checkpoint travels through JSON, as through the metadata database.
                checkpoint = Some(serde_json::from_str(&serde_json::to_string(&next).unwrap()).unwrap());
                for key in superseded {
                    store.objects.remove(&key).unwrap_or_else(|| panic!("superseded {key} was never parked"));
                }
            }
            BackupProgress::Complete { summary, superseded } => {
                for key in superseded {
                    store.objects.remove(&key);
                }
                return (summary, step);
            }
        }
    }
    panic!("the backup does not advance");
}

#[test]
fn an_encrypted_export_over_many_steps_decrypts_to_the_plain_dump() {
    let conn = chinook();
    let (alice, bob) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]));
    for gzip in [false, true] {
        let mut plain_store = MemoryStore::default();
        let plain = run_to_completion(&conn, &mut plain_store, &target(gzip, &[]), StepBudget { max_queries: 3, ..StepBudget::UNLIMITED });
        let plain_sql = {
            let stored = &plain_store.objects[&plain.summary.key].0;
            if gzip { gunzip(stored) } else { stored.clone() }
        };

        let mut store = MemoryStore::default();
        let t = target(gzip, &[&alice, &bob]);
        let (summary, steps) = back_up_encrypted(&conn, &mut store, &t);
        assert!(steps > 10, "expected many steps, got {steps}");
        let keys: Vec<&String> = store.objects.keys().collect();
        assert_eq!(keys, [&t.key], "only the backup remains: every parked piece was superseded or cleared");
        assert!(store.uploads.is_empty());

        let (stored, info) = &store.objects[&t.key];
        assert_eq!(info.content_type, "application/octet-stream");
        assert_eq!(summary.sha256, sha256_hex(stored), "the recorded SHA-256 is the stored object's");
        for identity in [&alice, &bob] {
            let decrypted = age::decrypt(stored, &[identity.clone()]).unwrap();
            assert_eq!(summary.plaintext_sha256.as_deref(), Some(sha256_hex(&decrypted).as_str()));
            let sql = if gzip { gunzip(&decrypted) } else { decrypted };
            assert!(sql == plain_sql, "the decrypted dump differs from the unencrypted one (gzip {gzip})");
        }
        assert_eq!(plain.summary.plaintext_sha256, None, "an unencrypted dump has no separate plaintext digest");
    }
}

fn restore_all(conn: &Connection, store: &mut MemoryStore, dump: DumpObject) -> Result<(), RestoreError> {
    let plan = RestorePlan { operation: "op".into(), dump, table: None, keep_progress: false };
    let budget = StepBudget { max_queries: 150, max_bytes: 100_000, max_millis: u64::MAX };
    let mut target = RusqliteTarget::new(conn);
    for _ in 0..10_000 {
        match block_on(restore_step(&mut target, store, &|| 0, &plan, budget, 1))? {
            RestoreProgress::Paused(_) => {}
            RestoreProgress::Finished(report) => {
                assert!(report.sha256_matches);
                return Ok(());
            }
        }
    }
    panic!("the restore does not advance");
}

#[test]
fn restores_read_an_encrypted_dump_through_any_recipients_identity_only() {
    let source = chinook();
    let (alice, bob, carol) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]), Identity::from_secret([3; 32]));
    for gzip in [false, true] {
        let mut store = MemoryStore::default();
        let (summary, _) = back_up_encrypted(&source, &mut store, &target(gzip, &[&alice, &bob]));
        let dump = DumpObject::named(&summary.key, &summary.sha256);
        assert!(dump.encrypted && dump.gzip == gzip);
        for identity in [&alice, &bob] {
            let restored = Connection::open_in_memory().unwrap();
            restore_all(&restored, &mut store, dump.clone().with_identity(Some(identity))).unwrap();
            assert_same_data(&source, &restored);
        }
        // A restore checks the whole dump before it changes anything: a dump this consumer
        // cannot read is refused there.
        for (identity, why) in [(Some(&carol), "no identity given opens"), (None, "no AGE_IDENTITY")] {
            let dump = dump.clone().with_identity(identity);
            match block_on(check_step(&mut store, &|| 0, &dump, u64::MAX, u64::MAX, None)).unwrap() {
                CheckProgress::Refused(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}

#[test]
fn the_check_pass_reads_every_chunk_and_refuses_one_altered() {
    let source = chinook();
    let alice = Identity::from_secret([1; 32]);
    let mut store = MemoryStore::default();
    let (summary, _) = back_up_encrypted(&source, &mut store, &target(true, &[&alice]));
    let dump = DumpObject::named(&summary.key, &summary.sha256).with_identity(Some(&alice));
    let check = |store: &mut MemoryStore| {
        let mut cursor = None;
        loop {
            match block_on(check_step(store, &|| 0, &dump, 50_000, u64::MAX, cursor.take())).unwrap() {
                CheckProgress::Paused(next) => cursor = Some(next),
                done => return done,
            }
        }
    };
    assert!(matches!(check(&mut store), CheckProgress::Passed { .. }));
    // A flipped byte in the middle of the payload: the chunk's tag no longer verifies (and the
    // stored SHA-256 no longer matches).
    let stored = &mut store.objects.get_mut(&summary.key).unwrap().0;
    let middle = stored.len() / 2;
    stored[middle] ^= 0x01;
    match check(&mut store) {
        CheckProgress::Refused(reason) => assert!(reason.contains("altered"), "{reason}"),
        other => panic!("an altered chunk passed the check: {other:?}"),
    }
}
