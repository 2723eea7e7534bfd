"""The lesson's pictures: PNG figures and the GIF of the line as it trains.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot, so no global
figure state and no GUI backend); matplotlib is imported only here, when a
figure is drawn.
"""

import jax
import numpy as np

from functional_sgd.lesson import LEARNING_RATES, parabola

from ._curves import MAX_POINTS, bin_curve

COLORS = {"batch": "tab:blue", "mini-batch": "tab:orange", "stochastic": "tab:green"}
RATE_COLORS = {"too low": "tab:gray", "good": "tab:green", "bouncing": "tab:orange",
               "too high": "tab:red"}


def _figure(width, height, layout="constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def _save(figure, path):
    figure.savefig(path, dpi=100)
    return path


def _line_ends(x):
    xs = np.array([np.min(x[:, 0]), np.max(x[:, 0])])
    return xs, np.stack([xs, np.ones_like(xs)], axis=1)


def plot_fit(path, x, y, start, fitted):
    """The data, the initial guess and the line each mode fitted."""
    x, y = np.asarray(x), np.asarray(y)
    xs, ends = _line_ends(x)
    figure = _figure(6, 4)
    ax = figure.add_subplot()
    ax.scatter(x[:, 0], y, s=12, color="black", alpha=0.6, label="data")
    ax.plot(xs, ends @ np.asarray(start), "--", color="gray",
            label=f"initial guess a = ({start[0]:.2f}, {start[1]:.2f})")
    for name, params in fitted.items():
        a = np.asarray(params)
        ax.plot(xs, ends @ a, color=COLORS[name], label=f"{name}: a = ({a[0]:.2f}, {a[1]:.2f})")
    ax.set(xlabel="x", ylabel="y", title="y = 3x + 2 + U(0, 1): the fitted lines")
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_losses(path, losses, held_out=None):
    """Loss per step of every mode on one log-scale plot; with ``held_out``
    (``{name: (steps, losses)}``), each mode's held-out loss dashed beside it,
    in its colour. At step ``t`` both are losses of the params after ``t``
    updates: the step's batch (before update ``t``), and the held-out rows.

    A run longer than :data:`~._curves.MAX_POINTS` steps is drawn binned
    (see :func:`~._curves.bin_curve`) on a log scale of steps: each bin's
    mean loss, and a band from its smallest loss to its largest.
    """
    curves = {name: bin_curve(values) for name, values in losses.items()}
    binned = any(curve.binned for curve in curves.values())
    figure = _figure(6, 4)
    ax = figure.add_subplot()
    for name, curve in curves.items():
        label = name if not held_out else f"{name}: the step's batch"
        if binned:
            label += ", mean per bin"
            ax.fill_between(curve.steps, curve.low, curve.high, color=COLORS[name], alpha=0.15,
                            lw=0)
        ax.plot(curve.steps, curve.mean, color=COLORS[name], label=label, lw=1)
        if held_out:
            steps, held = held_out[name]
            held_curve = bin_curve(held, steps=steps)
            ax.plot(held_curve.steps, held_curve.mean, "--", color=COLORS[name], lw=1.5,
                    label=f"{name}: held-out rows ({len(steps) - 1} evaluations)")
    ylabel = "loss of the step's batch (before update)" if not held_out else \
        "loss after t updates"
    title = ("Batch, mini-batch and stochastic descent" if not held_out
             else "Training loss (solid) and held-out loss (dashed)")
    if binned:  # a log scale of steps that still has step 0
        ax.set_xscale("symlog", linthresh=1, linscale=0.6)
        ax.set_xlim(0, None)
        title += f"\n{MAX_POINTS} log-spaced bins: the mean, a band from min to max"
    ax.set(yscale="log", xlabel="step", ylabel=ylabel, title=title)
    # a fixed place: "best" searches every point, and the losses fall from the top left
    ax.legend(fontsize=8 if held_out or binned else None,
              loc="lower left" if binned else "upper right")
    return _save(figure, path)


def plot_learning_rates(path, runs, x, y, shown_steps=12, held_out=None):
    """The learning-rate lesson: one column per rate. Top: the path of
    ``x`` on ``f(x) = x**2``; middle: the path of ``a`` over the line's loss
    contours; bottom: the line's loss per step, with the divergence step,
    and with ``held_out`` (``{label: (steps, losses)}``) its held-out loss dashed."""
    x, y = np.asarray(x), np.asarray(y)
    figure = _figure(15, 10)
    axes = figure.subplots(3, len(runs))
    for column, (label, (on_parabola, on_line)) in enumerate(runs.items()):
        color = RATE_COLORS.get(label, "black")
        lr = LEARNING_RATES.get(label, "?")
        path_x = np.asarray(on_parabola.trajectory)[:shown_steps + 1]
        shown = path_x[np.isfinite(path_x)]
        reach = max(np.max(np.abs(shown)), 3.2)
        grid = np.linspace(-reach, reach, 200)
        ax = axes[0, column]
        ax.plot(grid, grid ** 2, color="black", lw=1)
        ax.plot(shown, shown ** 2, "o-", color=color, ms=4, lw=1)
        ax.set(title=f"{label}: lr = {lr}\nf(x) = x², first {shown_steps} steps",
               xlabel="x", ylabel="f(x)")
        _parabola_note(ax, on_parabola)

        ax = axes[1, column]
        _loss_contours(ax, x, y)
        path_a = np.asarray(on_line.trajectory)[:40]
        path_a = path_a[np.isfinite(path_a).all(axis=1)]
        ax.plot(path_a[:, 0], path_a[:, 1], "o-", color=color, ms=3, lw=1)
        ax.set(xlim=(-0.5, 4.5), ylim=(0.0, 4.0), xlabel="a[0] (slope)",
               ylabel="a[1] (intercept)", title="the line: a over 40 steps")

        ax = axes[2, column]
        losses = np.asarray(on_line.losses)
        ax.plot(np.where(np.isfinite(losses), losses, np.nan), color=color,
                label="training rows")
        at = int(on_line.diverged_at)
        if held_out is not None:
            steps, held = held_out[label]
            ax.plot(steps, np.where(np.isfinite(held), held, np.nan), "--", color=color,
                    label="held-out rows")
            # clear of the curve: a falling loss leaves the top right empty, a rising one
            # the top left (its bottom right holds the divergence label)
            ax.legend(fontsize=8, loc="upper left" if at >= 0 else "upper right")
        ax.set(yscale="log", xlabel="step", ylabel="loss", title="the line: loss per step")
        if at >= 0:
            # A diverging loss rises from the bottom left to the top right (past the
            # vertical line, which marks where it grew 1e15-fold): the bottom right is clear.
            ax.axvline(at, color="red", ls="--")
            ax.text(0.96, 0.05, f"diverged at step {at}\n(vertical line)", color="red",
                    transform=ax.transAxes, ha="right", va="bottom")
    return _save(figure, path)


def _parabola_note(ax, result):
    at = int(result.diverged_at)
    note = (f"diverges: f grew 1e15-fold by step {at}" if at >= 0
            else f"after {result.losses.shape[0]} steps: x = {float(result.params):.3g}")
    ax.text(0.5, 0.9, note, transform=ax.transAxes, ha="center", fontsize=9,
            color="red" if at >= 0 else "black")


def _loss_contours(ax, x, y):
    a0, a1 = np.meshgrid(np.linspace(-0.5, 4.5, 120), np.linspace(0.0, 4.0, 120))
    grid = np.stack([a0.ravel(), a1.ravel()])
    loss = ((x @ grid - y[:, None]) ** 2).mean(axis=0).reshape(a0.shape)
    ax.contour(a0, a1, loss, levels=np.geomspace(loss.min() * 1.05, loss.max(), 12),
               colors="lightgray", linewidths=0.8)


def plot_gradient(path, slope_at=(-1.5, 3.0), lr=0.1):
    """``f(x) = x**2`` with its slope (``jax.grad``) drawn at a few points and
    the step ``-lr * slope`` that gradient descent takes from each."""
    figure = _figure(6, 4)
    ax = figure.add_subplot()
    grid = np.linspace(-4, 4, 200)
    ax.plot(grid, grid ** 2, color="black", label="f(x) = x²")
    for point in slope_at:
        value, slope = (float(v) for v in jax.value_and_grad(parabola)(float(point)))
        near = np.linspace(point - 1.2, point + 1.2, 2)
        ax.plot(near, value + slope * (near - point), color="tab:blue")
        ax.plot([point], [value], "o", color="tab:blue")
        ax.annotate(f"f'({point:g}) = {slope:g}", (point, value), textcoords="offset points",
                    xytext=(-75 if point > 0 else 10, 14))
        step = -lr * slope
        ax.annotate("", (point + step, value), (point, value),
                    arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.plot([], [], color="tab:red", label=f"step -lr·f'(x), lr = {lr}")
    ax.plot([], [], color="tab:blue", label="slope (jax.grad)")
    ax.set(xlabel="x", ylabel="f(x)", title="The gradient is the slope; the step goes downhill")
    ax.legend(loc="upper center")
    return _save(figure, path)


def animate_fit(path, data, trajectory, losses, *, descent, frames=50, fps=10):
    """A GIF of the line moving as it trains on ``data`` (``(x, y)``), one frame per recorded step
    (``fit(..., run=Run(record_params=True)).trajectory``), at most ``frames`` frames;
    its title names the ``descent`` it shows (``"batch"``, ...)."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    x, y = map(np.asarray, data)
    trajectory, losses = np.asarray(trajectory), np.asarray(losses)
    steps = trajectory.shape[0] - 1
    shown = np.unique(np.linspace(0, steps, min(frames, steps + 1)).round().astype(int))
    xs, ends = _line_ends(x)
    figure = _figure(4.5, 3.2, layout=None)  # a fixed layout: constrained layout per frame is slow
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.83)
    figure.suptitle(f"{descent} descent", fontsize=11, fontweight="bold")
    ax = figure.add_subplot()
    ax.scatter(x[:, 0], y, s=8, color="black", alpha=0.5)
    (line,) = ax.plot(xs, ends @ trajectory[0], color="tab:blue", lw=2)
    ax.set(xlabel="x", ylabel="y", ylim=(min(y.min(), 0) - 0.5, y.max() + 0.5))
    title = ax.set_title("", fontsize=10)

    def draw(t):
        line.set_ydata(ends @ trajectory[t])
        loss = f"loss {losses[t]:.3f}" if t < steps else "done"
        title.set_text(f"step {t}: a = ({trajectory[t][0]:.2f}, {trajectory[t][1]:.2f}), {loss}")
        return line, title

    animation = FuncAnimation(figure, draw, frames=shown, blit=False)
    animation.save(path, writer=PillowWriter(fps=fps), dpi=80)
    return path


def plot_lr_sweep(path, sweep, held_out=None):
    """Final loss against learning rate, marking the best rate and the edge
    of divergence (rates that diverged are drawn as crosses on the top edge).
    ``held_out``: each rate's loss on held-out rows after its last step,
    drawn dashed (where finite and on the scale), its best rate marked."""
    lrs, final = np.asarray(sweep.lrs), np.asarray(sweep.final_loss)
    best, edge = int(sweep.best), int(sweep.edge)
    # The view ends at 10x the starting loss: runs that ended above it blew up,
    # and drawing 1e33 on the same axis would flatten every other point.
    start = np.asarray(sweep.losses)[:, 0]
    top = 10 * np.max(start[np.isfinite(start)], initial=1.0)
    shown = np.isfinite(final) & (final <= top)
    blew_up = np.isfinite(final) & (final > top)
    figure = _figure(6.5, 4)
    ax = figure.add_subplot()
    ax.plot(lrs[shown], final[shown], "o-", ms=3, color="tab:blue", label="final loss")
    if blew_up.any():
        ax.plot(lrs[blew_up], np.full(blew_up.sum(), top), "^", color="tab:orange",
                label=f"ended above {top:.3g} (off the scale)")
    if (~np.isfinite(final)).any():
        ax.plot(lrs[~np.isfinite(final)], np.full((~np.isfinite(final)).sum(), top), "x",
                color="tab:red", label="diverged (loss not finite)")
    if held_out is not None:
        held_out = np.asarray(held_out)
        on_scale = np.isfinite(held_out) & (held_out <= top)
        ax.plot(lrs[on_scale], held_out[on_scale], "s--", ms=3, color="tab:purple",
                label="held-out loss")
        if on_scale.any():
            at = int(np.flatnonzero(on_scale)[np.argmin(held_out[on_scale])])
            ax.plot([lrs[at]], [held_out[at]], "*", ms=13, color="tab:purple", mec="white",
                    label=f"best on held-out rows: lr = {lrs[at]:.3g} "
                          f"(loss {held_out[at]:.3g})")
    if best >= 0:
        ax.plot([lrs[best]], [final[best]], "*", ms=16, color="tab:green",
                label=f"best lr = {lrs[best]:.3g} (loss {final[best]:.3g})")
    if edge >= 0:
        ax.axvspan(lrs[edge], lrs[-1], color="tab:red", alpha=0.1)
        ax.axvline(lrs[edge], color="tab:red", ls="--",
                   label=f"edge of divergence: lr = {lrs[edge]:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylim=(None, top * 1.5),
           ylabel=f"loss after {sweep.losses.shape[1]} steps",
           title=f"Learning-rate sweep: {len(lrs)} runs in one compiled call")
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_digit_weights(path, params, digits):
    """The classifier's weights as images: the average 3 and 7 of the training
    set, then the pixels that vote for a 3 (``w > 0``) and for a 7 (``w < 0``)."""
    w = np.asarray(params[0]).reshape(digits.image_shape)
    train_x, train_y = np.asarray(digits.train_x), np.asarray(digits.train_y)
    mean = lambda target: train_x[train_y == target].mean(axis=0).reshape(digits.image_shape)
    figure = _figure(10, 3)
    axes = figure.subplots(1, 4)
    panels = [("average 3", mean(1.0), "gray_r"), ("average 7", mean(0.0), "gray_r"),
              ("weights for 3 (w > 0)", np.maximum(w, 0), "Reds"),
              ("weights for 7 (w < 0)", np.maximum(-w, 0), "Blues")]
    for ax, (title, image, cmap) in zip(axes, panels):
        shown = ax.imshow(image, cmap=cmap, vmin=0)
        ax.set(title=title, xticks=[], yticks=[])
        figure.colorbar(shown, ax=ax, shrink=0.8)
    figure.suptitle(f"Linear classifier, 3 vs 7 ({digits.source}): "
                    f"score = (x * w).sum() + b, b = {float(params[1]):.2f}")
    return _save(figure, path)


def plot_digit_curves(path, reports, *, patience, best_epoch, epochs):
    """Training loss and validation accuracy per epoch, the best epoch (whose
    weights were kept) marked, and where the stop rule ended the run."""
    epoch = np.array([r.epoch for r in reports])
    figure = _figure(6.5, 4)
    loss_ax = figure.add_subplot()
    accuracy_ax = loss_ax.twinx()
    loss_ax.plot(epoch, [r.train_loss for r in reports], "o-", ms=3, color="tab:blue",
                 label="training loss (mean over the epoch)")
    accuracy = np.array([r.valid_accuracy for r in reports])
    accuracy_ax.plot(epoch, accuracy, "s-", ms=3, color="tab:orange",
                     label="validation accuracy")
    accuracy_ax.plot([best_epoch], [accuracy[best_epoch - 1]], "*", ms=16, color="tab:green",
                     label=f"best: epoch {best_epoch}, weights kept")
    stopped = len(reports) < epochs
    if stopped:
        accuracy_ax.axvline(epoch[-1], color="tab:red", ls="--",
                            label=f"stopped: no better accuracy for {patience} epochs")
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    accuracy_ax.set(ylabel="validation accuracy")
    accuracy_ax.margins(y=0.15)
    loss_ax.tick_params(axis="y", colors="tab:blue")
    accuracy_ax.tick_params(axis="y", colors="tab:orange")
    lines = loss_ax.get_legend_handles_labels()
    more = accuracy_ax.get_legend_handles_labels()
    loss_ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    loss_ax.set_title("3 vs 7: keep training until the validation accuracy stops improving"
                      if stopped else f"3 vs 7: {len(reports)} epochs")
    return _save(figure, path)
