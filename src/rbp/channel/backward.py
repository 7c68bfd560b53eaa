"""The learning channel's backward step for one layer: the single mechanism.

A *site* is a layer with weights (``nn.Linear`` now, ``nn.Conv2d`` later) that
the channel serves.  When the signal for site h arrives (``g = dLoss/dS^h``,
i.e. -I^h / N in the paper's units for a batch-mean loss), :func:`site_backward`

1. records the output error E^L if site h is the top of the network;
2. computes the site's weight update from ``g`` and its input O^{h-1}
   (the local rule dW = I O^T, with the update operators);
3. computes the adaptation of its feedback matrix (ARBP / ASRBP);
4. produces the signal J^{h-1} that arrives at the layer below *before* that
   layer's derivative: along the algorithm's route, then through the signal
   operators (quantization, dropout).  The derivative f'(S^{h-1}) is applied
   afterwards by whatever drives the backward pass (autograd through the
   activation module, or the fused trainer), or skipped for "no f'" variants.

Autograd (:mod:`rbp.nn`) and the fused trainer (:mod:`rbp.train`) both call
this one function, so the two drivers cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .quantize import quantize


@dataclass(eq=False)
class Pass:
    """What the learning channel knows during one forward/backward pass."""

    order: list = field(default_factory=list)   # sites in forward execution order
    error: torch.Tensor | None = None            # dLoss/dS^L of the top site
    rows: int = 1                                # examples per network in the batch
    signals: dict = field(default_factory=dict)  # position -> pre-derivative signal (product route)
    probe: bool = False                          # diagnostics: no noise drawn, no feedback resampled

    def enter(self, site) -> int:
        self.order.append(site)
        return len(self.order) - 1

    def is_top(self, position: int) -> bool:
        return position == len(self.order) - 1


def error_scale(alg, rows: int) -> float:
    """Factor from autograd's signal to the paper's units (-E per example)."""
    return float(rows) if alg.loss_reduction == "mean" else 1.0


def signal_operators(site, J: torch.Tensor, scale: float, probe: bool = False) -> torch.Tensor:
    """Quantize and drop out the signal arriving at the layer below (paper 1, sections 5.1, 6).

    A probe pass (diagnostics) skips dropout: it measures the expected signal and
    leaves the network's random streams untouched.
    """
    alg = site.algorithm
    if alg.quantize_error:
        J = quantize(J * scale, alg.quantize_error_alpha, alg.quantize_error).div_(scale)
    if alg.dropout and not probe:
        shape = J.shape[1:] if site.ensemble else J.shape
        J = J * site.channel.noise.keep_mask(shape, alg.dropout, J.dtype, J.device)
    return J


def weight_update(site, g, x, top: bool, scale: float, error=None, fbk=None):
    """dLoss/dW and dLoss/db in the algorithm's sense, with the update operators."""
    alg = site.algorithm
    if alg.feedback.per_synapse and not top:
        # observation 7: synapse (j, i) reads the error with its own vector P[:, j, i];
        # g holds f'(S^h) (the layer above sent ones), so the update is
        # sum_n g_nj x_ni sum_k P_kji E_nk, and likewise for the bias (a synapse from a constant unit)
        gW, gb = site.per_synapse_update(error, g, x, fbk)
    elif alg.quantize_update:
        gW, gb = site.per_example_update(g, x, alg.quantize_update_alpha, alg.quantize_update, scale)
    else:
        gW = site.grad_weight(g, x)
        gb = site.grad_bias(g) if site.bias is not None else None
    if not top and alg.update != "full":
        gW, gb = _sign_or_magnitude(alg.update, gW, site.ensemble), (
            None if gb is None else _sign_or_magnitude(alg.update, gb, site.ensemble))
    return gW, gb


def _sign_or_magnitude(mode, grad, ensemble):
    """Observations 5-6 of paper 1, section 4.2.

    ``sign``: keep only the sign of each synapse's update, at the layer's mean
    magnitude (the step size stays comparable, the information is one bit).
    ``magnitude``: keep only |update|, always in the same direction (dW = +|dW|).
    """
    if mode == "magnitude":
        return -grad.abs()
    dims = tuple(range(1 if ensemble else 0, grad.dim()))
    return torch.sign(grad) * grad.abs().mean(dim=dims, keepdim=True)


def feedback_matrix(site, weight, fbk, probe: bool = False):
    """The matrix the signal travels through at this site (resampled if the algorithm says so)."""
    alg = site.algorithm
    if alg.symmetric:
        return weight
    spec = alg.feedback
    if spec.resampled and not probe:
        with torch.no_grad():
            fbk.copy_(_resample(site, spec, weight, fbk))
    return fbk


def _resample(site, spec, weight, fbk):
    shape = fbk.shape[1:] if site.ensemble else fbk.shape
    gens = site.channel.noise.generators(fbk.device)
    chained = site.algorithm.route != "skip"

    def one(gen, w):
        return site.sample_feedback(spec, tuple(shape), chained=chained, generator=gen, forward_sign=w,
                                    dtype=fbk.dtype, device=fbk.device)

    if not site.ensemble:
        return one(gens[0], weight)
    return torch.stack([one(g, weight[k]) for k, g in enumerate(gens)])


def site_backward(site, pas: Pass, position: int, g, x, weight, fbk, needs):
    """One layer's step of the learning channel.

    ``needs`` = (input, weight, bias, feedback) flags.  Returns
    ``(J, grad_weight, grad_bias, grad_feedback)``, each ``None`` when not needed.
    """
    alg = site.algorithm
    need_x, need_w, need_b, need_f = needs
    top = pas.is_top(position)
    if top:
        pas.error = g
        pas.rows = site.rows(g)
        if alg.route == "skip" and fbk is not None and fbk.shape[-2] != g.shape[-1]:
            raise ConfigError(f"the network's output has {g.shape[-1]} units but the skip matrices were "
                              f"built for {fbk.shape[-2]}; pass output_size= or example_input= to convert()")
    elif g is None or not alg.hidden_learn:
        return None, None, None, None
    scale = error_scale(alg, pas.rows)

    gW = gb = gF = J = None
    if need_w or need_b or (need_f and alg.route != "skip"):
        gW, gb = weight_update(site, g, x, top, scale, pas.error, fbk)
    if need_f:
        if alg.route == "skip":
            gF = site.grad_skip(pas.error, x).mul_(alg.adapt_rate)
        else:
            gF = gW * alg.adapt_rate
    if need_x and alg.hidden_learn:
        if alg.route == "chain":
            J = site.grad_input(g, feedback_matrix(site, weight, fbk, pas.probe), x)
        elif alg.route == "product":
            arriving = g if top else pas.signals.pop(position)
            J = site.grad_input(arriving, feedback_matrix(site, weight, fbk, pas.probe), x)
        elif alg.feedback.per_synapse:  # the layer below reads the error itself, per synapse
            J = torch.ones_like(x)
        else:  # skip
            J = site.skip(pas.error, fbk, x)
        J = signal_operators(site, J, scale, pas.probe)
        if alg.route == "product":
            pas.signals[position - 1] = J
    return J, (gW if need_w else None), (gb if need_b else None), gF
