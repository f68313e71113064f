"""Named backbones and task sets, so that checkpoints can rebuild them by name."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .tasks import Task

__all__ = ["register_backbone", "register_task_set", "build_backbone", "resolve_tasks", "BACKBONES", "TASK_SETS"]

BACKBONES: dict[str, Callable[..., Any]] = {}
TASK_SETS: dict[str, Callable[[], list[Task]]] = {}

#: built-in task sets, imported on first use: name -> (module, factory)
_BUILTIN_TASK_SETS = {
    "multifashion": ("dymu.data.tasks", "multifashion_tasks"),
    "fashion_digits": ("dymu.data.tasks", "fashion_digits_tasks"),
    "cifar100": ("benchmarks.paper", "cifar100_paper_tasks"),
    "nyuv2": ("benchmarks.paper", "nyuv2_paper_tasks"),
    "pascal_context": ("benchmarks.paper", "pascal_context_paper_tasks"),
    "pascal_context_3": ("benchmarks.paper", "pascal_context_3_paper_tasks"),
}


def register_backbone(name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``factory`` under ``name``; the backbones it returns remember how to rebuild themselves
    (``backbone.recipe = {"name": ..., "kwargs": ...}``), which checkpoints store."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        backbone = factory(*args, **kwargs)
        backbone.recipe = {"name": name, "kwargs": {k: _plain(v) for k, v in bound.arguments.items()}}
        return backbone

    BACKBONES[name] = build
    return build


def register_task_set(name: str, factory: Callable[[], list[Task]]) -> Callable[[], list[Task]]:
    TASK_SETS[name] = factory
    return factory


def build_backbone(recipe: dict[str, Any]) -> Any:
    """Rebuild a backbone from its recipe."""
    import dymu.backbones  # noqa: F401  (registers the built-in factories)

    name = recipe.get("name")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name](**recipe.get("kwargs", {}))


def resolve_tasks(tasks: Sequence[Task] | str) -> list[Task]:
    """A list of tasks, or the name of a registered task set."""
    if isinstance(tasks, str):
        if tasks not in TASK_SETS and tasks in _BUILTIN_TASK_SETS:
            module, factory = _BUILTIN_TASK_SETS[tasks]
            TASK_SETS[tasks] = getattr(importlib.import_module(module), factory)
        if tasks not in TASK_SETS:
            raise ValueError(f"unknown task set {tasks!r}; known: {sorted(set(TASK_SETS) | set(_BUILTIN_TASK_SETS))}")
        return list(TASK_SETS[tasks]())
    return list(tasks)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
