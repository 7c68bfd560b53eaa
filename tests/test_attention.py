"""nn.MultiheadAttention and torch's Transformer layers in the learning channel (docs/transformers.md).

float64 throughout, tiny models (d = 8 or 16, 2 heads), dropout off unless a test is about dropout.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.channel.algorithm import ALGORITHMS
from rbp.errors import ConfigError, UnsupportedModelError
from rbp.nn import FeedbackLinear, StackedLinear
from rbp.nn.attention import FeedbackMultiheadAttention, ProjectionSite

E, H = 8, 2
D = torch.float64


def _close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


def _grads(model, loss_fn):
    for p in model.parameters():
        p.grad = None
    loss_fn(model).backward()
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def _same_grads(a, b, tol=1e-12, keys=None):
    keys = a.keys() if keys is None else keys
    for k in keys:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            _close(a[k], b[k], tol)


def _mirror(model):
    """Set every feedback matrix of a chained-route model to its forward weights (RBP -> BP)."""
    with torch.no_grad():
        for s in model.rbp_channel.sites:
            if s.feedback is not None:
                s.feedback.copy_(s.weight)


# ---------------------------------------------------------------------------------------------
# MultiheadAttention alone

class Attn(nn.Module):
    """One attention module called as ``mode`` says: self, kv (key is value), qkv (three tensors)."""

    def __init__(self, mode="self", seed=0, call=None, **kw):
        super().__init__()
        torch.manual_seed(seed)
        self.mode, self.call = mode, dict(call or {})
        self.attn = nn.MultiheadAttention(E, H, **kw)

    def forward(self, q, k, v):
        if self.mode == "self":
            k = v = q
        elif self.mode == "kv":
            v = k
        return self.attn(q, k, v, **self.call)


def _inputs(batch_first, kdim=E, vdim=E, unbatched=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    B, T, S = 3, 5, 4

    def t(n, d):
        shape = (n, d) if unbatched else ((B, n, d) if batch_first else (n, B, d))
        return torch.randn(*shape, generator=g, dtype=D)
    return t(T, E), t(S, kdim), t(S, vdim)


def _loss(out, weights=None, seed=2):
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=D)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=g, dtype=D)).sum()
    return loss


T_, S_ = 5, 4
CAUSAL = torch.triu(torch.ones(T_, T_, dtype=torch.bool), 1)
KPM = torch.tensor([[False] * 4, [False, False, True, True], [False, True, False, False]])
FLOAT_MASK = torch.randn(T_, S_, generator=torch.Generator().manual_seed(5), dtype=D)

CASES = [  # (mode, module options, call options, batch_first, unbatched)
    ("self", {}, {}, True, False),
    ("self", {}, {"need_weights": False}, True, False),
    ("self", {}, {"need_weights": False}, False, False),
    ("self", {}, {"attn_mask": CAUSAL, "need_weights": False, "is_causal": True}, True, False),
    ("self", {}, {"attn_mask": CAUSAL, "average_attn_weights": False}, False, False),
    ("self", {"add_bias_kv": True, "add_zero_attn": True}, {}, True, False),
    ("self", {"bias": False}, {"need_weights": False}, True, False),
    ("self", {}, {}, True, True),
    ("kv", {}, {"key_padding_mask": KPM}, True, False),
    ("kv", {}, {"key_padding_mask": KPM, "need_weights": False}, False, False),
    ("kv", {}, {"attn_mask": FLOAT_MASK, "need_weights": False}, True, False),
    ("qkv", {"add_bias_kv": True}, {"key_padding_mask": KPM}, True, False),
    ("qkv", {"kdim": 6, "vdim": 5}, {"need_weights": False, "key_padding_mask": KPM}, True, False),
    ("qkv", {"kdim": 6, "vdim": 5, "add_zero_attn": True}, {}, False, False),
    ("kv", {"kdim": 6, "vdim": 6}, {"need_weights": False}, True, False),
]


def _case(i, alg="bp", seed=0):
    mode, kw, call, bf, unb = CASES[i]
    model = Attn(mode, seed=seed, call=call, batch_first=bf, **kw).double()
    kdim, vdim = kw.get("kdim", E), kw.get("vdim", E)
    q, k, v = _inputs(bf, kdim, vdim, unbatched=unb)
    return model, (q, k, v)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_attention_forward_and_bp_equal_torch(i):
    """Same outputs and attention weights as nn.MultiheadAttention; bp's gradients are autograd's."""
    model, (q, k, v) = _case(i)
    q, k, v = q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    conv = rbp.convert(model, "bp")
    assert isinstance(conv.attn, nn.MultiheadAttention) and isinstance(conv.attn, FeedbackMultiheadAttention)
    assert isinstance(conv.attn.out_proj, FeedbackLinear)
    out0, w0 = model(q, k, v)
    out1, w1 = conv(q, k, v)
    _close(out1, out0)
    assert (w0 is None) == (w1 is None)
    if w0 is not None:
        _close(w1, w0)

    def grads(m):
        for t in (q, k, v):
            t.grad = None
        g = _grads(m, lambda m: _loss(*m(q, k, v)))
        return g, [None if t.grad is None else t.grad.clone() for t in (q, k, v)]

    (g0, x0), (g1, x1) = grads(model), grads(conv)
    assert g0.keys() == g1.keys()
    _same_grads(g1, g0)
    for a, b in zip(x1, x0):      # the signal each input receives
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b)


@pytest.mark.parametrize("i", [0, 4, 8, 11, 12])
def test_attention_rbp_with_forward_weights_equals_bp(i):
    model, (q, k, v) = _case(i)
    bp = rbp.convert(model, "bp")
    rb = rbp.convert(model, "rbp", seed=3)
    ref = _grads(bp, lambda m: _loss(*m(q, k, v)))
    differs = _grads(rb, lambda m: _loss(*m(q, k, v)))
    name = "attn.in_proj_weight" if "attn.in_proj_weight" in ref else "attn.q_proj_weight"
    assert (differs[name] - ref[name]).abs().max() > 1e-6     # random feedback really changes the update
    _mirror(rb)
    _same_grads(_grads(rb, lambda m: _loss(*m(q, k, v))), ref)


def test_attention_sites_and_feedback_names():
    model, _ = _case(0)
    conv = rbp.convert(model, "rbp", seed=0)
    sites = conv.rbp_channel.sites
    assert [type(s) for s in sites] == [ProjectionSite, FeedbackLinear]
    assert sites[0].feedback is None          # the first site's input is the data
    assert conv.attn.out_proj.feedback.shape == (E, E)
    conv = rbp.convert(nn.ModuleDict({"pre": nn.Linear(E, E), "attn": model.attn}), "arbp", seed=0)
    assert isinstance(conv.attn.in_proj_feedback, nn.Parameter) and conv.attn.in_proj_feedback.shape == (3 * E, E)
    sep = Attn("qkv", kdim=6, vdim=5).double()
    conv = rbp.convert(nn.ModuleDict({"pre": nn.Linear(E, E), "attn": sep.attn}), "srbp", seed=0)
    assert conv.attn.q_proj_feedback.shape == (E, E)       # skip matrices (N_L, input width); N_L = E here
    assert conv.attn.k_proj_feedback.shape == (E, 6) and conv.attn.v_proj_feedback.shape == (E, 5)


def test_attention_alone_srbp_equals_rbp_when_the_skip_matrix_is_the_feedback():
    """The top site is out_proj: SRBP's C E^L at its input is RBP's B^T E^L when C = B."""
    for i in (0, 8):
        model, (q, k, v) = _case(i)
        rb, sr = rbp.convert(model, "rbp", seed=3), rbp.convert(model, "srbp", seed=4)
        assert sr.attn.out_proj.feedback.shape == rb.attn.out_proj.feedback.shape == (E, E)
        with torch.no_grad():
            sr.attn.out_proj.feedback.copy_(rb.attn.out_proj.feedback)
        _same_grads(_grads(sr, lambda m: _loss(*m(q, k, v))), _grads(rb, lambda m: _loss(*m(q, k, v))))


class AttnHead(nn.Module):
    """Self-attention then a linear head on every token."""

    def __init__(self, n_out=3):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.head = nn.Linear(E, n_out)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_attention_with_head_srbp_equals_rbp_with_product_skip_matrices():
    """Nothing nonlinear between out_proj and the head: C_out = B_head B_out and C_head = B_head give RBP."""
    model = AttnHead().double()
    x, _, _ = _inputs(True)
    y = torch.randint(0, 3, (3, 5), generator=torch.Generator().manual_seed(0))
    loss = lambda m: F.cross_entropy(m(x).flatten(0, 1), y.flatten())
    rb, sr = rbp.convert(model, "rbp", seed=3), rbp.convert(model, "srbp", seed=4)
    with torch.no_grad():
        sr.head.feedback.copy_(rb.head.feedback)
        sr.attn.out_proj.feedback.copy_(rb.head.feedback @ rb.attn.out_proj.feedback)
    _same_grads(_grads(sr, loss), _grads(rb, loss))


# ---------------------------------------------------------------------------------------------
# Transformer encoder classifiers

class Encoder(nn.Module):
    """nn.TransformerEncoder (2 layers, d = 16, 2 heads) on (B, T, d) floats, then a linear head:
    on the mean over tokens (``per_token=False``) or on every token."""

    def __init__(self, norm_first=False, per_token=False, d=16, heads=2, layers=2, n_out=3, dropout=0.0, seed=0,
                 **kw):
        super().__init__()
        torch.manual_seed(seed)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=dropout, batch_first=True,
                                           norm_first=norm_first, **kw)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_out)
        self.per_token = per_token

    def forward(self, x, mask=None):
        h = self.encoder(x, src_key_padding_mask=mask)
        return self.head(h if self.per_token else h.mean(1))


def _seq(B=4, T=6, d=16, n_out=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=D), torch.randint(0, n_out, (B, T), generator=g)


def _ce(x, y):
    def loss(m):
        out = m(x)
        return F.cross_entropy(out.flatten(0, 1), y.flatten()) if out.dim() == 3 else F.cross_entropy(out, y[:, 0])
    return loss


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_bp_equals_autograd_and_rbp_with_forward_weights_equals_bp(norm_first):
    model = Encoder(norm_first).double()
    x, y = _seq()
    ref = _grads(model, _ce(x, y))
    got = _grads(rbp.convert(model, "bp"), _ce(x, y))
    assert got.keys() == ref.keys()
    _same_grads(got, ref)
    rb = rbp.convert(model, "rbp", seed=1)
    assert (_grads(rb, _ce(x, y))["encoder.layers.0.linear1.weight"]
            - ref["encoder.layers.0.linear1.weight"]).abs().max() > 1e-6
    _mirror(rb)
    _same_grads(_grads(rb, _ce(x, y)), ref)


def _refusal(alg):
    """Why ``alg`` is refused on attention (None: it must convert)."""
    a = ALGORITHMS[alg]
    if a.route == "product":
        return "no forward matrix to transpose"
    return None


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_every_algorithm_converts_or_is_refused_and_the_top_layer_is_exact(alg):
    """Paper 1, Fact 1 on a per-token encoder classifier; then one SGD step changes the weights."""
    model = Encoder(per_token=True).double()
    x, y = _seq()
    why = _refusal(alg)
    if why:
        with pytest.raises(ConfigError, match=why):
            rbp.convert(model, alg, seed=1)
        return
    opts = {"weight_decay": 0.0} if alg == "kp" else {}
    conv = rbp.convert(model, alg, seed=1, **opts)
    ref = _grads(rbp.convert(model, "bp", init_scale=ALGORITHMS[alg].init_scale), _ce(x, y))
    got = _grads(conv, _ce(x, y))
    _same_grads(got, ref, keys=["head.weight", "head.bias"])
    hidden = "encoder.layers.0.self_attn.in_proj_weight"
    if ALGORITHMS[alg].route == "top":
        assert got[hidden] is None
    else:
        assert torch.isfinite(got[hidden]).all() and got[hidden].abs().sum() > 0
    conv = rbp.convert(model, alg, seed=1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in conv.named_parameters()}
    opt.zero_grad()
    loss0 = _ce(x, y)(conv)
    loss0.backward()
    opt.step()
    conv.rbp_channel.after_step()
    assert torch.isfinite(loss0)
    assert not torch.equal(before["head.weight"], conv.head.weight)
    if ALGORITHMS[alg].route != "top":
        assert not torch.equal(before[hidden], conv.encoder.layers[0].self_attn.in_proj_weight)


@pytest.mark.parametrize("alg", ["srbp", "asrbp", "distinct"])
def test_skipped_route_on_a_mean_pooled_encoder(alg):
    model = Encoder().double()
    x, y = _seq()
    conv = rbp.convert(model, alg, seed=1)
    got = _grads(conv, _ce(x, y))
    _same_grads(got, _grads(model, _ce(x, y)), keys=["head.weight", "head.bias"])


def test_srbp_skip_matrices_on_per_token_outputs():
    """Per-token errors: each skip matrix is (N_L, width of one token at the site's input)."""
    model = Encoder(per_token=True).double()
    conv = rbp.convert(model, "srbp", seed=1)
    layer = conv.encoder.layers[1]
    assert layer.self_attn.in_proj_feedback.shape == (3, 16)
    assert layer.linear2.feedback.shape == (3, 32)
    # post-LN: the first site reads the data and holds no matrix, even after a pass
    x, _ = _seq()
    conv(x)
    assert conv.encoder.layers[0].self_attn.in_proj_feedback is None
    # pre-LN: the first site reads LayerNorm(x), whose parameters learn: its matrix is drawn at the first pass
    pre = rbp.convert(Encoder(norm_first=True, per_token=True).double(), "srbp", seed=1)
    assert pre.encoder.layers[0].self_attn.in_proj_feedback is None
    pre(x)
    assert pre.encoder.layers[0].self_attn.in_proj_feedback.shape == (3, 16)
    plain = rbp.convert(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "srbp", seed=1)
    assert plain[0].feedback is None                                     # without one, the data's site has none


@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_converted_encoder_forward_equals_torch_in_train_and_eval(alg, norm_first):
    """Train mode (dropout on, same seed), eval with gradients, and eval without (torch's fast path)."""
    model = Encoder(norm_first, per_token=True, dropout=0.1).double()
    conv = rbp.convert(model, alg, seed=1)
    x, _ = _seq()
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 4:] = True
    for m in (model, conv):
        m.train()
    torch.manual_seed(7)
    a = model(x, mask)
    torch.manual_seed(7)
    b = conv(x, mask)
    _close(b, a)
    for m in (model, conv):
        m.eval()
    _close(conv(x, mask), model(x, mask))
    with torch.no_grad():
        _close(conv(x), model(x))
        _close(conv(x, mask), model(x, mask))
    fast = Encoder(norm_first, per_token=True).float().eval()   # float32: torch's fused inference kernel
    fast_conv = rbp.convert(fast, alg, seed=1)
    fast.encoder.enable_nested_tensor = fast_conv.encoder.enable_nested_tensor = True
    with torch.no_grad():
        torch.testing.assert_close(fast_conv(x.float(), mask), fast(x.float(), mask))


# ---------------------------------------------------------------------------------------------
# Decoder layer and nn.Transformer

class Decoder(nn.Module):
    """A linear layer makes the memory (so the cross-attention's signal to it is tested), then one
    TransformerDecoderLayer with a causal target mask, then a per-token head."""

    def __init__(self, d=16, n_out=3, norm_first=False):
        super().__init__()
        torch.manual_seed(0)
        self.memory = nn.Linear(d, d)
        self.layer = nn.TransformerDecoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.head = nn.Linear(d, n_out)

    def forward(self, tgt, src):
        T = tgt.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=tgt.dtype)
        return self.head(self.layer(tgt, torch.tanh(self.memory(src)), tgt_mask=mask, tgt_is_causal=True))


class TinyTransformer(nn.Module):
    def __init__(self, d=16, n_out=3):
        super().__init__()
        torch.manual_seed(0)
        self.transformer = nn.Transformer(d, 2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=2 * d,
                                          dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, n_out)

    def forward(self, tgt, src):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=tgt.dtype)
        return self.head(self.transformer(src, tgt, tgt_mask=mask, tgt_is_causal=True))


def _pair_loss(S=7):
    g = torch.Generator().manual_seed(3)
    tgt, src = torch.randn(3, 5, 16, generator=g, dtype=D), torch.randn(3, S, 16, generator=g, dtype=D)
    y = torch.randint(0, 3, (3, 5), generator=g)
    return tgt, src, lambda m: F.cross_entropy(m(tgt, src).flatten(0, 1), y.flatten())


@pytest.mark.parametrize("make", [Decoder, lambda: Decoder(norm_first=True), TinyTransformer])
def test_decoder_and_transformer_bp_rbp_and_the_top_layer(make):
    model = make().double()
    tgt, src, loss = _pair_loss()
    ref = _grads(model, loss)
    _same_grads(_grads(rbp.convert(model, "bp"), loss), ref)
    rb = rbp.convert(model, "rbp", seed=2)
    _mirror(rb)
    _same_grads(_grads(rb, loss), ref)
    for alg in ("rbp", "srbp", "asrbp", "arbp", "kp", "wm", "frsf"):
        if ALGORITHMS[alg].route == "skip":      # per-token errors reach the memory token by token (S = T)
            tgt, src, loss = _pair_loss(S=5)
            ref = _grads(model, loss)
        opts = {"weight_decay": 0.0} if alg == "kp" else {}
        conv = rbp.convert(model, alg, seed=2, **opts)
        got = _grads(conv, loss)
        _same_grads(got, ref, keys=["head.weight", "head.bias"])
        assert all(g is not None and torch.isfinite(g).all() for n, g in got.items()
                   if n.endswith(("in_proj_weight", "out_proj.weight", "linear1.weight"))), alg
    with torch.no_grad():
        conv.eval(), model.eval()
        _close(conv(tgt, src), model(tgt, src))


def test_skipped_route_on_a_decoder_whose_memory_length_differs():
    """The memory (S tokens) under a per-token error of T != S target tokens: every memory position
    receives C times the example's summed error (rbp.nn.layers.LinearOps.skip)."""
    model = Decoder().double()
    tgt, src, loss = _pair_loss(S=7)
    got = _grads(rbp.convert(model, "srbp", seed=2), loss)
    assert all(torch.isfinite(v).all() for v in got.values() if v is not None)


def test_cross_attention_sites_use_rows_of_the_packed_feedback():
    """In the decoder's cross-attention the q site reads rows 0..E and the kv site rows E..3E of
    in_proj_feedback; the signal reaching the memory is g_kv @ B[E:3E] (checked against a hand computation)."""
    model = Decoder().double()
    tgt, src, loss = _pair_loss()
    conv = rbp.convert(model, "rbp", seed=2)
    mha = conv.layer.multihead_attn
    seen = {}
    orig = ProjectionSite.__call__

    def spy(self, x):
        out = orig(self, x)
        if self._owner is mha and self.row_block is not None and self.row_block.start == E * 2:
            out.register_hook(lambda g: seen.__setitem__("g", g))
            seen["x"] = x
        return out
    ProjectionSite.__call__ = spy
    try:
        mem_grad = {}
        h = conv.memory.register_forward_hook(
            lambda m, i, o: (o.register_hook(lambda g: mem_grad.__setitem__("go", g)), None)[1])
        _grads(conv, loss)
        h.remove()
    finally:
        ProjectionSite.__call__ = orig
    d = 16
    B_kv = mha.in_proj_feedback[d:]
    J = seen["g"] @ B_kv                          # the signal at the memory (before tanh')
    mem = torch.tanh(conv.memory(src)).detach()
    _close(mem_grad["go"], J * (1 - mem ** 2))


# ---------------------------------------------------------------------------------------------
# PyTorch conventions

@pytest.mark.parametrize("alg", ["rbp", "arbp", "srbp", "asrbp"])
def test_state_dict_keys_and_round_trips(alg):
    model = TinyTransformer().double()
    conv = rbp.convert(model, alg, seed=2)
    before, after = set(model.state_dict()), set(conv.state_dict())
    added = after - before
    assert before <= after
    assert all(k.endswith(("in_proj_feedback", ".feedback")) for k in added), added
    assert "transformer.decoder.layers.0.multihead_attn.in_proj_feedback" in added
    assert "transformer.encoder.layers.0.self_attn.out_proj.feedback" in added
    # saved before converting, loaded after (the feedback stays the converted model's)
    other = TinyTransformer().double()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    res = conv.load_state_dict(other.state_dict(), strict=False)
    assert set(res.missing_keys) == added and not res.unexpected_keys
    for k, v in other.state_dict().items():
        assert torch.equal(conv.state_dict()[k], v), k
    # and back: a converted state_dict into the plain model
    res = other.load_state_dict(conv.state_dict(), strict=False)
    assert set(res.unexpected_keys) == added and not res.missing_keys
    # converted -> converted (feedback included) gives the same gradients
    twin = rbp.convert(TinyTransformer().double(), alg, seed=9)
    twin.load_state_dict(conv.state_dict())
    tgt, src, loss = _pair_loss(S=5)
    _same_grads(_grads(twin, loss), _grads(conv, loss))


def test_discovery_with_example_input_keeps_out_proj_after_its_attention():
    model = Encoder(per_token=True).double()
    x, y = _seq()
    a = rbp.convert(model, "srbp", seed=1)
    b = rbp.convert(model, "srbp", seed=1, example_input=x)
    assert [type(s).__name__ for s in b.rbp_channel.sites] == [type(s).__name__ for s in a.rbp_channel.sites]
    assert b.rbp_channel.sites[-1] is b.head
    _same_grads(_grads(b, _ce(x, y)), _grads(a, _ce(x, y)))


def test_refusals_are_one_clear_line():
    model = Encoder(per_token=True).double()
    with pytest.raises(ConfigError, match="per-synapse.*MultiheadAttention"):
        rbp.convert(model, "srbp", feedback="per-synapse")
    with pytest.raises(ConfigError, match="congruent.*attention"):
        rbp.convert(model, "srbp", feedback="congruent")
    with pytest.raises(ConfigError, match="activation.*function relu, not a module"):
        rbp.convert(model, "rbp", derivative=False)
    assert rbp.convert(model, "nrbp").rbp_channel.algorithm.backward_nonlinearity == "relu"
    with pytest.raises(ConfigError, match="no unit like gelu"):
        rbp.convert(Encoder(activation="gelu"), "nrbp")

    class Ens(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, H)
            self.out = StackedLinear(2, E, 3)
    with pytest.raises(UnsupportedModelError, match="no ensemble form"):
        rbp.convert(Ens(), "rbp")
    with pytest.raises(UnsupportedModelError, match="Transformer layers"):
        rbp.convert(nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 4)), "rbp")


def test_no_derivative_reaches_a_module_activation():
    """With activation=nn.ReLU() the layer's activation is a module, which "no f'" wraps."""
    model = Encoder(per_token=True, activation=nn.ReLU()).double()
    conv = rbp.convert(model, "rbp", derivative=False, seed=1)
    assert type(conv.encoder.layers[0].activation).__name__ == "NoDerivative"
    x, y = _seq()
    got = _grads(conv, _ce(x, y))
    _same_grads(got, _grads(model, _ce(x, y)), keys=["head.weight", "head.bias"])


def test_deepcopy_and_a_plain_pass_without_gradients():
    model = Encoder(per_token=True).double()
    conv = copy.deepcopy(rbp.convert(model, "srbp", seed=1))
    x, y = _seq()
    with torch.no_grad():
        _close(conv(x), model(x))
    g = _grads(conv, _ce(x, y))
    _same_grads(g, _grads(model, _ce(x, y)), keys=["head.weight", "head.bias"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("alg", ["bp", "rbp", "srbp", "asrbp"])
def test_cuda_gradients_equal_cpu(alg):
    model = TinyTransformer().double()
    cpu = rbp.convert(model, alg, seed=2)
    gpu = copy.deepcopy(cpu).to("cuda")
    assert all(b.is_cuda for b in gpu.buffers()) and all(p.is_cuda for p in gpu.parameters())
    tgt, src, loss = _pair_loss()
    ref = _grads(cpu, loss)
    got = _grads(gpu, lambda m: loss(_OnDevice(m)))
    for k in ref:
        if ref[k] is not None:
            _close(got[k].cpu(), ref[k], tol=1e-9)


class _OnDevice(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, tgt, src):
        return self.m(tgt.cuda(), src.cuda()).cpu()


@pytest.mark.parametrize("alg", ["bp", "rbp"])
def test_a_loss_on_the_attention_weights_alone(alg):
    """The output site is attention's input projection (out_proj excluded, the loss on the attention weights):
    the channel asks it how many examples the signal holds (``rows(g)``), which a row-block attribute once
    shadowed (TypeError)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()

    class Scores(nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=True)[1]

    conv = rbp.convert(Scores(copy.deepcopy(mha)), alg, seed=0, exclude=["attn.out_proj"])
    assert conv.rbp_channel.sites == conv.attn.sites()      # the in-projection is the only site
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    w = conv(x)
    (w * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    got = conv.attn.in_proj_weight.grad
    assert got is not None and torch.isfinite(got).all()
    if alg == "bp":
        _, w0 = mha(x, x, x, need_weights=True)
        (w0 * torch.arange(5.0, dtype=torch.float64)).sum().backward()
        torch.testing.assert_close(got, mha.in_proj_weight.grad)
