// bitnet-tools: ARM NEON ternary kernels (I2_S x I8_S, TL1 lookups). Scalar reference: ../../bitnet.c
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
#include "../../bitnet.h"

#include <math.h>
#include <string.h>

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define BITNET_NEON 1
#endif

#if defined(__GNUC__)
#define BITNET_INLINE static inline __attribute__((always_inline))
#else
#define BITNET_INLINE static inline
#endif

#if defined(BITNET_NEON)

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

// acc lane k += bytes 4k .. 4k+3 of v (unsigned / signed): one row's 4 groups in the TL kernels
BITNET_INLINE uint32x4_t bitnet_sum4_u8(uint32x4_t acc, uint8x16_t v) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_u32(acc, v, vdupq_n_u8(1));
#else
    return vpadalq_u16(acc, vpaddlq_u8(v));
#endif
}

BITNET_INLINE int32x4_t bitnet_sum4_s8(int32x4_t acc, int8x16_t v) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, v, vdupq_n_s8(1));
#else
    return vpadalq_s16(acc, vpaddlq_s8(v));
#endif
}

#endif // BITNET_NEON

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
    float amax = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m0, m1), vmaxnmq_f32(m2, m3)));
    for (; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float       iscale = 127.0f / fmaxf(amax, 1e-5f);
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
#define BITNET_R 2
#define BITNET_C 4

// activation columns per L2 block: ~384 KiB of int8 values, at least one column tile
static inline int bitnet_col_block(int n) {
    int cb = (384*1024) / n;
    cb = cb < BITNET_C ? BITNET_C : cb;
    return cb - cb % BITNET_C;
}

// R weight rows x C activation columns over the whole row. Per half group and code position k,
// each row's 16 codes are unpacked once and used C times, each activation vector R times.
// Without the dot product, a group's products are summed in int16 (16 per lane, |3 * 128| each
// at most: no overflow) and widened once per group.
BITNET_INLINE void i2s_tile(int ng, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, size_t bx,
                            const int8_t * GGML_RESTRICT y, size_t by, float wscale, const int R, const int C) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    int32x4_t acc[BITNET_R][BITNET_C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
            acc[r][c] = vdupq_n_s32(0);
        }
    }
    for (int g = 0; g < ng; ++g) {
#if !defined(__ARM_FEATURE_DOTPROD)
        int16x8_t p[BITNET_R][BITNET_C];
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
            uint8x16_t v[BITNET_R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                v[r] = vld1q_u8(x + r*bx + g*I2_S_GROUP_B + 16*h);
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                int8x16_t w[BITNET_R];
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

// one tile of r <= BITNET_R rows and c <= BITNET_C columns, dispatched to fixed-size bodies
static void i2s_tile_any(int ng, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, size_t bx,
                         const int8_t * GGML_RESTRICT y, size_t by, float wscale, int r, int c) {
    if (r == BITNET_R) {
        switch (c) {
            case 4:  i2s_tile(ng, s, bs, x, bx, y, by, wscale, BITNET_R, 4); return;
            case 3:  i2s_tile(ng, s, bs, x, bx, y, by, wscale, BITNET_R, 3); return;
            case 2:  i2s_tile(ng, s, bs, x, bx, y, by, wscale, BITNET_R, 2); return;
            default: i2s_tile(ng, s, bs, x, bx, y, by, wscale, BITNET_R, 1); return;
        }
    }
    for (int i = 0; i < r; ++i) {  // row remainder: one row at a time
        switch (c) {
            case 4:  i2s_tile(ng, s + i, bs, x + i*bx, bx, y, by, wscale, 1, 4); break;
            case 3:  i2s_tile(ng, s + i, bs, x + i*bx, bx, y, by, wscale, 1, 3); break;
            case 2:  i2s_tile(ng, s + i, bs, x + i*bx, bx, y, by, wscale, 1, 2); break;
            default: i2s_tile(ng, s + i, bs, x + i*bx, bx, y, by, wscale, 1, 1); break;
        }
    }
}

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
                const uint8x16_t v = vld1q_u8(x + r*bx + g*I2_S_GROUP_B + 16*h);
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
    const int       ng = n / QK_I2_S;
    const uint8_t * x  = (const uint8_t *) vx;
    const int8_t  * y  = (const int8_t *) vy;
#if defined(__ARM_FEATURE_DOTPROD)
    if (nc == 1) {
        i2s_gemv(n, s, x, bx, y, nr, wscale);
        return;
    }
#endif
    const int cb = bitnet_col_block(n);
    for (int c0 = 0; c0 < nc; c0 += cb) {             // columns: L2-sized blocks
        const int c1 = c0 + cb < nc ? c0 + cb : nc;
        for (int r0 = 0; r0 < nr; r0 += BITNET_R) {   // rows: the tile's codes stay in L1 ...
            const int rn = nr - r0 < BITNET_R ? nr - r0 : BITNET_R;
            for (int c = c0; c < c1; c += BITNET_C) { // ... while the block's columns pass by
                const int cn = c1 - c < BITNET_C ? c1 - c : BITNET_C;
                i2s_tile_any(ng, s + c*bs + r0, bs, x + r0*bx, bx, y + c*by, by, wscale, rn, cn);
            }
        }
    }
#else
    ggml_gemm_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nr, nc, wscale);
#endif
}

void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
#if defined(BITNET_NEON)
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    // one row, one column; the scale sits after the n/4 code bytes
    ggml_gemm_i2_s_i8_s(n, s, 0, vx, 0, vy, 0, 1, 1, ggml_i2_s_scale(vx, n));
#else
    ggml_vec_dot_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nrc);
#endif
}

// ---------------------------------------------------------------- TL1 (lookup tables)
//
// A full TL1 chunk is 32 bytes: byte b holds lane b (low nibble) and lane b + 32 (high nibble),
// lane 4i + j = row i, group j. Four 16-byte index vectors cover rows 0-3, 4-7 (low nibbles of
// bytes 0-15, 16-31) and 8-11, 12-15 (high nibbles); in each, byte p belongs to group p & 3, so
// the index into the chunk's 64-byte table (4 groups x 16 entries, ggml_tl_build_lut's order)
// is code | (p & 3) << 4 -- one vqtbl4q_u8 per 16 lanes. The low (unsigned) and high (signed)
// table bytes are looked up apart and each 32-bit lane sums its 4 bytes (vdotq with ones): that
// is one row's 4 groups. The dot is lo + 256 * hi, exactly, and the float result is formed as
// the generic kernel does. The tensor's last tile, if shorter than 16 rows, is left to it.

#if defined(BITNET_NEON)

#define TL1_CHUNK_B 32   // bytes of a full chunk
#define TL1_TABLE_B 128  // LUT bytes per chunk: 64 low, 64 high

// trits of the TL1 codes 0..8, most significant first (9..15 unused: 0)
static const int16_t tl1_trits[2][16] = {
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0},
};

// ggml_tl_build_lut for TL1, byte for byte: per group, 16 int16 values t0(v) * a0 + t1(v) * a1,
// stored as their low bytes (truncating narrow) and high bytes (arithmetic shift by 8)
static void tl1_build_lut_neon(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int       nch = (int) ggml_tl_chunks(GGML_TYPE_TL1, n);
    const int16x8_t t0a = vld1q_s16(tl1_trits[0]), t0b = vld1q_s16(tl1_trits[0] + 8);
    const int16x8_t t1a = vld1q_s16(tl1_trits[1]), t1b = vld1q_s16(tl1_trits[1] + 8);
    for (int c = 0; c < nch; ++c) {
        int8_t a[8];
        if (8*c + 8 <= n) {
            memcpy(a, q + 8*c, 8);
        } else {  // the row's last, partial chunk: zero activations past the row
            for (int i = 0; i < 8; ++i) {
                a[i] = 8*c + i < n ? q[8*c + i] : 0;
            }
        }
        uint8_t * lo = lut + c*TL1_TABLE_B;
        for (int j = 0; j < TL_CHUNK; ++j) {
            const int16x8_t va = vmlaq_n_s16(vmulq_n_s16(t0a, a[2*j]), t1a, a[2*j + 1]);  // codes 0-7
            const int16x8_t vb = vmlaq_n_s16(vmulq_n_s16(t0b, a[2*j]), t1b, a[2*j + 1]);  // codes 8-15
            vst1q_s8((int8_t *) lo + 16*j,      vcombine_s8(vmovn_s16(va), vmovn_s16(vb)));
            vst1q_s8((int8_t *) lo + 64 + 16*j, vcombine_s8(vshrn_n_s16(va, 8), vshrn_n_s16(vb, 8)));
        }
    }
}

// one full tile x one column, all chunks: 8 accumulators, 4 index vectors and the chunk's two
// 64-byte tables in registers (two columns at once spill with GCC 12)
#if defined(__GNUC__)
__attribute__((noinline))  // its own register allocation: inlined, the loop reloads constants
#endif
static void tl1_tile(int nch, const uint8_t * GGML_RESTRICT x, const uint8_t * GGML_RESTRICT lut, float d, float wscale,
                     float * GGML_RESTRICT s) {
    const uint8x16_t m0f   = vdupq_n_u8(0x0F);
    const uint8x16_t group = vreinterpretq_u8_u32(vdupq_n_u32(0x30201000));  // (p & 3) << 4
    uint32x4_t acc_lo[4];
    int32x4_t  acc_hi[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        acc_lo[v] = vdupq_n_u32(0);
        acc_hi[v] = vdupq_n_s32(0);
    }
    for (int ch = 0; ch < nch; ++ch) {
        const uint8x16_t b0 = vld1q_u8(x + ch*TL1_CHUNK_B);
        const uint8x16_t b1 = vld1q_u8(x + ch*TL1_CHUNK_B + 16);
        uint8x16_t idx[4];
        idx[0] = vorrq_u8(vandq_u8(b0, m0f), group);   // rows 0-3
        idx[1] = vorrq_u8(vandq_u8(b1, m0f), group);   // rows 4-7
        idx[2] = vorrq_u8(vshrq_n_u8(b0, 4), group);   // rows 8-11
        idx[3] = vorrq_u8(vshrq_n_u8(b1, 4), group);   // rows 12-15
        const uint8x16x4_t lo = vld1q_u8_x4(lut + ch*TL1_TABLE_B);
        const uint8x16x4_t hi = vld1q_u8_x4(lut + ch*TL1_TABLE_B + 64);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            acc_lo[v] = bitnet_sum4_u8(acc_lo[v], vqtbl4q_u8(lo, idx[v]));
            acc_hi[v] = bitnet_sum4_s8(acc_hi[v], vreinterpretq_s8_u8(vqtbl4q_u8(hi, idx[v])));
        }
    }
    const float32x4_t vd = vdupq_n_f32(d);
    const float32x4_t ws = vdupq_n_f32(wscale);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        const int32x4_t isum = vaddq_s32(vreinterpretq_s32_u32(acc_lo[v]), vshlq_n_s32(acc_hi[v], 8));
        // (float) isum * d * wscale, in the generic kernel's order
        vst1q_f32(s + 4*v, vmulq_f32(vmulq_f32(vcvtq_f32_s32(isum), vd), ws));
    }
}

static void tl1_gemm_neon(int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, int nr,
                          const int8_t * GGML_RESTRICT y, size_t by, int nc, float wscale, uint8_t * GGML_RESTRICT scratch) {
    const int    nch    = (int) ggml_tl_chunks(GGML_TYPE_TL1, n);
    const size_t tile_b = (size_t) nch * TL1_CHUNK_B;
    const size_t lut_b  = GGML_PAD(ggml_tl_lut_bytes(GGML_TYPE_TL1, n), 64);
    const int    full   = nr / TL_TILE_ROWS;
    const int    batch  = ggml_tl_lut_batch(lut_b);

    for (int c0 = 0; c0 < nc; c0 += batch) {
        const int cn = nc - c0 < batch ? nc - c0 : batch;
        float d[TL_SCRATCH_COLS];
        for (int c = 0; c < cn; ++c) {
            const int8_t * q = y + (c0 + c)*by;
            tl1_build_lut_neon(q, n, scratch + c*lut_b);
            d[c] = bitnet_row_d(q, n);
        }
        // the thread's tiles stream past the batch's tables (a tile's codes stay in L1 meanwhile)
        for (int t = 0; t < full; ++t) {
            for (int c = 0; c < cn; ++c) {
                tl1_tile(nch, x + t*tile_b, scratch + c*lut_b, d[c], wscale, s + (c0 + c)*bs + t*TL_TILE_ROWS);
            }
        }
        if (full*TL_TILE_ROWS < nr) {  // the tensor's last, shorter tile
            ggml_gemm_tl_i8_s_generic(GGML_TYPE_TL1, n, s + c0*bs + full*TL_TILE_ROWS, bs, x + full*tile_b,
                                      nr - full*TL_TILE_ROWS, y + c0*by, by, cn, wscale, NULL);
        }
    }
}

#endif // BITNET_NEON

void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
#if defined(BITNET_NEON)
    if (type == GGML_TYPE_TL1) {
        tl1_gemm_neon(n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
        return;
    }
#endif
    ggml_gemm_tl_i8_s_generic(type, n, s, bs, vx, nr, vy, by, nc, wscale, scratch);
}
