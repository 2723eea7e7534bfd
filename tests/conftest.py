"""Strict JAX for every test: silent broadcasting or dtype promotion fails."""

import os

import jax
import pytest

# The command line's compile cache stays off in tests (in-process runs of
# main() and the subprocesses they start), so no test writes to the user's
# cache folder; tests/test_compile_cache.py turns it on in a temporary one.
os.environ["FUNCTIONAL_SGD_COMPILE_CACHE"] = "0"

# Full float32 matmul precision on every backend, here and in the subprocesses
# tests start: on GPU/TPU JAX's default takes TF32 or bfloat16 passes (~1e-3
# relative), which the float32 tolerances of these tests do not allow for;
# XLA:CPU always computes float32 matmuls in full, so on CPU nothing changes.
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def standard_promotion():
    """Standard dtype promotion for one test: optax's adam (``decay ** count``)
    and flax's layers mix Python floats and float32 with int32 counters, which
    strict promotion refuses: theirs to fix, not ours."""
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def x64():
    """Float64 for one test, without flipping the process-wide flag."""
    with jax.enable_x64(True):
        yield
