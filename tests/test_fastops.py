"""The compiled tanh of the fused trainer against torch.tanh."""

import math

import pytest
import torch

from rbp.nn import _fastops

pytestmark = pytest.mark.skipif(_fastops.load() is None, reason="no C compiler: the kernel is not built")


def test_tanh_within_two_units_in_the_last_place():
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.randn(10_007) * 2,
                   torch.tensor([0.0, 1e-30, -1e-30, 0.625, -0.625, 0.62499994, 9.0, 88.0, 1e4])])
    want = torch.tanh(x.double())
    got = _fastops.tanh_(x.clone()).double()
    rel = (got - want).abs() / want.abs().clamp(1e-30, 1.0)
    assert rel.max().item() <= 2 * torch.finfo(torch.float32).eps
    assert torch.equal(torch.sign(got), torch.sign(want))


def test_tanh_special_values():
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0])
    y = _fastops.tanh_(x.clone())
    assert y[0].item() == 1.0 and y[1].item() == -1.0
    assert math.isnan(y[2].item())                     # a diverged network stays visibly diverged
    assert y[3].item() == 0.0 and math.copysign(1.0, y[4].item()) == -1.0


def test_tanh_does_not_depend_on_position_or_length():
    # an ensemble member must get the numbers it gets alone: the tail (n mod 8) uses the same formula
    x = torch.randn(5, 37, 13)
    whole = _fastops.tanh_(x.clone())
    for k in range(5):
        assert torch.equal(_fastops.tanh_(x[k].clone()), whole[k])
    assert torch.equal(_fastops.tanh_(x[0, 0, :3].clone()), whole[0, 0, :3])


def test_tanh_falls_back_to_torch(monkeypatch):
    x64 = torch.randn(20, dtype=torch.float64)
    assert torch.equal(_fastops.tanh_(x64.clone()), torch.tanh(x64))   # other dtypes: torch
    x = torch.randn(20)
    monkeypatch.setitem(_fastops._state, "fn", None)                   # no kernel: torch
    assert torch.equal(_fastops.tanh_(x.clone()), torch.tanh(x))
    strided = torch.randn(6, 4).t()
    assert torch.equal(_fastops.tanh_(strided.clone()), torch.tanh(strided))
