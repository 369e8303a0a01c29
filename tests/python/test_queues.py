"""shmkit.queues: multiprocessing.Queue's API over a ring in shared memory.

Every test runs real processes where processes matter: unrelated ones
attaching by name, fork/spawn/forkserver children given the queue as an
argument, a Pool initializer, a Rust program (crates/shmkit/examples/
queue_peer.rs) on the other end, and processes SIGKILLed at random moments
(marker ``kill``). Queues are made under this session's names
(``shm_helpers.unique_name``), and each test checks that no segment of its
queue (the queue's own, or a large item's ``<name>_<n>``) is left behind.
"""

import multiprocessing as mp
import os
import pickle
import queue as stdlib_queue
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

import shm_helpers as h

queues = pytest.importorskip("shmkit.queues", reason="shmkit is not built")

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]
SMALL = (1, "abc", 2.5, b"x" * 32)


def leftovers(name):
    """Segments in /dev/shm that belong to queue ``name``: its own and its
    large items'."""
    return sorted(
        e for e in os.listdir(h.DEV_SHM) if e == name or e.startswith(name + "_")
    )


@pytest.fixture
def qname():
    """A fresh queue name of this session's; at teardown, the queue and its
    large items' segments must be gone (they are removed, then reported)."""
    name = h.unique_name("q")
    yield name
    left = leftovers(name)
    for entry in left:
        h.remove_segment(entry)
    assert left == [] or left == [name], f"buffer segments left behind: {left}"


def make(qname, maxsize=0, **kw):
    return queues.Queue(maxsize, name=qname, create=True, **kw)


# --------------------------------------------------------------------------
# One process


def test_items_come_out_in_order_and_equal(qname):
    q = make(qname)
    items = [SMALL, None, 0, "é" * 100, list(range(50)), {"a": (1, 2)}, b"", bytearray(b"xy")]
    for it in items:
        q.put(it)
    assert q.qsize() == len(items)
    assert [q.get() for _ in items] == items
    assert q.empty()
    q.unlink()
    assert not h.segment_exists(qname)


def test_empty_and_full_edges(qname):
    q = make(qname, maxsize=2)
    with pytest.raises(stdlib_queue.Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.01)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(stdlib_queue.Full):
        q.put_nowait(3)
    with pytest.raises(stdlib_queue.Full):
        q.put(3, timeout=0.01)
    with pytest.raises(stdlib_queue.Full):
        q.put(3, block=False)
    assert q.get() == 1
    q.put(3)
    assert [q.get(), q.get()] == [2, 3]
    assert q.empty() and not q.full()
    q.unlink()


def test_the_ring_bounds_bytes_when_maxsize_does_not(qname):
    q = make(qname, capacity=4096)
    n = 0
    while True:
        try:
            q.put_nowait(b"y" * 100)
        except stdlib_queue.Full:
            break
        n += 1
    assert 20 < n < 4096 // 100
    assert q.full()
    assert q.get() == b"y" * 100
    q.put_nowait(b"y" * 100)
    q.unlink()


def test_put_and_get_after_close_raise_value_error(qname):
    q = make(qname)
    q.put(1)
    with pytest.raises(AssertionError):
        q.join_thread()
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(2)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q.join_thread()
    q.cancel_join_thread()
    other = queues.Queue(name=qname)
    assert other.get() == 1
    q.unlink()


def test_attach_by_name_sees_one_queue(qname):
    q = make(qname, maxsize=7, capacity=8192)
    other = queues.Queue(name=qname)
    assert (other.maxsize, other.capacity) == (7, 8192)
    q.put("hello")
    assert other.get() == "hello"
    with pytest.raises(FileNotFoundError):
        queues.Queue(name=qname + "_missing")
    with pytest.raises(ValueError):
        queues.Queue(capacity=1 << 40)
    q.unlink()


def test_a_segment_of_another_kind_is_refused(qname, segments):
    from shmkit import shared_memory

    shm = segments.add(shared_memory.SharedMemory(segments.name("plain"), create=True, size=4096))
    with pytest.raises(OSError, match="not a queue|no shmkit object"):
        queues.Queue(name=shm.name)


def test_put_many_and_get_many_move_batches(qname):
    q = make(qname)
    items = [(i, str(i)) for i in range(3000)]
    q.put_many(items)
    assert q.qsize() == 3000
    got = []
    while len(got) < 3000:
        got += q.get_many(1000)
    assert got == items
    with pytest.raises(stdlib_queue.Empty):
        q.get_many(10, timeout=0.01)
    q.unlink()


def test_put_many_into_a_bounded_queue_says_how_many_went_in(qname):
    q = make(qname, maxsize=5)
    with pytest.raises(stdlib_queue.Full) as e:
        q.put_many(range(8), timeout=0.05)
    assert e.value.args == (5,)
    assert q.get_many(100) == [0, 1, 2, 3, 4]
    q.unlink()


def test_raw_bytes_and_pickles_share_a_queue(qname):
    q = make(qname)
    q.put_bytes(b"\x00raw")
    q.put_bytes(memoryview(b"view"))
    q.put(b"\x00raw")
    assert q.get() == b"\x00raw"  # a raw record comes back as bytes
    assert q.get_bytes() == b"view"
    assert pickle.loads(q.get_bytes()) == b"\x00raw"
    q.unlink()


def test_an_item_larger_than_the_ring_goes_through_a_segment(qname):
    q = make(qname, capacity=4096)
    big = [str(i) for i in range(20000)]  # a pickle of ~150 KB, no buffers
    q.put(big)
    q.put(b"z" * 300_000)  # a buffer, out of band
    assert q.get() == big
    assert q.get() == b"z" * 300_000
    assert leftovers(qname) == [qname]
    with pytest.raises(ValueError, match="does not fit"):
        q.put_bytes(b"r" * 4096)
    q.unlink()


def test_queue_pickles_by_name(qname):
    q = make(qname, maxsize=3)
    again = pickle.loads(pickle.dumps(q))
    assert type(again) is queues.Queue and again.name == qname and again.maxsize == 3
    s = queues.SimpleQueue(name=h.unique_name("sq"), create=True)
    s2 = pickle.loads(pickle.dumps(s))
    s.put(1)
    assert type(s2) is queues.SimpleQueue and s2.get() == 1
    s.unlink()
    q.unlink()


def test_joinable_queue_counts_tasks(qname):
    q = queues.JoinableQueue(name=qname, create=True)
    with pytest.raises(ValueError, match="too many"):
        q.task_done()
    q.put(1)
    q.put(2)
    q.get()
    q.task_done()
    q.get()
    q.task_done()
    q.join()
    with pytest.raises(ValueError):
        q.task_done()
    q.unlink()


# --------------------------------------------------------------------------
# Other processes


def _consume_n(q, n, out):
    for _ in range(n):
        out.put(q.get(timeout=30))


def _produce(q, tag, n):
    for i in range(n):
        q.put((tag, i))


@pytest.mark.parametrize("method", METHODS)
def test_children_get_the_queue_as_an_argument(method, qname):
    ctx = mp.get_context(method)
    q = make(qname)
    back = queues.Queue(name=h.unique_name("back"), create=True)
    try:
        procs = [ctx.Process(target=_produce, args=(q, t, 200)) for t in range(2)]
        procs.append(ctx.Process(target=_consume_n, args=(q, 400, back)))
        for p in procs:
            p.start()
        got = [back.get(timeout=60) for _ in range(400)]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert sorted(got) == sorted((t, i) for t in range(2) for i in range(200))
        for t in range(2):
            assert [i for (tt, i) in got if tt == t] == list(range(200))
    finally:
        back.unlink()
        q.unlink()


_POOL_QUEUE = None


def _pool_init(q):
    global _POOL_QUEUE
    _POOL_QUEUE = q


def _pool_work(x):
    _POOL_QUEUE.put(x * x)
    return os.getpid()


@pytest.mark.parametrize("method", METHODS)
def test_a_pool_initializer_receives_the_queue(method, qname):
    q = make(qname)
    try:
        with mp.get_context(method).Pool(2, initializer=_pool_init, initargs=(q,)) as pool:
            pool.map(_pool_work, range(20))
        assert sorted(q.get_many(100, timeout=10)) == [x * x for x in range(20)]
    finally:
        q.unlink()


def test_an_unrelated_process_attaches_by_name(qname):
    q = make(qname)
    q.put({"from": "parent"})
    code = (
        "import sys; from shmkit.queues import Queue\n"
        "q = Queue(name=sys.argv[1], track=False)\n"
        "print(q.get(timeout=10)['from'])\n"
        "q.put(('child', 42))\n"
    )
    proc = h.run_python(code, args=(qname,))
    assert proc.returncode == 0, h.describe(proc)
    assert proc.stdout.strip() == "parent"
    assert q.get(timeout=10) == ("child", 42)
    q.unlink()


def test_a_queue_its_creator_left_behind_is_removed_by_the_tracker(qname):
    code = (
        "import sys; from shmkit.queues import Queue\n"
        "q = Queue(name=sys.argv[1], create=True)\n"
        "q.put(b'left behind')\n"
    )
    proc = h.run_python(code, args=(qname,))
    assert proc.returncode == 0, h.describe(proc)
    assert h.wait_gone(qname, 30), "the tracker did not remove the queue"


def _many_producer(q, tag, n):
    for i in range(0, n, 10):
        if i % 20:
            q.put_many([(tag, j) for j in range(i, min(i + 10, n))])
        else:
            for j in range(i, min(i + 10, n)):
                q.put((tag, j))
    q.put(None)


def _many_consumer(q, out):
    """Takes batches until it sees an end marker (one per producer); the
    markers beyond its own go back for the other consumers."""
    got = []
    while True:
        ends = 0
        for item in q.get_many(50):
            if item is None:
                ends += 1
            else:
                got.append(item)
        if ends:
            for _ in range(ends - 1):
                q.put(None)
            out.put(got)
            return


def test_many_producers_and_consumers_account_for_every_item(qname):
    ctx = mp.get_context("fork" if "fork" in METHODS else "spawn")
    q = make(qname, maxsize=64)
    out = queues.Queue(name=h.unique_name("out"), create=True)
    n = 2000
    try:
        producers = [ctx.Process(target=_many_producer, args=(q, t, n)) for t in range(4)]
        consumers = [ctx.Process(target=_many_consumer, args=(q, out)) for _ in range(4)]
        for p in producers + consumers:
            p.start()
        got = []
        for _ in range(4):
            got += out.get(timeout=120)
        for p in producers + consumers:
            p.join(60)
            assert p.exitcode == 0
        assert sorted(got) == sorted((t, i) for t in range(4) for i in range(n))
    finally:
        out.unlink()
        q.unlink()


def test_a_blocked_get_wakes_for_a_put_from_another_process(qname):
    q = make(qname)
    code = (
        "import sys, time; from shmkit.queues import Queue\n"
        "q = Queue(name=sys.argv[1], track=False)\n"
        "time.sleep(0.2); q.put('late')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, qname], env=h.child_env())
    try:
        assert q.get(timeout=30) == "late"
    finally:
        child.wait(30)
        q.unlink()


def test_ctrl_c_interrupts_a_blocked_get(qname):
    q = make(qname)
    code = (
        "import sys; from shmkit.queues import Queue\n"
        "q = Queue(name=sys.argv[1], track=False)\n"
        "print('waiting', flush=True)\n"
        "try:\n"
        "    q.get()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, qname],
        env=h.child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted"
        assert child.wait(30) == 0
        assert q.empty()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        q.unlink()


def _join_worker(q):
    while True:
        item = q.get()
        q.task_done()
        if item is None:
            return


def test_joinable_queue_join_waits_for_other_processes(qname):
    ctx = mp.get_context("fork" if "fork" in METHODS else "spawn")
    q = queues.JoinableQueue(name=qname, create=True)
    for i in range(100):
        q.put(i)
    q.put(None)
    p = ctx.Process(target=_join_worker, args=(q,))
    p.start()
    q.join()
    assert q.empty()
    p.join(30)
    assert p.exitcode == 0
    q.unlink()


# --------------------------------------------------------------------------
# numpy arrays and large buffers


def _maps_of(prefix):
    with open("/proc/self/maps") as f:
        return [line for line in f if f"/dev/shm/{prefix}_" in line]


def test_numpy_arrays_travel_out_of_band_and_are_freed(qname):
    np = pytest.importorskip("numpy")
    q = make(qname, capacity=1 << 16)
    a = np.arange(1 << 20, dtype=np.int64)
    small = np.arange(10)
    q.put({"a": a, "small": small, "again": a[::2].copy()})
    assert len(leftovers(qname)) == 3  # the queue and two buffer segments
    got = q.get()
    assert leftovers(qname) == [qname]  # the receiver unlinked them at once
    assert np.array_equal(got["a"], a) and np.array_equal(got["small"], small)
    assert np.array_equal(got["again"], a[::2])
    assert got["a"].flags.writeable
    got["a"][0] = 99
    assert len(_maps_of(qname)) >= 2
    del got
    import gc

    gc.collect()
    assert _maps_of(qname) == []
    q.unlink()


@pytest.mark.parametrize("method", METHODS)
def test_numpy_arrays_reach_children(method, qname):
    np = pytest.importorskip("numpy")
    ctx = mp.get_context(method)
    q = make(qname)
    back = queues.Queue(name=h.unique_name("back"), create=True)
    try:
        p = ctx.Process(target=_consume_n, args=(q, 2, back))
        p.start()
        arrays = [np.full((256, 1024), i, dtype=np.float64) for i in range(2)]
        for arr in arrays:
            q.put(arr)
        for arr in arrays:
            assert np.array_equal(back.get(timeout=60), arr)
        p.join(60)
        assert p.exitcode == 0
        assert leftovers(qname) == [qname]
    finally:
        back.unlink()
        q.unlink()


def test_unlink_removes_large_items_still_queued(qname):
    q = make(qname)
    q.put(b"q" * 200_000)
    q.put(bytearray(200_000))
    assert len(leftovers(qname)) == 3
    q.unlink()
    assert leftovers(qname) == []


# --------------------------------------------------------------------------
# Rust on the other end


def _rust_peer():
    """The queue_peer example, built if needed; skips without cargo."""
    exe = os.path.join(h.REPO, "target", "debug", "examples", "queue_peer")
    cargo = shutil.which("cargo")
    if cargo is None and not os.path.exists(exe):
        pytest.skip("cargo is not installed and queue_peer is not built")
    if cargo is not None:
        proc = subprocess.run(
            [cargo, "build", "-q", "-p", "shmkit", "--example", "queue_peer"],
            cwd=h.REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    return exe


def test_rust_and_python_share_a_queue_of_bytes(qname):
    exe = _rust_peer()
    q = make(qname)
    proc = subprocess.run([exe, "push", qname, "from rust", "é"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pushed 2"
    assert q.get() == b"from rust"
    assert q.get_bytes() == "é".encode()
    q.put_bytes(b"\x01\x02 from python")
    q.put(("a", "pickle"))  # Rust sees a pickle's bytes
    proc = subprocess.run([exe, "pop", qname, "3", "0.2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert bytes.fromhex(lines[0]) == b"\x01\x02 from python"
    assert pickle.loads(bytes.fromhex(lines[1])) == ("a", "pickle")
    assert lines[2] == "timeout"
    q.unlink()


# --------------------------------------------------------------------------
# SIGKILL at random moments


_KILL_ITEMS = 400


def _kill_producer(name, tag, big, n):
    """Puts ``n`` numbered items (or without end, for one to be killed)."""
    q = queues.Queue(name=name, track=False)
    np = None
    if big:
        import numpy as np
    i = -1
    while n is None or i + 1 < n:
        i += 1
        if np is not None and i % 7 == 0:
            q.put((tag, i, np.full(20_000, i, dtype=np.int64)))
        else:
            q.put((tag, i, None))


def _kill_consumer(name, log_path):
    q = queues.Queue(name=name, track=False)
    with open(log_path, "a", buffering=1) as log:
        while True:
            tag, i, arr = q.get()
            if tag is None:
                return
            if arr is not None:
                assert int(arr[0]) == i and len(arr) == 20_000
            log.write(f"{tag} {i}\n")


@pytest.mark.kill
def test_producers_and_consumers_killed_at_random_lose_at_most_their_item(qname, tmp_path):
    """Two producers and two consumers; one of each is SIGKILLed at a
    random moment. Every item of a producer is delivered up to where it
    died (a prefix of its sequence, no gaps, no duplicates), but for at most
    one item the killed consumer had taken; nobody hangs; no buffer
    segment is left once a producer and a consumer passed after the
    deaths."""
    big = True
    try:
        import numpy  # noqa: F401
    except ImportError:
        big = False
    ctx = mp.get_context("fork" if "fork" in METHODS else "spawn")
    rng = random.Random(os.getpid())
    for round_ in range(h.kill_rounds()):
        name = f"{qname}r{round_}"
        h.record_created(name)
        q = queues.Queue(16, name=name, create=True, capacity=1 << 15)
        logs = [tmp_path / f"c{round_}_{k}.log" for k in range(2)]
        producers = [
            ctx.Process(target=_kill_producer, args=(name, 0, big, None)),
            ctx.Process(target=_kill_producer, args=(name, 1, big, _KILL_ITEMS)),
        ]
        consumers = [ctx.Process(target=_kill_consumer, args=(name, str(logs[k]))) for k in range(2)]
        try:
            for p in producers + consumers:
                p.start()
            while not any(log.exists() for log in logs):
                time.sleep(0.001)  # the consumers have begun
            time.sleep(rng.uniform(0, 0.3))
            victims = (producers[0], consumers[0])
            for v in victims:
                os.kill(v.pid, signal.SIGKILL)
                time.sleep(rng.uniform(0, 0.02))
            producers[1].join(60)
            assert producers[1].exitcode == 0, "a producer hung or failed"
            for v in victims:
                v.join(10)
            q.put((None, 0, None))
            consumers[1].join(60)
            assert consumers[1].exitcode == 0, "a consumer hung or failed"
            seen = {}
            for log in logs:
                if log.exists():
                    for line in log.read_text().split("\n"):
                        if line:
                            tag, i = map(int, line.split())
                            seen.setdefault(tag, []).append(i)
            # Whatever is still queued counts as delivered too.
            rest = []
            while True:
                try:
                    item = q.get_nowait()
                except stdlib_queue.Empty:
                    break
                if item[0] is not None:
                    rest.append(item)
            for tag, i, _ in rest:
                seen.setdefault(tag, []).append(i)
            for tag, got in seen.items():
                assert len(got) == len(set(got)), f"duplicates from producer {tag}"
            survivor = sorted(seen.get(1, []))
            missing_1 = set(range(_KILL_ITEMS)) - set(survivor)
            dead = sorted(seen.get(0, []))
            top = dead[-1] + 1 if dead else 0
            missing_0 = set(range(top)) - set(dead)
            # Only the killed consumer's item in hand may be missing.
            assert len(missing_1) + len(missing_0) <= 1, (round_, missing_0, missing_1)
            # A producer and a consumer passing clean up after the dead.
            q.put((None, 0, None))
            q.get()
            assert leftovers(name) == [name], leftovers(name)
        finally:
            for p in producers + consumers:
                if p.is_alive():
                    p.kill()
                p.join(5)
            q.unlink()
            for entry in leftovers(name):
                h.remove_segment(entry)


# --------------------------------------------------------------------------
# The shmkit command


def _shmkit_cmd(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "shmkit", *args], capture_output=True, text=True, env=h.child_env()
    )
    assert proc.returncode == 0, h.describe(proc)
    return proc.stdout


def test_ls_and_show_decode_a_queue(qname):
    import json

    q = make(qname, maxsize=5, capacity=8192)
    q.put("x")
    q.put_bytes(b"abc")
    line = [ln for ln in _shmkit_cmd("ls").splitlines() if ln.startswith(qname)]
    assert len(line) == 1 and "queue[2/5, 40B of 8.0K]" in line[0], line
    text = _shmkit_cmd("show", qname)
    assert "items:          2" in text and "ring:           40 of 8192 bytes" in text, text
    state = json.loads(_shmkit_cmd("show", "--json", qname))
    assert (state["kind"], state["len"], state["max_items"], state["capacity"]) == ("queue", 2, 5, 8192)
    q.get()
    assert json.loads(_shmkit_cmd("show", "--json", qname))["len"] == 1
    q.unlink()
