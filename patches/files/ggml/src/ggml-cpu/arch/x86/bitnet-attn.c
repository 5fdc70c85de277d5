// bitnet-tools: attention over an F16 KV cache (AVX-512): of a few query positions (a server's
// batched decode step, a prompt's last few) and of a prompt, 16 positions a block (a block of 11
// or more; ggml_bitnet_flash_attn_ext chooses). Reference: ggml's
// ggml_compute_forward_flash_attn_ext_f16_one_chunk (../../ops.cpp), which test-backend-ops runs
// beside this kernel; the driver is ggml_bitnet_flash_attn_ext in ../../bitnet.c.
//
// ggml's path for a few queries walks the cache one row at a time for each query head:
// an F16 dot product, a scalar exp and an F16 multiply-add into an F16 accumulator per row, and
// with grouped-query attention every KV head is read once per query head that shares it. Here
// the query heads of one KV head go together: each block of 16 cache rows is converted to F32
// once, their 16 scores per head come out as one vector (one lane per row), the softmax is
// vectorised, and the V rows are converted once and added into F32 accumulators of all heads.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "../../bitnet-impl.h"

#if defined(GGML_BITNET_ATTN_F16)
#include <immintrin.h>
#include "../../vec.h"  // ggml_v_expf

#define BITNET_ATTN_KB 16  // cache rows per block: one score per lane

static_assert(sizeof(ggml_fp16_t) == 2, "the F16 cache rows this kernel reads");

// v[j] holds partial sums of score j in its 16 lanes: returns their 16 totals, lane j = sum(v[j]).
// Pairs of vectors are interleaved and added (lanes within 128-bit quarters, then quarters), so
// each stage halves the number of vectors; the totals come out in order.
BITNET_INLINE __m512 bitnet_attn_sum16(const __m512 v[16]) {
    __m512 t[8], u[4], w[2];
    for (int i = 0; i < 8; ++i) {
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2*i], v[2*i + 1]), _mm512_unpackhi_ps(v[2*i], v[2*i + 1]));
    }
    for (int i = 0; i < 4; ++i) {
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2*i], t[2*i + 1], 0x44), _mm512_shuffle_ps(t[2*i], t[2*i + 1], 0xEE));
    }
    for (int i = 0; i < 2; ++i) {
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2*i], u[2*i + 1], 0x88), _mm512_shuffle_f32x4(u[2*i], u[2*i + 1], 0xDD));
    }
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

BITNET_INLINE void bitnet_attn_heads(const int NR, int dk, int dv, int64_t nk, const float * const * q, float scale,
                                     const char * k, size_t kstride, const char * v, size_t vstride,
                                     const ggml_fp16_t * const * mask, float * const * out) {
    float qs[4][GGML_BITNET_ATTN_MAX_D]                    __attribute__((aligned(64)));
    float kf[BITNET_ATTN_KB*GGML_BITNET_ATTN_MAX_D]        __attribute__((aligned(64)));  // rows dk apart
    float o[4][GGML_BITNET_ATTN_MAX_D]                     __attribute__((aligned(64)));
    float p[4][BITNET_ATTN_KB]                             __attribute__((aligned(64)));
    float M[4], S[4];
    for (int r = 0; r < NR; ++r) {
        for (int d = 0; d < dk; ++d) {
            qs[r][d] = q[r][d]*scale;
        }
        memset(o[r], 0, dv*sizeof(float));
        M[r] = -INFINITY;
        S[r] = 0.0f;
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < nk && j < BITNET_ATTN_KB; ++j) {  // the first block (later ones are fetched a block ahead)
        for (int b = 0; b < 2*dk; b += 64) {
            _mm_prefetch(k + j*kstride + b, _MM_HINT_T1);
        }
        for (int b = 0; b < 2*dv; b += 64) {
            _mm_prefetch(v + j*vstride + b, _MM_HINT_T1);
        }
    }
    for (int64_t ic = 0; ic < nk; ic += BITNET_ATTN_KB) {
        const int       n     = nk - ic < BITNET_ATTN_KB ? (int) (nk - ic) : BITNET_ATTN_KB;
        const __mmask16 lanes = (__mmask16) ((1u << n) - 1);

        // the mask of each head; rows past the cache are -inf, and a block no head sees is skipped
        __m512 mk[4];
        bool   any = false;
        for (int r = 0; r < NR; ++r) {
            mk[r] = mask ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, mask[r] + ic)) : _mm512_setzero_ps();
            mk[r] = _mm512_mask_blend_ps(lanes, ninf, mk[r]);
            any  |= _mm512_cmp_ps_mask(mk[r], ninf, _CMP_NEQ_OQ) != 0;
        }
        if (!any) {
            continue;
        }

        // the block's K rows in F32, zeros past the cache (their scores are masked). Rows are
        // far apart in the cache (all KV heads of a position lie between them) and this block
        // reads them once: fetch the next block's K and V rows while this one computes.
        for (int j = 0; j < n; ++j) {
            const int64_t jn = ic + BITNET_ATTN_KB + j < nk ? ic + BITNET_ATTN_KB + j : nk - 1;
            for (int b = 0; b < 2*dk; b += 64) {
                _mm_prefetch(k + jn*kstride + b, _MM_HINT_T1);
            }
            for (int b = 0; b < 2*dv; b += 64) {
                _mm_prefetch(v + jn*vstride + b, _MM_HINT_T1);
            }
        }
        for (int j = 0; j < BITNET_ATTN_KB; ++j) {
            for (int d = 0; d < dk; d += 16) {
                const __m512 x = j < n ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (k + (ic + j)*kstride + 2*d)))
                                       : _mm512_setzero_ps();
                _mm512_store_ps(kf + j*dk + d, x);
            }
        }

        // scores, then the online softmax: p = exp(s - M), earlier sums and outputs rescaled
        for (int r = 0; r < NR; ++r) {
            __m512 acc[BITNET_ATTN_KB];
            for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                acc[j] = _mm512_setzero_ps();
            }
            for (int d = 0; d < dk; d += 16) {
                const __m512 qv = _mm512_load_ps(qs[r] + d);
                for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                    acc[j] = _mm512_fmadd_ps(qv, _mm512_load_ps(kf + j*dk + d), acc[j]);
                }
            }
            const __m512 s  = _mm512_add_ps(bitnet_attn_sum16(acc), mk[r]);
            const float  mx = _mm512_reduce_max_ps(s);
            if (mx == -INFINITY) {
                _mm512_store_ps(p[r], _mm512_setzero_ps());
                continue;
            }
            const float  Mnew = M[r] > mx ? M[r] : mx;
            const __m512 pv   = ggml_v_expf(_mm512_sub_ps(s, _mm512_set1_ps(Mnew)));
            _mm512_store_ps(p[r], pv);
            if (Mnew > M[r]) {
                const float ms = expf(M[r] - Mnew);
                for (int d = 0; d < dv; d += 16) {
                    _mm512_store_ps(o[r] + d, _mm512_mul_ps(_mm512_load_ps(o[r] + d), _mm512_set1_ps(ms)));
                }
                S[r] *= ms;
                M[r]  = Mnew;
            }
            S[r] += _mm512_reduce_add_ps(pv);
        }

        // o += p V, 64 output values of every head at a time, each V row converted once
        for (int c = 0; c < dv; c += 64) {
            __m512 acc[4][4];
            for (int r = 0; r < NR; ++r) {
                for (int i = 0; i < 4; ++i) {
                    acc[r][i] = _mm512_load_ps(o[r] + c + 16*i);
                }
            }
            for (int j = 0; j < n; ++j) {
                const char * vr = v + (ic + j)*vstride + 2*c;
                __m512 x[4];
                for (int i = 0; i < 4; ++i) {
                    x[i] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (vr + 32*i)));
                }
                for (int r = 0; r < NR; ++r) {
                    const __m512 b = _mm512_set1_ps(p[r][j]);
                    for (int i = 0; i < 4; ++i) {
                        acc[r][i] = _mm512_fmadd_ps(b, x[i], acc[r][i]);
                    }
                }
            }
            for (int r = 0; r < NR; ++r) {
                for (int i = 0; i < 4; ++i) {
                    _mm512_store_ps(o[r] + c + 16*i, acc[r][i]);
                }
            }
        }
    }
    for (int r = 0; r < NR; ++r) {
        const float inv = S[r] == 0.0f ? 0.0f : 1.0f/S[r];  // no row seen: zeros, as ggml writes
        for (int d = 0; d < dv; ++d) {
            out[r][d] = o[r][d]*inv;
        }
    }
}

#define BITNET_ATTN_HEADS(NR)                                                                                          \
    static void bitnet_attn_heads_##NR(int dk, int dv, int64_t nk, const float * const * q, float scale,              \
                                       const char * k, size_t kstride, const char * v, size_t vstride,                 \
                                       const ggml_fp16_t * const * mask, float * const * out) {                        \
        bitnet_attn_heads(NR, dk, dv, nk, q, scale, k, kstride, v, vstride, mask, out);                                \
    }
BITNET_ATTN_HEADS(1) BITNET_ATTN_HEADS(2) BITNET_ATTN_HEADS(3) BITNET_ATTN_HEADS(4)

void ggml_bitnet_attn_f16(int nr, int dk, int dv, int64_t nk, const float * const * q, float scale,
                          const void * k, size_t kstride, const void * v, size_t vstride,
                          const ggml_fp16_t * const * mask, float * const * out) {
    static void (* const heads[5])(int, int, int64_t, const float * const *, float, const char *, size_t, const char *,
                                   size_t, const ggml_fp16_t * const *, float * const *) = {
        NULL, bitnet_attn_heads_1, bitnet_attn_heads_2, bitnet_attn_heads_3, bitnet_attn_heads_4,
    };
    GGML_ASSERT(nr >= 1 && nr <= 4 && dk % 16 == 0 && dk <= GGML_BITNET_ATTN_MAX_D && dv % 64 == 0 && dv <= GGML_BITNET_ATTN_MAX_D);
    heads[nr](dk, dv, nk, q, scale, (const char *) k, kstride, (const char *) v, vstride, mask, out);
}

// ---------------------------------------------------------------- a prompt's attention
//
// Many query positions, one per lane. ggml's tiled path converts and transposes the F16 K tile
// element by element for every 64 queries of every head, and stores the scores to memory
// between its steps. Here the 16 positions of up to 4 query heads that share a KV head go
// together: each block of 16 cache rows is converted to F32 once for all of them; Q is
// transposed once per call, so a block's scores are 16 vectors (one per cache row, a lane per
// position) of one FMA per dimension with the K value broadcast; the online softmax is lane-wise
// (no horizontal reductions); and P V is one FMA per output value and cache row, the V value
// broadcast. Reference: ggml_compute_forward_flash_attn_ext_f16_one_chunk, as for the kernel above.

BITNET_INLINE void bitnet_attn_prompt(const int NH, int np, int dk, int dv, int64_t nk, const float * q, size_t qpos,
                                      size_t qhead, float scale, const char * k, size_t kstride, const char * v,
                                      size_t vstride, const char * mask, size_t mpos, char * out,
                                      size_t opos, size_t ohead, float * work) {
    // in the caller's work buffer (80 KiB for 128-wide heads; a thread's stack may be small)
    float * qT = work;                           // [head][dimension][position], scaled
    float * oT = qT + 4*16*dk;                   // [head][output value][position]
    float * kf = oT + 4*16*dv;                   // [row][dimension]: the block's K rows in F32
    float * vf = kf + BITNET_ATTN_KB*dk;         // [row][output value]
    float * mr = vf + BITNET_ATTN_KB*dv;         // [position][row] of the mask
    __m512 M[4], S[4];

    for (int h = 0; h < NH; ++h) {
        for (int d = 0; d < dk; ++d) {
            for (int p = 0; p < 16; ++p) {
                qT[(h*dk + d)*16 + p] = p < np ? ((const float *) ((const char *) q + h*qhead + p*qpos))[d]*scale : 0.0f;
            }
        }
        memset(oT + h*dv*16, 0, dv*16*sizeof(float));
        M[h] = _mm512_set1_ps(-INFINITY);
        S[h] = _mm512_setzero_ps();
    }
    const __m512  ninf   = _mm512_set1_ps(-INFINITY);
    const __m512  one    = _mm512_set1_ps(1.0f);
    const __m512i rowsof = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32(BITNET_ATTN_KB));
    for (int64_t ic = 0; ic < nk; ic += BITNET_ATTN_KB) {
        const int       n     = nk - ic < BITNET_ATTN_KB ? (int) (nk - ic) : BITNET_ATTN_KB;
        const __mmask16 lanes = (__mmask16) ((1u << n) - 1);

        // the mask (the heads share it), transposed: mt[j], lane p = mask[p][ic + j]; -inf past
        // the cache and the positions. A block no position sees is skipped.
        __m512 mt[BITNET_ATTN_KB];
        for (int p = 0; p < 16; ++p) {
            __m512 x = ninf;
            if (mask && p < np) {
                x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, mask + p*mpos + 2*ic));
            } else if (p < np) {
                x = _mm512_setzero_ps();
            }
            _mm512_store_ps(mr + p*BITNET_ATTN_KB, _mm512_mask_blend_ps(lanes, ninf, x));
        }
        __mmask16 live = 0;
        for (int j = 0; j < BITNET_ATTN_KB; ++j) {
            mt[j] = _mm512_i32gather_ps(_mm512_add_epi32(rowsof, _mm512_set1_epi32(j)), mr, 4);
            live |= _mm512_cmp_ps_mask(mt[j], ninf, _CMP_NEQ_OQ);
        }
        if (!live) {
            continue;
        }

        // the block's K and V rows in F32; zeros past the cache (their scores are -inf)
        for (int j = 0; j < BITNET_ATTN_KB; ++j) {
            const char * kr = k + (ic + j)*kstride;
            const char * vr = v + (ic + j)*vstride;
            for (int d = 0; d < dk; d += 16) {
                _mm512_store_ps(kf + j*dk + d, j < n ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (kr + 2*d))) : _mm512_setzero_ps());
            }
            for (int d = 0; d < dv; d += 16) {
                _mm512_store_ps(vf + j*dv + d, j < n ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (vr + 2*d))) : _mm512_setzero_ps());
            }
        }

        for (int h = 0; h < NH; ++h) {
            // scores: s[j], lane p = q[p] . k[j] (scale is in q) + mask
            __m512 s[BITNET_ATTN_KB];
            for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                s[j] = _mm512_setzero_ps();
            }
            for (int d = 0; d < dk; ++d) {
                const __m512 qv = _mm512_load_ps(qT + (h*dk + d)*16);
                for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                    s[j] = _mm512_fmadd_ps(qv, _mm512_set1_ps(kf[j*dk + d]), s[j]);
                }
            }
            __m512 mx = ninf;
            for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                s[j] = _mm512_add_ps(s[j], mt[j]);
                mx   = _mm512_max_ps(mx, s[j]);
            }
            // online softmax per lane; a position that has seen no row yet keeps M = -inf and
            // its exponents are taken against 0 (all of them are exp(-inf) = 0)
            const __m512 Mnew  = _mm512_max_ps(M[h], mx);
            const __m512 base  = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(Mnew, ninf, _CMP_EQ_OQ), Mnew, _mm512_setzero_ps());
            const __m512 alpha = ggml_v_expf(_mm512_sub_ps(M[h], base));
            __m512 sum = _mm512_setzero_ps();
            for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                s[j] = ggml_v_expf(_mm512_sub_ps(s[j], base));
                sum  = _mm512_add_ps(sum, s[j]);
            }
            S[h] = _mm512_fmadd_ps(S[h], alpha, sum);
            M[h] = Mnew;
            const bool rescale = _mm512_cmp_ps_mask(alpha, one, _CMP_NEQ_UQ) != 0;

            // o = alpha o + P V, 8 output values at a time
            for (int c = 0; c < dv; c += 8) {
                __m512 acc[8];
                for (int i = 0; i < 8; ++i) {
                    acc[i] = rescale ? _mm512_mul_ps(_mm512_load_ps(oT + (h*dv + c + i)*16), alpha) : _mm512_load_ps(oT + (h*dv + c + i)*16);
                }
                for (int j = 0; j < BITNET_ATTN_KB; ++j) {
                    for (int i = 0; i < 8; ++i) {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(vf[j*dv + c + i]), s[j], acc[i]);
                    }
                }
                for (int i = 0; i < 8; ++i) {
                    _mm512_store_ps(oT + (h*dv + c + i)*16, acc[i]);
                }
            }
        }
    }
    // out = o / S; a position that saw no row gets zeros, as ggml writes
    for (int h = 0; h < NH; ++h) {
        const __mmask16 none = _mm512_cmp_ps_mask(S[h], _mm512_setzero_ps(), _CMP_EQ_OQ);
        const __m512    inv  = _mm512_maskz_div_ps((__mmask16) ~none, one, S[h]);
        float invs[16] __attribute__((aligned(64)));
        _mm512_store_ps(invs, inv);
        for (int p = 0; p < np; ++p) {
            float * o = (float *) (out + h*ohead + p*opos);
            for (int c = 0; c < dv; ++c) {
                o[c] = oT[(h*dv + c)*16 + p]*invs[p];
            }
        }
    }
}

#define BITNET_ATTN_PROMPT(NH)                                                                                         \
    static void bitnet_attn_prompt_##NH(int np, int dk, int dv, int64_t nk, const float * q, size_t qpos, size_t qhead, \
                                        float scale, const char * k, size_t kstride, const char * v, size_t vstride,   \
                                        const char * mask, size_t mpos, char * out, size_t opos, size_t ohead,         \
                                        float * work) {                                                                \
        bitnet_attn_prompt(NH, np, dk, dv, nk, q, qpos, qhead, scale, k, kstride, v, vstride, mask, mpos, out, opos,   \
                           ohead, work);                                                                               \
    }
BITNET_ATTN_PROMPT(1) BITNET_ATTN_PROMPT(2) BITNET_ATTN_PROMPT(3) BITNET_ATTN_PROMPT(4)

void ggml_bitnet_attn_f16_prompt(int nh, int np, int dk, int dv, int64_t nk, const float * q, size_t qpos, size_t qhead,
                                 float scale, const void * k, size_t kstride, const void * v, size_t vstride,
                                 const ggml_fp16_t * mask, size_t mpos, float * out, size_t opos, size_t ohead,
                                 float * work) {
    static void (* const heads[5])(int, int, int, int64_t, const float *, size_t, size_t, float, const char *, size_t,
                                   const char *, size_t, const char *, size_t, char *, size_t, size_t, float *) = {
        NULL, bitnet_attn_prompt_1, bitnet_attn_prompt_2, bitnet_attn_prompt_3, bitnet_attn_prompt_4,
    };
    GGML_ASSERT(nh >= 1 && nh <= 4 && np >= 1 && np <= GGML_BITNET_ATTN_PROMPT_QP && dk % 16 == 0 && dk <= GGML_BITNET_ATTN_MAX_D &&
                dv % 64 == 0 && dv <= GGML_BITNET_ATTN_MAX_D && ((uintptr_t) work) % 64 == 0);
    heads[nh](np, dk, dv, nk, q, qpos, qhead, scale, (const char *) k, kstride, (const char *) v, vstride,
              (const char *) mask, mpos, (char *) out, opos, ohead, work);
}
#endif
