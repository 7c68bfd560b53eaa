"""Elementwise transfer functions f, and the "no f'" wrapper.

Each registered activation knows its module and how to multiply a signal by
its derivative given its *output* (what the fused trainer keeps), so that
``backward(J, O) = f'(S) * J``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..channel.transfer import ALIASES, TRANSFER
from ..errors import ConfigError


@dataclass(frozen=True)
class Activation:
    name: str
    module: Callable[[], nn.Module]
    forward: Callable[[torch.Tensor], torch.Tensor]          # may work in place
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (J, output) -> f' * J


# read from the one table of transfer functions (rbp.channel.transfer)
ACTIVATIONS = {name: Activation(name, t.module, t.apply_, t.backward) for name, t in TRANSFER.items()}

# Module types that are elementwise transfer functions (for conversion and "no f'").
ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
               nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Mish,
               nn.SELU, nn.CELU, nn.PReLU)


def activation(name: str) -> Activation:
    key = ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of "
                          f"{', '.join(list(ACTIVATIONS) + list(ALIASES))}")
    return ACTIVATIONS[key]


def activation_of(module: nn.Module) -> Activation | None:
    """The registered activation a module computes, if any (used by the fused trainer)."""
    inner = module.inner if isinstance(module, NoDerivative) else module
    for act in ACTIVATIONS.values():
        if type(inner) is act.module:
            return act
    return None


class _SkipDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, J):
        return J, None


class NoDerivative(nn.Module):
    """Computes ``inner(x)`` forward; passes the learning signal through unchanged.

    This is how the "no f'" variants of paper 1 (Table 1, Fig. 1) are made:
    the multiplication by f'(S^h) is omitted in the learning channel.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self.inner(x)
        return _SkipDerivative.apply(x, self.inner)
