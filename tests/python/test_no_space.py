"""A segment larger than the room left in /dev/shm.

The stdlib only ftruncate()s: creation succeeds on a sparse file and the
process dies with SIGBUS when it touches a page tmpfs cannot provide. shmkit
reserves the pages at creation (fallocate), so the same call raises
OSError(ENOSPC) and leaves nothing behind.

Each case runs in a child inside a private mount namespace whose /dev/shm
is a 1 MiB tmpfs, so the machine's /dev/shm is never filled. Needs root and
unshare(1).
"""

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import shm_helpers as h

TMPFS_SIZE = "1m"
BIG = 8 << 20


@functools.lru_cache(maxsize=None)
def _unshare_problem():
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a private mount namespace"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs /dev/shm"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"unshare failed: {e}"
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}"
    return None


def run_in_small_dev_shm(code):
    """Runs ``sys.executable -c code`` where /dev/shm is a fresh 1 MiB tmpfs."""
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    script = f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs /dev/shm && exec "$0" -c "$1"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         sys.executable, textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env=h.child_env(),
    )


@pytest.mark.shmkit_only
@pytest.mark.parametrize("named", [False, True], ids=["generated", "named"])
def test_too_big_raises_enospc(shmkit_mod, named):
    name = "shmkit_t_big" if named else None
    proc = run_in_small_dev_shm(
        f"""
        import json, os
        import {shmkit_mod.__name__} as m
        try:
            shm = m.SharedMemory({name!r}, create=True, size={BIG})
        except OSError as e:
            print(json.dumps({{"type": type(e).__name__, "errno": e.errno,
                              "filename": e.filename, "left": os.listdir("/dev/shm")}}))
        else:
            print(json.dumps({{"created": shm.name, "size": shm.size}}))
            shm.close()
            shm.unlink()
        """
    )
    assert proc.returncode == 0, h.describe(proc)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert "created" not in result, f"created {result} in a {TMPFS_SIZE} /dev/shm"
    assert result["errno"] == errno.ENOSPC, h.describe(proc)
    assert result["left"] == [], "the failed create left its segment behind"
    if named:
        assert result["filename"] == "/" + name


@pytest.mark.shmkit_only
def test_fits_after_failure(shmkit_mod):
    """A refused create frees what it reserved: a segment that fits can be
    made right after, in the same small /dev/shm."""
    proc = run_in_small_dev_shm(
        f"""
        import os
        import {shmkit_mod.__name__} as m
        try:
            m.SharedMemory(create=True, size={BIG})
        except OSError:
            pass
        shm = m.SharedMemory(create=True, size=512 * 1024)
        shm.buf[:] = b"x" * shm.size
        shm.close()
        shm.unlink()
        print("ok", os.listdir("/dev/shm"))
        """
    )
    assert proc.returncode == 0, h.describe(proc)
    assert proc.stdout.split() == ["ok", "[]"]


def test_stdlib_too_big_dies_with_sigbus(stdlib_mod):
    """The contrast: the stdlib creates the 8 MiB segment in a 1 MiB tmpfs,
    then filling it kills the process with SIGBUS."""
    proc = run_in_small_dev_shm(
        f"""
        import {stdlib_mod.__name__} as m
        shm = m.SharedMemory("shmkit_t_big", create=True, size={BIG})
        print("created", shm.size, flush=True)
        shm.buf[:] = b"\\x01" * shm.size
        print("filled", flush=True)
        """
    )
    assert proc.stdout.split() == ["created", str(BIG)], h.describe(proc)
    assert proc.returncode == -signal.SIGBUS, h.describe(proc)


def _sparse_by_stdlib_then_attach(shmkit_mod, reserve):
    """In a 1 MiB /dev/shm: the stdlib makes an 8 MiB sparse segment, then
    shmkit attaches to it (``reserve=`` as given) and fills it."""
    kwargs = "" if reserve is None else f", reserve={reserve!r}"
    return run_in_small_dev_shm(
        f"""
        import json, os
        from multiprocessing import shared_memory as stdlib
        import {shmkit_mod.__name__} as m
        made = stdlib.SharedMemory("shmkit_t_sparse", create=True, size={BIG})
        try:
            shm = m.SharedMemory("shmkit_t_sparse", track=False{kwargs})
        except OSError as e:
            print(json.dumps({{"type": type(e).__name__, "errno": e.errno,
                              "filename": e.filename, "left": os.listdir("/dev/shm")}}), flush=True)
        else:
            print("attached", flush=True)
            shm.buf[:] = b"\\x01" * shm.size
            print("filled", flush=True)
            shm.close()
        # The attach reserved nothing it kept: a segment that fits still fits.
        small = m.SharedMemory(create=True, size=512 * 1024)
        small.buf[:] = b"x" * small.size
        small.close()
        small.unlink()
        made.close()
        made.unlink()
        print("ok", flush=True)
        """
    )


@pytest.mark.shmkit_only
def test_attach_with_reserve_raises_enospc_instead_of_sigbus(shmkit_mod):
    proc = _sparse_by_stdlib_then_attach(shmkit_mod, True)
    assert proc.returncode == 0, h.describe(proc)
    first, last = proc.stdout.splitlines()[0], proc.stdout.splitlines()[-1]
    result = json.loads(first)
    assert result["type"] == "OSError" and result["errno"] == errno.ENOSPC, h.describe(proc)
    assert result["filename"] == "/shmkit_t_sparse"
    assert result["left"] == ["shmkit_t_sparse"]  # the attach removes nothing
    assert last == "ok"


@pytest.mark.parametrize("reserve", [None, False], ids=["default", "reserve_false"])
def test_attach_without_reserve_still_dies_with_sigbus(shmkit_mod, reserve):
    """The default, as the stdlib: an attach reserves nothing (the creator
    normally did), so filling a sparse segment on a full /dev/shm is fatal."""
    proc = _sparse_by_stdlib_then_attach(shmkit_mod, reserve)
    assert proc.stdout.split() == ["attached"], h.describe(proc)
    assert proc.returncode == -signal.SIGBUS, h.describe(proc)
