"""The README's Python blocks run as written, each on its own, and print what
the README says they print."""

import re
import subprocess
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def readme_blocks():
    """Every ```python block of the README, with the marker line before it."""
    return re.findall(r"(?:<!-- (\S+) -->\n)?```python\n(.*?)```", README.read_text(), re.DOTALL)


def run_block(block, capsys):
    """Runs one block in a namespace of its own; returns what it printed."""
    # the README's code is a user's: no strict promotion there
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(block, str(README), "exec"), {})  # noqa: S102 -- the README is the code under test
    return capsys.readouterr().out


def test_every_python_block_is_marked_to_run():
    blocks = readme_blocks()
    assert blocks
    unmarked = [code.splitlines()[0] for marker, code in blocks if marker != "tour"]
    assert not unmarked, f"README python blocks without <!-- tour -->: {unmarked}"


@pytest.mark.parametrize("number", range(len(readme_blocks())))
def test_each_block_runs_on_its_own(number, capsys):
    run_block(readme_blocks()[number][1], capsys)


def test_the_first_block_prints_what_the_readme_shows(capsys):
    """Its numbers are the command line's for --seed 0 (the same key split)."""
    text = README.read_text()
    (shown,) = re.findall(r"<!-- prints -->\n```text\n(.*?)```", text, re.DOTALL)
    assert run_block(readme_blocks()[0][1], capsys) == shown
    assert "a = (2.996, 2.486)  loss 5.0635" in shown


def test_the_torch_install_line_comes_before_the_commands_that_need_it():
    text = README.read_text()
    cpu_index = text.index("--index-url https://download.pytorch.org/whl/cpu")
    assert cpu_index < text.index("<!-- main-command -->") < text.index("<!-- test-command -->")
    assert text.index("pip install torch==2.13.0") < text.index("<!-- main-command -->")


def test_the_readme_is_short_and_says_nothing_of_issues():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\bissues?\b|\bsessions?\b", text, re.IGNORECASE)


def test_every_relative_link_resolves():
    links = [link for link in MARKDOWN_LINK.findall(README.read_text())
             if "://" not in link]
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to files that are not there: {missing}"


def test_ci_runs_the_readmes_test_command_and_builds_the_docs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test_command='pip install -e \".[test]\" && python -m pytest'" in ci
    assert "mkdocs build --strict" in ci
    assert ci.index("python -m pytest\n") < ci.index("mkdocs build --strict")
    result = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
