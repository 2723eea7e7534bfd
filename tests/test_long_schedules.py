"""Long keyed runs draw their rows a chunk at a time, with the same bits."""

import dataclasses

import jax
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _batches
from functional_sgd.speed import SpeedPlan
from helpers import assert_trees_close

X, Y = fsgd.lesson_data(jax.random.key(0), n=60)
START = jax.numpy.array(fsgd.LESSON_START)
KEY = jax.random.key(5)


SMALL_BUDGET = SpeedPlan(schedule_budget=64)
"""A 64-index budget, so a 90-step run of 4 rows is drawn in chunks."""


def keyed_and_replayed(plan=None, rows=None, run=fsgd.Run(), **kwargs):
    """The run drawn from ``KEY`` with ``plan`` (from ``run.start_step``), and
    the same batches replayed as a schedule (from step 0, no plan)."""
    kwargs = {"lr": 0.1, "steps": 90, "batch_size": 4, **kwargs}
    keyed = fsgd.fit(fsgd.linear_mse, START, (X, Y), key=KEY, rows=rows,
                     run=dataclasses.replace(run, speed=plan), **kwargs)
    schedule = fsgd.sample_indices(KEY, 60, kwargs.pop("steps"), kwargs.pop("batch_size"),
                                   replace=not isinstance(rows, fsgd.Shuffled),
                                   start=run.start_step)
    replayed = fsgd.fit(fsgd.linear_mse, START, (X, Y), rows=fsgd.Schedule(schedule),
                        run=dataclasses.replace(run, start_step=0), **kwargs)
    return keyed, replayed


@pytest.mark.parametrize("replace, chunk", [(True, 16), (False, 16)])
def test_chunk_sizes_follow_the_budget(replace, chunk):
    assert _batches.chunk_steps(60, 90, 4, replace, 64) == chunk  # 64 // 4; an epoch is 15
    assert _batches.chunk_steps(60, 90, 1, False, 64) == 64
    assert _batches.chunk_steps(60, 10, 4, True, 64) is None  # 40 indices fit


@pytest.mark.parametrize("kwargs", [
    {}, {"rows": fsgd.Shuffled()}, {"run": fsgd.Run(start_step=37)}, {"stop": fsgd.Stop(tol=0.3)},
    {"rows": fsgd.Shuffled(), "stop": fsgd.Stop(patience=5), "run": fsgd.Run(record_params=True)},
])
def test_chunked_draws_equal_the_whole_schedule(kwargs):
    keyed, replayed = keyed_and_replayed(SMALL_BUDGET, **kwargs)
    assert_trees_close(keyed._replace(step=0), replayed._replace(step=0))
    assert int(keyed.step) == int(replayed.step) + kwargs.get("run", fsgd.Run()).start_step


def test_without_chunks_the_schedule_is_drawn_whole():
    keyed, replayed = keyed_and_replayed(steps=40)
    assert _batches.chunk_steps(60, 40, 4, True, SpeedPlan().schedule_budget) is None
    assert_trees_close(keyed._replace(step=0), replayed._replace(step=0))
    assert np.isfinite(np.asarray(keyed.losses)).all()
