"""Encrypted backups on the local stack: dumps are age files that Debian's `age` CLI and pyrage
decrypt offline with either recipient's key, byte for byte the dump, restoring exactly the data;
the consumer verifies and restores them with AGE_IDENTITY, records verification as skipped and
refuses restores without it; a malformed recipient is a configuration error naming it."""

import datetime as dt
import gzip
import hashlib
import io
import tarfile
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pyrage
import pytest

from stack import FAST_RETRIES, ROOT, Stack, exact_rows_sql
from test_verify_restore import assert_refused_with_fan02_untouched, back_up, contents, wait_for_verification

# Small steps: the encryption is paused and resumed across many queue messages.
BUDGET = {"EXPORT_MAX_QUERIES": "20", "EXPORT_MAX_MB": "1", "EXPORT_ROWS_PER_QUERY": "500", **FAST_RETRIES}
AGE_MAGIC = b"age-encryption.org/v1\n"


class Key:
    """A key pair made by Debian's age-keygen."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / f"{name}.txt"
        subprocess.run(["age-keygen", "-o", str(self.path)], check=True, capture_output=True)
        self.secret = next(l for l in self.path.read_text().splitlines() if l.startswith("AGE-SECRET-KEY-1"))
        self.recipient = subprocess.run(["age-keygen", "-y", str(self.path)], check=True, capture_output=True,
                                        text=True).stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("age-keys")
    return {"alice": Key(directory, "alice"), "bob": Key(directory, "bob")}


def entries(keys) -> dict:
    both = f'["{keys["alice"].recipient}", "{keys["bob"].recipient}"]'
    return {"chinook": f'{{ binding = "DB_CHINOOK", recipients = {both} }}',
            "demo": f'{{ binding = "DB_DEMO", gzip = true, recipients = ["{keys["alice"].recipient}"] }}'}


@pytest.fixture(scope="module")
def sealed(keys):
    """Chinook encrypted to Alice and Bob, demo gzipped and encrypted to Alice; the consumer
    reads them with Bob's key."""
    s = Stack(ROOT / "target" / "e2e" / f"age-{uuid.uuid4().hex[:8]}", databases=["chinook", "demo"],
              database_entries=entries(keys), consumer_vars={**BUDGET, "AGE_IDENTITY": keys["bob"].secret},
              extra_databases=2, all_vars=FAST_RETRIES)
    try:
        yield s.start()
    finally:
        s.stop()


def age_decrypt(key: Key, data: bytes, directory: Path) -> bytes:
    encrypted = directory / f"dump-{uuid.uuid4().hex[:6]}.age"
    encrypted.write_bytes(data)
    return subprocess.run(["age", "-d", "-i", str(key.path), str(encrypted)], check=True, capture_output=True).stdout


def listed(stack: Stack, key: str) -> dict:
    (item,) = [i for i in stack.admin("GET", "/list?limit=100").json()["items"] if i["key"] == key]
    return item


def restored_contents(dump_sql: bytes, directory: Path) -> dict:
    """What sqlite3 (the CLI, as a user would) restores from the dump, row by row, exactly."""
    db = directory / f"restored-{uuid.uuid4().hex[:6]}.sqlite"
    subprocess.run(["sqlite3", str(db)], input=dump_sql, check=True, capture_output=True)
    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite%' ORDER BY name")]
    without_rowid = {r[0] for r in conn.execute("SELECT name FROM pragma_table_list WHERE wr = 1")}
    out = {}
    for t in tables:
        columns = [r[1] for r in conn.execute(f"SELECT * FROM pragma_table_xinfo('{t}') WHERE hidden IN (0, 2, 3)")]
        out[t] = [list(r) for r in conn.execute(exact_rows_sql(t, columns, t not in without_rowid))]
    return out


def test_encrypted_dumps_decrypt_offline_with_either_key_to_the_exact_data(sealed, keys, tmp_path):
    r = sealed.admin("POST", "/trigger", {"databases": ["chinook", "demo"]})
    assert r.status == 202, r.body
    job = sealed.wait_for_job(r.json()["jobId"], timeout=240)
    assert job["status"] == "completed", job
    runs = {run["database"]: run for run in job["runs"]}
    assert runs["chinook"]["r2Key"].endswith("/chinook.sql.age")
    assert runs["demo"]["r2Key"].endswith("/demo.sql.gz.age")
    steps = sealed.d1_query("d1-backup-meta", f"SELECT count(*) AS n FROM run_attempts WHERE run_id = "
                                              f"'{runs['chinook']['id']}' AND outcome = 'continued'")[0]["n"]
    assert steps >= 3, f"chinook took {steps} continued steps: the encryption was not resumed across messages"

    for database, run in runs.items():
        stored = sealed.r2_get(run["r2Key"])
        assert stored.startswith(AGE_MAGIC), stored[:40]
        assert b"INSERT INTO" not in stored and b"CREATE TABLE" not in stored
        item = listed(sealed, run["r2Key"])
        assert hashlib.sha256(stored).hexdigest() == run["sha256"] == item["sha256"], "the recorded SHA-256 is the stored object's"
        # Any recipient's key opens it, with the real age CLI and with pyrage.
        readers = ["alice", "bob"] if database == "chinook" else ["alice"]
        plaintexts = {age_decrypt(keys[name], stored, tmp_path) for name in readers}
        plaintexts |= {pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(keys[n].secret) for n in readers])}
        assert len(plaintexts) == 1, "every reader gives back the same plaintext"
        (plaintext,) = plaintexts
        assert hashlib.sha256(plaintext).hexdigest() == item["plaintextSha256"]
        sql = gzip.decompress(plaintext) if database == "demo" else plaintext
        assert sql.rstrip().rsplit(b"\n", 1)[-1].startswith(b"-- Dump complete")
        source = contents(sealed, database)
        assert restored_contents(sql, tmp_path) == source, f"{database}: the decrypted dump restores other data"
        if database == "demo":
            with pytest.raises(subprocess.CalledProcessError):
                age_decrypt(keys["bob"], stored, tmp_path)
    assert sealed.r2_objects("staging/") == {}, "nothing parked between steps is left, sealed or not"
    assert sealed.r2_open_uploads() == []


def test_the_consumer_verifies_and_restores_encrypted_dumps_with_its_identity(sealed):
    run = back_up(sealed, "chinook")
    view = wait_for_verification(sealed, run)
    assert view["verifyState"] == "verified", view
    r = sealed.admin("POST", "/restore", {"backup": run["r2Key"], "target": "fan01", "dryRun": False})
    assert r.status == 202, r.body
    op = sealed.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded", op
    assert contents(sealed, "fan01") == contents(sealed, "chinook")


def test_an_altered_encrypted_dump_is_refused_before_the_target_changes(sealed):
    run = back_up(sealed, "chinook")
    sealed.r2_flip_byte(run["r2Key"], run["bytes"] // 2)
    op = assert_refused_with_fan02_untouched(sealed, {"backup": run["r2Key"], "allowUnverified": True})
    assert "altered" in op["error"] or "SHA-256" in op["error"], op


def test_weekly_archives_keep_encrypted_dailies_as_stored_and_restore_from_them(sealed, keys, tmp_path):
    monday = dt.date(2026, 11, 9)
    jobs = [sealed.run_night(monday + dt.timedelta(days=d)) for d in (0, 1)]
    year, week, _ = monday.isocalendar()
    label = f"{year}-W{week:02d}"
    r = sealed.admin("POST", "/archive", {"week": label})
    assert r.status == 202, r.body
    assert sealed.wait_for_job(r.json()["jobId"], timeout=180)["status"] == "completed"
    archive = tarfile.open(fileobj=io.BytesIO(sealed.r2_get(f"weekly/{label}.tar.gz")), mode="r:gz")
    members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.name != "manifest.json"}
    daily = {run["r2Key"]: run for job in jobs for run in job["runs"]}
    assert sorted(members) == sorted(k.removeprefix("daily/") for k in daily), members.keys()
    # Retention deletes archived dailies this old: each member is checked against the SHA-256
    # recorded when its daily was stored.
    for key, run in daily.items():
        member = members[key.removeprefix("daily/")]
        assert hashlib.sha256(member).hexdigest() == run["sha256"], f"{key} is not in the archive as stored"
        assert member.startswith(AGE_MAGIC) == key.endswith(".age"), key
    assert sum(k.endswith(".age") for k in daily) == 4, "chinook and demo are encrypted, both nights"
    # Restored out of the archive (copied out, then decrypted with AGE_IDENTITY).
    key = next(k for k in daily if k.endswith("/chinook.sql.age"))
    r = sealed.admin("POST", "/restore", {"backup": key, "week": label, "target": "fan02", "dryRun": False,
                                          "confirm": "fan02"})
    assert r.status == 202, r.body
    op = sealed.wait_for_operation(r.json()["operationId"])
    assert op["state"] == "succeeded" and op["archiveKey"] == f"weekly/{label}.tar.gz", op
    assert contents(sealed, "fan02") == contents(sealed, "chinook")


@pytest.fixture(scope="module")
def keyless(keys):
    """The same encrypted databases, and a consumer without AGE_IDENTITY."""
    s = Stack(ROOT / "target" / "e2e" / f"age-keyless-{uuid.uuid4().hex[:8]}", databases=["chinook"],
              database_entries={"chinook": entries(keys)["chinook"]}, consumer_vars=BUDGET, extra_databases=2,
              all_vars=FAST_RETRIES)
    try:
        yield s.start()
    finally:
        s.stop()


def test_without_an_identity_verification_is_skipped_and_restores_are_refused(keyless, keys, tmp_path):
    run = back_up(keyless, "chinook")
    view = wait_for_verification(keyless, run)
    assert view["verifyState"] == "skipped" and "AGE_IDENTITY" in view["verifyDetail"], view
    op = assert_refused_with_fan02_untouched(keyless, {"backup": run["r2Key"], "allowUnverified": True})
    assert "AGE_IDENTITY" in op["error"] and "age -d" in op["error"], op
    # The guide shows the offline path, and its commands work as written.
    guide = keyless.admin("GET", "/restore-guide/chinook").json()
    assert guide["encrypted"] is True and guide["key"] == run["r2Key"], guide
    check = guide["steps"][1]["commands"]
    assert any(c.startswith("age -d -i key.txt -o ") for c in check), check
    file = tmp_path / check[0].split("  ")[1].split("'")[0]
    file.write_bytes(keyless.r2_get(run["r2Key"]))
    (tmp_path / "key.txt").write_text(keys["alice"].path.read_text())
    for command in check:
        subprocess.run(command.split("   #")[0], shell=True, cwd=tmp_path, check=True, capture_output=True)


def test_a_malformed_recipient_is_a_configuration_error_naming_it(keys):
    bad = keys["alice"].recipient[:-1] + ("q" if keys["alice"].recipient[-1] != "q" else "p")
    s = Stack(ROOT / "target" / "e2e" / f"age-bad-{uuid.uuid4().hex[:8]}", databases=["chinook"], verify=False,
              database_entries={"chinook": f'{{ binding = "DB_CHINOOK", recipients = ["{bad}"] }}'})
    try:
        s.start(healthy=False)
        jobs = s.d1_query("d1-backup-meta", "SELECT count(*) AS n FROM jobs")[0]["n"]
        for method, path, body in [("GET", "/health", None), ("POST", "/trigger", {"databases": ["chinook"]})]:
            r = s.admin(method, path, body)
            assert r.status == 500 and r.json()["error"] == "bad_configuration", r.body
            assert bad in r.json()["message"] and "chinook" in r.json()["message"], r.body
        assert s.d1_query("d1-backup-meta", "SELECT count(*) AS n FROM jobs")[0]["n"] == jobs
    finally:
        s.stop()
