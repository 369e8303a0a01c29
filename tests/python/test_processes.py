"""A SharedMemory handed to children started by multiprocessing's fork,
spawn and forkserver: by name, as the object itself (pickled by
multiprocessing under spawn and forkserver, inherited under fork), and as
explicit pickle bytes (so that fork exercises unpickling too)."""

import multiprocessing
import pickle

import pytest

import shm_helpers as h

START_METHODS = ["fork", "spawn", "forkserver"]
HOW = ["name", "object", "pickle"]


def _context(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    return multiprocessing.get_context(method)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("method", START_METHODS)
def test_child_writes_parent_sees(impl, segments, method, how):
    ctx = _context(method)
    shm = segments.add(impl.SharedMemory(create=True, size=512))
    payload = f"{method}:{how}".encode()
    if how == "name":
        target, args = h.mp_attach_by_name_and_write, (impl.__name__, shm.name, payload)
    elif how == "object":
        target, args = h.mp_write_to_object, (shm, payload)
    else:
        target, args = h.mp_unpickle_and_write, (pickle.dumps(shm), payload)
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"the {method} child did not finish in 60 s")
    assert p.exitcode == 0
    assert bytes(shm.buf[: len(payload)]) == payload
    assert h.segment_exists(shm.name), "the child's exit must not unlink the segment"


@pytest.mark.parametrize("method", START_METHODS)
def test_child_sees_parent_writes(impl, segments, method):
    ctx = _context(method)
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    shm.buf[0:5] = b"hello"
    # The child copies what it reads to the second half, upper-cased.
    p = ctx.Process(target=_upper_copy, args=(shm,), daemon=True)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert bytes(shm.buf[32:37]) == b"HELLO"


def _upper_copy(shm):
    # A module-level function of a test module: spawn and forkserver children
    # import this file by name, which pytest's sys.path makes possible.
    try:
        shm.buf[32:37] = bytes(shm.buf[0:5]).upper()
    finally:
        shm.close()
