"""Paper 3 (Song, Xu & Lafferty 2021): two-layer feedback alignment, small and fast."""

import math

import numpy as np
import pytest
import torch

from rbp.errors import ConfigError
from rbp.theory.twolayer import (
    ACTIVATIONS,
    AUTHORS_WIDTHS,
    PROTOCOLS,
    StopRule,
    activation,
    authors_min_steps,
    draw_run,
    fa_gradients,
    train_two_layer,
)

SMALL = dict(n=20, d=60, runs=4, seed=1, protocol="normalised")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _problem(act, seed=0, n=7, d=11, p=13):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    W = torch.randn(p, d, generator=g, dtype=torch.float64)
    beta = torch.randn(p, generator=g, dtype=torch.float64)
    b = torch.randn(p, generator=g, dtype=torch.float64)
    return X, y, W, beta, b


def _autograd(X, y, W, beta, act, loss):
    W = W.clone().requires_grad_(True)
    beta = beta.clone().requires_grad_(True)
    psi, _ = activation(act)
    f = psi(X @ W.T) @ beta / math.sqrt(W.shape[0])
    L = torch.nn.functional.mse_loss(f, y) if loss == "mse" else 0.5 * (f - y).pow(2).sum()
    gW, gbeta = torch.autograd.grad(L, (W, beta))
    return gW, gbeta


@pytest.mark.parametrize("loss", ["mse", "half_sse"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_fa_update_is_autograd_gradient_when_feedback_is_beta(act, loss):
    X, y, W, beta, b = _problem(act)
    gW, gbeta = _autograd(X, y, W, beta, act, loss)
    dW, dbeta = fa_gradients(X, y, W, beta, beta.clone(), act, 0.0, loss=loss)
    assert torch.allclose(dW, gW, rtol=1e-12, atol=1e-12)
    assert torch.allclose(dbeta, gbeta, rtol=1e-12, atol=1e-12)
    bW, bbeta = fa_gradients(X, y, W, beta, b, act, 0.0, loss=loss, algorithm="bp")
    assert torch.allclose(bW, gW, rtol=1e-12, atol=1e-12) and torch.allclose(bbeta, gbeta, rtol=1e-12)
    # with a random b only W's direction changes: beta's update is still its gradient
    fW, fbeta = fa_gradients(X, y, W, beta, b, act, 0.0, loss=loss)
    assert torch.allclose(fbeta, gbeta, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fW, gW, rtol=1e-3)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_penalty_adds_lambda_beta_to_betas_gradient_only(act):
    X, y, W, beta, b = _problem(act, seed=2)
    lam = 0.37
    dW0, db0 = fa_gradients(X, y, W, beta, b, act, 0.0)
    dW1, db1 = fa_gradients(X, y, W, beta, b, act, lam)
    assert torch.equal(dW0, dW1)
    assert torch.allclose(db1 - db0, lam * beta, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_one_training_step_is_the_penalised_fa_step(act):
    # the batched trainer (Z form, or the reduced linear form) against one explicit W-form step
    kw = dict(activation_name=act, width=40, n=8, d=12, lam=0.3, seed=5, runs=2, first_run=3)
    res = train_two_layer(steps=1, record_every=1, check_every=0, min_steps=0, **kw)
    proto = PROTOCOLS["authors"]
    eta = proto.step[act]
    for k in range(2):
        X, y, W, beta, b = draw_run(proto, act, 40, 8, 12, target=res.config["target"], seed=5, run=3 + k)
        dW, dbeta = fa_gradients(X, y, W, beta, b, act, 0.3)
        W1, beta1 = W - eta * dW, beta - eta * dbeta
        psi, _ = activation(act)
        e = psi(X @ W1.T) @ beta1 / math.sqrt(40) - y
        assert res.loss_curve[1, k] == pytest.approx(e.pow(2).mean().item(), rel=1e-10)
        cos = (b @ beta1 / (b.norm() * beta1.norm())).item()
        assert res.alignment_curve[1, k] == pytest.approx(cos, abs=1e-12)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_z_w_and_linear_forms_are_the_same_recursion(act):
    for algorithm in ("fa", "bp"):
        kw = dict(activation_name=act, width=64, runs=2, n=10, d=20, steps=40, lam=0.1, eta=0.05,
                  algorithm=algorithm, record_every=5, check_every=0, min_steps=0)
        rz = train_two_layer(track="z", **kw)
        rw = train_two_layer(track="w", **kw)
        assert np.allclose(rz.loss_curve, rw.loss_curve, rtol=1e-9, atol=1e-12)
        assert np.allclose(rz.alignment_curve, rw.alignment_curve, atol=1e-10)
        if act == "linear":
            rl = train_two_layer(track="linear", **kw)
            assert np.allclose(rl.loss_curve, rz.loss_curve, rtol=1e-9, atol=1e-12)
            assert np.allclose(rl.alignment_curve, rz.alignment_curve, atol=1e-10)
    # the normalised protocol's step (from each run's tangent kernel) is the same in every form
    kw = dict(activation_name=act, width=64, runs=3, n=10, d=20, steps=5, protocol="normalised")
    etas = [train_two_layer(track=t, **kw).eta for t in ("z", "w") + (("linear",) if act == "linear" else ())]
    assert all(np.allclose(e, etas[0], rtol=1e-10) for e in etas) and np.ptp(etas[0]) > 0


def test_each_run_is_reproducible_from_seed_and_run_index_and_groups_do_not_matter():
    kw = dict(activation_name="tanh", width=96, n=10, d=20, lam=0.002, seed=2, min_steps=2000,
              check_every=500)
    whole = train_two_layer(runs=5, chunk_bytes=None, **kw)
    single = train_two_layer(runs=5, chunk_bytes=1, **kw)           # one run per group
    assert np.array_equal(whole.run_steps, single.run_steps)
    assert np.allclose(whole.alignment, single.alignment, rtol=0, atol=1e-12)
    alone = train_two_layer(runs=1, first_run=3, **kw)               # run 3 by itself
    assert alone.run_steps[0] == whole.run_steps[3]
    assert alone.alignment[0] == pytest.approx(whole.alignment[3], abs=1e-12)
    other = train_two_layer(runs=1, first_run=3, **{**kw, "seed": 3})
    assert other.alignment[0] != pytest.approx(whole.alignment[3], abs=1e-8)   # another seed, other draws


def test_stop_rule_checks():
    rule = StopRule(min_steps=2500, max_steps=10_000, check_every=1000, change_tol=1e-3)
    last = torch.tensor([math.nan, math.nan])
    conv, last = rule.check(0, torch.tensor([5.0, 5.0]), last)
    assert not conv.any() and last.tolist() == [5.0, 5.0]
    conv, last = rule.check(1000, torch.tensor([4.0, 5.0005]), last)     # changed little, but < min_steps
    assert not conv.any()
    conv, last2 = rule.check(2500, torch.tensor([0.0, 0.0]), last)       # not a check step
    assert not conv.any() and torch.equal(last2, last)
    conv, last = rule.check(3000, torch.tensor([3.9995, 4.0]), torch.tensor([4.0, 5.0]))
    assert conv.tolist() == [True, False]
    assert StopRule(loss_tol=1e-6).check(7, torch.tensor([1e-7, 1e-5]), last)[0].tolist() == [True, False]


def test_training_stops_by_the_authors_rule():
    # each run stops at the first check (every 500 steps, from step 1500 on) whose loss moved by
    # less than 0.01 since the check before; record_every = check_every records those losses
    res = train_two_layer(activation_name="relu", width=64, n=10, d=20, lam=0.05, runs=3, seed=4,
                          min_steps=1500, check_every=500, change_tol=0.01, record_every=500)
    assert (res.status == "converged").all()
    for k in range(3):
        s = res.run_steps[k]
        assert s % 500 == 0 and s >= 1500
        curve = dict(zip(res.record_steps, res.loss_curve[:, k]))
        assert abs(curve[s] - curve[s - 500]) < 0.01
        for t in range(1500, s, 500):                                   # no earlier check stopped it
            assert abs(curve[t] - curve[t - 500]) >= 0.01
    capped = train_two_layer(activation_name="relu", width=64, n=10, d=20, lam=0.05, runs=2, seed=4,
                             min_steps=1500, check_every=500, change_tol=1e-12, steps=2200)
    assert (capped.status == "capped").all() and (capped.run_steps == 2200).all()
    assert capped.summary()["capped_runs"] == 2


def test_diverged_runs_are_counted_and_left_out_of_the_means():
    # a fixed step near the stability limit of these linear runs: some blow up, some do not
    kw = dict(activation_name="linear", width=50, n=10, d=20, runs=8, seed=3, eta=0.195,
              min_steps=500, check_every=100, record_every=10)
    res = train_two_layer(**kw)
    div = res.diverged
    assert 0 < div.sum() < len(div)
    assert np.isnan(res.alignment[div]).all() and np.isfinite(res.alignment[~div]).all()
    assert (res.run_steps[div] < 500).all()                           # stopped when it was caught
    s = res.summary()
    assert s["diverged_runs"] == div.sum() and s["converged_runs"] == (~div).sum()
    assert s["alignment_mean"] == pytest.approx(np.mean(res.alignment[~div]))
    assert s["alignment_sd"] == pytest.approx(np.std(res.alignment[~div], ddof=1))
    assert s["loss_max"] == pytest.approx(np.max(res.loss[~div]))
    assert [a is None for a in s["alignments"]] == list(div)
    assert np.isnan(res.filled_loss_curve()[:, div]).all()
    j = int(np.flatnonzero(div)[0])                                   # the same run alone diverges too
    assert train_two_layer(**{**kw, "runs": 1, "first_run": j}).diverged[0]
    calm = train_two_layer(**{**kw, "eta": 0.05})
    assert not calm.diverged.any()


def test_authors_protocol_defaults():
    assert [authors_min_steps(p) for p in (200, 800, 3200, 12800)] == [5000, 10000, 20000, 40000]
    assert authors_min_steps(400) == 7072 and AUTHORS_WIDTHS == (200, 400, 800, 1600, 3200, 6400, 12800)
    pr = PROTOCOLS["authors"]
    assert pr.step == {"linear": 1e-3, "relu": 1e-2, "tanh": 0.1, "sigmoid": 0.1}
    assert pr.lams == {"linear": (0, 0.2, 0.3, 0.5), "relu": (0, 0.02, 0.05, 0.2),
                       "tanh": (0, 0.001, 0.002, 0.005), "sigmoid": (0, 0.001, 0.003, 0.01)}
    assert pr.runs == 50 and pr.check_every == 1000 and pr.change_tol == 1e-3 and pr.loss == "mse"
    r = train_two_layer(activation_name="tanh", width=30, n=6, d=9, steps=3, runs=2)
    s = r.summary()
    assert s["protocol"] == "authors" and s["eta"] == 0.1 and s["target"] == "teacher"
    assert s["rule_min_steps"] == authors_min_steps(30) and s["rule_check_every"] == 1000
    assert train_two_layer(activation_name="linear", width=30, n=6, d=9, steps=3).summary()["target"] == "linear"
    # data: x ~ N(0, I_d); the teacher has the student's width and activation, N(0,1) weights and 1/sqrt(p)
    X, y, W, beta, b = draw_run(pr, "sigmoid", 400, 200, 150, target="teacher", seed=0, run=0)
    assert X.std().item() == pytest.approx(1.0, abs=0.01) and W.shape == (400, 150)
    assert W.std().item() == pytest.approx(1.0, abs=0.01) and beta.shape == b.shape == (400,)
    g = torch.Generator().manual_seed(__import__("rbp.theory.twolayer", fromlist=["_run_seed"])._run_seed(0, 0))
    X2 = torch.randn(200, 150, generator=g, dtype=torch.float64)
    U = torch.randn(400, 150, generator=g, dtype=torch.float64)
    v = torch.randn(400, generator=g, dtype=torch.float64)
    assert torch.equal(X2, X) and torch.allclose(y, torch.sigmoid(X @ U.T) @ v / 20.0)
    Xn = draw_run(PROTOCOLS["normalised"], "relu", 10, 200, 150, target="linear", seed=0, run=0)[0]
    assert Xn.std().item() == pytest.approx(150 ** -0.5, rel=0.02)


def test_normalised_protocol_alignment_falls_with_width_without_penalty():
    narrow = train_two_layer(activation_name="relu", width=100, lam=0.0, steps=3000, **SMALL)
    wide = train_two_layer(activation_name="relu", width=3200, lam=0.0, steps=3000, **SMALL)
    for r in (narrow, wide):
        assert not r.diverged.any() and (r.status == "converged").all()
        assert r.loss.max() < 1e-18                    # trained to (numerical) zero error
    assert wide.alignment.mean() < 0.06
    assert narrow.alignment.mean() > wide.alignment.mean() + 0.1


def test_normalised_protocol_penalty_keeps_alignment_away_from_zero():
    free = train_two_layer(activation_name="relu", width=1600, lam=0.0, steps=1000, **SMALL)
    reg = train_two_layer(activation_name="relu", width=1600, lam=0.1, steps=1000, **SMALL)
    assert not reg.diverged.any() and (reg.status == "capped").all()
    assert reg.alignment.min() > 0.3
    assert reg.alignment.min() > free.alignment.max() + 0.2
    assert reg.loss.max() < 1.0


def test_authors_protocol_penalty_raises_alignment_of_linear_units():
    kw = dict(activation_name="linear", width=200, n=10, d=30, runs=4, seed=0, min_steps=2000, change_tol=0.01)
    free, reg = train_two_layer(lam=0.0, **kw), train_two_layer(lam=0.5, **kw)
    assert (free.status == "converged").all() and (reg.status == "converged").all()
    assert free.alignment.mean() < 0.15 and reg.alignment.min() > free.alignment.max()
    assert reg.alignment.mean() > free.alignment.mean() + 0.3


@pytest.mark.parametrize("kw", [dict(width=0), dict(lam=-1.0), dict(runs=0), dict(activation_name="elu"),
                                dict(algorithm="dfa"), dict(eta=-0.1), dict(target="random"),
                                dict(protocol="paper"), dict(dtype="float16"), dict(track="linear"),
                                dict(lam=float("nan")), dict(first_run=-1)])
def test_bad_configuration_is_a_config_error(kw):
    base = dict(activation_name="relu", width=10, runs=1, n=5, d=5, steps=1)
    base.update(kw)
    with pytest.raises(ConfigError):
        train_two_layer(**base)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_authors_teacher_targets_keep_their_scale_as_the_width_grows(act):
    # The authors' teacher is psi(X U^T) v / sqrt(p): its targets' RMS does not depend on p.  Without
    # the 1/sqrt(p) it would grow as sqrt(p) (8x between these widths).
    pr = PROTOCOLS["authors"]
    rms = {}
    for p in (200, 12800):
        ys = [draw_run(pr, act, p, 50, 150, target="teacher", seed=0, run=r)[1] for r in range(8)]
        rms[p] = torch.stack(ys).pow(2).mean().sqrt().item()
    assert rms[12800] / rms[200] == pytest.approx(1.0, abs=0.35)
    # the scale is the unit's own: E psi(z)^2 with z ~ N(0, d) (x ~ N(0, I_d), U ~ N(0, 1))
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 150 ** 0.5
    psi = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act]
    assert rms[12800] == pytest.approx(psi(z).pow(2).mean().sqrt().item(), rel=0.35)
