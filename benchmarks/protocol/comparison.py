"""Two controllers measured against one set of baselines: the table that sets two results files side by side.

Two runs that take their baselines from one file (``benchmarks.run --baselines-from``) differ only in the
controller: this prints, per controller setting found in both, each run's HV, controllability (and its lowest
task), distinct trees, Delta_MTL, FLOPs and preference-weighted loss against the static tree of no more FLOPs,
so that a README's side-by-side table is printed by a command rather than assembled by hand. It refuses files
whose numbers are not comparable (another benchmark, another hypervolume reference point) and says which
baselines the two files share to the printed digit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .report import lowest_task

__all__ = ["format_comparison", "shared_baselines"]


def _mean(entry: Mapping[str, Any] | None) -> float | None:
    return None if not entry else entry.get("mean")


def _pair(a: float | None, b: float | None, spec: str, scale: float = 1.0) -> str:
    def one(v: float | None) -> str:
        return "–" if v is None else format(v * scale, spec)
    return f"{one(a)} / {one(b)}"


def _control(setting: Mapping[str, Any]) -> str:
    value = _mean(setting.get("controllability"))
    return "–" if value is None else f"{value:.3f} ({lowest_task(setting)})"


def shared_baselines(first: Mapping[str, Any], second: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(same, different)``: the methods other than the controller's that both files hold, split by whether
    their headline HV agrees to 1e-12 (a baseline taken by both runs from one file agrees exactly).

    >>> a = {"methods": {"dymu": {"hv": {"mean": 1.0}}, "phn": {"hv": {"mean": 0.5}}, "cross_stitch": {"hv": {"mean": 0.7}}}}
    >>> b = {"methods": {"dymu": {"hv": {"mean": 2.0}}, "phn": {"hv": {"mean": 0.5}}, "cross_stitch": {"hv": {"mean": 0.6}}}}
    >>> shared_baselines(a, b)
    (['phn'], ['cross_stitch'])
    """
    same, different = [], []
    for name in sorted(set(first["methods"]) & set(second["methods"])):
        if name.startswith("dymu"):
            continue
        a, b = _mean(first["methods"][name].get("hv")), _mean(second["methods"][name].get("hv"))
        (same if a is not None and b is not None and abs(a - b) <= 1e-12 else different).append(name)
    return same, different


def format_comparison(first: Mapping[str, Any], second: Mapping[str, Any],
                      labels: Sequence[str] = ("first", "second")) -> str:
    """A markdown table of the controller (``dymu``) of two results files, one row per setting both have, every
    cell ``first / second`` (means over each file's seeds), and a line naming the baselines they share.

    The last column is the mean preference-weighted normalised loss ``sum_i r_i L_i / L_i(single task)`` of each
    controller and of the first file's static tree of no more FLOPs (lower is better; :mod:`.equal_cost`).

    >>> def run(hv, control):
    ...     setting = {"hv": {"mean": hv}, "controllability": {"mean": control},
    ...                "controllability_per_task": {"a": {"mean": control - 0.1}, "b": {"mean": control + 0.1}},
    ...                "distinct_trees": {"mean": 3.0}, "delta_mtl": {"mean": -5.0}, "mean_flops": {"mean": 2e6}}
    ...     return {"benchmark": "toy", "seeds": [0], "protocol": {"loss_space": {"reference": [1.0, 1.0]}},
    ...             "methods": {"dymu": {"settings": {"budget=0.5": setting}, "equal_cost": {}},
    ...                         "phn": {"hv": {"mean": 0.1}}}}
    >>> print(format_comparison(run(0.25, 0.5), run(0.20, 0.6), labels=("new", "old")).splitlines()[2])
    | budget=0.5 | 0.25000 / 0.20000 | 0.500 (a 0.40) / 0.600 (a 0.50) | 3.0 / 3.0 | -5.00 / -5.00 | 2.00 / 2.00 | – |

    Raises:
        ValueError: another benchmark, another hypervolume reference point, or a file without the controller.
    """
    if first.get("benchmark") != second.get("benchmark"):
        raise ValueError(f"the files are of different benchmarks: {first.get('benchmark')!r} and {second.get('benchmark')!r}")
    references = [f.get("protocol", {}).get("loss_space", {}).get("reference") for f in (first, second)]
    if references[0] != references[1]:
        raise ValueError(f"the files' hypervolume reference points differ ({references[0]} and {references[1]}): "
                         "their HVs are not comparable")
    for label, results in zip(labels, (first, second)):
        if not (results.get("methods") or {}).get("dymu"):
            raise ValueError(f"the {label} file has no results of the controller (method 'dymu')")
    a, b = first["methods"]["dymu"], second["methods"]["dymu"]
    settings = [s for s in a["settings"] if s in b["settings"]]
    lines = [f"| dymu setting | HV: {labels[0]} / {labels[1]} | controllability (lowest task) | distinct trees | "
             "ΔMTL % | MFLOPs | Σ r L/L_single: " + f"{labels[0]} / {labels[1]} / static |",
             "|---|---|---|---|---|---|---|"]
    for s in settings:
        x, y = a["settings"][s], b["settings"][s]
        wins_x, wins_y = (a.get("equal_cost") or {}).get(s), (b.get("equal_cost") or {}).get(s)
        losses = "–" if not wins_x or not wins_y else (
            f"{_mean(wins_x['mean_ours']):.3f} / {_mean(wins_y['mean_ours']):.3f} / {_mean(wins_x['mean_static']):.3f}")
        lines.append(f"| {s} | {_pair(_mean(x.get('hv')), _mean(y.get('hv')), '.5f')} | {_control(x)} / {_control(y)} | "
                     f"{_pair(_mean(x.get('distinct_trees')), _mean(y.get('distinct_trees')), '.1f')} | "
                     f"{_pair(_mean(x.get('delta_mtl')), _mean(y.get('delta_mtl')), '+.2f')} | "
                     f"{_pair(_mean(x.get('mean_flops')), _mean(y.get('mean_flops')), '.2f', 1e-6)} | {losses} |")
    same, different = shared_baselines(first, second)
    passes = [_mean((d.get("training_totals") or {}).get("block_passes")) for d in (a, b)]
    lines += ["", f"Seeds: {labels[0]} {first.get('seeds')}, {labels[1]} {second.get('seeds')}. The controller's training: "
              + ", ".join(f"{label} {'–' if p is None else f'{p / 1e6:.1f} M'}" for label, p in zip(labels, passes))
              + " image-block passes. Baselines with the same HV in both files: " + (", ".join(same) or "none")
              + (f"; different: {', '.join(different)}" if different else "") + "."]
    return "\n".join(lines)
