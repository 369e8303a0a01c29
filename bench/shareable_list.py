#!/usr/bin/env python3
"""ShareableList: the stdlib and shmkit on the same workloads, alternating.

    python bench/shareable_list.py [--quick] [--json] [--rounds R] [--clock cpu|wall]

Item access on a 100-item list (int items; str items on a list of short
strings), ``sum`` and ``list`` over 100 000 ints, and construction from
``range(100_000)``, against the ShareableList speed targets.
Item loops include Python's own loop overhead on both sides, which makes
the ratios conservative. Rounds, medians and ratios as in bench/_common.py.
"""

import _common as common

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


def release(sl):
    sl.shm.close()
    sl.shm.unlink()


def make_batches(cls, keep):
    """One callable per workload: run n operations, return elapsed ns. The
    lists it makes are appended to keep, for the caller to release."""
    small = cls(list(range(100)))
    keep.append(small)
    text = cls(["hello", "world"] * 50)
    keep.append(text)
    big = cls(range(BIG))
    keep.append(big)

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
            sl = None
            try:
                t = clock()
                sl = cls(range(BIG))
                total += clock() - t
            finally:
                if sl is not None:
                    release(sl)
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
    return batches


def main():
    args = common.start(common.parser(__doc__, rounds=(15, 5)).parse_args())

    from multiprocessing.shared_memory import ShareableList as StdList

    from shmkit.shared_memory import ShareableList as ShmList

    impls = {"stdlib": StdList, "shmkit": ShmList}
    clock = common.CLOCKS[args.clock]
    samples = {w: {k: [] for k in impls} for w in WORKLOADS}
    keep = []  # every long-lived list, released at the end whatever happens
    try:
        made = {k: make_batches(cls, keep) for k, cls in impls.items()}
        for r in range(args.rounds):
            for w, (_, ops, _) in WORKLOADS.items():
                n = ops[1] if args.quick else ops[0]
                for impl in common.rotated(list(impls), r):
                    samples[w][impl].append(common.quiet_gc(made[impl][w], n, clock) / n)
            common.progress(r, args.rounds, not args.json)
    finally:
        for sl in keep:
            release(sl)

    rows = []
    for w, (label, _, target) in WORKLOADS.items():
        targets = [] if target is None else [
            common.Target(3, "speedup", "stdlib", ">=", target, f"≥ {target:g}× the stdlib")]
        rows.append(common.make_row(w, label, samples[w], targets=targets))
    result = {"group": "shareable_list", "title": "ShareableList",
              "meta": common.meta(args, items=BIG), "rows": rows, "notes": []}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
