"""Paper 3 (Song, Xu & Lafferty 2021): two-layer feedback alignment, small and fast."""

import numpy as np
import pytest
import torch

from rbp.errors import ConfigError
from rbp.theory.twolayer import ACTIVATIONS, train_two_layer

SMALL = dict(n=20, d=60, runs=4, seed=1)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_z_and_w_updates_are_the_same_recursion(act):
    kw = dict(activation_name=act, width=64, runs=2, n=10, d=20, steps=40, lam=0.1, eta=0.05)
    rz = train_two_layer(track="z", **kw)
    rw = train_two_layer(track="w", **kw)
    assert np.allclose(rz.loss_curve, rw.loss_curve, rtol=1e-9, atol=1e-12)
    assert np.allclose(rz.alignment_curve, rw.alignment_curve, atol=1e-10)


def test_alignment_falls_with_width_without_penalty_and_loss_decays_exponentially():
    narrow = train_two_layer(activation_name="relu", width=100, lam=0.0, steps=3000, **SMALL)
    wide = train_two_layer(activation_name="relu", width=3200, lam=0.0, steps=3000, **SMALL)
    for r in (narrow, wide):
        assert not r.diverged.any()
        assert r.loss.max() < 1e-15          # trained to (numerical) zero error
        # exponential decay: log-loss falls roughly linearly, so the first and
        # second halves of the way down take comparable numbers of steps
        curve = r.loss_curve.max(axis=1)
        steps = r.record_steps
        half = steps[np.argmax(curve < np.sqrt(curve[0] * 1e-15))]
        assert 0.25 * r.steps < half < 0.75 * r.steps
    assert wide.alignment.mean() < 0.06
    assert narrow.alignment.mean() > wide.alignment.mean() + 0.1


def test_penalty_keeps_alignment_away_from_zero():
    free = train_two_layer(activation_name="relu", width=1600, lam=0.0, steps=1000, **SMALL)
    reg = train_two_layer(activation_name="relu", width=1600, lam=0.1, steps=1000, **SMALL)
    assert not reg.diverged.any()
    assert reg.alignment.min() > 0.3
    assert reg.alignment.min() > free.alignment.max() + 0.2
    assert reg.loss.max() < 1.0                # and it still fits the data (loss0 ~ 10)


def test_backprop_also_trains():
    r = train_two_layer(activation_name="tanh", width=200, lam=0.0, steps=500, algorithm="bp", **SMALL)
    assert r.loss.max() < 1e-10


@pytest.mark.parametrize("kw", [dict(width=0), dict(lam=-1.0), dict(runs=0), dict(activation_name="elu"),
                                dict(algorithm="dfa"), dict(eta=-0.1), dict(target="random")])
def test_bad_configuration_is_a_config_error(kw):
    base = dict(activation_name="relu", width=10, runs=1, n=5, d=5, steps=1)
    base.update(kw)
    with pytest.raises(ConfigError):
        train_two_layer(**base)


def test_default_step_near_the_stability_limit_converges_in_fewer_steps_for_sigmoid():
    # sigmoid's output kernel is badly conditioned (its mean 1/2 makes one large
    # eigenvalue); the default step 1.8 / lambda_max still converges, in about
    # 1/1.8 of the steps that 1 / lambda_max needs
    kw = dict(activation_name="sigmoid", width=200, steps=20000, n=20, d=60, runs=2, seed=1)
    fast = train_two_layer(**kw)
    slow = train_two_layer(eta_scale=1.0, **kw)
    for r in (fast, slow):
        assert not r.diverged.any() and r.loss.max() < 1e-18
    assert fast.steps < 0.7 * slow.steps
    assert abs(fast.eta / slow.eta - 1.8) < 1e-12


@pytest.mark.parametrize("track", ["z", "w"])
def test_training_runs_in_groups_gives_the_same_numbers(track):
    # groups of runs share a step loop; records, stopping and results must not depend on them
    kw = dict(activation_name="tanh", width=96, runs=5, n=10, d=20, steps=300, lam=0.05, track=track, seed=2)
    whole = train_two_layer(chunk_bytes=None, **kw)
    single = train_two_layer(chunk_bytes=1, **kw)          # one run per group
    pairs = train_two_layer(chunk_bytes=2 * 8 * 10 * 96, **kw)
    for r in (single, pairs):
        assert r.steps == whole.steps
        assert np.allclose(r.loss_curve, whole.loss_curve, rtol=1e-12, atol=0)
        assert np.allclose(r.alignment_curve, whole.alignment_curve, rtol=0, atol=1e-12)
    stop = dict(kw, lam=0.0, steps=5000, tol=1e-12)        # early stop when every run is done
    a, c = train_two_layer(chunk_bytes=None, **stop), train_two_layer(chunk_bytes=1, **stop)
    assert a.steps == c.steps < 5000 and np.allclose(a.alignment, c.alignment, atol=1e-12)
