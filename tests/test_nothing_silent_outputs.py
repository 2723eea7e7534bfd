"""Issue 22, round three of "nothing silent": held-out torch tensors, a
swept rate the optimizer ignores, optimizer state of the wrong kind,
streams that reuse their buffers, memmaps whose file was replaced, and
outputs that no memory holds. Each case gets the right result or one
clear error naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import functional_sgd as fsgd

X, Y = fsgd.lesson_data(jax.random.key(0))
X_VALID, Y_VALID = fsgd.lesson_data(jax.random.key(1))
START = jnp.array(fsgd.LESSON_START)


def held_out_mse(params, x, y):
    return {"mse": fsgd.linear_mse(params, x, y)}


# Item 14: torch tensors as eval_data, as data takes them.

def test_torch_eval_data_is_taken_as_data_takes_it():
    torch = pytest.importorskip("torch")
    as_torch = (torch.from_numpy(np.array(X_VALID)), torch.from_numpy(np.array(Y_VALID)))
    options = {"lr": 0.1, "steps": 20, "evaluate": held_out_mse, "eval_every": 10}
    got = fsgd.fit(fsgd.linear_mse, START, (X, Y), eval_data=as_torch, **options)
    want = fsgd.fit(fsgd.linear_mse, START, (X, Y), eval_data=(X_VALID, Y_VALID), **options)
    assert_trees_close(got.evals, want.evals, rtol=0, atol=0)  # the same program on the same bits


def test_torch_eval_data_in_lr_sweep():
    torch = pytest.importorskip("torch")
    as_torch = (torch.from_numpy(np.array(X_VALID)), torch.from_numpy(np.array(Y_VALID)))
    options = {"lrs": jnp.array([0.01, 0.1]), "steps": 20, "eval_every": 10}
    got = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), eval_data=as_torch, **options)
    want = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), eval_data=(X_VALID, Y_VALID),
                         **options)
    assert_trees_close(got.evals, want.evals, rtol=0, atol=0)


def test_torch_eval_data_on_another_device_or_dtype_is_refused_by_name():
    torch = pytest.importorskip("torch")
    half = (torch.zeros(4, 2, dtype=torch.bfloat16), torch.zeros(4))
    with pytest.raises(TypeError, match=r"eval_data\[0\] is a torch tensor of dtype "
                                        r"torch.bfloat16"):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5, evaluate=held_out_mse,
                 eval_data=half)
