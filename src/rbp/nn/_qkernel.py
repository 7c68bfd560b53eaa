"""A compiled CPU kernel for the quantized weight update of paper 1, section 5.2.

The update is ``sum_n Q(g_n x_n^T)``: every example's outer product is
quantized (Eq. 19) before the sum, so the work is one nonlinear function per
synapse and example, B x N_out x N_in numbers per step, and no matrix product
can do it.  In eager PyTorch each of the clamp, round, power-of-two and sign
steps is a separate pass over that many numbers; this module does them all in
one pass, in C, and skips inputs that are exactly zero (they contribute
nothing: Q(0) = 0), which removes four fifths of the work in the first layer
on MNIST.

Where the compiler targets AVX2, the sum is formed eight synapses at a time
with the rounding and the power of two done by float and integer bit tricks
(see the comments in the C source); it gives bitwise the same numbers as the
portable loop, which is kept for other machines and for inputs outside the
fast path's assumptions.

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
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* 2^r for an integral float r in [-126, 127], built from its exponent bits. */
static inline float pow2_int(float r) {
    int32_t bits = ((int32_t)r + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/*
 * The portable loop (and the definition the fast path must match bitwise):
 * outT[k, i, j] = sum_{n ascending} sx[k,n,i] * sg[k,n,j] * 2^round(clamp(lg[k,n,j] + lx[k,n,i], lo, 0)),
 * skipping inputs with sx == 0, the sum starting from +0.  outT is (K, I, O).
 */
static void portable(int K, int N, int O, int I, const float *lg, const float *sg,
                     const float *lx, const float *sx, float lo, float *outT, int nthreads) {
    const int BLOCK = 32;
    const int nblocks = (I + BLOCK - 1) / BLOCK;
    const long total = (long)K * nblocks;
    memset(outT, 0, sizeof(float) * (size_t)K * I * O);
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

/* The portable loop, written as out (K, O, I). */
static int run_portable(int K, int N, int O, int I, const float *lg, const float *sg,
                        const float *lx, const float *sx, float lo, float *out, int nthreads) {
    float *outT = (float *)malloc(sizeof(float) * ((size_t)K * I * O + 1));
    if (!outT) return -1;
    portable(K, N, O, I, lg, sg, lx, sx, lo, outT, nthreads);
    for (long k = 0; k < K; ++k)
        for (long i = 0; i < I; ++i)
            for (long j = 0; j < O; ++j)
                out[(k * O + j) * I + i] = outT[(k * I + i) * O + j];
    free(outT);
    return 0;
}

#if defined(__AVX2__)
/*
 * The fast path.  The sum is symmetric in (g, j) and (x, i): one side is the
 * "scalar" side a, whose value is broadcast, the other the "vector" side b,
 * eight neighbours per register.  Per example n and vector element b we
 * precompute L = the log value (-inf where the sign is 0, and in the padding)
 * and a float "magic" number M that carries the vector side's sign.  For each
 * synapse and example the term is then
 *
 *     f = clamp(L + s_a, lo, 0) + M;   term = sign_a * (bits(f) << 23)   (as a float)
 *
 * Why: M is 1.5*2^23 plus an even integer c, so M + v (v in [lo, 0], lo >= -120)
 * lies in [2^23, 2^24) where the float spacing is 1: the single rounding of the
 * addition, to nearest with ties to even, leaves round_half_even(v) + c in the
 * low mantissa bits (c even keeps the tie parity of v's own).  Shifting left by
 * 23 drops the exponent of 1.5*2^23 and keeps bits 0..8 of round(v) + c as the
 * float's sign and exponent fields: with c = 128 it is +2^(round(v)+1), with
 * c = 384 (bit 8 set) it is -2^(round(v)+1), and c = -lo gives exactly +0
 * (used where the vector side's sign is 0, where L = -inf makes v = lo;
 * entries with a zero scalar-side sign are skipped).  Every term is twice the portable
 * loop's; the sums are therefore exactly twice the portable sums (scaling by
 * 2 commutes with float rounding while no number is subnormal or overflows,
 * which |terms| >= 2^-119 ensures) and the final *0.5 is exact.
 * A NaN from -inf + inf in a zero or padding lane goes to lo through the max
 * (which returns its second operand on NaN), so it also gives +0.
 */
#define MAGIC 12582912.0f /* 1.5 * 2^23 */
#define AB 16             /* scalar-side entries per task */
#define VB 4              /* vectors of 8 per register block */

/* One scalar-side entry: example n, the log value and the sign (+-1). */
typedef struct { int32_t n; float s, sign; } entry;

/* The two additions are fused multiply-adds with a factor of 1, which are
   exact-product-then-one-rounding, so bitwise equal to the additions; they run
   on other execution ports than the additions, min and max (measured faster). */
static inline __m256 term(__m256 L, __m256 s, __m256 M, __m256 lov, __m256 zero, __m256 one) {
    __m256 v = _mm256_fmadd_ps(L, one, s);
    v = _mm256_max_ps(v, lov);
    v = _mm256_min_ps(v, zero);
    v = _mm256_fmadd_ps(v, one, M);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(v), 23));
}

/* The scratch array holds, per member and block of NV vectors, per example n,
   L and M one after the other, each NV * 8 floats: a contiguous stream.  M is
   for a positive scalar-side sign; a negative one multiplies the term by -1
   inside the accumulating fused multiply-add, which is exact (the product is
   exact, and the addition rounds once, as acc + (-term) would). */
#define DEFINE_BLOCK(NV)                                                                   \
static void block##NV(const entry *e, int cnt, const float *Pb, __m256 lov,                \
                      float *dst, long sb, int bvalid) {                                   \
    const __m256 zero = _mm256_setzero_ps();                                               \
    __m256 one = _mm256_set1_ps(1.0f);                                                     \
    __asm__("" : "+x"(one)); /* an opaque 1: keep the multiply-adds as they are */         \
    __m256 acc[NV];                                                                        \
    for (int v = 0; v < NV; ++v) acc[v] = zero;                                            \
    for (int q = 0; q < cnt; ++q) {                                                        \
        const float *Lp = Pb + (long)e[q].n * (16 * NV), *Mp = Lp + 8 * NV;                \
        const __m256 s = _mm256_set1_ps(e[q].s), sign = _mm256_set1_ps(e[q].sign);         \
        for (int v = 0; v < NV; ++v)                                                       \
            acc[v] = _mm256_fmadd_ps(term(_mm256_loadu_ps(Lp + 8 * v), s,                  \
                                          _mm256_loadu_ps(Mp + 8 * v), lov, zero, one),    \
                                     sign, acc[v]);                                        \
    }                                                                                      \
    const __m256 half = _mm256_set1_ps(0.5f);                                              \
    for (int v = 0; v < NV; ++v) {                                                         \
        __m256 r = _mm256_mul_ps(acc[v], half);                                            \
        int m = bvalid - 8 * v;                                                            \
        if (sb == 1 && m >= 8) { _mm256_storeu_ps(dst + 8 * v, r); continue; }             \
        float tmp[8];                                                                      \
        _mm256_storeu_ps(tmp, r);                                                          \
        for (int l = 0; l < 8 && l < m; ++l) dst[(8 * v + l) * sb] = tmp[l];               \
    }                                                                                      \
}
DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
#if VB >= 3
DEFINE_BLOCK(3)
#endif
#if VB >= 4
DEFINE_BLOCK(4)
#endif

/*
 * Whether every sign in s[0..n) is -1, 0 or 1 and every log value v where the
 * sign is not 0 is not NaN (finite if `finite`); counts the nonzero signs.
 */
static int check(const float *s, const float *v, long n, int finite, long *nz) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    long count = 0, q = 0;
    for (; q + 8 <= n; q += 8) {
        const __m256 sv = _mm256_loadu_ps(s + q), vv = _mm256_loadu_ps(v + q);
        const __m256 sz = _mm256_cmp_ps(sv, zero, _CMP_EQ_OQ);
        const __m256 unit = _mm256_cmp_ps(_mm256_and_ps(sv, absmask), one, _CMP_EQ_OQ);
        const __m256 val = finite ? _mm256_cmp_ps(_mm256_and_ps(vv, absmask), big, _CMP_LE_OQ)
                                  : _mm256_cmp_ps(vv, vv, _CMP_ORD_Q);
        good = _mm256_and_ps(good, _mm256_or_ps(sz, _mm256_and_ps(unit, val)));
        count += 8 - __builtin_popcount(_mm256_movemask_ps(sz));
    }
    int ok = _mm256_movemask_ps(good) == 0xff;
    for (; q < n; ++q) {
        const float a = s[q], b = v[q];
        ok &= a == 0.0f || ((a == 1.0f || a == -1.0f) && (finite ? fabsf(b) <= FLT_MAX : b == b));
        count += a != 0.0f;
    }
    *nz = count;
    return ok;
}

/*
 * Scratch memory of the calling thread, kept between calls (fresh pages from
 * the system on every call cost a measurable fraction of a call).
 */
static __thread char *scratch_mem;
static __thread size_t scratch_size;

static void *scratch(size_t bytes) {
    if (bytes > scratch_size) {
        free(scratch_mem);
        scratch_mem = (char *)malloc(bytes);
        scratch_size = scratch_mem ? bytes : 0;
    }
    return scratch_mem;
}

/*
 * One orientation.  vb/svb: (K, N, B) values and signs of the vector side;
 * va/sva: (K, N, A) of the scalar side.  out[k*A*B + a*sa + b*sb].  Returns -1
 * if out of memory (nothing written then).
 */
static int fast(int K, int N, int A, int B, const float *va, const float *sva,
                const float *vb, const float *svb, float lo, float *out, long sa, long sb,
                int dense, int nthreads) {
    /* Vectors of the vector side, cut into nblk blocks of as equal widths as
       can be (at most VB): block q starts at vector q*wq + min(q, wr). */
    const int nvec = (B + 7) / 8, Bp = 8 * nvec;
    const int nblk = (nvec + VB - 1) / VB, wq = nvec / nblk, wr = nvec % nblk;
    const long per_k = 2L * N * Bp;
    const int ablocks = (A + AB - 1) / AB;
    const size_t pbytes = sizeof(float) * ((size_t)K * per_k + 8);
    char *mem = (char *)scratch(pbytes + sizeof(entry) * ((size_t)nthreads * AB * N + 1));
    if (!mem) return -1;
    float *P = (float *)mem;
    entry *lists = (entry *)(mem + pbytes);
    const float zm = MAGIC - lo, mpos = MAGIC + 128.0f, mneg = MAGIC + 384.0f;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef _OPENMP
        #pragma omp for schedule(static)
#endif
        for (long kn = 0; kn < (long)K * N; ++kn) {
            const long k = kn / N, n = kn % N;
            const float *v = vb + kn * B, *s = svb + kn * B;
            for (int q = 0; q < nblk; ++q) {
                const int b0 = 8 * (q * wq + (q < wr ? q : wr)), w = 8 * (wq + (q < wr));
                float *L = P + k * per_k + 2L * N * b0 + 2L * n * w, *M = L + w;
                for (int b = 0; b < w; ++b) {
                    const float sv = b0 + b < B ? s[b0 + b] : 0.0f;
                    L[b] = sv == 0.0f ? -INFINITY : v[b0 + b];
                    M[b] = sv == 0.0f ? zm : (sv < 0.0f ? mneg : mpos);
                }
            }
        }
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        entry *my = lists + (size_t)tid * AB * N;
        const __m256 lov = _mm256_set1_ps(lo);
#ifdef _OPENMP
        #pragma omp for schedule(dynamic, 1)
#endif
        for (long task = 0; task < (long)K * ablocks; ++task) {
            const int k = (int)(task / ablocks);
            const int a0 = (int)(task % ablocks) * AB;
            const int na = a0 + AB < A ? AB : A - a0;
            /* Each scalar-side entry's examples with a nonzero sign, n ascending:
               where most signs are nonzero, every entry is written and kept by
               advancing the count (no branches); where most are zero, only the
               nonzero ones are visited, found eight at a time. */
            int cnt[AB];
            if (dense) {
                for (int t = 0; t < na; ++t) {
                    const float *v = va + (long)k * N * A + a0 + t;
                    const float *s = sva + (long)k * N * A + a0 + t;
                    entry *e = my + (size_t)t * N;
                    int c = 0;
                    for (int n = 0; n < N; ++n) {
                        e[c].n = n;
                        e[c].s = v[(long)n * A];
                        e[c].sign = s[(long)n * A];
                        c += s[(long)n * A] != 0.0f;
                    }
                    cnt[t] = c;
                }
            } else {
                for (int t = 0; t < na; ++t) cnt[t] = 0;
                for (int n = 0; n < N; ++n) {
                    const float *v = va + ((long)k * N + n) * A + a0;
                    const float *s = sva + ((long)k * N + n) * A + a0;
                    uint32_t mask = 0;
                    int t = 0;
                    for (; t + 8 <= na; t += 8)
                        mask |= (uint32_t)_mm256_movemask_ps(
                            _mm256_cmp_ps(_mm256_loadu_ps(s + t), _mm256_setzero_ps(), _CMP_NEQ_UQ)) << t;
                    for (; t < na; ++t) mask |= (uint32_t)(s[t] != 0.0f) << t;
                    while (mask) {
                        const int u = __builtin_ctz(mask);
                        mask &= mask - 1;
                        entry *e = my + (size_t)u * N + cnt[u]++;
                        e->n = n;
                        e->s = v[u];
                        e->sign = s[u];
                    }
                }
            }
            for (int q = 0; q < nblk; ++q) {
                const int b0 = 8 * (q * wq + (q < wr ? q : wr)), nv = wq + (q < wr);
                const float *Pb = P + k * per_k + 2L * N * b0;
                const int bvalid = B - b0;
                for (int t = 0; t < na; ++t) {
                    float *dst = out + (long)k * A * B + (long)(a0 + t) * sa + (long)b0 * sb;
                    const entry *e = my + (size_t)t * N;
                    switch (nv) {
#if VB >= 4
                        case 4: block4(e, cnt[t], Pb, lov, dst, sb, bvalid); break;
#endif
#if VB >= 3
                        case 3: block3(e, cnt[t], Pb, lov, dst, sb, bvalid); break;
#endif
                        case 2: block2(e, cnt[t], Pb, lov, dst, sb, bvalid); break;
                        default: block1(e, cnt[t], Pb, lov, dst, sb, bvalid); break;
                    }
                }
            }
        }
    }
    return 0;
}
#endif

/*
 * out[k, j, i] = sum_n sx[k,n,i] * sg[k,n,j] * 2^round(clamp(lg[k,n,j] + lx[k,n,i], lo, 0))
 *
 * lg, sg: (K, N, O) log2 of the scaled error over alpha, and its sign;
 * lx, sx: (K, N, I) log2 of the layer input's magnitude, and its sign;
 * out:    (K, O, I), written.  Rounding is to nearest, ties to even, like
 * torch.round; the sum runs over n ascending from +0 for every output, so
 * the result does not depend on the thread count or on the code path.
 * mode: 0 chooses, 1 forces the portable loop, 2 the fast path with outputs j
 * in vectors, 3 with inputs i in vectors (2 and 3 fall back to 1 where the
 * fast path does not apply).  Returns the path taken (1, 2 or 3), -1 if out of memory.
 */
int rbp_quantized_outer_sum(int K, int N, int O, int I,
                            const float *lg, const float *sg,
                            const float *lx, const float *sx,
                            float lo, float *out, int nthreads, int mode) {
    if (nthreads < 1) nthreads = 1;
#if defined(__AVX2__)
    /* The fast path assumes signs in {-1, 0, 1}, a log value that is not NaN
       wherever the sign is not 0 (an input's also finite), an integral lo in
       [-120, 0], and 32-bit offsets into its scratch array. */
    int ok = mode != 1 && lo == nearbyintf(lo) && lo >= -120.0f && lo <= 0.0f
             && (double)K * N * 3.0 * (O > I ? O + 8 : I + 8) < 2.0e9;
    long nzg = 0, nzx = 0;
    ok = ok && check(sg, lg, (long)K * N * O, 0, &nzg);
    ok = ok && check(sx, lx, (long)K * N * I, 1, &nzx);
    if (ok) {
        /* Cost of a list entry is about two vectors of work plus its vectors. */
        const double cj = (double)nzx * ((O + 7) / 8 + 2), ci = (double)nzg * ((I + 7) / 8 + 2);
        const int path = mode == 2 ? 2 : mode == 3 ? 3 : (cj < ci ? 2 : 3);
        int r = path == 2
            ? fast(K, N, I, O, lx, sx, lg, sg, lo, out, 1, I, 2 * nzx > (long)K * N * I, nthreads)
            : fast(K, N, O, I, lg, sg, lx, sx, lo, out, I, 1, 2 * nzg > (long)K * N * O, nthreads);
        if (r == 0) return path;
    }
#endif
    (void)mode;
    return run_portable(K, N, O, I, lg, sg, lx, sx, lo, out, nthreads) == 0 ? 1 : -1;
}
"""

_state: dict = {}

_PATHS = {"auto": 0, "portable": 1, "outputs": 2, "inputs": 3}


def load():
    """The compiled function, or ``None`` where it cannot be had (then use PyTorch)."""
    if "fn" not in _state:
        p, i = ctypes.c_void_p, ctypes.c_int
        fns = _native.functions("qkernel", _SOURCE, {
            "rbp_quantized_outer_sum": ([i] * 4 + [p] * 4 + [ctypes.c_float, p, i, i], ctypes.c_int)})
        _state["fn"] = None if fns is None else fns["rbp_quantized_outer_sum"]
    return _state["fn"]


applicable = _native.applicable


def quantized_outer_sum(lg, sg, lx, sx, lo: float, *, path: str = "auto") -> torch.Tensor | None:
    """sum_n sx * sg * 2^round(clamp(lg + lx, lo, 0)) as a ([K,] O, I) tensor, or None without the kernel.

    ``lg``/``sg`` have shape ([K,] N, O) and ``lx``/``sx`` ([K,] N, I).
    ``path`` picks the kernel's code path, for tests and timing: "portable"
    (the plain C loop), "outputs" or "inputs" (the AVX2 path with outputs or
    inputs eight to a register; the portable loop where that does not apply),
    or "auto".  All give bitwise the same numbers; the path taken is left in
    ``_state["path"]``.  A lowest exponent below -126 (the "levels" reading with
    9 bits or more) is outside what the kernel's power of two can build from
    float32 exponent bits: it returns None and the PyTorch path computes it.
    """
    fn = load()
    if fn is None or lo < -126:
        return None
    lead = lg.shape[:-2]
    K = lead[0] if lead else 1
    N, O, I = lg.shape[-2], lg.shape[-1], lx.shape[-1]
    lg, sg, lx, sx = (t.contiguous() for t in (lg, sg, lx, sx))
    out = torch.empty(*lead, O, I, dtype=torch.float32)
    taken = fn(K, N, O, I, lg.data_ptr(), sg.data_ptr(), lx.data_ptr(), sx.data_ptr(), float(lo),
               out.data_ptr(), max(1, torch.get_num_threads()), _PATHS[path])
    if taken < 0:
        raise MemoryError("rbp_quantized_outer_sum: out of memory")
    _state["path"] = {1: "portable", 2: "outputs", 3: "inputs"}[taken]
    return out
