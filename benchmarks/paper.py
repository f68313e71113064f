"""The paper's three benchmarks end to end: train a controller, save it, evaluate it with the paper's protocol.

Usage (a GPU run at the paper's settings, then a quick CPU smoke run on a tiny copy)::

    python -m benchmarks.paper cifar100 --root data/cifar100 --out runs/paper/cifar100 --device cuda --amp --workers 8
    python -m benchmarks.paper nyuv2 --root data/nyuv2 --device cuda --amp --workers 8
    python -m benchmarks.paper pascal_context --root data/PASCAL_MT --device cuda --amp --workers 8
    python -m benchmarks.paper pascal_context_3 --root data/PASCAL_MT --device cuda --amp --workers 8
    python -m benchmarks.paper cifar100 --root /tmp/tiny --steps-scale 0.0002 --device cpu --width-mult 0.125 --batch-size 32

=====================  ========  =============================  ==========================================
benchmark              tasks     anchor (one stream per task)   heads
=====================  ========  =============================  ==========================================
``cifar100``           20        ``resnet9`` (32x32)            ``resnet9_head(5)``
``nyuv2``              3         ``deeplab_resnet34`` (the      ``deeplab_head(k)`` (DeepLabv3+ decoder,
                                 data's size, 288x384)          256 channels)
``pascal_context``     5         ``deeplab_mobilenet_v2``       ``deeplab_head(k, channels=128,
                                 (512x512 crops)                separable=True)`` (BMTAS's decoder)
``pascal_context_3``   3         as above                       as above
=====================  ========  =============================  ==========================================

Pipeline (:func:`run_paper_benchmark`): load the ``train`` (training minus a seeded validation subset),
``val`` and ``test`` splits; build the anchor; ``fit_anchor`` (stage 0, each stream keeps its best
validation checkpoint), ``fit_affinity``, ``fit_edge`` (stage 1), ``fit_weights`` (stage 2); save
``out_dir/controller.pt``; evaluate on ``test``; write ``out_dir/results.json`` and print a table.

Steps. Stage 0 runs ``CONFIG["stage0"]["epochs"]`` epochs of the benchmark's ``train`` split; stages
1 and 2 run ``CONFIG["stage1"/"stage2"]["steps"]`` (30K) steps with Adam 1e-3, the learning rate
multiplied by 0.3 every 14K steps (``lr_milestones`` 14/30 and 28/30 of training). ``steps_scale``
scales all three (at least 1 step each); ``anchor_steps``/``edge_steps``/``weight_steps`` override
them. Stage 0 follows the dataset CONFIG's optimiser and schedule (Adam or SGD with nesterov momentum;
constant, step or poly learning rate). Where a run departs from the paper (random instead of
ImageNet-pretrained weights, dymu's stage 1-2 defaults), it says so under ``deviations`` in
``results.json``.

Evaluation protocol (paper section 10, method.md):

- ``n_preferences`` (20) preferences from Dirichlet(1) (:func:`dymu.metrics.dirichlet_preferences`,
  seed :data:`PREFERENCE_SEED` whatever the training seed), each built at c = 0 and c = 1 and
  evaluated on the whole ``test`` split.
- Single-task baselines: the anchor's streams (each on its own task, selected on validation) on
  ``test``, measured in the same run.
- Hypervolume in *normalised* loss space: each test loss is divided by its single-task stream's test
  loss, so every axis is "times the single-task loss", and the reference point is
  ``hv_reference_factor`` (2.0) on every axis, i.e. twice every single-task loss. [choice] Twice,
  not 1.1 times: models built for a small ``r_i`` may well lose more than 10% on task ``i`` and would
  then add nothing. ``results.json`` states the factor and the reference point in raw loss units too.
- Uniformity (EPO) of the normalised test losses against the preferences.
- Controllability: mean over tasks of the Spearman correlation between ``r_i`` and task ``i``'s
  primary metric (and, as ``controllability_loss``, its negated test loss); ``null`` where undefined
  (a metric constant over the preferences).
- Delta_MTL (primary metrics, percent) of every built model against the single-task baselines,
  averaged over the preferences; tasks whose baseline is exactly 0 are left out and listed.
- Cost: mean FLOPs and parameters of the built models (fractions of the anchor's), and the same mean
  over ``cost_preferences`` (1000) Dirichlet(1) preferences (seed :data:`COST_SEED`) from the cost
  table (no forward pass).

Memory. Activations kept for the backward pass, measured on the full-size models with
``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters excluded; float32, ``amp``
roughly halves them; the allocator's overhead and transient tensors add some 20%):

=====================  ==================  =================  ====================  ======================
benchmark              per image, stream   stage 0 (batch)    stage 1 (chunk =      anchor parameters
                       (stage 0 / 1)                          batch / 4)            (+ Adam in stage 0)
=====================  ==================  =================  ====================  ======================
cifar100 (32x32)       3.7 / 3.9 MiB       9.2 GiB (128)      2.4 GiB (32 x 20      131 M: 0.5 GB (2.1 GB)
                                                              streams)
nyuv2 (288x384)        119 / 133 MiB       2.8 GiB (8)        0.8 GiB (2 x 3)       80 M: 0.3 GB (1.3 GB)
pascal_context         562 / 526 MiB       22 GiB (8)         5.1 GiB (2 x 5)       11 M: 0.04 GB (0.2 GB)
(512x512)
pascal_context_3       as above            13 GiB (8)         3.1 GiB (2 x 3)       6.5 M
=====================  ==================  =================  ====================  ======================

Stage 1 runs every node of the anchor (``routed_forward``: all N streams) but back-propagates each
chunk of the batch before the next (``EdgeConfig.prefs_per_step`` = 4 chunks), so CIFAR-100's 20
ResNet-9 streams cost 20 x 3.9 MiB x 32 images at a time. Stage 2 runs one tree per chunk (at most
the stage-1 figure). Stage 0 holds the whole batch through all streams: it is the peak of every
benchmark, and every one fits a 40 GB GPU (PASCAL-Context 5-task in float32 needs about 27 GB with
overheads; use ``--amp`` on smaller cards). ``fit_affinity`` moves its 256 images to the device at once
(0.8 GB at 512x512).

Test/debug knobs (not the paper's settings): ``width_mult`` (every backbone width),
``input_size`` (PASCAL-Context crop size; NYUv2 and CIFAR-100 use their data's size),
``limit`` (at most this many images per split), ``n_preferences``, ``cost_preferences``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import dymu
from dymu.results import finite_or_none, jsonable, write_json
from dymu.backbones import deeplab_head, deeplab_mobilenet_v2, deeplab_resnet34, resnet9, resnet9_head
from dymu.checkpoint import versions
from dymu.metrics import controllability, dirichlet_preferences, hypervolume, relative_changes, uniformity
from dymu.progress import quiet_from_env
from dymu.registry import register_task_set
from dymu.training import evaluate_streams

from .datasets import BENCHMARKS
from .datasets.cifar100 import cifar100_tasks
from .datasets.nyuv2 import nyuv2_tasks
from .datasets.pascal_context import TASKS_3, TASKS_5, pascal_context_tasks

__all__ = [
    "PAPER_BENCHMARKS",
    "DatasetError",
    "cifar100_paper_tasks",
    "nyuv2_paper_tasks",
    "pascal_context_paper_tasks",
    "pascal_context_3_paper_tasks",
    "paper_steps",
    "run_paper_benchmark",
    "summarize",
    "main",
]

PAPER_BENCHMARKS = ("cifar100", "nyuv2", "pascal_context", "pascal_context_3")

#: how many validation passes stage 0 makes over its run (model selection keeps each stream's best)
ANCHOR_VALIDATIONS = 25
#: the default hypervolume reference point, in multiples of every single-task test loss
HV_REFERENCE_FACTOR = 2.0
#: the evaluated resource preferences (paper: everything at c in {0, 1})
EVAL_CS = (0.0, 1.0)
#: seeds of the evaluation and cost preferences: fixed, so every training seed and every run meets the
#: same preferences (the values of benchmarks.protocol's PREFERENCE_SEED and COST_SEED)
PREFERENCE_SEED = 2022
COST_SEED = 1000


class DatasetError(ValueError):
    """A benchmark's data cannot be read (missing or malformed file); the message names the file and layout."""


# ---------------------------------------------------------------------------------- task sets
def _pascal_head(num_outputs: int):
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


_TASK_SETS: dict[str, Callable[[], list[dymu.Task]]] = {
    "cifar100": cifar100_paper_tasks,
    "nyuv2": nyuv2_paper_tasks,
    "pascal_context": pascal_context_paper_tasks,
    "pascal_context_3": pascal_context_3_paper_tasks,
}
# Checkpoints store the task-set name; registering here lets dymu.load rebuild the tasks by name.
for _name, _factory in _TASK_SETS.items():
    register_task_set(_name, _factory)

_BACKBONES = {
    "cifar100": resnet9,
    "nyuv2": deeplab_resnet34,
    "pascal_context": deeplab_mobilenet_v2,
    "pascal_context_3": deeplab_mobilenet_v2,
}


# -------------------------------------------------------------------------------------- steps
def _milestones(stage: dict[str, Any]) -> tuple[float, ...]:
    """``lr_step`` every so many of ``steps`` as fractions of training (30K, 14K -> 14/30, 28/30)."""
    steps, every = int(stage["steps"]), int(stage.get("lr_step", 0))
    if every <= 0:
        return ()
    return tuple(k * every / steps for k in range(1, math.ceil(steps / every)) if k * every < steps)


def _scaled(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


def paper_steps(name: str, n_train: int, *, batch_size: int | None = None, steps_scale: float = 1.0) -> dict[str, int]:
    """The paper's steps of the three stages for a ``train`` split of ``n_train`` images.

    Stage 0: ``epochs * floor(n_train / batch)`` steps (the last partial batch is dropped, at least one
    step per epoch); stages 1-2: the CONFIG's steps (30K). All scaled by ``steps_scale``, at least 1.
    """
    config = _config(name)
    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be > 0, got {steps_scale}")
    bs0 = batch_size or int(config["stage0"]["batch_size"])
    per_epoch = max(1, n_train // bs0)
    return {
        "anchor": _scaled(int(config["stage0"]["epochs"]) * per_epoch, steps_scale),
        "edge": _scaled(int(config["stage1"]["steps"]), steps_scale),
        "weights": _scaled(int(config["stage2"]["steps"]), steps_scale),
    }


def _config(name: str) -> dict[str, Any]:
    if name not in PAPER_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(PAPER_BENCHMARKS)}")
    return BENCHMARKS[name].config


def _stage_configs(name: str, steps: dict[str, int], *, amp: bool, seed: int) -> tuple[dymu.AnchorConfig, dymu.EdgeConfig, dymu.WeightConfig, list[str]]:
    """dymu stage configs from the dataset CONFIG, and the ways they differ from it."""
    config = _config(name)
    stage0, stage1, stage2 = config["stage0"], config["stage1"], config["stage2"]
    deviations = []
    epochs = int(stage0["epochs"])
    if stage0.get("lr_schedule") == "poly":
        schedule = {"schedule": "poly", "poly_power": float(stage0.get("poly_power", 0.9))}
    elif "lr_step_epochs" in stage0:
        every = int(stage0["lr_step_epochs"])
        schedule = {
            "schedule": "step",
            "step_milestones": tuple(e / epochs for e in range(every, epochs, every)),
            "step_gamma": float(stage0.get("lr_gamma", 0.1)),
        }
    else:
        schedule = {"schedule": "constant"}
    anchor = dymu.AnchorConfig(
        steps=steps["anchor"],
        lr=float(stage0.get("lr", 1e-3)),
        weight_decay=float(stage0.get("weight_decay", 0.0)),
        optimizer=stage0.get("optimizer", "adam"),
        momentum=float(stage0.get("momentum", 0.9)),
        nesterov=bool(stage0.get("nesterov", False)),
        eval_every=max(1, math.ceil(steps["anchor"] / ANCHOR_VALIDATIONS)),
        amp=amp,
        seed=seed,
        **schedule,
    )
    if "pretrained" in config.get("backbone", "").lower():
        deviations.append("the backbone starts from random weights unless backbone_weights is given (CONFIG: ImageNet-pretrained)")
    edge = dymu.EdgeConfig(
        steps=steps["edge"],
        lr=float(stage1["lr"]),
        lr_decay=float(stage1.get("lr_gamma", 1.0)),
        lr_milestones=_milestones(stage1),
        amp=amp,
        seed=seed,
    )
    weights = dymu.WeightConfig(
        steps=steps["weights"],
        lr=float(stage2["lr"]),
        lr_decay=float(stage2.get("lr_gamma", 1.0)),
        lr_milestones=_milestones(stage2),
        bn_stats=edge.bn_stats,
        amp=amp,
        seed=seed,
    )
    if edge.dirichlet_alpha != 0.2:
        deviations.append(
            f"stages 1-2: training preferences r ~ Dirichlet({edge.dirichlet_alpha:g}) (dymu's default; the paper samples "
            f"Dirichlet(0.2)), {edge.prefs_per_step} preferences per batch (paper: 1), BatchNorm statistics "
            f"{edge.bn_stats!r} (paper: batch statistics)"
        )
    return anchor, edge, weights, deviations


# --------------------------------------------------------------------------------------- data
def _limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    # A seeded random subset rather than the first items: split files are often sorted by class.
    chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return Subset(dataset, chosen.tolist())


def _load_splits(name: str, root: str | Path, input_size: tuple[int, int] | None, limit: int | None, seed: int) -> dict[str, Dataset]:
    spec = BENCHMARKS[name]
    options: dict[str, Any] = {}
    data = spec.config.get("data", {})
    if "val_fraction" in data:
        options["val_fraction"] = data["val_fraction"]
        options["seed"] = data.get("seed", 0)
    if name.startswith("pascal_context"):
        options["output_size"] = tuple(input_size or spec.config["input_size"])
    root = Path(root)
    try:
        splits = {
            "train": spec.load(root, "train", **options),
            "val": spec.load(root, "val", **options),
            "test": spec.load(root, "test", **options),
            "affinity": spec.load(root, "train", augment=False, **options),
        }
    except ValueError as exc:  # the loaders name the file and the expected layout
        raise DatasetError(f"{name}: {exc}") from exc
    # The affinity images come from the same subset as the training images.
    offsets = {"train": 0, "affinity": 0, "val": 1, "test": 2}
    return {key: _limited(ds, limit, seed + offsets[key]) for key, ds in splits.items()}


def _data_input_size(dataset: Dataset) -> tuple[int, int]:
    image = dataset[0][0]
    return int(image.shape[-2]), int(image.shape[-1])


def _loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int, device: torch.device, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        # BatchNorm cannot train on a batch of one; a short last batch also skews the step.
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
    )


def _build_backbone(name: str, width_mult: float, input_size: tuple[int, int], weights: str | Path | None):
    backbone = _BACKBONES[name](width_mult=width_mult, input_size=tuple(input_size))
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        own = backbone.state_dict()
        bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{weights}: {len(bad)} tensors do not fit the {name} backbone, e.g. {bad[:3]}")
        result = backbone.load_state_dict(state, strict=False)
        if len(result.missing_keys) == len(own):
            raise ValueError(f"{weights}: no key matches the backbone's (expected keys like {next(iter(own))!r})")
    return backbone


# --------------------------------------------------------------------------------- evaluation
def summarize(
    table: dymu.EvaluationTable,
    tasks: Sequence[dymu.Task],
    single_task: dict[str, dict[str, float]],
    *,
    anchor_params: int,
    hv_reference_factor: float = HV_REFERENCE_FACTOR,
) -> list[dict[str, Any]]:
    """The protocol's numbers for every evaluated c: hypervolume, uniformity, controllability,
    Delta_MTL, mean cost. ``single_task[task]`` holds the single-task streams' test metrics;
    ``anchor_params`` the anchor's parameter count (the FLOPs reference comes with ``table``)."""
    names = [t.name for t in tasks]
    st_loss = np.array([single_task[n]["loss"] for n in names])
    if np.any(st_loss <= 0):
        raise ValueError(f"a single-task test loss is not positive ({dict(zip(names, st_loss.tolist()))}); the normalised losses are undefined")
    st_primary = {t.name: single_task[t.name][t.primary] for t in tasks}
    directions = {t.name: t.higher_is_better for t in tasks}
    kept = [n for n in names if st_primary[n] != 0]
    cs = sorted({float(row["c"]) for row in table.rows})
    summary = []
    for c in cs:
        rows = [row for row in table.rows if float(row["c"]) == c]
        sub = dymu.EvaluationTable(names, rows, table.anchor_flops)
        prefs = sub.preferences()
        normalised = sub.losses() / st_loss
        primary = np.array([[row["metrics"][t.name][t.primary] for t in tasks] for row in rows])
        deltas = [
            float(np.mean(list(relative_changes({n: primary[i, k] for k, n in enumerate(names) if n in kept},
                                                {n: st_primary[n] for n in kept}, directions).values())))
            for i in range(len(rows))
        ] if kept else [float("nan")]
        with warnings.catch_warnings():
            # Constant metrics over few preferences are expected on tiny runs; they give null below.
            warnings.simplefilter("ignore", RuntimeWarning)
            if len(rows) >= 2:
                ctrl_metric = controllability(prefs, primary, [t.higher_is_better for t in tasks], task_names=names)
                ctrl_loss = controllability(prefs, sub.losses(), False, task_names=names)
            else:
                ctrl_metric = ctrl_loss = float("nan")
        flops = sub.flops() / table.anchor_flops
        params = np.array([row["params"] for row in rows], dtype=float)
        summary.append({
            "c": c,
            "n_models": len(rows),
            "hypervolume": hypervolume(normalised, [hv_reference_factor] * len(names)),
            "uniformity": uniformity(normalised, prefs),
            "controllability": finite_or_none(ctrl_metric),
            "controllability_loss": finite_or_none(ctrl_loss),
            "delta_mtl": finite_or_none(np.mean(deltas)),
            "delta_mtl_per_model": [finite_or_none(d) for d in deltas],
            "flops_fraction": float(flops.mean()),
            "mflops": float(sub.flops().mean() / 1e6),
            "params_m": float(params.mean() / 1e6),
            "params_fraction": float(params.mean() / anchor_params),
            "mean_nodes": float(np.mean([sum(len(set(r)) for r in row["tree"]["assignment"]) for row in rows])),
            "mean_primary": {n: float(primary[:, k].mean()) for k, n in enumerate(names)},
            "mean_loss": {n: float(sub.losses()[:, k].mean()) for k, n in enumerate(names)},
        })
    return summary


def _cost_over_preferences(ctrl: dymu.Controller, n: int, seed: int) -> dict[str, Any]:
    """Mean cost of the trees planned for ``n`` Dirichlet(1) preferences at every evaluated c."""
    prefs = dirichlet_preferences(n, ctrl.n_tasks, alpha=1.0, seed=seed)
    table = ctrl.cost_table
    out = {"n_preferences": n, "seed": seed, "per_c": []}
    for c in EVAL_CS:
        plans = [ctrl.plan(p, c=c) for p in prefs]
        out["per_c"].append({
            "c": c,
            "flops_fraction": float(np.mean([p.flops for p in plans]) / table.anchor_flops),
            "params_fraction": float(np.mean([p.params for p in plans]) / table.anchor_params),
            "mflops": float(np.mean([p.flops for p in plans]) / 1e6),
            "params_m": float(np.mean([p.params for p in plans]) / 1e6),
        })
    return out


def _format_table(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    lines = [f"== {results['benchmark']}: {len(tasks)} tasks, seed {results['seed']}, "
             f"steps {results['run']['steps']}, device {results['run']['device']} =="]
    lines.append("single-task streams on test (the Delta_MTL and hypervolume baselines):")
    width = max(len(t) for t in tasks)
    for name in tasks:
        m = results["single_task"][name]
        primary = results["primary_metrics"][name]
        loss = "" if primary == "loss" else f"  loss {m['loss']:.4f}"
        lines.append(f"  {name:>{width}}  {primary} {m[primary]:.4f}{loss}")
    factor = results["protocol"]["hv_reference_factor"]
    header = ["c", "models", f"HV(ref {factor:g}x ST)", "uniformity", "controllab.", "ctrl(loss)", "dMTL %", "FLOPs %", "MFLOPs", "params M", "nodes"]
    rows = [header]
    for s in results["per_c"]:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        rows.append([
            f"{s['c']:.1f}", str(s["n_models"]), fmt(s["hypervolume"], ".4g"), fmt(s["uniformity"], ".4f"),
            fmt(s["controllability"], ".3f"), fmt(s["controllability_loss"], ".3f"), fmt(s["delta_mtl"], "+.2f"),
            f"{100 * s['flops_fraction']:.1f}", f"{s['mflops']:.2f}", f"{s['params_m']:.3f}", f"{s['mean_nodes']:.1f}",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    cost = results["cost"]
    lines.append(
        f"mean cost over {cost['n_preferences']} Dirichlet(1) preferences: "
        + ", ".join(f"c={s['c']:.0f}: {100 * s['flops_fraction']:.1f}% FLOPs, {100 * s['params_fraction']:.1f}% params" for s in cost["per_c"])
        + f" (anchor {results['anchor']['mflops']:.1f} MFLOPs, {results['anchor']['params_m']:.2f} M params)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- pipeline
def run_paper_benchmark(
    name: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    amp: bool = False,
    steps_scale: float = 1.0,
    anchor_steps: int | None = None,
    edge_steps: int | None = None,
    weight_steps: int | None = None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    workers: int = 0,
    limit: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    n_preferences: int = 20,
    cost_preferences: int = 1000,
    hv_reference_factor: float = HV_REFERENCE_FACTOR,
    width_mult: float = 1.0,
    input_size: tuple[int, int] | None = None,
    backbone_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Train, save and evaluate a controller on one of the paper's benchmarks; returns ``results.json``'s content.

    Args:
        name: ``cifar100``, ``nyuv2``, ``pascal_context`` (5 tasks) or ``pascal_context_3``.
        root: the dataset folder in its usual layout (see :mod:`benchmarks.datasets`).
        out_dir: receives ``controller.pt`` and ``results.json``.
        device, amp: where to train and evaluate; mixed precision in all three stages.
        steps_scale: multiplies the paper's steps of every stage; ``anchor_steps``, ``edge_steps``,
            ``weight_steps`` override single stages.
        batch_size: every stage's batch (default: the CONFIG's); ``eval_batch_size`` likewise.
        workers: ``DataLoader`` worker processes (``pin_memory`` on CUDA).
        seed: controller initialisation, training preferences, loader shuffling (the evaluation
            preferences have their own fixed seed, :data:`PREFERENCE_SEED`).
        verbose: progress lines on stderr and the final table on stdout (``DYMU_QUIET=1`` silences them).
        n_preferences: evaluation preferences (paper: 20); ``cost_preferences``: preferences the
            mean cost is taken over (paper: 1000).
        hv_reference_factor: the hypervolume reference point in multiples of the single-task losses.
        width_mult, input_size, limit: test/debug knobs (see the module docstring).
        backbone_weights: a ``state_dict`` file for the backbone template (e.g. converted ImageNet
            weights), loaded before the streams are copied from it.

    Raises:
        DatasetError (a ValueError): a missing or malformed dataset file, named with the expected layout.
        ValueError: an unknown benchmark or a bad argument.
    """
    config = _config(name)
    if n_preferences < 2:
        raise ValueError(f"n_preferences must be >= 2 (controllability is a rank correlation), got {n_preferences}")
    if hv_reference_factor <= 1.0:
        raise ValueError(f"hv_reference_factor must be > 1 (the reference must lie beyond the single-task losses), got {hv_reference_factor}")
    verbose = verbose and not quiet_from_env()
    # Progress goes to stderr (as dymu's training reporters do), the result table to stdout.
    say = (lambda msg: print(f"[paper:{name}] {msg}", file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    start = time.time()
    dev = torch.device(device)
    out_dir = Path(out_dir)

    splits = _load_splits(name, root, input_size, limit, seed)
    data_size = _data_input_size(splits["test"])
    if name.startswith("pascal_context"):
        model_size = tuple(input_size or config["input_size"])
    else:
        if input_size is not None and tuple(input_size) != data_size:
            raise ValueError(f"{name}'s images are {data_size[0]}x{data_size[1]}; input_size applies to pascal_context only")
        model_size = data_size
    say(f"data from {root}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items() if k != "affinity") + f" images, input {model_size[0]}x{model_size[1]}")

    bs = {
        "stage0": batch_size or int(config["stage0"]["batch_size"]),
        "stage1": batch_size or int(config["stage1"]["batch_size"]),
        "stage2": batch_size or int(config["stage2"]["batch_size"]),
        "eval": eval_batch_size or int(config.get("eval_batch_size", 32)),
    }
    steps = paper_steps(name, len(splits["train"]), batch_size=bs["stage0"], steps_scale=steps_scale)
    steps.update({k: int(v) for k, v in (("anchor", anchor_steps), ("edge", edge_steps), ("weights", weight_steps)) if v is not None})
    anchor_cfg, edge_cfg, weight_cfg, deviations = _stage_configs(name, steps, amp=amp, seed=seed)
    if backbone_weights is not None:
        deviations = [d for d in deviations if "pretrained" not in d.lower()]

    loaders = {}
    for stage in ("stage0", "stage1", "stage2"):
        if bs[stage] not in loaders:
            loaders[bs[stage]] = _loader(splits["train"], bs[stage], train=True, workers=workers, device=dev, seed=seed)
    val = _loader(splits["val"], bs["eval"], train=False, workers=workers, device=dev, seed=seed)
    test = _loader(splits["test"], bs["eval"], train=False, workers=workers, device=dev, seed=seed)
    affinity_data = _loader(splits["affinity"], bs["eval"], train=True, workers=0, device=dev, seed=seed + 1)

    torch.manual_seed(seed)
    backbone = _build_backbone(name, width_mult, model_size, backbone_weights)
    ctrl = dymu.Controller(backbone, name, seed=seed).to(dev)
    table_costs = ctrl.cost_table
    say(f"anchor: {ctrl.n_tasks} x {backbone.arch} (width {width_mult:g}), {ctrl.n_layers} blocks, "
        f"{table_costs.anchor_flops / 1e6:.1f} MFLOPs per image, {table_costs.anchor_params / 1e6:.2f} M params; "
        f"steps {steps}, batch {bs['stage0']}")

    say("stage 0: single-task streams (model selection on val)")
    ctrl.fit_anchor(loaders[bs["stage0"]], val, config=anchor_cfg, device=dev, verbose=verbose)
    single_task = evaluate_streams(ctrl.anchor, ctrl.tasks, test, dev)
    say("single-task test metrics: " + "  ".join(f"{t.name} {single_task[t.name][t.primary]:.4f}" for t in ctrl.tasks[:6])
        + ("  ..." if ctrl.n_tasks > 6 else ""))

    say("task affinity (RSA on the frozen streams)")
    # bn_stats="anchor" never re-estimates BatchNorm, so no calibration images go into the checkpoint.
    calibration = 0 if edge_cfg.bn_stats == "anchor" else 512
    ctrl.fit_affinity(affinity_data, calibration_samples=calibration, device=dev)
    say("stage 1: edge hypernet")
    ctrl.fit_edge(loaders[bs["stage1"]], config=edge_cfg, device=dev, verbose=verbose)
    say("stage 2: weight hypernet")
    ctrl.fit_weights(loaders[bs["stage2"]], config=weight_cfg, device=dev, verbose=verbose)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ctrl.save(out_dir / "controller.pt")
    say(f"saved {checkpoint}")

    prefs = dirichlet_preferences(n_preferences, ctrl.n_tasks, alpha=1.0, seed=PREFERENCE_SEED)
    say(f"evaluating {n_preferences} preferences x c in {list(EVAL_CS)} on {len(splits['test'])} test images")
    table = ctrl.evaluate(test, prefs, cs=list(EVAL_CS), device=dev, verbose=verbose)
    per_c = summarize(table, ctrl.tasks, single_task, anchor_params=table_costs.anchor_params, hv_reference_factor=hv_reference_factor)
    cost = _cost_over_preferences(ctrl, cost_preferences, COST_SEED)
    st_loss = [single_task[t.name]["loss"] for t in ctrl.tasks]

    results = {
        "benchmark": name,
        "tasks": ctrl.task_names,
        "primary_metrics": {t.name: t.primary for t in ctrl.tasks},
        "higher_is_better": {t.name: t.higher_is_better for t in ctrl.tasks},
        "seed": seed,
        "versions": versions(),
        "config": config,
        "run": {
            "root": str(root),
            "device": str(dev),
            "amp": amp,
            "steps_scale": steps_scale,
            "steps": steps,
            "batch_size": bs,
            "workers": workers,
            "limit": limit,
            "width_mult": width_mult,
            "input_size": list(model_size),
            "backbone": backbone.recipe,
            "backbone_weights": None if backbone_weights is None else str(backbone_weights),
            "n_preferences": n_preferences,
            "stage_configs": {"anchor": asdict(anchor_cfg), "edge": asdict(edge_cfg), "weights": asdict(weight_cfg)},
        },
        "deviations": deviations,
        "data": {k: len(v) for k, v in splits.items() if k != "affinity"},
        "protocol": {
            "preferences": f"{n_preferences} from Dirichlet(1), seed {PREFERENCE_SEED}; each built at c in {list(EVAL_CS)}",
            "hypervolume": "losses divided by the single-task streams' test losses; reference point "
                           f"{hv_reference_factor:g} on every axis (= {hv_reference_factor:g} x each single-task test loss)",
            "hv_reference_factor": hv_reference_factor,
            "hv_reference_point_raw": [hv_reference_factor * v for v in st_loss],
            "uniformity": "EPO's mu_r of the normalised test losses, mean over preferences",
            "controllability": "mean over tasks of Spearman(r_i, primary metric oriented higher-better); "
                               "controllability_loss uses the negated test loss; null when undefined",
            "delta_mtl": "primary metrics vs the single-task streams on test, percent, mean over preferences",
            "delta_mtl_excluded_tasks": [t.name for t in ctrl.tasks if single_task[t.name][t.primary] == 0],
            "cost": "FLOPs (FlopCounterMode: conv and matmul, multiply-add = 2) and parameters per image",
        },
        "anchor": {
            "flops": table_costs.anchor_flops,
            "params": table_costs.anchor_params,
            "mflops": table_costs.anchor_flops / 1e6,
            "params_m": table_costs.anchor_params / 1e6,
            "min_budget": ctrl.min_budget,
        },
        "stage_seconds": {k: v.get("seconds") for k, v in ctrl.stages.items() if isinstance(v, dict) and "seconds" in v},
        "single_task": single_task,
        "single_task_val": ctrl.stages["anchor"]["best_val"],
        "loss_scales": ctrl.loss_scales.tolist(),
        "affinity": np.asarray(ctrl.affinity.matrix).tolist(),
        "per_c": per_c,
        "cost": cost,
        "preferences": prefs,
        "evaluations": table.to_dict(),
        "checkpoint": str(checkpoint),
        "seconds": time.time() - start,
    }
    results = jsonable(results)
    path = write_json(out_dir / "results.json", results)
    if verbose:
        print(_format_table(results), flush=True)
        say(f"wrote {path} ({results['seconds']:.0f} s)")
    return results


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.paper",
        description="Train and evaluate a dymu controller on one of the paper's benchmarks (see the module docstring).",
    )
    p.add_argument("benchmark", choices=PAPER_BENCHMARKS)
    p.add_argument("--root", required=True, help="dataset folder in its usual layout")
    p.add_argument("--out", default=None, help="output folder (default runs/paper/<benchmark>)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="mixed precision in all stages")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply the paper's steps of every stage")
    p.add_argument("--anchor-steps", type=int, default=None)
    p.add_argument("--edge-steps", type=int, default=None)
    p.add_argument("--weight-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="every stage's batch (default: the dataset CONFIG's)")
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--n-preferences", type=int, default=20, help="evaluation preferences (paper: 20)")
    p.add_argument("--cost-preferences", type=int, default=1000, help="preferences the mean cost is taken over")
    p.add_argument("--hv-factor", type=float, default=HV_REFERENCE_FACTOR, help="HV reference point, in multiples of the single-task losses")
    p.add_argument("--backbone-weights", default=None, help="state_dict file for the backbone template (e.g. ImageNet weights)")
    debug = p.add_argument_group("test/debug knobs (not the paper's settings)")
    debug.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    debug.add_argument("--width-mult", type=float, default=1.0, help="scale every backbone width")
    debug.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="PASCAL-Context crop size")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unreadable data)."""
    args = _parser().parse_args(argv)
    out = args.out or os.path.join("runs", "paper", args.benchmark)
    try:
        run_paper_benchmark(
            args.benchmark,
            args.root,
            out,
            device=args.device,
            amp=args.amp,
            steps_scale=args.steps_scale,
            anchor_steps=args.anchor_steps,
            edge_steps=args.edge_steps,
            weight_steps=args.weight_steps,
            batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size,
            workers=args.workers,
            limit=args.limit,
            seed=args.seed,
            verbose=not args.quiet,
            n_preferences=args.n_preferences,
            cost_preferences=args.cost_preferences,
            hv_reference_factor=args.hv_factor,
            width_mult=args.width_mult,
            input_size=None if args.input_size is None else tuple(args.input_size),
            backbone_weights=args.backbone_weights,
        )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
