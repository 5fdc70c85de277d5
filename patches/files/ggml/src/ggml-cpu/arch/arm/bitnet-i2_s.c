// bitnet-tools: ARM NEON kernels for I8_S activations and I2_S weights. Scalar reference: ../../bitnet.c;
// the driver and tile tables' types: ../../bitnet-impl.h.
//
// The I2_S layout is the canonical one (docs/i2_s.md: groups of 128, byte b of a group holds
// elements b, b+32, b+64, b+96 at shifts 6, 4, 2, 0) on ARM too. A group is two 16-byte
// vectors; each yields four vectors of 16 codes that pair with 16 consecutive activations:
//   half h (bytes 16h .. 16h+15):  x >> 6        with q[ 0 + 16h ..]
//                                  (x >> 4) & 3  with q[32 + 16h ..]
//                                  (x >> 2) & 3  with q[64 + 16h ..]
//                                  x & 3         with q[96 + 16h ..]
// Codes are 0..2, so signed byte dot products take them directly; sum((code - 1) * q) =
// sum(code * q) - sum(q), with sum(q) stored in the I8_S row. With the dot product extension
// (ARMv8.2 DOTPROD) one vdotq_s32 adds 16 products into 4 lanes; without it (ARMv8.0 cores such
// as Cortex-A53/A72) vmull/vmlal sum a group's products in int16 lanes and vpadalq widens them.
// Either way the integer dot is exact and the float result is formed as the generic kernel does:
// (float) isum * d * wscale, so results are bit-identical to it.
//
// On 32-bit ARM (no vaddvq, vqtbl4q, ...) every name here is the generic kernel.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet-impl.h"

#include <math.h>
#include <string.h>

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define BITNET_NEON 1
#endif

// ---------------------------------------------------------------- I8_S activations

// Bit-identical to quantize_row_i8_s_ref: max |x| with vmaxnm (a NaN operand gives the other
// one, as fmaxf does; the order of a max does not matter), iscale = 127 / fmaxf(amax, 1e-5f),
// x * iscale rounded to nearest-even by vcvtnq (= nearbyintf in the default rounding mode; NaN
// gives 0 as the reference's conversion does on AArch64), clamped to [-128, 127] by the two
// saturating narrows.
void quantize_row_i8_s(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) {
#if defined(BITNET_NEON)
    int8_t * q = (int8_t *) vy;
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        m0 = vmaxnmq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
        m1 = vmaxnmq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
        m2 = vmaxnmq_f32(m2, vabsq_f32(vld1q_f32(x + i + 8)));
        m3 = vmaxnmq_f32(m3, vabsq_f32(vld1q_f32(x + i + 12)));
    }
    const float       iscale = bitnet_i8_s_iscale(x, i, k, vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m0, m1), vmaxnmq_f32(m2, m3))));
    const float32x4_t vs     = vdupq_n_f32(iscale);
    int32x4_t vsum = vdupq_n_s32(0);
    for (i = 0; i + 16 <= k; i += 16) {
        const int32x4_t a = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i),      vs));
        const int32x4_t b = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 4),  vs));
        const int32x4_t c = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 8),  vs));
        const int32x4_t d = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 12), vs));
        const int8x16_t v = vcombine_s8(vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))),
                                        vqmovn_s16(vcombine_s16(vqmovn_s32(c), vqmovn_s32(d))));
        vst1q_s8(q + i, v);
        vsum = vpadalq_s16(vsum, vpaddlq_s8(v));
    }
    ggml_i8_s_finish_row(x, q, i, k, iscale, vaddvq_s32(vsum));  // the elements after the last whole vector, and the tail
#else
    quantize_row_i8_s_generic(x, vy, k);
#endif
}

// ---------------------------------------------------------------- I2_S x I8_S

#if defined(BITNET_NEON)

// GEMM tile: 2 weight rows x 4 activation columns. The accumulators (and without the dot product
// their int16 partial sums) and a group's 16 code vectors stay in registers: GCC 12 spills in the
// inner loop with 4 x 4 or 3 x 4.
#define I2S_R 2
#define I2S_C 4

// R weight rows x C activation columns over the whole row. Per half group and code position k,
// each row's 16 codes are unpacked once and used C times, each activation vector R times.
// Without the dot product, a group's products are summed in int16 (16 per lane, |3 * 128| each
// at most: no overflow) and widened once per group.
BITNET_INLINE void i2s_tile(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, size_t bx,
                            const int8_t * GGML_RESTRICT y, size_t by, float wscale, const int R, const int C) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    int32x4_t acc[I2S_R][I2S_C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
            acc[r][c] = vdupq_n_s32(0);
        }
    }
    for (int g = 0; g < ng; ++g) {
#if !defined(__ARM_FEATURE_DOTPROD)
        int16x8_t p[I2S_R][I2S_C];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
            for (int c = 0; c < C; ++c) {
                p[r][c] = vdupq_n_s16(0);
            }
        }
#endif
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            uint8x16_t v[I2S_R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                v[r] = vld1q_u8(bitnet_i2s_group(x, bx, r, g) + 16*h);
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                int8x16_t w[I2S_R];
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    const uint8x16_t u = k == 0 ? vshrq_n_u8(v[r], 6)
                                       : k == 1 ? vandq_u8(vshrq_n_u8(v[r], 4), m3)
                                       : k == 2 ? vandq_u8(vshrq_n_u8(v[r], 2), m3)
                                       :          vandq_u8(v[r], m3);
                    w[r] = vreinterpretq_s8_u8(u);
                }
#pragma GCC unroll 4
                for (int c = 0; c < C; ++c) {
                    const int8x16_t qk = vld1q_s8(y + c*by + g*QK_I2_S + 32*k + 16*h);
#pragma GCC unroll 4
                    for (int r = 0; r < R; ++r) {
#if defined(__ARM_FEATURE_DOTPROD)
                        acc[r][c] = vdotq_s32(acc[r][c], w[r], qk);
#else
                        p[r][c] = vmlal_high_s8(vmlal_s8(p[r][c], vget_low_s8(w[r]), vget_low_s8(qk)), w[r], qk);
#endif
                    }
                }
            }
        }
#if !defined(__ARM_FEATURE_DOTPROD)
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
            for (int c = 0; c < C; ++c) {
                acc[r][c] = vpadalq_s16(acc[r][c], p[r][c]);
            }
        }
#endif
    }
    const int n = ng*QK_I2_S;
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
        const int8_t * q  = y + c*by;
        const int32_t  sq = bitnet_row_sum(q, n);
        const float    d  = bitnet_row_d(q, n);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const int32_t isum = vaddvq_s32(acc[r][c]) - sq;
            s[c*bs + r] = (float) isum * d * wscale;
        }
    }
}

// fixed-shape instances of the tile (constant R, C keep its accumulators in registers)
#define I2S_KERNEL(R, C)                                                                                              \
    static void i2s_tile_##R##x##C(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x,    \
                                   size_t bx, const int8_t * GGML_RESTRICT y, size_t by, float wscale) {             \
        i2s_tile(ng, s, bs, x, bx, y, by, wscale, R, C);                                                              \
    }
I2S_KERNEL(1, 1) I2S_KERNEL(1, 2) I2S_KERNEL(1, 3) I2S_KERNEL(1, 4)
I2S_KERNEL(2, 1) I2S_KERNEL(2, 2) I2S_KERNEL(2, 3) I2S_KERNEL(2, 4)
static_assert(I2S_R == 2 && I2S_C == 4, "the table below lists the 2 x 4 tiles");

static const struct bitnet_i2s_tiles i2s_tiles = {
    I2S_R, I2S_C,
    { NULL, i2s_tile_2x1, i2s_tile_2x2, i2s_tile_2x3, i2s_tile_2x4 },
    { NULL, i2s_tile_1x1, i2s_tile_1x2, i2s_tile_1x3, i2s_tile_1x4 },
};

#if defined(__ARM_FEATURE_DOTPROD)
// One activation column (token generation): the weights stream through once, so the codes are
// not shifted down but masked in place where the scaled code still fits a signed byte:
//   x & 0x30 = 16 * code (elements 32..), x & 0x0C = 4 * code (elements 64..), x & 3 and x >> 6
// (elements 96.. and 0..) as they are. Three accumulators per row (scales 1, 4 and 16) hold
// exact multiples of their scale, shifted back before the sum: 4 ALU ops per 16 code bytes.
#define BITNET_GEMV_R 4

BITNET_INLINE void i2s_gemv_rows(int ng, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                                 const int8_t * GGML_RESTRICT y, float wscale, const int R) {
    const uint8x16_t m3  = vdupq_n_u8(0x03);
    const uint8x16_t m12 = vdupq_n_u8(0x0C);
    const uint8x16_t m48 = vdupq_n_u8(0x30);
    int32x4_t a1[BITNET_GEMV_R], a4[BITNET_GEMV_R], a16[BITNET_GEMV_R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
        a1[r] = a4[r] = a16[r] = vdupq_n_s32(0);
    }
    for (int g = 0; g < ng; ++g) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const int8_t * q = y + g*QK_I2_S + 16*h;
            const int8x16_t q0 = vld1q_s8(q);
            const int8x16_t q1 = vld1q_s8(q + 32);
            const int8x16_t q2 = vld1q_s8(q + 64);
            const int8x16_t q3 = vld1q_s8(q + 96);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                const uint8x16_t v = vld1q_u8(bitnet_i2s_group((const block_i2_s *) x, bx, r, g) + 16*h);
                a1[r]  = vdotq_s32(a1[r],  vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), q0);
                a16[r] = vdotq_s32(a16[r], vreinterpretq_s8_u8(vandq_u8(v, m48)), q1);
                a4[r]  = vdotq_s32(a4[r],  vreinterpretq_s8_u8(vandq_u8(v, m12)), q2);
                a1[r]  = vdotq_s32(a1[r],  vreinterpretq_s8_u8(vandq_u8(v, m3)),  q3);
            }
        }
    }
    const int     n  = ng*QK_I2_S;
    const int32_t sq = bitnet_row_sum(y, n);
    const float   d  = bitnet_row_d(y, n);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
        const int32x4_t t = vaddq_s32(a1[r], vaddq_s32(vshrq_n_s32(a4[r], 2), vshrq_n_s32(a16[r], 4)));
        const int32_t isum = vaddvq_s32(t) - sq;
        s[r] = (float) isum * d * wscale;
    }
}

static void i2s_gemv(int n, float * GGML_RESTRICT s, const uint8_t * GGML_RESTRICT x, size_t bx,
                     const int8_t * GGML_RESTRICT y, int nr, float wscale) {
    const int ng = n / QK_I2_S;
    int r0 = 0;
    for (; r0 + BITNET_GEMV_R <= nr; r0 += BITNET_GEMV_R) {
        i2s_gemv_rows(ng, s + r0, x + r0*bx, bx, y, wscale, BITNET_GEMV_R);
    }
    for (; r0 < nr; ++r0) {
        i2s_gemv_rows(ng, s + r0, x + r0*bx, bx, y, wscale, 1);
    }
}
#endif // __ARM_FEATURE_DOTPROD (without it, one column goes through the GEMM tiles: their int16
       // group sums need fewer instructions than widening every product pair)

#endif // BITNET_NEON

void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
#if defined(BITNET_NEON)
#if defined(__ARM_FEATURE_DOTPROD)
    if (nc == 1) {
        i2s_gemv(n, s, (const uint8_t *) vx, bx, (const int8_t *) vy, nr, wscale);
        return;
    }
#endif
    bitnet_i2s_gemm_tiled(&i2s_tiles, n, s, bs, (const uint8_t *) vx, bx, (const int8_t *) vy, by, nr, nc, wscale);
#else
    ggml_gemm_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nr, nc, wscale);
#endif
}
