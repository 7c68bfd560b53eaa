"""Train a converted model with PyTorch Lightning.

The LightningModule holds an ordinary MLP converted with weight mirrors
(`rbp.convert(net, "wm")`: random feedback that learns to mirror the forward
weights between training steps, in `rbp_channel.after_step()`). Lightning owns
the loop, so `RBPLightningCallback` makes that call after every optimizer step
(with `accumulate_grad_batches=k`, once every k batches): the angle between
each layer's feedback and its weights, printed at the end, falls from about 90
degrees. The rest is plain Lightning. Data: the 8x8 digits shipped with rbp. Needs `pip install 'rbp[lightning]'`.

    python examples/07_lightning.py                       # 20 epochs
    RBP_EXAMPLE_QUICK=1 python examples/07_lightning.py   # 3 epochs
"""

import os
import warnings

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import rbp
from rbp.data import load
from rbp.integrations import RBPLightningCallback

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
EPOCHS = 3 if QUICK else 20
warnings.filterwarnings("ignore", ".*does not have many workers.*")   # a tiny in-memory data set


class DigitsClassifier(L.LightningModule):
    def __init__(self, algorithm="wm"):
        super().__init__()
        net = nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 10))
        self.net = rbp.convert(net, algorithm, seed=0)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)      # .grad after backward: the algorithm's update
        self.losses.append(loss.item())
        return loss

    def on_train_epoch_start(self):
        self.losses = []

    def on_train_epoch_end(self):
        with torch.no_grad():               # the held-out digits (data, below)
            acc = (self(data.x_test).argmax(1) == data.y_test).float().mean().item()
        print(f"epoch {self.current_epoch + 1:2d}  training loss {sum(self.losses) / len(self.losses):.4f}  "
              f"test accuracy {acc:.3f}")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


data = load("digits").flat()
L.seed_everything(0, verbose=False)          # the loader's shuffling
train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=32, shuffle=True)


def feedback_angles(net):
    """Angle (degrees) between each layer's feedback matrix and its forward weights."""
    return [round(torch.rad2deg(torch.arccos(F.cosine_similarity(
        s.feedback.flatten(), s.weight.flatten(), dim=0))).item(), 1)
        for s in net.rbp_channel.sites if s.feedback is not None]


model = DigitsClassifier("wm")
print(model.net.rbp_channel.report)
before = feedback_angles(model.net)
trainer = L.Trainer(
    max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
    callbacks=[RBPLightningCallback()])      # calls rbp_channel.after_step() after each optimizer step
trainer.fit(model, train)
print("angle between feedback and weights, per layer: before", before, "after", feedback_angles(model.net))
