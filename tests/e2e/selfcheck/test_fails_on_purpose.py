"""Run only by test_harness.py, in a child pytest: a test that fails while the stack is up."""

import os


def test_fails_with_the_stack_running(stack):
    assert stack.request("GET", "/health").status == 200
    with open(os.environ["SELFCHECK_PID_FILE"], "w") as f:
        f.write(str(stack.process.pid))
    assert False, "fails on purpose: the harness must still tear the stack down"
