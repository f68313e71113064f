"""CIFAR-100 as 20 five-way tasks, one per superclass (the split of Rosenbaum et al.'s routing networks).

Expected layout: the "python version" archive (``cifar-100-python.tar.gz``) unpacked::

    root/cifar-100-python/train   pickle: {b'data': uint8 [50000, 3072], b'fine_labels': [50000 ints],
                                           b'coarse_labels': [...], b'filenames': [...], b'batch_label': ...}
    root/cifar-100-python/test    the same, 10000 images
    root/cifar-100-python/meta    pickle: {b'fine_label_names': [100 bytes], b'coarse_label_names': [20 bytes]}

``root`` may also be the ``cifar-100-python`` folder itself. Each row of ``data`` holds the red, green
and blue 32x32 planes one after the other. The pickles date from Python 2: they are read with
``encoding="bytes"`` by an unpickler that only admits numpy arrays, so a tampered file cannot run
code. ``verify_md5=True`` checks the files against the checksums of the official release.

Tasks. Task ``t`` is superclass ``t`` (its name the coarse label name made an identifier, e.g.
``aquatic_mammals``, ``large_man_made_outdoor_things``); its 5 fine classes are relabelled ``0..4`` in
increasing order of fine label id (:data:`TASK_CLASSES`). Every image belongs to exactly one task; its
target is ``-1`` (ignored) for the 19 others, so a batch of ``B`` images yields ``{task: [B] int64}``
with about ``B / 20`` valid entries per task. Losses average over the valid entries (zero, with a
gradient, when a batch has none); the ``acc`` metric counts valid entries only.

Splits. ``train`` is the train pickle minus a validation subset, ``val`` that subset: a seeded 10%
of every superclass (``val_fraction``, ``seed``; 250 images per task, 5000 in all for the real set),
``trainval`` the whole train pickle (final training), ``test`` the test pickle (reporting only).
Augmentation (``train``/``trainval`` by default) follows cifar10-fast: random 32x32 crop of the image
reflect-padded by 4 pixels, random horizontal flip; images are normalised with the CIFAR-100 channel
means and standard deviations.
"""

from __future__ import annotations

import hashlib
import io
import pickle

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from dymu.metrics.task_metrics import Accuracy
from dymu.tasks import HeadFactory, Task

from .transforms import holdout_split, masked_cross_entropy, normalize_image

__all__ = [
    "COARSE_LABEL_NAMES",
    "FINE_LABEL_NAMES",
    "FINE_TO_COARSE",
    "TASK_NAMES",
    "TASK_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_MD5",
    "CONFIG",
    "IGNORE",
    "Cifar100Tasks",
    "task_targets",
    "load_cifar100",
    "cifar100_tasks",
]

IGNORE = -1
"""Target of an image for every task but its own."""

FINE_LABEL_NAMES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
"""The 100 fine label names, as in ``meta`` (label id = position)."""

COARSE_LABEL_NAMES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip
"""The 20 superclass names, as in ``meta``."""

FINE_TO_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip
"""Superclass of every fine label (the fixed hierarchy of CIFAR-100); the loader checks the files agree."""

TASK_NAMES: tuple[str, ...] = tuple(name.replace("-", "_") for name in COARSE_LABEL_NAMES)
TASK_CLASSES: tuple[tuple[int, ...], ...] = tuple(
    tuple(f for f in range(100) if FINE_TO_COARSE[f] == c) for c in range(20)
)
"""``TASK_CLASSES[t][k]``: the fine label that task ``t`` calls class ``k`` (increasing fine ids)."""

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
"""MD5 of the files of the official ``cifar-100-python.tar.gz`` (the values torchvision checks)."""

CONFIG: dict[str, Any] = {
    "benchmark": "cifar100",
    "tasks": list(TASK_NAMES),
    "input_size": (32, 32),
    "backbone": "cifar10-fast ResNet-9 (prep 64, layer1 128 + residual, layer2 256, layer3 512 + residual, global max pool)",
    "data": {"val_fraction": 0.1, "seed": 0, "augment": "4 px reflect-pad random crop + horizontal flip"},
    # Stage 0: one single-task network per task, 5 outputs each.
    "stage0": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "epochs": 75, "batch_size": 128},
    # Stages 1 (edge hypernet) and 2 (weight hypernet).
    "stage1": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 128},
    "stage2": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 128},
    "eval_batch_size": 500,
    "sources": {
        "paper": ["backbone", "stage0 optimizer/lr/weight_decay/epochs", "stage1/stage2 optimizer/lr/steps/lr schedule"],
        "choice": ["batch sizes (not stated)", "val_fraction/seed", "augmentation (cifar10-fast's)"],
    },
}
"""Training settings a GPU run uses for this benchmark (``sources`` says which come from the paper)."""

_LAYOUT = (
    "expected the CIFAR-100 'python version' layout: root/cifar-100-python/{train,test,meta} "
    "(unpack cifar-100-python.tar.gz into root)"
)
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a pickled numpy array needs and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-100 pickle holds only arrays, lists and strings")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"missing file {path}; {_LAYOUT}")
    try:
        with open(path, "rb") as f:
            content = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # truncated or foreign files fail in many ways; all mean the same here
        raise ValueError(f"{path} is not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, expected a dict with keys b'data', b'fine_labels', ...")
    # The official files use byte keys; copies re-pickled with encoding='latin1' have str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in content.items()}


def _field(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise ValueError(f"{path} lacks the key b'{key}' (has {sorted(content)}); {_LAYOUT}")
    return content[key]


def _names(values: Any, key: str, path: Path) -> tuple[str, ...]:
    try:
        return tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values)
    except TypeError as exc:
        raise ValueError(f"{path}: b'{key}' is not a list of names") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_root(root: str | Path) -> Path:
    root = Path(root)
    if (root / "cifar-100-python").is_dir():
        return root / "cifar-100-python"
    if (root / "meta").exists() or (root / "train").exists() or (root / "test").exists():
        return root
    raise ValueError(f"missing folder {root / 'cifar-100-python'}; {_LAYOUT}")


def _read_meta(folder: Path) -> None:
    path = folder / "meta"
    meta = _read_pickle(path)
    fine = _names(_field(meta, "fine_label_names", path), "fine_label_names", path)
    coarse = _names(_field(meta, "coarse_label_names", path), "coarse_label_names", path)
    if fine != FINE_LABEL_NAMES or coarse != COARSE_LABEL_NAMES:
        raise ValueError(f"{path} names other classes than CIFAR-100's 100 fine / 20 coarse labels; is this CIFAR-10 or a relabelled copy?")


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 3, 32, 32]`` uint8 and fine labels ``[n]`` of one pickle, checked."""
    content = _read_pickle(path)
    data = _field(content, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array [n, 3072] (3 planes of 32x32), got {described}")
    n = data.shape[0]
    labels = {}
    for key in ("fine_labels", "coarse_labels"):
        values = np.asarray(_field(content, key, path))
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: b'{key}' must hold {n} integers (one per image), got {values.dtype} {values.shape}")
        labels[key] = values.astype(np.int64)
    fine, coarse = labels["fine_labels"], labels["coarse_labels"]
    if n and (fine.min() < 0 or fine.max() > 99 or coarse.min() < 0 or coarse.max() > 19):
        raise ValueError(f"{path}: fine labels must lie in 0..99 and coarse labels in 0..19")
    expected = np.asarray(FINE_TO_COARSE)[fine]
    if not np.array_equal(expected, coarse):
        i = int(np.flatnonzero(expected != coarse)[0])
        raise ValueError(
            f"{path}: image {i} has fine label {fine[i]} ({FINE_LABEL_NAMES[fine[i]]}) with coarse label {coarse[i]}, "
            f"but CIFAR-100 puts it in superclass {expected[i]} ({COARSE_LABEL_NAMES[expected[i]]})"
        )
    return data.reshape(n, 3, 32, 32), fine


def task_targets(fine_labels: np.ndarray) -> np.ndarray:
    """``[n, 20]`` int64: the image's class within its own task, ``-1`` for every other task."""
    fine_labels = np.asarray(fine_labels, dtype=np.int64)
    within = np.empty(100, dtype=np.int64)
    for classes in TASK_CLASSES:
        within[list(classes)] = np.arange(len(classes))
    targets = np.full((len(fine_labels), len(TASK_NAMES)), IGNORE, dtype=np.int64)
    rows = np.arange(len(fine_labels))
    targets[rows, np.asarray(FINE_TO_COARSE)[fine_labels]] = within[fine_labels]
    return targets


class Cifar100Tasks(Dataset):
    """CIFAR-100 images with one target per superclass task.

    Item ``i``: ``(image [3, 32, 32] float32 normalised, {task_name: int64 scalar})`` where the image's
    own task holds its class ``0..4`` and every other task ``-1``.

    Attributes: ``images`` uint8 ``[n, 3, 32, 32]``, ``fine_labels`` ``[n]``, ``targets`` ``[n, 20]``,
    ``task_names``, ``augment``.
    """

    def __init__(self, images: np.ndarray, fine_labels: np.ndarray, augment: bool, source: str = ""):
        if len(images) == 0:
            raise ValueError(f"the CIFAR-100 split {source!r} is empty")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.fine_labels = torch.from_numpy(np.asarray(fine_labels, dtype=np.int64))
        self.targets = torch.from_numpy(task_targets(fine_labels))
        self.task_names = TASK_NAMES
        self.augment = bool(augment)
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = normalize_image(self.images[index].float() / 255.0, CIFAR100_MEAN, CIFAR100_STD)
        if self.augment:
            image = _crop_and_flip(image)
        row = self.targets[index]
        return image, {name: row[t] for t, name in enumerate(self.task_names)}

    def __repr__(self) -> str:
        return f"Cifar100Tasks({self.source!r}, n={len(self)}, augment={self.augment})"


def _crop_and_flip(image: Tensor, pad: int = 4) -> Tensor:
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    image = padded[:, top : top + image.shape[1], left : left + image.shape[2]]
    if float(torch.rand(())) < 0.5:
        image = image.flip(-1)
    return image.contiguous()


def load_cifar100(
    root: str | Path,
    split: str,
    *,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    verify_md5: bool = False,
) -> Cifar100Tasks:
    """Load one split of CIFAR-100 as 20 superclass tasks.

    Args:
        root: the folder holding ``cifar-100-python/`` (or that folder itself).
        split: ``train`` (train pickle minus validation), ``val`` (the seeded ``val_fraction`` of every
            superclass), ``trainval`` (the whole train pickle) or ``test`` (the test pickle).
        augment: random crop + flip; default on for ``train`` and ``trainval``.
        val_fraction, seed: the validation split (identical for ``train`` and ``val`` calls with the
            same values).
        verify_md5: check the files against the official release's checksums first.

    Raises ``ValueError`` naming the file when a file is missing, unreadable or not CIFAR-100.
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be 'train', 'val', 'trainval' or 'test', got {split!r}")
    folder = _resolve_root(root)
    source = "test" if split == "test" else "train"
    if verify_md5:
        for name in ("meta", source):
            path = folder / name
            if not path.is_file():
                raise ValueError(f"missing file {path}; {_LAYOUT}")
            digest = _md5(path)
            if digest != CIFAR100_MD5[name]:
                raise ValueError(f"{path}: md5 {digest} differs from the official release's {CIFAR100_MD5[name]}")
    _read_meta(folder)
    images, fine = _read_split(folder / source)
    if split in ("train", "val"):
        kept, held_out = holdout_split(len(fine), val_fraction, seed, groups=np.asarray(FINE_TO_COARSE)[fine])
        chosen = kept if split == "train" else held_out
        images, fine = images[chosen], fine[chosen]
    if augment is None:
        augment = split in ("train", "trainval")
    return Cifar100Tasks(images, fine, augment=augment, source=f"{folder / source} [{split}]")


def cifar100_tasks(head: Callable[[int], HeadFactory]) -> list[Task]:
    """The 20 five-way superclass tasks.

    ``head(5)`` must return the head factory of a task (the backbone decides the head). Loss:
    cross-entropy over the task's own images (``-1`` targets ignored; zero with a gradient when a batch
    has none). Metric ``acc``: accuracy over the task's own images (primary, higher is better).
    Targets are declared (``n_classes=5``, ``ignore_index=-1``), so :func:`dymu.checks.check_batch`
    validates them.
    """
    return [
        Task(
            name,
            head=head(len(TASK_CLASSES[t])),
            loss=partial(masked_cross_entropy, ignore_index=IGNORE),
            metrics={"acc": Accuracy(ignore_index=IGNORE)},
            primary="acc",
            higher_is_better=True,
            n_classes=len(TASK_CLASSES[t]),
            ignore_index=IGNORE,
        )
        for t, name in enumerate(TASK_NAMES)
    ]
