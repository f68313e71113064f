"""Resuming an interrupted benchmark run (``python -m benchmarks.run ... --resume``): what its partial results
file holds, whether this run may continue it, and the trained controllers saved beside it.

A run writes ``OUT/<stem>.json`` after every method and, after training the controller of a seed, saves it to
``OUT/<stem>-state/seed{N}-dymu.pt`` (and its frozen stage-0 streams, when the method keeps a ``teacher``, to
``seed{N}-teacher.pt``): every other method of the seed starts from that controller (loss scales, affinity,
anchor), so a resumed run loads it instead of training it again.

>>> old = {"seeds": [0], "steps": {"anchor": 2}, "methods": ["dymu", "single_task"], "plots": True}
>>> config_differences(old, {"seeds": [0, 1], "steps": {"anchor": 3}, "methods": ["dymu", "single_task", "phn"], "plots": False})
['seeds (file [0], now [0, 1])', "steps (file {'anchor': 2}, now {'anchor': 3})"]
>>> config_differences(old, {**old, "methods": ["dymu"]})
["methods (the file has ['single_task'] that this run lacks: a resumed run may only add methods)"]

``--baselines-from FILE`` starts a run from another run's file whose config differs only in how the
controller splits its steps after stage 0 (supernet, edge, weights; the same stage 0, total and batch): the
entries of the methods that do not depend on those stages (:data:`AFTER_STAGE0` lists those that do) are
taken over, and the controller is trained again. Its stage-0 streams must come out bit-identical to the
ones the file's baselines were trained from (the file's saved teacher), or the run stops.

>>> split_only({"anchor": 600, "supernet": 300, "edge": 400, "weights": 250, "batch_size": 128},
...            {"anchor": 600, "supernet": 750, "edge": 150, "weights": 50, "batch_size": 128})
True
>>> split_only({"anchor": 600, "supernet": 300, "edge": 400, "weights": 250, "batch_size": 128},
...            {"anchor": 500, "supernet": 400, "edge": 400, "weights": 250, "batch_size": 128})
False

``--seeds-from FILE ...`` gathers seeds that ran as separate processes (on two cores, or two machines) into one
run: each FILE is a run of this config on some of its seeds (only ``seeds`` and the fields of
:data:`IGNORED_FIELDS` may differ). Every finished entry of a seed this run has not started is taken, with the
seed's saved controller and stage-0 streams; a seed is taken whole from one file, and only once its
controller finished there.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import dymu
from dymu.supernet import frozen_copy
from dymu.checkpoint import atomic_torch_save

from .config import C_ONLY, RunConfig

__all__ = ["IGNORED_FIELDS", "AFTER_STAGE0", "split_only", "read_baselines", "read_seeds", "same_stage0", "check_stage0", "stage0_digest", "stage0_record", "results_path", "state_dir", "stages_path",
           "state_dir_of", "results_file_of", "controller_path", "teacher_path", "teacher_file", "config_differences", "read_partial", "finished_entries", "save_controller_method", "load_controller_method"]

#: RunConfig fields a resumed run may change, and why: none of them changes a number of a finished entry
# [choice] ``threads`` is compared: CPU kernels sum in another order on more threads (stage 0 on fashion_digits's LeNet
# moved by 1e-5 after five steps on 2 threads against 1), so a run continued or taken over on another thread count
# would not be the run its command reproduces.
IGNORED_FIELDS: dict[str, str] = {
    "methods": "a resumed run may add methods (it may not drop finished ones)",
    "plots": "drawn at the end from the whole file",
    "calibration_steps": "only the time estimate uses them",
    "data_root": "where the same files lie; the data checksum is compared instead",
    "out": "the file is read from where this run writes",
}


#: the methods whose numbers depend on the controller's stages after stage 0: its variants, and the static tree
#: sized to the controller's mean cost; every other method depends on stage 0 (its streams, loss scales,
#: affinity and cost table) and on the total budget only
AFTER_STAGE0: tuple[str, ...] = ("dymu", "dymu_paper", *C_ONLY, "static_tree")
_STAGE_KEYS = ("anchor", "supernet", "edge", "weights")


def results_path(config: RunConfig) -> Path:
    """``OUT/<stem>.json``."""
    return Path(config.out) / f"{config.stem}.json"


def state_dir(config: RunConfig) -> Path:
    """``OUT/<stem>-state``: the trained controllers of the run, one file per seed."""
    return state_dir_of(results_path(config))


def state_dir_of(results_file: str | Path) -> Path:
    """The state folder saved beside a results file ``DIR/<stem>.json``: ``DIR/<stem>-state``."""
    results_file = Path(results_file)
    return results_file.parent / f"{results_file.stem}-state"


def results_file_of(saved: str | Path) -> Path:
    """The results file ``DIR/<stem>.json`` of a file saved in its state folder ``DIR/<stem>-state/``."""
    folder = Path(saved).parent
    stem = folder.name[: -len("-state")] if folder.name.endswith("-state") else folder.name
    return folder.parent / f"{stem}.json"


def controller_path(config: RunConfig, seed: int) -> Path:
    return state_dir(config) / f"seed{seed}-dymu.pt"


def stages_path(config: RunConfig, seed: int, method: str = "dymu") -> Path:
    """``OUT/<stem>-state/seed{N}-{method}-stages/``: the resume checkpoints of a controller's stages while it trains
    (removed once its entry is finished: the saved controller holds what they held)."""
    return state_dir(config) / f"seed{seed}-{method}-stages"


def teacher_path(config: RunConfig, seed: int) -> Path:
    return teacher_file(results_path(config), seed)


def teacher_file(results_file: str | Path, seed: int) -> Path:
    """The stage-0 streams of ``seed`` saved beside a results file."""
    return state_dir_of(results_file) / f"seed{seed}-teacher.pt"


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The fields (``RunConfig.as_dict()``) where ``new`` may not continue ``old``, each with both values."""
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (list(new).index(k) if k in new else len(new), k)):
        if key == "methods":
            dropped = [m for m in old.get("methods", []) if m not in new.get("methods", [])]
            if dropped:
                out.append(f"methods (the file has {dropped} that this run lacks: a resumed run may only add methods)")
        elif key not in IGNORED_FIELDS and old.get(key) != new.get(key):
            out.append(f"{key} (file {old.get(key)!r}, now {new.get(key)!r})")
    return out


def split_only(old_steps: Mapping[str, Any], new_steps: Mapping[str, Any]) -> bool:
    """Whether two step budgets (``asdict(StepBudget)``) have the same stage 0, batch size and total, so that
    they differ at most in the controller's split of the steps after stage 0."""
    total = lambda steps: sum(int(steps.get(k) or 0) for k in _STAGE_KEYS)  # noqa: E731
    return (old_steps.get("anchor") == new_steps.get("anchor") and old_steps.get("batch_size") == new_steps.get("batch_size")
            and total(old_steps) == total(new_steps))


def read_baselines(path: str | Path, config: RunConfig, data_checksum: str | None) -> dict[str, Any]:
    """The results file ``path`` whose baselines this run takes over (see the module docstring).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: its config differs in more than the controller's split (naming every field), or its data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--baselines-from: no results file at {path}")
    old = json.loads(path.read_text())
    old_config, new_config = dict(old.get("config") or {}), config.as_dict()
    if not split_only(old_config.get("steps") or {}, new_config["steps"]):
        raise ValueError(f"--baselines-from: {path} has steps {old_config.get('steps')}, this run {new_config['steps']}: "
                         "only the controller's split after stage 0 may differ (same anchor steps, batch size and total)")
    for key in ("steps", "mode", "supernet_steps", "supernet_config", "edge_config"):  # the split and its settings, and the names they give the run
        old_config[key] = new_config[key]
    old_config["methods"] = []  # the file may have methods this run lacks, and lack some it has
    differences = config_differences(old_config, new_config)
    if differences:
        raise ValueError(f"--baselines-from: {path} was written by a run with a different config: " + "; ".join(differences))
    _check_same_data(old, data_checksum, path, "--baselines-from")
    return old


def read_seeds(path: str | Path, config: RunConfig, data_checksum: str | None) -> dict[str, Any]:
    """The results file ``path`` of a run of ``config`` on other seeds, whose seeds this run takes (``--seeds-from``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: its config differs in more than its seeds and methods (naming every field), or its data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--seeds-from: no results file at {path}")
    old = json.loads(path.read_text())
    old_config = dict(old.get("config") or {})
    old_config["seeds"] = config.seeds
    old_config["methods"] = []  # methods this run lacks are left in the file; those the file lacks run here
    differences = config_differences(old_config, config.as_dict())
    if differences:
        raise ValueError(f"--seeds-from: {path} was written by a run with a different config: " + "; ".join(differences))
    _check_same_data(old, data_checksum, path, "--seeds-from")
    return old


def stage0_digest(teacher: torch.nn.Module | str | Path) -> str:
    """A SHA-256 of the stage-0 streams' state (a module, or streams saved at a path; every tensor's name, dtype, shape
    and bytes): recorded with the controller's entry, so that a later ``--baselines-from`` can check its stage 0 against
    a results file without its state folder."""
    state = teacher.state_dict() if isinstance(teacher, torch.nn.Module) else torch.load(teacher, map_location="cpu",
                                                                                           weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stage0_record(old: Mapping[str, Any], seed: int) -> dict[str, Any] | None:
    """What a results file recorded of ``seed``'s stage-0 streams besides the saved file: ``{"digest": ...}`` (entries
    written since the digest was recorded), else ``{"test_losses": [...]}`` (the stage-0 anchor tree's per-task test
    losses, ``supernet_effect``), else None."""
    item = finished_entries(old, ["dymu"]).get("dymu", {}).get(seed)
    if item is not None:
        if item.get("stage0_digest"):
            return {"digest": item["stage0_digest"]}
        before = ((item.get("supernet_effect") or {}).get("anchor") or {}).get("before")
        if before:
            return {"test_losses": [float(v) for v in before]}
    return None


def check_stage0(teacher: torch.nn.Module | str | Path, path: str | Path, old: Mapping[str, Any], seed: int,
                 test_losses: Callable[[], list[float]] | None = None) -> str:
    """Check that ``teacher`` (streams, or a path to them) is the stage 0 that ``seed``'s entries of the results file
    ``path`` (read as ``old``) were trained from: its saved streams bit for bit; where they are gone, the SHA-256 it
    recorded (:func:`stage0_digest`); in a file from before the digest, the per-task test losses of its stage-0 anchor
    tree, float for float, against ``test_losses()`` (the same measurement on this run's streams; None: not available).
    Returns how it was checked.

    Raises:
        FileNotFoundError: nothing to check with (naming the missing file).
        ValueError: other streams.
    """
    saved = teacher_file(path, seed)
    if saved.exists():
        how, same = f"the saved streams {saved}, bit for bit", lambda: same_stage0(teacher, saved)
    else:
        record = stage0_record(old, seed) or {}
        if "digest" in record:
            how, same = "their SHA-256 recorded in the file", lambda: stage0_digest(teacher) == record["digest"]
        elif "test_losses" in record and test_losses is not None:
            mine = [float(v) for v in test_losses()]
            how = (f"their anchor tree's per-task test losses recorded in the file, float for float: {record['test_losses']} "
                   f"there, {mine} here")
            same = lambda: mine == record["test_losses"]  # noqa: E731
        else:
            raise FileNotFoundError(f"--baselines-from: neither {saved} nor a record of seed {seed}'s stage-0 streams in "
                                    f"{path} to check them by: this run's stage 0 cannot be checked")
    if not same():
        raise ValueError(f"--baselines-from: seed {seed}'s stage-0 streams differ from those of {path} (checked by {how}): "
                         "the taken-over baselines were trained from other streams; run without --baselines-from")
    return how


def same_stage0(teacher: torch.nn.Module | str | Path, saved: str | Path) -> bool:
    """Whether ``teacher``'s state (a module, or streams saved at a path) equals the stage-0 streams saved at
    ``saved`` (every tensor bit for bit)."""
    state = torch.load(saved, map_location="cpu", weights_only=True)
    mine = teacher.state_dict() if isinstance(teacher, torch.nn.Module) else torch.load(teacher, map_location="cpu",
                                                                                           weights_only=True)
    return set(state) == set(mine) and all(torch.equal(mine[k].cpu(), state[k]) for k in mine)


def read_partial(config: RunConfig, data_checksum: str | None) -> dict[str, Any] | None:
    """The results file this run would write, if there is one and ``config`` may continue it; None without one.

    Raises:
        ValueError: the file was written with a config this run may not continue (naming every differing
            field), or from different data.
    """
    path = results_path(config)
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    differences = config_differences(old.get("config", {}), config.as_dict())
    if differences:
        raise ValueError(f"--resume: {path} was written by a run with a different config: " + "; ".join(differences)
                         + ". Resume with the same options, or write to another --out.")
    _check_same_data(old, data_checksum, path, "--resume")
    return old


def _check_same_data(old: Mapping[str, Any], data_checksum: str | None, path: Path, option: str) -> None:
    """ValueError when the results file ``old`` (at ``path``) records a data checksum other than ``data_checksum``."""
    old_checksum = (old.get("data") or {}).get("checksum")
    if data_checksum is not None and old_checksum is not None and old_checksum != data_checksum:
        raise ValueError(f"{option}: {path} was computed on other data (checksum {old_checksum}, now {data_checksum})")


def finished_entries(results: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[int, dict[str, Any]]]:
    """The per-seed entries of a results file, records included: ``{method: {seed: entry}}``.

    Summarised entries are in ``methods[name]["per_seed"]`` (records in ``methods[name]["records"]``, same
    order); entries still waiting for their seed's single-task metrics in ``pending``.
    """
    out: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in methods}
    for name, row in (results.get("methods") or {}).items():
        for entry, records in zip(row["per_seed"], row["records"]):
            out.setdefault(name, {})[int(entry["seed"])] = {**entry, "records": records}
    for name, entries in (results.get("pending") or {}).items():
        for entry in entries:
            out.setdefault(name, {})[int(entry["seed"])] = dict(entry)
    return out


def save_controller_method(method: Any, config: RunConfig, seed: int) -> Path:
    """Save the trained controller of ``method`` (a :class:`~benchmarks.methods.ControllerMethod`), and its
    stage-0 ``teacher`` when it has one, beside the results file."""
    path = method.controller.save(controller_path(config, seed))
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        atomic_torch_save(teacher.state_dict(), teacher_path(config, seed))
    return path


def load_controller_method(method: Any, config: RunConfig, seed: int, device: torch.device) -> None:
    """Give ``method`` (a fresh :class:`~benchmarks.methods.ControllerMethod`) the controller saved for
    ``seed`` (and its ``teacher``, when one was saved).

    Raises:
        FileNotFoundError: no controller was saved for the seed.
    """
    path = controller_path(config, seed)
    if not path.exists():
        raise FileNotFoundError(f"--resume: the controller of seed {seed} is finished in {results_path(config)} but "
                                f"its trained state is not at {path}; run afresh without --resume")
    fresh = method.make_controller()  # the tasks and backbone this run builds; the weights come from the file
    ctrl = dymu.Controller.load(path, tasks=fresh.tasks, backbone=copy.deepcopy(fresh.anchor.backbone)).to(device)
    method.controller = ctrl
    if teacher_path(config, seed).exists():
        teacher = frozen_copy(ctrl.anchor)
        teacher.load_state_dict(torch.load(teacher_path(config, seed), map_location=device, weights_only=True))
        method.teacher = teacher
