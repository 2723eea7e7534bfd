"""The front door: fit's dozen parameters, the option values, the explicit
Trainer, old keywords answered with their new home, and a documented, typed
public API."""

import dataclasses
import inspect
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _keys, _trainer, _warm
from helpers import count_compilations

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)


def documented(function, section="Args"):
    """The names a Google-style docstring lists under ``section``."""
    doc = inspect.getdoc(function) or ""
    match = re.search(rf"^{section}:\n((?:[ ]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not match:
        return set()
    body = match.group(1)
    indent = min(len(line) - len(line.lstrip()) for line in body.splitlines() if line.strip())
    names = set()
    for line in body.splitlines():
        if line.strip() and len(line) - len(line.lstrip()) == indent:
            head = line.strip().split(":")[0]
            names.update(name.strip().lstrip("*") for name in head.split(","))
    return names


def public_functions():
    for name in sorted(dir(fsgd)):
        value = getattr(fsgd, name)
        if name.startswith("_") or inspect.ismodule(value) or not callable(value):
            continue
        if inspect.isclass(value):
            continue
        yield name, value
    yield "Trainer", fsgd.Trainer
    yield "Trainer.__call__", fsgd.Trainer.__call__


@pytest.mark.parametrize("name, function", list(public_functions()),
                         ids=[name for name, _ in public_functions()])
def test_every_public_function_documents_each_of_its_parameters(name, function):
    parameters = {p.name for p in inspect.signature(function).parameters.values()
                  if p.name != "self"}
    assert parameters == documented(function), f"{name}: Args and signature differ"


VALUES = [fsgd.Sampled, fsgd.Shuffled, fsgd.Schedule, fsgd.Stop, fsgd.Evaluation, fsgd.Model,
          fsgd.Run]


@pytest.mark.parametrize("kind", VALUES, ids=lambda kind: kind.__name__)
def test_every_option_value_is_frozen_and_documents_its_fields(kind):
    fields = {f.name for f in dataclasses.fields(kind)}
    assert fields == documented(kind, "Attributes")
    assert kind.__dataclass_params__.frozen


def test_every_public_signature_is_annotated():
    for name, function in public_functions():
        signature = inspect.signature(function)
        missing = [p.name for p in signature.parameters.values()
                   if p.name != "self" and p.annotation is inspect.Parameter.empty]
        assert not missing, f"{name}: {missing} not annotated"
        assert signature.return_annotation is not inspect.Signature.empty, name


def test_fit_has_at_most_14_parameters_and_the_lesson_calls_stay_as_written():
    assert len(inspect.signature(fsgd.fit).parameters) <= 14
    batch = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=100)
    mini = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=100, batch_size=10,
                    key=jax.random.key(1))
    assert float(batch.losses[-1]) < 0.1 and float(mini.losses[-1]) < 0.2


@pytest.mark.parametrize("old", sorted(_trainer.MOVED))
def test_every_old_keyword_gets_a_type_error_naming_its_new_home(old):
    home = _trainer.MOVED[old].split("=")[0]
    for call in (lambda: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5, **{old: 1}),
                 lambda: fsgd.Trainer(fsgd.linear_mse, steps=5, **{old: 1})):
        with pytest.raises(TypeError, match=rf"no longer takes {old}=: it is now {home}="):
            call()


def test_lr_sweep_answers_its_old_keywords_too():
    with pytest.raises(TypeError, match="eval_every=: it is now evaluation="):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([0.1, 0.2]), steps=5,
                      eval_every=2)


def test_an_unknown_keyword_is_still_a_plain_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'lrr'"):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lrr=0.1, steps=5)


@pytest.mark.parametrize("build, error, match", [
    (lambda: fsgd.Shuffled(drop_last=0), TypeError, "drop_last must be True or False"),
    (lambda: fsgd.Schedule([[0, 1]]), TypeError, "indices must be an integer array"),
    (lambda: fsgd.Schedule(np.zeros((3, 2))), TypeError, "indices must be an integer array"),
    (lambda: fsgd.Schedule(np.zeros(3, int)), ValueError, r"indices must have shape"),
    (lambda: fsgd.Stop(), ValueError, "Stop needs tol= or patience="),
    (lambda: fsgd.Stop(patience=0), ValueError, "patience must be >= 1"),
    (lambda: fsgd.Stop(tol="a"), TypeError, "tol must be a real number"),
    (lambda: fsgd.Evaluation(), ValueError, "Evaluation needs evaluate= or data="),
    (lambda: fsgd.Evaluation("acc", (X, Y)), TypeError, "evaluate must be callable"),
    (lambda: fsgd.Evaluation(data=(X, Y), patience=3), ValueError, "needs monitor"),
    (lambda: fsgd.Evaluation(data=(X, Y), restore_best=True), ValueError, "needs monitor"),
    (lambda: fsgd.Evaluation(data=(X, Y), monitor="loss", mode="up"), ValueError,
     "mode must be 'min' or 'max'"),
    (lambda: fsgd.Evaluation(data=(X, Y), every=0), ValueError, "every must be >= 1"),
    (lambda: fsgd.Model(has_aux=1), TypeError, "has_aux must be True or False"),
    (lambda: fsgd.Model(rng=3), TypeError, "rng must be a jax.random key"),
    (lambda: fsgd.Run(chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (lambda: fsgd.Run(check_finite="no"), TypeError, "check_finite must be True or False"),
    (lambda: fsgd.Run(checkpoint=3), TypeError, "checkpoint must be a file path"),
    (lambda: fsgd.Run(speed="fast"), TypeError, "speed must be a functional_sgd.speed.SpeedPlan"),
])
def test_option_values_check_themselves_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("kwargs, match", [
    ({"rows": fsgd.Shuffled()}, "needs batch_size"),
    ({"rows": "shuffled", "batch_size": 10, "key": jax.random.key(1)},
     r"rows must be fsgd.Sampled\(...\) or fsgd.Shuffled"),
    ({"stop": fsgd.Stop(tol=0.1), "evaluation": fsgd.Evaluation(data=(X, Y), monitor="loss",
                                                                 patience=2)},
     "one rule at a time"),
    ({"epochs": 2, "steps": 10}, "give steps= or epochs=, not both"),
    ({"epochs": 2, "rows": fsgd.Schedule(np.zeros((4, 2), int))}, "the schedule's rows give"),
])
def test_combinations_that_cannot_run_are_refused_with_the_reason(kwargs, match):
    kwargs = {"steps": None, **kwargs} if "epochs" in kwargs and "steps" not in kwargs else kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, **{"steps": 5, **kwargs})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps must be >= 1; got 0"),
    ({"steps": -3}, ValueError, "steps must be >= 1; got -3"),
    ({"steps": 2.0}, TypeError, "steps must be an int"),
    ({"steps": True}, TypeError, "steps must be an int"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1; got 0"),
    ({"epochs": "2"}, TypeError, "epochs must be an int"),
    ({"steps": 5, "batch_size": 0}, ValueError, "batch_size must be >= 1; got 0"),
    ({"steps": 5, "batch_size": 2.5}, TypeError, "batch_size must be an int"),
    ({"steps": 5, "epochs": 2}, ValueError, "give steps= or epochs=, not both"),
])
def test_a_trainer_refuses_what_fit_refuses_when_it_is_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        fsgd.Trainer(fsgd.linear_mse, **kwargs)
    with pytest.raises(error, match=match):  # the same words from fit
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, key=jax.random.key(1), **kwargs)


@pytest.mark.parametrize("rows, batch_size, per_epoch", [
    (None, None, 1), (fsgd.Sampled(), 30, 4), (fsgd.Shuffled(), 30, 3),
    (fsgd.Shuffled(drop_last=False), 30, 4)])
def test_epochs_count_the_steps_of_each_kind_of_rows(rows, batch_size, per_epoch):
    key = None if batch_size is None else jax.random.key(1)
    by_epochs = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, epochs=3,
                         batch_size=batch_size, key=key, rows=rows)
    by_steps = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=3 * per_epoch,
                        batch_size=batch_size, key=key, rows=rows)
    assert by_epochs.losses.shape == (3 * per_epoch,)
    np.testing.assert_array_equal(by_epochs.params, by_steps.params)


def test_evaluation_every_epoch_and_of_the_loss_by_default():
    held_out = fsgd.lesson_data(jax.random.key(2))
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, epochs=3, batch_size=30,
                      key=jax.random.key(1), rows=fsgd.Shuffled(drop_last=False),
                      evaluation=fsgd.Evaluation(data=held_out, every="epoch"))
    assert result.eval_steps.tolist() == [4, 8, 12]
    # its last value is the training loss on the held-out rows at the final params
    np.testing.assert_allclose(result.evals["loss"][-1],
                               fsgd.linear_mse(result.params, *held_out), rtol=1e-6)


def test_run_after_continues_a_run_with_the_same_bits():
    options = dict(lr=0.1, batch_size=10, key=jax.random.key(1))
    whole = fsgd.fit(fsgd.linear_mse, START, (X, Y), steps=100, **options)
    first = fsgd.fit(fsgd.linear_mse, START, (X, Y), steps=50, **options)
    rest = fsgd.fit(fsgd.linear_mse, first.params, (X, Y), steps=50, **options,
                    run=fsgd.Run.after(first))
    np.testing.assert_array_equal(whole.params, rest.params)
    np.testing.assert_array_equal(whole.losses[50:], rest.losses)


def test_a_trainer_checks_and_compiles_once_then_goes_straight_to_the_loop(monkeypatch):
    trainer = fsgd.Trainer(fsgd.linear_mse, steps=20, batch_size=10)
    x, y, key = jnp.asarray(X), jnp.asarray(Y), jax.random.key(1)
    cold = trainer(START, (x, y), lr=0.1, key=key)
    checks = []
    monkeypatch.setattr(_trainer, "run_spec",
                        lambda *a, **k: checks.append(1) or pytest.fail("checked again"))
    with count_compilations() as compiled:
        warm = [trainer(START, (x, y), lr=lr, key=key) for lr in (0.1, 0.05)]
    assert compiled[0] == 0 and not checks
    np.testing.assert_array_equal(cold.params, warm[0].params)
    assert not np.array_equal(warm[0].params, warm[1].params)
    # another trainer of the same spec starts cold: no state is shared but the compiled loop
    monkeypatch.undo()
    with count_compilations() as compiled:
        again = fsgd.Trainer(fsgd.linear_mse, steps=20, batch_size=10)(START, (x, y), lr=0.1,
                                                                        key=key)
    assert compiled[0] == 0
    np.testing.assert_array_equal(again.params, cold.params)


def test_a_trainer_whose_spec_is_replaced_runs_the_new_spec():
    """``trainer.spec`` is an attribute: a call after it is replaced runs the
    new spec, not a call remembered under the old one."""
    trainer = fsgd.Trainer(fsgd.linear_mse, steps=20)
    x, y = jnp.asarray(X), jnp.asarray(Y)
    trainer(START, (x, y), lr=0.1)
    trainer(START, (x, y), lr=0.1)  # remembered
    trainer.spec = trainer.spec._replace(steps=50)
    longer = trainer(START, (x, y), lr=0.1)
    assert longer.losses.shape == (50,) and int(longer.steps_run) == 50
    expected = fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1, steps=50)
    np.testing.assert_array_equal(longer.params, expected.params)


def test_the_trainer_is_what_fit_runs():
    trainer = fsgd.Trainer(fsgd.linear_mse, steps=30, rows=fsgd.Shuffled(), batch_size=7,
                           stop=fsgd.Stop(patience=5))
    by_trainer = trainer(START, (X, Y), lr=0.1, key=jax.random.key(1))
    by_fit = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, key=jax.random.key(1), steps=30,
                      rows=fsgd.Shuffled(), batch_size=7, stop=fsgd.Stop(patience=5))
    for a, b in zip(by_trainer, by_fit):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "Shuffled" in repr(trainer)


def example_value(kind):
    """A valid value of each option kind, with every field set away from its default."""
    return {
        fsgd.Sampled: fsgd.Sampled(),
        fsgd.Shuffled: fsgd.Shuffled(drop_last=False),
        fsgd.Schedule: fsgd.Schedule(jnp.zeros((5, 2), jnp.int32), padded=True),
        fsgd.Stop: fsgd.Stop(tol=0.5, patience=3),
        fsgd.Evaluation: fsgd.Evaluation(fsgd.linear_mse, (jnp.asarray(X), jnp.asarray(Y)),
                                         every=2, monitor="loss", mode="max", patience=2,
                                         tol=0.1, restore_best=True,
                                         on_evaluation=lambda step, evals: None),
        fsgd.Model: fsgd.Model(rng=jax.random.key(3), state=jnp.zeros(2), has_aux=True,
                               trainable=lambda leaf: True),
        fsgd.Run: fsgd.Run(chunk_size=3, on_chunk=print, checkpoint="run.npz", mesh="mesh",
                           record_params=True, check_finite=False, start_step=4,
                           opt_state=jnp.zeros(1), speed=fsgd.speed.SpeedPlan(), progress=True),
    }[kind]


CHECKED_EVERY_CALL = {
    fsgd.Evaluation: {"on_evaluation": None},  # a host loop over periods
    fsgd.Run: {"chunk_size": None, "on_chunk": None, "checkpoint": None, "mesh": None,
               "opt_state": None, "progress": False},
}
"""The fields that, set, make a call one checked every time (``_trainer.spec_part``)."""

OTHER = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2,
         str: lambda v: {"max": "min", "min": "max"}.get(v, v + "x")}


def changed(value):
    """Another value of the same kind: arrays new objects, others another value."""
    if isinstance(value, jax.Array):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(value, 1)
        return value + 0
    if type(value) in OTHER:
        return OTHER[type(value)](value)
    if isinstance(value, tuple):
        return tuple(changed(v) for v in value)
    if callable(value):
        return lambda *args: value(*args)
    if isinstance(value, fsgd.speed.SpeedPlan):
        return dataclasses.replace(value, column_major=not value.column_major)
    raise AssertionError(f"no change for {value!r}")


@pytest.mark.parametrize("name, value", [("stop", fsgd.Stop(tol=0.5)), ("rows", fsgd.Shuffled()),
                                         ("run", fsgd.Run(record_params=True))])
def test_an_option_unpickled_from_a_version_without_keys_trains(name, value):
    """A value pickled before values kept their part of a key (its state has
    none) trains as a new value does, and works out its part when first used."""
    old = pickle.loads(pickle.dumps(value))
    del old.__dict__[_keys._PART]  # as in the state of an older pickle
    x, y = jnp.asarray(X), jnp.asarray(Y)
    kwargs = {"lr": 0.1, "steps": 20, "batch_size": 10, "key": jax.random.key(0)}
    from_old = fsgd.fit(fsgd.linear_mse, START, (x, y), **kwargs, **{name: old})
    expected = fsgd.fit(fsgd.linear_mse, START, (x, y), **kwargs, **{name: value})
    np.testing.assert_array_equal(from_old.params, expected.params)
    np.testing.assert_array_equal(from_old.losses, expected.losses)
    assert _keys.kept_part(old) == _keys.kept_part(value)


@pytest.mark.parametrize("kind", VALUES, ids=lambda kind: kind.__name__)
def test_each_field_of_each_value_joins_the_key_of_a_remembered_call(kind):
    """No key is listed by hand: every field of every value is part of it
    (an array by identity), so changing any one gives another key."""
    value = example_value(kind)
    values = [value] + [dataclasses.replace(value, **{field.name: changed(getattr(value, field.name))})
                        for field in dataclasses.fields(kind)]  # all alive: no id is reused

    def key(option):
        part = _keys.kept_part(option)
        return part.flat, tuple(map(id, part.arrays))

    keys = {key(option) for option in values}
    assert len(keys) == 1 + len(dataclasses.fields(kind))
    # And through a call's key: each field a remembered call may hold, changed,
    # gives another key; each that makes a call checked every time gives none.
    if kind is fsgd.Model:
        return  # a model's parts: every call is checked
    name = {fsgd.Sampled: "rows", fsgd.Shuffled: "rows", fsgd.Schedule: "rows",
            fsgd.Stop: "stop", fsgd.Evaluation: "evaluation", fsgd.Run: "run"}[kind]
    data, batch_key = (jnp.asarray(X), jnp.asarray(Y)), jax.random.key(0)

    def call_key(option):
        spec = _trainer.Spec(fsgd.linear_mse, None, 5, None, 2, **{name: option})
        call = _warm.key(_trainer.spec_part(spec), START, data, batch_key)
        return None if call is None else call[0]

    unremembered = CHECKED_EVERY_CALL.get(kind, {})
    base = dataclasses.replace(value, **unremembered)
    for field in unremembered:
        assert call_key(dataclasses.replace(base, **{field: getattr(value, field)})) is None
    others = [dataclasses.replace(base, **{field.name: changed(getattr(base, field.name))})
              for field in dataclasses.fields(kind) if field.name not in unremembered]
    call_keys = {call_key(option) for option in [base, *others]}
    assert None not in call_keys and len(call_keys) == 1 + len(others)
