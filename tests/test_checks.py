"""dymu.checks: every kind of bad batch or loss raises BadDataError naming stage, step, task, expected and found."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dymu.checks import BadDataError, check_batch, check_loss
from dymu.data.tasks import fashion_digits_tasks
from dymu.tasks import Task


def _head(shape):
    return nn.Identity()


@pytest.fixture
def tasks() -> list[Task]:
    return fashion_digits_tasks(["digit", "segment", "clean"])


def _batch(b: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, 36, 36, generator=g)
    targets = {
        "digit": torch.randint(0, 10, (b,), generator=g),
        "segment": torch.randint(0, 3, (b, 36, 36), generator=g),
        "clean": torch.rand(b, 1, 36, 36, generator=g),
    }
    return x, targets


def _raises(x, targets, tasks, stage="anchor", step=12) -> BadDataError:
    with pytest.raises(BadDataError) as info:
        check_batch(x, targets, tasks, stage=stage, step=step)
    error = info.value
    assert isinstance(error, ValueError)
    assert f"stage {stage!r}, step {step}" in str(error)
    assert error.stage == stage and error.step == step
    return error


def test_builtin_tasks_declare_their_targets(tasks):
    declared = {t.name: (t.n_classes, t.ignore_index, t.target_dtype) for t in fashion_digits_tasks()}
    assert declared == {
        "fashion": (10, None, None), "fashion_group": (3, None, None), "digit": (10, None, None),
        "parity": (2, None, None), "segment": (3, None, None), "clean": (None, None, "float"),
    }


def test_a_good_batch_passes(tasks):
    x, targets = _batch()
    targets["extra"] = torch.zeros(3)  # targets of other tasks are not this check's business
    check_batch(x, targets, tasks, stage="anchor", step=1)


def test_nan_inputs_say_how_many_and_which_samples(tasks):
    x, targets = _batch()
    x[1, 0, 3, 3] = float("nan")
    x[4, 0, :2, 0] = float("inf")
    error = _raises(x, targets, tasks, stage="edge", step=40)
    message = str(error)
    assert "inputs must be finite" in message and "3 non-finite values" in message
    assert "samples [1, 4]" in message and "NaN/inf" in message
    assert error.task is None


def test_nan_float_target(tasks):
    x, targets = _batch()
    targets["clean"][2, 0, 5, 5] = float("nan")
    error = _raises(x, targets, tasks)
    assert error.task == "clean"
    assert "task 'clean'" in str(error) and "the target must be finite" in str(error)
    assert "1 non-finite value " in str(error) and "samples [2]" in str(error)


def test_out_of_range_label_names_range_and_value(tasks):
    x, targets = _batch()
    targets["digit"][3] = 10
    error = _raises(x, targets, tasks)
    assert error.task == "digit"
    assert "[0, 9]" in str(error) and "found 10" in str(error) and "samples [3]" in str(error)

    x, targets = _batch()
    targets["segment"][0, 0, 0] = -1  # per-pixel labels too
    error = _raises(x, targets, tasks)
    assert error.task == "segment" and "[0, 2]" in str(error) and "found -1" in str(error)


def test_ignore_index_is_respected():
    task = Task("semseg", _head, F.cross_entropy, n_classes=3, ignore_index=255)
    x = torch.zeros(2, 1, 4, 4)
    check_batch(x, {"semseg": torch.tensor([[0, 255], [2, 1]])}, [task], stage="val", step=3)
    with pytest.raises(BadDataError, match=r"\[0, 2\] or the ignore index 255; found 254"):
        check_batch(x, {"semseg": torch.tensor([[0, 254], [2, 1]])}, [task], stage="val", step=3)


def test_missing_target_names_task_expected_and_found(tasks):
    x, targets = _batch()
    del targets["segment"]
    error = _raises(x, targets, tasks)
    assert error.task == "segment"
    assert "no target" in str(error) and "['digit', 'segment', 'clean']" in str(error) and "['clean', 'digit']" in str(error)


def test_wrong_batch_size(tasks):
    x, targets = _batch(6)
    targets["digit"] = targets["digit"][:5]
    error = _raises(x, targets, tasks)
    assert error.task == "digit" and "batch size 6" in str(error) and "[5]" in str(error)
    targets["digit"] = torch.tensor(3)
    assert "found shape []" in str(_raises(x, targets, tasks))


def test_wrong_dtype(tasks):
    x, targets = _batch()
    targets["digit"] = targets["digit"].float()
    error = _raises(x, targets, tasks)
    assert error.task == "digit" and "torch.int64" in str(error) and "float values (torch.float32)" in str(error)
    x, targets = _batch()
    targets["clean"] = targets["clean"].long()
    error = _raises(x, targets, tasks)
    assert error.task == "clean" and "floating-point" in str(error) and "torch.int64" in str(error)


def test_not_tensors(tasks):
    x, targets = _batch()
    assert "found list" in str(_raises(x.tolist(), targets, tasks))
    assert "found tuple" in str(_raises(x, tuple(targets.items()), tasks))
    targets["digit"] = [1, 2, 3, 4, 5, 6]
    assert "found list" in str(_raises(x, targets, tasks))


def test_undeclared_tasks_still_get_shape_and_finiteness_checks():
    task = Task("anything", _head, F.mse_loss)
    x = torch.zeros(2, 3)
    check_batch(x, {"anything": torch.tensor([1, 2])}, [task], stage="s", step=0)
    with pytest.raises(BadDataError, match="task 'anything'.*must be finite"):
        check_batch(x, {"anything": torch.tensor([1.0, math.inf])}, [task], stage="s", step=0)


def test_task_field_validation():
    with pytest.raises(ValueError, match="n_classes"):
        Task("a", _head, F.cross_entropy, n_classes=0)
    with pytest.raises(ValueError, match="ignore_index"):
        Task("a", _head, F.cross_entropy, ignore_index=-1)
    with pytest.raises(ValueError, match="target_dtype"):
        Task("a", _head, F.cross_entropy, target_dtype="int")
    # positional callers of the old signature keep working
    task = Task("a", _head, F.cross_entropy, {}, "loss", False)
    assert task.n_classes is None and task.ignore_index is None and task.target_dtype is None


def test_check_loss():
    check_loss(torch.tensor(0.5), stage="anchor", step=1, task="digit", batch_index=0)
    with pytest.raises(BadDataError) as info:
        check_loss(torch.tensor(float("nan")), stage="weights", step=9, task="digit", batch_index=2)
    message = str(info.value)
    assert message.startswith("stage 'weights', step 9, task 'digit'")
    assert "batch 2" in message and "nan" in message and "finite" in message
    with pytest.raises(BadDataError, match="inf"):
        check_loss(float("inf"), stage="edge", step=1, task="t", batch_index=0)
