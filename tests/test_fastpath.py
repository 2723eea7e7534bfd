"""The sufficient-statistics fast path against the plain loop it replaces.

Tolerances, and why:
* float64: the fast path computes the same quadratic in another order
  (moments about the least-squares centre instead of residuals each step),
  so the two differ by rounding only, ~1e-15 relative measured; the bound is
  1e-10 relative.
* float32: neither path is exact, so both are measured against a float64
  run of the plain loop; the fast path must be at least as close as the
  plain float32 loop is (plus one float32 ulp of slack).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd import speed
from functional_sgd.speed import _moments as _fastpath
from helpers import assert_trees_close, count_compilations, max_relative_error

STEPS = 120


def regression(n, d, dtype, k=None, seed=0):
    """``y = x @ w + U(0, 1)`` with ``x ~ U(-1, 1)``: a fit that ends well above zero
    loss next to ``|y|²``, the case where naive moments cancel."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d))
    x[:, -1] = 1.0  # an intercept, as in the lesson
    w = rng.normal(size=(d,) if k is None else (d, k))
    noise = rng.uniform(0, 1, (n,) if k is None else (n, k))
    return x.astype(dtype), (x @ w + noise + 3.0).astype(dtype)


def both_paths(x, y, params, run=fsgd.Run(), **kwargs):
    """The fit with exact moments and without (``run``'s other fields kept)."""
    kwargs = {"lr": 0.2, "steps": STEPS, **kwargs}
    fast = fsgd.fit(fsgd.linear_mse, params, (x, y), run=dataclasses.replace(
        run, speed=fsgd.speed.SpeedPlan(exact_moments=True)), **kwargs)
    plain = fsgd.fit(fsgd.linear_mse, params, (x, y), run=dataclasses.replace(
        run, speed=fsgd.speed.SpeedPlan(exact_moments=False)), **kwargs)
    return fast, plain


@pytest.mark.parametrize("shape", [(100, 2, None), (3000, 7, None), (500, 4, 3)])
def test_float64_agrees_with_the_plain_loop_to_1e_10(x64, shape):
    n, d, k = shape
    x, y = regression(n, d, np.float64, k)
    start = np.zeros((d,) if k is None else (d, k))
    fast, plain = both_paths(x, y, start)
    assert fast.params.dtype == jnp.float64
    assert max_relative_error(fast.params, plain.params) <= 1e-10
    assert max_relative_error(fast.losses, plain.losses) <= 1e-10
    assert float(plain.losses[-1]) < 0.1 * float(plain.losses[0])  # it really trained


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_any_optax_optimizer_agrees_in_float64(x64, optimizer):
    optax = pytest.importorskip("optax")
    x, y = regression(300, 3, np.float64)
    opt = optax.sgd(0.1, momentum=0.9) if optimizer == "momentum" else optax.adam(0.05)
    # optax's adam adds Python floats to int32 step counts, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        fast, plain = both_paths(x, y, np.zeros(3), lr=None, optimizer=opt)
    assert max_relative_error(fast.params, plain.params) <= 1e-10
    assert max_relative_error(fast.losses, plain.losses) <= 1e-10


def test_float32_is_as_close_to_float64_as_the_plain_loop():
    """At n = 2e5 naive float32 moments are off by ~1e-4; these must not be."""
    x, y = regression(200_000, 3, np.float32, seed=1)
    start = np.zeros(3, np.float32)
    fast, plain = both_paths(x, y, start, run=fsgd.Run(check_finite=False))
    with jax.enable_x64(True):
        exact = fsgd.fit(fsgd.linear_mse, start.astype(np.float64),
                         (x.astype(np.float64), y.astype(np.float64)), lr=0.2, steps=STEPS,
                         run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False)))
    assert fast.losses.dtype == jnp.float32
    ulp = float(np.finfo(np.float32).eps)
    for got, want in [(fast.losses, plain.losses), (fast.params, plain.params)]:
        truth = exact.losses if got is fast.losses else exact.params
        assert max_relative_error(got, truth) <= max_relative_error(want, truth) + ulp


def test_stop_rules_trajectory_and_continuation_work_on_the_fast_path(x64):
    x, y = regression(200, 2, np.float64)
    kwargs = dict(stop=fsgd.Stop(tol=float(fsgd.linear_mse(np.linalg.lstsq(x, y)[0], x, y)) * 1.01), run=fsgd.Run(record_params=True))
    fast, plain = both_paths(x, y, np.zeros(2), steps=500, **kwargs)
    assert 10 < int(fast.steps_run) == int(plain.steps_run) < 500
    assert max_relative_error(fast.trajectory, plain.trajectory) <= 1e-10
    first = fsgd.fit(fsgd.linear_mse, np.zeros(2), (x, y), lr=0.2, steps=60, run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True)))
    rest = fsgd.fit(fsgd.linear_mse, first.params, (x, y), lr=0.2, steps=60,
                    run=fsgd.Run(start_step=first.step, speed=fsgd.speed.SpeedPlan(exact_moments=True)))
    whole = fsgd.fit(fsgd.linear_mse, np.zeros(2), (x, y), lr=0.2, steps=120, run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True)))
    assert_trees_close(rest.params, whole.params)  # same bits: the centre ignores params
    chunked = fsgd.fit(fsgd.linear_mse, np.zeros(2), (x, y), lr=0.2, steps=120,
                       run=fsgd.Run(chunk_size=50, speed=fsgd.speed.SpeedPlan(exact_moments=True)))
    assert_trees_close(chunked.losses, whole.losses)


def test_divergence_is_reported_on_the_fast_path():
    x, y = regression(100, 2, np.float32)
    fast, plain = both_paths(x, y, np.zeros(2, np.float32), lr=5.0, steps=300)
    assert 0 < int(fast.diverged_at) < 300
    assert abs(int(fast.diverged_at) - int(plain.diverged_at)) <= 1


def test_vmap_over_learning_rates_and_no_recompile():
    x, y = regression(500, 2, np.float32)
    start = np.zeros(2, np.float32)
    run = lambda lr: fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=STEPS,
                              run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True))).losses
    lrs = jnp.array([0.05, 0.2])
    swept = jax.vmap(run)(lrs)
    assert_trees_close(swept[1], run(0.2), rtol=1e-6)
    with count_compilations() as compiled:
        run(0.1).block_until_ready()
    assert compiled[0] == 0


def test_auto_uses_the_fast_path_only_where_it_applies_and_pays():
    x, y = regression(100, 2, np.float32)
    start = np.zeros(2, np.float32)

    def chosen(steps, full_batch=True, exact_mse=True, params=start, data=(x, y)):
        return speed.decide(None, speed.Problem(exact_mse=exact_mse, params=params, data=data,
                                                full_batch=full_batch,
                                                steps=steps)).exact_moments

    assert chosen(1000)
    assert not chosen(100)  # tiny
    assert not chosen(1000, full_batch=False)
    assert not chosen(100, exact_mse=False)
    wide_x, wide_y = regression(50, 300, np.float32)
    assert not chosen(100, params=np.zeros(300, np.float32), data=(wide_x, wide_y))  # d > 2 * steps
    assert speed.decide(speed.SpeedPlan(exact_moments=False), speed.Problem(
        exact_mse=True, params=start, data=(x, y), full_batch=True,
        steps=1000)).exact_moments is False  # the plan switches it off


def test_auto_in_fit_runs_the_fast_path_where_chosen():
    x, y = regression(1000, 2, np.float32)
    start = np.zeros(2, np.float32)
    runs = {mode: fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.2, steps=STEPS,
                           run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=mode))).losses for mode in ("auto", True, False)}
    assert np.array_equal(runs["auto"], runs[True])
    assert not np.array_equal(runs[True], runs[False])  # rounding tells the paths apart


def test_float32_data_accumulates_in_float64_under_x64(x64):
    x, y = regression(50_000, 3, np.float32, seed=2)
    stats = _fastpath.moments(jnp.asarray(x), jnp.asarray(y))
    assert stats.gram.dtype == jnp.float64
    exact = x.astype(np.float64).T @ x.astype(np.float64)
    assert max_relative_error(stats.gram, exact) <= 1e-12


def test_moments_give_the_loss_exactly_where_naive_moments_cancel():
    """Naive ``(aᵀGa - 2aᵀXᵀy + yᵀy)/n`` in float32 against the centred quadratic."""
    x, y = regression(200_000, 2, np.float32, seed=3)
    a = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64))[0]
    truth = np.mean((x.astype(np.float64) @ a - y) ** 2)
    centred = float(_fastpath.quadratic_mse(jnp.asarray(a, jnp.float32),
                                            _fastpath.moments(jnp.asarray(x), jnp.asarray(y))))
    assert abs(centred - truth) / truth <= 1e-5  # float32 rounding of a, x and y
    xj, yj, aj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(a, jnp.float32)
    naive = float((aj @ (xj.T @ xj) @ aj - 2 * aj @ (xj.T @ yj) + yj @ yj) / len(y))
    assert abs(naive - truth) / truth > 10 * abs(centred - truth) / truth


@pytest.mark.parametrize("kwargs, match", [
    (lambda: {"run": fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments="yes"))},
     r'exact_moments must be "auto", True or False'),
    (lambda: {"run": fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True)), "batch_size": 10, "key": jax.random.key(0)}, "full-batch only"),
    (lambda: {"run": fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True)), "loss": lambda a, x, y: fsgd.linear_mse(a, x, y)},
     "not functional_sgd.linear_mse"),
])
def test_bad_fast_path_requests_say_why(kwargs, match):
    x, y = regression(100, 2, np.float32)
    with pytest.raises(ValueError, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        loss = kwargs.pop("loss", fsgd.linear_mse)
        fsgd.fit(loss, np.zeros(2, np.float32), (x, y), lr=0.1, steps=10, **kwargs)
