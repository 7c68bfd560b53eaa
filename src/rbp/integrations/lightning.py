"""The PyTorch Lightning callback: :class:`RBPLightningCallback`.

It subclasses ``lightning.pytorch.Callback`` where the ``lightning`` package is installed,
else ``pytorch_lightning.Callback``.
"""

from __future__ import annotations

import warnings

from .._optional import require
from . import after_step, learning_channels


def _callback_base():
    try:
        from lightning.pytorch import Callback
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != "lightning":
            raise                   # lightning is there but broken: show the real error
        try:
            from pytorch_lightning import Callback
        except ImportError as e2:
            if e2.name is not None and e2.name.split(".")[0] != "pytorch_lightning":
                raise
            require("lightning", "rbp.integrations.RBPLightningCallback")
            raise
    return Callback


class RBPLightningCallback(_callback_base()):
    """Runs ``after_step()`` of every rbp learning channel in the LightningModule after each optimizer step.

    Lightning has no callback hook right after ``optimizer.step()``; this one uses
    ``on_train_batch_end``, which runs after the batch's optimizer step (and before the
    next batch's forward pass), and calls the channels only when that batch stepped the
    optimizer: when ``trainer.global_step`` (the number of optimizer steps taken) grew
    during the batch.  So with ``accumulate_grad_batches=k`` it runs once every k batches
    (and after the short last group of an epoch), and in manual optimization once per
    batch that stepped an optimizer.  Not ``on_before_zero_grad``: Lightning zeroes the
    gradients at the start of the next accumulation group, so that hook runs before the
    first step and not after the last one.

    The channels are found in the LightningModule (walking ``pl_module.modules()``), so a
    converted model held as a submodule is served.  Nothing else is done.

    Example::

        class Module(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = rbp.convert(make_net(), "wm", seed=0)
            ...

        lightning.Trainer(max_steps=100, callbacks=[RBPLightningCallback()]).fit(Module(), loader)
    """

    def __init__(self):
        super().__init__()
        self._steps_at_batch_start = None

    def on_train_start(self, trainer, pl_module):
        if not learning_channels(pl_module):
            warnings.warn("RBPLightningCallback: the LightningModule holds no rbp learning channel "
                          "(was its model converted with rbp.convert?); the callback does nothing", stacklevel=2)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._steps_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        start, self._steps_at_batch_start = self._steps_at_batch_start, None
        if start is not None and trainer.global_step > start:
            after_step(pl_module)
