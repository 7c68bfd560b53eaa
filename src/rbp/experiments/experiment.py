"""Named experiments as data: one TOML file per experiment, validated on load.

An experiment file describes a set of *configurations* (one line of a figure,
one cell of Table 1) that share a *protocol*, and everything the report needs
to put our numbers beside the paper's::

    name = "table1-mnist"                       # [a-z0-9._-], unique
    description = "Table 1, MNIST: ..."         # one line, shown by `rbp list`
    reference = "Baldi, Sadowski & Lu (2018), Table 1"   # optional
    dataset = "mnist"                           # digits, mnist, fashion-mnist, cifar10
    requires = ["model:cifar_convnet"]          # optional: engine features still to land

    [protocol]                                  # all optional; defaults: the dataset's paper protocol
                                                # (rbp.protocols: MNIST's, or CIFAR-10's for cifar10)
    epochs = 100                                # per run; `rbp run --epochs` overrides
    seeds = 5                                   # seeds 0..K-1; `rbp run --seeds` overrides
    batch_size = 100
    lr = 0.1
    decay = 1e-6                                # lr_t = lr / (1 + decay t), t = update count
    momentum = 0.0
    hidden = [100, 100, 100, 100]
    activation = "tanh"                         # tanh, relu, logistic, linear
    frozen = []                                 # 1-based weight layers that do not learn
    model = "mlp"                               # or the name of a network in rbp.models
    augment = false                             # data augmentation (conv protocol)
    optimizer = "sgd"                           # sgd (with momentum above) or adam (momentum 0)

    [[config]]                                  # one per configuration, in display order
    id = "baseline-rbp"                         # [a-z0-9._-], unique in the file
    label = "RBP"                               # legend / table text (default: the algorithm's label)
    algorithm = "rbp"                           # bp, sbp, rbp, srbp, arbp, asrbp, top
    feedback = "sparse-8"                       # any option of rbp.algorithm (its table, OPTIONS; the
                                                # README lists them): feedback, derivative, quantize_error,
                                                # dropout, backward_hidden, blocks (docs/blocks.md), ...
    lr = 0.1                                    # protocol overrides: batch_size, lr, decay, momentum,
                                                # hidden, activation, frozen
    row = "baseline"                            # Table row (configs of one row form one table row group)
    group = "baseline"                          # figure(s) it is drawn in: a string or a list
    paper_mean = 97.2                           # the paper's final test accuracy (%), if it reports one
    paper_sd = 0.1                              # its sd over runs; omit for the paper's single runs
    note = "..."                                # free text, shown in the report

Every key is checked on load: an unknown key, a wrong type or a value out of
range raises :class:`~rbp.errors.ConfigError` naming the file, the
configuration, the key and what is allowed; algorithm options are checked by
:func:`rbp.algorithm` itself.  ``requires`` names engine features an experiment
needs that may not exist yet (``model:NAME`` — a network in :mod:`rbp.models`;
``feedback:NAME`` — a feedback distribution): such a file still loads and
validates, and running it fails with one clear line until the feature lands.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..channel.algorithm import ALGORITHMS, OPTION, OPTION_NAMES, Algorithm, algorithm as make_algorithm
from ..data import DATASETS
from ..errors import ConfigError
from ..protocols import CHECKS as PROTOCOL_FIELD_CHECKS, MNIST, protocol as paper_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PROTOCOL_DEFAULTS = MNIST.as_dict()       # a file's [protocol] defaults: its dataset's paper protocol
OVERRIDABLE = ("batch_size", "lr", "decay", "momentum", "hidden", "activation", "frozen")
ALGORITHM_OPTIONS = OPTION_NAMES        # every option of rbp.algorithm (its table, OPTIONS), checked by it
TOP_KEYS = ("name", "description", "reference", "dataset", "requires", "protocol", "config")
CONFIG_KEYS = ("id", "label", "algorithm", *ALGORITHM_OPTIONS, *OVERRIDABLE, "row", "group",
               "paper_mean", "paper_sd", "note")


class _Bad(Exception):
    """A value out of range; the caller adds the file and the key."""


# ----------------------------------------------------------------------------- value checks

def _int(lo=None, hi=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) \
                or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise _Bad(f"must be an integer {rng}, got {v!r}")
        return v
    return check


def _float(lo, hi=None, lo_open=False, hi_open=True):
    def check(v):
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            rng = ("(" if lo_open else "[") + f"{lo:g}, " + (f"{hi:g}" + (")" if hi_open else "]")
                                                             if hi is not None else "inf)")
            raise _Bad(f"must be a number in {rng}, got {v!r}")
        return float(v)
    return check


def _str(choices=None, pattern=None):
    def check(v):
        if not isinstance(v, str) or not v.strip():
            raise _Bad(f"must be a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}, got {v!r}")
        if pattern is not None and not pattern.match(v):
            raise _Bad(f"must use lower-case letters, digits and . _ - only, got {v!r}")
        return v
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}")
    return v


def _int_list(lo, allow_empty, hi=None):
    def check(v):
        if not isinstance(v, list) or (not v and not allow_empty) or \
                any(isinstance(x, bool) or not isinstance(x, int) or x < lo or (hi is not None and x > hi)
                    for x in v):
            rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise _Bad(f"must be a list of integers {rng}{'' if allow_empty else ' (not empty)'}, got {v!r}")
        return tuple(v)
    return check


def _str_list(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or any(not isinstance(x, str) or not x for x in v):
        raise _Bad(f"must be a string or a list of strings, got {v!r}")
    return tuple(v)


def _option_check(opt):
    """An algorithm option's check from its table entry; the value kept is the one a file writes."""
    def check(v):
        try:
            return opt.plain(opt.check(v))
        except ConfigError as e:
            raise _Bad(str(e).removeprefix(opt.name + " ")) from None
    return check


def _checked(key, check):
    """A check of the one table (rbp.protocols.CHECKS) as a file key's: the message without the key."""
    def run(v):
        try:
            return check(v)
        except ConfigError as e:
            raise _Bad(str(e).removeprefix(key + " ")) from None
    return run


PROTOCOL_CHECKS = {key: _checked(key, check) for key, check in PROTOCOL_FIELD_CHECKS.items()}
CONFIG_CHECKS = {
    "id": _str(pattern=_NAME), "label": _str(), "algorithm": _str(tuple(ALGORITHMS)),
    **{k: PROTOCOL_CHECKS[k] for k in OVERRIDABLE},
    "row": _str(), "group": _str_list, "paper_mean": _float(0, 100, hi_open=False),
    "paper_sd": _float(0), "note": _str(),
    # algorithm options: the option table's own checks (rbp.channel.algorithm.OPTIONS)
    **{name: _option_check(opt) for name, opt in OPTION.items()},
}


# ----------------------------------------------------------------------------- the objects

@dataclass(frozen=True)
class Config:
    """One configuration: an algorithm with its options, its protocol and the paper's number."""

    id: str
    label: str
    algorithm_name: str
    options: dict                      # algorithm options as written in the file
    protocol: dict                     # the full protocol for this configuration (overrides applied)
    algorithm: Algorithm | None        # None while it needs a feature the engine lacks
    row: str | None = None
    groups: tuple = ()
    paper_mean: float | None = None
    paper_sd: float | None = None
    note: str | None = None
    order: int = 0

    def meta(self) -> dict:
        """What the result store keeps about the configuration (JSON-ready)."""
        return {"id": self.id, "label": self.label, "algorithm": self.algorithm_name,
                "options": dict(self.options), "row": self.row, "groups": list(self.groups),
                "paper_mean": self.paper_mean, "paper_sd": self.paper_sd, "note": self.note,
                "order": self.order}


@dataclass(frozen=True)
class Experiment:
    """A named experiment: configurations x seeds under one protocol."""

    name: str
    description: str
    dataset: str
    protocol: dict
    configs: tuple
    reference: str | None = None
    requires: tuple = ()
    source: str = ""                   # the TOML text, kept with the results
    path: str = ""

    @property
    def has_table(self) -> bool:
        return any(c.paper_mean is not None for c in self.configs)

    def config(self, config_id: str) -> Config:
        for c in self.configs:
            if c.id == config_id:
                return c
        raise ConfigError(f"{self.name}: no configuration {config_id!r}")

    def missing_features(self) -> list[str]:
        """One sentence per required feature the engine does not provide yet."""
        return [msg for feat in self.requires if (msg := _feature_missing(feat))]

    def spec(self, config: Config, epochs: int | None = None, device: str = "cpu"):
        """The :class:`rbp.train.TrainSpec` of one configuration (``epochs`` overrides the protocol)."""
        from ..train import TrainSpec
        missing = self.missing_features()
        if missing:
            raise ConfigError(f"experiment {self.name}: {missing[0]}")
        p = config.protocol
        kwargs = dict(dataset=self.dataset, algorithm=config.algorithm, hidden=tuple(p["hidden"]),
                      activation=p["activation"], epochs=int(epochs or p["epochs"]),
                      batch_size=p["batch_size"], lr=p["lr"], decay=p["decay"], momentum=p["momentum"],
                      device=device, frozen=tuple(p["frozen"]))
        fields = {f.name for f in dataclasses.fields(TrainSpec)}
        for key, default in (("model", "mlp"), ("augment", False), ("optimizer", "sgd")):
            if p[key] != default:
                if key not in fields:
                    raise ConfigError(f"experiment {self.name}: protocol {key} = {p[key]!r} needs a training "
                                      f"loop that supports it, and rbp.train.TrainSpec has no {key!r} "
                                      "field yet")
                kwargs[key] = p[key]
        return TrainSpec(**kwargs).validate()


def _feature_missing(feature: str) -> str | None:
    kind, _, name = feature.partition(":")
    if kind == "model":
        from .. import models
        if hasattr(models, name):
            return None
        what = "the convolutional network of paper 1" if "conv" in name else "the network"
        return (f"{what} (rbp.models.{name}) is not available yet; this experiment runs once it lands")
    if kind == "feedback":
        for alg in ("srbp", "rbp"):      # some distributions exist for one route only
            try:
                make_algorithm(alg, feedback=name)
                return None
            except ConfigError:
                pass
        return f"feedback {name!r} is not available in the engine yet; this experiment runs once it lands"
    raise ConfigError(f"unknown feature {feature!r} (use model:NAME or feedback:NAME)")


# ----------------------------------------------------------------------------- loading

def bundled_names() -> list[str]:
    """The names of the experiments shipped with rbp, in a stable order."""
    folder = resources.files(__package__)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str | Path) -> Experiment:
    """Load and validate a bundled experiment by name, or an experiment file by path."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.is_dir() and (text_name.endswith((".toml", "/", os.sep)) or text_name not in bundled_names()):
        raise ConfigError(f"experiment {text_name}: is a folder, not an experiment file (a name from "
                          "`rbp list`, or the path of a .toml file)")
    if text_name.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"experiment file {path} not found")
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path.name}: not a UTF-8 text file (byte {e.start}: {e.reason}); "
                              "an experiment file is TOML text") from None
        return parse(text, str(path))
    if text_name not in bundled_names():
        raise ConfigError(f"unknown experiment {text_name!r}; `rbp list` shows the names "
                          "(or give the path of a .toml file)")
    res = resources.files(__package__) / f"{text_name}.toml"
    return parse(res.read_text(encoding="utf-8"), f"{text_name}.toml")


def load_all() -> list[Experiment]:
    """Every experiment shipped with rbp, loaded and validated (the list `rbp list` prints)."""
    return [load(n) for n in bundled_names()]


def parse(text: str, source: str = "<string>") -> Experiment:
    """Parse and validate the TOML text of an experiment (``source`` names it in errors)."""
    where = Path(source).name if source else "<string>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None

    def bad(key, msg, cfg=None):
        at = f"[[config]] {cfg!r}: " if cfg is not None else ""
        raise ConfigError(f"{where}: {at}{key} {msg}")

    _unknown(doc, TOP_KEYS, where)
    for key in ("name", "description", "dataset"):
        if key not in doc:
            bad(key, "is required")
    try:
        name = _str(pattern=_NAME)(doc["name"])
    except _Bad as e:
        bad("name", str(e))
    desc = doc["description"]
    if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
        bad("description", f"must be a one-line string, got {desc!r}")
    checked = {}
    for key, check, default in (("dataset", _str(DATASETS), None), ("reference", _str(), None),
                                ("requires", _str_list, ())):
        try:
            checked[key] = check(doc[key]) if key in doc else default
        except _Bad as e:
            bad(key, str(e))
    dataset, reference, requires = checked["dataset"], checked["reference"], checked["requires"]
    for feat in requires:
        kind, _, fname = feat.partition(":")
        if kind not in ("model", "feedback") or not fname:
            bad("requires", f"entries look like 'model:NAME' or 'feedback:NAME', got {feat!r}")

    proto = paper_protocol(dataset).as_dict()
    raw_proto = doc.get("protocol", {})
    if not isinstance(raw_proto, dict):
        bad("protocol", "must be a table ([protocol])")
    for key, value in raw_proto.items():
        if key not in PROTOCOL_CHECKS:
            bad(f"protocol.{key}", f"is not a protocol key; valid keys: {', '.join(PROTOCOL_CHECKS)}")
        try:
            proto[key] = PROTOCOL_CHECKS[key](value)
        except _Bad as e:
            bad(f"protocol.{key}", str(e))
    if proto["model"] != "mlp" and f"model:{proto['model']}" not in requires:
        requires = (*requires, f"model:{proto['model']}")

    raw_configs = doc.get("config")
    if not isinstance(raw_configs, list) or not raw_configs or not all(isinstance(c, dict) for c in raw_configs):
        bad("config", "must be one or more [[config]] tables")
    pending_feedback = {f.partition(":")[2] for f in requires
                        if f.startswith("feedback:") and _feature_missing(f)}
    configs, seen = [], set()
    for i, raw in enumerate(raw_configs):
        cid = raw.get("id", f"#{i + 1}")
        _unknown(raw, CONFIG_KEYS, where, f"[[config]] {cid!r}: ")
        for key in ("id", "algorithm"):
            if key not in raw:
                bad(key, "is required", cid)
        values = {}
        for key, value in raw.items():
            if key == "feedback" and isinstance(value, str) and value in pending_feedback:
                values[key] = value       # a distribution still to land: checked once the engine has it
                continue
            try:
                values[key] = CONFIG_CHECKS[key](value)
            except _Bad as e:
                bad(key, str(e), cid)
        if values["id"] in seen:
            bad("id", "is used twice; ids must be unique in the file", cid)
        seen.add(values["id"])
        if "paper_sd" in values and "paper_mean" not in values:
            bad("paper_sd", "needs paper_mean", cid)
        p = dict(proto)
        p.update({k: values[k] for k in OVERRIDABLE if k in values})
        options = {k: values[k] for k in ALGORITHM_OPTIONS if k in values}
        alg = None
        if options.get("feedback") in pending_feedback:
            pass  # validated once the engine has it
        else:
            try:
                alg = make_algorithm(values["algorithm"], **options)
            except ConfigError as e:
                raise ConfigError(f"{where}: [[config]] {cid!r}: {e}") from None
            _check_network(alg, p, lambda k, m: bad(k, m, cid))
        configs.append(Config(
            id=values["id"], label=values.get("label") or (alg.describe() if alg else values["algorithm"]),
            algorithm_name=values["algorithm"], options=options, protocol=p, algorithm=alg,
            row=values.get("row"), groups=values.get("group", (values.get("row") or "all",)),
            paper_mean=values.get("paper_mean"), paper_sd=values.get("paper_sd"), note=values.get("note"),
            order=i))
    return Experiment(name=name, description=desc.strip(), dataset=dataset, protocol=proto,
                      configs=tuple(configs), reference=reference, requires=tuple(requires), source=text,
                      path=str(source))


def _unknown(table: dict, valid, where, prefix=""):
    for key in table:
        if key not in valid:
            raise ConfigError(f"{where}: {prefix}unknown key {key!r}; valid keys: {', '.join(valid)}")


def _check_network(alg: Algorithm, p: dict, bad):
    """Checks that need the network's shape (what rbp.convert would refuse), done without building it."""
    if p["model"] != "mlp":
        return
    n_weights = len(p["hidden"]) + 1
    for h in p["frozen"]:
        if h > n_weights:
            bad("frozen", f"layer {h} out of range 1..{n_weights} (1-based weight layers)")
    if alg.random_feedback and alg.feedback.kind == "sparse":
        fan_out = min(p["hidden"])   # every feedback matrix sends to a hidden layer
        if alg.feedback.sparsity > fan_out:
            bad("feedback", f"sparse-{alg.feedback.sparsity}: n must be in 0..{fan_out} "
                            f"(the fan-out of the learning channel, the smallest hidden layer)")


# ----------------------------------------------------------------------------- one run of `rbp train`

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)            # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} into an experiment file")


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return s or "run"


def from_spec(spec, seeds, name: str | None = None) -> Experiment:
    """The one-configuration experiment that trains ``spec`` with ``seeds`` (what `rbp train --out` stores).

    Its TOML text is written beside the runs, so `rbp report` reads the folder like any result
    store and `rbp run DIR/experiment.toml --out DIR` finds every run already done.
    """
    alg = spec.algorithm
    options = alg.options()
    unknown = [k for k in options if k not in ALGORITHM_OPTIONS]
    if unknown:
        raise ConfigError(f"algorithm option {unknown[0]!r} cannot be stored in an experiment file")
    seeds = [int(s) for s in seeds]
    cid = _slug(alg.describe())
    name = name or _slug(f"train-{spec.dataset}-{cid}")
    model = "cifar_convnet" if spec.model in ("convnet", "cifar_convnet") else spec.model
    proto = {"epochs": spec.epochs, "seeds": len(seeds), "batch_size": spec.batch_size, "lr": spec.lr,
             "decay": spec.decay, "momentum": spec.momentum, "hidden": list(spec.hidden),
             "activation": spec.activation, "frozen": list(spec.frozen), "model": model,
             "augment": spec.augment, "optimizer": spec.optimizer}
    lines = ["# written by `rbp train --out`: one configuration, the seeds below",
             f"name = {_toml_value(name)}",
             f"description = {_toml_value(f'rbp train: {alg.describe()} on {spec.dataset}, seeds {seeds}')}",
             f"dataset = {_toml_value(spec.dataset)}", "", "[protocol]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in proto.items()]
    lines += ["", "[[config]]", f"id = {_toml_value(cid)}", f"label = {_toml_value(alg.describe())}",
              f"algorithm = {_toml_value(alg.name)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in options.items()]
    return parse("\n".join(lines) + "\n", "experiment.toml")
