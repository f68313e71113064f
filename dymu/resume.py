"""Stage checkpoints: the file a training loop writes so that a killed stage resumes exactly.

One ``torch.save`` file per stage, written atomically (:func:`dymu.checkpoint.atomic_torch_save`:
temporary file, fsync, rename), so the file on disk is always the last complete checkpoint. It holds
the format tag, the stage's name and config (a resume with another config is refused, naming the
fields that differ), the world size, a digest of the frozen modules the stage trains on, the step,
how many batches were drawn, the trained modules', optimiser's and scheduler's states, the keep-best
state and the history, and per rank the random generators' states and the step log. It loads with
``weights_only=True``: loading never runs code from the file.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> Checkpointing(folder, every=100).file("edge").name
'edge.pt'
>>> config_differences({"steps": 40, "lr": 0.001, "reg": {"a": 1}}, {"steps": 50, "lr": 0.001, "reg": {"a": 2}})
['steps: 40 in the checkpoint, 50 now', 'reg.a: 1 in the checkpoint, 2 now']
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_torch_save, versions

__all__ = ["Checkpointing", "checkpointing", "config_differences", "read_stage_checkpoint", "write_stage_checkpoint",
           "capture_generators", "restore_generators", "digest", "plain_config"]

FORMAT = "dymu.stage/1"

Generator = np.random.Generator | torch.Generator


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a stage writes its resume checkpoint.

    Attributes:
        path: the checkpoint file if it ends in ``.pt``, else a folder that gets ``<stage>.pt``. Under
            ``torchrun`` rank 0 writes it and every rank reads it: a path all ranks see.
        every: also write every this many steps (None: only at the end of the stage).
        resume: continue from the file when it exists (a finished stage is loaded, not retrained);
            False starts over and overwrites it.
    """

    path: str | Path
    every: int | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.every}")

    def file(self, stage: str) -> Path:
        path = Path(self.path)
        return path if path.suffix == ".pt" else path / f"{stage}.pt"


def checkpointing(path: str | Path | None, every: int | None = None, resume: bool = False) -> Checkpointing | None:
    """:class:`Checkpointing` from the ``checkpoint=, checkpoint_every=, resume=`` arguments of the
    ``fit_*`` methods; None when no path is given (then ``every`` and ``resume`` must not be set either)."""
    if path is None:
        if every is not None or resume:
            raise ValueError("checkpoint_every and resume need a checkpoint path (checkpoint=PATH or folder)")
        return None
    return Checkpointing(path, every, resume)


def plain_config(value: Any) -> Any:
    """A config as nested dicts and lists of plain values (what the file stores and compares)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    return value


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``"field: A in the checkpoint, B now"`` for every field (dotted into nested configs) that differs."""
    saved, current = plain_config(saved), plain_config(current)
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in [*saved, *(k for k in current if k not in saved)]:
            out += config_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: {saved!r} in the checkpoint, {current!r} now"]
    return []


def digest(modules: Mapping[str, nn.Module]) -> str:
    """sha256 over the names and bytes of the modules' parameters and buffers."""
    h = hashlib.sha256()
    for name, module in modules.items():
        for key, tensor in module.state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def capture_generators(generators: Mapping[str, Generator], device: torch.device) -> dict[str, Any]:
    """The states of ``generators`` and of the global torch generator (and the device's, on CUDA)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    for name, generator in generators.items():
        if isinstance(generator, torch.Generator):
            state[name] = generator.get_state()
        else:
            state[name] = generator.bit_generator.state
    return state


def restore_generators(state: Mapping[str, Any], generators: Mapping[str, Generator], device: torch.device) -> None:
    """Inverse of :func:`capture_generators`."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, generator in generators.items():
        saved = state[name]
        if isinstance(generator, torch.Generator):
            generator.set_state(saved)
        else:
            generator.bit_generator.state = saved


def write_stage_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (see the module docstring) with the format tag and versions, atomically."""
    return atomic_torch_save({"format": FORMAT, "versions": versions(), **payload}, path)


def read_stage_checkpoint(path: Path, *, stage: str, config: Any, world_size: int, frozen: str | None) -> dict[str, Any]:
    """Read a stage checkpoint and check that it can resume ``stage`` with ``config`` on ``world_size`` ranks.

    Raises:
        CheckpointError: a truncated, corrupt or foreign file; another stage; another config (the
            message names every differing field); another world size; other frozen modules.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign objects
        raise CheckpointError(f"{path} is not a readable stage checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a dymu stage checkpoint (format {found!r}, expected {FORMAT!r})")
    if payload["stage"] != stage:
        raise CheckpointError(f"{path} holds stage {payload['stage']!r}, not {stage!r}: give each stage its own file (or a folder)")
    differences = config_differences(payload["config"], config)
    if differences:
        raise CheckpointError(
            f"{path}: cannot resume stage {stage!r} with another config ({'; '.join(differences)}); "
            "use the checkpoint's config, or start over with resume=False or another checkpoint path"
        )
    if payload["world_size"] != world_size:
        raise CheckpointError(f"{path} was written by {payload['world_size']} rank(s); this run has {world_size}")
    if payload.get("frozen") != frozen:
        raise CheckpointError(
            f"{path}: the frozen modules this stage trains on (e.g. the anchor) differ from those the checkpoint was "
            "written with; resume after the same earlier stages"
        )
    return payload

