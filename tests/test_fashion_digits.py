"""The fashion_digits benchmark: digit splits, dense targets rebuilt from the sources, coarse targets, task specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dymu.backbones import lenet
from dymu.data import (
    FASHION_CLASSES,
    LIT_LEVEL,
    MissingDataError,
    build_benchmark,
    fashion_digits_tasks,
    load_benchmark,
    load_fashion_digits,
)
from dymu.data.sources import load_fashion_mnist, load_mnist_digits
from dymu.data.synthetic import write_synthetic_sources

N_TRAIN, N_TEST, PER_DIGIT = 200, 60, 20
TASKS = ["fashion", "fashion_group", "digit", "parity", "segment", "clean"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fd")
    return write_synthetic_sources(folder, n_train=N_TRAIN, n_test=N_TEST, digits_per_class=PER_DIGIT, seed=7)


@pytest.fixture(scope="module")
def bench(root):
    return build_benchmark("fashion_digits", seed=0, root=root)


def _place(item: np.ndarray, at) -> np.ndarray:
    layer = np.zeros((36, 36), dtype=np.uint8)
    layer[at[0] : at[0] + 28, at[1] : at[1] + 28] = item
    return layer


def test_sizes_and_sample_types(bench):
    assert (len(bench.train), len(bench.val), len(bench.test)) == (180, 20, N_TEST)
    x, y = bench.train[0]
    assert x.shape == (1, 36, 36) and x.dtype == torch.float32
    assert list(y) == TASKS
    for name in ("fashion", "fashion_group", "digit", "parity"):
        assert y[name].dtype == torch.int64 and y[name].shape == ()
    assert y["segment"].dtype == torch.int64 and y["segment"].shape == (36, 36)
    assert y["clean"].dtype == torch.float32 and y["clean"].shape == (1, 36, 36)


def test_digit_sets_of_train_val_and_test_are_disjoint_and_test_is_fixed(root, bench):
    used = {name: set(getattr(bench, name).provenance["digit_source"].tolist()) for name in ("train", "val", "test")}
    assert not used["train"] & used["test"] and not used["val"] & used["test"] and not used["train"] & used["val"]
    # A stratified 80/20 split of 200 digits: 4 test digits per class.
    digit_labels = load_mnist_digits(root=root)[1]
    assert np.bincount(digit_labels[sorted(used["test"])], minlength=10).tolist() == [4] * 10
    other_seed = build_benchmark("fashion_digits", seed=1, root=root, limit=50)
    assert set(other_seed.test.provenance["digit_source"].tolist()) <= used["test"]


def test_each_fashion_image_is_used_once(bench):
    train_val = np.concatenate([bench.train.provenance["fashion_source"], bench.val.provenance["fashion_source"]])
    assert sorted(train_val.tolist()) == list(range(N_TRAIN))
    assert sorted(bench.test.provenance["fashion_source"].tolist()) == list(range(N_TEST))


@pytest.mark.parametrize("split", ["train", "test"])
def test_canvas_clean_and_segment_rebuild_from_the_sources(root, bench, split):
    items, item_labels = load_fashion_mnist(split, root=root)
    digits, digit_labels = load_mnist_digits(root=root)
    data = getattr(bench, split)
    p = data.provenance
    x, y = data.batch(torch.arange(len(data)))
    for i in range(len(data)):
        item = _place(items[p["fashion_source"][i]], p["fashion_offset"][i])
        digit = _place(digits[p["digit_source"][i]], p["digit_offset"][i])
        assert 0 <= p["fashion_offset"][i].min() and p["fashion_offset"][i].max() <= 4
        assert 4 <= p["digit_offset"][i].min() and p["digit_offset"][i].max() <= 8
        np.testing.assert_array_equal(x[i, 0].numpy(), np.maximum(item, digit) / np.float32(255))
        np.testing.assert_array_equal(y["clean"][i, 0].numpy(), item / np.float32(255))
        canvas = np.maximum(item, digit)
        segment = y["segment"][i].numpy()
        lit = canvas >= LIT_LEVEL
        assert (segment[~lit] == 0).all()
        assert (segment[lit & (digit > item)] == 2).all()
        assert (segment[lit & (digit <= item)] == 1).all()
        assert int(y["fashion"][i]) == item_labels[p["fashion_source"][i]]
        assert int(y["digit"][i]) == digit_labels[p["digit_source"][i]]
    # Both kinds of foreground really occur, and items overlap digits somewhere.
    assert (y["segment"] == 1).any() and (y["segment"] == 2).any()


def test_lit_threshold_is_a_tenth_of_full_scale():
    assert LIT_LEVEL / 255 > 0.1 and (LIT_LEVEL - 1) / 255 <= 0.1


def test_coarse_groups_and_parity(bench):
    groups = {
        0: {"T-shirt/top", "Pullover", "Coat", "Shirt"},
        1: {"Sandal", "Sneaker", "Ankle boot"},
        2: {"Trouser", "Dress", "Bag"},
    }
    targets = bench.train.arrays.targets
    for fashion, group in zip(targets["fashion"], targets["fashion_group"]):
        assert FASHION_CLASSES[fashion] in groups[int(group)]
    assert set(targets["fashion_group"].tolist()) == {0, 1, 2}
    assert (targets["parity"] == targets["digit"] % 2).all() and set(targets["parity"].tolist()) == {0, 1}


def test_determinism_and_checksum(root, bench):
    assert build_benchmark("fashion_digits", seed=0, root=root).checksum == bench.checksum
    assert build_benchmark("fashion_digits", seed=2, root=root).checksum != bench.checksum


def test_task_specs_fit_lenet_and_score_a_batch(root):
    train, _, _ = load_benchmark("fashion_digits", batch_size=8, root=root, limit=40)
    x, y = next(iter(train))
    backbone = lenet()
    shape = backbone.block_shapes()[-1].output
    features = backbone(x)
    tasks = fashion_digits_tasks()
    assert [t.name for t in tasks] == TASKS
    expected = {
        "fashion": (8, 10), "fashion_group": (8, 3), "digit": (8, 10), "parity": (8, 2),
        "segment": (8, 3, 36, 36), "clean": (8, 1, 36, 36),
    }  # fmt: skip
    primaries = {
        "fashion": ("acc", True), "fashion_group": ("acc", True), "digit": ("acc", True), "parity": ("acc", True),
        "segment": ("miou", True), "clean": ("mae", False),
    }  # fmt: skip
    for task in tasks:
        pred = task.build_head(shape)(features)
        assert pred.shape == expected[task.name]
        assert (task.primary, task.higher_is_better) == primaries[task.name]
        loss = task.loss(pred, y[task.name])
        loss.backward(retain_graph=True)
        state = task.metric_state()
        state.update(pred.detach(), y[task.name])
        scores = state.compute()
        assert np.isfinite(list(scores.values())).all() and task.primary in scores
    assert "pixel_acc" in tasks[4].metrics


def test_dense_head_reaches_36x36_from_shapes_that_do_not_divide_it():
    head = fashion_digits_tasks(["segment"])[0].build_head((16, 10, 10))
    assert head(torch.zeros(2, 16, 10, 10)).shape == (2, 3, 36, 36)


def test_task_subsets_are_checked():
    assert [t.name for t in fashion_digits_tasks(["parity", "clean"])] == ["parity", "clean"]
    with pytest.raises(ValueError, match="no task.*'top_left'"):
        fashion_digits_tasks(["top_left"])


def test_only_the_requested_targets_are_handed_out(root):
    train, val, test = load_fashion_digits(batch_size=4, root=root, limit=20, tasks=["digit", "segment"])
    _, y = next(iter(test))
    assert list(y) == ["digit", "segment"]
    assert [t.name for t in train.benchmark.tasks()] == ["digit", "segment"]


def test_real_fashion_digits_builds_with_disjoint_digit_splits():
    try:
        real = build_benchmark("fashion_digits", seed=0)
    except MissingDataError as err:
        pytest.skip(f"real data not installed (run `bash scripts/get_data.sh`): {err}")
    assert (len(real.train), len(real.val), len(real.test)) == (54_000, 6_000, 10_000)
    used = [set(getattr(real, s).provenance["digit_source"].tolist()) for s in ("train", "val", "test")]
    assert [len(u) for u in used] == [7_200, 800, 2_000]
    assert not (used[0] & used[1]) and not (used[0] & used[2]) and not (used[1] & used[2])
    shares = np.bincount(real.test.arrays.targets["segment"].ravel(), minlength=3) / real.test.arrays.targets["segment"].size
    assert 0.5 < shares[0] < 0.8 and shares[1] > shares[2] > 0.03  # a garment covers more than a digit
    assert np.bincount(real.test.arrays.targets["fashion_group"]).tolist() == [4_000, 3_000, 3_000]
