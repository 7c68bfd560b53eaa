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
    the signal to layer h and the forward matrix it replaces: W^{h+1} for
    chained routes, the product W^L ... W^{h+1} for the skipped route.

The probe draws no noise and resamples nothing, so switching diagnostics on
does not change training.  90 degrees is chance; 0 is perfect alignment.
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
            if alg.route == "skip":
                mirror = stages[-1].site.weight
                for st in reversed(stages[h:-1]):
                    mirror = mirror @ st.site.weight
            else:
                mirror = stages[h].site.weight
            put(f"feedback_angle_{h}", _angle(carrier, mirror, ens))
            put(f"feedback_norm_ratio_{h}", _ratio(carrier, mirror, ens))
    return out
