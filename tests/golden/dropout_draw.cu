/* k0_randomuniform_lt_mul_truediv: x * (random_uniform(x, key[0], key[1], draw=0, dtype='float64') < 0.8).astype(float64) / 0.8 */
struct k0_randomuniform_lt_mul_truediv_args { char *ptr[4]; int64_t P[6]; };
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_randomuniform_lt_mul_truediv(const k0_randomuniform_lt_mul_truediv_args a)
{
    const int64_t n0 = a.P[1];
    const int64_t total = n0;
    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    if (a.P[0]) {
        const double *__restrict__ p0 = (const double *)a.ptr[0];
        double *__restrict__ p3 = (double *)a.ptr[3];
        const int64_t a1 = *(const int64_t *)(a.ptr[1]);
        const int64_t a2 = *(const int64_t *)(a.ptr[2]);
        for (int64_t i = first; i < total; i += step) {
            const double a0 = p0[i];
            const double t3 = exprc_runiform(exprc_rbits_at(a1, a2, i, 0u, 1), i);
            const uint8_t t4 = (t3 < (0x1.999999999999ap-1));
            const double t5 = (t4 ? 1.0 : 0.0);
            const double t6 = (a0 * t5);
            const double t7 = (t6 / (0x1.999999999999ap-1));
            p3[i] = t7;
        }
        return;
    }
    const int64_t a1 = *(const int64_t *)(a.ptr[1]);
    const int64_t a2 = *(const int64_t *)(a.ptr[2]);
    for (int64_t i = first; i < total; i += step) {
        int64_t r = i;
        const int64_t i0 = r;
        const double a0 = *(const double *)(a.ptr[0] + i0 * a.P[2]);
        const int64_t ridx = i0;
        const double t3 = exprc_runiform(exprc_rbits_at(a1, a2, ridx, 0u, 1), ridx);
        const uint8_t t4 = (t3 < (0x1.999999999999ap-1));
        const double t5 = (t4 ? 1.0 : 0.0);
        const double t6 = (a0 * t5);
        const double t7 = (t6 / (0x1.999999999999ap-1));
        *(double *)(a.ptr[3] + i0 * a.P[5]) = t7;
    }
}
