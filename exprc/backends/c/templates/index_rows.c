/* exprc index helpers: gather and scatter of whole rows, the loops behind x[idx] and
 * inc_subtensor(x[idx], v) on the C backend (exprc/backends/c/indexlib.py).  Built once per
 * compiler into the cache, like a kernel.  Every index is checked against the row count before
 * any row is touched: a bad index returns its position (>= 0) and nothing is written; -1: done.
 * Scatters run in index order, so repeated rows accumulate exactly as np.add.at does (the same
 * additions in the same order: bit-identical, and the same on every run). */
#include <stdint.h>
#include <string.h>

static int64_t check(const int64_t *idx, int64_t n, int64_t rows)
{
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < -rows || idx[i] >= rows)
            return i;
    return -1;
}

/* out row i (contiguous, row_bytes) = x row idx[i] (rows sx bytes apart, each contiguous).  Rows
 * of a big table are apart in memory: each copy waits on memory, so the rows a few steps ahead
 * are prefetched, and a gather of 256 KiB or more is split between nthreads threads. */
int64_t exprc_gather_rows(char *out, const char *x, int64_t rows, int64_t sx, const int64_t *idx, int64_t n,
                          int64_t row_bytes, int nthreads)
{
    int64_t bad = check(idx, n, rows);
    if (bad >= 0)
        return bad;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n * row_bytes >= (256 << 10))
    for (int64_t i = 0; i < n; i++) {
        if (i + 8 < n) {
            int64_t q = idx[i + 8] < 0 ? idx[i + 8] + rows : idx[i + 8];
            for (int64_t b = 0; b < row_bytes; b += 64)
                __builtin_prefetch(x + q * sx + b);
        }
        int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];
        memcpy(out + i * row_bytes, x + r * sx, (size_t)row_bytes);
    }
    return -1;
}

#define SCATTER_ADD(NAME, T)                                                                                    \
    int64_t NAME(char *out, int64_t rows, int64_t so, const char *v, int64_t sv, const int64_t *idx, int64_t n, \
                 int64_t len)                                                                                   \
    {                                                                                                           \
        int64_t bad = check(idx, n, rows);                                                                      \
        if (bad >= 0)                                                                                           \
            return bad;                                                                                         \
        for (int64_t i = 0; i < n; i++) {                                                                       \
            int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];                                                    \
            T *o = (T *)(out + r * so);                                                                         \
            const T *a = (const T *)(v + i * sv);                                                               \
            for (int64_t j = 0; j < len; j++)                                                                   \
                o[j] += a[j];                                                                                   \
        }                                                                                                       \
        return -1;                                                                                              \
    }

SCATTER_ADD(exprc_scatter_add_rows_f64, double)
SCATTER_ADD(exprc_scatter_add_rows_f32, float)
SCATTER_ADD(exprc_scatter_add_rows_i64, int64_t)
SCATTER_ADD(exprc_scatter_add_rows_i32, int32_t)
