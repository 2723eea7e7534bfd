"""The speed plan: every choice that makes the loop fast, made in one place.

A :class:`SpeedPlan` names each choice; each can be switched off. ``fit``
takes one (``speed=``), resolves what ``"auto"`` means for the call at hand
with :func:`decide`, and puts the result in the loop's compile-time spec.
None of these choices changes what is computed, only how: results agree
with the plain loop to rounding (the exact-moments path) or to the bit
(the rest keep params' bits; see each module).
"""

import dataclasses

from . import _moments


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
      schedule_budget: row indices a keyed schedule may hold at once; longer
        ones are drawn a chunk at a time inside the loop.
      cpu_compiler_options: compile a top-level loop with
        :data:`CPU_COMPILER_OPTIONS` (other backends ignore them).

    >>> import jax, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> plain = SpeedPlan(column_major=False, sums_as_dots=False, cpu_compiler_options=False)
    >>> result = fsgd.fit(fsgd.linear_mse, jax.numpy.array(fsgd.LESSON_START), (x, y), lr=0.1,
    ...                   steps=100, speed=plain)
    >>> [round(float(a), 1) for a in result.params]
    [3.1, 2.4]
    """

    exact_moments: object = "auto"
    column_major: bool = True
    sums_as_dots: bool = True
    tiny_step_bytes: int = 256
    pregather_bytes: int = 64 * 2**20
    schedule_budget: int = 1 << 22
    cpu_compiler_options: bool = True

    def __post_init__(self):
        if self.exact_moments not in ("auto", True, False):
            raise ValueError('exact_moments (fast_path) must be "auto", True or False; '
                             f"got {self.exact_moments!r}.")
        for name in ("tiny_step_bytes", "pregather_bytes", "schedule_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SpeedPlan.{name} must be an int >= 0; got {value!r}.")


CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}
"""Lets XLA:CPU drop a copy of the step counter, so a small step runs as one
sequence of kernels instead of a graph spread over threads (the lesson's loop:
122 -> 90 us, median of 30). Other backends ignore XLA:CPU's options."""

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
    slower per operation). Measured by ``bench/scale_probe.py`` and
    ``python -m bench.report``.

    >>> moments_pay(100, 2, 100), moments_pay(10**6, 2, 100)
    (False, True)
    """
    return d <= 2 * steps and steps * n * d >= MIN_LOOP_WORK


def decide(plan, fast_path, *, exact_mse, params, data, full_batch, steps, mesh=None):
    """The plan for one call, with ``exact_moments`` resolved to a bool.

    Args:
      plan: a :class:`SpeedPlan`, or ``None`` for the defaults.
      fast_path: ``fit``'s own switch for the exact-moments path; anything
        but ``"auto"`` overrides the plan's ``exact_moments``.
      exact_mse: whether the loss is the library's own ``linear_mse`` (an
        arbitrary loss is never guessed to be an MSE).
      params, data, full_batch, steps, mesh: the call's, to judge whether
        the moments apply and pay.
    """
    if plan is None:
        plan = DEFAULT
    elif not isinstance(plan, SpeedPlan):
        raise TypeError(f"speed must be a functional_sgd.speed.SpeedPlan; got "
                        f"{type(plan).__name__}.")
    if fast_path not in ("auto", True, False):
        raise ValueError(f'fast_path must be "auto", True or False; got {fast_path!r}.')
    wanted = plan.exact_moments if fast_path == "auto" else fast_path
    if wanted is False:
        return plan if plan.exact_moments is False else dataclasses.replace(
            plan, exact_moments=False)
    # The cheap reasons first: a warm call on the lesson pays ~0.3 us here.
    if wanted == "auto" and not (exact_mse and full_batch and mesh is None
                                 and len(data) == 2 and len(data[0].shape) == 2
                                 and moments_pay(*data[0].shape, steps)):
        return _NO_MOMENTS if plan is DEFAULT else dataclasses.replace(plan, exact_moments=False)
    why_not = _moments.why_not(exact_mse, params, data, full_batch, mesh)
    if wanted is True and why_not is not None:
        raise ValueError(f"fast_path=True cannot run: {why_not}. Use fast_path=\"auto\" "
                         "to fall back to the plain loop.")
    return dataclasses.replace(plan, exact_moments=why_not is None)


_NO_MOMENTS = dataclasses.replace(DEFAULT, exact_moments=False)
"""The default plan without moments, built once: the lesson's warm call asks for it."""
