"""Declarative task specs: a name, a head factory, a loss, metrics and the direction of the primary metric.

Data everywhere in dymu is an iterable of ``(inputs, {task_name: target})`` batches; a
``torch.utils.data.DataLoader`` over a dataset that yields ``(x, {name: y})`` works as is.

A metric is either a plain function ``fn(pred, target) -> float`` (averaged over samples, weighted by
batch size) or an object with ``reset()``, ``update(pred, target)`` and ``compute() -> float`` for
metrics that do not average over batches (mean IoU, say). :func:`make_metric_state` turns either kind
into an accumulator.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Task",
    "StatefulMetric",
    "MetricState",
    "make_metric_state",
    "check_tasks",
]

Shape = tuple[int, ...]
HeadFactory = Callable[..., nn.Module]
LossFn = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class StatefulMetric(Protocol):
    """A metric that accumulates over batches before it can be computed (e.g. mean IoU)."""

    def reset(self) -> None: ...

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> float: ...


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    Args:
        name: the key of this task's targets in every batch and of its output in every model.
        head: a factory ``head(out_shape) -> nn.Module`` that receives the backbone's output shape
            ``(C, H, W)`` (for a backbone with skip layers also ``skip_shapes=[(C, H, W), ...]``) and
            returns this task's head; the head maps ``[B, C, H, W]`` features to predictions.
        loss: ``loss(pred, target) -> scalar tensor``, the training loss (mean over the batch).
        metrics: metric name to a function ``fn(pred, target) -> float`` or a :class:`StatefulMetric`.
        primary: the name of the metric that summarises the task (Delta_MTL, model selection);
            ``"loss"`` is always available.
        higher_is_better: the direction of the primary metric.
        n_classes: for a classification task (per sample or per pixel), the number of classes: its
            targets are then checked to be ``torch.int64`` labels in ``[0, n_classes)``
            (:mod:`dymu.checks`). None (default): not a class-label task, or not declared.
        ignore_index: a label value the loss skips (e.g. ``-1`` or ``255`` for unlabelled pixels);
            only with ``n_classes``.
        target_dtype: ``"float"`` for real-valued targets (regression, dense maps), checked to be
            floating point and finite; ``"long"`` for class labels (implied by ``n_classes``);
            None: not declared (only batch size and finiteness are checked).

    Example:
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> task = Task("digit", head=lambda shape: nn.Sequential(nn.Flatten(), nn.LazyLinear(10)),
        ...             loss=F.cross_entropy, metrics={"acc": lambda p, y: (p.argmax(1) == y).float().mean().item()},
        ...             primary="acc", higher_is_better=True)
        >>> task.primary
        'acc'
    """

    name: str
    head: HeadFactory
    loss: LossFn
    metrics: Mapping[str, Any] = field(default_factory=dict)
    primary: str = "loss"
    higher_is_better: bool = False
    n_classes: int | None = None
    ignore_index: int | None = None
    target_dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"a task name must be a Python identifier (it keys module dicts), got {self.name!r}")
        if not callable(self.head):
            raise ValueError(f"task {self.name!r}: head must be a factory head(out_shape) -> nn.Module")
        if not callable(self.loss):
            raise ValueError(f"task {self.name!r}: loss must be callable loss(pred, target) -> scalar")
        for metric_name, metric in self.metrics.items():
            if metric_name == "loss":
                raise ValueError(f"task {self.name!r}: the metric name 'loss' is reserved for the task loss")
            if not (callable(metric) or isinstance(metric, StatefulMetric)):
                raise ValueError(f"task {self.name!r}: metric {metric_name!r} is neither a function nor a stateful metric")
        if self.primary != "loss" and self.primary not in self.metrics:
            raise ValueError(
                f"task {self.name!r}: primary metric {self.primary!r} is not among its metrics {sorted(self.metrics)} or 'loss'"
            )
        if self.primary == "loss" and self.higher_is_better:
            raise ValueError(f"task {self.name!r}: the primary metric is the loss, so higher_is_better must be False")
        if self.n_classes is not None and (isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 1):
            raise ValueError(f"task {self.name!r}: n_classes must be a positive int or None, got {self.n_classes!r}")
        if self.ignore_index is not None and self.n_classes is None:
            raise ValueError(f"task {self.name!r}: ignore_index={self.ignore_index} needs n_classes (class labels)")
        if self.target_dtype not in (None, "long", "float"):
            raise ValueError(f"task {self.name!r}: target_dtype must be 'long', 'float' or None, got {self.target_dtype!r}")
        if self.target_dtype == "float" and self.n_classes is not None:
            raise ValueError(f"task {self.name!r}: a task with n_classes has integer labels, not target_dtype='float'")

    def build_head(self, out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        """Call the head factory with the backbone's output shape (and skip shapes if any)."""
        head = self.head(tuple(out_shape), skip_shapes=list(skip_shapes)) if skip_shapes else self.head(tuple(out_shape))
        if not isinstance(head, nn.Module):
            raise ValueError(f"task {self.name!r}: the head factory returned {type(head).__name__}, not an nn.Module")
        return head

    def metric_state(self) -> MetricState:
        return make_metric_state(self)


class MetricState:
    """Accumulates a task's loss and metrics over batches; ``compute()`` returns a flat dict.

    The loss is averaged over samples (weighted by batch size), as are plain metric functions;
    stateful metrics accumulate what they need themselves.
    """

    def __init__(self, task: Task):
        self.task = task
        # Each state gets its own copy, so two evaluations of one task never share accumulators.
        self._stateful = {n: copy.deepcopy(m) for n, m in task.metrics.items() if isinstance(m, StatefulMetric)}
        self._plain = {n: m for n, m in task.metrics.items() if n not in self._stateful}
        self.reset()

    def reset(self) -> None:
        self._count = 0
        self._sums = {name: 0.0 for name in ["loss", *self._plain]}
        for metric in self._stateful.values():
            metric.reset()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        batch = int(target.shape[0]) if target.dim() > 0 else 1
        self._count += batch
        self._sums["loss"] += float(self.task.loss(pred, target)) * batch
        for name, fn in self._plain.items():
            self._sums[name] += float(fn(pred, target)) * batch
        for metric in self._stateful.values():
            metric.update(pred, target)

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            raise ValueError(f"task {self.task.name!r}: no batch was seen, nothing to compute")
        out = {name: total / self._count for name, total in self._sums.items()}
        for name, metric in self._stateful.items():
            out[name] = float(metric.compute())
        return out


def make_metric_state(task: Task) -> MetricState:
    return MetricState(task)


def check_tasks(tasks: Sequence[Task]) -> tuple[Task, ...]:
    """Validate a list of tasks: at least one, all :class:`Task`, unique names."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("at least one task is needed")
    for task in tasks:
        if not isinstance(task, Task):
            raise ValueError(f"expected dymu.Task objects, got {type(task).__name__}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    return tasks
