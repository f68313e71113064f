"""Loaders and task specs of the paper's three benchmarks, read from the layouts users already have.

=================  ===========================================  ==========================================
benchmark          layout under ``root``                        tasks
=================  ===========================================  ==========================================
``cifar100``       ``cifar-100-python/{train,test,meta}``       20 five-way superclass tasks
``nyuv2``          ``{train,val}/{image,label,depth,normal}/``  semseg (13), depth, normal
                   ``N.npy``
``pascal_context`` ``JPEGImages``, ``pascal-context``,          semseg (21), human_parts (7), saliency,
                   ``human_parts``, ``normals_distill``,        normals, edge (5-task); the first three
                   ``sal_distill``, ``ImageSets``               (3-task)
=================  ===========================================  ==========================================

Each module has ``load_<name>(root, split, ...) -> Dataset`` with splits ``train``, ``val`` (a seeded
subset of the training data, for model selection), ``trainval`` and ``test``; ``<name>_tasks(head)``
with ``head(num_outputs)`` returning a task's head factory; and ``CONFIG``, the training settings of a
GPU run. A dataset yields ``(image [3, H, W] float32, {task_name: target})``; a plain
``torch.utils.data.DataLoader`` batches it. Missing or malformed files raise ``ValueError`` naming
the file and the expected layout. :mod:`.fixtures` writes tiny datasets in each format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import cifar100, fixtures, nyuv2, pascal_context, transforms
from .cifar100 import cifar100_tasks, load_cifar100
from .nyuv2 import load_nyuv2, nyuv2_tasks
from .pascal_context import load_pascal_context, pascal_context_tasks

__all__ = [
    "BenchmarkSpec",
    "BENCHMARKS",
    "cifar100",
    "nyuv2",
    "pascal_context",
    "transforms",
    "fixtures",
    "load_cifar100",
    "cifar100_tasks",
    "load_nyuv2",
    "nyuv2_tasks",
    "load_pascal_context",
    "pascal_context_tasks",
]


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: ``load(root, split, **options)``, ``tasks(head)``, its ``config`` and a fixture
    writer ``write_fixture(root, **options)`` (returns the root to pass to ``load``)."""

    name: str
    load: Callable[..., Any]
    tasks: Callable[..., list]
    config: dict[str, Any]
    write_fixture: Callable[..., Any]


def _cifar_fixture(root, **options):
    fixtures.write_tiny_cifar100(root, **options)
    return root


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "cifar100": BenchmarkSpec("cifar100", load_cifar100, cifar100_tasks, cifar100.CONFIG, _cifar_fixture),
    "nyuv2": BenchmarkSpec("nyuv2", load_nyuv2, nyuv2_tasks, nyuv2.CONFIG, fixtures.write_tiny_nyuv2),
    "pascal_context": BenchmarkSpec(
        "pascal_context",
        partial(load_pascal_context, tasks=pascal_context.TASKS_5),
        partial(pascal_context_tasks, tasks=pascal_context.TASKS_5),
        pascal_context.CONFIG,
        fixtures.write_tiny_pascal_context,
    ),
    "pascal_context_3": BenchmarkSpec(
        "pascal_context_3",
        partial(load_pascal_context, tasks=pascal_context.TASKS_3),
        partial(pascal_context_tasks, tasks=pascal_context.TASKS_3),
        {**pascal_context.CONFIG, "benchmark": "pascal_context_3", "tasks": list(pascal_context.TASKS_3)},
        fixtures.write_tiny_pascal_context,
    ),
}
"""The benchmarks by name (``pascal_context`` is the 5-task set, ``pascal_context_3`` the 3-task one)."""
