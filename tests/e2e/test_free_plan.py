"""The Workers Free plan's profile (deploy/plans.toml, what `make deploy` writes for
`plan = "free"`): Chinook and the 7 MB `bulk` database backed up and verified under exactly
those vars, every step's logged work within the plan's per-invocation limits."""

import re
import time
import tomllib
import uuid

import pytest

from stack import FAST_RETRIES, ROOT, Stack

PLANS = tomllib.loads((ROOT / "deploy/plans.toml").read_text())
FREE = PLANS["free"]
# The metadata queries a consumer step keeps for itself (shared/src/config.rs), which its
# `usage:` log line does not count.
BOOKKEEPING = int(re.search(r"BOOKKEEPING_QUERIES: u32 = (\d+);", (ROOT / "shared/src/config.rs").read_text()).group(1))
# Per step, besides what the log line counts: the message that continues the task, and the
# delete of the parked tail (R2 deletes are free, so not counted as operations, but are requests).
UNLOGGED_REQUESTS = 2
USAGE = re.compile(r"usage: D1 (\d+) queries returning \d+ rows, (\d+) batches of \d+ statements; "
                   r"R2 class A (\d+), class B (\d+)")


@pytest.fixture(scope="module")
def free_stack():
    # Faster retries only: none of the plan's own vars is overridden.
    assert not set(FAST_RETRIES) & (set(FREE["consumer"]) | set(FREE["archiver"]))
    s = Stack(ROOT / "target" / "e2e" / f"free-{uuid.uuid4().hex[:8]}", databases=["chinook", "bulk"],
              consumer_vars={**FREE["consumer"], **FAST_RETRIES}, archiver_vars=FREE["archiver"])
    try:
        yield s.start()
    finally:
        s.stop()


def test_chinook_and_bulk_back_up_and_verify_within_the_free_plan(free_stack):
    s = free_stack
    r = s.admin("POST", "/trigger", {"databases": ["chinook", "bulk"]})
    assert r.status == 202, r.body
    job = s.wait_for_job(r.json()["jobId"], timeout=300)
    assert job["status"] == "completed", job
    runs = {run["database"]: run for run in job["runs"]}
    # Both exports went in several steps (the budget is that small), each one delivery.
    for run in runs.values():
        steps = [h for h in run["history"] if h["outcome"] in ("continued", "succeeded")]
        assert len(steps) >= 2 and all(h["outcome"] != "retrying" for h in run["history"]), run["history"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        views = {v["database"]: v for v in s.admin("GET", f"/jobs/{job['jobId']}").json()["runs"]}
        if all(v.get("verifyState") in ("verified", "verify_failed", "skipped") for v in views.values()):
            break
        time.sleep(1)
    assert {d: v.get("verifyState") for d, v in views.items()} == {"chinook": "verified", "bulk": "verified"}, views
    operations = s.d1_query("d1-backup-meta", "SELECT step, state FROM operations")
    assert operations and all(o["state"] == "succeeded" for o in operations), operations
    assert max(o["step"] for o in operations) >= 2, "verifications went in several steps too"
    # Every step, export or verification, within the plan's limits per invocation.
    steps = [tuple(map(int, m)) for m in USAGE.findall(s.log_path.read_text(errors="replace"))]
    assert len(steps) >= 6, steps
    limits = FREE["limits"]
    for queries, batches, class_a, class_b in steps:
        d1 = queries + batches + BOOKKEEPING
        assert d1 <= limits["d1_queries"], (queries, batches, class_a, class_b)
        assert d1 + class_a + class_b + UNLOGGED_REQUESTS <= limits["subrequests"], (queries, batches, class_a, class_b)
    busiest = max(q + b + BOOKKEEPING + a + c + UNLOGGED_REQUESTS for q, b, a, c in steps)
    print(f"{len(steps)} steps; the busiest made about {busiest} subrequests (limit {limits['subrequests']})")
