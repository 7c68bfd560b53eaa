"""Hugging Face's ``Conv1D`` (GPT-2, GPT-J's ancestors, ...) as a site of the learning channel.

Despite its name, ``transformers.pytorch_utils.Conv1D`` is a linear layer whose weight is
stored transposed: ``weight`` has shape (in, out) (``nx``, ``nf``) and the forward map is
``x @ weight + bias``.  :class:`FeedbackHFConv1D` is :class:`~rbp.nn.layers.FeedbackLinear`'s
algebra with that orientation: updates, feedback and the chained signal are computed in the
(in, out) layout the module stores, so the parameter names, shapes and ``state_dict`` keys stay
the module's (``weight``, ``bias``).  Feedback on the chained routes has the weight's (in, out)
shape; it is drawn as the (out, in) matrix every other linear site draws (same distribution,
same fan-out) and stored transposed.  The skipped route's matrix reaches the input, (N_L, in),
as for a linear site.

The module is recognised by its class name and attributes (no import of ``transformers``), so
rbp does not depend on it.  This file and one line in :mod:`rbp.nn.registry` are all it takes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..channel import feedback as fb
from .layers import FeedbackLinear
from .registry import SiteAdapter


def is_hf_conv1d(module: nn.Module) -> bool:
    """A ``transformers`` ``Conv1D``: weight (nx, nf), forward x @ weight + bias."""
    return (type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")
            and hasattr(module, "nf") and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() == 2 and module.weight.shape[1] == module.nf)


class FeedbackHFConv1D(FeedbackLinear):
    """A Hugging Face ``Conv1D`` trained by the learning channel: ``weight`` (in, out), ``bias`` (out,)."""

    kind = "linear"
    per_synapse_defined = False     # the per-synapse tensors are laid out for an (out, in) weight

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.ensemble = in_features, out_features, None
        self.nf, self.nx = out_features, in_features
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(in_features, out_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self._init_site_state()

    # the transposed orientation ---------------------------------------------------------------
    def forward_matrix(self, weight):
        return weight.t()

    def affine(self, x, weight, bias):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = x2 @ weight if bias is None else torch.addmm(bias, x2, weight)
        return out.view(*lead, weight.shape[1])

    def grad_weight(self, g, x):
        return self._rows2(x).transpose(-1, -2) @ self._rows2(g)

    def grad_input(self, g, matrix, x):
        return g @ matrix.transpose(-1, -2)

    def per_example_update(self, g, x, alpha, bits, scale, flush=False):
        gW, gb = super().per_example_update(g, x, alpha, bits, scale, flush)
        return gW.transpose(-1, -2).contiguous(), gb

    def chained_feedback_shape(self):
        return (self.in_features, self.out_features)

    def sample_feedback(self, spec, shape, *, chained, generator, forward_sign, dtype, device):
        if chained:          # drawn as the (out, in) matrix of a linear layer, stored as (in, out)
            sign = None if forward_sign is None else forward_sign.t()
            t = fb.sample(spec, (shape[1], shape[0]), chained=True, generator=generator, forward_sign=sign,
                          dtype=dtype, device=device)
            return t.t().contiguous()
        return fb.sample(spec, shape, chained=False, generator=generator, forward_sign=forward_sign,
                         dtype=dtype, device=device)

    def extra_repr(self):
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return f"nf={self.nf}, nx={self.nx}{alg}"


class HFConv1DAdapter(SiteAdapter):
    """``transformers`` ``Conv1D`` -> :class:`FeedbackHFConv1D` (the same Parameter objects)."""

    name = "hf-conv1d"

    def build(self, module, info):
        nx, nf = module.weight.shape
        site = FeedbackHFConv1D(nx, nf, bias=module.bias is not None, device=module.weight.device,
                                dtype=module.weight.dtype)
        site.weight = module.weight
        site.bias = module.bias
        return site

    def out_width(self, module):
        return module.weight.shape[1]


HF_CONV1D = HFConv1DAdapter()
