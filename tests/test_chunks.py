"""A run cut into compiled chunks equals one run, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from helpers import KEY, assert_trees_close, count_compilations, fit_lesson

MODES = {
    "batch": {},
    "mini-batch": {"batch_size": 10, "key": jax.random.key(1)},
    "epochs": {"batch_size": 7, "key": jax.random.key(1), "rows": fsgd.Shuffled()},
    "indices": {"rows": fsgd.Schedule(np.asarray(fsgd.sample_indices(KEY, 100, 95, 3)))},
}


def fit(**kwargs):
    return fit_lesson(**{"steps": 95, **kwargs})


def assert_same_run(actual, expected):
    assert_trees_close(actual._replace(opt_state=None), expected._replace(opt_state=None))
    assert_trees_close(actual.opt_state, expected.opt_state)


@pytest.mark.parametrize("mode", MODES)
def test_chunks_give_the_same_bits_as_one_call(mode):
    kwargs = MODES[mode]
    assert_same_run(fit(run=fsgd.Run(chunk_size=20, record_params=True), **kwargs),
                    fit(run=fsgd.Run(record_params=True), **kwargs))


def test_chunks_carry_the_optimizer_state():
    optax = pytest.importorskip("optax")
    kwargs = dict(lr=None, optimizer=optax.sgd(0.05, momentum=0.9), batch_size=10, key=KEY)
    assert_same_run(fit(run=fsgd.Run(chunk_size=30), **kwargs), fit(**kwargs))


@pytest.mark.parametrize("rule", [{"stop": fsgd.Stop(tol=0.2)}, {"stop": fsgd.Stop(patience=40), "batch_size": 1, "key": KEY}])
def test_stop_rules_hold_across_chunk_boundaries(rule):
    whole = fit(steps=600, **rule)
    chunked = fit(steps=600, run=fsgd.Run(chunk_size=7), **rule)
    assert 7 < int(whole.steps_run) < 600  # it stopped, past the first chunk
    assert_same_run(chunked, whole)


def test_on_chunk_sees_every_chunk_in_order():
    seen = []
    result = fit(run=fsgd.Run(chunk_size=40, on_chunk=lambda r: seen.append(
        (int(r.step), r.losses.shape[0], float(r.losses[0])))))
    assert [s[:2] for s in seen] == [(40, 40), (80, 40), (95, 15)]
    assert [s[2] for s in seen] == [float(result.losses[i]) for i in (0, 40, 80)]


def test_chunks_divergence_is_reported_at_its_global_step():
    whole, chunked = fit(lr=3.0, steps=200), fit(lr=3.0, steps=200, run=fsgd.Run(chunk_size=9))
    assert int(chunked.diverged_at) == int(whole.diverged_at) > 9


def test_equal_chunks_compile_once():
    fit(steps=40, run=fsgd.Run(chunk_size=10)).params.block_until_ready()  # warm up
    with count_compilations() as compiled:
        fit(steps=80, run=fsgd.Run(chunk_size=10), lr=0.2).params.block_until_ready()
    assert compiled[0] == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (lambda: {"run": fsgd.Run(chunk_size=0)}, ValueError, "chunk_size must be >= 1"),
    (lambda: {"run": fsgd.Run(chunk_size=2.0)}, TypeError, "chunk_size must be an int"),
    (lambda: {"run": fsgd.Run(on_chunk=print)}, ValueError, "on_chunk needs chunk_size"),
])
def test_bad_chunk_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        fit(**kwargs)


def test_chunks_refuse_to_be_traced():
    with pytest.raises(ValueError, match="cannot be traced"):
        jax.vmap(lambda lr: fit(lr=lr, run=fsgd.Run(chunk_size=10)).params)(jnp.array([0.1, 0.2]))
