#!/usr/bin/env python3
"""SharedMemoryManager: the stdlib and shmkit on the same workloads, alternating.

    python bench/managers.py [--quick] [--json] [--rounds R]

Wall clock (the work is split between this process and the manager's),
against these targets:

* ``smm.SharedMemory(4096)``: stdlib÷shmkit ≥ 10×;
* ``start()`` + ``shutdown()``: stdlib÷shmkit ≥ 5×;
* ``shutdown()`` with 1 000 segments: shmkit's shutdown ÷ unlinking the
  same segments directly (``shm_unlink`` from this process) ≤ 1.5×;
* ``smm.ShareableList(range(100))``: reported, no target.

Rounds, medians and ratios as in bench/_common.py.
"""

import time

import _common as common

SIZE = 4096
MANY = 1000
clock = time.perf_counter_ns


def made_batch(cls, n, make, close):
    """n × ``make(smm)`` on one started manager (the start, the
    ``close(made)`` calls and the shutdown are not timed)."""
    smm = cls()
    smm.start()
    made = []
    try:
        t = clock()
        for _ in range(n):
            made.append(make(smm))
        elapsed = clock() - t
    finally:
        for obj in made:
            close(obj)
        smm.shutdown()
    return elapsed


def create_batch(cls, n):
    """n × ``smm.SharedMemory(4096)`` on one started manager."""
    return made_batch(cls, n, lambda smm: smm.SharedMemory(SIZE), lambda shm: shm.close())


def list_batch(cls, n):
    """n × ``smm.ShareableList(range(100))`` on one started manager."""
    return made_batch(cls, n, lambda smm: smm.ShareableList(range(100)),
                      lambda sl: sl.shm.close())


def lifecycle_batch(cls, n):
    """n × (``start()`` + ``shutdown()``)."""
    from multiprocessing import process

    # shmkit's start() puts the socket in this process's private directory
    # (multiprocessing.util.get_temp_dir(), made once). A forked stdlib
    # manager would inherit that directory and skip making and removing
    # its own, which a program using only the stdlib never skips: so the
    # stdlib runs without it, as it would alone.
    config = process.current_process()._config
    saved = config.pop("tempdir", None) if cls.__module__.startswith("multiprocessing") else None
    total = 0
    try:
        for _ in range(n):
            t = clock()
            smm = cls()
            smm.start()
            smm.shutdown()
            total += clock() - t
    finally:
        if saved is not None:
            config["tempdir"] = saved
    return total


def shutdown_batch(cls, n):
    """``shutdown()`` of a manager holding MANY segments (n times)."""
    total = 0
    for _ in range(n):
        smm = cls()
        smm.start()
        try:
            for _ in range(MANY):
                smm.SharedMemory(SIZE).close()
        except BaseException:
            smm.shutdown()  # unlinks what was made so far
            raise
        t = clock()
        smm.shutdown()
        total += clock() - t
    return total


def direct_unlink_batch(n):
    """Unlinking MANY segments directly from this process (n times): the
    floor the manager's shutdown is held to."""
    from shmkit import _shmkit
    from shmkit.shared_memory import SharedMemory

    total = 0
    for _ in range(n):
        names = []
        try:
            for _ in range(MANY):
                # Untracked: the floor is the unlinking alone.
                shm = SharedMemory(create=True, size=SIZE, track=False)
                names.append(shm._name)
                shm.close()
            t = clock()
            for name in names:
                _shmkit.unlink(name)
            total += clock() - t
            names = []
        finally:
            for name in names:  # only if interrupted
                try:
                    _shmkit.unlink(name)
                except OSError:
                    pass
    return total


# name: (label, ops per batch (full, quick), batch function, targets)
WORKLOADS = {
    "create": (f"smm.SharedMemory({SIZE})", (400, 100), create_batch,
               [common.Target(5, "speedup", "stdlib", ">=", 10.0, "≥ 10× the stdlib")]),
    "list": ("smm.ShareableList(range(100))", (200, 50), list_batch, []),
    "lifecycle": ("start() + shutdown()", (10, 3), lifecycle_batch,
                  [common.Target(5, "speedup", "stdlib", ">=", 5.0, "≥ 5× the stdlib")]),
    "shutdown": (f"shutdown(), {MANY:,} segments", (1, 1), shutdown_batch,
                 [common.Target(5, "overhead", "direct", "<=", 1.5,
                                "≤ 1.5× unlinking them directly")]),
}


def main():
    args = common.start(common.parser(__doc__, rounds=(9, 3), clock="wall").parse_args())
    if args.clock != "wall":
        common.log("note: managers.py times with the wall clock (two processes do the work)")
        args.clock = "wall"

    from multiprocessing.managers import SharedMemoryManager as StdManager

    from shmkit.managers import SharedMemoryManager as ShmManager

    impls = {"stdlib": StdManager, "shmkit": ShmManager}
    samples = {w: {k: [] for k in impls} for w in WORKLOADS}
    samples["shutdown"]["direct"] = []
    for r in range(args.rounds):
        for w, (_, ops, batch, _) in WORKLOADS.items():
            n = ops[1] if args.quick else ops[0]
            for impl in common.rotated(list(impls), r):
                samples[w][impl].append(common.quiet_gc(batch, impls[impl], n) / n)
            if w == "shutdown":
                samples[w]["direct"].append(common.quiet_gc(direct_unlink_batch, n) / n)
        common.progress(r, args.rounds, not args.json)

    compare = {"stdlib": "speedup", "direct": "overhead"}
    rows = [common.make_row(w, label, samples[w], compare, targets)
            for w, (label, _, _, targets) in WORKLOADS.items()]
    result = {"group": "managers", "title": "SharedMemoryManager",
              "meta": common.meta(args, segments=MANY), "rows": rows, "notes": []}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
