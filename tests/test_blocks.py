"""A long mini-batch run gathers its batches a block of steps at a time
(core/_blocks.py): the same steps on the same rows, so the same bits."""

import jax
import jax.numpy as jnp
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _repeat
from functional_sgd.speed import SpeedPlan
from helpers import assert_trees_close, backend_tolerance

N, D, BATCH, STEPS = 250, 8, 16, 37
STEP_BYTES = BATCH * (D + 1) * 4  # a batch of x rows and y values, float32


def problem():
    x = jax.random.normal(jax.random.key(0), (N, D))
    y = (x @ jnp.linspace(-1.0, 1.0, D) > 0).astype(jnp.float32)
    return (jnp.zeros(D), jnp.zeros(())), (x, y)


def loss(params, x, y):
    return fsgd.binary_cross_entropy(x @ params[0] + params[1], y)


def loss_with_aux(params, x, y):
    logits = x @ params[0] + params[1]
    return fsgd.binary_cross_entropy(logits, y), {"mean_logit": logits.mean()}


@pytest.fixture
def blocks_run(monkeypatch):
    """Counts the runs that took the blocked route (a fresh plan traces anew)."""
    calls = []
    run = _repeat.run_in_blocks

    def counted(piece, block, *args):
        calls.append(block)
        return run(piece, block, *args)

    monkeypatch.setattr(_repeat, "run_in_blocks", counted)
    return calls


CASES = {
    "shuffled epochs": {"key": jax.random.key(1), "rows": fsgd.Shuffled()},
    "sampled": {"key": jax.random.key(1)},
    "padded epochs": {"key": jax.random.key(1), "rows": fsgd.Shuffled(drop_last=False)},
    "indices": {"rows": fsgd.Schedule(jax.random.randint(jax.random.key(2), (STEPS, BATCH), 0, N))},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps_per_block", [5, 1])
def test_blocks_give_the_bits_of_one_gather(case, steps_per_block, blocks_run):
    params, data = problem()
    kwargs = {"lr": 0.3, "steps": STEPS, "batch_size": BATCH, **CASES[case]}
    whole = fsgd.fit(loss, params, data, run=fsgd.Run(speed=SpeedPlan(gather_block_bytes=0)), **kwargs)
    assert blocks_run == []
    plan = SpeedPlan(gather_block_bytes=steps_per_block * STEP_BYTES + 3)
    blocked = fsgd.fit(loss, params, data, run=fsgd.Run(speed=plan), **kwargs)
    assert blocks_run == [steps_per_block]  # 37 steps: whole blocks, then a shorter one
    assert_trees_close(blocked.params, whole.params, rtol=0, atol=0)
    assert_trees_close(blocked.losses, whole.losses, rtol=0, atol=0)
    assert int(blocked.diverged_at) == int(whole.diverged_at) == -1


def test_blocks_keep_aux_chunks_and_a_sweep(blocks_run):
    params, data = problem()
    kwargs = {"lr": 0.3, "steps": STEPS, "batch_size": BATCH, "key": jax.random.key(1),
              "rows": fsgd.Shuffled(), "model": fsgd.Model(has_aux=True)}
    plan = SpeedPlan(gather_block_bytes=4 * STEP_BYTES + 1)
    whole = fsgd.fit(loss_with_aux, params, data, run=fsgd.Run(speed=SpeedPlan(gather_block_bytes=0)),
                     **kwargs)
    blocked = fsgd.fit(loss_with_aux, params, data, run=fsgd.Run(speed=plan), **kwargs)
    assert blocks_run == [4]
    assert_trees_close(blocked.aux, whole.aux, rtol=0, atol=0)
    assert blocked.aux["mean_logit"].shape == (STEPS,)
    chunked = fsgd.fit(loss_with_aux, params, data, run=fsgd.Run(chunk_size=20, speed=plan), **kwargs)
    assert_trees_close(chunked.params, whole.params, rtol=0, atol=0)

    def sweep(plan):
        return jax.vmap(lambda lr: fsgd.fit(loss_with_aux, params, data, run=fsgd.Run(speed=plan),
                                            **{**kwargs, "lr": lr}).params)(
            jnp.array([0.1, 0.3]))

    # Under vmap XLA compiles the batched step inside each loop its own way
    # (one element was measured 1 ulp apart): agreement to float32 rounding.
    assert_trees_close(sweep(plan), sweep(SpeedPlan(gather_block_bytes=0)),
                       **backend_tolerance(rtol=1e-6, atol=1e-7))
    assert blocks_run == [4] * 4  # the run, its two chunks (20 and 17 steps), the sweep


@pytest.mark.parametrize("stop, record_params", [(fsgd.Stop(tol=-1.0), False), (None, True)],
                         ids=["stop rule", "trajectory"])
def test_a_stop_rule_or_a_trajectory_keeps_one_piece(stop, record_params, blocks_run):
    params, data = problem()
    plan = SpeedPlan(gather_block_bytes=5 * STEP_BYTES + 5)
    fsgd.fit(loss, params, data, lr=0.3, steps=STEPS, batch_size=BATCH,
             key=jax.random.key(1), stop=stop,
             run=fsgd.Run(speed=plan, record_params=record_params))
    assert blocks_run == []


def test_gather_block_bytes_is_checked():
    with pytest.raises(ValueError, match="gather_block_bytes must be an int >= 0"):
        SpeedPlan(gather_block_bytes=-1)


def test_a_block_that_divides_the_run_is_preferred(blocks_run):
    """40 steps, at most 7 a block: blocks of 5 (one piece to compile, no rest)."""
    params, data = problem()
    kwargs = {"lr": 0.3, "steps": 40, "batch_size": BATCH, "key": jax.random.key(1)}
    whole = fsgd.fit(loss, params, data, run=fsgd.Run(speed=SpeedPlan(gather_block_bytes=0)), **kwargs)
    blocked = fsgd.fit(loss, params, data, run=fsgd.Run(speed=SpeedPlan(gather_block_bytes=7 * STEP_BYTES)),
                       **kwargs)
    assert blocks_run == [5]
    assert_trees_close(blocked.params, whole.params, rtol=0, atol=0)
