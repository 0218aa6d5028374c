/* k0_max: max(x) */
struct k0_max_args { char *ptr[3]; int64_t P[6]; };
struct k0_max_op {
    __device__ __forceinline__ double operator()(double acc, double v) const { return (v != v || v > acc) ? v : acc; }
};
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_max(const k0_max_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k0_max_op op;
    const int64_t n0 = a.P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    const int64_t nchunks = a.P[4], chunk = a.P[5];
    (void)red_total; (void)chunk;
    for (int64_t blk = blockIdx.x; blk < kept_total * nchunks; blk += gridDim.x) {
        const int64_t kk = blk / nchunks;
        const int64_t lo = (blk - kk * nchunks) * chunk;
        const int64_t hi = exprc_imin(lo + chunk, red_total);
        double acc = (-INFINITY);
        if (a.P[0]) {
            const double *__restrict__ p0 = (const double *)a.ptr[0];
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                const double a0 = p0[i];
                const double v = a0;
                acc = op(acc, v);
            }
        } else {
            const char *b0 = a.ptr[0];
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                int64_t r = i;
                const int64_t i0 = r;
                const double a0 = *(const double *)(b0 + i0 * a.P[2]);
                const double v = a0;
                acc = op(acc, v);
            }
        }
        acc = exprc_block_reduce<double>(acc, (-INFINITY), shared, op);
        if (threadIdx.x == 0) {
            if (nchunks == 1) {
                char *o = a.ptr[1];
                *(double *)o = (double)(acc);
            } else {
                ((double *)a.ptr[2])[blk] = acc;
            }
        }
    }
}
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_max_final(const k0_max_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k0_max_op op;
    const int64_t n0 = a.P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    const int64_t nchunks = a.P[4], chunk = a.P[5];
    (void)red_total; (void)chunk;
    const double *__restrict__ part = (const double *)a.ptr[2];
    for (int64_t kk = blockIdx.x; kk < kept_total; kk += gridDim.x) {
        double acc = (-INFINITY);
        for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
            const double v = part[kk * nchunks + c];
            acc = op(acc, v);
        }
        acc = exprc_block_reduce<double>(acc, (-INFINITY), shared, op);
        if (threadIdx.x == 0) {
            char *o = a.ptr[1];
            *(double *)o = (double)(acc);
        }
    }
}

/* k1_sub_exp_sum: sum(exp(x - max(x))) */
struct k1_sub_exp_sum_args { char *ptr[4]; int64_t P[7]; };
struct k1_sub_exp_sum_op {
    __device__ __forceinline__ double operator()(double acc, double v) const { return acc + v; }
};
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k1_sub_exp_sum(const k1_sub_exp_sum_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k1_sub_exp_sum_op op;
    const int64_t n0 = a.P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    const int64_t nchunks = a.P[5], chunk = a.P[6];
    (void)red_total; (void)chunk;
    for (int64_t blk = blockIdx.x; blk < kept_total * nchunks; blk += gridDim.x) {
        const int64_t kk = blk / nchunks;
        const int64_t lo = (blk - kk * nchunks) * chunk;
        const int64_t hi = exprc_imin(lo + chunk, red_total);
        double acc = 0;
        if (a.P[0]) {
            const double *__restrict__ p0 = (const double *)a.ptr[0];
            const double a1 = *(const double *)(a.ptr[1]);
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                const double a0 = p0[i];
                const double t2 = (a0 - a1);
                const double t3 = exp(t2);
                const double v = t3;
                acc = op(acc, v);
            }
        } else {
            const char *b0 = a.ptr[0];
            const double a1 = *(const double *)(a.ptr[1]);
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                int64_t r = i;
                const int64_t i0 = r;
                const double a0 = *(const double *)(b0 + i0 * a.P[2]);
                const double t2 = (a0 - a1);
                const double t3 = exp(t2);
                const double v = t3;
                acc = op(acc, v);
            }
        }
        acc = exprc_block_reduce<double>(acc, 0, shared, op);
        if (threadIdx.x == 0) {
            if (nchunks == 1) {
                char *o = a.ptr[2];
                *(double *)o = (double)(acc);
            } else {
                ((double *)a.ptr[3])[blk] = acc;
            }
        }
    }
}
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k1_sub_exp_sum_final(const k1_sub_exp_sum_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k1_sub_exp_sum_op op;
    const int64_t n0 = a.P[1];
    const int64_t kept_total = 1;
    const int64_t red_total = n0;
    const int64_t nchunks = a.P[5], chunk = a.P[6];
    (void)red_total; (void)chunk;
    const double *__restrict__ part = (const double *)a.ptr[3];
    for (int64_t kk = blockIdx.x; kk < kept_total; kk += gridDim.x) {
        double acc = 0;
        for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
            const double v = part[kk * nchunks + c];
            acc = op(acc, v);
        }
        acc = exprc_block_reduce<double>(acc, 0, shared, op);
        if (threadIdx.x == 0) {
            char *o = a.ptr[2];
            *(double *)o = (double)(acc);
        }
    }
}
