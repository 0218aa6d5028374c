/* k0_mul_add_tanh: tanh(rows * 2.0 + bias[0]) */
static inline void k0_mul_add_tanh_flat(char **restrict ptrs, int64_t lo, int64_t hi)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double *restrict p2 = (double *)ptrs[2];
    const double a1 = *(const double *)(ptrs[1]);
    #pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const double a0 = p0[i];
        const double t2 = (a0 * (0x1.0000000000000p+1));
        const double t3 = (t2 + a1);
        const double t4 = tanh(t3);
        p2[i] = t4;
    }
}
EXPRC_CHUNK(k0_mul_add_tanh_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    k0_mul_add_tanh_flat(ptrs, lo, hi);
}
EXPRC_RANGE(k0_mul_add_tanh_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[3];
        char *q2_0 = ptrs[2] + i0 * P[7];
        for (int64_t i1 = 0; i1 < n1; i1++) {
            char *q0_1 = q0_0 + i1 * P[4];
            char *q2_1 = q2_0 + i1 * P[8];
            const double a0 = *(const double *)(q0_1);
            const double a1 = *(const double *)(ptrs[1]);
            const double t2 = (a0 * (0x1.0000000000000p+1));
            const double t3 = (t2 + a1);
            const double t4 = tanh(t3);
            *(double *)(q2_1) = t4;
        }
    }
}
EXPRC_HIDDEN void k0_mul_add_tanh(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t total = n0 * n1;
    if (P[0] == 2) {
        exprc_rowflat(k0_mul_add_tanh_chunk, ptrs, P, 3, n0, n1, total > 37449, nthreads);
        return;
    }
    if (P[0]) {
        exprc_chunks(k0_mul_add_tanh_chunk, ptrs, P, total, 37449, nthreads, 0, 0);
        return;
    }
    exprc_range(k0_mul_add_tanh_rows, ptrs, P, n0, total > 37449, nthreads);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_mul_add_tanh(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[3], ptrs[2]}; k0_mul_add_tanh(a, P + 0, nthreads); }
}
