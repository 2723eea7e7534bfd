"""One of several processes of a data-parallel ``fit`` under ``jax.distributed``.

``python tests/multiprocess_run.py PROCESS_ID PROCESS_COUNT PORT`` joins the
coordinator at 127.0.0.1:PORT (CPU collectives over gloo), fits the lesson's
line in float64 on a mesh of every device of every process, and prints one
JSON line: the process's view of the run (what each process sees must be the
same). tests/test_multiprocess.py starts it; it is also the example of the
docs' guide docs/how-to/many-devices.md.
"""

import json
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

import functional_sgd as fsgd

STEPS = 80
MODES = {"batch": None, "mini-batch": 10, "stochastic": 1}  # rows a step


def lesson():
    """The same host data in every process (NumPy: jit lays it out on the mesh)."""
    x, y = fsgd.lesson_data(jax.random.key(0), dtype=np.float64)
    return (np.asarray(x), np.asarray(y)), np.array(fsgd.LESSON_START)


def run(mesh=None):
    data, start = lesson()
    results = {}
    for mode, batch_size in MODES.items():
        kwargs = {} if batch_size is None else {"batch_size": batch_size,
                                                "key": jax.random.key(1)}
        result = fsgd.fit(fsgd.linear_mse, start, data, lr=0.1, steps=STEPS, run=fsgd.Run(mesh=mesh),
                          **kwargs)
        results[mode] = {"params": np.asarray(result.params).tolist(),
                         "losses": np.asarray(result.losses).tolist()}
    return results


def main(process_id, process_count, port):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=int(process_count), process_id=int(process_id),
                               initialization_timeout=60)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    with jax.enable_x64(True):
        results = run(mesh)
    print(json.dumps({"process_index": jax.process_index(),
                      "process_count": jax.process_count(),
                      "device_count": jax.device_count(),
                      "local_device_count": jax.local_device_count(), "results": results}),
          flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
