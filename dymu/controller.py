"""The controller: an anchor net and two hypernetworks that build a multi-task tree for any preference.

Typical use::

    ctrl = dymu.Controller(dymu.backbones.lenet(), tasks)
    ctrl.fit_anchor(train, val)        # stage 0
    ctrl.fit_affinity(train)           # RSA task affinity on the frozen anchor
    ctrl.fit_supernet(train, val)      # optional: shared nodes learn to serve every task on them
    ctrl.fit_edge(train)               # stage 1
    ctrl.fit_weights(train)            # stage 2
    model = ctrl.build_model({"fashion": 0.6, "digit": 0.4, ...}, budget=0.5)

[why one ~680-line module] :class:`Controller` is the one owner of a controller's trained state (anchor,
hypernets, affinity, loss scales, cost table, control mode, budget search) and of the calls a user makes
on it (the stages, ``plan`` / ``build_model``, ``evaluate``, ``state_dict``). The work each call does lives
elsewhere (:mod:`dymu.loop`, :mod:`dymu.training`, :mod:`dymu.planner`, :mod:`dymu.adaptation`,
:mod:`dymu.derived`, :mod:`dymu.checkpoint`); splitting the class would split its state between owners.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affinity.features import collect_features
from affinity.rsa import AffinityResult, rsa_affinity
from hyper import EdgeHypernet, WeightHypernet, tree_code

from .adaptation import Adaptation, BatchNorm
from .anchor import AnchorNet, scoring_mode, tree_losses
from .backbones.base import BlockBackbone
from .budget import CostTable
from .checks import check_batch
from .derived import DerivedModel, derive_model, recalibrate_batchnorm
from .distributed import gather, mean_over_ranks
from .evaluation import EvaluationTable, evaluate_model
from .export import fold_batchnorm
from .path_losses import PathLosses, measure_path_losses
from .planner import MEASURED_SEARCHES, SEARCHES, BuildPlan, Planner
from .preferences import check_budget, check_resource, normalize_preferences
from .progress import quiet_from_env
from .resume import checkpointing
from .own_trees import OwnTrees, own_tree_specs
from .solo import solo_adaptation, with_solo
from .stage_configs import SupernetConfig
from .supernet import frozen_copy, sandwich_blocks_per_image, train_supernet
from .tasks import Task, check_tasks
from .warm_start import imitate_merge
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


class Controller:
    """One trained controller; any (preference, budget) at inference gives a tree-structured network.

    Args:
        backbone: a :class:`~dymu.backbones.BlockBackbone` (the template of every stream).
        tasks: the N tasks (:class:`~dymu.Task`), or the name of a registered task set
            (``"multifashion"``, ``"fashion_digits"``, ...).
        seed: controls every random draw of the controller: the streams' and heads' initialisation,
            the hypernets' initialisation, and (unless a stage config sets its own) each stage's draws.
            Two controllers built and trained with the same seed have identical weights on CPU,
            whatever was drawn from the global generator before.
        backbone_init: ``"seed"`` re-initialises the template's parameters from ``seed`` (so the
            seed, not the global generator at the time the backbone was built, decides them);
            ``"keep"`` keeps the backbone's weights as given (a pretrained backbone).
        embed_dim, edge_hidden, edge_depth, weight_hidden, weight_depth: hypernet sizes (paper: 32,
            100, 2, 100, 3).
    """

    def __init__(
        self,
        backbone: BlockBackbone,
        tasks: Sequence[Task] | str,
        *,
        seed: int = 0,
        backbone_init: str = "seed",
        embed_dim: int = 32,
        edge_hidden: int = 100,
        edge_depth: int = 2,
        weight_hidden: int = 100,
        weight_depth: int = 3,
    ):
        from .registry import resolve_tasks

        if backbone_init not in ("seed", "keep"):
            raise ValueError(f"backbone_init must be 'seed' or 'keep', got {backbone_init!r}")
        if not isinstance(backbone, BlockBackbone):
            raise ValueError(
                f"the backbone must be a dymu.backbones.BlockBackbone (an ordered list of blocks), got {type(backbone).__name__}"
            )
        self.task_set = tasks if isinstance(tasks, str) else None
        self.tasks = check_tasks(resolve_tasks(tasks))
        if len(self.tasks) < 2:
            raise ValueError("a multi-task controller needs at least 2 tasks")
        self.task_names = [t.name for t in self.tasks]
        self.seed = int(seed)
        self.hyper_config = {
            "seed": self.seed, "embed_dim": embed_dim, "edge_hidden": edge_hidden, "edge_depth": edge_depth,
            "weight_hidden": weight_hidden, "weight_depth": weight_depth,
        }
        self.backbone_recipe = getattr(backbone, "recipe", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if backbone_init == "seed":
                backbone = copy.deepcopy(backbone)
                for module in backbone.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            self.anchor = AnchorNet(backbone, self.tasks, seed=self.seed)
            n, layers = len(self.tasks), self.anchor.n_layers
            self.edge = EdgeHypernet(n, layers, embed_dim=embed_dim, hidden=edge_hidden, depth=edge_depth)
            self.weight = WeightHypernet(
                n, self.anchor.layout.channels, embed_dim=embed_dim, hidden=weight_hidden, depth=weight_depth,
                head_channels=self.anchor.head_channels, n_layers_tree=layers,
            )
        self.anchor.eval()
        self.edge.eval()
        self.weight.eval()
        self.cost_table = CostTable.measure(self.anchor)
        self.affinity: AffinityResult | None = None
        self.loss_scales = torch.ones(n)
        self.calibration: Tensor | None = None
        self.control = "budget"
        self.edge.anchor_at_zero.fill_(True)
        self.bn_stats = "anchor"
        self.adapt_scope = "shared"
        self.search = "hypernet"
        self.path_losses: PathLosses | None = None
        self.solo: AnchorNet | None = None
        self.own_trees: OwnTrees | None = None
        self.stages: dict[str, Any] = {}
        self._cache: OrderedDict[tuple, tuple[BuildPlan, Adaptation | None]] = OrderedDict()

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

    @property
    def planner(self) -> Planner:
        """The planner over the current edge hypernet, cost table, affinity and control mode."""
        own_min_share = self.stages.get("supernet", {}).get("config", {}).get("own_min_share", 0.0)
        return Planner(self.edge, self.cost_table, self.task_names, self._affinity_matrix(), self.control, self.search,
                       self.path_losses, own_min_share)

    def _affinity_matrix(self) -> np.ndarray | None:
        """``[N, N]`` task affinity (None before :meth:`fit_affinity`)."""
        return np.asarray(self.affinity.matrix) if self.affinity is not None else None

    def _device(self, device: str | torch.device | None) -> torch.device:
        if device is None:
            return next(self.anchor.parameters()).device
        return torch.device(device)

    def _invalidate(self) -> None:
        self._cache.clear()

    def _seeded(self, config, steps: int | None = None):
        """``config`` with the controller's seed unless it sets one, and ``steps`` when given."""
        config = config if config.seed is not None else replace(config, seed=self.seed)
        return config if steps is None else replace(config, steps=steps)

    def _selector(self, batches: list | None, adapted: bool):
        """The validation score of stages 1 and 2 on ``batches`` (None without validation batches)."""
        if batches is None:
            return None
        return lambda: self._validation_score(batches, adapted=adapted)

    def _validation_batches(self, val: Iterable, val_samples: int) -> list:
        """The first ``val_samples`` of ``val``, each batch checked (:func:`dymu.checks.check_batch`)."""
        batches = _first_samples(val, val_samples)
        for index, (x, targets) in enumerate(batches):
            check_batch(x, targets, self.tasks, stage="validation", step=None, batch=index)
        return batches

    def _record(self, stage: str, config, result: dict[str, Any]) -> dict[str, Any]:
        self.stages[stage] = {
            "config": _jsonable(asdict(config)), "seconds": result["seconds"], "log": result["log"],
            "selection": result["selection"],
        }
        self._invalidate()
        return result

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
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Stage 0: train each stream on its own task, keep its best validation checkpoint, then set the
        loss scales ``w_i`` from validation.

        [choice] ``w_i = 1 / L_i(anchor)``: each task's loss is divided by its single-task network's
        validation loss, so a loss of 1 means "as good as single-task" for every task and loss
        magnitudes do not skew the preference. Without ``val`` the training data is used.

        ``checkpoint``: a file (``*.pt``) or folder (``anchor.pt`` in it) the stage writes at its end and
        every ``checkpoint_every`` steps; ``resume=True`` continues from it (a finished stage is loaded,
        not retrained) and gives the weights an uninterrupted run gives (see :mod:`dymu.resume`; the
        same for :meth:`fit_edge` and :meth:`fit_weights`).
        """
        config = self._seeded(config or AnchorConfig(), steps)
        device = self._device(device)
        result = train_anchor(self.anchor, self.tasks, train, val, config, device, verbose,
                              checkpointing=checkpointing(checkpoint, checkpoint_every, resume))
        self.solo = None  # solo streams continue the stage-0 streams they were copied from
        self.own_trees = None  # and so do own trees
        self.path_losses, self.search = None, "hypernet"  # the table was measured on the streams just replaced
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
        regulariser off.
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
        self.edge.set_affinity(self._affinity_tensor())
        self.stages["affinity"] = {"n_samples": int(min(n_samples, len(inputs))), "measure": measure}
        self._invalidate()
        return self.affinity

    def _affinity_tensor(self) -> Tensor:
        if self.affinity is None:
            raise ValueError("no task affinity yet: call fit_affinity(data) first (needed by the branching regulariser)")
        return torch.tensor(np.array(self.affinity.matrix), dtype=torch.float32)

    # ------------------------------------------------------------------------ validation
    def validation_requests(self) -> list[tuple[np.ndarray, float | None, float | None]]:
        """The fixed ``(preference, budget, c)`` requests that stages 1 and 2 are selected on.

        Preferences: uniform, one 0.7-focused preference per task, and three Dirichlet(1) draws (seeded
        by the controller's seed). Budgets (budget mode): a quarter, 60% and all of the way from the
        minimum to 1; ``c`` (paper mode): 1, 0.5 and 0.
        """
        n = self.n_tasks
        prefs = [np.full(n, 1.0 / n)]
        for k in range(n):
            focus = np.full(n, 0.3 / (n - 1))
            focus[k] = 0.7
            prefs.append(focus)
        prefs += list(np.random.default_rng(self.seed + 2203).dirichlet(np.ones(n), size=3))
        if self.control == "paper":
            return [(p, None, c) for p in prefs for c in (1.0, 0.5, 0.0)]
        low = self.min_budget
        budgets = [low + f * (1 - low) for f in (0.25, 0.6)] + [1.0]
        return [(p, b, None) for p in prefs for b in budgets]

    def _validation_score(self, batches: list, adapted: bool, requests: Sequence[tuple] | None = None,
                          plan: Callable[..., BuildPlan] | None = None) -> float:
        """Mean over ``requests`` ``(r, budget, c)`` (default :meth:`validation_requests`) of ``sum_i r_i w_i L_i``
        on ``batches`` for the trees ``plan(r, budget, c)`` (default :attr:`planner`'s) builds (lower is better)."""
        device = self._device(None)
        plan_request = plan or self.planner.plan
        scales = self.loss_scales.to(device)
        cache: dict[tuple, Tensor] = {}
        scores = []
        with torch.no_grad():
            for r, budget, c in requests if requests is not None else self.validation_requests():
                plan = plan_request(r, budget, c)
                adaptation = self._adaptation(plan) if adapted else None
                key = (plan.tree.assignment, plan.own_weights, None if adaptation is None else (tuple(r), plan.c))
                if key not in cache:
                    cache[key] = self._tree_losses(plan.tree.assignment, adaptation, batches, device, own_weights=plan.own_weights)
                scores.append(float((torch.as_tensor(r, dtype=torch.float32, device=device) * scales * cache[key]).sum()))
        return float(np.mean(scores))

    def _tree_losses(self, assignment, adaptation: Adaptation | None, batches: list, device: torch.device,
                     batch_statistics: bool | None = None, own_weights: bool = False) -> Tensor:
        """Each task's loss ``[N]`` for one tree as :meth:`build_model` runs it (solo streams included; ``own_weights``:
        on its own tree's weights, as a plan with ``own_weights`` runs), in the mode the anchor is in
        (``batch_statistics``: in that scoring mode, :func:`dymu.anchor.scoring_mode`)."""
        if batch_statistics is not None:
            with scoring_mode(self.anchor, batch_statistics):
                return self._tree_losses(assignment, adaptation, batches, device, own_weights=own_weights)
        if own_weights:  # unadapted, in the mode the anchor is scored in, as solo streams
            own = self._own_net(assignment)
            with scoring_mode(own, self.anchor.training):
                return tree_losses(own, self.tasks, assignment, batches, device)
        anchor = with_solo(self.anchor, self.solo, assignment)
        nodes, heads = solo_adaptation(assignment, anchor is not self.anchor,
                                       adaptation.node if adaptation is not None else None,
                                       adaptation.head if adaptation is not None else None)
        # solo streams run in the mode the anchor is scored in (see dymu.anchor.scoring_mode)
        mode = scoring_mode(self.solo, self.anchor.training) if anchor is not self.anchor else contextlib.nullcontext()
        with mode:
            return tree_losses(anchor, self.tasks, assignment, batches, device, nodes, heads)

    def _own_net(self, assignment) -> AnchorNet:
        """The weights of own tree ``assignment`` (:mod:`dymu.own_trees`), which a plan with ``own_weights`` runs."""
        own = self.own_trees.net_for(assignment) if self.own_trees is not None else None
        if own is None:
            raise ValueError(f"a plan serves own tree {assignment}, which this controller does not hold: measure the path "
                             "losses again (measure_paths) after changing its own trees")
        return own

    def _anchor_tree_losses(self, batches: list, device: torch.device) -> Tensor:
        """Each task's loss ``[N]`` alone on its own stream, as served (solo streams where there are), scored as stage 1
        scores trees."""
        anchor_tree = [list(range(self.n_tasks))] * self.n_layers
        return self._tree_losses(anchor_tree, None, batches, device, batch_statistics=self.bn_stats == "batch")

    # --------------------------------------------------------------------------- supernet
    def fit_supernet(
        self,
        train: Iterable,
        val: Iterable | None = None,
        *,
        steps: int | None = None,
        config: SupernetConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
        val_samples: int = 512,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """The supernet stage (:mod:`dymu.supernet`), after :meth:`fit_anchor` and :meth:`fit_affinity`:
        fine-tune the streams and heads on sandwiches of trees, distilling toward the stage-0 streams.

        With ``val``, the anchor is scored before training and every ``config.eval_every`` steps on
        :meth:`supernet_requests` (trees of the family the stage trains: the merge search's, or the nested affinity
        tree of each budget with ``tree_family="affinity"``; no adaptation; mean ``sum_i r_i w_i L_i``
        over the first ``val_samples`` validation images) and the best state is kept, the stage-0
        streams included: the stage switches itself off when it does not help on validation. The
        per-task validation losses of the anchor tree and of the cheapest tree before and after are in
        ``stages["supernet"]["trees"]``. With ``config.own_trees`` the stage also trains each own tree alone on its
        batches (:mod:`dymu.own_trees`, :attr:`own_trees`; each tree's kept step and validation score in
        ``stages["supernet"]["own_trees"]``). With ``config.solo`` the stage also continues the stage-0 streams on its
        batches (:mod:`dymu.solo`); each task keeps that solo stream only where it beats the supernet's on
        validation (``stages["supernet"]["solo"]``, :attr:`solo`). Checkpoints as in :meth:`fit_anchor`. ``steps=0`` skips the stage
        (nothing is recorded). One process only: under ``torchrun``, train it on one rank, ``save`` the
        controller and ``dymu.load`` it on every rank.
        """
        config = self._seeded(config or SupernetConfig(), steps)
        device = self._device(device)
        if config.steps == 0:
            return {"skipped": True}
        if "anchor" not in self.stages:
            raise ValueError("train the streams first: fit_anchor(train, val)")
        if "edge" in self.stages:
            raise ValueError("the supernet stage comes before the edge hypernet: fit_supernet, then fit_edge")
        self.anchor.to(device)
        self.solo = self.own_trees = None  # the supernet's scores measure the supernet alone; solo streams join after
        teacher = frozen_copy(self.anchor)
        solo = copy.deepcopy(teacher) if config.solo else None
        own = None
        if config.own_trees:
            specs = own_tree_specs(self.cost_table, self._affinity_matrix(), config.own_trees, config.own_groups)
            own = OwnTrees(teacher, [tree for tree, _ in specs], [weights for _, weights in specs])
            own.train().requires_grad_(True)
        batches = self._validation_batches(val, val_samples) if val is not None else None
        before = self._supernet_trees(batches, device) if batches is not None else None
        result = train_supernet(
            self.anchor, teacher, self.tasks, train, self.loss_scales, self.cost_table, self._affinity_matrix(), config, device, verbose,
            select=None if batches is None else (lambda: self._supernet_score(batches, config.tree_family)),
            solo=solo, own=own, val_batches=batches,
            checkpointing=checkpointing(checkpoint, checkpoint_every, resume),
        )
        self._record("supernet", config, result)
        self.stages["supernet"]["blocks_per_image"] = sandwich_blocks_per_image(config, self.cost_table,
                                                                                self._affinity_matrix())
        if solo is not None:
            self.stages["supernet"]["solo"] = self._keep_better_streams(solo, batches, device)
        if own is not None:
            self.own_trees = own
            selection = result["selection"]
            self.stages["supernet"]["own_trees"] = [
                {"assignment": [list(row) for row in a], "flops": self.cost_table.tree_flops(a), "task_weights": list(w), "kept_step": step,
                 "val_score": score}
                for a, w, step, score in zip(own.assignments, own.task_weights, selection["own_steps"], selection["own_scores"])]
            self._invalidate()
        if batches is not None:
            after = self._supernet_trees(batches, device)
            self.stages["supernet"]["trees"] = {
                name: {"assignment": [list(row) for row in before[name][0]], "val_loss_before": before[name][1],
                       "val_loss_after": after[name][1]} for name in before
            }
        self.stages["supernet"]["kept_stage0"] = result["selection"]["best_step"] == 0
        return result

    def _keep_better_streams(self, solo: AnchorNet, batches: list | None, device: torch.device) -> dict[str, Any]:
        """Make :attr:`solo` the better full-budget stream per task: [choice] a task whose supernet stream (and head)
        scores a lower validation loss on its own than its solo stream gets the supernet's copied into the solo net
        (the sandwich's joint training can beat single-task training, as on multifashion); when that is every task,
        there are no solo streams at all (nothing more is stored). Without validation every solo stream is kept.
        Returns ``{task: {"solo_val_loss", "supernet_val_loss", "solo"}}``."""
        if batches is None:
            self.solo = solo
            return {name: {"solo_val_loss": None, "supernet_val_loss": None, "solo": True} for name in self.task_names}
        supernet = self._anchor_tree_losses(batches, device).tolist()
        self.solo = solo
        alone = self._anchor_tree_losses(batches, device).tolist()
        record = {}
        for k, name in enumerate(self.task_names):
            keep = alone[k] < supernet[k]
            if not keep:
                solo.streams[k].load_state_dict(self.anchor.streams[k].state_dict())
                solo.heads[name].load_state_dict(self.anchor.heads[name].state_dict())
            record[name] = {"solo_val_loss": alone[k], "supernet_val_loss": supernet[k], "solo": keep}
        if not any(r["solo"] for r in record.values()):
            self.solo = None
        self._invalidate()
        return record

    def supernet_blocks_per_image(self) -> float | None:
        """The mean backbone blocks one training image ran forward per step of the supernet stage (its sandwich of
        trees, teacher and solo streams: :func:`dymu.supernet.sandwich_blocks_per_image`); None without the stage."""
        record = self.stages.get("supernet")
        if record is None:
            return None
        if "blocks_per_image" in record:  # counted when the stage trained
            return float(record["blocks_per_image"])
        # a controller trained before the count was recorded: replay its draws
        return sandwich_blocks_per_image(SupernetConfig(**record["config"]), self.cost_table, self._affinity_matrix())

    def supernet_requests(self) -> list[tuple[np.ndarray, float]]:
        """The ``(preference, budget)`` requests the supernet stage is selected on: the preferences of
        :meth:`validation_requests` at the minimum budget, a quarter and 60% of the way to 1, and 1."""
        low = self.min_budget
        budgets = [low * (1 + 1e-9), low + 0.25 * (1 - low), low + 0.6 * (1 - low), 1.0]
        prefs = []
        for r, _, _ in self.validation_requests():
            if not any(np.array_equal(r, p) for p in prefs):
                prefs.append(r)
        return [(r, b) for r in prefs for b in budgets]

    def _merge_planner(self) -> Planner:
        return Planner(self.edge, self.cost_table, self.task_names, self._affinity_matrix(), "budget", "merge")

    def _supernet_score(self, batches: list, tree_family: str = "merge") -> float:
        """The supernet stage's validation score on :meth:`supernet_requests`, for the trees of the family the stage
        trains: the merge search's, or (``"affinity"``) the nested affinity tree of each budget."""
        requests = [(r, budget, None) for r, budget in self.supernet_requests()]
        planner = self._merge_planner()
        plan = planner.plan if tree_family == "merge" else planner.family_plan
        return self._validation_score(batches, adapted=False, requests=requests, plan=plan)

    @torch.no_grad()
    def _supernet_trees(self, batches: list, device: torch.device) -> dict[str, tuple[tuple, list[float]]]:
        """Per-task validation losses of the anchor tree and of the uniform preference's cheapest tree."""
        uniform = np.full(self.n_tasks, 1.0 / self.n_tasks)
        planner = self._merge_planner()
        trees = {"anchor": planner.plan(uniform, 1.0).tree.assignment,
                 "one_stream": planner.plan(uniform, self.min_budget * (1 + 1e-9)).tree.assignment}
        self.anchor.eval()
        return {name: (a, self._tree_losses(a, None, batches, device).tolist()) for name, a in trees.items()}

    # --------------------------------------------------------------------------- stage 1
    def fit_edge(
        self,
        train: Iterable,
        val: Iterable | None = None,
        *,
        steps: int | None = None,
        config: EdgeConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
        val_samples: int = 512,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Stage 1: the edge hypernet on the frozen anchor (see :class:`dymu.EdgeConfig` for the two
        control modes). With ``val``, the hypernet is scored on :meth:`validation_requests` over the
        first ``val_samples`` validation images every ``config.eval_every`` steps and the best state
        is kept (model selection on validation only). Checkpoints as in :meth:`fit_anchor`."""
        config = self._seeded(config or EdgeConfig(), steps)
        device = self._device(device)
        if self.calibration is None and config.bn_stats == "batch":
            raise ValueError("bn_stats='batch' needs calibration inputs: call fit_affinity(data) first")
        self.control = config.control
        self.edge.anchor_at_zero.fill_(config.control == "budget")
        self.bn_stats = config.bn_stats
        self.search = "hypernet"  # stage 1 selects the hypernet itself; the search is chosen after it
        self._invalidate()
        batches = self._validation_batches(val, val_samples) if val is not None else None
        affinity = self._affinity_tensor()  # before the warm start: it needs the affinity too
        paths = self._paths_for_search(val, val_samples, config, device, verbose)
        if config.warm_start == "measured" and self.path_losses is None:
            raise ValueError(f"warm_start='measured' needs the path losses, which were not measured: {paths.get('skipped')}")
        saving = checkpointing(checkpoint, checkpoint_every, resume)
        resuming = saving is not None and saving.resume and saving.file("edge").exists()
        warm = None
        if config.warm_start != "none" and not resuming:  # a resumed stage loads the hypernet it had reached
            measured = self.path_losses if config.warm_start == "measured" else None
            warm = imitate_merge(self.edge.to(device), self.cost_table, self._affinity_matrix(), steps=config.warm_start_steps,
                                 alpha=config.dirichlet_alpha, seed=int(config.seed) + 31, path_losses=measured)
            if verbose and not quiet_from_env():
                sys.stderr.write(f"[edge] warm start on the {config.warm_start} search's trees: held-out trees matched "
                                 f"{warm['match_before']:.0%} -> {warm['match_after']:.0%}, parent choices "
                                 f"{warm['row_match_after']:.0%} ({warm['seconds']:.0f} s)\n")
        result = train_edge(
            self.anchor, self.edge, self.tasks, train, affinity, self.loss_scales, config, device, verbose,
            cost_table=self.cost_table, select=self._selector(batches, adapted=False), checkpointing=saving,
            score_start=warm is not None,
        )
        self._record("edge", config, result)
        self.stages["edge"]["paths"] = paths
        if warm is not None:
            self.stages["edge"]["warm_start"] = warm
        if batches is not None and self.control == "budget":
            best = result["selection"]["best_score"]
            known = {"hypernet": best} if best is not None else None
            self.stages["edge"]["search"] = self.choose_search(batches, known)
        return result

    def choose_search(self, batches: list, known: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Keep the planner's budget search (``"hypernet"``, ``"merge"``, and ``"measured"``, ``"fill"`` and ``"family"``
        when :attr:`path_losses` are measured; :mod:`dymu.planner`) that scores lower on :meth:`validation_requests`
        over ``batches`` (ties keep the hypernet, then the merge). ``known``: scores already measured on
        these batches (stage 1's best is the hypernet's). Scores are averaged over ranks, so every rank
        keeps the same search. Returns the scores and the choice; :attr:`search` holds it."""
        candidates = [s for s in SEARCHES if s not in MEASURED_SEARCHES or self.path_losses is not None]
        scores = {s: v for s, v in (known or {}).items() if s in candidates}
        new_scores = {}
        with scoring_mode(self.anchor, self.bn_stats == "batch"):  # as stage 1 scored its hypernet
            for search in candidates:
                if search not in scores:
                    self.search = search
                    self._invalidate()
                    new_scores[search] = self._validation_score(batches, adapted=False)
        scores.update(mean_over_ranks(new_scores, self._device(None)))
        self.search = min(candidates, key=lambda s: (scores[s], candidates.index(s)))
        self._invalidate()
        return {"scores": scores, "chosen": self.search}

    def measure_paths(self, data: Iterable, *, skip: int = 0, samples: int = 1024,
                      device: str | torch.device | None = None) -> PathLosses:
        """Every task's mean loss along every path of streams (:mod:`dymu.path_losses`) on ``samples`` examples of
        ``data`` after its first ``skip`` (counted in whole batches, as the validation score takes them), the
        streams as they are; kept in :attr:`path_losses` for the ``"measured"`` search.

        Raises:
            ValueError: more than :data:`dymu.path_losses.MAX_PATHS` paths; no example after the first
                ``skip``; a bad batch (:func:`dymu.checks.check_batch`).
        """
        return self._measure_path_batches(_samples_after(data, skip, samples, self.tasks), self._device(device))

    def _measure_path_batches(self, batches: list, device: torch.device) -> PathLosses:
        with scoring_mode(self.anchor.to(device), self.bn_stats == "batch"):  # as the validation score runs the trees
            table = measure_path_losses(self.anchor, self.tasks, batches, device)
        if self.solo is not None:  # each task's loss alone on its solo stream, on the same images
            solo = self._anchor_tree_losses(batches, device)
            table = replace(table, solo=np.asarray(mean_over_ranks(solo.tolist(), device)))  # one table on every rank
        if self.own_trees is not None:  # each own tree's losses on its own weights, on the same images, scored alike
            batch_statistics = self.bn_stats == "batch"
            own = tuple((a, np.asarray(mean_over_ranks(
                self._tree_losses(a, None, batches, device, batch_statistics=batch_statistics, own_weights=True).tolist(),
                device))) for a in self.own_trees.assignments)
            table = replace(table, own_trees=own)
        self.path_losses = table
        self._invalidate()
        return self.path_losses

    def _paths_for_search(self, val: Iterable | None, val_samples: int, config: EdgeConfig, device: torch.device,
                          verbose: bool) -> dict[str, Any]:
        """Stage 1's measurement of the path losses (``config.path_samples``) on validation examples the score does
        not read; what was measured, or why not."""
        self.path_losses = None
        if config.path_samples == 0:
            return {"skipped": "path_samples=0"}
        if val is None or config.control != "budget":
            return {"skipped": "needs validation data and control='budget'"}
        start = time.time()
        try:
            batches, problem = _samples_after(val, val_samples, config.path_samples, self.tasks), None
        except NoExamplesLeft as error:
            batches, problem = [], str(error)
        problems = [p for p in gather(problem) if p is not None]  # every rank measures, or none does
        if problems:
            return {"skipped": problems[0]}
        try:
            table = self._measure_path_batches(batches, device)
        except ValueError as error:  # too many paths, or a non-finite loss: the same on every rank (sums are all-reduced)
            return {"skipped": str(error)}
        seconds, count = time.time() - start, len(table.losses)
        if verbose and not quiet_from_env():
            sys.stderr.write(f"[edge] measured every task's loss along {count} paths on {table.samples} validation images "
                             f"after the scored ones ({seconds:.0f} s)\n")
        return {"paths": count, "samples": table.samples, "seconds": seconds}

    # --------------------------------------------------------------------------- stage 2
    def fit_weights(
        self,
        train: Iterable,
        val: Iterable | None = None,
        *,
        steps: int | None = None,
        config: WeightConfig | None = None,
        device: str | torch.device | None = None,
        verbose: bool = True,
        val_samples: int = 512,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Stage 2: the weight hypernet on the task loss of the trees the planner builds, anchor and
        edge frozen; selection on ``val`` as in :meth:`fit_edge`, checkpoints as in :meth:`fit_anchor`."""
        config = self._seeded(config or WeightConfig(bn_stats=self.bn_stats), steps)
        device = self._device(device)
        if "edge" not in self.stages:
            raise ValueError("train the edge hypernet first: fit_edge(train)")
        self.adapt_scope = config.scope
        self._invalidate()
        result = train_weights(
            self.anchor, self.edge, self.weight, self.tasks, train, self.loss_scales, config, device, verbose,
            planner=self.planner, select=self._selector(self._validation_batches(val, val_samples) if val is not None else None,
                                                        adapted=True),
            checkpointing=checkpointing(checkpoint, checkpoint_every, resume),
        )
        return self._record("weights", config, result)

    # ---------------------------------------------------------------------------- build
    def plan(
        self,
        preferences: Mapping[str, float] | Sequence[float],
        budget: float | None = None,
        *,
        c: float | None = None,
    ) -> BuildPlan:
        """Decide the tree for a request without building the module (see :meth:`build_model`)."""
        return self._plan_and_adaptation(preferences, budget, c, adapted=False)[0]

    def _adaptation(self, plan: BuildPlan) -> Adaptation:
        device = self._device(None)
        r = torch.tensor([plan.preference], dtype=torch.float32, device=device)
        code = tree_code(plan.tree.assignment, self.n_tasks).to(device).unsqueeze(0)
        with torch.no_grad():
            nodes, heads = self.weight(r, torch.tensor([plan.c], dtype=torch.float32, device=device), code)
        return Adaptation(self.weight, nodes, heads, plan.tree.assignment, self.adapt_scope)

    def _plan_and_adaptation(self, preferences, budget, c, adapted: bool) -> tuple[BuildPlan, Adaptation | None]:
        r = normalize_preferences(preferences, self.task_names)
        if budget is None and c is None:
            budget = 1.0
        if budget is not None:
            budget = check_budget(budget)
        if c is not None:
            c = check_resource(c)
        key = (tuple(np.round(r, 12)), budget, c)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            if cached[1] is not None or not adapted:
                return cached
        plan = cached[0] if cached is not None else self.planner.plan(r, budget, c)
        adaptation = self._adaptation(plan) if adapted and not plan.own_weights else None  # own trees run unadapted
        self._cache[key] = (plan, adaptation)
        if len(self._cache) > 256:
            self._cache.popitem(last=False)
        return plan, adaptation

    def build_model(
        self,
        preferences: Mapping[str, float] | Sequence[float],
        budget: float | None = None,
        *,
        c: float | None = None,
        use_weight_hypernet: bool = True,
        fold_bn: bool = False,
    ) -> DerivedModel:
        """Build the tree-structured network for a task preference and a compute budget.

        Args:
            preferences: task -> weight (every task, weights >= 0, not all zero), or weights in task
                order; normalised to sum 1.
            budget: the fraction of the full anchor's inference FLOPs allowed, heads included, in
                ``(0, 1]`` (default 1 when ``c`` is not given either). The returned model's FLOPs
                (``FlopCounterMode``) never exceed ``budget`` times the anchor's. The planner
                (:class:`dymu.planner.Planner`) asks the edge hypernet for a tree under this budget;
                only when no proposal fits are branches merged along the task affinity
                (``model.info["fallback"]``).
            c: the resource input of the edge hypernet instead of (or with) a budget: the paper's ``c``
                for a controller trained in paper mode, the budget pressure in budget mode; with ``c``
                alone no budget is enforced (the paper's protocol).
            use_weight_hypernet: False builds the tree with the anchor's own weights (the paper's
                "without weight hypernet" baseline).
            fold_bn: fold every BatchNorm that directly follows a convolution or linear layer into
                that layer where the fold is exact (:func:`dymu.export.fold_batchnorm`, in place on the
                model's private copy): fewer operations at inference, outputs equal to the unfolded
                model's to float32 rounding, FLOPs never higher (so the budget still holds).
                ``model.info["folded_bn"]`` counts the folded pairs (0 without folding). A folded
                model has no BatchNorm left to train or recalibrate: fold for inference only.

        Returns:
            a :class:`~dymu.derived.DerivedModel` in eval mode: ``model(x [B, C, H, W]) -> {task: pred}``,
            ``model.tree``, ``model.flops()``, ``model.info`` (the plan, see :class:`BuildPlan`;
            ``info["flops"]`` is the unfolded tree's cost).

        Raises:
            ValueError: bad preferences (NaN, infinite, negative, all zero, unknown or missing task,
                wrong length), a budget outside ``(0, 1]`` or below :attr:`min_budget` (the message gives
                the minimum), a ``c`` outside ``[0, 1]``.
        """
        start = time.perf_counter()
        plan, adaptation = self._plan_and_adaptation(preferences, budget, c, adapted=use_weight_hypernet)
        info = plan.as_dict()
        info["weight_hypernet"] = use_weight_hypernet and not plan.own_weights
        if plan.own_weights:  # an own tree runs its own weights, unadapted (the weight hypernet learnt the supernet's)
            model = derive_model(self._own_net(plan.tree.assignment), plan.tree, None, info=info)
        else:
            model = derive_model(self.anchor, plan.tree, adaptation, info=info, solo=self.solo)
        if self.bn_stats == "batch":
            if self.calibration is None:
                raise ValueError("this controller re-estimates BatchNorm statistics but holds no calibration inputs")
            device = self._device(None)
            recalibrate_batchnorm(model, (b.to(device) for b in self.calibration.split(128)))
        model.info["folded_bn"] = 0
        if fold_bn:
            # counted as BatchNorms gone: each fold replaces exactly one by nn.Identity
            before = sum(isinstance(m, BatchNorm) for m in model.modules())
            fold_batchnorm(model, inplace=True)
            model.info["folded_bn"] = before - sum(isinstance(m, BatchNorm) for m in model.modules())
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
    def state_dict(self) -> dict[str, Any]:
        """Everything that rebuilds this controller, as tensors and plain Python values
        (:meth:`from_state` inverts it; :func:`dymu.checkpoint.save_controller` writes it to a file)."""
        return {
            "tasks": list(self.task_names),
            "task_set": self.task_set,
            "backbone": self.backbone_recipe,
            "backbone_arch": self.anchor.backbone.arch,
            "n_layers": self.n_layers,
            "hyper_config": dict(self.hyper_config),
            "anchor": self.anchor.state_dict(),
            "edge": self.edge.state_dict(),
            "weight": self.weight.state_dict(),
            "affinity": self.affinity.to_dict() if self.affinity is not None else None,
            "loss_scales": self.loss_scales.clone(),
            "cost_table": self.cost_table.to_dict(),
            # calibration inputs matter only when derived trees re-estimate BatchNorm statistics
            "calibration": self.calibration if self.bn_stats == "batch" else None,
            "control": self.control,
            "bn_stats": self.bn_stats,
            "adapt_scope": self.adapt_scope,
            "search": self.search,
            "path_losses": self.path_losses.to_dict() if self.path_losses is not None else None,
            "solo": self.solo.state_dict() if self.solo is not None else None,
            "own_trees": None if self.own_trees is None else {
                "assignments": [[list(row) for row in a] for a in self.own_trees.assignments],
                "task_weights": [list(w) for w in self.own_trees.task_weights],
                "weights": self.own_trees.state_dict()},
            "stages": self.stages,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], *, tasks: Sequence[Task] | str | None = None, backbone: BlockBackbone | None = None
    ) -> Controller:
        """Rebuild a controller from :meth:`state_dict` (tasks and backbone by their registered names
        unless given).

        Raises:
            ValueError: tasks or backbone needed but not given, or not matching the state; weights that
                do not fit (``RuntimeError`` from ``load_state_dict`` is re-raised as ``ValueError``).
        """
        from .registry import build_backbone

        if tasks is None:
            if state.get("task_set") is None:
                raise ValueError(f"trained on custom tasks {state['tasks']}: pass tasks=[...] to load it")
            tasks = state["task_set"]
        if backbone is None:
            if state.get("backbone") is None:
                raise ValueError(f"trained with a custom {state.get('backbone_arch')!r} backbone: pass backbone=... to load it")
            backbone = build_backbone(state["backbone"])
        ctrl = cls(backbone, tasks, backbone_init="keep", **state["hyper_config"])
        if ctrl.task_names != list(state["tasks"]):
            raise ValueError(f"the tasks given {ctrl.task_names} differ from the checkpoint's {state['tasks']}")
        try:
            ctrl.anchor.load_state_dict(state["anchor"])
            ctrl.edge.load_state_dict(state["edge"])
            ctrl.weight.load_state_dict(state["weight"])
            if state.get("solo") is not None:
                ctrl.solo = copy.deepcopy(ctrl.anchor)
                ctrl.solo.load_state_dict(state["solo"])
                ctrl.solo.eval().requires_grad_(False)
            if state.get("own_trees") is not None:
                ctrl.own_trees = OwnTrees(ctrl.anchor, state["own_trees"]["assignments"], state["own_trees"].get("task_weights"))
                ctrl.own_trees.load_weights(state["own_trees"]["weights"])
                ctrl.own_trees.eval().requires_grad_(False)
        except RuntimeError as error:
            raise ValueError(f"the weights do not fit this backbone and these tasks: {error}") from error
        ctrl.affinity = AffinityResult.from_dict(state["affinity"]) if state.get("affinity") else None
        ctrl.loss_scales = state["loss_scales"].float().cpu()
        ctrl.cost_table = CostTable.from_dict(state["cost_table"])
        ctrl.calibration = state.get("calibration")
        ctrl.control = state.get("control", "budget")
        ctrl.bn_stats = state.get("bn_stats", "anchor")
        ctrl.adapt_scope = state.get("adapt_scope", "shared")
        ctrl.search = state.get("search", "hypernet")
        ctrl.path_losses = PathLosses.from_dict(state["path_losses"]) if state.get("path_losses") else None
        if ctrl.search in MEASURED_SEARCHES and ctrl.path_losses is None:
            raise ValueError(f"the checkpoint's search is {ctrl.search!r} but it holds no path losses")
        ctrl.stages = state.get("stages", {})
        ctrl.anchor.eval()
        ctrl.edge.eval()
        ctrl.weight.eval()
        return ctrl

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
        if self.solo is not None:
            self.solo.to(device)
        if self.own_trees is not None:
            self.own_trees.to(device)
        self.edge.to(device)
        self.weight.to(device)
        self._invalidate()
        return self

    def __repr__(self) -> str:
        return (
            f"Controller(tasks={self.task_names}, backbone={self.anchor.backbone.arch!r}, layers={self.n_layers}, "
            f"control={self.control!r}, stages={list(self.stages)})"
        )


def _first_samples(data: Iterable, n: int) -> list:
    """The first batches of ``data`` holding at least ``n`` samples (kept for repeated scoring)."""
    out, seen = [], 0
    for batch in data:
        out.append(batch)
        seen += batch[0].shape[0]
        if seen >= n:
            break
    if not out:
        raise ValueError("the validation data yielded no batch")
    return out


class NoExamplesLeft(ValueError):
    """The data holds no example after the ones skipped."""


def _samples_after(data: Iterable, skip: int, n: int, tasks: Sequence[Task]) -> list:
    """``n`` samples of ``data`` after the whole batches that hold its first ``skip`` (the ones
    :func:`_first_samples` takes), each batch checked (:func:`dymu.checks.check_batch`), the last cut to size."""
    out, seen, taken = [], 0, 0
    for x, targets in data:
        if seen < skip:
            seen += x.shape[0]
            continue
        check_batch(x, targets, tasks, stage="path losses", step=None, batch=len(out))
        keep = min(x.shape[0], n - taken)
        out.append((x[:keep], {t.name: targets[t.name][:keep] for t in tasks}))
        taken += keep
        if taken >= n:
            break
    if not out:
        raise NoExamplesLeft(f"the data holds no example after the first {seen} (skipped as they are scored)")
    return out


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

