"""The Hugging Face ``transformers.Trainer`` callback: :class:`RBPTrainerCallback`."""

from __future__ import annotations

import warnings

from .._optional import require
from . import after_step, learning_channels

TrainerCallback = require("transformers", "rbp.integrations.RBPTrainerCallback").TrainerCallback


class RBPTrainerCallback(TrainerCallback):
    """Runs ``after_step()`` of every rbp learning channel in the trained model after each optimizer step.

    ``transformers.Trainer`` calls ``on_step_end`` once per optimizer step: after
    ``optimizer.step()``, the learning-rate scheduler and ``zero_grad``, once per
    ``gradient_accumulation_steps`` batches.  The channels are found in the model the
    Trainer passes to its callbacks (walking ``model.modules()``), so a converted submodule
    is served too.  Nothing else is done: no logging, no change to the update.

    Example::

        model = rbp.convert(transformers.BertForSequenceClassification(config), "wm", seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                       callbacks=[RBPTrainerCallback()])
        trainer.train()
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and not learning_channels(model):
            warnings.warn("RBPTrainerCallback: the model holds no rbp learning channel "
                          "(was it converted with rbp.convert?); the callback does nothing", stacklevel=2)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            after_step(model)
