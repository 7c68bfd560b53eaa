"""Routes: how the error reaches a hidden layer, one class each.

A route owns everything that differs between the ways the learning channel can
carry the error down (paper 1, section 3; paper 2's architectures):

* which feedback tensor a site holds and how it is first drawn
  (:meth:`Route.feedback_shape`, :meth:`Route.forward_sign`);
* what the site reads during the backward pass (:meth:`Route.source`), the
  signal it sends below (:meth:`Route.signal`) and the adaptation of its
  feedback (:meth:`Route.adaptation`);
* the weight update, where the route changes it (per-synapse feedback);
* the matrix the feedback stands in for, which the diagnostics compare it with
  (:meth:`Route.carrier`, :meth:`Route.mirror`);
* its multiplications per example, which ``rbp cost`` reports
  (:meth:`Route.channel_cost`);
* what it refuses (:meth:`Route.validate`).

:func:`route_of` maps an :class:`~rbp.channel.algorithm.Algorithm` to its route.
A new route is one subclass here plus its tests; ``site_backward``,
``rbp.convert``, the diagnostics and ``rbp cost`` only ever ask the route.

Sites are the layers with weights (:class:`rbp.nn.site.Site`).  ``sites`` below
is the channel's list of sites in forward order, ``h`` a hidden layer index
(the output of ``sites[h - 1]``, the input of ``sites[h]``).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import ConfigError


def setting(alg, name: str):
    """``getattr(alg, name)``, which dynamo takes as a constant of the graph.

    Algorithms are immutable, but dynamo (``specialize_float=False``) makes a float it read a symbolic input
    when a recompilation sees another value (a second converted model compiled in one process), and lifting
    that input into a traced backward fails (torch 2.13); the compiled driver's arithmetic reads its
    coefficients through here.
    """
    return getattr(alg, name)


# what torch._dynamo.assume_constant_result does, without importing dynamo (2.5 s) with rbp; should torch
# rename the mark, tests/test_compile.py::test_a_second_model_compiled_in_the_same_process fails
setting._dynamo_marked_constant = True


class Route:
    """The part of an algorithm that says how the error reaches hidden layer h."""

    name = ""
    chained = False        # feedback has the forward weight's shape (one matrix beside each W)
    carries = True         # hidden layers receive a signal at all
    adapts_from_update = False   # adaptive feedback changes by the forward update itself (ARBP, KP)
    needs_error = False          # hidden layers read the output error E^L itself (skipped routes)
    shares_projection = False    # one skip matrix for every site, applied once per pass (skip_projection)
    recomputable = True          # a site may enter the pass during its backward (reentrant checkpointing)
    # the signal travels through transposed forward matrices with the derivatives between them left out,
    # so it can pass only layers that are matrices (not attention's scores, not a recurrent cell's gates)
    matrices_only = False

    @property
    def feedback_adaptive(self) -> bool:
        """Whether the feedback tensors learn (are parameters)."""
        return self.alg.adaptive

    def __init__(self, alg):
        self.alg = alg

    # ------------------------------------------------------------------ convert time
    def validate(self, sites: list) -> None:
        """Refuse, with one line, what this route cannot do on these sites (forward order)."""
        if self.alg.feedback.per_synapse and self.alg.random_feedback and any(
                not s.per_synapse_defined for s in sites):
            bad = next(s for s in sites if not s.per_synapse_defined)
            why = ("a kernel's synapses are shared across positions" if bad.kind == "conv" else
                   "it gives each synapse of a plain weight matrix its own error vector, and a "
                   f"{bad.kind} layer's synapses are not one such matrix")
            raise ConfigError(f"feedback 'per-synapse' is not defined for {bad.kind} layers: {why}")

    def feedback_shape(self, sites: list, i: int, n_top: int):
        """One network's feedback tensor for ``sites[i]`` (None: the site holds none).

        The first site's input is the data, and nothing below it learns; should the
        graph show that its input was computed (``rbp.convert`` could not know the
        order), it gets :meth:`fed_feedback_shape` at the first pass.
        """
        return None if i == 0 else self.fed_feedback_shape(sites, i, n_top)

    def fed_feedback_shape(self, sites: list, i: int, n_top: int):
        """The feedback of ``sites[i]`` when its input is computed by the network."""
        return sites[i].chained_feedback_shape()

    def forward_sign(self, sites: list, i: int, k: int):
        """The forward matrix whose signs sign-following feedback copies (member k)."""
        w = sites[i].weight
        return (w[k] if sites[i].ensemble else w).detach()

    def distinct_layers(self, sites: list, n_top: int) -> list:
        """Shapes of a distinct backward network's own layers V^1 .. V^m (only the distinct route has them)."""
        return []

    # ------------------------------------------------------------------ the backward pass
    def check_output(self, site, g, fbk) -> None:
        """Called by the output site with its signal: refuse a channel sized for another output."""

    def source(self, site, pas, position: int, g, top: bool, scale: float):
        """What the site's part of the channel reads before it sends (None for the chained route)."""
        return None

    def weight_update(self, site, g, x, top, scale, pas, fbk):
        from .backward import weight_update
        return weight_update(site, g, x, top, scale, rows=pas.rows)

    def adaptation(self, site, src, g, x, gW, fbk=None, decay: float = 0.0):
        """dLoss/dB of adaptive feedback, with the shared weight decay ``decay`` x B added (a new tensor).

        On the chained route this is rate x the forward update; at Kolen-Pollack's rate 1
        the decayed gradient dW + lambda B is one pass over the weights.
        """
        rate = setting(self.alg, "adapt_rate")
        if rate == 1.0:
            return add_scaled(gW, fbk, decay, inplace=False) if decay else gW.clone()
        return _decayed(gW * rate, fbk, decay)

    def signal(self, site, pas, src, g, x, weight, fbk):
        """The signal J^{h-1} this site sends to its input, before the channel's units and operators."""
        raise NotImplementedError

    def deliver(self, pas, position: int, J) -> None:
        """Hand the sent signal to whatever reads it later in the pass (the product route)."""

    # ------------------------------------------------------------------ diagnostics and cost
    def carrier(self, sites: list, h: int):
        """The matrix that carries the signal to hidden layer h."""
        return sites[h].feedback

    def mirror(self, sites: list, h: int):
        """The forward matrix that ``carrier`` stands in for (None where it is not defined)."""
        return sites[h].weight

    @property
    def follows_forward_product(self) -> bool:
        """Whether the feedback copies the signs of a product of the forward matrices above each layer
        (congruent feedback on a skipped route): layers across which that product is undefined refuse it."""
        return False

    def channel_cost(self, N: list) -> tuple[int, int]:
        """(multiplications of the channel, multiplications its adaptation costs) per example, for a fully
        connected network of sizes N = (N_0, ..., N_L)."""
        return self.layer_cost([(N[k] * N[k + 1], N[k]) for k in range(len(N) - 1)], N[-1])

    def layer_cost(self, layers: list, n_top: int) -> tuple[int, int]:
        """The same for any stack of weight layers: ``layers`` = [(multiply-adds of layer i's forward map per
        example, units of its input per example)], in forward order; ``n_top`` output units.  Nothing is sent
        below the first layer."""
        chain = sum(macs for macs, _ in layers[1:])
        return chain, chain


def _decayed(gF, fbk, decay):
    """gF + decay x B, in place on the adaptation's own new tensor."""
    return add_scaled(gF, fbk, decay) if decay else gF


def add_scaled(t, other, alpha, inplace: bool = True):
    """t + alpha * other, in place on ``t`` (a route's own new tensor) unless ``inplace`` is False.

    Traced for torch.compile it is out of place with the product formed first: torch 2.13's inductor
    rewrites ``mm(a, b).add(c, alpha=lam)`` as ``addmm(c, a, b)`` and loses lam (tests/test_compile.py).
    """
    if torch.compiler.is_compiling():
        return t + other * alpha
    return t.add_(other, alpha=alpha) if inplace else torch.add(t, other, alpha=alpha)


class Chain(Route):
    """B^{h+1} applied to the signal of layer h+1 after its derivative: BP, RBP, ARBP, KP, WM, sign symmetry."""

    name = "chain"
    chained = True
    adapts_from_update = True

    def signal(self, site, pas, src, g, x, weight, fbk):
        from .backward import feedback_matrix
        return site.grad_input(g, feedback_matrix(site, weight, fbk, pas.probe, pas.refreshed), x)


class Product(Chain):
    """B^{h+1} applied to the signal of layer h+1 before its derivative: SBP, the twin network."""

    name = "product"
    adapts_from_update = False
    recomputable = False         # signals are handed from site to site by position
    matrices_only = True

    def source(self, site, pas, position, g, top, scale):
        # what this site's (twin) unit emits: before f'
        return g if top else pas.through_structure(position, pas.signals.pop(position))

    def adaptation(self, site, src, g, x, gW, fbk=None, decay=0.0):
        return _decayed(site.grad_weight(src, x).mul_(setting(self.alg, "adapt_rate")), fbk, decay)

    def signal(self, site, pas, src, g, x, weight, fbk):
        from .backward import feedback_matrix
        return site.grad_input(src, feedback_matrix(site, weight, fbk, pas.probe, pas.refreshed), x)

    def deliver(self, pas, position, J):
        pas.signals[position - 1] = J


class Skip(Route):
    """C^h E^L straight from the output: SRBP, ASRBP (the distinct network of depth 0)."""

    name = "skip"
    needs_error = True

    @property
    def shares_projection(self) -> bool:
        """``skip_projection='shared'``: every site's C^h is the first columns of one matrix C (N_L x d_max),
        and C E^L is computed once per backward pass, each site reading its slice (Launay et al. 2020)."""
        return self.alg.skip_projection == "shared"

    def validate(self, sites):
        super().validate(sites)
        if not self.alg.random_feedback:
            return
        top = sites[-1]
        if not top.can_be_skip_top:
            raise ConfigError(f"{self.alg.name}: the top weight layer is a {top.kind} layer; the skipped route "
                              "projects the error of a linear output layer (end the network with nn.Linear)")
        if self.alg.feedback.needs_forward_sign and any(not s.skip_sign_defined for s in sites[1:]):
            raise ConfigError(f"feedback {self.alg.feedback.kind!r} with {self.alg.name} needs the product of the "
                              "forward matrices above each layer, which is not defined across conv layers")

    def fed_feedback_shape(self, sites, i, n_top):
        if not sites[i].skip_receives:
            return None
        return (self._reads(sites, i, n_top), sites[i].skip_width())   # width None: sized at the first pass

    def _reads(self, sites, i, n_top):
        return n_top

    def _reader(self, site, fbk):
        return fbk

    def check_output(self, site, g, fbk):
        reader = self._reader(site, fbk)
        if reader is not None and reader.shape[-2] != g.shape[-1]:
            raise ConfigError(f"the network's output has {g.shape[-1]} units but the skip matrices were "
                              f"built for {reader.shape[-2]}; pass output_size= or example_input= to convert()")

    def forward_sign(self, sites, i, k):
        """Sign pattern of W^L ... W^{h+1} (N_L x N_h) at initialisation, for congruent SRBP."""
        prod = None
        for s in sites[i:]:
            w = s.forward_matrix((s.weight[k] if s.ensemble else s.weight).detach())
            prod = w if prod is None else w @ prod
        return prod

    def source(self, site, pas, position, g, top, scale):
        return pas.error

    def adaptation(self, site, src, g, x, gW, fbk=None, decay=0.0):
        return _decayed(site.grad_skip(src, x).mul_(setting(self.alg, "adapt_rate")), fbk, decay)

    def signal(self, site, pas, src, g, x, weight, fbk):
        base = None
        if self.shares_projection:
            # the compiled driver names the whole matrix (a traced tensor has no _base to find it by)
            base = pas.shared_matrix if pas.shared_matrix is not None else _leading_slice_of(fbk)
        if base is None:
            return site.skip(src, fbk, x)
        key = 0 if pas.shared_matrix is not None else id(base)
        done = pas.projections.get(key)
        if done is None or done[0] is not src or done[1] is not base:
            done = pas.projections[key] = (src, base, src @ base)     # once per pass
        return site.skip_sliced(src, done[2], fbk, x)

    def mirror(self, sites, h):
        if not all(s.kind == "linear" for s in sites[h:]):
            return None          # the product of forward matrices is not defined across conv layers
        m = sites[-1].forward_matrix(sites[-1].weight)
        for s in reversed(sites[h:-1]):
            m = m @ s.forward_matrix(s.weight)
        return m

    @property
    def follows_forward_product(self):
        return self.alg.random_feedback and self.alg.feedback.needs_forward_sign

    def layer_cost(self, layers, n_top):
        units = [u for _, u in layers[1:]]
        if self.shares_projection:      # one product with the widest layer's matrix per pass
            skip = n_top * max(units, default=0)
        else:
            skip = n_top * sum(units)
        return skip, skip


def _leading_slice_of(fbk):
    """The matrix whose first columns ``fbk`` is (a view made by ``skip_projection='shared'``), or None."""
    base = getattr(fbk, "_base", None)
    if base is None or base.dim() != fbk.dim() or fbk.storage_offset() != base.storage_offset() \
            or fbk.stride() != base.stride() or fbk.shape[:-1] != base.shape[:-1]:
        return None
    return base


class Distinct(Skip):
    """A backward network of its own (paper 2): D^0 = E^L, D^k = g(V^k D^{k-1}), hidden layer h reads
    C^h D^{min(L-h, m)}.  The site at position L-k holds V^k as ``backward_weight``."""

    name = "distinct"
    recomputable = False         # the backward network's layers are found by position


    @property
    def depth(self) -> int:
        return len(self.alg.backward_hidden)

    def validate(self, sites):
        super().validate(sites)
        if self.depth > len(sites) - 1:
            raise ConfigError(f"backward_hidden has {self.depth} layers but the network has {len(sites) - 1} hidden "
                              f"layers to receive from them; a distinct network may be at most {len(sites) - 1} "
                              "layers deep")

    def _reads(self, sites, i, n_top):
        widths = (n_top, *self.alg.backward_hidden)
        return widths[min(len(sites) - i, self.depth)]

    def _reader(self, site, fbk):
        return site.backward_weight

    def distinct_layers(self, sites, n_top):
        widths = (n_top, *self.alg.backward_hidden)
        return [(len(sites) - k, (widths[k - 1], widths[k])) for k in range(1, self.depth + 1)]

    def source(self, site, pas, position, g, top, scale):
        """Layer min(L-h, m) of the distinct network; the site at L - k computes D^k once per pass."""
        from .backward import backward_units
        k = (pas.depth or len(pas.order)) - position
        if k <= self.depth:
            below = pas.error if k == 1 else pas.backward[k - 1]
            pas.backward[k] = backward_units(self.alg, below @ site.backward_weight, scale)
        return pas.backward[min(k, self.depth)]

    def carrier(self, sites, h):
        carrier = sites[h].feedback       # D^0 = E^L -> V^1 ... V^k -> C^h, in C's orientation
        for k in range(min(len(sites) - h, self.depth), 0, -1):
            carrier = sites[len(sites) - k].backward_weight @ carrier
        return carrier

    def layer_cost(self, layers, n_top):
        L, m = len(layers), self.depth
        if m > L - 1:
            raise ConfigError(f"backward_hidden has {m} layers but the network has {L - 1} hidden layers to "
                              f"receive from them; a distinct network may be at most {L - 1} layers deep")
        widths = (n_top, *self.alg.backward_hidden)
        relay = sum(widths[k - 1] * widths[k] for k in range(1, m + 1))
        adapted = sum(widths[min(L - h, m)] * layers[h][1] for h in range(1, L))
        return relay + adapted, adapted


class PerSynapse(Skip):
    """Observation 7 of paper 1: every hidden synapse (j, i) reads the error through its own vector P[:, j, i].

    The layer above sends ones (so g holds f'(S^h)); the update of W^h is
    sum_n g_nj x_ni sum_k P_kji E_nk.  The top layer follows the gradient.
    """

    name = "per-synapse"
    feedback_adaptive = False

    def feedback_shape(self, sites, i, n_top):
        return None if i == len(sites) - 1 else self.fed_feedback_shape(sites, i, n_top)

    def fed_feedback_shape(self, sites, i, n_top):
        s = sites[i]
        return (n_top, s.out_features, s.in_features + (s.bias is not None))

    def validate(self, sites):
        Route.validate(self, sites)

    def source(self, site, pas, position, g, top, scale):
        return None

    def weight_update(self, site, g, x, top, scale, pas, fbk):
        if top:
            return super().weight_update(site, g, x, top, scale, pas, fbk)
        from .backward import update_operators
        gW, gb = site.per_synapse_update(pas.error, g, x, fbk)
        return update_operators(site, gW, gb, top)

    def signal(self, site, pas, src, g, x, weight, fbk):
        return torch.ones_like(x)        # the layer below reads the error itself, per synapse

    def carrier(self, sites, h):
        return None


class Top(Route):
    """No learning channel: only the top layer learns."""

    name = "top"
    carries = False

    def feedback_shape(self, sites, i, n_top):
        return None

    fed_feedback_shape = feedback_shape

    def signal(self, site, pas, src, g, x, weight, fbk):
        return None

    def carrier(self, sites, h):
        return None

    def mirror(self, sites, h):
        return None

    def layer_cost(self, layers, n_top):
        return 0, 0


@lru_cache(maxsize=None)
def route_of(alg) -> Route:
    """The route object of an algorithm (one per algorithm; algorithms are immutable)."""
    if alg.route == "top":
        return Top(alg)
    if alg.route == "chain":
        return Chain(alg)
    if alg.route == "product":
        return Product(alg)
    if alg.route == "skip":
        if alg.feedback.per_synapse and alg.random_feedback:
            return PerSynapse(alg)
        return Distinct(alg) if alg.backward_hidden else Skip(alg)
    raise ConfigError(f"unknown route {alg.route!r}")
