"""Verified backups and restores on the local stack: every new dump is restored into the
scratch D1 database and checked; dumps damaged in R2 fail verification naming the table, with
an alert; `POST /restore` restores dailies and weekly-archive members into configured databases,
dry run by default, backing up a non-empty target first."""

import datetime as dt
import subprocess
import time
import uuid

import pytest

from stack import FAST_RETRIES, ROOT, Stack, exact_rows_sql, wait_until

META = "d1-backup-meta"
SCRATCH = "d1-backup-verify"
# An emptied scratch database keeps only the marker that makes it one.
SCRATCH_MARKED = [("table", "_d1_backup_scratch")]
# Small steps: restores and verifications of Chinook take several queue messages.
BUDGET = {"EXPORT_MAX_QUERIES": "40", "EXPORT_MAX_MB": "1", "EXPORT_ROWS_PER_QUERY": "500", **FAST_RETRIES}
USER_OBJECTS = ("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY name")
USER_TABLES = ("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' "
               "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' "
               "AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow') ORDER BY name")


@pytest.fixture(scope="module")
def stack():
    # fan01 and fan02: empty configured databases to restore into.
    s = Stack(ROOT / "target" / "e2e" / f"restore-{uuid.uuid4().hex[:8]}", consumer_vars=BUDGET,
              extra_databases=2, all_vars=FAST_RETRIES)
    try:
        yield s.start()
    finally:
        s.stop()


def back_up(stack: Stack, database: str) -> dict:
    r = stack.admin("POST", "/trigger", {"databases": [database]})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"], timeout=180)
    assert job["status"] == "completed", job
    (run,) = job["runs"]
    return run


def run_view(stack: Stack, run: dict) -> dict:
    job_id = stack.d1_query(META, f"SELECT job_id FROM runs WHERE id = '{run['id']}'")[0]["job_id"]
    (view,) = [r for r in stack.admin("GET", f"/jobs/{job_id}").json()["runs"] if r["id"] == run["id"]]
    return view


def wait_for_verification(stack: Stack, run: dict, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    view = run
    while time.monotonic() < deadline:
        view = run_view(stack, run)
        if view.get("verifyState") in ("verified", "verify_failed", "skipped"):
            return view
        time.sleep(0.5)
    raise AssertionError(f"run {run['id']} not verified after {timeout}s: {view}\n{stack.log()[-5000:]}")


def contents(stack: Stack, database: str) -> dict:
    """Every user table's rows, exactly (storage class and bytes of every value)."""
    tables = [r["name"] for r in stack.d1_query(database, USER_TABLES)]
    if not tables:
        return {}
    column_lists = stack.d1_queries(database, [
        f"SELECT name FROM pragma_table_xinfo('{t}') WHERE hidden IN (0, 2, 3)" for t in tables])
    without_rowid = {r["name"] for r in stack.d1_query(database, "SELECT name FROM pragma_table_list WHERE wr = 1")}
    sqls = [exact_rows_sql(t, [c["name"] for c in cols], t not in without_rowid) for t, cols in zip(tables, column_lists)]
    rows = stack.d1_queries(database, sqls)
    return {t: [list(r.values()) for r in table_rows] for t, table_rows in zip(tables, rows)}


def objects(stack: Stack, database: str) -> list:
    return [(r["type"], r["name"]) for r in stack.d1_query(database, USER_OBJECTS)]


def damage(stack: Stack, key: str, change, tmp_path) -> None:
    """Rewrites an object in the local bucket, as bit rot or a botched copy would."""
    original = stack.r2_get(key, tmp_path / "original")
    damaged = tmp_path / "damaged"
    damaged.write_bytes(change(original))
    stack.wrangler("r2", "object", "put", f"d1-backups/{key}", "--local", "--file", str(damaged))


@pytest.mark.parametrize("database", ["chinook", "hostile", "demo"])
def test_every_new_backup_is_verified_in_the_scratch_database(stack, database):
    run = back_up(stack, database)
    view = wait_for_verification(stack, run)
    assert view["verifyState"] == "verified", view
    assert view["verifyMillis"] is not None and view["verifiedAt"]
    op = stack.wait_for_operation(view["verifyOperation"])
    outcome = op["outcome"]
    assert outcome["outcome"] == "verified" and outcome["passed"], op
    assert outcome["rows"] == run["rows"]
    assert op["step"] >= 1, "verification ran over several messages"
    # Digests were recorded per table at export time.
    digests = stack.d1_query(META, f"SELECT sha256 FROM backup_tables WHERE key = '{run['r2Key']}'")
    assert digests and all(len(d["sha256"]) == 64 for d in digests)
    # The scratch database keeps no copy of the data.
    assert objects(stack, SCRATCH) == SCRATCH_MARKED


def test_a_changed_byte_fails_verification_naming_the_table_and_alerts(stack, tmp_path):
    run = back_up(stack, "chinook")
    assert wait_for_verification(stack, run)["verifyState"] == "verified"

    def change(dump: bytes) -> bytes:
        at = dump.index(b"'Princess of the Dawn'") + 3
        return dump[:at] + b"X" + dump[at + 1:]
    damage(stack, run["r2Key"], change, tmp_path)

    r = stack.admin("POST", f"/runs/{run['id']}/verify")
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "failed" and op["failedTable"] == "Track", op
    assert "SHA-256" in op["error"], op
    view = run_view(stack, run)
    assert view["verifyState"] == "verify_failed" and view["verifyTable"] == "Track", view
    alerts = stack.d1_query(META, f"SELECT message, details FROM alerts WHERE kind = 'verify_failed' AND subject = '{op['id']}'")
    assert len(alerts) == 1 and "Track" in alerts[0]["message"], alerts
    assert objects(stack, SCRATCH) == SCRATCH_MARKED

    # A backup that failed its verification is not restored unless the request says so.
    dry = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "chinook"}).json()
    assert dry["backup"]["verification"]["state"] == "verify_failed", dry
    assert dry["toProceed"]["allowUnverified"] is True and "FAILED" in dry["actions"][0], dry
    operations = stack.d1_query(META, "SELECT count(*) AS n FROM operations")
    refused = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "chinook", "dryRun": False,
                                               "confirm": "chinook"})
    assert refused.status == 409 and refused.json()["error"] == "backup_failed_verification", refused.body
    assert "Track" in refused.json()["message"], refused.body
    assert stack.d1_query(META, "SELECT count(*) AS n FROM operations") == operations


def test_a_truncated_dump_fails_verification_naming_the_table_it_cuts(stack, tmp_path):
    run = back_up(stack, "chinook")
    wait_for_verification(stack, run)
    cut = {}

    def truncate(dump: bytes) -> bytes:
        keep = len(dump) * 6 // 10
        marker = dump[:keep].rindex(b"\n-- Table: ") + len(b"\n-- Table: ")
        cut["table"] = dump[marker:dump.index(b"\n", marker)].decode()
        return dump[:keep]
    damage(stack, run["r2Key"], truncate, tmp_path)

    r = stack.admin("POST", f"/runs/{run['id']}/verify")
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "failed" and op["failedTable"] == cut["table"], (op, cut)
    assert "ends early" in op["error"], op
    assert run_view(stack, run)["verifyState"] == "verify_failed"
    assert stack.d1_query(META, f"SELECT count(*) AS n FROM alerts WHERE kind = 'verify_failed' AND subject = '{op['id']}'")[0]["n"] == 1


def test_a_dry_run_reports_and_changes_nothing(stack):
    run = back_up(stack, "chinook")
    before = contents(stack, "chinook")
    operations = stack.d1_query(META, "SELECT count(*) AS n FROM operations WHERE kind = 'restore'")[0]["n"]
    jobs = stack.d1_query(META, "SELECT count(*) AS n FROM jobs")[0]["n"]
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "chinook"})
    assert r.status == 200, r.body
    report = r.json()
    assert report["dryRun"] is True and report["requiresConfirmation"] is True
    assert report["target"]["empty"] is False
    assert report["toProceed"] == {"dryRun": False, "confirm": "chinook", "allowUnverified": False}
    assert any("back up chinook first" in a for a in report["actions"]), report
    assert report["backup"]["rows"] == run["rows"]
    # Not even asked to confirm: a real restore over data without "confirm" is refused.
    refused = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "chinook", "dryRun": False})
    assert refused.status == 409 and refused.json()["error"] == "confirmation_required", refused.body
    assert contents(stack, "chinook") == before
    assert stack.d1_query(META, "SELECT count(*) AS n FROM operations WHERE kind = 'restore'")[0]["n"] == operations
    assert stack.d1_query(META, "SELECT count(*) AS n FROM jobs")[0]["n"] == jobs


def test_a_weekly_archive_member_restores_into_an_empty_database(stack):
    night = dt.date.today() - dt.timedelta(days=21)
    stack.run_night(night, timeout=300)
    year, week, _ = night.isocalendar()
    label = f"{year}-W{week:02d}"
    r = stack.admin("POST", "/archive", {"week": label})
    assert r.status == 202, r.body
    assert stack.wait_for_job(r.json()["jobId"], timeout=300)["status"] == "completed"
    key = f"daily/{night.isoformat()}/chinook.sql"
    assert objects(stack, "fan01") == []

    dry = stack.admin("POST", "/restore", {"backup": key, "week": label, "target": "fan01"})
    assert dry.status == 200, dry.body
    assert dry.json()["requiresConfirmation"] is False
    assert dry.json()["backup"]["source"] == {"from": "weekly_archive", "archive": f"weekly/{label}.tar.gz"}
    r = stack.admin("POST", "/restore", {"backup": key, "week": label, "target": "fan01", "dryRun": False})
    assert r.status == 202, r.body
    assert r.json()["preBackupJobId"] is None, "an empty target needs no backup first"
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded", op
    assert op["archiveKey"] == f"weekly/{label}.tar.gz"
    assert op["step"] >= 2, "extraction and restore took several messages"
    assert contents(stack, "fan01") == contents(stack, "chinook")
    assert objects(stack, "fan01") == objects(stack, "chinook")
    assert stack.r2_objects("restore-staging/") == {}, "the extracted copy is deleted"


def test_a_confirmed_restore_over_data_backs_the_target_up_first(stack):
    stack.d1_execute("fan02", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'keep me');")
    run = back_up(stack, "hostile")
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan02", "dryRun": False, "confirm": "fan02"})
    assert r.status == 202, r.body
    pre_job = r.json()["preBackupJobId"]
    assert pre_job
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded", op
    assert op["preBackupJobId"] == pre_job
    # The backup of fan02 taken first holds what the restore replaced.
    (pre_run,) = stack.admin("GET", f"/jobs/{pre_job}").json()["runs"]
    assert pre_run["state"] == "succeeded" and pre_run["finishedAt"] <= op["startedAt"], (pre_run, op)
    tables = stack.d1_query(META, f"SELECT table_name, rows FROM backup_tables WHERE key = '{pre_run['r2Key']}'")
    assert tables == [{"table_name": "notes", "rows": 1}]
    assert contents(stack, "fan02") == contents(stack, "hostile")


def assert_refused_with_fan02_untouched(stack: Stack, request: dict) -> dict:
    """A confirmed restore into fan02 (holding a note) that must fail before changing anything."""
    stack.d1_execute("fan02", "DROP TABLE IF EXISTS notes; CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); "
                              "INSERT INTO notes VALUES (7, 'precious');")
    before = contents(stack, "fan02")
    r = stack.admin("POST", "/restore", {**request, "target": "fan02", "dryRun": False, "confirm": "fan02"})
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "failed" and "nothing in the target was changed" in op["error"], op
    assert contents(stack, "fan02") == before
    assert stack.r2_objects(f"restore-staging/{op['id']}/") == {}, "nothing of the operation is left"
    return op


def test_a_dump_damaged_on_disk_is_refused_before_the_target_changes(stack):
    run = back_up(stack, "hostile")
    assert wait_for_verification(stack, run)["verifyState"] == "verified"
    # Bit rot after the verification: one byte of the stored object, in place.
    stack.r2_flip_byte(run["r2Key"], run["bytes"] // 2)
    op = assert_refused_with_fan02_untouched(stack, {"backup": run["r2Key"]})
    assert "SHA-256" in op["error"], op


def test_a_truncated_dump_is_refused_before_the_target_changes(stack, tmp_path):
    run = back_up(stack, "hostile")
    assert wait_for_verification(stack, run)["verifyState"] == "verified"
    damage(stack, run["r2Key"], lambda dump: dump[: len(dump) * 2 // 3], tmp_path)
    assert_refused_with_fan02_untouched(stack, {"backup": run["r2Key"]})


def test_an_altered_archive_member_is_refused_before_the_target_changes(stack):
    # The week archived by test_a_weekly_archive_member_restores_into_an_empty_database.
    night = dt.date.today() - dt.timedelta(days=21)
    year, week, _ = night.isocalendar()
    label = f"{year}-W{week:02d}"
    archive = f"weekly/{label}.tar.gz"
    stack.r2_flip_byte(archive, stack.r2_objects("weekly/")[archive]["size"] // 2)
    assert_refused_with_fan02_untouched(stack, {"backup": f"daily/{night.isoformat()}/chinook.sql", "week": label})


def test_a_backup_of_a_database_being_restored_waits_for_the_restore(stack):
    # A restore into fan01 holds its lock (as a real restore does from its first step to its
    # end, which here would be over in a fraction of a second): held for it here.
    restore_id = str(uuid.uuid4())
    stack.d1_execute(META, "INSERT INTO locks (name, owner, until) "
                           f"VALUES ('database:fan01', '{restore_id}', '2999-01-01T00:00:00.000Z')")
    during = stack.admin("POST", "/trigger", {"databases": ["fan01"]})
    assert during.status == 202, during.body
    job_id = during.json()["jobId"]

    def run():
        (row,) = stack.d1_query(META, f"SELECT state, attempts, failures, queued_at, next_attempt_at FROM runs "
                                      f"WHERE job_id = '{job_id}'")
        return row
    # It came, found the database taken and waits: due again later, not failed, not started.
    wait_until(lambda: run()["next_attempt_at"] > run()["queued_at"], what="the backup to find the lock")
    waiting = run()
    assert (waiting["state"], waiting["attempts"], waiting["failures"]) == ("queued", 0, 0), waiting
    stack.d1_execute(META, f"DELETE FROM locks WHERE owner = '{restore_id}'")
    job = stack.wait_for_job(job_id, timeout=120)
    assert job["status"] == "completed", job
    (backup,) = job["runs"]
    assert backup["attempts"] == backup["step"] and all(a["outcome"] != "retrying" for a in backup["history"]), backup
    # A real restore takes the same lock and releases it with its end.
    source = back_up(stack, "demo")
    r = stack.admin("POST", "/restore", {"backup": source["r2Key"], "target": "fan01", "dryRun": False, "confirm": "fan01"})
    assert r.status == 202, r.body
    assert stack.wait_for_operation(r.json()["operationId"])["state"] == "succeeded"
    assert stack.d1_query(META, "SELECT count(*) AS n FROM locks WHERE name = 'database:fan01'") == [{"n": 0}]


def test_a_restore_failing_mid_way_puts_the_target_back(stack):
    run = back_up(stack, "chinook")
    stack.d1_execute("fan02", "DROP TABLE IF EXISTS notes; CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); "
                              "INSERT INTO notes VALUES (3, 'before the restore');")
    before, before_objects = contents(stack, "fan02"), objects(stack, "fan02")
    # D1 refuses the restore's first batch of rows: by then fan02 has been emptied.
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan02", "dryRun": False, "confirm": "fan02",
                                         "fault": {"stage": "restore_batch", "failAttempts": 1}})
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "failed" and op["outcome"]["outcome"] == "rolledBack", op
    assert op["outcome"]["restored"]["sha256Matches"] is True, op
    assert "injected fault" in op["error"] and "put back as it was" in op["error"], op
    assert contents(stack, "fan02") == before
    assert objects(stack, "fan02") == before_objects


def test_one_table_restores_alone(stack):
    run = back_up(stack, "chinook")
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan01", "dryRun": False, "confirm": "fan01"})
    assert r.status == 202, r.body
    assert stack.wait_for_operation(r.json()["operationId"])["state"] == "succeeded"
    stack.d1_execute("fan01", "DELETE FROM PlaylistTrack WHERE PlaylistId > 2; UPDATE Genre SET Name = 'kept';")

    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan01", "table": "PlaylistTrack",
                                         "dryRun": False, "confirm": "fan01"})
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded" and op["tableName"] == "PlaylistTrack", op
    restored = contents(stack, "fan01")
    source = contents(stack, "chinook")
    assert restored["PlaylistTrack"] == source["PlaylistTrack"]
    # Genre's rows: rowid, then class and value of GenreId, then of Name.
    assert all(row[3] == "text:" + "kept".encode().hex().upper() for row in restored["Genre"]), "other tables untouched"

    # A table other tables refer to cannot come back alone.
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan01", "table": "Genre",
                                         "dryRun": False, "confirm": "fan01"})
    assert r.status == 202, r.body
    op = stack.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "failed" and "Track" in op["error"], op
    assert contents(stack, "fan01")["Genre"] == restored["Genre"], "the refusal changed nothing"


@pytest.mark.parametrize("body,status,code", [
    ({"target": "fan01"}, 400, "invalid_body"),
    ({"backup": "../../etc/passwd", "target": "fan01"}, 400, "invalid_backup"),
    ({"backup": "daily/2020-01-01/chinook.sql", "target": "fan01"}, 404, "backup_unavailable"),
    ({"backup": "daily/2020-01-01/chinook.sql", "target": "nowhere"}, 422, "unknown_database"),
    ({"backup": "daily/2020-01-01/chinook.sql", "target": "fan01", "dryRun": "yes"}, 400, "invalid_body"),
])
def test_restore_requests_are_validated(stack, body, status, code):
    r = stack.admin("POST", "/restore", body)
    assert (r.status, r.json()["error"]) == (status, code), r.body


def test_verify_and_restore_refuse_what_they_cannot_do(stack):
    assert stack.admin("POST", "/runs/no-such-run/verify").status == 400
    assert stack.admin("POST", f"/runs/{uuid.uuid4()}/verify").status == 404
    assert stack.admin("GET", "/operations/no-such-operation").status == 400
    assert stack.admin("GET", f"/operations/{uuid.uuid4()}").status == 404
    run = back_up(stack, "demo")
    r = stack.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan01", "table": "no_such_table"})
    assert (r.status, r.json()["error"]) == (422, "unknown_table"), r.body
    assert stack.request("POST", f"/runs/{run['id']}/verify", token="e2e-read-token").status == 403
    listed = stack.admin("GET", "/operations?limit=100").json()["operations"]
    assert any(o["sourceKey"] == run["r2Key"] and o["kind"] == "verify" for o in listed)


def test_status_list_and_metrics_show_verification(stack):
    run = back_up(stack, "hostile")
    wait_for_verification(stack, run)
    status = stack.admin("GET", "/status").json()
    (hostile,) = [v for v in status["verification"] if v["database"] == "hostile"]
    assert hostile["runId"] == run["id"] and hostile["verifyState"] == "verified", hostile
    failed = any(v["verifyState"] == "verify_failed" for v in status["verification"])
    assert (status["status"] == "a backup failed verification") == failed, status
    items = stack.admin("GET", "/list?database=hostile&limit=1000").json()["items"]
    (item,) = [i for i in items if i["key"] == run["r2Key"]]
    assert item["verifyState"] == "verified" and "restored and matched" in item["verifyDetail"], item
    metrics = stack.admin("GET", "/metrics").body.decode()
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("d1_backup_verifications{"))
    assert float(samples['d1_backup_verifications{state="verified"}']) >= 3, samples
    assert float(samples['d1_backup_verifications{state="verify_failed"}']) >= 2, samples


def test_a_verify_db_bound_to_a_source_is_refused_and_the_source_kept(tmp_path):
    """VERIFY_DB bound by mistake to the demo database: verifications refuse to touch it."""
    s = Stack(ROOT / "target" / "e2e" / f"wrongscratch-{uuid.uuid4().hex[:8]}", consumer_vars=BUDGET,
              all_vars=FAST_RETRIES, databases=["chinook", "demo"], scratch_database="demo").start()
    try:
        # The config check refuses this config before a deployment...
        check = subprocess.run(["python3", "scripts/check-config.py", s.consumer_config], cwd=ROOT,
                               capture_output=True, text=True)
        assert check.returncode == 1 and "VERIFY_DB has the same database_id" in check.stderr, check
        # ...and, deployed anyway, the consumer refuses it at run time.
        before = contents(s, "demo")
        assert before, "demo holds data"
        run = back_up(s, "chinook")
        view = wait_for_verification(s, run)
        assert view["verifyState"] == "skipped", view
        assert "VERIFY_DB is not a scratch database" in view["verifyDetail"], view
        assert contents(s, "demo") == before
        alerts = s.d1_query(META, f"SELECT message FROM alerts WHERE kind = 'verify_failed' AND database = 'chinook'")
        assert len(alerts) == 1 and "was not verified" in alerts[0]["message"], alerts
    finally:
        s.stop()
