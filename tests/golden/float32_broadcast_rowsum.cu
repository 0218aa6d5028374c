/* k0_mul_tanh_sum: sum(tanh(m * v), axis=(1,)) */
struct k0_mul_tanh_sum_args { char *ptr[4]; int64_t P[11]; };
struct k0_mul_tanh_sum_op {
    __device__ __forceinline__ double operator()(double acc, double v) const { return acc + v; }
};
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_mul_tanh_sum(const k0_mul_tanh_sum_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k0_mul_tanh_sum_op op;
    const int64_t n0 = a.P[1];
    const int64_t n1 = a.P[2];
    const int64_t kept_total = n0;
    const int64_t red_total = n1;
    const int64_t nchunks = a.P[9], chunk = a.P[10];
    (void)red_total; (void)chunk;
    for (int64_t blk = blockIdx.x; blk < kept_total * nchunks; blk += gridDim.x) {
        const int64_t kk = blk / nchunks;
        const int64_t lo = (blk - kk * nchunks) * chunk;
        const int64_t hi = exprc_imin(lo + chunk, red_total);
        double acc = 0;
        if (a.P[0]) {
            const float *__restrict__ p0 = (const float *)a.ptr[0];
            const float *__restrict__ p1 = (const float *)a.ptr[1];
            #pragma unroll 4
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                const float a0 = p0[i];
                const float a1 = p1[i];
                const float t2 = (a0 * a1);
                const float t3 = exprc_tanhf(t2);
                const float v = t3;
                acc = op(acc, v);
            }
        } else {
            int64_t rk = kk;
            const int64_t i0 = rk;
            const char *b0 = a.ptr[0] + i0 * a.P[3];
            const char *b1 = a.ptr[1] + i0 * a.P[5];
            for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                int64_t r = i;
                const int64_t i1 = r;
                const float a0 = *(const float *)(b0 + i1 * a.P[4]);
                const float a1 = *(const float *)(b1 + i1 * a.P[6]);
                const float t2 = (a0 * a1);
                const float t3 = exprc_tanhf(t2);
                const float v = t3;
                acc = op(acc, v);
            }
        }
        acc = exprc_block_reduce<double>(acc, 0, shared, op);
        if (threadIdx.x == 0) {
            if (nchunks == 1) {
                char *o = a.ptr[2];
                int64_t rk = kk;
                o += (rk % n0) * a.P[7]; rk /= n0;
                *(float *)o = (float)(acc);
            } else {
                ((double *)a.ptr[3])[blk] = acc;
            }
        }
    }
}
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_mul_tanh_sum_final(const k0_mul_tanh_sum_args a)
{
    __shared__ double shared[EXPRC_BLOCK / 32];
    const k0_mul_tanh_sum_op op;
    const int64_t n0 = a.P[1];
    const int64_t n1 = a.P[2];
    const int64_t kept_total = n0;
    const int64_t red_total = n1;
    const int64_t nchunks = a.P[9], chunk = a.P[10];
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
            int64_t rk = kk;
            o += (rk % n0) * a.P[7]; rk /= n0;
            *(float *)o = (float)(acc);
        }
    }
}
