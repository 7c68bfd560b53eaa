"""The learning channel under ``torch.compile``: a driver with no state outside the graph.

The eager driver (:class:`rbp.nn.site.SiteFunction`) keeps the pass's state in a
Python object, :class:`~rbp.channel.backward.Pass`: each site enters it in the
forward pass (a walk of the autograd graph finds the output layer), the output
site records the error E^L in it during the backward pass, and the skipped
route's hidden sites read it there.  Dynamo can trace none of that: every site is
a graph break, and ``fullgraph=True`` fails.

Under compilation each site runs :class:`CompiledSite` instead, whose backward is
a pure function of its tensors and of facts fixed before tracing:

* **What is fixed.**  The network's structure (which site is the output layer) is
  taken from the latest *eager* pass with gradients, noted by the channel
  (:meth:`rbp.nn.convert.LearningChannel.end_pass`) and turned into a
  :class:`Plan` before compilation starts.  A compiled model must therefore run
  once without compilation first when its algorithm needs the output layer (the
  skipped route, sign-only or magnitude-only updates) or when a feedback matrix is
  still sized lazily; otherwise it is refused with one line.
* **Chained routes** (BP, RBP, ARBP, Kolen-Pollack, weight mirrors, uSF, frSF):
  a site's backward needs nothing but its own signal, input, weight and feedback.
  Feedback that follows the forward signs is refreshed in the forward, in place
  (the buffer ends each step as under the eager driver); the backward reads it.
* **The skipped route** (SRBP, ASRBP, shared projection): the output site takes
  the inputs and skip matrices of the hidden sites as extra inputs of its own
  ``Function``, so its backward, which receives E^L, returns every hidden site's
  signal C^h E^L (and the adaptation of C^h) as their gradients.  The hidden
  sites' own backward computes only their weight update.  The data flow orders it.

Both call :func:`rbp.channel.backward.channel_step`, the eager driver's own
per-site computation, with a pass object local to the backward, so the two
drivers compute the same numbers (``tests/test_compile.py`` compares them).

What is refused under compilation, and why (:func:`refusal`): routes that hand
signals from site to site by position (the twin network, the distinct network,
per-synapse feedback); anything that draws from the channel's own random
generators during a step (channel dropout, resampled or sign-concordant feedback
with random magnitudes: a compiled graph cannot advance a ``torch.Generator``
passed as an argument); the quantized update (a C kernel through ctypes);
quantized signals and the channel's own units (their scale is the batch size the
output layer sees, which a hidden site's compiled backward cannot read); SRBP's
block mode and recurrent layers (their hooks and per-step functions keep state
in Python); a site called more than once per pass where the output layer matters.
"""

from __future__ import annotations

import torch

from ..channel.backward import Pass, channel_step, working_precision, _uniform_magnitude
from ..channel.routes import route_of
from ..channel import feedback as fb
from ..errors import ConfigError


class Plan:
    """What the compiled driver needs to know before tracing (built eagerly by the channel)."""

    def __init__(self, channel, pas: Pass | None):
        alg = channel.algorithm
        self.route = route_of(alg)
        self.algorithm = alg
        self.skip = self.route.needs_error
        self.shared = self.route.shares_projection
        self.sign_following = bool(alg.random_feedback and alg.feedback.follows_forward)
        self.stash: list = []         # (site, input, skip matrix) of the hidden sites, while tracing
        self.refusal = refusal(channel)
        needs_top = self.skip or alg.update != "full"
        self.tops: dict = {}           # id(site) -> whether it is the output layer
        if needs_top and self.refusal is None:
            if pas is None or not pas.order:
                self.refusal = (f"{alg.name} under torch.compile needs the network's output layer, which the learning "
                                "channel finds on an eager pass: run the converted model once with gradients before "
                                "compiling it (one training step, or one forward pass)")
            else:
                outputs = set(pas.outputs())
                for p, site in enumerate(pas.order):
                    top = p in outputs
                    if self.tops.setdefault(id(site), top) != top:
                        self.refusal = (f"{alg.name} under torch.compile: layer {_name(site)} runs more than once per "
                                        "pass, once as the output layer and once not, which a compiled graph cannot "
                                        "tell apart; compile without fullgraph or use a chained algorithm")
                        break
                if self.skip and self.refusal is None and len(outputs) > 1:
                    self.refusal = (f"{alg.name} projects the output error to every hidden layer, but this model has "
                                    f"{len(outputs)} output layers: combine the outputs in one nn.Linear")
        self.magnitudes: dict = {}     # id(site) -> uSF's one magnitude (computed here, outside the graph)
        if self.refusal is None and self.sign_following and alg.feedback.kind == "sign-uniform":
            for site in channel.sites:
                f = site.feedback
                if f is not None and f.numel():
                    self.magnitudes[id(site)] = _uniform_magnitude(site, alg.feedback, f)
        # (the first site's feedback, drawn only should its input turn out to be computed, is no obstacle)
        self.lazy = [s for s in channel.sites if getattr(s, "_lazy_feedback", None) is not None
                     and not s._lazy_feedback.only_if_fed]
        if self.refusal is None and self.lazy:
            self.refusal = (f"the feedback of layer {_name(self.lazy[0])} is sized at its first pass, which cannot happen inside "
                            "a compiled graph: run the converted model once with gradients before compiling it "
                            "(or pass example_input= to rbp.convert)")


def refusal(channel) -> str | None:
    """Why this channel's algorithm cannot run under torch.compile (one line), or None."""
    alg = channel.algorithm
    route = route_of(alg)
    head = f"{alg.name} cannot run under torch.compile"
    if route.name in ("product", "distinct", "per-synapse"):
        return (f"{head}: its route ({route.name}) hands signals between sites by their places in the pass, "
                "state a compiled graph does not keep; train it without torch.compile")
    if alg.dropout:
        return f"{head}: channel dropout draws its masks from the network's own generators, which a compiled graph " \
               "cannot advance; train it without torch.compile"
    if alg.random_feedback and alg.feedback.resampled:
        return (f"{head}: feedback {alg.feedback.kind!r} is drawn afresh at every step from the network's own "
                "generators, which a compiled graph cannot advance; train it without torch.compile")
    if alg.quantize_update:
        return f"{head}: the quantized update runs a C kernel outside PyTorch; train it without torch.compile"
    if alg.quantize_error or alg.backward_nonlinearity is not None:
        return (f"{head}: quantized signals and the channel's own units are scaled by the batch size that the "
                "output layer sees, which a hidden layer's compiled backward cannot read; train it without "
                "torch.compile")
    if getattr(channel, "blocks", None):
        return f"{head} in block mode: its hooks hand block outputs to the model's output through Python state"
    if any(getattr(s, "kind", "") == "recurrent" for s in channel.sites):
        return (f"{head} on recurrent layers: their backward runs one function per time step that keeps the pass "
                "in Python; train them without torch.compile")
    return None


def _name(site) -> str:
    return getattr(site, "rbp_name", None) or type(site).__name__


def compiled_call(site, x, weight, bias, fbk):
    """A site's forward while dynamo traces: :class:`CompiledSite` with the facts of the channel's plan."""
    plan = site.channel.compiled_plan()
    if plan.refusal is not None:
        raise ConfigError(plan.refusal)
    if fbk is not None and plan.sign_following:
        refresh_feedback(plan, site, weight, fbk)
    top = plan.tops.get(id(site), False)
    if plan.skip and not top:
        # a hidden site of the skipped route: its signal and adaptation are the output site's to compute
        if fbk is not None:
            plan.stash.append((site, x, fbk))
        return CompiledSite.apply(x, weight, bias, None, site, plan, False, ())
    fed, extra = [], []
    if plan.skip:
        # autograd.Function takes each tensor once (two sites may read one input: a downsampling shortcut):
        # every hidden site names its input and skip matrix by slot, -1 for this site's own input
        def slot(t):
            if t is x:
                return -1
            for k, e in enumerate(extra):
                if e is t:
                    return k
            extra.append(t)
            return len(extra) - 1
        for s, xi, ci in plan.stash:
            fed.append((s, slot(xi), slot(ci)))
        plan.stash.clear()
    return CompiledSite.apply(x, weight, bias, fbk, site, plan, top, tuple(fed), *extra)


def refresh_feedback(plan, site, weight, fbk):
    """Sign-following feedback (uSF, frSF) takes the current signs of the forward weight, in place, as the eager
    driver does at the start of the site's backward (the weight does not change in between)."""
    with torch.no_grad():
        w = weight if weight.dtype == fbk.dtype else weight.to(fbk.dtype)
        if plan.algorithm.feedback.kind == "sign-fixed":
            fb.follow_signs_(fbk, w)
        else:
            fbk.copy_(torch.copysign(plan.magnitudes[id(site)], w))


class CompiledSite(torch.autograd.Function):
    """A site's map, with a backward that is a pure function of its inputs (see the module docstring).

    ``fed``: the sites whose signals this output site computes (the skipped route), each as (site, slot of its
    input, slot of its skip matrix) among the tensors that follow (slot -1: this site's own input ``x``).
    """

    @staticmethod
    def forward(x, weight, bias, fbk, site, plan, top, fed, *fed_tensors):
        out = site.affine(x, weight, bias)
        return out.clone() if out._base is not None else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, fbk, site, plan, top, fed, *fed_tensors = inputs
        ctx.site, ctx.plan, ctx.top, ctx.fed = site, plan, top, fed
        ctx.has_bias, ctx.has_fbk = bias is not None, fbk is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, *[t for t in (bias, fbk) if t is not None], *fed_tensors)

    @staticmethod
    def backward(ctx, g):
        site, plan, top = ctx.site, ctx.plan, ctx.top
        saved = ctx.saved_tensors
        x, weight = saved[0], saved[1]
        k = 2
        bias = saved[k] if ctx.has_bias else None
        k += ctx.has_bias
        fbk = saved[k] if ctx.has_fbk else None
        fed_tensors = saved[k + ctx.has_fbk:]
        tail = (None,) * (4 + len(fed_tensors))       # site, plan, top, fed, then the fed tensors' slots
        if g is None:
            return (None, None, None, None) + tail
        needs = tuple(ctx.needs_input_grad[:4])
        pas = Pass(refreshed=True)
        x_dtype = x.dtype
        g, x = working_precision(g, x, weight)
        if top:
            pas.error, pas.rows = g, site.rows(g)
            if plan.shared and fbk is not None:     # the widest site's skip matrix is the whole shared one
                widest = fbk
                for _, _, ic in ctx.fed:
                    c = fed_tensors[ic]
                    if c.shape[-1] > widest.shape[-1]:
                        widest = c
                pas.shared_matrix = widest
        elif plan.skip:            # a hidden site of the skipped route: the output site sends its signal
            needs = (False, needs[1], needs[2], False)
        J, gW, gb, gF = channel_step(site, plan.route, pas, 0, g, x, x_dtype, weight, bias, fbk, needs, top)
        extra = list(fed_tensors)
        grads = [None] * len(extra)
        for s, ix, ic in ctx.fed:                 # the hidden sites of the skipped route
            xi = x if ix < 0 else extra[ix]
            ci = extra[ic]
            need_x = ctx.needs_input_grad[0] if ix < 0 else ctx.needs_input_grad[8 + ix]
            xi_dtype = saved[0].dtype if ix < 0 else xi.dtype
            _, xi = working_precision(None, xi, ci)
            Ji, _, _, gCi = channel_step(s, plan.route, pas, 0, None, xi, xi_dtype, ci, None, ci,
                                         (need_x, False, False, ctx.needs_input_grad[8 + ic]), False)
            if ix < 0:
                J = Ji if J is None else J + Ji
            elif Ji is not None:
                grads[ix] = Ji if grads[ix] is None else grads[ix] + Ji
            if gCi is not None:
                grads[ic] = gCi if grads[ic] is None else grads[ic] + gCi
        return (J, gW, gb, gF, None, None, None, None, *grads)
