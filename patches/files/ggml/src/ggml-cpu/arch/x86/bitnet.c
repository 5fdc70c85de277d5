// bitnet-tools: x86 ternary kernels (AVX2, AVX-512 / VNNI). Scalar reference: ../../bitnet.c
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet.h"

#include <string.h>

void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    ggml_vec_dot_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nrc);
}

void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale) {
    ggml_gemm_i2_s_i8_s_generic(n, s, bs, vx, bx, vy, by, nr, nc, wscale);
}
