"""The suite's own bookkeeping (conftest.dev_shm_unchanged, shm_helpers'
record of created names): a test removes, and reports as leaks, only the
segments it made; anyone else's, even with a generated ``psm_`` name and
nobody holding it, survives its teardown. So two runs of the suite, or the
suite and someone else's program, can share one /dev/shm.

Each check runs whole pytest sessions in subprocesses, since what is tested
is what happens after a test, at its teardown.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import shm_helpers as h

HERE = os.path.dirname(os.path.abspath(__file__))
INNER = "SHMKIT_HARNESS_INNER"  # path of a file the inner test writes to

# A process outside any session's bookkeeping: a plain stdlib program that
# makes segments and leaves them, untracked, held by nobody (the case that a
# suite judging by name would take for its own leak). Prints each name.
FOREIGN = r"""
import signal, sys, time
from multiprocessing import shared_memory, resource_tracker

# SIGTERM ends the loop between two segments, never between a create and
# the print that tells the test which name to clean up.
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

def make():
    if sys.version_info >= (3, 13):
        shm = shared_memory.SharedMemory(create=True, size=64, track=False)
    else:
        shm = shared_memory.SharedMemory(create=True, size=64)
        resource_tracker.unregister(shm._name, "shared_memory")
    shm.close()
    print(shm.name, flush=True)

count, interval = int(sys.argv[1]), float(sys.argv[2])
for _ in range(count):
    if stop:
        break
    make()
    time.sleep(interval)
"""


def foreign_env():
    """The environment of a program that is not part of any test session."""
    env = h.child_env()
    env.pop(h.CREATED_LOG_ENV, None)
    env.pop(INNER, None)
    return env


def pytest_session(args, env):
    """Starts ``python -m pytest -q ARGS`` with SIGINT at its default, even
    if this run inherited it ignored (a background job): the sessions must
    behave as one started from a terminal would."""
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'pytest', *sys.argv[1:]])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", launcher, "-q", "-p", "no:cacheprovider", *args],
        cwd=h.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def session_env():
    # This session's record is in the environment; conftest must give a new
    # session a fresh one regardless, or the sessions would share a record
    # and take each other's segments for their own.
    return h.child_env()


@pytest.mark.skipif(not os.environ.get(INNER), reason="run by test_own_leak_removed_foreign_segment_kept")
def test_inner_own_leak_and_foreign_segment(stdlib_mod):
    """Leaks one segment of its own and has an unrelated process make
    another while it runs; the outer test checks what teardown did."""
    foreign = subprocess.run(
        [sys.executable, "-c", FOREIGN, "1", "0"],
        env=foreign_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    if h.has_track(stdlib_mod):
        shm = stdlib_mod.SharedMemory(create=True, size=64, track=False)
    else:
        shm = stdlib_mod.SharedMemory(create=True, size=64)
        h.untrack(stdlib_mod, shm)
    shm.close()  # and no unlink: a leak of this test's own
    with open(os.environ[INNER], "w") as f:
        json.dump({"foreign": foreign, "own": shm.name}, f)


def test_own_leak_removed_foreign_segment_kept(tmp_path, segments):
    out = tmp_path / "inner.json"
    env = session_env()
    env[INNER] = str(out)
    proc = pytest_session(
        [os.path.join(HERE, "test_harness.py") + "::test_inner_own_leak_and_foreign_segment"], env
    )
    output, _ = proc.communicate(timeout=300)
    names = json.loads(out.read_text())
    for name in names["foreign"]:
        segments.add_name(name)  # made by this test's subprocess: ours to remove now
    segments.add_name(names["own"])  # in case the inner teardown failed to
    assert proc.returncode == 1, output
    assert f"the test left 1 new entries in /dev/shm (now removed): ['{names['own']}']" in output
    assert not h.segment_exists(names["own"]), "the inner test's own leak was not removed"
    for name in names["foreign"]:
        assert h.segment_exists(name), f"{name}, made by an unrelated process, was removed"


def test_two_sessions_at_once_leave_others_alone(segments):
    """Two sessions on one /dev/shm, as two `make test` without a private
    one, while an unrelated program keeps making (and leaving) segments:
    both pass, and every one of that program's segments survives, as does a
    sentinel made before they started."""
    sentinel = subprocess.run(
        [sys.executable, "-c", FOREIGN, "1", "0"],
        env=foreign_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    for name in sentinel:
        segments.add_name(name)
    churner = subprocess.Popen(
        [sys.executable, "-c", FOREIGN, "100000", "0.02"],
        env=foreign_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    subset = [
        os.path.join(HERE, "test_shared_memory.py"),
        "-k",
        "generated or two_handles or pickle or unlink or create_existing",
    ]
    try:
        sessions = [pytest_session(subset, session_env()) for _ in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in sessions]
    finally:
        churner.send_signal(signal.SIGTERM)
        made, _ = churner.communicate(timeout=60)
    made = made.split()
    for name in made:
        segments.add_name(name)
    for p, output in zip(sessions, outputs):
        assert p.returncode == 0, output
        assert " passed" in output, output
    assert len(made) > 10, "the unrelated program made too few segments to prove anything"
    gone = [n for n in sentinel + made if not h.segment_exists(n)]
    assert gone == [], f"the sessions removed {len(gone)} segments they did not make: {gone[:5]}"
