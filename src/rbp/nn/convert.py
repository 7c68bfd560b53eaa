"""``rbp.convert``: put a learning channel into an ordinary PyTorch model."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..channel import feedback as fb
from ..channel.algorithm import Algorithm, algorithm as make_algorithm, training_signature
from ..channel.backward import Pass
from ..channel.mirror import mirror_step
from ..channel.noise import Noise, generator
from ..channel.routes import Skip, route_of
from ..errors import ConfigError, UnsupportedModelError
from . import attention
from .activations import ELEMENTWISE, NoDerivative, activation_of
from .conv import EnsembleFlatten, EnsembleFold, FeedbackConvNd, StackedConvNd
from .embedding import FeedbackEmbedding
from .layers import FeedbackLinear, StackedLinear
from . import recurrent
from .recurrent import RECURRENT, FeedbackRecurrent

# Normalisation layers: structural, their affine parameters learn by autograd's rule from the signal the
# channel delivers at their output (docs/layers.md); refused on the product route (MIXING below).
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
# Modules between weight layers whose backward is the ordinary one (autograd's): they route,
# reshape, mask or normalise the signal the channel delivers (see docs/conv.md).  The norms' own
# affine parameters learn from that signal by autograd's rule.
STRUCTURAL = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Softmax, nn.LogSoftmax,
              nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, *NORMS, EnsembleFold, EnsembleFlatten)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict) + attention.TRANSFORMER_CONTAINERS
SITES = (FeedbackLinear, FeedbackConvNd, FeedbackEmbedding, attention.FeedbackMultiheadAttention)
CONVS = (nn.Conv1d, nn.Conv2d, StackedConvNd)   # what becomes a FeedbackConvNd (StackedConvNd: a conv ensemble)
SUPPORTED = ("rbp.convert handles nn.Linear, nn.Conv1d and nn.Conv2d (any groups, zero padding), nn.Embedding, "
             "nn.MultiheadAttention and torch's Transformer layers, and nn.RNN, nn.GRU and nn.LSTM (unidirectional, "
             "proj_size=0) layers, elementwise activations, Flatten, Dropout, max/average pooling, BatchNorm, "
             "LayerNorm, RMSNorm and GroupNorm")


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

    def record_structure(self, module, inputs, output):
        if torch.is_grad_enabled():
            self.current_pass().record(module, inputs[0])

    def current_pass(self) -> Pass:
        """The pass a site entering now belongs to: a new one once the last one's backward has begun."""
        if self._pass is None or self._pass.started:
            self._pass = Pass()
        return self._pass

    def after_step(self):
        """What the channel does between two training steps, after the optimizer's step.

        Call it once after every ``optimizer.step()`` (rbp's trainer does).  Most
        algorithms do nothing here; weight mirrors (``wm``) run their mirror phase
        (:mod:`rbp.channel.mirror`).
        """
        if self.algorithm.mirror_rate:
            mirror_step(self)


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
    """The model's linear and conv layers in registration order; refuse anything unsupported."""
    found, bad = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, SITES + (FeedbackRecurrent,)):
            raise ConfigError(f"layer {name or 'model'!r} is already converted; convert the original model")
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if mod.padding_mode != "zeros":
                bad.append(f"{name or 'model'} ({type(mod).__name__} with padding_mode={mod.padding_mode!r})")
            else:
                found.append((name, mod))
        elif isinstance(mod, nn.Embedding):
            what = "max_norm" if mod.max_norm is not None else "sparse=True" if mod.sparse else None
            if what:
                bad.append(f"{name or 'model'} (Embedding with {what})")
            else:
                found.append((name, mod))
        elif isinstance(mod, (nn.Linear, StackedLinear, StackedConvNd) + attention.ATTENTION):
            found.append((name, mod))
        elif isinstance(mod, RECURRENT):
            why = recurrent.unsupported_reason(mod)
            (bad.append(f"{name or 'model'} ({type(mod).__name__} with {why})") if why else found.append((name, mod)))
        elif isinstance(mod, ELEMENTWISE + STRUCTURAL + CONTAINERS + (NoDerivative,)):
            continue
        elif any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            bad.append(f"{name or 'model'} ({type(mod).__name__})")
        elif type(mod).__module__.startswith("torch.nn") and mod is not model:
            bad.append(f"{name} ({type(mod).__name__})")
    if bad:
        raise UnsupportedModelError(
            "unsupported layer(s): " + ", ".join(bad) + "; " + SUPPORTED)
    if not found:
        raise UnsupportedModelError("the model has no nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding or recurrent "
                                    "layer to train")
    return found


def _set_module(root: nn.Module, name: str, new: nn.Module):
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def _discover(model, layers, example_input):
    """Execution order of the weight layers and the shape of each one's input (one forward pass).

    Without ``example_input`` the order is the registration order and the shapes are unknown.
    The pass runs in eval mode (BatchNorm's running statistics and dropout are untouched) and
    without gradients; the training flags are restored afterwards.
    """
    if example_input is None:
        return layers, {}
    order, shapes = [], {}

    def hook(mod, inputs, output, name):
        order.append(name)
        shapes.setdefault(name, tuple(inputs[0].shape[1:]))
        if isinstance(mod, attention.ATTENTION):   # torch's attention uses out_proj's weights, not the module
            order.append(f"{name}.out_proj" if name else "out_proj")

    hooks = [m.register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n, m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    by_name = dict(layers)
    seen = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return [(n, by_name[n]) for n in seen] + [(n, m) for n, m in layers if n not in seen], shapes


# Structural layers that the product route (SBP) passes by the transposed forward matrix they applied
# on the pass (Pass.through_structure): pooling is a linear map once the forward pass has chosen each
# max-pooling window's winner, reshapes are permutations.  BatchNorm is refused: in training mode it
# is a nonlinear function of the whole batch, with no forward matrix to transpose (docs/conv.md).
ROUTED = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, EnsembleFlatten)
MIXING = NORMS
_MIXES = {nn.BatchNorm1d: "batch normalisation is a nonlinear function of the batch",
          nn.BatchNorm2d: "batch normalisation is a nonlinear function of the batch",
          nn.LayerNorm: "layer normalisation divides each example by its own standard deviation, a nonlinear map",
          nn.RMSNorm: "RMS normalisation divides each example by its own root mean square, a nonlinear map",
          nn.GroupNorm: "group normalisation divides each group of channels by its own standard deviation, "
                        "a nonlinear map"}


def _check_product_route(alg: Algorithm, model: nn.Module):
    if alg.route != "product":
        return
    for name, mod in model.named_modules():
        if isinstance(mod, MIXING):
            why = next(v for k, v in _MIXES.items() if isinstance(mod, k))
            raise ConfigError(f"{alg.name} is not supported with {type(mod).__name__} ({name}): its product "
                              f"route (SBP, twin network) skips the upper derivatives, and {why} "
                              "with no forward matrix to transpose (use bp, rbp or srbp)")


def _check_ensemble_layers(model: nn.Module, layers, ensemble):
    """Refuse, in an ensemble model, the layers that cannot keep K members apart (one line each)."""
    if not ensemble:
        return
    for name, mod in [*layers, *model.named_modules()]:
        if isinstance(mod, nn.Embedding):
            raise UnsupportedModelError(f"Embedding ({name}) in an ensemble model: one table would be shared by "
                                        f"the {ensemble} members and rbp has no stacked embedding; train the "
                                        "members one by one")
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
            raise UnsupportedModelError(f"{type(mod).__name__} ({name}) in an ensemble model: its affine parameters "
                                        f"(and, on a conv map, its statistics) would be shared by the {ensemble} "
                                        "members; train the members one by one")
        if isinstance(mod, nn.GroupNorm) and mod.num_groups % ensemble:
            raise UnsupportedModelError(f"GroupNorm ({name}) with {mod.num_groups} groups in an ensemble of "
                                        f"{ensemble}: a group would straddle two members' channels; use a "
                                        f"multiple of {ensemble} groups (each member's groups side by side)")


def _route_structure(alg: Algorithm, model: nn.Module, channel):
    """Product route: record each pooling / reshape module's input on the pass (see Pass.through_structure)."""
    if alg.route != "product":
        return
    for mod in model.modules():
        if isinstance(mod, ROUTED):
            mod.register_forward_hook(channel.record_structure)


def _declared_example(model, layers):
    """A zero input of the shape a conv model declares as ``model.input_shape`` (e.g. rbp.models.cifar_convnet)."""
    shape = getattr(model, "input_shape", None)
    if not any(isinstance(m, CONVS) for _, m in layers) or not isinstance(shape, tuple) or len(shape) not in (2, 3) \
            or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    w = layers[0][1].weight
    K = getattr(layers[0][1], "ensemble", None)
    return torch.zeros(*((K,) if K else ()), 1, *shape, dtype=w.dtype, device=w.device)


def _check_embedding_options(alg: Algorithm, layers):
    """Refuse what the learning channel does not define for embeddings (one line)."""
    emb = [n for n, m in layers if isinstance(m, nn.Embedding)]
    if emb and alg.feedback.per_synapse and alg.random_feedback:
        raise ConfigError(f"feedback 'per-synapse' is not defined for an Embedding ({emb[0] or 'model'}): it would "
                          "need one error vector per entry of the table, and the per-synapse rule is stated for "
                          "dense layers of an MLP")


def convert(model: nn.Module, algorithm: str | Algorithm, *, seed=None, output_size: int | None = None,
            example_input: torch.Tensor | None = None, inplace: bool = False,
            member_algorithms: Sequence | None = None, **options) -> nn.Module:
    """Return ``model`` trained by the learning channel of ``algorithm``.

    After ``loss.backward()`` every parameter's ``.grad`` holds the algorithm's
    descent direction, so any ``torch.optim`` optimizer applies the paper's
    update.  For ``cross_entropy`` on the output logits, or ``mse_loss`` on a
    linear output, the error the channel carries is T - O (paper 1).

    Options (see :func:`rbp.channel.algorithm`): ``feedback``, ``derivative``,
    ``quantize_error``, ``quantize_update``, ``dropout``, ``update``,
    ``adapt_rate``, ``loss_reduction``.

    Weight layers (sites) are ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (any
    ``groups``, so depthwise too; zero padding) and ``nn.Embedding`` (a bottom
    layer: the signal at its output updates the rows it looked up, nothing travels
    below it; ``max_norm`` and ``sparse=True`` refused).  Between them elementwise
    activations, Flatten, Dropout, pooling and the norms (BatchNorm, LayerNorm,
    RMSNorm, GroupNorm) pass the channel's signal by autograd's backward, and the
    norms' affine parameters learn from it (docs/conv.md, docs/layers.md).
    ``nn.MultiheadAttention`` (and so torch's Transformer layers) has its
    projections as sites and the attention itself as structure (docs/transformers.md).

    Paper 2's options (docs/symmetries.md): ``backward_nonlinearity`` (the
    learning channel's units; ``"same"`` is resolved here to the forward units'
    transfer function), ``backward_hidden`` (a distinct backward network: its
    layer k is held by the site at position L-k as the buffer
    ``backward_weight``), ``feedback_scale`` (the feedback matrices are drawn at
    that multiple of their scale) and ``init_scale`` (the converted model's
    forward weights are multiplied by it: with both small, both channels start
    small).

    ``seed`` makes the feedback matrices and the channel's noise reproducible
    (a list of seeds for an ensemble model).  The top layer is the last weight
    layer in registration order unless ``example_input`` is given, in which case
    one forward pass (eval mode, no gradients) finds the execution order and the
    shape of every layer's input.  The skipped route (srbp, asrbp) on a model with
    conv layers needs that pass: its matrices for a conv layer's input map have
    shape (N_L, C*H*W).  A conv model that declares ``input_shape = (C, H, W)``
    as an attribute (as :func:`rbp.models.cifar_convnet` does) gets the pass
    with a zero input of that shape when ``example_input`` is not given.

    ``blocks`` (srbp only; module names, ``*`` for one name component) and
    ``block_feedback`` ("bp" or "rbp") select SRBP's block mode: the output of
    every named module receives C_k E^L, and the signal travels below it by the
    chained route (docs/blocks.md, :mod:`rbp.nn.blocks`).

    ``member_algorithms`` (an ensemble model only: one algorithm or name per
    member) makes a *mixed* ensemble: members whose algorithms differ only in
    their initial state (feedback distribution, ``feedback_scale``,
    ``init_scale``; :func:`rbp.channel.algorithm.training_signature`) train
    together, each initialised by its own algorithm, all stepped by ``algorithm``.

    The model is copied unless ``inplace=True`` (then the existing parameters,
    and optimizers over them, stay valid).  Feedback matrices are buffers, or
    parameters for the adaptive algorithms, so they are saved and restored with
    ``state_dict``.
    """
    alg = make_algorithm(algorithm, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if alg.blocks:      # srbp's block mode: chained sites, C_k E^L at the blocks' outputs (nn/blocks.py)
        from .blocks import convert_blocks
        return convert_blocks(model, alg, seed=seed, output_size=output_size, example_input=example_input,
                              inplace=inplace, member_algorithms=member_algorithms)
    if not inplace:
        model = copy.deepcopy(model)
    found = _weight_layers(model)
    alg = _resolve_units(alg, model)
    if example_input is None:
        example_input = _declared_example(model, found)
    layers, shapes = _discover(model, found, example_input)
    _check_embedding_options(alg, layers)
    _check_product_route(alg, model)
    recurrent.check_options(alg, layers)
    attention.check(alg, model, layers)
    ensembles = {getattr(m, "ensemble", None) for _, m in layers}
    if len(ensembles) > 1 and any(isinstance(m, nn.Embedding) for _, m in layers):
        _check_ensemble_layers(model, layers, max(e for e in ensembles if e))
    if len(ensembles) > 1:
        raise UnsupportedModelError("mixing ensemble and single-network layers in one model is not supported")
    ensemble = ensembles.pop()
    _check_ensemble_layers(model, layers, ensemble)
    seeds = _seed_list(seed, ensemble)
    top = layers[-1][1]
    top_size = _out_width(top)
    if output_size is not None:     # the output layer's width, where the last layer registered is not the output
        top_size = output_size

    sites = []
    for name, layer in layers:
        if isinstance(layer, attention.ATTENTION):     # its out_proj follows as a linear layer
            site = attention.convert_attention(layer)
            _set_module(model, name, site)
            sites.extend(site.sites())
            continue
        if isinstance(layer, RECURRENT):
            site = recurrent.convert_recurrent(layer)
        elif isinstance(layer, nn.Embedding):
            site = FeedbackEmbedding.from_embedding(layer)
        elif isinstance(layer, CONVS):
            site = FeedbackConvNd.from_conv(layer)
            shape = shapes.get(name)          # an ensemble's map holds K networks' channels: keep one's
            site.input_shape = None if shape is None else (shape[0] // (ensemble or 1), *shape[1:])
        else:
            site = FeedbackLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                  ensemble=ensemble, device=layer.weight.device, dtype=layer.weight.dtype)
            site.weight = layer.weight
            site.bias = layer.bias
        _set_module(model, name, site)
        sites.append(site)
    route_of(alg).validate(sites)

    if not alg.derivative:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, ELEMENTWISE) and name:
                _set_module(model, name, NoDerivative(mod))

    # a recurrent module holds one site per weight matrix (nn/recurrent.py); the channel lists them all
    flat = [s for site in sites for s in (site.rbp_sites if isinstance(site, FeedbackRecurrent) else (site,))]
    channel = LearningChannel(alg, Noise(seeds, ensemble=bool(ensemble)), flat, top_size)
    for site in sites:
        site.channel = channel
    members = _member_algorithms(alg, member_algorithms, ensemble, model)
    with torch.no_grad():
        if members is None and alg.init_scale != 1.0:
            for site in flat:
                site.weight.mul_(alg.init_scale)
        for k, a in enumerate(members or ()):
            if a.init_scale != 1.0:
                for site in sites:
                    site.weight[k].mul_(a.init_scale)
    _init_feedback(sites, alg, seeds, ensemble, members, n_top=top_size)
    model.register_forward_pre_hook(channel.begin_pass)
    _route_structure(alg, model, channel)
    model.rbp_channel = channel
    return model


def _out_width(layer) -> int:
    """Units (channels) of a weight layer's output."""
    if isinstance(layer, (nn.Embedding, FeedbackEmbedding)):
        return layer.embedding_dim
    return layer.out_channels if isinstance(layer, (*CONVS, FeedbackConvNd)) else layer.out_features


def _resolve_units(alg: Algorithm, model: nn.Module) -> Algorithm:
    """``backward_nonlinearity="same"``: the transfer function of the model's own hidden units."""
    if alg.backward_nonlinearity != "same":
        return alg
    names, unknown = attention.functional_units(model)
    for _, mod in model.named_modules():
        if isinstance(mod, RECURRENT):     # the cell's units (GRU, LSTM: tanh; their sigmoids are gates)
            names.add("relu" if mod.mode == "RNN_RELU" else "tanh")
            continue
        inner = mod.inner if isinstance(mod, NoDerivative) else mod
        if isinstance(inner, ELEMENTWISE):
            act = activation_of(inner)
            (names.add(act.name) if act is not None else unknown.add(type(inner).__name__))
    if unknown:
        raise ConfigError(f"backward_nonlinearity='same': the learning channel has no unit like "
                          f"{sorted(unknown)[0]}; name one of tanh, relu, logistic, linear")
    names.discard("linear")          # nn.Identity placeholders do not name the units
    if len(names) > 1:
        raise ConfigError(f"backward_nonlinearity='same' is ambiguous: the model mixes {', '.join(sorted(names))} "
                          "units; name the learning channel's units")
    return dataclasses.replace(alg, backward_nonlinearity=names.pop() if names else "linear")


def _member_algorithms(alg: Algorithm, given, ensemble, model) -> list | None:
    """Resolve and check ``member_algorithms`` of :func:`convert` (None when not given)."""
    if given is None:
        return None
    if not ensemble:
        raise ConfigError("member_algorithms needs an ensemble model (one algorithm per member)")
    members = [_resolve_units(make_algorithm(a), model) for a in given]
    if len(members) != ensemble:
        raise ConfigError(f"member_algorithms has {len(members)} entries for an ensemble of {ensemble}")
    want = training_signature(alg)
    for a in members:
        if training_signature(a) != want:
            raise ConfigError(f"{a.describe()} cannot share an ensemble stepped by {alg.describe()}: they differ in "
                              "more than their initial state (feedback distribution and scale, init_scale)")
    return members


def _init_feedback(sites, alg: Algorithm, seeds: Sequence, ensemble, members: Sequence[Algorithm] | None = None,
                   n_top: int | None = None):
    """Draw every site's feedback, as its route says; ``members`` gives each ensemble member its own
    initial-state fields.  A skip matrix whose width is not known yet (a conv layer's input map
    without ``example_input``) is drawn at the site's first forward pass (:class:`_LazyFeedback`)."""
    if not alg.random_feedback:
        return
    route = route_of(alg)
    members = list(members) if members is not None else [alg] * len(seeds)
    specs = [a.feedback for a in members]
    scales = [a.feedback_scale for a in members]
    gens = [generator(s, "feedback") for s in seeds]
    n_top = _out_width(sites[-1]) if n_top is None else n_top

    for i, site in enumerate(sites):
        if isinstance(site, FeedbackEmbedding):
            continue  # its input is indices: nothing travels below an embedding, so it holds no feedback
        if isinstance(site, FeedbackRecurrent):   # draws its own matrices (nn/recurrent.py)
            site.init_feedback(lambda s, shape, ch, sign_of: _members(specs, shape, gens, s, ch, sign_of, ensemble,
                                                                       scales),
                               specs, chained=route.chained, first=i == 0,
                               skip_rows=route._reads(sites, i, n_top) if isinstance(route, Skip) else None,
                               adaptive=route.feedback_adaptive, check=lambda f, w: _check_sparse(specs, f, w))
            continue
        shape = route.feedback_shape(sites, i, n_top)
        if shape is None:
            fed = route.fed_feedback_shape(sites, i, n_top) if i == 0 else None
            if fed is not None:       # drawn only if a pass shows that this site's input is computed
                site._lazy_feedback = _LazyFeedback(route, specs, scales, seeds, i, fed, ensemble, only_if_fed=True)
            continue
        if shape[-1] is None:        # a skip matrix for a conv input map: sized at the first forward pass
            site._lazy_feedback = _LazyFeedback(route, specs, scales, seeds, i, shape, ensemble)
            continue
        kernel = route.chained and len(shape) > 2
        fan_out = math.prod(shape[1:]) if kernel else shape[-1]
        what = "kernel (in_channels*kh*kw)" if kernel else "learning channel"
        _check_sparse(specs, fan_out, f"of layer {i + 1}'s {what}")

        def sign_of(k, i=i):
            return route.forward_sign(sites, i, k) if specs[k].needs_forward_sign else None

        tensor = _members(specs, shape, gens, site, route.chained, sign_of, ensemble, scales)
        site.set_feedback(tensor, adaptive=route.feedback_adaptive)
    for position, shape in route.distinct_layers(sites, n_top):   # V^k of a distinct network (fixed)
        k = len(sites) - position
        _check_sparse(specs, shape[-1], f"of the distinct network's layer {k}")
        sites[position].register_buffer("backward_weight", _members(specs, shape, gens, sites[position], False,
                                                                    lambda k: None, ensemble, scales))


def _check_sparse(specs, fan_out, where):
    for spec in specs:
        if spec.kind == "sparse" and spec.sparsity > fan_out:
            raise ConfigError(f"feedback sparse-{spec.sparsity}: n must be at most the fan-out {fan_out} {where}")


class _LazyFeedback:
    """A feedback tensor drawn at its site's first forward pass.

    Two cases: a skip matrix whose width is the size of a conv layer's input map
    (known once an input arrives), and the feedback of the site registered first,
    which is drawn only if the graph shows that its input is computed by the
    network (``rbp.convert`` takes the registration order for the forward order).
    Each has its own random stream (the member's feedback seed, named after the
    site's index), so it does not depend on when the pass happens.
    """

    def __init__(self, route, specs, scales, seeds, index, shape, ensemble, only_if_fed=False):
        self.route, self.specs, self.scales, self.seeds = route, specs, scales, seeds
        self.index, self.shape, self.ensemble, self.only_if_fed = index, shape, ensemble, only_if_fed
        self.adaptive = route.feedback_adaptive

    def wanted(self, x) -> bool:
        return not self.only_if_fed or x.requires_grad

    def __call__(self, site, x):
        shape = self.shape
        if shape[-1] is None:
            K = self.ensemble or 1
            site.input_shape = (x.shape[1] // K, *x.shape[2:])
            shape = (shape[0], site.skip_width())
        kernel = self.route.chained and len(shape) > 2
        fan_out = math.prod(shape[1:]) if kernel else shape[-1]
        _check_sparse(self.specs, fan_out, f"of layer {self.index + 1}'s learning channel")
        sites = site.channel.sites

        def sign_of(k):
            return self.route.forward_sign(sites, self.index, k) if self.specs[k].needs_forward_sign else None

        gens = [generator(s, f"feedback-lazy-{self.index}", x.device) for s in self.seeds]
        tensor = _members(self.specs, shape, gens, site, self.route.chained, sign_of, self.ensemble, self.scales)
        return tensor.to(x.device), self.adaptive


def _members(specs, shape, gens, site, chained, sign_of, ensemble, scales):
    """One feedback tensor per ensemble member, each from its own generator, distribution and scale
    (stacked for an ensemble)."""
    members = []
    for k, gen in enumerate(gens):
        t = site.sample_feedback(specs[k], shape, chained=chained, generator=gen, forward_sign=sign_of(k),
                                 dtype=site.weight.dtype, device=site.weight.device)
        members.append(t.mul_(scales[k]) if scales[k] != 1.0 else t)
    return torch.stack(members) if ensemble else members[0]
