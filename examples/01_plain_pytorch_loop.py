"""Train with random backpropagation in an ordinary PyTorch training loop.

`rbp.convert` swaps the backward pass of a model's weight layers for a
learning channel (here RBP, feedback alignment); everything else -- the loss,
the optimizer, the data loader, saving with state_dict -- is plain PyTorch.

    python examples/01_plain_pytorch_loop.py      # 30 epochs on 8x8 digits
    RBP_EXAMPLE_QUICK=1 python examples/01_plain_pytorch_loop.py   # 3 epochs
"""

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import rbp
from rbp.data import load

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
EPOCHS = 3 if QUICK else 30

torch.manual_seed(0)                # the loader's shuffling
# scikit-learn's 8x8 digits (1500 training, 297 test images), no download
data = load("digits").flat()
train_set = TensorDataset(data.x_train, data.y_train)
loader = DataLoader(train_set, batch_size=32, shuffle=True)

# Any nn.Module whose weight layers are nn.Linear / nn.Conv2d works.
model = torch.nn.Sequential(
    torch.nn.Linear(64, 100), torch.nn.Tanh(),
    torch.nn.Linear(100, 100), torch.nn.Tanh(),
    torch.nn.Linear(100, 10),
)
# fixed random feedback matrices carry the error instead of W^T
model = rbp.convert(model, "rbp", seed=0)
opt = torch.optim.SGD(model.parameters(), lr=0.1)


@torch.no_grad()
def accuracy(x, y):
    return (model(x).argmax(1) == y).float().mean().item()


for epoch in range(1, EPOCHS + 1):
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()   # .grad: RBP's direction
        opt.step()
    train_acc = accuracy(data.x_train, data.y_train)
    test_acc = accuracy(data.x_test, data.y_test)
    print(f"epoch {epoch:2d}  train accuracy {train_acc:.3f}  "
          f"test accuracy {test_acc:.3f}")

# The feedback matrices are buffers: state_dict saves them with the weights.
print("feedback buffers:", [k for k in model.state_dict() if "feedback" in k])
