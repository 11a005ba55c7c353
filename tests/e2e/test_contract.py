"""The API as a contract: every endpoint under every kind of credentials, and schemathesis
generating requests from /openapi.json against the running stack (no 5xx, responses as
documented)."""

import json
import subprocess
import time
import uuid

import jsonschema_rs  # schemathesis's own JSON Schema validator
import pytest

from stack import ADMIN_TOKEN, READ_TOKEN, ROOMY_BUDGET, ROOT, Stack

NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
READS = ["/status", "/jobs", f"/jobs/{NO_SUCH_ID}", "/list", "/dead-letters",
         "/metrics", "/openapi.json", "/restore-guide/demo", "/operations", f"/operations/{NO_SUCH_ID}"]
# The data itself: the admin token only.
DOWNLOADS = ["/download/2026-01-01/demo", "/download/weekly/2026-W01", "/download?key=daily/2026-01-01/demo.sql.gz",
             f"/runs/{NO_SUCH_ID}/download"]
WRITES = [("POST", "/trigger"), ("POST", "/cleanup"), ("POST", "/archive"),
          ("POST", f"/runs/{NO_SUCH_ID}/retry"), ("POST", f"/runs/{NO_SUCH_ID}/verify"),
          ("POST", "/restore")]
# Whatever a write may record: refused writes record nothing.
RECORDED = ("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM archive_jobs) "
            "+ (SELECT count(*) FROM operations) AS n")


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


@pytest.mark.parametrize("path", DOWNLOADS)
def test_downloads_need_the_admin_token(contract_stack, path):
    s = contract_stack
    for token, status in [(None, 401), ("wrong", 401), (READ_TOKEN, 403), (READ_TOKEN + "x", 401)]:
        r = s.request("GET", path, token=token)
        assert r.status == status and "message" in r.json(), (path, token, r.body[:200])
    assert s.request("GET", path, token=ADMIN_TOKEN).status not in (401, 403, 500)


@pytest.mark.parametrize("method,path", WRITES)
def test_writes_need_the_admin_token(contract_stack, method, path):
    s = contract_stack
    # An accepted write of an earlier test records more as it goes on (a backup's verification).
    s.wait_until_idle()
    before = s.d1_query("d1-backup-meta", RECORDED)
    for token, status in [(None, 401), ("wrong", 401), (READ_TOKEN, 403)]:
        r = s.request(method, path, {}, token=token)
        assert r.status == status and "message" in r.json(), (path, token, r.body[:200])
    after = s.d1_query("d1-backup-meta", RECORDED)
    assert before == after
    assert s.request(method, path, {}, token=ADMIN_TOKEN).status not in (401, 403, 500)


def test_public_endpoints_and_unknown_paths(contract_stack):
    s = contract_stack
    info = s.request("GET", "/").json()
    assert info["name"] == "d1-backup" and info["databases"] == 1
    assert [x["cron"] for x in info["schedules"]] == ["0 3 * * *", "*/10 * * * *", "0 4 * * SUN"]
    assert info["retention"] == {"dailyDays": 7, "weeklyWeeks": 12, "manualDays": 30}
    assert s.request("GET", "/health").json() == {"ok": True}
    assert s.request("GET", "/dashboard").status == 200
    assert s.admin("GET", "/nope").status == 404
    assert s.admin("DELETE", "/trigger").status == 405
    assert s.admin("GET", "/trigger").status == 405
    for method, path in [("GET", "/restore"), ("PUT", "/restore"), ("GET", f"/runs/{NO_SUCH_ID}/verify"),
                         ("DELETE", f"/runs/{NO_SUCH_ID}/verify"), ("POST", "/operations"),
                         ("POST", f"/operations/{NO_SUCH_ID}"), ("DELETE", f"/operations/{NO_SUCH_ID}"),
                         ("POST", "/download?key=daily/2026-01-01/demo.sql.gz"), ("PUT", f"/runs/{NO_SUCH_ID}/download")]:
        r = s.admin(method, path)
        assert r.status == 405 and r.json()["error"] == "method_not_allowed", (method, path, r.body[:200])
    status = s.admin("GET", "/status").json()
    assert [(r["worker"], r["cron"]) for r in status["nextRuns"]] == [
        ("producer", "0 3 * * *"), ("producer", "*/10 * * * *"), ("archiver", "0 4 * * SUN")]
    assert all(r["next"] for r in status["nextRuns"])
    metrics = s.admin("GET", "/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE d1_backup_storage_bytes gauge" in metrics.body.decode()


class Documented:
    """Checks responses against the document the stack serves: the status is documented for the
    operation, and the body matches that status's schema."""

    def __init__(self, stack):
        self.stack = stack
        self.doc = stack.admin("GET", "/openapi.json").json()

    def schema(self, name):
        return {"$ref": f"#/components/schemas/{name}", "components": self.doc["components"]}

    def valid(self, schema, value, what):
        errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(value)]
        assert not errors, (what, errors[:5], value)
        return value

    def call(self, method, path, template, body=None, status=None):
        r = self.stack.admin(method, path, body)
        assert status is None or r.status == status, (method, path, r.status, r.body[:500])
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(r.status) in responses, (method, path, r.status, "undocumented", r.body[:500])
        schema = responses[str(r.status)]["content"]["application/json"]["schema"]
        return self.valid({**schema, "components": self.doc["components"]}, r.json(), f"{method} {path} {r.status}")


def wait_for(what, read, done, timeout=120):
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value):
        assert time.monotonic() < deadline, f"{what} not done after {timeout}s: {value}"
        time.sleep(0.5)
        value = read()
    return value


def test_verification_and_restore_answer_as_documented(contract_stack):
    """Requests schemathesis cannot make up (they need a real run and backup key): every answer
    of the verification and restore endpoints, and the verification fields of /jobs, /list and
    /status, as the document describes them."""
    s = contract_stack
    d = Documented(s)
    job_id = d.call("POST", "/trigger", "/trigger", {"databases": ["demo"]}, 202)["jobId"]
    s.wait_for_job(job_id)
    job = wait_for("verification", lambda: d.call("GET", f"/jobs/{job_id}", "/jobs/{id}", status=200),
                   lambda j: j["runs"][0]["verifyState"] in ("verified", "verify_failed", "skipped"))
    run = job["runs"][0]
    assert run["verifyState"] == "verified", run
    assert run["verifyOperation"] and run["verifyMillis"] is not None and run["verifiedAt"], run
    (item,) = [i for i in d.call("GET", "/list", "/list", status=200)["items"] if i["key"] == run["r2Key"]]
    assert item["verifyState"] == "verified" and item["verifiedAt"] == run["verifiedAt"], item
    status = d.call("GET", "/status", "/status", status=200)
    assert any(v["runId"] == run["id"] and v["verifyState"] == "verified" for v in status["verification"]), status
    verify = d.call("GET", f"/operations/{run['verifyOperation']}", "/operations/{id}", status=200)
    assert verify["kind"] == "verify" and verify["runId"] == run["id"] and verify["outcome"]["passed"], verify

    again = d.call("POST", f"/runs/{run['id']}/verify", "/runs/{id}/verify", status=202)
    assert again["runId"] == run["id"] and again["backup"] == run["r2Key"], again
    d.call("POST", f"/runs/{NO_SUCH_ID}/verify", "/runs/{id}/verify", status=404)
    d.call("POST", "/runs/not-a-uuid/verify", "/runs/{id}/verify", status=400)

    key = run["r2Key"]
    dry = d.call("POST", "/restore", "/restore", {"backup": key, "target": "demo"}, 200)
    assert dry["dryRun"] is True and dry["requiresConfirmation"] and dry["toProceed"]["confirm"] == "demo", dry
    for body, status in [({}, 400), ({"backup": key, "target": "demo", "force": True}, 400),
                         ({"backup": "../etc/passwd", "target": "demo"}, 400),
                         ({"backup": key, "target": "demo", "week": "2026-47"}, 400),
                         ({"backup": "daily/2020-01-01/demo.sql", "target": "demo"}, 404),
                         ({"backup": key, "target": "demo", "week": "2026-W01"}, 404),
                         ({"backup": key, "target": "demo", "dryRun": False}, 409),
                         ({"backup": key, "target": "demo", "dryRun": False, "confirm": "other"}, 409),
                         ({"backup": key, "target": "nope"}, 422),
                         ({"backup": key, "target": "demo", "table": "nope"}, 422)]:
        d.call("POST", "/restore", "/restore", body, status)
    d.call("POST", "/restore", "/restore", b"{" + b" " * 70000 + b"}", 413)
    queued = d.call("POST", "/restore", "/restore", {"backup": key, "target": "demo", "dryRun": False, "confirm": "demo"}, 202)
    assert queued["preBackupJobId"] and queued["status"] == "queued", queued
    restore = wait_for("restore", lambda: d.call("GET", f"/operations/{queued['operationId']}", "/operations/{id}", status=200),
                       lambda o: o["state"] in ("succeeded", "failed", "dead"))
    assert restore["state"] == "succeeded" and restore["outcome"]["outcome"] == "restored", restore

    listed = d.call("GET", "/operations?limit=100", "/operations", status=200)["operations"]
    assert {queued["operationId"], again["operationId"], verify["id"]} <= {o["id"] for o in listed}
    d.call("GET", "/operations?limit=0", "/operations", status=400)
    d.call("GET", "/operations?limit=101", "/operations", status=400)
    d.call("GET", "/operations?other=1", "/operations", status=400)
    d.call("GET", "/operations/not-a-uuid", "/operations/{id}", status=400)


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
