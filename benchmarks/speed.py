"""Speed of the controller: build_model latency, derived models against the anchor, training steps.

    python benchmarks/speed.py [--checkpoint runs/demo/controller.pt] [--threads N] [--out benchmarks/results/speed.json]

Measured in one run on one machine, everything is reported as a ratio to the anchor so that the
numbers survive noisy timers: for budgets {minimum, 0.5, 1} the derived model's forward time and
FLOPs over the full anchor's (batch 64, CPU, eval mode, median of repeated runs), and one training
step of each stage over one anchor training step. Targets (issue 3): the time ratio within 15% of the
FLOPs ratio (savings are real, not masked compute) and build_model under 20 ms for six tasks.
Without a checkpoint a fresh six-task ``fashion_digits`` controller on LeNet is used: timings do not
depend on training, only the trees do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import dymu
from dymu.anchor import tree_forward
from dymu.checkpoint import versions
from hyper import gumbel_softmax, most_likely_parents

def _interleaved_median_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each function, timed round-robin (one call of each per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return _interleaved_median_seconds({"fn": fn}, repeats)["fn"]


def _batch(ctrl: dymu.Controller, size: int, generator: torch.Generator):
    x = torch.rand(size, *ctrl.cost_table.input_shape, generator=generator)
    targets = {}
    with torch.no_grad():
        outputs = ctrl.anchor.forward_single(x[:1])
    for task in ctrl.tasks:
        out = outputs[task.name]
        if out.dim() == 2:  # classification logits
            targets[task.name] = torch.randint(0, out.shape[1], (size,), generator=generator)
        elif task.name == "segment":
            targets[task.name] = torch.randint(0, out.shape[1], (size, *out.shape[2:]), generator=generator)
        else:
            targets[task.name] = torch.rand(size, *out.shape[1:], generator=generator)
    return x, targets


def measure(ctrl: dymu.Controller, batch: int = 64, repeats: int = 20, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, targets = _batch(ctrl, batch, g)
    anchor = ctrl.anchor.eval()

    # build_model latency: distinct requests (no cache hits), six tasks
    rng = np.random.default_rng(seed)
    requests = [(rng.dirichlet(np.ones(ctrl.n_tasks)).tolist(), float(rng.uniform(0.5, 1.0))) for _ in range(repeats + 3)]
    build_times = []
    for i, (pref, budget) in enumerate(requests):
        start = time.perf_counter()
        ctrl.build_model(pref, budget)
        if i >= 3:
            build_times.append(time.perf_counter() - start)

    models = {
        label: ctrl.build_model([1.0] * ctrl.n_tasks, budget, c=0.0 if label == "1" else None)
        for label, budget in (("minimum", ctrl.min_budget), ("0.5", 0.5), ("1", 1.0))
    }
    # the anchor and the derived models are timed in alternation, so that a slow spell of the machine
    # lands on all of them rather than on one side of a ratio
    with torch.no_grad():
        forward_s = _interleaved_median_seconds(
            {"anchor": lambda: anchor.forward_single(x), **{k: (lambda m=m: m(x)) for k, m in models.items()}}, repeats
        )
    anchor_s = forward_s["anchor"]
    budgets = {}
    for label, model in models.items():
        flops_ratio = model.flops() / ctrl.cost_table.anchor_flops
        time_ratio = forward_s[label] / anchor_s
        budgets[label] = {
            "budget": model.info["budget"],
            "nodes": model.tree.n_nodes,
            "flops_ratio": flops_ratio,
            "time_ratio": time_ratio,
            "time_within_15pct_of_flops": abs(time_ratio - flops_ratio) <= 0.15 * flops_ratio,
            "forward_ms": forward_s[label] * 1e3,
        }

    # one training step of each stage, relative to one anchor (stage 0) training step
    tasks = ctrl.tasks
    n = ctrl.n_tasks
    anchor.train()
    optimizer = torch.optim.Adam(anchor.parameters(), lr=0.0)

    def anchor_step():
        outputs = anchor.forward_single(x)
        loss = sum(t.loss(outputs[t.name], targets[t.name]) for t in tasks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    anchor_step_s = _median_seconds(anchor_step, max(5, repeats // 2))
    anchor.eval().requires_grad_(False)
    r = torch.full((1, n), 1.0 / n)
    c = torch.tensor([0.5])

    def edge_step():
        nu = gumbel_softmax(ctrl.edge(r, c)[0], 1.0, hard=True)
        outputs = anchor.routed_forward(x, nu)
        sum(t.loss(outputs[t.name], targets[t.name]) for t in tasks).backward()

    def weight_step():
        with torch.no_grad():
            assignment = most_likely_parents(ctrl.edge(r, c)[0])
        deltas = ctrl.weight(r, c)
        outputs = tree_forward(anchor, assignment, x, lambda l, i: ctrl.weight.split(l, deltas[l][0, i]))
        sum(t.loss(outputs[t.name], targets[t.name]) for t in tasks).backward()

    edge_s = _median_seconds(edge_step, max(5, repeats // 2))
    weight_s = _median_seconds(weight_step, max(5, repeats // 2))
    anchor.requires_grad_(True)
    build_ms = statistics.median(build_times) * 1e3
    return {
        "batch": batch,
        "repeats": repeats,
        "n_tasks": n,
        "backbone": ctrl.anchor.backbone.arch,
        "threads": torch.get_num_threads(),
        "anchor_forward_ms": anchor_s * 1e3,
        "build_model_ms_median": build_ms,
        "build_model_under_20ms": build_ms < 20.0,
        "budgets": budgets,
        "train_step_ratio": {"edge": edge_s / anchor_step_s, "weights": weight_s / anchor_step_s},
        "anchor_train_step_ms": anchor_step_s * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a saved controller (default: a fresh fashion_digits one)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.json"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, the number of cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ctrl = dymu.load(args.checkpoint) if args.checkpoint else dymu.Controller(dymu.backbones.lenet(), "fashion_digits")
    results = measure(ctrl, args.batch, args.repeats, args.seed)
    results.update({"command": "python " + " ".join(sys.argv), "checkpoint": args.checkpoint, "seed": args.seed, "versions": versions()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"build_model median: {results['build_model_ms_median']:.2f} ms  (target < 20 ms: {results['build_model_under_20ms']})")
    print(f"anchor forward, batch {args.batch}: {results['anchor_forward_ms']:.2f} ms")
    print(f"{'budget':>8} {'nodes':>5} {'FLOPs ratio':>11} {'time ratio':>10} {'within 15%':>10}")
    for label, row in results["budgets"].items():
        print(f"{label:>8} {row['nodes']:>5} {row['flops_ratio']:>11.3f} {row['time_ratio']:>10.3f} {str(row['time_within_15pct_of_flops']):>10}")
    ratios = results["train_step_ratio"]
    print(f"training step vs anchor step: edge {ratios['edge']:.2f}x, weights {ratios['weights']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
