/* k0_mul_add_tanh: tanh(rows * 2.0 + bias[0]) */
static __attribute__((noinline)) void k0_mul_add_tanh_flat(char **restrict ptrs, int64_t lo, int64_t hi)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double *restrict p2 = (double *)ptrs[2];
    const double a1 = *(const double *)(ptrs[1]);
    #pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const double a0 = p0[i];
        const double t2 = (a0 * (0x1.0000000000000p+1));
        const double t3 = (t2 + a1);
        const double t4 = exprc_tanh(t3);
        p2[i] = t4;
    }
}
static void k0_mul_add_tanh_block(char **restrict base, const int64_t *restrict st, int64_t m)
{
    double b0[EXPRC_VBLOCK] __attribute__((aligned(64)));
    double b2[EXPRC_VBLOCK] __attribute__((aligned(64)));
    char *q[3] = {(char *)b0, base[1], (char *)b2};
    (void)st;
    for (int64_t i = 0; i < EXPRC_VBLOCK; i++) b0[i] = *(const double *)(base[0] + (i < m ? i : 0) * st[0]);
    k0_mul_add_tanh_flat(q, 0, EXPRC_VBLOCK);
    for (int64_t i = 0; i < m; i++) *(double *)(base[2] + i * st[2]) = b2[i];
}
__attribute__((unused)) static void k0_mul_add_tanh_span(char **restrict ptrs, int64_t lo, int64_t hi)
{
    const int64_t mid = hi - (hi - lo) % EXPRC_VBLOCK;
    if (mid > lo)
        k0_mul_add_tanh_flat(ptrs, lo, mid);
    if (mid < hi) {
        char *base[3] = {ptrs[0] + mid * 8, ptrs[1], ptrs[2] + mid * 8};
        const int64_t st[3] = {8, 0, 8};
        k0_mul_add_tanh_block(base, st, hi - mid);
    }
}
EXPRC_CHUNK(k0_mul_add_tanh_chunk)
{
    (void)P; (void)c; (void)part; (void)pnan;
    k0_mul_add_tanh_span(ptrs, lo, hi);
}
EXPRC_RANGE(k0_mul_add_tanh_rows)
{
    const int64_t n0 = P[1];
    const int64_t n1 = P[2];
    if (n1 > 0 && n1 <= EXPRC_RCHUNK / 2) {
        double b0[EXPRC_RCHUNK] __attribute__((aligned(64)));
        double b2[EXPRC_RCHUNK] __attribute__((aligned(64)));
        char *q[3] = {(char *)b0, ptrs[1], (char *)b2};
        const int64_t R = EXPRC_RCHUNK / n1;
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            const int64_t rn = hi - r0 < R ? hi - r0 : R;
            int64_t b = 0;
            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {
                char *q0_0 = ptrs[0] + i0 * P[3];
                for (int64_t i1 = 0; i1 < n1; i1++, b++) {
                    char *q0_1 = q0_0 + i1 * P[4];
                    b0[b] = *(const double *)(q0_1);
                }
            }
            const int64_t w = (b + EXPRC_VBLOCK - 1) / EXPRC_VBLOCK * EXPRC_VBLOCK;
            for (int64_t p = b; p < w; p++) {
                b0[p] = b0[0];
            }
            k0_mul_add_tanh_flat(q, 0, w);
            b = 0;
            for (int64_t i0 = r0; i0 < r0 + rn; i0++) {
                char *q2_0 = ptrs[2] + i0 * P[7];
                for (int64_t i1 = 0; i1 < n1; i1++, b++) {
                    char *q2_1 = q2_0 + i1 * P[8];
                    *(double *)(q2_1) = b2[b];
                }
            }
        }
        return;
    }
    for (int64_t i0 = lo; i0 < hi; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[3];
        char *q2_0 = ptrs[2] + i0 * P[7];
        for (int64_t c = 0; c < n1; c += EXPRC_VBLOCK) {
            char *base[3] = {q0_0 + c * P[4], ptrs[1], q2_0 + c * P[8]};
            const int64_t st[3] = {P[4], 0, P[8]};
            k0_mul_add_tanh_block(base, st, (n1 - c) < EXPRC_VBLOCK ? (n1 - c) : EXPRC_VBLOCK);
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
