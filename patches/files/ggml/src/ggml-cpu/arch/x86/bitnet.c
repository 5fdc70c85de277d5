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
