//! Weekly archives written over many steps into an in-memory store with R2's rules, read back
//! with the `tar` crate and with GNU tar.

mod support;

use chrono::{NaiveDate, TimeZone, Utc};
use flate2::read::MultiGzDecoder;
use futures::executor::block_on;
use sha2::{Digest, Sha256};
use shared::archive::{
    archive_step, ArchiveBudget, ArchiveCheckpoint, ArchiveError, ArchiveMember, ArchivePlan, ArchiveProgress,
    ArchiveSummary, Manifest,
};
use shared::ports::{ObjectInfo, ObjectStore};
use std::collections::BTreeMap;
use std::io::Read;
use support::MemoryStore;

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Pseudo-random but compressible SQL-like text of `len` bytes.
fn daily_body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    while out.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(format!("INSERT INTO t VALUES({},'row {}');\n", x >> 40, x % 1000).as_bytes());
    }
    out.truncate(len);
    out
}

/// Stores dailies for `dates` × `databases` and returns the plan that archives them.
fn week_with_dailies(store: &mut MemoryStore, sizes: &[usize], part_size: usize) -> ArchivePlan {
    let mut members = Vec::new();
    let databases = ["alpha", "beta"];
    for (i, size) in sizes.iter().enumerate() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 16).unwrap() + chrono::Duration::days(i as i64 / 2);
        let database = databases[i % 2];
        let key = format!("daily/{date}/{database}.sql");
        let body = daily_body(i as u64, *size);
        let info = ObjectInfo { content_type: "application/sql".into(), custom: BTreeMap::new() };
        members.push(ArchiveMember {
            database: database.into(),
            date,
            source_key: key.clone(),
            path: ArchiveMember::path_for(&key).unwrap(),
            bytes: body.len() as u64,
            sha256: hex_sha256(&body),
            rows: i as u64 * 10,
            tables: 1,
            mtime: date.and_hms_opt(3, 0, 5).unwrap().and_utc().timestamp(),
        });
        block_on(store.put(&key, body, &info)).unwrap();
    }
    members.sort_by(|a, b| a.path.cmp(&b.path));
    ArchivePlan {
        week: "2026-W47".into(),
        key: "weekly/2026-W47.tar.gz".into(),
        staging_prefix: "staging/archive-1/".into(),
        part_size,
        created_at: Utc.with_ymd_and_hms(2026, 11, 23, 4, 0, 0).unwrap(),
        members,
    }
}

/// Runs steps until the archive completes, deleting superseded staging objects as the Worker
/// does once a checkpoint is saved. Returns the summary and the number of steps.
fn run_to_completion(store: &mut MemoryStore, plan: ArchivePlan, budget: ArchiveBudget) -> ArchiveSummary {
    let mut checkpoint = ArchiveCheckpoint::start(plan);
    loop {
        match block_on(archive_step(store, &|| 0, budget, &checkpoint)).unwrap() {
            ArchiveProgress::Paused { checkpoint: next, superseded } => {
                for key in superseded {
                    block_on(store.delete(&key)).unwrap();
                }
                assert!(next.step == checkpoint.step + 1);
                checkpoint = next;
            }
            ArchiveProgress::Complete { summary, superseded } => {
                for key in superseded {
                    block_on(store.delete(&key)).unwrap();
                }
                return summary;
            }
        }
    }
}

/// The archive's members as (path, size, mode, mtime, bytes), via the `tar` crate.
fn members_of(archive: &[u8]) -> Vec<(String, u64, u32, u64, Vec<u8>)> {
    let mut tar = tar::Archive::new(MultiGzDecoder::new(archive));
    tar.entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.size().unwrap(),
                header.mode().unwrap(),
                header.mtime().unwrap(),
                bytes,
            )
        })
        .collect()
}

fn assert_archive_holds(store: &MemoryStore, summary: &ArchiveSummary, plan: &ArchivePlan) {
    let archive = &store.objects[&summary.key].0;
    assert_eq!(archive.len() as u64, summary.bytes);
    assert_eq!(hex_sha256(archive), summary.sha256);
    let members = members_of(archive);
    assert_eq!(members.len(), summary.members.len() + 1, "every daily and the manifest");
    for (member, (path, size, mode, mtime, bytes)) in summary.members.iter().zip(&members) {
        assert_eq!(path, &member.path);
        assert_eq!(*size, member.bytes);
        assert_eq!(*mode, 0o644);
        assert_eq!(*mtime as i64, member.mtime);
        assert_eq!(bytes, &store.objects[&member.source_key].0, "{path} is the daily byte for byte");
    }
    let (path, _, _, _, json) = members.last().unwrap();
    assert_eq!(path, "manifest.json");
    let manifest: Manifest = serde_json::from_slice(json).unwrap();
    assert_eq!(manifest.week, plan.week);
    assert_eq!(manifest.members, summary.members);
    assert_eq!(manifest.excluded, summary.excluded);
    assert!(store.uploads.is_empty(), "no upload left open");
    assert!(
        !store.objects.keys().any(|k| k.starts_with("staging/")),
        "no staging object left: {:?}",
        store.objects.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_small_week_is_one_put_holding_every_daily_and_a_manifest() {
    let mut store = MemoryStore::default();
    let plan = week_with_dailies(&mut store, &[1000, 513, 512, 0, 70_000], 5 * 1024 * 1024);
    let summary = run_to_completion(&mut store, plan.clone(), ArchiveBudget::UNLIMITED);
    assert_eq!(summary.steps, 1);
    assert!(summary.excluded.is_empty());
    assert_eq!(summary.members.len(), 5);
    assert_archive_holds(&store, &summary, &plan);
    let info = &store.objects[&summary.key].1;
    assert_eq!(info.content_type, "application/gzip");
    assert_eq!(info.custom["sha256"], summary.sha256);
}

#[test]
fn a_large_week_streams_over_many_steps_into_one_multipart_archive() {
    let mut store = MemoryStore::default();
    // Incompressible enough that the archive spans several 64 KiB parts.
    let sizes = [300_000, 5, 1_000_000, 200_000, 4096];
    let plan = week_with_dailies(&mut store, &sizes, 64 * 1024);
    // Reading one byte exhausts the budget: every read chunk ends a step.
    let budget = ArchiveBudget { max_read_bytes: 1, max_millis: u64::MAX };
    let summary = run_to_completion(&mut store, plan.clone(), budget);
    assert!(summary.steps > 5, "took {} steps", summary.steps);
    assert_archive_holds(&store, &summary, &plan);
    // Nothing but the dailies' bytes went through memory at once.
    assert!(store.largest_body <= 4 * 1024 * 1024 + 64 * 1024);

    // The same members in one step: same tar content (gzip members differ, the tar does not).
    let mut one_shot = MemoryStore::default();
    let plan2 = week_with_dailies(&mut one_shot, &sizes, 64 * 1024);
    let summary2 = run_to_completion(&mut one_shot, plan2, ArchiveBudget::UNLIMITED);
    let tar_of = |store: &MemoryStore, key: &str| {
        let mut out = Vec::new();
        MultiGzDecoder::new(&store.objects[key].0[..]).read_to_end(&mut out).unwrap();
        out
    };
    assert_eq!(tar_of(&store, &summary.key), tar_of(&one_shot, &summary2.key));
}

#[test]
fn a_daily_that_fails_its_check_is_left_out_and_reported() {
    // Hashed by the archive as it copies, and by a store that hashes what it reads (a Worker's,
    // natively).
    for hashes_reads in [false, true] {
        a_daily_that_fails_its_check_is_left_out(hashes_reads);
    }
}

fn a_daily_that_fails_its_check_is_left_out(hashes_reads: bool) {
    let mut store = MemoryStore { hashes_reads, ..MemoryStore::default() };
    let plan = week_with_dailies(&mut store, &[200_000, 300_000, 100, 50_000], 64 * 1024);
    // One daily's bytes changed after its SHA-256 was recorded, one is gone, one has another size.
    let corrupt = plan.members[2].source_key.clone();
    store.objects.get_mut(&corrupt).unwrap().0[40] ^= 1;
    let missing = plan.members[0].source_key.clone();
    store.objects.remove(&missing);
    let resized = plan.members[3].source_key.clone();
    store.objects.get_mut(&resized).unwrap().0.push(b'\n');

    let budget = ArchiveBudget { max_read_bytes: 100_000, max_millis: u64::MAX };
    let summary = run_to_completion(&mut store, plan.clone(), budget);
    let excluded: BTreeMap<&str, &str> =
        summary.excluded.iter().map(|e| (e.member.source_key.as_str(), e.reason.as_str())).collect();
    assert_eq!(excluded.len(), 3);
    assert!(excluded[corrupt.as_str()].starts_with("SHA-256 is "), "{excluded:?}");
    assert_eq!(excluded[missing.as_str()], "the daily is missing from R2");
    assert!(excluded[resized.as_str()].contains("bytes, the inventory records"));
    assert_eq!(summary.members, vec![plan.members[1].clone()]);
    assert_archive_holds(&store, &summary, &plan);
}

#[test]
fn a_failed_step_retried_from_its_checkpoint_gives_the_same_archive() {
    let sizes = [400_000, 250_000, 90_000];
    let budget = ArchiveBudget { max_read_bytes: 150_000, max_millis: u64::MAX };
    let mut clean = MemoryStore::default();
    let plan = week_with_dailies(&mut clean, &sizes, 64 * 1024);
    let expected = run_to_completion(&mut clean, plan.clone(), budget);

    // Fail every store call in turn once, retrying the step from the last saved checkpoint.
    let calls = clean.calls();
    for fail_at in (1..calls).step_by(3) {
        let mut store = MemoryStore::default();
        week_with_dailies(&mut store, &sizes, 64 * 1024);
        store.fail_call = Some(store.calls() + fail_at);
        let mut checkpoint = ArchiveCheckpoint::start(plan.clone());
        let summary = loop {
            match block_on(archive_step(&mut store, &|| 0, budget, &checkpoint)) {
                Ok(ArchiveProgress::Paused { checkpoint: next, superseded }) => {
                    superseded.iter().for_each(|k| while block_on(store.delete(k)).is_err() {});
                    checkpoint = next;
                }
                Ok(ArchiveProgress::Complete { summary, superseded }) => {
                    superseded.iter().for_each(|k| while block_on(store.delete(k)).is_err() {});
                    break summary;
                }
                Err(ArchiveError::Store(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(summary.sha256, expected.sha256, "failing call {fail_at}");
        assert_archive_holds(&store, &summary, &plan);
    }
}

#[test]
fn gnu_tar_lists_and_extracts_the_archive() {
    let mut store = MemoryStore::default();
    let plan = week_with_dailies(&mut store, &[10_000, 20_000, 700_000], 64 * 1024);
    let budget = ArchiveBudget { max_read_bytes: 100_000, max_millis: u64::MAX };
    let summary = run_to_completion(&mut store, plan, budget);
    let dir = std::env::temp_dir().join(format!("archive-steps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("week.tar.gz");
    std::fs::write(&path, &store.objects[&summary.key].0).unwrap();
    let listing = std::process::Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let mut expected: Vec<String> = summary.members.iter().map(|m| m.path.clone()).collect();
    expected.push("manifest.json".into());
    assert_eq!(String::from_utf8(listing.stdout).unwrap().lines().collect::<Vec<_>>(), expected);
    let status = std::process::Command::new("tar").arg("-xzf").arg(&path).arg("-C").arg(&dir).status().unwrap();
    assert!(status.success());
    for member in &summary.members {
        assert_eq!(std::fs::read(dir.join(&member.path)).unwrap(), store.objects[&member.source_key].0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_archive_that_does_not_read_back_as_written_is_never_reported_complete() {
    // Verified whole (a step with room to read it all) and in pieces across steps.
    for budget in [ArchiveBudget::UNLIMITED, ArchiveBudget { max_read_bytes: 100_000, max_millis: u64::MAX }] {
        let mut store = MemoryStore::default();
        let plan = week_with_dailies(&mut store, &[200_000, 300_000, 100], 64 * 1024);
        store.damage_on_store = Some(plan.key.clone());
        let mut checkpoint = ArchiveCheckpoint::start(plan);
        let error = loop {
            match block_on(archive_step(&mut store, &|| 0, budget, &checkpoint)) {
                Ok(ArchiveProgress::Paused { checkpoint: next, .. }) => checkpoint = next,
                Ok(ArchiveProgress::Complete { .. }) => panic!("a damaged archive was reported complete ({budget:?})"),
                Err(e) => break e,
            }
        };
        assert!(matches!(error, ArchiveError::Verification(_)), "{error}");
    }
}
