"""The multifashion benchmark: canvases rebuilt from the source files, splits, determinism, loaders, task specs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dymu.backbones import lenet
from dymu.data import MissingDataError, TensorLoader, build_benchmark, load_benchmark, multifashion_tasks
from dymu.data.sources import load_fashion_mnist
from dymu.data.synthetic import write_synthetic_sources

N_TRAIN, N_TEST = 300, 100


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_sources(tmp_path_factory.mktemp("mf"), n_train=N_TRAIN, n_test=N_TEST, seed=3)


@pytest.fixture(scope="module")
def bench(root):
    return build_benchmark("multifashion", seed=0, root=root)


def _canvas_by_hand(sources: np.ndarray, tl: int, br: int, tl_at, br_at) -> np.ndarray:
    canvas = np.zeros((36, 36), dtype=np.float32)
    (y0, x0), (y1, x1) = tl_at, br_at
    canvas[y0 : y0 + 28, x0 : x0 + 28] = sources[tl] / 255.0
    canvas[y1 : y1 + 28, x1 : x1 + 28] = np.maximum(canvas[y1 : y1 + 28, x1 : x1 + 28], sources[br] / 255.0)
    return canvas


def test_split_sizes_shapes_and_value_range(bench):
    assert (len(bench.train), len(bench.val), len(bench.test)) == (2 * 270, 2 * 30, 2 * N_TEST)
    x, y = bench.train[0]
    assert x.shape == (1, 36, 36) and x.dtype == torch.float32
    assert set(y) == {"top_left", "bottom_right"}
    assert all(t.dtype == torch.int64 and t.shape == () for t in y.values())
    images = bench.train.arrays.images
    assert images.max() > 200  # items are really pasted, not blank
    xb, _ = bench.train.batch(torch.arange(len(bench.train)))
    assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_canvases_rebuild_from_the_source_files(root, bench, split):
    source_split = "test" if split == "test" else "train"
    sources, labels = load_fashion_mnist(source_split, root=root)
    data = getattr(bench, split)
    p = data.provenance
    for i in range(len(data)):
        x, y = data[i]
        expected = _canvas_by_hand(
            sources, p["top_left_source"][i], p["bottom_right_source"][i], p["top_left_offset"][i], p["bottom_right_offset"][i]
        )
        np.testing.assert_array_equal(x[0].numpy(), expected)
        assert int(y["top_left"]) == labels[p["top_left_source"][i]]
        assert int(y["bottom_right"]) == labels[p["bottom_right_source"][i]]


def test_items_sit_in_their_corners_within_the_shift_range(bench):
    for split in (bench.train, bench.val, bench.test):
        tl, br = split.provenance["top_left_offset"], split.provenance["bottom_right_offset"]
        assert tl.min() == 0 and tl.max() == 4
        assert br.min() == 4 and br.max() == 8
        # Every one of the 25 shifts occurs in a split this size.
        assert len({tuple(o) for o in tl}) == 25 or len(split) < 100


def test_the_two_items_are_of_different_classes(bench):
    for split in (bench.train, bench.val, bench.test):
        assert (split.arrays.targets["top_left"] != split.arrays.targets["bottom_right"]).all()


def test_each_source_image_is_top_left_exactly_twice(bench):
    train_val = np.concatenate([bench.train.provenance["top_left_source"], bench.val.provenance["top_left_source"]])
    assert np.bincount(train_val, minlength=N_TRAIN).tolist() == [2] * N_TRAIN
    assert np.bincount(bench.test.provenance["top_left_source"], minlength=N_TEST).tolist() == [2] * N_TEST


def test_validation_is_a_tenth_of_train_and_shares_no_source(root, bench):
    assert len(bench.val) == round(0.1 * (len(bench.train) + len(bench.val)))
    used = lambda split: set(split.provenance["top_left_source"]) | set(split.provenance["bottom_right_source"])  # noqa: E731
    assert not used(bench.train) & used(bench.val)
    # Stratified: each class gives 3 of its 30 train sources.
    labels = load_fashion_mnist("train", root=root)[1]
    assert np.bincount(labels[np.unique(bench.val.provenance["top_left_source"])], minlength=10).tolist() == [3] * 10


def test_same_seed_same_checksum_other_seed_other_data(root, bench):
    again = build_benchmark("multifashion", seed=0, root=root)
    other = build_benchmark("multifashion", seed=1, root=root)
    assert again.checksum == bench.checksum and again.train.checksum == bench.train.checksum
    assert other.checksum != bench.checksum
    assert other.test.checksum != bench.test.checksum
    assert len(bench.checksum) == 64


def test_limit_uses_only_the_first_source_items(root):
    small = build_benchmark("multifashion", seed=0, root=root, limit=40)
    assert (len(small.train), len(small.val), len(small.test)) == (72, 8, 80)
    for split in (small.train, small.val, small.test):
        assert split.provenance["top_left_source"].max() < 40 and split.provenance["bottom_right_source"].max() < 40


def test_bad_arguments_are_rejected(root):
    with pytest.raises(ValueError, match="unknown benchmark 'mnist'"):
        build_benchmark("mnist", root=root)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        build_benchmark("multifashion", seed=-1, root=root)
    with pytest.raises(ValueError, match="no task.*'digit'"):
        build_benchmark("multifashion", root=root, tasks=["digit"])
    with pytest.raises(ValueError, match="single class"):
        build_benchmark("multifashion", root=root, limit=1)


def test_loaders_batch_shuffle_reproducibly_and_cover_every_sample(root):
    train, val, test = load_benchmark("multifashion", batch_size=64, seed=0, root=root, limit=100)
    assert len(train) == -(-180 // 64) and len(val) == 1 and len(test) == -(-200 // 64)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 36, 36) and y["top_left"].shape == (64,) and y["top_left"].dtype == torch.int64
    train.set_epoch(0)
    first = torch.cat([b[1]["top_left"] for b in train])
    second = torch.cat([b[1]["top_left"] for b in train])
    assert len(first) == 180 and not torch.equal(first, second)  # a new order every pass
    train.set_epoch(0)
    assert torch.equal(torch.cat([b[1]["top_left"] for b in train]), first)
    ordered = torch.cat([b[0] for b in test])
    assert torch.equal(ordered, test.dataset.batch(torch.arange(200))[0])
    assert train.benchmark is not None and train.benchmark.checksum == test.benchmark.checksum


def test_data_parallel_ranks_split_every_pass_between_them(bench):
    n = len(bench.val)
    seen = []
    for rank in range(3):
        loader = TensorLoader(bench.val, 7, shuffle=True, seed=5, rank=rank, world_size=3)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen.append(torch.cat([b[0] for b in batches]).flatten(1))
    assert len({s.shape[0] for s in seen}) == 1 and sum(s.shape[0] for s in seen) == 3 * -(-n // 3)
    every = torch.cat(seen)
    all_images = bench.val.batch(torch.arange(n))[0].flatten(1)
    assert all(any(torch.equal(img, row) for row in every) for img in all_images)


def test_task_specs_fit_the_lenet_backbone_and_score_batches(bench):
    backbone = lenet()
    shape = backbone.block_shapes()[-1].output
    tasks = multifashion_tasks()
    assert [t.name for t in tasks] == ["top_left", "bottom_right"]
    x, y = bench.train.batch(torch.arange(16))
    features = backbone(x)
    for task in tasks:
        assert task.primary == "acc" and task.higher_is_better
        logits = task.build_head(shape)(features)
        assert logits.shape == (16, 10)
        state = task.metric_state()
        state.update(logits.detach(), y[task.name])
        scores = state.compute()
        assert 0.0 <= scores["acc"] <= 1.0 and scores["loss"] > 0


def test_real_multifashion_builds_in_seconds():
    try:
        start = time.perf_counter()
        real = build_benchmark("multifashion", seed=0)
    except MissingDataError as err:
        pytest.skip(f"Fashion-MNIST not installed (run `bash scripts/get_data.sh`): {err}")
    elapsed = time.perf_counter() - start
    assert (len(real.train), len(real.val), len(real.test)) == (108_000, 12_000, 20_000)
    assert elapsed < 20, f"building multifashion took {elapsed:.1f} s"
    counts = np.bincount(real.test.arrays.targets["bottom_right"], minlength=10)
    assert counts.min() > 1500 and counts.max() < 2500  # partners spread over all classes
