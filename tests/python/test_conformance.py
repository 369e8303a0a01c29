"""CPython's own shared-memory tests (tests/conformance/run_cpython.py) run
against the module under test, with this interpreter's test suite, so that
pytest on 3.11 and on 3.13 covers both versions of those tests; and CPython's
whole shared-memory test class run through ``shmkit.install()`` alone."""

import os
import re
import subprocess
import sys

import pytest

import shm_helpers as h

RUNNER = os.path.join(h.REPO, "tests", "conformance", "run_cpython.py")


def _need_test_suite():
    try:
        import test._test_multiprocessing  # noqa: F401
    except ImportError as e:
        pytest.skip(f"this interpreter has no CPython test suite: {e}")


def _summary(proc):
    summary = re.search(r"^conformance: (\d+) passed, (\d+) failed", proc.stdout, re.M)
    assert summary, h.describe(proc)
    return int(summary.group(1)), int(summary.group(2))


def test_cpython_shared_memory_tests(impl):
    _need_test_suite()
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
    passed, failed = _summary(proc)
    assert passed > 0 and failed == 0, h.describe(proc)


def test_cpython_shared_memory_class_through_install(shmkit_mod):
    """Every test of CPython's ``_TestSharedMemory`` (its tracker race aside,
    named in the output) under fork, spawn and forkserver, with nothing
    patched but what ``shmkit.install()`` does: the runner imports the
    tests after it, and their children and ``python -E`` interpreters get
    shmkit from it too (the runner checks a child of each start method)."""
    _need_test_suite()
    env = h.child_env()
    env.pop("SHMKIT_INSTALL", None)
    env.pop("SHM_IMPL", None)
    proc = subprocess.run(
        [sys.executable, RUNNER, "--install"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, h.describe(proc)
    assert "test._test_multiprocessing.shared_memory is shmkit.shared_memory" in proc.stdout
    passed, failed = _summary(proc)
    assert passed > 0 and failed == 0, h.describe(proc)
