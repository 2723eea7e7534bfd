"""The README's tour runs as written: the ```python block after `<!-- tour -->`."""

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_blocks():
    return re.findall(r"<!-- tour -->\n```python\n(.*?)```", README.read_text(), re.S)


def test_the_tour_runs(capsys):
    blocks = tour_blocks()
    assert blocks
    namespace = {}
    # the README's code is a user's: no strict promotion there
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"validation accuracy ([\d.]+)", printed).group(1))
    assert accuracy >= 0.97
    assert 0.05 < float(namespace["sweep"].lrs[namespace["sweep"].best]) < 1.0


def test_the_own_model_tour_trains(capsys):
    """The "Your own model" block alone: an equinox MLP, a dropout ensemble
    and a BatchNorm net each train."""
    import equinox as eqx
    (block,) = [b for b in tour_blocks() if "eqx.nn.MLP" in b]
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(block, str(README), "exec"), namespace)
    fitted, trained = namespace["fitted"], namespace["trained"]
    assert isinstance(fitted.params, eqx.nn.MLP)
    assert float(fitted.losses[-1]) < 0.05 * float(fitted.losses[0])
    assert float(trained.losses[-1]) < 0.2 * float(trained.losses[0])
    assert type(trained.state) is type(namespace["stats"])
    assert "4 seeds, last losses" in capsys.readouterr().out


def test_the_ragged_epochs_tour_replays_its_schedule():
    """The drop_last block: the keyed run and its schedule replayed with dict
    data are the same steps, so the same bits."""
    (block,) = [b for b in tour_blocks() if "drop_last=False" in b]
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(block, str(README), "exec"), namespace)
    rows, ragged, replayed = namespace["rows"], namespace["ragged"], namespace["replayed"]
    assert rows[100].tolist()[3:] == [-1] * 7 and min(rows[100].tolist()[:3]) >= 0
    assert (ragged.params == replayed.params).all()
    assert float(ragged.losses[-1]) < 1e-3 < float(ragged.losses[0])


def test_the_step_7_tour_stops_as_it_says(capsys):
    """The stop-rule block: it stops where its comment says, keeping the best epoch."""
    import numpy as np

    (block,) = [b for b in tour_blocks() if "monitor=" in b]
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    said = re.search(r"# (stopped after .*)\n# (\[.*\])", block)
    assert f"{said.group(1)} {said.group(2)}" in printed.replace("\n", " ")
    result, digits = namespace["result"], namespace["digits"]
    kept = namespace["valid_accuracy"](result.params, digits.valid_x, digits.valid_y)
    assert float(kept["accuracy"]) == float(np.nanmax(result.evals["accuracy"]))
