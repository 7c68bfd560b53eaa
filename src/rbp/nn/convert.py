"""``rbp.convert``: put a learning channel into an ordinary PyTorch model."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..channel import feedback as fb
from ..channel.algorithm import Algorithm, algorithm as make_algorithm
from ..channel.backward import Pass
from ..channel.noise import Noise, generator
from ..errors import ConfigError, UnsupportedModelError
from .activations import ELEMENTWISE, NoDerivative
from .layers import FeedbackLinear, StackedLinear

# Modules without weights whose backward is the ordinary one (autograd's).
STRUCTURAL = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Softmax, nn.LogSoftmax)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class LearningChannel:
    """What the converted layers of one model share: the algorithm, its noise, the current pass."""

    def __init__(self, alg: Algorithm, noise: Noise, sites: list, output_size: int):
        self.algorithm = alg
        self.noise = noise
        self.sites = sites
        self.output_size = output_size
        self._pass: Pass | None = None

    def begin_pass(self, *_):
        self._pass = Pass()

    def current_pass(self) -> Pass:
        if self._pass is None:
            self._pass = Pass()
        return self._pass


def _seed_list(seed, ensemble):
    if ensemble is None:
        if seed is not None and not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer for a single network, got {seed!r}")
        return [seed]
    if seed is None or isinstance(seed, int):
        base = seed
        return [None if base is None else base + k for k in range(ensemble)]
    seeds = list(seed)
    if len(seeds) != ensemble:
        raise ConfigError(f"the model is an ensemble of {ensemble} networks but {len(seeds)} seeds were given")
    return seeds


def _weight_layers(model: nn.Module):
    """The model's linear layers in registration order; refuse anything unsupported."""
    found, bad = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, FeedbackLinear):
            raise ConfigError(f"layer {name or 'model'!r} is already converted; convert the original model")
        if isinstance(mod, (nn.Linear, StackedLinear)):
            found.append((name, mod))
        elif isinstance(mod, ELEMENTWISE + STRUCTURAL + CONTAINERS + (NoDerivative,)):
            continue
        elif any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            bad.append(f"{name or 'model'} ({type(mod).__name__})")
        elif type(mod).__module__.startswith("torch.nn") and mod is not model:
            bad.append(f"{name} ({type(mod).__name__})")
    if bad:
        raise UnsupportedModelError(
            "unsupported layer(s): " + ", ".join(bad)
            + "; rbp.convert handles nn.Linear layers, elementwise activations, Flatten and Dropout")
    if not found:
        raise UnsupportedModelError("the model has no nn.Linear layer to train")
    return found


def _set_module(root: nn.Module, name: str, new: nn.Module):
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def _execution_order(model, layers, example_input):
    if example_input is None:
        return layers
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n, m in layers]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    by_name = dict(layers)
    seen = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return [(n, by_name[n]) for n in seen] + [(n, m) for n, m in layers if n not in seen]


def convert(model: nn.Module, algorithm: str | Algorithm, *, seed=None, output_size: int | None = None,
            example_input: torch.Tensor | None = None, inplace: bool = False, **options) -> nn.Module:
    """Return ``model`` trained by the learning channel of ``algorithm``.

    After ``loss.backward()`` every parameter's ``.grad`` holds the algorithm's
    descent direction, so any ``torch.optim`` optimizer applies the paper's
    update.  For ``cross_entropy`` on the output logits, or ``mse_loss`` on a
    linear output, the error the channel carries is T - O (paper 1).

    Options (see :func:`rbp.channel.algorithm`): ``feedback``, ``derivative``,
    ``quantize_error``, ``quantize_update``, ``dropout``, ``update``,
    ``adapt_rate``, ``loss_reduction``.

    ``seed`` makes the feedback matrices and the channel's noise reproducible
    (a list of seeds for an ensemble model).  The top layer is the last linear
    layer in registration order unless ``example_input`` is given, in which case
    one forward pass finds the execution order.  The model is copied unless
    ``inplace=True`` (then the existing parameters, and optimizers over them,
    stay valid).  Feedback matrices are buffers, or parameters for the adaptive
    algorithms, so they are saved and restored with ``state_dict``.
    """
    alg = make_algorithm(algorithm, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    layers = _execution_order(model, _weight_layers(model), example_input)
    ensembles = {getattr(m, "ensemble", None) for _, m in layers}
    if len(ensembles) > 1:
        raise UnsupportedModelError("mixing ensemble and single-network layers in one model is not supported")
    ensemble = ensembles.pop()
    seeds = _seed_list(seed, ensemble)
    top_size = layers[-1][1].out_features
    if output_size is not None and output_size != top_size:
        raise ConfigError(f"output_size={output_size} but the top layer has {top_size} outputs")

    sites = []
    for name, lin in layers:
        site = FeedbackLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              ensemble=ensemble, device=lin.weight.device, dtype=lin.weight.dtype)
        site.weight = lin.weight
        site.bias = lin.bias
        _set_module(model, name, site)
        sites.append(site)

    if not alg.derivative:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, ELEMENTWISE) and name:
                _set_module(model, name, NoDerivative(mod))

    channel = LearningChannel(alg, Noise(seeds, ensemble=bool(ensemble)), sites, top_size)
    for site in sites:
        site.channel = channel
    _init_feedback(sites, alg, seeds, ensemble)
    model.register_forward_pre_hook(channel.begin_pass)
    model.rbp_channel = channel
    return model


def _skip_sign(sites, i, k):
    """Sign pattern of W^L ... W^{h+1} (shape N_L x N_h) at initialisation, for congruent SRBP."""
    prod = None
    for s in sites[i:]:
        w = s.weight[k] if s.ensemble else s.weight
        prod = w.detach() if prod is None else w.detach() @ prod
    return prod


def _init_feedback(sites, alg: Algorithm, seeds: Sequence, ensemble):
    if not alg.random_feedback:
        return
    spec = alg.feedback
    chained = alg.route != "skip"
    gens = [generator(s, "feedback") for s in seeds]
    n_top = sites[-1].out_features
    for i, site in enumerate(sites):
        if spec.per_synapse:
            if i == len(sites) - 1:
                continue  # the top layer follows the gradient
            shape = (n_top, site.out_features, site.in_features + (site.bias is not None))
            site.set_feedback(_members(spec, shape, gens, site, False, lambda k: None, ensemble), False)
            continue
        if i == 0:
            continue  # the first layer's input is the data: no learning channel below it
        shape = (site.out_features, site.in_features) if chained else (n_top, site.in_features)
        if spec.kind == "sparse" and spec.sparsity > shape[-1]:
            raise ConfigError(f"feedback sparse-{spec.sparsity}: n must be at most the fan-out "
                              f"{shape[-1]} of layer {i + 1}'s learning channel")
        def sign_of(k, site=site, i=i):
            if not spec.needs_forward_sign:
                return None
            return (site.weight[k] if ensemble else site.weight).detach() if chained else _skip_sign(sites, i, k)

        tensor = _members(spec, shape, gens, site, chained, sign_of, ensemble)
        site.set_feedback(tensor, adaptive=alg.adaptive)


def _members(spec, shape, gens, site, chained, sign_of, ensemble):
    """One feedback tensor per ensemble member, each from its own generator (stacked for an ensemble)."""
    members = [fb.sample(spec, shape, chained=chained, generator=gen, forward_sign=sign_of(k),
                         dtype=site.weight.dtype, device=site.weight.device) for k, gen in enumerate(gens)]
    return torch.stack(members) if ensemble else members[0]
