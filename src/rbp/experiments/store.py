"""The result store: one JSON file per completed run, written atomically.

Layout of a store folder ``DIR``::

    DIR/experiment.toml                  the experiment file the runs were made from
    DIR/runs/<config id>--seed<k>.json   one completed run (configuration x seed)

A run file is written to a temporary file in the same folder, flushed to disk
and renamed into place (``os.replace``), so a run killed at any moment leaves
either nothing or a complete file: an interrupted ``rbp run`` loses at most the
runs in flight, and running the same command again skips every run whose file
exists.  A run file holds (format ``rbp-run/1``)::

    {"format": "rbp-run/1", "experiment": NAME, "seed": k,
     "config": {id, label, algorithm, options, row, groups, paper_mean, paper_sd, note, order},
     "spec": the TrainSpec (algorithm as name + options), "key": the part of it that must match to resume,
     "ensemble": the seeds trained together with it, "epochs_completed": n, "diverged": bool,
     "provenance": {rbp/torch/python versions, machine, data checksums, finished (UTC)},
     "history": [one row per epoch: seed, epoch, train_loss, train_accuracy, test_loss, test_accuracy,
                 seconds, ensemble, diverged, signal_angle_h, update_angle_h, feedback_angle_h,
                 feedback_norm_ratio_h ...]}

Non-finite numbers are stored as ``null`` (strict JSON) and read back as NaN.
``seconds`` is the wall time of the epoch for the whole ensemble of
``ensemble`` networks trained together.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError
from ..results import provenance

FORMAT = "rbp-run/1"
META_COLUMNS = ("experiment", "config", "label", "row", "algorithm")


def run_name(config_id: str, seed: int) -> str:
    return f"{config_id}--seed{seed}.json"


def spec_dict(spec) -> dict:
    """A TrainSpec as plain JSON values (the algorithm as its name and options)."""
    d = {k: v for k, v in asdict(spec).items() if k != "algorithm"}
    d["algorithm"] = spec.algorithm.name
    d["algorithm_options"] = spec.algorithm.options()
    return json.loads(json.dumps(d, default=list))


def spec_key(spec) -> dict:
    """What must be equal for a stored run to count as the run asked for (device and driver may differ)."""
    d = spec_dict(spec)
    d.pop("device", None)
    d.pop("driver", None)
    return d


def _clean(x):
    """Replace non-finite floats by None, recursively, for strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def atomic_write(path: Path, text: str):
    """Write ``text`` to ``path`` so that the file is either absent/old or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


class Store:
    """A store folder (see the module docstring)."""

    def __init__(self, root):
        self.root = Path(root)
        self.runs = self.root / "runs"

    # -- writing ------------------------------------------------------------
    def bind(self, experiment):
        """Claim the folder for ``experiment`` (writes experiment.toml); see :meth:`check`."""
        self.check(experiment)
        self.runs.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "experiment.toml", experiment.source)

    def check(self, experiment):
        """Refuse a folder that holds another experiment's runs or is not a store; writes nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file, not a folder")
        held = self.experiment_name()
        if held is not None and held != experiment.name:
            raise ConfigError(f"{self.root} holds results of experiment {held!r}, not {experiment.name!r}; "
                              "choose another --out")
        if self.root.exists() and held is None and any(p for p in self.root.iterdir()
                                                       if not p.name.startswith(".")):
            if not self.runs.is_dir():
                raise ConfigError(f"{self.root} exists and is not an rbp result store; choose another --out")

    def write(self, experiment, config, seed, spec, history, ensemble, checksums=None) -> Path:
        rows = [r.as_dict() if hasattr(r, "as_dict") else dict(r) for r in history]
        prov = provenance(checksums)
        prov["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        doc = {
            "format": FORMAT, "experiment": experiment.name, "seed": int(seed), "config": config.meta(),
            "spec": spec_dict(spec), "key": spec_key(spec), "ensemble": [int(s) for s in ensemble],
            "epochs_completed": len(rows), "diverged": bool(rows and rows[-1].get("diverged")),
            "provenance": prov, "history": rows,
        }
        path = self.runs / run_name(config.id, seed)
        atomic_write(path, json.dumps(_clean(doc), allow_nan=False) + "\n")
        return path

    # -- reading ------------------------------------------------------------
    def experiment_name(self) -> str | None:
        f = self.root / "experiment.toml"
        if not f.is_file():
            return None
        from .experiment import parse
        try:
            return parse(f.read_text(encoding="utf-8"), str(f)).name
        except (ConfigError, OSError, UnicodeDecodeError):
            return None

    def experiment(self):
        """The experiment stored with the runs (None if absent or no longer valid)."""
        f = self.root / "experiment.toml"
        if not f.is_file():
            return None
        from .experiment import parse
        try:
            return parse(f.read_text(encoding="utf-8"), str(f))
        except (ConfigError, OSError, UnicodeDecodeError) as e:
            warnings.warn(f"{f}: cannot read the stored experiment ({e}); using the run files only")
            return None

    def read(self, config_id: str, seed: int) -> dict | None:
        """The stored run, or None when there is none or it cannot be read."""
        path = self.runs / run_name(config_id, seed)
        if not path.is_file():
            return None
        try:
            return read_run(path)
        except ValueError:
            return None

    def completed(self, config, seed: int, spec) -> bool:
        """True when the run is stored for this very spec; an incompatible stored run is an error."""
        doc = self.read(config.id, seed)
        if doc is None:
            return False
        want = spec_key(spec)
        if doc.get("key") != want:
            have = doc.get("key") or {}
            diff = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
            k = diff[0] if diff else "spec"
            raise ConfigError(f"{self.runs / run_name(config.id, seed)} was made with {k}={have.get(k)!r}, "
                              f"this run asks for {k}={want.get(k)!r}; use another --out, or delete "
                              "that file to rerun it")
        return True

    def load(self) -> tuple[list[dict], list[str]]:
        """All readable run files (sorted), and one message per file that could not be read."""
        docs, problems = [], []
        if not self.runs.is_dir():
            return docs, problems
        for path in sorted(self.runs.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                docs.append(read_run(path))
            except ValueError as e:
                problems.append(f"{path}: {e}; skipped")
        docs.sort(key=lambda d: (d["config"].get("order", 0), d["config"]["id"], d["seed"]))
        return docs, problems


def read_run(path) -> dict:
    """Read and check one run file; ValueError if it is not a complete run."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} file")
    for key in ("experiment", "seed", "config", "history", "spec"):
        if key not in doc:
            raise ValueError(f"missing {key!r}")
    if not isinstance(doc["history"], list) or not doc["history"]:
        raise ValueError("empty history")
    return doc


def rows_of(doc: dict) -> list[dict]:
    """The tidy rows of one run: configuration columns, then one row per epoch."""
    c = doc["config"]
    meta = {"experiment": doc["experiment"], "config": c["id"], "label": c.get("label"),
            "row": c.get("row"), "algorithm": c.get("algorithm")}
    out = []
    for r in doc["history"]:
        row = dict(meta)
        row.update({k: (math.nan if v is None else v) for k, v in r.items()})
        row["seconds_per_network"] = row["seconds"] / max(1, int(row.get("ensemble") or 1))
        out.append(row)
    return out


def load_rows(root) -> list[dict]:
    """Every stored run as tidy rows (one per run and epoch); unreadable files are skipped with a warning."""
    docs, problems = Store(root).load()
    for p in problems:
        warnings.warn(p)
    return [row for d in docs for row in rows_of(d)]
