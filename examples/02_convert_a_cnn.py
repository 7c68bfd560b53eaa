"""Convert an existing convolutional network; compare BP, RBP and SRBP on it.

The CNN below is an ordinary nn.Module with nested submodules. `rbp.convert`
copies it and gives each copy a learning channel: `bp` (the exact gradient,
as a reference), `rbp` (random feedback along the chain) and `srbp` (the
output error sent straight to every layer through fixed random matrices; it
needs an example input to learn the shape of each layer's input map). The
three copies start from the same weights and see the same minibatches.

    python examples/02_convert_a_cnn.py           # 15 epochs on 8x8 digits
    RBP_EXAMPLE_QUICK=1 python examples/02_convert_a_cnn.py    # 2 epochs
"""

import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.data import load

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
EPOCHS = 2 if QUICK else 15


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(16, 32, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),  # 2x2
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.Tanh(), nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.head(self.features(x))


data = load("digits")                     # images of shape (1, 8, 8)
torch.manual_seed(0)
base = SmallCNN()                         # your trained or fresh model

# three converted copies; base itself is left untouched
models = {
    name: rbp.convert(base, name, seed=0, example_input=data.x_train[:1])
    for name in ("bp", "rbp", "srbp")
}
opts = {name: torch.optim.SGD(m.parameters(), lr=0.1) for name, m in models.items()}
seconds = dict.fromkeys(models, 0.0)

g = torch.Generator().manual_seed(0)
for epoch in range(1, EPOCHS + 1):
    order = torch.randperm(data.n_train, generator=g)
    for i in range(0, data.n_train, 32):
        idx = order[i:i + 32]
        x, y = data.x_train[idx], data.y_train[idx]
        for name, model in models.items():
            t0 = time.perf_counter()
            opts[name].zero_grad()
            F.cross_entropy(model(x), y).backward()
            opts[name].step()
            seconds[name] += time.perf_counter() - t0

print(f"after {EPOCHS} epochs on digits ({data.n_train} training images):")
print(f"{'algorithm':10s} {'test accuracy':>14s} {'training time (s)':>18s}")
for name, model in models.items():
    with torch.no_grad():
        pred = model(data.x_test).argmax(1)
    acc = (pred == data.y_test).float().mean().item()
    print(f"{name:10s} {acc:14.3f} {seconds[name]:18.2f}")
