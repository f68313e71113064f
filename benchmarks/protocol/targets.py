"""The issue's targets, decided on the means over seeds, each with the numbers it was decided on.

The controller's hypervolume and uniformity above PHN's and PHN-BN's (at ``c = 0`` and at ``c = 1``),
its mean FLOPs falling as ``c`` rises, and its total training time below that of the per-preference
hard-sharing models.

>>> agg = lambda v: {"mean": v, "std": None, "n": 1}
>>> methods = {"dymu": {"settings": {"c=0": {"hv": agg(2.5)}}}, "phn": {"settings": {"static": {"hv": agg(2.0)}}}}
>>> first = check_targets(methods, hv_reference=[2, 2])[0]
>>> first["target"], first["met"], first["hv_ref"]
('dymu hv at c=0 > phn hv (mean over seeds)', True, [2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .requests import EVAL_CS, HEADLINE_SETTING, STATIC, format_number

__all__ = ["check_targets"]


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
