"""The one-pass full-batch step in XLA's row blocks against the plain step it replaces.

(The row kernel, which takes the library's own row means on the CPU, has
its own tests: ``test_row_kernel.py``. Here it is switched off.)

Tolerances, and why: the one-pass step sums the same per-row terms in
another order (each block's mean, weighted by its share of the rows), so it
differs from the plain step by rounding only.
* float64: ~1e-15 relative a step measured; the bound is 1e-10 relative.
* float32: ~1e-7 a step, damped by a stable descent; the bound is 2e-5
  relative on params and losses over the run.
"""

import dataclasses

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import functional_sgd as fsgd
from functional_sgd import speed
from functional_sgd.lesson._classify import LOSSES
from functional_sgd.speed import SpeedPlan

STEPS = 40
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}

# 1 KiB blocks: at d = 3 (16 bytes a row with y) that is 64 rows, so 1000
# rows make 15 full blocks and a tail of 40.
SMALL_BLOCKS = SpeedPlan(one_pass=True, row_kernel=False, row_block_bytes=1024)
PLAIN = SpeedPlan(one_pass=False)


def regression(n, d, dtype, k=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d)).astype(dtype)
    w = rng.normal(size=(d,) if k is None else (d, k))
    noise = rng.uniform(0, 1, (n,) if k is None else (n, k))
    return x, (x @ w + noise).astype(dtype)


def both(loss, params, data, plan=SMALL_BLOCKS, **kwargs):
    """The fit with ``plan`` and with the plain step, exact moments off in both."""
    kwargs = {"lr": 0.2, "steps": STEPS, **kwargs}
    return tuple(fsgd.fit(loss, params, data, **kwargs, run=fsgd.Run(
        speed=dataclasses.replace(p, exact_moments=False))) for p in (plan, PLAIN))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1000, 64, 7])  # tail, one whole block, one short block
def test_one_pass_equals_the_plain_step(dtype, n, request):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    x, y = regression(n, 3, dtype)
    one, plain = both(fsgd.linear_mse, np.zeros(3, dtype), (x, y))
    assert one.params.dtype == plain.params.dtype == dtype
    rtol = TOLERANCE[dtype]
    assert_trees_close((one.params, one.losses), (plain.params, plain.losses), rtol=rtol,
                       atol=rtol)


def test_a_users_mean_loss_with_pytree_params_labels_and_an_optimizer(x64):
    """Logistic regression as a dict of params, integer labels, optax adam:
    the caller's word (``one_pass=True``) that the loss is a mean over rows.
    In float64: adam divides by the gradient's own size, which magnifies a
    float32 rounding of a near-zero gradient to ~1e-4 over 40 steps."""
    x, y = regression(1000, 3, np.float64)
    labels = (y > np.median(y)).astype(np.int32)

    def loss(p, x, labels):
        logits = x @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()

    params = {"w": np.zeros(3), "b": np.float64(0.0)}
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes dtypes
        one, plain = both(loss, params, (x, labels), optimizer=optax.adam(0.05), lr=None)
    assert_trees_close((one.params, one.losses), (plain.params, plain.losses), rtol=1e-10,
                       atol=1e-10)


def test_several_outputs_and_a_learning_rate_sweep():
    x, y = regression(1000, 3, np.float32, k=2)
    start = np.zeros((3, 2), np.float32)

    def sweep(plan):
        return jax.jit(jax.vmap(lambda lr: fsgd.fit(
            fsgd.linear_mse, start, (x, y), lr=lr, steps=STEPS,
            run=fsgd.Run(speed=dataclasses.replace(plan, exact_moments=False))).params))(
                jnp.array([0.05, 0.1, 0.3]))

    assert_trees_close(sweep(SMALL_BLOCKS), sweep(PLAIN), rtol=2e-5, atol=2e-5)


def classification(n, d, seed=0):
    """Standard normal images, 0/1 targets from a noisy linear rule, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ rng.standard_normal(d) + rng.standard_normal(n) > 0).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_classifiers_losses_in_one_pass_equal_the_plain_step(name):
    """The lesson's mnist_loss and cross-entropy of linear scores: means over
    rows of a function of ``x_i · w + b`` and ``y_i``, so blocks sum to the
    same value and gradient. Float32 bound as for ``linear_mse`` (2e-5:
    ~1e-7 of reordered sums a step, over 40 steps of a stable descent)."""
    x, y = classification(1000, 3)
    params = (np.zeros(3, np.float32), np.float32(0.0))
    one, plain = both(LOSSES[name], params, (x, y), lr=0.5)
    assert_trees_close((one.params, one.losses), (plain.params, plain.losses), rtol=2e-5,
                       atol=2e-5)
    assert float(plain.losses[-1]) < float(plain.losses[0])  # it learnt: a real comparison


def loops(loss, params, data, plan):
    """``while`` loops in the program ``fit`` compiles with ``plan``."""
    text = jax.jit(lambda lr: fsgd.fit(loss, params, data, lr=lr, steps=STEPS,
                                       run=fsgd.Run(speed=dataclasses.replace(
                                           plan, exact_moments=False))).params
                   ).lower(0.1).as_text()
    return text.count("stablehlo.while")


def test_the_blocks_are_really_taken():
    """The one-pass program loops over the blocks inside the step: one more
    while loop than the plain step's (so the tests above compare two paths)."""
    x, y = regression(1000, 3, np.float32)
    start = np.zeros(3, np.float32)
    assert loops(fsgd.linear_mse, start, (x, y), SMALL_BLOCKS) == \
        loops(fsgd.linear_mse, start, (x, y), PLAIN) + 1


@pytest.mark.parametrize("name", ["linear_mse", *sorted(LOSSES)])
def test_fit_takes_one_pass_itself_for_the_librarys_row_means(name, monkeypatch):
    """``one_pass="auto"`` in ``fit``: taken for ``linear_mse`` and the
    classifier's two losses on row-major data past ``ONE_PASS_MIN_BYTES``
    (lowered here to this small problem's size), never for a loss it does not
    know, even one computing the same."""
    monkeypatch.setattr(speed._plan, "ONE_PASS_MIN_BYTES", 1)
    x, y = classification(64, 300)  # 300 columns: kept row-major
    if name == "linear_mse":
        loss, params = fsgd.linear_mse, np.zeros(300, np.float32)
    else:
        loss, params = LOSSES[name], (np.zeros(300, np.float32), np.float32(0.0))
    auto = SpeedPlan(row_kernel=False, row_block_bytes=16 * 1024)  # 5 blocks of about 77 KB
    plain = loops(loss, params, (x, y), PLAIN)
    assert loops(loss, params, (x, y), auto) == plain + 1
    same_but_unknown = lambda params, x, y: loss(params, x, y)
    assert loops(same_but_unknown, params, (x, y), auto) == plain

    @functools.wraps(loss)  # copies the loss's attributes: no mark may come with them
    def square_root_of(params, x, y):  # not a mean over rows: blocks would sum it wrongly
        return jnp.sqrt(loss(params, x, y))

    assert loops(square_root_of, params, (x, y), auto) == plain


@pytest.mark.parametrize("transpose", [True, False])
def test_the_block_function_gives_the_loss_and_its_gradient(transpose):
    x, y = regression(100, 3, np.float32)
    a = jnp.array([0.5, -1.0, 2.0])
    want_value, want_grad = jax.value_and_grad(fsgd.linear_mse)(a, x, y)
    # 16 bytes a row: 1, 10 and 7 blocks (of 14 and 15 rows); 16 and 1 bytes would
    # make 100 and 1600, capped at MAX_BLOCKS (16, of 6 and 7 rows).
    for block_bytes, blocks in ((16_000, 1), (160, 10), (240, 7), (16, speed.MAX_BLOCKS),
                                (1, speed.MAX_BLOCKS)):
        blocked, stored = speed.one_pass(fsgd.linear_mse, a, (x, y), block_bytes,
                                         transpose=transpose)
        assert len(stored) == 2 * blocks
        assert stored[0].shape[0] == (3 if transpose else 100 // blocks)
        value, grad = jax.value_and_grad(blocked)(a, *stored)
        assert_trees_close((value, grad), (want_value, want_grad), rtol=1e-5, atol=1e-6)


def test_the_step_reads_its_blocks_where_they_are_stored():
    """No block is sliced (copied) out of the data inside the compiled loop:
    every block is an array of its own, read in place by its branch."""
    x, y = regression(1000, 3, np.float32)
    text = jax.jit(lambda lr: fsgd.fit(fsgd.linear_mse, np.zeros(3, np.float32), (x, y), lr=lr,
                                       steps=STEPS, run=fsgd.Run(speed=dataclasses.replace(
                                           SMALL_BLOCKS, exact_moments=False))).params
                   ).lower(0.1).compile().as_text()
    assert "conditional(" in text
    assert "dynamic-slice" not in text


def resolved(plan=None, *, n=10_000, d=1000, exact_mse=True, full_batch=True, mesh=None,
             plain_model=True, row=None):
    """``one_pass`` as ``decide`` resolves it for shapes (no params: the row
    kernel cannot take them, so this is the rule of the row blocks)."""
    data = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
    row = ("squared_error" if exact_mse else None) if row is None else row or None
    return speed.decide(plan, speed.Problem(exact_mse=exact_mse, params=None, data=data,
                                            full_batch=full_batch, steps=100, mesh=mesh,
                                            plain_model=plain_model, row=row
                                            )).one_pass  # linear_mse is a row mean, as fit says


def test_auto_takes_one_pass_only_for_known_row_means_on_large_row_major_data():
    assert resolved() is True  # 1e4 x 1000: 40 MB, kept row-major
    assert resolved(exact_mse=False) is False  # any other loss: never guessed to be a mean
    assert resolved(exact_mse=False, row="mnist_distance") is True  # the classifier's losses
    assert resolved(row=False) is False
    assert resolved(row="squared_error", plain_model=False) is False  # a key, state or aux
    assert resolved(d=100, n=100_000) is False  # column-major data: level, for a longer compile
    assert resolved(SpeedPlan(column_major=False), d=100, n=100_000) is True
    assert resolved(n=1000) is False  # 4 MB: in cache, read twice at cache speed
    assert resolved(full_batch=False) is False
    assert resolved(SpeedPlan(one_pass=False)) is False  # switched off


@pytest.mark.parametrize("kwargs, message", [
    ({"full_batch": False}, "full-batch only"),
    ({"mesh": object()}, "mesh"),
    ({"plain_model": False}, r"the model has parts \(Model\(rng="),
])
def test_one_pass_true_says_why_it_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=f"one_pass=True.*{message}"):
        resolved(SpeedPlan(one_pass=True), **kwargs)


def test_fit_refuses_one_pass_for_mini_batches_before_compiling():
    x, y = regression(100, 3, np.float32)
    with pytest.raises(ValueError, match=r"one_pass=True\) cannot run: it is full-batch only"):
        fsgd.fit(fsgd.linear_mse, np.zeros(3, np.float32), (x, y), lr=0.1, steps=3,
                 batch_size=10, key=jax.random.key(0), run=fsgd.Run(speed=SpeedPlan(one_pass=True)))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1MB"])
def test_row_block_bytes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="row_block_bytes"):
        SpeedPlan(row_block_bytes=bad)


def test_one_pass_must_be_auto_true_or_false():
    with pytest.raises(ValueError, match="one_pass"):
        SpeedPlan(one_pass="yes")
