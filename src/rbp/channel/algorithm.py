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
* signal operators on the way (``derivative``, ``quantize_error``, ``dropout``)
  and update operators at the synapse (``quantize_update``, ``update``).

New variants are new registry entries or options, not new model classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import feedback as fb
from .quantize import ERROR_ALPHA, MAX_BITS, MIN_BITS, UPDATE_ALPHA

ROUTES = ("chain", "product", "skip", "top")
UPDATES = ("full", "sign", "magnitude")


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
    dropout: float = 0.0
    update: str = "full"
    loss_reduction: str = "mean"

    @property
    def random_feedback(self) -> bool:
        return self.route != "top" and not self.symmetric

    @property
    def hidden_learn(self) -> bool:
        return self.route != "top"

    def describe(self) -> str:
        """A short human-readable label, e.g. ``rbp[sparse-8, no f']``."""
        extras = []
        if self.random_feedback and str(self.feedback) != "glorot-normal":
            extras.append(str(self.feedback))
        if not self.derivative:
            extras.append("no f'")
        if self.quantize_error:
            extras.append(f"qerr {self.quantize_error}b")
        if self.quantize_update:
            extras.append(f"qupd {self.quantize_update}b")
        if self.dropout:
            extras.append(f"lc-dropout {self.dropout:g}")
        if self.update != "full":
            extras.append(f"{self.update}-only")
        return self.name + (f"[{', '.join(extras)}]" if extras else "")

    def options(self) -> dict:
        """The user-facing options that rebuild this algorithm with :func:`algorithm`."""
        out = {}
        defaults = ALGORITHMS[self.name]
        if str(self.feedback) != str(defaults.feedback):
            out["feedback"] = str(self.feedback)
        for key in ("derivative", "quantize_error", "quantize_update", "dropout", "update",
                    "adapt_rate", "loss_reduction", "quantize_error_alpha", "quantize_update_alpha"):
            if getattr(self, key) != getattr(defaults, key):
                out[key] = getattr(self, key)
        return out


# The named algorithms of paper 1 (Table 1 / Fig. 1-2).
ALGORITHMS: dict[str, Algorithm] = {
    "bp": Algorithm("bp", "chain", symmetric=True),
    "sbp": Algorithm("sbp", "product", symmetric=True),
    "rbp": Algorithm("rbp", "chain"),
    "srbp": Algorithm("srbp", "skip"),
    "arbp": Algorithm("arbp", "chain", adaptive=True),
    "asrbp": Algorithm("asrbp", "skip", adaptive=True),
    "top": Algorithm("top", "top"),
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

OPTION_NAMES = ("feedback", "derivative", "quantize_error", "quantize_update", "dropout", "update",
                "adapt_rate", "loss_reduction", "quantize_error_alpha", "quantize_update_alpha")


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
            if spec.kind == "sign-concordant" and base.route != "chain":
                raise ConfigError("feedback 'sign-concordant' is defined for chained routes (rbp, arbp) only")
            if spec.per_synapse and base.route != "skip":
                raise ConfigError("feedback 'per-synapse' is defined for the skipped route (srbp) only")
            if spec.resampled and base.adaptive:
                raise ConfigError(f"feedback {value!r} is resampled every minibatch and cannot adapt ({base.name})")
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
                raise ConfigError(f"adapt_rate applies to adaptive algorithms (arbp, asrbp), not '{base.name}'")
            changes["adapt_rate"] = _check_positive(key, value)
        elif key in ("quantize_error_alpha", "quantize_update_alpha"):
            changes[key] = _check_positive(key, value)
        elif key == "loss_reduction":
            if value not in ("mean", "sum"):
                raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {value!r}")
            changes[key] = value
    result = dataclasses.replace(base, **changes)
    if result.feedback.per_synapse and (result.adaptive or result.quantize_error or result.dropout):
        raise ConfigError("feedback 'per-synapse' does not combine with adaptation, quantize_error or dropout")
    return result
