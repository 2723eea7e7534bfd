"""Checkpoints: a chunked run writes its state after every chunk and resumes from it.

``fit(..., chunk_size=K, checkpoint=path)`` writes, after every chunk of K
steps, everything the rest of the run depends on: params, optimizer state,
steps done (hence the global step and the position in the key's schedule,
which is a pure function of ``(key, step)``), the loss history so far and the
stop rule's memory (best loss, steps since it, whether it fired). Started
again with the same arguments, ``fit`` finds the file, checks that it belongs
to this run and continues: the result has exactly the bits of an
uninterrupted run.

Why plain ``.npz``: the state is a handful of small arrays and one JSON
header, which NumPy writes and reads with no new dependency; every member of
the zip carries a CRC-32, so a damaged file fails to load instead of loading
wrong values. orbax would add a large dependency tree for features this state
does not need (async writes, sharded arrays too large for one host).

The write is atomic: a temporary file in the same directory is written,
flushed, ``fsync``-ed and renamed over the old checkpoint (``os.replace``),
so a crash mid-write leaves the previous checkpoint whole. Under
``jax.distributed`` every process writes the same replicated state to
``path``; with a file system shared between hosts the rename keeps that safe.

>>> import os, tempfile, jax, jax.numpy as jnp
>>> import functional_sgd as fsgd
>>> x, y = fsgd.lesson_data(jax.random.key(0))
>>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
>>> run = lambda: fsgd.fit(fsgd.linear_mse, jnp.array(fsgd.LESSON_START), (x, y), lr=0.1,
...                        steps=100, chunk_size=50, checkpoint=path)
>>> first, again = run(), run()  # the second call finds the finished run's checkpoint
>>> bool((first.params == again.params).all()), int(again.step)
(True, 100)
>>> os.remove(path)
"""

import hashlib
import json
import os
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from ._chunks import run_in_chunks, run_result

FORMAT = "functional-sgd checkpoint"
VERSION = 1


def run_with_checkpoints(path, run_chunk, params, opt_state, start_step, indices,
                         stop_state, *, steps, chunk_size, on_chunk, record_params, run):
    """``run_in_chunks`` that resumes from ``path`` and writes it after every chunk.

    ``run`` holds the arguments that decide the run's bits (data, lr, key,
    schedule, stop rule, optimizer); a checkpoint written with others is refused.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path; got {type(path).__name__}.")
    if record_params:
        raise ValueError("checkpoint does not store the parameter trajectory; drop "
                         "record_params, or checkpoint (and keep record_params).")
    start_step = int(start_step)
    opt_spec = opt_state
    if opt_state is None and run["optimizer"] is not None:
        opt_spec = jax.eval_shape(run["optimizer"].init, params)
    expected = _fingerprint(run, params, opt_spec, indices, start_step, steps)
    done, history = 0, []
    if os.path.exists(path):
        saved = _read(path, expected)
        done, history = saved["done"], [saved["losses"]]
        params, opt_state = jax.tree.unflatten(jax.tree.structure((params, opt_spec)),
                                               saved["leaves"])
        stop_state = stop_state._replace(best=saved["best"], waited=saved["waited"],
                                         stopped=saved["stopped"])

    def run_and_save(params, *, indices, opt_state, start_step, stop_state, steps):
        result, stop_state = run_chunk(params, indices=indices, opt_state=opt_state,
                                       start_step=start_step, stop_state=stop_state,
                                       steps=steps)
        history.append(np.asarray(result.losses)[:int(result.steps_run)])
        _write(path, expected, result.params, result.opt_state, np.concatenate(history),
               stop_state)
        return result, stop_state

    if done < steps and not bool(stop_state.stopped):
        rest = None if indices is None else indices[done:]
        last = run_in_chunks(run_and_save, params, opt_state, start_step + done, rest,
                             stop_state, steps=steps - done, chunk_size=chunk_size,
                             on_chunk=on_chunk, record_params=False)
        params, opt_state = last.params, last.opt_state
    losses = np.concatenate(history)  # the checkpointed prefix and the steps run now
    return run_result(params, opt_state, np.int32(start_step + losses.shape[0]), losses,
                      steps)


def _fingerprint(run, params, opt_state, indices, start_step, steps):
    """What must match between a checkpoint and the run that resumes from it."""
    key = run["key"]
    if key is not None and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return {
        "rows": [[list(a.shape), str(jnp.result_type(a))] for a in run["data"]],
        "steps": steps, "start_step": start_step, "batch_size": run["batch_size"],
        "replace": run["replace"],
        "lr": None if run["lr"] is None else float(run["lr"]),
        "tol": None if run["tol"] is None else float(run["tol"]),
        "patience": None if run["patience"] is None else int(run["patience"]),
        "key": None if key is None else np.asarray(key).tolist(),
        "indices": None if indices is None else hashlib.sha256(
            np.ascontiguousarray(np.asarray(indices, np.int64)).tobytes()).hexdigest(),
        "params": _specs(params),
        "opt_state": _specs(opt_state),
    }


def _specs(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return {"tree": str(treedef),
            "leaves": [f"{jnp.result_type(a)}{list(np.shape(a))}" for a in leaves]}


def _write(path, fingerprint, params, opt_state, losses, stop_state):
    leaves = jax.tree.leaves((params, opt_state))
    arrays = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)}
    arrays.update(losses=losses, best=np.asarray(stop_state.best),
                  waited=np.asarray(stop_state.waited, np.int32))
    header = {"format": FORMAT, "version": VERSION, "run": fingerprint,
              "done": int(losses.shape[0]), "stopped": bool(stop_state.stopped),
              "dtypes": {name: str(a.dtype) for name, a in arrays.items()}}
    # Stored as raw bytes: .npz has no bfloat16, and bytes round-trip every dtype.
    raw = {name: np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
           for name, a in arrays.items()}
    write_atomically(path, {"header": np.array(json.dumps(header)), **raw})


def write_atomically(path, arrays):
    """Writes ``arrays`` as ``.npz`` to ``path``, or leaves the old file untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                                         suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes the file private (0o600)
            os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory_handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _NotACheckpoint(Exception):
    pass


def _read(path, expected):
    """The saved state, after checking the file is whole and belongs to this run."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
        header = json.loads(str(contents.pop("header")))
        if not isinstance(header, dict) or header.get("format") != FORMAT \
                or header.get("version") != VERSION:
            raise _NotACheckpoint
        raw = {name: (contents[name], jnp.dtype(dtype))
               for name, dtype in header["dtypes"].items()}
    except _NotACheckpoint:
        raise ValueError(f"{path} is not a {FORMAT} (version {VERSION}) and was not "
                         "loaded; pass another path.") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated and was not loaded "
            f"({type(error).__name__}: {error}); delete it to start the run afresh.") \
            from error
    saved = header["run"]
    differences = [f"{name}: checkpoint has {saved.get(name)!r}, this run has {value!r}"
                   for name, value in expected.items() if saved.get(name) != value]
    if differences:
        raise ValueError(f"checkpoint {path} was written by another run and was not "
                         "loaded; " + "; ".join(differences) +
                         ". Resume with the same arguments, or pass another path.")

    def array(name, shape):
        data, dtype = raw[name]
        if data.dtype != np.uint8 or data.size != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"checkpoint {path} is corrupt: {name} holds {data.size} "
                             f"bytes, not a {dtype}{list(shape)}; delete it.")
        return np.frombuffer(data.tobytes(), dtype).reshape(shape)

    specs = saved["params"]["leaves"] + saved["opt_state"]["leaves"]
    leaves = [array(f"leaf_{i}", json.loads(spec[spec.index("["):]))
              for i, spec in enumerate(specs)]
    done = header["done"]
    return {"done": done, "losses": array("losses", (done,)), "best": array("best", ()),
            "waited": array("waited", ()), "stopped": np.bool_(header["stopped"]),
            "leaves": leaves}
