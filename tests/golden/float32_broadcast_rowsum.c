/* k0_mul_tanh_sum: sum(tanh(m * v), axis=(1,)) */
EXPRC_RANGE(k0_mul_tanh_sum_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t red_total = n1;
    (void)red_total;
    float ob0[EXPRC_RCHUNK] __attribute__((aligned(64)));
    float ob1[EXPRC_RCHUNK] __attribute__((aligned(64)));
    float vb[EXPRC_RCHUNK] __attribute__((aligned(64)));
    if (n1 > 0 && n1 <= EXPRC_RCHUNK / 2) {
        const int64_t R = EXPRC_RCHUNK / n1;
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            const int64_t rn = hi - r0 < R ? hi - r0 : R;
            int64_t b = 0;
            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {
                char *q0_0 = ptrs[0] + i0 * P[3];
                char *q1_0 = ptrs[1] + i0 * P[5];
                for (int64_t i1 = 0; i1 < 0 + n1; i1++, b++) {
                    char *q0_1 = q0_0 + i1 * P[4];
                    char *q1_1 = q1_0 + i1 * P[6];
                    ob0[b] = *(const float *)(q0_1);
                    ob1[b] = *(const float *)(q1_1);
                }
            }
            const int64_t w = (b + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;
            for (int64_t p = b; p < w; p++) {
                ob0[p] = ob0[0];
                ob1[p] = ob1[0];
            }
            #pragma omp simd
            for (int64_t p = 0; p < w; p++) {
                const float a0 = ob0[p];
                const float a1 = ob1[p];
                const float t2 = (a0 * a1);
                const float t3 = exprc_tanhf(t2);
                vb[p] = t3;
            }
            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {
                char *q2_0 = ptrs[2] + i0 * P[7];
                double acc = 0; int nanf = 0; (void)nanf;
                {
                    int64_t p = (i0 - r0) * n1;
                    if (n1 >= 16) {
                        double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
                        for (; p + 8 <= (i0 - r0) * n1 + n1; p += 8) {
                            s0 += vb[p + 0]; s1 += vb[p + 1]; s2 += vb[p + 2]; s3 += vb[p + 3];
                            s4 += vb[p + 4]; s5 += vb[p + 5]; s6 += vb[p + 6]; s7 += vb[p + 7];
                        }
                        acc += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
                    }
                    for (; p < (i0 - r0) * n1 + n1; p++) {
                        const float v = vb[p];
                        acc += v;
                    }
                }
                *(float *)(q2_0) = (float)(acc);
            }
        }
        return;
    }
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[3];
        char *q1_0 = ptrs[1] + i0 * P[5];
        char *q2_0 = ptrs[2] + i0 * P[7];
        double acc = 0; int nanf = 0; (void)nanf;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
        for (int64_t c1 = 0; c1 < n1; c1 += EXPRC_RCHUNK) {
            const int64_t m1 = n1 - c1 < EXPRC_RCHUNK ? n1 - c1 : EXPRC_RCHUNK;
            int64_t b = 0;
            for (int64_t i1 = c1; i1 < c1 + m1; i1++, b++) {
                char *q0_1 = q0_0 + i1 * P[4];
                char *q1_1 = q1_0 + i1 * P[6];
                ob0[b] = *(const float *)(q0_1);
                ob1[b] = *(const float *)(q1_1);
            }
            const int64_t w = (b + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;
            for (int64_t p = b; p < w; p++) {
                ob0[p] = ob0[0];
                ob1[p] = ob1[0];
            }
            #pragma omp simd
            for (int64_t p = 0; p < w; p++) {
                const float a0 = ob0[p];
                const float a1 = ob1[p];
                const float t2 = (a0 * a1);
                const float t3 = exprc_tanhf(t2);
                vb[p] = t3;
            }
            int64_t p = 0;
            for (; p + 8 <= m1; p += 8) {
                s0 += vb[p + 0]; s1 += vb[p + 1]; s2 += vb[p + 2]; s3 += vb[p + 3];
                s4 += vb[p + 4]; s5 += vb[p + 5]; s6 += vb[p + 6]; s7 += vb[p + 7];
            }
            if (c1 + m1 == n1) acc += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
            for (; p < m1; p++) { const float v = vb[p]; acc += v; }
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
