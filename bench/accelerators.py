"""The workloads on every device JAX and torch see: ``python -m bench.run --devices all``.

For each workload, each JAX device (cpu, gpu, tpu) runs ``fit`` (for the
sweep ``jax.jit(jax.vmap(fit))``), the hand-written scan and Keras, and each
torch device (cpu, cuda, mps) runs the lesson's loop and the torch peers
(torch.compile, fastai), all with full float32 matmul precision: JAX's
default on GPU/TPU is reduced precision and torch may use TF32. Every result
is checked against a float64 NumPy run; times are medians of warm calls,
synchronised. The peers that compile for seconds run at full size only; a
peer that cannot run here is listed with the reason. Writes
``accelerators.md`` and ``accelerators.png`` to the output folder.
``--devices cpu,gpu`` keeps those platforms (``cuda`` names torch's GPU and
JAX's alike), ``--peers`` those comparisons (``fit`` always runs);
``python -m bench.accelerators`` is an alias of ``python -m bench.run
--devices all``.
"""

import contextlib
import os
import pathlib
import sys
import time

import jax
import numpy as np

from bench import machine, timing
from bench.methods import BASELINE, FASTAI, KERAS, SCAN, TORCH_COMPILE, Unavailable, methods_for
from bench.workloads import AGREEMENT, SIZES, close_to_truth, make_problem, truth

ROOT = pathlib.Path(__file__).resolve().parent.parent
JAX_METHODS = ("fit", "jax.jit(jax.vmap(fit))", SCAN)  # and every Keras method
BUDGET_S = {"full": 1.0, "short": 1.0, "smoke": 0.02}
PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}  # torch's names of JAX's "gpu"
PEERS = {"torch": (BASELINE,), "scan": (SCAN,), "keras": KERAS,
         "torch.compile": TORCH_COMPILE, "fastai": (FASTAI,)}
"""``--peers`` names and the methods each adds beside ``fit`` (every form of it)."""


def jax_devices():
    """Every device of every JAX backend present, CPU included."""
    devices = []
    for backend in ("cpu", "gpu", "tpu"):
        try:
            devices += jax.devices(backend)
        except RuntimeError:  # that backend is not installed or has no device
            pass
    return devices


@contextlib.contextmanager
def torch_full_precision():
    """No TF32 in torch matmuls for the block; the previous settings come back."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def torch_synchronised(run, device):
    """``run`` followed by waiting for the device (the reference already copies
    its result to the host; this makes the wait explicit for every device)."""
    import torch

    def synced():
        out = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        elif device == "mps":
            torch.mps.synchronize()
        return out

    return synced


def runs_on(device):
    """Checks that ``fit`` on inputs placed on ``device`` computes there."""
    import functional_sgd as fsgd

    x, y = (jax.device_put(a, device) for a in fsgd.lesson_data(jax.random.key(0), 8))
    start = jax.device_put(np.zeros(2, np.float32), device)
    params = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=2).params
    return params.devices() == {device}


def platform_of(name):
    """The JAX platform a ``--devices`` name means: ``cuda`` and ``rocm`` are ``gpu``.

    >>> platform_of("cuda"), platform_of("cpu:0"), platform_of("mps")
    ('gpu', 'cpu', 'mps')
    """
    name = name.split(":")[0]
    return PLATFORM_ALIASES.get(name, name)


def targets(workload, slow=True, platforms=None, peers=None):
    """``(engine, device name, device, method)`` for every place the workload
    runs; ``slow=False`` leaves out the peers that compile for seconds,
    ``platforms`` (a set of :func:`platform_of` names) keeps those devices,
    ``peers`` (names of :data:`PEERS`) those comparisons beside ``fit``."""
    wanted = None if peers is None else {m for peer in peers for m in PEERS[peer]}

    def kept(method):
        return wanted is None or method.name in wanted or method.name.startswith("fit") \
            or method.name.startswith("jax.") and method.name.endswith("(fit))")

    for device in jax_devices():
        if platforms is not None and device.platform not in platforms:
            continue
        for method in methods_for(workload, engines=("jax", "keras"), slow=slow):
            if (method.name in JAX_METHODS or method.engine == "keras") and kept(method):
                yield method.engine, f"{device.platform}:{device.id}", device, method
    for name in machine.torch_devices():
        if platforms is not None and platform_of(name) not in platforms:
            continue
        for method in methods_for(workload, engines=("torch",), slow=slow):
            if kept(method):
                yield "torch", name, name, method


NOT_YET_RUN = "not yet run when this table was written (the run stopped before it)"


def compare(size="full", names=None, platforms=None, peers=None, budget_s=None,
            on_case=None):
    """One row per (workload, engine, device, method): a dict of what was
    measured, or with ``skipped`` (the reason) for a peer that cannot run here.
    ``platforms``, ``peers``: as for :func:`targets`. ``budget_s``: once this
    many seconds have passed, the cases left are listed as skipped, not run;
    the peers that compile for seconds run last, after every other case of
    every workload, so a budget cuts them first. ``on_case``: called after
    each case with every row so far, the cases not yet run skipped as
    :data:`NOT_YET_RUN` (a run stopped from outside keeps what it measured)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    cases = []  # (pass, order, where, workload, problem, target)
    for w_index, workload in enumerate(SIZES[size]):
        if names and workload.name not in names:
            continue
        problem = make_problem(workload)
        for t_index, target in enumerate(targets(workload, slow=size != "smoke",
                                                 platforms=platforms, peers=peers)):
            engine, name, _, method = target
            where = dict(workload=workload.name, engine=engine, device=name, method=method.name)
            cases.append((method.slow, (w_index, t_index), where, workload, problem, target))
    cases.sort(key=lambda case: case[:2])
    truths, rows = {}, []
    for index, (_, order, where, workload, problem, (engine, name, device, method)) \
            in enumerate(cases):
        if deadline is not None and time.monotonic() > deadline:
            rows.append((order, {**where, "skipped": f"past the run's time budget of "
                                                    f"{budget_s:g} s"}))
            continue
        if workload not in truths:
            truths[workload] = truth(problem)
        row = measure(workload, problem, truths[workload], engine, name, device, method, size)
        rows.append((order, {**where, **row}))
        if on_case is not None:
            left = [(later, {**later_where, "skipped": NOT_YET_RUN})
                    for _, later, later_where, *_ in cases[index + 1:]]
            on_case([row for _, row in sorted(rows + left, key=lambda r: r[0])])
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def measure(workload, problem, expected, engine, name, device, method, size):
    """What one case measured, or ``{"skipped": why}``."""
    if engine == "jax" and not runs_on(device):
        raise RuntimeError(f"fit on inputs placed on {name} did not run there.")
    precision = (jax.default_matmul_precision("highest") if method.on_jax
                 else torch_full_precision())
    with precision:
        try:
            run = method.prepare(problem, device)
            if engine == "torch":
                run = torch_synchronised(run, device)
            first_s = timing.first_call(run, fresh=False)
        except Unavailable as why:
            print(f"{workload.name:22s} {engine:5s} {name:8s} {method.name}: "
                  f"skipped, {why}", flush=True)
            return {"skipped": str(why)}
        warm_s = -time.perf_counter()
        error = close_to_truth(run(), expected)
        warm_s += time.perf_counter()
        median_s = timing.median_seconds(run, budget=BUDGET_S[size], min_rounds=2,
                                         call_s=warm_s)
    print(f"{workload.name:22s} {engine:5s} {name:8s} {method.name:22s} "
          f"{median_s * 1e3:10.3f} ms  error {error:.1e}", flush=True)
    return dict(median_s=median_s, first_s=first_s,
                steps_per_s=workload.steps * max(1, workload.sweep) / median_s,
                error=error, agrees=error <= AGREEMENT)


def write(rows, out, note="", *, command="python -m bench.run --devices all", size=None,
          plot=True):
    """``accelerators.md`` (one cross-device table) and, with ``plot``,
    ``accelerators.png`` (linked from the table only then); ``note``, if any,
    is printed under the title; ``size``: the workloads' size, whose shapes
    are listed under the table."""
    from bench import plots

    header = ("workload", "engine", "device", "method", "median", "vs torch reference",
              "steps/s", "first call (compile + run)", "error vs float64", "agrees")
    rows, skipped = measured(rows), [r for r in rows if "skipped" in r]
    base = {}  # the torch reference on CPU, else on the first torch device measured
    for r in sorted(rows, key=lambda r: r["device"] != "cpu"):
        if r["engine"] == "torch" and r["method"] == BASELINE:
            base.setdefault(r["workload"], (r["median_s"], r["device"]))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        base_s, base_device = base.get(r["workload"], (float("nan"), "-"))
        lines.append(
            f"| {r['workload']} | {r['engine']} | {r['device']} | {r['method']} | "
            f"{r['median_s'] * 1e3:,.3f} ms | {base_s / r['median_s']:,.1f}x "
            f"({base_device}) | {r['steps_per_s']:,.0f} | "
            f"{r['first_s'] * 1e3:,.1f} ms | {r['error']:.1e} | "
            f"{'yes' if r['agrees'] else '**no**'} |")
    if skipped:
        lines += [""] + [f"- {r['workload']}, {r['engine']} {r['device']}, **{r['method']}** "
                         f"was skipped: {r['skipped']}" for r in skipped]
    info = machine.machine_info()
    heading = f"{note}\n\n" if note else ""
    text = (f"# functional-sgd across devices\n\n{heading}"
            f"Written by `{command}` on {info['cpu']} "
            f"({info['cores']} cores); JAX devices: {info['jax devices']}; "
            f"torch devices: {info['torch devices']}. Full float32 matmul precision "
            f"everywhere; agreement is max |p - p64| / (1 + |p64|) <= {AGREEMENT:g} "
            "against a float64 NumPy run.\n\n" + "\n".join(lines) + "\n\n"
            + (sizes_note(size, {r["workload"] for r in rows}) if size else "")
            + ("![time per workload and device](accelerators.png)\n" if plot else ""))
    written = out / "accelerators.md.partial"  # a run stopped mid-write keeps the last table
    written.write_text(text)
    os.replace(written, out / "accelerators.md")
    if plot:
        plots.device_bars(rows, out / "accelerators.png",
                          title="Median time per workload, engine and device")
    return text


def sizes_note(size, names):
    """The shapes of the workloads in the table, at ``size``."""
    shapes = "; ".join(f"{w.name}: {w.label}" + (f", {w.sweep} rates" if w.sweep else "")
                       for w in SIZES[size] if w.name in names)
    return f"Workloads at size `{size}`: {shapes}.\n\n"


def measured(rows):
    """The rows of peers that ran (not skipped)."""
    return [r for r in rows if "skipped" not in r]


def devices_run(args, command):
    """Runs the comparison ``args`` asks for (``python -m bench.run --devices
    ...``) and writes its table into ``args.out``; ``command``: the command
    line, quoted in the table. Returns 0 when every result agrees."""
    platforms = None if args.devices == "all" else {
        platform_of(d) for d in args.devices.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)

    def write_so_far(rows):  # the picture comes with the last write
        write(rows, args.out, args.note, command=command, size=args.size, plot=False)

    rows = compare(args.size, args.workloads, platforms, args.peers, args.budget,
                   on_case=write_so_far)
    write(rows, args.out, args.note, command=command, size=args.size)
    print(f"wrote {args.out / 'accelerators.md'}")
    return 0 if all(r["agrees"] for r in measured(rows)) else 1


if __name__ == "__main__":  # the old command, kept as an alias
    from bench import run

    sys.exit(run.main(["--devices", "all", *sys.argv[1:]]))
