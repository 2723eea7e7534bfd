"""Step 7 as the lesson says it: held-out data evaluated inside the compiled
loop, and a stop rule that watches it (``evaluate``, ``monitor``, ...).

Agreement: against a plain Python loop over epochs, bits equal (float64:
the same steps in the same order). A ``jax.vmap`` over learning rates
batches the matmuls, which may round differently: relative 1e-12 in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.lesson._classify import accuracy, classifier_mnist_loss, init_classifier
from helpers import (START, X, Y, assert_trees_close, count_compilations, max_relative_error,
                     backend_tolerance)

BATCH = 32
PATIENCE = 3


@pytest.fixture(scope="module")
def digits():
    return fsgd.digits_3_vs_7(jax.random.key(0))


def as64(digits):
    """Training and held-out data and start params, in float64."""
    train = (jnp.asarray(digits.train_x, jnp.float64), jnp.asarray(digits.train_y, jnp.float64))
    valid = (jnp.asarray(digits.valid_x, jnp.float64), jnp.asarray(digits.valid_y, jnp.float64))
    w, b = init_classifier(jax.random.key(1), 64, std=0.1)
    return train, valid, (jnp.asarray(w, jnp.float64), jnp.asarray(b, jnp.float64))


def scores(params, x, y):
    return {"accuracy": accuracy(params, x, y), "loss": classifier_mnist_loss(params, x, y)}


def fit_digits(train, valid, params, **kwargs):
    """Shuffled epochs of the digits, ``scores`` on ``valid`` each epoch
    (``evaluation=`` replaces it: ``None`` for no evaluation)."""
    kwargs = {"lr": 0.05, "batch_size": BATCH, "key": jax.random.key(2), "rows": fsgd.Shuffled(),
              "evaluation": fsgd.Evaluation(scores, valid), **kwargs}
    return fsgd.fit(classifier_mnist_loss, params, train, **kwargs)


def test_stop_rule_on_accuracy_is_a_python_loop_over_epochs(digits, x64):
    train, valid, params = as64(digits)
    per_epoch, epochs = len(digits.train_y) // BATCH, 60
    result = fit_digits(train, valid, params, steps=epochs * per_epoch,
                        evaluation=fsgd.Evaluation(scores, valid, monitor="accuracy", mode="max",
                                                   patience=PATIENCE, restore_best=True))

    # The same run as the book's loop: train an epoch, evaluate, stop when it gets worse.
    best, waited, best_params, curve = -np.inf, 0, params, []
    evaluated = jax.jit(scores)
    for epoch in range(epochs):
        params = fit_digits(train, valid, params, steps=per_epoch,
                            run=fsgd.Run(start_step=epoch * per_epoch), evaluation=None).params
        value = float(evaluated(params, *valid)["accuracy"])
        curve.append(value)
        if value > best:  # strictly better: a tie does not improve
            best, waited, best_params = value, 0, params
        else:
            waited += 1
        if waited >= PATIENCE:
            break
    ran = len(curve)
    assert PATIENCE < ran < epochs  # it stopped early, on the rule
    assert int(np.argmax(curve)) < ran - 1  # and the best epoch was not the last
    assert int(result.steps_run) == ran * per_epoch
    np.testing.assert_array_equal(result.eval_steps, [per_epoch * (e + 1) if e < ran else -1
                                                      for e in range(epochs)])
    np.testing.assert_array_equal(result.evals["accuracy"][:ran], curve)
    assert np.isnan(result.evals["accuracy"][ran:]).all()
    assert_trees_close(result.params, best_params)  # bits equal


def test_vmap_over_16_rates_gives_16_validation_curves_in_one_compile(digits, x64):
    train, valid, params = as64(digits)
    per_epoch = len(digits.train_y) // BATCH

    def run(lr):
        return fit_digits(train, valid, params, lr=lr, steps=12 * per_epoch,
                          evaluation=fsgd.Evaluation(scores, valid, monitor="loss", patience=2,
                                                     restore_best=True))

    lrs = jnp.geomspace(0.01, 30.0, 16)
    rtol = backend_tolerance(rtol=1e-12, dtype=np.float64)["rtol"]
    sweep = jax.jit(jax.vmap(run))
    with count_compilations() as compiles:
        swept = jax.block_until_ready(sweep(lrs))
    assert compiles[0] == 1 and sweep._cache_size() == 1
    assert swept.evals["loss"].shape == (16, 12)
    stopped = 0
    for i, lr in enumerate(lrs):
        alone = run(lr)
        np.testing.assert_array_equal(swept.eval_steps[i], alone.eval_steps)
        assert int(swept.steps_run[i]) == int(alone.steps_run)
        stopped += int(alone.steps_run) < 12 * per_epoch
        assert max_relative_error(jax.tree.map(lambda a, i=i: a[i], swept.params),
                                  alone.params) <= rtol
        made = np.asarray(alone.eval_steps) >= 0
        assert max_relative_error(swept.evals["loss"][i][made],
                                  alone.evals["loss"][made]) <= rtol
    assert stopped >= 2  # some rates stopped early, others ran on: the loop mixes both


@pytest.mark.parametrize("chunk_size", [5, 9, 13])
def test_chunked_runs_with_monitor_equal_one_call(digits, chunk_size):
    train = (digits.train_x, digits.train_y)
    valid = (digits.valid_x, digits.valid_y)
    params = init_classifier(jax.random.key(1), 64, std=0.1)
    kwargs = {"steps": 200, "evaluation": fsgd.Evaluation(scores, valid, every=7, monitor="accuracy",
                                                          mode="max", patience=4,
                                                          restore_best=True)}
    one = fit_digits(train, valid, params, **kwargs)
    chunked = fit_digits(train, valid, params, run=fsgd.Run(chunk_size=chunk_size), **kwargs)
    assert int(one.steps_run) < 200  # the rule fired
    assert_trees_close(chunked, one)  # bits equal


def test_a_crashed_run_resumes_from_its_checkpoint_with_the_best_params(digits, tmp_path):
    train = (digits.train_x, digits.train_y)
    valid = (digits.valid_x, digits.valid_y)
    params = init_classifier(jax.random.key(1), 64, std=0.1)
    kwargs = {"steps": 200, "evaluation": fsgd.Evaluation(scores, valid, every=7, monitor="accuracy",
                                                          mode="max", patience=4,
                                                          restore_best=True)}
    path = tmp_path / "run.npz"
    seen = []

    def crash_after_three(chunk):
        seen.append(int(chunk.step))
        if len(seen) == 3:
            raise KeyboardInterrupt  # killed after the third checkpoint was written

    with pytest.raises(KeyboardInterrupt):
        fit_digits(train, valid, params, run=fsgd.Run(chunk_size=10, checkpoint=path,
                                                      on_chunk=crash_after_three), **kwargs)
    resumed_at = []
    resumed = fit_digits(train, valid, params, run=fsgd.Run(
        chunk_size=10, checkpoint=path, on_chunk=lambda chunk: resumed_at.append(int(chunk.step))),
        **kwargs)
    whole = fit_digits(train, valid, params, **kwargs)
    assert resumed_at[0] == 40  # from the checkpoint, not the start
    assert int(whole.steps_run) < 200
    assert_trees_close(resumed, whole)


def test_on_chunk_returning_true_stops_after_that_chunk():
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=100, run=fsgd.Run(chunk_size=10, on_chunk=lambda chunk: int(chunk.step) >= 30))
    assert int(result.steps_run) == int(result.step) == 30
    assert np.isnan(result.losses[30:]).all() and np.isfinite(result.losses[:30]).all()


def test_eval_every_defaults_to_an_epoch_or_the_run():
    mse = lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
    shuffled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=25, batch_size=30,
                        key=jax.random.key(1), rows=fsgd.Shuffled(), evaluation=fsgd.Evaluation(mse, (X, Y)))
    np.testing.assert_array_equal(shuffled.eval_steps, [3, 6, 9, 12, 15, 18, 21, 24, 25])
    full = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=25, evaluation=fsgd.Evaluation(mse, (X, Y)))
    np.testing.assert_array_equal(full.eval_steps, [25])
    np.testing.assert_allclose(full.evals["mse"], [fsgd.linear_mse(full.params, X, Y)],
                               rtol=1e-6)


def test_evaluations_follow_the_params_they_saw():
    mse = lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=10, evaluation=fsgd.Evaluation(mse, (X, Y), every=4), run=fsgd.Run(record_params=True))
    np.testing.assert_array_equal(result.eval_steps, [4, 8, 10])
    expected = [fsgd.linear_mse(result.trajectory[t], X, Y) for t in (4, 8, 10)]
    np.testing.assert_allclose(result.evals["mse"], expected, rtol=1e-6)
    # a tie never improves: patience counts it, restore_best keeps the first best
    constant = lambda a: {"one": jnp.float32(1.0)}  # noqa: E731
    tied = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=10, evaluation=fsgd.Evaluation(constant, every=2, monitor="one", patience=2, restore_best=True), run=fsgd.Run(record_params=True))
    assert int(tied.steps_run) == 6  # best at 2, ties at 4 and 6
    np.testing.assert_array_equal(tied.params, tied.trajectory[2])


def test_evaluate_with_a_model_state_gets_the_state():
    def loss(params, state, x, y):
        return fsgd.linear_mse(params, x, y), state + 1

    seen = lambda params, state, x, y: {"state": state, "mse": fsgd.linear_mse(params, x, y)}  # noqa: E731
    result = fsgd.fit(loss, START, (X, Y), lr=0.1, steps=10, evaluation=fsgd.Evaluation(seen, (X, Y), every=5), model=fsgd.Model(state=jnp.float32(0)))
    np.testing.assert_array_equal(result.evals["state"], [5.0, 10.0])


def test_tol_on_the_monitored_value():
    mse = lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=100, evaluation=fsgd.Evaluation(mse, (X, Y), every=10, monitor="mse", tol=0.2))
    made = np.asarray(result.evals["mse"])[np.asarray(result.eval_steps) >= 0]
    assert made[-1] <= 0.2 < made[-2]
    assert int(result.steps_run) == int(result.eval_steps[len(made) - 1]) < 100


mse_dict = lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
BAD = [
    (lambda: {"evaluation": fsgd.Evaluation(monitor="mse")}, ValueError,
     "Evaluation needs evaluate= or data="),
    (lambda: {"evaluation": fsgd.Evaluation()}, ValueError, "Evaluation needs evaluate= or data="),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), monitor="acc")}, ValueError,
     r"Evaluation\(monitor=\) must be a key of the dict evaluate returns, one of \['mse'\]; "
     r"got 'acc'"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), monitor="mse", mode="up")}, ValueError,
     "mode must be 'min' or 'max'"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), every=0)}, ValueError,
     "every must be >= 1"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), every=2.0)}, TypeError,
     "every must be an int"),
    (lambda: {"evaluation": fsgd.Evaluation(lambda a, x, y: {"err": (x @ a - y) > 0}, (X, Y))},
     ValueError, r"evaluate must return a dict of real arrays; its 'err' is bool\[100\]"),
    (lambda: {"evaluation": fsgd.Evaluation(lambda a, x, y: None, (X, Y))}, ValueError,
     "evaluate must return a non-empty dict"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), restore_best=True)}, ValueError,
     r"Evaluation\(restore_best=\) needs monitor"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y[:50]))}, ValueError,
     r"Evaluation\(data=\) arrays must share their leading axis .*data\[1\].shape=\(50,\)"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, np.full(100, np.nan, np.float32)))}, ValueError,
     r"Evaluation\(data=\)\[1\] contains NaN"),
    (lambda: {"evaluation": fsgd.Evaluation("mse", (X, Y))}, TypeError, "evaluate must be callable"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, X)}, TypeError, "data must be a tuple"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X, Y), mode="max")}, ValueError,
     r"Evaluation\(mode=\) needs monitor"),
    (lambda: {"evaluation": fsgd.Evaluation(mse_dict, (X,))}, ValueError, r"evaluate\(params, \*data\) failed"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_evaluation_arguments_are_refused_before_any_compile(kwargs, error, match):
    compiles = [0]  # a value refused when built never reaches fit
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here (slicing may compile)
        with count_compilations() as compiles:
            fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=10, **kwargs)
    assert compiles[0] == 0


def test_the_plain_loop_has_no_evaluation_outputs():
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=10)
    assert result.evals is None and result.eval_steps is None


def test_a_memmap_read_in_blocks_evaluates_as_in_memory_data(tmp_path):
    x, y = fsgd.lesson_data(jax.random.key(0), n=1000)
    on_disk = []
    for name, a in (("x", x), ("y", y)):
        mapped = np.memmap(tmp_path / name, np.float32, "w+", shape=a.shape)
        mapped[:] = np.asarray(a)
        on_disk.append(mapped)
    kwargs = {"lr": 0.1, "steps": 95, "batch_size": 10, "key": jax.random.key(1),
              "rows": fsgd.Shuffled(), "evaluation": fsgd.Evaluation(mse_dict, (x[:100], y[:100]), every=20, monitor="mse", restore_best=True)}
    read = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), tuple(on_disk), run=fsgd.Run(chunk_size=7), **kwargs)
    in_memory = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), (x, y), **kwargs)
    np.testing.assert_array_equal(read.eval_steps, [20, 40, 60, 80, 95])
    assert_trees_close(read, in_memory)


def test_a_stream_refuses_evaluation_arguments():
    batches = [(np.asarray(X[:10]), np.asarray(Y[:10]))] * 3
    with pytest.raises(ValueError, match="stream of unknown length needs every"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches), lr=0.1,
                 evaluation=fsgd.Evaluation(mse_dict, (X, Y)))
    with pytest.raises(ValueError, match="Evaluation needs evaluate= or data="):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches), lr=0.1,
                 evaluation=fsgd.Evaluation(monitor="mse"))
