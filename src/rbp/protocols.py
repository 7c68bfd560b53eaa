"""The papers' training protocols: the one table every default of rbp is read from.

``rbp train`` (its flags' defaults), :class:`rbp.train.TrainSpec` (its field
defaults) and the experiment files (the ``[protocol]`` keys a file leaves out)
all take their numbers from here, chosen by the dataset:

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
