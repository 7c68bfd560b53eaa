"""``rbp.convert``: put a learning channel into an ordinary PyTorch model.

Conversion is a pipeline that touches the user's model only at its last step:

1. *classify* every module (:func:`classify`): a **site** (a weight layer that a registered
   adapter claims, :mod:`rbp.nn.registry`), **structural** (anything else: its backward is
   autograd's own derivative and its parameters learn from the signal that reaches them),
   **excluded** (a weight layer left to autograd by ``targets=`` / ``exclude=``) or a container;
2. *check* everything: each adapter's refusals, the route's, the options' (one line each);
3. *build* the converted modules and draw their feedback, on new module objects that share
   the model's Parameter objects;
4. *swap* them in, wrap the activations for "no f'", scale the weights (``init_scale``) and
   install the hooks.  Nothing after the first swap can refuse.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..channel.algorithm import Algorithm, algorithm as make_algorithm, training_signature
from ..channel.backward import Pass
from ..channel.mirror import mirror_step
from ..channel.noise import Noise, generator
from ..channel.routes import route_of
from ..errors import ConfigError, UnsupportedModelError
from . import attention, registry
from .activations import ELEMENTWISE, NoDerivative, activation_of
from .conv import EnsembleFlatten, EnsembleFold, FeedbackConvNd, StackedConvNd
from .embedding import FeedbackEmbedding
from .layers import FeedbackLinear
from .recurrent import RECURRENT, FeedbackRecurrent
from .registry import BuildInfo, CheckContext
from .site import placeholder
from .summary import ConversionReport


# Normalisation layers rbp names in its product-route refusal (any other norm is structural as well).
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
# Modules the product route (SBP, twin network) knows how to pass: it hands signals from site to site
# by position, so anything else between two sites would be skipped silently and is refused there.
STRUCTURAL = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Softmax, nn.LogSoftmax,
              nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, *NORMS, EnsembleFold, EnsembleFlatten)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict) + attention.TRANSFORMER_CONTAINERS
SITES = (FeedbackLinear, FeedbackConvNd, FeedbackEmbedding, attention.FeedbackMultiheadAttention)
CONVS = (nn.Conv1d, nn.Conv2d, StackedConvNd)
# torch's weight layers that no built-in adapter serves: refused unless excluded (then autograd trains them)
UNSERVED = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear, nn.EmbeddingBag)
SUPPORTED = ("rbp.convert serves nn.Linear, nn.Conv1d and nn.Conv2d (any groups, zero padding), nn.Embedding, "
             "nn.MultiheadAttention and torch's Transformer layers, nn.RNN, nn.GRU and nn.LSTM (unidirectional, "
             "proj_size=0) and Hugging Face's Conv1D as sites; every other module (BatchNorm, LayerNorm, RMSNorm, "
             "GroupNorm or any norm, pooling, elementwise functions, ...) is structural (autograd's derivative); "
             "name a layer in exclude= to leave it to autograd, or add a site with rbp.register_site")


class LearningChannel:
    """What the converted layers of one model share: the algorithm, its noise, the current pass."""

    def __init__(self, alg: Algorithm, noise: Noise, sites: list, output_size: int):
        self.algorithm = alg
        self.noise = noise
        self.sites = sites
        self.output_size = output_size
        self.report = None               # the ConversionReport rbp.convert fills in
        self._pass: Pass | None = None
        self._plan = None                # what the compiled driver knows (rbp.nn.compiled.Plan)
        self._noted = None               # (sites in order, output positions) of the latest eager pass
        self._shared_whole = None        # skip_projection='shared': the one matrix the sites' buffers view

    def begin_pass(self, *_):
        if torch.compiler.is_compiling():
            return
        self._pass = Pass()
        if self.algorithm.skip_projection == "shared":
            self.retie_shared_projection()

    def retie_shared_projection(self):
        """Make every site's skip matrix a view of one matrix again, if something copied them apart.

        ``skip_projection='shared'`` holds one N_L x d_max matrix whose leading columns are the
        sites' feedback buffers.  ``Module.to(dtype or device)``, ``.half()``, ``.double()`` and the
        like convert every buffer on its own, so afterwards each site holds a copy: the values, and
        so the updates, are still right, but the channel holds L matrices again and computes L
        products.  The copies are equal slices of the widest one, which becomes the one matrix.
        """
        fb = [(s, s.feedback) for s in self.sites if s.receives_feedback and s.feedback is not None]
        if len(fb) < 2:
            return
        whole = self._shared_whole
        if whole is not None and all(f._base is whole for _, f in fb):
            return
        widest = max((f for _, f in fb), key=lambda f: f.shape[-1])
        whole = widest if widest._base is None else widest._base
        if any(f.shape[:-1] != whole.shape[:-1] or f.shape[-1] > whole.shape[-1] for _, f in fb):
            return                   # not the layout rbp.convert made (a user-loaded matrix): leave it
        self._shared_whole = whole
        for site, f in fb:
            if f._base is not whole:
                view = whole[..., :f.shape[-1]]
                if not torch.equal(view, f):
                    raise ConfigError(f"skip_projection='shared': layer {getattr(site, 'rbp_name', site.kind)}'s "
                                      "skip matrix is not the first columns of the widest one (was it loaded or "
                                      "changed on its own?); the shared projection would change its updates")
                site.set_feedback(view, adaptive=False)

    def end_pass(self, *_):
        """After an eager forward pass: note its structure for the compiled driver, when it changed."""
        if torch.compiler.is_compiling():
            return
        pas = self._pass
        if pas is None or not pas.graph or not pas.order:
            return
        noted = self._noted
        if noted is not None and noted[0] == pas.order and noted[1] == pas.consumed:
            return
        self._noted = (list(pas.order), set(pas.consumed))
        self._plan = None
        self.compiled_plan()

    def compiled_plan(self):
        """The facts the compiled driver works from (:mod:`rbp.nn.compiled`); built outside the graph."""
        plan = self._plan
        if plan is None:
            if torch.compiler.is_compiling():
                raise ConfigError("rbp: the learning channel's plan for torch.compile was not built; run the "
                                  "converted model once without compiling first")
            from .compiled import Plan
            plan = self._plan = Plan(self, self._noted_pass())
        return plan

    def _noted_pass(self):
        if self._noted is None:
            return None
        pas = Pass(order=list(self._noted[0]), consumed=set(self._noted[1]), graph=True)
        return pas

    def record_structure(self, module, inputs, output):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self.current_pass().record(module, inputs[0])

    def current_pass(self) -> Pass:
        """The pass a site entering now belongs to: a new one once the last one's backward has begun.

        Except during that backward pass itself: a site that runs then is part of a segment that
        activation checkpointing recomputes, and joins the pass whose backward is running (it reads
        that pass's output error).
        """
        pas = self._pass
        if pas is None or (pas.started and not (pas.error is not None and _in_backward())):
            self._pass = pas = Pass()
        return pas

    def output_names(self) -> list[str]:
        """Qualified names of the sites that were output layers in the latest pass (their outputs reached
        the loss without passing another site)."""
        pas = self._pass
        if pas is None:
            return []
        names = []
        for p in pas.outputs():
            name = site_name(pas.order[p])
            if name not in names:
                names.append(name)
        return names

    def after_step(self):
        """What the channel does between two training steps, after the optimizer's step.

        Call it once after every ``optimizer.step()`` (rbp's trainer does).  Most
        algorithms do nothing here; weight mirrors (``wm``) run their mirror phase
        (:mod:`rbp.channel.mirror`).
        """
        if self.algorithm.mirror_rate:
            mirror_step(self)


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


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


@dataclasses.dataclass
class Plan:
    """What :func:`classify` found in a model (nothing is changed by it)."""

    layers: list          # [(name, module, adapter)] the sites-to-be, registration order
    structural: list      # [(name, module)] unclaimed modules holding parameters or buffers of their own
    excluded: list        # [(name, module)] weight layers left to autograd by targets= / exclude=
    bare: list            # [(qualified name, shape)] parameters of unclaimed modules (cls tokens, layer scales)

    def pairs(self):
        return [(n, m) for n, m, _ in self.layers]


def _matches(patterns, name: str) -> bool:
    """Whether a module name, or the name of a module it lies in, matches one of the glob patterns."""
    parts = name.split(".") if name else [""]
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(pre, pat) for pat in patterns for pre in prefixes)


def _patterns(value, what):
    if value is None:
        return None
    pats = [value] if isinstance(value, str) else list(value)
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise ConfigError(f"{what} must be a module name pattern or a list of them, got {value!r}")
    return pats


def classify(model: nn.Module, alg: Algorithm | None = None, targets=None, exclude=None) -> Plan:
    """Classify every module of ``model`` (see the module docstring); refuse, in one line, what cannot be served.

    ``targets`` / ``exclude``: glob patterns of module names (a pattern naming a module covers everything
    inside it); weight layers outside ``targets`` or inside ``exclude`` stay as they are, trained by autograd.
    """
    targets, exclude = _patterns(targets, "targets"), _patterns(exclude, "exclude")
    names = [n for n, _ in model.named_modules()]
    for pats, what in ((targets, "targets"), (exclude, "exclude")):
        for pat in pats or ():
            if not any(_matches([pat], n) for n in names if n):
                some = ", ".join(n for n in names[1:9]) + (", ..." if len(names) > 9 else "")
                raise ConfigError(f"{what}: the model has no module named like {pat!r} (its modules: {some})")

    def selected(name):
        return (targets is None or _matches(targets, name)) and not (exclude and _matches(exclude, name))

    product = alg is not None and route_of(alg).matrices_only
    layers, structural, excluded, bare, bad = [], [], [], [], []
    inside = []           # modules whose children belong to their adapter
    for name, mod in model.named_modules():
        if any(name.startswith(pre + ".") for pre in inside):
            continue
        label = name or "model"
        if isinstance(mod, SITES + (FeedbackRecurrent,)):
            raise ConfigError(f"layer {label!r} is already converted; convert the original model")
        adapter = registry.adapter_for(mod)
        own = [n for n, _ in mod.named_parameters(recurse=False)] + [n for n, _ in mod.named_buffers(recurse=False)]
        if adapter is not None:
            if not adapter.claims_children:
                inside.append(name)
            if not selected(name):
                excluded.append((name, mod))
                continue
            why = adapter.refuse(mod)
            if not name:
                raise UnsupportedModelError(f"the model is itself one {type(mod).__name__}; wrap it in "
                                            "nn.Sequential to convert it")
            if why:
                bad.append(f"{label} ({type(mod).__name__} with {why})")
            else:
                layers.append((name, mod, adapter))
            continue
        if isinstance(mod, UNSERVED):
            if selected(name):
                bad.append(f"{label} ({type(mod).__name__})")
            else:
                excluded.append((name, mod))
                inside.append(name)
            continue
        if product and not isinstance(mod, ELEMENTWISE + STRUCTURAL + CONTAINERS + (NoDerivative,)) and (
                own or (type(mod).__module__.startswith("torch.nn") and mod is not model)):
            bad.append(f"{label} ({type(mod).__name__}: the product route passes only the structural layers it "
                       "knows)")
            continue
        if own and (targets or exclude) and not selected(name):
            excluded.append((name, mod))      # left to autograd on purpose: not watched for hidden weights
        elif own:
            structural.append((name, mod))
            bare += [(f"{name}.{n}" if name else n, tuple(t.shape)) for n, t in mod.named_parameters(recurse=False)]
    if bad:
        raise UnsupportedModelError("unsupported layer(s): " + ", ".join(bad) + "; " + SUPPORTED)
    if not layers:
        raise UnsupportedModelError("the model has no weight layer rbp serves (nn.Linear, nn.Conv1d, nn.Conv2d, "
                                    "nn.Embedding, attention, recurrent layers, registered sites)"
                                    + (" among the targets" if targets or exclude else ""))
    return Plan(layers, structural, excluded, bare)


def _set_module(root: nn.Module, name: str, new: nn.Module):
    parent = root
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


# Functions that multiply their inputs together (a matrix product or a convolution).
_MULTIPLIES = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "addmm_", "baddbmm", "addbmm", "mv",
               "addmv", "einsum", "linear", "bilinear", "tensordot", "inner", "conv1d", "conv2d", "conv3d",
               "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "embedding_bag"}


class _WeightProbe(TorchFunctionMode):
    """Watches one forward pass for multiplications of the signal by parameters that no site holds.

    A tensor computed from the model's own state alone (parameters and buffers: a view of a weight, a
    masked or normalised weight) stays the weight it came from; a product of such a tensor with anything
    computed from the input is a hidden weight layer.
    """

    def __init__(self, watched, state=()):
        super().__init__()
        self.watched = {id(t): (name, t) for name, t in watched}   # id -> (qualified name, tensor kept alive)
        self.state = {id(t): t for t in state}
        self.state.update({id(t): t for _, t in watched})
        self.found = {}                    # parameter name -> the function that multiplied by it

    def _name(self, t):
        hit = self.watched.get(id(t))
        return hit[0] if hit is not None and hit[1] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = list(_tensor_args(args, kwargs))
        if not inputs:
            return out
        names = [h for h in map(self._name, inputs) if h]
        from_state = all(self.state.get(id(t)) is t for t in inputs)
        if from_state:
            for o in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(o, torch.Tensor):
                    self.state[id(o)] = o
                    if names:
                        self.watched[id(o)] = (names[0], o)
        elif names and getattr(func, "__name__", "") in _MULTIPLIES:
            for h in names:
                self.found.setdefault(h, func.__name__)
        return out


def _tensor_args(args, kwargs):
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _watched_parameters(model: nn.Module, plan: Plan) -> dict:
    """The matrix-shaped parameters of structural modules, by id (what a hidden weight layer would multiply by)."""
    held = {id(p) for _, m, _ in plan.layers for p in m.parameters()}
    held |= {id(p) for _, m in plan.excluded for p in m.parameters()}
    watched = []
    for name, mod in plan.structural:
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() >= 2 and sum(d > 1 for d in p.shape) >= 2 and id(p) not in held:
                watched.append((f"{name}.{pname}" if name else pname, p))
    return watched


def _discover(model, layers, example_input, watched=None):
    """Execution order of the weight layers, the shape of each one's input, and the hidden weight layers
    (one forward pass).

    Without ``example_input`` the order is the registration order and the shapes are unknown.
    The pass runs in eval mode (BatchNorm's running statistics and dropout are untouched) and
    without gradients; the training flags are restored afterwards.  ``layers``: (name, module, adapter).
    """
    if example_input is None:
        return layers, {}, None, {}
    order, shapes, fed = [], {}, {}

    def hook(mod, inputs, output, name):
        order.append(name)
        if inputs and isinstance(inputs[0], torch.Tensor):
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))
            fed.setdefault(name, bool(inputs[0].requires_grad))     # computed by the network (not the data)
        if isinstance(mod, attention.ATTENTION):   # torch's attention uses out_proj's weights, not the module
            order.append(f"{name}.out_proj" if name else "out_proj")

    hooks = [m.register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n, m, _ in layers]
    modes = {m: m.training for m in model.modules()}
    probe = _WeightProbe(watched or [], [*model.parameters(), *model.buffers()])
    try:
        model.eval()
        # with gradients (in eval mode): a weight layer whose input requires them reads a computed input
        with torch.enable_grad(), probe:
            if isinstance(example_input, dict):
                model(**{k: _detached(v) for k, v in example_input.items()})
            elif isinstance(example_input, (tuple, list)):
                model(*map(_detached, example_input))
            else:
                model(_detached(example_input))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    by_name = {n: (n, m, a) for n, m, a in layers}
    seen = []
    for n in order:
        if n not in seen and n in by_name:
            seen.append(n)
    return [by_name[n] for n in seen] + [t for t in layers if t[0] not in seen], shapes, probe.found, fed


def _detached(v):
    return v.detach() if isinstance(v, torch.Tensor) else v


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
    if not route_of(alg).matrices_only:
        return
    for name, mod in model.named_modules():
        if isinstance(mod, MIXING):
            why = next(v for k, v in _MIXES.items() if isinstance(mod, k))
            raise ConfigError(f"{alg.name} is not supported with {type(mod).__name__} ({name}): its product "
                              f"route (SBP, twin network) skips the upper derivatives, and {why} "
                              "with no forward matrix to transpose (use bp, rbp or srbp)")


def _check_ensemble_layers(model: nn.Module, layers, ensemble, plan: Plan):
    """Refuse, in an ensemble model, the layers that cannot keep K members apart (one line each)."""
    if not ensemble:
        return
    for name, mod in [*layers, *model.named_modules()]:
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
            raise UnsupportedModelError(f"{type(mod).__name__} ({name}) in an ensemble model: its affine parameters "
                                        f"(and, on a conv map, its statistics) would be shared by the {ensemble} "
                                        "members; train the members one by one")
        if isinstance(mod, nn.GroupNorm) and mod.num_groups % ensemble:
            raise UnsupportedModelError(f"GroupNorm ({name}) with {mod.num_groups} groups in an ensemble of "
                                        f"{ensemble}: a group would straddle two members' channels; use a "
                                        f"multiple of {ensemble} groups (each member's groups side by side)")
    for name, mod in plan.structural:
        if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)) and any(
                True for _ in mod.parameters(recurse=False)):
            raise UnsupportedModelError(f"{type(mod).__name__} ({name or 'model'}) in an ensemble model: its "
                                        f"parameters would be shared by the {ensemble} members; train the members "
                                        "one by one")


def _route_structure(alg: Algorithm, model: nn.Module, channel):
    """Product route: record each pooling / reshape module's input on the pass (see Pass.through_structure)."""
    if not route_of(alg).matrices_only:
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


def convert(model: nn.Module, algorithm: str | Algorithm, *, seed=None, output_size: int | None = None,
            example_input=None, inplace: bool = False, member_algorithms: Sequence | None = None,
            targets=None, exclude=None, **options) -> nn.Module:
    """Return ``model`` trained by the learning channel of ``algorithm``.

    After ``loss.backward()`` every parameter's ``.grad`` holds the algorithm's
    descent direction, so any ``torch.optim`` optimizer applies the paper's
    update.  For ``cross_entropy`` on the output logits, or ``mse_loss`` on a
    linear output, the error the channel carries is T - O (paper 1).

    Options (see :func:`rbp.channel.algorithm`): ``feedback``, ``derivative``,
    ``quantize_error``, ``quantize_update``, ``dropout``, ``update``,
    ``adapt_rate``, ``loss_reduction``, ``weight_decay``, ...

    **What becomes a site.**  Every module is classified first (nothing is changed
    until every check has passed, so a refusal leaves an ``inplace=True`` model as it
    was).  Weight layers that a registered site adapter claims are *sites*:
    ``nn.Linear``, ``nn.Conv1d`` / ``nn.Conv2d`` (any ``groups``; zero padding),
    ``nn.Embedding`` (a bottom layer; ``max_norm`` and ``sparse=True`` refused),
    ``nn.MultiheadAttention`` (its projections), ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``
    (unidirectional, ``proj_size=0``) and Hugging Face's ``Conv1D``; more with
    :func:`rbp.register_site`.  Every other module, and every parameter or buffer no
    site holds (norms of any class, rotary embeddings, class tokens, position
    embeddings, layer scales, elementwise functions), is *structural*: autograd
    carries the channel's signal through it by its true derivative, and its
    parameters learn from the signal that reaches them.  A structural module that
    multiplies the signal by a matrix-shaped parameter of its own is named in an
    :class:`rbp.UnknownWeightWarning` (at convert time with ``example_input``, else
    at the first forward pass with gradients).  torch's weight layers that no site
    serves (``Conv3d``, transposed convs, ``Bilinear``, ``EmbeddingBag``) are
    refused unless excluded.  ``model.rbp_channel.report`` says what was done
    (sites with their feedback shapes, structural modules, excluded layers, tied
    weights); ``model.rbp_channel.output_names()`` names the output layers the last
    pass found.

    ``targets`` / ``exclude``: module-name glob patterns (a pattern covers the
    modules inside the one it names); weight layers outside ``targets`` or inside
    ``exclude`` stay plain modules trained by autograd from the signal that reaches
    them (e.g. ``exclude=["backbone"]``: a backprop backbone under a DFA head).

    **Tied weights** (one Parameter in two sites, as GPT-2's ``lm_head`` and
    ``wte``): each use is its own layer and the shared ``.grad`` is the sum of their
    updates; the output layer's use contributes its exact gradient (Fact 1), the
    other uses the channel's update; a shared ``weight_decay`` is added once.

    **Mixed precision and transforms.**  Under ``torch.autocast`` the forward pass
    runs in the lower precision and the channel computes in the weights' dtype;
    ``torch.func.grad`` / ``vjp`` work (the last site to run is then the output
    layer); activation checkpointing works reentrant or not (reentrant refused for
    the routes that hand signals by position: sbp, twin, distinct).

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
    layer in registration order unless ``example_input`` is given (a tensor, a
    tuple of positional inputs or a dict of keyword inputs), in which case one
    forward pass (eval mode, no gradients) finds the execution order and the
    shape of every layer's input.  The skipped route (srbp, asrbp) on a model with
    conv layers needs the shape of each conv layer's input map: without the pass
    its matrices are drawn at the first forward pass (adaptive ones are empty
    Parameters until then, so an optimizer built right after ``convert`` holds
    them).  A conv model that declares ``input_shape = (C, H, W)`` as an
    attribute (as :func:`rbp.models.cifar_convnet` does) gets the pass with a
    zero input of that shape when ``example_input`` is not given.

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
    ``state_dict``; parameter names and ``state_dict`` keys stay the original's.
    """
    alg = make_algorithm(algorithm, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if alg.blocks:      # srbp's block mode: chained sites, C_k E^L at the blocks' outputs (nn/blocks.py)
        from .blocks import convert_blocks
        return convert_blocks(model, alg, seed=seed, output_size=output_size, example_input=example_input,
                              inplace=inplace, member_algorithms=member_algorithms, targets=targets,
                              exclude=exclude)
    if getattr(model, "rbp_channel", None) is not None:
        raise ConfigError("the model is already converted; convert the original model")
    work = model if inplace else copy.deepcopy(model)

    # 1. classify (nothing changes in the model until step 4)
    plan = classify(work, alg, targets, exclude)
    alg = _resolve_units(alg, work)
    if example_input is None:
        example_input = _declared_example(work, plan.pairs())
    watched = _watched_parameters(work, plan)
    layers, shapes, hidden, fed = _discover(work, plan.layers, example_input, watched)
    if not watched:
        hidden = {}
    pairs = [(n, m) for n, m, _ in layers]

    # 2. check everything
    ensembles = {a.ensemble_of(m) for _, m, a in layers}
    context = CheckContext(work, pairs, max((e for e in ensembles if e), default=None))
    for name, mod, adapter in layers:
        adapter.check(alg, name, mod, context)
    _check_product_route(alg, work)
    if len(ensembles) > 1:
        raise UnsupportedModelError("mixing ensemble and single-network layers in one model is not supported")
    ensemble = ensembles.pop()
    _check_ensemble_layers(work, pairs, ensemble, plan)
    seeds = _seed_list(seed, ensemble)
    top_size = output_size if output_size is not None else layers[-1][2].out_width(layers[-1][1])

    # 3. build the converted modules (new objects sharing the model's Parameters) and their feedback
    built, sites = [], []
    for name, layer, adapter in layers:
        new = adapter.build(layer, BuildInfo(name, shapes.get(name), ensemble))
        built.append((name, new))
        for i, site in enumerate(adapter.sites(new)):
            _name_site(site, name, new)
            sites.append(site)
    route_of(alg).validate(sites)
    held = set()
    for site in sites:      # a weight tied to an earlier site's: the shared weight decay is added once
        site.rbp_shares_weight = id(site.weight) in held
        held.add(id(site.weight))
    channel = LearningChannel(alg, Noise(seeds, ensemble=bool(ensemble)), sites, top_size)
    for _, new in built:
        new.channel = channel
    members = _member_algorithms(alg, member_algorithms, ensemble, work)
    _init_feedback(sites, alg, seeds, ensemble, members, n_top=top_size,
                   fed_first=fed.get(layers[0][0], _excluded_before(work, plan, layers[0][0])))
    tied = _tied_parameters(work, plan)

    # 4. swap: nothing below refuses
    for name, new in built:
        _set_module(work, name, new)
    if not alg.derivative:
        for name, mod in list(work.named_modules()):
            if isinstance(mod, ELEMENTWISE) and name:
                _set_module(work, name, NoDerivative(mod))
    with torch.no_grad():
        scaled = set()
        for site in sites:
            w = site.weight
            if id(w) in scaled:            # a tied weight is scaled once
                continue
            scaled.add(id(w))
            if members is None and alg.init_scale != 1.0:
                w.mul_(alg.init_scale)
            for k, a in enumerate(members or ()):
                if a.init_scale != 1.0:
                    w[k].mul_(a.init_scale)
    work.register_forward_pre_hook(channel.begin_pass)
    work.register_forward_hook(channel.end_pass)
    _route_structure(alg, work, channel)
    channel.compiled_plan()
    work.rbp_channel = channel
    channel.report = ConversionReport(alg, sites, plan, tied, hidden)
    if hidden:
        channel.report.warn_hidden()
    elif watched and hidden is None:
        _probe_first_pass(work, channel, watched)
    return work


def site_name(site) -> str:
    """The qualified name rbp.convert gave a site (a module's name, or module.weight_name for a module view)."""
    return getattr(site, "rbp_name", None) or type(site).__name__


def _name_site(site, name: str, built: nn.Module):
    if isinstance(site, nn.Module):
        site.rbp_name = name
        return
    label = f"{name}.{site.weight_name}" if name else site.weight_name
    site.rbp_name = label
    for block in getattr(built, "_rbp_blocks", {}).values():     # attention's row blocks of a packed weight
        if block._whole is site:
            rows = block.row_block
            block.rbp_name = f"{label}[{rows.start}:{rows.stop}]"


def _tied_parameters(model: nn.Module, plan: Plan) -> list:
    """Groups of names under which one Parameter object appears (tied weights), where a site holds it."""
    held = {id(p) for _, m, _ in plan.layers for p in m.parameters()}
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for pid, names in by_id.items() if len(names) > 1 and pid in held]


class _FirstPass:
    """Without an example input: watch the first forward pass with gradients for hidden weight layers.

    An object (not a closure), so that a deep copy of the converted model watches its own pass.
    """

    def __init__(self, model: nn.Module, channel, watched: dict):
        self.model, self.channel, self.watched = model, channel, watched
        self.probe, self.done = None, False

    def begin(self, module, args):
        if self.done or self.probe is not None or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return
        self.probe = _WeightProbe(self.watched, [*self.model.parameters(), *self.model.buffers()])
        self.probe.__enter__()

    def end(self, module, args, output):
        if self.done or self.probe is None:
            return
        self.done = True
        probe, self.probe = self.probe, None
        probe.__exit__(None, None, None)
        self.channel.report.hidden = probe.found
        if probe.found:
            self.channel.report.warn_hidden()


def _probe_first_pass(model: nn.Module, channel, watched: dict):
    first = _FirstPass(model, channel, watched)
    model.register_forward_pre_hook(first.begin)
    model.register_forward_hook(first.end, always_call=True)


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


def _excluded_before(model: nn.Module, plan: Plan, first: str) -> bool | None:
    """True when a weight layer left to autograd (targets= / exclude=) is registered before the first site:
    the site's input is then taken to be computed (registration order is the forward order)."""
    weights = {n for n, m in plan.excluded if any(p.dim() >= 2 for p in m.parameters(recurse=False))}
    for name, _ in model.named_modules():
        if name == first:
            return None
        if name in weights:
            return True
    return None


def _init_feedback(sites, alg: Algorithm, seeds: Sequence, ensemble, members: Sequence[Algorithm] | None = None,
                   n_top: int | None = None, fed_first: bool | None = None):
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
    shared = _shared_projection(route, sites, n_top, specs, gens, ensemble, scales)

    for i, site in enumerate(sites):
        if not site.receives_feedback:
            continue  # its input is not a signal (an embedding's indices): nothing travels below it
        shape = route.feedback_shape(sites, i, n_top)
        if shared is not None and shape is not None:
            site.set_feedback(shared[..., :shape[-1]], adaptive=False)     # a view: one matrix for all sites
            continue
        if shape is None:
            fed = route.fed_feedback_shape(sites, i, n_top) if i == 0 else None
            if fed is not None and fed_first is not False:
                # drawn once a pass shows that this site's input is computed: now, if that is known
                lazy = _LazyFeedback(route, specs, scales, seeds, i, fed, ensemble, only_if_fed=True)
                if fed_first and fed[-1] is not None:
                    site.set_feedback(*lazy(site, site.weight.new_empty(0), at_convert=True))
                else:
                    site._lazy_feedback = lazy
            continue
        if shape[-1] is None:        # a skip matrix for a conv input map: sized at the first forward pass
            site._lazy_feedback = _LazyFeedback(route, specs, scales, seeds, i, shape, ensemble)
            _hold_place(site, shape)
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


def _shared_projection(route, sites, n_top, specs, gens, ensemble, scales):
    """The one skip matrix of ``skip_projection='shared'`` ((N_L, widest input), or None when not shared).

    Every receiving site's feedback becomes a view of its first columns, so the channel holds
    N_L x d_max numbers however many sites there are.
    """
    shapes = [route.feedback_shape(sites, i, n_top) for i, s in enumerate(sites) if s.receives_feedback]
    shapes = [sh for sh in shapes if sh is not None]
    if not route.shares_projection or not shapes:
        return None
    if any(sh[-1] is None for sh in shapes):
        raise ConfigError("skip_projection='shared' sizes one matrix for the widest layer input, so every width "
                          "must be known at conversion: pass example_input= to rbp.convert")
    width = max(sh[-1] for sh in shapes)
    _check_sparse(specs, width, "of the shared learning channel")
    return _members(specs, (shapes[0][0], width), gens, sites[-1], False, lambda k: None, ensemble, scales)


def _hold_place(site, shape):
    """An adaptive feedback tensor drawn at the first pass is a Parameter from now on (an empty placeholder,
    filled in place), so an optimizer built right after rbp.convert updates it."""
    if site._lazy_feedback.adaptive and isinstance(site, nn.Module):
        w = site.weight
        placeholder(site, "feedback", shape[0], w.dtype, w.device)


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

    def __call__(self, site, x, at_convert=False):
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
        if self.only_if_fed and self.adaptive and not at_convert:
            warnings.warn(f"rbp: {site_name(site)} is registered first but reads a computed input, so its adaptive "
                          "feedback became a new parameter at this first forward pass; an optimizer built before it "
                          "does not update it (pass example_input= to rbp.convert to find the order up front)",
                          UserWarning, stacklevel=2)
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
