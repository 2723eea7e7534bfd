"""bench/investigations/one_pass.py runs (tiny shapes, one round: a smoke run, not a
timing), and the pieces of the GPU check that report on one read a step and beside it."""

import re
import tarfile

from bench.investigations import one_pass


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
