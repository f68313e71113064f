"""The ``dymu`` command line.

    dymu train CONFIG.toml [--resume]               train a controller on your own tasks and data (see README)
    dymu eval CKPT [--data SPEC] --pref ... [--budget ...]   evaluate built models: table + JSON
    dymu build CKPT --pref ... [--budget B] [--export model.pt2]   build one model: tree, FLOPs, ship it
    dymu plot {affinity,tree,front} ...             pictures from a checkpoint or a results JSON
    dymu demo [--out runs/demo]                     train a small controller on fashion_digits, build, plot
    dymu bench NAME [--quick|--full]                the CPU benchmarks (multifashion, fashion_digits)
    dymu paper NAME --root DIR [--device cuda]      the paper's benchmarks (cifar100, nyuv2, pascal_context)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

_EPILOG = """\
Typical use with your own tasks (full example in the README, "Train on your own tasks"):
  dymu train tiny.toml                                      # writes runs/tiny/{controller.pt,config.toml,results.json}
  dymu eval runs/tiny/controller.pt --pref 1 1 --pref 1 0 --budget 1 0.5
  dymu info runs/tiny/controller.pt                         # what each training stage kept on validation
  dymu build runs/tiny/controller.pt --pref 0.7 0.3 --budget 0.6 --export model.pt2
  python -c "import torch; m = torch.export.load('model.pt2').module(); print(m(torch.rand(4, 1, 36, 36)))"
Modules named as "module:attribute" are imported from PYTHONPATH and the current folder.
"""


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


def _train(args: argparse.Namespace) -> int:
    from .run import train_from_config
    from .runconfig import ensure_importable, load_config

    config = load_config(args.config)
    ensure_importable(config.path.parent)  # a task/data module beside the config imports by name
    if args.out:
        from dataclasses import replace

        config = replace(config, out=Path(args.out))
    train_from_config(config, verbose=not args.quiet, resume=args.resume)
    return 0


def _load(checkpoint: str):
    from .run import load_run_controller

    return load_run_controller(checkpoint)


def _preferences(ctrl, prefs: list[list[float]] | None) -> list[list[float]]:
    from .run import default_requests

    return prefs if prefs else default_requests(ctrl.task_names)


def _eval(args: argparse.Namespace) -> int:
    from .results import write_json
    from .run import evaluation_budgets, first_batches
    from .runconfig import load_config, resolve_data

    ctrl = _load(args.checkpoint)
    spec, options, batch_size, seed = args.data, {}, args.batch_size, args.seed
    if spec is None:
        saved = Path(args.checkpoint).with_name("config.toml")
        if not saved.is_file():
            raise ValueError(f"give --data (a name or module:attribute): there is no {saved} to take it from")
        config = load_config(saved)
        spec, options = config.data, config.data_options
        batch_size = batch_size or config.batch_size
        seed = config.seed if seed is None else seed
    splits = resolve_data(spec, batch_size or 64, seed or 0, options, key="--data")
    data = first_batches(splits[{"train": 0, "val": 1, "test": 2}[args.split]], args.max_batches)
    budgets = evaluation_budgets(args.budget or [1.0], ctrl.min_budget)
    table = ctrl.evaluate(data, preferences=_preferences(ctrl, args.pref), budgets=budgets, device=args.device)
    print(f"{args.split} split, {len(data)} batches; primary metric per task:")
    print(table.format({t.name: t.primary for t in ctrl.tasks}))
    out = args.out or str(Path(args.checkpoint).with_name(f"eval-{args.split}.json"))
    write_json(out, {"split": args.split, "data": spec, "batches": len(data), **table.to_dict()})
    print(f"wrote {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import read_checkpoint
    from .training_report import training_report

    print(training_report(read_checkpoint(args.checkpoint)))
    return 0


def _build(args: argparse.Namespace) -> int:
    ctrl = _load(args.checkpoint)
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
    if args.export:
        from .export import export_derived

        path = export_derived(model, args.export, fold=not args.no_fold)
        shape = ", ".join(str(s) for s in model.input_shape)
        print(f"wrote {path}: torch.export.load({str(path)!r}).module()(x) with x [B, {shape}] gives {{task: tensor}}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    if args.what == "affinity":
        from affinity import plot_affinity

        ctrl = _load(args.source)
        if ctrl.affinity is None:
            raise ValueError(f"{args.source} holds no task affinity (fit_affinity was not run)")
        path = plot_affinity(ctrl.affinity, args.out or "affinity.png")
    elif args.what == "tree":
        from affinity import plot_tree

        ctrl = _load(args.source)
        model = ctrl.build_model(_preferences(ctrl, args.pref)[0], args.budget, c=args.c)
        share = model.info["flops"] / ctrl.cost_table.anchor_flops
        path = plot_tree(model.tree, args.out or "tree.png", layer_costs=list(ctrl.cost_table.block_flops),
                         title=f"{share:.0%} of the anchor's FLOPs (heads included)")
    else:
        from .plots import plot_eval_front

        path = plot_eval_front(args.source, args.out or "front.png", tasks=args.tasks)
    print(f"wrote {path}")
    return 0


def _forward(module_name: str, argv: Sequence[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(f"dymu: {module_name} is not available ({error}); install the package from a source checkout", file=sys.stderr)
        return 2
    return int(module.main(list(argv)) or 0)


def _add_request(parser: argparse.ArgumentParser, repeat: bool) -> None:
    if repeat:
        parser.add_argument("--pref", type=float, nargs="+", action="append", metavar="W",
                            help="one weight per task, in task order (repeat for several; default: uniform and each task alone)")
    else:
        parser.add_argument("--pref", type=float, nargs="+", required=True, metavar="W",
                            help="one weight per task, in task order (normalised to sum to 1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dymu", description="Controllable dynamic multi-task networks: train a controller once, then build a "
        "multi-task model for any task preference and compute budget.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a controller from a TOML config (your own tasks and data)",
                           description="Train every stage from CONFIG.toml and write controller.pt, config.toml and "
                           "results.json to its output folder. The config format is documented in dymu/runconfig.py "
                           "and the README section 'Train on your own tasks'.")
    train.add_argument("config", help="the TOML run config")
    train.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    train.add_argument("--quiet", action="store_true", help="no progress lines (also: DYMU_QUIET=1)")
    train.add_argument("--resume", action="store_true", help="continue a killed run from the checkpoints in OUT/checkpoints "
                       "(finished stages are loaded, the interrupted one resumes; the config must be the same)")
    train.set_defaults(run=_train)

    ev = sub.add_parser("eval", help="evaluate the models built for some preferences and budgets",
                        description="Build a model per (preference, budget), evaluate each on a data split, print "
                        "the table and write it as JSON.")
    ev.add_argument("checkpoint", help="a controller.pt")
    ev.add_argument("--data", default=None, help="data: a built-in name or module:attribute (default: the [data] of the "
                    "config.toml beside the checkpoint)")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test", help="which split (default: test)")
    _add_request(ev, repeat=True)
    ev.add_argument("--budget", type=float, nargs="+", default=None, help="fractions of the anchor's FLOPs (default: 1)")
    ev.add_argument("--max-batches", type=int, default=50, help="evaluate on at most this many batches (default: 50)")
    ev.add_argument("--batch-size", type=int, default=None, help="batch size given to the data (default: the config's, or 64)")
    ev.add_argument("--seed", type=int, default=None, help="seed given to the data (default: the config's, or 0)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=None, help="JSON file to write (default: eval-SPLIT.json beside the checkpoint)")
    ev.set_defaults(run=_eval)

    info = sub.add_parser("info", help="what a saved controller is and what each training stage kept on validation",
                          description="Print the controller's tasks and cost, then per stage its steps, time and the state "
                          "its validation selection kept (its start, when training never beat it), and the searches' "
                          "validation scores. Reads the file alone: no task code or data is needed.")
    info.add_argument("checkpoint", help="a controller.pt")
    info.set_defaults(run=_info)

    build = sub.add_parser("build", help="build one model: print its tree and cost, optionally export it",
                           description="Build the model for one preference and budget; --export writes a torch.export "
                           "program (.pt2) that runs with torch alone, BatchNorm folded, any batch size.")
    build.add_argument("checkpoint", help="a controller.pt")
    _add_request(build, repeat=False)
    build.add_argument("--budget", type=float, default=None, help="fraction of the anchor's FLOPs, in (0, 1]")
    build.add_argument("--c", type=float, default=None, help="the paper's resource preference in [0, 1]")
    build.add_argument("--plot", default=None, help="write a picture of the tree to this PNG")
    build.add_argument("--export", default=None, metavar="MODEL.pt2", help="write the model as a torch.export program")
    build.add_argument("--no-fold", action="store_true", help="export without folding BatchNorm into the convolutions")
    build.set_defaults(run=_build)

    plot = sub.add_parser("plot", help="plot the task affinity, a built tree, or the loss front of an evaluation",
                          description="dymu plot affinity CKPT | dymu plot tree CKPT --pref ... [--budget B] | "
                          "dymu plot front RESULTS.json [--tasks A B] (results.json of dymu train, or dymu eval's JSON)")
    plot.add_argument("what", choices=("affinity", "tree", "front"))
    plot.add_argument("source", help="a controller.pt (affinity, tree) or a results JSON (front)")
    plot.add_argument("--out", default=None, help="PNG to write (default: WHAT.png)")
    _add_request(plot, repeat=True)
    plot.add_argument("--budget", type=float, default=None, help="tree: fraction of the anchor's FLOPs")
    plot.add_argument("--c", type=float, default=None, help="tree: the paper's resource preference")
    plot.add_argument("--tasks", nargs=2, default=None, metavar="TASK", help="front: the two tasks on the axes (default: the first two)")
    plot.set_defaults(run=_plot)

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

    sub.add_parser("bench", help="CPU benchmarks: dymu bench {multifashion,fashion_digits} [--quick|--full]")
    sub.add_parser("paper", help="paper benchmarks: dymu paper {cifar100,nyuv2,pascal_context} --root DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _forward("benchmarks.run", argv[1:])
    if argv and argv[0] == "paper":
        return _forward("benchmarks.paper", argv[1:])
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the console script does not put the current folder on the path
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # ConfigError, BadDataError, CheckpointError are ValueErrors
        print(f"dymu {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
