"""`make bench`: our export side by side with `wrangler d1 export --local` and `sqlite3 .dump` on
one generated database, then restores of the dumps into fresh databases.

The stack is the e2e harness's (tests/e2e/stack.py) with one extra source database, `fan01`,
which this script fills before the stack starts; its consumer keeps the export budget of
consumer/wrangler.toml (the production defaults). Standard library only. Everything it writes
goes to target/bench/: results.md, results.json, the dumps, the logs and the local state.

    BENCH_ROWS=500000           rows in the generated database (a tenth users, the rest events)
    BENCH_PORT=                 the stack's port; by default the first free one in 8950-8999
    BENCH_EXPORT_TIMEOUT=1800   seconds allowed to each export
    BENCH_RESTORE_TIMEOUT=3600  seconds allowed to each restore
    BENCH_EXPORTS_ONLY=         set to skip the restores (wrangler's own export takes 15 minutes
                                to restore): for comparing exports quickly
    BENCH_WIDE_ROWS=0           rows of a third table of wide rows (2-5 KB of TEXT and of BLOB)
    BENCH_NAME=results          the report's file names (target/bench/<name>.md and .json)
    BENCH_RESTORE_TOOLS=d1,sqlite3  which restores to run (`d1`: wrangler d1 execute --file)
    BENCH_MAX_PEER_RSS_MIB=16000    wrangler d1 export is stopped past this memory
    BENCH_ENCRYPTED=1           0 skips the encrypted exports
    BENCH_VERIFY_MAX_MB=        the consumer's VERIFY_MAX_MB, for dumps over its default 1024
    BENCH_ENCRYPTION_ROUNDS=2   more plain/encrypted export pairs, to compare them

Exits 1 when a measured tool fails, a restore lacks rows, or our dump is not what the run says.
"""

import atexit
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from stack import Stack, scratch_d1_config, template_state  # noqa: E402

OUT = ROOT / "target" / "bench"
CONF = OUT / "config"
# `wrangler d1 export --local` has no --persist-to: it reads <config dir>/.wrangler/state. The
# stack and every other command are given this same directory with --persist-to.
STATE = CONF / ".wrangler" / "state"
DUMPS = OUT / "dumps"
SCRATCH = OUT / "scratch"

# The first extra database of Stack(extra_databases=1): its name, binding and id as stack.py
# writes them into the consumer's config copy (checked once the stack runs).
DB_NAME = "fan01"
DB_BINDING = "DB_FAN01"
DB_ID = "00000000-0000-4000-8000-000000000201"
# The same database configured a second time, its dumps encrypted (age) to one recipient: the
# export with encryption on, beside the same export without it.
SEALED_NAME = "fan01sealed"
D1_FILES = STATE / "v3" / "d1" / "miniflare-D1DatabaseObject"
WRANGLER = ["node", str(ROOT / "node_modules/wrangler/bin/wrangler.js")]
ENV = {**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "true"}

ROWS = int(os.environ.get("BENCH_ROWS", "500000"))
# Rows of the wide table (a few KB of TEXT and of BLOB each), beside ROWS: 0 in the standard
# run; `make bench`'s large run sets it (and BENCH_NAME) for a database of about 1 GB.
WIDE_ROWS = int(os.environ.get("BENCH_WIDE_ROWS", "0"))
TOTAL_ROWS = ROWS + WIDE_ROWS
NAME = os.environ.get("BENCH_NAME", "results")
# The consumer verifies dumps up to VERIFY_MAX_MB (1024 by default): the large run raises it.
VERIFY_VARS = {"VERIFY_MAX_MB": os.environ["BENCH_VERIFY_MAX_MB"]} if os.environ.get("BENCH_VERIFY_MAX_MB") else {}
# Which restores to run: wrangler's (`d1`) holds the whole file in memory (1.5 GiB for 73 MB).
RESTORE_TOOLS = os.environ.get("BENCH_RESTORE_TOOLS", "d1,sqlite3").split(",")
# `wrangler d1 export` is stopped past this RSS (it holds the whole database in memory).
MAX_PEER_RSS_MIB = float(os.environ.get("BENCH_MAX_PEER_RSS_MIB", "16000"))
EXPORT_TIMEOUT = float(os.environ.get("BENCH_EXPORT_TIMEOUT", "1800"))
RESTORE_TIMEOUT = float(os.environ.get("BENCH_RESTORE_TIMEOUT", "3600"))

SCHEMA = """
CREATE TABLE users (
  id         INTEGER PRIMARY KEY,
  email      TEXT NOT NULL UNIQUE,
  name       TEXT NOT NULL,
  country    TEXT,
  created_at INTEGER NOT NULL,
  score      REAL,
  avatar     BLOB
);
CREATE TABLE events (
  id         INTEGER PRIMARY KEY,
  user_id    INTEGER NOT NULL REFERENCES users (id),
  ts         INTEGER NOT NULL,
  kind       TEXT NOT NULL,
  amount     REAL,
  payload    TEXT,
  attachment BLOB
);
CREATE INDEX events_by_user ON events (user_id, ts);
CREATE TABLE documents (
  id         INTEGER PRIMARY KEY,
  title      TEXT NOT NULL,
  body       TEXT,
  data       BLOB,
  updated_at REAL
);
"""
TABLES = ("users", "events", "documents")

# Filled by the sqlite3 CLI in one transaction per table: rows from a recursive CTE, columns
# from multiplicative hashes of the row number (the same data every run, but for the bytes of
# the BLOBs, which are random; their sizes are not). Mixed types and NULLs in every nullable
# column, non-ASCII text, JSON payloads, REALs that need 17 digits, foreign keys that hold.
FILL = """
.bail on
CREATE TEMP TABLE first_names (i INTEGER PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO first_names (v) VALUES ('Ana'), ('Bjørn'), ('Chloé'), ('Dmitri'), ('Émile'), ('Fatima'),
  ('Günther'), ('Hiro'), ('Inés'), ('José'), ('Kai'), ('Léa'), ('Zoë'), ('Ōtani'), ('Søren'), ('Wei');
CREATE TEMP TABLE last_names (i INTEGER PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO last_names (v) VALUES ('Smith'), ('Müller'), ('Dubois'), ('Tanaka'), ('Silva'), ('Kumar'),
  ('O''Brien'), ('García'), ('Rossi'), ('Nowak'), ('李'), ('Åberg');
CREATE TEMP TABLE countries (i INTEGER PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO countries (v) VALUES ('US'), ('DE'), ('FR'), ('JP'), ('BR'), ('IN'), ('GB'), ('CH'), ('ES');
CREATE TEMP TABLE kinds (i INTEGER PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO kinds (v) VALUES ('page_view'), ('click'), ('search'), ('add_to_cart'), ('checkout'),
  ('login'), ('logout'), ('signup'), ('error');
CREATE TEMP TABLE words (i INTEGER PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO words (v) VALUES ('alpha'), ('beta'), ('order'), ('cart'), ('checkout'), ('search'),
  ('page'), ('view'), ('product'), ('review'), ('rating'), ('share'), ('export'), ('sync'),
  ('upload'), ('café'), ('naïve'), ('Zürich'), ('東京'), ('München'), ('São Paulo'), ('emoji 🙂'),
  ('données'), ('"quoted"'), ('it''s'), ('tab' || char(9) || 'here'), ('line' || char(10) || 'break'),
  ('back\\slash');
BEGIN;
WITH RECURSIVE n (i) AS (SELECT 1 WHERE {users} > 0 UNION ALL SELECT i + 1 FROM n WHERE i < {users}),
h (i, a, b) AS (SELECT i, (i * 2654435761) % 4294967296, (i * 1103515245 + 12345) % 2147483648 FROM n)
INSERT INTO users (id, email, name, country, created_at, score, avatar)
SELECT h.i, lower(f.v || '.' || l.v) || '.' || h.i || '@example.com', f.v || ' ' || l.v, c.v,
       1600000000000 + a * 23,
       CASE WHEN b % 10 = 0 THEN NULL ELSE a / 42949672.96 END,
       CASE WHEN b % 10 < 3 THEN randomblob(32 + b % 64) END
FROM h CROSS JOIN first_names f CROSS JOIN last_names l LEFT JOIN countries c ON c.i = 1 + (a >> 8) % 10
WHERE f.i = 1 + a % 16 AND l.i = 1 + (b >> 4) % 12;
COMMIT;
BEGIN;
WITH RECURSIVE n (i) AS (SELECT 1 WHERE {events} > 0 UNION ALL SELECT i + 1 FROM n WHERE i < {events}),
h (i, a, b, c) AS (SELECT i, (i * 2654435761) % 4294967296, (i * 1103515245 + 12345) % 2147483648,
                          (i * 69069 + 1) % 4294967296 FROM n)
INSERT INTO events (id, user_id, ts, kind, amount, payload, attachment)
SELECT h.i, 1 + a % {users}, 1700000000000 + h.i * 37 + b % 37, k.v,
       CASE WHEN b % 5 = 0 THEN NULL ELSE (c % 500000) / 100.0 END,
       CASE WHEN b % 20 = 7 THEN NULL
            ELSE json_object('path', '/p/' || (c % 1000000), 'kind', k.v, 'q', w1.v || ' ' || w2.v || ' ' || w3.v,
                             'n', b % 1000, 'ok', json(CASE WHEN a % 2 THEN 'true' ELSE 'false' END)) END,
       CASE WHEN (a >> 4) % 100 < 15 THEN randomblob(8 + b % 40) END
FROM h CROSS JOIN kinds k CROSS JOIN words w1 CROSS JOIN words w2 CROSS JOIN words w3
WHERE k.i = 1 + (a >> 12) % 9 AND w1.i = 1 + b % 28 AND w2.i = 1 + (c >> 8) % 28 AND w3.i = 1 + (a >> 16) % 28;
COMMIT;
BEGIN;
WITH RECURSIVE n (i) AS (SELECT 1 WHERE {wide} > 0 UNION ALL SELECT i + 1 FROM n WHERE i < {wide}),
h (i, a, b) AS (SELECT i, (i * 2654435761) % 4294967296, (i * 1103515245 + 12345) % 2147483648 FROM n)
INSERT INTO documents (id, title, body, data, updated_at)
SELECT h.i, w1.v || ' ' || w2.v || ' #' || h.i,
       replace(hex(zeroblob(200 + b % 200)), '00', w1.v || ' ' || w2.v || ' '),
       randomblob(2000 + a % 3000), a / 4294967296.0
FROM h CROSS JOIN words w1 CROSS JOIN words w2
WHERE w1.i = 1 + b % 28 AND w2.i = 1 + (a >> 8) % 28;
COMMIT;
PRAGMA foreign_key_check;
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_port() -> int:
    if os.environ.get("BENCH_PORT"):
        return int(os.environ["BENCH_PORT"])
    for port in range(8950, 9000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 8950-8999")


def write_db_config() -> Path:
    """A wrangler config naming only the bench database: for `wrangler d1` commands on it."""
    CONF.mkdir(parents=True, exist_ok=True)
    path = CONF / "bench-db.toml"
    path.write_text(f'name = "bench-db"\ncompatibility_date = "2025-11-01"\n\n[[d1_databases]]\n'
                    f'binding = "{DB_BINDING}"\ndatabase_name = "{DB_NAME}"\ndatabase_id = "{DB_ID}"\n')
    return path


def budget() -> dict:
    """The export budget the stack's consumer runs with: consumer/wrangler.toml's [vars]."""
    vars_ = tomllib.loads((ROOT / "consumer" / "wrangler.toml").read_text())["vars"]
    return {k: v for k, v in vars_.items() if k.startswith("EXPORT_")}


# -- processes and memory ----------------------------------------------------------------------

def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, comm) of every live process in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid:
            members.append((int(entry), stat[stat.find("(") + 1:stat.rfind(")")]))
    return members


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids) -> float:
    """utime + stime of live processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class RssSampler:
    """Samples, every `interval` s, the summed VmRSS of a process group's members (optionally
    only those whose comm is `comm`); keeps the first sample, the last and the peak."""

    def __init__(self, pgid: int, comm: str | None = None, interval: float = 0.1, limit_mib: float | None = None):
        self.pgid, self.comm, self.interval = pgid, comm, interval
        # Past this summed RSS the group is killed (a peer that would take the machine down).
        self.limit_kib = limit_mib * 1024 if limit_mib else None
        self.exceeded = False
        self.first_kib = self.last_kib = self.peak_kib = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self.processes: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        members = [(p, c) for p, c in group_members(self.pgid) if self.comm is None or c == self.comm]
        self.processes.update(members)
        sizes = {p: rss_kib(p) for p, _ in members}
        for p, kib in sizes.items():
            self.peak_by_pid[p] = max(self.peak_by_pid.get(p, 0), kib)
        total = sum(sizes.values())
        if self.samples == 0:
            self.first_kib = total
        self.samples += 1
        self.last_kib = total
        self.peak_kib = max(self.peak_kib, total)
        return total

    def _run(self):
        while not self._stop.is_set():
            if self.sample() > (self.limit_kib or float("inf")):
                self.exceeded = True
                kill_group(self.pgid)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


# Process groups of the commands being measured, killed if the bench itself is stopped.
LIVE_GROUPS: set[int] = set()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_live_groups() -> None:
    for pgid in list(LIVE_GROUPS):
        kill_group(pgid)


def timed(cmd: list[str], stdout: Path, timeout: float, stdin: Path | None = None,
          max_rss_mib: float | None = None) -> dict:
    """Runs a command in its own process group, stdout to a file: wall time, exit code, CPU time,
    peak RSS (sampled, summed over the group)."""
    err_path = stdout.with_name(stdout.name + ".stderr")
    load = loadavg()
    with open(stdout, "wb") as out, open(err_path, "wb") as err, open(stdin or os.devnull, "rb") as inp:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=err, stdin=inp,
                                start_new_session=True)
        LIVE_GROUPS.add(proc.pid)
        sampler = RssSampler(proc.pid, limit_mib=max_rss_mib)
        timer = threading.Timer(timeout, kill_group, (proc.pid,))
        timer.start()
        with sampler:
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        timer.cancel()
    kill_group(proc.pid)  # anything the command left behind in its group
    LIVE_GROUPS.discard(proc.pid)
    return {
        "cmd": " ".join(str(c) for c in cmd),
        "seconds": seconds,
        "exit": os.waitstatus_to_exitcode(status),
        "timed_out": seconds >= timeout,
        "killed_for_memory": sampler.exceeded,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "loadavg_before": load,
        "stderr_tail": (stdout.read_text(errors="replace")[-1000:] if stdout.suffix == ".log" else "")
                       + err_path.read_text(errors="replace")[-2000:],
    }


def wrangler(*args: str, config: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [*WRANGLER, *args, "-c", str(config), "--persist-to", str(STATE)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


COUNTS_SQL = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{t}") AS "{t}"' for t in TABLES)


def d1_counts(database: str, config: Path) -> dict:
    """Row counts through `wrangler d1 execute`, as an operator would check a restore."""
    try:
        out = wrangler("d1", "execute", database, "--local", "--json", "--command", COUNTS_SQL, config=config)
        return json.loads(out.stdout)[0]["results"][0]
    except Exception as e:  # noqa: BLE001 - a failed restore has no tables
        return {"error": str(e)[-500:]}


def d1_files() -> set[Path]:
    return {p for p in D1_FILES.glob("*.sqlite") if p.name != "metadata.sqlite"}


def fingerprint(path: Path | None) -> dict:
    """Row counts, the schema objects, and per table a SHA3 of every value (with its storage
    class and exact bytes; sqlite3's sha3_query) in id order: equal fingerprints, equal data."""
    if path is None or not path.exists():
        return {"error": f"no database file {path}"}
    sql = (COUNTS_SQL + ", " + ", ".join(f"hex(sha3_query('SELECT * FROM \"{t}\" ORDER BY id'))" for t in TABLES)
           + ";\nSELECT type || ' ' || name FROM sqlite_schema WHERE tbl_name IN "
           + "(" + ", ".join(f"'{t}'" for t in TABLES) + ") ORDER BY 1;")
    r = subprocess.run(["sqlite3", "-readonly", "-bail", str(path)], input=sql, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-500:]}
    first, *objects = r.stdout.strip().split("\n")
    values = first.split("|")
    n = len(TABLES)
    return {"counts": dict(zip(TABLES, map(int, values[:n]))), "sha3": dict(zip(TABLES, values[n:])),
            "objects": objects}


# -- the bench database ------------------------------------------------------------------------

def create_and_fill(config: Path, rows: int) -> tuple[Path, float]:
    """Creates the bench database's tables with wrangler (which creates the local D1 file), then
    fills that file with the sqlite3 CLI while nothing else has it open."""
    before = d1_files()
    wrangler("d1", "execute", DB_NAME, "--local", "--command", SCHEMA, config=config)
    new = d1_files() - before
    assert len(new) == 1, f"expected one new local D1 file, found {new}"
    (source,) = new
    users = max(1, rows // 10)
    start = time.monotonic()
    r = subprocess.run(["sqlite3", str(source)], input=FILL.format(users=users, events=rows - users, wide=WIDE_ROWS),
                       capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - start
    if r.returncode != 0 or r.stdout.strip() or r.stderr.strip():
        raise RuntimeError(f"filling {source} failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return source, seconds


# -- our export --------------------------------------------------------------------------------

def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def our_export(stack: Stack, database: str = DB_NAME) -> dict:
    """POST /trigger for the bench database, then GET /jobs/:id every 100 ms until the job is
    final, sampling the RSS of the stack's workerd processes all along."""
    pgid = stack.process.pid
    # Start: the idle stack, over two seconds, just before the trigger.
    idle = RssSampler(pgid, comm="workerd")
    with idle:
        time.sleep(2)
    log(f"workerd processes in the wrangler dev group: {sorted(idle.processes)}, "
        f"{idle.peak_kib / 1024:.0f} MiB idle")
    sampler = RssSampler(pgid, comm="workerd")
    polls = []
    poll_times = []
    load = loadavg()
    group = [p for p, _ in group_members(pgid)]  # wrangler (node) and workerd: the whole stack
    cpu0 = cpu_seconds(group)
    with sampler:
        start = time.monotonic()
        sent_at = datetime.now(timezone.utc)
        r = stack.admin("POST", "/trigger", {"databases": [database], "reason": "bench"})
        assert r.status == 202, (r.status, r.body)
        answered = time.monotonic() - start
        job_id = r.json()["jobId"]
        job = None
        while time.monotonic() - start < EXPORT_TIMEOUT:
            try:
                polled = time.monotonic()
                job = stack.admin("GET", f"/jobs/{job_id}").json()
                poll_times.append((round(polled - start, 2), round(time.monotonic() - polled, 2), job["status"],
                                   [h.get("finishedAt") for h in ((job.get("runs") or [{}])[0].get("history") or [])]))
            except OSError as e:  # a busy stack may answer slowly; keep polling
                polls.append(str(e))
                time.sleep(0.2)
                continue
            if job["status"] in ("completed", "partial", "failed"):
                break
            time.sleep(0.1)
        seconds = time.monotonic() - start
    cpu = cpu_seconds(group) - cpu0
    # A few seconds later: does the memory go back down?
    time.sleep(5)
    after = RssSampler(pgid, comm="workerd")
    after.sample()
    run = ((job or {}).get("runs") or [{}])[0]
    result = {
        "job_id": job_id,
        "status": (job or {}).get("status"),
        "wall_seconds": seconds,
        "timed_out": seconds >= EXPORT_TIMEOUT,
        "run": run,
        "workerd_pids": [list(p) for p in sorted(sampler.processes | idle.processes)],
        "start_rss_mib": idle.peak_kib / 1024,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "end_rss_mib": sampler.last_kib / 1024,
        "after_5s_rss_mib": after.last_kib / 1024,
        "rss_samples": sampler.samples,
        "peak_rss_by_pid_mib": {p: k / 1024 for p, k in sampler.peak_by_pid.items()},
        "cpu_seconds": cpu,
        "loadavg_before": load,
        "poll_errors": polls[:5],
        "trigger_sent_at": sent_at.isoformat(),
        "trigger_answer_seconds": answered,
        "poll_times": poll_times,
    }
    started, finished = parse_ts(run.get("startedAt")), parse_ts(run.get("finishedAt"))
    if started and finished:
        result["run_seconds"] = (finished - started).total_seconds()
    queued = parse_ts(run.get("queuedAt"))
    if queued and started:
        result["queue_delay_seconds"] = (started - queued).total_seconds()
    if finished:
        # POST /trigger → the job's last run finished, by the Worker's own clock: the API's answer
        # to the poll comes late while the verification that starts then shares the local workerd.
        result["completed_seconds"] = (finished - sent_at).total_seconds()
    result["steps"] = step_usage(stack.log_path.read_text(errors="replace"), f"job {job_id}")
    return result


USAGE = re.compile(r"step (\d+): usage: D1 (\d+) queries returning (\d+) rows, (\d+) batches of (\d+) statements; "
                   r"R2 class A (\d+), class B (\d+)")


def step_usage(log_text: str, ident: str) -> list[dict]:
    """The usage lines a task's steps logged (`<label> step N: usage: ...`), one per delivery, and
    the wasm memory each step reported."""
    steps = []
    for line in log_text.splitlines():
        if ident not in line:
            continue
        m = USAGE.search(line)
        if m:
            keys = ("step", "d1_queries", "d1_rows_returned", "d1_batches", "d1_statements", "r2_class_a", "r2_class_b")
            steps.append(dict(zip(keys, map(int, m.groups()))))
        wasm = re.search(r"wasm memory (\d+) MiB", line)
        if wasm and steps:
            steps[-1]["wasm_memory_mib"] = int(wasm.group(1))
    return steps


def sealed_export(stack: Stack, plain: dict, plain_dump: Path, key_file: Path, problems: list[str]) -> dict:
    """The same export with encryption on (age, one recipient): its wall and CPU time beside the
    plain one's, the dump decrypted by the age CLI and compared with the plain dump (all but the
    header lines naming the database, the time and the bookmark), and its verification through AGE_IDENTITY."""
    log(f"our export, encrypted: POST /trigger for {SEALED_NAME}")
    res = our_export(stack, SEALED_NAME)
    run = res["run"]
    entry = {"method": "ours, encrypted (age, `.sql.age`): `POST /trigger` → job completed",
             "seconds": res.get("completed_seconds") or res["wall_seconds"],
             "cpu_seconds": res["cpu_seconds"],
             "memory": f"workerd {res['start_rss_mib']:.0f} → {res['peak_rss_mib']:.0f} MiB (start → peak)"}
    if res["status"] != "completed":
        entry["notes"] = f"**{res['status']}**: {str(run.get('error'))[:200]}"
        problems.append(f"our encrypted export did not complete: {run.get('error')!r}")
        return {"entry": entry, **res}
    sealed_file = DUMPS / "ours.sql.age"
    body = stack.r2_get(run["r2Key"], sealed_file)
    decrypted = subprocess.run(["age", "-d", "-i", str(key_file), str(sealed_file)], capture_output=True)
    header = re.compile(rb"^-- (database|created|bookmark): .*\n", re.M)
    same = decrypted.returncode == 0 and header.sub(b"", decrypted.stdout) == header.sub(b"", plain_dump.read_bytes())
    if hashlib.sha256(body).hexdigest() != run.get("sha256") or not same:
        problems.append(f"the encrypted dump is not the plain dump encrypted (age exit {decrypted.returncode})")
    slower = entry["seconds"] / plain["seconds"] - 1
    entry.update(bytes=len(body), rows_per_s=TOTAL_ROWS / entry["seconds"], mb_per_s=len(body) / 1e6 / entry["seconds"],
                 notes=f"{slower:+.0%} wall time against the plain export in the same run; `age -d` gives back "
                       f"{'the plain dump byte for byte (but its header)' if same else '**a different dump**'}")
    log(f"encrypted export: {entry['seconds']:.1f} s ({slower:+.0%} against plain)")
    res["verification"] = our_verification(stack, res["job_id"])
    if res["verification"].get("state") != "verified":
        problems.append(f"our encrypted dump did not verify: {res['verification']}")
    return {"entry": entry, "slower": slower, "identical_plaintext": same, **res}


def export_profile(source: Path) -> dict:
    """shared/examples/export_profile.rs over the bench database: SQLite's share of an export,
    the exporter's own, and what gzip, SHA-256 and age cost per stored byte."""
    log("export profile (native, shared/examples/export_profile.rs)")
    build = subprocess.run(["cargo", "build", "--release", "-q", "-p", "shared", "--example", "export_profile"],
                           cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0:
        return {"error": build.stderr[-1500:]}
    run = subprocess.run([str(ROOT / "target/release/examples/export_profile"), str(source)],
                         capture_output=True, text=True, timeout=EXPORT_TIMEOUT)
    if run.returncode != 0:
        return {"error": run.stderr[-1500:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def encryption_rounds(stack: Stack, first_plain: dict, first_sealed: dict) -> dict:
    """More exports of the same database, plain then encrypted, BENCH_ENCRYPTION_ROUNDS times
    (default 2), each after the previous one's verification: the local stack slows as its state
    grows, so the two are compared round by round and by their fastest runs, not one after the
    other once. Times are the runs' own (startedAt → finishedAt), without the queue's delays."""
    pairs = [(first_plain.get("run_seconds"), first_sealed.get("run_seconds"))]
    for _ in range(int(os.environ.get("BENCH_ENCRYPTION_ROUNDS", "2"))):
        pair = []
        for database in (DB_NAME, SEALED_NAME):
            res = our_export(stack, database)
            our_verification(stack, res["job_id"])
            pair.append(res.get("run_seconds"))
        pairs.append(tuple(pair))
    pairs = [p for p in pairs if None not in p]
    best_plain, best_sealed = min(p[0] for p in pairs), min(p[1] for p in pairs)
    overhead = best_sealed / best_plain - 1
    ratios = sorted(e / p - 1 for p, e in pairs)
    median = ratios[len(ratios) // 2]
    log(f"encryption rounds (plain s, encrypted s): {pairs}; fastest {best_plain:.2f} s against {best_sealed:.2f} s: "
        f"{overhead:+.0%}; median of the rounds {median:+.0%}")
    return {"pairs": pairs, "best_plain": best_plain, "best_sealed": best_sealed, "overhead": overhead,
            "median_overhead": median}


def our_verification(stack: Stack, job_id: str) -> dict:
    """Waits for the consumer's verification of the job's dump (restored into the scratch
    database, exported again, compared); its duration as recorded and its wasm memory."""
    start = time.monotonic()
    run = {}
    while time.monotonic() - start < EXPORT_TIMEOUT * 4:
        try:
            run = stack.admin("GET", f"/jobs/{job_id}").json()["runs"][0]
        except OSError:
            time.sleep(0.5)
            continue
        if run.get("verifyState") in ("verified", "verify_failed", "skipped"):
            break
        time.sleep(0.5)
    operation = run.get("verifyOperation")
    wasm = [int(m) for m in re.findall(rf"operation {operation}\b.*wasm memory (\d+) MiB",
                                       stack.log_path.read_text(errors="replace"))] if operation else []
    steps = None
    if operation:
        op = stack.admin("GET", f"/operations/{operation}").json()
        steps = op.get("step")
    return {
        "state": run.get("verifyState"),
        "detail": run.get("verifyDetail"),
        "seconds": (run.get("verifyMillis") or 0) / 1000 if run.get("verifyMillis") is not None else None,
        "waited_seconds": time.monotonic() - start,
        "steps": steps,
        "wasm_memory_mib": max(wasm) if wasm else None,
        "steps_usage": step_usage(stack.log_path.read_text(errors="replace"), f"operation {operation}") if operation else [],
    }


def dev_log_errors(path: Path) -> str:
    """The lines of the wrangler dev log that look like errors (last 40)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    hits = [line for line in lines if re.search(r"error|panic|exceeded|abort|fail|✘|retry", line, re.I)]
    return "\n".join(hits[-40:])


def machine_facts() -> dict:
    def cmd(*c):
        try:
            return subprocess.run(c, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60).stdout.strip()
        except Exception:  # noqa: BLE001
            return "?"
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 1024 / 1024, 1),
        "kernel": platform.release(),
        "node": cmd("node", "--version"),
        "wrangler": (cmd(*WRANGLER, "--version").splitlines() or ["?"])[-1].strip(" ⛅️"),
        "sqlite3": cmd("sqlite3", "--version").split(" ")[0],
        "commit": cmd("git", "rev-parse", "--short", "HEAD") + (" (dirty)" if cmd("git", "status", "--porcelain") else ""),
    }


# -- report ------------------------------------------------------------------------------------

def fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def report(res: dict) -> str:
    rows, f, o = res["rows"], res["facts"], res["ours"]
    run = o.get("run") or {}
    lines = [
        f"# d1-backup bench: {rows:,} rows",
        "",
        f"{f['date']} · {f['nproc']} cores ({f['cpu']}) · {f['memory_gib']} GiB · Linux {f['kernel']} · "
        f"node {f['node']} · wrangler {f['wrangler']} · sqlite3 {f['sqlite3']} · commit {f['commit']}",
        "",
        f"Database `{DB_NAME}`: {', '.join(f'{t} {n:,} rows' for t, n in res['source']['counts'].items())} "
        f"(INTEGER, TEXT, REAL, BLOB and NULL columns, a UNIQUE and a two-column index), generated by sqlite3 in "
        f"{res['fill_seconds']:.1f} s; local D1 file {res['source_file_bytes'] / 1e6:.1f} MB. "
        f"Our consumer's budget: consumer/wrangler.toml's defaults, "
        + ", ".join(f"{k} {v}" for k, v in res["budget"].items()) + ".",
        "",
        "## Export",
        "",
        "| method | wall time | CPU time | rows/s | dump size | MB/s | memory (RSS) | notes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for e in res["exports"]:
        lines.append(f"| {e['method']} | {fmt(e.get('seconds'), '.1f', ' s')} | {fmt(e.get('cpu_seconds'), '.1f', ' s')} | "
                     f"{fmt(e.get('rows_per_s'), ',.0f')} | "
                     f"{fmt(e.get('bytes') and e['bytes'] / 1e6, '.1f', ' MB')} | {fmt(e.get('mb_per_s'), '.2f')} | "
                     f"{e.get('memory', 'n/a')} | {e.get('notes', '')} |")
    lines += [
        "",
        "## Restore into a fresh, empty database",
        "",
        "| dump | restored with | wall time | CPU time | peak RSS | row counts | data identical to the source |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in res["restores"]:
        t = r.get("timing") or {}
        exit_note = f" (exit {t['exit']})" if t.get("exit") else ""
        lines.append(f"| {r['dump']} | {r['tool']} | {fmt(t.get('seconds'), '.1f', ' s')}{exit_note} | "
                     f"{fmt(t.get('cpu_seconds'), '.1f', ' s')} | {fmt(t.get('peak_rss_mib'), ',.0f', ' MiB')} | "
                     f"{r['counts_ok']} | {r['identical']} |")
    aims = o.get("against_wrangler")
    if aims:
        lines += ["", f"Against `wrangler d1 export --local` in this run: the run alone **{aims['run']:.2f}×** "
                      f"(aim ≤ 0.4×), `POST /trigger` → job completed **{aims['trigger_to_completed']:.2f}×** (aim ≤ 0.6×)."]
    lines += steps_and_costs(o, res)
    history = run.get("history") or []
    lines += [
        "",
        "## Our export in detail",
        "",
        f"- job `{o['job_id']}`: status **{o['status']}**, run state `{run.get('state')}`, "
        f"{run.get('step')} step(s) (queue messages), {len(history)} delivery(ies), "
        f"outcomes {[h.get('outcome') for h in history]}",
        f"- trigger to job final (polled every 100 ms): {o['wall_seconds']:.1f} s; the run's own "
        f"startedAt → finishedAt: {fmt(o.get('run_seconds'), '.1f', ' s')}; queued → started: "
        f"{fmt(o.get('queue_delay_seconds'), '.1f', ' s')}",
        "- steps: " + "; ".join(f"step {h.get('step')} attempt {h.get('attempt')} {h.get('outcome')} "
                                f"{fmt(step_seconds(h), '.1f', ' s')}" for h in history),
        f"- run reports {run.get('rows')} rows, {run.get('tables')} tables, {run.get('bytes')} bytes",
        f"- workerd RSS (summed over {len(o['workerd_pids'])} workerd process(es) of the wrangler dev group, "
        f"sampled every 100 ms, {o['rss_samples']} samples): idle before {o['start_rss_mib']:.0f} MiB, peak "
        f"{o['peak_rss_mib']:.0f} MiB (+{o['peak_rss_mib'] - o['start_rss_mib']:.0f}), at the end "
        f"{o['end_rss_mib']:.0f} MiB, 5 s later {o['after_5s_rss_mib']:.0f} MiB",
    ]
    if o.get("dump_check"):
        lines.append(f"- dump read back from local R2: {o['dump_check']}")
    v = o.get("verification")
    if v:
        lines.append(f"- verification (restored into the scratch database, exported again, compared): "
                     f"**{v.get('state')}** in {fmt(v.get('seconds'), '.1f', ' s')} over {v.get('steps')} step(s), "
                     f"the consumer's wasm memory {v.get('wasm_memory_mib')} MiB; {v.get('detail')}")
    sealed = o.get("encrypted")
    if sealed and sealed.get("verification"):
        sv = sealed["verification"]
        lines.append(f"- encrypted export (`{SEALED_NAME}`, the same database, dumps encrypted to one age recipient): "
                     f"{sealed['entry']['seconds']:.1f} s, {sealed.get('slower', 0):+.0%} against the plain export; "
                     f"verified through AGE_IDENTITY: **{sv.get('state')}** in {fmt(sv.get('seconds'), '.1f', ' s')}")
        if sealed.get("rounds"):
            r = sealed["rounds"]
            lines.append("- the run alone (startedAt → finishedAt), plain then encrypted, round by round: "
                         + "; ".join(f"{p:.2f} s / {e:.2f} s" for p, e in r["pairs"])
                         + f"; fastest {r['best_plain']:.2f} s against {r['best_sealed']:.2f} s: **{r['overhead']:+.0%}**; "
                         f"median of the rounds {r['median_overhead']:+.0%}")
    if run.get("error") or o["status"] != "completed":
        lines += ["", "Run error:", "", "```", str(run.get("error")), "```", "",
                  "wrangler dev log (error lines):", "", "```", res.get("dev_log_errors", ""), "```"]
    p = res.get("profile") or {}
    if p.get("export_seconds"):
        mb = p["dump_bytes"] / 1e6
        lines += [
            "",
            "## Where the export's time goes (native, the same database)",
            "",
            f"The exporter run natively over the bench file (`shared/examples/export_profile.rs`): "
            f"{p['export_seconds']:.2f} s for {p['rows']:,} rows and {mb:.1f} MB of SQL in {p['queries']} queries.",
            "",
            "| part | seconds | share of the export |",
            "|---|---:|---:|",
            f"| SQLite producing the pages of literals (what D1 runs) | {p['sqlite_seconds']:.2f} | "
            f"{p['sqlite_seconds'] / p['export_seconds']:.0%} |",
            f"| the exporter's Rust (statements, row digests) | {p['rust_seconds']:.2f} | "
            f"{p['rust_seconds'] / p['export_seconds']:.0%} |",
            f"| then per stored byte: gzip -6 ({p['gzip_bytes'] / 1e6:.1f} MB out) | {p['gzip_seconds']:.2f} | |",
            f"| SHA-256 of the dump | {p['sha256_seconds']:.2f} | |",
            f"| age encryption of the dump | {p['age_seconds']:.2f} | |",
        ]
    lines += [
        "",
        "## Notes",
        "",
        "- MB = 10^6 bytes, MiB = 2^20. rows/s and MB/s are over wall time. CPU time is user + system: "
        "for our export, of the whole wrangler dev process group (node and workerd); otherwise of the command "
        "and its children. Peak RSS is sampled every 100 ms and summed over the processes counted.",
        "- Our export's wall time runs from `POST /trigger` to the job's final status, through the local "
        "queue (its batching delay included); wrangler's and sqlite3's read the same local D1 file with "
        "nothing else running.",
        f"- 1-minute load average before each measurement: "
        + ", ".join(f"{k} {v:.2f}" for k, v in res["loads"].items())
        + f" (on {f['nproc']} cores). Other work on the machine shows here: the numbers are noisy.",
    ]
    lines += [f"- {n}" for n in res.get("notes", [])]
    if res.get("problems"):
        lines += ["", "## Problems", ""] + [f"- {p}" for p in res["problems"]]
    lines += ["", f"Total bench time {res['total_seconds']:.0f} s. Files in `target/bench/`.", ""]
    return "\n".join(lines)


def steps_and_costs(o: dict, res: dict) -> list[str]:
    """Per step of the export and of its verification: D1 and R2 work and the consumer's wasm
    memory; then the cost model, per GB of dump."""
    export_steps, verify_steps = o.get("steps") or [], (o.get("verification") or {}).get("steps_usage") or []
    if not export_steps:
        return []
    lines = ["", "## Steps: work and memory", "",
             "| task | step | D1 queries | rows returned | D1 batches (statements) | R2 class A | R2 class B | wasm memory after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task, steps in (("export", export_steps), ("verification", verify_steps)):
        for st in steps:
            lines.append(f"| {task} | {st['step']} | {st['d1_queries']:,} | {st['d1_rows_returned']:,} | "
                         f"{st['d1_batches']:,} ({st['d1_statements']:,}) | {st['r2_class_a']} | {st['r2_class_b']} | "
                         f"{fmt(st.get('wasm_memory_mib'), 'd', ' MiB')} |")
    gb = (o["run"].get("bytes") or 0) / 1e9
    if not gb:
        return lines
    rows = res["rows"]
    source = res.get("source", {})
    # Each restored row is written once, and once more per index of its table.
    written = sum(n * (1 + source.get("index_counts", {}).get(t, 0)) for t, n in source.get("counts", {}).items())

    def per_gb(steps, key):
        return sum(st[key] for st in steps) / gb

    lines += ["", f"## Cost model: per GB of dump (this dump: {gb:.3f} GB, {rows:,} rows)", "",
              "Counted by the consumer in every step (its log's `usage:` lines); multiply by Cloudflare's prices. "
              "D1 bills rows read and written: a page query reads the rows it returns (by primary key, from where "
              "the last page ended), and restoring writes each row once plus once per index that covers it. "
              "The metadata database adds about 4 queries per step (lease, checkpoint, attempt, outcome).", "",
              "| per GB of dump | backup (export) | verification (restore into scratch, export again) |",
              "|---|---:|---:|"]
    ex_inv, ve_inv = len(export_steps), len(verify_steps)
    written = written if verify_steps else 0
    table = [
        ("Worker invocations (queue deliveries)", ex_inv / gb, ve_inv / gb),
        ("D1 queries on the source / scratch", per_gb(export_steps, "d1_queries"), per_gb(verify_steps, "d1_queries")),
        ("D1 rows read (rows returned)", per_gb(export_steps, "d1_rows_returned"), per_gb(verify_steps, "d1_rows_returned")),
        ("D1 batches (statements)", per_gb(export_steps, "d1_batches"), per_gb(verify_steps, "d1_batches")),
        ("D1 rows written (rows restored × (1 + indexes))", 0, written / gb),
        ("R2 Class A (puts, multipart parts, lists)", per_gb(export_steps, "r2_class_a"), per_gb(verify_steps, "r2_class_a")),
        ("R2 Class B (gets, heads)", per_gb(export_steps, "r2_class_b"), per_gb(verify_steps, "r2_class_b")),
    ]
    for label, a, b in table:
        lines.append(f"| {label} | {a:,.0f} | {b:,.0f} |")
    o["cost_per_gb"] = {label: {"backup": a, "verification": b} for label, a, b in table}
    return lines


def step_seconds(attempt: dict) -> float | None:
    s, e = parse_ts(attempt.get("startedAt")), parse_ts(attempt.get("finishedAt"))
    return (e - s).total_seconds() if s and e else None


# -- main --------------------------------------------------------------------------------------

def main() -> int:
    t_start = time.monotonic()
    problems: list[str] = []
    notes: list[str] = []
    for d in (CONF, DUMPS, SCRATCH):
        shutil.rmtree(d, ignore_errors=True)
    DUMPS.mkdir(parents=True)
    SCRATCH.mkdir(parents=True)
    db_config = write_db_config()
    facts = machine_facts()
    log(f"{ROWS:,} rows; state in {STATE.relative_to(ROOT)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(kill_live_groups)

    # 1. The migrated metadata database and seeded sources of every stack, then the bench
    # database, filled before the stack opens it.
    shutil.copytree(template_state(), STATE)
    source, fill_seconds = create_and_fill(db_config, ROWS)
    source_fp = fingerprint(source)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:
        source_fp["index_counts"] = dict(conn.execute(
            "SELECT tbl_name, count(*) FROM sqlite_schema WHERE type = 'index' GROUP BY tbl_name").fetchall())
    expected = source_fp.get("counts")
    log(f"filled {source.name} in {fill_seconds:.1f} s: {expected}")
    assert expected and sum(expected.values()) == TOTAL_ROWS, source_fp

    # 2. Our export through the running stack: the consumer keeps its production budget.
    key_file = OUT / "age-key.txt"
    key_file.unlink(missing_ok=True)
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key_file)], check=True, capture_output=True,
                               text=True).stdout.strip()
    secret = next(l for l in key_file.read_text().splitlines() if l.startswith("AGE-SECRET-KEY-1"))
    stack = Stack(STATE, port=bench_port(), extra_databases=1, environment="production",
                  database_entries={SEALED_NAME: f'{{ binding = "{DB_BINDING}", recipients = ["{recipient}"] }}'},
                  consumer_vars={"AGE_IDENTITY": secret, **VERIFY_VARS})
    atexit.register(stack.stop)
    log(f"starting the stack on port {stack.port}")
    stack.start(timeout=180)
    consumer_copy = next(p for p in stack.generated_configs if p.parent.name == "consumer")
    d1 = {d["binding"]: d for d in tomllib.loads(consumer_copy.read_text())["d1_databases"]}
    assert (d1[DB_BINDING]["database_name"], d1[DB_BINDING]["database_id"]) == (DB_NAME, DB_ID), d1[DB_BINDING]
    seen = d1_counts(DB_NAME, db_config)
    if seen != expected:
        problems.append(f"wrangler d1 execute beside the running stack sees {seen}, expected {expected}")
    log("our export: POST /trigger")
    ours = our_export(stack)
    run = ours["run"]
    log(f"job {ours['status']} after {ours['wall_seconds']:.1f} s; run {run.get('state')}, "
        f"workerd {ours['start_rss_mib']:.0f} -> peak {ours['peak_rss_mib']:.0f} MiB")
    our_dump = DUMPS / "ours.sql"
    # The consumer logs its WebAssembly memory (which only grows) after every step: the Worker's
    # own peak, apart from the local D1/R2 emulation that shares the workerd process.
    wasm = [int(m) for m in re.findall(rf"job {ours['job_id']} .*wasm memory (\d+) MiB",
                                       stack.log_path.read_text(errors="replace"))]
    ours["wasm_memory_mib"] = max(wasm) if wasm else None
    memory = (f"workerd {ours['start_rss_mib']:.0f} → {ours['peak_rss_mib']:.0f} MiB (start → peak); "
              f"the consumer's wasm memory {ours['wasm_memory_mib']} MiB")
    completed = ours.get("completed_seconds") or ours["wall_seconds"]
    entry = {"method": "ours: `POST /trigger` → job completed", "seconds": completed,
             "cpu_seconds": ours["cpu_seconds"], "memory": memory}
    if ours["status"] == "completed":
        body = stack.r2_get(run["r2Key"], our_dump)
        footer = body.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode(errors="replace")
        sha_ok = hashlib.sha256(body).hexdigest() == run.get("sha256")
        ours["dump_check"] = (f"{len(body):,} bytes (run says {run.get('bytes'):,}), sha256 "
                              f"{'matches' if sha_ok else 'DIFFERS'}, last line `{footer}`")
        if len(body) != run.get("bytes") or not sha_ok or not footer.startswith("-- Dump complete:"):
            problems.append(f"our dump read back from R2 does not match its run: {ours['dump_check']}")
        if run.get("rows") != TOTAL_ROWS:
            problems.append(f"our run reports {run.get('rows')} rows, expected {TOTAL_ROWS}")
        entry.update(bytes=len(body), rows_per_s=TOTAL_ROWS / completed, mb_per_s=len(body) / 1e6 / completed,
                     notes=f"{run.get('step')} step(s); the job's own finish time (the API's answer came "
                           f"{ours['wall_seconds']:.1f} s after the trigger: it shares the local workerd with the "
                           f"verification that starts as the run ends)")
    else:
        entry["notes"] = (f"**{ours['status'] or 'no answer'}**{' (timed out)' if ours['timed_out'] else ''}: "
                          f"{str(run.get('error'))[:200]}")
        problems.append(f"our export did not complete: status {ours['status']}, run {run.get('state')}, "
                        f"error {run.get('error')!r}")
    exports = [entry]
    if ours.get("run_seconds"):
        exports.append({"method": "ours: the run alone (startedAt → finishedAt)", "seconds": ours["run_seconds"],
                        "bytes": entry.get("bytes"), "rows_per_s": TOTAL_ROWS / ours["run_seconds"],
                        "mb_per_s": entry.get("bytes") and entry["bytes"] / 1e6 / ours["run_seconds"],
                        "memory": "", "notes": "from the first step's start to the last step's end"})
    if ours["status"] == "completed":
        log("our verification: waiting for the dump to be restored into the scratch database and compared")
        ours["verification"] = our_verification(stack, ours["job_id"])
        v = ours["verification"]
        log(f"verification {v.get('state')} after {fmt(v.get('seconds'), '.1f', ' s')}")
        if v.get("state") != "verified":
            problems.append(f"our dump did not verify: {v}")
    if ours["status"] == "completed" and os.environ.get("BENCH_ENCRYPTED", "1") != "0":
        sealed = sealed_export(stack, entry, our_dump, key_file, problems)
        ours["encrypted"] = sealed
        if sealed.get("run_seconds"):
            rounds = encryption_rounds(stack, ours, sealed)
            sealed["rounds"] = rounds
            sealed["entry"]["notes"] += (f"; the run alone, fastest of {len(rounds['pairs'])}: {rounds['best_sealed']:.1f} s "
                                         f"against {rounds['best_plain']:.1f} s plain, **{rounds['overhead']:+.0%}**")
        exports.append(sealed["entry"])
    dev_errors = dev_log_errors(stack.log_path)
    stack.stop()
    shutil.copy(stack.log_path, OUT / "wrangler-dev.log")

    # Where the export's time goes, measured natively on the same file (see the example's doc).
    profile = export_profile(source)
    if profile.get("error"):
        problems.append(f"the export profile failed: {profile['error']}")

    # 3. `wrangler d1 export --local` of the same database, with nothing else running.
    log("wrangler d1 export --local")
    wr_dump = DUMPS / "wrangler-export.sql"
    w = timed([*WRANGLER, "d1", "export", DB_NAME, "--local", "--output", str(wr_dump), "-c", str(db_config)],
              DUMPS / "wrangler-export.log", timeout=EXPORT_TIMEOUT, max_rss_mib=MAX_PEER_RSS_MIB)
    size = wr_dump.stat().st_size if wr_dump.exists() else None
    wr_ok = w["exit"] == 0 and bool(size)
    exports.append({"method": "`wrangler d1 export --local`", "seconds": w["seconds"], "bytes": size,
                    "cpu_seconds": w["cpu_seconds"], "rows_per_s": TOTAL_ROWS / w["seconds"] if wr_ok else None,
                    "mb_per_s": size / 1e6 / w["seconds"] if wr_ok else None,
                    "memory": f"{w['peak_rss_mib']:,.0f} MiB peak (node + workerd)",
                    "notes": "" if wr_ok else (f"**failed** (exit {w['exit']}{', timed out' if w['timed_out'] else ''}"
                                               f"{f', stopped past {MAX_PEER_RSS_MIB:,.0f} MiB' if w['killed_for_memory'] else ''})"),
                    "raw": w})
    if w["killed_for_memory"]:
        notes.append(f"wrangler d1 export was stopped past {MAX_PEER_RSS_MIB:,.0f} MiB of memory after "
                     f"{w['seconds']:.0f} s: it holds the whole database in memory")
    elif not wr_ok:
        # A peer's failure is a finding, not the bench's: wrangler cannot export the 1 GB database.
        error = re.findall(r"ERROR\W*(.*)", re.sub(r"\x1b\[[0-9;]*m", "", w["stderr_tail"]))
        notes.append(f"wrangler d1 export failed (exit {w['exit']}) after {w['seconds']:.0f} s at "
                     f"{w['peak_rss_mib']:,.0f} MiB: {error[-1] if error else w['stderr_tail'][-300:]!r} "
                     f"(its log: target/bench/dumps/wrangler-export.log.stderr)")

    if wr_ok and ours.get("run_seconds") and ours.get("completed_seconds"):
        ours["against_wrangler"] = {"run": ours["run_seconds"] / w["seconds"],
                                    "trigger_to_completed": ours["completed_seconds"] / w["seconds"]}

    # 4. sqlite3 .dump of the local D1 file.
    log("sqlite3 .dump")
    sh_dump = DUMPS / "sqlite3-dump.sql"
    s = timed(["sqlite3", "-readonly", str(source), ".dump"], sh_dump, timeout=EXPORT_TIMEOUT)
    size = sh_dump.stat().st_size
    exports.append({"method": "`sqlite3 <D1 file> .dump`", "seconds": s["seconds"], "bytes": size,
                    "cpu_seconds": s["cpu_seconds"], "rows_per_s": TOTAL_ROWS / s["seconds"],
                    "mb_per_s": size / 1e6 / s["seconds"], "memory": f"{s['peak_rss_mib']:,.0f} MiB peak", "raw": s,
                    "notes": "reference; also dumps D1's `_cf_KV`, and its BEGIN/COMMIT make it unfit for D1"
                    if s["exit"] == 0 else f"**failed** (exit {s['exit']})"})
    if s["exit"] != 0:
        problems.append(f"sqlite3 .dump failed (exit {s['exit']}): {s['stderr_tail'][-1500:]}")

    # 5. Restores into fresh, empty databases; every one checked against the source.
    restores = []
    restore_cases = (("ours", our_dump, "d1"), ("wrangler d1 export", wr_dump, "d1"),
                     ("ours", our_dump, "sqlite3"), ("sqlite3 .dump", sh_dump, "sqlite3"))
    if os.environ.get("BENCH_EXPORTS_ONLY"):
        notes.append("BENCH_EXPORTS_ONLY: the restores were skipped")
        restore_cases = ()
    skipped = [f"{label} with {tool}" for label, _, tool in restore_cases if tool not in RESTORE_TOOLS]
    if skipped:
        notes.append(f"BENCH_RESTORE_TOOLS={','.join(RESTORE_TOOLS)}: not run: {'; '.join(skipped)}")
    restore_cases = tuple(c for c in restore_cases if c[2] in RESTORE_TOOLS)
    for label, dump, tool in restore_cases:
        slug = re.sub(r"[^a-z0-9]+", "-", f"{label} {tool}".lower()).strip("-")
        r = {"dump": label, "tool": "`wrangler d1 execute --local --file`" if tool == "d1" else "`sqlite3 new.db < dump`"}
        restores.append(r)
        if not dump.exists() or dump.stat().st_size == 0:
            r["counts_ok"] = r["identical"] = "no dump"
            problems.append(f"restore of {label} with {tool}: no dump to restore")
            continue
        log(f"restore {label} with {tool}")
        if tool == "d1":
            name = f"restore-{slug}"
            config = scratch_d1_config(SCRATCH, name)
            before = d1_files()
            r["timing"] = timed([*WRANGLER, "d1", "execute", name, "--local", "--file", str(dump), "--yes",
                                 "-c", str(config), "--persist-to", str(STATE)],
                                SCRATCH / f"{slug}.log", timeout=RESTORE_TIMEOUT)
            counts = d1_counts(name, config)
            new = d1_files() - before
            fp = fingerprint(next(iter(new)) if len(new) == 1 else None)
        else:
            db_file = SCRATCH / f"{slug}.db"
            db_file.unlink(missing_ok=True)
            r["timing"] = timed(["sqlite3", "-bail", str(db_file)], SCRATCH / f"{slug}.log", RESTORE_TIMEOUT,
                                stdin=dump)
            fp = fingerprint(db_file)
            counts = fp.get("counts", fp)
        r["counts"], r["fingerprint"] = counts, fp
        r["counts_ok"] = "ok" if counts == expected else f"**wrong**: {counts}"
        same_rows = fp.get("sha3") == source_fp["sha3"]
        same_objects = fp.get("objects") == source_fp["objects"]
        r["identical"] = ("yes" if same_rows and same_objects else
                          "**no**: " + ", ".join(x for x, bad in (("rows differ", not same_rows),
                                                                  (f"schema objects {fp.get('objects')}", not same_objects))
                                                 if bad))
        if r["timing"]["exit"] != 0 or counts != expected:
            problems.append(f"restore of {label} with {tool}: exit {r['timing']['exit']}, counts {counts}, "
                            f"expected {expected}; {r['timing']['stderr_tail'][-800:]}")
        elif not (same_rows and same_objects) and label == "ours":
            problems.append(f"restore of our dump with {tool} is not identical to the source: {fp}")
        elif not (same_rows and same_objects):
            notes.append(f"the restore of the {label} with {tool} has every row but is not identical to the source "
                         f"({r['identical'].removeprefix('**no**: ')})")

    results = {
        "rows": TOTAL_ROWS, "facts": facts, "budget": budget(), "source": source_fp, "source_file": str(source),
        "source_file_bytes": source.stat().st_size, "fill_seconds": fill_seconds, "ours": ours,
        "exports": exports, "restores": restores, "profile": profile, "problems": problems, "notes": notes,
        "dev_log_errors": dev_errors if ours["status"] != "completed" else "",
        "total_seconds": time.monotonic() - t_start,
        "loads": {"our export": ours["loadavg_before"], "wrangler d1 export": w["loadavg_before"],
                  "sqlite3 .dump": s["loadavg_before"],
                  **{f"restore {r['dump']} ({r['tool'].split()[0].strip('`')})": r["timing"]["loadavg_before"]
                     for r in restores if r.get("timing")}},
    }
    md = report(results)
    (OUT / f"{NAME}.md").write_text(md)
    (OUT / f"{NAME}.json").write_text(json.dumps(results, indent=2, default=str))
    print(md)
    log(f"wrote {(OUT / f'{NAME}.md').relative_to(ROOT)} and {NAME}.json")
    if problems:
        log(f"{len(problems)} problem(s): see the end of {NAME}.md")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
