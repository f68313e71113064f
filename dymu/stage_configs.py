"""The stage configs (stages 0, 1, 2) and the step presets they share with ``dymu train``.

Each config is a plain dataclass of hyperparameters, checked when built; it holds no modules and no
data. Steps come from the presets of :data:`PRESETS`: the default is the ``"cpu"`` preset (a size a
CPU finishes in minutes), ``Config.preset("cpu", n_batches=len(train))`` sizes it to the data as
``dymu train`` does, and ``Config.paper()`` gives the paper's 30,000 steps per stage.

>>> EdgeConfig().steps, EdgeConfig.preset("cpu", n_batches=250).steps, EdgeConfig.paper().steps
(400, 250, 30000)
>>> AnchorConfig.paper(lr=0.01).steps, AnchorConfig(steps=5).steps  # explicit steps as before
(30000, 5)
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from hyper import RegulariserConfig

__all__ = ["AnchorConfig", "SupernetConfig", "EdgeConfig", "WeightConfig", "PRESETS", "STAGES", "preset_steps", "adam", "TREE_FAMILIES", "ONE_STREAM_TREES"]

STAGES = ("anchor", "supernet", "edge", "weights")
#: where the supernet sandwich's budget trees come from (:class:`SupernetConfig` ``tree_family``)
TREE_FAMILIES = ("merge", "affinity")
#: the sandwich's one-stream tree with the affinity family: its root stream, or a stream drawn per step
ONE_STREAM_TREES = ("root", "drawn")

#: per preset and stage: (epochs, cap on the steps those epochs give, steps when the data's length is unknown)
PRESETS: dict[str, dict[str, tuple[float | None, int | None, int]]] = {
    "cpu": {"anchor": (2.0, 3000, 600), "supernet": (1.0, 1500, 300), "edge": (1.0, 2000, 400), "weights": (0.5, 1000, 200)},
    # the paper has no supernet stage: its preset skips it
    "paper": {"anchor": (None, None, 30000), "supernet": (None, None, 0), "edge": (None, None, 30000),
              "weights": (None, None, 30000)},
}


def preset_steps(preset: str, stage: str, n_batches: int | None = None) -> int:
    """The steps of ``stage`` under ``preset``: its epochs of ``n_batches`` batches, capped; its fixed
    number when the preset gives no epochs or the data's length is unknown.

    >>> preset_steps("cpu", "anchor", 422), preset_steps("cpu", "anchor", 100_000), preset_steps("cpu", "anchor")
    (844, 3000, 600)
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    epochs, cap, fixed = PRESETS[preset][stage]
    if epochs is None or n_batches is None:
        return fixed
    return max(1, min(cap, round(epochs * n_batches)))


C = TypeVar("C")


class _Presets:
    """``preset()`` and ``paper()`` constructors for a stage config (``stage`` names its row of :data:`PRESETS`)."""

    stage: ClassVar[str]

    @classmethod
    def preset(cls: type[C], name: str = "cpu", n_batches: int | None = None, **overrides: Any) -> C:
        """This config with the steps of preset ``name`` (sized to ``n_batches`` training batches per
        epoch when given, see :func:`preset_steps`); ``overrides`` set any other field."""
        return cls(**{"steps": preset_steps(name, cls.stage, n_batches), **overrides})

    @classmethod
    def paper(cls: type[C], **overrides: Any) -> C:
        """The paper's length (30,000 steps); ``overrides`` set any other field."""
        return cls.preset("paper", **overrides)


@dataclass
class AnchorConfig(_Presets):
    """Stage 0: every stream on its own task (paper's CIFAR setting: Adam 1e-3, weight decay 1e-5).

    Attributes:
        steps: optimisation steps (batches); every stream sees the same batches. Default: the
            ``"cpu"`` preset for data of unknown length (600); :meth:`preset` sizes it to the data
            (2 epochs, at most 3000), :meth:`paper` gives 30,000.
        lr, weight_decay: the optimiser's learning rate and weight decay.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum`` and ``nesterov``).
        schedule: ``"cosine"`` (decay to 0 over ``steps``), ``"poly"`` (``(1 - t / steps) ** poly_power``),
            ``"step"`` (times ``step_gamma`` at the fractions ``step_milestones`` of training) or
            ``"constant"``.
        eval_every: validate every this many steps (and at the end); each stream keeps its best
            validation checkpoint by its task's primary metric (model selection on validation only).
        amp: mixed precision (float16 with loss scaling on CUDA, bfloat16 on CPU).
        seed: seeds the stage's random draws inside a forked generator (None: the controller's seed);
            the global generator is left as it was.
    """

    stage: ClassVar[str] = "anchor"

    steps: int = PRESETS["cpu"]["anchor"][2]
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eval_every: int = 500
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    poly_power: float = 0.9
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    step_gamma: float = 0.1
    amp: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "poly", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'poly', 'step' or 'constant', got {self.schedule!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)
        return adam(parameters, lr=self.lr, weight_decay=self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
        if self.schedule == "poly":
            return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=self.steps, power=self.poly_power)
        if self.schedule == "step":
            return multistep(optimizer, self.steps, self.step_milestones, self.step_gamma)
        return None


@dataclass
class SupernetConfig(_Presets):
    """The supernet stage, between stages 0 and 1 ([choice] beyond the paper, :mod:`dymu.supernet`).

    Attributes:
        steps: default 300, the ``"cpu"`` preset for data of unknown length (:meth:`preset`: one
            epoch, at most 1500; :meth:`paper`: 0, the paper has no such stage). 0 skips the stage.
        lr, weight_decay: Adam on the streams, heads and distillation adaptors, cosine decay to 0.
            [choice] 3e-4: a fine-tune of trained streams, a third of stage 0's rate.
        budget_trees: trees per step drawn across the budget range, besides the anchor tree and a
            one-stream tree (the sandwich rule of slimmable networks).
        anchor_weight: the anchor tree's loss weight relative to each other tree of the sandwich (the step's
            loss is the weighted mean over its trees). [choice] 1: every tree alike. The single-task streams
            a full-budget model is compared with train on their own loss at every step; a larger weight
            spends more of each step on the budget-1 model and less on the shared ones.
        distill_weight: ``lambda`` of the feature distillation toward the frozen single-task streams.
        distill: ``"features"`` (default) or ``"none"`` (the sandwich alone, for ablations).
        dirichlet_alpha: preferences of the budget trees ``r ~ Dirichlet(alpha)``.
        bn: ``"batch"`` (default) or ``"anchor"``: BatchNorm statistics of the trees other than the anchor
            tree (see :mod:`dymu.supernet`).
        eval_every: with validation data, score the supernet every this many steps (and at the end;
            None: four times); the best state, the frozen streams (step 0) included, is kept.
        tree_family: where the sandwich's budget trees come from: ``"merge"`` (default), the merge search's trees for
            drawn preferences and budgets; ``"affinity"``, the nested static affinity trees with one stream per
            group (:mod:`dymu.family`), so that a node serves the same group of tasks in every tree that has it.
        family_one_stream: with ``tree_family="affinity"``, the sandwich's one-stream tree: ``"root"`` (default), the
            family's cheapest tree, so one stream is trained for every task at every step; ``"drawn"``, a stream
            drawn per step as with merged trees, so the measured search can pick each preference's best stream.
        solo: also continue a copy of the stage-0 streams on their own tasks, on this stage's batches, and
            run it wherever a tree leaves a task alone on its own stream (:mod:`dymu.solo`). [choice] off
            by default: it stores a second copy of the streams; the benchmarks' presets set it where
            validation chose it.
        own_trees: budgets (fractions of the anchor's FLOPs) whose nested affinity tree also trains alone, on its
            own copy of the stage-0 streams, on this stage's batches, and is served from that copy where the
            measured search prices it lower (:mod:`dymu.own_trees`). [choice] empty by default: each own tree stores
            one more copy of the streams.
        own_groups: 0 (default) trains, per budget of ``own_trees``, its nested affinity tree on a uniform preference;
            ``k`` trains instead, per budget, one tree for each of ``k`` affinity groups of tasks, on a preference for
            that group (:func:`dymu.own_trees.own_tree_specs`), so that preferences get different own trees.
        own_min_share: an own tree is served at a budget only when its FLOPs are at least this share of the budget
            (0, default: whenever it fits), so the cost follows the budget; 0.8 is the cost band's lower edge.
        seed: seeds tree draws (None: the controller's seed).
    """

    stage: ClassVar[str] = "supernet"

    steps: int = PRESETS["cpu"]["supernet"][2]
    lr: float = 3e-4
    weight_decay: float = 1e-5
    budget_trees: int = 1
    anchor_weight: float = 1.0
    distill_weight: float = 1.0
    distill: str = "features"
    dirichlet_alpha: float = 1.0
    bn: str = "batch"
    eval_every: int | None = None
    tree_family: str = "merge"
    family_one_stream: str = "root"
    solo: bool = False
    own_trees: tuple[float, ...] = ()
    own_groups: int = 0
    own_min_share: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0 skips the stage), got {self.steps}")
        budgets = []
        for value in self.own_trees:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"own_trees holds budgets (fractions of the anchor's FLOPs) in [0, 1], got {value!r}")
            budgets.append(float(value))
        self.own_trees = tuple(sorted(set(budgets)))
        if isinstance(self.own_groups, bool) or not isinstance(self.own_groups, int) or self.own_groups < 0:
            raise ValueError(f"own_groups must be an int >= 0 (0: one uniform tree per budget), got {self.own_groups!r}")
        if isinstance(self.own_min_share, bool) or not isinstance(self.own_min_share, (int, float)) \
                or not 0.0 <= float(self.own_min_share) <= 1.0:
            raise ValueError(f"own_min_share must be a share of the budget in [0, 1], got {self.own_min_share!r}")
        self.own_min_share = float(self.own_min_share)
        if not isinstance(self.solo, bool):
            raise ValueError(f"solo must be True or False, got {self.solo!r}")
        if self.bn not in ("batch", "anchor"):
            raise ValueError(f"bn must be 'batch' or 'anchor', got {self.bn!r}")
        if self.tree_family not in TREE_FAMILIES:
            raise ValueError(f"tree_family must be one of {TREE_FAMILIES}, got {self.tree_family!r}")
        if self.family_one_stream not in ONE_STREAM_TREES:
            raise ValueError(f"family_one_stream must be one of {ONE_STREAM_TREES}, got {self.family_one_stream!r}")
        if self.budget_trees < 0:
            raise ValueError(f"budget_trees must be >= 0, got {self.budget_trees}")
        if self.distill not in ("features", "none"):
            raise ValueError(f"distill must be 'features' or 'none', got {self.distill!r}")
        if not (math.isfinite(self.anchor_weight) and self.anchor_weight > 0):
            raise ValueError(f"anchor_weight must be > 0, got {self.anchor_weight}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


@dataclass
class EdgeConfig(_Presets):
    """Stage 1: the edge hypernet on the frozen anchor (method.md sections 4, 5, 8).

    Attributes:
        steps: default 400, the ``"cpu"`` preset for data of unknown length (:meth:`preset` sizes it
            to the data: 1 epoch, at most 2000); paper 30K (:meth:`paper`). ``lr`` Adam (paper 1e-3), multiplied by ``lr_decay`` (0.3) at the fractions
            ``lr_milestones`` of training (paper: every 14K of 30K steps).
        control: ``"budget"`` (default, [choice] beyond the paper): each chunk draws a budget
            ``b ~ U(min_budget, 1)`` (``b = 1`` with probability ``full_budget_share``), the hypernet
            reads the budget pressure ``s = (1 - b) / (1 - min_budget)``, and the loss is
            ``sum_i r_i w_i L_i + cost_weight * max(0, E[cost] - (b - budget_margin))
            + under_weight * max(0, b - budget_slack - E[cost]) + s * lambda_A * L_active``,
            with ``E[cost]`` the expected FLOPs of a tree drawn from the hypernet's parent probabilities
            (fraction of the anchor's, heads included, :func:`hyper.expected_cost_fraction`) and
            ``L_active`` the paper's affinity-weighted sharing term among active tasks (no inactive
            term: when the budget does not bind, no task is forced to share). ``"paper"``: ``c ~ U(0, 1)``
            and the paper's regulariser ``Omega``.
        cost_weight, budget_margin, full_budget_share: the budget mode's cost term (see ``control``).
        under_weight, budget_slack: [choice] a weaker term against trees far cheaper than the budget,
            so that a budget that is given gets used.
        tau_start, tau_decay, n_decays: Gumbel temperature 5, x0.97, 100 times over training (paper:
            every 300 of 30K steps).
        routing: [choice] ``"soft"`` (default: child input = sum_i nu_j(i) y_i, the Gumbel-softmax
            relaxation) or ``"hard"`` (straight-through one-hot samples) for the first
            ``1 - hard_fraction`` of training. Measured on fashion_digits with the regulariser switched
            off, where the anchor is the optimum: soft routing keeps the anchor tree, while
            straight-through gradients from the start walk away from it.
        hard_fraction: the last fraction of steps routes with straight-through hard samples, so that
            training ends on the discrete trees inference builds.
        dirichlet_alpha: training preferences r ~ Dirichlet(alpha). [choice] 1.0 (uniform on the
            simplex) where the paper uses 0.2: with 0.2 most sampled preferences leave a single task
            active, and the controller learns less of what to do when several tasks matter.
        prefs_per_step: [choice] the batch is split into this many chunks, each with its own request
            (paper: one preference per batch); more requests per step at the same cost.
        eval_every: with validation data, score the hypernet every this many steps (and at the end) on
            fixed validation requests and keep the best (None: four times per stage).
        bn_stats: ``"anchor"``: BatchNorm uses the anchor's running statistics throughout (the model
            that is deployed); ``"batch"``: batch statistics as in the paper (frozen running stats).
        warm_start: ``"none"`` (default), ``"merge"`` or ``"measured"`` ([choice] beyond the paper,
            :mod:`dymu.warm_start`): before the first step, fit the hypernet's most likely trees to the
            merge search's (``"measured"``: with the measured harm, which needs ``path_samples``) for
            ``warm_start_steps`` Adam steps on drawn requests; no training image is read. Budget mode only.
        path_samples: with validation data in budget mode, measure every task's loss along every path of
            streams on this many validation images after the ones scored (:mod:`dymu.path_losses`), which
            makes the ``"measured"`` search a candidate of the validation choice (0: not measured).
        regulariser: Omega's weights and ablation switches.
        amp: mixed precision for the anchor's forward (see :class:`AnchorConfig`).
        seed: seeds preference draws and Gumbel noise (None: the controller's seed).
    """

    stage: ClassVar[str] = "edge"

    steps: int = PRESETS["cpu"]["edge"][2]
    lr: float = 1e-3
    lr_decay: float = 0.3
    lr_milestones: tuple[float, ...] = (14 / 30, 28 / 30)
    control: str = "budget"
    cost_weight: float = 20.0
    budget_margin: float = 0.02
    under_weight: float = 5.0
    budget_slack: float = 0.1
    full_budget_share: float = 0.2
    tau_start: float = 5.0
    tau_decay: float = 0.97
    n_decays: int = 100
    routing: str = "soft"
    hard_fraction: float = 0.25
    dirichlet_alpha: float = 1.0
    prefs_per_step: int = 4
    eval_every: int | None = None
    bn_stats: str = "anchor"
    warm_start: str = "none"
    warm_start_steps: int = 1000
    path_samples: int = 0
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)
    amp: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.warm_start not in ("none", "merge", "measured"):
            raise ValueError(f"warm_start must be 'none', 'merge' or 'measured', got {self.warm_start!r}")
        if self.warm_start != "none" and self.control != "budget":
            raise ValueError(f"warm_start={self.warm_start!r} needs control='budget': the merge search answers budgets, not c")
        if self.warm_start_steps < 0:
            raise ValueError(f"warm_start_steps must be >= 0, got {self.warm_start_steps}")
        if self.path_samples < 0:
            raise ValueError(f"path_samples must be >= 0, got {self.path_samples}")
        if self.warm_start == "measured" and self.path_samples == 0:
            raise ValueError("warm_start='measured' needs measured path losses: set path_samples > 0 (e.g. 1024)")
        if self.routing not in ("soft", "hard"):
            raise ValueError(f"routing must be 'soft' or 'hard', got {self.routing!r}")
        if self.control not in ("budget", "paper"):
            raise ValueError(f"control must be 'budget' or 'paper', got {self.control!r}")
        if not 0 <= self.hard_fraction <= 1:
            raise ValueError(f"hard_fraction must lie in [0, 1], got {self.hard_fraction}")
        if not 0 <= self.full_budget_share <= 1:
            raise ValueError(f"full_budget_share must lie in [0, 1], got {self.full_budget_share}")
        if self.cost_weight < 0 or self.budget_margin < 0:
            raise ValueError("cost_weight and budget_margin must be >= 0")
        _check_common(self)


@dataclass
class WeightConfig(_Presets):
    """Stage 2: the weight hypernet, task loss only, anchor and edge hypernet frozen.

    Attributes:
        tree: ``"ml"`` trains on the tree the planner builds for each sampled request (what inference
            builds, fallback merges included); ``"sample"`` on hard Gumbel samples at ``sample_tau``.
        scope: ``"shared"`` (default, [choice]): only nodes and heads that sharing touches are adapted
            (:func:`dymu.adaptation.adapted_nodes`), so the unshared tree stays exactly the anchor;
            ``"all"``: every node and head (the paper adapts every node).
        steps: default 200, the ``"cpu"`` preset for data of unknown length (:meth:`preset`: half an
            epoch, at most 1000; :meth:`paper`: 30,000).
        Others as in :class:`EdgeConfig`; requests are drawn as the edge hypernet's control mode
        draws them.
    """

    stage: ClassVar[str] = "weights"

    steps: int = PRESETS["cpu"]["weights"][2]
    lr: float = 1e-3
    lr_decay: float = 0.3
    lr_milestones: tuple[float, ...] = (14 / 30, 28 / 30)
    tree: str = "ml"
    scope: str = "shared"
    sample_tau: float = 0.25
    dirichlet_alpha: float = 1.0
    full_budget_share: float = 0.2
    prefs_per_step: int = 4
    eval_every: int | None = None
    bn_stats: str = "anchor"
    amp: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.tree not in ("ml", "sample"):
            raise ValueError(f"tree must be 'ml' or 'sample', got {self.tree!r}")
        if self.scope not in ("shared", "all"):
            raise ValueError(f"scope must be 'shared' or 'all', got {self.scope!r}")
        _check_common(self)


def _check_common(config: Any) -> None:
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    if config.prefs_per_step < 1:
        raise ValueError(f"prefs_per_step must be >= 1, got {config.prefs_per_step}")
    if config.bn_stats not in ("anchor", "batch"):
        raise ValueError(f"bn_stats must be 'anchor' or 'batch', got {config.bn_stats!r}")
    if config.dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {config.dirichlet_alpha}")
    if config.eval_every is not None and config.eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {config.eval_every}")


def adam(parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all tensors: much faster on CPU for many small tensors)."""
    return torch.optim.Adam(list(parameters), lr=lr, weight_decay=weight_decay, fused=True)


def multistep(optimizer: torch.optim.Optimizer, steps: int, milestones: Sequence[float], decay: float):
    """Multiply the learning rate by ``decay`` at the fractions ``milestones`` of ``steps``."""
    marks = sorted({max(1, int(round(m * steps))) for m in milestones if 0 < m < 1})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=decay)
