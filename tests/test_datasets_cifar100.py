"""CIFAR-100 superclass tasks: the on-disk format, the task split, splits, augmentation, errors, losses."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from torch import nn
from torch.utils.data import DataLoader

from benchmarks.datasets import BENCHMARKS
from dymu.metrics import Accuracy
from benchmarks.datasets.cifar100 import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    COARSE_LABEL_NAMES,
    FINE_TO_COARSE,
    TASK_CLASSES,
    TASK_NAMES,
    cifar100_tasks,
    load_cifar100,
)
from benchmarks.datasets.fixtures import write_tiny_cifar100
from dymu.tasks import MetricState, Task


def _read(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _linear_head(num_outputs):
    def factory(out_shape, skip_shapes=None):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(out_shape)), num_outputs))

    return factory


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar100(root, n_train=200, n_test=100, seed=3)
    return root


def test_task_split_covers_every_fine_class_once_in_increasing_order():
    flat = [f for classes in TASK_CLASSES for f in classes]
    assert sorted(flat) == list(range(100))
    assert all(len(c) == 5 and list(c) == sorted(c) for c in TASK_CLASSES)
    for t, classes in enumerate(TASK_CLASSES):
        assert {FINE_TO_COARSE[f] for f in classes} == {t}
    assert len(set(TASK_NAMES)) == 20 and all(n.isidentifier() for n in TASK_NAMES)
    assert TASK_NAMES[0] == "aquatic_mammals"
    assert TASK_NAMES[COARSE_LABEL_NAMES.index("large_man-made_outdoor_things")] == "large_man_made_outdoor_things"
    # Two well-known members: superclass 'people' holds baby, boy, girl, man, woman (ids 2, 11, 35, 46, 98).
    assert TASK_CLASSES[TASK_NAMES.index("people")] == (2, 11, 35, 46, 98)


def test_fixture_is_in_the_official_format(cifar_root):
    folder = cifar_root / "cifar-100-python"
    raw = (folder / "train").read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as the Python 2 originals
    assert b"numpy.core.multiarray" in raw
    train = _read(folder / "train")
    assert {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"} <= set(train)
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (200, 3072)
    meta = _read(folder / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


def test_items_hold_the_pickled_pixels_and_one_target_per_image(cifar_root):
    raw = _read(cifar_root / "cifar-100-python" / "test")
    data, fine = raw[b"data"], raw[b"fine_labels"]
    dataset = load_cifar100(cifar_root, "test")
    assert len(dataset) == 100 and not dataset.augment
    mean = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(3, 1, 1)
    for i in (0, 17, 99):
        image, targets = dataset[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        pixels = (image * std + mean) * 255
        # Rows of b'data' are the R, G and B planes of 32x32, row-major.
        expected = torch.from_numpy(data[i].reshape(3, 32, 32).astype(np.float32))
        assert torch.allclose(pixels, expected, atol=1e-3)
        assert set(targets) == set(TASK_NAMES)
        own = TASK_NAMES[FINE_TO_COARSE[fine[i]]]
        assert targets[own].dtype == torch.int64
        assert int(targets[own]) == TASK_CLASSES[FINE_TO_COARSE[fine[i]]].index(fine[i])
        assert all(int(v) == -1 for name, v in targets.items() if name != own)


def test_splits_are_disjoint_stratified_and_seeded(cifar_root):
    def keys(ds):
        return {ds.images[i].numpy().tobytes() for i in range(len(ds))}

    train, val = load_cifar100(cifar_root, "train"), load_cifar100(cifar_root, "val")
    trainval = load_cifar100(cifar_root, "trainval")
    assert (len(train), len(val), len(trainval)) == (180, 20, 200)
    assert keys(train).isdisjoint(keys(val)) and keys(train) | keys(val) == keys(trainval)
    # 10% of every superclass: each of the 20 tasks has exactly one validation image here.
    assert sorted((val.targets >= 0).sum(0).tolist()) == [1] * 20
    assert keys(load_cifar100(cifar_root, "val", seed=0)) == keys(val)
    assert keys(load_cifar100(cifar_root, "val", seed=1)) != keys(val)
    assert train.augment and trainval.augment and not val.augment


def test_augmentation_is_a_padded_crop_or_its_mirror(cifar_root):
    plain = load_cifar100(cifar_root, "test")
    augmented = load_cifar100(cifar_root, "test", augment=True)
    image, targets = plain[5]
    padded = torch.nn.functional.pad(image[None], (4, 4, 4, 4), mode="reflect")[0]
    candidates = [padded[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
    candidates += [c.flip(-1) for c in candidates]
    torch.manual_seed(0)
    seen_changed = False
    for _ in range(12):
        out, out_targets = augmented[5]
        assert any(torch.equal(out, c) for c in candidates)
        assert all(torch.equal(out_targets[k], targets[k]) for k in targets)
        seen_changed |= not torch.equal(out, image)
    assert seen_changed


def test_data_loader_stacks_targets(cifar_root):
    images, targets = next(iter(DataLoader(load_cifar100(cifar_root, "trainval"), batch_size=16)))
    assert images.shape == (16, 3, 32, 32)
    assert all(t.shape == (16,) and t.dtype == torch.int64 for t in targets.values())
    stacked = torch.stack([targets[n] for n in TASK_NAMES], 1)
    assert ((stacked >= 0).sum(1) == 1).all()


def test_missing_meta_names_the_file(tmp_path):
    folder = write_tiny_cifar100(tmp_path, n_train=20, n_test=20)
    (folder / "meta").unlink()
    with pytest.raises(ValueError, match=str(folder / "meta")):
        load_cifar100(tmp_path, "train")


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match="cifar-100-python"):
        load_cifar100(tmp_path, "test")


def test_truncated_pickle_is_a_clear_error(tmp_path):
    folder = write_tiny_cifar100(tmp_path, n_train=20, n_test=20)
    raw = (folder / "test").read_bytes()
    (folder / "test").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"test is not a readable CIFAR-100 pickle"):
        load_cifar100(tmp_path, "test")
    load_cifar100(tmp_path, "train")  # the other split still loads


def test_malformed_contents_are_named(tmp_path):
    folder = write_tiny_cifar100(tmp_path, n_train=20, n_test=20)
    content = _read(folder / "test")
    content[b"data"] = content[b"data"][:, :1000]
    (folder / "test").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=r"b'data' must be a uint8 array \[n, 3072\]"):
        load_cifar100(tmp_path, "test")

    content = _read(folder / "train")
    content[b"coarse_labels"][0] = (content[b"coarse_labels"][0] + 1) % 20
    (folder / "train").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match="image 0 has fine label"):
        load_cifar100(tmp_path, "train")

    del content[b"fine_labels"]
    (folder / "train").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match="lacks the key b'fine_labels'"):
        load_cifar100(tmp_path, "train")


class _Sneaky:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_pickles_that_would_run_code_are_refused(tmp_path):
    folder = write_tiny_cifar100(tmp_path, n_train=20, n_test=20)
    (folder / "test").write_bytes(pickle.dumps({b"data": _Sneaky()}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load posix.getcwd|refusing to load os.getcwd|refusing to load nt.getcwd"):
        load_cifar100(tmp_path, "test")


def test_md5_check_rejects_files_that_are_not_the_release(tmp_path):
    write_tiny_cifar100(tmp_path, n_train=20, n_test=20)
    with pytest.raises(ValueError, match="md5"):
        load_cifar100(tmp_path, "test", verify_md5=True)


def test_task_losses_and_metrics(cifar_root):
    tasks = cifar100_tasks(_linear_head)
    assert len(tasks) == 20 and all(isinstance(t, Task) and t.primary == "acc" and t.higher_is_better for t in tasks)
    heads = {t.name: t.build_head((3, 32, 32)) for t in tasks}
    images, targets = next(iter(DataLoader(load_cifar100(cifar_root, "val"), batch_size=20)))
    for task in tasks:
        pred = heads[task.name](images)
        assert pred.shape == (20, 5)
        loss = task.loss(pred, targets[task.name])
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
    states = {t.name: MetricState(t) for t in tasks}
    for batch_images, batch_targets in DataLoader(load_cifar100(cifar_root, "val"), batch_size=7):
        for task in tasks:
            states[task.name].update(torch.randn(len(batch_images), 5), batch_targets[task.name])
    for state in states.values():
        result = state.compute()
        assert 0.0 <= result["acc"] <= 1.0 and np.isfinite(result["loss"])


def test_loss_is_zero_with_grad_when_a_batch_has_no_sample_of_the_task():
    task = cifar100_tasks(_linear_head)[0]
    pred = torch.randn(4, 5, requires_grad=True)
    loss = task.loss(pred, torch.full((4,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    # Only valid samples count towards the loss.
    target = torch.tensor([2, -1, -1, 0])
    expected = torch.nn.functional.cross_entropy(pred[[0, 3]], target[[0, 3]])
    assert torch.allclose(task.loss(pred, target), expected)


def test_masked_accuracy_counts_only_the_tasks_samples():
    metric = Accuracy(ignore_index=-1)
    logits = torch.eye(5)[[0, 1, 2, 3]] * 5
    metric.update(logits, torch.tensor([0, -1, 1, -1]))
    metric.update(logits[:1], torch.tensor([-1]))
    assert metric.compute() == pytest.approx(0.5)
    metric.reset()
    with pytest.raises(ValueError, match="no valid sample"):
        metric.compute()


def test_registry_entry_round_trips(tmp_path):
    bench = BENCHMARKS["cifar100"]
    root = bench.write_fixture(tmp_path, n_train=40, n_test=20)
    assert len(bench.load(root, "test")) == 20
    assert bench.config["stage0"] == {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "epochs": 75, "batch_size": 128}
