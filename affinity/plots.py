"""Figures of task affinities and branched trees, written straight to image files.

Every function draws on its own ``matplotlib.figure.Figure`` rendered by the Agg canvas, so nothing
touches pyplot's global state, no display is needed, and no window ever opens. The file format
follows the path's suffix (``.png``, ``.pdf``, ``.svg``); parent folders are created.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from scipy.cluster.hierarchy import dendrogram, linkage

from .rsa import AffinityResult
from .tree import Tree

__all__ = ["plot_affinity", "plot_dendrogram", "plot_tree"]

_CMAP = "viridis"
_DPI = 150


def plot_affinity(result: AffinityResult, path: str | Path, per_layer: bool = True, title: str | None = None) -> Path:
    """Heatmaps of the mean affinity (values printed) and, if ``per_layer``, of every layer's.

    Per-layer panels print their values (up to 6 tasks and 8 layers) and task names (up to 8
    tasks) only while they stay legible; the mean panel always shows both.

    Returns:
        the path written.
    """
    _check_result(result)
    n, n_layers = result.n_tasks, result.n_layers
    mean_side = max(3.6, 0.5 * n + 1.6)
    # per-layer panels print values and names only while a panel stays legible
    layer_values = n <= 6 and n_layers <= 8
    layer_names = n <= 8
    show_layers = per_layer
    if show_layers:
        cols = min(n_layers, max(2, math.ceil(math.sqrt(n_layers))))
        rows = math.ceil(n_layers / cols)
        smallest = 0.3 * n + 0.9 if layer_values else (1.5 if layer_names else 1.2)
        cell = max(smallest, min(2.6, 1.1 * mean_side / cols))
        grid_w, grid_h = cols * cell, rows * (cell + 0.25)
    else:
        cols = rows = 0
        grid_w, grid_h = 0.0, 0.0
    width = mean_side + 1.4 + (grid_w + 0.6 if show_layers else 0.0)
    height = max(mean_side + 1.2, grid_h + 0.9)
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title or f"Task affinity ({result.measure}, {_samples(result)}mean of {n_layers} layers)")
    if show_layers:
        left, right = fig.subfigures(1, 2, width_ratios=[mean_side + 1.4, grid_w + 0.6], wspace=0.02)
    else:
        left, right = fig, None

    ax = left.add_subplot(1, 1, 1)
    image = ax.imshow(result.matrix, vmin=0.0, vmax=1.0, cmap=_CMAP)
    ax.set_title("mean over layers")
    _label_axes(ax, result.tasks, fontsize=_tick_fontsize(n))
    cell_inches = (mean_side - 1.6) / n
    _annotate(ax, result.matrix, fontsize=max(5.0, min(10.0, cell_inches * 72 / (4 * 0.75))))
    left.colorbar(image, ax=ax, shrink=0.8, label="affinity")

    if right is not None:
        axes = right.subplots(rows, cols, squeeze=False)
        for index, panel in enumerate(axes.flat):
            if index >= n_layers:
                panel.set_visible(False)
                continue
            panel.imshow(result.per_layer[index], vmin=0.0, vmax=1.0, cmap=_CMAP)
            panel.set_title(f"layer {result.layers[index]}", fontsize=9)
            if layer_names:
                _label_axes(panel, result.tasks, fontsize=6)
                if layer_values:
                    _annotate(panel, result.per_layer[index], fontsize=6)
            else:
                panel.set_xticks([])
                panel.set_yticks([])
        right.suptitle("per layer", fontsize=10)
    return _save(fig, path)


def plot_dendrogram(result: AffinityResult, path: str | Path, title: str | None = None) -> Path:
    """Average-linkage clustering of ``1 - Aff`` (the mean affinity) with the task names as leaves.

    Returns:
        the path written.
    """
    _check_result(result)
    n = result.n_tasks
    distance = 1.0 - np.asarray(result.matrix)
    condensed = np.clip(distance[np.triu_indices(n, k=1)], 0.0, None)
    merges = linkage(condensed, method="average")
    fig = Figure(figsize=(7.0, max(2.6, 0.34 * n + 1.2)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    dendrogram(
        merges,
        labels=list(result.tasks),
        orientation="left",
        ax=ax,
        leaf_font_size=max(6.0, min(11.0, 200.0 / n)),
        color_threshold=0,
        above_threshold_color="#3b5b92",
    )
    ax.set_xlabel("1 - affinity (average linkage)")
    ax.set_xlim(left=max(1.0, float(merges[:, 2].max()) * 1.05) if len(merges) else 1.0, right=0.0)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"Task clustering ({result.measure} affinity)")
    return _save(fig, path)


def plot_tree(
    tree: Tree,
    path: str | Path,
    layer_costs: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Draw a branched architecture: the input at the top, one row per layer, the task heads below.

    Each node is a box spanning the heads of the tasks it serves, labelled with those tasks (names
    abbreviated, or counted, when they do not fit) and, with ``layer_costs``, the cost of the node;
    lines join each node to its parent. Single-task nodes and heads take their task's colour.
    The right margin gives each layer's node count (times the node cost). Tasks are ordered so that
    every node's tasks are adjacent.

    Returns:
        the path written.
    """
    return _save(_tree_figure(tree, layer_costs, title), path)


def plot_trees(
    trees: Sequence[Tree],
    path: str | Path,
    titles: Sequence[str] | None = None,
    layer_costs: Sequence[float] | None = None,
) -> Path:
    """Several trees side by side in one image (e.g. the trees built for contrasting preferences).

    Each panel is drawn exactly as :func:`plot_tree` draws it, with its own title.
    """
    if len(trees) == 0:
        raise ValueError("plot_trees needs at least one tree")
    if titles is not None and len(titles) != len(trees):
        raise ValueError(f"{len(titles)} titles for {len(trees)} trees")
    panels = []
    for i, tree in enumerate(trees):
        fig = _tree_figure(tree, layer_costs, None if titles is None else titles[i])
        fig.canvas.draw()
        panels.append(np.asarray(fig.canvas.buffer_rgba()))
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels)
    canvas = np.full((height, width, 4), 255, dtype=np.uint8)
    x = 0
    for panel in panels:
        canvas[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1]
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    return _save(fig, path)


def _tree_figure(tree: Tree, layer_costs: Sequence[float] | None, title: str | None) -> Figure:
    if not isinstance(tree, Tree):
        raise ValueError(f"plot_tree needs a Tree, got {type(tree).__name__}")
    n, n_layers = tree.n_tasks, tree.n_layers
    costs = None
    if layer_costs is not None:
        costs = np.asarray(layer_costs, dtype=np.float64)
        if costs.shape != (n_layers,) or not np.isfinite(costs).all() or (costs < 0).any():
            raise ValueError(f"layer_costs must hold {n_layers} finite non-negative numbers, got {list(layer_costs)}")

    order = sorted(range(n), key=lambda k: (tree.path(tree.tasks[k]), k))
    slot = {k: position for position, k in enumerate(order)}
    colours = _task_colours(n)

    slot_inches = max(0.75, min(1.3, 14.0 / max(n, 1)))
    row_inches = max(0.42, min(0.75, 10.0 / (n_layers + 2)))
    fontsize = max(5.5, min(9.0, 6.0 + 8.0 / max(n, 1) + 6.0 / max(n_layers, 1)))
    head_fontsize = fontsize
    longest = max(len(name) for name in tree.tasks)
    chars_per_slot = _capacity(slot_inches * 0.84, head_fontsize)
    rotate_heads = longest > chars_per_slot
    head_rows = 1.0 if not rotate_heads else max(1.0, min(4.0, longest * head_fontsize * 0.62 / 72 / row_inches + 0.4))

    margin_left, margin_right = 1.0, 1.5 if costs is None else 2.0
    width = n * slot_inches + margin_left + margin_right
    height = (n_layers + 1 + head_rows) * row_inches + 1.1
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((margin_left / width, 0.35 / height, n * slot_inches / width, 1 - 1.1 / height))
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n_layers + head_rows - 0.5, -1.6)
    ax.axis("off")

    half_h = 0.3
    box_pad = 0.42
    centre: dict[tuple[int, int], float] = {}
    # the input
    ax.add_patch(_box(-0.5 + 0.08, -1 - half_h, n - 0.16, 2 * half_h, "#e8e8e8"))
    ax.text((n - 1) / 2, -1, "input", ha="center", va="center", fontsize=fontsize, style="italic")
    for layer in range(n_layers):
        for node in tree.nodes(layer):
            served = tree.node_tasks(layer, node)
            positions = [slot[tree.tasks.index(t)] for t in served]
            lo, hi = min(positions), max(positions)
            centre[(layer, node)] = (lo + hi) / 2
            if len(served) == 1:
                face = _lighten(colours[tree.tasks.index(served[0])], 0.55)
            else:
                face = _lighten("#3b5b92", 0.85 - 0.35 * (len(served) - 1) / max(n - 1, 1))
            ax.add_patch(_box(lo - box_pad, layer - half_h, hi - lo + 2 * box_pad, 2 * half_h, face))
            box_chars = _capacity((hi - lo + 2 * box_pad) * slot_inches, fontsize)
            label = _group_label(served, tree.tasks, box_chars)
            if costs is None:
                ax.text(centre[(layer, node)], layer, label, ha="center", va="center", fontsize=fontsize)
            else:
                ax.text(centre[(layer, node)], layer - 0.1, label, ha="center", va="center", fontsize=fontsize)
                ax.text(
                    centre[(layer, node)], layer + 0.15, _format_cost(costs[layer]),
                    ha="center", va="center", fontsize=fontsize * 0.85, color="#555555", style="italic",
                )
            parent = tree.parent(layer, node)
            top = -1 if parent is None else layer - 1
            x_from = (n - 1) / 2 if parent is None else centre[(layer - 1, parent)]
            ax.plot([x_from, centre[(layer, node)]], [top + half_h, layer - half_h], color="#555555", lw=1.0, zorder=0)
    # the heads
    head_top = n_layers - half_h + 0.15
    head_height = head_rows - 0.15 - (1 - 2 * half_h) / 2
    for k, name in enumerate(tree.tasks):
        x = slot[k]
        last = (n_layers - 1, tree.assignment[-1][k])
        ax.plot([centre[last], x], [n_layers - 1 + half_h, head_top], color="#555555", lw=1.0, zorder=0)
        ax.add_patch(_box(x - box_pad, head_top, 2 * box_pad, head_height, _lighten(colours[k], 0.25)))
        if rotate_heads:
            shown = name if len(name) <= 40 else name[:39] + "…"
            ax.text(x, head_top + head_height / 2, shown, ha="center", va="center", rotation=90, fontsize=head_fontsize)
        else:
            ax.text(x, head_top + head_height / 2, name, ha="center", va="center", fontsize=head_fontsize)

    # row labels on the left, node counts and costs on the right
    for layer in range(-1, n_layers + 1):
        text = "input" if layer == -1 else ("heads" if layer == n_layers else f"layer {layer}")
        y = head_top + head_height / 2 if layer == n_layers else layer
        ax.text(-0.5 - 0.12 / slot_inches, y, text, ha="right", va="center", fontsize=fontsize, color="#333333")
    counts = tree.nodes_per_layer()
    for layer, count in enumerate(counts):
        text = f"{count} node{'s' if count != 1 else ''}"
        if costs is not None:
            text += f" × {_format_cost(costs[layer])}"
        ax.text(n - 0.5 + 0.12 / slot_inches, layer, text, ha="left", va="center", fontsize=fontsize, color="#333333")

    summary = f"{n} tasks, {n_layers} layers, {tree.n_nodes} nodes"
    if costs is not None:
        total = float(np.dot(counts, costs))
        anchor = float(costs.sum()) * n
        summary += f", cost {_format_cost(total)}"
        if anchor > 0:
            shared = float(costs.sum())
            fraction = (total - shared) / (anchor - shared) if anchor > shared else 0.0
            summary += f" ({100 * total / anchor:.0f}% of the anchor's; extra share over hard sharing {fraction:.2f})"
    fig.suptitle(title or "Branched architecture", fontsize=11, y=1 - 0.12 / height, va="top")
    fig.text(0.5, 1 - 0.42 / height, summary, ha="center", va="top", fontsize=8.5, color="#333333")
    return fig


# ------------------------------------------------------------------------------------ helpers
def _check_result(result: AffinityResult) -> None:
    if not isinstance(result, AffinityResult):
        raise ValueError(f"expected an AffinityResult, got {type(result).__name__}")


def _samples(result: AffinityResult) -> str:
    return f"K = {result.n_samples} images, " if result.n_samples else ""


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def _tick_fontsize(n: int) -> float:
    return max(7.0, min(10.0, 180.0 / n))


def _label_axes(ax, tasks: Sequence[str], fontsize: float) -> None:
    ticks = np.arange(len(tasks))
    slanted = len(tasks) > 3
    ax.set_xticks(
        ticks,
        labels=list(tasks),
        rotation=45 if slanted else 0,
        ha="right" if slanted else "center",
        rotation_mode="anchor",
        fontsize=fontsize,
    )
    ax.set_yticks(ticks, labels=list(tasks), fontsize=fontsize)


def _annotate(ax, values: np.ndarray, fontsize: float) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = values[i, j]
            colour = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize, color=colour)


def _capacity(inches: float, fontsize: float) -> int:
    """About how many characters of ``fontsize`` points fit in ``inches``."""
    return max(1, int(inches * 72 / (0.6 * fontsize)))


def _group_label(served: Sequence[str], tasks: Sequence[str], capacity: int) -> str:
    """The tasks of a node as they fit: the names, then the names without the prefix every task
    name shares (``task_3`` -> ``3``), then those shortened, then a count."""
    if len(served) == len(tasks) and len(tasks) > 1:
        full = f"all {len(tasks)} tasks"
        return full if len(full) <= capacity else str(len(tasks))
    joined = ", ".join(served)
    if len(joined) <= capacity:
        return joined
    prefix = os.path.commonprefix(list(tasks)) if len(tasks) > 1 else ""
    stripped = {name: name[len(prefix) :] or name for name in tasks}
    if prefix and len(set(stripped.values())) == len(tasks):
        joined = ",".join(stripped[name] for name in served)
        if len(joined) <= capacity:
            return joined
    for keep in (6, 4, 3):
        shorten = {name: short if len(short) <= keep else short[: keep - 1] + "." for name, short in stripped.items()}
        if len(set(shorten.values())) < len(tasks):
            break  # shortened names would be ambiguous
        short = ",".join(shorten[name] for name in served)
        if len(short) <= capacity:
            return short
    count = f"{len(served)} task{'s' if len(served) != 1 else ''}"
    return count if len(count) <= capacity else str(len(served))


def _format_cost(value: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _task_colours(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [palette(k % palette.N) for k in range(n)]


def _lighten(colour, amount: float) -> tuple[float, float, float, float]:
    """Blend ``colour`` with white; ``amount`` 0 keeps it, 1 gives white."""
    r, g, b, _ = to_rgba(colour)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount, 1.0)


def _box(x: float, y: float, w: float, h: float, face) -> FancyBboxPatch:
    return FancyBboxPatch(
        (x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08", facecolor=face, edgecolor="#404040", linewidth=0.8
    )
