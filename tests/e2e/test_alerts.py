"""Alerts on the local stack, delivered to a loopback webhook receiver in all three formats:
job outcomes, dead runs, and the checks run at every cron (stale, shrinking, schema changes)."""

import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack import FAST_RETRIES, ROOMY_BUDGET, ROOT, Stack, free_port

META = "d1-backup-meta"


class Receiver:
    """Records every POST; the `/json` hook fails its first two requests (it must be retried)."""

    def __init__(self):
        self.port = free_port()
        self.received: list[tuple[str, dict]] = []
        self.json_failures_left = 2
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/json" and receiver.json_failures_left > 0:
                    receiver.json_failures_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path):
        return [body for p, body in self.received if p == path]

    def wait_for(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise AssertionError(f"webhook never received what was expected: {self.received}")


@pytest.fixture(scope="module")
def alerting():
    receiver = Receiver()
    hooks = " ".join([f"discord+{receiver.url('/discord')}", f"slack+{receiver.url('/slack')}", receiver.url("/json")])
    stack = Stack(ROOT / "target" / "e2e" / f"alerts-{uuid.uuid4().hex[:8]}", consumer_vars=ROOMY_BUDGET,
                  databases=["demo", "hostile"],
                  all_vars={"WEBHOOK_URL": hooks, "ALERT_ON_SUCCESS": "true", "ALERT_STALE_HOURS": "0",
                            "ALERT_SHRINK_PERCENT": "20", **FAST_RETRIES}, verify=False)
    try:
        yield stack.start(), receiver
    finally:
        stack.stop()
        receiver.server.shutdown()


def trigger(stack, body):
    r = stack.admin("POST", "/trigger", body)
    assert r.status == 202, r.body
    return stack.wait_for_job(r.json()["jobId"], timeout=120)


def unsent(stack) -> int:
    """Alerts recorded and not yet delivered to every webhook."""
    return stack.d1_query(META, "SELECT count(*) AS n FROM alerts WHERE sent_at IS NULL")[0]["n"]


def kinds(receiver, path):
    if path == "/json":
        return [b["kind"] for b in receiver.of(path)]
    if path == "/slack":
        return [b["blocks"][0]["text"]["text"] for b in receiver.of(path)]
    return [b["embeds"][0]["title"] for b in receiver.of(path)]


def test_a_successful_job_is_announced_in_every_format(alerting):
    stack, receiver = alerting
    job = trigger(stack, {"databases": ["demo"]})
    assert job["status"] == "completed"
    receiver.wait_for(lambda: "job_succeeded" in kinds(receiver, "/json"))
    (generic,) = [b for b in receiver.of("/json") if b["kind"] == "job_succeeded"]
    assert generic["jobId"] == job["jobId"] and generic["source"] == "d1-backup"
    (discord,) = [b for b in receiver.of("/discord") if job["jobId"] in json.dumps(b)]
    assert discord["embeds"][0]["title"] == "Backup job succeeded" and discord["embeds"][0]["color"] == 0x2da44e
    (slack,) = [b for b in receiver.of("/slack") if job["jobId"] in json.dumps(b)]
    assert slack["blocks"][0]["text"]["text"] == "Backup job succeeded"
    assert job["jobId"] in slack["text"]
    # The /json hook failed twice and was retried; the alert is recorded as sent.
    (row,) = stack.d1_query(META, f"SELECT sent_at, attempts, last_error FROM alerts WHERE kind = 'job_succeeded' AND job_id = '{job['jobId']}'")
    assert row["sent_at"] and row["attempts"] == 1 and row["last_error"] is None


def test_a_dead_run_and_its_failed_job_are_alerted(alerting):
    stack, receiver = alerting
    job = trigger(stack, {"databases": ["hostile"], "faults": {"hostile": {"stage": "d1_query", "failAttempts": 99}}})
    assert job["status"] == "failed"
    receiver.wait_for(lambda: {"run_dead", "job_failed"} <= set(kinds(receiver, "/json")))
    (dead,) = [b for b in receiver.of("/json") if b["kind"] == "run_dead" and b["jobId"] == job["jobId"]]
    assert dead["database"] == "hostile" and "injected fault" in dead["message"]
    (failed,) = [b for b in receiver.of("/json") if b["kind"] == "job_failed" and b["jobId"] == job["jobId"]]
    assert failed["details"] == {"dead": 1, "total": 1}
    assert any(b["embeds"][0]["title"] == "Backup failed for good: hostile" for b in receiver.of("/discord"))


def test_cron_checks_report_stale_shrunk_and_changed_databases(alerting):
    stack, receiver = alerting
    trigger(stack, {"databases": ["demo"]})
    # The demo database loses most of its rows and changes its schema between two backups.
    tables = [r["name"] for r in stack.d1_query(
        "demo", "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'")]
    statements = ["PRAGMA defer_foreign_keys = on"] + [f'DELETE FROM "{t}"' for t in tables] + [
        "CREATE TABLE added_later (id INTEGER PRIMARY KEY)"]
    stack.d1_execute("demo", ";\n".join(statements))
    trigger(stack, {"databases": ["demo"]})
    night = dt.datetime.now(dt.timezone.utc).replace(hour=3, minute=0, second=0, microsecond=0)
    assert stack.fire_cron("0 3 * * *", int(night.timestamp() * 1000)).status == 200
    receiver.wait_for(lambda: {"backup_shrank", "schema_changed", "backup_stale"} <= set(kinds(receiver, "/json")))
    by_kind = {b["kind"]: b for b in receiver.of("/json") if b.get("database") == "demo"}
    assert "smaller" in by_kind["backup_shrank"]["message"]
    assert "created table added_later" in by_kind["schema_changed"]["message"]
    assert by_kind["backup_stale"]["database"] == "demo"
    # Each check alerts once: firing the cron again raises nothing new. The scheduled handler
    # records what its checks raise before the cron request is answered; once every recorded
    # alert is sent, anything raised would have reached the hook.
    checks = ("SELECT count(*) AS n FROM alerts WHERE database = 'demo' "
              "AND kind IN ('backup_shrank', 'schema_changed', 'backup_stale')")
    count = len(receiver.of("/json"))
    raised = stack.d1_query(META, checks)
    assert stack.fire_cron("0 3 * * *", int((night - dt.timedelta(days=1)).timestamp() * 1000)).status == 200
    assert stack.d1_query(META, checks) == raised
    receiver.wait_for(lambda: unsent(stack) == 0)
    new = [b["kind"] for b in receiver.of("/json")[count:]]
    assert not {"backup_shrank", "schema_changed", "backup_stale"} & set(new), new
    recorded = {r["kind"] for r in stack.d1_query(META, "SELECT DISTINCT kind FROM alerts WHERE database = 'demo'")}
    assert {"backup_shrank", "schema_changed", "backup_stale"} <= recorded


def test_no_webhook_url_appears_in_responses_or_alert_rows(alerting):
    stack, receiver = alerting
    secret_part = f"127.0.0.1:{receiver.port}"
    for path in ["/", "/status", "/jobs", "/dead-letters", "/metrics", "/openapi.json", "/list"]:
        body = stack.admin("GET", path).body.decode()
        assert secret_part not in body, path
    rows = stack.d1_query(META, "SELECT message, details, last_error FROM alerts")
    assert secret_part not in json.dumps(rows)
    # wrangler dev lists local vars at startup (a deployed secret is never listed); every other
    # log line, ours included, must not carry the URL.
    logged = [l for l in stack.log_path.read_text(errors="replace").splitlines() if "WEBHOOK_URL" not in l]
    assert not [l for l in logged if secret_part in l]


def test_every_alert_reaches_every_webhook_in_its_format(alerting):
    stack, receiver = alerting
    # An unreadable queue message is an alert too.
    trigger(stack, {"databases": ["demo"], "rawMessages": [{"v": 99, "garbage": True}]})
    def by_format():
        generic = sorted(b["kind"] for b in receiver.of("/json"))
        discord = sorted(b["embeds"][0]["footer"]["text"].split(" · ")[1] for b in receiver.of("/discord"))
        slack = sorted(b["blocks"][2]["elements"][0]["text"].split(" · ")[1].strip("*") for b in receiver.of("/slack"))
        return generic, discord, slack

    def settled():
        generic, discord, slack = by_format()
        return "message_rejected" in generic and unsent(stack) == 0 and generic == discord == slack
    # Until the rejected message's alert is in and every recorded alert was sent.
    receiver.wait_for(settled)
    generic, discord, slack = by_format()
    assert generic == discord == slack, (generic, discord, slack)
    assert {"job_succeeded", "run_dead", "job_failed", "backup_stale", "backup_shrank", "schema_changed",
            "message_rejected"} <= set(generic)
    undelivered = stack.d1_query(META, "SELECT kind, attempts, last_error FROM alerts WHERE sent_at IS NULL")
    assert undelivered == [], undelivered
