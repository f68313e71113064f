"""A hard-shared trunk distilled from the single-task streams (Li & Bilen, "Knowledge Distillation for
Multi-task Learning", ECCV Workshops 2020), trained once.

The trunk is hard sharing (one backbone, one head per task). During training only, task ``i`` gets a small
adaptor ``A_i`` (a 1x1 convolution, or a linear map for flat features, starting as the identity) that maps the
trunk's last feature ``f`` (the heads' input) toward the frozen single-task stream ``i``'s last feature
``t_i``; the trunk is trained on

    sum_i w_i L_i  +  lambda * sum_i mean_positions || n(A_i(f)) - n(t_i) ||^2,

with ``n`` the L2 normalisation over channels at every position (as in the paper). The adaptors let the one
shared feature agree with every teacher up to a task-specific linear map instead of forcing it to equal all
of them at once; they are dropped afterwards, so the served model is a plain hard-sharing network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymu.anchor import AnchorNet
from dymu.derived import DerivedModel
from dymu.tasks import Task

from ..methods import StepBudget
from .base import SingleModelBaseline
from .common import BackboneFactory, fresh_backbone, node_key, shared_network

__all__ = ["DistilledTrunk", "identity_adaptor", "distillation_loss"]


def identity_adaptor(shape: Sequence[int]) -> nn.Module:
    """A channel map ``C -> C`` for features of per-sample ``shape`` (``(C,)``, ``(C, L)`` or ``(C, H, W)``):
    a linear layer or a 1x1 convolution, initialised to the identity (weight ``I``, bias 0), so that the
    distillation starts by comparing the trunk's own feature with the teacher's.

    Raises:
        ValueError: a feature of more than two spatial dimensions.
    """
    channels = int(shape[0])
    kinds = {1: nn.Linear, 2: nn.Conv1d, 3: nn.Conv2d}
    if len(shape) not in kinds:
        raise ValueError(f"an adaptor needs features of shape (C,), (C, L) or (C, H, W), got {tuple(shape)}")
    with torch.random.fork_rng(devices=[]):  # the default init's draws are overwritten: leave the global RNG alone
        layer = kinds[len(shape)](channels, channels, *(() if len(shape) == 1 else (1,)))
    with torch.no_grad():
        layer.weight.copy_(torch.eye(channels).view_as(layer.weight))
        layer.bias.zero_()
    return layer


def distillation_loss(adaptors: Sequence[nn.Module], feature: Tensor, teacher_features: Sequence[Tensor]) -> Tensor:
    """``sum_i mean_{b, positions} || n(A_i(f)) - n(t_i) ||^2`` (a scalar).

    Args:
        adaptors: ``A_i``, one per task.
        feature: ``f`` the trunk's feature ``[B, C, ...]``.
        teacher_features: ``t_i`` ``[B, C, ...]`` per task (no gradient needed).

    ``n`` normalises over channels (dim 1) at every position, so each term lies in ``[0, 4]`` per position
    whatever the features' scale: the trunk matches the teachers' feature directions, not their magnitudes.
    """
    total = feature.new_zeros((), dtype=torch.float32)
    for adaptor, target in zip(adaptors, teacher_features, strict=True):
        gap = F.normalize(adaptor(feature).float(), dim=1) - F.normalize(target.float(), dim=1)
        total = total + gap.pow(2).sum(dim=1).mean()
    return total


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (BatchNorm on running statistics, which then stay put), its mode restored after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class DistilledTrunk(SingleModelBaseline):
    """One hard-sharing trunk + N heads trained on the equal preference with feature distillation from the
    frozen single-task streams; one model serves every preference.

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone` (the teachers' family).
        tasks: the N tasks.
        steps: the step budget; the trunk trains for ``steps.total - steps.anchor`` steps: equal training
            images, since the teachers' stage-0 steps plus the trunk's add up to the controller's total.
        teacher: an :class:`~dymu.anchor.AnchorNet` whose stream ``i`` (task ``i``'s single-task network, in
            task order) is the teacher of task ``i``. It is only read: run in eval mode without gradients,
            its mode restored afterwards. For backbones with skip layers only the last block's output is
            distilled.
        loss_scales: ``w_i`` ``[N]`` (default: ``1 / L_i`` of the untrained trunk on validation batches);
            the task loss is ``sum_i w_i L_i / N`` (the equal preference, as the static tree).
        seed: initialisation seed of the trunk and its heads.
        distill_weight: ``lambda`` (default 1.0: the normalised term per task is at most 4, of the order of
            the scaled task losses, which start near 1 with the controller's scales).
        lr, weight_decay, eval_every, val_batches, scale_batches, name: as for
            :class:`~benchmarks.baselines.base.Baseline`; the adaptors train with the trunk (same Adam group).
            Model selection: the lowest scalarised validation task loss (the distillation term is not part of it).

    Attributes:
        model: the trained :class:`~dymu.DerivedModel` (the adaptors are not part of it: its FLOPs and
            parameters are those of hard sharing).
        adaptors: ``A_i``, kept after training for inspection.
        result: :func:`~benchmarks.baselines.common.train_static`'s result; ``"auxiliary_loss"`` holds the
            per-step ``lambda *`` distillation term.

    ``train_seconds`` is the trunk's training only (the teachers' stage 0 is the controller's, reported with
    ``single_task``).
    """

    name = "distilled_trunk"
    model: DerivedModel | None

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        teacher: AnchorNet,
        loss_scales: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        *,
        distill_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        eval_every: int | None = None,
        val_batches: int | None = None,
        scale_batches: int = 10,
        name: str = "distilled_trunk",
    ):
        super().__init__(backbone_factory, tasks, steps, loss_scales, seed, lr=lr, weight_decay=weight_decay,
                         eval_every=eval_every, val_batches=val_batches, scale_batches=scale_batches, name=name)
        if not isinstance(teacher, AnchorNet):
            raise ValueError(f"the teacher must be a dymu.anchor.AnchorNet, got {type(teacher).__name__}")
        if list(teacher.task_names) != self.task_names:
            raise ValueError(f"the teacher has streams for tasks {list(teacher.task_names)} but the tasks are "
                             f"{self.task_names}: one teacher stream per task, in the same order")
        shape = tuple(fresh_backbone(backbone_factory, seed).out_shape)
        for name_, stream in zip(self.task_names, teacher.streams):
            if tuple(stream.out_shape) != shape:
                raise ValueError(f"task {name_!r}: the teacher's last feature has shape {tuple(stream.out_shape)}, "
                                 f"the trunk's {shape}; distillation needs the same backbone family")
        if not distill_weight >= 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        self.train_steps = steps.total - steps.anchor
        if self.train_steps < 1:
            raise ValueError(f"{name} trains for steps.total - steps.anchor steps, which is {self.train_steps}")
        self.teacher = teacher
        self.feature_shape = shape
        self.distill_weight = float(distill_weight)
        self.adaptors: nn.ModuleList | None = None

    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        model = shared_network(self.backbone_factory, self.tasks, self.seed).to(device)
        val_batches = self._validation_batches(val, device, lambda: model)
        adaptors = nn.ModuleList(identity_adaptor(self.feature_shape) for _ in self.tasks)
        teacher = self.teacher
        teacher_device = next(teacher.parameters()).device
        # the heads' input is the last node's output: a hook reads it from the forward the task loss uses
        captured: dict[str, Tensor] = {}
        last = model.nodes[node_key(model.tree.n_layers - 1, 0)]
        handle = last.register_forward_hook(lambda module, inputs, output: captured.__setitem__("feature", output))

        def distill(x: Tensor, outputs) -> Tensor:
            with torch.no_grad():
                x_teacher = x.to(teacher_device)
                targets = [stream(x_teacher).to(x.device) for stream in teacher.streams]
            return self.distill_weight * distillation_loss(adaptors, captured.pop("feature"), targets)

        try:
            with _eval_mode(teacher):
                self.result = self._train_static(
                    model, train, val_batches, self.equal_preference_weights(), steps=self.train_steps, device=device,
                    desc=self.name, verbose=verbose, auxiliary=distill, auxiliary_modules=adaptors,
                )
        finally:
            handle.remove()
        model.info.update({"method": self.name, "distill_weight": self.distill_weight})
        # the teachers and adaptors are training-only: stored_modules() is the trunk alone
        self.model, self.adaptors = model, adaptors.eval()
