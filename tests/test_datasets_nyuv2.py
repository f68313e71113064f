"""NYUv2 (preprocessed .npy copy): reading, splits, joint augmentation, errors, losses and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn
from torch.utils.data import DataLoader

from benchmarks.datasets.fixtures import write_tiny_nyuv2
from benchmarks.datasets.nyuv2 import KINDS, NUM_CLASSES, load_nyuv2, nyuv2_tasks, read_nyuv2_sample
from benchmarks.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    JointAugment,
    hflip,
    holdout_split,
    masked_cross_entropy,
    masked_l1_loss,
    normal_cosine_loss,
)
from dymu.tasks import MetricState

SIZE = (24, 32)


def _conv_head(num_outputs):
    def factory(out_shape, skip_shapes=None):
        return nn.Conv2d(out_shape[0], num_outputs, 1)

    return factory


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    return write_tiny_nyuv2(tmp_path_factory.mktemp("nyu"), n_train=10, n_val=3, size=SIZE, seed=1)


def _files(root, split_folder, i):
    return {folder: root / split_folder / folder / f"{i}.npy" for folder in ("image", "label", "depth", "normal")}


def test_items_hold_the_stored_arrays(nyu_root):
    dataset = load_nyuv2(nyu_root, "test")
    assert len(dataset) == 3 and dataset.augment is None
    image, targets = dataset[1]
    raw = {k: np.load(p) for k, p in _files(nyu_root, "val", 1).items()}
    assert raw["label"].dtype == np.float32 and raw["depth"].shape == (*SIZE, 1)  # the common copy's format
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(image * std + mean, torch.from_numpy(raw["image"]).permute(2, 0, 1), atol=1e-5)
    semseg = targets["semseg"]
    assert semseg.shape == SIZE and semseg.dtype == torch.int64
    unlabelled = torch.from_numpy(raw["label"] == -1)
    assert unlabelled.any() and torch.equal(semseg == 255, unlabelled)
    assert torch.equal(semseg[~unlabelled], torch.from_numpy(raw["label"]).long()[~unlabelled])
    assert int(semseg[~unlabelled].max()) < NUM_CLASSES
    assert targets["depth"].shape == (1, *SIZE) and torch.equal(targets["depth"][0], torch.from_numpy(raw["depth"][..., 0]))
    assert targets["normal"].shape == (3, *SIZE)
    assert torch.equal(targets["normal"], torch.from_numpy(raw["normal"]).permute(2, 0, 1))
    norms = targets["normal"].norm(dim=0)
    assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5)


def test_255_as_unlabelled_reads_the_same(tmp_path, nyu_root):
    other = write_tiny_nyuv2(tmp_path, n_train=10, n_val=3, size=SIZE, seed=1, ignore_value=255)
    assert (np.load(other / "val" / "label" / "1.npy") == 255).any()
    assert torch.equal(load_nyuv2(other, "test")[1][1]["semseg"], load_nyuv2(nyu_root, "test")[1][1]["semseg"])


def test_splits(nyu_root):
    def paths(ds):
        return {str(f["image"]) for f in ds.files}

    train, val, trainval = (load_nyuv2(nyu_root, s) for s in ("train", "val", "trainval"))
    assert (len(train), len(val), len(trainval)) == (9, 1, 10)
    assert paths(train).isdisjoint(paths(val)) and paths(train) | paths(val) == paths(trainval)
    assert all("/train/" in p for p in paths(trainval))
    assert all("/val/" in p for p in paths(load_nyuv2(nyu_root, "test")))
    assert train.augment is not None and val.augment is None


def test_holdout_split_is_seeded_and_keeps_group_proportions():
    kept, held = holdout_split(100, 0.1, seed=0, groups=np.arange(100) % 4)
    assert len(held) == 12 and np.intersect1d(kept, held).size == 0 and len(kept) + len(held) == 100
    assert np.array_equal(holdout_split(100, 0.1, seed=0, groups=np.arange(100) % 4)[1], held)
    assert not np.array_equal(holdout_split(100, 0.1, seed=1, groups=np.arange(100) % 4)[1], held)
    assert np.bincount(np.arange(100)[held] % 4).tolist() == [3, 3, 3, 3]
    assert len(holdout_split(3, 0.1, seed=0)[1]) == 1  # tiny sets still get a validation item
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(10, 1.0, seed=0)


def test_flip_mirrors_everything_and_negates_the_normals_x(nyu_root):
    sample = read_nyuv2_sample(_files(nyu_root, "train", 0))
    flipped = JointAugment(KINDS, scale_range=(1.0, 1.0), flip_prob=1.0)(sample)
    by_hand = hflip(sample, KINDS)
    assert all(torch.equal(flipped[k], by_hand[k]) for k in sample)
    for name in ("image", "semseg", "depth"):
        assert torch.equal(flipped[name], sample[name].flip(-1))
    assert torch.equal(flipped["normal"][0], -sample["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], sample["normal"][1:].flip(-1))
    unchanged = JointAugment(KINDS, scale_range=(1.0, 1.0), flip_prob=0.0)(sample)
    assert all(torch.equal(unchanged[k], sample[k]) for k in sample)


def test_zoom_keeps_targets_aligned_and_scales_depth():
    # Targets are functions of the class map, so after any joint transform they must still agree.
    gen = torch.Generator().manual_seed(0)
    semseg = torch.randint(0, NUM_CLASSES, (24, 32), generator=gen)
    semseg[:3] = 255
    table = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 3, generator=gen), dim=1)
    valid = semseg != 255
    depth = torch.where(valid, 1.0 + semseg.float(), torch.zeros(()))[None]
    normal = torch.where(valid[None], table[semseg.clamp(max=NUM_CLASSES - 1)].permute(2, 0, 1), torch.zeros(()))
    image = torch.stack([semseg.float(), semseg.float() * 2, torch.zeros(24, 32)])
    sample = {"image": image, "semseg": semseg, "depth": depth, "normal": normal}
    augment = JointAugment(KINDS, scale_range=(2.0, 2.0), flip_prob=1.0)
    out = augment(sample, generator=torch.Generator().manual_seed(5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in sample.items()}
    kept = out["semseg"] != 255
    assert kept.any() and torch.equal(out["depth"][0] == 0, ~kept)
    assert torch.allclose(out["depth"][0][kept] * 2.0, 1.0 + out["semseg"][kept].float())
    expected_normal = table[out["semseg"][kept]].T * torch.tensor([-1.0, 1.0, 1.0])[:, None]
    assert torch.allclose(out["normal"][:, kept], expected_normal)
    # A zoom of 2 shows a 12x16 window blown up: every class id appears in 2x2 blocks.
    assert torch.equal(out["semseg"], out["semseg"][::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_augmented_items_vary_but_keep_shapes(nyu_root):
    dataset = load_nyuv2(nyu_root, "trainval")
    torch.manual_seed(0)
    first = dataset[0]
    outs = [dataset[0] for _ in range(4)]
    assert any(not torch.equal(o[0], first[0]) for o in outs)
    for image, targets in outs:
        assert image.shape == (3, *SIZE) and targets["semseg"].shape == SIZE
        assert targets["depth"].shape == (1, *SIZE) and targets["normal"].shape == (3, *SIZE)


def test_missing_file_is_named(tmp_path):
    root = write_tiny_nyuv2(tmp_path, n_train=4, n_val=2, size=SIZE)
    (root / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(ValueError, match=r"missing file .*train/depth/2\.npy.*\{image,label,depth,normal\}"):
        load_nyuv2(root, "train")
    load_nyuv2(root, "test")
    with pytest.raises(ValueError, match="missing folder"):
        load_nyuv2(tmp_path / "nowhere", "train")


def test_malformed_arrays_are_named(tmp_path):
    root = write_tiny_nyuv2(tmp_path, n_train=4, n_val=2, size=SIZE)
    label = root / "val" / "label" / "1.npy"
    np.save(label, np.zeros((*SIZE, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"val/label/1\.npy: a label array must be \[H, W\]"):
        load_nyuv2(root, "test")

    np.save(label, np.zeros((SIZE[0], SIZE[1] + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"val/label/1\.npy is 24x33"):
        load_nyuv2(root, "test")

    np.save(label, np.full(SIZE, 13, dtype=np.float32))
    dataset = load_nyuv2(root, "test")  # headers are fine; the values are checked on reading
    with pytest.raises(ValueError, match=r"val/label/1\.npy: found label value 13"):
        dataset[1]

    depth = root / "train" / "depth" / "0.npy"
    depth.write_bytes(depth.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"train/depth/0\.npy is not a readable \.npy array"):
        load_nyuv2(root, "train")


def test_samples_of_different_sizes_are_rejected(tmp_path):
    root = write_tiny_nyuv2(tmp_path, n_train=4, n_val=2, size=SIZE)
    other = write_tiny_nyuv2(tmp_path / "big", n_train=1, n_val=1, size=(16, 16))
    for folder in ("image", "label", "depth", "normal"):
        (other / "val" / folder / "0.npy").replace(root / "val" / folder / "1.npy")
    with pytest.raises(ValueError, match=r"val/image/1\.npy is 16x16 .* all samples must share one size"):
        load_nyuv2(root, "test")


def test_task_specs_run_on_predictions_of_the_right_shape(nyu_root):
    tasks = nyuv2_tasks(_conv_head)
    assert [t.name for t in tasks] == ["semseg", "depth", "normal"]
    assert [t.primary for t in tasks] == ["mIoU", "abs_err", "mean_angle"]
    heads = {t.name: t.build_head((8, 12, 16)) for t in tasks}
    assert heads["semseg"].out_channels == 13 and heads["depth"].out_channels == 1 and heads["normal"].out_channels == 3
    states = {t.name: MetricState(t) for t in tasks}
    features = torch.randn(3, 8, 12, 16)  # a coarser grid than the targets: losses and metrics upsample
    images, targets = next(iter(DataLoader(load_nyuv2(nyu_root, "test"), batch_size=3)))
    for task in tasks:
        pred = heads[task.name](features)
        loss = task.loss(pred, targets[task.name])
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        states[task.name].update(pred.detach(), targets[task.name])
    results = {name: state.compute() for name, state in states.items()}
    assert 0 <= results["semseg"]["mIoU"] <= 1 and 0 <= results["semseg"]["pixel_acc"] <= 1
    assert results["depth"]["abs_err"] > 0 and results["depth"]["rel_err"] > 0
    assert 0 < results["normal"]["mean_angle"] <= 180 and 0 < results["normal"]["median_angle"] <= 180


def test_perfect_predictions_score_perfectly(nyu_root):
    tasks = {t.name: t for t in nyuv2_tasks(_conv_head)}
    _, targets = next(iter(DataLoader(load_nyuv2(nyu_root, "test"), batch_size=3)))
    semseg_logits = torch.nn.functional.one_hot(targets["semseg"].clamp(max=12), 13).permute(0, 3, 1, 2).float() * 20
    perfect = {"semseg": semseg_logits, "depth": targets["depth"], "normal": targets["normal"] * 3}
    scores = {}
    for name, task in tasks.items():
        state = MetricState(task)
        state.update(perfect[name], targets[name])
        scores[name] = state.compute()
    assert scores["semseg"]["mIoU"] == pytest.approx(1.0) and scores["semseg"]["pixel_acc"] == pytest.approx(1.0)
    assert scores["semseg"]["loss"] < 1e-6
    assert scores["depth"]["abs_err"] == 0 and scores["depth"]["loss"] == 0
    assert scores["normal"]["mean_angle"] < 0.1 and scores["normal"]["loss"] < 1e-6


def test_losses_are_zero_with_grad_when_nothing_is_valid():
    pred_seg = torch.randn(2, 13, 6, 8, requires_grad=True)
    pred_depth = torch.randn(2, 1, 6, 8, requires_grad=True)
    pred_normal = torch.randn(2, 3, 6, 8, requires_grad=True)
    losses = [
        (masked_cross_entropy(pred_seg, torch.full((2, 6, 8), 255)), pred_seg),
        (masked_l1_loss(pred_depth, torch.zeros(2, 1, 6, 8)), pred_depth),
        (normal_cosine_loss(pred_normal, torch.zeros(2, 3, 6, 8)), pred_normal),
    ]
    for loss, pred in losses:
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_depth_loss_averages_over_valid_pixels_only():
    target = torch.tensor([[[[2.0, 0.0], [4.0, 0.0]]]])
    pred = torch.tensor([[[[1.0, 100.0], [4.5, -50.0]]]])
    assert masked_l1_loss(pred, target).item() == pytest.approx((1.0 + 0.5) / 2)
