"""SIGKILL at any moment leaks nothing: a child that creates segments in a
loop (or one big segment) is killed at a random moment, and 2 s later no
segment it made is left in /dev/shm.

The child names its segments itself (it patches ``_make_filename``, which
every create without a name looks up, managed and ShareableList ones
included) with a prefix of this test's own, so leftovers are found, and
removed, by that prefix alone. ``SHMKIT_KILL_ROUNDS`` sets the rounds per
scenario (10 by default).
"""

import os
import random
import secrets
import subprocess
import sys
import time

import pytest

import shm_helpers as h

pytestmark = [pytest.mark.kill, pytest.mark.shmkit_only]

ROUNDS = h.kill_rounds()
GRACE = 2.0

# argv: scenario, prefix. The child prints "ready" just before the work
# that is to be interrupted.
CHILD = """if 1:
    import itertools, sys
    from shmkit import shared_memory
    scenario, prefix = sys.argv[1], sys.argv[2]
    counter = itertools.count()
    shared_memory._make_filename = lambda: f"/{prefix}{next(counter)}"
    if scenario == "big":
        print("ready", flush=True)
        shared_memory.SharedMemory(create=True, size=1 << 30)
    elif scenario == "loop":
        print("ready", flush=True)
        while True:
            s = shared_memory.SharedMemory(create=True, size=4096)
            s.close()
            s.unlink()
    elif scenario == "list":
        print("ready", flush=True)
        while True:
            sl = shared_memory.ShareableList([1, "two", 3.0, None, b"five"])
            sl.shm.close()
            sl.shm.unlink()
    elif scenario == "managed":
        from shmkit.managers import SharedMemoryManager
        with SharedMemoryManager() as m:
            print("ready", flush=True)
            while True:
                m.SharedMemory(4096)
    print("done", flush=True)
    sys.stdin.readline()
"""

# When, after "ready", the child is killed: spread over the work it does.
WINDOWS = {
    "big": (0.0, 0.25),  # reserving 1 GiB takes a few tenths of a second
    "loop": (0.0, 0.2),
    "list": (0.0, 0.2),
    "managed": (0.0, 0.2),
}


def leftovers(prefix):
    return sorted(n for n in os.listdir(h.DEV_SHM) if n.startswith(prefix))


def one_round(scenario, prefix, rng):
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, scenario, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=h.child_env(),
    )
    try:
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(*WINDOWS[scenario]))
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stdin.close()
    deadline = time.monotonic() + GRACE
    while leftovers(prefix) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = leftovers(prefix)
    for name in left:
        h.remove_segment(name)  # ours: the prefix is this round's
    return left


@pytest.mark.parametrize("scenario", ["big", "loop", "list", "managed"])
def test_sigkill_at_a_random_moment_leaves_nothing(scenario):
    rng = random.Random()
    failed = []
    for r in range(ROUNDS):
        prefix = f"{h.TEST_PREFIX}{os.getpid()}_kill{r}_{secrets.token_hex(3)}_"
        left = one_round(scenario, prefix, rng)
        if left:
            failed.append((r, left))
    assert not failed, f"{len(failed)} of {ROUNDS} rounds left segments 2 s after SIGKILL: {failed}"
