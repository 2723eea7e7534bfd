"""The docs site's pages: every Python block runs, and every public name has
a reference page.

Each page's blocks run in order in one namespace (a page is one story), in a
temporary working folder. A block that needs a GPU or several devices is
marked ``<!-- compile-only: why -->`` and is only compiled here.
"""

import contextlib
import functools
import io
import os
import re
import tempfile
import types
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
BLOCK = re.compile(r"(?:<!-- compile-only: ([^>]*?) -->\n)?```python\n(.*?)```", re.DOTALL)
COMPILE_ONLY_REASONS = ("GPU", "devices", "hosts")


def python_blocks(page):
    """``(reason or None, code)`` for every ```python block of ``page``."""
    return [(reason or None, code) for reason, code in BLOCK.findall((DOCS / page).read_text())]


@functools.cache
def run_page(page):
    """Runs a page's blocks; returns ``(namespace, printed)``."""
    namespace, printed, folder = {}, io.StringIO(), tempfile.mkdtemp()
    cwd = os.getcwd()
    # A user's code: no strict promotion there. The pages' figures, and the porting
    # guide's bit-for-bit checks against the loops it replaces, are the CPU's: on a
    # GPU machine the pages run on its CPU device too (GPU behaviour has its own tests).
    with (jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"),
          jax.default_device(jax.devices("cpu")[0]), contextlib.redirect_stdout(printed)):
        try:
            os.chdir(folder)
            for number, (reason, code) in enumerate(python_blocks(page)):
                compiled = compile(code, f"docs/{page}, python block {number}", "exec")
                if reason is None:
                    exec(compiled, namespace)  # noqa: S102 -- the docs are the code under test
        finally:
            os.chdir(cwd)
    return namespace, printed.getvalue()


@pytest.mark.parametrize("page", [page for page in PAGES if python_blocks(page)])
def test_every_python_block_runs(page):
    run_page(page)


@pytest.mark.parametrize("page", PAGES)
def test_blocks_are_only_compiled_for_a_gpu_or_many_devices(page):
    for reason, code in python_blocks(page):
        if reason is not None:
            assert any(word in reason for word in COMPILE_ONLY_REASONS), (
                f"docs/{page}: a block is compile-only for {reason!r}; only blocks that need "
                f"a GPU or many devices may skip running ({COMPILE_ONLY_REASONS})")


def public_names():
    """What ``functional_sgd`` re-exports, plus the two public names elsewhere."""
    import functional_sgd
    exported = {f"functional_sgd.{name}" for name, value in vars(functional_sgd).items()
                if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    return exported | {"functional_sgd.speed.SpeedPlan", "reference.fit"}


def reference_directives():
    return {name for path in (DOCS / "api").glob("*.md")
            for name in re.findall(r"^::: (\S+)", path.read_text(), re.MULTILINE)}


def test_every_public_name_has_a_reference_page():
    missing = public_names() - reference_directives()
    assert not missing, (f"public names without a reference page: {sorted(missing)}; add "
                         "a line '::: <name>' to the fitting page under docs/api/")


def test_every_reference_directive_names_something_that_exists():
    import importlib
    for name in reference_directives():
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), name


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    left_out = [page for page in PAGES if page not in nav]
    assert not left_out, f"docs pages missing from mkdocs.yml's nav: {left_out}"


def test_no_page_refers_to_issues_or_sessions():
    for page in PAGES:
        assert not re.search(r"\bissues?\b|\bsessions?\b", (DOCS / page).read_text(), re.IGNORECASE), page


def test_the_own_model_guide_trains_each_model():
    """An equinox MLP, a dropout ensemble and a BatchNorm net each train, and
    the frozen layers stay as they were."""
    import equinox as eqx
    namespace, printed = run_page("how-to/own-model.md")
    fitted, trained = namespace["fitted"], namespace["trained"]
    assert isinstance(fitted.params, eqx.nn.MLP)
    assert float(fitted.losses[-1]) < 0.05 * float(fitted.losses[0])
    assert float(trained.losses[-1]) < 0.2 * float(trained.losses[0])
    assert type(trained.state) is type(namespace["rest"])  # batch statistics and the dropout stream
    assert "2 seeds, last losses" in printed


def test_the_step_7_guide_stops_as_it_says():
    """The stop rule stops where the comment says, keeping the best epoch."""
    import numpy as np
    namespace, printed = run_page("how-to/evaluation.md")
    (block, _) = [code for _, code in python_blocks("how-to/evaluation.md")][:2]
    said = re.search(r"# (stopped after .*)\n# (\[.*\])", block)
    assert f"{said.group(1)} {said.group(2)}" in printed.replace("\n", " ")
    result, digits = namespace["result"], namespace["digits"]
    kept = namespace["valid_accuracy"](result.params, digits.valid_x, digits.valid_y)
    assert float(kept["accuracy"]) == float(np.nanmax(result.evals["accuracy"]))


def test_the_replay_guide_pads_the_short_batch_and_learns_the_line():
    namespace, _ = run_page("how-to/replay-order.md")
    rows, schedule = namespace["rows"], namespace["schedule"]
    assert rows[100].tolist()[3:] == [-1] * 7 and min(rows[100].tolist()[:3]) >= 0
    assert schedule.shape == (303, 10) and (schedule[100, 3:] == -1).all()
    for run in (namespace["ragged"], namespace["torch_order"]):
        assert float(run.losses[-1]) < 1e-3 < float(run.losses[0])


def test_the_porting_guide_checks_each_port_against_the_loop_it_replaces():
    """Each port trains (its loss falls; the early stopping stops early), and
    each section ends in a block that runs the original loop and asserts
    the agreement (the page's run fails where it does not agree)."""
    import numpy as np
    namespace, _ = run_page("how-to/porting.md")
    sections = re.split(r"^## ", (DOCS / "how-to/porting.md").read_text(), flags=re.MULTILINE)
    for section in sections[1:]:
        last = BLOCK.findall(section)[-1][1]
        assert "np.testing.assert" in last, section.splitlines()[0]
    for port in ("scratch", "concise", "own_order", "optimized", "cnn", "mlp", "stopped"):
        losses = np.asarray(namespace[port].losses)
        losses = losses[np.isfinite(losses)]  # a stopped run's steps not run hold NaN
        assert losses[-10:].mean() < losses[:10].mean(), port
    assert namespace["ran"] < namespace["MAX_EPOCHS"]


def test_the_tutorial_reaches_the_lessons_numbers():
    """The lesson's facts the tutorial states: grad f(3) = 6, f(3, 4, 10) = 125,
    a near (3, 2.5), the four learning rates, 3 vs 7 at least 97 % right."""
    namespace, printed = run_page("tutorial.md")
    assert "125.0 [ 6.  8. 20.]" in printed
    assert abs(float(namespace["batch"].params[0]) - 3.0) < 0.1
    assert "too high  lr = 1.5   diverged at step" in printed
    assert float(namespace["reports"][-1].valid_accuracy) >= 0.97
    assert 0.05 < float(namespace["sweep"].lrs[namespace["sweep"].best]) < 1.0
