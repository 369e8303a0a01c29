"""numpy arrays over SharedMemory.buf.

The hazard (spec §1.9, numpy#23305): with numpy >= 2, ``np.ndarray(...,
buffer=shm.buf)`` keeps the mmap as its base without holding a buffer export,
so the stdlib's ``close()`` succeeds and unmaps the memory under the array;
the next access segfaults. shmkit must not crash there: either close() raises
BufferError or the memory stays mapped while the array lives. Whatever may
crash runs in a child interpreter.
"""

import json
import signal
import textwrap

import pytest

import shm_helpers as h

np = pytest.importorskip("numpy", reason="numpy is not installed for this interpreter")

VIEW_AFTER_CLOSE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import {module} as m

    name = sys.argv[1]
    shm = m.SharedMemory(name, create=True, size=4096)
    try:
        arr = np.ndarray((512,), dtype=np.int64, buffer=shm.buf)
        arr[:] = 7
        try:
            shm.close()
            closed = True
        except BufferError:
            closed = False
        print(json.dumps({{"closed": closed}}), flush=True)
        total = int(arr.sum())       # read after close()
        arr[0] = 8                   # write after close()
        arr[-1] = 9
        total2 = int(arr.sum())
        print(json.dumps({{"closed": closed, "sum": total, "sum2": total2}}), flush=True)
        del arr
        shm.close()
    finally:
        shm.unlink()
    """
)


def _run_view_after_close(module, segments):
    name = segments.name("np_close")
    proc = h.run_python(VIEW_AFTER_CLOSE.format(module=module), args=[name])
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, lines


@pytest.mark.shmkit_only
def test_ndarray_view_survives_close(shmkit_mod, segments):
    proc, lines = _run_view_after_close(shmkit_mod.__name__, segments)
    assert proc.returncode == 0, h.describe(proc)
    assert lines[-1]["sum"] == 7 * 512, h.describe(proc)
    assert lines[-1]["sum2"] == 7 * 510 + 8 + 9, h.describe(proc)


def test_stdlib_ndarray_view_after_close_segfaults(stdlib_mod, segments):
    """The hazard shmkit fixes, shown in a child: close() succeeds and the
    next access to the array kills the process with SIGSEGV."""
    proc, lines = _run_view_after_close(stdlib_mod.__name__, segments)
    if lines and not lines[0]["closed"]:
        pytest.skip(f"numpy {np.__version__} holds an export: close() raised BufferError")
    assert lines == [{"closed": True}], h.describe(proc)
    assert proc.returncode in (-signal.SIGSEGV, -signal.SIGBUS), h.describe(proc)


def test_frombuffer_blocks_close(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    arr = np.frombuffer(shm.buf, dtype=np.uint8)
    assert arr.size == 64
    with pytest.raises(BufferError):
        shm.close()
    assert int(arr.sum()) == 0  # still readable: nothing was unmapped
    del arr
    shm.close()
    assert shm._fd == -1


def test_frombuffer_writable_view_of_slice(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    arr = np.ndarray((8,), dtype=np.int64, buffer=shm.buf)
    arr[:] = np.arange(8)
    assert bytes(shm.buf[8:16]) == (1).to_bytes(8, "little")
    other = segments.add(impl.SharedMemory(shm.name))
    assert list(np.frombuffer(other.buf, dtype=np.int64)) == list(range(8))
    del arr
