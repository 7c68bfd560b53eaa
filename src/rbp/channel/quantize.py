"""The low-precision quantizer of paper 1, Eq. 19.

    Quantize_{alpha,bits}(x) = alpha * sign(x) * 2^round(clip(log2(|x| / alpha), -(bits-1), 0))

Magnitudes are snapped to one of ``bits`` powers of two, alpha * 2^k with
k in {-(bits-1), ..., 0}; values above alpha are clipped to alpha, values
below alpha * 2^-(bits-1) are lifted to it, and zero stays zero.  Rounding of
the exponent is half-to-even, as in ``torch.round``.
"""

from __future__ import annotations

import torch

ERROR_ALPHA = 2.0 ** -3   # paper 1, section 5.1 (quantized error signals)
UPDATE_ALPHA = 2.0 ** -6  # paper 1, section 5.2 (quantized weight updates)
MIN_BITS, MAX_BITS = 1, 16


def quantize(x: torch.Tensor, alpha: float, bits: int) -> torch.Tensor:
    """Apply Eq. 19 elementwise; returns a new tensor of the same shape and dtype."""
    mag = x.abs().div_(alpha).log2_()
    mag.clamp_(min=-(bits - 1), max=0.0).round_()
    return mag.exp2_().mul_(alpha).mul_(torch.sign(x))


def levels(alpha: float, bits: int) -> list[float]:
    """The non-negative magnitudes the quantizer can output (zero excluded), ascending."""
    return [alpha * 2.0 ** k for k in range(-(bits - 1), 1)]
