// bitnet-tools: ternary (BitNet b1.58) types for ggml -- format definitions and reference code.
//
// I2_S is the x86 layout of Microsoft's bitnet.cpp, kept byte for byte so that published
// ggml-model-i2_s.gguf files load unchanged:
//   - each row is cut into groups of 128 consecutive elements; group g of the tensor (rows
//     one after the other) owns bytes 32g .. 32g+31;
//   - element j of a group lives in byte 32g + (j % 32) at bit shift 6 - 2*(j / 32);
//   - codes 0, 1, 2 mean -1, 0, +1;
//   - after the code bytes comes ONE float32 scale for the whole tensor, padded to a 32-byte
//     tail (ggml_nbytes adds it). Rows therefore hold codes only.
// bitnet-tools extension: a row whose width is not a multiple of 128 (bitnet_b1_58-3B's 8640)
// is padded with zero weights (code 1) to whole groups, so it takes ggml_i2_s_row_bytes(n)
// bytes. Widths that are multiples of 128 -- every published bitnet.cpp file -- are unchanged.
// Like TL1/TL2, ggml's row size for I2_S is therefore nominal (1 byte per weight) and the real
// sizes come from ggml_ternary_nbytes / ggml_i2_s_row_bytes.
//
// TL1 and TL2 are lookup-table types (docs/tl.md): rows are cut into groups of g weights
// (TL1: g = 2, a 4-bit code 3*(t0+1) + (t1+1); TL2: g = 3, a 5-bit code 9*(t0+1) + 3*(t1+1) + (t2+1)),
// padded with zero weights to chunks of 4 groups. Rows are stored in tiles of 16 (the last tile
// of a tensor holds the remaining h < 16 rows). Within a tile, chunk c is "4h lanes", lane
// l = 4*i + j being row i, group 4c + j:
//   - 2h bytes of low nibbles: byte b holds lane b (bits 0-3) and lane b + 2h (bits 4-7);
//   - TL2 only: ceil(h/2) bytes holding bit 4 of every lane's code, lane l at bit l % 8 of byte l / 8.
// One float32 scale for the whole tensor follows the tiles, padded to a 32-byte tail as for I2_S.
// A kernel reads a chunk of 16 rows as one vector of 64 lanes (4 consecutive groups of a row
// side by side) and looks each code up in a table built from the activations of those groups.
//
// I8_S is the activation partner: a row of int8 quantized with one absmax scale per row,
// exactly as BitNet b1.58 was trained. Row layout: int8 q[n], float d, int32 sum(q).
#pragma once

#include "ggml.h"

#include <assert.h>
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

// one I2_S group: element j at qs[j % 32], bit shift 6 - 2*(j / 32)
typedef struct {
    uint8_t qs[I2_S_GROUP_B];
} block_i2_s;
static_assert(sizeof(block_i2_s) == QK_I2_S/4, "wrong i2_s block size");

// I2_S: bytes of one row of n weights (whole groups of 128, the last one zero-padded)
GGML_API size_t ggml_i2_s_row_bytes(int64_t n_per_row);
// ggml_quantize_chunk entry: the rows given are treated as the whole tensor (scale written after
// them); returns the bytes of the codes
GGML_API size_t quantize_i2_s(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API void   dequantize_i2_s(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t nrows, int64_t n_per_row);
// one row of k values taken as a whole 1-row tensor (ggml's from_float / to_float signature)
GGML_API void   quantize_row_i2_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void   dequantize_row_i2_s(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
// the per-tensor scale stored after the codes of an nrows x n_per_row tensor
GGML_API float  ggml_i2_s_scale(const void * data, int64_t n_per_row, int64_t nrows);

// TL1 / TL2 (type is GGML_TYPE_TL1 or GGML_TYPE_TL2)
#define TL_TILE_ROWS   16  // rows per tile
#define TL_CHUNK       4   // groups per chunk
// one chunk of a full tile (16 rows x 4 groups = 64 lanes): nibble byte b holds lanes b and b + 32
typedef struct {
    uint8_t qs[2*TL_TILE_ROWS];
} block_tl1;
static_assert(sizeof(block_tl1) == 32, "wrong tl1 chunk size");
typedef struct {
    uint8_t qs[2*TL_TILE_ROWS];
    uint8_t bit4[TL_TILE_ROWS/2];  // bit 4 of lane l's code at bit l % 8 of byte l / 8
} block_tl2;
static_assert(sizeof(block_tl2) == 40, "wrong tl2 chunk size");
GGML_API int     ggml_tl_group(enum ggml_type type);                         // weights per group: 2 or 3
GGML_API int64_t ggml_tl_chunks(enum ggml_type type, int64_t n_per_row);     // chunks per row
GGML_API size_t  ggml_tl_chunk_bytes(enum ggml_type type, int64_t h);        // bytes of a chunk of h rows
// bytes of the codes of a tensor (tiles only, without the 32-byte tail)
GGML_API size_t  ggml_tl_nbytes(enum ggml_type type, int64_t n_per_row, int64_t nrows);
// code of row r, group g (0 <= g < 4 * chunks) of a tensor of nrows rows
GGML_API int     ggml_tl_code(enum ggml_type type, const void * data, int64_t n_per_row, int64_t nrows, int64_t r, int64_t g);
GGML_API float   ggml_tl_scale(enum ggml_type type, const void * data, int64_t n_per_row, int64_t nrows);
// whole tensor: codes + tail scale; returns the bytes of the codes (as quantize_i2_s)
GGML_API size_t  quantize_tl1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t  quantize_tl2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
// one row of k values taken as a whole 1-row tensor (ggml's from_float / to_float signature)
GGML_API void    quantize_row_tl1_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void    quantize_row_tl2_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void    dequantize_row_tl1(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void    dequantize_row_tl2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
// whole tensor back to floats (nrows x n_per_row)
GGML_API void    dequantize_tl(enum ggml_type type, const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t nrows, int64_t n_per_row);
// the same weights as I2_S (dst: the whole tensor's ggml_ternary_nbytes(GGML_TYPE_I2_S, ...) bytes), for a
// CPU whose I2_S kernels beat its TL2 ones (ggml_bitnet_tl2_as_i2_s, ggml-cpu). Converts rows r0 .. r1-1
// (r0 a multiple of 16, r1 too or nrows; the call with r1 = nrows writes the tail): disjoint
// ranges may run in parallel.
GGML_API void    ggml_tl_to_i2_s(enum ggml_type type, const void * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t n_per_row, int64_t nrows,
                                 int64_t r0, int64_t r1);

// I8_S: one row of k floats to int8 + scale + sum.
GGML_API void   quantize_row_i8_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
// elements i..k-1 of an I8_S row quantized with iscale, then the row's tail (d, sum of all k
// values given the sum of the first i): the reference's operations, for SIMD quantizers' tails
GGML_API void   ggml_i8_s_finish_row(const float * GGML_RESTRICT x, int8_t * GGML_RESTRICT q, int64_t i, int64_t k,
                                     float iscale, int32_t sum);

#ifdef __cplusplus
}
#endif
