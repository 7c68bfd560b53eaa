"""Linear units with a penalty have no fixed point: follow one setting far past the authors' stopping rule.

Authors' protocol, linear units, p = 200, lambda = 0.5, runs 0-2 of seed 0 (the sweep's first runs
at that point), 300,000 steps. Every 10,000 steps it prints the loss, the alignment cos(b, beta),
|beta| and |W - W(0)| (Frobenius), from the reduced linear recursion of rbp.theory.twolayer.
Run from the repository root:
    OMP_NUM_THREADS=1 nice -n 10 python results/theory/paper3/linear_penalty_drift.py > results/theory/paper3/linear_penalty_drift.txt
"""

import json
import math
import time

import torch

from rbp.theory.twolayer import PROTOCOLS, _LinearState, authors_min_steps, draw_run

torch.set_num_threads(1)
P, p, n, d, lam, runs, steps = PROTOCOLS["authors"], 200, 50, 150, 0.5, 3, 300_000
draws = [draw_run(P, "linear", p, n, d, target="linear", seed=0, run=k) for k in range(runs)]
X, y, W, beta, b = (torch.stack([dr[i] for dr in draws]) for i in range(5))
st = _LinearState(X, y, W, beta, b, act="linear", loss="mse", lam=lam, eta=torch.full((runs,), 1e-3),
                  algorithm="fa")
Ginv = torch.linalg.inv(st.G)
bnorm = b.norm(dim=1)
rows, t0 = [], time.perf_counter()
print(f"linear units, p = {p}, lambda = {lam}, eta = 1e-3, runs 0-{runs - 1} of seed 0; "
      f"the authors' rule cannot stop a run before step {authors_min_steps(p)}")
print("step     loss (per run)                   cos(b, beta)            |beta|                  |W - W0|")
for s in range(steps + 1):
    loss = st.forward()
    if s % 10_000 == 0:
        Ka = (st.K @ st.a.unsqueeze(-1)).squeeze(-1)
        bn = (st.a * Ka).sum(-1).sqrt()
        h = st.H[:, :, 1]
        dw = bnorm * torch.einsum("ri,rij,rj->r", h, Ginv, h).clamp_min(0).sqrt()
        al = st.alignment()
        row = {"step": s, "loss": loss.tolist(), "alignment": al.tolist(), "beta_norm": bn.tolist(),
               "dW_norm": dw.tolist()}
        rows.append(row)
        f = lambda v: " ".join(f"{x:7.4g}" for x in v)  # noqa: E731
        print(f"{s:<8d} {f(loss)}   {f(al)}   {f(bn)}   {f(dw)}", flush=True)
    st.step()
print(f"{time.perf_counter() - t0:.0f} s")
print(json.dumps(rows))
