// bitnet-tools: CPU kernels for the ternary types (I2_S, TL1, TL2 x I8_S).
// Generic (scalar) versions live in bitnet.c; per-architecture versions in arch/<arch>/bitnet.c
// define the same names without the _generic suffix.
#pragma once

#include "ggml.h"
#include "ggml-backend.h"
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
// vector), vy = one I8_S row. Used by test-quantize-fns; mul_mat uses the GEMM below, and so does
// ggml_vec_dot_i2_s_i8_s (one row, one column) on every architecture.
void ggml_vec_dot_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// nr weight rows (I2_S codes, row stride bx bytes) times nc activation rows (I8_S, stride by
// bytes): s[c*bs + r] = (sum_i (code_ri - 1) * q_ci) * d_c * wscale. n is a multiple of 128:
// the MUL_MAT hook pads I2_S rows and their activations to whole groups.
// nr and nc are any positive counts (kernels tile internally and handle the edges).
void ggml_gemm_i2_s_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale);
void ggml_gemm_i2_s_i8_s_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                 const void * GGML_RESTRICT vy, size_t by, int nr, int nc, float wscale);

// TL1 / TL2 x I8_S.
// A lookup table (LUT) of one activation row, in the layout the kernels share: per chunk c of 4
// groups, TL_LUT_ENTRIES low bytes for each group j = 0..3, then the same for the high bytes.
// Entry v of group j is the exact sum over the group's weights of trit_p(v) * q[gw*(4c+j) + p]
// (q = 0 past the row; 0 for codes v >= 3^gw), stored as value & 0xFF (unsigned) and
// value >> 8 (signed), so that sum(low) + 256 * sum(high) is the integer dot product.
#define TL_LUT_ENTRIES(type) ((type) == GGML_TYPE_TL1 ? 16 : 32)
size_t ggml_tl_lut_bytes(enum ggml_type type, int n);
void   ggml_tl_build_lut(enum ggml_type type, const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut);
// per-thread scratch the GEMM may use (LUTs of up to TL_SCRATCH_COLS activation rows)
#define TL_SCRATCH_COLS 8
size_t ggml_tl_scratch_bytes(enum ggml_type type, int n);
// activation columns whose LUTs (lut_b bytes each) a kernel builds at once: as many as stay in
// L2 (512 KiB), at least 1, at most TL_SCRATCH_COLS
int    ggml_tl_lut_batch(size_t lut_b);

// vec_dot for test-quantize-fns: vx is a whole 1-row tensor (codes + tail), vy one I8_S row
void ggml_vec_dot_tl1_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_tl2_i8_s(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// nr weight rows from a tile boundary (vx points at that tile; tiles of 16 rows follow each
// other, the last one may hold fewer) times nc I8_S rows (stride by bytes):
// s[c*bs + r] = (sum_i t_ri * q_ci) * d_c * wscale. scratch: ggml_tl_scratch_bytes, 64-aligned.
void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch);
void ggml_gemm_tl_i8_s_generic(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                               const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch);

// TL2's own fast kernel: vpermb decodes a 5-bit code in one lookup (arch/x86/bitnet-tl.c)
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && \
    defined(__AVX512BW__)
#define GGML_BITNET_TL_VPERMB
#endif
// true where TL2 weights are loaded as I2_S (an extra CPU buffer type, bitnet-tl2-as-i2_s.cpp):
// on every CPU without that kernel, where TL2's is slower than I2_S's
bool ggml_bitnet_tl2_as_i2_s(void);
ggml_backend_buffer_type_t ggml_backend_cpu_tl2_as_i2_s_buffer_type(void);

// MUL_MAT with an I2_S, TL1 or TL2 src0: the whole op (activation quantization, threading, kernels).
void   ggml_bitnet_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst);
bool   ggml_bitnet_is_ternary(enum ggml_type type);
// work buffer it needs with n_threads threads (the I8_S copy of src1, per-thread scratch)
size_t ggml_bitnet_mul_mat_wsize(const struct ggml_tensor * dst, int n_threads);

// MUL_MAT with a Q6_K src0 and 2 .. GGML_BITNET_Q6_K_MAX_COLS activation columns where this
// architecture has a few-column kernel (the head of a ternary model in a batched decode step):
// computes the op and returns true; false leaves it to ggml (other cases, --use-ref).
#if (defined(__x86_64__) || defined(_M_X64)) && ((defined(__AVX512VNNI__) && defined(__AVX512BW__)) || \
                                                 (defined(__AVX2__) && defined(__FMA__)))
#define GGML_BITNET_Q6_K_GEMM
#endif
#define GGML_BITNET_Q6_K_MAX_COLS 32
bool ggml_bitnet_mul_mat_q6_k(const struct ggml_compute_params * params, struct ggml_tensor * dst);
// s[c*bs + r] = dot(Q6_K row r (rows bx bytes apart), Q8_K row c (by bytes apart)), n % 256 == 0
void ggml_gemm_q6_k_q8_k(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                         const void * GGML_RESTRICT vy, size_t by, int nr, int nc);

// FLASH_ATTN_EXT over an F16 cache, where this architecture has a kernel (a server's decode
// step, a prompt of any length): computes the op and returns
// true; false leaves it to ggml (other types and options -- ALiBi, soft-capping, sinks -- and
// --use-ref).
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX512F__) && defined(__AVX512DQ__) && \
    defined(__AVX512BW__) && defined(__AVX512VL__)
#define GGML_BITNET_ATTN_F16
#endif
#define GGML_BITNET_ATTN_MAX_D 256
bool ggml_bitnet_flash_attn_ext(const struct ggml_compute_params * params, struct ggml_tensor * dst);
// out[r] = softmax(scale * q[r] . K^T + mask[r]) V for nr <= 4 query heads that share one KV head:
// nk cache rows of dk (K) and dv (V) F16 values, kstride / vstride bytes apart; mask[r] is nk F16
// values (mask may be NULL). dk % 16 == 0, dv % 64 == 0, both <= GGML_BITNET_ATTN_MAX_D.
void ggml_bitnet_attn_f16(int nr, int dk, int dv, int64_t nk, const float * const * q, float scale,
                          const void * k, size_t kstride, const void * v, size_t vstride,
                          const ggml_fp16_t * const * mask, float * const * out);
// The same for a prompt: np <= GGML_BITNET_ATTN_PROMPT_QP query positions of nh <= 4 query heads
// that share one KV head, head h's position p at q + h*qhead + p*qpos (bytes; dk F32 values) and
// its output (dv F32) at out + h*ohead + p*opos; the heads share the mask, position p's nk F16
// values at mask + p*mpos bytes (mask may be NULL). dk % 16 == 0, dv % 64 == 0, both <= GGML_BITNET_ATTN_MAX_D. work:
// GGML_BITNET_ATTN_PROMPT_WORK(dk, dv) floats of scratch, 64-byte aligned.
#define GGML_BITNET_ATTN_PROMPT_WORK(dk, dv) (80*((size_t) (dk) + (size_t) (dv)) + 256)
#define GGML_BITNET_ATTN_PROMPT_QP 16  // query positions per call (one per AVX-512 lane)
void ggml_bitnet_attn_f16_prompt(int nh, int np, int dk, int dv, int64_t nk, const float * q, size_t qpos, size_t qhead,
                                 float scale, const void * k, size_t kstride, const void * v, size_t vstride,
                                 const ggml_fp16_t * mask, size_t mpos, float * out, size_t opos, size_t ohead,
                                 float * work);

// Architectures without their own file use the generic kernels.
#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86) || \
      defined(__aarch64__) || defined(_M_ARM64) || defined(__arm__) || defined(_M_ARM))
#define quantize_row_i8_s_generic      quantize_row_i8_s
#define ggml_gemm_i2_s_i8_s_generic    ggml_gemm_i2_s_i8_s
#define ggml_gemm_tl_i8_s_generic      ggml_gemm_tl_i8_s
#endif

#ifdef __cplusplus
}
#endif
