"""Multi-head attention in the learning channel (docs/transformers.md).

:class:`FeedbackMultiheadAttention` is an ``nn.MultiheadAttention`` (a subclass,
so torch's transformer layers accept it) whose input projections are sites of
the learning channel.  Its output projection ``out_proj`` is an ``nn.Linear``
and becomes an ordinary :class:`~rbp.nn.layers.FeedbackLinear` site under the
same name.  Everything between the projections (scores, softmax, dropout, the
weighted sum of the values, ``bias_k``/``bias_v``, ``add_zero_attn``) is
structural: autograd's backward carries the channel's signal through it.

The module keeps every parameter of ``nn.MultiheadAttention`` under its own
name; the projection sites own no parameters.  A :class:`ProjectionSite` is a
small object that reads its weight, bias and feedback from the module (slices
of ``in_proj_weight`` / ``in_proj_bias`` where needed) and supplies the linear
site algebra (:class:`~rbp.nn.layers.LinearOps`), so ``site_backward`` serves it
like any linear layer.

Which projection sites run depends on the call, as in torch:

* packed weights (``in_proj_weight``), ``query is key is value``: one site, one
  matmul x -> [q; k; v];
* packed weights, ``key is value`` (encoder-decoder attention): a q site on
  rows 0..E of ``in_proj_weight`` (input: the query) and a kv site on rows
  E..3E (input: the memory);
* packed weights, three different tensors: q, k and v sites on the three
  row blocks;
* separate weights (``kdim``/``vdim`` differ from ``embed_dim``): q, k and v
  sites on ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``.

Feedback tensors, registered on the module:

* chained routes (RBP, ARBP, sign-concordant, ...): ``in_proj_feedback`` of
  ``in_proj_weight``'s shape (3E, E), or ``q_proj_feedback``,
  ``k_proj_feedback``, ``v_proj_feedback`` of the separate weights' shapes; a
  site on a block of rows uses the same rows of the feedback;
* the skipped route (SRBP, ASRBP, distinct networks): one matrix
  (N_L, input width) per weight tensor, under the same names; every input of
  that weight reads it (in encoder-decoder attention the query and the memory
  both receive C E^L with the same C).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channel.routes import route_of
from ..errors import ConfigError, UnsupportedModelError
from .layers import LinearOps
from .registry import SiteAdapter
from .site import ModuleView, install

# torch modules that only hold attention and linear layers and call them; convert walks through them
TRANSFORMER_CONTAINERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
                          nn.TransformerDecoder, nn.Transformer)
ATTENTION = (nn.MultiheadAttention,)
_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class ProjectionSite(LinearOps, ModuleView):
    """One input projection of an attention module, as a linear site.

    ``weight_name``: the module's parameter (``in_proj_weight``, ``q_proj_weight``...);
    ``rows``: a block of its rows (None = all of them); ``bias_rows``: the block
    of ``in_proj_bias`` this projection adds; ``feedback_name``: where its
    feedback tensor lives on the module.  The object holds no tensors itself.
    """

    ensemble = None
    kind = "attention"

    def __init__(self, owner, weight_name: str, rows: slice | None, bias_rows: slice | None, feedback_name: str,
                 whole: "ProjectionSite | None" = None):
        self._owner = owner
        self._whole = whole            # the site of the whole weight, for a block of its rows
        self._lazy_feedback = None
        self.weight_name, self.row_block, self.bias_rows, self.feedback_name = weight_name, rows, bias_rows, feedback_name
        w = getattr(owner, weight_name)
        self.in_features = w.shape[1]
        self.out_features = w.shape[0] if rows is None else len(range(*rows.indices(w.shape[0])))

    # the site contract (channel/backward.py): tensors read off the module (ModuleView) -----------
    @property
    def weight(self):
        w = getattr(self._owner, self.weight_name)
        return w if self.row_block is None else w[self.row_block]

    @property
    def bias(self):
        b = self._owner.in_proj_bias
        return None if b is None else b[self.bias_rows]

    @property
    def feedback(self):
        f = getattr(self._owner, self.feedback_name, None)
        if f is None or self.row_block is None or not route_of(self._owner.channel.algorithm).chained:
            return f
        return f[self.row_block]

    def set_feedback(self, tensor: torch.Tensor | None, adaptive: bool):
        """Install the feedback tensor of this projection's weight on the module (whole weight only)."""
        if self.row_block is not None:
            raise RuntimeError("feedback is installed on the whole projection weight, not on a block of its rows")
        install(self._owner, self.feedback_name, tensor, adaptive)

    def block(self, rows: slice) -> "ProjectionSite":
        """The site of a block of this weight's rows (q, or k and v, of a packed projection)."""
        start = 0 if self.bias_rows is None else (self.bias_rows.start or 0)
        return ProjectionSite(self._owner, self.weight_name, rows,
                              slice(start + rows.start, start + rows.stop), self.feedback_name, whole=self)

    def chained_feedback_shape(self):
        return (self.out_features, self.in_features)

    def skip_width(self):
        return self.in_features

    def __call__(self, x):
        """The projection of ``x``, with the learning channel as its backward."""
        (self._whole or self).materialize(x)
        return self.site_call(x, self.weight, self.bias, self.feedback)

    def __repr__(self):
        rows = "" if self.row_block is None else f"[{self.row_block.start}:{self.row_block.stop}]"
        return f"ProjectionSite({self.weight_name}{rows}, in={self.in_features}, out={self.out_features})"


class FeedbackMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose input projections are learning-channel sites.

    Build it with :meth:`from_attention` (``rbp.convert`` does).  Without a
    channel, or without gradients (inference; torch's fast path included), the
    forward pass is ``nn.MultiheadAttention.forward`` itself.
    """

    channel = None

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> "FeedbackMultiheadAttention":
        """The same module (same parameter objects and names) with projection sites."""
        new = cls.__new__(cls)
        new.__dict__.update(mha.__dict__)
        for store in ("_parameters", "_buffers", "_modules"):
            new.__dict__[store] = type(mha.__dict__[store])(mha.__dict__[store])
        new.channel = None
        E = new.embed_dim
        if new._qkv_same_embed_dim:
            packed = ProjectionSite(new, "in_proj_weight", None, slice(0, 3 * E), "in_proj_feedback")
            new._rbp_sites = [packed]
            new._rbp_blocks = {"q": packed.block(slice(0, E)), "kv": packed.block(slice(E, 3 * E)),
                               "k": packed.block(slice(E, 2 * E)), "v": packed.block(slice(2 * E, 3 * E))}
        else:
            new._rbp_sites = [ProjectionSite(new, f"{p}_proj_weight", None, slice(i * E, (i + 1) * E),
                                             f"{p}_proj_feedback") for i, p in enumerate("qkv")]
        for s in new._rbp_sites:
            new.register_buffer(s.feedback_name, None)
        return new

    def sites(self) -> list:
        """The projection sites that hold this module's feedback (in the channel's site list)."""
        return list(self._rbp_sites)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.channel is None or not torch.is_grad_enabled():
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if query.is_nested or key.is_nested or value.is_nested:
            raise UnsupportedModelError("nested tensors reach nn.MultiheadAttention only on torch's inference fast "
                                        "path; the learning channel needs padded tensors and key_padding_mask")
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        return self._attend(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                            is_causal, is_batched)

    # ------------------------------------------------------------------------------------------
    def _project(self, query, key, value):
        """q, k, v in the caller's layout, computed by the projection sites (see the module docstring)."""
        E = self.embed_dim
        if not self._qkv_same_embed_dim:
            q_site, k_site, v_site = self._rbp_sites
            return q_site(query), k_site(key), v_site(value)
        if query is key and key is value:
            proj = self._rbp_sites[0](query)
            return proj[..., :E], proj[..., E:2 * E], proj[..., 2 * E:]
        blocks = self._rbp_blocks
        q = blocks["q"](query)
        if key is value:
            kv = blocks["kv"](key)
            return q, kv[..., :E], kv[..., E:]
        return q, blocks["k"](key), blocks["v"](value)

    def _attend(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                is_causal, is_batched):
        """F.multi_head_attention_forward with the projections as sites.

        The in-projections run in the caller's layout (batch-first or not), so a
        per-token error and each site's input share their leading dimensions.
        """
        H, E = self.num_heads, self.embed_dim
        F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, H)
        if not is_batched:   # unbatched: a batch of one (torch's layout, batch_first or not)
            query, key, value = self._unsqueeze_same(query, key, value, 1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        batch_first = self.batch_first and is_batched
        if batch_first:
            bsz, tgt_len, embed_dim = query.shape
            src_len = key.shape[1]
        else:
            tgt_len, bsz, embed_dim = query.shape
            src_len = key.shape[0]
        if embed_dim != E:
            raise AssertionError(f"was expecting embedding dimension of {E}, but got {embed_dim}")
        if self._qkv_same_embed_dim and key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None      # SDPA takes the causal hint itself
        elif key_padding_mask is not None:
            is_causal = False     # the merged mask is no longer causal
        head_dim = E // H

        q, k, v = self._project(query, key, value)
        if batch_first:           # (B, T, E) -> (T, B, E), torch's internal layout
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(tgt_len, src_len)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if attn_mask.shape != (bsz * H, tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(bsz * H, tgt_len, src_len)}.")
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        q = q.reshape(tgt_len, bsz * H, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * H, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * H, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * H, 1, head_dim), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.size(1)
        if key_padding_mask is not None:
            F._check_key_padding_mask(key_padding_mask, src_len, bsz)
            key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, H, -1, -1)
                                .reshape(bsz * H, 1, src_len))
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(head_dim))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = torch.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v)                        # (B*H, T, hd)
            out = out.view(bsz, H, tgt_len, head_dim)
            weights = weights.view(bsz, H, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, H, -1, src_len)
            q = q.view(bsz, H, tgt_len, head_dim)
            k = k.view(bsz, H, src_len, head_dim)
            v = v.view(bsz, H, src_len, head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
            weights = None
        # back to the caller's layout for the output projection (a site on per-token rows)
        if batch_first:
            out = out.permute(0, 2, 1, 3).reshape(bsz, tgt_len, E)
        else:
            out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, E)
        out = self.out_proj(out)
        if batch_first:   # torch's memory layout (seq-major), so that a dropout after it draws torch's mask
            out = out.transpose(0, 1).contiguous().transpose(0, 1)
        if not is_batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights

    @staticmethod
    def _unsqueeze_same(query, key, value, dim):
        """Unsqueeze the three inputs, keeping ``is`` identities (they choose the projection sites)."""
        q = query.unsqueeze(dim)
        k = q if key is query else key.unsqueeze(dim)
        v = k if value is key else (q if value is query else value.unsqueeze(dim))
        return q, k, v

    def extra_repr(self):
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}{alg}"


def convert_attention(mha: nn.MultiheadAttention) -> FeedbackMultiheadAttention:
    """The converted module for ``rbp.convert`` (its ``out_proj`` is converted as a linear layer)."""
    return FeedbackMultiheadAttention.from_attention(mha)


def check(alg, model: nn.Module, layers) -> None:
    """Refuse, one line each, what the learning channel does not define for attention."""
    attn = [(n, m) for n, m in layers if isinstance(m, ATTENTION)]
    if not attn:
        return
    where = attn[0][0] or "model"
    ens = [n for n, m in layers if getattr(m, "ensemble", None)]
    if ens:
        raise UnsupportedModelError(f"nn.MultiheadAttention ({where}) has no ensemble form: convert one network "
                                    f"per seed (ensemble layer: {ens[0]})")
    route = route_of(alg)
    if route.matrices_only:
        raise ConfigError(f"{alg.name} is not supported with nn.MultiheadAttention ({where}): its product route "
                          "(SBP, twin network) passes the signal through transposed forward matrices without "
                          "derivatives, and attention's scores are a nonlinear function of q and k with no "
                          "forward matrix to transpose (use bp, rbp, srbp or their variants)")
    if alg.random_feedback and alg.feedback.per_synapse:
        raise ConfigError(f"feedback 'per-synapse' is not supported with nn.MultiheadAttention ({where}): its "
                          "packed projection is read by several inputs, so a synapse has no single presynaptic unit")
    if route.follows_forward_product:
        raise ConfigError(f"feedback {alg.feedback.kind!r} with {alg.name} needs the product of the forward "
                          f"matrices above each layer, which is not defined across attention ({where})")
    if not alg.derivative:
        for name, mod in model.named_modules():
            if isinstance(mod, _TRANSFORMER_LAYERS) and not isinstance(mod.activation, nn.Module):
                raise ConfigError(f"derivative=False ('no f'') cannot reach the activation of {name or 'model'} "
                                  f"({type(mod).__name__}): it is the function {_fname(mod.activation)}, not a "
                                  "module; build the layer with activation=nn.ReLU() (or another module)")


def _fname(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def functional_units(model: nn.Module) -> tuple[set, set]:
    """Transfer functions of transformer layers given as functions (F.relu): (known names, unknown names)."""
    known, unknown = set(), set()
    names = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "logistic"}
    for mod in model.modules():
        if isinstance(mod, _TRANSFORMER_LAYERS) and not isinstance(mod.activation, nn.Module):
            n = names.get(mod.activation)
            (known.add(n) if n else unknown.add(_fname(mod.activation)))
    return known, unknown


class AttentionAdapter(SiteAdapter):
    """``nn.MultiheadAttention`` -> :class:`FeedbackMultiheadAttention`: its input projections are sites; its
    ``out_proj`` (an ``nn.Linear`` child) is classified on its own, as a linear site."""

    name = "attention"
    claims_children = True

    def check(self, alg, name, module, context):
        check(alg, context.model, context.layers)

    def build(self, module, info):
        return convert_attention(module)

    def sites(self, built):
        return built.sites()

    def out_width(self, module):
        return module.embed_dim


ATTENTION_ADAPTER = AttentionAdapter()
