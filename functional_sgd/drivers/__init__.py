"""Host-side drivers around the compiled loop: chunks, checkpoints, a device mesh.

Each takes the loop's spec and carry whole (``functional_sgd.core``), and the
loop itself as an argument, so the drivers never import the core.
"""

from ._blocks import Stream as Stream
from ._blocks import as_host_array as as_host_array
from ._blocks import first_batch as first_batch
from ._blocks import gathered_blocks as gathered_blocks
from ._blocks import run_in_blocks as run_in_blocks
from ._blocks import stream as stream
from ._blocks import stream_blocks as stream_blocks
from ._checkpoint import in_chunks_of as in_chunks_of
from ._checkpoint import run_with_checkpoints as run_with_checkpoints
from ._checkpoint import saved_run as saved_run
from ._chunks import DIVERGED_GROWTH as DIVERGED_GROWTH
from ._chunks import diverged as diverged
from ._chunks import run_in_chunks as run_in_chunks
from ._fingerprint import describe as describe
from ._mesh import check_mesh as check_mesh
from ._mesh import data_parallel as data_parallel
from ._mesh import real_rows_sum as real_rows_sum
from ._saved import Saved as Saved
from ._saved import load as load
from ._saved import save as save
from ._periods import TRAIN as TRAIN
from ._periods import PeriodHook as PeriodHook
from ._periods import asks_to_stop as asks_to_stop
from ._periods import aux_metrics as aux_metrics
from ._periods import check_tqdm as check_tqdm
from ._periods import period_chunks as period_chunks
from ._periods import period_means as period_means
from ._periods import progress as progress
