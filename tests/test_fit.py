"""The fused loop: modes, divergence, continuation, stop rule, trajectory,
composability with jit/vmap, no recompilation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.speed import SpeedPlan
from helpers import KEY, START, X, Y, assert_trees_close, count_compilations, backend_tolerance
from helpers import fit_lesson as fit

MODES = {
    "batch": {},
    "mini-batch": {"batch_size": 10, "key": jax.random.key(1)},
    "epochs": {"batch_size": 10, "key": jax.random.key(1), "rows": fsgd.Shuffled()},
    "stochastic": {"batch_size": 1, "key": jax.random.key(1)},
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_learns_the_line(mode):
    result = fit(steps=300, **MODES[mode])
    assert result.losses.shape == (300,)
    assert int(result.steps_run) == 300 and int(result.step) == 300
    assert int(result.diverged_at) == -1
    assert result.opt_state is None and result.trajectory is None
    # the noise is U(0, 1): the best line is near (3, 2.5) with loss ~1/12
    np.testing.assert_allclose(result.params, [3.0, 2.5], atol=0.35)


def test_losses_are_the_batch_loss_before_each_update():
    result = fit(steps=5, batch_size=7, key=KEY, run=fsgd.Run(record_params=True))
    rows = np.asarray(fsgd.sample_indices(KEY, 100, 5, 7))
    for t in range(5):
        expected = fsgd.linear_mse(result.trajectory[t], X[rows[t]], Y[rows[t]])
        assert_trees_close(result.losses[t], expected, rtol=1e-6)


def test_trajectory_starts_at_params_and_ends_at_the_result():
    result = fit(steps=20, run=fsgd.Run(record_params=True))
    assert result.trajectory.shape == (21, 2)
    assert_trees_close(result.trajectory[0], START)
    assert_trees_close(result.trajectory[-1], result.params)
    plain = fit(steps=20)
    assert_trees_close(plain.params, result.params)  # recording changes nothing


@pytest.mark.parametrize("lr, diverges", [(0.1, False), (1.5, True), (5.0, True)])
def test_divergence_is_reported_at_its_step(lr, diverges):
    result = fit(lr=lr, steps=300)
    losses = np.asarray(result.losses)
    at = int(result.diverged_at)
    if not diverges:
        assert at == -1 and np.isfinite(losses).all()
    else:
        # the first loss past 1e15 * max(1, |first loss|), or not finite
        bound = 1e15 * max(1.0, abs(float(losses[0])))
        assert at > 0
        assert (np.abs(losses[:at]) <= bound).all()
        assert not np.abs(losses[at]) <= bound


@pytest.mark.parametrize("mode", MODES)
def test_continuing_a_run_gives_the_same_bits(mode):
    whole = fit(steps=100, **MODES[mode])
    first = fit(steps=50, **MODES[mode])
    second = fit(params=first.params, steps=50, run=fsgd.Run(start_step=first.step), **MODES[mode])
    assert int(second.step) == 100
    assert_trees_close(second.params, whole.params)
    assert_trees_close(jnp.concatenate([first.losses, second.losses]), whole.losses)


def test_continuing_carries_the_optimizer_state():
    optax = pytest.importorskip("optax")
    opt = optax.sgd(0.05, momentum=0.9)
    kwargs = dict(lr=None, optimizer=opt, batch_size=10, key=KEY)
    whole = fit(steps=60, **kwargs)
    first = fit(steps=25, **kwargs)
    second = fit(params=first.params, steps=35, run=fsgd.Run(start_step=first.step, opt_state=first.opt_state), **kwargs)
    assert_trees_close(second.params, whole.params)
    assert_trees_close(second.opt_state, whole.opt_state)
    restarted = fit(params=first.params, steps=35, run=fsgd.Run(start_step=first.step), **kwargs)
    assert not np.array_equal(restarted.params, whole.params)  # the state mattered


def test_stop_rule_tol_stops_at_the_first_good_enough_step():
    tol = 0.2
    result = fit(steps=1000, stop=fsgd.Stop(tol=tol), run=fsgd.Run(record_params=True))
    run = int(result.steps_run)
    losses = np.asarray(result.losses)
    full = np.asarray(fit(steps=1000).losses)
    expected_run = int(np.argmax(full <= tol)) + 1
    assert 1 < run == expected_run < 1000 and int(result.step) == run
    assert losses[run - 1] <= tol and (losses[: run - 1] > tol).all()
    assert np.isnan(losses[run:]).all()
    assert_trees_close(losses[:run], full[:run], **backend_tolerance(rtol=1e-6))
    assert_trees_close(result.trajectory[run:], np.broadcast_to(result.params, (1001 - run, 2)))
    assert_trees_close(result.params, fit(steps=run).params, **backend_tolerance(rtol=1e-6))


def test_stop_rule_patience_waits_for_no_improvement():
    patience = 8
    result = fit(steps=2000, stop=fsgd.Stop(patience=patience), batch_size=1, key=KEY)
    run = int(result.steps_run)
    full = np.asarray(fit(steps=2000, batch_size=1, key=KEY).losses)
    best_so_far = np.minimum.accumulate(full)
    improved = np.concatenate([[True], full[1:] < best_so_far[:-1]])
    waited, expected_run = 0, None
    for t, better in enumerate(improved):
        waited = 0 if better else waited + 1
        if waited >= patience:
            expected_run = t + 1
            break
    assert expected_run is not None and run == expected_run


def test_stop_rule_stops_at_divergence():
    result = fit(lr=5.0, steps=1000, stop=fsgd.Stop(tol=1e-9))
    run = int(result.steps_run)
    losses = np.asarray(result.losses)
    # the rule stops at the first non-finite loss; diverged_at may come before it
    assert run < 1000 and not np.isfinite(losses[run - 1]) and np.isfinite(losses[:run - 1]).all()
    assert 0 < int(result.diverged_at) <= run - 1


def test_data_free_objective():
    result = fsgd.fit(lambda p: ((p - 3.0) ** 2).sum(), jnp.zeros(2), lr=0.25, steps=50)
    assert_trees_close(result.params, np.full(2, 3.0), atol=1e-6)


def test_numpy_inputs_are_accepted_and_never_modified():
    x, y, start = np.array(X), np.array(Y), np.array(START)
    copies = (x.copy(), y.copy(), start.copy())
    result = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=50, batch_size=5,
                      key=KEY)
    for original, copy in zip((x, y, start), copies):
        np.testing.assert_array_equal(original, copy)
    assert_trees_close(result.params,
                       fit(steps=50, batch_size=5, key=KEY).params)


def test_vmap_over_learning_rates_is_a_sweep():
    lrs = jnp.array([0.01, 0.1, 0.5, 1.5])
    sweep = jax.vmap(lambda lr: fit(lr=lr, steps=60))(lrs)
    assert sweep.losses.shape == (4, 60) and sweep.params.shape == (4, 2)
    for i, lr in enumerate(lrs):
        one = fit(lr=float(lr), steps=60)
        assert_trees_close(sweep.params[i], one.params, **backend_tolerance(rtol=1e-5))
        assert int(sweep.diverged_at[i]) == int(one.diverged_at)
    assert [int(d) for d in sweep.diverged_at[:3]] == [-1, -1, -1]


def test_vmap_over_keys_and_initial_params():
    keys = jax.random.split(KEY, 3)
    starts = jnp.array([[0.5, 0.75], [-1.0, 1.0], [0.0, 0.0]])
    results = jax.vmap(lambda k, p: fit(params=p, batch_size=10, key=k))(keys, starts)
    for i in range(3):
        one = fit(params=starts[i], batch_size=10, key=keys[i])
        assert_trees_close(results.params[i], one.params, rtol=1e-5)


def test_vmap_with_a_stop_rule():
    sweep = jax.vmap(lambda lr: fit(lr=lr, steps=500, stop=fsgd.Stop(tol=0.15)))(jnp.array([0.05, 0.2]))
    for i, lr in enumerate((0.05, 0.2)):
        assert int(sweep.steps_run[i]) == int(fit(lr=lr, steps=500, stop=fsgd.Stop(tol=0.15)).steps_run)


def test_fit_under_jit():
    jitted = jax.jit(lambda lr, x, y: fit(lr=lr, data=(x, y)).params)
    assert_trees_close(jitted(0.1, X, Y), fit().params, rtol=1e-6)


def test_new_lr_data_or_params_do_not_recompile():
    kwargs = dict(steps=30, batch_size=10, key=KEY)
    # Warm up each kind of call counted below, so nothing compiled once per process
    # (the eager int32 add a continuation from a device step makes) is counted,
    # whichever tests ran before in this process (pytest-xdist deals them out).
    warm = fit(**kwargs)
    fit(run=fsgd.Run(start_step=warm.step), **kwargs).params.block_until_ready()
    again = fit(**kwargs)  # a remembered call's step is another array: warmed up too
    fit(run=fsgd.Run(start_step=again.step), **kwargs).params.block_until_ready()
    x2, y2 = fsgd.lesson_data(jax.random.key(9))
    with count_compilations() as compiled:
        for lr in (0.05, 0.2, 0.3):
            fit(lr=lr, **kwargs).params.block_until_ready()
        fit(data=(x2, y2), **kwargs).params.block_until_ready()
        fit(params=jnp.array([-1.0, 1.0]), **kwargs).params.block_until_ready()
        fit(run=fsgd.Run(start_step=30), **{**kwargs, "key": jax.random.key(5)}).params.block_until_ready()
        first = fit(**kwargs)
        fit(run=fsgd.Run(start_step=first.step), **kwargs).params.block_until_ready()  # a continuation
    assert compiled[0] == 0
    with count_compilations() as compiled:  # the counter can count
        fit(steps=31).params.block_until_ready()
    assert compiled[0] >= 1


BAD_INPUT = [
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0; got 0.0"),
    ({"lr": -0.1}, ValueError, "lr must be a finite number > 0"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number > 0"),
    ({"lr": None}, TypeError, "lr is required"),
    ({"lr": [0.1, 0.2]}, TypeError, "lr must be a real scalar"),
    ({"batch_size": 0, "key": KEY}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 101, "key": KEY}, ValueError, "batch_size must be at most n=100"),
    ({"batch_size": 10}, TypeError, "key is required"),
    ({"batch_size": 10, "key": 0}, TypeError, "key must be a jax.random key"),
    ({"key": KEY}, ValueError, "key is given but batch_size is None"),
    ({"steps": None}, TypeError, "steps is required"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"steps": 2.5}, TypeError, "steps must be an int"),
    (lambda: {"rows": fsgd.Schedule(np.zeros(10, np.int32)), "steps": None}, ValueError,
     r"indices must have shape \(steps, batch_size\)"),
    (lambda: {"rows": fsgd.Schedule(np.full((10, 2), 100)), "steps": None}, ValueError,
     r"indices must lie in \[0, 100\).*from 100 to 100"),
    (lambda: {"rows": fsgd.Schedule(jnp.full((10, 2), -1)), "steps": None}, ValueError,
     r"indices must lie in \[0, 100\)"),
    (lambda: {"rows": fsgd.Schedule(np.zeros((10, 2))), "steps": None}, TypeError, "indices must be an integer"),
    (lambda: {"rows": fsgd.Schedule(np.zeros((10, 2), int)), "steps": 5}, ValueError, "steps=5 disagrees"),
    (lambda: {"rows": fsgd.Schedule(np.zeros((10, 2), int)), "steps": None, "key": KEY}, ValueError,
     r"pass key or rows=fsgd.Schedule\(indices\)"),
    ({"data": (X, Y[:50])}, ValueError, r"leading axis.*data\[1\].shape=\(50,\)"),
    ({"data": X}, TypeError, "data must be a tuple of arrays"),
    ({"data": (X, Y.at[3].set(jnp.nan))}, ValueError, r"data\[1\] contains NaN or inf"),
    ({"data": (np.array(X), np.array(Y) * np.inf)}, ValueError, r"data\[1\] contains NaN"),
    ({"params": jnp.zeros(3)}, ValueError,
     r"loss\(params, \*batch\) failed for params of shape float32\[3\].*linear: x of shape"),
    ({"params": jnp.zeros((2, 2))}, ValueError, r"loss\(params.*mse: y_hat has shape"),
    (lambda: {"stop": fsgd.Stop(tol=float("inf"))}, ValueError, "tol must be a finite number"),
    (lambda: {"stop": fsgd.Stop(patience=0)}, ValueError, "patience must be >= 1"),
    (lambda: {"run": fsgd.Run(start_step=-1)}, ValueError, "start_step must be >= 0"),
    ({"optimizer": object(), "lr": None}, TypeError, "optimizer must be an optax"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INPUT,
                         ids=[f"{i}-{'-'.join(k) if isinstance(k, dict) else 'option'}"
                              for i, (k, _, _) in enumerate(BAD_INPUT)])
def test_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        fit(**kwargs)


def test_lr_and_optimizer_together_are_refused():
    optax = pytest.importorskip("optax")
    with pytest.raises(ValueError, match="pass either lr or optimizer"):
        fit(optimizer=optax.sgd(0.1))


def test_loss_that_is_not_a_scalar_is_refused():
    with pytest.raises(ValueError, match="loss must return a real scalar"):
        fsgd.fit(lambda p, x, y: (fsgd.linear(p, x) - y) ** 2, START, (X, Y), lr=0.1,
                 steps=3)


def test_non_finite_check_can_be_skipped_and_then_divergence_shows():
    result = fit(data=(X, Y.at[3].set(jnp.nan)), run=fsgd.Run(check_finite=False), steps=3)
    assert int(result.diverged_at) == 0


@pytest.mark.parametrize("mode", ["mini-batch", "epochs", "stochastic"])
@pytest.mark.parametrize("route", ["gathered in the loop", "gathered step by step"])
def test_every_way_of_gathering_batches_gives_the_same_bits(mode, route):
    """Batches gathered before the loop, gathered in the loop (tiny steps) or
    step by step (over the pre-gather budget) are the same rows."""
    gathered = fit(steps=37, run=fsgd.Run(speed=SpeedPlan(tiny_step_bytes=0)), **MODES[mode])
    plan = (SpeedPlan(tiny_step_bytes=1 << 20) if route == "gathered in the loop"
            else SpeedPlan(tiny_step_bytes=0, pregather_bytes=0))
    other = fit(steps=37, run=fsgd.Run(speed=plan), **MODES[mode])
    assert_trees_close(other, gathered, rtol=0, atol=0)


@pytest.mark.parametrize("stop_rule", [{}, {"stop": fsgd.Stop(tol=-1.0)}], ids=["scan", "while"])
def test_long_runs_find_the_first_bad_step_too(stop_rule):
    """From LONG_RUN steps diverged_at takes another route (any, then the least bad index)."""
    from functional_sgd.core._stop import LONG_RUN
    steps = LONG_RUN + 10
    short = fit(lr=1.5, steps=100)
    assert 0 < int(short.diverged_at) < 100
    long = fit(lr=1.5, steps=steps, **stop_rule)
    assert int(long.diverged_at) == int(short.diverged_at)
    assert int(fit(steps=steps, **stop_rule).diverged_at) == -1
    sweep = jax.vmap(lambda lr: fit(lr=lr, steps=steps).diverged_at)(jnp.array([0.1, 1.5]))
    assert sweep.tolist() == [-1, int(short.diverged_at)]
