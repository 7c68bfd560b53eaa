"""The compiled quantized-update kernel against the PyTorch code path it replaces."""

import pytest
import torch

from rbp.channel.quantize import quantize
from rbp.nn import _qkernel
from rbp.nn.layers import FeedbackLinear

pytestmark = pytest.mark.skipif(_qkernel.load() is None, reason="no C compiler: the kernel is not built")


def _torch_path(lin, g, x, alpha, bits, scale, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(_qkernel._state, "fn", None)
        return lin.per_example_update(g, x, alpha, bits, scale)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("ensemble", [None, 3])
def test_kernel_equals_torch_path(bits, ensemble, monkeypatch):
    gen = torch.Generator().manual_seed(bits)
    lead = (ensemble,) if ensemble else ()
    n, out, inp = 37, 13, 70  # sizes that are not multiples of the kernel's blocks
    x = torch.rand(*lead, n, inp, generator=gen) * 2 - 1
    x[torch.rand(x.shape, generator=gen) < 0.6] = 0.0  # many exact zeros, as in MNIST pixels
    g = torch.randn(*lead, n, out, generator=gen) * 0.05
    lin = FeedbackLinear(inp, out, ensemble=ensemble)
    gW, gb = lin.per_example_update(g, x, 2.0 ** -6, bits, float(n))
    rW, rb = _torch_path(lin, g, x, 2.0 ** -6, bits, float(n), monkeypatch)
    torch.testing.assert_close(gW, rW, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("bits", [1, 3])
def test_update_matches_the_definition(bits):
    # sum_n Q(g_n x_n^T), formed literally one example at a time (bits = 1 takes the sign-product path).
    gen = torch.Generator().manual_seed(5)
    g, x = torch.randn(9, 4, generator=gen), torch.randn(9, 6, generator=gen)
    x[0, :3] = 0.0
    lin = FeedbackLinear(6, 4)
    gW, _ = lin.per_example_update(g, x, 0.25, bits, 1.0)
    want = sum(quantize(torch.outer(g[k], x[k]), 0.25, bits) for k in range(9))
    torch.testing.assert_close(gW, want)


def test_kernel_is_bypassed_for_float64_and_autograd():
    x = torch.randn(4, 3, dtype=torch.float64)
    assert not _qkernel.applicable(x)
    assert not _qkernel.applicable(torch.randn(2, requires_grad=True))
    assert _qkernel.applicable(torch.randn(2))
