#!/usr/bin/env python3
"""Every benchmark, on CPython 3.11 and 3.13 and on the Rust API, in one run.

    python bench/run.py            # the full run (make bench): writes docs/
    python bench/run.py --quick    # a small run in under a minute: target/bench-quick/

Runs each bench/*.py script (every one alternates the stdlib and shmkit
round by round) with each interpreter, then the criterion benches of the
Rust API (``cargo bench -p shmkit-bench``) beside the raw-syscall floor, and
writes, into the output folder:

* ``benchmarks.md``  -- a table per group with medians and ratios, the
                        machine, the command, and each issue's speed target
                        beside the measured ratio (bench/report.py);
* ``benchmarks.png`` -- the ratios as a chart;
* ``results.json``   -- everything measured (a full run puts it in
                        target/bench/, so that docs/ holds only the report).

Only a full run of everything writes docs/; ``--quick``, ``--only`` and
``--no-criterion`` write to target/bench-quick/ or target/bench/ (or --out).

Interpreters are the repo's venvs (``.venv-3.11``, ``.venv-3.13``, made by
``make develop``), or paths given with ``--python``. Exits non-zero if any
workload failed (the report is still written, with the failures listed).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time

import _common as common
import report

# (group, script, extra arguments): CPU time where one process does the
# work; the scripts that span processes time the wall clock themselves.
GROUPS: tuple[tuple[str, str, list[str]], ...] = (
    ("shared_memory", "shared_memory.py", ["--clock", "cpu", "--track-cost"]),
    ("numpy_write", "numpy_write.py", []),
    ("handoff", "handoff.py", []),
    ("shareable_list", "shareable_list.py", []),
    ("managers", "managers.py", []),
    ("arrays", "arrays.py", []),
    ("sync", "sync.py", []),
    ("queues", "queues.py", []),
)
PYTHONS = ("3.11", "3.13")
# Criterion's own arguments: no HTML plots (only the medians are read);
# in --quick, short runs and fewer bootstrap resamples, a few seconds in all.
CRITERION_ARGS = ["--noplot"]
CRITERION_QUICK = ["--warm-up-time", "0.05", "--measurement-time", "0.2",
                   "--nresamples", "2000"]
# Criterion benchmark -> (label, floor workload or None, targets).
CRITERION_ROWS = {
    "lifecycle/create+unlink+drop": ("create+unlink+drop 4 KiB", "create", []),
    "lifecycle/create(reserve=false)+unlink+drop": (
        "create(reserve=false)+unlink+drop", "create_ftruncate", []),
    "lifecycle/open+drop": ("open+drop", "attach", []),
    "access/read_at 8 bytes": ("read_at, 8 bytes", None, []),
    "access/write_at 8 bytes": ("write_at, 8 bytes", None, []),
    "access/atomic_u64 fetch_add": ("atomic_u64(off).fetch_add", None, []),
    "list/get_i64": ("ShareableList get_i64", None,
                     [common.Target(3, "median_ns", None, "<=", 10.0, "≤ 10 ns")]),
    "list/set_i64": ("ShareableList set_i64", None,
                     [common.Target(3, "median_ns", None, "<=", 10.0, "≤ 10 ns")]),
    "access/fetch_add on a held &AtomicU64": ("fetch_add on a held &AtomicU64", None, []),
    "list/get str": ("ShareableList get str", None, []),
    "list/set str": ("ShareableList set str", None, []),
    "sync/lock+unlock": ("sync Lock lock+unlock", None,
                         [common.Target(15, "median_ns", None, "<=", 15.0, "≤ 15 ns")]),
    "sync/semaphore try_acquire+release": ("sync Semaphore try_acquire+release", None, []),
    "sync/semaphore ping-pong round trip (processes)": (
        "sync Semaphore ping-pong round trip (processes)", "futex_pingpong",
        [common.Target(15, "overhead", "floor", "<=", 1.25, "≤ 1.25× the futex floor")]),
}


class Interrupted(Exception):
    """SIGTERM or SIGHUP: forwarded to the running child, which cleans up."""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="See bench/README.md.")
    ap.add_argument("--quick", action="store_true",
                    help="a small version of everything (under a minute); writes "
                         "target/bench-quick/ unless --out")
    ap.add_argument("--python", action="append", metavar="VERSION|PATH",
                    help="an interpreter: a version with a .venv-VERSION here, or a "
                         f"path (repeatable; default {' and '.join(PYTHONS)})")
    ap.add_argument("--only", action="append", choices=[g[0] for g in GROUPS] + ["rust"],
                    help="only this group (repeatable)")
    ap.add_argument("--no-criterion", action="store_true",
                    help="skip the Rust API's criterion benches (and their build)")
    ap.add_argument("--out", help="output folder (default: docs/ for a full run of everything, "
                                  "else target/bench/, or target/bench-quick/ with --quick)")
    ap.add_argument("--private-shm", action=argparse.BooleanOptionalAction, default=None,
                    help="run everything in a private mount namespace with its own "
                         "/dev/shm (default: when root and unshare works)")
    args = ap.parse_args()
    command = "python bench/run.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    private = common.maybe_reexec_private(args.private_shm)

    # SIGTERM/SIGHUP: stop, but let the running bench clean up first.
    def on_signal(signum, _frame):
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Ctrl-C reaches the running bench too (same process group): wait for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    # Only a full run of everything replaces the committed report in docs/.
    partial = args.quick or args.only or args.no_criterion
    scratch = os.path.join(common.REPO, "target", "bench-quick" if args.quick else "bench")
    out = args.out or (scratch if partial else os.path.join(common.REPO, "docs"))
    data_dir = args.out or scratch
    os.makedirs(out, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    pythons = {label: path for label, path in map(interpreter, args.python or PYTHONS)}
    wanted = set(args.only or [g[0] for g in GROUPS] + ["rust"])
    if args.no_criterion:
        wanted.discard("rust")

    started = time.monotonic()
    meta = machine(command, args.quick, private, pythons)
    groups, failures = [], []
    try:
        for group, script, extra in GROUPS:
            if group not in wanted:
                continue
            runs = {}
            for label, path in pythons.items():
                cmd = [path, os.path.join(common.REPO, "bench", script), "--json", *extra]
                if args.quick:
                    cmd.append("--quick")
                common.log(f"=== {group} on CPython {label}")
                t = time.monotonic()
                result, error = run_json(cmd)
                if error:
                    failures.append(f"{group} on CPython {label}: {error}")
                    common.log(f"FAILED: {error}")
                    continue
                result["seconds"] = round(time.monotonic() - t, 1)
                runs[label] = result
                common.log(common.describe(result) + f"\n({result['seconds']} s)\n")
            if runs:
                groups.append({"group": group, "title": next(iter(runs.values()))["title"],
                               "runs": runs})
        if "rust" in wanted:
            common.log("=== the Rust API (criterion)")
            t = time.monotonic()
            try:
                result = rust_group(args.quick, data_dir)
                result["seconds"] = round(time.monotonic() - t, 1)
                groups.append({"group": "rust", "title": result["title"],
                               "runs": {"Rust": result}})
                common.log(common.describe(result) + f"\n({result['seconds']} s, of which "
                           f"{result['meta']['build_seconds']} s building)\n")
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                failures.append(f"criterion: {e}")
                common.log(f"FAILED: criterion: {e}")
    except (KeyboardInterrupt, Interrupted):
        common.log("interrupted; the benches cleaned up after themselves")
        sys.exit(130)

    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["build_seconds"] = sum(r["meta"].get("build_seconds", 0)
                                for g in groups for r in g["runs"].values())
    meta["loadavg_end"] = os.getloadavg()
    results = {"meta": meta, "groups": groups, "failures": failures}
    with open(os.path.join(data_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if groups:
        report.write(results, out)
    common.log(f"wrote {os.path.relpath(out, common.REPO)}/benchmarks.md and benchmarks.png; "
               f"{meta['seconds']} s in all, {meta['build_seconds']} s of it building")
    if failures:
        common.log("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)


def interpreter(spec):
    """(label, path) for a version like 3.11 (its venv here) or a path."""
    if os.sep in spec:
        path = spec
    else:
        path = os.path.join(common.REPO, f".venv-{spec}", "bin", "python")
        if not os.path.exists(path):
            sys.exit(f"no {os.path.relpath(path, common.REPO)}: run `make develop` first, "
                     f"or pass --python PATH")
    version = subprocess.run([path, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return ".".join(version.split(".")[:2]), path


def communicate(proc):
    """proc's stdout, once it has exited. A SIGTERM or SIGHUP of ours is
    passed on to it, and either way we wait for it to clean up first."""
    try:
        stdout, _ = proc.communicate()
    except Interrupted as e:
        proc.send_signal(e.args[0])
        proc.wait()
        raise
    except KeyboardInterrupt:
        proc.wait()  # it got the terminal's SIGINT too and is cleaning up
        raise
    return stdout


def run_json(cmd):
    """Runs one bench script; (its JSON result, None) or (None, what failed).
    Its stderr (progress, notes) passes through."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=common.REPO)
    stdout = communicate(proc)
    if proc.returncode != 0:
        return None, f"{' '.join(cmd[1:2])} exited {proc.returncode}"
    try:
        return json.loads(stdout), None
    except ValueError as e:
        return None, f"unreadable output ({e})"


def machine(command, quick, private, pythons):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass

    def git(*a):
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=common.REPO)
        return r.stdout.strip() if r.returncode == 0 else None

    return {
        "command": command,
        "quick": quick,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        # Changes under crates/ or python/ change what is measured.
        "dirty": bool(git("status", "--porcelain", "--", "crates", "python", "bench")),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / (1 << 30), 1) if memory else None,
        "kernel": f"{platform.system()} {platform.release()}",
        "pythons": {label: subprocess.run(
            [path, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True, text=True).stdout.strip() for label, path in pythons.items()},
        "private_shm": private,
        "loadavg_start": os.getloadavg(),
    }


def run_logged(cmd, env, log, capture=False):
    """Runs cmd with its output into the open file log (or, with capture,
    its stdout returned); raises if it fails."""
    proc = subprocess.Popen(cmd, cwd=common.REPO, env=env, stderr=log, text=True,
                            stdout=subprocess.PIPE if capture else log)
    stdout = communicate(proc)
    if proc.returncode != 0:
        log.flush()
        with open(log.name) as f:
            common.log("".join(f.readlines()[-30:]))
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return stdout


def floor_batches(binary, quick):
    """{floor workload: [ns/op per batch]} for the lifecycle rows, on the
    wall clock as criterion's."""
    if binary is None:
        return {}
    n, batches = (400, 3) if quick else (2000, 15)
    recs = common.floor_batch(binary, ["create", "create_ftruncate", "attach"], n,
                              size=4096, clock="wall", batches=batches)
    out = {k: list(rec["batch_ns"]) for k, rec in recs.items()}
    # The hand-off floor: a raw futex ping-pong between two processes.
    futex = os.path.join(os.path.dirname(binary), "futex-floor")
    if not os.access(futex, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "shmkit-bench", "--bin",
                        "futex-floor"], cwd=common.REPO, check=True, stdout=sys.stderr)
    rounds, fbatches = (2000, 3) if quick else (10000, 8)
    rec = json.loads(subprocess.run([futex, "--rounds", str(rounds), "--batches", str(fbatches)],
                                    check=True, capture_output=True, text=True).stdout)
    out[rec["name"]] = list(rec["batch_ns"])
    return out


def rust_group(quick, data_dir):
    """Runs the criterion benches, reads their medians, and measures the
    floor (wall clock, as criterion) for the lifecycle rows."""
    home = os.path.join(data_dir, "criterion")
    build = ["cargo", "bench", "-p", "shmkit-bench", "--bench", "segment", "--bench", "list",
             "--bench", "sync",
             "--no-run", "--message-format=json-render-diagnostics"]
    args = ["--bench", *CRITERION_ARGS, *(CRITERION_QUICK if quick else [])]
    # Criterion writes its estimates under CRITERION_HOME: a folder of this
    # run's own, so that results of an older run are never read.
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, CRITERION_HOME=home)
    log_path = os.path.join(data_dir, "criterion.log")
    common.log(f"{' '.join(build)}, then each bench with {' '.join(args)}  "
               f"(output: {os.path.relpath(log_path, common.REPO)})")
    floor_bin = common.locate_floor()
    with open(log_path, "w") as log:
        # Build, then run the executables built: the build is timed apart
        # (after a change to the crate it takes longer than the quick
        # benches), and a source edited meanwhile cannot trigger a rebuild.
        t = time.monotonic()
        built = run_logged(build, env, log, capture=True)
        build_seconds = round(time.monotonic() - t, 1)
        benches = [m["executable"] for m in map(json.loads, built.splitlines())
                   if m.get("reason") == "compiler-artifact" and m.get("executable")
                   and "bench" in m["target"]["kind"]]
        if not benches:
            raise RuntimeError("cargo built no bench executable")
        # Criterion cannot be interleaved with the floor, so the floor runs
        # right before and right after it, half its batches each time.
        floor_ns = floor_batches(floor_bin, quick)
        for exe in benches:
            run_logged([exe, *args], env, log)
        for k, v in floor_batches(floor_bin, quick).items():
            floor_ns[k] += v

    medians = {}
    for bench in glob.glob(os.path.join(home, "**", "new", "benchmark.json"), recursive=True):
        with open(bench) as f:
            full_id = json.load(f)["full_id"]
        with open(os.path.join(os.path.dirname(bench), "estimates.json")) as f:
            medians[full_id] = json.load(f)["median"]
    missing = [b for b in CRITERION_ROWS if b not in medians]
    if missing:
        raise RuntimeError(f"no criterion estimates for {', '.join(missing)}")

    floors = {k: common.summarize(v) for k, v in floor_ns.items() if v}

    rows = []
    for bench, (label, floor, targets) in CRITERION_ROWS.items():
        est = medians[bench]
        ns = est["point_estimate"]
        ci = est["confidence_interval"]
        cell = {"median_us": ns / 1000,
                "spread": (ci["upper_bound"] - ci["lower_bound"]) / 2 / ns}
        row = {"workload": bench, "label": label, "results": {"shmkit": cell},
               "speedup": {}, "overhead": {}, "delta_us": {}}
        if floor in floors:
            row["results"]["floor"] = floors[floor]
            row["overhead"]["floor"] = {"ratio": cell["median_us"] / floors[floor]["median_us"],
                                        "paired": None}
        row["targets"] = [t.as_dict(common.measured(row, t)) for t in targets]
        rows.append(row)
    return {
        "group": "rust",
        "title": "The Rust API (criterion)",
        "meta": {"python": None, "rounds": None, "clock": "wall", "quick": quick,
                 "command": "cargo bench -p shmkit-bench --bench segment --bench list -- "
                            + " ".join(args[1:]),
                 "build_seconds": build_seconds},
        "rows": rows,
        "notes": ["criterion's median estimate; the floor: shm-floor's median over "
                  "batches run right before and right after criterion, wall clock as "
                  "criterion's, so these ratios are noisier than the Python ones"],
    }


if __name__ == "__main__":
    main()
