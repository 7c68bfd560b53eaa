"""SRBP's shared skip projection (skip_projection="shared", issue 22 part 3): one random matrix C as wide as
the widest layer (or block), E^L C computed once per backward pass, each site reading its first columns
(Launay et al. 2020).  Each site's signal must equal the per-layer route's with the sliced matrix as its C."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.models import gpt
from rbp.nn.blocks import BUFFER

from helpers import assert_grads_equal

SIZES = (12, 20, 35, 27, 5)         # hidden widths differ, so the slices differ


def _mlp():
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(SIZES) - 2 else [])
    return nn.Sequential(*layers).double()


def _grads(model, x, y, lm=False):
    model.zero_grad()
    out = model(x)
    F.cross_entropy(out.flatten(0, 1) if lm else out, y.flatten() if lm else y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _own_with_slices(shared, own):
    """The per-layer model whose C^h is the shared model's slice for every site."""
    for a, b in zip(shared.rbp_channel.sites, own.rbp_channel.sites):
        if a.feedback is not None:
            b.feedback.copy_(a.feedback)
    return own


class _CountSkipProducts:
    """Counts matrix products whose right operand has ``rows`` rows (the skip matrices: N_L x width)."""

    def __init__(self, monkeypatch, rows):
        self.n, self.rows = 0, rows
        original = torch.Tensor.__matmul__

        def counting(a, b):
            if isinstance(b, torch.Tensor) and b.dim() >= 2 and b.shape[-2] == self.rows:
                self.n += 1
            return original(a, b)

        monkeypatch.setattr(torch.Tensor, "__matmul__", counting)


def test_each_site_gets_the_per_layer_signal_through_its_slice():
    x, y = torch.randn(9, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (9,))
    shared = rbp.convert(_mlp(), "srbp", skip_projection="shared", seed=1)
    own = _own_with_slices(shared, rbp.convert(_mlp(), "srbp", seed=1))
    assert_grads_equal(_grads(shared, x, y), _grads(own, x, y), tol=1e-12)
    # and the slices are not all the same matrix: the test above compares different per-layer routes
    fb = [s.feedback for s in shared.rbp_channel.sites if s.feedback is not None]
    assert [f.shape[-1] for f in fb] == list(SIZES[1:-1])


def test_one_matrix_of_the_widest_input_holds_every_site_s_feedback():
    shared = rbp.convert(_mlp(), "srbp", skip_projection="shared", seed=1)
    fb = [s.feedback for s in shared.rbp_channel.sites if s.feedback is not None]
    widest = max(SIZES[1:-1])
    assert len({f.untyped_storage().data_ptr() for f in fb}) == 1
    assert fb[0].untyped_storage().nbytes() == SIZES[-1] * widest * fb[0].element_size()
    base = fb[0]._base
    assert base.shape == (SIZES[-1], widest)
    for f in fb:
        assert torch.equal(f, base[:, :f.shape[-1]])
    # the per-layer default holds one matrix per site
    own = rbp.convert(_mlp(), "srbp", seed=1)
    assert len({s.feedback.untyped_storage().data_ptr() for s in own.rbp_channel.sites
                if s.feedback is not None}) == len(fb)


def test_the_projection_is_computed_once_per_backward_pass(monkeypatch):
    x, y = torch.randn(9, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (9,))
    counts = {}
    for mode in ("own", "shared"):
        model = rbp.convert(_mlp(), "srbp", skip_projection=mode, seed=1)
        out = model(x)
        counter = _CountSkipProducts(monkeypatch, SIZES[-1])
        F.cross_entropy(out, y).backward()
        counts[mode] = counter.n
        monkeypatch.undo()
    assert counts == {"own": len(SIZES) - 2, "shared": 1}


def test_language_model_with_per_token_errors():
    V, T = 97, 6
    idx = torch.randint(0, V, (3, T))
    kw = dict(vocab=V, context=T, dim=8, depth=2, heads=2, seed=0)
    shared = rbp.convert(gpt(**kw).double(), "srbp", skip_projection="shared", seed=0)
    own = _own_with_slices(shared, rbp.convert(gpt(**kw).double(), "srbp", seed=0))
    assert_grads_equal(_grads(shared, idx, idx, lm=True), _grads(own, idx, idx, lm=True), tol=1e-12)
    widths = {s.feedback.shape[-1] for s in shared.rbp_channel.sites if s.feedback is not None}
    assert widths == {8, 32}                # d and the MLP's 4d: the widest is 4d
    assert len({s.feedback.untyped_storage().data_ptr() for s in shared.rbp_channel.sites
                if s.feedback is not None}) == 1


def test_conv_layers_read_their_slices_and_need_their_sizes_at_conversion():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 4 * 4, 5)).double()

    x, y = torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,))
    shared = rbp.convert(net(), "srbp", skip_projection="shared", seed=0, example_input=x[:1])
    own = _own_with_slices(shared, rbp.convert(net(), "srbp", seed=0, example_input=x[:1]))
    assert_grads_equal(_grads(shared, x, y), _grads(own, x, y), tol=1e-12)
    with pytest.raises(rbp.ConfigError, match="example_input"):
        rbp.convert(net(), "srbp", skip_projection="shared", seed=0)


def test_state_dict_round_trip_keeps_one_matrix():
    x, y = torch.randn(9, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (9,))
    a = rbp.convert(_mlp(), "srbp", skip_projection="shared", seed=1)
    b = rbp.convert(_mlp(), "srbp", skip_projection="shared", seed=2)
    b.load_state_dict(a.state_dict())
    assert_grads_equal(_grads(a, x, y), _grads(b, x, y), tol=0)
    assert len({s.feedback.untyped_storage().data_ptr() for s in b.rbp_channel.sites
                if s.feedback is not None}) == 1


class _Widening(nn.Module):
    """Blocks whose outputs have different widths (8 and 6 units)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(5, 7)
        self.a = nn.Sequential(nn.Linear(7, 8), nn.Tanh())
        self.b = nn.Sequential(nn.Linear(8, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.b(self.a(torch.tanh(self.inp(x)))))


def test_block_mode_reads_slices_of_one_matrix_computed_once(monkeypatch):
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    shared = rbp.convert(_Widening().double(), "srbp", blocks=["a", "b"], skip_projection="shared", seed=0)
    own = rbp.convert(_Widening().double(), "srbp", blocks=["a", "b"], seed=0)
    shared(x), own(x)                                    # the block matrices are drawn at the first pass
    Ca, Cb = getattr(shared.a, BUFFER), getattr(shared.b, BUFFER)
    assert Ca.shape == (3, 8) and Cb.shape == (3, 6) and torch.equal(Cb, Ca[:, :6])
    assert Ca.untyped_storage().data_ptr() == Cb.untyped_storage().data_ptr()
    with torch.no_grad():
        getattr(own.a, BUFFER).copy_(Ca)
        getattr(own.b, BUFFER).copy_(Cb)
    g_own = _grads(own, x, y)
    out = shared(x)
    counter = _CountSkipProducts(monkeypatch, 3)
    F.cross_entropy(out, y).backward()
    assert counter.n == 1
    monkeypatch.undo()
    assert_grads_equal({n: p.grad for n, p in shared.named_parameters()}, g_own, tol=1e-12)
    # saved and loaded into a fresh model: the loaded matrices are views of one matrix again
    fresh = rbp.convert(_Widening().double(), "srbp", blocks=["a", "b"], skip_projection="shared", seed=5)
    fresh.load_state_dict(shared.state_dict())
    assert_grads_equal(_grads(fresh, x, y), g_own, tol=1e-12)
    assert getattr(fresh.a, BUFFER).untyped_storage().data_ptr() == getattr(fresh.b, BUFFER).untyped_storage().data_ptr()


@pytest.mark.parametrize("name,opts,words", [
    ("rbp", {}, "not srbp"), ("asrbp", {}, "not srbp"), ("distinct", {}, "not srbp"),
    ("srbp", {"feedback": "congruent"}, "mirrors no layer"), ("srbp", {"skip_projection": "mine"}, "must be one of")])
def test_shared_projection_is_refused_where_it_is_not_defined(name, opts, words):
    opts = {"skip_projection": "shared", **opts}
    with pytest.raises(rbp.ConfigError, match=words):
        rbp.algorithm(name, **opts)


def test_its_cost_is_one_product_of_the_widest_width():
    from rbp.bench import graph_flops
    from rbp.channel.routes import route_of
    layers = [(100, 10), (200, 20), (300, 35), (50, 27)]
    own = route_of(rbp.algorithm("srbp")).layer_cost(layers, 5)
    shared = route_of(rbp.algorithm("srbp", skip_projection="shared")).layer_cost(layers, 5)
    assert own == (5 * (20 + 35 + 27),) * 2 and shared == (5 * 35,) * 2
    floors = graph_flops("gpt", ("srbp", "srbp:skip_projection=shared"))
    assert floors["srbp:skip_projection=shared"]["floor"] < floors["srbp"]["floor"]
    assert rbp.algorithm("srbp", skip_projection="shared").describe() == "srbp[shared projection]"


def test_the_sites_share_one_matrix_again_after_a_dtype_or_device_change():
    """Module.to / .double() convert every buffer on its own; the next pass makes the slices views of one
    matrix again, with the same values and the same gradients as the per-layer route."""
    model = rbp.convert(_mlp().float(), "srbp", skip_projection="shared", seed=1)
    model.double()
    fb = [s.feedback for s in model.rbp_channel.sites if s.feedback is not None]
    assert len({f.untyped_storage().data_ptr() for f in fb}) == len(fb)      # copied apart by .double()
    x, y = torch.randn(9, SIZES[0], dtype=torch.float64), torch.randint(0, SIZES[-1], (9,))
    got = _grads(model, x, y)
    fb = [s.feedback for s in model.rbp_channel.sites if s.feedback is not None]
    assert len({f.untyped_storage().data_ptr() for f in fb}) == 1 and all(f.dtype == torch.float64 for f in fb)
    own = _own_with_slices(model, rbp.convert(_mlp(), "srbp", seed=1))
    assert_grads_equal(got, _grads(own, x, y), tol=1e-12)
    # a slice changed on its own is not silently replaced by the widest matrix's columns
    model.float()
    fb = [s.feedback for s in model.rbp_channel.sites if s.feedback is not None]
    with torch.no_grad():
        fb[0].add_(1.0)
    with pytest.raises(rbp.ConfigError, match="first columns"):
        model(x.float())
