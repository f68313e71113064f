"""The three training stages: single-task streams (stage 0), edge hypernet (1), weight hypernet (2).

Each stage is a function of modules, data and a config; none keeps global state. Data is an iterable
of ``(inputs [B, C, H, W], {task: target [B, ...]})`` batches, re-iterated as often as needed. Under
``torchrun`` (``torch.distributed`` initialised) the trained module is wrapped in
DistributedDataParallel; each rank must then see its own shard of the data, and it draws its own
preferences (seeded by ``seed + rank``), so a step averages gradients over ``world_size`` preferences.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from hyper import (
    EdgeHypernet,
    RegulariserConfig,
    TemperatureSchedule,
    WeightHypernet,
    branching_regulariser,
    expected_cost_fraction,
    gumbel_softmax,
    most_likely_parents,
    tree_code,
)

from .adaptation import Adaptation
from .anchor import AnchorNet, frozen_batchnorm_statistics, tree_forward
from .budget import CostTable
from .planner import Planner
from .preferences import RequestSampler
from .progress import Progress
from .tasks import Task

__all__ = [
    "AnchorConfig",
    "EdgeConfig",
    "WeightConfig",
    "train_anchor",
    "evaluate_streams",
    "train_edge",
    "train_weights",
    "cycle",
    "to_device",
]

Batch = tuple[Tensor, Mapping[str, Tensor]]


# ----------------------------------------------------------------------------------- configs
@dataclass
class AnchorConfig:
    """Stage 0: every stream on its own task (paper's CIFAR setting: Adam 1e-3, weight decay 1e-5).

    Attributes:
        steps: optimisation steps (batches); every stream sees the same batches.
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

    steps: int = 2000
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
            return _multistep(optimizer, self.steps, self.step_milestones, self.step_gamma)
        return None


@dataclass
class EdgeConfig:
    """Stage 1: the edge hypernet on the frozen anchor (method.md sections 4, 5, 8).

    Attributes:
        steps: paper 30K. ``lr`` Adam (paper 1e-3), multiplied by ``lr_decay`` (0.3) at the fractions
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
        regulariser: Omega's weights and ablation switches.
        amp: mixed precision for the anchor's forward (see :class:`AnchorConfig`).
        seed: seeds preference draws and Gumbel noise (None: the controller's seed).
    """

    steps: int = 30000
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
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)
    amp: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
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
class WeightConfig:
    """Stage 2: the weight hypernet, task loss only, anchor and edge hypernet frozen.

    Attributes:
        tree: ``"ml"`` trains on the tree the planner builds for each sampled request (what inference
            builds, fallback merges included); ``"sample"`` on hard Gumbel samples at ``sample_tau``.
        scope: ``"shared"`` (default, [choice]): only nodes and heads that sharing touches are adapted
            (:func:`dymu.adaptation.adapted_nodes`), so the unshared tree stays exactly the anchor;
            ``"all"``: every node and head (the paper adapts every node).
        Others as in :class:`EdgeConfig`; requests are drawn as the edge hypernet's control mode
        draws them.
    """

    steps: int = 30000
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


# ------------------------------------------------------------------------------------ helpers
def cycle(data: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate over ``data`` forever, re-iterating it at the end of each pass."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batch")


def to_device(batch: Batch, device: torch.device, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Move a batch to ``device``, checking it has a target for every task."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping)):
        raise ValueError("a batch must be a pair (inputs, {task_name: target})")
    x, targets = batch
    missing = [n for n in names if n not in targets]
    if missing:
        raise ValueError(f"a batch lacks targets for task(s) {missing}; it has {sorted(targets)}")
    return x.to(device, non_blocking=True), {n: targets[n].to(device, non_blocking=True) for n in names}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_ddp(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    if _rank_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def adam(parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all tensors: much faster on CPU for many small tensors)."""
    return torch.optim.Adam(list(parameters), lr=lr, weight_decay=weight_decay, fused=True)


def _collect_if_distributed() -> None:
    """Free dropped DDP wrappers now: a reducer that outlives its process group aborts the process at exit."""
    if _rank_world()[1] > 1:
        gc.collect()


def _broadcast_state(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (BatchNorm running statistics are rank-local)."""
    if _rank_world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _mean_over_ranks(metrics: dict[str, dict[str, float]], device: torch.device) -> dict[str, dict[str, float]]:
    """Average validation metrics over ranks, so that every rank selects the same checkpoint."""
    if _rank_world()[1] == 1:
        return metrics
    keys = [(task, name) for task, values in metrics.items() for name in values]
    values = torch.tensor([metrics[t][n] for t, n in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= _rank_world()[1]
    out: dict[str, dict[str, float]] = {task: {} for task in metrics}
    for (task, name), value in zip(keys, values.tolist()):
        out[task][name] = value
    return out


def _multistep(optimizer: torch.optim.Optimizer, steps: int, milestones: Sequence[float], decay: float):
    marks = sorted({max(1, int(round(m * steps))) for m in milestones if 0 < m < 1})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=decay)


def _chunks(x: Tensor, targets: Mapping[str, Tensor], n: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    n = max(1, min(n, x.shape[0]))
    xs = x.chunk(n)
    ts = {k: v.chunk(n) for k, v in targets.items()}
    return [(xs[i], {k: v[i] for k, v in ts.items()}) for i in range(len(xs))]


def _weighted_loss(
    outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], tasks: Sequence[Task], weights: Tensor
) -> tuple[Tensor, list[float]]:
    total = outputs[tasks[0].name].new_zeros(())
    parts = []
    for k, task in enumerate(tasks):
        loss = task.loss(outputs[task.name], targets[task.name])
        parts.append(float(loss.detach()))
        if weights[k] > 0:
            total = total + weights[k] * loss
    return total, parts


class _Precision:
    """Autocast and gradient scaling for one training loop (a no-op when ``amp`` is off)."""

    def __init__(self, device: torch.device, amp: bool):
        self.device_type = device.type
        self.enabled = bool(amp)
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.enabled and device.type == "cuda")

    def autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()


def _progress(total: int, desc: str, rank: int, enabled: bool) -> Progress:
    return Progress(total, desc, enabled=enabled and rank == 0)


# --------------------------------------------------------------------------------- stage 0
@torch.no_grad()
def evaluate_streams(anchor: AnchorNet, tasks: Sequence[Task], data: Iterable[Batch], device: torch.device) -> dict[str, dict[str, float]]:
    """Each stream on its own task over ``data``: ``{task: {"loss": ..., metric: ...}}``."""
    states = {t.name: t.metric_state() for t in tasks}
    names = [t.name for t in tasks]
    was = anchor.training
    anchor.eval()
    try:
        for batch in data:
            x, targets = to_device(batch, device, names)
            outputs = anchor.forward_single(x)
            for t in tasks:
                states[t.name].update(outputs[t.name], targets[t.name])
    finally:
        anchor.train(was)
    return {name: state.compute() for name, state in states.items()}


def _better(task: Task, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return True
    return new > old if task.higher_is_better else new < old


def train_anchor(
    anchor: AnchorNet,
    tasks: Sequence[Task],
    train: Iterable[Batch],
    val: Iterable[Batch] | None,
    config: AnchorConfig,
    device: torch.device,
    verbose: bool = True,
) -> dict[str, Any]:
    """Stage 0: train every stream and head on its own task; keep each stream's best validation state.

    Every stream sees the same batches; their losses are summed, which trains them independently
    (no parameter is shared). Under DDP each rank validates on its own shard and the scores are
    averaged over ranks; at the end rank 0's state (BatchNorm statistics included) goes to every rank. Returns ``{"history": [...], "best": {task: metrics}, "seconds": s}``.
    """
    rank, _ = _rank_world()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(_stage_seed(config) + rank)
        return _train_anchor(anchor, tasks, train, val, config, device, verbose, rank)


def _train_anchor(anchor, tasks, train, val, config, device, verbose, rank) -> dict[str, Any]:
    names = [t.name for t in tasks]
    anchor.to(device).train()
    model = _maybe_ddp(anchor, device)
    optimizer = config.make_optimizer(anchor.parameters())
    scheduler = config.make_scheduler(optimizer)
    best_score: dict[str, float | None] = {n: None for n in names}
    best_metrics: dict[str, dict[str, float]] = {}
    best_state: dict[str, tuple[dict, dict]] = {}
    history = []
    start = time.time()
    batches = cycle(train)
    precision = _Precision(device, config.amp)
    with _progress(config.steps, "anchor", rank, verbose) as progress:
        for step in range(1, config.steps + 1):
            x, targets = to_device(next(batches), device, names)
            with precision.autocast():
                outputs = model(x)
                losses = [t.loss(outputs[t.name], targets[t.name]).float() for t in tasks]
            optimizer.zero_grad(set_to_none=True)
            precision.backward(torch.stack(losses).sum())
            precision.step(optimizer)
            if scheduler is not None:
                scheduler.step()
            progress.update(step, **{f"loss_{n}": float(l.detach()) for n, l in zip(names, losses)})
            if val is not None and (step % config.eval_every == 0 or step == config.steps):
                metrics = _mean_over_ranks(evaluate_streams(anchor, tasks, val, device), device)
                history.append({"step": step, "val": metrics})
                for i, t in enumerate(tasks):
                    score = metrics[t.name][t.primary]
                    if _better(t, score, best_score[t.name]):
                        best_score[t.name] = score
                        best_metrics[t.name] = metrics[t.name]
                        best_state[t.name] = (
                            copy.deepcopy(anchor.streams[i].state_dict()),
                            copy.deepcopy(anchor.heads[t.name].state_dict()),
                        )
                progress.log("val " + "  ".join(f"{t.name} {t.primary} {metrics[t.name][t.primary]:.4f}" for t in tasks))
    for i, t in enumerate(tasks):
        if t.name in best_state:
            stream_state, head_state = best_state[t.name]
            anchor.streams[i].load_state_dict(stream_state)
            anchor.heads[t.name].load_state_dict(head_state)
    model = None  # noqa: F841  (drop the DDP wrapper before the next stage)
    _collect_if_distributed()
    _broadcast_state(anchor)
    anchor.eval()
    return {"history": history, "best": best_metrics, "seconds": time.time() - start}


# ------------------------------------------------------------------------------- selection
class _KeepBest:
    """The module's state at its best validation score (lower is better), restored at the end."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module, self.device = module, device
        self.score: float | None = None
        self.step: int | None = None
        self.state: dict[str, Tensor] | None = None
        self.history: list[dict[str, float]] = []

    def offer(self, score: float, step: int) -> bool:
        score = _mean_scalar_over_ranks(score, self.device)
        self.history.append({"step": step, "score": score})
        if self.score is not None and not score < self.score:
            return False
        self.score, self.step = score, step
        self.state = copy.deepcopy(self.module.state_dict())
        return True

    def restore(self) -> None:
        if self.state is not None:
            self.module.load_state_dict(self.state)

    def summary(self) -> dict[str, Any]:
        return {"best_step": self.step, "best_score": self.score, "history": self.history}


def _mean_scalar_over_ranks(value: float, device: torch.device) -> float:
    if _rank_world()[1] == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / _rank_world()[1]


def _eval_points(config: Any) -> int:
    return config.eval_every or max(1, math.ceil(config.steps / 4))


def _stage_seed(config: Any) -> int:
    return 0 if config.seed is None else int(config.seed)


# --------------------------------------------------------------------------------- stage 1
def train_edge(
    anchor: AnchorNet,
    edge: EdgeHypernet,
    tasks: Sequence[Task],
    train: Iterable[Batch],
    affinity: Tensor,
    loss_scales: Tensor,
    config: EdgeConfig,
    device: torch.device,
    verbose: bool = True,
    *,
    cost_table: CostTable | None = None,
    select: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Stage 1: train the edge hypernet on the frozen anchor.

    Each step draws a request per chunk (see :class:`EdgeConfig` ``control``), Gumbel-softmax parent
    choices ``nu [L, N, N]`` from the hypernet's logits at the scheduled temperature, routes every node
    of the anchor through ``nu`` and back-propagates into the hypernet only. ``cost_table`` is needed in
    budget mode. ``select()`` (lower is better) scores the hypernet on validation requests every
    ``eval_every`` steps; the best-scoring state is kept.
    """
    if config.control == "budget" and cost_table is None:
        raise ValueError("the budget control mode needs the cost table (cost_table=controller.cost_table)")
    rank, _ = _rank_world()
    seed = _stage_seed(config)
    rng = np.random.default_rng(seed + rank)
    noise = torch.Generator().manual_seed(seed + 7919 * (rank + 1))
    names = [t.name for t in tasks]
    sampler = RequestSampler(
        len(tasks), config.dirichlet_alpha, config.control,
        cost_table.min_budget if cost_table is not None else 0.0, config.full_budget_share,
    )
    anchor.to(device).requires_grad_(False)
    edge.to(device).train()
    affinity = affinity.to(device)
    loss_scales = loss_scales.to(device)
    sharing = replace(config.regulariser, use_inactive=False)
    if cost_table is not None:
        block_flops = torch.tensor(cost_table.block_flops, dtype=torch.float32, device=device)
        head_flops, anchor_flops = float(sum(cost_table.head_flops)), float(cost_table.anchor_flops)
    model = _maybe_ddp(edge, device)
    optimizer = adam(edge.parameters(), lr=config.lr)
    scheduler = _multistep(optimizer, config.steps, config.lr_milestones, config.lr_decay)
    schedule = TemperatureSchedule.for_steps(config.steps, config.tau_start, config.tau_decay, config.n_decays)
    hard_from = int(round((1 - config.hard_fraction) * config.steps))
    eval_every = _eval_points(config)
    keep = _KeepBest(edge, device)
    batches = cycle(train)
    start = time.time()
    log = []
    precision = _Precision(device, config.amp)
    anchor.train(config.bn_stats == "batch")
    with frozen_batchnorm_statistics(anchor), _progress(config.steps, "edge", rank, verbose) as progress:
        for step in range(1, config.steps + 1):
            tau = schedule(step - 1)
            hard = config.routing == "hard" or step > hard_from
            x, targets = to_device(next(batches), device, names)
            optimizer.zero_grad(set_to_none=True)
            chunks = _chunks(x, targets, config.prefs_per_step)
            task_total = extra_total = cost_total = 0.0
            for xc, tc in chunks:
                r_np, budget, level = sampler(rng)
                r = torch.tensor(r_np, dtype=torch.float32, device=device)
                logits = model(r.unsqueeze(0), torch.tensor([level], device=device))[0]
                nu = gumbel_softmax(logits, tau, hard=hard, generator=noise)
                with precision.autocast():
                    outputs = anchor.routed_forward(xc, nu)
                    task_loss, _ = _weighted_loss(outputs, tc, tasks, r * loss_scales)
                if config.control == "budget":
                    cost = expected_cost_fraction(logits.float().softmax(-1), block_flops, head_flops, anchor_flops)
                    over = torch.relu(cost - (budget - config.budget_margin))
                    under = torch.relu(budget - config.budget_slack - cost)
                    omega, _ = branching_regulariser(nu, r, level, affinity, sharing)
                    extra = config.cost_weight * over + config.under_weight * under + omega
                    cost_total += float(cost.detach()) / len(chunks)
                else:
                    extra, _ = branching_regulariser(nu, r, level, affinity, config.regulariser)
                precision.backward((task_loss.float() + extra) / len(chunks))
                task_total += float(task_loss.detach()) / len(chunks)
                extra_total += float(extra.detach()) / len(chunks)
            precision.step(optimizer)
            scheduler.step()
            progress.update(step, task=task_total, reg=extra_total, cost=cost_total, tau=tau)
            if step % max(1, config.steps // 50) == 0 or step == config.steps:
                log.append({"step": step, "task_loss": task_total, "regulariser": extra_total, "expected_cost": cost_total, "tau": tau})
            if select is not None and (step % eval_every == 0 or step == config.steps):
                edge.eval()
                score = select()
                edge.train()
                kept = keep.offer(score, step)
                progress.log(f"val score {keep.history[-1]['score']:.4f}" + ("  (best so far)" if kept else ""))
    keep.restore()
    model = None  # noqa: F841  (drop the DDP wrapper before the next stage)
    _collect_if_distributed()
    anchor.eval()
    edge.eval()
    return {"log": log, "seconds": time.time() - start, "selection": keep.summary()}


# --------------------------------------------------------------------------------- stage 2
def train_weights(
    anchor: AnchorNet,
    edge: EdgeHypernet,
    weight: WeightHypernet,
    tasks: Sequence[Task],
    train: Iterable[Batch],
    loss_scales: Tensor,
    config: WeightConfig,
    device: torch.device,
    verbose: bool = True,
    *,
    planner: Planner,
    select: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Stage 2: train the weight hypernet on the task loss of the trees the frozen planner builds.

    Only the nodes of each step's tree run; the nodes and heads that sharing touches (``config.scope``)
    get the hypernet's adaptations for the request and the tree (:mod:`dymu.adaptation`). ``select()``
    as in :func:`train_edge`.
    """
    rank, _ = _rank_world()
    seed = _stage_seed(config)
    rng = np.random.default_rng(seed + rank)
    noise = torch.Generator().manual_seed(seed + 104729 * (rank + 1))
    names = [t.name for t in tasks]
    sampler = RequestSampler(len(tasks), config.dirichlet_alpha, planner.mode, planner.table.min_budget, config.full_budget_share)
    anchor.to(device).requires_grad_(False)
    edge.to(device).requires_grad_(False).eval()
    weight.to(device).train()
    loss_scales = loss_scales.to(device)
    model = _maybe_ddp(weight, device)
    optimizer = adam(weight.parameters(), lr=config.lr)
    scheduler = _multistep(optimizer, config.steps, config.lr_milestones, config.lr_decay)
    eval_every = _eval_points(config)
    keep = _KeepBest(weight, device)
    batches = cycle(train)
    start = time.time()
    log = []
    precision = _Precision(device, config.amp)
    anchor.train(config.bn_stats == "batch")
    with frozen_batchnorm_statistics(anchor), _progress(config.steps, "weights", rank, verbose) as progress:
        for step in range(1, config.steps + 1):
            x, targets = to_device(next(batches), device, names)
            optimizer.zero_grad(set_to_none=True)
            chunks = _chunks(x, targets, config.prefs_per_step)
            total = 0.0
            for xc, tc in chunks:
                r_np, budget, level = sampler(rng)
                r = torch.tensor(r_np, dtype=torch.float32, device=device)
                if config.tree == "ml":
                    plan = planner.plan(r_np, budget=budget, c=None if budget is not None else level)
                    assignment, level = plan.tree.assignment, plan.c
                else:
                    with torch.no_grad():
                        logits = edge(r.unsqueeze(0), torch.tensor([level], device=device))[0]
                        sample = gumbel_softmax(logits, config.sample_tau, hard=True, generator=noise)
                    assignment = most_likely_parents(sample)
                code = tree_code(assignment, len(tasks)).to(device)
                node_deltas, head_deltas = model(r.unsqueeze(0), torch.tensor([level], device=device), code.unsqueeze(0))
                adapt = Adaptation(weight, node_deltas, head_deltas, assignment, config.scope)
                with precision.autocast():
                    outputs = tree_forward(anchor, assignment, xc, adapt.node, adapt.head)
                    loss, _ = _weighted_loss(outputs, tc, tasks, r * loss_scales)
                # trees that sharing does not touch use no adaptation; keep the graph (and DDP) connected
                loss = loss + 0.0 * sum(d.sum() for d in [*node_deltas, *([head_deltas] if head_deltas is not None else [])])
                precision.backward(loss.float() / len(chunks))
                total += float(loss.detach()) / len(chunks)
            precision.step(optimizer)
            scheduler.step()
            progress.update(step, loss=total)
            if step % max(1, config.steps // 50) == 0 or step == config.steps:
                log.append({"step": step, "loss": total})
            if select is not None and (step % eval_every == 0 or step == config.steps):
                weight.eval()
                score = select()
                weight.train()
                kept = keep.offer(score, step)
                progress.log(f"val score {keep.history[-1]['score']:.4f}" + ("  (best so far)" if kept else ""))
    keep.restore()
    model = None  # noqa: F841  (drop the DDP wrapper before the next stage)
    _collect_if_distributed()
    anchor.eval()
    weight.eval()
    return {"log": log, "seconds": time.time() - start, "selection": keep.summary()}
