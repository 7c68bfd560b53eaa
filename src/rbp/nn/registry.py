"""The registry of site types: which modules the learning channel serves, and how.

``rbp.convert`` classifies every module of a model as a *site* (a weight layer that
some registered adapter claims), *structural* (everything else: its backward is
autograd's true derivative, and its own parameters, if any, learn from the signal
that reaches them) or a container.  An adapter is the one place that knows a
layer type:

* :meth:`SiteAdapter.refuse` - why this module cannot be served (one line), or None;
* :meth:`SiteAdapter.check` - what an algorithm cannot do with this module (raises);
* :meth:`SiteAdapter.build` - the converted module, sharing the module's Parameter
  objects (so names, ``state_dict`` keys and optimizers stay valid);
* :meth:`SiteAdapter.sites` - the sites (:class:`rbp.nn.site.SiteInterface`) the
  converted module holds, in forward order; their feedback shapes and how it is drawn
  are the sites' own methods;
* :meth:`SiteAdapter.out_width` - its output units (the output layer's width).

A new layer type is one file (its site class and adapter) plus one line in
:data:`BUILTIN` below; a user registers their own with :func:`register_site`
(docs/layers.md has a worked example).  Later registrations win over earlier ones, and
a more specific class over its base classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError


@dataclass(frozen=True)
class BuildInfo:
    """What ``rbp.convert`` knows about a module when it builds its converted form."""

    name: str                         # the module's qualified name in the model
    input_shape: tuple | None = None  # one example's input shape, from the discovery pass (if it ran)
    ensemble: int | None = None       # K networks side by side, or None


class SiteAdapter:
    """How one type of weight layer joins the learning channel (see the module docstring).

    Subclass it for a new layer type; the defaults describe a module that is itself one site.
    """

    name = "weight layer"
    claims_children = False     # True: the module's children are classified on their own (attention's out_proj)

    def refuse(self, module: nn.Module) -> str | None:
        """Why this module cannot be a site (shown after its name and type), or None."""
        return None

    def check(self, alg, name: str, module: nn.Module, context: "CheckContext") -> None:
        """Raise :class:`~rbp.errors.ConfigError` for what ``alg`` cannot do with this module."""

    def build(self, module: nn.Module, info: BuildInfo) -> nn.Module:
        raise NotImplementedError

    def sites(self, built: nn.Module) -> list:
        return [built]

    def out_width(self, module: nn.Module) -> int:
        return module.out_features

    def ensemble_of(self, module: nn.Module):
        """K when the module holds K networks side by side (rbp's stacked layers), else None."""
        return getattr(module, "ensemble", None)


@dataclass
class CheckContext:
    """The model-wide facts an adapter's check may need (all weight layers, in forward order)."""

    model: nn.Module
    layers: list                      # [(name, module)] of the sites-to-be, forward order
    ensemble: int | None = None


@dataclass
class _Entry:
    adapter: SiteAdapter
    predicate: Callable[[nn.Module], bool]
    cls: type | None = None          # the registered class (None: a predicate), for the most specific match

    def claims(self, module) -> bool:
        return self.predicate(module)


_REGISTRY: list[_Entry] = []


def register_site(kind, adapter: SiteAdapter, *, first: bool = True) -> SiteAdapter:
    """Register ``adapter`` for modules of ``kind``: a class (instances of it and its subclasses) or a
    predicate ``module -> bool``.  Returns the adapter.  A later registration is tried before earlier
    ones (``first=False``: after them)."""
    if not isinstance(adapter, SiteAdapter):
        raise ConfigError(f"register_site needs a rbp.nn.registry.SiteAdapter, got {type(adapter).__name__}")
    if isinstance(kind, type):
        if not issubclass(kind, nn.Module):
            raise ConfigError(f"register_site: {kind.__name__} is not a torch.nn.Module class")
        entry = _Entry(adapter, lambda m, cls=kind: isinstance(m, cls), kind)
    elif callable(kind):
        entry = _Entry(adapter, kind)
    else:
        raise ConfigError("register_site: give a module class or a predicate (module -> bool)")
    if first:
        _REGISTRY.insert(0, entry)
    else:
        _REGISTRY.append(entry)
    return adapter


def unregister_site(adapter: SiteAdapter) -> None:
    """Remove every registration of ``adapter``."""
    _REGISTRY[:] = [e for e in _REGISTRY if e.adapter is not adapter]


def adapter_for(module: nn.Module) -> SiteAdapter | None:
    """The adapter that claims ``module``: the most specific registered class, then registration order."""
    _ensure_builtin()
    hits = [e for e in _REGISTRY if e.claims(module)]
    if not hits:
        return None
    mro = type(module).__mro__

    def rank(e):
        return mro.index(e.cls) if e.cls in mro else 0   # a predicate ranks as the module's own class
    return min(hits, key=rank).adapter


def registered() -> list[SiteAdapter]:
    """The registered adapters, in the order they are tried."""
    _ensure_builtin()
    seen, out = set(), []
    for e in _REGISTRY:
        if id(e.adapter) not in seen:
            seen.add(id(e.adapter))
            out.append(e.adapter)
    return out


_LOADED = []


def _ensure_builtin():
    """Register the built-in layer types once, after every user registration made at import time."""
    if not _LOADED:
        _LOADED.append(True)
        _builtin()


def _builtin():
    """The layer types rbp ships: one line each (their adapters live beside their site classes)."""
    from . import attention, conv, embedding, hf_conv1d, layers, recurrent
    register_site(nn.Linear, layers.LINEAR, first=False)
    register_site(layers.StackedLinear, layers.LINEAR, first=False)
    register_site(nn.Conv1d, conv.CONV, first=False)
    register_site(nn.Conv2d, conv.CONV, first=False)
    register_site(conv.StackedConvNd, conv.CONV, first=False)
    register_site(nn.Embedding, embedding.EMBEDDING, first=False)
    register_site(nn.MultiheadAttention, attention.ATTENTION_ADAPTER, first=False)
    for cls in recurrent.RECURRENT:
        register_site(cls, recurrent.RECURRENT_ADAPTER, first=False)
    register_site(hf_conv1d.is_hf_conv1d, hf_conv1d.HF_CONV1D, first=False)

