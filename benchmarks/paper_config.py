"""What defines a paper run: :class:`PaperConfig` (its command line is generated from it), the paper's step
counts (:func:`paper_steps`) and the dymu stage configs derived from the datasets' CONFIGs.

Steps. Stage 0 runs ``CONFIG["stage0"]["epochs"]`` epochs of the benchmark's ``train`` split; stages
1 and 2 run ``CONFIG["stage1"/"stage2"]["steps"]`` (30K) steps with Adam 1e-3, the learning rate
multiplied by 0.3 every 14K steps (``lr_milestones`` 14/30 and 28/30 of training). ``steps_scale``
scales all three (at least 1 step each); ``anchor_steps``/``edge_steps``/``weight_steps`` override
them. Stage 0 follows the dataset CONFIG's optimiser and schedule (Adam or SGD with nesterov momentum;
constant, step or poly learning rate).

>>> paper_steps("cifar100", 45_000)       # 75 epochs of 351 batches of 128; 30K steps in stages 1 and 2
{'anchor': 26325, 'edge': 30000, 'weights': 30000}
>>> PaperConfig("nyuv2", "data/nyuv2", steps_scale=0.5).out_dir
'runs/paper/nyuv2'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import dymu

from .datasets import BENCHMARKS
from .protocol import HV_REFERENCE_FACTOR

__all__ = ["PAPER_BENCHMARKS", "ANCHOR_VALIDATIONS", "HV_REFERENCE_FACTOR", "PaperConfig", "benchmark_config",
           "paper_steps", "stage_configs"]

PAPER_BENCHMARKS = ("cifar100", "nyuv2", "pascal_context", "pascal_context_3")

#: how many validation passes stage 0 makes over its run (model selection keeps each stream's best)
ANCHOR_VALIDATIONS = 25

_DEBUG = "test/debug knobs (not the paper's settings)"


@dataclass
class PaperConfig:
    """One paper run (stored in ``results.json`` under ``run``; ``python -m benchmarks.paper`` builds it).

    Attributes:
        benchmark: cifar100, nyuv2, pascal_context (5 tasks) or pascal_context_3.
        root: dataset folder in its usual layout (see benchmarks.datasets).
        out: output folder for controller.pt and results.json (default runs/paper/<benchmark>).
        device: where to train and evaluate: cpu, cuda, cuda:1, ...
        amp: mixed precision in all stages.
        steps_scale: multiply the paper's steps of every stage.
        anchor_steps: stage 0 steps (overrides the scaled paper steps).
        edge_steps: stage 1 steps (overrides the scaled paper steps).
        weight_steps: stage 2 steps (overrides the scaled paper steps).
        batch_size: every stage's batch (default: the dataset CONFIG's).
        eval_batch_size: evaluation batch (default: the dataset CONFIG's).
        workers: DataLoader worker processes (pin_memory on CUDA).
        seed: controller initialisation, training preferences, loader shuffling (the evaluation preferences
            have their own fixed seed).
        verbose: progress lines on stderr and the final table on stdout (DYMU_QUIET=1 silences them).
        n_preferences: evaluation preferences (paper: 20).
        cost_preferences: preferences the mean cost is taken over (paper: 1000).
        hv_reference_factor: HV reference point, in multiples of the single-task losses.
        backbone_weights: state_dict file for the backbone template (e.g. ImageNet weights), loaded before
            the streams are copied from it.
        limit: at most this many images per split.
        width_mult: scale every backbone width.
        input_size: PASCAL-Context crop size (NYUv2 and CIFAR-100 use their data's size).
    """

    benchmark: str = field(metadata={"cli": {"positional": True, "choices": PAPER_BENCHMARKS}})
    root: str
    out: str | None = None
    device: str = "cpu"
    amp: bool = False
    steps_scale: float = 1.0
    anchor_steps: int | None = None
    edge_steps: int | None = None
    weight_steps: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    workers: int = 0
    seed: int = 0
    verbose: bool = field(default=True, metadata={"cli": {"flag": "--quiet", "help": "no progress lines"}})
    n_preferences: int = 20
    cost_preferences: int = 1000
    hv_reference_factor: float = field(default=HV_REFERENCE_FACTOR, metadata={"cli": {"flag": "--hv-factor"}})
    backbone_weights: str | None = None
    limit: int | None = field(default=None, metadata={"cli": {"group": _DEBUG}})
    width_mult: float = field(default=1.0, metadata={"cli": {"group": _DEBUG}})
    input_size: tuple[int, int] | None = field(default=None, metadata={"cli": {"group": _DEBUG, "metavar": ("H", "W")}})

    @property
    def out_dir(self) -> str:
        return self.out or os.path.join("runs", "paper", self.benchmark)

    def check(self) -> None:
        """Refuse what cannot run.

        Raises:
            ValueError: an unknown benchmark, fewer than 2 preferences, a reference factor <= 1.
        """
        benchmark_config(self.benchmark)
        if self.n_preferences < 2:
            raise ValueError(f"n_preferences must be >= 2 (controllability is a rank correlation), got {self.n_preferences}")
        if self.hv_reference_factor <= 1.0:
            raise ValueError(f"hv_reference_factor must be > 1 (the reference must lie beyond the single-task losses), "
                             f"got {self.hv_reference_factor}")

    def stage_steps(self, n_train: int, batch_size: int) -> dict[str, int]:
        """The steps of the three stages: the paper's, scaled, with this run's overrides."""
        steps = paper_steps(self.benchmark, n_train, batch_size=batch_size, steps_scale=self.steps_scale)
        given = {"anchor": self.anchor_steps, "edge": self.edge_steps, "weights": self.weight_steps}
        steps.update({k: int(v) for k, v in given.items() if v is not None})
        return steps


def benchmark_config(name: str) -> dict[str, Any]:
    """The dataset CONFIG of paper benchmark ``name``.

    Raises:
        ValueError: not a paper benchmark.
    """
    if name not in PAPER_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(PAPER_BENCHMARKS)}")
    return BENCHMARKS[name].config


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
    config = benchmark_config(name)
    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be > 0, got {steps_scale}")
    bs0 = batch_size or int(config["stage0"]["batch_size"])
    per_epoch = max(1, n_train // bs0)
    return {
        "anchor": _scaled(int(config["stage0"]["epochs"]) * per_epoch, steps_scale),
        "edge": _scaled(int(config["stage1"]["steps"]), steps_scale),
        "weights": _scaled(int(config["stage2"]["steps"]), steps_scale),
    }


def stage_configs(name: str, steps: dict[str, int], *, amp: bool, seed: int) -> tuple[dymu.AnchorConfig, dymu.EdgeConfig, dymu.WeightConfig, list[str]]:
    """dymu stage configs from the dataset CONFIG, and the ways they differ from it."""
    config = benchmark_config(name)
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

