"""``import functional_sgd`` stays light: no torch, matplotlib, sklearn, tqdm, PIL or flax."""

import subprocess
import sys

HEAVY = ("torch", "matplotlib", "sklearn", "optax", "tqdm", "PIL", "flax", "equinox")


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_import_loads_no_heavy_library():
    done = run("import sys, functional_sgd; "
               f"print([m for m in {HEAVY!r} if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_import_and_fit_work_without_torch_installed():
    # A None entry in sys.modules makes `import torch` raise ImportError.
    done = run("import sys; sys.modules['torch'] = None\n"
               "import jax, functional_sgd as fsgd\n"
               "x, y = fsgd.lesson_data(jax.random.key(0))\n"
               "r = fsgd.fit(fsgd.linear_mse, jax.numpy.array(fsgd.LESSON_START), (x, y),"
               " lr=0.1, steps=10)\n"
               "print(r.losses.shape)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(10,)"


def test_import_starts_no_jax_backend():
    """tune_cpu() must be callable after `import functional_sgd`: the import
    creates no array, so JAX's backends have not started."""
    done = run("import functional_sgd, jax\n"
               "from jax._src import xla_bridge\n"
               "print(xla_bridge.backends_are_initialized())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
