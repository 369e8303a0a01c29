#!/usr/bin/env python3
"""shmkit.sync against multiprocessing, threading, posix_ipc and shmlock.

    python bench/sync.py [--quick] [--json] [--rounds R]

* with -- the same as ``with lock: pass`` (shmkit, multiprocessing,
          threading). CPU time.
* lock -- uncontended ``acquire()`` + ``release()`` in a loop, per pair:
          shmkit ``sync.Lock``, ``multiprocessing.Lock``, ``threading.Lock``,
          ``posix_ipc.Semaphore`` and ``shmlock`` (a polling lock: few
          iterations). CPU time.
* pingpong -- a round trip between two processes over two semaphores (the
          parent releases one, the child takes it and releases the other,
          the parent takes that): shmkit ``sync.Semaphore``,
          ``multiprocessing.Semaphore``, ``posix_ipc.Semaphore``. Wall clock.
* recovery -- a child holds a shmkit Lock, the parent blocks in
          ``acquire()``; timed from the child's SIGKILL to the parent
          holding the lock. Wall clock.

Every round runs every implementation, in rotated order; medians and
ratios as in bench/_common.py. A library that is not installed is left out.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import _common as common

LOCK_N = (200_000, 20_000)
SHMLOCK_N = (200, 20)
PING_N = (5_000, 500)


def optional(module):
    try:
        return __import__(module)
    except ImportError:
        common.log(f"note: {module} is not installed; its column is left out")
        return None


def lock_pairs(made):
    """Implementation -> (acquire, release, iterations scale)."""
    from shmkit import sync

    lock = sync.Lock()
    made.append(lock.unlink)
    pairs = {
        "shmkit": (lock.acquire, lock.release, 1),
        "multiprocessing": (multiprocessing.Lock().acquire, multiprocessing.Lock().release, 1),
        "threading": (None, None, 1),
    }
    mp_lock = multiprocessing.Lock()
    pairs["multiprocessing"] = (mp_lock.acquire, mp_lock.release, 1)
    t_lock = threading.Lock()
    pairs["threading"] = (t_lock.acquire, t_lock.release, 1)
    posix_ipc = optional("posix_ipc")
    if posix_ipc:
        sem = posix_ipc.Semaphore(None, posix_ipc.O_CREX, initial_value=1)
        made.append(sem.unlink)
        pairs["posix_ipc"] = (sem.acquire, sem.release, 1)
    shmlock = optional("shmlock")
    if shmlock:
        try:
            sl = shmlock.ShmLock(f"shmkit_bench_{os.getpid()}")
            pairs["shmlock"] = (sl.acquire, sl.release, 0)
        except Exception as e:  # its API has changed between versions
            common.log(f"note: shmlock could not be used ({e!r}); left out")
    return pairs


def time_with(lock, n, clock):
    t0 = clock()
    for _ in range(n):
        with lock:
            pass
    return (clock() - t0) / n


def time_pairs(acquire, release, n, clock):
    t0 = clock()
    for _ in range(n):
        acquire()
        release()
    return (clock() - t0) / n


def pong(kind, ping_name, pong_name, ready):
    """The child's half of the ping-pong."""
    if kind == "shmkit":
        from shmkit import sync

        ping, pong_ = sync.Semaphore(name=ping_name), sync.Semaphore(name=pong_name)
    elif kind == "posix_ipc":
        import posix_ipc

        ping, pong_ = posix_ipc.Semaphore(ping_name), posix_ipc.Semaphore(pong_name)
    else:
        ping, pong_ = ping_name, pong_name
    ready.set()
    while True:
        ping.acquire()
        pong_.release()


def ping_rounds(ping, pong_, n, clock):
    t0 = clock()
    for _ in range(n):
        ping.release()
        pong_.acquire()
    return (clock() - t0) / n


def start_pingpongs(ctx, made):
    """Implementation -> (ping, pong, child process), children waiting."""
    from shmkit import sync

    out = {}
    made_sems = {
        "shmkit": (sync.Semaphore(0), sync.Semaphore(0)),
        "multiprocessing": (ctx.Semaphore(0), ctx.Semaphore(0)),
    }
    posix_ipc = optional("posix_ipc")
    if posix_ipc:
        made_sems["posix_ipc"] = tuple(
            posix_ipc.Semaphore(None, posix_ipc.O_CREX, initial_value=0) for _ in range(2)
        )
    for kind, (a, b) in made_sems.items():
        if kind != "multiprocessing":
            made.extend([a.unlink, b.unlink])
        args = (a.name, b.name) if kind != "multiprocessing" else (a, b)
        ready = ctx.Event()
        proc = ctx.Process(target=pong, args=(kind, *args, ready), daemon=True)
        proc.start()
        ready.wait()
        out[kind] = (a, b, proc)
    return out


HOLDER = """if 1:
    import sys, time
    from shmkit import sync
    lock = sync.Lock(sys.argv[1], track=False)
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
"""


def recovery_once(lock, clock):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock.name], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    got = []

    def take():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lock.acquire()
        got.append(clock())
        lock.mark_repaired()
        lock.release()  # by the thread that holds it

    t = threading.Thread(target=take)
    t.start()
    time.sleep(0.02)  # the taker is asleep in the kernel by now
    t0 = clock()
    holder.send_signal(signal.SIGKILL)
    t.join()
    holder.wait()
    return got[0] - t0


def main():
    ap = common.parser(__doc__, rounds=(9, 3))
    args = common.start(ap.parse_args())
    q = 1 if args.quick else 0
    cpu = common.CLOCKS["cpu"]
    wall = common.CLOCKS["wall"]
    from shmkit import sync

    made = []
    rows = []
    procs = []
    try:
        pairs = lock_pairs(made)
        samples = {k: [] for k in pairs}
        for r in range(args.rounds):
            for kind in common.rotated(list(pairs), r):
                acq, rel, scale = pairs[kind]
                n = LOCK_N[q] if scale else SHMLOCK_N[q]
                samples[kind].append(common.quiet_gc(time_pairs, acq, rel, n, cpu))
            common.progress(r, args.rounds, not args.json)
        rows.append(common.make_row(
            "lock", "uncontended acquire+release", samples,
            {k: "speedup" for k in pairs if k != "shmkit"},
            [common.Target(15, "speedup", "multiprocessing", ">=", 1.0,
                           "≥ 1× (no slower than multiprocessing.Lock)")]))

        locks = {"shmkit": sync.Lock(), "multiprocessing": multiprocessing.Lock(),
                 "threading": threading.Lock()}
        made.append(locks["shmkit"].unlink)
        samples = {k: [] for k in locks}
        for r in range(args.rounds):
            for kind in common.rotated(list(locks), r):
                samples[kind].append(common.quiet_gc(time_with, locks[kind], LOCK_N[q], cpu))
            common.progress(r, args.rounds, not args.json)
        rows.append(common.make_row(
            "with", "uncontended `with lock: pass`", samples,
            {k: "speedup" for k in locks if k != "shmkit"}))

        ctx = multiprocessing.get_context("fork")
        games = start_pingpongs(ctx, made)
        procs = [g[2] for g in games.values()]
        samples = {k: [] for k in games}
        for kind, (a, b, _) in games.items():  # warm-up, untimed
            ping_rounds(a, b, 50, wall)
        for r in range(args.rounds):
            for kind in common.rotated(list(games), r):
                a, b, _ = games[kind]
                samples[kind].append(common.quiet_gc(ping_rounds, a, b, PING_N[q], wall))
            common.progress(r, args.rounds, not args.json)
        rows.append(common.make_row(
            "pingpong", "ping-pong round trip, 2 processes", samples,
            {k: "speedup" for k in games if k != "shmkit"},
            [common.Target(15, "speedup", "multiprocessing", ">=", 2.0, "≥ 2×")]))

        lock = sync.Lock(track=False)
        made.append(lock.unlink)
        rec = [recovery_once(lock, wall) for _ in range(args.rounds)]
        rows.append(common.make_row(
            "recovery", "SIGKILL of the holder → next acquirer holds it", {"shmkit": rec}, {},
            [common.Target(15, "median_ns", None, "<=", 10e6, "< 10 ms")]))
    finally:
        for p in procs:
            p.kill()
            p.join()
        for undo in made:
            try:
                undo()
            except Exception:
                pass
    result = {"group": "sync", "title": "Locks, semaphores and recovery (shmkit.sync)",
              "meta": common.meta(args), "rows": rows, "notes": []}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
