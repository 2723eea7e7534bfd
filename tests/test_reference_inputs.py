"""The torch referee refuses bad input clearly, never mutates its inputs, and
never imports the player (functional_sgd)."""

import subprocess
import sys

import pytest

pytest.importorskip("torch")


@pytest.mark.parametrize("code", [
    "import sys, reference",
    # Its doctests too: they run the referee on a loss written inline.
    "import doctest, sys, reference; assert doctest.testmod(reference).failed == 0",
], ids=["import", "doctest"])
def test_reference_does_not_import_functional_sgd(code):
    out = subprocess.run([sys.executable, "-c", code + "; print('functional_sgd' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
