"""The learning channel's backward step for one layer: the single mechanism.

A *site* is a layer with weights (``nn.Linear`` now, ``nn.Conv2d`` later) that
the channel serves.  When the signal for site h arrives (``g = dLoss/dS^h``,
i.e. -I^h / N in the paper's units for a batch-mean loss), :func:`site_backward`

1. records the output error E^L if site h is the top of the network;
2. computes the site's weight update from ``g`` and its input O^{h-1}
   (the local rule dW = I O^T, with the update operators);
3. computes the adaptation of its feedback matrix (ARBP / ASRBP, adaptive
   twin and distinct networks);
4. produces the signal J^{h-1} that arrives at the layer below *before* that
   layer's derivative: along the algorithm's route, through the learning
   channel's units (``backward_nonlinearity``, paper 2), then through the
   signal operators (quantization, dropout).  The derivative f'(S^{h-1}) is
   applied afterwards by whatever drives the backward pass (autograd through
   the activation module, or the fused trainer), or skipped for "no f'" variants.

The architectures of paper 2 on these routes (docs/symmetries.md):

* *conjoined* (``chain``): the backward connection C beside every forward one
  ends on the forward neuron, which multiplies by its f' before sending on;
* *twin* (``product``): the signal travels down a separate network of twin
  neurons, T^h = g(C^{h+1} T^{h+1}), T^L = E^L; the forward neuron multiplies
  T^h by its own f' for its own update only;
* *distinct* (``skip``): a separate network of its own sizes, D^0 = E^L,
  D^k = g(V^k D^{k-1}) for its hidden layers k = 1..m, and forward hidden layer
  h receives J^h = C^h D^{min(L-h, m)}.  The site at position L-k holds V^k
  (``backward_weight``) and computes D^k once per pass, in ``Pass.backward``;
  with m = 0 this is SRBP.

Autograd (:mod:`rbp.nn`) and the fused trainer (:mod:`rbp.train`) both call
this one function, so the two drivers cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from . import feedback as fb
from .quantize import magnitude_count, quantize
from .routes import add_scaled, route_of, setting
from .transfer import TRANSFER


SITE_NODES: set = set()   # autograd node classes of the sites' Function (registered by rbp.nn.layers)


@dataclass(eq=False)
class Pass:
    """What the learning channel knows during one forward/backward pass.

    Sites enter the pass in the order they run.  Each site also tells the pass
    which earlier sites its input was computed from (a walk of the autograd graph
    from its input down to the nearest sites, every node visited once per pass),
    so the *output sites*, whose outputs reach the loss without passing another
    site, are known from the graph actually run: residual adds, parallel
    branches, shared weights and submodules called directly all count.  A pass
    driven without a graph (the fused driver) takes its last site as the top.
    """

    order: list = field(default_factory=list)   # sites in forward execution order
    error: torch.Tensor | None = None            # dLoss/dS^L of the top site
    rows: int = 1                                # examples per network in the batch
    signals: dict = field(default_factory=dict)  # position -> pre-derivative signal (product route)
    backward: dict = field(default_factory=dict) # k -> layer k of a distinct backward network (skip route)
    probe: bool = False                          # diagnostics: no noise drawn, no feedback resampled
    structure: dict = field(default_factory=dict)  # position -> [(module, input)] pooling/reshapes above it
    consumed: set = field(default_factory=set)   # positions whose output feeds a later site
    producers: dict = field(default_factory=dict)  # position -> positions first reached from its input
    graph: bool = False                          # positions were entered with their inputs (autograd driver)
    started: bool = False                        # the backward pass has begun
    depth: int = 0                               # sites entered before the backward pass began
    projections: dict = field(default_factory=dict)  # shared skip matrix -> (error, matrix, error @ matrix)
    shared_matrix: torch.Tensor | None = None    # skip_projection='shared': the whole matrix (compiled driver)
    refreshed: bool = False                      # refreshed feedback was refreshed in the forward (compiled driver)
    _seen: set = field(default_factory=set, repr=False)

    def enter(self, site, x=None) -> int:
        self.order.append(site)
        position = len(self.order) - 1
        if self.started:
            # entered during the backward pass: a segment recomputed by activation checkpointing.  Its
            # output feeds the part of the network whose backward is running, so it is not an output.
            self.consumed.add(position)
        if x is not None:
            self.graph = True
            self.producers[position] = self.consume(x)
        return position

    def recomputed(self, position: int) -> bool:
        """Whether a site entered this pass after its backward began (a checkpointed segment)."""
        return self.started and position >= self.depth

    def consume(self, tensor) -> list:
        """Mark the sites that ``tensor`` was computed from as feeding something; returns their positions.

        Block mode and other hooks that route a tensor around the sites call it too.
        """
        found = []
        node = getattr(tensor, "grad_fn", None)
        stack = [node] if node is not None else []
        seen = self._seen
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if type(node) in SITE_NODES and getattr(node, "pas", None) is self:
                self.consumed.add(node.position)
                found.append(node.position)
                continue
            stack.extend(n for n, _ in node.next_functions if n is not None)
        return found

    def begin_backward(self):
        """The first site's backward: the graph is complete; drop the walk's bookkeeping."""
        self.started = True
        self.depth = len(self.order)
        self._seen = set()

    def outputs(self) -> list:
        """Positions of the output sites."""
        n = self.depth if self.started else len(self.order)
        if not self.graph:
            return [n - 1] if n else []
        return [p for p in range(n) if p not in self.consumed]

    def record(self, module, x):
        """A structural module (pooling, reshape) ran on x after the latest site (product route)."""
        self.structure.setdefault(len(self.order) - 1, []).append((module, x))

    def through_structure(self, position: int, J):
        """The product route's signal, from the next site's input back to this site's output.

        It passes the recorded structural modules in reverse by their own backward
        (max-pooling: to each window's winner; average pooling: spread evenly;
        reshapes), i.e. by the transposed forward matrix each of them applied on
        this pass.  The elementwise f' between them is not applied (docs/conv.md).
        """
        for module, x in reversed(self.structure.get(position, ())):
            with torch.enable_grad():
                xi = x.detach().requires_grad_(True)
                out = module.forward(xi)
            J = torch.autograd.grad(out, xi, J.reshape(out.shape))[0]
        return J

    def is_top(self, position: int) -> bool:
        if not self.graph:
            return position == (self.depth if self.started else len(self.order)) - 1
        return position not in self.consumed


def error_scale(alg, rows: int) -> float:
    """Factor from autograd's signal to the paper's units (-E per example)."""
    return float(rows) if alg.loss_reduction == "mean" else 1.0


# The learning channel's units (paper 2, symmetry of processing): each maps the summed
# signal a backward unit receives, in the paper's units (T - O per example), to what it sends.
UNITS = {name: t.apply for name, t in TRANSFER.items()}     # the one table (channel/transfer.py)


def backward_units(alg, J: torch.Tensor, scale: float) -> torch.Tensor:
    """g(J) for the algorithm's ``backward_nonlinearity`` g, applied in the paper's units.

    ``J`` is in autograd's units (dLoss/dS, i.e. -(T - O) / N for a batch-mean
    loss), so the unit sees -scale * J, and its output is converted back.
    """
    name = alg.backward_nonlinearity
    if name is None:
        return J
    if name not in UNITS:
        raise ConfigError(f"backward_nonlinearity {name!r} must be resolved by rbp.convert before training")
    return UNITS[name](J * -scale).div_(-scale)


def signal_operators(site, J: torch.Tensor, scale: float, probe: bool = False) -> torch.Tensor:
    """Quantize and drop out the signal arriving at the layer below (paper 1, sections 5.1, 6).

    A probe pass (diagnostics) skips dropout: it measures the expected signal and
    leaves the network's random streams untouched.
    """
    alg = site.algorithm
    if alg.quantize_error:
        J = quantize(J * scale, alg.quantize_error_alpha, alg.quantize_error).div_(scale)
    if alg.dropout and not probe:
        J = J * site.keep_mask(site.channel.noise, J, alg.dropout)
    return J


def update_quantizer(alg, rows: int) -> tuple[float, bool, float, int]:
    """(alpha, flush, factor, magnitudes) that realise the algorithm's reading of the quantized update.

    Every reading of ``channel.quantize.UPDATE_MODES`` is the minibatch mean of
    Q_alpha'(u_n) over the examples' updates u_n (the paper's units), times a
    factor, because Eq. 19 is scale-equivariant: Q_a(c u) = c Q_{a/c}(u) for
    c > 0.  Quantizing eta u_n ("after-lr") is thus eta Q_{alpha/eta}(u_n), and
    quantizing u_n / N ("share") is Q_{alpha N}(u_n) / N.  The modes are stated
    for the paper's batch-mean loss.
    """
    words = alg.quantize_update_mode.split("+")
    c = 1.0
    if "after-lr" in words:
        c *= alg.quantize_update_lr
    if "share" in words:
        c /= rows
    return (alg.quantize_update_alpha / c, "flush" in words, float(rows) if "sum" in words else 1.0,
            magnitude_count(alg.quantize_update, "levels" in words))


def weight_update(site, g, x, top: bool, scale: float, rows: int = 1):
    """dLoss/dW and dLoss/db in the algorithm's sense, with the update operators.

    (Per-synapse feedback changes how the update is formed: its route does that,
    :class:`rbp.channel.routes.PerSynapse`.)
    """
    alg = site.algorithm
    if alg.quantize_update:
        alpha, flush, factor, magnitudes = update_quantizer(alg, rows)
        gW, gb = site.per_example_update(g, x, alpha, magnitudes, scale, flush=flush)
        if factor != 1.0:
            gW.mul_(factor)
            gb = None if gb is None else gb.mul_(factor)
    else:
        gW = site.grad_weight(g, x)
        gb = site.grad_bias(g) if site.bias is not None else None
    return update_operators(site, gW, gb, top)


def update_operators(site, gW, gb, top: bool):
    """Sign-only and magnitude-only updates of hidden layers (observations 5-6)."""
    alg = site.algorithm
    if not top and alg.update != "full":
        gW, gb = _sign_or_magnitude(alg.update, gW, site.ensemble), (
            None if gb is None else _sign_or_magnitude(alg.update, gb, site.ensemble))
    return gW, gb


def _sign_or_magnitude(mode, grad, ensemble):
    """Observations 5-6 of paper 1, section 4.2.

    ``sign``: keep only the sign of each synapse's update, at the layer's mean
    magnitude (the step size stays comparable, the information is one bit).
    ``magnitude``: keep only |update|, always in the same direction (dW = +|dW|).
    """
    if mode == "magnitude":
        return -grad.abs()
    dims = tuple(range(1 if ensemble else 0, grad.dim()))
    return torch.sign(grad) * grad.abs().mean(dim=dims, keepdim=True)


def feedback_matrix(site, weight, fbk, probe: bool = False, refreshed: bool = False):
    """The matrix the signal travels through at this site (resampled if the algorithm says so).

    ``refreshed``: the caller has refreshed it already in this pass (the compiled driver does so in the
    forward, :func:`rbp.nn.compiled.refresh_feedback`)."""
    alg = site.algorithm
    if alg.symmetric:
        return weight
    spec = alg.feedback
    # resampled feedback draws new random numbers: a probe pass (diagnostics) leaves it as it is;
    # feedback that only follows the forward signs (uSF, frSF) is refreshed on a probe as well,
    # so the probe measures the matrix that the next step would use
    if spec.refreshed and not (probe and spec.resampled) and not refreshed:
        with torch.no_grad():
            functorch = functorch_active()   # torch.func may not mutate a captured tensor: a new matrix then
            if spec.kind == "sign-fixed":          # frSF: fixed magnitudes, current signs
                return fb.follow_signs(fbk, weight) if functorch else fb.follow_signs_(fbk, weight)
            if spec.kind == "sign-uniform":        # uSF: one magnitude, current signs
                magnitude = _uniform_magnitude(site, spec, fbk)
                sign = weight if weight.dtype == fbk.dtype else weight.to(fbk.dtype)
                return torch.copysign(magnitude, sign) if functorch else torch.copysign(magnitude, sign, out=fbk)
            new = _resample(site, spec, weight, fbk)
            if alg.feedback_scale != 1.0:
                new.mul_(alg.feedback_scale)
            if functorch:
                return new
            fbk.copy_(new)
    return fbk


_MAGNITUDES: dict = {}


def _uniform_magnitude(site, spec, fbk) -> torch.Tensor:
    """uSF's one magnitude for this site's feedback (0-dim): the site's own draw of sign-uniform
    feedback, times ``feedback_scale``, computed once per shape (the draw uses no random numbers)."""
    shape = fbk.shape[1:] if site.ensemble else fbk.shape
    scale = site.algorithm.feedback_scale
    key = (type(site), shape, scale, fbk.dtype, fbk.device)
    m = _MAGNITUDES.get(key)
    if m is None:
        chained = route_of(site.algorithm).chained     # always (sign-following feedback is the chained routes')
        one = torch.ones(shape, dtype=fbk.dtype, device=fbk.device)
        m = site.sample_feedback(spec, shape, chained=chained, generator=None, forward_sign=one,
                                 dtype=fbk.dtype, device=fbk.device).reshape(-1)[:1].clone()
        if scale != 1.0:
            m.mul_(scale)
        m = _MAGNITUDES[key] = m.reshape(())
    return m


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vjp, vmap) is running."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:       # pragma: no cover - older torch
        return False


def _resample(site, spec, weight, fbk):
    shape = fbk.shape[1:] if site.ensemble else fbk.shape
    gens = site.channel.noise.generators(fbk.device)
    chained = route_of(site.algorithm).chained

    def one(gen, w):
        return site.sample_feedback(spec, tuple(shape), chained=chained, generator=gen, forward_sign=w,
                                    dtype=fbk.dtype, device=fbk.device)

    if not site.ensemble:
        return one(gens[0], weight)
    return torch.stack([one(g, weight[k]) for k, g in enumerate(gens)])


def site_backward(site, pas: Pass, position: int, g, x, weight, fbk, needs):
    """One layer's step of the learning channel.

    ``needs`` = (input, weight, bias, feedback) flags.  Returns
    ``(J, grad_weight, grad_bias, grad_feedback)``, each ``None`` when not needed.

    Adaptive feedback learns by the forward rule, dC = rate * (what the sending
    backward unit emits) x (forward activity O^h of the receiving neuron), in C's
    orientation: conjoined (ARBP) R^{h+1} (O^h)^T, the same outer product as the
    forward update; twin T^{h+1} (O^h)^T (no f', which the twin neuron does not
    know); distinct / skipped D^k (O^h)^T (ASRBP: E^L (O^h)^T).

    ``weight_decay`` (lambda) adds lambda * W to the weight gradient, lambda * b to
    the bias gradient and lambda * C to the adaptive feedback's: with rate 1 on the
    chained route this is Kolen-Pollack (Akrout et al. 2019), dC - dW = lambda (C - W),
    so C - W decays geometrically and C comes to mirror W.
    """
    alg = site.algorithm
    route = route_of(alg)
    if not pas.started:
        pas.begin_backward()
    if pas.recomputed(position) and not route.recomputable:
        raise ConfigError(f"{alg.name} under reentrant activation checkpointing: its route ({route.name}) hands "
                          "signals between sites by their places in the forward pass, which a segment recomputed "
                          "during the backward pass does not keep; use torch.utils.checkpoint(..., "
                          "use_reentrant=False)")
    x_dtype = x.dtype
    g, x = working_precision(g, x, weight)
    top = pas.is_top(position)
    if top:
        if pas.error is not None and route.needs_error:
            raise ConfigError(f"{alg.name} projects the output error to every hidden layer, but this model has "
                              f"{len(pas.outputs())} output layers (weight layers whose outputs reach the loss "
                              "without passing another): combine the outputs in one nn.Linear")
        pas.error = g
        pas.rows = site.rows(g)
        route.check_output(site, g, fbk)
    elif g is None or not route.carries:
        return None, None, None, None
    return channel_step(site, route, pas, position, g, x, x_dtype, weight, site.bias, fbk, needs, top)


def working_precision(g, x, weight):
    """Mixed precision (autocast): the forward ran in a lower precision, and the channel computes in the
    weight's dtype (the signal goes back in the input's dtype: :func:`channel_step`)."""
    if g is not None and g.dtype != weight.dtype and g.is_floating_point():
        g = g.to(weight.dtype)
    if x.is_floating_point() and x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return g, x


def channel_step(site, route, pas, position, g, x, x_dtype, weight, bias, fbk, needs, top):
    """The site's own part of :func:`site_backward` once the pass's bookkeeping is done: its update, the
    adaptation of its feedback and the signal it sends below.  It changes nothing outside ``pas``, so the
    compiled driver (:mod:`rbp.nn.compiled`) calls it with a pass of its own (and passes every tensor it
    reads: a module's attribute read inside a traced backward is a captured tensor dynamo does not lift
    reliably)."""
    alg = site.algorithm
    need_x, need_w, need_b, need_f = needs
    scale = error_scale(alg, pas.rows)
    sends = (need_x or need_f) and route.carries
    src = route.source(site, pas, position, g, top, scale) if sends else None

    gW = gb = gF = J = None
    if need_w or need_b or (need_f and route.adapts_from_update):
        gW, gb = route.weight_update(site, g, x, top, scale, pas, fbk)
    lam = setting(alg, "weight_decay")      # one decay for the forward weights and the adaptive feedback (Kolen-Pollack)
    if need_f:
        gF = route.adaptation(site, src, g, x, gW, fbk, lam)
    if lam:
        if need_w and gW is not None and not getattr(site, "rbp_shares_weight", False):   # a tied weight: once
            gW = add_scaled(gW, weight, lam)
        if need_b and gb is not None:
            gb = add_scaled(gb, bias, lam)
    if need_x and route.carries:
        J = route.signal(site, pas, src, g, x, weight, fbk)
        J = backward_units(alg, J, scale)
        J = signal_operators(site, J, scale, pas.probe)
        route.deliver(pas, position, J)
        if J is not None and J.dtype != x_dtype and J.is_floating_point() and x_dtype.is_floating_point:
            J = J.to(x_dtype)
    return J, (gW if need_w else None), (gb if need_b else None), gF
