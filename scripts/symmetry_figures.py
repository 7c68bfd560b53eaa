"""The figures and tables of docs/symmetries.md, from the result stores of the symmetry experiments.

    python scripts/symmetry_figures.py [--results results] [--out docs/img/symmetry] [--tables]

Reads the stores ``RESULTS/symmetry-{architectures,nonlinear,adaptive}`` and their
``-fashion`` twins (written by ``rbp run EXPERIMENT --out RESULTS/EXPERIMENT``) and
writes the PNGs that docs/symmetries.md shows.  Every curve is the mean over seeds,
per epoch, of a column the runs recorded (``test_accuracy``, ``feedback_angle_h``,
``weight_change_i``).  A store that is missing is skipped with a message (its panel
stays empty).  ``--tables`` also prints, per store, the last epoch's test accuracy
(mean and sd over seeds) and the feedback angles of every configuration: the numbers
quoted in the docs.  ``rbp report STORE`` draws the same columns per configuration group.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rbp.experiments import load_rows  # noqa: E402

DATASETS = (("", "MNIST"), ("-fashion", "Fashion-MNIST"))
PAPER = ["bp", "bp-small", "arbp", "arbp-rate1", "arbp-small-rate1", "atwin", "atwin-small", "atwin-rate1",
         "adistinct-rate1", "adistinct-small-rate1"]
TWO_HIDDEN = ["h2-bp-small", "h2-arbp-rate1", "h2-arbp-small-rate1", "h2-atwin-small-rate1",
              "h2-adistinct-small-rate1"]


class Stores:
    def __init__(self, root: Path):
        self.root, self.cache = root, {}

    def rows(self, name):
        if name not in self.cache:
            path = self.root / name
            if not (path / "runs").is_dir():
                print(f"skipped: no result store at {path}", file=sys.stderr)
                self.cache[name] = []
            else:
                self.cache[name] = load_rows(path)
        return self.cache[name]

    def curves(self, name, key):
        """{config: (epochs, mean over seeds)} and {config: label} for column ``key``."""
        by = defaultdict(lambda: defaultdict(list))
        labels = {}
        for r in self.rows(name):
            v = r.get(key)
            labels.setdefault(r["config"], r["label"].replace(", 2 hidden layers", ""))
            if v is None or not math.isfinite(v):
                continue
            by[r["config"]][r["epoch"]].append(v)
        return {c: (sorted(e), [statistics.fmean(e[x]) for x in sorted(e)]) for c, e in by.items()}, labels

    def epochs_seeds(self, name):
        rows = self.rows(name)
        seeds = defaultdict(set)
        for r in rows:
            seeds[r["config"]].add(r["seed"])
        return (max((r["epoch"] for r in rows), default=0),
                min((len(s) for s in seeds.values()), default=0))


def _legend(fig, axes, ncol):
    hs, ls = [], []
    for a in axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in ls:
                hs.append(h)
                ls.append(lab)
    fig.legend(hs, ls, loc="outside lower center", ncol=ncol, fontsize=8)


def _subtitle(stores, name, ds):
    epochs, seeds = stores.epochs_seeds(name)
    return f"{ds} ({epochs} epochs, {seeds} seeds)" if epochs else f"{ds} (not run)"


def accuracy_figure(stores, out, name, fname, title, configs=None):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for ax, (suffix, ds) in zip(axes, DATASETS):
        cs, labels = stores.curves(name + suffix, "test_accuracy")
        for i, c in enumerate(configs or list(cs)):
            if c in cs:
                xs, ys = cs[c]
                ax.plot(xs, [100 * y for y in ys], marker="o" if len(xs) <= 12 else None, ms=3, label=labels[c],
                        color=f"C{i % 10}", ls="-" if i < 10 else "--")
        ax.set_title(_subtitle(stores, name + suffix, ds), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: test accuracy per epoch (mean over seeds)", fontsize=11)
    _legend(fig, axes, 3)
    fig.savefig(out / fname, dpi=110)
    plt.close(fig)


def layer_figure(stores, out, name, fname, title, configs, layers=(1, 2, 3, 4), key="feedback_angle"):
    """One panel per (dataset, layer): the feedback angle (linear axis) or weight change (log axis)."""
    angle = key == "feedback_angle"
    fig, axes = plt.subplots(2, len(layers), figsize=(max(3.2 * len(layers) + 1, 9), 6.8), layout="constrained",
                             squeeze=False)
    for row, (suffix, ds) in enumerate(DATASETS):
        for j, h in enumerate(layers):
            ax = axes[row][j]
            cs, labels = stores.curves(name + suffix, f"{key}_{h}")
            for i, c in enumerate(configs):
                if c in cs:
                    xs, ys = cs[c]
                    ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, ms=3, label=labels[c], color=f"C{i}")
            ax.set_title(f"{_subtitle(stores, name + suffix, ds)}: {'hidden' if angle else 'weight'} layer {h}",
                         fontsize=8.5)
            if angle:
                ax.axhline(90, color="grey", ls="--", lw=0.8)
                ax.set_ylim(0, 95)
            else:
                ax.set_yscale("log")
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("angle between C and its mirror (deg)" if angle else "||W_t - W_{t-1}|| / ||W_t||",
                              fontsize=8)
    what = ("angle between each feedback matrix and the forward matrix it mirrors (90° = chance, dashed)"
            if angle else "relative change of the forward weights per epoch (falling = the learning equations settle)")
    fig.suptitle(f"{title}: {what}; mean over seeds", fontsize=10.5)
    _legend(fig, axes.flat, 3 if len(layers) > 2 else 2)
    fig.savefig(out / fname, dpi=110)
    plt.close(fig)


def tables(stores):
    for name in ("symmetry-architectures", "symmetry-nonlinear", "symmetry-adaptive"):
        for suffix, ds in DATASETS:
            store = name + suffix
            rows = stores.rows(store)
            if not rows:
                continue
            last = max(r["epoch"] for r in rows)
            for epoch in sorted({min(10, last), last}):
                _table(stores, store, ds, rows, epoch)


def _table(stores, store, ds, rows, epoch):
    """Test accuracy, feedback angles, layer-1 norm ratio and weight changes at ``epoch``, per configuration."""
    _, seeds = stores.epochs_seeds(store)
    print(f"\n== {store} ({ds}), epoch {epoch}, {seeds} seeds: test % mean (sd) | feedback angles, hidden "
          f"layers 1.. (deg) | norm ratio C/mirror, layer 1 | weight change per epoch, layers 1.. (%)")
    at = defaultdict(list)
    for r in rows:
        if r["epoch"] == epoch:
            at[r["config"]].append(r)

    def mean(rs, key, digits, scale=1.0):
        v = [r.get(key) for r in rs]
        v = [scale * x for x in v if x is not None and math.isfinite(x)]
        return f"{statistics.fmean(v):.{digits}f}" if v else None

    for c, rs in at.items():
        acc = [100 * r["test_accuracy"] for r in rs if math.isfinite(r["test_accuracy"])]
        m = statistics.fmean(acc) if acc else math.nan
        sd = statistics.stdev(acc) if len(acc) > 1 else math.nan
        angles = [a for a in (mean(rs, f"feedback_angle_{h}", 0) for h in range(1, 5)) if a]
        ratio = mean(rs, "feedback_norm_ratio_1", 1) or "-"
        change = [a for a in (mean(rs, f"weight_change_{i}", 1, 100) for i in range(1, 6)) if a]
        bad = sum(bool(r.get("diverged")) for r in rs)
        print(f"  {c:26s} {m:6.2f} ({sd:.2f}) | {', '.join(angles) or '-':16s} | {ratio:>6s} | "
              f"{', '.join(change)}" + (f"  [{bad} diverged]" if bad else "") + f"  n={len(rs)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="folder holding the symmetry-* result stores")
    ap.add_argument("--out", default="docs/img/symmetry", help="where the PNGs go")
    ap.add_argument("--tables", action="store_true", help="also print the numbers quoted in the docs")
    a = ap.parse_args(argv)
    stores, out = Stores(Path(a.results)), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    accuracy_figure(stores, out, "symmetry-architectures", "architectures-accuracy.png",
                    "Learning-channel architectures")
    layer_figure(stores, out, "symmetry-architectures", "architectures-angle.png", "Learning-channel architectures",
                 ["rbp", "twin", "distinct", "srbp"])
    accuracy_figure(stores, out, "symmetry-nonlinear", "nonlinear-accuracy.png", "Linear and tanh learning channels")
    accuracy_figure(stores, out, "symmetry-adaptive", "adaptive-accuracy-paper-network.png",
                    "Adaptive feedback, paper network", PAPER)
    accuracy_figure(stores, out, "symmetry-adaptive", "adaptive-accuracy-two-hidden.png",
                    "Adaptive feedback, two hidden layers", TWO_HIDDEN)
    layer_figure(stores, out, "symmetry-adaptive", "adaptive-angle-paper-network.png",
                 "Adaptive feedback, paper network",
                 ["arbp", "arbp-rate1", "arbp-small-rate1", "atwin", "atwin-small", "atwin-rate1", "adistinct-rate1",
                  "adistinct-small-rate1"])
    layer_figure(stores, out, "symmetry-adaptive", "adaptive-angle-two-hidden.png",
                 "Adaptive feedback, two hidden layers", TWO_HIDDEN[1:], layers=(1, 2))
    layer_figure(stores, out, "symmetry-adaptive", "adaptive-settling.png", "Adaptive feedback, paper network",
                 ["bp", "arbp-rate1", "arbp-small-rate1", "atwin", "adistinct-small-rate1"], layers=(1, 3, 5),
                 key="weight_change")
    print(f"figures written to {out}")
    if a.tables:
        tables(stores)


if __name__ == "__main__":
    main()
