"""The Site interface: a layer with weights that the learning channel serves.

A site's forward pass is its ordinary map (affine, convolution, lookup), run
inside one autograd ``Function`` whose backward is the learning channel's step
(:func:`rbp.channel.backward.site_backward`).  That step only decides *what* to
compute; the site supplies *how*, through the methods declared here.  A new
layer type is one subclass of :class:`Site` (plus its tests): the routes, the
operators, the diagnostics and the trainer need no change.

What a site declares:

* its forward map: :meth:`affine` (x, weight, bias) -> output;
* the local rule: :meth:`grad_weight`, :meth:`grad_bias`, and the quantized
  per-example update :meth:`per_example_update`;
* the product with its feedback: :meth:`grad_input` (the signal through a
  matrix or kernel of the weight's shape: chained routes) and :meth:`skip`
  (C E^L delivered at its input: the skipped route), with :meth:`grad_skip`
  for the skip matrix's adaptation;
* its feedback: the shapes (:meth:`chained_feedback_shape`, :meth:`skip_width`)
  and how one is drawn (:meth:`sample_feedback`); the tensor itself is state of
  the module (:meth:`set_feedback`: a buffer, or a parameter when adaptive);
* the ensemble layout: :meth:`rows` (examples per network), :meth:`to_members`
  and :meth:`keep_mask` (per-member noise in the layer's own layout);
* what it cannot do, as flags (``per_synapse_defined``, ``can_be_skip_top``,
  ``skip_sign_defined``), which the routes read to refuse with one line.

The state of the channel for one forward/backward pass is a
:class:`~rbp.channel.backward.Pass`; a site enters it from :meth:`site_call`,
which also tells the pass which earlier sites its input depends on, so the
output site(s) are found from the graph that was actually run.
"""

from __future__ import annotations

import abc
import copy

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..channel.backward import functorch_active


class SiteInterface(abc.ABC):
    """What the learning channel needs of a weight matrix (see the module docstring).

    :class:`Site` is this interface as a module holding its own ``weight``, ``bias``
    and ``feedback``.  A module that keeps several matrices under fixed names (a
    recurrent layer's ``weight_ih_l0`` and ``weight_hh_l0``) implements this
    interface with one small object per matrix that reads them off the module.
    """

    kind = "weight"                 # a short name for messages ("linear", "conv", "recurrent")
    per_synapse_defined = False     # observation 7's per-synapse feedback has a meaning here
    can_be_skip_top = False         # may be the output layer whose error the skipped route projects
    skip_sign_defined = False       # the product of forward matrices above it is a matrix (congruent SRBP)
    receives_feedback = True        # False: its input is not a signal (an embedding's indices): no feedback
    skip_receives = True            # False: the skipped route sends nothing to its input (a recurrent W_hh)

    channel = None                  # the shared LearningChannel (set by rbp.convert); None: plain autograd
    ensemble = None                 # None, or K networks side by side

    # ------------------------------------------------------------------ declared algebra
    @abc.abstractmethod
    def affine(self, x, weight, bias):
        """The layer's forward map."""

    @abc.abstractmethod
    def rows(self, g) -> int:
        """Examples per network in the batch, from the signal at the output."""

    @abc.abstractmethod
    def grad_weight(self, g, x):
        """sum over examples (and positions) of g x^T, in the weight's shape."""

    @abc.abstractmethod
    def grad_bias(self, g):
        """sum over examples (and positions) of g, in the bias's shape."""

    @abc.abstractmethod
    def grad_input(self, g, matrix, x):
        """The signal g carried to the input through ``matrix`` (a tensor of the weight's shape)."""

    @abc.abstractmethod
    def skip(self, error, matrix, x):
        """The output error projected by the skip matrix, delivered in the input's shape."""

    def skip_sliced(self, error, projection, matrix, x):
        """:meth:`skip` given ``projection`` = E^L C for a shared matrix C whose first columns are ``matrix``
        (``skip_projection='shared'``: C E^L is computed once per pass).  This default projects anew."""
        return self.skip(error, matrix, x)

    @abc.abstractmethod
    def grad_skip(self, error, x):
        """E^L (O^h)^T in the skip matrix's orientation (adaptive skipped routes)."""

    @abc.abstractmethod
    def per_example_update(self, g, x, alpha, bits, scale, flush=False):
        """Weight and bias updates with each example's update quantized before the sum."""

    @abc.abstractmethod
    def sample_feedback(self, spec, shape, *, chained, generator, forward_sign, dtype, device):
        """Draw one network's feedback tensor of ``shape``."""

    @abc.abstractmethod
    def chained_feedback_shape(self) -> tuple:
        """One network's feedback tensor on the chained routes (the weight's shape)."""

    @abc.abstractmethod
    def skip_width(self):
        """Units of one network's input that a skip matrix reaches; None while unknown (sized lazily)."""

    def per_synapse_update(self, error, g, x, P):
        raise NotImplementedError(f"per-synapse feedback is not defined for {self.kind} layers")

    # ------------------------------------------------------------------ ensemble layout
    def to_members(self, t):
        """A tensor of this layer's layout -> (K, ...) per member (unchanged for a single network)."""
        return t

    def keep_mask(self, noise, J, p: float):
        """A dropout keep-mask for the signal J, drawn per member from the channel's noise."""
        shape = J.shape[1:] if self.ensemble else J.shape
        return noise.keep_mask(shape, p, J.dtype, J.device)

    @property
    def algorithm(self):
        return self.channel.algorithm

    @abc.abstractmethod
    def set_feedback(self, tensor, adaptive: bool):
        """Install the learning-channel tensor of this matrix as state of the model."""

    def forward_matrix(self, weight):
        """The weight as an (out, in) matrix, for products of forward matrices (congruent SRBP, diagnostics)."""
        return weight

    _lazy_feedback = None            # a feedback tensor drawn at the first pass that needs it (rbp.convert)

    def materialize(self, x):
        """Draw a lazily sized feedback tensor from the first input this site sees."""
        if self._lazy_feedback is not None and self._lazy_feedback.wanted(x):
            if torch.compiler.is_compiling():
                from ..errors import ConfigError
                raise ConfigError(f"the feedback of layer {getattr(self, 'rbp_name', self.kind)} is sized at its "
                                  "first pass, which cannot happen inside a compiled graph: run the converted model "
                                  "once with gradients before compiling it")
            make, self._lazy_feedback = self._lazy_feedback, None
            self.set_feedback(*make(self, x))

    def site_call(self, x, weight, bias, feedback):
        """Run the forward map with the learning channel as its backward (:class:`SiteFunction`)."""
        if not torch.is_grad_enabled():
            return self.affine(x, weight, bias)
        if torch.compiler.is_compiling():
            from .compiled import compiled_call
            return compiled_call(self, x, weight, bias, feedback)
        pas = self.channel.current_pass()
        # Under torch.func transforms the graph of wrapped tensors cannot be walked: the pass then takes
        # the last site to run as the output layer, as the fused driver does (docs/layers.md).
        position = pas.enter(self, None if functorch_active() else x)
        return SiteFunction.apply(x, weight, bias, feedback, self, pas, position)


class SiteFunction(torch.autograd.Function):
    """The one autograd Function of every site.  Forward: the layer's own map.  Backward: the learning channel.

    Module sites, attention projections and recurrent matrices all run through it.
    The feedback tensor is kept on ``ctx`` rather than saved: the blocks of one
    packed projection read rows of one feedback tensor, and feedback that is
    refreshed every minibatch (resampled, sign-following) is rewritten in place
    during the backward pass.  ``setup_context`` keeps it usable under
    ``torch.func`` transforms.
    """

    @staticmethod
    def forward(x, weight, bias, fbk, site, pas, position):
        out = site.affine(x, weight, bias)
        # an output that is a view (a linear map on (B, T, d) reshapes its 2-D product) could not be
        # modified in place by the next module (ReLU(inplace=True)); such outputs are copied once
        return out.clone() if out._base is not None else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, fbk, site, pas, position = inputs
        ctx.site, ctx.pas, ctx.position, ctx.fbk = site, pas, position, fbk
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        from ..channel.backward import site_backward
        x, weight = ctx.saved_tensors
        J, gW, gb, gF = site_backward(ctx.site, ctx.pas, ctx.position, g, x, weight, ctx.fbk,
                                      ctx.needs_input_grad[:4])
        return J, gW, gb, gF, None, None, None


def _register_node():
    from ..channel.backward import SITE_NODES
    SITE_NODES.add(SiteFunction._backward_cls)   # how a Pass recognises a site in the autograd graph


_register_node()


def install(module: nn.Module, name: str, tensor, adaptive: bool):
    """Put a learning-channel tensor on ``module`` under ``name``: a parameter when adaptive, else a buffer.

    An adaptive tensor that replaces a parameter of the same shape class (a lazily sized placeholder)
    keeps the Parameter object, so an optimizer built before it was sized still holds it.
    """
    old = module._parameters.get(name)
    if adaptive and tensor is not None and isinstance(old, nn.Parameter) and getattr(old, "_rbp_placeholder", False):
        old.data = tensor
        old._rbp_placeholder = False
        return
    module._parameters.pop(name, None)
    module._buffers.pop(name, None)
    module.__dict__.pop(name, None)
    if adaptive and tensor is not None:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def placeholder(module: nn.Module, name: str, rows: int, dtype, device):
    """An adaptive feedback tensor whose width is not known yet: an empty Parameter (rows, 0) that the
    first forward pass fills in place (:func:`install`), so optimizers built after ``rbp.convert`` hold it."""
    p = nn.Parameter(torch.empty(rows, 0, dtype=dtype, device=device))
    p._rbp_placeholder = True
    module._buffers.pop(name, None)
    module.register_parameter(name, p)


class ModuleView(SiteInterface):
    """A site for one weight matrix that a module keeps under a fixed name (attention, recurrent layers).

    The object holds no tensors: weight, bias and feedback are read off the
    owning module (``owner``) by name, so parameter names and ``state_dict`` keys
    stay the module's own, and the feedback is registered on the module
    (``feedback_name``).  Subclasses say which names, and add the tensor algebra.
    """

    ensemble = None
    weight_name = bias_name = feedback_name = None

    @property
    def owner(self) -> nn.Module:
        return self._owner

    @property
    def channel(self):
        return self.owner.channel

    @channel.setter
    def channel(self, value):       # the module's channel: all its matrices' (diagnostics detach it)
        self.owner.channel = value

    @property
    def algorithm(self):
        return self.owner.channel.algorithm

    @property
    def weight(self):
        return getattr(self.owner, self.weight_name)

    @property
    def bias(self):
        return None if self.bias_name is None else getattr(self.owner, self.bias_name)

    @property
    def feedback(self):
        return getattr(self.owner, self.feedback_name, None)

    def set_feedback(self, tensor, adaptive: bool):
        """Install this matrix's learning-channel tensor on the module, under ``feedback_name``."""
        install(self.owner, self.feedback_name, tensor, adaptive)

    @property
    def backward_weight(self):   # a distinct backward network's layer held by this site (channel/backward.py)
        return getattr(self.owner, self.feedback_name.replace("feedback", "backward_weight"), None)

    def register_buffer(self, name: str, tensor):
        if name != "backward_weight":
            raise RuntimeError(f"a {self.kind} site holds no buffer {name!r}")
        self.owner.register_buffer(self.feedback_name.replace("feedback", "backward_weight"), tensor)

    def __repr__(self):
        return f"{type(self).__name__}({self.weight_name})"


class Site(nn.Module, SiteInterface):
    """Abstract base of every layer module served by the learning channel (see the module docstring)."""

    def _init_site_state(self):
        """Declare the channel's state on a new site (call from ``__init__``)."""
        self.register_buffer("feedback", None)
        self.register_buffer("backward_weight", None)
        self.channel = None
        self._lazy_feedback = None

    # ------------------------------------------------------------------ state

    def set_feedback(self, tensor: torch.Tensor | None, adaptive: bool):
        """Install this layer's learning-channel tensor (as state of the model)."""
        install(self, "feedback", tensor, adaptive)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "feedback"
        if self._lazy_feedback is not None and key in state_dict:   # a saved lazy matrix: take it as it is
            adaptive = self._lazy_feedback.adaptive
            self._lazy_feedback = None
            self.set_feedback(torch.empty_like(state_dict[key]), adaptive)
        elif self._lazy_feedback is not None and "feedback" in self._parameters:
            # not saved either (saved before the first pass): the placeholder stays, and is not missing
            held = self._parameters.pop("feedback")
            try:
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                              unexpected_keys, error_msgs)
            finally:
                self._parameters["feedback"] = held
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        self.__dict__["_rbp_ran"] = True         # (a subclass's own forward reached the site: rbp.nn.site.shim)
        if self.channel is None:  # not converted: plain backprop
            return self.affine(x, self.weight, self.bias)
        self.materialize(x)
        # a feedback tensor still to be drawn (its placeholder) takes no part in the pass
        return self.site_call(x, self.weight, self.bias, None if self._lazy_feedback is not None else self.feedback)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._lazy_feedback is not None:          # an adaptive placeholder not yet sized is not state
            destination.pop(prefix + "feedback", None)


# ---------------------------------------------------------------------- subclasses with a forward of their own

_SHIMS: dict = {}


def overrides_forward(module: nn.Module, base: type) -> bool:
    """Whether ``module``'s class is a subclass of ``base`` with a ``forward`` of its own (HF's scaled and
    positional embeddings: ``super().forward(ids) * scale``)."""
    return isinstance(module, base) and type(module) is not base and type(module).forward is not base.forward


def shim(module: nn.Module, base: type, site_cls: type) -> nn.Module:
    """The module as a site that keeps its own class and ``forward``.

    A new object of a class derived from the module's, in which ``base.forward`` (what the module's
    ``super().forward(...)`` reaches) runs as ``site_cls``'s forward: the module computes what it
    computed, and its weight is served by the learning channel.  A forward that calls the base
    class's function itself on the module's own weight and configuration (timm's ``Linear``:
    ``F.linear(input, self.weight, self.bias)``) is served the same way (:class:`_OwnCall`).
    Parameter objects, names and ``state_dict`` keys are the module's.  Should the module's forward
    compute its map some other way, rbp names it at the first pass.
    """
    user = type(module)
    key = (user, base, site_cls)
    cls = _SHIMS.get(key)
    if cls is None:
        inner = type(f"_{site_cls.__name__}For{base.__name__}", (base, site_cls),
                     {"forward": site_cls.forward, "extra_repr": base.extra_repr, "__module__": __name__})
        cls = type(user.__name__, (user, inner), {"__module__": user.__module__, "_rbp_shim": True,
                                                   "__qualname__": user.__qualname__})
        _SHIMS[key] = cls
    new = cls.__new__(cls)
    for k, v in module.__dict__.items():
        new.__dict__[k] = copy.copy(v) if isinstance(v, (dict, set)) else v
    new._init_site_state()
    new.ensemble = None
    new._rbp_ran = False
    new._rbp_base = base
    new.register_forward_pre_hook(_shim_begin)
    new.register_forward_hook(_shim_end, always_call=True)
    return new


class _OwnCall(TorchFunctionMode):
    """While a subclass's own forward runs: its call of the base class's function on its own weight
    (timm's ``Linear``: ``F.linear(input, self.weight, self.bias)``) is served by the site."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        m = self.module
        x = _own_call(m, func, args, kwargs) if torch.is_grad_enabled() else None
        if x is not None:
            return Site.forward(m, x)
        return func(*args, **kwargs)


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _own_call(m, func, args, kwargs):
    """The input, when ``func(*args)`` is the module's own map on its own weight, else None."""
    if len(args) < 2 or _arg(args, kwargs, 1, "weight") is not m.weight:
        return None
    base = m._rbp_base
    if base is nn.Linear and func in _LINEAR:
        return args[0] if _arg(args, kwargs, 2, "bias") is m.bias else None
    if base is nn.Embedding and func in _EMBEDDING:
        same = (_arg(args, kwargs, 2, "padding_idx") in (m.padding_idx, None if m.padding_idx is None else -1)
                and _arg(args, kwargs, 3, "max_norm") is None
                and bool(_arg(args, kwargs, 5, "scale_grad_by_freq", False)) == bool(m.scale_grad_by_freq)
                and not _arg(args, kwargs, 6, "sparse", False))
        return args[0] if same else None
    if base in (nn.Conv1d, nn.Conv2d) and func in _CONV:
        d = len(m.kernel_size)
        tup = nn.modules.utils._ntuple(d)
        same = (_arg(args, kwargs, 2, "bias") is m.bias and tup(_arg(args, kwargs, 3, "stride", 1)) == m.stride
                and tup(_arg(args, kwargs, 4, "padding", 0)) == tuple(m.padding)
                and tup(_arg(args, kwargs, 5, "dilation", 1)) == m.dilation
                and _arg(args, kwargs, 6, "groups", 1) == m.groups)
        return args[0] if same else None
    return None


_LINEAR = {torch.nn.functional.linear, torch._C._nn.linear}
_EMBEDDING = {torch.nn.functional.embedding}
_CONV = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.conv1d, torch.conv2d}


def _shim_begin(module, args):
    module.__dict__["_rbp_ran"] = False
    if module.channel is not None and torch.is_grad_enabled():
        mode = _OwnCall(module)
        mode.__enter__()
        module.__dict__["_rbp_mode"] = mode


def _shim_end(module, args, output):
    mode = module.__dict__.pop("_rbp_mode", None)
    if mode is not None:
        mode.__exit__(None, None, None)
    if module.channel is not None and torch.is_grad_enabled() and not module._rbp_ran \
            and not getattr(module, "_rbp_warned", False):
        module._rbp_warned = True
        import warnings
        from .summary import UnknownWeightWarning
        warnings.warn(f"rbp.convert: {getattr(module, 'rbp_name', type(module).__name__)} "
                      f"({type(module).__name__}) overrides forward without calling its base class's forward, "
                      "so its weight is multiplied outside the learning channel and backprop trains it; register "
                      "a site adapter for it (rbp.register_site) or name it in exclude=", UnknownWeightWarning,
                      stacklevel=2)
