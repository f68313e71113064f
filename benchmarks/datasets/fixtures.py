"""Write tiny datasets in the exact on-disk formats of the three benchmarks.

Used by the tests, by end-to-end pipeline tests and by the docs' examples: the real datasets are large
and hosted elsewhere, and these files exercise the same reading code. Contents are synthetic but
learnable (colours follow the labels), so a short training run on them can show a falling loss.

- :func:`write_tiny_cifar100`: ``cifar-100-python/{train,test,meta}``, pickle protocol 2 with byte
  keys, the numpy array pickled under ``numpy.core.multiarray`` as in the official (Python 2) files.
- :func:`write_tiny_nyuv2`: ``{train,val}/{image,label,depth,normal}/N.npy`` as in the preprocessed
  copy (image ``[H, W, 3]`` float in [0, 1], label ``[H, W]`` float with ``-1`` unlabelled, depth
  ``[H, W, 1]`` with 0 invalid, normals ``[H, W, 3]`` with all-zero invalid).
- :func:`write_tiny_pascal_context`: JPEG images, ``LabelMap`` and PASCAL-Part ``anno`` .mat files
  written with ``scipy.io.savemat`` in MATLAB's struct layout, PNG normals and saliency, and the
  ``ImageSets`` lists (the Parts lists in the archive's JSON form).
"""

from __future__ import annotations

import json
import math
import pickle

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from .cifar100 import COARSE_LABEL_NAMES, FINE_LABEL_NAMES, FINE_TO_COARSE
from .nyuv2 import NUM_CLASSES as NYUV2_CLASSES
from .pascal_context import CONTEXT_TO_VOC, PERSON_CLASS_IND

__all__ = ["write_tiny_cifar100", "write_tiny_nyuv2", "write_tiny_pascal_context", "PASCAL_PERSON_PARTS"]


def _dump_py2_style(obj: object, path: Path) -> None:
    data = pickle.dumps(obj, protocol=2)
    # The official files were written by numpy 1.x, which pickles arrays under this module path.
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def write_tiny_cifar100(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` and return that folder.

    Fine labels are ``arange(n) % 100`` shuffled: every class appears once ``n >= 100``, balanced when
    ``n`` is a multiple of 100 (the default 200 gives each superclass task 10 training images). Each
    fine class has its own mean colour plus noise.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(100, 3))
    _dump_py2_style(
        {
            b"fine_label_names": [name.encode() for name in FINE_LABEL_NAMES],
            b"coarse_label_names": [name.encode() for name in COARSE_LABEL_NAMES],
        },
        folder / "meta",
    )
    for name, n, batch_label in (("train", n_train, b"training batch 1 of 1"), ("test", n_test, b"testing batch 1 of 1")):
        fine = rng.permutation(np.arange(n) % 100)
        pixels = palette[fine][:, :, None, None] + rng.normal(0, 25, size=(n, 3, 32, 32))
        data = np.clip(np.round(pixels), 0, 255).astype(np.uint8).reshape(n, 3 * 32 * 32)
        _dump_py2_style(
            {
                b"filenames": [f"{FINE_LABEL_NAMES[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
                b"batch_label": batch_label,
                b"fine_labels": [int(f) for f in fine],
                b"coarse_labels": [int(FINE_TO_COARSE[f]) for f in fine],
                b"data": data,
            },
            folder / name,
        )
    return folder


def _blocks(rng: np.random.Generator, values: np.ndarray, shape: tuple[int, int], cell: int = 8) -> np.ndarray:
    """A piecewise-constant map of ``values`` drawn per ``cell x cell`` block."""
    grid = rng.choice(values, size=(math.ceil(shape[0] / cell), math.ceil(shape[1] / cell)))
    return np.kron(grid, np.ones((cell, cell), dtype=grid.dtype))[: shape[0], : shape[1]]


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, 3))
    vectors[:, 2] = np.abs(vectors[:, 2]) + 0.5  # facing the camera, as surface normals do
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_tiny_nyuv2(
    root: str | Path,
    n_train: int = 6,
    n_val: int = 3,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    ignore_value: int = -1,
) -> Path:
    """Write ``root/{train,val}/{image,label,depth,normal}/N.npy`` and return ``root``.

    ``ignore_value`` is the label of unlabelled pixels (-1 in the common copy, 255 in others); about a
    tenth of the pixels are unlabelled and have no depth and no normal.
    """
    if ignore_value not in (-1, 255):
        raise ValueError(f"ignore_value must be -1 or 255, got {ignore_value}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.1, 0.9, size=(NYUV2_CLASSES, 3))
    normals = _unit_vectors(rng, NYUV2_CLASSES)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = _blocks(rng, np.arange(NYUV2_CLASSES), size)
            unlabelled = rng.random(size) < 0.1
            image = palette[label] + rng.normal(0, 0.03, size=(h, w, 3))
            depth = 1.0 + 0.25 * label + np.linspace(0, 1, h)[:, None]
            normal = normals[label]
            depth[unlabelled] = 0.0
            normal[unlabelled] = 0.0
            stored_label = np.where(unlabelled, ignore_value, label).astype(np.float32)
            np.save(root / split / "image" / f"{i}.npy", np.clip(image, 0, 1).astype(np.float32))
            np.save(root / split / "label" / f"{i}.npy", stored_label)
            np.save(root / split / "depth" / f"{i}.npy", depth[..., None].astype(np.float32))
            np.save(root / split / "normal" / f"{i}.npy", normal.astype(np.float32))
    return root


PASCAL_PERSON_PARTS = ("head", "torso", "llleg", "rfoot")
"""Part names the PASCAL fixture gives a person, top to bottom (classes 1, 2, 6, 6)."""

_CONTEXT_SCENERY = np.array([440, 360, 15, 397, 0])  # wall, sky, a non-VOC class, table (VOC), unlabelled
_PERSON, _CAR = 284, 59


def _struct_array(records: list[dict[str, object]], fields: tuple[str, ...]) -> np.ndarray:
    """A MATLAB 1xK struct array as ``scipy.io.savemat`` writes it."""
    array = np.empty((1, len(records)), dtype=[(f, "O") for f in fields])
    for k, record in enumerate(records):
        for f in fields:
            array[0, k][f] = record[f]
    return array


def _object(class_name: str, class_ind: int, mask: np.ndarray, parts: list[tuple[str, np.ndarray]]) -> dict[str, object]:
    part_records = [{"part_name": name, "mask": m.astype(np.uint8)} for name, m in parts]
    return {
        "class": class_name,
        "class_ind": np.array([[float(class_ind)]]),
        "mask": mask.astype(np.uint8),
        # MATLAB stores an object without parts as an empty 0x0 array.
        "parts": _struct_array(part_records, ("part_name", "mask")) if part_records else np.zeros((0, 0)),
    }


def _box(shape: tuple[int, int], top: float, left: float, bottom: float, right: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[int(top * shape[0]) : int(bottom * shape[0]), int(left * shape[1]) : int(right * shape[1])] = True
    return mask


def write_tiny_pascal_context(
    root: str | Path,
    n_train: int = 4,
    n_val: int = 3,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    context_in_trainval: bool = False,
) -> Path:
    """Write a multi-task PASCAL-Context folder and return ``root``.

    Images alternate between ``size`` and its transpose. Image ``k`` (ids ``2008_00000k``) cycles
    through four cases: ``k % 4 == 0`` a person with parts and a car; ``1`` no person and no
    human_parts file; ``2`` a human_parts file with only a car; ``3`` a person with parts and a person
    without. ``context_in_trainval`` puts the LabelMap files under ``pascal-context/trainval/`` as the
    archive does.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    context_dir = root / "pascal-context" / ("trainval" if context_in_trainval else "")
    folders = [root / "JPEGImages", context_dir, root / "human_parts", root / "normals_distill", root / "sal_distill"]
    folders += [root / "ImageSets" / "Context", root / "ImageSets" / "Parts"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    used_ids = np.array(sorted({0, _PERSON, _CAR, *_CONTEXT_SCENERY.tolist(), *CONTEXT_TO_VOC}))
    palette = {int(c): rng.uniform(20, 235, size=3) for c in used_ids}
    normal_of = dict(zip((int(c) for c in used_ids), _unit_vectors(rng, len(used_ids))))

    ids = [f"2008_{k:06d}" for k in range(n_train + n_val)]
    objects_per_image: dict[str, list[int]] = {}
    for k, image_id in enumerate(ids):
        shape = size if k % 2 == 0 else (size[1], size[0])
        label_map = _blocks(rng, _CONTEXT_SCENERY, shape).astype(np.int64)
        case = k % 4
        objects = []
        if case in (0, 2):
            car = _box(shape, 0.6, 0.05, 0.95, 0.35)
            label_map[car] = _CAR
            objects.append(_object("car", 7, car, []))
        if case in (0, 3):
            person = _box(shape, 0.1, 0.5, 0.9, 0.8)
            label_map[person] = _PERSON
            rows = np.flatnonzero(person.any(1))
            bands = np.array_split(rows, len(PASCAL_PERSON_PARTS))
            parts = []
            for name, band in zip(PASCAL_PERSON_PARTS, bands):
                part = np.zeros(shape, dtype=bool)
                part[band] = person[band]
                parts.append((name, part))
            objects.append(_object("person", PERSON_CLASS_IND, person, parts))
        if case == 3:
            bystander = _box(shape, 0.1, 0.05, 0.5, 0.3)
            label_map[bystander] = _PERSON
            objects.append(_object("person", PERSON_CLASS_IND, bystander, []))
        objects_per_image[image_id] = [int(np.asarray(o["class_ind"]).ravel()[0]) for o in objects]
        if objects:
            anno = {"imname": image_id, "objects": _struct_array(objects, ("class", "class_ind", "mask", "parts"))}
            scipy.io.savemat(str(root / "human_parts" / f"{image_id}.mat"), {"anno": anno})
        scipy.io.savemat(str(context_dir / f"{image_id}.mat"), {"LabelMap": label_map.astype(np.uint16)})

        colours = np.stack([palette[int(c)] for c in label_map.ravel()]).reshape(*shape, 3)
        pixels = np.clip(np.round(colours + rng.normal(0, 8, size=colours.shape)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        salient = np.isin(label_map, [_PERSON, _CAR])
        Image.fromarray(np.where(salient, 255, 0).astype(np.uint8), "L").save(root / "sal_distill" / f"{image_id}.png")
        normals = np.stack([normal_of[int(c)] for c in label_map.ravel()]).reshape(*shape, 3)
        encoded = np.clip(np.round((normals + 1) / 2 * 255), 0, 255).astype(np.uint8)
        Image.fromarray(encoded, "RGB").save(root / "normals_distill" / f"{image_id}.png")

    for split, split_ids in (("train", ids[:n_train]), ("val", ids[n_train:])):
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        parts_json = {i: objects_per_image[i] for i in split_ids}
        (root / "ImageSets" / "Parts" / f"{split}.txt").write_text(json.dumps(parts_json, indent=1) + "\n")
    return root
