"""Each task's validation loss along every path of streams: the measured harm of a merge.

[choice] beyond the paper. In a tree, task ``k``'s prediction depends only on its own path, the node it reads
at every layer: ``path = (p_0, ..., p_{L-1})``, ``p_l`` the stream whose block ``l`` it runs. A merge changes
the paths of the tasks it moves and nothing else, so a table of ``loss_k(path)`` over all ``N ** L`` paths
prices every merge exactly, for the streams as they are (no adaptation). The affinity-and-depth guess it
replaces in the merge search (:func:`dymu.budget.shrink_to_budget`) broke the rank order on fashion_digits:
it moved the digit task onto the parity stream's first block at preferences up to 0.22, where that cost
digit 11 points of accuracy and reading the parity stream all the way up cost 7.

Measuring the table costs one pass per path over a few validation batches, with shared prefixes computed
once: ``N + N^2 + ... + N^L`` block evaluations and ``N^(L+1)`` head evaluations per batch (1,554 and 7,776
for six tasks on four blocks; the heads dominate when they are large).

>>> table = PathLosses(n_tasks=2, n_layers=2, losses=[[1., 2.], [1.5, 2.5], [3., 1.8], [3., 2.]])
>>> table.loss(0, (0, 0)), table.loss(1, (1, 1)), table.loss(1, (1, 0))
(1.0, 2.0, 1.8)
>>> round(table.relative_increase(0, (1, 0)), 6)     # task 0 reading stream 1's first block: 3.0 / 1.0 - 1
2.0

With solo streams (:mod:`dymu.solo`) the table also holds each task's loss on its solo stream, which a task
runs while it is alone on its own stream:

>>> table = PathLosses(2, 2, [[1., 2.], [1.5, 2.5], [3., 1.8], [3., 2.]], solo=[0.8, 2.0])
>>> round(table.rise(0, (0, 0), alone=True), 6), table.rise(0, (0, 0), alone=False)
(-0.2, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .anchor import AnchorNet
from .distributed import rank_world
from .tasks import Task

__all__ = ["PathLosses", "MAX_PATHS", "path_count", "path_index", "measure_path_losses"]

#: the most paths measured (``N ** L``); larger trees are searched without a measured table
MAX_PATHS = 20_000


def path_count(n_tasks: int, n_layers: int) -> int:
    """``N ** L``, the number of paths through ``L`` layers of ``N`` streams."""
    return n_tasks**n_layers


def path_index(path: Sequence[int], n_tasks: int) -> int:
    """The row of ``path`` in :attr:`PathLosses.losses` (its digits in base ``N``, layer 0 first).

    >>> path_index((0, 0, 0), 3), path_index((0, 0, 2), 3), path_index((1, 0, 0), 3)
    (0, 2, 9)
    """
    index = 0
    for node in path:
        index = index * n_tasks + int(node)
    return index


@dataclass(frozen=True, eq=False)
class PathLosses:
    """Per-task losses along every path: ``losses [N ** L, N]``, row :func:`path_index` ``(path)``, column ``k``
    task ``k``'s mean loss when its head reads the end of ``path``. ``samples``: the images measured on."""

    n_tasks: int
    n_layers: int
    losses: np.ndarray
    samples: int = 0
    solo: np.ndarray | None = None
    #: ``((assignment [L][N], losses [N]), ...)``: each own tree's per-task losses on its own weights (:mod:`dymu.own_trees`)
    own_trees: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "losses", np.asarray(self.losses, dtype=float))
        own = []
        for assignment, losses in self.own_trees:
            rows = tuple(tuple(int(v) for v in row) for row in assignment)
            values = np.asarray(losses, dtype=float)
            if np.shape(rows) != (self.n_layers, self.n_tasks) or np.shape(values) != (self.n_tasks,) or not np.isfinite(values).all():
                raise ValueError(f"an own tree needs a [{self.n_layers}][{self.n_tasks}] assignment and {self.n_tasks} finite "
                                 f"losses, got {rows} and {values}")
            own.append((rows, values))
        object.__setattr__(self, "own_trees", tuple(own))
        if self.solo is not None:
            object.__setattr__(self, "solo", np.asarray(self.solo, dtype=float))
            if np.shape(self.solo) != (self.n_tasks,) or not np.isfinite(self.solo).all():
                raise ValueError(f"solo losses must be {self.n_tasks} finite numbers, one per task, got {self.solo}")
        shape = (path_count(self.n_tasks, self.n_layers), self.n_tasks)
        if np.shape(self.losses) != shape:
            raise ValueError(f"path losses must have shape {shape} (N ** L paths x N tasks), got {np.shape(self.losses)}")
        if not np.isfinite(self.losses).all():
            raise ValueError("path losses hold a non-finite value: measure them again on finite data")

    def loss(self, task: int, path: Sequence[int]) -> float:
        return float(self.losses[path_index(path, self.n_tasks), task])

    def own(self, task: int) -> float:
        """Task ``task``'s loss on its own stream (its path in the anchor tree)."""
        return self.loss(task, (task,) * self.n_layers)

    def relative_increase(self, task: int, path: Sequence[int]) -> float:
        """``loss(task, path) / own(task) - 1``: how much worse the task does on ``path`` than on its own stream."""
        return self.loss(task, path) / max(self.own(task), 1e-12) - 1.0

    def rise(self, task: int, path: Sequence[int], alone: bool) -> float:
        """:meth:`relative_increase`, except that a task ``alone`` on its own stream runs its solo stream when the
        table has solo losses: then ``solo(task) / own(task) - 1``."""
        if alone and self.solo is not None:
            return float(self.solo[task]) / max(self.own(task), 1e-12) - 1.0
        return self.relative_increase(task, path)

    def own_tree_rise(self, index: int, task: int) -> float:
        """Own tree ``index``'s loss for ``task`` (:attr:`own_trees`) over the task's own stream: ``loss / own(task) - 1``."""
        return float(self.own_trees[index][1][task]) / max(self.own(task), 1e-12) - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_tasks": self.n_tasks, "n_layers": self.n_layers, "samples": self.samples,
                "losses": np.asarray(self.losses, dtype=float).tolist(),
                "solo": None if self.solo is None else np.asarray(self.solo, dtype=float).tolist(),
                "own_trees": [{"assignment": [list(row) for row in a], "losses": v.tolist()} for a, v in self.own_trees]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PathLosses:
        solo = data.get("solo")
        own = tuple((item["assignment"], item["losses"]) for item in data.get("own_trees", ()))
        return cls(int(data["n_tasks"]), int(data["n_layers"]), np.asarray(data["losses"], dtype=float), int(data.get("samples", 0)),
                   None if solo is None else np.asarray(solo, dtype=float), own)


@torch.no_grad()
def measure_path_losses(anchor: AnchorNet, tasks: Sequence[Task], batches: Iterable[tuple[Tensor, dict[str, Tensor]]],
                        device: torch.device) -> PathLosses:
    """Every task's mean loss over ``batches`` along every path of ``anchor``'s streams, the anchor as it is
    (the caller sets train or eval mode, as for :func:`dymu.anchor.tree_losses`). Under ``torch.distributed``
    the sums are added over ranks, so every rank gets the same table.

    Raises:
        ValueError: more than :data:`MAX_PATHS` paths, no batch, or a non-finite loss (naming the path and task).
    """
    n, n_layers = anchor.n_tasks, anchor.n_layers
    count = path_count(n, n_layers)
    if count > MAX_PATHS:
        raise ValueError(f"{n} tasks on {n_layers} blocks give {count} paths, more than the {MAX_PATHS} measured at most")
    totals = torch.zeros(count, n, dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    for x, targets in batches:
        x = x.to(device)
        targets = {t.name: targets[t.name].to(device) for t in tasks}
        _descend(anchor, tasks, x, targets, layer=0, prefix=0, features=[], totals=totals)
        seen += x.shape[0]
    if rank_world()[1] > 1:
        torch.distributed.all_reduce(totals)
        torch.distributed.all_reduce(seen)
    if float(seen) == 0:
        raise ValueError("no batch to measure the path losses on")
    finite = torch.isfinite(totals)
    if not bool(finite.all()):
        index, k = (int(v) for v in (~finite).nonzero()[0])
        path = [(index // n ** (n_layers - 1 - layer)) % n for layer in range(n_layers)]
        raise ValueError(f"task {tasks[k].name!r} has a non-finite loss along path {path}: check the data and the streams")
    return PathLosses(n, n_layers, (totals / seen).cpu().numpy(), samples=int(seen))


def _descend(anchor: AnchorNet, tasks: Sequence[Task], x: Tensor, targets: dict[str, Tensor], layer: int, prefix: int,
             features: list[Tensor], totals: Tensor) -> None:
    """Depth first over paths, one batch: each prefix's features computed once and dropped when its subtree is done."""
    n = anchor.n_tasks
    inp = x if layer == 0 else features[-1]
    for stream in range(n):
        out = anchor.block(layer, stream)(inp)
        index = prefix * n + stream
        path_features = features + [out]
        if layer + 1 < anchor.n_layers:
            _descend(anchor, tasks, x, targets, layer + 1, index, path_features, totals)
            continue
        skips = [path_features[s] for s in anchor.skip_layers]
        for k, task in enumerate(tasks):
            prediction = anchor.heads[task.name](out, *skips)
            totals[index, k] += task.loss(prediction, targets[task.name]).double() * x.shape[0]
