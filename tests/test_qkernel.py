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


# ---- the code paths of the kernel against the portable loop, bitwise ----

def _old_formula(lg, sg, lx, sx, lo):
    """The portable kernel's definition in PyTorch: n ascending, one float32 add per example and synapse."""
    lead = lg.shape[:-2]
    out = torch.zeros(*lead, lg.shape[-1], lx.shape[-1])
    for n in range(lg.shape[-2]):
        v = (lg[..., n, :].unsqueeze(-1) + lx[..., n, :].unsqueeze(-2)).clamp(lo, 0).round()
        t = torch.ldexp(torch.ones_like(v), v.to(torch.int32))
        t = t * sg[..., n, :].unsqueeze(-1) * sx[..., n, :].unsqueeze(-2)
        t = torch.where(sx[..., n, :].unsqueeze(-2) == 0, torch.zeros(()), t)  # zero inputs are skipped
        out += t
    return out


def _logs(g, x, alpha=2.0 ** -6):
    return g.abs().log2() - torch.log2(torch.tensor(alpha)), torch.sign(g), x.abs().log2(), torch.sign(x)


def _same_bits(a, b):
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def _fast_path_built():
    """Whether the AVX2 path was compiled (elsewhere every path is the portable loop)."""
    one = torch.ones(1, 1)
    _qkernel.quantized_outer_sum(one, one, one, one, -1, path="outputs")
    return _qkernel._state["path"] == "outputs"


def _expect_path(path):
    want = path if path == "portable" or _fast_path_built() else "portable"
    return want


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 37, 13, 70), (2, 20, 100, 33), (2, 9, 10, 100), (1, 17, 41, 9)])
@pytest.mark.parametrize("bits", [2, 3, 8, 16])
def test_paths_are_bitwise_equal(shape, bits):
    K, N, O, I = shape
    gen = torch.Generator().manual_seed(N * O + bits)
    g = torch.randn(K, N, O, generator=gen) * 0.05 * N
    g[torch.rand(g.shape, generator=gen) < 0.1] = 0.0
    x = torch.rand(K, N, I, generator=gen) * 2 - 1
    x[torch.rand(x.shape, generator=gen) < 0.5] = 0.0
    args = (*_logs(g, x), -(bits - 1))
    ref = _qkernel.quantized_outer_sum(*args, path="portable")
    assert _qkernel._state["path"] == "portable"
    assert _same_bits(ref, _old_formula(*args))
    for path in ("outputs", "inputs", "auto"):
        assert _same_bits(_qkernel.quantized_outer_sum(*args, path=path), ref), path


def test_rounding_ties_and_clamps_are_bitwise_equal():
    # Exponent sums on every half-integer and integer from -20 to 2, so round-half-even ties,
    # both clamps and values beyond them all occur; the sum over n makes the order matter.
    lo = -7
    v = torch.arange(-40, 5) / 2.0  # -20, -19.5, ..., 2
    N = v.numel()
    lg = torch.stack([v.roll(s) for s in range(N)], 1)[:, :24]  # (N, 24)
    lx = torch.stack([v.roll(3 * s) for s in range(N)], 1)[:, :19] * 0.0  # (N, 19): ties from lg alone
    lx[:, 1::2] = 0.25  # and sums like -0.25, -0.75 ... that are no ties
    sg = torch.where(torch.arange(24) % 3 == 0, -1.0, 1.0).expand(N, 24).contiguous()
    sx = torch.where(torch.arange(19) % 4 == 1, -1.0, 1.0).expand(N, 19).contiguous()
    ref = _old_formula(lg, sg, lx, sx, lo)
    for path in ("portable", "outputs", "inputs"):
        got = _qkernel.quantized_outer_sum(lg, sg, lx, sx, lo, path=path)
        assert _qkernel._state["path"] == _expect_path(path)
        assert _same_bits(got, ref), path


def test_infinite_logs_and_zero_signs():
    # g = 0 gives log -inf with sign 0; a huge g gives +inf; x = 0 is skipped.
    g = torch.tensor([[0.0, 1e38, -3e-3, 2.0], [5e-3, 0.0, float("inf"), -1e-30]]) * 1e3
    x = torch.tensor([[0.0, 0.5, -1e-20], [1e-3, 0.0, -2.0]])
    args = (*_logs(g, x), -5)
    ref = _qkernel.quantized_outer_sum(*args, path="portable")
    for path in ("outputs", "inputs"):
        assert _same_bits(_qkernel.quantized_outer_sum(*args, path=path), ref), path
        assert _qkernel._state["path"] == _expect_path(path)


def test_unusual_inputs_take_the_portable_loop():
    # A NaN log where the sign is not 0, a sign outside {-1, 0, 1}, or a non-integral lo.
    gen = torch.Generator().manual_seed(3)
    lg, sg, lx, sx = _logs(torch.randn(4, 6, generator=gen), torch.randn(4, 5, generator=gen))
    bad_lg = lg.clone()
    bad_lg[1, 2] = float("nan")
    for args in [(bad_lg, sg, lx, sx, -3), (lg, sg * 2, lx, sx, -3), (lg, sg, lx, sx, -2.5), (lg, sg, lx, sx, -130)]:
        _qkernel.quantized_outer_sum(*args, path="outputs")
        assert _qkernel._state["path"] == "portable"


def test_result_does_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(3, 50, 40, generator=gen)
    x = torch.rand(3, 50, 200, generator=gen)
    x[x < 0.7] = 0.0
    args = (*_logs(g, x), -7)
    old = torch.get_num_threads()
    try:
        outs = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            outs[t] = [_qkernel.quantized_outer_sum(*args, path=p) for p in ("outputs", "inputs", "portable")]
    finally:
        torch.set_num_threads(old)
    for a, b in zip(outs[1], outs[2]):
        assert _same_bits(a, b)
    assert _same_bits(outs[1][0], outs[1][2]) and _same_bits(outs[1][1], outs[1][2])
