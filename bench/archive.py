"""`make bench`, weekly archives: the archiver Worker building `weekly/YYYY-Www.tar.gz` from a
week of dailies, beside GNU tar + gzip -6 (`tar czf`) on the same files, in one run.

A local stack backs up the chinook, hostile and bulk databases for each night of one past ISO
week by firing the producer's cron with that night's time, then archives the week with
`POST /archive` and follows the job. The same dailies, downloaded through the API and laid out
as the archive's members (`YYYY-MM-DD/<db>.sql`), are packed with `tar czf`. Reported: wall time
(ours: the job's startedAt -> finishedAt, which includes reading the archive back to verify it;
and request -> final status), MB/s of input, archive size, and both ratios. The extracted
members must equal the dailies byte for byte.

Standard library only, plus the e2e harness. Writes target/bench/archive.md and archive.json.
"""

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from stack import ROOMY_BUDGET, Stack  # noqa: E402

OUT = ROOT / "target" / "bench"
DATABASES = ["chinook", "hostile", "bulk"]


def iso(t: str) -> dt.datetime:
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "archive"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    today = dt.datetime.now(dt.timezone.utc).date()
    monday = today - dt.timedelta(days=today.weekday()) - dt.timedelta(weeks=2)
    year, week_number, _ = monday.isocalendar()
    week = f"{year}-W{week_number:02d}"
    stack = Stack(work / "state", consumer_vars=ROOMY_BUDGET, databases=DATABASES)
    try:
        stack.start()
        nights = [monday + dt.timedelta(days=d) for d in range(7)]
        for night in nights:
            stack.run_night(night, timeout=600)
        # Every daily is verified in the background: let that finish so the archive is timed alone.
        stack.wait_until_idle(timeout=1800)
        # The dailies as the archive will hold them.
        members = work / "members"
        total = 0
        for night in nights:
            for db in DATABASES:
                got = stack.admin("GET", f"/download/{night}/{db}")
                assert got.status == 200, got.body[:200]
                path = members / str(night) / f"{db}.sql"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(got.body)
                total += len(got.body)

        started = time.monotonic()
        accepted = stack.admin("POST", "/archive", {"week": week}).json()
        job = stack.wait_for_job(accepted["jobId"], timeout=1800)
        wall = time.monotonic() - started
        assert job["status"] == "completed" and job["outcome"] == "archived", job
        run_seconds = (iso(job["finishedAt"]) - iso(job["startedAt"])).total_seconds()
        ours = work / "ours.tar.gz"
        ours.write_bytes(stack.admin("GET", f"/download/weekly/{week}").body)
        assert hashlib.sha256(ours.read_bytes()).hexdigest() == job["sha256"]
        extracted = work / "extracted"
        extracted.mkdir()
        subprocess.run(["tar", "-xzf", str(ours), "-C", str(extracted)], check=True)
        for night in nights:
            for db in DATABASES:
                rel = Path(str(night)) / f"{db}.sql"
                assert (extracted / rel).read_bytes() == (members / rel).read_bytes(), rel
    finally:
        stack.stop()

    # GNU tar + gzip -6 on the same files, members in the same order.
    theirs = work / "tar-czf.tar.gz"
    names = sorted(str(p.relative_to(members)) for p in members.rglob("*.sql"))
    t0 = time.monotonic()
    cpu0 = os.times()
    # gzip's default level is 6.
    subprocess.run(["tar", "-czf", str(theirs), "-C", str(members), *names], check=True)
    tar_wall = time.monotonic() - t0
    cpu1 = os.times()
    tar_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)

    mb = total / 1e6
    result = {
        "week": week, "dailies": len(names), "input_bytes": total,
        "ours": {"job_seconds": run_seconds, "request_to_final_seconds": wall, "bytes": ours.stat().st_size,
                 "steps": job["step"], "mb_per_s": mb / run_seconds if run_seconds else None},
        "tar_czf": {"seconds": tar_wall, "cpu_seconds": tar_cpu, "bytes": theirs.stat().st_size,
                    "mb_per_s": mb / tar_wall if tar_wall else None},
    }
    result["time_ratio"] = run_seconds / tar_wall if tar_wall else None
    result["size_ratio"] = ours.stat().st_size / theirs.stat().st_size
    (OUT / "archive.json").write_text(json.dumps(result, indent=1))
    table = "\n".join([
        f"# Weekly archive bench: {week}, {len(names)} dailies, {mb:.1f} MB",
        "",
        "| method | wall time | MB/s | archive size | vs tar czf |",
        "|---|---:|---:|---:|---|",
        f"| ours (archiver job, startedAt → finishedAt, incl. read-back verification; {job['step']} steps) "
        f"| {run_seconds:.2f} s | {mb / run_seconds:.1f} | {ours.stat().st_size:,} B "
        f"| time ×{result['time_ratio']:.2f}, size ×{result['size_ratio']:.4f} |",
        f"| ours, POST /archive → job final (queue latency included) | {wall:.2f} s | {mb / wall:.1f} | | |",
        f"| `tar czf` (GNU tar + gzip -6) | {tar_wall:.2f} s | {mb / tar_wall:.1f} | {theirs.stat().st_size:,} B | |",
        "",
        "Extracted members are byte-identical to the dailies. Aim: time within ×2, size within ×1.05.",
    ])
    (OUT / "archive.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
