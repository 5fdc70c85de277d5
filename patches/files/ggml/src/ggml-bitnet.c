// bitnet-tools: reference (scalar) quantization for the ternary types. See ggml-bitnet.h.
// The numpy classes in bitnet_tools/quants/ mirror these functions bit for bit: keep the
// order of floating-point operations identical (sequential double sums, float32 division,
// round-half-to-even).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-bitnet.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <assert.h>

// byte and bit shift of element i of a row whose groups start at byte 0
static inline int i2_s_index(int64_t i, int * shift) {
    const int64_t g = i / QK_I2_S;
    const int     j = (int)(i % QK_I2_S);
    *shift = 6 - 2*(j / 32);
    return (int)(g*I2_S_GROUP_B + (j % 32));
}

size_t ggml_i2_s_row_bytes(int64_t n_per_row) {
    return (size_t)((n_per_row + QK_I2_S - 1) / QK_I2_S) * I2_S_GROUP_B;
}

size_t quantize_i2_s(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    uint8_t * y = (uint8_t *) vy;
    const int64_t k      = nrows*n_per_row;
    const size_t  row_b  = ggml_i2_s_row_bytes(n_per_row);
    const int64_t padded = (int64_t) row_b*4;

    // absmean threshold over the tensor's weights (not the padding), as BitNet b1.58 ternarizes
    double sum_abs = 0.0;
    for (int64_t i = 0; i < k; ++i) {
        sum_abs += fabs((double) x[i]);
    }
    const float s = (float)(sum_abs / (double) k);

    // stored scale: mean |x| over the non-zero codes (least squares for ternary codes);
    // for weights that are already ternary (q * s) this is exactly s.
    double sum_nz = 0.0;
    int64_t n_nz  = 0;
    memset(y, 0, (size_t) nrows*row_b);
    for (int64_t r = 0; r < nrows; ++r) {
        uint8_t * yr = y + r*row_b;
        for (int64_t i = 0; i < padded; ++i) {
            int q = 0;  // padding weights are 0
            if (i < n_per_row && s > 0.0f) {
                const float v = nearbyintf(x[r*n_per_row + i] / s);
                q = v > 1.0f ? 1 : v < -1.0f ? -1 : (int) v;
            }
            if (q != 0) {
                sum_nz += fabs((double) x[r*n_per_row + i]);
                n_nz++;
            }
            int shift;
            const int b = i2_s_index(i, &shift);
            yr[b] |= (uint8_t)((q + 1) << shift);
        }
    }
    const float scale = n_nz > 0 ? (float)(sum_nz / (double) n_nz) : 0.0f;

    uint8_t tail[I2_S_TAIL] = {0};
    memcpy(tail, &scale, sizeof(float));
    memcpy(y + nrows*row_b, tail, I2_S_TAIL);
    return (size_t) nrows*row_b;
}

float ggml_i2_s_scale(const void * data, int64_t n_per_row, int64_t nrows) {
    float scale;
    memcpy(&scale, (const uint8_t *) data + nrows*ggml_i2_s_row_bytes(n_per_row), sizeof(float));
    return scale;
}

void dequantize_i2_s(const void * GGML_RESTRICT vx, float * GGML_RESTRICT y, int64_t nrows, int64_t n_per_row) {
    const uint8_t * x     = (const uint8_t *) vx;
    const size_t    row_b = ggml_i2_s_row_bytes(n_per_row);
    const float     scale = ggml_i2_s_scale(vx, n_per_row, nrows);
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < n_per_row; ++i) {
            int shift;
            const int b = i2_s_index(i, &shift);
            const int q = ((x[r*row_b + b] >> shift) & 3) - 1;
            y[r*n_per_row + i] = (float) q * scale;
        }
    }
}

void quantize_row_i2_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_i2_s(x, y, 1, k, NULL);
}

void dequantize_row_i2_s(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_i2_s(x, y, 1, k);
}

void quantize_row_i8_s_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) {
    int8_t * q = (int8_t *) vy;
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    // 127 / max|x|, with BitNet's clamp of max|x| at 1e-5
    const float iscale = 127.0f / fmaxf(amax, 1e-5f);
    ggml_i8_s_finish_row(x, q, 0, k, iscale, 0);
}

void ggml_i8_s_finish_row(const float * GGML_RESTRICT x, int8_t * GGML_RESTRICT q, int64_t i, int64_t k,
                          float iscale, int32_t sum) {
    for (; i < k; ++i) {
        const float v  = nearbyintf(x[i] * iscale);
        const int   qi = v > 127.0f ? 127 : v < -128.0f ? -128 : (int) v;
        q[i] = (int8_t) qi;
        sum += qi;
    }
    const float d = 1.0f / iscale;
    memcpy(q + k, &d, sizeof(float));
    memcpy(q + k + sizeof(float), &sum, sizeof(int32_t));
}

// ---------------------------------------------------------------- TL1 / TL2

// The ternarization is the one of I2_S: absmean threshold over the whole tensor, stored scale =
// mean |x| over the non-zero codes, both summed in row-major order.

int ggml_tl_group(enum ggml_type type) {
    GGML_ASSERT(type == GGML_TYPE_TL1 || type == GGML_TYPE_TL2);
    return type == GGML_TYPE_TL1 ? 2 : 3;
}

int64_t ggml_tl_chunks(enum ggml_type type, int64_t n_per_row) {
    const int64_t w = (int64_t) ggml_tl_group(type) * TL_CHUNK;
    return (n_per_row + w - 1) / w;
}

size_t ggml_tl_chunk_bytes(enum ggml_type type, int64_t h) {
    return (size_t)(2*h + (type == GGML_TYPE_TL2 ? (h + 1)/2 : 0));
}

size_t ggml_tl_nbytes(enum ggml_type type, int64_t n_per_row, int64_t nrows) {
    const int64_t nc   = ggml_tl_chunks(type, n_per_row);
    const int64_t full = nrows / TL_TILE_ROWS;
    const int64_t h    = nrows % TL_TILE_ROWS;
    return (size_t)(full*nc) * ggml_tl_chunk_bytes(type, TL_TILE_ROWS) + (size_t) nc * ggml_tl_chunk_bytes(type, h);
}

bool ggml_is_ternary_whole(enum ggml_type type) {
    return type == GGML_TYPE_I2_S || type == GGML_TYPE_TL1 || type == GGML_TYPE_TL2;
}

size_t ggml_ternary_nbytes(enum ggml_type type, int64_t n_per_row, int64_t nrows) {
    switch (type) {
        case GGML_TYPE_I2_S: return (size_t) nrows*ggml_i2_s_row_bytes(n_per_row) + I2_S_TAIL;
        case GGML_TYPE_TL1:
        case GGML_TYPE_TL2:  return ggml_tl_nbytes(type, n_per_row, nrows) + I2_S_TAIL;
        default:             return 0;
    }
}

// where the code of (row r, group g) lives: offset of its chunk, lane and tile height
static size_t tl_chunk(enum ggml_type type, int64_t n_per_row, int64_t nrows, int64_t r, int64_t g, int * lane, int64_t * h) {
    const int64_t nc   = ggml_tl_chunks(type, n_per_row);
    const int64_t tile = r / TL_TILE_ROWS;
    *h    = nrows - tile*TL_TILE_ROWS < TL_TILE_ROWS ? nrows - tile*TL_TILE_ROWS : TL_TILE_ROWS;
    *lane = (int)(TL_CHUNK*(r % TL_TILE_ROWS) + g % TL_CHUNK);
    return (size_t)(tile*nc) * ggml_tl_chunk_bytes(type, TL_TILE_ROWS) + (size_t)(g / TL_CHUNK) * ggml_tl_chunk_bytes(type, *h);
}

int ggml_tl_code(enum ggml_type type, const void * data, int64_t n_per_row, int64_t nrows, int64_t r, int64_t g) {
    int lane; int64_t h;
    const uint8_t * c = (const uint8_t *) data + tl_chunk(type, n_per_row, nrows, r, g, &lane, &h);
    int code = lane < 2*h ? c[lane] & 0x0F : c[lane - 2*h] >> 4;
    if (type == GGML_TYPE_TL2) {
        code |= ((c[2*h + lane/8] >> (lane % 8)) & 1) << 4;
    }
    return code;
}

static void tl_set_code(enum ggml_type type, void * data, int64_t n_per_row, int64_t nrows, int64_t r, int64_t g, int code) {
    int lane; int64_t h;
    uint8_t * c = (uint8_t *) data + tl_chunk(type, n_per_row, nrows, r, g, &lane, &h);
    if (lane < 2*h) {
        c[lane] |= (uint8_t)(code & 0x0F);
    } else {
        c[lane - 2*h] |= (uint8_t)((code & 0x0F) << 4);
    }
    if (type == GGML_TYPE_TL2) {
        c[2*h + lane/8] |= (uint8_t)(((code >> 4) & 1) << (lane % 8));
    }
}

float ggml_tl_scale(enum ggml_type type, const void * data, int64_t n_per_row, int64_t nrows) {
    float scale;
    memcpy(&scale, (const uint8_t *) data + ggml_tl_nbytes(type, n_per_row, nrows), sizeof(float));
    return scale;
}

static size_t quantize_tl(enum ggml_type type, const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t nrows, int64_t n_per_row) {
    const int64_t n = nrows*n_per_row;
    double sum_abs = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        sum_abs += fabs((double) x[i]);
    }
    const float s = (float)(sum_abs / (double) n);

    const int     gw     = ggml_tl_group(type);
    const int64_t groups = ggml_tl_chunks(type, n_per_row) * TL_CHUNK;
    const size_t  nbytes = ggml_tl_nbytes(type, n_per_row, nrows);
    memset(y, 0, nbytes);

    double  sum_nz = 0.0;
    int64_t n_nz   = 0;
    for (int64_t r = 0; r < nrows; ++r) {
        const float * xr = x + r*n_per_row;
        for (int64_t g = 0; g < groups; ++g) {
            int code = 0;
            for (int p = 0; p < gw; ++p) {
                const int64_t i = g*gw + p;
                int q = 0;  // padding weights are 0
                if (i < n_per_row && s > 0.0f) {
                    const float v = nearbyintf(xr[i] / s);
                    q = v > 1.0f ? 1 : v < -1.0f ? -1 : (int) v;
                }
                if (q != 0) {
                    sum_nz += fabs((double) xr[i]);
                    n_nz++;
                }
                code = 3*code + (q + 1);
            }
            tl_set_code(type, y, n_per_row, nrows, r, g, code);
        }
    }
    const float scale = n_nz > 0 ? (float)(sum_nz / (double) n_nz) : 0.0f;

    uint8_t tail[I2_S_TAIL] = {0};
    memcpy(tail, &scale, sizeof(float));
    memcpy((uint8_t *) y + nbytes, tail, I2_S_TAIL);
    return nbytes;
}

void dequantize_tl(enum ggml_type type, const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t nrows, int64_t n_per_row) {
    const int   gw    = ggml_tl_group(type);
    const float scale = ggml_tl_scale(type, x, n_per_row, nrows);
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < n_per_row; ++i) {
            const int64_t g    = i / gw;
            const int     code = ggml_tl_code(type, x, n_per_row, nrows, r, g);
            // digit p of the base-3 code, most significant first
            int d = code;
            for (int p = gw - 1; p > (int)(i % gw); --p) {
                d /= 3;
            }
            y[r*n_per_row + i] = (float)(d % 3 - 1) * scale;
        }
    }
}

size_t quantize_tl1(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_tl(GGML_TYPE_TL1, src, dst, nrows, n_per_row);
}

size_t quantize_tl2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_tl(GGML_TYPE_TL2, src, dst, nrows, n_per_row);
}

void quantize_row_tl1_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_tl(GGML_TYPE_TL1, x, y, 1, k);
}

void quantize_row_tl2_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_tl(GGML_TYPE_TL2, x, y, 1, k);
}

void dequantize_row_tl1(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_tl(GGML_TYPE_TL1, x, y, 1, k);
}

void dequantize_row_tl2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {
    dequantize_tl(GGML_TYPE_TL2, x, y, 1, k);
}

// TL1/TL2 -> I2_S, weight for weight, rows r0 .. r1-1 (whole tiles; the last call, r1 = nrows,
// also writes the tail, which is the same scale in both). A code no writer produces (TL1 9-15,
// TL2 27-31) becomes zero weights, as in the reference kernel. A tile's digits (trit + 1) are
// spread into rows first, then packed 128 at a time.
void ggml_tl_to_i2_s(enum ggml_type type, const void * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t n_per_row, int64_t nrows,
                     int64_t r0, int64_t r1) {
    const int     gw     = ggml_tl_group(type);
    const int     ncodes = gw == 2 ? 9 : 27;
    const int64_t nc     = ggml_tl_chunks(type, n_per_row);
    const size_t  row_b  = ggml_i2_s_row_bytes(n_per_row);
    const int64_t tl_w   = nc*TL_CHUNK*gw + 4 - gw;  // room for the 4-byte stores below
    const int64_t width  = (int64_t) row_b*4 > tl_w ? (int64_t) row_b*4 : tl_w;  // a row's digits, both paddings
    GGML_ASSERT(r0 % TL_TILE_ROWS == 0 && r0 <= r1 && r1 <= nrows && (r1 % TL_TILE_ROWS == 0 || r1 == nrows));
    const uint8_t * x = (const uint8_t *) src + (size_t)(r0/TL_TILE_ROWS*nc)*ggml_tl_chunk_bytes(type, TL_TILE_ROWS);
    uint8_t       * y = (uint8_t *) dst;

    uint8_t digits[32][4];  // most significant first; past gw not digits (see the stores below)
    for (int v = 0; v < 32; ++v) {
        digits[v][2] = digits[v][3] = 1;
        for (int p = gw - 1, c = v < ncodes ? v : ncodes/2; p >= 0; --p, c /= 3) {  // ncodes/2: all ones
            digits[v][p] = (uint8_t)(c % 3);
        }
    }
    // one tile's digits, row after row; each code is stored as 4 bytes at once, the bytes past
    // its group overwritten by the next group's (stored later) or lying past the row's weights
    uint8_t * d = (uint8_t *) malloc((size_t)(TL_TILE_ROWS*width));
    GGML_ASSERT(d != NULL);
    size_t off[4*TL_TILE_ROWS];  // where lane l's digits go in d, in chunk 0
    for (int l = 0; l < 4*TL_TILE_ROWS; ++l) {
        off[l] = (size_t)((l/4)*width + (l%4)*gw);
    }
    for (int64_t t0 = r0; t0 < r1; t0 += TL_TILE_ROWS) {
        const int h = nrows - t0 < TL_TILE_ROWS ? (int)(nrows - t0) : TL_TILE_ROWS;
        for (int64_t c = 0; c < nc; ++c, x += ggml_tl_chunk_bytes(type, h)) {
            uint64_t bit4 = 0;  // bit 4 of lane l at bit l
            for (int b = 0; type == GGML_TYPE_TL2 && b < (h + 1)/2; ++b) {
                bit4 |= (uint64_t) x[2*h + b] << 8*b;
            }
            uint8_t * dc = d + c*TL_CHUNK*gw;
            // lanes in order (a row's groups left to right, so each store's spill is overwritten):
            // the low nibbles, then the high nibbles of the same bytes
            for (int l = 0; l < 2*h; ++l) {
                memcpy(dc + off[l], digits[(x[l] & 0x0F) | ((bit4 >> l) & 1) << 4], 4);
            }
            for (int l = 0; l < 2*h; ++l) {
                memcpy(dc + off[l + 2*h], digits[(x[l] >> 4) | ((bit4 >> (l + 2*h)) & 1) << 4], 4);
            }
        }
        for (int64_t i = 0; i < h; ++i) {
            uint8_t * di = d + i*width;
            memset(di + n_per_row, 1, (size_t)(width - n_per_row));  // past the row: zero weights
            uint8_t * yr = y + (t0 + i)*row_b;
            for (size_t g = 0; g < row_b/I2_S_GROUP_B; ++g, di += QK_I2_S, yr += I2_S_GROUP_B) {
                for (int j = 0; j < 32; ++j) {  // element j + 32 k at shift 6 - 2 k
                    yr[j] = (uint8_t)(di[j] << 6 | di[j + 32] << 4 | di[j + 64] << 2 | di[j + 96]);
                }
            }
        }
    }
    free(d);
    if (r1 == nrows) {
        memcpy(y + nrows*row_b, x, I2_S_TAIL);
    }
}
