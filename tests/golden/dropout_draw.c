/* k0_randomuniform_lt_mul_truediv: x * (random_uniform(x, key[0], key[1], draw=0, dtype='float64') < 0.8).astype(float64) / 0.8 */
static inline void k0_randomuniform_lt_mul_truediv_flat(char **restrict ptrs, int64_t lo, int64_t hi)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double *restrict p3 = (double *)ptrs[3];
    const int64_t a1 = *(const int64_t *)(ptrs[1]);
    const int64_t a2 = *(const int64_t *)(ptrs[2]);
    exprc_rbatch rb0;
    for (int64_t b0 = lo; b0 < hi; b0 += EXPRC_RBATCH) {
        const int64_t b1 = b0 + EXPRC_RBATCH < hi ? b0 + EXPRC_RBATCH : hi;
        exprc_rfill(&rb0, a1, a2, b0, b1 - b0, 0u, 1);
    #pragma omp simd
    for (int64_t i = b0; i < b1; i++) {
        const double a0 = p0[i];
        const double t3 = exprc_unit52(rb0.u.x[rb0.off + (i - b0)]);
        const uint8_t t4 = (t3 < (0x1.999999999999ap-1));
        const double t5 = (t4 ? 1.0 : 0.0);
        const double t6 = (a0 * t5);
        const double t7 = (t6 / (0x1.999999999999ap-1));
        p3[i] = t7;
    }
    }
}
EXPRC_CHUNK(k0_randomuniform_lt_mul_truediv_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    k0_randomuniform_lt_mul_truediv_flat(ptrs, lo, hi);
}
EXPRC_HIDDEN void k0_randomuniform_lt_mul_truediv(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t total = n0;
    if (P[0]) {
        exprc_chunks(k0_randomuniform_lt_mul_truediv_chunk, ptrs, P, total, 29959, nthreads, 0, 0);
        return;
    }
    const int64_t a1 = *(const int64_t *)(ptrs[1]);
    const int64_t a2 = *(const int64_t *)(ptrs[2]);
    #pragma omp parallel for if(total > 29959) num_threads(nthreads) schedule(static)
    for (int64_t c0 = 0; c0 < n0; c0 += EXPRC_RBATCH) {
        const int64_t e0 = c0 + EXPRC_RBATCH < n0 ? c0 + EXPRC_RBATCH : n0;
        const int64_t rrow = (0) * n0 + c0;
        exprc_rbatch rb0;
        exprc_rfill(&rb0, a1, a2, rrow, e0 - c0, 0u, 1);
        for (int64_t i0 = c0; i0 < e0; i0++) {
            char *q0_0 = ptrs[0] + i0 * P[2];
            char *q3_0 = ptrs[3] + i0 * P[5];
            const double a0 = *(const double *)(q0_0);
            const int64_t ridx = i0;
            const double t3 = exprc_unit52(rb0.u.x[rb0.off + (i0 - c0)]);
            const uint8_t t4 = (t3 < (0x1.999999999999ap-1));
            const double t5 = (t4 ? 1.0 : 0.0);
            const double t6 = (a0 * t5);
            const double t7 = (t6 / (0x1.999999999999ap-1));
            *(double *)(q3_0) = t7;
        }
    }
}

/* exprc: unit */
EXPRC_HIDDEN void k0_randomuniform_lt_mul_truediv(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[3], ptrs[4], ptrs[2]}; k0_randomuniform_lt_mul_truediv(a, P + 0, nthreads); }
}
