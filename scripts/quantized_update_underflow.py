"""How many per-example weight changes survive the flush of the quantized update (1 bit).

docs/reproduction.md, "The quantized-update rows": BP, RBP and SRBP with the reading
flush+after-lr, 1 bit, trained 2 epochs on MNIST (seed 0, minibatch 100, lr 0.1); then, on
1,000 training images, the share of nonzero per-example weight changes eta I^h O^{h-1} whose
magnitude reaches alpha 2^-1/2 (the others underflow to zero), per layer, computed by hand in
float64 from the trained weights and feedback matrices.

    RBP_DATA_DIR=../shared/data python scripts/quantized_update_underflow.py
"""
import torch, torch.nn.functional as F
import rbp
from rbp.nn import FeedbackLinear


def sites(model):
    return [m for m in model.modules() if isinstance(m, FeedbackLinear)]

from rbp.data import load
torch.set_num_threads(1)
ds = load("mnist")
X, Y = ds.x_train.reshape(ds.n_train, -1).float(), ds.y_train.long()
thr = 2.0 ** -6 * 2 ** -0.5
for alg in ("bp", "rbp", "srbp"):
    m = rbp.convert(rbp.mlp([784, 100, 100, 100, 100, 10], "tanh", seed=0), alg, seed=0,
                    quantize_update=1, quantize_update_mode="flush+after-lr", quantize_update_lr=0.1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 100):
            idx = perm[i:i + 100]
            opt.zero_grad(); F.cross_entropy(m(X[idx]), Y[idx]).backward(); opt.step()
    # per-example weight changes eta * I O^T on 1000 examples, by hand (float64)
    ss = sites(m)
    xb, yb = X[:1000].double(), Y[:1000]
    O, S = [xb], []
    for k, s in enumerate(ss):
        z = O[-1] @ s.weight.detach().double().T + s.bias.detach().double(); S.append(z)
        O.append(torch.tanh(z) if k < len(ss) - 1 else z)
    E = F.one_hot(yb, 10).double() - torch.softmax(S[-1], -1)
    I = [None] * len(ss); I[-1] = E
    for h in range(len(ss) - 2, -1, -1):
        if alg == "bp":
            back = I[h + 1] @ ss[h + 1].weight.detach().double()
        elif alg == "rbp":
            back = I[h + 1] @ ss[h + 1].feedback.detach().double()
        else:
            back = E @ ss[h + 1].feedback.detach().double()
        I[h] = (1 - torch.tanh(S[h]) ** 2) * back
    fr = []
    for h in range(len(ss)):
        u = 0.1 * I[h].abs().unsqueeze(-1) * O[h].abs().unsqueeze(-2)   # (n, out, in)
        nz = u > 0
        fr.append((u[nz] >= thr).float().mean().item())
    print(alg, "after 2 epochs: share of nonzero per-example weight changes that survive the flush, layers 1-5:",
          " ".join(f"{100*f:.2f}%" for f in fr))
