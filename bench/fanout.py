"""`make bench`: one nightly over 50 configured databases of mixed sizes on the local stack
(with the project's four), with the production budget: every run must succeed and verify and
nothing may be dead-lettered. Reports the total wall time, the slowest database and the
verifications. Standard library only; writes target/bench/fanout.md and fanout.json.

    BENCH_FANOUT=50        extra databases (fan01, fan02, ...)
    BENCH_FANOUT_PORT=     the stack's port; by default a free one
"""

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from stack import Stack, template_state  # noqa: E402

OUT = ROOT / "target" / "bench"
STATE = OUT / "fanout-state"
COUNT = int(os.environ.get("BENCH_FANOUT", "50"))
# Rows per database, in turn: empty, small, medium, large, mid.
SIZES = [0, 2_000, 20_000, 100_000, 5_000]
META = "d1-backup-meta"


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fill_sql(rows: int) -> str:
    create = ("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, amount REAL, payload TEXT, "
              "attachment BLOB)")
    if rows == 0:
        return create
    return (create + "; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " + str(rows) + ") "
            "INSERT INTO events SELECT i, 'kind-' || (i % 17), i * 1.25, printf('payload %d %s', i, hex(randomblob(24))), "
            "CASE WHEN i % 3 = 0 THEN randomblob(64) END FROM n")


def parse(ts: str | None):
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    shutil.copytree(template_state(), STATE)
    stack = Stack(STATE, port=int(os.environ["BENCH_FANOUT_PORT"]) if os.environ.get("BENCH_FANOUT_PORT") else None,
                  extra_databases=COUNT, environment="production")
    problems = []
    try:
        log(f"starting the stack with {COUNT} extra databases")
        stack.start(timeout=180)
        sizes = {}
        for i in range(1, COUNT + 1):
            name, rows = f"fan{i:02d}", SIZES[(i - 1) % len(SIZES)]
            stack.d1_execute(name, fill_sql(rows))
            sizes[name] = rows
        log(f"filled: {sum(sizes.values()):,} rows over {COUNT} databases")
        night = dt.date.today() - dt.timedelta(days=1)
        start = time.monotonic()
        job = stack.run_night(night, timeout=1800)
        wall = time.monotonic() - start
        runs = job["runs"]
        failed = [r["database"] for r in runs if r["state"] != "succeeded"]
        if failed:
            problems.append(f"runs not succeeded: {failed}")
        durations = {r["database"]: (parse(r["finishedAt"]) - parse(r["startedAt"])).total_seconds()
                     for r in runs if r.get("startedAt") and r.get("finishedAt")}
        slowest = max(durations, key=durations.get)
        log(f"job {job['status']} in {wall:.1f} s; slowest {slowest} {durations[slowest]:.1f} s")
        # Every dump's verification, then the dead letters.
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            views = stack.admin("GET", f"/jobs/{job['jobId']}").json()["runs"]
            if all(v.get("verifyState") in ("verified", "verify_failed", "skipped") for v in views):
                break
            time.sleep(2)
        verify_wall = time.monotonic() - start
        states = {}
        for v in views:
            states[v.get("verifyState")] = states.get(v.get("verifyState"), 0) + 1
        if states.get("verified") != len(runs):
            problems.append(f"not every dump verified: {states}")
        dead = stack.d1_query(META, "SELECT count(*) AS n FROM runs WHERE state = 'dead'")[0]["n"]
        rejected = stack.d1_query(META, "SELECT count(*) AS n FROM rejected_messages")[0]["n"]
        if dead or rejected:
            problems.append(f"{dead} dead runs, {rejected} rejected messages")
        result = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "databases": len(runs), "extra": COUNT, "rows": sum(r.get("rows") or 0 for r in runs),
            "bytes": sum(r.get("bytes") or 0 for r in runs), "job_status": job["status"],
            "wall_seconds": wall, "verified_wall_seconds": verify_wall, "slowest": slowest,
            "slowest_seconds": durations[slowest], "verify_states": states, "dead_runs": dead,
            "rejected_messages": rejected, "durations": durations, "problems": problems,
        }
    finally:
        stack.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fanout.json").write_text(json.dumps(result, indent=2))
    md = [
        f"# One nightly over {result['databases']} databases ({result['date']})",
        "",
        f"- {result['extra']} extra databases of {', '.join(f'{n:,}' for n in SIZES)} rows in turn, and the "
        f"project's own four: {result['rows']:,} rows, {result['bytes'] / 1e6:.1f} MB of dumps.",
        f"- The job: **{result['job_status']}** in {wall:.1f} s from the cron to the last run; the slowest database "
        f"`{slowest}` took {durations[slowest]:.1f} s.",
        f"- Every dump verified {verify_wall:.1f} s after the cron: {states}.",
        f"- Dead runs: {dead}; rejected messages: {rejected}.",
    ] + [f"- PROBLEM: {p}" for p in problems]
    (OUT / "fanout.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
