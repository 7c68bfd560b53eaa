"""What the theorems of paper 1, section 7, predict, computed without integrating.

Each prediction here uses only the starting point, the feedback weights and
the data moments; :mod:`rbp.theory.linear` integrates the same systems so the
two can be compared.

* Thm 1: the limit of a one-dimensional polynomial flow ``dx/dt = Q(x)``
  (:func:`polynomial_flow_limit`).
* Thms 2-4 (chains ``A(1,...,1)``): conserved quantities
  ``a_{i+1} - c_{i+1} a_i^2 / (2 c_i)`` turn the system into ``da_1/dt = Q(a_1)``
  with ``deg Q = 2^L - 1`` (:func:`chain_polynomial`, :func:`chain_fixed_point`).
  Gradient descent conserves ``a_{i+1}^2 - a_i^2`` (:func:`chain_gd_fixed_point`).
* Thm 2's stability rule for ``A(1,1,1)`` (:func:`chain2_transverse_eigenvalue`).
* Thm 5 (``A(1,N,1)``): a cubic in ``a_1`` (:func:`expansive_fixed_point`).
* Lemma 1 / Thm 6 (autoencoder ``A(N,1,N)``): ``A -> t* C`` with ``t*`` the
  positive root of a cubic (:func:`autoencoder_fixed_point`).
* Thms 7-8 (general ``A(N0,N1,N2)``): the conserved matrix and the limit of
  ``C1 A2 A1`` (:func:`three_layer_invariant`, :func:`three_layer_product_limit`).
* Thm 9 (general ``A(N0,N1,N2)``): the algebraic set of Eq. 110 that holds
  every limit point; whether the reached limit is an isolated point of it
  (:func:`three_layer_lyapunov`, :func:`theorem9_residual`,
  :func:`theorem9_isolation`).
* Thm 12 (nonlinear ``A(1,1,1)`` with ``f'``): the positive root of
  ``alpha - beta t^mu (t^2/(2 c1 mu) + K)`` (:func:`nonlinear_fixed_point`);
  without ``f'`` there is no fixed point (:func:`nonlinear_no_fprime_drift`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import Polynomial

from .._optional import require
from ..errors import ConfigError
from .linear import chain_feedback


def brentq(*args, **kwargs):
    """scipy.optimize.brentq, imported when first needed (scipy is the ``theory`` extra)."""
    return require("scipy.optimize", "the theory workbench").brentq(*args, **kwargs)


__all__ = [
    "real_roots",
    "polynomial_flow_limit",
    "converges_from_everywhere",
    "chain_invariants",
    "chain_gd_invariants",
    "chain_polynomial",
    "chain_weights_from_a1",
    "chain_fixed_point",
    "chain_gd_fixed_point",
    "chain2_transverse_eigenvalue",
    "chain_jacobian",
    "expansive_invariants",
    "expansive_polynomial",
    "expansive_fixed_point",
    "expansive_gd_fixed_point",
    "autoencoder_invariant",
    "autoencoder_fixed_point",
    "three_layer_invariant",
    "three_layer_product_limit",
    "three_layer_lyapunov",
    "theorem9_residual",
    "theorem9_isolation",
    "range_complement",
    "nonlinear_invariant",
    "nonlinear_fixed_point",
    "nonlinear_no_fprime_drift",
]


# ---------------------------------------------------------------------------
# Theorem 1: one-dimensional polynomial flows
# ---------------------------------------------------------------------------


def _as_poly(q) -> Polynomial:
    return q if isinstance(q, Polynomial) else Polynomial(np.asarray(q, dtype=float))


def real_roots(q, *, evaluate=None, imag_tol: float = 1e-6) -> np.ndarray:
    """Distinct real roots of a polynomial, sorted and polished.

    The companion-matrix roots are taken as real when their imaginary part is
    small, then refined by Newton's method on ``evaluate`` (a function giving
    ``(Q(x), Q'(x))``; by default the expanded polynomial). Passing a more
    accurate evaluator (e.g. a nested form) keeps high-degree cases accurate.
    """
    q = _as_poly(q).trim()
    if q.degree() < 1:
        return np.array([])
    dq = q.deriv()
    if evaluate is None:
        def evaluate(x):
            return q(x), dq(x)
    raw = q.roots()
    scale = 1.0 + np.abs(raw)
    cand = np.sort(raw[np.abs(raw.imag) <= imag_tol * scale].real)
    out = []
    for x in cand:
        for _ in range(60):
            f, df = evaluate(x)
            if df == 0 or not np.isfinite(df):
                break
            step = f / df
            x_new = x - step
            if not np.isfinite(x_new):
                break
            x = x_new
            if abs(step) <= 1e-15 * (1.0 + abs(x)):
                break
        out.append(x)
    out = np.sort(np.array(out))
    if out.size > 1:  # merge duplicates produced by polishing
        keep = np.concatenate(([True], np.diff(out) > 1e-9 * (1.0 + np.abs(out[1:]))))
        out = out[keep]
    return out


def polynomial_flow_limit(q, x0: float, *, roots: np.ndarray | None = None, evaluate=None) -> float:
    """Limit of ``dx/dt = Q(x)`` from ``x(0) = x0`` (Thm 1).

    Between two adjacent real roots the sign of ``Q`` is constant, so the
    solution moves monotonically to the neighbouring root in the direction
    of ``Q(x0)``; past the outermost root it escapes to ``+inf`` or ``-inf``
    (in finite time when ``deg Q > 1``). Returns that root or ``+-inf``.
    """
    q = _as_poly(q)
    if evaluate is None:
        dq = q.deriv()

        def evaluate(x):
            return q(x), dq(x)
    r = real_roots(q, evaluate=evaluate) if roots is None else np.asarray(roots)
    f0 = evaluate(x0)[0]
    if f0 == 0 or (r.size and np.min(np.abs(r - x0)) <= 1e-14 * (1 + abs(x0))):
        return float(x0)
    if f0 > 0:
        above = r[r > x0]
        return float(above.min()) if above.size else math.inf
    below = r[r < x0]
    return float(below.max()) if below.size else -math.inf


def converges_from_everywhere(q) -> bool:
    """Thm 1's criterion: every start converges iff the degree is odd and the leading coefficient is negative."""
    q = _as_poly(q).trim()
    return q.degree() % 2 == 1 and q.coef[-1] < 0


# ---------------------------------------------------------------------------
# chains A(1,...,1): Theorems 2-4
# ---------------------------------------------------------------------------


def chain_invariants(a, c) -> np.ndarray:
    """RBP chain invariants ``a_{i+1} - c_{i+1} a_i^2 / (2 c_i)``, ``i = 1..L-1``.

    ``a`` may be one state (length L) or a trajectory (shape ``(T, L)``).
    """
    a = np.asarray(a, dtype=float)
    L = a.shape[-1]
    cc = chain_feedback(c, L)
    k = cc[1:] / (2.0 * cc[:-1])
    return a[..., 1:] - k * a[..., :-1] ** 2


def chain_gd_invariants(a) -> np.ndarray:
    """Gradient-descent chain invariants ``a_{i+1}^2 - a_i^2``."""
    a = np.asarray(a, dtype=float)
    return a[..., 1:] ** 2 - a[..., :-1] ** 2


def _chain_setup(a0, c):
    a0 = np.asarray(a0, dtype=float).ravel()
    L = a0.size
    cc = chain_feedback(c, L)
    if np.any(cc == 0):
        raise ConfigError("feedback weights must be non-zero (c_i = 0 is the paper's trivial case)")
    k = cc[1:] / (2.0 * cc[:-1])
    K = a0[1:] - k * a0[:-1] ** 2
    return a0, cc, k, K


def chain_weights_from_a1(x: float, k: np.ndarray, K: np.ndarray) -> np.ndarray:
    """All chain weights on the invariant curve through a given ``a_1``."""
    out = [float(x)]
    for ki, Ki in zip(k, K):
        out.append(ki * out[-1] ** 2 + Ki)
    return np.array(out)


def chain_polynomial(a0, c, alpha: float, beta: float) -> Polynomial:
    """``Q`` with ``da_1/dt = Q(a_1)`` along the RBP trajectory through ``a0`` (Thm 4).

    Each ``a_{i+1} = k_i a_i^2 + K_i`` (``k_i = c_{i+1}/(2 c_i)``, ``K_i`` fixed
    by the start) is a polynomial of degree ``2^i`` in ``a_1``, so
    ``Q = c_1 (alpha - beta a_1 ... a_L)`` has degree ``2^L - 1``.
    """
    a0, cc, k, K = _chain_setup(a0, c)
    ai = Polynomial([0.0, 1.0])
    prod = ai
    for ki, Ki in zip(k, K):
        ai = ki * ai * ai + Ki
        prod = prod * ai
    return cc[0] * (alpha - beta * prod)


def _chain_evaluator(cc, k, K, alpha, beta):
    """Nested (accurate) evaluation of ``Q(a_1)`` and ``Q'(a_1)``."""

    def evaluate(x):
        a, da = x, 1.0
        P, dP = a, da
        for ki, Ki in zip(k, K):
            a, da = ki * a * a + Ki, 2.0 * ki * a * da
            P, dP = P * a, dP * a + P * da
        return cc[0] * (alpha - beta * P), -cc[0] * beta * dP

    return evaluate


def chain_fixed_point(a0, c, alpha: float, beta: float, *, return_info: bool = False):
    """Predicted limit of an RBP/SRBP chain started at ``a0`` (Thms 2-4 with Thm 1).

    Returns the predicted weights (``+-inf`` entries if the flow escapes,
    which Thm 4 rules out for ``beta > 0`` and non-zero feedback). With
    ``return_info`` also a dict with the polynomial, its degree, its real
    roots and the chosen root.
    """
    a0, cc, k, K = _chain_setup(a0, c)
    q = chain_polynomial(a0, c, alpha, beta)
    ev = _chain_evaluator(cc, k, K, alpha, beta)
    roots = real_roots(q, evaluate=ev)
    x = polynomial_flow_limit(q, a0[0], roots=roots, evaluate=ev)
    if math.isfinite(x):
        a = chain_weights_from_a1(x, k, K)
    else:
        a = np.full(a0.size, np.nan)
        a[0] = x
    if not return_info:
        return a
    return a, {
        "polynomial": q, "degree": q.degree(), "expected_degree": 2 ** a0.size - 1,
        "roots": roots, "root": x, "converges_from_everywhere": converges_from_everywhere(q),
    }


def chain_gd_fixed_point(a0, alpha: float, beta: float) -> np.ndarray:
    """Predicted limit of gradient descent on a chain started at ``a0``.

    Along gradient descent every ``a_i^2`` changes by the same amount ``s``
    (``d a_i^2/dt = 2 P (alpha - beta P)`` for all ``i``), which is why
    ``a_{i+1}^2 - a_i^2`` is conserved. ``P^2 = prod_i (a_i(0)^2 + s)`` rises
    with ``s``; the flow ends at the ``s*`` where it equals ``(alpha/beta)^2``.
    If ``P(0)`` has the wrong sign, ``P`` first shrinks until the smallest
    weight crosses zero (``s = -min a_i(0)^2``), so that weight ends with
    the opposite sign. (Our derivation, used to cross-check the integrator.)
    """
    a0 = np.asarray(a0, dtype=float).ravel()
    target = alpha / beta
    sq = a0 ** 2
    lo = -sq.min()

    def h(s):
        return np.prod(sq + s) - target ** 2

    hi = 1.0
    while h(lo + hi) < 0:
        hi *= 2.0
    s = brentq(h, lo, lo + hi, xtol=1e-15, rtol=1e-15)
    signs = np.sign(a0)
    signs[signs == 0] = 1.0
    if np.sign(np.prod(a0)) != np.sign(target):
        signs[np.argmin(sq)] *= -1
    return signs * np.sqrt(np.maximum(sq + s, 0.0))


def chain_jacobian(a, c, alpha: float, beta: float) -> np.ndarray:
    """Jacobian of the RBP chain field at ``a`` (exact, for stability checks)."""
    a = np.asarray(a, dtype=float)
    L = a.size
    cc = chain_feedback(c, L)
    P = np.prod(a)
    err = alpha - beta * P
    below = np.concatenate(([1.0], np.cumprod(a[:-1])))
    dP = np.array([np.prod(np.delete(a, j)) for j in range(L)])
    J = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            dbelow = np.prod(np.delete(a[:i], j)) if j < i else 0.0
            J[i, j] = cc[i] * (dbelow * err - below[i] * beta * dP[j])
    return J


def chain2_transverse_eigenvalue(a1: float, a2: float, c1: float, beta: float) -> float:
    """Eigenvalue across the critical hyperbola of ``A(1,1,1)`` (Thm 2).

    Linearising at a fixed point, ``w = a2 du + a1 dv`` obeys
    ``dw/dt = -beta (c1 a2 + a1^2) w``: points with ``a1^2 + c1 a2 < 0`` are unstable.
    """
    return -beta * (c1 * a2 + a1 ** 2)


# ---------------------------------------------------------------------------
# expansive A(1,N,1): Theorem 5
# ---------------------------------------------------------------------------


def expansive_invariants(a, b, c):
    """``(b_i - a_i^2/(2 c_i), c_1 a_i - c_i a_1)``: conserved along RBP on ``A(1,N,1)``."""
    a, b, c = (np.asarray(v, dtype=float) for v in (a, b, c))
    vertical = b - a ** 2 / (2.0 * c)
    horizontal = c[0] * a - c * a[..., :1]
    return vertical, horizontal


def expansive_polynomial(a0, b0, c, alpha: float, beta: float) -> Polynomial:
    """Cubic ``Q`` with ``da_1/dt = Q(a_1)`` (Thm 5).

    ``a_i = (c_i/c_1) a_1 + K_i`` is affine in ``a_1`` and
    ``b_i = a_i^2/(2 c_i) + C_i`` quadratic, so ``P = sum a_i b_i`` is cubic.
    """
    a0, b0, c = (np.asarray(v, dtype=float).ravel() for v in (a0, b0, c))
    if np.any(c == 0):
        raise ConfigError("feedback weights must be non-zero")
    Cv = b0 - a0 ** 2 / (2 * c)
    Kh = a0 - c / c[0] * a0[0]
    P = Polynomial([0.0])
    for ci, Ki, Ci in zip(c, Kh, Cv):
        ai = Polynomial([Ki, ci / c[0]])
        P = P + ai * (ai * ai / (2 * ci) + Ci)
    return c[0] * (alpha - beta * P)


def expansive_fixed_point(a0, b0, c, alpha: float, beta: float):
    """Predicted limit ``(a, b)`` of RBP on ``A(1,N,1)`` from ``(a0, b0)``."""
    a0, b0, c = (np.asarray(v, dtype=float).ravel() for v in (a0, b0, c))
    q = expansive_polynomial(a0, b0, c, alpha, beta)
    x = polynomial_flow_limit(q, a0[0])
    if not math.isfinite(x):
        return np.full(a0.size, np.nan), np.full(a0.size, np.nan)
    a = c / c[0] * x + (a0 - c / c[0] * a0[0])
    b = a ** 2 / (2 * c) + (b0 - a0 ** 2 / (2 * c))
    return a, b


def expansive_gd_fixed_point(a0, b0, alpha: float, beta: float):
    """Predicted limit of gradient descent on ``A(1,N,1)``.

    All pairs see the same scalar ``g = alpha - beta P``: with
    ``tau = int g dt``, each ``(a_i, b_i)`` is a hyperbolic rotation of its
    start, so ``P(tau) = (S/2) sinh 2tau + P0 cosh 2tau`` (``S = |a0|^2 + |b0|^2``),
    which is increasing; the flow stops at the ``tau`` with ``P = alpha/beta``.
    (Our derivation; it also shows why ``a_i^2 - b_i^2`` is conserved.)
    """
    a0, b0 = (np.asarray(v, dtype=float).ravel() for v in (a0, b0))
    S = float(a0 @ a0 + b0 @ b0)
    P0 = float(a0 @ b0)
    target = alpha / beta

    def h(tau):
        return 0.5 * S * math.sinh(2 * tau) + P0 * math.cosh(2 * tau) - target

    lo, hi = -1.0, 1.0
    while h(lo) > 0:
        lo *= 2
    while h(hi) < 0:
        hi *= 2
    tau = brentq(h, lo, hi, xtol=1e-15, rtol=1e-15)
    ch, sh = math.cosh(tau), math.sinh(tau)
    return a0 * ch + b0 * sh, a0 * sh + b0 * ch


# ---------------------------------------------------------------------------
# autoencoder A(N,1,N) and general A(N0,N1,N2): Lemma 1, Theorems 6-8
# ---------------------------------------------------------------------------


def autoencoder_invariant(A, B, C) -> float:
    """Lemma 1: ``C B - |A|^2 / 2`` is constant along RBP on ``A(N,1,N)``."""
    A, B, C = (np.asarray(v, dtype=float).ravel() for v in (A, B, C))
    return float(C @ B - 0.5 * A @ A)


def autoencoder_fixed_point(A0, B0, C) -> dict:
    """Thm 6 for ``Sigma_TI = Sigma_II = I``.

    With ``K = C B - |A|^2/2`` (Lemma 1), ``A -> t* C`` where ``t*`` is the
    positive root of ``(|C|^2/2) t^3 + K t - 1 = 0`` (there is exactly one),
    ``B -> C^T / (t* |C|^2)`` and ``B A -> C^T C / |C|^2``.
    """
    A0, B0, C = (np.asarray(v, dtype=float).ravel() for v in (A0, B0, C))
    K = float(C @ B0 - 0.5 * A0 @ A0)
    c2 = float(C @ C)
    if c2 == 0:
        raise ConfigError("the feedback vector C must be non-zero")
    q = Polynomial([-1.0, K, 0.0, 0.5 * c2])
    roots = real_roots(q)
    pos = roots[roots > 0]
    t = float(pos[0])
    return {
        "t": t, "K": K, "cubic": q, "A": t * C, "B": C / (t * c2),
        "P": np.outer(C, C) / c2,
    }


def three_layer_invariant(A1, A2, C1) -> np.ndarray:
    """Thm 7's conserved matrix ``C1 A2 + (C1 A2)^T - A1 A1^T`` (RBP on ``A(N0,N1,N2)``).

    It follows from ``d(C1 A2)/dt = (dA1/dt) A1^T``; for the autoencoder it is
    twice Lemma 1's scalar.
    """
    M = np.asarray(C1) @ np.asarray(A2)
    return M + M.T - np.asarray(A1) @ np.asarray(A1).T


def three_layer_product_limit(C1, sigma_ti, sigma_ii) -> np.ndarray:
    """Thm 8: ``C1 A2 A1 -> C1 Sigma_TI Sigma_II^{-1}`` along RBP."""
    return np.asarray(C1) @ np.asarray(sigma_ti) @ np.linalg.inv(np.asarray(sigma_ii))


def three_layer_lyapunov(A1, A2, C1, sigma_ti, sigma_ii) -> np.ndarray:
    """The matrix ``V`` of the proof of Thm 8, non-increasing along RBP.

    With ``X = C1 A2`` and ``M = C1 Sigma_TI Sigma_II^{-1}``,
    ``V = X X^T - A1 M^T - M A1^T``. Writing ``U = dA1/dt = (M - X A1) Sigma_II``
    one finds ``dV/dt = -2 U Sigma_II^{-1} U^T``, which is negative
    semi-definite, so ``V`` decreases in the Loewner order; it is bounded
    below because ``A1`` is bounded (Thm 7), so it converges to a matrix ``L``.
    """
    X = np.asarray(C1) @ np.asarray(A2)
    M = three_layer_product_limit(C1, sigma_ti, sigma_ii)
    A1 = np.asarray(A1)
    return X @ X.T - A1 @ M.T - M @ A1.T


def _upper(S: np.ndarray) -> np.ndarray:
    return S[np.triu_indices(S.shape[0])]


def theorem9_residual(A1, A2, C1, sigma_ti, sigma_ii, K, L) -> np.ndarray:
    """The equations of Thm 9 (paper 1, Eq. 110) at ``(A1, A2)``, as one vector.

    Every limit point of an RBP trajectory on ``A(N0,N1,N2)`` satisfies, with
    ``X = C1 A2`` and ``M = C1 Sigma_TI Sigma_II^{-1}``,

    * ``X A1 = M`` (Thm 8),
    * ``X + X^T - A1 A1^T = K`` (the conserved matrix of Thm 7, fixed by the start),
    * ``X X^T - A1 M^T - M A1^T = L`` (the limit of :func:`three_layer_lyapunov`).

    The symmetric equations contribute their upper triangles only.
    """
    A1 = np.asarray(A1, dtype=float)
    X = np.asarray(C1) @ np.asarray(A2, dtype=float)
    M = three_layer_product_limit(C1, sigma_ti, sigma_ii)
    return np.concatenate([
        (X @ A1 - M).ravel(),
        _upper(X + X.T - A1 @ A1.T - K),
        _upper(X @ X.T - A1 @ M.T - M @ A1.T - L),
    ])


def range_complement(C1) -> np.ndarray:
    """Orthonormal columns spanning the complement of ``range(C1)`` (empty when ``C1`` has full row rank).

    Along RBP ``dA1/dt = C1 (...)`` lies in ``range(C1)``, so ``Q^T A1`` is
    conserved for these columns ``Q`` (our remark, not the paper's).
    """
    C1 = np.asarray(C1, dtype=float)
    U, _, _ = np.linalg.svd(C1)
    return U[:, int(np.linalg.matrix_rank(C1)):]


def theorem9_isolation(A1, A2, C1, sigma_ti, sigma_ii, K, L, *, A1_start=None,
                       rel_tol: float = 1e-8) -> dict:
    """Is ``(A1, C1 A2)`` an isolated solution of Eq. 110? (a local form of Thm 9's hypothesis)

    Thm 9 assumes that the whole solution set of Eq. 110 is discrete, which
    no computation over finitely many points can establish. What can be
    computed is whether a given solution is isolated: if the Jacobian of the
    equations with respect to ``(A1, X = C1 A2)`` (``X`` restricted to the
    matrices ``C1 A2`` can reach) has full column rank there, the equations are
    locally injective and no other solution lies nearby. That is enough for
    the theorem's conclusion: the limit points of a bounded trajectory form a
    connected set inside the solution set, so if one of them is isolated it
    is the only one, and ``A1(t)``, ``C1 A2(t)`` converge.

    With ``A1_start`` the equations ``Q^T A1 = Q^T A1_start`` join Eq. 110
    (``Q`` from :func:`range_complement`): the part of ``A1`` that ``C1``
    cannot reach never moves, so the limit points satisfy them too. When
    ``C1`` has fewer columns than rows this can decide cases that Eq. 110
    alone leaves open.

    The equations are quadratic (or linear), so central differences with unit
    steps give the Jacobian exactly (up to rounding). Returns the rank, the
    dimension it must reach, the singular values and ``isolated``.
    """
    A1 = np.asarray(A1, dtype=float)
    A2 = np.asarray(A2, dtype=float)
    C1 = np.asarray(C1, dtype=float)
    n1, n0 = A1.shape
    n2 = A2.shape[0]
    z = np.concatenate((A1.ravel(), A2.ravel()))

    Q = range_complement(C1) if A1_start is not None else np.zeros((n1, 0))

    def F(v):
        a1 = v[: n1 * n0].reshape(n1, n0)
        r = theorem9_residual(a1, v[n1 * n0:].reshape(n2, n1), C1, sigma_ti, sigma_ii, K, L)
        if Q.shape[1]:
            r = np.concatenate((r, (Q.T @ (a1 - np.asarray(A1_start, dtype=float))).ravel()))
        return r

    cols = []
    for i in range(z.size):
        e = np.zeros_like(z)
        e[i] = 1.0
        cols.append((F(z + e) - F(z - e)) / 2.0)
    J = np.stack(cols, axis=1)
    sv = np.linalg.svd(J, compute_uv=False)
    rank_c1 = int(np.linalg.matrix_rank(C1))
    needed = n1 * n0 + n1 * rank_c1  # dimension of the pairs (A1, C1 A2)
    cut = rel_tol * max(float(sv[0]), 1.0) if sv.size else 0.0
    rank = int(np.sum(sv > cut))
    return {
        "equations": int(J.shape[0]), "unknowns": int(n1 * n0 + n2 * n1),
        "rank": rank, "needed_rank": needed, "rank_C1": rank_c1,
        "isolated": rank >= needed,
        "smallest_singular_value": float(sv[needed - 1]) if needed <= sv.size else 0.0,
        "singular_values": [float(v) for v in sv],
    }


# ---------------------------------------------------------------------------
# nonlinear A(1,1,1): Theorem 12 and the case without f'
# ---------------------------------------------------------------------------


def nonlinear_invariant(a1, a2, mu: float, c1: float):
    """With ``f'``, ``a2 - a1^2/(2 c1 mu)`` is constant (the paper's coupling for the power unit)."""
    return np.asarray(a2) - np.asarray(a1) ** 2 / (2.0 * c1 * mu)


def nonlinear_fixed_point(a0, mu: float, c1: float, alpha: float, beta: float) -> np.ndarray:
    """Thm 12: the limit of RBP with ``f'`` from a positive start.

    ``a1`` converges to the positive root ``t`` of
    ``alpha - beta t^mu (t^2/(2 c1 mu) + K)`` with ``K = a2(0) - a1(0)^2/(2 c1 mu)``;
    then ``a2 = t^2/(2 c1 mu) + K``. For ``alpha, beta, c1 > 0`` the positive
    root is unique: ``t^mu (t^2/(2 c1 mu) + K)`` is negative below
    ``sqrt(-2 c1 mu K)`` and increasing above it.
    """
    a1_0, a2_0 = (float(v) for v in a0)
    if not (alpha > 0 and beta > 0 and c1 > 0 and mu > 0):
        raise ConfigError("Thm 12 needs alpha > 0, beta > 0, c1 > 0 and mu > 0")
    if not (a1_0 > 0 and a2_0 > 0):
        raise ConfigError("Thm 12 needs a positive start a1(0) > 0, a2(0) > 0")
    K = a2_0 - a1_0 ** 2 / (2 * c1 * mu)

    def R(t):
        return alpha - beta * t ** mu * (t * t / (2 * c1 * mu) + K)

    lo = math.sqrt(max(-2 * c1 * mu * K, 0.0))
    hi = max(1.0, 2 * lo)
    while R(hi) > 0:
        hi *= 2
    if R(lo) <= 0:  # only when K >= 0 and lo = 0 is excluded: R(0+) = alpha > 0
        lo = 0.0
    t = brentq(R, lo, hi, xtol=1e-15, rtol=1e-15)
    return np.array([t, t * t / (2 * c1 * mu) + K])


def nonlinear_no_fprime_drift(mu: float, c1: float, moments: dict) -> dict:
    """Without ``f'`` the two equations want different products ``a2 a1^mu``.

    ``da2/dt = 0`` needs ``a2 a1^mu = alpha/beta``, ``da1/dt = 0`` needs
    ``gamma/delta``; unless these are equal there is no fixed point (the
    paper's remark). Our asymptotic reading: ``a2`` relaxes fast once ``a1``
    is large, so ``a2 a1^mu -> alpha/beta`` and ``a1`` drifts at the constant
    rate ``c1 (gamma - delta alpha/beta)``, i.e. ``|a1| -> inf`` linearly.
    """
    al, be, ga, de = (moments[k] for k in ("alpha", "beta", "gamma", "delta"))
    gap = ga / de - al / be
    return {
        "has_fixed_point": bool(abs(gap) <= 1e-12 * (abs(ga / de) + abs(al / be))),
        "product_for_a2": al / be, "product_for_a1": ga / de,
        "drift_rate": c1 * (ga - de * al / be),
    }
