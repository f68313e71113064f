"""The paper's task sets and anchors by benchmark name, registered with dymu so that checkpoints rebuild them.

Importing this module registers the four task sets (:func:`register_paper_task_sets`); a process that has
not imported it finds them through the ``dymu.task_sets`` entry points of this package (``pyproject.toml``),
which :func:`dymu.registry.resolve_tasks` reads: dymu itself never names ``benchmarks``.

>>> sorted(PAPER_TASK_SETS) == sorted(PAPER_BACKBONES)
True
>>> len(cifar100_paper_tasks()), [t.name for t in pascal_context_3_paper_tasks()]
(20, ['semseg', 'human_parts', 'saliency'])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import dymu
from dymu.backbones import deeplab_head, deeplab_mobilenet_v2, deeplab_resnet34, resnet9, resnet9_head

from .datasets.cifar100 import cifar100_tasks
from .datasets.nyuv2 import nyuv2_tasks
from .datasets.pascal_context import TASKS_3, TASKS_5, pascal_context_tasks

__all__ = [
    "PAPER_TASK_SETS",
    "PAPER_BACKBONES",
    "cifar100_paper_tasks",
    "nyuv2_paper_tasks",
    "pascal_context_paper_tasks",
    "pascal_context_3_paper_tasks",
    "register_paper_task_sets",
]


def _pascal_head(num_outputs: int) -> Callable[..., nn.Module]:
    # BMTAS's PASCAL-Context decoder: depthwise separable 3x3 convs, 128 channels.
    return deeplab_head(num_outputs, channels=128, separable=True)


def cifar100_paper_tasks() -> list[dymu.Task]:
    """The 20 CIFAR-100 superclass tasks with the ResNet-9 heads (``resnet9_head(5)``)."""
    return cifar100_tasks(resnet9_head)


def nyuv2_paper_tasks() -> list[dymu.Task]:
    """NYUv2 semseg/depth/normal with DeepLabv3+ decoders (``deeplab_head(k)``)."""
    return nyuv2_tasks(deeplab_head)


def pascal_context_paper_tasks() -> list[dymu.Task]:
    """The 5 PASCAL-Context tasks with BMTAS's separable 128-channel decoders."""
    return pascal_context_tasks(_pascal_head, TASKS_5)


def pascal_context_3_paper_tasks() -> list[dymu.Task]:
    """The 3-task PASCAL-Context set (semseg, human_parts, saliency), decoders as the 5-task set."""
    return pascal_context_tasks(_pascal_head, TASKS_3)


#: benchmark name -> its task set's factory (also the names of the ``dymu.task_sets`` entry points)
PAPER_TASK_SETS: dict[str, Callable[[], list[dymu.Task]]] = {
    "cifar100": cifar100_paper_tasks,
    "nyuv2": nyuv2_paper_tasks,
    "pascal_context": pascal_context_paper_tasks,
    "pascal_context_3": pascal_context_3_paper_tasks,
}

#: benchmark name -> the backbone factory its anchor is built from (``width_mult``, ``input_size``)
PAPER_BACKBONES: dict[str, Callable[..., dymu.backbones.BlockBackbone]] = {
    "cifar100": resnet9,
    "nyuv2": deeplab_resnet34,
    "pascal_context": deeplab_mobilenet_v2,
    "pascal_context_3": deeplab_mobilenet_v2,
}


def register_paper_task_sets() -> None:
    """Register every paper task set with :func:`dymu.register_task_set` (idempotent)."""
    for name, factory in PAPER_TASK_SETS.items():
        dymu.register_task_set(name, factory)


# Checkpoints store the task-set name: whoever imports this module can dymu.load them.
register_paper_task_sets()
