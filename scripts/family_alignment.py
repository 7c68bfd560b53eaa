"""Feedback alignment curves of RBP and the wider family on the bundled digits (docs/family.md).

    PYTHONPATH=src MPLBACKEND=Agg python scripts/family_alignment.py [--epochs 30] [--seeds 3]
        [--out docs/img/family/alignment.png] [--json docs/img/family/alignment.json]

Network: 64-100-100-10 tanh MLP, softmax output, Glorot normal weights, minibatch 10, SGD lr 0.1
decayed as 0.1 / (1 + 1e-6 t), every algorithm at its registry defaults.  The seeds of one
algorithm train together as an ensemble.  After every epoch rbp.diagnostics measures, for each
feedback matrix, the angle between it and the forward matrix it stands in for (feedback_angle_h:
h = 1 is the matrix that carries the signal down to hidden layer 1, the mirror of W^2; h = 2
that of W^3).  The figure shows the mean over seeds; the JSON holds every seed's curve and the
final test accuracies.
"""

import argparse
import json
from pathlib import Path

import torch

import rbp
from rbp.train import TrainSpec, train_group

ALGORITHMS = ("rbp", "kp", "wm", "usf", "brsf", "frsf")
LABELS = {"rbp": "RBP (FA)", "kp": "Kolen-Pollack", "wm": "weight mirrors", "usf": "uSF", "brsf": "brSF",
          "frsf": "frSF"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/img/family/alignment.png")
    ap.add_argument("--json", default="docs/img/family/alignment.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in ALGORITHMS:
        spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm(name), hidden=(100, 100), epochs=args.epochs,
                         batch_size=10)
        _, hist = train_group(spec, list(range(args.seeds)))
        results[name] = {
            "feedback_angle": {h: [[r.alignment[f"feedback_angle_{h}"] for r in seed] for seed in hist]
                               for h in (1, 2)},
            "test_accuracy": [seed[-1].test_accuracy for seed in hist],
        }
        final = {h: max(curve[-1] for curve in results[name]["feedback_angle"][h]) for h in (1, 2)}
        print(f"{name:5s} final test accuracy {min(results[name]['test_accuracy']):.3f}.."
              f"{max(results[name]['test_accuracy']):.3f}; largest final feedback angle: "
              f"layer 1 {final[1]:.1f}, layer 2 {final[2]:.1f} degrees", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"protocol": {"network": "64-100-100-10 tanh", "batch_size": 10,
                                                        "lr": 0.1, "decay": 1e-6, "epochs": args.epochs,
                                                        "seeds": args.seeds}, "results": results}, indent=1))
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    epochs = range(1, args.epochs + 1)
    for ax, h in zip(axes, (1, 2)):
        for name in ALGORITHMS:
            curves = torch.tensor(results[name]["feedback_angle"][h])
            ax.plot(epochs, curves.mean(0), label=LABELS[name])
        ax.axhline(30, color="grey", lw=0.8, ls=":")
        ax.set_title(f"feedback to hidden layer {h} (mirror of W^{h + 1})")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 95)
    axes[0].set_ylabel("angle between feedback and forward matrix (degrees)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"digits, 64-100-100-10 tanh, minibatch 10, mean of {args.seeds} seeds", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
