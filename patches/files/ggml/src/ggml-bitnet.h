// bitnet-tools: ternary (BitNet b1.58) types for ggml -- format definitions and reference code.
//
// I2_S is the x86 layout of Microsoft's bitnet.cpp, kept byte for byte so that published
// ggml-model-i2_s.gguf files load unchanged:
//   - the tensor is cut into groups of 128 consecutive elements (rows are multiples of 128,
//     so a group never crosses a row); group g owns bytes 32g .. 32g+31;
//   - element j of a group lives in byte 32g + (j % 32) at bit shift 6 - 2*(j / 32);
//   - codes 0, 1, 2 mean -1, 0, +1;
//   - after the n/4 code bytes comes ONE float32 scale for the whole tensor, padded to a
//     32-byte tail (ggml_nbytes adds it). Rows therefore hold codes only.
//
// I8_S is the activation partner: a row of int8 quantized with one absmax scale per row,
// exactly as BitNet b1.58 was trained. Row layout: int8 q[n], float d, int32 sum(q).
#pragma once

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_I2_S        128  // elements per group
#define I2_S_GROUP_B   32   // bytes per group
#define I2_S_TAIL      32   // bytes after the codes: float scale + padding
#define I8_S_ROW_EXTRA 8    // bytes after an I8_S row's int8 values: float d, int32 sum

// bytes of an I8_S row of n values
#define I8_S_ROW_SIZE(n) ((size_t)(n) + I8_S_ROW_EXTRA)

// I2_S: quantize k floats (one whole tensor, or a whole test vector) to codes + tail scale.
GGML_API void   quantize_row_i2_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_i2_s(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
// ggml_quantize_chunk entry: the rows given are treated as the whole tensor (scale written after them).
GGML_API size_t quantize_i2_s(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
// the per-tensor scale stored after the codes of a tensor of n elements
GGML_API float  ggml_i2_s_scale(const void * data, int64_t n);

// I8_S: one row of k floats to int8 + scale + sum.
GGML_API void   quantize_row_i8_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

#ifdef __cplusplus
}
#endif
