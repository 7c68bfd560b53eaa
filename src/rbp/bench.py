"""``rbp bench``: the speed of the learning channel against a plain PyTorch loop, in one process.

Variants, each timed on the same data (by default synthetic MNIST-shaped data,
60000 x 784 uniform numbers, 10 classes; with ``--data mnist`` the real
training set, whose pixels are 81 % zeros) with the paper's network and minibatch of 100:

* ``reference``: ``torch.nn`` layers, ``torch.optim.SGD`` and ``loss.backward()``;
* ``bp``, ``rbp``, ``srbp``: this library's training loop (``rbp.train.Trainer``);
* the same as ensembles of K networks trained as one batched computation.

Timings are interleaved (every repeat times every variant once, in turn) so
that slow drifts of the machine affect all variants alike; each figure is the
median over repeats of the time for ``steps`` minibatches, scaled to one epoch
(600 minibatches).  Ratios are against the reference loop of the same process.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channel.algorithm import algorithm
from .data import Dataset
from .errors import ConfigError
from .models import MNIST_SIZES
from .train import TrainSpec, Trainer, check_device

N_TRAIN, BATCH = 60000, 100


def synthetic_mnist(device="cpu", seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_TRAIN, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_TRAIN,), generator=g)
    xt = torch.rand(1000, 1, 28, 28, generator=g)
    yt = torch.randint(0, 10, (1000,), generator=g)
    return Dataset("synthetic-mnist", x, y, xt, yt, (1, 28, 28), 10)


def channel_flops(sizes, alg_name: str) -> float:
    """Multiply-adds x 2 per example for one training step (forward, weight updates, learning channel)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(a * b for a, b in pairs)
    updates = forward
    if alg_name == "srbp":
        channel = sizes[-1] * sum(sizes[1:-1])
    elif alg_name == "top":
        channel = 0
    else:
        channel = sum(a * b for a, b in pairs[1:])   # no signal is sent below the first layer
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


DATA = ("synthetic", "mnist")


def bench_data(name: str) -> Dataset:
    if name not in DATA:
        raise ConfigError(f"--data must be one of {', '.join(DATA)}, got {name!r}")
    if name == "synthetic":
        return synthetic_mnist()
    from . import data
    ds = data.load("mnist")
    if ds.x_train.shape[0] != N_TRAIN:
        raise ConfigError(f"expected {N_TRAIN} MNIST training images, found {ds.x_train.shape[0]}")
    return ds


def run_bench(steps=100, repeats=5, ensembles=(4, 16, 64), algorithms=("bp", "rbp", "srbp"),
              device="cpu", log=print, data: str = "synthetic") -> dict:
    if steps < 1 or steps > N_TRAIN // BATCH or repeats < 1:
        raise ConfigError(f"need 1 <= steps <= {N_TRAIN // BATCH} and repeats >= 1")
    if any(k < 2 for k in ensembles):
        raise ConfigError("ensemble sizes must be at least 2")
    check_device(device)
    ds = bench_data(data)
    variants = {"reference": (_Reference(ds, device), "bp", 1)}
    for alg in algorithms:
        variants[alg] = (_Ours(ds, alg, 1, device), alg, 1)
        for K in ensembles:
            variants[f"{alg}x{K}"] = (_Ours(ds, alg, K, device), alg, K)
    for runner, _, _ in variants.values():      # warm up
        runner.run(3)
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
    per_epoch = N_TRAIN // BATCH
    results = {}
    for name, (_, alg, K) in variants.items():
        t = statistics.median(times[name])
        sec_epoch = t / steps * per_epoch
        flops = channel_flops(MNIST_SIZES, alg) * BATCH * steps * K
        results[name] = {"algorithm": alg, "ensemble": K, "seconds_per_epoch": sec_epoch,
                         "seconds_per_network_epoch": sec_epoch / K, "gflops": flops / t / 1e9}
    ref = results["reference"]["seconds_per_epoch"]
    out = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "steps": steps, "repeats": repeats, "data": data,
        "matmul_peak_gflops": peak, "results": results,
    }
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
                 f"torch {out['torch']}, {out['threads']} threads, device {out['device']}, {out['data']} data")
    return "\n".join(lines)


def _cmd_bench(args) -> int:
    import sys
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    ens = tuple(int(k) for k in args.ensembles.split(",") if k.strip()) if args.ensembles else ()
    algs = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
    for a in algs:
        algorithm(a)
    out = run_bench(args.steps, args.repeats, ens, algs, args.device,
                    log=(lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None),
                    data=args.data)
    print(_table(out))
    if args.json:
        print(json.dumps(out))
    return 0


def register(sub):
    p = sub.add_parser("bench", help="time the learning channel against a plain PyTorch loop")
    p.add_argument("--steps", type=int, default=100, help="minibatches per timing (default 100)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    p.add_argument("--ensembles", default="4,16,64", help="ensemble sizes to time (empty for none)")
    p.add_argument("--algorithms", default="bp,rbp,srbp")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="synthetic", choices=DATA,
                   help="synthetic uniform inputs (default) or the real MNIST training set")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_bench)
