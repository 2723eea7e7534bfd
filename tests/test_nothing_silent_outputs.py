"""Issue 22, round three of "nothing silent": held-out torch tensors, a
swept rate the optimizer ignores, optimizer state of the wrong kind,
streams that reuse their buffers, memmaps whose file was replaced, and
outputs that no memory holds. Each case gets the right result or one
clear error naming the argument."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import functional_sgd as fsgd
from functional_sgd.core import _output_size

X, Y = fsgd.lesson_data(jax.random.key(0))
X_VALID, Y_VALID = fsgd.lesson_data(jax.random.key(1))
START = jnp.array(fsgd.LESSON_START)


def held_out_mse(params, x, y):
    return {"mse": fsgd.linear_mse(params, x, y)}


# Item 14: torch tensors as eval_data, as data takes them.

def test_torch_eval_data_is_taken_as_data_takes_it():
    torch = pytest.importorskip("torch")
    as_torch = (torch.from_numpy(np.array(X_VALID)), torch.from_numpy(np.array(Y_VALID)))
    def run(held_out):
        return fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=20,
                        evaluation=fsgd.Evaluation(held_out_mse, held_out, every=10))

    got, want = run(as_torch), run((X_VALID, Y_VALID))
    assert_trees_close(got.evals, want.evals, rtol=0, atol=0)  # the same program on the same bits


def test_torch_eval_data_in_lr_sweep():
    torch = pytest.importorskip("torch")
    as_torch = (torch.from_numpy(np.array(X_VALID)), torch.from_numpy(np.array(Y_VALID)))
    def sweep(held_out):
        return fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([0.01, 0.1]),
                             steps=20, evaluation=fsgd.Evaluation(data=held_out, every=10))

    got, want = sweep(as_torch), sweep((X_VALID, Y_VALID))
    assert_trees_close(got.evals, want.evals, rtol=0, atol=0)


def test_torch_eval_data_on_another_device_or_dtype_is_refused_by_name():
    torch = pytest.importorskip("torch")
    half = (torch.zeros(4, 2, dtype=torch.bfloat16), torch.zeros(4))
    with pytest.raises(TypeError, match=r"Evaluation\(data=\)\[0\] is a torch tensor of dtype "
                                        r"torch.bfloat16"):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5, evaluation=fsgd.Evaluation(held_out_mse, half))


# Item 4: lr_sweep with an optimizer whose rate is a schedule.

def test_lr_sweep_refuses_a_scheduled_rate_it_cannot_set():
    schedule = optax.linear_schedule(0.1, 0.01, 50)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    with pytest.raises(ValueError, match=r"learning_rate is a schedule.*scale_by_schedule"):
        fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([1e-3, 0.1, 1.5]),
                      steps=50, optimizer=optimizer)


def test_lr_sweep_sweeps_the_peak_of_a_schedule_written_as_its_message_says():
    shape = optax.linear_schedule(1.0, 0.1, 50)  # the schedule's shape, peak 1
    optimizer = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(optax.sgd(learning_rate),
                                          optax.scale_by_schedule(shape)))(learning_rate=0.1)
    sweep = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.array([1e-3, 0.1, 1.5]),
                          steps=50, optimizer=optimizer)
    final = np.asarray(sweep.final_loss)
    assert len(set(final.tolist())) == 3  # every rate trains its own run
    manual = fsgd.fit(fsgd.linear_mse, START, (X, Y), steps=50, optimizer=optax.chain(
        optax.sgd(0.1), optax.scale_by_schedule(shape)))
    # The sweep's run at 0.1 is that run: the same updates, vmapped (float32, a few ulp).
    np.testing.assert_allclose(sweep.losses[1], manual.losses, rtol=1e-5)


# Item 12: opt_state held against optimizer.init of the trainable part, for every model.

def mlp_loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x)[:, 0] - y) ** 2)


def noisy_mse(params, x, y, *, key):
    return fsgd.linear_mse(params + 1e-3 * jax.random.normal(key, params.shape), x, y)


def an_mlp():
    eqx = pytest.importorskip("equinox")
    return eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(2))


ADAM = optax.adam(0.1)
MOMENTUM = optax.sgd(0.1, momentum=0.9)
WRONG_OPT_STATE = {
    "plain params, other shapes": (
        lambda: {"params": START, "run": fsgd.Run(opt_state=ADAM.init(jnp.zeros(3)))},
        r"opt_state\[0\]\.mu is float32\[3\], but optimizer.init\(params\) gives float32\[2\]"),
    "plain params, another dtype": (
        lambda: {"params": START, "run": fsgd.Run(opt_state=ADAM.init(START.astype(jnp.float16)))},
        r"opt_state\[0\]\.mu is float16\[2\], but optimizer.init\(params\) gives float32\[2\]"),
    "equinox module, another optimizer's state": (
        lambda: {"params": an_mlp(), "loss": mlp_loss, "run": fsgd.Run(opt_state=MOMENTUM.init(
            pytest.importorskip("equinox").filter(an_mlp(), lambda a: isinstance(a, jax.Array))))},
        r"Run\(opt_state=\) does not have the structure optimizer.init\(the trainable "
        r"part of params\)"),
    "rng, another optimizer's state": (
        lambda: {"params": START, "loss": noisy_mse, "model": fsgd.Model(rng=jax.random.key(3)), "run": fsgd.Run(opt_state=MOMENTUM.init(START))},
        r"Run\(opt_state=\) does not have the structure optimizer.init\(params\) gives"),
    "trainable, the state of all params": (
        lambda: {"params": {"w": START, "b": jnp.zeros(())},
                 "model": fsgd.Model(trainable={"w": True, "b": False}),
                 "loss": lambda p, x, y: fsgd.linear_mse(p["w"], x, y) + p["b"],
                 "run": fsgd.Run(opt_state=ADAM.init({"w": START, "b": jnp.zeros(())}))},
        (r"optimizer.init\(the trainable part of params\).* None at every leaf that does not "
         r"train")),
}


@pytest.mark.parametrize("case", WRONG_OPT_STATE)
def test_an_opt_state_that_does_not_fit_is_refused_with_what_was_expected(
        case, standard_promotion):
    make, match = WRONG_OPT_STATE[case]
    kwargs = make()
    with pytest.raises(ValueError, match=match) as caught:
        fsgd.fit(kwargs.pop("loss", fsgd.linear_mse), kwargs.pop("params"), (X, Y),
                 optimizer=ADAM, steps=5, **kwargs)
    assert "result.opt_state" in str(caught.value)


def test_a_trainable_part_continues_from_its_own_opt_state(standard_promotion):
    params = {"w": START, "b": jnp.zeros(())}
    options = {"model": fsgd.Model(trainable={"w": True, "b": False}), "optimizer": ADAM,
               "steps": 5, "loss": lambda p, x, y: fsgd.linear_mse(p["w"], x, y) + p["b"]}
    loss = options.pop("loss")
    first = fsgd.fit(loss, params, (X, Y), **options)
    then = fsgd.fit(loss, first.params, (X, Y), run=fsgd.Run.after(first), **options)
    whole = fsgd.fit(loss, params, (X, Y), **{**options, "steps": 10})
    assert_trees_close(then.params, whole.params, rtol=0, atol=0)  # the same bits


# Item 5: a stream whose loader reuses its output buffer for the next batch.

def batches_in_one_buffer(x, y, size, short_last=False):
    """Yields each batch in the same two arrays, as a loader that reuses its
    buffer does (correct in a for loop, which reads each batch before the next)."""
    xb, yb = np.empty((size,) + x.shape[1:], x.dtype), np.empty(size, y.dtype)
    for i in range(0, len(x), size):
        rows = min(size, len(x) - i)
        xb[:rows], yb[:rows] = x[i:i + rows], y[i:i + rows]
        yield (xb, yb) if rows == size or not short_last else (xb[:rows], yb[:rows])


def fresh_batches(x, y, size):
    return ((x[i:i + size].copy(), y[i:i + size].copy()) for i in range(0, len(x), size))


@pytest.mark.parametrize("rows, block", [(100, 4), (95, 3)], ids=["full", "short last batch"])
def test_a_stream_that_reuses_its_buffer_trains_on_each_batch(rows, block):
    x, y = np.array(X)[:rows], np.array(Y)[:rows]
    got = fsgd.fit(fsgd.linear_mse, START,
                   fsgd.stream(batches_in_one_buffer(x, y, 10, short_last=True), block=block),
                   lr=0.1)
    want = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(fresh_batches(x, y, 10), block=block),
                    lr=0.1)
    assert_trees_close((got.losses, got.params), (want.losses, want.params), rtol=0, atol=0)


def test_a_stream_of_reused_torch_tensors_trains_on_each_batch():
    torch = pytest.importorskip("torch")
    xb, yb = torch.empty(10, 2), torch.empty(10)

    def loader():
        for i in range(0, 100, 10):
            xb.copy_(torch.from_numpy(np.array(X[i:i + 10])))
            yb.copy_(torch.from_numpy(np.array(Y[i:i + 10])))
            yield xb, yb

    got = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(loader(), block=5), lr=0.1)
    want = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(fresh_batches(np.array(X), np.array(Y),
                                                                      10), block=5), lr=0.1)
    assert_trees_close(got.losses, want.losses, rtol=0, atol=0)


# Item 8: a memmap's rows come from the file it maps, not whatever file has its name now.

def memmap_of(path, x, y):
    """``x`` and ``y`` side by side in one file, mapped as a (rows, 3) memmap."""
    np.concatenate([x, y[:, None]], axis=1).astype(np.float32).tofile(path)
    return np.memmap(path, np.float32, "r", shape=(len(x), 3))


def columns_mse(params, rows):
    return fsgd.linear_mse(params, rows[:, :2], rows[:, 2])


MEMMAP_RUN = {"lr": 0.1, "steps": 20, "batch_size": 10, "key": jax.random.key(4)}


def replace_file(path, x, y):
    """Writes other rows to ``path`` by an atomic rename, as a data pipeline does."""
    memmap_of(f"{path}.new", x, y)
    os.replace(f"{path}.new", path)


def test_a_memmap_whose_file_was_replaced_is_refused(tmp_path):
    path = tmp_path / "rows.f32"
    rows = memmap_of(path, np.array(X), np.array(Y))
    replace_file(path, np.array(X) * 100, np.array(Y) * 100)
    with pytest.raises(ValueError, match=r"data\[0\] is a np.memmap of .*rows.f32, but that "
                                         r"file was replaced"):
        fsgd.fit(columns_mse, START, (rows,), **MEMMAP_RUN)


def test_a_memmap_file_replaced_during_the_run_is_read_as_mapped(tmp_path):
    path = tmp_path / "rows.f32"
    rows = memmap_of(path, np.array(X), np.array(Y))
    want = fsgd.fit(columns_mse, START, (np.array(rows),), **MEMMAP_RUN)
    got = fsgd.fit(columns_mse, START, (rows,), run=fsgd.Run(chunk_size=5, on_chunk=lambda _: replace_file(path, np.array(X) * 100, np.array(Y) * 100)), **MEMMAP_RUN)
    assert_trees_close(got.losses, want.losses, rtol=0, atol=0)  # the mapped rows throughout


# Item 11: outputs no memory holds are refused before compiling, with their sizes.

@pytest.fixture
def small_machine(monkeypatch):
    """A machine of 64 KiB: outputs over 32 KiB do not fit. Runs that the
    refusal guards against (40 GB of aux) would hang a real one instead."""
    monkeypatch.setattr(_output_size, "memory_bytes", lambda: 64 * 2**10)


def loss_with_aux(params, x, y):
    return fsgd.linear_mse(params, x, y), {"big": jnp.zeros(100) + params[0]}  # 400 B a step


def ten_metrics(params, x, y):
    return {f"m{i}": fsgd.linear_mse(params, x, y) for i in range(10)}


TOO_LARGE = {
    "aux": (lambda: fsgd.fit(loss_with_aux, START, (X, Y), lr=0.1, steps=200, model=fsgd.Model(has_aux=True)),
            r"the aux of 200 steps: 78.1 KiB.*Return a smaller aux"),
    "losses": (lambda: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=10_000),
               r"losses of 10000 steps: 39.1 KiB.*Train fewer steps a call"),
    "evaluations": (lambda: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=1000,
                                     evaluation=fsgd.Evaluation(ten_metrics, (X_VALID, Y_VALID), every=1)),
                    r"1000 evaluations: 43.0 KiB.*Evaluate less often"),
    "trajectory": (lambda: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=4000,
                                    run=fsgd.Run(record_params=True)),
                   r"record_params keeps 4001 copies of params: 31.3 KiB.*Record fewer steps"),
    "sweep": (lambda: fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=jnp.linspace(0.01, 0.1, 20),
                                    steps=500),
              r"20 runs' losses and evaluations: 39.\d KiB.*Sweep fewer rates"),
    "stream": (lambda: fsgd.fit(fsgd.linear_mse, START,
                                fsgd.stream(fresh_batches(np.array(X), np.array(Y), 10)),
                                lr=0.1, steps=10_000),
               r"losses of 10000 steps: 39.1 KiB"),
}


@pytest.mark.parametrize("case", TOO_LARGE)
def test_outputs_no_memory_holds_are_refused_with_their_size(case, small_machine):
    run, match = TOO_LARGE[case]
    with pytest.raises(ValueError, match=r"the outputs of this call take .*, more than half "
                                         r"this machine's memory \(64.0 KiB\)"):
        run()
    with pytest.raises(ValueError, match=match):
        run()


def test_outputs_that_fit_run(small_machine):
    result = fsgd.fit(loss_with_aux, START, (X, Y), lr=0.1, steps=20, model=fsgd.Model(has_aux=True))
    assert result.aux["big"].shape == (20, 100)
