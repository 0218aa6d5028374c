/* k0_add_max_isfinite_where: exp(rows + bias - where(isfinite(max(rows + bias, axis=(1,), keepdims=True, identity=True)), max(rows + bias, axis=(1,), keepdims=True, identity=True), 0.0)) / sum(exp(rows + bias - where(isfinite(max(rows + bias, axis=(1,), keepdims=True, identity=True)), max(rows + bias, axis=(1,), keepdims=True, identity=True), 0.0)), axis=(1,), keepdims=True) */
EXPRC_RANGE(k0_add_max_isfinite_where_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t red_total = n1;
    (void)red_total;
    if (n1 > 0 && n1 <= 32) {
        const int64_t R0 = EXPRC_RCHUNK / n1 / EXPRC_VBLOCK * EXPRC_VBLOCK, R = R0 > 0 ? R0 : EXPRC_VBLOCK;
        double ob0[EXPRC_VBLOCK * 32] __attribute__((aligned(64)));
        double ob1[EXPRC_VBLOCK * 32] __attribute__((aligned(64)));
        double vb0[EXPRC_VBLOCK * 32] __attribute__((aligned(64)));
        double vb1[EXPRC_VBLOCK * 32] __attribute__((aligned(64)));
        double sb2[EXPRC_VBLOCK * 32] __attribute__((aligned(64)));
        double y0[EXPRC_RCHUNK] __attribute__((aligned(64)));
        double y2[EXPRC_RCHUNK] __attribute__((aligned(64)));
        double y3[EXPRC_RCHUNK] __attribute__((aligned(64)));
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            const int64_t rn = hi - r0 < R ? hi - r0 : R;
            const int64_t wr = (rn + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const char *g0 = ptrs[0] + r0 * P[3] + i1 * P[4];
                #pragma omp simd
                for (int64_t r = 0; r < rn; r++)
                    ob0[i1 * R + r] = *(const double *)(g0 + r * P[3]);
            }
            for (int64_t i1 = 0; i1 < n1; i1++)
                for (int64_t r = rn; r < wr; r++) ob0[i1 * R + r] = ob0[i1 * R];
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const char *g1 = ptrs[1] + r0 * P[5] + i1 * P[6];
                #pragma omp simd
                for (int64_t r = 0; r < rn; r++)
                    ob1[i1 * R + r] = *(const double *)(g1 + r * P[5]);
            }
            for (int64_t i1 = 0; i1 < n1; i1++)
                for (int64_t r = rn; r < wr; r++) ob1[i1 * R + r] = ob1[i1 * R];
            double acc0[EXPRC_RCHUNK] __attribute__((aligned(64))); int nan0[EXPRC_RCHUNK] __attribute__((aligned(64))); (void)nan0;
            for (int64_t r = 0; r < wr; r++) {
                acc0[r] = -INFINITY; nan0[r] = 0;
            }
            for (int64_t i1 = 0; i1 < n1; i1++) {
                #pragma omp simd
                for (int64_t r = 0; r < wr; r++) {
                    const int64_t p = i1 * R + r;
                    const double a0 = ob0[p];
                    const double a1 = ob1[p];
                    const double t5 = (a0 + a1);
                    vb0[p] = t5;
                }
            }
            for (int64_t i1 = 0; i1 < n1; i1++) {
                #pragma omp simd
                for (int64_t r = 0; r < wr; r++) {
                    acc0[r] = vb0[i1 * R + r] > acc0[r] ? vb0[i1 * R + r] : acc0[r]; nan0[r] |= (vb0[i1 * R + r] != vb0[i1 * R + r]);
                }
            }
            for (int64_t r = 0; r < rn; r++) {
                y0[r] = (double)((nan0[r] ? NAN : acc0[r]));
            }
            for (int64_t r = rn; r < wr; r++) y0[r] = y0[0];
            #pragma omp simd
            for (int64_t r = 0; r < wr; r++) {
                const uint8_t t2 = (isfinite(y0[r]) != 0);
                const double t3 = (t2 ? y0[r] : (0x0.0p+0));
                y2[r] = t3;
            }
            double acc1[EXPRC_RCHUNK] __attribute__((aligned(64))); int nan1[EXPRC_RCHUNK] __attribute__((aligned(64))); (void)nan1;
            for (int64_t r = 0; r < wr; r++) {
                acc1[r] = 0; nan1[r] = 0;
            }
            for (int64_t i1 = 0; i1 < n1; i1++) {
                #pragma omp simd
                for (int64_t r = 0; r < wr; r++) {
                    const int64_t p = i1 * R + r;
                    const double a0 = ob0[p];
                    const double a1 = ob1[p];
                    const double t6 = (vb0[p] - y2[r]);
                    const double t7 = exp(t6);
                    vb1[p] = t7;
                }
            }
            for (int64_t i1 = 0; i1 < n1; i1++) {
                #pragma omp simd
                for (int64_t r = 0; r < wr; r++) {
                    acc1[r] += vb1[i1 * R + r];
                }
            }
            for (int64_t r = 0; r < rn; r++) {
                y3[r] = (double)(acc1[r]);
            }
            for (int64_t r = rn; r < wr; r++) y3[r] = y3[0];
            for (int64_t i1 = 0; i1 < n1; i1++) {
                #pragma omp simd
                for (int64_t r = 0; r < wr; r++) {
                    const int64_t p = i1 * R + r;
                    const double t5 = (vb1[p] / y3[r]);
                    sb2[p] = t5;
                }
            }
            for (int64_t r = 0; r < rn; r++) {
                char *s2 = ptrs[2] + (r0 + r) * P[7];
                for (int64_t i1 = 0; i1 < n1; i1++)
                    *(double *)(s2 + i1 * P[8]) = (double)sb2[i1 * R + r];
            }
        }
        return;
    }
    char *scratch = P[0] || n1 <= 0 ? NULL : (char *)__builtin_malloc((((size_t)n1 * sizeof(double) + 63) & ~(size_t)63) + (((size_t)n1 * sizeof(double) + 63) & ~(size_t)63) + (((size_t)n1 * sizeof(double) + 63) & ~(size_t)63));
    char *rb0 = scratch ? scratch + 0 : NULL; (void)rb0;
    char *rb1 = scratch ? scratch + (((size_t)n1 * sizeof(double) + 63) & ~(size_t)63) : NULL; (void)rb1;
    char *rb2 = scratch ? scratch + (((size_t)n1 * sizeof(double) + 63) & ~(size_t)63) + (((size_t)n1 * sizeof(double) + 63) & ~(size_t)63) : NULL; (void)rb2;
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
        } else if (scratch) {
            for (int64_t i1 = 0; i1 < n1; i1++) ((double *)rb0)[i1] = *(const double *)(q0 + i1 * P[4]);
            for (int64_t i1 = 0; i1 < n1; i1++) ((double *)rb1)[i1] = *(const double *)(q1 + i1 * P[6]);
            const double *restrict p0 = (const double *)(rb0);
            const double *restrict p1 = (const double *)(rb1);
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
        const uint8_t t1 = (isfinite(racc0_0) != 0);
        const double t2 = (t1 ? racc0_0 : (0x0.0p+0));
        double acc3_0 = 0; int nanacc3_0 = 0; (void)nanacc3_0;
        if (P[0]) {
            const double *restrict p0 = (const double *)(q0);
            const double *restrict p1 = (const double *)(q1);
            double *restrict p2 = (double *)(q2);
            #pragma omp simd reduction(+:acc3_0)
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = p0[i1];
                const double a1 = p1[i1];
                const double t5 = (a0 + a1);
                const double t6 = (t5 - t2);
                const double t7 = exp(t6);
                acc3_0 += t7;
                p2[i1] = t7;
            }
        } else if (scratch) {
            for (int64_t i1 = 0; i1 < n1; i1++) ((double *)rb0)[i1] = *(const double *)(q0 + i1 * P[4]);
            for (int64_t i1 = 0; i1 < n1; i1++) ((double *)rb1)[i1] = *(const double *)(q1 + i1 * P[6]);
            const double *restrict p0 = (const double *)(rb0);
            const double *restrict p1 = (const double *)(rb1);
            double *restrict p2 = (double *)(rb2);
            #pragma omp simd reduction(+:acc3_0)
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = p0[i1];
                const double a1 = p1[i1];
                const double t5 = (a0 + a1);
                const double t6 = (t5 - t2);
                const double t7 = exp(t6);
                acc3_0 += t7;
                p2[i1] = t7;
            }
            for (int64_t i1 = 0; i1 < n1; i1++) *(double *)(q2 + i1 * P[8]) = ((double *)rb2)[i1];
        } else {
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double a0 = *(const double *)(q0 + i1 * P[4]);
                const double a1 = *(const double *)(q1 + i1 * P[6]);
                const double t5 = (a0 + a1);
                const double t6 = (t5 - t2);
                const double t7 = exp(t6);
                acc3_0 += t7;
                *(double *)(q2 + i1 * P[8]) = t7;
            }
        }
        const double racc3_0 = (double)(acc3_0);
        if (P[0]) {
            double *restrict p2 = (double *)(q2);
            #pragma omp simd
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double c2 = p2[i1];
                const double t5 = (c2 / racc3_0);
                p2[i1] = t5;
            }
        } else if (scratch) {
            for (int64_t i1 = 0; i1 < n1; i1++) ((double *)rb2)[i1] = *(const double *)(q2 + i1 * P[8]);
            double *restrict p2 = (double *)(rb2);
            #pragma omp simd
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double c2 = p2[i1];
                const double t5 = (c2 / racc3_0);
                p2[i1] = t5;
            }
            for (int64_t i1 = 0; i1 < n1; i1++) *(double *)(q2 + i1 * P[8]) = ((double *)rb2)[i1];
        } else {
            for (int64_t i1 = 0; i1 < n1; i1++) {
                const double c2 = *(const double *)(q2 + i1 * P[8]);
                const double t5 = (c2 / racc3_0);
                *(double *)(q2 + i1 * P[8]) = t5;
            }
        }
    }
    __builtin_free(scratch);
}
EXPRC_HIDDEN void k0_add_max_isfinite_where(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    const int64_t total = n0 * n1;
    exprc_range(k0_add_max_isfinite_where_rows, ptrs, P, n0, total > 29127, nthreads);
}

/* exprc: unit */
EXPRC_HIDDEN void k0_add_max_isfinite_where(char **restrict ptrs, const int64_t *restrict P, int nthreads);

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) { char *a[] = {ptrs[0], ptrs[1], ptrs[2]}; k0_add_max_isfinite_where(a, P + 0, nthreads); }
}
