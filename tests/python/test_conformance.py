"""CPython's own shared-memory tests (tests/conformance/run_cpython.py) run
against the module under test, with this interpreter's test suite, so that
pytest on 3.11 and on 3.13 covers both versions of those tests."""

import os
import re
import subprocess
import sys

import pytest

import shm_helpers as h

RUNNER = os.path.join(h.REPO, "tests", "conformance", "run_cpython.py")


def test_cpython_shared_memory_tests(impl):
    try:
        import test._test_multiprocessing  # noqa: F401
    except ImportError as e:
        pytest.skip(f"this interpreter has no CPython test suite: {e}")
    # Run as a script, not with -c: spawn and forkserver children re-import
    # the driver by path, which is how they get the replacement patched in.
    proc = subprocess.run(
        [sys.executable, RUNNER],
        capture_output=True,
        text=True,
        env=h.child_env({"SHM_IMPL": impl.__name__}),
        timeout=300,
    )
    assert proc.returncode == 0, h.describe(proc)
    summary = re.search(r"^conformance: (\d+) passed, (\d+) failed", proc.stdout, re.M)
    assert summary, h.describe(proc)
    assert int(summary.group(1)) > 0 and summary.group(2) == "0", h.describe(proc)
