"""The sign-concordant feedbacks and Kolen-Pollack at RBP's cost (issue 22 part 2): the refresh of uSF and frSF
is one elementwise pass over the weights, in place, and gives today's matrices; KP's decay is one fused add."""

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import rbp
from rbp.channel import feedback as fb
from rbp.channel.backward import feedback_matrix
from rbp.nn.conv import kernel_glorot_std


class _Ops(TorchDispatchMode):
    """The aten operations run inside the mode (views and shape queries excluded)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in ("view", "reshape", "_unsafe_view", "as_strided", "detach", "alias", "lift_fresh"):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _sites(model):
    return [s for s in model.rbp_channel.sites if s.feedback is not None]


def _net(alg, conv=False):
    torch.manual_seed(0)
    if conv:
        m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5))
    else:
        m = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 4))
    return rbp.convert(m, alg, seed=0)


def _old_signs(w):
    """sign(W) with zeros counted as +1, as the refresh computed it before (sign, compare, masked fill)."""
    s = torch.sign(w)
    s[s == 0] = 1.0
    return s


@pytest.mark.parametrize("alg", ["usf", "frsf"])
@pytest.mark.parametrize("conv", [False, True])
def test_sign_following_refresh_is_one_pass_in_place_and_gives_the_same_matrix(alg, conv):
    model = _net(alg, conv)
    for s in _sites(model):
        feedback_matrix(s, s.weight.detach(), s.feedback)    # (uSF works out its one magnitude once per shape)
        with torch.no_grad():
            s.weight.neg_()                      # every sign flips: the refresh must follow
            s.weight.view(-1)[:3] = 0.0           # exact zeros count as +1
        fbk, before = s.feedback, s.feedback.clone()
        ptr = fbk.data_ptr()
        mode = _Ops()
        with mode:
            out = feedback_matrix(s, s.weight.detach(), fbk)
        assert out is fbk and fbk.data_ptr() == ptr             # in place, no copy
        assert len(mode.ops) == 1 and mode.ops[0] in ("copysign", "copysign_"), mode.ops   # one pass over W
        w = s.weight.detach()
        if alg == "usf":
            std = kernel_glorot_std(w.shape) if w.dim() == 4 else fb.glorot_std(w.shape)
            want = _old_signs(w) * torch.tensor(std, dtype=w.dtype)
        else:
            want = before.abs() * _old_signs(w)
        assert torch.equal(fbk, want)


def test_brsf_draws_the_same_numbers_as_before():
    model = _net("brsf")
    s = _sites(model)[0]
    w = s.weight.detach()
    gen = torch.Generator().manual_seed(4)
    got = fb.sample(fb.FeedbackSpec("sign-concordant"), tuple(w.shape), chained=True, generator=gen, forward_sign=w)
    gen.manual_seed(4)
    want = torch.randn(w.shape, generator=gen).abs_().mul_(fb.glorot_std(w.shape)) * _old_signs(w)
    assert torch.equal(got, want)


def test_kp_decay_is_one_fused_add_per_tensor():
    """The adaptation of Kolen-Pollack (rate 1, decay lambda): dW + lambda B in one operation, and the
    weight's decay added in place: no separate lambda*W, lambda*B temporaries."""
    from rbp.channel.routes import route_of
    alg = rbp.algorithm("kp", weight_decay=0.25)
    route = route_of(alg)
    gW, B = torch.randn(5, 4), torch.randn(5, 4)
    mode = _Ops()
    with mode:
        gF = route.adaptation(None, None, None, None, gW, B, alg.weight_decay)
    assert mode.ops == ["add"], mode.ops
    torch.testing.assert_close(gF, gW + 0.25 * B, atol=1e-6, rtol=0)
    assert gF.data_ptr() != gW.data_ptr()
