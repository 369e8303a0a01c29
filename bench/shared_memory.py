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

Each round runs one batch of every (workload, implementation), rotating the
order of the implementations from round to round so that slow phases of a
noisy machine spread over all of them. A batch's result is its mean time per
operation (``time.perf_counter_ns``, gc disabled); the reported figure is the
median over rounds of those means. The floor's batch of a round is one run
of ``shm-floor --iters N --batches 1``.

    python bench/shared_memory.py            # full run, ~half a minute
    python bench/shared_memory.py --quick    # a few seconds
    python bench/shared_memory.py --json     # machine-readable
    python bench/shared_memory.py --decompose  # + the extension alone

Runs with any CPython 3.8+; shmkit is measured if it imports.
See bench/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

SIZE = 4096
WORKLOADS = ("create", "attach", "attach_buf")
LABELS = {
    "create": "create+close+unlink",
    "attach": "attach+close",
    "attach_buf": "attach+buf[0]+close",
}
# Which floor workload each Python workload is held against.
FLOOR_OF = {"create": "create", "attach": "attach", "attach_buf": "attach_touch"}
# The targets for shmkit / floor; attach_buf is reported, not judged.
TARGETS = {"create": 1.15, "attach": 1.2}
# Floors that explain the stdlib's numbers and the name's share; measured
# once per round, shown under the table.
REFERENCE_FLOORS = ("create_ftruncate", "create_cpython", "name", "attach_cpython")
PRIVATE_MARK = "SHMKIT_BENCH_PRIVATE_SHM"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Batches. Every function returns the mean ns per operation over n.


# time.perf_counter_ns (wall) or time.process_time_ns (--clock cpu).
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


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


def run_python_batch(fn, n):
    gc.collect()
    gc.disable()
    try:
        return fn(n)
    finally:
        gc.enable()


# --------------------------------------------------------------------------
# The floor binary.


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def locate_floor(explicit, log):
    if explicit:
        if not os.access(explicit, os.X_OK):
            sys.exit(f"--floor {explicit}: not an executable")
        return explicit
    binary = os.path.join(target_dir(), "release", "shm-floor")
    source = os.path.join(REPO, "bench", "src", "floor.rs")
    stale = (
        os.path.exists(binary)
        and os.path.exists(source)
        and os.path.getmtime(source) > os.path.getmtime(binary)
    )
    if os.path.exists(binary) and not stale:
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        log("shm-floor not built and cargo not found: no floor column")
        return None
    log(f"building shm-floor ({'stale' if stale else 'missing'}): "
        "cargo build --release -p shmkit-bench --bin shm-floor")
    subprocess.run(
        [cargo, "build", "--release", "-p", "shmkit-bench", "--bin", "shm-floor"],
        cwd=REPO,
        check=True,
        stdout=sys.stderr,
    )
    return binary


def floor_batch(binary, workloads, n, attach_name, warmup, clock):
    """One batch of each floor workload, in one run of the binary."""
    cmd = [
        binary,
        "--iters", str(n),
        "--batches", "1",
        "--warmup", str(warmup),
        "--size", str(SIZE),
        "--attach-name", attach_name,
        "--clock", clock,
        "--workload", ",".join(workloads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"shm-floor failed ({proc.returncode}): {proc.stderr.strip()}")
    out = proc.stdout
    results = {}
    for line in out.splitlines():
        rec = json.loads(line)
        results[rec["name"]] = rec["median_ns"]
    return results


# --------------------------------------------------------------------------
# Statistics.


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(ns_values):
    s = sorted(ns_values)
    med = quantile(s, 0.5)
    return {
        "median_us": med / 1000,
        "q1_us": quantile(s, 0.25) / 1000,
        "q3_us": quantile(s, 0.75) / 1000,
        "min_us": s[0] / 1000 if s else float("nan"),
        "max_us": s[-1] / 1000 if s else float("nan"),
        # Half the interquartile range, relative to the median.
        "spread": (quantile(s, 0.75) - quantile(s, 0.25)) / 2 / med if med else float("nan"),
        "batches_us": [round(v / 1000, 4) for v in ns_values],
    }


# --------------------------------------------------------------------------
# A private /dev/shm.


def maybe_reexec_private(args, log):
    """Re-runs this script in a private mount namespace with its own tmpfs on
    /dev/shm, so that other processes' /dev/shm clean-ups cannot delete the
    bench's segments and its creates do not share a directory with theirs."""
    if os.environ.get(PRIVATE_MARK) == "1":
        return True
    want = args.private_shm
    if want is None:
        want = hasattr(os, "geteuid") and os.geteuid() == 0
    if not want:
        return False
    mount = "mount -t tmpfs -o size=1g,mode=1777 tmpfs /dev/shm"
    unshare = shutil.which("unshare")
    ok = unshare is not None and subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", mount],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ).returncode == 0
    if not ok:
        if args.private_shm:
            sys.exit("--private-shm: cannot unshare a mount namespace "
                     "(needs root and unshare(1))")
        log("note: no private /dev/shm (unshare failed); using the shared one")
        return False
    env = dict(os.environ, **{PRIVATE_MARK: "1"})
    argv = [
        unshare, "--mount", "--propagation", "private",
        "sh", "-c", mount + ' && exec "$@"', "sh",
        sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:],
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(unshare, argv, env)
    return True  # not reached


# --------------------------------------------------------------------------


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


def fmt_us(cell):
    if cell is None:
        return "—"
    return f"{cell['median_us']:.2f} ±{cell['spread'] * 100:.0f}%"


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def main():
    ap = argparse.ArgumentParser(
        description="SharedMemory create/attach: floor vs stdlib vs shmkit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[0],
    )
    ap.add_argument("--quick", action="store_true",
                    help="few short rounds: a few seconds, noisier")
    ap.add_argument("--rounds", type=int, help="rounds (default 31, quick 9)")
    ap.add_argument("--iters", type=int,
                    help="operations per batch (default 2000, quick 400)")
    ap.add_argument("--json", action="store_true", help="print JSON, not a table")
    ap.add_argument("--decompose", action="store_true",
                    help="also time shmkit's extension functions called directly")
    ap.add_argument("--workload", action="append", choices=WORKLOADS,
                    help="only this workload (repeatable)")
    ap.add_argument("--floor", metavar="PATH", help="the shm-floor binary to use")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor")
    ap.add_argument("--track-cost", action="store_true",
                    help="also time shmkit with track=False (the leak tracker's cost "
                         "is the difference from the shmkit row)")
    priv = ap.add_mutually_exclusive_group()
    priv.add_argument("--private-shm", dest="private_shm", action="store_true",
                      default=None,
                      help="run in a private mount namespace with its own tmpfs "
                           "/dev/shm (default when root)")
    priv.add_argument("--no-private-shm", dest="private_shm", action="store_false")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: perf_counter_ns (default); cpu: process CPU time, "
                         "which leaves out time other processes had the CPU "
                         "(steadier on a busy machine; does not see the stdlib's "
                         "resource-tracker process)")
    ap.add_argument("--cpu", type=int, help="pin this process (and the floor) to one CPU")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    private = maybe_reexec_private(args, log)
    rounds = args.rounds or (9 if args.quick else 31)
    iters = args.iters or (400 if args.quick else 2000)
    workloads = tuple(args.workload) if args.workload else WORKLOADS
    clock = CLOCKS[args.clock]
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # inherited by the floor

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks clean up.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    from multiprocessing import shared_memory as std_mod

    impls = {}  # label -> {workload: batch fn}
    attach_name = f"shmkit_bench_{os.getpid()}"
    try:
        import shmkit
        from shmkit import shared_memory as sk_mod
    except ImportError as e:
        log(f"note: shmkit does not import ({e}); measuring floor and stdlib only")
        sk_mod = None
    floor = None if args.no_floor else locate_floor(args.floor, log)

    meta = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "shmkit": getattr(shmkit, "__version__", "?") if sk_mod else None,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "private_shm": private,
        "rounds": rounds,
        "iterations": iters,
        "clock": args.clock,
        "size": SIZE,
        "loadavg_start": os.getloadavg(),
        "floor": floor,
    }

    results = {w: {} for w in workloads}  # workload -> label -> [ns]
    reference = {r: [] for r in REFERENCE_FLOORS}
    made_target = None
    stdlib_attached = False
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
                impls["shmkit-untracked"] = {
                    "create": create_batch(sk, clock, track=False),
                    "attach": attach_batch(sk, attach_name, False, clock, track=False),
                    "attach_buf": attach_batch(sk, attach_name, True, clock, track=False),
                }
            ext = getattr(shmkit, "_shmkit", None)
            if args.decompose and ext is not None and hasattr(ext, "open_segment"):
                impls["shmkit-ext"] = ext_batches(ext, attach_name, clock)
        labels = (["floor"] if floor else []) + list(impls)
        warmup = max(50, iters // 10)

        # An untimed round: starts the stdlib's resource tracker, faults in
        # code and allocator pools.
        stdlib_attached = any(w.startswith("attach") for w in workloads)
        for w in workloads:
            for label, fns in impls.items():
                run_python_batch(fns[w], warmup)

        t_start = time.monotonic()
        for r in range(rounds):
            for w in workloads:
                shift = r % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    if label == "floor":
                        ns = floor_batch(floor, [FLOOR_OF[w]], iters, attach_name,
                                         warmup, args.clock)[FLOOR_OF[w]]
                    else:
                        ns = run_python_batch(impls[label][w], iters)
                    results[w].setdefault(label, []).append(ns)
            if floor:
                for name, ns in floor_batch(floor, REFERENCE_FLOORS, iters,
                                            attach_name, warmup, args.clock).items():
                    reference[name].append(ns)
            if not args.json and sys.stderr.isatty():
                print(f"\rround {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
        if not args.json and sys.stderr.isatty():
            print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
        meta["seconds"] = round(time.monotonic() - t_start, 1)
    finally:
        if made_target:
            try:
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
    meta["loadavg_end"] = os.getloadavg()

    out = {"meta": meta, "workloads": {}, "reference_floor": {}}
    for w in workloads:
        cells = {label: summarize(v) for label, v in results[w].items()}
        med = {label: c["median_us"] for label, c in cells.items()}
        entry = {
            "label": LABELS[w],
            "floor_workload": FLOOR_OF[w],
            "results": cells,
            "shmkit_over_floor": med["shmkit"] / med["floor"]
            if "shmkit" in med and "floor" in med else None,
            "stdlib_over_shmkit": med["stdlib"] / med["shmkit"] if "shmkit" in med else None,
            "stdlib_over_floor": med["stdlib"] / med["floor"] if "floor" in med else None,
            "target": TARGETS.get(w),
        }
        # The same ratios taken round by round (the two batches ran seconds
        # apart at most), then the median: less sensitive to slow drifts in
        # the machine's load than the ratio of the medians.
        raw = results[w]
        for num, den in (("shmkit", "floor"), ("stdlib", "shmkit"),
                         ("stdlib", "floor"), ("shmkit-ext", "floor")):
            if num in raw and den in raw:
                pairs = sorted(a / b for a, b in zip(raw[num], raw[den]))
                entry[f"{num}_over_{den}_paired"] = {
                    "median": quantile(pairs, 0.5),
                    "q1": quantile(pairs, 0.25),
                    "q3": quantile(pairs, 0.75),
                }
        if "shmkit-untracked" in raw and "shmkit" in raw:
            # Per round, tracked minus untracked: the tracker's cost per op.
            diffs = sorted(a - b for a, b in zip(raw["shmkit"], raw["shmkit-untracked"]))
            entry["track_cost_us"] = {
                "median": quantile(diffs, 0.5) / 1000,
                "q1": quantile(diffs, 0.25) / 1000,
                "q3": quantile(diffs, 0.75) / 1000,
            }
        if "shmkit-ext" in med:
            entry["ext_over_floor"] = (med["shmkit-ext"] / med["floor"]
                                       if "floor" in med else None)
        t, r = entry["target"], entry["shmkit_over_floor"]
        entry["met"] = None if t is None or r is None else r <= t
        out["workloads"][w] = entry
    for name, v in reference.items():
        if v:
            out["reference_floor"][name] = summarize(v)

    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return

    show_ext = any("shmkit-ext" in e["results"] for e in out["workloads"].values())
    head = ["workload", "floor µs", "stdlib µs", "shmkit µs"]
    if show_ext:
        head.append("ext µs")
    head += ["shmkit÷floor", "(paired)", "stdlib÷shmkit", "target", "met"]
    rows = [head]
    for w, e in out["workloads"].items():
        c = e["results"]
        row = [e["label"], fmt_us(c.get("floor")), fmt_us(c.get("stdlib")),
               fmt_us(c.get("shmkit"))]
        if show_ext:
            row.append(fmt_us(c.get("shmkit-ext")))
        paired = e.get("shmkit_over_floor_paired")
        row += [
            fmt_ratio(e["shmkit_over_floor"]),
            "—" if not paired else
            f"{paired['median']:.2f}× [{paired['q1']:.2f}–{paired['q3']:.2f}]",
            fmt_ratio(e["stdlib_over_shmkit"]),
            f"≤{e['target']:.2f}×" if e["target"] else "(info)",
            "—" if e["met"] is None else ("yes" if e["met"] else "NO"),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    m = meta
    print(f"SharedMemory, {SIZE}-byte segments: CPython {m['python']}, "
          f"shmkit {m['shmkit']}, Linux {m['kernel']}, {m['cpus']} CPUs, "
          f"{'private' if private else 'shared'} /dev/shm")
    print(f"median over {rounds} rounds of per-batch means ({iters} ops/batch, "
          f"{'CPU time' if args.clock == 'cpu' else 'wall clock'}); "
          f"±: half the interquartile range; load {m['loadavg_start'][0]:.2f} → "
          f"{m['loadavg_end'][0]:.2f}; {m.get('seconds', '?')} s")
    print("shmkit÷floor is the ratio of the medians; (paired): median and "
          "quartiles of the per-round ratios; met judges the former")
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j])
                        for j, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * wd for wd in widths))
    costs = {w: e for w, e in out["workloads"].items() if "track_cost_us" in e}
    if costs:
        print()
        print("leak tracking (shmkit track=True minus track=False, per op, paired by round):")
        for w, e in costs.items():
            tc = e["track_cost_us"]
            un = e["results"]["shmkit-untracked"]["median_us"]
            print(f"  {e['label']}: {tc['median']:+.2f} µs [{tc['q1']:+.2f} – {tc['q3']:+.2f}]"
                  f" (untracked {un:.2f} µs)")
    if out["reference_floor"]:
        rf = out["reference_floor"]
        print()
        print("floor references (µs):", ", ".join(
            f"{k} {fmt_us(v)}" for k, v in rf.items()))
        cw = out["workloads"]
        if "create" in cw and "create_cpython" in rf and "stdlib" in cw["create"]["results"]:
            print("  stdlib create ÷ its own syscall sequence (create_cpython): "
                  f"{cw['create']['results']['stdlib']['median_us'] / rf['create_cpython']['median_us']:.2f}×")
        if "attach" in cw and "attach_cpython" in rf and "stdlib" in cw["attach"]["results"]:
            print("  stdlib attach ÷ its own syscall sequence (attach_cpython): "
                  f"{cw['attach']['results']['stdlib']['median_us'] / rf['attach_cpython']['median_us']:.2f}×")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'SIGINT'}); segments cleaned up", file=sys.stderr)
        sys.exit(130)
