"""A long checkpointed run, to be killed and started again by tests/test_checkpoint.py.

``python tests/checkpoint_run.py CHECKPOINT OUT [--slow] [--evaluate]``: fits the
lesson's line in float64 by mini-batch descent with a patience stop rule
(``--evaluate``: on a held-out mse evaluated every 40 steps, keeping the best params),
in chunks of ``CHUNK`` steps, writing CHECKPOINT after each; prints the
global step after every chunk and writes the result to OUT when done.
``--slow`` sleeps between chunks, so the run is still going when it is killed.
"""

import os
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd

STEPS, CHUNK = 1000, 50


def held_out_mse(params, x, y):
    return {"mse": fsgd.linear_mse(params, x, y)}


def run(evaluate=False, **kwargs):
    """The run; inside ``jax.enable_x64(True)``."""
    x, y = fsgd.lesson_data(jax.random.key(0), dtype=jnp.float64)
    if evaluate:
        kwargs.update(evaluation=fsgd.Evaluation(
            held_out_mse, fsgd.lesson_data(jax.random.key(5), dtype=jnp.float64), every=40,
            monitor="mse", patience=3, restore_best=True))
    else:
        kwargs.update(stop=fsgd.Stop(patience=300))
    return fsgd.fit(fsgd.linear_mse, jnp.array(fsgd.LESSON_START, jnp.float64), (x, y),
                    lr=0.05, steps=STEPS, batch_size=10, key=jax.random.key(1), **kwargs)


def main(checkpoint, out, *flags):
    def report(result):
        print(int(result.step), flush=True)
        if "--slow" in flags:
            time.sleep(0.1)

    with jax.enable_x64(True):
        result = run("--evaluate" in flags, run=fsgd.Run(chunk_size=CHUNK, checkpoint=checkpoint,
                                                          on_chunk=report))
        leaves = jax.tree.leaves(result)
    np.savez(out, *[np.asarray(leaf) for leaf in leaves])


if __name__ == "__main__":
    main(*sys.argv[1:])
