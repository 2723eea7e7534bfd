"""The row kernel: the library's row-mean losses stepped in one read of ``x``, on CPU.

Tolerances, and why: the kernel sums the same per-row terms as XLA in
another order (rows in lanes, each row's score in partial sums), with its
own ``exp`` and ``log1p`` (the C library's) where XLA has its own.
* One value and gradient: float64 1e-12 relative (measured ~1e-15);
  float32 2e-5 relative to the value, and to the gradient's largest entry
  (sums of n terms lose about ``sqrt(n)`` ulps).
* A fit of 40 steps against the plain step: float32 2e-5 on params and
  losses, as ``test_one_pass.py`` bounds the row blocks (~1e-7 of
  reordered sums a step, damped by a stable descent).
"""

import json
import os
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close

import functional_sgd as fsgd
from functional_sgd import speed
from functional_sgd.drivers import _checkpoint
from functional_sgd.lesson._classify import LOSSES
from functional_sgd.speed import SpeedPlan, _row_kernel

KERNEL = SpeedPlan(exact_moments=False, one_pass=True, row_kernel=True)
PLAIN = SpeedPlan(exact_moments=False, one_pass=False)
ROWS = {"linear_mse": "squared_error", "mnist": "mnist_distance",
        "cross-entropy": "logistic_cross_entropy"}
STEPS = 40


@pytest.fixture(autouse=True)
def built():
    """Every test here needs the CPU kernel, and runs on a CPU device (a GPU
    machine's too: the GPU kernel's speed and agreement there are
    ``bench/gpu_ratios.py``'s). Only a machine without a C++ compiler (or
    FFI headers) skips them; a compiler that fails on the source fails them."""
    why_not = _row_kernel.build().why_not
    if why_not is not None and why_not.startswith(("no C++ compiler", "no FFI headers")):
        pytest.skip(f"the row kernel cannot be built here: {why_not}")
    assert why_not is None, why_not
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def loss_of(name):
    return fsgd.linear_mse if name == "linear_mse" else LOSSES[name]


def problem(name, n, d, dtype, seed=0):
    """Uniform ``x``; real targets for ``linear_mse``, 0/1 for the classifier's
    losses; small random params (so no score is exactly 0)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d)).astype(dtype)
    w = rng.normal(size=d).astype(dtype)
    if name == "linear_mse":
        y = (x @ w + rng.uniform(0, 1, n)).astype(dtype)
        return (0.1 * w).astype(dtype), (x, y)
    y = (x @ w > 0).astype(dtype)
    return ((0.1 * w).astype(dtype), dtype(0.3)), (x, y)


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d", [(1, 3), (7, 3), (1000, 3), (5000, 40), (333, 257)])
def test_the_kernel_gives_the_value_and_gradient_of_each_row_mean(name, dtype, n, d, request):
    """Short rows (a tile of 16 at a time, with a remainder) and long ones
    (over 16 chunks of 64 bytes, one at a time), one lane or many."""
    if dtype == np.float64:
        request.getfixturevalue("x64")
    loss = loss_of(name)
    params, data = problem(name, n, d, dtype)
    stepped, kept = speed.row_kernel(loss, ROWS[name], params, data)
    assert kept[0] is data[0]  # read where it is
    value, grad = jax.jit(jax.value_and_grad(stepped))(params, *kept)
    want_value, want_grad = jax.value_and_grad(loss)(params, *data)
    assert jax.tree.structure(grad) == jax.tree.structure(want_grad)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    # Relative to the largest entry of the gradient: one entry may be a sum that
    # cancels (the bias's, sigmoid(s) - y over rows) and be far smaller than its terms.
    grad_scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(want_grad))
    for got, want, scale in [(value, want_value, abs(float(want_value))),
                             *((g, w, grad_scale) for g, w in zip(jax.tree.leaves(grad),
                                                                   jax.tree.leaves(want_grad)))]:
        assert got.dtype == want.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("dtype, widths", [
    (np.float32, [1, 15, 16, 17, 31, 32, 33, 100, 255, 256, 257, 1024, 1025]),
    (np.float64, [1, 7, 8, 9, 100, 127, 128, 129, 512, 513])])
def test_every_kind_of_row_counts_each_column_once(name, dtype, widths, request):
    """Short rows are read in chunks of 64 bytes (16 float32, 8 float64 values),
    at most 16 of them, and the last chunk overlaps the one before; rows
    shorter than a chunk or longer than 16 go one at a time, and those of at
    most 64 chunks (4 KB) of a sigmoid loss are scored a row ahead. Widths on
    each side of every such edge, and 53 rows: three tiles of 16 and five
    rows after them."""
    if dtype == np.float64:
        request.getfixturevalue("x64")
    loss = loss_of(name)
    for d in widths:
        params, data = problem(name, 53, d, dtype, seed=d)
        stepped, kept = speed.row_kernel(loss, ROWS[name], params, data)
        got = jax.value_and_grad(stepped)(params, *kept)
        want = jax.value_and_grad(loss)(params, *data)
        rtol = 1e-12 if dtype == np.float64 else 2e-5
        try:
            assert_trees_close(got, want, rtol=rtol, atol=rtol)
        except AssertionError as error:
            raise AssertionError(f"rows of {d} values") from error


@pytest.mark.parametrize("name", ["mnist", "cross-entropy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [40, 300])  # a tile of rows at a time, or one row at a time
def test_scores_far_past_exps_range_give_finite_terms(name, dtype, d, request):
    """Scores up to about ±3000 (exp overflows float32 from 89, float64 from
    710): sigmoid and softplus are taken from exp(-|s|), which never overflows."""
    if dtype == np.float64:
        request.getfixturevalue("x64")
    (w, b), (x, y) = problem(name, 1000, d, dtype)
    params = ((3000 / np.sqrt(d) * w / np.abs(w).max()).astype(dtype), b)
    stepped, kept = speed.row_kernel(LOSSES[name], ROWS[name], params, (x, y))
    value, grad = jax.value_and_grad(stepped)(params, *kept)
    want_value, want_grad = jax.value_and_grad(LOSSES[name])(params, x, y)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((value, grad)))
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    assert_trees_close((value, grad), (want_value, want_grad), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fit_with_the_kernel_equals_the_plain_step(name):
    params, data = problem(name, 1000, 30, np.float32)
    loss = loss_of(name)
    kernel, plain = (fsgd.fit(loss, params, data, lr=0.2, steps=STEPS, run=fsgd.Run(speed=plan))
                     for plan in (KERNEL, PLAIN))
    assert_trees_close((kernel.params, kernel.losses), (plain.params, plain.losses), rtol=2e-5,
                       atol=2e-6)
    assert float(plain.losses[-1]) < float(plain.losses[0])  # it learnt: a real comparison


def test_a_sweep_under_vmap_matches_one_run_per_rate():
    params, data = problem("cross-entropy", 500, 20, np.float32)
    loss = LOSSES["cross-entropy"]
    rates = jnp.array([0.05, 0.2, 1.0])
    swept = jax.jit(jax.vmap(lambda lr: fsgd.fit(loss, params, data, lr=lr, steps=10,
                                                  run=fsgd.Run(speed=KERNEL)).params))(rates)
    for i, lr in enumerate(rates):
        alone = fsgd.fit(loss, params, data, lr=float(lr), steps=10,
                         run=fsgd.Run(speed=KERNEL)).params
        assert_trees_close(jax.tree.map(lambda a: a[i], swept), alone, rtol=1e-6, atol=1e-7)


def test_the_same_call_gives_the_same_bits_and_leaves_the_data_as_it_was():
    """Threads take the lanes in any order; the lanes are added in theirs."""
    params, data = problem("mnist", 20_000, 50, np.float32)
    copies = [a.copy() for a in data]
    runs = [fsgd.fit(LOSSES["mnist"], params, data, lr=0.5, steps=5, run=fsgd.Run(speed=KERNEL))
            for _ in range(3)]
    for run in runs[1:]:
        for got, first in zip(jax.tree.leaves((run.params, run.losses)),
                              jax.tree.leaves((runs[0].params, runs[0].losses))):
            np.testing.assert_array_equal(got, first)
    for kept, copy in zip(data, copies):
        np.testing.assert_array_equal(kept, copy)


def test_a_diverging_run_is_reported_at_the_step_the_plain_step_reports():
    params, data = problem("linear_mse", 200, 5, np.float32)
    kernel, plain = (fsgd.fit(fsgd.linear_mse, params, data, lr=50.0, steps=60,
                              run=fsgd.Run(speed=plan)) for plan in (KERNEL, PLAIN))
    assert plain.diverged_at is not None
    assert kernel.diverged_at == plain.diverged_at


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("row, column", [(3, 5), (3, 19), (50, 5)])
def test_a_value_that_is_not_finite_spreads_as_in_the_plain_step(name, bad, row, column):
    """Rows of 20 float32 values: the last chunk re-reads columns 4-15 with
    weight 0, where an infinite value makes the score NaN, and the kernel
    takes that row's score again; column 19 is read once. Row 3 is in a
    tile, row 50 after the last one. Which of the value and the gradient's
    entries are finite is the plain step's: the lesson's ``mnist_loss`` of
    a score of +-inf is finite, only that column's gradient is not."""
    params, (x, y) = problem(name, 53, 20, np.float32)
    x = x.copy()
    x[row, column] = bad
    loss = loss_of(name)
    stepped, kept = speed.row_kernel(loss, ROWS[name], params, (x, y))
    got = jax.value_and_grad(stepped)(params, *kept)
    want = jax.value_and_grad(loss)(params, x, y)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.isfinite(got_leaf), np.isfinite(want_leaf))
    assert not np.isfinite(jax.tree.leaves(want[1])[0]).all()  # the bad value reached it


def test_the_shortest_row_auto_takes_is_the_kernels_chunk():
    """``ROW_KERNEL_MIN_ROW_BYTES`` mirrors ``kChunk`` in the C++ source."""
    chunk = re.search(r"constexpr int64_t kChunk = (\d+) / sizeof\(T\);",
                      _row_kernel.SOURCE.read_text())
    assert chunk is not None and int(chunk.group(1)) == speed._plan.ROW_KERNEL_MIN_ROW_BYTES


def test_auto_judges_the_dtype_jax_runs():
    """NumPy float64 rows of 8 values are 64 bytes, but without x64 JAX runs
    them as float32 rows of 32 bytes, which the kernel takes one at a time."""
    rows = lambda dtype, d: np.broadcast_to(np.zeros((1, d), dtype), (2**20, d))  # no copies
    assert speed.row_kernel_pays(rows(np.float32, 16)) is True  # 64-byte rows, 64 MiB
    assert speed.row_kernel_pays(rows(np.float32, 8)) is False  # 32-byte rows
    assert speed.row_kernel_pays(rows(np.float64, 8)) is False  # the same, as JAX runs it


def resolved(plan, loss_name="linear_mse", n=10_000, d=1000, dtype=np.float32, **problem_kw):
    params, _ = problem(loss_name, 2, d, dtype)
    data = (jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((n,), dtype))
    fields = dict(exact_mse=False, params=params, data=data, full_batch=True, steps=100,
                  row=ROWS[loss_name])
    return speed.decide(plan, speed.Problem(**{**fields, **problem_kw}))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_auto_takes_the_kernel_for_the_librarys_row_means_past_the_cache(name):
    at = resolved(None, name)  # 40 MB, row-major
    assert (at.one_pass, at.row_kernel) == (True, True)
    assert resolved(None, name, n=100_000, d=100).row_kernel is True  # stored column-major
    assert resolved(None, name, n=625_000, d=16).row_kernel is True  # rows of one chunk
    # rows shorter than a chunk go one at a time, slower than the plain step
    assert resolved(None, name, n=1_000_000, d=10).row_kernel is False
    assert resolved(None, name, n=1000).row_kernel is False  # 4 MB: in cache, read twice
    assert resolved(None, name, row=None).one_pass is False  # a loss it does not know
    assert resolved(SpeedPlan(row_kernel=False), name).row_kernel is False
    blocks = resolved(SpeedPlan(row_kernel=False), name)
    assert (blocks.one_pass, blocks.row_kernel) == (True, False)  # the row blocks instead


def test_auto_leaves_other_devices_to_the_plain_step(monkeypatch):
    monkeypatch.setattr(_row_kernel, "platform_of", lambda data: "gpu")
    at = resolved(None)
    assert at.row_kernel is False


def test_fit_takes_the_kernel_itself_past_the_cache(monkeypatch):
    monkeypatch.setattr(speed._plan, "ONE_PASS_MIN_BYTES", 1)
    params, data = problem("cross-entropy", 64, 300, np.float32)  # 300 columns: row-major
    loss = LOSSES["cross-entropy"]
    text = jax.jit(lambda lr: fsgd.fit(loss, params, data, lr=lr, steps=3).params
                   ).lower(0.1).as_text()
    assert _row_kernel.TARGET in text
    same_but_unknown = lambda params, x, y: loss(params, x, y)
    text = jax.jit(lambda lr: fsgd.fit(same_but_unknown, params, data, lr=lr, steps=3).params
                   ).lower(0.1).as_text()
    assert _row_kernel.TARGET not in text


@pytest.mark.parametrize("change, message", [
    ({"row": None}, "not one of the library's row means"),
    ({"full_batch": False}, "full-batch only"),
    ({"plain_model": False}, "the model has parts"),
    ({"data": (jax.ShapeDtypeStruct((10, 4), np.float32),
               jax.ShapeDtypeStruct((10,), np.float32))}, r"shapes \[\(10, 4\), \(10,\), \(1000,\)"),
    ({"data": (jax.ShapeDtypeStruct((10, 1000), np.float16),
               jax.ShapeDtypeStruct((10,), np.float16))}, "all float32 or all float64"),
])
def test_row_kernel_true_says_why_it_cannot_run(change, message):
    with pytest.raises(ValueError, match=f"row_kernel=True\\) cannot run: .*{message}"):
        resolved(KERNEL, **change)


def test_row_kernel_true_needs_the_one_pass_step():
    with pytest.raises(ValueError, match="cannot run with one_pass=False"):
        resolved(SpeedPlan(one_pass=False, row_kernel=True))


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_row_kernel_must_be_auto_true_or_false(bad):
    with pytest.raises(ValueError, match="SpeedPlan.row_kernel"):
        SpeedPlan(row_kernel=bad)


def test_where_it_cannot_be_built_auto_warns_once_and_steps_in_blocks(monkeypatch):
    unbuilt = _row_kernel.Build(None, "no C++ compiler (here, on purpose)", 0.0)
    monkeypatch.setattr(_row_kernel, "build", lambda: unbuilt)
    _row_kernel.warn_unbuilt.cache_clear()
    with pytest.warns(RuntimeWarning, match="on purpose.*row blocks"):
        first = resolved(None)
    assert (first.one_pass, first.row_kernel) == (True, False)
    with pytest.raises(ValueError, match="row_kernel=True\\) cannot run: no C\\+\\+ compiler"):
        resolved(KERNEL)
    _row_kernel.warn_unbuilt.cache_clear()


@pytest.fixture
def unoptimized(monkeypatch):
    """Compiles at -O0 (2 s, not 14): for the tests of the cache and the
    compiler's command, which never run what they build."""
    monkeypatch.setattr(_row_kernel, "FLAGS", tuple(
        "-O0" if flag == "-O3" else flag for flag in _row_kernel.FLAGS))


def test_a_build_is_kept_in_the_cache_and_found_again(tmp_path, monkeypatch, unoptimized):
    monkeypatch.setenv("FUNCTIONAL_SGD_CACHE", str(tmp_path))
    assert _row_kernel.cache_dir() == tmp_path
    first = _row_kernel.compile_kernel(tmp_path)
    assert first.why_not is None and first.seconds > 0
    assert first.path.parent == tmp_path and first.path.exists()
    again = _row_kernel.compile_kernel(tmp_path)
    assert (again.path, again.seconds) == (first.path, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no scratch left
        first.path.with_suffix(".sha256").name, first.path.name]


def test_a_compile_killed_long_ago_leaves_no_scratch_behind(tmp_path, unoptimized):
    """A process killed while compiling leaves its scratch folder; the next
    compile removes those older than any live compile, and no other."""
    abandoned, live = (tmp_path / f"{_row_kernel.SCRATCH_PREFIX}{name}" for name in ("a", "b"))
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "row_kernel.so").write_bytes(b"half a library")
    long_ago = time.time() - 2 * _row_kernel.COMPILE_TIMEOUT_S - 60
    os.utime(abandoned, (long_ago, long_ago))
    assert _row_kernel.compile_kernel(tmp_path).why_not is None
    assert not abandoned.exists() and live.exists()


def test_a_compile_removes_the_kernels_unused_for_30_days_and_a_load_marks_its_use(
        tmp_path, unoptimized):
    """Each jax, compiler or kernel version compiles its own library; one no
    process has loaded for ``UNUSED_AFTER_S`` goes with the next compile."""
    unused, recent = (tmp_path / f"row_kernel-{name}.so" for name in ("unused", "recent"))
    long_ago = time.time() - _row_kernel.UNUSED_AFTER_S - 60
    for library, when in ((unused, long_ago), (recent, time.time() - 60)):
        library.write_bytes(b"an older kernel")
        library.with_suffix(".sha256").write_text("its digest")
        os.utime(library, (when, when))
    built = _row_kernel.compile_kernel(tmp_path)
    assert built.why_not is None and built.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (built.path, built.path.with_suffix(".sha256"), recent,
                         recent.with_suffix(".sha256")))
    os.utime(built.path, (long_ago, long_ago))
    found = _row_kernel.compile_kernel(tmp_path)
    assert (found.path, found.seconds) == (built.path, 0.0)
    assert time.time() - built.path.stat().st_mtime < 60  # its use, recorded


def test_without_a_compiler_the_build_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    unbuilt = _row_kernel.compile_kernel(tmp_path)
    assert unbuilt.path is None
    assert "no C++ compiler ('no-such-compiler-here' is not on PATH)" in unbuilt.why_not
    assert list(pathlib.Path(tmp_path).iterdir()) == []


def test_a_broken_build_names_the_command_and_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_row_kernel, "FLAGS", (*_row_kernel.FLAGS, "--no-such-flag"))
    broken = _row_kernel.compile_kernel(tmp_path)
    assert broken.path is None
    assert "--no-such-flag" in broken.why_not and "failed" in broken.why_not
    assert list(pathlib.Path(tmp_path).iterdir()) == []


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("n, d", [(1, 3), (300, 3), (1000, 100), (2100, 1000), (50, 4096)])
def test_the_gpu_kernel_gives_the_value_and_gradient_of_each_row_mean(name, n, d):
    """The Pallas kernel, run by Pallas's interpreter here (its speed is the
    GPU's to measure): one program or many, tiles cut short at the last row,
    rows padded to a power of 2, the widest rows it takes (tiles of 4).
    Float32 bound as for the CPU kernel."""
    loss = loss_of(name)
    params, (x, y) = problem(name, n, d, np.float32)
    w, b = params if name != "linear_mse" else (params, np.float32(0))
    value, grad_w, grad_b = jax.jit(lambda *a: _row_kernel.gpu_step(
        ROWS[name], *a, interpret=True))(x, y, w, b)
    want_value, want_grad = jax.value_and_grad(loss)(params, x, y)
    grad = (grad_w, grad_b) if name != "linear_mse" else grad_w
    grad_scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(want_grad))
    np.testing.assert_allclose(value, want_value, rtol=2e-5)
    for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * grad_scale)


def kernel_reads(jaxpr):
    """``(ref shape, mask)`` of each read of a ref in ``jaxpr`` and the jaxprs it holds."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "get":
            yield tuple(eqn.invars[0].aval.shape), None
        elif eqn.primitive.name in ("load", "masked_load"):
            ref, _, mask, _ = jax.tree.unflatten(eqn.params["args_tree"], eqn.invars)
            yield tuple(ref.aval.shape), mask
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from kernel_reads(inner)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_gpu_kernel_reads_only_values_that_exist(name):
    """A Triton load is not bounds-checked, and the kernel's blocks run past
    the arrays' ends (the last program's rows, the columns padded to a power
    of 2): 300 x 100 runs 128-row tiles of 128 columns. So each read of x, y
    and w is a masked load; unmasked, a GPU would read memory that is not
    the array's (the interpreter pads, so only the program itself can show it)."""
    x, y, w = np.ones((300, 100), np.float32), np.ones(300, np.float32), np.ones(100, np.float32)
    program = jax.make_jaxpr(lambda *a: _row_kernel.gpu_step(ROWS[name], *a))(
        x, y, w, np.float32(0))
    (call,) = [eqn for eqn in program.jaxpr.eqns if eqn.primitive.name == "pallas_call"]
    reads = sorted(kernel_reads(call.params["jaxpr"]), key=lambda read: read[0])
    assert [shape for shape, _ in reads] == [(1,), (128,), (128,), (128, 128)]  # b, w, y, x
    assert all(mask is not None for shape, mask in reads if shape != (1,))


def test_one_program_calls_the_cpu_kernel_on_a_cpu_and_the_gpu_kernel_on_a_gpu():
    """Lowered for a CPU and for a CUDA GPU, from this machine. The Triton
    lowering asks which GPU it compiles for (jax 0.11 asks the default
    device, a CPU here and under this file's fixture): an abstract one answers."""
    params, data = problem("mnist", 100, 30, np.float32)
    fitted = jax.jit(lambda lr: fsgd.fit(LOSSES["mnist"], params, data, lr=lr, steps=3,
                                         run=fsgd.Run(speed=KERNEL)).params)
    on_cpu = fitted.trace(0.1).lower().as_text()
    assert _row_kernel.TARGET in on_cpu and "triton" not in on_cpu
    gpu = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                  abstract_device=gpu)):
        on_gpu = fitted.trace(0.1).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in on_gpu and _row_kernel.TARGET not in on_gpu


def test_on_a_gpu_auto_leaves_it_and_true_takes_float32_rows_it_can_hold(monkeypatch):
    monkeypatch.setattr(_row_kernel, "platform_of", lambda data: "gpu")
    assert resolved(None).row_kernel is False  # unmeasured there: auto keeps the plain step
    assert resolved(KERNEL).row_kernel is True
    with pytest.raises(ValueError, match="on a GPU it takes float32 only"):
        with jax.enable_x64(True):
            resolved(KERNEL, dtype=np.float64)
    wide = _row_kernel.GPU_MAX_COLUMNS + 1
    with pytest.raises(ValueError, match=f"rows of at most {wide - 1} values; got {wide}"):
        resolved(KERNEL, d=wide)
    monkeypatch.setattr(_row_kernel, "platform_of", lambda data: "tpu")
    with pytest.raises(ValueError, match="a CPU or a CUDA GPU; the data is on 'tpu'"):
        resolved(KERNEL)


def test_a_checkpoint_from_before_the_kernel_resumes_where_no_kernel_runs(tmp_path):
    """An older checkpoint has no ``plan.row_kernel``: its run had no kernel,
    so a run without one resumes from it, and a run with one is refused by name."""
    params, data = problem("linear_mse", 200, 300, np.float32)
    path = tmp_path / "run.npz"
    plain = fsgd.Run(speed=PLAIN, chunk_size=5, checkpoint=path)
    whole = fsgd.fit(fsgd.linear_mse, params, data, lr=0.1, steps=10, run=plain)
    header, arrays = _checkpoint.read_archive(path)
    del header["run"]["plan.row_kernel"]  # as a checkpoint written before it
    _checkpoint.write_atomically(path, {"header": np.array(json.dumps(header)),
                                        **_checkpoint.as_raw_bytes(arrays)})
    again = fsgd.fit(fsgd.linear_mse, params, data, lr=0.1, steps=10, run=plain)
    assert_trees_close(again.params, whole.params)
    kernel = fsgd.Run(speed=KERNEL, chunk_size=5, checkpoint=path)
    with pytest.raises(ValueError, match="plan.row_kernel: checkpoint has False, this run has "
                                         "True"):
        fsgd.fit(fsgd.linear_mse, params, data, lr=0.1, steps=10, run=kernel)


def test_a_library_cut_short_in_the_cache_is_compiled_again(tmp_path, unoptimized):
    first = _row_kernel.compile_kernel(tmp_path)
    whole = first.path.read_bytes()
    first.path.write_bytes(whole[:len(whole) // 2])  # a full disk, a lost write
    again = _row_kernel.compile_kernel(tmp_path)
    assert again.path == first.path and again.seconds > 0
    assert again.path.read_bytes() == whole


def test_cxx_may_hold_a_command_of_several_words(tmp_path, monkeypatch, unoptimized):
    monkeypatch.setenv("CXX", "c++ -DWORDS_OF_CXX")
    assert _row_kernel.compile_kernel(tmp_path).why_not is None
    monkeypatch.setenv("CXX", "true")  # exits 0, writes nothing
    empty = _row_kernel.compile_kernel(tmp_path)
    assert empty.path is None and "exited 0 but wrote no library" in empty.why_not


def test_row_kernel_true_wins_over_exact_moments_auto_and_clashes_with_true():
    """On linear_mse, 500 steps: the moments would pay, but the caller asked
    for a step that reads the data."""
    at = resolved(SpeedPlan(row_kernel=True), exact_mse=True, n=1000, d=3)
    assert (at.exact_moments, at.row_kernel) == (False, True)
    with pytest.raises(ValueError, match="exact_moments=True.*cannot run with one_pass=True or "
                                         "row_kernel=True"):
        resolved(SpeedPlan(exact_moments=True, row_kernel=True), exact_mse=True, n=1000, d=3)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_datas_gradient_is_the_plain_losses(name):
    params, (x, y) = problem(name, 50, 4, np.float32)
    loss = loss_of(name)
    stepped, _ = speed.row_kernel(loss, ROWS[name], params, (x, y))
    got = jax.grad(stepped, argnums=(1, 2))(params, x, y)
    want = jax.grad(loss, argnums=(1, 2))(params, x, y)
    assert_trees_close(got, want, rtol=1e-6, atol=1e-7)
    assert np.abs(got[0]).max() > 0  # not the zeros of a dropped cotangent


def test_dtypes_are_judged_as_jax_gives_them():
    """A NumPy float64 target is float32 in JAX without x64; a Python float
    bias is float64 with it, beside float32 data: then the plain step runs."""
    w = np.zeros(1000, np.float32)
    x, y = np.zeros((2, 1000), np.float32), np.zeros(2, np.float64)
    assert _row_kernel.why_not("mnist_distance", (w, np.float32(0)), (x, y)) is None
    with jax.enable_x64(True):
        assert _row_kernel.why_not("mnist_distance", (w, 0.0), (x, y.astype(np.float32))) == (
            "it takes x, y and the params all float32 or all float64; got x float32, "
            "y float32, w float32, b float64")
