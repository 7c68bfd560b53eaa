"""The low-precision quantizer of paper 1, Eq. 19.

    Quantize_{alpha,bits}(x) = alpha * sign(x) * 2^round(clip(log2(|x| / alpha), -(bits-1), 0))

Magnitudes are snapped to one of ``bits`` powers of two, alpha * 2^k with
k in {-(bits-1), ..., 0}; values above alpha are clipped to alpha, values
below alpha * 2^-(bits-1) are lifted to it, and zero stays zero.  Rounding of
the exponent is half-to-even, as in ``torch.round``.

``flush=True`` is the other reading of the lower clip: a value whose rounded
exponent falls below -(bits-1) underflows to zero instead of being lifted to
the lowest level (see :data:`UPDATE_MODES`).
"""

from __future__ import annotations

import torch

ERROR_ALPHA = 2.0 ** -3   # paper 1, section 5.1 (quantized error signals)
UPDATE_ALPHA = 2.0 ** -6  # paper 1, section 5.2 (quantized weight updates)
MIN_BITS, MAX_BITS = 1, 16

# Readings of section 5.2 for the quantized weight update (an Algorithm's
# ``quantize_update_mode`` is "eq19" or a "+"-joined set of these words).
# With u_n an example's update in the paper's units (E f' O^{h-1}), eta the
# learning rate and N the minibatch size, the step taken is
#   eq19      eta * mean_n Q(u_n)          Eq. 19 as written: small values lifted to the lowest level
#   flush     ... values whose rounded exponent is below the lowest level become 0 (underflow)
#   after-lr  mean_n Q(eta * u_n)          the quantizer sees the update after the learning rate
#   sum       eta * sum_n Q(u_n)           the minibatch sum of quantized updates, not their mean
#   share     eta * sum_n Q(u_n / N)       each example's term of the minibatch-mean gradient is quantized
#   levels    ... with 2^(bits-1) magnitudes alpha 2^k, k in {-(2^(bits-1) - 1), ..., 0}: "bits" read as
#             one sign bit and bits-1 bits indexing the exponent, instead of Eq. 19's ``bits`` magnitudes
UPDATE_MODES = ("flush", "after-lr", "sum", "share", "levels")


def magnitude_count(bits: int, levels: bool) -> int:
    """How many magnitudes alpha 2^k a ``bits``-bit quantizer has: ``bits`` as Eq. 19 prints its
    clip, or 2^(bits-1) under the "levels" reading (one sign bit, the rest index the exponent).

    The result is what :func:`quantize` takes as ``bits``: its lowest exponent is -(result - 1).
    """
    return 2 ** (bits - 1) if levels else bits


def parse_update_mode(mode: str) -> tuple[str, ...]:
    """The words of a quantized-update mode, in canonical order; ``"eq19"`` is the empty set."""
    if not isinstance(mode, str) or not mode.strip():
        raise ValueError(f"quantize_update_mode must be 'eq19' or a '+'-joined subset of "
                         f"{', '.join(UPDATE_MODES)}, got {mode!r}")
    words = [w.strip() for w in mode.split("+")]
    if words == ["eq19"]:
        return ()
    bad = [w for w in words if w not in UPDATE_MODES]
    if bad or len(set(words)) != len(words):
        raise ValueError(f"quantize_update_mode must be 'eq19' or a '+'-joined subset of "
                         f"{', '.join(UPDATE_MODES)}, got {mode!r}")
    if "sum" in words and "share" in words:
        raise ValueError("quantize_update_mode: 'share' already sums the quantized terms; drop 'sum'")
    return tuple(w for w in UPDATE_MODES if w in words)


def quantize(x: torch.Tensor, alpha: float, bits: int, flush: bool = False) -> torch.Tensor:
    """Apply Eq. 19 elementwise; returns a new tensor of the same shape and dtype.

    With ``flush`` a value whose exponent rounds below -(bits-1) becomes zero.
    """
    lo = -(bits - 1)
    mag = x.abs().div_(alpha).log2_()
    mag.clamp_(min=lo - 1 if flush else lo, max=0.0).round_()
    under = mag < lo if flush else None
    out = mag.exp2_().mul_(alpha).mul_(torch.sign(x))
    return out.masked_fill_(under, 0.0) if flush else out


def levels(alpha: float, bits: int) -> list[float]:
    """The non-negative magnitudes the quantizer can output (zero excluded), ascending."""
    return [alpha * 2.0 ** k for k in range(-(bits - 1), 1)]
