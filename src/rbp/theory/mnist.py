"""Paper 3's MNIST experiment: a 784-1000-10 ReLU network, random feedback, a penalty on the output weights.

Song, Xu & Lafferty (2021) close their simulations with an MNIST network with
one hidden layer of 1000 ReLU units, trained with feedback alignment (a fixed
random matrix ``B`` carries the output error to the hidden layer) and a ridge
penalty ``lambda`` on the output weights only (``../shared/spec/PAPERS.md``,
paper 3). Their theory says the penalty is what makes the output weights
align with ``B``.

Nothing here is a new training loop: the network, the learning channel and
the minibatch loop are the engine's (:class:`rbp.train.Trainer`, algorithm
``rbp``, which for one hidden layer is feedback alignment). The only addition
is the penalty, applied by an optimizer that adds ``lambda W_out`` to the
output layer's gradient before the engine's SGD step, so the update of
``W_out`` is that of ``loss + (lambda/2) |W_out|^2``.

Our choices (the paper's are not in our sources): the engine's softmax
cross-entropy with the batch-mean loss (so ``lambda`` is in per-example
units), Glorot initialisation, minibatch 100, learning rate 0.1 with the
engine's Keras decay, no penalty on the biases or the hidden layer.
Alignment is measured by the engine's diagnostics on a fixed probe batch:
``feedback_angle_1`` is the angle between ``B`` and the output weights
``W_out`` (flattened, in the same orientation); we report its cosine.
"""

from __future__ import annotations

import math
import time

import torch

from ..channel.algorithm import algorithm as make_algorithm
from ..errors import ConfigError
from ..optim import KerasSGD
from ..train import Trainer, TrainSpec

__all__ = ["OutputPenaltySGD", "train_mnist_fa"]


class OutputPenaltySGD(KerasSGD):
    """:class:`rbp.optim.KerasSGD` with ``lam * p`` added to the gradient of the ``penalised`` tensors."""

    def __init__(self, params, penalised, lam: float, **kwargs):
        super().__init__(params, **kwargs)
        self.penalised = list(penalised)
        self.lam = float(lam)

    @torch.no_grad()
    def step(self, closure=None):
        if self.lam:
            for p in self.penalised:
                if p.grad is not None:
                    p.grad.add_(p, alpha=self.lam)
        return super().step(closure)


def _penalised_trainer(spec: TrainSpec, seeds, lam: float, dataset=None, probe_size: int = 1000) -> Trainer:
    tr = Trainer(spec, seeds, dataset, probe_size)
    out = tr.model.rbp_channel.sites[-1].weight
    tr.opt = OutputPenaltySGD([p for p in tr.model.parameters() if p.requires_grad], [out], lam,
                              lr=spec.lr, decay=spec.decay, momentum=spec.momentum)
    return tr


def train_mnist_fa(lam: float = 0.0, *, algorithm: str = "rbp", hidden: int = 1000, epochs: int = 10,
                   seeds=(0,), lr: float = 0.1, decay: float = 1e-6, batch_size: int = 100,
                   dataset="mnist", max_steps: int | None = None, probe_size: int = 1000,
                   on_epoch=None) -> list[list[dict]]:
    """Train ``784-hidden-10`` ReLU networks (one per seed, as one ensemble) with penalty ``lam``.

    ``algorithm`` is ``rbp`` (feedback alignment) or ``bp`` (the reference).
    ``dataset`` is a name for :func:`rbp.data.load` or a loaded
    :class:`rbp.data.Dataset`. ``max_steps`` cuts every epoch short (for
    tests). Returns, per seed, one dict per epoch with the losses, accuracies,
    ``alignment`` (cos of the angle between ``B`` and ``W_out``; ``None`` for
    ``bp``), ``out_norm`` (``|W_out|``) and ``seconds``.
    """
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"lambda must be a non-negative number, got {lam!r}")
    if algorithm not in ("rbp", "bp"):
        raise ConfigError(f"algorithm must be rbp (feedback alignment) or bp, got {algorithm!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"hidden width must be a positive integer, got {hidden!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("need at least one seed")
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", "mnist")
    spec = TrainSpec(dataset=name, algorithm=make_algorithm(algorithm), hidden=(hidden,), activation="relu",
                     epochs=epochs, batch_size=batch_size, lr=lr, decay=decay)
    tr = _penalised_trainer(spec, seeds, lam, None if isinstance(dataset, str) else dataset, probe_size)
    W = tr.model.rbp_channel.sites[-1].weight
    histories: list[list[dict]] = [[] for _ in seeds]
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = tr.train_epoch(max_steps=max_steps)
        test_loss, test_acc = tr.evaluate()
        seconds = time.perf_counter() - t0
        probes = tr.alignment()
        norms = W.detach().double().reshape(len(seeds), -1).norm(dim=1).tolist()
        rows = []
        for k, s in enumerate(seeds):
            angle = probes[k].get("feedback_angle_1")
            row = {"seed": s, "epoch": epoch, "lam": float(lam), "algorithm": algorithm,
                   "train_loss": train_loss[k], "train_accuracy": train_acc[k],
                   "test_loss": test_loss[k], "test_accuracy": test_acc[k],
                   "alignment": None if angle is None else math.cos(math.radians(angle)),
                   "feedback_angle": angle, "out_norm": norms[k], "seconds": seconds}
            histories[k].append(row)
            rows.append(row)
        if on_epoch is not None:
            on_epoch(rows)
    return histories
