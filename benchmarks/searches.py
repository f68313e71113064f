"""Look inside a trained controller: its budget searches scored again on validation, the FLOPs each one plans, how
much a task loses on another task's stream (its path table), the blocks its supernet stage ran per training image, and
(``--control-budgets``) how well its models follow the preference at given budgets, on validation.

Usage (a controller a benchmark run saved; the run's state folder, ``OUT/<stem>-state``)::

    python -m benchmarks.searches benchmarks/results/solo/fashion_digits-state/seed0-dymu.pt --benchmark fashion_digits --full --seed 0

The validation images are the controller's own validation requests' (the first 512 of the run's validation
split, as :meth:`dymu.Controller.fit_edge` reads them); the test split is not read. Nothing is trained, and the file
is not changed. The scores of searches the controller already scored are taken from its record, the others
(a search added since it was trained) measured: :meth:`dymu.Controller.choose_search`.

``--control-budgets 0.4 0.6`` also builds the model of every evaluation preference of the benchmark's protocol at each
budget and measures it on the whole validation split (as :mod:`benchmarks.split` scores its candidates halfway): the
Spearman controllability (mean and per task), the distinct trees, the share served on an own tree and the mean FLOPs.
"Control that works" states its control bars at budgets 0.4 and 0.6; :mod:`benchmarks.split` scores halfway only.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

import dymu
from dymu.data import build_benchmark
from dymu.path_losses import PathLosses

from . import protocol
from .config import BENCHMARKS, make_config
from .loaders import run_loaders
from .methods import ControllerMethod
from .options import add_saved_controller, checked_saved_controller

__all__ = ["foreign_rises", "planned_cost", "own_tree_share", "control_at_budgets", "main"]


def foreign_rises(table: PathLosses) -> list[tuple[int, int, float]]:
    """Per task ``k``: ``(k, s, rise)`` with ``s`` the other stream on which ``k`` loses least, run all the way up,
    and ``rise = loss_k(s, ..., s) / loss_k(own stream) - 1``.

    >>> table = PathLosses(2, 1, np.array([[1.0, 3.0], [1.5, 2.0]]))   # one block: paths (0,) and (1,)
    >>> [(k, s, round(r, 3)) for k, s, r in foreign_rises(table)]
    [(0, 1, 0.5), (1, 0, 0.5)]
    """
    out = []
    for k in range(table.n_tasks):
        others = [s for s in range(table.n_tasks) if s != k]
        best = min(others, key=lambda s: table.loss(k, (s,) * table.n_layers))
        out.append((k, best, table.relative_increase(k, (best,) * table.n_layers)))
    return out


def planned_cost(ctrl: dymu.Controller, search: str, budgets: Sequence[float], preferences: np.ndarray) -> list[float]:
    """The mean planned FLOPs (a fraction of the anchor's) of ``ctrl``'s ``search`` over ``preferences [P, N]`` at each
    budget; ``ctrl.search`` is left as it was."""
    kept = ctrl.search
    ctrl.search = search
    ctrl._invalidate()
    try:
        planner, anchor = ctrl.planner, ctrl.cost_table.anchor_flops
        return [float(np.mean([planner.plan(np.asarray(r), b).flops / anchor for r in preferences])) for b in budgets]
    finally:
        ctrl.search = kept
        ctrl._invalidate()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.searches", description=__doc__.split("\n\n")[0])
    add_saved_controller(parser, BENCHMARKS, "the run's seed (it orders the validation batches)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--control-budgets", type=float, nargs="+", default=(), metavar="B",
                        help="also measure controllability on validation at these budgets (fractions of the anchor's FLOPs)")
    args = parser.parse_args(argv)
    args.seed = checked_saved_controller(parser, args, args.control_budgets, "--control-budgets")
    torch.set_num_threads(args.threads)
    config = make_config(args.benchmark, args.mode or "quick", seeds=[args.seed])
    bench = build_benchmark(args.benchmark, config.data_seed, config.limit, config.data_root)
    ctrl = dymu.load(args.controller, tasks=bench.tasks())
    names = ctrl.task_names
    sandwich = ctrl.supernet_blocks_per_image()
    if sandwich is not None:
        streams = len(names) * ctrl.n_layers
        steps = ctrl.stages["supernet"]["config"]["steps"]
        print(f"supernet stage: {sandwich:.2f} backbone blocks per training image per step over {steps} steps "
              f"({sandwich / streams:.2f} x the {streams} blocks of all streams)")
    if ctrl.path_losses is not None:
        print("task on its best foreign stream (all the way up): validation loss over its own stream's")
        for k, s, rise in foreign_rises(ctrl.path_losses):
            print(f"  {names[k]:>14s} on {names[s]}'s stream: {rise:+.1%}")
    _, val, _ = run_loaders(bench, config, args.seed)
    recorded = (ctrl.stages.get("edge") or {}).get("search") or {}
    known, trained_with = recorded.get("scores"), recorded.get("chosen")
    chosen = ctrl.choose_search(ctrl._validation_batches(val, 512), known)
    print("validation scores of the searches (lower is better): "
          + ", ".join(f"{s} {v:.4f}" for s, v in chosen["scores"].items()) + f"; chosen: {chosen['chosen']}")
    weights = (ctrl.stages.get("weights") or {}).get("selection") or {}
    if weights.get("best_score") is not None and known and trained_with in known:
        kept = "its start, no adaptation" if weights["best_step"] == 0 else f"step {weights['best_step']}"
        print(f"weight hypernet (stage 2, validation score of the trees it adapts): {known[trained_with]:.4f} unadapted "
              f"({trained_with} search) -> {weights['best_score']:.4f} kept ({kept})")
    prefs = protocol.cost_preferences(len(names))
    budgets = list(protocol.COST_BUDGETS)
    for search in chosen["scores"]:
        if search == "hypernet":
            continue
        costs = planned_cost(ctrl, search, budgets, prefs)
        print(f"planned FLOPs, {search} search, mean over {len(prefs)} preferences: "
              + ", ".join(f"budget {b:g}: {c:.3f}" for b, c in zip(budgets, costs)))
    if ctrl.own_trees is not None and ctrl.path_losses is not None:
        _print_own_trees(ctrl, prefs)
    if args.control_budgets:
        example = bench.val.batch(np.arange(1))[0]
        evaluation = protocol.evaluation_preferences(len(names), config.n_preferences)
        print(f"on validation, {len(evaluation)} evaluation preferences per budget (controllability: Spearman, per task "
              f"{' / '.join(names)})")
        for row in control_at_budgets(ctrl, bench.tasks(), list(val), evaluation, args.control_budgets, example):
            per_task = " / ".join(protocol.control_text(v) for v in row["per_task"])
            print(f"  budget {row['budget']:g}: controllability {protocol.control_text(row['controllability'])} ({per_task}), "
                  f"{row['distinct_trees']} distinct trees (the most served: {row['most_served']}), own trees served {row['own_share']:.0%}, "
                  f"mean FLOPs {row['flops_fraction']:.3f} of the anchor's")
    return 0


def control_at_budgets(ctrl: dymu.Controller, tasks: Sequence[dymu.Task], batches: Sequence, preferences: np.ndarray,
                       budgets: Sequence[float], example: torch.Tensor) -> list[dict]:
    """Per budget, ``ctrl``'s models for ``preferences [P, N]`` measured on ``batches``: ``{"budget", "controllability"
    (the mean Spearman rank correlation between a task's preference and its primary metric; None when undefined, a
    model that ignores the preference), "per_task" [N], "distinct_trees", "most_served" (the preferences the most
    served tree serves), "own_share" (served on an own tree),
    "flops_fraction" (the measured FLOPs' mean over the cost table's anchor tree, heads included)}``.
    ``example [1, C, H, W]``: FLOPs are counted on it."""
    settings = [protocol.Setting(f"budget={b:g}", budget=float(b)) for b in budgets]
    method = ControllerMethod(lambda: ctrl, steps=None)  # trains nothing here: it builds the loaded controller's models
    method.controller = ctrl
    records = protocol.evaluate_method(method, tasks, batches, preferences, settings, example=example)
    out = []
    for setting in settings:
        rows = [r for r in records if r.setting == setting.name]
        trees = Counter(tuple(map(tuple, r.info.get("tree") or [])) for r in rows)
        out.append({"budget": setting.budget, **protocol.control_of(tasks, rows),
                    "most_served": max(trees.values()),
                    "own_share": float(np.mean([bool(r.info.get("own_weights")) for r in rows])),
                    "flops_fraction": float(np.mean([r.flops for r in rows])) / ctrl.cost_table.anchor_flops})
    return out


def own_tree_share(ctrl: dymu.Controller, budgets: Sequence[float], preferences: np.ndarray) -> list[float]:
    """The fraction of ``preferences [P, N]`` whose plan at each budget runs an own tree (:mod:`dymu.own_trees`), with
    the controller's search."""
    planner = ctrl.planner
    return [float(np.mean([planner.plan(np.asarray(r), b).own_weights for r in preferences])) for b in budgets]


def _print_own_trees(ctrl: dymu.Controller, prefs: np.ndarray) -> None:
    """Each own tree: cost, the step it was kept at, every task's measured validation loss over its own stream's; and how
    often the controller's search serves one."""
    table, names, anchor = ctrl.path_losses, ctrl.task_names, ctrl.cost_table.anchor_flops
    kept = {tuple(tuple(r) for r in item["assignment"]): item for item in ctrl.stages["supernet"].get("own_trees", [])}
    print("own trees (trained alone on the supernet's batches): validation loss over each task's own stream's")
    for index, (assignment, _) in enumerate(table.own_trees):
        rises = ", ".join(f"{names[k]} {table.own_tree_rise(index, k):+.1%}" for k in range(len(names)))
        step = (kept.get(assignment) or {}).get("kept_step")
        print(f"  {ctrl.cost_table.tree_flops(assignment) / anchor:.3f} of the anchor's FLOPs, kept at step {step}: {rises}")
    if table.solo is not None:  # what an own tree must beat at budget 1: the full-budget model runs the solo streams
        rises = ", ".join(f"{names[k]} {table.rise(k, (k,) * ctrl.n_layers, alone=True):+.1%}" for k in range(len(names)))
        print(f"  1.000 of the anchor's FLOPs, the solo streams (trained alone for the same steps): {rises}")
    budgets = [ctrl.min_budget * (1 + 1e-9), 0.4, 0.5, 0.6, 0.8, 1.0]
    shares = own_tree_share(ctrl, budgets, prefs)
    print(f"served on an own tree ({ctrl.search} search), share of {len(prefs)} preferences: "
          + ", ".join(f"budget {'min' if i == 0 else format(b, 'g')}: {s:.0%}" for i, (b, s) in enumerate(zip(budgets, shares))))


if __name__ == "__main__":
    sys.exit(main())
