"""Email alerts on the local stack, through wrangler dev's own send_email binding: miniflare
writes every message it is given to a file and logs its path (see Stack.sent_emails), and the
messages are read back with Python's email parser as a mail client would. A failing backup's
alert, the daily digest (once per period), a refused recipient (recorded, retried, never failing
the backup), and bad configuration shown by /status."""

import datetime as dt
import email
import email.policy
import email.utils
import json
import uuid

import pytest

from stack import FAST_RETRIES, ROOMY_BUDGET, ROOT, Stack, wait_until

META = "d1-backup-meta"
SENDER = "backups@example.com"
RECIPIENTS = ["ops@example.com", "oncall@example.com"]
DASHBOARD = "https://backups.example.com/dashboard"


def email_var(config: dict) -> str:
    """ALERT_EMAIL as a TOML string value (the harness writes vars in double quotes)."""
    return json.dumps(config).replace('"', '\\"')


def stack_with_email(name: str, config: dict, send_email: dict | None = {}, **vars) -> Stack:
    return Stack(ROOT / "target" / "e2e" / f"{name}-{uuid.uuid4().hex[:8]}", consumer_vars=ROOMY_BUDGET,
                 databases=["demo", "hostile"], verify=False, send_email=send_email,
                 all_vars={"ALERT_EMAIL": email_var(config), **FAST_RETRIES, **vars})


@pytest.fixture(scope="module")
def emailing():
    stack = stack_with_email("email", {"from": SENDER, "to": RECIPIENTS, "digest": "daily", "dashboard": DASHBOARD})
    try:
        yield stack.start()
    finally:
        stack.stop()


def with_subject(stack, prefix: str) -> list[tuple[bytes, email.message.EmailMessage]]:
    raws = stack.sent_emails()
    messages = [email.message_from_bytes(raw, policy=email.policy.default) for raw in raws]
    return [(raw, m) for raw, m in zip(raws, messages) if str(m["Subject"]).startswith(prefix)]


def bodies(message) -> tuple[str, str]:
    """The text and HTML alternatives of a multipart/alternative message."""
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    # Decoded as sent: with the CRLF line ends of mail.
    parts = {part.get_content_type(): part.get_content().replace("\r\n", "\n") for part in message.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}, parts.keys()
    return parts["text/plain"], parts["text/html"]


def alert_row(stack, kind: str, where: str = "1 = 1") -> dict | None:
    rows = stack.d1_query(META, f"SELECT * FROM alerts WHERE kind = '{kind}' AND {where} ORDER BY id DESC")
    return rows[0] if rows else None


def trigger(stack, body) -> dict:
    r = stack.admin("POST", "/trigger", body)
    assert r.status == 202, r.body
    return stack.wait_for_job(r.json()["jobId"], timeout=120)


def test_a_failing_backup_is_emailed_with_its_error_link_and_last_good_backup(emailing):
    stack = emailing
    good = trigger(stack, {"databases": ["hostile"]})
    assert good["status"] == "completed", good
    (good_run,) = good["runs"]
    failed = trigger(stack, {"databases": ["hostile"], "faults": {"hostile": {"stage": "d1_query", "failAttempts": 99}}})
    assert failed["status"] == "failed", failed
    job = failed["jobId"]
    wait_until(lambda: (alert_row(stack, "run_dead", f"job_id = '{job}'") or {}).get("sent_at"), "the run_dead alert sent")
    subject = "[d1-backup] Backup failed for good: hostile"
    # One copy per recipient; miniflare logs each file's path just after the send returns.
    wait_until(lambda: len(with_subject(stack, subject)) == len(RECIPIENTS), "both copies of the email written")
    for raw, message in with_subject(stack, subject):
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends with CRLF"
        assert message["From"].addresses[0].addr_spec == SENDER
        assert message["From"].addresses[0].display_name == "d1-backup"
        assert [a.addr_spec for a in message["To"].addresses] == RECIPIENTS
        sent = email.utils.parsedate_to_datetime(str(message["Date"]))
        assert abs((sent - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 300, message["Date"]
        assert str(message["Message-ID"]).startswith("<") and str(message["Message-ID"]).endswith("@example.com>")
        assert b"MIME-Version: 1.0" in head
        text, html = bodies(message)
        for expected in [
            "backup of hostile is dead after 6 attempts",
            "injected fault",
            "Database:",
            f"Job:              {job}",
            f"Dashboard:        {DASHBOARD}#job-{job}",
            f"Last good backup: {good_run['r2Key']} (",
        ]:
            assert expected in text, f"{expected!r} not in\n{text}"
        assert f'<a href="{DASHBOARD}#job-{job}">' in html and "injected fault" in html
    # The job's own alert names the database that failed and its last good backup too.
    job_subject = "[d1-backup] Backup job finished with failures"
    wait_until(lambda: len(with_subject(stack, job_subject)) >= len(RECIPIENTS), "the job_failed email")
    failed_job_texts = [bodies(m)[0] for _, m in with_subject(stack, job_subject)]
    assert any(job in t and f"Last good backup of hostile: {good_run['r2Key']}" in t for t in failed_job_texts), failed_job_texts


def test_the_daily_digest_is_sent_once_per_day(emailing):
    stack = emailing
    done = trigger(stack, {"databases": ["demo"]})
    assert done["status"] == "completed", done
    today = dt.datetime.now(dt.timezone.utc).date()
    # The nightly cron of tomorrow sends the digest of today.
    tomorrow = dt.datetime(today.year, today.month, today.day, 3, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    assert stack.fire_cron("0 3 * * *", int(tomorrow.timestamp() * 1000)).status == 200
    subject = f"daily {today.isoformat()}"
    wait_until(lambda: (alert_row(stack, "digest", f"subject = '{subject}'") or {}).get("sent_at"), "the digest sent", timeout=90)
    prefix = f"[d1-backup] Daily digest {today.isoformat()}: "
    wait_until(lambda: len(with_subject(stack, prefix)) == len(RECIPIENTS), "the digest written for both recipients")
    _, message = with_subject(stack, prefix)[0]
    text, html = bodies(message)
    # What the metadata says about today up to when the digest was made (tonight's job runs
    # beside it), against what the digest says.
    made = json.loads(alert_row(stack, "digest", f"subject = '{subject}'")["details"])["generatedAt"]
    made = dt.datetime.fromisoformat(made).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    start = today.isoformat()
    demo = stack.d1_query(META, f"SELECT key, bytes, rows FROM backups WHERE database = 'demo' AND created_at >= '{start}' "
                                f"AND created_at < '{made}' ORDER BY created_at DESC, key DESC")
    assert demo, "demo was backed up today"
    assert f"demo\n  backups: {len(demo)}, newest " in text, text
    assert f"({demo[0]['bytes']} bytes, {demo[0]['rows']} rows, trend " in text, text
    # This stack does not verify: each of today's backups is counted as not verified.
    assert f"  verification: {len(demo)} not verified\n" in text, text
    never = [name for name in ("demo", "hostile") if not stack.d1_query(
        META, f"SELECT 1 FROM runs WHERE database = '{name}' AND state = 'succeeded' AND finished_at < '{made}'")]
    for name in never:
        assert f"  {name}: never backed up successfully\n" in text, text
    if not never:
        assert "\nStale: none.\n" in text, text
    dead = stack.d1_query(META, f"SELECT count(*) AS n FROM runs WHERE state = 'dead' AND finished_at >= '{start}' "
                                f"AND finished_at < '{made}'")[0]["n"]
    assert (f"{dead} failed run" in str(message["Subject"])) == (dead > 0), message["Subject"]
    assert "<td>demo</td>" in html and f"{DASHBOARD}" in html
    # The cron firing again for the same night records no second digest and sends none: the
    # scheduled handler records (and sends) before the cron request is answered, and an email
    # is only ever sent for a recorded alert.
    assert stack.fire_cron("0 3 * * *", int(tomorrow.timestamp() * 1000)).status == 200
    assert stack.d1_query(META, "SELECT count(*) AS n FROM alerts WHERE kind = 'digest'")[0]["n"] == 1
    assert len(with_subject(stack, prefix)) == len(RECIPIENTS)


def test_a_refused_recipient_is_recorded_and_retried_and_never_fails_the_backup():
    # miniflare's binding refuses any destination outside allowed_destination_addresses, as
    # Email Routing refuses an unverified one.
    stack = stack_with_email("email-refused", {"from": SENDER, "to": ["ops@example.com", "unverified@example.com"]},
                             send_email={"allowed_destination_addresses": ["ops@example.com"]}, ALERT_ON_SUCCESS="true")
    try:
        stack.start()
        first = trigger(stack, {"databases": ["demo"]})
        assert first["status"] == "completed", first
        where = f"job_id = '{first['jobId']}'"
        wait_until(lambda: (alert_row(stack, "job_succeeded", where) or {}).get("attempts") == 1, "the first delivery tried")
        row = alert_row(stack, "job_succeeded", where)
        assert row["sent_at"] is None, row
        assert "email to recipient 2: attempt 3: " in row["last_error"], row
        assert "unverified@example.com not allowed" in row["last_error"], row
        # Later invocations try it again (each job's end delivers what is pending), up to five
        # deliveries in all.
        for _ in range(4):
            later = trigger(stack, {"databases": ["demo"]})
            assert later["status"] == "completed", later
            wait_until(lambda: (alert_row(stack, "job_succeeded", f"job_id = '{later['jobId']}'") or {}).get("attempts"),
                       "the later job's alert tried")
        wait_until(lambda: alert_row(stack, "job_succeeded", where)["attempts"] == 5, "five deliveries of the first alert")
        # And no more: a delivery after that tries the newer alerts only.
        last = trigger(stack, {"databases": ["demo"]})
        wait_until(lambda: (alert_row(stack, "job_succeeded", f"job_id = '{last['jobId']}'") or {}).get("attempts") == 1,
                   "the last job's alert tried")
        row = alert_row(stack, "job_succeeded", where)
        assert (row["attempts"], row["sent_at"]) == (5, None), row
    finally:
        stack.stop()


@pytest.mark.parametrize("case", ["malformed address", "no binding"])
def test_bad_email_configuration_is_a_configuration_error_in_status(case):
    if case == "malformed address":
        config, binding, expected = {"from": SENDER, "to": ["ops(at)example.com"]}, {}, \
            'ALERT_EMAIL: to entry 1 "ops(at)example.com" is not an email address'
    else:
        config, binding, expected = {"from": SENDER, "to": RECIPIENTS}, None, \
            "ALERT_EMAIL is set but this Worker has no send_email binding named SEND_EMAIL"
    stack = stack_with_email("email-bad", config, send_email=binding)
    try:
        stack.start(healthy=False)
        r = stack.admin("GET", "/status")
        assert r.status == 500 and r.json()["error"] == "bad_configuration", r.body
        assert expected in r.json()["message"], r.body
        # No backup runs on a configuration that cannot alert.
        r = stack.admin("POST", "/trigger", {"databases": ["demo"]})
        assert r.status == 500 and r.json()["error"] == "bad_configuration", r.body
    finally:
        stack.stop()


def test_status_shows_the_email_configuration(emailing):
    status = emailing.admin("GET", "/status").json()
    assert status["email"] == {"configured": True, "from": SENDER, "to": RECIPIENTS, "digest": "daily",
                               "dashboard": DASHBOARD}
