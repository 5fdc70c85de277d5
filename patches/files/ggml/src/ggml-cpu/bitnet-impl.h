// bitnet-tools: what the SIMD kernel files (arch/<arch>/bitnet-i2_s.c, bitnet-tl.c) share --
// row accessors, the trit tables of the TL codes, typed views of a chunk's lookup tables, and
// the two drivers that walk a GEMM over tiles. A kernel file supplies tile kernels in tables
// (one entry per tile shape, fixed at compile time so its accumulators stay in registers); the
// drivers pick entries by how many rows and columns are left, as ik_llama.cpp's iqk does.
#pragma once

#include "bitnet.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#if defined(__GNUC__)
#define BITNET_INLINE static inline __attribute__((always_inline))
#else
#define BITNET_INLINE static inline
#endif

// ---------------------------------------------------------------- I8_S rows

// the row's scale d and sum(q), stored after its n int8 values
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

// The SIMD quantizers' scalar step between their two passes: fold x[i..k) into the running
// max |x| (a NaN is ignored, as fmaxf does) and return the reference's 127 / fmaxf(amax, 1e-5f).
static inline float bitnet_i8_s_iscale(const float * x, int64_t i, int64_t k, float amax) {
    for (; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    return 127.0f / fmaxf(amax, 1e-5f);
}

// ---------------------------------------------------------------- I2_S tiles

// R weight rows x C activation columns over whole rows of ng groups; R and C are fixed by the
// table entry the kernel sits in. s[c*bs + r] as ggml_gemm_i2_s_i8_s.
typedef void (*bitnet_i2s_tile_fn)(int ng, float * GGML_RESTRICT s, size_t bs, const block_i2_s * GGML_RESTRICT x, size_t bx,
                                   const int8_t * GGML_RESTRICT y, size_t by, float wscale);

#define BITNET_MAX_C 4

// the code bytes of group g of weight row r (rows bx bytes apart)
static inline const uint8_t * bitnet_i2s_group(const block_i2_s * x, size_t bx, int r, int g) {
    return ((const block_i2_s *) ((const uint8_t *) x + r*bx))[g].qs;
}

// An architecture's I2_S tiles: full[c] is R rows x c columns, one[c] is 1 row x c columns
// (c = 1 .. C).
struct bitnet_i2s_tiles {
    int R, C;
    bitnet_i2s_tile_fn full[BITNET_MAX_C + 1];
    bitnet_i2s_tile_fn one[BITNET_MAX_C + 1];
};

// ggml_gemm_i2_s_i8_s by tiles: blocks of activation columns small enough to stay in L2 (about
// 384 KiB of int8 values); inside a block, each tile's codes stay in L1 while the block's
// columns pass by, so each unpacked weight vector serves C columns and each activation vector
// R rows.
static inline void bitnet_i2s_gemm_tiled(const struct bitnet_i2s_tiles * k, int n, float * GGML_RESTRICT s, size_t bs,
                                         const uint8_t * GGML_RESTRICT x, size_t bx, const int8_t * GGML_RESTRICT y,
                                         size_t by, int nr, int nc, float wscale) {
    const int ng = n / QK_I2_S;
    int cb = (384*1024) / n;
    cb = cb < k->C ? k->C : cb - cb % k->C;
    for (int c0 = 0; c0 < nc; c0 += cb) {
        const int c1 = c0 + cb < nc ? c0 + cb : nc;
        for (int r0 = 0; r0 < nr; r0 += k->R) {
            const int rn = nr - r0 < k->R ? nr - r0 : k->R;
            for (int c = c0; c < c1; c += k->C) {
                const int cn = c1 - c < k->C ? c1 - c : k->C;
                if (rn == k->R) {
                    k->full[cn](ng, s + c*bs + r0, bs, (const block_i2_s *) (x + r0*bx), bx, y + c*by, by, wscale);
                } else {
                    for (int i = 0; i < rn; ++i) {  // the last rows: one at a time
                        k->one[cn](ng, s + c*bs + r0 + i, bs, (const block_i2_s *) (x + (r0 + i)*bx), bx, y + c*by, by, wscale);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- TL1 / TL2

// trits of the codes, most significant first: TL1 codes 0..8 (9..15 unused: 0), TL2 codes
// 0..26 (27..31 unused: 0). The scalar reference computes them by division instead.
static const int16_t bitnet_tl1_trits[2][16] = {
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0},
};
static const int16_t bitnet_tl2_trits[3][32] = {
    {-1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0},
    {-1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0},
};

// one chunk's lookup tables in ggml_tl_build_lut's layout: the low bytes of the 4 groups'
// entries, then their high bytes
typedef struct {
    uint8_t lo[TL_CHUNK][16];
    int8_t  hi[TL_CHUNK][16];
} tl1_table;
static_assert(sizeof(tl1_table) == 2*TL_CHUNK*16, "wrong tl1_table size");

// R full tiles (tile_b bytes apart) x C activation columns (LUTs lut_b bytes apart, scales d[c]);
// s points at row 0 of column 0. R and C are fixed by the table entry the kernel sits in.
typedef void (*bitnet_tl_tiles_fn)(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                                   size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs);

// One rung of a tile plan: kernels for R tiles at once by column count (cols[c], c = 1 .. 4;
// NULL where there is none), used while at least min_cols columns are in the batch. The driver
// walks a plan's rungs in order, each taking as many R-tile steps as fit, so a plan ends with a
// rung of R = 1 that has cols[1].
struct bitnet_tl_rung {
    int R, min_cols;
    bitnet_tl_tiles_fn cols[BITNET_MAX_C + 1];
};

struct bitnet_tl_kernels {
    void (*build_lut)(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut);  // one activation row's tables
    int cols_multiple;                        // LUT batches hold whole multiples of this many columns
    const struct bitnet_tl_rung * gen;        // plan for one column (token generation)
    const struct bitnet_tl_rung * batch;      // plan for several
    int ngen, nbatch;
};

static inline void bitnet_tl_walk(const struct bitnet_tl_rung * plan, int nrungs, int nch, int full, const uint8_t * GGML_RESTRICT x,
                                  size_t tile_b, const uint8_t * GGML_RESTRICT lut, size_t lut_b, const float * d, int cn,
                                  float wscale, float * GGML_RESTRICT s, size_t bs) {
    int t = 0;
    for (int i = 0; i < nrungs; ++i) {
        const struct bitnet_tl_rung * g = &plan[i];
        if (cn < g->min_cols) {
            continue;
        }
        for (; t + g->R <= full; t += g->R) {
            int c = 0;
            for (int w = BITNET_MAX_C; w >= 1; --w) {  // widest kernels first
                for (; g->cols[w] != NULL && c + w <= cn; c += w) {
                    g->cols[w](nch, x + t*tile_b, tile_b, lut + c*lut_b, lut_b, d + c, wscale, s + c*bs + t*TL_TILE_ROWS, bs);
                }
            }
        }
    }
}

// ggml_gemm_tl_i8_s by tiles: the LUTs of a batch of activation columns stay in L2 while the
// thread's full tiles stream past; the tensor's last, shorter tile goes to the scalar kernel.
static inline void bitnet_tl_gemm(const struct bitnet_tl_kernels * k, enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs,
                                  const uint8_t * GGML_RESTRICT x, int nr, const int8_t * GGML_RESTRICT y, size_t by, int nc,
                                  float wscale, uint8_t * GGML_RESTRICT scratch) {
    const int    nch    = (int) ggml_tl_chunks(type, n);
    const size_t tile_b = (size_t) nch * ggml_tl_chunk_bytes(type, TL_TILE_ROWS);
    const size_t lut_b  = GGML_PAD(ggml_tl_lut_bytes(type, n), 64);
    const int    full   = nr / TL_TILE_ROWS;
    const int    m      = k->cols_multiple;
    int batch = ggml_tl_lut_batch(lut_b);
    batch = batch < m ? m : batch - batch % m;

    for (int c0 = 0; c0 < nc; c0 += batch) {
        const int cn = nc - c0 < batch ? nc - c0 : batch;
        float d[TL_SCRATCH_COLS];
        for (int c = 0; c < cn; ++c) {
            const int8_t * q = y + (c0 + c)*by;
            k->build_lut(q, n, scratch + c*lut_b);
            d[c] = bitnet_row_d(q, n);
        }
        if (cn == 1) {
            bitnet_tl_walk(k->gen, k->ngen, nch, full, x, tile_b, scratch, lut_b, d, cn, wscale, s + c0*bs, bs);
        } else {
            bitnet_tl_walk(k->batch, k->nbatch, nch, full, x, tile_b, scratch, lut_b, d, cn, wscale, s + c0*bs, bs);
        }
        if (full*TL_TILE_ROWS < nr) {
            ggml_gemm_tl_i8_s_generic(type, n, s + c0*bs + full*TL_TILE_ROWS, bs, x + full*tile_b,
                                      nr - full*TL_TILE_ROWS, y + c0*by, by, cn, wscale, NULL);
        }
    }
}
