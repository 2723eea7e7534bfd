"""Issue 22, items 15, 17 and 18: inputs refused clearly, or taken as documented.

Each test failed before its fix (see the commit that fixed it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _checks

KEY = jax.random.key(0)
MAX_ROWS = 2**31 - 1


# Item 15: sample_indices with n past int32, and schedules no memory holds.

def test_sample_indices_refuses_n_past_int32_naming_it():
    with pytest.raises(ValueError, match=r"n must be at most 2\*\*31 - 1 .* got 2147483648"):
        fsgd.sample_indices(KEY, 2**31, 10, 4)


def test_sample_indices_refuses_a_schedule_no_memory_holds(monkeypatch):
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: 64 * 2**30)  # a 64 GiB machine
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
    got = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=lr, tol=tol, steps=50)
    # The same rates as Python floats: sgd_update casts lr to the params'
    # float32, where every 16-bit value is exact, so the bits agree.
    want = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=float(lr), tol=float(tol), steps=50)
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
    got = fsgd.fit(_stalls, jnp.float32(0.0), lr=0.5, steps=50, patience=patience)
    want = fsgd.fit(_stalls, jnp.float32(0.0), lr=0.5, steps=50, patience=3)
    assert int(got.steps_run) == int(want.steps_run) < 50


@pytest.mark.parametrize("patience, error", [
    (jnp.float32(3), TypeError), (jnp.array([3]), TypeError), (True, TypeError),
    (jnp.int32(0), ValueError), (2**31, ValueError)])
def test_patience_refuses_what_is_not_a_positive_int32_count(patience, error):
    with pytest.raises(error, match=r"patience must .*; got"):
        fsgd.fit(_stalls, jnp.float32(1.0), lr=0.1, steps=5, patience=patience)


# Item 17: a checkpoint path that is not a regular file is refused as such.

@pytest.mark.parametrize("stream", [False, True])
def test_checkpoint_that_is_not_a_regular_file_is_refused_before_any_step(stream):
    data = fsgd.stream([(np.asarray(X), np.asarray(Y))]) if stream else (X, Y)
    chunks = {} if stream else {"chunk_size": 2}
    with pytest.raises(ValueError, match=r"checkpoint '/dev/null' is not a regular file"):
        fsgd.fit(fsgd.linear_mse, START, data, lr=0.1, steps=4, checkpoint="/dev/null",
                 on_chunk=_no_chunk_expected, **chunks)


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
