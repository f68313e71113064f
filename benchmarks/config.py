"""What defines a CPU benchmark run: the methods, the presets of every benchmark and mode (:data:`MODES`),
and :class:`RunConfig` (stored in the results file; the command line of :mod:`benchmarks.run` is generated
from its fields).

>>> config = make_config("multifashion", "full")
>>> config.mode, config.seeds, config.stem, config.steps.total
('full', [0, 1, 2], 'multifashion', 3600)
>>> make_config("multifashion", "quick", steps=(1, 1, 1)).mode     # a changed budget is no preset any more
'quick-custom'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hyper import RegulariserConfig

from .methods import StepBudget

__all__ = ["BENCHMARKS", "METHODS", "ALWAYS", "ABLATIONS", "C_ONLY", "MODES", "RunConfig", "make_config"]

BENCHMARKS = ("multifashion", "fashion_digits")

#: every method, in the order they run within a seed
METHODS = (
    "dymu",
    "single_task",
    "dymu_paper",
    "dymu_no_weight_hypernet",
    "dymu_no_inactive",
    "dymu_no_affinity_depth",
    "dymu_all_active",
    "phn",
    "phn_bn",
    "static_tree",
    "static_equal_cost",
    "distilled_trunk",
    "cross_stitch",
    "hard_sharing",
)
ALWAYS = ("dymu", "single_task")
ABLATIONS: dict[str, RegulariserConfig] = {
    "dymu_no_inactive": RegulariserConfig(use_inactive=False),
    "dymu_no_affinity_depth": RegulariserConfig(use_affinity=False, use_depth=False),
    "dymu_all_active": RegulariserConfig(all_active=True),
}

#: per benchmark and mode: step budgets, evaluation sizes. ``hs_preferences``: how many of the evaluation
#: preferences hard sharing trains a model for (None: all); ``test_examples``: the first this many test
#: examples (None: the whole test split); ``val_examples``: the validation examples (a fixed prefix of the
#: split) every method selects its models on (the controller's streams and loss scales, PHN's 5 fixed
#: validation preferences about ten times per run, every static network about ten times).
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "multifashion": {
        "quick": {"seeds": [0], "steps": (300, 200, 120), "supernet_steps": 100, "n_preferences": 7, "hs_preferences": 3,
                  "test_examples": 4000, "cost_preferences": 200, "val_examples": 1000},
        # [choice] the split after stage 0, the supernet setting and stage 1's warm start: chosen on validation
        # (benchmarks/results/split; the control bars and the warm start: multifashion-control-*.json)
        "full": {"seeds": [0, 1, 2], "steps": (1500, 200, 100), "supernet_steps": 1800, "n_preferences": None, "hs_preferences": 5,
                 "supernet_config": {"lr": 1e-3, "distill": "none"}, "edge_config": {"warm_start": "merge"},
                 "test_examples": 10000, "cost_preferences": 1000, "val_examples": 3000},
    },
    "fashion_digits": {
        "quick": {"seeds": [0], "steps": (150, 100, 60), "supernet_steps": 60, "n_preferences": 5, "hs_preferences": 2,
                  "test_examples": 1000, "cost_preferences": 200, "val_examples": 1000},
        # [choice] chosen on validation as for multifashion (benchmarks/results/split; the measured search:
        # fashion_digits-measured-a.json, the highest score where no candidate clears the control bars; solo
        # streams: fashion_digits-solo-a.json; the longer supernet stage on the nested affinity trees:
        # fashion_digits-family-drawn.json against -solo-long.json and -family.json; four budget trees per step:
        # fashion_digits-family-4trees.json; benchmarks/results/family ran the two-tree preset before it; one own tree
        # per task at the minimum budget: fashion_digits-own-min-1t.json against -family4-here.json, one stage 0;
        # benchmarks/results/family4 ran the preset before it)
        "full": {"seeds": [0, 1, 2], "steps": (600, 50, 25), "supernet_steps": 875, "n_preferences": None, "hs_preferences": 5,
                 "supernet_config": {"lr": 1e-3, "distill": "none", "solo": True, "anchor_weight": 0.1, "budget_trees": 4,
                                     "tree_family": "affinity", "family_one_stream": "drawn", "own_trees": [0.0],
                                     "own_groups": 6, "own_min_share": 0.8},
                 "edge_config": {"warm_start": "measured", "path_samples": 1000},
                 "test_examples": 3000, "cost_preferences": 1000, "val_examples": 3000},
    },
}
#: methods evaluated at c = 0 and c = 1 only (the paper's settings); the controller (both control modes) also
#: gets the budgets
C_ONLY = ("dymu_no_weight_hypernet", *ABLATIONS)


@dataclass
class RunConfig:
    """Everything that defines a benchmark run (stored in the results file).

    Attributes:
        benchmark: multifashion or fashion_digits.
        mode: quick, full, or either with "-custom" once a preset size is changed.
        seeds: training seeds (default: the mode's).
        steps: step budgets of the controller's stages 0, 1 and 2; their total is every method's training
            budget (:data:`benchmarks.protocol.TRAINING_BUDGET_RULE`).
        n_preferences: evaluation preferences (None: the protocol's 25 rays or 20 draws).
        hs_preferences: how many evaluation preferences hard sharing trains for (None: all).
        test_examples: the first this many test examples (None: the whole test split).
        cost_preferences: preferences the controller's mean cost is taken over.
        methods: a subset of the methods (dymu and single_task always run).
        val_examples: the validation examples every method selects its models on.
        supernet_steps: the supernet stage's steps, replacing the preset's (explicit ``steps`` without it: 0).
        supernet_config: :class:`dymu.SupernetConfig` fields the controller's supernet stage gets (the preset's:
            chosen on validation by :mod:`benchmarks.split`).
        edge_config: :class:`dymu.EdgeConfig` fields the controller's stage 1 gets (the preset's: chosen on
            validation by :mod:`benchmarks.split`).
        ablation_weight_hypernet: train stage 2 (the weight hypernet) for the ablations too.
        batch_size: training batch of every method.
        eval_batch_size: validation and test batch.
        data_seed: seed the data set is built with (default 0).
        limit: use only the first LIMIT Fashion-MNIST images of each split.
        data_root: folder with the source files (default: $DYMU_DATA, then the standard places).
        device: where to train and evaluate.
        out: folder for the JSON and PNG files.
        plots: write the PNG plots.
        calibration_steps: steps per stage when measuring the per-step costs.
        threads: torch CPU threads (default: torch's choice, the number of cores).
    """

    benchmark: str = field(metadata={"cli": {"skip": True}})
    mode: str = field(metadata={"cli": {"skip": True}})
    seeds: list[int]
    steps: StepBudget = field(metadata={"cli": {"type": int, "nargs": 3, "metavar": ("ANCHOR", "EDGE", "WEIGHTS"), "hidden": True}})
    n_preferences: int | None = field(metadata={"cli": {"hidden": True}})
    hs_preferences: int | None = field(metadata={"cli": {"hidden": True}})
    test_examples: int | None = field(metadata={"cli": {"hidden": True}})
    cost_preferences: int = field(metadata={"cli": {"hidden": True}})
    methods: list[str] = field(metadata={"cli": {"choices": METHODS}})
    val_examples: int = field(default=2000, metadata={"cli": {"hidden": True}})
    supernet_steps: int | None = field(default=None, metadata={"cli": {"hidden": True}})
    supernet_config: dict[str, Any] = field(default_factory=dict, metadata={"cli": {"skip": True}})
    edge_config: dict[str, Any] = field(default_factory=dict, metadata={"cli": {"skip": True}})
    ablation_weight_hypernet: bool = field(default=False, metadata={"cli": {"flag": "--ablations-with-weight-hypernet"}})
    batch_size: int = field(default=128, metadata={"cli": {"hidden": True}})
    eval_batch_size: int = field(default=1000, metadata={"cli": {"hidden": True}})
    data_seed: int = 0
    limit: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    out: str = "benchmarks/results"
    plots: bool = field(default=True, metadata={"cli": {"flag": "--no-plots", "help": "no PNG plots"}})
    calibration_steps: int = field(default=6, metadata={"cli": {"hidden": True}})
    threads: int | None = None

    @property
    def stem(self) -> str:
        return self.benchmark if self.mode == "full" else f"{self.benchmark}-{self.mode}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = asdict(self.steps)
        return out


def make_config(benchmark: str, mode: str = "quick", **overrides: Any) -> RunConfig:
    """The preset of ``benchmark`` in ``mode`` (``"quick"`` or ``"full"``) with ``overrides`` applied
    (``None`` values are ignored). Overriding a step budget or size turns the mode into ``"custom"``."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    preset = dict(MODES[benchmark][mode])
    anchor, edge, weights = preset.pop("steps")
    values: dict[str, Any] = {"benchmark": benchmark, "mode": mode, "steps": StepBudget(anchor, edge, weights, supernet=preset.pop("supernet_steps", 0)),
                              "methods": list(METHODS), **preset}
    changed = False
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "steps" and not isinstance(value, StepBudget):
            value = StepBudget(*value, batch_size=overrides.get("batch_size") or 128)
        if key in ("steps", "n_preferences", "hs_preferences", "test_examples", "cost_preferences", "limit", "batch_size"):
            changed = True
        values[key] = value
    if values.get("supernet_steps") is not None:
        values["steps"] = replace(values["steps"], supernet=int(values["supernet_steps"]))
        changed = True
    if "batch_size" in values and values["steps"].batch_size != values["batch_size"]:
        values["steps"] = replace(values["steps"], batch_size=values["batch_size"])
    unknown = [m for m in values["methods"] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the methods are {list(METHODS)}")
    values["methods"] = [m for m in METHODS if m in set(values["methods"]) | set(ALWAYS)]
    if changed:
        values["mode"] = "custom" if mode == "full" else f"{mode}-custom"
    return RunConfig(**values)

