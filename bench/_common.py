"""What every bench/*.py script shares: clocks, statistics, the private
/dev/shm, the command line, round rotation, result rows and the table.

A script measures *implementations* ("stdlib", "shmkit", "floor", ...) on
*workloads*. Each round runs one batch of every (workload, implementation),
in an order that rotates from round to round (so a slow phase of a noisy
machine lands on all of them), and records the batch's mean time per
operation in ns. A row then holds, per implementation, the per-round means,
and compares shmkit with the others:

* speed-up  ``X ÷ shmkit``: how many times faster shmkit is than X (stdlib,
            pickling through a pipe); bigger is better;
* overhead  ``shmkit ÷ X``: what shmkit costs over a floor X that nothing
            can beat (the raw system calls, a private memcpy); 1.00× is the
            limit;
* delta     ``shmkit − X`` in µs (e.g. what leak tracking adds).

Each is given as the ratio of the medians and, "paired", as the median of
the per-round ratios (the two batches ran moments apart, so it is steadier
when the machine's load drifts). Targets from the issues judge the ratio of
the medians.

Every script prints a table, or with ``--json`` one JSON object that
``bench/run.py`` collects:
``{"group", "title", "meta", "rows": [row...], "notes": [str...]}``.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# scripts/private-shm owns the private /dev/shm, for the tests and the
# benches alike; it sets this in the environment of what it runs (the
# private /dev/shm's device number, or "shared" if it fell back), which the
# scripts bench/run.py starts inherit, so they do not re-execute.
PRIVATE_MARK = "SHMKIT_PRIVATE_SHM"
PRIVATE_SHM = os.path.join(REPO, "scripts", "private-shm")

# CPU time of this process (user + system, so page faults count) leaves out
# the time other processes had the CPU; wall time is needed where the work
# spans processes.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


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
    """Median, quartiles and spread of per-round ns/op, in µs."""
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


def paired(a, b, op):
    """Median and quartiles of op(a[i], b[i]) over the rounds."""
    values = sorted(op(x, y) for x, y in zip(a, b))
    return {"median": quantile(values, 0.5), "q1": quantile(values, 0.25),
            "q3": quantile(values, 0.75)}


# --------------------------------------------------------------------------
# Rows and targets.


class Target:
    """A speed target from an issue, judged on one comparison of a row.

    kind is "speedup" (X ÷ shmkit), "overhead" (shmkit ÷ X), "delta_us"
    (shmkit − X, µs) or "median_ns" (shmkit's own median, for criterion).
    """

    def __init__(self, issue, kind, against, op, value, text):
        self.issue, self.kind, self.against = issue, kind, against
        self.op, self.value, self.text = op, value, text

    def judge(self, measured):
        if measured is None:
            return None
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def as_dict(self, measured):
        return {"issue": self.issue, "kind": self.kind, "against": self.against,
                "op": self.op, "value": self.value, "text": self.text,
                "measured": measured, "met": self.judge(measured)}


def make_row(workload, label, samples, compare=None, targets=(), subject="shmkit"):
    """One workload's results.

    samples: implementation -> per-round ns/op (same length for all).
    compare: implementation -> "speedup" | "overhead" | "delta_us"; by
    default the stdlib is a speed-up and a "floor" an overhead.
    """
    if compare is None:
        compare = {k: v for k, v in (("stdlib", "speedup"), ("floor", "overhead"))
                   if k in samples}
    row = {
        "workload": workload,
        "label": label,
        "results": {impl: summarize(v) for impl, v in samples.items() if v},
        "speedup": {}, "overhead": {}, "delta_us": {},
    }
    mine = samples.get(subject)
    if mine:
        med = {impl: c["median_us"] for impl, c in row["results"].items()}
        for other, kind in compare.items():
            theirs = samples.get(other)
            if not theirs:
                continue
            if kind == "speedup":
                entry = {"ratio": med[other] / med[subject],
                         "paired": paired(theirs, mine, lambda t, m: t / m)}
            elif kind == "overhead":
                entry = {"ratio": med[subject] / med[other],
                         "paired": paired(mine, theirs, lambda m, t: m / t)}
            else:  # a difference, not a ratio, but kept under the same key
                d = paired(mine, theirs, lambda m, t: (m - t) / 1000)
                entry = {"ratio": d["median"], "paired": d}
            row[kind][other] = entry
    row["targets"] = [t.as_dict(measured(row, t)) for t in targets]
    return row


def measured(row, target):
    if target.kind == "median_ns":
        cell = row["results"].get("shmkit")
        return cell["median_us"] * 1000 if cell else None
    entry = row[target.kind].get(target.against)
    return entry["ratio"] if entry else None


# --------------------------------------------------------------------------
# Running rounds.


def rotated(labels, r):
    """The order of the implementations in round r."""
    shift = r % len(labels)
    return labels[shift:] + labels[:shift]


def quiet_gc(fn, *args):
    """Runs one timed batch with the collector off, after a collection, so
    that no batch pays for another's garbage."""
    gc.collect()
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def progress(r, rounds, enabled):
    if enabled and sys.stderr.isatty():
        end = "\n" if r + 1 == rounds else ""
        print(f"\r  round {r + 1}/{rounds}", end=end, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The command line every script takes.


def parser(doc, rounds, clock="cpu"):
    """--quick, --rounds, --json, --clock, --private-shm/--no-private-shm.
    rounds is (full, quick)."""
    ap = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog="See bench/README.md for the method and how to read the ratios.",
    )
    ap.add_argument("--quick", action="store_true", help="a small, noisier run (seconds)")
    ap.add_argument("--rounds", type=int,
                    help=f"rounds (default {rounds[0]}, quick {rounds[1]})")
    ap.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default=clock,
                    help=f"cpu: process CPU time, steadier on a busy machine; "
                         f"wall: perf_counter (default {clock})")
    ap.add_argument("--private-shm", action=argparse.BooleanOptionalAction, default=None,
                    help="re-run in a private mount namespace with its own /dev/shm "
                         "(default: when root and unshare works)")
    ap.set_defaults(default_rounds=rounds)
    return ap


def start(args):
    """What every script does first: the private /dev/shm, signals that
    unwind like Ctrl-C (so finally blocks unlink), and the round count."""
    args.private = maybe_reexec_private(args.private_shm)
    unwind_on_signals()
    full, quick = args.default_rounds
    args.rounds = args.rounds or (quick if args.quick else full)
    return args


def unwind_on_signals():
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, once: the finally
    blocks that unlink segments then run with those signals ignored, so a
    second signal (a run.py forwarding one, an impatient Ctrl-C) cannot cut
    the clean-up short."""

    def interrupted(signum, _frame):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)


def in_private_shm():
    """Whether /dev/shm is the private one scripts/private-shm mounted (its
    device number is in the mark; an inherited mark does not count)."""
    try:
        return os.environ.get(PRIVATE_MARK) == str(os.stat("/dev/shm").st_dev)
    except OSError:
        return False


def maybe_reexec_private(want):
    """Re-runs this process through scripts/private-shm, in a private mount
    namespace with a fresh tmpfs on /dev/shm, so that other programs'
    /dev/shm clean-ups cannot delete the bench's segments, its creates do
    not share a directory with theirs, and whatever a killed run leaves
    vanishes with the namespace. Returns whether /dev/shm is private."""
    if in_private_shm():
        return True
    if os.environ.get(PRIVATE_MARK) == "shared":
        return False  # private-shm tried already and said why not
    insist = want is True
    if want is None:
        want = hasattr(os, "geteuid") and os.geteuid() == 0
    if not want:
        return False
    argv = [PRIVATE_SHM, *(["--require"] if insist else []),
            sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(PRIVATE_SHM, argv)
    return True  # not reached


def run_main(main):
    """Calls main(); Ctrl-C (or SIGTERM/SIGHUP) exits 130 after the finally
    blocks have cleaned up."""
    try:
        main()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'SIGINT'}); segments cleaned up")
        sys.exit(130)


def meta(args, **extra):
    m = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "private_shm": args.private,
        "rounds": args.rounds,
        "clock": args.clock,
        "quick": args.quick,
    }
    try:
        import shmkit

        m["shmkit"] = getattr(shmkit, "__version__", "?")
    except ImportError:
        m["shmkit"] = None
    m.update(extra)
    return m


# --------------------------------------------------------------------------
# Output.


def fmt_time(us):
    if us is None or us != us:
        return "—"
    if us < 1:
        return f"{us * 1000:.1f} ns"
    if us < 1000:
        return f"{us:.2f} µs" if us < 100 else f"{us:.0f} µs"
    if us < 1e6:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_ratio(x):
    if x is None:
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×" if x < 100 else f"{x:.0f}×"


def comparison_columns(rows):
    """(kind, implementation, heading) for every comparison in rows."""
    cols = []
    for kind, head in (("speedup", "{}÷shmkit"), ("overhead", "shmkit÷{}"),
                       ("delta_us", "shmkit−{} µs")):
        for r in rows:
            for other in r[kind]:
                col = (kind, other, head.format(other))
                if col not in cols:
                    cols.append(col)
    return cols


def fmt_comparison(kind, entry):
    if entry is None:
        return "—"
    if kind == "delta_us":
        return f"{entry['ratio']:+.2f}"
    if not entry.get("paired"):
        return fmt_ratio(entry["ratio"])
    return f"{fmt_ratio(entry['ratio'])} ({fmt_ratio(entry['paired']['median'])})"


def fmt_targets(row):
    out = []
    for t in row["targets"]:
        met = "—" if t["met"] is None else ("met" if t["met"] else "NOT met")
        out.append(f"#{t['issue']} {t['text']}: {met}")
    return "; ".join(out)


def table(rows, impls=None):
    """A plain-text table of rows: each implementation's median, every
    comparison (in parentheses: the paired median), the targets."""
    if impls is None:
        impls = []
        for r in rows:
            impls += [i for i in r["results"] if i not in impls]
    cols = comparison_columns(rows)
    head = ["workload"] + impls + [c[2] for c in cols] + ["target"]
    lines = [head]
    for r in rows:
        cells = [r["label"]]
        for i in impls:
            c = r["results"].get(i)
            cells.append(f"{fmt_time(c['median_us'])} ±{c['spread'] * 100:.0f}%" if c else "—")
        cells += [fmt_comparison(k, r[k].get(o)) for k, o, _ in cols]
        cells.append(fmt_targets(r))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(widths[i]) if i in (0, len(head) - 1) else c.rjust(widths[i])
                             for i, c in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def emit(result, as_json):
    """Prints a script's result: JSON for bench/run.py, or a table."""
    if as_json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return
    print(describe(result))


def describe(result):
    m = result["meta"]
    if m.get("python") is None:  # not a Python run (criterion)
        head = [f"{result['title']}: {m.get('command', '')}"]
    else:
        clock = "CPU time" if m["clock"] == "cpu" else "wall clock"
        head = [
            f"{result['title']}: CPython {m['python']}, shmkit {m.get('shmkit')}, "
            f"{m['rounds']} rounds, {clock}, "
            f"{'private' if m.get('private_shm') else 'shared'} /dev/shm",
            "median over rounds of per-batch means, ± half the interquartile range; "
            "ratios are of medians, (paired) the median of per-round ratios",
        ]
    lines = head + ["", table(result["rows"])]
    if result.get("notes"):
        lines += [""] + result["notes"]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The raw-syscall floor binary (bench/src/floor.rs).


def locate_floor(explicit=None):
    """The path of shm-floor, built with cargo if missing or older than its
    source; None if it cannot be had."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            sys.exit(f"--floor {explicit}: not an executable")
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    binary = os.path.join(target, "release", "shm-floor")
    source = os.path.join(REPO, "bench", "src", "floor.rs")
    stale = (os.path.exists(binary) and os.path.exists(source)
             and os.path.getmtime(source) > os.path.getmtime(binary))
    if os.path.exists(binary) and not stale:
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        log("shm-floor not built and cargo not found: no floor")
        return None
    log(f"building shm-floor ({'stale' if stale else 'missing'}): "
        "cargo build --release -p shmkit-bench --bin shm-floor")
    subprocess.run([cargo, "build", "--release", "-p", "shmkit-bench", "--bin", "shm-floor"],
                   cwd=REPO, check=True, stdout=sys.stderr)
    return binary


def floor_batch(binary, workloads, n, *, size, clock, attach_name=None, warmup=50, batches=1):
    """Runs shm-floor once; returns {workload: record} (its JSON lines)."""
    cmd = [binary, "--iters", str(n), "--batches", str(batches), "--warmup", str(warmup),
           "--size", str(size), "--clock", clock, "--workload", ",".join(workloads)]
    if attach_name:
        cmd += ["--attach-name", attach_name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"shm-floor failed ({proc.returncode}): {proc.stderr.strip()}")
    return {rec["name"]: rec for rec in map(json.loads, proc.stdout.splitlines())}
