"""Two-layer networks trained with random backpropagation weights (paper 3).

Song, Xu & Lafferty (NeurIPS 2021) study

    f(x) = (1/sqrt(p)) sum_r beta_r psi(w_r . x),
    loss = 1/2 |f - y|^2 + (lambda/2) |beta|^2,

trained by full-batch feedback alignment: with ``e = f - y`` and
``Phi = psi(X W)``,

    beta <- beta - eta ((1/sqrt p) Phi^T e + lambda beta)
    W    <- W    - (eta/sqrt p) X^T (psi'(X W) * (e b^T))

where ``b`` is a fixed random vector (backpropagation uses ``beta`` in its
place). Their results: in the over-parameterised regime the training error
goes to zero exponentially fast, and the alignment ``cos(b, beta)`` tends to
zero as the width ``p`` grows when ``lambda = 0`` but stays bounded away from
zero when ``lambda > 0``.

Implementation notes (our choices, also in ``docs/theory.md``):

* Everything is batched over independent runs (leading dimension ``R``) in
  float64 torch tensors.
* The dynamics only ever use ``W`` through ``Z = X W``; since
  ``X dW = -(eta/sqrt p) (X X^T) (psi'(Z) * e b^T)``, we update ``Z`` with the
  ``n x n`` Gram matrix instead of ``W`` when ``n <= d``. This is the same
  recursion (up to rounding) and about ``2 d / n`` times cheaper.
* Inputs are ``x ~ N(0, I_d / d)`` (so ``|x| ~ 1`` and ``w_r . x ~ N(0,1)``);
  targets are ``y = X theta`` with ``theta ~ N(0, I_d)`` (linear model) or
  the output of a random teacher network rescaled to unit root mean square.
* The default step size is ``eta = s / lambda_max(K)`` where
  ``K = (1/p) Phi Phi^T`` is the kernel of the output layer at
  initialisation (largest over the runs), ``s = 1.8`` without penalty and
  ``s = 0.2`` with one (the penalty makes ``W`` grow without bound, and the
  kernel with it, so a step that starts at the edge of stability would
  eventually diverge).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "activation",
    "make_data",
    "TwoLayerResult",
    "train_two_layer",
    "alignment",
    "default_step_size",
    "sweep",
]

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")

# Default step size, as a multiple of 1 / lambda_max of the initial output kernel
# K = (1/p) Phi Phi^T. A fixed step on a quadratic is stable below 2 / lambda_max,
# and the best fixed step, 2 / (lambda_max + lambda_min), is just under it when K
# is badly conditioned (sigmoid: lambda_max / lambda_min ~ 1500 at p = 3200, the
# top eigenvector being the constant direction that sigmoid's mean 1/2 puts in
# every feature). 1.8 keeps a margin for the drift of the kernel and the
# feedback-alignment term. With a penalty the weights W grow without bound and
# the kernel with them, hence the smaller default there.
DEFAULT_ETA_SCALE = 1.8
DEFAULT_ETA_SCALE_PENALTY = 0.2

# Largest size of the (runs x n x p) float64 tensors of one group of runs trained together.
CHUNK_BYTES = 2 << 20


def activation(name: str):
    """Return ``(psi, psi_and_grad)`` for one of :data:`ACTIVATIONS`.

    ``psi_and_grad(z)`` gives ``(psi(z), psi'(z))`` sharing the work
    (e.g. ``tanh' = 1 - tanh^2``).
    """
    if name == "linear":
        return (lambda z: z), (lambda z: (z, torch.ones_like(z)))
    if name == "relu":
        return torch.relu, (lambda z: (torch.relu(z), (z > 0).to(z.dtype)))
    if name == "tanh":
        def tanh_grad(z):
            t = torch.tanh(z)
            return t, torch.addcmul(torch.ones_like(t), t, t, value=-1.0)  # 1 - t^2
        return torch.tanh, tanh_grad
    if name == "sigmoid":
        def sig_grad(z):
            s = torch.sigmoid(z)
            return s, torch.addcmul(s, s, s, value=-1.0)  # s (1 - s)
        return torch.sigmoid, sig_grad
    raise ConfigError(f"unknown activation {name!r}: choose from {', '.join(ACTIVATIONS)}")


def make_data(runs: int, n: int, d: int, *, target: str = "linear", teacher_width: int = 5,
              teacher_activation: str = "relu", generator: torch.Generator | None = None):
    """Inputs ``X`` (runs x n x d) with rows ``~ N(0, I/d)`` and targets ``y`` (runs x n)."""
    g = generator
    X = torch.randn(runs, n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    if target == "linear":
        theta = torch.randn(runs, d, 1, generator=g, dtype=torch.float64)
        y = (X @ theta).squeeze(-1)
    elif target == "teacher":
        psi, _ = activation(teacher_activation)
        U = torch.randn(runs, d, teacher_width, generator=g, dtype=torch.float64)
        v = torch.randn(runs, teacher_width, 1, generator=g, dtype=torch.float64)
        y = (psi(X @ U) @ v).squeeze(-1) / math.sqrt(teacher_width)
        y = y / y.pow(2).mean(dim=1, keepdim=True).sqrt()
    else:
        raise ConfigError(f"unknown target {target!r}: use linear or teacher")
    return X, y


def alignment(b: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``cos(b, beta)`` per run (last dimension is the width)."""
    return (b * beta).sum(-1) / (b.norm(dim=-1) * beta.norm(dim=-1))


def default_step_size(Phi: torch.Tensor, p: int) -> float:
    """``1 / lambda_max((1/p) Phi Phi^T)``, the largest over the runs."""
    K = Phi @ Phi.transpose(-1, -2) / p
    lam = torch.linalg.eigvalsh(K)[..., -1].max().item()
    return 1.0 / lam


@dataclass
class TwoLayerResult:
    """Outcome of :func:`train_two_layer` (per-run arrays have length ``runs``)."""

    alignment: np.ndarray          # final cos(b, beta) per run
    loss: np.ndarray               # final 1/2 |f - y|^2 per run
    loss_curve: np.ndarray         # (recorded steps, runs)
    alignment_curve: np.ndarray    # (recorded steps, runs)
    record_steps: np.ndarray
    eta: float
    steps: int                     # steps actually taken
    seconds: float
    diverged: np.ndarray           # per run
    config: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "alignment_mean": float(np.mean(self.alignment)),
            "alignment_sd": float(np.std(self.alignment, ddof=1)) if self.alignment.size > 1 else 0.0,
            "loss_mean": float(np.mean(self.loss)),
            "loss_max": float(np.max(self.loss)),
            "diverged_runs": int(np.sum(self.diverged)),
            "eta": self.eta, "steps": self.steps, "seconds": round(self.seconds, 3),
            **self.config,
        }


def train_two_layer(
    *,
    activation_name: str = "relu",
    width: int = 3200,
    lam: float = 0.0,
    runs: int = 1,
    n: int = 50,
    d: int = 150,
    steps: int = 2000,
    eta: float | None = None,
    eta_scale: float | None = None,
    tol: float = 1e-18,
    algorithm: str = "fa",
    target: str = "linear",
    seed: int = 0,
    record_every: int = 10,
    track: str = "auto",
    threads: int | None = None,
    chunk_bytes: int | None = CHUNK_BYTES,
) -> TwoLayerResult:
    """Full-batch training of ``runs`` independent two-layer networks at once.

    ``algorithm='fa'`` is feedback alignment (fixed random ``b``), ``'bp'``
    backpropagation. ``track`` selects the state that is updated: ``'z'``
    (``Z = X W``, cheaper when ``n <= d``), ``'w'`` (``W`` itself) or
    ``'auto'``. Loss is ``1/2 |f - y|^2`` without the penalty.
    Without an explicit ``eta`` the step size is
    ``eta_scale / lambda_max((1/p) Phi Phi^T)`` at initialisation, with
    ``eta_scale`` 1.8 for ``lam == 0`` and 0.2 for ``lam > 0`` by default (with a
    penalty the weights ``W`` keep growing, and so does the kernel).
    ``chunk_bytes`` bounds the size of one group of runs' ``n x p`` tensors
    (``None``: all runs in one batch); it changes the speed, not the result.
    Training stops early once every run's loss is below ``tol``; a run whose
    loss becomes non-finite or grows 1e6-fold above its minimum is reported
    as diverged (``result.diverged``).
    """
    if width < 1 or runs < 1 or n < 1 or d < 1 or steps < 0:
        raise ConfigError("width, runs, n and d must be positive and steps non-negative")
    if lam < 0:
        raise ConfigError(f"lambda must be non-negative, got {lam}")
    if algorithm not in ("fa", "bp"):
        raise ConfigError(f"unknown algorithm {algorithm!r}: use fa or bp")
    if eta is not None and not eta > 0:
        raise ConfigError(f"step size must be positive, got {eta}")
    if record_every < 1:
        raise ConfigError("record_every must be at least 1")
    psi, psi_grad = activation(activation_name)
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    X, y = make_data(runs, n, d, target=target, generator=g)
    W = torch.randn(runs, d, width, generator=g, dtype=torch.float64)
    beta = torch.randn(runs, width, generator=g, dtype=torch.float64)
    b = torch.randn(runs, width, generator=g, dtype=torch.float64)
    sp = math.sqrt(width)
    use_z = (track == "z") or (track == "auto" and n <= d)
    if track not in ("auto", "z", "w"):
        raise ConfigError(f"unknown track {track!r}")
    Z = X @ W
    if use_z:
        G = X @ X.transpose(1, 2)  # (R, n, n)
    if eta is None:
        if eta_scale is None:
            eta_scale = DEFAULT_ETA_SCALE if lam == 0 else DEFAULT_ETA_SCALE_PENALTY
        if not eta_scale > 0:
            raise ConfigError(f"eta_scale must be positive, got {eta_scale}")
        eta = eta_scale * default_step_size(psi(Z), width)
    # Runs are independent, so the step loops over groups of runs small enough for
    # their (runs x n x p) tensors to stay in cache: at p = 12800 one run per group
    # took 26 ms per run-step against 44 ms with five runs batched. The group sizes
    # do not change the numbers: every record is taken before that step's update,
    # and the stopping rule looks at all runs together.
    size = max(1, min(runs, int(chunk_bytes // (8 * n * width)))) if chunk_bytes else runs
    groups = [slice(i, min(i + size, runs)) for i in range(0, runs, size)]
    Zs = [Z[gr].clone() for gr in groups]
    Ws = [W[gr].clone() for gr in groups] if not use_z else None
    Xs = [X[gr] for gr in groups]
    Gs = [G[gr] for gr in groups] if use_z else None
    betas = [beta[gr].clone() for gr in groups]
    bs = [b[gr] for gr in groups]
    ys = [y[gr] for gr in groups]
    del Z, W, beta
    losses, aligns, rec = [], [], []
    best = torch.full((runs,), math.inf, dtype=torch.float64)
    diverged = torch.zeros(runs, dtype=torch.bool)
    last = steps
    for step in range(steps + 1):
        update = step < steps
        loss_parts, align_parts = [], []
        for k in range(len(groups)):
            Zk, bk, betak = Zs[k], bs[k], betas[k]
            Phi, dPhi = psi_grad(Zk)
            e = (Phi @ betak.unsqueeze(-1)).squeeze(-1) / sp - ys[k]
            loss_parts.append(0.5 * e.pow(2).sum(-1))
            align_parts.append(alignment(bk, betak))
            if not update:
                continue
            # the update is made before the stopping rule is known; if training stops at
            # this step it is simply not used (nothing after it is recorded)
            back = bk if algorithm == "fa" else betak
            # (r, n, p): psi'(Z) * (e b^T), written over psi'(Z), which is not used again
            M = dPhi.mul_(e.unsqueeze(-1)).mul_(back.unsqueeze(1))
            # beta <- (1 - eta lam) beta - (eta/sqrt p) Phi^T e, in one batched call
            betas[k] = torch.baddbmm(betak.unsqueeze(-1), Phi.transpose(1, 2), e.unsqueeze(-1),
                                     beta=1.0 - eta * lam, alpha=-eta / sp).squeeze(-1)
            if use_z:
                Zk.baddbmm_(Gs[k], M, alpha=-eta / sp)
            else:
                Ws[k].baddbmm_(Xs[k].transpose(1, 2), M, alpha=-eta / sp)
                Zs[k] = Xs[k] @ Ws[k]
        loss = torch.cat(loss_parts)
        best = torch.minimum(best, loss)
        diverged |= ~torch.isfinite(loss) | (loss > 1e6 * best)
        done = bool((loss < tol).all()) or bool(diverged.any())
        if step % record_every == 0 or step == steps or done:
            losses.append(loss.numpy().copy())
            aligns.append(torch.cat(align_parts).numpy().copy())
            rec.append(step)
        if step == steps or done:
            last = step
            break
    seconds = time.perf_counter() - t_start
    return TwoLayerResult(
        alignment=aligns[-1], loss=losses[-1],
        loss_curve=np.array(losses), alignment_curve=np.array(aligns),
        record_steps=np.array(rec), eta=float(eta), steps=last, seconds=seconds,
        diverged=diverged.numpy().copy(),
        config={"activation": activation_name, "width": width, "lam": lam, "runs": runs,
                "n": n, "d": d, "algorithm": algorithm, "target": target, "seed": seed},
    )


def sweep(widths, lams, *, activation_name="relu", runs=5, steps=2000, progress=None, **kwargs):
    """Train every (width, lambda) pair; returns a list of :class:`TwoLayerResult`."""
    out = []
    for lam in lams:
        for p in widths:
            res = train_two_layer(activation_name=activation_name, width=int(p), lam=float(lam),
                                  runs=runs, steps=steps, **kwargs)
            out.append(res)
            if progress is not None:
                progress(res)
    return out
