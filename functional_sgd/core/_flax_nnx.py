"""A flax nnx model through ``fit``: the recipe, and the mistake it avoids refused.

An nnx model keeps more than its weights: BatchNorm's running statistics,
and each random stream (``nnx.Rngs``, which ``nnx.Dropout`` draws from) as
a key (``RngKey``) and a counter (``RngCount``) that every draw moves on.
Split the ``nnx.Param`` weights from the rest, and carry the rest as
``state``: the loss merges the two into the model, calls it, and returns
the rest as it left it (statistics updated, counters moved on). The
weights train; the rest is carried from step to step, never
differentiated. Merge the result back into a model at the end:

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> import functional_sgd as fsgd
>>> class Net(nnx.Module):
...     def __init__(self, rngs):
...         self.hidden = nnx.Linear(2, 8, rngs=rngs)
...         self.norm = nnx.BatchNorm(8, rngs=rngs)
...         self.dropout = nnx.Dropout(0.2, rngs=rngs)
...         self.out = nnx.Linear(8, 1, rngs=rngs)
...     def __call__(self, x):
...         return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))
>>> x = jax.random.normal(jax.random.key(0), (128, 2))
>>> y = (x ** 2).sum(axis=1, keepdims=True)
>>> graphdef, params, rest = nnx.split(Net(nnx.Rngs(0, dropout=1)), nnx.Param, ...)
>>> def loss(params, rest, x, y):
...     model = nnx.merge(graphdef, params, rest)
...     value = ((model(x) - y) ** 2).mean()
...     return value, nnx.split(model, nnx.Param, ...)[2]  # the rest, moved on
>>> result = fsgd.fit(loss, params, (x, y), model=fsgd.Model(state=rest),
...                   optimizer=optax.adam(1e-2), steps=200, batch_size=32,
...                   key=jax.random.key(2))
>>> model = nnx.merge(graphdef, result.params, result.state)
>>> int(model.dropout.rngs.count[...])  # one dropout mask per step
200
>>> bool(result.losses[-20:].mean() < 0.5 * result.losses[:20].mean())
True
>>> model.eval()  # dropout off, BatchNorm's running statistics: for predictions

With ``Model(rng=...)`` as well, step ``t``'s loss gets
``key=fold_in(rng, t)``; ``nnx.reseed(model, dropout=key)`` after the merge
draws that step's mask from it (``jax.vmap`` over ``rng``: a seed ensemble).
The rest must still come in as ``state``: a loss that merges a rest it
closes over (or updates a model it closes over) would change nnx variables
made outside the compiled loop, which flax refuses (``TraceContextError``);
:func:`refuse_outside_variables` answers that with this recipe.

>>> def reseeded(params, rest, x, y, *, key):
...     model = nnx.merge(graphdef, params, rest)
...     nnx.reseed(model, dropout=key)
...     value = ((model(x) - y) ** 2).mean()
...     return value, nnx.split(model, nnx.Param, ...)[2]
>>> result = fsgd.fit(reseeded, params, (x, y), optimizer=optax.adam(1e-2), steps=20,
...                   model=fsgd.Model(state=rest, rng=jax.random.key(3)),
...                   batch_size=32, key=jax.random.key(2))
>>> result.losses.shape
(20,)

Split whole (``nnx.split(model)``) and passed as ``params``, the counter
would pass through unchanged, as every leaf that does not train does, and
every step would draw the same dropout mask: :func:`refuse_updated_variables`
refuses it (and BatchNorm's statistics in ``params``, which would train
as weights). flax is never imported here: a model holding nnx objects has
imported it already.
"""

import functools
import sys

import jax


def refuse_updated_variables(treedef):
    """Refuse params (of this structure) holding nnx variables that the
    model's forward pass updates: a random stream (``RngKey``, ``RngCount``)
    or BatchNorm's running statistics (``BatchStat``).

    In ``params`` they would be weights: the counter would pass through
    unchanged (the same dropout mask every step), the statistics would get
    a gradient and an update and never the batch's statistics. A dict
    lookup when flax is not imported; one walk per structure when it is.

    Raises:
      ValueError: naming where they sit and giving the recipe above.
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:  # no nnx model here
        return
    found = _updated_variables(treedef, nnx)
    if not found:
        return
    streams, stats = (any(kind == k for _, k in found) for kind in ("stream", "statistics"))
    raise ValueError(
        "params holds "
        + " and ".join(what for what, on in (
            ("a flax nnx random stream", streams),
            ("BatchNorm's running statistics (nnx.BatchStat)", stats)) if on)
        + f" (at {', '.join(path for path, _ in found[:4])}"
        + (", ...)" if len(found) > 4 else ")") + ": the model updates "
        "them as it runs, but in params they would be weights: "
        + ("its counter would pass through unchanged and every step would draw the same "
           "dropout mask. " if streams else "they would get a gradient and an update, never "
           "the batch's statistics. ")
        + "Train the weights and carry the rest as state: graphdef, params, rest = "
        "nnx.split(model, nnx.Param, ...); a loss(params, rest, *batch) that calls model = "
        "nnx.merge(graphdef, params, rest) and returns (value, nnx.split(model, nnx.Param, "
        "...)[2]); fit(loss, params, data, model=fsgd.Model(state=rest), ...); then nnx.merge(graphdef, "
        "result.params, result.state).")


def refuse_outside_variables(error):
    """Raises a ``ValueError`` giving the recipe when ``error`` is flax's
    ``TraceContextError``: the loss updated an nnx variable made outside
    ``fit``'s trace (a model, or the rest it is merged from, closed over by
    the loss: ``nnx.reseed``, a dropout draw and BatchNorm's statistics all
    update one). Any other error is left to its caller."""
    if type(error).__name__ != "TraceContextError" or \
            not type(error).__module__.startswith("flax"):
        return
    raise ValueError(
        "the loss updates a flax nnx variable made outside fit's compiled loop (a model, or "
        "the rest it is merged from, closed over by the loss; nnx.reseed, a dropout draw "
        "and BatchNorm's statistics update one), which flax refuses: "
        f"{error}. Pass what the model updates through fit, as the nnx recipe does "
        "(docs/how-to/own-model.md): graphdef, params, rest = nnx.split(model, nnx.Param, "
        "...); model=fsgd.Model(state=rest) (with rng=... too, for a key per step); a "
        "loss(params, rest, *batch) (with rng: and key=) that calls model = "
        "nnx.merge(graphdef, params, rest) (then nnx.reseed(model, dropout=key) to reseed) "
        "and returns (value, nnx.split(model, nnx.Param, ...)[2]).") from error


@functools.lru_cache(maxsize=256)
def _updated_variables(treedef, nnx):
    """``[(path, "stream" or "statistics")]`` of the nnx variables in a tree
    of this structure that the model updates as it runs."""
    kinds = {"stream": getattr(nnx, "RngState", None),
             "statistics": getattr(nnx, "BatchStat", None)}

    def kind(x):
        held = x.type if type(x).__name__ == "VariableState" else type(x)  # flax < 0.11
        return next((name for name, k in kinds.items() if k is not None
                     and isinstance(held, type) and issubclass(held, k)), None)

    tree = treedef.unflatten([0] * treedef.num_leaves)
    return tuple((jax.tree_util.keystr(path), kind(leaf)) for path, leaf in
                 jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: kind(x) is not None)
                 if kind(leaf))
