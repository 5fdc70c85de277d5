// bitnet-tools: generic (scalar) ternary kernels and the I2_S MUL_MAT driver.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
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
    assert(nrc == 1);
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);
    const int32_t isum = dot_i2_s_i8_s_scalar(n, (const uint8_t *) vx, (const int8_t *) vy);
    *s = (float) isum * i8_s_row_d(vy, n) * ggml_i2_s_scale(vx, n);
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

size_t ggml_bitnet_mul_mat_wsize(const struct ggml_tensor * dst) {
    const struct ggml_tensor * src1 = dst->src[1];
    return i8_s_row_stride(src1->ne[0]) * (size_t) ggml_nrows(src1) + 64;
}

// Weight rows per task: a multiple of the kernels' row tile, so that tiles stay whole.
#define BITNET_ROW_TILE 16
// Longest activation row quantized into a per-thread stack buffer when there is one row.
#define BITNET_GEMV_MAXK 16384

void ggml_bitnet_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];

    GGML_TENSOR_BINARY_OP_LOCALS

    GGML_ASSERT(src0->type == GGML_TYPE_I2_S);
    GGML_ASSERT(src1->type == GGML_TYPE_F32);
    GGML_ASSERT(ne00 % QK_I2_S == 0);
    GGML_ASSERT(nb00 == ggml_type_size(src0->type) && nb10 == sizeof(float));
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);

    const int ith = params->ith;
    const int nth = params->nth;

    // 1. quantize every activation row to I8_S (rows shared among threads)
    const size_t   stride = i8_s_row_stride(ne10);
    char * const   wdata  = (char *) GGML_PAD((uintptr_t) params->wdata, 64);
    GGML_ASSERT(params->wsize >= ggml_bitnet_mul_mat_wsize(dst));

    const int64_t nrows1 = ne11*ne12*ne13;
    void (* const quantize)(const float * GGML_RESTRICT, void * GGML_RESTRICT, int64_t) =
        params->use_ref ? quantize_row_i8_s_generic : quantize_row_i8_s;

    const int64_t rows_per_th = GGML_PAD((ne01 + nth - 1) / nth, BITNET_ROW_TILE);
    const int64_t ir0 = rows_per_th * ith;
    const int64_t ir1 = MIN(ir0 + rows_per_th, ne01);

    if (nrows1 == 1 && ne02 == 1 && ne03 == 1 && ne10 <= BITNET_GEMV_MAXK) {
        // one activation row (token generation): each thread quantizes it into its own buffer,
        // which is cheap next to its slice of the weights and saves a barrier
        if (ir0 >= ir1) {
            return;
        }
        int64_t ybuf[(BITNET_GEMV_MAXK + 64) / sizeof(int64_t)];
        const float wscale = ggml_i2_s_scale(src0->data, ggml_nelements(src0));
        quantize((const float *) src1->data, ybuf, ne10);
        const char * x = (const char *) src0->data + ir0*nb01;
        float      * s = (float *) dst->data + ir0;
        if (params->use_ref) {
            ggml_gemm_i2_s_i8_s_generic((int) ne00, s, nb1/sizeof(float), x, nb01, ybuf, 0, (int)(ir1 - ir0), 1, wscale);
        } else {
            ggml_gemm_i2_s_i8_s((int) ne00, s, nb1/sizeof(float), x, nb01, ybuf, 0, (int)(ir1 - ir0), 1, wscale);
        }
        return;
    }

    for (int64_t r = ith; r < nrows1; r += nth) {
        const int64_t i13 = r / (ne11*ne12);
        const int64_t i12 = (r / ne11) % ne12;
        const int64_t i11 = r % ne11;
        const float * x = (const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13);
        quantize(x, wdata + r*stride, ne10);
    }
    ggml_barrier(params->threadpool);

    // 2. each thread takes a slice of weight rows and multiplies it by all activation rows
    // one scale for the whole tensor, after the codes of all its rows
    const float wscale = ggml_i2_s_scale(src0->data, ggml_nelements(src0));

    if (ir0 >= ir1) {
        return;
    }

    const int64_t r2 = ne12 / ne02;  // broadcast factors
    const int64_t r3 = ne13 / ne03;

    for (int64_t i13 = 0; i13 < ne13; ++i13) {
        for (int64_t i12 = 0; i12 < ne12; ++i12) {
            const char * x = (const char *) src0->data + (i12/r2)*nb02 + (i13/r3)*nb03 + ir0*nb01;
            const char * y = wdata + (i13*ne12*ne11 + i12*ne11)*stride;
            float      * s = (float *) ((char *) dst->data + i12*nb2 + i13*nb3) + ir0;
            if (params->use_ref) {
                ggml_gemm_i2_s_i8_s_generic((int) ne00, s, nb1/sizeof(float), x, nb01, y, stride, (int)(ir1 - ir0), (int) ne11, wscale);
            } else {
                ggml_gemm_i2_s_i8_s((int) ne00, s, nb1/sizeof(float), x, nb01, y, stride, (int)(ir1 - ir0), (int) ne11, wscale);
            }
        }
    }
}
