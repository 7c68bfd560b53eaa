"""Writing results to disk so that they are never half-written.

A run directory is assembled in a temporary sibling folder and renamed into
place in one step: an interrupted command leaves either nothing or a complete
directory.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__
from .errors import ConfigError


def provenance(checksums: dict | None = None) -> dict:
    """What is needed to trace and rerun a result."""
    return {
        "rbp_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "data_checksums": dict(checksums or {}),
    }


def write_run_dir(out, spec, seeds, histories, summary, checksums=None):
    """Write config.json, history.csv and summary.json to ``out`` atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        config = {k: v for k, v in asdict(spec).items() if k != "algorithm"}
        config["algorithm"] = spec.algorithm.name
        config["algorithm_options"] = spec.algorithm.options()
        config["seeds"] = list(seeds)
        config["provenance"] = provenance(checksums)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=list) + "\n")
        rows = [r.as_dict() for h in histories for r in h]
        names = list(dict.fromkeys(k for r in rows for k in r))
        with open(tmp / "history.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=names)
            w.writeheader()
            w.writerows(rows)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
