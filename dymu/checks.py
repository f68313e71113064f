"""Bad data gives clear errors: checks of one batch and of one loss, naming where and what went wrong.

Pure functions, no state: a training or evaluation loop calls :func:`check_batch` on every batch
(before moving it to the device, so the checks cost one pass over a CPU batch and no device sync)
and :func:`check_loss` on every task loss. Both raise :class:`BadDataError`, a ``ValueError`` whose
message names the stage, the step, the task, what was expected and what was found.

What a task declares decides what is checked (see :class:`dymu.Task`): ``n_classes`` makes its
targets class labels (``torch.int64`` in ``[0, n_classes)``, ``ignore_index`` allowed),
``target_dtype="float"`` makes them real values (floating point, finite). Every task's target must
exist, be a tensor and have the inputs' batch size; floating targets must be finite.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from dymu.tasks import Task
    >>> digit = Task("digit", head=lambda shape: torch.nn.Identity(), loss=F.cross_entropy, n_classes=10)
    >>> check_batch(torch.zeros(2, 1, 4, 4), {"digit": torch.tensor([3, 9])}, [digit], stage="anchor", step=1)
    >>> try:
    ...     check_batch(torch.zeros(2, 1, 4, 4), {"digit": torch.tensor([3, 10])}, [digit], stage="anchor", step=7)
    ... except BadDataError as error:
    ...     print(error)
    stage 'anchor', step 7, task 'digit': class labels must lie in [0, 9]; found 10 (1 value out of range, in samples [1])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .tasks import Task

__all__ = ["BadDataError", "check_batch", "check_loss", "check_inputs", "check_target"]

#: how many sample indices a message lists before it says "..."
_SHOWN = 8


class BadDataError(ValueError):
    """A batch or a loss that training cannot use; ``stage``, ``step``, ``task`` and ``batch`` (the
    batch's position in its pass over the data) say where; any but ``stage`` may be None."""

    def __init__(self, message: str, *, stage: str, step: int | None, task: str | None = None, batch: int | None = None):
        where = [f"stage {stage!r}"]
        where += [f"step {step}"] if step is not None else []
        where += [f"task {task!r}"] if task is not None else []
        where += [f"batch {batch}"] if batch is not None else []
        super().__init__(f"{', '.join(where)}: {message}")
        self.stage, self.step, self.task, self.batch = stage, step, task, batch


def _samples(mask: Tensor) -> str:
    """Indices (dim 0) of the samples where ``mask [B, ...]`` is set: ``[0, 3, 5]`` or ``[0, 3, ... (12 samples)]``."""
    per_sample = mask.reshape(mask.shape[0], -1).any(dim=1) if mask.dim() > 1 else mask
    idx = per_sample.nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in idx[:_SHOWN])
    return f"[{shown}]" if len(idx) <= _SHOWN else f"[{shown}, ... ({len(idx)} samples)]"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _nonfinite(t: Tensor, what: str) -> str | None:
    if not t.is_floating_point() and not t.is_complex():
        return None
    bad = ~torch.isfinite(t)
    n = int(bad.sum())
    if n == 0:
        return None
    kinds = []
    if bool(torch.isnan(t).any()):
        kinds.append("NaN")
    if bool(torch.isinf(t).any()):
        kinds.append("inf")
    where = f"in samples {_samples(bad)}" if t.dim() > 0 else "(a scalar)"
    return f"{what} must be finite; found {_plural(n, 'non-finite value')} ({'/'.join(kinds)}) {where} of shape {list(t.shape)}"


def check_inputs(x: Any, *, stage: str, step: int | None, batch: int | None = None) -> int:
    """Check an input batch ``x [B, ...]``: a tensor with a batch dimension, finite if floating; returns ``B``."""
    if not isinstance(x, Tensor):
        raise BadDataError(f"inputs must be a tensor [B, ...]; found {type(x).__name__}", stage=stage, step=step, batch=batch)
    if x.dim() == 0:
        raise BadDataError("inputs must have a batch dimension [B, ...]; found a 0-d tensor", stage=stage, step=step, batch=batch)
    problem = _nonfinite(x, "inputs")
    if problem:
        raise BadDataError(problem, stage=stage, step=step, batch=batch)
    return int(x.shape[0])


def _expected_kind(task: Task) -> str | None:
    if getattr(task, "n_classes", None) is not None:
        return "class"
    return "float" if getattr(task, "target_dtype", None) == "float" else None


def check_target(target: Any, task: Task, batch: int, *, stage: str, step: int | None, index: int | None = None) -> None:
    """Check one task's target for a batch of ``batch`` samples against what ``task`` declares
    (``index``: the batch's position in its pass, for the message)."""

    def fail(message: str) -> None:
        raise BadDataError(message, stage=stage, step=step, task=task.name, batch=index)

    if not isinstance(target, Tensor):
        fail(f"the target must be a tensor [B, ...]; found {type(target).__name__}")
    if target.dim() == 0 or target.shape[0] != batch:
        fail(f"expected a target with batch size {batch} (the inputs'); found shape {list(target.shape)}")
    kind = _expected_kind(task)
    if kind == "class":
        n_classes, ignore = task.n_classes, task.ignore_index
        if target.dtype != torch.int64:
            what = "float values" if target.is_floating_point() else f"{target.dtype}"
            fail(f"expected class labels as torch.int64 (a {n_classes}-class task); found {what} ({target.dtype})")
        bad = (target < 0) | (target >= n_classes)
        if ignore is not None:
            bad &= target != ignore
        n_bad = int(bad.sum())
        if n_bad:
            offending = int(target[bad].flatten()[0])
            allowed = f"[0, {n_classes - 1}]" + (f" or the ignore index {ignore}" if ignore is not None else "")
            fail(f"class labels must lie in {allowed}; found {offending} "
                 f"({_plural(n_bad, 'value')} out of range, in samples {_samples(bad)})")
        return
    if kind == "float" and not target.is_floating_point():
        fail(f"expected a floating-point target (a regression task); found {target.dtype}")
    problem = _nonfinite(target, "the target")
    if problem:
        fail(problem)


def check_batch(x: Any, targets: Any, tasks: Sequence[Task], *, stage: str, step: int | None, batch: int | None = None) -> None:
    """Check one batch ``(x [B, ...], {task: target [B, ...]})`` for every task of ``tasks``; ``step``
    and ``batch`` (the batch's position in its pass over the data) name it in messages.

    Raises:
        BadDataError: non-finite inputs (how many values, which samples); a missing target; a target
            that is not a tensor, has another batch size than the inputs, has the wrong dtype (float
            labels for a classification task, integers for a regression task), holds class labels
            outside ``[0, n_classes)`` (ignore index excepted; the message names the range and an
            offending value) or non-finite values.
    """
    size = check_inputs(x, stage=stage, step=step, batch=batch)
    if not isinstance(targets, Mapping):
        raise BadDataError(f"targets must be a mapping {{task: tensor}}; found {type(targets).__name__}",
                           stage=stage, step=step, batch=batch)
    for task in tasks:
        if task.name not in targets:
            raise BadDataError(
                f"the batch has no target for this task; expected one for each of {[t.name for t in tasks]}, "
                f"found targets for {sorted(targets)}",
                stage=stage, step=step, task=task.name, batch=batch,
            )
        check_target(targets[task.name], task, size, stage=stage, step=step, index=batch)


def check_loss(loss: Tensor | float, *, stage: str, step: int, task: str, batch_index: int) -> None:
    """Raise :class:`BadDataError` if ``loss`` (a scalar, or any tensor) is not finite.

    ``batch_index`` names the batch (e.g. its position in the epoch, or the chunk of a split batch)
    so that the offending data can be found again.
    """
    if isinstance(loss, Tensor):
        finite = bool(torch.isfinite(loss.detach()).all())
        shown = f"{float(loss.detach().flatten()[0]) if loss.numel() == 1 else loss.detach().flatten().tolist()[:4]}"
    else:
        finite = math.isfinite(float(loss))
        shown = f"{float(loss)}"
    if not finite:
        raise BadDataError(
            f"the loss is {shown}, expected a finite value; check this batch's inputs "
            "and targets (dymu.checks.check_batch), the loss function and the learning rate",
            stage=stage, step=step, task=task, batch=batch_index,
        )
