//! Off-site copies over two in-memory stores with R2's (and S3's) multipart rules: copied in
//! parts over many steps, resumed after failures at every call, never recorded unless whole and
//! the bytes recorded at backup time.

mod support;

use futures::executor::block_on;
use sha2::{Digest, Sha256};
use shared::offsite::{replicate_step, ReplicaCheckpoint, ReplicaError, ReplicaPlan, ReplicaProgress};
use shared::ports::{ObjectInfo, ObjectStore};
use support::MemoryStore;

const PART: usize = 64 * 1024;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A source store holding `size` bytes at `daily/2026-12-03/db.sql`, and the plan to copy it.
fn source(size: usize) -> (MemoryStore, ReplicaPlan, Vec<u8>) {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let mut store = MemoryStore::default();
    let info = ObjectInfo { content_type: "application/sql".into(), custom: Default::default() };
    block_on(store.put("daily/2026-12-03/db.sql", bytes.clone(), &info)).unwrap();
    let plan = ReplicaPlan {
        source_key: "daily/2026-12-03/db.sql".into(),
        offsite_key: "d1/daily/2026-12-03/db.sql".into(),
        bytes: size as u64,
        sha256: sha256_hex(&bytes),
        content_type: "application/sql".into(),
        part_size: PART,
    };
    (store, plan, bytes)
}

/// Runs steps of one part each until done; a failing step is run again from the last
/// checkpoint, as the engine's retry would. Returns the steps and failures.
fn copy(src: &mut MemoryStore, dest: &mut MemoryStore, plan: &ReplicaPlan) -> Result<(u32, u32), ReplicaError> {
    let mut checkpoint: Option<ReplicaCheckpoint> = None;
    let (mut steps, mut failures) = (0, 0);
    loop {
        steps += 1;
        match block_on(replicate_step(src, dest, &|| 0, plan, PART as u64, u64::MAX, checkpoint.clone())) {
            Ok(ReplicaProgress::Paused(next)) => checkpoint = Some(serde_json::from_str(&serde_json::to_string(&next).unwrap()).unwrap()),
            Ok(ReplicaProgress::Done { bytes, .. }) => {
                assert_eq!(bytes, plan.bytes);
                return Ok((steps, failures));
            }
            Err(ReplicaError::Store(_)) if failures < 3 => failures += 1,
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn a_small_object_is_one_put_and_a_large_one_many_parts_over_many_steps() {
    for (size, parts) in [(0, 0), (1000, 0), (PART, 0), (PART + 1, 2), (3 * PART + 17, 4)] {
        let (mut src, plan, bytes) = source(size);
        let mut dest = MemoryStore::default();
        let (steps, _) = copy(&mut src, &mut dest, &plan).unwrap();
        assert!(dest.objects[&plan.offsite_key].0 == bytes, "size {size}: the copy differs");
        assert!(dest.uploads.is_empty(), "size {size}: an upload is left open");
        // One part per step, the completion with the last; a small object is one put.
        assert_eq!(steps, parts.max(1), "size {size}");
    }
}

#[test]
fn a_failure_at_any_call_is_resumed_to_the_same_copy() {
    let (mut reference_src, plan, bytes) = source(3 * PART + 5);
    let mut reference = MemoryStore::default();
    copy(&mut reference_src, &mut reference, &plan).unwrap();
    for fail_at in 1..=reference.calls() {
        let (mut src, plan, _) = source(3 * PART + 5);
        let mut dest = MemoryStore { fail_call: Some(fail_at), ..MemoryStore::default() };
        let (_, failures) = copy(&mut src, &mut dest, &plan).unwrap();
        assert_eq!(failures, 1, "call {fail_at} was made to fail");
        assert!(dest.objects[&plan.offsite_key].0 == bytes, "failing call {fail_at}: the copy differs");
    }
}

#[test]
fn a_copy_completed_but_not_recorded_is_found_complete() {
    let (mut src, plan, bytes) = source(2 * PART + 3);
    let mut dest = MemoryStore::default();
    let mut checkpoint = None;
    let last = loop {
        match block_on(replicate_step(&mut src, &mut dest, &|| 0, &plan, PART as u64, u64::MAX, checkpoint.clone())).unwrap() {
            ReplicaProgress::Paused(next) => checkpoint = Some(next),
            ReplicaProgress::Done { .. } => break checkpoint,
        }
    };
    // The step that completed it died before its outcome was recorded: run it again.
    let again = block_on(replicate_step(&mut src, &mut dest, &|| 0, &plan, PART as u64, u64::MAX, last)).unwrap();
    assert_eq!(again, ReplicaProgress::Done { bytes: plan.bytes, etag: None });
    assert!(dest.objects[&plan.offsite_key].0 == bytes);
}

#[test]
fn a_local_object_that_is_not_the_recorded_one_is_not_copied() {
    for size in [100, 2 * PART + 3] {
        let (mut src, mut plan, _) = source(size);
        plan.sha256 = "00".repeat(32);
        let mut dest = MemoryStore::default();
        match copy(&mut src, &mut dest, &plan) {
            Err(ReplicaError::Source(message)) => assert!(message.contains("not the") && message.contains("recorded"), "{message}"),
            other => panic!("size {size}: {other:?}"),
        }
        assert!(!dest.objects.contains_key(&plan.offsite_key), "size {size}: a wrong copy is in place");
        let (mut src, mut plan, _) = source(size);
        plan.bytes += 1;
        assert!(matches!(copy(&mut src, &mut MemoryStore::default(), &plan), Err(ReplicaError::Source(_))));
    }
}
