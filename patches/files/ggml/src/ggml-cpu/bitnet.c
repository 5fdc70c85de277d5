// bitnet-tools: generic (scalar) ternary kernels and the MUL_MAT driver for I2_S, TL1, TL2.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "quants.h"
#include "bitnet.h"

#include <string.h>
#include <assert.h>

// Bytes between consecutive I8_S rows in the work buffer: a row plus its tail, rounded to
// a cache line so that kernels may load whole vectors.
static size_t i8_s_row_stride(int64_t n) {
    return GGML_PAD(I8_S_ROW_SIZE(n), 64);
}

void quantize_row_i8_s_generic(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_i8_s_ref(x, y, k);
}

// exact integer dot of one row of codes with one row of int8: sum (code - 1) * q
static int32_t dot_i2_s_i8_s_scalar(int n, const uint8_t * GGML_RESTRICT x, const int8_t * GGML_RESTRICT q) {
    int32_t sum = 0;
    for (int g = 0; g < n / QK_I2_S; ++g) {
        const uint8_t * xg = x + g*I2_S_GROUP_B;
        const int8_t  * qg = q + g*QK_I2_S;
        for (int j = 0; j < QK_I2_S; ++j) {
            const int code = (xg[j % 32] >> (6 - 2*(j / 32))) & 3;
            sum += (code - 1) * qg[j];
        }
    }
    return sum;
}

static float i8_s_row_d(const void * row, int n) {
    float d;
    memcpy(&d, (const char *) row + n, sizeof(float));
    return d;
}

void ggml_vec_dot_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1 && n % QK_I2_S == 0);
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    const int32_t isum = dot_i2_s_i8_s_scalar(n, (const uint8_t *) vx, (const int8_t *) vy);
    *s = (float) isum * i8_s_row_d(vy, n) * ggml_i2_s_scale(vx, n, 1);
}

void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1 && n % QK_I2_S == 0);
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    ggml_gemm_i2_s_i8_s(n, s, 0, vx, 0, vy, 0, 1, 1, ggml_i2_s_scale(vx, n, 1));
}

void ggml_gemm_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                 const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
    for (int c = 0; c < nc; ++c) {
        const int8_t * q = (const int8_t *) ((const char *) vy + c*by);
        const float    d = i8_s_row_d(q, n);
        for (int r = 0; r < nr; ++r) {
            const uint8_t * x = (const uint8_t *) vx + r*bx;
            s[c*bs + r] = (float) dot_i2_s_i8_s_scalar(n, x, q) * d * wscale;
        }
    }
}

// ---------------------------------------------------------------- TL1 / TL2

size_t ggml_tl_lut_bytes(enum ggml_type type, int n) {
    return (size_t) ggml_tl_chunks(type, n) * 2 * TL_CHUNK * TL_LUT_ENTRIES(type);
}

size_t ggml_tl_scratch_bytes(enum ggml_type type, int n) {
    return TL_SCRATCH_COLS * GGML_PAD(ggml_tl_lut_bytes(type, n), 64) + 64;
}

int ggml_tl_lut_batch(size_t lut_b) {
    const size_t batch = (512*1024) / lut_b;
    return batch < 1 ? 1 : batch > TL_SCRATCH_COLS ? TL_SCRATCH_COLS : (int) batch;
}

// trit p (most significant first) of code v, for groups of gw weights
static inline int tl_trit(int v, int gw, int p) {
    static const int pow3[3] = {1, 3, 9};
    return (v / pow3[gw - 1 - p]) % 3 - 1;
}

void ggml_tl_build_lut(enum ggml_type type, const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int gw    = ggml_tl_group(type);
    const int E     = TL_LUT_ENTRIES(type);
    const int ncode = gw == 2 ? 9 : 27;
    const int64_t nc = ggml_tl_chunks(type, n);
    for (int64_t c = 0; c < nc; ++c) {
        uint8_t * lo = lut + c*2*TL_CHUNK*E;
        uint8_t * hi = lo + TL_CHUNK*E;
        for (int j = 0; j < TL_CHUNK; ++j) {
            int a[3] = {0, 0, 0};
            for (int p = 0; p < gw; ++p) {
                const int64_t i = (c*TL_CHUNK + j)*gw + p;
                a[p] = i < n ? q[i] : 0;
            }
            for (int v = 0; v < E; ++v) {
                int val = 0;
                if (v < ncode) {
                    for (int p = 0; p < gw; ++p) {
                        val += tl_trit(v, gw, p) * a[p];
                    }
                }
                lo[j*E + v] = (uint8_t)(val & 0xFF);
                hi[j*E + v] = (uint8_t)(int8_t)((val - (val & 0xFF)) / 256);
            }
        }
    }
}

// exact integer dots of the h rows of one tile (chunks read as the layout describes) with q
static void tl_dot_tile_scalar(enum ggml_type type, int n, const uint8_t * tile, int h, const int8_t * q, int32_t * sum) {
    const int     gw = ggml_tl_group(type);
    const int64_t nc = ggml_tl_chunks(type, n);
    const size_t  cb = ggml_tl_chunk_bytes(type, h);
    for (int i = 0; i < h; ++i) {
        sum[i] = 0;
    }
    for (int64_t c = 0; c < nc; ++c) {
        const uint8_t * chunk = tile + c*cb;
        for (int lane = 0; lane < TL_CHUNK*h; ++lane) {
            int code = lane < 2*h ? chunk[lane] & 0x0F : chunk[lane - 2*h] >> 4;
            if (type == GGML_TYPE_TL2) {
                code |= ((chunk[2*h + lane/8] >> (lane % 8)) & 1) << 4;
            }
            const int64_t g = c*TL_CHUNK + lane % TL_CHUNK;
            for (int p = 0; p < gw; ++p) {
                const int64_t k = g*gw + p;
                if (k < n) {
                    sum[lane / TL_CHUNK] += tl_trit(code, gw, p) * q[k];
                }
            }
        }
    }
}

static void vec_dot_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy) {
    int32_t isum;
    tl_dot_tile_scalar(type, n, (const uint8_t *) vx, 1, (const int8_t *) vy, &isum);
    *s = (float) isum * i8_s_row_d(vy, n) * ggml_tl_scale(type, vx, n, 1);
}

void ggml_vec_dot_tl1_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    vec_dot_tl_i8_s(GGML_TYPE_TL1, n, s, vx, vy);
}

void ggml_vec_dot_tl2_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    vec_dot_tl_i8_s(GGML_TYPE_TL2, n, s, vx, vy);
}

void ggml_gemm_tl_i8_s_generic(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                               const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
    GGML_UNUSED(scratch);
    const size_t tile_bytes = (size_t) ggml_tl_chunks(type, n) * ggml_tl_chunk_bytes(type, TL_TILE_ROWS);
    for (int c = 0; c < nc; ++c) {
        const int8_t * q = (const int8_t *) ((const char *) vy + c*by);
        const float    d = i8_s_row_d(q, n);
        for (int r0 = 0; r0 < nr; r0 += TL_TILE_ROWS) {
            const int h = nr - r0 < TL_TILE_ROWS ? nr - r0 : TL_TILE_ROWS;
            int32_t isum[TL_TILE_ROWS];
            tl_dot_tile_scalar(type, n, (const uint8_t *) vx + (r0 / TL_TILE_ROWS)*tile_bytes, h, q, isum);
            for (int i = 0; i < h; ++i) {
                s[c*bs + r0 + i] = (float) isum[i] * d * wscale;
            }
        }
    }
}

// ---------------------------------------------------------------- MUL_MAT driver

bool ggml_bitnet_is_ternary(enum ggml_type type) {
    return type == GGML_TYPE_I2_S || type == GGML_TYPE_TL1 || type == GGML_TYPE_TL2;
}

bool ggml_bitnet_tl2_as_i2_s(void) {
#if defined(GGML_BITNET_TL_VPERMB)
    return false;  // vpermb decodes a 5-bit code in one lookup: TL2 is the fastest type here
#else
    // AVX2's 16-entry pshufb needs two lookups and byte arithmetic per code (1 thread: 0.71x
    // I2_S's generation speed), NEON and plain C run TL2 through the scalar kernel
    return true;
#endif
}

static bool is_tl(enum ggml_type type) {
    return type == GGML_TYPE_TL1 || type == GGML_TYPE_TL2;
}

// per-thread scratch of the TL kernels, after the I8_S rows
static size_t scratch_bytes(const struct ggml_tensor * src0) {
    return is_tl(src0->type) ? GGML_PAD(ggml_tl_scratch_bytes(src0->type, (int) src0->ne[0]), 64) : 0;
}

// Length of the I8_S activation rows the kernels read: I2_S rows hold whole groups of 128
// (the last one padded with zero weights), so the activations are padded with zeros to match.
static int64_t i8_s_len(const struct ggml_tensor * src0) {
    return src0->type == GGML_TYPE_I2_S ? GGML_PAD(src0->ne[0], QK_I2_S) : src0->ne[0];
}

// src1 row x (k values) -> I8_S row of nq >= k values, zeros after the k quantized ones
static void quantize_padded(void (*quantize)(const float * GGML_RESTRICT, void * GGML_RESTRICT, int64_t),
                            const float * x, int8_t * y, int64_t k, int64_t nq) {
    quantize(x, y, k);
    if (nq > k) {
        memmove(y + nq, y + k, I8_S_ROW_EXTRA);  // d and sum(q) follow the padded row
        memset(y + k, 0, (size_t)(nq - k));
    }
}

size_t ggml_bitnet_mul_mat_wsize(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];
    return i8_s_row_stride(i8_s_len(src0)) * (size_t) ggml_nrows(src1) + scratch_bytes(src0) * (size_t) n_threads + 64;
}

// Weight rows per task: a multiple of the kernels' row tile, so that tiles stay whole.
#define BITNET_ROW_TILE 16

// Rows per chunk when threads take chunks as they finish: about 8 chunks per thread, at least
// 64 rows, whole row tiles.
static int64_t rows_per_chunk(int64_t nr, int nth) {
    return GGML_PAD(MAX(64, nr / (8*nth)), BITNET_ROW_TILE);
}
// Longest activation row quantized into a per-thread stack buffer when there is one row.
#define BITNET_GEMV_MAXK 16384

// The weights of rows ir0.. of 2-D slice (i02, i03). ggml's strides of these types are nominal
// (1 byte per weight): the real offsets come from the layouts. TL tiles span the whole 2-D
// tensor, which is the only slice.
static const char * weight_rows(const struct ggml_tensor * src0, int64_t i02, int64_t i03, int64_t ir0) {
    if (is_tl(src0->type)) {
        return (const char *) src0->data + (size_t)(ir0 / TL_TILE_ROWS) * (size_t) ggml_tl_chunks(src0->type, src0->ne[0])
                                         * ggml_tl_chunk_bytes(src0->type, TL_TILE_ROWS);
    }
    const int64_t row = (i03*src0->ne[2] + i02)*src0->ne[1] + ir0;
    return (const char *) src0->data + (size_t) row*ggml_i2_s_row_bytes(src0->ne[0]);
}

static float weight_scale(const struct ggml_tensor * src0) {
    if (is_tl(src0->type)) {
        return ggml_tl_scale(src0->type, src0->data, src0->ne[0], src0->ne[1]);
    }
    return ggml_i2_s_scale(src0->data, src0->ne[0], ggml_nrows(src0));
}

static void bitnet_gemm(const struct ggml_compute_params * params, const struct ggml_tensor * src0, float * s, size_t bs,
                        const char * x, int nr, const void * y, size_t by, int nc, float wscale, void * scratch) {
    if (is_tl(src0->type)) {
        const int n = (int) src0->ne[0];
        (params->use_ref ? ggml_gemm_tl_i8_s_generic : ggml_gemm_tl_i8_s)(src0->type, n, s, bs, x, nr, y, by, nc, wscale, scratch);
    } else {
        const int n = (int) i8_s_len(src0);  // the padded row: zero weights against zero activations
        (params->use_ref ? ggml_gemm_i2_s_i8_s_generic : ggml_gemm_i2_s_i8_s)(n, s, bs, x, ggml_i2_s_row_bytes(src0->ne[0]),
                                                                              y, by, nr, nc, wscale);
    }
}

void ggml_bitnet_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];

    GGML_TENSOR_BINARY_OP_LOCALS

    GGML_ASSERT(ggml_bitnet_is_ternary(src0->type));
    GGML_ASSERT(src1->type == GGML_TYPE_F32);
    GGML_ASSERT(ggml_is_contiguous(src0));  // real offsets are computed from the layout
    GGML_ASSERT(!is_tl(src0->type) || (ne02 == 1 && ne03 == 1));  // tiles span the whole 2-D tensor
    GGML_ASSERT(nb10 == sizeof(float));
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);

    const int ith = params->ith;
    const int nth = params->nth;

    const int64_t  nq     = i8_s_len(src0);
    const size_t   stride = i8_s_row_stride(nq);
    char * const   wdata  = (char *) GGML_PAD((uintptr_t) params->wdata, 64);
    GGML_ASSERT(params->wsize >= ggml_bitnet_mul_mat_wsize(dst, nth));

    const int64_t nrows1 = ne11*ne12*ne13;
    void * const scratch = wdata + stride*nrows1 + scratch_bytes(src0)*ith;
    void (* const quantize)(const float * GGML_RESTRICT, void * GGML_RESTRICT, int64_t) =
        params->use_ref ? quantize_row_i8_s_generic : quantize_row_i8_s;

    const int64_t rows_per_th = GGML_PAD((ne01 + nth - 1) / nth, BITNET_ROW_TILE);
    const int64_t ir0 = rows_per_th * ith;
    const int64_t ir1 = MIN(ir0 + rows_per_th, ne01);

    if (nrows1 == 1 && ne02 == 1 && ne03 == 1 && nq <= BITNET_GEMV_MAXK) {
        // one activation row (token generation): each thread quantizes it into its own buffer,
        // which is cheap next to its slice of the weights and saves a barrier
        if (ir0 >= ir1) {
            return;
        }
        int64_t ybuf[(BITNET_GEMV_MAXK + 64) / sizeof(int64_t)];
        quantize_padded(quantize, (const float *) src1->data, (int8_t *) ybuf, ne10, nq);
        bitnet_gemm(params, src0, (float *) dst->data + ir0, nb1/sizeof(float), weight_rows(src0, 0, 0, ir0),
                    (int)(ir1 - ir0), ybuf, 0, 1, weight_scale(src0), scratch);
        return;
    }

    // one 2-D I2_S product: rows handed out in chunks as threads finish (see below)
    const bool chunked = !is_tl(src0->type) && ne12 == 1 && ne13 == 1;
    const int64_t chunk = rows_per_chunk(ne01, nth);
    if (chunked && ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, nth);  // each thread takes chunk ith first
    }

    // 1. quantize every activation row to I8_S (rows shared among threads)
    for (int64_t r = ith; r < nrows1; r += nth) {
        const int64_t i13 = r / (ne11*ne12);
        const int64_t i12 = (r / ne11) % ne12;
        const int64_t i11 = r % ne11;
        const float * x = (const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13);
        quantize_padded(quantize, x, (int8_t *) (wdata + r*stride), ne10, nq);
    }
    ggml_barrier(params->threadpool);

    // 2. each thread takes weight rows and multiplies them by all activation rows
    const float wscale = weight_scale(src0);
    if (chunked) {
        // With equal halves one thread waits for the other whenever the host slows either down
        // (2 shared vCPUs); chunks of rows, taken as threads finish, even that out. TL keeps
        // the halves: each call builds lookup tables for all columns.
        for (int64_t c = ith; c*chunk < ne01; c = ggml_threadpool_chunk_add(params->threadpool, 1)) {
            const int64_t r0 = c*chunk;
            const int64_t r1 = MIN(r0 + chunk, ne01);
            bitnet_gemm(params, src0, (float *) dst->data + r0, nb1/sizeof(float), weight_rows(src0, 0, 0, r0), (int)(r1 - r0),
                        wdata, stride, (int) ne11, wscale, scratch);
        }
        return;
    }
    if (ir0 >= ir1) {
        return;
    }

    const int64_t r2 = ne12 / ne02;  // broadcast factors
    const int64_t r3 = ne13 / ne03;

    for (int64_t i13 = 0; i13 < ne13; ++i13) {
        for (int64_t i12 = 0; i12 < ne12; ++i12) {
            const char * x = weight_rows(src0, i12/r2, i13/r3, ir0);
            const char * y = wdata + (i13*ne12*ne11 + i12*ne11)*stride;
            float      * s = (float *) ((char *) dst->data + i12*nb2 + i13*nb3) + ir0;
            bitnet_gemm(params, src0, s, nb1/sizeof(float), x, (int)(ir1 - ir0), y, stride, (int) ne11, wscale, scratch);
        }
    }
}

// ---------------------------------------------------------------- Q6_K head, few columns

bool ggml_bitnet_mul_mat_q6_k(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
#if defined(GGML_BITNET_Q6_K_GEMM)
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];
    // one 2-D product of contiguous rows, as the output head is; anything else goes to ggml
    if (params->use_ref || src0->type != GGML_TYPE_Q6_K || src1->type != GGML_TYPE_F32 ||
        src1->ne[1] < 2 || src1->ne[1] > GGML_BITNET_Q6_K_MAX_COLS || ggml_nrows(src1) != src1->ne[1] ||
        ggml_nrows(src0) != src0->ne[1] || !ggml_is_contiguous(src0) || src1->nb[0] != sizeof(float) ||
        dst->nb[0] != sizeof(float) || src0->ne[0] % QK_K != 0) {
        return false;
    }
    const int     ith = params->ith;
    const int     nth = params->nth;
    const int64_t n   = src0->ne[0];
    const int64_t nr  = src0->ne[1];
    const int64_t nc  = src1->ne[1];
    const size_t  by  = ggml_row_size(GGML_TYPE_Q8_K, n);
    char * const  wdata = (char *) params->wdata;
    GGML_ASSERT(params->wsize >= by*(size_t) nc);  // ggml plans this much for Q6_K's Q8_K copy of src1

    if (ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, nth);  // each thread takes chunk ith first
    }
    for (int64_t c = ith; c < nc; c += nth) {
        quantize_row_q8_K((const float *) ((const char *) src1->data + c*src1->nb[1]), wdata + c*by, n);
    }
    ggml_barrier(params->threadpool);

    // chunks of rows taken as threads finish, as in ggml_bitnet_mul_mat
    const int64_t chunk = rows_per_chunk(nr, nth);
    for (int64_t c = ith; c*chunk < nr; c = ggml_threadpool_chunk_add(params->threadpool, 1)) {
        const int64_t r0 = c*chunk;
        const int64_t r1 = MIN(r0 + chunk, nr);
        ggml_gemm_q6_k_q8_k((int) n, (float *) dst->data + r0, dst->nb[1] / sizeof(float), (const char *) src0->data + r0*src0->nb[1],
                            src0->nb[1], wdata, by, (int)(r1 - r0), (int) nc);
    }
    return true;
#else
    GGML_UNUSED(params);
    GGML_UNUSED(dst);
    return false;
#endif
}

// ---------------------------------------------------------------- attention: few queries, a prompt

// A block of GGML_BITNET_ATTN_PROMPT_QP (16) query positions takes the prompt kernel when it
// holds at least this many: its cost is nearly that of a full block, where the few-query
// kernel's grows with each position (test-backend-ops perf, 2B-4T heads, 512 and 2048 cache
// rows: even at 10-11 positions on Zen 4)
#define BITNET_ATTN_PROMPT_MIN 11

#if defined(GGML_BITNET_ATTN_F16)
// the few-query kernel: query position iq1 of sequence iq3, heads h0 .. h0 + nr - 1 (of KV head ik2)
static void bitnet_attn_position(const struct ggml_tensor * dst, int64_t iq1, int64_t h0, int nr, int64_t ik2, int64_t iq3,
                                 float scale) {
    const struct ggml_tensor * q    = dst->src[0];
    const struct ggml_tensor * k    = dst->src[1];
    const struct ggml_tensor * v    = dst->src[2];
    const struct ggml_tensor * mask = dst->src[3];
    const int64_t rk3 = q->ne[3]/k->ne[3];
    const float       * qp[4];
    const ggml_fp16_t * mp[4];
    float             * op[4];
    for (int r = 0; r < nr; ++r) {
        const int64_t h = h0 + r;
        qp[r] = (const float *) ((const char *) q->data + iq1*q->nb[1] + h*q->nb[2] + iq3*q->nb[3]);
        mp[r] = mask ? (const ggml_fp16_t *) ((const char *) mask->data + iq1*mask->nb[1] + (h % mask->ne[2])*mask->nb[2] +
                                              (iq3 % mask->ne[3])*mask->nb[3]) : NULL;
        // dst is [dv, heads, queries, sequences], rows nb[1] apart (as ggml writes it)
        op[r] = (float *) ((char *) dst->data + (iq3*dst->ne[2]*dst->ne[1] + h + iq1*dst->ne[1])*dst->nb[1]);
    }
    const char * kp = (const char *) k->data + ik2*k->nb[2] + (iq3/rk3)*k->nb[3];
    const char * vp = (const char *) v->data + ik2*v->nb[2] + (iq3/rk3)*v->nb[3];
    ggml_bitnet_attn_f16(nr, (int) k->ne[0], (int) v->ne[0], k->ne[1], qp, scale, kp, k->nb[1], vp, v->nb[1], mask ? mp : NULL, op);
}
#endif

bool ggml_bitnet_flash_attn_ext(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
#if defined(GGML_BITNET_ATTN_F16)
    const struct ggml_tensor * q    = dst->src[0];
    const struct ggml_tensor * k    = dst->src[1];
    const struct ggml_tensor * v    = dst->src[2];
    const struct ggml_tensor * mask = dst->src[3];
    float scale, max_bias, softcap;
    memcpy(&scale,    (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&softcap,  (const float *) dst->op_params + 2, sizeof(float));
    const int64_t dk = k->ne[0];
    const int64_t dv = v->ne[0];
    if (params->use_ref || q->type != GGML_TYPE_F32 || k->type != GGML_TYPE_F16 || v->type != GGML_TYPE_F16 ||
        dst->src[4] != NULL || max_bias != 0.0f || softcap != 0.0f || (mask && mask->type != GGML_TYPE_F16) ||
        dk % 16 != 0 || dk > GGML_BITNET_ATTN_MAX_D || dv % 64 != 0 || dv > GGML_BITNET_ATTN_MAX_D ||
        q->nb[0] != sizeof(float) || k->nb[0] != sizeof(ggml_fp16_t) || v->nb[0] != sizeof(ggml_fp16_t) ||
        v->ne[2] != k->ne[2] || v->ne[3] != k->ne[3] || dst->nb[0] != sizeof(float)) {
        return false;
    }
    const int64_t nq   = q->ne[1];
    const int64_t nkh  = k->ne[2];
    const int64_t rk2  = q->ne[2]/nkh;       // query heads per KV head
    const int64_t rk3  = q->ne[3]/k->ne[3];
    const int64_t nsub = (rk2 + 3)/4;        // groups of up to 4 of them
    // each thread's scratch for the prompt kernel: its share of the op's work buffer (ggml plans
    // one for its own tiled path, larger than ours), from a 64-byte boundary
    const size_t share = params->wsize/params->nth;
    if (nq >= BITNET_ATTN_PROMPT_MIN && (!mask || mask->ne[2] == 1) &&  // the prompt kernel takes one mask for all heads
        share >= GGML_BITNET_ATTN_PROMPT_WORK(dk, dv)*sizeof(float) + 64) {
        float * work = (float *) (((uintptr_t) params->wdata + params->ith*share + 63) & ~(uintptr_t) 63);
        const int64_t nblk = (nq + GGML_BITNET_ATTN_PROMPT_QP - 1)/GGML_BITNET_ATTN_PROMPT_QP;  // blocks of positions
        const int64_t per  = nsub*nkh*q->ne[3];
        if (params->ith == 0) {
            ggml_threadpool_chunk_set(params->threadpool, params->nth);  // each thread takes item ith first
        }
        ggml_barrier(params->threadpool);
        // one item: a block of positions of one sequence, up to 4 heads of one KV head; the last
        // positions first, as they see the most cache rows (the threads finish together)
        for (int64_t it = params->ith; it < nblk*per; it = ggml_threadpool_chunk_add(params->threadpool, 1)) {
            const int64_t p0  = GGML_BITNET_ATTN_PROMPT_QP*(nblk - 1 - it/per);
            const int64_t sub = it % nsub;
            const int64_t ik2 = (it/nsub) % nkh;
            const int64_t iq3 = it/nsub/nkh % q->ne[3];
            const int64_t h0  = ik2*rk2 + 4*sub;
            const int     nh  = (int) MIN(4, rk2 - 4*sub);
            const int     np  = (int) MIN(GGML_BITNET_ATTN_PROMPT_QP, nq - p0);
            if (np < BITNET_ATTN_PROMPT_MIN) {  // the prompt's last few positions
                for (int64_t iq1 = p0; iq1 < p0 + np; ++iq1) {
                    bitnet_attn_position(dst, iq1, h0, nh, ik2, iq3, scale);
                }
                continue;
            }
            ggml_bitnet_attn_f16_prompt(nh, np, (int) dk, (int) dv, k->ne[1],
                (const float *) ((const char *) q->data + p0*q->nb[1] + h0*q->nb[2] + iq3*q->nb[3]), q->nb[1], q->nb[2], scale,
                (const char *) k->data + ik2*k->nb[2] + (iq3/rk3)*k->nb[3], k->nb[1],
                (const char *) v->data + ik2*v->nb[2] + (iq3/rk3)*v->nb[3], v->nb[1],
                mask ? (const ggml_fp16_t *) ((const char *) mask->data + p0*mask->nb[1] + (iq3 % mask->ne[3])*mask->nb[3]) : NULL,
                mask ? mask->nb[1] : 0,
                // dst is [dv, heads, queries, sequences], rows nb[1] apart (as ggml writes it)
                (float *) ((char *) dst->data + (iq3*dst->ne[2]*dst->ne[1] + h0 + p0*dst->ne[1])*dst->nb[1]),
                dst->ne[1]*dst->nb[1], dst->nb[1], work);
        }
        return true;
    }
    // one item: one query position of one sequence, up to 4 heads of one KV head
    const int64_t n = nq*nkh*nsub*q->ne[3];
    for (int64_t it = params->ith; it < n; it += params->nth) {
        const int64_t iq1 = it % nq;
        const int64_t sub = (it/nq) % nsub;
        const int64_t ik2 = (it/nq/nsub) % nkh;
        const int64_t iq3 = it/nq/nsub/nkh;
        bitnet_attn_position(dst, iq1, ik2*rk2 + 4*sub, (int) MIN(4, rk2 - 4*sub), ik2, iq3, scale);
    }
    return true;
#else
    GGML_UNUSED(params);
    GGML_UNUSED(dst);
    return false;
#endif
}
