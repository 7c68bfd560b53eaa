"""Datasets the experiments train on: digits, MNIST, Fashion-MNIST, CIFAR-10.

Everything comes back as a :class:`Dataset` of torch tensors: inputs are
float32 in [0, 1] and in image layout ``(N, C, H, W)``; labels are int64.
:meth:`Dataset.flat` gives the same data with ``(N, C*H*W)`` inputs for MLPs.
torchvision is deliberately not used; the file formats are parsed here.

Sources
-------
``digits``
    the 8x8 digits of the UCI optdigits test set (1797 images, pixel values
    0..16, divided by 16), shipped with rbp (``rbp/bundled/digits.csv.gz``,
    CC BY 4.0; the same file scikit-learn bundles).  The split is fixed: the indices are shuffled with
    ``numpy.random.RandomState(0).permutation(1797)`` (the legacy generator,
    whose stream NumPy keeps stable across versions); the first 1500 are the
    training set, the remaining 297 the test set.  It is not stratified.
``mnist``, ``fashion-mnist``
    The four canonical IDX files, still gzipped, in ``<root>/mnist/`` resp.
    ``<root>/fashion-mnist/``.  Each file is checked against its published
    SHA-256 before it is parsed.
``cifar10``
    The "python version" batches ``data_batch_1`` .. ``data_batch_5`` and
    ``test_batch`` in ``<root>/cifar10/cifar-10-batches-py/``.  When they are
    missing, ``<root>/cifar10/cifar-10-python.tar.gz`` is used (downloaded
    first when allowed), checked against its published MD5 and unpacked.  The
    batches are pickles; they are read with an unpickler that only knows the
    handful of numpy constructors the real files refer to, so a tampered batch
    cannot run code.

Where the files are looked for
------------------------------
The candidate roots are, in order: the ``data_dir`` argument, the environment
variable ``RBP_DATA_DIR``, and the user cache ``$XDG_CACHE_HOME/rbp`` (or
``~/.cache/rbp``).  A dataset is read from the first root that has its folder.
When no root has it and ``download`` is true, it is downloaded into
``data_dir`` if given, else into the cache.  Downloads go to a temporary file
in the target folder, are checksummed and only then renamed into place; a
download with the wrong checksum is deleted.  Every failure (missing, corrupt,
truncated, undownloadable) is a :class:`~rbp.errors.DataError` whose message
is one line naming the file and, for missing data, where to put it.

Parsed files are cached in memory per process, keyed on the file's path,
size and modification time, so loading MNIST repeatedly is cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import re
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .results import atomic_path
from .errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "Dataset",
    "load",
    "resolve_data_dir",
    "search_roots",
    "parse_idx",
    "read_idx",
    "read_cifar_batch",
]

#: Names accepted by :func:`load`.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")

#: Environment variable naming a data root (second in the search order).
ENV_VAR = "RBP_DATA_DIR"

_NUM_CLASSES = 10
_DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20

# --- digits ----------------------------------------------------------------

_DIGITS_SEED = 0
_DIGITS_TRAIN = 1500  # of 1797; the other 297 are the test set

# --- MNIST and Fashion-MNIST -----------------------------------------------

# File name -> (published SHA-256 of the .gz file, its size in bytes).  The
# size only serves to tell "truncated" from "altered" in error messages.
_IDX_FILES: dict[str, dict[str, tuple[str, int]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    },
}

# Base URLs, tried in order for every file.
_IDX_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# IDX type byte -> element type (stored big-endian in the file).
_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# --- CIFAR-10 ----------------------------------------------------------------

_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_SIZE = 170498071
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_EXTRA = ("batches.meta",)  # unpacked alongside, never read
_CIFAR_ROW = 3 * 32 * 32

# Folder of each downloadable dataset under a data root.
_FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10"}


# =============================================================================
# The Dataset container
# =============================================================================


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split held in memory.

    ``x_train``/``x_test`` are float32 tensors in [0, 1] of shape
    ``(N,) + input_shape``; ``y_train``/``y_test`` are int64 class indices in
    ``[0, num_classes)``.  ``checksums`` maps each file that was read to its
    SHA-256 (for digits: a digest of the arrays), for provenance records.

    Equality is identity (comparing tensors element-wise is not what ``==``
    should do here).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    checksums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "checksums", dict(self.checksums))
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if tuple(x.shape[1:]) != self.input_shape:
                raise DataError(
                    f"{self.name}: {split} inputs have shape {tuple(x.shape)}, "
                    f"expected (N,) + {self.input_shape}"
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(
                    f"{self.name}: {split} has {x.shape[0]} inputs but labels of shape {tuple(y.shape)}"
                )

    @property
    def input_dim(self) -> int:
        """Number of input features, ``C*H*W``."""
        return math.prod(self.input_shape)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def flat(self) -> "Dataset":
        """The same dataset with inputs reshaped to ``(N, C*H*W)``.

        The new tensors are views of the old ones (no copy);
        ``input_shape`` becomes ``(C*H*W,)``.  Flattening twice is harmless.
        """
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(self.n_train, self.input_dim),
            x_test=self.x_test.reshape(self.n_test, self.input_dim),
            input_shape=(self.input_dim,),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={self.n_train}, n_test={self.n_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


# =============================================================================
# Public entry points
# =============================================================================


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    ``data_dir`` is searched first (see the module docstring for the search
    order).  With ``download=False`` nothing is fetched from the network and
    missing files are an error right away.

    Raises :class:`~rbp.errors.ConfigError` for an unknown name and
    :class:`~rbp.errors.DataError` when the data is missing, corrupt or cannot
    be downloaded.
    """
    key = _canonical_name(name)
    if key == "digits":
        return _load_digits()
    if key in _IDX_FILES:
        return _load_idx_dataset(key, data_dir, download)
    return _load_cifar10(data_dir, download)


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data roots in search order: ``data_dir``, ``$RBP_DATA_DIR``, cache."""
    roots: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_VAR, "")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(_cache_root())
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder :func:`load` reads dataset ``name`` from (or would download to).

    That is ``<root>/<folder>`` for the first root in :func:`search_roots`
    that has the folder, else the download target (``data_dir`` if given,
    otherwise the cache).  ``None`` for ``digits``, which needs no files.
    """
    key = _canonical_name(name)
    if key == "digits":
        return None
    folder, _, _ = _locate(key, data_dir)
    return folder


# =============================================================================
# Locating and downloading
# =============================================================================


def _canonical_name(name: object) -> str:
    if isinstance(name, str):
        key = name.strip().lower().replace("_", "-")
        if key in DATASETS:
            return key
    raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rbp"


def _locate(key: str, data_dir) -> tuple[Path, bool, list[Path]]:
    """Return (dataset folder, whether it exists, roots searched)."""
    roots = search_roots(data_dir)
    sub = _FOLDERS[key]
    for root in roots:
        if (root / sub).is_dir():
            return root / sub, True, roots
    target = roots[0] if data_dir is not None and str(data_dir) != "" else _cache_root()
    return target / sub, False, roots


def _open_url(url: str):
    """Open ``url`` for reading; a separate function so tests can replace it."""
    return urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S)  # noqa: S310 (fixed https/http URLs)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _DigestMismatch(Exception):
    """A download whose digest is wrong (the message is the digest it had)."""


def _download(urls: tuple[str, ...], dest: Path, algorithm: str, expected: str) -> None:
    """Fetch ``dest`` from the first of ``urls`` that delivers the right bytes.

    The data is streamed into a temporary file next to ``dest``, hashed on the
    way, and renamed onto ``dest`` only when the digest matches.  Raises
    DataError (one line, all attempts listed) when no URL works.
    """
    failures: list[str] = []
    if not os.access(dest.parent, os.W_OK):
        raise DataError(f"cannot write to {dest.parent}: permission denied")
    for url in urls:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        try:
            with atomic_path(dest, suffix=".part") as tmp:     # renamed onto dest only if the digest matches
                with open(tmp, "wb") as out, _open_url(url) as response:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                got = digest.hexdigest()
                if got != expected:
                    raise _DigestMismatch(got)
        except _DigestMismatch as e:
            failures.append(
                f"{url}: {algorithm.upper()} mismatch (expected {expected}, got {e}); download deleted"
            )
            continue
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
            failures.append(f"{url}: {_describe_error(exc)}")
            continue
        return
    raise DataError(f"could not download {dest.name}: " + "; ".join(failures))


def _missing_message(key: str, folder: Path, missing: list[str], roots: list[Path], why: str) -> str:
    searched = ", ".join(str(r) for r in roots)
    return (
        f"{key}: missing {', '.join(missing)}; {why}. Put the files in {folder}/ "
        f"(searched data roots: {searched}; pass data_dir or set {ENV_VAR} to use another root)"
    )


def _fetch_missing(
    key: str,
    folder: Path,
    existed: bool,
    roots: list[Path],
    missing: list[str],
    download: bool,
    sources: dict[str, tuple[tuple[str, ...], str, str]],
) -> None:
    """Download the ``missing`` files into ``folder`` or raise a DataError.

    ``sources`` maps a file name to (urls, hash algorithm, expected digest).
    """
    if not download:
        raise DataError(_missing_message(key, folder, missing, roots, "download is disabled"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            _missing_message(key, folder, missing, roots, f"cannot create the folder ({_describe_error(exc)})")
        ) from exc
    failures: list[str] = []
    for fname in missing:
        urls, algorithm, expected = sources[fname]
        try:
            _download(urls, folder / fname, algorithm, expected)
        except DataError as exc:
            failures.append(str(exc))
    if failures:
        if not existed:
            # Leave no empty folder behind from a failed first download.
            try:
                folder.rmdir()
            except OSError:
                pass
        still = [f for f in missing if not (folder / f).is_file()]
        raise DataError(
            _missing_message(key, folder, still, roots, "download failed (" + "; ".join(failures) + ")")
        )


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# =============================================================================
# digits
# =============================================================================


_DIGITS_FILE = "digits.csv.gz"
_DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """The bundled UCI optdigits test set (rbp/bundled/digits.csv.gz: 64 pixels then the label per line)."""
    from importlib import resources

    try:
        raw = (resources.files("rbp") / "bundled" / _DIGITS_FILE).read_bytes()
    except OSError as e:
        raise DataError(f"digits: the bundled file rbp/bundled/{_DIGITS_FILE} cannot be read ({e}); "
                        "reinstall rbp") from None
    if hashlib.sha256(raw).hexdigest() != _DIGITS_SHA256:
        raise DataError(f"digits: the bundled file rbp/bundled/{_DIGITS_FILE} is corrupt (SHA-256 mismatch); "
                        "reinstall rbp")
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65) or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise DataError(f"digits: unexpected data in rbp/bundled/{_DIGITS_FILE} (shape {table.shape})")
    pixels = np.ascontiguousarray(table[:, :64].reshape(-1, 8, 8).astype(np.uint8))
    labels = np.ascontiguousarray(table[:, 64].astype("<i8"))
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels, digest


def _load_digits() -> Dataset:
    pixels, labels, digest = _digits_arrays()
    order = np.random.RandomState(_DIGITS_SEED).permutation(len(labels))
    train, test = order[:_DIGITS_TRAIN], order[_DIGITS_TRAIN:]
    x = torch.from_numpy(pixels.astype(np.float32)[:, None, :, :] / np.float32(16.0))
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name="digits",
        x_train=x[train].contiguous(),
        y_train=y[train].contiguous(),
        x_test=x[test].contiguous(),
        y_test=y[test].contiguous(),
        input_shape=(1, 8, 8),
        num_classes=_NUM_CLASSES,
        checksums={"digits (UCI optdigits test set, arrays)": digest},
    )


# =============================================================================
# IDX (MNIST, Fashion-MNIST)
# =============================================================================


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an (uncompressed) IDX file into a native-endian array.

    The header is two zero bytes, a type byte, the number of dimensions, then
    one big-endian uint32 per dimension; the payload must have exactly the
    size the dimensions imply.  Anything else raises DataError naming
    ``source``.
    """
    if len(raw) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(raw)} bytes)")
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in _IDX_TYPES:
        magic = struct.unpack(">I", raw[:4])[0]
        raise DataError(f"{source}: not an IDX file (bad magic number 0x{magic:08x})")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares no dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing data"
        raise DataError(
            f"{source}: IDX payload {state}: {len(raw)} bytes, expected {expected} for shape {dims}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gunzipping it first when it is gzip-compressed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_describe_error(exc)})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({_describe_error(exc)})") from exc
    return parse_idx(raw, str(path))


@functools.lru_cache(maxsize=16)
def _verified_idx(path_str: str, size: int, mtime_ns: int, sha256: str, expected_size: int) -> np.ndarray:
    """Check a canonical IDX .gz file against its checksum, then parse it.

    ``size`` and ``mtime_ns`` are only part of the cache key, so an edited
    file is read again.
    """
    path = Path(path_str)
    got = _hash_file(path, "sha256")
    if got != sha256:
        if size != expected_size:
            what = f"wrong size ({size} bytes, expected {expected_size}; truncated or not the canonical file)"
        else:
            what = "checksum mismatch"
        raise DataError(
            f"{path}: {what}: SHA-256 is {got}, expected {sha256}; delete the file and fetch it again"
        )
    array = read_idx(path)
    array.flags.writeable = False
    return array


def _to_unit_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> new float32 tensor in [0, 1]."""
    x = pixels.astype(np.float32)
    np.divide(x, np.float32(255.0), out=x)
    return torch.from_numpy(x)


def _check_idx_pair(path_img: Path, images: np.ndarray, path_lab: Path, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path_img}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{path_lab}: expected a 1-d uint8 label vector, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path_lab}: {labels.shape[0]} labels for {images.shape[0]} images in {path_img.name}")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise DataError(f"{path_lab}: label {int(labels.max())} out of range 0..{_NUM_CLASSES - 1}")


def _load_idx_dataset(key: str, data_dir, download: bool) -> Dataset:
    files = _IDX_FILES[key]
    folder, existed, roots = _locate(key, data_dir)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        sources = {
            f: (tuple(base + f for base in _IDX_MIRRORS[key]), "sha256", files[f][0]) for f in missing
        }
        _fetch_missing(key, folder, existed, roots, missing, download, sources)

    arrays: dict[str, np.ndarray] = {}
    for fname, (sha256, size) in files.items():
        path = folder / fname
        try:
            path_str, st_size, mtime = _stat_key(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({_describe_error(exc)})") from exc
        arrays[fname] = _verified_idx(path_str, st_size, mtime, sha256, size)

    split = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        img_name, lab_name = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        images, labels = arrays[img_name], arrays[lab_name]
        _check_idx_pair(folder / img_name, images, folder / lab_name, labels)
        split[part] = (_to_unit_float(images[:, None, :, :]), torch.from_numpy(labels.astype(np.int64)))

    return Dataset(
        name=key,
        x_train=split["train"][0],
        y_train=split["train"][1],
        x_test=split["test"][0],
        y_test=split["test"][1],
        input_shape=(1, 28, 28),
        num_classes=_NUM_CLASSES,
        checksums={f: files[f][0] for f in files},
    )


# =============================================================================
# CIFAR-10
# =============================================================================


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` while unpickling.

    The class is only ever needed as the first argument of ``_reconstruct``;
    a non-callable token keeps a pickle from calling anything else with it.
    """

    __slots__ = ()


_NDARRAY = _NdarrayToken()


class _Sealed:
    """A callable handed to the unpickler that the pickle cannot modify.

    Returning plain functions or classes from ``find_class`` would let a
    BUILD opcode set attributes on them (and so change them for every later
    load in the process); this wrapper has no ``__dict__`` and refuses
    ``setattr``.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args):
        return self._fn(*args)

    def __setattr__(self, name, value):
        raise AttributeError("read-only")
_SIMPLE_DTYPE = re.compile(r"[|<>=]?[biuf][1248]")


class _DtypeStub:
    """What ``numpy.dtype(spec, align, copy)`` plus ``__setstate__`` yields.

    Only plain numeric types are accepted, and the real numpy dtype is built
    from the validated type string, never from the pickled state.
    """

    def __init__(self, spec, align=False, copy=True):
        text = spec.decode("ascii", "replace") if isinstance(spec, bytes) else spec
        if not isinstance(text, str) or not _SIMPLE_DTYPE.fullmatch(text):
            raise pickle.UnpicklingError(f"dtype {spec!r} not allowed")
        self.dtype = np.dtype(text)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError("only plain numeric dtypes are allowed")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError(f"bad byte order {state[1]!r} in dtype state")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayStub:
    """What ``_reconstruct(ndarray, (0,), b'b')`` plus ``__setstate__`` yields.

    numpy pickles an array as an empty array followed by a state tuple
    ``(version, shape, dtype, fortran_order, raw_bytes)``.  The state is
    checked here and the array built with :func:`numpy.frombuffer`, so no
    numpy internals see unchecked input.  :meth:`array` hands it out.
    """

    def __init__(self):
        self._array = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version number
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("malformed ndarray state")
        shape, dtype, fortran, raw = state
        if (
            not isinstance(shape, tuple)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(dtype, _DtypeStub)
            or not isinstance(raw, bytes)
        ):
            raise pickle.UnpicklingError("malformed ndarray state")
        count = math.prod(shape)
        if len(raw) != count * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(
                f"ndarray data has {len(raw)} bytes, shape {shape} needs {count * dtype.dtype.itemsize}"
            )
        flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
        self._array = flat.reshape(shape, order="F" if fortran else "C")

    def array(self) -> np.ndarray:
        if self._array is None:
            raise pickle.UnpicklingError("ndarray without state")
        return self._array


def _safe_reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or shape != (0,):
        raise pickle.UnpicklingError("unexpected arguments to numpy _reconstruct")
    return _ArrayStub()


def _latin1_encode(text, encoding="utf-8"):
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 _codecs.encode calls are allowed")
    return text.encode("latin-1")


def _empty_bytes(*args):
    # Python 3 writes b"" at protocol 2 as __builtin__.bytes().
    if args:
        raise pickle.UnpicklingError("only bytes() without arguments is allowed")
    return b""


# Every global a CIFAR batch may name.  The original files (pickled by
# Python 2) use numpy.core.multiarray._reconstruct, numpy.ndarray and
# numpy.dtype; batches written by Python 3 at protocol 2 also use
# _codecs.encode (for bytes) and name numpy._core under NumPy 2.  None of
# these is the real numpy callable: they build inert stubs (see above).
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Sealed(_safe_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Sealed(_safe_reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Sealed(_DtypeStub),
    ("_codecs", "encode"): _Sealed(_latin1_encode),
    ("__builtin__", "bytes"): _Sealed(_empty_bytes),
    ("builtins", "bytes"): _Sealed(_empty_bytes),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _field(batch: dict, name: str):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise KeyError(name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: (uint8 array (N, 3072), int64 labels (N,)).

    Uses a restricted unpickler; any malformed or suspicious content raises
    DataError naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_describe_error(exc)})") from exc
    try:
        # Unpickle from memory: a bogus length field then only meets the end
        # of a buffer instead of a huge read request.
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # untrusted bytes: every failure is a data error
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({_describe_error(exc)})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    try:
        data, labels = _field(batch, "data"), _field(batch, "labels")
    except KeyError as exc:
        raise DataError(f"{path}: batch has no {exc.args[0]!r} entry") from None
    if isinstance(data, _ArrayStub):
        try:
            data = data.array()
        except pickle.UnpicklingError as exc:
            raise DataError(f"{path}: not a valid CIFAR-10 batch ({exc})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {_CIFAR_ROW}), got {what}")
    if not isinstance(labels, (list, tuple)) or not all(
        type(v) is int and 0 <= v < _NUM_CLASSES for v in labels
    ):
        raise DataError(f"{path}: 'labels' must be a list of ints in 0..{_NUM_CLASSES - 1}")
    if len(labels) != data.shape[0]:
        raise DataError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    return data, np.asarray(labels, dtype=np.int64).reshape(-1)


@functools.lru_cache(maxsize=8)
def _cached_cifar_batch(path_str: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray, str]:
    data, labels = read_cifar_batch(path_str)
    data.flags.writeable = False
    labels.flags.writeable = False
    return data, labels, _hash_file(Path(path_str), "sha256")


def _extract_cifar(archive: Path, batches_dir: Path) -> None:
    """Unpack the batch files from the verified archive, and nothing else.

    Members are copied by name into ``batches_dir`` (never via
    ``extractall``), so the archive cannot write anywhere else.
    """
    wanted = {f"{_CIFAR_SUBDIR}/{n}": n for n in (*_CIFAR_TRAIN, _CIFAR_TEST, *_CIFAR_EXTRA)}
    try:
        batches_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                target = wanted.get(member.name.lstrip("./"))
                if target is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                with atomic_path(batches_dir / target, suffix=".part") as tmp, open(tmp, "wb") as out:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: cannot unpack ({_describe_error(exc)})") from exc


def _load_cifar10(data_dir, download: bool) -> Dataset:
    key = "cifar10"
    folder, existed, roots = _locate(key, data_dir)
    batches_dir = folder / _CIFAR_SUBDIR
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    missing = [n for n in names if not (batches_dir / n).is_file()]
    if missing:
        archive = folder / _CIFAR_ARCHIVE
        if not archive.is_file():
            try:
                _fetch_missing(
                    key, folder, existed, roots, [_CIFAR_ARCHIVE], download,
                    {_CIFAR_ARCHIVE: ((_CIFAR_URL,), "md5", _CIFAR_MD5)},
                )
            except DataError as exc:
                listed = ", ".join(f"{_CIFAR_SUBDIR}/{n}" for n in missing)
                raise DataError(f"{exc} [needed: {listed}, or the archive {_CIFAR_ARCHIVE} to unpack them]") from None
        else:
            got = _hash_file(archive, "md5")
            if got != _CIFAR_MD5:
                size = archive.stat().st_size
                hint = f"; {size} bytes, expected {_CIFAR_SIZE}" if size != _CIFAR_SIZE else ""
                raise DataError(
                    f"{archive}: checksum mismatch: MD5 is {got}, expected {_CIFAR_MD5}{hint}; "
                    "delete the file and fetch it again"
                )
        _extract_cifar(archive, batches_dir)
        still = [n for n in names if not (batches_dir / n).is_file()]
        if still:
            raise DataError(f"{archive}: archive lacks {', '.join(f'{_CIFAR_SUBDIR}/{n}' for n in still)}")

    parts: dict[str, list] = {"train": [], "test": []}
    checksums: dict[str, str] = {}
    for n in names:
        path = batches_dir / n
        try:
            stat_key = _stat_key(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({_describe_error(exc)})") from exc
        data, labels, digest = _cached_cifar_batch(*stat_key)
        parts["test" if n == _CIFAR_TEST else "train"].append((data, labels))
        checksums[f"{_CIFAR_SUBDIR}/{n}"] = digest

    def stack(items):
        data = np.concatenate([d for d, _ in items]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([lab for _, lab in items])
        return _to_unit_float(data), torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = stack(parts["train"])
    x_test, y_test = stack(parts["test"])
    return Dataset(
        name=key,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_shape=(3, 32, 32),
        num_classes=_NUM_CLASSES,
        checksums=checksums,
    )
