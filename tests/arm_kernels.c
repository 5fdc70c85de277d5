// bitnet-tools test: the ARM kernels (arch/arm/bitnet.c) against the generic ones (bitnet.c),
// called directly and compared bit for bit: both form (float) isum * d * wscale from an exact
// integer dot, and the I8_S quantizer is specified to be bit-identical to the reference.
// Built by tests/test_arm.py with the aarch64 cross compiler, with and without the dot product
// extension, together with those two files and the aarch64 libggml-base.a; run under qemu.
#include "ggml.h"
#include "ggml-bitnet.h"
#include "bitnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// the MUL_MAT driver in bitnet.c refers to the CPU backend's barrier and its shared chunk
// counter; the driver is not called here
void ggml_barrier(struct ggml_threadpool * tp) {
    (void) tp;
}

void ggml_threadpool_chunk_set(struct ggml_threadpool * tp, int value) {
    (void) tp; (void) value;
}

int ggml_threadpool_chunk_add(struct ggml_threadpool * tp, int value) {
    (void) tp;
    return value;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t) (rng_state >> 16);
}

static float rnd_normal(void) {  // sum of uniforms: roughly normal, with outliers now and then
    float s = 0.0f;
    for (int i = 0; i < 4; ++i) {
        s += (float) (rnd() % 20001) / 10000.0f - 1.0f;
    }
    return rnd() % 97 == 0 ? 8.0f * s : s;
}

static int failures = 0;
static int cases = 0;

static void check(int ok, const char * what, int n, int nr, int nc) {
    cases++;
    if (!ok) {
        failures++;
        if (failures <= 20) {
            printf("MISMATCH %s n=%d nr=%d nc=%d\n", what, n, nr, nc);
        }
    }
}

static size_t row_stride(int n) {
    return ((size_t) n + I8_S_ROW_EXTRA + 63) & ~(size_t) 63;
}

// nc activation rows quantized by both quantizers (which must agree byte for byte)
static int8_t * activations(int n, int nc, float scale) {
    const size_t by = row_stride(n);
    int8_t * y = aligned_alloc(64, by*nc);
    int8_t * z = aligned_alloc(64, by*nc);
    float  * x = malloc(sizeof(float)*n);
    memset(y, 0, by*nc);
    memset(z, 0, by*nc);
    for (int c = 0; c < nc; ++c) {
        for (int i = 0; i < n; ++i) {
            x[i] = scale*rnd_normal();
        }
        quantize_row_i8_s(x, y + c*by, n);
        quantize_row_i8_s_generic(x, z + c*by, n);
        check(memcmp(y + c*by, z + c*by, I8_S_ROW_SIZE(n)) == 0, "quantize_row_i8_s", n, 1, 1);
    }
    free(x);
    free(z);
    return y;
}

static void test_quantize_edges(void) {
    // ties at .5 (iscale = 1 when max |x| = 127), NaN, infinity, huge values, zeros, tails of every length
    static float x[300];
    int8_t a[300 + I8_S_ROW_EXTRA], b[300 + I8_S_ROW_EXTRA];
    for (int k = 1; k <= 300; k += (k < 40 ? 1 : 37)) {
        for (int kind = 0; kind < 6; ++kind) {
            for (int i = 0; i < k; ++i) {
                switch (kind) {
                    case 0: x[i] = (float) ((int) (rnd() % 254) - 127) + 0.5f; break;
                    case 1: x[i] = rnd_normal(); break;
                    case 2: x[i] = 0.0f; break;
                    case 3: x[i] = i % 5 == 0 ? NAN : rnd_normal(); break;
                    case 4: x[i] = i % 11 == 3 ? -INFINITY : rnd_normal(); break;
                    default: x[i] = i % 7 == 0 ? 3.0e38f : -1e-30f*rnd_normal(); break;
                }
            }
            if (kind == 0) {
                x[k - 1] = 127.0f;
            }
            memset(a, 0x55, sizeof(a));
            memset(b, 0x55, sizeof(b));
            quantize_row_i8_s(x, a, k);
            quantize_row_i8_s_generic(x, b, k);
            check(memcmp(a, b, I8_S_ROW_SIZE(k)) == 0, "quantize_row_i8_s edge", k, kind, 1);
        }
    }
}

static void test_i2_s(void) {
    static const int ns[]  = {128, 256, 384, 1024, 3200};
    static const int nrs[] = {1, 3, 4, 5, 16, 37};
    static const int ncs[] = {1, 2, 3, 4, 5, 8, 9};
    for (size_t in = 0; in < sizeof(ns)/sizeof(ns[0]); ++in) {
        const int n = ns[in];
        const size_t bx = n/4;
        // any byte pattern, code 3 included: both kernels compute sum (code - 1) * q
        uint8_t * x = malloc(bx*37 + I2_S_TAIL);
        for (size_t i = 0; i < bx*37 + I2_S_TAIL; ++i) {
            x[i] = (uint8_t) rnd();
        }
        const float wscale = 0.0371f;
        for (size_t ic = 0; ic < sizeof(ncs)/sizeof(ncs[0]); ++ic) {
            const int nc = ncs[ic];
            int8_t * y = activations(n, nc, 1.0f + (float) ic);
            const size_t by = row_stride(n);
            for (size_t ir = 0; ir < sizeof(nrs)/sizeof(nrs[0]); ++ir) {
                const int nr = nrs[ir];
                const size_t bs = nr + 3;  // output column stride wider than the rows
                float * s1 = calloc(bs*nc, sizeof(float));
                float * s2 = calloc(bs*nc, sizeof(float));
                ggml_gemm_i2_s_i8_s(n, s1, bs, x, bx, y, by, nr, nc, wscale);
                ggml_gemm_i2_s_i8_s_generic(n, s2, bs, x, bx, y, by, nr, nc, wscale);
                check(memcmp(s1, s2, sizeof(float)*bs*nc) == 0, "ggml_gemm_i2_s_i8_s", n, nr, nc);
                free(s1);
                free(s2);
            }
            // vec_dot: one row whose tail scale follows its codes
            uint8_t * v = malloc(bx + I2_S_TAIL);
            memcpy(v, x, bx);
            memcpy(v + bx, &wscale, sizeof(float));
            float d1 = 0.0f, d2 = 1.0f;
            ggml_vec_dot_i2_s_i8_s(n, &d1, 0, v, 0, y, 0, 1);
            ggml_vec_dot_i2_s_i8_s_generic(n, &d2, 0, v, 0, y, 0, 1);
            check(memcmp(&d1, &d2, sizeof(float)) == 0, "ggml_vec_dot_i2_s_i8_s", n, 1, 1);
            free(v);
            free(y);
        }
        free(x);
    }
}

static void test_tl(enum ggml_type type) {
    static const int ns[]  = {8, 12, 100, 256, 2560};
    static const int nrs[] = {1, 16, 37, 64, 80};
    static const int ncs[] = {1, 2, 3, 5, 9};
    for (size_t in = 0; in < sizeof(ns)/sizeof(ns[0]); ++in) {
        const int n = ns[in];
        for (size_t ir = 0; ir < sizeof(nrs)/sizeof(nrs[0]); ++ir) {
            const int nr = nrs[ir];
            // real codes (0..8 / 0..26): the tensor quantized by the reference quantizer
            float * w = malloc(sizeof(float)*n*nr);
            for (int i = 0; i < n*nr; ++i) {
                w[i] = rnd_normal();
            }
            uint8_t * x = malloc(ggml_tl_nbytes(type, n, nr) + I2_S_TAIL);
            if (type == GGML_TYPE_TL1) {
                quantize_tl1(w, x, nr, n, NULL);
            } else {
                quantize_tl2(w, x, nr, n, NULL);
            }
            const float wscale = ggml_tl_scale(type, x, n, nr);
            void * scratch = aligned_alloc(64, (ggml_tl_scratch_bytes(type, n) + 63) & ~(size_t) 63);
            for (size_t ic = 0; ic < sizeof(ncs)/sizeof(ncs[0]); ++ic) {
                const int nc = ncs[ic];
                int8_t * y = activations(n, nc, 2.0f);
                const size_t by = row_stride(n);
                const size_t bs = nr + 5;
                float * s1 = calloc(bs*nc, sizeof(float));
                float * s2 = calloc(bs*nc, sizeof(float));
                ggml_gemm_tl_i8_s(type, n, s1, bs, x, nr, y, by, nc, wscale, scratch);
                ggml_gemm_tl_i8_s_generic(type, n, s2, bs, x, nr, y, by, nc, wscale, NULL);
                check(memcmp(s1, s2, sizeof(float)*bs*nc) == 0, type == GGML_TYPE_TL1 ? "ggml_gemm_tl_i8_s tl1" : "ggml_gemm_tl_i8_s tl2", n, nr, nc);
                free(s1);
                free(s2);
                free(y);
            }
            free(scratch);
            free(x);
            free(w);
        }
    }
}

int main(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    const char * path = "dotprod";
#else
    const char * path = "plain NEON";
#endif
    test_quantize_edges();
    test_i2_s();
    test_tl(GGML_TYPE_TL1);
    test_tl(GGML_TYPE_TL2);
    printf("%s: %d cases, %d mismatches\n", path, cases, failures);
    return failures != 0;
}
