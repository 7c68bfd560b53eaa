"""Pictures of the theory workbench (matplotlib, Agg backend, PNG files).

Each function draws one figure, writes it to ``path`` and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._optional import require
from ..results import atomic_path

matplotlib = require("matplotlib", "drawing the theory figures", extra="theory")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import linear, predictions  # noqa: E402
from .checks import random_chain_problem  # noqa: E402

__all__ = [
    "vector_field_a111",
    "chain_trajectories",
    "autoencoder_convergence",
    "nonlinear_trajectories",
    "two_layer_alignment_panels",
    "two_layer_loss_panels",
    "mnist_fa",
    "make_all",
]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def vector_field_a111(path, *, c1: float = 1.0, alpha: float = 1.0, beta: float = 1.0,
                      lim: float = 3.5, starts=None) -> Path:
    """Vector field of RBP on ``A(1,1,1)`` (paper 1, Fig. 11), with trajectories.

    Shows the critical hyperbola ``a1 a2 = alpha/beta`` split into stable and
    unstable parts, the parabola ``a1^2 + c1 a2 = 0`` that separates them,
    and a few integrated trajectories (which follow parabolas
    ``a2 = a1^2/(2 c1) + const``) ending on stable fixed points.
    """
    fig, ax = plt.subplots(figsize=(7, 7.6))
    g = np.linspace(-lim, lim, 29)
    A1, A2 = np.meshgrid(g, g)
    err = alpha - beta * A1 * A2
    U, V = c1 * err, A1 * err
    speed = np.hypot(U, V)
    # dP/dt = (alpha - beta P)(a1^2 + c1 a2): arrows coloured by its sign
    dP = err * (A1 ** 2 + c1 * A2)
    with np.errstate(invalid="ignore", divide="ignore"):
        for mask, col, lab in [(dP > 0, "#8fb8de", "dP/dt > 0"), (dP <= 0, "#f2b880", "dP/dt < 0")]:
            ax.quiver(A1[mask], A2[mask], (U / speed)[mask], (V / speed)[mask], color=col,
                      angles="xy", scale=45, width=0.0025, label=f"direction of flow ({lab})")
    x = np.linspace(-lim, lim, 2001)
    x = x[np.abs(x) > 1e-3]
    y = alpha / (beta * x)
    unstable = x ** 2 + c1 * y < 0
    ys = np.where(unstable | (np.abs(y) > lim), np.nan, y)
    yu = np.where(~unstable | (np.abs(y) > lim), np.nan, y)
    ax.plot(x, ys, color="tab:green", lw=2.5, label=r"stable fixed points ($a_1 a_2=\alpha/\beta$)")
    ax.plot(x, yu, color="tab:red", lw=2.5, label=r"unstable fixed points ($a_1^2 + c_1 a_2 < 0$)")
    ax.plot(x, -x ** 2 / c1, "k--", lw=1, label=r"parabola $a_1^2 + c_1 a_2 = 0$")
    if starts is None:
        starts = [(-1.2, -2.9), (-0.8, -2.0), (-0.6, -1.0), (0.3, -2.8), (-2.8, 1.0), (-1.5, -0.2),
                  (1.5, -2.0), (2.5, 2.5), (0.2, 0.2), (-1.0, 2.5)]
    for i, s in enumerate(starts):
        tr = linear.integrate_chain(s, [c1], alpha, beta, t_max=200)
        ax.plot(tr.y[:, 0], tr.y[:, 1], color="tab:blue", lw=1.2,
                label="trajectories" if i == 0 else None)
        ax.plot(*s, "o", color="tab:blue", ms=4)
        ax.plot(*tr.final, "*", color="navy", ms=9, label="end point" if i == 0 else None)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(r"$a_1$ (lower weight)")
    ax.set_ylabel(r"$a_2$ (upper weight)")
    ax.set_title(rf"RBP on A(1,1,1): vector field, $c_1={c1:g}$, $\alpha={alpha:g}$, $\beta={beta:g}$")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8)
    return _save(fig, path)


def chain_trajectories(path, *, depths=(2, 3, 4, 5), seed: int = 0) -> Path:
    """Weights of RBP chains against time, with the predicted limits dashed."""
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.8), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, L in zip(axes[0], depths):
        a0, c, alpha, beta = random_chain_problem(L, rng)
        tr = linear.integrate_chain(a0, c, alpha, beta)
        pred = predictions.chain_fixed_point(a0, c, alpha, beta)
        t = np.maximum(tr.t, 1e-3)
        for i in range(L):
            line, = ax.plot(t, tr.y[:, i], lw=1.5, label=f"$a_{i + 1}$")
            ax.axhline(pred[i], color=line.get_color(), ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("time t")
        ax.set_ylabel("weight")
        diff = float(np.max(np.abs(pred - tr.final)))
        ax.set_title(f"chain, L={L}: |pred - sim| = {diff:.1e}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("RBP weight trajectories of A(1,...,1) chains (dashed: limits predicted by Thm 4)")
    fig.tight_layout()
    return _save(fig, path)


def autoencoder_convergence(path, *, n: int = 5, seed: int = 0) -> Path:
    """Distances of ``A`` to ``t* C`` and of ``BA`` to ``C^T C/|C|^2`` (Thm 6), and Lemma 1's invariant."""
    rng = np.random.default_rng(seed)
    A0, B0, C = rng.normal(size=n) * 0.5, rng.normal(size=n) * 0.5, rng.normal(size=n)
    tr = linear.integrate_autoencoder(A0, B0, C)
    p = predictions.autoencoder_fixed_point(A0, B0, C)
    A, B = tr.y[:, :n], tr.y[:, n:]
    dA = np.max(np.abs(A - p["A"]), axis=1)
    dP = np.array([np.max(np.abs(np.outer(b, a) - p["P"])) for a, b in zip(A, B)])
    inv = np.array([predictions.autoencoder_invariant(a, b, C) for a, b in zip(A, B)])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = np.maximum(tr.t, 1e-3)
    ax1.semilogy(t, dA, label=r"$\max|A - t^* C|$")
    ax1.semilogy(t, dP, label=r"$\max|BA - C^TC/|C|^2|$")
    ax1.set_xscale("log")
    ax1.set_xlabel("time t")
    ax1.set_ylabel("distance to the predicted limit")
    ax1.set_title(f"autoencoder A({n},1,{n}): Thm 6, t* = {p['t']:.4f}", fontsize=10)
    ax1.legend(fontsize=8)
    ax2.plot(t, inv - inv[0])
    ax2.set_xscale("log")
    ax2.set_xlabel("time t")
    ax2.set_ylabel(r"$(CB - |A|^2/2) - K$")
    ax2.set_title("Lemma 1: the invariant stays constant", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def nonlinear_trajectories(path, *, mu: float = 2.0, seed: int = 0) -> Path:
    """Power-unit ``A(1,1,1)``: with ``f'`` the weights settle (Thm 12), without it ``a1`` drifts."""
    rng = np.random.default_rng(seed)
    mom = linear.nonlinear_moments_uniform(mu)
    c1 = float(rng.uniform(0.5, 1.5))
    a0 = rng.uniform(0.2, 1.5, 2)
    t_max = 200.0
    w = linear.integrate_nonlinear(a0, mu, c1, mom, "fprime", t_max=t_max, stop_at_rest=False)
    wo = linear.integrate_nonlinear(a0, mu, c1, mom, "no-fprime", t_max=t_max, stop_at_rest=False)
    pred = predictions.nonlinear_fixed_point(a0, mu, c1, mom["alpha"], mom["beta"])
    drift = predictions.nonlinear_no_fprime_drift(mu, c1, mom)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, name in enumerate(["$a_1$", "$a_2$"]):
        line, = ax1.plot(np.maximum(w.t, 1e-3), w.y[:, i], label=f"{name}, with f'")
        ax1.axhline(pred[i], color=line.get_color(), ls="--", lw=0.8)
        ax2.plot(wo.t, wo.y[:, i], label=f"{name}, without f'")
    ax2.plot(wo.t, a0[0] + drift["drift_rate"] * wo.t, "k:", lw=1,
             label=r"slope $c_1(\gamma - \delta\alpha/\beta)$ (predicted drift)")
    ax1.set_xscale("log")
    ax1.set_title(f"with f' (mu={mu:g}): converges to Thm 12's root (dashed)", fontsize=10)
    ax2.set_title("without f': no fixed point, a1 keeps drifting", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xlabel("time t")
        ax.set_ylabel("weight")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _runs_label(records) -> str:
    """'5 runs per point', or e.g. '4 runs (p <= 1600), 1 run (p = 3200)' when they differ."""
    by = {}
    for r in records:
        by.setdefault(r["runs"], set()).add(r["width"])
    if len(by) == 1:
        k = next(iter(by))
        return f"{k} run{'s' if k != 1 else ''} per point"
    parts = []
    for k in sorted(by, reverse=True):
        ws = sorted(by[k])
        span = f"p = {ws[0]}" if len(ws) == 1 else f"p = {ws[0]}-{ws[-1]}"
        parts.append(f"{k} run{'s' if k != 1 else ''} ({span})")
    return ", ".join(parts)


def _panel_grid(k: int):
    cols = min(k, 2)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:k]


def two_layer_alignment_panels(path, panels, *, protocol: str = "authors") -> Path:
    """Alignment ``cos(b, beta)`` against width, one panel per sweep, one line per lambda.

    ``panels``: ``(activation, target, records, loss_curves)`` per sweep file; the
    points are the mean +- sd over the runs that did not diverge, and the number
    of diverged runs is written beside a point that had any.
    """
    fig, axes = _panel_grid(len(panels))
    all_widths = sorted({r["width"] for _, _, records, _ in panels for r in records})
    for ax, (act, target, records, _) in zip(axes, panels):
        lams = sorted({r["lam"] for r in records})
        for lam in lams:
            rs = sorted((r for r in records if r["lam"] == lam), key=lambda r: r["width"])
            w = np.array([r["width"] for r in rs])
            m = np.array([np.nan if r["alignment_mean"] is None else r["alignment_mean"] for r in rs])
            sd = np.array([np.nan if r["alignment_sd"] is None else r["alignment_sd"] for r in rs])
            line = ax.errorbar(w, m, yerr=sd, marker="o", ms=4, capsize=3, label=rf"$\lambda={lam:g}$")
            for r, wi, mi in zip(rs, w, m):
                if r["diverged_runs"]:
                    ax.annotate(f"{r['diverged_runs']}/{r['runs']} div.", (wi, 0.02 if np.isnan(mi) else mi),
                                textcoords="offset points", xytext=(4, -10), fontsize=7,
                                color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_widths)                 # the same axis in every panel
        ax.set_xticklabels([str(w) for w in all_widths], fontsize=8)
        ax.set_xlim(all_widths[0] / 1.3, all_widths[-1] * 1.3)
        ax.minorticks_off()
        ax.set_xlabel("hidden width p")
        ax.set_ylabel(r"alignment $\cos(b, \beta)$")
        ax.set_ylim(-0.05, 1.02)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.set_title(f"{act} units, target: {target}\n{_runs_label(records)}", fontsize=9)
        ax.legend(fontsize=8, loc="lower left")
    r0 = panels[0][2][0]
    fig.suptitle(f"Two-layer feedback alignment, {protocol} protocol (n={r0['n']}, d={r0['d']}): "
                 "alignment at the end vs width (mean $\\pm$ sd over runs)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def two_layer_loss_panels(path, panels, *, protocol: str = "authors") -> Path:
    """Mean training loss against step, one panel per sweep: every lambda at its smallest
    (solid) and its largest (dashed) width in the sweep."""
    fig, axes = _panel_grid(len(panels))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (act, target, records, curves) in zip(axes, panels):
        lams = sorted({c["lam"] for c in curves})
        for i, lam in enumerate(lams):
            widths = sorted({c["width"] for c in curves if c["lam"] == lam})
            ends = sorted({widths[0], widths[-1]})
            for w in ends:
                cv = [c for c in curves if c["width"] == w and c["lam"] == lam]
                if not cv:
                    continue
                y = np.array([np.nan if v is None else v for v in cv[0]["loss_mean"]], dtype=float)
                ax.semilogy(cv[0]["steps"], y, color=colours[i % len(colours)],
                            ls="-" if w == ends[0] else "--", lw=1.2,
                            label=rf"$\lambda={lam:g}$, p={w}")
        ax.set_xlabel("gradient step")
        ax.set_ylabel("training loss (mean over runs)")
        ax.set_title(f"{act} units, target: {target}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    loss = "(1/n) sum (f - y)^2" if protocol == "authors" else "1/2 sum (f - y)^2"
    fig.suptitle(f"Two-layer feedback alignment, {protocol} protocol: training loss {loss} "
                 "(a stopped run keeps its last value; diverged runs left out)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def mnist_fa(path, rows) -> Path:
    """Paper 3's MNIST network: test accuracy and alignment cos(B, W_out) per epoch, one line per run group.

    ``rows`` are the per-epoch dicts of :func:`rbp.theory.mnist.train_mnist_fa`
    (all seeds); lines show the mean over seeds of each (algorithm, lambda).
    """
    groups = {}
    for r in rows:
        groups.setdefault((r["algorithm"], r["lam"]), []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((alg, lam), rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0] == "bp", kv[0][1]))):
        colour = colours[i % len(colours)]
        epochs = sorted({r["epoch"] for r in rs})
        acc = [np.mean([r["test_accuracy"] for r in rs if r["epoch"] == e]) for e in epochs]
        label = ("BP" if alg == "bp" else "FA") + rf", $\lambda={lam:g}$"
        ax1.plot(epochs, 100 * np.array(acc), marker="o", ms=3, color=colour, label=label)
        if alg != "bp":
            al = [np.mean([r["alignment"] for r in rs if r["epoch"] == e]) for e in epochs]
            ax2.plot(epochs, al, marker="o", ms=3, color=colour, label=label)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("784-1000-10 ReLU on MNIST: test accuracy", fontsize=10)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(r"alignment $\cos(B, W_{out})$")
    ax2.set_ylim(0, 1)
    ax2.set_title("feedback alignment of the output weights", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def make_all(out_dir, *, seed: int = 0) -> list[Path]:
    """The ODE figures (the two-layer ones come from ``rbp theory sweep``)."""
    out = Path(out_dir)
    os.makedirs(out, exist_ok=True)
    return [
        vector_field_a111(out / "a111_vector_field.png"),
        chain_trajectories(out / "chain_trajectories.png", seed=seed),
        autoencoder_convergence(out / "autoencoder.png", seed=seed),
        nonlinear_trajectories(out / "nonlinear.png", seed=seed),
    ]
