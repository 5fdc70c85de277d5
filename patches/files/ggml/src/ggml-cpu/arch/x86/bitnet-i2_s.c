// bitnet-tools: x86 kernels for I8_S activations and I2_S weights (AVX2, AVX-VNNI, AVX-512 VNNI).
// Scalar reference: ../../bitnet.c; the drivers and tile tables' types: ../../bitnet-impl.h.
//
// All paths compute sum(code * q) exactly with u8 x s8 dot products and subtract sum(q)
// (stored in the I8_S row), since sum((code - 1) * q) = sum(code * q) - sum(q). The float
// result is then formed exactly as the generic kernel does: (float) isum * d * wscale.
//
// Tiles of R weight rows x C columns keep R*C accumulators in registers, so each unpacked
// weight vector is reused C times and each activation vector R times. One column (token
// generation) has its own kernels: there the weights stream through once and the kernel is
// bound by how fast code bytes are consumed.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet-impl.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// ---------------------------------------------------------------- I8_S activations

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
    const float iscale = bitnet_i8_s_iscale(x, i, k, _mm512_reduce_max_ps(vmax));
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
    const float iscale = bitnet_i8_s_iscale(x, i, k, _mm_cvtss_f32(m4));
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

// ---------------------------------------------------------------- I2_S x I8_S

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)

#define BITNET_I2S_R 4   // weight rows per tile: 4 x 4 accumulators + 8 activation vectors fit in 32 zmm
#define BITNET_I2S_TILE bitnet_tile512

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

// The sums of four accumulators at once, [a, b, c, d]: pairs of lanes are added within each
// 128-bit lane first, so the x64 lanes (lower half) and x16 lanes (upper half) stay apart until
// one shift scales them back. The shift is exact: sums of multiples of 64 (16) are multiples of 64 (16).
BITNET_INLINE __m128i bitnet_hsum4x512(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    t = _mm512_srav_epi32(t, _mm512_inserti64x4(_mm512_set1_epi32(6), _mm256_set1_epi32(4), 1));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// R weight rows x C activation columns, full row length
BITNET_INLINE void bitnet_tile512(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, size_t bx,
                                  const int8_t * GGML_RESTRICT y, size_t by, float wscale, const int R, const int C) {
    const __m512i m = bitnet_mask512();
    __m512i acc[4][4];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            acc[r][c] = _mm512_setzero_si512();
        }
    }
    // The next R rows follow these in memory: fetch R*32 of their bytes per group, so that they
    // arrive from DRAM while this tile computes (hardware prefetchers do not ramp up on rows this
    // short, and with few columns the loads would otherwise stall the dot products).
    const uint8_t * next = (const uint8_t *) x + R*bx;
    for (int g = 0; g < ng; ++g) {
        for (int r = 0; r < R; r += 2) {
            _mm_prefetch((const char *) next + g*R*32 + r*32, _MM_HINT_T0);
        }
        __m512i q0[4], q1[4];
        for (int c = 0; c < C; ++c) {
            q0[c] = _mm512_loadu_si512((const void *)(y + c*by + g*QK_I2_S));
            q1[c] = _mm512_loadu_si512((const void *)(y + c*by + g*QK_I2_S + 64));
        }
        for (int r = 0; r < R; ++r) {
            const __m512i v  = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) bitnet_i2s_group(x, bx, r, g)));
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
        if (R == 4) {
            // (float) isum * d * wscale for the 4 rows, in the generic kernel's order
            const __m128i isum = _mm_sub_epi32(bitnet_hsum4x512(acc[0][c], acc[1][c], acc[2][c], acc[3][c]), _mm_set1_epi32(sq));
            _mm_storeu_ps(s + c*bs, _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), _mm_set1_ps(d)), _mm_set1_ps(wscale)));
            continue;
        }
        for (int r = 0; r < R; ++r) {
            const int32_t isum = bitnet_hsum512(acc[r][c]) - sq;
            s[c*bs + r] = (float) isum * d * wscale;
        }
    }
}

#if defined(__GNUC__)
// The 4 x 4 tile (prompts and batched decoding) in inline asm: GCC's allocation of bitnet_tile512
// at this size copies the accumulators every group, spills two of them and reads each activation
// vector from memory four times (measured alone on L2-resident data: 1.2-1.4x faster here).
// zmm0-15 hold the sums (row r, column c: 4r + c) for the whole row, zmm16-23 one group's
// activations of the 4 columns (q[0..63], q[64..127]), zmm24 the mask, zmm25/26 one row's
// masked codes; pl walks the next tile's bytes, 128 per group.
#define BITNET_T4_ROW(XA, A0, A1, A2, A3)                 \
    "vbroadcasti64x4 " XA ", %%zmm25\n\t"                 \
    "vpsllq    $4, %%zmm25, %%zmm26\n\t"                  \
    "vpandd    %%zmm24, %%zmm25, %%zmm25\n\t"             \
    "vpandd    %%zmm24, %%zmm26, %%zmm26\n\t"             \
    "vpdpbusd  %%zmm16, %%zmm25, %%zmm" #A0 "\n\t"        \
    "vpdpbusd  %%zmm17, %%zmm25, %%zmm" #A1 "\n\t"        \
    "vpdpbusd  %%zmm18, %%zmm25, %%zmm" #A2 "\n\t"        \
    "vpdpbusd  %%zmm19, %%zmm25, %%zmm" #A3 "\n\t"        \
    "vpdpbusd  %%zmm20, %%zmm26, %%zmm" #A0 "\n\t"        \
    "vpdpbusd  %%zmm21, %%zmm26, %%zmm" #A1 "\n\t"        \
    "vpdpbusd  %%zmm22, %%zmm26, %%zmm" #A2 "\n\t"        \
    "vpdpbusd  %%zmm23, %%zmm26, %%zmm" #A3 "\n\t"

static void bitnet_tile512_4x4_asm(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, size_t bx,
                                   const int8_t * GGML_RESTRICT y, size_t by, float wscale) {
    __m512i acc[16];
    const __m512i   m   = bitnet_mask512();
    const uint8_t * x0  = (const uint8_t *) x;
    const int8_t  * y0  = y;
    const uint8_t * pl  = x0 + 4*bx;
    size_t          cnt = (size_t) ng;
    const size_t    bx3 = 3*bx, by3 = 3*by;
    static_assert(sizeof(block_i2_s) == 32, "the loop below steps by one group of codes");
    __asm__ volatile(
        "vmovdqa64 %[m], %%zmm24\n\t"
        "vpxord    %%zmm0, %%zmm0, %%zmm0\n\t"   "vpxord    %%zmm1, %%zmm1, %%zmm1\n\t"
        "vpxord    %%zmm2, %%zmm2, %%zmm2\n\t"   "vpxord    %%zmm3, %%zmm3, %%zmm3\n\t"
        "vpxord    %%zmm4, %%zmm4, %%zmm4\n\t"   "vpxord    %%zmm5, %%zmm5, %%zmm5\n\t"
        "vpxord    %%zmm6, %%zmm6, %%zmm6\n\t"   "vpxord    %%zmm7, %%zmm7, %%zmm7\n\t"
        "vpxord    %%zmm8, %%zmm8, %%zmm8\n\t"   "vpxord    %%zmm9, %%zmm9, %%zmm9\n\t"
        "vpxord    %%zmm10, %%zmm10, %%zmm10\n\t" "vpxord    %%zmm11, %%zmm11, %%zmm11\n\t"
        "vpxord    %%zmm12, %%zmm12, %%zmm12\n\t" "vpxord    %%zmm13, %%zmm13, %%zmm13\n\t"
        "vpxord    %%zmm14, %%zmm14, %%zmm14\n\t" "vpxord    %%zmm15, %%zmm15, %%zmm15\n\t"
        ".p2align 6\n\t"  // the loop starts a cache line: its speed does not move with the code before it
        "1:\n\t"
        "prefetcht0 (%[pl])\n\t"
        "prefetcht0 64(%[pl])\n\t"
        "vmovdqu64 (%[y0]), %%zmm16\n\t"
        "vmovdqu64 (%[y0],%[by]), %%zmm17\n\t"
        "vmovdqu64 (%[y0],%[by],2), %%zmm18\n\t"
        "vmovdqu64 (%[y0],%[by3]), %%zmm19\n\t"
        "vmovdqu64 64(%[y0]), %%zmm20\n\t"
        "vmovdqu64 64(%[y0],%[by]), %%zmm21\n\t"
        "vmovdqu64 64(%[y0],%[by],2), %%zmm22\n\t"
        "vmovdqu64 64(%[y0],%[by3]), %%zmm23\n\t"
        BITNET_T4_ROW("(%[x0])",         0, 1, 2, 3)
        BITNET_T4_ROW("(%[x0],%[bx])",   4, 5, 6, 7)
        BITNET_T4_ROW("(%[x0],%[bx],2)", 8, 9, 10, 11)
        BITNET_T4_ROW("(%[x0],%[bx3])",  12, 13, 14, 15)
        "add  $32, %[x0]\n\t"
        "sub  $-128, %[y0]\n\t"
        "sub  $-128, %[pl]\n\t"
        "dec  %[cnt]\n\t"
        "jnz  1b\n\t"
        "vmovdqu64 %%zmm0, (%[acc])\n\t"     "vmovdqu64 %%zmm1, 64(%[acc])\n\t"
        "vmovdqu64 %%zmm2, 128(%[acc])\n\t"  "vmovdqu64 %%zmm3, 192(%[acc])\n\t"
        "vmovdqu64 %%zmm4, 256(%[acc])\n\t"  "vmovdqu64 %%zmm5, 320(%[acc])\n\t"
        "vmovdqu64 %%zmm6, 384(%[acc])\n\t"  "vmovdqu64 %%zmm7, 448(%[acc])\n\t"
        "vmovdqu64 %%zmm8, 512(%[acc])\n\t"  "vmovdqu64 %%zmm9, 576(%[acc])\n\t"
        "vmovdqu64 %%zmm10, 640(%[acc])\n\t" "vmovdqu64 %%zmm11, 704(%[acc])\n\t"
        "vmovdqu64 %%zmm12, 768(%[acc])\n\t" "vmovdqu64 %%zmm13, 832(%[acc])\n\t"
        "vmovdqu64 %%zmm14, 896(%[acc])\n\t" "vmovdqu64 %%zmm15, 960(%[acc])\n\t"
        : [x0] "+r" (x0), [y0] "+r" (y0), [pl] "+r" (pl), [cnt] "+r" (cnt)
        : [m] "m" (m), [bx] "r" (bx), [bx3] "r" (bx3), [by] "r" (by), [by3] "r" (by3), [acc] "r" (acc)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
          "xmm23", "xmm24", "xmm25", "xmm26");
    const int n = ng*QK_I2_S;
    for (int c = 0; c < 4; ++c) {
        const int8_t * q = y + c*by;
        // (float) isum * d * wscale for the 4 rows, in the generic kernel's order
        const __m128i isum = _mm_sub_epi32(bitnet_hsum4x512(acc[c], acc[4 + c], acc[8 + c], acc[12 + c]),
                                           _mm_set1_epi32(bitnet_row_sum(q, n)));
        _mm_storeu_ps(s + c*bs, _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), _mm_set1_ps(bitnet_row_d(q, n))), _mm_set1_ps(wscale)));
    }
}
#define BITNET_I2S_TILE_4X4 bitnet_tile512_4x4_asm
#endif

// nc == 1 (token generation): weights stream through once, so the kernel is bound by how fast
// code bytes are consumed. Rows are read 64 bytes (two groups) per load; the activation row is
// first rearranged (once per call) so that each zmm of codes pairs with ready-made vectors:
//   a[0] = q[g][0..31]   | q[g+1][0..31]    with  x & 0xC0         (x 64)
//   a[1] = q[g][32..63]  | q[g+1][32..63]   with  x & 0x30         (x 16)
//   a[2] = q[g][64..95]  | q[g+1][64..95]   with  (x << 4) & 0xC0  (x 64)
//   a[3] = q[g][96..127] | q[g+1][96..127]  with  (x << 4) & 0x30  (x 16)
// Two accumulators per row (x64 and x16 lanes) are shifted back exactly before the sum.
#define BITNET_GEMV_MAXN 32768  // longest row whose rearranged activations live on the stack

// one row (the rows after the last group of 4, or every row where GNU inline asm is missing)
static void bitnet_gemv_row512(int ng, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x,
                               const __m512i * GGML_RESTRICT a, int32_t sq, float d, float wscale) {
    const __m512i m6 = _mm512_set1_epi8((char) 0xC0);
    const __m512i m4 = _mm512_set1_epi8(0x30);
    const int     np = ng / 2;
    __m512i acc6 = _mm512_setzero_si512(), acc4 = _mm512_setzero_si512();
    for (int p = 0; p < np; ++p) {
        const __m512i a0 = _mm512_load_si512(a + 4*p + 0);
        const __m512i a1 = _mm512_load_si512(a + 4*p + 1);
        const __m512i a2 = _mm512_load_si512(a + 4*p + 2);
        const __m512i a3 = _mm512_load_si512(a + 4*p + 3);
        const __m512i v  = _mm512_loadu_si512((const void *)(x + p*64));
        const __m512i v4 = _mm512_slli_epi64(v, 4);
        acc6 = _mm512_dpbusd_epi32(acc6, _mm512_and_si512(v,  m6), a0);
        acc4 = _mm512_dpbusd_epi32(acc4, _mm512_and_si512(v,  m4), a1);
        acc6 = _mm512_dpbusd_epi32(acc6, _mm512_and_si512(v4, m6), a2);
        acc4 = _mm512_dpbusd_epi32(acc4, _mm512_and_si512(v4, m4), a3);
    }
    if (ng & 1) {
        // an odd last group: 32 code bytes, zero-extended, against activations whose upper half is 0
        const __m512i a0 = _mm512_load_si512(a + 4*np + 0);
        const __m512i a1 = _mm512_load_si512(a + 4*np + 1);
        const __m512i a2 = _mm512_load_si512(a + 4*np + 2);
        const __m512i a3 = _mm512_load_si512(a + 4*np + 3);
        const __m512i v  = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x + np*64)));
        const __m512i v4 = _mm512_slli_epi64(v, 4);
        acc6 = _mm512_dpbusd_epi32(acc6, _mm512_and_si512(v,  m6), a0);
        acc4 = _mm512_dpbusd_epi32(acc4, _mm512_and_si512(v,  m4), a1);
        acc6 = _mm512_dpbusd_epi32(acc6, _mm512_and_si512(v4, m6), a2);
        acc4 = _mm512_dpbusd_epi32(acc4, _mm512_and_si512(v4, m4), a3);
    }
    const int32_t isum = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_srai_epi32(acc6, 6), _mm512_srai_epi32(acc4, 4))) - sq;
    *s = (float) isum * d * wscale;
}

#if defined(__GNUC__)
// Four rows at a time in inline asm: GCC's allocation of the same loop in intrinsics adds
// copies and spills around vpdpbusd. Eight accumulator chains (two per row); activations are
// memory operands; pl walks the tile after next linearly, one line per row and step: one tile
// ahead (2.5 KB for 2560 columns) was less than the bytes one core must keep in flight to
// stream from DRAM, and two tiles ahead made 1-thread generation ~10 % faster on Zen 4.
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
        const uint8_t * pl = x + 8 * bx;
        size_t          b3 = 3*bx;
        size_t          cnt = (size_t) np;
        __asm__ volatile(
            ".p2align 6\n\t"  // the loop starts a cache line: its speed does not move with the code before it
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
#if defined(__GNUC__)
    for (; r0 + 4 <= nr; r0 += 4) {
        bitnet_gemv_tile4_asm(ng, s + r0, x + r0*bx, bx, a, sq, d, wscale);
    }
#endif
    for (; r0 < nr; ++r0) {
        bitnet_gemv_row512(ng, s + r0, x + r0*bx, a, sq, d, wscale);
    }
}

#elif defined(__AVX2__)

#define BITNET_I2S_R 2   // 16 ymm: 2 x 4 accumulators + 8 unpacked weight vectors
#define BITNET_I2S_TILE bitnet_tile256

// One group = one ymm of code bytes; codes (x >> 2k) & 3 pair with q[32(3-k) ..].
// AVX-VNNI accumulates with vpdpbusd; plain AVX2 uses vpmaddubsw (|2*2*128| per pair and at
// most 4 of them summed: no int16 saturation) then vpmaddwd with ones.
BITNET_INLINE void bitnet_tile256(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, size_t bx,
                                  const int8_t * GGML_RESTRICT y, size_t by, float wscale, const int R, const int C) {
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
    const uint8_t * next = (const uint8_t *) x + R*bx;  // the next R rows, fetched as in bitnet_tile512
    for (int g = 0; g < ng; ++g) {
        if (R == 2 || g % 2 == 0) {  // R*32 bytes per group: a line per group for 2 rows, every other for 1
            _mm_prefetch((const char *) next + g*R*32, _MM_HINT_T0);
        }
        __m256i w[2][4];
        for (int r = 0; r < R; ++r) {
            const __m256i v = _mm256_loadu_si256((const __m256i *) bitnet_i2s_group(x, bx, r, g));
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
        const block_i2_s * xr = (const block_i2_s *) (x + r0*bx);
        const uint8_t    * pl = x + (r0 + 4)*bx;  // the next 4 rows, fetched 128 bytes per group as in bitnet_tile512
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
                _mm_prefetch((const char *) pl + g*128, _MM_HINT_T0);
                _mm_prefetch((const char *) pl + g*128 + 64, _MM_HINT_T0);
                const __m256i * q = (const __m256i *)(y + g*QK_I2_S);
                for (int r = 0; r < 4; ++r) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *) bitnet_i2s_group(xr, bx, r, g));
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
        bitnet_tile256(ng, s + r0, 0, (const block_i2_s *) (x + r0*bx), bx, y, 0, wscale, 1, 1);
    }
}
#endif

#endif

// ---------------------------------------------------------------- tile tables

#if defined(BITNET_I2S_TILE)
// fixed-shape instances of the tile (constant R, C keep its accumulator arrays in registers)
#define BITNET_I2S_KERNEL(R, C)                                                                                       \
    static void bitnet_i2s_tile_##R##x##C(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, \
                                         size_t bx, const int8_t * GGML_RESTRICT y, size_t by, float wscale) {        \
        BITNET_I2S_TILE(ng, s, bs, x, bx, y, by, wscale, R, C);                                                       \
    }
#define BITNET_I2S_KERNELS(R) BITNET_I2S_KERNEL(R, 1) BITNET_I2S_KERNEL(R, 2) BITNET_I2S_KERNEL(R, 3) BITNET_I2S_KERNEL(R, 4)
#define BITNET_I2S_KERNELS_R(R) BITNET_I2S_KERNELS(R)
BITNET_I2S_KERNELS(1)
BITNET_I2S_KERNELS_R(BITNET_I2S_R)

#define BITNET_I2S_FULL(R) { NULL, bitnet_i2s_tile_##R##x1, bitnet_i2s_tile_##R##x2, bitnet_i2s_tile_##R##x3, bitnet_i2s_tile_##R##x4 }
#define BITNET_I2S_TABLE(R) { R, 4, BITNET_I2S_FULL(R), BITNET_I2S_FULL(1) }
#define BITNET_I2S_TABLE_R(R) BITNET_I2S_TABLE(R)
#if defined(BITNET_I2S_TILE_4X4)
static const struct bitnet_i2s_tiles i2s_tiles = {
    4, 4, { NULL, bitnet_i2s_tile_4x1, bitnet_i2s_tile_4x2, bitnet_i2s_tile_4x3, BITNET_I2S_TILE_4X4 }, BITNET_I2S_FULL(1)
};
#else
static const struct bitnet_i2s_tiles i2s_tiles = BITNET_I2S_TABLE_R(BITNET_I2S_R);
#endif
#endif

void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
#if defined(BITNET_I2S_TILE)
    const uint8_t * x = (const uint8_t *) vx;
    const int8_t  * y = (const int8_t *) vy;
#if defined(BITNET_GEMV_MAXN)
    if (nc == 1 && n <= BITNET_GEMV_MAXN) {
        bitnet_gemv512(n, s, x, bx, y, nr, wscale);
        return;
    }
#elif !defined(__AVXVNNI__)
    if (nc == 1) {
        bitnet_gemv256(n, s, x, bx, y, nr, wscale);
        return;
    }
#endif
    bitnet_i2s_gemm_tiled(&i2s_tiles, n, s, bs, x, bx, y, by, nr, nc, wscale);
#else
    ggml_gemm_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nr, nc, wscale);
#endif
}
