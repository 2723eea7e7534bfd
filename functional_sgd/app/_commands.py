"""What each command of the command line does and prints (see ``_cli``)."""

import jax
import jax.numpy as jnp
import numpy as np

from functional_sgd import Evaluation, linear_mse
from functional_sgd.lesson import LEARNING_RATES, LESSON_START, lesson_data

from ._shared import (DIGITS_FILES, LESSON_FILES, SWEEP_FILES, UsageError, check_batch_size,
                      out_folder)
from ._extras import TORCH_INSTALL
from ._memory import available_bytes, digits_needs, lesson_needs, sweep_needs, too_large
from ._options import INT32_MAX
from ._progress import progress_over, wants_progress
from ._runs import (HELD_OUT, Lesson, fit_modes, held_out_curve, held_out_data, held_out_loss,
                    held_out_rates, learning_rate_runs, reference_agreement)
from ._timing import timed

REFERENCE_MAX_STEPS = 10_000
"""Longer runs skip the torch check: its eager loop runs one Python step at a time."""

LR_LESSON_STEPS = 100
"""The learning-rate lesson runs the lesson's 100 steps whatever --steps says."""


def lesson(args):
    check_batch_size(args, args.n, "--n")
    batch_size = min(10, args.n) if args.batch_size is None else args.batch_size
    rows = held_out_rows(args)
    check_memory(lesson_needs(args.n, args.steps, batch_size,
                              reference=args.reference and args.steps <= REFERENCE_MAX_STEPS,
                              holdout=args.holdout))
    folder = out_folder(args)
    every = args.every or (10 if args.steps <= 100 else max(args.steps // 10, 1))
    data_key, batch_key = jax.random.split(jax.random.key(args.seed))
    x, y = lesson_data(data_key, args.n)
    start = jnp.array(LESSON_START)
    print(f"The lesson: y = 3x + 2 + U(0, 1), n = {args.n}, a starts at {LESSON_START}, "
          f"lr = {args.lr}, {args.steps} steps; mini-batches of {batch_size} rows.")
    held_out = start_loss = None
    if rows is not None:
        held_out = held_out_data(data_key, rows)
        start_loss = float(linear_mse(start, *held_out))
        print(f"Held out: {rows} more rows of the same line (a key of their own), their loss "
              "evaluated inside the compiled loop after every step of batch descent and every "
              f"{every} steps of mini-batch and stochastic descent.")
    runs = fit_modes((x, y), start, Lesson(args.lr, args.steps, batch_size, batch_key, every),
                     progress=wants_progress(args.progress), held_out=held_out)
    curves = {} if held_out is None else {
        name: held_out_curve(run.result.eval_steps, run.result.evals[HELD_OUT], start_loss)
        for name, run in runs.items()}
    for name, run in runs.items():
        losses = np.asarray(run.result.losses)
        held = dict(zip(*curves[name])) if curves else {}
        print(f"\n{name} descent")
        for t in range(0, args.steps, every):
            beside = f"  held-out {held[t]:.4f}" if t in held else ""
            print(f"  step {t:6d}  loss {losses[t]:.4f}{beside}")
        a = np.asarray(run.result.params)
        final = f"  held-out loss {held[args.steps]:.4f}" if held else ""
        print(f"  fitted a = ({a[0]:.4g}, {a[1]:.4g}){final}  [{run.timing}]")
        if int(run.result.diverged_at) >= 0:
            print(f"  diverged at step {int(run.result.diverged_at)}: lr = {args.lr} is too "
                  "high (try lr-sweep)")
    _print_reference(args, runs, x, y, start, batch_key)

    rate_runs = learning_rate_runs(x, y, start, steps=LR_LESSON_STEPS)
    rate_curves = None if held_out is None else held_out_rates(x, y, start, held_out,
                                                               steps=LR_LESSON_STEPS)
    print(f"\nLearning rates, {LR_LESSON_STEPS} full-batch steps on f(x) = x^2 from x = 3 "
          "and on the line:")
    for label, (on_parabola, on_line) in rate_runs.items():
        line = _outcome(on_line)
        if rate_curves is not None and int(on_line.diverged_at) < 0:
            line += f", held-out {rate_curves[label][1][-1]:.3g}"
        print(f"  {label:9s} lr = {LEARNING_RATES[label]:<5}  f(x) = x^2: {_outcome(on_parabola)};"
              f"  line: {line}")
    if folder is not None:
        from . import _plots

        fitted = {name: run.result.params for name, run in runs.items()}
        batch = runs["batch"].result
        _draw([
            lambda: _plots.plot_fit(folder / LESSON_FILES[0], x, y, start, fitted),
            lambda: _plots.plot_losses(folder / LESSON_FILES[1],
                                       {name: run.result.losses for name, run in runs.items()},
                                       held_out=curves),
            lambda: _plots.plot_learning_rates(folder / LESSON_FILES[2], rate_runs, x, y,
                                               held_out=rate_curves),
            lambda: _plots.plot_gradient(folder / LESSON_FILES[3]),
            lambda: _plots.animate_fit(folder / LESSON_FILES[4], (x, y), batch.trajectory,
                                       batch.losses, descent="batch"),
        ], progress=wants_progress(args.progress))
    return 0


def held_out_rows(args):
    """How many rows ``--holdout`` holds out (``None`` without it)."""
    if args.holdout is None:
        return None
    rows = round(args.holdout * args.n)
    if rows < 1:
        raise UsageError(f"--holdout {args.holdout:g} of --n {args.n} rows holds out no rows "
                         f"(it rounds to 0); pass --holdout at least {1 / args.n:.3g}.")
    return rows


def _outcome(result):
    at = int(result.diverged_at)
    if at >= 0:
        return f"diverged at step {at}"
    losses = np.asarray(result.losses)
    return f"loss {losses[0]:.3g} -> {losses[-1]:.3g}"


def check_memory(needs):
    """Refuses a run that will not fit in memory (see ``_memory``)."""
    message = too_large(needs, available_bytes())
    if message is not None:
        raise UsageError(message)


def _print_reference(args, runs, x, y, start, key):
    if not args.reference:
        return
    if args.steps > REFERENCE_MAX_STEPS:
        print(f"\ntorch reference: skipped (more than {REFERENCE_MAX_STEPS} steps).")
        return
    differences = reference_agreement(runs, x, y, start, lr=args.lr, key=key)
    if differences is None:
        print(f"\ntorch reference: torch is not installed: {TORCH_INSTALL}.")
        return
    print("\ntorch reference (the lesson's loop, same batches): largest difference in params "
          "and losses, |jax - torch| / max(1, |torch|), float32")
    print("  " + ", ".join(f"{name} {value:.1e}" for name, value in differences.items()))


def _draw(drawings, *, progress=False):
    """Draws each figure (``drawings``: functions that return the path they
    wrote), with a bar over them when ``progress``; prints where they went
    and how long drawing took."""
    with timed() as timing:
        paths = [draw() for draw in progress_over(drawings, enabled=progress, desc="figures",
                                                   unit="figure")]
    print(f"\nWrote to {paths[0].parent}/: {', '.join(p.name for p in paths)}  "
          f"(drawn in {timing.total_seconds:.2f} s)")


def lr_sweep(args):
    from functional_sgd.lesson import lr_sweep as sweep_rates

    check_batch_size(args, args.n, "--n")
    if args.lr_min >= args.lr_max:
        raise UsageError(f"--lr-min {args.lr_min} must be below --lr-max {args.lr_max}.")
    lrs = jnp.geomspace(args.lr_min, args.lr_max, args.num)
    if not (np.diff(np.asarray(lrs)) > 0).all():
        raise UsageError(
            f"--num {args.num} rates from --lr-min {args.lr_min:g} to --lr-max "
            f"{args.lr_max:g} are too close for float32 to tell apart; pass a smaller --num "
            "or a wider range.")
    rows = held_out_rows(args)
    check_memory(sweep_needs(args.n, args.steps, args.num, args.batch_size,
                             holdout=args.holdout))
    folder = out_folder(args)
    data_key, batch_key = jax.random.split(jax.random.key(args.seed))
    x, y = lesson_data(data_key, args.n)
    schedule = {} if args.batch_size is None else {"batch_size": args.batch_size,
                                                   "key": batch_key}
    evaluation = None if rows is None else Evaluation(  # once, after each rate's last step
        held_out_loss, held_out_data(data_key, rows), every=args.steps)
    with timed() as timing:
        sweep = sweep_rates(linear_mse, jnp.array(LESSON_START), (x, y), lrs=lrs,
                            steps=args.steps, **schedule, evaluation=evaluation)
        jax.block_until_ready(sweep)
    mode = "full batch" if args.batch_size is None else f"mini-batches of {args.batch_size}"
    print(f"{args.num} learning rates from {args.lr_min:g} to {args.lr_max:g}, {args.steps} "
          f"steps each, {mode}, in one compiled call  [{timing}]")
    if rows is not None:
        print(f"Held out: {rows} more rows of the same line (a key of their own), each rate's "
              "loss on them evaluated after its last step, in the same call.")
    final, lrs = np.asarray(sweep.final_loss), np.asarray(sweep.lrs)
    held = None if rows is None else np.asarray(sweep.evals[HELD_OUT])[:, -1]
    for i in range(0, args.num, max(args.num // 8, 1)):
        beside = "" if held is None else f"  held-out {held[i]:.4g}"
        print(f"  lr {lrs[i]:9.4g}  final loss {final[i]:.4g}{beside}")
    best, edge = int(sweep.best), int(sweep.edge)
    if best >= 0:
        print(f"best: lr = {lrs[best]:.4g}, final loss {final[best]:.4g}")
    else:
        print("best: none, every rate diverged; lower --lr-min")
    if held is not None and np.isfinite(held).any():
        on_held = int(np.nanargmin(np.where(np.isfinite(held), held, np.nan)))
        print(f"best on the held-out rows: lr = {lrs[on_held]:.4g}, held-out loss "
              f"{held[on_held]:.4g}")
    if edge >= 0:
        at = int(sweep.diverged_at[edge])
        how = (f"diverged at step {at}" if at >= 0 else  # its batch losses all stayed finite
               f"ended with a loss on all the data that is not finite, after {args.steps} steps")
        print(f"edge of divergence: lr = {lrs[edge]:.4g} {how}")
    else:
        print(f"edge of divergence: not reached up to lr = {lrs[-1]:.4g}")
    if folder is not None:
        from ._plots import plot_lr_sweep

        _draw([lambda: plot_lr_sweep(folder / SWEEP_FILES[0], sweep, held_out=held)])
    return 0


def digits(args):
    from functional_sgd.lesson import digits_3_vs_7, fit_classifier, load_image_folder

    data_key, batch_key = jax.random.split(jax.random.key(args.seed))  # as every command
    if args.data is None:
        try:
            data = digits_3_vs_7(data_key, valid_fraction=args.valid_fraction)
        except ValueError as error:  # the library names the argument; we name the option
            raise UsageError(str(error).replace("valid_fraction=", "--valid-fraction ")) from None
    else:
        data = load_image_folder(args.data)
    check_batch_size(args, len(data.train_y), "the training images")
    per_epoch = len(data.train_y) // args.batch_size
    if args.epochs * per_epoch > INT32_MAX:
        raise UsageError(f"--epochs {args.epochs} of {per_epoch} steps each is more than "
                         f"{INT32_MAX} steps; pass --epochs at most {INT32_MAX // per_epoch}.")
    check_memory(digits_needs(args.epochs, per_epoch))
    folder = out_folder(args)
    print(f"3 vs 7 on {data.source}: {len(data.train_y)} training images, "
          f"{len(data.valid_y)} held out, {data.image_shape[0]}x{data.image_shape[1]} pixels; "
          f"loss {args.loss}, lr {args.lr}, batches of {args.batch_size}.")
    report = lambda r: print(f"  epoch {r.epoch:3d}  train loss {r.train_loss:.4f}  "
                             f"valid accuracy {r.valid_accuracy:.3f}")
    with timed() as timing:
        params, reports = fit_classifier(data, key=batch_key, loss=args.loss, lr=args.lr,
                                         epochs=args.epochs, batch_size=args.batch_size,
                                         on_epoch=report, patience=args.patience,
                                         keep_best=True)
    accuracies = [r.valid_accuracy for r in reports]
    best = int(np.argmax(accuracies)) + 1  # the first best: a tie does not improve
    if len(reports) < args.epochs:
        print(f"stopped after {len(reports)} epochs: the validation accuracy has not improved "
              f"for {args.patience} epochs.")
    print(f"kept the weights of epoch {best}: valid accuracy {accuracies[best - 1]:.3f}  "
          f"[{timing}]")
    if folder is not None:
        from ._plots import plot_digit_curves, plot_digit_weights

        _draw([
            lambda: plot_digit_weights(folder / DIGITS_FILES[0], params, data),
            lambda: plot_digit_curves(folder / DIGITS_FILES[1], reports, patience=args.patience,
                                      best_epoch=best, epochs=args.epochs)])
    return 0


def agreement(args):
    try:
        import reference
    except ImportError:
        raise UsageError("agreement needs the torch reference, and torch is not installed: "
                         f"{TORCH_INSTALL}.") from None
    from ._agreement import print_table

    print_table(reference, steps=args.steps, lr=args.lr, seed=args.seed)
    return 0
