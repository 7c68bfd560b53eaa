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
import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from . import feedback as fb
from .quantize import ERROR_ALPHA, MAX_BITS, MIN_BITS, UPDATE_ALPHA, UPDATE_MODES, parse_update_mode
from .transfer import ALIASES, TRANSFER

ROUTES = ("chain", "product", "skip", "top")
SKIP_PROJECTIONS = ("own", "shared")
UPDATES = ("full", "sign", "magnitude")
ARCHITECTURES = ("bidirectional", "conjoined", "twin", "distinct")
# Transfer functions a learning channel's units may apply (paper 2, symmetry of processing);
# "same" is resolved by rbp.convert to the forward network's own transfer function.
BACKWARD_UNITS = (*TRANSFER, "same")     # the one table of transfer functions (channel/transfer.py)
_UNIT_ALIASES = ALIASES


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
    skip_projection: str = "own"               # skipped route: each layer its own C^h, or one "shared" C sliced

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
        """A short human-readable label, e.g. ``rbp[sparse-8, no f']``: the labels of the options (``OPTIONS``)
        that differ from the named algorithm's own."""
        defaults = ALGORITHMS.get(self.name)
        extras = []
        for opt in OPTIONS:
            if opt.label is None or getattr(self, opt.name) == _default(defaults, opt.name):
                continue
            text = opt.label(self)
            if text:
                extras.append(text)
        return self.name + (f"[{', '.join(extras)}]" if extras else "")

    def options(self) -> dict:
        """The user-facing options that rebuild this algorithm with :func:`algorithm` (as written: plain values)."""
        defaults = ALGORITHMS[self.name]
        out = {}
        for opt in OPTIONS:
            value, default = opt.plain(getattr(self, opt.name)), opt.plain(getattr(defaults, opt.name))
            if value != default:
                out[opt.name] = value
        return out


def _default(defaults, key):
    """The value of option ``key`` in the named algorithm ``defaults`` (None: the dataclass default)."""
    if defaults is not None:
        return getattr(defaults, key)
    f = next(f for f in dataclasses.fields(Algorithm) if f.name == key)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


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

# ----------------------------------------------------------------------------- the options, written once
#
# Every option of an algorithm is one entry of OPTIONS: its name (the Algorithm field), how a value is
# checked and normalised, which algorithms take it (and the line that refuses the others), its text in
# describe(), its command-line flag and its help.  algorithm() validates from it, describe() and
# options() read it, rbp.cli builds the argparse flags from it, the experiment files check their
# option keys with it and the README's option table is generated from it (options_table()).  The
# rules between options are the named functions of RULES, run on the finished algorithm.


@dataclass(frozen=True)
class Option:
    """One algorithm option (see the block comment above ``OPTIONS``)."""

    name: str
    kind: str                      # bool, bits, int, float, str, ints, strs, feedback: the type of a value
    check: Callable                # value -> the normalised value, or ConfigError (one line naming the option)
    help: str                      # one line, for --help and the docs
    applies: str = "all"           # for the docs: which algorithms take it
    refuse: Callable | None = None     # (base algorithm, value) -> the line refusing it there, or None
    inert: Callable | None = None      # (base, value) -> True: a default that changes nothing, dropped
    label: Callable | None = None      # algorithm -> its text in describe() (None: not shown)
    flag: str | None = None        # command-line flag (default: --name-with-dashes)
    negate: bool = False           # a flag that sets the option to False (--no-derivative)
    choices: tuple | None = None
    metavar: str | None = None
    nullable: bool = False         # None is a value (no quantization), not "unset"
    plain: Callable = staticmethod(lambda v: v)    # the value as TOML / JSON write it
    example: tuple = ()            # (algorithm, {options}) where it applies: the round-trip test, the docs

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def parse_text(self, text: str):
        """A command-line value in the option's type (before :attr:`check`)."""
        try:
            if self.kind in ("bits", "int"):
                return int(text)
            if self.kind == "float":
                return float(text)
            if self.kind == "ints":
                return [int(t) for t in text.split(",") if t.strip()]
            if self.kind == "strs":
                return [t for t in text.split(",") if t]
        except ValueError:
            raise ConfigError(f"{self.cli_flag} expects {_KIND_TEXT[self.kind]}, got {text!r}") from None
        return text

    def text(self, value) -> str:
        """``value`` as a command-line argument (the inverse of :meth:`parse_text`)."""
        value = self.plain(value)
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)


_KIND_TEXT = {"bits": "an integer", "int": "an integer", "float": "a number",
              "ints": "comma-separated integers", "strs": "comma-separated names"}


def _is_number(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _bits(key):
    def check(value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer number of bits in {MIN_BITS}..{MAX_BITS}, got {value!r}")
        if not MIN_BITS <= value <= MAX_BITS:
            raise ConfigError(f"{key} must be in {MIN_BITS}..{MAX_BITS} bits, got {value}")
        return value
    return check


def _positive(key):
    def check(value):
        if not _is_number(value) or not value > 0:
            raise ConfigError(f"{key} must be a positive number, in (0, inf), got {value!r}")
        return float(value)
    return check


def _nonnegative(key):
    def check(value):
        if not _is_number(value) or not value >= 0:
            raise ConfigError(f"{key} must be a number >= 0, in [0, inf), got {value!r}")
        return float(value)
    return check


def _probability(key):
    def check(value):
        if not _is_number(value) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1), got {value!r}")
        return float(value)
    return check


def _positive_int(key):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        return value
    return check


def _flag(key):
    def check(value):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    return check


def _choice(key, choices, aliases=None):
    def check(value):
        name = (aliases or {}).get(value, value) if isinstance(value, str) else value
        if name not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return name
    return check


def _sizes(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                   for n in value):
        raise ConfigError(f"backward_hidden must be a list of positive layer sizes, got {value!r}")
    return tuple(value)


def _names(value):
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or any(not isinstance(n, str) or not n.strip() for n in value):
        raise ConfigError(f"blocks must be a list of module names (e.g. ['layers.0', 'layers.1']), got {value!r}")
    return tuple(value)


def _update_mode(value):
    try:
        words = parse_update_mode(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return "+".join(words) or "eq19"


def _no_signal(key, what="hidden layers receive no signal"):
    """The refusal of an option that acts on the signal, for 'top'."""
    return lambda base, value: (f"{key} has no effect with 'top' ({what})" if base.route == "top" else None)


def _refuse_feedback(base, spec):
    if not base.random_feedback:
        if base.route == "top":
            return "feedback has no effect with 'top' (hidden layers receive no signal)"
        return (f"feedback={str(spec)!r} needs random feedback; '{base.name}' uses the transposed forward weights "
                "(use rbp, srbp, arbp or asrbp)")
    if spec.follows_forward and base.route != "chain":
        return f"feedback {spec.kind!r} is defined for chained routes (rbp and its variants) only"
    if spec.per_synapse and base.route != "skip":
        return "feedback 'per-synapse' is defined for the skipped route (srbp) only"
    if spec.refreshed and (base.adaptive or base.mirror_rate):
        return f"feedback {str(spec)!r} is set anew every minibatch and cannot adapt ({base.name})"
    return None


def _refuse_mirror(key):
    def refuse(base, value):
        if not (base.route == "chain" and base.random_feedback):
            return (f"{key}: weight mirrors teach the feedback matrices of a chained route with random feedback "
                    f"(wm, rbp); '{base.name}' has none")
        return None
    return refuse


def _qupd_label(alg):
    mode = "" if alg.quantize_update_mode == "eq19" else " " + alg.quantize_update_mode
    return f"qupd {alg.quantize_update}b{mode}"


def _blocks_label(alg):
    return (f"blocks {' '.join(alg.blocks)}, {alg.block_feedback} inside"
            + (", one shared C" if alg.block_matrix == "shared" else ""))


def _feedback_label(alg):
    defaults = ALGORITHMS.get(alg.name)
    if alg.random_feedback and str(alg.feedback) != str(getattr(defaults, "feedback", "glorot-normal")):
        return str(alg.feedback)
    return None


_QUPD = {"quantize_update": 4}
OPTIONS: tuple[Option, ...] = (
    Option("feedback", "feedback", fb.parse,
           "feedback distribution: glorot-normal (default), uniform, nonzero-mean, ternary, congruent, sparse-N, "
           "resampled, sign-concordant, sign-uniform, sign-fixed, per-synapse",
           applies="random feedback", refuse=_refuse_feedback,
           inert=lambda base, spec: not base.random_feedback and str(spec) == "glorot-normal",
           label=_feedback_label, plain=str, example=("rbp", {"feedback": "sparse-8"})),
    Option("derivative", "bool", _flag("derivative"),
           "false: omit f' in the learning channel (\"no f'\")", applies="all but top",
           refuse=lambda base, v: (None if v or base.route != "top" else
                                   "derivative=False has no effect with 'top' (hidden layers receive no signal)"),
           label=lambda a: "no f'", flag="--no-derivative", negate=True,
           example=("rbp", {"derivative": False})),
    Option("quantize_error", "bits", _bits("quantize_error"),
           "quantize the error signal arriving at each hidden layer (Eq. 19)", applies="all but top",
           refuse=lambda base, v: None if v is None else _no_signal("quantize_error")(base, v),
           label=lambda a: f"qerr {a.quantize_error}b", metavar="BITS", nullable=True,
           example=("rbp", {"quantize_error": 5})),
    Option("quantize_error_alpha", "float", _positive("quantize_error_alpha"),
           "the error quantizer's alpha (Eq. 19)", metavar="ALPHA",
           example=("rbp", {"quantize_error": 5, "quantize_error_alpha": 0.25})),
    Option("quantize_update", "bits", _bits("quantize_update"),
           "quantize each example's weight update (Eq. 19)", label=_qupd_label, metavar="BITS", nullable=True,
           example=("srbp", dict(_QUPD))),
    Option("quantize_update_alpha", "float", _positive("quantize_update_alpha"),
           "the update quantizer's alpha (Eq. 19)", metavar="ALPHA",
           example=("srbp", {**_QUPD, "quantize_update_alpha": 0.03125})),
    Option("quantize_update_mode", "str", _update_mode,
           "reading of section 5.2: eq19 or a '+'-joined set of " + ", ".join(UPDATE_MODES)
           + " (after-lr needs quantize_update_lr)", applies="with quantize_update", metavar="MODE",
           example=("srbp", {**_QUPD, "quantize_update_mode": "flush+sum"})),
    Option("quantize_update_lr", "float", _positive("quantize_update_lr"),
           "the constant learning rate the after-lr reading quantizes the update after (rbp train: --lr, "
           "with --decay 0)", applies="with quantize_update_mode after-lr", metavar="LR",
           example=("srbp", {**_QUPD, "quantize_update_mode": "after-lr", "quantize_update_lr": 0.05})),
    Option("dropout", "float", _probability("dropout"),
           "learning-channel dropout probability in [0, 1), survivors scaled by 1/(1-P)", applies="all but top",
           refuse=lambda base, v: (_no_signal("dropout", "the learning channel carries no signal")(base, v)
                                   if v else None),
           label=lambda a: f"lc-dropout {a.dropout:g}", flag="--lc-dropout", metavar="P",
           example=("srbp", {"dropout": 0.25})),
    Option("update", "str", _choice("update", UPDATES),
           "keep the full hidden-layer update, only its sign, or only its magnitude", choices=UPDATES,
           label=lambda a: f"{a.update}-only", example=("rbp", {"update": "sign"})),
    Option("adapt_rate", "float", _positive("adapt_rate"),
           "feedback adaptation rate relative to the forward rate", applies="adaptive algorithms",
           refuse=lambda base, v: (None if base.adaptive else
                                   f"adapt_rate applies to adaptive algorithms ({', '.join(_adaptive_names())}), "
                                   f"not '{base.name}'"),
           example=("arbp", {"adapt_rate": 0.5})),
    Option("loss_reduction", "str", _choice("loss_reduction", ("mean", "sum")),
           "how your loss reduces over the minibatch (rbp train's is a mean)", choices=("mean", "sum"),
           example=("rbp", {"loss_reduction": "sum"})),
    Option("weight_decay", "float", _nonnegative("weight_decay"),
           "weight decay applied in the channel to W, b and adaptive feedback alike", metavar="L",
           label=lambda a: f"decay {a.weight_decay:g}", example=("rbp", {"weight_decay": 0.001})),
    Option("mirror_rate", "float", _nonnegative("mirror_rate"), "weight mirrors' learning rate (0: none)",
           applies="chained random feedback", refuse=_refuse_mirror("mirror_rate"),
           label=lambda a: f"mirror rate {a.mirror_rate:g}", example=("wm", {"mirror_rate": 0.1})),
    Option("mirror_noise", "float", _positive("mirror_noise"), "sd of the mirror phase's noise",
           applies="chained random feedback", refuse=_refuse_mirror("mirror_noise"),
           label=lambda a: f"mirror noise {a.mirror_noise:g}", example=("wm", {"mirror_noise": 0.5})),
    Option("mirror_decay", "float", _positive("mirror_decay"), "weight mirrors' decay of B",
           applies="chained random feedback", refuse=_refuse_mirror("mirror_decay"),
           label=lambda a: f"mirror decay {a.mirror_decay:g}", example=("wm", {"mirror_decay": 0.5})),
    Option("mirror_batch", "int", _positive_int("mirror_batch"), "noise vectors per layer per mirror step",
           applies="chained random feedback", refuse=_refuse_mirror("mirror_batch"),
           label=lambda a: f"mirror batch {a.mirror_batch}", example=("wm", {"mirror_batch": 20})),
    Option("backward_nonlinearity", "str", _choice("backward_nonlinearity", BACKWARD_UNITS, _UNIT_ALIASES),
           "transfer function of the learning channel's units ('same': the forward units')",
           applies="all but top", choices=BACKWARD_UNITS, refuse=_no_signal(
               "backward_nonlinearity", "the learning channel carries no signal"),
           label=lambda a: f"{a.backward_nonlinearity or 'linear'} backward units",
           example=("rbp", {"backward_nonlinearity": "tanh"})),
    Option("backward_hidden", "ints", _sizes, "hidden layer sizes of a distinct backward network",
           applies="skipped route", metavar="SIZES",
           refuse=lambda base, v: (None if base.route == "skip" else
                                   f"backward_hidden gives the hidden layers of a distinct learning network; "
                                   f"'{base.name}' has no distinct network (use distinct, adistinct or srbp)"),
           label=lambda a: "backward " + ("-".join(map(str, a.backward_hidden)) or "depth 0"),
           example=("distinct", {"backward_hidden": (50, 20)})),
    Option("feedback_scale", "float", _positive("feedback_scale"),
           "the feedback matrices are drawn at this multiple of their scale", applies="random feedback",
           refuse=lambda base, v: (None if base.random_feedback or v == 1.0 else
                                   f"feedback_scale needs random feedback; '{base.name}' has no feedback matrices"),
           label=lambda a: f"feedback x{a.feedback_scale:g}", example=("rbp", {"feedback_scale": 0.5})),
    Option("init_scale", "float", _positive("init_scale"), "rbp.convert multiplies the forward weights by it",
           label=lambda a: f"init x{a.init_scale:g}", example=("rbp", {"init_scale": 0.5})),
    Option("blocks", "strs", _names,
           "srbp's block mode: module names (or patterns such as 'layers.*') whose outputs receive C E^L",
           applies="srbp", metavar="NAMES",
           refuse=lambda base, v: (f"blocks: block mode delivers C E^L at block outputs by srbp's skipped route "
                                   f"with fixed matrices; '{base.name}' is not srbp (use srbp)"
                                   if v and (base.route != "skip" or base.adaptive or base.backward_hidden)
                                   else None),
           label=_blocks_label, example=("srbp", {"blocks": ("0", "2")})),
    Option("block_feedback", "str", _choice("block_feedback", ("bp", "rbp")),
           "the route inside and between blocks in block mode", applies="with blocks", choices=("bp", "rbp"),
           example=("srbp", {"blocks": ("0",), "block_feedback": "rbp"})),
    Option("block_matrix", "str", _choice("block_matrix", ("own", "shared")),
           "each block its own C_k, or one C shared by all blocks", applies="with blocks",
           choices=("own", "shared"), example=("srbp", {"blocks": ("0",), "block_matrix": "shared"})),
    Option("skip_projection", "str", _choice("skip_projection", SKIP_PROJECTIONS),
           "srbp's matrices: each layer (or block) its own C^h, or one C as wide as the widest, applied to E^L "
           "once per backward pass, each layer (block) reading its first columns (Launay et al. 2020)",
           applies="srbp (per-layer and block mode)", choices=SKIP_PROJECTIONS,
           refuse=lambda base, v: (None if v == "own" or (base.route == "skip" and base.random_feedback
                                                          and not base.adaptive and not base.backward_hidden)
                                   else f"skip_projection: one shared projection of E^L is srbp's (fixed matrices, "
                                        f"no backward network); '{base.name}' is not srbp (use srbp)"),
           label=lambda a: "shared projection", example=("srbp", {"skip_projection": "shared"})),
)
OPTION = {opt.name: opt for opt in OPTIONS}
OPTION_NAMES = tuple(OPTION)
MIRROR_OPTIONS = ("mirror_rate", "mirror_noise", "mirror_decay", "mirror_batch")


def algorithm(name: str | Algorithm, **options) -> Algorithm:
    """Look up a named algorithm and apply options, validating every one (``OPTIONS``, then ``RULES``).

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
        opt = OPTION[key]
        if value is None and not opt.nullable:
            continue
        value = opt.check(value)
        if opt.inert is not None and opt.inert(base, value):
            continue
        why = opt.refuse(base, value) if opt.refuse is not None else None
        if why:
            raise ConfigError(why)
        changes[key] = value
    result = dataclasses.replace(base, **changes)
    for rule in RULES:
        rule(result)
    return result


# ----------------------------------------------------------------------------- rules between options

def quantize_update_mode_needs_bits(alg):
    if alg.quantize_update_mode != "eq19" and not alg.quantize_update:
        raise ConfigError("quantize_update_mode needs quantize_update (the number of bits)")


def after_lr_needs_its_lr(alg):
    after = "after-lr" in alg.quantize_update_mode.split("+")
    if after and alg.quantize_update_lr is None:
        raise ConfigError("quantize_update_mode 'after-lr' needs quantize_update_lr, the constant learning rate "
                          "the quantizer sees the update after")
    if alg.quantize_update_lr is not None and not after:
        raise ConfigError("quantize_update_lr is only used by quantize_update_mode 'after-lr'")


def per_synapse_feedback_alone(alg):
    if alg.feedback.per_synapse and (alg.adaptive or alg.quantize_error or alg.dropout
                                     or alg.backward_nonlinearity or alg.backward_hidden):
        raise ConfigError("feedback 'per-synapse' does not combine with adaptation, quantize_error, dropout, "
                          "backward_nonlinearity or backward_hidden")


def mirrors_need_kept_feedback(alg):
    if alg.mirror_rate and alg.feedback.refreshed:
        raise ConfigError(f"feedback {str(alg.feedback)!r} is set anew every minibatch; weight mirrors "
                          "(mirror_rate) would be overwritten")


def block_mode(alg):
    if alg.blocks:
        _check_blocks(alg)
    elif alg.block_feedback != Algorithm.block_feedback:
        raise ConfigError("block_feedback is the route inside the blocks of srbp's block mode; it needs blocks=")
    elif alg.block_matrix != Algorithm.block_matrix:
        raise ConfigError("block_matrix chooses the matrices of srbp's block mode; it needs blocks=")


def distinct_network_follows_nothing(alg):
    if alg.backward_hidden and (alg.feedback.resampled or alg.feedback.needs_forward_sign):
        raise ConfigError(f"feedback {str(alg.feedback)!r} follows the forward weights, but the hidden layers "
                          "of a distinct learning network (backward_hidden) mirror no forward matrix")


def shared_projection_is_fixed(alg):
    spec = alg.feedback
    if alg.skip_projection == "shared" and (spec.refreshed or spec.per_synapse or spec.needs_forward_sign):
        raise ConfigError(f"feedback {str(spec)!r} is not defined with skip_projection='shared': the one shared "
                          "matrix is a fixed draw that mirrors no layer's forward matrices")


RULES = (quantize_update_mode_needs_bits, after_lr_needs_its_lr, per_synapse_feedback_alone,
         mirrors_need_kept_feedback, block_mode, distinct_network_follows_nothing, shared_projection_is_fixed)


def option_defaults(opt: Option) -> str:
    """The option's default, and the named algorithms whose own default differs (for the docs)."""
    base = opt.plain(_default(None, opt.name))
    others = {}
    for name, alg in ALGORITHMS.items():
        v = opt.plain(getattr(alg, opt.name))
        if v != base:
            others.setdefault(_show(v), []).append(name)
    text = _show(base)
    if others:
        text += "; " + "; ".join(f"{', '.join(names)}: {v}" for v, names in others.items())
    return text


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def options_table() -> str:
    """The Markdown table of every option (the README's, between its ``options`` markers)."""
    lines = ["| option | flag | default | applies to | meaning |", "|---|---|---|---|---|"]
    for opt in OPTIONS:
        flag = opt.cli_flag if opt.negate else f"{opt.cli_flag} {opt.metavar or opt.kind.upper()}"
        if opt.choices:
            flag = f"{opt.cli_flag} {{{','.join(opt.choices)}}}"
        lines.append(f"| `{opt.name}` | `{flag}` | {option_defaults(opt)} | {opt.applies} | "
                     f"{opt.help.replace('|', '/')} |")
    return "\n".join(lines)


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


def parse_variant(text: str) -> tuple[str, dict]:
    """``"srbp:skip_projection=shared"`` -> ("srbp", {"skip_projection": "shared"}); options as ``rbp.algorithm`` takes."""
    name, *pairs = text.split(":")
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"{pair!r} in {text!r} is not KEY=VALUE (e.g. srbp:skip_projection=shared)")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        options[key.strip()] = value
    algorithm(name.strip(), **options)          # one line naming what is wrong, before anything runs
    return name.strip(), options
