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
from .channel.algorithm import Algorithm, algorithm
from .channel.routes import route_of
from .data import Dataset
from .errors import ConfigError
from .models import MNIST_SIZES, cifar_convnet
from .train import TrainSpec, Trainer, check_device

N_TRAIN, BATCH = 60000, 100
CIFAR_TRAIN, CIFAR_BATCH = 50000, 128
MODELS = ("mlp", "convnet", "wide-mlp", "transformer")
GRAPH_MODELS = ("wide-mlp", "transformer")   # timed on the autograd path: rbp.convert in a plain loop


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

    ``wide-mlp``: 784-2048x4-10 tanh; ``transformer``: a 2-layer ``nn.TransformerEncoder``
    (d = 128, 4 heads, feed-forward 512, batch-first) over 32 tokens, mean-pooled, linear head.
    """
    torch.manual_seed(seed)
    if name == "wide-mlp":
        sizes = (784, 2048, 2048, 2048, 2048, 10)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers)
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


GRAPH_SHAPES = {"wide-mlp": ((784,), 256), "transformer": ((32, 128), 64)}   # input per example, minibatch


class _GraphLoop:
    """One training loop for every variant: the model (plain, or converted) and torch.optim.SGD."""

    def __init__(self, name, alg, device, seed=0):
        shape, self.batch = GRAPH_SHAPES[name]
        model = graph_model(name, seed).to(device)
        self.model = model if alg is None else __import__("rbp").convert(model, alg, seed=seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(8 * self.batch, *shape, generator=g).to(device)
        self.y = torch.randint(0, 10, (8 * self.batch,), generator=g).to(device)
        self.i = 0

    def run(self, steps):
        for _ in range(steps):
            k = self.i % 8
            self.i += 1
            x, y = self.x[k * self.batch:(k + 1) * self.batch], self.y[k * self.batch:(k + 1) * self.batch]
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()


def run_graph_bench(model: str, steps=10, repeats=5, algorithms=("bp", "rbp", "srbp"), device="cpu",
                    log=print) -> dict:
    """Step time of the converted model against the same plain model, same loop, same process."""
    if steps < 1 or repeats < 1:
        raise ConfigError("need steps >= 1 and repeats >= 1")
    check_device(device)
    variants = {"reference": _GraphLoop(model, None, device)}
    for alg in algorithms:
        variants[alg] = _GraphLoop(model, alg, device)
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
    batch = GRAPH_SHAPES[model][1]
    results = {name: {"algorithm": "bp" if name == "reference" else name, "ensemble": 1,
                      "seconds_per_step": statistics.median(t) / steps,
                      "cpu_seconds_per_step": statistics.median(cpu[name]) / steps} for name, t in times.items()}
    ref = results["reference"]["seconds_per_step"]
    ref_cpu = results["reference"]["cpu_seconds_per_step"]
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "steps": steps, "repeats": repeats,
           "model": model, "batch": batch, "results": results}
    for alg in algorithms:
        out[f"ratio_{alg}_vs_reference"] = results[alg]["seconds_per_step"] / ref
        out[f"cpu_ratio_{alg}_vs_reference"] = results[alg]["cpu_seconds_per_step"] / ref_cpu
    return out


def _graph_table(out) -> str:
    ref = out["results"]["reference"]["seconds_per_step"]
    ref_cpu = out["results"]["reference"]["cpu_seconds_per_step"]
    lines = [f"{'variant':12s} {'ms/step':>9s} {'vs reference':>13s} {'CPU ms/step':>12s} {'CPU vs ref':>11s}"]
    for name, r in out["results"].items():
        lines.append(f"{name:12s} {1000 * r['seconds_per_step']:9.2f} {r['seconds_per_step'] / ref:12.3f}x "
                     f"{1000 * r['cpu_seconds_per_step']:12.2f} {r['cpu_seconds_per_step'] / ref_cpu:10.3f}x")
    lines.append(f"{out['model']}, minibatch {out['batch']}, autograd path (rbp.convert + torch.optim.SGD); "
                 f"torch {out['torch']}, {out['threads']} threads, device {out['device']}")
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
    for r in range(repeats):
        for name, (runner, _, _) in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            runner.run(steps)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
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
                         "seconds_per_network_epoch": sec_epoch / K, "gflops": flops / t / 1e9}
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
    for alg in algorithms:
        out[f"ratio_{alg}_vs_reference"] = results[alg]["seconds_per_epoch"] / ref
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
    lines = [f"{'variant':12s} {'s/epoch':>9s} {'s/network-epoch':>16s} {'vs reference':>13s} {'GFLOP/s':>8s}"]
    for name, r in out["results"].items():
        lines.append(f"{name:12s} {r['seconds_per_epoch']:9.3f} {r['seconds_per_network_epoch']:16.3f} "
                     f"{r['seconds_per_network_epoch'] / ref:12.3f}x {r['gflops']:8.1f}")
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
            algorithm(a)
        out = run_graph_bench(args.model, args.steps or 10, args.repeats, algs, args.device,
                              log=(lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None))
        print(_graph_table(out))
        if args.json:
            print(json.dumps(out))
        return 0
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
                        "wide-mlp (784-2048x4-10 tanh, batch 256) and transformer (2 encoder layers, d=128, "
                        "batch 64): rbp.convert in a plain PyTorch loop against the same plain model")
    p.add_argument("--steps", type=int, default=None, help="minibatches per timing (default 100; convnet 5; wide-mlp, transformer 10)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    p.add_argument("--ensembles", default=None,
                   help="ensemble sizes to time (default 4,16,64; convnet none; empty for none)")
    p.add_argument("--algorithms", default="bp,rbp,srbp")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="synthetic", choices=DATA,
                   help="synthetic uniform inputs (default), the real MNIST training set (mlp) or the real "
                        "CIFAR-10 training set (convnet)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_bench)
