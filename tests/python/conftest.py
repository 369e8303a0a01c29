"""Fixtures of the shmkit pytest suite.

* ``impl``: the module under test, once as the stdlib's
  ``multiprocessing.shared_memory`` and once as ``shmkit.shared_memory``:
  the same tests prove the drop-in claim. The shmkit half is skipped (with the
  import error as reason) when ``shmkit`` cannot be imported, unless
  SHMKIT_REQUIRED=1, where that is a failure (for CI, once the package builds).
* ``shmkit_mod`` / ``stdlib_mod``: one implementation only.
* ``segments``: names and objects to clean up whatever the test's outcome.
* an autouse check that every test leaves /dev/shm as it found it.
"""

import gc
import importlib
import os
import tempfile
import time

import pytest

import shm_helpers as h

IMPLS = ("stdlib", "shmkit")


def pytest_configure(config):
    if os.environ.get("SHMKIT_INSTALL") == "1":
        # install() would make the stdlib half shmkit too: the comparison
        # this suite rests on would compare shmkit with itself.
        raise pytest.UsageError("unset SHMKIT_INSTALL: it turns the stdlib half of this suite into shmkit")
    # This session's record of the segment names it makes (shm_helpers says
    # why), fresh even when a parent session's is in the environment.
    fd, path = tempfile.mkstemp(prefix="shmkit-test-created-", suffix=".txt")
    os.close(fd)
    config._shmkit_created_log = path
    h.install_recorder(path)
    config.addinivalue_line(
        "markers", "shmkit_only: behaviour where shmkit deliberately improves on the stdlib"
    )
    config.addinivalue_line(
        "markers",
        "kill: SIGKILLs processes at random moments, for shm_helpers.kill_rounds() rounds "
        "(make test-slow: pytest -m kill with SHMKIT_KILL_ROUNDS=50)",
    )


def pytest_unconfigure(config):
    path = getattr(config, "_shmkit_created_log", None)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _import_shmkit():
    try:
        return importlib.import_module(h.SHMKIT_MODULE)
    except ImportError as e:
        if os.environ.get("SHMKIT_REQUIRED") == "1":
            pytest.fail(f"SHMKIT_REQUIRED=1 but `import {h.SHMKIT_MODULE}` failed: {e!r}")
        pytest.skip(
            f"`import {h.SHMKIT_MODULE}` failed ({e}); build the package with "
            "`make develop` and run pytest with .venv-3.11/bin/python or .venv-3.13/bin/python"
        )


@pytest.fixture(params=IMPLS)
def impl(request):
    """The implementation module: ``multiprocessing.shared_memory`` or
    ``shmkit.shared_memory``."""
    if request.param == "stdlib":
        return importlib.import_module(h.STDLIB_MODULE)
    return _import_shmkit()


@pytest.fixture
def shmkit_mod():
    return _import_shmkit()


@pytest.fixture
def stdlib_mod():
    return importlib.import_module(h.STDLIB_MODULE)


class Segments:
    """What a test created, removed at teardown even when the test failed."""

    def __init__(self):
        self._objects = []
        self._names = []

    def name(self, tag="seg"):
        """A fresh name of our own; ``/dev/shm/<name>`` is removed at teardown."""
        name = h.unique_name(tag)
        self._names.append(name)
        return name

    def add_name(self, name):
        """Makes ``name`` this test's: removed at teardown if still there."""
        self._names.append(name)
        return name

    def add(self, shm):
        """Closes and unlinks ``shm`` at teardown (through the object, so that a
        stdlib resource tracker forgets it too)."""
        self._objects.append(shm)
        self._names.append(shm.name)
        return shm

    def cleanup(self):
        gc.collect()  # views kept alive by a failed assertion's traceback
        for shm in reversed(self._objects):
            try:
                shm.close()
            except Exception:
                pass
            try:
                shm.unlink()
            except Exception:
                pass
        for name in self._names:
            h.remove_segment(name)


@pytest.fixture
def segments():
    s = Segments()
    yield s
    s.cleanup()


@pytest.fixture(autouse=True)
def dev_shm_unchanged(request):
    """Fails a test that leaves new entries in /dev/shm, and removes them so
    that later tests start clean. Autouse fixtures are set up first and torn
    down last, so ``segments`` has cleaned up by the time this looks.

    Other people share this machine's /dev/shm: only the names this session
    wrote down as its own count (shm_helpers.new_segments says how); the
    rest are neither reported nor touched."""
    before = set(os.listdir(h.DEV_SHM))
    yield
    gc.collect()
    new = h.new_segments(before)
    if new:
        # Another process's segment may be between its close and its unlink:
        # only what is still there a moment later counts.
        time.sleep(0.2)
        new = h.new_segments(before)
    if new:
        for name in new:
            h.remove_segment(name)
        pytest.fail(f"the test left {len(new)} new entries in /dev/shm (now removed): {new}")


@pytest.fixture
def python311():
    python = h.find_cpython("3.11")
    if python is None:
        pytest.skip("no CPython 3.11 found (set SHMKIT_PY311 or install it with pyenv)")
    return python


@pytest.fixture
def python313():
    python = h.find_cpython("3.13")
    if python is None:
        pytest.skip("no CPython 3.13 found (set SHMKIT_PY313 or install it with pyenv)")
    return python
