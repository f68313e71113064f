"""What a results file says about its protocol, and the tables printed from results files.

:func:`describe` is the ``protocol`` entry of both pipelines' results; :func:`format_markdown` is the
CPU benchmarks' markdown table (:mod:`benchmarks.run`), :func:`format_paper_table` the paper pipelines'
plain-text table (:mod:`benchmarks.paper`). Both tables read the same per-setting keys
(:data:`benchmarks.protocol.METRICS`).

>>> hv_header({"units": "test loss", "reference": [2.0, 2.0]})
'HV (ref (2, 2))'
>>> hv_header({"units": "test loss / single-task test loss", "reference": [2.0, 2.0, 2.0]})
'HV(ref 2x ST)'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .loss_space import LossSpace
from .requests import COST_SEED, HEADLINE_SETTING, PREFERENCE_SEED, Setting
from .training_budget import BLOCK_PASSES_RULE

__all__ = ["describe", "hv_header", "format_markdown", "format_paper_table"]


def describe(space: LossSpace, preferences: np.ndarray, settings: Sequence[Setting], skipped: Sequence[Mapping],
             n_cost: int, *, delta_mtl_excluded_tasks: Sequence[str] = ()) -> dict[str, Any]:
    """The protocol as run, for the results file (``preferences`` ``[P, N]``, ``n_cost`` cost preferences)."""
    n_tasks = preferences.shape[1]
    return {
        "preferences": (
            f"{len(preferences)} Pareto HyperNetworks rays (angles 0.1 .. pi/2 - 0.1)" if n_tasks == 2
            else f"{len(preferences)} Dirichlet(1) preferences, seed {PREFERENCE_SEED}"
        ),
        "evaluation_preferences": preferences.tolist(),
        "settings_dynamic": [s.as_dict() for s in settings],
        "settings_skipped": list(skipped),
        "settings_static": "one model per preference, evaluated once per distinct model",
        "headline_setting": f"{HEADLINE_SETTING} for dynamic methods, 'static' for the others",
        "loss_space": space.as_dict(),
        "uniformity": "EPO uniformity, mean over preferences, of the test losses"
                      + (" divided by the single-task test losses" if space.normalise_uniformity else ""),
        "controllability": "mean over tasks of Spearman(r_i, primary metric of task i) over the preferences; "
                           "controllability_loss uses the negated test loss; null when undefined",
        "delta_mtl": "per built model: Maninis et al.'s Delta_MTL (percent, primary metrics) against the single-task "
                     "anchor streams' test metrics of the same run and seed; averaged over the evaluation preferences",
        "delta_mtl_excluded_tasks": list(delta_mtl_excluded_tasks),
        "cost": f"mean FLOPs (per image, FlopCounterMode: conv and matmul, multiply-add = 2) and parameters: over "
                f"{n_cost} Dirichlet(1) preferences (seed {COST_SEED}) from the controller's plan for planning methods, "
                "over the built models otherwise",
        "model_selection": "validation split only; the test split is read once per distinct built model",
        "seeds": "every number per seed, then mean and sample standard deviation over seeds",
    }


def hv_header(loss_space: Mapping[str, Any]) -> str:
    """The hypervolume column's title, naming its reference point (``loss_space``: ``LossSpace.as_dict()``)."""
    ref = loss_space["reference"]
    if loss_space["units"] != "test loss":
        return f"HV(ref {ref[0]:g}x ST)"
    return "HV (ref (" + ", ".join(f"{v:.3g}" for v in ref) + "))"


# ------------------------------------------------------------------------------ the CPU benchmarks
def _pm(entry: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    text = format(entry["mean"] * scale, spec)
    if entry.get("std") is not None:
        text += " ± " + format(entry["std"] * scale, spec.lstrip("+"))
    return text


def format_markdown(results: dict[str, Any]) -> str:
    """A markdown table of every method (the controller at every setting, its ablations at c = 0 and 1)."""
    space = results["protocol"]["loss_space"]
    ref = "(" + ", ".join(f"{v:.3g}" for v in space["reference"]) + ")"
    seeds = results["seeds"]
    subset = any("hv_subset" in m for row in results["methods"].values() for m in row["settings"].values())
    hs = results["methods"].get("hard_sharing", {})
    steps = results["steps"]
    stages = "anchor/supernet/edge/weights" if steps.get("supernet") else "anchor/edge/weights"
    counts = "/".join(str(steps[k]) for k in stages.split("/"))
    lines = [
        f"**{results['benchmark']}** ({results['mode']}, seeds {seeds}; steps {stages} {counts}; HV in {space['units']}, "
        f"reference point {ref}; mean ± std over seeds)",
        "",
        f"| method | setting | {hv_header(space)} |" + (" HV, hard-sharing prefs |" if subset else "")
        + " uniformity | controllability | ΔMTL % | MFLOPs | params (k) | stored (k) | train s | train steps |"
        " train images (k) | block passes (M) |",
        "|---|---|---|" + ("---|" if subset else "") + "---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["methods"].items():
        settings = row["settings"]
        shown = list(settings) if name == "dymu" else ([s for s in settings if s.startswith("c=")] or list(settings))
        for s in shown:
            m = settings[s]
            cells = [name, s, _pm(m["hv"], ".4g")]
            if subset:
                cells.append(_pm(m["hv"], ".4g") if name == "hard_sharing" else _pm(m.get("hv_subset"), ".4g"))
            train = _pm(row["train_seconds"], ".0f")
            if name == "hard_sharing" and "trained_preferences_note" in row:
                n_all = len(results["protocol"]["evaluation_preferences"])
                train += f" (all {n_all}: {_pm(row['train_seconds_all_preferences'], '.0f')})"
            cells += [_pm(m["uniformity"], ".4f"), _pm(m["controllability"], ".3f"), _pm(m["delta_mtl"], "+.2f"),
                      _pm(m["mean_flops"], ".2f", 1e-6), _pm(m["params"], ".1f", 1e-3), _pm(row["size"], ".1f", 1e-3), train,
                      *_training_cells(row.get("training_totals"))]
            lines.append("| " + " | ".join(cells) + " |")
    if subset and hs.get("trained_preferences_note"):
        lines += ["", hs["trained_preferences_note"]]
    lines += _training_budget_lines(results)
    lines += _provenance_lines(results)
    lines += _control_table(results)
    lines += _supernet_table(results)
    lines += kept_states_lines(results)
    for title, key in (("Targets:", "targets"), ("Control targets:", "control_targets"),
                       ("Shared-node targets:", "shared_node_targets")):
        if key not in results:
            continue
        lines += ["", title]
        for t in results[key]:
            mark = {True: "met", False: "MISSED", None: "undecided"}[t["met"]]
            numbers = {k: v for k, v in t.items() if k not in ("target", "met")}
            shown = ", ".join(f"{k}={_short(v)}" for k, v in numbers.items() if k not in ("c", "note"))
            lines.append(f"- [{mark}] {t['target']}: {shown}")
    return "\n".join(lines)


def _provenance_lines(results: dict[str, Any]) -> list[str]:
    """Where entries were taken from another run (``--baselines-from``, ``--seeds-from``): which file, its steps and
    commit."""
    out = []
    for part in results.get("resumed") or []:
        if part.get("baselines_from"):
            methods = sorted({name for _, name in part.get("kept", [])})
            steps = part.get("their_steps") or {}
            counts = "/".join(str(steps.get(k, 0)) for k in ("anchor", "supernet", "edge", "weights"))
            commit = ((part.get("their_git") or {}).get("commit") or "unknown")[:7]
            out += ["", f"Taken from {part['baselines_from']} (commit {commit}; steps anchor/supernet/edge/weights {counts}, "
                        f"the same stage 0, total and batch; the stage-0 streams checked bit-identical): {', '.join(methods)}. "
                        "The controller's methods ran in this run."]
        elif part.get("seeds_from"):
            seeds = sorted({seed for seed, _ in part.get("kept", [])})
            commit = ((part.get("their_git") or {}).get("commit") or "unknown")[:7]
            out += ["", f"Seeds {', '.join(map(str, seeds))} ran as another process of the same options: taken from "
                        f"{part['seeds_from']} (commit {commit}), with their controllers."]
    return out


def _training_cells(totals: dict[str, Any] | None) -> list[str]:
    """Steps and training images of one model's training (× its models), image-block passes over all models."""
    if not totals:
        return ["–", "–", "–"]
    models = (totals.get("models") or {}).get("mean") or 1
    times = f" × {models:.0f}" if models > 1 else ""
    return [_pm(totals["steps"], ".0f") + times, _pm(totals["images"], ".1f", 1e-3) + times,
            _pm(totals["block_passes"], ".1f", 1e-6)]


#: what results files written before :data:`~benchmarks.protocol.BLOCK_PASSES_RULE` counted
_OLD_BLOCK_PASSES = ("training images × backbone blocks run per image, over all its models (computed; the controller's "
                     "weight stage counted at every stream, an upper bound; the supernet stage counted as every stream once)")


def _training_budget_lines(results: dict[str, Any]) -> list[str]:
    """The training budget rule the run followed, and the methods below it by construction."""
    budget = results.get("training_budget")
    if not budget:
        return []
    below = [name for name, row in results["methods"].items()
             if row.get("training_totals") and row["training_totals"].get("equal_budget") is False]
    # per seed: a resumed run may hold seeds counted under both rules, and the aggregate keeps the first seed's mark
    counted = {name: [(e.get("training_totals") or {}).get("block_passes_counted") for e in row.get("per_seed") or [row]]
               for name, row in results["methods"].items() if row.get("training_totals")}
    older = [name for name, how in counted.items() if any(h != "forward" for h in how)]
    rule = _OLD_BLOCK_PASSES if counted and len(older) == len(counted) else BLOCK_PASSES_RULE
    lines = ["", f"Training budget: {budget['rule']} ({budget['steps']} steps, {budget['images']} images). "
                 "train steps / images: one model's training, the parts it reuses included (× the models it trains); "
                 f"block passes: {rule}."
             + (f" Counted before that rule (the supernet stage as every stream once, the distilled trunk's teachers not "
                f"at all): {', '.join(older)}." if older and rule == BLOCK_PASSES_RULE else "")]
    if below:
        lines.append(f"Below the budget by construction (variants of the trained controller): {', '.join(below)}.")
    return lines


def _control_table(results: dict[str, Any]) -> list[str]:
    """The controller's budget settings: does the tree follow the preference, and does it beat a static tree
    of no more FLOPs (means over seeds)."""
    dymu = results["methods"].get("dymu")
    if not dymu:
        return []
    budgets = [s for s in dymu["settings"] if s.startswith("budget=")]
    if not budgets:
        return []
    wins = dymu.get("equal_cost") or {}
    lines = ["", "| dymu setting | controllability | lowest task | distinct trees | fallback % | MFLOPs | "
                 "wins vs static tree of ≤ FLOPs | Σ r L/L_single: dymu / static |", "|---|---|---|---|---|---|---|---|"]
    for s in budgets:
        m = dymu["settings"][s]
        low = lowest_task(m)
        fallback = (m.get("fallback_fraction") or {}).get("mean")
        w = wins.get(s)
        win = f"{100 * w['win_fraction']['mean']:.0f}%" if w and w["win_fraction"].get("mean") is not None else "–"
        losses = f"{w['mean_ours']['mean']:.3f} / {w['mean_static']['mean']:.3f}" if w else "–"
        lines.append(f"| {s} | {_pm(m['controllability'], '.3f')} | {low} | {_pm(m.get('distinct_trees'), '.1f')} | "
                     f"{'–' if fallback is None else f'{100 * fallback:.0f}'} | {_pm(m['mean_flops'], '.2f', 1e-6)} | {win} | {losses} |")
    return lines


def lowest_task(setting: dict[str, Any]) -> str:
    """The task of lowest controllability in one setting's summary, as printed (``"digit 0.35"``; ``–`` when none is
    defined)."""
    per_task = [(v.get("mean"), k) for k, v in (setting.get("controllability_per_task") or {}).items()]
    defined = [(v, k) for v, k in per_task if v is not None]
    return f"{min(defined)[1]} {min(defined)[0]:.2f}" if defined else "–"


def _supernet_table(results: dict[str, Any]) -> list[str]:
    """Per task, the test loss of the anchor tree and of the cheapest tree before and after the supernet
    stage (first seed that has one); nothing without a supernet stage."""
    seeds = (results.get("methods", {}).get("dymu") or {}).get("per_seed") or []
    seed = next((e for e in seeds if e.get("supernet_effect")), None)
    if seed is None:
        return []
    effect = seed["supernet_effect"]
    kept = " (validation kept the stage-0 streams)" if effect.get("kept_stage0") else ""
    lines = ["", f"Supernet stage, seed {seed['seed']}: per-task test loss, stage-0 streams -> supernet{kept}:", "",
             "| tree | " + " | ".join(results["tasks"]) + " |", "|---|" + "---|" * len(results["tasks"])]
    for tree, label in (("anchor", "anchor tree"), ("one_stream", "cheapest tree")):
        cells = [f"{a:.4f} -> {b:.4f}" for a, b in zip(effect[tree]["before"], effect[tree]["after"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "after_supernet_alone" in effect["anchor"]:  # the served anchor tree above is the solo streams (dymu.solo)
        cells = [f"{a:.4f} -> {b:.4f}" for a, b in zip(effect["anchor"]["before"], effect["anchor"]["after_supernet_alone"])]
        lines.append("| anchor tree, supernet alone (not served: solo streams run it) | " + " | ".join(cells) + " |")
    return lines


def kept_states_lines(results: dict[str, Any]) -> list[str]:
    """Per seed, what each validated stage of the controller kept (``kept_states`` of its entry; nothing for
    files written before it was recorded): a stage that kept its start contributes nothing to the served models.

    >>> entry = {"seed": 0, "kept_states": {"supernet": {"steps": 875, "best_step": 875, "kept_start": False},
    ...          "weights": {"steps": 25, "best_step": 0, "kept_start": True},
    ...          "search": {"chosen": "family", "scores": {"family": 0.807, "hypernet": 0.852}}}}
    >>> print("\\n".join(kept_states_lines({"methods": {"dymu": {"per_seed": [entry]}}})))
    <BLANKLINE>
    Kept on validation by dymu's stages: seed 0: supernet step 875 of 875, weights its start (of 25: no adaptation); requests served by the family search
    """
    seeds = [e for e in (results.get("methods", {}).get("dymu") or {}).get("per_seed") or [] if e.get("kept_states")]
    if not seeds:
        return []
    parts = []
    for entry in seeds:
        cells = []
        for stage, kept in entry["kept_states"].items():
            if stage == "search":
                continue
            if kept["kept_start"]:
                why = ": no adaptation" if stage == "weights" else ""
                cells.append(f"{stage} its start (of {kept['steps']}{why})")
            else:
                cells.append(f"{stage} step {kept['best_step']} of {kept['steps']}")
        search = entry["kept_states"].get("search") or {}
        served = f"; requests served by the {search['chosen']} search" if search.get("chosen") else ""
        parts.append(f"seed {entry['seed']}: " + ", ".join(cells) + served)
    return ["", "Kept on validation by dymu's stages: " + "; ".join(parts)]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)




# ------------------------------------------------------------------------------ the paper pipelines
def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_paper_table(results: dict[str, Any]) -> str:
    """The paper pipeline's text table: single-task metrics, then one row per evaluated ``c``."""
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
    header = ["c", "models", hv_header(results["protocol"]["loss_space"]), "uniformity", "controllab.", "ctrl(loss)",
              "dMTL %", "FLOPs %", "MFLOPs", "params M", "nodes"]
    rows = [header]
    for s in results["per_c"]:
        rows.append([
            f"{s['c']:.1f}", str(s["n_models"]), _cell(s["hv"], ".4g"), _cell(s["uniformity"], ".4f"),
            _cell(s["controllability"], ".3f"), _cell(s["controllability_loss"], ".3f"), _cell(s["delta_mtl"], "+.2f"),
            f"{100 * s['flops_fraction']:.1f}", f"{s['mean_flops'] / 1e6:.2f}", f"{s['params'] / 1e6:.3f}",
            _cell(s["mean_nodes"], ".1f"),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    cost = results["cost"]
    lines.append(
        f"mean cost over {cost['n_preferences']} Dirichlet(1) preferences: "
        + ", ".join(f"{name}: {100 * s['flops_fraction']:.1f}% FLOPs, {100 * s['params_fraction']:.1f}% params"
                    for name, s in cost["settings"].items())
        + f" (anchor {results['anchor']['mflops']:.1f} MFLOPs, {results['anchor']['params_m']:.2f} M params)"
    )
    return "\n".join(lines)
