"""Two-layer networks trained with random backpropagation weights (paper 3).

Song, Xu & Lafferty (NeurIPS 2021) study

    f(x) = (1/sqrt(p)) sum_r beta_r psi(w_r . x)

trained by full-batch feedback alignment (FA): with ``e = f - y``,
``Z = X W^T`` (``n x p``), ``Phi = psi(Z)`` and ``g = dL/df`` (``2 e / n`` for
the mean squared error, ``e`` for ``1/2 |e|^2``),

    beta <- beta - eta ((1/sqrt p) Phi^T g + lambda beta)
    W    <- W    - (eta/sqrt p) (psi'(Z) * (g b^T))^T X

where ``b`` is a fixed random vector (backpropagation uses ``beta`` in its
place). Their results: the training error goes to zero exponentially fast in
the over-parameterised regime, and the alignment ``cos(b, beta)`` tends to zero
as the width ``p`` grows when ``lambda = 0`` but stays away from zero when
``lambda > 0``.

Two protocols (``docs/theory.md`` compares them):

* ``"authors"`` (the default) follows the authors' published simulations:
  ``x ~ N(0, I_d)``, targets from ``y = X theta`` (linear units) or from a random
  two-layer teacher of the same width and activation, ``psi(X U^T) v / sqrt(p)``
  with N(0, 1) weights (the student's own form, so the targets' scale does not grow with ``p``);
  mean squared error; a fixed step per activation; at least
  ``5000 sqrt(p/200)`` steps, then on until the loss changes by less than
  0.001 between two checks 1000 steps apart.
* ``"normalised"``: ``x ~ N(0, I_d/d)``, unit-scale targets, ``1/2 |e|^2``, a
  step of ``s / lambda_max`` of each run's initial tangent kernel, run until
  the loss is below 1e-18 or a step budget is spent.

Implementation notes:

* Runs are independent; each run's random draws come from its own generator,
  seeded from ``(seed, run index)``, so a run gives the same numbers whatever
  else is trained with it. Runs are batched (leading dimension), in groups
  small enough to stay in cache, and each run stops on its own.
* The dynamics use ``W`` only through ``Z = X W^T``; since
  ``X dW^T = -(1/sqrt p) (X X^T) M`` with ``M = eta psi'(Z) * (g b^T)``, we
  update ``Z`` with the ``n x n`` Gram matrix (cheaper when ``n <= d``).
* Linear units need no ``p``-sized state at all: every FA update of ``W`` is
  ``b`` times a vector, and ``beta`` stays in the span of ``beta(0)``, ``b`` and
  the ``n`` columns of ``W(0) X^T``. :class:`_LinearState` runs the same
  recursion in those coordinates, at a cost independent of the width.
* A run whose loss becomes non-finite is *diverged*: it stops and is left out
  of the means (``summary()`` counts it).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "PROTOCOLS",
    "AUTHORS_WIDTHS",
    "Protocol",
    "StopRule",
    "activation",
    "alignment",
    "draw_run",
    "fa_gradients",
    "authors_min_steps",
    "TwoLayerResult",
    "train_two_layer",
    "sweep",
]

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")

# The authors' grids (widths 200, 400, ..., 12800, and lambda per activation).
AUTHORS_WIDTHS = (200, 400, 800, 1600, 3200, 6400, 12800)


@dataclass(frozen=True)
class Protocol:
    """Data, loss, step size and stopping rule of one simulation protocol."""

    name: str
    input_scale: str           # "unit": x ~ N(0, I_d); "sphere": x ~ N(0, I_d / d)
    teacher: str               # "same": width-p teacher of the same activation, with 1/sqrt(p);
                               # "relu5": 5 ReLU units, rescaled to unit RMS
    loss: str                  # "mse": (1/n) sum e^2; "half_sse": 1/2 sum e^2
    step: dict | None          # fixed step per activation, or None: kernel-scaled step
    eta_scale: tuple | None    # (lambda = 0, lambda > 0) multiples of 1/lambda_max of the tangent kernel
    min_steps: int | None      # None: 5000 sqrt(p / 200)
    max_steps: int
    check_every: int           # 0: no loss-change test
    change_tol: float
    loss_tol: float            # stop once the loss is below this (0: never)
    lams: dict                 # the sweep's default lambda grid per activation
    runs: int                  # the sweep's default runs per point


PROTOCOLS = {
    "authors": Protocol(
        name="authors", input_scale="unit", teacher="same", loss="mse",
        step={"linear": 1e-3, "relu": 1e-2, "tanh": 0.1, "sigmoid": 0.1}, eta_scale=None,
        min_steps=None, max_steps=400_000, check_every=1000, change_tol=1e-3, loss_tol=0.0,
        lams={"linear": (0.0, 0.2, 0.3, 0.5), "relu": (0.0, 0.02, 0.05, 0.2),
              "tanh": (0.0, 0.001, 0.002, 0.005), "sigmoid": (0.0, 0.001, 0.003, 0.01)},
        runs=50),
    "normalised": Protocol(
        name="normalised", input_scale="sphere", teacher="relu5", loss="half_sse",
        step=None, eta_scale=(1.8, 0.2), min_steps=0, max_steps=20_000, check_every=0,
        change_tol=0.0, loss_tol=1e-18,
        lams={a: (0.0, 0.01, 0.1) for a in ACTIVATIONS}, runs=5),
}

# How each kind of target is drawn (recorded with every result, so that results drawn by an older
# form are recognised: before 2026-12-07 the "same" teacher had no 1/sqrt(p)).
TARGET_FORMS = {"linear": "X theta", "same": "psi(X U^T) v / sqrt(p)", "relu5": "relu(X U^T) v / sqrt(5), unit RMS"}


def default_target(protocol: Protocol, activation_name: str) -> str:
    """The target a run draws when none is named: the width-p teacher for nonlinear units of the
    authors' protocol, else the linear target."""
    return "teacher" if (protocol.teacher == "same" and activation_name != "linear") else "linear"


def target_form(protocol: Protocol, target: str) -> str:
    """The formula of ``target`` under ``protocol`` (:data:`TARGET_FORMS`)."""
    return TARGET_FORMS["linear" if target == "linear" else protocol.teacher]


# Largest size of the (runs x n x p) tensors of one group of runs trained together.
CHUNK_BYTES = 2 << 20


def authors_min_steps(width: int) -> int:
    """The authors' least number of steps, ``5000 sqrt(p / 200)`` (rounded up)."""
    return int(math.ceil(5000 * math.sqrt(width / 200) - 1e-9))


@dataclass(frozen=True)
class StopRule:
    """When a run stops (each run on its own).

    At step ``s`` (the loss after ``s`` updates) a run stops as *converged* when
    its loss is below ``loss_tol``, or when ``s`` is a multiple of
    ``check_every``, ``s >= min_steps`` and the loss changed by less than
    ``change_tol`` since the previous check (``check_every`` steps earlier). It
    stops as *capped* at ``max_steps``, and as *diverged* when its loss is not
    finite (tested where the rule looks at the loss: every ``record_every`` and
    every ``check_every`` steps, or every step when ``loss_tol > 0``).
    """

    min_steps: int = 0
    max_steps: int = 10_000
    check_every: int = 0
    change_tol: float = 0.0
    loss_tol: float = 0.0

    def check(self, step: int, loss: torch.Tensor, last: torch.Tensor):
        """``(converged, new_last)`` for the losses ``loss`` at ``step`` (``last``: the previous check)."""
        conv = loss < self.loss_tol if self.loss_tol > 0 else torch.zeros_like(loss, dtype=torch.bool)
        if self.check_every and step % self.check_every == 0:
            if step >= max(self.min_steps, self.check_every):
                conv = conv | ((loss - last).abs() < self.change_tol)
            last = loss.clone()
        return conv, last


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


def alignment(b: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``cos(b, beta)`` per run (last dimension is the width)."""
    return (b * beta).sum(-1) / (b.norm(dim=-1) * beta.norm(dim=-1))


def _run_seed(seed: int, run: int) -> int:
    """A 63-bit generator seed from ``(seed, run index)`` (numpy's SeedSequence)."""
    a, b = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(run)]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


def draw_run(protocol: Protocol, activation_name: str, width: int, n: int, d: int, *,
             target: str, seed: int, run: int):
    """One run's ``X`` (n x d), ``y`` (n), ``W`` (p x d), ``beta`` (p) and ``b`` (p), float64.

    Every number comes from a generator seeded by ``(seed, run)``, in the order
    X, target parameters, W, beta, b.
    """
    g = torch.Generator().manual_seed(_run_seed(seed, run))
    f64 = torch.float64
    X = torch.randn(n, d, generator=g, dtype=f64)
    if protocol.input_scale == "sphere":
        X = X / math.sqrt(d)
    if target == "linear":
        theta = torch.randn(d, generator=g, dtype=f64)
        y = X @ theta
    elif target == "teacher" and protocol.teacher == "same":
        psi, _ = activation(activation_name)
        U = torch.randn(width, d, generator=g, dtype=f64)
        v = torch.randn(width, generator=g, dtype=f64)
        y = psi(X @ U.T) @ v / math.sqrt(width)     # the authors' TwoLayerNetwork.forward carries 1/sqrt(p)
    elif target == "teacher":
        U = torch.randn(5, d, generator=g, dtype=f64)
        v = torch.randn(5, generator=g, dtype=f64)
        y = torch.relu(X @ U.T) @ v / math.sqrt(5)
        y = y / y.pow(2).mean().sqrt()
    else:
        raise ConfigError(f"unknown target {target!r}: use linear or teacher")
    W = torch.randn(width, d, generator=g, dtype=f64)
    beta = torch.randn(width, generator=g, dtype=f64)
    b = torch.randn(width, generator=g, dtype=f64)
    return X, y, W, beta, b


def _loss_grad_scale(loss: str, n: int) -> float:
    return 2.0 / n if loss == "mse" else 1.0


def _loss_value(e: torch.Tensor, loss: str) -> torch.Tensor:
    return e.pow(2).mean(-1) if loss == "mse" else 0.5 * e.pow(2).sum(-1)


def fa_gradients(X, y, W, beta, b, activation_name: str, lam: float = 0.0, *, loss: str = "mse",
                 algorithm: str = "fa"):
    """The update directions ``(dW, dbeta)`` of one full-batch step, in ``W`` form.

    ``W`` is ``(..., p, d)``, ``X`` ``(..., n, d)``. ``dbeta`` is the gradient of
    the loss plus ``lambda beta``; ``dW`` is the gradient of the loss with ``b``
    in place of ``beta`` (``algorithm='fa'``) or the true gradient (``'bp'``).
    """
    _, psi_grad = activation(activation_name)
    p, n = W.shape[-2], X.shape[-2]
    sp = math.sqrt(p)
    Z = X @ W.transpose(-1, -2)
    Phi, dPhi = psi_grad(Z)
    e = (Phi @ beta.unsqueeze(-1)).squeeze(-1) / sp - y
    g = _loss_grad_scale(loss, n) * e
    back = b if algorithm == "fa" else beta
    dbeta = (Phi.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1) / sp + lam * beta
    M = dPhi * g.unsqueeze(-1) * back.unsqueeze(-2)           # (..., n, p)
    dW = M.transpose(-1, -2) @ X / sp
    return dW, dbeta


# ---------------------------------------------------------------------------
# states: one group of runs, advanced one full-batch step at a time
# ---------------------------------------------------------------------------


class _FullState:
    """Runs x n x p tensors; tracks ``Z = X W^T`` (``use_z``) or ``W`` itself."""

    def __init__(self, X, y, W, beta, b, *, act, loss, lam, eta, algorithm, use_z):
        self.act, self.loss, self.lam, self.algorithm, self.use_z = act, loss, lam, algorithm, use_z
        self.psi_grad = activation(act)[1]
        self.p, self.n = W.shape[1], X.shape[1]
        self.sp = math.sqrt(self.p)
        self.c = _loss_grad_scale(loss, self.n)
        self.X, self.y, self.beta, self.b, self.eta = X, y, beta, b, eta
        self.Z = X @ W.transpose(1, 2)
        if use_z:
            self.G = X @ X.transpose(1, 2)
            self.W = None
        else:
            self.W = W

    def forward(self) -> torch.Tensor:
        Phi, dPhi = self.psi_grad(self.Z)
        e = (Phi @ self.beta.unsqueeze(-1)).squeeze(-1) / self.sp - self.y
        self._cache = (Phi, dPhi, e)
        return _loss_value(e, self.loss)

    def alignment(self) -> torch.Tensor:
        return alignment(self.b, self.beta)

    def kernel_top(self) -> torch.Tensor:
        """Largest eigenvalue of the tangent kernel at the current point, per run:
        ``(1/p) (Phi Phi^T + (psi'(Z) diag(beta^2) psi'(Z)^T) * X X^T)``."""
        Phi, dPhi = self.psi_grad(self.Z)
        X = self.X
        hidden = (dPhi * self.beta.pow(2).unsqueeze(1)) @ dPhi.transpose(1, 2) * (X @ X.transpose(1, 2))
        K = (Phi @ Phi.transpose(1, 2) + hidden) / self.p
        return torch.linalg.eigvalsh(K.double())[..., -1]

    def step(self):
        Phi, dPhi, e = self._cache
        eta = self.eta.unsqueeze(-1)                               # (R, 1)
        if not self.use_z:
            dW, dbeta = fa_gradients(self.X, self.y, self.W, self.beta, self.b, self.act, self.lam,
                                     loss=self.loss, algorithm=self.algorithm)
            self.W = self.W - eta.unsqueeze(-1) * dW
            self.beta = self.beta - eta * dbeta
            self.Z = self.X @ self.W.transpose(1, 2)
            return
        ge = (self.c * eta) * e                                    # eta dL/df, (R, n)
        back = self.b if self.algorithm == "fa" else self.beta
        # eta psi'(Z) * (g back^T), written over psi'(Z), which is not used again
        M = dPhi.mul_(ge.unsqueeze(-1)).mul_(back.unsqueeze(1))
        beta = self.beta * (1.0 - eta * self.lam)
        self.beta = torch.baddbmm(beta.unsqueeze(-1), Phi.transpose(1, 2), ge.unsqueeze(-1),
                                  alpha=-1.0 / self.sp).squeeze(-1)
        self.Z.baddbmm_(self.G, M, alpha=-1.0 / self.sp)

    def keep(self, idx):
        for name in ("X", "y", "beta", "b", "eta", "Z", "G", "W"):
            v = getattr(self, name, None)
            if v is not None:
                setattr(self, name, v.index_select(0, idx))
        self._cache = tuple(t.index_select(0, idx) for t in self._cache)


class _LinearState:
    """Linear units in the coordinates of ``V = [beta(0), b, W(0) X^T]`` (p x m, m = n + 2).

    ``beta = V a`` and ``W = W(0) + V Q`` with ``H = X Q^T`` (n x m): every
    update of ``W`` is ``back (X^T g)^T`` with ``back`` (``b`` or ``beta``) in the
    span of ``V``, and every update of ``beta`` is ``W X^T g`` (also in it) plus
    ``lambda beta``. With ``K = V^T V``,

        f = (K[2:, :] a + H K a) / sqrt(p),
        a <- (1 - eta lambda) a - eta c/sqrt(p) ([0, 0, e] + H^T e),
        H <- H - eta c/sqrt(p) (X X^T e) a_back^T,

    the same recursion as the full one, with no tensor of size ``p``.
    """

    def __init__(self, X, y, W, beta, b, *, act, loss, lam, eta, algorithm):
        self.loss, self.lam, self.algorithm = loss, lam, algorithm
        R, n, _ = X.shape
        p = W.shape[1]
        self.p, self.n, self.sp = p, n, math.sqrt(p)
        self.c = _loss_grad_scale(loss, n)
        V = torch.cat([beta.unsqueeze(-1), b.unsqueeze(-1), W @ X.transpose(1, 2)], dim=2)  # (R, p, m)
        self.K = V.transpose(1, 2) @ V                              # (R, m, m)
        self.G = X @ X.transpose(1, 2)
        self.y, self.eta = y, eta
        m = n + 2
        self.a = torch.zeros(R, m, dtype=X.dtype)
        self.a[:, 0] = 1.0
        self.H = torch.zeros(R, n, m, dtype=X.dtype)

    def forward(self) -> torch.Tensor:
        Ka = (self.K @ self.a.unsqueeze(-1)).squeeze(-1)              # (R, m)
        f = (Ka[:, 2:] + (self.H @ Ka.unsqueeze(-1)).squeeze(-1)) / self.sp
        e = f - self.y
        self._cache = (Ka, e)
        return _loss_value(e, self.loss)

    def alignment(self) -> torch.Tensor:
        Ka = (self.K @ self.a.unsqueeze(-1)).squeeze(-1)
        return Ka[:, 1] / (self.K[:, 1, 1].sqrt() * (self.a * Ka).sum(-1).sqrt())

    def kernel_top(self) -> torch.Tensor:
        """As :meth:`_FullState.kernel_top`, at the start (``beta = beta(0)``, ``psi' = 1``)."""
        K = (self.K[:, 2:, 2:] + self.K[:, :1, :1] * self.G) / self.p
        return torch.linalg.eigvalsh(K)[..., -1]

    def step(self):
        Ka, e = self._cache
        eta = self.eta.unsqueeze(-1)
        ge = (self.c * eta) * e / self.sp                           # (R, n)
        grad = (self.H.transpose(1, 2) @ ge.unsqueeze(-1)).squeeze(-1)
        grad[:, 2:] += ge
        if self.algorithm == "fa":
            self.H[:, :, 1] -= (self.G @ ge.unsqueeze(-1)).squeeze(-1)
        else:
            self.H -= (self.G @ ge.unsqueeze(-1)) * self.a.unsqueeze(1)
        self.a = self.a * (1.0 - eta * self.lam) - grad

    def keep(self, idx):
        for name in ("K", "G", "y", "eta", "a", "H"):
            setattr(self, name, getattr(self, name).index_select(0, idx))
        self._cache = tuple(t.index_select(0, idx) for t in self._cache)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


@dataclass
class TwoLayerResult:
    """Outcome of :func:`train_two_layer` (per-run arrays have length ``runs``)."""

    alignment: np.ndarray          # final cos(b, beta) per run (nan where diverged)
    loss: np.ndarray               # final training loss per run (the protocol's loss, no penalty)
    status: np.ndarray             # per run: "converged", "capped" or "diverged"
    run_steps: np.ndarray          # steps taken per run
    loss_curve: np.ndarray         # (records, runs), nan after a run stopped
    alignment_curve: np.ndarray    # (records, runs)
    record_steps: np.ndarray
    eta: np.ndarray                # step size per run
    seconds: float
    config: dict = field(default_factory=dict)

    @property
    def diverged(self) -> np.ndarray:
        return self.status == "diverged"

    @property
    def steps(self) -> int:
        return int(self.run_steps.max())

    def filled_loss_curve(self) -> np.ndarray:
        """``loss_curve`` with each run's final loss carried forward after it stopped (nan if diverged)."""
        out = self.loss_curve.copy()
        for r in range(out.shape[1]):
            if self.status[r] == "diverged":
                out[:, r] = np.nan
            else:
                out[self.record_steps >= self.run_steps[r], r] = self.loss[r]
        return out

    def summary(self) -> dict:
        ok = ~self.diverged
        al, lo = self.alignment[ok], self.loss[ok]
        eta = np.unique(self.eta)

        def listed(v):
            return [None if not np.isfinite(x) else float(x) for x in v]

        return {
            "alignment_mean": float(np.mean(al)) if al.size else None,
            "alignment_sd": float(np.std(al, ddof=1)) if al.size > 1 else (0.0 if al.size else None),
            "loss_mean": float(np.mean(lo)) if lo.size else None,
            "loss_max": float(np.max(lo)) if lo.size else None,
            "diverged_runs": int(np.sum(~ok)),
            "converged_runs": int(np.sum(self.status == "converged")),
            "capped_runs": int(np.sum(self.status == "capped")),
            "steps": self.steps, "steps_min": int(self.run_steps.min()),
            "eta": float(eta[0]) if eta.size == 1 else [float(eta.min()), float(eta.max())],
            "seconds": round(self.seconds, 3),
            "alignments": listed(self.alignment), "losses": listed(self.loss),
            "run_steps": [int(s) for s in self.run_steps],
            **self.config,
        }


def train_two_layer(
    *,
    activation_name: str = "relu",
    width: int = 3200,
    lam: float = 0.0,
    runs: int = 1,
    protocol: str = "authors",
    n: int = 50,
    d: int = 150,
    steps: int | None = None,
    min_steps: int | None = None,
    check_every: int | None = None,
    change_tol: float | None = None,
    tol: float | None = None,
    eta: float | None = None,
    eta_scale: float | None = None,
    algorithm: str = "fa",
    target: str | None = None,
    seed: int = 0,
    first_run: int = 0,
    dtype: str = "float64",
    record_every: int = 100,
    track: str = "auto",
    threads: int | None = None,
    chunk_bytes: int | None = CHUNK_BYTES,
) -> TwoLayerResult:
    """Full-batch training of ``runs`` independent two-layer networks.

    ``protocol`` (``"authors"`` or ``"normalised"``, see :data:`PROTOCOLS`) sets
    the data, the loss, the step size and the stopping rule; the other
    arguments override parts of it when given: ``steps`` (largest number of
    steps), ``min_steps``, ``check_every``, ``change_tol`` (the loss-change
    test), ``tol`` (stop once the loss is below it), ``eta`` (fixed step) or
    ``eta_scale`` (step as a multiple of ``1/lambda_max`` of each run's initial
    tangent kernel, :meth:`_FullState.kernel_top`). ``target`` is ``"linear"`` or ``"teacher"`` (default: the
    authors' teacher for nonlinear units, a linear target otherwise).
    Run ``k`` of the result is run index ``first_run + k``; its draws depend on
    ``(seed, first_run + k)`` only. ``track``: ``'z'`` (update ``Z = X W^T``),
    ``'w'`` (update ``W`` with :func:`fa_gradients`), ``'linear'`` (the reduced
    coordinates of linear units) or ``'auto'``. ``chunk_bytes`` bounds one
    group's ``n x p`` tensors; it changes the speed, not the result.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    if activation_name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation_name!r}: choose from {', '.join(ACTIVATIONS)}")
    if width < 1 or runs < 1 or n < 1 or d < 1 or first_run < 0:
        raise ConfigError("width, runs, n and d must be positive (and first_run non-negative)")
    if not (lam >= 0 and math.isfinite(lam)):
        raise ConfigError(f"lambda must be a non-negative number, got {lam}")
    if algorithm not in ("fa", "bp"):
        raise ConfigError(f"unknown algorithm {algorithm!r}: use fa or bp")
    if eta is not None and not eta > 0:
        raise ConfigError(f"step size must be positive, got {eta}")
    if eta_scale is not None and not eta_scale > 0:
        raise ConfigError(f"eta_scale must be positive, got {eta_scale}")
    if record_every < 1:
        raise ConfigError("record_every must be at least 1")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    if track not in ("auto", "z", "w", "linear"):
        raise ConfigError(f"unknown track {track!r}")
    if track == "linear" and activation_name != "linear":
        raise ConfigError("track='linear' needs linear units")
    if target is None:
        target = default_target(proto, activation_name)
    if target not in ("linear", "teacher"):
        raise ConfigError(f"unknown target {target!r}: use linear or teacher")
    rule = StopRule(
        min_steps=(min_steps if min_steps is not None else
                   proto.min_steps if proto.min_steps is not None else authors_min_steps(width)),
        max_steps=steps if steps is not None else proto.max_steps,
        check_every=check_every if check_every is not None else proto.check_every,
        change_tol=change_tol if change_tol is not None else proto.change_tol,
        loss_tol=tol if tol is not None else proto.loss_tol)
    if rule.max_steps < 0 or rule.min_steps < 0 or rule.check_every < 0:
        raise ConfigError("steps, min_steps and check_every must be non-negative")
    if rule.change_tol < 0 or rule.loss_tol < 0:
        raise ConfigError("tolerances must be non-negative")
    if eta is None and eta_scale is None and proto.step is not None:
        eta = proto.step[activation_name]
    if eta is None and eta_scale is None:
        eta_scale = proto.eta_scale[0 if lam == 0 else 1]
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    if track == "auto":
        track = "linear" if activation_name == "linear" else ("z" if n <= d else "w")
    elem = 8 if track == "linear" else tdtype.itemsize
    size = runs if (track == "linear" or not chunk_bytes) else max(1, min(runs, int(chunk_bytes // (elem * n * width))))

    status = np.empty(runs, dtype=object)
    fin_loss = np.full(runs, np.nan)
    fin_align = np.full(runs, np.nan)
    fin_steps = np.zeros(runs, dtype=int)
    etas = np.zeros(runs)
    curves_l, curves_a = {}, {}                                  # step -> (runs,) arrays
    for g0 in range(0, runs, size):
        ids = list(range(g0, min(g0 + size, runs)))
        draws = [draw_run(proto, activation_name, width, n, d, target=target, seed=seed, run=first_run + i)
                 for i in ids]
        X, y, W, beta, b = (torch.stack([dr[k] for dr in draws]) for k in range(5))
        del draws
        if track != "linear":
            X, y, W, beta, b = (t.to(tdtype) for t in (X, y, W, beta, b))
        kw = dict(act=activation_name, loss=proto.loss, lam=lam, algorithm=algorithm,
                  eta=torch.zeros(len(ids), dtype=X.dtype))
        state = (_LinearState(X, y, W, beta, b, **kw) if track == "linear"
                 else _FullState(X, y, W, beta, b, use_z=(track == "z"), **kw))
        del W
        if eta is not None:
            state.eta = torch.full((len(ids),), float(eta), dtype=X.dtype)
        else:
            state.eta = (eta_scale / state.kernel_top()).to(X.dtype)
        etas[ids] = state.eta.double().numpy()
        _run_group(state, rule, record_every, np.array(ids), status, fin_loss, fin_align, fin_steps,
                   curves_l, curves_a, runs)
    rec = np.array(sorted(curves_l))
    seconds = time.perf_counter() - t_start
    return TwoLayerResult(
        alignment=fin_align, loss=fin_loss, status=status.astype(str), run_steps=fin_steps,
        loss_curve=np.array([curves_l[s] for s in rec]).reshape(len(rec), runs),
        alignment_curve=np.array([curves_a[s] for s in rec]).reshape(len(rec), runs),
        record_steps=rec, eta=etas, seconds=seconds,
        config={"protocol": protocol, "activation": activation_name, "width": width, "lam": lam,
                "runs": runs, "first_run": first_run, "n": n, "d": d, "algorithm": algorithm,
                "target": target, "target_form": target_form(proto, target), "seed": seed, "dtype": dtype,
                "loss": proto.loss,
                **{f"rule_{k}": v for k, v in asdict(rule).items()}},
    )


def _run_group(state, rule: StopRule, record_every: int, ids: np.ndarray, status, fin_loss, fin_align,
               fin_steps, curves_l, curves_a, runs: int):
    """Advance one group of runs until each has stopped; fills the per-run outputs (indexed by ``ids``)."""
    active = ids.copy()
    last = torch.full((len(ids),), math.nan, dtype=torch.float64)
    step = 0
    every_step = rule.loss_tol > 0
    while True:
        loss = state.forward()
        recording = step % record_every == 0
        # the stopping rule and the divergence test look at the loss only at these steps
        # (a diverged run is caught at the next one; its numbers are nan in between)
        if recording or every_step or step >= rule.max_steps or (
                rule.check_every and step % rule.check_every == 0):
            ld = loss.double()
            diverged = ~torch.isfinite(ld)
            conv, last = rule.check(step, ld, last)
            done = diverged | conv
            if step >= rule.max_steps:
                done[:] = True
            any_done = bool(done.any())
            if recording or any_done:
                al = state.alignment().double().numpy()
                lnp = ld.numpy()
                if recording:
                    curves_l.setdefault(step, np.full(runs, np.nan))[active] = lnp
                    curves_a.setdefault(step, np.full(runs, np.nan))[active] = al
            if any_done:
                dn = done.numpy()
                for j in np.flatnonzero(dn):
                    r = active[j]
                    fin_steps[r] = step
                    fin_loss[r] = lnp[j]
                    if diverged[j]:
                        status[r], fin_align[r] = "diverged", math.nan
                    else:
                        status[r] = "converged" if conv[j] else "capped"
                        fin_align[r] = al[j]
                keep = np.flatnonzero(~dn)
                if keep.size == 0:
                    return
                idx = torch.from_numpy(keep)
                state.keep(idx)
                last = last.index_select(0, idx)
                active = active[keep]
        state.step()
        step += 1


def sweep(widths, lams, *, activation_name="relu", runs=5, progress=None, **kwargs):
    """Train every (width, lambda) pair; returns a list of :class:`TwoLayerResult`."""
    out = []
    for p in widths:
        for lam in lams:
            res = train_two_layer(activation_name=activation_name, width=int(p), lam=float(lam),
                                  runs=runs, **kwargs)
            out.append(res)
            if progress is not None:
                progress(res)
    return out

