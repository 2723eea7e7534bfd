"""Host-side drivers around the compiled loop: chunks, checkpoints, a device mesh.

Each takes the loop's spec and carry whole (``functional_sgd.core``), and the
loop itself as an argument, so the drivers never import the core.
"""

from ._checkpoint import run_with_checkpoints as run_with_checkpoints
from ._chunks import run_in_chunks as run_in_chunks
from ._fingerprint import describe as describe
from ._mesh import check_mesh as check_mesh
from ._mesh import data_parallel as data_parallel
