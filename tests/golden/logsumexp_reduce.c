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
static void k0_max(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    (void)kept_total;
    if (P[0]) {
        double part[EXPRC_MAX_THREADS]; int pnan[EXPRC_MAX_THREADS]; int used = 1;
        if (nthreads > 1 && red_total > 209715) {
            #pragma omp parallel num_threads(nthreads < EXPRC_MAX_THREADS ? nthreads : EXPRC_MAX_THREADS)
            {
                EXPRC_THREAD_RANGE(red_total, lo, hi, id)
                pnan[id] = 0; part[id] = k0_max_flat(ptrs, lo, hi, &pnan[id]); if (id == 0) used = EXPRC_NUM_THREADS_USED();
            }
        } else {
            const int64_t lo = 0, hi = red_total, id = 0;
            pnan[id] = 0; part[id] = k0_max_flat(ptrs, lo, hi, &pnan[id]); if (id == 0) used = EXPRC_NUM_THREADS_USED();
        }
        double acc = -INFINITY; int nanf = 0;
        for (int t = 0; t < used; t++) {
            const double v = part[t];
            acc = v > acc ? v : acc; nanf |= (v != v);
            nanf |= pnan[t];
        }
        (void)nanf;
        *(double *)ptrs[2] = (double)((nanf ? NAN : acc));
        return;
    }
    double acc = -INFINITY; int nanf = 0; (void)nanf;
    for (int64_t i0 = 0; i0 < n0; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[2];
        const double a0 = *(const double *)(q0_0);
        const double v = a0;
        acc = v > acc ? v : acc; nanf |= (v != v);
    }
    *(double *)(ptrs[2]) = (double)((nanf ? NAN : acc));
}

/* k1_sub_exp_sum: sum(exp(x - max(x))) */
static inline double k1_sub_exp_sum_flat(char **restrict ptrs, int64_t lo, int64_t hi, int *nan_out)
{
    const double *restrict p0 = (const double *)ptrs[0];
    double *restrict p2 = (double *)ptrs[1];
    const double a1 = *(const double *)(ptrs[2]);
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
static void k1_sub_exp_sum(char **restrict ptrs, const int64_t *restrict P, int nthreads)
{
    const int64_t n0 = P[5];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    (void)kept_total;
    if (P[4]) {
        double part[EXPRC_MAX_THREADS]; int pnan[EXPRC_MAX_THREADS]; int used = 1;
        if (nthreads > 1 && red_total > 37449) {
            #pragma omp parallel num_threads(nthreads < EXPRC_MAX_THREADS ? nthreads : EXPRC_MAX_THREADS)
            {
                EXPRC_THREAD_RANGE(red_total, lo, hi, id)
                pnan[id] = 0; part[id] = k1_sub_exp_sum_flat(ptrs, lo, hi, &pnan[id]); if (id == 0) used = EXPRC_NUM_THREADS_USED();
            }
        } else {
            const int64_t lo = 0, hi = red_total, id = 0;
            pnan[id] = 0; part[id] = k1_sub_exp_sum_flat(ptrs, lo, hi, &pnan[id]); if (id == 0) used = EXPRC_NUM_THREADS_USED();
        }
        double acc = 0; int nanf = 0;
        for (int t = 0; t < used; t++) {
            const double v = part[t];
            acc += v;
            nanf |= pnan[t];
        }
        (void)nanf;
        *(double *)ptrs[1] = (double)(acc);
        return;
    }
    double acc = 0; int nanf = 0; (void)nanf;
    for (int64_t i0 = 0; i0 < n0; i0++) {
        char *q0_0 = ptrs[0] + i0 * P[6];
        const double a0 = *(const double *)(q0_0);
        const double a1 = *(const double *)(ptrs[2]);
        const double t2 = (a0 - a1);
        const double t3 = exp(t2);
        const double v = t3;
        acc += v;
    }
    *(double *)(ptrs[1]) = (double)(acc);
}

/* The single entry point: run kernels [first, last) with nthreads threads. */
void exprc_run(char **restrict ptrs, const int64_t *restrict P, int64_t first, int64_t last, int nthreads)
{
    if (first <= 0 && 0 < last) k0_max(ptrs, P, nthreads);
    if (first <= 1 && 1 < last) k1_sub_exp_sum(ptrs, P, nthreads);
}
