"""A user's own model through fit: each against the client's own training loop.

An equinox MLP against an ``eqx.filter_jit`` loop, a flax nnx model with
BatchNorm against ``nnx.Optimizer``, dropout through ``rng`` (one call,
chunks, a resumed checkpoint, a seed ensemble), and optimizers that take
extra arguments against optax's own loops.
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_trees_close, count_compilations, max_relative_error, backend_tolerance

import functional_sgd as fsgd


pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's adam, flax's layers


X = jax.random.normal(jax.random.key(0), (256, 3))
Y = jnp.sin(X).sum(axis=1, keepdims=True)
INDICES = fsgd.sample_indices(jax.random.key(2), 256, steps=60, batch_size=32)


def mlp_loss(model, x, y):
    return ((jax.vmap(model)(x) - y) ** 2).mean()


def equinox_loop(loss, model, optimizer, steps, rng=None):
    """equinox's own training loop (``eqx.filter_jit``, only inexact arrays
    train) on the first ``steps`` batches of ``INDICES``; step t's key is
    fold_in(rng, t). Returns ``(model, opt_state, losses)``."""
    @eqx.filter_jit
    def step(model, opt_state, x, y, keys):
        value, grads = eqx.filter_value_and_grad(loss)(model, x, y, **keys)
        updates, opt_state = optimizer.update(grads, opt_state,
                                              eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, value

    opt_state, losses = optimizer.init(eqx.filter(model, eqx.is_inexact_array)), []
    for t, rows in enumerate(INDICES[:steps]):
        keys = {} if rng is None else {"key": jax.random.fold_in(rng, t)}
        model, opt_state, value = step(model, opt_state, X[rows], Y[rows], keys)
        losses.append(value)
    return model, opt_state, jnp.stack(losses)


def test_equinox_mlp_equals_a_filter_jit_loop():
    model = eqx.nn.MLP(3, 1, 16, 2, key=jax.random.key(1))
    optimizer = optax.adam(1e-2)
    result = fsgd.fit(mlp_loss, model, (X, Y), rows=fsgd.Schedule(INDICES), optimizer=optimizer)

    theirs, opt_state, losses = equinox_loop(mlp_loss, model, optimizer, len(INDICES))

    assert isinstance(result.params, eqx.nn.MLP)
    assert result.params.activation is model.activation  # passed through, not traced
    # the optimizer saw what equinox's users give it: the float leaves, None elsewhere
    assert jax.tree.structure(result.opt_state) == jax.tree.structure(opt_state)
    assert max_relative_error(result.losses, losses) < 1e-6
    assert max_relative_error(eqx.filter(result.params, eqx.is_array),
                              eqx.filter(theirs, eqx.is_array)) < 1e-6
    assert float(result.losses[-1]) < 0.5 * float(result.losses[0])


class BatchNormNet(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.hidden(x))))


def nnx_optimizer_losses(model, tx):
    """The nnx way: an ``nnx.Optimizer`` loop over the batches of ``INDICES``,
    training ``model`` in place; its losses."""
    from flax import nnx

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        value, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        return value

    return jnp.stack([step(model, optimizer, X[rows], Y[rows]) for rows in INDICES])


def test_flax_nnx_batchnorm_through_state_equals_nnx_optimizer():
    graphdef, params, stats = nnx.split(BatchNormNet(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)

    def loss(params, stats, x, y):
        model = nnx.merge(graphdef, params, stats)
        value = ((model(x) - y) ** 2).mean()
        return value, nnx.split(model, nnx.Param, nnx.BatchStat)[2]

    tx = optax.adam(1e-2)
    result = fsgd.fit(loss, params, (X, Y), rows=fsgd.Schedule(INDICES), model=fsgd.Model(state=stats), optimizer=tx)

    model = BatchNormNet(nnx.Rngs(0))
    losses = nnx_optimizer_losses(model, tx)
    _, their_params, their_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert type(result.params) is type(params) and type(result.state) is type(stats)
    assert max_relative_error(result.losses, losses) < 1e-6
    assert max_relative_error(result.params, their_params) < 1e-6
    assert max_relative_error(result.state, their_stats) < 1e-6
    assert max_relative_error(result.state, stats) > 1e-3  # the statistics did move


def dropout_loss(w, x, y, *, key):
    """A linear model with dropout on its weights; the aux is the mask."""
    keep = jax.random.bernoulli(key, 0.5, w.shape)
    return ((x @ jnp.where(keep, w / 0.5, 0.0) - y[:, 0]) ** 2).mean(), keep


def fit_dropout(params=jnp.zeros(3), rng=None, **kwargs):
    """``dropout_loss`` fitted with the model's ``rng`` (``key(7)`` unless given)."""
    rng = jax.random.key(7) if rng is None else rng
    kwargs = {"lr": 0.05, "steps": 24, "model": fsgd.Model(rng=rng, has_aux=True), **kwargs}
    return fsgd.fit(dropout_loss, params, (X, Y), **kwargs)


def test_dropout_masks_change_every_step_and_repeat_with_the_same_rng():
    one = fit_dropout()
    masks = np.asarray(one.aux)
    assert masks.shape == (24, 3) and masks.dtype == np.bool_
    assert len({m.tobytes() for m in masks}) > 4  # not one mask for the whole run
    assert_trees_close(fit_dropout(), one)
    other = fit_dropout(rng=jax.random.key(8))
    assert not np.array_equal(np.asarray(other.aux), masks)
    # step t's key is fold_in(rng, t): the mask of step 5 is the loss's own with that key
    _, mask_5 = dropout_loss(jnp.zeros(3), X, Y, key=jax.random.fold_in(jax.random.key(7), 5))
    np.testing.assert_array_equal(masks[5], mask_5)


def test_dropout_chunked_and_resumed_equal_one_call(tmp_path):
    one = fit_dropout()
    assert_trees_close(fit_dropout(run=fsgd.Run(chunk_size=5)), one)
    path = os.fspath(tmp_path / "run.npz")
    chunks = []

    def crash_after_two(result):
        chunks.append(result)
        if len(chunks) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_dropout(run=fsgd.Run(chunk_size=5, checkpoint=path, on_chunk=crash_after_two))
    resumed = fit_dropout(run=fsgd.Run(chunk_size=5, checkpoint=path))
    assert_trees_close(resumed, one)
    with pytest.raises(ValueError, match="rng"):  # the key is part of the run
        fit_dropout(run=fsgd.Run(chunk_size=5, checkpoint=path), rng=jax.random.key(9))
    # continuing by hand: start_step moves rng's keys along too
    first = fit_dropout(steps=10)
    rest = fit_dropout(steps=14, params=first.params, run=fsgd.Run(start_step=first.step))
    np.testing.assert_array_equal(np.concatenate([first.aux, rest.aux]), one.aux)


def test_a_seed_ensemble_is_one_compiled_call():
    keys = jax.random.split(jax.random.key(3), 8)
    ensemble = jax.jit(jax.vmap(lambda rng: fit_dropout(rng=rng)))
    ensemble(jax.random.split(jax.random.key(4), 8)).params.block_until_ready()  # warm
    with count_compilations() as compiled:
        fresh = jax.jit(jax.vmap(lambda rng: fit_dropout(rng=rng, lr=0.04)))(keys)
        fresh.params.block_until_ready()
    assert compiled[0] == 1
    assert fresh.params.shape == (8, 3) and fresh.aux.shape == (8, 24, 3)
    for i in (0, 5):
        assert_trees_close(jax.tree.map(lambda a: a[i], fresh),
                           fit_dropout(rng=keys[i], lr=0.04),
                           **backend_tolerance(rtol=1e-6, atol=1e-7))


def full_batch_loss(p, x, y):
    return ((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2).mean()


def optax_loop(optimizer, params, x, y, steps, value_and_grad):
    value_fn = lambda p: full_batch_loss(p, x, y)  # noqa: E731

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(value_fn, params, state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=value_fn)
        return optax.apply_updates(params, updates), state, value

    state, losses = optimizer.init(params), []
    for _ in range(steps):
        params, state, value = step(params, state)
        losses.append(value)
    return params, state, jnp.stack(losses)


@pytest.mark.parametrize("name", ["lbfgs", "reduce_on_plateau"])
def test_optimizers_with_extra_arguments_equal_optax_loops(name, x64):
    x = jax.random.normal(jax.random.key(0), (200, 5), jnp.float64)
    y = jnp.tanh(x @ jnp.arange(1.0, 6.0)) + 0.3 * jax.random.normal(jax.random.key(1), (200,))
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    if name == "lbfgs":  # optax's documented loop reuses the line search's value and grad
        optimizer = optax.lbfgs()
        from_state = lambda f, p, s: optax.value_and_grad_from_state(f)(p, state=s)  # noqa
    else:
        optimizer = optax.chain(optax.adam(0.5), optax.contrib.reduce_on_plateau(
            patience=2, cooldown=0, factor=0.5, accumulation_size=1))
        from_state = lambda f, p, s: jax.value_and_grad(f)(p)  # noqa: E731
    result = fsgd.fit(full_batch_loss, params, (x, y), optimizer=optimizer, steps=30)
    theirs, state, losses = optax_loop(optimizer, params, x, y, 30, from_state)
    assert max_relative_error(result.losses, losses) < 1e-12
    assert max_relative_error(result.params, theirs) < 1e-12
    assert float(result.losses[-1]) < 0.2 * float(result.losses[0])
    if name == "reduce_on_plateau":  # the plateau was reached and the rate cut
        assert float(result.opt_state[1].scale) == float(state[1].scale) < 1.0


def test_polyak_sgd_gets_the_value():
    x = jax.random.normal(jax.random.key(0), (100, 2))
    y = x @ jnp.array([3.0, 2.0])
    result = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), (x, y), optimizer=optax.polyak_sgd(),
                      steps=50)
    assert float(result.losses[-1]) < 1e-3 * float(result.losses[0])


def test_an_equinox_filter_spec_as_trainable_freezes_a_layer():
    model = eqx.nn.MLP(3, 1, 16, 2, key=jax.random.key(1))
    first = lambda m: (m.layers[0].weight, m.layers[0].bias)  # noqa: E731
    trainable = eqx.tree_at(first, jax.tree.map(lambda _: True, model), replace=(False, False))
    result = fsgd.fit(mlp_loss, model, (X, Y), rows=fsgd.Schedule(INDICES), model=fsgd.Model(trainable=trainable), optimizer=optax.adam(1e-2))
    assert_trees_close(first(result.params), first(model))
    assert not np.allclose(result.params.layers[1].weight, model.layers[1].weight)
    assert float(result.losses[-1]) < float(result.losses[0])
    assert result.opt_state[0].mu.layers[0].weight is None  # no state for a frozen leaf


class DropoutNet(eqx.Module):
    hidden: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        first, second = jax.random.split(key)
        self.hidden = eqx.nn.Linear(3, 16, key=first)
        self.dropout = eqx.nn.Dropout(0.5)
        self.out = eqx.nn.Linear(16, 1, key=second)

    def __call__(self, x, key):
        return self.out(self.dropout(jax.nn.relu(self.hidden(x)), key=key))


def dropout_net_loss(model, x, y, *, key):
    assert type(model.dropout.p) is float  # a constant of the program, never a tracer
    return ((jax.vmap(model)(x, jax.random.split(key, x.shape[0])) - y) ** 2).mean()


def test_equinox_dropout_rate_is_static_under_adamw():
    """Issue 23.1: adamw's weight decay drove the rate 0.5 to 1.75e-05 (dropout
    silently off). Its Python float is static now, as in equinox's own loop."""
    model, rng, optimizer = DropoutNet(jax.random.key(1)), jax.random.key(5), \
        optax.adamw(0.1, weight_decay=0.5)
    result = fsgd.fit(dropout_net_loss, model, (X, Y), rows=fsgd.Schedule(INDICES[:30]), model=fsgd.Model(rng=rng),
                      optimizer=optimizer)
    theirs, _, losses = equinox_loop(dropout_net_loss, model, optimizer, 30, rng)
    assert type(result.params.dropout.p) is float and result.params.dropout.p == 0.5
    # float32, the same ops compiled once in a scan and once per step: XLA may
    # fuse them differently (1e-6, as above; measured: the same bits on CPU)
    assert max_relative_error(result.losses, losses) < 1e-6
    assert max_relative_error(eqx.filter(result.params, eqx.is_array),
                              eqx.filter(theirs, eqx.is_array)) < 1e-6


class PoolNet(eqx.Module):
    conv: eqx.nn.Conv2d
    pool: eqx.nn.MaxPool2d
    out: eqx.nn.Linear

    def __init__(self, key):
        first, second = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 2, 2, key=first)
        self.pool = eqx.nn.MaxPool2d(2)
        self.out = eqx.nn.Linear(2, 1, key=second)

    def __call__(self, x):  # x: three features as a 1x2x2 image (the last one twice)
        image = jnp.concatenate([x, x[-1:]]).reshape(1, 2, 2)
        return self.out(self.pool(jnp.pad(self.conv(image), ((0, 0), (0, 1), (0, 1)))).ravel())


@pytest.mark.parametrize("trainable", [None, eqx.is_array], ids=["all", "eqx.is_array"])
def test_equinox_max_pool_trains(trainable):
    """Issue 23.1: MaxPool2d's init (-inf, a Python float) was traced:
    ``reduce_window jvp does not support non-zero init_value_tangent``, and
    with trainable=eqx.is_array ``Linearization failed``."""
    model, optimizer = PoolNet(jax.random.key(2)), optax.adamw(1e-2)
    result = fsgd.fit(mlp_loss, model, (X, Y), rows=fsgd.Schedule(INDICES[:20]), model=fsgd.Model(trainable=trainable), optimizer=optimizer)
    theirs, _, losses = equinox_loop(mlp_loss, model, optimizer, 20)
    assert result.params.pool.init == -jnp.inf and type(result.params.pool.init) is float
    # as for dropout above (measured on CPU: 7e-8 in losses, 2.3e-7 in params)
    assert max_relative_error(result.losses, losses) < 1e-6
    assert max_relative_error(eqx.filter(result.params, eqx.is_array),
                              eqx.filter(theirs, eqx.is_array)) < 1e-6
    assert float(result.losses[-1]) < float(result.losses[0])


class DropoutBatchNormNet(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))


def test_flax_nnx_dropout_and_batchnorm_recipe_equals_nnx_optimizer():
    """Issues 23.2, 22.10, 22.13: the recipe (the params split from the rest,
    the rest carried as state: batch statistics, the dropout stream's key and
    its counter) against the nnx way of training the same model."""
    tx = optax.adam(1e-2)
    graphdef, params, rest = nnx.split(DropoutBatchNormNet(nnx.Rngs(0, dropout=1)),
                                       nnx.Param, ...)

    def loss(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest)
        value = ((model(x) - y) ** 2).mean()
        return value, nnx.split(model, nnx.Param, ...)[2]

    result = fsgd.fit(loss, params, (X, Y), rows=fsgd.Schedule(INDICES), model=fsgd.Model(state=rest), optimizer=tx)
    trained = nnx.merge(graphdef, result.params, result.state)

    model = DropoutBatchNormNet(nnx.Rngs(0, dropout=1))
    losses = nnx_optimizer_losses(model, tx)
    assert isinstance(trained, DropoutBatchNormNet)
    assert int(trained.dropout.rngs.count[...]) == int(model.dropout.rngs.count[...]) == 60
    # float32, one compiled scan against a compiled call per step (1e-6, as for
    # BatchNorm alone above; measured: the same bits on CPU); a repeated mask is far above it
    assert max_relative_error(result.losses, losses) < 1e-6
    assert max_relative_error(nnx.state(trained, nnx.Param), nnx.state(model, nnx.Param)) < 1e-6
    assert max_relative_error(nnx.state(trained, nnx.BatchStat),
                              nnx.state(model, nnx.BatchStat)) < 1e-6


@pytest.mark.parametrize("net, said", [
    (DropoutBatchNormNet, "a flax nnx random stream and BatchNorm's running statistics.*"
                          "the same dropout mask"),
    (BatchNormNet, "BatchNorm's running statistics.*never the batch's statistics")],
    ids=["dropout", "batchnorm"])
def test_flax_nnx_variables_the_model_updates_are_refused_in_params(net, said):
    """Issue 22.10: split whole, the dropout stream's counter passed through
    unchanged and every step drew the same mask, silently; BatchNorm's
    running statistics trained as weights and never moved with the batches."""
    graphdef, whole = nnx.split(net(nnx.Rngs(0, dropout=1)))

    def loss(state, x, y):
        return ((nnx.merge(graphdef, state)(x) - y) ** 2).mean()

    recipe = r"nnx.split\(model, nnx.Param, \.\.\.\).*state=rest"
    with pytest.raises(ValueError, match=f"(?s)params holds {said}.*{recipe}"):
        fsgd.fit(loss, whole, (X, Y), rows=fsgd.Schedule(INDICES), optimizer=optax.adam(1e-2))


def test_flax_nnx_reseeded_by_the_model_rng_through_state_and_refused_when_closed_over():
    """Issue 23 (adversarial pass): Model(rng=) with nnx.reseed in the loss.
    Through the recipe (the rest as state) each step reseeds from
    fold_in(rng, t); a loss that merges a rest it closes over would mutate
    variables made outside the compiled loop: flax's TraceContextError came
    out raw, now a ValueError that gives the recipe."""
    graphdef, params, rest = nnx.split(DropoutBatchNormNet(nnx.Rngs(0, dropout=1)),
                                       nnx.Param, ...)

    def reseeded(params, rest, x, y, *, key):
        model = nnx.merge(graphdef, params, rest)
        nnx.reseed(model, dropout=key)
        return ((model(x) - y) ** 2).mean(), nnx.split(model, nnx.Param, ...)[2]

    def run(rng):
        return fsgd.fit(reseeded, params, (X, Y), rows=fsgd.Schedule(INDICES),
                        model=fsgd.Model(state=rest, rng=rng), optimizer=optax.adam(1e-2))

    first, again, other = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    np.testing.assert_array_equal(first.losses, again.losses)  # the masks come from rng
    assert not np.array_equal(first.losses, other.losses)

    def closed_over(params, x, y, *, key):
        model = nnx.merge(graphdef, params, rest)  # rest made outside fit's trace
        nnx.reseed(model, dropout=key)
        return ((model(x) - y) ** 2).mean()

    recipe = r"own-model.md.*nnx.split\(model, nnx.Param, \.\.\.\).*Model\(state=rest\)"
    with pytest.raises(ValueError, match=f"(?s)variable made outside fit's compiled loop.*"
                                         f"RngKey.*{recipe}"):
        fsgd.fit(closed_over, params, (X, Y), rows=fsgd.Schedule(INDICES),
                 model=fsgd.Model(rng=jax.random.key(3)), optimizer=optax.adam(1e-2))
