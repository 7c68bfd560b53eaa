"""The symmetries of the learning channel (paper 2): architectures, nonlinear channels, symmetric adaptation.

Gradient-level checks against hand computations in float64 (as tests/test_gradients.py), on the
tiny network 7-6-5-4-3, in the paper's units: E = T - O, I^h the postsynaptic signal of layer h.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import rbp
from rbp.diagnostics import Settling, alignment
from rbp.nn.fused import FusedNetwork

from helpers import batch, dtanh, forward, grads, net, output_error, sites, weight_grads
from helpers import assert_grads_equal as _close

DEEP = [7, 6, 5, 4, 3]      # three hidden layers


def _check(m, I, O, got=None, x=None, y=None):
    got = got if got is not None else grads(m, x, y)
    for h, g in enumerate(weight_grads(I, O)):
        torch.testing.assert_close(got[f"{2 * h}.weight"], g, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- architectures as data

@pytest.mark.parametrize("name,architecture", [
    ("bp", "bidirectional"), ("sbp", "bidirectional"), ("rbp", "conjoined"), ("arbp", "conjoined"),
    ("nrbp", "conjoined"), ("twin", "twin"), ("atwin", "twin"), ("srbp", "distinct"), ("asrbp", "distinct"),
    ("distinct", "distinct"), ("adistinct", "distinct"), ("top", None),
])
def test_every_algorithm_names_its_architecture(name, architecture):
    assert rbp.algorithm(name).architecture == architecture
    a = rbp.algorithm(name)
    assert rbp.algorithm(a.name, **a.options()) == a


def test_options_round_trip_and_describe():
    a = rbp.algorithm("distinct", backward_hidden=[8, 4], backward_nonlinearity="identity", feedback_scale=0.5,
                      init_scale=0.1)
    assert (a.backward_hidden, a.backward_nonlinearity) == ((8, 4), "linear")
    assert a.describe() == "distinct[linear backward units, backward 8-4, feedback x0.5, init x0.1]"
    assert rbp.algorithm(a.name, **a.options()) == a
    small = rbp.algorithm("arbp-small")
    assert (small.init_scale, small.feedback_scale, small.adaptive) == (0.2, 0.2, True)


@pytest.mark.parametrize("name,opts,words", [
    ("rbp", {"backward_hidden": [10]}, "distinct learning network"),
    ("srbp", {"backward_hidden": [0]}, "positive layer sizes"),
    ("rbp", {"backward_nonlinearity": "softmax"}, "tanh, relu"),
    ("top", {"backward_nonlinearity": "tanh"}, "no effect"),
    ("bp", {"feedback_scale": 0.1}, "random feedback"),
    ("rbp", {"init_scale": 0}, "positive"),
    ("distinct", {"feedback": "congruent"}, "mirror no forward matrix"),
    ("srbp", {"feedback": "per-synapse", "backward_nonlinearity": "tanh"}, "does not combine"),
])
def test_bad_symmetry_options(name, opts, words):
    with pytest.raises(rbp.ConfigError) as e:
        rbp.algorithm(name, **opts)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_distinct_network_deeper_than_the_forward_one_is_refused():
    with pytest.raises(rbp.ConfigError, match="at most 3 layers deep"):
        net(DEEP, "distinct", backward_hidden=(4, 4, 4, 4))


# ---------------------------------------------------------------- each architecture by hand

def test_twin_hand_computed():
    """T^L = E, T^h = C^{h+1} T^{h+1} down the twin network; I^h = f'(S^h) * T^h."""
    x, y = batch()
    m = net(DEEP, "twin")
    S, O = forward(m, x)
    C = [s.feedback for s in sites(m)]
    T = [None, None, None, output_error(S[3], y)]
    for h in (2, 1, 0):
        T[h] = T[h + 1] @ C[h + 1]
    _check(m, [dtanh(S[h]) * T[h] for h in range(3)] + [T[3]], O, x=x, y=y)


def test_twin_without_derivative_is_conjoined_without_derivative():
    """Without f' nothing distinguishes the twin neuron from the conjoined one."""
    x, y = batch()
    _close(grads(net(DEEP, "twin", derivative=False), x, y), grads(net(DEEP, "rbp", derivative=False), x, y))


def test_twin_differs_from_conjoined_with_derivative():
    x, y = batch()
    a, b = grads(net(DEEP, "twin"), x, y), grads(net(DEEP, "rbp"), x, y)
    assert not torch.allclose(a["0.weight"], b["0.weight"])
    torch.testing.assert_close(a["4.weight"], b["4.weight"])   # the top hidden layer reads E through C alike


@pytest.mark.parametrize("units", [None, "tanh"])
def test_distinct_hand_computed(units):
    """D^0 = E, D^k = g(V^k D^{k-1}); layer h receives g(C^h D^{min(L-h, m)}) (L = 4 weight layers, m = 2)."""
    x, y = batch()
    m = net(DEEP, "distinct", backward_hidden=(5, 2), backward_nonlinearity=units)
    g = torch.tanh if units else (lambda t: t)
    ss = sites(m)
    assert ss[3].backward_weight.shape == (3, 5) and ss[2].backward_weight.shape == (5, 2)
    assert ss[1].backward_weight is None        # declared by every site, held by the sites at L - k only
    S, O = forward(m, x)
    E = output_error(S[3], y)
    D1 = g(E @ ss[3].backward_weight)
    D2 = g(D1 @ ss[2].backward_weight)
    reads = {2: D1, 1: D2, 0: D2}          # forward hidden layer h+1 = input of site h+1
    I = [dtanh(S[h]) * g(reads[h] @ ss[h + 1].feedback) for h in range(3)] + [E]
    _check(m, I, O, x=x, y=y)


def test_distinct_without_hidden_layers_is_srbp():
    x, y = batch()
    _close(grads(net(DEEP, "distinct", backward_hidden=()), x, y), grads(net(DEEP, "srbp"), x, y))
    _close(grads(net(DEEP, "adistinct", backward_hidden=()), x, y), grads(net(DEEP, "asrbp"), x, y))


# ---------------------------------------------------------------- nonlinear learning channel

def test_conjoined_with_tanh_units_hand_computed():
    """R^h = f'(S^h) * tanh(C^{h+1} R^{h+1}): the backward unit applies tanh, then its own f'."""
    x, y = batch()
    m = net(DEEP, "rbp", backward_nonlinearity="tanh")
    S, O = forward(m, x)
    R = [None, None, None, output_error(S[3], y)]
    for h in (2, 1, 0):
        R[h] = dtanh(S[h]) * torch.tanh(R[h + 1] @ sites(m)[h + 1].feedback)
    _check(m, R, O, x=x, y=y)


def test_twin_with_tanh_units_without_derivative_hand_computed():
    x, y = batch()
    m = net(DEEP, "ntwin", derivative=False)
    assert m.rbp_channel.algorithm.backward_nonlinearity == "tanh"      # "same" = the forward units
    S, O = forward(m, x)
    T = [None, None, None, output_error(S[3], y)]
    for h in (2, 1, 0):
        T[h] = torch.tanh(T[h + 1] @ sites(m)[h + 1].feedback)
    _check(m, T, O, x=x, y=y)


@pytest.mark.parametrize("alg,opts", [("rbp", {}), ("twin", {}), ("srbp", {}), ("bp", {}), ("sbp", {}),
                                      ("distinct", {"backward_hidden": (4, 3)}), ("arbp", {}),
                                      ("rbp", {"derivative": False})])
def test_identity_units_equal_the_linear_channel(alg, opts):
    x, y = batch()
    _close(grads(net(DEEP, alg, backward_nonlinearity="linear", **opts), x, y), grads(net(DEEP, alg, **opts), x, y))


def test_tanh_units_approach_the_linear_channel_for_small_errors():
    """tanh(u) = u + O(u^3): with a tiny feedback scale the nonlinear channel is the linear one."""
    x, y = batch()
    lin = grads(net(DEEP, "twin", feedback_scale=1e-4), x, y)
    non = grads(net(DEEP, "ntwin", feedback_scale=1e-4), x, y)
    for k in ("0.weight", "2.weight"):
        assert (non[k] - lin[k]).norm() < 1e-6 * lin[k].norm()


def test_same_units_follow_the_forward_network():
    relu = rbp.convert(rbp.mlp(DEEP, "relu", seed=0), "nrbp", seed=1)
    assert relu.rbp_channel.algorithm.backward_nonlinearity == "relu"
    mixed = torch.nn.Sequential(torch.nn.Linear(7, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.ReLU(),
                                torch.nn.Linear(5, 3))
    with pytest.raises(rbp.ConfigError, match="ambiguous"):
        rbp.convert(mixed, "nrbp")


# ---------------------------------------------------------------- symmetric learning rules

def test_adaptive_twin_learns_by_the_forward_rule():
    """dC^{h+1} = rate * T^{h+1} (O^h)^T: the sending twin's signal times the receiving neuron's activity."""
    x, y = batch()
    m = net(DEEP, "atwin", adapt_rate=0.3)
    S, O = forward(m, x)
    C = [None] + [s.feedback.detach() for s in sites(m)[1:]]
    T = [None, None, None, output_error(S[3], y)]
    for h in (2, 1, 0):
        T[h] = T[h + 1] @ C[h + 1]
    got = grads(m, x, y)
    for h in (1, 2, 3):      # site h holds the twin weights from twin layer h to twin layer h-1
        want = -0.3 * (T[h].T @ O[h]) / x.shape[0]
        torch.testing.assert_close(got[f"{2 * h}.feedback"], want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rate", [1.0, 0.3])
def test_adaptive_twin_training_steps_move_the_twin_weights_as_the_rule_says(rate):
    """The training path (fused driver + the paper's SGD), checked step by step by hand: C^{h+1} moves by
    +lr * rate * T^{h+1} (O^h)^T / B, the forward rule's direction without f'; at the top (no f' there
    either) the twin matrix therefore moves exactly as rate x the forward one, step after step."""
    from rbp.optim import KerasSGD
    m = net(DEEP, "atwin", adapt_rate=rate)
    ss = sites(m)
    opt, lr = KerasSGD(m.parameters(), lr=0.2), 0.2
    W0, C0 = ss[3].weight.detach().clone(), ss[3].feedback.detach().clone()
    fused = FusedNetwork(m)
    for step in range(4):
        x, y = batch(seed=step)
        S, O = forward(m, x)
        C = [None] + [s.feedback.detach().clone() for s in ss[1:]]
        T = [None, None, None, output_error(S[3], y)]
        for h in (2, 1):
            T[h] = T[h + 1] @ C[h + 1]
        for p in m.parameters():
            p.grad = None
        fused.step_gradients(x, y)
        opt.step()
        for h in (1, 2, 3):
            want = C[h] + lr * rate * (T[h].T @ O[h]) / x.shape[0]
            torch.testing.assert_close(ss[h].feedback.detach(), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(ss[3].feedback.detach() - C0, rate * (ss[3].weight.detach() - W0),
                               atol=1e-12, rtol=0)


def test_adaptive_distinct_projections_learn_and_its_own_layers_stay_fixed():
    x, y = batch()
    m = net(DEEP, "adistinct", backward_hidden=(5,), adapt_rate=0.5)
    ss = sites(m)
    S, O = forward(m, x)
    D1 = output_error(S[3], y) @ ss[3].backward_weight
    got = grads(m, x, y)
    for h in (1, 2, 3):      # every hidden layer reads D^1 (m = 1)
        torch.testing.assert_close(got[f"{2 * h}.feedback"], -0.5 * (D1.T @ O[h]) / x.shape[0], atol=1e-12, rtol=0)
    assert "6.backward_weight" in dict(m.named_buffers())


def test_scales_multiply_the_initial_weights_of_both_channels():
    a, b = net(DEEP, "arbp"), net(DEEP, "arbp", init_scale=0.1, feedback_scale=0.01)
    for sa, sb in zip(sites(a), sites(b)):
        torch.testing.assert_close(sb.weight, 0.1 * sa.weight, atol=1e-15, rtol=0)
    for sa, sb in zip(sites(a)[1:], sites(b)[1:]):
        torch.testing.assert_close(sb.feedback, 0.01 * sa.feedback, atol=1e-15, rtol=0)
    d = net(DEEP, "distinct", backward_hidden=(4,), feedback_scale=0.5)
    d1 = net(DEEP, "distinct", backward_hidden=(4,))
    torch.testing.assert_close(sites(d)[3].backward_weight, 0.5 * sites(d1)[3].backward_weight)


def _angles(m):
    def angle(a, b):
        return math.degrees(math.acos((a * b).sum().item() / (a.norm() * b.norm()).item()))
    return [angle(s.feedback.detach(), s.weight.detach()) for s in sites(m)[1:]]


def _train(alg, scale, steps=540):
    """Minibatch SGD on the 8x8 digits, 64-32-32-10 tanh, the same rule in both channels (rate 1)."""
    from rbp.data import load
    ds = load("digits").flat()
    x, y = ds.x_train.double(), ds.y_train
    m = rbp.convert(rbp.mlp([64, 32, 32, 10], seed=0).double(), alg, seed=1, adapt_rate=1.0,
                    init_scale=scale, feedback_scale=scale)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(0)
    before = _angles(m)
    step = 0
    while step < steps:
        for idx in torch.randperm(len(x), generator=g).split(50):
            opt.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    acc = (m(ds.x_test.double()).argmax(1) == ds.y_test).double().mean().item()
    return before, _angles(m), acc


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster, and immune to busy-waiting on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("alg", ["arbp", "atwin"])
def test_symmetric_adaptation_from_small_weights_makes_the_channels_symmetric(alg, one_thread):
    """Paper 2: with small initial weights in both channels, C -> W^T (angle near 0) and learning works."""
    before, small, acc = _train(alg, 0.1)
    _, ordinary, _ = _train(alg, 1.0)
    assert all(b > 80 for b in before)                            # random matrices: about 90 degrees
    assert all(s < 30 for s in small) and small[-1] < 10, small   # essentially symmetric
    assert all(s < o for s, o in zip(small, ordinary)), (small, ordinary)
    assert acc > 0.8


# ---------------------------------------------------------------- drivers, diagnostics, state

NEW = [("twin", {}), ("atwin", {}), ("distinct", {}), ("distinct", {"backward_hidden": (5, 2)}),
       ("adistinct", {"backward_hidden": (4, 4)}), ("nrbp", {}), ("ntwin", {"derivative": False}),
       ("ndistinct", {"backward_hidden": (3,)}), ("atwin-small", {}), ("srbp", {"backward_nonlinearity": "relu"})]


@pytest.mark.parametrize("alg,opts", NEW)
def test_state_dict_round_trip_includes_the_backward_network(alg, opts):
    x, y = batch()
    m = net(DEEP, alg, **opts)
    other = net(DEEP, alg, **opts)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    for b in other.buffers():
        torch.nn.init.normal_(b)
    other.load_state_dict(m.state_dict())
    _close(grads(other, x, y), grads(m, x, y))


@pytest.mark.parametrize("alg,opts", [("atwin", {}), ("distinct", {"backward_hidden": (5, 2)}),
                                      ("ntwin", {})])
def test_ensemble_member_equals_the_single_network(alg, opts):
    from rbp.nn import FeedbackLinear
    x, y = batch()
    K = 3
    ens = rbp.convert(rbp.mlp(DEEP, seed=0, ensemble=K).double(), alg, seed=100, **opts)
    xe = x.unsqueeze(0).expand(K, *x.shape).contiguous()
    logits = ens(xe)
    loss = sum(F.cross_entropy(logits[k], y) for k in range(K))
    loss.backward()
    for k in range(K):
        single = rbp.convert(rbp.mlp(DEEP, seed=k).double(), alg, seed=100 + k, **opts)
        want = grads(single, x, y)
        es = [mod for mod in ens.modules() if isinstance(mod, FeedbackLinear)]
        for i, s in enumerate(es):
            torch.testing.assert_close(s.weight.grad[k], want[f"{2 * i}.weight"], atol=1e-10, rtol=0)


def test_alignment_reports_the_mirror_of_every_architecture():
    x, y = batch()
    for alg, opts in [("twin", {}), ("distinct", {"backward_hidden": (5, 2)}), ("distinct", {"backward_hidden": ()})]:
        m = net(DEEP, alg, **opts)
        a = alignment(FusedNetwork(m), x, y)[0]
        assert {f"feedback_angle_{h}" for h in (1, 2, 3)} <= set(a)
    # a distinct network's end-to-end matrix from E^L to layer h: V^1 V^2 C^h; W^T itself gives 0 degrees
    m = net(DEEP, "distinct", backward_hidden=(3, 3))
    ss = sites(m)
    with torch.no_grad():
        ss[3].backward_weight.copy_(torch.eye(3, dtype=torch.float64))
        ss[2].backward_weight.copy_(torch.eye(3, dtype=torch.float64))
        ss[1].feedback.copy_(ss[3].weight @ ss[2].weight @ ss[1].weight)
    assert alignment(FusedNetwork(m), x, y)[0]["feedback_angle_1"] < 1e-5


def test_settling_measures_the_relative_change_of_both_channels():
    x, y = batch()
    m = net(DEEP, "atwin")
    settle = Settling(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    W0 = sites(m)[0].weight.detach().clone()
    F.cross_entropy(m(x), y).backward()
    opt.step()
    c = settle()[0]
    assert set(c) == {f"weight_change_{i}" for i in (1, 2, 3, 4)} | {f"feedback_change_{h}" for h in (1, 2, 3)}
    W1 = sites(m)[0].weight.detach()
    assert math.isclose(c["weight_change_1"], ((W1 - W0).norm() / W1.norm()).item(), rel_tol=1e-9)
    assert settle()[0]["weight_change_1"] == 0.0      # nothing moved since the last call


def test_training_records_symmetry_and_settling(one_thread):
    from rbp.train import TrainSpec, train_group
    spec = TrainSpec(dataset="digits", algorithm=rbp.algorithm("atwin"), hidden=(16, 16), epochs=2)
    _, h = train_group(spec, [0])
    a = h[0][-1].alignment
    assert {"feedback_angle_2", "feedback_norm_ratio_1", "weight_change_3", "feedback_change_2"} <= set(a)


# ---------------------------------------------------------------- the report draws the settling columns

_SETTLE_EXP = """
name = "settle"
description = "a synthetic store with settling columns"
dataset = "digits"

[protocol]
epochs = 3
hidden = [8, 8]

[[config]]
id = "atwin"
algorithm = "atwin"

[[config]]
id = "bp"
algorithm = "bp"
"""


def _settle_store(path, with_settling):
    from rbp.experiments import Store, parse
    exp = parse(_SETTLE_EXP, "settle.toml")
    st = Store(path)
    st.bind(exp)
    for cid in ("atwin", "bp"):
        c = exp.config(cid)
        for seed in (0, 1):
            rows = []
            for e in (1, 2, 3):
                row = {"seed": seed, "epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.3 * e,
                       "test_loss": 1.0 / e, "test_accuracy": 0.3 * e, "seconds": 0.1, "ensemble": 1,
                       "diverged": False}
                if with_settling:
                    row.update({f"weight_change_{i}": 0.5 / (e * i) for i in (1, 2, 3)})
                    row["weight_change_3"] = math.nan if cid == "bp" and e == 3 else 0.1   # a diverged epoch
                    if cid == "atwin":
                        row.update({f"feedback_change_{h}": 0.2 / e for h in (1, 2)})
                rows.append(row)
            st.write(exp, c, seed, exp.spec(c), rows, ensemble=[0, 1], checksums={})
    return st


def test_report_draws_the_settling_of_both_channels(tmp_path):
    from rbp.report import write_report
    _settle_store(tmp_path / "with", True)
    out = write_report(tmp_path / "with")
    settle = [f for f in out["figures"] if f.endswith("-settling.png")]
    assert len(settle) == 1 and (tmp_path / "with" / "figures" / settle[0].rsplit("/", 1)[1]).stat().st_size > 10_000
    assert "-settling.png)" in (tmp_path / "with" / "report.md").read_text()
    _settle_store(tmp_path / "without", False)
    out = write_report(tmp_path / "without")
    assert not [f for f in out["figures"] if f.endswith("-settling.png")]
    assert "-settling.png" not in (tmp_path / "without" / "report.md").read_text()
