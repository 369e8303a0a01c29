#!/usr/bin/env python3
"""SharedMemory: shmkit against the stdlib and the raw-syscall floor.

One run measures three implementations of the same workloads, interleaved:

* floor  -- ``shm-floor`` (bench/src/floor.rs): only the system calls, from
            Rust, in a loop; what no implementation can beat;
* stdlib -- ``multiprocessing.shared_memory.SharedMemory``;
* shmkit -- ``shmkit.shared_memory.SharedMemory``.

Workloads (4096-byte segments):

* create     -- ``SharedMemory(create=True, size=4096)``; ``close()``; ``unlink()``
* attach     -- ``SharedMemory(name)``; ``close()``
* attach_buf -- ``SharedMemory(name)``; ``shm.buf[0]``; ``close()``.  shmkit
                makes its memoryview on first use of ``buf`` (the stdlib makes
                it in ``__init__``), and the first read of a fresh mapping
                page-faults; this row charges both, against a floor that
                faults the page in as well.

A batch is N operations, timed as a whole, gc off; the floor's batch of a
round is one run of ``shm-floor --iters N --batches 1``. Rounds, medians and
ratios as in bench/_common.py.

    python bench/shared_memory.py --clock cpu   # full run, ~half a minute
    python bench/shared_memory.py --quick       # a second or two
    python bench/shared_memory.py --track-cost  # + shmkit with track=False
    python bench/shared_memory.py --decompose   # + the extension alone

Runs with any CPython 3.9+; shmkit is measured if it imports.
"""

from __future__ import annotations

import os

import _common as common

SIZE = 4096
WORKLOADS = ("create", "attach", "attach_buf")
LABELS = {
    "create": "create+close+unlink 4 KiB",
    "attach": "attach+close",
    "attach_buf": "attach+buf[0]+close",
}
# Which floor workload each Python workload is held against.
FLOOR_OF = {"create": "create", "attach": "attach", "attach_buf": "attach_touch"}
# The issues' targets; attach_buf is reported, not judged.
TARGETS = {
    "create": [common.Target(2, "overhead", "floor", "<=", 1.15, "≤ 1.15× the floor")],
    "attach": [common.Target(2, "overhead", "floor", "<=", 1.2, "≤ 1.2× the floor")],
}
TRACK_TARGET = common.Target(4, "delta_us", "untracked", "<=", 2.0,
                             "leak tracking adds ≤ 2 µs")
# Floors that explain the stdlib's numbers and the name's share; measured
# once per round, shown under the table.
REFERENCE_FLOORS = ("create_ftruncate", "create_cpython", "name", "attach_cpython")


# --------------------------------------------------------------------------
# Batches. Every function returns the mean ns per operation over n.


def create_batch(cls, perf, **kw):

    def batch(n):
        shm = None
        try:
            t0 = perf()
            for _ in range(n):
                shm = cls(create=True, size=SIZE, **kw)
                shm.close()
                shm.unlink()
            t1 = perf()
            shm = None
        finally:
            # Interrupted mid-operation: do not leave the segment behind.
            if shm is not None:
                try:
                    shm.close()
                except Exception:
                    pass
                try:
                    shm.unlink()
                except Exception:
                    pass
        return (t1 - t0) / n

    return batch


def attach_batch(cls, name, touch, perf, **kw):
    if touch:

        def batch(n):
            t0 = perf()
            for _ in range(n):
                shm = cls(name, **kw)
                shm.buf[0]
                shm.close()
            return (perf() - t0) / n

    else:

        def batch(n):
            t0 = perf()
            for _ in range(n):
                shm = cls(name, **kw)
                shm.close()
            return (perf() - t0) / n

    return batch


def ext_batches(ext, name, perf):
    """shmkit's extension called directly: the same native work as the class
    (name, open, map; unmap and close when the segment object dies; unlink),
    without the Python class around it."""
    open_segment = ext.open_segment
    make_filename = ext.make_filename
    unlink = ext.unlink
    full = "/" + name

    def create(n):
        t0 = perf()
        for _ in range(n):
            seg_name = make_filename()
            open_segment(seg_name, True, True, SIZE)  # freed at once: munmap+close
            unlink(seg_name)
        return (perf() - t0) / n

    def attach(n):
        t0 = perf()
        for _ in range(n):
            open_segment(full, False, False, None)
        return (perf() - t0) / n

    def attach_buf(n):
        t0 = perf()
        for _ in range(n):
            memoryview(open_segment(full, False, False, None))[0]
        return (perf() - t0) / n

    return {"create": create, "attach": attach, "attach_buf": attach_buf}


def make_attach_target(name):
    """The segment every attach workload opens: 4096 bytes, allocated, with
    its page written, made with plain os calls so that no implementation
    under test owns it."""
    path = "/dev/shm/" + name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, SIZE)
        os.pwrite(fd, b"\x01", 0)
    finally:
        os.close(fd)
    return path


def main():
    ap = common.parser(__doc__, rounds=(31, 9), clock="wall")
    ap.add_argument("--iters", type=int,
                    help="operations per batch (default 2000, quick 400)")
    ap.add_argument("--decompose", action="store_true",
                    help="also time shmkit's extension functions called directly")
    ap.add_argument("--workload", action="append", choices=WORKLOADS,
                    help="only this workload (repeatable)")
    ap.add_argument("--floor", metavar="PATH", help="the shm-floor binary to use")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor")
    ap.add_argument("--track-cost", action="store_true",
                    help="also time shmkit with track=False (the leak tracker's cost "
                         "is the difference from the shmkit row)")
    ap.add_argument("--cpu", type=int, help="pin this process (and the floor) to one CPU")
    args = common.start(ap.parse_args())
    iters = args.iters or (400 if args.quick else 2000)
    workloads = tuple(args.workload) if args.workload else WORKLOADS
    clock = common.CLOCKS[args.clock]
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # inherited by the floor

    from multiprocessing import shared_memory as std_mod

    try:
        import shmkit
        from shmkit import shared_memory as sk_mod
    except ImportError as e:
        common.log(f"note: shmkit does not import ({e}); measuring floor and stdlib only")
        sk_mod = None
    floor = None if args.no_floor else common.locate_floor(args.floor)

    impls = {}  # label -> {workload: batch fn}
    attach_name = f"shmkit_bench_{os.getpid()}"
    samples = {w: {} for w in workloads}  # workload -> label -> [ns]
    reference = {r: [] for r in REFERENCE_FLOORS}
    made_target = None
    stdlib_attached = False
    warmup = max(50, iters // 10)
    try:
        made_target = make_attach_target(attach_name)
        std = std_mod.SharedMemory
        impls["stdlib"] = {
            "create": create_batch(std, clock),
            "attach": attach_batch(std, attach_name, False, clock),
            "attach_buf": attach_batch(std, attach_name, True, clock),
        }
        if sk_mod is not None:
            sk = sk_mod.SharedMemory
            impls["shmkit"] = {
                "create": create_batch(sk, clock),
                "attach": attach_batch(sk, attach_name, False, clock),
                "attach_buf": attach_batch(sk, attach_name, True, clock),
            }
            if args.track_cost:
                # The leak tracker's price: shmkit's default (track=True)
                # against the same calls with track=False.
                impls["untracked"] = {
                    "create": create_batch(sk, clock, track=False),
                    "attach": attach_batch(sk, attach_name, False, clock, track=False),
                    "attach_buf": attach_batch(sk, attach_name, True, clock, track=False),
                }
            ext = getattr(shmkit, "_shmkit", None)
            if args.decompose and ext is not None and hasattr(ext, "open_segment"):
                impls["ext"] = ext_batches(ext, attach_name, clock)
        labels = (["floor"] if floor else []) + list(impls)

        # An untimed round: starts the stdlib's resource tracker, faults in
        # code and allocator pools.
        stdlib_attached = any(w.startswith("attach") for w in workloads)
        for w in workloads:
            for fns in impls.values():
                common.quiet_gc(fns[w], warmup)

        for r in range(args.rounds):
            for w in workloads:
                for label in common.rotated(labels, r):
                    if label == "floor":
                        rec = common.floor_batch(floor, [FLOOR_OF[w]], iters, size=SIZE,
                                                 clock=args.clock, attach_name=attach_name,
                                                 warmup=warmup)
                        ns = rec[FLOOR_OF[w]]["median_ns"]
                    else:
                        ns = common.quiet_gc(impls[label][w], iters)
                    samples[w].setdefault(label, []).append(ns)
            if floor:
                recs = common.floor_batch(floor, REFERENCE_FLOORS, iters, size=SIZE,
                                          clock=args.clock, attach_name=attach_name,
                                          warmup=warmup)
                for name, rec in recs.items():
                    reference[name].append(rec["median_ns"])
            common.progress(r, args.rounds, not args.json)
    finally:
        if made_target:
            try:
                if sk_mod is not None:
                    # Through a tracked shmkit handle: its unlink() also
                    # forgets the name in this process's leak tracker, which
                    # every tracked attach above registered it with; removed
                    # behind the tracker's back, the tracker would find it
                    # gone at exit and warn of a leak.
                    target = sk_mod.SharedMemory(attach_name)
                    target.close()
                    target.unlink()
                else:
                    os.unlink(made_target)
            except FileNotFoundError:
                pass
        # The stdlib registers every attach with its resource tracker and
        # never unregisters it (the tracker would warn and unlink at exit).
        if stdlib_attached:
            try:
                from multiprocessing import resource_tracker

                resource_tracker.unregister("/" + attach_name, "shared_memory")
            except Exception:
                pass

    rows = []
    for w in workloads:
        compare = {"stdlib": "speedup", "floor": "overhead", "untracked": "delta_us"}
        targets = list(TARGETS.get(w, []))
        if args.track_cost and w in ("create", "attach"):
            targets.append(TRACK_TARGET)
        rows.append(common.make_row(w, LABELS[w], samples[w], compare, targets))
    result = {
        "group": "shared_memory",
        "title": "SharedMemory",
        "meta": common.meta(args, iterations=iters, size=SIZE, floor=floor),
        "rows": rows,
        "notes": notes(rows, reference, samples),
        "reference_floor": {k: common.summarize(v) for k, v in reference.items() if v},
    }
    common.emit(result, args.json)


def notes(rows, reference, samples):
    """The stdlib against its own syscall sequence, and the extension alone."""
    out = []
    med = {k: common.summarize(v)["median_us"] for k, v in reference.items() if v}
    if med:
        out.append("floor references: " + ", ".join(
            f"{k} {common.fmt_time(v)}" for k, v in med.items()))
    by = {r["workload"]: r["results"] for r in rows}
    for w, own in (("create", "create_cpython"), ("attach", "attach_cpython")):
        if w in by and "stdlib" in by[w] and own in med:
            out.append(f"stdlib {LABELS[w]} ÷ its own syscall sequence ({own}): "
                       f"{by[w]['stdlib']['median_us'] / med[own]:.2f}×")
    for w, res in by.items():
        if "ext" in res and "floor" in res:
            out.append(f"{LABELS[w]}: the extension alone ÷ floor "
                       f"{res['shmkit-ext']['median_us'] / res['floor']['median_us']:.2f}×")
    return out


if __name__ == "__main__":
    common.run_main(main)
