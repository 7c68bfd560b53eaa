"""Algorithms of the random-backpropagation family as data.

Every algorithm trains with the same local rule, dW^h = eta I^h (O^{h-1})^T, and
differs only in how the learning channel produces the postsynaptic signal I^h
from the output error E^L = T - O^L (paper 1, section 3).  An
:class:`Algorithm` says how:

* ``route``: how the error travels to hidden layer h

  - ``chain``: layer by layer, multiplied by f' at every stage
    (BP with the forward weights, RBP with random matrices);
  - ``product``: layer by layer through the matrices only, the derivative is
    applied at the receiving layer alone (SBP with the transposed forward
    weights: I^h = f'(S^h) * (W^{h+1})^T ... (W^L)^T E^L);
  - ``skip``: straight from the output, I^h = f'(S^h) * C^h E^L (SRBP);
  - ``top``: nowhere; only the top layer learns.

* ``feedback``: ``symmetric`` (the current forward weights, transposed) or a
  random distribution (see :mod:`rbp.channel.feedback`), optionally adaptive.
* signal operators on the way (``derivative``, ``quantize_error``, ``dropout``,
  ``backward_nonlinearity``) and update operators at the synapse
  (``quantize_update``, ``update``).
* the learning channel's own network (paper 2): ``backward_hidden`` layers of a
  distinct backward network on the skipped route, and the initial scale of
  both channels (``feedback_scale``, ``init_scale``).

Every algorithm realises one of paper 2's learning-channel *architectures*
(:attr:`Algorithm.architecture`): ``bidirectional`` (the forward connections
used in reverse: BP, SBP), ``conjoined`` (a separate backward connection beside
every forward one, the signal multiplied by f' inside the forward neuron: RBP,
ARBP), ``twin`` (a separate network of one twin neuron per forward neuron that
does not know the forward derivatives: the product route with random feedback)
and ``distinct`` (a separate network of its own sizes and depth: SRBP is the
one with no hidden layer).  See docs/symmetries.md.

New variants are new registry entries or options, not new model classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import feedback as fb
from .quantize import ERROR_ALPHA, MAX_BITS, MIN_BITS, UPDATE_ALPHA, parse_update_mode

ROUTES = ("chain", "product", "skip", "top")
UPDATES = ("full", "sign", "magnitude")
ARCHITECTURES = ("bidirectional", "conjoined", "twin", "distinct")
# Transfer functions a learning channel's units may apply (paper 2, symmetry of processing);
# "same" is resolved by rbp.convert to the forward network's own transfer function.
BACKWARD_UNITS = ("tanh", "relu", "logistic", "linear", "same")
_UNIT_ALIASES = {"sigmoid": "logistic", "identity": "linear"}


@dataclass(frozen=True)
class Algorithm:
    """A complete description of one learning channel.

    Build one with :func:`algorithm`; the fields are documented in the module
    docstring and in the README's table.
    """

    name: str
    route: str
    symmetric: bool = False
    feedback: fb.FeedbackSpec = field(default_factory=lambda: fb.FeedbackSpec("glorot-normal"))
    adaptive: bool = False
    adapt_rate: float = 0.1
    derivative: bool = True
    quantize_error: int | None = None
    quantize_error_alpha: float = ERROR_ALPHA
    quantize_update: int | None = None
    quantize_update_alpha: float = UPDATE_ALPHA
    quantize_update_mode: str = "eq19"         # which reading of section 5.2 (channel.quantize.UPDATE_MODES)
    quantize_update_lr: float | None = None    # the (constant) learning rate the "after-lr" reading needs
    dropout: float = 0.0
    update: str = "full"
    loss_reduction: str = "mean"
    backward_nonlinearity: str | None = None   # transfer function of the learning channel's units
    backward_hidden: tuple = ()                # hidden layer sizes of a distinct backward network (skip route)
    feedback_scale: float = 1.0                # the feedback matrices are drawn at this multiple of their scale
    init_scale: float = 1.0                    # rbp.convert multiplies the forward weights by it
    weight_decay: float = 0.0                  # lambda: adds lambda*W, lambda*b, lambda*B (adaptive) to the grads
    mirror_rate: float = 0.0                   # weight mirrors (eta; 0 = none): see rbp.channel.mirror
    mirror_noise: float = 1.0                  # sd of the noise that drives each layer in the mirror phase
    mirror_decay: float = 1.0                  # the mirror's decay of B: B -> (mirror_noise^2 / mirror_decay) W
    mirror_batch: int = 100                    # noise vectors per layer per mirror step
    blocks: tuple = ()                         # SRBP block mode: modules whose outputs receive C E^L (rbp.nn.blocks)
    block_feedback: str = "bp"                 # the route inside and between blocks: "bp" or "rbp"
    block_matrix: str = "own"                  # each block its own C_k, or one C "shared" by all blocks

    @property
    def random_feedback(self) -> bool:
        return self.route != "top" and not self.symmetric

    @property
    def architecture(self) -> str | None:
        """Paper 2's learning-channel architecture (None for top-layer-only: there is no channel)."""
        if self.route == "top":
            return None
        if self.symmetric:
            return "bidirectional"
        return {"chain": "conjoined", "product": "twin", "skip": "distinct"}[self.route]

    @property
    def hidden_learn(self) -> bool:
        return self.route != "top"

    def describe(self) -> str:
        """A short human-readable label, e.g. ``rbp[sparse-8, no f']``."""
        extras = []
        defaults = ALGORITHMS.get(self.name)
        if self.random_feedback and str(self.feedback) != str(getattr(defaults, "feedback", "glorot-normal")):
            extras.append(str(self.feedback))
        if not self.derivative:
            extras.append("no f'")
        if self.quantize_error:
            extras.append(f"qerr {self.quantize_error}b")
        if self.quantize_update:
            mode = "" if self.quantize_update_mode == "eq19" else " " + self.quantize_update_mode
            extras.append(f"qupd {self.quantize_update}b{mode}")
        if self.dropout:
            extras.append(f"lc-dropout {self.dropout:g}")
        if self.update != "full":
            extras.append(f"{self.update}-only")
        for key, label in (("weight_decay", "decay {:g}"),
                           ("mirror_rate", "mirror rate {:g}"), ("mirror_noise", "mirror noise {:g}"),
                           ("mirror_decay", "mirror decay {:g}"), ("mirror_batch", "mirror batch {}")):
            if getattr(self, key) != getattr(defaults, key, getattr(Algorithm, key)):
                extras.append(label.format(getattr(self, key)))
        if self.backward_nonlinearity != getattr(defaults, "backward_nonlinearity", None):
            extras.append(f"{self.backward_nonlinearity or 'linear'} backward units")
        if self.backward_hidden != getattr(defaults, "backward_hidden", ()):
            extras.append("backward " + ("-".join(map(str, self.backward_hidden)) or "depth 0"))
        if self.feedback_scale != getattr(defaults, "feedback_scale", 1.0):
            extras.append(f"feedback x{self.feedback_scale:g}")
        if self.init_scale != getattr(defaults, "init_scale", 1.0):
            extras.append(f"init x{self.init_scale:g}")
        if self.blocks:
            extras.append(f"blocks {' '.join(self.blocks)}, {self.block_feedback} inside"
                          + (", one shared C" if self.block_matrix == "shared" else ""))
        return self.name + (f"[{', '.join(extras)}]" if extras else "")

    def options(self) -> dict:
        """The user-facing options that rebuild this algorithm with :func:`algorithm`."""
        out = {}
        defaults = ALGORITHMS[self.name]
        if str(self.feedback) != str(defaults.feedback):
            out["feedback"] = str(self.feedback)
        for key in ("derivative", "quantize_error", "quantize_update", "dropout", "update",
                    "adapt_rate", "loss_reduction", "quantize_error_alpha", "quantize_update_alpha",
                    "quantize_update_mode", "quantize_update_lr", "backward_nonlinearity", "backward_hidden", "feedback_scale", "init_scale",
                    "weight_decay", "mirror_rate", "mirror_noise", "mirror_decay", "mirror_batch",
                    "blocks", "block_feedback", "block_matrix"):
            if getattr(self, key) != getattr(defaults, key):
                out[key] = getattr(self, key)
        return out


# The named algorithms of paper 1 (Table 1 / Fig. 1-2).
def training_signature(alg: Algorithm) -> Algorithm:
    """``alg`` with the fields that only shape the initial state blanked out.

    Two algorithms with equal signatures run the same training step on
    different initial states (feedback distribution and scale, initial scale of
    the forward weights), so their networks can share one *mixed* ensemble
    (:func:`rbp.convert` with ``member_algorithms``).  Feedback that is redrawn
    every minibatch or read per synapse acts during training: it is kept.
    """
    spec = alg.feedback
    if spec.refreshed or spec.per_synapse:
        return dataclasses.replace(alg, name="", init_scale=1.0)
    return dataclasses.replace(alg, name="", feedback=fb.FeedbackSpec("glorot-normal"), feedback_scale=1.0,
                               init_scale=1.0)


ALGORITHMS: dict[str, Algorithm] = {
    "bp": Algorithm("bp", "chain", symmetric=True),
    "sbp": Algorithm("sbp", "product", symmetric=True),
    "rbp": Algorithm("rbp", "chain"),
    "srbp": Algorithm("srbp", "skip"),
    "arbp": Algorithm("arbp", "chain", adaptive=True),
    "asrbp": Algorithm("asrbp", "skip", adaptive=True),
    "top": Algorithm("top", "top"),
}

# The wider family (docs/family.md): Kolen-Pollack and weight mirrors (Akrout et al. 2019) learn
# the feedback; the sign-concordant feedbacks (Liao, Leibo & Poggio 2016; Xiao et al. 2018, with
# BioTorch's names) take the forward signs at every minibatch.
# Kolen-Pollack's shared weight decay: rbp's default for the papers' SGD protocol (lr 0.1); the
# authors' released NumPy code trains without decay (its factor is 1).  With lr eta and decay
# lambda, B - W shrinks by (1 - eta lambda) per step.
KP_DECAY = 1e-2
_FAMILY = {
    "kp": (Algorithm("kp", "chain", adaptive=True, adapt_rate=1.0, weight_decay=KP_DECAY),
           "Kolen-Pollack (Akrout et al. 2019): feedback gets the forward update, both decay alike; B -> W^T"),
    "wm": (Algorithm("wm", "chain", mirror_rate=0.05),
           "weight mirrors (Akrout et al. 2019): after each step a noise-driven mirror phase teaches B W^T"),
    "usf": (Algorithm("usf", "chain", feedback=fb.FeedbackSpec("sign-uniform")),
            "uniform sign-concordant feedback (uSF; Liao et al. 2016, Xiao et al. 2018): sign(W), one magnitude"),
    "brsf": (Algorithm("brsf", "chain", feedback=fb.FeedbackSpec("sign-concordant")),
             "batchwise random-magnitude sign-concordant feedback (brSF; Liao et al. 2016): |M| sign(W), M redrawn"),
    "frsf": (Algorithm("frsf", "chain", feedback=fb.FeedbackSpec("sign-fixed")),
             "fixed random-magnitude sign-concordant feedback (frSF; Liao et al. 2016): |M| fixed, sign(W) current"),
}

DESCRIPTIONS = {
    "bp": "backpropagation: the exact gradient, errors travel back through W^T",
    "sbp": "skipped BP: product of transposed forward matrices, derivative of the receiving layer only",
    "rbp": "random backpropagation (feedback alignment): fixed random matrices in place of W^T",
    "srbp": "skipped RBP (direct feedback alignment): the output error goes straight to each layer",
    "arbp": "adaptive RBP: the random matrices learn with the forward rule (rate 0.1 x)",
    "asrbp": "adaptive SRBP: the skip matrices learn from E^L and O^h",
    "top": "top layer only: hidden layers keep their random initial weights",
}

# The learning-channel architectures of paper 2 (docs/symmetries.md), and the named
# variants its experiments use: nonlinear learning channels ("n": the backward units apply
# the forward network's transfer function) and adaptation from small weights in both
# channels ("-small": 0.2 x the Glorot scale; from 0.1 x the paper's 4-hidden-layer tanh
# network stays at the saddle at the origin for many epochs, with BP too).
SMALL = 0.2
_PAPER2 = {
    "twin": (Algorithm("twin", "product"),
             "twin network: one twin neuron per forward neuron, fixed random weights, no upper f'"),
    "distinct": (Algorithm("distinct", "skip", backward_hidden=(100,)),
                 "distinct network: E^L -> a backward hidden layer of 100 units -> random projections"),
    "atwin": (Algorithm("atwin", "product", adaptive=True),
              "adaptive twin: the twin weights learn with the forward rule (rate 0.1 x)"),
    "adistinct": (Algorithm("adistinct", "skip", adaptive=True, backward_hidden=(100,)),
                  "adaptive distinct: the projections onto the forward neurons learn with the forward rule"),
    "nrbp": (Algorithm("nrbp", "chain", backward_nonlinearity="same"),
             "RBP whose learning channel applies the forward units' transfer function at every stage"),
    "ntwin": (Algorithm("ntwin", "product", backward_nonlinearity="same"),
              "twin network whose twin neurons apply the forward units' transfer function"),
    "ndistinct": (Algorithm("ndistinct", "skip", backward_hidden=(100,), backward_nonlinearity="same"),
                  "distinct network whose units apply the forward units' transfer function"),
    "bp-small": (Algorithm("bp-small", "chain", symmetric=True, init_scale=SMALL),
                 "BP from small initial weights (0.2 x Glorot)"),
    "arbp-small": (Algorithm("arbp-small", "chain", adaptive=True, init_scale=SMALL, feedback_scale=SMALL),
                   "ARBP from small initial weights in both channels (0.2 x Glorot)"),
    "atwin-small": (Algorithm("atwin-small", "product", adaptive=True, init_scale=SMALL, feedback_scale=SMALL),
                    "adaptive twin from small initial weights in both channels (0.2 x Glorot)"),
    "adistinct-small": (Algorithm("adistinct-small", "skip", adaptive=True, backward_hidden=(100,),
                                  init_scale=SMALL, feedback_scale=SMALL),
                        "adaptive distinct from small initial weights in both channels (0.2 x Glorot)"),
}
for _name, (_alg, _text) in (*_PAPER2.items(), *_FAMILY.items()):
    ALGORITHMS[_name], DESCRIPTIONS[_name] = _alg, _text

OPTION_NAMES = ("feedback", "derivative", "quantize_error", "quantize_update", "dropout", "update",
                "adapt_rate", "loss_reduction", "quantize_error_alpha", "quantize_update_alpha",
                "quantize_update_mode", "quantize_update_lr", "backward_nonlinearity", "backward_hidden", "feedback_scale", "init_scale",
                "weight_decay", "mirror_rate", "mirror_noise", "mirror_decay", "mirror_batch",
                "blocks", "block_feedback", "block_matrix")
MIRROR_OPTIONS = ("mirror_rate", "mirror_noise", "mirror_decay", "mirror_batch")


def _check_bits(key, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer number of bits in {MIN_BITS}..{MAX_BITS}, got {value!r}")
    if not MIN_BITS <= value <= MAX_BITS:
        raise ConfigError(f"{key} must be in {MIN_BITS}..{MAX_BITS} bits, got {value}")
    return value


def _check_positive(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def algorithm(name: str | Algorithm, **options) -> Algorithm:
    """Look up a named algorithm and apply options, validating every one.

    >>> algorithm("srbp", feedback="sparse-8", derivative=False).describe()
    "srbp[sparse-8, no f']"
    """
    if isinstance(name, Algorithm):
        base = name
    else:
        if name not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
        base = ALGORITHMS[name]
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; valid options: {', '.join(OPTION_NAMES)}")
    changes = {}
    for key, value in options.items():
        if value is None and key not in ("quantize_error", "quantize_update"):
            continue
        if key == "feedback":
            spec = fb.parse(value)
            if not base.random_feedback:
                if str(spec) == "glorot-normal":
                    continue  # the default: nothing to change
                if base.route == "top":
                    raise ConfigError("feedback has no effect with 'top' (hidden layers receive no signal)")
                raise ConfigError(f"feedback={value!r} needs random feedback; '{base.name}' uses the "
                                  "transposed forward weights (use rbp, srbp, arbp or asrbp)")
            if spec.follows_forward and base.route != "chain":
                raise ConfigError(f"feedback {spec.kind!r} is defined for chained routes (rbp and its variants) only")
            if spec.per_synapse and base.route != "skip":
                raise ConfigError("feedback 'per-synapse' is defined for the skipped route (srbp) only")
            if spec.refreshed and (base.adaptive or base.mirror_rate):
                raise ConfigError(f"feedback {value!r} is set anew every minibatch and cannot adapt ({base.name})")
            changes["feedback"] = spec
        elif key == "derivative":
            if not isinstance(value, bool):
                raise ConfigError(f"derivative must be true or false, got {value!r}")
            if base.route == "top" and not value:
                raise ConfigError("derivative=False has no effect with 'top' (hidden layers receive no signal)")
            changes["derivative"] = value
        elif key in ("quantize_error", "quantize_update"):
            bits = _check_bits(key, value)
            if key == "quantize_error" and bits is not None and base.route == "top":
                raise ConfigError("quantize_error has no effect with 'top' (hidden layers receive no signal)")
            changes[key] = bits
        elif key == "dropout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"dropout must be a probability in [0, 1), got {value!r}")
            if value and base.route == "top":
                raise ConfigError("dropout has no effect with 'top' (the learning channel carries no signal)")
            changes["dropout"] = float(value)
        elif key == "update":
            if value not in UPDATES:
                raise ConfigError(f"update must be one of {', '.join(UPDATES)}, got {value!r}")
            changes["update"] = value
        elif key == "adapt_rate":
            if not base.adaptive:
                raise ConfigError(f"adapt_rate applies to adaptive algorithms ({', '.join(_adaptive_names())}), "
                                  f"not '{base.name}'")
            changes["adapt_rate"] = _check_positive(key, value)
        elif key == "backward_nonlinearity":
            name = _UNIT_ALIASES.get(value, value) if isinstance(value, str) else value
            if name not in BACKWARD_UNITS:
                raise ConfigError(f"backward_nonlinearity must be one of {', '.join(BACKWARD_UNITS)}, got {value!r}")
            if base.route == "top":
                raise ConfigError("backward_nonlinearity has no effect with 'top' (the learning channel carries "
                                  "no signal)")
            changes[key] = name
        elif key == "backward_hidden":
            if isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                           for n in value):
                raise ConfigError(f"backward_hidden must be a list of positive layer sizes, got {value!r}")
            if base.route != "skip":
                raise ConfigError(f"backward_hidden gives the hidden layers of a distinct learning network; "
                                  f"'{base.name}' has no distinct network (use distinct, adistinct or srbp)")
            changes[key] = tuple(value)
        elif key == "feedback_scale":
            scale = _check_positive(key, value)
            if not base.random_feedback and scale != 1.0:
                raise ConfigError(f"feedback_scale needs random feedback; '{base.name}' has no feedback matrices")
            changes[key] = scale
        elif key == "init_scale":
            changes[key] = _check_positive(key, value)
        elif key in ("quantize_error_alpha", "quantize_update_alpha", "quantize_update_lr"):
            changes[key] = _check_positive(key, value)
        elif key == "weight_decay":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or value != value or value == float("inf"):
                raise ConfigError(f"weight_decay must be a number >= 0, got {value!r}")
            changes[key] = float(value)
        elif key in MIRROR_OPTIONS:
            if not (base.route == "chain" and base.random_feedback):
                raise ConfigError(f"{key}: weight mirrors teach the feedback matrices of a chained route with "
                                  f"random feedback (wm, rbp); '{base.name}' has none")
            if key == "mirror_batch":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"mirror_batch must be a positive integer, got {value!r}")
                changes[key] = value
            elif key == "mirror_rate" and not isinstance(value, bool) and isinstance(value, (int, float)) \
                    and value == 0:
                changes[key] = 0.0      # mirrors off
            else:
                changes[key] = _check_positive(key, value)
        elif key == "quantize_update_mode":
            try:
                words = parse_update_mode(value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            changes[key] = "+".join(words) or "eq19"
        elif key == "loss_reduction":
            if value not in ("mean", "sum"):
                raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {value!r}")
            changes[key] = value
        elif key == "blocks":
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or any(not isinstance(n, str) or not n.strip() for n in value):
                raise ConfigError(f"blocks must be a list of module names (e.g. ['layers.0', 'layers.1']), got {value!r}")
            if value and (base.route != "skip" or base.adaptive or base.backward_hidden):
                raise ConfigError(f"blocks: block mode delivers C E^L at block outputs by srbp's skipped route with "
                                  f"fixed matrices; '{base.name}' is not srbp (use srbp)")
            changes[key] = tuple(value)
        elif key == "block_feedback":
            if value not in BLOCK_FEEDBACK:
                raise ConfigError(f"block_feedback must be one of {', '.join(BLOCK_FEEDBACK)}, got {value!r}")
            changes[key] = value
        elif key == "block_matrix":
            if value not in BLOCK_MATRIX:
                raise ConfigError(f"block_matrix must be one of {', '.join(BLOCK_MATRIX)}, got {value!r}")
            changes[key] = value
    result = dataclasses.replace(base, **changes)
    if result.quantize_update_mode != "eq19" and not result.quantize_update:
        raise ConfigError("quantize_update_mode needs quantize_update (the number of bits)")
    if "after-lr" in result.quantize_update_mode.split("+") and result.quantize_update_lr is None:
        raise ConfigError("quantize_update_mode 'after-lr' needs quantize_update_lr, the constant learning rate "
                          "the quantizer sees the update after")
    if result.quantize_update_lr is not None and "after-lr" not in result.quantize_update_mode.split("+"):
        raise ConfigError("quantize_update_lr is only used by quantize_update_mode 'after-lr'")
    if result.feedback.per_synapse and (result.adaptive or result.quantize_error or result.dropout
                                        or result.backward_nonlinearity or result.backward_hidden):
        raise ConfigError("feedback 'per-synapse' does not combine with adaptation, quantize_error, dropout, "
                          "backward_nonlinearity or backward_hidden")
    if result.mirror_rate and result.feedback.refreshed:
        raise ConfigError(f"feedback {str(result.feedback)!r} is set anew every minibatch; weight mirrors "
                          "(mirror_rate) would be overwritten")
    if result.blocks:
        _check_blocks(result)
    elif result.block_feedback != Algorithm.block_feedback:
        raise ConfigError("block_feedback is the route inside the blocks of srbp's block mode; it needs blocks=")
    elif result.block_matrix != Algorithm.block_matrix:
        raise ConfigError("block_matrix chooses the matrices of srbp's block mode; it needs blocks=")
    if result.backward_hidden and (result.feedback.resampled or result.feedback.needs_forward_sign):
        raise ConfigError(f"feedback {str(result.feedback)!r} follows the forward weights, but the hidden layers "
                          "of a distinct learning network (backward_hidden) mirror no forward matrix")
    return result


BLOCK_FEEDBACK = ("bp", "rbp")
BLOCK_MATRIX = ("own", "shared")   # "shared": one C for every block (blocks writing one residual stream)


def _check_blocks(alg: Algorithm):
    """Block mode (rbp.nn.blocks) takes the options that keep their meaning there, and refuses the rest."""
    used = [k for k in ("quantize_error", "quantize_update", "dropout", "backward_nonlinearity")
            if getattr(alg, k)] + (["update"] if alg.update != "full" else [])
    if used:
        raise ConfigError(f"{used[0]} is not defined in srbp's block mode (blocks=): it takes feedback, "
                          "feedback_scale, derivative, init_scale, weight_decay and loss_reduction")
    spec = alg.feedback
    if spec.refreshed or spec.per_synapse or spec.needs_forward_sign:
        raise ConfigError(f"feedback {str(spec)!r} is not defined in srbp's block mode (blocks=): the block "
                          "matrices are fixed draws with no forward matrix to follow")


def _adaptive_names():
    return [n for n, a in ALGORITHMS.items() if a.adaptive]
