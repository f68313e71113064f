"""Saving and loading controllers.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (it loads with
``weights_only=True``, so loading never runs code from the file): the format tag, package versions,
task names and how to rebuild the tasks and the backbone (registered names), the anchor's and both
hypernets' weights, the task affinity, the loss scales, the cost table, the calibration inputs and the
training history. Saves go to a temporary file in the same folder that replaces the target only once
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

from affinity.rsa import AffinityResult
from hyper import RegulariserConfig

from .backbones.base import BlockBackbone
from .budget import CostTable
from .tasks import Task

if TYPE_CHECKING:
    from .controller import Controller

__all__ = ["save_controller", "load_controller", "CheckpointError", "atomic_torch_save", "versions"]

FORMAT = "dymu.controller/1"


class CheckpointError(ValueError):
    """A file is not a readable dymu checkpoint (truncated, corrupt, foreign or of another format)."""


def versions() -> dict[str, str]:
    """Versions of what produced a result: Python, torch, numpy, dymu."""
    from . import __version__

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__), "dymu": __version__}


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_controller(ctrl: Controller, path: str | Path) -> Path:
    if ctrl.backbone_recipe is None and ctrl.task_set is None:
        pass  # custom backbone and tasks: load() will need both passed in; the checkpoint says so
    payload = {
        "format": FORMAT,
        "versions": versions(),
        "tasks": list(ctrl.task_names),
        "task_set": ctrl.task_set,
        "backbone": ctrl.backbone_recipe,
        "backbone_arch": ctrl.anchor.backbone.arch,
        "n_layers": ctrl.n_layers,
        "hyper_config": dict(ctrl.hyper_config),
        "anchor": ctrl.anchor.state_dict(),
        "edge": ctrl.edge.state_dict(),
        "weight": ctrl.weight.state_dict(),
        "affinity": ctrl.affinity.to_dict() if ctrl.affinity is not None else None,
        "loss_scales": ctrl.loss_scales.clone(),
        "cost_table": ctrl.cost_table.to_dict(),
        # calibration inputs matter only when derived trees re-estimate BatchNorm statistics
        "calibration": ctrl.calibration if ctrl.bn_stats == "batch" else None,
        "bn_stats": ctrl.bn_stats,
        "regulariser": dict(vars(ctrl.regulariser)),
        "stages": ctrl.stages,
    }
    return atomic_torch_save(payload, path)


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign objects
        raise CheckpointError(f"{path} is not a readable dymu checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a dymu controller checkpoint (format {found!r}, expected {FORMAT!r})")
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
    from .registry import build_backbone

    path = Path(path)
    payload = _read(path, map_location)
    if tasks is None:
        if payload.get("task_set") is None:
            raise ValueError(f"{path} was trained on custom tasks {payload['tasks']}: pass tasks=[...] to load it")
        tasks = payload["task_set"]
    if backbone is None:
        if payload.get("backbone") is None:
            raise ValueError(
                f"{path} was trained with a custom {payload.get('backbone_arch')!r} backbone: pass backbone=... to load it"
            )
        backbone = build_backbone(payload["backbone"])
    ctrl = Controller(backbone, tasks, **payload["hyper_config"])
    if ctrl.task_names != list(payload["tasks"]):
        raise ValueError(f"the tasks given {ctrl.task_names} differ from the checkpoint's {payload['tasks']}")
    try:
        ctrl.anchor.load_state_dict(payload["anchor"])
        ctrl.edge.load_state_dict(payload["edge"])
        ctrl.weight.load_state_dict(payload["weight"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit this backbone and these tasks: {error}") from error
    ctrl.affinity = AffinityResult.from_dict(payload["affinity"]) if payload.get("affinity") else None
    ctrl.loss_scales = payload["loss_scales"].float().cpu()
    ctrl.cost_table = CostTable.from_dict(payload["cost_table"])
    ctrl.calibration = payload.get("calibration")
    ctrl.bn_stats = payload.get("bn_stats", "anchor")
    ctrl.regulariser = RegulariserConfig(**payload.get("regulariser", {}))
    ctrl.stages = payload.get("stages", {})
    ctrl.anchor.eval()
    ctrl.edge.eval()
    ctrl.weight.eval()
    return ctrl.to(map_location)
