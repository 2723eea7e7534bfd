"""Issue 22, items 15, 17 and 18: inputs refused clearly, or taken as documented.

Each test failed before its fix (see the commit that fixed it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _output_size

KEY = jax.random.key(0)
MAX_ROWS = 2**31 - 1


# Item 15: sample_indices with n past int32, and schedules no memory holds.

def test_sample_indices_refuses_n_past_int32_naming_it():
    with pytest.raises(ValueError, match=r"n must be at most 2\*\*31 - 1 .* got 2147483648"):
        fsgd.sample_indices(KEY, 2**31, 10, 4)


def test_sample_indices_refuses_a_schedule_no_memory_holds(monkeypatch):
    monkeypatch.setattr(_output_size, "memory_bytes", lambda: 64 * 2**30)  # a 64 GiB machine
    with pytest.raises(ValueError, match=r"sample_indices .*\(512\.0 GiB.*start="):
        fsgd.sample_indices(KEY, MAX_ROWS, MAX_ROWS, 64)


def test_sample_indices_refuses_petabytes_on_any_machine():
    with pytest.raises(ValueError, match="GiB"):
        fsgd.sample_indices(KEY, MAX_ROWS, MAX_ROWS, 2**20, replace=False)


def test_last_padded_batch_of_an_epoch_of_almost_2_to_31_rows():
    # Epoch positions reach n + batch_size - 2, past int32 here: they once
    # wrapped negative and read as real rows instead of padding.
    n, batch_size = MAX_ROWS, 3
    per_epoch = -(-n // batch_size)
    rows = np.asarray(fsgd.sample_indices(KEY, n, 1, batch_size, replace=False,
                                          drop_last=False, start=per_epoch - 1))
    assert rows[0, 1:].tolist() == [-1, -1]  # n % 3 == 1 real row, then padding
    assert 0 <= rows[0, 0] < n


# Item 17: bfloat16 and float16 scalars are real scalars.

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_lr_and_tol_of_16_bit_floats_are_real_scalars(dtype):
    lr, tol = dtype(0.1), dtype(0.01)
    got = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=lr, stop=fsgd.Stop(tol=tol), steps=50)
    # The same rates as Python floats: sgd_update casts lr to the params'
    # float32, where every 16-bit value is exact, so the bits agree.
    want = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=float(lr), stop=fsgd.Stop(tol=float(tol)), steps=50)
    np.testing.assert_array_equal(np.asarray(got.params), np.asarray(want.params))
    assert int(got.steps_run) == int(want.steps_run)


def test_lr_sweep_takes_bfloat16_rates():
    lrs = jnp.array([0.01, 0.1, 0.5], jnp.bfloat16)
    got = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=20)
    want = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs.astype(jnp.float32), steps=20)
    np.testing.assert_array_equal(np.asarray(got.final_loss), np.asarray(want.final_loss))


# Item 17: patience (traced) takes an integer scalar of any int dtype.

def _stalls(p):
    return (p - 1.0) ** 2  # reaches its floor, then stalls


@pytest.mark.parametrize("patience", [jnp.int32(3), np.int16(3), np.array(3, np.uint8),
                                      jnp.array(3, jnp.int8)])
def test_patience_takes_integer_scalars_of_any_int_dtype(patience):
    got = fsgd.fit(_stalls, jnp.float32(0.0), lr=0.5, steps=50, stop=fsgd.Stop(patience=patience))
    want = fsgd.fit(_stalls, jnp.float32(0.0), lr=0.5, steps=50, stop=fsgd.Stop(patience=3))
    assert int(got.steps_run) == int(want.steps_run) < 50


@pytest.mark.parametrize("patience, error", [
    (jnp.float32(3), TypeError), (jnp.array([3]), TypeError), (True, TypeError),
    (jnp.int32(0), ValueError), (2**31, ValueError)])
def test_patience_refuses_what_is_not_a_positive_int32_count(patience, error):
    with pytest.raises(error, match=r"patience must .*; got"):
        fsgd.fit(_stalls, jnp.float32(1.0), lr=0.1, steps=5, stop=fsgd.Stop(patience=patience))


# Item 17: a checkpoint path that is not a regular file is refused as such.

@pytest.mark.parametrize("stream", [False, True])
def test_checkpoint_that_is_not_a_regular_file_is_refused_before_any_step(stream):
    data = fsgd.stream([(np.asarray(X), np.asarray(Y))]) if stream else (X, Y)
    run = fsgd.Run(chunk_size=None if stream else 2, on_chunk=_no_chunk_expected,
                   checkpoint="/dev/null")
    with pytest.raises(ValueError, match=r"checkpoint '/dev/null' is not a regular file"):
        fsgd.fit(fsgd.linear_mse, START, data, lr=0.1, steps=4, run=run)


def _no_chunk_expected(result):
    raise AssertionError("a chunk ran before the checkpoint path was refused")


# Item 17: a stream's empty batch is refused, naming it.

@pytest.mark.parametrize("empty_at", [0, 3])
def test_stream_refuses_an_empty_batch_naming_it(empty_at):
    x, y = np.asarray(X), np.asarray(Y)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 100, 10)]
    batches[empty_at] = (x[:0], y[:0])
    with pytest.raises(ValueError, match=f"batch {empty_at} of the stream has no rows"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(batches, block=2), lr=0.1)


# Item 17: reference.fit with bfloat16 params checks or converts before training.

def test_reference_returns_bfloat16_params_and_losses_as_bfloat16():
    torch = pytest.importorskip("torch")
    import ml_dtypes

    import reference
    x = torch.tensor(np.asarray(X)).to(torch.bfloat16)
    y = torch.tensor(np.asarray(Y)).to(torch.bfloat16)
    start = torch.tensor(fsgd.LESSON_START, dtype=torch.bfloat16)
    params, losses = reference.fit(lambda a, x, y: ((x @ a - y) ** 2).mean(), start, (x, y),
                                   lr=0.1, steps=5)
    assert params.dtype == losses.dtype == ml_dtypes.bfloat16
    # The same bits as the last step torch computed in bfloat16.
    again, _ = reference.fit(lambda a, x, y: ((x @ a - y) ** 2).mean(), start, (x, y),
                             lr=0.1, steps=5)
    np.testing.assert_array_equal(params.view(np.uint16), again.view(np.uint16))
    assert losses.shape == (5,) and np.isfinite(losses.astype(np.float32)).all()


# Item 18: boolean options are real bools; fast_path is "auto", True or False.

@pytest.mark.parametrize("option, value, build", [
    ("check_finite", "no", lambda v: fsgd.Run(check_finite=v)),
    ("check_finite", 0, lambda v: fsgd.Run(check_finite=v)),
    ("check_finite", None, lambda v: fsgd.Run(check_finite=v)),
    ("padded", 1, lambda v: fsgd.Schedule(np.zeros((2, 2), int), padded=v)),
    ("record_params", "yes", lambda v: fsgd.Run(record_params=v)),
    ("drop_last", 1, lambda v: fsgd.Shuffled(drop_last=v)),
    ("has_aux", 1, lambda v: fsgd.Model(has_aux=v)),
    ("restore_best", "yes", lambda v: fsgd.Evaluation(data=(X, Y), monitor="loss",
                                                      restore_best=v))])
def test_boolean_options_refuse_what_is_not_a_bool(option, value, build):
    """Every flag of fit's option values is True or False, refused when built."""
    with pytest.raises(TypeError, match=f"{option} must be True or False; got {value!r}"):
        build(value)


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_fast_path_refuses_what_is_not_auto_true_or_false(value):
    with pytest.raises(ValueError, match=f'must be "auto", True or False; got {value!r}'):
        fsgd.speed.SpeedPlan(exact_moments=value)


def test_numpy_bools_are_bools():
    got = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5, run=fsgd.Run(record_params=np.False_, check_finite=np.True_, speed=fsgd.speed.SpeedPlan(exact_moments=np.False_)))
    want = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=5)
    np.testing.assert_array_equal(np.asarray(got.params), np.asarray(want.params))


# Item 18: a stream refuses the options it cannot honour, and says when it ran short.

def _batches(count=10):
    x, y = np.asarray(X), np.asarray(Y)
    return [(x[i:i + 10], y[i:i + 10]) for i in range(0, 10 * count, 10)]


@pytest.mark.parametrize("option, kwargs", [
    (r"SpeedPlan\(exact_moments=\)",
     {"run": fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=True))}),
    (r"SpeedPlan\(exact_moments=\)",
     {"run": fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False))}),
    (r"rows=fsgd.Shuffled\(\)", {"rows": fsgd.Shuffled()}),
    ("drop_last=False", {"rows": fsgd.Shuffled(drop_last=False)})])
def test_stream_refuses_options_it_would_ignore(option, kwargs):
    with pytest.raises(ValueError, match=f"with a stream as data, .*{option}.* cannot be used"):
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(_batches()), lr=0.1, **kwargs)


def test_stream_shorter_than_steps_warns_at_the_caller_and_says_where_it_ended():
    with pytest.warns(UserWarning, match="the stream ended after 10 of steps=50") as caught:
        result = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(_batches(), block=4), lr=0.1,
                          steps=50)
    assert caught[0].filename == __file__
    assert int(result.step) == int(result.steps_run) == 10 == result.losses.shape[0]


def test_stream_of_exactly_steps_batches_does_not_warn(recwarn):
    fsgd.fit(fsgd.linear_mse, START, fsgd.stream(_batches(), block=4), lr=0.1, steps=10)
    assert not [w for w in recwarn if "stream ended" in str(w.message)]


def test_keyboard_interrupt_inside_a_stream_carries_the_result_so_far():
    def interrupted():
        yield from _batches(4)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        fsgd.fit(fsgd.linear_mse, START, fsgd.stream(interrupted(), block=2), lr=0.1)
    assert int(caught.value.result.step) == 4
    want = fsgd.fit(fsgd.linear_mse, START, fsgd.stream(_batches(4), block=2), lr=0.1)
    np.testing.assert_array_equal(np.asarray(caught.value.result.params),
                                  np.asarray(want.params))


# Item 18: an lr that rounds every update away is said, not trained silently.

def test_lr_that_rounds_every_first_update_away_warns():
    half = START.astype(jnp.float16), (X.astype(jnp.float16), Y.astype(jnp.float16))
    with pytest.warns(UserWarning, match=r"lr=1e-05 .*float16.*changes no element") as caught:
        fsgd.fit(fsgd.linear_mse, half[0], half[1], lr=1e-5, steps=5)
    assert caught[0].filename == __file__


def test_small_lr_that_still_moves_the_params_does_not_warn(recwarn):
    half = START.astype(jnp.float16), (X.astype(jnp.float16), Y.astype(jnp.float16))
    fsgd.fit(fsgd.linear_mse, half[0], half[1], lr=5e-4, steps=5)
    assert not [w for w in recwarn if "changes no element" in str(w.message)]


# Item 17: CPU torch tensors as params train as their NumPy copies.

def test_torch_params_train_as_numpy_params_do():
    torch = pytest.importorskip("torch")
    start = torch.tensor(fsgd.LESSON_START, requires_grad=True)
    got = fsgd.fit(fsgd.linear_mse, start, (X, Y), lr=0.1, steps=20)
    want = fsgd.fit(fsgd.linear_mse, np.asarray(fsgd.LESSON_START, np.float32), (X, Y), lr=0.1,
                    steps=20)
    np.testing.assert_array_equal(np.asarray(got.params), np.asarray(want.params))
    mixed = fsgd.fit(lambda p, x, y: fsgd.linear_mse(p["a"], x, y) + 0 * p["b"].sum(),
                     {"a": start, "b": torch.zeros(3)}, (X, Y), lr=0.1, steps=20)
    np.testing.assert_array_equal(np.asarray(mixed.params["a"]), np.asarray(want.params))
    assert start.detach().tolist() == list(fsgd.LESSON_START)  # never written to


def test_torch_params_on_another_device_or_dtype_are_refused_by_name():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"params\['w'\] is a torch tensor of dtype torch.bfloat16"):
        fsgd.fit(lambda p: (p["w"] ** 2).sum(), {"w": torch.ones(2, dtype=torch.bfloat16)},
                 lr=0.1, steps=2)


def test_lr_sweep_takes_torch_params_as_fit_does():
    torch = pytest.importorskip("torch")
    lrs = jnp.array([0.01, 0.1])
    got = fsgd.lr_sweep(fsgd.linear_mse, torch.tensor(fsgd.LESSON_START), (X, Y), lrs=lrs,
                        steps=5)
    want = fsgd.lr_sweep(fsgd.linear_mse, START, (X, Y), lrs=lrs, steps=5)
    np.testing.assert_array_equal(np.asarray(got.final_loss), np.asarray(want.final_loss))


def test_lr_that_rounds_away_warns_on_a_repeated_call_too():
    # A call repeating an earlier one's JAX arrays skips its checks (the warm
    # path): a tiny lr must still be probed there.
    half = START.astype(jnp.float16), (X.astype(jnp.float16), Y.astype(jnp.float16))
    fsgd.fit(fsgd.linear_mse, half[0], half[1], lr=0.1, steps=5)
    with pytest.warns(UserWarning, match="changes no element"):
        fsgd.fit(fsgd.linear_mse, half[0], half[1], lr=1e-5, steps=5)
