"""Saving and loading controllers.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (it loads with
``weights_only=True``, so loading never runs code from the file): the format tag, package versions and
:meth:`dymu.Controller.state_dict`, which owns what a controller is made of. Saves go to a temporary file in the same folder that replaces the target only once
complete, so a failed save never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backbones.base import BlockBackbone
from .tasks import Task

if TYPE_CHECKING:
    from .controller import Controller

__all__ = ["save_controller", "load_controller", "read_checkpoint", "CheckpointError", "atomic_torch_save", "versions"]

FORMAT = "dymu.controller/2"


class CheckpointError(ValueError):
    """A file is not a readable dymu checkpoint (truncated, corrupt, foreign or of another format)."""


def versions() -> dict[str, str]:
    """Versions of what produced a result: Python, torch, numpy, dymu."""
    from . import __version__

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__), "dymu": __version__}


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def save_controller(ctrl: Controller, path: str | Path) -> Path:
    """Write ``ctrl.state_dict()`` with the format tag and versions to ``path``, atomically."""
    return atomic_torch_save({"format": FORMAT, "versions": versions(), **ctrl.state_dict()}, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The contents of a controller checkpoint (:meth:`dymu.Controller.state_dict` plus the format tag and
    versions), checked but not rebuilt into modules: what needs no task or backbone code reads this.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated, corrupt or foreign file, or one that lacks a controller's parts.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign objects
        raise CheckpointError(f"{path} is not a readable dymu checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = " (written by an older dymu: the weight hypernet now sees the tree; retrain the controller)" if found == "dymu.controller/1" else ""
        raise CheckpointError(f"{path} is not a dymu controller checkpoint (format {found!r}, expected {FORMAT!r}){hint}")
    missing = [k for k in ("tasks", "anchor", "edge", "weight", "cost_table", "hyper_config") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: the checkpoint is incomplete")
    return payload


def load_controller(
    path: str | Path,
    *,
    tasks: Sequence[Task] | str | None = None,
    backbone: BlockBackbone | None = None,
    map_location: str | torch.device = "cpu",
) -> Controller:
    """Load a controller saved by :meth:`Controller.save`.

    Tasks and backbone are rebuilt by their registered names; for custom ones pass ``tasks`` (their
    names must match the checkpoint's) and ``backbone``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated, corrupt or foreign file, or weights that do not fit.
        ValueError: tasks or backbone needed but not given, or not matching the checkpoint.
    """
    from .controller import Controller

    path = Path(path)
    payload = read_checkpoint(path, map_location)
    try:
        ctrl = Controller.from_state(payload, tasks=tasks, backbone=backbone)
    except ValueError as error:
        if "do not fit" in str(error):
            raise CheckpointError(f"{path}: {error}") from error
        raise ValueError(f"{path}: {error}") from error
    return ctrl.to(map_location)
