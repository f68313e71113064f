"""How much control the choice of tree alone can give: the Spearman controllability that a controller's measured path
losses predict, no model run.

A derived model's task losses are, to first order, those of its tasks' paths, which stage 1 measures on validation
(:mod:`dymu.path_losses`). So the controllability of any rule that maps a preference to a tree can be predicted from
that table: rank each task's predicted loss against its preference over the preferences. Per budget, over a pool of
trees (every tree any of the controller's searches plans at that budget for the evaluation and the cost preferences;
own trees left out, they run other weights), four rules:

* ``planned``: the trees the controller plans (its chosen search);
* ``weighted loss``: for each preference the pool's tree of lowest price (:func:`dymu.budget.priced_rise`, the
  measured searches' preference-weighted loss), which is what "favour the preferred tasks" asks of a tree;
* ``weighted loss, r^p`` (``--sharpness p``): the same with the preference sharpened, task weights
  ``r_k^p / sum_j r_j^p + 0.1 / N``: the obvious way to make a tree lean harder on the preferred tasks;
* ``most control found``: the pool's trees chosen per preference to maximise the mean Spearman itself, by
  coordinate ascent from the weighted-loss choice (a local search: a lower bound on what a choice among the pool's
  trees can reach), with the price that choice pays.

Each is measured over the benchmark's evaluation preferences (what the protocol's controllability averages over) and,
all but the local search, over the 1000 cost preferences (the same rule over more preferences: how much of the
evaluation figure is its sample of 20). Every rule is priced alike, at ``p = 1``. A task whose predicted loss does not
change over the preferences counts 0 in the local search's objective (it follows nothing) and is left out of the
printed mean, as :func:`dymu.metrics.controllability` does.

Usage (a controller a benchmark run saved, whose edge stage measured its path losses)::

    python -m benchmarks.control_bound benchmarks/results/preset-s0/fashion_digits-state/seed0-dymu.pt --benchmark fashion_digits --full --budgets 0.4 0.6 --sharpness 2 4
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np

import dymu
from dymu.budget import price_weights, tree_rises
from dymu.metrics import controllability_per_task
from dymu.planner import SEARCHES

__all__ = ["tree_pool", "weighted_loss_choice", "most_control_choice", "control_bound", "main"]

Assignment = tuple[tuple[int, ...], ...]


def tree_pool(ctrl: dymu.Controller, budget: float, preferences: np.ndarray) -> list[Assignment]:
    """Every tree that one of the controller's searches plans at ``budget`` for one of ``preferences [P, N]``, own
    trees left out, sorted; ``ctrl.search`` is left as it was."""
    return _pool(_plans_by_search(ctrl, budget, preferences))


def _plans_by_search(ctrl: dymu.Controller, budget: float, preferences: np.ndarray) -> dict[str, list]:
    """``{search: [P] plans}`` of every search of the controller at ``budget``; ``ctrl.search`` is left as it was."""
    kept, plans = ctrl.search, {}
    try:
        for search in SEARCHES:
            ctrl.search = search
            ctrl._invalidate()
            plans[search] = [ctrl.planner.plan(np.asarray(r), budget) for r in preferences]
    finally:
        ctrl.search = kept
        ctrl._invalidate()
    return plans


def _pool(plans: dict[str, list]) -> list[Assignment]:
    """The sorted distinct trees of ``plans`` (:func:`_plans_by_search`), own trees left out."""
    return sorted({tuple(tuple(int(v) for v in row) for row in plan.tree.assignment)
                   for search_plans in plans.values() for plan in search_plans if not plan.own_weights})


def weighted_loss_choice(rises: np.ndarray, preferences: np.ndarray, sharpness: float = 1.0) -> np.ndarray:
    """``[P]`` for each preference of ``[P, N]`` the index of the tree of ``rises [T, N]`` (each task's relative loss
    increase on each tree) of lowest price ``sum_k w_k rises[t, k]``, with ``w_k = r_k^p / sum_j r_j^p + 0.1 / N``
    for ``p = sharpness``: at ``p = 1`` the searches' price (:func:`dymu.budget.priced_rise`); a larger ``p`` leans
    harder on the preferred tasks.

    >>> rises = np.array([[0.0, 1.0], [1.0, 0.0], [0.3, 0.3]])   # tree 2 serves both tasks fairly
    >>> prefs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> weighted_loss_choice(rises, prefs).tolist()
    [0, 2, 1]
    >>> weighted_loss_choice(rises, prefs, sharpness=4).tolist()   # 0.6 against 0.4 becomes 0.84 against 0.16
    [0, 0, 1]
    """
    r = np.asarray(preferences, dtype=np.float64) ** float(sharpness)
    weights = np.stack([price_weights(row / row.sum()) for row in r])
    return np.argmin(weights @ np.asarray(rises, dtype=np.float64).T, axis=1)


def _spearman_per_task(pref_ranks: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """``[N]`` the rank correlation of each column of ``pref_ranks [P, N]`` with the negated ``losses [P, N]``; 0 where
    the losses are constant. The local search calls it for every trial, so the preferences' ranks come precomputed
    (:func:`dymu.metrics.controllability_per_task` ranks both sides and warns on constant columns)."""
    from scipy.stats import rankdata

    perf = rankdata(-losses, axis=0)
    a, b = pref_ranks - pref_ranks.mean(0), perf - perf.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(denom > 0, (a * b).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)


def most_control_choice(rises: np.ndarray, preferences: np.ndarray, start: np.ndarray, max_sweeps: int = 50) -> np.ndarray:
    """``[P]`` tree indices into ``rises [T, N]`` for ``preferences [P, N]`` that raise the mean Spearman rank
    correlation between each task's preference and its (negated) loss, by coordinate ascent from ``start [P]``: one
    preference's tree at a time, a change kept when it raises the mean, until a sweep over every preference keeps none
    (or ``max_sweeps``). A local optimum, a lower bound on the best choice among the trees.

    >>> rises = np.array([[0.0, 1.0], [1.0, 0.0]])        # tree 0 serves task 0, tree 1 task 1
    >>> prefs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> most_control_choice(rises, prefs, np.array([1, 1, 0])).tolist()   # the reversed start follows nothing
    [0, 1, 1]
    """
    from scipy.stats import rankdata

    rises, ranks = np.asarray(rises, dtype=np.float64), rankdata(np.asarray(preferences), axis=0)
    choice = np.array(start, dtype=int)
    best = _spearman_per_task(ranks, rises[choice]).mean()
    for _ in range(max_sweeps):
        changed = False
        for i in range(len(choice)):
            for t in range(len(rises)):
                if t == choice[i]:
                    continue
                trial = choice.copy()
                trial[i] = t
                value = _spearman_per_task(ranks, rises[trial]).mean()
                if value > best + 1e-12:
                    best, choice, changed = value, trial, True
        if not changed:
            break
    return choice


def _control(preferences: np.ndarray, rises: np.ndarray) -> tuple[float | None, list[float | None]]:
    """The protocol's controllability (mean over the defined tasks, per task) of predicted ``rises [P, N]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a task whose path never changes follows nothing: undefined
        per_task = controllability_per_task(preferences, rises, higher_is_better=False)
    defined = per_task[np.isfinite(per_task)]
    return (float(defined.mean()) if defined.size else None), [float(v) if np.isfinite(v) else None for v in per_task]


def control_bound(ctrl: dymu.Controller, budgets: Sequence[float], evaluation: np.ndarray, cost: np.ndarray,
                  sharpness: Sequence[float] = ()) -> list[dict]:
    """Per budget: ``{"budget", "pool" (trees), "rules": {rule: {"evaluation": (mean, per_task), "cost": (mean,
    per_task) or None, "price": mean price over the evaluation preferences, "trees": distinct trees over them}}}``
    for the rules of the module docstring (a ``weighted loss, r^p`` rule for each ``p`` of ``sharpness``), from
    ``ctrl.path_losses``.

    Raises:
        ValueError: the controller has no measured path losses.
    """
    table = ctrl.path_losses
    if table is None:
        raise ValueError("the controller has no measured path losses: its edge stage ran without a measured search "
                         "(EdgeConfig warm_start='measured' or a measured search measures them)")
    weights = np.stack([price_weights(r) for r in evaluation])
    out = []
    for budget in budgets:
        # the controller's own plans are among its searches' plans: plan every request once
        plans = _plans_by_search(ctrl, budget, np.vstack([evaluation, cost]))
        pool = _pool(plans)
        rises = np.stack([tree_rises(a, table) for a in pool])
        own_plans = plans[ctrl.search]
        planned = (own_plans[:len(evaluation)], own_plans[len(evaluation):])
        by_loss = weighted_loss_choice(rises, evaluation)
        by_rank = most_control_choice(rises, evaluation, by_loss)
        sharpened = {p: weighted_loss_choice(rises, evaluation, p) for p in sharpness}
        chosen = {  # rule: (rises over the evaluation preferences, over the cost preferences, distinct trees)
            "planned": (np.stack([_plan_rises(p, table) for p in planned[0]]),
                        np.stack([_plan_rises(p, table) for p in planned[1]]),
                        len({(p.tree.assignment, p.own_weights) for p in planned[0]})),
            "weighted loss": (rises[by_loss], rises[weighted_loss_choice(rises, cost)], len(set(by_loss.tolist()))),
            **{f"weighted loss, r^{p:g}": (rises[choice], rises[weighted_loss_choice(rises, cost, p)], len(set(choice.tolist())))
               for p, choice in sharpened.items()},
            "most control found": (rises[by_rank], None, len(set(by_rank.tolist()))),
        }
        rules = {name: {"evaluation": _control(evaluation, on_eval),
                        "cost": None if on_cost is None else _control(cost, on_cost),
                        "price": float((weights * on_eval).sum(1).mean()), "trees": trees}
                 for name, (on_eval, on_cost, trees) in chosen.items()}
        out.append({"budget": float(budget), "pool": len(pool), "rules": rules})
    return out


def _plan_rises(plan, table) -> np.ndarray:
    """``[N]`` the measured rises of a plan's tree; an own tree's on its own weights."""
    if not plan.own_weights:
        return tree_rises(plan.tree.assignment, table)
    index = [tuple(map(tuple, a)) for a, _ in table.own_trees].index(tuple(map(tuple, plan.tree.assignment)))
    return np.array([table.own_tree_rise(index, k) for k in range(table.n_tasks)])


def _text(control: tuple[float | None, list[float | None]] | None) -> str:
    from .protocol import control_text

    if control is None:
        return "-"
    mean, per_task = control
    return f"{control_text(mean)} ({' / '.join(control_text(v) for v in per_task)})"


def main(argv: Sequence[str] | None = None) -> int:
    from dymu.data import build_benchmark

    from . import protocol
    from .config import BENCHMARKS, make_config
    from .options import add_saved_controller, checked_saved_controller

    parser = argparse.ArgumentParser(prog="python -m benchmarks.control_bound", description=__doc__.split("\n\n")[0])
    add_saved_controller(parser, BENCHMARKS, "the run's seed (recorded only: nothing is drawn)")
    parser.add_argument("--budgets", type=float, nargs="+", default=(0.4, 0.6), metavar="B",
                        help="budgets (fractions of the anchor's FLOPs, heads included; default: 0.4 0.6, the control bars')")
    parser.add_argument("--sharpness", type=float, nargs="*", default=(), metavar="P",
                        help="add a weighted-loss rule with preference weights r^P (renormalised) for each P > 0")
    args = parser.parse_args(argv)
    bad = [p for p in args.sharpness if not (math.isfinite(p) and p > 0)]
    if bad:
        parser.error(f"--sharpness must be positive and finite, got {bad}")
    checked_saved_controller(parser, args, args.budgets, "--budgets")
    config = make_config(args.benchmark, args.mode or "quick")
    bench = build_benchmark(args.benchmark, config.data_seed, config.limit, config.data_root)
    ctrl = dymu.load(args.controller, tasks=bench.tasks())
    low = [b for b in args.budgets if b < ctrl.min_budget]
    if low:
        parser.error(f"--budgets {low} lie below the controller's minimum budget {ctrl.min_budget:.3f}")
    n = len(ctrl.task_names)
    evaluation = protocol.evaluation_preferences(n, config.n_preferences)
    cost = protocol.cost_preferences(n)
    try:
        rows = control_bound(ctrl, args.budgets, evaluation, cost, args.sharpness)
    except ValueError as error:
        parser.error(str(error))
    print(f"predicted from the controller's measured path losses (validation; no model run), the {ctrl.search} search "
          f"planned; controllability per task {' / '.join(ctrl.task_names)}; price: mean sum_k (r_k + 0.1/N) x loss rise_k "
          f"over the {len(evaluation)} evaluation preferences (lower is better)")
    print(f"| budget | trees in the pool | rule | controllability, {len(evaluation)} evaluation preferences | "
          f"controllability, {len(cost)} cost preferences | price | distinct trees |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for name, rule in row["rules"].items():
            print(f"| {row['budget']:g} | {row['pool']} | {name} | {_text(rule['evaluation'])} | {_text(rule['cost'])} | "
                  f"{rule['price']:.4f} | {rule['trees']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
