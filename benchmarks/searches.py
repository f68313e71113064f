"""Look inside a trained controller: its budget searches scored again on validation, the FLOPs each one plans, how
much a task loses on another task's stream (its path table), and the blocks its supernet stage ran per training image.

Usage (a controller a benchmark run saved; the run's state folder, ``OUT/<stem>-state``)::

    python -m benchmarks.searches benchmarks/results/solo/fashion_digits-state/seed0-dymu.pt --benchmark fashion_digits --full --seed 0

The validation images are the controller's own validation requests' (the first 512 of the run's validation
split, as :meth:`dymu.Controller.fit_edge` reads them); the test split is not read. Nothing is trained, and the file
is not changed. The scores of searches the controller already scored are taken from its record, the others
(a search added since it was trained) measured: :meth:`dymu.Controller.choose_search`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

import dymu
from dymu.data import build_benchmark
from dymu.path_losses import PathLosses

from . import protocol
from .config import BENCHMARKS, make_config
from .loaders import run_loaders
from .options import add_saved_controller, saved_seed

__all__ = ["foreign_rises", "planned_cost", "own_tree_share", "main"]


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
    args = parser.parse_args(argv)
    if not args.controller.is_file():
        parser.error(f"no controller file at {args.controller}")
    args.seed = saved_seed(parser, args.controller, args.seed)
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
    return 0


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
