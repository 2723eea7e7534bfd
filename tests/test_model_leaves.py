"""Params of any pytree: which leaves train, which pass through, and the
errors that name the argument (``params``, ``trainable``, ``rng``,
``state``, ``has_aux``, ``mesh``)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import X, Y, assert_trees_close, backend_tolerance

import functional_sgd as fsgd


def line(params, x, y):
    """The lesson's line, from a dict that also holds things that do not train."""
    assert params["n"] == 3 and params["act"] is jnp.tanh and params["none"] is None
    return fsgd.linear_mse(params["a"], x, y) + 0.0 * params["b"]


def mixed_params():
    return {"a": jnp.array(fsgd.LESSON_START), "b": 0.5, "act": jnp.tanh, "n": 3,
            "count": jnp.arange(3), "flag": np.bool_(True), "none": None,
            "key": jax.random.key(5)}


def test_non_float_leaves_pass_through_and_floats_train():
    params = mixed_params()
    result = fsgd.fit(line, params, (X, Y), lr=0.1, steps=100, optimizer=None)
    lesson = fsgd.fit(fsgd.linear_mse, params["a"], (X, Y), lr=0.1, steps=100)
    assert set(result.params) == set(params)
    assert_trees_close(result.params["a"], lesson.params, rtol=1e-6)
    assert result.params["act"] is jnp.tanh and result.params["n"] == 3
    assert result.params["none"] is None
    np.testing.assert_array_equal(result.params["count"], params["count"])
    assert bool(result.params["flag"])
    np.testing.assert_array_equal(jax.random.key_data(result.params["key"]),
                                  jax.random.key_data(params["key"]))
    # a Python float trains, as a float array (its gradient here is zero)
    assert jnp.asarray(result.params["b"]).dtype == jnp.float32


def test_the_optimizer_sees_only_the_trainable_leaves():
    result = fsgd.fit(line, mixed_params(), (X, Y), optimizer=optax.sgd(0.1, momentum=0.9),
                      steps=20)
    trace = result.opt_state[0].trace
    assert sorted(k for k, v in trace.items() if v is not None) == ["a", "b"]
    assert len(jax.tree.leaves(trace)) == 2  # no state for what does not train
    again = fsgd.fit(line, result.params, (X, Y), optimizer=optax.sgd(0.1, momentum=0.9),
                     steps=20, run=fsgd.Run(start_step=result.step, opt_state=result.opt_state))
    assert float(again.losses[-1]) < float(result.losses[-1])


def test_trainable_freezes_more_by_prefix_or_function():
    params = {"a": jnp.array(fsgd.LESSON_START), "frozen": {"w": jnp.ones(2), "v": jnp.ones(3)}}

    def loss(p, x, y):
        return fsgd.linear_mse(p["a"] * p["frozen"]["w"], x, y) + (p["frozen"]["v"] ** 2).sum()

    by_prefix = fsgd.fit(loss, params, (X, Y), lr=0.1, steps=30,
                         model=fsgd.Model(trainable={"a": True, "frozen": False}))
    by_function = fsgd.fit(loss, params, (X, Y), lr=0.1, steps=30,
                           model=fsgd.Model(trainable=lambda leaf: leaf.shape == (2,) and leaf.sum() != 2.0))
    for result in (by_prefix, by_function):
        assert_trees_close(result.params["frozen"], params["frozen"])
        assert float(result.losses[-1]) < float(result.losses[0])
    assert_trees_close(by_prefix, by_function)
    everything = fsgd.fit(loss, params, (X, Y), lr=0.1, steps=30)
    assert not np.allclose(everything.params["frozen"]["v"], 1.0)


def test_a_frozen_array_leaf_is_never_differentiated():
    """A leaf ``trainable`` freezes is a constant of the gradient: a function
    whose derivative must never be taken (its JVP raises) may read it."""
    @jax.custom_jvp
    def read_only(w):
        return w

    @read_only.defjvp
    def _never(primals, tangents):
        raise AssertionError("the frozen leaf was differentiated")

    params = {"a": jnp.array(fsgd.LESSON_START), "frozen": jnp.array([1.0, 0.5])}

    def loss(p, x, y):
        return fsgd.linear_mse(p["a"] * read_only(p["frozen"]), x, y)

    result = fsgd.fit(loss, params, (X, Y), lr=0.1, steps=10,
                      model=fsgd.Model(trainable={"a": True, "frozen": False}))
    assert np.array_equal(result.params["frozen"], params["frozen"])
    assert float(result.losses[-1]) < float(result.losses[0])
    with pytest.raises(AssertionError, match="differentiated"):  # the check can fail
        fsgd.fit(loss, params, (X, Y), lr=0.1, steps=10)


def test_numpy_scalars_and_python_floats_are_params():
    result = fsgd.fit(lambda p: (p[0] - 3.0) ** 2 + (p[1] - 1.0) ** 2,
                      (np.float32(0.0), 0.0), lr=0.25, steps=20)
    assert [round(float(p), 4) for p in result.params] == [3.0, 1.0]


def test_state_and_aux_with_a_stop_rule_and_a_checkpoint(tmp_path):
    """A running mean as state, the batch mean as aux: a stop rule leaves
    NaN aux after the stop; a resumed checkpoint has the bits of one call."""
    def loss(a, running, x, y, *, key):
        noise = 1.0 + 0.01 * jax.random.normal(key, ())
        value = fsgd.linear_mse(a * noise, x, y)
        return value, 0.9 * running + 0.1 * x.mean(axis=0), {"mean": x.mean(), "n": x.shape[0]}

    def run(**kwargs):
        return fsgd.fit(loss, jnp.array(fsgd.LESSON_START), (X, Y), lr=0.1, steps=40,
                        batch_size=10, key=jax.random.key(1), model=fsgd.Model(rng=jax.random.key(2), state=jnp.zeros(2), has_aux=True), **kwargs)

    one = run()
    assert one.aux["mean"].shape == (40,) and one.aux["n"].dtype == jnp.int32
    assert int(one.aux["n"][0]) == 10
    assert float(jnp.abs(one.state).sum()) > 0
    path = os.fspath(tmp_path / "run.npz")
    killed_after(3, run, chunk_size=7, checkpoint=path)
    assert_trees_close(run(run=fsgd.Run(chunk_size=7, checkpoint=path)), one)
    stopped = run(stop=fsgd.Stop(tol=float(jnp.sort(one.losses)[5]) + 1e-6))
    steps = int(stopped.steps_run)
    assert steps < 40
    assert not np.isnan(stopped.aux["mean"][:steps]).any()
    assert np.isnan(stopped.aux["mean"][steps:]).all()
    assert (np.asarray(stopped.aux["n"][steps:]) == 0).all()


def test_record_params_of_a_model_with_frozen_leaves():
    result = fsgd.fit(line, mixed_params(), (X, Y), lr=0.1, steps=10, run=fsgd.Run(record_params=True))
    assert result.trajectory["a"].shape == (11, 2)
    assert result.trajectory["count"].shape == (11, 3)
    assert result.trajectory["act"] is jnp.tanh


def test_jit_and_vmap_over_a_model():
    """Inside jax.jit / jax.vmap fit runs as well; what leaves them must be
    arrays (as for any jitted function), so the sweep returns the float leaf."""
    params = {"a": jnp.array(fsgd.LESSON_START), "act": jnp.tanh}

    def loss(p, x, y):
        return fsgd.mse(p["act"](x @ p["a"]), jnp.tanh(y))

    sweep = jax.jit(jax.vmap(
        lambda lr: fsgd.fit(loss, params, (X, Y), lr=lr, steps=20).params["a"]))
    swept = sweep(jnp.array([0.1, 0.2]))
    one = fsgd.fit(loss, params, (X, Y), lr=0.2, steps=20)
    assert swept.shape == (2, 2) and one.params["act"] is jnp.tanh
    assert_trees_close(swept[1], one.params["a"], **backend_tolerance(rtol=1e-6))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"params": {"n": jnp.arange(2)}}, ValueError, "params has nothing to train.*int32"),
    ({"params": {"n": 3}}, ValueError, "params has nothing to train"),
    (lambda: {"model": fsgd.Model(trainable=False)}, ValueError, r"Model\(trainable=\) freezes all"),
    (lambda: {"model": fsgd.Model(trainable={"a": True})}, ValueError, r"Model\(trainable=\) must be a pytree"),
    (lambda: {"model": fsgd.Model(trainable={"a": 1, "b": True})}, TypeError,
     r"Model\(trainable=\)'s leaves must be True or False"),
    (lambda: {"model": fsgd.Model(trainable=lambda leaf: 1)}, TypeError, r"Model\(trainable=fn\): fn\(leaf\) must return"),
    (lambda: {"model": fsgd.Model(rng=3)}, TypeError, "rng must be a jax.random key"),
    (lambda: {"model": fsgd.Model(rng=jax.random.split(jax.random.key(0)))}, ValueError, "rng must be a single key"),
    (lambda: {"model": fsgd.Model(rng=jax.random.key(0))}, ValueError, "key=.*give the loss that argument"),
    (lambda: {"model": fsgd.Model(has_aux=1)}, TypeError, "has_aux must be True or False"),
    (lambda: {"model": fsgd.Model(has_aux=True)}, ValueError, r"with Model\(has_aux=True\), loss must return \(value, aux\)"),
    (lambda: {"model": fsgd.Model(state=jnp.zeros(2))}, ValueError, r"with Model\(state=\), loss must return \(value, new_state\)"),
])
def test_bad_model_arguments_name_the_argument(kwargs, error, match):
    def loss(p, *args):
        return fsgd.linear_mse(p["a"], *args[-2:]) if "a" in p else jnp.float32(0.0)

    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        kwargs = {"params": {"a": jnp.array(fsgd.LESSON_START), "b": jnp.zeros(())}, **kwargs}
        params = kwargs.pop("params")
        fsgd.fit(loss, params, (X, Y), lr=0.1, steps=5, **kwargs)


@pytest.mark.parametrize("returns, kwargs, match", [
    (lambda v, s: (v, s[:1]), lambda: {"model": fsgd.Model(state=jnp.zeros(2))}, "structure, shapes and dtypes of state"),
    (lambda v, s: (v, s), lambda: {"model": fsgd.Model(state=jnp.zeros(2), has_aux=True)},
     r"Model\(state=\) and Model\(has_aux=True\), loss must return \(value, new_state, aux\)"),
    (lambda v, s: (v, v), {}, "If it returns \\(value, aux\\), pass model=fsgd.Model\\(has_aux=True\\)"),
    (lambda v, s: (v, jnp.tanh), lambda: {"model": fsgd.Model(has_aux=True)}, "aux must be a pytree of arrays"),
    (lambda v, s: (v[None], 0), lambda: {"model": fsgd.Model(has_aux=True)}, "value .* must be a real scalar"),
])
def test_a_loss_whose_returns_do_not_match(returns, kwargs, match):
    def loss(a, *args):
        state = args[0] if len(args) == 3 else None
        return returns(fsgd.linear_mse(a, *args[-2:]), state)

    with pytest.raises(ValueError, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        fsgd.fit(loss, jnp.array(fsgd.LESSON_START), (X, Y), lr=0.1, steps=5, **kwargs)


def test_mesh_refuses_what_has_no_meaning_row_by_row():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))

    def loss(a, x, y, *, key):
        return fsgd.linear_mse(a, x, y)

    with pytest.raises(ValueError, match=r"Run\(mesh=\) cannot run with Model\(rng=\)"):
        fsgd.fit(loss, jnp.array(fsgd.LESSON_START), (X, Y), lr=0.1, steps=5,
                 model=fsgd.Model(rng=jax.random.key(0)), run=fsgd.Run(mesh=mesh))
    # frozen and non-array leaves are fine on a mesh
    params = {"a": jnp.array(fsgd.LESSON_START), "act": jnp.tanh, "n": jnp.arange(2)}
    result = fsgd.fit(lambda p, x, y: fsgd.linear_mse(p["a"], x, y), params, (X, Y), lr=0.1,
                      steps=100, run=fsgd.Run(mesh=mesh))
    assert_trees_close(result.params["a"], fsgd.fit(fsgd.linear_mse, params["a"], (X, Y),
                                                    lr=0.1, steps=100).params, rtol=1e-5)
    assert result.params["act"] is jnp.tanh


def keyed_params():
    """A line whose params also hold a PRNG key and an integer count, neither trained."""
    return {"a": jnp.array(fsgd.LESSON_START), "key": jax.random.key(5),
            "count": jnp.array(7, jnp.int32)}


def keyed_line(params, x, y):
    return fsgd.linear_mse(params["a"], x, y), {"key": params["key"], "count": params["count"]}


def held_out_mse(params, x, y):
    return {"mse": fsgd.linear_mse(params["a"], x, y)}


HELD_OUT = fsgd.lesson_data(jax.random.key(9), 20)


@pytest.mark.parametrize("driver", ["one call", "chunks", "memmap"])
def test_record_params_and_restore_best_keep_key_and_int_leaves(driver, tmp_path):
    """record_params with evaluate and restore_best, in one call or joined from
    chunks on the host: the trainable leaf has the bits of the run without
    record_params, the key and the count come back unchanged, in the
    trajectory too (NumPy cannot hold a key: the host joins it as its bits)."""
    data = (X, Y)
    if driver == "memmap":
        data = tuple(np.lib.format.open_memmap(tmp_path / f"{i}.npy", "w+", a.dtype, a.shape)
                     for i, a in enumerate((X, Y)))
        for mapped, a in zip(data, (X, Y)):
            mapped[:] = np.asarray(a)
    chunks = {} if driver == "one call" else {"chunk_size": 7}

    def run(**kwargs):
        return fsgd.fit(lambda p, x, y: keyed_line(p, x, y)[0], keyed_params(), data, lr=0.5,
                        steps=40, batch_size=10, key=jax.random.key(1), evaluation=fsgd.Evaluation(held_out_mse, HELD_OUT, every=5, monitor="mse", patience=3, restore_best=True), run=fsgd.Run(**chunks, **kwargs))

    plain, recorded = run(), run(record_params=True)
    np.testing.assert_array_equal(recorded.params["a"], plain.params["a"])
    np.testing.assert_array_equal(recorded.evals["mse"], plain.evals["mse"])
    for result in (plain, recorded):
        np.testing.assert_array_equal(jax.random.key_data(result.params["key"]),
                                      jax.random.key_data(jax.random.key(5)))
        assert result.params["count"].dtype == jnp.int32 and int(result.params["count"]) == 7
    trajectory = recorded.trajectory
    assert trajectory["a"].shape == (41, 2) and trajectory["count"].shape == (41,)
    assert jax.dtypes.issubdtype(trajectory["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(trajectory["key"]),
                                  np.tile(jax.random.key_data(jax.random.key(5)), (41, 1)))
    assert (np.asarray(trajectory["count"]) == 7).all()
    best = int(np.asarray(recorded.eval_steps)[np.nanargmin(recorded.evals["mse"])])
    np.testing.assert_array_equal(recorded.params["a"], trajectory["a"][best])


def test_aux_with_key_and_int_leaves_joins_from_chunks_and_a_checkpoint(tmp_path):
    """aux stacking a key and an int over the steps: chunks joined on the host
    and a checkpoint resumed after a kill give the aux of one call."""
    def run(**kwargs):
        return fsgd.fit(keyed_line, keyed_params(), (X, Y), lr=0.1, steps=30, batch_size=10,
                        key=jax.random.key(1), evaluation=fsgd.Evaluation(held_out_mse, HELD_OUT, every=5, monitor="mse", restore_best=True), model=fsgd.Model(has_aux=True),
                        **kwargs)

    one = run()
    path = os.fspath(tmp_path / "run.npz")
    killed_after(2, run, chunk_size=7, checkpoint=path)
    for result in (run(run=fsgd.Run(chunk_size=7)),
                   run(run=fsgd.Run(chunk_size=7, checkpoint=path))):
        np.testing.assert_array_equal(result.params["a"], one.params["a"])
        np.testing.assert_array_equal(jax.random.key_data(result.aux["key"]),
                                      jax.random.key_data(one.aux["key"]))
        np.testing.assert_array_equal(result.aux["count"], one.aux["count"])
        np.testing.assert_array_equal(jax.random.key_data(result.params["key"]),
                                      jax.random.key_data(jax.random.key(5)))
        assert int(result.params["count"]) == 7


def test_a_checkpoint_keeps_the_best_params_key_and_int_leaves(tmp_path):
    """restore_best from a run killed and resumed: the best params so far are
    in the checkpoint, their key and count included."""
    def run(**kwargs):
        return fsgd.fit(lambda p, x, y: keyed_line(p, x, y)[0], keyed_params(), (X, Y), lr=0.9,
                        steps=40, batch_size=10, key=jax.random.key(1),
                        evaluation=fsgd.Evaluation(held_out_mse, HELD_OUT, every=5, monitor="mse", restore_best=True), **kwargs)

    one = run()
    best = int(one.eval_steps[np.argmin(one.evals["mse"])])
    assert 0 < best <= 30  # the best is in the checkpoint written after 30 steps,
    assert float(one.evals["mse"][-1]) > float(one.evals["mse"].min())  # not the last
    path = os.fspath(tmp_path / "run.npz")
    killed_after(6, run, chunk_size=5, checkpoint=path)
    resumed = run(run=fsgd.Run(chunk_size=5, checkpoint=path))
    np.testing.assert_array_equal(resumed.params["a"], one.params["a"])
    np.testing.assert_array_equal(resumed.evals["mse"], one.evals["mse"])
    np.testing.assert_array_equal(jax.random.key_data(resumed.params["key"]),
                                  jax.random.key_data(jax.random.key(5)))
    assert resumed.params["count"].dtype == jnp.int32 and int(resumed.params["count"]) == 7


def killed_after(chunks, run, **kwargs):
    """``run(run=fsgd.Run(on_chunk=..., **fields))`` stopped by a KeyboardInterrupt
    after ``chunks`` chunks, as a kill would stop it."""
    calls = []

    def crash(result):
        calls.append(result.step)
        if len(calls) == chunks:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(run=fsgd.Run(on_chunk=crash, **kwargs))


@dataclasses.dataclass
class Scaled:
    """A pytree node of the user's own (not a dict, list or tuple)."""

    w: jax.Array
    scale: float


jax.tree_util.register_dataclass(Scaled, data_fields=["w", "scale"], meta_fields=[])


def test_python_floats_train_in_plain_containers_and_are_static_in_other_nodes():
    """The rule: a Python float trains when every container above it is a
    dict, list or tuple (the lesson's {"a": 3.0}); inside any other pytree
    node (an equinox Module, a registered dataclass), a tuple in it too, it
    is static, as ``eqx.is_inexact_array`` has it: never traced, given back
    as it was."""
    def loss(p, x, y):
        scale, (half,) = p["node"].scale, p["nested"].scale
        assert type(scale) is float and type(half) is float  # constants, never tracers
        return (fsgd.linear_mse(p["a"] * scale * half * p["node"].w, x, y)
                + (p["b"] - 1.0) ** 2 + (p["t"][0] - 2.0) ** 2)

    params = {"a": jnp.array(fsgd.LESSON_START), "b": 0.0, "t": [0.0],
              "node": Scaled(jnp.ones(2), 1.5), "nested": Scaled(jnp.ones(2), (0.5,))}
    result = fsgd.fit(loss, params, (X, Y), lr=0.1, steps=60)
    assert type(result.params["node"].scale) is float and result.params["node"].scale == 1.5
    nested = result.params["nested"].scale
    assert nested == (0.5,) and type(nested[0]) is float
    assert abs(float(result.params["b"]) - 1.0) < 1e-3  # trained
    assert abs(float(result.params["t"][0]) - 2.0) < 1e-3
    assert not np.allclose(result.params["node"].w, 1.0)  # its arrays train


def test_a_float_field_of_a_node_with_only_float_arrays_is_static():
    """No other leaf to set it apart: the whole-model fast path must not train it."""
    result = fsgd.fit(lambda p, x, y: fsgd.linear_mse(p.w * p.scale, x, y),
                      Scaled(jnp.array(fsgd.LESSON_START), 2.0), (X, Y), lr=0.1, steps=20)
    assert type(result.params.scale) is float and result.params.scale == 2.0
    assert float(result.losses[-1]) < float(result.losses[0])


def test_a_python_float_frozen_by_trainable_is_never_traced():
    def loss(p, x, y):
        assert type(p["b"]) is float  # frozen: a constant of the program
        return fsgd.linear_mse(p["a"] * p["b"], x, y)

    for trainable in ({"a": True, "b": False}, lambda leaf: not isinstance(leaf, float)):
        result = fsgd.fit(loss, {"a": jnp.array(fsgd.LESSON_START), "b": 1.0}, (X, Y),
                          lr=0.1, steps=20, model=fsgd.Model(trainable=trainable))
        assert type(result.params["b"]) is float and result.params["b"] == 1.0
        assert float(result.losses[-1]) < float(result.losses[0])


def test_what_leaves_nothing_to_train_says_why():
    def loss(p, x, y):
        return jnp.float32(0.0)

    with pytest.raises(ValueError, match="nothing to train.*int32 .*Python floats sit inside"):
        fsgd.fit(loss, Scaled(jnp.zeros(2, jnp.int32), 1.0), (X, Y), lr=0.1, steps=5)
    with pytest.raises(ValueError, match=r"Model\(trainable=\) freezes all 1 float leaves"):
        fsgd.fit(loss, {"b": 1.0}, (X, Y), lr=0.1, steps=5, model=fsgd.Model(trainable={"b": False}))


def test_a_bare_python_float_trains():
    """The lesson's f(x) = x**2 from 3.0: each step multiplies x by 1 - 2 lr."""
    result = fsgd.fit(lambda p: p ** 2, 3.0, lr=0.1, steps=10)
    assert float(result.losses[0]) == 9.0
    np.testing.assert_allclose(float(result.params), 3.0 * 0.8 ** 10, rtol=1e-6)  # float32


def counted_line(a, stream, x, y):
    """A line with noise drawn from a key and a counter in its state, the
    counter moved every step (as a flax nnx random stream does)."""
    noise = jax.random.normal(jax.random.fold_in(stream["key"], stream["count"]), ())
    value = fsgd.linear_mse(a * (1.0 + 0.01 * noise), x, y)
    return value, {"key": stream["key"], "count": stream["count"] + 1}, noise


def fit_counted(run=None, **fields):
    """The counted line's run, cut and kept as ``run`` (or the Run of ``fields``) says."""
    stream = {"key": jax.random.key(4), "count": jnp.array(0, jnp.uint32)}
    return fsgd.fit(counted_line, jnp.array(fsgd.LESSON_START), (X, Y), lr=0.1, steps=20,
                    model=fsgd.Model(state=stream, has_aux=True),
                    run=run if run is not None or not fields else fsgd.Run(**fields))


def test_a_typed_key_and_a_counter_in_state_are_carried(tmp_path):
    """Issue 22.13: state= holding a typed key failed with ``TypeError: Cannot
    interpret 'key<fry>' as a data type``; carried from step to step now, in
    chunks and through a checkpoint too."""
    one = fit_counted()
    assert int(one.state["count"]) == 20 and one.state["count"].dtype == jnp.uint32
    np.testing.assert_array_equal(jax.random.key_data(one.state["key"]),
                                  jax.random.key_data(jax.random.key(4)))
    expected = [jax.random.normal(jax.random.fold_in(jax.random.key(4), t), ())
                for t in range(20)]
    np.testing.assert_array_equal(one.aux, jnp.stack(expected))  # a new draw every step
    path = os.fspath(tmp_path / "run.npz")
    killed_after(2, fit_counted, chunk_size=6, checkpoint=path)
    for result in (fit_counted(chunk_size=6), fit_counted(chunk_size=6, checkpoint=path)):
        np.testing.assert_array_equal(result.params, one.params)
        np.testing.assert_array_equal(result.aux, one.aux)
        assert int(result.state["count"]) == 20
    # a new state that is not the state's double is refused as for any other state
    with pytest.raises(ValueError, match="dtypes of state; state is .*key<fry>.*uint32"):
        fsgd.fit(lambda a, s, x, y: (fsgd.linear_mse(a, x, y), jax.random.key_data(s)),
                 jnp.array(fsgd.LESSON_START), (X, Y), lr=0.1, steps=5,
                 model=fsgd.Model(state=jax.random.key(0)))
