"""Print the markdown table of a benchmark's results file, its targets decided again from its numbers.

Usage::

    python -m benchmarks.reprint benchmarks/results/supernet/fashion_digits.json

The run itself prints the same table when it ends (:func:`benchmarks.protocol.format_markdown`); this
prints it again from the file, with the targets of the current :mod:`benchmarks.protocol.targets` (for a
file written before a target was added). Nothing is trained or evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import protocol

__all__ = ["retarget", "main"]


def retarget(results: dict) -> dict:
    """``results`` with ``targets``, ``control_targets`` and ``shared_node_targets`` decided from its methods."""
    methods = results.get("methods") or {}
    reference = next((row.get("hv_ref") for row in methods.values() if row.get("hv_ref") is not None), None)
    return {**results,
            "targets": protocol.check_targets(methods, hv_reference=reference),
            "control_targets": protocol.check_control_targets(methods),
            "shared_node_targets": protocol.check_shared_node_targets(methods, results.get("benchmark", ""))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results file written by python -m benchmarks.run")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"no results file at {args.results}")
    try:
        results = json.loads(args.results.read_text())
    except json.JSONDecodeError as error:
        parser.error(f"{args.results} is not a JSON results file: {error}")
    if not results.get("protocol") or not results.get("methods"):
        parser.error(f"{args.results} has no summarised results yet (a run summarises a seed once its single-task "
                     "baseline is evaluated); finish it with python -m benchmarks.run ... --resume")
    print(protocol.format_markdown(retarget(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
