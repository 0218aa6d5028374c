/* exprc C prelude: vector-math declarations and NumPy-compatible helpers.
 * Every helper is static inline so the loops that use them still vectorize. */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

#ifndef EXPRC_PRECISE_MATH
/* Tell gcc that glibc's libmvec has SIMD variants of these functions, so loops
 * call _ZGVdN4v_exp & co. without -ffast-math (accuracy within 4 ulp). */
#define EXPRC_DECL(ret, name, args) extern ret name args __attribute__((__simd__("notinbranch")));
#define EXPRC_D1(fn) EXPRC_DECL(double, fn, (double)) EXPRC_DECL(float, fn##f, (float))
#define EXPRC_D2(fn) EXPRC_DECL(double, fn, (double, double)) EXPRC_DECL(float, fn##f, (float, float))
EXPRC_D1(exp) EXPRC_D1(log) EXPRC_D1(sin) EXPRC_D1(cos) EXPRC_D1(tan)
EXPRC_D1(log1p) EXPRC_D1(expm1) EXPRC_D1(tanh) EXPRC_D1(sinh) EXPRC_D1(cosh)
EXPRC_D1(asin) EXPRC_D1(acos) EXPRC_D1(atan) EXPRC_D1(asinh) EXPRC_D1(acosh) EXPRC_D1(atanh)
EXPRC_D1(exp2) EXPRC_D1(log2) EXPRC_D1(log10) EXPRC_D1(cbrt) EXPRC_D1(erf) EXPRC_D1(erfc)
EXPRC_D2(pow) EXPRC_D2(atan2) EXPRC_D2(hypot)
#endif

/* A loop with vector math runs only on counts that are multiples of EXPRC_VBLOCK, the rest on a padded
 * block: every element gets the bits of the main vector loop wherever it lies (render.py,
 * _uniform_span).  gcc's widest choice is 8 doubles or 16 floats per iteration (AVX-512, with an
 * AVX2 epilogue of half that, whose libmvec variant is another one): 32 is a multiple of both with
 * room to spare, and small enough that a short call pays little for the padding. */
#define EXPRC_VBLOCK 32
/* The same for a loop over a 1-byte array (a bool mask): gcc then runs 64 lanes at a time (AVX-512). */
#define EXPRC_VBLOCK_BYTE 64
/* A loop with rare guards (render.py, _guarded_flat) scans its conditions and picks the fast or the
 * full loop per block of this many elements (a multiple of EXPRC_VBLOCK): GELU's sigmoid guard holds
 * for 3 in 10000 N(0, 1) inputs, in nearly every 14000-element chunk but in 8% of 256-element blocks;
 * and the fast loop reads the block from L1, where the scan left it. */
#define EXPRC_GBLOCK 256
/* The values of a row reduction computed by one SIMD loop before they are added in order (render.py,
 * _buffered_row): 2 KB of doubles on the stack. */
#define EXPRC_RCHUNK 256
/* A row kernel with row-wise guards (render.py, render_rows) runs this many rows through its fast
 * branches, one flag byte each on the stack, before it runs the flagged ones through the slow. */
#define EXPRC_GUARD_ROWS 1024

#define EXPRC_INLINE static inline __attribute__((always_inline))
#define EXPRC_HIDDEN __attribute__((visibility("hidden")))

/* exprc: numpy_semantics.h is spliced in here by the renderer */

/* Contiguous loops run over fixed chunks: the partition of [0, total) depends on total alone, never
 * on the thread count.  Chunks are EXPRC_CHUNK_MIN elements (one chunk up to that), grown in steps
 * of 64 elements so there are at most EXPRC_MAX_CHUNKS; every chunk starts on a multiple of 64
 * elements.  Threads take whole chunks (EXPRC_THREAD_RANGE over chunk indices, static), each chunk
 * runs one SIMD loop, and a reduction combines its per-chunk partials in chunk order after the
 * parallel region: so every element goes through the same code (vector body or scalar tail: libmvec
 * and the scalar libm differ by ulps) and every sum is added in the same order with 1 or 16 threads. */
#define EXPRC_CHUNK_MIN 8192
#define EXPRC_MAX_CHUNKS 256
EXPRC_INLINE int64_t exprc_chunk_size(int64_t total)
{
    const int64_t even = (total + EXPRC_MAX_CHUNKS - 1) / EXPRC_MAX_CHUNKS;
    return even <= EXPRC_CHUNK_MIN ? EXPRC_CHUNK_MIN : (even + 63) / 64 * 64;
}
EXPRC_INLINE int64_t exprc_chunk_count(int64_t total, int64_t size)
{
    return total <= 0 ? 1 : (total + size - 1) / size;
}

/* Split [0, total) evenly between the threads of a parallel region (static, so the split does not
 * depend on timing; contiguous loops split chunk indices, see above). */
#ifdef _OPENMP
#include <omp.h>
#define EXPRC_THREAD_RANGE(total, lo, hi, id)                                         \
    const int64_t id = omp_get_thread_num(), nt_ = omp_get_num_threads();            \
    const int64_t lo = (int64_t)((__int128)(total) * id / nt_);                        \
    const int64_t hi = (int64_t)((__int128)(total) * (id + 1) / nt_);
#else
#define EXPRC_THREAD_RANGE(total, lo, hi, id) const int64_t id = 0, lo = 0, hi = (total);
#endif
#define EXPRC_MAX_THREADS 256
/* Elements of the kept last axis a column reduction (sum(x, axis=0)) accumulates at once. */
#define EXPRC_CBLOCK 256

/* The parallel regions of a module.  A kernel's contiguous path is a chunk function (chunk c is
 * [lo, hi); a reduction stores its partial in part[c] and its NaN flag in pnan[c]) and its strided
 * path a range function (outer-loop indices [lo, hi)); these two runners split them between threads.
 * Kernels hold no OpenMP region of their own: gcc outlines and compiles each region it meets (half
 * the compile time of a module of small kernels was that), and a serial call goes straight to the
 * function instead of through the OpenMP runtime. */
typedef void (*exprc_chunk_fn)(char **restrict ptrs, const int64_t *restrict P, int64_t c, int64_t lo,
                               int64_t hi, void *part, int *pnan);
typedef void (*exprc_range_fn)(char **restrict ptrs, const int64_t *restrict P, int64_t lo, int64_t hi);
#define EXPRC_CHUNK(name)                                                                                 \
    static void name(char **restrict ptrs, const int64_t *restrict P, int64_t c, int64_t lo, int64_t hi, \
                     void *part, int *pnan)
#define EXPRC_RANGE(name) static void name(char **restrict ptrs, const int64_t *restrict P, int64_t lo, int64_t hi)

/* Run fn on every fixed chunk of [0, total), on nthreads threads when total > threshold. */
__attribute__((unused)) static void exprc_chunks(exprc_chunk_fn fn, char **restrict ptrs, const int64_t *restrict P,
                                                 int64_t total, int64_t threshold, int nthreads, void *part, int *pnan)
{
    const int64_t size = exprc_chunk_size(total), nchunks = exprc_chunk_count(total, size);
#ifdef _OPENMP
    if (nthreads > 1 && total > threshold) {
        #pragma omp parallel num_threads(nthreads < EXPRC_MAX_THREADS ? nthreads : EXPRC_MAX_THREADS)
        {
            EXPRC_THREAD_RANGE(nchunks, clo, chi, id)
            (void)id;
            for (int64_t c = clo; c < chi; c++) {
                const int64_t lo = c * size, hi = lo + size < total ? lo + size : total;
                fn(ptrs, P, c, lo, hi, part, pnan);
            }
        }
        return;
    }
#else
    (void)threshold; (void)nthreads;
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * size, hi = lo + size < total ? lo + size : total;
        fn(ptrs, P, c, lo, hi, part, pnan);
    }
}

/* Rows [lo, hi) of a 2-d elementwise loop through its contiguous chunk function fn: row i of access
 * k starts at ptrs[k] + i * P[3 + 2 * k] (its outer stride; the planner chose this path because every
 * access is contiguous along the inner dimension, or 0-d). */
static void exprc_rowflat_range(exprc_chunk_fn fn, char **restrict ptrs, const int64_t *restrict P, int nacc,
                                int64_t lo, int64_t hi, int64_t n1)
{
    char *rows[nacc];
    for (int64_t i = lo; i < hi; i++) {
        for (int k = 0; k < nacc; k++)
            rows[k] = ptrs[k] + i * P[3 + 2 * k];
        fn(rows, P, 0, 0, n1, 0, 0);
    }
}

/* A 2-d elementwise loop whose accesses are rows of wider arrays (gate slices, column slices): the
 * vectorized flat loop once per row instead of the scalar strided
 * nest, rows split between nthreads threads when parallel (elementwise: the same values). */
__attribute__((unused)) static void exprc_rowflat(exprc_chunk_fn fn, char **restrict ptrs,
                                                  const int64_t *restrict P, int nacc, int64_t n0, int64_t n1,
                                                  int parallel, int nthreads)
{
#ifdef _OPENMP
    if (parallel && nthreads > 1 && n0 > 1) {
        #pragma omp parallel num_threads(nthreads < EXPRC_MAX_THREADS ? nthreads : EXPRC_MAX_THREADS)
        {
            EXPRC_THREAD_RANGE(n0, lo, hi, id)
            (void)id;
            exprc_rowflat_range(fn, ptrs, P, nacc, lo, hi, n1);
        }
        return;
    }
#else
    (void)parallel; (void)nthreads;
#endif
    exprc_rowflat_range(fn, ptrs, P, nacc, 0, n0, n1);
}

/* Run fn on [0, n) of a loop nest's outer index, split evenly between nthreads threads when parallel
 * (each index is one thread's whole work, so the split does not change results). */
__attribute__((unused)) static void exprc_range(exprc_range_fn fn, char **restrict ptrs, const int64_t *restrict P,
                                                int64_t n, int parallel, int nthreads)
{
#ifdef _OPENMP
    if (parallel && nthreads > 1 && n > 1) {
        #pragma omp parallel num_threads(nthreads < EXPRC_MAX_THREADS ? nthreads : EXPRC_MAX_THREADS)
        {
            EXPRC_THREAD_RANGE(n, lo, hi, id)
            (void)id;
            if (lo < hi)
                fn(ptrs, P, lo, hi);
        }
        return;
    }
#else
    (void)parallel; (void)nthreads;
#endif
    fn(ptrs, P, 0, n);
}
