"""Data read on the host a block at a time: memmaps and streams of batches
give the bits of the same run on in-memory arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Crash, assert_trees_close, crash_after

import functional_sgd as fsgd
import reference

N, D = 3000, 5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype(np.float32)
Y = (X @ np.arange(1, D + 1, dtype=np.float32)).astype(np.float32)
START = jnp.zeros(D)
KEY = jax.random.key(3)


@pytest.fixture
def on_disk(tmp_path):
    arrays = []
    for name, a in (("x", X), ("y", Y)):
        mapped = np.memmap(tmp_path / name, a.dtype, "w+", shape=a.shape)
        mapped[:] = a
        mapped.flush()
        arrays.append(np.memmap(tmp_path / name, a.dtype, "r", shape=a.shape))
    return tuple(arrays)


MODES = {
    "sampled": {"steps": 300, "batch_size": 32, "key": KEY},
    "shuffled": {"steps": 300, "batch_size": 32, "key": KEY, "rows": fsgd.Shuffled()},
    "schedule": {"rows": fsgd.Schedule(np.asarray(fsgd.sample_indices(KEY, N, 300, 16)))},
    "stop rule": {"steps": 300, "batch_size": 32, "key": KEY, "stop": fsgd.Stop(patience=5)},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 7, 128])
def test_a_memmap_gives_the_bits_of_the_array_in_memory(on_disk, mode, chunk_size):
    kwargs = MODES[mode]
    in_memory = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.01, **kwargs)
    blocks = []
    read = fsgd.fit(fsgd.linear_mse, START, on_disk, lr=0.01, run=fsgd.Run(chunk_size=chunk_size, on_chunk=blocks.append), **kwargs)
    assert_trees_close(read, in_memory, rtol=0, atol=0)
    if chunk_size is not None and mode != "stop rule":
        assert [int(b.steps_run) for b in blocks][:2] == [chunk_size, chunk_size]


def test_only_the_scheduled_rows_are_checked_for_nan(tmp_path):
    x = np.memmap(tmp_path / "x", np.float32, "w+", shape=X.shape)
    x[:] = X
    x[0, 0] = np.nan  # row 0 is never scheduled below: it is never read
    rows = 1 + np.asarray(fsgd.sample_indices(KEY, N - 1, 40, 8))
    fsgd.fit(fsgd.linear_mse, START, (x, Y), lr=0.01, rows=fsgd.Schedule(rows))
    rows[30, 3] = 0
    with pytest.raises(ValueError, match=r"data\[0\] holds NaN or inf in the rows of steps"):
        fsgd.fit(fsgd.linear_mse, START, (x, Y), lr=0.01, rows=fsgd.Schedule(rows), run=fsgd.Run(chunk_size=10))


def test_a_memmap_with_a_mesh_is_refused(on_disk):
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="data read on the host"):
        fsgd.fit(fsgd.linear_mse, START, on_disk, lr=0.01, run=fsgd.Run(mesh=mesh), **MODES["sampled"])


@pytest.mark.parametrize("mode", ["sampled", "shuffled", "schedule"])
def test_a_memmap_run_resumes_from_its_checkpoint_with_the_bits_of_one_run(on_disk, tmp_path,
                                                                           mode):
    kwargs = MODES[mode]
    in_memory = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.01, **kwargs)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fsgd.fit(fsgd.linear_mse, START, on_disk, lr=0.01, run=fsgd.Run(chunk_size=64, on_chunk=crash_after(128), checkpoint=path), **kwargs)
    starts = []
    resumed = fsgd.fit(fsgd.linear_mse, START, on_disk, lr=0.01, run=fsgd.Run(chunk_size=64, on_chunk=lambda r: starts.append(int(r.step) - int(r.steps_run)), checkpoint=path), **kwargs)
    assert starts[0] == 128
    assert_trees_close(resumed, in_memory, rtol=0, atol=0)
    # Other data is refused (a memmap is described by its file and a sample of rows).
    with pytest.raises(ValueError, match="written by another run"):
        fsgd.fit(fsgd.linear_mse, START, (X, Y * 2), lr=0.01, run=fsgd.Run(chunk_size=64, checkpoint=path),
                 **kwargs)


def test_a_memmap_fingerprint_reads_a_sample_and_sees_a_changed_row(tmp_path, on_disk):
    from functional_sgd.drivers import describe
    from functional_sgd.drivers._fingerprint import SAMPLED_ROWS
    x = np.memmap(tmp_path / "x", np.float32, "r+", shape=X.shape)
    before = describe(x)
    assert before == describe(on_disk[0]) and "sampled rows" in before
    x[0, 0] += 1  # row 0 is always sampled
    assert describe(x) != before
    assert SAMPLED_ROWS < N


def batches_of(rows):
    for r in rows:
        yield X[r], Y[r]


@pytest.mark.parametrize("block", [1, 64, 256])
def test_a_generator_of_batches_gives_the_bits_of_the_schedule(block):
    rows = np.asarray(fsgd.sample_indices(KEY, N, 1000, 10))
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05, rows=fsgd.Schedule(rows))
    streamed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(rows), block=block),
                        lr=0.05)
    assert_trees_close(streamed, scheduled, rtol=0, atol=0)


def test_a_stream_trains_params_with_a_frozen_int_leaf_as_arrays_do():
    """A stream takes the arrays' checks and model: an int leaf stays as it
    is (it does not train), the float leaf trains to the same bits."""
    def loss(params, x, y):
        return fsgd.linear_mse(params["w"] + 0 * params["count"].sum().astype(x.dtype), x, y)

    rows = np.asarray(fsgd.sample_indices(KEY, N, 40, 10))
    params = {"w": START, "count": jnp.arange(2)}
    scheduled = fsgd.fit(loss, params, (X, Y), lr=0.05, rows=fsgd.Schedule(rows))
    streamed = fsgd.fit(loss, params, fsgd.stream(batches_of(rows), block=16), lr=0.05)
    assert_trees_close(streamed, scheduled, rtol=0, atol=0)
    assert streamed.params["count"].dtype == params["count"].dtype
    np.testing.assert_array_equal(streamed.params["count"], params["count"])


def test_a_torch_dataloader_gives_the_bits_of_its_order_replayed():
    torch = pytest.importorskip("torch")
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X.copy()),
                                             torch.from_numpy(Y.copy()))

    def loader(data=dataset):
        return torch.utils.data.DataLoader(data, batch_size=10, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(0))

    # The order a loader yields (iterating draws a worker seed from the
    # generator first, so it is not batch_sampler's order): read it off the rows.
    rows = torch.utils.data.TensorDataset(torch.arange(N))
    order = np.stack([batch.numpy() for (batch,) in loader(rows)])
    streamed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(loader(), block=100), lr=0.05)
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05, rows=fsgd.Schedule(order))
    assert_trees_close(streamed, scheduled, rtol=0, atol=0)
    params, losses = reference.fit(fsgd.linear_mse, np.zeros(D, np.float32), (X, Y), lr=0.05,
                                   indices=order)
    # float32, torch sums in another order: as tests/test_agreement.py holds float32
    assert_trees_close(streamed.params, params, rtol=1e-5)
    assert_trees_close(streamed.losses, losses, rtol=0, atol=1e-5)


def test_steps_cut_a_stream_and_a_stop_rule_ends_it():
    rows = np.asarray(fsgd.sample_indices(KEY, N, 500, 10))
    cut = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(rows), block=64), lr=0.05,
                   steps=130)
    assert_trees_close(cut, fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05,
                                     rows=fsgd.Schedule(rows[:130])), rtol=0, atol=0)
    stopped = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(rows), block=64),
                       lr=0.05, stop=fsgd.Stop(tol=1.0))
    assert int(stopped.steps_run) < 500 and float(stopped.losses[int(stopped.steps_run) - 1]) <= 1


@pytest.mark.parametrize("data, kwargs, error, match", [
    (lambda: fsgd.stream(iter([])), {}, ValueError, "yielded no batches"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10]), (X[:11], Y[:11])])), {}, ValueError,
     r"batch 1 of the stream has .*float32\[11, 5\].* the first had"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])])), {"batch_size": 10}, ValueError,
     "with a stream as data, batch_size cannot be used"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])]), block=0), {}, ValueError,
     "block must be an int >= 1"),
    (lambda: fsgd.stream(5), {}, TypeError, "stream needs an iterable of batches"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])])), {"run": fsgd.Run(record_params=True)}, ValueError,
     r"Run\(record_params=True\) needs a run of known length"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])] * 3 + [(X[:10], Y[:10].astype(np.float64))])),
     {}, ValueError, r"batch 3 of the stream has \['float32\[10, 5\]', 'float64\[10\]'\]"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])] * 3 + [(X[:10],)])), {}, ValueError,
     r"batch 3 of the stream has \['float32\[10, 5\]'\], the first had"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10]), {"x": X[:10]}])), {}, TypeError,
     "batch 1 of the stream is a dict; a stream yields tuples of arrays"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10]), (X[:10], "y")])), {}, TypeError,
     r"batch 1\[1\] must be an array; got str"),
    (lambda: fsgd.stream(iter([(X[:10], Y[:10])] * 2 + [(X[:10, :4], Y[:10])])), {}, ValueError,
     r"batch 2 of the stream has \['float32\[10, 4\]'"),
])
def test_bad_streams_are_refused_naming_what(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fsgd.fit(fsgd.linear_mse, START, data(), lr=0.05, **kwargs)


def test_a_memmap_keeps_what_a_users_model_records(on_disk):
    """aux and model state come through the host blocks as they do in memory."""
    def loss(params, x, y):
        residual = x @ params - y
        return (residual ** 2).mean(), {"largest": jnp.abs(residual).max()}

    kwargs = {"lr": 0.01, "model": fsgd.Model(has_aux=True), **MODES["sampled"]}
    in_memory = fsgd.fit(loss, START, (X, Y), **kwargs)
    read = fsgd.fit(loss, START, on_disk, run=fsgd.Run(chunk_size=64), **kwargs)
    assert read.aux is not None
    assert_trees_close(read, in_memory, rtol=0, atol=0)


def test_a_memmap_checks_on_chunk_as_chunks_do(on_disk):
    with pytest.raises(TypeError, match="on_chunk must be callable"):
        fsgd.fit(fsgd.linear_mse, START, on_disk, lr=0.01, run=fsgd.Run(on_chunk=5), **MODES["sampled"])


@pytest.mark.parametrize("kwargs", [{"model": fsgd.Model(rng=KEY)}, {"model": fsgd.Model(has_aux=True)}, {"model": fsgd.Model(trainable=None, state={})}])
def test_a_stream_refuses_what_it_cannot_carry(kwargs):
    with pytest.raises(ValueError, match="with a stream as data"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(np.zeros((3, 10), int))),
                 lr=0.05, **kwargs)


def test_a_stream_takes_lists_single_arrays_and_torch_tensors():
    torch = pytest.importorskip("torch")
    rows = np.asarray(fsgd.sample_indices(KEY, N, 40, 10))
    scheduled = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05, rows=fsgd.Schedule(rows))
    for batches in ([[X[r], Y[r]] for r in rows],
                    [(torch.from_numpy(X[r]), torch.from_numpy(Y[r])) for r in rows],
                    [(jnp.asarray(X[r]), Y[r]) for r in rows]):
        streamed = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(iter(batches), block=16),
                            lr=0.05)
        assert_trees_close(streamed, scheduled, rtol=0, atol=0)
    one = fsgd.fit(lambda p, xy: fsgd.linear_mse(p, xy[:, :D], xy[:, D]), START,
                   fsgd.stream(np.concatenate([X[r], Y[r, None]], 1) for r in rows), lr=0.05)
    assert_trees_close(one, scheduled, rtol=0, atol=0)


@pytest.mark.parametrize("positioned", ["iterator", "function"])
def test_a_stream_resumes_from_its_checkpoint_with_the_bits_of_one_run(tmp_path, positioned):
    rows = np.asarray(fsgd.sample_indices(KEY, N, 500, 10))
    whole = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05, rows=fsgd.Schedule(rows))
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(rows), block=64), lr=0.05,
                 run=fsgd.Run(on_chunk=crash_after(192), checkpoint=path))
    if positioned == "iterator":  # the user skips what the checkpoint holds
        source = fsgd.stream(batches_of(rows[192:]), block=64)
    else:
        source = fsgd.stream(lambda done: batches_of(rows[done:]), block=64)
    starts = []
    resumed = fsgd.fit(fsgd.linear_mse, START, source, lr=0.05, run=fsgd.Run(on_chunk=lambda r: starts.append(int(r.step) - int(r.steps_run)), checkpoint=path))
    assert starts == [192, 256, 320, 384, 448]
    assert_trees_close(resumed, whole, rtol=0, atol=0)
    # Run again: the stream is used up where the checkpoint ends; its result is returned.
    ran = []
    again = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(lambda done: batches_of(rows[done:])),
                     lr=0.05, run=fsgd.Run(on_chunk=ran.append, checkpoint=path))
    assert ran == []
    assert_trees_close(again, whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="written by another run"):  # other batch shapes
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches_of(rows[:, :5]), block=64),
                 lr=0.05, run=fsgd.Run(checkpoint=path))


def test_a_bad_batch_after_some_blocks_keeps_what_trained_before_it():
    rows = np.asarray(fsgd.sample_indices(KEY, N, 300, 10))

    def batches():
        yield from batches_of(rows[:200])
        yield X[:10], Y[:9]

    with pytest.raises(ValueError, match="batch 200 of the stream has") as raised:
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches(), block=64), lr=0.05)
    kept = raised.value.result
    assert int(kept.step) == 192 and int(kept.steps_run) == 192
    assert_trees_close(kept, fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.05,
                                      rows=fsgd.Schedule(rows[:192])), rtol=0, atol=0)


def test_a_loaders_own_error_keeps_what_trained_before_it():
    rows = np.asarray(fsgd.sample_indices(KEY, N, 300, 10))

    def batches():
        yield from batches_of(rows[:100])
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as raised:
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches(), block=32), lr=0.05)
    assert int(raised.value.result.step) == 96


def test_nan_in_a_later_memmap_block_keeps_the_blocks_before(tmp_path):
    x = np.memmap(tmp_path / "x", np.float32, "w+", shape=X.shape)
    x[:] = X
    rows = np.asarray(fsgd.sample_indices(KEY, N, 40, 8))
    x[rows[30, 3]] = np.nan
    with pytest.raises(ValueError, match="holds NaN or inf") as raised:
        fsgd.fit(fsgd.linear_mse, START, (x, Y), lr=0.01, rows=fsgd.Schedule(rows), run=fsgd.Run(chunk_size=10))
    assert int(raised.value.result.step) == 30
    assert_trees_close(raised.value.result.params, fsgd.fit(
        fsgd.linear_mse, START, (X, Y), lr=0.01, rows=fsgd.Schedule(rows[:30])).params, rtol=0, atol=0)


def test_nan_in_a_later_memmap_block_keeps_the_evaluations_made(tmp_path):
    """The error names the NaN (not a failure to pad the records), and its
    result holds the evaluations of the blocks before it."""
    x = np.memmap(tmp_path / "x", np.float32, "w+", shape=X.shape)
    x[:] = X
    rows = np.asarray(fsgd.sample_indices(KEY, N, 40, 8))
    x[rows[30, 3]] = np.nan
    evaluate = lambda p, x, y: {"loss": fsgd.linear_mse(p, x, y)}
    with pytest.raises(ValueError, match="holds NaN or inf") as raised:
        fsgd.fit(fsgd.linear_mse, START, (x, Y), lr=0.01, rows=fsgd.Schedule(rows), evaluation=fsgd.Evaluation(evaluate, (X[:50], Y[:50]), every=5), run=fsgd.Run(chunk_size=10))
    result = raised.value.result
    assert np.asarray(result.eval_steps).tolist() == [5, 10, 15, 20, 25, 30]
    whole = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.01, rows=fsgd.Schedule(rows[:30]), evaluation=fsgd.Evaluation(evaluate, (X[:50], Y[:50]), every=5))
    assert_trees_close(result.evals, whole.evals, rtol=0, atol=0)
