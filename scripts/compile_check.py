"""torch.compile on the autograd path: step CPU time of eager and compiled, plain and converted.

The wide MLP of `rbp bench --model wide-mlp` (784-2048x4-10 tanh, batch 256), one thread,
CPU time per step after a warm-up that includes compilation; medians over repeats, interleaved.
Compiled with fullgraph=True (the compiled driver, rbp/nn/compiled.py: one graph per model); a converted
model takes one eager step first, where the channel notes its output layer.
Usage: python scripts/compile_check.py [--repeats 5] [--steps 5] [--algorithms rbp,srbp] [--model wide-mlp|mlp]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import rbp
from rbp.bench import graph_model

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--algorithms", default="rbp,srbp")
p.add_argument("--model", default="wide-mlp")
args = p.parse_args()
torch.set_num_threads(1)
shape, batch = {"wide-mlp": ((784,), 256), "mlp": ((784,), 128), "transformer": ((32, 128), 64)}[args.model]
x = torch.randn(batch, *shape)
y = torch.randint(0, 10, (batch,))


def make(alg, compiled):
    model = (torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                 torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
             if args.model == "mlp" else graph_model(args.model))
    if alg != "plain":
        model = rbp.convert(model, alg, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if alg != "plain":
        F.cross_entropy(model(x), y).backward()       # one eager pass: the channel notes the structure
        model.zero_grad(set_to_none=True)
    fwd = torch.compile(model, fullgraph=True) if compiled else model

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(x), y).backward()
            opt.step()
    return run


variants = {}
for alg in ["plain"] + args.algorithms.split(","):
    for compiled in (False, True):
        run = make(alg, compiled)
        t = time.perf_counter()
        run(3)
        print(f"{alg} {'compiled' if compiled else 'eager'}: warm-up {time.perf_counter() - t:.1f} s", flush=True)
        variants[(alg, compiled)] = run
times = {k: [] for k in variants}
for _ in range(args.repeats):
    for k, run in variants.items():
        t = time.process_time()
        run(args.steps)
        times[k].append((time.process_time() - t) / args.steps)
ref = statistics.median(times[("plain", False)])
for (alg, compiled), t in times.items():
    m = statistics.median(t)
    print(f"{alg:6s} {'compiled' if compiled else 'eager   '} {1000 * m:8.1f} ms/step  {m / ref:.3f}x plain eager")
