"""Choose, on validation, how the controller spends its training budget after stage 0.

Under :data:`benchmarks.protocol.TRAINING_BUDGET_RULE` the controller's stages share one budget of
``StepBudget.total`` steps, and only the stage-0 and supernet steps train features: the hypernets' steps
change no weight of a path. This command trains stage 0 once, then one controller per candidate split of
the remaining steps (supernet / edge / weights, same total) and setting (supernet's, stage 1's warm start), and
scores each on the
validation split, never on test:

* ``hv_full``: the hypervolume of the models built at budget 1 for the run's evaluation preferences;
* ``hv_min``: the same at the minimum budget (one stream and the heads);
* ``hv_mid``: the same halfway between them, where the edge hypernet's trees decide;
* ``score = hv_full + hv_mid + hv_min``: across the budget range (its ends are what the single-network
  baselines are compared with);
* the control bars of "Control that works", on validation: Spearman controllability at the halfway budget
  (``controllability_mid``, at least :data:`CONTROL_BAR`, every task's above :data:`TASK_BAR`), and the planned mean cost over the protocol's
  1000 cost preferences inside ``[0.8 b, b]`` at each budget of :data:`benchmarks.protocol.COST_BUDGETS` with
  the fallback merge under 5 % (``cost_band``).

The chosen candidate has the highest score among those that clear both control bars (when none does, the
highest score, and the table says so): an HV-only score chose a split that starved the edge hypernet and
lost the control a user asks for.

The reference point is the run's (multifashion (2, 2); elsewhere the input-blind losses on the training split).

Usage::

    python -m benchmarks.split multifashion --full --seed 0 \\
        --candidate supernet=500,edge=1000,weights=600 \\
        --candidate supernet=1500,edge=400,weights=200,lr=0.001 --out benchmarks/results/split/multifashion.json

Writes the JSON (config, seed, candidates with their scores, per-stage seconds, versions, commit) after every
candidate, saves each candidate's controller in ``OUT_STEM-state/candidate<i>.pt`` (``i`` from 1) (``Controller.save``; not
committed: ``python -m benchmarks.searches`` looks inside one without training it again) and prints a markdown table of the candidates with the chosen one marked. Candidates scored by
several invocations on the same stage 0 (to run them side by side) are compared in one table by
``python -m benchmarks.split --show FILE [FILE ...]``, which refuses files of another stage 0.

>>> parse_candidate("supernet=1500,edge=400,weights=200,lr=0.001,distill=none")
{'supernet': 1500, 'edge': 400, 'weights': 200, 'lr': 0.001, 'distill': 'none'}
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dymu
from dymu.checkpoint import versions
from dymu.data import build_benchmark
from dymu.data.datasets import TensorLoader
from dymu.results import write_json
from dymu.anchor import tree_losses
from dymu.supernet import frozen_copy

from . import protocol
from .config import BENCHMARKS, make_config
from .loaders import run_loaders
from .methods import ControllerMethod, StepBudget
from .options import flag, key_values, numbers
from .orchestrate import git_state
from .protocol.targets import MIN_CONTROLLABILITY, MIN_TASK_CONTROLLABILITY

__all__ = ["parse_candidate", "candidate_path", "score_candidates", "controls", "choose", "main"]

#: the keys a candidate may set: the three step counts, then :class:`dymu.SupernetConfig` fields
STEP_KEYS = ("supernet", "edge", "weights")
SUPERNET_KEYS = {"lr": float, "distill_weight": float, "distill": str, "bn": str, "budget_trees": int,
                 "anchor_weight": float, "solo": flag, "tree_family": str,
                 "family_one_stream": str, "own_trees": numbers,
                 "own_groups": int, "own_min_share": float}
#: :class:`dymu.EdgeConfig` fields a candidate may set
EDGE_KEYS = {"warm_start": str, "warm_start_steps": int, "path_samples": int}
#: the mean Spearman controllability a candidate must reach at the halfway budget, and every task's (the control
#: target's bars)
CONTROL_BAR, TASK_BAR = MIN_CONTROLLABILITY, MIN_TASK_CONTROLLABILITY
RULE = ("score = validation HV at budget 1 + halfway to the minimum budget + at the minimum budget; the highest score "
        f"among the candidates with controllability >= {CONTROL_BAR} halfway (every task > {TASK_BAR}) and the planned "
        "cost in the band is chosen")


def parse_candidate(text: str) -> dict[str, Any]:
    """``"supernet=1500,edge=400,weights=200,lr=0.001,warm_start=merge"`` -> a dict; the three step counts are required.

    Raises:
        ValueError: an unknown key, a missing step count, or a value of the wrong type, naming it.
    """
    out: dict[str, Any] = {}
    try:
        pairs = key_values(text)
    except ValueError as error:
        raise ValueError(f"candidate {text!r}: {error}") from None
    for key, value in pairs:
        if key in STEP_KEYS:
            out[key] = int(value)
        elif key in SUPERNET_KEYS or key in EDGE_KEYS:
            kind = SUPERNET_KEYS.get(key) or EDGE_KEYS[key]
            try:
                out[key] = kind(value)
            except ValueError:
                expected = ("true or false" if kind is flag else "numbers separated by '/'" if kind is numbers
                            else f"a {kind.__name__}")
                raise ValueError(f"candidate {text!r}: {key} must be {expected}, got {value!r}") from None
        else:
            raise ValueError(f"candidate {text!r}: unknown key {key!r}; the keys are {[*STEP_KEYS, *SUPERNET_KEYS, *EDGE_KEYS]}")
    missing = [k for k in STEP_KEYS if k not in out]
    if missing:
        raise ValueError(f"candidate {text!r}: missing {missing} (every candidate names its three step counts)")
    return out


def _val_hv(method: ControllerMethod, tasks, val, preferences: np.ndarray, space: protocol.LossSpace, example) -> dict[str, Any]:
    """Validation hypervolume and mean per-task losses at budget 1, halfway and at the minimum budget."""
    low = float(method.controller.min_budget)
    settings = {"full": protocol.Setting("budget=1", budget=1.0), "mid": protocol.Setting("budget=mid", budget=(1.0 + low) / 2),
                "min": protocol.Setting("budget=min", budget=low)}
    records = protocol.evaluate_method(method, tasks, val, preferences, list(settings.values()), example=example)
    out: dict[str, Any] = {}
    rows = {key: [r for r in records if r.setting == setting.name] for key, setting in settings.items()}
    for key, kept in rows.items():
        losses = np.array([r.losses for r in kept])
        out[f"hv_{key}"] = protocol.hv_of(space, losses)
        out[f"mean_loss_{key}"] = losses.mean(0).tolist()
        out[f"distinct_trees_{key}"] = protocol.control_of(tasks, kept)["distinct_trees"]
    out["score"] = out["hv_full"] + out["hv_mid"] + out["hv_min"]
    # undefined (a model that ignores the preference) is None, as the results files write it
    mid = protocol.control_of(tasks, rows["mid"])
    out["controllability_mid"], out["controllability_mid_per_task"] = mid["controllability"], mid["per_task"]
    curve = protocol.planned_cost(method, [], protocol.cost_preferences(len(tasks)), curve_cs=())["budget_curve"]
    out.update(cost_budgets=curve["budget"], cost_fraction=curve["flops_fraction"],
               fallback=float(np.mean(curve["fallback_fraction"])) if curve["fallback_fraction"] else 0.0,
               cost_band=protocol.cost_band_met(curve))
    return out


def controls(candidate: dict[str, Any]) -> bool | None:
    """Whether a scored candidate clears both control bars: mean controllability halfway at least
    :data:`CONTROL_BAR` with every task's above :data:`TASK_BAR`, and the planned cost in the band (None: the
    candidate was scored before the bars were measured).

    >>> controls({"controllability_mid": 0.8, "controllability_mid_per_task": [0.9, 0.7], "cost_band": True})
    True
    >>> controls({"controllability_mid": 0.8, "controllability_mid_per_task": [1.0, 0.2], "cost_band": True})
    False
    """
    if "cost_band" not in candidate:
        return None
    value, per_task = candidate["controllability_mid"], candidate["controllability_mid_per_task"]
    tasks_ok = all(v is not None and v > TASK_BAR for v in per_task)
    return bool(value is not None and value >= CONTROL_BAR and tasks_ok and candidate["cost_band"])


def choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The chosen candidate's settings: the highest score among those that :func:`controls`, else the highest
    of all (candidates scored before the bars were measured are chosen only when no candidate clears them)."""
    pool = [c for c in candidates if controls(c)] or candidates
    return max(pool, key=lambda c: c["score"])["candidate"]


def _configs(candidate: dict[str, Any], seed: int) -> tuple[dymu.SupernetConfig, dymu.EdgeConfig]:
    """The supernet and stage-1 configs of a candidate (their checks raise ``ValueError`` naming a bad value)."""
    supernet = dymu.SupernetConfig(steps=candidate["supernet"], **{k: v for k, v in candidate.items() if k in SUPERNET_KEYS})
    return supernet, dymu.EdgeConfig(seed=seed, **{k: v for k, v in candidate.items() if k in EDGE_KEYS})


def candidate_path(out: Path, number: int) -> Path:
    """Where candidate ``number`` (from 1, as the progress lines count) of the results file ``out`` keeps its trained
    controller.

    >>> candidate_path(Path("benchmarks/results/split/fd.json"), 1).as_posix()
    'benchmarks/results/split/fd-state/candidate1.pt'
    """
    return out.with_name(f"{out.stem}-state") / f"candidate{number}.pt"


def score_candidates(benchmark: str, mode: str, seed: int, candidates: list[dict[str, Any]], *, out: Path,
                     threads: int | None = None, data_root: str | None = None, command: str = "",
                     **overrides: Any) -> dict[str, Any]:
    """Train stage 0 once and one controller per candidate on it; score each on validation (see the module
    docstring). Writes ``out`` after every candidate and returns what it wrote. ``overrides``: fields of the
    preset to change (:func:`benchmarks.config.make_config`; ``steps`` sets stage 0 and the total).

    Raises:
        ValueError: a candidate whose steps do not add up to the preset's total with its stage-0 steps.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    config = make_config(benchmark, mode, seeds=[seed], data_root=data_root, **overrides)
    steps = config.steps
    after_anchor = steps.total - steps.anchor
    for cand in candidates:  # a bad candidate is refused now, not after stage 0 has trained
        if sum(cand[k] for k in STEP_KEYS) != after_anchor:
            raise ValueError(f"candidate {cand}: supernet + edge + weights = {sum(cand[k] for k in STEP_KEYS)}, but the "
                             f"{benchmark} {mode} budget leaves {after_anchor} steps after stage 0's {steps.anchor} "
                             f"(total {steps.total}: every method's budget)")
        _configs(cand, seed)
    git = git_state()  # at the start: the code this process imports is the code at this moment
    say = lambda text: (sys.stderr.write(f"[split] {text}\n"), sys.stderr.flush())  # noqa: E731
    bench = build_benchmark(benchmark, config.data_seed, config.limit, config.data_root)
    tasks = bench.tasks()
    train, val, _test = run_loaders(bench, config, seed)  # the test split is never read here
    val_batches = list(val)
    example = bench.val.batch(np.arange(1))[0]
    preferences = protocol.evaluation_preferences(len(tasks), config.n_preferences)
    blind = None
    if benchmark not in protocol.HV_REFERENCE:
        blind = protocol.input_blind_losses(tasks, TensorLoader(bench.train, config.eval_batch_size))

    start = time.time()
    say(f"{benchmark} ({mode}), seed {seed}: stage 0 ({steps.anchor} steps), then {len(candidates)} candidate(s) "
        f"for the other {after_anchor} steps")
    base = dymu.Controller(dymu.backbones.lenet(), tasks, seed=seed)
    base.fit_anchor(train, val_batches, steps=steps.anchor, verbose=True)
    base.fit_affinity(train)
    stage0_seconds = time.time() - start
    after_stage0 = train.epoch  # every candidate continues from here, whatever the candidates before it drew
    anchor_tree = [list(range(len(tasks)))] * base.n_layers
    anchor_losses = tree_losses(base.anchor.eval(), tasks, anchor_tree, val_batches, torch.device("cpu")).tolist()
    space = protocol.loss_space(benchmark, anchor_losses, blind)
    results: dict[str, Any] = {
        "benchmark": benchmark, "mode": mode, "seed": seed, "command": command, "config": config.as_dict(),
        "rule": RULE,
        "reference": list(space.reference), "stage0": {"steps": steps.anchor, "seconds": stage0_seconds,
                                                       "val_anchor_losses": anchor_losses},
        "candidates": [], "versions": versions(), "git": git,
    }
    for index, cand in enumerate(candidates):
        began = time.time()
        say(f"candidate {index + 1}/{len(candidates)}: {cand}")
        budget = StepBudget(steps.anchor, cand["edge"], cand["weights"], steps.batch_size, supernet=cand["supernet"])
        supernet, edge = _configs(cand, seed)
        method = ControllerMethod(lambda: None, budget, edge_config=edge,
                                  weight_config=dymu.WeightConfig(seed=seed), supernet_config=supernet)
        ctrl = copy.deepcopy(base)
        train.set_epoch(after_stage0)
        method.teacher = frozen_copy(ctrl.anchor)
        method.fit_after_stage0(ctrl, train, val_batches, device=torch.device("cpu"))
        scored = _val_hv(method, tasks, val_batches, preferences, space, example)
        saved = candidate_path(out, index + 1)
        ctrl.save(saved)
        kept = (ctrl.stages.get("supernet") or {}).get("kept_stage0")
        stage1 = ctrl.stages.get("edge") or {}
        results["candidates"].append({"candidate": cand, **scored, "supernet_config": asdict(supernet),
                                      "edge_config": asdict(edge), "warm_start": stage1.get("warm_start"),
                                      "search": stage1.get("search"), "paths": stage1.get("paths"), "supernet_kept_stage0": kept,
                                      "controller": str(saved),
                                      "seconds": time.time() - began})
        say(f"candidate {index + 1}: val HV budget 1 {scored['hv_full']:.4f}, mid {scored['hv_mid']:.4f}, min {scored['hv_min']:.4f}; "
            f"controllability halfway {protocol.control_text(scored['controllability_mid'])}, cost in band {scored['cost_band']} "
            f"({time.time() - began:.0f} s)")
        results["chosen"] = choose(results["candidates"])
        write_json(out, results)
    print(format_table(results))
    return results


def merge(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidates of several result files of the same benchmark, mode, seed and stage 0, with the best chosen.

    Raises:
        ValueError: files of different benchmarks, modes or seeds, or whose stage-0 streams scored differently
            on validation (another stage 0: their candidates are not comparable).
    """
    first = files[0]
    for other in files[1:]:
        for key in ("benchmark", "mode", "seed"):
            if other[key] != first[key]:
                raise ValueError(f"--show: the files differ in {key} ({first[key]!r} and {other[key]!r})")
        if other["stage0"]["val_anchor_losses"] != first["stage0"]["val_anchor_losses"]:
            raise ValueError("--show: the files were scored on different stage-0 streams (their validation losses differ)")
    candidates = [c for f in files for c in f["candidates"]]
    rule = RULE
    if any(controls(c) is None for c in candidates):
        rule += " (candidates scored before the bars were measured are chosen only when none clears them)"
    return {**first, "rule": rule, "candidates": candidates, "chosen": choose(candidates)}


def format_table(results: dict[str, Any]) -> str:
    """The candidates as a markdown table, the chosen one marked."""
    lines = [f"**{results['benchmark']}** ({results['mode']}, seed {results['seed']}), validation only; {results['rule']}",
             "", "| supernet / edge / weights | setting | val HV budget 1 | val HV mid | val HV min | score | "
             "controllability halfway (per task) | planned cost at budget b (fallback) | control bars | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["candidates"]:
        cand = c["candidate"]
        extra = ", ".join(f"{k}={v}" for k, v in cand.items() if k not in STEP_KEYS) or "default"
        mark = "chosen" if cand == results.get("chosen") else ""
        cleared = controls(c)
        if cleared is None:
            control, cost, bars = "–", "–", "not measured"
        else:
            control = f"{protocol.control_text(c['controllability_mid'])} ({' / '.join(protocol.control_text(v) for v in c['controllability_mid_per_task'])})"
            cost = ", ".join(f"{b:g}: {f:.2f}" for b, f in zip(c["cost_budgets"], c["cost_fraction"])) + f" ({c['fallback']:.0%})"
            bars = "cleared" if cleared else "MISSED"
        lines.append(f"| {cand['supernet']} / {cand['edge']} / {cand['weights']} | {extra} | {c['hv_full']:.4f} | "
                     f"{c['hv_mid']:.4f} | {c['hv_min']:.4f} | {c['score']:.4f} | {control} | {cost} | {bars} | {mark} |")
    if results["candidates"] and not any(controls(c) for c in results["candidates"]):
        lines += ["", "No candidate cleared the control bars: the highest score is chosen."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.split", description=__doc__.split("\n\n")[0])
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--show":
        if len(argv) < 2:
            raise SystemExit("usage: python -m benchmarks.split --show FILE [FILE ...]")
        merged = merge([json.loads(Path(p).read_text()) for p in argv[1:]])
        print(format_table(merged))
        return merged
    parser.add_argument("benchmark", choices=BENCHMARKS)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick")
    size.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidate", action="append", required=True, type=parse_candidate,
                        help="KEY=VALUE,...: supernet, edge, weights steps (required), and lr, distill_weight, distill, bn, budget_trees, "
                             "anchor_weight, solo, tree_family, family_one_stream, own_trees, own_groups, own_min_share (the supernet's), "
                             "warm_start, warm_start_steps, path_samples (stage 1's)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.split " + " ".join(argv)
    return score_candidates(args.benchmark, args.mode or "quick", args.seed, args.candidate, out=args.out,
                            threads=args.threads, data_root=args.data_root, command=command)


if __name__ == "__main__":
    main()
