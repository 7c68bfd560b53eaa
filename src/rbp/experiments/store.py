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
     "ensemble": the seeds trained together with it, ["mixed_with": the configuration of each of them,
     for a mixed ensemble,] "epochs_completed": n, "diverged": bool,
     "diverged_epoch": the first epoch whose loss was NaN or infinite (null if none),
     "provenance": {rbp/torch/python versions, machine, host, data checksums, finished (UTC)},
     "history": [one row per epoch: seed, epoch, train_loss, train_accuracy, test_loss, test_accuracy,
                 seconds, ensemble, diverged, signal_angle_h, update_angle_h, feedback_angle_h,
                 feedback_norm_ratio_h ...]}

A run that diverges is *stopped* at the epoch where its loss became NaN or
infinite: its history ends with that epoch (in an ensemble the other members
go on training, and the diverged member's later epochs are not kept), so a
run's record is the same whether it trained alone or in an ensemble.

Two sweeps may write the same store at the same time (two ``rbp run`` on one
machine, or a cluster run and a local run): every run has its own file and
each write is one ``os.replace``, so a reader sees either no file or a whole
one, and when both sweeps compute the same run the last complete file wins.
Temporary files left by a writer that was killed mid-write (``.NAME.*.tmp``)
are never read; :meth:`Store.bind` removes those older than an hour.

Non-finite numbers are stored as ``null`` (strict JSON) and read back as NaN.
``seconds`` is the wall time of the epoch for the whole ensemble of
``ensemble`` networks trained together.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import socket
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError
from ..results import atomic_write, provenance  # noqa: F401 (atomic_write: also rbp.experiments.store's)

FORMAT = "rbp-run/1"
STALE_TEMP_SECONDS = 3600      # a temporary file this old belongs to a writer that died
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
    if d.get("optimizer") == "sgd":      # the only optimizer before the key existed: old stores still resume
        d.pop("optimizer")
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
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files of killed writers (older than ``older_than`` seconds); returns how many.

        A live writer's temporary file exists for milliseconds, so an hour-old one
        cannot belong to a sweep that is still running.
        """
        removed = 0
        now = time.time()
        for folder in (self.root, self.runs):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    if now - p.stat().st_mtime > older_than:
                        p.unlink()
                        removed += 1
                except OSError:      # another process removed or replaced it first
                    pass
        return removed

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

    def write(self, experiment, config, seed, spec, history, ensemble, checksums=None,
              provenance_of_run: dict | None = None, mixed_with: list | None = None) -> Path:
        """Store one finished run atomically.

        ``mixed_with``: for a run trained in a mixed ensemble, the configuration
        id of every member, in the order of ``ensemble``.

        ``provenance_of_run`` is the provenance measured where the run trained (a
        cluster worker: its versions, host and data checksums); by default this
        process's, with ``checksums``.
        """
        rows = stop_at_divergence([r.as_dict() if hasattr(r, "as_dict") else dict(r) for r in history])
        prov = dict(provenance_of_run) if provenance_of_run is not None else run_provenance(checksums)
        prov.setdefault("finished", _now())
        diverged_at = next((int(r["epoch"]) for r in rows if r.get("diverged")), None)
        doc = {
            "format": FORMAT, "experiment": experiment.name, "seed": int(seed), "config": config.meta(),
            "spec": spec_dict(spec), "key": spec_key(spec), "ensemble": [int(s) for s in ensemble],
            "epochs_completed": len(rows), "diverged": diverged_at is not None, "diverged_epoch": diverged_at,
            "provenance": prov, "history": rows,
        }
        if mixed_with is not None:
            doc["mixed_with"] = [str(c) for c in mixed_with]
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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_provenance(checksums=None) -> dict:
    """This process's provenance (:func:`rbp.results.provenance`) with the host name and the time."""
    prov = provenance(checksums)
    prov["host"] = socket.gethostname()
    prov["finished"] = _now()
    return prov


def stop_at_divergence(rows: list[dict]) -> list[dict]:
    """The epochs up to and including the first one marked ``diverged``."""
    for i, r in enumerate(rows):
        if r.get("diverged"):
            return rows[:i + 1]
    return rows


def _is_number(v) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def read_run(path) -> dict:
    """Read and check one run file; ValueError if it is not a complete, well-formed run."""
    try:
        raw = Path(path).read_bytes()
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} file")
    for key in ("experiment", "seed", "config", "history", "spec"):
        if key not in doc:
            raise ValueError(f"missing {key!r}")
    if not isinstance(doc["experiment"], str) or isinstance(doc["seed"], bool) or not isinstance(doc["seed"], int):
        raise ValueError("'experiment' must be a string and 'seed' an integer")
    c = doc["config"]
    if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not c["id"]:
        raise ValueError("'config' must be a table with a string 'id'")
    if not isinstance(c.get("order", 0), int) or isinstance(c.get("order", 0), bool):
        raise ValueError("'config.order' must be an integer")
    for k in ("label", "row", "algorithm"):
        if c.get(k) is not None and not isinstance(c[k], str):
            raise ValueError(f"'config.{k}' must be a string")
    for k in ("paper_mean", "paper_sd"):
        if not _is_number(c.get(k)):
            raise ValueError(f"'config.{k}' must be a number")
    if not isinstance(doc["spec"], dict):
        raise ValueError("'spec' must be a table")
    if "epochs" in doc["spec"] and not (isinstance(doc["spec"]["epochs"], int)
                                        and not isinstance(doc["spec"]["epochs"], bool)):
        raise ValueError("'spec.epochs' must be an integer")
    history = doc["history"]
    if not isinstance(history, list) or not history:
        raise ValueError("empty history")
    for r in history:
        if not isinstance(r, dict):
            raise ValueError("history rows must be tables")
        if not isinstance(r.get("epoch"), int) or isinstance(r["epoch"], bool) or r["epoch"] < 1:
            raise ValueError("history row without a positive integer 'epoch'")
        for k in ("test_accuracy", "train_accuracy", "seconds"):
            if k not in r or not _is_number(r[k]):
                raise ValueError(f"history row without a numeric {k!r}")
        if not all(_is_number(v) or isinstance(v, bool) for v in r.values()):
            raise ValueError("history rows hold numbers only")
        ens = r.get("ensemble", 1)
        if isinstance(ens, bool) or not isinstance(ens, int) or ens < 1:
            raise ValueError("'ensemble' must be a positive integer")
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
