"""Stochastic gradient descent as the paper's Keras experiments ran it.

    lr_t = lr / (1 + decay * t)        (t = number of updates so far)
    v   <- momentum * v - lr_t * grad
    w   <- w + v                       (plain SGD when momentum = 0)

This is ``keras.optimizers.SGD`` of the time.  It differs from
``torch.optim.SGD`` with momentum only in where the learning rate enters the
velocity; with momentum 0 the two coincide.
"""

from __future__ import annotations

import torch


class _CountsUpdates:
    """The number of updates so far (``updates``, which the lr schedule reads), saved with the state."""

    updates = 0

    def state_dict(self):
        sd = super().state_dict()
        sd["updates"] = self.updates
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.updates = state_dict.pop("updates", 0)
        super().load_state_dict(state_dict)


class KerasSGD(_CountsUpdates, torch.optim.Optimizer):
    def __init__(self, params, lr=0.1, decay=0.0, momentum=0.0):
        if lr <= 0 or decay < 0 or not 0 <= momentum < 1:
            raise ValueError("need lr > 0, decay >= 0, 0 <= momentum < 1")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum))
        self.updates = 0

    def current_lr(self, group=None) -> float:
        group = group or self.param_groups[0]
        return group["lr"] / (1.0 + group["decay"] * self.updates)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr = self.current_lr(group)
            if group["momentum"]:
                bufs = []
                for p in params:
                    st = self.state[p]
                    if "velocity" not in st:
                        st["velocity"] = torch.zeros_like(p)
                    bufs.append(st["velocity"])
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads, alpha=-lr)
                torch._foreach_add_(params, bufs)
            else:
                torch._foreach_add_(params, grads, alpha=-lr)
        self.updates += 1
        return loss



class Adam(_CountsUpdates, torch.optim.Adam):
    """``torch.optim.Adam`` (default betas and eps) on the same schedule, lr_t = lr / (1 + decay * t).

    For networks that plain SGD trains slowly (the small vision transformer of
    ``rbp.models.vit``); the experiment files and ``rbp train`` name it ``optimizer = "adam"``.
    """

    def __init__(self, params, lr=1e-3, decay=0.0, **kwargs):
        if lr <= 0 or decay < 0:
            raise ValueError("need lr > 0, decay >= 0")
        super().__init__(params, lr=lr, **kwargs)
        self.decay = decay
        self.updates = 0
        for group in self.param_groups:
            group.setdefault("base_lr", lr)

    def current_lr(self, group=None) -> float:
        group = group or self.param_groups[0]
        return group["base_lr"] / (1.0 + self.decay * self.updates)

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] = self.current_lr(group)
        out = super().step(closure)
        self.updates += 1
        return out



OPTIMIZERS = {"sgd": KerasSGD, "adam": Adam}


def make_optimizer(name: str, params, lr: float, decay: float, momentum: float):
    """The optimizer a TrainSpec names (``sgd``: KerasSGD with momentum; ``adam``: Adam, no momentum key)."""
    if name == "adam":
        return Adam(params, lr=lr, decay=decay)
    return KerasSGD(params, lr=lr, decay=decay, momentum=momentum)
