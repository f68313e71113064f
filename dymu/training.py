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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    gumbel_softmax,
    most_likely_parents,
)

from .anchor import AnchorNet, frozen_batchnorm_statistics, tree_forward
from .preferences import sample_preferences
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
    seed: int = 0

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
        tau_start, tau_decay, n_decays: Gumbel temperature 5, x0.97, 100 times over training (paper:
            every 300 of 30K steps).
        routing: [choice] ``"soft"`` (default: child input = sum_i nu_j(i) y_i, the Gumbel-softmax
            relaxation) or ``"hard"`` (straight-through one-hot samples). Measured on fashion_digits
            with the regulariser switched off, where the anchor is the optimum: soft routing keeps the
            anchor tree, while straight-through gradients (a linearisation across very different
            streams' features) walk away from it to trees with a much higher loss.
        dirichlet_alpha: training preferences r ~ Dirichlet(alpha); c ~ U(0, 1). [choice] 1.0
            (uniform on the simplex) where the paper uses 0.2: with 0.2 most sampled preferences
            leave a single task active, the inactive loss then forces sharing whatever c is, and the
            controller learns less of what c should do when several tasks matter (on multifashion it
            gave lower hypervolume at c = 0 and a narrower range of costs between c = 0 and c = 1).
        prefs_per_step: [choice] the batch is split into this many chunks, each with its own (r, c)
            (paper: one preference per batch); more preferences per step at the same cost.
        bn_stats: ``"anchor"``: BatchNorm uses the anchor's running statistics throughout (the model
            that is deployed); ``"batch"``: batch statistics as in the paper (frozen running stats).
        regulariser: Omega's weights and ablation switches.
        amp: mixed precision for the anchor's forward (see :class:`AnchorConfig`).
    """

    steps: int = 30000
    lr: float = 1e-3
    lr_decay: float = 0.3
    lr_milestones: tuple[float, ...] = (14 / 30, 28 / 30)
    tau_start: float = 5.0
    tau_decay: float = 0.97
    n_decays: int = 100
    routing: str = "soft"
    dirichlet_alpha: float = 1.0
    prefs_per_step: int = 4
    bn_stats: str = "anchor"
    regulariser: RegulariserConfig = field(default_factory=RegulariserConfig)
    amp: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.routing not in ("soft", "hard"):
            raise ValueError(f"routing must be 'soft' or 'hard', got {self.routing!r}")
        _check_common(self)


@dataclass
class WeightConfig:
    """Stage 2: the weight hypernet, task loss only, anchor and edge hypernet frozen.

    Attributes:
        tree: ``"ml"`` trains on the maximum-likelihood tree of each (r, c) (what inference builds);
            ``"sample"`` on hard Gumbel samples at the final temperature ``sample_tau``.
        Others as in :class:`EdgeConfig`.
    """

    steps: int = 30000
    lr: float = 1e-3
    lr_decay: float = 0.3
    lr_milestones: tuple[float, ...] = (14 / 30, 28 / 30)
    tree: str = "ml"
    sample_tau: float = 0.25
    dirichlet_alpha: float = 1.0
    prefs_per_step: int = 4
    bn_stats: str = "anchor"
    amp: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tree not in ("ml", "sample"):
            raise ValueError(f"tree must be 'ml' or 'sample', got {self.tree!r}")
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
    torch.manual_seed(config.seed + rank)
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
) -> dict[str, Any]:
    """Stage 1: train the edge hypernet on the frozen anchor with ``sum_i r_i w_i L_i + Omega``.

    Each step samples ``(r, c)`` per chunk, Gumbel-softmax parent choices ``nu [L, N, N]`` from
    ``h(r, c)`` at the scheduled temperature, routes every node of the anchor through ``nu`` and
    back-propagates into the hypernet only.
    """
    rank, _ = _rank_world()
    rng = np.random.default_rng(config.seed + rank)
    noise = torch.Generator().manual_seed(config.seed + 7919 * (rank + 1))
    names = [t.name for t in tasks]
    anchor.to(device).requires_grad_(False)
    edge.to(device).train()
    affinity = affinity.to(device)
    loss_scales = loss_scales.to(device)
    model = _maybe_ddp(edge, device)
    optimizer = adam(edge.parameters(), lr=config.lr)
    scheduler = _multistep(optimizer, config.steps, config.lr_milestones, config.lr_decay)
    schedule = TemperatureSchedule.for_steps(config.steps, config.tau_start, config.tau_decay, config.n_decays)
    batches = cycle(train)
    start = time.time()
    log = []
    precision = _Precision(device, config.amp)
    anchor.train(config.bn_stats == "batch")
    with frozen_batchnorm_statistics(anchor), _progress(config.steps, "edge", rank, verbose) as progress:
        for step in range(1, config.steps + 1):
            tau = schedule(step - 1)
            x, targets = to_device(next(batches), device, names)
            optimizer.zero_grad(set_to_none=True)
            chunks = _chunks(x, targets, config.prefs_per_step)
            task_total = omega_total = 0.0
            for xc, tc in chunks:
                r_np, c = sample_preferences(len(tasks), config.dirichlet_alpha, rng)
                r = torch.tensor(r_np, dtype=torch.float32, device=device)
                logits = model(r.unsqueeze(0), torch.tensor([c], device=device))[0]
                nu = gumbel_softmax(logits, tau, hard=config.routing == "hard", generator=noise)
                with precision.autocast():
                    outputs = anchor.routed_forward(xc, nu)
                    task_loss, _ = _weighted_loss(outputs, tc, tasks, r * loss_scales)
                omega, _ = branching_regulariser(nu, r, c, affinity, config.regulariser)
                precision.backward((task_loss.float() + omega) / len(chunks))
                task_total += float(task_loss.detach()) / len(chunks)
                omega_total += float(omega.detach()) / len(chunks)
            precision.step(optimizer)
            scheduler.step()
            progress.update(step, task=task_total, omega=omega_total, tau=tau)
            if step % max(1, config.steps // 50) == 0 or step == config.steps:
                log.append({"step": step, "task_loss": task_total, "omega": omega_total, "tau": tau})
    model = None  # noqa: F841  (drop the DDP wrapper before the next stage)
    _collect_if_distributed()
    anchor.eval()
    edge.eval()
    return {"log": log, "seconds": time.time() - start}


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
) -> dict[str, Any]:
    """Stage 2: train the weight hypernet on the task loss of the trees the frozen edge hypernet picks.

    Only the nodes of each step's tree run; their BatchNorm affine parameters become
    ``gamma + dgamma``, ``beta + dbeta`` with the deltas ``hbar(r, c)``.
    """
    rank, _ = _rank_world()
    rng = np.random.default_rng(config.seed + rank)
    noise = torch.Generator().manual_seed(config.seed + 104729 * (rank + 1))
    names = [t.name for t in tasks]
    anchor.to(device).requires_grad_(False)
    edge.to(device).requires_grad_(False).eval()
    weight.to(device).train()
    loss_scales = loss_scales.to(device)
    model = _maybe_ddp(weight, device)
    optimizer = adam(weight.parameters(), lr=config.lr)
    scheduler = _multistep(optimizer, config.steps, config.lr_milestones, config.lr_decay)
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
                r_np, c = sample_preferences(len(tasks), config.dirichlet_alpha, rng)
                r = torch.tensor(r_np, dtype=torch.float32, device=device)
                cc = torch.tensor([c], device=device)
                with torch.no_grad():
                    logits = edge(r.unsqueeze(0), cc)[0]
                    if config.tree == "sample":
                        logits = gumbel_softmax(logits, config.sample_tau, hard=True, generator=noise)
                assignment = most_likely_parents(logits)
                deltas = model(r.unsqueeze(0), cc)

                def node_deltas(layer: int, node: int, deltas=deltas):
                    return weight.split(layer, deltas[layer][0, node])

                with precision.autocast():
                    outputs = tree_forward(anchor, assignment, xc, node_deltas)
                    loss, _ = _weighted_loss(outputs, tc, tasks, r * loss_scales)
                precision.backward(loss.float() / len(chunks))
                total += float(loss.detach()) / len(chunks)
            precision.step(optimizer)
            scheduler.step()
            progress.update(step, loss=total)
            if step % max(1, config.steps // 50) == 0 or step == config.steps:
                log.append({"step": step, "loss": total})
    model = None  # noqa: F841  (drop the DDP wrapper before the next stage)
    _collect_if_distributed()
    anchor.eval()
    weight.eval()
    return {"log": log, "seconds": time.time() - start}
