"""The learning-rate finder: a vmap of whole runs that equals the runs one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from helpers import assert_trees_close, count_compilations, backend_tolerance

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)
LRS = jnp.array([0.01, 0.1, 0.5, 0.9, 2.0, 3.0])


@pytest.mark.parametrize("schedule", [{}, {"batch_size": 10, "key": jax.random.key(1)}],
                         ids=["batch", "mini-batch"])
def test_sweep_equals_one_run_per_rate(schedule):
    sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=LRS, steps=60, **schedule)
    assert sweep.losses.shape == (6, 60)
    finals = []
    for i, lr in enumerate(LRS):
        one = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=float(lr), steps=60, **schedule)
        assert int(sweep.diverged_at[i]) == int(one.diverged_at)
        final = float(fsgd.linear_mse(one.params, X, Y))
        finals.append(final if int(one.diverged_at) < 0 else np.inf)
        # vmap batches the same float32 ops; XLA may fuse them differently: a few ulps
        assert_trees_close(sweep.losses[i, :10], one.losses[:10], **backend_tolerance(rtol=1e-5))
    assert_trees_close(sweep.final_loss, np.array(finals, np.float32),
                       **backend_tolerance(rtol=1e-5))
    assert int(sweep.best) == int(np.argmin(finals))
    assert int(sweep.edge) == 4  # 2.0 is the first rate past the curvature limit (~1)
    assert float(sweep.lrs[sweep.best]) < 1.0


def test_best_and_edge_when_nothing_or_everything_diverges():
    calm = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=LRS[:3], steps=60)
    assert int(calm.edge) == -1 and int(calm.best) == 2
    wild = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=LRS[4:], steps=60)
    assert int(wild.edge) == 0 and int(wild.best) == -1
    assert np.isinf(np.asarray(wild.final_loss)).all()


def test_new_rates_do_not_recompile():
    kwargs = dict(steps=40, batch_size=5, key=jax.random.key(2))
    fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=LRS, **kwargs).best.block_until_ready()
    other_rates = np.asarray(LRS) * 0.5
    with count_compilations() as compiled:
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=other_rates,
                      **kwargs).best.block_until_ready()
    assert compiled[0] == 0


@pytest.mark.parametrize("lrs, match", [
    (jnp.array([0.1]), "at least 2 learning rates"),
    (jnp.array([[0.1, 0.2]]), "1-D float array"),
    (jnp.array([1, 2]), "1-D float array"),
    (jnp.array([0.1, -0.2]), "finite and > 0"),
    (jnp.array([0.1, jnp.nan]), "finite and > 0"),
    (jnp.array([0.2, 0.1]), "strictly increasing"),
])
def test_bad_rates_are_refused(lrs, match):
    with pytest.raises(ValueError, match=match):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=10)


def test_bad_schedule_is_refused_by_fit():
    with pytest.raises(ValueError, match="batch_size must be at most n=100"):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=LRS, steps=10, batch_size=101,
                      key=jax.random.key(0))


def test_sweep_with_held_out_data_an_indices_schedule_and_adam(standard_promotion):
    import optax

    held_x, held_y = fsgd.lesson_data(jax.random.key(5))
    indices = np.asarray(fsgd.sample_indices(jax.random.key(3), 100, 40, 10))
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    lrs = jnp.array([0.01, 0.1, 0.5])
    sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, rows=fsgd.Schedule(indices), evaluation=fsgd.Evaluation(data=(held_x, held_y), every=10),
                          optimizer=adam)
    assert sweep.evals["loss"].shape == (3, 4)
    np.testing.assert_array_equal(sweep.eval_steps, [[10, 20, 30, 40]] * 3)
    for i, lr in enumerate(lrs):
        one = fsgd.fit(fsgd.linear_mse, START, (X, Y), rows=fsgd.Schedule(indices), evaluation=fsgd.Evaluation(fsgd.lesson.HeldOutLoss(
                           fsgd.linear_mse), (held_x, held_y), every=10),
                       optimizer=optax.adam(float(lr)))
        # vmap batches float32 ops and the injected rate is a traced value, not a constant:
        # XLA rounds differently, and adam's m / sqrt(v) with v ~ 0 on the first steps
        # magnifies a few ulps to ~2e-5 measured; 1e-4 (a wrong schedule or rate is off by >1%)
        assert_trees_close(sweep.evals["loss"][i], one.evals["loss"], **backend_tolerance(rtol=1e-4))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=10,
                      optimizer=optax.adam(0.1))


def test_a_new_patience_or_tol_is_not_a_stale_sweep():
    """patience and tol are traced: a second sweep differing only in them
    gets its own stop rule, not the first sweep's compiled one."""
    held_out = fsgd.lesson_data(jax.random.key(1))
    lrs = jnp.array([0.01, 0.1])

    def stopped_at(patience):
        evaluation = fsgd.Evaluation(data=held_out, every=1, monitor="loss", patience=patience,
                                     tol=0.0)
        sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=100,
                              evaluation=evaluation)
        return np.asarray(sweep.eval_steps).max(axis=1).tolist()

    assert stopped_at(50) == [100, 100]  # no plateau of 50 evaluations in 100 steps
    assert stopped_at(1)[1] < 100  # lr=0.1 levels off: patience 1 stops it early


def test_with_restore_best_each_rate_scores_the_params_fit_returns():
    """Under Evaluation(restore_best=True) fit's result.params are those of the
    best evaluation; the sweep's final_loss is the loss on all the data at
    those params (not at the last step's), as fit would give rate by rate."""
    x_held, _ = fsgd.lesson_data(jax.random.key(5))
    held_out = (x_held, x_held @ jnp.array([2.0, 1.5]))  # its best lies mid-run
    check = fsgd.Evaluation(data=held_out, every=5, monitor="loss", restore_best=True)
    lrs = LRS[:4]
    sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=60, evaluation=check)
    restored_somewhere = False
    for i, lr in enumerate(lrs):
        one = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=float(lr), steps=60, evaluation=check)
        last = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=float(lr), steps=60)
        restored_somewhere |= int(one.best_step) < 60
        # vmap batches the same float32 ops; XLA may fuse them differently: a few ulps
        assert_trees_close(sweep.final_loss[i], fsgd.linear_mse(one.params, X, Y),
                           **backend_tolerance(rtol=1e-5))
        if int(one.best_step) < 60:
            assert not np.isclose(float(sweep.final_loss[i]),
                                  float(fsgd.linear_mse(last.params, X, Y)), rtol=1e-3)
    assert restored_somewhere
