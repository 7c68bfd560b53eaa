"""Writing files so that they are never half-written, and what every result records about its origin.

Every file the package writes (result stores, reports and their figures, the
theory workbench's data and figures, downloaded and unpacked datasets) goes
through :func:`atomic_file` / :func:`atomic_path` / :func:`atomic_write`: the
bytes are written to a temporary file in the destination's folder, flushed to
disk and renamed onto the destination in one step (``os.replace``), so a reader
sees the old file or the complete new one, never a part, and a writer killed at
any moment leaves at most a temporary ``.NAME.*.tmp`` file behind.

``rbp train --out`` and ``rbp run`` write the same result store
(:mod:`rbp.experiments.store`), with the provenance of :func:`provenance`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from pathlib import Path

import torch

from . import __version__


def provenance(checksums: dict | None = None) -> dict:
    """What is needed to trace and rerun a result."""
    return {
        "rbp_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "data_checksums": dict(checksums or {}),
    }


def _sync_folder(folder: Path):
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - Windows and some filesystems refuse a folder fsync
        pass


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; once the block completes, it replaces ``path``.

    For writers that want a file name (``Figure.savefig``).  The temporary name
    keeps ``path``'s suffix (or ``suffix``) so such writers pick the right format.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + (suffix if suffix is not None
                                                                          else path.suffix), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", **open_kwargs):
    """Yield an open file (``mode`` "w" or "wb") whose content replaces ``path`` once the block completes."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, suffix="") as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()


def atomic_write(path, data: str | bytes):
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    with atomic_file(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
