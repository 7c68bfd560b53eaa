"""How well the learning channel aligns with the true gradient (paper 1, section 6; Lillicrap et al.).

Measured on a fixed probe batch, per hidden layer h = 1 .. L-1 of a converted
plain stack (the fused driver's networks), for every algorithm:

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

from .nn.fused import FusedNetwork, softmax_xent_grad


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


@torch.no_grad()
def alignment(fused: FusedNetwork, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Alignment figures on the probe batch (x, y); one dict per network (ensemble member)."""
    stages = fused.stages
    ens = bool(stages[0].site.ensemble)
    K = stages[0].site.weight.shape[0] if ens else 1
    cache: list = []
    logits = fused.forward(x, keep=cache)
    G = softmax_xent_grad(logits, y)
    received, updates = fused.backward(G, cache, probe=True)
    deltas, true_updates = fused.true_gradient(G, cache)
    alg = stages[0].site.algorithm
    out = [dict() for _ in range(K)]

    def put(key, values):
        for k, v in enumerate(values):
            out[k][key] = v

    for h in range(1, len(stages)):          # hidden layer h is the output of stage h-1
        i = h - 1
        if alg.feedback.per_synapse and updates[i] is not None:   # the signal is per synapse: no I^h
            put(f"signal_angle_{h}", [math.nan] * K)
            put(f"update_angle_{h}", _angle(updates[i], true_updates[i], ens))
        elif received[i] is None or updates[i] is None:
            put(f"signal_angle_{h}", [math.nan] * K)
            put(f"update_angle_{h}", [math.nan] * K)
        else:
            put(f"signal_angle_{h}", _angle(received[i], deltas[i], ens))
            put(f"update_angle_{h}", _angle(updates[i], true_updates[i], ens))
        if alg.random_feedback and not alg.feedback.per_synapse:
            carrier = stages[h].site.feedback
            m = len(alg.backward_hidden)
            if alg.route == "skip" and m:       # D^0 = E^L -> V^1 ... V^k -> C^h, in C's orientation
                for k in range(min(len(stages) - h, m), 0, -1):
                    carrier = stages[len(stages) - k].site.backward_weight @ carrier
            if alg.route == "skip":
                mirror = stages[-1].site.weight
                for st in reversed(stages[h:-1]):
                    mirror = mirror @ st.site.weight
            else:
                mirror = stages[h].site.weight
            put(f"feedback_angle_{h}", _angle(carrier, mirror, ens))
            put(f"feedback_norm_ratio_{h}", _ratio(carrier, mirror, ens))
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
