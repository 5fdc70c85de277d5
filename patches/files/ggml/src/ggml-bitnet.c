// bitnet-tools: reference (scalar) quantization for the ternary types. See ggml-bitnet.h.
// The numpy classes in bitnet_tools/quants/ mirror these functions bit for bit: keep the
// order of floating-point operations identical (sequential double sums, float32 division,
// round-half-to-even).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-bitnet.h"

#include <math.h>
#include <string.h>
#include <assert.h>

static inline int i2_s_index(int64_t i, int * shift) {
    const int64_t g = i / QK_I2_S;
    const int     j = (int)(i % QK_I2_S);
    *shift = 6 - 2*(j / 32);
    return (int)(g*I2_S_GROUP_B + (j % 32));
}

void quantize_row_i2_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) {
    assert(k % QK_I2_S == 0);
    uint8_t * y = (uint8_t *) vy;

    // absmean threshold, as BitNet b1.58 ternarizes its latent weights
    double sum_abs = 0.0;
    for (int64_t i = 0; i < k; ++i) {
        sum_abs += fabs((double) x[i]);
    }
    const float s = (float)(sum_abs / (double) k);

    // stored scale: mean |x| over the non-zero codes (least squares for ternary codes);
    // for weights that are already ternary (q * s) this is exactly s.
    double sum_nz = 0.0;
    int64_t n_nz  = 0;
    memset(y, 0, (size_t)(k/4));
    for (int64_t i = 0; i < k; ++i) {
        int q = 0;
        if (s > 0.0f) {
            const float v = nearbyintf(x[i] / s);
            q = v > 1.0f ? 1 : v < -1.0f ? -1 : (int) v;
        }
        if (q != 0) {
            sum_nz += fabs((double) x[i]);
            n_nz++;
        }
        int shift;
        const int b = i2_s_index(i, &shift);
        y[b] |= (uint8_t)((q + 1) << shift);
    }
    const float scale = n_nz > 0 ? (float)(sum_nz / (double) n_nz) : 0.0f;

    uint8_t tail[I2_S_TAIL] = {0};
    memcpy(tail, &scale, sizeof(float));
    memcpy(y + k/4, tail, I2_S_TAIL);
}

float ggml_i2_s_scale(const void * data, int64_t n) {
    float scale;
    memcpy(&scale, (const uint8_t *) data + n/4, sizeof(float));
    return scale;
}

void dequantize_row_i2_s(const void * GGML_RESTRICT vx, float * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_I2_S == 0);
    const uint8_t * x = (const uint8_t *) vx;
    const float scale = ggml_i2_s_scale(vx, k);
    for (int64_t i = 0; i < k; ++i) {
        int shift;
        const int b = i2_s_index(i, &shift);
        const int q = ((x[b] >> shift) & 3) - 1;
        y[i] = (float) q * scale;
    }
}

size_t quantize_i2_s(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    quantize_row_i2_s_ref(src, dst, nrows*n_per_row);
    return (size_t)(nrows*n_per_row/4);  // codes only: ggml_quantize_chunk checks rows * row_size
}

void quantize_row_i8_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) {
    int8_t * q = (int8_t *) vy;
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    // 127 / max|x|, with BitNet's clamp of max|x| at 1e-5
    const float iscale = 127.0f / fmaxf(amax, 1e-5f);
    int32_t sum = 0;
    for (int64_t i = 0; i < k; ++i) {
        const float v = nearbyintf(x[i] * iscale);
        const int   qi = v > 127.0f ? 127 : v < -128.0f ? -128 : (int) v;
        q[i] = (int8_t) qi;
        sum += qi;
    }
    const float d = 1.0f / iscale;
    memcpy(q + k, &d, sizeof(float));
    memcpy(q + k + sizeof(float), &sum, sizeof(int32_t));
}
