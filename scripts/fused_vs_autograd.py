"""CPU time per training step of the fused driver against the autograd driver, same process.

The papers' MNIST network (784-100x4-10 tanh, minibatch 100), single network and ensembles,
each variant timed in turn (interleaved), process CPU time with one thread, median over repeats.
Usage: python scripts/fused_vs_autograd.py [--repeats 7] [--steps 20]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import rbp
from rbp.nn.fused import FusedNetwork

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=7)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--algorithms", default="bp,rbp,srbp")
p.add_argument("--ensembles", default="1,16")
args = p.parse_args()
torch.set_num_threads(1)
sizes = (784, 100, 100, 100, 100, 10)


def loop(model, K, fused):
    shape = (K, 100, 784) if K > 1 else (100, 784)
    x = torch.rand(*shape)
    y = torch.randint(0, 10, shape[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    net = FusedNetwork(model) if fused else None

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            if fused:
                net.step_gradients(x, y)
            else:
                out = model(x)
                loss = F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="sum") / 100
                loss.backward()
            opt.step()
    return run


variants = {}
for K in (int(k) for k in args.ensembles.split(",")):
    for alg in args.algorithms.split(","):
        for fused in (False, True):
            model = rbp.convert(rbp.mlp(sizes, "tanh", seed=0, ensemble=K if K > 1 else None), alg,
                                seed=0 if K == 1 else list(range(K)))
            variants[(K, alg, "fused" if fused else "autograd")] = loop(model, K, fused)
for run in variants.values():
    run(2)
times = {k: [] for k in variants}
for _ in range(args.repeats):
    for k, run in variants.items():
        t = time.process_time()
        run(args.steps)
        times[k].append((time.process_time() - t) / args.steps)
for K in sorted({k[0] for k in variants}):
    for alg in args.algorithms.split(","):
        a = statistics.median(times[(K, alg, "autograd")])
        f = statistics.median(times[(K, alg, "fused")])
        print(f"K={K:3d} {alg:5s} autograd {1000 * a:7.2f} ms  fused {1000 * f:7.2f} ms  fused/autograd {f / a:.3f}")
