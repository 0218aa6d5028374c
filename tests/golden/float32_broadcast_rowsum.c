/* k0_mul_tanh_sum: sum(tanh(m * v), axis=(1,)) */
EXPRC_RANGE(k0_mul_tanh_sum_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t red_total = n1;
    (void)red_total;
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[3];
        char *q1_0 = ptrs[1] + i0 * P[5];
        char *q2_0 = ptrs[2] + i0 * P[7];
        double acc = 0; int nanf = 0; (void)nanf;
        for (int64_t i1 = 0; i1 < n1; i1++) {
            char *q0_1 = q0_0 + i1 * P[4];
            char *q1_1 = q1_0 + i1 * P[6];
            const float a0 = *(const float *)(q0_1);
            const float a1 = *(const float *)(q1_1);
            const float t2 = (a0 * a1);
            const float t3 = tanhf(t2);
            const float v = t3;
            acc += v;
        }
        *(float *)(q2_0) = (float)(acc);
    }
}
EXPRC_HIDDEN void k0_mul_tanh_sum(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t kept_total = n0;
    const int64_t red_total = n1;
    (void)kept_total;
    exprc_range(k0_mul_tanh_sum_rows, ptrs, P, n0, kept_total > 37449, nthreads);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_mul_tanh_sum(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[1], ptrs[2]}; k0_mul_tanh_sum(a, P + 0, nthreads); }
}
