"""Keeping a model (issue 23.9): ``fsgd.save`` and ``fsgd.load`` round-trip a
result's params (and state) with the same bits, for arrays, equinox modules
and flax nnx state; a file that does not match ``like`` is refused."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import START, X, Y, assert_same_bits

import functional_sgd as fsgd


def mixed_params():
    return {"w": jax.random.normal(jax.random.key(0), (3, 2)),  # float32
            "half": jnp.array([1.5, -0.0, jnp.nan, jnp.inf], jnp.bfloat16),
            "count": jnp.array([1, 2, 3], jnp.int32),
            "flags": np.array([True, False]),
            "key": jax.random.key(7),  # a typed key
            "keys": jax.random.split(jax.random.key(3), 2),
            "legacy": jax.random.PRNGKey(5),  # uint32[2]
            "scale": 0.1,  # a Python float leaf
            "act": jax.nn.relu}  # a function: kept from like


def test_arrays_of_every_dtype_round_trip_with_the_same_bits(tmp_path):
    path = tmp_path / "model.npz"
    params = mixed_params()
    fsgd.save(path, params)
    loaded = fsgd.load(path, like=mixed_params())
    assert_same_bits(loaded.params, params)
    assert loaded.state is None


def test_an_equinox_module_round_trips(tmp_path):
    model = eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0))
    trained = jax.tree.map(lambda a: a + 1 if eqx.is_inexact_array(a) else a, model)
    fsgd.save(tmp_path / "mlp.npz", trained)
    loaded = fsgd.load(tmp_path / "mlp.npz", like=model).params
    assert type(loaded) is eqx.nn.MLP
    assert_same_bits(loaded, trained)
    x = jnp.ones(2)
    assert np.array_equal(loaded(x), trained(x))


def test_nnx_state_with_its_rng_keys_round_trips_and_merges_back(tmp_path):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

    _, params, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
    params = jax.tree.map(lambda a: a * 2, params)
    fsgd.save(tmp_path / "net.npz", params, state=state)
    fresh_graph, fresh_params, fresh_state = nnx.split(Net(nnx.Rngs(1)), nnx.Param, ...)
    loaded = fsgd.load(tmp_path / "net.npz", like=fresh_params, like_state=fresh_state)
    assert_same_bits(loaded.params, params)
    assert_same_bits(loaded.state, state)
    merged = nnx.merge(fresh_graph, *loaded)
    assert np.array_equal(merged.linear.kernel[...], params["linear"]["kernel"][...])


def test_a_fit_result_saves_its_params_and_state(tmp_path):
    def loss(params, state, x, y):
        return fsgd.linear_mse(params, x, y), state + 1

    result = fsgd.fit(loss, START, (X, Y), lr=0.1, steps=5, model=fsgd.Model(state=jnp.int32(0)))
    fsgd.save(tmp_path / "run.npz", result)
    params, state = fsgd.load(tmp_path / "run.npz", like=START, like_state=jnp.int32(0))
    assert_same_bits((params, state), (result.params, result.state))
    plain = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5)
    fsgd.save(tmp_path / "plain.npz", plain)
    assert_same_bits(fsgd.load(tmp_path / "plain.npz", like=START).params, plain.params)


def test_a_file_that_does_not_match_like_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    fsgd.save(path, {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"\['w'\].*float32\[3, 2\].*float32\[2, 3\]"):
        fsgd.load(path, like={"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"\['b'\].*float32\[2\].*bfloat16\[2\]"):
        fsgd.load(path, like={"w": jnp.zeros((3, 2)), "b": jnp.zeros(2, jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"structure"):
        fsgd.load(path, like={"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"like_state"):
        fsgd.load(path, like={"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)},
                  like_state=jnp.int32(0))
    fsgd.save(path, jnp.zeros(2), state=jnp.int32(3))
    with pytest.raises(ValueError, match=r"holds a model state.*like_state"):
        fsgd.load(path, like=jnp.zeros(2))
    fsgd.save(path, {"act": jax.nn.relu, "w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"\['act'\].*relu.*tanh"):
        fsgd.load(path, like={"act": jax.nn.tanh, "w": jnp.zeros(2)})


def test_bad_paths_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"path must be a file path"):
        fsgd.save(3, START)
    with pytest.raises(ValueError, match=r"is a folder"):
        fsgd.save(tmp_path, START)
    with pytest.raises(ValueError, match=r"does not exist"):
        fsgd.load(tmp_path / "missing.npz", like=START)
    with pytest.raises(ValueError, match="state"):
        fsgd.save(tmp_path / "x.npz", fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1,
                                                steps=2), state=jnp.int32(0))
    checkpoint = str(tmp_path / "run.npz")
    fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=4, run=fsgd.Run(chunk_size=2, checkpoint=checkpoint))
    with pytest.raises(ValueError, match=r"not .*saved by functional_sgd.save"):
        fsgd.load(checkpoint, like=START)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"corrupt"):
        fsgd.load(tmp_path / "junk.npz", like=START)


def test_results_of_an_equinox_and_an_nnx_fit_are_kept_and_merged_back(tmp_path):
    """The habit end to end: train, save the result, load it into a fresh
    model of the same shape, and get the trained model's bits and outputs."""
    x = jax.random.normal(jax.random.key(0), (32, 2))
    y = (x ** 2).sum(axis=1, keepdims=True)

    mlp = eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(1))
    trained = fsgd.fit(lambda m, x, y: ((jax.vmap(m)(x) - y) ** 2).mean(), mlp, (x, y),
                       lr=0.05, steps=5)
    fsgd.save(tmp_path / "mlp.npz", trained)
    fresh = eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(2))
    loaded = fsgd.load(tmp_path / "mlp.npz", like=fresh).params
    assert_same_bits(loaded, trained.params)
    assert np.array_equal(jax.vmap(loaded)(x), jax.vmap(trained.params)(x))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden, self.out = nnx.Linear(2, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)
            self.norm = nnx.BatchNorm(8, rngs=rngs)
            self.dropout = nnx.Dropout(0.2, rngs=rngs)

        def __call__(self, x):
            return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))

    graphdef, params, rest = nnx.split(Net(nnx.Rngs(0, dropout=1)), nnx.Param, ...)

    def nnx_loss(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest)
        return ((model(x) - y) ** 2).mean(), nnx.split(model, nnx.Param, ...)[2]

    result = fsgd.fit(nnx_loss, params, (x, y), lr=0.05, steps=5, model=fsgd.Model(state=rest))
    fsgd.save(tmp_path / "net.npz", result)
    fresh_graph, fresh_params, fresh_rest = nnx.split(Net(nnx.Rngs(3, dropout=4)), nnx.Param, ...)
    loaded = fsgd.load(tmp_path / "net.npz", like=fresh_params, like_state=fresh_rest)
    assert_same_bits((loaded.params, loaded.state), (result.params, result.state))
    net, expected = nnx.merge(fresh_graph, *loaded), nnx.merge(graphdef, result.params, result.state)
    assert int(net.dropout.rngs.count[...]) == 5  # the stream moved on once a step
    net.eval(), expected.eval()
    assert np.array_equal(net(x), expected(x))
