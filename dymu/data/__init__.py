"""Real data for the small benchmarks: Fashion-MNIST and MNIST digits on disk, composed into 36x36 canvases.

* :mod:`dymu.data.sources`: finding and decoding the source files (``$DYMU_DATA``, then standard places), with
  :class:`MissingDataError` / :class:`DataFileError` naming the file and how to get it.
* :mod:`dymu.data.composite`: the ``multifashion`` and ``fashion_digits`` protocols, built in numpy from a seed.
* :mod:`dymu.data.datasets`: torch datasets, a fast tensor-slicing loader, :func:`load_benchmark`.
* :mod:`dymu.data.tasks`: the benchmarks' task specs with heads sized from the backbone output.
* :mod:`dymu.data.synthetic`: small stand-in sources in the real formats, for tests and demos.

Get the sources with ``bash scripts/get_data.sh``.
"""

from .composite import FASHION_GROUPS, LIT_LEVEL, CompositeArrays, build_fashion_digits, build_multifashion
from .datasets import (
    BENCHMARKS,
    Benchmark,
    CompositeDataset,
    TensorLoader,
    build_benchmark,
    load_benchmark,
    load_fashion_digits,
    load_multifashion,
)
from .sources import (
    FASHION_CLASSES,
    DataFileError,
    MissingDataError,
    load_fashion_mnist,
    load_mnist_digits,
    read_idx,
    write_idx,
)
from .synthetic import write_synthetic_sources
from .tasks import ClassificationHead, DenseHead, fashion_digits_tasks, multifashion_tasks

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "ClassificationHead",
    "CompositeArrays",
    "CompositeDataset",
    "DataFileError",
    "DenseHead",
    "FASHION_CLASSES",
    "FASHION_GROUPS",
    "LIT_LEVEL",
    "MissingDataError",
    "TensorLoader",
    "build_benchmark",
    "build_fashion_digits",
    "build_multifashion",
    "fashion_digits_tasks",
    "load_benchmark",
    "load_fashion_digits",
    "load_fashion_mnist",
    "load_mnist_digits",
    "load_multifashion",
    "multifashion_tasks",
    "read_idx",
    "write_idx",
    "write_synthetic_sources",
]
