"""The papers' networks.

``mlp(sizes, activation)`` builds paper 1's fully connected networks
(MNIST: 784-100-100-100-100-10, tanh hidden units, softmax output folded into
the loss), with Glorot scaled-normal weights, N(0, 2/(fan_in + fan_out)), and
zero biases, as Keras initialised them.

``cifar_convnet(...)`` builds paper 1's CIFAR-10 network: 3 x [conv 5x5, 64
tanh channels, stride 1 -> max-pool 3x3 stride 2], dense 1024 tanh, softmax
output (folded into the loss).

``lenet(...)`` builds the LeNet that BioTorch benchmarks on MNIST (Sanfiz & Akrout
2021): conv 5x5 6 -> pool 2 -> conv 5x5 16 -> pool 2 -> conv 5x5 120 -> dense 84
-> dense 10, ReLU after each convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .channel.feedback import glorot_std
from .channel.noise import generator
from .errors import ConfigError
from .nn.activations import activation as get_activation
from .nn.conv import EnsembleFlatten, EnsembleFold, StackedConv2d, kernel_glorot_std
from .nn.layers import StackedLinear

MNIST_SIZES = (784, 100, 100, 100, 100, 10)


def _seeds(seed, ensemble):
    if ensemble is None:
        return [seed]
    if isinstance(ensemble, int):
        if ensemble < 1:
            raise ConfigError(f"ensemble size must be >= 1, got {ensemble}")
        base = 0 if seed is None else int(seed)
        return [base + k for k in range(ensemble)]
    seeds = list(ensemble)
    if not seeds:
        raise ConfigError("ensemble needs at least one seed")
    return seeds


def glorot_(weight: torch.Tensor, gen) -> torch.Tensor:
    """Fill a 2-D weight with Glorot scaled-normal values from ``gen``."""
    with torch.no_grad():
        return weight.copy_(torch.randn(weight.shape, generator=gen, dtype=weight.dtype)
                            .mul_(glorot_std(weight.shape)))


def mlp(sizes: Sequence[int], activation: str = "tanh", *, seed: int | None = None,
        ensemble: int | Sequence[int] | None = None, bias: bool = True) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Hidden layers use ``activation`` (tanh, relu, logistic, linear); the output
    layer is linear (pair it with ``cross_entropy`` for softmax, or ``mse_loss``).
    ``seed`` makes the initial weights reproducible.  With ``ensemble`` (a number
    K, or a list of seeds) the layers hold K independent networks as one batched
    computation; member k is initialised exactly as ``mlp(sizes, seed=seeds[k])``
    (an int K uses seeds ``seed, seed+1, ...``).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(f"sizes must be at least two positive integers, got {sizes}")
    act = get_activation(activation)
    seeds = _seeds(seed, ensemble)
    gens = [generator(s, "init") for s in seeds]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if ensemble is None:
            lin = nn.Linear(n_in, n_out, bias=bias)
            glorot_(lin.weight, gens[0])
        else:
            lin = StackedLinear(len(seeds), n_in, n_out, bias=bias)
            for k, g in enumerate(gens):
                glorot_(lin.weight[k], g)
        if bias:
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act.module())
    return nn.Sequential(*layers)


def _pooled(size: int, kernel: int = 3, stride: int = 2) -> int:
    return (size - kernel) // stride + 1


def cifar_convnet(in_channels: int = 3, image_size: int = 32, num_classes: int = 10, activation: str = "tanh",
                  seed: int | None = None, *, channels: int = 64, hidden: int = 1024,
                  blocks: int = 3, ensemble: int | Sequence[int] | None = None) -> nn.Sequential:
    """Paper 1's CIFAR-10 network (section 4.3) as an ``nn.Sequential``.

    ``blocks`` x [Conv2d(k=5, ``channels``, stride 1, padding 2), activation,
    MaxPool2d(3, stride 2)], Flatten, Linear(-> ``hidden``), activation,
    Linear(``hidden`` -> ``num_classes``); pair the logits with ``cross_entropy``
    (softmax output).  Weights are Glorot scaled-normal (kernels: fan_in = C*5*5,
    fan_out = O*5*5, as Keras), biases zero, drawn from the ``init`` stream of
    ``seed``.

    Padding: the paper does not say; the convolutions are "same" (padding 2), so
    only the pooling shrinks the map (32 -> 15 -> 7 -> 3 for CIFAR-10, 28 -> 13 ->
    6 -> 2 for MNIST-sized images).  With "valid" convolutions a 32x32 image would
    leave no spatial extent after the third convolution (32 -> 28 -> 13 -> 9 -> 4 -> 0).

    The model carries ``input_shape`` = (in_channels, image_size, image_size) so a
    trainer can make the ``example_input`` that :func:`rbp.convert` needs for the
    skipped route.  ``channels`` and ``hidden`` (64 and 1024 in the paper) exist to
    make small test networks.

    With ``ensemble`` (a number K, or a list of seeds, as for :func:`mlp`) the
    model holds K networks: it takes (K, batch, C, H, W) and returns (K, batch,
    classes).  The maps in between keep the members side by side in the channels,
    (batch, K*C, H, W) (:class:`~rbp.nn.conv.EnsembleFold`), so each convolution is
    one grouped convolution (:class:`~rbp.nn.conv.StackedConv2d`) and the tanh and
    max-pooling layers are the single network's; :class:`~rbp.nn.conv.EnsembleFlatten`
    hands (K, batch, C*H*W) rows to the ensemble dense layers.  Member k is
    initialised exactly as ``cifar_convnet(..., seed=seeds[k])``.
    """
    for key, v in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes),
                   ("channels", channels), ("hidden", hidden), ("blocks", blocks)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    act = get_activation(activation)
    seeds = _seeds(seed, ensemble)
    gens = [generator(s, "init") for s in seeds]
    K = len(seeds) if ensemble is not None else None

    def fill(weight, std):
        with torch.no_grad():
            members = weight.unsqueeze(0) if K is None else weight
            for w, g in zip(members, gens):
                w.copy_(torch.randn(w.shape, generator=g).mul_(std))

    layers: list[nn.Module] = [EnsembleFold(K)] if K else []
    size, ch = image_size, in_channels
    for b in range(blocks):
        if K:
            conv = StackedConv2d(K, ch, channels, kernel_size=5, stride=1, padding=2)
        else:
            conv = nn.Conv2d(ch, channels, kernel_size=5, stride=1, padding=2)
        fill(conv.weight, kernel_glorot_std(conv.weight.shape[-4:]))
        with torch.no_grad():
            conv.bias.zero_()
        size = _pooled(size)
        if size < 1:
            raise ConfigError(f"image_size {image_size} is too small for {blocks} conv blocks "
                              f"(the map vanishes after block {b + 1}); use at least 15 pixels for 3 blocks")
        layers += [conv, act.module(), nn.MaxPool2d(3, stride=2)]
        ch = channels
    layers.append(EnsembleFlatten(K) if K else nn.Flatten())
    for n_in, n_out, last in ((ch * size * size, hidden, False), (hidden, num_classes, True)):
        lin = StackedLinear(K, n_in, n_out) if K else nn.Linear(n_in, n_out)
        fill(lin.weight, glorot_std(lin.weight.shape[-2:]))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(act.module())
    model = nn.Sequential(*layers)
    model.input_shape = (in_channels, image_size, image_size)
    return model


def lenet(in_channels: int = 1, image_size: int = 28, num_classes: int = 10, activation: str = "relu",
          seed: int | None = None, *, ensemble: int | Sequence[int] | None = None) -> nn.Sequential:
    """The LeNet of BioTorch's MNIST benchmark (their ``le_net_mnist``) as an ``nn.Sequential``.

    Conv2d(C, 6, 5), f, MaxPool2d(2), Conv2d(6, 16, 5), f, MaxPool2d(2),
    Conv2d(16, 120, 5), f, Flatten, Linear(120, 84), Linear(84, classes): as in
    BioTorch there is no activation between the two dense layers.  The network
    expects 32 x 32 maps (the third convolution then sees 5 x 5); BioTorch resizes
    MNIST's 28 x 28 digits to 32 x 32, here the first convolution zero-pads a
    smaller image up to 32 (padding (32 - image_size) / 2: 2 pixels for MNIST),
    which keeps every digit's pixels unchanged.  Weights are Glorot (Xavier)
    *uniform*, as BioTorch's ``init: xavier``, biases zero, drawn from the ``init``
    stream of ``seed``.  ``ensemble`` works as for :func:`cifar_convnet`.
    """
    for key, v in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    if image_size > 32 or (32 - image_size) % 2:
        raise ConfigError(f"lenet takes square images of at most 32 pixels, padded evenly to 32; got {image_size}")
    act = get_activation(activation)
    seeds = _seeds(seed, ensemble)
    gens = [generator(s, "init") for s in seeds]
    K = len(seeds) if ensemble is not None else None

    def fill(weight, bound):
        with torch.no_grad():
            members = weight.unsqueeze(0) if K is None else weight
            for w, g in zip(members, gens):
                w.copy_(torch.rand(w.shape, generator=g).mul_(2 * bound).sub_(bound))

    def conv(c_in, c_out, padding=0):
        layer = StackedConv2d(K, c_in, c_out, 5, padding=padding) if K else nn.Conv2d(c_in, c_out, 5, padding=padding)
        fill(layer.weight, 3 ** 0.5 * kernel_glorot_std(layer.weight.shape[-4:]))
        nn.init.zeros_(layer.bias)
        return layer

    def dense(n_in, n_out):
        layer = StackedLinear(K, n_in, n_out) if K else nn.Linear(n_in, n_out)
        fill(layer.weight, 3 ** 0.5 * glorot_std(layer.weight.shape[-2:]))
        nn.init.zeros_(layer.bias)
        return layer

    layers: list[nn.Module] = [EnsembleFold(K)] if K else []
    layers += [conv(in_channels, 6, (32 - image_size) // 2), act.module(), nn.MaxPool2d(2),
               conv(6, 16), act.module(), nn.MaxPool2d(2),
               conv(16, 120), act.module(),
               EnsembleFlatten(K) if K else nn.Flatten(),
               dense(120, 84), dense(84, num_classes)]
    model = nn.Sequential(*layers)
    model.input_shape = (in_channels, image_size, image_size)
    return model


class _ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: keep every other pixel, append zero channels (no weights)."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return torch.nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class _BasicBlock(nn.Module):
    """conv3x3 - BN - f - conv3x3 - BN, plus the shortcut, then f (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, act):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = act.module()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = act.module()
        self.shortcut = _ShortcutA(c_out - c_in) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR-10 ResNet of He et al. (2016, section 4.2): 6n + 2 weight layers."""

    def __init__(self, n: int, in_channels: int, num_classes: int, act, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act.module()
        blocks, c = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(c, c_out, 2 if stage and i == 0 else 1, act))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.act1(self.bn1(self.conv1(x)))))))


def resnet20(in_channels: int = 3, image_size: int = 32, num_classes: int = 10, activation: str = "relu",
             seed: int | None = None, *, ensemble=None, width: int = 16) -> nn.Module:
    """ResNet-20 for CIFAR-10 (He et al. 2016; the network of BioTorch's CIFAR-10 benchmark).

    conv3x3(16) - BN - f, then 3 stages of 3 basic blocks (16, 32, 64 channels; the
    first block of stages 2 and 3 has stride 2 and an option-A shortcut: subsampled
    identity with zero channels appended, no weights), global average pooling and
    a linear layer: 19 convolutions (no bias, each followed by batch norm) and 1
    dense layer.  Weights are Xavier uniform (BioTorch's ``init: xavier``) from the
    ``init`` stream of ``seed``; batch norm starts at scale 1, shift 0.  The residual
    additions are ordinary autograd operations, so :func:`rbp.convert` serves this
    network with every route except the product route (batch norm).  ``width`` (16
    in the paper) exists for small test networks.  No ensembles (batch norm keeps
    per-network statistics that the grouped layout does not hold).
    """
    if ensemble is not None:
        raise ConfigError("resnet20 trains one network at a time (no ensemble)")
    act = get_activation(activation)
    model = ResNetCifar(3, in_channels, num_classes, act, width)
    gen = generator(seed, "init")
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                w = mod.weight
                std = kernel_glorot_std(w.shape) if w.dim() == 4 else glorot_std(w.shape)
                w.copy_(torch.rand(w.shape, generator=gen).mul_(2 * 3 ** 0.5 * std).sub_(3 ** 0.5 * std))
                if mod.bias is not None:
                    mod.bias.zero_()
    model.input_shape = (in_channels, image_size, image_size)
    return model


class VisionTransformer(nn.Module):
    """A small vision transformer made of torch modules only (see :func:`vit`)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, act, patch: int, dim: int,
                 depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.tokens = (image_size // patch) ** 2
        self.position = nn.Embedding(self.tokens, dim)
        self.layers = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation=act.module(),
                                       batch_first=True, norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)       # (B, T, dim)
        h = self.layers(tokens + self.position(torch.arange(self.tokens, device=x.device)))
        return self.head(self.norm(h).mean(1))


def vit(in_channels: int = 1, image_size: int = 28, num_classes: int = 10, activation: str = "relu",
        seed: int | None = None, *, ensemble=None, patch: int = 7, dim: int = 64, depth: int = 4,
        heads: int = 4, mlp_dim: int = 128) -> nn.Module:
    """A small vision transformer (Dosovitskiy et al. 2021) for MNIST-sized images, from torch modules only.

    Patch embedding by ``nn.Conv2d`` with kernel and stride ``patch`` (28 x 28 images,
    patch 7: 16 tokens), plus a learned position embedding, then ``depth``
    ``nn.TransformerEncoderLayer`` blocks (``batch_first``, ``norm_first``, ``heads``
    heads, feed-forward width ``mlp_dim``, ``activation``, no dropout), a final
    ``nn.LayerNorm``, the mean over the tokens and an ``nn.Linear`` head.  The
    encoder layers are ``model.layers.0`` ... (the blocks of SRBP's block mode,
    docs/blocks.md).

    The position table is an ``nn.Embedding`` looked up at positions 0 .. T-1: the
    same learned (T, dim) table as a bare parameter, in a module type that
    :func:`rbp.convert` knows (it refuses parameters held by a module it does not
    know).  Pooling is the token mean (a class token would be such a parameter).

    Weights from the ``init`` stream of ``seed``: Xavier uniform for every
    projection (as torch initialises attention's ``in_proj_weight``), the patch
    kernel and the head; zero biases; position table N(0, 0.02^2); layer norms at
    scale 1, shift 0.  No ensembles.
    """
    if ensemble is not None:
        raise ConfigError("vit trains one network at a time (no ensemble)")
    for key, v in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes),
                   ("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads), ("mlp_dim", mlp_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    if image_size % patch:
        raise ConfigError(f"vit: patch {patch} does not divide the image size {image_size}")
    if dim % heads:
        raise ConfigError(f"vit: dim {dim} is not divisible by heads {heads}")
    model = VisionTransformer(in_channels, image_size, num_classes, get_activation(activation), patch, dim, depth,
                              heads, mlp_dim)
    gen = generator(seed, "init")

    def uniform(w, fan_in, fan_out):
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        w.copy_(torch.rand(w.shape, generator=gen).mul_(2 * bound).sub_(bound))

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or name.startswith("norm."):
                if not name.endswith("bias"):
                    p.fill_(1.0)
                else:
                    p.zero_()
            elif name == "position.weight":
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
            elif name.endswith("in_proj_weight"):
                uniform(p, p.shape[1], p.shape[0])         # torch's own: Xavier over the stacked (3d, d)
            elif p.dim() == 4:
                rf = p.shape[2] * p.shape[3]
                uniform(p, p.shape[1] * rf, p.shape[0] * rf)
            else:
                uniform(p, p.shape[1], p.shape[0])
    model.input_shape = (in_channels, image_size, image_size)
    return model


class _TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3 - BN - ReLU - conv3x3 - BN, plus the (projection) shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout, written here (no torchvision import): see :func:`resnet18`."""

    def __init__(self, in_channels: int, num_classes: int, cifar_stem: bool):
        super().__init__()
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        stages, c = [], 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_TorchvisionBlock(c, c_out, stride), _TorchvisionBlock(c_out, c_out, 1)))
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(in_channels: int = 3, num_classes: int = 10, seed: int | None = None, *,
             cifar_stem: bool = False) -> nn.Module:
    """ResNet-18 (He et al. 2016) in torchvision's layout, from torch modules only.

    Stem conv 7x7 / 2 (64) - BN - ReLU - max-pool 3x3 / 2, then four stages of two
    basic blocks (64, 128, 256, 512 channels; the first block of stages 2-4 has
    stride 2 and a 1x1 projection shortcut with batch norm), global average
    pooling and a linear layer: 20 convolutions and 1 dense layer, 11.2 million
    weights with 10 classes.  ``cifar_stem=True`` replaces the stem by a 3x3 / 1
    convolution without the max-pool (the usual CIFAR variant: 16x the compute
    per 32x32 image).  Weights as torchvision draws them (Kaiming normal, fan-out,
    for the convolutions; PyTorch's default for the linear layer), from the
    ``init`` stream of ``seed``; batch norm at scale 1, shift 0.
    """
    model = ResNet18(in_channels, num_classes, cifar_stem)
    gen = generator(seed, "init")
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                fan_out = mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen).mul_((2.0 / fan_out) ** 0.5))
            elif isinstance(mod, nn.Linear):
                bound = 1.0 / mod.in_features ** 0.5
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen).mul_(2 * bound).sub_(bound))
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=gen).mul_(2 * bound).sub_(bound))
    model.input_shape = (in_channels, 32, 32)
    return model


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one (3d, d) projection for q, k, v, one (d, d) output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class _GPTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, width 4d)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small decoder-only language model (see :func:`gpt`)."""

    def __init__(self, vocab: int, context: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[_GPTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.norm(self.blocks(self.tokens(idx) + self.position(pos))))


def gpt(vocab: int = 8192, context: int = 64, dim: int = 128, depth: int = 4, heads: int = 4,
        seed: int | None = None) -> nn.Module:
    """A small GPT-style decoder (nanoGPT's layout) from torch modules only: logits (B, T, vocab).

    Token and position embeddings, ``depth`` pre-norm blocks (causal attention with
    ``heads`` heads through ``F.scaled_dot_product_attention``, a GELU MLP of width
    4 ``dim``), a final LayerNorm and an untied linear head to the vocabulary.  Every
    projection is an ``nn.Linear``; weights N(0, 0.02^2), biases zero, norms at 1, 0
    (nanoGPT's initialisation), from the ``init`` stream of ``seed``.
    """
    for key, v in (("vocab", vocab), ("context", context), ("dim", dim), ("depth", depth), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")
    if dim % heads:
        raise ConfigError(f"gpt: dim {dim} is not divisible by heads {heads}")
    model = GPT(vocab, context, dim, depth, heads)
    gen = generator(seed, "init")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("norm."):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
    return model
