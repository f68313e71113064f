"""The issues' targets, decided on the means over seeds, each with the numbers it was decided on.

:func:`check_control_targets`: the tree follows the preference when the budget binds, nothing is lost at
full budget, dynamic beats static at equal cost, the cost follows the budget. :func:`check_targets`: the
controller's hypervolume and uniformity above PHN's and PHN-BN's (at ``c = 0`` and at ``c = 1``),
its mean FLOPs falling as ``c`` rises, and its total training time below that of the per-preference
hard-sharing models. :func:`check_shared_node_targets`: at budget 1 the controller beats every baseline of
the run, at the minimum budget it matches hard sharing, and on multifashion the absolute levels.

>>> agg = lambda v: {"mean": v, "std": None, "n": 1}
>>> methods = {"dymu": {"settings": {"c=0": {"hv": agg(2.5)}}}, "phn": {"settings": {"static": {"hv": agg(2.0)}}}}
>>> first = check_targets(methods, hv_reference=[2, 2])[0]
>>> first["target"], first["met"], first["hv_ref"]
('dymu hv at c=0 > phn hv (mean over seeds)', True, [2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .cost import COST_BAND
from .equal_cost import EQUAL_COST_BUDGETS, WIN_TARGET, budget_setting
from .requests import EVAL_CS, HEADLINE_SETTING, STATIC, format_number

__all__ = ["check_targets", "check_control_targets", "check_shared_node_targets", "cost_band_met"]


def _mean(methods: Mapping[str, Any], name: str, setting: str, metric: str) -> float | None:
    try:
        return methods[name]["settings"][setting][metric]["mean"]
    except (KeyError, TypeError):
        return None


def _static_setting(methods: Mapping[str, Any], name: str) -> str:
    settings = methods.get(name, {}).get("settings", {})
    return STATIC.name if STATIC.name in settings else HEADLINE_SETTING


def _compare(target: str, ours: float | None, theirs: float | None, labels: tuple[str, str],
             extra: dict | None = None) -> dict[str, Any]:
    met = None if ours is None or theirs is None else bool(ours > theirs)
    entry = {"target": target, "met": met, labels[0]: ours, labels[1]: theirs}
    if met is None:
        entry["why_undecided"] = "a method or number is missing from this run"
    entry.update(extra or {})
    return entry


def check_targets(
    methods: Mapping[str, Any], *, controller: str = "dymu", hv_reference: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """The issue's targets, decided on the means over seeds of the aggregated ``methods``.

    ``methods[name]`` is a method's aggregated result: ``{"settings": {setting: {metric: {"mean", ...}}},
    "train_seconds": {"mean", ...}, "cost_curve": {"c": [...], "mean_flops": {"mean": [...]}}, ...}``;
    hard sharing may carry ``"train_seconds_all_preferences"`` (its time for every evaluation preference,
    extrapolated when it was trained on a subset). Each target is ``{"target": text, "met": True / False /
    None (undecided: a number is missing), and the numbers it was decided on}``.
    """
    targets: list[dict[str, Any]] = []
    ref = {"hv_ref": list(hv_reference)} if hv_reference is not None else {}
    for metric in ("hv", "uniformity"):
        for setting in EVAL_CS:
            s = f"c={format_number(setting)}"
            for rival in ("phn", "phn_bn"):
                theirs = _mean(methods, rival, _static_setting(methods, rival), metric)
                targets.append(_compare(
                    f"{controller} {metric} at {s} > {rival} {metric} (mean over seeds)",
                    _mean(methods, controller, s, metric), theirs, (controller, rival),
                    ref if metric == "hv" else None,
                ))
    curve = methods.get(controller, {}).get("cost_curve")
    if curve:
        cs = list(curve["c"])
        flops = [v for v in curve["mean_flops"]]
        falls = all(b <= a * (1 + 1e-9) for a, b in zip(flops, flops[1:])) and flops[-1] < flops[0]
        targets.append({
            "target": f"{controller} mean FLOPs fall as c rises (mean over seeds and over the cost preferences; "
                      "non-increasing along the c grid and lower at c=1 than at c=0)",
            "met": bool(falls),
            "c": cs,
            "mean_flops": flops,
            "c0_to_c1_ratio": flops[-1] / flops[0] if flops[0] else None,
        })
    else:
        targets.append({"target": f"{controller} mean FLOPs fall as c rises", "met": None,
                        "why_undecided": "no cost curve in this run"})
    ours = (methods.get(controller, {}).get("train_seconds") or {}).get("mean")
    hs = methods.get("hard_sharing", {})
    theirs = (hs.get("train_seconds_all_preferences") or hs.get("train_seconds") or {}).get("mean") if hs else None
    entry: dict[str, Any] = {
        "target": f"{controller} total training time < the per-preference hard-sharing models' total (mean over seeds)",
        "met": None if ours is None or theirs is None else bool(ours < theirs),
        f"{controller}_seconds": ours,
        "hard_sharing_seconds": theirs,
    }
    if entry["met"] is None:
        entry["why_undecided"] = "a method or number is missing from this run"
    if hs.get("trained_preferences_note"):
        entry["note"] = hs["trained_preferences_note"]
    targets.append(entry)
    return targets


#: "Control that works": budgets where the preference must decide the tree, and its thresholds
CONTROL_BUDGETS = (0.4, 0.6)
MIN_CONTROLLABILITY, MIN_TASK_CONTROLLABILITY, MIN_DISTINCT_TREES = 0.7, 0.3, 8
#: at budget 0.5 the derived models must not collapse
MID_BUDGET, MIN_DELTA_MTL = 0.5, -10.0
MAX_FALLBACK = 0.05


def _undecided(target: str, why: str = "a method, setting or number is missing from this run") -> dict[str, Any]:
    return {"target": target, "met": None, "why_undecided": why}


def check_control_targets(methods: Mapping[str, Any], *, controller: str = "dymu") -> list[dict[str, Any]]:
    """The targets of "control that works", decided on the means over seeds, each with its numbers.

    At budgets 0.4 and 0.6 the preference decides the tree (mean Spearman controllability >= 0.7, every
    task's > 0.3, at least 8 distinct trees over the evaluation preferences); at 0.5 the models do not
    collapse (mean Delta_MTL >= -10 %, HV > 0); at budget 1 nothing is lost (HV >= the single-task
    streams'); at the equal-cost budgets the controller beats the static tree of no more FLOPs for at least
    :data:`~benchmarks.protocol.equal_cost.WIN_TARGET` of the preferences; the planned mean cost lies in
    ``[0.8 b, b]`` and the fallback merge serves under 5 % of the requests. ``methods`` as in
    :func:`check_targets`, with the controller's ``equal_cost`` and ``budget_curve`` rows.

    >>> agg = lambda v: {"mean": v, "std": None, "n": 1}
    >>> methods = {"dymu": {"settings": {"budget=1": {"hv": agg(1.0)}}}, "single_task": {"settings": {"static": {"hv": agg(1.0)}}}}
    >>> [t["met"] for t in check_control_targets(methods) if t["target"].startswith("dymu hv at budget=1")]
    [True]
    """
    targets: list[dict[str, Any]] = []
    settings = methods.get(controller, {}).get("settings", {})
    for budget in CONTROL_BUDGETS:
        name = budget_setting(budget)
        text = (f"{controller} at {name}: mean controllability >= {MIN_CONTROLLABILITY}, every task > "
                f"{MIN_TASK_CONTROLLABILITY}, >= {MIN_DISTINCT_TREES} distinct trees")
        row = settings.get(name)
        if row is None:
            targets.append(_undecided(text, f"{name} was not evaluated (below the minimum budget, or not in this run)"))
            continue
        mean = (row.get("controllability") or {}).get("mean")
        per_task = {k: v.get("mean") for k, v in (row.get("controllability_per_task") or {}).items()}
        trees = (row.get("distinct_trees") or {}).get("mean")
        numbers = [mean, trees, *per_task.values()]
        met = None if any(v is None for v in numbers) or not per_task else bool(
            mean >= MIN_CONTROLLABILITY and min(per_task.values()) > MIN_TASK_CONTROLLABILITY and trees >= MIN_DISTINCT_TREES)
        targets.append({"target": text, "met": met, "controllability": mean, "per_task": per_task, "distinct_trees": trees})
    name = budget_setting(MID_BUDGET)
    text = f"{controller} at {name}: mean ΔMTL >= {MIN_DELTA_MTL:g} % and HV > 0"
    row = settings.get(name)
    if row is None:
        targets.append(_undecided(text, f"{name} was not evaluated (below the minimum budget, or not in this run)"))
    else:
        delta, hv = (row.get("delta_mtl") or {}).get("mean"), (row.get("hv") or {}).get("mean")
        met = None if delta is None or hv is None else bool(delta >= MIN_DELTA_MTL and hv > 0)
        targets.append({"target": text, "met": met, "delta_mtl": delta, "hv": hv})
    ours = _mean(methods, controller, budget_setting(1.0), "hv")
    theirs = _mean(methods, "single_task", _static_setting(methods, "single_task"), "hv")
    text = f"{controller} hv at budget=1 >= single_task hv (mean over seeds)"
    if ours is None or theirs is None:
        targets.append(_undecided(text))
    else:
        targets.append({"target": text, "met": bool(ours >= theirs - 1e-12), controller: ours, "single_task": theirs})
    wins = methods.get(controller, {}).get("equal_cost") or {}
    for budget in EQUAL_COST_BUDGETS:
        name = budget_setting(budget)
        text = f"{controller} beats the static tree of no more FLOPs at {name} for >= {WIN_TARGET:.0%} of the preferences"
        fraction = ((wins.get(name) or {}).get("win_fraction") or {}).get("mean")
        if fraction is None:
            targets.append(_undecided(text))
            continue
        targets.append({"target": text, "met": bool(fraction >= WIN_TARGET), "win_fraction": fraction,
                        "mean_loss_ours": wins[name]["mean_ours"]["mean"], "mean_loss_static": wins[name]["mean_static"]["mean"]})
    curve = methods.get(controller, {}).get("budget_curve")
    text = f"{controller} planned mean FLOPs in [{COST_BAND} b, b] of the anchor's and fallback < {MAX_FALLBACK:.0%} (cost preferences)"
    if not curve or not curve.get("budget"):
        targets.append(_undecided(text, "no budget curve in this run"))
    else:
        fractions, fallback = curve["flops_fraction"], float(sum(curve["fallback_fraction"]) / len(curve["fallback_fraction"]))
        targets.append({"target": text, "met": cost_band_met(curve), "budget": curve["budget"],
                        "flops_fraction": fractions, "fallback_fraction": fallback, "skipped": curve.get("skipped", [])})
    return targets


def cost_band_met(curve: Mapping[str, Any]) -> bool:
    """Whether a budget curve (:func:`~benchmarks.protocol.planned_cost`'s ``budget_curve``) has its mean planned
    cost in ``[COST_BAND b, b]`` at every budget and the fallback under :data:`MAX_FALLBACK` on average (False
    for a curve without a budget).

    >>> cost_band_met({"budget": [0.7, 0.9], "flops_fraction": [0.6, 0.85], "fallback_fraction": [0.0, 0.02]})
    True
    >>> cost_band_met({"budget": [0.7, 0.9], "flops_fraction": [0.54, 0.55], "fallback_fraction": [0.07, 0.07]})
    False
    """
    budgets, fractions, fallbacks = curve["budget"], curve["flops_fraction"], curve["fallback_fraction"]
    if not budgets:
        return False
    inside = all(COST_BAND * b - 1e-9 <= f <= b + 1e-9 for b, f in zip(budgets, fractions))
    return bool(inside and sum(fallbacks) / len(fallbacks) < MAX_FALLBACK)


#: "Shared nodes that help": the baselines the controller at budget 1 must beat on HV
BUDGET1_RIVALS = ("phn", "phn_bn", "hard_sharing", "distilled_trunk", "cross_stitch", "static_tree", "single_task")
#: multifashion's absolute targets at the reference point (2, 2)
MULTIFASHION_HV, MULTIFASHION_UNIFORMITY, MULTIFASHION_CONTROLLABILITY = 2.45, 0.95, 0.9
BINDING_BUDGETS = (0.6, 0.8)


def check_shared_node_targets(methods: Mapping[str, Any], benchmark: str, *, controller: str = "dymu") -> list[dict[str, Any]]:
    """The targets of "shared nodes that help", decided on the means over seeds, each with its numbers.

    At budget 1 the controller's HV exceeds each baseline's that ran (hard sharing, trained for a subset of
    the preferences, is compared on the controller's ``hv_subset`` over the same preferences) and its
    ΔMTL is >= 0; at the minimum budget its HV is at least hard sharing's; on multifashion its HV at budget 1
    is >= 2.45 with uniformity >= 0.95, and its controllability at a binding budget (0.6 or 0.8, either) is
    >= 0.9. Baselines that did not run are left out, not counted as beaten.

    >>> agg = lambda v: {"mean": v, "std": None, "n": 1}
    >>> methods = {"dymu": {"settings": {"budget=1": {"hv": agg(2.0), "delta_mtl": agg(0.5)}}},
    ...            "phn": {"settings": {"static": {"hv": agg(2.1)}}}}
    >>> [(t["target"][:30], t["met"]) for t in check_shared_node_targets(methods, "fashion_digits")][:2]
    [('dymu hv at budget=1 > phn hv (', False), ('dymu ΔMTL at budget=1 >= 0 (me', True)]
    """
    targets: list[dict[str, Any]] = []
    full = budget_setting(1.0)
    for rival in BUDGET1_RIVALS:
        if rival not in methods:
            continue
        subset = rival == "hard_sharing" and _mean(methods, controller, full, "hv_subset") is not None
        metric = "hv_subset" if subset else "hv"
        ours = _mean(methods, controller, full, metric)
        theirs = _mean(methods, rival, _static_setting(methods, rival), "hv")
        targets.append(_compare(f"{controller} hv at {full} > {rival} hv (mean over seeds"
                                + (", hard sharing's preferences)" if metric == "hv_subset" else ")"),
                                ours, theirs, (controller, rival)))
    delta = _mean(methods, controller, full, "delta_mtl")
    text = f"{controller} ΔMTL at {full} >= 0 (mean over seeds)"
    targets.append(_undecided(text) if delta is None else {"target": text, "met": bool(delta >= 0), "delta_mtl": delta})
    if "hard_sharing" in methods:
        ours = _mean(methods, controller, "budget=min", "hv_subset")
        label = "hard sharing's preferences" if ours is not None else "mean over seeds"
        ours = ours if ours is not None else _mean(methods, controller, "budget=min", "hv")
        theirs = _mean(methods, "hard_sharing", _static_setting(methods, "hard_sharing"), "hv")
        entry = _compare(f"{controller} hv at budget=min >= hard_sharing hv ({label})", ours, theirs,
                         (controller, "hard_sharing"))
        if entry["met"] is not None:
            entry["met"] = bool(ours >= theirs)
        targets.append(entry)
    if benchmark == "multifashion":
        hv, uniformity = _mean(methods, controller, full, "hv"), _mean(methods, controller, full, "uniformity")
        text = f"{controller} at {full}: hv >= {MULTIFASHION_HV} at (2, 2) and uniformity >= {MULTIFASHION_UNIFORMITY}"
        targets.append(_undecided(text) if hv is None or uniformity is None else {
            "target": text, "met": bool(hv >= MULTIFASHION_HV and uniformity >= MULTIFASHION_UNIFORMITY),
            "hv": hv, "uniformity": uniformity})
        values = {budget_setting(b): _mean(methods, controller, budget_setting(b), "controllability") for b in BINDING_BUDGETS}
        found = {k: v for k, v in values.items() if v is not None}
        text = f"{controller} controllability >= {MULTIFASHION_CONTROLLABILITY} at a binding budget (either of {', '.join(values)})"
        targets.append(_undecided(text) if not found else {
            "target": text, "met": bool(max(found.values()) >= MULTIFASHION_CONTROLLABILITY), **found})
    return targets
