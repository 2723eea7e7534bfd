"""Will a run fit in memory? An estimate made before anything is allocated,
so ``--n 1000000000`` is one line naming ``--n``, not an allocation failure.

The estimates are rough (bytes per row and per step of what a command keeps
and the temporaries of one pass over the data), and only refuse runs that
clearly do not fit.
"""

import math


def available_bytes():
    """Memory the system could give this process now, or ``None`` if unknown.

    Linux's ``MemAvailable`` (free memory plus caches it can drop), else the
    free pages ``os.sysconf`` reports.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


FLOAT = 4
"""Bytes of a float32 or int32."""


def lesson_needs(n, steps, batch_size, *, reference, holdout=None):
    """What ``lesson`` keeps: per row, ``x`` and ``y`` (3 floats) and about as
    much again three times over for a full-batch pass (``x`` as the matmuls
    read it, ``x @ a``, the residual); per step, each of the three modes'
    loss and params (1 + 2 floats). The torch check adds its copy of the
    data and the schedules it replays (``batch_size + 1`` indices a step).
    ``--holdout`` adds its share of rows (counted in each row of ``--n``)
    and at most one held-out loss a step per mode."""
    row, step = 4 * 3 * FLOAT, 3 * 3 * FLOAT
    if reference:
        row, step = row + 3 * FLOAT, step + (batch_size + 1) * FLOAT
    if holdout is not None:
        row, step = row + math.ceil(holdout * 4 * 3 * FLOAT), step + 3 * FLOAT
    return [("--n", n, row, "row"), ("--steps", steps, step, "step")]


def sweep_needs(n, steps, num, batch_size, *, holdout=None):
    """What ``lr-sweep`` keeps: ``x`` and ``y`` once, each rate's pass over the
    rows of a step (3 floats a row) and each rate's loss per step.
    ``--holdout`` adds its share of rows, kept once and passed over once per
    rate (counted in each row of ``--n``)."""
    held_out = 0 if holdout is None else math.ceil(holdout * 3 * FLOAT * (num + 1))
    per_rate = [("--n", n, 3 * FLOAT * (num + 1) + held_out, "row")] if batch_size is None else [
        ("--n", n, 3 * FLOAT + held_out, "row"),
        ("--batch-size", batch_size, 3 * FLOAT * num, "row")]
    return per_rate + [("--steps", steps, FLOAT * num, "step")]


def digits_needs(epochs, steps_per_epoch):
    """What ``digits`` keeps: a loss per step and a report per epoch (a few
    Python objects, ~160 bytes)."""
    return [("--epochs", epochs, 160 + FLOAT * steps_per_epoch, "epoch")]


def too_large(needs, available):
    """``None`` if ``needs`` fits in ``available`` bytes, else a message naming the
    option that takes most and the largest value of it that would fit.

    Args:
      needs: ``(option, value, bytes_each, unit)`` tuples; the estimate is the
        sum of ``value * bytes_each``.
      available: bytes, or ``None`` (unknown: nothing is refused).

    >>> needs = [("--n", 10 ** 9, 48, "row"), ("--steps", 100, 36, "step")]
    >>> too_large(needs, 10 ** 12) is None
    True
    >>> print(too_large(needs, 8 * 10 ** 9))
    --n 1000000000 needs about 48.0 GB of memory (48 bytes a row); 8.0 GB is available:
    pass --n at most 166666591.
    """
    total = sum(value * each for _, value, each, _ in needs)
    if available is None or total <= available:
        return None
    option, value, each, unit = max(needs, key=lambda need: need[1] * need[2])
    room = available - (total - value * each)
    fix = (f"pass {option} at most {room // each}" if room >= each
           else f"lower {option} and the options that go with it")
    article = "an" if unit[0] in "aeiou" else "a"
    return (f"{option} {value} needs about {_gigabytes(total)} of memory ({each} bytes "
            f"{article} {unit}); {_gigabytes(available)} is available: {fix}.")


def _gigabytes(size):
    return f"{size / 1e9:.1f} GB"
