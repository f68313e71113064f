"""The CPU benchmarks on real data: the command line (every method, the protocol of :mod:`benchmarks.protocol`, results and plots).

Usage::

    python -m benchmarks.run multifashion --quick          # one seed, small step budgets: minutes
    python -m benchmarks.run fashion_digits --full         # three seeds, the step budgets below
    python -m benchmarks.run multifashion --full --estimate-only   # measure per-step costs, print the estimate
    dymu bench multifashion --quick                        # the same, through the package's command

Writes ``OUT/NAME.json`` (``OUT/NAME-quick.json`` in quick mode; rewritten after every method) and PNG plots
beside it, prints progress (method, seed, ETA) on stderr and a markdown table of the results on stdout. Each
seed's trained controller is saved in ``OUT/NAME-state/``; ``--resume`` continues an interrupted run from
both, keeping its finished (seed, method) entries (each says the commit it ran on and when it finished). A
controller interrupted while it trains continues too: its stages checkpoint into ``OUT/NAME-state/seed{N}-dymu-stages/``
every 50 steps, so a resumed run loads the finished stages and continues the interrupted one where its last checkpoint
left it, to the numbers of an uninterrupted run (the entry's ``resumed_stages`` says where each stage continued).
Seeds may run as separate processes (one per core) and be gathered into one file by a run over all of them::

    python -m benchmarks.run fashion_digits --full --seeds 1 --out r1     # on one core
    python -m benchmarks.run fashion_digits --full --seeds 2 --out r2     # on the other
    python -m benchmarks.run fashion_digits --full --out all --seeds-from r1/fashion_digits.json r2/fashion_digits.json

Methods (``--methods`` picks a subset; the controller and the single-task streams always run, because the
others use its anchor: loss scales, task affinity, single-task baselines):

============================  ==========================================================================
``dymu``                      the controller (anchor, edge hypernet, weight hypernet)
``single_task``               its stage-0 streams, each on its own task, trained on to the full budget
``dymu_paper``                the paper's control (resource preference ``c``, its regulariser) on the same anchor
``dymu_no_weight_hypernet``   the same controller, trees built without the weight hypernet
``dymu_no_inactive``          ablation: no inactive-task loss (own edge hypernet, shared anchor)
``dymu_no_affinity_depth``    ablation: no affinity and no depth factor in the active-task loss
``dymu_all_active``           ablation: every task counts as active
``phn`` / ``phn_bn``          Pareto HyperNetworks: all weights / only BatchNorm parameters from the hypernet
``static_tree``               a static affinity tree at the controller's mean ``c = 0`` cost, trained once
``static_equal_cost``         a static affinity tree per FLOP budget, for "dynamic beats static at equal cost"
``distilled_trunk``           one hard-sharing trunk distilled from the single-task streams (Li & Bilen 2020),
                              trained once for the controller's total steps less stage 0's (its teachers')
``cross_stitch``              N task streams mixed by cross-stitch units after every block (Misra et al. 2016),
                              trained once for the controller's total steps
``hard_sharing``              one hard-sharing network trained per evaluation preference
============================  ==========================================================================

[choice] The ablations change the branching regulariser, i.e. what the edge hypernet (stage 1) learns; they
share the controller's anchor and, by default, stop after stage 1: their trees are built from the anchor's
own BatchNorm, so compare them with ``dymu_no_weight_hypernet`` (the same pipeline with the paper's
regulariser). This keeps the full runs within their time budget (no stage 2 per ablation, and equal trees
are equal networks, evaluated once); ``--ablations-with-weight-hypernet`` trains stage 2 for them too.
Ablations and ``dymu_no_weight_hypernet`` are evaluated at c = 0 and c = 1 (the paper's settings), the
controller also at the budgets.

Training budget (:data:`benchmarks.protocol.TRAINING_BUDGET_RULE`): every method's training, counting what
it depends on, sees as many training images as the controller's stages together (``StepBudget.total``
steps of the same batch size; the steps per stage: see :data:`MODES`): PHN, PHN-BN, every hard-sharing model
and every static tree train for ``total`` steps, the single-task streams continue stage 0 for the rest. The
results record every method's steps, images and image-block passes. Every method sees the same data, batch
size and seed.
The data set is built once with ``--data-seed`` (default 0); the seed of a run sets the initialisations,
the order of the training batches and the sampled training preferences.

Where things are: presets and :class:`~benchmarks.config.RunConfig` in :mod:`benchmarks.config` (this
command line is generated from its fields), the methods in :mod:`benchmarks.methods` and
:mod:`benchmarks.baselines`, data slices in :mod:`benchmarks.loaders`, cost measurement, estimate and ETA
in :mod:`benchmarks.estimate`, plot data in :mod:`benchmarks.views`, the run itself in
:mod:`benchmarks.orchestrate`, the markdown table in :mod:`benchmarks.protocol.report`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .config import ABLATIONS, ALWAYS, BENCHMARKS, C_ONLY, METHODS, MODES, RunConfig, make_config
from .estimate import estimate, measure_costs
from .methods import SingleTask, WithoutWeightHypernet
from .options import add_options, overrides, parse_fields
from .orchestrate import run_benchmark
from .protocol import format_markdown

__all__ = ["MODES", "METHODS", "ALWAYS", "ABLATIONS", "C_ONLY", "BENCHMARKS", "RunConfig", "SingleTask",
           "WithoutWeightHypernet", "make_config", "run_benchmark", "estimate", "measure_costs", "format_markdown", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=BENCHMARKS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="one seed, small budgets (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="three seeds, the full budgets")
    parser.set_defaults(mode="quick")
    parser.add_argument("--estimate-only", action="store_true", help="measure per-step costs, print the estimate, stop")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run with the same options from OUT/NAME.json and the controllers "
                             "saved beside it: finished (seed, method) entries are kept, the rest run (more methods may be added)")
    parser.add_argument("--baselines-from", metavar="FILE", default=None,
                        help="take the finished entries of the methods that do not depend on the controller's steps "
                             "after stage 0 from FILE, a run whose config differs only in that split (same stage 0, "
                             "total and batch); the controller's methods run again")
    parser.add_argument("--seeds-from", metavar="FILE", nargs="+", default=[],
                        help="take every finished seed of FILE(s), runs of these options on some of --seeds (run as "
                             "other processes, say one per core), with their saved controllers; the rest run here")
    parser.add_argument("--supernet-config", metavar="KEY=VALUE,...", default=None,
                        help="dymu.SupernetConfig fields over the preset's (e.g. budget_trees=2): to rerun a run made "
                             "under an earlier preset (the mode and results file name stay; the file's config records them)")
    parser.add_argument("--edge-config", metavar="KEY=VALUE,...", default=None,
                        help="dymu.EdgeConfig fields over the preset's (e.g. warm_start=merge)")
    # every other option is a RunConfig field; given ones override the preset of the benchmark and mode
    add_options(parser, RunConfig, overrides_only=True)
    return parser


def stage_overrides(config: RunConfig, supernet: str | None, edge: str | None) -> RunConfig:
    """``config`` with the ``KEY=VALUE`` fields of ``supernet`` / ``edge`` set over its preset's stage configs (each
    checked by building the stage's config).

    >>> config = stage_overrides(make_config("fashion_digits", "full"), "budget_trees=2", None)
    >>> config.supernet_config["budget_trees"], config.supernet_config["tree_family"]
    (2, 'affinity')
    """
    import dymu

    changes: dict[str, Any] = {}
    for name, text, cls in (("supernet_config", supernet, dymu.SupernetConfig), ("edge_config", edge, dymu.EdgeConfig)):
        if text is not None:
            # a tuple field as a list: what the results file's JSON reads back, so that --resume compares equal
            fields = {k: list(v) if isinstance(v, tuple) else v for k, v in parse_fields(text, cls).items()}
            reserved = sorted({"steps", "seed"} & set(fields))
            if reserved:
                raise ValueError(f"--{name.replace('_', '-')}: {reserved} are the run's to set (--steps, --supernet-steps, "
                                 "--seeds), not a stage config's")
            merged = {**getattr(config, name), **fields}
            cls(**merged)  # a bad value is refused now, by name, not after stage 0 has trained
            changes[name] = merged
    return replace(config, **changes) if changes else config


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run (or estimate) a benchmark and print its markdown table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    config = stage_overrides(make_config(args.benchmark, args.mode, **overrides(RunConfig, args)),
                             args.supernet_config, args.edge_config)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv)
    results = run_benchmark(config, command=command, estimate_only=args.estimate_only, resume=args.resume,
                            baselines_from=args.baselines_from, seeds_from=args.seeds_from)
    if args.estimate_only:
        return 0
    print(format_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
