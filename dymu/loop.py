"""One training loop for every stage and baseline: train, validate every k steps, keep the best, resume.

The step body stays with its stage, as a callable ``step(info, x, targets) -> {name: scalar}``;
:class:`TrainLoop` owns the rest: drawing batches (``cycle`` semantics: re-iterate the data at the
end of each pass), checking each CPU batch (:func:`dymu.checks.check_batch`) before moving it to
the device, the step counter and progress lines, validation every ``eval_every`` steps and at the
end with a keep-best policy (:class:`KeepBest`, scores averaged over ranks), restoring the best
state at the end, the history and the step log, and resume checkpoints (:mod:`dymu.resume`).

Bad data stops the loop at the step it is found, before the step's optimiser update: the step body
calls ``info.check_loss(loss, task)`` on each task loss before back-propagating, and a step that
raises :class:`~dymu.checks.BadDataError` has its modules' buffers (BatchNorm statistics, which a
train-mode forward moves before the loss exists) put back, so the modules hold the last good step's
state and the last checkpoint on disk is untouched. Under ``torchrun`` the rank that finds bad data
raises and exits, and torchrun stops the other ranks.

Resuming fast-forwards the data by drawing and discarding as many batches as the checkpoint says
were drawn: exact for data that yields the same batches in the same order each time it is iterated
(lists, a ``DataLoader`` without shuffling, or with ``shuffle=True`` and a seeded
``generator=torch.Generator().manual_seed(s)``, whose per-epoch orders then repeat).

Example (a linear model on one task; lower validation loss is kept):
    >>> import torch, torch.nn.functional as F
    >>> from dymu.tasks import Task
    >>> task = Task("y", head=lambda shape: torch.nn.Identity(), loss=F.mse_loss)
    >>> model = torch.nn.Linear(3, 1)
    >>> data = [(torch.ones(4, 3), {"y": torch.zeros(4, 1)})]
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> def step(info, x, targets):
    ...     loss = F.mse_loss(model(x), targets["y"])
    ...     info.check_loss(loss, "y")
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     return {"loss": loss.item()}
    >>> def validate(step):
    ...     with torch.no_grad():
    ...         return {"score": float(F.mse_loss(model(data[0][0]), data[0][1]["y"]))}
    >>> loop = TrainLoop("demo", 4, torch.device("cpu"), [task], validate=validate, keep=KeepBest.lowest(model),
    ...                  eval_every=2, verbose=False)
    >>> result = loop.run(data, step)
    >>> [h["step"] for h in result.history], loop.keep.steps["score"]
    ([2, 4], 4)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError
from .checks import BadDataError, check_batch, check_loss
from .distributed import barrier, gather, mean_over_ranks, rank_world
from .progress import Progress
from .resume import (
    Checkpointing,
    capture_generators,
    digest,
    plain_config,
    read_stage_checkpoint,
    restore_generators,
    write_stage_checkpoint,
)
from .tasks import Task

__all__ = ["TrainLoop", "LoopResult", "StepInfo", "KeepBest", "Part", "cycle", "to_device", "checked_batch", "Batch", "Step"]

Batch = tuple[Tensor, Mapping[str, Tensor]]


def cycle(data: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate over ``data`` forever, re-iterating it at the end of each pass."""
    cursor = _Cursor(data)
    while True:
        yield cursor.next()[1]


def _check_pair(batch: Any, names: Sequence[str]) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping)):
        raise ValueError("a batch must be a pair (inputs, {task_name: target})")
    missing = [n for n in names if n not in batch[1]]
    if missing:
        raise ValueError(f"a batch lacks targets for task(s) {missing}; it has {sorted(batch[1])}")


def to_device(batch: Batch, device: torch.device, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Move a batch to ``device``, checking it has a target for every task."""
    _check_pair(batch, names)
    x, targets = batch
    return x.to(device, non_blocking=True), {n: targets[n].to(device, non_blocking=True) for n in names}


def checked_batch(
    batch: Any, tasks: Sequence[Task], device: torch.device, *, stage: str, step: int | None = None, index: int | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`to_device` after :func:`dymu.checks.check_batch` on the CPU batch (errors name ``stage``,
    ``step`` and ``index``, the batch's position in its pass over the data)."""
    names = [t.name for t in tasks]
    _check_pair(batch, names)
    check_batch(batch[0], batch[1], tasks, stage=stage, step=step, batch=index)
    return to_device(batch, device, names)


class _Cursor:
    """The batches of ``data`` forever, counting those drawn and each one's position in its pass."""

    def __init__(self, data: Iterable[Batch]):
        self.data = data
        self.drawn = 0
        self._iterator: Iterator[Batch] | None = None
        self._position = 0

    def next(self) -> tuple[int, Batch]:
        while True:
            if self._iterator is None:
                self._iterator, self._position = iter(self.data), 0
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self._position == 0:
                    raise ValueError("the training data yielded no batch") from None
                self._iterator = None
                continue
            self._position += 1
            self.drawn += 1
            return self._position - 1, batch


@dataclass(frozen=True)
class StepInfo:
    """Where a step stands: ``stage``, ``step`` (1-based) and ``batch`` (the batch's position in its pass)."""

    stage: str
    step: int
    batch: int

    def check_loss(self, loss: Tensor | float, task: str) -> None:
        """Raise :class:`~dymu.checks.BadDataError` naming stage, step, task and batch if ``loss`` is not finite."""
        check_loss(loss, stage=self.stage, step=self.step, task=task, batch_index=self.batch)


@dataclass(frozen=True)
class Part:
    """What :class:`KeepBest` selects as one: ``modules``, scored by the number at ``path`` in the
    validation scores (``("val", "t0", "acc")`` is ``scores["val"]["t0"]["acc"]``)."""

    modules: tuple[nn.Module, ...]
    path: tuple[str, ...]
    higher_is_better: bool = False
    label: str | None = None


class KeepBest:
    """For each part, the modules' state at the part's best validation score; :meth:`restore` loads them.

    A part's first score is always kept, as is any score after a NaN; then only strictly better ones.
    """

    def __init__(self, parts: Mapping[str, Part]):
        self.parts = dict(parts)
        self.steps: dict[str, int | None] = {name: None for name in self.parts}
        self.scores: dict[str, float | None] = {name: None for name in self.parts}
        self._states: dict[str, list[dict[str, Tensor]]] = {}

    @classmethod
    def lowest(cls, *modules: nn.Module, key: str = "score", label: str | None = None) -> KeepBest:
        """One part, all of ``modules``, scored by ``scores[key]``, lower is better."""
        return cls({key: Part(tuple(modules), (key,), False, label)})

    def _better(self, name: str, score: float) -> bool:
        old = self.scores[name]
        if old is None or math.isnan(old):
            return True
        return score > old if self.parts[name].higher_is_better else score < old

    def offer(self, scores: Mapping[str, Any], step: int) -> list[str]:
        """Keep every part whose score in ``scores`` beats its best; returns their names."""
        kept = []
        for name, part in self.parts.items():
            score: Any = scores
            for key in part.path:
                score = score[key]
            if self._better(name, float(score)):
                self.scores[name], self.steps[name] = float(score), step
                self._states[name] = [copy.deepcopy(m.state_dict()) for m in part.modules]
                kept.append(name)
        return kept

    def restore(self) -> None:
        for name, states in self._states.items():
            for module, state in zip(self.parts[name].modules, states):
                module.load_state_dict(state)

    def describe(self, scores: Mapping[str, Any], kept: Sequence[str]) -> str:
        """``val t0 acc 0.9000  t1 acc 0.8000`` (one part: ``val score 0.1234  (best so far)``)."""
        cells = []
        for name, part in self.parts.items():
            value: Any = scores
            for key in part.path:
                value = value[key]
            label = part.label or (" ".join(part.path[1:]) if len(part.path) > 1 else part.path[0])
            cells.append(f"{label} {float(value):.4f}")
        mark = ("  (best so far)" if kept else "") if len(self.parts) == 1 else ("  best so far: " + ", ".join(kept) if kept else "")
        return "val " + "  ".join(cells) + mark

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "scores": dict(self.scores), "states": self._states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps, self.scores = dict(state["steps"]), dict(state["scores"])
        self._states = {name: list(states) for name, states in state["states"].items()}


@dataclass
class LoopResult:
    """``history``: ``{"step", **validation scores}`` per validation; ``log``: ``{"step", **step scalars}``
    every ``log_every`` steps; ``seconds`` of training (over all runs of a resumed stage);
    ``resumed_at``: the step a checkpoint was resumed from (0: a fresh start)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_at: int = 0


Step = Callable[[StepInfo, Tensor, dict[str, Tensor]], Mapping[str, float]]
Generator = np.random.Generator | torch.Generator


class TrainLoop:
    """Train ``steps`` steps of a stage; see the module docstring.

    Args:
        stage: the stage's name (progress lines, errors, the checkpoint file).
        steps: how many steps.
        device: where batches go.
        tasks: the tasks a batch must have targets for (and is checked against).
        state: what the step body trains, by name: objects with ``state_dict()``/``load_state_dict()``
            (modules, optimiser, scheduler, gradient scaler), saved in checkpoints in this order.
        generators: every random generator the step body draws from (numpy ``Generator`` or
            ``torch.Generator``), saved per rank; the global torch generator is saved too.
        frozen: modules the stage uses but does not train: a checkpoint records their digest (resuming
            on other frozen modules is refused) and their buffers.
        validate: ``validate(step) -> scores`` (nested dicts and lists of numbers), averaged over ranks.
        keep: the keep-best policy offered every validation's scores (default: keep nothing).
        eval_every: validate every this many steps and at the end (None: at the end only).
        log_every: record ``{"step", **scalars}`` every this many steps and at the end (None: never).
        seed: the run forks the global torch generator (and the device's, on CUDA), seeds it with
            ``seed + rank`` and leaves it as it was afterwards (None: draws from it as it is).
        config: the stage's config: stored in checkpoints, compared on resume.
        checkpointing: where and how often to write checkpoints, and whether to resume (None: never).
        verbose: progress lines (on rank 0).
    """

    def __init__(
        self,
        stage: str,
        steps: int,
        device: torch.device,
        tasks: Sequence[Task],
        *,
        state: Mapping[str, Any] | None = None,
        generators: Mapping[str, Generator] | None = None,
        frozen: Mapping[str, nn.Module] | None = None,
        validate: Callable[[int], Mapping[str, Any]] | None = None,
        keep: KeepBest | None = None,
        eval_every: int | None = None,
        log_every: int | None = None,
        seed: int | None = None,
        config: Any = None,
        checkpointing: Checkpointing | None = None,
        verbose: bool = True,
    ):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.stage, self.steps, self.device, self.tasks = stage, int(steps), device, list(tasks)
        self.state = dict(state or {})
        self.generators = dict(generators or {})
        self.frozen = dict(frozen or {})
        self.validate, self.keep = validate, keep if keep is not None else KeepBest({})
        self.eval_every = eval_every or self.steps
        self.log_every, self.seed = log_every, seed
        self.config, self.checkpointing, self.verbose = config, checkpointing, verbose
        self.history: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self._digest: str | None = None

    # --------------------------------------------------------------------------------- run
    def run(self, data: Iterable[Batch], step: Step) -> LoopResult:
        """Run the remaining steps (all of them, unless resumed), restore the best state and return the record."""
        if self.seed is None:
            return self._run(data, step)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed + rank_world()[0])
            return self._run(data, step)

    def _run(self, data: Iterable[Batch], step: Step) -> LoopResult:
        start = time.time()
        cursor = _Cursor(data)
        saved = self._resume()
        before = 0.0 if saved is None else float(saved["seconds"])
        if saved is not None and saved["finished"]:
            # draw what the stage drew: a source whose order moves on with every pass (TensorLoader's epochs) then
            # gives the later stages the batches they get after an uninterrupted stage
            for _ in range(int(saved["drawn"])):
                cursor.next()
            return LoopResult(self.history, self.log, before, saved["step"])
        done = 0 if saved is None else int(saved["step"])
        for _ in range(0 if saved is None else int(saved["drawn"])):
            cursor.next()
        rank = rank_world()[0]
        buffers = [b for m in [*self._modules(), *self.frozen.values()] for b in m.buffers()]
        with Progress(self.steps, self.stage, enabled=self.verbose and rank == 0, initial_step=done) as progress:
            for number in range(done + 1, self.steps + 1):
                index, batch = cursor.next()
                x, targets = checked_batch(batch, self.tasks, self.device, stage=self.stage, step=number, index=index)
                before_step = [b.detach().clone() for b in buffers]
                try:
                    scalars = step(StepInfo(self.stage, number, index), x, targets)
                except BadDataError:
                    with torch.no_grad():
                        for b, old in zip(buffers, before_step):
                            b.copy_(old)
                    raise
                progress.update(number, **scalars)
                if self.log_every is not None and (number % self.log_every == 0 or number == self.steps):
                    self.log.append({"step": number, **scalars})
                if self.validate is not None and (number % self.eval_every == 0 or number == self.steps):
                    scores = mean_over_ranks(dict(self.validate(number)), self.device)
                    self.history.append({"step": number, **scores})
                    progress.log(self.keep.describe(scores, self.keep.offer(scores, number)))
                every = self.checkpointing.every if self.checkpointing is not None else None
                if every is not None and number % every == 0 and number < self.steps:
                    self._save(number, cursor.drawn, before + time.time() - start, finished=False)
        self.keep.restore()
        seconds = before + time.time() - start
        if self.checkpointing is not None:
            self._save(self.steps, cursor.drawn, seconds, finished=True)
        return LoopResult(self.history, self.log, seconds, done)

    def _modules(self) -> list[nn.Module]:
        return [v for v in self.state.values() if isinstance(v, nn.Module)]

    # ------------------------------------------------------------------------- checkpoints
    def _path(self) -> Path:
        assert self.checkpointing is not None
        return self.checkpointing.file(self.stage)

    def _frozen_digest(self) -> str | None:
        if self._digest is None and self.frozen:
            self._digest = digest(self.frozen)
        return self._digest

    def _save(self, step: int, drawn: int, seconds: float, finished: bool) -> None:
        frozen = self._frozen_digest()
        ranks = gather({"generators": capture_generators(self.generators, self.device), "log": self.log})
        rank, world = rank_world()
        if rank == 0:
            write_stage_checkpoint(self._path(), {
                "stage": self.stage, "config": plain_config(self.config), "world_size": world, "frozen": frozen,
                "step": step, "steps": self.steps, "finished": finished, "drawn": drawn, "seconds": seconds,
                "state": {name: obj.state_dict() for name, obj in self.state.items()},
                "frozen_buffers": {name: dict(m.named_buffers()) for name, m in self.frozen.items()},
                "keep": self.keep.state_dict(), "history": self.history, "ranks": ranks,
            })

    def _resume(self) -> dict[str, Any] | None:
        """Load the checkpoint into the state, keep-best policy, history, log and generators; None if there is none."""
        if self.checkpointing is None:
            return None
        frozen = self._frozen_digest()  # before anything moves the frozen modules' buffers
        if not self.checkpointing.resume:
            return None
        barrier()  # rank 0 may still be writing a file that every rank reads
        path = self._path()
        if not path.exists():
            return None
        rank, world = rank_world()
        payload = read_stage_checkpoint(path, stage=self.stage, config=self.config, world_size=world, frozen=frozen)
        try:
            for name, obj in self.state.items():
                obj.load_state_dict(payload["state"][name])
            with torch.no_grad():
                for name, module in self.frozen.items():
                    for key, buffer in module.named_buffers():
                        buffer.copy_(payload["frozen_buffers"][name][key])
            self.keep.load_state_dict(payload["keep"])
            restore_generators(payload["ranks"][rank]["generators"], self.generators, self.device)
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: its states do not fit this stage's modules and generators: {error}") from error
        self.history = list(payload["history"])
        self.log = list(payload["ranks"][rank]["log"])
        return payload
