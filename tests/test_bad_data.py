"""Bad data stops a stage at the step it is found, naming stage, step, task and batch, and loses nothing: the
last checkpoint on disk is intact and the trained module in memory holds the last good step's state."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dymu
from _tiny import tiny_batches, tiny_tasks
from dymu.checks import BadDataError
from dymu.training import evaluate_streams

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

POISON = {"on": False}


def _poisonable(loss):
    def poisoned(pred, target):
        value = loss(pred, target)
        return value * float("nan") if POISON["on"] else value

    return poisoned


def _tasks() -> list[dymu.Task]:
    """The tiny tasks, declared as 4-class tasks; ``t1``'s loss turns NaN while ``POISON["on"]``."""
    tasks = [replace(t, n_classes=4) for t in tiny_tasks(3)]
    tasks[1] = replace(tasks[1], loss=_poisonable(tasks[1].loss))
    return tasks


def _broken(batch, fault: str):
    x, targets = batch[0].clone(), {k: v.clone() for k, v in batch[1].items()}
    if fault == "nan_input":
        x[3, 0, 5, 5] = float("nan")
    elif fault == "label":
        targets["t2"][5] = 7
    elif fault == "shape":
        targets["t0"] = targets["t0"][:-1]
    elif fault == "dtype":
        targets["t1"] = targets["t1"].float()
    return x, targets


#: fault -> (the task the error names, a piece of its message)
FAULTS = {
    "nan_input": (None, "inputs must be finite; found 1 non-finite value (NaN) in samples [3]"),
    "nan_loss": ("t1", "the loss is nan, expected a finite value"),
    "label": ("t2", "class labels must lie in [0, 3]; found 7"),
    "shape": ("t0", "expected a target with batch size 16 (the inputs'); found shape [15]"),
    "dtype": ("t1", "expected class labels as torch.int64 (a 4-class task); found float values"),
}


class _Faulty:
    """Two good batches per pass; in the second pass the one at position 1 is broken (step 4, batch 1).

    When it hands out the broken batch it reads the checkpoint file: the bytes step 3 left on disk.
    """

    def __init__(self, fault: str, checkpoint: Path):
        self.batches, self.fault, self.checkpoint = tiny_batches(3, n_batches=2), fault, checkpoint
        self.passes, self.on_disk = 0, b""

    def __iter__(self):
        self.passes += 1
        for index, batch in enumerate(self.batches):
            if self.passes == 2 and index == 1:
                self.on_disk = self.checkpoint.read_bytes()
                POISON["on"] = self.fault == "nan_loss"
                yield _broken(batch, self.fault)
            else:
                yield batch


@pytest.fixture(autouse=True)
def _no_poison():
    yield
    POISON["on"] = False


def _controller(stage: str) -> dymu.Controller:
    """A controller with the stages before ``stage`` trained on good data."""
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), _tasks(), seed=0)
    good = tiny_batches(3, n_batches=2)
    if stage != "anchor":
        ctrl.fit_anchor(good, steps=2, verbose=False)
        ctrl.fit_affinity(good, n_samples=32)
    if stage == "weights":
        ctrl.fit_edge(good, steps=2, verbose=False)
    return ctrl


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("stage, part", [("anchor", "anchor"), ("edge", "edge"), ("weights", "weight")])
def test_bad_data_stops_the_stage_and_loses_nothing(stage, part, fault, tmp_path):
    ctrl = _controller(stage)
    data = _Faulty(fault, tmp_path / f"{stage}.pt")
    fit = {"anchor": ctrl.fit_anchor, "edge": ctrl.fit_edge, "weights": ctrl.fit_weights}[stage]
    with pytest.raises(BadDataError) as info:
        fit(data, steps=8, checkpoint=tmp_path, checkpoint_every=1, verbose=False)
    task, message = FAULTS[fault]
    error = info.value
    assert (error.stage, error.step, error.task, error.batch) == (stage, 4, task, 1)
    where = f"stage '{stage}', step 4" + (f", task '{task}'" if task else "") + ", batch 1: "
    assert str(error).startswith(where) and message in str(error), str(error)
    # the last good checkpoint is on disk as step 3 wrote it, and the module still holds step 3's state
    assert (tmp_path / f"{stage}.pt").read_bytes() == data.on_disk
    saved = torch.load(tmp_path / f"{stage}.pt", weights_only=True)
    assert saved["step"] == 3 and not saved["finished"]
    memory = getattr(ctrl, part).state_dict()
    assert memory.keys() == saved["state"][part].keys()
    for key, tensor in memory.items():
        assert torch.equal(tensor, saved["state"][part][key]), f"{key} moved in the failed step"


def test_evaluation_and_validation_name_the_bad_batch():
    ctrl = _controller("weights")
    good = tiny_batches(3, n_batches=3)
    bad = [good[0], _broken(good[1], "label"), good[2]]
    with pytest.raises(BadDataError, match=r"^stage 'stream evaluation', task 't2', batch 1: class labels must lie"):
        evaluate_streams(ctrl.anchor, ctrl.tasks, bad, torch.device("cpu"))
    with pytest.raises(BadDataError, match=r"^stage 'evaluation', task 't2', batch 1: class labels"):
        ctrl.evaluate(bad, preferences=[[1, 1, 1]])
    with pytest.raises(BadDataError, match=r"^stage 'validation', task 't2', batch 1: class labels"):
        ctrl.fit_weights(good, bad, steps=1, verbose=False)
