"""Your own runs: train a controller from a config file, and load it back with your own tasks.

:func:`train_from_config` is what ``dymu train CONFIG.toml`` runs: it resolves the config's task
set, data and backbone (:mod:`dymu.runconfig`), checks the first batches (:mod:`dymu.checks`),
trains every stage with the public :class:`dymu.Controller` API (checkpointing each stage into
``out/checkpoints``, so that ``resume=True`` continues a killed run) and writes, into the config's
``out`` folder, ``controller.pt``, ``config.toml`` (a copy of the config) and ``results.json``
(config, seed, versions, git commit, steps and seconds per stage, an evaluation table on the
validation split). :func:`load_run_controller` loads such a checkpoint, importing the
``"module:attribute"`` task set and backbone it records.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .checks import check_batch
from .results import write_json
from .runconfig import (
    ConfigError,
    RunConfig,
    load_config,
    resolve_attribute,
    resolve_backbone,
    resolve_data,
    resolve_tasks_spec,
    stage_steps,
)

__all__ = ["train_from_config", "load_run_controller", "default_requests", "evaluation_budgets", "git_commit", "first_batches"]


def git_commit(folder: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``folder`` (default: dymu's source), ``+dirty`` if
    tracked files changed; None outside git."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def first_batches(data: Iterable, n: int) -> list:
    """The first ``n`` batches of ``data`` as a list (re-iterable, for repeated evaluation)."""
    return list(itertools.islice(iter(data), n))


def default_requests(task_names: Sequence[str]) -> list[list[float]]:
    """Uniform, then each task alone: ``N + 1`` preferences in task order."""
    n = len(task_names)
    return [[1.0] * n] + [[1.0 if j == i else 0.0 for j in range(n)] for i in range(n)]


def evaluation_budgets(budgets: Sequence[float], min_budget: float) -> list[float]:
    """``budgets`` with any below the controller's minimum raised to it (rounded up so it is feasible), no repeats."""
    floor = math.ceil(min_budget * 1e6) / 1e6
    out: list[float] = []
    for b in budgets:
        b = max(float(b), floor)
        if b not in out:
            out.append(b)
    return out


def _n_batches(train: Any) -> int | None:
    try:
        return int(len(train))
    except TypeError:
        return None


def train_from_config(config: RunConfig | str | Path, *, verbose: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train a controller as ``config`` says; returns what ``out/results.json`` holds.

    Every stage writes ``out/checkpoints/<stage>.pt`` at its end and every ``config.checkpoint_every``
    steps. ``resume=True`` continues a killed run: finished stages are loaded from their checkpoints
    (the loss scales and the affinity, cheap and deterministic, are recomputed), the interrupted stage
    resumes from its last checkpoint, and the weights are those of an uninterrupted run.

    Raises:
        ConfigError: a bad key or value, an unimportable ``module:attribute``, data of the wrong form.
        dymu.checks.BadDataError: a first batch of the train or val split that training cannot use.
    """
    from .checkpoint import versions
    from .controller import Controller
    from .training import AnchorConfig, EdgeConfig, WeightConfig
    from .stage_configs import SupernetConfig

    if not isinstance(config, RunConfig):
        config = load_config(config)

    def say(message: str) -> None:
        if verbose:
            print(f"[train] {message}", flush=True)

    start = time.time()
    torch.manual_seed(config.seed)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    task_set = resolve_tasks_spec(config.tasks)
    train, val, _test = resolve_data(config.data, config.batch_size, config.seed, config.data_options)
    backbone = resolve_backbone(config.backbone, config.backbone_options)
    ctrl = Controller(backbone, task_set, seed=config.seed)
    for split, data in (("train", train), ("val", val)):
        batches = first_batches(data, 1)
        if not batches:
            raise ConfigError(f"key 'data.source': {config.data!r} gave an empty {split} split")
        x, targets = batches[0] if isinstance(batches[0], (tuple, list)) and len(batches[0]) == 2 else (batches[0], None)
        check_batch(x, targets, ctrl.tasks, stage=f"{split} data", step=0)
    n_batches = _n_batches(train)
    steps = stage_steps(config, n_batches)
    say(f"tasks {ctrl.task_names}; backbone {config.backbone}; {n_batches if n_batches is not None else '?'} train batches "
        f"of {config.batch_size}; steps anchor/supernet/edge/weights {steps['anchor']}/{steps['supernet']}/{steps['edge']}/"
        f"{steps['weights']} "
        f"(preset {config.preset!r}); device {config.device}; out {out}")

    seconds: dict[str, float] = {}
    device = config.device

    def timed(stage: str, fn) -> None:
        t0 = time.time()
        fn()
        seconds[stage] = time.time() - t0
        say(f"{stage} done in {seconds[stage]:.1f} s")

    eval_every = max(1, steps["anchor"] // 3)
    saving = {"checkpoint": out / "checkpoints", "checkpoint_every": config.checkpoint_every, "resume": resume,
              "device": device, "verbose": verbose}
    timed("anchor", lambda: ctrl.fit_anchor(
        train, val, config=AnchorConfig(steps=steps["anchor"], eval_every=eval_every, seed=config.seed), **saving))
    timed("affinity", lambda: ctrl.fit_affinity(train, device=device))
    if steps["supernet"] > 0:  # the paper preset has no supernet stage
        timed("supernet", lambda: ctrl.fit_supernet(train, val, config=SupernetConfig(steps=steps["supernet"], seed=config.seed,
                                                                                         solo=config.solo),
                                                    **saving))
    timed("edge", lambda: ctrl.fit_edge(train, val, config=EdgeConfig(steps=steps["edge"], seed=config.seed), **saving))
    timed("weights", lambda: ctrl.fit_weights(
        train, val, config=WeightConfig(steps=steps["weights"], seed=config.seed, bn_stats=ctrl.bn_stats), **saving))
    checkpoint = ctrl.save(out / "controller.pt")
    if config.path.is_file():
        (out / "config.toml").write_bytes(config.path.read_bytes())

    preferences = config.preferences or default_requests(ctrl.task_names)
    budgets = evaluation_budgets(config.budgets or [1.0, 0.5], ctrl.min_budget)
    val_batches = first_batches(val, config.max_batches)
    t0 = time.time()
    table = ctrl.evaluate(val_batches, preferences=preferences, budgets=budgets, device=device)
    seconds["evaluate"] = time.time() - t0
    primaries = {t.name: t.primary for t in ctrl.tasks}
    say(f"validation ({len(val_batches)} batches), primary metric per task:\n{table.format(primaries)}")

    results = {
        "config": config.raw,
        "config_path": str(config.path),
        "seed": config.seed,
        "device": config.device,
        "tasks": ctrl.task_names,
        "primary_metrics": primaries,
        "steps": steps,
        "train_batches_per_epoch": n_batches,
        "stage_seconds": seconds,
        "versions": versions(),
        "git_commit": git_commit(),
        "anchor_flops": ctrl.cost_table.anchor_flops,
        "min_budget": ctrl.min_budget,
        "evaluation": {"split": "val", "batches": len(val_batches), **table.to_dict()},
        "checkpoint": str(checkpoint),
        "seconds": time.time() - start,
    }
    write_json(out / "results.json", results)
    say(f"done in {results['seconds']:.0f} s; wrote {out / 'controller.pt'}, {out / 'config.toml'}, {out / 'results.json'}")
    return results


def _peek(path: Path) -> dict[str, Any]:
    from .checkpoint import read_checkpoint

    return read_checkpoint(path, "cpu")


def load_run_controller(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a controller, first importing the ``"module:attribute"`` task set and backbone it was
    trained with (so ``dymu build``/``eval``/``plot`` work on your own runs); registered names and
    checkpoints of the Python API load as with :func:`dymu.load`."""
    from . import load

    path = Path(path)
    payload = _peek(path)
    task_set = payload.get("task_set")
    if isinstance(task_set, str) and ":" in task_set:
        resolve_tasks_spec(task_set, key=f"{path.name}: task set")
    recipe = payload.get("backbone")
    if isinstance(recipe, dict) and ":" in str(recipe.get("name", "")):
        from .registry import BACKBONES, register_backbone

        if recipe["name"] not in BACKBONES:
            register_backbone(recipe["name"], resolve_attribute(recipe["name"], f"{path.name}: backbone"))
    return load(path, map_location=map_location)
