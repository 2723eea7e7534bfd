"""Calls a user writes, type-checked in CI (``.ci/run``: ``mypy
--warn-unused-ignores`` on this file). Each line marked ``# type: ignore[...]``
must be an error a type checker reports; an ignore that is no longer needed
fails the check. The calls sit in a function that nothing calls: importing
this module (pytest's collection does) runs none of them."""

import jax
import jax.numpy as jnp

import functional_sgd as fsgd


def calls_a_user_writes() -> None:
    x, y = fsgd.lesson_data(jax.random.key(0))
    start = jnp.array([0.5, 0.75])

    result: fsgd.FitResult = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=100)
    trainer = fsgd.Trainer(fsgd.linear_mse, steps=100, batch_size=10, rows=fsgd.Shuffled())
    again: fsgd.FitResult = trainer(result.params, (x, y), lr=0.1, key=jax.random.key(1))
    sweep: fsgd.LRSweep = fsgd.lr_sweep(fsgd.linear_mse, again.params, (x, y),
                                        lrs=jnp.array([0.1, 0.2]), steps=10)
    print(sweep.best)

    # A misspelt keyword, keywords of the older API, values of the wrong kind.
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, stpes=100)  # type: ignore[arg-type]
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, eval_every=5)  # type: ignore[arg-type]
    fsgd.Trainer(fsgd.linear_mse, steps=100, tol=0.1)  # type: ignore[arg-type]
    fsgd.lr_sweep(fsgd.linear_mse, start, (x, y), lrs=jnp.array([0.1, 0.2]),
                  replace=False)  # type: ignore[arg-type]
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, rows=fsgd.Stop())  # type: ignore[arg-type]
    fsgd.Trainer(fsgd.linear_mse, steps="100")  # type: ignore[arg-type]
