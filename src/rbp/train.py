"""The training loop: one network or an ensemble of networks, the paper's protocol.

The paper's MNIST protocol (paper 1, section 4.1): 784-100-100-100-100-10 tanh
network, softmax output, Glorot scaled-normal weights, minibatch 100, plain
SGD with learning rate 0.1 decayed as 0.1 / (1 + 1e-6 t), 100 epochs.

Several seeds of the same configuration train together as an *ensemble*: the
networks' weights are stacked and every layer is one batched matmul.  Each
member keeps its own random streams (initial weights, feedback matrices,
shuffling, channel noise), so member k follows the same trajectory, up to
float rounding, as the network trained alone with seed k.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment as augmentation
from . import data as datasets
from ._malloc import retain_freed_memory
from .channel.algorithm import Algorithm, algorithm as make_algorithm, training_signature
from .channel.noise import generator
from .errors import ConfigError
from .diagnostics import Settling, alignment, model_alignment
from .models import cifar_convnet, lenet, mlp, resnet20, vit
from .nn.convert import convert
from .nn.conv import use_channels_last
from .nn.fused import FusedNetwork, softmax_xent_grad
from .optim import OPTIMIZERS, KerasSGD, make_optimizer
from .protocols import CHECKS as PROTOCOL_CHECKS, DEFAULT_DATASET, MNIST, protocol as paper_protocol

PAPER_HIDDEN = MNIST.hidden

# Network families a TrainSpec can name: "mlp" (sizes from ``hidden``) or paper 1's CIFAR-10
# convolutional network (rbp.models.cifar_convnet; ``hidden`` is not used).
MODELS = ("mlp", "convnet", "cifar_convnet", "lenet", "resnet20", "vit")
CONV_MODELS = {"convnet": cifar_convnet, "cifar_convnet": cifar_convnet, "lenet": lenet, "resnet20": resnet20,
               "vit": vit}     # image-layout models (vit: rbp.models.vit's defaults)
# vit: patch conv, position table, 4 x (in_proj, out_proj, linear1, linear2), head
CONV_WEIGHT_LAYERS = {"convnet": 5, "cifar_convnet": 5, "lenet": 5, "resnet20": 20, "vit": 19}
SINGLE_ONLY = ("resnet20", "vit")   # image models without an ensemble layout (batch norm, layer norm)
CHECKPOINT_COST_FACTOR = 20   # train at least 20x as long as the last checkpoint took to write before the next
CONV_PROBE = 256           # examples in the alignment probe batch of a conv net (rbp.diagnostics)


@dataclass
class TrainSpec:
    """Everything that defines a training run except the seed.

    The defaults are the MNIST protocol of `rbp.protocols` (digits as the dataset);
    `TrainSpec.paper(dataset)` gives a dataset's own protocol (CIFAR-10's conv net for cifar10).

    Attributes:
        dataset: a name of `rbp.data.DATASETS`.
        algorithm: the learning channel (`rbp.algorithm(name, **options)`).
        hidden: hidden layer sizes of the MLP.
        activation: hidden units: tanh, relu, logistic or linear.
        epochs: passes over the training set.
        batch_size: examples per minibatch.
        lr: learning rate; at update t it is lr / (1 + decay t) (`rbp.optim.KerasSGD`).
        decay: the learning-rate decay above.
        momentum: SGD momentum, in [0, 1).
        device: "cpu" or "cuda".
        driver: "fused" (no autograd graph, for plain stacks of linear layers) or "autograd";
            both give the same gradients.
        frozen: 1-based indices of weight layers that do not learn.
        model: "mlp", or "convnet" for paper 1's CIFAR-10 network.
        augment: random translations (up to 10 %) and horizontal flips, drawn per minibatch.
        optimizer: "sgd" (`rbp.optim.KerasSGD`) or "adam" (`rbp.optim.Adam`, same lr schedule, no momentum).
    """

    dataset: str = DEFAULT_DATASET
    algorithm: Algorithm = field(default_factory=lambda: make_algorithm("bp"))
    hidden: tuple = MNIST.hidden
    activation: str = MNIST.activation
    epochs: int = MNIST.epochs
    batch_size: int = MNIST.batch_size
    lr: float = MNIST.lr
    decay: float = MNIST.decay
    momentum: float = MNIST.momentum
    device: str = "cpu"
    driver: str = "fused"      # "fused" or "autograd"
    frozen: tuple = MNIST.frozen       # 1-based indices of weight layers that do not learn
    model: str = MNIST.model           # "mlp" or "convnet" (alias "cifar_convnet"): see MODELS
    augment: bool = MNIST.augment      # random translations (<= 10 %) and horizontal flips, per minibatch
    optimizer: str = MNIST.optimizer   # "sgd" (KerasSGD, with momentum) or "adam" (rbp.optim.Adam)

    @classmethod
    def paper(cls, dataset: str = DEFAULT_DATASET, **overrides) -> "TrainSpec":
        """The paper protocol of ``dataset`` (:func:`rbp.protocols.protocol`), with ``overrides``
        (any field; ``None`` values are ignored, so unset command-line flags keep the protocol)."""
        proto = paper_protocol(dataset).as_dict()
        proto.pop("seeds")
        fields = {**proto, "dataset": dataset}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    def validate(self):
        if self.dataset not in datasets.DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(datasets.DATASETS)}")
        for key in PROTOCOL_CHECKS:              # the protocol's fields: the one table of checks (rbp.protocols)
            if key != "seeds":
                PROTOCOL_CHECKS[key](getattr(self, key))
        if self.driver not in ("fused", "autograd"):
            raise ConfigError(f"driver must be 'fused' or 'autograd', got {self.driver!r}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.momentum:
            raise ConfigError("momentum is SGD's; adam keeps its own running averages (set momentum to 0)")
        n_layers = len(self.hidden) + 1 if self.model == "mlp" else CONV_WEIGHT_LAYERS[self.model]
        for h in self.frozen:
            if not (isinstance(h, int) and 1 <= h <= n_layers):
                raise ConfigError(f"frozen layer {h!r} out of range 1..{n_layers}")
        check_device(self.device)
        return self


def mixable(a: TrainSpec, b: TrainSpec) -> bool:
    """True when ``a`` and ``b`` run the same training step and differ at most in the initial state
    of their algorithm (feedback distribution and scale, initial weight scale), so that their
    networks can train as one mixed ensemble."""
    return (dataclasses.replace(a, algorithm=training_signature(a.algorithm))
            == dataclasses.replace(b, algorithm=training_signature(b.algorithm)))


def check_device(device: str):
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return dev


@dataclass
class EpochRecord:
    """The numbers of one network after one epoch.

    Attributes:
        seed: the network's seed.
        epoch: 1, 2, ...
        train_loss: mean cross-entropy over the epoch's minibatches, each measured before its update.
        train_accuracy: fraction correct, measured the same way.
        test_loss: mean cross-entropy on the test set after the epoch.
        test_accuracy: fraction correct on the test set after the epoch.
        seconds: wall time of the epoch (training and test evaluation) for the whole ensemble.
        ensemble: how many networks shared that time.
        diverged: whether the loss has become NaN or infinite (at this epoch or before).
        alignment: the figures of `rbp.diagnostics` (``signal_angle_h``, ``update_angle_h``,
            ``feedback_angle_h``, ``feedback_norm_ratio_h`` per hidden layer h, ``weight_change_i``,
            ``feedback_change_h``), measured on a fixed probe batch after the epoch.
    """

    seed: int
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float        # wall time of this epoch for the whole ensemble
    ensemble: int = 1     # how many networks shared that time
    diverged: bool = False
    alignment: dict = field(default_factory=dict)   # see rbp.diagnostics

    def as_dict(self):
        """A flat row: the fields, then one column per alignment figure."""
        row = asdict(self)
        row.update(row.pop("alignment"))
        return row

    def metrics(self) -> dict:
        """The numbers of the epoch as one flat dict (losses, accuracies, seconds, alignment figures):
        what a logger sends (:mod:`rbp.callbacks`)."""
        row = self.as_dict()
        for key in ("seed", "epoch", "ensemble", "diverged"):
            row.pop(key)
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "EpochRecord":
        """The record of a flat row of :meth:`as_dict` (a stored or returned history); missing values are NaN."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "alignment"]
        kw = {k: row[k] for k in names if k in row}
        for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"):
            if kw.get(k) is None:
                kw[k] = math.nan
        rest = {k: (math.nan if v is None else v) for k, v in row.items() if k not in names}
        return cls(**kw, alignment=rest)


def build(spec: TrainSpec, seeds: Sequence[int], input_dim: int, num_classes: int,
          input_shape: tuple | None = None, member_algorithms: Sequence | None = None) -> nn.Module:
    """The converted network for ``seeds`` (an ensemble when more than one).

    ``member_algorithms`` (one per seed) makes a mixed ensemble (:func:`rbp.convert`).

    Convolutional models (``spec.model`` in CONV_MODELS) need the image shape
    ``input_shape`` = (C, H, W); several seeds make one ensemble whose
    convolutions are grouped convolutions (docs/conv.md).
    """
    seeds = list(seeds)
    if spec.model in CONV_MODELS:
        if input_shape is None or len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ConfigError(f"model {spec.model!r} needs square images (C, H, H), got input shape {input_shape}")
        ensemble = seeds if len(seeds) > 1 else None
        model = CONV_MODELS[spec.model](input_shape[0], input_shape[1], num_classes, spec.activation, seed=seeds[0],
                                        ensemble=ensemble)
        lead = (len(seeds),) if ensemble else ()
        model = convert(model, spec.algorithm, seed=seeds if ensemble else seeds[0], inplace=True,
                        example_input=torch.zeros(*lead, 1, *input_shape),
                        member_algorithms=member_algorithms if ensemble else None)
    else:
        sizes = [input_dim, *spec.hidden, num_classes]
        ensemble = seeds if len(seeds) > 1 else None
        model = mlp(sizes, spec.activation, seed=seeds[0], ensemble=ensemble)
        model = convert(model, spec.algorithm, seed=seeds if ensemble else seeds[0], inplace=True,
                        member_algorithms=member_algorithms if ensemble else None)
    freeze(model, spec.frozen)
    return model.to(spec.device)


def weight_layers(model: nn.Module) -> list:
    """The weight layers of a converted model, 1-based in ``frozen``: the channel's sites, in forward order
    (attention's input projections and each matrix of a recurrent layer count, as the channel serves them)."""
    return list(model.rbp_channel.sites)


def _parameters_of(site, h: int) -> list:
    """The Parameter objects weight layer ``h`` (a site) reads its weight and bias from."""
    out = []
    for t in (site.weight, site.bias):
        if t is None:
            continue
        base = t if isinstance(t, nn.Parameter) else getattr(t, "_base", None)
        if not isinstance(base, nn.Parameter) or base.numel() != t.numel():
            raise ConfigError(f"frozen layer {h} ({site!r}) is a block of a parameter that other weight layers share; "
                              "it cannot be frozen alone")
        out.append(base)
    return out


def freeze(model: nn.Module, frozen: Sequence[int]) -> None:
    """Keep the 1-based weight layers ``frozen`` of a converted model fixed (:func:`weight_layers`)."""
    layers = weight_layers(model)
    for h in frozen:
        if not (isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= len(layers)):
            raise ConfigError(f"frozen layer {h!r} out of range 1..{len(layers)} (the model's weight layers)")
        for p in _parameters_of(layers[h - 1], h):
            p.requires_grad_(False)


class _Stepper:
    """One training step with either driver; both fill ``.grad`` the same way."""

    def __init__(self, model, driver):
        self.model = model
        self.fused = FusedNetwork(model) if driver == "fused" and FusedNetwork.plan(model) else None

    def gradients(self, x, y):
        if self.fused is not None:
            return self.fused.step_gradients(x, y)
        for p in self.model.parameters():
            p.grad = None
        logits = self.model(x)
        K = logits.shape[0] if logits.dim() == 3 else None
        if K:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            loss = loss / logits.shape[1]
        else:
            loss = F.cross_entropy(logits, y)
        loss.backward()
        return logits.detach()

    @torch.no_grad()
    def logits(self, x):
        if self.fused is not None:
            return self.fused.forward(x)
        return self.model(x)


def _stats(logits, y):
    """Summed cross-entropy and number correct, per network (last dim classes)."""
    logp = torch.log_softmax(logits, dim=-1)
    loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(-1)
    correct = (logits.argmax(-1) == y).sum(-1)
    return loss, correct


@torch.no_grad()
def evaluate(stepper, x, y, K, chunk=2000):
    """Mean loss and accuracy of each network on (x, y); returns two lists of length K.

    ``chunk`` examples per network at a time (an image ensemble keeps chunk x K maps).
    """
    if K and x.dim() > 2:
        chunk = max(1, chunk // K)
    loss = torch.zeros(K or 1, dtype=torch.float64, device=x.device)
    correct = torch.zeros(K or 1, dtype=torch.int64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        if K:
            xb = xb.unsqueeze(0).expand(K, *xb.shape).contiguous()
            yb = yb.unsqueeze(0).expand(K, -1)
        l, c = _stats(stepper.logits(xb), yb)
        loss += l.double()
        correct += c
    n = x.shape[0]
    return (loss / n).tolist(), (correct.double() / n).tolist()


class Trainer:
    """The state of one training group (one network, or an ensemble of networks with the same spec).

    ``member_specs`` (one per seed) makes a mixed ensemble: specs that differ only
    in the initial state of their algorithm (:func:`mixable`) train together,
    member k initialised as ``member_specs[k]`` would be alone.
    """

    def __init__(self, spec: TrainSpec, seeds: Sequence[int], dataset=None, probe_size: int = 1000,
                 member_specs: Sequence[TrainSpec] | None = None):
        spec.validate()
        self.seeds = [int(s) for s in seeds]
        members = None
        if member_specs is not None:
            member_specs = list(member_specs)
            if len(member_specs) != len(self.seeds):
                raise ConfigError(f"{len(member_specs)} member specs for {len(self.seeds)} seeds")
            for m in member_specs:
                if not mixable(spec, m):
                    raise ConfigError(f"{m.algorithm.describe()} cannot train in one ensemble with "
                                      f"{spec.algorithm.describe()}: they differ in more than the initial state")
            if len(self.seeds) == 1:
                spec = member_specs[0]
            else:
                members = [m.algorithm for m in member_specs]
        self.spec = spec
        raw = dataset or datasets.load(spec.dataset)
        self.image_shape = raw.input_shape          # before flattening (augmentation needs it)
        conv = spec.model in CONV_MODELS
        if (conv or spec.augment) and len(self.image_shape) != 3:
            raise ConfigError(f"{'model ' + repr(spec.model) if conv else 'augment'} needs image inputs "
                              f"(C, H, W); the dataset's inputs have shape {self.image_shape}")
        ds = raw if conv else raw.flat()             # conv nets keep the image layout
        dev = check_device(spec.device)
        self.x_train, self.y_train = ds.x_train.to(dev), ds.y_train.to(dev)
        self.x_test, self.y_test = ds.x_test.to(dev), ds.y_test.to(dev)
        self.K = len(self.seeds) if len(self.seeds) > 1 else None
        self.model = build(spec, self.seeds, ds.input_dim, ds.num_classes, self.image_shape, members)
        if conv and self.K is None and dev.type == "cpu":   # measured faster here (docs/performance.md)
            use_channels_last(self.model)
            retain_freed_memory()
        self.channel = self.model.rbp_channel
        self.stepper = _Stepper(self.model, spec.driver)
        self.opt = make_optimizer(spec.optimizer, [p for p in self.model.parameters() if p.requires_grad],
                                  lr=spec.lr, decay=spec.decay, momentum=spec.momentum)
        self.data_gens = [generator(s, "data") for s in self.seeds]
        self.probe_batch = None
        if probe_size:
            if conv:        # the conv channel keeps every map of the probe batch: a smaller probe
                probe_size = min(probe_size, CONV_PROBE)
            px, py = self.x_train[:probe_size], self.y_train[:probe_size]
            K = self.K
            self.probe_batch = (px.unsqueeze(0).expand(K, *px.shape).contiguous(),
                                py.unsqueeze(0).expand(K, -1)) if K else (px, py)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.x_train.shape[0] // self.spec.batch_size)

    def train_epoch(self, on_step=None, max_steps: int | None = None):
        """One pass over the shuffled training set (or its first ``max_steps`` minibatches).

        Returns per-network mean training loss and accuracy over the examples seen,
        measured on each minibatch before its update (as Keras reports them).
        """
        n, B, K = self.x_train.shape[0], self.spec.batch_size, self.K
        dev = self.x_train.device
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.data_gens]).to(dev)
        aug = None
        if self.spec.augment:   # a few numbers per image from each network's data stream, moved once
            drawn = [augmentation.draw(n, self.image_shape, g) for g in self.data_gens]
            aug = augmentation.Params(torch.stack([p.dy for p in drawn]), torch.stack([p.dx for p in drawn]),
                                      torch.stack([p.flip for p in drawn])).to(dev)
        run_loss = torch.zeros(len(self.seeds), dtype=torch.float64, device=dev)
        run_correct = torch.zeros(len(self.seeds), dtype=torch.int64, device=dev)
        seen = 0
        for step, i in enumerate(range(0, n, B)):
            if max_steps is not None and step >= max_steps:
                break
            idx = perms[:, i:i + B] if K else perms[0, i:i + B]
            xb = self.x_train.index_select(0, idx.reshape(-1)).view(*idx.shape, *self.x_train.shape[1:])
            yb = self.y_train[idx]
            if aug is not None:
                xb = self._augment(xb, aug[:, i:i + B] if K else aug[0, i:i + B])
            logits = self.stepper.gradients(xb, yb)
            self.opt.step()
            self.channel.after_step()      # the learning channel's own phase between steps (weight mirrors)
            l, c = _stats(logits, yb)
            run_loss += l.double().reshape(-1)
            run_correct += c.reshape(-1)
            seen += yb.shape[-1]
            if on_step is not None:
                on_step(1)
        return (run_loss / seen).tolist(), (run_correct.double() / seen).tolist()

    def _augment(self, xb, params):
        """Translate and flip a minibatch on the device (flat MLP inputs are viewed as images)."""
        if self.spec.model in CONV_MODELS:
            return augmentation.apply(xb, params)
        return augmentation.apply(xb.reshape(*xb.shape[:-1], *self.image_shape), params).reshape(xb.shape)

    def evaluate(self):
        return evaluate(self.stepper, self.x_test, self.y_test, self.K)

    def state_dict(self) -> dict:
        """Everything the next epoch depends on: the model (weights, feedback, every buffer of the
        channel), the optimizer (momentum, the update count that sets the learning rate), the state
        of every random stream (each network's data stream, the channel's noise streams, torch's
        global generator), as tensors and plain values (``torch.load(..., weights_only=True)`` reads it).
        """
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "data_streams": [g.get_state() for g in self.data_gens],
                "noise_streams": self.channel.noise.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict):
        """Continue from :meth:`state_dict` (taken from a Trainer built from the same spec and seeds)."""
        if len(state["data_streams"]) != len(self.data_gens):
            raise ConfigError(f"the checkpoint holds {len(state['data_streams'])} networks, this group "
                              f"{len(self.data_gens)}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for g, st in zip(self.data_gens, state["data_streams"]):
            g.set_state(st)
        self.channel.noise.load_state_dict(state["noise_streams"])
        torch.set_rng_state(state["torch_rng"])
        if self.stepper.fused is not None:          # the fused driver keeps its own view of the weights
            self.stepper = _Stepper(self.model, self.spec.driver)

    def alignment(self):
        if self.probe_batch is None:
            return [{} for _ in self.seeds]
        if self.stepper.fused is not None:
            return alignment(self.stepper.fused, *self.probe_batch)
        return model_alignment(self.model, *self.probe_batch)


def train_group(spec: TrainSpec, seeds: Sequence[int], dataset=None,
                on_step: Callable[[int], None] | None = None,
                on_epoch: Callable[[list[EpochRecord]], None] | None = None,
                probe_size: int = 1000, member_specs: Sequence[TrainSpec] | None = None,
                callbacks=None, runs: Sequence[dict] | None = None, checkpoint=None):
    """Train one network per seed, all together; returns (model, list of histories per seed).

    ``checkpoint`` makes the group resumable: an object with ``load()``, which gives
    ``(state, histories)`` saved by an earlier process (or None), and
    ``save(state, histories)``, called at the end of every epoch with
    :meth:`Trainer.state_dict` (live tensors: serialise or copy them before returning)
    and the histories so far (as lists of flat dicts); when
    epochs are so short that this would cost more than 5 % of the training time
    (``CHECKPOINT_COST_FACTOR``), at the end of every few epochs and of the last.  A
    group resumed from epoch n continues exactly as if it had never stopped: the
    same weights, histories and random streams, bit for bit (on the same machine
    and thread count).  Callbacks hear of the epochs trained in this call only.

    ``callbacks`` (:mod:`rbp.callbacks`) hear of every network's start, epochs and
    end; ``runs`` (one dict per seed) names the networks for them (key ``"run"``,
    default ``seed<k>``) and adds what else ``on_train_begin`` should see.
    ``on_epoch(records)`` is the older hook: all networks' records of an epoch at once.

    ``member_specs`` (one per seed) mixes configurations that differ only in their
    initial state into one ensemble (:class:`Trainer`, :func:`mixable`).

    After every epoch the alignment figures of :mod:`rbp.diagnostics` are measured
    on a fixed probe batch (the first ``probe_size`` training examples, at most
    ``CONV_PROBE`` for conv nets; 0 turns it off), with the relative change of every weight and adaptive feedback
    matrix over the epoch (:class:`rbp.diagnostics.Settling`).  The probe draws no
    random numbers, so it does not change training.
    A network whose loss becomes NaN or infinite is marked ``diverged``; the
    group stops when all have diverged.
    """
    tr = Trainer(spec, seeds, dataset, probe_size, member_specs)
    histories: list[list[EpochRecord]] = [[] for _ in tr.seeds]
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        state, rows = saved
        if len(rows) != len(tr.seeds) or len({len(h) for h in rows}) != 1:
            raise ConfigError("the checkpoint's histories do not match this group")
        tr.load_state_dict(state)
        histories = [[EpochRecord.from_dict(r) for r in h] for h in rows]
    notify = None
    if callbacks:
        from .callbacks import Notifier, run_info
        specs = list(member_specs) if member_specs is not None else [tr.spec] * len(tr.seeds)
        extra = list(runs) if runs is not None else [{} for _ in tr.seeds]
        if len(extra) != len(tr.seeds):
            raise ConfigError(f"{len(extra)} run descriptions for {len(tr.seeds)} seeds")
        notify = Notifier(callbacks, [run_info(sp, s, tr.seeds, **e) for sp, s, e in zip(specs, tr.seeds, extra)])
        notify.begin()
    diverged = [bool(h and h[-1].diverged) for h in histories]
    settling = Settling(tr.model) if probe_size else None     # (the weights at the end of the last epoch)
    start = len(histories[0]) + 1
    last_save, save_cost = time.perf_counter(), 0.0
    for epoch in range(start, spec.epochs + 1 if not all(diverged) else start):
        t0 = time.perf_counter()
        tl, tc = tr.train_epoch(on_step)
        test_loss, test_acc = tr.evaluate()
        seconds = time.perf_counter() - t0
        aligned = tr.alignment()
        if settling is not None:
            for a, changes in zip(aligned, settling()):
                a.update(changes)
        records = []
        for k, s in enumerate(tr.seeds):
            bad = not (math.isfinite(tl[k]) and math.isfinite(test_loss[k]))
            diverged[k] = diverged[k] or bad
            rec = EpochRecord(s, epoch, tl[k], tc[k], test_loss[k], test_acc[k], seconds, len(tr.seeds),
                              diverged[k], aligned[k])
            histories[k].append(rec)
            records.append(rec)
        if on_epoch is not None:
            on_epoch(records)
        if notify:
            notify.epoch(records)
        # a checkpoint at the end of the epoch, unless epochs are so short that writing one every epoch
        # would cost more than 1/CHECKPOINT_COST_FACTOR of the training time (then every few epochs)
        if checkpoint is not None and (epoch == spec.epochs or all(diverged)
                                       or time.perf_counter() - last_save >= CHECKPOINT_COST_FACTOR * save_cost):
            t_save = time.perf_counter()
            checkpoint.save(tr.state_dict(), [[r.as_dict() for r in h] for h in histories])
            last_save = time.perf_counter()
            save_cost = last_save - t_save
        if all(diverged):
            break
    if notify:
        notify.end(histories)
    return tr.model, histories


def available_memory(device) -> int:
    """Bytes of memory free for tensors on ``device`` (an estimate)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:  # not Linux: assume a laptop-sized budget
        return 4 << 30


def _conv_units(input_shape, num_classes, name="convnet") -> tuple[int, int]:
    """(parameters, units of the maps per example) of conv model ``name`` on images of ``input_shape``."""
    model = CONV_MODELS[name](input_shape[0], input_shape[1], num_classes)
    params = sum(p.numel() for p in model.parameters())
    units, x = 0, torch.zeros(1, *input_shape)
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            units += x.numel()
    return params, units


def ensemble_capacity(spec: TrainSpec, input_dim: int, num_classes: int, memory: int | None = None,
                      input_shape: tuple | None = None) -> int:
    """How many networks of ``spec`` fit in one ensemble, using at most half the free memory.

    Per network: the parameters with their feedback, gradients and velocities
    (x4), the activations of a minibatch kept for the learning channel, and the
    chunk of per-example update tensors of the quantized-update operator.
    Conv models train one at a time on CPU (grouped convolutions do not pay there);
    elsewhere they need the image shape ``input_shape``; their activations are every
    map of the forward pass, counted four times (kept, signal, and the
    temporaries of the grouped convolutions).
    """
    memory = available_memory(spec.device) if memory is None else memory
    if spec.model in SINGLE_ONLY or spec.algorithm.blocks:     # srbp's block mode: one network at a time
        return 1
    if spec.model in CONV_MODELS:
        if torch.device(spec.device).type == "cpu":
            # measured (docs/conv.md): oneDNN's grouped convolutions are slower per network than
            # the members' convolutions one after another, so on CPU conv seeds train one by one
            return 1
        if input_shape is None:
            raise ConfigError(f"ensemble_capacity for model {spec.model!r} needs the image shape")
        params, units = _conv_units(tuple(input_shape), num_classes, spec.model)
        per_net = 4 * (4 * params + 4 * spec.batch_size * units)
        return max(1, int(memory // 2 // per_net))
    sizes = [input_dim, *spec.hidden, num_classes]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    per_net = 4 * (4 * params + 4 * spec.batch_size * sum(sizes))
    if spec.algorithm.quantize_update:
        # the PyTorch path forms each network's per-example updates a few examples at a time (at
        # least one layer-sized tensor and two temporaries); the compiled kernel forms none
        per_net += 4 * 3 * max(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return max(1, int(memory // 2 // per_net))


def train(spec: TrainSpec, seeds: Sequence[int], dataset=None, ensemble: bool = True,
          max_ensemble: int | None = None, runs: Sequence[dict] | None = None, **callbacks):
    """Train every seed; returns histories per seed, in the order of ``seeds``.

    With ``ensemble`` (the default) the seeds train together in batched
    ensembles as large as memory allows (or ``max_ensemble``); otherwise one after
    another.  The numbers are the same either way, up to float rounding.
    Keyword arguments (``on_step``, ``on_epoch``, ``callbacks``, ``probe_size``)
    go to :func:`train_group`; ``runs`` has one entry per seed.
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("need at least one seed")
    ds = dataset or datasets.load(spec.dataset)    # Trainer flattens it for MLPs
    if ensemble:
        size = max_ensemble or ensemble_capacity(spec, ds.input_dim, ds.num_classes,
                                                 input_shape=ds.input_shape)
    else:
        size = 1
    out = []
    for i in range(0, len(seeds), size):
        part = None if runs is None else list(runs)[i:i + size]
        out.extend(train_group(spec, seeds[i:i + size], ds, runs=part, **callbacks)[1])
    return out
