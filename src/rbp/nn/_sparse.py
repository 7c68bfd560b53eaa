"""Compiled CPU kernels for a linear layer whose input is mostly exact zeros.

MNIST images are four fifths black pixels, and the first layer of the paper's
784-100-100-100-100-10 network holds 78,400 of its 109,400 weights, so a dense
matrix product spends most of the network's forward pass and weight-gradient
work multiplying zeros.  These kernels compute the first layer's two products
over the nonzero inputs, while keeping every loaded number in use for several
multiply-adds (a sparse product that loads a weight row per nonzero pixel is
no faster than the dense one here: measured in docs/performance.md):

* forward ``x W^T + b``: examples are taken two at a time and the pixels
  nonzero in either are listed (29 % of MNIST pixels); for each pixel of the
  list, a 48-wide block of the transposed weight row is loaded once and
  multiply-added into both examples' outputs, held in registers;
* weight gradient ``g^T x``: pixels are taken eight at a time (one vector) and
  the examples where any of them is nonzero are listed (39 %); for each,
  the eight inputs are loaded once and multiply-added, with 12 broadcast
  error components, into a 12 x 8 block of the gradient held in registers.

Every output number is one thread's sum over pixels (forward) or examples
(gradient) in ascending order; the zero terms the lists skip or include add
exactly nothing.  So results do not depend on the thread count, on an
example's partner, or on how many ensemble members are computed together:
member k of an ensemble gets exactly the numbers it gets alone.  They differ
from the dense product (another summation order) by float rounding only.

:class:`rbp.nn.layers.LinearOps` calls these when the layer's
``sparse_input`` flag is set (the trainer sets it on the first layer when the
training inputs are mostly zeros) and the tensors are float32 on the CPU.
"""

from __future__ import annotations

import ctypes
import threading

import torch

from . import _native

#: inputs with at most this fraction of nonzero entries use the kernels (MNIST: 0.19)
DENSITY_LIMIT = 0.35

_SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32), aligned(4)));   /* unaligned loads and stores */

static inline v8 bc(float a) { v8 r = {a, a, a, a, a, a, a, a}; return r; }

/* whether any of p[0 .. 8) is nonzero (NaN counts as nonzero) */
static inline int any_nonzero8(const float *p) {
#if defined(__AVX__)
    return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0;
#else
    int m = 0;
    for (int j = 0; j < 8; ++j) m |= p[j] != 0.0f;
    return m;
#endif
}

/* a fixed-order sum of the 8 lanes */
static inline float hsum(v8 a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* ---- forward: two examples x TO outputs, vectors along the inputs, over the 8-input blocks where
   either example is nonzero; lane j of an accumulator sums the inputs i = j mod 8 ---- */
#define FWD(TO)                                                                          \
    static inline void fwd##TO(int cnt, const int *blk, const float *x0, const float *x1, \
                               const float *w, long I, float *s0, float *s1) {           \
        v8 a0[TO], a1[TO];                                                               \
        for (int o = 0; o < TO; ++o) { a0[o] = bc(0.0f); a1[o] = bc(0.0f); }             \
        for (int t = 0; t < cnt; ++t) {                                                  \
            const long i = blk[t];                                                       \
            const v8 u0 = *(const v8 *)(x0 + i), u1 = *(const v8 *)(x1 + i);             \
            for (int o = 0; o < TO; ++o) {                                               \
                const v8 wv = *(const v8 *)(w + o * I + i);                              \
                a0[o] += u0 * wv;                                                        \
                a1[o] += u1 * wv;                                                        \
            }                                                                            \
        }                                                                                \
        for (int o = 0; o < TO; ++o) { s0[o] = hsum(a0[o]); s1[o] = hsum(a1[o]); }       \
    }
FWD(1) FWD(2) FWD(3) FWD(4) FWD(5) FWD(6)
typedef void (*fwd_fn)(int, const int *, const float *, const float *, const float *, long, float *, float *);
static const fwd_fn FWD_BY_WIDTH[7] = {0, fwd1, fwd2, fwd3, fwd4, fwd5, fwd6};

/*
 * out[k, n, o] = bias[k, o] + sum_i x[k, n, i] w[k, o, i]
 * x (K, N, I); w (K, O, I); bias (K, O) or NULL; out (K, N, O).
 * scratch: K * (N + 1) * J floats, J = 8 ceil(I / 8): the inputs padded with zeros to whole blocks.
 * Work is split over (member, block of 6 outputs); every task runs over all pairs of examples,
 * so its weights stay in the L1 cache.
 */
void rbp_sparse_affine(int K, int N, int I, int O, const float *x, const float *w, const float *bias,
                       float *out, float *scratch, int nthreads) {
    const int J = (I + 7) / 8 * 8, pairs = (N + 1) / 2, oblocks = (O + 5) / 6;
    const float *xp = x;
    long ldx = I;
    if (J != I) {                                    /* pad the rows to whole blocks (and a zero row) */
        for (long r = 0; r < (long)K * (N + 1); ++r)
            for (int i = 0; i < J; ++i)
                scratch[r * J + i] = (r % (N + 1) < N && i < I) ? x[(r / (N + 1) * N + r % (N + 1)) * (long)I + i] : 0.0f;
        xp = scratch;
        ldx = J;
    }
    const long ldm = J != I ? (long)(N + 1) * J : (long)N * I;   /* member stride in xp */
    /* the weights must be read in whole blocks too: padded copy when I is not a multiple of 8 */
    const float *wp = w;
    long ldw = I;
    float *wpad = 0;
    if (J != I) {
        wpad = (float *)malloc(sizeof(float) * (size_t)K * O * J);
        for (long r = 0; r < (long)K * O; ++r)
            for (int i = 0; i < J; ++i) wpad[r * J + i] = i < I ? w[r * I + i] : 0.0f;
        wp = wpad;
        ldw = J;
    }
    /* for every pair of examples, the blocks of 8 inputs where either is nonzero */
    int *lists = (int *)malloc(sizeof(int) * ((size_t)K * pairs * (J / 8) + 1));
    int *counts = (int *)malloc(sizeof(int) * ((size_t)K * pairs + 1));
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef _OPENMP
        #pragma omp for schedule(static)
#endif
        for (long kp = 0; kp < (long)K * pairs; ++kp) {
            const long k = kp / pairs, n = kp % pairs * 2;
            const float *r0 = xp + k * ldm + n * ldx;
            const float *r1 = n + 1 < N ? r0 + ldx : r0;
            int *l = lists + kp * (J / 8), c = 0;
            for (int i = 0; i < J; i += 8) {
                l[c] = i;
                c += any_nonzero8(r0 + i) | any_nonzero8(r1 + i);
            }
            counts[kp] = c;
        }
#ifdef _OPENMP
        #pragma omp for schedule(static)
#endif
        for (long task = 0; task < (long)K * oblocks; ++task) {
            const long k = task / oblocks;
            const int o0 = (int)(task % oblocks) * 6, to = O - o0 < 6 ? O - o0 : 6;
            const float *wk = wp + (k * O + o0) * ldw;
            const float *bk = bias ? bias + k * O + o0 : 0;
            float s0[6], s1[6];
            for (int q = 0; q < pairs; ++q) {
                const long n = 2L * q;
                const float *r0 = xp + k * ldm + n * ldx;
                const float *r1 = n + 1 < N ? r0 + ldx : r0;
                const int cnt = counts[k * pairs + q];
                const int *l = lists + (k * pairs + q) * (J / 8);
                FWD_BY_WIDTH[to](cnt, l, r0, r1, wk, ldw, s0, s1);
                float *d0 = out + (k * N + n) * O + o0;
                for (int o = 0; o < to; ++o) d0[o] = bk ? bk[o] + s0[o] : s0[o];
                if (n + 1 < N)
                    for (int o = 0; o < to; ++o) d0[O + o] = bk ? bk[o] + s1[o] : s1[o];
            }
        }
    }
    free(lists);
    free(counts);
    free(wpad);
}

/* ---- weight gradient: TO outputs x 8 pixels, over the examples where any of the 8 is nonzero ---- */
#define GRD(TO)                                                                          \
    static inline void grd##TO(int cnt, const int *ex, const float *xs, long ldx,        \
                               const float *g, long O, float *dst, long ldd) {           \
        v8 a[TO];                                                                        \
        for (int o = 0; o < TO; ++o) a[o] = bc(0.0f);                                    \
        for (int t = 0; t < cnt; ++t) {                                                  \
            const long n = ex[t];                                                        \
            const v8 xv = *(const v8 *)(xs + n * ldx);                                   \
            const float *gn = g + n * O;                                                 \
            for (int o = 0; o < TO; ++o) a[o] += bc(gn[o]) * xv;                         \
        }                                                                                \
        for (int o = 0; o < TO; ++o) *(v8 *)(dst + o * ldd) = a[o];                      \
    }
GRD(1) GRD(2) GRD(3) GRD(4) GRD(5) GRD(6) GRD(7) GRD(8) GRD(9) GRD(10) GRD(11) GRD(12)
typedef void (*grd_fn)(int, const int *, const float *, long, const float *, long, float *, long);
static const grd_fn GRD_BY_WIDTH[13] = {0, grd1, grd2, grd3, grd4, grd5, grd6, grd7, grd8, grd9, grd10, grd11, grd12};

/*
 * gw[k, o, i] = sum_n g[k, n, o] x[k, n, i]
 * x (K, N, I); g (K, N, O); gw (K, O, I).
 */
void rbp_sparse_grad_weight(int K, int N, int I, int O, const float *x, const float *g, float *gw,
                            int nthreads) {
    const int blocks = (I + 7) / 8;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        int *ex = (int *)malloc(sizeof(int) * (size_t)(N + 1));
        float *tail = (float *)malloc(sizeof(float) * 8 * (size_t)(N + 1));
        float acc[12 * 8];
#ifdef _OPENMP
        #pragma omp for schedule(static)
#endif
        for (long task = 0; task < (long)K * blocks; ++task) {
            const int k = (int)(task / blocks), i0 = (int)(task % blocks) * 8;
            const float *xk = x + (long)k * N * I, *gk = g + (long)k * N * O;
            const int width = I - i0 < 8 ? I - i0 : 8;
            const float *xs = xk + i0;
            long ldx = I;
            if (width < 8) {                                 /* last, partial block: a padded copy */
                for (int n = 0; n < N; ++n)
                    for (int j = 0; j < 8; ++j) tail[n * 8 + j] = j < width ? xk[(long)n * I + i0 + j] : 0.0f;
                xs = tail;
                ldx = 8;
            }
            int cnt = 0;
            for (int n = 0; n < N; ++n) {
                ex[cnt] = n;
                cnt += any_nonzero8(xs + (long)n * ldx);
            }
            /* full blocks store straight into gw's rows; the partial last block goes through acc */
            float *dst = width == 8 ? gw + (long)k * O * I + i0 : acc;
            const long ldd = width == 8 ? I : 8;
            for (int o0 = 0; o0 < O; o0 += 12) {
                const int to = O - o0 < 12 ? O - o0 : 12;
                const float *go = gk + o0;
                float *d = width == 8 ? dst + (long)o0 * I : acc;
                GRD_BY_WIDTH[to](cnt, ex, xs, ldx, go, O, d, ldd);
                if (width < 8)
                    for (int o = 0; o < to; ++o)
                        for (int j = 0; j < width; ++j) gw[((long)k * O + o0 + o) * I + i0 + j] = acc[8 * o + j];
            }
        }
        free(ex);
        free(tail);
    }
}
"""

_state: dict = {}


def load():
    """The compiled kernels (a dict), or ``None`` where they cannot be had (then the dense products are used)."""
    if "lib" not in _state:
        p, i = ctypes.c_void_p, ctypes.c_int
        _state["lib"] = _native.functions("sparse", _SOURCE, {
            "rbp_sparse_affine": ([i, i, i, i, p, p, p, p, p, i], None),
            "rbp_sparse_grad_weight": ([i, i, i, i, p, p, p, i], None)})
    return _state["lib"]


applicable = _native.applicable


_local = threading.local()


def _scratch(n: int) -> torch.Tensor:
    """A float32 work buffer of at least ``n`` numbers, kept per thread between calls."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _local.buf = torch.empty(n, dtype=torch.float32)
    return buf


def _threads() -> int:
    return max(1, torch.get_num_threads())


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ensemble: bool):
    """``x W^T + b`` summed over the nonzero entries of ``x``, or ``None`` without the kernel.

    Single network: x (..., I), W (O, I), b (O,).  Ensemble: x (K, ..., I), W (K, O, I), b (K, O).
    """
    lib = load()
    if lib is None or not applicable(x, weight, bias):
        return None
    K = weight.shape[0] if ensemble else 1
    O, I = weight.shape[-2], weight.shape[-1]
    if x.dim() == 0 or x.shape[-1] != I or weight.dim() != (3 if ensemble else 2) or x.numel() % (K * I):
        return None                     # let the dense product report the mismatch
    x3 = x.reshape(K, -1, I).contiguous()
    w = weight.contiguous()
    b = None if bias is None else bias.contiguous()
    N = x3.shape[1]
    out = torch.empty(K, N, O, dtype=torch.float32)
    scratch = _scratch(K * (N + 1) * (-(-I // 8) * 8) if I % 8 else 1)
    lib["rbp_sparse_affine"](K, N, I, O, x3.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(),
                          out.data_ptr(), scratch.data_ptr(), _threads())
    return out.view(*x.shape[:-1], O)


def grad_weight(g2: torch.Tensor, x2: torch.Tensor):
    """``g^T x`` (shape ([K,] O, I)) summed over the nonzero entries of ``x``, or ``None`` without the kernel.

    ``g2`` ([K,] N, O) and ``x2`` ([K,] N, I), as :meth:`LinearOps.grad_weight` shapes them.
    """
    lib = load()
    if lib is None or not applicable(g2, x2):
        return None
    if g2.shape[:-1] != x2.shape[:-1] or g2.dim() not in (2, 3):
        return None                     # let the dense product report the mismatch
    lead = g2.shape[:-2]
    K = lead[0] if lead else 1
    N, O, I = g2.shape[-2], g2.shape[-1], x2.shape[-1]
    g3, x3 = g2.reshape(K, N, O).contiguous(), x2.reshape(K, N, I).contiguous()
    gw = torch.empty(*lead, O, I, dtype=torch.float32)
    lib["rbp_sparse_grad_weight"](K, N, I, O, x3.data_ptr(), g3.data_ptr(), gw.data_ptr(), _threads())
    return gw
