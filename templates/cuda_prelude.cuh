/* exprc CUDA prelude: fixed-width types, the constants C gets from <math.h>/<stdint.h>,
 * NumPy-semantics helpers (ported from c_prelude.h as __device__ functions) and the
 * deterministic block reduction.  NVRTC compiles this with no system header: the CUDA
 * math functions (exp, expf, log1p, nearbyint, isnan, ...) are built in. */
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define INT32_MIN (-2147483647 - 1)
#define INT32_MAX 2147483647
#define INT64_MIN (-9223372036854775807LL - 1)
#define INT64_MAX 9223372036854775807LL
#define INT64_C(v) v##LL
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)

#ifndef EXPRC_BLOCK
#define EXPRC_BLOCK 256
#endif
#define EXPRC_INLINE static __device__ __forceinline__

/* Floating floor division and remainder with NumPy's (Python's) semantics. */
#define EXPRC_FLOAT_HELPERS(T, S)                                                        \
EXPRC_INLINE T exprc_mod##S(T a, T b) {                                                   \
    if (b == 0) return fmod##S(a, b);                                                     \
    T m = fmod##S(a, b);                                                                  \
    if (m != 0) { if ((b < 0) != (m < 0)) m += b; }                                       \
    else m = copysign##S((T)0, b);                                                        \
    return m;                                                                             \
}                                                                                         \
EXPRC_INLINE T exprc_floordiv##S(T a, T b) {                                              \
    if (b == 0) return a / b;                                                             \
    T m = fmod##S(a, b);                                                                  \
    T d = (a - m) / b;                                                                    \
    if (m != 0 && ((b < 0) != (m < 0))) d -= 1;                                           \
    if (d != 0) { T f = floor##S(d); if (d - f > (T)0.5) f += 1; return f; }              \
    return copysign##S((T)0, a / b);                                                      \
}                                                                                         \
EXPRC_INLINE T exprc_max##S(T a, T b) { return (a != a || a > b) ? a : b; }               \
EXPRC_INLINE T exprc_min##S(T a, T b) { return (a != a || a < b) ? a : b; }               \
EXPRC_INLINE T exprc_sign##S(T x) { return x > 0 ? (T)1 : (x < 0 ? (T)-1 : x); }          \
EXPRC_INLINE T exprc_sigmoid##S(T x) {                                                    \
    T e = exp##S(-fabs##S(x));                                                            \
    return x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);                                   \
}                                                                                         \
EXPRC_INLINE T exprc_softplus##S(T x) { return fmax##S(x, (T)0) + log1p##S(exp##S(-fabs##S(x))); } \
EXPRC_INLINE T exprc_logaddexp##S(T a, T b) {                                             \
    if (a == b) return a + (T)0.6931471805599453094;  /* also +-inf */                    \
    T d = a - b;                                                                          \
    return d > 0 ? a + log1p##S(exp##S(-d)) : (d <= 0 ? b + log1p##S(exp##S(d)) : d);     \
}

EXPRC_FLOAT_HELPERS(double, )
EXPRC_FLOAT_HELPERS(float, f)

/* Integer floor division and remainder as NumPy: division by zero gives 0. */
#define EXPRC_INT_HELPERS(T, MIN)                                                         \
EXPRC_INLINE T exprc_ifloordiv_##T(T a, T b) {                                            \
    if (b == 0) return 0;                                                                 \
    if (b == -1) return a == MIN ? MIN : -a;                                              \
    T q = a / b;                                                                          \
    if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;                                     \
    return q;                                                                             \
}                                                                                         \
EXPRC_INLINE T exprc_imod_##T(T a, T b) {                                                 \
    if (b == 0 || b == -1) return 0;                                                      \
    T m = a % b;                                                                          \
    if (m != 0 && ((m < 0) != (b < 0))) m += b;                                           \
    return m;                                                                             \
}                                                                                         \
EXPRC_INLINE T exprc_ipow_##T(T a, T b) {                                                 \
    if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);                    \
    T r = 1;                                                                              \
    while (b) { if (b & 1) r = (T)((uint64_t)r * (uint64_t)a); a = (T)((uint64_t)a * (uint64_t)a); b >>= 1; } \
    return r;                                                                             \
}                                                                                         \
EXPRC_INLINE T exprc_iabs_##T(T a) { return a < 0 ? (T)(0 - (uint64_t)a) : a; }           \
EXPRC_INLINE T exprc_invert_##T(T a) { return ~a; }

EXPRC_INT_HELPERS(int32_t, INT32_MIN)
EXPRC_INT_HELPERS(int64_t, INT64_MIN)
EXPRC_INLINE uint8_t exprc_iabs_uint8_t(uint8_t a) { return a; }
EXPRC_INLINE uint8_t exprc_invert_uint8_t(uint8_t a) { return !a; }

/* The smaller of two 64-bit indices (min() on long long is not overloaded everywhere). */
EXPRC_INLINE int64_t exprc_imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Block reduction, deterministic for a given block size: a warp-shuffle tree inside each
 * warp, then warp 0 combines the per-warp results in warp order.  ``op(acc, v)`` is the
 * kernel's combine, ``init`` its identity.  Every thread of the block must call it (it
 * synchronizes); the result is valid in thread 0. */
template <typename T, typename Op>
static __device__ __forceinline__ T exprc_block_reduce(T v, T init, T *shared, Op op)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();  /* ``shared`` may still be read by a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? shared[lane] : init;
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    }
    return v;
}

/* log(1 - exp(x)) without cancellation (Maechler 2012), as in c_prelude.h. */
EXPRC_INLINE double exprc_log1mexp(double x) {
    return x > -0.693147180559945309417 ? log(-expm1(x)) : log1p(-exp(x));
}
EXPRC_INLINE float exprc_log1mexpf(float x) {
    return x > -0.693147180559945309417f ? logf(-expm1f(x)) : log1pf(-expf(x));
}
