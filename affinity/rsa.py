"""Task affinity by representation similarity analysis (RSA) of single-task networks.

For each task ``i`` and layer ``l`` the frozen single-task network's features of the same ``K`` images
give a ``K x K`` similarity matrix ``S_l(i)`` between the images. Two tasks whose networks arrange the
images alike at a layer are similar there, whatever the units of their features.

Two measures, chosen with ``measure=``:

``"pearson"`` (default, the paper's recipe):
    ``S_l(i)`` = Pearson correlation between the images' flattened features (each image's feature
    vector centred and scaled to unit norm, then all pairwise dot products). Then
    ``D_l(i, j) = ||triu(S_l(i)) - triu(S_l(j))||_2`` over the strict upper triangle (the diagonal is
    all ones and the lower triangle repeats the upper one, so neither carries information). Each row
    of ``D_l`` is divided by its maximum, which puts it in ``[0, 1]`` with the task farthest from ``i``
    at 1 (min-max scaling was not chosen: it would also force the nearest task to affinity 1, however
    far it is). ``A_l = 1 - D_l``. Row normalisation makes ``A_l`` asymmetric; the controller needs a
    symmetric affinity, so ``A_l`` is replaced by ``(A_l + A_l^T) / 2``. The diagonal is exactly 1.
    An image whose feature vector is constant has no correlation with anything: its row and column of
    ``S_l`` are 0. Note that with only two tasks each row's maximum is the other task, so their
    affinity is 0 at every layer unless their matrices are identical (then 1).

``"cka"``:
    linear centred kernel alignment, used directly as the affinity:
    ``A_l(i, j) = <G_i, G_j>_F / (||G_i||_F ||G_j||_F)`` with ``G = X_c X_c^T`` the ``K x K`` Gram
    matrix of the features ``X`` centred over the images. It is itself an RSA (a cosine similarity
    between the tasks' centred similarity matrices), already symmetric and in ``[0, 1]``, so it is
    not row-normalised: its values keep their absolute meaning across layers and benchmarks. A task
    whose features do not vary over the images has affinity 0 with the others.

Both measures are invariant to scaling a task's features by a positive constant and to permuting
(or, for CKA, rotating) its channels. ``Aff`` is the mean of ``A_l`` over the layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["AffinityResult", "rsa_affinity", "similarity_matrix", "MEASURES"]

MEASURES = ("pearson", "cka")
Measure = Literal["pearson", "cka"]
_FORMAT = "affinity.rsa/1"
_TOLERANCE = 1e-6

FeatureArray = Union[Tensor, np.ndarray]
TaskFeatures = Union[Mapping[Hashable, FeatureArray], Sequence[FeatureArray]]


@dataclass(frozen=True, eq=False)
class AffinityResult:
    """Per-layer and mean task affinities.

    Attributes:
        tasks: the ``N`` task names, the order of every axis of size ``N``.
        per_layer: ``[L, N, N]`` symmetric affinities in ``[0, 1]`` with unit diagonal, one per layer.
        measure: how they were computed (``"pearson"``, ``"cka"``, or a user's label).
        layers: the ``L`` layer names (the keys of the features), default ``0 .. L-1``.
        n_samples: ``K``, the number of images the affinity was measured on, when known.
        matrix: ``[N, N]`` the mean over layers (``Aff``), diagonal exactly 1 (derived, read-only).

    Raises:
        ValueError: shapes that disagree with ``tasks``, values outside ``[0, 1]`` or not finite, an
            asymmetric matrix, a diagonal that is not 1.
    """

    tasks: tuple[str, ...]
    per_layer: np.ndarray
    measure: str
    layers: tuple = ()
    n_samples: int | None = None
    matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        if len(tasks) < 2 or any(not isinstance(t, str) or not t for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be at least 2 distinct non-empty names, got {tasks!r}")
        per_layer = np.array(self.per_layer, dtype=np.float64)
        n = len(tasks)
        if per_layer.ndim != 3 or per_layer.shape[1:] != (n, n) or per_layer.shape[0] < 1:
            raise ValueError(f"per_layer must have shape [L >= 1, {n}, {n}], got {list(per_layer.shape)}")
        if not np.isfinite(per_layer).all():
            raise ValueError("per_layer holds NaN or inf")
        if per_layer.min() < -_TOLERANCE or per_layer.max() > 1 + _TOLERANCE:
            raise ValueError(f"affinities must lie in [0, 1], got [{per_layer.min():.4g}, {per_layer.max():.4g}]")
        if not np.allclose(per_layer, per_layer.transpose(0, 2, 1), atol=_TOLERANCE, rtol=0):
            raise ValueError("per-layer affinities must be symmetric")
        diagonal = per_layer[:, np.arange(n), np.arange(n)]
        if not np.allclose(diagonal, 1.0, atol=_TOLERANCE, rtol=0):
            raise ValueError("a task's affinity with itself must be 1")
        per_layer = np.clip((per_layer + per_layer.transpose(0, 2, 1)) / 2, 0.0, 1.0)
        per_layer[:, np.arange(n), np.arange(n)] = 1.0
        layers = tuple(self.layers) if self.layers else tuple(range(per_layer.shape[0]))
        if len(layers) != per_layer.shape[0]:
            raise ValueError(f"{len(layers)} layer names for {per_layer.shape[0]} layers")
        if self.n_samples is not None and (not isinstance(self.n_samples, int) or self.n_samples < 1):
            raise ValueError(f"n_samples must be a positive int or None, got {self.n_samples!r}")
        matrix = per_layer.mean(axis=0)
        np.fill_diagonal(matrix, 1.0)
        per_layer.setflags(write=False)
        matrix.setflags(write=False)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "per_layer", per_layer)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "matrix", matrix)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_layers(self) -> int:
        return self.per_layer.shape[0]

    def value(self, a: str, b: str, layer: int | None = None) -> float:
        """The affinity of tasks ``a`` and ``b``: the mean, or at layer index ``layer``."""
        i, j = self._index(a), self._index(b)
        if layer is None:
            return float(self.matrix[i, j])
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an index in [0, {self.n_layers - 1}], got {layer!r}")
        return float(self.per_layer[layer, i, j])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``matrix`` is included for readers and checked on the way back."""
        return {
            "format": _FORMAT,
            "tasks": list(self.tasks),
            "measure": self.measure,
            "layers": [layer if isinstance(layer, (int, str)) else str(layer) for layer in self.layers],
            "n_samples": self.n_samples,
            "per_layer": self.per_layer.tolist(),
            "matrix": self.matrix.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AffinityResult:
        if not isinstance(data, Mapping):
            raise ValueError(f"an affinity dict must be a mapping, got {type(data).__name__}")
        missing = [key for key in ("tasks", "per_layer", "measure") if key not in data]
        if missing:
            raise ValueError(f"an affinity dict needs the keys {missing}")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"unknown affinity format {data.get('format')!r}, expected {_FORMAT!r}")
        result = cls(
            tasks=tuple(data["tasks"]),
            per_layer=np.asarray(data["per_layer"], dtype=np.float64),
            measure=str(data["measure"]),
            layers=tuple(data.get("layers") or ()),
            n_samples=data.get("n_samples"),
        )
        if "matrix" in data and not np.allclose(
            np.asarray(data["matrix"], dtype=np.float64), result.matrix, atol=_TOLERANCE, rtol=0
        ):
            raise ValueError("the stored 'matrix' is not the mean of 'per_layer'")
        return result

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> AffinityResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path`` (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> AffinityResult:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no affinity file at {path}")
        try:
            return cls.from_json(path.read_text())
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a valid affinity file: {error}") from error

    def _index(self, task: str) -> int:
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; the tasks are {list(self.tasks)}")
        return self.tasks.index(task)

    def __repr__(self) -> str:
        return (
            f"AffinityResult(tasks={list(self.tasks)!r}, measure={self.measure!r}, "
            f"layers={self.n_layers}, n_samples={self.n_samples})"
        )


def similarity_matrix(features: FeatureArray, measure: Measure = "pearson") -> Tensor:
    """The ``K x K`` similarity between images that ``measure`` compares across tasks.

    Args:
        features: ``[K, ...]``, one row per image (flattened).
        measure: ``"pearson"``: the correlation matrix of the images' feature vectors (a constant
            vector correlates 0 with everything, itself included); ``"cka"``: the Gram matrix of the
            features centred over the images.

    Returns:
        ``[K, K]`` float64 on the features' device.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")
    x = torch.as_tensor(features).reshape(len(features), -1).to(torch.float64)
    if measure == "pearson":
        centred = x - x.mean(dim=1, keepdim=True)
        norms = centred.norm(dim=1, keepdim=True)
        # a row that is constant up to rounding has no direction: zero it rather than amplify noise
        constant = norms <= 1e-10 * x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        unit = torch.where(constant, torch.zeros_like(centred), centred / norms.clamp_min(1e-300))
        return unit @ unit.T
    centred = x - x.mean(dim=0, keepdim=True)
    return centred @ centred.T


def rsa_affinity(features: Mapping[str, TaskFeatures], measure: Measure = "pearson") -> AffinityResult:
    """Task affinity from the tasks' features of the same images (see the module docstring).

    Args:
        features: ``features[task][layer]``: a tensor (or numpy array) ``[K, ...]`` of task ``task``'s
            network's output at ``layer`` for the ``K`` images, image ``k`` being the same for every
            task. ``features[task]`` is a mapping layer name -> tensor (every task with the same
            layer names; the first task's order is kept) or a sequence of tensors, layer 0 first,
            such as :func:`affinity.features.collect_features` returns.
        measure: ``"pearson"`` (default) or ``"cka"``.

    Returns:
        an :class:`AffinityResult` with ``per_layer`` ``[L, N, N]`` and ``matrix`` ``[N, N]``.

    Raises:
        ValueError: fewer than 2 tasks, layers that differ between tasks, ``K`` that differs between
            tasks or layers, ``K < 3``, NaN or inf features, an unknown measure.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")
    tasks, layers, table = _check_features(features, measure)
    n = len(tasks)
    per_layer = np.empty((len(layers), n, n))
    for index, layer in enumerate(layers):
        sims = [similarity_matrix(table[task][layer], measure) for task in tasks]
        per_layer[index] = _pearson_rsa(sims) if measure == "pearson" else _linear_cka(sims)
    k = len(next(iter(table[tasks[0]].values())))
    return AffinityResult(tasks=tasks, per_layer=per_layer, measure=measure, layers=layers, n_samples=k)


def _pearson_rsa(sims: list[Tensor]) -> np.ndarray:
    k = sims[0].shape[0]
    rows, cols = torch.triu_indices(k, k, offset=1, device=sims[0].device)
    vectors = torch.stack([s[rows, cols] for s in sims])  # [N, K(K-1)/2]
    distance = torch.cdist(vectors, vectors).cpu().numpy()
    distance = np.maximum(distance, 0.0)
    np.fill_diagonal(distance, 0.0)
    row_max = distance.max(axis=1, keepdims=True)
    normalised = np.divide(distance, row_max, out=np.zeros_like(distance), where=row_max > 0)
    affinity = 1.0 - normalised
    affinity = (affinity + affinity.T) / 2
    np.fill_diagonal(affinity, 1.0)
    return affinity


def _linear_cka(grams: list[Tensor]) -> np.ndarray:
    flat = torch.stack([g.reshape(-1) for g in grams])  # [N, K*K]
    norms = flat.norm(dim=1)
    dots = (flat @ flat.T).cpu().numpy()
    norms = norms.cpu().numpy()
    scale = np.outer(norms, norms)
    affinity = np.divide(dots, scale, out=np.zeros_like(dots), where=scale > 0)
    affinity = np.clip((affinity + affinity.T) / 2, 0.0, 1.0)
    np.fill_diagonal(affinity, 1.0)
    return affinity


def _check_features(
    features: Mapping[str, TaskFeatures], measure: str
) -> tuple[tuple[str, ...], tuple, dict[str, dict[Hashable, Tensor]]]:
    if not isinstance(features, Mapping):
        raise ValueError(f"features must be a mapping task -> layers, got {type(features).__name__}")
    tasks = tuple(features)
    if len(tasks) < 2:
        raise ValueError(f"RSA affinity needs at least 2 tasks, got {len(tasks)}: {list(tasks)}")
    for task in tasks:
        if not isinstance(task, str) or not task:
            raise ValueError(f"task names must be non-empty strings, got {task!r}")
    table: dict[str, dict[Hashable, Tensor]] = {}
    for task in tasks:
        per_task = features[task]
        if isinstance(per_task, Mapping):
            table[task] = dict(per_task)
        elif isinstance(per_task, Sequence) and not isinstance(per_task, (str, bytes)):
            table[task] = dict(enumerate(per_task))
        else:
            raise ValueError(
                f"features[{task!r}] must be a mapping layer -> tensor or a list of tensors, "
                f"got {type(per_task).__name__}"
            )
        if not table[task]:
            raise ValueError(f"features[{task!r}] has no layers")
    layers = tuple(table[tasks[0]])
    for task in tasks[1:]:
        missing = [layer for layer in layers if layer not in table[task]]
        extra = [layer for layer in table[task] if layer not in table[tasks[0]]]
        if missing or extra:
            raise ValueError(
                f"tasks have different layers: {task!r} has {len(table[task])} layers and "
                f"{tasks[0]!r} has {len(layers)}; missing in {task!r}: {missing}, "
                f"missing in {tasks[0]!r}: {extra}"
            )
    k_seen: int | None = None
    for task in tasks:
        for layer in layers:
            value = table[task][layer]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"features[{task!r}][{layer!r}] is a {type(value).__name__}, expected a tensor [K, ...]"
                )
            if value.dim() < 1:
                raise ValueError(f"features[{task!r}][{layer!r}] is a scalar, expected a tensor [K, ...]")
            if value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"features[{task!r}][{layer!r}] has dtype {value.dtype}, expected real numbers")
            k = value.shape[0]
            if k_seen is None:
                k_seen = k
            elif k != k_seen:
                raise ValueError(
                    f"K differs: features[{task!r}][{layer!r}] has {k} samples, "
                    f"features[{tasks[0]!r}][{layers[0]!r}] has {k_seen}; every task and layer needs the same images"
                )
            if k < 3:
                raise ValueError(f"RSA needs K >= 3 images, got K = {k} in features[{task!r}][{layer!r}]")
            width = math.prod(value.shape[1:])
            if measure == "pearson" and width < 2:
                raise ValueError(
                    f"features[{task!r}][{layer!r}] has {width} value(s) per image; Pearson correlation "
                    "between images needs at least 2"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"features[{task!r}][{layer!r}] holds NaN or inf")
            table[task][layer] = value
    return tasks, layers, table
