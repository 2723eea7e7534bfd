"""bench/investigations/evaluate_overhead.py runs (its small size, once: a smoke run, not a
timing), and its hand-written run is fit's run, or the bench says so."""

import re

import jax
import pytest

import functional_sgd as fsgd
from bench.investigations import evaluate_overhead


def test_the_evaluate_overhead_benchmark_runs(capsys):
    ratios = evaluate_overhead.main(["--quick"])
    printed = capsys.readouterr().out
    for method in ("fit", "fit(evaluate=...)", "by hand", "by hand + evaluation",
                   "fit(evaluate=bias)", "evaluations alone, warm",
                   "evaluations alone, each after an epoch's traffic",
                   "an epoch's traffic alone, x10", "on_chunk callback"):
        assert f"| {method} |" in printed
    assert re.search(r"by hand \+ evaluation - by hand: [-+][\d.]+ ms", printed)
    assert re.search(r"fit\(evaluate=\.\.\.\) - fit: [-+][\d.]+ ms = (-?[\d.]+|nan)x the own "
                     r"work \(target <= 1\.10: (met|MISSED|too small to tell at this size)\)",
                     printed)
    assert re.search(r"on_chunk callback / fit\(evaluate=\.\.\.\): [\d.]+x", printed)
    assert ratios["callback_over_in_loop"] > 0


@pytest.fixture(scope="module")
def small_run():
    size = evaluate_overhead.SIZES["quick"]
    params, train, valid = evaluate_overhead.problem(size["n"], size["valid"], size["d"])
    key = jax.random.key(3)
    steps = size["n"] // size["batch"] * size["epochs"]
    result = evaluate_overhead.fsgd.fit(
        evaluate_overhead.loss, params, train, lr=0.1, steps=steps, batch_size=size["batch"],
        key=key, rows=fsgd.Shuffled(), evaluation=fsgd.Evaluation(evaluate_overhead.scores, valid))

    def by_hand(**changed):
        arguments = {"batch_size": size["batch"], "epochs": size["epochs"], "lr": 0.1,
                     "evaluate": True} | changed
        return evaluate_overhead.by_hand(params, train, valid, key, **arguments)

    return result, by_hand


def test_the_hand_written_run_is_fits_run_bit_for_bit(small_run):
    result, by_hand = small_run
    evaluate_overhead.check_same_run(result, by_hand())


@pytest.mark.parametrize("changed", [{"lr": 0.1001}, {"epochs": 3}])
def test_a_different_hand_written_run_is_refused(small_run, changed):
    result, by_hand = small_run
    with pytest.raises(AssertionError, match="bit for bit"):
        evaluate_overhead.check_same_run(result, by_hand(**changed))


def test_different_evaluations_are_refused(small_run):
    result, by_hand = small_run
    params, losses, evals = by_hand()
    moved = {name: value + 1e-3 for name, value in evals.items()}
    with pytest.raises(AssertionError, match="bit for bit"):
        evaluate_overhead.check_same_run(result, (params, losses, moved))
