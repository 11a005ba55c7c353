"""The API as a contract: every endpoint under every kind of credentials, and schemathesis
generating requests from /openapi.json against the running stack (no 5xx, responses as
documented)."""

import json
import subprocess
import uuid

import pytest

from stack import ADMIN_TOKEN, READ_TOKEN, ROOMY_BUDGET, ROOT, Stack

READS = ["/status", "/jobs", "/jobs/00000000-0000-4000-8000-000000000000", "/list", "/dead-letters",
         "/metrics", "/openapi.json", "/restore-guide/demo", "/download/2026-01-01/demo",
         "/download/weekly/2026-W01"]
WRITES = [("POST", "/trigger"), ("POST", "/cleanup"), ("POST", "/archive"),
          ("POST", "/runs/00000000-0000-4000-8000-000000000000/retry")]


@pytest.fixture(scope="module")
def contract_stack():
    stack = Stack(ROOT / "target" / "e2e" / f"contract-{uuid.uuid4().hex[:8]}", consumer_vars=ROOMY_BUDGET,
                  databases=["demo"])
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_token_and_accept_the_read_only_one(contract_stack, path):
    s = contract_stack
    for token, status in [(None, 401), ("wrong", 401), ("", 401)]:
        r = s.request("GET", path, token=token)
        assert r.status == status and "message" in r.json(), (path, token, r.body[:200])
    malformed = s.request("GET", path, headers={"Authorization": "Basic " + ADMIN_TOKEN})
    assert malformed.status == 401 and malformed.headers["WWW-Authenticate"].startswith("Bearer")
    lower = s.request("GET", path, headers={"Authorization": "bearer " + READ_TOKEN})
    assert lower.status not in (401, 403), path
    for token in (READ_TOKEN, ADMIN_TOKEN):
        assert s.request("GET", path, token=token).status not in (401, 403, 500), (path, token)


@pytest.mark.parametrize("method,path", WRITES)
def test_writes_need_the_admin_token(contract_stack, method, path):
    s = contract_stack
    before = s.d1_query("d1-backup-meta", "SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM archive_jobs) AS n")
    for token, status in [(None, 401), ("wrong", 401), (READ_TOKEN, 403)]:
        r = s.request(method, path, {}, token=token)
        assert r.status == status and "message" in r.json(), (path, token, r.body[:200])
    after = s.d1_query("d1-backup-meta", "SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM archive_jobs) AS n")
    assert before == after
    assert s.request(method, path, {}, token=ADMIN_TOKEN).status not in (401, 403, 500)


def test_public_endpoints_and_unknown_paths(contract_stack):
    s = contract_stack
    info = s.request("GET", "/").json()
    assert info["name"] == "d1-backup" and info["databases"] == 1
    assert [x["cron"] for x in info["schedules"]] == ["0 3 * * *", "0 4 * * SUN"]
    assert info["retention"] == {"dailyDays": 7, "weeklyWeeks": 12, "manualDays": 30}
    assert s.request("GET", "/health").json() == {"ok": True}
    assert s.request("GET", "/dashboard").status == 200
    assert s.admin("GET", "/nope").status == 404
    assert s.admin("DELETE", "/trigger").status == 405
    assert s.admin("GET", "/trigger").status == 405
    status = s.admin("GET", "/status").json()
    assert [r["worker"] for r in status["nextRuns"]] == ["producer", "archiver"]
    assert all(r["next"] for r in status["nextRuns"])
    metrics = s.admin("GET", "/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE d1_backup_storage_bytes gauge" in metrics.body.decode()


def test_schemathesis_finds_no_server_errors(contract_stack, tmp_path):
    s = contract_stack
    schema = tmp_path / "openapi.json"
    schema.write_bytes(s.admin("GET", "/openapi.json").body)
    json.loads(schema.read_text())
    result = subprocess.run(
        [str(ROOT / ".venv/bin/schemathesis"), "run", str(schema), "--url", s.base,
         "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", "25", "--seed", "1", "--request-timeout", "30",
         "--suppress-health-check", "all"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
