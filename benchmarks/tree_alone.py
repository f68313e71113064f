"""One tree three ways, on validation: cut from a trained controller, or trained alone.

The controller serves every tree from one set of stream weights that its supernet stage trained for many
trees at once. This tool asks what that sharing costs one tree: the same architecture

* ``cut``: cut from the controller's anchor (and solo streams) as :meth:`dymu.Controller.build_model` cuts it,
  without the weight hypernet's adaptation (BatchNorm statistics as the controller's builds take them);
* ``stage0``: cut from the controller's frozen stage-0 streams (``seed{N}-teacher.pt`` beside the controller)
  and trained alone, jointly on the equal preference, for the controller's steps after stage 0: as many
  training images as the controller's later stages saw;
* ``fresh``: freshly initialised and trained alone for the controller's total steps, as the static baselines
  (``static_equal_cost``) are;

each scored on the run's validation examples (the test split is not read). The two trained ways use the
static baselines' recipe (:func:`benchmarks.baselines.common.train_static`: Adam, cosine decay, the state
with the best validation score kept), and each draws the run's batches from its first epoch (the seed's
order; the controller's later stages drew later epochs). The run's data settings (batch sizes, data seed,
validation examples) come from the results file beside the state folder, when there is one.

Usage (a controller a benchmark run saved, with its stage-0 streams)::

    python -m benchmarks.tree_alone benchmarks/results/family/fashion_digits-state/seed0-dymu.pt \\
        --benchmark fashion_digits --full --seed 0 --budget 0.6 --out benchmarks/results/tree-alone/fashion_digits-0.6.json

``--budget b`` takes the static affinity tree of the equal-cost baseline at ``b`` (the largest one within
``b`` times the anchor's FLOPs); ``--tree`` gives a tree's assignment instead (JSON, ``L`` rows of ``N``
stream ids). Prints one row per way and writes JSON with the tree, config, versions and commit;
``python -m benchmarks.tree_alone plot OUT.png RESULT.json ...`` draws such files side by side.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import dymu
from affinity import Tree
from dymu.checkpoint import versions
from dymu.data import build_benchmark
from dymu.derived import derive_model, recalibrate_batchnorm
from dymu.results import write_json
from dymu.supernet import frozen_copy

from .baselines import StaticTree
from .baselines.common import evaluate_model, tree_network
from .baselines.equal_cost import extra_share_for_budget
from .config import BENCHMARKS, make_config
from .loaders import run_loaders
from .methods import StepBudget
from .options import add_saved_controller, saved_seed
from .partial import results_file_of
from .orchestrate import git_state

__all__ = ["WAYS", "controller_steps", "tree_of", "plot_main", "main"]

WAYS = ("cut", "stage0", "fresh")
#: the run's data settings taken from its results file (the data root stays this machine's)
_RUN_FIELDS = ("batch_size", "eval_batch_size", "data_seed", "limit", "val_examples")


def controller_steps(ctrl: dymu.Controller) -> tuple[int, int]:
    """``(stage-0 steps, total steps)`` the controller trained: the total counts the supernet, edge and weight
    stages it ran."""
    steps = {name: int(((ctrl.stages.get(name) or {}).get("config") or {}).get("steps") or 0)
             for name in ("anchor", "supernet", "edge", "weights")}
    if steps["anchor"] < 1:
        raise ValueError("the controller has no trained stage 0 (its record gives no anchor steps)")
    return steps["anchor"], sum(steps.values())


def tree_of(ctrl: dymu.Controller, budget: float | None, assignment: Sequence[Sequence[int]] | None) -> Tree:
    """The tree to compare: ``assignment`` over the controller's tasks, or the equal-cost baseline's static affinity
    tree at ``budget`` (ValueError for a budget below the cheapest tree, or neither or both given)."""
    if (budget is None) == (assignment is None):
        raise ValueError("give exactly one of a budget and a tree")
    if assignment is not None:
        tree = Tree(ctrl.task_names, assignment)
        if tree.n_layers != ctrl.n_layers or any(node >= len(ctrl.task_names) for row in assignment for node in row):
            raise ValueError(f"the tree must have {ctrl.n_layers} layers of stream ids below {len(ctrl.task_names)}, "
                             f"got {[list(row) for row in assignment]}")
        return tree
    static = StaticTree(dymu.backbones.lenet, ctrl.tasks, StepBudget(1, 1, 1), ctrl.affinity,
                        extra_share_for_budget(ctrl.cost_table, budget), loss_scales=ctrl.loss_scales)
    return static.tree


def _cut(ctrl: dymu.Controller, tree: Tree) -> torch.nn.Module:
    model = derive_model(ctrl.anchor, tree, None, solo=ctrl.solo)
    if ctrl.bn_stats == "batch":  # as build_model does
        if ctrl.calibration is None:
            raise ValueError("this controller re-estimates BatchNorm statistics but holds no calibration inputs")
        recalibrate_batchnorm(model, (b for b in ctrl.calibration.split(128)))
    return model


def _trained(model: torch.nn.Module, ctrl: dymu.Controller, train, val_batches: list, steps: int, seed: int,
             desc: str) -> dict[str, Any]:
    """Train ``model`` alone with the static baselines' recipe, selecting on ``val_batches``; its training record."""
    recipe = StaticTree(dymu.backbones.lenet, ctrl.tasks, StepBudget(1, 1, 1), ctrl.affinity, 0.0,
                        loss_scales=ctrl.loss_scales, seed=seed)
    device = torch.device("cpu")
    train.set_epoch(0)  # the seed's batch order from its first epoch
    return recipe._train_static(model.requires_grad_(True), train, val_batches, recipe.equal_preference_weights(),
                                steps=steps, device=device, desc=desc, verbose=True)


def plot_main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.tree_alone plot OUT.png RESULT.json ...``: one panel per result file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tree_alone plot",
                                     description="plot results files of python -m benchmarks.tree_alone side by side")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("results", type=Path, nargs="+", help="results files (--out of earlier runs)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"no results file at {', '.join(missing)}")
    from .plots import plot_tree_alone

    print(f"wrote {plot_tree_alone([json.loads(p.read_text()) for p in args.results], args.out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plot"]:
        return plot_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tree_alone", description=__doc__.split("\n\n")[0])
    add_saved_controller(parser, BENCHMARKS, "the run's seed (the batch order and the fresh initialisation)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--budget", type=float, help="the equal-cost baseline's static affinity tree at this budget")
    which.add_argument("--tree", type=json.loads, help="a tree's assignment, JSON: L rows of N stream ids")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--val-examples", type=int, default=None, help="default: the mode's")
    parser.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.controller.is_file():
        parser.error(f"no controller file at {args.controller}")
    args.seed = saved_seed(parser, args.controller, args.seed)
    teacher_file = args.controller.with_name(f"seed{args.seed}-teacher.pt")
    if "stage0" in args.ways and not teacher_file.is_file():
        parser.error(f"the stage0 way needs the controller's stage-0 streams at {teacher_file} (saved by runs with a "
                     "supernet stage); leave it out with --ways cut fresh")
    torch.set_num_threads(args.threads)
    run_file = results_file_of(args.controller)
    saved = (json.loads(run_file.read_text()).get("config") or {}) if run_file.is_file() else {}
    fields = {k: saved.get(k) for k in _RUN_FIELDS}
    if args.val_examples:
        fields["val_examples"] = args.val_examples
    config = make_config(args.benchmark, args.mode or "quick", seeds=[args.seed], data_root=args.data_root, **fields)
    bench = build_benchmark(args.benchmark, config.data_seed, config.limit, config.data_root)
    ctrl = dymu.load(args.controller, tasks=bench.tasks())
    tree = tree_of(ctrl, args.budget, args.tree)
    anchor_steps, total = controller_steps(ctrl)
    train, val, _ = run_loaders(bench, config, args.seed)
    flops = ctrl.cost_table.tree_flops(tree.assignment) / ctrl.cost_table.anchor_flops
    print(f"tree {[list(row) for row in tree.assignment]} ({flops:.3f} of the anchor's FLOPs); the controller trained {anchor_steps} stage-0 "
          f"steps of {total}", flush=True)

    val_batches = list(val)  # read once: model selection and every way's score
    results: dict[str, Any] = {}
    for way in args.ways:
        start = time.time()
        record = None
        if way == "cut":
            model = _cut(ctrl, tree)
        elif way == "stage0":
            streams = frozen_copy(ctrl.anchor)
            streams.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
            model = derive_model(streams, tree, None)
            record = _trained(model, ctrl, train, val_batches, total - anchor_steps, args.seed, "stage0")
        else:
            model = tree_network(dymu.backbones.lenet, ctrl.tasks, tree, args.seed)
            record = _trained(model, ctrl, train, val_batches, total, args.seed, "fresh")
        metrics = evaluate_model(model.eval(), ctrl.tasks, val_batches, torch.device("cpu"))
        results[way] = {"metrics": metrics, "seconds": time.time() - start,
                        "steps": {"cut": 0, "stage0": total - anchor_steps, "fresh": total}[way],
                        "best_step": None if record is None else record["best_step"]}
        print(f"{way:>7s}: " + "  ".join(f"{t.name} loss {metrics[t.name]['loss']:.4f} {t.primary} "
                                          f"{metrics[t.name][t.primary]:.4f}" for t in ctrl.tasks), flush=True)
    if args.out is not None:
        write_json(args.out, {"command": "python -m benchmarks.tree_alone " + shlex.join(argv), "budget": args.budget,
                              "controller": str(args.controller), "benchmark": args.benchmark, "mode": args.mode or "quick",
                              "seed": args.seed, "tree": tree.to_dict(), "flops_fraction": flops,
                              "val_examples": config.val_examples, "ways": results, "versions": versions(),
                              "git": git_state()})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
