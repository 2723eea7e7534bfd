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


# Item 4: lr_sweep with an optimizer whose rate is a schedule.

def test_lr_sweep_refuses_a_scheduled_rate_it_cannot_set():
    schedule = optax.linear_schedule(0.1, 0.01, 50)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    with pytest.raises(ValueError, match=r"learning_rate is a schedule.*scale_by_schedule"):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([1e-3, 0.1, 1.5]),
                      steps=50, optimizer=optimizer)


def test_lr_sweep_sweeps_the_peak_of_a_schedule_written_as_its_message_says():
    shape = optax.linear_schedule(1.0, 0.1, 50)  # the schedule's shape, peak 1
    optimizer = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(optax.sgd(learning_rate),
                                          optax.scale_by_schedule(shape)))(learning_rate=0.1)
    sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([1e-3, 0.1, 1.5]),
                          steps=50, optimizer=optimizer)
    final = np.asarray(sweep.final_loss)
    assert len(set(final.tolist())) == 3  # every rate trains its own run
    manual = fsgd.fit(fsgd.linear_mse, START, (X, Y), steps=50, optimizer=optax.chain(
        optax.sgd(0.1), optax.scale_by_schedule(shape)))
    # The sweep's run at 0.1 is that run: the same updates, vmapped (float32, a few ulp).
    np.testing.assert_allclose(sweep.losses[1], manual.losses, rtol=1e-5)
