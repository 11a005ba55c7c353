"""The task engine under faults, on the local stack: lost sends, duplicate deliveries, a lease
that runs out mid-step, and the whole stack killed mid-export. Each test ends with every job
completed, every dump complete and verified exactly once, every step recorded once, and no
multipart upload or staging object left behind."""

import gzip
import hashlib
import uuid

import pytest

from stack import ROOT, SMALL_BUDGET, Stack, wait_until

META = "d1-backup-meta"
# Multi-step exports and verifications (SMALL_BUDGET); the sweeper re-sends anything overdue
# at once; a lease outlasts a 5 s step by 5 s, so a delivery killed mid-step is taken over fast.
ENGINE_VARS = {**SMALL_BUDGET, "EXPORT_MAX_SECONDS": "5", "LEASE_MARGIN_SECONDS": "5"}
ALL_VARS = {"SWEEP_GRACE_SECONDS": "0"}


@pytest.fixture(scope="module")
def engine_stack():
    s = Stack(ROOT / "target" / "e2e" / f"engine-{uuid.uuid4().hex[:8]}", consumer_vars=ENGINE_VARS,
              all_vars=ALL_VARS, databases=["chinook", "demo"])
    try:
        yield s.start()
    finally:
        s.stop()


def trigger(stack, body) -> str:
    r = stack.admin("POST", "/trigger", body)
    assert r.status == 202, r.body
    return r.json()["jobId"]


def run_row(stack, job_id, database):
    (row,) = stack.d1_query(META, f"SELECT * FROM runs WHERE job_id = '{job_id}' AND database = '{database}'")
    return row


def assert_backed_up_once(stack, job_id):
    """Every run of the job succeeded in one recorded delivery per step, its dump is whole and
    verified by exactly one verification, and nothing of the export is left in R2."""
    job = stack.wait_for_job(job_id, timeout=180)
    assert job["status"] == "completed", job
    stack.wait_until_idle()
    for run in stack.admin("GET", f"/jobs/{job_id}").json()["runs"]:
        steps = [a["step"] for a in run["history"] if a["outcome"] in ("continued", "succeeded")]
        assert steps == list(range(run["step"])), run["history"]
        assert run["verifyState"] == "verified", run
        verifications = stack.d1_query(META, f"SELECT state FROM operations WHERE run_id = '{run['id']}'")
        assert verifications == [{"state": "succeeded"}], verifications
        dump = stack.r2_get(run["r2Key"])
        assert len(dump) == run["bytes"] and hashlib.sha256(dump).hexdigest() == run["sha256"]
        sql = gzip.decompress(dump) if run["r2Key"].endswith(".gz") else dump
        assert b"\n-- Dump complete:" in sql[-65536:]
    assert stack.r2_open_uploads() == []
    assert stack.r2_objects(f"staging/{job_id}/") == {}
    return job


def test_a_continuation_whose_send_is_lost_is_sent_by_the_sweeper(engine_stack):
    s = engine_stack
    job_id = trigger(s, {"databases": ["chinook"], "faults": {"chinook": {"stage": "continue_send", "failAttempts": 1}}})
    # Step 0 is recorded, but the message for step 1 was lost: the run waits, unheld.
    wait_until(lambda: (lambda r: r["step"] == 1 and r["lease_owner"] is None)(run_row(s, job_id, "chinook")),
               what="the first checkpoint")
    assert run_row(s, job_id, "chinook")["state"] == "running"
    s.sweep()
    job = assert_backed_up_once(s, job_id)
    (run,) = job["runs"]
    assert run["step"] > 2, "chinook takes several steps on this budget"


def test_a_job_whose_first_send_is_lost_is_sent_by_the_sweeper(engine_stack):
    s = engine_stack
    job_id = trigger(s, {"databases": ["chinook", "demo"], "faults": {"demo": {"stage": "enqueue_send", "failAttempts": 1}}})
    # chinook's message went out; demo's was lost at enqueue.
    wait_until(lambda: run_row(s, job_id, "chinook")["state"] == "succeeded", what="chinook's backup")
    demo = run_row(s, job_id, "demo")
    assert (demo["state"], demo["attempts"], demo["step"]) == ("queued", 0, 0), demo
    s.sweep()
    assert_backed_up_once(s, job_id)


def test_three_concurrent_deliveries_of_each_step_export_once(engine_stack):
    s = engine_stack
    job_id = trigger(s, {"databases": ["chinook", "demo"], "deliverCopies": 3})
    job = assert_backed_up_once(s, job_id)
    for run in job["runs"]:
        # One lease per step: the copies found the run held or moved on and did nothing.
        assert run["attempts"] == run["step"], run
        inventory = s.d1_query(META, f"SELECT count(*) AS n FROM backups WHERE key = '{run['r2Key']}'")
        assert inventory == [{"n": 1}]


def test_a_delivery_whose_lease_runs_out_mid_step_writes_nothing(engine_stack):
    s = engine_stack
    job_id = trigger(s, {"databases": ["chinook"], "faults": {"chinook": {"stage": "lease_expiry", "failAttempts": 1}}})
    job = assert_backed_up_once(s, job_id)
    (run,) = job["runs"]
    # The first delivery of step 0 lost its lease before recording the step; the delivery that
    # took over recorded it once (assert_backed_up_once), and the first left neither its upload
    # nor its tail behind.
    assert run["attempts"] == run["step"] + 1, run
    # One token per lease, and one for the taking over.
    tokens = s.d1_query(META, f"SELECT lease_token FROM runs WHERE id = '{run['id']}'")
    assert tokens == [{"lease_token": run["attempts"] + 1}], tokens
    log = s.log_path.read_text(errors="replace")
    assert "injected fault: lease 1 taken over" in log
    assert "was taken over by another delivery (token 1 is now Some(2)); stopping without writing" in log


def test_the_stack_killed_mid_export_finishes_after_a_restart():
    state = ROOT / "target" / "e2e" / f"killed-{uuid.uuid4().hex[:8]}"
    s = Stack(state, consumer_vars=ENGINE_VARS, all_vars=ALL_VARS, databases=["chinook"]).start()
    try:
        job_id = trigger(s, {"databases": ["chinook"]})
        wait_until(lambda: run_row(s, job_id, "chinook")["step"] >= 2, what="two export steps")
        s.kill()
        # The same state, started again: the queues lost whatever they held.
        s = Stack(state, port=s.port, consumer_vars=ENGINE_VARS, all_vars=ALL_VARS, databases=["chinook"]).start()
        run = run_row(s, job_id, "chinook")
        assert run["state"] != "succeeded", run

        def finished():
            s.sweep()
            return run_row(s, job_id, "chinook")["state"] == "succeeded"

        # A delivery killed mid-step holds its lease for at most 10 s; the sweeper then re-sends.
        wait_until(finished, what="the export after the restart", timeout=90, interval=2)
        # Its verification too may need the sweeper: the kill can take its first message.
        wait_until(lambda: s.sweep() or s.d1_query(META, s.BUSY_SQL)[0]["n"] == 0, what="the verification",
                   timeout=120, interval=2)
        assert_backed_up_once(s, job_id)
    finally:
        s.stop()
