#!/usr/bin/env python3
"""What a stable-ABI (abi3) wheel would cost against a per-version wheel.

    python bench/abi3.py [--python 3.12] [--rounds 9]

Builds two wheels of shmkit for one CPython (3.11 or later: the limited API
has the buffer protocol only from 3.11, and `buf` needs it, so an abi3 wheel
for 3.9 and 3.10 is not possible without giving up the guarantee that a view
never outlives its mapping): the per-version wheel `make wheels` ships, and
one built with the `abi3-py311` feature. Each goes into its own venv under
target/bench-abi3/, and the same hot-path workloads run in both, alternating
round by round, timed in CPU time. Prints each workload's median per
operation and the ratio abi3 / per-version (above 1: abi3 is slower).

Not part of `make bench`: it builds twice, and it answers one packaging
question rather than tracking speed over time.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(REPO, "target", "bench-abi3")

# Runs inside each venv; prints {workload: ns per operation}.
WORKLOAD = r"""
import json, time
from shmkit.shared_memory import SharedMemory, ShareableList

def per_op(fn, n):
    best = None
    for _ in range(5):
        t0 = time.process_time()
        fn(n)
        dt = (time.process_time() - t0) / n
        best = dt if best is None else min(best, dt)
    return best * 1e9

sl = ShareableList(list(range(100_000)))
peer = SharedMemory(create=True, size=4096)

def get(n):
    for _ in range(n):
        sl[7]

def set_(n):
    for i in range(n):
        sl[7] = i

def sum_(n):
    for _ in range(n):
        sum(sl)

def list_(n):
    for _ in range(n):
        list(sl)

def create(n):
    for _ in range(n):
        s = SharedMemory(create=True, size=4096)
        s.close()
        s.unlink()

def attach(n):
    for _ in range(n):
        SharedMemory(peer.name).close()

def buf(n):
    for _ in range(n):
        peer.buf[0]

try:
    print(json.dumps({
        "sl[i] get": per_op(get, 200_000),
        "sl[i] = int": per_op(set_, 200_000),
        "sum(sl), 100 000 ints": per_op(sum_, 20),
        "list(sl), 100 000 ints": per_op(list_, 20),
        "create+close+unlink": per_op(create, 2_000),
        "attach+close": per_op(attach, 4_000),
        "buf[0]": per_op(buf, 200_000),
    }))
finally:
    sl.shm.close()
    sl.shm.unlink()
    peer.close()
    peer.unlink()
"""


def find_python(version):
    return subprocess.check_output([os.path.join(REPO, "scripts", "find-python"), version], text=True).strip()


def build(python, kind):
    """Builds the wheel of `kind` and installs it into a fresh venv; returns
    the venv's python."""
    wheels = os.path.join(OUT, kind, "wheels")
    venv = os.path.join(OUT, kind, "venv")
    shutil.rmtree(os.path.join(OUT, kind), ignore_errors=True)
    cmd = [shutil.which("maturin") or "maturin", "build", "--release", "-q", "-i", python, "-o", wheels]
    if kind == "abi3":
        cmd += ["--features", "abi3-py311"]
    subprocess.run(cmd, cwd=REPO, check=True)
    subprocess.run([python, "-m", "venv", venv], check=True)
    vpy = os.path.join(venv, "bin", "python")
    wheel = [os.path.join(wheels, w) for w in os.listdir(wheels) if w.endswith(".whl")]
    subprocess.run([vpy, "-m", "pip", "install", "-q", *wheel], check=True)
    return vpy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="3.12", help="CPython version, 3.11 or later (default 3.12)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    python = find_python(args.python)
    pythons = {kind: build(python, kind) for kind in ("per-version", "abi3")}
    results = {kind: [] for kind in pythons}
    for r in range(args.rounds):
        order = list(pythons) if r % 2 == 0 else list(reversed(pythons))
        for kind in order:
            # Run outside the source tree, so `import shmkit` is the wheel's.
            out = subprocess.check_output([pythons[kind], "-c", WORKLOAD], cwd=OUT, text=True)
            results[kind].append(json.loads(out))
    print(f"CPython {args.python}, {args.rounds} rounds, medians of CPU time per operation")
    print(f"{'workload':26s} {'per-version':>14s} {'abi3':>14s} {'abi3 / per-version':>20s}")
    for workload in results["per-version"][0]:
        a = statistics.median(x[workload] for x in results["per-version"])
        b = statistics.median(x[workload] for x in results["abi3"])
        print(f"{workload:26s} {a:11.1f} ns {b:11.1f} ns {b / a:20.3f}")


if __name__ == "__main__":
    sys.exit(main())
