"""SRBP's block ("macro") mode: the output error projected straight onto the outputs of named modules.

Per-layer SRBP delivers C^h E^L at the input of every weight layer (Launay et al.'s
"micro" granularity).  In block mode the user names modules, the *blocks*
(``rbp.convert(model, "srbp", blocks=["layers.0", "layers.1"], block_feedback="bp")``);
the output of block k receives C_k E^L directly, a fixed random matrix per block,
and below a block's output the signal travels by the chained route, with the
transposed forward weights (``block_feedback="bp"``) or fixed random matrices
(``"rbp"``), until it reaches the output of the next block below, or the input.
Parts of the network above every block (e.g. a classifier head) are reached by
the same chained route from the output; the output layer's gradient is exact.

How: the sites are converted with the chained algorithm (``bp`` or ``rbp``).  A
forward hook on every block hands the rest of the network a *detached* copy of
the block's output and remembers the attached one; a hook on the root module
wraps the model's output in :class:`_Deliver`, whose forward is the identity and
whose backward passes the output's gradient g = dLoss/dO^L on unchanged and
returns (g @ C_k) reshaped as the gradient of every remembered block output (the
skipped route's signal in autograd's units, as ``site.skip`` computes it).
Nothing above a block's output ever differentiates with respect to it: the layers
above see a tensor that does not require grad, so autograd computes no signal
there and the sites compute no ``grad_input`` (``tests/test_blocks.py`` counts).

Block matrices are sized lazily, at the first forward pass with gradients: with
the model's output of shape (*lead, N_L), block k's output of shape
(*lead, *rest) gets C_k of shape (N_L, prod(rest)) (per-example error for a
classifier, (B, N_L) against (B, ...); per-token error when the output keeps the
token dimension).  C_k is the buffer ``skip_feedback`` of the block module, drawn
from the algorithm's feedback distribution (Glorot scale of (N_L, prod(rest))) with
the seed's ``blocks`` stream, one sub-stream per block, so it does not depend on
which block runs first.  A state_dict saved after that pass loads into a freshly
converted model (the buffer takes the saved tensor's shape).

Decisions (docs/blocks.md): one network at a time (ensembles are refused);
diagnostics measure every site's signal and update angle as for any converted
model, and the block matrices have no mirror (their ``feedback_angle`` is not
reported); ``blocks=`` is refused for every algorithm other than srbp.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch
import torch.nn as nn

from ..channel import feedback as fb
from ..channel.algorithm import Algorithm, algorithm as make_algorithm
from ..channel.noise import derive_seed
from ..errors import ConfigError, UnsupportedModelError

BUFFER = "skip_feedback"       # the block matrix C_k, a buffer of the block module


class _Deliver(torch.autograd.Function):
    """Forward: the model's output, unchanged.  Backward: g to the output, g @ C_k to every block output."""

    @staticmethod
    def forward(ctx, output, matrices, shared, *attached):
        ctx.matrices, ctx.shared = matrices, shared
        ctx.shapes = [a.shape for a in attached]
        return output.clone()

    @staticmethod
    def backward(ctx, g):
        rows = g.reshape(-1, g.shape[-1])
        if ctx.shared is not None:       # skip_projection "shared": one product, every block reads its first columns
            P = rows @ ctx.shared
            signals = [P[:, :C.shape[-1]].reshape(shape) for C, shape in zip(ctx.matrices, ctx.shapes)]
        else:
            signals = [(rows @ C).reshape(shape) for C, shape in zip(ctx.matrices, ctx.shapes)]
        return (g, None, None, *signals)


def _matches(pattern: str, name: str) -> bool:
    """``*`` stands for one component of a dotted module name (``layers.*`` is every child of ``layers``)."""
    p, n = pattern.split("."), name.split(".")
    return len(p) == len(n) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(n, p))


def resolve(model: nn.Module, patterns) -> list[tuple[str, nn.Module]]:
    """The modules named by ``patterns`` (names or ``*`` patterns), in registration order; one line per mistake."""
    named = [(n, m) for n, m in model.named_modules() if n]
    found = []
    for pat in patterns:
        hits = [(n, m) for n, m in named if _matches(pat, n)]
        if not hits:
            some = ", ".join(n for n, _ in named[:8]) + (", ..." if len(named) > 8 else "")
            raise ConfigError(f"blocks: the model has no module named {pat!r} (its modules: {some})")
        found += [h for h in hits if h not in found]
    order = {n: i for i, (n, _) in enumerate(named)}
    found.sort(key=lambda h: order[h[0]])
    names = [n for n, _ in found]
    for a in names:
        for b in names:
            if b.startswith(a + "."):
                raise ConfigError(f"blocks: {b!r} lies inside block {a!r}; name blocks that do not nest")
    return found


def inner_algorithm(alg: Algorithm) -> Algorithm:
    """The chained algorithm the sites run in block mode (``block_feedback``), with the options that carry over."""
    opts = dict(derivative=alg.derivative, loss_reduction=alg.loss_reduction, init_scale=alg.init_scale,
                weight_decay=alg.weight_decay)
    if alg.block_feedback == "rbp":
        opts.update(feedback=str(alg.feedback), feedback_scale=alg.feedback_scale)
    return make_algorithm(alg.block_feedback, **opts)


class BlockFeedback:
    """The block mode of one converted model: its blocks, their matrices and the hooks that deliver C_k E^L."""

    def __init__(self, alg: Algorithm, channel, blocks: list[tuple[str, nn.Module]], seed):
        self.algorithm = alg
        self.channel = channel
        self.names = [n for n, _ in blocks]
        self.modules = [m for _, m in blocks]
        self.seed = seed
        self._pending: list = []
        for m in self.modules:
            m.register_buffer(BUFFER, None)
            m._register_load_state_dict_pre_hook(_Materialize(m, channel))

    def active(self) -> bool:
        """False while the sites run by plain autograd (rbp.diagnostics' true-gradient pass)."""
        return self.channel.sites[-1].channel is not None

    def install(self, model: nn.Module):
        model.register_forward_pre_hook(self._begin)
        for m in self.modules:
            m.register_forward_hook(self._capture)
        model.register_forward_hook(self._deliver)

    def _begin(self, *_):
        self._pending = []

    def _capture(self, module, inputs, output):
        if not torch.is_grad_enabled() or not self.active():
            return None
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(f"block {self.names[self.modules.index(module)]!r} returns "
                                        f"{type(output).__name__}; a block's output must be one tensor")
        if not output.requires_grad:
            return None          # nothing below it learns
        self._pending.append((module, output))
        # the sites that computed this output feed something (the block's signal): none of them is an output site
        self.channel.current_pass().consume(output)
        return output.detach()

    def _deliver(self, model, inputs, output):
        pending, self._pending = self._pending, []
        if not pending:
            return None
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(f"srbp's block mode needs the model to return one tensor (the output "
                                        f"layer's), got {type(output).__name__}")
        if self.algorithm.skip_projection == "shared":
            matrices, shared = self.shared_matrices(pending, output)
        else:
            matrices, shared = [self.matrix(m, y, output) for m, y in pending], None
        return _Deliver.apply(output, matrices, shared, *[y for _, y in pending])

    def shared_matrices(self, pending, output):
        """``skip_projection='shared'``: one C as wide as the widest block output; block k's matrix is a view
        of its first columns.  Drawn at the first pass (the ``blocks`` stream's first sub-stream); matrices
        loaded from a state_dict become views again when they are such slices.  Returns (matrices, C), C
        None when the blocks' matrices are not slices of one matrix."""
        widths = [self.width(y, output, self.names[self.modules.index(m)]) for m, y in pending]
        held = [getattr(m, BUFFER) for m, _ in pending]
        n_top = output.shape[-1]
        if all(C is None for C in held):
            y = pending[0][1]
            base = self._draw(0, (n_top, max(widths)), dtype=y.dtype, device=y.device)
            for (m, _), w in zip(pending, widths):
                setattr(m, BUFFER, base[:, :w])
        elif any(C is None for C in held):
            raise ConfigError("skip_projection='shared': some blocks hold a matrix and others do not; load a "
                              "state_dict that has every block's matrix")
        matrices = [self.matrix(m, y, output) for m, y in pending]
        base = _common_base(matrices)
        if base is None:                 # separate tensors (loaded): views of the widest again, if they are its slices
            widest = max(matrices, key=lambda C: C.shape[-1])
            if all(torch.equal(C, widest[:, :C.shape[-1]]) for C in matrices):
                for (m, _), C in zip(pending, matrices):
                    setattr(m, BUFFER, widest[:, :C.shape[-1]])
                matrices = [self.matrix(m, y, output) for m, y in pending]
                base = _common_base(matrices)
        return matrices, base

    def width(self, y: torch.Tensor, output: torch.Tensor, name: str) -> int:
        lead = output.shape[:-1]
        if tuple(y.shape[:len(lead)]) != tuple(lead):
            raise UnsupportedModelError(f"block {name!r}: its output {tuple(y.shape)} does not start with the "
                                        f"leading dimensions {tuple(lead)} of the model's output, so the error "
                                        "cannot be projected onto it")
        return math.prod(y.shape[len(lead):])

    def matrix(self, module: nn.Module, y: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        k = self.modules.index(module)
        shape = (output.shape[-1], self.width(y, output, self.names[k]))
        C = getattr(module, BUFFER)
        if C is None:
            C = self._draw(k, shape, dtype=y.dtype, device=y.device)
            setattr(module, BUFFER, C)
        elif tuple(C.shape) != shape:
            raise ConfigError(f"block {self.names[k]!r}: its matrix {BUFFER} has shape {tuple(C.shape)} but this "
                              f"pass needs {shape} (model output size x the block output's size per example)")
        return C

    def _draw(self, k: int, shape, dtype, device) -> torch.Tensor:
        shared = self.algorithm.block_matrix == "shared"
        if shared and getattr(self, "_shared", None) is not None and tuple(self._shared.shape) == tuple(shape):
            return self._shared.clone().to(device)
        gen = None
        if self.seed is not None:
            # block_matrix "shared": every block draws block 0's matrix (one C for one residual stream)
            ss = np.random.SeedSequence(derive_seed(self.seed, "blocks"),
                                        spawn_key=(0 if self.algorithm.block_matrix == "shared" else k,))
            gen = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        C = fb.sample(self.algorithm.feedback, shape, chained=False, generator=gen, dtype=dtype)
        if self.algorithm.feedback_scale != 1.0:
            C.mul_(self.algorithm.feedback_scale)
        if shared:
            self._shared = C.clone()
        return C.to(device)


def _common_base(matrices):
    """The one matrix whose first columns all of ``matrices`` are (views), or None."""
    from ..channel.routes import _leading_slice_of
    bases = {id(b): b for b in (_leading_slice_of(C) for C in matrices)}
    if len(bases) != 1 or None in [_leading_slice_of(C) for C in matrices]:
        return None
    return next(iter(bases.values()))


class _Materialize:
    """load_state_dict pre-hook: a block matrix not drawn yet takes the saved tensor's shape (then it is copied in)."""

    def __init__(self, module, channel):
        self.module, self.channel = module, channel

    def __call__(self, state_dict, prefix, *_):
        key = prefix + BUFFER
        if key in state_dict and getattr(self.module, BUFFER) is None:
            saved, w = state_dict[key], self.channel.sites[-1].weight
            setattr(self.module, BUFFER, torch.empty(saved.shape, dtype=w.dtype, device=w.device))


def convert_blocks(model: nn.Module, alg: Algorithm, *, seed=None, member_algorithms=None, **kwargs) -> nn.Module:
    """``rbp.convert`` for srbp with ``blocks=`` (see the module docstring)."""
    from .convert import convert
    if member_algorithms is not None:
        raise ConfigError("srbp's block mode (blocks=) trains one network at a time: member_algorithms does not apply")
    model = convert(model, inner_algorithm(alg), seed=seed, **kwargs)
    channel = model.rbp_channel
    if channel.sites[0].ensemble:
        raise ConfigError("srbp's block mode (blocks=) trains one network at a time; convert each member alone")
    blocks = resolve(model, alg.blocks)
    top = channel.sites[-1]
    for name, mod in blocks:
        if any(m is top for m in mod.modules()):
            raise ConfigError(f"blocks: {name!r} contains the output layer, whose gradient stays exact; name "
                              "modules below it")
    bf = BlockFeedback(alg, channel, blocks, seed)
    bf.install(model)
    channel.blocks = bf
    channel.declared = alg           # what the user asked for; channel.algorithm is what the sites run
    return model
