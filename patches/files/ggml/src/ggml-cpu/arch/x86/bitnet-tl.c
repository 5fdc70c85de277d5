// bitnet-tools: x86 kernels for TL1 and TL2 weights (AVX-512 VBMI/VNNI; TL2 also AVX2).
// Scalar reference: ../../bitnet.c; the driver, tile plans and trit tables: ../../bitnet-impl.h.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "../../bitnet-impl.h"

#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// ---------------------------------------------------------------- TL1 / TL2 (lookup tables)
//
// A full chunk (16 rows x 4 groups = 64 lanes, lane 4i + j) becomes one vector of 64 byte
// indices into the chunk's tables: TL2 code | j << 5 into 4 x 32 entries (128 bytes, two zmm:
// vpermi2b), TL1 code | j << 4 into 4 x 16 entries (one zmm: vpermb). One lookup gives all 64
// partial dot products; dpbusd against ones then adds each row's 4 groups into one int32 lane.
// Low (unsigned) and high (signed) table bytes are looked up and summed apart: the dot is
// sum(lo) + 256 * sum(hi), exactly.
//
// Blocking: the LUTs of a batch of activation columns stay in L2 while the thread's row tiles
// stream past; R tiles x C columns of accumulators live in registers, so each index vector is
// used C times and each table R times: 3 x 3 (inline asm) for prompts, 8 x 1 with the next 8
// tiles prefetched for token generation.

#if defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)

// ggml_tl_build_lut: one group's table per vector (int16); TL2 gathers the low and high bytes of
// two groups with one vpermt2b each
static void tl2_build_lut512(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int ngroups = (int) ggml_tl_chunks(GGML_TYPE_TL2, n) * TL_CHUNK;
    const __m512i t0 = _mm512_loadu_si512(bitnet_tl2_trits[0]);
    const __m512i t1 = _mm512_loadu_si512(bitnet_tl2_trits[1]);
    const __m512i t2 = _mm512_loadu_si512(bitnet_tl2_trits[2]);
    const __m512i even = _mm512_set_epi8(126, 124, 122, 120, 118, 116, 114, 112, 110, 108, 106, 104, 102, 100, 98, 96,
                                         94, 92, 90, 88, 86, 84, 82, 80, 78, 76, 74, 72, 70, 68, 66, 64,
                                         62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                                         30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd  = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    for (int g = 0; g < ngroups; g += 2) {
        __m512i v[2];
        for (int h = 0; h < 2; ++h) {
            const int k = 3*(g + h);
            v[h] = _mm512_mullo_epi16(_mm512_set1_epi16(k < n ? q[k] : 0), t0);
            v[h] = _mm512_add_epi16(v[h], _mm512_mullo_epi16(_mm512_set1_epi16(k + 1 < n ? q[k + 1] : 0), t1));
            v[h] = _mm512_add_epi16(v[h], _mm512_mullo_epi16(_mm512_set1_epi16(k + 2 < n ? q[k + 2] : 0), t2));
        }
        uint8_t * dst = ((tl2_table *) lut)[g / TL_CHUNK].lo[g % TL_CHUNK];
        _mm512_storeu_si512(dst,       _mm512_permutex2var_epi8(v[0], even, v[1]));  // value & 0xFF
        _mm512_storeu_si512(dst + 128, _mm512_permutex2var_epi8(v[0], odd,  v[1]));  // value >> 8
    }
}

static void tl1_build_lut512(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int ngroups = (int) ggml_tl_chunks(GGML_TYPE_TL1, n) * TL_CHUNK;
    const __m256i t0 = _mm256_loadu_si256((const __m256i *) bitnet_tl1_trits[0]);
    const __m256i t1 = _mm256_loadu_si256((const __m256i *) bitnet_tl1_trits[1]);
    for (int g = 0; g < ngroups; ++g) {
        const int k = 2*g;
        __m256i v = _mm256_mullo_epi16(_mm256_set1_epi16(k < n ? q[k] : 0), t0);
        v = _mm256_add_epi16(v, _mm256_mullo_epi16(_mm256_set1_epi16(k + 1 < n ? q[k + 1] : 0), t1));
        uint8_t * dst = ((tl1_table *) lut)[g / TL_CHUNK].lo[g % TL_CHUNK];
        _mm_storeu_si128((__m128i *) dst,        _mm256_cvtepi16_epi8(v));
        _mm_storeu_si128((__m128i *) (dst + 64), _mm256_cvtepi16_epi8(_mm256_srai_epi16(v, 8)));
    }
}

// the 64 table indices of a full chunk
BITNET_INLINE __m512i tl_index(const uint8_t * GGML_RESTRICT chunk, const int tl2) {
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);   // upper half: high nibbles
    const __m512i m0f   = _mm512_set1_epi8(0x0F);
    const __m512i group = _mm512_set1_epi32(tl2 ? 0x60402000 : 0x30201000);  // j << 5 / j << 4, lane 4i + j
    __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) chunk));
    z = _mm512_srlv_epi64(z, shift);
    z = _mm512_ternarylogic_epi32(z, m0f, group, 0xEA);              // (z & m0f) | group
    if (tl2) {  // bit 4 of the codes, one mask bit per lane
        uint64_t bit4;
        memcpy(&bit4, chunk + 32, sizeof(bit4));
        z = _mm512_mask_add_epi8(z, _cvtu64_mask64(bit4), z, _mm512_set1_epi8(0x10));
    }
    return z;
}

// R full tiles x C columns over all chunks; s points at row 0 of column 0. Perm and dpbusd
// share two ports (measured on Zen 5), so only the low bytes go through dpbusd: the high bytes
// (TL2: -2..1, TL1: -1..0 per lane and chunk) are summed with vpaddb in int8 for TL_RUN chunks,
// then widened exactly. pf: prefetch the next R tiles (they follow these in memory), R*chunk_b
// bytes per chunk, so that the weight stream of token generation is in cache ahead of use.
#define TL_RUN(tl2) ((tl2) ? 64 : 128)

BITNET_INLINE void tl_tiles(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                            size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs,
                            const int tl2, const int R, const int C, const int pf) {
    const int     chunk_b = tl2 ? sizeof(block_tl2) : sizeof(block_tl1);
    const int     table_b = tl2 ? sizeof(tl2_table) : sizeof(tl1_table);
    const __m512i ones    = _mm512_set1_epi8(1);
    const uint8_t * pfp   = x + R*tile_b;
    __m512i acc_lo[8][2], acc_hi[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
        for (int c = 0; c < C; ++c) {
            acc_lo[r][c] = _mm512_setzero_si512();
        }
    }
    for (int ch0 = 0; ch0 < nch; ch0 += TL_RUN(tl2)) {
        const int ch1 = nch - ch0 < TL_RUN(tl2) ? nch : ch0 + TL_RUN(tl2);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                acc_hi[r][c] = _mm512_setzero_si512();
            }
        }
        for (int ch = ch0; ch < ch1; ++ch) {
            if (pf) {
#pragma GCC unroll 8
                for (int o = 0; o < R*chunk_b; o += 64) {
                    _mm_prefetch((const char *) pfp + ch*R*chunk_b + o, _MM_HINT_T0);
                }
            }
            __m512i idx[8];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                idx[r] = tl_index(x + r*tile_b + ch*chunk_b, tl2);
            }
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                const uint8_t * t = lut + c*lut_b + ch*table_b;
                if (tl2) {
                    const __m512i lo_a = _mm512_load_si512(t),       lo_b = _mm512_load_si512(t + 64);
                    const __m512i hi_a = _mm512_load_si512(t + 128), hi_b = _mm512_load_si512(t + 192);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        acc_lo[r][c] = _mm512_dpbusd_epi32(acc_lo[r][c], _mm512_permutex2var_epi8(lo_a, idx[r], lo_b), ones);
                        acc_hi[r][c] = _mm512_add_epi8(acc_hi[r][c], _mm512_permutex2var_epi8(hi_a, idx[r], hi_b));
                    }
                } else {
                    const __m512i lo = _mm512_load_si512(t), hi = _mm512_load_si512(t + 64);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        acc_lo[r][c] = _mm512_dpbusd_epi32(acc_lo[r][c], _mm512_permutexvar_epi8(idx[r], lo), ones);
                        acc_hi[r][c] = _mm512_add_epi8(acc_hi[r][c], _mm512_permutexvar_epi8(idx[r], hi));
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
            for (int c = 0; c < C; ++c) {
                const __m512i h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, acc_hi[r][c]);
                acc_lo[r][c] = _mm512_add_epi32(acc_lo[r][c], _mm512_slli_epi32(h, 8));
            }
        }
    }
    const __m512 ws = _mm512_set1_ps(wscale);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
        for (int c = 0; c < C; ++c) {
            // (float) isum * d * wscale, in the generic kernel's order
            const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc_lo[r][c]), _mm512_set1_ps(d[c])), ws);
            _mm512_storeu_ps(s + c*bs + r*TL_TILE_ROWS, v);
        }
    }
}

#if defined(__GNUC__)
// Prompt processing: 3 tiles x 3 columns in inline asm. GCC's allocation of tl_tiles at this
// size reloads the tables for every lookup and copies accumulators; here all 18 accumulators
// stay in registers and each table is loaded once per chunk. zmm0-8: int32 low-byte sums,
// zmm9-17: int8 high-byte sums (tile r, column c: 3r + c), zmm18-20: the tiles' indices,
// zmm21-24: one column's tables, zmm25/26: lookups, then constants; k7 selects the upper half
// (high nibbles), k1-k3: bit 4 of the TL2 codes.
#define TLK_ZERO3(A, B, C)                                                                                                 \
    "vpxord     %%zmm" #A ", %%zmm" #A ", %%zmm" #A "\n\t"                 \
    "vpxord     %%zmm" #B ", %%zmm" #B ", %%zmm" #B "\n\t"                 \
    "vpxord     %%zmm" #C ", %%zmm" #C ", %%zmm" #C "\n\t"
#define TLK_ZERO_ALL                                                                                                       \
    TLK_ZERO3(0, 1, 2) TLK_ZERO3(3, 4, 5) TLK_ZERO3(6, 7, 8)
#define TLK_ZERO_HI                                                                                                        \
    TLK_ZERO3(9, 10, 11) TLK_ZERO3(12, 13, 14) TLK_ZERO3(15, 16, 17)
// cnt = min(left, run); left -= cnt
#define TLK_RUN(RUN)                                                                                                       \
    "mov        $" #RUN ", %[cnt]\n\t"                                     \
    "cmp        %[cnt], %[left]\n\t"                                       \
    "cmovb      %[left], %[cnt]\n\t"                                       \
    "sub        %[cnt], %[left]\n\t"
// low sum += 256 * (sum of the 4 high bytes of each row); T is a scratch register
#define TLK_WIDEN(AL, AH, ONES, T)                                                                                         \
    "vpxord     %%zmm" #T ", %%zmm" #T ", %%zmm" #T "\n\t"                 \
    "vpdpbusd   %%zmm" #AH ", %%zmm" #ONES ", %%zmm" #T "\n\t"             \
    "vpslld     $8, %%zmm" #T ", %%zmm" #T "\n\t"                          \
    "vpaddd     %%zmm" #T ", %%zmm" #AL ", %%zmm" #AL "\n\t"
#define TLK_WIDEN_ALL(ONES, T)                                                                                             \
    TLK_WIDEN(0, 9, ONES, T)  TLK_WIDEN(1, 10, ONES, T) TLK_WIDEN(2, 11, ONES, T)                                          \
    TLK_WIDEN(3, 12, ONES, T) TLK_WIDEN(4, 13, ONES, T) TLK_WIDEN(5, 14, ONES, T)                                          \
    TLK_WIDEN(6, 15, ONES, T) TLK_WIDEN(7, 16, ONES, T) TLK_WIDEN(8, 17, ONES, T)
#define TLK_STORE_ALL                                                                                                      \
    "vmovdqu64  %%zmm0, (%[acc])\n\t"     "vmovdqu64 %%zmm1, 64(%[acc])\n\t"   \
    "vmovdqu64  %%zmm2, 128(%[acc])\n\t"  "vmovdqu64 %%zmm3, 192(%[acc])\n\t"  \
    "vmovdqu64  %%zmm4, 256(%[acc])\n\t"  "vmovdqu64 %%zmm5, 320(%[acc])\n\t"  \
    "vmovdqu64  %%zmm6, 384(%[acc])\n\t"  "vmovdqu64 %%zmm7, 448(%[acc])\n\t"  \
    "vmovdqu64  %%zmm8, 512(%[acc])\n\t"
// index of a tile's chunk: 32 nibble bytes to both halves, upper half shifted, (z & 0x0F) | j
#define TLK_INDEX(I, XA, M0F, GRP)                                                                                         \
    "vbroadcasti64x4 " XA ", %%zmm" #I "\n\t"                              \
    "vpsrlq     $4, %%zmm" #I ", %%zmm" #I "%{%%k7%}\n\t"                  \
    "vpternlogd $0xea, %%zmm" #GRP ", %%zmm" #M0F ", %%zmm" #I "\n\t"
#define TLK_CLOBBERS                                                                                                       \
    "cc", "memory", "k1", "k2", "k3", "k7",                               \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
    "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", \
    "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30"

// TL2: tables zmm21-24 (low a/b, high a/b); zmm27 ones, zmm28 0x0F, zmm29 j << 5, zmm30 0x10.
// vpermi2b overwrites its index, so the index is copied except at its last use.
#define TL2K_INDEX(I, XA, K)                                                                                               \
    TLK_INDEX(I, XA, 28, 29)                                                                                               \
    "kmovq      32" XA ", %%k" #K "\n\t"                                   \
    "vpaddb     %%zmm30, %%zmm" #I ", %%zmm" #I "%{%%k" #K "%}\n\t"
#define TL2K_TABLES(LA)                                                                                                    \
    "vmovdqa64  " LA ", %%zmm21\n\t"                                       \
    "vmovdqa64  64" LA ", %%zmm22\n\t"                                     \
    "vmovdqa64  128" LA ", %%zmm23\n\t"                                    \
    "vmovdqa64  192" LA ", %%zmm24\n\t"
#define TL2K_LO(I, AL)                                                                                                     \
    "vmovdqa64  %%zmm" #I ", %%zmm25\n\t"                                  \
    "vpermi2b   %%zmm22, %%zmm21, %%zmm25\n\t"                             \
    "vpdpbusd   %%zmm27, %%zmm25, %%zmm" #AL "\n\t"
#define TL2K_LOOK(I, AL, AH)                                                                                               \
    TL2K_LO(I, AL)                                                                                                         \
    "vmovdqa64  %%zmm" #I ", %%zmm26\n\t"                                  \
    "vpermi2b   %%zmm24, %%zmm23, %%zmm26\n\t"                             \
    "vpaddb     %%zmm26, %%zmm" #AH ", %%zmm" #AH "\n\t"
#define TL2K_LOOK_LAST(I, AL, AH)                                                                                          \
    TL2K_LO(I, AL)                                                                                                         \
    "vpermi2b   %%zmm24, %%zmm23, %%zmm" #I "\n\t"                         \
    "vpaddb     %%zmm" #I ", %%zmm" #AH ", %%zmm" #AH "\n\t"

// TL1: tables zmm21/22 (low, high); zmm25 ones, zmm26 0x0F, zmm27 j << 4. vpermb keeps its index.
#define TL1K_TABLES(LA)                                                                                                    \
    "vmovdqa64  " LA ", %%zmm21\n\t"                                       \
    "vmovdqa64  64" LA ", %%zmm22\n\t"
#define TL1K_LOOK(I, AL, AH)                                                                                               \
    "vpermb     %%zmm21, %%zmm" #I ", %%zmm23\n\t"                         \
    "vpdpbusd   %%zmm25, %%zmm23, %%zmm" #AL "\n\t"                        \
    "vpermb     %%zmm22, %%zmm" #I ", %%zmm24\n\t"                         \
    "vpaddb     %%zmm24, %%zmm" #AH ", %%zmm" #AH "\n\t"

// dword constants: ones, 0x0F, 0x10, TL2 j << 5, TL1 j << 4 (lane 4i + j)
static const int32_t tlk_const[5] = { 0x01010101, 0x0F0F0F0F, 0x10101010, 0x60402000, 0x30201000 };

// the loop around a chunk body: runs of RUN chunks (k7 selects the upper half, the low sums
// start at 0), the high sums zeroed per run; after the body, x and lut step by XB and LB
// bytes, and at the end of a run the high sums are widened into the low ones (constant ONES,
// scratch T); at the end the low sums are stored to acc
#define TLK_LOOP_HEAD(RUN)                                                                                                 \
    "movl       $0xf0, %k[cnt]\n\t"                                                                                        \
    "kmovb      %k[cnt], %%k7\n\t"                                                                                         \
    TLK_ZERO_ALL                                                                                                           \
    "2:\n\t"                                                                                                              \
    TLK_RUN(RUN)                                                                                                           \
    TLK_ZERO_HI                                                                                                            \
    ".p2align 6\n\t"  /* the loop starts a cache line: its speed does not move with the code before it */              \
    "1:\n\t"                                                                                                              \
    "prefetcht0 (%[pl])\n\t"                                                                                              \
    "prefetcht0 64(%[pl])\n\t"
#define TLK_LOOP_TAIL(XB, LB, ONES, T)                                                                                     \
    "add        $" #XB ", %[x]\n\t"                                                                                       \
    "add        $3*" #XB ", %[pl]\n\t"                                                                                    \
    "add        $" #LB ", %[lut]\n\t"                                                                                     \
    "dec        %[cnt]\n\t"                                                                                               \
    "jnz        1b\n\t"                                                                                                   \
    TLK_WIDEN_ALL(ONES, T)                                                                                                 \
    "test       %[left], %[left]\n\t"                                                                                     \
    "jnz        2b\n\t"                                                                                                   \
    TLK_STORE_ALL
#define TLK_OPERANDS                                                                                                       \
    : [x] "+r" (x), [lut] "+r" (lut), [left] "+r" (left), [cnt] "=&r" (cnt), [pl] "+r" (pl)                                \
    : [tb] "r" (tile_b), [lb] "r" (lut_b), [acc] "r" (acc), [k] "r" (tlk_const)                                            \
    : TLK_CLOBBERS

static_assert(sizeof(block_tl2) == 40 && sizeof(tl2_table) == 256, "the TL2 loop below steps by these");
static_assert(sizeof(block_tl1) == 32 && sizeof(tl1_table) == 128, "the TL1 loop below steps by these");

// acc[3r + c] = int32 row sums of tile r (x + r*tile_b) with column c (LUT at lut + c*lut_b);
// the next 3 tiles are prefetched as in tl_tiles (a batch of few columns waits on them otherwise)
static void tl_tiles3x3_asm(int tl2, int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                            size_t lut_b, __m512i * GGML_RESTRICT acc) {
    size_t left = (size_t) nch, cnt;
    const uint8_t * pl = x + 3*tile_b;  // the next 3 tiles, fetched 3 chunks' bytes per chunk (see tl_tiles)
    if (tl2) {
        __asm__ volatile(
            "vpbroadcastd (%[k]), %%zmm27\n\t"
            "vpbroadcastd 4(%[k]), %%zmm28\n\t"
            "vpbroadcastd 12(%[k]), %%zmm29\n\t"
            "vpbroadcastd 8(%[k]), %%zmm30\n\t"
            TLK_LOOP_HEAD(64)
            TL2K_INDEX(18, "(%[x])", 1)
            TL2K_INDEX(19, "(%[x],%[tb])", 2)
            TL2K_INDEX(20, "(%[x],%[tb],2)", 3)
            TL2K_TABLES("(%[lut])")
            TL2K_LOOK(18, 0, 9)       TL2K_LOOK(19, 3, 12)      TL2K_LOOK(20, 6, 15)
            TL2K_TABLES("(%[lut],%[lb])")
            TL2K_LOOK(18, 1, 10)      TL2K_LOOK(19, 4, 13)      TL2K_LOOK(20, 7, 16)
            TL2K_TABLES("(%[lut],%[lb],2)")
            TL2K_LOOK_LAST(18, 2, 11) TL2K_LOOK_LAST(19, 5, 14) TL2K_LOOK_LAST(20, 8, 17)
            TLK_LOOP_TAIL(40, 256, 27, 25)
            TLK_OPERANDS);
    } else {
        __asm__ volatile(
            "vpbroadcastd (%[k]), %%zmm25\n\t"
            "vpbroadcastd 4(%[k]), %%zmm26\n\t"
            "vpbroadcastd 16(%[k]), %%zmm27\n\t"
            TLK_LOOP_HEAD(128)
            TLK_INDEX(18, "(%[x])", 26, 27)
            TLK_INDEX(19, "(%[x],%[tb])", 26, 27)
            TLK_INDEX(20, "(%[x],%[tb],2)", 26, 27)
            TL1K_TABLES("(%[lut])")
            TL1K_LOOK(18, 0, 9)  TL1K_LOOK(19, 3, 12) TL1K_LOOK(20, 6, 15)
            TL1K_TABLES("(%[lut],%[lb])")
            TL1K_LOOK(18, 1, 10) TL1K_LOOK(19, 4, 13) TL1K_LOOK(20, 7, 16)
            TL1K_TABLES("(%[lut],%[lb],2)")
            TL1K_LOOK(18, 2, 11) TL1K_LOOK(19, 5, 14) TL1K_LOOK(20, 8, 17)
            TLK_LOOP_TAIL(32, 128, 25, 23)
            TLK_OPERANDS);
    }
}

BITNET_INLINE void tl_tiles3x3(int tl2, int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                               size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {
    __m512i acc[9];
    tl_tiles3x3_asm(tl2, nch, x, tile_b, lut, lut_b, acc);
    const __m512 ws = _mm512_set1_ps(wscale);
    for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) {
            const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[3*r + c]), _mm512_set1_ps(d[c])), ws);
            _mm512_storeu_ps(s + c*bs + r*TL_TILE_ROWS, v);
        }
    }
}
#endif

// fixed-shape instances of tl_tiles for the plans below
#define TL_KERNEL(TYPE, TL2, R, C, PF)                                                                                     \
    static void TYPE##_tiles_##R##x##C(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut, \
                                      size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {   \
        tl_tiles(nch, x, tile_b, lut, lut_b, d, wscale, s, bs, TL2, R, C, PF);                                             \
    }
#if defined(__GNUC__)
#define TL_KERNEL_3X3(TYPE, TL2)                                                                                           \
    static void TYPE##_tiles_3x3(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut, \
                                 size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {        \
        tl_tiles3x3(TL2, nch, x, tile_b, lut, lut_b, d, wscale, s, bs);                                                    \
    }
#define TL_3X3(TYPE) TYPE##_tiles_3x3
#else
#define TL_KERNEL_3X3(TYPE, TL2)
#define TL_3X3(TYPE) NULL
#endif

// Token generation: 8 tiles share each table load. Batches: 3 tiles x 3 columns (asm) while 3
// columns are left, then 4 x 2. Both prefetch the next tiles (PF = 1): with few columns (a
// server's decode step) the weights come from DRAM as in token generation.
#define TL_PLANS(TYPE, TL2)                                                                                                \
    TL_KERNEL(TYPE, TL2, 8, 1, 1) TL_KERNEL(TYPE, TL2, 2, 1, 1)                                                            \
    TL_KERNEL(TYPE, TL2, 3, 2, 1) TL_KERNEL(TYPE, TL2, 3, 1, 1) TL_KERNEL(TYPE, TL2, 4, 2, 1)                              \
    TL_KERNEL(TYPE, TL2, 4, 1, 1) TL_KERNEL(TYPE, TL2, 1, 1, 0) TL_KERNEL_3X3(TYPE, TL2)                                   \
    static const struct bitnet_tl_rung TYPE##_gen[] = {                                                                    \
        { 8, 1, { NULL, TYPE##_tiles_8x1 } },                                                                              \
        { 2, 1, { NULL, TYPE##_tiles_2x1 } },                                                                              \
        { 1, 1, { NULL, TYPE##_tiles_1x1 } },                                                                              \
    };                                                                                                                     \
    static const struct bitnet_tl_rung TYPE##_batch[] = {                                                                  \
        { 3, 3, { NULL, TYPE##_tiles_3x1, TYPE##_tiles_3x2, TL_3X3(TYPE) } },                                              \
        { 4, 1, { NULL, TYPE##_tiles_4x1, TYPE##_tiles_4x2 } },                                                            \
        { 1, 1, { NULL, TYPE##_tiles_1x1 } },                                                                              \
    };                                                                                                                     \
    static const struct bitnet_tl_kernels TYPE##_kernels = {                                                               \
        TYPE##_build_lut512, 3, TYPE##_gen, TYPE##_batch, 3, 3,                                                            \
    };

TL_PLANS(tl1, 0)
TL_PLANS(tl2, 1)

#elif defined(__AVX2__)

// AVX2 (no byte permutes across 64 entries): a chunk's 64 lanes are transposed once into two
// vectors whose 128-bit halves each hold one group's 16 rows -- X = (group 0 | group 2),
// Y = (group 1 | group 3) -- so that pshufb's per-half 16-entry tables fit. The 32 nibble bytes
// are transposed before the nibbles are split (byte b holds rows b/4 and 8 + b/4 of the same
// group), and bit 4 is expanded straight into X/Y order; codes 0-15 and 16-31 are two lookups
// blended by bit 4. Low and high table bytes are interleaved into exact int16 values and summed
// in int16 for up to 32 chunks (|2 x 384| per chunk), then widened. Each transposed chunk serves
// C activation columns. This path keeps its own table order (per chunk, 8 vectors: X's low bytes
// for codes 0-15 and 16-31, X's high bytes, then Y's).

#define TL2_FLUSH   32  // chunks summed in int16 before widening
#define TL2_AVX2_C  4   // activation columns per pass over a tile

// one group's 32 table values as (low bytes, high bytes), each ordered codes 0-15 | codes 16-31
static inline void tl2_group_bytes(int16_t a0, int16_t a1, int16_t a2, __m256i * lo, __m256i * hi) {
    __m256i v[2];
    for (int h = 0; h < 2; ++h) {
        __m256i x = _mm256_mullo_epi16(_mm256_set1_epi16(a0), _mm256_loadu_si256((const __m256i *) (bitnet_tl2_trits[0] + 16*h)));
        x = _mm256_add_epi16(x, _mm256_mullo_epi16(_mm256_set1_epi16(a1), _mm256_loadu_si256((const __m256i *) (bitnet_tl2_trits[1] + 16*h))));
        x = _mm256_add_epi16(x, _mm256_mullo_epi16(_mm256_set1_epi16(a2), _mm256_loadu_si256((const __m256i *) (bitnet_tl2_trits[2] + 16*h))));
        v[h] = x;
    }
    const __m256i mff = _mm256_set1_epi16(0xFF);
    // packs work per 128-bit half: reorder the 64-bit pieces back to code order
    *lo = _mm256_permute4x64_epi64(_mm256_packus_epi16(_mm256_and_si256(v[0], mff), _mm256_and_si256(v[1], mff)), 0xD8);
    *hi = _mm256_permute4x64_epi64(_mm256_packs_epi16(_mm256_srai_epi16(v[0], 8), _mm256_srai_epi16(v[1], 8)), 0xD8);
}

static void tl2_build_lut_avx2(const int8_t * GGML_RESTRICT q, int n, uint8_t * GGML_RESTRICT lut) {
    const int nch = (int) ggml_tl_chunks(GGML_TYPE_TL2, n);
    for (int c = 0; c < nch; ++c) {
        __m256i lo[4], hi[4];
        for (int j = 0; j < 4; ++j) {
            const int k = 3*(4*c + j);
            tl2_group_bytes(k < n ? q[k] : 0, k + 1 < n ? q[k + 1] : 0, k + 2 < n ? q[k + 2] : 0, &lo[j], &hi[j]);
        }
        __m256i * t = (__m256i *) &((tl2_table *) lut)[c];
        for (int xy = 0; xy < 2; ++xy) {  // X: groups 0 and 2, Y: groups 1 and 3
            const int ja = xy, jb = xy + 2;
            _mm256_storeu_si256(t + 4*xy + 0, _mm256_permute2x128_si256(lo[ja], lo[jb], 0x20));
            _mm256_storeu_si256(t + 4*xy + 1, _mm256_permute2x128_si256(lo[ja], lo[jb], 0x31));
            _mm256_storeu_si256(t + 4*xy + 2, _mm256_permute2x128_si256(hi[ja], hi[jb], 0x20));
            _mm256_storeu_si256(t + 4*xy + 3, _mm256_permute2x128_si256(hi[ja], hi[jb], 0x31));
        }
    }
}

// bytes of the 64-bit mask m set to 0xFF where the lane's bit is set, lanes in X or Y order:
// X byte k is lane 4 (k % 16) + 2 (k / 16), Y byte k the lane after it
static inline __m256i tl2_bit4(__m256i m, const int y) {
    const __m256i selx = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                          0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i bitx = _mm256_setr_epi8(1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16,
                                          4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64, 4, 64);
    const __m256i bit = y ? _mm256_add_epi8(bitx, bitx) : bitx;
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(m, selx), bit), bit);
}

// a full chunk's low code bits as X and Y, and the bit-4 masks in the same order
static inline void tl2_transpose(const uint8_t * GGML_RESTRICT chunk, __m256i * X, __m256i * Y, __m256i * MX, __m256i * MY) {
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    // per 16 bytes (4 rows x 4 groups): group-major, then the 4 x 4 dwords across the halves
    const __m256i gm = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // half h: group 2h rows 0-7 (qword 0) and group 2h + 1 rows 0-7 (qword 1); rows 8-15 in the high nibbles
    const __m256i t  = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *) chunk), gm), perm);
    const __m256i lo = _mm256_and_si256(t, m0f);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), m0f);
    *X = _mm256_unpacklo_epi64(lo, hi);
    *Y = _mm256_unpackhi_epi64(lo, hi);
    int64_t bits;
    memcpy(&bits, chunk + 32, sizeof(bits));
    const __m256i m = _mm256_set1_epi64x(bits);
    *MX = tl2_bit4(m, 0);
    *MY = tl2_bit4(m, 1);
}

// low or high table bytes of 32 codes: codes 0-15 from t[0], 16-31 from t[1], chosen by bit 4
static inline __m256i tl2_lookup(const __m256i * t, __m256i i, __m256i m) {
    return _mm256_blendv_epi8(_mm256_shuffle_epi8(_mm256_loadu_si256(t), i), _mm256_shuffle_epi8(_mm256_loadu_si256(t + 1), i), m);
}

// R full tiles (tile_b apart) x C columns (LUTs lut_b apart); s points at row 0 of column 0.
// R > 1 for token generation: the second tile reads the chunk's tables from L1. With one
// column the next R tiles are prefetched.
BITNET_INLINE void tl2_tiles_avx2(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                                  size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs,
                                  const int R, const int C) {
    __m256i acc_lo[2][TL2_AVX2_C], acc_hi[2][TL2_AVX2_C];  // int32 rows 0-7, 8-15
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            acc_lo[r][c] = _mm256_setzero_si256();
            acc_hi[r][c] = _mm256_setzero_si256();
        }
    }
    for (int c0 = 0; c0 < nch; c0 += TL2_FLUSH) {
        const int c1 = c0 + TL2_FLUSH < nch ? c0 + TL2_FLUSH : nch;
        __m256i s_lo[2][TL2_AVX2_C], s_hi[2][TL2_AVX2_C];  // int16
        for (int r = 0; r < R; ++r) {
            for (int c = 0; c < C; ++c) {
                s_lo[r][c] = _mm256_setzero_si256();
                s_hi[r][c] = _mm256_setzero_si256();
            }
        }
        for (int ch = c0; ch < c1; ++ch) {
            if (C == 1) {  // the next R tiles follow these: fetch them ahead of use
                for (int o = 0; o < R*(int) sizeof(block_tl2); o += 64) {
                    _mm_prefetch((const char *) x + R*tile_b + ch*R*sizeof(block_tl2) + o, _MM_HINT_T0);
                }
            }
            __m256i X[2], Y[2], MX[2], MY[2];
            for (int r = 0; r < R; ++r) {
                tl2_transpose(x + r*tile_b + ch*sizeof(block_tl2), &X[r], &Y[r], &MX[r], &MY[r]);
            }
            for (int c = 0; c < C; ++c) {
                const __m256i * t = (const __m256i *) &((const tl2_table *) (lut + c*lut_b))[ch];
                for (int r = 0; r < R; ++r) {
                    const __m256i xl = tl2_lookup(t + 0, X[r], MX[r]), xh = tl2_lookup(t + 2, X[r], MX[r]);
                    const __m256i yl = tl2_lookup(t + 4, Y[r], MY[r]), yh = tl2_lookup(t + 6, Y[r], MY[r]);
                    // exact int16 values: rows 0-7 from the low 8 bytes of each half, rows 8-15 from the high
                    s_lo[r][c] = _mm256_add_epi16(s_lo[r][c], _mm256_add_epi16(_mm256_unpacklo_epi8(xl, xh), _mm256_unpacklo_epi8(yl, yh)));
                    s_hi[r][c] = _mm256_add_epi16(s_hi[r][c], _mm256_add_epi16(_mm256_unpackhi_epi8(xl, xh), _mm256_unpackhi_epi8(yl, yh)));
                }
            }
        }
        // the two halves hold groups (0+1) and (2+3) of the same rows
        for (int r = 0; r < R; ++r) {
            for (int c = 0; c < C; ++c) {
                acc_lo[r][c] = _mm256_add_epi32(acc_lo[r][c], _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_lo[r][c])),
                                                                               _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_lo[r][c], 1))));
                acc_hi[r][c] = _mm256_add_epi32(acc_hi[r][c], _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_hi[r][c])),
                                                                               _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_hi[r][c], 1))));
            }
        }
    }
    const __m256 ws = _mm256_set1_ps(wscale);
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            const __m256 vd = _mm256_set1_ps(d[c]);
            float * o = s + c*bs + r*TL_TILE_ROWS;
            _mm256_storeu_ps(o,     _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc_lo[r][c]), vd), ws));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc_hi[r][c]), vd), ws));
        }
    }
}

static void tl2_avx2_tiles_2x1(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut,
                               size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {
    tl2_tiles_avx2(nch, x, tile_b, lut, lut_b, d, wscale, s, bs, 2, 1);
}
#define TL2_AVX2_KERNEL(C)                                                                                                 \
    static void tl2_avx2_tiles_1x##C(int nch, const uint8_t * GGML_RESTRICT x, size_t tile_b, const uint8_t * GGML_RESTRICT lut, \
                                     size_t lut_b, const float * d, float wscale, float * GGML_RESTRICT s, size_t bs) {    \
        tl2_tiles_avx2(nch, x, tile_b, lut, lut_b, d, wscale, s, bs, 1, C);                                                \
    }
TL2_AVX2_KERNEL(1) TL2_AVX2_KERNEL(2) TL2_AVX2_KERNEL(3) TL2_AVX2_KERNEL(4)

// token generation: two tiles per step (the second reads the chunk's tables from L1), the next
// two prefetched; prompts: one tile x up to TL2_AVX2_C columns
static const struct bitnet_tl_rung tl2_avx2_gen[] = {
    { 2, 1, { NULL, tl2_avx2_tiles_2x1 } },
    { 1, 1, { NULL, tl2_avx2_tiles_1x1 } },
};
static const struct bitnet_tl_rung tl2_avx2_batch[] = {
    { 1, 1, { NULL, tl2_avx2_tiles_1x1, tl2_avx2_tiles_1x2, tl2_avx2_tiles_1x3, tl2_avx2_tiles_1x4 } },
};
static const struct bitnet_tl_kernels tl2_kernels = { tl2_build_lut_avx2, 1, tl2_avx2_gen, tl2_avx2_batch, 2, 1 };

#endif

void ggml_gemm_tl_i8_s(enum ggml_type type, int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, int nr,
                       const void * GGML_RESTRICT vy, size_t by, int nc, float wscale, void * GGML_RESTRICT scratch) {
    const struct bitnet_tl_kernels * k = NULL;
#if defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
    k = type == GGML_TYPE_TL2 ? &tl2_kernels : &tl1_kernels;
#elif defined(__AVX2__)
    k = type == GGML_TYPE_TL2 ? &tl2_kernels : NULL;
#endif
    if (k != NULL) {
        bitnet_tl_gemm(k, type, n, s, bs, (const uint8_t *) vx, nr, (const int8_t *) vy, by, nc, wscale, (uint8_t *) scratch);
    } else {
        ggml_gemm_tl_i8_s_generic(type, n, s, bs, vx, nr, vy, by, nc, wscale, scratch);
    }
}
