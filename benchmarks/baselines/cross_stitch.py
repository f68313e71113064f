"""Cross-stitch networks (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016), trained once.

N task streams of one backbone run side by side; after every block a cross-stitch unit replaces each
stream's output with a learned linear mix of all streams' outputs,

    y_j = sum_i alpha[l, j, i] x_i        (x_i: stream i's output of block l, [B, C, H, W]),

so the network learns how much to share at every depth instead of fixing it as a tree does. One head per
task reads its stream's last (stitched) output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dymu.backbones.base import BlockBackbone
from dymu.metrics import count_flops, count_params
from dymu.tasks import Task, check_tasks

from ..methods import StepBudget
from .base import SingleModelBaseline
from .common import BackboneFactory, fresh_backbone

__all__ = ["CrossStitch", "CrossStitchNetwork", "cross_stitch_network", "stitch_init"]


def stitch_init(n_layers: int, n_tasks: int, diagonal: float = 0.9) -> Tensor:
    """The paper's initialisation of the cross-stitch units: ``[L, N, N]`` with ``diagonal`` on the diagonal
    and ``(1 - diagonal) / (N - 1)`` elsewhere (each row sums to 1: a convex mix that keeps the features'
    scale). ``diagonal=1`` gives independent streams.

    Raises:
        ValueError: fewer than two tasks, or ``diagonal`` outside ``[0, 1]``.
    """
    if n_tasks < 2:
        raise ValueError(f"cross-stitch units mix two or more task streams, got {n_tasks} task(s)")
    if not 0.0 <= diagonal <= 1.0:
        raise ValueError(f"the diagonal of the cross-stitch units must be in [0, 1], got {diagonal}")
    alpha = torch.full((n_tasks, n_tasks), (1.0 - diagonal) / (n_tasks - 1))
    alpha.fill_diagonal_(diagonal)
    return alpha.expand(n_layers, n_tasks, n_tasks).clone()


class CrossStitchNetwork(nn.Module):
    """N streams of one backbone with a cross-stitch unit after every block, and a head per task.

    Args:
        streams: N backbones of equal block shapes (stream ``i`` is task ``i``'s).
        heads: ``{task: head}`` in task order; head ``i`` reads stream ``i``'s last stitched output (and its
            stitched outputs at the backbone's skip layers).
        alpha: ``[L, N, N]`` the units' initial values (:func:`stitch_init`); a learnable parameter.

    ``forward(x [B, C, H, W]) -> {task: prediction}``: block ``l`` of every stream gives ``x_i`` ``[B, ...]``,
    stacked ``[N, B, ...]`` and mixed as ``y_j = sum_i alpha[l, j, i] x_i`` (one matrix product, so
    ``FlopCounterMode`` counts the units: ``2 N^2`` FLOPs per feature element and sample and layer, on top
    of the N streams).
    """

    def __init__(self, streams: Sequence[BlockBackbone], heads: Mapping[str, nn.Module], alpha: Tensor):
        super().__init__()
        n_layers = streams[0].n_blocks
        if len(heads) != len(streams):
            raise ValueError(f"got {len(streams)} streams for {len(heads)} heads")
        if tuple(alpha.shape) != (n_layers, len(streams), len(streams)):
            raise ValueError(f"alpha must be [L, N, N] = {[n_layers, len(streams), len(streams)]}, got {list(alpha.shape)}")
        self.streams = nn.ModuleList(streams)
        self.heads = nn.ModuleDict(dict(heads))
        self.alpha = nn.Parameter(alpha.detach().clone().float())
        self.skip_layers = tuple(streams[0].skip_layers)
        self.input_shape = (streams[0].in_channels, *streams[0].input_size)
        self.info: dict[str, Any] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        hs: Tensor | None = None  # [N, B, ...] the stitched outputs of the layer below
        skips: list[Tensor] = []
        for layer in range(self.alpha.shape[0]):
            ys = [stream.blocks[layer](x if hs is None else hs[i]) for i, stream in enumerate(self.streams)]
            hs = torch.einsum("ji,i...->j...", self.alpha[layer], torch.stack(ys))
            if layer in self.skip_layers:
                skips.append(hs)
        return {name: head(hs[k], *(s[k] for s in skips)) for k, (name, head) in enumerate(self.heads.items())}

    def flops(self, x: Tensor | None = None) -> int:
        """FLOPs of one forward on ``x`` (default: one image of the built input shape): every stream, unit and head."""
        if x is None:
            x = torch.zeros(1, *self.input_shape, device=self.alpha.device)
        return count_flops(self, x)

    def n_params(self) -> int:
        return count_params(self)


def cross_stitch_network(
    backbone_factory: BackboneFactory, tasks: Sequence[Task], seed: int = 0, diagonal: float = 0.9
) -> CrossStitchNetwork:
    """A freshly initialised cross-stitch network, in train mode: one backbone per task (each its own random
    weights, as the nodes of :func:`~benchmarks.baselines.common.tree_network`), heads from the backbone's
    output shape, units from :func:`stitch_init`. All draws come from ``torch.manual_seed(seed)`` in a forked
    RNG (the global RNG is left alone).

    Raises:
        ValueError: fewer than two tasks.
    """
    tasks = check_tasks(tasks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        streams = [fresh_backbone(backbone_factory) for _ in tasks]
        template = streams[0]
        alpha = stitch_init(template.n_blocks, len(tasks), diagonal)
        heads = {t.name: t.build_head(template.out_shape, template.skip_shapes) for t in tasks}
    model = CrossStitchNetwork(streams, heads, alpha)
    # one forward gives lazy layers in heads their shapes before any parameter is enumerated
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *model.input_shape))
    return model.train()


class CrossStitch(SingleModelBaseline):
    """A cross-stitch network trained once on ``sum_i w_i L_i / N`` (the equal preference); one model serves
    every preference.

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone` (the controller's family).
        tasks: the N >= 2 tasks.
        steps: the step budget; the network trains for ``steps.total`` steps, as many as the controller.
        loss_scales: ``w_i`` ``[N]`` (default: ``1 / L_i`` of the untrained network on validation batches).
        seed: initialisation seed.
        diagonal: initial ``alpha[l, i, i]`` (the paper's 0.9; off-diagonal ``0.1 / (N - 1)``).
        alpha_lr_mult: the units' learning rate over the streams'. [choice] The paper raises the units' SGD
            learning rate by orders of magnitude because their gradients are small next to their values;
            Adam's step does not depend on the gradient's scale, so a 10x rate (default) already lets the
            units move by tenths within the quick budgets, while 100x would let them oscillate. The units
            have no weight decay (it would pull the mix toward zero, shrinking the features).
        lr, weight_decay, eval_every, val_batches, scale_batches, name: as for
            :class:`~benchmarks.baselines.base.Baseline`.

    [choice] The streams start from fresh initialisations (the paper starts them from single-task networks):
    every baseline here trains from scratch within its step budget.

    Attributes:
        model: the trained :class:`CrossStitchNetwork`; its FLOPs are the N streams', the units' and the heads'.
        result: :func:`~benchmarks.baselines.common.train_static`'s result.
    """

    name = "cross_stitch"
    model: CrossStitchNetwork | None

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        loss_scales: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        *,
        diagonal: float = 0.9,
        alpha_lr_mult: float = 10.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        eval_every: int | None = None,
        val_batches: int | None = None,
        scale_batches: int = 10,
        name: str = "cross_stitch",
    ):
        super().__init__(backbone_factory, tasks, steps, loss_scales, seed, lr=lr, weight_decay=weight_decay,
                         eval_every=eval_every, val_batches=val_batches, scale_batches=scale_batches, name=name)
        stitch_init(1, len(self.tasks), diagonal)  # checks the task count and the diagonal before any training
        if not alpha_lr_mult > 0:
            raise ValueError(f"alpha_lr_mult must be > 0, got {alpha_lr_mult}")
        self.diagonal, self.alpha_lr_mult = float(diagonal), float(alpha_lr_mult)

    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        model = cross_stitch_network(self.backbone_factory, self.tasks, self.seed, self.diagonal).to(device)
        val_batches = self._validation_batches(val, device, lambda: model)
        rest = [p for name, p in model.named_parameters() if name != "alpha"]
        groups = [{"params": rest}, {"params": [model.alpha], "lr": self.lr * self.alpha_lr_mult, "weight_decay": 0.0}]
        self.result = self._train_static(
            model, train, val_batches, self.equal_preference_weights(), steps=self.steps.total, device=device,
            desc=self.name, verbose=verbose, param_groups=groups,
        )
        model.info.update({"method": self.name, "alpha": model.alpha.detach().cpu().tolist()})
        self.model = model
