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

import torch
import torch.nn as nn


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
        self._parameters.pop("feedback", None)
        self._buffers.pop("feedback", None)
        self.__dict__.pop("feedback", None)
        if adaptive and tensor is not None:
            self.register_parameter("feedback", nn.Parameter(tensor))
        else:
            self.register_buffer("feedback", tensor)

    def _materialize_feedback(self, x):
        """Draw a lazily sized feedback tensor from the first input this site sees."""
        make, self._lazy_feedback = self._lazy_feedback, None
        tensor, adaptive = make(self, x)
        self.set_feedback(tensor, adaptive)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "feedback"
        if self._lazy_feedback is not None and key in state_dict:   # a saved lazy matrix: take it as it is
            adaptive = self._lazy_feedback.adaptive
            self._lazy_feedback = None
            self.set_feedback(torch.empty_like(state_dict[key]), adaptive)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        if self.channel is None:  # not converted: plain backprop
            return self.affine(x, self.weight, self.bias)
        if self._lazy_feedback is not None and self._lazy_feedback.wanted(x):
            self._materialize_feedback(x)
        return self.site_call(x, self.weight, self.bias, self.feedback)

    def site_call(self, x, weight, bias, feedback):
        """Run the forward map with the learning channel as its backward.

        Modules that keep several weight matrices under fixed names (attention,
        recurrent layers) call this with their own tensors.
        """
        if not torch.is_grad_enabled():
            return self.affine(x, weight, bias)
        from .layers import _SiteFunction
        pas = self.channel.current_pass()
        position = pas.enter(self, x)
        return _SiteFunction.apply(x, weight, bias, feedback, self, pas, position)
