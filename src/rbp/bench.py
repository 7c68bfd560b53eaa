"""``rbp bench``: the speed of the learning channel against a plain PyTorch loop, in one process.

Variants, each timed on the same data (by default synthetic MNIST-shaped data,
60000 x 784 uniform numbers, 10 classes; with ``--data mnist`` the real
training set, whose pixels are 81 % zeros) with the paper's network and minibatch of 100:

* ``reference``: ``torch.nn`` layers, ``torch.optim.SGD`` and ``loss.backward()``;
* ``bp``, ``rbp``, ``srbp``: this library's training loop (``rbp.train.Trainer``);
* the same as ensembles of K networks trained as one batched computation.

With ``--model convnet`` the network is paper 1's CIFAR-10 conv net
(:func:`rbp.models.cifar_convnet`) under its protocol (minibatch 128, momentum 0.9,
lr 0.01, augmentation), on synthetic CIFAR-shaped data (50000 x 3 x 32 x 32) or
with ``--data cifar10`` the real training set; one epoch is 391 minibatches:

* ``reference``: the same network in plain PyTorch (``nn.Conv2d`` ..., NCHW
  tensors, ``torch.optim.SGD`` with momentum, ``loss.backward()``), the same
  vectorised augmentation (:mod:`rbp.augment`) on each minibatch;
* ``reference-cl``: that loop with the model and input in channels-last memory
  format (the usual PyTorch tuning, ``model.to(memory_format=torch.channels_last)``);
* ``bp``, ``rbp``, ``srbp``: :class:`rbp.train.Trainer` as ``rbp train`` runs it.

The conv variants run under the allocator setting the trainer uses
(:func:`rbp._malloc.retain_freed_memory`), the reference loops included.

Timings are interleaved (every repeat times every variant once, in turn) so
that slow drifts of the machine affect all variants alike; each figure is the
median over repeats of the time for ``steps`` minibatches, scaled to one epoch
(600 minibatches for the MLP).  Ratios are against the reference loop of the same process.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment as augmentation
from ._malloc import retain_freed_memory
from .channel.algorithm import Algorithm, algorithm, parse_variant
from .channel.routes import route_of
from .data import Dataset
from .errors import ConfigError
from .models import MNIST_SIZES, cifar_convnet
from .train import TrainSpec, Trainer, check_device

N_TRAIN, BATCH = 60000, 100
CIFAR_TRAIN, CIFAR_BATCH = 50000, 128
MODELS = ("mlp", "convnet", "wide-mlp", "narrow-mlp", "transformer", "resnet18-cifar", "gpt")
# timed on the autograd path: rbp.convert in a plain loop
GRAPH_MODELS = ("wide-mlp", "narrow-mlp", "transformer", "resnet18-cifar", "gpt")


def synthetic_mnist(device="cpu", seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_TRAIN, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_TRAIN,), generator=g)
    xt = torch.rand(1000, 1, 28, 28, generator=g)
    yt = torch.randint(0, 10, (1000,), generator=g)
    return Dataset("synthetic-mnist", x, y, xt, yt, (1, 28, 28), 10)


def _route(alg):
    return route_of(alg if isinstance(alg, Algorithm) else algorithm(alg))


def channel_flops(sizes, alg) -> float:
    """Multiply-adds x 2 per example for one training step (forward, weight updates, learning channel).

    The channel's count is the route's (:meth:`rbp.channel.routes.Route.channel_cost`, as ``rbp cost``).
    """
    forward = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    updates = forward
    channel, _ = _route(alg).channel_cost(list(sizes))
    return 2.0 * (forward + updates + channel)


class _Reference:
    """A plain PyTorch training loop over the same data."""

    def __init__(self, ds, device):
        torch.manual_seed(0)
        layers = []
        for i, (a, b) in enumerate(zip(MNIST_SIZES[:-1], MNIST_SIZES[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(MNIST_SIZES) - 2:
                layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.x = ds.x_train.reshape(N_TRAIN, -1).to(device)
        self.y = ds.y_train.to(device)

    def run(self, steps):
        perm = torch.randperm(N_TRAIN, device=self.x.device)
        total = torch.zeros((), device=self.x.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.x.device)
        for i in range(steps):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            x, y = self.x[idx], self.y[idx]
            self.opt.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            self.opt.step()
            total += loss.detach()
            correct += (out.argmax(1) == y).sum()


class _Ours:
    def __init__(self, ds, alg, K, device):
        spec = TrainSpec(dataset="mnist", algorithm=algorithm(alg), epochs=1, device=device)
        self.trainer = Trainer(spec, list(range(K)), dataset=ds, probe_size=0)

    def run(self, steps):
        self.trainer.train_epoch(max_steps=steps)


def synthetic_cifar(seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(CIFAR_TRAIN, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (CIFAR_TRAIN,), generator=g)
    xt = torch.rand(1000, 3, 32, 32, generator=g)
    yt = torch.randint(0, 10, (1000,), generator=g)
    return Dataset("synthetic-cifar10", x, y, xt, yt, (3, 32, 32), 10)


def convnet_flops(alg_name, input_shape=(3, 32, 32), num_classes: int = 10) -> float:
    """Multiply-adds x 2 per example of one training step of the paper's conv net.

    Forward pass and weight updates: every conv and dense layer once each.  Learning
    channel: the route's count (:meth:`rbp.channel.routes.Route.layer_cost`): chained routes
    (bp, rbp) run each layer above the first backwards once (transposed convolution or
    matrix); SRBP projects the N_L output errors onto the input of every layer above the
    first; the top-layer-only rule sends nothing.
    """
    model = cifar_convnet(*input_shape[:2], num_classes)
    layers = []     # (multiply-adds of the layer per example, units of its input per example)

    def hook(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.Conv2d):
            macs = out[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs = mod.in_features * mod.out_features
        layers.append((macs, x[0].numel()))

    handles = [m.register_forward_hook(hook) for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    forward = sum(m for m, _ in layers)
    channel, _ = _route(alg_name).layer_cost(layers, num_classes)
    return 2.0 * (forward + forward + channel)


class _ConvReference:
    """The paper's conv net in a plain PyTorch loop (optionally channels-last), same augmentation."""

    def __init__(self, ds, device, channels_last=False):
        self.model = cifar_convnet(seed=0).to(device)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x, self.y = ds.x_train.to(device), ds.y_train.to(device)
        self.gen = torch.Generator().manual_seed(0)

    def run(self, steps):
        n = self.x.shape[0]
        perm = torch.randperm(n, generator=self.gen).to(self.x.device)
        for i in range(steps):
            idx = perm[i * CIFAR_BATCH:(i + 1) * CIFAR_BATCH]
            x = augmentation.augment(self.x.index_select(0, idx), self.gen).contiguous(memory_format=self.fmt)
            y = self.y[idx]
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()


class _ConvOurs:
    def __init__(self, ds, alg, K, device):
        spec = TrainSpec(dataset="cifar10", algorithm=algorithm(alg), model="convnet", augment=True,
                         batch_size=CIFAR_BATCH, lr=0.01, decay=1e-5, momentum=0.9, epochs=1, device=device)
        self.trainer = Trainer(spec, list(range(K)), dataset=ds, probe_size=0)

    def run(self, steps):
        self.trainer.train_epoch(max_steps=steps)


def graph_model(name: str, seed: int = 0) -> nn.Module:
    """The plain PyTorch models the autograd path is timed on (issue figures, docs/performance.md).

    ``wide-mlp``: 784-2048x4-10 tanh; ``narrow-mlp``: 784-256x3-10 ReLU (the small MLP that compiling
    with and without the channel was first measured on); ``transformer``: a 2-layer ``nn.TransformerEncoder``
    (d = 128, 4 heads, feed-forward 512, batch-first) over 32 tokens, mean-pooled, linear head;
    ``resnet18-cifar``: torchvision's ResNet-18 layout (:func:`rbp.models.resnet18`, built here)
    with 10 classes on 32 x 32 images; ``gpt``: a decoder-only language model
    (:func:`rbp.models.gpt`: vocabulary 8192, context 64, d = 128, 4 blocks, 4 heads), trained on
    next-token prediction.
    """
    torch.manual_seed(seed)
    if name == "resnet18-cifar":
        from .models import resnet18
        return resnet18(num_classes=10, seed=seed)
    if name == "gpt":
        from .models import gpt
        return gpt(vocab=GPT_VOCAB, context=GPT_CONTEXT, seed=seed)
    if name == "wide-mlp":
        sizes = (784, 2048, 2048, 2048, 2048, 10)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers)
    if name == "narrow-mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    if name == "transformer":
        return _TokenClassifier()
    raise ConfigError(f"no graph model {name!r}")


class _TokenClassifier(nn.Module):
    """Tokens (B, T, d) -> 2 encoder layers -> mean over tokens -> 10 classes."""

    def __init__(self, d=128, heads=4, layers=2, classes=10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


GPT_VOCAB, GPT_CONTEXT = 8192, 64
# input per example, default minibatch
GRAPH_SHAPES = {"wide-mlp": ((784,), 256), "narrow-mlp": ((784,), 128), "transformer": ((32, 128), 64), "resnet18-cifar": ((3, 32, 32), 8),
                "gpt": ((GPT_CONTEXT,), 8)}


class _GraphLoop:
    """One training loop for every variant: the model (plain, or converted) and torch.optim.SGD.

    Classifiers get Gaussian inputs and 10 classes; ``gpt`` gets random token sequences and the
    next-token loss (cross-entropy at every position).

    ``compile``: the step's model is ``torch.compile(model, fullgraph=True)`` (inductor), so a
    graph break is an error, not a silent slowdown.  A converted model first takes one eager
    forward and backward pass (gradients then cleared, weights untouched): the channel notes
    there which site is the output layer, which the compiled driver reads (rbp/nn/compiled.py).
    """

    def __init__(self, name, alg, device, seed=0, batch=None, options=None, compile=False):
        shape, default = GRAPH_SHAPES[name]
        self.batch = batch or default
        model = graph_model(name, seed).to(device)
        if alg is not None:
            kwargs = {"example_input": torch.zeros(1, *shape, device=device)} if name == "resnet18-cifar" else {}
            model = __import__("rbp").convert(model, algorithm(alg, **(options or {})), seed=seed, **kwargs)
        self.model = model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(seed)
        n = 8 * self.batch
        self.lm = name == "gpt"
        if self.lm:
            tokens = torch.randint(0, GPT_VOCAB, (n, GPT_CONTEXT + 1), generator=g).to(device)
            self.x, self.y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        else:
            self.x = torch.randn(n, *shape, generator=g).to(device)
            self.y = torch.randint(0, 10, (n,), generator=g).to(device)
        self.i = 0
        if compile:
            if alg is not None:
                self._loss(self.model(self.x[:self.batch]), self.y[:self.batch]).backward()
                self.model.zero_grad(set_to_none=True)
            self.model = torch.compile(self.model, fullgraph=True)

    def _loss(self, out, y):
        return F.cross_entropy(out.flatten(0, -2) if self.lm else out, y.flatten() if self.lm else y)

    def run(self, steps):
        for _ in range(steps):
            k = self.i % 8
            self.i += 1
            x, y = self.x[k * self.batch:(k + 1) * self.batch], self.y[k * self.batch:(k + 1) * self.batch]
            self.opt.zero_grad(set_to_none=True)
            self._loss(self.model(x), y).backward()
            self.opt.step()


class _FlopCount(torch.overrides.TorchFunctionMode):
    """Multiply-adds of attention's own products (scores and weighted sum), which no weight layer holds."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.macs += 2 * q.numel() * k.shape[-2]          # Q K^T and A V: B h T S d_h each
        return func(*args, **(kwargs or {}))


def graph_flops(name: str, algorithms, batch: int | None = None) -> dict:
    """FLOPs per training step of each variant, and its *floor*: the ratio to the plain model's FLOPs.

    Counted: multiply-adds x 2 of the forward pass (weight layers and attention's products),
    the weight gradients (one product per weight layer; an embedding's is a scatter, 0), the
    backward of attention's products (2 x their forward, in every algorithm: autograd carries
    the signal through them) and the learning channel's products as the route counts them
    (:meth:`rbp.channel.routes.Route.layer_cost`; the plain model is bp).  Elementwise work
    (activations, norms, the optimizer, feedback refreshed from the forward signs) is not
    counted, so the floor is what the algorithm's linear algebra allows.
    """
    import math as _math
    shape, default = GRAPH_SHAPES[name]
    batch = batch or default
    model = graph_model(name)
    layers = []       # (multiply-adds, input units) of each weight layer, forward order, whole batch

    def hook(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.Embedding):
            layers.append((0, 0))
        elif isinstance(mod, nn.MultiheadAttention):      # two sites: in_proj (3d x d), out_proj (d x d)
            tokens, d = x.numel() // mod.embed_dim, mod.embed_dim
            layers.extend([(tokens * 3 * d * d, x.numel()), (tokens * d * d, x.numel())])
        elif isinstance(mod, nn.Conv2d):
            layers.append((out.numel() * mod.in_channels // mod.groups * _math.prod(mod.kernel_size), x.numel()))
        else:
            layers.append((out.numel() // mod.out_features * mod.in_features * mod.out_features, x.numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding, nn.MultiheadAttention))]
    x = (torch.zeros(batch, *shape, dtype=torch.long) if name == "gpt" else torch.zeros(batch, *shape))
    counter = _FlopCount()
    with torch.no_grad(), counter:
        out = model(x)
    for h in handles:
        h.remove()
    n_top = out.shape[-1]
    rows = out.numel() // n_top                     # examples (classifiers) or tokens (the language model)
    per_row = [(m / rows, u / rows) for m, u in layers]
    forward = sum(m for m, _ in per_row)
    other = counter.macs / rows
    result = {}
    for spec in ("bp", *algorithms):
        alg_name, options = parse_variant(spec)
        alg = algorithm(alg_name, **options)
        if getattr(alg, "blocks", ()):
            result[spec] = None                     # block mode: the blocks' widths are the model's, not counted
            continue
        channel, _ = _route(alg).layer_cost(per_row, n_top)
        result[spec] = 2.0 * rows * (forward + forward + channel + 3 * other)
    plain = result["bp"]
    return {spec: {"flops": f, "floor": None if f is None else f / plain} for spec, f in result.items()
            if spec != "bp" or "bp" in algorithms}


def run_graph_bench(model: str, steps=10, repeats=5, algorithms=("bp", "rbp", "srbp"), device="cpu",
                    log=print, batch: int | None = None, retain_memory: bool = False, compile: bool = False) -> dict:
    """Step time of the converted model against the same plain model, same loop, same process.

    ``compile``: every variant is timed compiled (``torch.compile(..., fullgraph=True)``) and the
    ratios are against the compiled plain model; the eager plain model is timed beside them as
    ``reference-eager``, so what compiling gains is in the same table.  The warm-up step, which
    compiles, is not timed.

    ``algorithms`` are names, optionally with options (:func:`parse_variant`).  Each variant's
    FLOP floor (:func:`graph_flops`) is reported beside its measured ratio.  ``retain_memory``
    applies the conv trainer's allocator setting (:func:`rbp._malloc.retain_freed_memory`) to the
    whole process, the plain model included.
    """
    if steps < 1 or repeats < 1:
        raise ConfigError("need steps >= 1 and repeats >= 1")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    check_device(device)
    allocator = bool(retain_memory and torch.device(device).type == "cpu" and retain_freed_memory())
    specs = {alg: parse_variant(alg) for alg in algorithms}
    variants = {"reference": _GraphLoop(model, None, device, batch=batch, compile=compile)}
    if compile:
        variants["reference-eager"] = _GraphLoop(model, None, device, batch=batch)
    for alg, (name, options) in specs.items():
        variants[alg] = _GraphLoop(model, name, device, batch=batch, options=options, compile=compile)
    for runner in variants.values():      # warm up (and size anything lazy)
        runner.run(2)
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for r in range(repeats):
        for name, runner in variants.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            runner.run(steps)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        log(f"repeat {r + 1}/{repeats} done")
    batch = variants["reference"].batch
    floors = graph_flops(model, algorithms, batch)
    results = {name: {"algorithm": "bp" if name.startswith("reference") else specs[name][0], "ensemble": 1,
                      "seconds_per_step": statistics.median(t) / steps,
                      "cpu_seconds_per_step": statistics.median(cpu[name]) / steps,
                      # the median over repeats of this variant's CPU time over the reference's in the same round
                      "cpu_paired_ratio": statistics.median(c / r for c, r in zip(cpu[name], cpu["reference"])),
                      "flop_floor": 1.0 if name.startswith("reference") else floors[name]["floor"]}
               for name, t in times.items()}
    ref = results["reference"]["seconds_per_step"]
    ref_cpu = results["reference"]["cpu_seconds_per_step"]
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "steps": steps, "repeats": repeats,
           "model": model, "batch": batch, "results": results, "allocator_retains_freed_memory": allocator,
           "compiled": bool(compile)}
    for alg in algorithms:
        out[f"ratio_{alg}_vs_reference"] = results[alg]["seconds_per_step"] / ref
        out[f"cpu_ratio_{alg}_vs_reference"] = results[alg]["cpu_seconds_per_step"] / ref_cpu
    return out


def _graph_table(out) -> str:
    ref = out["results"]["reference"]["seconds_per_step"]
    ref_cpu = out["results"]["reference"]["cpu_seconds_per_step"]
    width = max(12, *(len(n) for n in out["results"]))
    lines = [f"{'variant':{width}s} {'ms/step':>9s} {'vs reference':>13s} {'CPU ms/step':>12s} {'CPU vs ref':>11s} "
             f"{'paired':>8s} {'FLOP floor':>11s}"]
    for name, r in out["results"].items():
        floor = "n/a" if r.get("flop_floor") is None else f"{r['flop_floor']:.3f}x"
        lines.append(f"{name:{width}s} {1000 * r['seconds_per_step']:9.2f} {r['seconds_per_step'] / ref:12.3f}x "
                     f"{1000 * r['cpu_seconds_per_step']:12.2f} {r['cpu_seconds_per_step'] / ref_cpu:10.3f}x "
                     f"{r['cpu_paired_ratio']:7.3f}x {floor:>11s}")
    how = ("every variant but reference-eager under torch.compile(fullgraph=True), ratios against the compiled "
           "plain model; " if out.get("compiled") else "")
    lines.append(f"{out['model']}, minibatch {out['batch']}, autograd path (rbp.convert + torch.optim.SGD); {how}"
                 f"torch {out['torch']}, {out['threads']} threads, device {out['device']}; paired: median over "
                 "repeats of the CPU time over the reference's in the same round; FLOP floor: the "
                 "variant's matrix-product FLOPs over the plain model's (elementwise work not counted); "
                 f"allocator keeps freed memory: {out.get('allocator_retains_freed_memory', False)}")
    return "\n".join(lines)


def data_cost(ds, steps: int, device="cpu", batch: int = CIFAR_BATCH) -> float:
    """Median seconds per minibatch of what the trainer does before the network sees it:
    the row gather and the augmentation (draw of the per-image numbers and the shift/flip)."""
    x = ds.x_train.to(device)
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(x.shape[0], generator=gen).to(device)
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        xb = x.index_select(0, perm[i * batch:(i + 1) * batch])
        augmentation.apply(xb, augmentation.draw(xb.shape[0], xb.shape[1:], gen).to(device))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device="cpu", n=1024, repeats=5) -> float:
    """GFLOP/s of a large square float32 matmul, measured now."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t0) / 4)
    return 2 * n ** 3 / min(times) / 1e9


DATA = ("synthetic", "mnist", "cifar10")
MODEL_DATA = {"mlp": ("synthetic", "mnist"), "convnet": ("synthetic", "cifar10")}


def bench_data(name: str, model: str = "mlp") -> Dataset:
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    if name not in MODEL_DATA[model]:
        raise ConfigError(f"--data for --model {model} must be one of {', '.join(MODEL_DATA[model])}, got {name!r}")
    if name == "synthetic":
        return synthetic_mnist() if model == "mlp" else synthetic_cifar()
    from . import data
    want = N_TRAIN if name == "mnist" else CIFAR_TRAIN
    ds = data.load(name)
    if ds.x_train.shape[0] != want:
        raise ConfigError(f"expected {want} {name} training images, found {ds.x_train.shape[0]}")
    return ds


def run_bench(steps=100, repeats=5, ensembles=(4, 16, 64), algorithms=("bp", "rbp", "srbp"),
              device="cpu", log=print, data: str = "synthetic", model: str = "mlp") -> dict:
    conv = model == "convnet"
    n_train, batch = (CIFAR_TRAIN, CIFAR_BATCH) if conv else (N_TRAIN, BATCH)
    if steps < 1 or steps > n_train // batch or repeats < 1:
        raise ConfigError(f"need 1 <= steps <= {n_train // batch} and repeats >= 1")
    if any(k < 2 for k in ensembles):
        raise ConfigError("ensemble sizes must be at least 2")
    check_device(device)
    ds = bench_data(data, model)
    if conv:
        allocator = retain_freed_memory() if torch.device(device).type == "cpu" else False
        variants = {"reference": (_ConvReference(ds, device), "bp", 1),
                    "reference-cl": (_ConvReference(ds, device, channels_last=True), "bp", 1)}
        ours = _ConvOurs
    else:
        variants = {"reference": (_Reference(ds, device), "bp", 1)}
        ours = _Ours
    for alg in algorithms:
        variants[alg] = (ours(ds, alg, 1, device), alg, 1)
        for K in ensembles:
            variants[f"{alg}x{K}"] = (ours(ds, alg, K, device), alg, K)
    for runner, _, _ in variants.values():      # warm up
        runner.run(1 if conv else 3)
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for r in range(repeats):
        for name, (runner, _, _) in variants.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            runner.run(steps)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        log(f"repeat {r + 1}/{repeats} done")
    peak = matmul_peak(device)
    per_epoch = -(-n_train // batch)
    results = {}
    for name, (_, alg, K) in variants.items():
        t = statistics.median(times[name])
        sec_epoch = t / steps * per_epoch
        per_example = convnet_flops(alg) if conv else channel_flops(MNIST_SIZES, alg)
        flops = per_example * batch * steps * K
        results[name] = {"algorithm": alg, "ensemble": K, "seconds_per_epoch": sec_epoch,
                         "seconds_per_network_epoch": sec_epoch / K, "gflops": flops / t / 1e9,
                         "cpu_seconds_per_epoch": statistics.median(cpu[name]) / steps * per_epoch}
    ref = results["reference"]["seconds_per_epoch"]
    out = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "steps": steps, "repeats": repeats, "data": data,
        "matmul_peak_gflops": peak, "results": results, "model": model, "steps_per_epoch": per_epoch,
    }
    if conv:
        out["allocator_retains_freed_memory"] = allocator
        out["data_seconds_per_step"] = data_cost(ds, max(steps, 5), device)
        out["ratio_reference_cl_vs_reference"] = results["reference-cl"]["seconds_per_epoch"] / results[
            "reference"]["seconds_per_epoch"]
    ref_cpu = results["reference"]["cpu_seconds_per_epoch"]
    for alg in algorithms:
        out[f"ratio_{alg}_vs_reference"] = results[alg]["seconds_per_epoch"] / ref
        out[f"cpu_ratio_{alg}_vs_reference"] = results[alg]["cpu_seconds_per_epoch"] / ref_cpu
        if ensembles:
            best = min(ensembles, key=lambda K: results[f"{alg}x{K}"]["seconds_per_network_epoch"])
            out[f"ensemble_speedup_{alg}"] = (results[alg]["seconds_per_epoch"]
                                              / results[f"{alg}x{best}"]["seconds_per_network_epoch"])
            out[f"best_ensemble_{alg}"] = best
    if ensembles:
        main = "rbp" if "rbp" in algorithms else algorithms[0]
        out["ensemble_speedup"] = out[f"ensemble_speedup_{main}"]
    return out


def _table(out) -> str:
    ref = out["results"]["reference"]["seconds_per_epoch"]
    ref_cpu = out["results"]["reference"]["cpu_seconds_per_epoch"]
    lines = [f"{'variant':12s} {'s/epoch':>9s} {'s/network-epoch':>16s} {'vs reference':>13s} {'GFLOP/s':>8s} "
             f"{'CPU vs ref':>11s}"]
    for name, r in out["results"].items():
        lines.append(f"{name:12s} {r['seconds_per_epoch']:9.3f} {r['seconds_per_network_epoch']:16.3f} "
                     f"{r['seconds_per_network_epoch'] / ref:12.3f}x {r['gflops']:8.1f} "
                     f"{r['cpu_seconds_per_epoch'] / r['ensemble'] / ref_cpu:10.3f}x")
    lines.append(f"matmul peak (1024^3 float32): {out['matmul_peak_gflops']:.1f} GFLOP/s; "
                 f"torch {out['torch']}, {out['threads']} threads, device {out['device']}, {out['data']} data, "
                 f"{out['model']}, {out['steps_per_epoch']} minibatches per epoch")
    if "data_seconds_per_step" in out:
        lines.append(f"minibatch gather + augmentation: {1000 * out['data_seconds_per_step']:.2f} ms per step; "
                     f"allocator keeps freed memory: {out['allocator_retains_freed_memory']}")
    return "\n".join(lines)


def _cmd_bench(args) -> int:
    import sys
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.model in GRAPH_MODELS:
        algs = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
        for a in algs:
            parse_variant(a)
        out = run_graph_bench(args.model, args.steps or 10, args.repeats, algs, args.device,
                              log=(lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None),
                              batch=args.batch, retain_memory=args.retain_freed_memory, compile=args.compile)
        print(_graph_table(out))
        if args.json:
            print(json.dumps(out))
        return 0
    if args.compile:
        raise ConfigError(f"--compile applies to the autograd-path models ({', '.join(GRAPH_MODELS)}); "
                          f"--model {args.model} is timed in rbp's own trainer, which is not compiled")
    if args.batch is not None:
        raise ConfigError(f"--batch applies to the autograd-path models ({', '.join(GRAPH_MODELS)}); "
                          f"--model {args.model} trains with its protocol's minibatch")
    if args.ensembles is None:     # conv nets train one by one on CPU (docs/conv.md): no ensembles by default
        args.ensembles = "" if args.model == "convnet" else "4,16,64"
    if args.steps is None:
        args.steps = 5 if args.model == "convnet" else 100
    ens = tuple(int(k) for k in args.ensembles.split(",") if k.strip()) if args.ensembles else ()
    algs = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
    for a in algs:
        algorithm(a)
    out = run_bench(args.steps, args.repeats, ens, algs, args.device,
                    log=(lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None),
                    data=args.data, model=args.model)
    print(_table(out))
    if args.json:
        print(json.dumps(out))
    return 0


def register(sub):
    p = sub.add_parser("bench", help="time the learning channel against a plain PyTorch loop")
    p.add_argument("--model", default="mlp", choices=MODELS,
                   help="mlp: paper 1's MNIST network (default); convnet: its CIFAR-10 conv net and protocol; "
                        "wide-mlp (784-2048x4-10 tanh, batch 256), narrow-mlp (784-256x3-10 ReLU, batch 128), "
                        "transformer (2 encoder layers, d=128, batch 64), resnet18-cifar (torchvision's ResNet-18 layout, 32x32, batch 8) and gpt "
                        "(decoder-only LM, vocabulary 8192, batch 8 x 64 tokens): rbp.convert in a plain "
                        "PyTorch loop against the same plain model, with each variant's FLOP floor")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="autograd-path models: keep freed large blocks in the process (the conv trainer's "
                        "allocator setting, rbp._malloc), for every variant alike")
    p.add_argument("--compile", action="store_true",
                   help="autograd-path models: time every variant under torch.compile(model, fullgraph=True) "
                        "(inductor) against the compiled plain model, with the eager plain model beside them")
    p.add_argument("--batch", type=int, default=None,
                   help="minibatch of the autograd-path models (default: the model's, above)")
    p.add_argument("--steps", type=int, default=None, help="minibatches per timing (default 100; convnet 5; the autograd-path models 10)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    p.add_argument("--ensembles", default=None,
                   help="ensemble sizes to time (default 4,16,64; convnet none; empty for none)")
    p.add_argument("--algorithms", default="bp,rbp,srbp",
                   help="comma-separated; on the autograd-path models a name may carry options, "
                        "e.g. srbp:skip_projection=shared")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="synthetic", choices=DATA,
                   help="synthetic uniform inputs (default), the real MNIST training set (mlp) or the real "
                        "CIFAR-10 training set (convnet)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_bench)
