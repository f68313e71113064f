"""Built models measured on the test split: one :class:`ModelRecord` per (setting, preference).

Two producers, one record: :func:`evaluate_method` builds and measures any method's models (the CPU
benchmarks), :func:`records_from_table` reads the rows of a controller's
:meth:`dymu.Controller.evaluate` table (the paper pipelines). :mod:`benchmarks.protocol.summary` turns
records into numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import dymu
from dymu.evaluation import evaluate_model
from dymu.metrics import count_flops, count_params
from dymu.tasks import Task

from .requests import Setting, format_number

__all__ = ["ModelRecord", "evaluate_method", "records_from_table"]


@dataclass
class ModelRecord:
    """One built model on the test split.

    Attributes:
        setting: the :class:`~benchmarks.protocol.Setting` name it was built for.
        preference: ``[N]`` the task preference.
        losses: ``[N]`` its test loss per task (task order).
        primary: ``[N]`` its primary metric per task.
        metrics: ``{task: {metric: value}}`` everything measured.
        flops: FLOPs of one image through it; params: its parameter count.
        info: how it was built (the controller's ``c`` used, ``tree``: its assignment ``[L][N]``, whether
            shrunk), where known.
    """

    setting: str
    preference: list[float]
    losses: list[float]
    primary: list[float]
    metrics: dict[str, dict[str, float]]
    flops: int
    params: int
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting, "preference": self.preference, "losses": self.losses, "primary": self.primary,
            "flops": self.flops, "params": self.params, "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        """The record :meth:`as_dict` wrote (a results file's ``records``), for summarising it again.
        ``metrics`` is not in the file and comes back empty: :func:`~benchmarks.protocol.summarise` reads
        only the losses and primary metrics."""
        return cls(setting=data["setting"], preference=list(data["preference"]), losses=list(data["losses"]),
                   primary=list(data["primary"]), metrics={}, flops=data["flops"], params=data["params"],
                   info=dict(data.get("info") or {}))

    @property
    def n_nodes(self) -> int | None:
        """Distinct nodes of its tree (None without a tree)."""
        tree = self.info.get("tree")
        return None if tree is None else sum(len(set(row)) for row in tree)


def _assignment(tree: Any) -> list[list[int]]:
    """A tree (an :class:`affinity.Tree` or its dict) as its assignment ``[L][N]``."""
    rows = tree["assignment"] if isinstance(tree, Mapping) else tree.assignment
    return [list(r) for r in rows]


def _model_key(model: nn.Module, preference: np.ndarray) -> tuple:
    """Models with equal keys are the same network. A controller's model is identified by its tree and, when
    the weight hypernet adapted it, by the preference and ``c`` the adaptation was computed for (without the
    weight hypernet a tree's network is the anchor's blocks whatever the request); any other model by its
    identity (a static method hands out one stored object)."""
    info = getattr(model, "info", None)
    if isinstance(info, Mapping) and "tree" in info and "c" in info and "weight_hypernet" in info:
        assignment = tuple(tuple(row) for row in _assignment(info["tree"]))
        if not info["weight_hypernet"]:
            return ("tree", assignment)
        return ("plan", tuple(np.round(preference, 12)), float(info["c"]), assignment)
    return ("object", id(model))


def _slim_info(info: Any) -> dict[str, Any]:
    """What a record keeps of a model's ``info``: ``c``, ``shrunk``, ``budget`` and the tree's assignment."""
    if not isinstance(info, Mapping):
        return {}
    keep = {k: info[k] for k in ("c", "shrunk", "budget", "search", "own_weights") if k in info}
    if "tree" in info:
        keep["tree"] = _assignment(info["tree"])
    return keep


def _record(setting: str, pref: Sequence[float], tasks: Sequence[Task], metrics: Mapping[str, Mapping[str, float]],
            flops: int, params: int, info: Any) -> ModelRecord:
    names = [t.name for t in tasks]
    return ModelRecord(
        setting=setting,
        preference=[float(v) for v in pref],
        losses=[float(metrics[n]["loss"]) for n in names],
        primary=[float(metrics[t.name][t.primary]) for t in tasks],
        metrics={n: {k: float(v) for k, v in metrics[n].items()} for n in names},
        flops=int(flops),
        params=int(params),
        info=_slim_info(info),
    )


def evaluate_method(
    method: Any,
    tasks: Sequence[Task],
    test: Iterable,
    preferences: np.ndarray,
    settings: Sequence[Setting],
    *,
    device: torch.device | str = "cpu",
    example: torch.Tensor,
    log: Callable[[str], None] | None = None,
) -> list[ModelRecord]:
    """Build ``method``'s (a :class:`benchmarks.methods.Method`) model for every (setting, preference
    ``[P, N]``), and measure it on ``test``.

    The test data is read once per distinct model (see :func:`_model_key`); a model seen before reuses its
    measurements. ``example`` is one input ``[1, C, H, W]`` the FLOPs are counted on.

    Returns:
        one :class:`ModelRecord` per (setting, preference), settings outer, preferences inner.
    """
    device = torch.device(device)
    seen: dict[tuple, tuple[nn.Module, dict, int, int]] = {}
    records: list[ModelRecord] = []
    total = len(settings) * len(preferences)
    start = time.time()
    evaluated = 0
    for s_index, setting in enumerate(settings):
        for p_index, pref in enumerate(np.asarray(preferences, dtype=np.float64)):
            model = method.model_for(pref, c=setting.c, budget=setting.budget)
            key = _model_key(model, pref)
            if key not in seen:
                model = model.to(device)
                metrics = evaluate_model(model, tasks, test, device)
                flops = count_flops(model, example.to(device))
                # the model is kept alive beside its key so that an object's id cannot be reused
                seen[key] = (model, metrics, flops, count_params(model))
                evaluated += 1
            _, metrics, flops, params = seen[key]
            records.append(_record(setting.name, pref, tasks, metrics, flops, params, getattr(model, "info", None)))
            done = s_index * len(preferences) + p_index + 1
            if log is not None and (done == total or done % max(1, math.ceil(total / 4)) == 0):
                elapsed = time.time() - start
                eta = elapsed / done * (total - done)
                log(f"evaluated {done}/{total} requests ({evaluated} distinct models) in {elapsed:.0f} s, ETA {eta:.0f} s")
    return records


def records_from_table(table: dymu.EvaluationTable, tasks: Sequence[Task]) -> list[ModelRecord]:
    """The rows of a table from ``Controller.evaluate(..., cs=...)`` as records of the settings ``"c=<c>"``.

    Raises:
        ValueError: the table's tasks differ from ``tasks``.
    """
    if list(table.tasks) != [t.name for t in tasks]:
        raise ValueError(f"the table's tasks {list(table.tasks)} differ from {[t.name for t in tasks]}")
    return [
        _record(f"c={format_number(row['c'])}", row["preference"], tasks, row["metrics"], row["flops"], row["params"], row)
        for row in table.rows
    ]
