"""A loss or optax optimizer built afresh per call reuses the compiled loop
when it computes the same thing (issue 23.7): compared by code and the
values closed over; whatever cannot be compared safely, by identity."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import START, X, Y, assert_trees_close, count_compilations

import functional_sgd as fsgd
from functional_sgd.core._compare import computation_key


def train(learning_rate):
    """A training function as the nnx and equinox examples write it: the
    optimizer and the loss made inside it, on every call."""
    optimizer = optax.adam(learning_rate)

    def loss(params, x, y):
        return fsgd.linear_mse(params, x, y)

    return fsgd.fit(loss, START, (X, Y), optimizer=optimizer, steps=20, batch_size=10,
                    key=jax.random.key(1))


@pytest.mark.usefixtures("standard_promotion")
def test_a_fresh_adam_and_loss_per_call_compile_once():
    first = train(1e-3)  # compiles
    with count_compilations() as compiled:
        again = [train(1e-3) for _ in range(3)]
    assert compiled[0] == 0
    for result in again:
        assert_trees_close(result.losses, first.losses)  # bits
    with count_compilations() as compiled:
        other = train(1e-2)
    assert compiled[0] >= 1  # another learning rate: another program
    assert not np.array_equal(other.params, first.params)


def key_of(make):
    return computation_key(make())


def test_equal_keys_need_equal_code_and_values():
    assert key_of(lambda: optax.adam(1e-3)) == key_of(lambda: optax.adam(1e-3))
    assert hash(key_of(lambda: optax.adam(1e-3))) == hash(key_of(lambda: optax.adam(1e-3)))
    assert key_of(lambda: optax.adam(1e-3)) != key_of(lambda: optax.adam(1e-2))
    assert key_of(lambda: optax.sgd(0.0)) != key_of(lambda: optax.sgd(-0.0))  # sign of zero
    assert key_of(lambda: optax.sgd(1)) != key_of(lambda: optax.sgd(1.0))  # int vs float
    assert key_of(lambda: optax.sgd(0.1)) != key_of(lambda: optax.adam(0.1))

    def scaled(scale):
        return lambda p: scale * p

    assert computation_key(scaled(2.0)) == computation_key(scaled(2.0))
    assert computation_key(scaled(2.0)) != computation_key(scaled(3.0))
    assert computation_key(scaled(jnp.array([1.0, 2.0]))) == \
        computation_key(scaled(jnp.array([1.0, 2.0])))
    assert computation_key(scaled(jnp.array([1.0, 2.0]))) != \
        computation_key(scaled(jnp.array([1.0, 2.0], jnp.bfloat16)))
    weak, strong = jnp.asarray(2.0), jnp.array(2.0, jnp.float32)
    assert computation_key(scaled(weak)) != computation_key(scaled(strong))  # promotes otherwise
    assert computation_key(functools.partial(jnp.add, 1)) == \
        computation_key(functools.partial(jnp.add, 1))
    assert computation_key(functools.partial(jnp.add, 1)) != \
        computation_key(functools.partial(jnp.add, 2))


def test_what_cannot_be_compared_safely_falls_back_to_identity():
    class Opaque:
        pass

    def over(value):
        return lambda p: p + value

    assert computation_key(over(Opaque())) != computation_key(over(Opaque()))
    shared = Opaque()
    assert computation_key(over(shared)) == computation_key(over(shared))
    big = np.ones(100_000)  # compared by identity, not read
    assert computation_key(over(big)) == computation_key(over(big))
    assert computation_key(over(big)) != computation_key(over(big.copy()))
    small = np.ones(3)
    before = computation_key(over(small))
    small[0] = 5.0  # a key is a snapshot: a later change is a new key
    assert computation_key(over(small)) != before


SCALE = 1.0


def test_a_global_the_loss_reads_is_part_of_its_key():
    global SCALE
    losses = []
    for scale in (1.0, 2.0):
        SCALE = scale
        loss = lambda a, x, y: SCALE * fsgd.linear_mse(a, x, y)
        losses.append(fsgd.fit(loss, START, (X, Y), lr=0.01, steps=3).losses[0])
    SCALE = 1.0
    assert_trees_close(losses[1], 2 * losses[0], rtol=1e-6)  # not the first program again


def test_an_equal_loss_compiled_again_for_new_shapes_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for size in (1, 2, 3, 4):  # a new shape compiles; the fresh lambda is not why
            fsgd.fit(lambda p: (p ** 2).sum(), jnp.ones(size), lr=0.1, steps=2)
    assert not [w for w in caught if "compiled its loop again" in str(w.message)]
