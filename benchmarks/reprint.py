"""Print the markdown table of a benchmark's results file, its targets decided again from its numbers.

Usage::

    python -m benchmarks.reprint benchmarks/results/supernet/fashion_digits.json
    python -m benchmarks.reprint benchmarks/results/longer-supernet/fashion_digits.json --paths digit budget=0.6
    python -m benchmarks.reprint benchmarks/results/family4/fashion_digits.json --against benchmarks/results/family/fashion_digits.json --labels four two

The run itself prints the same table when it ends (:func:`benchmarks.protocol.format_markdown`); this
prints it again from the file, with the targets of the current :mod:`benchmarks.protocol.targets` (for a
file written before a target was added). With ``--paths TASK SETTING`` it prints instead where one task's
path runs in the controller's trees of that setting, one row per evaluation preference (:func:`task_paths`).
Nothing is trained or evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import protocol

__all__ = ["retarget", "task_paths", "unfinished_banner", "main"]


def retarget(results: dict) -> dict:
    """``results`` with ``targets``, ``control_targets`` and ``shared_node_targets`` decided from its methods."""
    methods = results.get("methods") or {}
    reference = next((row.get("hv_ref") for row in methods.values() if row.get("hv_ref") is not None), None)
    return {**results,
            "targets": protocol.check_targets(methods, hv_reference=reference),
            "control_targets": protocol.check_control_targets(methods),
            "shared_node_targets": protocol.check_shared_node_targets(methods, results.get("benchmark", ""))}


def task_paths(results: dict, task: str, setting: str, *, method: str = "dymu", seed_index: int = 0) -> str:
    """A markdown table of where ``task``'s path runs in ``method``'s trees built for ``setting``: per evaluation
    preference (sorted by the task's preference), the task's preference and primary metric, the blocks where
    its node serves it alone, its stream at the first and the last block, and the search that built the tree.

    >>> results = {"tasks": [{"name": "a"}, {"name": "b"}], "methods": {"dymu": {"records": [[
    ...     {"setting": "budget=0.6", "preference": [0.8, 0.2], "primary": [0.9, 0.7],
    ...      "info": {"tree": [[0, 0], [0, 1]], "search": "merge"}}]]}}}
    >>> print(task_paths(results, "b", "budget=0.6").splitlines()[-1])
    | 0.200 | 0.7000 | 1 of 2 | 0 | 1 | merge |

    Raises:
        ValueError: an unknown task, method or setting, or records without trees, naming what exists.
    """
    names = [t["name"] if isinstance(t, dict) else t for t in results.get("tasks") or []]
    if task not in names:
        raise ValueError(f"no task {task!r} in the file; its tasks are {names}")
    records = ((results.get("methods") or {}).get(method) or {}).get("records") or []
    if not records:
        raise ValueError(f"no records of method {method!r} in the file; it has {sorted(results.get('methods') or {})}")
    rows = [r for r in records[seed_index] if r["setting"] == setting]
    if not rows:
        raise ValueError(f"{method} has no records for {setting!r}; it has {sorted({r['setting'] for r in records[seed_index]})}")
    k = names.index(task)
    lines = [f"| r_{task} | {task} primary | blocks on its own node | stream at block 0 | stream at the last block | search |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["preference"][k]):
        tree = r["info"].get("tree")
        if tree is None:
            raise ValueError(f"the {setting} records of {method} hold no trees")
        alone = sum(all(row[j] != row[k] for j in range(len(names)) if j != k) for row in tree)
        lines.append(f"| {r['preference'][k]:.3f} | {r['primary'][k]:.4f} | {alone} of {len(tree)} | {tree[0][k]} | "
                     f"{tree[-1][k]} | {r['info'].get('search', '–')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results file written by python -m benchmarks.run")
    parser.add_argument("--paths", nargs=2, metavar=("TASK", "SETTING"), default=None,
                        help="print where TASK's path runs in the controller's trees of SETTING (e.g. digit budget=0.6)")
    parser.add_argument("--against", type=Path, default=None, metavar="OTHER",
                        help="print the controller of both files side by side (two runs with the same baselines)")
    parser.add_argument("--labels", nargs=2, default=("this", "other"), metavar=("THIS", "OTHER"),
                        help="the two files' names in the --against table")
    args = parser.parse_args(argv)
    results = _read(parser, args.results)
    if args.against is not None:
        try:
            print(protocol.format_comparison(results, _read(parser, args.against), labels=args.labels))
        except ValueError as error:
            parser.error(str(error))
        return 0
    if args.paths is not None:
        try:
            print(task_paths(results, *args.paths))
        except ValueError as error:
            parser.error(str(error))
        return 0
    banner = unfinished_banner(results)
    if banner:
        print(banner + "\n")
    print(protocol.format_markdown(retarget(results)))
    return 0


def _read(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The summarised results file at ``path``; a clear parser error for a missing, broken or unsummarised one."""
    if not path.is_file():
        parser.error(f"no results file at {path}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        parser.error(f"{path} is not a JSON results file: {error}")
    if not results.get("protocol") or not results.get("methods"):
        parser.error(f"{path} has no summarised results yet (a run summarises a seed once its single-task "
                     "baseline is evaluated); finish it with python -m benchmarks.run ... --resume")
    return results


def unfinished_banner(results: dict) -> str:
    """A line for a results file whose run has not finished: the (seed, method) entries it still lacks, so that a
    table printed from it is not read as the whole comparison ("" for a finished run).

    >>> unfinished_banner({"complete": False, "seeds": [0], "config": {"methods": ["dymu", "phn", "hard_sharing"]},
    ...                    "methods": {"dymu": {"seeds": [0]}, "phn": {"seeds": [0]}}})
    'UNFINISHED run: not yet run: hard_sharing (seed 0); finish it with python -m benchmarks.run ... --resume'
    """
    if results.get("complete", True):
        return ""
    methods = results.get("methods") or {}
    wanted = (results.get("config") or {}).get("methods") or list(methods)
    missing = []
    for name in wanted:
        done = set((methods.get(name) or {}).get("seeds") or [])
        left = [seed for seed in results.get("seeds") or [] if seed not in done]
        if left:
            missing.append(f"{name} (seed{'s' if len(left) > 1 else ''} {', '.join(map(str, left))})")
    what = "not yet run: " + ", ".join(missing) if missing else "its summary is not final"
    return f"UNFINISHED run: {what}; finish it with python -m benchmarks.run ... --resume"


if __name__ == "__main__":
    sys.exit(main())
