"""Bad input never gives a silent wrong result or a traceback from deep
inside: each case below gets one clear error that names the argument."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _repeat
from helpers import assert_trees_close

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)
KEY = jax.random.key(1)


def fit(**kwargs):
    kwargs = {"lr": 0.1, "steps": 10, **kwargs}
    return fsgd.fit(fsgd.linear_mse, kwargs.pop("params", START), kwargs.pop("data", (X, Y)),
                    **kwargs)


BAD = [
    ("lr underflows float32", {"lr": 1e-50}, ValueError, r"lr=1e-50 is 0 in the params' dtype"),
    ("lr complex", {"lr": 0.1 + 0j}, TypeError, "lr must be a real scalar"),
    ("lr bool", {"lr": True}, TypeError, "lr must be a real scalar"),
    ("lr string", {"lr": "0.1"}, TypeError, "lr must be a real scalar"),
    ("steps past int32", {"steps": 2**31}, ValueError, r"steps must be <= 2147483647"),
    ("start_step overflows", lambda: {"run": fsgd.Run(start_step=2**31 - 10), "steps": 20},
     ValueError, r"start_step=2147483638 plus steps=20 passes"),
    ("start_step overflows in chunks", lambda: {"run": fsgd.Run(chunk_size=5, start_step=2**31 - 10), "steps": 20}, ValueError, "start_step=.* passes"),
    ("start_step int64", lambda: {"run": fsgd.Run(start_step=np.int64(2**40))}, ValueError, "start_step=.* passes"),
    ("start_step huge without chunks", lambda: {"run": fsgd.Run(start_step=2**31 - 1)}, ValueError,
     "start_step=.* passes"),
    ("tol a string", lambda: {"stop": fsgd.Stop(tol="a")}, TypeError, "tol must be a real number"),
    ("tol nan", lambda: {"stop": fsgd.Stop(tol=float("nan"))}, ValueError, "tol must be a finite number"),
    ("drop_last a string", lambda: {"rows": fsgd.Shuffled(drop_last="False"), "batch_size": 5,
                                    "key": KEY}, TypeError,
     "drop_last must be True or False"),
    ("record_params a string", lambda: {"run": fsgd.Run(record_params="no")}, TypeError,
     "record_params must be True or False"),
    ("opt_state without optimizer", lambda: {"run": fsgd.Run(opt_state=())}, ValueError,
     r"Run\(opt_state=\) is given but optimizer is None"),
    ("opt_state of another optimizer", lambda: {
        "lr": None, "optimizer": optax.adam(0.1),
        "run": fsgd.Run(opt_state=optax.sgd(0.1, momentum=0.9).init(START))}, ValueError,
     r"Run\(opt_state=\) does not have the structure optimizer.init\(params\) gives"),
    ("record_params past memory", lambda: {"run": fsgd.Run(record_params=True), "steps": 2**31 - 1,
                                   "params": jnp.zeros(2**10), "data": ()}, ValueError,
     "record_params keeps 2147483648 copies"),
    ("on_chunk not callable", lambda: {"run": fsgd.Run(chunk_size=5, on_chunk=5)}, TypeError,
     "on_chunk must be callable"),
    ("checkpoint empty", lambda: {"run": fsgd.Run(chunk_size=5, checkpoint="")}, ValueError,
     "checkpoint must name a file"),
    ("checkpoint a folder", lambda: {"run": fsgd.Run(chunk_size=5, checkpoint=".")}, ValueError,
     "is a folder; name a file in it"),
    ("checkpoint folder missing", lambda: {"run": fsgd.Run(chunk_size=5, checkpoint="no/such/dir/run.npz")},
     ValueError, "its folder .* does not exist"),
]


@pytest.mark.parametrize("kwargs, error, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        loss = (lambda p: (p ** 2).sum()) if kwargs.get("data") == () else fsgd.linear_mse
        fsgd.fit(loss, kwargs.pop("params", START), kwargs.pop("data", (X, Y)),
                 **{"lr": 0.1, "steps": 10, **kwargs})


def test_a_bad_checkpoint_path_is_refused_before_any_chunk_runs(tmp_path):
    ran = []
    with pytest.raises(ValueError, match="does not exist"):
        fit(run=fsgd.Run(chunk_size=5, on_chunk=ran.append, checkpoint=tmp_path / "missing" / "run.npz"))
    assert ran == [] and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("params", [3.0, np.float32(3.0), (3.0, np.float64(1.0))],
                         ids=["python float", "numpy scalar", "tuple of both"])
def test_python_and_numpy_scalars_are_params_that_train(params):
    result = fsgd.fit(lambda p: sum(jnp.sum(q ** 2) for q in jax.tree.leaves(p)), params,
                      lr=0.1, steps=50)
    assert jax.tree.structure(result.params) == jax.tree.structure(params)
    assert all(abs(float(q)) < 1e-3 for q in jax.tree.leaves(result.params))


def test_64_bit_numpy_input_without_x64_warns_once_per_calling_line():
    x64, y64 = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own filter: once per calling line
        for _ in range(3):
            fit(data=(x64, y64))
    said = [w for w in caught if "jax_enable_x64 is off" in str(w.message)]
    assert len(said) == 1 and "float64" in str(said[0].message)
    assert said[0].filename == __file__  # points at the caller, not inside the library
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(data=(x64, y64), params=np.asarray(START, np.float64))  # nothing narrowed


class _Opaque:
    """An object fit cannot compare but by identity."""


def test_a_fresh_optimizer_per_call_warns_once_and_keeps_few_compiled_loops(monkeypatch):
    monkeypatch.setattr(_repeat, "COMPILED_LOOPS_KEPT", 3)
    counts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own filter: once per calling line
        for _ in range(6):  # a fresh optax.sgd(0.1) compiles once; one over a new object, always
            opaque = _Opaque()
            optimizer = optax.chain(optax.sgd(0.1), optax.stateless(lambda u, p, o=opaque: u))
            fit(lr=None, optimizer=optimizer, steps=5)
            counts.append(_repeat._compiled_count())
    said = [w for w in caught if "compiled its loop again" in str(w.message)]
    assert len(said) == 1 and "optax.inject_hyperparams" in str(said[0].message)
    assert "again for a new optimizer: 3 or more of them" in str(said[0].message)  # names what
    assert said[0].filename == __file__  # points at the caller, not inside the library
    assert max(counts) <= 3 + 1  # cleared once past the bound


def test_a_fresh_loss_per_call_that_cannot_be_compared_is_named_in_the_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own filter: once per calling line
        for _ in range(3):
            opaque = _Opaque()
            fsgd.fit(lambda a, x, y, o=opaque: fsgd.linear_mse(a, x, y), START, (X, Y),
                     lr=0.1, steps=5)
    said = [str(w.message) for w in caught if "compiled its loop again" in str(w.message)]
    assert len(said) == 1 and "again for a new loss: 3 or more of them" in said[0]


# Checkpoints: a foreign one is refused, naming what differs.

def checkpointed(path, **kwargs):
    return fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path), **kwargs)


FOREIGN = [
    ("other data values", {"data": (2 * X, Y)}, r"data differs"),
    ("other start params", {"params": START + 1.0}, r"start params: checkpoint has"),
    ("other optimizer settings", ({"lr": None, "optimizer": optax.sgd(0.1, momentum=0.9)},
                                  {"lr": None, "optimizer": optax.sgd(0.1, momentum=0.5)}),
     r"optimizer differs"),
    ("other loss", ({}, {"loss": lambda a, x, y: fsgd.linear_mse(a, x, y)}), r"loss differs"),
]


@pytest.mark.parametrize("change, match", [f[1:] for f in FOREIGN], ids=[f[0] for f in FOREIGN])
def test_a_foreign_checkpoint_is_refused_with_what_differs(tmp_path, change, match):
    first, second = change if isinstance(change, tuple) else ({}, change)
    path = tmp_path / "run.npz"

    def run(kwargs):
        kwargs = dict(kwargs)
        loss = kwargs.pop("loss", fsgd.linear_mse)
        return fsgd.fit(loss, kwargs.pop("params", START), kwargs.pop("data", (X, Y)),
                        **{"lr": 0.1, "steps": 40,
                           "run": fsgd.Run(chunk_size=20, checkpoint=path), **kwargs})

    run(first)
    with pytest.raises(ValueError, match="written by another run.*" + match):
        run(second)


def test_the_same_run_in_new_objects_resumes(tmp_path):
    """Equal values in new objects (a new adam(0.1), a copy of the data) are the same run."""
    path = tmp_path / "run.npz"
    first = fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path), lr=None,
                optimizer=optax.sgd(0.1, momentum=0.9))
    again = fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path), lr=None,
                optimizer=optax.sgd(0.1, momentum=0.9),
                data=(jnp.array(np.asarray(X)), jnp.array(np.asarray(Y))))
    assert_trees_close(again, first)


def test_orphaned_temporary_files_are_removed(tmp_path):
    path = tmp_path / "run.npz"
    orphans = [tmp_path / f"run.npz.{name}.tmp" for name in ("abcd1234", "zz_9yx8w")]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    keep = tmp_path / "other.npz.abcd1234.tmp"
    keep.write_bytes(b"another run's")
    checkpointed(path)
    assert sorted(os.listdir(tmp_path)) == ["other.npz.abcd1234.tmp", "run.npz"]


def rewrite_header(path, change):
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    header = json.loads(str(contents["header"]))
    change(header)
    contents["header"] = np.array(json.dumps(header))
    np.savez(path, **contents)


@pytest.mark.parametrize("change", [
    lambda h: h.update(done=20.5), lambda h: h.update(done=-1), lambda h: h.update(done=10**9),
    lambda h: h.update(stopped="no"), lambda h: h["dtypes"].pop("leaf_0"),
    lambda h: h["dtypes"].update(leaf_0="float64"), lambda h: h.update(run=[]),
], ids=["done a float", "done negative", "done too large", "stopped a string",
        "a leaf missing", "a leaf's dtype changed", "run not a dict"])
def test_a_crafted_header_is_refused_as_corrupt(tmp_path, change):
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(steps=40, run=fsgd.Run(chunk_size=20, on_chunk=stop_after_first, checkpoint=path))
    rewrite_header(path, change)
    with pytest.raises(ValueError, match="is corrupt or truncated"):
        checkpointed(path)


class Crash(Exception):
    pass


def stop_after_first(result):
    if int(result.step) >= 20:
        raise Crash


def test_flipped_bytes_are_refused_or_harmless(tmp_path):
    """60 single-byte flips across a checkpoint: each is either refused with a
    ValueError or resumes with the bits of the whole run, never a traceback."""
    whole = fit(steps=40)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(steps=40, run=fsgd.Run(chunk_size=20, on_chunk=stop_after_first, checkpoint=path))
    pristine = path.read_bytes()
    for position in np.linspace(0, len(pristine) - 1, 60).astype(int):
        damaged = bytearray(pristine)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            resumed = fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path))
        except ValueError as error:
            assert "checkpoint" in str(error)
        else:
            assert_trees_close(resumed, whole)


@pytest.mark.parametrize("chunk_size", [1, 2, 7])
def test_chunks_of_any_size_give_the_losses_of_one_call_to_the_bit(chunk_size):
    """Full batch, where the data is stored column-major: a one-step chunk once
    differed in the losses' last bits."""
    one = fit(steps=60)
    chunked = fit(steps=60, run=fsgd.Run(chunk_size=chunk_size))
    assert_trees_close(chunked, one, rtol=0, atol=0)


def test_a_one_step_chunk_that_diverges_does_not_end_the_run():
    one = fit(lr=1.5, steps=80)
    assert 0 < int(one.diverged_at) < 79
    assert_trees_close(fit(lr=1.5, steps=80, run=fsgd.Run(chunk_size=1)), one, rtol=0, atol=0)


def test_cpu_torch_tensors_are_data():
    torch = pytest.importorskip("torch")
    x, y = (torch.from_numpy(np.array(a)) for a in (X, Y))
    assert_trees_close(fit(data=(x, y), steps=20), fit(steps=20), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"data\[0\] is a torch tensor of dtype torch.bfloat16"):
        fit(data=(x.to(torch.bfloat16), y))


# Round three (issue 22): complex params, divergence that stays finite, host
# memory written after fit returns, on_chunk's booleans, restore_best without
# a valid evaluation, chunks of a model with adam.

STOP_NOW = [True, np.bool_(True), np.array(True), jnp.array(True), jnp.bool_(True)]


@pytest.mark.parametrize("answer", STOP_NOW, ids=["python", "numpy scalar", "numpy 0-d",
                                                  "jax 0-d", "jax scalar"])
def test_on_chunk_may_stop_the_run_with_any_boolean_scalar(answer):
    assert int(fit(steps=100, run=fsgd.Run(chunk_size=10, on_chunk=lambda r: answer)).steps_run) == 10
    no = np.logical_not(answer)
    assert int(fit(steps=100, run=fsgd.Run(chunk_size=10, on_chunk=lambda r: no)).steps_run) == 100
    stopped = fit(steps=100, run=fsgd.Run(chunk_size=10, on_chunk=lambda r: r.losses[-1] < 1.0))
    assert int(stopped.steps_run) < 100


@pytest.mark.parametrize("answer", [1, "yes", jnp.array([True]), 0.0, jnp.int32(1)])
def test_on_chunk_returning_anything_else_is_refused(answer):
    with pytest.raises(TypeError, match="on_chunk must return None, True or False"):
        fit(steps=100, run=fsgd.Run(chunk_size=10, on_chunk=lambda r: answer))


def test_on_chunk_stops_a_stream_with_a_numpy_boolean():
    batches = ((X[i:i + 10], Y[i:i + 10]) for i in range(0, 100, 10))
    result = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches, block=2), lr=0.1,
                      run=fsgd.Run(on_chunk=lambda r: np.bool_(True)))
    assert int(result.steps_run) == 2


def mse_dict(a, x, y):
    return {"mse": fsgd.linear_mse(a, x, y)}


def nan_dict(a, x, y):
    return {"mse": fsgd.linear_mse(a, x, y) * jnp.nan}


def best(evaluate=mse_dict, data=(X, Y), **kwargs):
    """The evaluation that restores the best params of its "mse"."""
    return fsgd.Evaluation(evaluate, data, monitor="mse", restore_best=True, **kwargs)


def test_restore_best_without_an_evaluation_keeps_the_last_params_and_says_so():
    with pytest.warns(UserWarning, match="restore_best"):
        result = fit(steps=100, evaluation=best(every=50),
                     run=fsgd.Run(chunk_size=10, on_chunk=lambda r: True))
    assert_trees_close(result.params, fit(steps=10).params)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_restore_best_with_every_metric_nan_keeps_the_last_params_and_says_so(chunk_size):
    with pytest.warns(UserWarning, match="restore_best"):
        result = fit(steps=30, evaluation=best(nan_dict, every=10),
                     run=fsgd.Run(chunk_size=chunk_size))
    assert_trees_close(result.params, fit(steps=30).params)


def test_restore_best_with_every_metric_nan_keeps_the_last_params_under_jit():
    @jax.jit
    def run(lr):
        return fit(lr=lr, steps=30, evaluation=best(nan_dict, every=10)).params

    assert_trees_close(run(0.1), fit(steps=30).params, rtol=1e-6)


def test_eval_data_without_rows_is_refused():
    with pytest.raises(ValueError, match=r"Evaluation\(data=\) has no rows .*shape \(0, 2\)"):
        fit(evaluation=best(data=(X[:0], Y[:0])))


def complex_loss(z):
    return jnp.abs(z - (1 + 2j)) ** 2


def test_complex_params_descend_as_torch_does():
    """The step follows the conjugate of jax.grad (torch's and optax's convention)."""
    torch = pytest.importorskip("torch")
    result = fsgd.fit(complex_loss, jnp.array(0j, jnp.complex64), lr=0.1, steps=100)
    z = torch.zeros((), dtype=torch.complex64, requires_grad=True)
    losses = []
    for _ in range(100):
        loss = (z - (1 + 2j)).abs() ** 2
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            z.sub_(0.1 * z.grad)
            z.grad.zero_()
    # complex64 arithmetic in both, in another order: a few float32 roundings apart
    assert abs(complex(result.params) - z.item()) < 1e-6
    assert abs(complex(result.params) - (1 + 2j)) < 1e-5
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5, atol=1e-10)
    assert int(result.diverged_at) == -1


@pytest.mark.usefixtures("standard_promotion")  # optax's adam
def test_complex_params_descend_with_an_optax_optimizer():
    optimizer = optax.adam(0.05)
    params = {"z": jnp.array(0j, jnp.complex64), "w": jnp.float32(3.0)}

    def loss(p):
        return complex_loss(p["z"]) + p["w"] ** 2

    result = fsgd.fit(loss, params, optimizer=optimizer, steps=300)
    state, theirs = optimizer.init(params), params
    for _ in range(300):  # optax's own loop, as its docs say for complex params
        grads = jax.tree.map(jnp.conj, jax.grad(loss)(theirs))
        updates, state = optimizer.update(grads, state, theirs)
        theirs = optax.apply_updates(theirs, updates)
    assert_trees_close(result.params, theirs, rtol=1e-6, atol=1e-7)  # the same float32 ops
    assert abs(complex(result.params["z"]) - (1 + 2j)) < 0.05


def test_a_loss_grown_1e15_fold_is_divergence_though_finite():
    """p <- p - 1.5 * 2p = -2p: the loss p**2 grows 4-fold a step from 1, past
    1e15 at step 25 (4**25 = 1.1e15), still finite in float32 until step 64."""
    kwargs = {"lr": 1.5, "steps": 40}
    result = fsgd.fit(lambda p: p ** 2, jnp.float32(1.0), **kwargs)
    assert np.isfinite(result.losses).all()
    assert int(result.diverged_at) == 25
    assert int(fsgd.fit(lambda p: p ** 2, jnp.float32(1.0), run=fsgd.Run(chunk_size=7), **kwargs)
               .diverged_at) == 25
    assert int(fsgd.fit(lambda p: p ** 2, jnp.float32(1.0), stop=fsgd.Stop(tol=-1.0), **kwargs)
               .diverged_at) == 25


def test_a_loss_that_grows_from_zero_is_not_divergence():
    """The rule's scale is max(1, |first loss|): a first batch fitted exactly
    (loss 0) followed by larger, healthy losses is no divergence."""
    x = np.full((4, 1), 1e7, np.float32)
    x[0] = 0.0
    indices = np.array([[0], [1], [2], [3]], np.int32)
    result = fsgd.fit(lambda p, x: (x ** 2).mean() + 0 * p, jnp.float32(0.0), (x,), lr=0.1,
                      rows=fsgd.Schedule(indices))
    assert float(result.losses[0]) == 0.0 and float(result.losses[1]) == float(np.float32(1e14))
    assert int(result.diverged_at) == -1
    assert int(fit(steps=100).diverged_at) == -1  # the lesson


def _aligned(array):
    """A copy of ``array`` at a 64-byte boundary, where JAX's CPU client reads
    NumPy memory in place instead of copying it."""
    buffer = np.empty(array.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    out = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def _shared(array):
    """``(host, device)``: an aligned NumPy copy of ``array`` and the JAX
    array on a CPU device (a GPU machine has one too) that reads it in
    place. Skips where JAX copies it instead: there no write to the host
    copy can reach the device array, so what these tests guard against
    cannot happen."""
    host = _aligned(np.asarray(array))
    device = jax.device_put(host, jax.devices("cpu")[0])
    if device.unsafe_buffer_pointer() != host.ctypes.data:
        pytest.skip(f"JAX copied the NumPy array to {device.devices()}: nothing writes under it")
    return host, device


@pytest.mark.parametrize("warm", [True, False], ids=["warm call", "chunked call"])
def test_nan_written_into_host_memory_a_jax_array_shares_is_refused(warm):
    x, xj = _shared(X)
    options = {} if warm else {"run": fsgd.Run(chunk_size=5)}
    fit(data=(xj, Y), **options)
    fit(data=(xj, Y), **options)  # remembered
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"data\[0\] contains NaN"):
        fit(data=(xj, Y), **options)


def test_a_remembered_array_deleted_since_is_refused_as_on_a_first_call():
    x = jnp.array(X)
    fit(data=(x, Y))
    fit(data=(x, Y))  # remembered, with the bytes of x
    x.delete()
    with pytest.raises(RuntimeError, match="deleted"):
        fit(data=(x, Y))


def test_new_finite_values_in_host_memory_a_jax_array_shares_are_trained_on():
    """A remembered call compares such an array's bytes with those its checks
    passed; changed, it is checked again, and the run reads the new values."""
    x, xj = _shared(X)
    fit(data=(xj, Y))
    fit(data=(xj, Y))  # remembered
    x *= 2.0
    changed = fit(data=(xj, Y))
    expected = fit(data=(jnp.array(x), Y))  # a copy, never seen before
    np.testing.assert_array_equal(changed.losses, expected.losses)
    np.testing.assert_array_equal(fit(data=(xj, Y)).losses, expected.losses)  # and again


@pytest.mark.parametrize("row", [10**6, -1])
@pytest.mark.parametrize("warm", [True, False], ids=["warm call", "chunked call"])
def test_indices_rewritten_in_host_memory_a_jax_array_shares_are_refused(warm, row):
    indices, shared = _shared(fsgd.sample_indices(KEY, 100, steps=10, batch_size=5))
    options = {} if warm else {"run": fsgd.Run(chunk_size=5)}
    fit(rows=fsgd.Schedule(shared), steps=None, **options)
    fit(rows=fsgd.Schedule(shared), steps=None, **options)  # remembered
    indices[4, 2] = row
    with pytest.raises(ValueError, match="indices must lie in"):
        fit(rows=fsgd.Schedule(shared), steps=None, **options)


@pytest.mark.parametrize("field, value, match", [("tol", np.nan, "tol must be a finite"),
                                                  ("patience", 0, "patience")])
def test_a_stop_rule_rewritten_in_host_memory_a_jax_array_shares_is_refused(field, value, match):
    """A warm call whose ``tol`` or ``patience`` changed in host memory reads
    them again, as a first call would: it never runs a rule that cannot fire."""
    given, shared = _shared(np.array(0.5 if field == "tol" else 3,
                                     np.float32 if field == "tol" else np.int32))
    stop = fsgd.Stop(**{field: shared})
    fit(stop=stop)
    fit(stop=stop)  # remembered
    given[...] = value
    with pytest.raises(ValueError, match=match):
        fit(stop=stop)


def test_a_start_step_rewritten_in_host_memory_a_jax_array_shares_is_read_again():
    """A warm call whose ``Run(start_step=)`` changed in host memory counts
    from the new step, as a first call does, and refuses a negative one."""
    given, shared = _shared(np.array(0, np.int32))
    run = fsgd.Run(start_step=shared)
    options = {"batch_size": 10, "key": KEY}
    fit(run=run, **options)
    fit(run=run, **options)  # remembered
    given[...] = 7
    moved = fit(run=run, **options)
    expected = fit(run=fsgd.Run(start_step=7), **options)
    assert int(moved.step) == int(expected.step) == 17
    np.testing.assert_array_equal(moved.params, expected.params)
    given[...] = -3
    with pytest.raises(ValueError, match="start_step"):
        fit(run=run, **options)


@pytest.mark.usefixtures("standard_promotion")  # optax's adam
@pytest.mark.parametrize("batch_size, chunk_size", [(8, 7), (8, 20), (1, 2), (1, 7)])
def test_chunks_of_an_equinox_mlp_with_adam_give_the_bits_of_one_call(batch_size, chunk_size):
    """Tiny steps (8 rows of 3 features, or one) once ran two to a loop
    iteration, which XLA compiles in other roundings than one: chunks of odd
    length paired other steps than one call does and differed from step ~15.
    (chunk_size=1 is not promised: see fit's docstring.)"""
    eqx = pytest.importorskip("equinox")
    x = jax.random.normal(jax.random.key(0), (256, 3))
    y = jnp.sin(x).sum(axis=1, keepdims=True)

    def loss(model, x, y):
        return ((jax.vmap(model)(x) - y) ** 2).mean()

    model = eqx.nn.MLP(3, 1, 16, 2, key=jax.random.key(1))
    kwargs = {"optimizer": optax.adam(1e-2), "steps": 40, "batch_size": batch_size, "key": KEY}
    one = fsgd.fit(loss, model, (x, y), **kwargs)
    chunked = fsgd.fit(loss, model, (x, y), run=fsgd.Run(chunk_size=chunk_size), **kwargs)
    assert_trees_close(chunked.losses, one.losses)  # to the bit
    assert_trees_close(eqx.filter(chunked.params, eqx.is_array),
                       eqx.filter(one.params, eqx.is_array))
def test_numpy_data_written_after_fit_returns_does_not_change_its_result():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 8)).astype(np.float32)
    y = (x @ np.arange(8, dtype=np.float32)).astype(np.float32)

    def loss(a, x, y):  # not linear_mse: no moments, every step reads the data
        return ((x @ a - y) ** 2).mean()

    expected = fsgd.fit(loss, np.zeros(8, np.float32), (x.copy(), y.copy()), lr=0.1,
                        steps=100)
    x, y = _aligned(x), _aligned(y)
    result = fsgd.fit(loss, np.zeros(8, np.float32), (x, y), lr=0.1, steps=100)
    x[:] = 0.0
    y[:] = 0.0
    assert_trees_close(result.params, expected.params)




def test_numpy_data_written_after_lr_sweep_returns_does_not_change_its_result():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 8)).astype(np.float32)
    y = (x @ np.arange(8, dtype=np.float32)).astype(np.float32)

    def loss(a, x, y):
        return ((x @ a - y) ** 2).mean()

    lrs = jnp.array([0.05, 0.1])
    expected = fsgd.lr_sweep(loss, np.zeros(8, np.float32), (x.copy(), y.copy()), lrs=lrs,
                             steps=50)
    x, y = _aligned(x), _aligned(y)
    sweep = fsgd.lr_sweep(loss, np.zeros(8, np.float32), (x, y), lrs=lrs, steps=50)
    x[:] = 0.0
    y[:] = 0.0
    assert_trees_close(sweep.losses, expected.losses)
