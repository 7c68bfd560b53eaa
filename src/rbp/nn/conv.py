"""Convolutional sites: ``nn.Conv1d`` and ``nn.Conv2d`` layers served by the learning channel.

:class:`FeedbackConvNd` (with the named forms :class:`FeedbackConv1d` and
:class:`FeedbackConv2d`) is to a convolution what :class:`~rbp.nn.layers.FeedbackLinear`
is to ``nn.Linear``: its forward pass is the ordinary convolution, run inside the
same autograd ``Function`` (``rbp.nn.site.SiteFunction``), and its backward pass is the one
learning-channel step :func:`rbp.channel.backward.site_backward`.  That function only
calls the tensor algebra below (:class:`ConvOps`), so every algorithm, feedback
distribution and operator of the engine reaches conv layers without conv-specific
code in the channel.  See ``docs/conv.md``.

Layouts (single network, 2-D): input x (B, C, H, W), kernel W (O, C/G, kh, kw)
with G = ``groups``, signal g = dLoss/dS of shape (B, O, H', W').  A 1-D site is
the same algebra with one spatial dimension (x (B, C, L), W (O, C/G, k)), and a
grouped or depthwise convolution is the same algebra with G > 1: one code path,
parameterised by the number of spatial dimensions and the groups.

* chained routes (BP, RBP, ARBP, SBP): the feedback is a *kernel* of W's shape and
  the signal travels down as the transposed convolution with it
  (``conv2d_input``); with the forward kernel itself this is exactly backprop's
  "flipped kernel" convolution, so RBP with feedback := W equals BP.
* the skipped route (SRBP, ASRBP): the output error E (B, N_L) is projected by a
  matrix D of shape (N_L, C*H*W) onto the site's *input* map, i.e. the (pooled)
  output map of the layer below.

Ensembles (``ensemble=K``): K networks of the same shape side by side in the
*channels*.  Maps have the layout (B, K*C, H, W), member k owning channels
k*C .. (k+1)*C - 1; the kernel is (K, O, C/G, kh, kw) and every convolution is one
grouped convolution with K*G groups (group g of member k is group k*G + g).  Pooling and elementwise functions work per
channel, so they serve the members without knowing about them.
:class:`EnsembleFold` turns the trainer's (K, B, C, H, W) input into that layout
and :class:`EnsembleFlatten` turns a map into the (K, B, C*H*W) rows that
ensemble linear layers take.  Tensors that the channel keeps per network (skip
matrices, output errors) are (K, ...) as for linear sites.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv1d_input, conv1d_weight, conv2d_input, conv2d_weight

from ..channel import feedback as fb
from ..channel.quantize import quantize
from ..errors import ConfigError, UnsupportedModelError
from .layers import _CHUNK_ELEMENTS
from .registry import SiteAdapter
from .site import Site, overrides_forward, shim


def _channels_last(t) -> bool:
    """Whether a 4-D tensor is laid out channels-last (and not also plain contiguous)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store the 4-D kernels of ``model`` (weights, feedback kernels) channels-last, in place.

    Then every convolution of the forward pass, of the weight update and of the
    chained signal runs on channels-last maps (N, H, W, C in memory), which
    oneDNN's CPU kernels and max-pooling handle faster than NCHW maps
    (docs/performance.md, "The CIFAR-10 conv net").  The values are unchanged;
    only the strides differ, so ``state_dict`` keys, shapes and numbers stay as
    they were and the results agree with the NCHW model up to float rounding.
    Ensemble kernels (K, O, C, kh, kw) are left as they are.
    """
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def kernel_glorot_std(shape) -> float:
    """Glorot scaled-normal std of a conv kernel (O, C, kh, kw), as Keras computes it.

    fan_in = C*kh*kw, fan_out = O*kh*kw; std = sqrt(2 / (fan_in + fan_out)).
    """
    out_ch, in_ch, *k = shape
    field = math.prod(k)
    return math.sqrt(2.0 / (in_ch * field + out_ch * field))


def sample_kernel(spec: fb.FeedbackSpec, shape, *, generator=None, forward_sign=None,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """A random feedback kernel of ``shape`` (O, C/G, *k) for the chained routes (G = groups).

    The kernel is drawn as the (O, C/G*prod(k)) matrix whose rows are what one sending
    unit of the conv output map sends back to its receptive field (which lies in
    its own group's channels), so the backward fan-out is C/G*prod(k), one group's
    (sparse-N: Bernoulli(N / (C/G*prod(k))) entries,
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


_GRAD = {1: (conv1d_input, conv1d_weight), 2: (conv2d_input, conv2d_weight)}
_CONV = {1: F.conv1d, 2: F.conv2d}


class ConvOps:
    """The tensor algebra of a 1-D or 2-D, possibly grouped, convolutional site (single network or ensemble).

    Needs ``weight``, ``bias``, ``stride``, ``padding``, ``dilation``, ``groups``,
    ``dim`` (spatial dimensions, 1 or 2), ``ensemble`` (None or K) and ``channel``
    on the instance.  Every convolution runs with ``(ensemble or 1) * groups`` groups.
    """

    ensemble = None
    groups = 1
    dim = 2

    # ------------------------------------------------------------ ensemble layout helpers
    def _flat(self, t):
        """(K, O, ...) per-member tensor -> (K*O, ...) for a grouped convolution."""
        return t.flatten(0, 1) if self.ensemble and t is not None else t

    @property
    def _all_groups(self) -> int:
        return (self.ensemble or 1) * self.groups

    def to_members(self, t):
        """A map (B, K*C, ...) -> (K, B, C, ...) (a view); unchanged for a single network."""
        if not self.ensemble:
            return t
        B, KC = t.shape[:2]
        return t.view(B, self.ensemble, KC // self.ensemble, *t.shape[2:]).transpose(0, 1)

    def from_members(self, t):
        """(K, B, C, ...) -> the map (B, K*C, ...); unchanged for a single network."""
        if not self.ensemble:
            return t
        K, B, C = t.shape[:3]
        return t.transpose(0, 1).reshape(B, K * C, *t.shape[3:])

    def member_shape(self, x) -> tuple:
        """Shape of one network's share of a map of x's shape (what it would be alone)."""
        if not self.ensemble:
            return tuple(x.shape)
        return (x.shape[0], x.shape[1] // self.ensemble, *x.shape[2:])

    fold_members = from_members     # a per-member noise mask (K, B, C, ...) -> the map's layout

    # ------------------------------------------------------------ the site algebra
    def affine(self, x, weight, bias):
        return _CONV[self.dim](x, self._flat(weight), self._flat(bias), self.stride, self.padding, self.dilation,
                               self._all_groups)

    def output_shape(self, x) -> tuple:
        """Shape of the convolution's output for an input of x's shape."""
        d = self.dim
        sizes = [(n + 2 * p - dl * (k - 1) - 1) // s + 1 for n, p, dl, k, s in
                 zip(x.shape[-d:], self.padding, self.dilation, self.weight.shape[-d:], self.stride)]
        return (x.shape[0], self.weight.shape[-d - 2] * (self.ensemble or 1), *sizes)

    def rows(self, g) -> int:
        """Examples in the batch (per network)."""
        return g.shape[0]

    def grad_weight(self, g, x):
        if _channels_last(g) and not _channels_last(x):
            # a channels-last model (use_channels_last) on an NCHW input (the first layer): convert the
            # small input rather than let oneDNN convert the large signal map back to NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        shape = self._flat(self.weight).shape
        return _GRAD[self.dim][1](x, shape, g, self.stride, self.padding, self.dilation,
                                  self._all_groups).view(self.weight.shape)

    def grad_bias(self, g):
        gb = g.sum((0, *range(2, g.dim())))
        return gb.view(self.ensemble, -1) if self.ensemble else gb

    def sample_feedback(self, spec, shape, *, chained, generator, forward_sign, dtype, device):
        """Random kernels for chained routes; 2-D skip matrices as for linear sites (one network's)."""
        if chained and len(shape) == self.dim + 2:
            return sample_kernel(spec, shape, generator=generator, forward_sign=forward_sign,
                                 dtype=dtype, device=device)
        return fb.sample(spec, shape, chained=chained, generator=generator, forward_sign=forward_sign,
                         dtype=dtype, device=device)

    def grad_input(self, g, matrix, x):
        out = self.output_shape(x)
        if tuple(g.shape) != out:   # the product route (SBP) handing down a flattened signal
            if self.ensemble:       # (K, B, O*H'*W') rows of the ensemble linear layer above
                g = self.from_members(g.reshape(self.ensemble, out[0], -1, *out[2:]))
            else:
                g = g.reshape(out)
        return _GRAD[self.dim][0](x.shape, self._flat(matrix), g, self.stride, self.padding, self.dilation,
                                  self._all_groups)

    def skip(self, error, matrix, x):
        self.skip_shape_check(matrix, x)
        return self._deliver_skip(error @ matrix, x)

    def skip_shape_check(self, matrix, x):
        per_member = x[0].numel() // (self.ensemble or 1)
        if matrix.shape[-1] != per_member:
            raise ConfigError(f"the skip matrix of a conv layer was sized for an input map of {matrix.shape[-1]} "
                              f"units but the map has shape {self.member_shape(x)[1:]}; convert with an "
                              "example_input of the size you train on")

    def skip_sliced(self, error, projection, matrix, x):
        """:meth:`skip` from E^L C for the whole shared matrix C, of which ``matrix`` is the first columns."""
        self.skip_shape_check(matrix, x)
        return self._deliver_skip(projection[..., :matrix.shape[-1]], x)

    def _deliver_skip(self, J, x):
        """J = E^L C, (B, C*H*W) or (K, B, C*H*W) for an ensemble, as the input map."""
        if not self.ensemble:
            return J.reshape(x.shape)
        return self.from_members(J.reshape(self.ensemble, *self.member_shape(x)))

    def grad_skip(self, error, x):
        """dLoss/dD for ASRBP: E^L (O^h)^T, O^h the flattened input map, in D's orientation."""
        xm = self.to_members(x)
        return error.transpose(-1, -2) @ xm.flatten(-self.dim - 1)

    def per_example_update(self, g, x, alpha, bits, scale, flush=False):
        """(1/scale) sum_n Q(scale * dW_n): each example's kernel update quantized (Eq. 19) before the sum.

        dW_n = sum over output positions p of g_n[:, p] (x_n's patch at p)^T: a kernel
        weight is one synapse shared by all positions, so an example's update of it
        is the sum over positions, and that sum is what is quantized.  Formed from
        ``F.unfold`` patches (a 1-D map is a 2-D map of height 1), in chunks of
        examples.  ``unfold`` orders the patch rows group-major (channel, then kernel
        position), so the patches of the K*G groups (an ensemble's members, and each
        member's groups) are split off the unfolded channels, and each group's
        update is its own matmul in the batch.
        """
        G = self._all_groups
        B = g.shape[0]
        O = self.weight.shape[-self.dim - 2]
        k = tuple(self.weight.shape[-self.dim:])
        stride, padding, dilation = self.stride, self.padding, self.dilation
        if self.dim == 1:   # as a 2-D convolution over maps of height 1
            x = x.unsqueeze(-2)
            k, stride, padding, dilation = (1, *k), (1, *stride), (0, *padding), (1, *dilation)
        O_g = O * (self.ensemble or 1) // G                         # output channels per group
        g4 = g.reshape(B, G, O_g, -1) * scale                       # (B, K*G, O/G, P)
        patch = (x.shape[1] // G) * math.prod(k)
        gW = g.new_zeros(G, O_g, patch)
        step = max(1, _CHUNK_ELEMENTS // max(1, G * patch * max(O_g, g4.shape[-1])))
        for i in range(0, B, step):
            cols = F.unfold(x[i:i + step], k, dilation, padding, stride)   # (n, K*C*kh*kw, P)
            cols = cols.view(cols.shape[0], G, patch, -1)
            gW += quantize(torch.matmul(g4[i:i + step], cols.transpose(-1, -2)), alpha, bits, flush).sum(0)
        gb = None
        if self.bias is not None:
            gb = quantize(g4.sum(-1), alpha, bits, flush).sum(0).div_(scale).view(self.bias.shape)
        return gW.view(self.weight.shape).div_(scale), gb



def _tuple(value, dim) -> tuple:
    return nn.modules.utils._ntuple(dim)(value)


class FeedbackConvNd(ConvOps, Site):
    """An ``nn.Conv1d`` or ``nn.Conv2d`` (any ``groups``, zero padding) trained by the learning channel.

    One class for both: ``dim`` is the number of spatial dimensions (use the
    named forms :class:`FeedbackConv1d` and :class:`FeedbackConv2d`).
    Attributes: ``weight`` (O, C/groups, *k), or (K, O, C/groups, *k) with
    ``ensemble=K``; ``bias``; ``feedback``: a kernel of ``weight``'s shape for
    chained routes, a matrix ([K,] N_L, C*H*W) for the skipped route (C, H, W one
    network's input map), or ``None`` (first layer, symmetric feedback,
    top-layer-only).  An ensemble site takes and gives maps (B, K*C, ...).
    """

    dim = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 ensemble=None, device=None, dtype=None, groups=1):
        super().__init__()
        d = self.dim
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                              f"by groups ({groups})")
        self.in_channels, self.out_channels, self.ensemble, self.groups = in_channels, out_channels, ensemble, groups
        self.kernel_size, self.stride = _tuple(kernel_size, d), _tuple(stride, d)
        self.padding, self.dilation = _tuple(padding, d), _tuple(dilation, d)
        kw = dict(device=device, dtype=dtype)
        lead = (ensemble,) if ensemble else ()
        self.weight = nn.Parameter(torch.empty(*lead, out_channels, in_channels // groups, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.zeros(*lead, out_channels, **kw)) if bias else None
        self._init_site_state()
        self.input_shape = None   # one network's (C, H, W) input map, when known (needed by the skipped route)

    kind = "conv"

    def chained_feedback_shape(self):
        return tuple(self.weight.shape[1:] if self.ensemble else self.weight.shape)

    def skip_width(self):
        return None if self.input_shape is None else math.prod(self.input_shape)

    def keep_mask(self, noise, J, p):
        """Per-member noise in the map's layout: an ensemble's members share the map's channels."""
        return self.fold_members(noise.keep_mask(self.member_shape(J), p, J.dtype, J.device))

    @classmethod
    def from_conv(cls, conv) -> "FeedbackConvNd":
        """A site sharing the weight and bias Parameters of an ``nn.Conv1d``, ``nn.Conv2d`` or a stacked conv.

        Refuses what it cannot serve (padding modes other than zeros, asymmetric 'same' padding).
        """
        site_cls = {1: FeedbackConv1d, 2: FeedbackConv2d}[len(conv.kernel_size)]
        kind = type(conv).__name__
        if isinstance(conv, StackedConvNd):
            site = site_cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, ensemble=conv.ensemble,
                            device=conv.weight.device, dtype=conv.weight.dtype, groups=conv.groups)
            site.weight, site.bias = conv.weight, conv.bias
            return site
        if conv.padding_mode != "zeros":
            raise UnsupportedModelError(f"{kind} with padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0,) * len(conv.kernel_size)
            else:  # "same" with stride 1: symmetric only for odd effective kernels
                eff = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
                if any(e % 2 for e in eff):
                    raise UnsupportedModelError(f"{kind} with padding='same' and an even kernel (asymmetric "
                                                "padding) is not supported; pad explicitly")
                padding = tuple(e // 2 for e in eff)
        site = site_cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                        bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
                        groups=conv.groups)
        site.weight = conv.weight
        site.bias = conv.bias
        return site

    def extra_repr(self):
        ens = f", ensemble={self.ensemble}" if self.ensemble else ""
        grp = f", groups={self.groups}" if self.groups != 1 else ""
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}{grp}, bias={self.bias is not None}{ens}{alg}")


class FeedbackConv1d(FeedbackConvNd):
    """:class:`FeedbackConvNd` over one spatial dimension: the site of an ``nn.Conv1d``."""

    dim = 1


class FeedbackConv2d(FeedbackConvNd):
    """:class:`FeedbackConvNd` over two spatial dimensions: the site of an ``nn.Conv2d``."""

    dim = 2


class StackedConvNd(ConvOps, nn.Module):
    """K independent convolutions as one grouped convolution (plain autograd; what
    :func:`rbp.models.cifar_convnet` builds for ensembles before conversion).

    ``weight`` (K, O, C/groups, *k); input (B, K*C, ...), output (B, K*O, ...).
    Use the named forms :class:`StackedConv1d` and :class:`StackedConv2d`.
    """

    dim = 2

    def __init__(self, ensemble, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, device=None, dtype=None, groups=1):
        super().__init__()
        if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
            raise ConfigError(f"ensemble size must be a positive integer, got {ensemble!r}")
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                              f"by groups ({groups})")
        d = self.dim
        self.ensemble, self.in_channels, self.out_channels, self.groups = ensemble, in_channels, out_channels, groups
        self.kernel_size, self.stride = _tuple(kernel_size, d), _tuple(stride, d)
        self.padding, self.dilation = _tuple(padding, d), _tuple(dilation, d)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(ensemble, out_channels, in_channels // groups, *self.kernel_size,
                                               **kw))
        self.bias = nn.Parameter(torch.zeros(ensemble, out_channels, **kw)) if bias else None

    def forward(self, x):
        return self.affine(x, self.weight, self.bias)

    def extra_repr(self):
        grp = f", groups={self.groups}" if self.groups != 1 else ""
        return (f"ensemble={self.ensemble}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}{grp}, "
                f"bias={self.bias is not None}")


class StackedConv1d(StackedConvNd):
    """K independent ``Conv1d`` layers as one grouped convolution: input (B, K*C, L)."""

    dim = 1


class StackedConv2d(StackedConvNd):
    """K independent ``Conv2d`` layers as one grouped convolution: input (B, K*C, H, W)."""

    dim = 2


class EnsembleFold(nn.Module):
    """The ensemble's input (K, B, C, H, W) or (K, B, C, L) -> one map (B, K*C, ...), member k in channels k*C ..

    Its backward is the inverse permutation; nothing learns here.
    """

    def __init__(self, ensemble: int):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        if x.dim() not in (4, 5) or x.shape[0] != self.ensemble:
            raise ConfigError(f"an ensemble of {self.ensemble} conv networks takes inputs of shape "
                              f"({self.ensemble}, batch, C, H, W) or ({self.ensemble}, batch, C, L), "
                              f"got {tuple(x.shape)}")
        K, B, C = x.shape[:3]
        return x.transpose(0, 1).reshape(B, K * C, *x.shape[3:])

    def extra_repr(self):
        return f"ensemble={self.ensemble}"


class EnsembleFlatten(nn.Module):
    """An ensemble's map (B, K*C, H, W) -> rows (K, B, C*H*W) for the ensemble linear layers above.

    Member k's rows are exactly what ``nn.Flatten`` gives that network alone.
    """

    def __init__(self, ensemble: int):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        B = x.shape[0]
        return x.reshape(B, self.ensemble, -1).transpose(0, 1)

    def extra_repr(self):
        return f"ensemble={self.ensemble}"


class ConvAdapter(SiteAdapter):
    """``nn.Conv1d`` / ``nn.Conv2d`` (and rbp's stacked conv ensembles) -> :class:`FeedbackConvNd`."""

    name = "conv"

    def refuse(self, module):
        if isinstance(module, StackedConvNd):
            return None
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: only 'zeros' is supported"
        if module.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
            return "padding='same' with an even kernel (asymmetric padding) is not supported; pad explicitly"
        base = next((b for b in (nn.Conv1d, nn.Conv2d) if isinstance(module, b)), None)
        if base is not None and overrides_forward(module, base) and isinstance(module.padding, str):
            return f"padding={module.padding!r} in a subclass with its own forward; pad explicitly"
        return None

    def build(self, module, info):
        base = next((b for b in (nn.Conv1d, nn.Conv2d) if isinstance(module, b)), None)
        if base is not None and overrides_forward(module, base):     # a subclass with its own forward keeps it
            site = shim(module, base, FeedbackConv1d if base is nn.Conv1d else FeedbackConv2d)
            site.input_shape = None if info.input_shape is None else tuple(info.input_shape)
            return site
        site = FeedbackConvNd.from_conv(module)
        shape = info.input_shape          # an ensemble's map holds K networks' channels: keep one's
        site.input_shape = None if shape is None else (shape[0] // (info.ensemble or 1), *shape[1:])
        return site

    def out_width(self, module):
        return module.out_channels


CONV = ConvAdapter()
