"""Every backup downloadable: nightly and manual backups by key (`GET /download?key=`) and by run
(`GET /runs/:id/download`), byte for byte what R2 holds, only keys the inventory knows; and `/list`
in creation order, paged by its cursor."""

import datetime as dt
import hashlib
import uuid

import pytest

from stack import READ_TOKEN, ROOMY_BUDGET, ROOT, Stack

META = "d1-backup-meta"


@pytest.fixture(scope="module")
def download_stack():
    """demo (gzip) and hostile only, without verification: these tests look at stored bytes and
    the inventory's order, and may mark a backup deleted."""
    stack = Stack(ROOT / "target" / "e2e" / f"downloads-{uuid.uuid4().hex[:8]}", consumer_vars=ROOMY_BUDGET,
                  databases=["demo", "hostile"], verify=False)
    try:
        yield stack.start()
    finally:
        stack.stop()


def manual_backup(stack, databases):
    r = stack.admin("POST", "/trigger", {"databases": databases})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"], timeout=120)
    assert job["status"] == "completed", job
    return job


def assert_downloads(stack, path, key, sha256):
    r = stack.admin("GET", path)
    assert r.status == 200, (path, r.body[:300])
    assert hashlib.sha256(r.body).hexdigest() == r.headers["X-Backup-SHA256"] == sha256, path
    assert r.body == stack.r2_get(key), path
    assert r.headers["Content-Disposition"] == f'attachment; filename="{key.replace("/", "_")}"'
    return r


def test_manual_backups_download_by_key_and_by_run(download_stack):
    s = download_stack
    job = manual_backup(s, ["demo", "hostile"])
    for run in job["runs"]:
        key = run["r2Key"]
        assert key.startswith("manual/") and f"/{job['jobId']}/" in key, key
        by_key = assert_downloads(s, f"/download?key={key}", key, run["sha256"])
        by_run = assert_downloads(s, f"/runs/{run['id']}/download", key, run["sha256"])
        assert by_key.body == by_run.body and len(by_key.body) == run["bytes"]
        assert by_key.headers["Content-Type"] == ("application/gzip" if key.endswith(".gz") else "application/sql; charset=utf-8")
        # Backups are the data: the read-only token may not download them, whichever way.
        for path in (f"/download?key={key}", f"/runs/{run['id']}/download"):
            r = s.request("GET", path, token=READ_TOKEN)
            assert (r.status, r.json()["error"]) == (403, "forbidden"), path


def test_nightly_backups_download_by_key_too(download_stack):
    s = download_stack
    job = s.run_night(dt.date(2026, 3, 2))
    for run in job["runs"]:
        assert run["r2Key"].startswith("daily/2026-03-02/")
        by_key = assert_downloads(s, f"/download?key={run['r2Key']}", run["r2Key"], run["sha256"])
        by_date = s.admin("GET", f"/download/2026-03-02/{run['database']}")
        assert by_date.status == 200 and by_date.body == by_key.body


def test_downloads_refuse_what_the_inventory_does_not_hold(download_stack):
    s = download_stack
    job = manual_backup(s, ["hostile"])
    (run,) = job["runs"]
    for path, status, code in [
        ("/download", 400, "invalid_query"),
        ("/download?name=x", 400, "invalid_query"),
        (f"/download?key={run['r2Key']}&key={run['r2Key']}", 400, "invalid_query"),
        ("/download?key=", 400, "invalid_key"),
        ("/download?key=../../etc/passwd", 400, "invalid_key"),
        ("/download?key=staging/anything", 400, "invalid_key"),
        ("/download?key=daily/2026-02-30/demo.sql", 400, "invalid_key"),
        (f"/download?key={run['r2Key'].upper()}", 400, "invalid_key"),
        ("/download?key=daily/2001-01-01/demo.sql.gz", 404, "backup_not_found"),
        (f"/download?key=manual/2026-03-02/{uuid.uuid4()}/hostile.sql", 404, "backup_not_found"),
        ("/download?key=weekly/2001-W01.tar.gz", 404, "archive_not_found"),
        ("/runs/not-a-uuid/download", 400, "invalid_run_id"),
        (f"/runs/{uuid.uuid4()}/download", 404, "not_found"),
    ]:
        r = s.admin("GET", path)
        assert r.headers["Content-Type"].startswith("application/json"), (path, r.headers["Content-Type"])
        assert (r.status, r.json()["error"]) == (status, code) and r.json()["message"], (path, r.body[:300])
    assert s.admin("POST", f"/download?key={run['r2Key']}").status == 405
    assert s.admin("DELETE", f"/runs/{run['id']}/download").status == 405
    # A key R2 holds but the inventory does not (a backup's parked bytes, a stray object) is
    # never served, whatever its name.
    stray = s.state_dir / "stray.sql"
    stray.write_text("-- not a backup\n")
    s.wrangler("r2", "object", "put", "d1-backups/daily/2001-01-02/demo.sql", "--local", "--file", str(stray))
    assert s.r2_get("daily/2001-01-02/demo.sql") == b"-- not a backup\n"
    r = s.admin("GET", "/download?key=daily/2001-01-02/demo.sql")
    assert (r.status, r.json()["error"]) == (404, "backup_not_found"), r.body
    # A backup retention deleted is gone: said so, by key and by run.
    s.d1_execute(META, f"UPDATE backups SET deleted_at = '2026-03-03T04:00:00.000Z', delete_reason = 'retention' "
                       f"WHERE key = '{run['r2Key']}'")
    for path in (f"/download?key={run['r2Key']}", f"/runs/{run['id']}/download"):
        r = s.admin("GET", path)
        assert (r.status, r.json()["error"]) == (404, "backup_deleted") and "retention" in r.json()["message"], r.body


def test_a_run_without_a_backup_has_nothing_to_download(download_stack):
    s = download_stack
    job = manual_backup(s, ["demo"])
    (run,) = job["runs"]
    s.d1_execute(META, f"UPDATE runs SET state = 'dead' WHERE id = '{run['id']}'")
    r = s.admin("GET", f"/runs/{run['id']}/download")
    assert (r.status, r.json()["error"]) == (409, "no_backup") and "dead" in r.json()["message"], r.body


def test_list_is_in_creation_order_and_pages_through_it(download_stack):
    s = download_stack
    manual_backup(s, ["demo"])
    # A night long past, backed up now: its date is the oldest, its creation the newest.
    late = s.run_night(dt.date(2026, 1, 5))
    everything = s.admin("GET", "/list?limit=1000").json()
    items = everything["items"]
    assert everything["nextCursor"] is None and len(items) >= 4
    order = [(i["createdAt"], i["key"]) for i in items]
    assert order == sorted(order, reverse=True)
    assert {i["key"] for i in items[:len(late["runs"])]} == {r["r2Key"] for r in late["runs"]}
    assert items[len(late["runs"])]["kind"] == "manual", "the manual backup made before the late night comes next"
    assert [i["date"] for i in items] != sorted((i["date"] for i in items), reverse=True), "not in date order"
    # One at a time and three at a time: the same items in the same order, each once.
    for limit in (1, 3):
        paged, cursor = [], None
        while True:
            page = s.admin("GET", f"/list?limit={limit}" + (f"&cursor={cursor}" if cursor else "")).json()
            assert len(page["items"]) <= limit
            paged += page["items"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert [i["key"] for i in paged] == [i["key"] for i in items], limit
    # Filters keep the order.
    demo = s.admin("GET", "/list?database=demo&limit=1000").json()["items"]
    assert [i["key"] for i in demo] == [i["key"] for i in items if i["database"] == "demo"]
