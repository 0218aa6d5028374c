/* k0_mul_add: a * b + c */
static inline void k0_mul_add_flat(char **restrict ptrs, int64_t lo, int64_t hi)
{
    const double *restrict p0 = (const double *)ptrs[0];
    const double *restrict p1 = (const double *)ptrs[1];
    const double *restrict p2 = (const double *)ptrs[2];
    double *restrict p3 = (double *)ptrs[3];
    #pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const double a0 = p0[i];
        const double a1 = p1[i];
        const double a2 = p2[i];
        const double t3 = (a0 * a1);
        const double t4 = (t3 + a2);
        p3[i] = t4;
    }
}
EXPRC_CHUNK(k0_mul_add_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    k0_mul_add_flat(ptrs, lo, hi);
}
EXPRC_RANGE(k0_mul_add_rows)
{
    const int64_t n0 = P[1];
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[2];
        char *q1_0 = ptrs[1] + i0 * P[3];
        char *q2_0 = ptrs[2] + i0 * P[4];
        char *q3_0 = ptrs[3] + i0 * P[5];
        const double a0 = *(const double *)(q0_0);
        const double a1 = *(const double *)(q1_0);
        const double a2 = *(const double *)(q2_0);
        const double t3 = (a0 * a1);
        const double t4 = (t3 + a2);
        *(double *)(q3_0) = t4;
    }
}
EXPRC_HIDDEN void k0_mul_add(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t total = n0;
    if (P[0]) {
        exprc_chunks(k0_mul_add_chunk, ptrs, P, total, 104857, nthreads, 0, 0);
        return;
    }
    exprc_range(k0_mul_add_rows, ptrs, P, n0, total > 104857, nthreads);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_mul_add(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[1], ptrs[2], ptrs[3]}; k0_mul_add(a, P + 0, nthreads); }
}
