"""Paper 1, section 7: integrated dynamics against the theorems' predictions."""

import math

import numpy as np
import pytest
from numpy.polynomial import Polynomial

from rbp.errors import ConfigError
from rbp.theory import linear, predictions
from rbp.theory.checks import random_chain_problem

TOL = 1e-6


# ---------------------------------------------------------------- Theorem 1

@pytest.mark.parametrize(
    "coef, x0, expected",
    [
        ([6.0, -11.0, 6.0, -1.0], 1.5, 1.0),      # -(x-1)(x-2)(x-3): Q(1.5) < 0, flows down
        ([6.0, -11.0, 6.0, -1.0], 2.5, 3.0),      # Q(2.5) > 0, flows up
        ([6.0, -11.0, 6.0, -1.0], 10.0, 3.0),
        ([6.0, -11.0, 6.0, -1.0], -5.0, 1.0),
        ([-1.0, 0.0, 1.0], 2.0, math.inf),        # x^2 - 1: blows up beyond the top root
        ([-1.0, 0.0, 1.0], 0.0, -1.0),
        ([-1.0, 0.0, 1.0], -3.0, -1.0),
    ],
)
def test_polynomial_flow_limit_matches_integration(coef, x0, expected):
    assert predictions.polynomial_flow_limit(coef, x0) == pytest.approx(expected)
    q = Polynomial(coef)
    tr = linear.integrate(lambda t, y: np.array([q(y[0])]), [x0], t_max=1e4, blowup=1e6)
    if math.isinf(expected):
        assert tr.status == "diverged"
    else:
        assert tr.status == "converged"
        assert abs(tr.final[0] - expected) < TOL


def test_theorem1_global_convergence_criterion():
    assert predictions.converges_from_everywhere([1.0, 0.0, 0.0, -2.0])
    assert not predictions.converges_from_everywhere([1.0, 0.0, 0.0, 2.0])
    assert not predictions.converges_from_everywhere([1.0, 0.0, -2.0])


# ------------------------------------------------------------ Theorems 2-4

@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_chain_fixed_point_from_many_random_starts(depth):
    rng = np.random.default_rng(100 + depth)
    for _ in range(8):
        a0, c, alpha, beta = random_chain_problem(depth, rng)
        pred, info = predictions.chain_fixed_point(a0, c, alpha, beta, return_info=True)
        assert info["degree"] == 2 ** depth - 1 == info["expected_degree"]
        assert info["converges_from_everywhere"]  # Thm 4: odd degree, negative leading coefficient
        tr = linear.integrate_chain(a0, c, alpha, beta)
        assert tr.status == "converged"
        assert np.max(np.abs(pred - tr.final)) < TOL
        # the limit is a global minimum: alpha - beta P = 0
        assert abs(alpha - beta * np.prod(tr.final)) < 1e-8
        # conserved quantities (Lemma-1 type coupling) stay constant
        inv = predictions.chain_invariants(tr.y, c)
        assert np.max(np.abs(inv - inv[0])) < 1e-7


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_chain_gradient_descent_invariants_and_limit(depth):
    rng = np.random.default_rng(200 + depth)
    for _ in range(4):
        a0, _, alpha, beta = random_chain_problem(depth, rng)
        tr = linear.integrate_chain(a0, None, alpha, beta, method="gd")
        inv = predictions.chain_gd_invariants(tr.y)
        assert np.max(np.abs(inv - inv[0])) < 1e-7
        assert np.max(np.abs(predictions.chain_gd_fixed_point(a0, alpha, beta) - tr.final)) < TOL


def test_a111_depressed_cubic_of_theorem_2():
    """The paper's cubic a1^3 + 2 c1 (a2(0) - a1(0)^2/(2 c1)) a1 - 2 c1 alpha/beta has the same roots."""
    a0, c1, alpha, beta = np.array([-0.4, -1.7]), 0.8, 1.3, 0.9
    k = a0[1] - a0[0] ** 2 / (2 * c1)
    cubic = Polynomial([-2 * c1 * alpha / beta, 2 * c1 * k, 0.0, 1.0])
    q = predictions.chain_polynomial(a0, [c1], alpha, beta)
    assert np.allclose(np.sort(predictions.real_roots(cubic)), np.sort(predictions.real_roots(q)))
    # trajectories are parabolas a2 = a1^2 / (2 c1) + const
    tr = linear.integrate_chain(a0, [c1], alpha, beta)
    assert np.allclose(tr.y[:, 1] - tr.y[:, 0] ** 2 / (2 * c1), k, atol=1e-8)


def test_a111_stability_rule():
    c1, alpha, beta = 1.0, 1.0, 1.0
    # fixed points on a1 a2 = 1; unstable where a1^2 + c1 a2 < 0 (here -1 < a1 < 0)
    for a1, stable in [(-0.5, False), (-0.9, False), (-2.0, True), (0.7, True), (2.0, True)]:
        a2 = alpha / (beta * a1)
        lam = predictions.chain2_transverse_eigenvalue(a1, a2, c1, beta)
        eig = np.linalg.eigvals(predictions.chain_jacobian([a1, a2], [c1], alpha, beta))
        assert np.isclose(np.max(eig.real), max(lam, 0.0), atol=1e-12)
        assert (lam < 0) == stable
        # a small push off an unstable fixed point ends far away; off a stable one it returns nearby
        tr = linear.integrate_chain([a1 + 1e-4, a2], [c1], alpha, beta)
        moved = np.max(np.abs(tr.final - [a1, a2]))
        assert (moved < 1e-3) == stable


def test_rbp_effective_feedback_is_product_of_backward_weights():
    d = np.array([0.5, -2.0, 3.0])  # d_2, d_3, d_4 for a chain of 4 weights
    assert np.allclose(linear.rbp_effective_feedback(d), [-3.0, -6.0, 3.0])


def test_chain_rejects_bad_input():
    with pytest.raises(ConfigError):
        linear.integrate_chain([1.0, 1.0], [0.5, 0.5], 1.0, 1.0)
    with pytest.raises(ConfigError):
        predictions.chain_fixed_point([1.0, 1.0], [0.0], 1.0, 1.0)


# ---------------------------------------------------------------- Theorem 5

@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("method", ["rbp", "gd"])
def test_expansive_fixed_point(n, method):
    rng = np.random.default_rng(n)
    for _ in range(3):
        a0, b0 = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        c = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
        alpha, beta = float(rng.uniform(-2, 2)), float(rng.uniform(0.5, 2))
        tr = linear.integrate_expansive(a0, b0, c, alpha, beta, method=method)
        if method == "rbp":
            assert predictions.expansive_polynomial(a0, b0, c, alpha, beta).degree() == 3
            pa, pb = predictions.expansive_fixed_point(a0, b0, c, alpha, beta)
            v, h = predictions.expansive_invariants(tr.y[:, :n], tr.y[:, n:], c)
            assert np.max(np.abs(v - v[0])) < 1e-7 and np.max(np.abs(h - h[0])) < 1e-7
        else:
            pa, pb = predictions.expansive_gd_fixed_point(a0, b0, alpha, beta)
        assert tr.status == "converged"
        assert np.max(np.abs(np.concatenate((pa, pb)) - tr.final)) < TOL


# ------------------------------------------------------ Lemma 1, Theorem 6

@pytest.mark.parametrize("n", [2, 5, 12])
def test_autoencoder_limit_and_invariant(n):
    rng = np.random.default_rng(10 + n)
    for _ in range(3):
        A0, B0, C = rng.normal(size=n) * 0.5, rng.normal(size=n) * 0.5, rng.normal(size=n)
        p = predictions.autoencoder_fixed_point(A0, B0, C)
        assert p["t"] > 0 and abs(p["cubic"](p["t"])) < 1e-12
        tr = linear.integrate_autoencoder(A0, B0, C)
        A, B = tr.y[:, :n], tr.y[:, n:]
        inv = np.array([predictions.autoencoder_invariant(a, b, C) for a, b in zip(A, B)])
        assert np.max(np.abs(inv - inv[0])) < 1e-7
        assert np.max(np.abs(A[-1] - p["t"] * C)) < TOL          # A -> beta C
        assert np.max(np.abs(B[-1] - p["B"])) < TOL
        assert np.max(np.abs(np.outer(B[-1], A[-1]) - p["P"])) < TOL


# ------------------------------------------------------- Theorems 7, 8, 10

@pytest.mark.parametrize("shape", [(3, 4, 3), (4, 3, 2), (3, 2, 4), (5, 1, 5)])
def test_three_layer_product_limit_and_invariant(shape):
    n0, n1, n2 = shape
    rng = np.random.default_rng(sum(shape))
    A1, A2, C1 = rng.normal(size=(n1, n0)) * 0.3, rng.normal(size=(n2, n1)) * 0.3, rng.normal(size=(n1, n2))
    M = rng.normal(size=(n0, n0))
    S_ii, S_ti = M @ M.T / n0 + np.eye(n0), rng.normal(size=(n2, n0))
    tr = linear.integrate_three_layer(A1, A2, C1, S_ti, S_ii, t_max=1e5)
    Y1 = tr.y[:, : n1 * n0].reshape(-1, n1, n0)
    Y2 = tr.y[:, n1 * n0:].reshape(-1, n2, n1)
    inv = np.array([predictions.three_layer_invariant(a, b, C1) for a, b in zip(Y1, Y2)])
    assert np.max(np.abs(inv - inv[0])) < 1e-7
    assert np.all(np.linalg.norm(Y1, axis=(1, 2)) < 1e3)  # Thm 7: A1 stays bounded
    lim = predictions.three_layer_product_limit(C1, S_ti, S_ii)
    assert np.max(np.abs(C1 @ Y2[-1] @ Y1[-1] - lim)) < TOL


def test_a222_identity_converges():
    rng = np.random.default_rng(7)
    for _ in range(4):
        A1, A2 = rng.normal(size=(2, 2)) * 0.5, rng.normal(size=(2, 2)) * 0.5
        tr = linear.integrate_three_layer(A1, A2, np.eye(2))
        assert tr.status == "converged"  # A and B individually settle
        B1, B2 = tr.final[:4].reshape(2, 2), tr.final[4:].reshape(2, 2)
        assert np.max(np.abs(B2 @ B1 - np.eye(2))) < TOL


# --------------------------------------------------------------- Theorem 12

@pytest.mark.parametrize("mu", [1.0, 1.5, 2.0, 3.0])
def test_nonlinear_with_fprime_converges_to_theorem_12_root(mu):
    rng = np.random.default_rng(int(mu * 10))
    mom = linear.nonlinear_moments_uniform(mu)
    for _ in range(3):
        c1, a0 = float(rng.uniform(0.5, 1.5)), rng.uniform(0.2, 1.5, 2)
        tr = linear.integrate_nonlinear(a0, mu, c1, mom, "fprime")
        assert tr.status == "converged"
        pred = predictions.nonlinear_fixed_point(a0, mu, c1, mom["alpha"], mom["beta"])
        assert np.max(np.abs(pred - tr.final)) < TOL
        inv = predictions.nonlinear_invariant(tr.y[:, 0], tr.y[:, 1], mu, c1)
        assert np.max(np.abs(inv - inv[0])) < 1e-7


def test_nonlinear_mu_one_is_the_linear_chain():
    a0, c1 = np.array([0.4, 0.9]), 0.7
    mom = linear.nonlinear_moments_uniform(1.0)
    p = predictions.nonlinear_fixed_point(a0, 1.0, c1, mom["alpha"], mom["beta"])
    q = predictions.chain_fixed_point(a0, [c1], mom["alpha"], mom["beta"])
    assert np.allclose(p, q, atol=1e-10)


@pytest.mark.parametrize("mu", [2.0, 3.0])
def test_nonlinear_without_fprime_does_not_settle(mu):
    mom = linear.nonlinear_moments_uniform(mu)
    c1, a0 = 1.0, np.array([0.6, 0.4])
    drift = predictions.nonlinear_no_fprime_drift(mu, c1, mom)
    assert not drift["has_fixed_point"]
    tr = linear.integrate_nonlinear(a0, mu, c1, mom, "no-fprime", t_max=500.0, stop_at_rest=False)
    assert tr.status == "running"
    # the field does not die out: a1 keeps moving at (about) the predicted rate
    late = tr.t > 250
    rate = np.polyfit(tr.t[late], tr.y[late, 0], 1)[0]
    assert rate == pytest.approx(drift["drift_rate"], rel=0.05)
    assert tr.y[-1, 0] > tr.y[np.argmax(late), 0] + 0.4 * 250 * drift["drift_rate"]
