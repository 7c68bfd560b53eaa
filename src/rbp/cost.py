"""Cost of the learning channel: multiplications per example (paper 1, section 3.1, Eqs. 14-15).

For a fully connected network A(N_0, N_1, ..., N_L) (N_0 inputs, N_L outputs)
the paper counts the multiplications of a synaptic weight by a signal in the
backward pass:

* BP and RBP (Eq. 14): ~ W = sum_{k=0}^{L-1} N_k N_{k+1}, the number of weights;
* SRBP (Eq. 15):        ~ N_L * sum_{k=1}^{L-1} N_k.

Counted exactly (what :func:`cost` returns as ``channel``), the learning
channel delivers a signal to every *hidden* layer h = 1..L-1 and to nothing
else: the output layer's signal is the error E^L itself, and the input layer
(k = 0) needs no backward signal because nothing below it learns.  So

* chained routes (BP, RBP, ARBP) and SBP: the signal of layer h is an
  (N_h x N_{h+1}) matrix times the signal of layer h+1, hence
  ``channel = sum_{k=1}^{L-1} N_k N_{k+1}`` = W - N_0 N_1.  The paper's W
  includes N_0 N_1 (it speaks of the bulk scaling, O(W)); we report both.
  SBP is evaluated right to left, one matrix-vector product per layer, the
  same count as BP.
* the skipped route (SRBP, ASRBP): layer h receives C^h E^L, an (N_h x N_L)
  matrix times the error, hence ``channel = N_L sum_{k=1}^{L-1} N_k``
  (exactly Eq. 15).
* top layer only: 0.
* a distinct backward network (paper 2's ``distinct`` family, ``backward_hidden``
  = (b_1, ..., b_m), b_0 = N_L): its own layers D^k = g(V^k D^{k-1}) cost
  sum_{k=1}^{m} b_{k-1} b_k, and forward hidden layer h reads layer
  k(h) = min(L - h, m) of it through a projection C^h of b_{k(h)} x N_h weights
  (the engine's wiring, ``rbp.channel.backward.distinct_source``): the top
  hidden layer reads D^1, the one below D^2, and every layer further down D^m.
  So ``channel = sum_k b_{k-1} b_k + sum_{h=1}^{L-1} b_{k(h)} N_h``; only the
  projections C^h adapt (``adaptation``), the V^k are fixed.

Reported beside it, so that the whole cost of learning is visible:
``derivative`` (sum_{h=1}^{L-1} N_h multiplications by f'(S^h); 0 for the
"no f'" variants), ``adaptation`` (the outer products that update adaptive
feedback matrices: the size of those matrices), ``update`` (the forward weight
updates eta I^h (O^{h-1})^T, one multiplication per learning weight; the same
for every algorithm except top-layer-only and frozen layers) and ``forward``
(W, the forward pass).  Biases, sums and the learning rate are left out, as in
the paper: they do not change the scaling.

The wider family (docs/family.md) adds work that is done once per training
*step*, not per example, and is reported apart (``per_step``):

* weight mirrors (``wm``): each mirror step drives every feedback matrix
  (out x in) with ``mirror_batch`` noise vectors, y = W x and then the
  correlation y x^T: 2 * mirror_batch * (size of the feedback matrices);
* sign-concordant feedback that follows W (usf, brsf, frsf, ``sign-concordant``):
  one multiplication per feedback entry to give it the current sign of W (brSF
  also draws that many random numbers).

Kolen-Pollack (``kp``) is adaptive: its adaptation is counted as ARBP's (the
same outer product); its weight decay is one multiplication per weight and
feedback entry per step, left out like the learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

from .channel.algorithm import Algorithm, algorithm as make_algorithm
from .channel.routes import route_of
from .errors import ConfigError

MNIST_SIZES = (784, 100, 100, 100, 100, 10)


def _sizes(sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"sizes must be at least two positive integers (input, ..., output), got {sizes}")
    return sizes


def cost(sizes: Sequence[int] = MNIST_SIZES, algorithm: str | Algorithm = "bp", frozen: Sequence[int] = ()) -> dict:
    """Multiplications per training example for a network ``sizes`` = (N_0, ..., N_L).

    ``frozen`` are 1-based weight layers that do not learn (their updates are
    not counted; the channel still carries signals through them).
    """
    N = _sizes(sizes)
    alg = algorithm if isinstance(algorithm, Algorithm) else make_algorithm(algorithm)
    L = len(N) - 1
    hidden = N[1:L]
    weights = sum(N[k] * N[k + 1] for k in range(L))                # Eq. 14 (paper's W)
    skip = N[L] * sum(hidden)                                       # Eq. 15
    route = route_of(alg)
    channel, adapted = route.channel_cost(N)
    derivative = sum(hidden) if alg.derivative and route.carries else 0
    adaptation = adapted if alg.adaptive else 0
    learning = set(range(1, L + 1)) if alg.hidden_learn else {L}
    learning -= set(frozen)
    update = sum(N[h - 1] * N[h] for h in learning)
    per_step = 0
    if alg.mirror_rate:
        per_step += 2 * alg.mirror_batch * adapted
    if alg.random_feedback and alg.feedback.follows_forward:
        per_step += adapted
    return {
        "sizes": N, "algorithm": alg.describe(), "route": alg.route, "per_step": per_step,
        "channel": channel, "derivative": derivative, "adaptation": adaptation,
        "learning_channel_total": channel + derivative + adaptation,
        "update": update, "forward": weights,
        "paper_W_eq14": weights, "paper_srbp_eq15": skip,
    }


PAPER1 = ("bp", "sbp", "rbp", "srbp", "arbp", "asrbp", "top")


def compare(sizes: Sequence[int] = MNIST_SIZES, names: Sequence[str] = PAPER1) -> list[dict]:
    """:func:`cost` for several algorithms on the same network."""
    return [cost(sizes, n) for n in names]


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`cost` results."""
    head = ("algorithm", "channel", "f'", "adapt", "channel total", "update", "forward")
    keys = ("algorithm", "channel", "derivative", "adaptation", "learning_channel_total", "update", "forward")
    if any(r.get("per_step") for r in rows):   # weight mirrors, sign-following feedback: once per step
        head, keys = head + ("per step",), keys + ("per_step",)
    cells = [head] + [tuple(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(head)))
             for c in cells]
    return "\n".join(lines)
