"""The local Cloudflare stack under test: started by the project's own script on a free port
with its own state directory, and always torn down, process group and all."""

import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures"
ADMIN_TOKEN = "e2e-admin-token"
READ_TOKEN = "e2e-read-token"
# Retries in tests: 1 s, then 2 s (the defaults are 30 s doubling up to 15 minutes).
FAST_RETRIES = {"RETRY_BASE_SECONDS": "1", "RETRY_MAX_SECONDS": "2"}
# The session stack's consumer budget per invocation (the smallest query budget allowed is 10).
SMALL_BUDGET = {"EXPORT_MAX_QUERIES": "14", "EXPORT_MAX_MB": "1", "EXPORT_ROWS_PER_QUERY": "500", **FAST_RETRIES}
# A budget big enough to export any test database in one invocation.
ROOMY_BUDGET = {"EXPORT_MAX_QUERIES": "100000", **FAST_RETRIES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class Stack:
    def __init__(self, state_dir: Path, port: int | None = None, consumer_vars: dict[str, str] | None = None,
                 extra_databases: int = 0, environment: str = "local",
                 databases: list[str] | None = None, archiver_vars: dict[str, str] | None = None,
                 all_vars: dict[str, str] | None = None, verify: bool = True,
                 scratch_database: str | None = None, database_entries: dict[str, str] | None = None,
                 send_email: dict | None = None):
        self.state_dir = state_dir
        # Vars overriding the consumer's (such as EXPORT_MAX_QUERIES), and extra empty source
        # databases (fan01, fan02, ...), through copies of the Worker configs written beside
        # the originals, so that their relative paths still hold.
        self.consumer_vars = consumer_vars or {}
        self.extra_databases = extra_databases
        # Back up only these of the configured databases (all when None), and vars overriding
        # the archiver's (ARCHIVE_MAX_MB, ...).
        self.databases = databases
        self.archiver_vars = archiver_vars or {}
        # Vars for all three Workers (WEBHOOK_URL, ALERT_*, ...).
        self.all_vars = all_vars or {}
        # The producer's ENVIRONMENT: "local" accepts fault injection, "production" refuses it.
        self.environment = environment
        # False: the consumer has no VERIFY_DB binding, so new backups are recorded as not
        # verified (with that reason) instead of each being restored into the scratch database.
        # For stacks whose tests do not look at verification: it only takes their CPU.
        self.verify = verify
        # Bind the consumer's VERIFY_DB to this configured database instead of the scratch one
        # (the misconfiguration the scratch guard must catch).
        self.scratch_database = scratch_database
        # `[vars.DATABASES]` entries replaced in both the producer's and the consumer's config,
        # such as {"chinook": '{ binding = "DB_CHINOOK", recipients = ["age1..."] }'}.
        self.database_entries = database_entries or {}
        # The send_email binding (SEND_EMAIL) of email alerts, added to all three Workers: its
        # options, such as {"allowed_destination_addresses": [...]} (miniflare refuses the
        # others); None: no binding.
        self.send_email = send_email
        self.generated_configs: list[Path] = []
        # The consumer's config copy, when one is written: it binds the extra databases.
        self.consumer_config: str | None = None
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = state_dir / "wrangler-dev.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, healthy: bool = True) -> "Stack":
        """Starts the stack and waits for /health to answer 200 (or, not `healthy`, to answer at
        all: a stack started with a broken configuration on purpose)."""
        # A new state directory starts as a copy of the migrated and seeded template; one
        # reused from an earlier stack (a second configuration over the same history) is kept.
        if not (self.state_dir / "v3").exists():
            shutil.copytree(template_state(), self.state_dir, dirs_exist_ok=True)
        log = open(self.log_path, "wb")
        # A session of its own: teardown signals the whole group (wrangler, workerd, esbuild).
        self.process = subprocess.Popen(
            [str(ROOT / "scripts/local-stack.sh"), "run", str(self.port), str(self.state_dir), ADMIN_TOKEN],
            env={**os.environ, **self.write_configs(), "STACK_ENVIRONMENT": self.environment,
                 "STACK_READ_TOKEN": READ_TOKEN},
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"wrangler dev exited early:\n{self.log()}")
            try:
                if self.request("GET", "/health").status == 200 or not healthy:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"stack did not answer within {timeout}s:\n{self.log()}")

    def write_configs(self) -> dict[str, str]:
        """Writes the config copies this stack needs; returns the environment naming them."""
        fan = [f"fan{i:02d}" for i in range(1, self.extra_databases + 1)]
        entries = "".join(f'{name} = "DB_{name.upper()}"\n' for name in fan)
        fan_bindings = "".join(
            f'\n[[d1_databases]]\nbinding = "DB_{name.upper()}"\ndatabase_name = "{name}"\n'
            f'database_id = "00000000-0000-4000-8000-000000000{200 + i:03d}"\n'
            for i, name in enumerate(fan, start=1))
        email = self.send_email_binding()
        env = {}
        if fan or self.databases is not None or self.all_vars or self.database_entries or email:
            producer = override_vars(self.only_databases((ROOT / "wrangler.toml").read_text()), self.all_vars)
            producer = self.replace_entries(producer)
            producer = producer.replace("[vars.DATABASES]\n", "[vars.DATABASES]\n" + entries, 1)
            env["PRODUCER_CONFIG"] = self.write_copy("wrangler.toml", producer + fan_bindings + email)
        if fan or self.consumer_vars or self.databases is not None or self.all_vars or not self.verify \
                or self.scratch_database or self.database_entries or email:
            consumer = self.replace_entries(self.only_databases((ROOT / "consumer/wrangler.toml").read_text()))
            if self.scratch_database:
                ids = d1_database_ids(ROOT / "consumer/wrangler.toml")
                consumer, moved = re.subn(r'(binding = "VERIFY_DB"\ndatabase_name = ")[^"]*("\ndatabase_id = ")[^"]*"',
                                          rf'\g<1>{self.scratch_database}\g<2>{ids[self.scratch_database]}"', consumer)
                assert moved == 1, "consumer/wrangler.toml binds VERIFY_DB in one block"
            if not self.verify:
                consumer, dropped = re.subn(r'\[\[d1_databases\]\]\nbinding = "VERIFY_DB"\n[^\[]*', "", consumer)
                assert dropped == 1, "consumer/wrangler.toml binds VERIFY_DB in one block"
            consumer = override_vars(consumer, {**self.all_vars, **self.consumer_vars})
            consumer = consumer.replace("[vars.DATABASES]\n", "[vars.DATABASES]\n" + entries, 1)
            consumer += fan_bindings + email
            env["CONSUMER_CONFIG"] = self.consumer_config = self.write_copy("consumer/wrangler.toml", consumer)
        if self.archiver_vars or self.all_vars or email:
            archiver = override_vars((ROOT / "archiver/wrangler.toml").read_text(), {**self.all_vars, **self.archiver_vars})
            env["ARCHIVER_CONFIG"] = self.write_copy("archiver/wrangler.toml", archiver + email)
        return env

    def send_email_binding(self) -> str:
        """The `[[send_email]]` block of `self.send_email`, or nothing."""
        if self.send_email is None:
            return ""
        options = "".join(f"{name} = {json.dumps(value)}\n" for name, value in self.send_email.items())
        return f'\n[[send_email]]\nname = "SEND_EMAIL"\n{options}'

    def sent_emails(self) -> list[bytes]:
        """The raw messages the local send_email binding was given, oldest first: wrangler dev
        logs `Email: <path>` for each, a file miniflare writes the message to (after the send
        returns, so a path may be logged a moment after the alert is recorded as sent)."""
        paths = re.findall(r"^Email: (\S+\.eml)$", self.log_path.read_text(errors="replace"), flags=re.M)
        return [Path(p).read_bytes() for p in paths]

    def replace_entries(self, config: str) -> str:
        """`config` with the `[vars.DATABASES]` entries of `self.database_entries` replaced, or
        added when the name is not configured yet."""
        for name, entry in self.database_entries.items():
            config, replaced = re.subn(rf"^{re.escape(name)} = .*$", lambda _: f"{name} = {entry}", config,
                                       count=1, flags=re.M)
            if not replaced:
                config = config.replace("[vars.DATABASES]\n", f"[vars.DATABASES]\n{name} = {entry}\n", 1)
        return config

    def only_databases(self, config: str) -> str:
        """Drops the `[vars.DATABASES]` entries not in `self.databases`."""
        if self.databases is None:
            return config
        head, _, rest = config.partition("[vars.DATABASES]\n")
        section, sep, tail = rest.partition("\n[")
        kept = [l for l in section.split("\n")
                if not l or l.startswith("#") or l.split(" = ")[0] in self.databases]
        return head + "[vars.DATABASES]\n" + "\n".join(kept) + sep + tail

    def write_copy(self, original: str, text: str) -> str:
        path = (ROOT / original).parent / f".e2e-wrangler-{self.port}.toml"
        path.write_text(text)
        self.generated_configs.append(path)
        return str(path.relative_to(ROOT))

    def stop(self) -> None:
        if self.process is None:
            return
        pgid = self.process.pid
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            # Reaping the leader as it exits: an unreaped zombie still counts as the group.
            while time.monotonic() < deadline and (self.process.poll() is None or group_alive(pgid)):
                time.sleep(0.1)
            if not group_alive(pgid):
                break
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None
        for path in self.generated_configs:
            path.unlink(missing_ok=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    # -- HTTP --------------------------------------------------------------------------------

    def request(self, method: str, path: str, body=None, token: str | None = None,
                headers: dict | None = None) -> Response:
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read())

    def admin(self, method: str, path: str, body=None) -> Response:
        return self.request(method, path, body, token=ADMIN_TOKEN)

    def wait_for_job(self, job_id: str, timeout: float = 90.0) -> dict:
        """Polls a job until every run is final; returns the job."""
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.admin("GET", f"/jobs/{job_id}").json()
            if job["status"] in ("completed", "partial", "failed"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not final after {timeout}s: {job}\n{self.log()}")

    def wait_for_operation(self, operation_id: str, timeout: float = 240.0) -> dict:
        """Polls a verification or restore until it is final; returns it."""
        deadline = time.monotonic() + timeout
        op = None
        while time.monotonic() < deadline:
            op = self.admin("GET", f"/operations/{operation_id}").json()
            if op["state"] in ("succeeded", "failed", "dead"):
                return op
            time.sleep(0.5)
        raise AssertionError(f"operation {operation_id} not final after {timeout}s: {op}\n{self.log()}")

    # What is still under way in the metadata database: runs not final, finished backups whose
    # verification is not decided yet (NULL between the run's success and the verification's
    # start), verifications, restores and archive jobs not final.
    BUSY_SQL = ("SELECT (SELECT count(*) FROM runs WHERE state IN ('queued', 'running', 'retrying') "
                "OR (state = 'succeeded' AND (verify_state IS NULL OR verify_state IN ('pending', 'verifying')))) "
                "+ (SELECT count(*) FROM operations WHERE state IN ('queued', 'running', 'retrying')) "
                "+ (SELECT count(*) FROM archive_jobs WHERE state IN ('queued', 'running', 'retrying')) AS n")

    def wait_until_idle(self, timeout: float = 180.0) -> None:
        """Waits until nothing is under way: every backup, verification, restore and archive
        started so far has ended. For tests that compare what is recorded before and after."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.d1_query("d1-backup-meta", self.BUSY_SQL)[0]["n"] == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"work still under way after {timeout}s:\n{self.log()}")

    def run_night(self, night, timeout: float = 120.0) -> dict:
        """Fires the nightly cron as if scheduled at 03:00 UTC of `night` (a date); waits for
        its job to complete and returns it."""
        import datetime as dt
        at = dt.datetime(night.year, night.month, night.day, 3, tzinfo=dt.timezone.utc)
        assert self.fire_cron("0 3 * * *", int(at.timestamp() * 1000)).status == 200
        requested = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        for _ in range(240):
            rows = self.d1_query("d1-backup-meta", f"SELECT id FROM jobs WHERE kind = 'daily' AND requested_at = '{requested}'")
            if rows:
                job = self.wait_for_job(rows[0]["id"], timeout=timeout)
                assert job["status"] == "completed", job
                return job
            time.sleep(0.5)
        raise AssertionError(f"no nightly job for {night}:\n{self.log()}")

    SWEEP_CRON = "*/10 * * * *"

    def sweep(self) -> None:
        """Fires the sweeper's cron now: every overdue task gets its message again."""
        assert self.fire_cron(self.SWEEP_CRON, int(time.time() * 1000)).status == 200

    def kill(self) -> None:
        """SIGKILLs the whole stack (wrangler, workerd) mid-work, as a crash would: nothing
        gets to finish, and the local queues lose the messages they held."""
        if self.process is None:
            return
        pgid = self.process.pid
        os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.process = None

    def fire_cron(self, cron: str, when_ms: int) -> Response:
        from urllib.parse import urlencode
        return self.request("GET", "/cdn-cgi/handler/scheduled?" + urlencode({"cron": cron, "time": when_ms}))

    # -- storage, read with the real clients --------------------------------------------------

    def wrangler(self, *args: str, config: str = "wrangler.toml") -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["node", "node_modules/wrangler/bin/wrangler.js", *args, "-c", config,
             "--persist-to", str(self.state_dir)],
            cwd=ROOT, capture_output=True, timeout=120,
            env={**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "true"},
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args,
                output=result.stdout[-2000:], stderr=result.stdout[-2000:] + result.stderr[-2000:])
        return result

    def r2_get(self, key: str, dest: Path | None = None) -> bytes:
        """An object's bytes, read from the local R2 bucket's own files (miniflare's index and
        blob store): a single-put object is one blob, a multipart one its parts in order.
        Writes them to `dest` too when given."""
        blobs = self.state_dir / "v3/r2/d1-backups/blobs"
        rows = self.r2_index(
            "SELECT o.blob_id, p.blob_id, o.size FROM _mf_objects o LEFT JOIN _mf_multipart_parts p "
            f"ON o.blob_id IS NULL AND p.object_key = o.key WHERE o.key = {sql_text(key)} ORDER BY p.part_number")
        assert rows, f"no object {key!r} in the local bucket"
        body = b"".join((blobs / (single or part)).read_bytes() for single, part, _ in rows)
        assert len(body) == rows[0][2], f"{key}: {len(body)} bytes read, the index says {rows[0][2]}"
        if dest is not None:
            dest.write_bytes(body)
        return body

    def r2_flip_byte(self, key: str, offset: int) -> None:
        """Changes one byte of a single-put object in place, in the local bucket's blob file:
        the bit rot nobody is told about (size and index unchanged)."""
        rows = self.r2_index(f"SELECT blob_id FROM _mf_objects WHERE key = {sql_text(key)} AND blob_id IS NOT NULL")
        assert rows, f"no single-put object {key!r} in the local bucket"
        blob = self.state_dir / "v3/r2/d1-backups/blobs" / rows[0][0]
        data = bytearray(blob.read_bytes())
        data[offset] ^= 0x20
        blob.write_bytes(bytes(data))

    def r2_index(self, sql: str) -> list[tuple]:
        """Queries the local R2 bucket's own index (miniflare keeps it in SQLite): which objects
        and multipart uploads exist, with their metadata, beyond what the wrangler CLI shows."""
        import sqlite3
        (index,) = [p for p in (self.state_dir / "v3/r2/miniflare-R2BucketObject").glob("*.sqlite")
                    if p.name != "metadata.sqlite"]
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
            return db.execute(sql).fetchall()

    def r2_objects(self, prefix: str = "") -> dict[str, dict]:
        """Every object under `prefix`: size and custom metadata."""
        rows = self.r2_index(f"SELECT key, size, custom_metadata FROM _mf_objects WHERE substr(key, 1, {len(prefix)}) = '{prefix}'")
        return {key: {"size": size, "custom": json.loads(custom)} for key, size, custom in rows}

    def r2_open_uploads(self) -> list[str]:
        """Keys of multipart uploads neither completed nor aborted."""
        return [key for (key,) in self.r2_index("SELECT key FROM _mf_multipart_uploads WHERE state = 0")]

    @property
    def d1_config(self) -> str:
        """The config binding every D1 database of this stack: the consumer's (its copy, when
        one is written, binds the extra databases too)."""
        return self.consumer_config or "consumer/wrangler.toml"

    def d1_query(self, database: str, sql: str, config: str | None = None) -> list[dict]:
        """Rows of one read-only query on a local D1 database (see `d1_queries`)."""
        return self.d1_queries(database, [sql], config=config)[0]

    def d1_queries(self, database: str, sqls: list[str], config: str | None = None) -> list[list[dict]]:
        """Read-only queries on a local D1 database, run on its SQLite file opened read-only:
        one result list (rows as dicts) each. Much faster than a `wrangler d1 execute` process
        per look, and a stray write fails loudly. A database the stack never opened reads as
        empty, as D1 would create it. Writes go through `d1_execute`."""
        path = self.d1_file(database, config)
        uri = f"file:{path}?mode=ro" if path.exists() else "file::memory:"
        db = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            db.row_factory = lambda cursor, row: {c[0]: v for c, v in zip(cursor.description, row)}
            return [db.execute(sql).fetchall() for sql in sqls]
        finally:
            db.close()

    def d1_execute(self, database: str, sql: str, config: str | None = None) -> None:
        """Changes a local D1 database with the real client, `wrangler d1 execute`."""
        self.wrangler("d1", "execute", database, "--local", "--command", sql, config=config or self.d1_config)

    def d1_file(self, database: str, config: str | None = None) -> Path:
        """The SQLite file of a local D1 database: miniflare keeps each one in a Durable
        Object whose id workerd derives from the database id."""
        ids = d1_database_ids(ROOT / (config or self.d1_config))
        assert database in ids, f"no D1 database {database!r} in {config}: {sorted(ids)}"
        object_id = durable_object_id("miniflare-D1DatabaseObject", ids[database])
        return self.state_dir / "v3/d1/miniflare-D1DatabaseObject" / f"{object_id}.sqlite"


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def d1_database_ids(config: Path) -> dict[str, str]:
    """database_name -> database_id of every D1 database a wrangler config binds."""
    with open(config, "rb") as f:
        parsed = tomllib.load(f)
    return {d["database_name"]: d["database_id"] for d in parsed.get("d1_databases", [])}


def durable_object_id(unique_key: str, name: str) -> str:
    """workerd's `idFromName` for a local namespace: the first half of HMAC-SHA-256(key, name),
    then the first half of that half's HMAC, where key = SHA-256(unique_key)."""
    key = hashlib.sha256(unique_key.encode()).digest()
    head = hmac.new(key, name.encode(), hashlib.sha256).digest()[:16]
    return (head + hmac.new(key, head, hashlib.sha256).digest()[:16]).hex()


# Inputs of the template state: a change to any of them builds a new one.
TEMPLATE_INPUTS = ["scripts/local-stack.sh", "wrangler.toml", "consumer/wrangler.toml", "package-lock.json",
                   "seed/demo.sql", "seed/bulk.sql", "tests/fixtures/hostile.sql"]


def template_state() -> Path:
    """A state directory with the metadata database migrated and the source databases seeded,
    made once by the project's own `scripts/local-stack.sh prepare` and copied for each stack
    (seeding takes several wrangler runs; a copy takes milliseconds). Named by a digest of
    what it is made from, so it is rebuilt whenever any of that changes; a lock makes parallel
    test processes build it once."""
    digest = hashlib.sha256()
    inputs = [ROOT / p for p in TEMPLATE_INPUTS] + sorted((ROOT / "migrations").glob("*.sql")) + \
        [FIXTURES / "chinook" / "Chinook_Sqlite.sql"]
    for path in inputs:
        digest.update(str(path.relative_to(ROOT.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    base = ROOT / "target" / "e2e"
    base.mkdir(parents=True, exist_ok=True)
    template = base / f"template-{digest.hexdigest()[:16]}"
    with open(base / "template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        complete = base / f"{template.name}.complete"
        if complete.exists():
            return template
        partial = base / f"{template.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        prepared = subprocess.run(
            [str(ROOT / "scripts/local-stack.sh"), "prepare", str(partial)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
        if prepared.returncode != 0:
            raise RuntimeError(f"preparing the template state failed (is Node 22 first on PATH? run through make):\n"
                               f"{prepared.stdout[-3000:]}{prepared.stderr[-3000:]}")
        shutil.rmtree(template, ignore_errors=True)
        partial.rename(template)
        complete.write_text("")
        return template


def override_vars(config: str, overrides: dict[str, str]) -> str:
    """A wrangler config with `overrides` set in its `[vars]` table."""
    if not overrides:
        return config
    assert "\n[vars]\n" in config
    # Later keys would be duplicates in TOML: drop the originals of the overridden ones.
    config = "\n".join(l for l in config.split("\n") if l.split(" = ")[0] not in overrides)
    lines = "".join(f'{name} = "{value}"\n' for name, value in overrides.items())
    return config.replace("\n[vars]\n", "\n[vars]\n" + lines, 1)


def wait_until(condition, what: str, timeout: float = 60.0, interval: float = 0.2) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


if __name__ == "__main__":
    print("run through pytest", file=sys.stderr)


def exact_rows_sql(table: str, columns: list[str], with_rowid: bool) -> str:
    """SQL listing a table's rows exactly, in a stable order, the same whatever SQLite version
    runs it: per column its storage class with the hex of its bytes (infinities named), and
    for a finite REAL the value itself (a double, exact in JSON and in Python). Formatting a
    REAL as text would differ between SQLite versions. The sign of -0.0 shows only through
    atan2(); JSON and Python compare it equal to 0.0."""
    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'
    parts = ["rowid"] if with_rowid else []
    for c in columns:
        c = q(c)
        parts.append(f"typeof({c}) || ':' || CASE typeof({c}) WHEN 'real' THEN "
                     f"CASE WHEN {c} = 9e999 THEN 'inf' WHEN {c} = -9e999 THEN '-inf' "
                     f"WHEN {c} = 0 AND atan2({c}, -1) < 0 THEN '-0' ELSE '' END "
                     f"ELSE hex({c}) END")
        parts.append(f"CASE WHEN typeof({c}) = 'real' AND abs({c}) < 9e999 THEN {c} END")
    order = ", ".join(str(i + 1) for i in range(len(parts)))
    return f"SELECT {', '.join(parts)} FROM {q(table)} ORDER BY {order}"


def scratch_d1_config(directory: Path, name: str) -> Path:
    """A wrangler config with one fresh local D1 database, to restore into."""
    import uuid
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.toml"
    config.write_text(
        f'name = "{name}"\ncompatibility_date = "2025-11-01"\n\n'
        f'[[d1_databases]]\nbinding = "SCRATCH"\ndatabase_name = "{name}"\n'
        f'database_id = "{uuid.uuid4()}"\n'
    )
    return config
