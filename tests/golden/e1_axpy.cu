/* k0_mul_add: a * b + c */
struct k0_mul_add_args { char *ptr[4]; int64_t P[6]; };
extern "C" __global__ void __launch_bounds__(EXPRC_BLOCK) k0_mul_add(const k0_mul_add_args a)
{
    const int64_t n0 = a.P[1];
    const int64_t total = n0;
    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    if (a.P[0]) {
        const double *__restrict__ p0 = (const double *)a.ptr[0];
        const double *__restrict__ p1 = (const double *)a.ptr[1];
        const double *__restrict__ p2 = (const double *)a.ptr[2];
        double *__restrict__ p3 = (double *)a.ptr[3];
        for (int64_t i = first; i < total; i += step) {
            const double a0 = p0[i];
            const double a1 = p1[i];
            const double a2 = p2[i];
            const double t3 = (a0 * a1);
            const double t4 = (t3 + a2);
            p3[i] = t4;
        }
        return;
    }
    for (int64_t i = first; i < total; i += step) {
        int64_t r = i;
        const int64_t i0 = r;
        const double a0 = *(const double *)(a.ptr[0] + i0 * a.P[2]);
        const double a1 = *(const double *)(a.ptr[1] + i0 * a.P[3]);
        const double a2 = *(const double *)(a.ptr[2] + i0 * a.P[4]);
        const double t3 = (a0 * a1);
        const double t4 = (t3 + a2);
        *(double *)(a.ptr[3] + i0 * a.P[5]) = t4;
    }
}
