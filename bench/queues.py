#!/usr/bin/env python3
"""Queues between processes: shmkit.queues against multiprocessing.Queue,
faster-fifo and pickle alone.

    python bench/queues.py [--quick] [--json] [--rounds R]

Worker processes are forked before the clock, one set per implementation,
each handed its queues at start; a command on a Pipe starts each timed
run, and the run ends when every worker has answered. Wall clock, ns per
item (or per round trip). Implementations alternate round by round.

* small   -- the tuple ``(1, "abc", 2.5, b"x" * 32)``, one ``put`` each,
             from the parent to one consumer process (one ``get`` each);
             **pickle** is ``pickle.dumps`` + ``pickle.loads`` of the item
             alone, in one process: the floor for Python objects;
* batch   -- the same item in batches of 1 000 (``put_many``/``get_many``;
             ``multiprocessing.Queue`` one by one, having no batches);
* 4x4     -- 4 producer and 4 consumer processes, total items per second;
* numpy   -- 64 MiB int64 arrays (8 MiB with --quick) from the parent to a
             consumer that sums one item per page;
* pingpong -- one small item there and back over two queues;
* rust    -- 64-byte messages through the Rust API between two processes
             (the ``queue_peer`` example, release build).
"""

import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import time

import _common as common

ITEM = (1, "abc", 2.5, b"x" * 32)
MiB = 1 << 20
STRIDE = 4096 // 8


def make_queue(kind, big=False):
    if kind == "shmkit":
        from shmkit.queues import Queue

        return Queue()
    if kind == "stdlib":
        return multiprocessing.get_context("fork").Queue()
    if kind == "faster_fifo":
        from faster_fifo import Queue

        return Queue(max_size_bytes=(200 * MiB) if big else (4 * MiB))
    raise ValueError(kind)


def has_faster_fifo():
    try:
        import faster_fifo  # noqa: F401
    except ImportError:
        return False
    return True


def drop(q):
    if hasattr(q, "unlink"):
        q.unlink()
    elif hasattr(q, "close"):
        try:
            q.close()
        except Exception:
            pass


def worker(conn, queues):
    """Runs commands from the parent until None."""
    try:
        while True:
            cmd = conn.recv()
            if cmd is None:
                return
            conn.send(run(cmd, queues))
    except (KeyboardInterrupt, EOFError):
        pass


def get_many(q, n):
    if hasattr(q, "get_many"):
        if type(q).__module__.startswith("faster_fifo"):
            return q.get_many(max_messages_to_get=n)
        return q.get_many(n)
    return [q.get()]


def put_many(q, items):
    if hasattr(q, "put_many"):
        q.put_many(items)
    else:
        for it in items:
            q.put(it)


def run(cmd, queues):
    op, n = cmd[0], cmd[1]
    q = queues[0]
    if op == "get":
        for _ in range(n):
            q.get()
    elif op == "get_many":
        got = 0
        while got < n:
            got += len(get_many(q, min(1000, n - got)))
    elif op == "put":
        for _ in range(n):
            q.put(ITEM)
    elif op == "put_many":
        batch = [ITEM] * 1000
        for i in range(0, n, 1000):
            put_many(q, batch[: min(1000, n - i)])
    elif op == "arrays":
        total = 0
        for _ in range(n):
            a = q.get()
            total += int(a[::STRIDE].sum())
            del a
        return total
    elif op == "echo":
        back = queues[1]
        for _ in range(n):
            back.put(q.get())
    return n


class Workers:
    """Forked workers sharing ``queues``; ``go`` sends each its command and
    waits for every answer."""

    def __init__(self, count, queues):
        ctx = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        for _ in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, queues), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def send(self, cmds):
        for c, cmd in zip(self.conns, cmds):
            c.send(cmd)

    def wait(self):
        return [c.recv() for c in self.conns]

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def timed(fn):
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def pickle_alone(n):
    dumps, loads = pickle.dumps, pickle.loads
    t0 = time.perf_counter_ns()
    for _ in range(n):
        loads(dumps(ITEM, 5))
    return time.perf_counter_ns() - t0


def small(kinds, rounds, n):
    """1 -> 1, one put and one get per item."""
    setups = {k: make_queue(k) for k in kinds}
    workers = {k: Workers(1, (q,)) for k, q in setups.items()}
    samples = {k: [] for k in kinds + ["pickle"]}
    try:
        def one(kind, count):
            if kind == "pickle":
                return pickle_alone(count)
            q, w = setups[kind], workers[kind]

            def go():
                w.send([("get", count)])
                for _ in range(count):
                    q.put(ITEM)
                w.wait()
            return timed(go)

        for kind in samples:
            one(kind, min(n, 2000))
        for r in range(rounds):
            for kind in common.rotated(list(samples), r):
                samples[kind].append(common.quiet_gc(one, kind, n) / n)
            common.progress(r, rounds, True)
    finally:
        for k in kinds:
            workers[k].close()
            drop(setups[k])
    targets = [
        common.Target(16, "speedup", "stdlib", ">=", 5.0, "≥ 5× multiprocessing.Queue"),
        common.Target(16, "speedup", "faster_fifo", ">=", 3.0, "≥ 3× faster-fifo"),
        common.Target(16, "overhead", "pickle", "<=", 1.5, "≤ 1.5× pickle alone"),
    ]
    compare = {"stdlib": "speedup", "faster_fifo": "speedup", "pickle": "overhead"}
    return common.make_row("small", "small item, 1 → 1, per item", samples, compare,
                           [t for t in targets if t.against in samples])


def batch(kinds, rounds, n):
    """1 -> 1 in batches of 1 000."""
    kinds = [k for k in kinds if k != "faster_fifo"]
    setups = {k: make_queue(k) for k in kinds}
    workers = {k: Workers(1, (q,)) for k, q in setups.items()}
    samples = {k: [] for k in kinds}
    try:
        def one(kind, count):
            q, w = setups[kind], workers[kind]

            def go():
                w.send([("get_many", count)])
                run(("put_many", count), (q,))
                w.wait()
            return timed(go)

        for kind in kinds:
            one(kind, min(n, 2000))
        for r in range(rounds):
            for kind in common.rotated(list(kinds), r):
                samples[kind].append(common.quiet_gc(one, kind, n) / n)
            common.progress(r, rounds, True)
    finally:
        for k in kinds:
            workers[k].close()
            drop(setups[k])
    return common.make_row(
        "batch", "batches of 1 000 (put_many/get_many), per item", samples, {"stdlib": "speedup"},
        [common.Target(16, "speedup", "stdlib", ">=", 10.0, "≥ 10× multiprocessing.Queue")])


def many(kinds, rounds, n):
    """4 producers x 4 consumers, one put and one get per item."""
    kinds = [k for k in kinds if k != "faster_fifo"]
    setups = {k: make_queue(k) for k in kinds}
    workers = {k: Workers(8, (q,)) for k, q in setups.items()}
    samples = {k: [] for k in kinds}
    per = n // 4
    try:
        def one(kind, count):
            w = workers[kind]

            def go():
                w.send([("get", count)] * 4 + [("put", count)] * 4)
                w.wait()
            return timed(go)

        for kind in kinds:
            one(kind, 500)
        for r in range(rounds):
            for kind in common.rotated(list(kinds), r):
                samples[kind].append(common.quiet_gc(one, kind, per) / (4 * per))
            common.progress(r, rounds, True)
    finally:
        for k in kinds:
            workers[k].close()
            drop(setups[k])
    return common.make_row(
        "4x4", "4 producers × 4 consumers, per item", samples, {"stdlib": "speedup"},
        [common.Target(16, "speedup", "stdlib", ">=", 3.0, "≥ 3× multiprocessing.Queue")])


def arrays(kinds, rounds, size_mib, count):
    import numpy as np

    setups = {k: make_queue(k, big=True) for k in kinds}
    workers = {k: Workers(1, (q,)) for k, q in setups.items()}
    samples = {k: [] for k in kinds}
    src = np.arange(size_mib * MiB // 8, dtype=np.int64)
    want = int(src[::STRIDE].sum())
    try:
        def one(kind, c, a):
            q, w = setups[kind], workers[kind]

            def go():
                w.send([("arrays", c)])
                for _ in range(c):
                    q.put(a)
                total = w.wait()[0]
                if total != c * int(a[::STRIDE].sum()):
                    raise AssertionError(f"{kind}: the consumer saw other data")
            return timed(go)

        for kind in kinds:
            one(kind, 1, src[: MiB // 8])
        for r in range(rounds):
            for kind in common.rotated(list(kinds), r):
                samples[kind].append(common.quiet_gc(one, kind, count, src) / count)
            common.progress(r, rounds, True)
    finally:
        for k in kinds:
            workers[k].close()
            drop(setups[k])
    del want
    targets = [
        common.Target(16, "speedup", "stdlib", ">=", 10.0, "≥ 10× multiprocessing.Queue"),
        common.Target(16, "speedup", "faster_fifo", ">=", 3.0, "≥ 3× faster-fifo"),
    ]
    return common.make_row("numpy", f"{size_mib} MiB int64 array, per array", samples,
                           {"stdlib": "speedup", "faster_fifo": "speedup"},
                           [t for t in targets if t.against in samples])


def pingpong(kinds, rounds, n):
    kinds = [k for k in kinds if k != "faster_fifo"]
    setups = {k: (make_queue(k), make_queue(k)) for k in kinds}
    workers = {k: Workers(1, qs) for k, qs in setups.items()}
    samples = {k: [] for k in kinds}
    try:
        def one(kind, count):
            there, back = setups[kind]
            w = workers[kind]

            def go():
                w.send([("echo", count)])
                for _ in range(count):
                    there.put(ITEM)
                    back.get()
                w.wait()
            return timed(go)

        for kind in kinds:
            one(kind, 50)
        for r in range(rounds):
            for kind in common.rotated(list(kinds), r):
                samples[kind].append(common.quiet_gc(one, kind, n) / n)
            common.progress(r, rounds, True)
    finally:
        for k in kinds:
            workers[k].close()
            for q in setups[k]:
                drop(q)
    return common.make_row(
        "pingpong", "round trip of one small item", samples, {"stdlib": "speedup"},
        [common.Target(16, "speedup", "stdlib", ">=", 2.0, "≤ ½ multiprocessing.Queue's")])


def queue_peer():
    """The release build of the queue_peer example; None without cargo."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(common.REPO, "target")
    binary = os.path.join(target, "release", "examples", "queue_peer")
    cargo = shutil.which("cargo")
    if cargo is None:
        return binary if os.path.exists(binary) else None
    subprocess.run([cargo, "build", "--release", "-q", "-p", "shmkit", "--example", "queue_peer"],
                   cwd=common.REPO, check=True, stdout=sys.stderr)
    return binary


def rust(rounds, n, many=False):
    binary = queue_peer()
    if binary is None:
        common.log("queue_peer cannot be built (no cargo): no Rust row")
        return None
    from shmkit.queues import Queue

    samples = {"shmkit": []}
    for r in range(rounds + 1):
        q = Queue(capacity=4 * MiB, track=False)
        try:
            pop, push = ("bench-many", "flood-many") if many else ("bench", "flood")
            consumer = subprocess.Popen([binary, pop, q.name, str(n)], stdout=subprocess.PIPE,
                                        text=True)
            producer = subprocess.run([binary, push, q.name, str(n), "64"])
            out, _ = consumer.communicate(timeout=120)
            if producer.returncode or consumer.returncode:
                raise RuntimeError("queue_peer failed")
            if r:  # the first run warms the page cache and the ring
                samples["shmkit"].append(float(out) * 1e9 / (n - 1))
        finally:
            q.unlink()
        common.progress(r, rounds + 1, True)
    how = "push_many/pop_each of up to 256" if many else "one push/pop each"
    return common.make_row(
        "rust_many" if many else "rust", f"Rust, 64-byte messages 1 → 1 ({how}), per message",
        samples, {},
        [common.Target(16, "median_ns", None, "<=", 200.0, "≥ 5 M messages/s (≤ 200 ns)")])


def main():
    ap = common.parser(__doc__, rounds=(7, 2), clock="wall")
    args = common.start(ap.parse_args())
    args.clock = "wall"
    kinds = ["shmkit", "stdlib"] + (["faster_fifo"] if has_faster_fifo() else [])
    if "faster_fifo" not in kinds:
        common.log("faster-fifo is not installed: its columns are empty")
    q = args.quick
    rows = [
        small(kinds, args.rounds, 2_000 if q else 100_000),
        batch(kinds, args.rounds, 5_000 if q else 200_000),
        many(kinds, args.rounds, 4_000 if q else 100_000),
        arrays(kinds, args.rounds, 8 if q else 64, 1 if q else 4),
        pingpong(kinds, args.rounds, 200 if q else 5_000),
    ]
    for batched in (False, True):
        row = rust(args.rounds, 100_000 if q else 5_000_000, batched)
        if row is not None:
            rows.append(row)
    notes = []
    for row in rows:
        res = row["results"]
        rates = ", ".join(f"{k} {1e9 / (c['median_us'] * 1e3):,.0f}/s" for k, c in res.items())
        notes.append(f"{row['workload']}: {rates}")
    result = {"group": "queues", "title": "Queues between processes",
              "meta": common.meta(args, kinds=kinds), "rows": rows, "notes": notes}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
