"""The harness itself: a failing test must not leave wrangler or workerd running."""

import os
import subprocess
import sys

from stack import ROOT, group_alive


def test_a_failing_test_leaves_no_stray_processes(tmp_path):
    pid_file = tmp_path / "stack.pid"
    state_dir = tmp_path / "selfcheck-state"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests/e2e/selfcheck/test_fails_on_purpose.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SELFCHECK_PID_FILE": str(pid_file), "E2E_STATE_DIR": str(state_dir)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    pgid = int(pid_file.read_text())
    assert not group_alive(pgid), "the stack's process group survived its failing test"
    # No process anywhere still runs with the child's state directory.
    leftovers = subprocess.run(["pgrep", "-af", str(state_dir)], capture_output=True, text=True)
    assert leftovers.stdout == "", leftovers.stdout
