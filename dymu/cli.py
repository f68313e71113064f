"""The ``dymu`` command line.

    dymu demo [--out runs/demo]                     train a small controller on fashion_digits, build, plot
    dymu build CKPT --pref 0.5 0.5 [--budget 0.5]   build one model from a checkpoint: tree, FLOPs
    dymu bench NAME [--quick|--full]                the CPU benchmarks (multifashion, fashion_digits)
    dymu paper NAME --root DIR [--device cuda]      the paper's benchmarks (cifar100, nyuv2, pascal_context)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.out,
        anchor_steps=args.anchor_steps,
        edge_steps=args.edge_steps,
        weight_steps=args.weight_steps,
        batch_size=args.batch_size,
        limit=args.limit,
        data_root=args.data_root,
        seed=args.seed,
        device=args.device,
    )
    return 0


def _build(args: argparse.Namespace) -> int:
    from . import load

    ctrl = load(args.checkpoint)
    model = ctrl.build_model(args.pref, args.budget, c=args.c)
    print(model.tree)
    info = {k: v for k, v in model.info.items() if k != "tree"}
    info["anchor_flops"] = ctrl.cost_table.anchor_flops
    info["min_budget"] = ctrl.min_budget
    print(json.dumps(info, indent=1))
    if args.plot:
        from affinity import plot_tree

        plot_tree(model.tree, args.plot, layer_costs=list(ctrl.cost_table.block_flops))
        print(f"wrote {args.plot}")
    return 0


def _forward(module_name: str, argv: Sequence[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(f"dymu: {module_name} is not available ({error}); install the package from a source checkout", file=sys.stderr)
        return 2
    return int(module.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _forward("benchmarks.run", argv[1:])
    if argv and argv[0] == "paper":
        return _forward("benchmarks.paper", argv[1:])

    parser = argparse.ArgumentParser(prog="dymu", description="Controllable dynamic multi-task networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small controller on real data, build models, print the table, plot")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--anchor-steps", type=int, default=600)
    demo.add_argument("--edge-steps", type=int, default=400)
    demo.add_argument("--weight-steps", type=int, default=200)
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--limit", type=int, default=None, help="use only the first N Fashion-MNIST images per split")
    demo.add_argument("--data-root", default=None, help="folder with the source files (default: $DYMU_DATA, standard places)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(run=_demo)

    build = sub.add_parser("build", help="build one model from a saved controller and print its tree and cost")
    build.add_argument("checkpoint")
    build.add_argument("--pref", type=float, nargs="+", required=True, help="one weight per task, in task order")
    build.add_argument("--budget", type=float, default=None, help="fraction of the anchor's FLOPs, in (0, 1]")
    build.add_argument("--c", type=float, default=None, help="the paper's resource preference in [0, 1]")
    build.add_argument("--plot", default=None, help="write a picture of the tree to this PNG")
    build.set_defaults(run=_build)

    sub.add_parser("bench", help="CPU benchmarks: dymu bench {multifashion,fashion_digits} [--quick|--full]")
    sub.add_parser("paper", help="paper benchmarks: dymu paper {cifar100,nyuv2,pascal_context} --root DIR")
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"dymu {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
