/* k0_add_max_sub_exp: exp(rows + bias - max(rows + bias, axis=(1,), keepdims=True)) / sum(exp(rows + bias - max(rows + bias, axis=(1,), keepdims=True)), axis=(1,), keepdims=True) */
EXPRC_RANGE(k0_add_max_sub_exp_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t red_total = n1;
    (void)red_total;
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0 = ptrs[0] + i0 * P[3];
        char *q1 = ptrs[1] + i0 * P[5];
        char *q2 = ptrs[2] + i0 * P[7];
        double acc0_0 = -INFINITY; int nanacc0_0 = 0; (void)nanacc0_0;
        if (P[0]) {
            const double *restrict p0 = (const double *)(q0);
            const double *restrict p1 = (const double *)(q1);
            #pragma omp simd reduction(max:acc0_0) reduction(|:nanacc0_0)
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = p0[i1];
                const double a1 = p1[i1];
                const double t2 = (a0 + a1);
                acc0_0 = t2 > acc0_0 ? t2 : acc0_0; nanacc0_0 |= (t2 != t2);
            }
        } else {
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = *(const double *)(q0 + i1 * P[4]);
                const double a1 = *(const double *)(q1 + i1 * P[6]);
                const double t2 = (a0 + a1);
                acc0_0 = t2 > acc0_0 ? t2 : acc0_0; nanacc0_0 |= (t2 != t2);
            }
        }
        const double racc0_0 = (double)((nanacc0_0 ? NAN : acc0_0));
        double acc1_0 = 0; int nanacc1_0 = 0; (void)nanacc1_0;
        if (P[0]) {
            const double *restrict p0 = (const double *)(q0);
            const double *restrict p1 = (const double *)(q1);
            double *restrict p2 = (double *)(q2);
            #pragma omp simd reduction(+:acc1_0)
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = p0[i1];
                const double a1 = p1[i1];
                const double t3 = (a0 + a1);
                const double t4 = (t3 - racc0_0);
                const double t5 = exp(t4);
                acc1_0 += t5;
                p2[i1] = t5;
            }
        } else {
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = *(const double *)(q0 + i1 * P[4]);
                const double a1 = *(const double *)(q1 + i1 * P[6]);
                const double t3 = (a0 + a1);
                const double t4 = (t3 - racc0_0);
                const double t5 = exp(t4);
                acc1_0 += t5;
                *(double *)(q2 + i1 * P[8]) = t5;
            }
        }
        const double racc1_0 = (double)(acc1_0);
        if (P[0]) {
            double *restrict p2 = (double *)(q2);
            #pragma omp simd
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double c2 = p2[i1];
                const double t3 = (c2 / racc1_0);
                p2[i1] = t3;
            }
        } else {
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double c2 = *(const double *)(q2 + i1 * P[8]);
                const double t3 = (c2 / racc1_0);
                *(double *)(q2 + i1 * P[8]) = t3;
            }
        }
    }
}
EXPRC_HIDDEN void k0_add_max_sub_exp(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t total = n0 * n1;
    exprc_range(k0_add_max_sub_exp_rows, ptrs, P, n0, total > 30840, nthreads);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_add_max_sub_exp(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[1], ptrs[2]}; k0_add_max_sub_exp(a, P + 0, nthreads); }
}
