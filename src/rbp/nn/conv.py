"""Convolutional sites: ``nn.Conv2d`` layers served by the learning channel.

:class:`FeedbackConv2d` is to ``nn.Conv2d`` what :class:`~rbp.nn.layers.FeedbackLinear`
is to ``nn.Linear``: its forward pass is the ordinary convolution, run inside the
same autograd ``Function`` (``_SiteFunction``), and its backward pass is the one
learning-channel step :func:`rbp.channel.backward.site_backward`.  That function only
calls the tensor algebra below (:class:`ConvOps`), so every algorithm, feedback
distribution and operator of the engine reaches conv layers without conv-specific
code in the channel.  See ``docs/conv.md``.

Layouts (single network): input x (B, C, H, W), kernel W (O, C, kh, kw),
signal g = dLoss/dS of shape (B, O, H', W').

* chained routes (BP, RBP, ARBP, SBP): the feedback is a *kernel* of W's shape and
  the signal travels down as the transposed convolution with it
  (``conv2d_input``); with the forward kernel itself this is exactly backprop's
  "flipped kernel" convolution, so RBP with feedback := W equals BP.
* the skipped route (SRBP, ASRBP): the output error E (B, N_L) is projected by a
  matrix D of shape (N_L, C*H*W) onto the site's *input* map, i.e. the (pooled)
  output map of the layer below.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from ..channel import feedback as fb
from ..channel.quantize import quantize
from ..errors import ConfigError, UnsupportedModelError
from .layers import FeedbackLinear, _CHUNK_ELEMENTS


def kernel_glorot_std(shape) -> float:
    """Glorot scaled-normal std of a conv kernel (O, C, kh, kw), as Keras computes it.

    fan_in = C*kh*kw, fan_out = O*kh*kw; std = sqrt(2 / (fan_in + fan_out)).
    """
    out_ch, in_ch, *k = shape
    field = math.prod(k)
    return math.sqrt(2.0 / (in_ch * field + out_ch * field))


def sample_kernel(spec: fb.FeedbackSpec, shape, *, generator=None, forward_sign=None,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """A random feedback kernel of ``shape`` (O, C, kh, kw) for the chained routes.

    The kernel is drawn as the (O, C*kh*kw) matrix whose rows are what one sending
    unit of the conv output map sends back to its receptive field, so the
    backward fan-out is C*kh*kw (sparse-N: Bernoulli(N / (C*kh*kw)) entries,
    scaled by 1/N as chained sparse RBP is).  Dense distributions get the
    kernel's Glorot variance (:func:`kernel_glorot_std`), like the forward kernels.
    """
    out_ch = shape[0]
    mat = (out_ch, math.prod(shape[1:]))
    sign = None if forward_sign is None else forward_sign.reshape(mat)
    t = fb.sample(spec, mat, chained=True, generator=generator, forward_sign=sign, dtype=dtype, device=device)
    if spec.kind != "sparse":
        t.mul_(kernel_glorot_std(shape) / fb.glorot_std(mat))
    return t.reshape(shape)


class ConvOps:
    """The tensor algebra of a 2-D convolutional site (single network).

    Needs ``weight``, ``bias``, ``stride``, ``padding``, ``dilation`` and
    ``channel`` on the instance.
    """

    ensemble = None

    def affine(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def output_shape(self, x) -> tuple:
        """Shape of the convolution's output for an input of x's shape."""
        hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
              zip(x.shape[-2:], self.padding, self.dilation, self.weight.shape[-2:], self.stride)]
        return (x.shape[0], self.weight.shape[0], *hw)

    def rows(self, g) -> int:
        """Examples in the batch."""
        return g.shape[0]

    def grad_weight(self, g, x):
        return conv2d_weight(x, self.weight.shape, g, self.stride, self.padding, self.dilation)

    def grad_bias(self, g):
        return g.sum((0, 2, 3))

    def sample_feedback(self, spec, shape, *, chained, generator, forward_sign, dtype, device):
        """Random kernels for chained routes; 2-D skip matrices as for linear sites."""
        if chained and len(shape) == 4:
            return sample_kernel(spec, shape, generator=generator, forward_sign=forward_sign,
                                 dtype=dtype, device=device)
        return fb.sample(spec, shape, chained=chained, generator=generator, forward_sign=forward_sign,
                         dtype=dtype, device=device)

    def grad_input(self, g, matrix, x):
        if g.dim() != 4:   # the product route (SBP) hands down the signal of a Flatten'ed map
            g = g.reshape(self.output_shape(x))
        return conv2d_input(x.shape, matrix, g, self.stride, self.padding, self.dilation)

    def skip(self, error, matrix, x):
        if matrix.shape[-1] != x[0].numel():
            raise ConfigError(f"the skip matrix of a conv layer was sized for an input map of {matrix.shape[-1]} "
                              f"units but the map has shape {tuple(x.shape[1:])}; convert with an example_input "
                              "of the size you train on")
        return (error @ matrix).reshape(x.shape)

    def grad_skip(self, error, x):
        """dLoss/dD for ASRBP: E^L (O^h)^T, O^h the flattened input map, in D's orientation."""
        return error.transpose(-1, -2) @ x.reshape(x.shape[0], -1)

    def per_example_update(self, g, x, alpha, bits, scale):
        """(1/scale) sum_n Q(scale * dW_n): each example's kernel update quantized (Eq. 19) before the sum.

        dW_n = sum over output positions p of g_n[:, p] (x_n's patch at p)^T: a kernel
        weight is one synapse shared by all positions, so an example's update of it
        is the sum over positions, and that sum is what is quantized.  Formed from
        ``F.unfold`` patches, in chunks of examples.
        """
        B, O = g.shape[0], g.shape[1]
        k = self.weight.shape[2:]
        g3 = g.reshape(B, O, -1) * scale
        patch = x.shape[1] * math.prod(k)
        gW = g.new_zeros(O, patch)
        step = max(1, _CHUNK_ELEMENTS // max(1, patch * max(O, g3.shape[-1])))
        for i in range(0, B, step):
            cols = F.unfold(x[i:i + step], k, self.dilation, self.padding, self.stride)   # (n, C*kh*kw, P)
            gW += quantize(torch.bmm(g3[i:i + step], cols.transpose(1, 2)), alpha, bits).sum(0)
        gb = quantize(g3.sum(-1), alpha, bits).sum(0).div_(scale) if self.bias is not None else None
        return gW.view(self.weight.shape).div_(scale), gb

    def per_synapse_update(self, error, g, x, P):  # pragma: no cover - refused by convert()
        raise NotImplementedError("per-synapse feedback is not defined for conv layers")


class FeedbackConv2d(ConvOps, nn.Module):
    """An ``nn.Conv2d`` (groups=1, zero padding) trained by the learning channel.

    Attributes: ``weight`` (O, C, kh, kw); ``bias``; ``feedback``: a kernel of
    ``weight``'s shape for chained routes, a matrix (N_L, C*H*W) for the skipped
    route (H, W the size of this layer's input map), or ``None`` (first layer,
    symmetric feedback, top-layer-only).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 device=None, dtype=None):
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        self.register_buffer("feedback", None)
        self.channel = None
        self.input_shape = None   # (C, H, W) of the input map, when known (needed by the skipped route)

    algorithm = FeedbackLinear.algorithm
    set_feedback = FeedbackLinear.set_feedback

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "FeedbackConv2d":
        """A site sharing ``conv``'s weight and bias Parameters (refuses what it cannot serve)."""
        if conv.groups != 1:
            raise UnsupportedModelError(f"Conv2d with groups={conv.groups}: only groups=1 is supported")
        if conv.padding_mode != "zeros":
            raise UnsupportedModelError(f"Conv2d with padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # "same" with stride 1: symmetric only for odd effective kernels
                eff = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
                if any(e % 2 for e in eff):
                    raise UnsupportedModelError("Conv2d with padding='same' and an even kernel (asymmetric "
                                                "padding) is not supported; pad explicitly")
                padding = tuple(e // 2 for e in eff)
        site = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                   bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        site.weight = conv.weight
        site.bias = conv.bias
        return site

    forward = FeedbackLinear.forward   # the same site forward: affine map, learning channel backward

    def extra_repr(self):
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}{alg}")
