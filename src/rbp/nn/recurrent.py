"""Recurrent layers served by the learning channel: ``nn.RNN`` (tanh, relu), ``nn.GRU``, ``nn.LSTM``.

:func:`convert_recurrent` turns a torch recurrent module into :class:`FeedbackRNN`,
:class:`FeedbackGRU` or :class:`FeedbackLSTM`: subclasses of the torch classes with the
same parameters under the same names (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``), the same arguments and the same return value
``(output, h_n)`` or ``(output, (h_n, c_n))``.  Each layer k has two *sites*, small
objects that drive the channel's one backward step
(:func:`rbp.channel.backward.site_backward`) for a weight the module owns:

* the input-to-hidden site (``weight_ih_l{k}``) runs once per pass on the whole
  sequence, x (T, B, in) -> W_ih x + b_ih (T, B, G*H), through ``SiteFunction``
  like a ``FeedbackLinear`` on a sequence;
* the hidden-to-hidden site (``weight_hh_l{k}``) is one weight used at T time steps.
  At each step the product W_hh h_{t-1} + b_hh runs through ``SiteFunction`` with a
  *step site* that only carries the signal back (through W_hh^T for bp, through the
  fixed matrix ``feedback_hh_l{k}`` for rbp, nothing on the skipped route); the
  weight's update over the whole sequence is formed once, by
  :class:`_SequenceUpdate`, from all T signals and inputs at once, so the update
  operators (sign-only, quantized, weight decay) see the summed update as BPTT sums it.

What every algorithm means through time is in docs/recurrent.md.  Feedback tensors are
registered on the module as ``feedback_ih_l{k}`` / ``feedback_hh_l{k}`` (buffers, or
parameters when adaptive).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from ..channel import feedback as fb
from ..channel.backward import SITE_NODES, feedback_matrix, site_backward
from ..channel.routes import route_of
from ..errors import ConfigError, UnsupportedModelError
from .layers import LinearOps
from .registry import SiteAdapter
from .site import ModuleView, SiteFunction

RECURRENT = (nn.RNN, nn.GRU, nn.LSTM)
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


def unsupported_reason(mod: nn.Module) -> str | None:
    """Why a torch recurrent module cannot be converted (None when it can)."""
    if mod.bidirectional:
        return "bidirectional=True"
    if getattr(mod, "proj_size", 0):
        return f"proj_size={mod.proj_size}"
    return None


class _RecurrentSite(LinearOps, ModuleView):
    """One weight matrix of a recurrent module as a site; the tensors stay on the module."""

    kind = "recurrent"
    backward_weight = None       # no distinct backward network reaches a recurrent layer (refused)

    def __init__(self, module, kind: str, layer: int):
        self._owner = module
        self.matrix = kind                      # "ih" or "hh"
        self.weight_name = f"weight_{kind}_l{layer}"
        self.bias_name = f"bias_{kind}_l{layer}" if module.bias else None
        self.feedback_name = f"feedback_{kind}_l{layer}"
        module.register_buffer(self.feedback_name, None)

    @property
    def module(self):
        return self._owner

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def chained_feedback_shape(self):
        return tuple(self.weight.shape)

    def skip_width(self):
        return self.in_features


class InputSite(_RecurrentSite):
    """``weight_ih_l{k}`` on the whole sequence; its input x is time-major (T, B, in).

    On the skipped route it delivers C E at its input, i.e. at the hidden states of
    the layer below (or at whatever feeds layer 0): at every time step for a
    per-step error, at the last step for a per-sequence error (docs/recurrent.md).
    """

    def _error_by_step(self, error, x):
        """The output error laid out like x's steps: (T, B, N_L), or (B, N_L) for the last step only."""
        T, B = x.shape[:2]
        n = error.shape[-1]
        if error.dim() == 2 and error.shape[0] == B:
            return None, error
        if error.dim() == 3:
            lead = (B, T) if self.module.batch_first else (T, B)
            if tuple(error.shape[:2]) == lead:
                return (error.transpose(0, 1) if self.module.batch_first else error), None
        layout = "(B, T, N)" if self.module.batch_first else "(T, B, N)"
        raise ConfigError(f"the skipped route needs the output error per sequence (B, N) or per time step "
                          f"{layout} to reach {self.weight_name}'s input; got shape {tuple(error.shape)} "
                          f"for T={T}, B={B}, N={n}")

    def skip(self, error, matrix, x):
        steps, last = self._error_by_step(error, x)
        if steps is not None:
            return steps @ matrix
        out = x.new_zeros(x.shape)
        out[-1] = last @ matrix
        return out

    def grad_skip(self, source, x):
        steps, last = self._error_by_step(source, x)
        if steps is not None:
            return self.grad_weight(steps, x)
        return last.transpose(0, 1) @ x[-1]


class HiddenSite(_RecurrentSite):
    """``weight_hh_l{k}``: its update over the whole sequence (x = h_0 .. h_{T-1}, (T, B, H))."""

    skip_receives = False        # the skipped route sends nothing back through W_hh

    def __init__(self, module, kind, layer):
        super().__init__(module, kind, layer)
        self.step = _StepSite(self)


class _StepSite:
    """The hidden-to-hidden site at one time step: carries the signal back, updates nothing.

    Its algorithm is the channel's with feedback that is refreshed every minibatch
    (resampled, sign-following) held fixed: the module refreshes it once per pass, in
    the forward, since the T steps share one matrix.
    """

    ensemble = None

    def __init__(self, site: HiddenSite):
        self.site = site
        self._cache = (None, None)

    @property
    def channel(self):
        return self.site.channel

    @property
    def algorithm(self):
        alg = self.site.algorithm
        if self._cache[0] is not alg:
            held = dataclasses.replace(alg, feedback=fb.FeedbackSpec("glorot-normal")) if alg.feedback.refreshed \
                else alg
            self._cache = (alg, held)
        return self._cache[1]

    def __getattr__(self, name):     # weight, bias, feedback, the tensor algebra
        site = self.__dict__.get("site")
        if site is None:
            raise AttributeError(name)
        return getattr(site, name)


class _SequenceUpdate(torch.autograd.Function):
    """The hidden-to-hidden weight's update over all T steps, formed once per pass.

    Forward: zeros (T, B, G*H), added to the step products, so that the signal
    dLoss/d(W_hh h_{t-1} + b_hh) of every step t arrives here as one tensor.
    ``inputs`` is the list the forward loop fills with h_0 .. h_{T-1}.
    """

    @staticmethod
    def forward(weight, bias, fbk, site, pas, position, inputs, shape):
        return weight.new_zeros(shape)

    @staticmethod
    def setup_context(ctx, inputs_, output):
        weight, _, fbk, site, pas, position, inputs, _ = inputs_
        ctx.site, ctx.pas, ctx.position, ctx.inputs = site, pas, position, inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(weight, fbk)

    @staticmethod
    def backward(ctx, g):
        weight, fbk = ctx.saved_tensors
        if g is None:
            return (None,) * 8
        x = torch.stack(ctx.inputs)
        _, gW, gb, gF = site_backward(ctx.site, ctx.pas, ctx.position, g, x, weight, fbk,
                                      (False, *ctx.needs_input_grad[:3]))
        return gW, gb, gF, None, None, None, None, None


SITE_NODES.add(_SequenceUpdate._backward_cls)   # a site in the graph, for the Pass's output-site search


def _cell(mode, gi, gh, h, c):
    """One step of torch's cells from the two products gi = W_ih x + b_ih and gh = W_hh h + b_hh."""
    if mode == "RNN_TANH":
        return torch.tanh(gi + gh), None
    if mode == "RNN_RELU":
        return torch.relu(gi + gh), None
    if mode == "GRU":
        ir, iz, i_n = gi.chunk(3, -1)
        hr, hz, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, None
    i, f, g, o = (gi + gh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class FeedbackRecurrent:
    """What the three converted recurrent classes share (mixed in before the torch class)."""

    channel = None
    kind = "recurrent"
    per_synapse_defined = can_be_skip_top = skip_sign_defined = False   # refused as Site flags say

    def _setup_sites(self):
        self.channel = None
        self.rbp_sites = []
        for k in range(self.num_layers):
            self.rbp_sites += [InputSite(self, "ih", k), HiddenSite(self, "hh", k)]

    @classmethod
    def from_module(cls, mod: nn.Module):
        w = mod.weight_ih_l0
        kw = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first, dropout=mod.dropout,
                  device=w.device, dtype=w.dtype)
        if mod.mode.startswith("RNN_"):
            kw["nonlinearity"] = mod.nonlinearity
        new = cls(mod.input_size, mod.hidden_size, **kw)
        for name in mod._flat_weights_names:
            setattr(new, name, getattr(mod, name))
        new.train(mod.training)
        return new

    def forward(self, input, hx=None):
        if self.channel is None:                 # not converted: torch's own
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            raise UnsupportedModelError(f"{type(self).__name__} under rbp.convert takes padded tensors, "
                                        "not a PackedSequence")
        lstm = self.mode == "LSTM"
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[:2]
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            zeros = x.new_zeros(L, B, H)
            h0, c0 = zeros, (zeros if lstm else None)
        else:
            h0, c0 = hx if lstm else (hx, None)
            if not batched:
                h0, c0 = h0.unsqueeze(1), (None if c0 is None else c0.unsqueeze(1))
        alg = self.channel.algorithm
        chained = route_of(alg).chained       # the signal travels back through W_hh (or its feedback)
        pas = self.channel.current_pass()
        layer_input, hn, cn = x, [], []
        for k in range(L):
            ih, hh = self.rbp_sites[2 * k], self.rbp_sites[2 * k + 1]
            ih.materialize(layer_input)
            gi = SiteFunction.apply(layer_input, ih.weight, ih.bias, ih.feedback, ih, pas, pas.enter(ih, layer_input))
            W, b, fbk = hh.weight, hh.bias, hh.feedback
            if fbk is not None and alg.feedback.refreshed and torch.is_grad_enabled():
                with torch.no_grad():          # once per pass for all T steps
                    feedback_matrix(hh, W, fbk, pas.probe)
            inputs = []
            upd = _SequenceUpdate.apply(W, b, fbk, hh, pas, pas.enter(hh), inputs, (T, B, W.shape[0]))
            Wd, bd, fd = W.detach(), (None if b is None else b.detach()), (None if fbk is None else fbk.detach())
            h, c = h0[k], (c0[k] if lstm else None)
            outs = []
            for t, (gi_t, upd_t) in enumerate(zip(gi.unbind(0), upd.unbind(0))):
                inputs.append(h.detach())
                if chained:      # the signal through W_hh^T or its feedback; no update here
                    gh = SiteFunction.apply(h, Wd, bd, fd, hh.step, pas, pas.enter(hh.step, h))
                else:            # skipped route (and top): nothing travels back through W_hh
                    gh = F.linear(h.detach(), Wd, bd)
                h, c = _cell(self.mode, gi_t, gh + upd_t, h, c)
                outs.append(h)
            out = torch.stack(outs)
            hn.append(h)
            cn.append(c)
            if self.dropout and self.training and k < L - 1:
                out = F.dropout(out, self.dropout, True)
            layer_input = out
        out, h_n = layer_input, torch.stack(hn)
        c_n = torch.stack(cn) if lstm else None
        if not batched:
            out, h_n, c_n = out.squeeze(1), h_n.squeeze(1), (None if c_n is None else c_n.squeeze(1))
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, ((h_n, c_n) if lstm else h_n)

    def extra_repr(self):
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return super().extra_repr() + alg


class FeedbackRNN(FeedbackRecurrent, nn.RNN):
    """``nn.RNN`` (tanh or relu) trained by the learning channel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_sites()


class FeedbackGRU(FeedbackRecurrent, nn.GRU):
    """``nn.GRU`` trained by the learning channel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_sites()


class FeedbackLSTM(FeedbackRecurrent, nn.LSTM):
    """``nn.LSTM`` (proj_size=0) trained by the learning channel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_sites()


_CLASSES = {nn.RNN: FeedbackRNN, nn.GRU: FeedbackGRU, nn.LSTM: FeedbackLSTM}


def convert_recurrent(mod: nn.Module) -> FeedbackRecurrent:
    """The converted module holding ``mod``'s parameters (the same objects)."""
    for torch_cls, cls in _CLASSES.items():
        if type(mod) is torch_cls or isinstance(mod, torch_cls):
            return cls.from_module(mod)
    raise UnsupportedModelError(f"{type(mod).__name__} is not a recurrent layer rbp converts")  # pragma: no cover


def check_options(alg, layers) -> None:
    """Refuse what the learning channel does not define for recurrent layers (one line each)."""
    rec = [(i, n, m) for i, (n, m) in enumerate(layers) if isinstance(m, RECURRENT)]
    if not rec:
        return
    i, name, mod = rec[0]
    what = f"{type(mod).__name__} {name or 'model'!r}"
    top_i, top_name, top = len(layers) - 1, *layers[-1]
    if isinstance(top, RECURRENT):
        raise UnsupportedModelError(f"the top weight layer is {type(top).__name__} {top_name or 'model'!r}; rbp "
                                    "needs a linear readout as the output layer (end the network with nn.Linear)")
    route = route_of(alg)
    if route.matrices_only:
        raise ConfigError(f"{alg.name} is not defined with a recurrent layer ({what}): its product route passes the "
                          "signal through transposed forward matrices with the derivatives between them left "
                          "out, and through time those are the cell's own gates (use bp, rbp or srbp)")
    if alg.feedback.per_synapse:
        raise ConfigError(f"feedback 'per-synapse' is not defined for recurrent layers ({what}): a synapse reads "
                          "the output error where it acts, and a recurrent weight acts at every time step, "
                          "where the error may not exist")
    if not alg.derivative:
        raise ConfigError(f"derivative=False (no f') is not defined inside a recurrent cell ({what}): the cell's "
                          "units are not separate activation modules whose derivative could be left out")
    if route.follows_forward_product:
        raise ConfigError(f"feedback {alg.feedback.kind!r} with {alg.name} needs the product of the forward "
                          f"matrices above each layer, which is not defined across a recurrent layer ({what})")
    m = len(alg.backward_hidden)
    if m and any(isinstance(mm, RECURRENT) for _, mm in layers[len(layers) - m:]):
        raise ConfigError(f"a distinct learning network of {m} layer(s) is held by the top {m} weight layer(s), "
                          f"and {what} is among them; use fewer backward_hidden layers")


class RecurrentAdapter(SiteAdapter):
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` -> the Feedback classes above: one site per weight matrix."""

    name = "recurrent"

    def refuse(self, module):
        return unsupported_reason(module)

    def check(self, alg, name, module, context):
        check_options(alg, context.layers)

    def build(self, module, info):
        return convert_recurrent(module)

    def sites(self, built):
        return list(built.rbp_sites)

    def out_width(self, module):
        return module.hidden_size


RECURRENT_ADAPTER = RecurrentAdapter()
