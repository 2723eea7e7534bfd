"""bench/evaluate_overhead.py runs (its small size, once: a smoke run, not a timing)."""

import re

from bench import evaluate_overhead


def test_the_evaluate_overhead_benchmark_runs(capsys):
    ratios = evaluate_overhead.main(["--quick"])
    printed = capsys.readouterr().out
    for method in ("fit", "fit(evaluate=...)", "fit(evaluate=bias)", "evaluations alone, warm",
                   "evaluations alone, each after an epoch's traffic",
                   "an epoch's traffic alone, x10", "on_chunk callback"):
        assert f"| {method} |" in printed
    assert re.search(r"fit\(evaluate=\.\.\.\) - fit\(evaluate=bias\): [-+][\d.]+ ms = "
                     r"(-?[\d.]+|nan)x the own work \(target <= 1\.10: (met|MISSED)\)", printed)
    assert re.search(r"on_chunk callback / fit\(evaluate=\.\.\.\): [\d.]+x", printed)
    assert ratios["callback_over_in_loop"] > 0
