"""The speed plan: every choice that makes the loop fast, made in one place.

A :class:`SpeedPlan` names each choice; each can be switched off. ``fit``
takes one (``speed=``), resolves what ``"auto"`` means for the call at hand
with :func:`decide`, and puts the result in the loop's compile-time spec.
None of these choices changes what is computed, only how: results agree
with the plain loop to rounding (the exact-moments path, the one-pass step)
or to the bit (the rest keep params' bits; see each module). The one-pass
step needs a loss that is a mean over its rows: ``"auto"`` takes it only for
the library's own such losses (``linear_mse`` and the lesson classifier's
``mnist_loss`` and cross-entropy, recognised by identity), and
``one_pass=True`` is the caller's word for any other. On the CPU the
library's own such losses take it in a compiled kernel (``row_kernel``),
any other in XLA's row blocks.
"""

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from . import _layout, _moments, _one_pass, _row_kernel


@dataclasses.dataclass(frozen=True)
class SpeedPlan:
    """How the loop runs fast. The defaults are what ``fit`` does.

    Attributes:
      exact_moments: full-batch ``linear_mse`` from sufficient statistics
        (``XᵀX`` and friends: one pass over the data, then ``O(d²)`` a
        step; see ``speed/_moments.py``). ``"auto"`` where it applies and
        pays (:func:`moments_pay`), ``True`` insists, ``False`` never.
      column_major: full batch: store 2-D data arrays used only in matmuls
        transposed, ``(d, n)``, which XLA:CPU sweeps faster.
      sums_as_dots: full batch: take the sum over a short float vector (an
        MSE's mean) as a dot product with ones.
      tiny_step_bytes: steps whose rows take at most this many bytes gather
        them inside the loop (XLA:CPU compiles such a loop into one kernel);
        0 turns it off.
      pregather_bytes: a schedule's batches are gathered before the loop
        when they take at most this many bytes, else step by step.
      gather_block_bytes: batches gathered before the loop that take more
        than this many bytes are gathered a block of steps (of at most this
        many bytes) at a time instead (``core/_blocks.py``); 0 turns it off.
      schedule_budget: row indices a keyed schedule may hold at once; longer
        ones are drawn a chunk at a time inside the loop.
      cpu_compiler_options: compile a top-level loop with
        :data:`CPU_COMPILER_OPTIONS` (other backends ignore them).
      one_pass: full batch: take each step's value and gradient block by
        block of rows, reading the data once a step instead of twice
        (``speed/_one_pass.py``). Exact only for a loss that is a mean over
        its rows: ``"auto"`` uses it for the library's own such losses
        (``linear_mse``, ``classifier_mnist_loss``, the classifier's
        cross-entropy; by identity) where it pays (:func:`one_pass_pays`);
        ``True`` is the caller's word that
        the loss is such a mean (any loss; refused where it cannot run);
        ``False`` never.
      row_kernel: how a one-pass step of the library's own row-mean losses
        runs: on the CPU in a C++ kernel that reads each row once, on all
        cores, compiled on first use and cached; on a CUDA GPU in a Pallas
        kernel (``speed/_row_kernel.py``). ``"auto"`` takes the CPU kernel
        where it can run and pays (float32 or float64, the loss's own
        params; where it cannot be built, say without a compiler, it warns
        once and steps in row blocks), and not yet the GPU one (unmeasured);
        ``True`` insists, on either; ``False`` steps in XLA's row blocks.
      row_block_bytes: one-pass blocks hold this many bytes of rows.

    >>> import jax, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> plain = SpeedPlan(column_major=False, sums_as_dots=False, cpu_compiler_options=False)
    >>> result = fsgd.fit(fsgd.linear_mse, jax.numpy.array(fsgd.LESSON_START), (x, y), lr=0.1,
    ...                   steps=100, run=fsgd.Run(speed=plain))
    >>> [round(float(a), 1) for a in result.params]
    [3.1, 2.4]
    """

    exact_moments: object = "auto"
    column_major: bool = True
    sums_as_dots: bool = True
    tiny_step_bytes: int = 256
    pregather_bytes: int = 64 * 2**20
    gather_block_bytes: int = 4 * 2**20
    schedule_budget: int = 1 << 22
    cpu_compiler_options: bool = True
    one_pass: object = "auto"
    row_kernel: object = "auto"
    row_block_bytes: int = _one_pass.ROW_BLOCK_BYTES

    def __post_init__(self):
        for name in ("exact_moments", "one_pass", "row_kernel"):
            object.__setattr__(self, name, auto_or_bool(getattr(self, name),
                                                        f"SpeedPlan.{name}"))
        if isinstance(self.row_block_bytes, bool) or not isinstance(self.row_block_bytes, int) \
                or self.row_block_bytes < 1:
            raise ValueError(f"SpeedPlan.row_block_bytes must be an int >= 1; "
                             f"got {self.row_block_bytes!r}.")
        for name in ("tiny_step_bytes", "pregather_bytes", "gather_block_bytes",
                     "schedule_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SpeedPlan.{name} must be an int >= 0; got {value!r}.")


def auto_or_bool(value, name):
    """``"auto"``, or a bool (Python's or NumPy's) as Python's; anything else
    (``1``, ``"yes"``, ``None``) refused, not taken for true or false."""
    if isinstance(value, str) and value == "auto":
        return "auto"
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f'{name} must be "auto", True or False; got {value!r}.')


CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}
"""Lets XLA:CPU drop a copy of the step counter, so a small step runs as one
sequence of kernels instead of a graph spread over threads (the lesson's loop
runs faster: ``python -m bench.run -k lesson``). Other backends ignore XLA:CPU's
options."""

DEFAULT = SpeedPlan()

MIN_LOOP_WORK = 100_000
"""Below this many multiply-adds of the plain loop (``steps * n * d``) the
moments' fixed cost (two passes, a Cholesky solve, a larger program to
compile) is not repaid: on the lesson itself (n = 100, 100 steps) the plain
loop runs as fast and compiles in about half the time."""


def moments_pay(n, d, steps):
    """The cost model of ``exact_moments="auto"``: use moments when they are cheaper.

    The moments cost a ``d x d`` Gram matrix (``n d²`` multiply-adds, at
    matmul speed) and a ``d³/3`` solve; the plain loop reads ``X`` twice a
    step (``2 n d`` multiply-adds per step, at memory speed, several times
    slower per operation). Measured by ``bench/investigations/scale_probe.py`` and
    ``python -m bench.run``.

    >>> moments_pay(100, 2, 100), moments_pay(10**6, 2, 100)
    (False, True)
    """
    return d <= 2 * steps and steps * n * d >= MIN_LOOP_WORK


class Problem(NamedTuple):
    """What a call's plan depends on: whether it pays or can run at all."""

    exact_mse: bool  # the loss is the library's own ``linear_mse`` (never guessed)
    params: Any  # the call's params (arrays or shapes)
    data: Any  # the call's data, a tuple of arrays (or shapes)
    full_batch: bool  # every step sees all rows
    steps: int  # updates in the run
    mesh: Any = None  # a ``jax.sharding.Mesh``, or ``None``
    plain_model: bool = True  # ``loss(params, *batch) -> scalar`` (no key, state or aux)
    row: str | None = None  # the row function of a loss the library knows is a mean over
    # rows (by identity, never guessed; ``"auto"``'s one-pass step and the row kernel need it)


def decide(plan, problem):
    """The plan for one call, with ``exact_moments``, ``one_pass`` and
    ``row_kernel`` resolved to bools.

    Args:
      plan: a :class:`SpeedPlan`, or ``None`` for the defaults.
      problem: the call's :class:`Problem`, to judge whether the moments
        and the one-pass step apply and pay (the one-pass step needs a
        plain model).
    """
    if plan is None:
        plan = DEFAULT
    elif not isinstance(plan, SpeedPlan):
        raise TypeError(f"speed must be a functional_sgd.speed.SpeedPlan; got "
                        f"{type(plan).__name__}.")
    use_moments = _use_moments(plan, problem)
    use_kernel = not use_moments and _use_row_kernel(plan, problem)
    use_one_pass = use_kernel or (not use_moments and _use_one_pass(plan, problem))
    if plan is DEFAULT:  # the lesson's warm call takes this shortcut, not a replace
        return _DEFAULT_RESOLVED[use_moments, use_one_pass, use_kernel]
    return dataclasses.replace(plan, exact_moments=use_moments, one_pass=use_one_pass,
                               row_kernel=use_kernel)


def _use_moments(plan, problem):
    wanted = plan.exact_moments
    if wanted is False:
        return False
    one_pass_asked = plan.one_pass is True or plan.row_kernel is True
    if one_pass_asked:  # the caller asked for a step that reads the data: "auto" yields
        if wanted is True:
            raise ValueError("SpeedPlan(exact_moments=True) steps from the data's moments; it "
                             "cannot run with one_pass=True or row_kernel=True, which ask for "
                             "steps that read the data. Set one of them to \"auto\" or False.")
        return False
    exact_mse, params, data, full_batch, steps, mesh = (
        problem.exact_mse, problem.params, problem.data, problem.full_batch, problem.steps,
        problem.mesh)
    # The cheap reasons first.
    if wanted == "auto" and not (exact_mse and full_batch and mesh is None
                                 and len(data) == 2 and len(data[0].shape) == 2
                                 and moments_pay(*data[0].shape, steps)):
        return False
    why_not = _moments.why_not(exact_mse, params, data, full_batch, mesh)
    if wanted is True and why_not is not None:
        raise ValueError(f"SpeedPlan(exact_moments=True) cannot run: {why_not}. Use "
                         "SpeedPlan(exact_moments=\"auto\") to fall back to the plain loop.")
    return why_not is None


ONE_PASS_MIN_BYTES = 32 * 2**20
"""Smallest ``x`` read in one pass under ``one_pass="auto"``: past the last
cache level (32 MiB on the machine measured), where the plain step's second
read of ``x`` comes from memory. Data in cache is read twice faster than
once in blocks (at 1e3 x 1000 the first, copying blocks made the step
slower; ``bench/investigations/one_pass.py`` measures both)."""


def one_pass_pays(x, plan):
    """The rule of ``one_pass="auto"`` for a loss known to be a mean over rows on ``(x, y)``.

    Row-major data (``d > MAX_COLUMNS`` or ``column_major=False``, see
    ``speed/_layout.py``) of at least ``ONE_PASS_MIN_BYTES`` is read faster
    once (at 1e4 x 1000). Data the plain step stores column-major is swept
    about as fast twice as once in blocks (1e5 x 100: level within a busy
    machine's noise), and the blocks cost compile time,
    so ``"auto"`` leaves it to the plain step (``bench/investigations/one_pass.py``).
    """
    if len(x.shape) != 2:
        return False
    n, d = x.shape
    column_major = plan.column_major and 1 < d <= _layout.MAX_COLUMNS
    return not column_major and n * d * x.dtype.itemsize >= ONE_PASS_MIN_BYTES


def _use_one_pass(plan, problem):
    data, full_batch, mesh, plain_model = (problem.data, problem.full_batch, problem.mesh,
                                           problem.plain_model)
    wanted = plan.one_pass
    if wanted is False:
        return False
    if wanted == "auto":
        return bool(problem.row is not None and plain_model and full_batch and mesh is None
                    and len(data) == 2 and one_pass_pays(data[0], plan))
    why_not = _why_not_one_pass(problem)
    if why_not is not None:
        raise ValueError(f"SpeedPlan(one_pass=True) cannot run: {why_not}. Use "
                         "one_pass=\"auto\" or False.")
    return True


def _use_row_kernel(plan, problem):
    """Whether a one-pass step runs in the row kernel: ``"auto"`` on the CPU
    where the one-pass step would run (or ``one_pass=True`` asks for it), the
    kernel can, and it pays (:func:`row_kernel_pays`); ``True`` insists, on
    the CPU or a CUDA GPU (where ``"auto"`` does not take it yet: its speed
    there is unmeasured, ``bench/gpu_ratios.py`` measures it)."""
    wanted = plan.row_kernel
    if wanted is False or plan.one_pass is False:
        if wanted is True:
            raise ValueError("SpeedPlan(row_kernel=True) runs the one-pass step; it cannot "
                             "run with one_pass=False.")
        return False
    platform = _row_kernel.platform_of(problem.data)
    if wanted == "auto" and (problem.row is None or platform != "cpu" or not problem.data or not (
            plan.one_pass is True or row_kernel_pays(problem.data[0]))):
        return False  # the cheap reasons first: most calls stop here
    why_not = (_row_kernel.why_not(problem.row, problem.params, problem.data)
               or _why_not_one_pass(problem))
    if wanted == "auto":
        if why_not is not None:
            return False
        built = _row_kernel.build()
        if built.why_not is not None:
            _row_kernel.warn_unbuilt(built.why_not)
        return built.why_not is None
    if why_not is None:
        why_not = (_row_kernel.build().why_not if platform == "cpu" else
                   _row_kernel.why_not_gpu(problem.params, problem.data) if platform == "gpu"
                   else f"it runs on a CPU or a CUDA GPU; the data is on {platform!r}")
    if why_not is not None:
        raise ValueError(f"SpeedPlan(row_kernel=True) cannot run: {why_not}. Use "
                         "row_kernel=\"auto\" or False.")
    return True


ROW_KERNEL_MIN_ROW_BYTES = 64
"""Shortest row ``row_kernel="auto"`` takes the kernel for: one chunk of the
kernel's (``kChunk`` in ``speed/_row_kernel.cc``, 16 float32 values). It
takes rows of 1 to 16 chunks a tile at a time; shorter rows go one at a
time, slower than the plain step (the figures are in
``docs/explanations/time.md``)."""


def row_kernel_pays(x: Any) -> bool:
    """The rule of ``row_kernel="auto"`` where ``one_pass`` is ``"auto"``, for
    data ``x`` (for ``linear_mse``, ``mnist_loss`` and the binary
    cross-entropy alike, in either layout): data past the last cache level
    (:data:`ONE_PASS_MIN_BYTES`; in cache the plain step's two reads are
    faster) in rows of at least :data:`ROW_KERNEL_MIN_ROW_BYTES`
    (``bench/investigations/one_pass.py`` measures each; the figures are in
    ``docs/explanations/time.md``).
    """
    if len(x.shape) != 2:
        return False
    n, d = x.shape
    itemsize = _row_kernel.dtype_in_jax(x).itemsize  # NumPy float64 runs as float32 without x64
    return n * d * itemsize >= ONE_PASS_MIN_BYTES and d * itemsize >= ROW_KERNEL_MIN_ROW_BYTES


def _why_not_one_pass(problem):
    """Why a one-pass step cannot run for ``problem``, or ``None``."""
    return ("Run(mesh=) splits the rows itself" if problem.mesh is not None else
            "it is full-batch only (no batch_size, no Schedule)" if not problem.full_batch
            else "the model has parts (Model(rng=, state=, has_aux=, trainable=))"
            if not problem.plain_model else "there are no rows (data is empty)"
            if not problem.data else None)


_DEFAULT_RESOLVED = {(moments, one, kernel): dataclasses.replace(
    DEFAULT, exact_moments=moments, one_pass=one, row_kernel=kernel)
    for moments in (False, True) for one in (False, True) for kernel in (False, True)}
"""The default plan resolved each way, built once."""
