"""Conv1d, grouped and depthwise Conv2d, Embedding, LayerNorm, RMSNorm and GroupNorm in the learning channel.

Every new site or structural layer is checked against torch.autograd on tiny float64 models
(issue 14, section 7): bp equals autograd; rbp with feedback set to the forward weights equals
bp; srbp with a single hidden site equals rbp when its skip matrix is rbp's matrix; the output
layer's gradient is exact under every algorithm of the registry, each of which also takes a
training step; state_dict round trips; ensembles (member k equals the network alone with seed k)
or their refusal; CUDA (skipped without a GPU); and a short training run on digits whose loss falls.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.channel.algorithm import ALGORITHMS
from rbp.channel.quantize import UPDATE_ALPHA, quantize
from rbp.nn import FeedbackLinear
from rbp.nn.conv import EnsembleFlatten, EnsembleFold, FeedbackConv1d, FeedbackConv2d, FeedbackConvNd, \
    StackedConv1d, StackedConv2d
from rbp.nn.embedding import FeedbackEmbedding
from rbp.nn.layers import StackedLinear

from helpers import assert_grads_equal as _close

SITES = (FeedbackLinear, FeedbackConvNd, FeedbackEmbedding)
VOCAB, SEQ = 11, 7


class MeanPool(nn.Module):
    """Mean over the token dimension: (B, T, D) -> (B, D) (a parameter-free module of the user's)."""

    def forward(self, x):
        return x.mean(-2)


def _sites(model):
    return [m for m in model.modules() if isinstance(m, SITES)]


def _stack(K, mod):
    """The ensemble form of a weight layer (plain autograd), or ``mod`` itself for the others."""
    if K is None:
        return mod
    if isinstance(mod, nn.Linear):
        return StackedLinear(K, mod.in_features, mod.out_features)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        cls = StackedConv1d if isinstance(mod, nn.Conv1d) else StackedConv2d
        return cls(K, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                   groups=mod.groups)
    if isinstance(mod, nn.GroupNorm):   # each member's groups side by side in the folded channels
        return nn.GroupNorm(K * mod.num_groups, K * mod.num_channels)
    if isinstance(mod, nn.Flatten):
        return EnsembleFlatten(K)
    return mod


def model(kind, two=False, K=None, seed=0):
    """The test networks; ``two``: one hidden site only (for srbp = rbp); ``K``: an ensemble of K."""
    torch.manual_seed(seed)
    if kind == "conv1d":          # input (B, 2, 8)
        layers = [nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.MaxPool1d(2)]
        layers += [nn.Flatten(), nn.Linear(16, 3)] if two else \
            [nn.Conv1d(4, 4, 3, padding=2, stride=2, dilation=2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)]
    elif kind == "grouped":       # input (B, 2, 8, 8)
        layers = [nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.Tanh(), nn.AvgPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(64, 3)] if two else \
            [nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 3)]
    elif kind == "separable":     # depthwise 3x3 then pointwise 1x1
        layers = [nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1), nn.Tanh(), nn.Flatten(),
                   nn.Linear(96, 3)]
        if two:                   # the depthwise conv as the one hidden site
            layers = [nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(32, 3)]
    elif kind == "embedding":     # input (B, T) token ids, 0 = padding
        layers = [nn.Embedding(VOCAB, 6, padding_idx=0), MeanPool()]
        layers += [nn.Linear(6, 3)] if two else [nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)]
    elif kind in ("layernorm", "rmsnorm"):
        norm = nn.LayerNorm(6) if kind == "layernorm" else nn.RMSNorm(6)
        layers = [nn.Linear(7, 6), norm, nn.Tanh()]
        layers += [nn.Linear(6, 3)] if two else [nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)]
    elif kind == "groupnorm":
        layers = [nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(64, 3)] if two else \
            [nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)]
    else:
        raise ValueError(kind)
    for m in layers:              # norms start away from (1, 0), so their parameters matter in the checks
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.3, 0.3)
    if K is not None:
        layers = ([EnsembleFold(K)] if kind not in ("layernorm", "rmsnorm", "embedding") else []) + \
            [_stack(K, m) for m in layers]
    return nn.Sequential(*layers).double()


KINDS = ["conv1d", "grouped", "separable", "embedding", "layernorm", "rmsnorm", "groupnorm"]
CONV_KINDS = ["conv1d", "grouped", "separable", "groupnorm"]


def batch(kind, rows=6, seed=0, K=None):
    g = torch.Generator().manual_seed(seed)
    lead = (K,) if K else ()
    if kind == "embedding":
        x = torch.randint(0, VOCAB, (*lead, rows, SEQ), generator=g)
        x[..., :2, -2:] = 0                        # some padding
    else:
        shape = {"conv1d": (2, 8), "layernorm": (7,), "rmsnorm": (7,)}.get(kind, (2, 8, 8))
        x = torch.randn(*lead, rows, *shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (*lead, rows), generator=g)


def example(kind):
    return batch(kind, rows=1)[0]


def convert(kind, alg, two=False, seed=0, **opts):
    return rbp.convert(model(kind, two), alg, seed=seed + 100, example_input=example(kind), **opts)


def loss_of(out, y):
    if out.dim() == 3:    # an ensemble: each member's batch-mean loss, summed
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum") / y.shape[1]
    return F.cross_entropy(out, y)


def grads(m, x, y):
    for p in m.parameters():
        p.grad = None
    loss_of(m(x), y).backward()
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in m.named_parameters()}


def autograd_grads(m, x, y):
    """The same converted model differentiated by plain autograd (its sites' channels detached)."""
    sites = _sites(m)
    channels = [s.channel for s in sites]
    for s in sites:
        s.channel = None
    try:
        return grads(m, x, y)
    finally:
        for s, c in zip(sites, channels):
            s.channel = c


def _top_keys(m):
    names = {id(mod): n for n, mod in m.named_modules()}
    top = names[id(_sites(m)[-1])]
    return [f"{top}.weight", f"{top}.bias"]


# ---------------------------------------------------------------- the gradient identities

@pytest.mark.parametrize("kind", KINDS)
def test_bp_equals_autograd(kind):
    x, y = batch(kind)
    plain = model(kind)
    ref = grads(plain, x, y)
    got = grads(rbp.convert(plain, "bp"), x, y)
    _close(got, ref)
    assert all(v is not None and v.abs().sum() > 0 for v in got.values())   # norms' parameters learn too


@pytest.mark.parametrize("kind", KINDS)
def test_rbp_with_forward_weights_as_feedback_equals_bp(kind):
    x, y = batch(kind)
    m = convert(kind, "rbp")
    sites = _sites(m)
    assert sites[0].feedback is None
    for s in sites[1:]:
        if isinstance(s, FeedbackEmbedding):
            assert s.feedback is None
            continue
        assert s.feedback.shape == s.weight.shape      # a grouped conv's feedback kernel: (O, C/groups, k...)
        s.feedback.copy_(s.weight.detach())
    _close(grads(m, x, y), grads(convert(kind, "bp"), x, y))


@pytest.mark.parametrize("kind", KINDS)
def test_srbp_with_one_hidden_site_equals_rbp(kind):
    """Two sites: the skip matrix C (N_L, in) set to rbp's feedback B (W's shape, the same here) gives rbp."""
    x, y = batch(kind)
    r, s = convert(kind, "rbp", two=True), convert(kind, "srbp", two=True)
    assert len(_sites(r)) == 2
    top_r, top_s = _sites(r)[-1], _sites(s)[-1]
    assert top_s.feedback.shape == top_r.feedback.shape
    top_s.feedback.copy_(top_r.feedback)
    a, b = grads(r, x, y), grads(s, x, y)
    _close(a, b)
    first = next(iter(a))
    assert not torch.allclose(a[first], grads(convert(kind, "bp", two=True), x, y)[first])   # and it is not bp


@pytest.mark.parametrize("kind", KINDS)
def test_every_algorithm_trains_and_the_output_layer_follows_the_gradient(kind):
    """Paper 1, Fact 1: the top layer's update is the gradient under every algorithm; each algorithm takes a step."""
    x, y = batch(kind)
    for name in ALGORITHMS:
        if ALGORITHMS[name].route == "product" and kind in ("layernorm", "rmsnorm", "groupnorm"):
            with pytest.raises(rbp.ConfigError, match="no forward matrix to transpose"):
                convert(kind, name)
            continue
        m = convert(kind, name)
        got, ref = grads(m, x, y), autograd_grads(m, x, y)
        decay = m.rbp_channel.algorithm.weight_decay      # kp adds lambda * W to every weight's gradient
        params = dict(m.named_parameters())
        for key in _top_keys(m):
            torch.testing.assert_close(got[key], ref[key] + decay * params[key].detach(), atol=1e-12, rtol=0,
                                       msg=f"{name} {key}")
        first = next(iter(got))
        if name == "top":
            assert got[first] is None
        else:
            assert torch.isfinite(got[first]).all() and got[first].abs().sum() > 0, name
        before = {k: v.detach().clone() for k, v in m.state_dict().items()}
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        loss_of(m(x), y).backward()
        opt.step()
        m.rbp_channel.after_step()
        after = m.state_dict()
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
        assert not torch.equal(after[_top_keys(m)[0]], before[_top_keys(m)[0]]), name
        if name == "wm":      # the mirror phase taught the feedback
            fk = [k for k in after if k.endswith("feedback")]
            assert fk and not torch.equal(after[fk[0]], before[fk[0]])


# ---------------------------------------------------------------- options with a per-layer meaning

@pytest.mark.parametrize("kind", ["conv1d", "grouped", "separable", "embedding"])
@pytest.mark.parametrize("opts", [{"quantize_update": 3}, {"quantize_update": 3, "quantize_update_mode": "flush"},
                                  {"update": "sign"}, {"update": "magnitude"}, {"quantize_error": 3},
                                  {"dropout": 0.5}, {"derivative": False}])
def test_update_and_signal_operators_reach_the_new_sites(kind, opts):
    x, y = batch(kind)
    got = grads(convert(kind, "rbp", **opts), x, y)
    first = next(iter(got))
    assert torch.isfinite(got[first]).all() and got[first].abs().sum() > 0


def _hand_quantized(site, g, x, bits=3, alpha=UPDATE_ALPHA):
    """Each example's kernel update (unfold patches, per group) quantized, then the mean -- the linear-site reading."""
    B = g.shape[0]
    W = site.weight
    G = site.groups
    if site.dim == 1:
        x, g = x.unsqueeze(-2), g.unsqueeze(-2)
        k, pad, st, dl = (1, *site.kernel_size), (0, *site.padding), (1, *site.stride), (1, *site.dilation)
    else:
        k, pad, st, dl = site.kernel_size, site.padding, site.stride, site.dilation
    total = torch.zeros_like(W)
    for n in range(B):
        cols = F.unfold(x[n:n + 1], k, dl, pad, st)[0]                  # (C*k, P)
        gn = g[n].reshape(W.shape[0], -1) * B                           # (O, P), the paper's units
        per_group = []
        for j in range(G):
            og, cg = W.shape[0] // G, cols.shape[0] // G
            per_group.append(gn[j * og:(j + 1) * og] @ cols[j * cg:(j + 1) * cg].T)
        total += quantize(torch.cat(per_group).reshape(W.shape), alpha, bits)
    return total / B


@pytest.mark.parametrize("kind", ["conv1d", "grouped", "separable"])
def test_quantized_update_of_grouped_and_1d_kernels_by_hand(kind):
    """Eq. 19 per example and synapse on the grouped / 1-D algebra, against unfold by hand for every conv site."""
    x, y = batch(kind)
    m = convert(kind, "rbp", quantize_update=3)
    plain = convert(kind, "rbp")
    plain.load_state_dict(m.state_dict())
    seen = {}
    def keep(mod, inputs, output):
        seen[mod] = inputs[0].detach()
        output.register_hook(lambda g: seen.__setitem__((mod, "g"), g.detach()))

    for s in _sites(plain):
        if isinstance(s, FeedbackConvNd):
            s.register_forward_hook(keep)
    grads(plain, x, y)
    got = grads(m, x, y)
    names = {mod: n for n, mod in plain.named_modules()}
    for s in _sites(plain):
        if isinstance(s, FeedbackConvNd):
            want = _hand_quantized(s, seen[(s, "g")], seen[s])
            torch.testing.assert_close(got[f"{names[s]}.weight"], want, atol=1e-12, rtol=0)


def test_embedding_update_by_hand():
    """Row v gets the sum of the signals at the positions that looked it up; the padding row gets nothing."""
    x, y = batch("embedding")
    m = convert("embedding", "rbp")
    out = {}
    def keep(mod, inputs, output):
        output.register_hook(lambda g: out.__setitem__("g", g))

    m[0].register_forward_hook(keep)
    got = grads(m, x, y)["0.weight"]
    g = out["g"]
    want = torch.zeros(VOCAB, 6, dtype=torch.float64)
    for n in range(x.shape[0]):
        for t in range(SEQ):
            want[x[n, t]] += g[n, t]
    want[0] = 0
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    assert (x == 0).any() and got[0].abs().sum() == 0
    # the quantized update: each sequence's row update (summed over its positions) quantized, then the mean
    q = convert("embedding", "rbp", quantize_update=2)
    q.load_state_dict(m.state_dict())
    gq = grads(q, x, y)["0.weight"]
    B = x.shape[0]
    wq = torch.zeros_like(want)
    for n in range(B):
        per = torch.zeros_like(want)
        for t in range(SEQ):
            per[x[n, t]] += g[n, t] * B
        wq += quantize(per, UPDATE_ALPHA, 2)
    wq[0] = 0
    torch.testing.assert_close(gq, wq / B, atol=1e-14, rtol=0)


def test_embedding_scale_grad_by_freq_and_every_algorithm_gives_the_same_rule():
    x, y = batch("embedding")
    plain = model("embedding")
    plain[0].scale_grad_by_freq = True
    _close(grads(rbp.convert(plain, "bp"), x, y), grads(plain, x, y))
    # with one layer above it, the embedding's update depends only on the signal at its output:
    # rbp, srbp and arbp with the same matrix give the same update
    ms = [convert("embedding", a, two=True) for a in ("rbp", "srbp", "arbp")]
    for m in ms[1:]:
        _sites(m)[-1].feedback.data.copy_(_sites(ms[0])[-1].feedback)
    gs = [grads(m, x, y)["0.weight"] for m in ms]
    for g in gs[1:]:
        torch.testing.assert_close(g, gs[0], atol=1e-14, rtol=0)


# ---------------------------------------------------------------- state_dict

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alg", ["bp", "arbp", "srbp"])
def test_state_dict_keys_and_round_trips(kind, alg):
    x, y = batch(kind)
    plain = model(kind)
    orig = {k: v.clone() for k, v in plain.state_dict().items()}
    m = rbp.convert(plain, alg, seed=1, example_input=example(kind))
    sd = m.state_dict()
    extra = set(sd) - set(orig)
    assert set(orig) <= set(sd) and all(k.endswith("feedback") for k in extra)
    assert bool(extra) == (alg != "bp")
    if alg == "arbp":
        assert all(k in dict(m.named_parameters()) for k in extra)   # adaptive feedback is a parameter
    # saved before converting, loaded after (feedback keys missing), and back
    other = rbp.convert(model(kind, seed=7), alg, seed=1, example_input=example(kind))
    res = other.load_state_dict(orig, strict=False)
    assert set(res.missing_keys) == extra and not res.unexpected_keys
    for k, v in orig.items():
        assert torch.equal(other.state_dict()[k], v), k
    back = model(kind, seed=9)
    res = back.load_state_dict(sd, strict=False)
    assert set(res.unexpected_keys) == extra and not res.missing_keys
    _close(grads(back, x, y), grads(plain, x, y))
    # a converted model's whole state reproduces its gradients
    again = rbp.convert(model(kind, seed=5), alg, seed=3, example_input=example(kind))
    again.load_state_dict(sd)
    _close(grads(again, x, y), grads(m, x, y))


# ---------------------------------------------------------------- ensembles

def _ensemble_of(kind, seeds, alg, **opts):
    K = len(seeds)
    ens = model(kind, K=K)
    singles = [model(kind, seed=s) for s in seeds]
    with torch.no_grad():
        for (name, p), *member in zip(ens.named_parameters(), *[s.named_parameters() for s in singles]):
            for k, (_, q) in enumerate(member):
                p.view(K, -1)[k].copy_(q.reshape(-1))
    lead = (K, 1) if kind != "embedding" else (K, 1)
    ex = torch.zeros(*lead, *example(kind).shape[1:], dtype=torch.float64)
    conv = rbp.convert(ens, alg, seed=[100 + s for s in seeds], example_input=ex, **opts)
    alone = [rbp.convert(s, alg, seed=100 + sd, example_input=example(kind), **opts) for s, sd in zip(singles, seeds)]
    return conv, alone


@pytest.mark.parametrize("kind", CONV_KINDS)
@pytest.mark.parametrize("alg,opts", [("bp", {}), ("rbp", {}), ("srbp", {}), ("arbp", {}), ("sbp", {}),
                                      ("rbp", {"quantize_update": 3}), ("rbp", {"dropout": 0.3})])
def test_ensemble_member_equals_the_network_alone(kind, alg, opts):
    if kind == "groupnorm" and alg == "sbp":
        pytest.skip("sbp refuses GroupNorm")
    K = 2
    x, y = batch(kind, K=K)
    ens, alone = _ensemble_of(kind, [0, 1], alg, **opts)
    got = grads(ens, x, y)
    for k in range(K):
        want = grads(alone[k], x[k], y[k])
        for (name, g), (_, w) in zip(got.items(), want.items()):
            torch.testing.assert_close(g.view(K, -1)[k], w.reshape(-1), atol=1e-12, rtol=1e-9, msg=f"{k} {name}")


def test_ensemble_refusals():
    with pytest.raises(rbp.UnsupportedModelError, match="LayerNorm .*shared by the 2 members"):
        rbp.convert(nn.Sequential(StackedLinear(2, 7, 6), nn.LayerNorm(6), nn.Tanh(), StackedLinear(2, 6, 3)), "rbp")
    with pytest.raises(rbp.UnsupportedModelError, match="RMSNorm"):
        rbp.convert(nn.Sequential(StackedLinear(2, 7, 6), nn.RMSNorm(6), StackedLinear(2, 6, 3)), "rbp")
    with pytest.raises(rbp.UnsupportedModelError, match="GroupNorm .*3 groups in an ensemble of 2"):
        rbp.convert(nn.Sequential(EnsembleFold(2), StackedConv2d(2, 1, 3, 3), nn.GroupNorm(3, 6), nn.Flatten(),
                                  EnsembleFlatten(2), StackedLinear(2, 3 * 36, 3)), "rbp")
    with pytest.raises(rbp.UnsupportedModelError, match="Embedding .*no stacked embedding"):
        rbp.convert(nn.Sequential(nn.Embedding(5, 4), MeanPool(), StackedLinear(2, 4, 3)), "rbp")


# ---------------------------------------------------------------- refusals and the list of what is supported

def test_refusals_are_one_line_and_name_the_layer():
    cases = [
        (nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(16, 2)),
         rbp.UnsupportedModelError, "padding_mode='circular'"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2, padding_mode="reflect"), nn.Flatten(), nn.Linear(2, 2)),
         rbp.UnsupportedModelError, "padding_mode='reflect'"),
        (nn.Sequential(nn.Embedding(5, 4, max_norm=1.0), MeanPool(), nn.Linear(4, 2)),
         rbp.UnsupportedModelError, "max_norm"),
        (nn.Sequential(nn.Embedding(5, 4, sparse=True), MeanPool(), nn.Linear(4, 2)),
         rbp.UnsupportedModelError, "sparse=True"),
        (nn.Sequential(nn.EmbeddingBag(5, 4), nn.Linear(4, 2)), rbp.UnsupportedModelError, "EmbeddingBag"),
    ]
    for net, err, text in cases:
        with pytest.raises(err) as e:
            rbp.convert(net, "rbp")
        msg = str(e.value)
        assert text in msg and "\n" not in msg, msg
        assert "nn.Embedding" in msg and "GroupNorm" in msg and "Conv1d" in msg   # the list of what is supported
    with pytest.raises(rbp.ConfigError, match="per-synapse.*Embedding"):
        convert("embedding", "srbp", feedback="per-synapse")
    with pytest.raises(rbp.ConfigError, match="per-synapse.*conv"):
        convert("conv1d", "srbp", feedback="per-synapse")
    with pytest.raises(rbp.ConfigError, match="LayerNorm .*each example by its own standard deviation"):
        convert("layernorm", "sbp")
    with pytest.raises(rbp.ConfigError, match="GroupNorm"):
        convert("groupnorm", "twin")
    lazy = rbp.convert(model("conv1d"), "srbp")      # no example_input: the skip matrices are sized at the first pass
    x, y = batch("conv1d")
    g = grads(lazy, x, y)
    assert _sites(lazy)[1].feedback.shape == (3, 4 * 4) and g["0.weight"].abs().sum() > 0


def test_sbp_on_the_new_sites_is_bp_with_linear_units():
    """With linear units (f' = 1), SBP (no upper derivatives) is exactly BP, through grouped kernels and embeddings."""
    for kind in ("conv1d", "grouped", "separable", "embedding"):
        x, y = batch(kind)
        plain = model(kind)
        for i, mod in enumerate(plain):
            if isinstance(mod, nn.Tanh):
                plain[i] = nn.Identity()
        _close(grads(rbp.convert(plain, "sbp"), x, y), grads(plain, x, y))


def test_site_classes_and_feedback_kernel_shapes():
    m = convert("separable", "rbp", feedback="sparse-2")
    dw, pw = _sites(m)[1], _sites(m)[2]
    assert type(_sites(convert("conv1d", "rbp"))[0]) is FeedbackConv1d and type(dw) is FeedbackConv2d
    assert dw.groups == 4 and dw.feedback.shape == (4, 1, 3, 3) and pw.feedback.shape == (6, 4, 1, 1)
    # sparse-N counts per sending unit, over one group's receptive field (fan-out C/groups * k*k = 9)
    assert ((dw.feedback != 0).reshape(4, -1).sum(1) <= 9).all()
    with pytest.raises(rbp.ConfigError, match="fan-out 9"):
        convert("separable", "rbp", feedback="sparse-10")


# ---------------------------------------------------------------- GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp"])
def test_new_layers_on_gpu_match_cpu(kind, alg):
    x, y = batch(kind)
    cpu = convert(kind, alg)
    gpu = convert(kind, alg).to("cuda")
    assert all(t.is_cuda for t in (*gpu.parameters(), *gpu.buffers()))
    _close({k: v.cpu() for k, v in grads(gpu, x.cuda(), y.cuda()).items()}, grads(cpu, x, y), tol=1e-10)


# ---------------------------------------------------------------- the loss falls on digits

def _digits_model(kind):
    torch.manual_seed(0)
    if kind == "conv1d":          # each image as 8 channels (rows) of length 8
        return nn.Sequential(nn.Unflatten(1, (8, 8)), nn.Conv1d(8, 16, 3, padding=1), nn.Tanh(), nn.MaxPool1d(2),
                             nn.Flatten(), nn.Linear(64, 10))
    if kind == "separable":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(),
                             nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1), nn.Tanh(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    if kind == "grouped":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(),
                             nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(128, 10))
    if kind == "embedding":       # one token per image row: row index * 256 + the row's 8 binarised pixels
        return nn.Sequential(nn.Embedding(8 * 256, 16), MeanPool(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))
    if kind == "groupnorm":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Tanh(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    norm = nn.LayerNorm(32) if kind == "layernorm" else nn.RMSNorm(32)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), norm, nn.Tanh(), nn.Linear(32, 10))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_on_digits(kind):
    from rbp.data import load

    ds = load("digits")
    x, y = ds.x_train[:512].reshape(512, 64), ds.y_train[:512]
    if kind == "embedding":
        bits = (x.reshape(512, 8, 8) > 0.4).long()
        x = (bits * 2 ** torch.arange(8)).sum(-1) + torch.arange(8) * 256          # (512, 8) tokens
    alg = "rbp" if kind in ("conv1d", "embedding") else "srbp"
    m = rbp.convert(_digits_model(kind), alg, seed=0, example_input=x[:1])
    table = m[0].weight.detach().clone() if kind == "embedding" else None
    opt = torch.optim.SGD(m.parameters(), lr=0.3 if kind == "embedding" else 0.1, momentum=0.9)
    with torch.no_grad():
        first = F.cross_entropy(m(x), y).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(512, generator=g).split(32):
            opt.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        last = F.cross_entropy(m(x), y).item()
    # measured (seed 0): the embedding net with rbp from 2.31 to 1.45; the others below half their first loss
    assert last < (0.7 if kind == "embedding" else 0.5) * first, (kind, first, last)
    if table is not None:          # the rows looked up moved, the others did not
        used = torch.zeros(8 * 256, dtype=torch.bool)
        used[x.reshape(-1)] = True
        moved = (m[0].weight.detach() != table).any(1)
        assert torch.equal(moved, used)


def test_alignment_diagnostics_on_the_new_layers_bp_is_exact():
    from rbp.diagnostics import model_alignment

    for kind in KINDS:
        x, y = batch(kind)
        bp = model_alignment(convert(kind, "bp"), x, y)[0]
        rb = model_alignment(convert(kind, "rbp"), x, y)[0]
        angles = [k for k in bp if k.startswith(("signal_angle", "update_angle"))]
        assert angles and all(abs(bp[k]) < 1e-5 for k in angles), (kind, bp)
        assert all(rb[k] > 1.0 for k in angles), (kind, rb)
