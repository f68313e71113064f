"""What a controller's training kept: one line per stage, read from its saved state alone.

A stage that validates (:mod:`dymu.loop`'s ``KeepBest``) keeps its best state, which may be the state it
started from. A user who trained for an hour wants to know that before reading any benchmark: on the
fashion_digits preset both hypernet stages kept their start (``dymu info``), so the served trees came from
the search chosen on validation and no adaptation was applied. Reading the saved state, not a rebuilt
controller, makes the report work on any checkpoint, with the user's own tasks or without their code.

>>> state = {"tasks": ["a", "b"], "backbone_arch": "lenet", "n_layers": 2, "control": "budget", "search": "measured",
...          "cost_table": {"block_flops": [10, 20], "head_flops": [5, 5], "block_params": [1, 2], "head_params": [1, 1],
...                         "input_shape": [1, 8, 8]},
...          "stages": {"anchor": {"config": {"steps": 100}, "seconds": 30.0,
...                                "best_val": {"a": {"loss": 0.41, "acc": 0.85}, "b": {"loss": 0.02}}},
...                     "edge": {"config": {"steps": 50}, "seconds": 90.0,
...                              "selection": {"best_step": 0, "best_score": 0.852, "history": [{"step": 50, "score": 0.879}]},
...                              "search": {"scores": {"hypernet": 0.852, "measured": 0.809}, "chosen": "measured"}}}}
>>> print(training_report(state))
controller: 2 tasks (a, b), backbone lenet, 2 blocks; anchor 70 FLOPs, minimum budget 0.571 (one stream and the heads); control by budget
stage 0 (streams): 100 steps in 30 s; best validation: a acc 0.850, b loss 0.0200
edge hypernet: 50 steps in 1.5 min; kept its start (score 0.8520; trained states reached at best 0.8790, last at step 50 0.8790)
searches on validation (lower is better): measured 0.8090 (serves requests), hypernet 0.8520
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .budget import CostTable

__all__ = ["training_report", "kept_states"]

#: the stages in training order, with the name a user knows them by
STAGE_NAMES = {"anchor": "stage 0 (streams)", "affinity": "affinity", "supernet": "supernet", "edge": "edge hypernet",
               "weights": "weight hypernet"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "? s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _validation(best_val: Mapping[str, Mapping[str, float]]) -> str:
    """Each task's first metric other than the loss (the loss when it has none)."""
    cells = []
    for task, metrics in best_val.items():
        name = next((k for k in metrics if k != "loss"), "loss")
        value = metrics.get(name)
        cells.append(f"{task} {name} " + ("?" if value is None else f"{value:.3f}" if name != "loss" else f"{value:.4f}"))
    return ", ".join(cells)


def _kept(stage: str, selection: Mapping[str, Any], steps: int | None) -> str:
    """What the validation selection of one stage kept, against the trained states it saw."""
    best, score = selection.get("best_step"), selection.get("best_score")
    history = [h for h in selection.get("history") or [] if h.get("score") is not None and h.get("step")]
    if best is None or score is None:
        return "no validation selection"
    if best == 0:
        start = {"supernet": "the stage-0 streams", "weights": "its start: no adaptation"}.get(stage, "its start")
        text = f"kept {start} (score {score:.4f}"
        if history:
            trained = min(h["score"] for h in history)
            text += f"; trained states reached at best {trained:.4f}, last at step {history[-1]['step']} {history[-1]['score']:.4f}"
        return text + ")"
    initial = selection.get("initial_score")
    before = f"{initial:.4f} at its start -> " if initial is not None else ""
    return f"kept step {best}{'' if steps is None else f' of {steps}'} (score {before}{score:.4f})"


def _stage_line(stage: str, record: Mapping[str, Any]) -> str:
    name = STAGE_NAMES.get(stage, stage)
    if stage == "affinity":
        return f"affinity: {record.get('measure', '?')} similarity over {record.get('n_samples', '?')} samples"
    steps = (record.get("config") or {}).get("steps")
    head = f"{name}: {'?' if steps is None else steps} steps in {_duration(record.get('seconds'))}"
    parts = [head]
    warm = record.get("warm_start")
    if warm:  # fitted without a training image before the stage's steps: the start the selection may keep
        parts.append(f"warm start {warm.get('steps', '?')} steps, match with the search's trees "
                     f"{warm.get('match_before', float('nan')):.2f} -> {warm.get('match_after', float('nan')):.2f}")
    if stage == "anchor" and record.get("best_val"):
        parts.append("best validation: " + _validation(record["best_val"]))
    elif record.get("selection") is not None:
        parts.append(_kept(stage, record["selection"], steps))
    solo = record.get("solo")
    if isinstance(solo, Mapping) and solo:
        alone = [t for t, r in solo.items() if r.get("solo")]
        parts.append(f"solo streams serve {', '.join(alone) if alone else 'no task'}")
    return "; ".join(parts)


def kept_states(stages: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per validated stage of :attr:`dymu.Controller.stages`, what its selection kept, JSON-ready:
    ``{stage: {"steps", "best_step", "best_score", "kept_start"}}`` (``kept_start``: no trained state beat the
    stage's start), and under ``"search"`` the searches' validation scores and the chosen one when scored.

    >>> kept_states({"weights": {"config": {"steps": 25}, "selection": {"best_step": 0, "best_score": 0.8}},
    ...              "affinity": {"n_samples": 256}})
    {'weights': {'steps': 25, 'best_step': 0, 'best_score': 0.8, 'kept_start': True}}
    """
    out: dict[str, dict[str, Any]] = {}
    for stage, record in stages.items():
        selection = record.get("selection") if isinstance(record, Mapping) else None
        if not selection or selection.get("best_step") is None:
            continue
        out[stage] = {"steps": (record.get("config") or {}).get("steps"), "best_step": int(selection["best_step"]),
                      "best_score": selection.get("best_score"), "kept_start": int(selection["best_step"]) == 0}
    search = ((stages.get("edge") or {}).get("search") or {}) if isinstance(stages.get("edge"), Mapping) else {}
    if search.get("scores"):
        out["search"] = {"chosen": search.get("chosen"), "scores": dict(search["scores"])}
    return out


def training_report(state: Mapping[str, Any]) -> str:
    """One line about the controller, then one per trained stage and, when searches were scored, their
    validation scores.

    Args:
        state: a controller's :meth:`~dymu.Controller.state_dict`, or a checkpoint's contents
            (:func:`dymu.checkpoint.read_checkpoint`).

    Returns:
        the report, lines joined by newlines (no trailing newline).
    """
    tasks = list(state.get("tasks") or [])
    lines = []
    cost = ""
    if state.get("cost_table"):
        table = CostTable.from_dict(state["cost_table"])
        anchor = table.anchor_flops
        flops = f"{anchor / 1e6:.2f} MFLOPs" if anchor >= 1e5 else f"{anchor} FLOPs"
        cost = f"; anchor {flops}, minimum budget {table.min_budget:.3f} (one stream and the heads)"
    control = f"; control by {state['control']}" if state.get("control") else ""
    lines.append(f"controller: {len(tasks)} tasks ({', '.join(tasks)}), backbone {state.get('backbone_arch', '?')}, "
                 f"{state.get('n_layers', '?')} blocks{cost}{control}")
    stages = state.get("stages") or {}
    order = [s for s in STAGE_NAMES if s in stages] + [s for s in stages if s not in STAGE_NAMES]
    for stage in order:
        record = stages[stage]
        if isinstance(record, Mapping) and not record.get("randomized"):
            lines.append(_stage_line(stage, record))
    search = (stages.get("edge") or {}).get("search") or {}
    scores, chosen = search.get("scores") or {}, search.get("chosen")
    if scores:
        serving = state.get("search") or chosen
        ranked = sorted(scores.items(), key=lambda item: item[1])
        lines.append("searches on validation (lower is better): " + ", ".join(
            f"{name} {score:.4f}" + (" (serves requests)" if name == serving else "") for name, score in ranked))
    return "\n".join(lines)
