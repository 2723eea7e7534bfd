"""``python -m bench.accelerators``: the workloads on every device JAX and torch see.

For each workload, each JAX device (cpu, gpu, tpu) runs ``fit`` (for the
sweep ``jax.jit(jax.vmap(fit))``), the hand-written scan and Keras, and each
torch device (cpu, cuda, mps) runs the lesson's loop and the torch peers
(torch.compile, fastai), all with full float32 matmul precision: JAX's
default on GPU/TPU is reduced precision and torch may use TF32. Every result
is checked against a float64 NumPy run; times are medians of warm calls,
synchronised. The peers that compile for seconds run at full size only; a
peer that cannot run here is listed with the reason. Writes
``accelerators.md`` and ``accelerators.png`` to the output folder.
"""

import argparse
import contextlib
import pathlib
import sys
import time

import jax
import numpy as np

from bench import machine, timing
from bench.methods import BASELINE, SCAN, Unavailable, methods_for
from bench.workloads import AGREEMENT, SIZES, close_to_truth, make_problem, truth

ROOT = pathlib.Path(__file__).resolve().parent.parent
JAX_METHODS = ("fit", "jax.jit(jax.vmap(fit))", SCAN)  # and every Keras method
BUDGET_S = {"full": 1.0, "smoke": 0.02}


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


def targets(workload, slow=True):
    """``(engine, device name, device, method)`` for every place the workload
    runs; ``slow=False`` leaves out the peers that compile for seconds."""
    for device in jax_devices():
        for method in methods_for(workload, engines=("jax", "keras"), slow=slow):
            if method.name in JAX_METHODS or method.engine == "keras":
                yield method.engine, f"{device.platform}:{device.id}", device, method
    for name in machine.torch_devices():
        for method in methods_for(workload, engines=("torch",), slow=slow):
            yield "torch", name, name, method


def compare(size="full", names=None):
    """One row per (workload, engine, device, method): a dict of what was
    measured, or with ``skipped`` (the reason) for a peer that cannot run here."""
    rows = []
    for workload in SIZES[size]:
        if names and workload.name not in names:
            continue
        problem = make_problem(workload)
        expected = truth(problem)
        for engine, name, device, method in targets(workload, slow=size == "full"):
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
                    rows.append(dict(workload=workload.name, engine=engine, device=name,
                                     method=method.name, skipped=str(why)))
                    print(f"{workload.name:22s} {engine:5s} {name:8s} {method.name}: "
                          f"skipped, {why}", flush=True)
                    continue
                warm_s = -time.perf_counter()
                error = close_to_truth(run(), expected)
                warm_s += time.perf_counter()
                median_s = timing.median_seconds(run, budget=BUDGET_S[size], min_rounds=2,
                                                 call_s=warm_s)
            rows.append(dict(workload=workload.name, engine=engine, device=name,
                             method=method.name, median_s=median_s, first_s=first_s,
                             steps_per_s=workload.steps * max(1, workload.sweep) / median_s,
                             error=error, agrees=error <= AGREEMENT))
            print(f"{workload.name:22s} {engine:5s} {name:8s} {method.name:22s} "
                  f"{median_s * 1e3:10.3f} ms  error {error:.1e}", flush=True)
    return rows


def write(rows, out, note=""):
    """``accelerators.md`` (one cross-device table) and ``accelerators.png``;
    ``note``, if any, is printed under the title."""
    from bench import plots

    header = ("workload", "engine", "device", "method", "median", "vs torch cpu",
              "steps/s", "first call (compile + run)", "error vs float64", "agrees")
    rows, skipped = measured(rows), [r for r in rows if "skipped" in r]
    base = {r["workload"]: r["median_s"] for r in rows
            if r["engine"] == "torch" and r["device"] == "cpu" and r["method"] == BASELINE}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio = base.get(r["workload"], float("nan")) / r["median_s"]
        lines.append(
            f"| {r['workload']} | {r['engine']} | {r['device']} | {r['method']} | "
            f"{r['median_s'] * 1e3:,.3f} ms | {ratio:,.1f}x | {r['steps_per_s']:,.0f} | "
            f"{r['first_s'] * 1e3:,.1f} ms | {r['error']:.1e} | "
            f"{'yes' if r['agrees'] else '**no**'} |")
    if skipped:
        lines += [""] + [f"- {r['workload']}, {r['engine']} {r['device']}, **{r['method']}** "
                         f"was skipped: {r['skipped']}" for r in skipped]
    info = machine.machine_info()
    heading = f"{note}\n\n" if note else ""
    text = (f"# functional-sgd across devices\n\n{heading}"
            f"Written by `python -m bench.accelerators` on {info['cpu']} "
            f"({info['cores']} cores); JAX devices: {info['jax devices']}; "
            f"torch devices: {info['torch devices']}. Full float32 matmul precision "
            f"everywhere; agreement is max |p - p64| / (1 + |p64|) <= {AGREEMENT:g} "
            "against a float64 NumPy run.\n\n" + "\n".join(lines) + "\n\n"
            "![time per workload and device](accelerators.png)\n")
    (out / "accelerators.md").write_text(text)
    plots.device_bars(rows, out / "accelerators.png",
                      title="Median time per workload, engine and device")
    return text


def measured(rows):
    """The rows of peers that ran (not skipped)."""
    return [r for r in rows if "skipped" not in r]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.accelerators",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("full", "smoke"), default="full")
    parser.add_argument("--workloads", help="comma-separated workload names (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    parser.add_argument("--note", default="", help="a line to print under the title")
    args = parser.parse_args(argv)
    names = set(args.workloads.split(",")) if args.workloads else None
    known = {w.name for w in SIZES[args.size]}
    if names and not names <= known:
        parser.error(f"unknown workloads {sorted(names - known)}; known: {sorted(known)}")
    rows = compare(args.size, names)
    args.out.mkdir(parents=True, exist_ok=True)
    write(rows, args.out, args.note)
    print(f"wrote {args.out / 'accelerators.md'}")
    return 0 if all(r["agrees"] for r in measured(rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
