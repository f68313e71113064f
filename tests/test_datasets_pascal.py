"""Multi-task PASCAL-Context: label mappings, PASCAL-Part parsing, geometry, errors, losses and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch

from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.datasets import BENCHMARKS
from benchmarks.datasets.fixtures import write_tiny_pascal_context
from benchmarks.datasets.pascal_context import (
    CONTEXT_TO_VOC,
    HUMAN_PART_NAMES,
    KINDS,
    PERSON_PART_CLASSES,
    TASKS_3,
    TASKS_5,
    VOC_CLASS_NAMES,
    context_edges,
    context_to_semseg,
    load_pascal_context,
    pascal_context_tasks,
    read_human_parts,
)
from benchmarks.datasets.transforms import JointAugment, binary_loss, fit_and_pad, masked_cross_entropy
from dymu.tasks import MetricState

OUT = (56, 56)


def _conv_head(num_outputs):
    def factory(out_shape, skip_shapes=None):
        return nn.Conv2d(out_shape[0], num_outputs, 1)

    return factory


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    return write_tiny_pascal_context(tmp_path_factory.mktemp("pascal"), n_train=4, n_val=4, size=(40, 48), seed=2)


def _by_id(dataset):
    return {f["id"]: i for i, f in enumerate(dataset.files)}


def test_voc_mapping_of_context_labels():
    assert len(VOC_CLASS_NAMES) == 21 and sorted(CONTEXT_TO_VOC.values()) == list(range(1, 21))
    label_map = np.array([[284, 397, 440], [0, 2, 427]])
    semseg = context_to_semseg(label_map)
    assert semseg.tolist() == [[15, 11, 0], [255, 1, 20]]
    assert VOC_CLASS_NAMES[15] == "person" and VOC_CLASS_NAMES[11] == "diningtable"
    with pytest.raises(ValueError, match="0..459"):
        context_to_semseg(np.array([[460]]))


def test_edges_mark_label_changes():
    label_map = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert context_edges(label_map).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_person_parts_are_grouped_into_six_classes():
    assert len(HUMAN_PART_NAMES) == 7 and set(PERSON_PART_CLASSES.values()) == set(range(1, 7))
    assert PERSON_PART_CLASSES["lhand"] == PERSON_PART_CLASSES["llarm"] == HUMAN_PART_NAMES.index("lower_arm")
    assert PERSON_PART_CLASSES["rfoot"] == HUMAN_PART_NAMES.index("lower_leg")


def test_native_targets(pascal_root):
    dataset = load_pascal_context(pascal_root, "trainval", augment=False, output_size=OUT)
    index = _by_id(dataset)
    sample = dataset.read(index["2008_000000"])  # a person with parts and a car
    assert set(sample) == {"image", *TASKS_5}
    shape = (40, 48)
    assert sample["image"].shape == (3, *shape) and sample["image"].dtype == torch.float32
    label_map = scipy.io.loadmat(pascal_root / "pascal-context" / "2008_000000.mat")["LabelMap"]
    assert torch.equal(sample["semseg"], torch.from_numpy(context_to_semseg(label_map)))
    assert {15, 7} <= set(sample["semseg"].unique().tolist()) <= set(range(21)) | {255}
    assert torch.equal(sample["edge"][0], torch.from_numpy(context_edges(label_map)))
    parts = sample["human_parts"]
    person = torch.from_numpy(label_map == 284)
    assert set(parts[person].unique().tolist()) == {1, 2, 6} and (parts[~person] == 0).all()
    saliency = sample["saliency"]
    assert saliency.shape == (1, *shape) and set(saliency.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(saliency[0] == 1, torch.from_numpy(np.isin(label_map, [284, 59])))
    normals = sample["normals"]
    assert normals.shape == (3, *shape) and normals.abs().max() <= 1
    assert torch.allclose(normals.norm(dim=0), torch.ones(shape), atol=0.02)

    no_person = dataset.read(index["2008_000001"])  # no part file at all
    assert (no_person["human_parts"] == 255).all()
    assert no_person["image"].shape == (3, 48, 40)  # images come in both orientations
    only_car = dataset.read(index["2008_000002"])  # a part file without a person
    assert (only_car["human_parts"] == 255).all()
    bystander = dataset.read(index["2008_000003"])  # one person with parts, one without
    assert {0, 255} < set(bystander["human_parts"].unique().tolist())


def test_unannotated_people_are_ignored(pascal_root):
    shape = (48, 40)
    parts = read_human_parts(pascal_root / "human_parts" / "2008_000003.mat", shape)
    content = scipy.io.loadmat(pascal_root / "human_parts" / "2008_000003.mat")["anno"][0, 0]["objects"].ravel()
    with_parts, without_parts = (o for o in content if int(o["class_ind"].ravel()[0]) == 15)
    assert without_parts["parts"].size == 0
    assert (parts[without_parts["mask"].astype(bool)] == 255).all()
    assert (parts[with_parts["mask"].astype(bool)] > 0).all()


def test_evaluation_items_are_padded_with_ignored_pixels(pascal_root):
    dataset = load_pascal_context(pascal_root, "test", output_size=OUT)
    assert dataset.augment is None
    native = dataset.read(1)
    image, targets = dataset[1]
    h, w = native["image"].shape[1:]
    assert image.shape == (3, *OUT)
    assert torch.equal(image[:, :h, :w], native["image"]) and (image[:, h:] == 0).all() and (image[:, :, w:] == 0).all()
    for name in ("semseg", "human_parts"):
        assert torch.equal(targets[name][:h, :w], native[name]) and (targets[name][h:] == 255).all()
    for name in ("saliency", "edge"):
        assert (targets[name][:, h:] == 255).all()
    assert (targets["normals"][:, h:] == 0).all()
    batch_images, batch_targets = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch_images.shape == (3, 3, *OUT) and batch_targets["normals"].shape == (3, 3, *OUT)


def test_oversized_images_are_shrunk_to_fit():
    sample = {"image": torch.rand(3, 80, 40), "semseg": torch.zeros(80, 40, dtype=torch.long)}
    out = fit_and_pad(sample, KINDS, (40, 40))
    assert out["image"].shape == (3, 40, 40) and (out["semseg"][:, :20] == 0).all() and (out["semseg"][:, 20:] == 255).all()


@pytest.mark.parametrize("window", [(-20, -24, 80, 96), (4, 6, 10, 12)])
def test_zoom_resamples_like_crop_then_resize(window):
    # Zooming out only resamples the content, not the padding; for nearest-neighbour kinds and even
    # offsets the result is the same as padding the whole window and resizing it.
    from benchmarks.datasets.transforms import _zoom_window, crop_sample, resize_sample

    gen = torch.Generator().manual_seed(0)
    sample = {
        "semseg": torch.randint(0, 21, (20, 24), generator=gen),
        "saliency": torch.randint(0, 2, (1, 20, 24), generator=gen).float(),
        "normals": torch.randn(3, 20, 24, generator=gen),
    }
    fast = _zoom_window(sample, KINDS, (20, 24), window, (40, 48))
    slow = resize_sample(crop_sample(sample, KINDS, *window), KINDS, (40, 48))
    assert all(torch.equal(fast[k], slow[k]) for k in sample)


def test_training_augmentation_is_joint(pascal_root):
    dataset = load_pascal_context(pascal_root, "train", output_size=OUT)
    native = dataset.read(0)
    flip = JointAugment(dataset.kinds, output_size=native["image"].shape[1:], scale_range=(1.0, 1.0), flip_prob=1.0)
    flipped = flip(native)
    assert torch.equal(flipped["normals"][0], -native["normals"][0].flip(-1))
    for name in ("image", "semseg", "human_parts", "saliency", "edge"):
        assert torch.equal(flipped[name], native[name].flip(-1))
    torch.manual_seed(0)
    for _ in range(3):
        image, targets = dataset[0]
        assert image.shape == (3, *OUT)
        # Saliency (person or car) and semseg (15 person, 7 car) must still coincide after the joint transform.
        labelled = (targets["semseg"] != 255) & (targets["saliency"][0] != 255)
        assert torch.equal((targets["saliency"][0] == 1)[labelled], torch.isin(targets["semseg"], torch.tensor([7, 15]))[labelled])
        parts_known = (targets["human_parts"] != 255) & labelled
        assert torch.equal((targets["human_parts"] > 0)[parts_known], (targets["semseg"] == 15)[parts_known])


def test_splits_and_the_three_task_subset(pascal_root):
    ids = {s: {f["id"] for f in load_pascal_context(pascal_root, s, TASKS_3, output_size=OUT).files} for s in ("train", "val", "trainval", "test")}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"] | ids["val"] == ids["trainval"]
    assert ids["trainval"] == {f"2008_{k:06d}" for k in range(4)} and ids["test"] == {f"2008_{k:06d}" for k in range(4, 8)}
    image, targets = load_pascal_context(pascal_root, "test", TASKS_3, output_size=OUT)[0]
    assert set(targets) == set(TASKS_3)
    with pytest.raises(ValueError, match="distinct names"):
        load_pascal_context(pascal_root, "test", ("semseg", "depth"))


def test_alternative_layouts(tmp_path, pascal_root):
    root = write_tiny_pascal_context(tmp_path, n_train=4, n_val=4, size=(40, 48), seed=2, context_in_trainval=True)
    assert not any((root / "pascal-context").glob("*.mat"))
    reference = load_pascal_context(pascal_root, "test", output_size=OUT)[2][1]
    # A plain list of the ids with people works like the archive's JSON.
    parts = json.loads((root / "ImageSets" / "Parts" / "val.txt").read_text())
    (root / "ImageSets" / "Parts" / "val.txt").write_text("".join(f"{i}\n" for i, c in parts.items() if 15 in c))
    targets = load_pascal_context(root, "test", output_size=OUT)[2][1]
    assert all(torch.equal(targets[k], reference[k]) for k in TASKS_5 if k != "normals")


def test_missing_files_are_named(tmp_path):
    root = write_tiny_pascal_context(tmp_path, n_train=4, n_val=4, size=(40, 48))
    (root / "sal_distill" / "2008_000005.png").unlink()
    with pytest.raises(ValueError, match=r"missing file .*sal_distill/2008_000005\.png"):
        load_pascal_context(root, "test")
    load_pascal_context(root, "trainval")
    (root / "human_parts" / "2008_000000.mat").unlink()  # that image has a person
    with pytest.raises(ValueError, match=r"missing file .*human_parts/2008_000000\.mat"):
        load_pascal_context(root, "trainval")
    load_pascal_context(root, "trainval", ("semseg", "normals", "edge"))
    for png in (root / "normals_distill").iterdir():
        png.unlink()
    (root / "normals_distill").rmdir()
    with pytest.raises(ValueError, match=r"missing folder .*normals_distill"):
        load_pascal_context(root, "trainval", ("semseg", "normals"))
    (root / "ImageSets" / "Parts" / "train.txt").unlink()
    with pytest.raises(ValueError, match=r"missing file .*ImageSets/Parts/train\.txt"):
        load_pascal_context(root, "trainval", TASKS_3)


def test_malformed_files_are_named(tmp_path):
    root = write_tiny_pascal_context(tmp_path, n_train=4, n_val=4, size=(40, 48))
    dataset = load_pascal_context(root, "trainval", output_size=OUT, augment=False)
    index = _by_id(dataset)
    scipy.io.savemat(str(root / "pascal-context" / "2008_000001.mat"), {"labels": np.zeros((48, 40))})
    with pytest.raises(ValueError, match=r"2008_000001\.mat has no key 'LabelMap'"):
        dataset[index["2008_000001"]]
    jpg = root / "JPEGImages" / "2008_000002.jpg"
    jpg.write_bytes(jpg.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"2008_000002\.jpg is not a readable image"):
        dataset[index["2008_000002"]]
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8), "L").save(root / "sal_distill" / "2008_000003.png")
    with pytest.raises(ValueError, match=r"sal_distill/2008_000003\.png is 10x10 but its image is 48x40"):
        dataset[index["2008_000003"]]
    parts = root / "human_parts" / "2008_000000.mat"
    parts.write_bytes(parts.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"2008_000000\.mat is not a readable \.mat file"):
        dataset[index["2008_000000"]]


def test_normals_can_be_restricted_to_chosen_classes(pascal_root):
    dataset = load_pascal_context(pascal_root, "trainval", ("normals",), augment=False, normals_valid_context_ids=[284], output_size=OUT)
    index = _by_id(dataset)
    normals = dataset.read(index["2008_000000"])["normals"]
    label_map = scipy.io.loadmat(pascal_root / "pascal-context" / "2008_000000.mat")["LabelMap"]
    assert torch.equal(normals.norm(dim=0) > 0, torch.from_numpy(label_map == 284))


def test_task_specs_run_on_predictions_of_the_right_shape(pascal_root):
    tasks = pascal_context_tasks(_conv_head)
    assert [t.name for t in tasks] == list(TASKS_5)
    assert [t.primary for t in tasks] == ["mIoU", "mIoU", "maxF", "mean_angle", "loss"]
    assert [t.name for t in pascal_context_tasks(_conv_head, TASKS_3)] == list(TASKS_3)
    heads = {t.name: t.build_head((8, 28, 28)) for t in tasks}
    assert [heads[n].out_channels for n in TASKS_5] == [21, 7, 1, 3, 1]
    states = {t.name: MetricState(t) for t in tasks}
    features = torch.randn(4, 8, 28, 28)  # half the target grid: losses and metrics upsample
    _, targets = next(iter(DataLoader(load_pascal_context(pascal_root, "test", output_size=OUT), batch_size=4)))
    for task in tasks:
        pred = heads[task.name](features)
        loss = task.loss(pred, targets[task.name])
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        states[task.name].update(pred.detach(), targets[task.name])
    results = {name: state.compute() for name, state in states.items()}
    assert 0 <= results["semseg"]["mIoU"] <= 1 and 0 <= results["human_parts"]["mIoU"] <= 1
    assert 0 <= results["saliency"]["maxF"] <= 1 and 0 < results["normals"]["mean_angle"] <= 180
    assert set(results["edge"]) == {"loss"} and np.isfinite(results["edge"]["loss"])


def test_losses_ignore_what_they_should():
    pred = torch.randn(2, 7, 5, 5, requires_grad=True)
    loss = masked_cross_entropy(pred, torch.full((2, 5, 5), 255))  # a batch without people
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))

    logits = torch.zeros(1, 1, 1, 4, requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0, 255.0, 0.0]]]])
    log2 = float(np.log(2))
    assert binary_loss(logits, target).item() == pytest.approx(log2)
    assert binary_loss(logits, target, positive_weight=0.95).item() == pytest.approx((0.95 + 0.05 + 0.05) * log2 / 3)
    empty = binary_loss(logits, torch.full((1, 1, 1, 4), 255.0))
    assert empty.item() == 0.0 and empty.requires_grad


def test_registry_has_both_task_sets(tmp_path):
    assert BENCHMARKS["pascal_context"].config["input_size"] == (512, 512)
    assert BENCHMARKS["pascal_context_3"].config["tasks"] == list(TASKS_3)
    assert [t.name for t in BENCHMARKS["pascal_context_3"].tasks(_conv_head)] == list(TASKS_3)
