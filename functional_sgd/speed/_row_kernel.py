"""Full-batch steps of the library's row-mean losses, reading each row once, on CPU.

The library's three losses that are a mean over rows are each a mean of a
function of one score per row, ``s_i = x_i · w + b``:

    L(w, b) = (1/n) Σ_i l(s_i, y_i),    ∇_w L = (1/n) Σ_i l'(s_i, y_i) x_i,
    ∂L/∂b = (1/n) Σ_i l'(s_i, y_i),

with ``l(s, y) = (s - y)²`` (``linear_mse``, no ``b``), ``y = 1 ? 1 - σ(s) :
σ(s)`` (the lesson's ``mnist_loss``) or ``softplus(s) - y s`` (binary
cross-entropy). A step that takes ``s_i`` and then adds ``l'(s_i, y_i) x_i``
while row ``i`` is still in the first-level cache reads ``x`` from memory once.
XLA:CPU cannot run it so: its matrix-vector products each sweep all of ``x``,
and its own loops over row blocks run on one core (``_one_pass.py``). So the
step is a small C++ kernel (``_row_kernel.cc``) called through JAX's FFI, on
the threads of XLA's own pool.

The kernel is compiled on first use with the machine's C++ compiler
(``$CXX``, else ``c++``) for this CPU (``-march=native``) against the FFI
headers of the installed jaxlib, and kept in a cache folder
(``$FUNCTIONAL_SGD_CACHE``, else ``$XDG_CACHE_HOME/functional_sgd``, else
``~/.cache/functional_sgd``) under a name that hashes all of these. Where it
cannot be built (no compiler) :func:`build` says why; ``SpeedPlan(row_kernel=
"auto")`` then warns once and steps in XLA's row blocks instead.

On any backend but the CPU the same program takes the plain gradient
(``jax.lax.platform_dependent``), so a step traced here runs anywhere.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("_row_kernel.cc")
TARGET = "functional_sgd_row_mean_step"
SYMBOL = "FunctionalSgdRowMeanStep"
ROWS = {"squared_error": 0, "mnist_distance": 1, "logistic_cross_entropy": 2}
"""The kernel's row functions ``l(s, y)``, by the names the losses register
(``core/_loss.row_mean``), and their codes in ``_row_kernel.cc``."""
WITH_BIAS = {"squared_error": False, "mnist_distance": True, "logistic_cross_entropy": True}
"""Whether a row function's params are ``(w, b)`` (the lesson classifier's)
rather than ``w`` alone (``linear_mse``'s)."""
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w")


class Build(NamedTuple):
    """Whether the kernel is ready in this process: the library's path, or why not."""

    path: pathlib.Path | None
    why_not: str | None
    seconds: float  # spent compiling it in this process (0.0 when it came from the cache)


def cache_dir() -> pathlib.Path:
    """Where compiled kernels are kept (see the module's docstring)."""
    if os.environ.get("FUNCTIONAL_SGD_CACHE"):
        return pathlib.Path(os.environ["FUNCTIONAL_SGD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "functional_sgd"


def _cpu_flags() -> str:
    """The CPU's feature flags (what ``-march=native`` compiles for), or its name."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_kernel(directory: pathlib.Path) -> Build:
    """The kernel compiled into ``directory``, or found there from an earlier
    compile (its name hashes what went into it); not loaded."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return Build(None, f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} is not on PATH)",
                     0.0)
    try:
        include = jax.ffi.include_dir()
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (AttributeError, OSError, subprocess.SubprocessError) as error:
        return Build(None, f"no FFI headers or compiler version ({error})", 0.0)
    key = hashlib.sha256("\0".join([
        SOURCE.read_text(), jax.__version__, jax.lib.__version__, version, " ".join(FLAGS),
        platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    path = directory / f"row_kernel-{key}.so"
    if path.exists():
        return Build(path, None, 0.0)
    start = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            built = pathlib.Path(scratch) / path.name
            command = [compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(built)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return Build(None, f"{shlex.join(command)} failed: "
                                   f"{done.stderr.strip()[-2000:]}", 0.0)
            os.replace(built, path)  # whole or not at all, if another process races
    except (OSError, subprocess.SubprocessError) as error:
        return Build(None, f"could not compile it into {directory} ({error})", 0.0)
    return Build(path, None, time.perf_counter() - start)


@functools.cache
def build() -> Build:
    """The row kernel compiled (or found in the cache), loaded and registered
    with JAX, once a process; ``fit`` calls it on the first call that needs it.

    Returns:
      A ``Build``: ``path`` of the compiled library and ``seconds`` spent
      compiling it in this process (0.0 when it came from the cache), or
      ``path=None`` and ``why_not``, which says why it could not be built
      (no C++ compiler, the compiler's error).

    >>> from functional_sgd.speed import build_row_kernel
    >>> ready = build_row_kernel()
    >>> (ready.path is None) == (ready.why_not is not None)
    True
    """
    compiled = compile_kernel(cache_dir())
    if compiled.path is None:
        return compiled
    try:
        library = ctypes.CDLL(str(compiled.path))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)),
                                    platform="cpu")
    except (OSError, AttributeError) as error:
        return Build(None, f"could not load {compiled.path} ({error})", 0.0)
    return compiled


@functools.cache
def warn_unbuilt(why_not: str) -> None:
    """Says once a process that ``"auto"`` wanted the kernel and steps in blocks."""
    warnings.warn(f"functional_sgd: the CPU row kernel could not be built ({why_not}); one-pass "
                  "steps run in XLA's row blocks instead (slower). SpeedPlan(row_kernel=False) "
                  "asks for those without this warning.", RuntimeWarning, stacklevel=2)


def on_cpu(data) -> bool:
    """Whether a step on ``data`` runs on a CPU: the devices of its JAX
    arrays, or JAX's default backend for host arrays and shapes."""
    platforms = {device.platform for a in data
                 if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
                 for device in a.devices()}
    return platforms == {"cpu"} if platforms else jax.default_backend() == "cpu"


def why_not(row, params, data) -> str | None:
    """Why the kernel cannot take a step of ``row``'s loss on ``(params, data)``, or ``None``.

    It takes ``x`` of shape ``(n, d)`` with ``n >= 1``, ``y`` of shape ``(n,)`` and
    params ``w`` of shape ``(d,)`` (and a scalar ``b`` where the row function has
    one), all of one dtype, float32 or float64.
    """
    if row not in ROWS:
        return ("the loss is not one of the library's row means (linear_mse, "
                "classifier_mnist_loss, classifier_cross_entropy)")
    if len(data) != 2:
        return f"it takes data (x, y); got {len(data)} arrays"
    x, y = data
    leaves = params if WITH_BIAS[row] else (params,)
    if not isinstance(leaves, (tuple, list)) or len(leaves) != (2 if WITH_BIAS[row] else 1):
        return "the params are not the loss's own (w, or (w, b))"
    shapes = [tuple(np.shape(a)) for a in (x, y, *leaves)]
    if len(shapes[0]) != 2 or shapes[0][0] < 1 or shapes[1] != shapes[0][:1] \
            or shapes[2] != shapes[0][1:] or (len(shapes) == 4 and shapes[3] != ()):
        return f"it takes x (n, d), y (n,), w (d,) and a scalar b; got shapes {shapes}"
    dtypes = {np.dtype(a.dtype) for a in (x, y, *leaves) if hasattr(a, "dtype")}
    if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
        return "it takes x, y and the params all float32 or all float64"
    return None


def row_kernel(loss, row, params, data):
    """``(kernel_loss, data)``: ``loss`` (row function ``row``) as a loss whose value
    and gradient are one call of the kernel on the CPU, and the data as it is
    (read in place: no copy).

    ``kernel_loss(params, x, y)`` gives the value of ``loss(params, x, y)`` and,
    under ``jax.grad``, its gradient; off the CPU it is ``loss`` itself.

    >>> import jax.numpy as jnp
    >>> from functional_sgd import linear_mse
    >>> x = jnp.arange(20.0).reshape(10, 2); y = jnp.ones(10); a = jnp.array([0.5, -0.25])
    >>> stepped, data = row_kernel(linear_mse, "squared_error", a, (x, y))
    >>> value, grad = jax.value_and_grad(stepped)(a, *data)
    >>> bool(jnp.allclose(value, linear_mse(a, x, y))), bool(jnp.allclose(
    ...     grad, jax.grad(linear_mse)(a, x, y)))
    (True, True)
    """
    problem = why_not(row, params, data)
    if problem is not None:
        raise ValueError(f"the row kernel cannot run: {problem}.")
    ready = build()
    if ready.why_not is not None:
        raise RuntimeError(f"the row kernel could not be built: {ready.why_not}")
    code, with_bias = np.int32(ROWS[row]), WITH_BIAS[row]

    def on_cpu(params, x, y):
        w, b = params if with_bias else (params, jnp.zeros((), params.dtype))
        results = (jax.ShapeDtypeStruct((), x.dtype), jax.ShapeDtypeStruct(w.shape, x.dtype),
                   jax.ShapeDtypeStruct((), x.dtype))
        value, grad_w, grad_b = jax.ffi.ffi_call(TARGET, results, vmap_method="sequential")(
            x, y, w, b, row=code)
        return value, ((grad_w, grad_b) if with_bias else grad_w)

    def value_and_grad(params, x, y):
        return jax.lax.platform_dependent(params, x, y, cpu=on_cpu,
                                          default=jax.value_and_grad(loss))

    @jax.custom_vjp
    def kernel_loss(params, x, y):
        return value_and_grad(params, x, y)[0]

    def forward(params, x, y):
        return value_and_grad(params, x, y)

    def backward(grad, cotangent):
        return jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad), None, None

    kernel_loss.defvjp(forward, backward)
    return kernel_loss, tuple(data)
