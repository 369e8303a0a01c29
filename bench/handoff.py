#!/usr/bin/env python3
"""Handing a 256 MiB numpy array to a child process, three ways.

    python bench/handoff.py [--quick] [--json] [--rounds R] [--size MiB]

The parent holds an int64 array in private memory; a child process, started
before the clock (so process start-up is not measured) and waiting on a
``multiprocessing.Pipe``, must end up with the data and check it: it sums
one element per 4 KiB page, which touches every page, and compares the sum
with the parent's. Timed, on the wall clock, from the parent's first step to
the child's answer:

* shmkit -- the parent creates a ``shmkit`` segment, copies the array into a
            numpy view of it and sends the name; the child attaches by name
            and views it with numpy (no copy);
* stdlib -- the same with ``multiprocessing.shared_memory``;
* pickle -- the parent sends the array itself through the Pipe, which
            pickles it, and the child unpickles a copy.

The parent closes and unlinks the segment after the answer (not timed).
Rounds, medians and ratios as in bench/_common.py.
"""

import multiprocessing

import _common as common

MiB = 1 << 20
SIZE_MIB = 256
QUICK_SIZE_MIB = 32
IMPLS = ("shmkit", "stdlib", "pickle")
STRIDE = 4096 // 8  # int64 items per page


def module(kind):
    if kind == "shmkit":
        from shmkit import shared_memory
    else:
        from multiprocessing import shared_memory
    return shared_memory


def check(a):
    return int(a[::STRIDE].sum())


def child(conn):
    """Answers each message with the checksum of the array it names or
    carries, until it gets None (or Ctrl-C, which the parent handles)."""
    try:
        serve(conn)
    except KeyboardInterrupt:
        pass


def serve(conn):
    import numpy as np

    while True:
        msg = conn.recv()
        if msg is None:
            return
        kind, payload = msg
        if kind == "pickle":
            conn.send(check(payload))
            continue
        name, count = payload
        if kind == "shmkit":
            # Borrowed: the parent unlinks it. A tracked attach would make
            # this process's shmkit tracker answer for it too, and at exit
            # find it gone and warn of a leak. (The stdlib attach needs no
            # such care: spawn shares the parent's resource tracker, whose
            # registration the parent's unlink() removes.)
            shm = module(kind).SharedMemory(name, track=False)
        else:
            shm = module(kind).SharedMemory(name)
        try:
            a = np.ndarray((count,), dtype=np.int64, buffer=shm.buf)
            total = check(a)
            del a  # the stdlib's close() refuses while a view is alive
        finally:
            shm.close()
        conn.send(total)


def hand_over(kind, conn, src, clock):
    """One handover; returns the ns until the child's answer."""
    import numpy as np

    if kind == "pickle":
        t0 = clock()
        conn.send(("pickle", src))
        total = conn.recv()
        elapsed = clock() - t0
    else:
        t0 = clock()
        shm = module(kind).SharedMemory(create=True, size=src.nbytes)
        try:
            a = np.ndarray(src.shape, dtype=src.dtype, buffer=shm.buf)
            a[:] = src
            del a
            conn.send((kind, (shm.name, src.size)))
            total = conn.recv()
            elapsed = clock() - t0
        finally:
            shm.close()
            shm.unlink()
    if total != check(src):
        raise AssertionError(f"{kind}: the child saw other data")
    return elapsed


def main():
    ap = common.parser(__doc__, rounds=(9, 3), clock="wall")
    ap.add_argument("--size", type=int, metavar="MiB",
                    help=f"array size in MiB (default {SIZE_MIB}, quick {QUICK_SIZE_MIB})")
    args = common.start(ap.parse_args())
    if args.clock != "wall":
        common.log("note: handoff.py times with the wall clock (two processes do the work)")
        args.clock = "wall"
    size_mib = args.size or (QUICK_SIZE_MIB if args.quick else SIZE_MIB)
    clock = common.CLOCKS[args.clock]

    import numpy as np
    from multiprocessing import resource_tracker

    # The child shares the parent's stdlib resource tracker (spawn passes it
    # on when it runs), so the child's attach registrations are undone by
    # the parent's unlink instead of being "leaks" of a tracker of its own.
    resource_tracker.ensure_running()
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=child, args=(child_end,), daemon=True)
    proc.start()
    child_end.close()
    src = np.arange(size_mib * MiB // 8, dtype=np.int64)
    samples = {k: [] for k in IMPLS}
    try:
        for kind in IMPLS:  # untimed: imports in the child, code paths
            hand_over(kind, parent_end, src[: MiB // 8], clock)
        for r in range(args.rounds):
            for kind in common.rotated(list(IMPLS), r):
                samples[kind].append(common.quiet_gc(hand_over, kind, parent_end, src, clock))
            common.progress(r, args.rounds, not args.json)
    finally:
        try:
            parent_end.send(None)
        except OSError:
            pass
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()

    size = f"{size_mib} MiB"
    row = common.make_row("handoff", f"hand {size} to a child, checked", samples,
                          {"stdlib": "speedup", "pickle": "speedup"})
    rates = ", ".join(f"{k} {size_mib * MiB / (c['median_us'] * 1e3):.2f} GB/s"
                      for k, c in row["results"].items())
    result = {"group": "handoff", "title": f"Handing {size} to a child process",
              "meta": common.meta(args, size_mib=size_mib), "rows": [row],
              "notes": [f"throughput: {rates}"]}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
