"""Long loss curves, binned so a figure draws them in bounded time.

A million steps drawn one point each is a solid block of ink and takes
minutes to draw. :func:`bin_curve` cuts a curve into at most ``max_points``
bins, spaced evenly on a log scale of steps (a loss falls fast early and
slowly later, so a log axis shows both), and keeps each bin's mean, minimum
and maximum. The first steps and the last one are bins of a single step,
so the curve starts and ends at its exact values.
"""

from typing import NamedTuple

import numpy as np

MAX_POINTS = 1000
"""Points of a binned curve: enough for a smooth line at any figure width."""


class Curve(NamedTuple):
    """A curve as drawn: per bin, its mean step, mean value and the range of values.

    Non-finite values (a run that diverged) count in no bin; a bin that holds
    only such values is NaN, which a figure leaves out.
    """

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def binned(self):
        """Whether a point stands for more than one step somewhere."""
        return not np.array_equal(self.low, self.high, equal_nan=True)


def bin_curve(values, *, steps=None, max_points=MAX_POINTS):
    """Bins ``values`` (at the increasing ``steps``; default ``0, 1, 2, ...``)
    into at most ``max_points`` bins, evenly spaced on a log scale of steps;
    a curve of ``max_points`` values or fewer is returned as it is.

    One pass over the values per statistic, in their own dtype (sums in
    float64): 3e7 losses take about a second.

    >>> curve = bin_curve(np.arange(10.0), max_points=4)
    >>> curve.steps.tolist(), curve.mean.tolist(), curve.low.tolist(), curve.high.tolist()
    ([0.0, 1.5, 5.5, 9.0], [0.0, 1.5, 5.5, 9.0], [0.0, 1.0, 3.0, 9.0], [0.0, 2.0, 8.0, 9.0])
    """
    values = np.asarray(values)
    steps = None if steps is None else np.asarray(steps, np.float64)
    if values.ndim != 1 or (steps is not None and steps.shape != values.shape):
        raise ValueError(f"bin_curve: values must be 1-D, and steps of their length; got "
                         f"shapes {values.shape} and {None if steps is None else steps.shape}.")
    if max_points < 3:
        raise ValueError(f"bin_curve: max_points must be at least 3 (the first step, a bin "
                         f"and the last step); got {max_points}.")
    values = values.astype(np.result_type(values.dtype, np.float32), copy=False)
    if values.size <= max_points:
        shown = np.where(np.isfinite(values), values, np.nan).astype(np.float64)
        at = np.arange(values.size, dtype=np.float64) if steps is None else steps
        return Curve(at, shown, shown, shown)
    # bin edges on a log scale of steps past the first; the last step a bin of its own
    first, last = (0, values.size - 1) if steps is None else (steps[0], steps[-1])
    edges = first + np.geomspace(1, last - first, max_points - 1)[:-1]
    inner = (np.ceil(edges).astype(np.int64) if steps is None
             else np.searchsorted(steps, edges))
    starts = np.unique(np.concatenate([[0], inner, [values.size - 1]]))
    sizes = np.diff(np.append(starts, values.size))
    finite = np.isfinite(values)
    everywhere = finite.all()
    count = sizes if everywhere else np.add.reduceat(finite, starts)
    total = np.add.reduceat(values if everywhere else np.where(finite, values, 0), starts,
                            dtype=np.float64)
    low = np.minimum.reduceat(values if everywhere else np.where(finite, values, np.inf),
                              starts).astype(np.float64)
    high = np.maximum.reduceat(values if everywhere else np.where(finite, values, -np.inf),
                               starts).astype(np.float64)
    empty = count == 0
    with np.errstate(invalid="ignore", divide="ignore"):  # bins of only non-finite values
        mean = total / count
    mean[empty] = low[empty] = high[empty] = np.nan
    middle = (starts + (sizes - 1) / 2 if steps is None  # the mean of steps a, ..., b
              else np.add.reduceat(steps, starts) / sizes)
    return Curve(middle.astype(np.float64), mean, low, high)
