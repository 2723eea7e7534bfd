"""The command line's figures: long curves drawn binned, labels that stay clear
of their lines, the GIF's title. Figures are caught before they are saved
(``_plots._save``) and their artists read back."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.path import Path

from functional_sgd.app import _plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, in order."""
    caught = []
    monkeypatch.setattr(_plots, "_save", lambda figure, path: caught.append(figure) or path)
    return caught


def lesson_like_losses(steps, seed=0):
    """Losses shaped like the lesson's: a fast fall to a floor, noisier the smaller the batch."""
    t = np.arange(steps)
    rng = np.random.default_rng(seed)
    floor = 5 * np.exp(-t / 30) + 0.08
    return {"batch": floor.astype(np.float32),
            "mini-batch": (floor * rng.uniform(0.3, 1.7, steps)).astype(np.float32),
            "stochastic": (floor * rng.exponential(1.0, steps)).astype(np.float32)}


def line_of(ax, mode):
    """The line of a mode's training losses (not its held-out one)."""
    (line,) = [line for line in ax.lines if line.get_label().split(":")[0].split(",")[0] == mode
               and "held-out" not in line.get_label()]
    return line


@pytest.mark.parametrize("steps", [1_000_000, 10_000_000])
def test_a_long_loss_curve_is_drawn_with_few_points_from_its_first_value_to_its_last(
        steps, figures, tmp_path):
    """A million points drew a solid block (and 3e7 took minutes): now each
    mode is at most MAX_POINTS bins on a log scale of steps, whose line
    still starts at the first loss and ends at the last."""
    from functional_sgd.app._curves import MAX_POINTS

    losses = lesson_like_losses(steps)
    t = np.arange(0, steps + 1, steps // 10)
    held_out = {name: (t, 5 * np.exp(-t / 30) + 0.09) for name in losses}
    _plots.plot_losses(tmp_path / "losses.png", losses)
    _plots.plot_losses(tmp_path / "held.png", losses, held_out=held_out)
    for figure in figures:
        (ax,) = figure.axes
        assert ax.get_xscale() == "symlog"  # steps 0 to 1e7: the fall and the floor both show
        for name, values in losses.items():
            xy = line_of(ax, name).get_xydata()
            assert len(xy) <= MAX_POINTS
            assert tuple(xy[0]) == (0, values[0]) and tuple(xy[-1]) == (steps - 1, values[-1])
            assert np.all(np.diff(xy[:, 0]) > 0)
        # the stochastic band spans each bin's smallest to largest loss
        band = np.concatenate([path.vertices for collection in ax.collections
                               for path in collection.get_paths()])
        finite = band[np.isfinite(band).all(axis=1)]
        assert finite[:, 1].min() == pytest.approx(losses["stochastic"].min(), rel=1e-6)
        assert finite[:, 1].max() == pytest.approx(losses["stochastic"].max(), rel=1e-6)
        legend = ax.get_legend()
        assert legend is not None and legend.get_texts()


def test_a_short_loss_curve_is_drawn_step_by_step(figures, tmp_path):
    losses = lesson_like_losses(100)
    _plots.plot_losses(tmp_path / "losses.png", losses)
    (ax,) = figures[0].axes
    assert ax.get_xscale() == "linear"
    for name, values in losses.items():
        np.testing.assert_array_equal(line_of(ax, name).get_ydata(), values)


def test_bin_curve_keeps_each_bins_mean_and_range_and_skips_non_finite_values():
    from functional_sgd.app._curves import bin_curve

    rng = np.random.default_rng(1)
    values = rng.exponential(1.0, 5000)
    values[[7, 1234, 4000]] = [np.inf, np.nan, -np.inf]
    values[2500:4200] = np.nan  # a bin or more with nothing finite
    steps = np.arange(5000)
    curve = bin_curve(values, steps=steps, max_points=50)
    assert len(curve.steps) <= 50 and curve.binned
    # the bins, read from the same steps with each step as its value: they tile the steps
    bins = bin_curve(steps.astype(float), max_points=50)  # the default steps
    first, last = bins.low.astype(int), bins.high.astype(int)
    assert first[0] == 0 and last[-1] == 4999 and np.array_equal(first[1:], last[:-1] + 1)
    np.testing.assert_array_equal(bins.steps, curve.steps)
    for i in range(len(curve.steps)):
        inside = values[first[i]:last[i] + 1]
        inside = inside[np.isfinite(inside)]
        if inside.size == 0:
            assert np.isnan(curve.mean[i]) and np.isnan(curve.low[i]), i
            continue
        assert curve.mean[i] == pytest.approx(inside.mean(), rel=1e-12)
        assert (curve.low[i], curve.high[i]) == (inside.min(), inside.max())
    assert np.isnan(curve.mean).any()  # the bins within 2500-4200
    assert (curve.steps[0], curve.mean[0]) == (0, values[0])
    assert (curve.steps[-1], curve.mean[-1]) == (4999, values[-1])


def test_bin_curve_refuses_what_it_cannot_bin():
    from functional_sgd.app._curves import bin_curve

    with pytest.raises(ValueError, match=r"steps of their length; got shapes \(4,\) and \(3,\)"):
        bin_curve(np.arange(4.0), steps=np.arange(3))
    with pytest.raises(ValueError, match=r"values must be 1-D.*got shapes \(2, 2\) and None"):
        bin_curve(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"max_points must be at least 3 \(.*\); got 2"):
        bin_curve(np.arange(3.0), max_points=2)


def test_the_divergence_label_stays_clear_of_the_loss_curve(figures, tmp_path):
    """'diverged at step 60' was drawn across the diverging run's loss line."""
    import jax
    import jax.numpy as jnp

    from functional_sgd.app._runs import learning_rate_runs
    from functional_sgd.lesson import LESSON_START, lesson_data

    x, y = lesson_data(jax.random.split(jax.random.key(0))[0])
    runs = learning_rate_runs(x, y, jnp.array(LESSON_START), steps=100)
    _plots.plot_learning_rates(tmp_path / "rates.png", runs, x, y)
    figure = figures[0]
    FigureCanvasAgg(figure).draw()
    labels = [text for ax in figure.axes for text in ax.texts if "diverged" in text.get_text()]
    assert labels
    for text in labels:
        ax = text.axes
        box = text.get_window_extent().expanded(1.05, 1.1)
        assert ax.get_window_extent().contains(box.x0, box.y0)
        assert ax.get_window_extent().contains(box.x1, box.y1)  # inside its panel
        for line in ax.lines:
            drawn = line.get_transform().transform(line.get_xydata())
            drawn = drawn[np.isfinite(drawn).all(axis=1)]
            assert not Path(drawn).intersects_bbox(box, filled=False), line.get_label()


def test_the_gif_names_the_descent_it_shows(monkeypatch, tmp_path):
    import matplotlib.animation

    made = []

    class Recording(matplotlib.animation.FuncAnimation):
        def __init__(self, figure, draw, frames=None, **kwargs):
            made.append((figure, draw, list(frames)))
            super().__init__(figure, draw, frames=frames, **kwargs)

    monkeypatch.setattr(matplotlib.animation, "FuncAnimation", Recording)
    x = np.stack([np.linspace(-1, 1, 20), np.ones(20)], axis=1)
    y = x @ np.array([3.0, 2.0])
    trajectory = np.linspace([0.5, 0.75], [3.0, 2.0], 11)
    _plots.animate_fit(tmp_path / "fit.gif", (x, y), trajectory, np.linspace(5, 0.1, 10),
                       descent="mini-batch")
    ((figure, draw, frames),) = made
    for frame in (frames[0], frames[-1]):
        draw(frame)
        texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
        assert any("mini-batch descent" in text for text in texts), texts
    assert (tmp_path / "fit.gif").stat().st_size > 1000
