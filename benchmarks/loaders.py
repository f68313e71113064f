"""The slices of a benchmark every method of a run sees: shuffled training batches, and fixed prefixes of the
validation and test splits (the same examples for every method).

>>> batches = FirstBatches([1, 2, 3, 4], 2)
>>> list(batches), list(batches), len(batches)      # re-iterable, always the same prefix
([1, 2], [1, 2], 2)
>>> covered_examples(1000, 250, 3000), covered_examples(None, 250, 3000), covered_examples(900, 250, 500)
(1000, 3000, 500)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from dymu.data.datasets import Benchmark, TensorLoader

from .config import RunConfig

__all__ = ["FirstBatches", "covered_examples", "run_loaders", "n_test_examples", "n_val_examples"]


class FirstBatches:
    """The first ``n_batches`` batches of a loader, re-iterable (a fixed prefix of an unshuffled split)."""

    def __init__(self, loader: Iterable, n_batches: int):
        self.loader, self.n_batches = loader, n_batches

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader):
            if i >= self.n_batches:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.n_batches, len(self.loader))


def covered_examples(wanted: int | None, batch_size: int, available: int) -> int:
    """How many examples the first ``ceil(wanted / batch_size)`` batches hold (all ``available`` when
    ``wanted`` is None or reaches them)."""
    if wanted is None or wanted >= available:
        return available
    return min(available, math.ceil(wanted / batch_size) * batch_size)


def run_loaders(bench: Benchmark, config: RunConfig, seed: int) -> tuple[TensorLoader, Iterable, Iterable]:
    """``(train, val, test)``: training batches shuffled by ``seed``, and the configured prefixes of the
    validation and test splits."""
    train = TensorLoader(bench.train, config.batch_size, shuffle=True, seed=seed, drop_last=True)
    val: Iterable = TensorLoader(bench.val, config.eval_batch_size)
    if config.val_examples < len(bench.val):
        val = FirstBatches(val, max(1, math.ceil(config.val_examples / config.eval_batch_size)))
    test: Iterable = TensorLoader(bench.test, config.eval_batch_size)
    if config.test_examples is not None and config.test_examples < len(bench.test):
        test = FirstBatches(test, max(1, math.ceil(config.test_examples / config.eval_batch_size)))
    return train, val, test


def n_test_examples(bench: Benchmark, config: RunConfig) -> int:
    """Test examples every method is evaluated on."""
    return covered_examples(config.test_examples, config.eval_batch_size, len(bench.test))


def n_val_examples(bench: Benchmark, config: RunConfig) -> int:
    """Validation examples every method selects its models on."""
    return covered_examples(config.val_examples, config.eval_batch_size, len(bench.val))
