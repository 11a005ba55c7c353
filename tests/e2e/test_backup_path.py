"""The thin backup path end to end on the local stack: trigger and cron fan out, the consumer
writes dumps to R2, the metadata database records every run, and a dump restores."""

import gzip
import hashlib
import time
from datetime import datetime, timezone

import pytest

from stack import READ_TOKEN


DATABASES = ["bulk", "chinook", "demo", "hostile"]
# demo is configured with gzip: its dumps are .sql.gz.
EXTENSION = {"bulk": "sql", "chinook": "sql", "demo": "sql.gz", "hostile": "sql"}
COMPLETE = b"-- Dump complete:"


def last_job_id(stack) -> str | None:
    """The newest job's id (its runs' verification moves on in the background)."""
    job = stack.admin("GET", "/status").json()["lastJob"]
    return job and job["jobId"]


def assert_complete_backup(stack, run: dict, tmp_path) -> bytes:
    """The run's object is in R2, whole: size, SHA-256 (of the stored bytes) and footer match
    what was recorded. Returns the SQL, decompressed if stored gzipped."""
    assert run["state"] == "succeeded", run
    assert run["attempts"] >= 1
    extension = EXTENSION[run["database"]]
    assert run["r2Key"].endswith(f"/{run['database']}.{extension}")
    stored = stack.r2_get(run["r2Key"], tmp_path / f"{run['database']}.{extension}")
    assert len(stored) == run["bytes"]
    assert hashlib.sha256(stored).hexdigest() == run["sha256"]
    body = gzip.decompress(stored) if extension == "sql.gz" else stored
    assert body.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(COMPLETE)
    assert f"-- database: {run['database']}\n".encode() in body
    return body


def test_trigger_backs_up_every_database(stack, tmp_path):
    r = stack.admin("POST", "/trigger", {"reason": "e2e"})
    assert r.status == 202, r.body
    accepted = r.json()
    assert accepted["status"] == "queued"
    assert accepted["databases"] == DATABASES

    job = stack.wait_for_job(accepted["jobId"])
    assert job["status"] == "completed", job
    assert job["kind"] == "manual" and job["trigger"] == "http" and job["reason"] == "e2e"
    assert [run["database"] for run in job["runs"]] == DATABASES
    for run in job["runs"]:
        assert run["r2Key"].startswith("manual/")
        assert accepted["jobId"] in run["r2Key"]
        assert_complete_backup(stack, run, tmp_path)

    status = stack.admin("GET", "/status").json()
    assert status["lastJob"]["jobId"] == accepted["jobId"]


def test_trigger_one_database(stack, tmp_path):
    r = stack.admin("POST", "/trigger", {"databases": ["demo"]})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"])
    assert job["status"] == "completed"
    assert [run["database"] for run in job["runs"]] == ["demo"]


def test_cron_writes_dailies_named_by_the_scheduled_date(stack, tmp_path):
    scheduled = datetime(2026, 3, 9, 3, 0, tzinfo=timezone.utc)
    r = stack.fire_cron("0 3 * * *", int(scheduled.timestamp() * 1000))
    assert r.status == 200, r.body

    job = None
    for _ in range(60):
        job = stack.admin("GET", "/status").json()["lastJob"]
        if job and job["trigger"] == "cron":
            break
        time.sleep(0.5)
    assert job and job["trigger"] == "cron", job
    assert job["requestedAt"].startswith("2026-03-09T03:00:00")
    job = stack.wait_for_job(job["jobId"])
    assert job["status"] == "completed", job
    assert job["kind"] == "daily"
    for run in job["runs"]:
        assert run["r2Key"] == f"daily/2026-03-09/{run['database']}.{EXTENSION[run['database']]}"
        assert_complete_backup(stack, run, tmp_path)


@pytest.mark.parametrize(
    "token, status",
    [(None, 401), ("wrong-token", 401), ("", 401), (READ_TOKEN, 403)],
)
def test_trigger_requires_the_admin_token(stack, token, status):
    before = last_job_id(stack)
    r = stack.request("POST", "/trigger", {}, token=token)
    assert r.status == status
    assert "message" in r.json()
    assert last_job_id(stack) == before


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{", 400),
        (b"[]", 400),
        (b'{"databases": ["nope"]}', 400),
        (b'{"databases": []}', 400),
        (b'{"databases": "demo"}', 400),
        (b'{"unknown": 1}', 400),
        (b" " * (64 * 1024 + 1), 413),
        (b"\xff\xfe", 400),
        (b'"demo"', 400),
        (b"null", 400),
        (b'{"databases": [null]}', 400),
        (b'{"databases": ["DEMO"]}', 400),
        (b'{"databases": ["demo", "demo"]}', 400),
        (b'{"reason": "a", "reason": "b"}', 400),
        (b'{"reason": ["x"]}', 400),
        (b'{"reason": "' + b"x" * 501 + b'"}', 400),
        (b"[" * 300 + b"]" * 300, 400),
        (b'{"databases": ["demo"], "faults": {"demo": {"stage": "disk", "failAttempts": 1}}}', 400),
        (b'{"databases": ["demo"], "faults": {"chinook": {"stage": "d1_query", "failAttempts": 1}}}', 400),
    ],
)
def test_bad_trigger_bodies_queue_nothing(stack, body, status):
    before = last_job_id(stack)
    r = stack.admin("POST", "/trigger", body)
    assert r.status == status, r.body
    assert r.json()["message"]
    assert last_job_id(stack) == before


def test_job_lookup_errors(stack):
    assert stack.admin("GET", "/jobs/not-a-uuid").status == 400
    assert stack.admin("GET", "/jobs/00000000-0000-4000-8000-000000000000").status == 404
    assert stack.request("GET", "/jobs/00000000-0000-4000-8000-000000000000").status == 401
    assert stack.request("GET", "/health").json() == {"ok": True}
