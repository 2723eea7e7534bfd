"""Choices that make the loop fast, each one switchable, decided in one place.

:class:`SpeedPlan` names them and :func:`decide` resolves one for a call;
the modules below hold the mechanisms: ``_moments`` (full-batch MSE from
sufficient statistics), ``_one_pass`` (full batch in row blocks, one read
of the data a step), ``_layout`` (column-major data, sums as dots) and
``_row_kernel`` (the one-pass step of the library's row-mean losses as a
compiled CPU kernel) and ``_cpu`` (the opt-in process-wide CPU set-up,
:func:`tune_cpu`).
"""

from ._cpu import tune_cpu as tune_cpu
from ._layout import column_major as column_major
from ._moments import moments as moments
from ._moments import quadratic_mse as quadratic_mse
from ._one_pass import MAX_BLOCKS as MAX_BLOCKS
from ._one_pass import one_pass as one_pass
from ._plan import CPU_COMPILER_OPTIONS as CPU_COMPILER_OPTIONS
from ._plan import Problem as Problem
from ._plan import SpeedPlan as SpeedPlan
from ._plan import decide as decide
from ._plan import moments_pay as moments_pay
from ._plan import one_pass_pays as one_pass_pays
from ._plan import row_kernel_pays as row_kernel_pays
from ._row_kernel import build as build_row_kernel
from ._row_kernel import row_kernel as row_kernel
