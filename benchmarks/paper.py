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

Pipeline (:func:`run_paper`): load the ``train`` (training minus a seeded validation subset), ``val`` and
``test`` splits (:mod:`benchmarks.paper_data`); build the anchor; ``fit_anchor`` (stage 0, each stream keeps
its best validation checkpoint), ``fit_affinity``, ``fit_edge`` (stage 1), ``fit_weights`` (stage 2); save
``out_dir/controller.pt``; evaluate on ``test``; write ``out_dir/results.json`` and print a table. The run is
a :class:`~benchmarks.paper_config.PaperConfig`, whose fields are also the command line's options; steps and
stage configs: :mod:`benchmarks.paper_config`. Where a run departs from the paper (random instead of
ImageNet-pretrained weights, dymu's stage 1-2 defaults), it says so under ``deviations`` in ``results.json``.

Evaluation: the protocol of :mod:`benchmarks.protocol`, the same code and JSON keys as the CPU benchmarks.
``n_preferences`` (20) Dirichlet(1) preferences (seed :data:`~benchmarks.protocol.PREFERENCE_SEED` whatever
the training seed), each built at c = 0 and c = 1 and evaluated on the whole ``test`` split; the single-task
baselines are the anchor's streams on ``test``, measured in the same run. The hypervolume is taken in
*normalised* loss space (:func:`~benchmarks.protocol.normalised_loss_space`: each test loss divided by its
single-task stream's, reference point ``hv_reference_factor`` (2.0) on every axis); ``results.json`` states
the reference point in both units. ``per_c`` holds one summary per ``c`` (:func:`benchmarks.protocol.summarise`),
``cost`` the mean planned cost over ``cost_preferences`` (1000) preferences
(:func:`benchmarks.protocol.planned_cost`).

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

Test/debug knobs (not the paper's settings): ``width_mult`` (every backbone width), ``input_size``
(PASCAL-Context crop size; NYUv2 and CIFAR-100 use their data's size), ``limit`` (at most this many images
per split), ``n_preferences``, ``cost_preferences``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import dymu
from dymu.checkpoint import versions
from dymu.progress import quiet_from_env
from dymu.results import jsonable, write_json
from dymu.training import evaluate_streams

from . import protocol
from .options import add_options, from_args
from .paper_config import PAPER_BENCHMARKS, PaperConfig, benchmark_config, paper_steps, stage_configs
from .paper_data import DatasetError, data_input_size, load_splits, loader, paper_backbone
from .paper_tasks import (
    cifar100_paper_tasks,
    nyuv2_paper_tasks,
    pascal_context_3_paper_tasks,
    pascal_context_paper_tasks,
)
from .protocol import COST_SEED, EVAL_CS, HV_REFERENCE_FACTOR, PREFERENCE_SEED

__all__ = [
    "PAPER_BENCHMARKS",
    "PREFERENCE_SEED",
    "COST_SEED",
    "HV_REFERENCE_FACTOR",
    "PaperConfig",
    "DatasetError",
    "cifar100_paper_tasks",
    "nyuv2_paper_tasks",
    "pascal_context_paper_tasks",
    "pascal_context_3_paper_tasks",
    "paper_steps",
    "run_paper",
    "run_paper_benchmark",
    "main",
]

Say = Callable[[str], None]


@dataclass
class _Prepared:
    """A run's data and training setup, before anything is trained."""

    splits: dict[str, Dataset]
    model_size: tuple[int, int]
    batch_sizes: dict[str, int]
    steps: dict[str, int]
    configs: tuple[dymu.AnchorConfig, dymu.EdgeConfig, dymu.WeightConfig]
    deviations: list[str]
    train: dict[str, DataLoader]  # stage -> loader (stages with the same batch share one)
    val: DataLoader
    test: DataLoader
    affinity: DataLoader


def _model_size(config: PaperConfig, test: Dataset) -> tuple[int, int]:
    """The anchor's input size: PASCAL-Context's crop, the data's own size elsewhere.

    Raises:
        ValueError: ``input_size`` given for a benchmark whose images have one size.
    """
    if config.benchmark.startswith("pascal_context"):
        return tuple(config.input_size or benchmark_config(config.benchmark)["input_size"])
    size = data_input_size(test)
    if config.input_size is not None and tuple(config.input_size) != size:
        raise ValueError(f"{config.benchmark}'s images are {size[0]}x{size[1]}; input_size applies to pascal_context only")
    return size


def _prepare(config: PaperConfig, device: torch.device, say: Say) -> _Prepared:
    """Read the splits, choose the batches and steps, derive the stage configs, make the loaders."""
    name, seed, cfg = config.benchmark, config.seed, benchmark_config(config.benchmark)
    splits = load_splits(name, config.root, config.input_size, config.limit, seed)
    model_size = _model_size(config, splits["test"])
    say(f"data from {config.root}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items() if k != "affinity")
        + f" images, input {model_size[0]}x{model_size[1]}")
    bs = {stage: config.batch_size or int(cfg[stage]["batch_size"]) for stage in ("stage0", "stage1", "stage2")}
    bs["eval"] = config.eval_batch_size or int(cfg.get("eval_batch_size", 32))
    steps = config.stage_steps(len(splits["train"]), bs["stage0"])
    anchor_cfg, edge_cfg, weight_cfg, deviations = stage_configs(name, steps, amp=config.amp, seed=seed)
    if config.backbone_weights is not None:
        deviations = [d for d in deviations if "pretrained" not in d.lower()]

    def make(split: str, batch: int, train: bool, workers: int = config.workers, seed: int = seed) -> DataLoader:
        return loader(splits[split], batch, train=train, workers=workers, device=device, seed=seed)

    by_batch = {b: make("train", b, True) for b in sorted(set(bs[s] for s in ("stage0", "stage1", "stage2")))}
    return _Prepared(
        splits=splits, model_size=model_size, batch_sizes=bs, steps=steps, configs=(anchor_cfg, edge_cfg, weight_cfg),
        deviations=deviations, train={s: by_batch[bs[s]] for s in ("stage0", "stage1", "stage2")},
        val=make("val", bs["eval"], False), test=make("test", bs["eval"], False),
        affinity=make("affinity", bs["eval"], True, workers=0, seed=seed + 1),
    )


@dataclass
class _Trained:
    """A trained and saved controller, and what the results need of its training."""

    ctrl: dymu.Controller
    single_task: dict[str, dict[str, float]]  # the streams' test metrics: the baselines
    checkpoint: Path
    backbone_recipe: dict[str, Any]


def _train(config: PaperConfig, prep: _Prepared, device: torch.device, verbose: bool, say: Say) -> _Trained:
    """Stages 0-2 on ``prep``'s loaders, then save to ``out_dir/controller.pt``."""
    anchor_cfg, edge_cfg, weight_cfg = prep.configs
    torch.manual_seed(config.seed)
    backbone = paper_backbone(config.benchmark, config.width_mult, prep.model_size, config.backbone_weights)
    # converted pretrained weights are kept; a random backbone is initialised from the run's seed
    init = "keep" if config.backbone_weights else "seed"
    ctrl = dymu.Controller(backbone, config.benchmark, seed=config.seed, backbone_init=init).to(device)
    costs = ctrl.cost_table
    say(f"anchor: {ctrl.n_tasks} x {backbone.arch} (width {config.width_mult:g}), {ctrl.n_layers} blocks, "
        f"{costs.anchor_flops / 1e6:.1f} MFLOPs per image, {costs.anchor_params / 1e6:.2f} M params; "
        f"steps {prep.steps}, batch {prep.batch_sizes['stage0']}")
    say("stage 0: single-task streams (model selection on val)")
    ctrl.fit_anchor(prep.train["stage0"], prep.val, config=anchor_cfg, device=device, verbose=verbose)
    single_task = evaluate_streams(ctrl.anchor, ctrl.tasks, prep.test, device)
    say("single-task test metrics: " + "  ".join(f"{t.name} {single_task[t.name][t.primary]:.4f}" for t in ctrl.tasks[:6])
        + ("  ..." if ctrl.n_tasks > 6 else ""))
    say("task affinity (RSA on the frozen streams)")
    # bn_stats="anchor" never re-estimates BatchNorm, so no calibration images go into the checkpoint.
    calibration = 0 if edge_cfg.bn_stats == "anchor" else 512
    ctrl.fit_affinity(prep.affinity, calibration_samples=calibration, device=device)
    say("stage 1: edge hypernet")
    ctrl.fit_edge(prep.train["stage1"], prep.val, config=edge_cfg, device=device, verbose=verbose)
    say("stage 2: weight hypernet")
    ctrl.fit_weights(prep.train["stage2"], prep.val, config=weight_cfg, device=device, verbose=verbose)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ctrl.save(out_dir / "controller.pt")
    say(f"saved {checkpoint}")
    return _Trained(ctrl, single_task, checkpoint, backbone.recipe)


def _evaluate(config: PaperConfig, ctrl: dymu.Controller, prep: _Prepared, single_task: dict, device: torch.device,
              verbose: bool, say: Say) -> dict[str, Any]:
    """The protocol's numbers: ``{"preferences" [P, N], "space", "settings", "table", "per_c", "cost"}``."""
    prefs = protocol.evaluation_preferences(ctrl.n_tasks, config.n_preferences)
    settings = protocol.cs_settings(EVAL_CS)
    say(f"evaluating {config.n_preferences} preferences x c in {list(EVAL_CS)} on {len(prep.splits['test'])} test images")
    table = ctrl.evaluate(prep.test, prefs, cs=list(EVAL_CS), device=device, verbose=verbose)
    space = protocol.normalised_loss_space([single_task[t.name]["loss"] for t in ctrl.tasks], config.hv_reference_factor)
    costs = ctrl.cost_table
    summary = protocol.summarise(protocol.records_from_table(table, ctrl.tasks), ctrl.tasks, space, single_task,
                                 anchor=(costs.anchor_flops, costs.anchor_params))
    cost_prefs = protocol.cost_preferences(ctrl.n_tasks, config.cost_preferences, COST_SEED)
    return {
        "preferences": prefs,
        "space": space,
        "settings": settings,
        "table": table,
        "per_c": [{"c": s.c, "setting": s.name, **summary[s.name]} for s in settings],
        "cost": protocol.planned_cost(ctrl, settings, cost_prefs, curve_cs=()),
    }


def _results(config: PaperConfig, prep: _Prepared, trained: _Trained, evaluation: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``results.json``'s content."""
    ctrl, single_task = trained.ctrl, trained.single_task
    anchor_cfg, edge_cfg, weight_cfg = prep.configs
    costs = ctrl.cost_table
    excluded = [t.name for t in ctrl.tasks if single_task[t.name][t.primary] == 0]
    run = {
        **asdict(config),
        "root": str(config.root),
        "out": config.out_dir,
        "steps": prep.steps,
        "batch_size": prep.batch_sizes,
        "input_size": list(prep.model_size),
        "backbone": trained.backbone_recipe,
        "stage_configs": {"anchor": asdict(anchor_cfg), "edge": asdict(edge_cfg), "weights": asdict(weight_cfg)},
    }
    return jsonable({
        "benchmark": config.benchmark,
        "tasks": ctrl.task_names,
        "primary_metrics": {t.name: t.primary for t in ctrl.tasks},
        "higher_is_better": {t.name: t.higher_is_better for t in ctrl.tasks},
        "seed": config.seed,
        "versions": versions(),
        "config": benchmark_config(config.benchmark),
        "run": run,
        "deviations": prep.deviations,
        "data": {k: len(v) for k, v in prep.splits.items() if k != "affinity"},
        "protocol": protocol.describe(evaluation["space"], evaluation["preferences"], evaluation["settings"], [],
                                      config.cost_preferences, delta_mtl_excluded_tasks=excluded),
        "anchor": {
            "flops": costs.anchor_flops,
            "params": costs.anchor_params,
            "mflops": costs.anchor_flops / 1e6,
            "params_m": costs.anchor_params / 1e6,
            "min_budget": ctrl.min_budget,
        },
        "stage_seconds": {k: v.get("seconds") for k, v in ctrl.stages.items() if isinstance(v, dict) and "seconds" in v},
        "single_task": single_task,
        "single_task_val": ctrl.stages["anchor"]["best_val"],
        "loss_scales": ctrl.loss_scales.tolist(),
        "affinity": np.asarray(ctrl.affinity.matrix).tolist(),
        "per_c": evaluation["per_c"],
        "cost": evaluation["cost"],
        "preferences": evaluation["preferences"],
        "evaluations": evaluation["table"].to_dict(),
        "checkpoint": str(trained.checkpoint),
        "seconds": seconds,
    })


def run_paper(config: PaperConfig) -> dict[str, Any]:
    """Train, save and evaluate a controller on one of the paper's benchmarks; returns ``results.json``'s content.

    Raises:
        DatasetError (a ValueError): a missing or malformed dataset file, named with the expected layout.
        ValueError: an unknown benchmark or a bad argument.
    """
    config.check()
    verbose = config.verbose and not quiet_from_env()
    # Progress goes to stderr (as dymu's training reporters do), the result table to stdout.
    say: Say = (lambda msg: print(f"[paper:{config.benchmark}] {msg}", file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    start = time.time()
    device = torch.device(config.device)
    prep = _prepare(config, device, say)
    trained = _train(config, prep, device, verbose, say)
    evaluation = _evaluate(config, trained.ctrl, prep, trained.single_task, device, verbose, say)
    results = _results(config, prep, trained, evaluation, time.time() - start)
    path = write_json(Path(config.out_dir) / "results.json", results)
    if verbose:
        print(protocol.format_paper_table(results), flush=True)
        say(f"wrote {path} ({results['seconds']:.0f} s)")
    return results


def run_paper_benchmark(name: str, root: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """:func:`run_paper` with the run given as ``name``, ``root``, ``out_dir`` and the other fields of
    :class:`~benchmarks.paper_config.PaperConfig` as keywords (``device``, ``steps_scale``, ...)."""
    return run_paper(PaperConfig(benchmark=name, root=str(root), out=str(out_dir), **options))


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.paper",
        description="Train and evaluate a dymu controller on one of the paper's benchmarks (see the module docstring).",
    )
    add_options(parser, PaperConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unreadable data)."""
    config = from_args(PaperConfig, _parser().parse_args(argv))
    try:
        run_paper(config)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
