"""Replaying an existing loader's order (issue 23.6): ``fsgd.schedule_from``
a torch ``DataLoader``, ``Sampler``, ``BatchSampler`` or lists of indices;
``fsgd.from_batches`` for pre-batched arrays."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import START, X, Y, assert_trees_close
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

import functional_sgd as fsgd

N = 23  # batches of 5 leave 3 rows over


def loader(batch_size=5, drop_last=False, seed=0, **kwargs):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.arange(N)), batch_size=batch_size, shuffle=True,
                      generator=generator, drop_last=drop_last, **kwargs)


def order_of(data_loader, epochs):
    """The rows the loader yields, epoch after epoch, padded with -1."""
    batches = [b.tolist() for _ in range(epochs) for (b,) in data_loader]
    width = max(map(len, batches))
    return np.array([b + [-1] * (width - len(b)) for b in batches])


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_shuffling_data_loader_is_replayed_exactly_and_left_as_it_was(drop_last):
    data_loader = loader(drop_last=drop_last)
    before = data_loader.generator.get_state().clone()
    schedule = fsgd.schedule_from(data_loader, epochs=3)
    assert torch.equal(data_loader.generator.get_state(), before)  # not advanced
    assert schedule.shape == ((4 if drop_last else 5) * 3, 5)
    np.testing.assert_array_equal(schedule, order_of(data_loader, 3))  # what it then yields
    assert (schedule == -1).sum() == (0 if drop_last else 3 * 2)


def test_a_loader_on_torch_global_generator_is_replayed_and_the_global_state_kept():
    torch.manual_seed(1)
    data_loader = loader(seed=None)
    before = torch.get_rng_state().clone()
    schedule = fsgd.schedule_from(data_loader, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(schedule, order_of(data_loader, 2))


def test_samplers_batch_samplers_and_lists_of_indices():
    sampler = RandomSampler(range(N), generator=torch.Generator().manual_seed(2))
    one_row = fsgd.schedule_from(sampler, epochs=2)
    assert one_row.shape == (2 * N, 1)
    np.testing.assert_array_equal(one_row[:, 0], [i for _ in range(2) for i in sampler])
    batched = fsgd.schedule_from(BatchSampler(SequentialSampler(range(7)), 3, False))
    np.testing.assert_array_equal(batched, [[0, 1, 2], [3, 4, 5], [6, -1, -1]])
    rows = list(range(N))
    random.Random(0).shuffle(rows)
    lists = [rows[i:i + 5] for i in range(0, N, 5)]
    schedule = fsgd.schedule_from(lists, epochs=2)
    assert schedule.dtype == np.int32 and schedule.shape == (10, 5)
    np.testing.assert_array_equal(schedule[5:], schedule[:5])
    np.testing.assert_array_equal(schedule[4], lists[4] + [-1, -1])


def torch_loop(data_loader, start, lr, epochs):
    """The lesson's loop over a DataLoader of (x, y), as a torch user writes it."""
    a = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    losses = []
    for _ in range(epochs):
        for xb, yb in data_loader:
            loss = ((xb @ a - yb) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                a.sub_(lr * a.grad)
                a.grad.zero_()
            losses.append(loss.item())
    return a.detach().numpy(), np.array(losses)


@pytest.mark.parametrize("drop_last", [False, True])
def test_fit_on_the_schedule_matches_a_torch_loop_over_the_loader(drop_last):
    x, y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    data_loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                             batch_size=16, shuffle=True, drop_last=drop_last,
                             generator=torch.Generator().manual_seed(3))
    schedule = fsgd.schedule_from(data_loader, epochs=4)
    with jax.enable_x64(True):
        result = fsgd.fit(fsgd.linear_mse, np.asarray(START, np.float64), (x, y), lr=0.1,
                          rows=fsgd.Schedule(schedule, padded=not drop_last))
        params, losses = np.asarray(result.params), np.asarray(result.losses)
    torch_params, torch_losses = torch_loop(data_loader, np.asarray(START), 0.1, epochs=4)
    assert losses.shape == torch_losses.shape == ((6 if drop_last else 7) * 4,)
    # float64 both sides; they differ only in the order of additions (and a short
    # batch is a mean of per-row losses in fit): 1e-12 relative is ~4500 ulps.
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-12)
    np.testing.assert_allclose(params, torch_params, rtol=1e-12)


def test_a_function_of_one_epoch_is_called_once_an_epoch_and_replayed():
    """A hand-written loop's generator that shuffles with Python's random as
    it starts: a new shuffle each epoch, and the random state put back, so
    the loop itself then draws these very batches."""
    import random

    def row_batches():
        rows = list(range(7))
        random.shuffle(rows)
        for start in range(0, 7, 3):
            yield rows[start:start + 3]

    random.seed(0)
    schedule = fsgd.schedule_from(row_batches, epochs=3)
    loop = [rows + [-1] * (3 - len(rows)) for _ in range(3) for rows in row_batches()]
    assert schedule.tolist() == loop
    assert schedule[:3].tolist() != schedule[3:6].tolist()  # shuffled again each epoch
    with pytest.raises(TypeError, match=r"order\(\) must return.*int"):
        fsgd.schedule_from(lambda: 3)


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match=r"epochs must be >= 1"):
        fsgd.schedule_from([[0, 1]], epochs=0)
    with pytest.raises(TypeError, match=r"order.*integer row indices.*0.5"):
        fsgd.schedule_from([[0, 0.5]])
    with pytest.raises(ValueError, match=r"order.*step 1.*empty"):
        fsgd.schedule_from([[0, 1], []])
    with pytest.raises(ValueError, match=r"order.*-2.*>= 0"):
        fsgd.schedule_from([[0, -2]])
    with pytest.raises(ValueError, match=r"order.*no batches"):
        fsgd.schedule_from([])
    with pytest.raises(ValueError, match=r"epoch 2.*used up"):
        fsgd.schedule_from(iter([[0, 1], [2, 3]]), epochs=2)
    with pytest.raises(TypeError, match=r"order must be"):
        fsgd.schedule_from(3)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(4))

    with pytest.raises(ValueError, match=r"IterableDataset.*fsgd.stream"):
        fsgd.schedule_from(DataLoader(Stream(), batch_size=2))


def test_pre_batched_arrays_train_without_reshaping():
    xb, yb = np.asarray(X).reshape(10, 10, 2), np.asarray(Y).reshape(10, 10)
    data, indices = fsgd.from_batches((xb, yb), epochs=2)
    assert data[0].shape == (100, 2) and data[1].shape == (100,) and indices.shape == (20, 10)
    result = fsgd.fit(fsgd.linear_mse, START, data, lr=0.1, rows=fsgd.Schedule(indices))
    a, losses = START, []
    step = jax.jit(jax.value_and_grad(fsgd.linear_mse))
    for t in range(20):  # the loop the pre-batched data was made for
        loss, grad = step(a, xb[t % 10], yb[t % 10])
        a, losses = a - 0.1 * grad, [*losses, loss]
    # float32, two compiles of the same sums: within a few ulps.
    assert_trees_close(result.losses, jnp.stack(losses), rtol=1e-6)
    assert_trees_close(result.params, a, rtol=1e-6)
    as_dict, _ = fsgd.from_batches({"x": xb, "y": yb})
    assert as_dict["x"].shape == (100, 2)
    assert np.shares_memory(as_dict["x"], xb)  # a view, no copy


def test_pre_batched_arrays_that_disagree_are_refused():
    with pytest.raises(ValueError, match=r"data\[1\].*\(10, 5\).*\(10, 10, \.\.\.\)"):
        fsgd.from_batches((np.zeros((10, 10, 2)), np.zeros((10, 5))))
    with pytest.raises(ValueError, match=r"data\[0\].*shape \(10,\).*\(steps, batch, \.\.\.\)"):
        fsgd.from_batches((np.zeros(10),))
    with pytest.raises(ValueError, match=r"data.*no arrays"):
        fsgd.from_batches(())
