"""A compiled tanh for the fused trainer (float32, CPU).

On the CPUs we measured, ``torch.tanh`` on float32 costs about 3 ns per number
with one thread.  This kernel evaluates tanh in vector registers in one pass,
in place:

* for |x| < 0.625, the odd polynomial x + x^3 P(x^2) of the Cephes library's
  ``tanhf`` (no cancellation near 0);
* otherwise 1 - 2 / (exp(2|x|) + 1) with the sign of x, where exp is the
  Cephes ``expf`` scheme (reduction by ln 2 in two parts, a degree-5
  polynomial, the power of two from its exponent bits).

It agrees with ``torch.tanh`` to a few units in the last place (the tests
bound it), and every number is computed by the same formula wherever it sits
in the tensor, so an ensemble member gets exactly the numbers it would get
alone.  Without a compiler, or with ``RBP_NO_KERNEL=1``, ``torch.tanh_`` is
used.  Why it is kept (it buys about 10 % of a one-network MNIST step) and the
minibatch gather that lived here was not: docs/performance.md, "Which compiled
kernels stay".
"""

from __future__ import annotations

import ctypes

import torch

from . import _native

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 splat(float a) { v8 r = {a, a, a, a, a, a, a, a}; return r; }
static inline v8i isplat(int32_t a) { v8i r = {a, a, a, a, a, a, a, a}; return r; }
static inline v8 vmin(v8 a, v8 b) { v8i m = a < b; return (v8)((m & (v8i)a) | (~m & (v8i)b)); }
static inline v8 vmax(v8 a, v8 b) { v8i m = a > b; return (v8)((m & (v8i)a) | (~m & (v8i)b)); }

/* exp(x) for x in [0, 88] (Cephes expf scheme). */
static inline v8 vexp(v8 x) {
    x = vmin(x, splat(88.0f));
    const v8 magic = splat(12582912.0f);                   /* 1.5 * 2^23: rounds to an integer */
    v8 n = (x * splat(1.44269504088896341f) + magic) - magic;
    v8 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    v8 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v8i e = (__builtin_convertvector(n, v8i) + isplat(127)) << 23;
    return p * (v8)e;
}

static inline v8 vtanh(v8 x) {
    const v8i sign = (v8i)x & isplat((int32_t)0x80000000);
    const v8 a = (v8)((v8i)x & isplat(0x7fffffff));
    /* large: 1 - 2 / (exp(2a) + 1) */
    v8 big = splat(1.0f) - splat(2.0f) / (vexp(a + a) + splat(1.0f));
    /* small: a + a^3 P(a^2) */
    v8 z = a * a;
    v8 p = splat(-5.70498872745e-3f);
    p = p * z + splat(2.06390887954e-2f);
    p = p * z - splat(5.37397155531e-2f);
    p = p * z + splat(1.33314422036e-1f);
    p = p * z - splat(3.33332819422e-1f);
    v8 small = p * z * a + a;
    v8i use_small = a < splat(0.625f);
    v8 y = (v8)((use_small & (v8i)small) | (~use_small & (v8i)big));
    y = (v8)((v8i)y | sign);
    const v8i nan = x != x;                                /* NaN stays NaN (divergence is detected) */
    return (v8)((nan & (v8i)x) | (~nan & (v8i)y));
}

/* x[0 .. n) = tanh(x) in place; the last n mod 8 numbers go through the same vector code. */
void rbp_tanh_(long n, float *x, int nthreads) {
    const long nv = n / 8;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (n >= 65536)
#endif
    for (long i = 0; i < nv; ++i) {
        v8 v;
        memcpy(&v, x + 8 * i, sizeof v);
        v = vtanh(v);
        memcpy(x + 8 * i, &v, sizeof v);
    }
    const long rest = n - 8 * nv;
    if (rest) {
        v8 v = splat(0.0f);
        memcpy(&v, x + 8 * nv, sizeof(float) * (size_t)rest);
        v = vtanh(v);
        memcpy(x + 8 * nv, &v, sizeof(float) * (size_t)rest);
    }
}
"""

_state: dict = {}


def load():
    """The compiled tanh, or ``None`` (no compiler, or kernels disabled)."""
    if "fn" not in _state:
        p, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        fns = _native.functions("fastops", _SOURCE, {"rbp_tanh_": ([n, p, i], None)})
        _state["fn"] = None if fns is None else fns["rbp_tanh_"]
    return _state["fn"]


def tanh_(s: torch.Tensor) -> torch.Tensor:
    """tanh in place: the compiled kernel for contiguous float32 CPU tensors, else ``torch.tanh_``."""
    if s.dtype == torch.float32 and s.device.type == "cpu" and s.is_contiguous() and not s.requires_grad:
        fn = load()
        if fn is not None:
            fn(s.numel(), s.data_ptr(), max(1, torch.get_num_threads()))
            return s
    return s.tanh_()
