#!/usr/bin/env python3
"""ShareableList: the stdlib and shmkit on the same workloads, alternating.

    python bench/shareable_list.py [--quick] [--json] [--rounds R] [--clock cpu|wall]

Each round runs one batch of every workload on each implementation, in an
order that rotates from round to round; the table gives the median of the
per-batch means and the ratio stdlib÷shmkit, against the targets of the
ShareableList issue. Item loops include Python's own loop overhead on both
sides, which makes the ratios conservative. Run as root, it re-executes
itself with a private /dev/shm (see bench/shared_memory.py, whose helpers it
shares).
"""

import argparse
import gc
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shared_memory as common  # noqa: E402  (bench/shared_memory.py)

BIG = 100_000

# name: (label, ops per batch (full, quick), target ratio stdlib÷shmkit)
WORKLOADS = {
    "get_int": ("sl[i] get, int", (20_000, 5_000), 15.0),
    "set_int": ("sl[i] = int", (20_000, 5_000), 15.0),
    "get_str": ("sl[i] get, str", (20_000, 5_000), None),
    "set_str": ("sl[i] = str", (20_000, 5_000), None),
    "sum": (f"sum(sl), {BIG:,} ints", (3, 1), 50.0),
    "list": (f"list(sl), {BIG:,} ints", (3, 1), 50.0),
    "create": (f"ShareableList(range({BIG:,}))", (2, 1), 10.0),
}


def make_batches(cls):
    """One callable per workload: run n operations, return elapsed ns."""
    small = cls(list(range(100)))
    text = cls(["hello", "world"] * 50)
    big = cls(range(BIG))
    keep = [small, text, big]

    def loop(stmt_fn):
        def batch(n, clock):
            r = range(n)
            t = clock()
            stmt_fn(r)
            return clock() - t

        return batch

    def get_int(r):
        sl = small
        for _ in r:
            sl[5]

    def set_int(r):
        sl = small
        for _ in r:
            sl[5] = 7

    def get_str(r):
        sl = text
        for _ in r:
            sl[3]

    def set_str(r):
        sl = text
        for _ in r:
            sl[3] = "there"

    def sum_big(r):
        for _ in r:
            sum(big)

    def list_big(r):
        for _ in r:
            list(big)

    def create_batch(n, clock):
        total = 0
        for _ in range(n):
            t = clock()
            sl = cls(range(BIG))
            total += clock() - t
            sl.shm.close()
            sl.shm.unlink()
        return total

    batches = {
        "get_int": loop(get_int),
        "set_int": loop(set_int),
        "get_str": loop(get_str),
        "set_str": loop(set_str),
        "sum": loop(sum_big),
        "list": loop(list_big),
        "create": create_batch,
    }

    def cleanup():
        for sl in keep:
            sl.shm.close()
            sl.shm.unlink()

    return batches, cleanup


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    parser.add_argument("--rounds", type=int, help="rounds (default 15, quick 5)")
    parser.add_argument("--clock", choices=sorted(common.CLOCKS), default="cpu")
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

    from multiprocessing.shared_memory import ShareableList as StdList

    from shmkit.shared_memory import ShareableList as ShmList

    impls = {"stdlib": StdList, "shmkit": ShmList}
    rounds = args.rounds or (5 if args.quick else 15)
    clock = common.CLOCKS[args.clock]
    made = {k: make_batches(v) for k, v in impls.items()}
    samples = {w: {k: [] for k in impls} for w in WORKLOADS}
    try:
        gc.disable()
        for r in range(rounds):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for w, (_, ops, _) in WORKLOADS.items():
                n = ops[1] if args.quick else ops[0]
                for impl in order:
                    ns = made[impl][0][w](n, clock)
                    samples[w][impl].append(ns / n)
    finally:
        gc.enable()
        for _, cleanup in made.values():
            cleanup()

    rows = []
    for w, (label, _, target) in WORKLOADS.items():
        med = {k: common.summarize(v)["median_us"] * 1e3 for k, v in samples[w].items()}
        ratio = med["stdlib"] / med["shmkit"]
        rows.append(
            {
                "workload": w,
                "label": label,
                "stdlib_us": med["stdlib"] / 1e3,
                "shmkit_us": med["shmkit"] / 1e3,
                "ratio": ratio,
                "target": target,
                "met": None if target is None else ratio >= target,
            }
        )
    if args.json:
        print(json.dumps({"rounds": rounds, "clock": args.clock, "rows": rows}, indent=1))
        return
    print(
        f"ShareableList: CPython {platform.python_version()}, {rounds} rounds, "
        f"{args.clock} clock, median of per-batch means"
    )
    print(f"{'workload':<32} {'stdlib':>12} {'shmkit':>12} {'stdlib÷shmkit':>14} {'target':>7} met")
    for row in rows:
        unit = (lambda us: f"{us:9.3f} µs") if row["stdlib_us"] < 100 else (lambda us: f"{us / 1e3:9.2f} ms")
        target = "" if row["target"] is None else f"≥{row['target']:.0f}×"
        met = "—" if row["met"] is None else ("yes" if row["met"] else "NO")
        print(
            f"{row['label']:<32} {unit(row['stdlib_us']):>12} {unit(row['shmkit_us']):>12}"
            f" {row['ratio']:13.1f}× {target:>7} {met}"
        )


if __name__ == "__main__":
    main()
