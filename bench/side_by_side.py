"""Two checkouts' benchmark suites, alternated in one run, compared case by case.

Shows whether a change (a refactor) made any workload slower::

    python -m bench.run --before DIR --after DIR [-k EXPR] [--repeats R]
                        [--size full|smoke] [--out FILE.md]

(``python -m bench.side_by_side`` is an alias of ``python -m bench.run``.)

Each checkout's OWN ``bench/bench_workloads.py`` runs in a child
``python -m pytest`` with ``cwd=DIR`` and ``DIR`` first on ``PYTHONPATH``, so
the child imports that checkout's ``functional_sgd``, ``bench`` and
``reference`` rather than the editable install; a small pytest plugin records
where they came from and the run stops if any came from elsewhere. The runs
alternate before, after, before, after ... ``R`` times, so a drift of the
machine hits both sides alike. Per case (workload and method), the table
gives each side's median of its runs' medians (min-max over the runs), the
ratio after/before, and the run-to-run spread: max/min of one side's run
medians, the larger of the two sides. A case is "slower beyond spread" when
the ratio exceeds ``(1 + tolerance) * spread`` (tolerance 5%). Only cases
measured in every run of both sides are compared; the others are listed.

Child output, the raw pytest-benchmark JSON of each run and the report go to
``--work`` (a new temporary folder by default); ``--out`` writes the report
elsewhere too. Nothing is written into either checkout: the children run
with ``PYTHONDONTWRITEBYTECODE=1`` and without pytest's cache.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from bench.suite import SUITE, drop_round_times, format_time, run_suite

TOLERANCE = 0.05
PACKAGES = ("functional_sgd", "bench", "reference")  # must come from the checkout run
PROBE_MODULE = "_fsgd_side_by_side_probe"
PROBE_ENV = "FSGD_SIDE_BY_SIDE_PROBE"
PROBE_SOURCE = f'''"""Written by bench/side_by_side.py, loaded with ``-p {PROBE_MODULE}``:
records the file of every module of {", ".join(PACKAGES)} this pytest imported."""

import json
import os
import sys


def pytest_sessionfinish(session):
    files = {{name: getattr(module, "__file__", None)
             for name, module in list(sys.modules.items())
             if name.split(".")[0] in {PACKAGES!r}}}
    with open(os.environ["{PROBE_ENV}"], "w") as file:
        json.dump(files, file, indent=1, sort_keys=True)
'''


# --- reading runs -----------------------------------------------------------------------


def case_of(benchmark):
    """``(workload, method)`` of one pytest-benchmark entry, from its extra_info
    (the benchmark's group and name if those are absent)."""
    extra = benchmark.get("extra_info", {})
    if "workload" in extra and "method" in extra:
        return extra["workload"], extra["method"]
    return benchmark.get("group") or "", benchmark["name"]


def medians(json_path):
    """``{case: median seconds}`` of one run, in the order the suite ran them."""
    with open(json_path) as file:
        benchmarks = json.load(file)["benchmarks"]
    return {case_of(b): b["stats"]["median"] for b in benchmarks}


# --- comparing --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One case: the median of each run of each side, in run order."""

    case: tuple
    before: tuple
    after: tuple

    @property
    def before_s(self):
        return statistics.median(self.before)

    @property
    def after_s(self):
        return statistics.median(self.after)

    @property
    def ratio(self):
        """After over before, of the medians of the runs' medians."""
        return self.after_s / self.before_s

    @property
    def spread(self):
        """Run-to-run spread: max/min of one side's run medians, the larger side
        (1.0 with one run per side: no spread measured)."""
        return max(max(s) / min(s) for s in (self.before, self.after))

    def verdict(self, tolerance=TOLERANCE):
        """``"slower beyond spread"`` when ``ratio > (1 + tolerance) * spread``,
        ``"faster beyond spread"`` in the mirror case, else ``""``.

        >>> Row(("w", "m"), before=(1.0, 1.02), after=(1.2, 1.21)).verdict()
        'slower beyond spread'
        >>> Row(("w", "m"), before=(1.0, 1.2), after=(1.2, 1.2)).verdict()  # spread 1.2
        ''
        >>> Row(("w", "m"), before=(1.0,), after=(1.04,)).verdict()
        ''
        >>> Row(("w", "m"), before=(1.0,), after=(0.5,)).verdict()
        'faster beyond spread'
        """
        bound = (1 + tolerance) * self.spread
        if self.ratio > bound:
            return "slower beyond spread"
        if self.ratio < 1 / bound:
            return "faster beyond spread"
        return ""


def compare(before_runs, after_runs):
    """Rows for the cases measured in every run of both sides (in the order of
    the first run that has them), and ``{case: why}`` for the others.

    ``before_runs``, ``after_runs``: one ``{case: median seconds}`` per run.

    >>> rows, missing = compare([{"a": 1.0, "b": 2.0}], [{"a": 1.1, "c": 3.0}])
    >>> [(r.case, r.before, r.after) for r in rows]
    [('a', (1.0,), (1.1,))]
    >>> missing
    {'b': 'not in after runs 1', 'c': 'not in before runs 1'}
    """
    order = {}
    for run in [*before_runs, *after_runs]:
        order.update(dict.fromkeys(run))
    rows, missing = [], {}
    for case in order:
        gaps = [f"not in {side} runs " + ", ".join(str(i + 1) for i in absent)
                for side, runs in (("before", before_runs), ("after", after_runs))
                if (absent := [i for i, run in enumerate(runs) if case not in run])]
        if gaps:
            missing[case] = "; ".join(gaps)
        else:
            rows.append(Row(case, tuple(r[case] for r in before_runs),
                            tuple(r[case] for r in after_runs)))
    return rows, missing


# --- writing ----------------------------------------------------------------------------


def _with_range(values):
    """The median of ``values``, and their range when there are several.

    >>> _with_range([2e-3, 1e-3, 4e-3]), _with_range([2e-3])
    ('2 ms (1 ms – 4 ms)', '2 ms')
    """
    middle = format_time(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({format_time(min(values))} – {format_time(max(values))})"


def _case_text(case):
    return " | ".join(case) if isinstance(case, tuple) else f"{case} | "


def table(rows, tolerance=TOLERANCE):
    """The Markdown comparison table.

    >>> print(table([Row(("lesson", "fit"), before=(1e-3, 1e-3, 1.01e-3),
    ...                  after=(1.2e-3, 1.21e-3, 1.2e-3))]))
    | workload | method | before: median (min – max) | after: median (min – max) | after / before | spread | verdict |
    |---|---|---|---|---|---|---|
    | lesson | fit | 1 ms (1 ms – 1.01 ms) | 1.2 ms (1.2 ms – 1.21 ms) | 1.200 | 1.010 | **slower beyond spread** |
    """
    lines = ["| workload | method | before: median (min – max) | after: median (min – max) "
             "| after / before | spread | verdict |", "|" + "---|" * 7]
    for r in rows:
        verdict = r.verdict(tolerance)
        shown = f"**{verdict}**" if verdict.startswith("slower") else verdict
        lines.append(f"| {_case_text(r.case)} | {_with_range(r.before)} | "
                     f"{_with_range(r.after)} | {r.ratio:.3f} | {r.spread:.3f} | {shown} |")
    return "\n".join(lines)


def summary(rows, missing, tolerance=TOLERANCE):
    """One line: how many cases are slower (and faster) beyond the spread.

    >>> rows = [Row("a", (1.0,), (1.2,)), Row("b", (1.0,), (1.0,))]
    >>> summary(rows, {"c": "not in after runs 1"})
    '1 of 2 cases slower beyond spread (a); 0 faster beyond spread; 1 missing.'
    """
    slower = [r for r in rows if r.verdict(tolerance).startswith("slower")]
    faster = [r for r in rows if r.verdict(tolerance).startswith("faster")]
    names = ", ".join(" / ".join(r.case) if isinstance(r.case, tuple) else r.case
                      for r in slower)
    return (f"{len(slower)} of {len(rows)} cases slower beyond spread"
            + (f" ({names})" if names else "")
            + f"; {len(faster)} faster beyond spread; {len(missing)} missing.")


def report(rows, missing, *, header, tolerance=TOLERANCE):
    text = [header, "", "## Result", "", summary(rows, missing, tolerance), "",
            table(rows, tolerance)]
    if missing:
        text += ["", "## Missing (not compared)", "",
                 "| workload | method | why |", "|---|---|---|"]
        text += [f"| {_case_text(case)} | {why} |" for case, why in missing.items()]
    return "\n".join(text) + "\n"


# --- running ----------------------------------------------------------------------------


def git_state(checkout):
    """``"<short hash> (clean)"``, ``"... (dirty: ...)"`` or why there is none."""
    def git(*args):
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True,
                              text=True, check=True).stdout
    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.CalledProcessError) as error:
        return f"no git commit ({error})"
    changed = sum(not line.startswith("??") for line in status)
    untracked = len(status) - changed
    if not status:
        return f"{commit} (clean)"
    return f"{commit} (dirty: {changed} changed tracked files, {untracked} untracked)"


def imported_elsewhere(files, checkout):
    """The modules of :data:`PACKAGES` a child imported from outside
    ``checkout`` (or that it never imported), as ``{name: file}``.

    >>> imported_elsewhere({"functional_sgd": "/a/functional_sgd/__init__.py",
    ...                     "bench": "/a/bench/__init__.py",
    ...                     "functional_sgd.core": "/b/functional_sgd/core/__init__.py"}, "/a")
    {'functional_sgd.core': '/b/functional_sgd/core/__init__.py'}
    >>> imported_elsewhere({"bench": "/a/bench/__init__.py"}, "/a")
    {'functional_sgd': None}
    """
    root = pathlib.Path(checkout).resolve()
    wrong = {name: None for name in ("functional_sgd", "bench") if name not in files}
    for name, file in files.items():
        if file is not None and not pathlib.Path(file).resolve().is_relative_to(root):
            wrong[name] = file
    return wrong


def run_side(checkout, *, json_path, log_path, probe_dir, size, select):
    """One child pytest of ``checkout``'s own suite; returns its exit code and
    the modules of :data:`PACKAGES` it imported, ``{name: file}``."""
    probe_path = json_path.with_suffix(".modules.json")
    code = run_suite(checkout, json_path, size, select, log_path=log_path,
                     plugins=(PROBE_MODULE,), env={
                         "PYTHONPATH": str(probe_dir),
                         "PYTHONDONTWRITEBYTECODE": "1",  # write nothing into the checkouts
                         PROBE_ENV: str(probe_path)})
    files = json.loads(probe_path.read_text()) if probe_path.exists() else {}
    return code, files


def _tail(path, lines=40):
    return "\n".join(path.read_text().splitlines()[-lines:])


def machine_lines():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return f"{cpu}; {os.cpu_count()} cores ({usable} usable by this process)"


def _load():
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_side_by_side(args, argv):
    """Runs both checkouts' suites ``args.repeats`` times, alternated, and
    writes the comparison; ``argv``: the command line, quoted in the report.
    Returns the exit status (1 if any run failed)."""
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    for side, checkout in sides.items():
        if not (checkout / SUITE).is_file():
            raise ValueError(f"--{side} {checkout}: no {SUITE} there; give the root of a "
                             "checkout of functional-sgd.")
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="side_by_side_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)

    began = datetime.datetime.now(datetime.timezone.utc)
    load_before = _load()
    runs = {side: [] for side in sides}
    modules = {side: {} for side in sides}
    walls = {side: [] for side in sides}
    failures = []
    print(f"side by side: {args.repeats} run(s) per checkout, alternated; logs and JSON in "
          f"{work}", flush=True)
    for i in range(1, args.repeats + 1):
        for side, checkout in sides.items():
            json_path, log_path = work / f"{side}-{i}.json", work / f"{side}-{i}.log"
            json_path.unlink(missing_ok=True)
            start = time.perf_counter()
            code, files = run_side(checkout, json_path=json_path, log_path=log_path,
                                    probe_dir=work, size=args.size, select=args.select)
            wall = time.perf_counter() - start
            walls[side].append(wall)
            print(f"  run {i}/{args.repeats} {side:6s} {wall:7.1f} s, pytest exit {code}",
                  flush=True)
            if not files:
                print(_tail(log_path), file=sys.stderr)
                sys.exit(f"{side} run {i}: pytest exited {code} before recording what it "
                         f"imported (log: {log_path})")
            wrong = imported_elsewhere(files, checkout)
            if wrong:
                shown = dict(list(wrong.items())[:3])
                sys.exit(f"{side} run {i} did not import {checkout}'s own code: {shown}"
                         f"{f' and {len(wrong) - 3} more' if len(wrong) > 3 else ''} "
                         f"(log: {log_path})")
            modules[side] = files
            if code != 0:
                failures.append(f"{side} run {i}: pytest exit {code} (log: {log_path})")
                print(_tail(log_path), file=sys.stderr)
            if not json_path.exists():
                sys.exit(f"{side} run {i} wrote no benchmark JSON (log: {log_path})")
            drop_round_times(json_path)
            runs[side].append(medians(json_path))

    rows, missing = compare(runs["before"], runs["after"])
    command = shlex.join(["python", "-m", "bench.run", *argv])
    stamp = began.strftime("%Y-%m-%d %H:%M UTC")
    def where(side):
        return modules[side].get("functional_sgd") or "?"

    def seconds(side):
        return ", ".join(f"{w:.0f} s" for w in walls[side])

    header = f"""# Side by side: before and after

Written {stamp} by `{command}`.

|  | before | after |
|---|---|---|
| checkout | `{sides["before"]}` | `{sides["after"]}` |
| commit | {git_state(sides["before"])} | {git_state(sides["after"])} |
| functional_sgd imported from | `{where("before")}` | `{where("after")}` |
| wall time per run | {seconds("before")} | {seconds("after")} |

- machine: {machine_lines()}; load average {load_before} at the start, {_load()} at the end
- runs: {args.repeats} per checkout, alternated before, after, ...; sizes `{args.size}`; \
cases `-k {shlex.quote(args.select) if args.select else "(all)"}`; raw JSON and logs in `{work}`
- each cell is the median over the runs of each run's median (pytest-benchmark), with the
  min – max of those run medians; "after / before" divides the two medians of medians;
  "spread" is max / min of one side's run medians, the larger of the two sides
  (1.000 with one run per side: no spread measured, so the verdict is then the bare
  {args.tolerance:.0%} threshold); "slower beyond spread" means
  after / before > (1 + {args.tolerance:g}) x spread.""" + (
        "\n- **failed runs**: " + "; ".join(failures) if failures else "")
    text = report(rows, missing, header=header, tolerance=args.tolerance)
    print(text)
    (work / "side_by_side.md").write_text(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(f"wrote {args.out or work / 'side_by_side.md'}")
    return 1 if failures else 0



if __name__ == "__main__":  # the old command, kept as an alias
    from bench import run

    sys.exit(run.main(sys.argv[1:]))
