"""Integrate a system and compare with the theorem's prediction.

Each ``check_*`` function draws (or takes) a problem that meets the
hypotheses of a theorem of paper 1, section 7, integrates it with
:mod:`rbp.theory.linear`, computes the prediction with
:mod:`rbp.theory.predictions`, and returns a JSON-ready dict with at least

* ``predicted`` / ``simulated``: the predicted and the reached fixed point
  (flat lists, in the order given by ``state``), or ``None`` where the
  theorem says there is no finite limit;
* ``max_abs_diff``: their largest difference (``None`` without a limit);
* ``status``: ``"converged"``, ``"diverges"`` or ``"no fixed point"``;
* ``agree``: whether simulation and prediction match (within ``tol``, or
  both without a limit).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from . import linear, predictions

__all__ = [
    "random_chain_problem",
    "check_chain",
    "check_expansive",
    "check_autoencoder",
    "general_problem",
    "check_general",
    "check_theorem9",
    "check_nonlinear",
]


def _floats(x):
    return [float(v) for v in np.asarray(x, dtype=float).ravel()]


def random_chain_problem(L: int, rng):
    """A random chain meeting the hypotheses of Thms 2-4.

    Starts ``a_i(0) ~ U(-1, 1)``, feedback ``|c_i| ~ U(0.5, 1.5)`` with random
    signs, ``alpha = +-U(0.5, 2)`` and ``beta ~ U(0.5, 2)`` (a second moment).
    """
    a0 = rng.uniform(-1.0, 1.0, L)
    c = rng.choice([-1.0, 1.0], L - 1) * rng.uniform(0.5, 1.5, L - 1)
    alpha = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))
    beta = float(rng.uniform(0.5, 2.0))
    return a0, c, alpha, beta


def _compare(pred, sim_traj, tol):
    sim = sim_traj.final
    pred = np.asarray(pred, dtype=float)
    finite = bool(np.all(np.isfinite(pred)))
    if finite and sim_traj.status == "converged":
        diff = float(np.max(np.abs(pred - sim)))
        return {"status": "converged", "predicted": _floats(pred), "simulated": _floats(sim),
                "max_abs_diff": diff, "agree": diff <= tol}
    if not finite:
        agree = sim_traj.status == "diverged"
        return {"status": "diverges", "predicted": None, "simulated": None, "max_abs_diff": None,
                "agree": agree, "simulated_outcome": sim_traj.status + (
                    f" ({sim_traj.message})" if sim_traj.message else "")}
    return {"status": sim_traj.status, "predicted": _floats(pred), "simulated": _floats(sim),
            "max_abs_diff": float(np.max(np.abs(pred - sim))), "agree": False,
            "simulated_outcome": sim_traj.status}


def check_chain(depth: int, seed: int = 0, *, method: str = "rbp", a0=None, c=None,
                alpha: float | None = None, beta: float | None = None, tol: float = 1e-6) -> dict:
    """Thms 1-4: integrate ``A(1,...,1)`` with ``depth`` weights and compare with the root of ``Q``."""
    if depth < 1:
        raise ConfigError(f"--depth must be at least 1, got {depth}")
    if method not in ("rbp", "srbp", "gd"):
        raise ConfigError(f"unknown method {method!r}: use rbp, srbp or gd")
    rng = np.random.default_rng(seed)
    ra0, rc, ralpha, rbeta = random_chain_problem(depth, rng)
    a0 = ra0 if a0 is None else np.asarray(a0, dtype=float)
    c = rc if c is None else np.asarray(c, dtype=float)
    alpha = ralpha if alpha is None else float(alpha)
    beta = rbeta if beta is None else float(beta)
    if a0.size != depth:
        raise ConfigError(f"--a0 needs {depth} values, got {a0.size}")
    if method != "gd" and c.size != depth - 1:
        raise ConfigError(f"--c needs {depth - 1} values, got {c.size}")
    if method != "gd" and np.any(c == 0):
        raise ConfigError("feedback weights must be non-zero")
    if beta == 0:
        raise ConfigError("beta = E[I^2] = 0 is the trivial case (no input): nothing moves")
    out = {"check": "chain", "depth": depth, "method": method, "seed": seed,
           "alpha": alpha, "beta": beta, "a0": _floats(a0), "tol": tol,
           "state": [f"a{i + 1}" for i in range(depth)]}
    if method == "gd":
        if beta < 0:
            raise ConfigError("the gradient-descent prediction needs beta > 0")
        tr = linear.integrate_chain(a0, None, alpha, beta, method="gd")
        pred = predictions.chain_gd_fixed_point(a0, alpha, beta)
        inv = predictions.chain_gd_invariants(tr.y)
        out["invariants"] = "a_{i+1}^2 - a_i^2"
    else:
        out["c"] = _floats(c)
        tr = linear.integrate_chain(a0, c, alpha, beta, method=method)
        pred, info = predictions.chain_fixed_point(a0, c, alpha, beta, return_info=True)
        inv = predictions.chain_invariants(tr.y, c)
        out.update(degree=int(info["degree"]), expected_degree=int(info["expected_degree"]),
                   converges_from_everywhere=bool(info["converges_from_everywhere"]),
                   real_roots=_floats(info["roots"]))
        out["invariants"] = "a_{i+1} - c_{i+1} a_i^2 / (2 c_i)"
    out["invariant_drift"] = float(np.max(np.abs(inv - inv[0]), initial=0.0))
    out["t_final"] = tr.t_final
    out.update(_compare(pred, tr, tol))
    if out["status"] == "diverges":
        out["predicted_outcome"] = f"a1 -> {'+' if pred[0] > 0 else '-'}inf (Thm 1: no root beyond the start)"
    return out


def check_expansive(n: int, seed: int = 0, *, method: str = "rbp", tol: float = 1e-6) -> dict:
    """Thm 5: RBP (or gradient descent) on ``A(1,N,1)``; the limit from a cubic in ``a_1``."""
    if n < 1:
        raise ConfigError(f"--n (hidden units) must be at least 1, got {n}")
    if method not in ("rbp", "srbp", "gd"):
        raise ConfigError(f"unknown method {method!r}: use rbp, srbp or gd")
    rng = np.random.default_rng(seed)
    a0, b0 = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    c = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
    alpha = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))
    beta = float(rng.uniform(0.5, 2.0))
    tr = linear.integrate_expansive(a0, b0, c, alpha, beta, method=method)
    out = {"check": "expansive", "n": n, "method": method, "seed": seed, "alpha": alpha,
           "beta": beta, "a0": _floats(a0), "b0": _floats(b0), "tol": tol,
           "state": [f"a{i + 1}" for i in range(n)] + [f"b{i + 1}" for i in range(n)]}
    A, B = tr.y[:, :n], tr.y[:, n:]
    if method == "gd":
        pa, pb = predictions.expansive_gd_fixed_point(a0, b0, alpha, beta)
        inv = A ** 2 - B ** 2
        out["invariant_drift"] = float(np.max(np.abs(inv - inv[0])))
    else:
        out["c"] = _floats(c)
        q = predictions.expansive_polynomial(a0, b0, c, alpha, beta)
        out["degree"] = int(q.degree())
        pa, pb = predictions.expansive_fixed_point(a0, b0, c, alpha, beta)
        v, h = predictions.expansive_invariants(A, B, c)
        out["invariant_drift"] = float(max(np.max(np.abs(v - v[0])), np.max(np.abs(h - h[0]))))
    out["t_final"] = tr.t_final
    out.update(_compare(np.concatenate((pa, pb)), tr, tol))
    return out


def check_autoencoder(n: int, seed: int = 0, *, tol: float = 1e-6) -> dict:
    """Lemma 1 and Thm 6: RBP on ``A(N,1,N)`` with whitened data, ``A -> t* C``."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    A0, B0, C = rng.normal(size=n) * 0.5, rng.normal(size=n) * 0.5, rng.normal(size=n)
    tr = linear.integrate_autoencoder(A0, B0, C)
    p = predictions.autoencoder_fixed_point(A0, B0, C)
    A, B = tr.y[:, :n], tr.y[:, n:]
    inv = np.array([predictions.autoencoder_invariant(a, b, C) for a, b in zip(A, B)])
    P_sim = np.outer(B[-1], A[-1])
    out = {"check": "autoencoder", "n": n, "seed": seed, "C": _floats(C), "tol": tol,
           "state": [f"A{i + 1}" for i in range(n)] + [f"B{i + 1}" for i in range(n)],
           "K": p["K"], "t_root": p["t"], "invariant_drift": float(np.max(np.abs(inv - inv[0]))),
           "product_diff": float(np.max(np.abs(P_sim - p["P"]))), "t_final": tr.t_final}
    out.update(_compare(np.concatenate((p["A"], p["B"])), tr, tol))
    return out


def general_problem(sizes, seed: int = 0, *, identity: bool = False):
    """A random ``A(N0,N1,N2)`` problem: sizes, ``A1(0)``, ``A2(0)``, ``C1``, ``Sigma_TI``, ``Sigma_II``.

    Starting weights ``~ N(0, 0.3^2)``, ``C1 ~ N(0, 1)``, ``Sigma_TI ~ N(0, 1)``
    and ``Sigma_II = M M^T / N0 + I`` (positive definite). With ``identity``,
    ``Sigma_TI = Sigma_II = C1 = I`` (Thm 10's setting, equal sizes).
    """
    if len(sizes) != 3 or min(sizes) < 1:
        raise ConfigError("--sizes needs three positive layer sizes N0 N1 N2")
    n0, n1, n2 = (int(s) for s in sizes)
    rng = np.random.default_rng(seed)
    A1, A2 = rng.normal(size=(n1, n0)) * 0.3, rng.normal(size=(n2, n1)) * 0.3
    if identity:
        if not n0 == n1 == n2:
            raise ConfigError("--identity (Sigma = C1 = I, Thm 10) needs equal layer sizes")
        C1, S_ti, S_ii = np.eye(n1), np.eye(n2), np.eye(n0)
    else:
        C1 = rng.normal(size=(n1, n2))
        M = rng.normal(size=(n0, n0))
        S_ii = M @ M.T / n0 + np.eye(n0)
        S_ti = rng.normal(size=(n2, n0))
    return n0, n1, n2, A1, A2, C1, S_ti, S_ii


def check_general(sizes, seed: int = 0, *, identity: bool = False, tol: float = 1e-6) -> dict:
    """Thms 7-8 (and 10 with ``identity``): RBP on ``A(N0,N1,N2)``; ``C1 A2 A1`` vs ``C1 S_TI S_II^-1``."""
    n0, n1, n2, A1, A2, C1, S_ti, S_ii = general_problem(sizes, seed, identity=identity)
    tr = linear.integrate_three_layer(A1, A2, C1, S_ti, S_ii)
    B1 = tr.final[: n1 * n0].reshape(n1, n0)
    B2 = tr.final[n1 * n0:].reshape(n2, n1)
    Y1 = tr.y[:, : n1 * n0].reshape(-1, n1, n0)
    Y2 = tr.y[:, n1 * n0:].reshape(-1, n2, n1)
    inv = np.array([predictions.three_layer_invariant(a, b, C1) for a, b in zip(Y1, Y2)])
    pred = predictions.three_layer_product_limit(C1, S_ti, S_ii)
    sim = C1 @ B2 @ B1
    diff = float(np.max(np.abs(pred - sim)))
    return {
        "check": "general", "sizes": [n0, n1, n2], "seed": seed, "identity": identity, "tol": tol,
        "state": [f"(C1 A2 A1)[{i},{j}]" for i in range(n1) for j in range(n0)],
        "status": tr.status, "predicted": _floats(pred), "simulated": _floats(sim),
        "max_abs_diff": diff,
        # Thm 10 claims more: A1 and A2 converge individually
        "agree": diff <= tol and (tr.status == "converged" or not identity),
        "weights_settled": tr.status == "converged",
        "invariant_drift": float(np.max(np.abs(inv - inv[0]))),
        "product_error": float(np.max(np.abs(B2 @ B1 - S_ti @ np.linalg.inv(S_ii)))),
        "t_final": tr.t_final,
    }


def check_theorem9(sizes, seed: int = 0, *, identity: bool = False, tol: float = 1e-6) -> dict:
    """Thm 9 on ``A(N0,N1,N2)``: the limit solves Eq. 110 and is an isolated solution.

    Integrates the problem of :func:`general_problem` and checks, from the
    trajectory and without using the theorem's conclusion:

    * the matrix ``V`` of Thm 8's proof never increases (smallest eigenvalue of
      ``V(t_k) - V(t_{k+1})`` over consecutive samples, ``lyapunov_increase``),
    * the end point solves Eq. 110 with ``K`` taken at ``t = 0`` and ``L = V(end)``
      (``residual``; ``L`` makes the third block zero, so the content is Thm 8's
      product and Thm 7's conserved matrix),
    * whether that solution is isolated (:func:`predictions.theorem9_isolation`),
      first for Eq. 110 alone (``isolated_eq110``), then with the conserved
      part of ``A1`` outside ``range(C1)`` added (``isolated``; that part is
      checked to stay constant, ``range_drift``). If it is isolated, Thm 9's
      argument says ``A1`` and ``C1 A2`` converge, and we compare with the
      integration: they must have settled.

    ``agree`` is true when the residual is within ``tol``, ``V`` never rose by
    more than ``tol`` and, for an isolated limit, the weights settled. The
    rank test is first-order: a rank-deficient Jacobian (``isolated: false``)
    leaves the question open rather than showing a continuum of solutions, so
    it does not fail the check.
    """
    n0, n1, n2, A1, A2, C1, S_ti, S_ii = general_problem(sizes, seed, identity=identity)
    tr = linear.integrate_three_layer(A1, A2, C1, S_ti, S_ii)
    Y1 = tr.y[:, : n1 * n0].reshape(-1, n1, n0)
    Y2 = tr.y[:, n1 * n0:].reshape(-1, n2, n1)
    K = predictions.three_layer_invariant(A1, A2, C1)
    V = np.array([predictions.three_layer_lyapunov(a, b, C1, S_ti, S_ii) for a, b in zip(Y1, Y2)])
    steps = V[:-1] - V[1:]
    increase = float(max(0.0, -min(float(np.linalg.eigvalsh(d)[0]) for d in steps))) if len(steps) else 0.0
    L = V[-1]
    B1, B2 = Y1[-1], Y2[-1]
    res = predictions.theorem9_residual(B1, B2, C1, S_ti, S_ii, K, L)
    iso110 = predictions.theorem9_isolation(B1, B2, C1, S_ti, S_ii, K, L)
    iso = predictions.theorem9_isolation(B1, B2, C1, S_ti, S_ii, K, L, A1_start=A1)
    Q = predictions.range_complement(C1)
    range_drift = float(np.max(np.abs(Q.T @ (Y1 - A1)))) if Q.shape[1] else 0.0
    residual = float(np.max(np.abs(res)))
    settled = tr.status == "converged"
    agree = residual <= tol and increase <= tol and range_drift <= tol and (settled or not iso["isolated"])
    X = C1 @ B2
    return {
        "check": "theorem9", "sizes": [n0, n1, n2], "seed": seed, "identity": identity, "tol": tol,
        "status": tr.status, "t_final": tr.t_final,
        "equations": iso["equations"], "unknowns": iso["unknowns"],
        "jacobian_rank_eq110": iso110["rank"], "isolated_eq110": iso110["isolated"],
        "extra_equations": iso["equations"] - iso110["equations"], "range_drift": range_drift,
        "jacobian_rank": iso["rank"], "needed_rank": iso["needed_rank"], "rank_C1": iso["rank_C1"],
        "smallest_singular_value": iso["smallest_singular_value"],
        "isolated": iso["isolated"], "weights_settled": settled,
        "residual": residual, "lyapunov_increase": increase,
        "lyapunov_drop": float(np.max(np.abs(V[0] - L))),
        "K": _floats(K), "L": _floats(L),
        "A1": _floats(B1), "C1A2": _floats(X),
        # the common keys of every check: here the "prediction" is Eq. 110's
        # right-hand side and the "simulation" the end point's left-hand side
        "predicted": _floats(np.zeros_like(res)), "simulated": _floats(res),
        "max_abs_diff": residual,
        "agree": agree,
    }


def check_nonlinear(mu: float, seed: int = 0, *, fprime: bool = True, tol: float = 1e-6,
                    t_max_drift: float = 1000.0) -> dict:
    """Thm 12 (with ``f'``) or the absence of fixed points (without ``f'``) for the power unit."""
    if not (mu > 0 and math.isfinite(mu)):
        raise ConfigError(f"--mu must be a positive number, got {mu}")
    rng = np.random.default_rng(seed)
    mom = linear.nonlinear_moments_uniform(mu)
    c1 = float(rng.uniform(0.5, 1.5))
    a0 = rng.uniform(0.2, 1.5, 2)
    out = {"check": "nonlinear", "mu": mu, "fprime": fprime, "seed": seed, "c1": c1,
           "a0": _floats(a0), "moments": {k: float(v) for k, v in mom.items()}, "tol": tol,
           "state": ["a1", "a2"]}
    drift = predictions.nonlinear_no_fprime_drift(mu, c1, mom)
    if fprime or drift["has_fixed_point"]:
        # without f' but mu = 1 the two rules coincide (the linear case)
        tr = linear.integrate_nonlinear(a0, mu, c1, mom, "fprime" if fprime else "no-fprime")
        pred = predictions.nonlinear_fixed_point(a0, mu, c1, mom["alpha"], mom["beta"])
        inv = predictions.nonlinear_invariant(tr.y[:, 0], tr.y[:, 1], mu, c1)
        out["invariant_drift"] = float(np.max(np.abs(inv - inv[0])))
        out["t_final"] = tr.t_final
        out.update(_compare(pred, tr, tol))
        return out
    tr = linear.integrate_nonlinear(a0, mu, c1, mom, "no-fprime", t_max=t_max_drift,
                                    stop_at_rest=False)
    tail = tr.t >= 0.9 * tr.t_final
    rate = float(np.polyfit(tr.t[tail], tr.y[tail, 0], 1)[0])
    field = linear.nonlinear_rhs(0, tr.final, mu, c1, mom, "no-fprime")
    settled = float(np.max(np.abs(field))) < 1e-8
    out.update({
        "status": "no fixed point", "predicted": None, "simulated": None, "max_abs_diff": None,
        "product_wanted_by_a2": drift["product_for_a2"], "product_wanted_by_a1": drift["product_for_a1"],
        "drift_rate_predicted": drift["drift_rate"], "drift_rate_simulated": rate,
        "final_state": _floats(tr.final), "t_final": tr.t_final,
        "field_norm_final": float(np.max(np.abs(field))),
        "agree": (not settled) and abs(rate - drift["drift_rate"]) <= 0.05 * abs(drift["drift_rate"]),
    })
    return out
