#!/usr/bin/env python3
"""Runs CPython's own shared-memory tests against a drop-in implementation.

The tests are not copied: they are imported at run time from the running
interpreter's ``test._test_multiprocessing`` (class ``_TestSharedMemory``
and friends), and run under the fork, spawn and forkserver start methods
with ``multiprocessing.shared_memory`` replaced by the module named in
$SHM_IMPL (default ``shmkit.shared_memory``), following the recipe of
reference/cpython-shared-memory.md §5.

    SHM_IMPL=shmkit.shared_memory python tests/conformance/run_cpython.py
    SHM_IMPL=multiprocessing.shared_memory python tests/conformance/run_cpython.py -v
    python tests/conformance/run_cpython.py --start-methods spawn test_shared_memory_basics
    python tests/conformance/run_cpython.py --list all

Positional arguments select tests: group names (see GROUPS; default
``shared_memory``, ``shareable_list`` and ``manager``), test method names, or
``Class.method``. Tests that this Python's test suite does not have (3.11
spells ``..._cration``, 3.13 ``..._creation``) are left out of a group with
a note. Exits 0 only if at least one test ran and none failed.
"""

import argparse
import importlib
import os
import sys
import unittest

IMPL_NAME = os.environ.get("SHM_IMPL", "shmkit.shared_memory")

# --------------------------------------------------------------------------
# The replacement, patched in at import time: spawn and forkserver children
# re-import this file as __mp_main__, and must see the same module.

import multiprocessing  # noqa: E402
import multiprocessing.managers  # noqa: E402

try:
    _impl = importlib.import_module(IMPL_NAME)
except ImportError as _e:
    sys.stderr.write(f"run_cpython: cannot import SHM_IMPL={IMPL_NAME!r}: {_e}\n")
    raise SystemExit(2)

sys.modules["multiprocessing.shared_memory"] = _impl
multiprocessing.shared_memory = _impl
# SharedMemoryManager.SharedMemory/ShareableList look this global up.
multiprocessing.managers.shared_memory = _impl
# The manager tests use multiprocessing.managers.SharedMemoryManager: an
# implementation package with a managers module (shmkit.managers) replaces it.
_pkg = IMPL_NAME.rpartition(".")[0]
if _pkg and _pkg != "multiprocessing":
    try:
        _managers = importlib.import_module(f"{_pkg}.managers")
    except ImportError:
        pass
    else:
        multiprocessing.managers.SharedMemoryManager = _managers.SharedMemoryManager

try:
    import test._test_multiprocessing as _tm  # noqa: E402
except ImportError as _e:
    sys.stderr.write(
        f"run_cpython: this interpreter has no test suite ({_e}); "
        "pyenv's CPython builds include it, Debian's need libpython3.X-testsuite\n"
    )
    raise SystemExit(2)

_tm.shared_memory = _impl

# --------------------------------------------------------------------------
# What to run. Unqualified names are methods of WithProcessesTestSharedMemory
# (CPython's _TestSharedMemory installed for the 'processes' type).

SHM_CLASS = "WithProcessesTestSharedMemory"

SHARED_MEMORY_TESTS = (
    "test_shared_memory_basics",
    "test_shared_memory_recreate",
    "test_invalid_shared_memory_cration",  # 3.11's spelling
    "test_invalid_shared_memory_creation",  # 3.13's spelling
    "test_shared_memory_pickle_unpickle",
    "test_shared_memory_pickle_unpickle_dead_object",
    "test_shared_memory_across_processes",
    "test_shared_memory_name_with_embedded_null",  # 3.13+
)

# In the default selection since shmkit has a ShareableList.
SHAREABLE_LIST_TESTS = (
    "test_shared_memory_ShareableList_basics",
    "test_shared_memory_ShareableList_pickling",
    "test_shared_memory_ShareableList_pickling_dead_object",
)
# Not in the default selection yet: later work widens DEFAULT_GROUPS as the
# implementation grows. Note for the subprocess-based ones (tracker, and the
# manager's reuses_resource_tracker): they start fresh interpreters that import
# multiprocessing.shared_memory by name, so they test the stdlib unless a .pth
# hook swaps the module in those interpreters too (spec §5, point 3).
# In the default selection since shmkit has a SharedMemoryManager (patched
# in above as multiprocessing.managers.SharedMemoryManager).
MANAGER_TESTS = (
    "test_shared_memory_SharedMemoryManager_basics",
    "test_shared_memory_SharedMemoryServer_ignores_sigint",
)
# Not in the default selection: it runs `python -c "from
# multiprocessing.managers import SharedMemoryManager ..."` in a fresh
# interpreter, so it passes while testing the stdlib, not shmkit.
MANAGER_SUBPROCESS_TESTS = (
    "test_shared_memory_SharedMemoryManager_reuses_resource_tracker",
)
# Run with the .pth hook below, so their fresh interpreters use shmkit.
TRACKER_TESTS = (
    "test_shared_memory_untracking",  # 3.13+
    "test_shared_memory_tracking",  # 3.13+
    # These exercise the stdlib's tracker (semaphores) and pass untouched;
    # kept so a shmkit import in those interpreters is seen not to break it.
    "TestResourceTracker.test_resource_tracker_sigint",
    "TestResourceTracker.test_resource_tracker_sigterm",
    "TestResourceTracker.test_resource_tracker_sigkill",
    "TestResourceTracker.test_resource_tracker_reused",
    "TestResourceTracker.test_too_long_name_resource",
)
# Where shmkit's tracker deliberately differs (docs/compat.md, "Leak
# tracking"); not in the default selection:
# * cleaned_after_process_termination attaches to the segment (and so holds
#   it) the moment its child is reaped, in a loop; shmkit never unlinks a
#   segment a live process has open, so it passes only when the child's
#   watcher wins that race (often, not always), and otherwise waits out
#   LONG_TIMEOUT (300 s);
# * test_resource_tracker unlinks one of two segments itself, then expects
#   "2 leaked" and a FileNotFoundError line for it; shmkit counts and
#   reports only segments still there to clean ("1 leaked"), silently.
TRACKER_DIFFERENCES = (
    "test_shared_memory_cleaned_after_process_termination",
    "TestResourceTracker.test_resource_tracker",
)

GROUPS = {
    "shared_memory": SHARED_MEMORY_TESTS,
    "shareable_list": SHAREABLE_LIST_TESTS,
    "manager": MANAGER_TESTS,
    "manager_subprocess": MANAGER_SUBPROCESS_TESTS,
    "tracker": TRACKER_TESTS,
    "tracker_differences": TRACKER_DIFFERENCES,
}
GROUPS["all"] = tuple(
    t
    for g in ("shared_memory", "shareable_list", "manager", "manager_subprocess", "tracker", "tracker_differences")
    for t in GROUPS[g]
)

# "tracker" runs with the .pth hook below, so its fresh interpreters test
# shmkit's leak tracker, not the stdlib's.
# "tracker" runs with the .pth hook below, so its fresh interpreters test
# shmkit's leak tracker, not the stdlib's.
DEFAULT_GROUPS = ("shared_memory", "shareable_list", "manager", "tracker")

START_METHODS = ("fork", "spawn", "forkserver")


# --------------------------------------------------------------------------
# The tracker tests start fresh interpreters (`python -E -c "from
# multiprocessing import shared_memory ..."`). For the duration of a run that
# selects them, a .pth file in this interpreter's site-packages swaps the
# module in there too (spec §5 point 3: -E ignores PYTHONPATH but still
# processes .pth files). It acts only when $SHMKIT_CONFORMANCE_IMPL is set,
# which only this runner does (and -E does not clear: it is not a PYTHON*
# variable), so other users of the venv are unaffected even mid-run; the file
# is removed when the run ends.

HOOK_ENV = "SHMKIT_CONFORMANCE_IMPL"
HOOK_FILE = "_shmkit_conformance_hook.pth"
HOOK_LINE = (
    r"import os; exec('import sys, importlib, multiprocessing\n"
    r"m = importlib.import_module(os.environ[\'SHMKIT_CONFORMANCE_IMPL\'])\n"
    r"sys.modules[\'multiprocessing.shared_memory\'] = m\n"
    r"multiprocessing.shared_memory = m')"
    r" if os.environ.get('SHMKIT_CONFORMANCE_IMPL') else None"
    "\n"
)


def install_hook():
    """Writes the .pth hook; returns its path (None if not needed)."""
    import sysconfig

    if IMPL_NAME == "multiprocessing.shared_memory":
        return None
    path = os.path.join(sysconfig.get_paths()["purelib"], HOOK_FILE)
    with open(path, "w") as f:
        f.write(HOOK_LINE)
    os.environ[HOOK_ENV] = IMPL_NAME
    return path


def remove_hook(path):
    os.environ.pop(HOOK_ENV, None)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _qualify(name):
    return name if "." in name else f"{SHM_CLASS}.{name}"


def _classes(start_method):
    """CPython's test classes installed for one start method, by name."""
    ns = {"__name__": __name__}
    _tm.install_tests_in_module_dict(ns, start_method, only_type="processes")
    # Plain TestCases (no start method) are taken as the module has them.
    for name in ("TestResourceTracker",):
        if hasattr(_tm, name):
            ns[name] = getattr(_tm, name)
    return ns


def resolve(selection):
    """Expands groups; returns (qualified test names, names this Python lacks)."""
    ns = _classes("fork")
    wanted, missing = [], []
    for item in selection:
        names = GROUPS.get(item, (item,))
        for name in names:
            cls_name, _, method = _qualify(name).partition(".")
            cls = ns.get(cls_name)
            if isinstance(cls, type) and hasattr(cls, method):
                q = f"{cls_name}.{method}"
                if q not in wanted:
                    wanted.append(q)
            elif item in GROUPS:
                missing.append(name)
            else:
                raise SystemExit(f"run_cpython: no test {name!r} in this Python's test suite")
    return wanted, missing


def _base_id(test):
    """The test's id, its parent's for a subtest."""
    return getattr(test, "test_case", test).id()


def run_start_method(start_method, tests, verbosity):
    ns = _classes(start_method)
    suite = unittest.TestSuite()
    for q in tests:
        cls_name, method = q.split(".")
        suite.addTest(ns[cls_name](method))
    print(f"\n=== {len(tests)} tests, start method {start_method}, SHM_IMPL={IMPL_NAME} ===", flush=True)
    try:
        ns["setUpModule"]()
    except unittest.SkipTest as e:
        print(f"skipped: {e}", flush=True)
        return None
    try:
        runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=verbosity)
        return runner.run(suite)
    finally:
        ns["tearDownModule"]()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("selection", nargs="*", help="groups, test names or Class.test (default: %(default)s)",
                        default=list(DEFAULT_GROUPS))
    parser.add_argument("--start-methods", default=",".join(START_METHODS),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the selected tests and exit")
    parser.add_argument("-v", "--verbose", action="store_const", const=2, default=1, dest="verbosity")
    parser.add_argument("-q", "--quiet", action="store_const", const=0, dest="verbosity")
    args = parser.parse_args(argv)

    tests, missing = resolve(args.selection)
    if missing:
        print(f"not in Python {sys.version.split()[0]}'s test suite, left out: {', '.join(missing)}")
    if args.list:
        print("\n".join(tests))
        return 0
    if not tests:
        print("run_cpython: nothing selected")
        return 1

    tracker = {_qualify(t) for t in TRACKER_TESTS + TRACKER_DIFFERENCES}
    hook = install_hook() if any(t in tracker for t in tests) else None
    try:
        return _run(args, tests)
    finally:
        remove_hook(hook)


def _run(args, tests):
    methods = [m for m in args.start_methods.split(",") if m]
    available = multiprocessing.get_all_start_methods()
    totals = {"run": 0, "skipped": 0}
    lines = []
    first = True
    for method in methods:
        if method not in available:
            lines.append(f"{method:>10}: not available on this platform")
            continue
        # Plain TestCases (TestResourceTracker) do not use the start method:
        # they run once, with the first one.
        selected = [q for q in tests if first or q.startswith("With")]
        first = False
        result = run_start_method(method, selected, args.verbosity)
        if result is None:
            lines.append(f"{method:>10}: skipped by setUpModule")
            continue
        # A test with failing subtests is one failed test.
        bad = {_base_id(t) for t, _ in result.failures + result.errors}
        bad |= {_base_id(t) for t in result.unexpectedSuccesses}
        skipped = {_base_id(t) for t, _ in result.skipped} - bad
        counts = {
            "run": result.testsRun,
            "failed": len(bad),
            "skipped": len(skipped),
            "failures": len(result.failures),
            "errors": len(result.errors),
        }
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        lines.append(f"{method:>10}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))

    failed = totals.get("failed", 0)
    passed = totals["run"] - failed - totals["skipped"]
    print(f"\n=== CPython {sys.version.split()[0]} shared-memory conformance, SHM_IMPL={IMPL_NAME} ===")
    print("\n".join(lines))
    print(f"conformance: {passed} passed, {failed} failed, {totals['skipped']} skipped")
    return 0 if totals["run"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
