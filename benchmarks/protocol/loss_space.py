"""Where losses are compared: the hypervolume's reference point and the losses uniformity sees.

One :class:`LossSpace` per run and seed decides both, and its reference point is written beside every
hypervolume (``hv_ref``), so that a number is never read without the box it was measured in. Two
conventions exist, each chosen where it fits, and both computed by the same code (:func:`hv_of`):

* raw test losses (``normalise_hv=False``): the CPU benchmarks. ``multifashion``: reference point (2, 2),
  as Pareto HyperNetworks reports. Others: every task's input-blind loss (:func:`input_blind_losses`).
* test losses divided by the single-task test losses (``normalise_hv=True``,
  :func:`normalised_loss_space`): the paper pipelines; the reference point is ``factor`` on every axis.

>>> space = normalised_loss_space([0.5, 2.0], factor=2.0)
>>> space.reference, space.reference_raw
((2.0, 2.0), (1.0, 4.0))
>>> hv_of(space, [[0.5, 2.0]])       # the single-task losses: 1 x 1 below the reference (2, 2)
1.0
>>> raw = loss_space("multifashion", [0.4, 0.5])
>>> hv_of(raw, [[1.0, 1.5]])         # (2 - 1) x (2 - 1.5)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dymu.metrics import hypervolume
from dymu.tasks import Task

__all__ = [
    "HV_REFERENCE",
    "HV_REFERENCE_FACTOR",
    "INPUT_BLIND_RULE",
    "LossSpace",
    "loss_space",
    "normalised_loss_space",
    "hv_of",
    "input_blind_losses",
]

#: the paper pipelines' reference point, in multiples of every single-task test loss
HV_REFERENCE_FACTOR = 2.0
#: benchmarks with an absolute reference point in raw loss space
HV_REFERENCE: dict[str, tuple[float, ...]] = {"multifashion": (2.0, 2.0)}

INPUT_BLIND_RULE = (
    "reference point = every task's loss of the best predictor that ignores the input (class frequencies, per "
    "pixel for dense targets, under cross-entropy; the mean target under squared error), fitted to and measured "
    "on the training split: a model counts where it beats chance on every task. This is what the reference "
    "(2, 2) of the two 10-class cross-entropies of multifashion is close to (ln 10 = 2.30); a fixed multiple of "
    "the single-task losses (2x) left every controller model outside the box on the six mixed tasks of "
    "fashion_digits (a task with a tiny preference weight loses more than that)"
)


@dataclass(frozen=True)
class LossSpace:
    """How test losses are compared.

    Attributes:
        reference: ``[N]`` the hypervolume reference point, in the units the hypervolume is taken in
            (raw test losses, or multiples of the single-task losses when ``normalise_hv``).
        single_task_loss: ``[N]`` the single-task test losses of the run and seed.
        normalise_uniformity: whether uniformity sees the losses divided by ``single_task_loss`` (so that loss
            kinds of different scales do not decide it) or the raw losses.
        rule: a sentence saying how the reference point was chosen.
        normalise_hv: whether the hypervolume is taken over the losses divided by ``single_task_loss``.
    """

    reference: tuple[float, ...]
    single_task_loss: tuple[float, ...]
    normalise_uniformity: bool
    rule: str
    normalise_hv: bool = False

    def uniformity_losses(self, losses: np.ndarray) -> np.ndarray:
        """``[P, N]`` raw test losses as uniformity sees them."""
        losses = np.asarray(losses, dtype=np.float64)
        return losses / np.asarray(self.single_task_loss) if self.normalise_uniformity else losses

    def hv_losses(self, losses: np.ndarray) -> np.ndarray:
        """``[P, N]`` raw test losses as the hypervolume sees them (the units of :attr:`reference`)."""
        losses = np.asarray(losses, dtype=np.float64)
        return losses / np.asarray(self.single_task_loss) if self.normalise_hv else losses

    @property
    def reference_raw(self) -> tuple[float, ...]:
        """The reference point in raw test-loss units."""
        if not self.normalise_hv:
            return tuple(self.reference)
        return tuple(r * s for r, s in zip(self.reference, self.single_task_loss))

    @property
    def units(self) -> str:
        return "test loss / single-task test loss" if self.normalise_hv else "test loss"

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "reference": list(self.reference),
            "reference_raw": list(self.reference_raw),
            "rule": self.rule,
            "uniformity_losses": "test loss / single-task test loss" if self.normalise_uniformity else "test loss",
            "single_task_loss": list(self.single_task_loss),
        }


def hv_of(space: LossSpace, losses: Sequence[Sequence[float]] | np.ndarray) -> float:
    """The hypervolume of raw test losses ``[P, N]`` in ``space`` (against ``space.reference``)."""
    return hypervolume(space.hv_losses(np.asarray(losses, dtype=np.float64)), space.reference)


def _positive(values: Sequence[float], what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"{what} {out} must be finite and > 0")
    return out


def loss_space(benchmark: str, single_task_loss: Sequence[float], input_blind_loss: Sequence[float] | None = None) -> LossSpace:
    """The raw-loss space of a CPU benchmark (see the module docstring).

    ``multifashion``: (2, 2), raw losses. Elsewhere the reference point is ``input_blind_loss`` (see
    :func:`input_blind_losses`) and uniformity sees the losses divided by the single-task test losses.

    Raises:
        ValueError: a reference point of the wrong length or not finite and positive, a missing
            ``input_blind_loss``, or single-task losses that are not finite and positive where they divide.
    """
    st = tuple(float(v) for v in single_task_loss)
    if benchmark in HV_REFERENCE:
        ref = HV_REFERENCE[benchmark]
        if len(ref) != len(st):
            raise ValueError(f"{benchmark}: the reference point {ref} has {len(ref)} coordinates for {len(st)} tasks")
        return LossSpace(tuple(ref), st, False, f"fixed reference point {ref} in test-loss space (as Pareto HyperNetworks reports)")
    if input_blind_loss is None:
        raise ValueError(f"{benchmark}: its reference point is the input-blind predictors' losses; pass input_blind_loss")
    ref = tuple(float(v) for v in input_blind_loss)
    if len(ref) != len(st):
        raise ValueError(f"{benchmark}: the input-blind losses {ref} must be {len(st)} finite numbers > 0")
    _positive(ref, f"{benchmark}: the input-blind losses")
    _positive(st, f"{benchmark}: the single-task test losses (they normalise uniformity)")
    return LossSpace(ref, st, True, INPUT_BLIND_RULE)


def normalised_loss_space(single_task_loss: Sequence[float], factor: float = HV_REFERENCE_FACTOR) -> LossSpace:
    """The paper pipelines' space: losses divided by the single-task test losses, reference ``factor`` on
    every axis (``factor`` times each single-task loss). [choice] Twice, not 1.1 times: models built for a
    small ``r_i`` may well lose more than 10% on task ``i`` and would then add nothing.

    Raises:
        ValueError: ``factor <= 1`` (the reference must lie beyond the single-task losses), or single-task
            losses that are not finite and positive.
    """
    if not factor > 1.0:
        raise ValueError(f"hv_reference_factor must be > 1 (the reference must lie beyond the single-task losses), got {factor}")
    st = _positive(single_task_loss, "the single-task test losses (the normalised losses divide by them)")
    rule = f"losses divided by the single-task streams' test losses; reference point {factor:g} on every axis"
    return LossSpace(tuple(float(factor) for _ in st), st, True, rule, normalise_hv=True)


@torch.no_grad()
def input_blind_losses(tasks: Sequence[Task], data: Iterable) -> list[float]:
    """Per task, the loss on ``data`` of the best predictor that ignores its input, fitted to ``data``'s targets.

    Cross-entropy tasks (``F.cross_entropy``): the empirical class frequencies as predicted probabilities,
    per position for dense targets ``[B, H, W]``. Squared-error tasks (``F.mse_loss``): the mean target, per
    element. The loss is the task's own loss function applied to that constant prediction.

    Raises:
        ValueError: a task with another loss function, or ``data`` without batches.
    """
    for task in tasks:
        if task.loss not in (F.cross_entropy, F.mse_loss):
            raise ValueError(f"task {task.name!r}: input-blind losses are defined for cross-entropy and squared error, "
                             f"not {getattr(task.loss, '__name__', task.loss)!r}")
    counts: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for _, targets in data:
        for task in tasks:
            y = targets[task.name]
            if task.loss is F.cross_entropy:
                k = int(y.max()) + 1
                onehot = F.one_hot(y.long(), k).movedim(-1, 1).double().sum(0)  # [K, ...]
                old = counts.get(task.name)
                if old is not None and old.shape[0] < k:
                    old = torch.cat([old, old.new_zeros(k - old.shape[0], *old.shape[1:])])
                if old is not None and old.shape[0] > k:
                    onehot = torch.cat([onehot, onehot.new_zeros(old.shape[0] - k, *onehot.shape[1:])])
                counts[task.name] = onehot if old is None else old + onehot
            else:
                sums[task.name] = y.double().sum(0) + sums.get(task.name, 0)
        seen += int(next(iter(targets.values())).shape[0])
    if seen == 0:
        raise ValueError("input_blind_losses: the data yielded no batch")
    predictions = {}
    for task in tasks:
        if task.loss is F.cross_entropy:
            freq = counts[task.name] / counts[task.name].sum(0, keepdim=True)
            predictions[task.name] = freq.clamp_min(1e-12).log().float()
        else:
            predictions[task.name] = (sums[task.name] / seen).float()
    totals = {t.name: 0.0 for t in tasks}
    for _, targets in data:
        batch = int(next(iter(targets.values())).shape[0])
        for task in tasks:
            y = targets[task.name]
            pred = predictions[task.name].unsqueeze(0).expand(batch, *predictions[task.name].shape)
            if task.loss is F.cross_entropy and pred.shape[1] <= int(y.max()):
                raise ValueError(f"task {task.name!r}: a class appears in the second pass that the first did not see")
            totals[task.name] += float(task.loss(pred, y.long() if task.loss is F.cross_entropy else y)) * batch
    return [totals[t.name] / seen for t in tasks]
