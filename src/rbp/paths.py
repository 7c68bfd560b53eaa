"""Checks of the paths a user names on the command line, each failing with one clear line.

Every command checks its path arguments before it does any work (loads data,
trains), so a typo costs nothing:

* :func:`input_dir` -- a folder that must exist (``--data-dir``, ``rbp report DIR``);
* :func:`output_dir` -- a folder that is created if needed and must be writable
  (``--out``), optionally empty.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def input_dir(path, what: str) -> Path:
    """``path`` as a folder that exists, else ConfigError naming ``what`` (e.g. "--data-dir")."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what} {path}: no such folder")
    if not p.is_dir():
        raise ConfigError(f"{what} {path}: is a file, not a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: folder not readable (permission denied)")
    return p


def output_dir(path, what: str, empty: bool = False, create: bool = True) -> Path:
    """``path`` as a writable folder (created with its parents when ``create``; else only checked to be
    creatable), else ConfigError.

    ``empty``: an existing folder must hold nothing (so results already written are never mixed
    with or overwritten by new ones).  Writability is tried (a temporary file is made and
    removed), not guessed from permission bits.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {path}: is a file, not a folder; choose another {what}")
    if p.is_dir() and empty and any(p.iterdir()):
        raise ConfigError(f"{what} {path}: folder exists and is not empty; choose another {what}")
    if not p.exists():
        anc = p.parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if anc.exists() and not anc.is_dir():
            raise ConfigError(f"{what} {path}: {anc} is a file, not a folder")
        if not create:              # made later by the command: the folder it will be made in must take it
            _try_write(anc, f"{what} {path}: cannot create the folder in {anc}")
            return p
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{what} {path}: cannot create the folder ({_why(e)})") from None
    _try_write(p, f"{what} {path}: folder not writable")
    return p


def _try_write(folder: Path, message: str):
    """Make and remove a temporary file in ``folder``, else ConfigError ``message (reason)``."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"{message} ({_why(e)})") from None
