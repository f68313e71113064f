"""PASCAL-Context multi-task: semantic segmentation, human parts, saliency, surface normals, edges.

Expected layout (the multi-task PASCAL-Context copy of Maninis et al.'s ASTMT, used by BMTAS and most
dense multi-task papers; ``ID`` like ``2008_000002``)::

    root/JPEGImages/ID.jpg                 RGB image
    root/pascal-context/ID.mat             key 'LabelMap': [H, W] PASCAL-Context 459-class ids, 0 = unlabelled
                                           (pascal-context/trainval/ID.mat, as unpacked from the archive, also works)
    root/human_parts/ID.mat                key 'anno': the PASCAL-Part struct anno.objects(k).{class, class_ind,
                                           mask, parts(j).{part_name, mask}}; needed for images with people only
    root/normals_distill/ID.png            RGB, normal = pixel / 255 * 2 - 1
    root/sal_distill/ID.png                grayscale, salient where > 127
    root/ImageSets/Context/{train,val}.txt image ids, one per line (4998 / 5105)
    root/ImageSets/Parts/{train,val}.txt   which images have human part annotations: the archive's JSON
                                           {ID: [class_ind of each object, -1 for tiny ones]} (class 15 =
                                           person), or a plain list of the ids that have people

Tasks and targets (all on the image grid; 255 = ignore):

- ``semseg`` ``[H, W]`` int64, 21 classes: background + the 20 PASCAL VOC classes (``VOC_CLASS_NAMES``),
  mapped from the 459-class ``LabelMap`` by :data:`CONTEXT_TO_VOC` (the VOC classes' PASCAL-Context
  ids; ``diningtable`` is Context's ``table``). Every other Context class is background; unlabelled
  pixels (0) are ignored.
- ``human_parts`` ``[H, W]`` int64, 7 classes (``HUMAN_PART_NAMES``): background, head, torso, upper
  arm, lower arm (with hand), upper leg, lower leg (with foot), grouped from the PASCAL-Part person
  parts by :data:`PERSON_PART_CLASSES`. Images without people are ignored entirely; the pixels of a
  person that has no part annotation are ignored too (they are neither background nor a known part).
- ``saliency`` ``[1, H, W]`` float32 in {0, 1}.
- ``normals`` ``[3, H, W]`` float32; every pixel of the distilled map is valid unless
  ``normals_valid_context_ids`` restricts them to pixels of the given Context classes (ASTMT keeps
  only classes that also exist in NYUv2, a list not shipped with the data).
- ``edge`` ``[1, H, W]`` float32 in {0, 1}: the boundaries of the 459-class ``LabelMap``, a pixel being
  an edge when its right or lower neighbour has another label (1 pixel wide). Loss: class-balanced
  binary cross-entropy (edges weighted 0.95, the rest 0.05); its metric is that loss (method.md allows
  "odsF or loss"; odsF needs a tolerance-matching benchmark tool).

Splits. ``ImageSets/Context/val.txt`` is the test set of the literature, so it is exposed as ``test``;
``val`` is a seeded ``val_fraction`` (10%) of ``train.txt`` for model selection, ``train`` the rest,
``trainval`` all of ``train.txt``.

Geometry. Training (``train``/``trainval`` by default): random zoom ``s ~ U(0.5, 2)``, random crop or
pad to ``output_size`` (512x512), horizontal flip (negating the normals' x), identical for all targets.
Evaluation: images larger than ``output_size`` are shrunk to fit (never the case at 512 for PASCAL,
whose images are at most 500 pixels), then padded bottom/right; padded pixels are ignored by losses and
metrics, so scores are those of the native resolution. Images are normalised with ImageNet statistics.

[why one ~550-line module] one dataset: its layout, five annotation formats, the class mappings and the
splits belong together, and each reader is a short function next to the constants it uses.
"""

from __future__ import annotations

import json

from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dymu.metrics.task_metrics import MeanIoU, NormalAngleError, PixelAccuracy, SaliencyMaxF
from dymu.tasks import HeadFactory, Task

from .transforms import (
    IGNORE_INDEX,
    AtTargetSize,
    JointAugment,
    binary_loss,
    fit_and_pad,
    holdout_split,
    masked_cross_entropy,
    normal_cosine_loss,
    normalize_image,
)

__all__ = [
    "VOC_CLASS_NAMES",
    "CONTEXT_TO_VOC",
    "NUM_CONTEXT_LABELS",
    "HUMAN_PART_NAMES",
    "PERSON_PART_CLASSES",
    "PERSON_CLASS_IND",
    "TASKS_5",
    "TASKS_3",
    "KINDS",
    "EDGE_POSITIVE_WEIGHT",
    "CONFIG",
    "PascalContext",
    "context_to_semseg",
    "context_edges",
    "read_label_map",
    "read_human_parts",
    "read_parts_list",
    "load_pascal_context",
    "pascal_context_tasks",
]

VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CONTEXT_TO_VOC: dict[int, int] = {
    2: 1, 23: 2, 25: 3, 31: 4, 34: 5, 45: 6, 59: 7, 65: 8, 72: 9, 98: 10,
    397: 11, 113: 12, 207: 13, 258: 14, 284: 15, 308: 16, 347: 17, 368: 18, 416: 19, 427: 20,
}  # fmt: skip
"""PASCAL-Context (459-class) id of each VOC class -> its VOC id 1..20."""

NUM_CONTEXT_LABELS = 459

HUMAN_PART_NAMES = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")

PERSON_PART_CLASSES: dict[str, int] = {
    **dict.fromkeys(("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"), 1),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
"""PASCAL-Part person part name -> human-parts class (1..6)."""

PERSON_CLASS_IND = 15
TASKS_5 = ("semseg", "human_parts", "saliency", "normals", "edge")
TASKS_3 = ("semseg", "human_parts", "saliency")
KINDS = {"image": "image", "semseg": "label", "human_parts": "label", "saliency": "binary", "normals": "normal", "edge": "binary"}
"""Sample entry -> augmentation kind (see :mod:`benchmarks.datasets.transforms`)."""
EDGE_POSITIVE_WEIGHT = 0.95

CONFIG: dict[str, Any] = {
    "benchmark": "pascal_context",
    "tasks": list(TASKS_5),
    "tasks_3": list(TASKS_3),
    "input_size": (512, 512),
    "backbone": "DeepLabv3+ with MobileNetV2 (BMTAS variant: 17 inverted-residual blocks + R-ASPP, ImageNet-pretrained), one decoder per task",
    "data": {"val_fraction": 0.1, "seed": 0, "scale_range": (0.5, 2.0), "flip_prob": 0.5},
    # Stage 0: one single-task network per task.
    "stage0": {
        "optimizer": "sgd", "lr": 0.005, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
        "epochs": 40, "batch_size": 8, "lr_schedule": "poly", "poly_power": 0.9,
    },
    "stage1": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 8},
    "stage2": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 8},
    "eval_batch_size": 8,
    "sources": {
        "paper": ["backbone", "tasks", "stage1/stage2 optimizer/lr/steps/lr schedule"],
        "choice": [
            "input_size (the usual 512x512 crop of this benchmark)",
            "stage0 (not stated; an SGD + poly recipe typical of DeepLabv3+/MobileNetV2 on this benchmark)",
            "batch sizes", "val_fraction/seed", "augmentation (random zoom 0.5..2, crop/pad, flip)",
        ],
    },
}  # fmt: skip
"""Training settings a GPU run uses for this benchmark (``sources`` says which come from the paper)."""

_LAYOUT = (
    "expected the multi-task PASCAL-Context layout: root/JPEGImages/ID.jpg, root/pascal-context/ID.mat, "
    "root/human_parts/ID.mat, root/normals_distill/ID.png, root/sal_distill/ID.png, "
    "root/ImageSets/Context/{train,val}.txt, root/ImageSets/Parts/{train,val}.txt"
)

_VOC_LOOKUP = np.zeros(NUM_CONTEXT_LABELS + 1, dtype=np.int64)
_VOC_LOOKUP[0] = IGNORE_INDEX
for _context_id, _voc_id in CONTEXT_TO_VOC.items():
    _VOC_LOOKUP[_context_id] = _voc_id


def context_to_semseg(label_map: np.ndarray) -> np.ndarray:
    """459-class ``LabelMap [H, W]`` -> 21-class ids ``[H, W]`` int64 (0 background, 255 unlabelled)."""
    label_map = np.asarray(label_map, dtype=np.int64)
    if label_map.size and (label_map.min() < 0 or label_map.max() > NUM_CONTEXT_LABELS):
        raise ValueError(f"PASCAL-Context ids must lie in 0..{NUM_CONTEXT_LABELS}, got {label_map.min()}..{label_map.max()}")
    return _VOC_LOOKUP[label_map]


def context_edges(label_map: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32: 1 where the right or lower neighbour carries another label, else 0."""
    label_map = np.asarray(label_map)
    edges = np.zeros(label_map.shape, dtype=bool)
    edges[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edges[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return edges.astype(np.float32)


def _load_mat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:  # truncated or foreign files fail in many ways
        raise ValueError(f"{path} is not a readable .mat file ({type(exc).__name__}: {exc})") from exc


def read_label_map(path: str | Path) -> np.ndarray:
    """The ``LabelMap`` of a PASCAL-Context .mat file, ``[H, W]`` int64."""
    path = Path(path)
    content = _load_mat(path)
    if "LabelMap" not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path} has no key 'LabelMap' (has {keys}); {_LAYOUT}")
    label_map = np.asarray(content["LabelMap"])
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.number):
        raise ValueError(f"{path}: 'LabelMap' must be a numeric [H, W] array, got {label_map.dtype} {label_map.shape}")
    return label_map.astype(np.int64)


def _struct_field(record: Any, name: str, path: Path) -> Any:
    try:
        return record[name]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: the 'anno' struct lacks the field {name!r}; expected PASCAL-Part annotations") from exc


def read_human_parts(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Human-part classes ``[H, W]`` int64 from a PASCAL-Part .mat file.

    Background is 0, parts 1..6 by :data:`PERSON_PART_CLASSES`; the pixels of a person without any part
    annotation are 255 (ignored). If the file has no person with parts, every pixel is 255.
    """
    path = Path(path)
    content = _load_mat(path)
    if "anno" not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path} has no key 'anno' (has {keys}); expected PASCAL-Part annotations")
    anno = np.asarray(content["anno"]).ravel()
    if anno.size != 1:
        raise ValueError(f"{path}: 'anno' must be a single struct, got {anno.size}")
    objects = np.asarray(_struct_field(anno[0], "objects", path)).ravel()
    target = np.zeros(shape, dtype=np.int64)
    unannotated = np.zeros(shape, dtype=bool)
    painted = False
    for obj in objects:
        class_ind = np.asarray(_struct_field(obj, "class_ind", path)).ravel()
        if class_ind.size != 1 or int(class_ind[0]) != PERSON_CLASS_IND:
            continue
        parts = np.asarray(_struct_field(obj, "parts", path))
        if parts.dtype.names is None or parts.size == 0:
            unannotated |= _mask(_struct_field(obj, "mask", path), shape, path)
            continue
        for part in parts.ravel():
            name = str(np.asarray(_struct_field(part, "part_name", path)).ravel()[0])
            if name not in PERSON_PART_CLASSES:
                raise ValueError(f"{path}: unknown person part {name!r}; known parts: {sorted(PERSON_PART_CLASSES)}")
            target[_mask(_struct_field(part, "mask", path), shape, path)] = PERSON_PART_CLASSES[name]
            painted = True
    if not painted:
        return np.full(shape, IGNORE_INDEX, dtype=np.int64)
    # A part mask wins over an unannotated person that overlaps it.
    target[unannotated & (target == 0)] = IGNORE_INDEX
    return target


def _mask(value: Any, shape: tuple[int, int], path: Path) -> np.ndarray:
    mask = np.asarray(value)
    if mask.shape != tuple(shape):
        raise ValueError(f"{path}: a mask has shape {mask.shape}, but the image is {shape[0]}x{shape[1]}")
    return mask.astype(bool)


def read_parts_list(path: str | Path) -> set[str]:
    """Ids of the images that have annotated people, from ``ImageSets/Parts/<split>.txt``.

    Accepts the archive's JSON ``{id: [class_ind, ...]}`` (an image has people when 15 is listed) or a
    plain list of ids (JSON list or one id per line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing file {path} (needed for the human_parts task); {_LAYOUT}")
    text = path.read_text()
    try:
        content = json.loads(text)
    except json.JSONDecodeError:
        content = None
    if isinstance(content, dict):
        people = set()
        for image_id, classes in content.items():
            if not isinstance(classes, list):
                raise ValueError(f"{path}: the entry of {image_id!r} must be a list of class ids, got {classes!r}")
            if PERSON_CLASS_IND in classes:
                people.add(str(image_id))
        return people
    if isinstance(content, list):
        return {str(i) for i in content}
    return {line.strip() for line in text.splitlines() if line.strip()}


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"missing file {path}; {_LAYOUT}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no image id")
    return ids


def _read_rgb(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except Exception as exc:  # unreadable, truncated or foreign files
        raise ValueError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from exc


def _check_shape(array: np.ndarray, shape: tuple[int, int], path: Path) -> None:
    if tuple(array.shape[:2]) != tuple(shape):
        raise ValueError(f"{path} is {array.shape[0]}x{array.shape[1]} but its image is {shape[0]}x{shape[1]}")


class PascalContext(Dataset):
    """PASCAL-Context multi-task samples: ``(image [3, S, S] normalised, {task: target})`` at ``output_size``.

    Built by :func:`load_pascal_context`; ``files`` holds per image the paths it reads, ``has_people``
    the ids with human-part annotations.
    """

    def __init__(
        self,
        files: Sequence[dict[str, Path]],
        tasks: Sequence[str],
        has_people: Collection[str],
        output_size: tuple[int, int],
        augment: JointAugment | None = None,
        normals_valid_context_ids: Collection[int] | None = None,
        source: str = "",
    ):
        if len(files) == 0:
            raise ValueError(f"the PASCAL-Context split {source!r} is empty")
        self.files = list(files)
        self.task_names = tuple(tasks)
        self.has_people = frozenset(has_people)
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.augment = augment
        self.normals_valid_context_ids = None if normals_valid_context_ids is None else np.asarray(sorted(normals_valid_context_ids))
        self.kinds = {name: KINDS[name] for name in ("image", *self.task_names)}
        self.source = source

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` at its native size, before augmentation and padding."""
        files = self.files[index]
        rgb = _read_rgb(files["image"], "RGB")
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        sample = {"image": normalize_image(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255.0)}
        label_map = None
        if "context" in files:
            label_map = read_label_map(files["context"])
            _check_shape(label_map, shape, files["context"])
        if "semseg" in self.task_names:
            try:
                sample["semseg"] = torch.from_numpy(context_to_semseg(label_map))
            except ValueError as exc:
                raise ValueError(f"{files['context']}: {exc}") from exc
        if "edge" in self.task_names:
            sample["edge"] = torch.from_numpy(context_edges(label_map))[None]
        if "human_parts" in self.task_names:
            if files["id"] in self.has_people:
                parts = read_human_parts(files["human_parts"], shape)
            else:
                parts = np.full(shape, IGNORE_INDEX, dtype=np.int64)
            sample["human_parts"] = torch.from_numpy(parts)
        if "saliency" in self.task_names:
            gray = _read_rgb(files["saliency"], "L")
            _check_shape(gray, shape, files["saliency"])
            sample["saliency"] = torch.from_numpy((gray > 127).astype(np.float32))[None]
        if "normals" in self.task_names:
            rgb_normals = _read_rgb(files["normals"], "RGB")
            _check_shape(rgb_normals, shape, files["normals"])
            normals = rgb_normals.astype(np.float32) / 255.0 * 2.0 - 1.0
            if self.normals_valid_context_ids is not None:
                normals = normals * np.isin(label_map, self.normals_valid_context_ids)[..., None]
            sample["normals"] = torch.from_numpy(normals.transpose(2, 0, 1).copy())
        return sample

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        sample = self.read(index)
        if self.augment is not None:
            sample = self.augment(sample)
        else:
            sample = fit_and_pad(sample, self.kinds, self.output_size)
        image = sample.pop("image")
        return image, {name: sample[name] for name in self.task_names}

    def __repr__(self) -> str:
        return f"PascalContext({self.source!r}, n={len(self)}, tasks={self.task_names}, augment={self.augment})"


def _folder_listing(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise ValueError(f"missing folder {folder}; {_LAYOUT}")
    return {entry.name for entry in folder.iterdir()}


def load_pascal_context(
    root: str | Path,
    split: str,
    tasks: Sequence[str] = TASKS_5,
    *,
    output_size: tuple[int, int] = (512, 512),
    augment: bool | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.5, 2.0),
    normals_valid_context_ids: Collection[int] | None = None,
) -> PascalContext:
    """Load one split of multi-task PASCAL-Context for ``tasks`` (a subset of :data:`TASKS_5`).

    Args:
        root: the folder holding ``JPEGImages/``, ``pascal-context/``, ... (see the module docstring).
        split: ``train`` (``Context/train.txt`` minus validation), ``val`` (a seeded ``val_fraction`` of
            ``train.txt``), ``trainval`` (all of ``train.txt``) or ``test`` (``Context/val.txt``).
        tasks: which targets to produce; only their files are needed.
        output_size: ``(H, W)`` of every sample.
        augment: random zoom in ``scale_range``, crop/pad, flip; default on for ``train``/``trainval``.
        normals_valid_context_ids: keep normals only on pixels of these Context classes.

    Every file the split needs is checked to exist now; a missing one raises ``ValueError`` naming it.
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be 'train', 'val', 'trainval' or 'test', got {split!r}")
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS_5]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names among {TASKS_5}, got {tasks}")
    root = Path(root)
    source = "val" if split == "test" else "train"
    ids = _read_ids(root / "ImageSets" / "Context" / f"{source}.txt")
    if split in ("train", "val"):
        kept, held_out = holdout_split(len(ids), val_fraction, seed)
        ids = [ids[i] for i in (kept if split == "train" else held_out)]

    has_people: set[str] = set()
    if "human_parts" in tasks:
        has_people = read_parts_list(root / "ImageSets" / "Parts" / f"{source}.txt")

    context_dir = root / "pascal-context"
    if (context_dir / "trainval").is_dir():
        context_dir = context_dir / "trainval"
    needs_context = "semseg" in tasks or "edge" in tasks or ("normals" in tasks and normals_valid_context_ids is not None)
    folders = {"image": (root / "JPEGImages", ".jpg")}
    if needs_context:
        folders["context"] = (context_dir, ".mat")
    if "human_parts" in tasks:
        folders["human_parts"] = (root / "human_parts", ".mat")
    if "normals" in tasks:
        folders["normals"] = (root / "normals_distill", ".png")
    if "saliency" in tasks:
        folders["saliency"] = (root / "sal_distill", ".png")

    listings = {key: _folder_listing(folder) for key, (folder, _) in folders.items()}
    files, missing = [], []
    for image_id in ids:
        entry: dict[str, Any] = {"id": image_id}
        for key, (folder, suffix) in folders.items():
            name = image_id + suffix
            entry[key] = folder / name
            # Images without people need no part file.
            required = key != "human_parts" or image_id in has_people
            if required and name not in listings[key]:
                missing.append(folder / name)
        files.append(entry)
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"missing file {shown}{more}; {_LAYOUT}")

    if augment is None:
        augment = split in ("train", "trainval")
    kinds = {name: KINDS[name] for name in ("image", *tasks)}
    transform = JointAugment(kinds, output_size=output_size, scale_range=scale_range, flip_prob=0.5) if augment else None
    return PascalContext(
        files,
        tasks,
        has_people,
        output_size,
        augment=transform,
        normals_valid_context_ids=normals_valid_context_ids,
        source=f"{root} [{split}]",
    )


def pascal_context_tasks(head: Callable[[int], HeadFactory], tasks: Sequence[str] = TASKS_5) -> list[Task]:
    """Task specs for ``tasks`` (default the 5-task set; :data:`TASKS_3` for the 3-task one).

    ``head(num_outputs)`` returns a task's head factory. Predictions may be on a coarser grid than the
    targets: losses and metrics upsample them bilinearly.

    - ``semseg``: ``head(21)``, cross-entropy; ``mIoU`` (primary) and ``pixel_acc``.
    - ``human_parts``: ``head(7)``, cross-entropy (zero with a gradient for batches without people);
      ``mIoU`` (primary).
    - ``saliency``: ``head(1)`` logits, binary cross-entropy; ``maxF`` (primary).
    - ``normals``: ``head(3)``, ``1 - cos``; ``mean_angle`` in degrees (primary, lower is better).
    - ``edge``: ``head(1)`` logits, class-balanced binary cross-entropy; the loss is the primary metric.

    Targets are declared (class tasks ``n_classes`` with ``ignore_index=255``, the others
    ``target_dtype="float"``), so :func:`dymu.checks.check_batch` validates them.
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS_5]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names among {TASKS_5}, got {tasks}")
    specs = {
        "semseg": lambda: Task(
            "semseg",
            head=head(len(VOC_CLASS_NAMES)),
            loss=masked_cross_entropy,
            metrics={
                "mIoU": AtTargetSize(MeanIoU(len(VOC_CLASS_NAMES), ignore_index=IGNORE_INDEX)),
                "pixel_acc": AtTargetSize(PixelAccuracy(ignore_index=IGNORE_INDEX)),
            },
            primary="mIoU",
            higher_is_better=True,
            n_classes=len(VOC_CLASS_NAMES),
            ignore_index=IGNORE_INDEX,
        ),
        "human_parts": lambda: Task(
            "human_parts",
            head=head(len(HUMAN_PART_NAMES)),
            loss=masked_cross_entropy,
            metrics={"mIoU": AtTargetSize(MeanIoU(len(HUMAN_PART_NAMES), ignore_index=IGNORE_INDEX))},
            primary="mIoU",
            higher_is_better=True,
            n_classes=len(HUMAN_PART_NAMES),
            ignore_index=IGNORE_INDEX,
        ),
        "saliency": lambda: Task(
            "saliency",
            head=head(1),
            loss=binary_loss,
            metrics={"maxF": AtTargetSize(SaliencyMaxF(ignore_index=IGNORE_INDEX))},
            primary="maxF",
            higher_is_better=True,
            target_dtype="float",
        ),
        "normals": lambda: Task(
            "normals",
            head=head(3),
            loss=normal_cosine_loss,
            metrics={"mean_angle": AtTargetSize(NormalAngleError("mean"))},
            primary="mean_angle",
            higher_is_better=False,
            target_dtype="float",
        ),
        "edge": lambda: Task(
            "edge",
            head=head(1),
            loss=partial(binary_loss, positive_weight=EDGE_POSITIVE_WEIGHT),
            primary="loss",
            higher_is_better=False,
            target_dtype="float",
        ),
    }
    return [specs[name]() for name in tasks]
