"""The leak tracker never unlinks a segment that a live process still uses,
whoever made it: here a stdlib-only creator (CPython 3.11 and 3.13) keeps
its segment mapped, and shmkit attachers (``track=True``, the default) come
and go, by a normal exit or by SIGKILL. Their watchers must see the stdlib
process's mapping and descriptor, which holds no ``flock``.
"""

import os
import subprocess
import sys
import time

import pytest

import shm_helpers as h

pytestmark = pytest.mark.shmkit_only

# A stdlib-only creator: argv kind ("plain", "list", "numpy": an array over
# buf, "map-only": a mapping of its own made with ctypes, then the
# SharedMemory closed, so that no descriptor is left, only the mapping) and
# "track" or "untrack". Prints the name, then waits for a line:
# "unlink" answers "unlinked" or the exception's name.
CREATOR = r"""if 1:
    import os, sys
    from multiprocessing import resource_tracker, shared_memory as S
    kind, track = sys.argv[1], sys.argv[2] == "track"
    if kind == "list":
        sl = S.ShareableList([1, "two", 3.0, None, b"five"])
        shm = sl.shm
    else:
        shm = S.SharedMemory(create=True, size=4096)
        if kind.startswith("numpy"):
            try:
                import numpy as np
            except ImportError:
                print("no-numpy", flush=True)
                shm.close(); shm.unlink(); sys.exit(0)
            arr = np.ndarray((512,), dtype=np.int64, buffer=shm.buf)
            arr[:] = 7
        elif kind == "map-only":
            import ctypes, mmap
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_long]
            addr = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE,
                             mmap.MAP_SHARED, shm._fd, 0)
            assert addr not in (None, ctypes.c_void_p(-1).value)
            ctypes.memset(addr, 7, 4096)
            shm.close()
    if not track:
        resource_tracker.unregister(shm._name, "shared_memory")
    print(shm.name, flush=True)
    for line in sys.stdin:
        if line.strip() == "unlink":
            try:
                shm.unlink()
            except Exception as e:
                print(type(e).__name__, flush=True)
            else:
                print("unlinked", flush=True)
"""

# A shmkit attacher with the default track=True: attaches, says so, and
# waits for a line (or its SIGKILL).
ATTACHER = r"""if 1:
    import sys
    from shmkit.shared_memory import SharedMemory, ShareableList
    kind, name = sys.argv[1], sys.argv[2]
    obj = ShareableList(name=name) if kind == "list" else SharedMemory(name)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def creator_python(version):
    venv = os.path.join(h.REPO, f".venv-{version}", "bin", "python")
    python = venv if os.access(venv, os.X_OK) else h.find_cpython(version)
    if python is None:
        pytest.skip(f"no CPython {version} found")
    return python


def start_creator(version, kind, track=True):
    p = subprocess.Popen(
        [creator_python(version), "-c", CREATOR, kind, "track" if track else "untrack"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.foreign_env(),
    )
    name = p.stdout.readline().strip()
    if name == "no-numpy":
        p.communicate(timeout=30)
        pytest.skip(f"no numpy for CPython {version}")
    assert name, p.communicate(timeout=30)[1]
    return p, name


def run_attacher(kind, name, kill):
    p = subprocess.Popen(
        [sys.executable, "-c", ATTACHER, kind, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.child_env(),
    )
    assert p.stdout.readline().strip() == "ready", p.communicate(timeout=30)[1]
    if kill:
        p.kill()
        _, err = p.communicate(timeout=30)
    else:
        _, err = p.communicate("go\n", timeout=30)
    return err


@pytest.mark.parametrize("version", ["3.11", "3.13"])
@pytest.mark.parametrize("kind", ["plain", "list", "numpy", "map-only"])
def test_a_live_stdlib_creators_segment_survives_shmkit_attachers(version, kind):
    creator, name = start_creator(version, kind)
    try:
        for kill in (False, True, False):
            err = run_attacher("list" if kind == "list" else "plain", name, kill)
            # The watcher exits last and closes the stderr we read: its
            # decision is made by now; the margin covers its retries.
            time.sleep(0.3)
            assert h.segment_exists(name), f"unlinked under a live stdlib creator:\n{err}"
            assert "still open in another process" in err, err
        creator.stdin.write("unlink\n")
        creator.stdin.flush()
        assert creator.stdout.readline().strip() == "unlinked"
    finally:
        out, err = creator.communicate(timeout=30)
        h.remove_segment(name)
    assert "resource_tracker" not in err, err


@pytest.mark.parametrize("version", ["3.11", "3.13"])
def test_a_segment_whose_every_user_died_is_still_unlinked_within_2s(version):
    # The stdlib creator leaves the segment to others (untracked), dies
    # first, by SIGKILL; then the last user, a tracked shmkit attacher.
    creator, name = start_creator(version, "map-only", track=False)
    try:
        p = subprocess.Popen(
            [sys.executable, "-c", ATTACHER, "plain", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=h.child_env(),
        )
        assert p.stdout.readline().strip() == "ready"
        creator.kill()
        creator.communicate(timeout=30)
        p.kill()
        killed = time.monotonic()
        p.wait()
        left = 2.0 - (time.monotonic() - killed)
        assert h.wait_gone(name, left), "left behind once every user was gone"
        _, err = p.communicate(timeout=30)
        assert "leaked shared_memory objects" in err, err
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.communicate(timeout=30)
        h.remove_segment(name)
