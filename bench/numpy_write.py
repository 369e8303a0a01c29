#!/usr/bin/env python3
"""Writing 1 GiB through a numpy view: stdlib vs shmkit vs private memory.

    python bench/numpy_write.py [--quick] [--json] [--rounds R] [--size MiB]

The physical limit of shared memory is the memory itself: once a segment is
mapped, a numpy array on its ``buf`` is written at memcpy speed, whoever
made the segment. This measures that, beside the same copy into private
memory:

* first touch -- make a fresh destination and copy 1 GiB into it:
                 ``SharedMemory(create=True, size=1 GiB)`` + ``np.ndarray``
                 on its ``buf`` (stdlib, shmkit), or ``np.empty`` (private),
                 then ``np.copyto(dst, src)``; every page faults in on the
                 way (shmkit allocates the pages up front, at create, so
                 that a full /dev/shm is an ENOSPC there rather than a
                 SIGBUS here: the row charges that to it);
* warm        -- the same copy again into the same, now mapped, pages.

The source is a private array whose pages are already touched. numpy's
request for transparent huge pages is turned off, so that private memory is
faulted in 4 KiB pages as /dev/shm is here (with huge pages, which the
kernel grants only when it has some free, private first touch swings by 2×
from round to round). CPU time (page faults are kernel time of this
process, so they count). Rounds, medians and ratios as in bench/_common.py;
"private" is the floor.
"""

import _common as common

MiB = 1 << 20
SIZE_MIB = 1024
QUICK_SIZE_MIB = 64
IMPLS = ("stdlib", "shmkit", "private")


def destination(impl, mods, nbytes):
    """(array, release): a fresh nbytes destination, and how to free it."""
    import numpy as np

    if impl == "private":
        return np.empty(nbytes, dtype=np.uint8), lambda: None
    shm = mods[impl].SharedMemory(create=True, size=nbytes)

    def release():
        shm.close()
        shm.unlink()

    try:
        return np.ndarray((nbytes,), dtype=np.uint8, buffer=shm.buf), release
    except BaseException:
        release()
        raise


def batch(impl, mods, src, clock):
    """One round of one implementation: (first touch ns, warm ns)."""
    import numpy as np

    release = None
    try:
        t0 = clock()
        dst, release = destination(impl, mods, src.nbytes)
        np.copyto(dst, src)
        t1 = clock()
        np.copyto(dst, src)
        t2 = clock()
        if dst[-1] != src[-1]:
            raise AssertionError(f"{impl}: the copy did not land")
        # The stdlib's close() refuses while a numpy view is alive.
        del dst
        return t1 - t0, t2 - t1
    finally:
        if release is not None:
            release()


def same_page_size_as_shm():
    """Stops numpy from asking for transparent huge pages (madvise) for its
    arrays; returns whether it could."""
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:
        from numpy.core import multiarray  # numpy 1
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None:
        return False
    setter(False)
    return True


def main():
    ap = common.parser(__doc__, rounds=(9, 3))
    ap.add_argument("--size", type=int, metavar="MiB",
                    help=f"bytes to write, in MiB (default {SIZE_MIB}, quick {QUICK_SIZE_MIB})")
    args = common.start(ap.parse_args())
    size_mib = args.size or (QUICK_SIZE_MIB if args.quick else SIZE_MIB)
    clock = common.CLOCKS[args.clock]

    import numpy as np
    from multiprocessing import shared_memory as std_mod

    from shmkit import shared_memory as sk_mod

    mods = {"stdlib": std_mod, "shmkit": sk_mod}
    small_pages = same_page_size_as_shm()
    src = np.ones(size_mib * MiB, dtype=np.uint8)  # touched: its faults are not timed
    first = {i: [] for i in IMPLS}
    warm = {i: [] for i in IMPLS}
    for i in IMPLS:  # untimed: code paths and the allocator warmed up
        batch(i, mods, src[:MiB], clock)
    for r in range(args.rounds):
        for impl in common.rotated(list(IMPLS), r):
            f, w = common.quiet_gc(batch, impl, mods, src, clock)
            first[impl].append(f)
            warm[impl].append(w)
        common.progress(r, args.rounds, not args.json)

    size = f"{size_mib} MiB" if size_mib < 1024 else f"{size_mib / 1024:g} GiB"
    compare = {"stdlib": "speedup", "private": "overhead"}
    rows = [
        common.make_row("first_touch", f"create + write {size}, first touch", first, compare),
        common.make_row("warm", f"write {size}, warm", warm, compare),
    ]
    notes = [] if small_pages else ["numpy may give private arrays huge pages here"]
    for row in rows:
        rates = ", ".join(f"{impl} {size_mib * MiB / (c['median_us'] * 1e3):.1f} GB/s"
                          for impl, c in row["results"].items())
        notes.append(f"{row['label']}: {rates}")
    result = {"group": "numpy_write", "title": f"Writing {size} through numpy",
              "meta": common.meta(args, size_mib=size_mib, private_huge_pages=not small_pages), "rows": rows, "notes": notes}
    common.emit(result, args.json)


if __name__ == "__main__":
    common.run_main(main)
