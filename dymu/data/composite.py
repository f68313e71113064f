"""Two-item 36x36 canvases built from 28x28 sources, in vectorised numpy, deterministically from a seed.

Placement (Lin et al. 2019, the Multi-Fashion protocol that Pareto HyperNetworks evaluates on): the top-left
item sits at canvas offset ``(dy, dx)`` with ``dy, dx`` drawn uniformly from ``0..4``; the bottom-right item at
``(8 - dy', 8 - dx')`` with ``dy', dx'`` drawn likewise; no resizing; where the items overlap the canvas holds
the pixel-wise max. Canvases are kept as 8-bit values (``uint8``, the sources' own resolution); divide by 255
for pixels in ``[0, 1]`` (the max commutes with that scaling, so nothing is lost).

Benchmarks:

* ``multifashion``: two Fashion-MNIST items of different classes. Every source image is the top-left item of
  exactly two canvases; its bottom-right partner is drawn uniformly among the images of other classes of the
  same pool. Targets ``top_left`` and ``bottom_right`` (class ids 0..9).
* ``fashion_digits``: a Fashion-MNIST item top-left and an MNIST digit bottom-right. Every Fashion-MNIST image
  is used once; digits are reused, cycling through a fresh permutation of the split's digits so each is used
  about equally often. Targets ``fashion`` (0..9), ``fashion_group`` (0 tops, 1 footwear, 2 other), ``digit``
  (0..9), ``parity`` (0 even, 1 odd), ``segment`` (per pixel: 0 background, 1 item, 2 digit; a pixel is lit
  when its 8-bit canvas value is at least :data:`LIT_LEVEL`, i.e. above 0.1; a lit pixel belongs to the source
  that gives the max, the item on a tie) and ``clean`` (the item alone at its placed position, 8-bit).

Splits: validation holds ``val_fraction`` of the train sources, stratified by class and drawn from ``seed``,
and validation canvases draw partners (multifashion) or digits (fashion_digits) only from validation sources,
so no source image is shared between train and validation. The test split uses only test sources. Digits
are split once into train/test (a fixed stratified 80/20 split, the same for every seed); the train digits
are then split into train/validation like the fashion items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CANVAS_SIZE",
    "ITEM_SIZE",
    "MAX_SHIFT",
    "LIT_LEVEL",
    "FASHION_GROUPS",
    "FASHION_GROUP_OF_CLASS",
    "TEST_DIGIT_FRACTION",
    "CompositeArrays",
    "stratified_holdout",
    "paste",
    "build_multifashion",
    "build_fashion_digits",
    "digit_splits",
]

CANVAS_SIZE = 36
ITEM_SIZE = 28
MAX_SHIFT = 4  # the largest shift of an item away from its corner, in pixels, along each axis
LIT_LEVEL = 26  # 8-bit: value / 255 > 0.1
FASHION_GROUPS: tuple[str, ...] = ("tops", "footwear", "other")
# Fashion-MNIST class -> coarse group: T-shirt/top, Pullover, Coat, Shirt are tops; Sandal, Sneaker, Ankle boot
# footwear; Trouser, Dress, Bag other.
FASHION_GROUP_OF_CLASS = np.array([0, 2, 0, 2, 0, 1, 0, 1, 2, 1], dtype=np.int64)
TEST_DIGIT_FRACTION = 0.2
_FIXED_DIGIT_SPLIT_SEED = 0

# Separate random streams, so e.g. the test canvases do not change when the validation fraction does.
_STREAM = {"split": 1, "train": 2, "val": 3, "test": 4, "digit_split": 5, "digit_val": 6}
_BENCH = {"multifashion": 11, "fashion_digits": 12}


@dataclass
class CompositeArrays:
    """One split of a composite benchmark, as numpy arrays.

    Attributes:
        images: ``uint8 [M, 36, 36]`` canvases (8-bit; divide by 255 for ``[0, 1]``).
        targets: task name -> ``int64 [M]`` class ids, or ``uint8 [M, 36, 36]`` for ``segment`` (class ids)
            and ``clean`` (8-bit pixels).
        provenance: where each canvas came from: ``*_source`` ``int64 [M]`` indices into the source arrays,
            ``*_offset`` ``int64 [M, 2]`` the ``(row, col)`` canvas position of each item's top-left pixel.
    """

    images: np.ndarray
    targets: dict[str, np.ndarray]
    provenance: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def checksum(self) -> str:
        """sha256 over names, dtypes, shapes and bytes of the images, targets and provenance, in a fixed order."""
        digest = hashlib.sha256()
        items = [("images", self.images)] + sorted(self.targets.items()) + sorted(self.provenance.items())
        for name, array in items:
            array = np.ascontiguousarray(array)
            digest.update(f"{name}:{array.dtype.str}{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def _rng(seed: int, bench: str, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _BENCH[bench], _STREAM[stream]]))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..n-1`` into ``(kept, held_out)``, sorted, with exactly ``round(fraction * n)`` held out.

    Held-out items are spread evenly over a class-sorted random order, so every class gives about
    ``fraction`` of its items (within one).
    """
    n = len(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a holdout fraction must lie in [0, 1), got {fraction}")
    n_out = int(round(fraction * n))
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]
    position = np.arange(n)
    # Position p is held out when floor((p + 1) * n_out / n) steps up: exactly n_out evenly spaced positions.
    picked = ((position + 1) * n_out) // n - (position * n_out) // n == 1
    return np.sort(order[~picked]), np.sort(order[picked])


def paste(canvas: np.ndarray, sources: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> None:
    """In place: ``canvas[i] = max(canvas[i], sources[index[i]] placed at offsets[i])``.

    Shapes: ``canvas [M, S, S]``, ``sources [N, s, s]``, ``index int [M]``, ``offsets int [M, 2]`` (row, col).
    Works offset by offset (at most 25 distinct ones), so it stays vectorised.
    """
    side = sources.shape[1]
    key = offsets[:, 0] * canvas.shape[1] + offsets[:, 1]
    for k in np.unique(key):
        rows = np.flatnonzero(key == k)
        dy, dx = divmod(int(k), canvas.shape[1])
        window = (rows, slice(dy, dy + side), slice(dx, dx + side))
        canvas[window] = np.maximum(canvas[window], sources[index[rows]])


def _offsets(rng: np.random.Generator, n: int, corner: str) -> np.ndarray:
    shift = rng.integers(0, MAX_SHIFT + 1, size=(n, 2))
    return shift if corner == "top_left" else (CANVAS_SIZE - ITEM_SIZE) - shift


def _partners(labels: np.ndarray, anchors: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each anchor, a pool index drawn uniformly among pool items whose class differs from the anchor's."""
    if len(np.unique(labels[pool])) < 2:
        raise ValueError(
            f"a pool of {len(pool)} images holds a single class, so no partner of a different class exists; use a larger limit"
        )
    partners = pool[rng.integers(0, len(pool), size=len(anchors))]
    clash = np.flatnonzero(labels[partners] == labels[anchors])
    # Rejection sampling: each round redraws only the clashes, about a tenth of them, so few rounds are needed.
    while clash.size:
        partners[clash] = pool[rng.integers(0, len(pool), size=clash.size)]
        clash = clash[labels[partners[clash]] == labels[anchors[clash]]]
    return partners


def _multifashion_split(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> CompositeArrays:
    top_left = rng.permutation(np.repeat(pool, 2))
    bottom_right = _partners(labels, top_left, pool, rng)
    tl_offset, br_offset = _offsets(rng, len(top_left), "top_left"), _offsets(rng, len(top_left), "bottom_right")
    canvas = np.zeros((len(top_left), CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    paste(canvas, images, top_left, tl_offset)
    paste(canvas, images, bottom_right, br_offset)
    return CompositeArrays(
        images=canvas,
        targets={"top_left": labels[top_left], "bottom_right": labels[bottom_right]},
        provenance={
            "top_left_source": top_left,
            "bottom_right_source": bottom_right,
            "top_left_offset": tl_offset,
            "bottom_right_offset": br_offset,
        },
    )


def _check_source(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (ITEM_SIZE, ITEM_SIZE):
        raise ValueError(f"{what}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{what}: expected labels [{len(images)}], got {labels.shape}")
    if len(images) == 0:
        raise ValueError(f"{what}: no images")


def build_multifashion(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    val_fraction: float = 0.1,
) -> dict[str, CompositeArrays]:
    """Build the ``multifashion`` splits from Fashion-MNIST ``(images uint8 [N, 28, 28], labels int64 [N])``.

    Returns ``{"train", "val", "test"}``; with the full data 108,000 / 12,000 / 20,000 canvases.
    """
    seed = _check_seed(seed)
    _check_source(*train, "multifashion train source")
    _check_source(*test, "multifashion test source")
    kept, held = stratified_holdout(train[1], val_fraction, _rng(seed, "multifashion", "split"))
    splits = {
        "train": _multifashion_split(*train, kept, _rng(seed, "multifashion", "train")),
        "test": _multifashion_split(*test, np.arange(len(test[0])), _rng(seed, "multifashion", "test")),
    }
    if len(held):
        splits["val"] = _multifashion_split(*train, held, _rng(seed, "multifashion", "val"))
    else:
        splits["val"] = _empty_split(list(splits["train"].targets), splits["train"].provenance)
    return {name: splits[name] for name in ("train", "val", "test")}


def _empty_split(task_names: list[str], like: Mapping[str, np.ndarray]) -> CompositeArrays:
    images = np.zeros((0, CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    targets = {name: (images.copy() if name in ("segment", "clean") else np.zeros(0, dtype=np.int64)) for name in task_names}
    return CompositeArrays(images, targets, {k: np.zeros((0, *v.shape[1:]), dtype=v.dtype) for k, v in like.items()})


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    rounds = -(-n // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:n]


def _fashion_digits_split(
    fashion: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
    fashion_pool: np.ndarray,
    digit_pool: np.ndarray,
    rng: np.random.Generator,
) -> CompositeArrays:
    (items, item_labels), (digit_images, digit_labels) = fashion, digits
    item_index = rng.permutation(fashion_pool)
    digit_index = _cycle(digit_pool, len(item_index), rng)
    tl_offset, br_offset = _offsets(rng, len(item_index), "top_left"), _offsets(rng, len(item_index), "bottom_right")
    shape = (len(item_index), CANVAS_SIZE, CANVAS_SIZE)
    clean, digit_layer = np.zeros(shape, dtype=np.uint8), np.zeros(shape, dtype=np.uint8)
    paste(clean, items, item_index, tl_offset)
    paste(digit_layer, digit_images, digit_index, br_offset)
    canvas = np.maximum(clean, digit_layer)
    lit = canvas >= LIT_LEVEL
    segment = lit.astype(np.uint8)
    segment[lit & (digit_layer > clean)] = 2
    fashion_class, digit_class = item_labels[item_index], digit_labels[digit_index]
    return CompositeArrays(
        images=canvas,
        targets={
            "fashion": fashion_class,
            "fashion_group": FASHION_GROUP_OF_CLASS[fashion_class],
            "digit": digit_class,
            "parity": digit_class % 2,
            "segment": segment,
            "clean": clean,
        },
        provenance={
            "fashion_source": item_index,
            "digit_source": digit_index,
            "fashion_offset": tl_offset,
            "digit_offset": br_offset,
        },
    )


def digit_splits(digit_labels: np.ndarray, seed: int = 0, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Indices of the digits each split draws from: a fixed stratified 80/20 train/test split (independent of
    ``seed``), then ``val_fraction`` of the train digits held out for validation (drawn from ``seed``)."""
    seed = _check_seed(seed)
    fixed = _rng(_FIXED_DIGIT_SPLIT_SEED, "fashion_digits", "digit_split")
    trainval, test = stratified_holdout(digit_labels, TEST_DIGIT_FRACTION, fixed)
    kept, held = stratified_holdout(digit_labels[trainval], val_fraction, _rng(seed, "fashion_digits", "digit_val"))
    return {"train": trainval[kept], "val": trainval[held], "test": test}


def build_fashion_digits(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    val_fraction: float = 0.1,
) -> dict[str, CompositeArrays]:
    """Build the ``fashion_digits`` splits from Fashion-MNIST train/test and MNIST digits (each ``(uint8
    [N, 28, 28], int64 [N])``). Returns ``{"train", "val", "test"}``; with the full data 54,000 / 6,000 / 10,000
    canvases over 7,200 / 800 / 2,000 digits."""
    seed = _check_seed(seed)
    _check_source(*train, "fashion_digits train source")
    _check_source(*test, "fashion_digits test source")
    _check_source(*digits, "fashion_digits digit source")
    kept, held = stratified_holdout(train[1], val_fraction, _rng(seed, "fashion_digits", "split"))
    digit_pools = digit_splits(digits[1], seed, val_fraction)
    fashion_pools = {"train": kept, "val": held, "test": np.arange(len(test[0]))}
    splits = {}
    for name in ("train", "val", "test"):
        if len(fashion_pools[name]) == 0 and name == "val":
            splits[name] = _empty_split(list(splits["train"].targets), splits["train"].provenance)
            continue
        if len(digit_pools[name]) == 0:
            raise ValueError(f"fashion_digits: no digit left for the {name} split; {len(digits[1])} digits are too few")
        source = test if name == "test" else train
        rng = _rng(seed, "fashion_digits", name)
        splits[name] = _fashion_digits_split(source, digits, fashion_pools[name], digit_pools[name], rng)
    return splits
