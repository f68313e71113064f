"""Named backbones and task sets, so that checkpoints can rebuild them by name.

A task set is found by name in this order: the registry (:func:`register_task_set`), dymu's own sets
(imported on first use), then the ``dymu.task_sets`` entry points of the installed distributions, so that a
package registers its sets without dymu naming it::

    [project.entry-points."dymu.task_sets"]
    cifar100 = "benchmarks.paper_tasks:cifar100_paper_tasks"

>>> register_task_set("two_identity_tasks", lambda: [Task(n, lambda shape: None, print) for n in "ab"])  # doctest: +ELLIPSIS
<function <lambda> at ...>
>>> [t.name for t in resolve_tasks("two_identity_tasks")]
['a', 'b']
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .tasks import Task

__all__ = ["register_backbone", "register_task_set", "build_backbone", "resolve_tasks", "BACKBONES", "TASK_SETS",
           "ENTRY_POINT_GROUP"]

BACKBONES: dict[str, Callable[..., Any]] = {}
TASK_SETS: dict[str, Callable[[], list[Task]]] = {}

#: dymu's own task sets, imported on first use: name -> (module, factory)
_BUILTIN_TASK_SETS = {
    "multifashion": ("dymu.data.tasks", "multifashion_tasks"),
    "fashion_digits": ("dymu.data.tasks", "fashion_digits_tasks"),
}
#: the entry-point group other packages register task sets in (name -> "module:factory")
ENTRY_POINT_GROUP = "dymu.task_sets"


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


def _entry_point_task_sets() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed distributions' ``dymu.task_sets`` entry points by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _find_task_set(name: str) -> Callable[[], list[Task]] | None:
    """The factory of task set ``name``: registered, built in, or from an entry point (then registered)."""
    if name in TASK_SETS:
        return TASK_SETS[name]
    if name in _BUILTIN_TASK_SETS:
        module, factory = _BUILTIN_TASK_SETS[name]
        return register_task_set(name, getattr(importlib.import_module(module), factory))
    entry = _entry_point_task_sets().get(name)
    if entry is not None:
        return register_task_set(name, entry.load())
    return None


def resolve_tasks(tasks: Sequence[Task] | str) -> list[Task]:
    """A list of tasks, or the name of a task set (see the module docstring for where names are looked up).

    Raises:
        ValueError: an unknown task-set name (the message lists the known ones).
    """
    if not isinstance(tasks, str):
        return list(tasks)
    factory = _find_task_set(tasks)
    if factory is None:
        known = set(TASK_SETS) | set(_BUILTIN_TASK_SETS) | set(_entry_point_task_sets())
        raise ValueError(f"unknown task set {tasks!r}; known: {sorted(known)}")
    return list(factory())


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
