"""Callbacks that run rbp's learning channel inside other libraries' trainers.

A converted model (:func:`rbp.convert`) needs one thing from the loop that trains it:
``model.rbp_channel.after_step()`` after every optimizer step (a no-op except for weight
mirrors, ``wm``, whose mirror phase teaches the feedback).  A trainer that owns the loop
calls it through a callback::

    from rbp.integrations import RBPTrainerCallback       # Hugging Face transformers.Trainer
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[RBPTrainerCallback()])

    from rbp.integrations import RBPLightningCallback     # PyTorch Lightning
    trainer = lightning.Trainer(max_steps=1000, callbacks=[RBPLightningCallback()])

Both find the learning channels by walking the trained module's ``modules()`` for an
``rbp_channel`` attribute, so a converted submodule (a converted backbone inside a
LightningModule) and wrapped models (DDP, accelerate) are found; each channel's
``after_step`` runs once per optimizer step.  They change nothing else: the update a
converted model receives inside the trainer is the one it receives in a plain loop
(``tests/test_integrations.py``).

The callbacks are imported lazily: ``import rbp`` and ``import rbp.integrations`` import
neither transformers nor lightning; asking for a callback whose library is missing stops
with one line naming the extra (``pip install 'rbp[transformers]'``, ``'rbp[lightning]'``).
"""

from __future__ import annotations

import importlib

__all__ = ["RBPTrainerCallback", "RBPLightningCallback", "learning_channels", "after_step"]

_LAZY = {
    "RBPTrainerCallback": "hf",
    "RBPLightningCallback": "lightning",
}


def learning_channels(module) -> list:
    """The learning channels of the converted models inside ``module`` (itself included), each once,
    in the order ``module.modules()`` meets them."""
    found, seen = [], set()
    for m in module.modules():
        channel = m.__dict__.get("rbp_channel")
        if channel is not None and callable(getattr(channel, "after_step", None)) and id(channel) not in seen:
            seen.add(id(channel))
            found.append(channel)
    return found


def after_step(module) -> int:
    """Call ``after_step()`` of every learning channel inside ``module``; return how many there were."""
    channels = learning_channels(module)
    for channel in channels:
        channel.after_step()
    return len(channels)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
