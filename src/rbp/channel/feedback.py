"""How the learning channel's matrices are made (paper 1, sections 3 and 4.2).

A *feedback* matrix is stored in the orientation of the forward weight it
stands in for: for chained routes the matrix of layer h has the shape of W^h
(out x in) and the signal travels down as ``g @ B``; for the skipped route the
matrix held by layer h+1 has shape (N_L x N_h) and carries the output error
straight to layer h.  Either way the *receiving* side is the last dimension,
so the backward fan-out of a sending neuron is ``shape[-1]``.

Distributions (all zero mean except ``nonzero-mean``):

========================  ==========================================================
``glorot-normal``         N(0, 2/(fan_in+fan_out)), like the forward weights (default)
``uniform``               U(-a, a), a = sqrt(6/(fan_in+fan_out)) (same variance)
``nonzero-mean``          glorot-normal shifted by one standard deviation
``ternary``               {-1, 0, +1} with probability 1/3 each, scaled to the
                          glorot-normal variance
``congruent``             |glorot-normal| with the sign of the corresponding
                          forward weight at initialisation
``sparse-N``              Bernoulli(N / fan-out) entries in {0, 1}; chained
                          routes scale by 1/N, the skipped route does not
``resampled``             glorot-normal, drawn afresh at every minibatch
``sign-concordant``       |glorot-normal| with the sign of the *current* forward
                          weight, drawn afresh at every minibatch (Liao et al.;
                          brSF, "batchwise random magnitude sign-concordant")
``sign-uniform``          the sign of the *current* forward weight at one common
                          magnitude, the glorot-normal standard deviation (uSF)
``sign-fixed``            |glorot-normal| drawn once, with the sign of the *current*
                          forward weight (frSF: the magnitudes stay, the signs follow)
``per-synapse``           skipped route only: every synapse of a hidden neuron gets
                          its own random vector to read the output error with,
                          instead of one per neuron (section 4.2, observation 7)
========================  ==========================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

DISTRIBUTIONS = (
    "glorot-normal",
    "uniform",
    "nonzero-mean",
    "ternary",
    "congruent",
    "sparse-N",
    "resampled",
    "sign-concordant",
    "sign-uniform",
    "sign-fixed",
    "per-synapse",
)

_SPARSE = re.compile(r"^sparse-(\d+)$")


@dataclass(frozen=True)
class FeedbackSpec:
    """A parsed feedback distribution."""

    kind: str                 # one of DISTRIBUTIONS, with sparse-N stored as "sparse"
    sparsity: int | None = None

    @property
    def resampled(self) -> bool:
        """True when the matrix is drawn afresh (new random numbers) at every minibatch."""
        return self.kind in ("resampled", "sign-concordant")

    @property
    def follows_forward(self) -> bool:
        """True when the matrix takes the sign of the *current* forward weights at every minibatch."""
        return self.kind in ("sign-concordant", "sign-uniform", "sign-fixed")

    @property
    def refreshed(self) -> bool:
        """True when the matrix changes at every minibatch by rule, not by learning (resampled or
        following the forward signs): it cannot adapt and is part of the training step."""
        return self.resampled or self.follows_forward

    @property
    def per_synapse(self) -> bool:
        return self.kind == "per-synapse"

    @property
    def needs_forward_sign(self) -> bool:
        return self.kind in ("congruent", "sign-concordant", "sign-uniform", "sign-fixed")

    def __str__(self) -> str:
        return f"sparse-{self.sparsity}" if self.kind == "sparse" else self.kind


def parse(text: str) -> FeedbackSpec:
    """Parse a distribution name such as ``"glorot-normal"`` or ``"sparse-8"``."""
    if not isinstance(text, str):
        raise ConfigError(f"feedback must be a string, got {type(text).__name__}")
    m = _SPARSE.match(text)
    if m:
        return FeedbackSpec("sparse", int(m.group(1)))
    if text in DISTRIBUTIONS and text != "sparse-N":
        return FeedbackSpec(text)
    raise ConfigError(
        f"unknown feedback distribution {text!r}; choose one of "
        + ", ".join(d if d != "sparse-N" else "sparse-N (N = 0, 1, 2, ...)" for d in DISTRIBUTIONS)
    )


def glorot_std(shape) -> float:
    """Glorot & Bengio's scaled-normal standard deviation for a matrix of this shape."""
    fan_out, fan_in = shape[-2], shape[-1]
    return math.sqrt(2.0 / (fan_in + fan_out))


def forward_signs(weight: torch.Tensor, dtype=None) -> torch.Tensor:
    """sign(W) with a zero counted as +1 (a sign-concordant matrix has no zero entries).

    The sign is W's sign bit (``torch.copysign``), so -0.0 counts as -1: one pass over W, the
    same pass :func:`follow_signs_` makes every minibatch.  (SGD cannot make a -0.0 from a
    nonzero weight; it arises only where a zero is negated.)
    """
    dtype = dtype or weight.dtype
    return torch.ones(weight.shape, dtype=dtype, device=weight.device).copysign_(weight.to(dtype))


def follow_signs(fbk: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """frSF's step: the fixed magnitudes |B| with the current signs of W (same shape), as a new tensor."""
    return torch.copysign(fbk, weight.to(fbk.dtype))


def follow_signs_(fbk: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """In place: every entry of ``fbk`` keeps its magnitude and takes the sign of W (one pass, no copy)."""
    return fbk.copysign_(weight if weight.dtype == fbk.dtype else weight.to(fbk.dtype))


def sample(spec: FeedbackSpec, shape, *, chained: bool, generator: torch.Generator | None = None,
           forward_sign: torch.Tensor | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Draw one feedback matrix of ``shape`` (2-D) from ``spec``.

    ``chained`` selects the 1/N scaling of sparse matrices (chained RBP only).
    ``forward_sign`` is the sign pattern of the forward weights the matrix stands
    in for (needed by ``congruent`` and ``sign-concordant``).
    """
    kw = dict(generator=generator, dtype=dtype, device=device)
    # per-synapse tensors (N_L, out, in) are scaled like the per-neuron skip matrix (N_L, out)
    std = glorot_std(shape[:2]) if spec.kind == "per-synapse" else glorot_std(shape)
    kind = spec.kind
    if kind in ("glorot-normal", "resampled", "per-synapse"):
        return torch.randn(shape, **kw).mul_(std)
    if kind == "uniform":
        a = math.sqrt(3.0) * std
        return torch.rand(shape, **kw).mul_(2 * a).sub_(a)
    if kind == "nonzero-mean":
        return torch.randn(shape, **kw).mul_(std).add_(std)
    if kind == "ternary":
        t = torch.randint(-1, 2, shape, generator=generator, device=device).to(dtype)
        return t.mul_(std * math.sqrt(1.5))
    if kind in ("congruent", "sign-concordant", "sign-fixed", "sign-uniform"):
        if forward_sign is None:
            raise ConfigError(f"feedback {kind!r} needs the forward weights it mirrors")
        sign = forward_sign if forward_sign.dtype == dtype else forward_sign.to(dtype)
        if kind == "sign-uniform":
            return torch.full(shape, std, dtype=dtype, device=device).copysign_(sign)
        return torch.randn(shape, **kw).mul_(std).copysign_(sign)       # |N(0, std^2)| with W's signs
    if kind == "sparse":
        n = spec.sparsity
        fan_out = shape[-1]
        p = n / fan_out
        m = torch.rand(shape, **kw).lt_(p).to(dtype)
        if chained and n > 0:
            m.div_(n)
        return m
    raise ConfigError(f"unknown feedback distribution {spec}")  # pragma: no cover
