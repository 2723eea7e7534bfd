"""Scaling curve of data-parallel ``fit`` over 1, 2, 4 and 8 devices.

``python bench/investigations/scaling.py`` starts one subprocess per device count, with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` set before jax is
imported (on a machine with D real accelerators, ``--real`` uses those
instead). Each times the same workloads: a linear least-squares fit of
``--rows`` rows by full batch, mini-batch and stochastic descent, on one device
without a mesh and on a mesh of D devices. Compile time (first call minus a
warm call) is reported apart from run time (median of ``--repeats`` warm
calls, each ended by ``block_until_ready``). Writes bench/results/scaling.md,
scaling.png and the raw timings in scaling.json.

Simulated CPU devices share the machine's cores: on 2 cores, more than 2
devices cannot run faster, and the curve measures the cost of sharding and
all-reduces as much as any gain.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "bench", "results")
DEVICE_COUNTS = (1, 2, 4, 8)
WORKLOADS = {"full batch": None, "mini-batch": 4096, "stochastic": 1}  # rows a step


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 18, help="rows of data")
    parser.add_argument("--features", type=int, default=32, help="columns of data")
    parser.add_argument("--steps", type=int, default=200, help="updates per call")
    parser.add_argument("--repeats", type=int, default=5, help="warm calls timed")
    parser.add_argument("--real", action="store_true",
                        help="use the machine's own devices, do not simulate CPU ones")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _time_calls(call, repeats):
    """``(compile seconds, median run seconds)`` of ``call()``."""
    began = time.perf_counter()
    call()
    first = time.perf_counter() - began
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        runs.append(time.perf_counter() - began)
    run = statistics.median(runs)
    return max(first - run, 0.0), run


def _worker(args):
    """Times every workload on one device and on a mesh of ``args.worker`` devices."""
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np

    import functional_sgd as fsgd

    devices = jax.devices()[:args.worker]
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    key_x, key_noise, key_rows = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(key_x, (args.rows, args.features), minval=-1.0, maxval=1.0)
    y = x @ np.linspace(-1.0, 1.0, args.features, dtype=np.float32) \
        + 0.1 * jax.random.normal(key_noise, (args.rows,))
    start = np.zeros(args.features, np.float32)
    timings = []
    for name, batch_size in WORKLOADS.items():
        kwargs = {} if batch_size is None else {"batch_size": batch_size, "key": key_rows}
        # The one-device baseline is timed in every worker, next to the mesh, so
        # each ratio compares two runs made under the same load.
        for where in (None, mesh):
            def call():
                result = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=args.steps,
                                  run=fsgd.Run(mesh=where), **kwargs)
                return result.params.block_until_ready()

            compile_s, run_s = _time_calls(call, args.repeats)
            timings.append({"workload": name, "devices": len(devices),
                            "mesh": where is not None, "compile_s": compile_s,
                            "run_s": run_s, "step_us": run_s / args.steps * 1e6})
    print(json.dumps({"timings": timings, "platform": devices[0].platform,
                      "device_kind": devices[0].device_kind}))


def _run_worker(count, args):
    env = dict(os.environ)
    if not args.real:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={count}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, os.path.abspath(__file__), "--worker", str(count),
               "--rows", str(args.rows), "--features", str(args.features),
               "--steps", str(args.steps), "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"worker for {count} devices failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(args, runs):
    """The Markdown table and the PNG of the scaling curve."""
    pairs = []  # (one device without mesh, mesh of D devices), timed in one worker
    for run in runs:
        timings = run["timings"]
        pairs += [(one, mesh) for one, mesh in zip(timings[::2], timings[1::2])]
    lines = [
        "# Data-parallel scaling",
        "",
        f"`python bench/investigations/scaling.py --rows {args.rows} --features {args.features} "
        f"--steps {args.steps} --repeats {args.repeats}{' --real' if args.real else ''}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {runs[0]['platform']} devices "
        f"({'real' if args.real else 'simulated with --xla_force_host_platform_device_count'})."
        f" Linear least squares, {args.rows} rows x {args.features} features, float32; "
        f"mini-batch {WORKLOADS['mini-batch']} rows a step. Run time: median of "
        f"{args.repeats} warm calls of {args.steps} steps; compile: first call minus that. "
        "Each row's two layouts are timed in the same process, one after the other.",
        "",
        "| workload | devices | one device, no mesh: per step (us) | mesh: per step (us) "
        "| speedup | mesh compile (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for one, mesh in sorted(pairs, key=lambda p: list(WORKLOADS).index(p[0]["workload"])):
        lines.append(f"| {one['workload']} | {mesh['devices']} | {one['step_us']:.1f} | "
                     f"{mesh['step_us']:.1f} | {one['run_s'] / mesh['run_s']:.2f}x | "
                     f"{mesh['compile_s']:.2f} |")
    lines += ["", "Speedup = one-device run time / mesh run time. Simulated devices share "
              "the machine's cores, so beyond the core count the curve shows the cost of "
              "sharding and all-reduces rather than any gain.", ""]
    with open(os.path.join(RESULTS, "scaling.md"), "w") as file:
        file.write("\n".join(lines))
    _plot(pairs)


def _plot(pairs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (speed, step) = plt.subplots(1, 2, figsize=(13, 4.4))
    for name in WORKLOADS:
        mine = [(one, mesh) for one, mesh in pairs if one["workload"] == name]
        counts = [mesh["devices"] for _, mesh in mine]
        speed.plot(counts, [one["run_s"] / mesh["run_s"] for one, mesh in mine], "o-",
                   label=name)
        line, = step.plot(counts, [mesh["step_us"] for _, mesh in mine], "o-",
                          label=f"{name}, mesh")
        step.plot(counts, [one["step_us"] for one, _ in mine], "x--", lw=1,
                  color=line.get_color(), label=f"{name}, one device, no mesh")
    speed.plot(DEVICE_COUNTS, DEVICE_COUNTS, "k:", label="ideal")
    speed.axhline(1.0, color="grey", lw=0.8)
    speed.set(xscale="log", yscale="log", xlabel="devices in the mesh",
              ylabel="speedup vs one device", title="Data-parallel fit: speedup")
    step.set(xscale="log", yscale="log", xlabel="devices in the mesh",
             ylabel="time per step (us)", title="Time per step")
    for axes in (speed, step):
        axes.set_xticks(DEVICE_COUNTS, [str(c) for c in DEVICE_COUNTS])
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=8)
    step.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(os.path.join(RESULTS, "scaling.png"), dpi=110)


def main(argv=None):
    args = _arguments(argv)
    if args.worker is not None:
        return _worker(args)
    os.makedirs(RESULTS, exist_ok=True)
    runs = []
    for count in DEVICE_COUNTS:
        print(f"timing {count} device(s)...", flush=True)
        runs.append(_run_worker(count, args))
    with open(os.path.join(RESULTS, "scaling.json"), "w") as file:
        json.dump({"arguments": vars(args), "runs": runs}, file, indent=1)
    _report(args, runs)
    print(open(os.path.join(RESULTS, "scaling.md")).read())


if __name__ == "__main__":
    main()
