"""Checkpoints: resume gives the bits of an uninterrupted run; a run killed
partway resumes; a bad or foreign checkpoint is refused, never loaded."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import checkpoint_run
import functional_sgd as fsgd
from functional_sgd.drivers import _checkpoint
from helpers import (DETERMINISTIC_GPU_FLAG, Crash, assert_same_bits, crash_after,
                     deterministic_backend)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)
KEY = jax.random.key(1)


def fit(**kwargs):
    kwargs = {"lr": 0.1, "steps": 120, "batch_size": 10, "key": KEY, **kwargs}
    return fsgd.fit(fsgd.linear_mse, kwargs.pop("params", START), kwargs.pop("data", (X, Y)),
                    **kwargs)


RESUMABLE = {
    "mini-batch": {},
    "epochs": {"batch_size": 7, "rows": fsgd.Shuffled()},
    "indices": {"key": None, "batch_size": None,
                "rows": fsgd.Schedule(np.asarray(fsgd.sample_indices(KEY, 100, 120, 3)))},
    # patience=25 fires after the crash at step 40, from stop state carried over
    "patience": {"batch_size": 1, "stop": fsgd.Stop(patience=25), "steps": 400},
}


@pytest.mark.parametrize("mode", RESUMABLE)
def test_resume_gives_the_bits_of_an_uninterrupted_run(tmp_path, mode):
    kwargs = RESUMABLE[mode]
    whole = fit(**kwargs)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(run=fsgd.Run(chunk_size=20, on_chunk=crash_after(40), checkpoint=path), **kwargs)
    chunk_starts = []
    resumed = fit(run=fsgd.Run(chunk_size=20, on_chunk=lambda r: chunk_starts.append(int(r.step) - int(r.steps_run)), checkpoint=path), **kwargs)
    assert chunk_starts[0] == 40  # it went on from step 40, not from the start
    assert_same_bits(resumed, whole)
    if mode == "patience":
        assert 40 < int(whole.steps_run) < 400  # the rule fired after the resume
    # A finished run's checkpoint gives its result without running again.
    ran = []
    assert_same_bits(fit(run=fsgd.Run(chunk_size=20, on_chunk=ran.append, checkpoint=path), **kwargs), whole)
    assert ran == []


def test_optimizer_state_is_resumed():
    optax = pytest.importorskip("optax")
    kwargs = {"lr": None, "optimizer": optax.sgd(0.05, momentum=0.9)}
    whole = fit(**kwargs)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"adam-{os.getpid()}.npz")
    try:
        with pytest.raises(Crash):
            fit(run=fsgd.Run(chunk_size=30, on_chunk=crash_after(60), checkpoint=path), **kwargs)
        assert_same_bits(fit(run=fsgd.Run(chunk_size=30, checkpoint=path), **kwargs), whole)
    finally:
        os.remove(path)


@pytest.mark.parametrize("flags", [[], ["--evaluate"]], ids=["loss", "held-out-monitor"])
def test_a_killed_run_resumes_with_the_same_bits(tmp_path, x64, flags):
    if not deterministic_backend():  # three processes compile the run, each autotuning
        pytest.skip(f"bits across processes on {jax.default_backend()} need "
                    f"XLA_FLAGS={DETERMINISTIC_GPU_FLAG} (functional_sgd.drivers._checkpoint)")
    path, out = tmp_path / "run.npz", tmp_path / "out.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, os.path.join(ROOT, "tests", "checkpoint_run.py"),
               str(path), str(out)] + flags
    first = subprocess.Popen(command + ["--slow"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, stderr[-2000:]
    assert path.exists() and not out.exists()  # killed partway, after a checkpoint

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    steps_seen = [int(line) for line in second.stdout.split()]
    assert steps_seen[0] > checkpoint_run.CHUNK  # resumed, not started afresh

    whole = checkpoint_run.run(evaluate=bool(flags))
    with np.load(out) as saved:
        resumed = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert_same_bits(resumed, [np.asarray(leaf) for leaf in jax.tree.leaves(whole)])
    assert int(whole.steps_run) > steps_seen[0]  # the resumed part did real work


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a finished run of ``fit(steps=40, chunk_size=20)``."""
    path = tmp_path / "run.npz"
    fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path))
    return path


MISMATCHES = [
    ({"params": jnp.zeros(3), "data": (jnp.ones((100, 3)), Y)}, r"params: checkpoint has"),
    ({"data": (X[:50], Y[:50])}, r"rows: checkpoint has \[\[\[100, 2\]"),
    ({"data": (X.astype(jnp.bfloat16), Y.astype(jnp.bfloat16)),
      "params": START.astype(jnp.bfloat16)}, r"rows: .*bfloat16.*params: .*bfloat16\[2\]"),
    ({"key": jax.random.key(2)}, r"key: checkpoint has \[0, 1\], this run has \[0, 2\]"),
    ({"lr": 0.2}, r"lr: checkpoint has 0.1, this run has 0.2"),
    ({"steps": 80}, r"steps: checkpoint has 40, this run has 80"),
    ({"batch_size": 5}, r"batch_size: checkpoint has 10, this run has 5"),
]


@pytest.mark.parametrize("change, match", MISMATCHES,
                         ids=[f"{i}-{'-'.join(c)}" for i, (c, _) in enumerate(MISMATCHES)])
def test_a_checkpoint_of_another_run_is_refused(saved, change, match):
    kwargs = {"steps": 40, "run": fsgd.Run(chunk_size=20, checkpoint=saved), **change}
    with pytest.raises(ValueError, match=r"written by another run and was not loaded.*" + match):
        fit(**kwargs)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_refused(saved, damage):
    whole = saved.read_bytes()
    saved.write_bytes({"truncated": whole[:len(whole) // 2], "garbage": b"not a zip" * 50,
                       "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"checkpoint .* is corrupt or truncated"):
        fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=saved))


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, header=np.array('{"format": "something else"}'))
    with pytest.raises(ValueError, match="is not a functional-sgd checkpoint"):
        fit(steps=40, run=fsgd.Run(chunk_size=20, checkpoint=path))


def test_a_crash_mid_write_leaves_the_last_checkpoint(saved, monkeypatch):
    before = saved.read_bytes()

    def crash_while_writing(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.np, "savez", crash_while_writing)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint.write_atomically(saved, {"x": np.zeros(3)})
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]  # no temporary file left behind


@pytest.mark.parametrize("kwargs, error, match", [
    (lambda: {"run": fsgd.Run(checkpoint="run.npz")}, ValueError, "checkpoint needs chunk_size"),
    (lambda: {"run": fsgd.Run(chunk_size=20, checkpoint=3)}, TypeError, "checkpoint must be a file path"),
    (lambda: {"run": fsgd.Run(chunk_size=20, checkpoint="run.npz", record_params=True)}, ValueError,
     "checkpoint does not store the parameter trajectory"),
])
def test_bad_checkpoint_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kwargs = kwargs() if callable(kwargs) else kwargs  # built here
        fit(**kwargs)
