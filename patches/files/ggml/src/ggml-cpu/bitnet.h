// bitnet-tools: CPU kernels for the ternary types (I2_S x I8_S).
// Generic (scalar) versions live in bitnet.c; per-architecture versions in arch/<arch>/bitnet.c
// define the same names without the _generic suffix.
#pragma once

#include "ggml.h"
#include "ggml-bitnet.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// activations: one row of k floats -> I8_S row (int8 q[k], float d, int32 sum)
void quantize_row_i8_s(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_i8_s_generic(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// vec_dot in ggml's signature: vx = n I2_S codes followed by their tail scale (a whole test
// vector), vy = one I8_S row. Used by test-quantize-fns; mul_mat uses the GEMM below.
void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// nr weight rows (I2_S codes, row stride bx bytes) times nc activation rows (I8_S, stride by
// bytes): s[c*bs + r] = (sum_i (code_ri - 1) * q_ci) * d_c * wscale. n is a multiple of 128.
// nr and nc are any positive counts (kernels tile internally and handle the edges).
void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale);
void ggml_gemm_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                 const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale);

// MUL_MAT with an I2_S src0: the whole op (activation quantization, threading, kernels).
void   ggml_bitnet_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst);
// work buffer it needs (the I8_S copy of src1)
size_t ggml_bitnet_mul_mat_wsize(const struct ggml_tensor * dst);

// Architectures without their own file use the generic kernels.
#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86))
#define quantize_row_i8_s_generic      quantize_row_i8_s
#define ggml_vec_dot_i2_s_i8_s_generic ggml_vec_dot_i2_s_i8_s
#define ggml_gemm_i2_s_i8_s_generic    ggml_gemm_i2_s_i8_s
#endif

#ifdef __cplusplus
}
#endif
