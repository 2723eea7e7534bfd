"""bench/investigations/one_pass.py runs (tiny shapes, one round: a smoke run, not a timing)."""

import re

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
