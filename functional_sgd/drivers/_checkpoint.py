"""Checkpoints: a chunked run writes its state after every chunk and resumes from it.

``fit(..., run=Run(chunk_size=K, checkpoint=path))`` writes, after every chunk of K
steps, everything the rest of the run depends on: params, optimizer state,
the model's state, steps done (hence the global step and the position in the
key's schedule and in ``rng``'s keys, both pure functions of ``(key, step)``),
the loss (and aux) history so far, the evaluations of held-out data so far
and the best params among them (``restore_best``), and the stop rule's
memory (best loss or monitored value, steps or evaluations since it,
whether it fired). Started
again with the same arguments, ``fit`` finds the file, checks that it belongs
to this run and continues: the result has exactly the bits of an
uninterrupted run. On a GPU that holds when XLA compiles deterministically:
set ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` before JAX starts, in the
run and in its resumption. Without it XLA:GPU autotunes (picks a matmul or
reduction kernel by timing it), so two processes, or a chunk and a whole
run, may pick kernels that sum in another order and differ by rounding.

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
...                        steps=100, run=fsgd.Run(chunk_size=50, checkpoint=path))
>>> first, again = run(), run()  # the second call finds the finished run's checkpoint
>>> bool((first.params == again.params).all()), int(again.step)
(True, 100)
>>> os.remove(path)
"""

import dataclasses
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Started
from ._chunks import (
    Evaluations,
    eval_count,
    evaluations_of,
    is_key,
    on_host,
    record_of,
    run_in_chunks,
)
from ._fingerprint import describe
from ._periods import period_means

FORMAT = "functional-sgd checkpoint"
VERSION = 3  # 3: evaluations and the best params so far


def run_with_checkpoints(path, run, started, *, chunks, on_chunk=None, source=None):
    """``chunks`` of ``started`` (a ``Started``: spec, carry, inputs), resuming
    from ``path`` and writing it after every chunk.

    The spec, the carry and the inputs decide the run's bits; a checkpoint
    written by a run that differs in them is refused.

    ``chunks(run, started, on_chunk=..., done=...)`` runs the ``Started``
    steps left (``done`` of them already in the checkpoint) in chunks
    (:func:`in_chunks_of` for :func:`run_in_chunks`); data read on the host
    passes its own, and describes itself in ``source`` for the fingerprint.
    A run of unknown length (``spec.steps`` None, a stream) ends when
    ``chunks`` does.
    """
    spec, carry, inputs = started
    check_path(path)
    if spec.record_params:
        raise ValueError("checkpoint does not store the parameter trajectory; drop "
                         "Run(record_params=True), or Run(checkpoint=) (and keep record_params).")
    carry = carry._replace(step=int(carry.step))
    opt_spec = carry.opt_state
    if opt_spec is None and spec.optimizer is not None:
        opt_spec = jax.eval_shape(spec.init_optimizer, carry.params)
    expected = _fingerprint(spec, carry._replace(opt_state=opt_spec), inputs)
    if source is not None:
        expected["source"] = source
    done, history, aux_history, eval_history = 0, [], [], []
    if os.path.exists(path):
        saved = _read(path, expected)
        done, history = saved["done"], [saved["losses"]]
        params, opt_state, state, best = jax.tree.unflatten(
            jax.tree.structure((carry.params, opt_spec, carry.state, carry.best)),
            saved["leaves"])
        if saved["evals"] is not None:
            eval_history.append(saved["evals"])
        carry = carry._replace(params=params, opt_state=opt_state, state=state, best=best,
                               stop=carry.stop._replace(best=saved["best"],
                                                        waited=saved["waited"],
                                                        stopped=saved["stopped"]))
        if saved["aux"]:  # flat leaves: their structure is that of the loop's aux
            aux_spec = jax.eval_shape(
                lambda carry, inputs: run(dataclasses.replace(spec, steps=1), carry,
                                          inputs)[1].aux, carry, inputs)
            aux_history.append(jax.tree.unflatten(jax.tree.structure(aux_spec),
                                                  saved["aux"]))

    def run_and_save(spec, carry, inputs):
        carry, record = run(spec, carry, inputs)
        steps_run = int(record.steps_run)
        history.append(np.asarray(record.losses)[:steps_run])
        aux_history.append(jax.tree.map(lambda a: on_host(lambda a: a[:steps_run], a),
                                        record.aux))
        made = evaluations_of([record])
        if made is not None:
            eval_history.append(made)
        if jax.process_index() == 0:  # every process holds the same replicated state
            losses, aux = np.concatenate(history), _joined(aux_history)
            _write(path, expected, carry, losses, aux, _with_period_means(
                _joined(eval_history), losses, aux, expected["start_step"], history))
        return carry, record

    steps = spec.steps
    if (steps is None or done < steps) and not bool(carry.stop.stopped):
        rest = inputs if inputs.indices is None else inputs._replace(
            indices=inputs.indices[done:])
        carry = carry._replace(step=np.int32(carry.step + done))
        left = Started(spec.part(done, None if steps is None else steps - done), carry, rest)
        carry, _ = chunks(run_and_save, left, on_chunk=on_chunk, done=done)
    losses = np.concatenate(history)  # the checkpointed prefix and the steps run now
    steps = losses.shape[0] if steps is None else steps
    start_step = expected["start_step"]
    carry = carry._replace(step=np.int32(start_step + losses.shape[0]))
    evaluations = _joined(eval_history)
    if evaluations is None and spec.evaluation is not None:  # none made yet
        evaluations = ({}, np.zeros(0, np.int32))
    return jax.device_put(carry), record_of(
        losses, steps, None, _joined(aux_history),
        Evaluations(evaluations, eval_count(spec), start_step, _cuts(history)))


def _cuts(history):
    """Where the pieces of ``history`` meet: a saved prefix is one piece
    (its own periods' means were taken whole when it was written)."""
    return np.cumsum([piece.shape[0] for piece in history])[:-1]


def _with_period_means(evaluations, losses, aux, start, history):
    """Evaluations so far, each period spanning pieces with its training
    means taken over the losses so far (see ``period_means``)."""
    if evaluations is None:
        return None
    evals, eval_steps = evaluations
    return period_means(evals, eval_steps, losses, aux, start, _cuts(history)), eval_steps


def _joined(history):
    """A history of pieces (each a pytree of arrays: aux, or evaluations)
    as one, each leaf concatenated (``None`` for no pieces)."""
    if not history:
        return None
    return jax.tree.map(lambda *paths: on_host(lambda *ps: np.concatenate(ps), *paths), *history)


def in_chunks_of(chunk_size):
    """The ``chunks`` of :func:`run_with_checkpoints` that runs
    :func:`run_in_chunks` of ``chunk_size``."""
    def chunks(run, started, *, on_chunk, done):
        return run_in_chunks(run, started, chunk_size=chunk_size, on_chunk=on_chunk)
    return chunks


def check_path(path, name="checkpoint", *, existing=False):
    """``path`` as a string, after refusing one that could not be written
    (before the first chunk runs), or with ``existing`` one that is no
    file; a path to write also has the temporary files that killed runs
    left beside it removed. ``name``: the argument's name in messages."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path; got {type(path).__name__}.")
    path = os.fspath(path)
    if not path or path.endswith(os.sep):
        raise ValueError(f"{name} must name a file, e.g. 'run.npz'; got {path!r}.")
    if os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a folder; name a file in it, e.g. "
                         f"{os.path.join(path, 'run.npz')!r}.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{name} {path!r} is not a regular file (a device, a pipe or a "
                         "socket): a checkpoint is a file that fit writes anew after every "
                         "chunk and reads back to resume. Name a regular file, e.g. 'run.npz'.")
    if existing:
        if not os.path.exists(path):
            raise ValueError(f"{name} {path!r} does not exist; pass a file that was written.")
        return path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {path!r}: its folder {directory!r} does not exist; "
                         "create it first.")
    prefix = os.path.basename(path) + "."
    for name in os.listdir(directory):  # orphans of killed runs: *.tmp of this name
        if name.startswith(prefix) and name.endswith(".tmp") and \
                len(name) - len(prefix) - len(".tmp") == _TEMPORARY_NAME_LENGTH:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    try:
        handle, probe = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except OSError as error:
        raise ValueError(f"{name} {path!r} cannot be written: {error.strerror} in "
                         f"{directory!r}.") from None
    os.close(handle)
    os.unlink(probe)
    return path


_TEMPORARY_NAME_LENGTH = 8
"""Characters ``tempfile.mkstemp`` puts between the prefix and the suffix."""


def _fingerprint(spec, carry, inputs):
    """What must match between a checkpoint and the run that resumes from it:
    every field of the spec (a new field is covered without an edit here;
    the loss and optimizer by code and hyperparameters), where and from
    which params (and model state) the run starts, and the inputs' values."""
    return {
        **_flat(spec),
        "rows": [[list(a.shape), str(jnp.result_type(a))] for a in inputs.data],
        "data": [describe(a) for a in inputs.data],
        "start_step": int(carry.step),
        "lr": None if inputs.lr is None else float(inputs.lr),
        "tol": None if inputs.tol is None else float(inputs.tol),
        "patience": None if inputs.patience is None else int(inputs.patience),
        "key": None if inputs.key is None else _key_words(inputs.key),
        "rng": None if inputs.rng is None else _key_words(inputs.rng),
        "indices": None if inputs.indices is None else describe(
            np.asarray(inputs.indices, np.int64)),
        "params": _specs(carry.params),
        "start params": [describe(a) for a in jax.tree.leaves(carry.params)],
        "opt_state": _specs(carry.opt_state),
        "start opt_state": [describe(a) for a in jax.tree.leaves(carry.opt_state)
                            if not isinstance(a, jax.ShapeDtypeStruct)],
        "state": _specs(carry.state),
        "start state": [describe(a) for a in jax.tree.leaves(carry.state)],
        "best": _specs(carry.best),
        "eval_data": [describe(a) for a in inputs.eval_data],
    }


def _key_words(key):
    if not is_key(key):
        return np.asarray(key).tolist()  # a legacy uint32[2] key
    return describe(key)


def _flat(spec, prefix=""):
    """The spec's fields by name, the fields of its dataclass fields flattened
    (``batches.batch_size``), so a mismatch names the field that differs."""
    flat = {prefix + "kind": type(spec).__name__} if prefix else {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if dataclasses.is_dataclass(value) and not callable(value):
            flat.update(_flat(value, f"{prefix}{field.name}."))
        else:
            flat[prefix + field.name] = describe(value)
    return flat


ADDED_FIELDS = {"plan.row_kernel": False}
"""Fingerprint fields added since checkpoints were first written, each with
the value an older checkpoint's run had in effect (it had no such choice)."""


def _saved_field(saved, name):
    """Field ``name`` of a checkpoint's fingerprint; for a field it predates,
    the value its run had in effect (:data:`ADDED_FIELDS`)."""
    if name not in saved and name in ADDED_FIELDS:
        return describe(ADDED_FIELDS[name])
    return saved.get(name)


def _difference(name, saved, value):
    if len(repr(saved)) + len(repr(value)) <= 160:
        return f"{name}: checkpoint has {saved!r}, this run has {value!r}"
    return f"{name} differs"


def without_addresses(text):
    """``text`` without the ``at 0x...`` of default reprs, which differ from
    one process to the next (a model's static leaves may hold such objects)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _specs(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return {"tree": without_addresses(str(treedef)),
            "leaves": [f"{jnp.result_type(a)}{list(np.shape(a))}" for a in leaves]}


def _write(path, fingerprint, carry, losses, aux=None, evaluations=None):
    stop_state = carry.stop
    leaves = jax.tree.leaves((carry.params, carry.opt_state, carry.state, carry.best))
    aux_leaves = jax.tree.leaves(aux)
    arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)}
    arrays.update({f"aux_{i}": a for i, a in enumerate(aux_leaves)})
    arrays, keys = keys_as_bits(arrays)
    evals, eval_steps = evaluations if evaluations is not None else ({}, None)
    names = sorted(evals)
    arrays.update({f"eval_{i}": evals[name] for i, name in enumerate(names)})
    if eval_steps is not None:
        arrays["eval_steps"] = eval_steps.astype(np.int32)
    arrays.update(losses=losses, best=np.asarray(stop_state.best),
                  waited=np.asarray(stop_state.waited, np.int32))
    header = {"format": FORMAT, "version": VERSION, "run": fingerprint,
              "done": int(losses.shape[0]), "stopped": bool(stop_state.stopped),
              "dtypes": {name: str(a.dtype) for name, a in arrays.items()},
              "keys": keys,
              "aux": [list(np.shape(a)) for a in aux_leaves],
              "evals": None if eval_steps is None else names,
              "eval_shapes": [list(np.shape(evals[name])[1:]) for name in names]}
    write_atomically(path, {"header": np.array(json.dumps(header)), **as_raw_bytes(arrays)})


def keys_as_bits(arrays):
    """``(arrays, keys)``: named arrays as NumPy, PRNG keys (a model's frozen
    leaves, say) as their bits; ``keys`` maps their names to ``[impl, shape
    of the bits]`` for :func:`from_raw_bytes`."""
    keys = {name: str(jax.random.key_impl(a)) for name, a in arrays.items() if is_key(a)}
    arrays = {name: np.asarray(jax.random.key_data(a) if name in keys else a)
              for name, a in arrays.items()}
    return arrays, {name: [impl, list(arrays[name].shape)] for name, impl in keys.items()}


def as_raw_bytes(arrays):
    """Named arrays as raw bytes: ``.npz`` has no bfloat16, and bytes round-trip
    every dtype."""
    return {name: np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
            for name, a in arrays.items()}


def from_raw_bytes(data, dtype, shape, key=None):
    """The array :func:`as_raw_bytes` stored as ``data`` (``key``: its entry
    of :func:`keys_as_bits`' ``keys``, for a PRNG key); ``ValueError`` when
    the bytes do not make a ``dtype[shape]``."""
    if key is not None:
        impl, shape = key
    dtype = jnp.dtype(dtype)
    if data.dtype != np.uint8 or data.size != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{data.size} bytes are not a {dtype}{list(shape)}")
    array = np.frombuffer(data.tobytes(), dtype).reshape(shape)
    return array if key is None else jax.random.wrap_key_data(array, impl=impl)


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


class _Corrupt(Exception):
    pass


def _read(path, expected):
    """The saved state, after checking the file is whole and belongs to this run."""
    try:
        header, contents = read_archive(path)
        if not isinstance(header, dict) or header.get("format") != FORMAT \
                or header.get("version") != VERSION:
            raise _NotACheckpoint
    except _NotACheckpoint:
        raise ValueError(f"{path} is not a {FORMAT} (version {VERSION}) and was not "
                         "loaded; pass another path.") from None
    except Exception as error:  # zipfile, zlib and json each fail their own way
        raise _corrupt(path, error) from error
    saved = header.get("run")
    if not isinstance(saved, dict):
        raise _corrupt(path, "its header has no run")
    differences = [_difference(name, _saved_field(saved, name), value)
                   for name, value in expected.items() if _saved_field(saved, name) != value]
    if differences:
        raise ValueError(f"checkpoint {path} was written by another run and was not "
                         "loaded; " + "; ".join(differences) +
                         ". Resume with the same arguments, or pass another path.")
    try:
        return _state(header, contents, expected)
    except Exception as error:
        raise _corrupt(path, error) from error


def read_archive(path):
    """``(header, arrays)`` of an ``.npz`` written by :func:`write_atomically`
    with a JSON ``header``; raises what ``zipfile``, ``zlib`` or ``json`` raise
    for a file that is not one."""
    with np.load(path, allow_pickle=False) as archive:
        contents = {name: archive[name] for name in archive.files}
    return json.loads(str(contents.pop("header"))), contents


def _state(header, contents, expected):
    """The arrays of a checkpoint whose run matched, each checked against
    the shape and dtype this run expects."""
    done, stopped, dtypes = header["done"], header["stopped"], header["dtypes"]
    most = _MAX_STEPS if expected["steps"] is None else expected["steps"]
    if type(done) is not int or not 0 <= done <= most:
        raise _Corrupt(f"done={done!r} is not a step count in [0, {most}]")
    if type(stopped) is not bool or not isinstance(dtypes, dict):
        raise _Corrupt("stopped or dtypes has the wrong type")

    def leaf(name, shape, key=None):
        try:
            return from_raw_bytes(contents[name], dtypes[name], shape, key)
        except ValueError as error:
            raise _Corrupt(f"{name}: {error}") from None

    def array(name, shape):
        return leaf(name, shape)

    def leaf_or_key(name, shape):
        return leaf(name, shape, header.get("keys", {}).get(name))

    specs = (expected["params"]["leaves"] + expected["opt_state"]["leaves"]
             + expected["state"]["leaves"] + expected["best"]["leaves"])
    evals = None
    if header.get("evals") is not None:
        made = contents["eval_steps"].size // 4
        shapes = header.get("eval_shapes") or [[]] * len(header["evals"])  # array metrics
        evals = ({name: array(f"eval_{i}", (made, *shapes[i]))
                  for i, name in enumerate(header["evals"])}, array("eval_steps", (made,)))
    return {"done": done, "losses": array("losses", (done,)), "best": array("best", ()),
            "waited": array("waited", ()), "stopped": np.bool_(stopped),
            "leaves": [leaf_or_key(f"leaf_{i}", json.loads(spec[spec.index("["):]))
                       for i, spec in enumerate(specs)],
            "aux": [leaf_or_key(f"aux_{i}", shape)
                    for i, shape in enumerate(header.get("aux", []))],
            "evals": evals}


_MAX_STEPS = 2**31 - 1
"""The most steps a run of unknown length (a stream) can have checkpointed."""


def saved_run(path):
    """``(steps done, the run's fingerprint)`` of a checkpoint at ``path``,
    ``(0, None)`` when there is none yet, read from its header alone; whether
    it belongs to this run is checked when the run resumes from it. A path
    no checkpoint can be written to is refused here, before any step."""
    check_path(path)
    if not os.path.exists(path):
        return 0, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
        done, run = header["done"], header["run"]
    except Exception as error:
        raise _corrupt(path, error) from error
    if type(done) is not int or done < 0 or not isinstance(run, dict):
        raise _corrupt(path, f"done={done!r}")
    return done, run


def _corrupt(path, error):
    what = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else error
    return ValueError(f"checkpoint {path} is corrupt or truncated and was not loaded "
                      f"({what}); delete it to start the run afresh.")
