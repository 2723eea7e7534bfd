"""``python -m bench.run``: the one benchmark runner.

Every table of ``bench/`` comes from this command; what it compares is an option::

    python -m bench.run [--size full|short|smoke] [-k EXPR] [--out DIR]
        this machine's report: the suite (bench/bench_workloads.py, every
        workload by every method on JAX's default device and torch's CPU)
        under pytest-benchmark, then again under functional_sgd.tune_cpu()
        (on a CPU backend), written to DIR/REPORT.md (bench/report.py)
    python -m bench.run --devices all|cpu,gpu,cuda,tpu,mps [--peers torch,scan,...]
                        [--workloads NAME,...] [--budget S] [--size ...] [--out DIR]
        the same workloads on each device JAX and torch see, one table:
        DIR/accelerators.md (bench/accelerators.py)
    python -m bench.run --before DIR --after DIR [--repeats R] [-k EXPR]
                        [--out FILE.md] [--work DIR]
        two checkouts' suites alternated, case by case (bench/side_by_side.py)

``--size``: ``full`` the issues' sizes; ``short`` the same with 10x fewer
steps for the two workloads whose Python-driven peers take minutes (the
long lesson, stochastic descent), so a cross-device run with every peer fits
a short GPU session; ``smoke`` tiny sizes, every body run once. The old
commands ``python -m bench.report``, ``python -m bench.accelerators`` and
``python -m bench.side_by_side`` are aliases of this one.
"""

import argparse
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PEER_NAMES = ("torch", "scan", "keras", "torch.compile", "fastai")  # accelerators.PEERS


def parser():
    p = argparse.ArgumentParser(prog="python -m bench.run",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", choices=("full", "short", "smoke"), default="full")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default bench/results); "
                   "with --before/--after, a file for the report")
    p.add_argument("--note", default="", help="a line to print under the title")
    p.add_argument("-k", dest="select", help="pytest -k expression choosing cases")
    devices = p.add_argument_group("across devices")
    devices.add_argument("--devices", help="'all', or comma-separated platforms "
                         "(cpu, gpu or cuda, tpu, mps): run the cross-device table")
    devices.add_argument("--peers", help=f"comma-separated comparisons beside fit, of "
                         f"{', '.join(PEER_NAMES)} (default: all)")
    devices.add_argument("--workloads", help="comma-separated workload names (default: all)")
    devices.add_argument("--budget", type=float, help="seconds: the cases left after this "
                         "long are listed as skipped, not run (default: no limit)")
    report = p.add_argument_group("this machine's report")
    report.add_argument("--json", type=pathlib.Path, help="report on this benchmark JSON "
                        "instead of running the suite")
    report.add_argument("--tuned-json", type=pathlib.Path, help="with --json: the run under "
                        "functional_sgd.tune_cpu() to report on")
    report.add_argument("--no-tuned", action="store_true",
                        help="skip the second run under functional_sgd.tune_cpu()")
    report.add_argument("--no-profile", action="store_true", help="skip "
                        "bench/investigations/profile_large.py (each pass over x timed alone)")
    report.add_argument("--bandwidth-bytes", type=int, default=2 * 2**30,
                        help="size of the array read to measure memory bandwidth")
    side = p.add_argument_group("two checkouts side by side")
    side.add_argument("--before", type=pathlib.Path, help="checkout before the change")
    side.add_argument("--after", type=pathlib.Path, help="checkout after the change")
    side.add_argument("--repeats", type=int, default=3,
                      help="runs per checkout, alternated (default 3)")
    side.add_argument("--tolerance", type=float, default=0.05,
                      help="slower beyond spread: ratio > (1 + tolerance) * spread")
    side.add_argument("--work", type=pathlib.Path, help="folder for child logs, raw JSON "
                      "and the report (default: a new temporary folder)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    side_by_side = args.before is not None or args.after is not None
    if side_by_side and (args.before is None or args.after is None):
        p.error("--before and --after go together: give both checkouts")
    if side_by_side and args.devices:
        p.error("--devices compares devices in this checkout; --before/--after compare "
                "two checkouts: give one or the other")
    if (args.peers or args.workloads or args.budget) and not args.devices:
        p.error("--peers, --workloads and --budget are for the cross-device table: add "
                "--devices all (or a list), or use -k for the report's cases")
    if args.peers:
        args.peers = args.peers.split(",")
        unknown = sorted(set(args.peers) - set(PEER_NAMES))
        if unknown:
            p.error(f"--peers: unknown {unknown}; known: {', '.join(PEER_NAMES)}")
    if side_by_side:
        if args.repeats < 1:
            p.error(f"--repeats must be at least 1; got {args.repeats}")
        from bench import side_by_side as module

        try:
            return module.run_side_by_side(args, argv)
        except ValueError as error:
            p.error(str(error))
    args.out = args.out or DEFAULT_OUT
    if args.devices:
        from bench import accelerators
        from bench.workloads import SIZES

        if args.workloads:
            args.workloads = set(args.workloads.split(","))
            known = {w.name for w in SIZES[args.size]}
            if not args.workloads <= known:
                p.error(f"--workloads: unknown {sorted(args.workloads - known)}; "
                        f"known: {sorted(known)}")
        return accelerators.devices_run(args, shlex.join(["python", "-m", "bench.run", *argv]))
    from bench import report

    report.report_run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
