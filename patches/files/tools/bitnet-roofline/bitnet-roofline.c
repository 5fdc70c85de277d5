// bitnet-tools: bitnet-roofline, this machine's two ceilings for `bitnet bench`:
//
//   read bandwidth  every thread streams through its own buffer (256 MiB in all by default,
//                   far larger than an L3; huge pages where the kernel gives them), summing
//                   it; GB/s = 1e9 bytes per second, best of a few repeats of several passes
//   int8 peak       every thread runs independent accumulators of the best int8 dot product
//                   instruction this build has, on data in L1; GMAC/s = 1e9 u8/s8 multiply-
//                   accumulates per second, best of a few repeats
//
// Built with the ISA flags of ggml's CPU backend (see CMakeLists.txt), so it measures the
// instructions the engine's kernels can use. Both loops check their results against plain
// scalar sums of the same data, so that no compiler can drop the work and a wrong SIMD path
// is caught: a mismatch prints the two values and exits with status 3.
//
// The dot data: a[i] = (37 i + 11) mod 3 (u8: the codes of ternary weights, as the kernels
// multiply them), b[i] = (91 i + 5) mod 256 as s8, i < 4096.
// They are read in chunks of 4 vectors of V bytes (V = vec_bytes in the output): chunk j
// multiplies a-vector 4j+q with b-vector 4j+p for every p, q < 4, so one pass over the block
// adds sum_j sum_p sum_q dot(a[4j+q], b[4j+p]); dot_sum is that times dot_reps, mod 2^32.
// Codes <= 2 let AVX2 sum four maddubs results in int16 before widening them (|sum| <= 4 * 2 *
// 2 * 128), as its ternary kernels do: the probe's peak is what those kernels could reach.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ISA "avx512-vnni"
#define VEC 64
#elif defined(__AVXVNNI__) && defined(__AVX2__)
#include <immintrin.h>
#define ISA "avx-vnni"
#define VEC 32
#elif defined(__AVX2__)
#include <immintrin.h>
#define ISA "avx2"
#define VEC 32
#elif defined(__ARM_NEON) && defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define ISA "neon-dotprod"
#define VEC 16
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define ISA "neon"
#define VEC 16
#else
#define ISA "scalar"
#define VEC 16
#endif

#define BLOCK 4096                       // bytes of a and of b (both stay in L1)
#define NCHUNK (BLOCK / (4 * VEC))
#define MACS_PER_PASS ((double)NCHUNK * 16 * VEC)

// hide a pointer's value from the optimizer: every repetition must really load and compute
#define LAUNDER(p) __asm__ volatile("" : "+r"(p) : : "memory")

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---------------------------------------------------------------- int8 dot kernels

static uint32_t dot_kernel(const uint8_t *a, const int8_t *b, long reps) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    // one chunk in one asm statement: GCC shuffles intrinsic accumulators through extra
    // registers (up to two moves per vpdpbusd), which halves the rate it reaches
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    __m512i c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
    for (long r = 0; r < reps; r++) {
        LAUNDER(a); LAUNDER(b);
        for (int j = 0; j < NCHUNK; j++) {
            const __m512i a0 = _mm512_load_si512(a + (4 * j + 0) * VEC), a1 = _mm512_load_si512(a + (4 * j + 1) * VEC);
            const __m512i a2 = _mm512_load_si512(a + (4 * j + 2) * VEC), a3 = _mm512_load_si512(a + (4 * j + 3) * VEC);
            const __m512i b0 = _mm512_load_si512(b + (4 * j + 0) * VEC), b1 = _mm512_load_si512(b + (4 * j + 1) * VEC);
            const __m512i b2 = _mm512_load_si512(b + (4 * j + 2) * VEC), b3 = _mm512_load_si512(b + (4 * j + 3) * VEC);
            // vpdpbusd: 64 u8 x s8 products, summed by fours into 16 int32 lanes; a-vector q
            // times b-vector p into accumulator 4p + q
            __asm__("vpdpbusd %[b0], %[a0], %[c0]\n\tvpdpbusd %[b0], %[a1], %[c1]\n\t"
                    "vpdpbusd %[b0], %[a2], %[c2]\n\tvpdpbusd %[b0], %[a3], %[c3]\n\t"
                    "vpdpbusd %[b1], %[a0], %[c4]\n\tvpdpbusd %[b1], %[a1], %[c5]\n\t"
                    "vpdpbusd %[b1], %[a2], %[c6]\n\tvpdpbusd %[b1], %[a3], %[c7]"
                    : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5),
                      [c6] "+v"(c6), [c7] "+v"(c7)
                    : [a0] "v"(a0), [a1] "v"(a1), [a2] "v"(a2), [a3] "v"(a3), [b0] "v"(b0), [b1] "v"(b1));
            __asm__("vpdpbusd %[b2], %[a0], %[c8]\n\tvpdpbusd %[b2], %[a1], %[c9]\n\t"
                    "vpdpbusd %[b2], %[a2], %[c10]\n\tvpdpbusd %[b2], %[a3], %[c11]\n\t"
                    "vpdpbusd %[b3], %[a0], %[c12]\n\tvpdpbusd %[b3], %[a1], %[c13]\n\t"
                    "vpdpbusd %[b3], %[a2], %[c14]\n\tvpdpbusd %[b3], %[a3], %[c15]"
                    : [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11), [c12] "+v"(c12),
                      [c13] "+v"(c13), [c14] "+v"(c14), [c15] "+v"(c15)
                    : [a0] "v"(a0), [a1] "v"(a1), [a2] "v"(a2), [a3] "v"(a3), [b2] "v"(b2), [b3] "v"(b3));
        }
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)),
                                             _mm512_add_epi32(_mm512_add_epi32(c12, c13), _mm512_add_epi32(c14, c15))));
    return (uint32_t)_mm512_reduce_add_epi32(s);
#elif defined(__AVX2__)
#if defined(__AVXVNNI__)
#define NACC 8
#define DOT(acc, x, y) acc = _mm256_dpbusd_avx_epi32(acc, x, y)   // 32 u8 x s8 products into 8 int32 lanes
#else
#define NACC 4
    const __m256i ones = _mm256_set1_epi16(1);
    // maddubs: 32 u8 x s8 products summed in pairs (int16); the four of one b-vector are summed
    // in int16, then madd with ones widens them by fours (int32): 5 multiplies per 128 MACs
#define DOT4(acc, a0, a1, a2, a3, y)                                                                     \
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(                                                  \
        _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a0, y), _mm256_maddubs_epi16(a1, y)),   \
                         _mm256_add_epi16(_mm256_maddubs_epi16(a2, y), _mm256_maddubs_epi16(a3, y))), ones))
#endif
    __m256i acc[NACC];
    for (int k = 0; k < NACC; k++) acc[k] = _mm256_setzero_si256();
    for (long r = 0; r < reps; r++) {
        LAUNDER(a); LAUNDER(b);
        for (int j = 0; j < NCHUNK; j++) {
            __m256i av[4], bv[4];
            for (int k = 0; k < 4; k++) {
                av[k] = _mm256_load_si256((const __m256i *)(a + (4 * j + k) * VEC));
                bv[k] = _mm256_load_si256((const __m256i *)(b + (4 * j + k) * VEC));
            }
#if defined(DOT4)
            for (int p = 0; p < 4; p++) DOT4(acc[p], av[0], av[1], av[2], av[3], bv[p]);
#else
            for (int p = 0; p < 4; p++)
                for (int q = 0; q < 4; q++) DOT(acc[(4 * p + q) % NACC], av[q], bv[p]);
#endif
        }
    }
    __m256i s = acc[0];
    for (int k = 1; k < NACC; k++) s = _mm256_add_epi32(s, acc[k]);
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, s);
    uint32_t t = 0;
    for (int k = 0; k < 8; k++) t += lanes[k];
    return t;
#elif defined(__ARM_NEON) && defined(__aarch64__)
    int32x4_t acc[16];
    for (int k = 0; k < 16; k++) acc[k] = vdupq_n_s32(0);
    for (long r = 0; r < reps; r++) {
        LAUNDER(a); LAUNDER(b);
        for (int j = 0; j < NCHUNK; j++) {
            int8x16_t av[4], bv[4];
            for (int k = 0; k < 4; k++) {
                av[k] = vreinterpretq_s8_u8(vld1q_u8(a + (4 * j + k) * VEC));   // a <= 2: same value as s8
                bv[k] = vld1q_s8(b + (4 * j + k) * VEC);
            }
            for (int p = 0; p < 4; p++)
                for (int q = 0; q < 4; q++) {
#if defined(__ARM_FEATURE_DOTPROD)
                    // sdot: 16 s8 x s8 products, summed by fours into 4 int32 lanes
                    acc[4 * p + q] = vdotq_s32(acc[4 * p + q], av[q], bv[p]);
#else
                    // smull/smull2: 16 s8 x s8 products (int16), sadalp: pairwise into int32
                    acc[4 * p + q] = vpadalq_s16(acc[4 * p + q], vmull_s8(vget_low_s8(av[q]), vget_low_s8(bv[p])));
                    acc[4 * p + q] = vpadalq_s16(acc[4 * p + q], vmull_high_s8(av[q], bv[p]));
#endif
                }
        }
    }
    int32x4_t s = acc[0];
    for (int k = 1; k < 16; k++) s = vaddq_s32(s, acc[k]);
    return (uint32_t)vaddvq_s32(s);
#else
    uint32_t acc[16] = {0};
    for (long r = 0; r < reps; r++) {
        LAUNDER(a); LAUNDER(b);
        for (int j = 0; j < NCHUNK; j++)
            for (int p = 0; p < 4; p++)
                for (int q = 0; q < 4; q++)
                    for (int i = 0; i < VEC; i++)
                        acc[4 * p + q] += (uint32_t)((int32_t)a[(4 * j + q) * VEC + i] * b[(4 * j + p) * VEC + i]);
    }
    uint32_t t = 0;
    for (int k = 0; k < 16; k++) t += acc[k];
    return t;
#endif
}

// the same sum, plainly: one pass over the block, times reps (mod 2^32)
static uint32_t dot_scalar(const uint8_t *a, const int8_t *b, long reps) {
    uint32_t pass = 0;
    for (int j = 0; j < NCHUNK; j++)
        for (int p = 0; p < 4; p++)
            for (int q = 0; q < 4; q++)
                for (int i = 0; i < VEC; i++)
                    pass += (uint32_t)((int32_t)a[(4 * j + q) * VEC + i] * (int32_t)b[(4 * j + p) * VEC + i]);
    return pass * (uint32_t)reps;
}

// ---------------------------------------------------------------- read kernel

// sum of the buffer's 64-bit words (mod 2^64), read with the widest loads the build has
static uint64_t read_kernel(const uint64_t *p, size_t nwords) {
    LAUNDER(p);
#if defined(__AVX512F__)
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < nwords; i += 32) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512(p + i));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512(p + i + 8));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512(p + i + 16));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512(p + i + 24));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
#elif defined(__AVX2__)
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < nwords; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(p + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(p + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    uint64_t w[4];
    _mm256_storeu_si256((__m256i *)w, _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
    return w[0] + w[1] + w[2] + w[3];
#elif defined(__ARM_NEON) && defined(__aarch64__)
    uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < nwords; i += 8) {
        s0 = vaddq_u64(s0, vld1q_u64(p + i));
        s1 = vaddq_u64(s1, vld1q_u64(p + i + 2));
        s2 = vaddq_u64(s2, vld1q_u64(p + i + 4));
        s3 = vaddq_u64(s3, vld1q_u64(p + i + 6));
    }
    return vaddvq_u64(vaddq_u64(vaddq_u64(s0, s1), vaddq_u64(s2, s3)));
#else
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < nwords; i += 4) {
        s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
#endif
}

#define WORD_MUL 0x9E3779B97F4A7C15ull   // word i of every buffer holds i * WORD_MUL

// sum over i < n of i * WORD_MUL, mod 2^64
static uint64_t read_expected(uint64_t n) {
    uint64_t tri = (n % 2 == 0) ? (n / 2) * (n - 1) : n * ((n - 1) / 2);
    return tri * WORD_MUL;
}

// ---------------------------------------------------------------- threads

typedef struct {
    int id;
    size_t nwords;          // this thread's buffer
    int passes, repeats;
    long dot_reps;
    int corrupt;            // test hook: change the dot data after the scalar reference
    pthread_barrier_t *bar;
    double *t_read, *t_dot; // per repeat (written by thread 0)
    uint64_t read_sum;      // of the last pass
    uint32_t dot_sum, dot_ref;
    int ok;
} job_t;

static void *worker(void *arg) {
    job_t *j = arg;
    // 2 MiB-aligned and huge pages where the kernel gives them (madvise mode of transparent
    // huge pages): the figure is the memory's, not the TLB's (4 KiB pages cost a third here)
    const size_t huge = 2u << 20, size = (j->nwords * sizeof(uint64_t) + huge - 1) / huge * huge;
    uint64_t *buf = aligned_alloc(huge, size);
#ifdef MADV_HUGEPAGE
    if (buf) madvise(buf, size, MADV_HUGEPAGE);
#endif
    uint8_t *a = aligned_alloc(64, BLOCK);
    int8_t *b = aligned_alloc(64, BLOCK);
    if (!buf || !a || !b) {
        fprintf(stderr, "bitnet-roofline: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < j->nwords; i++) buf[i] = (uint64_t)i * WORD_MUL;  // first touch: pages of this thread
    for (int i = 0; i < BLOCK; i++) {
        a[i] = (uint8_t)((37 * i + 11) % 3);
        b[i] = (int8_t)(uint8_t)((91 * i + 5) % 256);
    }
    j->dot_ref = dot_scalar(a, b, j->dot_reps);
    if (j->corrupt) b[0] = (int8_t)(b[0] ^ 0x5a);

    j->ok = 1;
    const uint64_t want = read_expected(j->nwords);
    for (int r = 0; r < j->repeats; r++) {
        pthread_barrier_wait(j->bar);
        double t0 = now();
        for (int p = 0; p < j->passes; p++) {
            uint64_t s = read_kernel(buf, j->nwords);
            if (s != want) j->ok = 0;
            j->read_sum = s;
        }
        pthread_barrier_wait(j->bar);
        if (j->id == 0) j->t_read[r] = now() - t0;
    }
    for (int r = 0; r < j->repeats; r++) {
        pthread_barrier_wait(j->bar);
        double t0 = now();
        uint32_t s = dot_kernel(a, b, j->dot_reps);
        pthread_barrier_wait(j->bar);
        if (j->id == 0) j->t_dot[r] = now() - t0;
        j->dot_sum = s;
    }
    free(buf); free(a); free(b);
    return NULL;
}

static double best(const double *t, int n) {
    double m = t[0];
    for (int i = 1; i < n; i++) if (t[i] < m) m = t[i];
    return m;
}

static void usage(void) {
    fprintf(stderr,
            "usage: bitnet-roofline [-t THREADS] [--json] [--quick] [--mib MIB] [--passes N] [--repeats N]\n"
            "  read bandwidth (GB/s) and int8 dot peak (GMAC/s) of this machine with THREADS threads\n"
            "  --mib     total read buffer over all threads (default 256: far larger than an L3)\n"
            "  --passes  over the buffer per timed run (default 8); --repeats: timed runs, the best counts (10)\n"
            "  --quick   8 MiB, 1 pass, 1 repeat, a short dot loop: checks the paths, measures nothing\n");
}

int main(int argc, char **argv) {
    int threads = 1, json = 0, quick = 0, corrupt = 0, passes = 8, repeats = 10;
    double mib = 256, dot_seconds = 0.1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if ((!strcmp(s, "-t") || !strcmp(s, "--threads")) && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(s, "--json")) json = 1;
        else if (!strcmp(s, "--quick")) quick = 1;
        else if (!strcmp(s, "--mib") && i + 1 < argc) mib = atof(argv[++i]);
        else if (!strcmp(s, "--passes") && i + 1 < argc) passes = atoi(argv[++i]);
        else if (!strcmp(s, "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(s, "--corrupt-dot-data")) corrupt = 1;   // test hook: the self-check must fail
        else if (!strcmp(s, "-h") || !strcmp(s, "--help")) { usage(); return 0; }
        else { fprintf(stderr, "bitnet-roofline: unknown argument %s\n", s); usage(); return 1; }
    }
    if (quick) { mib = 8; passes = 1; repeats = 1; dot_seconds = 0; }
    if (threads < 1 || threads > 1024 || mib <= 0 || passes < 1 || repeats < 1) { usage(); return 1; }

    // words per thread: a whole number of 64-byte lines, at least one line
    size_t nwords = (size_t)(mib * 1048576.0 / threads / 8) / 64 * 64;
    if (nwords < 64) nwords = 64;

    // dot repetitions: about dot_seconds per timed run (calibrated on one thread)
    long dot_reps = 64;
    if (dot_seconds > 0) {
        uint8_t *a = aligned_alloc(64, BLOCK);
        int8_t *b = aligned_alloc(64, BLOCK);
        memset(a, 1, BLOCK); memset(b, 1, BLOCK);
        long n = 256;
        double t;
        for (;;) {
            double t0 = now();
            volatile uint32_t sink = dot_kernel(a, b, n);
            (void)sink;
            t = now() - t0;
            if (t > 0.02 || n > (1L << 40)) break;
            n *= 4;
        }
        dot_reps = (long)(n * dot_seconds / t) + 1;
        free(a); free(b);
    }

    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    double *t_read = calloc(repeats, sizeof(double)), *t_dot = calloc(repeats, sizeof(double));
    job_t *jobs = calloc(threads, sizeof(job_t));
    pthread_t *tid = calloc(threads, sizeof(pthread_t));
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job_t){.id = i, .nwords = nwords, .passes = passes, .repeats = repeats, .dot_reps = dot_reps,
                          .corrupt = corrupt, .bar = &bar, .t_read = t_read, .t_dot = t_dot};
        if (pthread_create(&tid[i], NULL, worker, &jobs[i]) != 0) {
            fprintf(stderr, "bitnet-roofline: cannot start thread %d\n", i);
            return 2;
        }
    }
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);

    int bad = 0;
    for (int i = 0; i < threads; i++) {
        if (!jobs[i].ok) {
            fprintf(stderr, "bitnet-roofline: read check failed on thread %d: sum %llu, expected %llu\n", i,
                    (unsigned long long)jobs[i].read_sum, (unsigned long long)read_expected(nwords));
            bad = 1;
        }
        if (jobs[i].dot_sum != jobs[i].dot_ref) {
            fprintf(stderr, "bitnet-roofline: int8 dot check failed on thread %d (%s): %u, scalar %u\n", i, ISA,
                    jobs[i].dot_sum, jobs[i].dot_ref);
            bad = 1;
        }
    }
    if (bad) return 3;

    const double bytes = (double)nwords * 8 * threads * passes;
    const double macs = MACS_PER_PASS * dot_reps * threads;
    const double read_gbs = bytes / best(t_read, repeats) / 1e9, gmacs = macs / best(t_dot, repeats) / 1e9;
    if (json) {
        printf("{\"threads\": %d, \"isa\": \"%s\", \"vec_bytes\": %d, \"read_gb_s\": %.3f, \"int8_gmac_s\": %.3f,\n"
               " \"read_bytes_per_thread\": %zu, \"read_passes\": %d, \"repeats\": %d, \"read_sum\": %llu,\n"
               " \"dot_block_bytes\": %d, \"dot_reps\": %ld, \"dot_macs_per_thread\": %.0f, \"dot_sum\": %u,"
               " \"dot_scalar\": %u, \"check\": \"ok\"}\n",
               threads, ISA, VEC, read_gbs, gmacs, nwords * 8, passes, repeats,
               (unsigned long long)jobs[0].read_sum, BLOCK, dot_reps, MACS_PER_PASS * dot_reps, jobs[0].dot_sum,
               jobs[0].dot_ref);
    } else {
        printf("threads %d, %s\n", threads, ISA);
        printf("read bandwidth  %8.2f GB/s   (%zu MiB per thread, %d passes, best of %d)\n", read_gbs,
               nwords * 8 >> 20, passes, repeats);
        printf("int8 dot peak   %8.2f GMAC/s (checked against the scalar sum)\n", gmacs);
    }
    return 0;
}
