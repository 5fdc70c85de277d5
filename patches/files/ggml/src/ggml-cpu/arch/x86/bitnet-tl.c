// bitnet-tools: x86 kernels for TL1 and TL2 weights (AVX-512 VBMI/VNNI, and AVX2 with GCC or clang).
// Scalar reference: ../../bitnet.c; the trit tables: ../../bitnet-impl.h.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet-impl.h"

#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(GGML_BITNET_TL_VPERMB) || (defined(__AVX2__) && defined(__GNUC__))

// ---------------------------------------------------------------- TL1 / TL2: decoded codes
//
// The codes of each chunk are decoded, one vpermb per trit position p into trit + 1 (0..2, lane
// 4i + j: row i, group j), and every column's activations of that position (groups 0..3 of the
// chunk: 4 bytes, broadcast) are multiplied in with vpdpbusd, which sums lanes 4i..4i+3 into
// row i. The +1 adds the column's sum(q) to every row; the I8_S row carries it and it is
// subtracted at the end. The activations are first split by trit position and interleaved by
// column (tl_split_acts): chunk ch, column c, position p at ch*cs + c*4gw + 4p, so that a kernel
// reads all its columns from one pointer.
// Lookup tables (bitnet.cpp's way, and this file's until 2026-12) cost as much per column as
// the decoded dot products (two byte permutes and a vpdpbusd per chunk against one vpdpbusd per
// trit position), their bytes are 6x (TL1) to 21x (TL2) those of the codes they serve, and on
// AVX2, without a 64-entry byte permute, they need every chunk transposed; with one column
// (token generation) the decoded kernels measured 1.3-1.4x faster on Zen 4 once their sums no
// longer waited on one vpdpbusd chain.

#define TL_DEC_MAX_COLS 160  // columns split at once (their d and sum(q) on the stack)

// code -> trit p + 1 of TL1 / TL2 (one vpermb table per p; AVX2 uses TL1's entries 0-15 and
// decodes TL2 with tla_mod3 / tla_div3 below),
// unused codes as zero weights
typedef struct {
    uint8_t t[3][64];
} tl_dec_tables_t;

static void tl_dec_tables(int tl2, tl_dec_tables_t * tab) {
    for (int p = 0; p < 3; ++p) {
        for (int v = 0; v < 64; ++v) {
            const int t = tl2 ? (v < 32 ? bitnet_tl2_trits[p][v] : 0) : (p < 2 && v < 16 ? bitnet_tl1_trits[p][v] : 0);
            tab->t[p][v] = (uint8_t) (t + 1);
        }
    }
}

#if defined(GGML_BITNET_TL_VPERMB)

// the 64 codes of a full chunk, lane 4i + j
BITNET_INLINE __m512i tl_codes(const uint8_t * GGML_RESTRICT chunk, const int tl2) {
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);   // upper half: high nibbles
    __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) chunk));
    z = _mm512_and_si512(_mm512_srlv_epi64(z, shift), _mm512_set1_epi8(0x0F));
    if (tl2) {  // bit 4 of the codes, one mask bit per lane
        uint64_t bit4;
        memcpy(&bit4, chunk + 32, sizeof(bit4));
        z = _mm512_mask_add_epi8(z, _cvtu64_mask64(bit4), z, _mm512_set1_epi8(0x10));
    }
    return z;
}

// one I8_S row (column c) into the split layout above (cs bytes per chunk), zeros past n
static void tl_split_acts(int gw, const int8_t * GGML_RESTRICT q, int n, int nch, int8_t * GGML_RESTRICT dst, size_t cs) {
    const int cb = 4*gw;  // bytes of a chunk: 4 groups
    uint8_t perm[64];     // 4 chunks per step, chunk i to bytes 16i..
    for (int o = 0; o < 64; ++o) {
        const int i = o / 16, p = (o % 16) / 4, j = o % 4;
        perm[o] = (uint8_t) (p < gw ? i*cb + gw*j + p : 0);
    }
    const __m512i   idx  = _mm512_loadu_si512(perm);
    const __mmask16 keep = (__mmask16) ((1u << cb) - 1);
    for (int ch = 0; ch < nch; ch += 4) {
        const int       k   = ch*cb;
        const int       rem = n - k < 4*cb ? n - k : 4*cb;  // values of these 4 chunks inside the row
        const __m512i   v   = _mm512_permutexvar_epi8(idx, _mm512_maskz_loadu_epi8(_cvtu64_mask64(rem <= 0 ? 0 : ~0ULL >> (64 - rem)), q + k));
        int8_t * o = dst + ch*cs;
        _mm_mask_storeu_epi8(o, keep, _mm512_castsi512_si128(v));
        if (ch + 1 < nch) _mm_mask_storeu_epi8(o + cs,   keep, _mm512_extracti32x4_epi32(v, 1));
        if (ch + 2 < nch) _mm_mask_storeu_epi8(o + 2*cs, keep, _mm512_extracti32x4_epi32(v, 2));
        if (ch + 3 < nch) _mm_mask_storeu_epi8(o + 3*cs, keep, _mm512_extracti32x4_epi32(v, 3));
    }
}

// row i of column c: (acc lane i - sum(q)) * d * wscale, as the reference rounds it
BITNET_INLINE void tl_dec_store(__m512i acc, int32_t sum, float d, float wscale, float * GGML_RESTRICT s) {
    const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(sum)));
    _mm512_storeu_ps(s, _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(d)), _mm512_set1_ps(wscale)));
}

// one full tile (16 rows) x C columns: a points at the first column's bytes of chunk 0
BITNET_INLINE void tl_dec_tile(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                               size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs,
                               const int tl2, const int C) {
    const int gw      = tl2 ? 3 : 2;
    const int chunk_b = tl2 ? sizeof(block_tl2) : sizeof(block_tl1);
    // K sums per column (one per trit position, or two), so that with few columns vpdpbusd's
    // latency does not bind: one chain per column would wait for it 2-3 times per chunk
    const int K = C <= 2 ? gw : C == 4 ? 2 : 1;
    __m512i t[3], acc[8];  // column c, chain k: acc[c*K + k]
    for (int p = 0; p < gw; ++p) {
        t[p] = _mm512_loadu_si512(tab->t[p]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < C*K; ++i) {
        acc[i] = _mm512_setzero_si512();
    }
    for (int ch = 0; ch < nch; ++ch, a += cs) {
        // 64 chunks (2-2.5 KB) ahead: with 16, one column (generation) waited on DRAM, ~9 % slower
        _mm_prefetch((const char *) x + (ch + 64)*chunk_b, _MM_HINT_T0);
        const __m512i z = tl_codes(x + ch*chunk_b, tl2);
        __m512i w[3];
#pragma GCC unroll 3
        for (int p = 0; p < gw; ++p) {
            w[p] = _mm512_permutexvar_epi8(z, t[p]);
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
#pragma GCC unroll 3
            for (int p = 0; p < gw; ++p) {
                int32_t a4;
                memcpy(&a4, a + c*4*gw + 4*p, sizeof(a4));
                const int i = c*K + p % K;
                acc[i] = _mm512_dpbusd_epi32(acc[i], w[p], _mm512_set1_epi32(a4));
            }
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
        for (int k = 1; k < K; ++k) {
            acc[c*K] = _mm512_add_epi32(acc[c*K], acc[c*K + k]);
        }
        tl_dec_store(acc[c*K], sum[c], d[c], wscale, s + c*bs);
    }
}

#if defined(__GNUC__)
// 16 columns, the widest kernel: GCC spills that many accumulators, so it is written out.
// zmm0-15 the columns' sums, 16-18 the decoded trits, 19-21 the tables, 22-25 the codes' constants.
#define TLD_DOT3(C)                                                                                                        \
    "vpdpbusd   " #C "*12(%[a])%{1to16%}, %%zmm16, %%zmm" #C "\n\t"                                                   \
    "vpdpbusd   " #C "*12+4(%[a])%{1to16%}, %%zmm17, %%zmm" #C "\n\t"                                                 \
    "vpdpbusd   " #C "*12+8(%[a])%{1to16%}, %%zmm18, %%zmm" #C "\n\t"
#define TLD_DOT2(C)                                                                                                        \
    "vpdpbusd   " #C "*8(%[a])%{1to16%}, %%zmm16, %%zmm" #C "\n\t"                                                    \
    "vpdpbusd   " #C "*8+4(%[a])%{1to16%}, %%zmm17, %%zmm" #C "\n\t"
#define TLD_16(DOT)                                                                                                        \
    DOT(0) DOT(1) DOT(2)  DOT(3)  DOT(4)  DOT(5)  DOT(6)  DOT(7)                                                           \
    DOT(8) DOT(9) DOT(10) DOT(11) DOT(12) DOT(13) DOT(14) DOT(15)
#define TLD_ZERO(A) "vpxord %%zmm" #A ", %%zmm" #A ", %%zmm" #A "\n\t"
#define TLD_STORE(A) "vmovdqu64 %%zmm" #A ", " #A "*64(%[acc])\n\t"
// the next chunk (XB bytes of codes, cs of activations), then the sums out
#define TLD_TAIL(XB)                                                                                                       \
    "add        $" #XB ", %[x]\n\t"                                                                                       \
    "add        %[cs], %[a]\n\t"                                                                                          \
    "dec        %[cnt]\n\t"                                                                                               \
    "jnz        1b\n\t"                                                                                                   \
    TLD_16(TLD_STORE)
#define TLD_OPERANDS                                                                                                       \
    : [x] "+r" (x), [a] "+r" (a), [cnt] "+r" (cnt), [t] "=&r" (tmp)                                                        \
    : [cs] "r" (cs), [tab] "r" (tab->t), [sh] "r" (shift), [acc] "r" (acc)                                                 \
    : "cc", "memory", "k1", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",       \
      "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",         \
      "xmm23", "xmm24", "xmm25"

static void tl_dec_tile16(int tl2, int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                          size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs) {
    static const uint64_t shift[8] = { 0, 0, 0, 0, 4, 4, 4, 4 };
    __m512i acc[16];
    size_t cnt = (size_t) nch;
    unsigned tmp;
    if (tl2) {
        __asm__ volatile(
            "vmovdqu64  (%[tab]), %%zmm19\n\t"
            "vmovdqu64  64(%[tab]), %%zmm20\n\t"
            "vmovdqu64  128(%[tab]), %%zmm21\n\t"
            "vmovdqu64  (%[sh]), %%zmm22\n\t"
            "movl       $0x0f0f0f0f, %k[t]\n\t"
            "vpbroadcastd %k[t], %%zmm23\n\t"
            "movl       $0x10101010, %k[t]\n\t"
            "vpbroadcastd %k[t], %%zmm24\n\t"
            TLD_16(TLD_ZERO)
            ".p2align 6\n\t"
            "1:\n\t"
            "prefetcht0 640(%[x])\n\t"
            "vbroadcasti64x4 (%[x]), %%zmm25\n\t"
            "kmovq      32(%[x]), %%k1\n\t"
            "vpsrlvq    %%zmm22, %%zmm25, %%zmm25\n\t"
            "vpandd     %%zmm23, %%zmm25, %%zmm25\n\t"
            "vpaddb     %%zmm24, %%zmm25, %%zmm25%{%%k1%}\n\t"
            "vpermb     %%zmm19, %%zmm25, %%zmm16\n\t"
            "vpermb     %%zmm20, %%zmm25, %%zmm17\n\t"
            "vpermb     %%zmm21, %%zmm25, %%zmm18\n\t"
            TLD_16(TLD_DOT3)
            TLD_TAIL(40)
            TLD_OPERANDS);
    } else {
        __asm__ volatile(
            "vmovdqu64  (%[tab]), %%zmm19\n\t"
            "vmovdqu64  64(%[tab]), %%zmm20\n\t"
            "vmovdqu64  (%[sh]), %%zmm22\n\t"
            "movl       $0x0f0f0f0f, %k[t]\n\t"
            "vpbroadcastd %k[t], %%zmm23\n\t"
            TLD_16(TLD_ZERO)
            ".p2align 6\n\t"
            "1:\n\t"
            "prefetcht0 512(%[x])\n\t"
            "vbroadcasti64x4 (%[x]), %%zmm25\n\t"
            "vpsrlvq    %%zmm22, %%zmm25, %%zmm25\n\t"
            "vpandd     %%zmm23, %%zmm25, %%zmm25\n\t"
            "vpermb     %%zmm19, %%zmm25, %%zmm16\n\t"
            "vpermb     %%zmm20, %%zmm25, %%zmm17\n\t"
            TLD_16(TLD_DOT2)
            TLD_TAIL(32)
            TLD_OPERANDS);
    }
    for (int c = 0; c < 16; ++c) {
        tl_dec_store(acc[c], sum[c], d[c], wscale, s + c*bs);
    }
}
#define TL_DEC_16(TYPE, TL2)                                                                                               \
    static void TYPE##_dec_16(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a, \
                              size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs) { \
        tl_dec_tile16(TL2, nch, x, tab, a, cs, d, sum, wscale, s, bs);                                                     \
    }
#define TL_DEC_16_OR_NULL(TYPE) TYPE##_dec_16
#else
#define TL_DEC_16(TYPE, TL2)
#define TL_DEC_16_OR_NULL(TYPE) NULL
#endif

#else

// AVX2: vpshufb looks up 16 entries per 128-bit half, so a tile is decoded in two halves of 8
// rows. Lanes 0-31 (rows 0-7) are the low nibbles of a chunk's 32 code bytes, lanes 32-63 (rows
// 8-15) the high nibbles, both in lane order 4i + j. TL2's 5-bit code v = 9 d0 + 3 d1 + d2
// (digit d = trit + 1) does not fit one 16-entry lookup, but its digits come from two, with the
// nibble n and bit 4 b (v = n + 16 b): with i = n + b, d2 = i mod 3 and q = 3 d0 + d1 =
// i div 3 + 5 b (16 = 15 + 1), then d0 = q div 3 and d1 = q mod 3. That is 4 vpshufb from two
// tables and 3 byte operations per half, where a lookup of codes 0-15 and 16-31 blended by bit 4
// took 6 vpshufb and 3 blends. (Codes 27-31 are never written; here they decode to arbitrary
// weights.) vpmaddubsw multiplies trit + 1 (u8) by the broadcast activations (s8) and adds lanes
// 4i + {0, 1} and 4i + {2, 3} in int16: at most 2 * 2 * 128 per trit position, 1536 per TL2
// chunk, so TL_DEC_RUN chunks sum in int16 before vpmaddwd widens them to a row's int32.
#define TL_DEC_RUN    16  // 16 * 1536 < 32768
#define TL_PF_CHUNKS  32  // one column: chunks fetched ahead of use

// one I8_S row (column c) into the split layout above (cs bytes per chunk), zeros past n
static void tl_split_acts(int gw, const int8_t * GGML_RESTRICT q, int n, int nch, int8_t * GGML_RESTRICT dst, size_t cs) {
    const int cb = 4*gw;  // bytes of a chunk: 4 groups
    // byte 4p + j of a chunk's slot <- its value gw*j + p
    const __m128i perm = gw == 3 ? _mm_setr_epi8(0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11, -1, -1, -1, -1)
                                 : _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    int ch = 0;
    for (; ch < nch && ch*cb + 16 <= n; ++ch) {  // 16-byte loads inside the row
        const __m128i v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (q + ch*cb)), perm);
        int8_t * o = dst + ch*cs;
        _mm_storel_epi64((__m128i *) o, v);
        if (gw == 3) {
            const int32_t w = _mm_extract_epi32(v, 2);
            memcpy(o + 8, &w, sizeof(w));
        }
    }
    for (; ch < nch; ++ch) {  // the row's last chunks
        for (int p = 0; p < gw; ++p) {
            for (int j = 0; j < 4; ++j) {
                const int k = (ch*4 + j)*gw + p;
                dst[ch*cs + 4*p + j] = k < n ? q[k] : 0;
            }
        }
    }
}

// Inline asm (GCC kept the broadcast activations on the stack and spilled the int16 sums, 10 to
// 40 % slower). ymm0-7 the columns' int16 sums, 8-10 the decoded trits, 11 the nibbles, 12 the
// bit-4 mask, 13-15 products; a run of chunks per asm statement, then its sums are widened into acc.
static const uint8_t tla_mod3[32] = { 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0 };
static const uint8_t tla_div3[32] = { 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5 };
static const uint8_t tla_five[32] = { 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5 };
static const uint8_t tla_sel[32] = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3 };
static const uint8_t tla_bit[32] = { 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
                                     1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
#define TLA_8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define TLA_4(M) M(0) M(1) M(2) M(3)
#define TLA_2(M) M(0) M(1)
#define TLA_ZERO(C) "vpxor      %%ymm" #C ", %%ymm" #C ", %%ymm" #C "\n\t"
#define TLA_FLUSH(C)                                                                                                       \
    "vpmaddwd   %[ones], %%ymm" #C ", %%ymm" #C "\n\t"                                                                     \
    "vpaddd     " #C "*32(%[acc]), %%ymm" #C ", %%ymm" #C "\n\t"                                                           \
    "vmovdqu    %%ymm" #C ", " #C "*32(%[acc])\n\t"
// nibbles of this half (shifted by 0 or 4) into ymm11
#define TLA_NIB                                                                                                            \
    "vmovdqu    (%[x]), %%ymm11\n\t"                                                                                      \
    "vpsrlw     $%c[shc], %%ymm11, %%ymm11\n\t"                                                                             \
    "vpand      %[m0f], %%ymm11, %%ymm11\n\t"
// TL2's digits from the nibbles N and the bit-4 mask M (0 or -1), with the tables i mod 3 and
// i div 3 in T3 and D3: i = N - M, d2 = T3[i], q = D3[i] + (M & 5), d0 = D3[q], d1 = T3[q].
// Q, D0, D1, D2 name the registers that receive q and the digits (Q may be D1; D2 may be N).
#define TLA_DIGITS(N, M, T3, D3, Q, D0, D1, D2)                                                                            \
    "vpsubb     %%ymm" #M ", %%ymm" #N ", %%ymm" #N "\n\t"                                                                 \
    "vpand      %[five], %%ymm" #M ", %%ymm" #M "\n\t"                                                                    \
    "vpshufb    %%ymm" #N ", %%ymm" #D3 ", %%ymm" #Q "\n\t"                                                               \
    "vpshufb    %%ymm" #N ", %%ymm" #T3 ", %%ymm" #D2 "\n\t"                                                              \
    "vpaddb     %%ymm" #M ", %%ymm" #Q ", %%ymm" #Q "\n\t"                                                                \
    "vpshufb    %%ymm" #Q ", %%ymm" #D3 ", %%ymm" #D0 "\n\t"                                                              \
    "vpshufb    %%ymm" #Q ", %%ymm" #T3 ", %%ymm" #D1 "\n\t"
#define TLA_DEC3                                                                                                           \
    TLA_NIB                                                                                                                \
    "vpbroadcastd 32(%[x],%[h4]), %%ymm12\n\t"                                                                            \
    "vpshufb    %[sel], %%ymm12, %%ymm12\n\t"                                                                             \
    "vpand      %[bit], %%ymm12, %%ymm12\n\t"                                                                             \
    "vpcmpeqb   %[bit], %%ymm12, %%ymm12\n\t"                                                                             \
    "vmovdqu    %[mod3], %%ymm13\n\t"                                                                                     \
    "vmovdqu    %[div3], %%ymm14\n\t"                                                                                     \
    TLA_DIGITS(11, 12, 13, 14, 9, 8, 9, 10)
#define TLA_DEC2                                                                                                           \
    TLA_NIB                                                                                                                \
    "vbroadcasti128 (%[tab]), %%ymm8\n\t"                                                                                 \
    "vpshufb    %%ymm11, %%ymm8, %%ymm8\n\t"                                                                              \
    "vbroadcasti128 64(%[tab]), %%ymm9\n\t"                                                                               \
    "vpshufb    %%ymm11, %%ymm9, %%ymm9\n\t"
// column C: its 4 activations of each trit position, broadcast, times the trits, into ymmC
#define TLA_COL3(C)                                                                                                        \
    "vpbroadcastd " #C "*12(%[a]), %%ymm13\n\t"                                                                            \
    "vpmaddubsw %%ymm13, %%ymm8, %%ymm13\n\t"                                                                             \
    "vpbroadcastd " #C "*12+4(%[a]), %%ymm14\n\t"                                                                          \
    "vpmaddubsw %%ymm14, %%ymm9, %%ymm14\n\t"                                                                             \
    "vpbroadcastd " #C "*12+8(%[a]), %%ymm15\n\t"                                                                          \
    "vpmaddubsw %%ymm15, %%ymm10, %%ymm15\n\t"                                                                            \
    "vpaddw     %%ymm14, %%ymm13, %%ymm13\n\t"                                                                            \
    "vpaddw     %%ymm15, %%ymm" #C ", %%ymm" #C "\n\t"                                                                    \
    "vpaddw     %%ymm13, %%ymm" #C ", %%ymm" #C "\n\t"
#define TLA_COL2(C)                                                                                                        \
    "vpbroadcastd " #C "*8(%[a]), %%ymm13\n\t"                                                                             \
    "vpmaddubsw %%ymm13, %%ymm8, %%ymm13\n\t"                                                                             \
    "vpbroadcastd " #C "*8+4(%[a]), %%ymm14\n\t"                                                                           \
    "vpmaddubsw %%ymm14, %%ymm9, %%ymm14\n\t"                                                                             \
    "vpaddw     %%ymm14, %%ymm13, %%ymm13\n\t"                                                                            \
    "vpaddw     %%ymm13, %%ymm" #C ", %%ymm" #C "\n\t"
#define TLA_RUN(LIST, DEC, COL, XB)                                                                                        \
    __asm__ volatile(                                                                                                      \
        LIST(TLA_ZERO)                                                                                                     \
        ".p2align 6\n\t"                                                                                                   \
        "1:\n\t"                                                                                                           \
        "prefetcht0 (%[x],%[pfd])\n\t"                                                                                  \
        DEC                                                                                                                \
        LIST(COL)                                                                                                          \
        "add        $" #XB ", %[x]\n\t"                                                                                   \
        "add        %[cs], %[a]\n\t"                                                                                      \
        "dec        %[cnt]\n\t"                                                                                           \
        "jnz        1b\n\t"                                                                                               \
        LIST(TLA_FLUSH)                                                                                                    \
        : [x] "+r" (xr), [a] "+r" (ar), [cnt] "+r" (cnt)                                                                   \
        : [cs] "r" (cs), [tab] "r" (tab->t), [h4] "r" (h4), [pfd] "r" (pfd), [acc] "r" (acc), [shc] "i" (4*h),              \
          [m0f] "m" (m0f), [sel] "m" (*(const __m256i *) tla_sel), [bit] "m" (*(const __m256i *) tla_bit), [ones] "m" (ones), \
          [five] "m" (*(const __m256i *) tla_five), [mod3] "m" (*(const __m256i *) tla_mod3), [div3] "m" (*(const __m256i *) tla_div3) \
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",        \
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15")

// rows 8h .. 8h + 7 of one full tile x C (8, 4 or 2; one column: tl_dec_tile1_asm) columns: a points at the first column's bytes of chunk 0
BITNET_INLINE void tl_dec_half_asm(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                            size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs,
                            const int tl2, const int C, const int h) {
    const size_t  chunk_b = tl2 ? sizeof(block_tl2) : sizeof(block_tl1);
    const __m256i m0f     = _mm256_set1_epi8(0x0F);
    const __m256i ones    = _mm256_set1_epi16(1);
    const size_t  h4      = 4*h;
    const size_t  pfd     = (size_t) nch*chunk_b;  // the next tile, which follows this one: token generation streams it from DRAM
    __m256i acc[8];
    for (int c = 0; c < C; ++c) {
        acc[c] = _mm256_setzero_si256();
    }
    static_assert(sizeof(block_tl2) == 40 && sizeof(block_tl1) == 32, "the asm steps by one chunk of codes");
    for (int ch0 = 0; ch0 < nch; ch0 += TL_DEC_RUN) {
        const uint8_t * xr  = x + ch0*chunk_b;
        const int8_t  * ar  = a + ch0*cs;
        size_t          cnt = (size_t) (nch - ch0 < TL_DEC_RUN ? nch - ch0 : TL_DEC_RUN);
        if (tl2) {
            switch (C) {
                case 8: TLA_RUN(TLA_8, TLA_DEC3, TLA_COL3, 40); break;
                case 4: TLA_RUN(TLA_4, TLA_DEC3, TLA_COL3, 40); break;
                default: TLA_RUN(TLA_2, TLA_DEC3, TLA_COL3, 40); break;
            }
        } else {
            switch (C) {
                case 8: TLA_RUN(TLA_8, TLA_DEC2, TLA_COL2, 32); break;
                case 4: TLA_RUN(TLA_4, TLA_DEC2, TLA_COL2, 32); break;
                default: TLA_RUN(TLA_2, TLA_DEC2, TLA_COL2, 32); break;
            }
        }
    }
    const __m256 ws = _mm256_set1_ps(wscale);
    for (int c = 0; c < C; ++c) {  // (acc - sum(q)) * d * wscale, as the reference rounds it
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[c], _mm256_set1_epi32(sum[c])));
        _mm256_storeu_ps(s + c*bs + 8*h, _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(d[c])), ws));
    }
}

// One column (token generation), rows 0-15 in one pass: the tables stay in registers, each
// chunk's codes and activations are loaded once. ymm0/1 the int16 sums of rows 0-7 / 8-15, ymm2/3
// the two tables (TL2: i mod 3, i div 3; TL1: trit positions 0, 1), 8/9 the nibbles of the two
// halves, 10/11 their bit-4 masks, 12 the broadcast activations, 4-7 and 13-15 digits and products.
#define TLA1_DOT(P, H0, H1)                                                                                                \
    "vpbroadcastd " #P "*4(%[a]), %%ymm12\n\t"                                                                             \
    "vpmaddubsw %%ymm12, %%ymm" #H0 ", %%ymm13\n\t"                                                                       \
    "vpaddw     %%ymm13, %%ymm0, %%ymm0\n\t"                                                                              \
    "vpmaddubsw %%ymm12, %%ymm" #H1 ", %%ymm14\n\t"                                                                       \
    "vpaddw     %%ymm14, %%ymm1, %%ymm1\n\t"
#define TLA1_MASK(OFF, M)                                                                                                  \
    "vpbroadcastd " #OFF "(%[x]), %%ymm" #M "\n\t"                                                                         \
    "vpshufb    %[sel], %%ymm" #M ", %%ymm" #M "\n\t"                                                                     \
    "vpand      %[bit], %%ymm" #M ", %%ymm" #M "\n\t"                                                                     \
    "vpcmpeqb   %[bit], %%ymm" #M ", %%ymm" #M "\n\t"
// TL2: half 0's digits in ymm6, 5, 8, half 1's in ymm10, 7, 9 (its mask register is free by then)
#define TLA1_TL2                                                                                                           \
    TLA1_MASK(32, 10) TLA1_MASK(36, 11)                                                                                    \
    TLA_DIGITS(8, 10, 2, 3, 5, 6, 5, 8) TLA_DIGITS(9, 11, 2, 3, 7, 10, 7, 9)                                               \
    TLA1_DOT(0, 6, 10) TLA1_DOT(1, 5, 7) TLA1_DOT(2, 8, 9)
#define TLA1_TL1                                                                                                           \
    "vpshufb    %%ymm8, %%ymm2, %%ymm4\n\t"                                                                               \
    "vpshufb    %%ymm9, %%ymm2, %%ymm5\n\t"                                                                               \
    "vpshufb    %%ymm8, %%ymm3, %%ymm6\n\t"                                                                               \
    "vpshufb    %%ymm9, %%ymm3, %%ymm7\n\t"                                                                               \
    TLA1_DOT(0, 4, 5) TLA1_DOT(1, 6, 7)
#define TLA1_RUN(BODY, XB)                                                                                             \
    __asm__ volatile(                                                                                                      \
        "vpxor      %%ymm0, %%ymm0, %%ymm0\n\t"                                                                           \
        "vpxor      %%ymm1, %%ymm1, %%ymm1\n\t"                                                                           \
        ".p2align 6\n\t"                                                                                                   \
        "1:\n\t"                                                                                                           \
        "prefetcht0 (%[x],%[pfd])\n\t"                                                                                    \
        "vmovdqu    (%[x]), %%ymm8\n\t"                                                                                   \
        "vpsrlw     $4, %%ymm8, %%ymm9\n\t"                                                                               \
        "vpand      %[m0f], %%ymm8, %%ymm8\n\t"                                                                           \
        "vpand      %[m0f], %%ymm9, %%ymm9\n\t"                                                                           \
        BODY                                                                                                               \
        "add        $" #XB ", %[x]\n\t"                                                                                   \
        "add        %[cs], %[a]\n\t"                                                                                   \
        "dec        %[cnt]\n\t"                                                                                           \
        "jnz        1b\n\t"                                                                                               \
        "vpmaddwd   %[ones], %%ymm0, %%ymm0\n\t"                                                                          \
        "vpaddd     (%[acc]), %%ymm0, %%ymm0\n\t"                                                                         \
        "vmovdqu    %%ymm0, (%[acc])\n\t"                                                                                 \
        "vpmaddwd   %[ones], %%ymm1, %%ymm1\n\t"                                                                          \
        "vpaddd     32(%[acc]), %%ymm1, %%ymm1\n\t"                                                                       \
        "vmovdqu    %%ymm1, 32(%[acc])\n\t"                                                                               \
        : [x] "+r" (xr), [a] "+r" (ar), [cnt] "+r" (cnt)                                                                   \
        : [cs] "r" (cs), [pfd] "r" (pfd), [acc] "r" (acc), [m0f] "m" (m0f), [sel] "m" (*(const __m256i *) tla_sel),      \
          [bit] "m" (*(const __m256i *) tla_bit), [ones] "m" (ones), [five] "m" (*(const __m256i *) tla_five),            \
          "v" (t0), "v" (t1)                                                                                               \
        : "cc", "memory", "xmm0", "xmm1", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",      \
          "xmm13", "xmm14", "xmm15")

static void tl_dec_tile1_asm(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                             size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, const int tl2) {
    const size_t  chunk_b = tl2 ? sizeof(block_tl2) : sizeof(block_tl1);
    const __m256i m0f     = _mm256_set1_epi8(0x0F);
    const __m256i ones    = _mm256_set1_epi16(1);
    const size_t  pfd     = TL_PF_CHUNKS*chunk_b;
    __m256i acc[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
    // the tables in ymm2/3, bound to registers so that the asm below may name them
    register __m256i t0 __asm__("ymm2") = tl2 ? _mm256_loadu_si256((const __m256i *) tla_mod3)
                                              : _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) tab->t[0]));
    register __m256i t1 __asm__("ymm3") = tl2 ? _mm256_loadu_si256((const __m256i *) tla_div3)
                                              : _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) tab->t[1]));
    for (int ch0 = 0; ch0 < nch; ch0 += TL_DEC_RUN) {
        const uint8_t * xr  = x + ch0*chunk_b;
        const int8_t  * ar  = a + ch0*cs;
        size_t          cnt = (size_t) (nch - ch0 < TL_DEC_RUN ? nch - ch0 : TL_DEC_RUN);
        if (tl2) {
            TLA1_RUN(TLA1_TL2, 40);
        } else {
            TLA1_RUN(TLA1_TL1, 32);
        }
    }
    const __m256 ws = _mm256_set1_ps(wscale);
    for (int h = 0; h < 2; ++h) {  // (acc - sum(q)) * d * wscale, as the reference rounds it
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[h], _mm256_set1_epi32(sum[0])));
        _mm256_storeu_ps(s + 8*h, _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(d[0])), ws));
    }
}

// one full tile (16 rows) x C columns, as two halves
BITNET_INLINE void tl_dec_tile(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                               size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs,
                               const int tl2, const int C) {
    if (C == 1) {
        tl_dec_tile1_asm(nch, x, tab, a, cs, d, sum, wscale, s, tl2);
        return;
    }
    tl_dec_half_asm(nch, x, tab, a, cs, d, sum, wscale, s, bs, tl2, C, 0);
    tl_dec_half_asm(nch, x, tab, a, cs, d, sum, wscale, s, bs, tl2, C, 1);
}
#define TL_DEC_16(TYPE, TL2)
#define TL_DEC_16_OR_NULL(TYPE) NULL

#endif

typedef void (*tl_dec_tile_fn)(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a,
                               size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs);
#define TL_DEC_KERNEL(TYPE, TL2, C)                                                                                        \
    static void TYPE##_dec_##C(int nch, const uint8_t * GGML_RESTRICT x, const tl_dec_tables_t * tab, const int8_t * GGML_RESTRICT a, \
                               size_t cs, const float * d, const int32_t * sum, float wscale, float * GGML_RESTRICT s, size_t bs) { \
        tl_dec_tile(nch, x, tab, a, cs, d, sum, wscale, s, bs, TL2, C);                                                    \
    }
// kernels by width, widest first (NULL: none of that width)
#define TL_DEC_KERNELS(TYPE, TL2)                                                                                          \
    TL_DEC_16(TYPE, TL2) TL_DEC_KERNEL(TYPE, TL2, 8) TL_DEC_KERNEL(TYPE, TL2, 4)                                           \
    TL_DEC_KERNEL(TYPE, TL2, 2) TL_DEC_KERNEL(TYPE, TL2, 1)                                                                \
    static const tl_dec_tile_fn TYPE##_dec[5] = { TL_DEC_16_OR_NULL(TYPE), TYPE##_dec_8, TYPE##_dec_4, TYPE##_dec_2, TYPE##_dec_1 };
TL_DEC_KERNELS(tl1, 0)
TL_DEC_KERNELS(tl2, 1)

// ggml_gemm_tl_i8_s: the columns split into scratch (as many as it holds), then row blocks of
// about 256 KiB of codes, which stay in L2 while every column passes over them in kernels of 16
// (AVX-512), 8, 4, 2, 1 columns; the last, shorter tile goes to the scalar kernel.
static void tl_gemm_decoded(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT x, int nr,
                            const int8_t * GGML_RESTRICT y, size_t by, int nc, float wscale, uint8_t * GGML_RESTRICT scratch) {
    const int      tl2    = type == GGML_TYPE_TL2;
    const int      gw     = ggml_tl_group(type);
    const int      nch    = (int) ggml_tl_chunks(type, n);
    const size_t   tile_b = (size_t) nch * ggml_tl_chunk_bytes(type, TL_TILE_ROWS);
    const int      full   = nr / TL_TILE_ROWS;
    const tl_dec_tile_fn * k = tl2 ? tl2_dec : tl1_dec;
    static const int widths[5] = { 16, 8, 4, 2, 1 };
    int batch = (int) ((ggml_tl_scratch_bytes(type, n) - 64) / ((size_t) nch*4*gw));
    batch = batch > TL_DEC_MAX_COLS ? TL_DEC_MAX_COLS : batch;
    int block = (int) ((256*1024) / tile_b);
    block = block < 1 ? 1 : block;
    tl_dec_tables_t tab;
    tl_dec_tables(tl2, &tab);

    for (int c0 = 0; c0 < nc; c0 += batch) {
        const int    cn = nc - c0 < batch ? nc - c0 : batch;
        const size_t cs = (size_t) cn*4*gw;
        float   d[TL_DEC_MAX_COLS];
        int32_t sum[TL_DEC_MAX_COLS];
        for (int c = 0; c < cn; ++c) {
            const int8_t * q = y + (c0 + c)*by;
            tl_split_acts(gw, q, n, nch, (int8_t *) scratch + c*4*gw, cs);
            d[c]   = bitnet_row_d(q, n);
            sum[c] = bitnet_row_sum(q, n);
        }
        for (int t0 = 0; t0 < full; t0 += block) {
            const int t1 = full - t0 < block ? full : t0 + block;
            int c = 0;
            for (int w = 0; w < 5; ++w) {
                for (; k[w] != NULL && c + widths[w] <= cn; c += widths[w]) {
                    for (int t = t0; t < t1; ++t) {
                        k[w](nch, x + t*tile_b, &tab, (const int8_t *) scratch + c*4*gw, cs, d + c, sum + c, wscale,
                             s + (c0 + c)*bs + t*TL_TILE_ROWS, bs);
                    }
                }
            }
        }
        if (full*TL_TILE_ROWS < nr) {
            ggml_gemm_tl_i8_s_generic(type, n, s + c0*bs + full*TL_TILE_ROWS, bs, x + full*tile_b,
                                      nr - full*TL_TILE_ROWS, y + c0*by, by, cn, wscale, NULL);
        }
    }
}

#endif

void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
#if defined(GGML_BITNET_TL_VPERMB) || (defined(__AVX2__) && defined(__GNUC__))
    tl_gemm_decoded(type, n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
#else
    ggml_gemm_tl_i8_s_generic(type, n, s, bs, vx, nr, vy, by, nc, wscale, scratch);
#endif
}
