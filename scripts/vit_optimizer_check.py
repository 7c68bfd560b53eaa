"""Which optimizer trains rbp.models.vit at all: a plain PyTorch loop (BP) on MNIST, a few hundred steps.

    RBP_DATA_DIR=... python scripts/vit_optimizer_check.py LR STEPS [adam]

SGD with momentum 0.9 (rbp.optim.KerasSGD) by default, torch.optim.Adam with a third argument.
Prints the loss every 50 steps, the CPU seconds per step (minibatch 100, 1 thread) and the test
accuracy on the first 2000 test images.  Used for the protocol of src/rbp/experiments/vit-mnist.toml.
"""
import sys
import time

import torch
import torch.nn.functional as F

from rbp import data
from rbp.models import vit
from rbp.optim import KerasSGD

torch.set_num_threads(1)
lr, steps = float(sys.argv[1]), int(sys.argv[2])
ds = data.load("mnist")
x, y = ds.x_train, ds.y_train
m = vit(seed=0)
opt = torch.optim.Adam(m.parameters(), lr=lr) if len(sys.argv) > 3 else KerasSGD(m.parameters(), lr=lr, momentum=0.9)
perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
t0 = time.process_time()
for s in range(steps):
    idx = perm[s * 100:(s + 1) * 100]
    opt.zero_grad()
    loss = F.cross_entropy(m(x[idx]), y[idx])
    loss.backward()
    opt.step()
    if s % 50 == 0:
        print(s, round(loss.item(), 3), flush=True)
dt = (time.process_time() - t0) / steps
with torch.no_grad():
    acc = (m(ds.x_test[:2000]).argmax(1) == ds.y_test[:2000]).float().mean().item()
print(f"lr {lr}: {dt:.3f} CPU s/step (batch 100, 1 thread), test acc on 2000 after {steps} steps: {acc:.3f}")
