"""``nn.Embedding`` as a site of the learning channel.

An embedding is a linear layer whose input is one-hot: the lookup of row v is
W^T e_v.  Seen that way the learning channel's local rule dW = I O^T needs only
the signal I arriving at the embedding's output: the update of row v is the sum
of the signals at the positions that looked v up (``index_add``), and no other
row moves.  The input is a tensor of indices, so nothing travels below an
embedding: it sends no signal, holds no feedback matrix (it is always a bottom
layer, like the first layer of an MLP), and every algorithm differs only in the
signal that reaches its output (docs/layers.md):

* bp, rbp, srbp, sbp, arbp, kp, ...: the same rule on the algorithm's signal;
  with one weight layer above the embedding, rbp and srbp deliver the same
  signal when their matrices agree, and so give the same update;
* ``top``: the embedding is a hidden layer and does not learn;
* quantized update (Eq. 19): each *sequence's* update of a row (the sum over the
  positions that looked it up, as a conv kernel's update sums its positions) is
  quantized before the minibatch mean;
* sign-only / magnitude-only updates: elementwise on the table's update, as for
  a linear layer on one-hot inputs (rows not looked up have a zero update and do
  not move; the sign-only step is the table's mean |dW|, zeros included);
* per-synapse feedback is refused by ``rbp.convert`` (it would need one N_L
  vector per entry of the table).

``padding_idx`` is kept: its row gets no update (as autograd gives it no
gradient).  ``scale_grad_by_freq`` divides each row's update by the number of
times the minibatch looked it up, as autograd does.  ``max_norm`` (the forward
pass rewrites the table) and ``sparse=True`` (sparse gradients) are refused.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channel.quantize import quantize
from ..errors import UnsupportedModelError
from .registry import SiteAdapter
from .site import Site, overrides_forward, shim


class FeedbackEmbedding(Site):
    """An ``nn.Embedding`` trained by the learning channel (parameter ``weight``, (V, D)).

    ``feedback`` is always ``None``: nothing travels below an embedding.
    """

    kind = "embedding"
    bias = None
    receives_feedback = False       # its input is indices: nothing travels below it

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, scale_grad_by_freq=False,
                 device=None, dtype=None):
        super().__init__()
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.scale_grad_by_freq = padding_idx, scale_grad_by_freq
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self._init_site_state()

    @property
    def out_features(self) -> int:
        return self.embedding_dim

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "FeedbackEmbedding":
        """A site sharing the ``weight`` Parameter of ``emb``; refuses what it cannot serve."""
        if emb.max_norm is not None:
            raise UnsupportedModelError(f"Embedding with max_norm={emb.max_norm}: the forward pass renormalises "
                                        "the table in place, which the learning channel does not model")
        if emb.sparse:
            raise UnsupportedModelError("Embedding with sparse=True: the learning channel gives dense updates")
        site = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.scale_grad_by_freq,
                   device=emb.weight.device, dtype=emb.weight.dtype)
        site.weight = emb.weight
        return site

    # ------------------------------------------------------------ the site algebra
    def affine(self, x, weight, bias=None):
        return F.embedding(x, weight, self.padding_idx)

    def rows(self, g) -> int:
        """Lookups in the batch (the embedding's outputs, as a linear site counts rows)."""
        return g.numel() // g.shape[-1]

    def _finish(self, gW, x):
        """No update of the padding row; ``scale_grad_by_freq``: each row's update / its count in the batch."""
        if self.padding_idx is not None:
            gW[self.padding_idx] = 0
        if self.scale_grad_by_freq:
            counts = torch.bincount(x.reshape(-1), minlength=self.num_embeddings)
            gW.div_(counts.clamp(min=1).unsqueeze(1).to(gW.dtype))
        return gW

    def grad_weight(self, g, x):
        """dW = I O^T with one-hot O: row v gets the sum of the signals at the positions that looked v up."""
        D = self.embedding_dim
        gW = g.new_zeros(self.num_embeddings, D).index_add_(0, x.reshape(-1), g.reshape(-1, D))
        return self._finish(gW, x)

    def grad_bias(self, g):
        return None

    def per_example_update(self, g, x, alpha, bits, scale, flush=False):
        """(1/scale) sum_n Q(scale * dW_n), dW_n the update of example (sequence) n, rows summed over its positions.

        Only the rows example n looked up are nonzero in dW_n, and Q(0) = 0, so the
        sum runs over the distinct (example, row) pairs.
        """
        B, V, D = x.shape[0], self.num_embeddings, self.embedding_dim
        idx = x.reshape(B, -1)
        key = (torch.arange(B, device=x.device).unsqueeze(1) * V + idx).reshape(-1)
        pairs, which = torch.unique(key, return_inverse=True)
        per = g.new_zeros(pairs.numel(), D).index_add_(0, which, g.reshape(-1, D) * scale)
        gW = g.new_zeros(V, D).index_add_(0, pairs % V, quantize(per, alpha, bits, flush)).div_(scale)
        return self._finish(gW, x), None

    def _sends_nothing(self, *_, **__):
        raise RuntimeError("an embedding's input is indices: the learning channel sends nothing below it")

    # nothing travels below an embedding: rbp.convert gives it no feedback, and its input needs no signal
    grad_input = skip = grad_skip = per_synapse_update = sample_feedback = _sends_nothing

    def chained_feedback_shape(self):
        return None

    def skip_width(self):
        return None

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        freq = ", scale_grad_by_freq=True" if self.scale_grad_by_freq else ""
        alg = f", algorithm={self.channel.algorithm.describe()}" if self.channel is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}{freq}{alg}"


class EmbeddingAdapter(SiteAdapter):
    """``nn.Embedding`` -> :class:`FeedbackEmbedding` (a bottom layer: it holds no feedback)."""

    name = "embedding"

    def refuse(self, module):
        if module.max_norm is not None:
            return f"max_norm={module.max_norm}: the forward pass renormalises the table in place, which the " \
                   "learning channel does not model"
        if module.sparse:
            return "sparse=True: the learning channel gives dense updates"
        return None

    def check(self, alg, name, module, context):
        from ..errors import ConfigError
        if alg.feedback.per_synapse and alg.random_feedback:
            raise ConfigError(f"feedback 'per-synapse' is not defined for an Embedding ({name or 'model'}): it "
                              "would need one error vector per entry of the table, and the per-synapse rule is "
                              "stated for dense layers of an MLP")
        if context.ensemble:
            raise UnsupportedModelError(f"Embedding ({name}) in an ensemble model: one table would be shared by "
                                        f"the {context.ensemble} members and rbp has no stacked embedding; train "
                                        "the members one by one")

    def build(self, module, info):
        if overrides_forward(module, nn.Embedding):   # HF's scaled / positional embeddings keep their forward
            return shim(module, nn.Embedding, FeedbackEmbedding)
        return FeedbackEmbedding.from_embedding(module)

    def out_width(self, module):
        return module.embedding_dim


EMBEDDING = EmbeddingAdapter()
