"""bench/investigations/own_model.py runs (its small size, once: a smoke run, not a timing)."""

import re

import jax

from bench.investigations import own_model


def test_the_own_model_benchmark_runs(capsys):
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes float and int32
        own_model.main(["--quick"])
    printed = capsys.readouterr().out
    assert "| fit |" in printed and "| eqx.filter_jit loop |" in printed
    assert float(re.search(r"fit / hand-written scan: ([\d.]+)x", printed).group(1)) > 0
