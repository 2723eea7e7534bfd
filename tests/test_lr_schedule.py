"""``lr=`` takes a schedule ``step -> rate`` for the plain update (issue 23.8):
step ``t`` (global, counted from ``start_step``) uses ``lr(t)``, with the
bits of ``optimizer=optax.sgd(schedule)``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import KEY, START, X, Y, assert_trees_close
from helpers import fit_lesson as fit

import functional_sgd as fsgd

SCHEDULE = optax.linear_schedule(init_value=0.2, end_value=0.01, transition_steps=40)
MINI_BATCH = {"batch_size": 10, "key": jax.random.key(1)}


@pytest.mark.parametrize("mode", [{}, MINI_BATCH, {**MINI_BATCH, "rows": fsgd.Shuffled()}])
def test_a_schedule_as_lr_has_the_bits_of_optax_sgd_of_it(mode):
    plain = fit(lr=SCHEDULE, steps=50, **mode)
    optaxed = fit(lr=None, optimizer=optax.sgd(SCHEDULE), steps=50, **mode)
    assert_trees_close(plain.losses, optaxed.losses)  # bits: rtol = atol = 0
    assert_trees_close(plain.params, optaxed.params)
    assert plain.opt_state is None  # the plain update keeps no state
    constant = fit(lr=0.2, steps=50, **mode)
    assert not np.array_equal(plain.losses, constant.losses)  # the schedule acts


def test_step_t_uses_the_rate_of_the_global_step():
    stepped = lambda t: jnp.where(t < 3, 0.1, 0.0)
    first = fit(lr=stepped, steps=5)
    assert_trees_close(first.params, fit(lr=0.1, steps=3).params)  # steps 3, 4: rate 0
    later = fit(lr=stepped, steps=5, run=fsgd.Run(start_step=3))  # global steps 3..7: rate 0
    assert_trees_close(later.params, START)


def test_chunks_and_a_resumed_run_keep_the_bits(tmp_path):
    whole = fit(lr=SCHEDULE, steps=40, **MINI_BATCH)
    chunked = fit(lr=SCHEDULE, steps=40, run=fsgd.Run(chunk_size=15), **MINI_BATCH)
    assert_trees_close(chunked.params, whole.params)
    assert_trees_close(chunked.losses, whole.losses)
    head = fit(lr=SCHEDULE, steps=25, **MINI_BATCH)
    tail = fit(lr=SCHEDULE, params=head.params, steps=15, run=fsgd.Run(start_step=head.step), **MINI_BATCH)
    assert_trees_close(tail.params, whole.params)
    assert_trees_close(tail.losses, whole.losses[25:])
    path = str(tmp_path / "run.npz")
    checkpointed = fit(lr=SCHEDULE, steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path), **MINI_BATCH)
    assert_trees_close(checkpointed.params, whole.params)
    resumed = fit(lr=SCHEDULE, steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path), **MINI_BATCH)
    assert_trees_close(resumed.params, whole.params)


def test_a_schedule_with_a_stop_rule_a_model_and_evaluations():
    stopped = fit(lr=SCHEDULE, steps=60, stop=fsgd.Stop(tol=0.2))
    reference = fit(lr=None, optimizer=optax.sgd(SCHEDULE), steps=60, stop=fsgd.Stop(tol=0.2))
    assert_trees_close(stopped.losses, reference.losses)
    assert int(stopped.steps_run) == int(reference.steps_run) < 60
    aux_loss = lambda a, x, y: (fsgd.linear_mse(a, x, y), a.sum())
    evaluate = lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}
    for loss, options in [(aux_loss, {"model": fsgd.Model(has_aux=True)}), (fsgd.linear_mse, {
            "evaluation": fsgd.Evaluation(evaluate, (X, Y), every=10)})]:
        scheduled = fsgd.fit(loss, START, (X, Y), lr=SCHEDULE, steps=30, **options)
        optaxed = fsgd.fit(loss, START, (X, Y), optimizer=optax.sgd(SCHEDULE), steps=30,
                           **options)
        assert_trees_close(scheduled.losses, optaxed.losses)
        assert_trees_close(scheduled.params, optaxed.params)


def test_a_schedule_that_does_not_give_a_scalar_rate_is_refused():
    with pytest.raises(TypeError, match=r"lr.*schedule.*shape \(2,\)"):
        fit(lr=lambda t: jnp.ones(2), steps=5)
    with pytest.raises(TypeError, match=r"lr.*schedule.*step -> rate"):
        fit(lr=lambda: 0.1, steps=5)  # takes no step
    with pytest.raises(TypeError, match=r"lr.*schedule.*int32"):
        fit(lr=lambda t: t > 2, steps=5)  # a bool is no rate
    with pytest.raises(ValueError, match="either lr or optimizer"):
        fit(lr=SCHEDULE, optimizer=optax.sgd(0.1), steps=5)


@pytest.mark.parametrize("schedule, bad_step, rate", [
    (lambda t: jnp.where(t < 1, -0.1, 0.1), 0, "-0.1"),  # negative at the start
    (lambda t: 0.1 - 0.02 * t.astype(jnp.float32), 6, "-0.02"),  # crosses 0 at step 5
    (lambda t: jnp.where(t == 37, jnp.nan, 0.1), 37, "nan"),
    (lambda t: jnp.where(t == 20_000, jnp.inf, 0.1), 20_000, "inf"),  # past the first block
])
@pytest.mark.usefixtures("standard_promotion")  # optax's warm-up mixes floats and int32
def test_a_schedule_with_a_negative_or_non_finite_rate_is_refused(schedule, bad_step, rate):
    """As a scalar lr <= 0 is refused, so is a schedule's rate < 0 or not finite
    at any step of the run (a rate of 0 passes: warm-ups start there)."""
    with pytest.raises(ValueError, match=rf"lr is a schedule.*finite number >= 0; "
                                         rf"lr\({bad_step}\) = {rate}"):
        fit(lr=schedule, steps=30_000)
    spike = lambda t: jnp.where(t == 37, jnp.nan, 0.1)  # the steps of the run only count
    assert fit(lr=spike, steps=37).losses.shape == (37,)
    assert fit(lr=spike, steps=3, run=fsgd.Run(start_step=38)).losses.shape == (3,)
    warm_up = optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 30)  # rate 0 at step 0
    assert fit(lr=warm_up, steps=30).losses.shape == (30,)


def test_lr_sweep_refuses_a_schedule_clearly():
    with pytest.raises(TypeError, match=r"lrs.*schedule"):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=SCHEDULE, steps=10)


def test_a_schedule_under_jit():
    run = jax.jit(lambda params: fit(lr=SCHEDULE, params=params, steps=20, key=KEY,
                                     batch_size=10).params)
    assert_trees_close(run(START), fit(lr=SCHEDULE, steps=20, key=KEY, batch_size=10).params)


def test_a_schedule_with_a_stream_of_batches():
    batches = [(X[i:i + 10], Y[i:i + 10]) for i in range(0, 100, 10)]
    streamed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches, block=4), lr=SCHEDULE)
    optaxed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches, block=4),
                       optimizer=optax.sgd(SCHEDULE))
    assert_trees_close(streamed.losses, optaxed.losses)
    assert_trees_close(streamed.params, optaxed.params)
