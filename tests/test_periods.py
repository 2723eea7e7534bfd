"""Evaluation periods (issue 23, items 3-5): steps the user lists, the
training means of each period, the best step, a host hook and a progress bar
per period, and held-out data as users have it."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_sgd as fsgd
from tests.helpers import START, X, Y, assert_trees_close, count_compilations

HELD_OUT = fsgd.lesson_data(jax.random.key(7), 30)  # a row count of its own


def mse_of(a, x, y):
    return {"mse": fsgd.linear_mse(a, x, y)}


def lesson(**kwargs):
    kwargs = {"lr": 0.1, "steps": 100, **kwargs}
    return fsgd.fit(fsgd.linear_mse, START, (X, Y), **kwargs)


# item 1: evaluation at steps the user lists

def test_every_lists_steps_and_the_end_of_the_run():
    r = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=[10, 25]),
               run=fsgd.Run(record_params=True))
    assert r.eval_steps.tolist() == [10, 25, 100]
    expected = [fsgd.linear_mse(r.trajectory[t], *HELD_OUT) for t in (10, 25, 100)]
    np.testing.assert_allclose(r.evals["mse"], expected, rtol=1e-6)
    listed = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=(10, 25, 100)))
    assert listed.eval_steps.tolist() == [10, 25, 100]


def test_listed_steps_with_chunks_give_the_same_evaluations():
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=[3, 10, 64])
    whole = lesson(evaluation=ev)
    chunked = lesson(evaluation=ev, run=fsgd.Run(chunk_size=7))
    assert chunked.eval_steps.tolist() == whole.eval_steps.tolist() == [3, 10, 64, 100]
    np.testing.assert_array_equal(chunked.evals["mse"], whole.evals["mse"])


@pytest.mark.parametrize("every, match", [([25, 10], "sorted"), ([10, 10], "unique"),
                                          ([0, 10], ">= 1"), ([], "at least one"),
                                          ([1.5], "int")])
def test_bad_lists_are_refused_when_built(every, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fsgd.Evaluation(mse_of, HELD_OUT, every=every)


def test_a_listed_step_past_the_run_is_refused():
    with pytest.raises(ValueError, match="every"):
        lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=[10, 101]))


# item 2: training means per period, the best step

def test_mean_training_loss_per_period():
    r = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=25))
    np.testing.assert_allclose(r.evals["train/loss"],
                               np.asarray(r.losses).reshape(4, 25).mean(1), rtol=1e-6)
    listed = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=[10, 40]))
    losses = np.asarray(listed.losses)
    np.testing.assert_allclose(listed.evals["train/loss"],
                               [losses[:10].mean(), losses[10:40].mean(), losses[40:].mean()],
                               rtol=1e-6)


def test_chunks_across_periods_keep_the_period_means():
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=25)
    whole = lesson(evaluation=ev)
    for size in (7, 10, 30):
        chunked = lesson(evaluation=ev, run=fsgd.Run(chunk_size=size))
        np.testing.assert_array_equal(chunked.evals["train/loss"], whole.evals["train/loss"])


def test_mean_of_each_scalar_aux_metric_with_optax(standard_promotion):
    def loss(a, x, y):
        error = x @ a - y
        return (error ** 2).mean(), {"mae": jnp.abs(error).mean(), "worst": jnp.abs(error).max()}

    def evaluate(a, x, y):
        return {"mse": fsgd.linear_mse(a, x, y)}

    r = fsgd.fit(loss, START, (X, Y), optimizer=optax.adam(0.05), steps=40, batch_size=10,
                 key=jax.random.key(1), model=fsgd.Model(has_aux=True),
                 evaluation=fsgd.Evaluation(evaluate, HELD_OUT, every=10))
    assert set(r.evals) == {"mse", "train/loss", "train/mae", "train/worst"}
    np.testing.assert_allclose(r.evals["train/mae"],
                               np.asarray(r.aux["mae"]).reshape(4, 10).mean(1), rtol=1e-6)
    chunked = fsgd.fit(loss, START, (X, Y), optimizer=optax.adam(0.05), steps=40, batch_size=10,
                       key=jax.random.key(1), model=fsgd.Model(has_aux=True),
                       evaluation=fsgd.Evaluation(evaluate, HELD_OUT, every=10),
                       run=fsgd.Run(chunk_size=7))
    assert_trees_close(chunked.evals, r.evals)  # bits equal


def test_a_users_key_in_the_training_namespace_is_refused():
    with pytest.raises(ValueError, match="train/"):
        lesson(evaluation=fsgd.Evaluation(lambda a, x, y: {"train/loss": x.sum()}, HELD_OUT,
                                          every=25))


def test_best_step_with_a_monitor():
    r = lesson(steps=60, lr=1.5, evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=5,
                                                            monitor="mse"))
    values = np.asarray(r.evals["mse"])
    finite = np.where(np.isfinite(values), values, np.inf)
    assert int(r.best_step) == int(r.eval_steps[np.argmin(finite)])
    assert r._fields[-1] == "best_step"
    assert int(lesson().best_step) == -1
    assert int(lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=25)).best_step) == -1


def test_best_step_under_vmap_and_chunks():
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=10, monitor="mse")
    whole = lesson(evaluation=ev)
    chunked = lesson(evaluation=ev, run=fsgd.Run(chunk_size=30))
    assert int(chunked.best_step) == int(whole.best_step)
    values = np.asarray(whole.evals["mse"])
    assert int(whole.best_step) == int(whole.eval_steps[np.argmin(values)])
    rates = [0.01, 0.1]
    swept = jax.vmap(lambda lr: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=lr, steps=100,
                                         evaluation=ev).best_step)(jnp.array(rates))
    assert swept.tolist() == [int(lesson(lr=lr, evaluation=ev).best_step) for lr in rates]


# item 3: a host hook and a progress bar at evaluation periods

def test_on_evaluation_sees_every_evaluation_and_compiles_a_few_programs():
    seen = []

    def on_evaluation(step, evals):
        seen.append((step, dict(evals)))

    loss = lambda a, x, y: fsgd.linear_mse(a, x, y)  # a loss of its own: nothing warm
    jax.clear_caches()  # the loop keeps 64 programs: start this count far from that bound
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=10, on_evaluation=on_evaluation)
    with count_compilations() as compiles:
        r = fsgd.fit(loss, START, (X, Y), lr=0.1, steps=105, evaluation=ev)
    assert [step for step, _ in seen] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 105]
    np.testing.assert_array_equal([e["mse"] for _, e in seen], r.evals["mse"])
    assert set(seen[0][1]) == {"mse", "train/loss"}
    plain = fsgd.fit(loss, START, (X, Y), lr=0.1, steps=105,
                     evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=10))
    np.testing.assert_array_equal(r.params, plain.params)
    assert compiles[0] <= 3, compiles[0]  # a period, the last period, a shorter end
    with count_compilations() as again:
        fsgd.fit(loss, START, (X, Y), lr=0.1, steps=105, evaluation=ev)
    assert again[0] == 0


@pytest.mark.parametrize("stop", [True, np.bool_(True), jnp.bool_(True), jnp.array(True)])
def test_on_evaluation_stops_the_run_with_a_boolean_scalar(stop):
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=10,
                         on_evaluation=lambda step, evals: stop if step >= 30 else False)
    r = lesson(evaluation=ev)
    assert int(r.steps_run) == 30
    assert r.eval_steps.tolist()[:4] == [10, 20, 30, -1]


def test_on_evaluation_is_checked_when_built():
    with pytest.raises(TypeError, match="on_evaluation"):
        fsgd.Evaluation(mse_of, HELD_OUT, on_evaluation="print")


def test_progress_bar_moves_per_period(capsys):
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=25)
    r = lesson(evaluation=ev, run=fsgd.Run(progress=True))
    plain = lesson(evaluation=ev)
    np.testing.assert_array_equal(r.params, plain.params)
    err = capsys.readouterr().err
    assert "100/100" in err and "mse=" in err


def test_progress_without_tqdm_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install tqdm"):
        fsgd.Run(progress=True)


# item 4: held-out data as users have it

def test_held_out_data_as_a_dict():
    def evaluate(a, batch):
        return {"mse": fsgd.linear_mse(a, batch["x"], batch["y"])}

    r = lesson(evaluation=fsgd.Evaluation(evaluate, {"x": HELD_OUT[0], "y": HELD_OUT[1]},
                                          every=50))
    expected = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=50))
    np.testing.assert_array_equal(r.evals["mse"], expected.evals["mse"])


def test_named_held_out_sets():
    test = fsgd.lesson_data(jax.random.key(8), 20)
    r = lesson(evaluation=fsgd.Evaluation(mse_of, {"valid": HELD_OUT, "test": test}, every=50,
                                          monitor="valid/mse"))
    assert set(r.evals) == {"valid/mse", "test/mse", "train/loss"}
    alone = lesson(evaluation=fsgd.Evaluation(mse_of, test, every=50))
    np.testing.assert_array_equal(r.evals["test/mse"], alone.evals["mse"])


def test_array_metrics_are_stacked_over_evaluations():
    def per_half(a, x, y):
        error = (x @ a - y) ** 2
        return {"per_half": jnp.stack([error[:15].mean(), error[15:].mean()])}

    r = lesson(evaluation=fsgd.Evaluation(per_half, HELD_OUT, every=25))
    assert r.evals["per_half"].shape == (4, 2)
    chunked = lesson(evaluation=fsgd.Evaluation(per_half, HELD_OUT, every=25),
                     run=fsgd.Run(chunk_size=30))
    np.testing.assert_array_equal(chunked.evals["per_half"], r.evals["per_half"])


def test_a_bare_scalar_is_named_loss():
    r = lesson(evaluation=fsgd.Evaluation(fsgd.linear_mse, HELD_OUT, every=50))
    expected = lesson(evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=50))
    np.testing.assert_array_equal(r.evals["loss"], expected.evals["mse"])


def test_evaluation_with_a_stream():
    batches = [(X[i:i + 10], Y[i:i + 10]) for i in range(0, 100, 10)] * 3
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=10)
    r = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(iter(batches), block=5), lr=0.1,
                 evaluation=ev)
    assert r.eval_steps.tolist() == [10, 20, 30]
    replayed = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1,
                        rows=fsgd.Schedule(np.tile(np.arange(100).reshape(10, 10), (3, 1))),
                        evaluation=ev)
    np.testing.assert_allclose(r.evals["mse"], replayed.evals["mse"], rtol=1e-6)
    np.testing.assert_allclose(r.evals["train/loss"], replayed.evals["train/loss"], rtol=1e-6)


def test_array_metrics_and_period_means_resume_from_a_checkpoint(tmp_path):
    def per_half(a, x, y):
        error = (x @ a - y) ** 2
        return {"per_half": jnp.stack([error[:15].mean(), error[15:].mean()])}

    ev = fsgd.Evaluation(per_half, HELD_OUT, every=25)
    whole = lesson(evaluation=ev)
    path = str(tmp_path / "run.npz")

    def crash(chunk):
        if int(chunk.step) == 40:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        lesson(evaluation=ev, run=fsgd.Run(chunk_size=20, checkpoint=path, on_chunk=crash))
    resumed = lesson(evaluation=ev, run=fsgd.Run(chunk_size=20, checkpoint=path,
                                                 on_chunk=crash))
    np.testing.assert_array_equal(resumed.evals["per_half"], whole.evals["per_half"])
    np.testing.assert_array_equal(resumed.evals["train/loss"], whole.evals["train/loss"])


def test_chunks_at_period_boundaries_keep_the_loops_bits():
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=25)
    whole = lesson(evaluation=ev)
    chunked = lesson(evaluation=ev, run=fsgd.Run(chunk_size=50))
    np.testing.assert_array_equal(chunked.evals["train/loss"], whole.evals["train/loss"])


@pytest.mark.parametrize("chunk_size", [5, 9, 13])
def test_chunked_runs_with_a_monitor_equal_one_call_whole(chunk_size):
    ev = fsgd.Evaluation(mse_of, HELD_OUT, every=7, monitor="mse", patience=3,
                         restore_best=True)
    one = lesson(steps=200, lr=1.9, evaluation=ev)
    chunked = lesson(steps=200, lr=1.9, evaluation=ev, run=fsgd.Run(chunk_size=chunk_size))
    assert_trees_close(chunked, one)  # bits equal, the period means and best_step included


def test_period_means_skip_aux_leaves_that_are_keys_or_arrays():
    def loss(a, x, y):
        error = x @ a - y
        return (error ** 2).mean(), {"key": jax.random.key(0), "row": error, "n": jnp.int32(3)}

    r = fsgd.fit(
        loss, START, (X, Y), lr=0.1, steps=20, model=fsgd.Model(has_aux=True),
        evaluation=fsgd.Evaluation(mse_of, HELD_OUT, every=10), run=fsgd.Run(chunk_size=7))
    assert set(r.evals) == {"mse", "train/loss", "train/n"}
    np.testing.assert_array_equal(r.evals["train/n"], [3.0, 3.0])
