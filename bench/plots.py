"""The report's PNG plots (matplotlib, Agg backend)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from bench.methods import BASELINE  # noqa: E402


def _colors(methods):
    """A color per method; beyond the default cycle's 10, tab20's 20 (the
    peers make a workload's methods more than 10)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(methods) > len(cycle):
        cycle = [plt.get_cmap("tab20")(i) for i in range(20)]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def speedup_bars(table, path, *, title):
    """One horizontal bar per (workload, method): times faster than the torch
    reference, on a log axis, workloads top to bottom in suite order."""
    rows = [(w, m, runs[BASELINE].median_s / r.median_s)
            for w, runs in table.items() if BASELINE in runs
            for m, r in runs.items() if m != BASELINE]
    methods = list(dict.fromkeys(m for _, m, _ in rows))
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    ys = range(len(rows))[::-1]
    ax.barh(list(ys), [s for _, _, s in rows], color=[colors[m] for _, m, _ in rows])
    ax.set_yticks(list(ys), [f"{w}  |  {m}" for w, m, _ in rows], fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, (_, _, s) in zip(ys, rows):
        ax.text(s, y, f" {s:,.1f}x", va="center", fontsize=7)
    ax.set_xlabel("times faster than the torch reference (log scale; 1x = as fast)")
    ax.set_title(title)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_per_step(table, workloads, floors, path, *, title):
    """Seconds per step of each method on ``workloads`` (in order of data
    size), with ``floors`` (``{workload: seconds}``) drawn as a dashed line."""
    methods = list(dict.fromkeys(m for w in workloads for m in table[w]
                                 if "each call" not in m))
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(8, 5))
    positions = range(len(workloads))
    for m in methods:
        xs = [i for i, w in zip(positions, workloads) if m in table[w]]
        ys = [table[w][m].step_s * 1e6 for w in workloads if m in table[w]]
        ax.plot(xs, ys, "o-", color=colors[m], label=m)
    xs = [i for i, w in zip(positions, workloads) if w in floors]
    ax.plot(xs, [floors[workloads[i]] * 1e6 for i in xs], "k--",
            label="floor: 2 reads of x at in-cache bandwidth")
    labels = [f"{w}\n{_size(next(iter(table[w].values())).extra['x_bytes'])}"
              for w in workloads]
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("workload (bytes of x, float32)")
    ax.set_ylabel("time per step (us, log scale)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size(nbytes):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def device_bars(rows, path, *, title):
    """Grouped bars: per workload, one bar per (engine, device, method), log time."""
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    series = list(dict.fromkeys((r["engine"], r["device"], r["method"]) for r in rows))
    colors = _colors(series)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(workloads) + 2), 5))
    for k, key in enumerate(series):
        xs, ys = [], []
        for i, w in enumerate(workloads):
            for r in rows:
                if r["workload"] == w and (r["engine"], r["device"], r["method"]) == key:
                    xs.append(i - 0.4 + (k + 0.5) * width)
                    ys.append(r["median_s"] * 1e3)
        ax.bar(xs, ys, width, color=colors[key], label=" ".join(key))
    ax.set_xticks(range(len(workloads)), workloads, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms, log scale)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
