"""Tests of rbp.data: digits, IDX (MNIST/Fashion-MNIST) and CIFAR-10 loaders.

The real MNIST and Fashion-MNIST files are used only when RBP_DATA_DIR points
at a folder holding them; everything else runs on small synthetic files.
No test touches the network or the user's cache directory.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbp import data
from rbp.data import DATASETS, Dataset, load, parse_idx, read_cifar_batch, read_idx, resolve_data_dir
from rbp.errors import ConfigError, DataError, RBPError

# Captured before any test changes the environment.
REAL_ROOT = os.environ.get("RBP_DATA_DIR", "")

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
HYPO = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the caller's RBP_DATA_DIR or cache, or reaches the network."""
    monkeypatch.delenv("RBP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(data, "_open_url", no_network)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def synthetic_idx_files(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    """Gzipped IDX files with the canonical names, tiny but well formed."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images), mtime=0)
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels), mtime=0)
    return out


def accept_files(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """Make the loader treat ``files`` as the published ones for ``name``."""
    table = {f: (hashlib.sha256(b).hexdigest(), len(b)) for f, b in files.items()}
    monkeypatch.setitem(data._IDX_FILES, name, table)


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        (folder / fname).write_bytes(content)


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def cifar_pickle(images: np.ndarray, labels, protocol: int = 2) -> bytes:
    """A batch as the real files hold it: a dict with bytes keys."""
    return pickle.dumps(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": labels,
            b"data": images,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        },
        protocol=protocol,
    )


def py2_cifar_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """The byte stream Python 2's cPickle (protocol 2) wrote for the real batches.

    Python 2 strings are SHORT_BINSTRING/BINSTRING opcodes and the array is
    rebuilt through numpy.core.multiarray._reconstruct, numpy.ndarray and
    numpy.dtype, exactly the globals the published files use.
    """

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"M" + struct.pack("<H", v)

    n = images.shape[0]
    out = b"\x80\x02}("
    out += s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + i(n) + i(3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + i(0) + b"tb"
    out += b"\x89" + s(images.tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    out += s(b"batch_label") + s(b"training batch 1 of 5")
    return out + b"u."


def write_cifar(root: Path, n: int = 20) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_batch(n, seed=k)
        (folder / name).write_bytes(cifar_pickle(images, labels))
        batches[name] = (images, labels)
    return batches


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > evil-ran.txt",))


# --------------------------------------------------------------------------
# names and the Dataset container
# --------------------------------------------------------------------------


def test_dataset_names():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


@pytest.mark.parametrize("bad", ["imagenet", "", 3, None])
def test_unknown_name_is_config_error(bad):
    with pytest.raises(ConfigError, match="valid names: digits, mnist, fashion-mnist, cifar10"):
        load(bad)


def test_dataset_is_frozen_and_flat_gives_views():
    ds = load("digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"
    flat = ds.flat()
    assert flat.x_train.shape == (1500, 64) and flat.x_test.shape == (297, 64)
    assert flat.input_shape == (64,) and flat.input_dim == 64 == ds.input_dim
    assert flat.x_train.data_ptr() == ds.x_train.data_ptr()  # a view, not a copy
    assert flat.flat().input_shape == (64,)
    assert flat.y_train is ds.y_train
    assert "n_train=1500" in repr(ds) and len(repr(ds)) < 200


def test_dataset_rejects_inconsistent_fields():
    x = torch.zeros(3, 1, 2, 2)
    y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DataError):
        Dataset("toy", x, y, x, y[:2], (1, 2, 2), 10)
    with pytest.raises(DataError):
        Dataset("toy", x, y, x, y, (4,), 10)


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


def test_digits():
    from sklearn.datasets import load_digits

    ds = load("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.shape == (1500, 1, 8, 8) and ds.x_test.shape == (297, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= 0 and x.max() <= 1
    assert ds.x_train.max() == 1.0
    assert set(ds.y_train.tolist()) == set(range(10)) and set(ds.y_test.tolist()) <= set(range(10))
    (digest,) = ds.checksums.values()
    assert len(digest) == 64

    # Deterministic: a second load gives the same split.
    again = load("digits")
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)

    # The split is the documented permutation of the full set.
    ref = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    full = torch.from_numpy(ref.images.astype(np.float32) / 16)
    assert torch.equal(ds.x_train[:, 0], full[order[:1500]])
    assert torch.equal(ds.x_test[:, 0], full[order[1500:]])
    assert ds.y_test.tolist() == ref.target[order[1500:]].tolist()


def test_digits_needs_no_folder():
    assert resolve_data_dir("digits") is None
    assert load("digits", data_dir="/nonexistent", download=False).n_train == 1500


# --------------------------------------------------------------------------
# the real MNIST / Fashion-MNIST files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_dataset(name, monkeypatch):
    if not REAL_ROOT:
        pytest.skip("RBP_DATA_DIR is not set; point it at a folder with mnist/ and fashion-mnist/")
    folder = Path(REAL_ROOT) / name
    if not all((folder / f).is_file() for f in IDX_NAMES):
        pytest.skip(f"{folder} does not hold the four {name} IDX .gz files")
    monkeypatch.setenv("RBP_DATA_DIR", REAL_ROOT)

    assert resolve_data_dir(name) == folder
    ds = load(name, download=False)
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_test.min() == 0.0 and ds.x_test.max() == 1.0
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    assert torch.equal(torch.unique(ds.y_train), torch.arange(10))
    assert torch.equal(torch.bincount(ds.y_test, minlength=10).bool(), torch.ones(10, dtype=torch.bool))
    assert sorted(ds.checksums) == sorted(IDX_NAMES)
    assert ds.checksums == {f: h for f, (h, _) in data._IDX_FILES[name].items()}
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        published = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
        assert ds.checksums == published

    # Parsed once per process: the second load hits the in-memory cache.
    hits = data._verified_idx.cache_info().hits
    again = load(name, download=False)
    assert data._verified_idx.cache_info().hits >= hits + 4
    assert torch.equal(again.y_test, ds.y_test)
    again.x_test.mul_(0)  # callers may modify their tensors without harming the cache
    assert load(name, download=False).x_test.max() == 1.0


CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# The widely published per-channel statistics of the CIFAR-10 training images on the [0, 1] scale.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_SD = (0.2470, 0.2435, 0.2616)


def test_real_cifar10(monkeypatch):
    """The real CIFAR-10 batches: layout, the canonical split, and per-channel statistics."""
    folder = Path(REAL_ROOT) / "cifar10" / "cifar-10-batches-py" if REAL_ROOT else None
    if folder is None or not all((folder / f).is_file() for f in CIFAR_FILES):
        pytest.skip("RBP_DATA_DIR does not hold cifar10/cifar-10-batches-py/ (data_batch_1..5, test_batch)")
    monkeypatch.setenv("RBP_DATA_DIR", REAL_ROOT)

    ds = load("cifar10", download=False)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.y_train.shape == (50000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    # the loader's scale is [0, 1] (pixel / 255, no mean subtraction): every value a multiple of 1/255
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10

    # against the raw batches, parsed here: batch order, R, G, B planes, row-major 32 x 32
    raw = [read_cifar_batch(folder / f) for f in CIFAR_FILES]
    images = np.concatenate([d for d, _ in raw[:5]]).reshape(-1, 3, 32, 32)
    unit = np.float32(255)       # the loader's scale: float32 pixel / 255, no mean subtraction
    assert torch.equal(ds.x_train, torch.from_numpy(images.astype(np.float32) / unit))
    assert ds.y_train.tolist() == np.concatenate([lab for _, lab in raw[:5]]).tolist()
    assert torch.equal(ds.x_test, torch.from_numpy(raw[5][0].reshape(-1, 3, 32, 32).astype(np.float32) / unit))
    assert ds.y_test.tolist() == raw[5][1].tolist()

    # per-channel mean and sd on the [0, 1] scale, exactly, from each channel's histogram of pixel values
    levels = np.arange(256) / 255
    for c, x in enumerate(ds.x_train[:5000].double().transpose(0, 1)):
        hist = np.bincount(images[:, c].ravel(), minlength=256)
        mean = (hist * levels).sum() / hist.sum()
        sd = math.sqrt((hist * (levels - mean) ** 2).sum() / hist.sum())
        assert abs(mean - CIFAR_MEAN[c]) < 1e-4 and abs(sd - CIFAR_SD[c]) < 1e-4, (c, mean, sd)
        assert abs(float(x.mean()) - mean) < 0.01 and abs(float(x.std()) - sd) < 0.01   # a tenth of the set

    sums = folder.parent / "SHA256SUMS"
    if sums.is_file():
        published = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
        assert ds.checksums == {k: v for k, v in published.items() if k in ds.checksums}
        assert len(ds.checksums) == 6


def _real_copy(tmp_path: Path, corrupt: str) -> Path:
    """Mirror the real MNIST folder; symlinks for the intact files, a copy of ``corrupt``."""
    src = Path(REAL_ROOT) / "mnist"
    if not REAL_ROOT or not all((src / f).is_file() for f in IDX_NAMES):
        pytest.skip("RBP_DATA_DIR does not hold mnist/; corrupting real files needs them")
    dst = tmp_path / "root" / "mnist"
    dst.mkdir(parents=True)
    for f in IDX_NAMES:
        if f == corrupt:
            (dst / f).write_bytes((src / f).read_bytes())
        else:
            (dst / f).symlink_to(src / f)
    return dst


def test_real_file_with_flipped_byte(tmp_path):
    dst = _real_copy(tmp_path, "train-images-idx3-ubyte.gz")
    raw = bytearray((dst / "train-images-idx3-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (dst / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load("mnist", data_dir=tmp_path / "root", download=False)


def test_real_file_truncated(tmp_path):
    dst = _real_copy(tmp_path, "t10k-labels-idx1-ubyte.gz")
    path = dst / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: wrong size \(1000 bytes, expected 4542"):
        load("mnist", data_dir=tmp_path / "root", download=False)


# --------------------------------------------------------------------------
# IDX loading on synthetic files
# --------------------------------------------------------------------------


def test_synthetic_idx_dataset_loads(tmp_path, monkeypatch):
    files = synthetic_idx_files()
    accept_files(monkeypatch, "fashion-mnist", files)
    write_files(tmp_path / "fashion-mnist", files)
    ds = load("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4, 5]
    images = parse_idx(gzip.decompress(files["train-images-idx3-ubyte.gz"]))
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert ds.checksums["t10k-labels-idx1-ubyte.gz"] == hashlib.sha256(files["t10k-labels-idx1-ubyte.gz"]).hexdigest()


def test_non_canonical_file_is_rejected_by_checksum(tmp_path):
    # Well-formed IDX files that are not the published ones must not be used.
    write_files(tmp_path / "mnist", synthetic_idx_files())
    with pytest.raises(DataError, match=r"mnist/train-images-idx3-ubyte\.gz: wrong size .*SHA-256 is"):
        load("mnist", data_dir=tmp_path, download=False)


def test_idx_structure_errors_name_the_file(tmp_path, monkeypatch):
    files = synthetic_idx_files()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.array([1, 2, 3, 12], dtype=np.uint8)))
    accept_files(monkeypatch, "mnist", files)
    write_files(tmp_path / "mnist", files)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 12 out of range"):
        load("mnist", data_dir=tmp_path, download=False)

    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.array([1, 2, 3], dtype=np.uint8)))
    accept_files(monkeypatch, "mnist", files)
    write_files(tmp_path / "mnist", files)
    with pytest.raises(DataError, match=r"3 labels for 4 images"):
        load("mnist", data_dir=tmp_path, download=False)


def test_parse_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    assert np.array_equal(parse_idx(idx_bytes(a, 0x0C)), a)
    f = np.linspace(-1, 1, 7)
    assert np.array_equal(parse_idx(idx_bytes(f, 0x0E)), f)
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))

    with pytest.raises(DataError, match="bad magic number 0x08030000"):
        parse_idx(b"\x08\x03\x00\x00" + good[4:], "x.idx")
    with pytest.raises(DataError, match="x.idx: truncated IDX header"):
        parse_idx(good[:9], "x.idx")
    with pytest.raises(DataError, match="payload truncated: 13 bytes, expected 18"):
        parse_idx(good[:-5])
    with pytest.raises(DataError, match="trailing data"):
        parse_idx(good + b"\x00")
    with pytest.raises(DataError, match="only 2 bytes"):
        parse_idx(b"\x00\x00")

    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="broken.gz: corrupt gzip data"):
        read_idx(path)
    path.write_bytes(good)  # uncompressed files are read as they are
    assert read_idx(path).shape == (2, 3)


# --------------------------------------------------------------------------
# search order, missing data and downloads
# --------------------------------------------------------------------------


def test_search_order(tmp_path, monkeypatch):
    (tmp_path / "a" / "mnist").mkdir(parents=True)
    (tmp_path / "b" / "mnist").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("RBP_DATA_DIR", str(tmp_path / "b"))
    cache = tmp_path / "xdg-cache" / "rbp"
    assert data.search_roots(tmp_path / "a") == [tmp_path / "a", tmp_path / "b", cache]
    assert resolve_data_dir("mnist", tmp_path / "a") == tmp_path / "a" / "mnist"
    assert resolve_data_dir("mnist", tmp_path / "empty") == tmp_path / "b" / "mnist"
    # Nobody has it: the explicit directory, else the cache, is the download target.
    assert resolve_data_dir("cifar10", tmp_path / "empty") == tmp_path / "empty" / "cifar10"
    assert resolve_data_dir("cifar10") == cache / "cifar10"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.search_roots()[-1] == Path.home() / ".cache" / "rbp"


def test_missing_with_download_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("RBP_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        load("mnist", data_dir=tmp_path / "mine", download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert f"Put the files in {tmp_path / 'mine' / 'mnist'}/" in msg
    for root in (tmp_path / "mine", tmp_path / "env", tmp_path / "xdg-cache" / "rbp"):
        assert str(root) in msg
    assert "download is disabled" in msg


def test_missing_without_network(tmp_path):
    # The autouse fixture makes every download raise URLError.
    with pytest.raises(DataError) as err:
        load("fashion-mnist")
    msg = str(err.value)
    target = tmp_path / "xdg-cache" / "rbp" / "fashion-mnist"
    assert f"Put the files in {target}/" in msg
    assert "download failed" in msg and "network disabled in tests" in msg
    assert "\n" not in msg
    assert not target.exists()  # no empty folder or partial file is left behind


def test_download_uses_next_mirror_and_renames(tmp_path, monkeypatch):
    files = synthetic_idx_files(seed=1)
    accept_files(monkeypatch, "mnist", files)
    tried = []

    def fake_open(url):
        tried.append(url)
        if "googleapis" in url:
            raise urllib.error.URLError("mirror down")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data, "_open_url", fake_open)
    ds = load("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(IDX_NAMES)
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in tried[1::2])
    assert len(tried) == 8


def test_download_with_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    files = synthetic_idx_files()
    accept_files(monkeypatch, "mnist", files)
    write_files(tmp_path / "mnist", {f: b for f, b in files.items() if f != "train-labels-idx1-ubyte.gz"})
    monkeypatch.setattr(data, "_open_url", lambda url: io.BytesIO(b"not the file"))
    with pytest.raises(DataError) as err:
        load("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "missing train-labels-idx1-ubyte.gz;" in msg and "SHA256 mismatch" in msg and "download deleted" in msg
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(set(IDX_NAMES) - {"train-labels-idx1-ubyte.gz"})


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------


def test_cifar_fake_dataset_loads(tmp_path):
    batches = write_cifar(tmp_path)
    ds = load("cifar10", data_dir=tmp_path, download=False)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert 0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1
    train_images = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == train_labels and ds.y_test.tolist() == batches["test_batch"][1]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    n, c, h, w = 57, 2, 5, 30
    assert ds.x_train[n, c, h, w] == np.float32(train_images[n, c * 1024 + h * 32 + w]) / np.float32(255)
    assert torch.equal(ds.x_test.reshape(20, -1), torch.from_numpy(batches["test_batch"][0] / np.float32(255)))
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    assert ds.checksums == {
        f"cifar-10-batches-py/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
    }
    assert ds.flat().x_train.shape == (100, 3072)


def test_cifar_python2_format(tmp_path):
    images, labels = cifar_batch(300, seed=3)
    path = tmp_path / "batch"
    path.write_bytes(py2_cifar_pickle(images, labels))
    got_images, got_labels = read_cifar_batch(path)
    assert np.array_equal(got_images, images) and got_labels.tolist() == labels
    for protocol in (2, 3, 4):
        path.write_bytes(cifar_pickle(images, labels, protocol))
        got_images, got_labels = read_cifar_batch(path)
        assert np.array_equal(got_images, images) and got_labels.tolist() == labels


@pytest.mark.parametrize(
    "payload, why",
    [
        (lambda: pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2), "refusing to load global posix.system"),
        (lambda: pickle.dumps(Evil(), protocol=0), "refusing to load global posix.system"),
        (lambda: b"cbuiltins\neval\n(S'1+1'\ntR.", "refusing to load global builtins.eval"),
        (lambda: b"\x80\x02cnumpy\nndarray\nK\x05\x85R.", "not callable"),
        (lambda: b"\x80\x02cnumpy\ndtype\nU\x01OK\x00K\x01\x87R.", "dtype b'O' not allowed"),
        (lambda: b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.", "latin-1"),
        (lambda: pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=5),
         "refusing to load global numpy._core.numeric._frombuffer"),
        # BUILD on an allowed global: an attempt to patch it for later loads.
        (lambda: b"\x80\x02cnumpy\ndtype\nN}X\x07\x00\x00\x00__doc__K\x01s\x86b.", "read-only"),
        (lambda: b"\x80\x02cnumpy\nndarray\n}U\x01xK\x01sb.", "__dict__"),
        (lambda: b"\x80\x02cnumpy\ndtype\n)\x81.", "NEWOBJ class argument"),
    ],
)
def test_cifar_refuses_unsafe_pickles(tmp_path, monkeypatch, payload, why):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload())
    with pytest.raises(DataError, match=r"data_batch_1: not a valid CIFAR-10 batch") as err:
        read_cifar_batch(path)
    assert why in str(err.value)
    assert not (tmp_path / "evil-ran.txt").exists()
    # Whatever the pickle tried, a genuine batch still loads afterwards.
    images, labels = cifar_batch(2, seed=0)
    path.write_bytes(py2_cifar_pickle(images, labels))
    assert np.array_equal(read_cifar_batch(path)[0], images)


def test_cifar_refuses_unsafe_pickle_via_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_3: not a valid CIFAR-10 batch"):
        load("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "evil-ran.txt").exists()


@pytest.mark.parametrize(
    "batch, why",
    [
        ([1, 2], "expected a pickled dict, got list"),
        ({b"labels": [1]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]}, "must be a uint8 array"),
        ({b"data": b"\x00" * 3072, b"labels": [1]}, "got bytes"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "'labels' must be a list of ints"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2, 3]}, "3 labels for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([1, 2])}, "'labels' must be a list"),
    ],
)
def test_cifar_malformed_batches(tmp_path, batch, why):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="test_batch") as err:
        read_cifar_batch(path)
    assert why in str(err.value)


def _fake_archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_cifar(src)
    archive = tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"boom"))
    return archive


def test_cifar_archive_is_verified_and_unpacked(tmp_path, monkeypatch):
    archive = _fake_archive(tmp_path)
    monkeypatch.setattr(data, "_CIFAR_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = load("cifar10", data_dir=tmp_path / "root", download=False)
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    unpacked = archive.parent / "cifar-10-batches-py"
    assert (unpacked / "test_batch").is_file()
    assert not (tmp_path / "root" / "escaped.txt").exists() and not (archive.parent / "escaped.txt").exists()
    assert not list(unpacked.glob(".*.part"))


def test_cifar_archive_with_wrong_md5(tmp_path):
    archive = _fake_archive(tmp_path)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: checksum mismatch: MD5 is"):
        load("cifar10", data_dir=tmp_path / "root", download=False)
    assert not (archive.parent / "cifar-10-batches-py").exists()


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as err:
        load("cifar10", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py/data_batch_1" in msg
    assert f"Put the files in {tmp_path / 'cifar10'}/" in msg
    with pytest.raises(DataError, match="download failed .*network disabled in tests"):
        load("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "cifar10").exists()


# --------------------------------------------------------------------------
# property tests: arbitrary bytes never escape as anything but DataError
# --------------------------------------------------------------------------

idx_headers = st.builds(
    lambda code, dims: bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims),
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
    st.lists(st.integers(0, 6), min_size=0, max_size=4),
)


@HYPO
@given(raw=st.one_of(st.binary(max_size=200), st.tuples(idx_headers, st.binary(max_size=300)).map(b"".join)))
def test_parse_idx_random_bytes(raw):
    try:
        out = parse_idx(raw)
    except DataError:
        return
    assert isinstance(out, np.ndarray) and out.ndim == raw[3]


@HYPO
@given(raw=st.binary(max_size=300), compress=st.booleans())
def test_idx_file_random_bytes_via_load(tmp_path, raw, compress):
    folder = tmp_path / "hypo" / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    content = gzip.compress(raw) if compress else raw
    for f in IDX_NAMES:
        (folder / f).write_bytes(content)
    try:
        read_idx(folder / "train-images-idx3-ubyte.gz")
    except DataError:
        pass
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load("mnist", data_dir=tmp_path / "hypo", download=False)


pickle_values = st.recursive(
    st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.text(max_size=5), st.booleans()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@HYPO
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        pickle_values.map(lambda v: pickle.dumps(v, protocol=2)),
        st.tuples(st.binary(max_size=40), st.binary(max_size=40)).map(
            lambda ab: ab[0] + py2_cifar_pickle(np.zeros((1, 3072), np.uint8), [3])[: len(ab[1]) * 40] + ab[1]
        ),
    )
)
def test_cifar_batch_random_bytes(tmp_path, raw):
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    try:
        images, labels = read_cifar_batch(path)
    except DataError as exc:
        assert isinstance(exc, RBPError) and "data_batch_1" in str(exc)
        return
    assert images.dtype == np.uint8 and images.shape[1] == 3072 and len(labels) == len(images)
