"""The CPU benchmarks on real data: every method, the protocol of :mod:`benchmarks.protocol`, results and plots.

Usage::

    python -m benchmarks.run multifashion --quick          # one seed, small step budgets: minutes
    python -m benchmarks.run fashion_digits --full         # three seeds, the step budgets below
    python -m benchmarks.run multifashion --full --estimate-only   # measure per-step costs, print the estimate
    dymu bench multifashion --quick                        # the same, through the package's command

Writes ``OUT/NAME.json`` (``OUT/NAME-quick.json`` in quick mode) and PNG plots beside it, prints progress
(method, seed, ETA) on stderr and a markdown table of the results on stdout.

Methods (``--methods`` picks a subset; the controller and the single-task streams always run, because the
others use its anchor: loss scales, task affinity, single-task baselines):

============================  ==========================================================================
``dymu``                      the controller (anchor, edge hypernet, weight hypernet)
``single_task``               its anchor's streams, each on its own task (stage 0 of the controller)
``dymu_no_weight_hypernet``   the same controller, trees built without the weight hypernet
``dymu_no_inactive``          ablation: no inactive-task loss (own edge hypernet, shared anchor)
``dymu_no_affinity_depth``    ablation: no affinity and no depth factor in the active-task loss
``dymu_all_active``           ablation: every task counts as active
``phn`` / ``phn_bn``          Pareto HyperNetworks: all weights / only BatchNorm parameters from the hypernet
``static_tree``               a static affinity tree at the controller's mean ``c = 0`` cost, trained once
``hard_sharing``              one hard-sharing network trained per evaluation preference
============================  ==========================================================================

[choice] The ablations change the branching regulariser, i.e. what the edge hypernet (stage 1) learns; they
share the controller's anchor and, by default, stop after stage 1: their trees are built from the anchor's
own BatchNorm, so compare them with ``dymu_no_weight_hypernet`` (the same pipeline with the paper's
regulariser). This keeps the full runs within their time budget (no stage 2 per ablation, and equal trees
are equal networks, evaluated once); ``--ablations-with-weight-hypernet`` trains stage 2 for them too.
Ablations and ``dymu_no_weight_hypernet`` are evaluated at c = 0 and c = 1 (the paper's settings), the
controller also at the budgets.

Step budgets (:class:`benchmarks.methods.StepBudget`, the same for every method; hypernetwork baselines
get the controller's total): see :data:`MODES`. Every method sees the same data, batch size and seed.
The data set is built once with ``--data-seed`` (default 0); the seed of a run sets the initialisations,
the order of the training batches and the sampled training preferences.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dymu
from dymu.results import write_json
from dymu.checkpoint import versions
from dymu.data import build_benchmark
from dymu.data.datasets import Benchmark, TensorLoader
from dymu.training import AnchorConfig, EdgeConfig, WeightConfig, train_anchor, train_edge, train_weights
from hyper import RegulariserConfig

from . import protocol
from .methods import ControllerMethod, Method, StepBudget

__all__ = ["MODES", "METHODS", "RunConfig", "SingleTask", "WithoutWeightHypernet", "make_config", "run_benchmark",
           "estimate", "measure_costs", "format_markdown", "main"]

BENCHMARKS = ("multifashion", "fashion_digits")

#: every method, in the order they run within a seed
METHODS = (
    "dymu",
    "single_task",
    "dymu_no_weight_hypernet",
    "dymu_no_inactive",
    "dymu_no_affinity_depth",
    "dymu_all_active",
    "phn",
    "phn_bn",
    "static_tree",
    "hard_sharing",
)
ALWAYS = ("dymu", "single_task")
ABLATIONS: dict[str, RegulariserConfig] = {
    "dymu_no_inactive": RegulariserConfig(use_inactive=False),
    "dymu_no_affinity_depth": RegulariserConfig(use_affinity=False, use_depth=False),
    "dymu_all_active": RegulariserConfig(all_active=True),
}

#: per benchmark and mode: step budgets, evaluation sizes. ``hs_preferences``: how many of the evaluation
#: preferences hard sharing trains a model for (None: all); ``test_examples``: the first this many test
#: examples (None: the whole test split); ``val_examples``: the validation examples (a fixed prefix of the
#: split) every method selects its models on (the controller's streams and loss scales, PHN's 5 fixed
#: validation preferences about ten times per run, every static network about ten times).
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "multifashion": {
        "quick": {"seeds": [0], "steps": (300, 200, 120), "n_preferences": 7, "hs_preferences": 3,
                  "test_examples": 4000, "cost_preferences": 200, "val_examples": 1000},
        "full": {"seeds": [0, 1, 2], "steps": (1500, 1000, 600), "n_preferences": None, "hs_preferences": 5,
                 "test_examples": 10000, "cost_preferences": 1000, "val_examples": 3000},
    },
    "fashion_digits": {
        "quick": {"seeds": [0], "steps": (150, 100, 60), "n_preferences": 5, "hs_preferences": 2,
                  "test_examples": 1000, "cost_preferences": 200, "val_examples": 1000},
        "full": {"seeds": [0, 1, 2], "steps": (600, 400, 250), "n_preferences": None, "hs_preferences": 5,
                 "test_examples": 3000, "cost_preferences": 1000, "val_examples": 3000},
    },
}
#: methods evaluated at c = 0 and c = 1 only (the paper's settings); the controller also gets the budgets
C_ONLY = ("dymu_no_weight_hypernet", *ABLATIONS)


@dataclass
class RunConfig:
    """Everything that defines a benchmark run (stored in the results file)."""

    benchmark: str
    mode: str
    seeds: list[int]
    steps: StepBudget
    n_preferences: int | None
    hs_preferences: int | None
    test_examples: int | None
    cost_preferences: int
    methods: list[str]
    val_examples: int = 2000
    ablation_weight_hypernet: bool = False
    batch_size: int = 128
    eval_batch_size: int = 1000
    data_seed: int = 0
    limit: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    out: str = "benchmarks/results"
    plots: bool = True
    calibration_steps: int = 6
    threads: int | None = None

    @property
    def stem(self) -> str:
        return self.benchmark if self.mode == "full" else f"{self.benchmark}-{self.mode}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = asdict(self.steps)
        return out


def make_config(benchmark: str, mode: str = "quick", **overrides: Any) -> RunConfig:
    """The preset of ``benchmark`` in ``mode`` (``"quick"`` or ``"full"``) with ``overrides`` applied
    (``None`` values are ignored). Overriding a step budget or size turns the mode into ``"custom"``."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    preset = dict(MODES[benchmark][mode])
    anchor, edge, weights = preset.pop("steps")
    values: dict[str, Any] = {"benchmark": benchmark, "mode": mode, "steps": StepBudget(anchor, edge, weights),
                              "methods": list(METHODS), **preset}
    changed = False
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "steps" and not isinstance(value, StepBudget):
            value = StepBudget(*value, batch_size=overrides.get("batch_size") or 128)
        if key in ("steps", "n_preferences", "hs_preferences", "test_examples", "cost_preferences", "limit", "batch_size"):
            changed = True
        values[key] = value
    if "batch_size" in values and values["steps"].batch_size != values["batch_size"]:
        values["steps"] = replace(values["steps"], batch_size=values["batch_size"])
    unknown = [m for m in values["methods"] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the methods are {list(METHODS)}")
    values["methods"] = [m for m in METHODS if m in set(values["methods"]) | set(ALWAYS)]
    if changed:
        values["mode"] = "custom" if mode == "full" else f"{mode}-custom"
    return RunConfig(**values)


# ------------------------------------------------------------------------------ method adapters
class _Streams(nn.Module):
    """The anchor's streams as one multi-task module: ``x [B, C, H, W] -> {task: prediction}``."""

    def __init__(self, anchor: nn.Module):
        super().__init__()
        self.anchor = anchor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.anchor.forward_single(x)


class SingleTask(Method):
    """The single-task baseline: the trained controller's anchor streams (selected on validation in stage 0).

    It trains nothing of its own: ``fit`` only records the anchor's training time.
    """

    name = "single_task"

    def __init__(self, source: ControllerMethod):
        super().__init__()
        self.source = source
        self.module: _Streams | None = None

    def fit(self, train, val, *, device, verbose=True) -> None:
        ctrl = self.source.controller
        if ctrl is None:
            raise ValueError("single_task: fit the controller first")
        self.module = _Streams(ctrl.anchor).eval()
        self.train_seconds = float(ctrl.stages["anchor"]["seconds"])

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.module is None:
            raise ValueError("single_task: call fit() first")
        return self.module

    def stored_modules(self):
        return [self.source.controller.anchor]


class WithoutWeightHypernet(Method):
    """The trained controller with its trees built from the anchor's own BatchNorm (the paper's
    "without weight hypernet" baseline): the same anchor and edge hypernet, so it needs no training of its
    own; its training time is that of stages 0 and 1."""

    name = "dymu_no_weight_hypernet"
    dynamic_cost = True

    def __init__(self, source: ControllerMethod):
        super().__init__()
        self.source = source

    @property
    def controller(self) -> dymu.Controller | None:
        return self.source.controller

    def fit(self, train, val, *, device, verbose=True) -> None:
        ctrl = self.controller
        if ctrl is None:
            raise ValueError(f"{self.name}: fit the controller first")
        self.train_seconds = float(ctrl.stages["anchor"]["seconds"] + ctrl.stages["edge"]["seconds"])

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        return self.controller.build_model(list(map(float, preference)), budget, c=c, use_weight_hypernet=False)

    def stored_modules(self):
        return [self.controller.anchor, self.controller.edge]


# ------------------------------------------------------------------------------------- data
class _FirstBatches:
    """The first ``n_batches`` batches of a loader, re-iterable (a fixed prefix of an unshuffled split)."""

    def __init__(self, loader: TensorLoader, n_batches: int):
        self.loader, self.n_batches = loader, n_batches

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n_batches:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.n_batches, len(self.loader))


def _loaders(bench: Benchmark, config: RunConfig, seed: int):
    train = TensorLoader(bench.train, config.batch_size, shuffle=True, seed=seed, drop_last=True)
    val = TensorLoader(bench.val, config.eval_batch_size)
    if config.val_examples < len(bench.val):
        val = _FirstBatches(val, max(1, math.ceil(config.val_examples / config.eval_batch_size)))
    test = TensorLoader(bench.test, config.eval_batch_size)
    if config.test_examples is not None and config.test_examples < len(bench.test):
        test = _FirstBatches(test, max(1, math.ceil(config.test_examples / config.eval_batch_size)))
    return train, val, test


def _n_test(bench: Benchmark, config: RunConfig) -> int:
    if config.test_examples is None or config.test_examples >= len(bench.test):
        return len(bench.test)
    return min(len(bench.test), math.ceil(config.test_examples / config.eval_batch_size) * config.eval_batch_size)


# --------------------------------------------------------------------------------- timing
def measure_costs(bench: Benchmark, config: RunConfig, steps: int = 8) -> dict[str, float]:
    """Seconds per optimisation step of every kind of training, and per evaluated image, measured here.

    Runs each stage with the real trainers (stage 0, 1, 2 of the controller, one hard-sharing network, PHN
    and PHN-BN) on the benchmark's data, untrained: once for one step (warm-up), then for ``steps + 1`` and
    for 1 step; the difference over ``steps`` is the cost of a step without the fixed costs of a call.
    Returns seconds per step (``anchor``, ``edge``,
    ``weights``, ``shared``, ``phn``, ``phn_bn``), seconds per image of evaluation (``eval_anchor``: the full
    anchor, ``eval_shared``: one shared network) and seconds per planned request (``plan_c``, ``plan_budget``).
    """
    from .baselines import PHN
    from .baselines.common import shared_network, train_static

    if steps < 1:
        raise ValueError(f"calibration needs at least one step, got {steps}")
    device = torch.device(config.device)
    tasks = bench.tasks()
    train, val, _ = _loaders(bench, config, 0)
    val_batches = [next(iter(val))]
    ctrl = dymu.Controller(dymu.backbones.lenet(), tasks, seed=0)
    ones = torch.ones(len(tasks))

    def timed(run: Callable[[int], float]) -> float:
        # the first steps of a process are slow, and every call has fixed costs (building, a final validation):
        # the difference between a long and a one-step call is the cost of the extra steps alone
        run(1)
        return max(run(steps + 1) - run(1), 0.0) / steps

    def anchor(n: int) -> float:
        return train_anchor(ctrl.anchor, ctrl.tasks, train, None, AnchorConfig(steps=n), device, False)["seconds"]

    costs: dict[str, float] = {"anchor": timed(anchor)}
    ctrl.fit_affinity(train, n_samples=64, calibration_samples=64, device=device)
    aff = torch.tensor(np.array(ctrl.affinity.matrix), dtype=torch.float32)

    def edge(n: int) -> float:
        return train_edge(ctrl.anchor, ctrl.edge, ctrl.tasks, train, aff, ones, EdgeConfig(steps=n), device, False)["seconds"]

    def weights(n: int) -> float:
        config = WeightConfig(steps=n)
        return train_weights(ctrl.anchor, ctrl.edge, ctrl.weight, ctrl.tasks, train, ones, config, device, False)["seconds"]

    shared = shared_network(dymu.backbones.lenet, tasks, 0)

    def static(n: int) -> float:
        start = time.time()
        train_static(shared, tasks, train, val_batches, ones, steps=n, device=device, eval_every=10**9, verbose=False)
        return time.time() - start

    def phn(mode: str) -> Callable[[int], float]:
        def run(n: int) -> float:
            method = PHN(dymu.backbones.lenet, tasks, StepBudget(n, 0, 0, config.batch_size), mode=mode, loss_scales=ones,
                         eval_every=10**9, val_batches=1, n_val_preferences=1)
            method.fit(train, val_batches, device=device, verbose=False)
            return method.train_seconds
        return run

    costs["edge"] = timed(edge)
    costs["weights"] = timed(weights)
    costs["shared"] = timed(static)
    costs["phn"] = timed(phn("full"))
    costs["phn_bn"] = timed(phn("bn"))
    images, targets = val_batches[0]
    x = (images[:256], {k: v[:256] for k, v in targets.items()})
    n_images = x[0].shape[0]
    for key, module in (("eval_anchor", _Streams(ctrl.anchor).eval()), ("eval_shared", shared.eval())):
        def evaluate(n: int, module=module) -> float:
            start = time.time()
            for _ in range(n):
                dymu.evaluation.evaluate_model(module, tasks, [x], device)
            return time.time() - start
        costs[key] = timed(evaluate) / n_images
    prefs = protocol.cost_preferences(len(tasks), 20)
    for key, budget, c in (("plan_c", None, 0.5), ("plan_budget", 1.0, None)):
        start = time.time()
        for p in prefs:
            ctrl.plan(p, budget, c=c)
        costs[key] = (time.time() - start) / len(prefs)
    return costs


def estimate(config: RunConfig, costs: dict[str, float], n_tasks: int, n_val: int, n_test: int) -> dict[str, float]:
    """Estimated seconds of every method for one seed, ``"per_seed"`` and ``"total"`` over all seeds, from
    ``costs`` (:func:`measure_costs`): steps times the measured seconds per step, plus validation and test
    passes times the measured seconds per image. The controller's models are costed halfway between one
    shared network and the full anchor (its c = 0 trees are near the anchor, its c = 1 and minimum-budget
    trees near one stream); a static tree as the anchor (an upper bound)."""
    s = config.steps
    n_pref = len(protocol.evaluation_preferences(n_tasks, config.n_preferences))
    n_hs = n_pref if config.hs_preferences is None else min(config.hs_preferences, n_pref)
    eval_anchor = n_test * costs["eval_anchor"]
    eval_static = n_test * costs["eval_shared"]
    eval_tree = (eval_anchor + eval_static) / 2
    val_examples = min(n_val, math.ceil(config.val_examples / config.eval_batch_size) * config.eval_batch_size)
    static_val = val_examples * costs["eval_shared"]
    # distinct models of the controller per preference: c = 0, c = 1, budget = min, budget = 0.5 where feasible
    # (below the minimum with two tasks); budget = 1 gives the c = 0 models, evaluated once
    dynamic_settings = 3 if n_tasks == 2 else 4
    # without the weight hypernet, equal trees are equal networks: a few distinct trees per c
    distinct_trees = min(n_pref, 3)
    plans = config.cost_preferences * (2 * costs["plan_c"] + 3 * costs["plan_budget"] + len(protocol.COST_CURVE_CS) * costs["plan_c"])
    anchor_validations = math.ceil(s.anchor / AnchorConfig().eval_every) + 1  # and the loss scales
    per: dict[str, float] = {}
    per["dymu"] = (s.anchor * costs["anchor"] + anchor_validations * val_examples * costs["eval_anchor"] + s.edge * costs["edge"]
                   + s.weights * costs["weights"] + n_pref * dynamic_settings * eval_tree + plans)
    per["single_task"] = eval_anchor
    per["dymu_no_weight_hypernet"] = 2 * distinct_trees * eval_tree + plans / 2
    for name in ABLATIONS:
        if config.ablation_weight_hypernet:
            per[name] = s.edge * costs["edge"] + s.weights * costs["weights"] + 2 * n_pref * eval_tree + plans / 2
        else:
            per[name] = s.edge * costs["edge"] + 2 * distinct_trees * eval_tree + plans / 2
    for name in ("phn", "phn_bn"):
        per[name] = s.total * costs[name] + 10 * 5 * static_val + n_pref * eval_static
    per["static_tree"] = s.anchor * costs["anchor"] + 10 * static_val + eval_anchor
    per["hard_sharing"] = n_hs * (s.anchor * costs["shared"] + 10 * static_val + eval_static)
    out = {name: per[name] for name in config.methods}
    out["per_seed"] = sum(out.values())
    out["total"] = out["per_seed"] * len(config.seeds)
    return out


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _Clock:
    """Progress lines with an overall ETA: the remaining estimate, scaled by how fast the run has been so far
    compared with its estimate."""

    def __init__(self, jobs: list[tuple[int, str, float]], stream=None):
        self.jobs = jobs  # (seed, method, estimated seconds) in run order
        self.finished: list[float] = []  # actual seconds of the jobs done
        self.done_estimate = 0.0
        self.done_actual = 0.0
        self.start = time.time()
        self.stream = stream if stream is not None else sys.stderr

    def log(self, text: str) -> None:
        self.stream.write(f"[bench] {text}\n")
        self.stream.flush()

    def remaining(self, index: int) -> float:
        left = sum(e for _, _, e in self.jobs[index:])
        ratio = self.done_actual / self.done_estimate if self.done_estimate > 0 else 1.0
        return left * ratio

    def begin(self, index: int) -> float:
        seed, name, est = self.jobs[index]
        self.log(
            f"seed {seed} | method {name} ({index + 1}/{len(self.jobs)}) | estimated {_duration(est)} | "
            f"elapsed {_duration(time.time() - self.start)} | ETA of the run {_duration(self.remaining(index))}"
        )
        return time.time()

    def end(self, index: int, started: float) -> float:
        seconds = time.time() - started
        self.finished.append(seconds)
        self.done_actual += seconds
        self.done_estimate += self.jobs[index][2]
        seed, name, est = self.jobs[index]
        self.log(f"seed {seed} | method {name} done in {_duration(seconds)} (estimated {_duration(est)})")
        return seconds


# ------------------------------------------------------------------------------------ the run
def _git_state() -> dict[str, Any] | None:
    """The source tree's commit and whether it had uncommitted changes (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def _hs_indices(n_pref: int, k: int | None) -> list[int]:
    """Which evaluation preferences hard sharing trains for: all, or ``k`` evenly spread over the list
    (for the rays: from one end of the front to the other)."""
    if k is None or k >= n_pref:
        return list(range(n_pref))
    if k < 1:
        raise ValueError(f"hard sharing needs at least one preference, got {k}")
    return sorted({int(round(i)) for i in np.linspace(0, n_pref - 1, k)})


def _contrasting_preferences(names: Sequence[str]) -> list[tuple[str, list[float]]]:
    """A few preferences that should give different trees: the centre and near-corners."""
    n = len(names)
    if n == 2:
        return [(f"{names[0]}-0.9", [0.9, 0.1]), ("equal", [0.5, 0.5]), (f"{names[1]}-0.9", [0.1, 0.9])]
    heavy = lambda k: [0.75 if i == k else 0.25 / (n - 1) for i in range(n)]  # noqa: E731
    return [(f"{names[0]}-0.75", heavy(0)), ("equal", [1.0 / n] * n), (f"{names[-1]}-0.75", heavy(n - 1))]


def _controller_views(ctrl: dymu.Controller, config: RunConfig) -> dict[str, Any]:
    """What the plots show of one controller: trees for contrasting preferences, and cost over the simplex."""
    names = ctrl.task_names
    n = len(names)
    table = ctrl.cost_table
    trees = []
    for label, pref in _contrasting_preferences(names):
        for c in protocol.EVAL_CS:
            plan = ctrl.plan(pref, c=c)
            trees.append({"label": label, "preference": pref, "c": c, "tree": plan.tree.to_dict(), "flops": plan.flops,
                          "flops_fraction": plan.flops / table.anchor_flops})
    views: dict[str, Any] = {
        "trees": trees,
        "block_flops": list(table.block_flops),
        "anchor_flops": table.anchor_flops,
        "min_flops": table.min_flops,
    }
    if n == 2:
        r1 = np.linspace(0.0, 1.0, 41)
        views["cost_map"] = {
            "r1": r1.tolist(),
            **{f"c={protocol.format_number(c)}": [ctrl.plan([float(a), float(1 - a)], c=c).flops for a in r1] for c in protocol.EVAL_CS},
        }
    else:
        corners = [[1.0 if i == k else 0.0 for i in range(n)] for k in range(n)]
        prefs = protocol.cost_preferences(n, min(config.cost_preferences, 500))
        entropy = (-(prefs * np.log(np.clip(prefs, 1e-12, 1))).sum(axis=1) / np.log(n)).tolist()
        views["cost_corners"] = {
            "labels": list(names) + ["centre"],
            **{f"c={protocol.format_number(c)}": [ctrl.plan(p, c=c).flops for p in corners + [[1.0 / n] * n]] for c in protocol.EVAL_CS},
        }
        views["cost_scatter"] = {
            "entropy": entropy,
            **{f"c={protocol.format_number(c)}": [ctrl.plan(p, c=c).flops for p in prefs] for c in protocol.EVAL_CS},
        }
    return views


def _static_tree_budget(cost: dict[str, Any]) -> float:
    """The static tree's budget (share of the extra FLOPs over one stream) matching the controller's mean
    cost at c = 0 over the cost preferences."""
    extra = cost["anchor_flops"] - cost["min_flops"]
    mean = cost["settings"]["c=0"]["mean_flops"]
    return float(min(1.0, max(0.0, (mean - cost["min_flops"]) / extra))) if extra > 0 else 0.0


def run_benchmark(config: RunConfig, *, command: str = "", log_stream=None, estimate_only: bool = False) -> dict[str, Any]:
    """Run every method of ``config`` for every seed, evaluate with the protocol, write JSON and plots.

    Returns the results dict (also written to ``config.out/<stem>.json``, after every seed and at the end).
    With ``estimate_only`` the per-step costs are measured and the estimate returned; nothing is trained or
    written. ``config.threads`` sets torch's CPU threads for the run (restored afterwards).
    """
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        run = _Run(config, command, log_stream if log_stream is not None else sys.stderr)
        return run.estimate_only() if estimate_only else run.all()
    finally:
        torch.set_num_threads(threads_before)


class _Run:
    """One benchmark run: the data, the protocol's fixed parts, the measured costs, and per seed and method
    the raw results (records, cost, times) until they are summarised."""

    def __init__(self, config: RunConfig, command: str, stream):
        self.config, self.command, self.stream = config, command, stream
        self.start = time.time()
        self.device = torch.device(config.device)
        self.say(f"{config.benchmark} ({config.mode}): building the data (data seed {config.data_seed}"
                 + (f", limit {config.limit}" if config.limit else "") + ")")
        self.bench = build_benchmark(config.benchmark, config.data_seed, config.limit, config.data_root)
        self.tasks = self.bench.tasks()
        self.names = [t.name for t in self.tasks]
        self.n_test = _n_test(self.bench, config)
        self.n_val = min(len(self.bench.val), math.ceil(config.val_examples / config.eval_batch_size) * config.eval_batch_size)
        self.preferences = protocol.evaluation_preferences(len(self.tasks), config.n_preferences)
        self.hs_index = _hs_indices(len(self.preferences), config.hs_preferences)
        self.cost_prefs = protocol.cost_preferences(len(self.tasks), config.cost_preferences)
        self.example = self.bench.test.batch(np.arange(1))[0]
        self.per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in config.methods}
        self.single_task: dict[str, Any] = {}
        self.spaces: list[protocol.LossSpace] = []
        self.views: dict[str, Any] = {}
        self.settings_dynamic: list[protocol.Setting] = []
        self.skipped: list[dict[str, Any]] = []
        self.blind: list[float] | None = None
        self.costs: dict[str, float] = {}
        self.est: dict[str, float] = {}
        self.git = _git_state()

    def say(self, text: str) -> None:
        self.stream.write(f"[bench] {text}\n")
        self.stream.flush()

    # ------------------------------------------------------------------------------ estimate
    def measure(self) -> None:
        config = self.config
        load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
        if torch.get_num_threads() > 1 and load > 0.5:
            # measured here: with two threads and other processes on the two cores, a step took up to ten
            # times as long as with one thread
            self.say(f"the load average is {load:.1f} on {cores} cores and torch uses {torch.get_num_threads()} threads: "
                     "if other processes share the cores, --threads 1 avoids the slowdown of competing threads")
        self.say("measuring per-step costs on this machine ...")
        self.costs = measure_costs(self.bench, config, config.calibration_steps)
        self.est = estimate(config, self.costs, len(self.tasks), len(self.bench.val), self.n_test)
        self.est["setup"] = time.time() - self.start  # data, reference point, this measurement
        self.est["total"] += self.est["setup"]
        self.say("measured: " + ", ".join(
            f"{k} {v * 1000:.3g} s/1000 images" if k.startswith("eval") else f"{k} {v:.3g} s" for k, v in self.costs.items()))
        self.say(f"estimate: {_duration(self.est['per_seed'])} per seed, {_duration(self.est['total'])} for "
                 f"{len(config.seeds)} seed(s) with the {_duration(self.est['setup'])} of setup (steps anchor "
                 f"{config.steps.anchor}, edge {config.steps.edge}, weights {config.steps.weights}; "
                 f"{len(self.preferences)} preferences; {self.n_test} test images)")
        for name in config.methods:
            self.say(f"  {name:<26} {_duration(self.est[name])} per seed")

    def estimate_only(self) -> dict[str, Any]:
        self.measure()
        return {"benchmark": self.config.benchmark, "mode": self.config.mode, "config": self.config.as_dict(),
                "measured_costs": self.costs, "estimate_seconds": self.est}

    # ----------------------------------------------------------------------------------- run
    def all(self) -> dict[str, Any]:
        config = self.config
        if config.benchmark not in protocol.HV_REFERENCE:
            self.blind = protocol.input_blind_losses(self.tasks, TensorLoader(self.bench.train, config.eval_batch_size))
            self.say("hypervolume reference point (input-blind losses on the training split): "
                     + ", ".join(f"{n} {v:.4g}" for n, v in zip(self.names, self.blind)))
        self.measure()
        self.clock = _Clock([(seed, name, self.est[name]) for seed in config.seeds for name in config.methods], self.stream)
        for seed in config.seeds:
            self.seed(seed)
            results = self.write(complete=seed == config.seeds[-1])
        out_dir = Path(config.out)
        if config.plots:
            from . import plots

            written = plots.make_all(results, out_dir, config.stem)
            results["plots"] = [str(p) for p in written]
            self.say("plots: " + ", ".join(str(p) for p in written))
            results["wall_seconds"] = time.time() - self.start
            write_json(out_dir / f"{config.stem}.json", results)
        self.say(f"wrote {out_dir / (config.stem + '.json')} in {_duration(time.time() - self.start)}")
        return results

    def make(self, name: str, seed: int, dymu_method: ControllerMethod | None, dymu_cost: dict[str, Any] | None) -> Method:
        """A fresh, untrained method (the controller's variants and baselines use the trained controller)."""
        steps, tasks = self.config.steps, self.tasks

        def make_controller():
            return dymu.Controller(dymu.backbones.lenet(), tasks, seed=seed)

        if name == "dymu":
            return ControllerMethod(make_controller, steps, edge_config=EdgeConfig(seed=seed), weight_config=WeightConfig(seed=seed))
        if name == "single_task":
            return SingleTask(dymu_method)
        if name == "dymu_no_weight_hypernet":
            return WithoutWeightHypernet(dymu_method)
        if name in ABLATIONS:
            return ControllerMethod(make_controller, steps, edge_config=EdgeConfig(seed=seed, regulariser=ABLATIONS[name]),
                                    weight_config=WeightConfig(seed=seed), name=name, anchor_from=dymu_method,
                                    use_weight_hypernet=self.config.ablation_weight_hypernet)
        from .baselines import PHN, HardSharing, StaticTree

        ctrl = dymu_method.controller
        if name in ("phn", "phn_bn"):
            mode = "full" if name == "phn" else "bn"
            return PHN(dymu.backbones.lenet, tasks, steps, mode=mode, loss_scales=ctrl.loss_scales, seed=seed)
        if name == "static_tree":
            return StaticTree(dymu.backbones.lenet, tasks, steps, ctrl.affinity, _static_tree_budget(dymu_cost),
                              loss_scales=ctrl.loss_scales, seed=seed)
        if name == "hard_sharing":
            return HardSharing(dymu.backbones.lenet, tasks, steps, self.preferences[self.hs_index],
                               loss_scales=ctrl.loss_scales, seed=seed)
        raise ValueError(f"unknown method {name!r}")  # make_config rejects unknown names first

    def seed(self, seed: int) -> None:
        """Train and evaluate every method for one seed, then summarise them against this seed's single-task run."""
        config = self.config
        train, val, test = _loaders(self.bench, config, seed)
        dymu_method: ControllerMethod | None = None
        dymu_cost: dict[str, Any] | None = None
        raw: dict[str, tuple[list[protocol.ModelRecord], dict[str, Any] | None]] = {}
        for name in config.methods:
            job = len(self.clock.finished)
            started = self.clock.begin(job)
            method = self.make(name, seed, dymu_method, dymu_cost)
            method.fit(train, val, device=self.device, verbose=True)
            fit_seconds = time.time() - started
            if name == "dymu":
                dymu_method = method
                self.settings_dynamic, self.skipped = protocol.settings_for(method)
                if seed == config.seeds[0]:
                    self.views = _controller_views(method.controller, config)
            settings = protocol.settings_for(method)[0]
            if name in C_ONLY:
                settings = [s for s in settings if s.c is not None]
            prefs = self.preferences[self.hs_index] if name == "hard_sharing" else self.preferences
            self.clock.log(f"seed {seed} | {name}: trained in {_duration(fit_seconds)}; evaluating {len(settings)} setting(s) "
                           f"x {len(prefs)} preferences on {self.n_test} test images")
            records = protocol.evaluate_method(method, self.tasks, test, prefs, settings, device=self.device, example=self.example,
                                               log=lambda text, name=name: self.clock.log(f"seed {seed} | {name}: {text}"))
            cost = protocol.planned_cost(method, settings, self.cost_prefs) if method.dynamic_cost else None
            if name == "dymu":
                dymu_cost = cost
            entry: dict[str, Any] = {"seed": seed, "train_seconds": method.train_seconds, "size": method.size(),
                                     "records": [r.as_dict() for r in records], "cost": cost}
            if name == "hard_sharing":
                entry["train_seconds_all_preferences"] = method.train_seconds * len(self.preferences) / len(self.hs_index)
            if name == "static_tree":
                entry.update(tree=method.tree.to_dict(), budget=method.budget)
            self.per_seed[name].append(entry)
            raw[name] = (records, cost)
            self.clock.end(job, started)
        st_metrics = raw["single_task"][0][0].metrics
        self.single_task[str(seed)] = st_metrics
        space = protocol.loss_space(config.benchmark, [st_metrics[n]["loss"] for n in self.names], self.blind)
        self.spaces.append(space)
        subset = self.preferences[self.hs_index] if len(self.hs_index) < len(self.preferences) else None
        for name, (records, cost) in raw.items():
            self.per_seed[name][-1]["settings"] = protocol.summarise(records, self.tasks, space, st_metrics, cost, subset=subset)

    # -------------------------------------------------------------------------------- results
    def notes(self) -> list[str]:
        config = self.config
        notes = [
            "std is the sample standard deviation over seeds (null with one seed)",
            "mean_flops / params: per image; for the controller and its variants the mean over the cost preferences "
            "from the plan, for fixed-cost methods over the built models",
        ]
        if not config.ablation_weight_hypernet and any(m in ABLATIONS for m in config.methods):
            notes.append("the ablations (dymu_no_inactive, dymu_no_affinity_depth, dymu_all_active) train the edge hypernet "
                         "with the changed regulariser on the controller's anchor and build their trees without a weight "
                         "hypernet: compare them with dymu_no_weight_hypernet")
        if self.n_val < len(self.bench.val):
            notes.append(f"every method selects its models on the same first {self.n_val} of the {len(self.bench.val)} "
                         "validation examples")
        if self.n_test < len(self.bench.test):
            notes.append(f"every method is evaluated on the same first {self.n_test} of the {len(self.bench.test)} test examples")
        return notes

    def method_row(self, name: str, entries: list[dict[str, Any]], space: protocol.LossSpace) -> dict[str, Any]:
        """One method's aggregated results: the required fields at its headline setting, and every setting."""
        settings = protocol.aggregate([e["settings"] for e in entries])
        headline = protocol.STATIC.name if protocol.STATIC.name in settings else protocol.HEADLINE_SETTING
        top = settings[headline]
        row: dict[str, Any] = {
            "headline_setting": headline,
            "hv": top["hv"],
            "hv_ref": list(space.reference),
            "uniformity": top["uniformity"],
            "controllability": top["controllability"],
            "delta_mtl": top["delta_mtl"],
            "mean_flops": top["mean_flops"],
            "params": top["params"],
            "train_seconds": protocol.aggregate([e["train_seconds"] for e in entries]),
            "size": protocol.aggregate([e["size"] for e in entries]),
            "settings": settings,
            "seeds": [e["seed"] for e in entries],
            "per_seed": [{k: v for k, v in e.items() if k != "records"} for e in entries],
            "records": [e["records"] for e in entries],
        }
        curves = [e["cost"]["curve"] for e in entries if e.get("cost")]
        if curves:
            values = np.array([c["mean_flops"] for c in curves])
            row["cost_curve"] = {"c": curves[0]["c"], "mean_flops": values.mean(axis=0).tolist(),
                                 "std": values.std(axis=0, ddof=1).tolist() if len(values) > 1 else None}
        if name == "hard_sharing":
            n, k = len(self.preferences), len(self.hs_index)
            row["train_seconds_all_preferences"] = protocol.aggregate([e["train_seconds_all_preferences"] for e in entries])
            row["trained_preferences"] = [self.preferences[i].tolist() for i in self.hs_index]
            if k < n:
                row["trained_preferences_note"] = (
                    f"hard sharing was trained for {k} of the {n} evaluation preferences (indices {self.hs_index}, evenly "
                    f"spread), each for the same {self.config.steps.anchor} steps, to fit the time budget. Its hv, uniformity "
                    f"and controllability are over those {k} models only (fewer points: compare its hv with the other "
                    f"methods' hv_subset, taken over the same preferences); train_seconds is the measured time of those "
                    f"models, train_seconds_all_preferences extrapolates it to all {n}."
                )
        if name == "static_tree":
            row["trees"] = [e["tree"] for e in entries]
            row["budget"] = [e["budget"] for e in entries]
        return row

    def write(self, *, complete: bool) -> dict[str, Any]:
        """The results of the seeds done so far, written to ``OUT/<stem>.json``."""
        config, space = self.config, self.spaces[0]
        methods = {name: self.method_row(name, entries, space) for name, entries in self.per_seed.items() if entries}
        results: dict[str, Any] = {
            "benchmark": config.benchmark,
            "mode": config.mode,
            "complete": complete,
            "command": self.command,
            "seeds": [e["seed"] for e in self.per_seed["dymu"]],
            "config": config.as_dict(),
            "steps": asdict(config.steps),
            "versions": versions(),
            "git": self.git,
            "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "data": {"checksum": self.bench.checksum,
                     "sizes": {"train": len(self.bench.train), "val": len(self.bench.val), "test": len(self.bench.test)},
                     "val_examples_used": self.n_val, "test_examples_evaluated": self.n_test,
                     "source_checksums": self.bench.source_checksums},
            "tasks": self.names,
            "primary_metrics": {t.name: t.primary for t in self.tasks},
            "higher_is_better": {t.name: t.higher_is_better for t in self.tasks},
            "protocol": protocol.describe(space, self.preferences, self.settings_dynamic, self.skipped, config.cost_preferences),
            "single_task": self.single_task,
            "methods": methods,
            "targets": protocol.check_targets(methods, hv_reference=list(space.reference)),
            "controller_views": self.views,
            "measured_costs": self.costs,
            "estimate_seconds": self.est,
            "notes": self.notes(),
            "wall_seconds": time.time() - self.start,
        }
        write_json(Path(config.out) / f"{config.stem}.json", results)
        return results


# --------------------------------------------------------------------------------- the table
def _pm(entry: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    text = format(entry["mean"] * scale, spec)
    if entry.get("std") is not None:
        text += " ± " + format(entry["std"] * scale, spec.lstrip("+"))
    return text


def format_markdown(results: dict[str, Any]) -> str:
    """A markdown table of every method (the controller at every setting, its ablations at c = 0 and 1)."""
    space = results["protocol"]["loss_space"]
    ref = "(" + ", ".join(f"{v:.3g}" for v in space["reference"]) + ")"
    seeds = results["seeds"]
    subset = any("hv_subset" in m for row in results["methods"].values() for m in row["settings"].values())
    hs = results["methods"].get("hard_sharing", {})
    lines = [
        f"**{results['benchmark']}** ({results['mode']}, seeds {seeds}; steps anchor/edge/weights "
        f"{results['steps']['anchor']}/{results['steps']['edge']}/{results['steps']['weights']}; HV in {space['units']}, "
        f"reference point {ref}; mean ± std over seeds)",
        "",
        f"| method | setting | HV (ref {ref}) |" + (" HV, hard-sharing prefs |" if subset else "")
        + " uniformity | controllability | ΔMTL % | MFLOPs | params (k) | stored (k) | train s |",
        "|---|---|---|" + ("---|" if subset else "") + "---|---|---|---|---|---|---|",
    ]
    for name, row in results["methods"].items():
        settings = row["settings"]
        shown = list(settings) if name == "dymu" else ([s for s in settings if s.startswith("c=")] or list(settings))
        for s in shown:
            m = settings[s]
            cells = [name, s, _pm(m["hv"], ".4g")]
            if subset:
                cells.append(_pm(m["hv"], ".4g") if name == "hard_sharing" else _pm(m.get("hv_subset"), ".4g"))
            train = _pm(row["train_seconds"], ".0f")
            if name == "hard_sharing" and "trained_preferences_note" in row:
                n_all = len(results["protocol"]["evaluation_preferences"])
                train += f" (all {n_all}: {_pm(row['train_seconds_all_preferences'], '.0f')})"
            cells += [_pm(m["uniformity"], ".4f"), _pm(m["controllability"], ".3f"), _pm(m["delta_mtl"], "+.2f"),
                      _pm(m["mean_flops"], ".2f", 1e-6), _pm(m["params"], ".1f", 1e-3), _pm(row["size"], ".1f", 1e-3), train]
            lines.append("| " + " | ".join(cells) + " |")
    if subset and hs.get("trained_preferences_note"):
        lines += ["", hs["trained_preferences_note"]]
    lines.append("")
    lines.append("Targets:")
    for t in results["targets"]:
        mark = {True: "met", False: "MISSED", None: "undecided"}[t["met"]]
        numbers = {k: v for k, v in t.items() if k not in ("target", "met")}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in numbers.items() if k not in ("c", "note"))
        lines.append(f"- [{mark}] {t['target']}: {shown}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


# ----------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=BENCHMARKS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="one seed, small budgets (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="three seeds, the full budgets")
    parser.set_defaults(mode="quick")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the mode's)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="a subset of the methods (dymu and single_task always run)")
    parser.add_argument("--data-seed", type=int, help="seed the data set is built with (default 0)")
    parser.add_argument("--data-root", help="folder with the source files (default: $DYMU_DATA, then the standard places)")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT Fashion-MNIST images of each split")
    parser.add_argument("--estimate-only", action="store_true", help="measure per-step costs, print the estimate, stop")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--ablations-with-weight-hypernet", dest="ablation_weight_hypernet", action="store_true",
                        default=None, help="train stage 2 (the weight hypernet) for the ablations too")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, the number of cores)")
    parser.add_argument("--calibration-steps", type=int, help=argparse.SUPPRESS)
    # sizes, for tests and experiments (they turn the mode into "custom")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("ANCHOR", "EDGE", "WEIGHTS"), help=argparse.SUPPRESS)
    parser.add_argument("--n-preferences", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hs-preferences", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--test-examples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cost-preferences", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--eval-batch-size", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    config = make_config(
        args.benchmark, args.mode, seeds=args.seeds, data_seed=args.data_seed, out=args.out, device=args.device,
        methods=args.methods, data_root=args.data_root, limit=args.limit, plots=args.plots, steps=args.steps,
        n_preferences=args.n_preferences, hs_preferences=args.hs_preferences, test_examples=args.test_examples,
        cost_preferences=args.cost_preferences,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, threads=args.threads,
        calibration_steps=args.calibration_steps, ablation_weight_hypernet=args.ablation_weight_hypernet,
    )
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv)
    results = run_benchmark(config, command=command, estimate_only=args.estimate_only)
    if args.estimate_only:
        return 0
    print(format_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
