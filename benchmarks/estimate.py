"""What a run will cost before it starts: per-step seconds measured on this machine (:func:`measure_costs`),
the estimate of every method built from them (:func:`estimate`), and the run's progress lines with an
overall ETA that learns how far off the estimate has been (:class:`RunClock`).

>>> format_duration(3725.4)
'1:02:05'
>>> import io
>>> clock = RunClock([(0, "dymu", 10.0), (0, "phn", 30.0)], io.StringIO())
>>> clock.remaining(0), clock.remaining(1)
(40.0, 30.0)
>>> clock.done_actual, clock.done_estimate = 20.0, 10.0     # the first job took twice its estimate
>>> clock.remaining(1)
60.0
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO

import numpy as np
import torch

import dymu
from dymu.data.datasets import Benchmark
from dymu.training import AnchorConfig, EdgeConfig, WeightConfig, train_anchor, train_edge, train_weights

from . import protocol
from .config import ABLATIONS, RunConfig
from .loaders import run_loaders
from .methods import AnchorStreams, StepBudget

__all__ = ["measure_costs", "estimate", "format_duration", "RunClock"]


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
    train, val, _ = run_loaders(bench, config, 0)
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
        return train_edge(ctrl.anchor, ctrl.edge, ctrl.tasks, train, aff, ones, EdgeConfig(steps=n), device, False,
                          cost_table=ctrl.cost_table)["seconds"]

    def weights(n: int) -> float:
        config = WeightConfig(steps=n)
        return train_weights(ctrl.anchor, ctrl.edge, ctrl.weight, ctrl.tasks, train, ones, config, device, False,
                             planner=ctrl.planner)["seconds"]

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
    for key, module in (("eval_anchor", AnchorStreams(ctrl.anchor).eval()), ("eval_shared", shared.eval())):
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


#: a supernet step (three trees forward and backward, the teachers' forward) in stage-0 steps (N streams forward
#: and backward); measured on fashion_digits with the LeNet at one thread: see the supernet stage's seconds in a results file
SUPERNET_STEP_IN_ANCHOR_STEPS = 1.5


def estimate(config: RunConfig, costs: dict[str, float], n_tasks: int, n_val: int, n_test: int) -> dict[str, float]:
    """Estimated seconds of every method for one seed, ``"per_seed"`` and ``"total"`` over all seeds, from
    ``costs`` (:func:`measure_costs`): steps times the measured seconds per step, plus validation and test
    passes times the measured seconds per image. The controller's models are costed halfway between one
    shared network and the full anchor (its c = 0 trees are near the anchor, its c = 1 and minimum-budget
    trees near one stream); a static tree as the anchor (an upper bound). No cost is measured for the two
    distillation-era baselines; they reuse the measured ones: the distilled trunk's step is a hard-sharing step
    plus its teachers' forward (the anchor's evaluation cost per image times the batch), a cross-stitch step
    N hard-sharing steps (N streams; this counts the heads N times, a slight over-estimate), and a
    cross-stitch network evaluates like the anchor (N streams). A supernet step runs a sandwich of about three
    trees (the anchor tree, one stream, a merged tree) plus the teachers' forward: costed as
    ``SUPERNET_STEP_IN_ANCHOR_STEPS`` anchor steps, with five validations of up to ``4 x (N + 1)`` trees."""
    s = config.steps
    n_pref = len(protocol.evaluation_preferences(n_tasks, config.n_preferences))
    n_hs = n_pref if config.hs_preferences is None else min(config.hs_preferences, n_pref)
    eval_anchor = n_test * costs["eval_anchor"]
    eval_static = n_test * costs["eval_shared"]
    eval_tree = (eval_anchor + eval_static) / 2
    val_examples = min(n_val, math.ceil(config.val_examples / config.eval_batch_size) * config.eval_batch_size)
    static_val = val_examples * costs["eval_shared"]
    # distinct models of the controller per preference: c = 0, c = 1 and the budgets of the protocol that are
    # feasible (0.4 and 0.5 lie below the two-task minimum); budget = 1 gives the c = 0 models, evaluated once
    dynamic_settings = 2 + len(protocol.EVAL_BUDGETS) - 1 - (2 if n_tasks == 2 else 0)
    n_equal_cost = len(protocol.EQUAL_COST_BUDGETS) - (1 if n_tasks == 2 else 0)
    # without the weight hypernet, equal trees are equal networks: a few distinct trees per c
    distinct_trees = min(n_pref, 3)
    plans = config.cost_preferences * (2 * costs["plan_c"] + (dynamic_settings + len(protocol.COST_BUDGETS)) * costs["plan_budget"]
                                       + len(protocol.COST_CURVE_CS) * costs["plan_c"])
    anchor_validations = math.ceil(s.anchor / AnchorConfig().eval_every) + 1  # and the loss scales
    per: dict[str, float] = {}
    supernet = 0.0
    if s.supernet > 0:
        supernet = s.supernet * SUPERNET_STEP_IN_ANCHOR_STEPS * costs["anchor"] + 5 * 4 * (n_tasks + 1) * min(val_examples, 512) * costs["eval_shared"]
    per["dymu"] = (s.anchor * costs["anchor"] + anchor_validations * val_examples * costs["eval_anchor"] + supernet + s.edge * costs["edge"]
                   + s.weights * costs["weights"] + n_pref * dynamic_settings * eval_tree + plans)
    # the streams continue stage 0 to the full budget (TRAINING_BUDGET_RULE), validating as stage 0 does
    extra = s.total - s.anchor
    extra_validations = math.ceil(extra / AnchorConfig().eval_every) + 1 if extra > 0 else 0
    per["single_task"] = extra * costs["anchor"] + extra_validations * val_examples * costs["eval_anchor"] + eval_anchor
    per["dymu_paper"] = s.edge * costs["edge"] + s.weights * costs["weights"] + n_pref * dynamic_settings * eval_tree + plans
    per["dymu_no_weight_hypernet"] = 2 * distinct_trees * eval_tree + plans / 2
    for name in ABLATIONS:
        if config.ablation_weight_hypernet:
            per[name] = s.edge * costs["edge"] + s.weights * costs["weights"] + 2 * n_pref * eval_tree + plans / 2
        else:
            per[name] = s.edge * costs["edge"] + 2 * distinct_trees * eval_tree + plans / 2
    for name in ("phn", "phn_bn"):
        per[name] = s.total * costs[name] + 10 * 5 * static_val + n_pref * eval_static
    # every static model trains for the run's total steps (TRAINING_BUDGET_RULE)
    per["static_tree"] = s.total * costs["anchor"] + 10 * static_val + eval_anchor
    per["static_equal_cost"] = n_equal_cost * per["static_tree"]
    per["hard_sharing"] = n_hs * (s.total * costs["shared"] + 10 * static_val + eval_static)
    teacher_forward = config.batch_size * costs["eval_anchor"]
    per["distilled_trunk"] = (s.total - s.anchor) * (costs["shared"] + teacher_forward) + 10 * static_val + eval_static
    per["cross_stitch"] = s.total * n_tasks * costs["shared"] + 10 * val_examples * costs["eval_anchor"] + eval_anchor
    out = {name: per[name] for name in config.methods}
    out["per_seed"] = sum(out.values())
    out["total"] = out["per_seed"] * len(config.seeds)
    return out


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0.0, float(seconds))
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class RunClock:
    """Progress lines with an overall ETA: the remaining estimate, scaled by how fast the run has been so far
    compared with its estimate."""

    def __init__(self, jobs: list[tuple[int, str, float]], stream: IO[str] | None = None):
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
            f"seed {seed} | method {name} ({index + 1}/{len(self.jobs)}) | estimated {format_duration(est)} | "
            f"elapsed {format_duration(time.time() - self.start)} | ETA of the run {format_duration(self.remaining(index))}"
        )
        return time.time()

    def end(self, index: int, started: float) -> float:
        seconds = time.time() - started
        self.finished.append(seconds)
        self.done_actual += seconds
        self.done_estimate += self.jobs[index][2]
        seed, name, est = self.jobs[index]
        self.log(f"seed {seed} | method {name} done in {format_duration(seconds)} (estimated {format_duration(est)})")
        return seconds
