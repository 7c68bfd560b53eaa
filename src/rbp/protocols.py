"""The papers' training protocols: the one table every default of rbp is read from.

``rbp train`` (its flags' defaults), :class:`rbp.train.TrainSpec` (its field
defaults) and the experiment files (the ``[protocol]`` keys a file leaves out)
all take their numbers from here, chosen by the dataset; ``CHECKS`` is the one
check of every field, which ``TrainSpec.validate`` and the experiment files use:

* **MNIST protocol** (paper 1, section 4.1), used for digits, MNIST and
  Fashion-MNIST: the 784-100-100-100-100-10 tanh network (input and output
  sizes from the data), minibatch 100, plain SGD with learning rate 0.1
  decayed as 0.1 / (1 + 1e-6 t), 100 epochs, 5 seeds.
* **CIFAR-10 protocol** (paper 1, section 4.3): the convolutional network
  :func:`rbp.models.cifar_convnet` (3 x [5x5 conv, 64 tanh channels, 3x3 max
  pool stride 2], a dense layer of 1024 tanh units), minibatch 128, SGD with
  momentum 0.9, learning rate 0.01 decayed by 1e-5 per update, random
  translations up to 10 % and horizontal flips, 100 epochs, 5 seeds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Protocol:
    """How a network is trained, apart from the algorithm and the seed."""

    epochs: int = 100
    seeds: int = 5
    batch_size: int = 100
    lr: float = 0.1
    decay: float = 1e-6              # lr_t = lr / (1 + decay t), t = update count
    momentum: float = 0.0
    hidden: tuple = (100, 100, 100, 100)
    activation: str = "tanh"
    frozen: tuple = ()               # 1-based weight layers that do not learn
    model: str = "mlp"               # "mlp" (sizes from hidden) or a network of rbp.models
    augment: bool = False            # random translations (<= 10 %) and horizontal flips
    optimizer: str = "sgd"           # "sgd" (rbp.optim.KerasSGD) or "adam" (rbp.optim.Adam), same lr schedule

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


MNIST = Protocol()
CIFAR10 = Protocol(batch_size=128, lr=0.01, decay=1e-5, momentum=0.9, model="cifar_convnet", augment=True)

# ----------------------------------------------------------------------------- the checks of every field
# One table: TrainSpec.validate and the experiment files' [protocol] keys (and a configuration's
# overrides) check with it.  Upper bounds: far beyond any experiment of the papers, low enough to
# catch a typo before it allocates.

def _int(key, lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key} must be an integer {lo}..{hi}, got {v!r}")
        return v
    return check


def _number(key, lo, hi=None, lo_open=False):
    def check(v):
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v < hi)
        if not ok:
            rng = ("(" if lo_open else "[") + f"{lo:g}, " + (f"{hi:g})" if hi is not None else "inf)")
            raise ConfigError(f"{key} must be a number in {rng}, got {v!r}")
        return float(v)
    return check


def _ints(key, allow_empty, hi=None):
    def check(v):
        if not isinstance(v, (list, tuple)) or (not v and not allow_empty) or any(
                isinstance(x, bool) or not isinstance(x, int) or x < 1 or (hi is not None and x > hi) for x in v):
            rng = f"in 1..{hi}" if hi is not None else ">= 1"
            raise ConfigError(f"{key} must be a list of integers {rng}{'' if allow_empty else ' (not empty)'}, "
                              f"got {v!r}")
        return tuple(v)
    return check


def _activation(v):
    from .channel.transfer import ALIASES, TRANSFER
    names = (*TRANSFER, *ALIASES)
    if not isinstance(v, str) or v not in names:
        raise ConfigError(f"activation must be one of {', '.join(names)}, got {v!r}")
    return v


def _model(v):
    if not isinstance(v, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
        raise ConfigError(f"model must be the name of a network (letters, digits, _), got {v!r}")
    return v


def _bool(key):
    def check(v):
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false, got {v!r}")
        return v
    return check


def _optimizer(v):
    if v not in ("sgd", "adam"):
        raise ConfigError(f"optimizer must be one of sgd, adam, got {v!r}")
    return v


CHECKS = {
    "epochs": _int("epochs", 1, 100_000), "seeds": _int("seeds", 1, 10_000),
    "batch_size": _int("batch_size", 1, 1_000_000),
    "lr": _number("lr", 0, lo_open=True), "decay": _number("decay", 0), "momentum": _number("momentum", 0, 1),
    "hidden": _ints("hidden", False, 100_000), "activation": _activation, "frozen": _ints("frozen", True),
    "model": _model, "augment": _bool("augment"), "optimizer": _optimizer,
}
assert set(CHECKS) == {f.name for f in dataclasses.fields(Protocol)}


def check(key: str, value):
    """``value`` of protocol field ``key``, checked (ConfigError: one line naming the key) and normalised."""
    return CHECKS[key](value)


#: dataset name -> its paper protocol
PROTOCOLS = {"digits": MNIST, "mnist": MNIST, "fashion-mnist": MNIST, "cifar10": CIFAR10}

#: the dataset rbp trains on when none is named (bundled: nothing to download)
DEFAULT_DATASET = "digits"


def protocol(dataset: str) -> Protocol:
    """The paper protocol for ``dataset``."""
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in PROTOCOLS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]
