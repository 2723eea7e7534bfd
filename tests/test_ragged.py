"""Ragged epochs (``drop_last=False``, ``-1`` padding) and data as any pytree.

The textbook loop this is held against: n = 1003 rows in shuffled batches
of 10 (torch's ``DataLoader(shuffle=True, drop_last=False)``), so every
epoch ends with a batch of 3 rows, whose loss is their mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close

import functional_sgd as fsgd
import reference

N, BATCH, EPOCHS, LR = 1003, 10, 3, 0.05
STEPS = EPOCHS * -(-N // BATCH)  # 101 batches an epoch, the last one of 3 rows
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 3)).astype(np.float32)
Y = (X @ np.array([3.0, -2.0, 0.5], np.float32) + 0.1 * RNG.normal(size=N)).astype(np.float32)
START = np.zeros(3, np.float32)
KEY = jax.random.key(1)


def padded(batches, width=BATCH):
    """Batches of row numbers as an ``indices`` schedule, short ones padded with -1."""
    return np.stack([np.pad(b, (0, width - len(b)), constant_values=-1) for b in batches])


def torch_loader(dataset, seed=0):
    torch = pytest.importorskip("torch")
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=False,
                                       generator=torch.Generator().manual_seed(seed))


def test_sample_indices_drop_last_false_epochs_hold_every_row_once():
    rows = np.asarray(fsgd.sample_indices(KEY, N, STEPS, BATCH, replace=False,
                                          drop_last=False))
    assert rows.shape == (STEPS, BATCH)
    for epoch in rows.reshape(EPOCHS, -1, BATCH):
        assert sorted(epoch[epoch >= 0].tolist()) == list(range(N))
        # the padding is the tail of the epoch's last batch, nowhere else
        assert (epoch[:-1] >= 0).all() and epoch[-1, :N % BATCH].min() >= 0
        assert (epoch[-1, N % BATCH:] == -1).all()
    assert not (rows[:101] == rows[101:202]).all()  # each epoch its own order
    # start= continues the schedule, across an epoch boundary too
    tail = fsgd.sample_indices(KEY, N, 50, BATCH, replace=False, drop_last=False, start=90)
    np.testing.assert_array_equal(tail, rows[90:140])


def test_drop_last_false_changes_nothing_where_batches_divide_n():
    kwargs = dict(steps=30, batch_size=10, key=KEY)
    x, y = X[:1000], Y[:1000]
    assert_trees_close(fsgd.fit(fsgd.linear_mse, START, (x, y), lr=LR,
                                rows=fsgd.Shuffled(drop_last=False), **kwargs),
                       fsgd.fit(fsgd.linear_mse, START, (x, y), lr=LR, rows=fsgd.Shuffled(),
                                **kwargs))
    np.testing.assert_array_equal(
        fsgd.sample_indices(KEY, 1000, 30, 10, replace=False, drop_last=False),
        fsgd.sample_indices(KEY, 1000, 30, 10, replace=False))


def test_three_ragged_epochs_equal_a_torch_dataloader_loop_and_a_numpy_loop():
    """fit on a DataLoader's order replayed as indices (-1 padding) against the
    textbook torch loop over that DataLoader, and a NumPy loop with the
    gradient by hand; both take the short batch's mean over its 3 rows.

    Tolerance: float32 throughout; torch, NumPy and XLA may sum a batch's
    rows in different orders, so a loss may differ in its last bits: rtol
    1e-6 (8 float32 ulps), and atol 1e-7 for the smallest losses (~0.005,
    squares of residuals at the noise level, where those last bits weigh
    more: 9e-8 absolute measured). Params within the same rtol (1.2e-7
    relative measured: the summation orders differ there too).
    """
    torch = pytest.importorskip("torch")
    data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    rows = torch.utils.data.TensorDataset(torch.arange(N))
    # Iterating draws from the generator as it goes: the same seed, the same order.
    row_loader = torch_loader(rows)
    order = [b.numpy() for _ in range(EPOCHS) for (b,) in row_loader]
    assert [len(b) for b in order[:101]] == [10] * 100 + [3]

    a = torch.zeros(3, requires_grad=True)  # the textbook loop
    torch_losses = []
    loader = torch_loader(data)
    for _ in range(EPOCHS):
        for x, y in loader:
            loss = ((x @ a - y) ** 2).mean()  # the short batch: the mean over its 3 rows
            torch_losses.append(loss.item())
            loss.backward()
            with torch.no_grad():
                a -= LR * a.grad
                a.grad.zero_()

    p, numpy_losses = START.copy(), []  # the same loop in NumPy, gradient by hand
    for batch in order:
        error = X[batch] @ p - Y[batch]
        numpy_losses.append(float((error ** 2).mean()))
        p = p - np.float32(LR) * (2 * X[batch].T @ error / np.float32(len(batch)))

    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(padded(order), padded=True))
    assert result.losses.shape == (STEPS,)
    for params, losses in ((a.detach().numpy(), torch_losses), (p, numpy_losses)):
        assert_trees_close(result.params, params, rtol=1e-6)
        assert_trees_close(result.losses, np.array(losses, np.float32), rtol=1e-6, atol=1e-7)
    assert float(result.losses[-1]) < 0.05 < float(result.losses[0])  # it learned the line


def test_keyed_ragged_epochs_equal_their_schedule_in_one_call_chunks_and_on_the_host():
    kwargs = dict(steps=STEPS, batch_size=BATCH, key=KEY, rows=fsgd.Shuffled(drop_last=False))
    keyed = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, **kwargs)
    rows = fsgd.sample_indices(KEY, N, STEPS, BATCH, replace=False, drop_last=False)
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(rows, padded=True))
    assert_trees_close(keyed, scheduled)  # the same bits
    chunked = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, run=fsgd.Run(chunk_size=40), **kwargs)
    assert_trees_close(chunked, keyed)


def test_a_memmap_read_on_the_host_with_padding_gives_the_in_memory_bits(tmp_path):
    x = np.memmap(tmp_path / "x.f32", np.float32, "w+", shape=X.shape)
    x[:] = X
    kwargs = dict(steps=STEPS, batch_size=BATCH, key=KEY, rows=fsgd.Shuffled(drop_last=False))
    in_memory = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, **kwargs)
    assert_trees_close(fsgd.fit(fsgd.linear_mse, START, (x, Y), lr=LR, run=fsgd.Run(chunk_size=64), **kwargs),
                       in_memory)


def test_reference_fit_with_padding_agrees_with_fit():
    """float32; torch and XLA may sum in other orders: tolerances as above."""
    rows = np.asarray(fsgd.sample_indices(KEY, N, STEPS, BATCH, replace=False,
                                          drop_last=False))
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(rows, padded=True))
    params, losses = reference.fit(fsgd.linear_mse, START, (X, Y), lr=LR, indices=rows,
                                   drop_last=False)
    assert_trees_close(result.params, params, rtol=1e-6)
    assert_trees_close(result.losses, losses, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="-1 marks padding only with drop_last=False"):
        reference.fit(fsgd.linear_mse, START, (X, Y), lr=LR, indices=rows)


def test_padding_anywhere_in_a_step_is_the_mean_over_its_real_rows():
    rows = np.array([[5, -1, 7, -1], [1, 2, 3, 4], [-1, -1, -1, 9]])
    result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(rows, padded=True))
    short = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(np.array([[5, 7]])))
    assert_trees_close(result.losses[0], short.losses[0], rtol=1e-6)
    params, _ = reference.fit(fsgd.linear_mse, START, (X, Y), lr=LR, indices=rows,
                              drop_last=False)
    assert_trees_close(result.params, params, rtol=1e-6)
    # traced indices cannot be looked at: with drop_last=False they are taken as padded
    traced = jax.jit(lambda rows: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(rows, padded=True)))(rows)
    assert_trees_close(traced.params, result.params)


def test_a_stream_whose_last_batch_is_short_equals_its_padded_schedule():
    order = [np.arange(i, min(i + BATCH, N)) for i in range(0, N, BATCH)]  # last: 3 rows
    stream = fsgd.stream(((X[b], Y[b]) for b in order), block=32)  # the short one in block 4
    streamed = fsgd.fit(fsgd.linear_mse, START, stream, lr=LR)
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(padded(order), padded=True))
    assert int(streamed.steps_run) == len(order)
    assert_trees_close(streamed, scheduled)


def test_a_torch_dataloader_with_a_short_last_batch_streams():
    torch = pytest.importorskip("torch")
    data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    rows = torch.utils.data.TensorDataset(torch.arange(N))
    order = [b.numpy() for (b,) in torch_loader(rows)]
    streamed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(torch_loader(data), block=64),
                        lr=LR)
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, rows=fsgd.Schedule(padded(order), padded=True))
    assert_trees_close(streamed, scheduled)


def test_a_stream_with_a_short_batch_needs_a_loss_that_runs_on_one_row():
    def loss(params, x, y):  # reshapes to a batch of at least two rows
        return fsgd.linear_mse(params, x.reshape(2, -1, 3)[0], y.reshape(2, -1)[0])

    batches = [(X[:10], Y[:10]), (X[:10], Y[:10]), (X[:4], Y[:4])]
    with pytest.raises(ValueError, match="with a short batch, loss is evaluated on batches "
                                         "of one row"):
        fsgd.fit(loss, START, fsgd.stream(batches), lr=LR)
    fsgd.fit(loss, START, fsgd.stream(batches[:2]), lr=LR)  # without one: it trains


def test_a_stream_batch_longer_than_the_first_is_refused_naming_it():
    batches = [(X[:10], Y[:10]), (X[:3], Y[:3]), (X[:11], Y[:11])]
    with pytest.raises(ValueError, match=r"batch 2 of the stream has.*or be shorter"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches), lr=LR)
    with pytest.raises(ValueError, match=r"batch 1 of the stream"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream([(X[:10], Y[:10]), (X[:3], Y[:4])]),
                 lr=LR)


def dict_loss(params, batch):
    return fsgd.linear_mse(params, batch["x"], batch["y"])


def nested_loss(params, inputs, y):
    x, (scale,) = inputs
    return fsgd.linear_mse(params, x * scale[:, None], y)


def flat_dict_loss(params, x, y):
    return dict_loss(params, {"x": x, "y": y})


def flat_nested_loss(params, x, scale, y):
    return nested_loss(params, (x, (scale,)), y)


@pytest.mark.parametrize("kwargs", [
    {"steps": 20},
    lambda: {"steps": STEPS, "batch_size": BATCH, "key": KEY, "rows": fsgd.Shuffled(drop_last=False)},
], ids=["batch", "ragged"])
def test_dict_and_nested_tuple_data_equal_the_tuple_form(kwargs):
    """The same loss on the same arrays, as a pytree or as a tuple: the same bits."""
    kwargs = kwargs() if callable(kwargs) else kwargs  # built here
    scale = np.linspace(0.5, 1.5, N, dtype=np.float32)
    as_dict = fsgd.fit(dict_loss, START, {"x": X, "y": Y}, lr=LR, **kwargs)
    flat = fsgd.fit(flat_dict_loss, START, (X, Y), lr=LR, **kwargs)
    assert_trees_close(as_dict, flat)
    nested = fsgd.fit(nested_loss, START, ((X, (scale,)), Y), lr=LR, **kwargs)
    flat = fsgd.fit(flat_nested_loss, START, (X, scale, Y), lr=LR, **kwargs)
    assert_trees_close(nested, flat)


def test_dict_data_through_chunks_jit_and_the_host():
    kwargs = dict(steps=30, batch_size=BATCH, key=KEY)
    expected = fsgd.fit(dict_loss, START, {"x": X, "y": Y}, lr=LR, **kwargs)
    chunked = fsgd.fit(dict_loss, START, {"x": X, "y": Y}, lr=LR, run=fsgd.Run(chunk_size=7), **kwargs)
    jitted = jax.jit(lambda d: fsgd.fit(dict_loss, START, d, lr=LR, **kwargs))(
        {"x": X, "y": Y})
    assert_trees_close(chunked, expected)
    assert_trees_close(jitted.params, expected.params)


def test_a_bad_leaf_in_pytree_data_is_named_by_its_path():
    with pytest.raises(ValueError, match=r"data\['y'\].shape=\(5,\)"):
        fsgd.fit(dict_loss, START, {"x": X, "y": Y[:5]}, lr=LR, steps=2)
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"data\[0\]\[0\] contains NaN"):
        fsgd.fit(nested_loss, START, ((bad, (Y,)), Y), lr=LR, steps=2)
    with pytest.raises(TypeError, match=r"data\['x'\] must be an array; got str"):
        fsgd.fit(dict_loss, START, {"x": "rows", "y": Y}, lr=LR, steps=2)
    with pytest.raises(TypeError, match="data: a stream's batches must be tuples of arrays"):
        fsgd.fit(dict_loss, START, fsgd.stream([{"x": X, "y": Y}]), lr=LR)


def test_pytree_data_on_a_mesh_equals_one_device():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    kwargs = dict(steps=20, batch_size=BATCH, key=KEY, rows=fsgd.Shuffled(drop_last=False))
    one = fsgd.fit(dict_loss, START, {"x": X, "y": Y}, lr=LR, **kwargs)
    many = fsgd.fit(dict_loss, START, {"x": X, "y": Y}, lr=LR, run=fsgd.Run(mesh=mesh), **kwargs)
    assert_trees_close(many, one, rtol=1e-6, atol=1e-7)  # float32, per-row sums


def test_jax_vmap_over_lr_of_ragged_epochs_is_one_sweep():
    kwargs = dict(steps=STEPS, batch_size=BATCH, key=KEY, rows=fsgd.Shuffled(drop_last=False))
    sweep = jax.vmap(lambda lr: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=lr, **kwargs))(
        jnp.array([0.01, LR]))
    single = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, **kwargs)
    assert_trees_close(sweep.params[1], single.params, rtol=1e-6)


ROWS = np.asarray(fsgd.sample_indices(KEY, N, 5, BATCH, replace=False, drop_last=False,
                                      start=99))


@pytest.mark.parametrize("kwargs, error, match", [
    (lambda: {"steps": 5, "batch_size": 10, "key": KEY, "rows": fsgd.Shuffled(drop_last=0)}, TypeError,
     "drop_last must be True or False; got 0"),
    # drop_last without shuffled epochs cannot be built: Sampled rows have no epochs to cut
    (lambda: {"steps": 5, "batch_size": 10, "key": KEY, "rows": fsgd.Sampled(drop_last=False)},
     TypeError, "unexpected keyword argument 'drop_last'"),
    (lambda: {"steps": 5, "rows": fsgd.Shuffled(drop_last=False)}, ValueError,
     r"rows=Shuffled\(drop_last=False\) needs batch_size"),
    (lambda: {"rows": fsgd.Schedule(ROWS)}, ValueError,
     r"indices must lie in \[0, 1003\).*-1 to .*-1 marks padding only with "
     r"fsgd.Schedule\(indices, padded=True\)"),
    (lambda: {"rows": fsgd.Schedule(ROWS - 1, padded=True)}, ValueError,
     r"indices must lie in \[0, 1003\) or -1 \(padding\).*got values from -2"),
    (lambda: {"rows": fsgd.Schedule(np.array([[0, N]]), padded=True)}, ValueError, "got values from 0 to 1003"),
    (lambda: {"rows": fsgd.Schedule(np.array([[0, 1], [-1, -1]]), padded=True)}, ValueError,
     "steps of padding only.*at step 1"),
])
def test_bad_ragged_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=LR, **kwargs)


def test_sample_indices_refuses_drop_last_without_epochs():
    with pytest.raises(ValueError, match="drop_last=False needs replace=False"):
        fsgd.sample_indices(KEY, N, 5, BATCH, drop_last=False)
    with pytest.raises(TypeError, match="drop_last must be True or False"):
        fsgd.sample_indices(KEY, N, 5, BATCH, replace=False, drop_last="no")


@pytest.mark.parametrize("model", [{"rng": jax.random.key(5)}, {"has_aux": True},
                                   {"state": jnp.zeros(())}])
def test_padding_with_a_batch_wide_model_is_refused(model):
    def loss(params, *args, key=None):
        value = dict_loss(params, {"x": args[-2], "y": args[-1]})
        return (value, args[0]) if "state" in model else (value, value) \
            if "has_aux" in model else value

    with pytest.raises(ValueError, match=rf"short batches \(Shuffled\(drop_last=False\), or a "
                                         rf"padded Schedule\) cannot run with Model\({list(model)[0]}"):
        fsgd.fit(loss, START, (X, Y), lr=LR, steps=5, batch_size=BATCH, key=KEY,
                 rows=fsgd.Shuffled(drop_last=False), model=fsgd.Model(**model))


def test_a_loss_that_fails_on_one_row_is_refused_with_drop_last():
    def loss(params, x, y):  # reshapes to a batch of at least two rows
        return fsgd.linear_mse(params, x.reshape(2, -1, 3)[0], y.reshape(2, -1)[0])

    with pytest.raises(ValueError, match=r"with short batches \(Shuffled\(drop_last=False\), "
                                         r"or a padded Schedule\), loss is evaluated on batches "
                                         "of one row and must be a mean over rows"):
        fsgd.fit(loss, START, (X, Y), lr=LR, steps=5, batch_size=BATCH, key=KEY,
                 rows=fsgd.Shuffled(drop_last=False))
