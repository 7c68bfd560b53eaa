"""How well the learning channel aligns with the true gradient (paper 1, section 6; Lillicrap et al.).

Measured on a fixed probe batch, per hidden layer h = 1 .. L-1, for every
algorithm: :func:`alignment` for the fused driver's plain stacks,
:func:`model_alignment` for any converted model on the autograd driver (conv
nets, structural layers, ensembles):

``signal_angle_h``
    angle in degrees between the signal the channel delivers to layer h,
    I^h, and backpropagation's delta B^h = dLoss/dS^h, over the whole batch;
``update_angle_h``
    angle between the channel's update of W^h and the true gradient;
``feedback_angle_h``, ``feedback_norm_ratio_h``
    for random feedback: angle and norm ratio between the matrix that carries
    the signal to layer h and the forward matrix it replaces (its *mirror*,
    paper 2's weight symmetry): W^{h+1} for the conjoined and twin channels
    (chained and product routes), the product W^L ... W^{h+1} for the skipped
    route; for a distinct network with hidden layers the carrier is its
    end-to-end matrix V^1 ... V^k C^h from E^L to layer h (exact for linear
    backward units, the linearisation at zero otherwise).

For a conv layer the signal is its whole output map S^h (before pooling and
f'), over the batch.  The feedback figures need the mirror to exist: a kernel's
mirror is the forward kernel of the layer above (chained and product routes);
on the skipped route the product W^L ... W^{h+1} is only defined when every
weight layer above h is linear, and the figures are NaN otherwise.

The probe draws no noise and resamples nothing, so switching diagnostics on
does not change training.  90 degrees is chance; 0 is perfect alignment.

:class:`Settling` measures whether the learning equations settle (paper 2):
per epoch, the relative change ||W_t - W_{t-1}|| / ||W_t|| of every weight
layer i = 1 .. L (``weight_change_i``) and of every adaptive feedback matrix
(``feedback_change_h``, h as above).
"""

from __future__ import annotations

import math

import torch

from contextlib import contextmanager

import torch.nn.functional as F

from .nn.activations import NoDerivative
from .channel.routes import route_of


def _angle(a: torch.Tensor, b: torch.Tensor, ensemble: bool):
    """Angle in degrees between a and b (per ensemble member when ``ensemble``)."""
    if ensemble:
        a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    else:
        a, b = a.reshape(1, -1).double(), b.reshape(1, -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).tolist()


def _ratio(a, b, ensemble):
    if ensemble:
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    else:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    return (a.double().norm(dim=1) / b.double().norm(dim=1).clamp_min(1e-300)).tolist()


def alignment(fused, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Alignment figures of the fused driver's network: :func:`model_alignment` of its model.

    One implementation serves both drivers: the figures come from the converted
    module's autograd pass, which the fused driver is tested to equal.
    """
    return model_alignment(fused.model, x, y)


def _layer_figures(put, alg, sites, h, received, delta, update, true_update, ens, K):
    """The figures of hidden layer h (the output of ``sites[h-1]``); tensors per member when ``ens``."""
    if alg.feedback.per_synapse and update is not None:   # the signal is per synapse: no I^h
        put(f"signal_angle_{h}", [math.nan] * K)
        put(f"update_angle_{h}", _angle(update, true_update, ens))
    elif update is None or true_update is None:
        put(f"signal_angle_{h}", [math.nan] * K)
        put(f"update_angle_{h}", [math.nan] * K)
    else:       # a matrix kept by its module has no output of its own to observe: no signal figure
        put(f"signal_angle_{h}", [math.nan] * K if received is None or delta is None else _angle(received, delta, ens))
        put(f"update_angle_{h}", _angle(update, true_update, ens))
    route = route_of(alg)
    carrier = route.carrier(sites, h) if alg.random_feedback else None
    if carrier is not None:
        mirror = route.mirror(sites, h)
        if mirror is None or mirror.shape != carrier.shape:   # not defined across conv layers
            put(f"feedback_angle_{h}", [math.nan] * K)
            put(f"feedback_norm_ratio_{h}", [math.nan] * K)
        else:
            put(f"feedback_angle_{h}", _angle(carrier, mirror, ens))
            put(f"feedback_norm_ratio_{h}", _ratio(carrier, mirror, ens))


def _members(site, t):
    """A site's output in per-member layout (K, ...): conv ensembles keep members in the channels."""
    if t is None or not site.ensemble:
        return t
    return site.to_members(t)


def _loss(logits, y):
    """The trainer's loss: batch-mean cross-entropy per network, summed over an ensemble's members."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum") / y.shape[1]
    return F.cross_entropy(logits, y)


@contextmanager
def _plain_autograd(model, sites):
    """The converted model run by plain autograd: sites without their channel, f' where "no f'" skipped it."""
    channels = [s.channel for s in sites]
    wrapped = [m for m in model.modules() if isinstance(m, NoDerivative)]
    try:
        for s in sites:
            s.channel = None
        for m in wrapped:
            m.forward = m.inner.forward
        yield
    finally:
        for s, c in zip(sites, channels):
            s.channel = c
        for m in wrapped:
            del m.forward


def _probe_gradients(model, sites, x, y, probe_pass=None):
    """dLoss/dS at every site's output and dLoss/dW of every weight, by one forward and backward.

    ``probe_pass`` marks the learning channel's pass as a probe (no noise, no resampling).
    """
    outputs = {}
    # a site that is a module of its own is observed at its output; a matrix kept by its module
    # (attention's in_proj, a recurrent layer's) has no output of its own to observe: its signal
    # figure is NaN, its update figure is defined as for any site
    hooks = [s.register_forward_hook(lambda mod, i, o, k=k: outputs.__setitem__(k, o))
             for k, s in enumerate(sites) if isinstance(s, torch.nn.Module)]
    try:
        with torch.enable_grad():
            logits = model(x)
            if probe_pass is not None:
                probe_pass()
            weights = [s.weight for s in sites if s.weight.requires_grad]
            seen = sorted(k for k, o in outputs.items() if isinstance(o, torch.Tensor) and o.requires_grad)
            got = torch.autograd.grad(_loss(logits, y), [outputs[k] for k in seen] + weights, allow_unused=True)
    finally:
        for hk in hooks:
            hk.remove()
    signals = [None] * len(sites)
    for k, g in zip(seen, got[:len(seen)]):
        signals[k] = g
    it = iter(got[len(seen):])
    updates = [next(it) if s.weight.requires_grad else None for s in sites]
    return signals, updates


def model_alignment(model, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Alignment figures of a model converted by :func:`rbp.convert`, on the probe batch (x, y).

    The channel's signal dLoss/dS^h at every site's output and its updates come
    from one forward and backward pass of the model, marked as a probe; the true
    gradient from plain autograd through the same forward (the sites' channels
    detached, "no f'" wrappers differentiating).  Both run in eval mode (forward
    dropout off, BatchNorm on its running statistics), so nothing random is drawn
    and no running statistic changes; ``.grad`` is not touched.  One dict per
    network (ensemble member); the keys are those of :func:`alignment`.
    """
    channel = model.rbp_channel
    sites = channel.sites
    alg = channel.algorithm
    K = sites[0].ensemble or 1
    ens = bool(sites[0].ensemble)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        received, updates = _probe_gradients(model, sites, x, y,
                                             lambda: setattr(channel.current_pass(), "probe", True))
        with _plain_autograd(model, sites):
            deltas, true_updates = _probe_gradients(model, sites, x, y)
    finally:
        for m, mode in modes.items():
            m.training = mode
    out = [dict() for _ in range(K)]

    def put(key, values):
        for k, v in enumerate(values):
            out[k][key] = v

    with torch.no_grad():
        for h in range(1, len(sites)):
            s = sites[h - 1]
            _layer_figures(put, alg, sites, h, _members(s, received[h - 1]), _members(s, deltas[h - 1]),
                           updates[h - 1], true_updates[h - 1], ens, K)
    return out


class Settling:
    """Relative change of the forward weights and adaptive feedback since the previous call.

    ``Settling(model)`` remembers the model's matrices; each call returns, per
    network (ensemble member), ``weight_change_i`` = ||W_t - W_{t-1}|| / ||W_t||
    for weight layer i = 1 .. L and ``feedback_change_h`` for the adaptive
    feedback matrix that reaches hidden layer h, then remembers the new values.
    Values that keep falling towards 0 mean the learning equations settle.
    """

    def __init__(self, model):
        sites = model.rbp_channel.sites
        self.tensors = {f"weight_change_{i + 1}": s.weight for i, s in enumerate(sites)}
        for i, s in enumerate(sites):
            if isinstance(s.feedback, torch.nn.Parameter):
                self.tensors[f"feedback_change_{i}"] = s.feedback
        self.ensemble = bool(sites[0].ensemble)
        self.previous = {k: t.detach().clone() for k, t in self.tensors.items()}

    @torch.no_grad()
    def __call__(self) -> list[dict]:
        out = None
        for key, t in self.tensors.items():
            ratio = _ratio(t - self.previous[key], t, self.ensemble)
            out = out or [dict() for _ in ratio]
            for k, v in enumerate(ratio):
                out[k][key] = v
            self.previous[key].copy_(t)
        return out
