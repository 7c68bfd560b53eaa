"""Gradient-level checks of every algorithm against autograd and against hand computations."""

import pytest
import torch
import torch.nn.functional as F

import rbp
from rbp.channel.quantize import quantize
from rbp.nn.fused import FusedNetwork

from helpers import batch, dtanh, forward, grads, net, output_error, sites, weight_grads
from helpers import assert_grads_equal as _close

DEEP = [7, 6, 5, 4, 3]      # three hidden layers
SHALLOW = [7, 6, 3]         # one hidden layer


@pytest.mark.parametrize("activation", ["tanh", "relu", "logistic", "linear"])
def test_bp_equals_autograd(activation):
    x, y = batch()
    plain = rbp.mlp(DEEP, activation, seed=3).double()
    ref = grads(plain, x, y)
    conv = rbp.convert(plain, "bp")
    _close(grads(conv, x, y), ref)


def test_rbp_with_transposed_forward_weights_equals_bp():
    x, y = batch()
    m = net(DEEP, "rbp")
    for s in sites(m)[1:]:
        s.feedback.copy_(s.weight.detach())   # stored in W's orientation: B = W means C = W^T
    _close(grads(m, x, y), grads(net(DEEP, "bp"), x, y))


def test_sbp_equals_bp_with_one_hidden_layer():
    x, y = batch()
    _close(grads(net(SHALLOW, "sbp"), x, y), grads(net(SHALLOW, "bp"), x, y))


def test_sbp_differs_from_bp_when_deeper():
    x, y = batch()
    a, b = grads(net(DEEP, "sbp"), x, y), grads(net(DEEP, "bp"), x, y)
    assert not torch.allclose(a["0.weight"], b["0.weight"])


def test_srbp_equals_rbp_with_one_hidden_layer():
    x, y = batch()
    m_s, m_r = net(SHALLOW, "srbp"), net(SHALLOW, "rbp")
    torch.manual_seed(5)
    C = torch.randn_like(sites(m_r)[1].feedback)
    sites(m_r)[1].feedback.copy_(C)
    sites(m_s)[1].feedback.copy_(C)
    _close(grads(m_s, x, y), grads(m_r, x, y))


def test_rbp_hand_computed():
    x, y = batch()
    m = net(DEEP, "rbp")
    S, O = forward(m, x)
    R = [None] * 4
    R[3] = output_error(S[3], y)
    for h in (2, 1, 0):
        R[h] = dtanh(S[h]) * (R[h + 1] @ sites(m)[h + 1].feedback)
    got = grads(m, x, y)
    for h, g in enumerate(weight_grads(R, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


def test_srbp_hand_computed():
    x, y = batch()
    m = net(DEEP, "srbp")
    S, O = forward(m, x)
    E = output_error(S[3], y)
    I = [dtanh(S[h]) * (E @ sites(m)[h + 1].feedback) for h in range(3)] + [E]
    got = grads(m, x, y)
    for h, g in enumerate(weight_grads(I, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


def test_sbp_hand_computed():
    """I^h = f'(S^h) * (W^{h+1})^T ... (W^L)^T E^L: no upper derivatives."""
    x, y = batch()
    m = net(DEEP, "sbp")
    S, O = forward(m, x)
    E = output_error(S[3], y)
    W = [s.weight.detach() for s in sites(m)]
    I = [None, None, None, E]
    J = E
    for h in (2, 1, 0):
        J = J @ W[h + 1]
        I[h] = dtanh(S[h]) * J
    got = grads(m, x, y)
    for h, g in enumerate(weight_grads(I, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp"])
def test_no_derivative_hand_computed(alg):
    x, y = batch()
    m = net(DEEP, alg, derivative=False)
    S, O = forward(m, x)
    E = output_error(S[3], y)
    ss = sites(m)
    I = [None, None, None, E]
    for h in (2, 1, 0):
        if alg == "srbp":
            I[h] = E @ ss[h + 1].feedback
        else:
            B = ss[h + 1].weight.detach() if alg == "bp" else ss[h + 1].feedback
            I[h] = I[h + 1] @ B
    got = grads(m, x, y)
    for h, g in enumerate(weight_grads(I, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


VARIANTS = [
    ("bp", {}), ("sbp", {}), ("rbp", {}), ("srbp", {}), ("arbp", {}), ("asrbp", {}), ("top", {}),
    ("rbp", {"derivative": False}), ("srbp", {"feedback": "sparse-2"}), ("rbp", {"feedback": "ternary"}),
    ("rbp", {"quantize_error": 3}), ("srbp", {"dropout": 0.5}), ("srbp", {"update": "sign"}),
    ("rbp", {"feedback": "resampled"}), ("rbp", {"feedback": "sign-concordant"}),
    ("srbp", {"feedback": "congruent"}), ("rbp", {"feedback": "uniform"}),
    ("rbp", {"feedback": "nonzero-mean"}), ("srbp", {"feedback": "per-synapse"}),
    # paper 2: learning-channel architectures, nonlinear channels, scaled and adaptive channels
    ("twin", {}), ("atwin", {}), ("distinct", {}), ("distinct", {"backward_hidden": (5, 2)}),
    ("adistinct", {"backward_hidden": (4, 3)}), ("nrbp", {}), ("ntwin", {"derivative": False}),
    ("ndistinct", {"backward_hidden": (3,)}), ("sbp", {"backward_nonlinearity": "tanh"}),
    ("srbp", {"backward_nonlinearity": "relu", "dropout": 0.5}),
    ("twin", {"feedback": "sparse-2", "feedback_scale": 3.0, "quantize_error": 4}),
]


@pytest.mark.parametrize("alg,opts", VARIANTS)
def test_top_layer_follows_the_gradient(alg, opts):
    """Paper 1, Fact 1: in every algorithm the top layer learns exactly as in BP."""
    x, y = batch()
    got = grads(net(DEEP, alg, **opts), x, y)
    ref = grads(net(DEEP, "bp"), x, y)
    for key in ("6.weight", "6.bias"):
        torch.testing.assert_close(got[key], ref[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("alg,opts", VARIANTS + [("rbp", {"quantize_update": 3}),
                                                  ("srbp", {"quantize_update": 2, "quantize_update_mode": "flush+share"}),
                                                  ("srbp", {"update": "magnitude"}), ("arbp-small", {}),
                                                  ("atwin", {"init_scale": 0.5, "feedback_scale": 0.1})])
def test_fused_driver_equals_autograd_driver(alg, opts):
    x, y = batch()
    m = net(DEEP, alg, **opts)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    auto = grads(m, x, y)
    m.load_state_dict(state)   # resampled feedback changes in place: start both from the same state
    if opts.get("dropout") or "resampled" in str(opts) or "concordant" in str(opts):
        m2 = net(DEEP, alg, **opts)        # fresh noise streams, same seeds
        m2.load_state_dict(state)
        m = m2
    for p in m.parameters():
        p.grad = None
    FusedNetwork(m).step_gradients(x, y)
    fused = {n: (None if p.grad is None else p.grad.clone()) for n, p in m.named_parameters()}
    _close(fused, auto, tol=1e-12)


def test_top_only_leaves_hidden_layers_unchanged():
    x, y = batch()
    m = net(DEEP, "top")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    after = m.state_dict()
    for k in before:
        if k.startswith("6."):
            assert not torch.equal(before[k], after[k]), k
        else:
            assert torch.equal(before[k], after[k]), k


def test_quantized_error_hand_computed():
    """The quantized signal is what travels further down (paper 1, section 5.1)."""
    x, y = batch()
    bits, alpha = 3, 2.0 ** -3
    m = net(DEEP, "rbp", quantize_error=bits)
    S, O = forward(m, x)
    R = [None, None, None, output_error(S[3], y)]
    for h in (2, 1, 0):
        R[h] = dtanh(S[h]) * quantize(R[h + 1] @ sites(m)[h + 1].feedback, alpha, bits)
    got = grads(m, x, y)
    for h, g in enumerate(weight_grads(R, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["eq19", "flush", "after-lr", "sum", "share", "flush+after-lr", "flush+share",
                                  "levels", "flush+after-lr+levels"])
@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_quantized_update_hand_computed(mode, bits):
    """Each example's update I_n O_n^T is quantized (alpha 2^-6) before the minibatch reduction,
    in every reading of section 5.2 (channel.quantize.UPDATE_MODES), written out literally here."""
    x, y = batch()
    alpha, lr = 2.0 ** -6, 0.1
    words = mode.split("+")
    opts = {"quantize_update_lr": lr} if "after-lr" in words else {}
    m = net(DEEP, "srbp", quantize_update=bits, quantize_update_mode=mode, **opts)
    S, O = forward(m, x)
    E = output_error(S[3], y)
    I = [dtanh(S[h]) * (E @ sites(m)[h + 1].feedback) for h in range(3)] + [E]
    got = grads(m, x, y)
    B = x.shape[0]
    flush = "flush" in words
    # "levels": 2^(bits-1) magnitudes (one sign bit), else Eq. 19's clip with `bits` magnitudes
    lowest = -(2 ** (bits - 1) - 1) if "levels" in words else -(bits - 1)

    def step(u):   # the weight change the reading prescribes, from per-example updates u (B, ...)
        if "after-lr" in words:
            u = u * lr
        if "share" in words:
            u = u / B
        q = quantize(u, alpha, 1 - lowest, flush=flush)
        e = torch.round(torch.log2(u.abs() / alpha))
        nz = u != 0
        # written out: every nonzero value is a signed power of two alpha 2^k with lowest <= k <= 0
        k = torch.log2(q[q != 0].abs() / alpha)
        assert torch.equal(k, k.round()) and bool((k >= lowest).all()) and bool((k <= 0).all())
        if flush:   # a value whose exponent rounds below the lowest level is 0
            assert torch.equal(q == 0, (e < lowest) | ~nz)
        else:       # lifted, never zero
            assert torch.equal(q == 0, ~nz)
        total = q.sum(0) if ("sum" in words or "share" in words) else q.mean(0)
        return total if "after-lr" in words else lr * total

    for h in range(4):
        per_example = torch.stack([torch.outer(I[h][n], O[h][n]) for n in range(B)])
        # the gradient, times the learning rate, is minus the step
        torch.testing.assert_close(got[f"{2 * h}.weight"] * lr, -step(per_example), atol=1e-12, rtol=0)
        torch.testing.assert_close(got[f"{2 * h}.bias"] * lr, -step(I[h]), atol=1e-12, rtol=0)
    if flush and bits == 1:
        assert any((got[f"{2 * h}.weight"] == 0).any() for h in range(4))   # the flush did something


@pytest.mark.parametrize("mode,bits", [("flush", 1), ("flush", 3), ("flush", 5),
                                       ("levels", 8), ("levels", 9), ("levels", 12)])
def test_quantized_update_float32_kernel_and_fallback_agree(mode, bits, monkeypatch):
    """The compiled and the PyTorch per-example sums equal the literal one: the flushed sum (two
    clipped sums), and "levels" with 9 bits or more, whose lowest exponent, 1 - 2^(bits-1), is
    below float32's normal range (outside what the kernel builds from exponent bits)."""
    from rbp.nn import _qkernel
    x, y = batch(rows=40)
    m = rbp.convert(rbp.mlp(DEEP, "tanh", seed=0), "rbp", seed=1, quantize_update=bits,
                    quantize_update_mode=mode)
    xf = x.float()
    if mode == "levels":
        xf[:, 0] = 1e-44  # nonzero, so the first layer has per-example updates far below alpha 2^-126
    got = grads(m, xf, y)
    monkeypatch.setattr(_qkernel, "load", lambda: None)     # the PyTorch path
    torch_path = grads(m, xf, y)
    for k in got:
        assert torch.isfinite(got[k]).all()
        torch.testing.assert_close(got[k], torch_path[k], atol=1e-6, rtol=1e-5)
    # the top layer by hand, in float64
    S, O = forward(m.double(), xf.double())
    E = output_error(S[3], y)
    per_example = torch.stack([torch.outer(E[n], O[3][n]) for n in range(40)])
    magnitudes = 2 ** (bits - 1) if mode == "levels" else bits
    want = -quantize(per_example, 2.0 ** -6, magnitudes, flush=mode == "flush").mean(0)
    torch.testing.assert_close(got["6.weight"].double(), want, atol=1e-6, rtol=1e-5)


def test_quantized_update_mode_validation():
    with pytest.raises(rbp.ConfigError, match="after-lr.*quantize_update_lr"):
        rbp.algorithm("rbp", quantize_update=3, quantize_update_mode="after-lr")
    with pytest.raises(rbp.ConfigError, match="needs quantize_update"):
        rbp.algorithm("rbp", quantize_update_mode="flush")
    with pytest.raises(rbp.ConfigError, match="subset of"):
        rbp.algorithm("rbp", quantize_update=3, quantize_update_mode="round-down")
    with pytest.raises(rbp.ConfigError, match="drop 'sum'"):
        rbp.algorithm("rbp", quantize_update=3, quantize_update_mode="sum+share")
    a = rbp.algorithm("rbp", quantize_update=3, quantize_update_mode="sum+flush")
    assert a.quantize_update_mode == "flush+sum"            # canonical order
    assert rbp.algorithm(a.name, **a.options()) == a         # options() rebuilds it
    assert "flush+sum" in a.describe()


def test_sign_and_magnitude_only_updates():
    x, y = batch()
    full = grads(net(DEEP, "srbp"), x, y)
    sign = grads(net(DEEP, "srbp", update="sign"), x, y)
    mag = grads(net(DEEP, "srbp", update="magnitude"), x, y)
    for h in range(3):
        k = f"{2 * h}.weight"
        torch.testing.assert_close(sign[k], torch.sign(full[k]) * full[k].abs().mean())
        torch.testing.assert_close(mag[k], -full[k].abs())
    torch.testing.assert_close(sign["6.weight"], full["6.weight"])   # the top layer is untouched


def test_lc_dropout_drops_units_and_keeps_expected_signal():
    x, y = batch(rows=1)   # one example: a unit's bias signal is dropped or kept whole
    p = 0.5
    ref = net(DEEP, "srbp")
    want = grads(ref, x, y)["2.bias"]
    m = net(DEEP, "srbp", dropout=p)
    draws = torch.stack([grads(m, x, y)["2.bias"] for _ in range(3000)])
    kept = draws != 0
    torch.testing.assert_close(draws[kept], (want / (1 - p)).expand_as(draws)[kept])
    # each layer-2 unit's bias signal is either dropped (0) or scaled by 1/(1-p) ... on average unchanged
    torch.testing.assert_close(draws.mean(0), want, atol=0.05 * want.abs().max().item(), rtol=0)
    zero_fraction = (draws == 0).double().mean().item()
    assert abs(zero_fraction - p) < 0.03


def test_arbp_feedback_change_equals_transposed_forward_change():
    x, y = batch()
    m = net(DEEP, "arbp")
    ss = sites(m)
    W0 = [s.weight.detach().clone() for s in ss]
    C0 = [None] + [s.feedback.detach().clone() for s in ss[1:]]
    opt = torch.optim.SGD(m.parameters(), lr=0.3)
    F.cross_entropy(m(x), y).backward()
    opt.step()
    for h in range(1, len(ss)):
        dW = ss[h].weight.detach() - W0[h]
        dC = ss[h].feedback.detach() - C0[h]
        # C is stored in W's orientation, so "C^T changes like W" reads dC = rate * dW here.
        torch.testing.assert_close(dC, 0.1 * dW, atol=1e-12, rtol=0)
        assert dW.abs().max() > 0


def test_asrbp_feedback_learns_from_output_error_and_layer_activity():
    x, y = batch()
    m = net(DEEP, "asrbp", adapt_rate=0.25)
    S, O = forward(m, x)
    E = output_error(S[3], y)
    got = grads(m, x, y)
    for h in range(1, 4):   # site h holds the matrix that reaches layer h (its input O^h)
        want = -0.25 * (E.T @ O[h]) / x.shape[0]
        torch.testing.assert_close(got[f"{2 * h}.feedback"], want, atol=1e-12, rtol=0)


def test_resampled_feedback_changes_every_minibatch_and_sign_concordant_follows_w():
    x, y = batch()
    m = net(DEEP, "rbp", feedback="resampled")
    s = sites(m)[2]
    seen = []
    for _ in range(3):
        grads(m, x, y)
        seen.append(s.feedback.clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    m = net(DEEP, "rbp", feedback="sign-concordant")
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for s in sites(m)[1:]:
            assert torch.equal(torch.sign(s.feedback), torch.sign(s.weight.detach()))
        opt.step()


def test_per_synapse_feedback_reduces_to_srbp_when_synapses_share_their_neuron_vector():
    x, y = batch()
    per = net(DEEP, "srbp", feedback="per-synapse")
    srbp = net(DEEP, "srbp")
    ps, ss = sites(per), sites(srbp)
    assert ps[3].feedback is None and tuple(ps[0].feedback.shape) == (3, 6, 8)
    for h in range(3):   # per-neuron vector D^h (N_L x N_h), held by site h+1 in SRBP
        D = ss[h + 1].feedback
        ps[h].feedback.copy_(D.unsqueeze(-1).expand_as(ps[h].feedback))
    _close(grads(per, x, y), grads(srbp, x, y))


def test_per_synapse_hand_computed():
    x, y = batch()
    m = net(DEEP, "srbp", feedback="per-synapse")
    S, O = forward(m, x)
    E = output_error(S[3], y)
    got = grads(m, x, y)
    B = x.shape[0]
    for h in range(3):
        P = sites(m)[h].feedback
        fp = dtanh(S[h])
        want = -torch.einsum("nj,ni,kji,nk->ji", fp, O[h], P[..., :-1], E) / B
        want_b = -torch.einsum("nj,kj,nk->j", fp, P[..., -1], E) / B
        torch.testing.assert_close(got[f"{2 * h}.weight"], want, atol=1e-12, rtol=0)
        torch.testing.assert_close(got[f"{2 * h}.bias"], want_b, atol=1e-12, rtol=0)
