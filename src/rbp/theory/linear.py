"""Averaged learning dynamics of the small networks of paper 1, section 7.

Every function here is a plain right-hand side ``rhs(t, y, ...)`` in the style
of :func:`scipy.integrate.solve_ivp`, or a thin wrapper that integrates one.
The averaged (expected, small learning rate) dynamics of the learning rules
are ordinary differential equations in the weights; the data enter only
through their second moments:

* scalar networks: ``alpha = E[I T]`` and ``beta = E[I^2]``;
* matrix networks: ``sigma_ti = E[T I^T]`` and ``sigma_ii = E[I I^T]``.

Notation follows the paper: ``a`` are forward weights, ``c`` the fixed
random weights of the learning channel, indexed by the layer that receives
the signal. For a chain of ``L`` forward weights the feedback weights are
``c_1 .. c_{L-1}``; the top weight sees the true error, so ``c_L = 1``.
For RBP the signal to layer ``i`` has crossed all backward weights above it,
for SRBP it was sent there by one weight; in a linear chain both give the same
equations with ``c_i`` the *effective* feedback weight (see
:func:`rbp_effective_feedback`).

The integrator :func:`integrate` runs until the vector field is (numerically)
zero, until the state blows up, or until a time limit, and says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .._optional import require
from ..errors import ConfigError


def solve_ivp(*args, **kwargs):
    """scipy.integrate.solve_ivp, imported when first needed (scipy is the ``theory`` extra)."""
    return require("scipy.integrate", "the theory workbench").solve_ivp(*args, **kwargs)


__all__ = [
    "Trajectory",
    "integrate",
    "rbp_effective_feedback",
    "chain_feedback",
    "chain_rbp_rhs",
    "chain_gd_rhs",
    "integrate_chain",
    "expansive_rbp_rhs",
    "expansive_gd_rhs",
    "integrate_expansive",
    "three_layer_rhs",
    "integrate_three_layer",
    "integrate_autoencoder",
    "signed_power",
    "nonlinear_moments_uniform",
    "nonlinear_rhs",
    "integrate_nonlinear",
]

#: Default solver settings: tight enough that integrated fixed points match
#: the algebraic predictions to about 1e-8.
DEFAULT_METHOD = "LSODA"
DEFAULT_RTOL = 1e-10
DEFAULT_ATOL = 1e-12


# ---------------------------------------------------------------------------
# generic integration until rest
# ---------------------------------------------------------------------------


@dataclass
class Trajectory:
    """The result of :func:`integrate`.

    ``status`` is ``"converged"`` (the vector field fell below ``rest_tol``
    and stayed there), ``"diverged"`` (a coordinate exceeded ``blowup`` or the
    solver could not continue, as in a finite-time blow-up) or ``"running"``
    (still moving at ``t_max``).
    """

    t: np.ndarray
    y: np.ndarray  # shape (len(t), dim)
    status: str
    field_norm: float
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> np.ndarray:
        return self.y[-1]

    @property
    def t_final(self) -> float:
        return float(self.t[-1])

    @property
    def converged(self) -> bool:
        return self.status == "converged"


def integrate(
    rhs: Callable[[float, np.ndarray], np.ndarray],
    y0: Sequence[float],
    *,
    t_max: float = 1e6,
    rest_tol: float = 1e-12,
    blowup: float = 1e8,
    method: str = DEFAULT_METHOD,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    stop_at_rest: bool = True,
    max_step: float = np.inf,
) -> Trajectory:
    """Integrate ``dy/dt = rhs(t, y)`` from ``y0`` until it comes to rest.

    Rest means ``max |rhs| < rest_tol``. A rest reached while passing slowly
    near a saddle is not trusted blindly: after the event the integration
    goes on for as long again (at least 10 time units) and only stops if the
    state has not moved by more than ``1e3 * rest_tol``.
    With ``stop_at_rest=False`` the system is integrated to ``t_max``
    (used for systems that have no fixed point).
    """
    y0 = np.asarray(y0, dtype=float).ravel()
    if not np.all(np.isfinite(y0)):
        raise ConfigError("initial state must be finite")

    def rest_event(t, y):
        return float(np.max(np.abs(rhs(t, y)))) - rest_tol

    rest_event.terminal = True
    rest_event.direction = -1

    def blowup_event(t, y):
        return blowup - float(np.max(np.abs(y)))

    blowup_event.terminal = True
    blowup_event.direction = -1

    events = [rest_event, blowup_event] if stop_at_rest else [blowup_event]
    ts, ys = [np.array([0.0])], [y0[None, :]]
    t0, y = 0.0, y0
    status, message = "running", ""
    while t0 < t_max:
        sol = solve_ivp(
            rhs, (t0, t_max), y, method=method, rtol=rtol, atol=atol,
            events=events, max_step=max_step,
        )
        ts.append(sol.t[1:])
        ys.append(sol.y.T[1:])
        y, t0 = sol.y[:, -1], float(sol.t[-1])
        if sol.status == -1:  # step size collapsed: finite-time blow-up
            status, message = "diverged", sol.message
            break
        if sol.status == 0:
            break
        hit_blowup = sol.t_events[-1].size > 0
        if hit_blowup:
            status, message = "diverged", f"|state| exceeded {blowup:g} at t={t0:.6g}"
            break
        # rest event: confirm by integrating further
        t_check = min(t_max, t0 + max(t0, 10.0))
        chk = solve_ivp(rhs, (t0, t_check), y, method=method, rtol=rtol, atol=atol,
                        max_step=max_step)
        ts.append(chk.t[1:])
        ys.append(chk.y.T[1:])
        moved = float(np.max(np.abs(chk.y[:, -1] - y)))
        y, t0 = chk.y[:, -1], float(chk.t[-1])
        if moved <= 1e3 * rest_tol and float(np.max(np.abs(rhs(t0, y)))) < 10 * rest_tol:
            status = "converged"
            break
    t = np.concatenate(ts)
    Y = np.concatenate(ys)
    fnorm = float(np.max(np.abs(rhs(t[-1], Y[-1]))))
    if status == "running" and stop_at_rest and fnorm < rest_tol:
        status = "converged"
    return Trajectory(t=t, y=Y, status=status, field_norm=fnorm, message=message)


# ---------------------------------------------------------------------------
# linear chain A(1, ..., 1)
# ---------------------------------------------------------------------------


def rbp_effective_feedback(backward: Sequence[float]) -> np.ndarray:
    """Effective feedback ``c_1..c_{L-1}`` of RBP in a chain.

    ``backward[k]`` is the random weight that carries the error from layer
    ``k+2`` down to layer ``k+1`` (``k = 0..L-2``). In RBP the signal reaching
    layer ``i`` has crossed every backward weight above it, so
    ``c_i = d_{i+1} * ... * d_L``; SRBP uses ``c_i`` directly.
    """
    d = np.asarray(backward, dtype=float)
    return np.cumprod(d[::-1])[::-1].copy()


def chain_feedback(c: Sequence[float], depth: int) -> np.ndarray:
    """Return ``(c_1, ..., c_{L-1}, 1)`` after checking the length."""
    c = np.atleast_1d(np.asarray(c, dtype=float))
    if depth < 1:
        raise ConfigError(f"a chain needs at least one weight, got depth {depth}")
    if c.size == depth:  # already padded
        if c[-1] != 1.0:
            raise ConfigError("the top feedback weight c_L must be 1")
        return c
    if c.size != depth - 1:
        raise ConfigError(f"a chain of {depth} weights needs {depth - 1} feedback weights, got {c.size}")
    return np.append(c, 1.0)


def chain_rbp_rhs(t: float, a: np.ndarray, c: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """RBP/SRBP on ``A(1,...,1)``: ``da_i/dt = c_i a_1...a_{i-1} (alpha - beta P)``.

    ``c`` has length ``L`` with ``c[-1] == 1`` (see :func:`chain_feedback`).
    """
    a = np.asarray(a, dtype=float)
    err = alpha - beta * np.prod(a)
    below = np.concatenate(([1.0], np.cumprod(a[:-1])))
    return c * below * err


def _prod_except(a: np.ndarray) -> np.ndarray:
    """``out[i] = prod_{j != i} a_j`` without dividing (safe at zeros)."""
    left = np.concatenate(([1.0], np.cumprod(a[:-1])))
    right = np.concatenate((np.cumprod(a[::-1][:-1])[::-1], [1.0]))
    return left * right


def chain_gd_rhs(t: float, a: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Gradient descent on ``A(1,...,1)``: ``da_i/dt = (prod_{j!=i} a_j)(alpha - beta P)``."""
    a = np.asarray(a, dtype=float)
    return _prod_except(a) * (alpha - beta * np.prod(a))


def integrate_chain(
    a0: Sequence[float],
    c: Sequence[float] | None,
    alpha: float,
    beta: float,
    t_max: float = 1e6,
    *,
    method: str = "rbp",
    **kwargs,
) -> Trajectory:
    """Integrate a chain from ``a0`` (RBP/SRBP with feedback ``c``, or ``method='gd'``)."""
    a0 = np.asarray(a0, dtype=float).ravel()
    L = a0.size
    if method == "gd":
        return integrate(lambda t, y: chain_gd_rhs(t, y, alpha, beta), a0, t_max=t_max, **kwargs)
    if method not in ("rbp", "srbp"):
        raise ConfigError(f"unknown method {method!r}: use rbp, srbp or gd")
    cc = chain_feedback(c if c is not None else [], L)
    return integrate(lambda t, y: chain_rbp_rhs(t, y, cc, alpha, beta), a0, t_max=t_max, **kwargs)


# ---------------------------------------------------------------------------
# expansive A(1, N, 1)
# ---------------------------------------------------------------------------


def expansive_rbp_rhs(t: float, y: np.ndarray, c: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """RBP on ``A(1,N,1)``; state ``y = (a_1..a_N, b_1..b_N)``.

    ``da_i/dt = c_i (alpha - beta P)``, ``db_i/dt = a_i (alpha - beta P)``,
    ``P = sum_i a_i b_i``.
    """
    n = y.size // 2
    a, b = y[:n], y[n:]
    err = alpha - beta * float(a @ b)
    return np.concatenate((c * err, a * err))


def expansive_gd_rhs(t: float, y: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Gradient descent on ``A(1,N,1)``: ``da_i/dt = b_i (alpha - beta P)``."""
    n = y.size // 2
    a, b = y[:n], y[n:]
    err = alpha - beta * float(a @ b)
    return np.concatenate((b * err, a * err))


def integrate_expansive(a0, b0, c, alpha, beta, t_max=1e6, *, method="rbp", **kwargs) -> Trajectory:
    a0 = np.asarray(a0, dtype=float).ravel()
    b0 = np.asarray(b0, dtype=float).ravel()
    if a0.shape != b0.shape:
        raise ConfigError("a0 and b0 must have the same length")
    y0 = np.concatenate((a0, b0))
    if method == "gd":
        return integrate(lambda t, y: expansive_gd_rhs(t, y, alpha, beta), y0, t_max=t_max, **kwargs)
    c = np.asarray(c, dtype=float).ravel()
    if c.shape != a0.shape:
        raise ConfigError("c must have one feedback weight per hidden unit")
    return integrate(lambda t, y: expansive_rbp_rhs(t, y, c, alpha, beta), y0, t_max=t_max, **kwargs)


# ---------------------------------------------------------------------------
# general three-layer A(N0, N1, N2): autoencoder A(N,1,N), A(2,2,2), ...
# ---------------------------------------------------------------------------


def _split(y, n0, n1, n2):
    A1 = y[: n1 * n0].reshape(n1, n0)
    A2 = y[n1 * n0:].reshape(n2, n1)
    return A1, A2


def three_layer_rhs(
    t: float,
    y: np.ndarray,
    shape: tuple[int, int, int],
    c1: np.ndarray | None,
    sigma_ti: np.ndarray,
    sigma_ii: np.ndarray,
) -> np.ndarray:
    """RBP (``c1`` given) or gradient descent (``c1=None``) on ``A(N0,N1,N2)``.

    State ``y = (A1.ravel(), A2.ravel())`` with ``A1`` of shape ``(N1, N0)``
    and ``A2`` of shape ``(N2, N1)``; ``c1`` has shape ``(N1, N2)``.
    ``dA2/dt = (S_TI - P S_II) A1^T``, ``dA1/dt = C1 (S_TI - P S_II)``
    with ``P = A2 A1`` (gradient descent: ``A2^T`` in place of ``C1``).
    """
    n0, n1, n2 = shape
    A1, A2 = _split(y, n0, n1, n2)
    E = sigma_ti - A2 @ A1 @ sigma_ii
    back = A2.T if c1 is None else c1
    return np.concatenate(((back @ E).ravel(), (E @ A1.T).ravel()))


def integrate_three_layer(
    A1_0, A2_0, c1, sigma_ti=None, sigma_ii=None, t_max=1e6, *, method="rbp", **kwargs
) -> Trajectory:
    """Integrate ``A(N0,N1,N2)``; covariances default to the identity (autoencoder data)."""
    A1_0 = np.atleast_2d(np.asarray(A1_0, dtype=float))
    A2_0 = np.atleast_2d(np.asarray(A2_0, dtype=float))
    n1, n0 = A1_0.shape
    n2 = A2_0.shape[0]
    if A2_0.shape[1] != n1:
        raise ConfigError(f"A2 has shape {A2_0.shape}, expected ({n2}, {n1})")
    S_ti = np.eye(n2, n0) if sigma_ti is None else np.asarray(sigma_ti, dtype=float)
    S_ii = np.eye(n0) if sigma_ii is None else np.asarray(sigma_ii, dtype=float)
    if S_ti.shape != (n2, n0) or S_ii.shape != (n0, n0):
        raise ConfigError("covariance shapes do not match the architecture")
    if method == "gd":
        C = None
    else:
        C = np.atleast_2d(np.asarray(c1, dtype=float))
        if C.shape != (n1, n2):
            raise ConfigError(f"C1 must have shape ({n1}, {n2}), got {C.shape}")
    y0 = np.concatenate((A1_0.ravel(), A2_0.ravel()))
    traj = integrate(lambda t, y: three_layer_rhs(t, y, (n0, n1, n2), C, S_ti, S_ii), y0,
                     t_max=t_max, **kwargs)
    traj.extra["shape"] = (n0, n1, n2)
    return traj


def integrate_autoencoder(A0, B0, C, t_max=1e6, **kwargs) -> Trajectory:
    """Autoencoder ``A(N,1,N)`` with ``Sigma_TI = Sigma_II = I`` (Lemma 1, Thm 6).

    ``A0`` and ``C`` are row vectors (length N), ``B0`` a column (length N).
    """
    A0 = np.asarray(A0, dtype=float).reshape(1, -1)
    B0 = np.asarray(B0, dtype=float).reshape(-1, 1)
    C = np.asarray(C, dtype=float).reshape(1, -1)
    return integrate_three_layer(A0, B0, C, t_max=t_max, **kwargs)


# ---------------------------------------------------------------------------
# nonlinear A(1,1,1) with a power-function hidden unit
# ---------------------------------------------------------------------------


def signed_power(x, mu: float):
    """``sign(x) |x|^mu``: the odd extension of ``x^mu`` to negative inputs."""
    x = np.asarray(x, dtype=float)
    return np.sign(x) * np.abs(x) ** mu


def nonlinear_moments_uniform(mu: float, low: float = 0.5, high: float = 1.5, slope: float = 1.0) -> dict:
    """Exact data moments for inputs ``I ~ U(low, high)`` (``0 < low``) and ``T = slope * I``.

    Returns ``alpha = E[T I^mu]``, ``beta = E[I^(2 mu)]`` (what the rule with
    f' sees) and ``gamma = E[T I]``, ``delta = E[I^(mu+1)]`` (what the rule
    without f' sees), as in the paper's equations for the power unit.
    """
    if not 0 < low < high:
        raise ConfigError("need 0 < low < high for the input distribution")

    def m(k):  # E[I^k]
        return (high ** (k + 1) - low ** (k + 1)) / ((k + 1) * (high - low))

    return {
        "alpha": slope * m(mu + 1), "beta": m(2 * mu),
        "gamma": slope * m(2.0), "delta": m(mu + 1),
    }


def nonlinear_rhs(t, y, mu, c1, moments, variant="fprime"):
    """Averaged dynamics of ``O = a2 (a1 I)^mu`` (hidden unit a power, output linear).

    ``variant='fprime'``: RBP including the derivative of the hidden unit,
        ``da1/dt = c1 mu |a1|^(mu-1) (alpha - beta a2 a1^mu)``,
        ``da2/dt = a1^mu (alpha - beta a2 a1^mu)``.
    ``variant='no-fprime'``: RBP without it,
        ``da1/dt = c1 (gamma - delta a2 a1^mu)`` with the same ``da2/dt``.
    ``variant='gd'``: gradient descent (``a2`` in place of ``c1``).
    Powers of negative numbers use :func:`signed_power`.
    """
    a1, a2 = float(y[0]), float(y[1])
    p = float(signed_power(a1, mu))
    err = moments["alpha"] - moments["beta"] * a2 * p
    da2 = p * err
    if variant == "fprime":
        da1 = c1 * mu * abs(a1) ** (mu - 1) * err
    elif variant == "no-fprime":
        da1 = c1 * (moments["gamma"] - moments["delta"] * a2 * p)
    elif variant == "gd":
        da1 = a2 * mu * abs(a1) ** (mu - 1) * err
    else:
        raise ConfigError(f"unknown variant {variant!r}: use fprime, no-fprime or gd")
    return np.array([da1, da2])


def integrate_nonlinear(a0, mu, c1, moments, variant="fprime", t_max=1e6, **kwargs) -> Trajectory:
    if not mu > 0:
        raise ConfigError(f"the power mu must be positive, got {mu}")
    return integrate(lambda t, y: nonlinear_rhs(t, y, mu, c1, moments, variant),
                     np.asarray(a0, dtype=float), t_max=t_max, **kwargs)
