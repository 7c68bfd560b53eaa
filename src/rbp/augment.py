"""Data augmentation of paper 1's CIFAR-10 protocol, vectorised on the device.

Random translation up to 10 % of the image size each way (integer pixel shifts,
zero fill) and a horizontal flip with probability 0.5, independently per image.
The random draws are a few numbers per image, taken from a CPU generator (the
network's ``data`` stream, so runs are reproducible and an ensemble member
draws what it would draw alone); the images themselves never leave the device:
a whole minibatch is transformed by one gather, no per-image Python loop.

Inferred details (the paper says only "random translations up to 10 % and
horizontal flips"): the shift is a uniform integer in
[-floor(0.1 * size), floor(0.1 * size)] per axis (3 pixels for 32x32, 2 for
28x28), vacated pixels are 0, and the flip is applied before the shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError

MAX_SHIFT = 0.1
FLIP_P = 0.5


@dataclass
class Params:
    """Per-image augmentation parameters: shifts (rows down, columns right) and flips."""

    dy: torch.Tensor     # int64 (n,)
    dx: torch.Tensor     # int64 (n,)
    flip: torch.Tensor   # bool (n,)

    def to(self, device) -> "Params":
        return Params(self.dy.to(device), self.dx.to(device), self.flip.to(device))

    def __getitem__(self, idx) -> "Params":
        return Params(self.dy[idx], self.dx[idx], self.flip[idx])


def max_shifts(height: int, width: int, fraction: float = MAX_SHIFT) -> tuple[int, int]:
    """Largest integer shift (pixels) per axis that stays within ``fraction`` of the size."""
    return int(fraction * height + 1e-9), int(fraction * width + 1e-9)


def draw(n: int, image_shape, generator: torch.Generator | None = None, *, max_shift: float = MAX_SHIFT,
         flip_p: float = FLIP_P) -> Params:
    """Draw augmentation parameters for ``n`` images of ``image_shape`` (C, H, W), on the CPU."""
    if len(image_shape) != 3:
        raise ConfigError(f"augmentation needs images (C, H, W), got input shape {tuple(image_shape)}")
    if not 0 <= max_shift < 1 or not 0 <= flip_p <= 1:
        raise ConfigError(f"max_shift must be in [0, 1) and flip_p in [0, 1], got {max_shift}, {flip_p}")
    sy, sx = max_shifts(image_shape[1], image_shape[2], max_shift)
    dy = torch.randint(-sy, sy + 1, (n,), generator=generator)
    dx = torch.randint(-sx, sx + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < flip_p
    return Params(dy, dx, flip)


def apply(x: torch.Tensor, p: Params) -> torch.Tensor:
    """Shift and flip a batch of images (..., C, H, W) with per-image parameters (batch shape of ``p``).

    out[b, c, i, j] = x[b, c, i - dy_b, j'] with j' = W-1-(j - dx_b) for flipped
    images and j - dx_b otherwise; 0 where the source lies outside the image.
    """
    *lead, C, H, W = x.shape
    xb = x.reshape(-1, C, H * W)
    n = xb.shape[0]
    dev = x.device
    dy, dx, flip = p.dy.reshape(-1).to(dev), p.dx.reshape(-1).to(dev), p.flip.reshape(-1).to(dev)
    if dy.shape[0] != n:
        raise ConfigError(f"{dy.shape[0]} sets of augmentation parameters for {n} images")
    rows = torch.arange(H, device=dev).unsqueeze(0) - dy.unsqueeze(1)          # (n, H) source rows
    cols = torch.arange(W, device=dev).unsqueeze(0) - dx.unsqueeze(1)          # (n, W) source cols (shifted)
    cols = torch.where(flip.unsqueeze(1), W - 1 - cols, cols)
    valid = ((rows >= 0) & (rows < H)).unsqueeze(2) & ((cols >= 0) & (cols < W)).unsqueeze(1)   # (n, H, W)
    index = rows.clamp(0, H - 1).unsqueeze(2) * W + cols.clamp(0, W - 1).unsqueeze(1)          # (n, H, W)
    out = torch.gather(xb, 2, index.reshape(n, 1, H * W).expand(n, C, H * W))
    out = out * valid.reshape(n, 1, H * W).to(out.dtype)
    return out.reshape(*lead, C, H, W)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, *, max_shift: float = MAX_SHIFT,
            flip_p: float = FLIP_P) -> torch.Tensor:
    """A randomly translated and flipped copy of the image batch ``x`` (N, C, H, W), on x's device."""
    if x.dim() != 4:
        raise ConfigError(f"augment expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    return apply(x, draw(x.shape[0], x.shape[1:], generator, max_shift=max_shift, flip_p=flip_p))
