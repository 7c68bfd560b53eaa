"""rbp.convert as a pipeline over a registry of site types: structural by default, Hugging Face's Conv1D,
registered user layers, hidden weight layers, targets/exclude, tied weights, the report, a refusal that
leaves an in-place model untouched, mixed precision, torch.func and reentrant checkpointing."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import rbp
from rbp.nn.registry import SiteAdapter, register_site, unregister_site
from rbp.nn.layers import FeedbackLinear

FAMILY = ["bp", "rbp", "srbp", "kp", "usf", "frsf", "brsf", "arbp", "asrbp", "sbp"]


def _capture_input_grad(module, seen, key="g"):
    """Keep the gradient that arrives at ``module``'s input."""
    def hook(mod, args):
        args[0].register_hook(lambda g: seen.__setitem__(key, g))
    module.register_forward_pre_hook(hook)


def _capture_output_grad(module, seen, key="J"):
    """Keep the gradient that arrives at ``module``'s output."""
    def hook(mod, args, out):
        out.register_hook(lambda g: seen.__setitem__(key, g))
    module.register_forward_hook(hook)


def _grads(model, x, y, loss=F.cross_entropy):
    model.zero_grad()
    loss(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------ Hugging Face's Conv1D (transposed weight)

class Conv1D(nn.Module):
    """The layer of transformers.pytorch_utils, written out here so the test needs no transformers."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.3)
        nn.init.normal_(self.bias, std=0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


Conv1D.__module__ = "transformers.pytorch_utils"     # how rbp recognises it without importing transformers


def _pair(seed=0):
    """The same network twice: with HF Conv1D layers, and with nn.Linear holding the transposed weights."""
    torch.manual_seed(seed)
    hf = nn.Sequential(Conv1D(6, 5), nn.Tanh(), Conv1D(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    lin = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for a, b in ((hf[0], lin[0]), (hf[2], lin[2])):
            b.weight.copy_(a.weight.t())
            b.bias.copy_(a.bias)
        lin[4].load_state_dict(hf[4].state_dict())
    return hf, lin


@pytest.mark.parametrize("alg", FAMILY)
def test_hf_conv1d_is_a_linear_site_with_a_transposed_weight(alg):
    """Every algorithm on Conv1D gives the update it gives on the equivalent nn.Linear (transposed), with the
    same feedback drawn; bp equals autograd.  Parameter names and shapes stay Conv1D's."""
    hf, lin = _pair()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    a = rbp.convert(hf, alg, seed=3)
    b = rbp.convert(lin, alg, seed=3)
    assert type(a[0]).__name__ == "FeedbackHFConv1D" and a[0].weight.shape == (5, 6)
    assert set(hf.state_dict()) <= set(a.state_dict())
    if alg == "bp":
        ref, got = _grads(hf, x, y), _grads(a, x, y)
        for n in ref:
            assert torch.allclose(got[n], ref[n], atol=1e-12), n
    for _ in range(2):          # two steps: adaptive and sign-following feedback move in between
        ga, gb = _grads(a, x, y), _grads(b, x, y)
        for n in gb:
            ref = gb[n].t() if n.endswith("weight") and n[0] in "02" else gb[n]
            if n.endswith("feedback") and alg != "asrbp" and n[0] in "02":
                ref = gb[n].t()
            assert torch.allclose(ga[n], ref, atol=1e-12), (alg, n)
        with torch.no_grad():
            for p, q in zip(a.parameters(), b.parameters()):
                p.sub_(0.1 * p.grad)
                q.sub_(0.1 * q.grad)


# ------------------------------------------------------------------ user-registered sites

class MaskedLinear(nn.Module):
    """A user's layer: a linear map through a fixed connectivity mask (weight * mask)."""

    def __init__(self, n_in, n_out, density=0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.4)
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("mask", (torch.rand(n_out, n_in) < density).to(self.weight.dtype))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class FeedbackMaskedLinear(FeedbackLinear):
    """Its site: FeedbackLinear's algebra on the masked weight; the update of a missing synapse is zero."""

    def affine(self, x, weight, bias):
        return F.linear(x, weight * self.mask, bias)

    def grad_weight(self, g, x):
        return super().grad_weight(g, x) * self.mask

    def grad_input(self, g, matrix, x):       # the signal travels back along the existing synapses only
        return super().grad_input(g, matrix * self.mask, x)


class MaskedAdapter(SiteAdapter):
    name = "masked-linear"

    def build(self, module, info):
        site = FeedbackMaskedLinear(module.in_features if hasattr(module, "in_features") else module.weight.shape[1],
                                    module.weight.shape[0], dtype=module.weight.dtype)
        site.weight, site.bias = module.weight, module.bias
        site.register_buffer("mask", module.mask)
        return site

    def out_width(self, module):
        return module.weight.shape[0]


def test_a_user_registers_a_site_for_their_own_layer():
    torch.manual_seed(0)
    net = nn.Sequential(MaskedLinear(5, 8), nn.Tanh(), MaskedLinear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.warns(rbp.UnknownWeightWarning, match=r"0\.weight .*2\.weight"):   # unregistered: backprop inside
        m = rbp.convert(net, "rbp", seed=0, example_input=x[:1])
    assert sorted(m.rbp_channel.report.hidden) == ["0.weight", "2.weight"]
    adapter = register_site(MaskedLinear, MaskedAdapter())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", rbp.UnknownWeightWarning)
            bp = rbp.convert(net, "bp", seed=0, example_input=x[:1])
            m = rbp.convert(net, "rbp", seed=0)
        assert type(m[0]).__name__ == "FeedbackMaskedLinear" and set(net.state_dict()) <= set(m.state_dict())
        ref, got = _grads(net, x, y), _grads(bp, x, y)
        for n in ref:
            assert torch.allclose(got[n], ref[n], atol=1e-12), n
        g = _grads(m, x, y)
        assert torch.all(g["2.weight"][net[2].mask == 0] == 0)           # missing synapses do not learn
        assert torch.allclose(g["4.weight"], ref["4.weight"], atol=1e-12)  # the output layer is exact
        assert not torch.allclose(g["0.weight"], ref["0.weight"])
    finally:
        unregister_site(adapter)


def test_hidden_weight_layer_is_found_at_the_first_pass_without_an_example():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), MaskedLinear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    m = rbp.convert(net, "srbp", seed=0)
    assert m.rbp_channel.report.hidden is None and "first forward pass" in str(m.rbp_channel.report)
    x = torch.randn(4, 5)
    twin = copy.deepcopy(m)                   # a copy watches its own first pass
    with pytest.warns(rbp.UnknownWeightWarning):
        twin(x)
    assert twin.rbp_channel.report.hidden == {"2.weight": "linear"} and m.rbp_channel.report.hidden is None
    with torch.no_grad():
        m(x)                              # inference passes are not watched
    with pytest.warns(rbp.UnknownWeightWarning, match=r"2\.weight \(by linear\)"):
        F.cross_entropy(m(x), torch.tensor([0, 1, 2, 0])).backward()
    assert m.rbp_channel.report.hidden == {"2.weight": "linear"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)                              # once
    quiet = rbp.convert(net, "srbp", seed=0, exclude=["2"], example_input=x[:1])   # excluded: backprop intended
    assert quiet.rbp_channel.report.hidden == {} and ("2", "MaskedLinear") in quiet.rbp_channel.report.excluded


def test_structural_parameters_learn_from_the_signal():
    """A bare parameter (a class token, a layer scale) that no site holds is structural: autograd carries the
    channel's signal through it and its gradient is autograd's given that signal."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 6)
            self.gamma = nn.Parameter(torch.full((6,), 0.5))
            self.cls = nn.Parameter(torch.randn(1, 1, 6))
            self.out = nn.Linear(6, 3)

        def forward(self, x):                        # x (B, T, 4)
            h = torch.tanh(self.inp(x)) * self.gamma
            h = torch.cat([self.cls.expand(x.shape[0], 1, 6), h], 1)
            return self.out(h.mean(1))

    torch.manual_seed(0)
    net = Net().double()
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    for alg in ("rbp", "srbp", "kp"):
        m = rbp.convert(net, alg, seed=0)
        seen = {}
        _capture_input_grad(m.out, seen)
        F.cross_entropy(m(x), y).backward()
        # the signal delivered at the head's input, carried by autograd to gamma and cls
        h = torch.tanh(net.inp(x))
        gamma, cls = net.gamma.detach().requires_grad_(), net.cls.detach().requires_grad_()
        z = torch.cat([cls.expand(3, 1, 6), h.detach() * gamma], 1).mean(1)
        want = torch.autograd.grad(z, (gamma, cls), seen["g"])
        assert torch.allclose(m.gamma.grad, want[0], atol=1e-12) and torch.allclose(m.cls.grad, want[1], atol=1e-12)
    assert [n for n, _ in m.rbp_channel.report.parameters] == ["gamma", "cls"]


# ------------------------------------------------------------------ targets= / exclude=

def test_exclude_keeps_a_backprop_backbone_under_a_dfa_head():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.head(self.backbone(x))

    net = Net().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    for kw in (dict(exclude=["backbone"]), dict(targets=["head"]), dict(targets="head.*")):
        m = rbp.convert(net, "srbp", seed=0, **kw)
        assert all(type(mod) is nn.Linear for mod in m.backbone.modules() if isinstance(mod, nn.Linear))
        assert [n for n, _ in m.rbp_channel.report.excluded] == ["backbone.0", "backbone.2"]
        seen = {}
        _capture_input_grad(m.head, seen)
        F.cross_entropy(m(x), y).backward()
        want = torch.autograd.grad(net.backbone(x), list(net.backbone.parameters()), seen["g"])
        for p, w in zip(m.backbone.parameters(), want):        # backprop of the DFA signal at the head's input
            assert torch.allclose(p.grad, w, atol=1e-12)
    with pytest.raises(rbp.ConfigError, match="no module named like 'neck'"):
        rbp.convert(net, "srbp", exclude=["neck"])
    with pytest.raises(rbp.UnsupportedModelError, match="among the targets"):
        rbp.convert(net, "srbp", targets=["backbone.1"])


# ------------------------------------------------------------------ tied weights

class TiedLM(nn.Module):
    def __init__(self, V=11, d=6):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.mid = nn.Linear(d, d)
        self.head = nn.Linear(d, V, bias=False)
        self.head.weight = self.emb.weight            # as GPT-2 and T5 tie them

    def forward(self, t):
        return self.head(torch.tanh(self.mid(self.emb(t))))


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp", "usf"])
def test_tied_weights_sum_the_exact_output_gradient_and_the_channel_update(alg):
    torch.manual_seed(0)
    net = TiedLM().double()
    t = torch.randint(0, 11, (3, 4))
    y = torch.randint(0, 11, (3, 4))

    def loss(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    m = rbp.convert(net, alg, seed=1)
    assert m.head.weight is m.emb.weight
    assert m.rbp_channel.report.tied == [["emb.weight", "head.weight"]] and "tied: emb.weight = head.weight" in \
        str(m.rbp_channel.report)
    seen = {}
    _capture_output_grad(m.emb, seen)
    loss(m(t), y).backward()
    # the output use: autograd's exact gradient of the head's weight (its input held fixed)
    h = torch.tanh(net.mid(net.emb(t))).detach()
    W = net.head.weight.detach().requires_grad_()
    exact = torch.autograd.grad(loss(h @ W.t(), y), W)[0]
    # the input use: the channel's signal at the embedding's output, summed into the rows looked up
    channel = torch.zeros_like(exact).index_add_(0, t.reshape(-1), seen["J"].reshape(-1, 6))
    decay = m.rbp_channel.algorithm.weight_decay * net.emb.weight.detach()   # Kolen-Pollack's decay, once
    assert torch.allclose(m.emb.weight.grad, exact + channel + decay, atol=1e-12)


# ------------------------------------------------------------------ check everything, then swap

@pytest.mark.parametrize("case", ["sparse", "top-conv", "unsupported", "init-scale"])
def test_a_refusal_leaves_an_inplace_model_untouched(case):
    torch.manual_seed(0)
    if case == "top-conv":
        net, alg, kw = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.Flatten()), "srbp", \
            dict(example_input=torch.zeros(1, 1, 6, 6))
    elif case == "unsupported":
        net, alg, kw = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Bilinear(4, 4, 4)), "rbp", {}
    elif case == "init-scale":
        net, alg, kw = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "rbp", \
            dict(init_scale=0.2, feedback="sparse-9")
    else:
        net, alg, kw = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "rbp", dict(feedback="sparse-9")
    before = copy.deepcopy(net.state_dict())
    types = [type(mm) for mm in net.modules()]
    with pytest.raises(rbp.RBPError):
        rbp.convert(net, alg, inplace=True, **kw)
    assert [type(mm) for mm in net.modules()] == types and not hasattr(net, "rbp_channel")
    after = net.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_adaptive_skip_matrix_of_a_conv_layer_is_in_an_optimizer_built_right_after_convert():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3))
    m = rbp.convert(net, "asrbp", seed=0)               # no example_input: sized at the first pass
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(m(x), y).backward()
    C = m[2].feedback.detach().clone()
    opt.step()
    assert C.shape == (3, 2 * 4 * 4) and not torch.equal(m[2].feedback, C)      # the optimizer moved it
    fresh = rbp.convert(net, "asrbp", seed=0)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh[2].feedback, m[2].feedback)


# ------------------------------------------------------------------ the report and the output layers

def test_report_names_sites_feedback_shapes_and_output_layers():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3))
    m = rbp.convert(net, "rbp", seed=0)
    rep = m.rbp_channel.report
    rows = {r["name"]: r for r in rep.sites}
    assert rows["3"]["feedback"] == "3x8" and rows["3"]["weight"] == "3x8" and rows["0"]["feedback"].startswith("-")
    assert rep.structural == [("2", "LayerNorm")]
    text = str(rep)
    assert "2 sites" in text and "LayerNorm" in text and "\n" in text
    assert m.rbp_channel.output_names() == []
    F.cross_entropy(m(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
    assert m.rbp_channel.output_names() == ["3"]
    assert rep.as_dict()["sites"][1]["name"] == "3"


# ------------------------------------------------------------------ mixed precision, torch.func, checkpointing

def _mixed_models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    enc = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Flatten(),
                        nn.Linear(8 * 3, 5))
    return [("mlp", mlp, torch.randn(16, 8)), ("cnn", cnn, torch.randn(16, 1, 8, 8)),
            ("transformer", enc, torch.randn(16, 3, 8))]


def _autocast_grads(model, x, y, device, dtype):
    model.zero_grad()
    with torch.autocast(device, dtype=dtype):
        out = model(x)
    F.cross_entropy(out.float(), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gives_the_float32_update_within_the_dtype_tolerance(dtype, device):
    """Under autocast the channel computes in the weights' dtype: bp's update is autograd's under the same
    autocast, and every algorithm's update is its float32 update up to the error that the lower precision
    forward pass gives autograd itself."""
    y = torch.randint(0, 5, (16,), device=device)
    for name, net, x in _mixed_models():
        net, x = net.to(device), x.to(device)
        plain32 = _grads(net, x, y)
        plain = _autocast_grads(net, x, y, device, dtype)
        floor = max(_rel(plain[n], plain32[n]) for n in plain32)       # what the dtype costs autograd
        for alg in ("bp", "rbp", "srbp", "kp", "usf"):
            m = rbp.convert(net, alg, seed=0, example_input=x[:1])
            ref = _grads(m, x, y)
            got = _autocast_grads(m, x, y, device, dtype)
            for n, p in m.named_parameters():
                if n in ref:
                    assert p.grad.dtype == p.dtype
                    assert _rel(got[n], ref[n]) < 3 * floor + 1e-3, (name, alg, n, _rel(got[n], ref[n]), floor)
                    if alg == "bp":
                        assert _rel(got[n], plain[n]) < floor + 1e-3, (name, n)


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp", "usf"])
def test_torch_func_grad_equals_backward(alg):
    from torch.func import functional_call, grad
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.randint(0, 5, (12,))
    m = rbp.convert(net, alg, seed=0)
    ref = _grads(m, x, y)
    params = {n: p.detach() for n, p in m.named_parameters()}
    bufs = dict(m.named_buffers())

    def loss(p):
        return F.cross_entropy(functional_call(m, {**p, **bufs}, (x,)), y)

    got = grad(loss)(params)
    for n in ref:
        assert torch.allclose(got[n], ref[n], atol=1e-12), n


class _Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(6, 10), nn.Linear(10, 10), nn.Linear(10, 10), nn.Linear(10, 4)

    def forward(self, x, mode=None):
        h = torch.tanh(self.a(x))

        def seg(t):
            return torch.tanh(self.c(torch.tanh(self.b(t))))
        h = seg(h) if mode is None else checkpoint(seg, h, use_reentrant=mode == "reentrant")
        return self.d(h)


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp", "usf", "asrbp"])
def test_checkpointing_gives_the_same_gradients(alg):
    torch.manual_seed(0)
    m = rbp.convert(_Checkpointed().double(), alg, seed=0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    ref = _grads(m, x, y)
    for mode in ("reentrant", "non-reentrant"):
        m.zero_grad()
        F.cross_entropy(m(x, mode), y).backward()
        for n, p in m.named_parameters():
            assert torch.allclose(p.grad, ref[n], atol=1e-12), (mode, n)


def test_routes_that_hand_signals_by_position_refuse_reentrant_checkpointing():
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    for alg, kw in (("sbp", {}), ("distinct", {})):
        m = rbp.convert(_Checkpointed(), alg, seed=0, **kw)
        with pytest.raises(rbp.ConfigError, match="use_reentrant=False"):
            F.cross_entropy(m(x, "reentrant"), y).backward()


# ------------------------------------------------------------------ subclasses with a forward of their own

class ScaledEmbedding(nn.Embedding):       # as HF's GemmaTextScaledWordEmbedding, BartScaledWordEmbedding
    def forward(self, ids):
        return super().forward(ids) * 4.0


class Positions(nn.Embedding):             # as HF's OPTLearnedPositionalEmbedding: computes its own indices
    def forward(self, mask, past=0):
        return super().forward(torch.cumsum(mask, 1) - 1 + past)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.5


class _Subclassed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = ScaledEmbedding(10, 4), Positions(8, 4)
        self.mid, self.head = ScaledLinear(4, 6), nn.Linear(6, 3)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.ones_like(ids), past=0)
        return self.head(torch.tanh(self.mid(h)).mean(1))


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "kp"])
def test_subclasses_keep_their_own_forward(alg):
    torch.manual_seed(0)
    net = _Subclassed().double()
    ids, y = torch.randint(0, 10, (3, 5)), torch.tensor([0, 1, 2])
    m = rbp.convert(net, alg, seed=0)
    assert isinstance(m.tok, ScaledEmbedding) and isinstance(m.mid, ScaledLinear)
    assert torch.equal(m(ids), net(ids))                    # the same function
    assert set(net.state_dict()) <= set(m.state_dict())
    ref, got = _grads(net, ids, y), _grads(m, ids, y)
    lam = m.rbp_channel.algorithm.weight_decay             # Kolen-Pollack's decay on every weight
    for n, p in net.named_parameters():
        if alg == "bp" or n.startswith("head"):            # bp is autograd; the output layer is exact
            assert torch.allclose(got[n], ref[n] + lam * p.detach(), atol=1e-12), n
    if alg != "bp":
        assert not torch.allclose(got["mid.weight"], ref["mid.weight"])


def test_a_subclass_that_bypasses_its_base_forward_is_named():
    class Direct(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight) * 2.0
    m = rbp.convert(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), Direct(4, 2)), "rbp", seed=0)
    with pytest.warns(rbp.UnknownWeightWarning, match=r"2 \(Direct\) overrides forward"):
        m(torch.randn(2, 3)).sum().backward()


def test_a_site_output_may_be_modified_in_place():
    m = rbp.convert(nn.Sequential(nn.Linear(2, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)), "bp", seed=0)
    x = torch.randn(4, 5, 2, requires_grad=True)
    m(x).sum().backward()                                   # a (B, T, d) output is a fresh tensor


class _Windows(nn.Module):
    """Folds windows of tokens into the batch, as Swin's window attention does."""

    def __init__(self):
        super().__init__()
        self.embed, self.proj, self.head = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):                       # x (B, 16 tokens, 3) -> (B * 4 windows, 4, 8)
        B = x.shape[0]
        h = torch.tanh(self.embed(x)).reshape(B * 4, 4, 8)
        h = torch.tanh(self.proj(h)).reshape(B, 16, 8)
        return self.head(h.mean(1))


@pytest.mark.parametrize("alg", ["srbp", "asrbp"])
def test_skip_projection_reaches_windows_folded_into_the_batch(alg):
    """Every row of an example's windows receives that example's projection C E^L (as every position does)."""
    torch.manual_seed(0)
    m = rbp.convert(_Windows().double(), alg, seed=0)
    x, y = torch.randn(3, 16, 3, dtype=torch.float64), torch.tensor([1, 2, 0])
    seen = {}
    _capture_input_grad(m.proj, seen)
    F.cross_entropy(m(x), y).backward()
    E = torch.softmax(m(x), -1) - F.one_hot(y, 4)           # dLoss/dlogits * B
    want = (E / 3) @ m.proj.feedback.detach()                # (B, 8): one projection per example
    assert torch.allclose(seen["g"], want.repeat_interleave(4, 0).unsqueeze(1).expand(12, 4, 8), atol=1e-12)


class OwnLinear(nn.Linear):        # timm.layers.Linear: F.linear itself, on its own weight and bias
    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class OwnConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "usf"])
def test_a_subclass_calling_the_base_function_on_its_own_weight_is_a_site(alg):
    torch.manual_seed(0)
    net = nn.Sequential(OwnConv(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 8), nn.Tanh(),
                        OwnLinear(8, 3)).double()
    x, y = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", rbp.UnknownWeightWarning)
        m = rbp.convert(net, alg, seed=0, example_input=x[:1])
        got = _grads(m, x, y)
    ref = _grads(net, x, y)
    assert m.rbp_channel.output_names() == ["5"]            # the head is the output layer, served by the channel
    for n in ref:
        if alg == "bp" or n.startswith("5."):
            assert torch.allclose(got[n], ref[n], atol=1e-12), n
    if alg != "bp":
        assert not torch.allclose(got["0.weight"], ref["0.weight"])


@pytest.mark.parametrize("example", [True, False])
def test_adaptive_feedback_of_a_site_reading_a_computed_input_exists_at_convert(example):
    """targets= leaves a weight layer below the first site: that site's input is computed, so its adaptive
    feedback is drawn at convert time (an optimizer built right after holds it)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    kw = dict(example_input=torch.randn(1, 4)) if example else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = rbp.convert(net, "kp", seed=0, targets=["2", "4"], **kw)
        names = {n for n, _ in m.named_parameters()}
        assert {"2.feedback", "4.feedback"} <= names
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        before = m[2].feedback.detach().clone()
        F.cross_entropy(m(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
        opt.step()
    assert not torch.equal(m[2].feedback, before)


def test_a_subclass_calling_the_base_function_is_a_site_under_torch_compile():
    """torch.compile (dynamo traces the module's hooks) keeps the own-call interception: the head stays a site."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), OwnLinear(16, 5))
    x, y = torch.randn(4, 8), torch.randint(0, 5, (4,))
    m = rbp.convert(net, "rbp", seed=0)
    ref = _grads(m, x, y)
    compiled = torch.compile(m, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", rbp.UnknownWeightWarning)
        m.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-6), n
