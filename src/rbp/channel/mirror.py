"""Weight mirrors (Akrout et al. 2019, "Deep learning without weight transport", NeurIPS).

A weight mirror is a second mode of the network in which the feedback path learns
the forward weights from their own effect: every layer is driven by zero-mean
noise x of standard deviation sigma, its forward units respond with y = W x, and
each feedback synapse, sitting between the two, changes by the correlation of the
signals at its ends,

    dB = eta * ( <y x^T> - lambda * B ),     B stored in W's orientation (out x in).

Since <y x^T> = sigma^2 W for white noise, B relaxes towards (sigma^2 / lambda) W
with time constant 1 / (eta lambda) mirror steps: the feedback that carries the
signal down, B^T, comes to mirror W^T with no weight transport.

Schedule (rbp's): one mirror step after every training step
(:meth:`rbp.nn.convert.LearningChannel.after_step`), ``mirror_batch`` noise
vectors per layer per step, each layer driven with its own fresh noise (noise
propagated through the network would lose its whiteness above the first layer,
as the authors note).  The response is the layer's linear drive W x; the bias
and the transfer function are left out, so <y x^T> is exactly sigma^2 W (the
authors' released code passes the drive through the unit's sigmoid, which only
rescales the correlation near zero).

Conv layers: a kernel (O, C, kh, kw) is the matrix (O, C*kh*kw) that maps one
receptive field to the O units at one position; the mirror drives one receptive
field of noise, which is the same update.

The noise comes from the channel's per-network ``noise`` stream, so an ensemble
member mirrors exactly as the network alone.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def mirror_step(channel) -> None:
    """One mirror step for every site of ``channel`` that has a feedback matrix."""
    alg = channel.algorithm
    eta, sigma, lam, n = alg.mirror_rate, alg.mirror_noise, alg.mirror_decay, alg.mirror_batch
    for site in channel.sites:
        B = site.feedback
        if B is None:
            continue
        W = site.weight
        lead = 1 if site.ensemble else 0
        W2 = W.reshape(*W.shape[:lead], W.shape[lead], -1)          # ([K,] out, fan_in)
        gens = channel.noise.generators(W.device)

        def draw(g, fan_in=W2.shape[-1]):
            return torch.randn(n, fan_in, generator=g, dtype=W.dtype, device=W.device).mul_(sigma)

        x = torch.stack([draw(g) for g in gens]) if site.ensemble else draw(gens[0])   # ([K,] n, fan_in)
        y = x @ W2.transpose(-1, -2)                                                     # ([K,] n, out)
        corr = (y.transpose(-1, -2) @ x).div_(n)                                         # ([K,] out, fan_in)
        B.mul_(1.0 - eta * lam).add_(corr.view(B.shape), alpha=eta)
