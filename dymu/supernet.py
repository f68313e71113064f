"""The supernet stage: fine-tune the anchor's streams so that shared nodes serve every task on them.

[choice] beyond the paper (method.md section 12). After stage 0 every node is a single-task stream,
so a node that a derived tree shares was trained for one task only, and every derived model is at best
as good as those frozen streams. This stage trains the streams and heads on the trees inference will
build, a sandwich per step (slimmable / once-for-all networks):

* the anchor tree (every task on its own stream), which keeps the full-budget model strong, weighted
  ``anchor_weight`` against each other tree (the step's loss is the weighted mean over its trees);
* a one-stream tree (every task on stream ``s``, ``s`` drawn per step), the cheapest tree there is;
* ``budget_trees`` trees across the budget range: for a drawn preference ``r ~ Dirichlet`` and budget
  ``b ~ U(min_budget, 1)``, the anchor merged along the affinity until it fits
  (:func:`dymu.budget.shrink_to_budget`, the planner's merge search), trained on ``r``'s weights; or, with
  ``tree_family="affinity"``, the nested static affinity tree of cost ``b`` with one stream per group
  (:mod:`dymu.family`), whose one-stream tree then replaces the drawn one (``family_one_stream="root"``) or
  not (``"drawn"``).

With ``own_trees`` the stage also trains a few budget trees alone, each on its own copy of the stage-0 streams
(:mod:`dymu.own_trees`), on the same batches; they are served where the measured search prices them lower.

Each task's last features (the input of its head) are distilled toward its frozen single-task
stream's through a task-specific adaptor (a 1x1 convolution initialised to the identity; Li & Bilen,
"Knowledge Distillation for Multi-task Learning", 2020; Li, Liu & Bilen, "Universal Representations"):
the adaptor lets a shared feature differ from each teacher's by a linear map, so distillation keeps the
task's information without forcing two tasks' features to be equal. Adaptors exist only in training;
derived models and the cost table never contain them.

BatchNorm: only the anchor tree's pass moves the running statistics, so they stay the statistics of each
node on its own stream (what the weight hypernet's BatchNorm deltas are learnt against). The other trees
train on batch statistics (``bn="batch"``, the default, the one the benchmarks measured) or, with
``bn="anchor"``, on those running statistics, as derived trees and the later stages run them (not yet
compared on validation).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchor import AnchorNet, frozen_batchnorm_statistics, run_tree
from .budget import CostTable, merged_anchor
from .distributed import rank_world
from .family import affinity_family, family_tree
from .own_trees import OwnTrees, own_tree_assignments
from .progress import quiet_from_env
from .loop import Batch, KeepBest, Part, StepInfo, TrainLoop
from .resume import Checkpointing
from .stage_configs import ONE_STREAM_TREES, TREE_FAMILIES, AnchorConfig, SupernetConfig, adam
from .tasks import Task
from .training import _Precision, evaluate_streams, stream_parts, streams_step

__all__ = ["SupernetConfig", "FeatureAdaptors", "distillation_loss", "SandwichTrees", "tree_features", "train_supernet",
           "frozen_copy", "tree_blocks", "sandwich_blocks_per_image"]

Assignment = tuple[tuple[int, ...], ...]


class FeatureAdaptors(nn.Module):
    """One linear map per task from a student's features to its teacher's, initialised to the identity.

    ``forward(k, f)``: ``f [B, C, H, W]`` (a 1x1 convolution) or ``f [B, C]`` (a linear layer) -> same shape.

    >>> adaptors = FeatureAdaptors(2, channels=4, spatial=True)
    >>> f = torch.randn(3, 4, 5, 5)
    >>> bool(torch.allclose(adaptors(1, f), f))
    True
    """

    def __init__(self, n_tasks: int, channels: int, spatial: bool):
        super().__init__()
        make = (lambda: nn.Conv2d(channels, channels, 1)) if spatial else (lambda: nn.Linear(channels, channels))
        self.maps = nn.ModuleList(make() for _ in range(n_tasks))
        with torch.no_grad():
            for m in self.maps:
                m.weight.zero_()
                m.weight.view(channels, channels).copy_(torch.eye(channels))
                m.bias.zero_()

    def forward(self, task: int, features: Tensor) -> Tensor:
        return self.maps[task](features)


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean over samples and positions of || s / |s| - t / |t| ||^2``, norms over channels (dim 1).

    ``student``, ``teacher``: ``[B, C, ...]``; returns a scalar in ``[0, 4]``.

    >>> f = torch.randn(2, 3, 4, 4)
    >>> float(distillation_loss(2 * f, f))   # the scale of a feature does not matter
    0.0
    """
    s = F.normalize(student.flatten(2) if student.dim() > 2 else student, dim=1)
    t = F.normalize(teacher.flatten(2) if teacher.dim() > 2 else teacher, dim=1)
    return (s - t).pow(2).sum(1).mean()


def tree_features(anchor: AnchorNet, assignment: Sequence[Sequence[int]], x: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Run one tree of ``anchor`` on ``x [B, C, H, W]``: ``({task: prediction}, [last features of task k]``
    (each ``[B, C', H', W']``, the input of task ``k``'s head)``)``; shared nodes are computed once."""
    features: list[Tensor] = []

    def run_head(k: int, last: Tensor, skips: Sequence[Tensor]) -> Tensor:
        features.append(last)
        return anchor.heads[anchor.task_names[k]](last, *skips)

    outputs = run_tree(assignment, x, lambda layer, node, inp: anchor.block(layer, node)(inp), run_head, anchor.skip_layers)
    return dict(zip(anchor.task_names, outputs)), features


class SandwichTrees:
    """The trees of one supernet step and their task weights (see the module docstring).

    ``draw() -> [(assignment, r [N])]``: the anchor tree and the one-stream tree with uniform ``r``, then
    ``budget_trees`` trees with their drawn ``r``: merged trees (``family="merge"``), or the nested affinity tree
    of the drawn budget (``family="affinity"``, :mod:`dymu.family`: the costliest that fits), whose cheapest tree
    is then the one-stream tree unless ``one_stream="drawn"`` (a stream drawn per step, as with merged trees).
    Draws from ``rng`` only.
    """

    def __init__(self, table: CostTable, affinity: np.ndarray | None, budget_trees: int, dirichlet_alpha: float,
                 rng: np.random.Generator, family: str = "merge", one_stream: str = "root"):
        if one_stream not in ONE_STREAM_TREES:
            raise ValueError(f"one_stream must be one of {ONE_STREAM_TREES}, got {one_stream!r}")
        self.drawn_stream = family == "merge" or one_stream == "drawn"
        if family not in TREE_FAMILIES:
            raise ValueError(f"family must be one of {TREE_FAMILIES}, got {family!r}")
        self.table, self.budget_trees, self.alpha, self.rng = table, budget_trees, dirichlet_alpha, rng
        n = table.n_tasks
        self.affinity = np.ones((n, n)) if affinity is None else np.asarray(affinity, dtype=float)
        self.family = affinity_family(table, self.affinity) if family == "affinity" else None

    def family_tree(self, budget: float) -> Assignment:
        """The costliest tree of the affinity family within ``budget`` (a fraction of the anchor's FLOPs)."""
        return family_tree(self.family, budget * self.table.anchor_flops)

    def anchor_tree(self) -> Assignment:
        return tuple(tuple(range(self.table.n_tasks)) for _ in range(self.table.n_layers))

    def one_stream_tree(self, stream: int) -> Assignment:
        return tuple((stream,) * self.table.n_tasks for _ in range(self.table.n_layers))

    def draw(self) -> list[tuple[Assignment, np.ndarray]]:
        n = self.table.n_tasks
        uniform = np.full(n, 1.0 / n)
        stream = int(self.rng.integers(n))  # drawn even when unused: every family draws the same sequence from rng
        cheapest = self.one_stream_tree(stream) if self.drawn_stream else self.family[0][0]
        trees = [(self.anchor_tree(), uniform), (cheapest, uniform)]
        low = self.table.min_budget
        for _ in range(self.budget_trees):
            r = self.rng.dirichlet(np.full(n, self.alpha))
            budget = low + (1.0 - low) * float(self.rng.random())
            tree = self.family_tree(budget) if self.family is not None else merged_anchor(self.table, budget, r, self.affinity)
            trees.append((tree, r))
        return trees


def tree_blocks(assignment: Sequence[Sequence[int]]) -> int:
    """The blocks one image runs through a tree: its distinct ``(layer, stream)`` nodes, shared ones once.

    >>> tree_blocks([[0, 0, 2], [0, 1, 2]])   # tasks 0 and 1 share the first block of stream 0
    5
    """
    return sum(len(set(row)) for row in assignment)


def sandwich_blocks_per_image(config: SupernetConfig, table: CostTable, affinity: np.ndarray | None) -> float:
    """The mean number of backbone blocks one training image runs forward per step of :func:`train_supernet`
    with ``config``: every tree of the step's sandwich (:func:`tree_blocks`), the frozen teacher's ``N x L``
    with feature distillation, the solo streams' ``N x L`` with ``config.solo``, each own tree's blocks
    (:mod:`dymu.own_trees`).

    Replays the stage's tree draws (its generator is seeded by ``config.seed`` and draws nothing else; the trees
    also depend on ``table`` and ``affinity``, which must be the ones the stage ran with), so it is what the stage
    ran, also for a controller trained before this count existed. The benchmarks' training-budget table reports it.

    >>> table = CostTable(block_flops=(10, 10), block_params=(1, 1), head_flops=(1, 1), head_params=(1, 1), input_shape=(1, 4, 4))
    >>> blocks = sandwich_blocks_per_image(SupernetConfig(steps=10, budget_trees=0, distill="none", seed=0), table, None)
    >>> blocks   # the anchor tree (4 blocks) and a one-stream tree (2) at every step
    6.0
    """
    seed = 0 if config.seed is None else int(config.seed)
    trees = SandwichTrees(table, affinity, config.budget_trees, config.dirichlet_alpha, np.random.default_rng(seed),
                          config.tree_family, config.family_one_stream)
    streams = table.n_tasks * table.n_layers
    extra = streams * ((config.distill == "features" and config.distill_weight > 0) + bool(config.solo))
    extra += sum(tree_blocks(a) for a in own_tree_assignments(table, affinity, config.own_trees, config.own_groups))
    total = sum(sum(tree_blocks(assignment) for assignment, _ in trees.draw()) for _ in range(config.steps))
    return total / config.steps + extra if config.steps else 0.0


@torch.no_grad()
def _teacher_features(teacher: AnchorNet, x: Tensor) -> list[Tensor]:
    """Each frozen stream's last features on ``x``: ``[B, C', H', W']`` per task."""
    out = []
    for stream in teacher.streams:
        h = x
        for block in stream.blocks:
            h = block(h)
        out.append(h)
    return out


def _bn_context(anchor: AnchorNet, other_tree: bool, bn: str):
    """How BatchNorm runs for one tree of the sandwich (see :class:`SupernetConfig` ``bn``)."""
    if not other_tree:
        return contextlib.nullcontext()
    return frozen_batchnorm_statistics(anchor) if bn == "batch" else _batchnorm_eval(anchor)


@contextlib.contextmanager
def _batchnorm_eval(module: nn.Module):
    """BatchNorm layers in eval mode (running statistics; affine parameters still trained), restored after."""
    layers = [(m, m.training) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _ in layers:
            m.eval()
        yield
    finally:
        for m, was in layers:
            m.train(was)


def train_supernet(
    anchor: AnchorNet,
    teacher: AnchorNet,
    tasks: Sequence[Task],
    train: Iterable[Batch],
    loss_scales: Tensor,
    cost_table: CostTable,
    affinity: np.ndarray | None,
    config: SupernetConfig,
    device: torch.device,
    verbose: bool = True,
    *,
    select: Callable[[], float] | None = None,
    solo: AnchorNet | None = None,
    own: OwnTrees | None = None,
    val_batches: Sequence[Batch] | None = None,
    checkpointing: Checkpointing | None = None,
) -> dict[str, Any]:
    """Fine-tune ``anchor`` (streams and heads) on the sandwich of trees, distilling toward ``teacher``.

    ``teacher``: the frozen single-task streams (stage 0), left unchanged. ``loss_scales`` ``[N]``: the
    ``w_i`` every task loss is multiplied by. ``select()`` (lower is better) scores the anchor on
    validation before the first step and every ``eval_every`` steps; the best state is kept, the frozen
    streams included, so a supernet that does not help on validation changes nothing.

    ``solo`` (with ``config.solo``): a copy of the stage-0 streams that continues stage 0 on every batch
    of this stage (:mod:`dymu.solo`; stage 0's optimiser settings, :class:`~dymu.stage_configs.AnchorConfig`'s
    defaults, cosine over this stage's steps); with ``select`` each of its streams keeps its best
    validation state by its task's primary metric on ``val_batches`` (required then), the stage-0 state included.

    ``own`` (with ``config.own_trees``): copies of the stage-0 streams, each trained on its tree alone on every batch
    of this stage (:mod:`dymu.own_trees`; every task's loss times its loss scale; stage 0's optimiser settings, cosine
    over this stage's steps); with ``select`` each keeps its best validation state by ``mean_k w_k L_k`` on
    ``val_batches``, the stage-0 state included.

    Returns ``{"log", "seconds", "selection": {"best_step", "best_score", "initial_score", "history"},
    "resumed_at"}``; ``best_step`` 0 means the stage-0 streams were kept (``initial_score``: theirs); with
    ``solo``, ``selection["solo_steps"]``: the step each solo stream was kept at.
    """
    if rank_world()[1] > 1:
        raise ValueError("the supernet stage runs in one process: under torchrun, train it in one process, "
                         "Controller.save the result and dymu.load it on every rank before fit_edge")
    if config.solo != (solo is not None):
        raise ValueError("config.solo and the solo streams go together: pass solo= exactly when config.solo is set")
    if solo is not None and select is not None and not val_batches:
        raise ValueError("solo streams selected on validation need val_batches")
    if bool(config.own_trees) != (own is not None):
        raise ValueError("config.own_trees and the own trees go together: pass own= exactly when config.own_trees is set")
    if own is not None and select is not None and not val_batches:
        raise ValueError("own trees selected on validation need val_batches")
    names = [t.name for t in tasks]
    seed = 0 if config.seed is None else int(config.seed)
    rng = np.random.default_rng(seed)
    trees = SandwichTrees(cost_table, affinity, config.budget_trees, config.dirichlet_alpha, rng, config.tree_family,
                          config.family_one_stream)
    anchor.to(device).train().requires_grad_(True)
    teacher.to(device).eval().requires_grad_(False)
    spatial = len(anchor.backbone.out_shape) > 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adaptors = FeatureAdaptors(len(tasks), anchor.head_channels, spatial).to(device)
    distil = config.distill == "features" and config.distill_weight > 0
    parameters = list(anchor.parameters()) + (list(adaptors.parameters()) if distil else [])
    optimizer = adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    scales = loss_scales.to(device)
    solo_trainer = None
    if solo is not None:
        solo.to(device).train().requires_grad_(True)
        solo_config = AnchorConfig(steps=config.steps)
        solo_optimizer = solo_config.make_optimizer(solo.parameters())
        solo_trainer = (solo_optimizer, solo_config.make_scheduler(solo_optimizer), _Precision(device, False))
    own_trainer = None
    if own is not None:
        own.to(device).train().requires_grad_(True)
        own_config = AnchorConfig(steps=config.steps)
        own_optimizer = own_config.make_optimizer(own.parameters())
        own_trainer = (own_optimizer, own_config.make_scheduler(own_optimizer))
    tree_weights = [config.anchor_weight] + [1.0] * (1 + config.budget_trees)  # the order of SandwichTrees.draw
    # a divisor, not a product, so that equal weights reproduce the plain mean bit for bit
    divisor = [sum(tree_weights) / w for w in tree_weights]

    def step(info: StepInfo, x: Tensor, targets: dict[str, Tensor]) -> dict[str, float]:
        drawn = trees.draw()
        targets_t = _teacher_features(teacher, x) if distil else None
        optimizer.zero_grad(set_to_none=True)
        task_total = distil_total = 0.0
        for index, (assignment, r) in enumerate(drawn):
            # only the anchor tree's pass moves the running statistics (see the module docstring)
            with _bn_context(anchor, index > 0, config.bn):
                outputs, features = tree_features(anchor, assignment, x)
            weights = torch.as_tensor(r * len(names), dtype=torch.float32, device=device) * scales
            task_loss = x.new_zeros(())
            for k, task in enumerate(tasks):
                loss = task.loss(outputs[task.name], targets[task.name]).float()
                info.check_loss(loss, task.name)
                task_loss = task_loss + weights[k] * loss
            loss = task_loss
            if distil:
                d = sum(distillation_loss(adaptors(k, features[k]), targets_t[k]) for k in range(len(names)))
                loss = loss + config.distill_weight * d
                distil_total += float(d.detach()) / divisor[index]
            (loss / divisor[index]).backward()
            task_total += float(task_loss.detach()) / divisor[index]
        optimizer.step()
        scheduler.step()
        scalars = {"task_loss": task_total, "distill": distil_total}
        if solo_trainer is not None:
            # its own random stream (dropout in a head, say), so the supernet trains as it would without solo streams
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + info.step)
                solo_losses = streams_step(solo, tasks, *solo_trainer, info, x, targets)
            scalars["solo_loss"] = sum(solo_losses.values())
        if own_trainer is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + 500_009 + info.step)
                scalars["own_loss"] = own.train_step(tasks, scales, *own_trainer, info, x, targets)
        return scalars

    parts = {"score": Part((anchor,), ("score",), False, "supernet score")}
    if solo is not None and select is not None:
        parts.update({f"solo {name}": part for name, part in stream_parts(solo, tasks, "solo").items()})
    if own is not None and select is not None:
        parts.update({f"own {i}": Part((net,), ("own", str(i)), False, f"own tree {i}") for i, net in enumerate(own.nets)})
    keep = KeepBest(parts)
    validate = None
    initial: float | None = None
    if select is not None:
        def validate(step: int) -> dict[str, Any]:
            anchor.eval()
            scores: dict[str, Any] = {"score": select()}
            anchor.train()
            if solo is not None:
                scores["solo"] = evaluate_streams(solo, tasks, val_batches, device)
            if own is not None:
                scores["own"] = own.scores(tasks, scales, val_batches, device)
            return scores

        # step 0 is a candidate: the frozen streams stay when fine-tuning never beats them on validation
        first = validate(0)
        initial = first["score"]
        keep.offer(first, 0)
        if verbose and not quiet_from_env():
            sys.stderr.write(f"[supernet] val supernet score {initial:.4f} before training (the stage-0 streams)\n")
    state = {"supernet": anchor, "adaptors": adaptors, "optimizer": optimizer, "scheduler": scheduler}
    if solo_trainer is not None:
        state.update({"solo": solo, "solo_optimizer": solo_trainer[0], "solo_scheduler": solo_trainer[1]})
    if own_trainer is not None:
        state.update({"own_trees": own, "own_optimizer": own_trainer[0], "own_scheduler": own_trainer[1]})
    loop = TrainLoop(
        "supernet", config.steps, device, tasks, state=state, generators={"trees": rng}, frozen={"teacher": teacher},
        validate=validate, keep=keep, eval_every=config.eval_every or max(1, -(-config.steps // 4)),
        log_every=max(1, config.steps // 50), seed=seed, config=config, checkpointing=checkpointing, verbose=verbose,
    )
    result = loop.run(train, step)
    anchor.eval().requires_grad_(False)
    selection = {"best_step": keep.steps["score"], "best_score": keep.scores["score"], "initial_score": initial,
                 "history": result.history}
    if solo is not None:
        solo.eval().requires_grad_(False)
        selection["solo_steps"] = {name: keep.steps.get(f"solo {name}") for name in names}
    if own is not None:
        own.eval().requires_grad_(False)
        selection["own_steps"] = [keep.steps.get(f"own {i}") for i in range(len(own))]
        selection["own_scores"] = [keep.scores.get(f"own {i}") for i in range(len(own))]
    return {"log": result.log, "seconds": result.seconds, "selection": selection, "resumed_at": result.resumed_at}


def frozen_copy(anchor: AnchorNet) -> AnchorNet:
    """A deep copy of ``anchor`` in eval mode with no gradients: the teacher of :func:`train_supernet`."""
    return copy.deepcopy(anchor).eval().requires_grad_(False)
