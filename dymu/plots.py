"""The loss front of an evaluation table (``dymu plot front``), drawn with matplotlib alone.

Reads the JSON of ``dymu eval`` (an :class:`~dymu.EvaluationTable`) or the ``results.json`` of
``dymu train`` (whose ``"evaluation"`` holds one), and plots two tasks' losses for every built
model: one marker per model, coloured by its share of the anchor's FLOPs, the non-dominated models
joined by a line. Benchmark result files have their own plots (``benchmarks/plots.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_eval_front", "read_table", "non_dominated"]


def read_table(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """``{"tasks": [...], "rows": [...], "anchor_flops": int}`` from a JSON file or a loaded mapping."""
    data = json.loads(Path(source).read_text()) if not isinstance(source, Mapping) else source
    table = data.get("evaluation", data)
    if not isinstance(table, Mapping) or not {"tasks", "rows", "anchor_flops"} <= set(table):
        raise ValueError(f"{source}: not an evaluation table (expected keys tasks, rows, anchor_flops, or 'evaluation')")
    if not table["rows"]:
        raise ValueError(f"{source}: the evaluation table has no rows")
    return dict(table)


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``points [M, 2]`` (lower is better) no other row dominates."""
    keep = np.ones(len(points), dtype=bool)
    for i, p in enumerate(points):
        others = np.delete(points, i, axis=0)
        keep[i] = not np.any(np.all(others <= p, axis=1) & np.any(others < p, axis=1))
    return keep


def plot_eval_front(source: str | Path | Mapping[str, Any], path: str | Path, tasks: Sequence[str] | None = None) -> Path:
    """Scatter two tasks' losses of every evaluated model; returns the PNG path written.

    ``tasks``: the two task names on the x and y axes (default: the table's first two).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = read_table(source)
    names = list(tasks) if tasks else list(table["tasks"][:2])
    if len(table["tasks"]) < 2:
        raise ValueError("a front needs at least two tasks")
    unknown = [t for t in names if t not in table["tasks"]]
    if unknown or len(names) != 2:
        raise ValueError(f"--tasks must name two of {table['tasks']}, got {names}")
    losses = np.array([[row["metrics"][t]["loss"] for t in names] for row in table["rows"]], dtype=float)
    share = np.array([row["flops"] for row in table["rows"]], dtype=float) / float(table["anchor_flops"])
    front = non_dominated(losses)
    fig = Figure(figsize=(5.5, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    order = np.argsort(losses[front, 0])
    ax.plot(losses[front][order, 0], losses[front][order, 1], color="0.6", zorder=1, label="non-dominated")
    points = ax.scatter(losses[:, 0], losses[:, 1], c=share, cmap="viridis", vmin=0, vmax=1, zorder=2, edgecolors="k", linewidths=0.4)
    fig.colorbar(points, ax=ax, label="FLOPs / anchor")
    ax.set_xlabel(f"{names[0]} loss")
    ax.set_ylabel(f"{names[1]} loss")
    ax.set_title(f"{len(losses)} built models ({sum(front)} non-dominated)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
