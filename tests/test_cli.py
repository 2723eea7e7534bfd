"""The command line: what `lesson` prints and writes, and bad input."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from functional_sgd.app._cli import LESSON_FILES, SWEEP_FILES, main

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_lesson_prints_the_lesson_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "lesson_fit.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    status, text, err = run_main(capsys, "lesson", "--out", str(out), "--no-progress")
    assert status == 0, err

    # the loss every 10 steps, in each mode, as the lesson prints it
    for mode in ("batch", "mini-batch", "stochastic"):
        section = text.split(f"\n{mode} descent\n")[1]
        steps = re.findall(r"step\s+(\d+)\s+loss", section.split("fitted")[0])
        assert [int(s) for s in steps] == list(range(0, 100, 10))
    fitted = [tuple(map(float, a)) for a in re.findall(r"fitted a = \(([-\d.]+), ([-\d.]+)\)",
                                                       text)]
    assert len(fitted) == 3
    # the noise is U(0, 1): the best line is near (3, 2.5); 100 steps of lr 0.1 get close
    np.testing.assert_allclose(fitted, [(3.0, 2.5)] * 3, atol=0.2)
    assert len(re.findall(r"\[run [\d.]+ m?s, compile [\d.]+ m?s\]", text)) == 3

    # float32 agreement with the lesson's torch loop on the same batches
    agreement = re.search(r"batch ([\d.e+-]+), mini-batch ([\d.e+-]+), stochastic ([\d.e+-]+)",
                          text)
    assert agreement and max(map(float, agreement.groups())) < 1e-4
    assert "too high  lr = 1.5" in text and "line: diverged at step" in text

    assert re.search(r"Wrote to .*: lesson_fit.png, .*lesson_fit.gif  \(drawn in [\d.]+ s\)", text)
    for name in LESSON_FILES:
        assert (out / name).stat().st_size > 1000, name
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone
    with Image.open(out / "lesson_fit.png") as image:  # ours: overwritten
        assert image.format == "PNG" and image.size == (600, 400)
    with Image.open(out / "lesson_fit.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 50
    assert (out / "lesson_fit.gif").stat().st_size < 1_000_000
    assert sorted(p.name for p in out.iterdir()) == sorted([*LESSON_FILES, "notes.txt"])


def test_lesson_without_figures_writes_nothing(tmp_path, capsys):
    # the lesson's sizes, so the compiled loops of the test above are reused
    status, text, _ = run_main(capsys, "lesson", "--no-figures", "--no-reference",
                               "--out", str(tmp_path / "unused"))
    assert status == 0 and "Wrote" not in text and "torch reference" not in text
    assert not (tmp_path / "unused").exists()


def test_lesson_holdout_prints_and_draws_the_held_out_loss(tmp_path, capsys, monkeypatch):
    """--holdout: the training rows print as without it; beside them, the loss
    on held-out rows of the same line, which equals NumPy's MSE of the params
    the run recorded at that step on those rows."""
    from functional_sgd.app import _commands

    seen, fit_modes = {}, _commands.fit_modes

    def seeing_fit_modes(data, *args, **kwargs):
        seen.update(x=data[0], held_out=kwargs["held_out"], runs=fit_modes(data, *args, **kwargs))
        return seen["runs"]

    status, plain, err = run_main(capsys, "lesson", "--no-figures", "--no-reference")
    assert status == 0, err
    monkeypatch.setattr(_commands, "fit_modes", seeing_fit_modes)
    out = tmp_path / "figures"
    status, text, err = run_main(capsys, "lesson", "--holdout", "0.2", "--out", str(out),
                                 "--no-progress", "--no-reference")
    assert status == 0, err
    assert "Held out: 20 more rows of the same line" in text

    held_x, held_y = (np.asarray(a, np.float64) for a in seen["held_out"])
    assert held_x.shape == (20, 2) and (held_x[:, 1] == 1).all()
    noise = held_y - held_x @ np.array([3.0, 2.0])  # the lesson's line plus U(0, 1)
    assert (noise > -1e-5).all() and (noise < 1 + 1e-5).all()
    assert not np.isin(held_x[:, 0], np.asarray(seen["x"])[:, 0]).any()  # rows of their own

    training_rows = r"step\s+(\d+)\s+loss ([\d.]+)"
    fitted = r"fitted a = \(([-\d.]+), ([-\d.]+)\)"
    for mode in ("batch", "mini-batch", "stochastic"):
        section = text.split(f"\n{mode} descent\n")[1].split("\n\n")[0]
        before = plain.split(f"\n{mode} descent\n")[1].split("\n\n")[0]
        assert re.findall(training_rows, section) == re.findall(training_rows, before)
        assert re.findall(fitted, section) == re.findall(fitted, before)
        held = [(int(t), float(v)) for t, v in
                re.findall(r"step\s+(\d+)\s+loss [\d.]+\s+held-out ([\d.]+)", section)]
        assert [t for t, _ in held] == list(range(0, 100, 10))
        final = float(re.search(r"held-out loss ([\d.]+)  \[run", section).group(1))
        # the params after t updates, as the run recorded them, on the held-out rows in
        # float64; printed to 4 decimals (5e-5) from a float32 evaluation (~1e-7 here)
        trajectory = np.asarray(seen["runs"][mode].result.trajectory, np.float64)
        for t, value in held + [(100, final)]:
            expected = np.mean((held_x @ trajectory[t] - held_y) ** 2)
            assert abs(value - expected) <= 6e-5, (mode, t, value, expected)
    rates = text.split("Learning rates")[1]
    assert len(re.findall(r"line: loss [\d.e+-]+ -> [\d.e+-]+, held-out [\d.e+-]+", rates)) == 3
    # the line grows 1e15-fold by step 25 (diverged_at counts that, as well as inf)
    assert "line: diverged at step 25\n" in rates
    for name in ("lesson_losses.png", "learning_rates.png"):
        assert (out / name).stat().st_size > 1000, name


def test_lesson_without_torch_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "reference", None)  # `import reference` now fails
    status, text, _ = run_main(capsys, "lesson", "--no-figures")
    assert status == 0 and "torch reference: torch is not installed" in text
    assert "fitted a" in text


def test_agreement_prints_every_mode_and_dtype(capsys):
    pytest.importorskip("torch")
    status, text, err = run_main(capsys, "agreement", "--steps", "30")
    assert status == 0, err
    lines = text.splitlines()
    assert lines[0] == "functional_sgd.fit vs reference.fit, lesson data, 30 steps, lr=0.1, seed=0"
    assert lines[1].split() == ["dtype", "mode", "params", "rel", "params", "abs", "losses",
                                "rel", "losses", "abs"]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        (dtype, mode) for dtype in ("float64", "float32")
        for mode in ("batch", "mini-batch", "stochastic")]
    for dtype, _, params_rel, params_abs, losses_rel, losses_abs in rows:
        bound = 1e-12 if dtype == "float64" else 1e-5
        assert float(params_abs) <= bound and float(losses_abs) <= bound


def test_agreement_without_torch_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "reference", None)
    status, text, err = run_main(capsys, "agreement")
    assert status == 2 and text == ""
    assert err.count("\n") == 1 and "torch is not installed" in err, err


def test_lr_sweep_prints_best_and_edge_and_plots(tmp_path, capsys):
    out = tmp_path / "new" / "folder"  # created, parents too
    status, text, err = run_main(capsys, "lr-sweep", "--out", str(out))
    assert status == 0, err
    best = float(re.search(r"best: lr = ([\d.e+-]+)", text).group(1))
    edge = float(re.search(r"edge of divergence: lr = ([\d.e+-]+) diverged at step", text)
                 .group(1))
    # the line's curvature is about 2: rates above ~1 diverge, 0.1-0.9 converge
    assert 0.05 < best < 1.0 < edge < 3.0
    with Image.open(out / SWEEP_FILES[0]) as image:
        assert image.format == "PNG"


def test_lr_sweep_holdout_prints_each_rates_held_out_loss(tmp_path, capsys, monkeypatch):
    """--holdout: the training lines print as without it; beside them, each
    rate's loss on held-out rows after its last step, which equals that of
    full-batch descent by hand in NumPy float64 on those rows."""
    from functional_sgd.app import _commands

    seen, held_out_data = {}, _commands.held_out_data

    def seeing_held_out_data(key, rows):
        seen["held_out"] = held_out_data(key, rows)
        return seen["held_out"]

    status, plain, err = run_main(capsys, "lr-sweep", "--no-figures")
    assert status == 0, err
    monkeypatch.setattr(_commands, "held_out_data", seeing_held_out_data)
    out = tmp_path / "figures"
    status, text, err = run_main(capsys, "lr-sweep", "--holdout", "0.2", "--out", str(out))
    assert status == 0, err
    assert "Held out: 20 more rows of the same line" in text
    training = r"lr\s+([\d.e+-]+)\s+final loss ([\d.e+-]+)"
    assert re.findall(training, text) == re.findall(training, plain)
    assert re.search(r"best: lr = .*", text).group(0) == re.search(r"best: lr = .*",
                                                                   plain).group(0)

    # every rate by hand: a <- a - lr * 2/n x^T (x a - y) from (0.5, 0.75), float64
    import jax

    from functional_sgd.lesson import LESSON_START, lesson_data

    x, y = (np.asarray(a, np.float64) for a in lesson_data(
        jax.random.split(jax.random.key(0))[0], 100))
    held_x, held_y = (np.asarray(a, np.float64) for a in seen["held_out"])
    lrs = np.geomspace(1e-3, 3.0, 64)
    a = np.tile(np.array(LESSON_START, np.float64), (64, 1))
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(100):
            a = a - lrs[:, None] * 2 / len(y) * ((a @ x.T - y) @ x)
        by_hand = np.mean((a @ held_x.T - held_y) ** 2, axis=1)
    printed = re.findall(r"lr\s+([\d.e+-]+)\s+final loss [\w.e+-]+\s+held-out ([\w.e+-]+)",
                         text)
    assert len(printed) == 8
    for lr, value in printed:
        i = int(np.argmin(abs(lrs / float(lr) - 1)))
        if np.isfinite(by_hand[i]) and by_hand[i] < 1e30:
            # printed to 4 significant digits (5e-4) from a float32 run (~1e-5 here)
            assert float(value) == pytest.approx(by_hand[i], rel=1e-3), lr
        else:
            assert float(value) > 1e30 or value == "nan", lr
    best_lr, best = map(float, re.search(
        r"best on the held-out rows: lr = ([\d.e+-]+), held-out loss ([\d.e+-]+)", text).groups())
    finite = np.where(np.isfinite(by_hand), by_hand, np.inf)
    assert best == pytest.approx(finite.min(), rel=1e-3)
    # the held-out curve is flat to ~1e-4 past lr 0.07: any rate that close to the minimum
    assert finite[np.argmin(abs(lrs / best_lr - 1))] == pytest.approx(finite.min(), rel=1e-3)
    with Image.open(out / SWEEP_FILES[0]) as image:
        assert image.format == "PNG"


def test_lr_sweep_says_how_the_edge_diverged_when_no_step_did(capsys):
    """At 26 steps, lr 3's batch losses may all be finite and only its final loss on
    all the data overflow (a run's diverged_at also counts a loss grown 1e15-fold, which
    finds the edge at a lower rate first): the edge must never say "diverged at step -1"."""
    status, text, err = run_main(capsys, "lr-sweep", "--steps", "26", "--no-figures")
    assert status == 0, err
    edge = re.search(r"edge of divergence: .*", text).group(0)
    assert "step -1" not in edge
    assert re.fullmatch(r"edge of divergence: lr = [\d.]+ (diverged at step \d+|ended with a "
                        r"loss on all the data that is not finite, after 26 steps)", edge), edge


BAD_INPUT = [
    (["lesson", "--n", "0"], "argument --n: must be >= 1; got 0"),
    (["lesson", "--lr", "0"], "argument --lr: must be a finite number > 0; got 0"),
    (["lesson", "--lr", "-1"], "argument --lr: must be a finite number > 0; got -1"),
    (["lesson", "--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["lesson", "--lr", "fast"], "argument --lr: expected a number; got 'fast'"),
    (["lesson", "--steps", "2.5"], "argument --steps: expected a whole number"),
    (["lesson", "--batch-size", "101"], "--batch-size 101 is larger than --n (100)"),
    (["lesson", "--n", "5", "--batch-size", "6"], "--batch-size 6 is larger than --n (5)"),
    (["lesson", "--bogus"], "python -m functional_sgd lesson: error: unrecognized arguments: "
     "--bogus (python -m functional_sgd lesson --help lists its options)"),
    (["lesson", "--holdout", "0"], "argument --holdout: must be a finite number > 0; got 0"),
    (["lesson", "--holdout", "1.5"], "argument --holdout: must lie in (0, 1]; got 1.5"),
    (["lesson", "--holdout", "nan"], "argument --holdout: must be a finite number > 0"),
    (["lesson", "--holdout", "some"], "argument --holdout: expected a number; got 'some'"),
    (["lesson", "--n", "4", "--holdout", "0.1"],
     "--holdout 0.1 of --n 4 rows holds out no rows (it rounds to 0); pass --holdout at "
     "least 0.25"),
    (["teach"], "unknown command 'teach'; the commands are lesson, lr-sweep, digits, agreement"),
    (["lesso"], "unknown command 'lesso'; did you mean 'lesson'?"),
    (["lr-swep", "--steps", "5"], "unknown command 'lr-swep'; did you mean 'lr-sweep'?"),
    (["--steps", "5", "lesson"], "unrecognized arguments: --steps 5 lesson; options go after "
     "the command"),
    (["lesson", "--setps", "5"], "lesson: error: unrecognized arguments: --setps 5; did you "
     "mean --steps?"),
    (["digits", "--lr", "1", "extra"], "digits: error: unrecognized arguments: extra"),
    (["lr-sweep", "--lr-min", "2", "--lr-max", "1"], "--lr-min 2.0 must be below --lr-max 1.0"),
    (["lr-sweep", "--num", "1"], "argument --num: must be >= 2; got 1"),
    (["lr-sweep", "--holdout", "0"], "argument --holdout: must be a finite number > 0; got 0"),
    (["lr-sweep", "--n", "4", "--holdout", "0.1"],
     "--holdout 0.1 of --n 4 rows holds out no rows (it rounds to 0); pass --holdout at "
     "least 0.25"),
    (["digits", "--valid-fraction", "1.5"], "must lie between 0 and 1"),
    (["digits", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    (["digits", "--batch-size", "1000"], "--batch-size 1000 is larger than the training images"),
    (["digits", "--data", "/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    # bounds: a seed jax.random.key keeps whole, int32 counts, rates float32 holds
    (["lesson", "--seed", "9223372036854775808"],
     "argument --seed: must lie in [0, 4294967295]; got 9223372036854775808"),
    (["lr-sweep", "--seed", "4294967296"], "argument --seed: must lie in [0, 4294967295]"),
    (["lesson", "--steps", "3000000000", "--no-figures"],
     "argument --steps: must lie in [1, 2147483647]; got 3000000000"),
    (["lesson", "--n", "2147483648"], "argument --n: must lie in [1, 2147483647]"),
    (["lr-sweep", "--lr-max", "1e39"], "argument --lr-max: must lie in [1e-30, 1e+30]; got 1e39"),
    (["lr-sweep", "--lr-min", "1e-50"],
     "argument --lr-min: must lie in [1e-30, 1e+30]; got 1e-50"),
    (["lesson", "--lr", "1e39"], "argument --lr: must lie in [1e-30, 1e+30]; got 1e39"),
    (["digits", "--lr", "1e-50"], "argument --lr: must lie in [1e-30, 1e+30]; got 1e-50"),
    (["lr-sweep", "--num", "100000000"], "argument --num: must lie in [2, 10000]; got 100000000"),
    (["lr-sweep", "--lr-min", "1", "--lr-max", "1.00001", "--num", "1000"],
     "--num 1000 rates from --lr-min 1 to --lr-max 1.00001 are too close for float32 to tell "
     "apart; pass a smaller --num or a wider range"),
    (["digits", "--valid-fraction", "0.999"],
     "--valid-fraction 0.999 holds out all 362 images and leaves none for training; it must "
     "be at most 0.9986"),
    (["digits", "--epochs", "2000000000"],
     "--epochs 2000000000 of 9 steps each is more than 2147483647 steps; pass --epochs at "
     "most 238609294"),
    (["agreement", "--steps", "100001"], "argument --steps: must lie in [1, 100000]"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    status, text, err = run_main(capsys, *argv)
    assert status == 2
    assert text == ""
    assert err.count("\n") == 1 and err.startswith("python -m functional_sgd"), err
    assert message in err


TOO_LARGE = [
    (["lesson", "--n", "1000000000"], "--n 1000000000 needs about 60.0 GB of memory (60 bytes "
     "a row); 8.0 GB is available: pass --n at most 133333200"),
    (["lesson", "--steps", "2000000000"], "--steps 2000000000 needs about 72.0 GB of memory "
     "(36 bytes a step); 8.0 GB is available: pass --steps at most 222222088"),
    (["lesson", "--n", "100000000", "--holdout", "0.5"], "--n 100000000 needs about 8.4 GB of "
     "memory (84 bytes a row); 8.0 GB is available: pass --n at most 95237985"),
    (["lr-sweep", "--n", "100000000"], "--n 100000000 needs about 78.0 GB of memory (780 bytes "
     "a row); 8.0 GB is available: pass --n at most 10256377"),
    (["lr-sweep", "--steps", "100000000"], "--steps 100000000 needs about 25.6 GB of memory "),
    (["lr-sweep", "--n", "100000000", "--holdout", "0.5"], "--n 100000000 needs about 117.0 GB "
     "of memory (1170 bytes a row); 8.0 GB is available: pass --n at most 6837584"),
    (["digits", "--epochs", "200000000"], "--epochs 200000000 needs about 39.2 GB of memory "
     "(196 bytes an epoch); 8.0 GB is available: pass --epochs at most 40816326"),
]


@pytest.mark.parametrize("argv, message", TOO_LARGE, ids=[" ".join(a) for a, _ in TOO_LARGE])
def test_runs_that_cannot_fit_in_memory_are_refused_first(argv, message, tmp_path, monkeypatch,
                                                          capsys):
    from functional_sgd.app import _commands

    monkeypatch.setattr(_commands, "available_bytes", lambda: 8 * 10 ** 9)
    status, text, err = run_main(capsys, *argv, "--out", str(tmp_path / "never"))
    assert status == 2 and text == ""
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()  # refused before anything was created


def test_out_through_dot_dot_creates_only_the_folder_it_names(tmp_path, capsys):
    out = tmp_path / "sub" / ".." / "out2"
    status, text, err = run_main(capsys, "lr-sweep", "--steps", "5", "--num", "2", "--out",
                                 str(out))
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out2"]  # no empty sub/
    assert (tmp_path / "out2" / SWEEP_FILES[0]).stat().st_size > 1000
    assert f"Wrote to {tmp_path / 'out2'}/" in text


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep")
    status, _, err = run_main(capsys, "lesson", "--out", str(target))
    assert status == 2 and f"--out '{target}' is a file, not a folder" in err
    assert target.read_text() == "keep"


def test_help_explains_every_option(capsys):
    status, text, _ = run_main(capsys, "lesson", "--help")
    assert status == 0
    for option in ("--n", "--steps", "--lr", "--batch-size", "--seed", "--out", "--progress",
                   "--holdout"):
        assert option in text


def run_module(*argv):
    """`python -m functional_sgd` on this checkout, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "functional_sgd", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_module_exit_codes():
    bad = run_module("lesson", "--n", "0")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "python -m functional_sgd lesson: error: argument --n: must be >= 1; got 0"]
    assert run_module("--help").returncode == 0


MISSING_EXTRAS = [
    # (hidden module, argv, what the line must name)
    ("matplotlib", ["lesson"], ["matplotlib", 'pip install "functional-sgd[app]"',
                                "--no-figures"]),
    ("PIL", ["lesson"], ["Pillow", 'pip install "functional-sgd[app]"', "--no-figures"]),
    ("tqdm", ["lesson", "--progress", "--no-figures"],
     ["tqdm", 'pip install "functional-sgd[app]"', "--no-progress"]),
    ("matplotlib", ["lr-sweep"], ["matplotlib", 'pip install "functional-sgd[app]"']),
    ("sklearn", ["digits", "--no-figures"],
     ["scikit-learn", 'pip install "functional-sgd[app]"', "--data"]),
    ("PIL", ["digits", "--no-figures", "--data", "."], ["Pillow", "functional-sgd[app]"]),
    ("matplotlib", ["digits"], ["matplotlib", 'pip install "functional-sgd[app]"']),
    ("torch", ["agreement"], ["torch", 'pip install "functional-sgd[torch]"',
                              "--index-url https://download.pytorch.org/whl/cpu"]),
]


@pytest.mark.parametrize("hidden, argv, named", MISSING_EXTRAS,
                         ids=[f"{m}-{' '.join(a)}" for m, a, _ in MISSING_EXTRAS])
def test_a_missing_extra_is_one_line_before_anything_runs(hidden, argv, named, tmp_path,
                                                          monkeypatch, capsys):
    """Without the [app] extra a command used to train and then fail with a
    ModuleNotFoundError traceback; now it says what to install, before it starts."""
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` now fails
    monkeypatch.delitem(sys.modules, "reference", raising=False)  # imported again: needs torch
    out = [] if argv[0] == "agreement" else ["--out", str(tmp_path / "never")]
    status, text, err = run_main(capsys, *argv, *out)
    assert status == 2 and text == "", text  # nothing trained, nothing printed
    assert err.count("\n") == 1, err
    for name in named:
        assert name in err, (name, err)
    assert not (tmp_path / "never").exists()


def test_a_missing_extra_a_command_does_not_use_is_no_error(monkeypatch, capsys):
    for hidden in ("matplotlib", "PIL", "tqdm"):
        monkeypatch.setitem(sys.modules, hidden, None)
    status, text, err = run_main(capsys, "lr-sweep", "--no-figures", "--steps", "5",
                                 "--num", "2")
    assert status == 0, err
    assert "best: lr" in text


def test_no_command_lists_the_commands(capsys):
    status, text, err = run_main(capsys)
    assert status == 2 and text == ""
    assert "the following arguments are required" not in err
    lines = err.splitlines()
    assert lines[0] == "usage: python -m functional_sgd COMMAND [options]"
    for command, summary in [("lesson", "fit the lesson's line by batch, mini-batch"),
                             ("lr-sweep", "train many learning rates at once"),
                             ("digits", "the lesson's linear classifier of 3s versus 7s"),
                             ("agreement", "how closely fit agrees with the torch reference")]:
        assert any(line.split()[:1] == [command] and summary in line for line in lines), command
    assert "python -m functional_sgd COMMAND --help" in err


def test_help_names_the_files_each_command_writes_in_plain_english(capsys):
    written = {}
    for command in ("lesson", "lr-sweep", "digits"):
        status, text, _ = run_main(capsys, command, "--help")
        assert status == 0
        written[command] = re.search(r"only (\S+(?:, \S+)*(?: and \S+)?) (?:is|are) written", " ".join(text.split()))
    assert written["lr-sweep"].group(0) == "only lr_sweep.png is written"
    assert written["digits"].group(0) == "only digits_weights.png and digits_curves.png are written"
    assert written["lesson"].group(0) == ("only lesson_fit.png, lesson_losses.png, "
                                          "learning_rates.png, gradient.png and lesson_fit.gif "
                                          "are written")


def test_the_program_is_named_as_it_was_called():
    """The installed script is `functional-sgd`: its errors and usage say so."""
    script = ("import sys; sys.argv[0] = '/venv/bin/functional-sgd'; "
              "from functional_sgd.app import main; sys.exit(main())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    called = lambda *argv: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=300, check=False)
    bad = called("lesson", "--n", "0")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "functional-sgd lesson: error: argument --n: must be >= 1; got 0"]
    helped = called("lr-sweep", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: functional-sgd lr-sweep")
    none = called()
    assert none.returncode == 2 and "usage: functional-sgd COMMAND" in none.stderr


SEED_MEANING = "data_key, batch_key = jax.random.split(jax.random.key(SEED))"


def test_seed_means_the_same_in_every_command(capsys):
    """--seed S is the README's first example: data_key, batch_key =
    jax.random.split(jax.random.key(S)), the data from data_key and the
    mini-batches from batch_key; every command says so in its help."""
    import jax

    import functional_sgd as fsgd
    from functional_sgd.lesson import LESSON_START, lesson_data
    from functional_sgd.lesson import lr_sweep as sweep_rates

    for command in ("lesson", "lr-sweep", "digits", "agreement"):
        status, text, _ = run_main(capsys, command, "--help")
        assert status == 0 and SEED_MEANING in " ".join(text.split()), command

    data_key, batch_key = jax.random.split(jax.random.key(7))
    x, y = lesson_data(data_key)
    status, text, err = run_main(capsys, "lesson", "--seed", "7", "--steps", "20",
                                 "--no-figures", "--no-reference")
    assert status == 0, err
    printed = dict(re.findall(r"\n(\S+) descent\n(?:.*\n)*?  fitted a = \(([-\d.]+, [-\d.]+)\)",
                              text))
    for mode, batch_size in (("batch", None), ("mini-batch", 10), ("stochastic", 1)):
        schedule = {} if batch_size is None else {"batch_size": batch_size, "key": batch_key}
        ours = fsgd.fit(fsgd.linear_mse, jax.numpy.array(LESSON_START), (x, y), lr=0.1, steps=20,
                        **schedule).params
        # printed to 4 significant digits
        np.testing.assert_allclose([float(v) for v in printed[mode].split(", ")],
                                   np.asarray(ours), rtol=6e-4, err_msg=mode)

    status, text, err = run_main(capsys, "lr-sweep", "--seed", "7", "--steps", "20", "--num", "2",
                                 "--batch-size", "10", "--no-figures")
    assert status == 0, err
    sweep = sweep_rates(fsgd.linear_mse, jax.numpy.array(LESSON_START), (x, y),
                        lrs=jax.numpy.geomspace(1e-3, 3.0, 2), steps=20, batch_size=10,
                        key=batch_key)
    printed = [float(v) for v in re.findall(r"lr\s+[\d.e+-]+\s+final loss ([\w.e+-]+)", text)]
    np.testing.assert_allclose(printed, np.asarray(sweep.final_loss), rtol=6e-4)
