"""bench/investigations/one_pass.py runs (tiny shapes, one round: a smoke run, not a
timing), and the pieces of the GPU check that report on one read a step and beside it."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from bench.investigations import one_pass

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_one_pass_benchmark_prints_its_bandwidths(capsys, monkeypatch):
    monkeypatch.setattr(one_pass, "STEPS", 3)
    one_pass.main(["--repeats", "1", "--loss", "mse", "bce", "--blocks", "65536",
                   "--shapes", "400x300"])  # 300 columns: kept row-major
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mse")
            or line.startswith("| bce")]
    methods = [row.split(" | ")[2] for row in rows]
    assert methods == ["read x (x @ v)", "plain (two reads)", "one pass, row kernel",
                       "one pass, 0.0625 MiB blocks", "fit as users call it"] * 2
    for row in rows:  # GB/s, its share of the read bandwidth, the ratio to the plain step
        assert re.search(r"\| [\d.]+ GB/s \| \d+% \| [\d.]+x \|$", row), row
    assert all(" GB/s | 100% | " in row for row in rows[::5])  # the read is the reference


def test_the_one_pass_ceiling_prints_each_product_by_block_size(capsys, monkeypatch):
    from bench.investigations import one_pass_ceiling

    monkeypatch.setattr(one_pass_ceiling, "ROWS", (8, 16))
    monkeypatch.setattr(one_pass_ceiling, "READ_BYTES", 2e6)
    one_pass_ceiling.main(["--rounds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines()
            if re.match(r"\| [\d.]+ MiB \|", line)]
    assert [row.split(" | ")[1] for row in rows] == ["x a", "r x", "x a, then r x"] * 2
    for row in rows:  # GB/s read, then the busy threads' CPU ticks (or - if none ticked)
        assert re.search(r"\| [\d.]+ \| [\d, ]+ \|$|\| [\d.]+ \| - \|$", row), row


def test_the_gpu_checks_one_read_row_says_why_it_failed_and_the_table_goes_on(monkeypatch):
    from bench import gpu_ratios

    def broken(size):
        raise ValueError("the kernel did not lower")

    monkeypatch.setattr(gpu_ratios, "one_read_runs", broken)
    row = gpu_ratios.one_read_row("smoke")
    assert row == (None, None, "failed: ValueError: the kernel did not lower")
    table = gpu_ratios.table({"one read": row, "shuffle": (1.0, 1.0, "both ways")})
    assert "| one read | failed: ValueError: the kernel did not lower | - | - | - |" in table
    assert "| shuffle | both ways | 1.00 |" in table


def test_the_gpu_checks_diagnosis_splits_each_side_per_call_and_per_step(monkeypatch):
    """Timed at two lengths, a side that costs ``c + steps * s`` gives back
    ``c`` and ``s``: the split a session without a GPU reads a missed ratio by."""
    from bench import gpu_ratios

    costs = {"fit": (30e-6, 2e-6), "scan": (10e-6, 1e-6)}  # per call, per step (s)
    monkeypatch.setattr(gpu_ratios, "split_runs", lambda name, steps: {
        side: steps for side in costs})
    monkeypatch.setattr(gpu_ratios, "interleaved_min", lambda runs, rounds: {
        side: costs[side][0] + steps * costs[side][1] for side, steps in runs.items()})
    split = gpu_ratios.split_per_call_and_step("small step", rounds=5)
    for side, (call, step) in costs.items():
        assert abs(split[side][0] - call) < 1e-12 and abs(split[side][1] - step) < 1e-15
    rows = gpu_ratios.diagnosis("smoke").splitlines()
    assert "| small step | fit | 30.0 us | 2.000 us | 100 and 1,000 |" in rows
    assert "| shuffle | scan | 10.0 us | 1.000 us | 1,000 and 4,000 |" in rows


def test_the_gpu_check_keeps_the_optimized_hlo_of_the_loops_only(tmp_path):
    from bench import gpu_check

    names = ["module_0001.jit__loop_flat.gpu_after_optimizations.txt",
             "module_0002.jit_train.cpu_after_optimizations.txt",
             "module_0001.jit__loop_flat.before_optimizations.txt",
             "module_0001.jit__loop_flat.gpu_after_optimizations-buffer-assignment.txt",
             "module_0003.jit_read.gpu_after_optimizations.txt"]
    for name in names:
        (tmp_path / name).write_text("HloModule")
    archive = tmp_path / "out" / "gpu_hlo.tar.gz"
    assert gpu_check.bundle_hlo(tmp_path, archive) == 2
    with tarfile.open(archive) as bundle:
        assert sorted(bundle.getnames()) == sorted(names[:2])
    assert gpu_check.bundle_hlo(tmp_path / "out", tmp_path / "none.tar.gz") == 0
    assert not (tmp_path / "none.tar.gz").exists()
    flags = gpu_check.hlo_dump_flags(tmp_path)
    assert flags[0] == f"--xla_dump_to={tmp_path}" and all(" " not in flag for flag in flags)


def process_ended(pid):
    """Whether process ``pid`` has ended (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(condition, what, limit_s=30):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {limit_s} s"
        time.sleep(0.05)


def starts_a_sleeper(pid_file, then="exit"):
    """Python code that starts a process sleeping 120 s, writes its pid into
    ``pid_file``, and then exits (``then="exit"``) or sleeps too."""
    return ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r} + '.tmp', 'w').write(str(child.pid)); "
            f"import os; os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); "
            + ("print('waiting', flush=True); time.sleep(120)" if then == "sleep" else ""))


needs_proc = pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(),
                                reason="needs /proc to see whether a process has ended")


def test_a_gpu_check_stage_logs_its_output_and_prints_its_end(tmp_path, capsys):
    from bench import gpu_check

    log = tmp_path / "gpu_check.log"
    code = "import sys; print('x' * 5000); sys.stdout.buffer.write(b'\\xff'); print('the end')"
    name, ok, _, why = gpu_check.run_stage("quick", [sys.executable, "-c", code], 60,
                                           dict(os.environ), log)
    assert (name, ok, why) == ("quick", True, "exit 0")
    printed = capsys.readouterr().out
    assert "\ufffdthe end" in printed  # a byte that is not UTF-8 read as a replacement
    assert "x" * 5000 not in printed  # the end only: 3,000 characters
    assert "x" * 5000 in log.read_text(errors="replace")
    _, ok, _, why = gpu_check.run_stage("missing", ["/no/such/program"], 60, dict(os.environ),
                                        log)
    assert not ok and why.startswith("could not start: ")
    assert "== quick:" in log.read_text(errors="replace")  # appended, not rewritten


@needs_proc
def test_a_gpu_check_stage_ends_what_it_started_when_it_ends(tmp_path):
    """Past its budget, or done: nothing the stage started runs on into the
    next stage's timings (pytest-xdist workers, say)."""
    from bench import gpu_check

    log = tmp_path / "gpu_check.log"
    _, ok, _, why = gpu_check.run_stage(
        "hung", [sys.executable, "-c", "import time; time.sleep(120)"], 2, dict(os.environ), log)
    assert not ok and why == "past its budget of 2 s"
    started = tmp_path / "left.pid"
    _, ok, _, _ = gpu_check.run_stage(
        "done", [sys.executable, "-c", starts_a_sleeper(started)], 60, dict(os.environ), log)
    assert ok and started.exists()
    left = int(started.read_text())
    wait_for(lambda: process_ended(left), "the end of the process the stage left")


@needs_proc
def test_a_stopped_gpu_check_ends_its_running_stage(tmp_path):
    """A SIGTERM to the check (``timeout``, a device tool's limit) ends the
    stage it is running, and what that stage started."""
    started = tmp_path / "stage.pid"
    check = ("import os, sys; from bench import gpu_check; gpu_check.stop_on_sigterm(); "
             f"gpu_check.run_stage('stage', [sys.executable, '-c', {starts_a_sleeper(started, 'sleep')!r}], "
             f"60, dict(os.environ), {str(tmp_path / 'gpu_check.log')!r})")
    checker = subprocess.Popen([sys.executable, "-c", check], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(started.exists, "the stage's start")
        checker.send_signal(signal.SIGTERM)
        assert checker.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        checker.kill()
        checker.wait()
    sleeper = int(started.read_text())
    wait_for(lambda: process_ended(sleeper), "the end of the stage's process")
