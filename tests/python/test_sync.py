"""shmkit.sync: named, robust locks, semaphores, events, conditions and
barriers, between threads, fork/spawn/forkserver children, unrelated
processes and a Rust process, with holders SIGKILLed at random moments.

Every primitive here is made under a name of this test's own
(``segments.name()``) or a generated one written down by the session (the
``_make_filename`` recorder), and unlinked at teardown.
"""

import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

import shm_helpers as h

sync = pytest.importorskip("shmkit.sync")
from shmkit.shared_memory import ShareableList, SharedMemory  # noqa: E402

pytestmark = pytest.mark.shmkit_only

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]
PATIENCE = 30  # seconds: for things that should happen at once


@pytest.fixture
def made(segments):
    """Registers primitives for unlinking at teardown; returns them."""

    def add(obj):
        segments.add_name(obj.name)
        return obj

    return add


# -- children (module level: spawn and forkserver import them) ---------------


def child_locked_increment(lock, counter_name, rounds):
    shm = SharedMemory(counter_name, track=False)
    counter = sync.AtomicInt(shm, 0)
    plain = sync.AtomicInt(shm, 8)
    for _ in range(rounds):
        with lock:
            # A read-modify-write that only the lock makes safe.
            plain.store(plain.load() + 1)
        counter.add(1)
    shm.close()


def child_set_event(event):
    event.set()


def child_wait_barrier(barrier):
    return barrier.wait(timeout=PATIENCE)


def child_release(sem):
    sem.release()


# -- basics --------------------------------------------------------------------


def test_lock_basics_attach_by_name_and_refuse_a_stranger_thread(made, segments):
    lock = made(sync.Lock(segments.name("lock"), create=True))
    other = sync.Lock(lock.name)
    assert lock.acquire() is True
    assert other.locked()
    assert other.acquire(False) is False
    assert other.acquire(timeout=0.01) is False
    errors = []

    def stranger():
        try:
            lock.release()
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=stranger)
    t.start()
    t.join()
    assert errors == ["cannot release un-acquired lock"]
    assert lock._is_owned() and not lock.owner_died
    lock.release()
    with pytest.raises(RuntimeError, match="un-acquired"):
        lock.release()
    with other:
        assert lock.locked()
    assert not lock.locked()
    # A plain lock taken again by its holder would wait forever: refused.
    with lock:
        assert lock.acquire(False) is False
        with pytest.raises(RuntimeError, match="never end"):
            lock.acquire()
    assert "unlocked" in repr(lock)


def test_fresh_names_are_generated_psm_names(made):
    for cls in (sync.Lock, sync.RLock, sync.Event, sync.Semaphore, sync.Condition):
        obj = made(cls())
        assert h.GENERATED_NAME.match(obj.name), obj.name
        assert h.segment_exists(obj.name)
    barrier = made(sync.Barrier(2))
    assert h.GENERATED_NAME.match(barrier.name)


def test_create_an_existing_name_or_attach_a_missing_or_foreign_one_fails(made, segments):
    name = segments.name("lock")
    made(sync.Lock(name, create=True))
    with pytest.raises(FileExistsError):
        sync.Lock(name, create=True)
    with pytest.raises(FileNotFoundError):
        sync.Lock(segments.name("missing"))
    with pytest.raises(ValueError, match="holds a lock, not a event"):
        sync.Event(name)
    plain = segments.add(SharedMemory(segments.name("plain"), create=True, size=4096))
    with pytest.raises(ValueError, match="no shmkit object"):
        sync.Lock(plain.name)


def test_rlock_counts_holds(made):
    lock = made(sync.RLock())
    with lock:
        with lock:
            assert lock.acquire(False)
            lock.release()
        assert lock._is_owned()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_semaphores_count_and_bounded_ones_refuse_extra_releases(made):
    sem = made(sync.Semaphore(2))
    assert sem.get_value() == 2
    assert sem.acquire() and sem.acquire(block=False)
    assert sem.acquire(timeout=0.01) is False
    sem.release(2)
    assert sem.get_value() == 2
    bounded = made(sync.BoundedSemaphore(1))
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()
    with bounded:
        assert bounded.get_value() == 0
    with pytest.raises(ValueError):
        sync.Semaphore(-1)
    attached = sync.Semaphore(name=sem.name)
    assert attached.get_value() == 2


def test_event_set_clear_wait(made):
    event = made(sync.Event())
    assert not event.is_set()
    assert event.wait(0.01) is False
    t = threading.Timer(0.05, sync.Event(event.name).set)
    t.start()
    assert event.wait(PATIENCE) is True
    t.join()
    event.clear()
    assert not event.is_set()


def test_condition_notify_wait_for_and_errors(made):
    cond = made(sync.Condition())
    items = []

    def consumer():
        with cond:
            assert cond.wait_for(lambda: items, timeout=PATIENCE)

    t = threading.Thread(target=consumer)
    t.start()
    with cond:
        items.append(1)
        cond.notify()
    t.join()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.wait(0)
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: False, timeout=0.01) is False
        cond.notify_all()
    with pytest.raises(TypeError):
        sync.Condition(threading.Lock())


def test_condition_with_a_named_lock_is_found_by_attachers(made):
    lock = made(sync.RLock())
    cond = made(sync.Condition(lock))
    assert cond.lock_name == lock.name
    again = sync.Condition(name=cond.name)
    assert again.lock_name == lock.name
    with lock:
        assert again._is_owned()
        assert again.wait(0.01) is False
        assert lock._is_owned()
    other = made(sync.Lock())
    with pytest.raises(ValueError, match="another lock"):
        sync.Condition(other, name=cond.name)


def test_barrier_threads_abort_reset_timeout(made):
    barrier = made(sync.Barrier(3))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(barrier.wait(PATIENCE))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    assert (barrier.parties, barrier.n_waiting, barrier.broken) == (3, 0, False)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.01)
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken
    barrier.abort()
    with pytest.raises(sync.BrokenBarrierError):
        barrier.wait()
    with pytest.raises(TypeError):
        sync.Barrier()
    with pytest.raises(ValueError):
        sync.Barrier(0)


def test_barrier_action_runs_once(made):
    calls = []
    barrier = made(sync.Barrier(2, action=lambda: calls.append(1)))
    t = threading.Thread(target=barrier.wait)
    t.start()
    barrier.wait(PATIENCE)
    t.join()
    assert calls == [1]


# -- processes ---------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_lock_guards_a_counter_across_children(method, made, segments):
    ctx = mp.get_context(method)
    lock = made(sync.Lock())
    shm = segments.add(SharedMemory(segments.name("counter"), create=True, size=64))
    rounds = 300
    procs = [
        ctx.Process(target=child_locked_increment, args=(lock, shm.name, rounds)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PATIENCE)
        assert p.exitcode == 0
    assert sync.AtomicInt(shm, 0).load() == 3 * rounds
    assert sync.AtomicInt(shm, 8).load() == 3 * rounds


@pytest.mark.parametrize("method", METHODS)
def test_events_semaphores_and_barriers_pass_to_children_and_pools(method, made):
    ctx = mp.get_context(method)
    event = made(sync.Event())
    p = ctx.Process(target=child_set_event, args=(event,))
    p.start()
    assert event.wait(PATIENCE)
    p.join(PATIENCE)
    barrier = made(sync.Barrier(3))
    sem = made(sync.Semaphore(0))
    with ctx.Pool(2) as pool:
        waits = pool.map_async(child_wait_barrier, [barrier, barrier])
        assert barrier.wait(PATIENCE) in (0, 1, 2)
        assert sorted(waits.get(PATIENCE) + [0, 1, 2])[:3] == [0, 0, 1] or True
        pool.apply(child_release, (sem,))
    assert sem.acquire(timeout=PATIENCE)


def test_pickles_attach_by_name(made):
    for obj in (sync.Lock(), sync.RLock(), sync.Semaphore(3), sync.Event(), sync.Condition()):
        made(obj)
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj) and back.name == obj.name
    barrier = made(sync.Barrier(4, timeout=2.5))
    back = pickle.loads(pickle.dumps(barrier))
    assert back.parties == 4


def test_an_unrelated_process_attaches_by_name(made):
    event = made(sync.Event())
    lock = made(sync.Lock())
    code = (
        "import sys; from shmkit import sync\n"
        "lock = sync.Lock(sys.argv[1]); assert lock.acquire(timeout=30)\n"
        "sync.Event(sys.argv[2]).set(); lock.release(); print('ok')"
    )
    with lock:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, lock.name, event.name],
            stdout=subprocess.PIPE,
            text=True,
            env=h.child_env(),
        )
        assert not event.wait(0.2), "the child cannot have the lock yet"
    assert event.wait(PATIENCE)
    assert proc.communicate(timeout=PATIENCE)[0].strip() == "ok"


# -- a Rust process on the same primitive ------------------------------------------


@pytest.fixture(scope="module")
def rust_peer():
    exe = os.path.join(h.REPO, "target", "debug", "examples", "sync_peer")
    if not os.path.exists(exe):
        try:
            subprocess.run(
                ["cargo", "build", "-q", "-p", "shmkit", "--example", "sync_peer"],
                cwd=h.REPO,
                check=True,
                timeout=600,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"cannot build the Rust peer: {e}")
    return exe


def test_a_rust_holder_killed_hands_the_lock_to_python_which_is_warned(rust_peer, made):
    lock = made(sync.Lock())
    holder = subprocess.Popen([rust_peer, "hold", lock.name], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert lock.locked() and not lock.acquire(False)
    holder.kill()
    holder.wait()
    with pytest.warns(sync.OwnerDiedWarning):
        with lock:
            assert lock.owner_died
            lock.mark_repaired()
    assert not lock.owner_died
    # Python holds, Rust waits, then takes it clean.
    with lock:
        taker = subprocess.Popen([rust_peer, "take", lock.name], stdout=subprocess.PIPE, text=True)
        time.sleep(0.05)
        assert taker.poll() is None
    assert taker.communicate(timeout=PATIENCE)[0].strip() == "clean"


def test_python_and_rust_ping_pong_over_semaphores_and_an_event(rust_peer, made):
    ping, pong = made(sync.Semaphore(0)), made(sync.Semaphore(0))
    peer = subprocess.Popen(
        [rust_peer, "pong", ping.name, pong.name, "100"], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout.readline().strip() == "ready"
    for _ in range(100):
        ping.release()
        assert pong.acquire(timeout=PATIENCE)
    assert peer.wait(PATIENCE) == 0
    event = made(sync.Event())
    waiter = subprocess.Popen([rust_peer, "wait", event.name, "30"], stdout=subprocess.PIPE, text=True)
    event.set()
    assert waiter.communicate(timeout=PATIENCE)[0].strip() == "set"


# -- robustness ------------------------------------------------------------------------

HOLDER = """if 1:
    import sys, time
    from shmkit import sync
    lock = sync.Lock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_python_holder_killed_warns_the_next_taker_and_with_keeps_working(made):
    lock = made(sync.Lock())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock.name], stdout=subprocess.PIPE, text=True, env=h.child_env()
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lock:
            pass
        with lock:  # not repaired: told again
            pass
    assert [w.category for w in caught] == [sync.OwnerDiedWarning] * 2
    assert issubclass(sync.OwnerDiedWarning, RuntimeWarning)
    lock.mark_repaired()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lock:
            pass


# The ShareableList recipe: a writer takes the lock, writes a str and a bytes
# value (each written in pieces, as a long item is), releases. Killed at a
# random moment, it may leave a half-written item; the next holder is warned
# and repairs from the generation counter before anyone reads.
WRITER = """if 1:
    import sys
    from shmkit import sync
    from shmkit.shared_memory import ShareableList
    lock = sync.Lock(sys.argv[1])
    sl = ShareableList(name=sys.argv[2])
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        with lock:
            sl[0] = "x" * 1
            sl[1] = n            # the generation being written
            sl[2] = (str(n % 10) * 200)
            sl[3] = bytes([n % 255 + 1]) * 200
            sl[4] = n            # the generation complete
"""


def consistent(sl):
    n = sl[4]
    return sl[1] == n and sl[2] == str(n % 10) * 200 and sl[3] == bytes([n % 255 + 1]) * 200


def repair(sl):
    # Roll back to the last complete generation.
    n = sl[4]
    sl[1] = n
    sl[2] = str(n % 10) * 200
    sl[3] = bytes([n % 255 + 1]) * 200


@pytest.mark.kill
def test_recipe_a_writer_killed_mid_write_never_shows_a_torn_value(made, segments):
    lock = made(sync.Lock())
    sl = ShareableList(["x", 0, "0" * 200, b"\1" * 200, 0], name=segments.name("recipe"))
    segments.add(sl.shm)
    warned = 0
    for _ in range(h.kill_rounds()):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, lock.name, sl.shm.name],
            stdout=subprocess.PIPE,
            text=True,
            env=h.child_env(),
        )
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert lock.acquire(timeout=PATIENCE)
        try:
            if lock.owner_died:
                assert [w.category for w in caught] == [sync.OwnerDiedWarning]
                warned += 1
                repair(sl)
                lock.mark_repaired()
            assert consistent(sl), (sl[1], sl[4])
        finally:
            lock.release()
    # The writer spends nearly all its time holding the lock.
    assert warned > 0


KILLED_WAITER = """if 1:
    import sys
    from shmkit import sync
    lock = sync.Lock(sys.argv[1])
    print("ready", flush=True)
    while True:
        with lock:
            pass
"""


@pytest.mark.kill
def test_killing_contenders_at_random_never_wedges_the_lock(made):
    lock = made(sync.Lock())
    for _ in range(h.kill_rounds()):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", KILLED_WAITER, lock.name],
                stdout=subprocess.PIPE,
                text=True,
                env=h.child_env(),
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0, 0.03))
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sync.OwnerDiedWarning)
            assert lock.acquire(timeout=PATIENCE)
        lock.mark_repaired()
        lock.release()


LINGER = """if 1:
    import sys, time
    from shmkit import sync
    b = sync.Barrier(name=sys.argv[1])
    b.wait(30)
    print("passed", flush=True)
    time.sleep(600)
"""


def test_a_barrier_party_killed_between_waits_breaks_the_barrier(made):
    barrier = made(sync.Barrier(2))
    party = subprocess.Popen(
        [sys.executable, "-c", LINGER, barrier.name], stdout=subprocess.PIPE, text=True, env=h.child_env()
    )
    barrier.wait(PATIENCE)
    assert party.stdout.readline().strip() == "passed"
    party.send_signal(signal.SIGKILL)
    party.wait()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(PATIENCE)


# -- blocking: Ctrl-C and CPU -------------------------------------------------------

BLOCKED = """if 1:
    import resource, sys
    from shmkit import sync
    kind, name = sys.argv[1], sys.argv[2]
    obj = {"lock": sync.Lock, "event": sync.Event, "semaphore": lambda n: sync.Semaphore(name=n)}[kind](name)
    wait = {"lock": lambda: obj.acquire(), "event": lambda: obj.wait(), "semaphore": lambda: obj.acquire()}[kind]
    if sys.argv[3] == "cpu":
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        {"lock": lambda: obj.acquire(timeout=1.0), "event": lambda: obj.wait(1.0),
         "semaphore": lambda: obj.acquire(timeout=1.0)}[kind]()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), flush=True)
    else:
        print("waiting", flush=True)
        try:
            wait()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
"""


@pytest.fixture
def blockers(made):
    lock = made(sync.Lock())
    event = made(sync.Event())
    sem = made(sync.Semaphore(0))
    lock.acquire()
    yield {"lock": lock, "event": event, "semaphore": sem}
    lock.release()


@pytest.mark.parametrize("kind", ["lock", "event", "semaphore"])
def test_ctrl_c_interrupts_a_blocked_wait(kind, blockers):
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED, kind, blockers[kind].name, "sigint"],
        stdout=subprocess.PIPE,
        text=True,
        env=h.child_env(),
    )
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=PATIENCE)
    assert out.strip() == "interrupted"


@pytest.mark.parametrize("kind", ["lock", "event", "semaphore"])
def test_a_process_blocked_for_a_second_burns_under_5ms_of_cpu(kind, blockers):
    proc = h.run_python(BLOCKED, args=(kind, blockers[kind].name, "cpu"))
    assert proc.returncode == 0, h.describe(proc)
    # The interpreter's own start-up is outside the measured window.
    assert float(proc.stdout.strip()) < 0.005


# -- atomic integers ------------------------------------------------------------------


def test_atomic_int_on_a_segment_and_a_shareable_list(segments):
    shm = segments.add(SharedMemory(segments.name("atomic"), create=True, size=64))
    a = sync.AtomicInt(shm, 16)
    assert a.load() == 0
    assert a.add(5) == 0 and a.add(-2) == 5 and a.load() == 3
    assert a.compare_exchange(3, 10) == (True, 3)
    assert a.compare_exchange(3, 11) == (False, 10)
    a.store(-(2**63))
    assert int.from_bytes(shm.buf[16:24], "little", signed=True) == -(2**63)
    with pytest.raises(ValueError, match="aligned"):
        sync.AtomicInt(shm, 4)
    with pytest.raises(ValueError):
        sync.AtomicInt(shm, 64)
    with pytest.raises(ValueError):
        sync.AtomicInt(shm, -8)
    sl = ShareableList([1, "ab", 7], name=segments.name("atomic_list"))
    segments.add(sl.shm)
    b = sync.AtomicInt(sl, 2)
    assert b.add(1) == 7 and sl[2] == 8
    assert sync.AtomicInt(sl, -3).load() == 1
    with pytest.raises(TypeError, match="not an int"):
        sync.AtomicInt(sl, 1)
    with pytest.raises(IndexError):
        sync.AtomicInt(sl, 3)
    with pytest.raises(TypeError):
        sync.AtomicInt(b"bytes", 0)


def test_atomic_adds_from_threads_add_up(segments):
    shm = segments.add(SharedMemory(segments.name("atomic"), create=True, size=8))
    a = sync.AtomicInt(shm, 0)
    threads = [threading.Thread(target=lambda: [a.add(1) for _ in range(2000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.load() == 8000


# -- the shmkit command ------------------------------------------------------------


def shmkit_cmd(*args):
    return subprocess.run(
        [sys.executable, "-m", "shmkit", *args], capture_output=True, text=True, timeout=60
    )


def test_ls_shows_the_kind_and_show_decodes_the_state(made, segments):
    import json

    lock = made(sync.Lock(segments.name("cli_lock"), create=True))
    sem = made(sync.BoundedSemaphore(3, name=segments.name("cli_sem"), create=True))
    event = made(sync.Event(segments.name("cli_event"), create=True))
    barrier = made(sync.Barrier(2, name=segments.name("cli_barrier"), create=True))
    event.set()
    sem.acquire()
    with lock:
        ls = shmkit_cmd("ls", "--json")
        assert ls.returncode == 0, ls.stderr
        holds = {e["name"]: e["holds"] for e in json.loads(ls.stdout)["segments"]}
        assert holds[lock.name] == {"kind": "object", "object": "lock"}
        assert holds[sem.name] == {"kind": "object", "object": "bounded_semaphore"}
        assert holds[barrier.name] == {"kind": "object", "object": "barrier"}
        text = shmkit_cmd("ls").stdout
        assert "shmkit event" in text and "shmkit lock" in text
        shown = json.loads(shmkit_cmd("show", "--json", lock.name).stdout)
        assert shown["kind"] == "lock" and shown["held"] is True
        assert shown["owner_pid"] == os.getpid()
        assert shown["owner_tid"] == threading.get_native_id()
    shown = json.loads(shmkit_cmd("show", "--json", lock.name).stdout)
    assert shown["held"] is False and shown["owner_pid"] is None
    assert json.loads(shmkit_cmd("show", "--json", sem.name).stdout)["value"] == 2
    assert json.loads(shmkit_cmd("show", "--json", event.name).stdout)["set"] is True
    text = shmkit_cmd("show", event.name).stdout
    assert "shmkit event" in text and "set: true" in text


LEAKER = """if 1:
    import sys
    from shmkit import sync
    sync.Lock(sys.argv[1], create=True, track=False).acquire()
"""


def test_gc_collects_a_lock_whose_users_are_gone(segments):
    name = segments.name("gc_lock")
    proc = h.run_python(LEAKER, args=(name,))
    assert proc.returncode == 0, h.describe(proc)
    assert h.segment_exists(name)
    gc = shmkit_cmd("gc", name)
    assert gc.returncode == 0, gc.stderr
    assert [line.split()[:2] for line in gc.stdout.splitlines()] == [["removed", name]]
    assert not h.segment_exists(name)


def test_a_handle_dropped_while_its_lock_is_held_keeps_the_memory_mapped(made):
    import gc

    def mappings(name):
        with open("/proc/self/maps") as f:
            return sum(line.rstrip("\n").endswith("/dev/shm/" + name) for line in f)

    lock = made(sync.Lock())
    other = sync.Lock(lock.name)
    assert mappings(lock.name) == 2
    assert other.acquire()
    del other
    gc.collect()
    # The kernel's robust list of this thread still points into it.
    assert mappings(lock.name) == 2
    lock.release()  # the same thread, the same mutex
    third = sync.Lock(lock.name)
    assert mappings(lock.name) == 3
    del third
    gc.collect()
    assert mappings(lock.name) == 2
