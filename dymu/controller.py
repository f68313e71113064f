"""The controller: an anchor net and two hypernetworks that build a multi-task tree for any preference.

Typical use::

    ctrl = dymu.Controller(dymu.backbones.lenet(), tasks)
    ctrl.fit_anchor(train, val)        # stage 0
    ctrl.fit_affinity(train)           # RSA task affinity on the frozen anchor
    ctrl.fit_edge(train)               # stage 1
    ctrl.fit_weights(train)            # stage 2
    model = ctrl.build_model({"fashion": 0.6, "digit": 0.4, ...}, budget=0.5)
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affinity.features import collect_features
from affinity.rsa import AffinityResult, rsa_affinity
from affinity.tree import Tree
from hyper import EdgeHypernet, RegulariserConfig, WeightHypernet, most_likely_parents

from .anchor import AnchorNet
from .backbones.base import BlockBackbone
from .budget import CostTable, shrink_to_budget
from .derived import DerivedModel, derive_model, recalibrate_batchnorm
from .evaluation import EvaluationTable, evaluate_model
from .preferences import check_budget, check_resource, normalize_preferences
from .tasks import Task, check_tasks
from .training import (
    AnchorConfig,
    EdgeConfig,
    WeightConfig,
    evaluate_streams,
    train_anchor,
    train_edge,
    train_weights,
)

__all__ = ["Controller", "BuildPlan"]

#: resource preferences tried when a budget is mapped to c (least frugal first)
C_GRID = tuple(float(c) for c in np.linspace(0.0, 1.0, 21))


class BuildPlan:
    """What ``build_model`` decided for one request: the tree, the resource preference used, the cost."""

    def __init__(self, tree: Tree, c: float, flops: int, params: int, shrunk: bool, preference: np.ndarray, budget: float | None):
        self.tree, self.c, self.flops, self.params = tree, c, flops, params
        self.shrunk, self.preference, self.budget = shrunk, preference, budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "preference": [float(v) for v in self.preference],
            "budget": self.budget,
            "c": self.c,
            "flops": self.flops,
            "params": self.params,
            "shrunk": self.shrunk,
            "tree": self.tree.to_dict(),
        }


class Controller:
    """One trained controller; any (preference, budget) at inference gives a tree-structured network.

    Args:
        backbone: a :class:`~dymu.backbones.BlockBackbone` (the template of every stream).
        tasks: the N tasks (:class:`~dymu.Task`), or the name of a registered task set
            (``"multifashion"``, ``"fashion_digits"``, ...).
        seed: seeds the heads' and hypernets' initialisation.
        embed_dim, edge_hidden, edge_depth, weight_hidden, weight_depth: hypernet sizes (paper: 32,
            100, 2, 100, 3).
    """

    def __init__(
        self,
        backbone: BlockBackbone,
        tasks: Sequence[Task] | str,
        *,
        seed: int = 0,
        embed_dim: int = 32,
        edge_hidden: int = 100,
        edge_depth: int = 2,
        weight_hidden: int = 100,
        weight_depth: int = 3,
    ):
        from .registry import resolve_tasks

        self.task_set = tasks if isinstance(tasks, str) else None
        self.tasks = check_tasks(resolve_tasks(tasks))
        if len(self.tasks) < 2:
            raise ValueError("a multi-task controller needs at least 2 tasks")
        self.task_names = [t.name for t in self.tasks]
        self.hyper_config = {
            "seed": seed, "embed_dim": embed_dim, "edge_hidden": edge_hidden, "edge_depth": edge_depth,
            "weight_hidden": weight_hidden, "weight_depth": weight_depth,
        }
        self.backbone_recipe = getattr(backbone, "recipe", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.anchor = AnchorNet(backbone, self.tasks, seed=seed)
            n, layers = len(self.tasks), self.anchor.n_layers
            self.edge = EdgeHypernet(n, layers, embed_dim=embed_dim, hidden=edge_hidden, depth=edge_depth)
            self.weight = WeightHypernet(n, self.anchor.bn_channels, embed_dim=embed_dim, hidden=weight_hidden, depth=weight_depth)
        self.anchor.eval()
        self.edge.eval()
        self.weight.eval()
        self.cost_table = CostTable.measure(self.anchor)
        self.affinity: AffinityResult | None = None
        self.loss_scales = torch.ones(n)
        self.calibration: Tensor | None = None
        self.bn_stats = "anchor"
        self.regulariser = RegulariserConfig()
        self.stages: dict[str, Any] = {}
        self._cache: OrderedDict[tuple, tuple[BuildPlan, list[Tensor]]] = OrderedDict()

    # ------------------------------------------------------------------------------ facts
    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_layers(self) -> int:
        return self.anchor.n_layers

    @property
    def min_budget(self) -> float:
        """The smallest budget any tree meets: one stream plus every head, over the anchor's FLOPs."""
        return self.cost_table.min_budget

    def _device(self, device: str | torch.device | None) -> torch.device:
        if device is None:
            return next(self.anchor.parameters()).device
        return torch.device(device)

    def _invalidate(self) -> None:
        self._cache.clear()

    # --------------------------------------------------------------------------- stage 0
    def fit_anchor(
        self,
        train: Iterable,
        val: Iterable | None = None,
        *,
        steps: int | None = None,
        config: AnchorConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """Stage 0: train each stream on its own task, keep its best validation checkpoint, then set the
        loss scales ``w_i`` from validation.

        [choice] ``w_i = 1 / L_i(anchor)``: each task's loss is divided by its single-task network's
        validation loss, so a loss of 1 means "as good as single-task" for every task and loss
        magnitudes do not skew the preference. Without ``val`` the training data is used.
        """
        config = config or AnchorConfig()
        if steps is not None:
            config = replace(config, steps=steps)
        device = self._device(device)
        result = train_anchor(self.anchor, self.tasks, train, val, config, device, verbose)
        self.set_loss_scales(val if val is not None else train, device=device)
        self.stages["anchor"] = {"config": asdict(config), "seconds": result["seconds"], "best_val": result["best"]}
        self._invalidate()
        return result

    @torch.no_grad()
    def set_loss_scales(self, data: Iterable, device: str | torch.device | None = None, max_batches: int = 50) -> Tensor:
        """``w_i = 1 / mean loss of stream i on task i`` over (at most ``max_batches`` of) ``data``."""
        device = self._device(device)
        batches = []
        for i, batch in enumerate(data):
            if i >= max_batches:
                break
            batches.append(batch)
        metrics = evaluate_streams(self.anchor, self.tasks, batches, device)
        losses = torch.tensor([metrics[n]["loss"] for n in self.task_names])
        if not torch.isfinite(losses).all():
            raise ValueError(f"a stream's loss is not finite: {dict(zip(self.task_names, losses.tolist()))}")
        self.loss_scales = 1.0 / losses.clamp_min(1e-6)
        return self.loss_scales

    # -------------------------------------------------------------------------- affinity
    @torch.no_grad()
    def fit_affinity(
        self,
        data: Iterable | Tensor,
        *,
        n_samples: int = 256,
        measure: str = "auto",
        calibration_samples: int = 256,
        device: str | torch.device | None = None,
    ) -> AffinityResult:
        """Task affinity by representation similarity analysis of the frozen streams on ``n_samples``
        inputs (method.md section 7); also keeps ``calibration_samples`` inputs for BatchNorm
        re-estimation of derived trees.

        ``measure``: ``"pearson"`` (the paper's recipe: distances between Pearson similarity matrices,
        row-normalised), ``"cka"`` (linear CKA between the streams' features), or ``"auto"``: [choice]
        ``"pearson"`` for three or more tasks, ``"cka"`` for two, where row normalisation sets the only
        off-diagonal distance to 1 and every affinity to 0, which would switch the sharing term of the
        regulariser (and with it the effect of ``c``) off.
        """
        device = self._device(device)
        if n_samples < 3:
            raise ValueError(f"the affinity needs at least 3 samples, got n_samples={n_samples}")
        if measure == "auto":
            measure = "pearson" if self.n_tasks >= 3 else "cka"
        inputs = _gather_inputs(data, max(n_samples, calibration_samples))
        self.calibration = inputs[:calibration_samples].cpu() if calibration_samples > 0 else None
        models = {name: self.anchor.streams[i] for i, name in enumerate(self.task_names)}
        features = collect_features(models, inputs=inputs[:n_samples].to(device), max_samples=n_samples, spatial_size=32)
        self.affinity = rsa_affinity(features, measure=measure)
        self.stages["affinity"] = {"n_samples": int(min(n_samples, len(inputs))), "measure": measure}
        self._invalidate()
        return self.affinity

    def _affinity_tensor(self) -> Tensor:
        if self.affinity is None:
            raise ValueError("no task affinity yet: call fit_affinity(data) first (needed by the branching regulariser)")
        return torch.tensor(np.array(self.affinity.matrix), dtype=torch.float32)

    # --------------------------------------------------------------------------- stage 1
    def fit_edge(
        self,
        train: Iterable,
        *,
        steps: int | None = None,
        config: EdgeConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """Stage 1: the edge hypernet on the frozen anchor with ``sum_i r_i w_i L_i + Omega``."""
        config = config or EdgeConfig()
        if steps is not None:
            config = replace(config, steps=steps)
        device = self._device(device)
        if self.calibration is None and config.bn_stats == "batch":
            raise ValueError("bn_stats='batch' needs calibration inputs: call fit_affinity(data) first")
        result = train_edge(
            self.anchor, self.edge, self.tasks, train, self._affinity_tensor(), self.loss_scales, config, device, verbose
        )
        self.bn_stats = config.bn_stats
        self.regulariser = config.regulariser
        self.stages["edge"] = {"config": _jsonable(asdict(config)), "seconds": result["seconds"], "log": result["log"]}
        self._invalidate()
        return result

    # --------------------------------------------------------------------------- stage 2
    def fit_weights(
        self,
        train: Iterable,
        *,
        steps: int | None = None,
        config: WeightConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """Stage 2: the weight hypernet (BatchNorm deltas) on the task loss, anchor and edge frozen."""
        config = config or WeightConfig(bn_stats=self.bn_stats)
        if steps is not None:
            config = replace(config, steps=steps)
        device = self._device(device)
        if "edge" not in self.stages:
            raise ValueError("train the edge hypernet first: fit_edge(train)")
        result = train_weights(self.anchor, self.edge, self.weight, self.tasks, train, self.loss_scales, config, device, verbose)
        self.stages["weights"] = {"config": _jsonable(asdict(config)), "seconds": result["seconds"], "log": result["log"]}
        self._invalidate()
        return result

    # ---------------------------------------------------------------------------- build
    def plan(
        self,
        preferences: Mapping[str, float] | Sequence[float],
        budget: float | None = None,
        *,
        c: float | None = None,
    ) -> BuildPlan:
        """Decide the tree for a request without building the module (see :meth:`build_model`)."""
        return self._plan_and_deltas(preferences, budget, c, want_deltas=False)[0]

    @torch.no_grad()
    def _plan_and_deltas(self, preferences, budget, c, want_deltas: bool) -> tuple[BuildPlan, list[Tensor] | None]:
        r = normalize_preferences(preferences, self.task_names)
        if budget is None and c is None:
            budget = 1.0
        if budget is not None:
            budget = check_budget(budget)
            # compared exactly as the guarantee is stated: FLOPs <= budget x anchor FLOPs
            if budget * self.cost_table.anchor_flops < self.cost_table.min_flops:
                minimum = math.ceil(self.min_budget * 1e6) / 1e6
                raise ValueError(
                    f"budget {budget:.6f} is below the cheapest tree (one stream plus the heads): "
                    f"the minimum budget is {minimum:.6f} ({self.cost_table.min_flops} of "
                    f"{self.cost_table.anchor_flops} FLOPs)"
                )
        if c is not None:
            c = check_resource(c)
        key = (tuple(np.round(r, 12)), budget, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            plan, deltas = self._cache[key]
            if deltas is not None or not want_deltas:
                return plan, deltas
        device = self._device(None)
        table = self.cost_table
        cs = [c] if c is not None else list(C_GRID)
        rr = torch.tensor(r, dtype=torch.float32, device=device).expand(len(cs), -1)
        logits = self.edge(rr, torch.tensor(cs, dtype=torch.float32, device=device))
        trees = [most_likely_parents(logits[i]) for i in range(len(cs))]
        allowed = None if budget is None else budget * table.anchor_flops
        chosen = None
        for ci, assignment in zip(cs, trees):
            if allowed is None or table.tree_flops(assignment) <= allowed:
                chosen = (ci, assignment)
                break
        shrunk = False
        if chosen is None:
            # no c fits: start from the most frugal tree and merge branches along the affinity
            aff = np.asarray(self.affinity.matrix) if self.affinity is not None else np.ones((self.n_tasks, self.n_tasks))
            chosen = (cs[-1], shrink_to_budget(trees[-1], allowed, table, r, aff))
            shrunk = True
        c_used, assignment = chosen
        tree = Tree(self.task_names, assignment)
        plan = BuildPlan(tree, c_used, table.tree_flops(assignment), table.tree_params(assignment), shrunk, r, budget)
        deltas = None
        if want_deltas:
            cc = torch.tensor([c_used], dtype=torch.float32, device=device)
            deltas = [d[0] for d in self.weight(rr[:1], cc)]
        self._cache[key] = (plan, deltas)
        if len(self._cache) > 256:
            self._cache.popitem(last=False)
        return plan, deltas

    def build_model(
        self,
        preferences: Mapping[str, float] | Sequence[float],
        budget: float | None = None,
        *,
        c: float | None = None,
        use_weight_hypernet: bool = True,
    ) -> DerivedModel:
        """Build the tree-structured network for a task preference and a compute budget.

        Args:
            preferences: task -> weight (every task, weights >= 0, not all zero), or weights in task
                order; normalised to sum 1.
            budget: the fraction of the full anchor's inference FLOPs allowed, in ``(0, 1]``. The
                returned model's FLOPs (``FlopCounterMode``) never exceed ``budget`` times the anchor's.
                [choice] The budget is mapped to the least frugal resource preference ``c`` of a grid
                (0, 0.05, ..., 1) whose maximum-likelihood tree fits; if even ``c = 1`` does not fit, that
                tree's branches are merged along the task affinity until it does (``model.info["shrunk"]``).
            c: the paper's resource preference in ``[0, 1]`` instead of (or with) a budget; with ``c`` alone
                no budget is enforced (the paper's protocol).
            use_weight_hypernet: False builds the tree with the anchor's own BatchNorm (the paper's
                "without weight hypernet" baseline).

        Returns:
            a :class:`~dymu.derived.DerivedModel` in eval mode: ``model(x [B, C, H, W]) -> {task: pred}``,
            ``model.tree``, ``model.flops()``, ``model.info``.

        Raises:
            ValueError: bad preferences (NaN, infinite, negative, all zero, unknown or missing task,
                wrong length), a budget outside ``(0, 1]`` or below :attr:`min_budget` (the message gives
                the minimum), a ``c`` outside ``[0, 1]``.
        """
        start = time.perf_counter()
        plan, deltas = self._plan_and_deltas(preferences, budget, c, want_deltas=use_weight_hypernet)
        info = plan.as_dict()
        info["weight_hypernet"] = use_weight_hypernet
        model = derive_model(
            self.anchor, plan.tree, deltas if use_weight_hypernet else None, self.weight.split, info=info
        )
        if self.bn_stats == "batch":
            if self.calibration is None:
                raise ValueError("this controller re-estimates BatchNorm statistics but holds no calibration inputs")
            device = self._device(None)
            recalibrate_batchnorm(model, (b.to(device) for b in self.calibration.split(128)))
        model.info["build_ms"] = (time.perf_counter() - start) * 1e3
        return model

    # ------------------------------------------------------------------------- evaluate
    def evaluate(
        self,
        data: Iterable,
        preferences: Sequence[Mapping[str, float] | Sequence[float]],
        budgets: Sequence[float | None] = (None,),
        *,
        cs: Sequence[float] | None = None,
        use_weight_hypernet: bool = True,
        device: str | torch.device | None = None,
        verbose: bool = False,
    ) -> EvaluationTable:
        """Per-task losses and metrics of the model built for every (preference, budget) — or every
        (preference, c) when ``cs`` is given — over ``data``; a table that saves to JSON."""
        device = self._device(device)
        requests: list[tuple[Any, float | None, float | None]] = []
        for pref in preferences:
            if cs is not None:
                requests += [(pref, None, float(ci)) for ci in cs]
            else:
                requests += [(pref, b, None) for b in budgets]
        rows = []
        for i, (pref, budget, c) in enumerate(requests):
            model = self.build_model(pref, budget, c=c, use_weight_hypernet=use_weight_hypernet).to(device)
            metrics = evaluate_model(model, self.tasks, data, device)
            row = dict(model.info)
            row["metrics"] = metrics
            row["measured_flops"] = model.flops()
            rows.append(row)
            if verbose:
                print(f"[evaluate] {i + 1}/{len(requests)}  c={row['c']:.2f}  flops={row['flops']}", file=sys.stderr, flush=True)
        return EvaluationTable(self.task_names, rows, self.cost_table.anchor_flops)

    # --------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write everything needed to rebuild any model to ``path`` (atomically)."""
        from .checkpoint import save_controller

        return save_controller(self, path)

    @classmethod
    def load(cls, path: str | Path, *, tasks: Sequence[Task] | str | None = None, backbone: BlockBackbone | None = None,
             map_location: str | torch.device = "cpu") -> Controller:
        """Load a controller saved by :meth:`save` (see :func:`dymu.load`)."""
        from .checkpoint import load_controller

        return load_controller(path, tasks=tasks, backbone=backbone, map_location=map_location)

    def to(self, device: str | torch.device) -> Controller:
        self.anchor.to(device)
        self.edge.to(device)
        self.weight.to(device)
        self._invalidate()
        return self

    def __repr__(self) -> str:
        return (
            f"Controller(tasks={self.task_names}, backbone={self.anchor.backbone.arch!r}, layers={self.n_layers}, "
            f"stages={list(self.stages)})"
        )


def _gather_inputs(data: Iterable | Tensor, n: int) -> Tensor:
    if isinstance(data, Tensor):
        return data[:n]
    chunks, total = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        chunks.append(x.cpu())
        total += x.shape[0]
        if total >= n:
            break
    if not chunks:
        raise ValueError("the data yielded no batch")
    return torch.cat(chunks)[:n]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
