import atexit
import os
import signal
import uuid
from pathlib import Path

import pytest

from stack import ROOMY_BUDGET, ROOT, SMALL_BUDGET, Stack


@pytest.fixture(scope="session")
def stack():
    """One local stack for the session, with its own port and state directory. Its consumer may
    make only 14 D1 queries (6 of them for the export) and write about 1 MB per invocation,
    so every backup the tests make of a real database continues over several queue messages."""
    state_dir = Path(os.environ.get("E2E_STATE_DIR") or ROOT / "target" / "e2e" / uuid.uuid4().hex[:12])
    s = Stack(state_dir, consumer_vars=SMALL_BUDGET, verify=False)
    # Torn down however the session ends: normal exit, failure, Ctrl-C or SIGTERM.
    atexit.register(s.stop)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (s.stop(), signal.default_int_handler(signal.SIGINT, None)))
    try:
        yield s.start()
    finally:
        s.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def roomy_stack():
    """A second stack whose consumer has budget enough to export any test database at once."""
    s = Stack(ROOT / "target" / "e2e" / f"roomy-{uuid.uuid4().hex[:8]}", consumer_vars=ROOMY_BUDGET)
    atexit.register(s.stop)
    try:
        yield s.start()
    finally:
        s.stop()
