"""A compiled CPU kernel for the quantized weight update of paper 1, section 5.2.

The update is ``sum_n Q(g_n x_n^T)``: every example's outer product is
quantized (Eq. 19) before the sum, so the work is one nonlinear function per
synapse and example, B x N_out x N_in numbers per step, and no matrix product
can do it.  In eager PyTorch each of the clamp, round, power-of-two and sign
steps is a separate pass over that many numbers; this module does them all in
one pass, in C, and skips inputs that are exactly zero (they contribute
nothing: Q(0) = 0), which removes four fifths of the work in the first layer
on MNIST.

The C source is compiled on first use (:mod:`._native`).  Where no compiler
is available, or ``RBP_NO_KERNEL=1`` is set, :func:`load` returns ``None`` and
callers use the PyTorch code path, which gives the same numbers up to the
order of float additions.
"""

from __future__ import annotations

import ctypes

import torch

from . import _native

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* 2^r for an integral float r in [-126, 127], built from its exponent bits. */
static inline float pow2_int(float r) {
    int32_t bits = ((int32_t)r + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/*
 * outT[k, i, j] += sum_n sx[k,n,i] * sg[k,n,j] * 2^round(clamp(lg[k,n,j] + lx[k,n,i], lo, 0))
 *
 * lg, sg: (K, N, O) log2 of the scaled error over alpha, and its sign;
 * lx, sx: (K, N, I) log2 of the layer input's magnitude, and its sign;
 * outT:   (K, I, O), accumulated into.  Rounding is to nearest, ties to even,
 * like torch.round.  Work is split over (member, block of inputs), so no two
 * threads write the same output.
 */
void rbp_quantized_outer_sum(int K, int N, int O, int I,
                             const float *lg, const float *sg,
                             const float *lx, const float *sx,
                             float lo, float *outT, int nthreads) {
    const int BLOCK = 32;
    const int nblocks = (I + BLOCK - 1) / BLOCK;
    const long total = (long)K * nblocks;
#ifdef _OPENMP
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
#endif
    for (long task = 0; task < total; ++task) {
        const int k = (int)(task / nblocks);
        const int i0 = (int)(task % nblocks) * BLOCK;
        const int i1 = i0 + BLOCK < I ? i0 + BLOCK : I;
        for (int n = 0; n < N; ++n) {
            const float *a = lg + ((long)k * N + n) * O;
            const float *s = sg + ((long)k * N + n) * O;
            const float *b = lx + ((long)k * N + n) * I;
            const float *t = sx + ((long)k * N + n) * I;
            for (int i = i0; i < i1; ++i) {
                const float ti = t[i];
                if (ti == 0.0f) continue;
                const float bi = b[i];
                float *acc = outT + ((long)k * I + i) * O;
                for (int j = 0; j < O; ++j) {
                    float v = a[j] + bi;
                    v = v < lo ? lo : v;
                    v = v > 0.0f ? 0.0f : v;
                    acc[j] += ti * s[j] * pow2_int(nearbyintf(v));
                }
            }
        }
    }
}
"""

_state: dict = {}


def load():
    """The compiled function, or ``None`` where it cannot be had (then use PyTorch)."""
    if "fn" not in _state:
        lib = _native.library("qkernel", _SOURCE)
        fn = None
        if lib is not None:
            fn = lib.rbp_quantized_outer_sum
            p = ctypes.c_void_p
            fn.argtypes = [ctypes.c_int] * 4 + [p] * 4 + [ctypes.c_float, p, ctypes.c_int]
            fn.restype = None
        _state["fn"] = fn
    return _state["fn"]


def applicable(*tensors: torch.Tensor) -> bool:
    """The kernel serves float32 CPU tensors outside autograd."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors)


def quantized_outer_sum(lg, sg, lx, sx, lo: float) -> torch.Tensor | None:
    """sum_n sx * sg * 2^round(clamp(lg + lx, lo, 0)) as a ([K,] O, I) tensor, or None without the kernel.

    ``lg``/``sg`` have shape ([K,] N, O) and ``lx``/``sx`` ([K,] N, I).
    """
    fn = load()
    if fn is None:
        return None
    lead = lg.shape[:-2]
    K = lead[0] if lead else 1
    N, O, I = lg.shape[-2], lg.shape[-1], lx.shape[-1]
    lg, sg, lx, sx = (t.contiguous() for t in (lg, sg, lx, sx))
    outT = torch.zeros(*lead, I, O, dtype=torch.float32)
    fn(K, N, O, I, lg.data_ptr(), sg.data_ptr(), lx.data_ptr(), sx.data_ptr(), float(lo),
       outT.data_ptr(), max(1, torch.get_num_threads()))
    return outT.transpose(-1, -2).contiguous()
