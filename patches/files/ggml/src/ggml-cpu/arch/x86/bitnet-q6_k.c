// bitnet-tools: Q6_K x Q8_K for a few activation columns (AVX-512 VNNI, AVX2), the output head of a
// ternary model in a server's batched decode step. Reference: ggml's ggml_vec_dot_q6_K_q8_K_generic
// (../../quants.c), which test-backend-ops runs beside this kernel; the driver is
// ggml_bitnet_mul_mat_q6_k in ../../bitnet.c.
//
// ggml computes this product one (row, column) pair at a time, so a batch of C tokens decodes
// every 6-bit weight C times; the head (128256 x 2560 for the 2B-4T shape) then costs as much as
// all the ternary layers. Here each block of 256 weights is decoded once per row and used for up
// to BITNET_Q6_K_C columns whose sums stay in registers.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "../../bitnet-impl.h"

#if defined(GGML_BITNET_Q6_K_GEMM)
#include <immintrin.h>

static_assert(sizeof(block_q6_K) == 210 && sizeof(block_q8_K) == 292, "the Q6_K and Q8_K blocks this kernel reads");

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define BITNET_Q6_K_C 8  // columns per pass: a float sum each, next to 8 decoded vectors and the constants

// The 256 6-bit codes of a block (0..63) in element order, 64 per vector: in each half of 128,
// ql byte l holds elements l (low nibble) and l + 64 (high nibble), ql byte l + 32 elements
// l + 32 and l + 96, and qh byte l their top two bits at bit pairs 0, 2, 4, 6 (as
// dequantize_row_q6_K reads them). 16-bit shifts move each byte's pair into bits 4-5 and the
// masks drop what crossed from the neighbouring byte.
BITNET_INLINE void bitnet_q6_k_codes(const block_q6_K * GGML_RESTRICT x, __m512i w[4]) {
    const __m512i m0f  = _mm512_set1_epi8(0x0F);
    const __m512i m30  = _mm512_set1_epi8(0x30);
    const __m512i shl  = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);  // pairs 0 | 1 -> bits 4-5
    const __m512i shr  = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1); // pairs 2 | 3 -> bits 4-5
    for (int h = 0; h < 2; ++h) {
        const __m512i ql = _mm512_loadu_si512((const void *)(x->ql + 64*h));
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32*h)));
        w[2*h + 0] = _mm512_or_si512(_mm512_and_si512(ql, m0f), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
        w[2*h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m0f),
                                     _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
    }
}

// One row x C columns. Per block: the codes (0..63, u8) against the activations (s8) in int16
// pair sums (|2 * 63 * 127| fits), times the 16-element group's scale into int32 (vpdpwssd). The
// codes stand for code - 32: the -32 * sum(scale_g * sum of the group's activations) comes from
// Q8_K's own group sums (bsums), one vpmaddwd per column, and starts that column's sum. Then
// scaled by d_x * d_y in float.
BITNET_INLINE void bitnet_q6_k_row(int nb, float * GGML_RESTRICT s, size_t bs, const block_q6_K * GGML_RESTRICT x,
                                   const uint8_t * GGML_RESTRICT vy, size_t by, const int C) {
    // int16 lane k of vector z covers elements 64z + 2k, +1: group 4z + k/8
    static const int16_t group_of_lane[4][32] = {
        { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3 },
        { 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7 },
        { 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11 },
        { 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15 },
    };
    __m512 accf[BITNET_Q6_K_C];
    for (int c = 0; c < C; ++c) {
        accf[c] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; ++b) {
        // the next row follows this one: fetch it while this one computes (the first pass over
        // a row's columns reads it from DRAM)
        for (int o = 0; o < (int) sizeof(block_q6_K); o += 64) {
            _mm_prefetch((const char *) (x + nb + b) + o, _MM_HINT_T0);
        }
        __m512i w[4], sc[4];
        bitnet_q6_k_codes(x + b, w);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) x[b].scales));
        const __m256i nsc  = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32));  // |32 * 128| fits int16
        for (int z = 0; z < 4; ++z) {
            sc[z] = _mm512_permutexvar_epi16(_mm512_loadu_si512((const void *) group_of_lane[z]), _mm512_castsi256_si512(sc16));
        }
        const float dx = GGML_CPU_FP16_TO_FP32(x[b].d);
        for (int c = 0; c < C; ++c) {
            const block_q8_K * y = (const block_q8_K *) (vy + c*by) + b;
            __m512i acc = _mm512_zextsi256_si512(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y->bsums), nsc));
            for (int z = 0; z < 4; ++z) {
                const __m512i q = _mm512_loadu_si512((const void *)(y->qs + 64*z));
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w[z], q), sc[z]);
            }
            accf[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(dx * y->d), accf[c]);
        }
    }
    for (int c = 0; c < C; ++c) {
        s[c*bs] = _mm512_reduce_add_ps(accf[c]);
    }
}

#else
#define BITNET_Q6_K_C 4  // columns per pass: a float sum each, next to 8 decoded vectors

// The 256 codes of a block in element order, 32 per vector, read as in the AVX-512 kernel: in
// each half of 128, vectors 0..3 take ql's low nibbles of bytes 0..31 and 32..63, then their high
// nibbles, with qh's bit pairs 0, 2, 4, 6 moved into bits 4-5.
BITNET_INLINE void bitnet_q6_k_codes(const block_q6_K * GGML_RESTRICT x, __m256i w[8]) {
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64*h));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64*h + 32));
        const __m256i qh  = _mm256_loadu_si256((const __m256i *)(x->qh + 32*h));
        w[4*h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, m0f), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        w[4*h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m0f), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        w[4*h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m0f), _mm256_and_si256(qh, m30));
        w[4*h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m0f),
                                     _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    }
}

// One row x C columns, as the AVX-512 kernel but 32 codes per vector: the int16 pair sums of
// vector z cover groups 2z (lanes 0-7) and 2z + 1 (lanes 8-15), so vpmaddwd with those two scales
// (one 32-bit lane of the scales widened to int16, spread over each 128-bit half) adds them into int32.
BITNET_INLINE void bitnet_q6_k_row(int nb, float * GGML_RESTRICT s, size_t bs, const block_q6_K * GGML_RESTRICT x,
                                   const uint8_t * GGML_RESTRICT vy, size_t by, const int C) {
    // bytes 0-1 of each 32-bit lane in the lower half (scale 2z), bytes 2-3 in the upper (2z + 1)
    const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    __m256 accf[BITNET_Q6_K_C];
    for (int c = 0; c < C; ++c) {
        accf[c] = _mm256_setzero_ps();
    }
    for (int b = 0; b < nb; ++b) {
        for (int o = 0; o < (int) sizeof(block_q6_K); o += 64) {  // the next row, as in the AVX-512 kernel
            _mm_prefetch((const char *) (x + nb + b) + o, _MM_HINT_T0);
        }
        __m256i w[8], sc[8];
        bitnet_q6_k_codes(x + b, w);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) x[b].scales));
        const __m256i nsc  = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32));  // |32 * 128| fits int16
        for (int z = 0; z < 8; ++z) {
            sc[z] = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(z)), spread);
        }
        const float dx = GGML_CPU_FP16_TO_FP32(x[b].d);
        for (int c = 0; c < C; ++c) {
            const block_q8_K * y = (const block_q8_K *) (vy + c*by) + b;
            __m256i acc = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y->bsums), nsc);
            for (int z = 0; z < 8; ++z) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(y->qs + 32*z));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w[z], q), sc[z]));
            }
            accf[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(dx * y->d), accf[c]);
        }
    }
    for (int c = 0; c < C; ++c) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(accf[c]), _mm256_extractf128_ps(accf[c], 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        s[c*bs] = _mm_cvtss_f32(h);
    }
}
#endif

#define BITNET_Q6_K_ROW(C)                                                                                              \
    static void bitnet_q6_k_row_##C(int nb, float * GGML_RESTRICT s, size_t bs, const block_q6_K * GGML_RESTRICT x,    \
                                    const uint8_t * GGML_RESTRICT vy, size_t by) {                                      \
        bitnet_q6_k_row(nb, s, bs, x, vy, by, C);                                                                       \
    }
BITNET_Q6_K_ROW(1) BITNET_Q6_K_ROW(2) BITNET_Q6_K_ROW(3) BITNET_Q6_K_ROW(4)
#if BITNET_Q6_K_C == 8
BITNET_Q6_K_ROW(5) BITNET_Q6_K_ROW(6) BITNET_Q6_K_ROW(7) BITNET_Q6_K_ROW(8)
#endif

void ggml_gemm_q6_k_q8_k(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc) {
    static void (* const rows[BITNET_Q6_K_C + 1])(int, float * GGML_RESTRICT, size_t, const block_q6_K * GGML_RESTRICT,
                                                   const uint8_t * GGML_RESTRICT, size_t) = {
        NULL, bitnet_q6_k_row_1, bitnet_q6_k_row_2, bitnet_q6_k_row_3, bitnet_q6_k_row_4,
#if BITNET_Q6_K_C == 8
        bitnet_q6_k_row_5, bitnet_q6_k_row_6, bitnet_q6_k_row_7, bitnet_q6_k_row_8,
#endif
    };
    const int nb = n / QK_K;
    // rows of 16 at a time so that their blocks stay in L1 while every pass of columns reads them
    for (int r0 = 0; r0 < nr; r0 += 16) {
        const int r1 = r0 + 16 < nr ? r0 + 16 : nr;
        for (int c = 0; c < nc; c += BITNET_Q6_K_C) {
            const int cn = nc - c < BITNET_Q6_K_C ? nc - c : BITNET_Q6_K_C;
            for (int r = r0; r < r1; ++r) {
                rows[cn](nb, s + c*bs + r, bs, (const block_q6_K *) ((const uint8_t *) vx + r*bx), (const uint8_t *) vy + c*by, by);
            }
        }
    }
}
#endif
