#!/usr/bin/env python3
"""Writes benchmarks.md and benchmarks.png from bench/run.py's results.json.

    python bench/report.py RESULTS_JSON OUT_DIR   # re-render without measuring

bench/run.py calls write() at the end of every run.
"""

from __future__ import annotations

import json
import os
import sys

import _common as common

# What each group measures, in a sentence or two, for the report.
ABOUT = {
    "shared_memory": (
        "`SharedMemory(create=True, size=4096)` + `close()` + `unlink()`, and "
        "`SharedMemory(name)` + `close()` of an existing segment, against **floor**: "
        "shmkit's own system calls made in a loop by a bare Rust program "
        "(`bench/src/floor.rs`), which no implementation can beat. CPU time. "
        "**untracked** is shmkit with `track=False`; its difference from shmkit "
        "is what leak tracking costs."
    ),
    "numpy_write": (
        "`np.copyto` of a private array into a numpy view of a fresh segment "
        "(*first touch*: includes creating the segment and faulting in every page) "
        "and again into the same pages (*warm*), against the same copy into "
        "**private** memory (`np.empty`): the physical limit. CPU time. numpy's "
        "request for transparent huge pages is turned off, so private memory is "
        "faulted in 4 KiB pages as /dev/shm is here."
    ),
    "handoff": (
        "A child process, started beforehand and waiting on a `multiprocessing.Pipe`, "
        "gets an int64 array and sums one item per page (every page touched), and "
        "the parent checks the sum. By name: the parent creates a segment, copies "
        "the array into it and sends the name; the child attaches. **pickle**: the "
        "array is sent through the Pipe. Timed from the parent's first step to the "
        "child's answer, wall clock."
    ),
    "shareable_list": (
        "Item access on a 100-item list (an int item; a str item of a list of short "
        "strings), `sum` and `list` over 100 000 ints, and construction from "
        "`range(100_000)`. Item loops include Python's own loop overhead on both "
        "sides. CPU time."
    ),
    "managers": (
        "`SharedMemoryManager`: creating segments and lists through a started "
        "manager, `start()` + `shutdown()`, and `shutdown()` of a manager holding "
        "1 000 segments against **direct**: unlinking the same 1 000 segments from "
        "the client process. Wall clock (two processes do the work)."
    ),
    "arrays": (
        "`shmkit.numpy` arrays passed to pool workers by name. A `ProcessPoolExecutor` "
        "worker sums a float64 array (**stdlib**: a private array, pickled); the cost "
        "of one task whose argument is a large shmkit array against one of 1 KiB; "
        "`Pool.map` of `np.sum` over 64 slices of one array against **joblib**'s "
        "automatic memmapping of the same slices and **SharedArray**; creating and "
        "filling an array against a **private** `np.empty`. Pools started before the "
        "clock; wall clock."
    ),
    "sync": (
        "`shmkit.sync`: uncontended `acquire()`+`release()` against `multiprocessing.Lock`, "
        "`threading.Lock`, `posix_ipc.Semaphore` and `shmlock` (CPU time); a round trip "
        "between two processes over two semaphores (wall clock); and the time from a "
        "holder's SIGKILL to the next acquirer holding the lock (wall clock)."
    ),
    "queues": (
        "`shmkit.queues.Queue` against `multiprocessing.Queue` (**stdlib**), "
        "`faster_fifo.Queue` (one `put`/`get` per item) and, for small items, "
        "`pickle.dumps` + `pickle.loads` of the item alone (**pickle**, one process). "
        "Worker processes are forked before the clock; per item: the tuple "
        "`(1, \"abc\", 2.5, b\"x\" * 32)` 1 → 1, in batches of 1 000 "
        "(`put_many`/`get_many`), 4 producers × 4 consumers, a 64 MiB int64 array "
        "(the consumer sums one item per page), a ping-pong round trip over two "
        "queues, and 64-byte messages through the Rust API between two processes "
        "(the `queue_peer` example). Wall clock."
    ),
    "rust": (
        "`cargo bench -p shmkit-bench` (criterion, `bench/benches/`): the same "
        "operations through the Rust crate, without Python; the lifecycle rows "
        "beside the raw-syscall floor (wall clock)."
    ),
}
SHORT = {
    "shared_memory": "SharedMemory",
    "numpy_write": "numpy write",
    "handoff": "hand to a child",
    "shareable_list": "ShareableList",
    "managers": "manager",
    "arrays": "numpy arrays",
    "sync": "locks",
    "queues": "queue",
    "rust": "Rust",
}
# Why a target can read "not met", for the report's list of misses. Each says
# what is known; the issue holds the rest.
WHY = {
    ("shared_memory", "create"): (
        "shmkit's create is the floor's system calls plus its Python class and the "
        "leak tracker's registration (the untracked column); quiet runs in #2's note "
        "measured 1.15–1.16×, runs on the busy machine while these benches were "
        "written 1.18–1.34×"),
    ("shared_memory", "attach"): (
        "close to the line: quiet runs in #2's note measured 1.16–1.17×, busy ones "
        "1.13–1.24×"),
    ("shareable_list", "sum"): (
        "met on 3.11; on 3.13 most of shmkit's time is CPython allocating and "
        "freeing the 100 000 int objects (perf: _PyObject_Malloc and _PyObject_Free "
        "are 46% of list(sl), against 22% on 3.11), which no library avoids; "
        "37-47x in full runs so far (44-47x in runs of the ShareableList bench alone)"),
    ("shareable_list", "list"): ("as sum(sl): met on 3.11, lower on 3.13"),
    ("shareable_list", "create"): ("see #3"),
    ("managers", "lifecycle"): (
        "start() spawns the static shmkit-manager program and shutdown() waits for "
        "it to exit: about 1.4-1.7 ms, half of it the kernel making and ending a "
        "process; the stdlib's 7-11 ms varies more than that between runs, so the "
        "ratio sits at the line"),
    ("managers", "shutdown"): ("see #5"),
    ("arrays", "ppe_sum"): (
        "the worker's sum reads the whole array (its pages faulted in at first "
        "touch), which no way of handing it over avoids: the ratio cannot exceed "
        "the stdlib's time over the sum's own; the hand-over alone is the row "
        "with a worker that only reads the length"),
    ("queues", "numpy"): (
        "each array is copied once into a fresh segment, whose pages the kernel "
        "must zero and fault in; on this machine faulting in fresh pages costs "
        "about what the copy does, and the stdlib's pipe copies overlap with them"),
    ("queues", "small"): (
        "both processes run Python and pickle; on a loaded 2-CPU machine the "
        "two processes share CPUs with the rest, while pickle alone runs in one"),
}
RUNTIME_COLORS = {"3.11": "#3b6fb6", "3.13": "#e08a2c", "Rust": "#7a7a7a"}


def write(results, out):
    """benchmarks.md and benchmarks.png into the folder out."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmarks.md"), "w") as f:
        f.write(markdown(results))
    chart(results, os.path.join(out, "benchmarks.png"))


# --------------------------------------------------------------------------
# Markdown.


def md_table(head, rows, numeric=True):
    """A markdown table; with numeric, every column but the first and the
    last is right-aligned."""
    align = ["---:" if numeric and 0 < i < len(head) - 1 else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def targets_text(row):
    out = []
    for t in row["targets"]:
        met = "—" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        out.append(f"#{t['issue']}: {t['text']}, {met}")
    return "; ".join(out)


def measured_text(t):
    m = t["measured"]
    if m is None:
        return "—"
    if t["kind"] == "delta_us":
        return f"{m:+.2f} µs"
    if t["kind"] == "median_ns":
        return f"{m:.1f} ns"
    return common.fmt_ratio(m)


def runtime_name(label):
    return "Rust" if label == "Rust" else f"CPython {label}"


def group_table(g):
    runs = g["runs"]
    first = next(iter(runs.values()))
    impls = []
    for run in runs.values():
        for row in run["rows"]:
            impls += [i for i in row["results"] if i not in impls]
    all_rows = [row for run in runs.values() for row in run["rows"]]
    cols = common.comparison_columns(all_rows)
    head = ["workload", "runtime"] + impls + [c[2] for c in cols] + ["target"]
    body = []
    for n, row0 in enumerate(first["rows"]):
        for label, run in runs.items():
            row = run["rows"][n]
            cells = [row["label"] if label == next(iter(runs)) else "", runtime_name(label)]
            for i in impls:
                c = row["results"].get(i)
                cells.append(common.fmt_time(c["median_us"]) if c else "—")
            cells += [common.fmt_comparison(k, row[k].get(o)) for k, o, _ in cols]
            cells.append(targets_text(row))
            body.append(cells)
    return md_table(head, body)


def markdown(results):
    m = results["meta"]
    pythons = ", ".join(f"CPython {v}" for v in m["pythons"].values())
    minutes = m.get("seconds", 0) / 60
    commit = f"`{m['commit']}`" if m.get("commit") else "?"
    if m.get("dirty"):
        commit += " plus uncommitted changes under crates/, python/ or bench/"
    load = m.get("loadavg_start"), m.get("loadavg_end")
    out = [
        "# Benchmarks",
        "",
        "<!-- Written by bench/run.py; change the benches or bench/report.py, "
        "not this file. -->",
        "",
        "shmkit against CPython's `multiprocessing.shared_memory` (\"stdlib\") on the same "
        "workloads, in one run: every script alternates the implementations round by "
        "round, and each figure is the median over rounds of a batch's mean time per "
        "operation. Ratios of times: **stdlib÷shmkit** (and pickle÷shmkit) is how many "
        "times faster shmkit is; **shmkit÷floor** (private, direct) is what shmkit costs "
        "over a limit nothing can beat, 1.00× being that limit. In parentheses: the "
        "median of the per-round ratios, steadier when the machine's load drifts. "
        "On a busy or shared machine the ratios hold; absolute times drift.",
        "",
        f"This report: `{m['command']}`, {minutes:.1f} min. `make bench` "
        "regenerates docs/benchmarks.md and docs/benchmarks.png; "
        "`make bench-quick` runs a small version of everything in under a minute, "
        "into `target/bench-quick/`. The method is in `bench/README.md`.",
        "",
        "![shmkit's speed-up over the stdlib and its cost over the floor, per workload]"
        "(benchmarks.png)",
        "",
        "## Machine",
        "",
        md_table(["", ""], numeric=False, rows=[
            ["CPU", f"{m['cpu']}, {m['cores']} cores"],
            ["memory", f"{m['memory_gib']} GiB"],
            ["kernel", m["kernel"]],
            ["Python", pythons],
            ["date", m["date"]],
            ["commit", commit],
            ["command", f"`{m['command']}` ({minutes:.1f} min, "
                        f"{m.get('build_seconds', 0):.0f} s of it building)"],
            ["/dev/shm", "a private tmpfs (mount namespace)" if m.get("private_shm")
             else "the machine's"],
            ["load average", f"{load[0][0]:.2f} → {load[1][0]:.2f}" if all(load) else "?"],
        ]),
        "",
    ]
    if results.get("failures"):
        out += ["## Failures", ""] + [f"- {f}" for f in results["failures"]] + [""]

    target_rows = []
    for g in results["groups"]:
        for label, run in g["runs"].items():
            for row in run["rows"]:
                for t in row["targets"]:
                    met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
                    target_rows.append((t["issue"], [
                        f"#{t['issue']}", f"{SHORT[g['group']]}: {row['label']}", t["text"],
                        runtime_name(label), measured_text(t), met]))
    target_rows.sort(key=lambda x: x[0])
    out += ["## Speed targets", "",
            "Each issue's target beside the ratio measured in this run (the ratio of the "
            "medians).", "",
            md_table(["issue", "workload", "target", "runtime", "measured", "met"],
                     [r for _, r in target_rows], numeric=False), ""]
    misses = {}
    for g in results["groups"]:
        for label, run in g["runs"].items():
            for row in run["rows"]:
                if any(t["met"] is False for t in row["targets"]):
                    key = (g["group"], row["workload"])
                    misses.setdefault(key, (row["label"], []))[1].append(runtime_name(label))
    if misses:
        out += ["Not met in this run, and why:", ""]
        for (group, workload), (label, runtimes) in misses.items():
            why = WHY.get((group, workload), "see the issue")
            out.append(f"- {SHORT[group]}: {label} ({', '.join(runtimes)}): {why}.")
        out.append("")

    for g in results["groups"]:
        out += [f"## {g['title']}", "", ABOUT.get(g["group"], ""), "", group_table(g), ""]
        for label, run in g["runs"].items():
            notes = run.get("notes") or []
            if notes:
                out.append(f"{runtime_name(label)}: " + "; ".join(notes) + ".")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------
# The chart.


def chart_rows(results, kind):
    """[(group, label, {runtime: ratio}, [target values])] for one kind of
    comparison: "speedup" (against the stdlib or pickling) or "overhead"."""
    rows = []
    for g in results["groups"]:
        first = next(iter(g["runs"].values()))
        for n, row0 in enumerate(first["rows"]):
            for other in row0[kind]:
                values = {label: run["rows"][n][kind][other]["ratio"]
                          for label, run in g["runs"].items() if other in run["rows"][n][kind]}
                targets = [(t["op"], t["value"]) for t in row0["targets"]
                           if t["kind"] == kind and t["against"] == other]
                suffix = "" if other in ("stdlib", "floor") else f" (vs {other})"
                rows.append((g["group"], row0["label"] + suffix, values, targets))
    return rows


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("speedup", "shmkit's speed-up: stdlib time ÷ shmkit time (log scale; right is faster)"),
        ("overhead", "shmkit's cost over the limit: shmkit time ÷ floor time "
                     "(log scale; 1× = the limit, left is better)"),
    ]
    data = [(kind, title, chart_rows(results, kind)) for kind, title in panels]
    data = [d for d in data if d[2]]
    runtimes = [r for r in ("3.11", "3.13", "Rust")
                if any(r in g["runs"] for g in results["groups"])]
    heights = [len(rows) + len({r[0] for r in rows}) for _, _, rows in data]
    fig, axes = plt.subplots(len(data), 1, figsize=(11, 0.34 * sum(heights) + 2.2),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    bar_h = 0.38  # two bars fill a row, with a gap to the next
    for ax, (kind, title, rows) in zip(axes[:, 0], data):
        y, ticks, labels, headers = 0, [], [], []
        for i, (group, label, values, targets) in enumerate(rows):
            if i == 0 or rows[i - 1][0] != group:
                headers.append((y, SHORT[group]))
                y += 1
            present = [rt for rt in runtimes if rt in values]
            for k, rt in enumerate(present):
                yy = y + (k - (len(present) - 1) / 2) * bar_h
                v = values[rt]
                # Bars grow from 1× (the same speed, or the limit itself),
                # so a bar pointing left is a loss.
                ax.barh(yy, v - 1, left=1, height=bar_h * 0.92, color=RUNTIME_COLORS[rt])
                ax.text(max(v, 1) * 1.03, yy, common.fmt_ratio(v), va="center", fontsize=7.5)
            for _, t in targets:
                ax.plot([t, t], [y - 0.45, y + 0.45], color="crimson", lw=2.2, zorder=5)
            ticks.append(y)
            labels.append(label + "".join(f"  (target {'≥' if op == '>=' else '≤'} {t:g}×)"
                                          for op, t in targets))
            y += 1
        ax.set_xscale("log")
        ax.set_yticks(ticks, labels, fontsize=8.5)
        for hy, text in headers:
            ax.text(0.002, hy, text, transform=ax.get_yaxis_transform(), fontsize=9.5,
                    fontweight="bold", va="center", ha="left")
        ax.set_ylim(y - 0.4, -0.6)
        vals = [v for r in rows for v in r[2].values()] + [t for r in rows for _, t in r[3]]
        lo, hi = min(vals + [1.0]), max(vals + [1.0])
        ax.set_xlim(lo / 1.15, hi * 1.5)
        ax.axvline(1.0, color="black", lw=0.8)
        steps = ([0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500] if hi > 10
                 else [0.5, 1, 1.5, 2, 3, 5, 10] if hi > 3
                 else [0.5, 0.8, 1, 1.2, 1.5, 2, 3])
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(
            [v for v in steps if lo / 1.15 <= v <= hi * 1.4]))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, fontsize=10, loc="left")
    handles = [matplotlib.patches.Patch(color=RUNTIME_COLORS[rt], label=runtime_name(rt))
               for rt in runtimes]
    handles.append(matplotlib.lines.Line2D([], [], color="crimson", lw=2.2,
                                           label="target (issues #2–#5, #16)"))
    m = results["meta"]
    fig.suptitle(f"shmkit vs multiprocessing.shared_memory — {m['cpu']}, {m['cores']} cores, "
                 f"{m['date']}", x=0.01, y=0.995, ha="left", va="top", fontsize=11)
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.005, 0.985 - 0.25 / fig.get_figheight()),
               ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        write(json.load(f), sys.argv[2])
