"""Figures of a benchmark's results file (:mod:`benchmarks.run`), written straight to PNG files.

Every function reads the results dict (as written to ``NAME.json``) and draws on its own
``matplotlib.figure.Figure`` with the Agg canvas: no display, no pyplot state. Losses of several seeds are
averaged per (setting, preference) before plotting; the hypervolume's reference point is marked where the
figure is in loss space.

* :func:`plot_front`: the test-loss front of every method (two tasks), with the reference point.
* :func:`plot_task_losses`: each task's test loss against its preference weight.
* :func:`plot_cost`: the controller's FLOPs over the preference simplex at c = 0 and c = 1.
* :func:`plot_cost_curve`: mean FLOPs against c, controller and ablations.
* :func:`plot_budget_curve`: planned mean FLOPs against the budget, with the band they must lie in.
* :func:`plot_equal_cost`: per preference, the controller against the static tree of no more FLOPs.
* :func:`plot_supernet`: per task, the anchor tree's and the cheapest tree's test loss before and after
  the supernet stage.
* :func:`plot_trees`: the trees the controller derives for a few contrasting preferences.
* :func:`make_all`: all of the above for one results file.

[why one ~430-line module] every figure reads the same results dict and shares its styles and helpers;
each figure is one function of a few dozen lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from affinity.plots import plot_tree
from affinity.tree import Tree

__all__ = ["plot_tree_alone", "plot_front", "plot_task_losses", "plot_cost", "plot_cost_curve", "plot_budget_curve", "plot_equal_cost",
           "plot_supernet", "plot_trees", "make_all", "mean_records"]

_DPI = 130

#: (method, setting) -> label, colour, line style, marker; the order is the drawing order
_STYLE: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("dymu", "c=0"): ("DYMU c=0", "#1f4e9c", "-", "o"),
    ("dymu", "c=1"): ("DYMU c=1", "#6aa6e8", "--", "o"),
    ("dymu_no_weight_hypernet", "c=0"): ("DYMU w/o weight hypernet, c=0", "#2aa198", ":", "^"),
    ("phn", "static"): ("PHN", "#d62728", "-", "s"),
    ("phn_bn", "static"): ("PHN-BN", "#ff7f0e", "-", "D"),
    ("hard_sharing", "static"): ("hard sharing (one per preference)", "#8c564b", "none", "P"),
    ("static_tree", "static"): ("static affinity tree", "#9467bd", "none", "X"),
    ("distilled_trunk", "static"): ("distilled hard-sharing trunk", "#7f7f7f", "none", "v"),
    ("cross_stitch", "static"): ("cross-stitch network", "#8c6d31", "none", "h"),
    ("single_task", "static"): ("single-task streams", "#111111", "none", "*"),
}
#: static methods of one model for every preference: a horizontal line in the per-task plots
_ONE_MODEL = ("single_task", "static_tree", "distilled_trunk", "cross_stitch")
_ABLATION_COLOURS = {
    "dymu": "#1f4e9c",
    "dymu_no_inactive": "#e377c2",
    "dymu_no_affinity_depth": "#bcbd22",
    "dymu_all_active": "#17becf",
    "dymu_no_weight_hypernet": "#2aa198",
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def mean_records(results: Mapping[str, Any], method: str, setting: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Preferences ``[P, N]``, test losses ``[P, N]`` (mean over seeds) and FLOPs ``[P]`` of one method's models
    at one setting, or None when the results do not hold them."""
    row = results.get("methods", {}).get(method)
    if not row or not row.get("records"):
        return None
    per_seed = [[r for r in seed if r["setting"] == setting] for seed in row["records"]]
    per_seed = [s for s in per_seed if s]
    if not per_seed:
        return None
    n = min(len(s) for s in per_seed)
    prefs = np.array([r["preference"] for r in per_seed[0][:n]])
    losses = np.mean([[r["losses"] for r in s[:n]] for s in per_seed], axis=0)
    flops = np.mean([[r["flops"] for r in s[:n]] for s in per_seed], axis=0)
    return prefs, losses, flops


def _reference(results: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(results["protocol"]["loss_space"]["reference"], dtype=float)


def _title(results: Mapping[str, Any], what: str, first_seed_only: bool = False) -> str:
    seeds = results.get("seeds", [])
    if first_seed_only:
        return f"{results['benchmark']} ({results['mode']}): {what} — the controller of seed {seeds[0]}"
    if len(seeds) == 1:
        return f"{results['benchmark']} ({results['mode']}): {what} — seed {seeds[0]}"
    return f"{results['benchmark']} ({results['mode']}): {what} — mean over seeds {seeds}"


# ------------------------------------------------------------------------------------------ front
def plot_front(results: Mapping[str, Any], path: str | Path) -> Path:
    """Two tasks: every method's test losses in loss space (left: with the reference point and the region
    each method dominates, right: zoomed on the points).

    Raises:
        ValueError: the benchmark does not have exactly two tasks.
    """
    tasks = results["tasks"]
    if len(tasks) != 2:
        raise ValueError(f"plot_front draws two-task fronts; {results['benchmark']} has {len(tasks)} tasks")
    ref = _reference(results)
    fig = _figure(13.5, 6.0)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    shown = []
    for (method, setting), (label, colour, style, marker) in _STYLE.items():
        got = mean_records(results, method, setting)
        if got is None:
            continue
        prefs, losses, _ = got
        points = losses
        order = np.argsort(prefs[:, 0])
        hv = results["methods"][method]["settings"][setting]["hv"]["mean"]
        text = f"{label} (HV {hv:.4g})" if hv is not None else label
        if method == "hard_sharing" and hv is not None and "trained_preferences_note" in results["methods"][method]:
            text = f"{label} (HV {hv:.4g} over its {len(prefs)} models)"
        shown.append(points)
        for k, ax in enumerate(axes):
            ax.plot(points[order, 0], points[order, 1], linestyle=style, marker=marker, color=colour,
                    markersize=9 if marker == "*" else 5, linewidth=1.3, label=text if k == 1 else None, zorder=3)
            if k == 0 and (method, setting) in (("dymu", "c=0"), ("phn", "static")):
                # the region this method's points dominate inside the reference box: what its HV measures
                inside = points[np.all(points < ref, axis=1)]
                if len(inside):
                    stair = inside[np.argsort(inside[:, 0])]
                    xs, ys = [stair[0, 0]], [ref[1]]
                    best = ref[1]
                    for x, y in stair:
                        if y < best:
                            xs += [x, x]
                            ys += [best, y]
                            best = y
                    xs.append(ref[0])
                    ys.append(best)
                    ax.fill_between(xs, ys, ref[1], step=None, color=colour, alpha=0.07, zorder=1)
    for k, ax in enumerate(axes):
        ax.set_xlabel(f"{tasks[0]} test loss")
        ax.set_ylabel(f"{tasks[1]} test loss")
        ax.grid(alpha=0.3)
    axes[0].plot([ref[0]], [ref[1]], marker="x", color="black", markersize=11, mew=2.5, linestyle="none", zorder=4)
    axes[0].annotate(f"reference point ({ref[0]:.3g}, {ref[1]:.3g})", ref, xytext=(-10, -18), textcoords="offset points",
                     ha="right", fontsize=9)
    axes[0].axvline(ref[0], color="black", lw=0.6, ls=":")
    axes[0].axhline(ref[1], color="black", lw=0.6, ls=":")
    every = np.concatenate(shown) if shown else np.zeros((1, 2))
    axes[0].set_xlim(0, ref[0] * 1.08)
    axes[0].set_ylim(0, ref[1] * 1.08)
    axes[0].set_title("full view: the reference point, and the regions DYMU c=0 and PHN dominate", fontsize=10)
    # zoom: the points of the methods near the front
    near = every[np.all(every < ref, axis=1)] if np.any(np.all(every < ref, axis=1)) else every
    lo = near.min(axis=0)
    span = np.maximum(near.max(axis=0) - lo, 1e-6)
    axes[1].set_xlim(lo[0] - 0.05 * span[0], near[:, 0].max() + 0.05 * span[0])
    axes[1].set_ylim(lo[1] - 0.05 * span[1], near[:, 1].max() + 0.05 * span[1])
    axes[1].set_title("zoomed on the models (lower-left is better)", fontsize=10)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.01))
    fig.subplots_adjust(bottom=0.22, wspace=0.22)
    fig.suptitle(_title(results, f"test-loss fronts, HV reference point ({ref[0]:.3g}, {ref[1]:.3g})"), fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------------- task losses
def plot_task_losses(results: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per task: its test loss against its preference weight ``r_i``, for the controller at c = 0 and
    c = 1 and for the baselines (fixed models as horizontal levels)."""
    tasks = results["tasks"]
    n = len(tasks)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure(4.6 * cols, 3.6 * rows + 0.6)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, i + 1)
        for (method, setting), (label, colour, style, marker) in _STYLE.items():
            got = mean_records(results, method, setting)
            if got is None:
                continue
            prefs, losses, _ = got
            order = np.argsort(prefs[:, i])
            if method in _ONE_MODEL:
                ax.axhline(losses[0, i], color=colour, lw=1.2, ls="--" if method == "single_task" else "-.", label=label)
                continue
            ax.plot(prefs[order, i], losses[order, i], linestyle=style if style != "none" else "none", marker=marker,
                    color=colour, markersize=4, linewidth=1.2, label=label)
        ax.set_xlabel(f"preference weight r of {task}")
        ax.set_ylabel(f"{task} test loss")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", fontsize=9, frameon=False, bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(_title(results, "each task's test loss against its preference"), fontsize=11)
    fig.subplots_adjust(hspace=0.45, wspace=0.3, right=0.98)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ cost
def _fixed_costs(results: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    out = []
    for method, label, colour in (("single_task", "single-task streams (anchor)", "#111111"),
                                  ("phn", "PHN / PHN-BN / hard sharing / distilled trunk", "#d62728"),
                                  ("static_tree", "static affinity tree", "#9467bd"),
                                  ("cross_stitch", "cross-stitch network", "#8c6d31")):
        row = results.get("methods", {}).get(method)
        if row and row.get("mean_flops", {}).get("mean") is not None:
            out.append((label, row["mean_flops"]["mean"], colour))
    return out


def plot_cost(results: Mapping[str, Any], path: str | Path) -> Path:
    """The controller's FLOPs over the preference simplex at c = 0 and c = 1 (first seed's controller).

    Two tasks: FLOPs against ``r_1`` with the fixed-cost methods as levels. More tasks: the corners of the
    simplex against its centre (bars), and FLOPs against the preference's normalised entropy (0 at a corner,
    1 at the centre) for the cost preferences.
    """
    views = results.get("controller_views") or {}
    tasks = results["tasks"]
    anchor = float(views["anchor_flops"])
    colours = {"c=0": "#1f4e9c", "c=1": "#6aa6e8"}
    if "cost_map" in views:
        cmap = views["cost_map"]
        fig = _figure(7.5, 5.0)
        ax = fig.add_subplot(1, 1, 1)
        for key in ("c=0", "c=1"):
            ax.plot(cmap["r1"], np.asarray(cmap[key]) / 1e6, color=colours[key], lw=2, ls="-" if key == "c=0" else "--",
                    marker="o", markersize=3, label=f"DYMU {key}")
        for label, flops, colour in _fixed_costs(results):
            ax.axhline(flops / 1e6, color=colour, lw=1, ls=":", label=label)
        ax.set_xlabel(f"preference weight r of {tasks[0]}  (r of {tasks[1]} = 1 - r)")
        ax.set_ylabel("MFLOPs per image")
        right = ax.secondary_yaxis("right", functions=(lambda m: 100 * m * 1e6 / anchor, lambda p: p * anchor / 1e6 / 100))
        right.set_ylabel("% of the anchor's FLOPs")
        ax.set_ylim(0, anchor / 1e6 * 1.08)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower center")
        ax.set_title(_title(results, "cost over the preference simplex", first_seed_only=True),
                     fontsize=10)
        return _save(fig, path)
    corners = views["cost_corners"]
    scatter = views["cost_scatter"]
    fig = _figure(14.0, 5.2)
    ax = fig.add_subplot(1, 2, 1)
    labels = corners["labels"]
    x = np.arange(len(labels))
    width = 0.38
    for k, key in enumerate(("c=0", "c=1")):
        ax.bar(x + (k - 0.5) * width, np.asarray(corners[key]) / 1e6, width, color=colours[key], label=f"DYMU {key}")
    for label, flops, colour in _fixed_costs(results):
        ax.axhline(flops / 1e6, color=colour, lw=1, ls=":", label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([f"corner\n{l}" if l != "centre" else "centre\n(equal r)" for l in labels], fontsize=8)
    ax.set_ylabel("MFLOPs per image")
    ax.set_ylim(0, anchor / 1e6 * 1.1)
    ax.set_title("corners of the simplex (r = one task only) vs its centre", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    ax = fig.add_subplot(1, 2, 2)
    for key in ("c=0", "c=1"):
        ax.scatter(scatter["entropy"], np.asarray(scatter[key]) / 1e6, s=9, alpha=0.5, color=colours[key], label=f"DYMU {key}")
    ax.axhline(anchor / 1e6, color="#111111", lw=1, ls=":", label="single-task streams (anchor)")
    ax.axhline(float(views["min_flops"]) / 1e6, color="#777777", lw=1, ls="--", label="the cheapest tree (one stream)")
    ax.set_xlabel("normalised entropy of the preference (0: a corner, 1: the centre)")
    ax.set_ylabel("MFLOPs per image")
    ax.set_ylim(0, anchor / 1e6 * 1.1)
    ax.set_title(f"{len(scatter['entropy'])} Dirichlet(1) preferences", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    fig.suptitle(_title(results, "cost over the preference simplex", first_seed_only=True),
                 fontsize=11)
    return _save(fig, path)


def plot_cost_curve(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Mean FLOPs (over the cost preferences, mean over seeds) against c: the controller and its ablations.
    Returns None when no method has a cost curve."""
    curves = {m: row["cost_curve"] for m, row in results.get("methods", {}).items() if row.get("cost_curve")}
    if not curves:
        return None
    anchor = float((results.get("controller_views") or {}).get("anchor_flops") or 0)
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for method, curve in curves.items():
        if method == "dymu_no_weight_hypernet":
            continue  # the same trees as dymu
        values = np.asarray(curve["mean_flops"], dtype=float)
        y = 100 * values / anchor if anchor else values / 1e6
        ax.plot(curve["c"], y, marker="o", markersize=3, lw=2 if method == "dymu" else 1.3,
                color=_ABLATION_COLOURS.get(method, "#777777"), label=method)
    ax.set_xlabel("resource preference c")
    ax.set_ylabel("mean FLOPs, % of the anchor's" if anchor else "mean MFLOPs per image")
    if anchor:
        cheapest = 100 * float(results["controller_views"]["min_flops"]) / anchor
        ax.axhline(100, color="#111111", lw=0.8, ls=":", label="the anchor (one stream per task)")
        ax.axhline(cheapest, color="#777777", lw=0.8, ls="--", label="the cheapest tree (one stream)")
        ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    n = (results.get("config") or {}).get("cost_preferences")
    ax.set_title(_title(results, f"mean cost over {n} preferences against c"), fontsize=10)
    return _save(fig, path)


def plot_budget_curve(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """The controller's planned mean FLOPs (over the cost preferences; each seed and their mean) against the
    budget, inside the band ``[0.8 b, b]`` it must lie in, with the share of fallback merges per budget.
    Returns None without a budget curve."""
    curve = (results.get("methods", {}).get("dymu") or {}).get("budget_curve")
    if not curve or not curve.get("budget"):
        return None
    budgets = np.asarray(curve["budget"], dtype=float)
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0, 1, 50)
    ax.fill_between(grid, 80 * grid, 100 * grid, color="#2ca02c", alpha=0.15, label="target band [0.8 b, b]")
    ax.plot(grid, 100 * grid, color="#2ca02c", lw=0.8)
    for k, seed_values in enumerate(curve.get("flops_fraction_per_seed") or []):
        ax.plot(budgets, 100 * np.asarray(seed_values), color="#6aa6e8", lw=0.8, marker=".", label="each seed" if k == 0 else None)
    ax.plot(budgets, 100 * np.asarray(curve["flops_fraction"]), color="#1f4e9c", lw=2, marker="o", label="mean over seeds")
    for b, f, fb in zip(budgets, curve["flops_fraction"], curve["fallback_fraction"]):
        ax.annotate(f"fallback {100 * fb:.0f}%", (b, 100 * f), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xlabel("budget b (fraction of the anchor's FLOPs, heads included)")
    ax.set_ylabel("planned mean FLOPs, % of the anchor's")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    n = (results.get("config") or {}).get("cost_preferences")
    ax.set_title(_title(results, f"does the cost follow the budget? ({n} preferences)"), fontsize=10)
    return _save(fig, path)


def plot_equal_cost(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Per equal-cost budget, one point per (seed, evaluation preference): the static tree's
    preference-weighted normalised test loss (x) against the controller's (y). Points below the diagonal
    are preferences the controller wins. Returns None when the run has no static trees at equal cost."""
    ours = (results.get("methods", {}).get("dymu") or {}).get("per_seed") or []
    static = (results.get("methods", {}).get("static_equal_cost") or {}).get("per_seed") or []
    wins = (results.get("methods", {}).get("dymu") or {}).get("equal_cost") or {}
    names = list(wins)
    if not names or not static:
        return None
    fig = _figure(4.2 * len(names), 4.4)
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        values = []
        for seed_ours, seed_static in zip(ours, static):
            a = np.asarray(seed_ours["settings"][name]["preference_loss_per_model"], dtype=float)
            b = np.asarray(seed_static["settings"][name]["preference_loss_per_model"], dtype=float)
            ax.scatter(b, a, s=14, alpha=0.8, label=f"seed {seed_ours['seed']}")
            values += [*a, *b]
        low, high = min(values), max(values)
        pad = 0.05 * (high - low + 1e-9)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#111111", lw=0.8, ls=":")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        fraction = (wins[name].get("win_fraction") or {}).get("mean")
        ax.set_title(f"{name}: controller wins {100 * fraction:.0f}%" if fraction is not None else name, fontsize=9)
        ax.set_xlabel("static tree: sum_i r_i L_i / L_i(single)", fontsize=8)
        if k == 0:
            ax.set_ylabel("controller: sum_i r_i L_i / L_i(single)", fontsize=8)
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(results, "dynamic against static at equal cost (below the diagonal: the controller wins)"), fontsize=10)
    return _save(fig, path)


def plot_supernet(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Bars per task: test loss of the anchor tree and of the cheapest tree, built from the stage-0 streams
    (before) and as the controller serves them after the supernet stage (after; with solo streams,
    :mod:`dymu.solo`, the anchor tree is the solo streams, and a lighter bar shows the supernet's own anchor
    tree), first seed. Returns None without a supernet stage."""
    seeds = (results.get("methods", {}).get("dymu") or {}).get("per_seed") or []
    effect = next((e.get("supernet_effect") for e in seeds if e.get("supernet_effect")), None)
    if not effect:
        return None
    names = list(results["tasks"])
    fig = _figure(max(6.0, 1.1 * len(names) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    solo = "after_supernet_alone" in effect["anchor"]
    bars = [("anchor", "before", "#9ecae1", "anchor tree, stage-0 streams"),
            *([("anchor", "after_supernet_alone", "#4292c6", "anchor tree, supernet")] if solo else []),
            ("anchor", "after", "#08519c", "anchor tree, solo streams" if solo else "anchor tree, supernet"),
            ("one_stream", "before", "#fdae6b", "cheapest tree, stage-0 streams"), ("one_stream", "after", "#a63603", "cheapest tree, supernet")]
    width = 0.8 / len(bars)
    for k, (tree, when, colour, label) in enumerate(bars):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, effect[tree][when], width, color=colour, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("test loss (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(_title(results, "the supernet stage: per-task test loss before and after"), fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ trees
def plot_trees(results: Mapping[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
    """One file per derived tree (``STEM-tree-LABEL-cC.png``, :func:`affinity.plots.plot_tree`) and one
    overview (``STEM-trees.png``): rows are the contrasting preferences, columns c = 0 and c = 1."""
    views = results.get("controller_views") or {}
    trees = views.get("trees") or []
    if not trees:
        return []
    out_dir = Path(out_dir)
    costs = [f / 1e6 for f in views["block_flops"]]
    written = []
    for t in trees:
        pref = ", ".join(f"{v:.2f}" for v in t["preference"])
        c = t["c"]
        path = out_dir / f"{stem}-tree-{t['label'].replace('/', '_')}-c{c:g}.png"
        title = f"r = ({pref}), c = {c:g}: {100 * t['flops_fraction']:.0f}% of the anchor's FLOPs (heads included)"
        written.append(plot_tree(Tree.from_dict(t["tree"]), path, layer_costs=costs, title=title))
    labels = list(dict.fromkeys(t["label"] for t in trees))
    cs = sorted({t["c"] for t in trees})
    images = {(t["label"], t["c"]): imread(p) for t, p in zip(trees, written)}
    height = max(img.shape[0] for img in images.values())
    width = max(img.shape[1] for img in images.values())
    fig = _figure(len(cs) * 5.5, len(labels) * 5.5 * height / width + 0.6)
    for i, label in enumerate(labels):
        for j, c in enumerate(cs):
            ax = fig.add_subplot(len(labels), len(cs), i * len(cs) + j + 1)
            ax.imshow(images[(label, c)])
            ax.axis("off")
    fig.suptitle(f"{results['benchmark']} ({results['mode']}): trees the controller derives "
                 f"(rows: preferences, columns: c = {', '.join(f'{c:g}' for c in cs)}); node costs in MFLOPs", fontsize=11)
    fig.subplots_adjust(wspace=0.02, hspace=0.02, top=0.95)
    written.append(_save(fig, out_dir / f"{stem}-trees.png"))
    return written


def make_all(results: Mapping[str, Any], out_dir: str | Path, stem: str) -> list[Path]:
    """Every figure of one results file into ``out_dir``, named ``STEM-*.png``. Returns the paths written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    if len(results["tasks"]) == 2:
        written.append(plot_front(results, out_dir / f"{stem}-front.png"))
    written.append(plot_task_losses(results, out_dir / f"{stem}-task-losses.png"))
    if results.get("controller_views"):
        written.append(plot_cost(results, out_dir / f"{stem}-cost.png"))
    for extra in (plot_cost_curve(results, out_dir / f"{stem}-cost-vs-c.png"),
                  plot_budget_curve(results, out_dir / f"{stem}-cost-vs-budget.png"),
                  plot_equal_cost(results, out_dir / f"{stem}-equal-cost.png"),
                  plot_supernet(results, out_dir / f"{stem}-supernet.png")):
        if extra is not None:
            written.append(extra)
    written += plot_trees(results, out_dir, stem)
    return written


_WAY_LABELS = {"cut": "cut from the controller", "stage0": "alone, from stage 0", "fresh": "alone, from scratch"}
_WAY_COLOURS = {"cut": "#d62728", "stage0": "#1f77b4", "fresh": "#7f7f7f"}


def plot_tree_alone(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per :mod:`benchmarks.tree_alone` result: per task, each way's validation loss over the lowest of the
    ways (1 = the best way; a bar above 1 is what that way loses)."""
    if not results:
        raise ValueError("no tree_alone results to plot")
    fig = _figure(4.6 * len(results), 3.4)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results):
        ways = [w for w in _WAY_LABELS if w in result["ways"]]
        tasks = list(result["ways"][ways[0]]["metrics"])
        losses = np.array([[result["ways"][w]["metrics"][t]["loss"] for t in tasks] for w in ways])
        ratio = losses / losses.min(axis=0, keepdims=True)
        width = 0.8 / len(ways)
        for i, way in enumerate(ways):
            ax.bar(np.arange(len(tasks)) + (i - (len(ways) - 1) / 2) * width, ratio[i], width,
                   label=_WAY_LABELS[way], color=_WAY_COLOURS[way])
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0.9, max(1.1, float(ratio.max()) * 1.05))
        ax.set_title(f"tree at {result['flops_fraction']:.0%} of the anchor's FLOPs", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("validation loss / lowest of the ways")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, -0.2))
    fig.suptitle("one tree cut from the controller against the same tree trained alone", fontsize=10)
    return _save(fig, path)
