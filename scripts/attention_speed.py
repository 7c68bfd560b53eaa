"""Training-step time of a converted TransformerEncoder classifier against the plain PyTorch model.

    PYTHONPATH=src python scripts/attention_speed.py [--steps 10] [--repeats 7] [--threads 1] [--clock cpu]

The model: nn.TransformerEncoder, 2 layers, d = 128, 4 heads, feed-forward 512, dropout 0.1 (--dropout), post-LN,
batch_first, on (64, 32, 128) float32 inputs; a linear head of 10 classes on the mean over tokens
("pooled") or on every token ("per-token": the error has the tokens' leading dims, which the skipped
route serves today; the pooled model needs lazily sized skip matrices, issue 14 item 6).
A step is zero_grad, forward, cross-entropy, backward, SGD step (+ the channel's after_step).
Variants are timed in one process, interleaved over ``--repeats`` rounds; each round times
``--steps`` steps of every variant after one warm-up step.  Printed per variant: the median step time
and the median of the per-round ratios to the plain model ("paired": the figure least moved by other
processes on a busy machine).  CPU time of the process by default (one thread: the step's cost).
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.channel.algorithm import ALGORITHMS


class Classifier(nn.Module):
    def __init__(self, per_token, d=128, heads=4, layers=2, ff=512, classes=10, dropout=0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)
        self.per_token = per_token

    def forward(self, x):
        h = self.encoder(x)
        return self.head(h if self.per_token else h.mean(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--algorithms", default="bp,rbp,srbp")
    ap.add_argument("--dropout", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, 128, generator=g)
    y = torch.randint(0, 10, (64, 32), generator=g)
    for per_token in (False, True):
        torch.manual_seed(0)
        base = Classifier(per_token, dropout=args.dropout)
        variants = {"plain": base}
        for a in args.algorithms.split(","):
            if ALGORITHMS[a].route == "skip" and not per_token:
                continue
            variants[a] = rbp.convert(base, a, seed=1)
        target = y if per_token else y[:, 0]
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in variants.items()}

        def step(name):
            m, opt = variants[name], opts[name]
            opt.zero_grad(set_to_none=True)
            out = m(x)
            F.cross_entropy(out.flatten(0, -2) if per_token else out, target.flatten() if per_token else target
                            ).backward()
            opt.step()
            ch = getattr(m, "rbp_channel", None)
            if ch is not None:
                ch.after_step()

        times = {k: [] for k in variants}
        for k in variants:
            step(k)
        for _ in range(args.repeats):
            for k in variants:
                t0 = clock()
                for _ in range(args.steps):
                    step(k)
                times[k].append((clock() - t0) / args.steps)
        label = ("per-token head" if per_token else "pooled head") + f", dropout {args.dropout}"
        print(f"{label}: median ms per step (ratio to plain: paired median)")
        for k, ts in times.items():
            paired = statistics.median(t / p for t, p in zip(ts, times["plain"]))
            print(f"  {k:6s} {1000 * statistics.median(ts):8.1f} ms   {paired:.3f}x")


if __name__ == "__main__":
    main()
