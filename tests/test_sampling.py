"""The schedule of rows: shapes, ranges, epochs, determinism, continuation."""

import jax
import numpy as np
import pytest

import functional_sgd as fsgd

KEY = jax.random.key(0)


@pytest.mark.parametrize("replace", [True, False])
def test_shape_dtype_and_range(replace):
    rows = fsgd.sample_indices(KEY, 37, 50, 8, replace=replace)
    assert rows.shape == (50, 8) and rows.dtype == np.int32
    rows = np.asarray(rows)
    assert rows.min() >= 0 and rows.max() < 37


@pytest.mark.parametrize("replace", [True, False])
def test_same_key_same_bits_other_key_other_rows(replace):
    first = np.asarray(fsgd.sample_indices(KEY, 100, 20, 5, replace=replace))
    again = np.asarray(fsgd.sample_indices(jax.random.key(0), 100, 20, 5, replace=replace))
    other = np.asarray(fsgd.sample_indices(jax.random.key(1), 100, 20, 5, replace=replace))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_legacy_uint32_keys_work():
    rows = fsgd.sample_indices(jax.random.PRNGKey(3), 10, 4, 2)
    assert rows.shape == (4, 2)


@pytest.mark.parametrize("n, batch_size", [(10, 5), (10, 3), (7, 1), (7, 7)])
def test_epochs_never_repeat_a_row(n, batch_size):
    per_epoch = n // batch_size
    epochs = 4
    rows = np.asarray(fsgd.sample_indices(KEY, n, epochs * per_epoch, batch_size,
                                          replace=False))
    for epoch in rows.reshape(epochs, per_epoch * batch_size):
        assert len(set(epoch.tolist())) == per_epoch * batch_size
    # The epochs are shuffled differently (when there is anything to shuffle).
    if n > 1 and batch_size < n:
        flat = rows.reshape(epochs, -1)
        assert any(not np.array_equal(flat[0], e) for e in flat[1:])


def test_stochastic_epoch_is_a_permutation():
    rows = np.asarray(fsgd.sample_indices(KEY, 1000, 1000, 1, replace=False))
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.arange(1000))


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("start", [1, 50, 77])
def test_a_schedule_cut_in_two_is_the_same_schedule(replace, start):
    whole = np.asarray(fsgd.sample_indices(KEY, 30, 120, 4, replace=replace))
    head = np.asarray(fsgd.sample_indices(KEY, 30, start, 4, replace=replace))
    tail = np.asarray(fsgd.sample_indices(KEY, 30, 120 - start, 4, replace=replace,
                                          start=start))
    np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


def test_with_replacement_is_uniform():
    """Chi-square over 10 bins of 200 000 draws; fixed key, so deterministic.

    The 0.999 quantile of chi2(9) is 27.9: a biased sampler fails, a fair one
    passes for this key (and for all but 1 in 1000 keys).
    """
    rows = np.asarray(fsgd.sample_indices(KEY, 10, 20_000, 10)).ravel()
    counts = np.bincount(rows, minlength=10)
    expected = rows.size / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9


def test_without_replacement_positions_are_uniform():
    """Each row is equally likely at the head of a shuffled epoch."""
    rows = np.asarray(fsgd.sample_indices(KEY, 5, 5000, 1, replace=False))[:, 0]
    firsts = rows.reshape(1000, 5)[:, 0]  # first row of each of 1000 epochs
    counts = np.bincount(firsts, minlength=5)
    # chi2(4) 0.999 quantile is 18.5
    assert ((counts - 200) ** 2 / 200).sum() < 18.5


def epochs_of(n, epochs, key=KEY):
    """``epochs`` shuffled epochs of ``range(n)`` from one key, one row a step."""
    return np.asarray(fsgd.sample_indices(key, n, n * epochs, 1, replace=False)).reshape(
        epochs, n)


def test_every_position_of_every_row_is_equally_likely():
    """Chi-square over the 10 x 10 table of (position, row) across 4000 epochs
    and 4 keys: each cell expects 400. A sort-free shuffle that favoured some
    rows at some positions fails; the 0.999 quantile of chi2(81) is 126."""
    epochs = np.concatenate([epochs_of(10, 1000, jax.random.key(k)) for k in range(4)])
    table = np.zeros((10, 10))
    for position in range(10):
        table[position] = np.bincount(epochs[:, position], minlength=10)
    assert ((table - 400) ** 2 / 400).sum() < 126


def test_pairs_of_neighbours_are_equally_likely():
    """The ordered pair at positions (0, 1) over 9000 epochs of range(6): each
    of the 30 pairs expects 300; chi2(29) 0.999 quantile is 58.3."""
    epochs = epochs_of(6, 9000)
    counts = np.bincount(epochs[:, 0] * 6 + epochs[:, 1], minlength=36)
    pairs = counts[[a * 6 + b for a in range(6) for b in range(6) if a != b]]
    assert counts.sum() == pairs.sum()  # never the same row twice
    assert ((pairs - 300) ** 2 / 300).sum() < 58.3


@pytest.mark.parametrize("n", [2**31 - 1, 1_000_003])
def test_epochs_of_any_size_are_drawn_without_a_sort(n):
    """A few steps of an epoch of up to 2**31 - 1 rows cost only their rows."""
    rows = np.asarray(fsgd.sample_indices(KEY, n, 4, 1000, replace=False, start=17))
    assert rows.min() >= 0 and rows.max() < n
    assert len(set(rows.ravel().tolist())) == rows.size


def test_epochs_and_keys_give_other_orders():
    first, second = epochs_of(50, 2)
    other_key = epochs_of(50, 1, jax.random.key(7))[0]
    assert sorted(first) == sorted(second) == list(range(50))
    assert not np.array_equal(first, second) and not np.array_equal(first, other_key)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((0, 10, 20, 2), {}, TypeError, "key must be a jax.random key"),
    ((KEY, 0, 10, 1), {}, ValueError, "n must be >= 1"),
    ((KEY, 10, 0, 1), {}, ValueError, "steps must be >= 1"),
    ((KEY, 10, 5, 0), {}, ValueError, "batch_size must be >= 1"),
    ((KEY, 10, 5, 11), {}, ValueError, "batch_size must be at most n=10"),
    ((KEY, 10, 5, 2.0), {}, TypeError, "batch_size must be an int"),
    ((KEY, 10, 5, 2), {"start": -1}, ValueError, "start must be >= 0"),
])
def test_bad_input_names_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fsgd.sample_indices(*args, **kwargs)


@pytest.mark.parametrize("n, batch_size, drop_last", [(10, 3, True), (10, 3, False),
                                                       (1000, 64, True), (1000, 64, False),
                                                       (6, 6, True)])
def test_a_schedule_walked_all_at_once_has_the_bits_of_one_walked_step_by_step(
        n, batch_size, drop_last, monkeypatch):
    """On CPU each step's cycle-walk runs alone (lax.map); on a GPU the whole
    schedule walks at once (vmap). Each position is walked until it lands
    in range(n) either way: the same rows, bit for bit."""
    from functional_sgd.core import _batches

    def draw(each_step):  # a new function, traced afresh (JAX keeps a function's traces)
        monkeypatch.setattr(_batches, "walks_each_step", lambda: each_step)
        schedule = jax.jit(lambda *args, **kwargs: _batches._schedule.__wrapped__(
            *args, **kwargs), static_argnames=("n", "steps", "batch_size", "replace",
                                               "drop_last"))
        return np.asarray(schedule(jax.random.key(3), 5, n=n, steps=40, batch_size=batch_size,
                                   replace=False, drop_last=drop_last))

    step_by_step, at_once = draw(True), draw(False)
    np.testing.assert_array_equal(at_once, step_by_step)
    monkeypatch.undo()
    assert _batches.walks_each_step() == (jax.default_backend() == "cpu")
