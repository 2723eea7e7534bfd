"""Strict JAX for every test: silent broadcasting or dtype promotion fails."""

import jax
import pytest


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Float64 for one test, without flipping the process-wide flag."""
    with jax.enable_x64(True):
        yield
