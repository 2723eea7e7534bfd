"""``python -m bench.gpu_check``: what a session on a GPU machine runs, in one command.

From the repository root, on one GPU (it runs on a CPU-only machine too, at
``--size smoke``)::

    PYTHONPATH=. python3 -m bench.gpu_check            # < 8 minutes on one H200
    PYTHONPATH=. python3 -m bench.gpu_check --size smoke

Four stages, each with its own time budget, each printed with its outcome:

1. **tests**: the test files that touch devices (multi-device subprocesses,
   warm calls, sweeps under ``jax.vmap``, resumed runs, agreement with the
   torch reference, the benchmark tooling), under pytest with
   ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (workers share the GPU),
   ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` (a resumed run has the bits
   of an uninterrupted one only when XLA:GPU compiles deterministically) and
   full float32 matmul precision (``tests/conftest.py`` sets it), with
   pytest-xdist workers when it is installed;
2. **table**: ``python -m bench.run --devices <the accelerator> --size short``,
   every peer, written to ``--out`` (``bench/results``), at full float32
   precision (JAX ``highest``, torch TF32 off) with each result checked
   against float64;
3. **ratios** (issue 24's targets): shuffled epochs against independent
   draws (``replace=False`` / ``replace=True`` at 1e5 x 10, 1,000 steps of
   64: at most 1.25), the lesson's ``fit`` against a hand-written
   ``jax.jit(lax.scan)`` (at most 1.1), and the lesson on the CPU device of
   this process against a CPU-only process (at most 1.25), and one read a
   step (the row kernel against the plain step at 1e6 x 1000: at most
   1 / 1.7, with its bandwidth beside a compiled read of ``x``), printed with
   their targets and written to ``<out>/gpu_check.md`` (``bench/gpu_ratios.py``;
   reported, not enforced: they are goals of issue 24); with them, where the
   shuffle's and the small step's time goes (``<out>/gpu_diagnosis.md``: each
   side per call and per step) and the optimized HLO of the loops they ran
   (``<out>/gpu_hlo.tar.gz``), so that a session without a GPU can read why a
   ratio was missed;
4. a summary line per stage; the exit status is 1 if a stage failed.

It writes six files or fewer into ``--out``, none in a subfolder (the five
above and ``gpu_check.log``, every stage's whole output; the console shows
the end of each): where a machine hands back only what a command leaves in
one folder (``$OUT``), pass that folder.
"""

import argparse
import importlib.util
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
TEST_FILES = (  # the files issue 24 found failing on a GPU, and the agreement checks
    "test_parallel.py", "test_multiprocess.py", "test_checkpoint.py", "test_fit.py",
    "test_front_end.py", "test_warm_calls.py", "test_lr_find.py", "test_evaluate.py",
    "test_layout.py", "test_model_leaves.py", "test_blocks.py", "test_own_model.py",
    "test_fastpath.py", "test_tuning.py", "test_agreement.py", "test_bench.py",
    "test_row_kernel.py",
    "test_cli.py::test_lr_sweep_holdout_prints_each_rates_held_out_loss")
SMOKE_TEST_FILES = ("test_parallel.py", "test_front_end.py", "test_warm_calls.py")
BUDGETS_S = {  # seconds per stage: on one H200 the three fit in 8 minutes with startup
    "full": {"tests": 220, "table": 150, "ratios": 90},
    "short": {"tests": 220, "table": 150, "ratios": 90},
    "smoke": {"tests": 900, "table": 600, "ratios": 300},  # a busy 2-core CPU machine
}
TABLE_SHARE = 0.7
"""Share of the table's budget its cases may use (past it, the cases left
are listed as skipped); the rest is for a case begun just before it. The
table is rewritten after each case, so a stage cut short keeps what it measured."""


def child_env(**more):
    """This environment, with the checkout first on ``PYTHONPATH``, GPU memory
    allocated as needed (several processes share one GPU) and ``more``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **more}
    return env


def with_flag(flags, flag):
    """``flags`` (an ``XLA_FLAGS`` value) with ``flag`` added once.

    >>> with_flag("", "--a=1"), with_flag("--b=2 --a=1", "--a=1")
    ('--a=1', '--b=2 --a=1')
    """
    return flags if flag in flags.split() else " ".join(filter(None, [flags, flag]))


HLO_MODULES = r".*(_loop_flat|train).*"
"""The compiled programs whose optimized HLO the ratios stage keeps: ``fit``'s
loop (``_loop_flat``) and the hand-written scan (``train``)."""


def hlo_dump_flags(directory):
    """``XLA_FLAGS`` words that dump :data:`HLO_MODULES`' HLO as text into ``directory``."""
    return [f"--xla_dump_to={directory}", "--xla_dump_hlo_as_text",
            f"--xla_dump_hlo_module_re={HLO_MODULES}"]


def bundle_hlo(directory, archive):
    """The optimized HLO files of :data:`HLO_MODULES` in ``directory`` packed
    into ``archive`` (a ``.tar.gz``); how many."""
    kept = sorted(path for path in pathlib.Path(directory).glob("*after_optimizations.txt")
                  if re.fullmatch(HLO_MODULES, path.name))
    if kept:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as bundle:
            for path in kept:
                bundle.add(path, arcname=path.name)
    return len(kept)


LOG_NAME = "gpu_check.log"
"""Every stage's whole output, in ``--out``: the console shows each stage's
last :data:`TAIL_CHARS` characters (a device tool may hand back only the
last few thousand of a command's output, and the log as a file)."""
TAIL_CHARS = 3000
TEST_TIMEOUT_S = 150
"""Seconds one test may take in the tests stage (with pytest-timeout and
pytest-xdist), so a hung test fails alone instead of spending the stage's
budget."""


def end_group(child):
    """Kills ``child``'s process group (whatever is left of it) and reaps ``child``."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group has ended
        pass
    child.wait()


def run_stage(name, command, budget_s, env, log_path):
    """Runs ``command`` with a time limit, its output appended to
    ``log_path``, and prints the output's end; ``(name, ok, seconds, why)``.
    The command runs in a process group of its own, which is killed when it
    ends, past its budget, or when this process is stopped: nothing it
    started (pytest-xdist workers, compile workers) runs on into the next
    stage's timings, or outlives the check."""
    heading = f"\n== {name}: {shlex.join(command)}  (budget {budget_s} s)"
    print(heading, flush=True)
    began = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(heading.encode() + b"\n")
        log.flush()
        start = log.tell()
        try:
            child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            log.write(f"could not start: {error}\n".encode())
            print(f"could not start: {error}", flush=True)
            return name, False, time.monotonic() - began, f"could not start: {error}"
        try:
            code = child.wait(timeout=budget_s)
            ok, why = code == 0, f"exit {code}"
        except subprocess.TimeoutExpired:
            ok, why = False, f"past its budget of {budget_s} s"
        finally:
            end_group(child)
    with open(log_path, "rb") as log:
        log.seek(start)
        output = log.read().decode(errors="replace")  # a kill may cut a character short
    print(("..." if len(output) > TAIL_CHARS else "") + output[-TAIL_CHARS:], flush=True)
    return name, ok, time.monotonic() - began, why


def xdist_workers():
    """pytest-xdist workers to use: a few (they share one GPU), 0 without xdist."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def pytest_command(size):
    files = SMOKE_TEST_FILES if size == "smoke" else TEST_FILES
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *[str(pathlib.Path("tests") / f) for f in files]]
    workers = xdist_workers()
    if workers:
        command += ["-n", str(workers)]
    if workers and importlib.util.find_spec("pytest_timeout") is not None:
        # The thread method ends a test stuck in native code too (a compile,
        # a GPU call), with its worker; xdist reports it and starts another.
        command += [f"--timeout={TEST_TIMEOUT_S}", "--timeout-method=thread"]
    return command


def default_platform():
    """JAX's default platform (``gpu``, ``tpu``, or ``cpu`` on a CPU-only
    machine), asked in a child so this process holds no GPU memory."""
    done = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                          env=child_env(), capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("full", "short", "smoke"), default="short",
                        help="the table's size (default short; full may not fit 8 minutes)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: "
                        "tests, table, ratios")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the stages run from the repository root
    skip = set(filter(None, args.skip.split(",")))
    budgets = BUDGETS_S[args.size]
    env = child_env(XLA_FLAGS=with_flag(os.environ.get("XLA_FLAGS", ""), DETERMINISTIC),
                    JAX_DEFAULT_MATMUL_PRECISION="highest")
    began = time.monotonic()
    outcomes = []
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / LOG_NAME
    log_path.write_text(shlex.join(["python", "-m", "bench.gpu_check",
                                     *(sys.argv[1:] if argv is None else argv)]) + "\n")
    if "tests" not in skip:
        outcomes.append(run_stage("tests", pytest_command(args.size), budgets["tests"], env,
                                  log_path))
    if "table" not in skip:
        platform = default_platform()
        command = [sys.executable, "-m", "bench.run", "--devices", platform, "--size",
                   args.size, "--out", str(args.out), "--budget", str(int(TABLE_SHARE * budgets["table"])),
                   "--note", f"Written by `python -m bench.gpu_check --size {args.size}`."]
        outcomes.append(run_stage("table", command, budgets["table"], child_env(), log_path))
    if "ratios" not in skip:
        command = [sys.executable, "-m", "bench.gpu_ratios", "--size", args.size,
                   "--out", str(args.out / "gpu_check.md"),
                   "--diagnosis", str(args.out / "gpu_diagnosis.md")]
        with tempfile.TemporaryDirectory() as dump:
            flags = os.environ.get("XLA_FLAGS", "")
            for flag in hlo_dump_flags(dump):
                flags = with_flag(flags, flag)
            outcomes.append(run_stage("ratios", command, budgets["ratios"],
                                      child_env(XLA_FLAGS=flags), log_path))
            print(f"kept the optimized HLO of {bundle_hlo(dump, args.out / 'gpu_hlo.tar.gz')} "
                  "compiled loops", flush=True)
    summary = "\n".join([f"\n== summary ({time.monotonic() - began:.0f} s in all)"] + [
        f"{name:7s} {'ok' if ok else 'FAILED'}  {seconds:6.0f} s  {why}"
        for name, ok, seconds, why in outcomes])
    print(summary)
    with open(log_path, "a") as log:
        log.write(summary + "\n")
    return 0 if all(ok for _, ok, _, _ in outcomes) else 1


def stop_on_sigterm():
    """Makes a SIGTERM (``timeout``, a device tool's time limit) raise
    ``SystemExit``, so the running stage's process group is killed on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
