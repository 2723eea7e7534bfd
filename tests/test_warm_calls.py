"""A call repeating an earlier call's JAX arrays and options skips the checks
it passed (core/_warm.py): same bits, and every check that could now fail
still runs."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import backend_tolerance

import functional_sgd as fsgd
from functional_sgd.core import _data_checks, _repeat, _trainer, _warm


class OwnFit:
    """``fsgd.fit`` itself, with a memory of its own in place of the
    process's (``_trainer._FIT_MEMORY``), so a test starts from no
    remembered call; ``full_path`` counts the calls that took the full path
    (the data checks)."""

    def __init__(self):
        self.memory = _warm.Memory()
        self.full_path = 0

    def __call__(self, *args, **kwargs):
        return fsgd.fit(*args, **kwargs)


@pytest.fixture
def fit(monkeypatch):
    own = OwnFit()
    monkeypatch.setattr(_trainer, "_FIT_MEMORY", own.memory)  # fit reads it on every call
    check_data = _data_checks.check_data

    def counted(*args, **kwargs):
        own.full_path += 1
        return check_data(*args, **kwargs)

    monkeypatch.setattr(_data_checks, "check_data", counted)
    return own


def lesson():
    x, y = fsgd.lesson_data(jax.random.key(0))
    return jnp.asarray(fsgd.LESSON_START), jnp.asarray(x), jnp.asarray(y)


def schedule_fit(fit, start, x, y, indices, **kwargs):
    return fit(fsgd.linear_mse, start, (x, y), rows=fsgd.Schedule(indices), **{"lr": 0.1, **kwargs})


def test_a_repeated_call_skips_the_checks_and_keeps_the_bits(fit):
    start, x, y = lesson()
    indices = fsgd.sample_indices(jax.random.key(1), 100, 50, 10, replace=False)
    cold = schedule_fit(fit, start, x, y, indices)
    warm = schedule_fit(fit, start, x, y, indices)
    assert fit.full_path == 1
    for a, b in zip(cold, warm):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_itself_remembers_a_call(monkeypatch):
    """``fsgd.fit`` keeps one memory for the process: arrays it never saw are
    checked once, then a repeat goes straight to the loop."""
    count = []
    check_data = _data_checks.check_data
    monkeypatch.setattr(_data_checks, "check_data",
                        lambda *args, **kwargs: count.append(1) or check_data(*args, **kwargs))
    start, x, y = lesson()
    x = x + 0  # an array no earlier call named
    results = [fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20) for _ in range(3)]
    assert len(count) == 1
    for result in results[1:]:
        assert_same_result(results[0], result)


def test_a_new_lr_or_new_params_of_the_same_signature_stay_warm(fit):
    start, x, y = lesson()
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20)
    first = fit(fsgd.linear_mse, start, (x, y), lr=0.05, steps=20)
    second = fit(fsgd.linear_mse, first.params, (x, y), lr=0.05, steps=20)
    assert fit.full_path == 1
    fit.memory.forget()
    cold = fit(fsgd.linear_mse, first.params, (x, y), lr=0.05, steps=20)
    np.testing.assert_array_equal(np.asarray(second.params), np.asarray(cold.params))
    np.testing.assert_array_equal(np.asarray(second.losses), np.asarray(cold.losses))


@pytest.mark.parametrize("lr", [-0.1, 0.0, float("nan"), "0.1"])
def test_a_bad_lr_is_refused_on_the_warm_path(fit, lr):
    start, x, y = lesson()
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    with pytest.raises((ValueError, TypeError), match="lr"):
        fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=5)
    assert fit.full_path == 1


def test_anything_else_new_takes_the_full_path(fit):
    start, x, y = lesson()
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=6)  # another option
    with jax.numpy_dtype_promotion("standard"):  # params of another dtype
        fit(fsgd.linear_mse, start.astype(jnp.float16), (x, y), lr=0.1, steps=5)
    fit(fsgd.linear_mse, start, (x + 0, y), lr=0.1, steps=5)  # another array
    assert fit.full_path == 4
    bad = x.at[3, 0].set(jnp.nan)  # new data of the same shape is checked again
    with pytest.raises(ValueError, match="NaN or inf"):
        fit(fsgd.linear_mse, start, (bad, y), lr=0.1, steps=5)
    with pytest.raises(TypeError, match="drop_last"):  # equal to True, but not a bool
        fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5, batch_size=10,
                 key=jax.random.key(0), rows=fsgd.Shuffled(drop_last=1))


class UnhashableLoss:
    """A loss object with ``__eq__`` and so no ``__hash__``."""

    def __eq__(self, other):
        return isinstance(other, UnhashableLoss)

    def __call__(self, params, x, y):
        return fsgd.linear_mse(params, x, y)


@pytest.mark.parametrize("options", [{}, {"stop": fsgd.Stop(patience=3)}])
def test_a_loss_that_does_not_hash_is_checked_every_time(fit, options):
    start, x, y = lesson()
    results = [fit(UnhashableLoss(), start, (x, y), lr=0.1, steps=5, **options)
               for _ in range(2)]
    assert fit.full_path == 2
    assert_same_result(results[0], results[1])
    expected = fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5, **options)
    np.testing.assert_array_equal(np.asarray(results[0].params), np.asarray(expected.params))


def test_numpy_data_is_checked_on_every_call(fit):
    start, x, y = lesson()
    x = np.array(x)
    fit(fsgd.linear_mse, start, (x, np.asarray(y)), lr=0.1, steps=5)
    x[3, 0] = np.nan  # NumPy arrays can be written to between calls
    with pytest.raises(ValueError, match="NaN or inf"):
        fit(fsgd.linear_mse, start, (x, np.asarray(y)), lr=0.1, steps=5)
    assert fit.full_path == 2


def test_a_remembered_call_keeps_no_array_alive(fit):
    start, x, y = lesson()
    x, start = x + 0, start + 0  # arrays only this test holds
    for _ in range(3):  # remembered, then repeated (what a repeat prepares is kept too)
        fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    assert fit.full_path == 1
    gone = [weakref.ref(x), weakref.ref(start)]
    del x, start
    gc.collect()
    assert [ref() for ref in gone] == [None, None]


def test_a_remembered_call_keeps_no_option_array_alive(fit):
    """A schedule's rows and held-out data, dropped by their owner, are freed
    too: a warm call reads them from its own options, the memory keeps none."""
    start, x, y = lesson()
    indices = fsgd.sample_indices(jax.random.key(1), 100, 20, 10, replace=False)
    held_out = (x[:10] + 0, y[:10] + 0)
    rows, evaluation = fsgd.Schedule(indices), fsgd.Evaluation(data=held_out, every=5)
    results = [fit(fsgd.linear_mse, start, (x, y), lr=0.1, rows=rows, evaluation=evaluation)
               for _ in range(3)]  # remembered, then repeated
    assert fit.full_path == 1
    assert_same_result(results[0], results[2])
    gone = [weakref.ref(a) for a in (indices, *held_out)]
    del indices, held_out, rows, evaluation
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


def test_a_sweep_under_vmap_of_a_warm_call_matches(fit):
    start, x, y = lesson()
    lrs = jnp.array([0.05, 0.1])
    sweep = lambda: jax.vmap(lambda lr: fit(fsgd.linear_mse, start, (x, y), lr=lr,
                                                 steps=20).params)(lrs)
    cold = sweep()
    warm = sweep()
    assert fit.full_path == 1  # the lr is a tracer; everything else repeats
    np.testing.assert_array_equal(np.asarray(cold), np.asarray(warm))
    one = fit(fsgd.linear_mse, start, (x, y), lr=0.05, steps=20).params
    np.testing.assert_allclose(np.asarray(warm[0]), np.asarray(one), **backend_tolerance(rtol=1e-6))


def assert_same_result(a, b):
    """Every field of two FitResults: the same structure, the same bits."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("options", [
    {"lr": 0.1, "steps": 20},
    {"lr": 0.1, "steps": 20, "run": fsgd.Run(start_step=7), "batch_size": 10, "key": jax.random.key(3)},
    {"lr": 0.1, "steps": 20, "stop": fsgd.Stop(tol=0.5)},  # a stop rule: the loop counts the steps run
    {"lr": 0.1, "steps": 1},
    {"steps": 20, "run": fsgd.Run(record_params=True), "optimizer": "adam"},
])
def test_warm_calls_return_the_cold_result_and_compile_nothing(fit, options):
    """The warm path fills in on the host what the loop leaves out (steps_run,
    step), passes the start's counters and a repeated float lr as device
    scalars: every field must be the cold call's, and nothing compiles."""
    import optax
    from helpers import count_compilations

    # From empty loop caches: past COMPILED_LOOPS_KEPT entries (a long session) the
    # bound clears them all, and the call after that compiles again, warm or not.
    _repeat._compiled_loop.clear_cache()
    _repeat._plain_loop.clear_cache()
    promotion = "strict"
    if options.get("optimizer") == "adam":  # optax's adam needs standard promotion
        options, promotion = {**options, "optimizer": optax.adam(0.05)}, "standard"
    start, x, y = lesson()
    with jax.numpy_dtype_promotion(promotion):
        cold = fit(fsgd.linear_mse, start, (x, y), **options)
        with count_compilations() as compiled:
            warm = [fit(fsgd.linear_mse, start, (x, y), **options) for _ in range(3)]
    assert compiled[0] == 0 and fit.full_path == 1
    for result in warm:
        assert_same_result(cold, result)
    if "optimizer" in options:
        assert warm[-1].opt_state is not None


def test_a_repeated_float_lr_is_passed_on_the_device_with_the_same_bits(fit):
    start, x, y = lesson()
    lrs = [0.1, 0.1, 0.1, 0.07, 0.1, 0.07, 0.07]
    warm = [fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=20) for lr in lrs]
    again = fit.memory.last()
    seen, on_device = again.last_lr
    assert seen == 0.07 and on_device is not None and on_device.weak_type
    assert fit.full_path == 1
    fit.memory.forget()
    for lr, result in zip(lrs, warm):
        assert_same_result(fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=20), result)


def test_a_remembered_call_repeated_inside_jit_matches(fit):
    """Inside another jit the loop's compiler options cannot apply: the warm
    path falls back to the plain loop, as the full path does."""
    start, x, y = lesson()
    outside = fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20)
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20)
    inside = jax.jit(lambda: fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20))()
    assert fit.full_path == 1
    np.testing.assert_allclose(np.asarray(inside.params), np.asarray(outside.params),
                               rtol=1e-6)  # another compile may round differently
    assert int(inside.step) == 20 and int(inside.steps_run) == 20


def test_calls_naming_other_arrays_or_option_types_do_not_meet(fit):
    """The key is one flat tuple: a call with one more array, or an option of
    another type that compares equal, is another call."""
    start, x, y = lesson()
    indices = fsgd.sample_indices(jax.random.key(1), 100, 20, 10)
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20)
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20, rows=fsgd.Schedule(indices))
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20, run=fsgd.Run(record_params=False))
    assert fit.full_path == 2
    with pytest.raises(TypeError, match="record_params"):
        fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20, run=fsgd.Run(record_params=0))
    key = jax.random.key(0)
    fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20, batch_size=1, key=key)
    for other_type in (dict(steps=20.0), dict(steps=20, batch_size=True, key=key)):
        with pytest.raises(TypeError):  # equal to a remembered call's value, not of its type
            fit(fsgd.linear_mse, start, (x, y), lr=0.1, **other_type)


def test_the_warm_path_passes_carry_and_inputs_fields_in_their_order():
    """Again passes both namedtuples as one tuple of their fields, by position."""
    from functional_sgd._types import Carry, Inputs

    assert Carry._fields == ("params", "opt_state", "step", "stop", "state", "best")
    assert Inputs._fields == ("data", "lr", "key", "indices", "tol", "patience", "rng",
                              "eval_data")


def line_loss(params, x, y):
    """The lesson's loss with params as a pytree of two leaves ``a, b`` (in
    that order: ``(a, b)``, ``[a, b]``, ``{"a": a, "b": b}``, ...)."""
    a, b = jax.tree.leaves(params)
    return jnp.mean((x[:, 0] * a + x[:, 1] * b - y) ** 2)


@pytest.mark.parametrize("as_pytree", [tuple, list, lambda ab: {"a": ab[0], "b": ab[1]},
                                       lambda ab: (ab[0], [ab[1], None])])
def test_params_as_a_tuple_list_or_dict_stay_warm_with_the_same_bits(fit, as_pytree):
    """Params as a container of JAX arrays (the ``(w, b)`` of a hand-written
    run): a repeat skips the checks, as one array does (on 2 cores the checks
    took ~0.25 ms of a 10 ms run right after the previous one), and gives
    the cold call's bits."""
    start, x, y = lesson()
    params = as_pytree((start[0], start[1]))
    options = {"lr": 0.1, "steps": 20, "batch_size": 10, "key": jax.random.key(3),
               "rows": fsgd.Shuffled()}
    cold = fit(line_loss, params, (x, y), **options)
    warm = fit(line_loss, params, (x, y), **options)
    moved = fit(line_loss, cold.params, (x, y), **options)  # new params, same signature
    assert fit.full_path == 1
    assert_same_result(cold, warm)
    fit.memory.forget()
    assert_same_result(fit(line_loss, cold.params, (x, y), **options), moved)


def test_params_of_another_structure_or_leaves_take_the_full_path(fit):
    start, x, y = lesson()
    a, b = start[0], start[1]
    fit(line_loss, (a, b), (x, y), lr=0.1, steps=5)
    fit(line_loss, [a, b], (x, y), lr=0.1, steps=5)  # a list is another structure
    fit(line_loss, {"a": a, "b": b}, (x, y), lr=0.1, steps=5)
    fit(line_loss, {"b": b, "a": a}, (x, y), lr=0.1, steps=5)  # the same dict
    with jax.numpy_dtype_promotion("standard"):  # a leaf of another dtype
        fit(line_loss, (a, b.astype(jnp.float16)), (x, y), lr=0.1, steps=5)
    assert fit.full_path == 4
    for params in [(a, 1.0), (a, np.float32(1.0))]:  # a Python or NumPy leaf: every call
        fit(line_loss, params, (x, y), lr=0.1, steps=5)
        fit(line_loss, params, (x, y), lr=0.1, steps=5)
    assert fit.full_path == 8
    with pytest.raises(ValueError, match="nothing to train"):  # refused, warm or not
        fit(line_loss, (a.astype(jnp.int32), b.astype(jnp.int32)), (x, y), lr=0.1,
                 steps=5)


def test_params_of_a_pytree_class_take_the_full_path():
    """A pytree class's structure may hold anything (compared by its own
    ``__eq__``): such params are checked on every call."""
    import collections

    Line = collections.namedtuple("Line", "a b")
    a = jnp.zeros(())
    assert _warm.signature(Line(a, a)) is None and _warm.signature((Line(a, a),)) is None
    assert _warm.signature((a, [a, {"c": a, "d": None}])) is not None
    assert _warm.signature(()) is None and _warm.signature((a, np.zeros(()))) is None


def digits_run(fit, **kwargs):
    """A run of the 3-vs-7 classifier that evaluates held-out accuracy every 7 steps."""
    from functional_sgd.lesson import accuracy, classifier_mnist_loss, init_classifier

    digits = fsgd.digits_3_vs_7(jax.random.key(0))
    train = (jnp.asarray(digits.train_x), jnp.asarray(digits.train_y))
    valid = (jnp.asarray(digits.valid_x), jnp.asarray(digits.valid_y))
    params = init_classifier(jax.random.key(1), 64, std=0.1)
    key = jax.random.key(2)  # one array: a new key is another call

    def run(params=params, valid=valid, **more):
        evaluation = fsgd.Evaluation(accuracy_of, valid, every=7, **{**kwargs, **more})
        return fit(classifier_mnist_loss, params, train, lr=0.05, steps=200,
                        batch_size=10, key=key, rows=fsgd.Shuffled(), evaluation=evaluation)

    def accuracy_of(params, x, y):
        return {"accuracy": accuracy(params, x, y)}

    return run, params, valid


@pytest.mark.parametrize("options", [
    {},
    {"monitor": "accuracy", "mode": "max", "patience": 4},
    {"monitor": "accuracy", "mode": "max", "patience": 4, "restore_best": True},
])
def test_evaluated_calls_stay_warm_with_the_cold_results(fit, options):
    """fit(evaluate=...) repeated with the same held-out arrays skips the
    checks and compiles nothing; every field (evaluations, the step the rule
    stopped at, the best params restored) is the cold call's, bit for bit."""
    from helpers import count_compilations

    _repeat._compiled_loop.clear_cache()
    _repeat._plain_loop.clear_cache()
    run, _, _ = digits_run(fit, **options)
    cold = run()
    with count_compilations() as compiled:
        warm = [run(), run(params=cold.params)]
    assert compiled[0] == 0 and fit.full_path == 1
    assert_same_result(cold, warm[0])
    assert not np.array_equal(warm[1].evals["accuracy"], cold.evals["accuracy"])
    fit.memory.forget()
    assert_same_result(run(params=cold.params), warm[1])
    if "patience" in options:
        assert int(cold.steps_run) < 200  # the rule fired
    if options.get("restore_best"):
        unrestored = run(restore_best=False)
        assert not all(np.array_equal(a, b) for a, b in zip(unrestored.params, cold.params))


def test_new_held_out_arrays_are_checked_again(fit):
    run, _, valid = digits_run(fit)
    run()
    run(valid=(valid[0] + 0, valid[1]))  # another array: the full path
    assert fit.full_path == 2
    with pytest.raises(ValueError, match=r"Evaluation\(data=\)\[0\] contains NaN"):
        run(valid=(valid[0].at[0, 0].set(jnp.nan), valid[1]))
    run(valid=list(valid))  # not a tuple: always the full path
    assert fit.full_path == 4


ON_ANOTHER_DEVICE = """
import json, jax, numpy as np
import functional_sgd as fsgd
from functional_sgd.core import _trainer
other = jax.devices()[1]  # not the default device, as a CPU beside a GPU
x, y = (jax.device_put(a, other) for a in fsgd.lesson_data(jax.random.key(0)))
start = jax.device_put(np.asarray(fsgd.LESSON_START, np.float32), other)
kwargs = dict(lr=0.1, steps=20, batch_size=10, key=jax.device_put(jax.random.key(1), other))
for _ in range(3):  # cold, first repeat (the warm path's scalars made), warm
    first = fsgd.fit(fsgd.linear_mse, start, (x, y), **kwargs)
for _ in range(3):  # a continuation from the step the warm call returned
    later = fsgd.fit(fsgd.linear_mse, first.params, (x, y), run=fsgd.Run(start_step=first.step),
                     **kwargs)
made = jax.tree.leaves([(w.again.known, w.again.last_lr[1])
                        for w in _trainer._FIT_MEMORY._calls.values()])
print(json.dumps({"other": str(other), "made on": sorted({str(d) for a in made
                                                          for d in a.devices()}),
                  "results on": sorted({str(d) for a in jax.tree.leaves((first, later))
                                        if hasattr(a, "devices") for d in a.devices()})}))
"""


def test_a_warm_call_on_another_device_than_the_default_copies_nothing():
    """Params and data on a device that is not the default one (a CPU device
    of a GPU machine): the run's own scalars (step counter, stop state, a
    repeated lr, the counts in the result) are made on that device, so no
    call, and no continuation from ``result.step``, copies them across."""
    import json
    import os
    import subprocess
    import sys

    from helpers import cpu_subprocess_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", ON_ANOTHER_DEVICE], capture_output=True,
                          text=True, timeout=240, env=cpu_subprocess_env(2, root))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["made on"] == [seen["other"]]
    assert seen["results on"] == [seen["other"]]
