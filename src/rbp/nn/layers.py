"""Layers served by the learning channel.

:class:`FeedbackLinear` is a linear layer whose backward pass is the learning
channel's (:func:`rbp.channel.backward.site_backward`) instead of autograd's.
With ``ensemble=K`` it holds K independent networks' weights, shape
(K, out, in), and expects inputs of shape (K, batch, in): every operation is
one batched matmul over the ensemble.

:class:`StackedLinear` is the plain (backprop) ensemble layer that
:func:`rbp.mlp` builds for ensembles before conversion.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channel import feedback as fb
from ..channel.backward import Pass
from ..channel.quantize import quantize
from ..errors import ConfigError
from . import _qkernel
from .registry import SiteAdapter
from .site import Site, overrides_forward, shim

_CHUNK_ELEMENTS = 1 << 20  # per-example updates are formed in chunks of at most this many numbers


class LinearOps:
    """The tensor algebra of a (possibly ensembled) linear site.

    Shapes: single network, x (..., in), W (out, in); ensemble, x (K, ..., in),
    W (K, out, in).  ``g`` has the shape of the layer's output.
    """

    ensemble: int | None

    def sample_feedback(self, spec, shape, *, chained, generator, forward_sign, dtype, device):
        """Draw one network's feedback matrix of ``shape`` (a 2-D matrix for linear sites)."""
        return fb.sample(spec, shape, chained=chained, generator=generator, forward_sign=forward_sign,
                         dtype=dtype, device=device)

    def affine(self, x, weight, bias):
        if not self.ensemble:
            return F.linear(x, weight, bias)
        K = weight.shape[0]
        x3 = x.reshape(K, -1, x.shape[-1])
        wt = weight.transpose(1, 2)
        out = torch.bmm(x3, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x3, wt)
        return out.view(*x.shape[:-1], weight.shape[1])

    def _rows2(self, t):
        return t.reshape(t.shape[0], -1, t.shape[-1]) if self.ensemble else t.reshape(-1, t.shape[-1])

    def rows(self, g) -> int:
        """Examples per network in the batch."""
        n = g.numel() // g.shape[-1]
        return n // g.shape[0] if self.ensemble else n

    def grad_weight(self, g, x):
        g2, x2 = self._rows2(g), self._rows2(x)
        return g2.transpose(-1, -2) @ x2

    def grad_bias(self, g):
        return self._rows2(g).sum(-2)

    def grad_input(self, g, matrix, x):
        return g @ matrix

    def skip(self, error, matrix, x):
        """C E^L at the input.  An error per example reaching an input with positions
        (x of shape (B, T, ..., in), error (B, N_L)) gives every position the same
        projection, as the true gradient of a mean-pooled readout does."""
        error = self._error_for(error, x)
        return self._deliver_skip(error @ matrix, error, x)

    def skip_sliced(self, error, projection, matrix, x):
        """:meth:`skip` when E^L C was computed once for the whole shared matrix C (``skip_projection``),
        of which ``matrix`` is the first columns: this site reads the first columns of ``projection``."""
        own = self._error_for(error, x)
        J = projection[..., :matrix.shape[-1]] if own is error else own @ matrix
        return self._deliver_skip(J, own, x)

    def _deliver_skip(self, J, error, x):
        """The projection J = E^L C in the input's shape (see :meth:`skip`)."""
        if J.shape == x.shape:
            return J
        lead = J.dim() - 1
        if tuple(x.shape[:lead]) == tuple(J.shape[:lead]):
            return J.reshape(*J.shape[:lead], *([1] * (x.dim() - J.dim())), J.shape[-1]).expand(x.shape)
        folds = self._folds(J.shape[0], x) if J.dim() == 2 else 0
        if folds:       # windows folded into the batch (Swin): each example's rows get its projection
            J = J.repeat_interleave(folds, 0)
            return J.reshape(J.shape[0], *([1] * (x.dim() - 2)), J.shape[-1]).expand(x.shape)
        if J.numel() != x.numel():
            raise ConfigError(f"the skipped route cannot deliver the output error of shape {tuple(error.shape)} "
                              f"to the input of {getattr(self, 'rbp_name', self.kind)} of shape {tuple(x.shape)}: "
                              "its leading dimensions are neither the examples nor the examples times a number "
                              "of windows (use the block mode, blocks=, or exclude= this layer)")
        return J.reshape(x.shape)

    def _folds(self, B: int, x) -> int:
        """k when x's first dimension holds k consecutive rows of each of B examples ((B*k, ..., in), as a
        window partition makes them) for an error per example, else 0.  A layout with the examples in
        another dimension ((T, B, in), sequence first) is not taken for one."""
        if self.ensemble or x.dim() < 3:
            return 0
        rows = x.shape[0]
        if rows <= B or rows % B or B in tuple(x.shape[1:-1]):
            return 0
        return rows // B

    def _error_for(self, error, x):
        """An error per position that does not match the input's positions (a decoder's T target
        tokens reaching the S memory tokens): the example's summed error, for every position."""
        lead = 2 if self.ensemble else 1
        if error.dim() == x.dim() and error.dim() > lead + 1 and error.shape[:-1] != x.shape[:-1] \
                and error.shape[:lead] == x.shape[:lead]:
            return error.sum(dim=tuple(range(lead, error.dim() - 1)))
        return error

    def grad_skip(self, error, x):
        """dLoss/dC for ASRBP: E^L (O^h)^T in C's orientation (summed over positions, see :meth:`skip`)."""
        error = self._error_for(error, x)
        lead = error.dim() - 1
        if x.dim() > error.dim() and tuple(x.shape[:lead]) == tuple(error.shape[:lead]):
            x = x.sum(dim=tuple(range(lead, x.dim() - 1)))
        elif error.dim() == 2 and self._folds(error.shape[0], x):      # windows folded into the batch
            x = x.reshape(error.shape[0], -1, x.shape[-1]).sum(1)
        return LinearOps.grad_weight(self, error, x)       # in C's (N_L, in) orientation, whatever W's is

    def per_synapse_update(self, error, g, x, P):
        """Weight and bias updates when every synapse has its own feedback vector.

        ``P`` has shape ([K,] N_L, out, in [+1 for the bias]); returns
        sum_n g_nj x_ni sum_k P_kji error_nk and the bias analogue.
        """
        e2, g2, x2 = self._rows2(error), self._rows2(g), self._rows2(x)
        n_top, out, inp = e2.shape[-1], g2.shape[-1], x2.shape[-1]
        eg = (e2.unsqueeze(-1) * g2.unsqueeze(-2)).flatten(-2)         # ([K,] n, N_L*out)
        M = (eg.transpose(-1, -2) @ x2).unflatten(-2, (n_top, out))    # ([K,] N_L, out, in)
        gW = (P[..., :inp] * M).sum(-3)
        gb = None
        if self.bias is not None:
            gb = (P[..., inp] * eg.sum(-2).unflatten(-1, (n_top, out))).sum(-2)
        return gW, gb

    def per_example_update(self, g, x, alpha, bits, scale, flush=False):
        """(1/scale) sum_n Q(scale * g_n x_n^T): each example's update quantized (Eq. 19) before the sum.

        The exponent of a product is the sum of the factors' exponents, so
        log2|g| and log2|x| are taken once per vector and only their outer sum,
        the clamp, the rounding and the power of two are computed per synapse
        and example (in chunks of at most ``_CHUNK_ELEMENTS`` numbers).

        ``flush``: terms whose exponent rounds below the lowest level are zero.
        Per term, with t_L = 2^round(clamp(e, L, 0)) and lo the lowest level,
        2 t_{lo-1} - t_lo is t_lo where round(e) >= lo and 0 below, so the
        flushed sum is two clipped sums (exact per term; the sums round as any).
        """
        g2, x2 = self._rows2(g) * scale, self._rows2(x)
        lo = -(bits - 1)
        if flush:
            low = self._clipped_outer_sum(g2, x2, alpha, lo - 1)
            gW = low.mul_(2.0).sub_(self._clipped_outer_sum(g2, x2, alpha, lo))
        else:
            gW = self._clipped_outer_sum(g2, x2, alpha, lo)
        gW.mul_(alpha / scale)
        gb = None
        if self.bias is not None:
            gb = quantize(g2, alpha, bits, flush=flush).sum(-2).div_(scale)
        return gW, gb

    def _clipped_outer_sum(self, g2, x2, alpha, lo):
        """sum_n sign(g x) 2^round(clamp(log2|g_nj x_ni| - log2 alpha, lo, 0)), ([K,] out, in)."""
        n, out, inp = g2.shape[-2], g2.shape[-1], x2.shape[-1]
        lead = g2.shape[:-2]
        sg, sx = torch.sign(g2), torch.sign(x2)
        if lo == 0:  # one level: the sum is a product of sign matrices (exact)
            return sg.transpose(-1, -2) @ sx
        lg = g2.abs().log2_().sub_(math.log2(alpha))
        lx = x2.abs().log2_()
        if _qkernel.applicable(lg, lx):
            gW = _qkernel.quantized_outer_sum(lg, sg, lx, sx, lo)
            if gW is not None:
                return gW
        gW = g2.new_zeros(*lead, out, inp)
        step = max(1, _CHUNK_ELEMENTS // max(1, out * inp * (lead[0] if lead else 1)))
        for i in range(0, n, step):
            sl = slice(i, i + step)
            e = torch.add(lg[..., sl, :].unsqueeze(-1), lx[..., sl, :].unsqueeze(-2))
            e.clamp_(lo, 0).round_().exp2_()
            e.mul_(sg[..., sl, :].unsqueeze(-1)).mul_(sx[..., sl, :].unsqueeze(-2))
            gW += e.sum(-3)
        return gW


class FeedbackLinear(LinearOps, Site):
    """A linear layer trained by the learning channel of ``channel.algorithm``.

    Attributes: ``weight`` (out, in) or (K, out, in); ``bias``; ``feedback``: the
    learning channel's matrix for this layer's input (a buffer, or a parameter for
    adaptive algorithms; ``None`` for the first layer, for symmetric feedback and
    for top-layer-only), shape like ``weight`` for chained routes and
    (N_L, in) or (K, N_L, in) for the skipped route.
    """

    kind = "linear"
    per_synapse_defined = True
    can_be_skip_top = True
    skip_sign_defined = True

    def __init__(self, in_features, out_features, bias=True, ensemble=None, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.ensemble = in_features, out_features, ensemble
        lead = (ensemble,) if ensemble else ()
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(*lead, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(*lead, out_features, **kw)) if bias else None
        self._init_site_state()

    def chained_feedback_shape(self):
        return (self.out_features, self.in_features)

    def skip_width(self):
        return self.in_features

    def extra_repr(self):
        ens = f", ensemble={self.ensemble}" if self.ensemble else ""
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}{ens}{alg}"


class StackedLinear(LinearOps, nn.Module):
    """K independent linear layers applied as one batched matmul (plain autograd)."""

    def __init__(self, ensemble, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.ensemble = in_features, out_features, ensemble
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(ensemble, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(ensemble, out_features, **kw)) if bias else None

    def forward(self, x):
        return self.affine(x, self.weight, self.bias)

    def extra_repr(self):
        return f"ensemble={self.ensemble}, in_features={self.in_features}, " \
               f"out_features={self.out_features}, bias={self.bias is not None}"


def new_pass() -> Pass:
    return Pass()


class LinearAdapter(SiteAdapter):
    """``nn.Linear`` (and rbp's stacked ensemble layer) -> :class:`FeedbackLinear`."""

    name = "linear"

    def build(self, module, info):
        if overrides_forward(module, nn.Linear):      # a subclass with its own forward keeps it
            return shim(module, nn.Linear, FeedbackLinear)
        site = FeedbackLinear(module.in_features, module.out_features, bias=module.bias is not None,
                              ensemble=self.ensemble_of(module), device=module.weight.device,
                              dtype=module.weight.dtype)
        site.weight = module.weight
        site.bias = module.bias
        return site


LINEAR = LinearAdapter()
