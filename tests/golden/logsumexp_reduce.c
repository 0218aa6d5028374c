/* k0_max: max(x) */
static inline double k0_max_flat(char **restrict ptrs, int64_t lo, int64_t hi, int *nan_out)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double acc = -INFINITY;
    int nanf = 0;
    #pragma omp simd reduction(max:acc) reduction(|:nanf)
    for (int64_t i = lo; i < hi; i++) {
        const double a0 = p0[i];
        const double v = a0;
        acc = v > acc ? v : acc; nanf |= (v != v);
    }
    *nan_out |= nanf;
    return acc;
}
EXPRC_CHUNK(k0_max_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    pnan[c] = 0; ((double *)part)[c] = k0_max_flat(ptrs, lo, hi, &pnan[c]);
}
EXPRC_HIDDEN void k0_max(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    (void)kept_total;
    if (P[0]) {
        double part[EXPRC_MAX_CHUNKS]; int pnan[EXPRC_MAX_CHUNKS];
        const int64_t nchunks = exprc_chunk_count(red_total, exprc_chunk_size(red_total));
        exprc_chunks(k0_max_chunk, ptrs, P, red_total, 209715, nthreads, part, pnan);
        double acc = -INFINITY; int nanf = 0;
        for (int64_t c = 0; c < nchunks; c++) {
            const double v = part[c];
            acc = v > acc ? v : acc; nanf |= (v != v);
            nanf |= pnan[c];
        }
        (void)nanf;
        *(double *)(ptrs[1]) = (double)((nanf ? NAN : acc));
        return;
    }
    double acc = -INFINITY; int nanf = 0; (void)nanf;
    for (int64_t i0 = 0; i0 < n0; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[2];
        const double a0 = *(const double *)(q0_0);
        const double v = a0;
        acc = v > acc ? v : acc; nanf |= (v != v);
    }
    *(double *)(ptrs[1]) = (double)((nanf ? NAN : acc));
}

/* exprc: unit */
/* k1_sub_exp_sum: sum(exp(x - max(x))) */
static inline double k1_sub_exp_sum_flat(char **restrict ptrs, int64_t lo, int64_t hi, int *nan_out)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double *restrict p2 = (double *)ptrs[2];
    const double a1 = *(const double *)(ptrs[1]);
    double acc = 0;
    int nanf = 0;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = lo; i < hi; i++) {
        const double a0 = p0[i];
        const double t2 = (a0 - a1);
        const double t3 = exp(t2);
        const double v = t3;
        acc += v;
    }
    *nan_out |= nanf;
    return acc;
}
EXPRC_CHUNK(k1_sub_exp_sum_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    pnan[c] = 0; ((double *)part)[c] = k1_sub_exp_sum_flat(ptrs, lo, hi, &pnan[c]);
}
EXPRC_HIDDEN void k1_sub_exp_sum(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    (void)kept_total;
    if (P[0]) {
        double part[EXPRC_MAX_CHUNKS]; int pnan[EXPRC_MAX_CHUNKS];
        const int64_t nchunks = exprc_chunk_count(red_total, exprc_chunk_size(red_total));
        exprc_chunks(k1_sub_exp_sum_chunk, ptrs, P, red_total, 37449, nthreads, part, pnan);
        double acc = 0; int nanf = 0;
        for (int64_t c = 0; c < nchunks; c++) {
            const double v = part[c];
            acc += v;
            nanf |= pnan[c];
        }
        (void)nanf;
        *(double *)(ptrs[2]) = (double)(acc);
        return;
    }
    const double a1 = *(const double *)(ptrs[1]);
    double ob0[EXPRC_RCHUNK] __attribute__((aligned(64)));
    double vb[EXPRC_RCHUNK] __attribute__((aligned(64)));
    double acc = 0; int nanf = 0; (void)nanf;
    int64_t b = 0, left = red_total;
    for (int64_t i0 = 0; i0 < n0; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[2];
        ob0[b] = *(const double *)(q0_0);
        left--;
        if (++b == EXPRC_RCHUNK || left == 0) {
            const int64_t w = (b + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;
            for (int64_t p = b; p < w; p++) {
                ob0[p] = ob0[0];
            }
            #pragma omp simd
            for (int64_t p = 0; p < w; p++) {
                const double a0 = ob0[p];
                const double t2 = (a0 - a1);
                const double t3 = exp(t2);
                vb[p] = t3;
            }
            for (int64_t p = 0; p < b; p++) {
                const double v = vb[p];
                acc += v;
            }
            b = 0;
        }
    }
    *(double *)(ptrs[2]) = (double)(acc);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_max(char **restrict ptrs, const int64_t *restrict P, int nthreads);
EXPRC_HIDDEN void k1_sub_exp_sum(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[2]}; k0_max(a, P + 0, nthreads); }
    if (first <= 1 && 1 < last) { char *a[] = {ptrs[0], ptrs[2], ptrs[1]}; k1_sub_exp_sum(a, P + 4, nthreads); }
}
