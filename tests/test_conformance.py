"""The conformance suite every registered site type runs (rbp.nn.registry): one small model per adapter.

* bp through the converted model equals autograd on the original (the gradient identity);
* the state_dict round-trips: a model converted with another seed, loaded, gives the same output and
  the same gradients under a random-feedback algorithm (rbp);
* a refused algorithm is refused with one line (ConfigError / UnsupportedModelError), never a traceback.

A new site type registered in rbp (registry._builtin) must add its example to ``EXAMPLES``.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.errors import RBPError
from rbp.nn.registry import registered


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.emb(x)).mean(1))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


class _Recurrent(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(5, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _hf_conv1d():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D
    return nn.Sequential(Conv1D(6, 5), nn.Tanh(), nn.Linear(6, 3))


def _gen():
    return torch.Generator().manual_seed(0)


EXAMPLES = {   # adapter name -> [(id, make model, make input)]
    "linear": [("mlp", lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)),
                lambda: torch.randn(4, 5, generator=_gen()))],
    "conv": [("conv2d", lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)),
              lambda: torch.randn(4, 2, 6, 6, generator=_gen())),
             ("conv1d", lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4, 3)),
              lambda: torch.randn(4, 2, 6, generator=_gen()))],
    "embedding": [("embedding", _Tokens, lambda: torch.randint(0, 11, (4, 5), generator=_gen()))],
    "attention": [("attention", _Attention, lambda: torch.randn(4, 5, 6, generator=_gen()))],
    "recurrent": [(cls.__name__, lambda cls=cls: _Recurrent(cls), lambda: torch.randn(4, 7, 5, generator=_gen()))
                  for cls in (nn.RNN, nn.GRU, nn.LSTM)],
    "hf-conv1d": [("hf-conv1d", _hf_conv1d, lambda: torch.randn(4, 5, generator=_gen()))],
}
CASES = [pytest.param(make, data, id=f"{name}-{cid}") for name, cases in EXAMPLES.items()
         for cid, make, data in cases]
Y = torch.tensor([0, 1, 2, 1])


def test_every_registered_site_type_has_an_example():
    assert {a.name for a in registered()} <= set(EXAMPLES)


def _grads(model, x):
    for p in model.parameters():
        p.grad = None
    out = model(x)
    F.cross_entropy(out, Y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make,data", CASES)
def test_bp_equals_autograd(make, data):
    torch.manual_seed(0)
    plain = make().double()
    x = data()
    x = x.double() if x.is_floating_point() else x
    conv = rbp.convert(copy.deepcopy(plain), "bp", seed=0)
    out0, g0 = _grads(plain, x)
    out1, g1 = _grads(conv, x)
    torch.testing.assert_close(out1, out0)
    assert set(g1) == set(g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)


@pytest.mark.parametrize("make,data", CASES)
def test_state_dict_round_trip(make, data):
    torch.manual_seed(0)
    plain = make().double()
    x = data()
    x = x.double() if x.is_floating_point() else x
    a = rbp.convert(copy.deepcopy(plain), "rbp", seed=0)
    b = rbp.convert(copy.deepcopy(plain), "rbp", seed=1)
    a(x), b(x)                                # anything sized at the first pass exists in both
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == set(b.state_dict())
    out_a, g_a = _grads(a, x)
    out_b, g_b = _grads(b, x)
    torch.testing.assert_close(out_b, out_a)
    for n in g_a:
        torch.testing.assert_close(g_b[n], g_a[n], msg=n)


@pytest.mark.parametrize("alg", ["sbp", "srbp", "kp", "usf"])
@pytest.mark.parametrize("make,data", CASES)
def test_every_algorithm_trains_or_is_refused_in_one_line(make, data, alg):
    torch.manual_seed(0)
    x = data()
    try:
        model = rbp.convert(make(), alg, seed=0)
        _, grads = _grads(model, x)
    except RBPError as e:
        assert "\n" not in str(e)
        return
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
