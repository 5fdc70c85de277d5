// bitnet-tools: ARM NEON kernels for TL1 weights. Scalar reference: ../../bitnet.c; the driver,
// tile plans and trit tables: ../../bitnet-impl.h. On 32-bit ARM every name here is the generic
// kernel.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet-impl.h"

#include <string.h>

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define BITNET_NEON 1
#endif

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

// acc lane k += bytes 4k .. 4k+3 of v, unsigned (S = u) or signed (S = s): one row's 4 groups
#if defined(__ARM_FEATURE_DOTPROD)
#define BITNET_SUM4(S, acc, v) vdotq_##S##32(acc, v, vdupq_n_##S##8(1))
#else
#define BITNET_SUM4(S, acc, v) vpadalq_##S##16(acc, vpaddlq_##S##8(v))
#endif

// ggml_tl_build_lut for TL1, byte for byte: per group, 16 int16 values t0(v) * a0 + t1(v) * a1,
// stored as their low bytes (truncating narrow) and high bytes (arithmetic shift by 8)
static void tl1_build_lut_neon(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int       nch = (int) ggml_tl_chunks(GGML_TYPE_TL1, n);
    const int16x8_t t0a = vld1q_s16(bitnet_tl1_trits[0]), t0b = vld1q_s16(bitnet_tl1_trits[0] + 8);
    const int16x8_t t1a = vld1q_s16(bitnet_tl1_trits[1]), t1b = vld1q_s16(bitnet_tl1_trits[1] + 8);
    for (int c = 0; c < nch; ++c) {
        int8_t a[8];
        if (8*c + 8 <= n) {
            memcpy(a, q + 8*c, 8);
        } else {  // the row's last, partial chunk: zero activations past the row
            for (int i = 0; i < 8; ++i) {
                a[i] = 8*c + i < n ? q[8*c + i] : 0;
            }
        }
        tl1_table * t = &((tl1_table *) lut)[c];
        for (int j = 0; j < TL_CHUNK; ++j) {
            const int16x8_t va = vmlaq_n_s16(vmulq_n_s16(t0a, a[2*j]), t1a, a[2*j + 1]);  // codes 0-7
            const int16x8_t vb = vmlaq_n_s16(vmulq_n_s16(t0b, a[2*j]), t1b, a[2*j + 1]);  // codes 8-15
            vst1q_s8((int8_t *) t->lo[j], vcombine_s8(vmovn_s16(va), vmovn_s16(vb)));
            vst1q_s8(t->hi[j], vcombine_s8(vshrn_n_s16(va, 8), vshrn_n_s16(vb, 8)));
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
        const uint8x16_t b0 = vld1q_u8(((const block_tl1 *) x)[ch].qs);
        const uint8x16_t b1 = vld1q_u8(((const block_tl1 *) x)[ch].qs + 16);
        uint8x16_t idx[4];
        idx[0] = vorrq_u8(vandq_u8(b0, m0f), group);   // rows 0-3
        idx[1] = vorrq_u8(vandq_u8(b1, m0f), group);   // rows 4-7
        idx[2] = vorrq_u8(vshrq_n_u8(b0, 4), group);   // rows 8-11
        idx[3] = vorrq_u8(vshrq_n_u8(b1, 4), group);   // rows 12-15
        const tl1_table * t = &((const tl1_table *) lut)[ch];
        const uint8x16x4_t lo = vld1q_u8_x4(t->lo[0]);
        const uint8x16x4_t hi = vld1q_u8_x4((const uint8_t *) t->hi[0]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            acc_lo[v] = BITNET_SUM4(u, acc_lo[v], vqtbl4q_u8(lo, idx[v]));
            acc_hi[v] = BITNET_SUM4(s, acc_hi[v], vreinterpretq_s8_u8(vqtbl4q_u8(hi, idx[v])));
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

static void tl1_tiles_1x1(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                          size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {
    GGML_UNUSED(tile_b); GGML_UNUSED(lut_b); GGML_UNUSED(bs);
    tl1_tile(nch, x, lut, d[0], wscale, s);
}

// the thread's tiles stream past the batch's tables, one tile and one column at a time (a tile's
// codes stay in L1 meanwhile)
static const struct bitnet_tl_rung tl1_plan[] = {
    { 1, 1, { NULL, tl1_tiles_1x1 } },
};
static const struct bitnet_tl_kernels tl1_kernels = { tl1_build_lut_neon, 1, tl1_plan, tl1_plan, 1, 1 };

#endif // BITNET_NEON

void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
#if defined(BITNET_NEON)
    if (type == GGML_TYPE_TL1) {
        bitnet_tl_gemm(&tl1_kernels, type, n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
        return;
    }
#endif
    ggml_gemm_tl_i8_s_generic(type, n, s, bs, vx, nr, vy, by, nc, wscale, scratch);
}
