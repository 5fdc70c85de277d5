// bitnet-tools: x86 ternary kernels (AVX2, AVX-VNNI, AVX-512 VNNI). Scalar reference: ../../bitnet.c
//
// All paths compute sum(code * q) exactly with u8 x s8 dot products and subtract sum(q)
// (stored in the I8_S row), since sum((code - 1) * q) = sum(code * q) - sum(q). The float
// result is then formed exactly as the generic kernel does: (float) isum * d * wscale.
//
// Tiling: ggml_gemm_i2_s_i8_s walks blocks of activation columns small enough to stay in L2;
// inside a block, tiles of R weight rows x C columns keep R*C accumulators in registers, so
// each unpacked weight vector is reused C times and each activation vector R times. nc = 1
// (token generation) is the same code with C = 1: the weights stream through once.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define BITNET_INLINE static inline __attribute__((always_inline))
#else
#define BITNET_INLINE static inline
#endif

static inline float bitnet_row_d(const int8_t * q, int n) {
    float d;
    memcpy(&d, q + n, sizeof(float));
    return d;
}

static inline int32_t bitnet_row_sum(const int8_t * q, int n) {
    int32_t s;
    memcpy(&s, q + n + sizeof(float), sizeof(int32_t));
    return s;
}


// Activation quantization, bit-identical to quantize_row_i8_s_ref: the same float operations
// (max |x| ignoring NaN like fmaxf, iscale = 127 / fmaxf(amax, 1e-5f), x * iscale rounded to
// nearest-even by cvtps2dq under the default MXCSR mode = nearbyintf, clamp to [-128, 127]).
void quantize_row_i8_s(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    int8_t * q = (int8_t *) vy;
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __m512 vmax = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        // max(|x|, acc) returns acc when |x| is NaN, as fmaxf does
        vmax = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), sign), vmax);
    }
    float amax = _mm512_reduce_max_ps(vmax);
    for (; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float iscale = 127.0f / fmaxf(amax, 1e-5f);
    const __m512  vs   = _mm512_set1_ps(iscale);
    const __m512i lo   = _mm512_set1_epi32(-128);
    const __m512i hi   = _mm512_set1_epi32(127);
    __m512i vsum = _mm512_setzero_si512();
    for (i = 0; i + 16 <= k; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs));
        v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
        vsum = _mm512_add_epi32(vsum, v);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(v));
    }
    int32_t sum = _mm512_reduce_add_epi32(vsum);
    ggml_i8_s_finish_row(x, q, i, k, iscale, sum);  // the elements after the last whole vector, and the tail
#elif defined(__AVX2__)
    int8_t * q = (int8_t *) vy;
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), sign), vmax);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    for (; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float iscale = 127.0f / fmaxf(amax, 1e-5f);
    const __m256  vs   = _mm256_set1_ps(iscale);
    const __m256i lo   = _mm256_set1_epi32(-128);
    const __m256i hi   = _mm256_set1_epi32(127);
    const __m256i shuf = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i vsum = _mm256_setzero_si256();
    for (i = 0; i + 8 <= k; i += 8) {
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
        vsum = _mm256_add_epi32(vsum, v);
        const __m256i b = _mm256_shuffle_epi8(v, shuf);
        const int32_t b0 = _mm256_extract_epi32(b, 0);
        const int32_t b1 = _mm256_extract_epi32(b, 4);
        memcpy(q + i, &b0, 4);
        memcpy(q + i + 4, &b1, 4);
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vsum), _mm256_extracti128_si256(vsum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    int32_t sum = _mm_cvtsi128_si32(s4);
    ggml_i8_s_finish_row(x, q, i, k, iscale, sum);  // the elements after the last whole vector, and the tail
#else
    quantize_row_i8_s_generic(x, vy, k);
#endif
}

// activation columns per L2 block: ~384 KiB of int8 values, at least one column tile
static inline int bitnet_col_block(int n) {
    int cb = (384*1024) / n;
    cb = cb < 8 ? 8 : cb;
    return cb & ~7;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)

// A group's 32 code bytes are broadcast to both halves of a zmm. Masking instead of shifting
// leaves each code scaled by a power of 4 (fine for vpdpbusd: 4 * 192 * 128 fits in int32):
//   lo = x & M          -> lower half: bits 6-7 (elements 0..31)  x 64
//                          upper half: bits 4-5 (elements 32..63) x 16
//   hi = (x << 4) & M   -> lower half: bits 2-3 (elements 64..95) x 64
//                          upper half: bits 0-1 (elements 96..127) x 16
// so lo pairs with q[0..63] and hi with q[64..127], both into ONE accumulator whose lanes are
// exact multiples of 64 (lower 8) and 16 (upper 8); a per-lane shift undoes the scale.
BITNET_INLINE __m512i bitnet_mask512(void) {
    return _mm512_inserti64x4(_mm512_set1_epi8((char) 0xC0), _mm256_set1_epi8(0x30), 1);
}

BITNET_INLINE int32_t bitnet_hsum512(__m512i acc) {
    const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi32(6), _mm256_set1_epi32(4), 1);
    return _mm512_reduce_add_epi32(_mm512_srav_epi32(acc, sh));
}

// R weight rows x C activation columns, full row length
BITNET_INLINE void bitnet_tile512(int ng, float * GGML_RESTRICT s, size_t bs,
                                  const uint8_t * GGML_RESTRICT x, size_t bx,
                                  const int8_t * GGML_RESTRICT y, size_t by,
                                  float wscale, const int R, const int C) {
    const __m512i m = bitnet_mask512();
    __m512i acc[4][4];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            acc[r][c] = _mm512_setzero_si512();
        }
    }
    for (int g = 0; g < ng; ++g) {
        __m512i q0[4], q1[4];
        for (int c = 0; c < C; ++c) {
            q0[c] = _mm512_loadu_si512((const void *)(y + c*by + g*QK_I2_S));
            q1[c] = _mm512_loadu_si512((const void *)(y + c*by + g*QK_I2_S + 64));
        }
        for (int r = 0; r < R; ++r) {
            const __m512i v  = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x + r*bx + g*I2_S_GROUP_B)));
            const __m512i lo = _mm512_and_si512(v, m);
            const __m512i hi = _mm512_and_si512(_mm512_slli_epi64(v, 4), m);
            for (int c = 0; c < C; ++c) {
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], lo, q0[c]);
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], hi, q1[c]);
            }
        }
    }
    for (int c = 0; c < C; ++c) {
        const int8_t * q = y + c*by;
        const int     n = ng*QK_I2_S;
        const int32_t sq = bitnet_row_sum(q, n);
        const float   d  = bitnet_row_d(q, n);
        for (int r = 0; r < R; ++r) {
            const int32_t isum = bitnet_hsum512(acc[r][c]) - sq;
            s[c*bs + r] = (float) isum * d * wscale;
        }
    }
}

// nc == 1 (token generation): weights stream through once, so the kernel is bound by how fast
// code bytes are consumed. Rows are read 64 bytes (two groups) per load; the activation row is
// first rearranged (once per call) so that each zmm of codes pairs with ready-made vectors:
//   a[0] = q[g][0..31]   | q[g+1][0..31]    with  x & 0xC0         (x 64)
//   a[1] = q[g][32..63]  | q[g+1][32..63]   with  x & 0x30         (x 16)
//   a[2] = q[g][64..95]  | q[g+1][64..95]   with  (x << 4) & 0xC0  (x 64)
//   a[3] = q[g][96..127] | q[g+1][96..127]  with  (x << 4) & 0x30  (x 16)
// Two accumulators per row (x64 and x16 lanes) are shifted back exactly before the sum.
#define BITNET_GEMV_MAXN 32768
#ifndef BITNET_GEMV_R
#define BITNET_GEMV_R    4
#endif
#ifndef BITNET_GEMV_PF
#define BITNET_GEMV_PF   1     // software prefetch distance in tiles (0: none)
#endif

BITNET_INLINE void bitnet_gemv_tile512(int ng, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                                       const __m512i * GGML_RESTRICT a, int32_t sq, float d, float wscale, const int R, const int pf) {
    const __m512i m6 = _mm512_set1_epi8((char) 0xC0);
    const __m512i m4 = _mm512_set1_epi8(0x30);
    const int     np = ng / 2;
    __m512i acc6[BITNET_GEMV_R], acc4[BITNET_GEMV_R];
    for (int r = 0; r < R; ++r) {
        acc6[r] = _mm512_setzero_si512();
        acc4[r] = _mm512_setzero_si512();
    }
    for (int p = 0; p < np; ++p) {
        const __m512i a0 = _mm512_load_si512(a + 4*p + 0);
        const __m512i a1 = _mm512_load_si512(a + 4*p + 1);
        const __m512i a2 = _mm512_load_si512(a + 4*p + 2);
        const __m512i a3 = _mm512_load_si512(a + 4*p + 3);
        for (int r = 0; r < R; ++r) {
            if (pf) {
                _mm_prefetch((const char *)(x + (r + pf*R)*bx + p*64), _MM_HINT_T0);
            }
            const __m512i v  = _mm512_loadu_si512((const void *)(x + r*bx + p*64));
            const __m512i v4 = _mm512_slli_epi64(v, 4);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(v,  m6), a0);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(v,  m4), a1);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(v4, m6), a2);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(v4, m4), a3);
        }
    }
    if (ng & 1) {
        // an odd last group: 32 code bytes, zero-extended, against activations whose upper half is 0
        const __m512i a0 = _mm512_load_si512(a + 4*np + 0);
        const __m512i a1 = _mm512_load_si512(a + 4*np + 1);
        const __m512i a2 = _mm512_load_si512(a + 4*np + 2);
        const __m512i a3 = _mm512_load_si512(a + 4*np + 3);
        for (int r = 0; r < R; ++r) {
            const __m512i v  = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x + r*bx + np*64)));
            const __m512i v4 = _mm512_slli_epi64(v, 4);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(v,  m6), a0);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(v,  m4), a1);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(v4, m6), a2);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(v4, m4), a3);
        }
    }
    for (int r = 0; r < R; ++r) {
        const int32_t isum = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_srai_epi32(acc6[r], 6), _mm512_srai_epi32(acc4[r], 4))) - sq;
        s[r] = (float) isum * d * wscale;
    }
}

#if defined(__GNUC__) && !defined(BITNET_GEMV_NO_ASM)
// The same 4-row step in inline asm: GCC's allocation of the intrinsic version adds copies
// and spills around vpdpbusd. Eight accumulator chains (two per row); activations are
// memory operands; pl walks the next tile's bytes linearly, one line per row and step.
#define BITNET_GEMV_ASM_ROW(XR, A6, A4)                 \
    "vmovdqu64 " XR ", %%zmm28\n\t"                     \
    "vpsllq    $4, %%zmm28, %%zmm29\n\t"                \
    "vpandd    %%zmm28, %[m6], %%zmm30\n\t"             \
    "vpdpbusd  (%[a]), %%zmm30, %[" A6 "]\n\t"          \
    "vpandd    %%zmm28, %[m4], %%zmm31\n\t"             \
    "vpdpbusd  64(%[a]), %%zmm31, %[" A4 "]\n\t"        \
    "vpandd    %%zmm29, %[m6], %%zmm30\n\t"             \
    "vpdpbusd  128(%[a]), %%zmm30, %[" A6 "]\n\t"       \
    "vpandd    %%zmm29, %[m4], %%zmm31\n\t"             \
    "vpdpbusd  192(%[a]), %%zmm31, %[" A4 "]\n\t"

static void bitnet_gemv_tile4_asm(int ng, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                                  const __m512i * GGML_RESTRICT a, int32_t sq, float d, float wscale) {
    const __m512i m6 = _mm512_set1_epi8((char) 0xC0);
    const __m512i m4 = _mm512_set1_epi8(0x30);
    const int     np = ng / 2;
    __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512(), c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    __m512i e0 = _mm512_setzero_si512(), e1 = _mm512_setzero_si512(), e2 = _mm512_setzero_si512(), e3 = _mm512_setzero_si512();
    if (np > 0) {
        const uint8_t * x0 = x;
        const __m512i * ap = a;
        const uint8_t * pl = x + (size_t) BITNET_GEMV_PF * 4 * bx;
        size_t          b3 = 3*bx;
        size_t          cnt = (size_t) np;
        __asm__ volatile(
            "1:\n\t"
            "prefetcht0 (%[pl])\n\t"
            "prefetcht0 64(%[pl])\n\t"
            "prefetcht0 128(%[pl])\n\t"
            "prefetcht0 192(%[pl])\n\t"
            BITNET_GEMV_ASM_ROW("(%[x0])",           "c0", "e0")
            BITNET_GEMV_ASM_ROW("(%[x0],%[bx])",     "c1", "e1")
            BITNET_GEMV_ASM_ROW("(%[x0],%[bx],2)",   "c2", "e2")
            BITNET_GEMV_ASM_ROW("(%[x0],%[b3])",     "c3", "e3")
            "add  $64, %[x0]\n\t"
            "add  $256, %[a]\n\t"
            "add  $256, %[pl]\n\t"
            "dec  %[cnt]\n\t"
            "jnz  1b\n\t"
            : [c0] "+v" (c0), [c1] "+v" (c1), [c2] "+v" (c2), [c3] "+v" (c3),
              [e0] "+v" (e0), [e1] "+v" (e1), [e2] "+v" (e2), [e3] "+v" (e3),
              [x0] "+r" (x0), [a] "+r" (ap), [pl] "+r" (pl), [cnt] "+r" (cnt)
            : [m6] "v" (m6), [m4] "v" (m4), [bx] "r" (bx), [b3] "r" (b3)
            : "cc", "memory", "xmm28", "xmm29", "xmm30", "xmm31");
    }
    __m512i acc6[4] = { c0, c1, c2, c3 };
    __m512i acc4[4] = { e0, e1, e2, e3 };
    if (ng & 1) {
        const __m512i a0 = _mm512_load_si512(a + 4*np + 0);
        const __m512i a1 = _mm512_load_si512(a + 4*np + 1);
        const __m512i a2 = _mm512_load_si512(a + 4*np + 2);
        const __m512i a3 = _mm512_load_si512(a + 4*np + 3);
        for (int r = 0; r < 4; ++r) {
            const __m512i vv = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x + r*bx + np*64)));
            const __m512i v4 = _mm512_slli_epi64(vv, 4);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(vv, m6), a0);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(vv, m4), a1);
            acc6[r] = _mm512_dpbusd_epi32(acc6[r], _mm512_and_si512(v4, m6), a2);
            acc4[r] = _mm512_dpbusd_epi32(acc4[r], _mm512_and_si512(v4, m4), a3);
        }
    }
    for (int r = 0; r < 4; ++r) {
        const int32_t isum = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_srai_epi32(acc6[r], 6), _mm512_srai_epi32(acc4[r], 4))) - sq;
        s[r] = (float) isum * d * wscale;
    }
}
#define BITNET_GEMV_TILE4 bitnet_gemv_tile4_asm
#endif

static void bitnet_gemv512(int n, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                           const int8_t * GGML_RESTRICT y, int nr, float wscale) {
    const int ng = n / QK_I2_S;
    const int np = ng / 2;
    __m512i a[BITNET_GEMV_MAXN / 64 + 4];
    for (int p = 0; p < np; ++p) {
        const int8_t * q = y + p*2*QK_I2_S;
        for (int k = 0; k < 4; ++k) {
            a[4*p + k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 32*k))),
                                            _mm256_loadu_si256((const __m256i *)(q + QK_I2_S + 32*k)), 1);
        }
    }
    if (ng & 1) {
        const int8_t * q = y + (ng - 1)*QK_I2_S;
        for (int k = 0; k < 4; ++k) {
            a[4*np + k] = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 32*k)));
        }
    }
    const int32_t sq = bitnet_row_sum(y, n);
    const float   d  = bitnet_row_d(y, n);
    int r0 = 0;
#if defined(BITNET_GEMV_TILE4)
    for (; r0 + 4 <= nr; r0 += 4) {
        BITNET_GEMV_TILE4(ng, s + r0, x + r0*bx, bx, a, sq, d, wscale);
    }
#else
    for (; r0 + BITNET_GEMV_R <= nr; r0 += BITNET_GEMV_R) {
        bitnet_gemv_tile512(ng, s + r0, x + r0*bx, bx, a, sq, d, wscale, BITNET_GEMV_R, BITNET_GEMV_PF);
    }
#endif
    for (; r0 < nr; ++r0) {
        bitnet_gemv_tile512(ng, s + r0, x + r0*bx, bx, a, sq, d, wscale, 1, 0);
    }
}

#define BITNET_TILE(S, X, R, C) bitnet_tile512(ng, S, bs, X, bx, y, by, wscale, R, C)

#elif defined(__AVX2__)

// One group = one ymm of code bytes; codes (x >> 2k) & 3 pair with q[32(3-k) ..].
// AVX-VNNI accumulates with vpdpbusd; plain AVX2 uses vpmaddubsw (|2*2*128| per pair and at
// most 4 of them summed: no int16 saturation) then vpmaddwd with ones.
BITNET_INLINE void bitnet_tile256(int ng, float * GGML_RESTRICT s, size_t bs,
                                  const uint8_t * GGML_RESTRICT x, size_t bx,
                                  const int8_t * GGML_RESTRICT y, size_t by,
                                  float wscale, const int R, const int C) {
    const __m256i m3 = _mm256_set1_epi8(3);
#if !defined(__AVXVNNI__)
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    __m256i acc[2][4];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            acc[r][c] = _mm256_setzero_si256();
        }
    }
    for (int g = 0; g < ng; ++g) {
        __m256i w[2][4];
        for (int r = 0; r < R; ++r) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(x + r*bx + g*I2_S_GROUP_B));
            w[r][0] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
            w[r][1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
            w[r][2] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
            w[r][3] = _mm256_and_si256(v, m3);
        }
        for (int c = 0; c < C; ++c) {
            const int8_t * q = y + c*by + g*QK_I2_S;
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)(q +  0));
            const __m256i q1 = _mm256_loadu_si256((const __m256i *)(q + 32));
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)(q + 64));
            const __m256i q3 = _mm256_loadu_si256((const __m256i *)(q + 96));
            for (int r = 0; r < R; ++r) {
#if defined(__AVXVNNI__)
                acc[r][c] = _mm256_dpbusd_avx_epi32(acc[r][c], w[r][0], q0);
                acc[r][c] = _mm256_dpbusd_avx_epi32(acc[r][c], w[r][1], q1);
                acc[r][c] = _mm256_dpbusd_avx_epi32(acc[r][c], w[r][2], q2);
                acc[r][c] = _mm256_dpbusd_avx_epi32(acc[r][c], w[r][3], q3);
#else
                const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(w[r][0], q0), _mm256_maddubs_epi16(w[r][1], q1));
                const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(w[r][2], q2), _mm256_maddubs_epi16(w[r][3], q3));
                acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(_mm256_add_epi16(p01, p23), ones));
#endif
            }
        }
    }
    for (int c = 0; c < C; ++c) {
        const int8_t * q = y + c*by;
        const int     n = ng*QK_I2_S;
        const int32_t sq = bitnet_row_sum(q, n);
        const float   d  = bitnet_row_d(q, n);
        for (int r = 0; r < R; ++r) {
            const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc[r][c]), _mm256_extracti128_si256(acc[r][c], 1));
            const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
            const __m128i h1 = _mm_add_epi32(h2, _mm_shuffle_epi32(h2, _MM_SHUFFLE(2, 3, 0, 1)));
            const int32_t isum = _mm_cvtsi128_si32(h1) - sq;
            s[c*bs + r] = (float) isum * d * wscale;
        }
    }
}

#define BITNET_TILE(S, X, R, C) bitnet_tile256(ng, S, bs, X, bx, y, by, wscale, R, C)

#if !defined(__AVXVNNI__)
// GEMV (one activation column, token generation) without VNNI: 4 rows at a time, no column
// reuse to block for. A group's four vpmaddubsw results are at most 4 * 512 in magnitude (codes
// 0..2, |q| <= 128), so a row sums them in int16 for 8 groups (<= 16384) before one vpmaddwd
// widens them; the 4 rows' sums are reduced together and scaled as the generic kernel does.
#define BITNET_GEMV256_RUN 8

static void bitnet_gemv256(int n, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                           const int8_t * GGML_RESTRICT y, int nr, float wscale) {
    const int     ng = n / QK_I2_S;
    const int32_t sq = bitnet_row_sum(y, n);
    const float   d  = bitnet_row_d(y, n);
    const __m256i m3   = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    int r0 = 0;
    for (; r0 + 4 <= nr; r0 += 4) {
        const uint8_t * xr = x + r0*bx;
        __m256i acc[4];
        for (int r = 0; r < 4; ++r) {
            acc[r] = _mm256_setzero_si256();
        }
        for (int g0 = 0; g0 < ng; g0 += BITNET_GEMV256_RUN) {
            const int g1 = ng - g0 < BITNET_GEMV256_RUN ? ng : g0 + BITNET_GEMV256_RUN;
            __m256i a16[4];
            for (int r = 0; r < 4; ++r) {
                a16[r] = _mm256_setzero_si256();
            }
            for (int g = g0; g < g1; ++g) {
                const __m256i * q = (const __m256i *)(y + g*QK_I2_S);
                for (int r = 0; r < 4; ++r) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(xr + r*bx + g*I2_S_GROUP_B));
                    const __m256i p01 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), m3), _mm256_loadu_si256(q + 0)),
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m3), _mm256_loadu_si256(q + 1)));
                    const __m256i p23 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), m3), _mm256_loadu_si256(q + 2)),
                        _mm256_maddubs_epi16(_mm256_and_si256(v, m3), _mm256_loadu_si256(q + 3)));
                    a16[r] = _mm256_add_epi16(a16[r], _mm256_add_epi16(p01, p23));
                }
            }
            for (int r = 0; r < 4; ++r) {
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(a16[r], ones));
            }
        }
        // lanes of both halves: rows 0..3 partial sums, then the halves added
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
        const __m128i isum = _mm_sub_epi32(_mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)),
                                           _mm_set1_epi32(sq));
        // (float) isum * d * wscale, in the generic kernel's order
        _mm_storeu_ps(s + r0, _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), _mm_set1_ps(d)), _mm_set1_ps(wscale)));
    }
    for (; r0 < nr; ++r0) {
        bitnet_tile256(ng, s + r0, 0, x + r0*bx, bx, y, 0, wscale, 1, 1);
    }
}
#define BITNET_GEMV256 1
#endif

#endif

#if defined(BITNET_TILE)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define BITNET_R 4   // weight rows per tile: 4 x 4 accumulators + 8 activation vectors fit in 32 zmm
#else
#define BITNET_R 2   // 16 ymm: 2 x 4 accumulators + 8 unpacked weight vectors
#endif
#define BITNET_C 4   // activation columns per tile

// one tile of r <= BITNET_R rows and c <= BITNET_C columns, dispatched to fixed-size bodies
// (constant R, C let the compiler keep the accumulator arrays in registers)
static void bitnet_tile(int ng, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, size_t bx,
                        const int8_t * GGML_RESTRICT y, size_t by, float wscale, int r, int c) {
    if (r == BITNET_R) {
        switch (c) {
            case 4:  BITNET_TILE(s, x, BITNET_R, 4); return;
            case 3:  BITNET_TILE(s, x, BITNET_R, 3); return;
            case 2:  BITNET_TILE(s, x, BITNET_R, 2); return;
            default: BITNET_TILE(s, x, BITNET_R, 1); return;
        }
    }
    for (int i = 0; i < r; ++i) {  // row remainder: one row at a time
        float         * si = s + i;
        const uint8_t * xi = x + i*bx;
        switch (c) {
            case 4:  BITNET_TILE(si, xi, 1, 4); break;
            case 3:  BITNET_TILE(si, xi, 1, 3); break;
            case 2:  BITNET_TILE(si, xi, 1, 2); break;
            default: BITNET_TILE(si, xi, 1, 1); break;
        }
    }
}

void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
    const int       ng = n / QK_I2_S;
    const uint8_t * x  = (const uint8_t *) vx;
    const int8_t  * y  = (const int8_t *) vy;
    const int       cb = bitnet_col_block(n);
#if defined(BITNET_GEMV_MAXN)
    if (nc == 1 && n <= BITNET_GEMV_MAXN) {
        bitnet_gemv512(n, s, x, bx, y, nr, wscale);
        return;
    }
#elif defined(BITNET_GEMV256)
    if (nc == 1) {
        bitnet_gemv256(n, s, x, bx, (const int8_t *) y, nr, wscale);
        return;
    }
#endif
    for (int c0 = 0; c0 < nc; c0 += cb) {           // columns: L2-sized blocks
        const int c1 = c0 + cb < nc ? c0 + cb : nc;
        for (int r0 = 0; r0 < nr; r0 += BITNET_R) { // rows: the tile's codes stay in L1 ...
            const int rn = nr - r0 < BITNET_R ? nr - r0 : BITNET_R;
            for (int c = c0; c < c1; c += BITNET_C) { // ... while the block's columns pass by
                const int cn = c1 - c < BITNET_C ? c1 - c : BITNET_C;
                bitnet_tile(ng, s + c*bs + r0, bs, x + r0*bx, bx, y + c*by, by, wscale, rn, cn);
            }
        }
    }
}

void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    // one row, one column; the scale sits after the n/4 code bytes
    bitnet_tile(n / QK_I2_S, s, 0, (const uint8_t *) vx, 0, (const int8_t *) vy, 0, ggml_i2_s_scale(vx, n), 1, 1);
}

#else

void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    ggml_vec_dot_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nrc);
}

void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
    ggml_gemm_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nr, nc, wscale);
}

#endif

// ---------------------------------------------------------------- TL1 / TL2 (lookup tables)
//
// A full chunk (16 rows x 4 groups = 64 lanes, lane 4i + j) becomes one vector of 64 byte
// indices into the chunk's tables: TL2 code | j << 5 into 4 x 32 entries (128 bytes, two zmm:
// vpermi2b), TL1 code | j << 4 into 4 x 16 entries (one zmm: vpermb). One lookup gives all 64
// partial dot products; dpbusd against ones then adds each row's 4 groups into one int32 lane.
// Low (unsigned) and high (signed) table bytes are looked up and summed apart: the dot is
// sum(lo) + 256 * sum(hi), exactly.
//
// Blocking: the LUTs of a batch of activation columns stay in L2 while the thread's row tiles
// stream past; R tiles x C columns of accumulators live in registers, so each index vector is
// used C times and each table R times: 3 x 3 (inline asm) for prompts, 8 x 1 with the next 8
// tiles prefetched for token generation.

#if defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)

// trits of the codes, most significant first: TL2 codes 0..26 (27..31 unused, give 0)
static const int16_t tl2_trits[3][32] = {
    {-1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0},
};
// TL1 codes 0..8 (9..15 unused)
static const int16_t tl1_trits[2][16] = {
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0},
};

// ggml_tl_build_lut: one group's table per vector (int16), the low and high bytes of two groups
// gathered by one vpermt2b (TL2)
static void tl_build_lut512(enum ggml_type type, const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int ngroups = (int) ggml_tl_chunks(type, n) * TL_CHUNK;
    if (type == GGML_TYPE_TL2) {
        const __m512i t0 = _mm512_loadu_si512(tl2_trits[0]);
        const __m512i t1 = _mm512_loadu_si512(tl2_trits[1]);
        const __m512i t2 = _mm512_loadu_si512(tl2_trits[2]);
        const __m512i even = _mm512_set_epi8(126, 124, 122, 120, 118, 116, 114, 112, 110, 108, 106, 104, 102, 100, 98, 96,
                                             94, 92, 90, 88, 86, 84, 82, 80, 78, 76, 74, 72, 70, 68, 66, 64,
                                             62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                                             30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd  = _mm512_add_epi8(even, _mm512_set1_epi8(1));
        for (int g = 0; g < ngroups; g += 2) {
            __m512i v[2];
            for (int h = 0; h < 2; ++h) {
                const int k = 3*(g + h);
                v[h] = _mm512_mullo_epi16(_mm512_set1_epi16(k < n ? q[k] : 0), t0);
                v[h] = _mm512_add_epi16(v[h], _mm512_mullo_epi16(_mm512_set1_epi16(k + 1 < n ? q[k + 1] : 0), t1));
                v[h] = _mm512_add_epi16(v[h], _mm512_mullo_epi16(_mm512_set1_epi16(k + 2 < n ? q[k + 2] : 0), t2));
            }
            uint8_t * dst = lut + (g / TL_CHUNK)*256 + (g % TL_CHUNK)*32;
            _mm512_storeu_si512(dst,       _mm512_permutex2var_epi8(v[0], even, v[1]));  // value & 0xFF
            _mm512_storeu_si512(dst + 128, _mm512_permutex2var_epi8(v[0], odd,  v[1]));  // value >> 8
        }
    } else {
        const __m256i t0 = _mm256_loadu_si256((const __m256i *) tl1_trits[0]);
        const __m256i t1 = _mm256_loadu_si256((const __m256i *) tl1_trits[1]);
        for (int g = 0; g < ngroups; ++g) {
            const int k = 2*g;
            __m256i v = _mm256_mullo_epi16(_mm256_set1_epi16(k < n ? q[k] : 0), t0);
            v = _mm256_add_epi16(v, _mm256_mullo_epi16(_mm256_set1_epi16(k + 1 < n ? q[k + 1] : 0), t1));
            uint8_t * dst = lut + (g / TL_CHUNK)*128 + (g % TL_CHUNK)*16;
            _mm_storeu_si128((__m128i *) dst,        _mm256_cvtepi16_epi8(v));
            _mm_storeu_si128((__m128i *) (dst + 64), _mm256_cvtepi16_epi8(_mm256_srai_epi16(v, 8)));
        }
    }
}

// the 64 table indices of a full chunk
BITNET_INLINE __m512i tl_index(const uint8_t * GGML_RESTRICT chunk, const int tl2) {
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);   // upper half: high nibbles
    const __m512i m0f   = _mm512_set1_epi8(0x0F);
    const __m512i group = _mm512_set1_epi32(tl2 ? 0x60402000 : 0x30201000);  // j << 5 / j << 4, lane 4i + j
    __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) chunk));
    z = _mm512_srlv_epi64(z, shift);
    z = _mm512_ternarylogic_epi32(z, m0f, group, 0xEA);              // (z & m0f) | group
    if (tl2) {  // bit 4 of the codes, one mask bit per lane
        uint64_t bit4;
        memcpy(&bit4, chunk + 32, sizeof(bit4));
        z = _mm512_mask_add_epi8(z, _cvtu64_mask64(bit4), z, _mm512_set1_epi8(0x10));
    }
    return z;
}

// R full tiles x C columns over all chunks; s points at row 0 of column 0. Perm and dpbusd
// share two ports (measured on Zen 5), so only the low bytes go through dpbusd: the high bytes
// (TL2: -2..1, TL1: -1..0 per lane and chunk) are summed with vpaddb in int8 for TL_RUN chunks,
// then widened exactly. pf: prefetch the next R tiles (they follow these in memory), R*chunk_b
// bytes per chunk, so that the weight stream of token generation is in cache ahead of use.
#define TL_RUN(tl2) ((tl2) ? 64 : 128)

BITNET_INLINE void tl_tiles(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                            size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs,
                            const int tl2, const int R, const int C, const int pf) {
    const int     chunk_b = tl2 ? 40 : 32;   // 32 nibble bytes (+ TL2: the 64-bit mask of bit 4)
    const int     table_b = tl2 ? 256 : 128; // LUT bytes per chunk
    const __m512i ones    = _mm512_set1_epi8(1);
    const uint8_t * pfp   = x + R*tile_b;
    __m512i acc_lo[8][2], acc_hi[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
        for (int c = 0; c < C; ++c) {
            acc_lo[r][c] = _mm512_setzero_si512();
        }
    }
    for (int ch0 = 0; ch0 < nch; ch0 += TL_RUN(tl2)) {
        const int ch1 = nch - ch0 < TL_RUN(tl2) ? nch : ch0 + TL_RUN(tl2);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                acc_hi[r][c] = _mm512_setzero_si512();
            }
        }
        for (int ch = ch0; ch < ch1; ++ch) {
            if (pf) {
#pragma GCC unroll 8
                for (int o = 0; o < R*chunk_b; o += 64) {
                    _mm_prefetch((const char *) pfp + ch*R*chunk_b + o, _MM_HINT_T0);
                }
            }
            __m512i idx[8];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                idx[r] = tl_index(x + r*tile_b + ch*chunk_b, tl2);
            }
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                const uint8_t * t = lut + c*lut_b + ch*table_b;
                if (tl2) {
                    const __m512i lo_a = _mm512_load_si512(t),       lo_b = _mm512_load_si512(t + 64);
                    const __m512i hi_a = _mm512_load_si512(t + 128), hi_b = _mm512_load_si512(t + 192);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        acc_lo[r][c] = _mm512_dpbusd_epi32(acc_lo[r][c], _mm512_permutex2var_epi8(lo_a, idx[r], lo_b), ones);
                        acc_hi[r][c] = _mm512_add_epi8(acc_hi[r][c], _mm512_permutex2var_epi8(hi_a, idx[r], hi_b));
                    }
                } else {
                    const __m512i lo = _mm512_load_si512(t), hi = _mm512_load_si512(t + 64);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        acc_lo[r][c] = _mm512_dpbusd_epi32(acc_lo[r][c], _mm512_permutexvar_epi8(idx[r], lo), ones);
                        acc_hi[r][c] = _mm512_add_epi8(acc_hi[r][c], _mm512_permutexvar_epi8(idx[r], hi));
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                const __m512i h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, acc_hi[r][c]);
                acc_lo[r][c] = _mm512_add_epi32(acc_lo[r][c], _mm512_slli_epi32(h, 8));
            }
        }
    }
    const __m512 ws = _mm512_set1_ps(wscale);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
        for (int c = 0; c < C; ++c) {
            // (float) isum * d * wscale, in the generic kernel's order
            const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc_lo[r][c]), _mm512_set1_ps(d[c])), ws);
            _mm512_storeu_ps(s + c*bs + r*TL_TILE_ROWS, v);
        }
    }
}

#if defined(__GNUC__)
// Prompt processing: 3 tiles x 3 columns in inline asm. GCC's allocation of tl_tiles at this
// size reloads the tables for every lookup and copies accumulators; here all 18 accumulators
// stay in registers and each table is loaded once per chunk. zmm0-8: int32 low-byte sums,
// zmm9-17: int8 high-byte sums (tile r, column c: 3r + c), zmm18-20: the tiles' indices,
// zmm21-24: one column's tables, zmm25/26: lookups, then constants; k7 selects the upper half
// (high nibbles), k1-k3: bit 4 of the TL2 codes.
#define TLK_ZERO3(A, B, C)                                                \
    "vpxord     %%zmm" #A ", %%zmm" #A ", %%zmm" #A "\n\t"                 \
    "vpxord     %%zmm" #B ", %%zmm" #B ", %%zmm" #B "\n\t"                 \
    "vpxord     %%zmm" #C ", %%zmm" #C ", %%zmm" #C "\n\t"
#define TLK_ZERO_ALL                                                      \
    TLK_ZERO3(0, 1, 2) TLK_ZERO3(3, 4, 5) TLK_ZERO3(6, 7, 8)
#define TLK_ZERO_HI                                                       \
    TLK_ZERO3(9, 10, 11) TLK_ZERO3(12, 13, 14) TLK_ZERO3(15, 16, 17)
// cnt = min(left, run); left -= cnt
#define TLK_RUN(RUN)                                                      \
    "mov        $" #RUN ", %[cnt]\n\t"                                     \
    "cmp        %[cnt], %[left]\n\t"                                       \
    "cmovb      %[left], %[cnt]\n\t"                                       \
    "sub        %[cnt], %[left]\n\t"
// low sum += 256 * (sum of the 4 high bytes of each row); T is a scratch register
#define TLK_WIDEN(AL, AH, ONES, T)                                        \
    "vpxord     %%zmm" #T ", %%zmm" #T ", %%zmm" #T "\n\t"                 \
    "vpdpbusd   %%zmm" #AH ", %%zmm" #ONES ", %%zmm" #T "\n\t"             \
    "vpslld     $8, %%zmm" #T ", %%zmm" #T "\n\t"                          \
    "vpaddd     %%zmm" #T ", %%zmm" #AL ", %%zmm" #AL "\n\t"
#define TLK_WIDEN_ALL(ONES, T)                                            \
    TLK_WIDEN(0, 9, ONES, T)  TLK_WIDEN(1, 10, ONES, T) TLK_WIDEN(2, 11, ONES, T) \
    TLK_WIDEN(3, 12, ONES, T) TLK_WIDEN(4, 13, ONES, T) TLK_WIDEN(5, 14, ONES, T) \
    TLK_WIDEN(6, 15, ONES, T) TLK_WIDEN(7, 16, ONES, T) TLK_WIDEN(8, 17, ONES, T)
#define TLK_STORE_ALL                                                     \
    "vmovdqu64  %%zmm0, (%[acc])\n\t"     "vmovdqu64 %%zmm1, 64(%[acc])\n\t"   \
    "vmovdqu64  %%zmm2, 128(%[acc])\n\t"  "vmovdqu64 %%zmm3, 192(%[acc])\n\t"  \
    "vmovdqu64  %%zmm4, 256(%[acc])\n\t"  "vmovdqu64 %%zmm5, 320(%[acc])\n\t"  \
    "vmovdqu64  %%zmm6, 384(%[acc])\n\t"  "vmovdqu64 %%zmm7, 448(%[acc])\n\t"  \
    "vmovdqu64  %%zmm8, 512(%[acc])\n\t"
// index of a tile's chunk: 32 nibble bytes to both halves, upper half shifted, (z & 0x0F) | j
#define TLK_INDEX(I, XA, M0F, GRP)                                        \
    "vbroadcasti64x4 " XA ", %%zmm" #I "\n\t"                              \
    "vpsrlq     $4, %%zmm" #I ", %%zmm" #I "%{%%k7%}\n\t"                  \
    "vpternlogd $0xea, %%zmm" #GRP ", %%zmm" #M0F ", %%zmm" #I "\n\t"
#define TLK_CLOBBERS                                                      \
    "cc", "memory", "k1", "k2", "k3", "k7",                               \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
    "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", \
    "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30"

// TL2: tables zmm21-24 (low a/b, high a/b); zmm27 ones, zmm28 0x0F, zmm29 j << 5, zmm30 0x10.
// vpermi2b overwrites its index, so the index is copied except at its last use.
#define TL2K_INDEX(I, XA, K)                                              \
    TLK_INDEX(I, XA, 28, 29)                                              \
    "kmovq      32" XA ", %%k" #K "\n\t"                                   \
    "vpaddb     %%zmm30, %%zmm" #I ", %%zmm" #I "%{%%k" #K "%}\n\t"
#define TL2K_TABLES(LA)                                                   \
    "vmovdqa64  " LA ", %%zmm21\n\t"                                       \
    "vmovdqa64  64" LA ", %%zmm22\n\t"                                     \
    "vmovdqa64  128" LA ", %%zmm23\n\t"                                    \
    "vmovdqa64  192" LA ", %%zmm24\n\t"
#define TL2K_LO(I, AL)                                                    \
    "vmovdqa64  %%zmm" #I ", %%zmm25\n\t"                                  \
    "vpermi2b   %%zmm22, %%zmm21, %%zmm25\n\t"                             \
    "vpdpbusd   %%zmm27, %%zmm25, %%zmm" #AL "\n\t"
#define TL2K_LOOK(I, AL, AH)                                              \
    TL2K_LO(I, AL)                                                        \
    "vmovdqa64  %%zmm" #I ", %%zmm26\n\t"                                  \
    "vpermi2b   %%zmm24, %%zmm23, %%zmm26\n\t"                             \
    "vpaddb     %%zmm26, %%zmm" #AH ", %%zmm" #AH "\n\t"
#define TL2K_LOOK_LAST(I, AL, AH)                                         \
    TL2K_LO(I, AL)                                                        \
    "vpermi2b   %%zmm24, %%zmm23, %%zmm" #I "\n\t"                         \
    "vpaddb     %%zmm" #I ", %%zmm" #AH ", %%zmm" #AH "\n\t"

// TL1: tables zmm21/22 (low, high); zmm25 ones, zmm26 0x0F, zmm27 j << 4. vpermb keeps its index.
#define TL1K_TABLES(LA)                                                   \
    "vmovdqa64  " LA ", %%zmm21\n\t"                                       \
    "vmovdqa64  64" LA ", %%zmm22\n\t"
#define TL1K_LOOK(I, AL, AH)                                              \
    "vpermb     %%zmm21, %%zmm" #I ", %%zmm23\n\t"                         \
    "vpdpbusd   %%zmm25, %%zmm23, %%zmm" #AL "\n\t"                        \
    "vpermb     %%zmm22, %%zmm" #I ", %%zmm24\n\t"                         \
    "vpaddb     %%zmm24, %%zmm" #AH ", %%zmm" #AH "\n\t"

// dword constants: ones, 0x0F, 0x10, TL2 j << 5, TL1 j << 4 (lane 4i + j)
static const int32_t tlk_const[5] = { 0x01010101, 0x0F0F0F0F, 0x10101010, 0x60402000, 0x30201000 };

// acc[3r + c] = int32 row sums of tile r (x + r*tile_b) with column c (LUT at lut + c*lut_b)
static void tl_tiles3x3_asm(int tl2, int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                            size_t lut_b, __m512i * GGML_RESTRICT acc) {
    size_t left = (size_t) nch, cnt;
    if (tl2) {
        __asm__ volatile(
            "vpbroadcastd (%[k]), %%zmm27\n\t"
            "vpbroadcastd 4(%[k]), %%zmm28\n\t"
            "vpbroadcastd 12(%[k]), %%zmm29\n\t"
            "vpbroadcastd 8(%[k]), %%zmm30\n\t"
            "movl       $0xf0, %k[cnt]\n\t"
            "kmovb      %k[cnt], %%k7\n\t"
            TLK_ZERO_ALL
            "2:\n\t"
            TLK_RUN(64)
            TLK_ZERO_HI
            "1:\n\t"
            TL2K_INDEX(18, "(%[x])", 1)
            TL2K_INDEX(19, "(%[x],%[tb])", 2)
            TL2K_INDEX(20, "(%[x],%[tb],2)", 3)
            TL2K_TABLES("(%[lut])")
            TL2K_LOOK(18, 0, 9)       TL2K_LOOK(19, 3, 12)      TL2K_LOOK(20, 6, 15)
            TL2K_TABLES("(%[lut],%[lb])")
            TL2K_LOOK(18, 1, 10)      TL2K_LOOK(19, 4, 13)      TL2K_LOOK(20, 7, 16)
            TL2K_TABLES("(%[lut],%[lb],2)")
            TL2K_LOOK_LAST(18, 2, 11) TL2K_LOOK_LAST(19, 5, 14) TL2K_LOOK_LAST(20, 8, 17)
            "add        $40, %[x]\n\t"
            "add        $256, %[lut]\n\t"
            "dec        %[cnt]\n\t"
            "jnz        1b\n\t"
            TLK_WIDEN_ALL(27, 25)
            "test       %[left], %[left]\n\t"
            "jnz        2b\n\t"
            TLK_STORE_ALL
            : [x] "+r" (x), [lut] "+r" (lut), [left] "+r" (left), [cnt] "=&r" (cnt)
            : [tb] "r" (tile_b), [lb] "r" (lut_b), [acc] "r" (acc), [k] "r" (tlk_const)
            : TLK_CLOBBERS);
    } else {
        __asm__ volatile(
            "vpbroadcastd (%[k]), %%zmm25\n\t"
            "vpbroadcastd 4(%[k]), %%zmm26\n\t"
            "vpbroadcastd 16(%[k]), %%zmm27\n\t"
            "movl       $0xf0, %k[cnt]\n\t"
            "kmovb      %k[cnt], %%k7\n\t"
            TLK_ZERO_ALL
            "2:\n\t"
            TLK_RUN(128)
            TLK_ZERO_HI
            "1:\n\t"
            TLK_INDEX(18, "(%[x])", 26, 27)
            TLK_INDEX(19, "(%[x],%[tb])", 26, 27)
            TLK_INDEX(20, "(%[x],%[tb],2)", 26, 27)
            TL1K_TABLES("(%[lut])")
            TL1K_LOOK(18, 0, 9)  TL1K_LOOK(19, 3, 12) TL1K_LOOK(20, 6, 15)
            TL1K_TABLES("(%[lut],%[lb])")
            TL1K_LOOK(18, 1, 10) TL1K_LOOK(19, 4, 13) TL1K_LOOK(20, 7, 16)
            TL1K_TABLES("(%[lut],%[lb],2)")
            TL1K_LOOK(18, 2, 11) TL1K_LOOK(19, 5, 14) TL1K_LOOK(20, 8, 17)
            "add        $32, %[x]\n\t"
            "add        $128, %[lut]\n\t"
            "dec        %[cnt]\n\t"
            "jnz        1b\n\t"
            TLK_WIDEN_ALL(25, 23)
            "test       %[left], %[left]\n\t"
            "jnz        2b\n\t"
            TLK_STORE_ALL
            : [x] "+r" (x), [lut] "+r" (lut), [left] "+r" (left), [cnt] "=&r" (cnt)
            : [tb] "r" (tile_b), [lb] "r" (lut_b), [acc] "r" (acc), [k] "r" (tlk_const)
            : TLK_CLOBBERS);
    }
}

static void tl_tiles3x3(int tl2, int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                        size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {
    __m512i acc[9];
    tl_tiles3x3_asm(tl2, nch, x, tile_b, lut, lut_b, acc);
    const __m512 ws = _mm512_set1_ps(wscale);
    for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) {
            const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[3*r + c]), _mm512_set1_ps(d[c])), ws);
            _mm512_storeu_ps(s + c*bs + r*TL_TILE_ROWS, v);
        }
    }
}
#define TL_TILES3X3 tl_tiles3x3
#endif

// the full tiles of a batch of columns whose LUTs are built
BITNET_INLINE void tl_batch(int nch, int full, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                            size_t lut_b, const float * d, int cn, float wscale, float * GGML_RESTRICT s, size_t bs, const int tl2) {
#define TL_TILES(T, C0, R, C, PF) \
    tl_tiles(nch, x + (T)*tile_b, tile_b, lut + (C0)*lut_b, lut_b, d + (C0), wscale, s + (C0)*bs + (T)*TL_TILE_ROWS, bs, tl2, R, C, PF)
    int t = 0;
    if (cn == 1) {  // token generation: 8 tiles share each table load, the next 8 are prefetched
        for (; t + 8 <= full; t += 8) {
            TL_TILES(t, 0, 8, 1, 1);
        }
        for (; t + 2 <= full; t += 2) {
            TL_TILES(t, 0, 2, 1, 1);
        }
    } else {
#if defined(TL_TILES3X3)
        if (cn >= 3) {
            for (; t + 3 <= full; t += 3) {
                int c = 0;
                for (; c + 3 <= cn; c += 3) {
                    TL_TILES3X3(tl2, nch, x + t*tile_b, tile_b, lut + c*lut_b, lut_b, d + c, wscale, s + c*bs + t*TL_TILE_ROWS, bs);
                }
                for (; c + 2 <= cn; c += 2) {
                    TL_TILES(t, c, 3, 2, 0);
                }
                for (; c < cn; ++c) {
                    TL_TILES(t, c, 3, 1, 0);
                }
            }
        }
#endif
        for (; t + 4 <= full; t += 4) {
            int c = 0;
            for (; c + 2 <= cn; c += 2) {
                TL_TILES(t, c, 4, 2, 0);
            }
            for (; c < cn; ++c) {
                TL_TILES(t, c, 4, 1, 0);
            }
        }
    }
    for (; t < full; ++t) {
        for (int c = 0; c < cn; ++c) {
            TL_TILES(t, c, 1, 1, 0);
        }
    }
#undef TL_TILES
}

static void tl_gemm512(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, int nr,
                       const int8_t * GGML_RESTRICT y, size_t by, int nc, float wscale, uint8_t * GGML_RESTRICT scratch) {
    const int    nch    = (int) ggml_tl_chunks(type, n);
    const size_t tile_b = (size_t) nch * ggml_tl_chunk_bytes(type, TL_TILE_ROWS);
    const size_t lut_b  = GGML_PAD(ggml_tl_lut_bytes(type, n), 64);
    const int    full   = nr / TL_TILE_ROWS;
    // LUT batches of whole groups of 3 columns (the 3 x 3 prompt tiles)
    int batch = ggml_tl_lut_batch(lut_b);
    batch = batch < 3 ? 3 : batch - batch % 3;

    for (int c0 = 0; c0 < nc; c0 += batch) {
        const int cn = nc - c0 < batch ? nc - c0 : batch;
        float d[TL_SCRATCH_COLS];
        for (int c = 0; c < cn; ++c) {
            const int8_t * q = y + (c0 + c)*by;
            tl_build_lut512(type, q, n, scratch + c*lut_b);
            memcpy(&d[c], q + n, sizeof(float));
        }
        if (type == GGML_TYPE_TL2) {
            tl_batch(nch, full, x, tile_b, scratch, lut_b, d, cn, wscale, s + c0*bs, bs, 1);
        } else {
            tl_batch(nch, full, x, tile_b, scratch, lut_b, d, cn, wscale, s + c0*bs, bs, 0);
        }
        if (full*TL_TILE_ROWS < nr) {  // the tensor's last, shorter tile
            ggml_gemm_tl_i8_s_generic(type, n, s + c0*bs + full*TL_TILE_ROWS, bs, x + full*tile_b,
                                      nr - full*TL_TILE_ROWS, y + c0*by, by, cn, wscale, NULL);
        }
    }
}

#elif defined(__AVX2__)

// AVX2 (no byte permutes across 64 entries): a chunk's 64 lanes are transposed once into two
// vectors whose 128-bit halves each hold one group's 16 rows -- X = (group 0 | group 2),
// Y = (group 1 | group 3) -- so that pshufb's per-half 16-entry tables fit. The 32 nibble bytes
// are transposed before the nibbles are split (byte b holds rows b/4 and 8 + b/4 of the same
// group), and bit 4 is expanded straight into X/Y order; codes 0-15 and 16-31 are two lookups
// blended by bit 4. Low and high table bytes are interleaved into exact int16 values and summed
// in int16 for up to 32 chunks (|2 x 384| per chunk), then widened. Each transposed chunk serves
// C activation columns. This path keeps its own table order (per chunk, 8 vectors: X's low bytes
// for codes 0-15 and 16-31, X's high bytes, then Y's).

#define TL2_CHUNK_B 40
#define TL2_FLUSH   32  // chunks summed in int16 before widening
#define TL2_AVX2_C  4   // activation columns per pass over a tile

static const int16_t tl2_trits[3][32] = {
    {-1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0},
};

// one group's 32 table values as (low bytes, high bytes), each ordered codes 0-15 | codes 16-31
static inline void tl2_group_bytes(int16_t a0, int16_t a1, int16_t a2, __m256i * lo, __m256i * hi) {
    __m256i v[2];
    for (int h = 0; h < 2; ++h) {
        __m256i x = _mm256_mullo_epi16(_mm256_set1_epi16(a0), _mm256_loadu_si256((const __m256i *) (tl2_trits[0] + 16*h)));
        x = _mm256_add_epi16(x, _mm256_mullo_epi16(_mm256_set1_epi16(a1), _mm256_loadu_si256((const __m256i *) (tl2_trits[1] + 16*h))));
        x = _mm256_add_epi16(x, _mm256_mullo_epi16(_mm256_set1_epi16(a2), _mm256_loadu_si256((const __m256i *) (tl2_trits[2] + 16*h))));
        v[h] = x;
    }
    const __m256i mff = _mm256_set1_epi16(0xFF);
    // packs work per 128-bit half: reorder the 64-bit pieces back to code order
    *lo = _mm256_permute4x64_epi64(_mm256_packus_epi16(_mm256_and_si256(v[0], mff), _mm256_and_si256(v[1], mff)), 0xD8);
    *hi = _mm256_permute4x64_epi64(_mm256_packs_epi16(_mm256_srai_epi16(v[0], 8), _mm256_srai_epi16(v[1], 8)), 0xD8);
}

static void tl2_build_lut_avx2(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int nch = (int) ggml_tl_chunks(GGML_TYPE_TL2, n);
    for (int c = 0; c < nch; ++c) {
        __m256i lo[4], hi[4];
        for (int j = 0; j < 4; ++j) {
            const int k = 3*(4*c + j);
            tl2_group_bytes(k < n ? q[k] : 0, k + 1 < n ? q[k + 1] : 0, k + 2 < n ? q[k + 2] : 0, &lo[j], &hi[j]);
        }
        __m256i * t = (__m256i *) (lut + c*256);
        for (int xy = 0; xy < 2; ++xy) {  // X: groups 0 and 2, Y: groups 1 and 3
            const int ja = xy, jb = xy + 2;
            _mm256_storeu_si256(t + 4*xy + 0, _mm256_permute2x128_si256(lo[ja], lo[jb], 0x20));
            _mm256_storeu_si256(t + 4*xy + 1, _mm256_permute2x128_si256(lo[ja], lo[jb], 0x31));
            _mm256_storeu_si256(t + 4*xy + 2, _mm256_permute2x128_si256(hi[ja], hi[jb], 0x20));
            _mm256_storeu_si256(t + 4*xy + 3, _mm256_permute2x128_si256(hi[ja], hi[jb], 0x31));
        }
    }
}

// bytes of the 64-bit mask m set to 0xFF where the lane's bit is set, lanes in X or Y order:
// X byte k is lane 4 (k % 16) + 2 (k / 16), Y byte k the lane after it
static inline __m256i tl2_bit4(__m256i m, const int y) {
    const __m256i selx = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                          0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i bitx = _mm256_setr_epi8(1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16,
                                          4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64);
    const __m256i bit = y ? _mm256_add_epi8(bitx, bitx) : bitx;
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(m, selx), bit), bit);
}

// a full chunk's low code bits as X and Y, and the bit-4 masks in the same order
static inline void tl2_transpose(const uint8_t * GGML_RESTRICT chunk, __m256i * X, __m256i * Y, __m256i * MX, __m256i * MY) {
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    // per 16 bytes (4 rows x 4 groups): group-major, then the 4 x 4 dwords across the halves
    const __m256i gm = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // half h: group 2h rows 0-7 (qword 0) and group 2h + 1 rows 0-7 (qword 1); rows 8-15 in the high nibbles
    const __m256i t  = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *) chunk), gm), perm);
    const __m256i lo = _mm256_and_si256(t, m0f);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), m0f);
    *X = _mm256_unpacklo_epi64(lo, hi);
    *Y = _mm256_unpackhi_epi64(lo, hi);
    int64_t bits;
    memcpy(&bits, chunk + 32, sizeof(bits));
    const __m256i m = _mm256_set1_epi64x(bits);
    *MX = tl2_bit4(m, 0);
    *MY = tl2_bit4(m, 1);
}

// low or high table bytes of 32 codes: codes 0-15 from t[0], 16-31 from t[1], chosen by bit 4
static inline __m256i tl2_lookup(const __m256i * t, __m256i i, __m256i m) {
    return _mm256_blendv_epi8(_mm256_shuffle_epi8(_mm256_loadu_si256(t), i), _mm256_shuffle_epi8(_mm256_loadu_si256(t + 1), i), m);
}

// R full tiles (tile_b apart) x C columns (LUTs lut_b apart); s points at row 0 of column 0.
// R > 1 for token generation: the second tile reads the chunk's tables from L1. With one
// column the next R tiles are prefetched.
BITNET_INLINE void tl2_tiles_avx2(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                                  size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs,
                                  const int R, const int C) {
    __m256i acc_lo[2][TL2_AVX2_C], acc_hi[2][TL2_AVX2_C];  // int32 rows 0-7, 8-15
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            acc_lo[r][c] = _mm256_setzero_si256();
            acc_hi[r][c] = _mm256_setzero_si256();
        }
    }
    for (int c0 = 0; c0 < nch; c0 += TL2_FLUSH) {
        const int c1 = c0 + TL2_FLUSH < nch ? c0 + TL2_FLUSH : nch;
        __m256i s_lo[2][TL2_AVX2_C], s_hi[2][TL2_AVX2_C];  // int16
        for (int r = 0; r < R; ++r) {
            for (int c = 0; c < C; ++c) {
                s_lo[r][c] = _mm256_setzero_si256();
                s_hi[r][c] = _mm256_setzero_si256();
            }
        }
        for (int ch = c0; ch < c1; ++ch) {
            if (C == 1) {  // the next R tiles follow these: fetch them ahead of use
                for (int o = 0; o < R*TL2_CHUNK_B; o += 64) {
                    _mm_prefetch((const char *) x + R*tile_b + ch*R*TL2_CHUNK_B + o, _MM_HINT_T0);
                }
            }
            __m256i X[2], Y[2], MX[2], MY[2];
            for (int r = 0; r < R; ++r) {
                tl2_transpose(x + r*tile_b + ch*TL2_CHUNK_B, &X[r], &Y[r], &MX[r], &MY[r]);
            }
            for (int c = 0; c < C; ++c) {
                const __m256i * t = (const __m256i *) (lut + c*lut_b + ch*256);
                for (int r = 0; r < R; ++r) {
                    const __m256i xl = tl2_lookup(t + 0, X[r], MX[r]), xh = tl2_lookup(t + 2, X[r], MX[r]);
                    const __m256i yl = tl2_lookup(t + 4, Y[r], MY[r]), yh = tl2_lookup(t + 6, Y[r], MY[r]);
                    // exact int16 values: rows 0-7 from the low 8 bytes of each half, rows 8-15 from the high
                    s_lo[r][c] = _mm256_add_epi16(s_lo[r][c], _mm256_add_epi16(_mm256_unpacklo_epi8(xl, xh), _mm256_unpacklo_epi8(yl, yh)));
                    s_hi[r][c] = _mm256_add_epi16(s_hi[r][c], _mm256_add_epi16(_mm256_unpackhi_epi8(xl, xh), _mm256_unpackhi_epi8(yl, yh)));
                }
            }
        }
        // the two halves hold groups (0+1) and (2+3) of the same rows
        for (int r = 0; r < R; ++r) {
            for (int c = 0; c < C; ++c) {
                acc_lo[r][c] = _mm256_add_epi32(acc_lo[r][c], _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_lo[r][c])),
                                                                               _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_lo[r][c], 1))));
                acc_hi[r][c] = _mm256_add_epi32(acc_hi[r][c], _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_hi[r][c])),
                                                                               _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_hi[r][c], 1))));
            }
        }
    }
    const __m256 ws = _mm256_set1_ps(wscale);
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            const __m256 vd = _mm256_set1_ps(d[c]);
            float * o = s + c*bs + r*TL_TILE_ROWS;
            _mm256_storeu_ps(o,     _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc_lo[r][c]), vd), ws));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc_hi[r][c]), vd), ws));
        }
    }
}

static void tl2_gemm_avx2(int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, int nr,
                          const int8_t * GGML_RESTRICT y, size_t by, int nc, float wscale, uint8_t * GGML_RESTRICT scratch) {
    const int    nch    = (int) ggml_tl_chunks(GGML_TYPE_TL2, n);
    const size_t tile_b = (size_t) nch * TL2_CHUNK_B;
    const size_t lut_b  = GGML_PAD(ggml_tl_lut_bytes(GGML_TYPE_TL2, n), 64);
    const int    full   = nr / TL_TILE_ROWS;
    const int    batch  = ggml_tl_lut_batch(lut_b);
    for (int c0 = 0; c0 < nc; c0 += batch) {
        const int cn = nc - c0 < batch ? nc - c0 : batch;
        float d[TL_SCRATCH_COLS];
        for (int c = 0; c < cn; ++c) {
            const int8_t * q = y + (c0 + c)*by;
            tl2_build_lut_avx2(q, n, scratch + c*lut_b);
            memcpy(&d[c], q + n, sizeof(float));
        }
#define TL2_TILES_AVX2(T, C0, R, C) \
        tl2_tiles_avx2(nch, x + (T)*tile_b, tile_b, scratch + (C0)*lut_b, lut_b, d + (C0), wscale, s + (c0 + (C0))*bs + (T)*TL_TILE_ROWS, bs, R, C)
        int t = 0;
        if (cn == 1) {
            for (; t + 2 <= full; t += 2) {
                TL2_TILES_AVX2(t, 0, 2, 1);
            }
        }
        for (; t < full; ++t) {
            int c = 0;
            for (; c + TL2_AVX2_C <= cn; c += TL2_AVX2_C) {
                TL2_TILES_AVX2(t, c, 1, TL2_AVX2_C);
            }
            switch (cn - c) {
                case 3: TL2_TILES_AVX2(t, c, 1, 3); break;
                case 2: TL2_TILES_AVX2(t, c, 1, 2); break;
                case 1: TL2_TILES_AVX2(t, c, 1, 1); break;
                default: break;
            }
        }
#undef TL2_TILES_AVX2
        if (full*TL_TILE_ROWS < nr) {  // the tensor's last, shorter tile
            ggml_gemm_tl_i8_s_generic(GGML_TYPE_TL2, n, s + c0*bs + full*TL_TILE_ROWS, bs, x + full*tile_b,
                                      nr - full*TL_TILE_ROWS, y + c0*by, by, cn, wscale, NULL);
        }
    }
}

#endif

void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
#if defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
    tl_gemm512(type, n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
    return;
#elif defined(__AVX2__)
    if (type == GGML_TYPE_TL2) {
        tl2_gemm_avx2(n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
        return;
    }
#endif
    ggml_gemm_tl_i8_s_generic(type, n, s, bs, vx, nr, vy, by, nc, wscale, scratch);
}
