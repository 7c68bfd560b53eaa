"""The result store: one JSON file per completed run, written atomically.

Layout of a store folder ``DIR``::

    DIR/experiment.toml                  the experiment file the runs were made from
    DIR/runs/<config id>--seed<k>.json   one completed run (configuration x seed)
    DIR/checkpoints/<group>.pt           the state of a group of runs at the end of its last epoch
    DIR/claims/<config id>--seed<k>.claim  a run being trained now, and by which process

**Checkpoints.**  A group of runs trained together (one network, or an
ensemble) writes its whole state at the end of every epoch: weights, feedback,
optimizer, every random stream and the histories so far
(:meth:`rbp.train.Trainer.state_dict`, format ``rbp-checkpoint/1``, read with
``torch.load(weights_only=True)``), atomically, over the previous epoch's.  A
run killed mid-epoch resumes from the last complete epoch and ends bit for bit
as if it had never stopped.  When the group's run files are written its
checkpoint is removed, unless ``keep_checkpoints``; so a store holds at most
one checkpoint per group in flight (for the paper's CIFAR-10 network, about
6.5 MB: weights, momentum and the state of the streams) and finished stores hold none, which keeps them small enough to commit.

**Claims.**  Before a process trains a run it claims it: it creates the run's
claim file with ``O_EXCL`` (one process wins) and touches it every
``CLAIM_HEARTBEAT`` seconds while it trains.  Another process skips a claimed
run.  A claim is taken over when its holder is gone: on the same host when its
process no longer exists, from any host when it has not been touched for
``STALE_CLAIM_SECONDS``.  Claims are released when the run is stored or the
process stops (Ctrl-C, an error); a killed process's claims are taken over by
the next ``rbp run``.

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
CHECKPOINT_FORMAT = "rbp-checkpoint/1"
CLAIM_HEARTBEAT = 30.0        # seconds between two touches of a held claim
STALE_CLAIM_SECONDS = 600.0   # a claim not touched for this long belongs to a process that is gone
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
        self.checkpoints = self.root / "checkpoints"
        self.claims = self.root / "claims"

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
        for folder in (self.root, self.runs, self.checkpoints, self.claims):
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
        return self.status(config, seed, spec)[0] == "done"

    def status(self, config, seed: int, spec, extend: bool = False) -> tuple[str, str | None]:
        """What the store holds of a run: ``("done", None)``, ``("missing", None)``,
        ``("unreadable", message)`` (a run file that does not parse: it is trained again), or, with
        ``extend``, ``("shorter", message)`` (stored with fewer epochs of the same protocol: it is
        continued).  A run stored with another protocol is an error (one line)."""
        path = self.runs / run_name(config.id, seed)
        if not path.is_file():
            return "missing", None
        try:
            doc = read_run(path)
        except ValueError as e:
            return "unreadable", f"{path} cannot be read ({e}); that run is trained again"
        want = spec_key(spec)
        if doc.get("key") == want:
            return "done", None
        have = doc.get("key") or {}
        diff = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
        if extend and diff == ["epochs"] and isinstance(have.get("epochs"), int) and have["epochs"] < want["epochs"]:
            return "shorter", (f"{path} has {have['epochs']} epochs; it is trained on to {want['epochs']} (from "
                               "its checkpoint if one was kept, else from epoch 1; the file stays until then)")
        k = diff[0] if diff else "spec"
        hint = ("; --extend continues shorter runs" if diff == ["epochs"] and not extend
                and isinstance(have.get("epochs"), int) and have["epochs"] < want["epochs"] else "")
        raise ConfigError(f"{path} was made with {k}={have.get(k)!r}, "
                          f"this run asks for {k}={want.get(k)!r}; use another --out, or delete "
                          f"that file to rerun it{hint}")

    # -- checkpoints and claims ---------------------------------------------
    def checkpoint(self, members, specs, keep: bool = False, log=None) -> "Checkpoint":
        """The checkpoint of the group ``members`` = [(config id, seed)] trained with ``specs``."""
        return Checkpoint(self, members, specs, keep, log)

    def checkpoint_bytes(self, name: str) -> bytes | None:
        """The checkpoint file ``name`` as bytes (for a Dask worker), or None."""
        try:
            return (self.checkpoints / name).read_bytes()
        except OSError:
            return None

    def checkpoints_held(self) -> list[dict]:
        """What the checkpoints in the store hold: members, epochs done (for reports and resumes)."""
        out = []
        for path in sorted(self.checkpoints.glob("*.pt")) if self.checkpoints.is_dir() else []:
            try:
                doc = _load_checkpoint(path)
            except ValueError:
                continue
            out.append({"path": str(path), "members": doc["members"], "epochs": len(doc["histories"][0]),
                        "of": doc.get("epochs_planned")})
        return out

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


def checkpoint_name(members) -> str:
    """``<config>--seed<k>.pt`` for one network; a group of several is named by its first member, its
    size and a digest of the whole list."""
    import hashlib
    members = [(str(c), int(s)) for c, s in members]
    c, k = members[0]
    if len(members) == 1:
        return f"{c}--seed{k}.pt"
    digest = hashlib.sha1(json.dumps(members).encode()).hexdigest()[:10]
    return f"{c}--seed{k}+{len(members) - 1}-{digest}.pt"


def _resume_key(spec) -> dict:
    """What must match for a checkpoint to be continued: the spec key without the number of epochs."""
    k = spec_key(spec)
    k.pop("epochs", None)
    return k


def _load_checkpoint(path) -> dict:
    import torch
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:        # truncated, foreign or corrupt: torch raises many kinds
        raise ValueError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an {CHECKPOINT_FORMAT} file")
    for key in ("members", "keys", "state", "histories"):
        if key not in doc:
            raise ValueError(f"missing {key!r}")
    return doc


class Checkpoint:
    """The resumable state of one group of runs (the ``checkpoint`` of :func:`rbp.train.train_group`).

    ``load()`` gives the saved state when there is one for these very members and
    protocol (the number of epochs may be larger now: ``--extend``); a checkpoint
    that cannot be read, or that was made otherwise, is reported (one line to
    ``log``, and in ``notes``) and training starts from epoch 1.  ``save()``
    replaces it atomically.  ``done()`` removes it once the runs are stored
    (unless ``keep``).

    With a ``store`` the checkpoint is the file ``store.checkpoints/<name>``.
    Without one (a Dask worker, which writes nothing) it is read from ``source``
    (bytes, or None) and each save is handed to ``sink(name, bytes)``.
    """

    def __init__(self, store: Store | None, members, specs, keep: bool = False, log=None, *,
                 source: bytes | None = None, sink=None):
        self.store = store
        self.members = [[str(c), int(s)] for c, s in members]
        self.keys = [_resume_key(sp) for sp in specs]
        self.epochs = int(specs[0].epochs)
        self.name = checkpoint_name(self.members)
        self.path = store.checkpoints / self.name if store is not None else None
        self.keep = keep
        self.notes: list[str] = []
        self.resumed_from = 0
        self._log = log
        self._source = source
        self._sink = sink

    def _note(self, line: str):
        self.notes.append(line)
        if self._log is not None:
            self._log(line)

    def load(self):
        where = self.path if self.path is not None else f"the checkpoint {self.name}"
        if self.path is not None:
            if not self.path.is_file():
                return None
            source = self.path
        elif self._source is None:
            return None
        else:
            import io
            source = io.BytesIO(self._source)
        try:
            doc = _load_checkpoint(source)
        except ValueError as e:
            self._note(f"{where} cannot be read ({e}); these runs start again from epoch 1")
            return None
        done = len(doc["histories"][0]) if doc["histories"] else 0
        if doc["members"] != self.members or doc["keys"] != self.keys or done > self.epochs:
            self._note(f"{where} was made for another group or protocol; these runs start again from epoch 1")
            return None
        self.resumed_from = done
        self._note(f"{self.name}: resumed after epoch {done} of {self.epochs}")
        return doc["state"], doc["histories"]

    def serialise(self, state, histories) -> bytes:
        import io

        import torch
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "members": self.members, "keys": self.keys,
                    "epochs_planned": self.epochs, "state": state, "histories": histories}, buf)
        return buf.getvalue()

    def save(self, state, histories):
        data = self.serialise(state, histories)
        if self.path is None:
            self._sink(self.name, data)
        else:
            self.write_bytes(data)

    def write_bytes(self, data: bytes):
        """Store a serialised checkpoint (a Dask worker's) atomically."""
        self.store.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data)

    def done(self):
        if not self.keep and self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


class Claims:
    """The claims this process holds in a store (see the module docstring); a context manager that
    keeps them alive (a heartbeat thread) and releases them on exit."""

    def __init__(self, store: Store):
        import threading
        import uuid
        self.store = store
        self.token = uuid.uuid4().hex
        self.held: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import threading
        self._thread = threading.Thread(target=self._beat, name="rbp-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for path in list(self.held):
            self._drop(path)
        return False

    def _beat(self):
        while not self._stop.wait(CLAIM_HEARTBEAT):
            with self._lock:
                for path in list(self.held):
                    try:
                        os.utime(path)
                    except OSError:
                        pass

    def path(self, config_id: str, seed: int) -> Path:
        return self.store.claims / (run_name(config_id, seed)[:-len(".json")] + ".claim")

    def take(self, config_id: str, seed: int) -> str | None:
        """Claim a run; None when this process now holds it, else who holds it (one phrase)."""
        path = self.path(config_id, seed)
        self.store.claims.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "claimed": _now()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _claim_holder(path)
                if holder is not None:
                    if holder.get("token") == self.token:
                        return None
                    return f"pid {holder.get('pid')} on {holder.get('host')}"
                # the holder is gone: move its claim aside (one process wins the rename), then retry
                aside = path.with_name(f".{path.name}.{self.token}.tmp")
                try:
                    os.replace(path, aside)
                    aside.unlink()
                except OSError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            with self._lock:
                self.held.add(path)
            return None
        return "another process (the claim changed hands while we looked)"

    def release(self, config_id: str, seed: int):
        self._drop(self.path(config_id, seed))

    def _drop(self, path: Path):
        with self._lock:
            self.held.discard(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("token") == self.token:
                path.unlink()
        except (OSError, ValueError):
            pass


def _claim_holder(path: Path) -> dict | None:
    """The live holder of a claim file (its JSON), or None when the claim is stale."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {"pid": "?", "host": "?"}      # it vanished or changed while we looked: assume held
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:          # being written right now, or garbage left by a crash
        return None if age > 60 else {"pid": "?", "host": "?"}
    if age > STALE_CLAIM_SECONDS:
        return None
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return doc


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
