"""shmkit.numpy: arrays in shared memory that travel between processes by
name, and free themselves when the last process lets go.

Every test checks the segments it made by name (``name_of``), so none
depends on what else is in /dev/shm."""

import gc
import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

np = pytest.importorskip("numpy")
snp = pytest.importorskip("shmkit.numpy")

import shm_helpers as h  # noqa: E402

METHODS = ["fork", "spawn", "forkserver"]


def gone_soon(name, timeout=2.0):
    return h.wait_gone(name, timeout)


def collect():
    gc.collect()


@pytest.fixture(params=METHODS)
def ctx(request):
    return mp.get_context(request.param)


# -- the arrays themselves --------------------------------------------------


def test_constructors_give_shared_arrays_with_numpys_values():
    cases = [
        (snp.zeros((3, 4)), np.zeros((3, 4))),
        (snp.ones(5, dtype=np.int16), np.ones(5, dtype=np.int16)),
        (snp.full((2, 2), 7.5, dtype=np.float32), np.full((2, 2), 7.5, dtype=np.float32)),
        (snp.empty((2, 3), dtype=np.uint8).__imul__(0), np.zeros((2, 3), np.uint8)),
        (snp.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]])),
        (snp.asarray([True, False]), np.array([True, False])),
        (snp.copy(np.arange(6.0).reshape(2, 3).T), np.arange(6.0).reshape(2, 3).T),
        (snp.zeros_like(np.ones((2, 5), np.complex64)), np.zeros((2, 5), np.complex64)),
        (snp.ones_like(np.ones(3, np.float16)), np.ones(3, np.float16)),
        (snp.full_like(np.ones(3, np.int64), -2), np.full(3, -2, np.int64)),
        (snp.empty_like(np.ones((0, 3))), np.ones((0, 3))),
        (snp.array(np.array([b"ab", b"cde"])), np.array([b"ab", b"cde"])),
        (snp.array(np.array(["x", "yzé"])), np.array(["x", "yzé"])),
    ]
    names = []
    for got, want in cases:
        assert snp.is_shared(got) and type(got) is np.ndarray
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        names.append(snp.name_of(got))
    # A Fortran-ordered source stays Fortran-ordered.
    assert cases[6][0].flags.f_contiguous and not cases[6][0].flags.c_contiguous
    del cases, got, want
    collect()
    assert gone_soon(names)


def test_unsupported_dtypes_are_refused_clearly():
    with pytest.raises(TypeError, match="holds bool, integer"):
        snp.zeros(3, dtype=object)
    with pytest.raises(TypeError, match="holds bool, integer"):
        snp.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
    with pytest.raises(TypeError, match="holds bool, integer"):
        snp.array(np.array(["2020-01-01"], dtype="datetime64[D]"))


def test_asarray_returns_a_shared_array_itself():
    a = snp.array(np.arange(10))
    assert snp.asarray(a) is a
    b = snp.asarray(a, dtype=np.float64)
    assert b is not a and snp.is_shared(b) and b.dtype == np.float64
    assert not snp.is_shared(np.arange(3)) and not snp.is_shared([1])


def test_open_by_name_sees_the_same_memory_in_an_unrelated_process():
    name = h.unique_name("np_open")
    a = snp.zeros((4, 4), dtype=np.int32, name=name)
    assert snp.name_of(a) == name
    code = textwrap.dedent(f"""
        import shmkit.numpy as snp
        b = snp.open({name!r})
        assert b.shape == (4, 4) and b.dtype.str == '<i4', (b.shape, b.dtype)
        b[1, :] = 5
        print(int(b.sum()))
    """)
    proc = h.run_python(code)
    assert proc.returncode == 0, h.describe(proc)
    assert proc.stdout.strip() == "20"
    assert proc.stderr == ""
    assert a[1].tolist() == [5, 5, 5, 5] and a.sum() == 20
    del a
    collect()
    assert gone_soon(name)


def test_plain_pickle_copies_the_values():
    a = snp.array(np.arange(12.0).reshape(3, 4))
    name = snp.name_of(a)
    data = pickle.dumps(a[:, 1:3])
    assert name.encode() not in data
    b = pickle.loads(data)
    assert not snp.is_shared(b)
    np.testing.assert_array_equal(b, a[:, 1:3])
    b[...] = -1
    assert a.min() == 0


def test_the_segment_lives_while_any_view_does_and_no_longer():
    a = snp.ones((100, 10))
    name = snp.name_of(a)
    s = a[::7, 3]
    t = s.reshape(-1, 1)[2:]
    del a, s
    collect()
    assert h.segment_exists(name)
    assert t.sum() == t.size
    del t
    collect()
    assert not h.segment_exists(name)


def test_keep_and_unlink_give_explicit_control():
    a = snp.zeros(3)
    name = snp.name_of(a)
    snp.keep(a)
    del a
    collect()
    assert h.segment_exists(name)
    b = snp.open(name)
    snp.unlink(b)
    assert not h.segment_exists(name)
    b[0] = 1  # views of an unlinked segment keep working
    assert b.sum() == 1


def test_bad_descriptors_are_refused_with_clear_errors():
    import shmkit

    shm = shmkit.SharedMemory(h.unique_name("np_bad"), create=True, size=8192)
    try:
        with pytest.raises(ValueError, match="no shmkit object"):
            snp.open(shm.name)
        a = snp.zeros(4, dtype=np.int64)
        head = bytearray(h.segment_bytes(snp.name_of(a))[:4096])
        del a
        # The same descriptor with a dtype string numpy would read but
        # shmkit's decoder does not know, then with a shape beyond the data.
        head[104:107] = b"<q8"
        shm.buf[:4096] = bytes(head)
        with pytest.raises(ValueError, match="not a simple numpy dtype"):
            snp.open(shm.name)
        head[104:107] = b"<i8"
        head[136:144] = (1 << 40).to_bytes(8, "little")
        shm.buf[:4096] = bytes(head)
        with pytest.raises(ValueError, match="does not match"):
            snp.open(shm.name)
    finally:
        shm.unlink()
        shm.close()


def test_a_forged_transfer_outside_the_array_is_refused():
    a = snp.zeros(16, dtype=np.uint8)
    reduce, args = snp._reduce(a)
    name, ino, _, _, _, dt, ro = args
    with pytest.raises((ValueError, TypeError)):
        reduce(name, ino, 8, (16,), (1,), dt, ro)
    with pytest.raises((ValueError, TypeError)):
        reduce(name, ino, 0, (4,), (-8,), dt, ro)
    a[0] = 1  # the sender's array is untouched


# -- travel by name ----------------------------------------------------------


def test_process_arguments_are_views_of_the_same_memory(ctx):
    a = snp.zeros((6, 6), dtype=np.int64)
    name = snp.name_of(a)
    views = [a, a[1:3], a[::2, ::3], a.T[4]]
    for v in views:
        p = ctx.Process(target=h.np_add_in_child, args=(v, 1))
        p.start()
        p.join(30)
        assert p.exitcode == 0
    want = np.zeros((6, 6), np.int64)
    for v in [want, want[1:3], want[::2, ::3], want.T[4]]:
        v += 1
    np.testing.assert_array_equal(a, want)
    del a, views, v
    collect()
    assert gone_soon(name)


def test_pool_map_over_slices_shares_memory(ctx):
    a = snp.array(np.arange(64 * 100, dtype=np.float64).reshape(64, 100))
    name = snp.name_of(a)
    with ctx.Pool(2) as pool:
        got = pool.starmap(h.np_sum_and_add, [(a[i], 1.0) for i in range(64)])
        sums = pool.map(h.np_sum, [a[:, j] for j in range(0, 100, 9)])
    want = np.arange(64 * 100, dtype=np.float64).reshape(64, 100)
    assert [g[0] for g in got] == [float(r.sum()) for r in want]
    assert all(g[1] for g in got)
    np.testing.assert_array_equal(a, want + 1)
    assert sums == [float((want + 1)[:, j].sum()) for j in range(0, 100, 9)]
    del a
    collect()
    assert gone_soon(name)


def test_process_pool_executor_shares_memory(ctx):
    a = snp.ones((1000, 8))
    name = snp.name_of(a)
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futs = [ex.submit(h.np_sum_and_add, a[i::4], 2.0) for i in range(4)]
        res = [f.result() for f in futs]
    assert [r[0] for r in res] == [2000.0] * 4 and all(r[1] for r in res)
    assert (a == 3).all()
    del a
    collect()
    assert gone_soon(name)


def test_queue_round_trip_and_a_sender_that_drops_at_once(ctx):
    inq, outq = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.np_queue_worker, args=(inq, outq))
    p.start()
    names = []
    for n in (1, 10, 1000):
        a = snp.array(np.arange(n, dtype=np.float64))
        names.append(snp.name_of(a))
        inq.put(a[::2])
        del a  # dropped before the worker even received it
        collect()
    results = [outq.get(timeout=30) for _ in range(3)]
    inq.put(None)
    p.join(30)
    assert p.exitcode == 0
    assert results == [
        (2 * float(np.arange(n, dtype=np.float64)[::2].sum()), True) for n in (1, 10, 1000)
    ]
    assert gone_soon(names)


def test_an_array_sent_by_a_process_that_exits_at_once_arrives(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=h.np_send_fresh_and_exit, args=(q, 5000))
    p.start()
    time.sleep(0.5)  # the sender is gone or going before we look
    a = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert snp.is_shared(a) and a.tolist() == list(range(5000))
    name = snp.name_of(a)
    del a
    collect()
    assert gone_soon(name)


def test_pipe_sends_views_both_ways(ctx):
    here, there = ctx.Pipe()
    p = ctx.Process(target=h.np_pipe_echo, args=(there,))
    p.start()
    a = snp.array(np.arange(1, 37, dtype=np.int32).reshape(6, 6))
    name = snp.name_of(a)
    v = a[1::2, ::-2]  # non-contiguous, negative strides
    here.send(v)
    back = here.recv()
    here.send(None)
    p.join(30)
    assert p.exitcode == 0
    assert back.base is not None and snp.name_of(back) == name
    np.testing.assert_array_equal(back, v)
    back[0, 0] = 1000
    assert v[0, 0] == 1000
    want = np.arange(1, 37, dtype=np.int32).reshape(6, 6)
    want[1::2, ::-2] *= -1
    want[1, -1] = 1000
    np.testing.assert_array_equal(a, want)
    del a, v, back
    collect()
    assert gone_soon(name)


def test_a_manager_proxy_passes_arrays_by_name():
    with mp.get_context("spawn").Manager() as m:
        d = m.dict()
        a = snp.zeros(10)
        d["a"] = a[2:5]
        back = d["a"]
        back[:] = 4
    assert a.sum() == 12


def test_read_only_arrays_cannot_be_written_by_receivers(ctx):
    ro = snp.array(np.arange(10), readonly=True)
    assert not ro.flags.writeable
    with pytest.raises(ValueError):
        ro.flags.writeable = True
    rw = snp.array(np.arange(10))
    frozen = rw[2:8].view()
    frozen.flags.writeable = False
    with ctx.Pool(1) as pool:
        out_ro = pool.apply(h.np_try_write, (ro[1:],))
        out_frozen = pool.apply(h.np_try_write, (frozen,))
        out_rw = pool.apply(h.np_try_write, (rw[:2],))
    assert out_ro[0] and out_ro[1].startswith("refused") and out_ro[2].startswith("refused")
    assert out_frozen[1].startswith("refused") and out_frozen[2].startswith("refused")
    assert out_rw[1] == "wrote"
    assert ro.tolist() == list(range(10))
    assert rw.tolist() == [7, 7] + list(range(2, 10))
    # A read-only array is read-only for open() too.
    assert not snp.open(snp.name_of(ro)).flags.writeable


def test_a_holder_in_another_process_keeps_the_segment(ctx):
    q, ack, ev = ctx.Queue(), ctx.Queue(), ctx.Event()
    p = ctx.Process(target=h.np_hold_until, args=(q, ack, ev))
    p.start()
    a = snp.ones(1000)
    name = snp.name_of(a)
    q.put(a)
    assert ack.get(timeout=30) == 1000.0
    del a
    collect()
    time.sleep(0.2)
    assert h.segment_exists(name)
    ev.set()
    p.join(30)
    assert p.exitcode == 0
    assert gone_soon(name)


# -- lifetime in separate interpreters, with stderr watched -------------------


def run_script(code, env_extra=None, timeout=60):
    env = h.child_env(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_a_transfer_nobody_receives_is_freed_once_its_pin_lapses():
    name = h.unique_name("np_lost")
    proc = run_script(f"""
        import gc, os, time
        from multiprocessing.reduction import ForkingPickler
        import numpy as np
        import shmkit.numpy as snp
        snp.PIN_SECONDS = 0.5
        a = snp.ones(100, name={name!r})
        data = ForkingPickler.dumps(a[3:])  # sent to a receiver that died
        del a; gc.collect()
        assert os.path.exists('/dev/shm/{name}'), 'freed while in flight'
        deadline = time.monotonic() + 5
        while os.path.exists('/dev/shm/{name}') and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists('/dev/shm/{name}'), 'still there after the pin'
        try:
            ForkingPickler.loads(data)
        except FileNotFoundError:
            print('late receiver told')
    """)
    assert proc.returncode == 0, h.describe(proc)
    assert proc.stdout.strip() == "late receiver told"
    assert proc.stderr == ""


@pytest.mark.skip(
    reason="open defect: now and then a process outlives this program and holds its "
    "stdout for over a minute (seen under pytest only); skipped until it is found"
)
def test_a_typical_program_leaves_nothing_and_says_nothing():
    name = h.unique_name("np_prog")
    proc = run_script(f"""
        import multiprocessing as mp
        import numpy as np
        import shmkit.numpy as snp
        if __name__ == '__main__':
            big = snp.array(np.arange(1 << 16, dtype=np.float64), name={name!r})
            kept = big[::3]
            pool = mp.get_context('spawn').Pool(2)
            print(sum(pool.map(np.sum, [big[i::8] for i in range(8)])))
            pool.close()
            pool.join()
            q = mp.get_context('fork').Queue()
            q.put(kept)
            got = q.get()
            print(float(got.sum()) == float(kept.sum()))
            # Still alive at exit: freed by the exit hook, silently.
    """)
    assert proc.returncode == 0, h.describe(proc)
    assert proc.stdout.split() == [str(float(np.arange(1 << 16).sum())), "True"]
    assert proc.stderr == "", proc.stderr
    assert gone_soon(name)


@pytest.mark.kill
@pytest.mark.parametrize("method", METHODS)
def test_sigkill_of_holders_at_random_moments_leaves_nothing(method):
    owner = textwrap.dedent("""
        import multiprocessing as mp, os, sys, time
        import shm_helpers as h
        import shmkit.numpy as snp
        if __name__ == '__main__':
            ctx = mp.get_context(sys.argv[2])
            a = snp.ones((256, 256), name=sys.argv[1])
            q = ctx.Queue()
            kids = [ctx.Process(target=h.np_hold_while_alive, args=(q, os.getpid()))
                    for _ in range(2)]
            for k in kids:
                k.start()
                print(k.pid, flush=True)
            for k in kids:
                q.put(a[k.pid % 7:])
            if sys.argv[3] == 'drop':
                del a
            time.sleep(30)
    """)
    rng = random.Random()
    for round_ in range(h.kill_rounds()):
        name = h.unique_name("np_kill")
        with tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(
                [sys.executable, "-c", owner, name, method, rng.choice(["drop", "keep"])],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=h.child_env(),
            )
            kids = []
            delay = rng.uniform(0, 0.6)
            deadline = time.monotonic() + delay
            # Read children's pids as they come, until it is time to kill.
            os.set_blocking(p.stdout.fileno(), False)
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if line.strip():
                    kids.append(int(line))
                else:
                    time.sleep(0.005)
            victims = [p.pid] + kids
            rng.shuffle(victims)
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(rng.uniform(0, 0.05))
            p.wait(10)
            # Children not killed yet exit once orphaned, and let go.
            ok = h.wait_gone(name, 2)
            held = [] if ok else h.holders_of(name)
            if not ok:
                h.remove_segment(name)
            assert ok, (
                f"round {round_}: {name} left after the holders died "
                f"(delay {delay:.3f}, owner {p.pid}, children {kids}): {held}"
            )
            time.sleep(0.05)
            err.seek(0)
            text = err.read()
            # The stdlib's own tracker may report the Queue's semaphores.
            assert "shared_memory" not in text, text
