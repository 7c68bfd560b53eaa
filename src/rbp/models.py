"""The papers' networks.

``mlp(sizes, activation)`` builds paper 1's fully connected networks
(MNIST: 784-100-100-100-100-10, tanh hidden units, softmax output folded into
the loss), with Glorot scaled-normal weights, N(0, 2/(fan_in + fan_out)), and
zero biases, as Keras initialised them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .channel.feedback import glorot_std
from .channel.noise import generator
from .errors import ConfigError
from .nn.activations import activation as get_activation
from .nn.layers import StackedLinear

MNIST_SIZES = (784, 100, 100, 100, 100, 10)


def _seeds(seed, ensemble):
    if ensemble is None:
        return [seed]
    if isinstance(ensemble, int):
        if ensemble < 1:
            raise ConfigError(f"ensemble size must be >= 1, got {ensemble}")
        base = 0 if seed is None else int(seed)
        return [base + k for k in range(ensemble)]
    seeds = list(ensemble)
    if not seeds:
        raise ConfigError("ensemble needs at least one seed")
    return seeds


def glorot_(weight: torch.Tensor, gen) -> torch.Tensor:
    """Fill a 2-D weight with Glorot scaled-normal values from ``gen``."""
    with torch.no_grad():
        return weight.copy_(torch.randn(weight.shape, generator=gen, dtype=weight.dtype)
                            .mul_(glorot_std(weight.shape)))


def mlp(sizes: Sequence[int], activation: str = "tanh", *, seed: int | None = None,
        ensemble: int | Sequence[int] | None = None, bias: bool = True) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Hidden layers use ``activation`` (tanh, relu, logistic, linear); the output
    layer is linear (pair it with ``cross_entropy`` for softmax, or ``mse_loss``).
    ``seed`` makes the initial weights reproducible.  With ``ensemble`` (a number
    K, or a list of seeds) the layers hold K independent networks as one batched
    computation; member k is initialised exactly as ``mlp(sizes, seed=seeds[k])``
    (an int K uses seeds ``seed, seed+1, ...``).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(f"sizes must be at least two positive integers, got {sizes}")
    act = get_activation(activation)
    seeds = _seeds(seed, ensemble)
    gens = [generator(s, "init") for s in seeds]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if ensemble is None:
            lin = nn.Linear(n_in, n_out, bias=bias)
            glorot_(lin.weight, gens[0])
        else:
            lin = StackedLinear(len(seeds), n_in, n_out, bias=bias)
            for k, g in enumerate(gens):
                glorot_(lin.weight[k], g)
        if bias:
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act.module())
    return nn.Sequential(*layers)
