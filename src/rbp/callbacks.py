"""Watching training from outside: callbacks, and a TensorBoard logger built on them.

The training loop (:func:`rbp.train.train_group`, :func:`rbp.train.train`) and the
experiment runner (:func:`rbp.experiments.runner.run`) tell every callback about
each *network* they train, by a name of its own (its *run*):

``on_train_begin(run, info)``
    before the first epoch; ``info`` is plain data: the seed, the training spec
    (``info["spec"]``: dataset, algorithm and options, protocol), the algorithm's
    label, the seeds of the ensemble it trains in and, from the runner, the
    experiment and configuration ids;
``on_epoch_end(run, record)``
    after every epoch; ``record`` is the network's :class:`rbp.train.EpochRecord`
    (losses, accuracies, seconds, and the alignment figures of
    :mod:`rbp.diagnostics` in ``record.alignment``); ``record.metrics()`` is all
    of it as one flat ``{name: float}`` dict;
``on_train_end(run, history)``
    after the last epoch (or divergence), with the network's list of records.

Run names are ``seed0``, ``seed1``, ... for ``rbp train`` and
``CONFIG/seed0``, ... for ``rbp run``.  The networks of an ensemble train
together, so their calls interleave: all networks' ``on_train_begin``, then
each epoch's ``on_epoch_end`` for every network.  With the Dask executor the
records come back with a finished task and the calls for its networks are made
then, in this process.

Callbacks only read: they run after an epoch's numbers are taken, outside the
timed part, and draw no random numbers of the training's streams, so a run
gives bitwise the same results with or without them
(``tests/test_callbacks.py``).  A callback that raises stops the training.

Any object with some of the three methods works (subclass :class:`Callback`
to get the others as no-ops); a plain function ``f(run, record)`` is taken as
``on_epoch_end``.  A logger for another tool is a few lines (a sketch for
Weights & Biases; the documentation has one for MLflow too)::

    import wandb
    from rbp.callbacks import Callback

    class WandbLogger(Callback):
        def __init__(self, project="rbp"):
            self.project, self.runs = project, {}

        def on_train_begin(self, run, info):
            self.runs[run] = wandb.init(project=self.project, name=run, config=info,
                                        reinit="create_new")

        def on_epoch_end(self, run, record):
            self.runs[run].log(record.metrics(), step=record.epoch)

        def on_train_end(self, run, history):
            self.runs.pop(run).finish()
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import ConfigError


class Callback:
    """Base class of a training callback: every method does nothing until overridden."""

    def on_train_begin(self, run: str, info: dict) -> None:
        """Called once per network before its first epoch."""

    def on_epoch_end(self, run: str, record) -> None:
        """Called after every epoch with the network's :class:`rbp.train.EpochRecord`."""

    def on_train_end(self, run: str, history: list) -> None:
        """Called once per network after its last epoch, with all its records."""


class _Function(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, run, record):
        self.fn(run, record)


def as_callbacks(callbacks) -> list:
    """``callbacks`` (None, one callback, or a sequence of them) as a list of objects with all three methods.

    A plain callable becomes an ``on_epoch_end``; an object lacking some methods gets no-ops for them.
    """
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    out = []
    for cb in callbacks:
        if any(hasattr(cb, m) for m in ("on_train_begin", "on_epoch_end", "on_train_end")):
            out.append(cb if isinstance(cb, Callback) else _Partial(cb))
        elif callable(cb):
            out.append(_Function(cb))
        else:
            raise ConfigError(f"a callback must have on_epoch_end (or be a function of (run, record)), "
                              f"got {type(cb).__name__}")
    return out


class _Partial(Callback):
    """An object with some of the methods: the missing ones do nothing."""

    def __init__(self, obj):
        self.obj = obj
        for m in ("on_train_begin", "on_epoch_end", "on_train_end"):
            if hasattr(obj, m):
                setattr(self, m, getattr(obj, m))


class Notifier:
    """What the training loop and the runner use to call a list of callbacks for a set of networks."""

    def __init__(self, callbacks, runs: Sequence[dict]):
        self.callbacks = as_callbacks(callbacks)
        self.runs = list(runs)

    def __bool__(self):
        return bool(self.callbacks)

    def begin(self):
        for info in self.runs:
            for cb in self.callbacks:
                cb.on_train_begin(info["run"], info)

    def epoch(self, records: Iterable):
        for info, rec in zip(self.runs, records):
            for cb in self.callbacks:
                cb.on_epoch_end(info["run"], rec)

    def end(self, histories: Iterable):
        for info, history in zip(self.runs, histories):
            for cb in self.callbacks:
                cb.on_train_end(info["run"], history)


def run_info(spec, seed: int, ensemble: Sequence[int], run: str | None = None, **extra) -> dict:
    """The ``info`` dict of ``on_train_begin`` for the network of ``spec`` with ``seed``."""
    from .experiments.store import spec_dict
    info = {"run": run or f"seed{seed}", "seed": int(seed), "label": spec.algorithm.describe(),
            "spec": spec_dict(spec), "ensemble": [int(s) for s in ensemble]}
    info.update(extra)
    return info


# --- TensorBoard ----------------------------------------------------------------------------------

_LAYERED = re.compile(r"^(.*)_(\d+)$")


def scalars(record) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch record (non-finite values left out).

    ``loss/train``, ``loss/test``, ``accuracy/train``, ``accuracy/test``,
    ``time/epoch_seconds`` (wall time of the epoch for the ensemble the network
    trained in), ``time/seconds_per_network`` (that divided by the ensemble's
    size), and every alignment figure ``NAME_h`` as ``NAME/layer_h``
    (``signal_angle/layer_1``, ``update_angle/layer_1``, ``feedback_angle/layer_1``,
    ``feedback_norm_ratio/layer_1``, ``weight_change/layer_1``, ...; angles in degrees).
    """
    out = {
        "loss/train": record.train_loss, "loss/test": record.test_loss,
        "accuracy/train": record.train_accuracy, "accuracy/test": record.test_accuracy,
        "time/epoch_seconds": record.seconds,
        "time/seconds_per_network": record.seconds / max(1, record.ensemble),
    }
    for key, value in record.alignment.items():
        m = _LAYERED.match(key)
        out[f"{m.group(1)}/layer_{m.group(2)}" if m else f"alignment/{key}"] = value
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard logging needs the tensorboard package: pip install 'rbp[tensorboard]'") \
            from None
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Write every network's epoch records as TensorBoard scalars, one event folder per network.

    ``TensorBoardLogger("tb")`` logs network ``CONFIG/seed0`` to ``tb/CONFIG/seed0``
    (``tb/seed0`` for ``rbp train``); ``tensorboard --logdir tb`` shows them side
    by side.  Tags are listed in :func:`scalars`; the step is the epoch.  The
    network's ``info`` is stored as the text ``config`` (JSON).  Needs the
    ``tensorboard`` package (``pip install 'rbp[tensorboard]'``); without it the
    constructor raises :class:`rbp.ConfigError` naming the extra.
    """

    def __init__(self, log_dir):
        self.SummaryWriter = _summary_writer()
        self.log_dir = Path(log_dir)
        self.writers: dict = {}

    def _writer(self, run):
        if run not in self.writers:
            self.writers[run] = self.SummaryWriter(log_dir=str(self.log_dir / run))
        return self.writers[run]

    def on_train_begin(self, run, info):
        text = json.dumps(info, indent=2, default=str)
        self._writer(run).add_text("config", "```\n" + text + "\n```", 0)

    def on_epoch_end(self, run, record):
        w = self._writer(run)
        for tag, value in scalars(record).items():
            w.add_scalar(tag, value, record.epoch)

    def on_train_end(self, run, history):
        w = self.writers.pop(run, None)
        if w is not None:
            w.close()

    def close(self):
        """Close every writer still open (after an interrupted run)."""
        for w in self.writers.values():
            w.close()
        self.writers.clear()
