"""Measure how the learning channel aligns with the true gradient; plot it.

Feedback alignment works because the forward weights come to agree with the
random feedback. `rbp.diagnostics.model_alignment` measures that on a fixed
probe batch: for each hidden layer h, the angle between the signal the
channel delivers and backpropagation's delta (``signal_angle_h``), between
the channel's weight update and the true gradient (``update_angle_h``), and
between the feedback matrix and the forward matrix it stands in for
(``feedback_angle_h``). 90 degrees is chance, 0 is perfect agreement. The
probe draws no random numbers and leaves ``.grad`` alone, so measuring does
not change training.

    python examples/03_alignment.py [OUT.png]     # 20 epochs, RBP and SRBP
    RBP_EXAMPLE_QUICK=1 python examples/03_alignment.py [OUT.png]   # 4 epochs
"""

import os
import sys

import matplotlib
import torch
import torch.nn.functional as F

import rbp
from rbp.data import load
from rbp.diagnostics import model_alignment

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
EPOCHS = 4 if QUICK else 20
out = sys.argv[1] if len(sys.argv) > 1 else "alignment.png"

data = load("digits").flat()
probe = data.x_train[:500], data.y_train[:500]    # a fixed probe batch
sizes = [64, 100, 100, 100, 10]                   # three hidden layers
hidden = range(1, len(sizes) - 1)

curves = {}
for algorithm in ("rbp", "srbp"):
    model = rbp.convert(rbp.mlp(sizes, "tanh", seed=0), algorithm, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    # one dict per network; epoch 0 is the state at initialisation
    figures = [model_alignment(model, *probe)[0]]
    for epoch in range(EPOCHS):
        order = torch.randperm(data.n_train, generator=g)
        for i in range(0, data.n_train, 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        figures.append(model_alignment(model, *probe)[0])
    curves[algorithm] = figures
    angles = ", ".join(f"{figures[-1][f'signal_angle_{h}']:.1f}" for h in hidden)
    print(f"{algorithm}: after {EPOCHS} epochs, signal angle per hidden layer "
          f"{angles} degrees")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True,
                         constrained_layout=True)
for ax, (algorithm, figures) in zip(axes, curves.items()):
    for h in hidden:
        ax.plot(range(len(figures)), [f[f"signal_angle_{h}"] for f in figures],
                marker="o", ms=3, label=f"hidden layer {h}")
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.text(len(figures) - 1, 91, "chance (90°)", color="grey", fontsize=8,
            va="bottom", ha="right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{algorithm.upper()} on digits")
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower left", fontsize=9)
axes[0].set_ylabel("signal angle to BP's delta (degrees)")
fig.savefig(out, dpi=120)
print(f"wrote {out}")
