"""The orchestration of a CPU benchmark run (:func:`run_benchmark`): per seed, every method of the
:class:`~benchmarks.config.RunConfig` is made, trained, evaluated with :mod:`benchmarks.protocol` and
summarised against the seed's single-task metrics; the results file is rewritten after every method, then the
plots are drawn. With ``resume`` the finished (seed, method) entries of an interrupted run's file are kept and
only the others run (:mod:`benchmarks.partial`).

[why one ~450-line module] :class:`BenchmarkRun` holds the state of one run (the data, the protocol's fixed
parts, per seed and method the raw results until they are summarised): its steps read and write that state
and are easier to follow side by side than spread over modules.

>>> hs_indices(25, 5)          # hard sharing's preferences: evenly spread over the list
[0, 6, 12, 18, 24]
>>> cost = {"anchor_flops": 300, "min_flops": 100, "settings": {"c=0": {"mean_flops": 150}}}
>>> static_tree_extra_share(cost)
0.25
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

import dymu
from dymu.checkpoint import versions
from dymu.data import build_benchmark
from dymu.data.datasets import TensorLoader
from dymu.results import write_json
from dymu.training import EdgeConfig, WeightConfig
from dymu.training_report import kept_states

from . import partial, protocol
from .config import ABLATIONS, C_ONLY, RunConfig
from .estimate import RunClock, estimate, format_duration, measure_costs
from .loaders import n_test_examples, n_val_examples, run_loaders
from .methods import ControllerMethod, Method, SingleTask, WithoutWeightHypernet
from .views import controller_views, supernet_effect

__all__ = ["run_benchmark", "BenchmarkRun", "git_state", "hs_indices", "static_tree_extra_share"]


def git_state() -> dict[str, Any] | None:
    """The source tree's commit and whether it had uncommitted changes (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def hs_indices(n_pref: int, k: int | None) -> list[int]:
    """Which evaluation preferences hard sharing trains for: all, or ``k`` evenly spread over the list
    (for the rays: from one end of the front to the other)."""
    if k is None or k >= n_pref:
        return list(range(n_pref))
    if k < 1:
        raise ValueError(f"hard sharing needs at least one preference, got {k}")
    return sorted({int(round(i)) for i in np.linspace(0, n_pref - 1, k)})


def static_tree_extra_share(cost: dict[str, Any]) -> float:
    """The static tree's ``extra_share`` (of the anchor's extra FLOPs over one stream, heads excluded:
    :func:`affinity.branching_tree`) matching the controller's mean cost at c = 0 over the cost preferences
    (``cost``: :func:`benchmarks.protocol.planned_cost`'s result)."""
    extra = cost["anchor_flops"] - cost["min_flops"]
    mean = cost["settings"]["c=0"]["mean_flops"]
    return float(min(1.0, max(0.0, (mean - cost["min_flops"]) / extra))) if extra > 0 else 0.0


def run_benchmark(config: RunConfig, *, command: str = "", log_stream: IO[str] | None = None, estimate_only: bool = False,
                  resume: bool = False, baselines_from: str | Path | None = None,
                  seeds_from: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Run every method of ``config`` for every seed, evaluate with the protocol, write JSON and plots.

    Returns the results dict (also written to ``config.out/<stem>.json``, after every method and at the end).
    With ``estimate_only`` the per-step costs are measured and the estimate returned; nothing is trained or
    written. With ``resume`` an interrupted run's file is continued: its finished (seed, method) entries are
    kept, the rest run (:mod:`benchmarks.partial`; ValueError naming the fields where ``config`` differs).
    With ``baselines_from`` (a results file whose config differs at most in the controller's split after stage
    0) the entries that do not depend on that split are taken over and the rest run
    (:func:`benchmarks.partial.read_baselines`; a resumed file that already has entries wins). With ``seeds_from``
    (results files of this config on some of its seeds, run as other processes) each file's finished seeds are
    taken whole, with their saved controllers (:func:`benchmarks.partial.read_seeds`).
    ``config.threads`` sets torch's CPU threads for the run (restored afterwards).
    """
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        run = BenchmarkRun(config, command, log_stream if log_stream is not None else sys.stderr, resume=resume,
                           baselines_from=baselines_from, seeds_from=seeds_from)
        return run.estimate_only() if estimate_only else run.all()
    finally:
        torch.set_num_threads(threads_before)


class BenchmarkRun:
    """One benchmark run: the data, the protocol's fixed parts, the measured costs, and per method and seed
    its entry (records, cost, times; summarised once the seed's single-task metrics are known)."""

    def __init__(self, config: RunConfig, command: str, stream: IO[str], *, resume: bool = False,
                 baselines_from: str | Path | None = None, seeds_from: Sequence[str | Path] = ()):
        self.config, self.command, self.stream, self.resume = config, command, stream, resume
        self.baselines_from = None if baselines_from is None else Path(baselines_from)
        self.seeds_from = [Path(p) for p in seeds_from]
        self.start = time.time()
        self.device = torch.device(config.device)
        self.say(f"{config.benchmark} ({config.mode}): building the data (data seed {config.data_seed}"
                 + (f", limit {config.limit}" if config.limit else "") + ")")
        self.bench = build_benchmark(config.benchmark, config.data_seed, config.limit, config.data_root)
        self.tasks = self.bench.tasks()
        self.names = [t.name for t in self.tasks]
        self.n_test = n_test_examples(self.bench, config)
        self.n_val = n_val_examples(self.bench, config)
        self.preferences = protocol.evaluation_preferences(len(self.tasks), config.n_preferences)
        self.hs_index = hs_indices(len(self.preferences), config.hs_preferences)
        self.cost_prefs = protocol.cost_preferences(len(self.tasks), config.cost_preferences)
        self.example = self.bench.test.batch(np.arange(1))[0]
        # {method: {seed: entry}}: an entry is finished once written here; "settings" is added by summarise()
        self.entries: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in config.methods}
        self.single_task: dict[str, Any] = {}
        self.spaces: dict[int, protocol.LossSpace] = {}
        self.resumed: list[dict[str, Any]] = []
        self.taken_seeds: set[int] = set()  # seeds with entries taken from --baselines-from (their stage 0 is checked)
        self.views: dict[str, Any] = {}
        self.settings_dynamic: list[protocol.Setting] = []
        self.skipped: list[dict[str, Any]] = []
        self.blind: list[float] | None = None
        self.costs: dict[str, float] = {}
        self.est: dict[str, float] = {}
        self.git = git_state()

    def say(self, text: str) -> None:
        self.stream.write(f"[bench] {text}\n")
        self.stream.flush()

    # ------------------------------------------------------------------------------ estimate
    def measure(self) -> None:
        config = self.config
        load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
        if torch.get_num_threads() > 1 and load > 0.5:
            # measured here: with two threads and other processes on the two cores, a step took up to ten
            # times as long as with one thread
            self.say(f"the load average is {load:.1f} on {cores} cores and torch uses {torch.get_num_threads()} threads: "
                     "if other processes share the cores, --threads 1 avoids the slowdown of competing threads")
        if self.costs:
            self.say("reusing the per-step costs the interrupted run measured")
        else:
            self.say("measuring per-step costs on this machine ...")
            self.costs = measure_costs(self.bench, config, config.calibration_steps)
        self.est = estimate(config, self.costs, len(self.tasks), len(self.bench.val), self.n_test)
        self.est["setup"] = time.time() - self.start  # data, reference point, this measurement
        self.est["total"] += self.est["setup"]
        self.say("measured: " + ", ".join(
            f"{k} {v * 1000:.3g} s/1000 images" if k.startswith("eval") else f"{k} {v:.3g} s" for k, v in self.costs.items()))
        self.say(f"estimate: {format_duration(self.est['per_seed'])} per seed, {format_duration(self.est['total'])} for "
                 f"{len(config.seeds)} seed(s) with the {format_duration(self.est['setup'])} of setup (steps anchor "
                 f"{config.steps.anchor}, edge {config.steps.edge}, weights {config.steps.weights}; "
                 f"{len(self.preferences)} preferences; {self.n_test} test images)")
        for name in config.methods:
            self.say(f"  {name:<26} {format_duration(self.est[name])} per seed")

    def estimate_only(self) -> dict[str, Any]:
        self.measure()
        return {"benchmark": self.config.benchmark, "mode": self.config.mode, "config": self.config.as_dict(),
                "measured_costs": self.costs, "estimate_seconds": self.est}

    # ----------------------------------------------------------------------------------- run
    def all(self) -> dict[str, Any]:
        config = self.config
        if config.benchmark not in protocol.HV_REFERENCE:
            self.blind = protocol.input_blind_losses(self.tasks, TensorLoader(self.bench.train, config.eval_batch_size))
            self.say("hypervolume reference point (input-blind losses on the training split): "
                     + ", ".join(f"{n} {v:.4g}" for n, v in zip(self.names, self.blind)))
        if self.resume:
            self.restore()
        if self.baselines_from is not None:
            if not any(self.entries[name] for name in config.methods):
                self.take_baselines(self.baselines_from)
            else:  # a resumed run: what the other file finished since, or finished instead of this one
                self.take_missing(self.baselines_from)
        for path in self.seeds_from:
            self.take_seeds(path)
        if self.seeds_from:
            self.write()  # the taken seeds are this run's from now on: an interrupted run resumes with them
        self.measure()
        todo = [(seed, name) for seed in config.seeds for name in config.methods if seed not in self.entries[name]]
        self.clock = RunClock([(seed, name, self.est[name]) for seed, name in todo], self.stream)
        for seed in config.seeds:
            self.seed(seed)
        first = config.seeds[0]
        if not self.views and first in self.entries["dymu"]:  # every seed taken, none from a file of this first seed
            self.views = controller_views(self.controller_method(first).controller, config)
        results = self.write()
        out_dir = Path(config.out)
        if config.plots:
            from . import plots

            written = plots.make_all(results, out_dir, config.stem)
            results["plots"] = [str(p) for p in written]
            self.say("plots: " + ", ".join(str(p) for p in written))
            results["wall_seconds"] = time.time() - self.start
            write_json(out_dir / f"{config.stem}.json", results)
        self.say(f"wrote {out_dir / (config.stem + '.json')} in {format_duration(time.time() - self.start)}")
        return results

    def make(self, name: str, seed: int, dymu_method: ControllerMethod | None, dymu_cost: dict[str, Any] | None) -> Method:
        """A fresh, untrained method (the controller's variants and baselines use the trained controller)."""
        steps, tasks = self.config.steps, self.tasks

        def make_controller():
            return dymu.Controller(dymu.backbones.lenet(), tasks, seed=seed)

        if name == "dymu":
            return ControllerMethod(make_controller, steps, edge_config=EdgeConfig(seed=seed, **self.config.edge_config),
                                    weight_config=WeightConfig(seed=seed),
                                    supernet_config=dymu.SupernetConfig(seed=seed, **self.config.supernet_config))
        if name == "single_task":
            return SingleTask(dymu_method)
        if name == "dymu_paper":
            # the paper's control (resource preference c, its regulariser) on the same anchor: both modes reported
            return ControllerMethod(make_controller, steps, edge_config=EdgeConfig(seed=seed, control="paper"),
                                    weight_config=WeightConfig(seed=seed), name=name, anchor_from=dymu_method)
        if name == "dymu_no_weight_hypernet":
            return WithoutWeightHypernet(dymu_method)
        if name in ABLATIONS:
            return ControllerMethod(make_controller, steps, edge_config=EdgeConfig(seed=seed, regulariser=ABLATIONS[name],
                                                                             **self.config.edge_config),
                                    weight_config=WeightConfig(seed=seed), name=name, anchor_from=dymu_method,
                                    use_weight_hypernet=self.config.ablation_weight_hypernet)
        from .baselines import PHN, CrossStitch, DistilledTrunk, HardSharing, StaticTree, StaticTreesAtBudgets

        ctrl = dymu_method.controller
        if name in ("phn", "phn_bn"):
            mode = "full" if name == "phn" else "bn"
            return PHN(dymu.backbones.lenet, tasks, steps, mode=mode, loss_scales=ctrl.loss_scales, seed=seed)
        if name == "static_tree":
            return StaticTree(dymu.backbones.lenet, tasks, steps, ctrl.affinity, static_tree_extra_share(dymu_cost),
                              loss_scales=ctrl.loss_scales, seed=seed)
        if name == "static_equal_cost":
            budgets = [b for b in protocol.EQUAL_COST_BUDGETS if b >= ctrl.min_budget]
            return StaticTreesAtBudgets(dymu.backbones.lenet, tasks, steps, ctrl.affinity, ctrl.cost_table, budgets,
                                        loss_scales=ctrl.loss_scales, seed=seed)
        if name == "distilled_trunk":
            # the teachers are the frozen stage-0 streams: a copy where a later stage fine-tunes the anchor in place
            return DistilledTrunk(dymu.backbones.lenet, tasks, steps, dymu_method.stage0_streams(),
                                  loss_scales=ctrl.loss_scales, seed=seed)
        if name == "cross_stitch":
            return CrossStitch(dymu.backbones.lenet, tasks, steps, loss_scales=ctrl.loss_scales, seed=seed)
        if name == "hard_sharing":
            return HardSharing(dymu.backbones.lenet, tasks, steps, self.preferences[self.hs_index],
                               loss_scales=ctrl.loss_scales, seed=seed)
        raise ValueError(f"unknown method {name!r}")  # make_config rejects unknown names first

    def restore(self) -> None:
        """Take over the finished entries of the interrupted run's file (:func:`benchmarks.partial.read_partial`)."""
        config = self.config
        old = partial.read_partial(config, self.bench.checksum)
        if old is None:
            self.say(f"--resume: no results at {partial.results_path(config)}; starting afresh")
            return
        self.entries = partial.finished_entries(old, config.methods)
        self.single_task = dict(old.get("single_task") or {})
        self.views = old.get("controller_views") or {}
        described = old.get("protocol") or {}
        self.settings_dynamic = [protocol.Setting(**s) for s in described.get("settings_dynamic", [])]
        self.skipped = list(described.get("settings_skipped", []))
        self.costs = dict(old.get("measured_costs") or {})
        kept = [[seed, name] for name in config.methods for seed in sorted(self.entries[name])]
        # seeds whose baselines came from another file: their controller, trained here, must start from the same stage 0
        self.taken_seeds.update(int(seed) for item in old.get("resumed") or [] if item.get("baselines_from")
                                for seed, _ in item.get("kept") or [])
        self.resumed = list(old.get("resumed") or []) + [{"at": _now(), "git": self.git, "kept": kept}]
        for seed in config.seeds:
            self.summarise(seed)  # entries that waited for their seed's single-task metrics
        self.say(f"--resume: kept {len(kept)} finished (seed, method) entries of {partial.results_path(config)}")

    def take_baselines(self, path: Path) -> None:
        """Take over the entries of ``path`` that do not depend on the controller's split after stage 0."""
        config = self.config
        old = partial.read_baselines(path, config, self.bench.checksum)
        # where the saved streams are gone, the file's record of them (a digest, or their test losses) checks this run's
        missing = [partial.teacher_file(path, seed) for seed in config.seeds
                   if not partial.teacher_file(path, seed).exists() and partial.stage0_record(old, seed) is None]
        if missing:  # before any training: the check after stage 0 needs them
            raise FileNotFoundError(f"--baselines-from: the stage-0 streams the baselines of {path} were trained from are "
                                    f"not at {', '.join(map(str, missing))}, and the file records no digest or test "
                                    "losses of them; without them this run's stage 0 cannot be checked")
        entries = partial.finished_entries(old, config.methods)
        kept = []
        self.taken_seeds.update(config.seeds)
        for name in config.methods:
            if name not in partial.AFTER_STAGE0:
                self.entries[name] = {seed: e for seed, e in entries.get(name, {}).items() if seed in config.seeds}
                kept += [[seed, name] for seed in sorted(self.entries[name])]
        self.single_task = {k: v for k, v in (old.get("single_task") or {}).items() if int(k) in config.seeds}
        self.costs = dict(old.get("measured_costs") or {})
        self.resumed = [self._taken(path, old, kept)]
        for seed in config.seeds:
            self.summarise(seed)
        self.say(f"--baselines-from: took {len(kept)} (seed, method) entries from {path} (steps "
                 f"{(old.get('config') or {}).get('steps')}); the controller's methods run again")

    def _taken(self, path: Path, old: dict[str, Any], kept: list[list[Any]]) -> dict[str, Any]:
        """The ``resumed`` record of entries taken from the results file ``path`` (read as ``old``)."""
        return {"at": _now(), "git": self.git, "kept": kept, "baselines_from": str(path),
                "their_steps": (old.get("config") or {}).get("steps"), "their_git": old.get("git")}

    def take_missing(self, path: Path) -> None:
        """On ``--resume``: take from ``path`` the finished entries this run lacks, of the methods that do not depend on
        the controller's split after stage 0, for the seeds whose stage-0 streams both runs saved bit for bit equal
        (two runs of one stage 0 share the work: each finishes some baselines, one takes the other's)."""
        config = self.config
        old = partial.read_baselines(path, config, self.bench.checksum)
        entries = partial.finished_entries(old, config.methods)
        kept: list[list[Any]] = []
        for seed in config.seeds:
            wanted = [name for name in config.methods if name not in partial.AFTER_STAGE0
                      and seed not in self.entries[name] and seed in entries.get(name, {})]
            if not wanted:
                continue
            mine, theirs = partial.teacher_path(config, seed), partial.teacher_file(path, seed)
            if not mine.exists():  # this run has not trained the seed's controller yet: it trains its baselines too
                self.say(f"--baselines-from: seed {seed} has no stage-0 streams at {mine} yet; {wanted} not taken")
                continue
            partial.check_stage0(mine, path, old, seed)
            for name in wanted:
                self.entries[name][seed] = entries[name][seed]
                kept.append([seed, name])
            if "single_task" in wanted:  # the metrics every entry of the seed is summarised against
                self.single_task[str(seed)] = (old.get("single_task") or {})[str(seed)]
            self.taken_seeds.add(seed)
            self.summarise(seed)
        if kept:
            self.resumed.append(self._taken(path, old, kept))
        self.say(f"--baselines-from: took {len(kept)} more (seed, method) entries from {path}")

    def take_seeds(self, path: Path) -> None:
        """Take from ``path``, a run of this config on other seeds (:func:`benchmarks.partial.read_seeds`), every
        finished entry of each seed this run has no entry of, with the seed's saved controller and stage-0 streams."""
        config = self.config
        old = partial.read_seeds(path, config, self.bench.checksum)
        entries = partial.finished_entries(old, config.methods)
        kept: list[list[Any]] = []
        for seed in config.seeds:
            theirs = {name: by_seed[seed] for name, by_seed in entries.items() if name in config.methods and seed in by_seed}
            if not theirs:
                continue
            if any(seed in self.entries[name] for name in config.methods):
                self.say(f"--seeds-from: seed {seed} has entries in this run already; {path}'s are not taken")
                continue
            if "dymu" not in theirs:  # every other entry of the seed starts from its controller
                self.say(f"--seeds-from: seed {seed}'s controller is not finished in {path}; its entries are not taken")
                continue
            self._copy_seed_state(path, seed)
            for name, entry in theirs.items():
                self.entries[name][seed] = entry
                kept.append([seed, name])
            if str(seed) in (old.get("single_task") or {}):
                self.single_task[str(seed)] = old["single_task"][str(seed)]
            if seed == config.seeds[0] and not self.views and ((old.get("config") or {}).get("seeds") or [None])[0] == seed:
                self.views = old.get("controller_views") or {}
            self.summarise(seed)
        if kept:
            described = old.get("protocol") or {}
            if not self.settings_dynamic:
                self.settings_dynamic = [protocol.Setting(**s) for s in described.get("settings_dynamic", [])]
                self.skipped = list(described.get("settings_skipped", []))
            self.costs = self.costs or dict(old.get("measured_costs") or {})
            self.resumed.append({"at": _now(), "git": self.git, "kept": kept, "seeds_from": str(path),
                                 "their_git": old.get("git")})
        self.say(f"--seeds-from: took {len(kept)} (seed, method) entries of seeds "
                 f"{sorted({seed for seed, _ in kept})} from {path}")

    def _copy_seed_state(self, path: Path, seed: int) -> None:
        """Copy the controller (and stage-0 streams, when saved) of ``seed`` from beside ``path`` into this run's state
        folder. A file of this run's own is never overwritten: a copy already there (byte for byte) is kept, any other
        file of those names, the source's or not, stops the run."""
        names = (f"seed{seed}-dymu.pt", partial.teacher_file(path, seed).name)
        source_dir, target = partial.state_dir_of(path), partial.state_dir(self.config)
        if not (source_dir / names[0]).exists():
            raise FileNotFoundError(f"--seeds-from: {path} finished seed {seed}'s controller but its trained state is not at "
                                    f"{source_dir / names[0]}")
        clashes = [target / name for name in names if (target / name).exists() and not (
            (source_dir / name).exists() and filecmp.cmp(source_dir / name, target / name, shallow=False))]
        if clashes:
            raise ValueError(f"--seeds-from: this run already has {', '.join(map(str, clashes))} for seed {seed} without an "
                             f"entry; move it away or write to another --out to take seed {seed} from {path}")
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if (source_dir / name).exists() and not (target / name).exists():
                shutil.copy2(source_dir / name, target / name)

    def check_stage0(self, method: ControllerMethod, seed: int, test) -> None:
        """With baselines from another file: the streams this run's stage 0 trained must be the ones that file's
        baselines were trained from: its saved teacher, bit for bit; where that is gone, the SHA-256 it recorded
        (:func:`benchmarks.partial.stage0_digest`); in a file from before the digest, the stage-0 anchor tree's per-task
        test losses it recorded (``supernet_effect``), float for float, measured here on ``test`` as there. Called as soon
        as stage 0 is trained (:attr:`ControllerMethod.after_stage0`): a ValueError then, before the later stages train.
        How it was checked goes into the ``resumed`` record."""
        if self.baselines_from is None or method.teacher is None or seed not in self.taken_seeds:
            return
        path, teacher = self.baselines_from, method.teacher.eval()

        def test_losses() -> list[float]:  # as supernet_effect measured the file's "before"
            anchor_tree = [list(range(len(self.tasks)))] * teacher.n_layers
            return dymu.anchor.tree_losses(teacher, self.tasks, anchor_tree, test, self.device).tolist()

        how = partial.check_stage0(teacher, path, partial.read_baselines(path, self.config, self.bench.checksum), seed,
                                   test_losses)
        self.say(f"seed {seed}: stage-0 streams identical to those of {path} (checked by {how})")
        for item in self.resumed:
            if item.get("baselines_from") is not None and any(int(s) == seed for s, _ in item.get("kept") or []):
                item.setdefault("stage0_checked_by", {})[str(seed)] = how

    def controller_method(self, seed: int) -> ControllerMethod:
        """The controller of ``seed``: loaded from the state saved beside the results (its entry is finished)."""
        method = self.make("dymu", seed, None, None)
        partial.load_controller_method(method, self.config, seed, self.device)
        self.say(f"seed {seed}: loaded the trained controller from {partial.controller_path(self.config, seed)}")
        return method

    def training_totals(self, name: str, method: Method, n_layers: int) -> dict[str, Any]:
        """Steps, training images and image-block passes of ``method`` (:func:`benchmarks.protocol.training_totals`)."""
        alloc = protocol.allocation(name, self.config.steps, ablation_weight_hypernet=self.config.ablation_weight_hypernet)
        nodes = None
        if name == "static_tree":
            nodes = [method.tree.n_nodes]
        elif name == "static_equal_cost":
            nodes = [tree.tree.n_nodes for tree in method.trees.values()]
        models = len(self.hs_index) if name == "hard_sharing" else 1
        controller = getattr(method, "controller", None)
        sandwich = controller.supernet_blocks_per_image() if isinstance(controller, dymu.Controller) else None
        return protocol.training_totals(alloc, n_tasks=len(self.tasks), n_layers=n_layers, models=models, tree_nodes=nodes,
                                        sandwich_blocks=sandwich)

    def seed(self, seed: int) -> None:
        """Train and evaluate every method of one seed that is not finished yet; each entry is summarised against
        this seed's single-task run as soon as that is known, and the file is rewritten after every method."""
        config = self.config
        todo = [name for name in config.methods if seed not in self.entries[name]]
        if not todo:
            return
        train, val, test = run_loaders(self.bench, config, seed)
        # every other method starts from the seed's trained controller: train it, or load it when it is finished
        dymu_method: ControllerMethod | None = None if "dymu" in todo else self.controller_method(seed)
        dymu_cost: dict[str, Any] | None = self.entries["dymu"].get(seed, {}).get("cost")
        if dymu_method is not None:
            self.dynamic_settings(dymu_method, seed)
        for name in todo:
            job = len(self.clock.finished)
            started = self.clock.begin(job)
            method = self.make(name, seed, dymu_method, dymu_cost)
            if isinstance(method, ControllerMethod):  # hours of training: an interrupted stage continues on --resume
                method.checkpoint_stages(partial.stages_path(config, seed, name), resume=self.resume)
            if name == "dymu":  # the taken baselines' stage 0, checked before the stages after it train
                method.after_stage0 = lambda trained, seed=seed: self.check_stage0(trained, seed, test)
            train.set_epoch(0)  # the same batch order for every method, whichever ran before it in this process
            method.fit(train, val, device=self.device, verbose=True)
            fit_seconds = time.time() - started
            if name == "dymu":
                dymu_method = method
                partial.save_controller_method(method, config, seed)
                self.dynamic_settings(method, seed)
            settings = protocol.settings_for(method)[0]
            if name in C_ONLY:
                settings = [s for s in settings if s.c is not None]
            prefs = self.preferences[self.hs_index] if name == "hard_sharing" else self.preferences
            self.clock.log(f"seed {seed} | {name}: trained in {format_duration(fit_seconds)}; evaluating {len(settings)} setting(s) "
                           f"x {len(prefs)} preferences on {self.n_test} test images")
            records = protocol.evaluate_method(method, self.tasks, test, prefs, settings, device=self.device, example=self.example,
                                               log=lambda text, name=name: self.clock.log(f"seed {seed} | {name}: {text}"))
            cost = protocol.planned_cost(method, settings, self.cost_prefs) if method.dynamic_cost else None
            if name == "dymu":
                dymu_cost = cost
            entry: dict[str, Any] = {"seed": seed, "train_seconds": method.train_seconds, "size": method.size(),
                                     "records": [r.as_dict() for r in records], "cost": cost,
                                     "training_totals": self.training_totals(name, method, dymu_method.controller.n_layers)}
            if name == "hard_sharing":
                entry["train_seconds_all_preferences"] = method.train_seconds * len(self.preferences) / len(self.hs_index)
            if name == "static_tree":
                entry.update(tree=method.tree.to_dict(), extra_share=method.extra_share)
            if isinstance(method, ControllerMethod) and method.resumed_stages:
                entry["resumed_stages"] = dict(method.resumed_stages)
            if isinstance(method, ControllerMethod) and method.controller is not None:
                entry["kept_states"] = kept_states(method.controller.stages)
            if name == "dymu" and method.teacher is not None:
                entry["supernet_effect"] = supernet_effect(method.controller, method.teacher, test, self.device)
                entry["stage0_digest"] = partial.stage0_digest(method.teacher)
                entry["supernet"] = {k: v for k, v in method.controller.stages.get("supernet", {}).items() if k != "log"}
            if name == "single_task":
                # the reference of the seed's loss space and Delta_MTL (records keep no metrics in the file)
                self.single_task[str(seed)] = records[0].metrics
            # which code produced the entry, and when: a resumed run's entries can come from several commits
            entry.update(git=self.git, finished_at=_now())
            self.entries[name][seed] = entry
            self.summarise(seed)
            self.clock.end(job, started)
            self.write()
            if isinstance(method, ControllerMethod):  # the finished entry and the saved controller supersede them
                shutil.rmtree(partial.stages_path(config, seed, name), ignore_errors=True)

    def dynamic_settings(self, method: ControllerMethod, seed: int) -> None:
        """The controller's settings (the same for every seed) and, from the first seed's, the plot views."""
        self.settings_dynamic, self.skipped = protocol.settings_for(method)
        if seed == self.config.seeds[0] and not self.views:
            self.views = controller_views(method.controller, self.config)

    def summarise(self, seed: int) -> None:
        """Summarise every finished, unsummarised entry of ``seed`` (from this run or the file) once the seed's
        single-task metrics are known; the controller's equal-cost comparison once both sides are summarised."""
        st_metrics = self.single_task.get(str(seed))
        if st_metrics is None:
            return
        if seed not in self.spaces:
            self.spaces[seed] = protocol.loss_space(self.config.benchmark, [st_metrics[n]["loss"] for n in self.names], self.blind)
        space = self.spaces[seed]
        subset = self.preferences[self.hs_index] if len(self.hs_index) < len(self.preferences) else None
        for name in self.config.methods:
            entry = self.entries[name].get(seed)
            if entry is not None and "settings" not in entry:
                records = [protocol.ModelRecord.from_dict(r) for r in entry["records"]]
                entry["settings"] = protocol.summarise(records, self.tasks, space, st_metrics, entry["cost"], subset=subset)
        ours, static = self.entries["dymu"].get(seed), self.entries.get("static_equal_cost", {}).get(seed)
        if ours and static and "settings" in ours and "settings" in static and "equal_cost" not in ours:
            ours["equal_cost"] = protocol.compare_at_equal_cost(ours["settings"], static["settings"])

    # -------------------------------------------------------------------------------- results
    def notes(self) -> list[str]:
        config = self.config
        notes = [
            "std is the sample standard deviation over seeds (null with one seed)",
            "mean_flops / params: per image; for the controller and its variants the mean over the cost preferences "
            "from the plan, for fixed-cost methods over the built models",
        ]
        if not config.ablation_weight_hypernet and any(m in ABLATIONS for m in config.methods):
            notes.append("the ablations (dymu_no_inactive, dymu_no_affinity_depth, dymu_all_active) train the edge hypernet "
                         "with the changed regulariser on the controller's anchor and build their trees without a weight "
                         "hypernet: compare them with dymu_no_weight_hypernet")
        if self.n_val < len(self.bench.val):
            notes.append(f"every method selects its models on the same first {self.n_val} of the {len(self.bench.val)} "
                         "validation examples")
        if self.n_test < len(self.bench.test):
            notes.append(f"every method is evaluated on the same first {self.n_test} of the {len(self.bench.test)} test examples")
        return notes

    def method_row(self, name: str, entries: list[dict[str, Any]], space: protocol.LossSpace) -> dict[str, Any]:
        """One method's aggregated results: the required fields at its headline setting, and every setting."""
        settings = protocol.aggregate([e["settings"] for e in entries])
        headline = next((s for s in (protocol.STATIC.name, protocol.HEADLINE_SETTING) if s in settings), next(iter(settings)))
        top = settings[headline]
        row: dict[str, Any] = {
            "headline_setting": headline,
            "hv": top["hv"],
            "hv_ref": list(space.reference),
            "uniformity": top["uniformity"],
            "controllability": top["controllability"],
            "delta_mtl": top["delta_mtl"],
            "mean_flops": top["mean_flops"],
            "params": top["params"],
            "train_seconds": protocol.aggregate([e["train_seconds"] for e in entries]),
            "training_totals": protocol.aggregate([e["training_totals"] for e in entries]),
            "size": protocol.aggregate([e["size"] for e in entries]),
            "settings": settings,
            "seeds": [e["seed"] for e in entries],
            "per_seed": [{k: v for k, v in e.items() if k != "records"} for e in entries],
            "records": [e["records"] for e in entries],
        }
        curves = [e["cost"]["curve"] for e in entries if e.get("cost")]
        if curves:
            values = np.array([c["mean_flops"] for c in curves])
            row["cost_curve"] = {"c": curves[0]["c"], "mean_flops": values.mean(axis=0).tolist(),
                                 "std": values.std(axis=0, ddof=1).tolist() if len(values) > 1 else None}
        if all("equal_cost" in e for e in entries):
            row["equal_cost"] = protocol.aggregate([e["equal_cost"] for e in entries])
        budget_curves = [e["cost"]["budget_curve"] for e in entries if e.get("cost") and "budget_curve" in e["cost"]]
        if budget_curves and budget_curves[0]["budget"]:
            fractions = np.array([c["flops_fraction"] for c in budget_curves])
            fallbacks = np.array([c["fallback_fraction"] for c in budget_curves])
            row["budget_curve"] = {"budget": budget_curves[0]["budget"], "flops_fraction": fractions.mean(axis=0).tolist(),
                                   "fallback_fraction": fallbacks.mean(axis=0).tolist(), "skipped": budget_curves[0]["skipped"],
                                   "flops_fraction_per_seed": fractions.tolist()}
        if name == "hard_sharing":
            n, k = len(self.preferences), len(self.hs_index)
            row["train_seconds_all_preferences"] = protocol.aggregate([e["train_seconds_all_preferences"] for e in entries])
            row["trained_preferences"] = [self.preferences[i].tolist() for i in self.hs_index]
            if k < n:
                row["trained_preferences_note"] = (
                    f"hard sharing was trained for {k} of the {n} evaluation preferences (indices {self.hs_index}, evenly "
                    f"spread), each for the run's {self.config.steps.total} steps, to fit the time budget. Its hv, uniformity "
                    f"and controllability are over those {k} models only (fewer points: compare its hv with the other "
                    f"methods' hv_subset, taken over the same preferences); train_seconds is the measured time of those "
                    f"models, train_seconds_all_preferences extrapolates it to all {n}."
                )
        if name == "static_tree":
            row["trees"] = [e["tree"] for e in entries]
            row["extra_share"] = [e["extra_share"] for e in entries]
        return row

    def write(self) -> dict[str, Any]:
        """The results of the (seed, method) entries finished so far, written to ``OUT/<stem>.json``.

        Summarised entries go into their method's row; entries still waiting for their seed's single-task
        metrics into ``pending`` (a resumed run summarises them). ``complete``: every entry is finished.
        """
        config = self.config
        seeds = {name: [s for s in config.seeds if s in self.entries[name]] for name in config.methods}
        done = {name: [self.entries[name][s] for s in seeds[name] if "settings" in self.entries[name][s]] for name in config.methods}
        pending = {name: [self.entries[name][s] for s in seeds[name] if "settings" not in self.entries[name][s]]
                   for name in config.methods}
        space = next((self.spaces[s] for s in config.seeds if s in self.spaces), None)
        methods = {name: self.method_row(name, entries, space) for name, entries in done.items() if entries} if space else {}
        budget = config.steps
        results: dict[str, Any] = {
            "benchmark": config.benchmark,
            "mode": config.mode,
            "complete": all(len(seeds[name]) == len(config.seeds) for name in config.methods),
            "command": self.command,
            "seeds": [s for s in config.seeds if s in self.entries["dymu"]],
            "config": config.as_dict(),
            "steps": asdict(config.steps),
            "training_budget": {"rule": protocol.TRAINING_BUDGET_RULE, "steps": budget.total,
                                "images": budget.total * budget.batch_size},
            "versions": versions(),
            "git": self.git,
            "resumed": self.resumed,
            "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "data": {"checksum": self.bench.checksum,
                     "sizes": {"train": len(self.bench.train), "val": len(self.bench.val), "test": len(self.bench.test)},
                     "val_examples_used": self.n_val, "test_examples_evaluated": self.n_test,
                     "source_checksums": self.bench.source_checksums},
            "tasks": self.names,
            "primary_metrics": {t.name: t.primary for t in self.tasks},
            "higher_is_better": {t.name: t.higher_is_better for t in self.tasks},
            "protocol": protocol.describe(space, self.preferences, self.settings_dynamic, self.skipped, config.cost_preferences)
                        if space else None,
            "single_task": self.single_task,
            "methods": methods,
            "pending": {name: entries for name, entries in pending.items() if entries},
            "targets": protocol.check_targets(methods, hv_reference=list(space.reference)) if space else [],
            "control_targets": protocol.check_control_targets(methods) if space else [],
            "shared_node_targets": protocol.check_shared_node_targets(methods, config.benchmark) if space else [],
            "controller_views": self.views,
            "measured_costs": self.costs,
            "estimate_seconds": self.est,
            "notes": self.notes(),
            "wall_seconds": time.time() - self.start,
        }
        write_json(Path(config.out) / f"{config.stem}.json", results)
        return results


def _now() -> str:
    """The current time, UTC, ISO 8601 (when an entry finished)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
