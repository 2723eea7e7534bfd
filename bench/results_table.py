"""Benchmark results read from pytest-benchmark's JSON, and the targets of issues 3 and 15."""

import dataclasses
import json
from functools import partial

from bench.methods import BASELINE, FASTAI, KERAS, SCAN, TORCH_COMPILE
from bench.workloads import FULL


@dataclasses.dataclass(frozen=True)
class Result:
    workload: str
    method: str
    median_s: float
    rounds: int
    extra: dict

    @property
    def runs(self):
        """Training runs in one call: the learning rates of a sweep, else 1."""
        return max(1, self.extra["sweep"])

    @property
    def steps_per_s(self):
        return self.extra["steps"] * self.runs / self.median_s

    @property
    def step_s(self):
        return self.median_s / (self.extra["steps"] * self.runs)


def load(path):
    """Results in the order the suite ran them."""
    with open(path) as file:
        benchmarks = json.load(file)["benchmarks"]
    return [Result(b["extra_info"]["workload"], b["extra_info"]["method"],
                   b["stats"]["median"], b["stats"]["rounds"], b["extra_info"])
            for b in benchmarks]


def load_skipped(path):
    """``[{workload, method, reason}]``: the cases the suite skipped (a peer not
    installed, a compiler failing, a slow peer at smoke size)."""
    with open(path) as file:
        return json.load(file).get("skipped", [])


def by_workload(results):
    """``{workload: {method: Result}}``, workloads in suite order."""
    table = {}
    for r in results:
        table.setdefault(r.workload, {})[r.method] = r
    return table


def speedup(table, workload, method, baseline=BASELINE):
    """How many times faster ``method`` ran than ``baseline`` (None if either is missing)."""
    runs = table.get(workload, {})
    if method not in runs or baseline not in runs:
        return None
    return runs[baseline].median_s / runs[method].median_s


FIT_METHODS = ("fit", "jax.jit(jax.vmap(fit))")
"""``fit`` as users call it: one run, or a sweep of learning rates."""


def fit_method(runs):
    """The name ``fit`` runs under in ``runs`` (``{method: Result}``), or None."""
    return next((m for m in FIT_METHODS if m in runs), None)


def scan_overhead(table, workload):
    """``fit``'s median over the hand-written scan's, both from one run: how
    much more than the plain XLA program ``fit`` costs (below 1: less)."""
    fit = fit_method(table.get(workload, {}))
    return None if fit is None else speedup(table, workload, SCAN, baseline=fit)


def fastest(runs, methods):
    """The fastest of ``methods`` in ``runs`` (``{method: Result}``), or None."""
    ran = [m for m in methods if m in runs]
    return min(ran, key=lambda m: runs[m].median_s) if ran else None


def against_peers(table, workload, methods):
    """How many times faster ``fit`` ran than the fastest of ``methods`` (a
    peer's settings: Keras with one or all steps per execution, torch.compile
    around the step or the loop), both from one run; None if either is missing."""
    runs = table.get(workload, {})
    fit, peer = fit_method(runs), fastest(runs, methods)
    return None if fit is None or peer is None else speedup(table, workload, fit, peer)


@dataclasses.dataclass(frozen=True)
class Target:
    """``measure(table)`` must reach ``goal``: at least, or at most with ``at_most``."""

    text: str
    measure: object
    goal: float
    unit: str
    at_most: bool = False
    not_applicable: object = None  # (table) -> why the target does not apply, or None

    def met(self, value):
        return value is not None and (value <= self.goal if self.at_most else value >= self.goal)


def _exact_path_declined(table, w):
    """The exact path's target holds where it applies: where ``fast_path="auto"``
    picks it, because the moments cost less than the loop they replace."""
    from functional_sgd.speed import moments_pay

    runs = table.get(w)
    if not runs:
        return None
    extra = next(iter(runs.values())).extra
    if moments_pay(extra["n"], extra["d"], extra["steps"]):
        return None
    return (f"n/a: auto declines it (d = {extra['d']} > 2 x {extra['steps']} steps: "
            f"XᵀX costs n d² = {extra['n'] * extra['d'] ** 2:.0e} multiply-adds, more "
            f"than the {2 * extra['n'] * extra['d'] * extra['steps']:.0e} of the loop)")


def _first_call(table):
    run = table.get("lesson", {}).get("fit")
    return None if run is None else run.extra["first_call_s"]


def _cost_against_warm(method):
    """Time of a ``method`` call over the time of a warm ``fit`` call."""
    return lambda table: speedup(table, "lesson", "fit", baseline=method)


TARGETS = (
    Target("lesson: fit vs torch reference", lambda t: speedup(t, "lesson", "fit"), 100, "x"),
    Target("long lesson: fit vs torch reference",
           lambda t: speedup(t, "long lesson", "fit"), 100, "x"),
    Target("mini-batch: fit vs torch reference",
           lambda t: speedup(t, "mini-batch", "fit"), 40, "x"),
    Target("stochastic: fit vs sklearn SGDRegressor",
           lambda t: speedup(t, "stochastic", "fit", baseline="sklearn SGDRegressor"), 2, "x"),
    Target("sweep: jax.jit(jax.vmap(fit)) vs a torch loop over the lrs",
           lambda t: speedup(t, "sweep", "jax.jit(jax.vmap(fit))"), 1000, "x"),
    Target("sweep: jax.vmap(fit), not jitted, vs a torch loop over the lrs",
           lambda t: speedup(t, "sweep", "jax.vmap(fit)"), 1000, "x"),
    Target("lesson: first call of fit (compile + run)", _first_call, 0.3, "s", at_most=True),
    Target("lesson: a call with a new lr, against a warm call",
           _cost_against_warm("fit, new lr each call"), 1.25, "x the time", at_most=True),
    Target("lesson: a call with new data of the same shape, against a warm call",
           _cost_against_warm("fit, new data each call"), 1.25, "x the time", at_most=True),
) + tuple(
    Target(f"{workload}: fit, {path} vs torch reference",
           partial(lambda t, w, m: speedup(t, w, m), w=workload, m=method), goal, "x",
           not_applicable=partial(_exact_path_declined, w=workload) if exact else None)
    for workload in ("full batch 1e6x2", "full batch 1e5x100", "full batch 1e4x1000")
    for path, method, goal, exact in (
        ("general path", "fit, general path (fast_path=False)", 1.5, False),  # issue 15
        ("exact MSE path", "fit, exact MSE path (fast_path=True)", 5, True))
) + (  # issue 15: against what a user could pick instead (bench/peers.py, bench/peers_torch.py)
    Target("lesson: fit vs Keras 3 model.fit (its faster setting)",
           partial(against_peers, workload="lesson", methods=KERAS), 100, "x"),
    Target("mini-batch: fit vs Keras 3 model.fit (its faster setting; 1,000 random batches "
           "of 64 from 1e5x10, the suite's nearest to the issue's shuffled epoch)",
           partial(against_peers, workload="mini-batch", methods=KERAS), 10, "x"),
    Target("lesson: fit vs fastai Learner (full batch, 100 epochs of one batch)",
           partial(against_peers, workload="lesson", methods=(FASTAI,)), 300, "x"),
    Target("lesson in batches of 10 (the course's fastai run, 5 epochs): fit vs fastai Learner",
           partial(against_peers, workload="lesson in batches of 10", methods=(FASTAI,)), 300,
           "x"),
) + tuple(
    Target(f"{w.name}: {'jax.jit(jax.vmap(fit))' if w.sweep else 'fit'} vs hand-written scan",
           partial(scan_overhead, workload=w.name), 1.2, "x the time", at_most=True)
    for w in FULL
) + tuple(
    Target(f"{w.name}: fit vs torch.compile (its fastest form)",
           partial(against_peers, workload=w.name, methods=TORCH_COMPILE), 1, "x")
    for w in FULL if w.sweep == 0
)
