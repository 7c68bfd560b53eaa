"""The algorithm registry, the quantizer, feedback distributions, conversion and model state."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rbp
from rbp.channel import feedback as fb
from rbp.channel.quantize import levels, quantize

from helpers import batch, grads, net, sites

DEEP = [7, 6, 5, 4, 3]


# ---------------------------------------------------------------- quantizer (Eq. 19)

@pytest.mark.parametrize("bits", [1, 3, 5, 10])
@pytest.mark.parametrize("alpha", [2.0 ** -3, 2.0 ** -6, 0.3])
def test_quantizer_levels_and_clipping(bits, alpha):
    exact = torch.tensor(levels(alpha, bits), dtype=torch.float64)
    assert len(exact) == bits
    torch.testing.assert_close(quantize(exact, alpha, bits), exact, rtol=0, atol=0)        # levels are fixed
    torch.testing.assert_close(quantize(-exact, alpha, bits), -exact, rtol=0, atol=0)      # odd
    big = torch.tensor([alpha * 1.5, alpha * 10, 1e9], dtype=torch.float64)
    assert torch.all(quantize(big, alpha, bits) == alpha)                                   # clipped at alpha
    small = torch.tensor([alpha * 2.0 ** -(bits + 3), 1e-30], dtype=torch.float64)
    assert torch.all(quantize(small, alpha, bits) == alpha * 2.0 ** -(bits - 1))           # lifted to the floor
    assert quantize(torch.zeros(3, dtype=torch.float64), alpha, bits).abs().sum() == 0   # zero stays zero


def test_quantizer_rounds_the_exponent():
    a = 2.0 ** -3
    x = torch.tensor([a * 2 ** -0.4, a * 2 ** -0.6, a * 2 ** -1.49, a * 2 ** -1.51], dtype=torch.float64)
    torch.testing.assert_close(quantize(x, a, 5), torch.tensor([a, a / 2, a / 2, a / 4], dtype=torch.float64))
    assert torch.all(quantize(torch.tensor([-0.7, 0.01, 3.0]), a, 1) == torch.tensor([-a, a, a]))


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(1, 16))
def test_quantizer_output_is_a_signed_level(x, bits):
    alpha = 2.0 ** -3
    q = quantize(torch.tensor([x], dtype=torch.float64), alpha, bits).item()
    if x == 0:
        assert q == 0
    else:
        assert math.copysign(1, q) == math.copysign(1, x)
        assert any(math.isclose(abs(q), v, rel_tol=1e-12) for v in levels(alpha, bits))
        if alpha * 2.0 ** -(bits - 1) <= abs(x) <= alpha:
            assert abs(math.log2(abs(q)) - math.log2(abs(x))) <= 0.5 + 1e-12


# ---------------------------------------------------------------- algorithms as data

def test_registry_and_descriptions():
    paper1 = ["bp", "sbp", "rbp", "srbp", "arbp", "asrbp", "top"]
    assert list(rbp.ALGORITHMS)[:7] == paper1          # paper 1's family first, paper 2's variants after
    assert set(rbp.DESCRIPTIONS) == set(rbp.ALGORITHMS)
    for name in rbp.ALGORITHMS:
        assert rbp.algorithm(name).name == name
    a = rbp.algorithm("srbp", feedback="sparse-8", derivative=False, dropout=0.2)
    assert (a.route, a.feedback.kind, a.feedback.sparsity, a.derivative, a.dropout) == ("skip", "sparse", 8, False, 0.2)
    assert a.describe() == "srbp[sparse-8, no f', lc-dropout 0.2]"
    assert rbp.algorithm(a.name, **a.options()) == a


@pytest.mark.parametrize("name,opts,words", [
    ("foo", {}, "unknown algorithm"),
    ("rbp", {"colour": 1}, "unknown option"),
    ("rbp", {"feedback": "gaussian"}, "unknown feedback"),
    ("rbp", {"quantize_error": 0}, "1..16"),
    ("rbp", {"quantize_update": 17}, "1..16"),
    ("rbp", {"quantize_error": 2.5}, "integer"),
    ("rbp", {"dropout": 1.0}, "[0, 1)"),
    ("rbp", {"dropout": -0.1}, "[0, 1)"),
    ("bp", {"feedback": "sparse-2"}, "random feedback"),
    ("top", {"derivative": False}, "no effect"),
    ("rbp", {"update": "both"}, "full, sign, magnitude"),
    ("srbp", {"feedback": "sign-concordant"}, "chained"),
    ("rbp", {"adapt_rate": 0.5}, "adaptive"),
    ("arbp", {"feedback": "resampled"}, "cannot adapt"),
    ("rbp", {"feedback": "per-synapse"}, "skipped route"),
    ("srbp", {"feedback": "per-synapse", "dropout": 0.1}, "does not combine"),
])
def test_bad_algorithm_options(name, opts, words):
    with pytest.raises(rbp.ConfigError, match=None) as e:
        rbp.algorithm(name, **opts)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_sparse_n_larger_than_fan_out_is_refused_at_conversion():
    with pytest.raises(rbp.ConfigError, match="fan-out"):
        net(DEEP, "srbp", feedback="sparse-7")      # layer 2 receives 6 units from the skip matrix
    net(DEEP, "srbp", feedback="sparse-4")


# ---------------------------------------------------------------- feedback distributions

def test_sparse_matrices_have_the_expected_number_of_nonzeros():
    sizes = [30, 400, 400, 10]
    for alg, n, value in [("rbp", 8, 1 / 8), ("srbp", 8, 1.0), ("rbp", 2, 1 / 2), ("srbp", 1, 1.0)]:
        m = rbp.convert(rbp.mlp(sizes, seed=0), alg, seed=1, feedback=f"sparse-{n}")
        for s in sites(m)[1:]:
            C = s.feedback
            senders, fan_out = C.shape
            p = n / fan_out
            nnz = (C != 0).sum().item()
            mean, sd = senders * fan_out * p, math.sqrt(senders * fan_out * p * (1 - p))
            assert abs(nnz - mean) < 5 * sd, (alg, n, nnz, mean)
            assert set(C.unique().tolist()) <= {0.0, value}


def test_sparse_extremes():
    m0 = net(DEEP, "srbp", feedback="sparse-0")
    assert all(torch.count_nonzero(s.feedback) == 0 for s in sites(m0)[1:])
    m = rbp.convert(rbp.mlp([5, 4, 4, 3], seed=0), "srbp", feedback="sparse-4", seed=0)
    assert torch.all(sites(m)[1].feedback == 1)          # n = fan-out: every neuron gets the same error


@pytest.mark.parametrize("kind", ["glorot-normal", "uniform", "nonzero-mean", "ternary"])
def test_distribution_moments(kind):
    shape = (300, 400)
    C = fb.sample(fb.parse(kind), shape, chained=True, generator=torch.Generator().manual_seed(0))
    std = fb.glorot_std(shape)
    assert abs(C.std().item() - std) < 0.03 * std
    want_mean = std if kind == "nonzero-mean" else 0.0
    assert abs(C.mean().item() - want_mean) < 0.02 * std
    if kind == "ternary":
        assert len(C.unique()) == 3


def test_congruent_feedback_has_the_sign_of_the_forward_weights():
    m = net(DEEP, "rbp", feedback="congruent")
    for s in sites(m)[1:]:
        assert torch.equal(torch.sign(s.feedback), torch.sign(s.weight.detach()))
    m = net(DEEP, "srbp", feedback="congruent")
    ss = sites(m)
    for i in range(1, 4):
        prod = ss[3].weight.detach()
        for s in reversed(ss[i:3]):
            prod = prod @ s.weight.detach()
        assert torch.equal(torch.sign(ss[i].feedback), torch.sign(prod))


def test_feedback_shapes_by_route():
    for alg in ("rbp", "arbp"):
        m = net(DEEP, alg)
        assert sites(m)[0].feedback is None
        assert [tuple(s.feedback.shape) for s in sites(m)[1:]] == [(5, 6), (4, 5), (3, 4)]
    m = net(DEEP, "srbp")
    assert [tuple(s.feedback.shape) for s in sites(m)[1:]] == [(3, 6), (3, 5), (3, 4)]
    for alg in ("bp", "sbp", "top"):
        assert all(s.feedback is None for s in sites(net(DEEP, alg)))


# ---------------------------------------------------------------- conversion and state

def test_convert_copies_unless_inplace_and_keeps_state_dict_keys():
    base = rbp.mlp(DEEP, seed=0)
    m = rbp.convert(base, "rbp", seed=0)
    assert all(isinstance(x, nn.Linear) for x in base if not isinstance(x, nn.Tanh))
    assert set(base.state_dict()) <= set(m.state_dict())
    assert {k for k in m.state_dict() if "feedback" in k} == {"2.feedback", "4.feedback", "6.feedback"}
    opt = torch.optim.SGD(base.parameters(), lr=0.1)
    same = rbp.convert(base, "srbp", inplace=True)
    assert same is base and same[0].weight is opt.param_groups[0]["params"][0]


@pytest.mark.parametrize("alg", ["arbp", "asrbp", "rbp", "srbp"])
def test_state_dict_round_trip_includes_feedback(alg):
    x, y = batch()
    m = net(DEEP, alg)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    other = net(DEEP, alg, seed=7)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k
    ga, gb = grads(m, x, y), grads(other, x, y)
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k
    if alg.startswith("a"):
        assert any("feedback" in n for n, _ in m.named_parameters())


@pytest.mark.parametrize("layer", [nn.Conv3d(4, 4, 1), nn.LSTM(4, 4, bidirectional=True), nn.EmbeddingBag(5, 4),
                                   nn.Bilinear(4, 4, 4), nn.Conv1d(4, 4, 1, padding_mode="circular")])
def test_unsupported_layers_are_named(layer):
    model = nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2))
    with pytest.raises(rbp.UnsupportedModelError) as e:
        rbp.convert(model, "rbp")
    assert type(layer).__name__ in str(e.value) and "1 (" in str(e.value)


def test_custom_module_with_nested_submodules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.body(x))

    x, y = batch()
    plain = Net().double()
    ref = grads(plain, x, y)
    _close = torch.testing.assert_close
    got = grads(rbp.convert(plain, "bp"), x, y)
    for k in ref:
        _close(got[k], ref[k], atol=1e-12, rtol=0)
    m = rbp.convert(plain, "srbp", seed=0)
    assert tuple(m.body[2].feedback.shape) == (3, 6)


def test_a_second_conversion_is_refused():
    m = net(DEEP, "rbp")
    with pytest.raises(rbp.ConfigError, match="already converted"):
        rbp.convert(m, "srbp")


# ---------------------------------------------------------------- ensembles

@pytest.mark.parametrize("alg,opts", [("bp", {}), ("rbp", {}), ("srbp", {"feedback": "sparse-2"}),
                                      ("asrbp", {}), ("rbp", {"dropout": 0.3}), ("sbp", {}),
                                      ("rbp", {"quantize_update": 4, "quantize_error": 3})])
def test_ensemble_member_equals_the_single_network(alg, opts):
    seeds = [4, 9, 11]
    x, y = batch(rows=6)
    ens = rbp.convert(rbp.mlp(DEEP, seed=None, ensemble=seeds).double(), alg, seed=seeds, **opts)
    xs = x.unsqueeze(0).expand(3, -1, -1).contiguous()
    ys = y.unsqueeze(0).expand(3, -1)
    out = ens(xs)
    loss = F.cross_entropy(out.reshape(-1, 3), ys.reshape(-1), reduction="sum") / x.shape[0]
    loss.backward()
    for k, s in enumerate(seeds):
        single = rbp.convert(rbp.mlp(DEEP, seed=s).double(), alg, seed=s, **opts)
        g = grads(single, x, y)
        for name, p in ens.named_parameters():
            torch.testing.assert_close(p.grad[k], g[name], atol=1e-12, rtol=0, msg=f"{alg} {name} member {k}")
