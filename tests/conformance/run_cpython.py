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
    python tests/conformance/run_cpython.py --install

``--install`` runs CPython's whole ``_TestSharedMemory`` class (every test
method this Python has) with nothing patched by this runner: it calls
``shmkit.install()`` and then imports ``test._test_multiprocessing``, so the
tests, their spawn and forkserver children and the interpreters they start
by hand all get shmkit through install() alone, and it checks that a child
of each start method does. Tests where shmkit differs by design are
expected to fail in the exact way INSTALL_EXPECTED_FAILURES says, with the
reason; the run fails if one passes or fails otherwise. Tests whose outcome
is a race (INSTALL_LEFT_OUT) are named in the output with the reason and
left out, unless named on the command line.

Positional arguments select tests: group names (see GROUPS; default
``shared_memory``, ``shareable_list``, ``manager`` and ``tracker``; ``class``
is every test of the class), test method names, or
``Class.method``. Tests that this Python's test suite does not have (3.11
spells ``..._cration``, 3.13 ``..._creation``) are left out of a group with
a note. Exits 0 only if at least one test ran and none failed.
"""

import argparse
import importlib
import os
import re
import signal
import sys
import unittest

IMPL_NAME = os.environ.get("SHM_IMPL", "shmkit.shared_memory")

# --install mode: this runner patches nothing, in this process or in the
# children that re-import this file (as __mp_main__: spawn children, and the
# forkserver, whose sys.argv is not ours), which learn the mode from this
# variable, set by main() before any child starts.
INSTALL_MODE_ENV = "SHMKIT_CONFORMANCE_INSTALL_MODE"
INSTALL_MODE = os.environ.get(INSTALL_MODE_ENV) == "1" or (
    __name__ == "__main__" and "--install" in sys.argv[1:]
)

import multiprocessing  # noqa: E402
import multiprocessing.managers  # noqa: E402

_tm = None  # test._test_multiprocessing, once imported


def _import_tests():
    global _tm
    try:
        import test._test_multiprocessing as tm
    except ImportError as e:
        sys.stderr.write(
            f"run_cpython: this interpreter has no test suite ({e}); "
            "pyenv's CPython builds include it, Debian's need libpython3.X-testsuite\n"
        )
        raise SystemExit(2)
    _tm = tm
    return tm


# --------------------------------------------------------------------------
# SHM_IMPL mode (the default): the replacement, patched in at import time:
# spawn and forkserver children re-import this file as __mp_main__, and must
# see the same module.

if not INSTALL_MODE:
    if os.environ.get("SHMKIT_INSTALL") == "1":
        # Every interpreter of this environment would have shmkit installed
        # at start-up, whatever SHM_IMPL says.
        sys.stderr.write("run_cpython: SHMKIT_INSTALL=1 is set: unset it, or use --install\n")
        raise SystemExit(2)
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

    _import_tests().shared_memory = _impl

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
    # Attaches in a loop from the moment its child is reaped, holding what
    # it attaches: shmkit's watcher marks the child's segments "cleanup
    # pending" as the child starts to exit, and the attach waits for the
    # cleanup (docs/compat.md, "Leak tracking").
    "test_shared_memory_cleaned_after_process_termination",
    # The shared-memory case checks CPython's count (a name unlinked by
    # someone else still counts) and its FileNotFoundError line; the
    # semaphore case exercises the stdlib's tracker, untouched.
    "TestResourceTracker.test_resource_tracker",
    # These exercise the stdlib's tracker (semaphores) and pass untouched;
    # kept so a shmkit import in those interpreters is seen not to break it.
    "TestResourceTracker.test_resource_tracker_sigint",
    "TestResourceTracker.test_resource_tracker_sigterm",
    "TestResourceTracker.test_resource_tracker_sigkill",
    "TestResourceTracker.test_resource_tracker_reused",
    "TestResourceTracker.test_too_long_name_resource",
)

GROUPS = {
    "shared_memory": SHARED_MEMORY_TESTS,
    "shareable_list": SHAREABLE_LIST_TESTS,
    "manager": MANAGER_TESTS,
    "manager_subprocess": MANAGER_SUBPROCESS_TESTS,
    "tracker": TRACKER_TESTS,
}
GROUPS["all"] = tuple(
    t
    for g in ("shared_memory", "shareable_list", "manager", "manager_subprocess", "tracker")
    for t in GROUPS[g]
)

# "tracker" runs with the .pth hook below, so its fresh interpreters test
# shmkit's leak tracker, not the stdlib's.
DEFAULT_GROUPS = ("shared_memory", "shareable_list", "manager", "tracker")

START_METHODS = ("fork", "spawn", "forkserver")

# Every test method of SHM_CLASS that this Python's suite has (3.13 has
# three more than 3.11); --install's default selection.
CLASS_GROUP = "class"

# --install: tests of the class where shmkit differs from CPython by design
# (docs/compat.md), with the text their failure must match and the reason.
# Each must fail exactly so (under every start method); a pass, or another
# failure, fails the run.
INSTALL_EXPECTED_FAILURES = {}

# --install: tests of the class left out of the default selection, each
# named in the output with its reason (they still run when named
# explicitly). None at present.
INSTALL_LEFT_OUT = {}


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
# site.py reads .pth files in sorted order, and the hook must come after the
# one that puts an editable install (maturin develop) on sys.path; "zz" sorts
# after any lowercase name. If the import still fails, the interpreter exits
# (status 70) rather than silently testing the stdlib.
HOOK_FILE = "zz_shmkit_conformance_hook.pth"
HOOK_LINE = (
    r"import os; exec('import sys, importlib, multiprocessing\n"
    r"try:\n"
    r" m = importlib.import_module(os.environ[\'SHMKIT_CONFORMANCE_IMPL\'])\n"
    r"except Exception as e:\n"
    r" sys.stderr.write(\'run_cpython hook: cannot import %s: %r\\n\' "
    r"% (os.environ[\'SHMKIT_CONFORMANCE_IMPL\'], e))\n"
    r" os._exit(70)\n"
    r"sys.modules[\'multiprocessing.shared_memory\'] = m\n"
    r"multiprocessing.shared_memory = m')"
    r" if os.environ.get('SHMKIT_CONFORMANCE_IMPL') else None"
    "\n"
)


def check_hook():
    """A fresh ``python -E`` (as the tracker tests start) resolves
    multiprocessing.shared_memory to the implementation under test; returns
    an error message or None."""
    import subprocess

    probe = "import multiprocessing.shared_memory as m; print(m.SharedMemory.__module__)"
    r = subprocess.run(
        [sys.executable, "-E", "-c", probe], capture_output=True, text=True, timeout=60
    )
    got = r.stdout.strip()
    if r.returncode != 0 or got != IMPL_NAME:
        return (
            f"a fresh interpreter resolves multiprocessing.shared_memory to {got!r}, "
            f"not {IMPL_NAME!r} (exit {r.returncode}): {r.stderr.strip()}"
        )
    return None


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


def impl_label():
    return "shmkit.install()" if INSTALL_MODE else f"SHM_IMPL={IMPL_NAME}"


def _report_impl(conn):
    """In a child: which modules the stdlib's names resolve to."""
    import multiprocessing.managers as managers
    import multiprocessing.shared_memory as shared_memory

    conn.send((shared_memory.SharedMemory.__module__, managers.SharedMemoryManager.__module__))
    conn.close()


def check_child_impl(start_method):
    """--install: a child started with ``start_method`` reports that it has
    shmkit under the stdlib's names; returns an error message or None."""
    ctx = multiprocessing.get_context(start_method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_report_impl, args=(w,))
    p.start()
    w.close()
    try:
        got = r.recv() if r.poll(60) else None
    except EOFError:
        got = None
    p.join(60)
    want = ("shmkit.shared_memory", "shmkit.managers")
    if got != want:
        return f"a {start_method} child resolves the stdlib's names to {got}, not {want}"
    return None


def _qualify(name):
    return name if "." in name else f"{SHM_CLASS}.{name}"


def _classes(start_method):
    """CPython's test classes installed for one start method, by name."""
    ns = {"__name__": __name__}
    try:
        _tm.install_tests_in_module_dict(ns, start_method, only_type="processes")
    except TypeError:
        # Before 3.11 every type (processes, threads, manager) is installed;
        # shared memory is only the processes' business.
        _tm.install_tests_in_module_dict(ns, start_method)
        for name in [n for n in ns if n.startswith(("WithThreads", "WithManager"))]:
            del ns[name]
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
        if item == CLASS_GROUP:
            names = unittest.TestLoader().getTestCaseNames(ns[SHM_CLASS])
        else:
            names = GROUPS.get(item, (item,))
        for name in names:
            cls_name, _, method = _qualify(name).partition(".")
            cls = ns.get(cls_name)
            if isinstance(cls, type) and hasattr(cls, method):
                q = f"{cls_name}.{method}"
                if q not in wanted:
                    wanted.append(q)
            elif item in GROUPS or item == CLASS_GROUP:
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
    print(f"\n=== {len(tests)} tests, start method {start_method}, {impl_label()} ===", flush=True)
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
    parser.add_argument("selection", nargs="*",
                        help=f"groups, test names or Class.test (default: {' '.join(DEFAULT_GROUPS)}; "
                             f"with --install, {CLASS_GROUP!r}: every test of {SHM_CLASS})")
    parser.add_argument("--install", action="store_true",
                        help="run through shmkit.install() alone, with nothing patched by this runner")
    parser.add_argument("--start-methods", default=",".join(START_METHODS),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the selected tests and exit")
    parser.add_argument("-v", "--verbose", action="store_const", const=2, default=1, dest="verbosity")
    parser.add_argument("-q", "--quiet", action="store_const", const=0, dest="verbosity")
    args = parser.parse_args(argv)
    if args.install != INSTALL_MODE:
        raise SystemExit("run_cpython: --install must be given on the command line of the script")

    if args.install:
        # Children re-importing this file must not patch anything either.
        os.environ[INSTALL_MODE_ENV] = "1"
        import shmkit

        shmkit.install()
        tm = _import_tests()
        # The tests' module took the stdlib's name at import; it must be shmkit's.
        assert tm.shared_memory is sys.modules["multiprocessing.shared_memory"], tm.shared_memory
        print(f"shmkit.install(): test._test_multiprocessing.shared_memory is {tm.shared_memory.__name__}, "
              f"multiprocessing.managers.SharedMemoryManager is "
              f"{multiprocessing.managers.SharedMemoryManager.__module__}'s")

    selection = args.selection or ([CLASS_GROUP] if args.install else list(DEFAULT_GROUPS))
    tests, missing = resolve(selection)
    if args.install and not args.selection:
        for name, reason in INSTALL_LEFT_OUT.items():
            q = _qualify(name)
            if q in tests:
                tests.remove(q)
                print(f"left out: {name}: {reason}")
    if missing:
        print(f"not in Python {sys.version.split()[0]}'s test suite, left out: {', '.join(missing)}")
    if args.list:
        print("\n".join(tests))
        return 0
    if not tests:
        print("run_cpython: nothing selected")
        return 1

    tracker = {_qualify(t) for t in TRACKER_TESTS}
    needs_hook = not args.install and any(t in tracker for t in tests)
    hook = install_hook() if needs_hook else None
    try:
        if hook:
            error = check_hook()
            if error:
                print(f"run_cpython: {error}")
                return 1
        return _run(args, tests)
    finally:
        remove_hook(hook)


def _classify(result, tests):
    """Splits a run's tests into (failed, expected): ``expected`` maps a test
    id that failed as INSTALL_EXPECTED_FAILURES says (in --install mode) to
    its reason; every other failure, error or unexpected success, and an
    expected failure that passed or failed otherwise, is in ``failed``, with
    what went wrong."""
    texts = {}
    for t, text in result.failures + result.errors:
        texts.setdefault(_base_id(t), []).append(text)
    failed = {_base_id(t): "unexpected success" for t in result.unexpectedSuccesses}
    failed.update({test_id: "failed" for test_id in texts})
    expected = {}
    if INSTALL_MODE:
        for q in tests:
            method = q.split(".")[1]
            if method not in INSTALL_EXPECTED_FAILURES:
                continue
            pattern, reason = INSTALL_EXPECTED_FAILURES[method]
            test_id = next((i for i in set(texts) | set(failed) if i.endswith(f".{q}")), None)
            if test_id is None:
                failed[f"{SHM_CLASS}.{method}"] = f"passed, but shmkit differs here by design: {reason}"
            elif test_id in texts and all(re.search(pattern, tb) for tb in texts[test_id]):
                del failed[test_id]
                expected[test_id] = reason
            else:
                failed[test_id] = f"did not fail as expected ({pattern!r})"
    return failed, expected


def _run(args, tests):
    methods = [m for m in args.start_methods.split(",") if m]
    available = multiprocessing.get_all_start_methods()
    totals = {"run": 0, "skipped": 0}
    lines = []
    problems = []
    first = True
    for method in methods:
        if method not in available:
            lines.append(f"{method:>10}: not available on this platform")
            continue
        if INSTALL_MODE:
            problem = check_child_impl(method)
            if problem:
                problems.append(problem)
                totals["failed"] = totals.get("failed", 0) + 1
        # Plain TestCases (TestResourceTracker) do not use the start method:
        # they run once, with the first one.
        selected = [q for q in tests if first or q.startswith("With")]
        first = False
        result = run_start_method(method, selected, args.verbosity)
        if result is None:
            lines.append(f"{method:>10}: skipped by setUpModule")
            continue
        # A test with failing subtests is one failed test.
        failed, expected = _classify(result, selected)
        skipped = {_base_id(t) for t, _ in result.skipped} - set(failed) - set(expected)
        problems += [f"{method}: {i}: {what}" for i, what in failed.items()]
        problems += [f"{method}: {i}: failed as expected: {why}" for i, why in expected.items()]
        counts = {
            "run": result.testsRun,
            "failed": len(failed),
            "skipped": len(skipped),
            "failures": len(result.failures),
            "errors": len(result.errors),
        }
        if INSTALL_MODE:
            counts["expected failures"] = len(expected)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        lines.append(f"{method:>10}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))

    failed = totals.get("failed", 0)
    expected = totals.get("expected failures", 0)
    passed = totals["run"] - failed - totals["skipped"] - expected
    print(f"\n=== CPython {sys.version.split()[0]} shared-memory conformance, {impl_label()} ===")
    print("\n".join(lines + problems))
    summary = f"conformance: {passed} passed, {failed} failed, {totals['skipped']} skipped"
    if INSTALL_MODE:
        summary += f", {expected} failed as expected"
    print(summary)
    return 0 if totals["run"] and not failed else 1


if __name__ == "__main__":
    # CPython's tests send this very process SIGINT and expect
    # KeyboardInterrupt, which needs Python's handler; a run started as a
    # background job inherits SIGINT ignored, and Python then keeps it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
