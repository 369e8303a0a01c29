#!/usr/bin/env python3
"""SharedMemoryManager: the stdlib and shmkit on the same workloads, alternating.

    python bench/managers.py [--quick] [--json] [--rounds R]

Each round runs one batch of every workload on each implementation, in an
order that rotates from round to round; the table gives the median of the
per-batch means (wall clock: the work is split between two processes) and
the ratio against the targets of the manager issue:

* ``smm.SharedMemory(4096)``: stdlib÷shmkit ≥ 10×;
* ``start()`` + ``shutdown()``: stdlib÷shmkit ≥ 5×;
* ``shutdown()`` with 1 000 segments: shmkit's shutdown ÷ unlinking the
  same segments directly (``shm_unlink`` from this process) ≤ 1.5×.

Run as root, it re-executes itself with a private /dev/shm (see
bench/shared_memory.py, whose helpers it shares).
"""

import argparse
import gc
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shared_memory as common  # noqa: E402  (bench/shared_memory.py)

SIZE = 4096
MANY = 1000
clock = time.perf_counter_ns


def create_batch(cls, n):
    """n × ``smm.SharedMemory(4096)`` on one started manager (the start,
    closes and shutdown are not timed)."""
    smm = cls()
    smm.start()
    made = []
    try:
        t = clock()
        for _ in range(n):
            made.append(smm.SharedMemory(SIZE))
        elapsed = clock() - t
    finally:
        for shm in made:
            shm.close()
        smm.shutdown()
    return elapsed


def lifecycle_batch(cls, n):
    """n × (``start()`` + ``shutdown()``)."""
    total = 0
    for _ in range(n):
        t = clock()
        smm = cls()
        smm.start()
        smm.shutdown()
        total += clock() - t
    return total


def shutdown_batch(cls, n):
    """``shutdown()`` of a manager holding MANY segments (n times)."""
    total = 0
    for _ in range(n):
        smm = cls()
        smm.start()
        for _ in range(MANY):
            smm.SharedMemory(SIZE).close()
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
        for _ in range(MANY):
            shm = SharedMemory(create=True, size=SIZE)
            names.append(shm._name)
            shm.close()
        t = clock()
        for name in names:
            _shmkit.unlink(name)
        total += clock() - t
    return total


# name: (label, ops per batch (full, quick))
WORKLOADS = {
    "create": (f"smm.SharedMemory({SIZE})", (400, 100)),
    "lifecycle": ("start() + shutdown()", (10, 3)),
    "shutdown": (f"shutdown(), {MANY:,} segments", (1, 1)),
}
TARGETS = {"create": 10.0, "lifecycle": 5.0}
SHUTDOWN_TARGET = 1.5  # shmkit shutdown ÷ direct unlink, at most


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    parser.add_argument("--rounds", type=int, help="rounds (default 9, quick 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--private-shm",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="re-run in a private /dev/shm (default when root)",
    )
    args = parser.parse_args()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    common.maybe_reexec_private(args, log)

    from multiprocessing.managers import SharedMemoryManager as StdManager

    from shmkit.managers import SharedMemoryManager as ShmManager

    impls = {"stdlib": StdManager, "shmkit": ShmManager}
    batches = {"create": create_batch, "lifecycle": lifecycle_batch, "shutdown": shutdown_batch}
    rounds = args.rounds or (3 if args.quick else 9)
    samples = {w: {k: [] for k in impls} for w in WORKLOADS}
    samples["shutdown"]["direct"] = []
    gc.disable()
    try:
        for r in range(rounds):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for w, (_, ops) in WORKLOADS.items():
                n = ops[1] if args.quick else ops[0]
                for impl in order:
                    samples[w][impl].append(batches[w](impls[impl], n) / n)
                if w == "shutdown":
                    samples[w]["direct"].append(direct_unlink_batch(n) / n)
            gc.collect()
    finally:
        gc.enable()

    med = {w: {k: common.summarize(v)["median_us"] for k, v in s.items()} for w, s in samples.items()}
    rows = []
    for w, (label, _) in WORKLOADS.items():
        row = {
            "workload": w,
            "label": label,
            "stdlib_us": med[w]["stdlib"],
            "shmkit_us": med[w]["shmkit"],
            "ratio": med[w]["stdlib"] / med[w]["shmkit"],
        }
        if w in TARGETS:
            row["target"] = f"stdlib÷shmkit ≥ {TARGETS[w]:g}×"
            row["met"] = row["ratio"] >= TARGETS[w]
        else:
            row["direct_unlink_us"] = med[w]["direct"]
            row["shutdown_over_direct"] = med[w]["shmkit"] / med[w]["direct"]
            row["target"] = f"shmkit÷direct unlink ≤ {SHUTDOWN_TARGET:g}×"
            row["met"] = row["shutdown_over_direct"] <= SHUTDOWN_TARGET
        rows.append(row)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "rounds": rounds, "rows": rows}, indent=1))
        return
    print(
        f"SharedMemoryManager: CPython {platform.python_version()}, {rounds} rounds, "
        "wall clock, median of per-batch means"
    )
    print(f"{'workload':<28} {'stdlib':>11} {'shmkit':>11} {'stdlib÷shmkit':>14}   target")
    for row in rows:
        def unit(us):
            return f"{us:8.1f} µs" if us < 1000 else f"{us / 1e3:8.2f} ms"

        extra = ""
        if "shutdown_over_direct" in row:
            extra = (f"  (direct unlink {unit(row['direct_unlink_us']).strip()}: "
                     f"shmkit {row['shutdown_over_direct']:.2f}× of it)")
        print(
            f"{row['label']:<28} {unit(row['stdlib_us']):>11} {unit(row['shmkit_us']):>11}"
            f" {row['ratio']:13.1f}×   {row['target']}: {'yes' if row['met'] else 'NO'}{extra}"
        )


if __name__ == "__main__":
    main()
