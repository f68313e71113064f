"""The planner: from a request (task preference, budget or resource preference) to a tree.

The edge hypernet proposes the most likely tree; the planner picks which hypernet input to ask with,
checks the cost against the budget on the cost table, and, only when no proposal fits, merges branches
along the task affinity (:func:`dymu.budget.shrink_to_budget`, counted as a fallback).

Two control modes, fixed when the edge hypernet is trained (:class:`dymu.EdgeConfig` ``control``):

* ``"budget"`` (default, [choice] beyond the paper): the hypernet was trained on (preference, budget)
  pairs with an expected-cost term. Its resource input is the budget pressure
  ``s = (1 - b) / (1 - min_budget)`` (:func:`hyper.budget_pressure`). For a budget ``b`` the planner asks
  for the hypernet's trees along a grid of pressures, least frugal first, and keeps the first that
  fits: the request gets the richest learned tree for its preference that the budget allows, not
  only the one proposed at exactly ``s(b)`` (which after short training is often cheaper than it
  needs to be).
* ``"paper"``: the hypernet's input is the paper's resource preference ``c``; a budget is met by the
  least frugal ``c`` of a 21-point grid whose tree fits.

Five searches for a budget in budget mode (``search``), chosen on validation after stage 1
(:meth:`dymu.Controller.fit_edge`):

* ``"hypernet"``: the edge hypernet's trees over the pressure grid, as above.
* ``"merge"`` ([choice] beyond the paper): from the anchor, merge branches along the affinity, the least
  preference-weighted harm per FLOP saved first (:func:`dymu.budget.shrink_to_budget`), until the tree
  fits: low-preference tasks move first, onto their most similar streams. The controller keeps
  whichever search scores better on its validation requests.
  The merge is the plan here, not a fallback (``fallback`` stays False); the edge hypernet still serves
  ``c`` requests, and every search gives the anchor tree at budget 1.
* ``"measured"`` ([choice] beyond the paper): the same merge search with each merge's harm measured, the
  moved tasks' validation losses along their new paths (:mod:`dymu.path_losses`), in place of the guess
  from the affinity and the depth.
* ``"fill"`` ([choice] beyond the paper): the measured search, then what the budget still leaves is spent on
  the splits that measure best per FLOP (:func:`dymu.budget.fill_budget`): the last merge of a search from
  above often frees far more than the budget needed.
* ``"family"`` ([choice] beyond the paper): the fill search's tree, or the nested static affinity tree of the
  budget (:func:`dymu.family.family_tree`, the trees a supernet stage with ``tree_family="affinity"`` trains)
  filled the same way, whichever the measured path losses price lower for the preference: a greedy merge
  from the anchor need not find the trees the streams were trained as.

With own trees (:mod:`dymu.own_trees`; their measured losses in :attr:`dymu.path_losses.PathLosses.own_trees`), every
measured search then compares its tree with each own tree that fits the budget, priced the same way on the own tree's
measured losses, and serves the lowest priced (``BuildPlan.own_weights``; ties keep the search's tree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from affinity.tree import Tree
from hyper import EdgeHypernet, budget_pressure, most_likely_parents

from .budget import CostTable, fill_budget, merged_anchor, priced_own_tree, priced_rise, shrink_to_budget
from .family import affinity_family, family_tree
from .path_losses import PathLosses

__all__ = ["BuildPlan", "Planner", "CONTROL_MODES", "SEARCHES", "MEASURED_SEARCHES"]

CONTROL_MODES = ("budget", "paper")
SEARCHES = ("hypernet", "merge", "measured", "fill", "family")
#: the searches that merge branches from the anchor tree
MERGE_SEARCHES = ("merge", "measured", "fill", "family")
#: the searches that price trees on the measured path losses
MEASURED_SEARCHES = ("measured", "fill", "family")

#: resource inputs tried, least frugal first: the paper's 21-point c grid; 41 budget pressures
GRID_POINTS = 21


@dataclass(frozen=True)
class BuildPlan:
    """What the planner decided for one request.

    Attributes:
        tree: the architecture (a :class:`affinity.Tree`; node id = anchor stream).
        preference: the normalised task preference ``[N]``.
        budget: the FLOP budget asked for (fraction of the anchor's, heads included), or None.
        c: the edge hypernet's resource input that proposed the tree (``c`` in paper mode, the budget
            pressure ``s`` in budget mode); also the weight hypernet's.
        flops, params: per-image cost of the tree, from the cost table.
        fallback: True when no proposal fitted and branches were merged after the hypernet.
        mode: ``"budget"`` or ``"paper"``.
        search: one of :data:`SEARCHES`: what decided the tree (see the module docstring).
        own_weights: the tree is an own tree (:mod:`dymu.own_trees`) and runs its own copy of the streams.
    """

    tree: Tree
    preference: tuple[float, ...]
    budget: float | None
    c: float
    flops: int
    params: int
    fallback: bool
    mode: str
    search: str = "hypernet"
    own_weights: bool = False

    @property
    def shrunk(self) -> bool:
        """The former name of :attr:`fallback`."""
        return self.fallback

    def as_dict(self) -> dict[str, Any]:
        return {
            "preference": list(self.preference),
            "budget": self.budget,
            "c": self.c,
            "mode": self.mode,
            "flops": self.flops,
            "params": self.params,
            "fallback": self.fallback,
            "shrunk": self.fallback,
            "search": self.search,
            "own_weights": self.own_weights,
            "tree": self.tree.to_dict(),
        }


class Planner:
    """Turns requests into :class:`BuildPlan` objects with one edge hypernet and one cost table.

    Args:
        edge: the (trained) edge hypernet.
        cost_table: per-block and per-head costs.
        task_names: the N tasks, in order.
        affinity: ``[N, N]`` task affinity for the fallback merge (None: all tasks alike).
        mode: ``"budget"`` or ``"paper"`` (see the module docstring).
        search: one of :data:`SEARCHES`: how a budget is met in budget mode (module docstring).
        path_losses: the measured per-path losses the searches of :data:`MEASURED_SEARCHES` need.
        own_min_share: an own tree is served at a budget only when its FLOPs are at least this share of the budget's
            (:class:`dymu.SupernetConfig` ``own_min_share``).
    """

    def __init__(
        self,
        edge: EdgeHypernet,
        cost_table: CostTable,
        task_names: Sequence[str],
        affinity: np.ndarray | None,
        mode: str = "budget",
        search: str = "hypernet",
        path_losses: PathLosses | None = None,
        own_min_share: float = 0.0,
    ):
        if mode not in CONTROL_MODES:
            raise ValueError(f"control mode must be one of {CONTROL_MODES}, got {mode!r}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if search in MEASURED_SEARCHES and path_losses is None:
            raise ValueError(f"the {search!r} search needs measured path losses (Controller.measure_paths(val))")
        if path_losses is not None and (path_losses.n_tasks, path_losses.n_layers) != (cost_table.n_tasks, cost_table.n_layers):
            raise ValueError(f"the path losses are for {path_losses.n_tasks} tasks on {path_losses.n_layers} blocks, the cost "
                             f"table for {cost_table.n_tasks} on {cost_table.n_layers}: they must come from one controller")
        self.edge, self.table, self.mode, self.search = edge, cost_table, mode, search
        self.path_losses = path_losses
        self.own_min_share = float(own_min_share)
        self.task_names = list(task_names)
        n = len(self.task_names)
        self.affinity = np.ones((n, n)) if affinity is None else np.asarray(affinity, dtype=float)
        self._family: list | None = None

    def check_budget_reachable(self, budget: float) -> None:
        """Raise ``ValueError`` giving the minimum when ``budget`` is below the cheapest tree."""
        table = self.table
        # compared exactly as the guarantee is stated: FLOPs <= budget x anchor FLOPs
        if budget * table.anchor_flops < table.min_flops:
            minimum = math.ceil(table.min_budget * 1e6) / 1e6
            raise ValueError(
                f"budget {budget:.6f} is below the cheapest tree (one stream plus the heads): the minimum budget is "
                f"{minimum:.6f} ({table.min_flops} of {table.anchor_flops} FLOPs)"
            )

    def resource_inputs(self, budget: float | None, c: float | None) -> list[float]:
        """The hypernet inputs to try for a request, least frugal first."""
        if c is not None:
            return [float(c)]
        if self.mode == "paper":
            return [float(v) for v in np.linspace(0.0, 1.0, GRID_POINTS)]
        if budget is None:
            return [0.0]
        return [float(v) for v in np.linspace(0.0, 1.0, 2 * GRID_POINTS - 1)]

    @torch.no_grad()
    def plan(self, preference: np.ndarray, budget: float | None = None, c: float | None = None) -> BuildPlan:
        """The tree for a normalised preference ``[N]`` under ``budget`` (fraction of the anchor's FLOPs,
        heads included) and/or the resource input ``c``; validated inputs only (see
        :meth:`dymu.Controller.build_model`)."""
        table = self.table
        if budget is not None:
            self.check_budget_reachable(budget)
        if self.search in MERGE_SEARCHES and self.mode == "budget" and budget is not None and c is None:
            return self._merge_plan(preference, budget)
        inputs = self.resource_inputs(budget, c)
        device = next(self.edge.parameters()).device
        r = torch.as_tensor(np.asarray(preference), dtype=torch.float32, device=device)
        logits = self.edge(r.expand(len(inputs), -1), torch.tensor(inputs, dtype=torch.float32, device=device))
        allowed = None if budget is None else budget * table.anchor_flops
        chosen, fallback = None, False
        for i, value in enumerate(inputs):
            assignment = most_likely_parents(logits[i])
            if allowed is None or table.tree_flops(assignment) <= allowed:
                chosen = (value, assignment)
                break
        if chosen is None:
            # no proposal fits: start from the most frugal one and merge branches along the affinity
            last = most_likely_parents(logits[-1])
            chosen = (inputs[-1], shrink_to_budget(last, allowed, table, preference, self.affinity))
            fallback = True
        value, assignment = chosen
        return BuildPlan(
            tree=Tree(self.task_names, assignment),
            preference=tuple(float(v) for v in preference),
            budget=budget,
            c=float(value),
            flops=table.tree_flops(assignment),
            params=table.tree_params(assignment),
            fallback=fallback,
            mode=self.mode,
        )

    def _merge_plan(self, preference: np.ndarray, budget: float) -> BuildPlan:
        measured = self.path_losses if self.search in MEASURED_SEARCHES else None
        assignment = merged_anchor(self.table, budget, preference, self.affinity, measured,
                                   fill=self.search in ("fill", "family"))
        if self.search == "family":
            assignment = self._family_or(assignment, preference, budget)
        own = False
        if measured is not None and measured.own_trees:
            assignment, own = self._own_tree_or(assignment, preference, budget)
        return self._budget_plan(assignment, preference, budget, self.search, own)

    def _own_tree_or(self, chosen, preference: np.ndarray, budget: float) -> tuple[tuple[tuple[int, ...], ...], bool]:
        """``chosen`` or the own tree within ``budget`` (and of at least ``own_min_share`` of it) that the measured
        losses price lowest for the preference, if lower than ``chosen`` (ties keep ``chosen``); and whether it is an
        own tree."""
        assert self.path_losses is not None  # measured searches only
        allowed = budget * self.table.anchor_flops
        best, best_price, own = tuple(tuple(row) for row in chosen), priced_rise(chosen, preference, self.path_losses), False
        for index, (assignment, _) in enumerate(self.path_losses.own_trees):
            if not self.own_min_share * allowed <= self.table.tree_flops(assignment) <= allowed:
                continue
            price = priced_own_tree(index, preference, self.path_losses)
            if price < best_price:
                best, best_price, own = assignment, price, True
        return best, own

    def _budget_plan(self, assignment, preference: np.ndarray, budget: float, search: str, own_weights: bool = False) -> BuildPlan:
        table = self.table
        return BuildPlan(
            tree=Tree(self.task_names, assignment),
            preference=tuple(float(v) for v in preference),
            budget=budget,
            c=float(budget_pressure(budget, table.min_budget)),
            flops=table.tree_flops(assignment),
            params=table.tree_params(assignment),
            fallback=False,
            mode=self.mode,
            search=search,
            own_weights=own_weights,
        )

    def family_tree(self, budget: float) -> tuple[tuple[int, ...], ...]:
        """The nested affinity tree of ``budget`` (:func:`dymu.family.family_tree` over :func:`dymu.family.affinity_family`
        of this planner's cost table and affinity, built once): the trees a supernet stage with
        ``tree_family="affinity"`` trains."""
        if self._family is None:
            self._family = affinity_family(self.table, self.affinity)
        return family_tree(self._family, budget * self.table.anchor_flops)

    def family_plan(self, preference: np.ndarray, budget: float, c: float | None = None) -> BuildPlan:
        """:meth:`plan`'s signature for :meth:`family_tree`: the same tree for every preference, unfilled."""
        return self._budget_plan(self.family_tree(budget), preference, budget, "family")

    def _family_or(self, filled: tuple[tuple[int, ...], ...], preference: np.ndarray, budget: float) -> tuple[tuple[int, ...], ...]:
        """The family search: ``filled`` (the fill search's tree) or the filled family tree of ``budget``, the one
        the path losses price lower (ties keep ``filled``)."""
        assert self.path_losses is not None  # checked in __init__
        allowed = budget * self.table.anchor_flops
        start = fill_budget(self.family_tree(budget), allowed, self.table, preference, self.path_losses)
        candidate = tuple(tuple(row) for row in start)
        if priced_rise(candidate, preference, self.path_losses) < priced_rise(filled, preference, self.path_losses):
            return candidate
        return filled
