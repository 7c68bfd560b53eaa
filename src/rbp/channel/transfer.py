"""The one table of transfer functions: the forward network's units and the learning channel's.

Each entry gives the function (out of place and in place), its derivative from its *output* (what the
fused trainer keeps: ``backward(J, O) = f'(S) * J``) and its torch module.  ``rbp.nn.activations``
(the forward network's units), ``rbp.channel.backward`` (the learning channel's units,
``backward_nonlinearity``) and ``rbp.channel.algorithm`` (the option's choices) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Transfer:
    name: str
    module: Callable[[], nn.Module]
    apply: Callable[[torch.Tensor], torch.Tensor]                   # out of place
    apply_: Callable[[torch.Tensor], torch.Tensor]                  # may work in place
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (J, output) -> f' * J


def _relu_backward(J, out):
    return torch.ops.aten.threshold_backward(J, out, 0)


def _identity(t):
    return t


TRANSFER = {
    "tanh": Transfer("tanh", nn.Tanh, torch.tanh, torch.tanh_, torch.ops.aten.tanh_backward),
    "relu": Transfer("relu", nn.ReLU, torch.relu, torch.relu_, _relu_backward),
    "logistic": Transfer("logistic", nn.Sigmoid, torch.sigmoid, torch.sigmoid_, torch.ops.aten.sigmoid_backward),
    "linear": Transfer("linear", nn.Identity, _identity, _identity, lambda J, out: J),
}
ALIASES = {"sigmoid": "logistic", "identity": "linear"}
