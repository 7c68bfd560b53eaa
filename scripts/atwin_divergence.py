"""Why the adaptive twin network at the forward rate diverges from ordinary weights (docs/symmetries.md).

Trains one network (MNIST, paper network 784-100-100-100-100-10 tanh, lr 0.1, the
`symmetry-adaptive` protocol) with the adaptive twin rule at adapt_rate 1 and prints,
every ``--every`` minibatches, per weight layer i = 2..5:

  ||W^i||, ||C^i||, ||C^i - C^i_0|| / ||W^i - W^i_0|| (1 for ARBP, exactly, with plain SGD),
  and for the hidden layer below it (h = i-1) the mean f'(S^h) and the fraction of its
  units with |S^h| > 3 (saturated, f' < 0.01), on the first 1000 training examples.

Usage:  RBP_DATA_DIR=... python scripts/atwin_divergence.py [--algorithm atwin] [--epochs 4]
"""

from __future__ import annotations

import argparse
import math

import torch

import rbp
from rbp.train import TrainSpec, Trainer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithm", default="atwin")
    ap.add_argument("--adapt-rate", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="mnist")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    alg = rbp.algorithm(a.algorithm, adapt_rate=a.adapt_rate)
    tr = Trainer(TrainSpec(dataset=a.dataset, algorithm=alg, epochs=a.epochs, lr=a.lr), [a.seed])
    sites = tr.model.rbp_channel.sites
    W0 = [s.weight.detach().clone() for s in sites]
    C0 = [None if s.feedback is None else s.feedback.detach().clone() for s in sites]
    px = tr.x_train[:1000]
    L = len(sites)
    print(f"{a.algorithm} adapt_rate={a.adapt_rate} lr={a.lr} seed={a.seed} {a.dataset}")
    head = "epoch  step  " + "  ".join(f"|W{i + 1}|  |C{i + 1}|  dC/dW{i + 1}  f'{i}  sat{i}" for i in range(1, L))
    print(head)

    def report(epoch, step):
        with torch.no_grad():
            Ss, h = [], px
            for s in sites[:-1]:
                z = s.affine(h, s.weight, s.bias)
                Ss.append(z)
                h = torch.tanh(z)
        cells = []
        for i in range(1, L):
            W, C = sites[i].weight.detach(), sites[i].feedback.detach()
            dW, dC = (W - W0[i]).norm().item(), (C - C0[i]).norm().item()
            S = Ss[i - 1]
            fp = (1 - torch.tanh(S) ** 2).mean().item()
            sat = (S.abs() > 3).double().mean().item()
            cells.append(f"{W.norm().item():6.1f} {C.norm().item():7.1f} {dC / max(dW, 1e-30):6.2f} "
                         f"{fp:5.2f} {100 * sat:4.0f}%")
        print(f"{epoch:5d} {step:5d}  " + "  ".join(cells), flush=True)

    step = 0

    def on_step(_):
        nonlocal step
        step += 1
        if step % a.every == 0:
            report(epoch, step)

    report(0, 0)
    for epoch in range(1, a.epochs + 1):
        tr.train_epoch(on_step=on_step)
        loss, acc = tr.evaluate()
        print(f"epoch {epoch}: test loss {loss[0]:.3f}, test accuracy {100 * acc[0]:.2f} %", flush=True)
        if not all(math.isfinite(sites[i].weight.detach().norm().item()) for i in range(L)):
            print("non-finite weights: stopped")
            break


if __name__ == "__main__":
    main()
