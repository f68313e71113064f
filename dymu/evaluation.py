"""Evaluating derived models and the table of results that ``Controller.evaluate`` returns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .tasks import Task

__all__ = ["EvaluationTable", "evaluate_model"]


@torch.no_grad()
def evaluate_model(model: nn.Module, tasks: Sequence[Task], data: Iterable, device: torch.device) -> dict[str, dict[str, float]]:
    """Every task's loss and metrics of a multi-task model over ``data``: ``{task: {"loss": ..., ...}}``.

    Raises:
        dymu.checks.BadDataError: a batch that cannot be evaluated (names the task and the batch).
    """
    from .loop import checked_batch

    states = {t.name: t.metric_state() for t in tasks}
    was = model.training
    model.eval()
    try:
        for index, batch in enumerate(data):
            x, targets = checked_batch(batch, tasks, device, stage="evaluation", index=index)
            outputs = model(x)
            for t in tasks:
                states[t.name].update(outputs[t.name], targets[t.name])
    finally:
        model.train(was)
    return {name: state.compute() for name, state in states.items()}


class EvaluationTable:
    """One row per built model: its request (preference, budget, c), cost, tree and per-task metrics."""

    def __init__(self, tasks: Sequence[str], rows: Sequence[dict[str, Any]], anchor_flops: int):
        self.tasks = list(tasks)
        self.rows = list(rows)
        self.anchor_flops = int(anchor_flops)

    def __len__(self) -> int:
        return len(self.rows)

    def losses(self) -> np.ndarray:
        """``[rows, N]`` test losses, task order."""
        return np.array([[row["metrics"][t]["loss"] for t in self.tasks] for row in self.rows])

    def metric(self, name: str) -> np.ndarray:
        """``[rows, N]`` values of one metric (``"loss"`` or a task metric present for every task)."""
        return np.array([[row["metrics"][t][name] for t in self.tasks] for row in self.rows])

    def preferences(self) -> np.ndarray:
        return np.array([row["preference"] for row in self.rows])

    def flops(self) -> np.ndarray:
        return np.array([row["flops"] for row in self.rows], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "anchor_flops": self.anchor_flops, "rows": self.rows}

    def to_json(self, path: str | Path) -> Path:
        from .results import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationTable:
        data = json.loads(Path(path).read_text())
        return cls(data["tasks"], data["rows"], data["anchor_flops"])

    def format(self, metric_names: dict[str, str] | None = None) -> str:
        """A plain-text table: preference, budget, c, FLOPs (% of anchor), nodes, each task's primary metric."""
        metric_names = metric_names or {}
        header = ["preference", "budget", "c", "MFLOPs", "% anchor", "nodes"]
        header += [f"{t}:{metric_names.get(t, 'loss')}" for t in self.tasks]
        lines = [header]
        for row in self.rows:
            pref = "(" + ", ".join(f"{p:.2f}" for p in row["preference"]) + ")"
            budget = "-" if row.get("budget") is None else f"{row['budget']:.2f}"
            n_nodes = sum(len(set(r)) for r in row["tree"]["assignment"])
            cells = [pref, budget, f"{row['c']:.2f}", f"{row['flops'] / 1e6:.2f}", f"{100 * row['flops'] / self.anchor_flops:.0f}", str(n_nodes)]
            cells += [f"{row['metrics'][t][metric_names.get(t, 'loss')]:.4f}" for t in self.tasks]
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)

    def __str__(self) -> str:
        return self.format()
