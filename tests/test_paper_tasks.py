"""The paper's task sets declare their targets, so dymu.checks.check_batch validates real batches of the
three benchmarks: class labels (range, ignore index) and real-valued maps."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.datasets import fixtures
from benchmarks.datasets.cifar100 import load_cifar100
from benchmarks.datasets.nyuv2 import load_nyuv2
from benchmarks.datasets.pascal_context import TASKS_3, load_pascal_context
from benchmarks.paper_tasks import PAPER_TASK_SETS
from dymu.checks import BadDataError, check_batch

# benchmark -> (write tiny files, load a split of them, the declarations expected per task)
CASES = {
    "cifar100": (
        fixtures.write_tiny_cifar100,
        lambda root: load_cifar100(root, "test"),
        {"n_classes": 5, "ignore_index": -1},
    ),
    "nyuv2": (
        fixtures.write_tiny_nyuv2,
        lambda root: load_nyuv2(root, "val"),
        {"semseg": (13, 255), "depth": "float", "normal": "float"},
    ),
    "pascal_context": (
        fixtures.write_tiny_pascal_context,
        lambda root: load_pascal_context(root, "test", output_size=(32, 32)),
        {"semseg": (21, 255), "human_parts": (7, 255), "saliency": "float", "normals": "float", "edge": "float"},
    ),
    "pascal_context_3": (
        fixtures.write_tiny_pascal_context,
        lambda root: load_pascal_context(root, "test", TASKS_3, output_size=(32, 32)),
        {"semseg": (21, 255), "human_parts": (7, 255), "saliency": "float"},
    ),
}


def _declared(task) -> tuple[int, int] | str | None:
    if task.n_classes is not None:
        return (task.n_classes, task.ignore_index)
    return task.target_dtype


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_batches_pass_and_bad_targets_name_their_task(name, tmp_path):
    write, load, expected = CASES[name]
    tasks = PAPER_TASK_SETS[name]()
    if name == "cifar100":  # twenty alike tasks: one declaration for all
        assert all(_declared(t) == (expected["n_classes"], expected["ignore_index"]) for t in tasks)
    else:
        assert {t.name: _declared(t) for t in tasks} == expected
    write(tmp_path)
    x, targets = next(iter(DataLoader(load(tmp_path), batch_size=3, shuffle=False)))
    check_batch(x, targets, tasks, stage="anchor", step=0)

    for task in tasks:
        target = targets[task.name]
        bad = dict(targets)
        if task.n_classes is not None:
            assert target.dtype == torch.int64
            broken = target.clone()
            broken.view(-1)[-1] = task.n_classes  # one past the last class
            bad[task.name] = broken
            message = f"class labels must lie in [0, {task.n_classes - 1}] or the ignore index {task.ignore_index}"
        else:
            assert target.is_floating_point()
            bad[task.name] = target.round().long()  # labels where real values belong
            message = "expected a floating-point target"
        with pytest.raises(BadDataError, match=f"task '{task.name}'") as caught:
            check_batch(x, bad, tasks, stage="anchor", step=4)
        assert caught.value.task == task.name and message in str(caught.value)


def test_the_ignore_index_passes_where_it_marks_unlabelled_pixels():
    tasks = PAPER_TASK_SETS["nyuv2"]()
    x = torch.rand(2, 3, 16, 16)
    semseg = torch.randint(0, 13, (2, 16, 16))
    semseg[0, :4] = 255
    targets = {"semseg": semseg, "depth": torch.rand(2, 1, 16, 16), "normal": torch.rand(2, 3, 16, 16)}
    check_batch(x, targets, tasks, stage="anchor", step=0)
    semseg[1, 0, 0] = -1  # NYUv2's own files mark unlabelled pixels -1: the loader must map them to 255
    with pytest.raises(BadDataError, match="task 'semseg'.*found -1"):
        check_batch(x, targets, tasks, stage="anchor", step=0)
