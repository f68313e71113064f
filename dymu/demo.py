"""The main job: train a small controller on real data, build models for a few requests, plot.

``dymu demo`` runs it on ``fashion_digits`` (a Fashion-MNIST item and an MNIST digit per 36x36 image,
six tasks of three kinds): stage 0 trains the six single-task streams and reports their test metrics;
the RSA task affinity of the frozen streams gives static branching trees at two budgets; stages 1-2
train the hypernetworks; finally models are built for a handful of preferences and budgets and
evaluated on the test split. Everything lands in ``--out``: the checkpoint, ``results.json`` and the
plots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affinity import branching_tree, plot_affinity, plot_dendrogram, plot_tree, plot_trees

from .backbones import lenet
from .checkpoint import versions
from .controller import Controller
from .data import load_benchmark
from .evaluation import evaluate_model
from .results import write_json
from .training import AnchorConfig, EdgeConfig, WeightConfig

__all__ = ["run_demo", "DEMO_REQUESTS"]

#: (label, preference over fashion, fashion_group, digit, parity, segment, clean, budget)
DEMO_REQUESTS: list[tuple[str, list[float], float]] = [
    ("uniform, full budget", [1, 1, 1, 1, 1, 1], 1.0),
    ("uniform, half budget", [1, 1, 1, 1, 1, 1], 0.5),
    ("fashion tasks", [0.45, 0.45, 0.02, 0.02, 0.03, 0.03], 0.6),
    ("digit tasks", [0.02, 0.02, 0.45, 0.45, 0.03, 0.03], 0.6),
    ("dense tasks", [0.03, 0.03, 0.02, 0.02, 0.45, 0.45], 0.6),
    ("uniform, minimum budget", [1, 1, 1, 1, 1, 1], None),
]


def run_demo(
    out: str | Path = "runs/demo",
    *,
    anchor_steps: int = 600,
    edge_steps: int = 400,
    weight_steps: int = 200,
    batch_size: int = 128,
    limit: int | None = None,
    data_root: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train, build, evaluate and plot; returns the results written to ``out/results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    start = time.time()
    print(f"[demo] building fashion_digits (seed {seed}) ...", flush=True)
    train, val, test = load_benchmark("fashion_digits", batch_size, seed=seed, limit=limit, root=data_root, eval_batch_size=1000)
    print(f"[demo] {len(train.dataset)} train / {len(val.dataset)} val / {len(test.dataset)} test images", flush=True)

    ctrl = Controller(lenet(), "fashion_digits", seed=seed)
    ctrl.fit_anchor(train, val, config=AnchorConfig(steps=anchor_steps, eval_every=max(1, anchor_steps // 3), seed=seed), device=device)
    single = evaluate_streams_on(ctrl, test, device)
    print("\n[demo] single-task streams on the test split:")
    for task in ctrl.tasks:
        print(f"  {task.name:>14}  {task.primary} {single[task.name][task.primary]:.4f}   loss {single[task.name]['loss']:.4f}")

    affinity = ctrl.fit_affinity(train, device=device)
    plot_affinity(affinity, out / "affinity.png")
    plot_dendrogram(affinity, out / "dendrogram.png")
    table = ctrl.cost_table
    static = {}
    for budget in (0.25, 0.6):
        tree = branching_tree(affinity, extra_share=budget, layer_costs=list(table.block_flops))
        static[budget] = tree
        plot_tree(tree, out / f"static_tree_budget_{budget}.png", layer_costs=list(table.block_flops),
                  title=f"static RSA branching tree at budget {budget}")
    print("\n[demo] task affinity (mean over layers, measure %s):" % affinity.measure)
    print(_matrix_text(affinity.tasks, affinity.matrix))
    for budget, tree in static.items():
        print(f"\n[demo] static branching tree at budget {budget}:\n{tree}")

    ctrl.fit_edge(train, val, config=EdgeConfig(steps=edge_steps, seed=seed), device=device)
    choice = ctrl.stages["edge"].get("search")
    if choice:
        print("\n[demo] budget search chosen on validation: " + choice["chosen"] + " (validation scores, lower is better: "
              + ", ".join(f"{k} {v:.4f}" for k, v in choice["scores"].items()) + ")", flush=True)
    ctrl.fit_weights(train, val, config=WeightConfig(steps=weight_steps, seed=seed), device=device)
    ckpt = ctrl.save(out / "controller.pt")

    rows = []
    models = {}
    print("\n[demo] models built for a few preferences and budgets (test split):")
    for label, pref, budget in DEMO_REQUESTS:
        budget = ctrl.min_budget if budget is None else budget
        model = ctrl.build_model(pref, budget)
        metrics = evaluate_model(model, ctrl.tasks, test, torch.device(device))
        models[label] = model
        rows.append({"label": label, "budget": budget, **model.info, "metrics": metrics})
    print(_results_text(ctrl, rows))
    for row in rows:
        print(f"\n[demo] {row['label']}: c = {row['c']:.2f}, {row['flops'] / 1e6:.2f} MFLOPs\n{models[row['label']].tree}")

    first, second = "fashion tasks", "dense tasks"
    plot_trees(
        [models[first].tree, models[second].tree],
        out / "derived_trees.png",
        titles=[f"{name} ({models[name].info['flops'] / table.anchor_flops:.0%} of the anchor's FLOPs, heads included)"
                for name in (first, second)],
        layer_costs=list(table.block_flops),
    )
    results = {
        "benchmark": "fashion_digits",
        "seed": seed,
        "steps": {"anchor": anchor_steps, "edge": edge_steps, "weights": weight_steps, "batch_size": batch_size},
        "versions": versions(),
        "single_task_test": single,
        "affinity": affinity.to_dict(),
        "static_trees": {str(b): t.to_dict() for b, t in static.items()},
        "anchor_flops": table.anchor_flops,
        "min_budget": ctrl.min_budget,
        "search": choice,
        "requests": rows,
        "checkpoint": str(ckpt),
        "seconds": time.time() - start,
    }
    write_json(out / "results.json", results)
    print(f"\n[demo] done in {time.time() - start:.0f} s; wrote {out}/results.json, controller.pt and the plots "
          "affinity.png, dendrogram.png, static_tree_budget_*.png, derived_trees.png")
    return results


def evaluate_streams_on(ctrl: Controller, data, device: str) -> dict[str, dict[str, float]]:
    from .training import evaluate_streams

    return evaluate_streams(ctrl.anchor, ctrl.tasks, data, torch.device(device))


def _matrix_text(tasks, matrix) -> str:
    width = max(len(t) for t in tasks)
    lines = [" " * (width + 2) + " ".join(f"{t[:6]:>6}" for t in tasks)]
    for task, row in zip(tasks, np.asarray(matrix)):
        lines.append(f"  {task:>{width}} " + " ".join(f"{v:6.2f}" for v in row))
    return "\n".join(lines)


def _results_text(ctrl: Controller, rows: list[dict[str, Any]]) -> str:
    header = ["request", "budget", "search", "c", "MFLOPs", "% anchor", "nodes"] + [f"{t.name}:{t.primary}" for t in ctrl.tasks]
    lines = [header]
    for row in rows:
        cells = [row["label"], f"{row['budget']:.2f}", row.get("search", "hypernet"), f"{row['c']:.2f}", f"{row['flops'] / 1e6:.2f}",
                 f"{100 * row['flops'] / ctrl.cost_table.anchor_flops:.0f}",
                 str(sum(len(set(r)) for r in row["tree"]["assignment"]))]
        cells += [f"{row['metrics'][t.name][t.primary]:.3f}" for t in ctrl.tasks]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
