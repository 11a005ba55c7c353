"""Weekly archives and retention on the local stack: nightly backups made by firing the
producer's cron for days of past weeks, archived by the archiver Worker, downloaded, opened with
GNU tar, Python's tarfile and 7-Zip and compared byte for byte; then retention over months of
simulated history."""

import datetime as dt
import hashlib
import json
import io
import subprocess
import tarfile
import time
import uuid
import zlib

import pytest

from stack import FAST_RETRIES, ROOMY_BUDGET, ROOT, Stack

META = "d1-backup-meta"
TODAY = dt.datetime.now(dt.timezone.utc).date()
THIS_MONDAY = TODAY - dt.timedelta(days=TODAY.weekday())
# Three past weeks to archive (more than 7 days ago, less than 12 weeks), and one week so old
# that its dailies are past every retention.
ARCHIVED_WEEKS = [THIS_MONDAY - dt.timedelta(weeks=n) for n in (6, 5, 4)]
ANCIENT_WEEK = THIS_MONDAY - dt.timedelta(weeks=20)
# Nights backed up in each archived week: Monday, Thursday, Sunday.
NIGHTS = [monday + dt.timedelta(days=d) for monday in ARCHIVED_WEEKS for d in (0, 3, 6)]
ANCIENT_NIGHTS = [ANCIENT_WEEK + dt.timedelta(days=d) for d in (1, 2)]
YESTERDAY = TODAY - dt.timedelta(days=1)
# Archive steps read at most 1 MiB each, so archives take several messages.
ARCHIVER_VARS = {"ARCHIVE_MAX_MB": "1", "ARCHIVE_MAX_ATTEMPTS": "4", **FAST_RETRIES}


def week_label(monday: dt.date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def archive(stack: Stack, week: str, body_extra: dict | None = None) -> dict:
    response = stack.admin("POST", "/archive", {"week": week, **(body_extra or {})})
    assert response.status == 202, response.body
    accepted = response.json()
    assert accepted["key"] == f"weekly/{week}.tar.gz"
    job = stack.wait_for_job(accepted["jobId"], timeout=180)
    assert job["kind"] == "archive" and job["status"] == "completed", job
    return job


def live_inventory(stack: Stack) -> set[str]:
    backups, archives = stack.d1_queries(META, [
        "SELECT key FROM backups WHERE deleted_at IS NULL",
        "SELECT key FROM archives WHERE deleted_at IS NULL",
    ])
    return {r["key"] for r in backups + archives}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Months of nightly backups in one state directory. First a stack backing up chinook, demo
    and hostile for two ancient nights; then chinook leaves the configuration (its backups stop)
    and a second stack backs up demo (gzip) and hostile for three nights a week over three
    weeks, and yesterday."""
    state_dir = ROOT / "target" / "e2e" / f"archive-{uuid.uuid4().hex[:8]}"
    first = Stack(state_dir, consumer_vars=ROOMY_BUDGET, databases=["chinook", "demo", "hostile"],
                  archiver_vars=ARCHIVER_VARS, verify=False)
    try:
        first.start()
        for night in ANCIENT_NIGHTS:
            first.run_night(night)
    finally:
        first.stop()
    second = Stack(state_dir, consumer_vars=ROOMY_BUDGET, databases=["demo", "hostile"],
                   archiver_vars=ARCHIVER_VARS, verify=False)
    try:
        second.start()
        dailies = {}
        for night in NIGHTS + [YESTERDAY]:
            for run in second.run_night(night)["runs"]:
                assert run["state"] == "succeeded", run
        # The dailies' bytes, before retention deletes them, as the API serves them.
        for night in NIGHTS:
            for db, ext in (("demo", "sql.gz"), ("hostile", "sql")):
                got = second.admin("GET", f"/download/{night}/{db}")
                assert got.status == 200, got.body
                assert hashlib.sha256(got.body).hexdigest() == got.headers["X-Backup-SHA256"]
                dailies[f"{night}/{db}.{ext}"] = got.body
        yield second, dailies, tmp_path_factory.mktemp("archives")
    finally:
        second.stop()


def test_weekly_archives_hold_the_dailies_byte_for_byte(history):
    stack, dailies, workdir = history
    for i, monday in enumerate(ARCHIVED_WEEKS):
        week = week_label(monday)
        # The middle week's archive fails twice at an R2 write (mid-archive) and recovers.
        fault = {"fault": {"stage": "r2_part", "failAttempts": 2}} if i == 1 else None
        job = archive(stack, week, fault)
        assert job["outcome"] == "archived" and job["members"] == 6 and job["excluded"] == 0, job
        assert job["step"] > 1, "an archive of 1 MiB steps continues over several messages"
        if fault:
            assert job["attempts"] >= job["step"] + 2, job

        got = stack.admin("GET", f"/download/weekly/{week}")
        assert got.status == 200, got.body
        assert got.headers["Content-Type"] == "application/gzip"
        assert f'filename="weekly_{week}.tar.gz"' in got.headers["Content-Disposition"]
        assert hashlib.sha256(got.body).hexdigest() == got.headers["X-Backup-SHA256"] == job["sha256"]
        path = workdir / f"{week}.tar.gz"
        path.write_bytes(got.body)

        nights = [monday + dt.timedelta(days=d) for d in (0, 3, 6)]
        expected = sorted(f"{n}/{db}" for n in nights for db in ("demo.sql.gz", "hostile.sql")) + ["manifest.json"]
        listing = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True, check=True)
        assert listing.stdout.split() == expected
        verbose = subprocess.run(["tar", "-tvzf", str(path)], capture_output=True, text=True, check=True)
        assert all(line.startswith("-rw-r--r--") for line in verbose.stdout.splitlines())

        out = workdir / week
        out.mkdir()
        subprocess.run(["tar", "-xzf", str(path), "-C", str(out)], check=True)
        for member in expected[:-1]:
            assert (out / member).read_bytes() == dailies[member], member
        # The archive is many gzip members (one per compressed piece); every reader must join
        # them into one tar stream, not stop after the first member.
        assert gzip_member_count(got.body) > 1
        with tarfile.open(fileobj=io.BytesIO(got.body), mode="r:gz") as tar:
            assert tar.getnames() == expected
            for member in expected[:-1]:
                assert tar.extractfile(member).read() == dailies[member], member
        seven = workdir / f"{week}-7z"
        subprocess.run(["7zz", "x", "-y", str(path), f"-o{seven}"], check=True, capture_output=True)
        subprocess.run(["7zz", "x", "-y", str(seven / f"{week}.tar"), f"-o{seven}"], check=True, capture_output=True)
        for member in expected[:-1]:
            assert (seven / member).read_bytes() == dailies[member], member
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["week"] == week and manifest["excluded"] == []
        assert [m["path"] for m in manifest["members"]] == expected[:-1]
        for m in manifest["members"]:
            assert m["sha256"] == hashlib.sha256(dailies[m["path"]]).hexdigest()
            assert m["bytes"] == len(dailies[m["path"]])

    # Running a week again yields the same single archive.
    first = week_label(ARCHIVED_WEEKS[0])
    before = stack.r2_objects(f"weekly/{first}")
    again = archive(stack, first)
    assert again["outcome"] == "already_archived", again
    assert stack.r2_objects(f"weekly/{first}") == before
    assert len(stack.r2_objects("weekly/")) == 3
    assert stack.r2_open_uploads() == []
    assert stack.r2_objects("staging/") == {}


def gzip_member_count(data: bytes) -> int:
    """How many gzip members `data` is made of (each must be whole)."""
    count = 0
    while data:
        decoder = zlib.decompressobj(wbits=31)
        decoder.decompress(data)
        assert decoder.eof, "a gzip member is cut short"
        data = decoder.unused_data
        count += 1
    return count


def test_retention_keeps_exactly_what_the_policy_says(history):
    stack, _, _ = history
    # Archiving ran cleanup after each archive; run it once more and read its report.
    response = stack.admin("POST", "/cleanup")
    assert response.status == 200, response.body
    report = response.json()
    assert report["policy"] == {"dailyDays": 7, "weeklyWeeks": 12, "manualDays": 30}
    expected_live = {
        f"daily/{YESTERDAY}/demo.sql.gz",
        f"daily/{YESTERDAY}/hostile.sql",
        # Chinook's backups stopped long ago: its newest stays, whatever its age.
        f"daily/{ANCIENT_NIGHTS[-1]}/chinook.sql",
        *(f"weekly/{week_label(m)}.tar.gz" for m in ARCHIVED_WEEKS),
    }
    assert {d["key"] for d in report["kept"]} == expected_live
    assert report["errors"] == []
    # Inventory and R2 agree.
    assert live_inventory(stack) == expected_live
    assert set(stack.r2_objects()) == expected_live
    reasons = dict(row.values() for row in stack.d1_query(
        META, "SELECT key, delete_reason FROM backups WHERE deleted_at IS NOT NULL"))
    assert len(reasons) == len(NIGHTS) * 2 + len(ANCIENT_NIGHTS) * 3 - 1
    assert "held by the verified archive weekly/" in reasons[f"daily/{NIGHTS[0]}/hostile.sql"]
    assert "in no archive" in reasons[f"daily/{ANCIENT_NIGHTS[0]}/chinook.sql"]
    # A second cleanup finds nothing more to delete.
    assert stack.admin("POST", "/cleanup").json()["deleted"] == []
    # A deleted daily is no longer served; its archive still is.
    assert stack.admin("GET", f"/download/{NIGHTS[0]}/hostile").status == 404


@pytest.mark.parametrize("body,status,code", [
    (b"", 400, "invalid_body"),
    (b"{", 400, "invalid_body"),
    (b"[]", 400, "invalid_body"),
    (b"{}", 400, "missing_week"),
    (b'{"week": 2026}', 400, "invalid_body"),
    (b'{"week": "2026-W99"}', 400, "invalid_week"),
    (b'{"week": "../../etc"}', 400, "invalid_week"),
    (b'{"week": "2999-W01"}', 400, "week_not_over"),
    (b'{"week": "2026-W01", "other": 1}', 400, "invalid_body"),
    (b'{"week": "2026-W01", "fault": {"stage": "d1_query", "failAttempts": 1}}', 400, "invalid_fault"),
    (b" " * 70_000, 413, "body_too_large"),
])
def test_archive_requests_are_validated(history, body, status, code):
    stack, _, _ = history
    before = stack.d1_query(META, "SELECT count(*) AS n FROM archive_jobs")[0]["n"]
    response = stack.admin("POST", "/archive", body)
    assert (response.status, response.json()["error"]) == (status, code), response.body
    assert stack.d1_query(META, "SELECT count(*) AS n FROM archive_jobs")[0]["n"] == before


@pytest.mark.parametrize("path,status,code", [
    ("/download/weekly/2026-W99", 400, "invalid_week"),
    ("/download/weekly/..%2F..%2Fx", 400, "invalid_week"),
    ("/download/weekly/2001-W01", 404, "archive_not_found"),
    ("/download/2026-13-01/demo", 400, "invalid_date"),
    ("/download/2026-1-1/demo", 400, "invalid_date"),
    ("/download/2026-01-01/nosuchdb", 404, "unknown_database"),
    ("/download/2001-01-01/demo", 404, "backup_not_found"),
])
def test_downloads_validate_their_parameters(history, path, status, code):
    stack, _, _ = history
    response = stack.admin("GET", path)
    assert (response.status, response.json()["error"]) == (status, code), response.body
    assert stack.request("GET", path).status == 401
    assert stack.request("POST", "/cleanup").status == 401
