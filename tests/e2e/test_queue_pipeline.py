"""The producer -> queue -> consumer path under faults and duplicates, on the local stack, with
every state checked in the metadata database and every object in R2."""

import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

from stack import ROOT, Stack

META = "d1-backup-meta"


def trigger(stack, body, headers=None):
    r = stack.request("POST", "/trigger", body, token="e2e-admin-token", headers=headers)
    assert r.status in (200, 202), r.body
    return r


def run_of(job, database):
    (run,) = [r for r in job["runs"] if r["database"] == database]
    return run


def objects_of_job(stack, job_id):
    return {k: v for k, v in stack.r2_objects("manual/").items() if job_id in k}


def test_a_database_failing_twice_then_succeeding_is_backed_up_once(roomy_stack):
    r = trigger(roomy_stack, {"databases": ["demo"], "faults": {"demo": {"stage": "r2_part", "failAttempts": 2}}})
    job = roomy_stack.wait_for_job(r.json()["jobId"])
    assert job["status"] == "completed", job
    run = run_of(job, "demo")
    assert run["state"] == "succeeded" and run["attempts"] == 3
    history = [(a["attempt"], a["outcome"], a["retryDelaySeconds"]) for a in run["history"]]
    # Backoff: 1 s, then 2 s (the test stack's RETRY_BASE_SECONDS and RETRY_MAX_SECONDS).
    assert history == [(1, "retrying", 1), (2, "retrying", 2), (3, "succeeded", None)]
    assert "injected fault" in run["history"][0]["error"]
    assert list(objects_of_job(roomy_stack, job["jobId"])) == [run["r2Key"]]
    assert roomy_stack.r2_open_uploads() == []


def test_a_database_that_always_fails_is_dead_and_the_others_succeed(roomy_stack):
    r = trigger(roomy_stack, {"faults": {"hostile": {"stage": "d1_query", "failAttempts": 99}}})
    job = roomy_stack.wait_for_job(r.json()["jobId"], timeout=120)
    assert job["status"] == "partial", job
    dead = run_of(job, "hostile")
    assert dead["state"] == "dead" and "injected fault" in dead["error"]
    # BACKUP_MAX_ATTEMPTS (6) attempts, counted by the run: five retried with their backoff,
    # the last one recorded as its death.
    history = [(a["attempt"], a["outcome"], a["retryDelaySeconds"]) for a in dead["history"]]
    assert history == [(1, "retrying", 1), (2, "retrying", 2), (3, "retrying", 2), (4, "retrying", 2),
                       (5, "retrying", 2), (6, "dead", None)]
    for run in job["runs"]:
        if run["database"] != "hostile":
            assert run["state"] == "succeeded", run
    keys = objects_of_job(roomy_stack, job["jobId"])
    assert dead["r2Key"] not in keys and len(keys) == len(job["runs"]) - 1
    alerts = roomy_stack.d1_query(META, f"SELECT kind, database FROM alerts WHERE job_id = '{job['jobId']}' ORDER BY kind")
    # The run's death, and the job's outcome once its last run was final.
    assert alerts == [{"kind": "job_failed", "database": None}, {"kind": "run_dead", "database": "hostile"}]


def test_a_dead_multipart_export_leaves_no_upload_behind(roomy_stack):
    # bulk is over one part: its upload is open when the completion keeps failing.
    r = trigger(roomy_stack, {"databases": ["bulk"], "faults": {"bulk": {"stage": "complete", "failAttempts": 99}}})
    job = roomy_stack.wait_for_job(r.json()["jobId"], timeout=120)
    run = run_of(job, "bulk")
    assert run["state"] == "dead", run
    assert roomy_stack.r2_open_uploads() == []
    assert roomy_stack.r2_objects(f"staging/{job['jobId']}/") == {}
    assert objects_of_job(roomy_stack, job["jobId"]) == {}


def test_duplicate_deliveries_export_once(roomy_stack):
    r = trigger(roomy_stack, {"databases": ["chinook"], "deliverCopies": 2})
    job = roomy_stack.wait_for_job(r.json()["jobId"])
    run = run_of(job, "chinook")
    assert run["state"] == "succeeded" and run["attempts"] == 1
    outcomes = [a["outcome"] for a in run["history"]]
    assert outcomes.count("succeeded") == 1 and set(outcomes) <= {"succeeded", "leased_elsewhere"}
    assert list(objects_of_job(roomy_stack, job["jobId"])) == [run["r2Key"]]
    inventory = roomy_stack.d1_query(META, f"SELECT count(*) AS n FROM backups WHERE key = '{run['r2Key']}'")
    assert inventory == [{"n": 1}]
    assert roomy_stack.r2_open_uploads() == []


def test_concurrent_cron_firings_for_one_night_make_one_job(roomy_stack):
    scheduled = datetime(2026, 4, 2, 3, 0, tzinfo=timezone.utc)
    when_ms = int(scheduled.timestamp() * 1000)
    threads = [threading.Thread(target=roomy_stack.fire_cron, args=("0 3 * * *", when_ms)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requested = "2026-04-02T03:00:00.000Z"
    jobs = []
    for _ in range(60):
        jobs = roomy_stack.d1_query(META, f"SELECT id FROM jobs WHERE kind = 'daily' AND requested_at = '{requested}'")
        if jobs:
            break
        time.sleep(0.5)
    assert len(jobs) == 1, jobs
    job = roomy_stack.wait_for_job(jobs[0]["id"])
    assert job["status"] == "completed"
    for run in job["runs"]:
        # One delivery per step (a multipart dump takes two), none of them repeated.
        assert run["attempts"] == run["step"] == len(run["history"]), run
        assert run["r2Key"].startswith("daily/2026-04-02/"), run
    inventory = roomy_stack.d1_query(META, "SELECT count(*) AS n FROM backups WHERE date = '2026-04-02'")
    assert inventory == [{"n": len(job["runs"])}]


def test_unreadable_messages_are_recorded_not_retried(roomy_stack):
    marker = uuid.uuid4().hex
    trigger(roomy_stack, {"databases": ["demo"], "rawMessages": [{"v": 1, "jobId": marker}, f"text {marker}"]})
    rows = []
    for _ in range(60):
        rows = roomy_stack.d1_query(META, f"SELECT body, error FROM rejected_messages WHERE body LIKE '%{marker}%'")
        if len(rows) == 2:
            break
        time.sleep(0.5)
    assert len(rows) == 2, rows
    assert all("unreadable" in row["body"] for row in rows)
    alerts = roomy_stack.d1_query(META, f"SELECT count(*) AS n FROM alerts WHERE kind = 'message_rejected' AND message LIKE '%rejected%'")
    assert alerts[0]["n"] >= 2


def test_idempotency_key_returns_the_same_job(roomy_stack):
    key = f"e2e-{uuid.uuid4().hex}"
    first = trigger(roomy_stack, {"databases": ["demo"]}, headers={"Idempotency-Key": key})
    again = trigger(roomy_stack, {"databases": ["demo"]}, headers={"Idempotency-Key": key})
    assert first.status == 202 and again.status == 200
    assert again.json()["jobId"] == first.json()["jobId"] and again.json()["replayed"] is True
    other = roomy_stack.request("POST", "/trigger", {"databases": ["chinook"]}, token="e2e-admin-token",
                                headers={"Idempotency-Key": key})
    assert other.status == 422 and other.json()["error"] == "idempotency_key_reused"
    bad = roomy_stack.request("POST", "/trigger", {}, token="e2e-admin-token", headers={"Idempotency-Key": "a b"})
    assert bad.status == 400 and bad.json()["error"] == "invalid_idempotency_key"
    jobs = roomy_stack.d1_query(META, f"SELECT count(*) AS n FROM idempotency_keys WHERE key = '{key}'")
    assert jobs == [{"n": 1}]


@pytest.fixture(scope="module")
def fan_out_stack():
    """A production-like stack (fault injection refused) with 50 more, empty, databases."""
    s = Stack(ROOT / "target" / "e2e" / f"fan-{uuid.uuid4().hex[:8]}", extra_databases=50,
              environment="production", verify=False)
    try:
        yield s.start()
    finally:
        s.stop()


def test_fan_out_to_54_databases_completes(fan_out_stack):
    r = trigger(fan_out_stack, {})
    assert len(r.json()["databases"]) == 54
    job = fan_out_stack.wait_for_job(r.json()["jobId"], timeout=240)
    assert job["status"] == "completed", [x for x in job["runs"] if x["state"] != "succeeded"]
    assert all(run["state"] == "succeeded" for run in job["runs"])
    assert len(objects_of_job(fan_out_stack, job["jobId"])) == 54


def test_production_refuses_fault_injection(fan_out_stack):
    for body in ({"faults": {"demo": {"stage": "d1_query", "failAttempts": 1}}}, {"deliverCopies": 2},
                 {"rawMessages": ["x"]}):
        r = fan_out_stack.admin("POST", "/trigger", body)
        assert r.status == 400 and r.json()["error"] == "fault_injection_disabled", r.body
