"""The benchmark tooling: the float64 answer, the agreement check, the report
writer and the accelerator comparison (on CPU, with 1 and with 8 devices)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import functional_sgd as fsgd

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
from bench import (accelerators, machine, peers, peers_torch, report,  # noqa: E402
                   side_by_side, suite, workloads)
from bench.methods import FASTAI, KERAS, METHODS, SCAN, TORCH_COMPILE, methods_for  # noqa: E402
from bench.results_table import (TARGETS, Result, by_workload, load, load_skipped,  # noqa: E402
                                 scan_overhead)

from helpers import cpu_subprocess_env  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_module(module, *args, cpu_devices=None, timeout=300):
    """``python -m module args`` importing this checkout, on the CPU platform
    (also on a GPU machine: these tests check the CPU report, tune_cpu()
    included), in the parent's environment otherwise; ``cpu_devices``: that
    many simulated CPU devices."""
    env = cpu_subprocess_env(cpu_devices, ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


CHECKED = ("mini-batch", "stochastic", "lesson in batches of 10", "full batch 1e4x1000",
           "sweep")  # every schedule


@pytest.mark.parametrize("workload", [w for w in workloads.SMOKE if w.name in CHECKED],
                         ids=lambda w: w.name)
def test_truth_is_fit_in_float64(x64, workload):
    """Two independent float64 implementations (NumPy loop, JAX scan) agree to
    1e-10 relative: they differ by rounding order only, ~1e-15 a step."""
    problem = workloads.make_problem(workload)
    expected = workloads.truth(problem)
    x, y = problem.x.astype(np.float64), problem.y.astype(np.float64)
    rows = None if problem.indices is None else fsgd.Schedule(problem.indices)  # full batch

    def one(lr):
        return fsgd.fit(fsgd.linear_mse, problem.start.astype(np.float64), (x, y), lr=lr,
                        steps=workload.steps, rows=rows).params

    lrs = problem.lrs.astype(np.float64) if workload.sweep else None
    params = jax.vmap(one)(lrs) if workload.sweep else one(np.float64(workload.lr))
    np.testing.assert_allclose(params, expected, rtol=1e-10, atol=1e-12)


def test_agreement_check_catches_a_wrong_schedule():
    problem = workloads.make_problem(workloads.SMOKE[2])  # mini-batch
    expected = workloads.truth(problem)
    right = fsgd.fit(fsgd.linear_mse, problem.start, (problem.x, problem.y), lr=0.1,
                     rows=fsgd.Schedule(problem.indices)).params
    wrong = fsgd.fit(fsgd.linear_mse, problem.start, (problem.x, problem.y), lr=0.1,
                     rows=fsgd.Schedule(problem.indices[::-1])).params
    assert workloads.close_to_truth(right, expected) <= workloads.AGREEMENT
    assert workloads.close_to_truth(wrong, expected) > 10 * workloads.AGREEMENT


def test_report_from_a_smoke_run(tmp_path):
    done = run_module("bench.run", "--size", "smoke", "-k", "lesson and not long",
                      "--out", str(tmp_path), "--bandwidth-bytes", str(2**26),
                      "--note", "a smoke run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    results = load(tmp_path / "benchmarks.json")
    methods = {r.method for r in results}
    assert {"torch reference", "fit", "fit, new lr each call"} <= methods
    assert {r.workload for r in results} == {"lesson", "lesson in batches of 10"}
    assert all(r.median_s > 0 for r in results)
    for heading in ("## Machine", "## Targets", "### lesson", "memory read bandwidth",
                    "## fit against a hand-written scan", "## Peers",
                    "a smoke run", machine.cpu_model()):
        assert heading in report
    for method in methods:
        assert f"| {method} |" in report
    for target in TARGETS:
        assert target.text in report
    tuned = load(tmp_path / "benchmarks_tune_cpu.json")
    # TUNED_METHODS only; of the peers only fastai, the others are slow (not at smoke size)
    assert {"torch reference", "fit", SCAN} <= {r.method for r in tuned} <= {
        "torch reference", "fit", SCAN, FASTAI}
    scan_row = next(line for line in report.splitlines() if line.startswith("| lesson | fit |"))
    overhead, with_tuned = [c.strip() for c in scan_row.split("|")[1:-1]][4:6]
    assert overhead.endswith("x") and with_tuned.endswith("x")
    # The peers that compile for seconds are not run at smoke size: the report says so.
    peers_section = report.split("## Peers")[1].split("\n## ")[0]
    skipped = load_skipped(tmp_path / "benchmarks.json")
    slow = {m.name for m in methods_for(workloads.SMOKE[0]) if m.slow}
    assert slow <= {s["method"] for s in skipped}
    for s in skipped:  # slow, or a peer not installed on this machine (fastai)
        assert f"**{s['method']}** was skipped" in peers_section
        assert ("--slow-peers" in s["reason"]) == (s["method"] in slow), s
    section = report.split("## With `functional_sgd.tune_cpu()`")[1].split("\n## ")[0]
    assert "### lesson" in section and "| fit |" in section
    lesson_row = next(line for line in report.splitlines()
                      if line.startswith("| lesson: fit vs torch reference |"))
    cells = [c.strip() for c in lesson_row.split("|")[1:-1]]
    for measured in (cells[1], cells[3]):  # as users get it, and with tune_cpu()
        assert measured.endswith(" x") and float(measured[:-2].replace(",", "")) > 0
    profile = report.split("### Profile: each pass over `x` alone")[1]
    assert "| 1e+05 x 2 |" in profile and "best two-pass ratio" in profile
    for name in ("speedup.png", "time_per_step.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300


def test_targets_read_the_ratios():
    results = load_fake({"fit": 1e-4, "torch reference": 2e-2, "fit, new lr each call": 2e-4})
    table = by_workload(results)
    lesson, *_ = [t for t in TARGETS if t.text.startswith("lesson: fit vs")]
    new_lr, *_ = [t for t in TARGETS if "new lr" in t.text]
    assert lesson.measure(table) == pytest.approx(200) and lesson.met(200)
    assert new_lr.measure(table) == pytest.approx(2) and not new_lr.met(2)
    assert not lesson.met(None)


def test_the_exact_path_target_holds_where_auto_picks_it():
    exact = {t.text.split(":")[0]: t for t in TARGETS if "exact MSE path" in t.text}
    table = {w: {"fit": Result(w, "fit", 1.0, 3, dict(n=n, d=d, steps=100))}
             for w, (n, d) in {"full batch 1e5x100": (100_000, 100),
                               "full batch 1e4x1000": (10_000, 1000)}.items()}
    assert exact["full batch 1e5x100"].not_applicable(table) is None
    assert "auto declines it" in exact["full batch 1e4x1000"].not_applicable(table)


def test_issue_15_targets_take_each_peer_by_its_fastest_form():
    """fit against the fastest form of Keras and torch.compile, against fastai
    and the hand-written scan, all from one table; a peer not run is None."""
    table = by_workload(load_fake({"fit": 1e-4, KERAS[0]: 5e-3, KERAS[1]: 2e-2, FASTAI: 4e-2,
                                   TORCH_COMPILE[0]: 3e-2, TORCH_COMPILE[1]: 2e-4, SCAN: 1e-4})
                        + load_fake({"fit": 1e-3}, "mini-batch"))
    by_text = {t.text.split(" (")[0]: t for t in TARGETS}
    keras = by_text["lesson: fit vs Keras 3 model.fit"]
    assert keras.measure(table) == pytest.approx(50) and not keras.met(50)
    assert by_text["lesson: fit vs fastai Learner"].measure(table) == pytest.approx(400)
    compiled = by_text["lesson: fit vs torch.compile"]
    assert compiled.measure(table) == pytest.approx(2) and compiled.met(2)
    scan = by_text["lesson: fit vs hand-written scan"]
    assert scan.measure(table) == pytest.approx(1) and scan.met(1) and not scan.met(1.3)
    assert by_text["mini-batch: fit vs Keras 3 model.fit"].measure(table) is None
    rows = report.peers_section(table).splitlines()
    lesson = next(row for row in rows if row.startswith("| lesson |"))
    assert "| 5 ms (50.0x, 1 step an execution) |" in lesson
    assert "| 200 us (2.00x, the loop unrolled) |" in lesson
    assert "| 40 ms (400.0x) |" in lesson
    mini = next(row for row in rows if row.startswith("| mini-batch |"))
    assert mini.count("| - ") == 8  # no peer ran it: median and first call for each


def load_fake(medians, workload="lesson"):
    extra = dict(sweep=0, steps=100, first_call_s=0.1)
    return [Result(workload, m, s, 10, extra) for m, s in medians.items()]


def test_overhead_vs_the_hand_written_scan():
    """fit's median over the scan's, from one run; the sweep's fit is
    jax.jit(jax.vmap(fit)); a workload without the scan has no overhead."""
    table = by_workload(load_fake({"fit": 3e-4, SCAN: 1e-4, "torch reference": 1e-2})
                        + load_fake({"jax.jit(jax.vmap(fit))": 1e-3, "fit, Python loop over lrs":
                                     1e-5, SCAN: 2e-3}, "sweep")
                        + load_fake({"fit": 1e-4}, "long lesson"))
    assert scan_overhead(table, "lesson") == pytest.approx(3.0)
    assert scan_overhead(table, "sweep") == pytest.approx(0.5)
    assert scan_overhead(table, "long lesson") is None and scan_overhead(table, "nope") is None
    rows = report.scan_section(table, {}).splitlines()
    assert "overhead vs hand-written scan" in rows[0] and len(rows) == 4  # header, rule, 2 rows
    assert rows[2].startswith("| lesson | fit | 300 us | 100 us | 3.00x | - |")
    assert rows[3].startswith("| sweep | jax.jit(jax.vmap(fit)) | 1 ms | 2 ms | 0.50x | - |")


def test_a_peer_that_does_not_import_is_skipped_with_the_reason(tmp_path):
    """keras made unimportable: its cases are skipped, the benchmark JSON and
    the report say why; the rest of the suite runs."""
    blocked = tmp_path / "blocked" / "keras"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('keras blocked for this test')\n")
    env = {**suite.outside_xdist(os.environ), "PYTHONPATH": os.pathsep.join(
        [str(blocked.parent), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    json_path = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/bench_workloads.py", "-p", "no:cacheprovider",
         "-q", "--benchmark-enable", "--bench-size=smoke", "--slow-peers",
         f"--benchmark-json={json_path}", "-k", "lesson and not long and (keras or scan)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    skipped = load_skipped(json_path)
    keras_methods = {m.name for m in methods_for(workloads.SMOKE[0]) if m.engine == "keras"}
    assert {s["method"] for s in skipped} == keras_methods
    assert all("keras blocked for this test" in s["reason"] for s in skipped)
    assert {r.method for r in load(json_path)} == {SCAN}
    text = report.skipped_section(skipped)
    assert all(f"**{m}** was skipped (lesson; lesson in batches of 10)" in text
               for m in keras_methods)


def test_peers_say_why_they_cannot_run(monkeypatch):
    problem = workloads.make_problem(workloads.SMOKE[0])
    monkeypatch.setitem(sys.modules, "fastai.learner", None)  # import fails
    with pytest.raises(peers.Unavailable, match="fastai does not import.*--no-deps fastai"):
        peers_torch.fastai_learner(problem, None)

    class OtherBackend:  # a keras imported before with another backend
        backend = type("backend", (), {"backend": staticmethod(lambda: "torch")})

    monkeypatch.setitem(sys.modules, "keras", OtherBackend)
    with pytest.raises(peers.Unavailable, match="its torch backend"):
        peers.keras_fit(problem, None, per_execution=1)


@pytest.mark.parametrize("workload", [w for w in workloads.SMOKE if not w.sweep],
                         ids=lambda w: w.name)
def test_torch_peers_compute_the_lesson(workload):
    """The functions handed to torch.compile, run uncompiled (compiling takes
    20 s each: the suite does that at full size): each replays the schedule."""
    problem = workloads.make_problem(workload)
    expected = workloads.truth(problem)
    uncompiled = lambda f, **options: f
    for prepare in (peers_torch.torch_compiled_step, peers_torch.torch_compiled_loop,
                    peers_torch.torch_compiled_scan):
        params = prepare(problem, None, compile=uncompiled)()
        assert workloads.close_to_truth(params, expected) <= workloads.AGREEMENT, prepare


def test_keras_replays_the_schedule():
    """Both Keras variants on a full batch (repeated into one epoch) and on
    random batches: the float64 answer of our schedule, so no looser bound."""
    pytest.importorskip("keras")
    for workload in (workloads.SMOKE[0], workloads.SMOKE[2]):  # lesson, mini-batch
        problem = workloads.make_problem(workload)
        expected = workloads.truth(problem)
        for per_execution in (1, "steps"):
            run = peers.keras_fit(problem, None, per_execution=per_execution)
            for _ in range(2):  # the second call starts from the start again
                error = workloads.close_to_truth(run(), expected)
                assert error <= workloads.AGREEMENT, (workload.name, per_execution)


def test_accelerator_comparison_on_cpu(tmp_path):
    so_far = []
    rows = accelerators.compare("smoke", {"lesson", "sweep"}, platforms={"cpu"},
                                on_case=so_far.append)
    # After each case, every row: those measured, then the rest as not yet run.
    assert len(so_far) == len(rows) > 1 and so_far[-1] == rows
    first = so_far[0]
    assert len(first) == len(rows) and first[0] == rows[0]
    assert {r.get("skipped") for r in first[1:]} == {accelerators.NOT_YET_RUN}
    partial = accelerators.write(first, tmp_path, plot=False)  # as a run writes it on the way
    assert accelerators.NOT_YET_RUN in partial and "accelerators.png" not in partial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerators.md"]
    places = {(r["workload"], r["engine"], r["device"], r["method"]) for r in rows}
    assert ("lesson", "jax", "cpu:0", "fit") in places
    assert ("sweep", "jax", "cpu:0", "jax.jit(jax.vmap(fit))") in places
    assert ("sweep", "jax", "cpu:0", SCAN) in places
    assert ("lesson", "torch", "cpu", "torch reference") in places
    slow = {m.name for m in METHODS if m.slow}
    assert slow and not slow & {r["method"] for r in rows}  # not at smoke size
    assert all(r["agrees"] and r["median_s"] > 0 for r in accelerators.measured(rows))
    text = accelerators.write(rows, tmp_path)
    measured = accelerators.measured(rows)  # a skipped peer is listed apart, with its reason
    assert text.count("| lesson |") == len([r for r in measured if r["workload"] == "lesson"])
    with Image.open(tmp_path / "accelerators.png") as image:
        assert image.format == "PNG"


def test_accelerator_comparison_iterates_8_devices(tmp_path):
    done = run_module("bench.run", "--devices", "cpu", "--size", "smoke", "--workloads",
                      "lesson", "--out", str(tmp_path), cpu_devices=8)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "accelerators.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| lesson | jax |")
            and line.split(" | ")[3] == "fit"]
    assert sorted(row.split(" | ")[2] for row in rows) == [f"cpu:{i}" for i in range(8)]
    assert all(row.endswith("| yes |") for row in rows)


def test_torch_full_precision_restores_the_settings():
    import torch
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with accelerators.torch_full_precision():
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_the_lesson_profile_times_fit_and_its_jitted_call():
    """bench/investigations/lesson_profile.py in this process (as users get it): every
    measure is timed (no timing is asserted: the script reports them)."""
    from bench.investigations import lesson_profile

    medians = lesson_profile.measure({}, calls=5)
    assert set(medians) == set(lesson_profile.MEASURES)
    assert all(np.isfinite(s) and s > 0 for s in medians.values())


def test_bandwidth_is_a_plausible_number():
    gbs = machine.memory_read_bandwidth(2**24)
    assert 0.1 < gbs < 10_000
    assert 0.1 < machine.in_cache_read_bandwidth(np.ones(2**18, np.float32)) < 10_000


def write_fake_run(path, medians):
    """A pytest-benchmark JSON holding just what bench.side_by_side reads."""
    path.write_text(json.dumps({"benchmarks": [
        {"name": f"test_workload[{w}-{m}]", "group": w,
         "extra_info": {"workload": w, "method": m}, "stats": {"median": s}}
        for (w, m), s in medians.items()]}))
    return path


def test_side_by_side_verdicts_on_synthetic_runs(tmp_path):
    """Slower beyond the spread is flagged, slower within it is not, and a case
    absent from one run is listed apart instead of compared."""
    fit, torch_, vmap = ("lesson", "fit"), ("lesson", "torch reference"), ("sweep", "jax.vmap(fit)")
    before = [{fit: 1.00e-4, torch_: 1.0e-2, vmap: 1e-3},
              {fit: 1.01e-4, torch_: 1.2e-2, vmap: 1e-3},
              {fit: 0.99e-4, torch_: 1.1e-2, vmap: 1e-3}]
    after = [{fit: 1.10e-4, torch_: 1.15e-2, vmap: 1e-3},
             {fit: 1.11e-4, torch_: 1.16e-2, vmap: 1e-3},
             {fit: 1.09e-4, torch_: 1.14e-2}]  # vmap missing from after's third run
    runs = {side: [side_by_side.medians(write_fake_run(tmp_path / f"{side}-{i}.json", run))
                   for i, run in enumerate(values)]
            for side, values in (("before", before), ("after", after))}
    rows, missing = side_by_side.compare(runs["before"], runs["after"])
    by_case = {r.case: r for r in rows}
    assert list(by_case) == [fit, torch_] and missing == {vmap: "not in after runs 3"}
    assert by_case[fit].ratio == pytest.approx(1.10)
    assert by_case[fit].spread == pytest.approx(1.01 / 0.99)
    assert by_case[fit].verdict() == "slower beyond spread"
    assert by_case[torch_].ratio == pytest.approx(1.15 / 1.1)  # 4.5% slower...
    assert by_case[torch_].spread == pytest.approx(1.2)  # ...within a 20% spread
    assert by_case[torch_].verdict() == ""
    assert by_case[fit].verdict(tolerance=0.1) == ""  # 1.10 < 1.1 x 1.02
    text = side_by_side.report(rows, missing, header="# header")
    assert "1 of 2 cases slower beyond spread (lesson / fit)" in text
    fit_row = next(line for line in text.splitlines() if line.startswith("| lesson | fit |"))
    cells = [c.strip() for c in fit_row.split("|")[1:-1]]
    assert cells[2:] == ["100 us (99 us – 101 us)", "110 us (109 us – 111 us)", "1.100",
                         "1.020", "**slower beyond spread**"]
    assert "| sweep | jax.vmap(fit) | not in after runs 3 |" in text.split("## Missing")[1]


def test_side_by_side_of_this_checkout_twice(tmp_path):
    """End to end at smoke sizes: both children import this checkout's own code."""
    done = run_module("bench.run", "--before", str(ROOT), "--after", str(ROOT),
                      "--size", "smoke", "--repeats", "1", "-k", "lesson-fit and not long",
                      "--out", str(tmp_path / "side.md"), "--work", str(tmp_path / "work"),
                      timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "side.md").read_text()
    assert f"| functional_sgd imported from | `{ROOT / 'functional_sgd' / '__init__.py'}` |" in text
    rows = [line for line in text.splitlines() if line.startswith("| lesson | fit")]
    assert len(rows) == 4  # fit, general path, new lr, new data
    for name in ("before-1", "after-1"):
        files = json.loads((tmp_path / "work" / f"{name}.modules.json").read_text())
        assert all(pathlib.Path(f).is_relative_to(ROOT) for f in files.values() if f)


def test_the_runner_chooses_devices_and_peers(capsys):
    """``python -m bench.run --devices ... --peers ...``: fit always, the peers
    asked for, on the platforms asked for; a wrong option says what is known."""
    from bench import run

    chosen = list(accelerators.targets(workloads.SMOKE[0], slow=False, platforms={"cpu"},
                                       peers=["scan"]))
    names = {method.name for _, _, _, method in chosen}
    assert names == {"fit", SCAN}  # no torch reference: it was not asked for
    assert {device for _, device, _, _ in chosen} == {"cpu:0"}
    assert accelerators.platform_of("cuda") == "gpu"
    for argv, message in [(["--devices", "cpu", "--peers", "nope"], "unknown ['nope']"),
                          (["--peers", "torch"], "add --devices"),
                          (["--before", "."], "give both checkouts"),
                          (["--devices", "cpu", "--workloads", "nope"], "unknown ['nope']")]:
        with pytest.raises(SystemExit):
            run.main(argv)
        assert message in capsys.readouterr().err
