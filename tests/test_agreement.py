"""JAX ``fit`` against the torch ``reference``: same data, same schedule.

Tolerances, and why:
* float64: both engines do the same arithmetic in a different order (XLA's
  fused reductions against torch's), so they differ by rounding only:
  a few ulps a step, growing slowly over 100+ steps. 1e-12 relative leaves
  three orders of magnitude of headroom over the ~1e-15 measured.
* float32: same reasoning at float32's epsilon (1.2e-7); over 100+ steps
  the lesson's parameters (size ~3) and losses (size <= ~6) move by a few
  ulps, ~1e-6. The bound is 1e-5 absolute.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from helpers import assert_trees_close, max_relative_error

torch = pytest.importorskip("torch")
import reference  # noqa: E402  (needs torch)

STEPS = 150
LR = 0.1
MODES = {"batch": None, "mini-batch": 10, "stochastic": 1}


def lesson_problem(dtype):
    x, y = fsgd.lesson_data(jax.random.key(42), n=100, dtype=dtype)
    return np.asarray(x), np.asarray(y), np.asarray(fsgd.LESSON_START, dtype)


def schedule(batch_size, steps=STEPS):
    if batch_size is None:
        return None
    return np.asarray(fsgd.sample_indices(jax.random.key(7), 100, steps, batch_size))


def schedule_of(indices):
    """``indices`` as ``fit``'s rows: ``None`` (full batch) stays ``None``."""
    return None if indices is None else fsgd.Schedule(indices)


def run_both(dtype, batch_size, **fit_kwargs):
    x, y, start = lesson_problem(dtype)
    indices = schedule(batch_size)
    ours = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS, rows=schedule_of(indices),
                    **fit_kwargs)
    theirs = reference.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS,
                           indices=indices)
    return ours, theirs


@pytest.mark.parametrize("mode", MODES)
def test_float64_agrees_to_1e_12_relative(x64, mode):
    ours, (params, losses) = run_both(np.float64, MODES[mode])
    assert ours.params.dtype == jnp.float64 and params.dtype == np.float64
    assert max_relative_error(ours.params, params) <= 1e-12
    assert max_relative_error(ours.losses, losses) <= 1e-12
    # The run really trained: it is not agreement on a run that went nowhere.
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("mode", MODES)
def test_float32_agrees_to_1e_5_absolute(mode):
    ours, (params, losses) = run_both(np.float32, MODES[mode])
    assert ours.params.dtype == jnp.float32 and params.dtype == np.float32
    assert_trees_close(ours.params, params, atol=1e-5)
    assert_trees_close(ours.losses, losses, atol=1e-5)


def test_keyed_mini_batch_replays_in_the_reference(x64):
    """fit's own draws are sample_indices(key, n, steps, batch_size): replayable."""
    x, y, start = lesson_problem(np.float64)
    key = jax.random.key(3)
    ours = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS, batch_size=5,
                    key=key)
    indices = np.asarray(fsgd.sample_indices(key, 100, STEPS, 5))
    params, losses = reference.fit(fsgd.linear_mse, start, (x, y), lr=LR, indices=indices)
    assert max_relative_error(ours.params, params) <= 1e-12
    assert max_relative_error(ours.losses, losses) <= 1e-12


def test_pytree_params_agree(x64):
    """A dict of params (weight and bias) trains the same in both engines."""
    x, y, _ = lesson_problem(np.float64)
    features = x[:, :1]

    def loss(p, x, y):
        return fsgd.mse(fsgd.linear(p["w"], x) + p["b"], y)

    start = {"b": np.array(0.75), "w": np.array([0.5])}
    ours = fsgd.fit(loss, start, (features, y), lr=LR, steps=STEPS)
    params, losses = reference.fit(loss, start, (features, y), lr=LR, steps=STEPS)
    assert max_relative_error(ours.params, params) <= 1e-12
    assert max_relative_error(ours.losses, losses) <= 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_optax_sgd_equals_the_plain_update(x64, mode):
    optax = pytest.importorskip("optax")
    x, y, start = lesson_problem(np.float64)
    indices = schedule(MODES[mode])
    plain = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS, rows=schedule_of(indices))
    with_optax = fsgd.fit(fsgd.linear_mse, start, (x, y), optimizer=optax.sgd(LR),
                          steps=STEPS, rows=schedule_of(indices))
    # p + (-(lr g)) and p - lr g round identically: the same bits.
    assert_trees_close(with_optax.params, plain.params)
    assert_trees_close(with_optax.losses, plain.losses)


@pytest.mark.parametrize("mode", MODES)
def test_optax_momentum_equals_torch_sgd_momentum(x64, mode):
    optax = pytest.importorskip("optax")
    x, y, start = lesson_problem(np.float64)
    indices = schedule(MODES[mode])
    ours = fsgd.fit(fsgd.linear_mse, start, (x, y), optimizer=optax.sgd(LR, momentum=0.9),
                    steps=STEPS, rows=schedule_of(indices))
    params, losses = reference.fit(
        fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS, indices=indices,
        optimizer=functools.partial(torch.optim.SGD, momentum=0.9))
    assert max_relative_error(ours.params, params) <= 1e-12
    assert max_relative_error(ours.losses, losses) <= 1e-12
    plain = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=STEPS, rows=schedule_of(indices))
    assert not np.allclose(np.asarray(plain.params), params)  # momentum made a difference


def test_reference_does_not_modify_its_inputs():
    x, y, start = lesson_problem(np.float32)
    copies = [a.copy() for a in (x, y, start)]
    tensors = [torch.tensor(a) for a in (x, y, start)]
    reference.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=5)
    reference.fit(fsgd.linear_mse, tensors[2], tuple(tensors[:2]), lr=LR, steps=5)
    for original, copy, tensor in zip((x, y, start), copies, tensors):
        np.testing.assert_array_equal(original, copy)
        np.testing.assert_array_equal(tensor.numpy(), copy)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lr": 0.0, "steps": 3}, ValueError, "lr must be a finite number > 0"),
    ({"lr": 0.1}, TypeError, "steps is required"),
    ({"lr": 0.1, "indices": np.zeros(3, int)}, ValueError, r"indices must have shape"),
])
def test_reference_bad_input(kwargs, error, match):
    x, y, start = lesson_problem(np.float32)
    with pytest.raises(error, match=match):
        reference.fit(fsgd.linear_mse, start, (x, y), **kwargs)

