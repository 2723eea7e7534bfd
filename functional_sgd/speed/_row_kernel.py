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
``~/.cache/functional_sgd``) under a name that hashes all of these; a compile
removes the kernels there that no process has loaded for 30 days. Where it
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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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


COMPILE_TIMEOUT_S = 300
"""Longest a compile may take before the kernel is given up as unbuildable."""


def compile_kernel(directory: pathlib.Path) -> Build:
    """The kernel compiled into ``directory``, or found there from an earlier
    compile (its name hashes what went into it); not loaded.

    A compiled library is kept with the SHA-256 of its bytes beside it and
    used again only when they match: a library cut short (a full disk, a
    machine that lost power) is compiled afresh, never loaded."""
    command_words = shlex.split(os.environ.get("CXX", "c++"))  # "ccache c++" is two words
    compiler = shutil.which(command_words[0]) if command_words else None
    if compiler is None:
        return Build(None, f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} is not on PATH)",
                     0.0)
    try:
        include = jax.ffi.include_dir()
        version = subprocess.run([compiler, *command_words[1:], "--version"],
                                 capture_output=True, text=True, timeout=60).stdout
    except (AttributeError, OSError, subprocess.SubprocessError) as error:
        return Build(None, f"no FFI headers or compiler version ({error})", 0.0)
    key = hashlib.sha256("\0".join([
        SOURCE.read_text(), jax.__version__, jax.lib.__version__, " ".join(command_words),
        version, " ".join(FLAGS), platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    path = directory / f"row_kernel-{key}.so"
    digest_path = path.with_suffix(".sha256")
    if _intact(path, digest_path):
        _mark_used(path)
        return Build(path, None, 0.0)
    start = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=SCRATCH_PREFIX) as scratch:
            built = pathlib.Path(scratch) / path.name
            command = [compiler, *command_words[1:], *FLAGS, f"-I{include}", str(SOURCE),
                       "-o", str(built)]
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S)
            if done.returncode != 0 or not built.is_file():
                why = done.stderr.strip()[-2000:] if done.returncode != 0 else \
                    "it exited 0 but wrote no library"
                return Build(None, f"{shlex.join(command)} failed: {why}", 0.0)
            with open(built, "rb") as library:
                os.fsync(library.fileno())
                digest = hashlib.sha256(library.read()).hexdigest()
            digest_written = pathlib.Path(scratch) / digest_path.name
            digest_written.write_text(digest)
            os.replace(built, path)  # whole or not at all, if another process races
            os.replace(digest_written, digest_path)  # last: it vouches for the library
    except (OSError, subprocess.SubprocessError) as error:
        return Build(None, f"could not compile it into {directory} ({error})", 0.0)
    _sweep_stale(directory, keep=path)
    return Build(path, None, time.perf_counter() - start)


SCRATCH_PREFIX = "compiling-"
"""Names of the folders a compile writes in before it publishes its library."""


UNUSED_AFTER_S = 30 * 24 * 3600
"""A compiled kernel no process has loaded for this long (30 days) is removed
by the next compile: each jax, compiler or kernel version leaves its own."""


def _mark_used(path: pathlib.Path) -> None:
    """Sets ``path``'s modification time to now: the cache's record of its last use."""
    try:
        os.utime(path)
    except OSError:
        pass  # a cache shared read-only: its owner keeps it


def _sweep_stale(directory: pathlib.Path, *, keep: pathlib.Path) -> None:
    """Removes, after a compile, what no process can still need: scratch
    folders older than twice :data:`COMPILE_TIMEOUT_S` (a process killed while
    compiling leaves its own behind), and compiled kernels other than ``keep``
    that no process has loaded for :data:`UNUSED_AFTER_S`, digest first."""
    scratches = directory.glob(SCRATCH_PREFIX + "*")
    libraries = (library for library in directory.glob("row_kernel-*.so") if library != keep)
    stale = [*((scratch, 2 * COMPILE_TIMEOUT_S) for scratch in scratches),
             *((library, UNUSED_AFTER_S) for library in libraries)]
    for path, age_s in stale:
        try:
            if time.time() - path.stat().st_mtime <= age_s:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.with_suffix(".sha256").unlink(missing_ok=True)  # first: it vouches
                path.unlink()
        except OSError:
            pass  # another process swept it first


def _intact(path: pathlib.Path, digest_path: pathlib.Path) -> bool:
    """Whether ``path`` holds the bytes whose SHA-256 ``digest_path`` records."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest_path.read_text().strip()
    except OSError:
        return False


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


def platform_of(data) -> str:
    """Where a step on ``data`` runs: the platform of its JAX arrays'
    devices (``"cpu"``, ``"gpu"``, ...), else of the default device
    (``jax.default_device``, or the default backend's) for host arrays and
    shapes."""
    platforms = {device.platform for a in data
                 if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
                 for device in a.devices()}
    if len(platforms) == 1:
        return platforms.pop()
    default = getattr(jax.config, "jax_default_device")  # typed stubs lack it
    if default is None:
        return jax.default_backend()
    return default if isinstance(default, str) else default.platform


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
    names = ("x", "y", "w", "b")
    dtypes = [dtype_in_jax(a) for a in (x, y, *leaves)]
    if len(set(dtypes)) != 1 or dtypes[0] not in (np.float32, np.float64):
        got = ", ".join(f"{name} {dtype.name}" for name, dtype in zip(names, dtypes))
        return f"it takes x, y and the params all float32 or all float64; got {got}"
    return None


def dtype_in_jax(value: Any) -> np.dtype:
    """The dtype JAX gives ``value`` (a NumPy float64 array is float32 unless
    x64 is on; a Python float is float64 with it)."""
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


GPU_MAX_COLUMNS = 4096
"""Widest rows the GPU kernel takes: a tile of rows is held in registers,
its columns padded to a power of 2."""
GPU_TILE_VALUES = 16 * 1024
"""Values of ``x`` in one tile (rows x padded columns) a GPU program holds
at once, in registers: 64 a thread at 8 warps (rows padded to 512 columns
or more), 128 at 4."""
GPU_PROGRAMS = 512
"""Programs the GPU kernel aims to launch (a few per streaming multiprocessor)."""


def why_not_gpu(params, data) -> str | None:
    """Why the GPU kernel cannot take a step on ``(params, data)``, or ``None``
    (beyond :func:`why_not`): it takes float32 rows of at most
    :data:`GPU_MAX_COLUMNS` values."""
    x = data[0]
    if np.dtype(x.dtype) != np.float32:
        return "on a GPU it takes float32 only"
    if x.shape[1] > GPU_MAX_COLUMNS:
        return f"on a GPU it takes rows of at most {GPU_MAX_COLUMNS} values; got {x.shape[1]}"
    return None


def _terms(row, s, y):
    """``(l(s, y), l'(s, y))`` of row function ``row`` for a vector of scores,
    as ``_row_kernel.cc`` takes them (from ``exp(-|s|)``: no overflow)."""
    if row == "squared_error":
        r = s - y
        return r * r, 2 * r
    e = jnp.exp(-jnp.abs(s))
    p = jnp.where(s >= 0, 1.0, e) / (1 + e)
    if row == "mnist_distance":
        dp = p * (1 - p)
        one = y == 1
        return jnp.where(one, 1 - p, p), jnp.where(one, -dp, dp)
    return jnp.maximum(s, 0) + jnp.log1p(e) - y * s, p - y


def gpu_step(row: str, x: Any, y: Any, w: Any, b: Any, *,
             interpret: bool = False) -> tuple[Any, Any, Any]:
    """``(value, grad_w, grad_b)`` of ``row``'s loss in one read of ``x``, as a
    Pallas (Triton) kernel for a GPU: each program sweeps its rows a tile at
    a time, takes the tile's scores and adds its gradient terms while the
    tile is in registers, and writes its partial sums; XLA adds the
    programs' sums. ``interpret=True`` runs it on any backend (the tests')."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pallas_triton

    n, d = x.shape
    padded = pl.next_power_of_2(d)
    tile_rows = min(1024, GPU_TILE_VALUES // padded)  # 4 or more: padded <= 4096
    tiles = int(min(64, max(1, pl.next_power_of_2(pl.cdiv(n, tile_rows * GPU_PROGRAMS)))))
    program_rows = tile_rows * tiles
    programs = pl.cdiv(n, program_rows)
    dtype = x.dtype

    def kernel(x_ref, y_ref, w_ref, b_ref, grad_ref, loss_ref, slope_ref):
        # Blocks run past the arrays' ends (the last program's rows, the
        # padded columns), and a Triton load is not bounds-checked: every
        # read of x, y and w is masked to the values that exist.
        first = pl.program_id(0) * program_rows
        columns = jnp.arange(padded) < d
        w = pallas_triton.load(w_ref, mask=columns, other=0)

        def tile(k, sums):
            grad, loss, slope = sums
            real = first + k * tile_rows + jnp.arange(tile_rows) < n
            rows = pl.ds(k * tile_rows, tile_rows)
            xt = pallas_triton.load(x_ref.at[rows, :], mask=real[:, None] & columns[None, :],
                                    other=0)
            l, s = _terms(row, jnp.sum(xt * w[None, :], axis=1) + b_ref[0],
                          pallas_triton.load(y_ref.at[rows], mask=real, other=0))
            l, s = jnp.where(real, l, 0), jnp.where(real, s, 0)
            return grad + jnp.sum(xt * s[:, None], axis=0), loss + jnp.sum(l), slope + jnp.sum(s)

        zero = jnp.zeros((), dtype)
        grad, loss, slope = jax.lax.fori_loop(0, tiles, tile, (jnp.zeros(padded, dtype), zero,
                                                               zero))
        grad_ref[...] = grad[None, :]
        loss_ref[...] = jnp.full((1,), loss)
        slope_ref[...] = jnp.full((1,), slope)

    grads, losses, slopes = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((programs, padded), dtype),
                   jax.ShapeDtypeStruct((programs,), dtype),
                   jax.ShapeDtypeStruct((programs,), dtype)),
        grid=(programs,),
        in_specs=[pl.BlockSpec((program_rows, padded), lambda i: (i, 0)),
                  pl.BlockSpec((program_rows,), lambda i: (i,)),
                  pl.BlockSpec((padded,), lambda i: (0,)),
                  pl.BlockSpec((1,), lambda i: (0,))],
        out_specs=(pl.BlockSpec((1, padded), lambda i: (i, 0)),
                   pl.BlockSpec((1,), lambda i: (i,)),
                   pl.BlockSpec((1,), lambda i: (i,))),
        compiler_params=pallas_triton.CompilerParams(num_warps=8 if padded >= 512 else 4),
        interpret=interpret)(x, y, w, jnp.reshape(b, (1,)).astype(dtype))
    scale = jnp.asarray(1 / n, dtype)
    return losses.sum() * scale, grads.sum(0)[:d] * scale, slopes.sum() * scale


def row_kernel(loss: Callable[..., Any], row: str, params: Any,
               data: Sequence[Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(kernel_loss, data)``: ``loss`` (row function ``row``) as a loss whose value
    and gradient are one call of the kernel, and the data as it is (read in
    place: no copy).

    ``kernel_loss(params, x, y)`` gives the value of ``loss(params, x, y)`` and,
    under ``jax.grad``, its gradient (first order: reverse mode only), for
    the params: on the CPU from the C++ kernel (where it
    is built), on a CUDA GPU from :func:`gpu_step` (float32 rows of at most
    :data:`GPU_MAX_COLUMNS` values), anywhere else from ``loss`` itself; for
    the data, from ``loss`` itself.

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
    with_bias = WITH_BIAS[row]

    def split(params):
        return params if with_bias else (params, jnp.zeros((), params.dtype))

    def joined(value, grad_w, grad_b):
        return value, ((grad_w, grad_b) if with_bias else grad_w)

    def on_cpu(params, x, y):
        w, b = split(params)
        results = (jax.ShapeDtypeStruct((), x.dtype), jax.ShapeDtypeStruct(w.shape, x.dtype),
                   jax.ShapeDtypeStruct((), x.dtype))
        return joined(*jax.ffi.ffi_call(TARGET, results, vmap_method="sequential")(
            x, y, w, b, row=np.int32(ROWS[row])))

    def on_gpu(params, x, y):
        return joined(*gpu_step(row, x, y, *split(params)))

    branches = {}  # a backend the kernel cannot serve takes the plain gradient
    if build().why_not is None:
        branches["cpu"] = on_cpu
    if why_not_gpu(params, data) is None:
        branches["cuda"] = on_gpu

    def value_and_grad(params, x, y):
        return jax.lax.platform_dependent(params, x, y, **branches,
                                          default=jax.value_and_grad(loss))

    @jax.custom_vjp
    def kernel_loss(params, x, y):
        return value_and_grad(params, x, y)[0]

    def forward(params, x, y):
        value, grad = value_and_grad(params, x, y)
        return value, (grad, params, x, y)

    def backward(saved, cotangent):
        # The params' cotangent is the kernel's gradient. The data's (rarely
        # asked for: fit differentiates the params only) is the plain loss's,
        # which XLA drops from the program when nothing reads it.
        grad, params, x, y = saved
        _, data_vjp = jax.vjp(lambda x, y: loss(params, x, y), x, y)
        return (jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad),
                *data_vjp(cotangent))

    kernel_loss.defvjp(forward, backward)
    return kernel_loss, tuple(data)
