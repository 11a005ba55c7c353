"""The operator API on the local stack: the inventory listing, restore guides whose commands are
run as written, and retrying a dead run."""

import os
import sqlite3
import subprocess

import pytest

from stack import ADMIN_TOKEN, ROOT

META = "d1-backup-meta"


def backup(stack, databases, **extra):
    r = stack.admin("POST", "/trigger", {"databases": databases, **extra})
    assert r.status == 202, r.body
    return stack.wait_for_job(r.json()["jobId"], timeout=120)


def settled(item: dict) -> dict:
    """A listed item without its verification fields."""
    return {k: v for k, v in item.items() if not k.startswith("verif")}


def test_list_pages_through_the_inventory_newest_first(roomy_stack):
    """Newest first by creation time (tests/e2e/test_downloads.py shows it is not the date's order)."""
    backup(roomy_stack, ["demo", "hostile"])
    backup(roomy_stack, ["demo"])
    everything = roomy_stack.admin("GET", "/list?limit=1000").json()
    assert everything["nextCursor"] is None
    items = everything["items"]
    assert len(items) >= 3
    order = [(i["createdAt"], i["key"]) for i in items]
    assert order == sorted(order, reverse=True)
    # Two at a time, the same items in the same order.
    paged, cursor = [], None
    while True:
        page = roomy_stack.admin("GET", "/list?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["items"]) <= 2
        paged += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    # Verification runs on in the background: its fields may move on between two reads.
    assert [settled(i) for i in paged] == [settled(i) for i in items]
    demo = roomy_stack.admin("GET", "/list?database=demo&kind=manual").json()["items"]
    assert demo and all(i["database"] == "demo" and i["kind"] == "manual" for i in demo)
    assert all(i["key"].endswith(".sql.gz") for i in demo)
    newest = demo[0]
    assert settled(roomy_stack.admin("GET", f"/list?date={newest['date']}&database=demo").json()["items"][0]) == settled(newest)
    assert roomy_stack.admin("GET", "/list?date=2001-01-01").json() == {"items": [], "nextCursor": None}


@pytest.mark.parametrize("query,code", [
    ("limit=0", "invalid_limit"),
    ("limit=abc", "invalid_limit"),
    ("kind=hourly", "invalid_kind"),
    ("date=20261123", "invalid_date"),
    ("database=..%2Fx", "invalid_database"),
    ("cursor=nothex", "invalid_cursor"),
    ("deleted=maybe", "invalid_deleted"),
    ("order=asc", "invalid_query"),
    ("limit=1&limit=2", "invalid_query"),
])
def test_list_refuses_malformed_queries(roomy_stack, query, code):
    r = roomy_stack.admin("GET", f"/list?{query}")
    assert (r.status, r.json()["error"]) == (400, code), r.body


def test_restore_guide_commands_work_as_written(roomy_stack, tmp_path):
    job = backup(roomy_stack, ["hostile"])
    guide = roomy_stack.admin("GET", "/restore-guide/hostile").json()
    run = job["runs"][0]
    assert guide["key"] == run["r2Key"] and guide["sha256"] == run["sha256"]
    assert guide["bookmark"] and any("time-travel restore" in c for s in guide["steps"] for c in s["commands"])
    commands = {s["title"]: s["commands"] for s in guide["steps"]}
    # Run the local steps exactly as the guide prints them: download with curl through the API
    # (a manual backup is fetched with wrangler r2 instead), check, restore with sqlite3.
    env = {**os.environ, "D1_BACKUP_TOKEN": ADMIN_TOKEN}
    shell = lambda cmd: subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=tmp_path, env=env,
                                       capture_output=True, text=True)
    download = [c for c in commands["Download the backup"] if "wrangler r2 object get" in c][0]
    download = download.replace("npx wrangler", f"node {ROOT}/node_modules/wrangler/bin/wrangler.js") \
        .replace("--remote", f"--local --persist-to {roomy_stack.state_dir} -c {ROOT}/wrangler.toml")
    assert shell(download).returncode == 0
    # The guide's first command downloads the same bytes through the API (a manual backup by
    # its key), run as printed.
    (through_api,) = [c for c in commands["Download the backup"] if c.startswith("curl ")]
    assert "/download?key=manual/" in through_api, through_api
    (tmp_path / "api").mkdir()
    fetched = subprocess.run(["bash", "-euo", "pipefail", "-c", through_api], cwd=tmp_path / "api", env=env,
                             capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr
    (downloaded,) = (tmp_path / "api").iterdir()
    assert downloaded.read_bytes() == (tmp_path / downloaded.name).read_bytes()
    for cmd in commands["Check it"] + commands["Restore into a local SQLite file"]:
        result = shell(cmd)
        assert result.returncode == 0, (cmd, result.stderr)
    (restored,) = tmp_path.glob("*.sqlite")
    db = sqlite3.connect(restored)
    # Every table's extract command yields exactly its rows, loaded into an empty copy of the
    # schema: the single-table restore.
    for table in guide["tables"]:
        result = shell(table["extract"])
        assert result.returncode == 0, (table, result.stderr)
        target = tmp_path / f"only-{len(table['name'])}-{abs(hash(table['name']))}.sqlite"
        schema = "\n".join(f"{sql};" for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' "
            "AND name NOT IN (SELECT name || suffix FROM sqlite_master, "
            "(SELECT '_data' AS suffix UNION SELECT '_idx' UNION SELECT '_docsize' UNION SELECT '_config' "
            "UNION SELECT '_content') WHERE sql LIKE 'CREATE VIRTUAL TABLE%')"))
        only = sqlite3.connect(target)
        only.executescript(schema)
        if table["name"] not in {n for (n,) in only.execute("SELECT name FROM sqlite_master")}:
            continue  # an FTS5 table: its rows go through the virtual table, restored whole
        only.close()
        sql_file = tmp_path / f"{table['name']}.sql"
        loaded = subprocess.run(["sqlite3", str(target)], stdin=open(sql_file), capture_output=True, text=True)
        assert loaded.returncode == 0, (table["name"], loaded.stderr[:500])
        only = sqlite3.connect(target)
        quoted = '"' + table["name"].replace('"', '""') + '"'
        assert only.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0] == table["rows"], table["name"]
        # Nothing but this table got rows.
        for (other,) in only.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
            if other != table["name"]:
                q = '"' + other.replace('"', '""') + '"'
                assert only.execute(f"SELECT count(*) FROM {q}").fetchone()[0] == 0, (table["name"], other)


def test_restore_guide_errors(roomy_stack):
    for path, status, code in [
        ("/restore-guide/nosuchdb", 404, "backup_not_found"),
        ("/restore-guide/..%2Fetc", 400, "invalid_database"),
        ("/restore-guide/demo?date=2001-01-01", 404, "backup_not_found"),
        ("/restore-guide/demo?date=yesterday", 400, "invalid_date"),
        ("/restore-guide/demo?key=daily/x", 400, "invalid_query"),
    ]:
        r = roomy_stack.admin("GET", path)
        assert (r.status, r.json()["error"]) == (status, code), (path, r.body)


def test_a_dead_run_is_retried_on_request(roomy_stack):
    job = backup(roomy_stack, ["demo"], faults={"demo": {"stage": "complete", "failAttempts": 99}})
    (run,) = job["runs"]
    assert run["state"] == "dead", run
    r = roomy_stack.admin("POST", f"/runs/{run['id']}/retry")
    assert r.status == 202, r.body
    # A second retry while it is queued or running is refused.
    again = roomy_stack.admin("POST", f"/runs/{run['id']}/retry")
    assert (again.status, again.json()["error"]) == (409, "run_not_dead")
    job = roomy_stack.wait_for_job(job["jobId"], timeout=120)
    (run,) = job["runs"]
    assert job["status"] == "completed" and run["state"] == "succeeded", job
    assert roomy_stack.r2_objects(run["r2Key"])[run["r2Key"]]["size"] == run["bytes"]
    done = roomy_stack.admin("POST", f"/runs/{run['id']}/retry")
    assert (done.status, done.json()["error"]) == (409, "run_not_dead")
    assert roomy_stack.admin("POST", "/runs/not-a-uuid/retry").json()["error"] == "invalid_run_id"
    missing = roomy_stack.admin("POST", "/runs/00000000-0000-4000-8000-000000000000/retry")
    assert (missing.status, missing.json()["error"]) == (404, "run_not_found")
