"""What the commands share with the parser: the files each writes, the
one-line usage error, and checks of parsed arguments."""

from pathlib import Path

LESSON_FILES = ("lesson_fit.png", "lesson_losses.png", "learning_rates.png", "gradient.png",
                "lesson_fit.gif")
SWEEP_FILES = ("lr_sweep.png",)
DIGITS_FILES = ("digits_weights.png", "digits_curves.png")


class UsageError(Exception):
    """Bad input from the command line; printed as one line."""


def out_folder(args):
    """The output folder, created if missing; None with --no-figures.

    A path through ``..`` is resolved first, so ``sub/../out`` creates
    ``out`` and never an empty ``sub``.
    """
    if args.no_figures:
        return None
    folder = Path(args.out)
    if ".." in folder.parts:
        try:
            folder = folder.resolve()
        except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
            raise UsageError(f"--out {args.out!r} cannot be resolved: {error}.") from None
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {args.out!r} is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {args.out!r} cannot be created: {error.strerror}.") from None
    return folder


def check_batch_size(args, rows, what):
    if args.batch_size is not None and args.batch_size > rows:
        raise UsageError(f"--batch-size {args.batch_size} is larger than {what} ({rows}); "
                         f"pass at most {rows}.")
