#!/usr/bin/env python3
"""shmkit.numpy arrays handed to pool workers, against pickling, joblib's
automatic memmapping and SharedArray.

    python bench/arrays.py [--quick] [--json] [--rounds R] [--size MiB]

Rows (wall clock; pools and workers are started before the clock):

* ppe_sum    -- a ProcessPoolExecutor worker gets a float64 array of SIZE
                and returns its sum: **stdlib** submits a private array
                (pickled through the pipe), **shmkit** a ``shmkit.numpy``
                array (its name travels);
* ppe_handoff -- the same hand-over with a worker that only reads the
                array's length: what passing the array costs, without the
                sum;
* per_task   -- the cost of one task whose argument is a shmkit array of
                1 KiB and of SIZE (the worker only reads its length): the
                two must be within 1.5x of each other;
* pool_map   -- ``Pool.map(np.sum, 64 slices)`` of one SIZE shmkit array,
                against ``joblib.Parallel`` over the same 64 slices of a
                private array (its automatic memmapping moves them), and
                SharedArray (a named array the workers attach to) if it is
                installed;
* fallback   -- ``ForkingPickler.dumps`` of a private 1 KiB array, which
                shmkit's reducer for ``numpy.ndarray`` hands to numpy's own
                reduce, against numpy's reduce alone (**numpy**);
* create_fill -- creating a SIZE float64 array and filling it with ones,
                shmkit against a private ``np.empty``, both freed after.
                numpy's request for transparent huge pages is turned off, as
                in numpy_write.py, so both are faulted in 4 KiB pages.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time

import _common as common

MiB = 1 << 20
SIZE_MIB = 1024
QUICK_SIZE_MIB = 32
SLICES = 64
TASKS = 100
SETTLE = 2.0
QUICK_SETTLE = 0.1


def task_len(a):
    return len(a)


def task_sum(a):
    import numpy as np

    return float(np.sum(a))


def sharedarray_sum(args):
    import SharedArray

    name, lo, hi = args
    return float(SharedArray.attach(name)[lo:hi].sum())


def timed(fn):
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def main():
    ap = common.parser(__doc__, rounds=(5, 3), clock="wall")
    ap.add_argument("--size", type=int, metavar="MiB",
                    help=f"array size in MiB (default {SIZE_MIB}, quick {QUICK_SIZE_MIB})")
    args = common.start(ap.parse_args())
    args.clock = "wall"
    size_mib = args.size or (QUICK_SIZE_MIB if args.quick else SIZE_MIB)
    n = size_mib * MiB // 8

    import numpy as np

    import shmkit.numpy as snp

    core = getattr(np, "_core", None) or np.core
    core.multiarray._set_madvise_hugepage(False)
    try:
        import joblib
    except ImportError:
        joblib = None
    try:
        import SharedArray
    except ImportError:
        SharedArray = None
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    private = np.ones(n)
    shared = snp.ones(n)
    small = snp.ones(1024 // 8)
    want = float(n)
    step = n // SLICES
    bounds = [(i * step, (i + 1) * step) for i in range(SLICES)]
    sa_name = f"shm://shmkit_bench_{os.getpid()}"
    sa = None
    if SharedArray is not None:
        sa = SharedArray.create(sa_name, n)
        sa[:] = 1.0
    rows = []
    notes = []
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    # Workers of their own for the per-task row, which the gigabyte copies
    # of the stdlib rows never went through.
    ex_tasks = ProcessPoolExecutor(2, mp_context=ctx)
    pool = ctx.Pool(2)
    par = joblib.Parallel(n_jobs=2, backend="loky") if joblib is not None else None
    try:
        # Warm-up: workers started, modules imported, code paths run.
        for a in (private[:1000], shared[:1000], small):
            ex.submit(task_sum, a).result()
            ex_tasks.submit(task_sum, a).result()
        pool.map(task_sum, [shared[lo:lo + 10] for lo, _ in bounds])
        if par is not None:
            par(joblib.delayed(task_sum)(private[lo:hi]) for lo, hi in bounds[:4])

        def ppe(a):
            assert ex.submit(task_sum, a).result() == want

        def ppe_len(a):
            assert ex.submit(task_len, a).result() == len(a)

        def per_task(a):
            futs = [ex_tasks.submit(task_len, a) for _ in range(TASKS)]
            assert all(f.result() == len(a) for f in futs)

        def pool_map():
            sums = pool.map(task_sum, [shared[lo:hi] for lo, hi in bounds])
            assert sum(sums) == step * SLICES

        def joblib_map():
            sums = par(joblib.delayed(task_sum)(private[lo:hi]) for lo, hi in bounds)
            assert sum(sums) == step * SLICES

        def sharedarray_map():
            sums = pool.map(sharedarray_sum, [(sa_name, lo, hi) for lo, hi in bounds])
            assert sum(sums) == step * SLICES

        def create_fill_shmkit():
            a = snp.empty(n)
            a.fill(1.0)
            del a

        def create_fill_private():
            a = np.empty(n)
            a.fill(1.0)
            del a

        from multiprocessing.reduction import ForkingPickler

        tiny = np.ones(128)
        ours = ForkingPickler._extra_reducers[np.ndarray]

        def dumps_with(reducer):
            ForkingPickler._extra_reducers[np.ndarray] = reducer
            try:
                for _ in range(TASKS * 20):
                    ForkingPickler.dumps(tiny)
            finally:
                ForkingPickler._extra_reducers[np.ndarray] = ours

        def numpys_own(a):
            return a.__reduce_ex__(pickle.DEFAULT_PROTOCOL)

        workloads = {
            "ppe_handoff": {"stdlib": lambda: ppe_len(private), "shmkit": lambda: ppe_len(shared)},
            "ppe_sum": {"stdlib": lambda: ppe(private), "shmkit": lambda: ppe(shared)},
            "per_task": {"1 KiB": lambda: per_task(small), "shmkit": lambda: per_task(shared)},
            "pool_map": {"shmkit": pool_map},
            "fallback": {"numpy": lambda: dumps_with(numpys_own), "shmkit": lambda: dumps_with(ours)},
            "create_fill": {"private": create_fill_private, "shmkit": create_fill_shmkit},
        }
        if par is not None:
            workloads["pool_map"]["joblib"] = joblib_map
        if sa is not None:
            workloads["pool_map"]["SharedArray"] = sharedarray_map
        samples = {w: {k: [] for k in impls} for w, impls in workloads.items()}
        for r in range(args.rounds):
            for w, impls in workloads.items():
                for k in common.rotated(list(impls), r):
                    # Untimed: the previous batch's large arrays are unmapped
                    # in the background (shmkit's) or by the kernel (a
                    # worker's pickled copy); each batch starts after that.
                    time.sleep(QUICK_SETTLE if args.quick else SETTLE)
                    ns = common.quiet_gc(timed, impls[k])
                    if w == "per_task":
                        ns //= TASKS
                    elif w == "fallback":
                        ns //= TASKS * 20
                    samples[w][k].append(ns)
            common.progress(r, args.rounds, not args.json)
    finally:
        ex.shutdown()
        ex_tasks.shutdown()
        pool.close()
        pool.join()
        if sa is not None:
            del sa
            SharedArray.delete(sa_name)
    size = f"{size_mib} MiB" if size_mib < 1024 else f"{size_mib // 1024} GiB"
    rows.append(common.make_row(
        "ppe_sum", f"ProcessPoolExecutor: sum a {size} float64 array", samples["ppe_sum"],
        {"stdlib": "speedup"},
        [common.Target(17, "speedup", "stdlib", ">=", 50.0, "≥ 50× stdlib")]))
    rows.append(common.make_row(
        "ppe_handoff", f"ProcessPoolExecutor: hand over a {size} array (worker: len)",
        samples["ppe_handoff"], {"stdlib": "speedup"}))
    rows.append(common.make_row(
        "per_task", f"ProcessPoolExecutor task with a {size} (vs 1 KiB) array",
        samples["per_task"], {"1 KiB": "overhead"},
        [common.Target(17, "overhead", "1 KiB", "<=", 1.5, "≤ 1.5× 1 KiB")]))
    compare = {k: "speedup" for k in samples["pool_map"] if k != "shmkit"}
    targets = ([common.Target(17, "speedup", "joblib", ">=", 2.0, "≥ 2× joblib")]
               if "joblib" in compare else [])
    rows.append(common.make_row(
        "pool_map", f"Pool.map over {SLICES} slices of a {size} array",
        samples["pool_map"], compare, targets))
    rows.append(common.make_row(
        "fallback", "ForkingPickler.dumps of a private 1 KiB array", samples["fallback"],
        {"numpy": "overhead"}))
    rows.append(common.make_row(
        "create_fill", f"create and fill a {size} float64 array", samples["create_fill"],
        {"private": "overhead"},
        [common.Target(17, "overhead", "private", "<=", 1.3, "≤ 1.3× private")]))
    if joblib is None:
        notes.append("joblib is not installed: no joblib column")
    if SharedArray is None:
        notes.append("SharedArray is not installed: no SharedArray column")
    result = {"group": "arrays", "title": f"shmkit.numpy arrays of {size} in pools",
              "meta": common.meta(args, size_mib=size_mib), "rows": rows, "notes": notes}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
