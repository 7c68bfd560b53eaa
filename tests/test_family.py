"""The wider family: Kolen-Pollack, weight mirrors and the sign-concordant feedbacks (docs/family.md).

Gradient-level checks (float64, tiny networks) plus two short trainings on the bundled digits.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.channel import feedback as fb
from rbp.channel.mirror import mirror_step
from rbp.cost import cost
from rbp.nn import FeedbackConv2d, FeedbackLinear
from rbp.nn.conv import kernel_glorot_std
from rbp.nn.fused import FusedNetwork

from helpers import batch, grads, net, sites
from helpers import assert_grads_equal as _close

DEEP = [7, 6, 5, 4, 3]
FAMILY = ["kp", "wm", "usf", "brsf", "frsf"]


def _angle(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))


def _conv_net(alg, seed=0, **opts):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)).double()
    return rbp.convert(m, alg, seed=seed + 100, example_input=torch.zeros(1, 1, 8, 8, dtype=torch.float64),
                       **opts)


def _conv_batch(rows=5):
    g = torch.Generator().manual_seed(3)
    return torch.randn(rows, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (rows,), generator=g)


# ---------------------------------------------------------------- registry, options, refusals

def test_family_is_in_the_registry_with_its_papers():
    for name in FAMILY:
        assert name in rbp.ALGORITHMS
    from rbp.channel.algorithm import DESCRIPTIONS
    assert "Akrout" in DESCRIPTIONS["kp"] and "Akrout" in DESCRIPTIONS["wm"]
    for name in ("usf", "brsf", "frsf"):
        assert "Liao" in DESCRIPTIONS[name]
    assert str(rbp.ALGORITHMS["brsf"].feedback) == "sign-concordant"   # paper 1's observation 2, reused
    kp = rbp.ALGORITHMS["kp"]
    assert kp.adaptive and kp.adapt_rate == 1.0 and kp.weight_decay > 0
    # KP without its decay is ARBP at the forward rate (paper 2's symmetry-adaptive experiments ran that)
    from rbp.channel.algorithm import training_signature
    assert training_signature(rbp.algorithm("kp", weight_decay=0)) == training_signature(
        rbp.algorithm("arbp", adapt_rate=1.0))
    assert rbp.algorithm("kp").describe() == "kp" and rbp.algorithm("usf").describe() == "usf"
    assert rbp.algorithm("kp", weight_decay=0.5).describe() == "kp[decay 0.5]"
    assert rbp.algorithm("wm", mirror_noise=0.5).options() == {"mirror_noise": 0.5}


@pytest.mark.parametrize("name,opts,words", [
    ("bp", {"mirror_rate": 0.1}, "mirror_rate"),
    ("srbp", {"mirror_batch": 10}, "mirror_batch"),
    ("wm", {"feedback": "sign-concordant"}, "set anew"),
    ("kp", {"feedback": "sign-fixed"}, "set anew"),
    ("srbp", {"feedback": "sign-uniform"}, "chained routes"),
    ("kp", {"weight_decay": -1.0}, "weight_decay"),
    ("wm", {"mirror_batch": 0}, "mirror_batch"),
    ("wm", {"mirror_noise": 0}, "mirror_noise"),
])
def test_family_options_are_checked(name, opts, words):
    with pytest.raises(rbp.ConfigError, match=words):
        rbp.algorithm(name, **opts)


# ---------------------------------------------------------------- Kolen-Pollack

@pytest.mark.parametrize("make", ["mlp", "conv"])
def test_kp_feedback_change_equals_forward_change_plus_shared_decay(make):
    lam, lr = 0.05, 0.3
    if make == "mlp":
        (x, y), m = batch(), net(DEEP, "kp", weight_decay=lam)
    else:
        (x, y), m = _conv_batch(), _conv_net("kp", weight_decay=lam)
    ss = [s for s in m.modules() if isinstance(s, (FeedbackLinear, FeedbackConv2d))]
    W0 = [s.weight.detach().clone() for s in ss]
    b0 = [s.bias.detach().clone() for s in ss]
    B0 = [None] + [s.feedback.detach().clone() for s in ss[1:]]
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    F.cross_entropy(m(x), y).backward()
    # the channel's weight decay is plain L2 on the forward parameters: gradient = algorithm's + lam * p
    ref = _conv_net("rbp", weight_decay=0.0) if make == "conv" else net(DEEP, "rbp")
    for s, r in zip(ss[1:], [t for t in ref.modules() if isinstance(t, (FeedbackLinear, FeedbackConv2d))][1:]):
        r.feedback.copy_(s.feedback.detach())         # same matrices: the RBP step of the same channel
    g_ref = grads(ref, x, y)
    for i, (name, p) in enumerate((n, p) for n, p in m.named_parameters() if not n.endswith("feedback")):
        torch.testing.assert_close(p.grad, g_ref[name] + lam * p.detach(), atol=1e-12, rtol=0)
    opt.step()
    for h in range(1, len(ss)):
        dW = ss[h].weight.detach() - W0[h]
        dB = ss[h].feedback.detach() - B0[h]
        # B is stored in W's orientation: "B^T changes like W^T, plus the shared decay"
        torch.testing.assert_close(dB, dW - lr * lam * (B0[h] - W0[h]), atol=1e-12, rtol=0)
        assert dW.abs().max() > 0
    assert all((s.bias.detach() - b).abs().max() > 0 for s, b in zip(ss, b0))


def test_kp_started_at_the_mirror_is_backprop_with_weight_decay():
    x, y = batch()
    m = net(DEEP, "kp", weight_decay=0.01)
    ref = net(DEEP, "bp")
    for s in sites(m)[1:]:
        s.feedback.data.copy_(s.weight.detach())
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5, weight_decay=0.01)
    for _ in range(5):
        for model, o in ((m, opt), (ref, opt_ref)):
            o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            o.step()
    for s, r in zip(sites(m), sites(ref)):
        torch.testing.assert_close(s.weight.detach(), r.weight.detach(), atol=1e-12, rtol=0)
        if s.feedback is not None:
            torch.testing.assert_close(s.feedback.detach(), s.weight.detach(), atol=1e-12, rtol=0)


def test_kp_feedback_comes_to_mirror_the_forward_weights_on_digits():
    """A 64-100-100-10 tanh MLP, minibatch 10, 20 epochs: every feedback angle falls below 30 degrees."""
    from rbp.train import TrainSpec, train_group
    spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm("kp"), hidden=(100, 100), epochs=20, batch_size=10)
    _, hist = train_group(spec, [0])
    first, last = hist[0][0].alignment, hist[0][-1].alignment
    angles = {k: v for k, v in last.items() if k.startswith("feedback_angle")}
    assert len(angles) == 2 and all(v < 30 for v in angles.values()), angles
    assert all(first[k] > 45 for k in angles)           # they started far from it
    assert hist[0][-1].test_accuracy >= 0.9


# ---------------------------------------------------------------- sign-concordant feedback

def test_frsf_signs_follow_w_and_magnitudes_stay():
    x, y = batch()
    m = net(DEEP, "frsf")
    ss = sites(m)
    mags = [s.feedback.abs().clone() for s in ss[1:]]
    for s in ss[1:]:
        assert torch.equal(torch.sign(s.feedback), torch.sign(s.weight.detach()))
    with torch.no_grad():                      # an update that flips some signs of W
        for s in ss[1:]:
            s.weight[0].neg_()
            s.weight[:, 1].mul_(-3.0)
    grads(m, x, y)
    for s, mag in zip(ss[1:], mags):
        assert torch.equal(torch.sign(s.feedback), torch.sign(s.weight.detach()))
        torch.testing.assert_close(s.feedback.abs(), mag, atol=0, rtol=0)
    # and the signal is RBP's through that matrix
    ref = net(DEEP, "rbp")
    for s, r in zip(ss, sites(ref)):
        r.weight.data.copy_(s.weight.detach())
        if r.feedback is not None:
            r.feedback.copy_(s.feedback)
    _close(grads(m, x, y), grads(ref, x, y), tol=1e-12)


def test_brsf_redraws_magnitudes_every_minibatch_and_keeps_signs():
    x, y = batch()
    m = net(DEEP, "brsf")
    s = sites(m)[2]
    seen = []
    for _ in range(3):
        grads(m, x, y)
        assert torch.equal(torch.sign(s.feedback), torch.sign(s.weight.detach()))
        seen.append(s.feedback.clone())
    assert not torch.equal(seen[0].abs(), seen[1].abs()) and not torch.equal(seen[1].abs(), seen[2].abs())


@pytest.mark.parametrize("make", ["mlp", "conv"])
def test_usf_is_sign_of_w_at_one_constant_magnitude(make):
    if make == "mlp":
        (x, y), m = batch(), net(DEEP, "usf")
    else:
        (x, y), m = _conv_batch(), _conv_net("usf")
    ss = [s for s in m.modules() if isinstance(s, (FeedbackLinear, FeedbackConv2d))]
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for s in ss[1:]:
            w = s.weight.detach()
            std = kernel_glorot_std(w.shape) if w.dim() == 4 else fb.glorot_std(w.shape)
            torch.testing.assert_close(s.feedback, fb.forward_signs(w) * std, atol=1e-15, rtol=0)
        opt.step()


# ---------------------------------------------------------------- weight mirrors

def test_weight_mirror_moves_feedback_towards_w_on_a_layer_driven_by_white_noise():
    m = net([6, 20, 15, 3], "wm", mirror_rate=0.05, mirror_noise=0.5, mirror_decay=0.25, mirror_batch=50)
    s = sites(m)[1]                                       # W (15 x 20) and its feedback B
    W = s.weight.detach().clone()
    B0 = s.feedback.clone()
    # one step is the rule dB = eta (<y x^T> - lambda B) on the channel's noise stream
    gen = torch.Generator().manual_seed(0)
    gen.set_state(m.rbp_channel.noise.generators("cpu")[0].get_state())
    mirror_step(m.rbp_channel)
    assert sites(m)[0].feedback is None            # the first layer has no feedback: it draws no noise
    x2 = torch.randn(50, 20, generator=gen, dtype=torch.float64).mul_(0.5)
    want = B0 + 0.05 * ((x2 @ W.T).T @ x2 / 50 - 0.25 * B0)
    torch.testing.assert_close(s.feedback, want, atol=1e-12, rtol=0)
    angles = [_angle(B0, W), _angle(s.feedback, W)]
    for _ in range(400):
        mirror_step(m.rbp_channel)
    angles.append(_angle(s.feedback, W))
    assert angles[0] > 60 and angles[1] < angles[0] and angles[2] < 5, angles
    # B relaxes towards (sigma^2 / lambda) W = W here
    ratio = (s.feedback.norm() / W.norm()).item()
    assert 0.9 < ratio < 1.1
    torch.testing.assert_close(s.weight.detach(), W, atol=0, rtol=0)      # the mirror leaves W alone


def test_weight_mirror_on_conv_kernels():
    m = _conv_net("wm", mirror_rate=0.1, mirror_noise=1.0, mirror_decay=1.0, mirror_batch=100)
    conv2 = [s for s in m.modules() if isinstance(s, FeedbackConv2d)][1]
    before = _angle(conv2.feedback, conv2.weight.detach())
    for _ in range(100):
        m.rbp_channel.after_step()
    assert before > 60 and _angle(conv2.feedback, conv2.weight.detach()) < 10


def test_after_step_leaves_other_algorithms_alone():
    for name in ("rbp", "kp", "usf", "arbp"):
        m = net(DEEP, name)
        state = {k: v.clone() for k, v in m.state_dict().items()}
        m.rbp_channel.after_step()
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k])


# ---------------------------------------------------------------- one mechanism: drivers, ensembles, diagnostics

@pytest.mark.parametrize("alg,opts", [("kp", {}), ("kp", {"weight_decay": 0.3}), ("wm", {}), ("usf", {}),
                                      ("brsf", {}), ("frsf", {}), ("arbp", {"weight_decay": 0.1})])
def test_family_fused_driver_equals_autograd_driver(alg, opts):
    x, y = batch()
    m = net(DEEP, alg, **opts)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    auto = grads(m, x, y)
    m2 = net(DEEP, alg, **opts)                 # fresh noise streams (brSF redraws), same state
    m2.load_state_dict(state)
    for p in m2.parameters():
        p.grad = None
    FusedNetwork(m2).step_gradients(x, y)
    _close({n: (None if p.grad is None else p.grad.clone()) for n, p in m2.named_parameters()}, auto, tol=1e-12)


@pytest.mark.parametrize("alg", FAMILY)
def test_family_top_layer_follows_the_gradient(alg):
    x, y = batch()
    opts = {"weight_decay": 0.0} if alg == "kp" else {}
    got, ref = grads(net(DEEP, alg, **opts), x, y), grads(net(DEEP, "bp"), x, y)
    for key in ("6.weight", "6.bias"):
        torch.testing.assert_close(got[key], ref[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("alg", FAMILY)
def test_family_ensemble_member_equals_the_single_network(alg):
    seeds = [4, 9]
    x, y = batch(rows=6)
    ens = rbp.convert(rbp.mlp(DEEP, seed=None, ensemble=seeds).double(), alg, seed=seeds)
    xs, ys = x.unsqueeze(0).expand(2, -1, -1).contiguous(), y.unsqueeze(0).expand(2, -1)
    for _ in range(2):                                   # two steps with the mirror phase between them
        for p in ens.parameters():
            p.grad = None
        out = ens(xs)
        (F.cross_entropy(out.reshape(-1, 3), ys.reshape(-1), reduction="sum") / x.shape[0]).backward()
        ens.rbp_channel.after_step()
    for k, s in enumerate(seeds):
        single = rbp.convert(rbp.mlp(DEEP, seed=s).double(), alg, seed=s)
        for _ in range(2):
            g = grads(single, x, y)
            single.rbp_channel.after_step()
        for name, p in ens.named_parameters():
            torch.testing.assert_close(p.grad[k], g[name], atol=1e-12, rtol=0, msg=f"{alg} {name} member {k}")
        for name, t in ens.state_dict().items():
            if name.endswith("feedback"):
                torch.testing.assert_close(t[k], single.state_dict()[name], atol=1e-12, rtol=0)


@pytest.mark.parametrize("alg", FAMILY)
def test_family_on_conv_sites_trains_and_reports_alignment(alg):
    from rbp.diagnostics import model_alignment
    x, y = _conv_batch()
    m = _conv_net(alg)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss0 = None
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        m.rbp_channel.after_step()
        loss0 = loss0 if loss0 is not None else loss.item()
    assert loss.item() < loss0
    fig = model_alignment(m, x, y)[0]
    for h in (1, 2):
        assert math.isfinite(fig[f"feedback_angle_{h}"]) and math.isfinite(fig[f"signal_angle_{h}"])
    if alg in ("usf", "brsf", "frsf"):       # sign-concordant: well inside 90 degrees
        assert fig["feedback_angle_1"] < 60


def test_cost_counts_the_family():
    W = 100 * 100 * 3 + 100 * 10                # feedback matrices of 784-100-100-100-100-10
    assert cost(algorithm="kp")["adaptation"] == W and cost(algorithm="kp")["per_step"] == 0
    assert cost(algorithm="wm")["per_step"] == 2 * 100 * W and cost(algorithm="wm")["adaptation"] == 0
    for name in ("usf", "brsf", "frsf"):
        c = cost(algorithm=name)
        assert c["channel"] == cost(algorithm="rbp")["channel"] and c["per_step"] == W


# ---------------------------------------------------------------- the command line, bundled digits

@pytest.mark.parametrize("alg", ["kp", "frsf"])
def test_family_trains_digits_from_the_cli(alg, tmp_path):
    p = subprocess.run([sys.executable, "-m", "rbp.cli", "train", "--dataset", "digits", "-a", alg,
                        "--epochs", "30", "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["algorithm"] == alg and summary["test_accuracy"] >= 0.9


# ---------------------------------------------------------------- BioTorch's benchmark networks

@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp", "wm", "usf", "brsf", "frsf"])
def test_resnet20_converts_and_trains_a_few_steps(alg):
    from rbp.models import resnet20
    from rbp.diagnostics import model_alignment
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    m = rbp.convert(resnet20(image_size=16, seed=0, width=4), alg, seed=1)
    ss = [s for s in m.modules() if isinstance(s, (FeedbackLinear, FeedbackConv2d))]
    assert len(ss) == 20 and sum(isinstance(s, FeedbackConv2d) for s in ss) == 19
    w0 = [s.weight.detach().clone() for s in ss]
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        assert all(torch.isfinite(s.weight.grad).all() for s in ss)
        opt.step()
        m.rbp_channel.after_step()
    assert all((s.weight.detach() - w).abs().max() > 0 for s, w in zip(ss, w0))
    fig = model_alignment(m, x, y)[0]
    assert all(math.isfinite(fig[f"signal_angle_{h}"]) for h in range(1, 20))
    if alg not in ("bp", "srbp"):
        assert all(math.isfinite(fig[f"feedback_angle_{h}"]) for h in range(1, 20))


def test_lenet_has_biotorchs_shapes_and_converts():
    from rbp.models import lenet
    m = lenet(seed=0)
    x = torch.zeros(2, 1, 28, 28)
    assert m(x).shape == (2, 10)
    shapes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert shapes == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 16, 5, 5), (84, 120), (10, 84)]
    c = rbp.convert(m, "frsf", seed=0)
    F.cross_entropy(c(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    ens = lenet(seed=0, ensemble=[0, 1])          # member 0 is the network alone
    torch.testing.assert_close(ens(x.unsqueeze(0).expand(2, -1, -1, -1, -1))[0], m(x))
