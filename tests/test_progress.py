"""The progress bar: on a terminal or when asked, moved between compiled chunks."""

import io

import jax
import jax.numpy as jnp

import functional_sgd as fsgd
from functional_sgd.app._progress import chunk_size_for, progress_bar, wants_progress
from helpers import assert_trees_close

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_on_a_terminal_or_when_asked():
    assert wants_progress(None, io.StringIO()) is False
    assert wants_progress(None, Terminal()) is True
    assert wants_progress(False, Terminal()) is False
    assert wants_progress(True, io.StringIO()) is True


def test_progress_bar_advances_between_chunks_and_changes_no_bits(capsys):
    steps = 2500
    assert chunk_size_for(steps) == 1000  # 3 chunks: 1000, 1000, 500 (two programs)
    seen = []
    with progress_bar(steps, enabled=True, desc="test") as bar:
        on_chunk = bar["on_chunk"]
        bar = {**bar, "on_chunk": lambda chunk: seen.append(int(chunk.step)) or on_chunk(chunk)}
        chunked = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=steps,
                           run=fsgd.Run(**bar))
    assert seen == [1000, 2000, 2500]
    assert "/2500" in capsys.readouterr().err  # tqdm drew on stderr
    whole = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=steps)
    assert_trees_close(chunked.params, whole.params)
    with progress_bar(steps, enabled=False, desc="off") as bar:
        assert bar == {}  # one compiled call


def test_progress_bar_shows_the_latest_evaluation_and_never_stops_the_run(capsys):
    mse = lambda a, x, y: {"valid_mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
    with progress_bar(2500, enabled=True, desc="test") as bar:
        result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=2500, evaluation=fsgd.Evaluation(mse, (X, Y), every=500),
                          run=fsgd.Run(**bar))
    assert int(result.steps_run) == 2500  # tqdm's update returns True when it redraws
    assert "valid_mse=" in capsys.readouterr().err


def test_chunks_of_whole_evaluation_periods_compile_as_few_programs_as_plain_chunks():
    """Chunks cut across evaluation periods start at a new place in a period
    each, and each place is a program of its own: a bar's chunks are whole
    periods, so a run compiles its chunk once (and its shorter last one)."""
    from helpers import count_compilations

    mse = lambda a, x, y: {"valid_mse": fsgd.linear_mse(a, x, y)}  # noqa: E731
    steps, every = 12_345, 1_234
    size = chunk_size_for(steps, every)
    assert size % every == 0 and size >= chunk_size_for(steps)
    with progress_bar(steps, enabled=True, desc="test", multiple=every) as bar, \
            count_compilations() as compiled:
        chunked = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.01, steps=steps,
                           evaluation=fsgd.Evaluation(mse, (X, Y), every=every),
                           run=fsgd.Run(**bar))
    assert compiled[0] <= 3  # the whole chunk, the last one, and a host-side join at most
    whole = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.01, steps=steps, evaluation=fsgd.Evaluation(mse, (X, Y), every=every))
    assert_trees_close(chunked.params, whole.params)
    assert_trees_close(chunked.evals, whole.evals)


def test_progress_over_figures_moves_once_per_figure(capsys):
    from functional_sgd.app._progress import progress_over

    drawn = [draw() for draw in progress_over([lambda: "a.png", lambda: "b.png"], enabled=True,
                                              desc="figures", unit="figure")]
    assert drawn == ["a.png", "b.png"]
    assert "figures" in capsys.readouterr().err  # tqdm drew on stderr
    items = [lambda: None]
    assert progress_over(items, enabled=False, desc="figures", unit="figure") is items
