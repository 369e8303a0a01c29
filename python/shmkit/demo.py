"""The shmkit demo: several worker processes share one large buffer.

The parent fills a float64 array in a shmkit SharedMemory block. Workers
attach to it by name, each sums its stripe in place (no copy), reports
progress, and posts its sum and state in a ShareableList they share. Then the same data goes to the same workers the usual way, pickled
through a Pipe, and the two throughputs are set side by side. The demo checks
that both ways give the same answer and that the segments it made are gone.

Run it with ``python -m shmkit demo`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np

from .shared_memory import ShareableList, SharedMemory

CHUNK = 1 << 20  # float64 items a worker sums between progress reports


def _shm_worker(name, start, stop, progress, results_name, index, go):
    shm = SharedMemory(name)
    results = ShareableList(name=results_name)  # attached by name, like the buffer
    try:
        data = np.ndarray((stop,), dtype=np.float64, buffer=shm.buf)
        progress.put(0)  # attached: ready
        go.wait()
        results[len(results) // 2 + index] = "summing"
        total = 0.0
        for lo in range(start, stop, CHUNK):
            hi = min(lo + CHUNK, stop)
            total += float(data[lo:hi].sum())
            progress.put(hi - lo)
        del data
        results[index] = total
        results[len(results) // 2 + index] = "done"
    finally:
        results.shm.close()
        shm.close()


def _pipe_worker(conn, progress, results, index):
    total = 0.0
    progress.put(0)  # ready
    while True:
        part = conn.recv()  # unpickles a copy of the chunk
        if part is None:
            break
        total += float(part.sum())
        progress.put(len(part))
    results[index] = total
    conn.close()


def _send_all(data, n, workers, pipes):
    chunks = [range(lo, hi, CHUNK) for lo, hi in _stripes(n, workers)]
    stops = [hi for _, hi in _stripes(n, workers)]
    for row in range(max(len(c) for c in chunks)):
        for w, conn in enumerate(pipes):
            if row < len(chunks[w]):
                lo = chunks[w][row]
                conn.send(data[lo : min(lo + CHUNK, stops[w])])  # pickles a copy
    for conn in pipes:
        conn.send(None)


def _rate(done, started):
    """GB/s of float64 data summed since ``started``."""
    return done * 8 / max(time.perf_counter() - started, 1e-9) / 1e9


def _bar(done, total, label, started, width=32):
    frac = done / total if total else 1.0
    filled = int(width * frac)
    sys.stdout.write(
        f"\r  {label:<26} [{'#' * filled}{'.' * (width - filled)}] {frac:6.1%}"
        f"  {_rate(done, started):6.2f} GB/s summed so far"
    )
    sys.stdout.flush()


def _line(done, total, label, started):
    # Not a terminal (a pipe, a CI log): no carriage returns, a plain line.
    frac = done / total if total else 1.0
    print(f"  {label}: {frac:6.1%} summed, {_rate(done, started):.2f} GB/s so far", flush=True)


def _wait_ready(progress, procs):
    for _ in procs:
        progress.get(timeout=60)


def _follow(progress, total, label, procs, started, interval=1.0):
    """Shows the workers' progress until they are done: a bar redrawn in
    place on a terminal, else a line every ``interval`` seconds. Returns
    the seconds from ``started`` (the go) until the last worker exited."""
    tty = sys.stdout.isatty()
    next_line = started + interval
    done = 0
    while done < total:
        try:
            done += progress.get(timeout=0.5)
        except Exception:
            if not any(p.is_alive() for p in procs):
                raise RuntimeError(f"{label}: a worker died") from None
            continue
        if tty:
            _bar(done, total, label, started)
        elif time.perf_counter() >= next_line:
            _line(done, total, label, started)
            next_line += interval
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{label}: worker exited with {p.exitcode}")
    elapsed = time.perf_counter() - started
    if tty:
        sys.stdout.write("\n")
    else:
        _line(done, total, label, started)
    return elapsed


def _stripes(n, workers):
    step = -(-n // workers)
    return [(i * step, min((i + 1) * step, n)) for i in range(workers)]


def run(megabytes: int = 512, workers: int = 4) -> dict:
    """Runs the demo and returns its figures (also printed)."""
    # fork: workers start in milliseconds, and multiprocessing's own
    # semaphores are unlinked at once instead of lingering in /dev/shm.
    ctx = mp.get_context("fork")
    made = []  # the segments it makes, which must all be gone at the end
    n = megabytes * (1 << 20) // 8
    nbytes = n * 8
    print(f"shmkit demo: {workers} worker processes, {nbytes / 2**20:.0f} MiB of float64")

    t0 = time.perf_counter()
    shm = SharedMemory(create=True, size=nbytes)
    made.append(shm.name)
    board = None
    try:
        data = np.ndarray((n,), dtype=np.float64, buffer=shm.buf)
        data[:] = np.arange(n, dtype=np.float64) % 1000
        t_fill = time.perf_counter() - t0
        expected = float(data.sum())
        print(f"  segment {shm.name!r}: {shm.size:,} bytes, created and filled in {t_fill:.2f} s")

        progress = ctx.Queue()
        go = ctx.Event()
        # Per-worker sums and states, in a ShareableList the workers attach
        # to by name: floats first, then a status string each.
        board = ShareableList([0.0] * workers + ["waiting"] * workers)
        made.append(board.shm.name)
        print(f"  results board: ShareableList {board.shm.name!r}, format {board.format!r}")
        procs = [
            ctx.Process(
                target=_shm_worker, args=(shm.name, lo, hi, progress, board.shm.name, i, go)
            )
            for i, (lo, hi) in enumerate(_stripes(n, workers))
        ]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        _wait_ready(progress, procs)
        t_start_shm = time.perf_counter() - t0
        started = time.perf_counter()
        go.set()
        t_shm = _follow(progress, n, "shared memory (by name)", procs, started)
        got_shm = sum(float(x) for x in board[:workers])
        print(f"  worker states: {', '.join(str(x) for x in board[workers:])}")

        pipes, procs = [], []
        results = ctx.Array("d", workers, lock=False)
        for i in range(workers):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=_pipe_worker, args=(child, progress, results, i)))
            pipes.append(parent)
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        _wait_ready(progress, procs)
        t_start_pipe = time.perf_counter() - t0
        # A thread pickles the chunks into the pipes while the main thread
        # shows progress; chunks go round-robin so all workers stay busy.
        sender = threading.Thread(target=_send_all, args=(data, n, workers, pipes))
        started = time.perf_counter()
        sender.start()
        t_pipe = _follow(progress, n, "pickled through a Pipe", procs, started)
        sender.join()
        got_pipe = sum(results)
        del data
    finally:
        if board is not None:
            board.shm.close()
            board.shm.unlink()
        shm.close()
        shm.unlink()

    ok = abs(got_shm - expected) < 1e-6 * abs(expected) and abs(got_pipe - expected) < 1e-6 * abs(
        expected
    )
    gbps_shm = nbytes / t_shm / 1e9
    gbps_pipe = nbytes / t_pipe / 1e9
    print(f"  sums agree: {ok} ({got_shm:.6g})")
    # What each figure timed: the progress rates above are bytes summed so
    # far over the time since the go; these are the whole buffer over the
    # time from the go until the last worker exited. Setup is apart.
    print(
        f"  setup, not in the rates: buffer created and filled {t_fill:.2f} s; workers started"
        f" and ready {t_start_shm:.2f} s (attached by name) / {t_start_pipe:.2f} s (pipes)"
    )
    print(
        f"  summing rate, go to last worker exited: shared memory {gbps_shm:.2f} GB/s"
        f" ({t_shm:.2f} s), pickled through a Pipe {gbps_pipe:.2f} GB/s ({t_pipe:.2f} s)"
        f"  -> shared memory is {gbps_shm / gbps_pipe:.1f}x faster"
    )
    # Only its own names: other programs may come and go in /dev/shm meanwhile.
    left = [name for name in made if os.path.exists(os.path.join("/dev/shm", name))]
    print(f"  its {len(made)} segments gone from /dev/shm: {not left}" + (f" (left: {left})" if left else ""))
    if not ok or left:
        raise SystemExit(1)
    return {"shm_gbps": gbps_shm, "pipe_gbps": gbps_pipe, "workers": workers, "bytes": nbytes}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shmkit demo", description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=512, help="size of the shared buffer (MiB)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.workers < 1:
        parser.error("--megabytes and --workers must be at least 1")
    run(args.megabytes, args.workers)


if __name__ == "__main__":
    main()
