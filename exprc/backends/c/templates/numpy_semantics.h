/* NumPy semantics in C expressions, shared by the C and CUDA preludes (each defines
 * EXPRC_INLINE first and splices this file in where it says so). */

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
/* sign: x + 0 makes sign(-0.0) +0.0 as NumPy's (and keeps NaN); without -ffast-math it is not folded. */ \
EXPRC_INLINE T exprc_sign##S(T x) { return x > 0 ? (T)1 : (x < 0 ? (T)-1 : x + (T)0); }   \
/* Branch-free (selects, not jumps), so loops calling these still vectorize. */          \
EXPRC_INLINE T exprc_sigmoid##S(T x) {                                                    \
    T e = exp##S(-fabs##S(x));                                                            \
    T r = (T)1 / ((T)1 + e);                                                              \
    return x >= 0 ? r : e * r;                                                            \
}                                                                                         \
/* (x > 0 ? x : 0), not fmax: gcc does not vectorize fmax without -ffinite-math-only, and a      \
 * scalar softplus made every loop holding one 4x slower; the values are the same. */           \
EXPRC_INLINE T exprc_softplus##S(T x) { return (x > 0 ? x : (T)0) + log1p##S(exp##S(-fabs##S(x))); } \
/* (a + b) - fl(a + b), exactly: Knuth's TwoSum; IEEE arithmetic (fast_math folds it to 0). */  \
EXPRC_INLINE T exprc_two_sum_err##S(T a, T b) {                                           \
    T s = a + b, bb = s - a;                                                              \
    return (a - (s - bb)) + (b - bb);                                                     \
}                                                                                         \
EXPRC_INLINE T exprc_logaddexp##S(T a, T b) {                                             \
    T d = a - b;                                                                          \
    T r = (d > 0 ? a : b) + log1p##S(exp##S(-fabs##S(d)));                                \
    r = a == b ? a + (T)0.6931471805599453094 : r;  /* also +-inf */                      \
    return (d != d && a != b) ? d : r;  /* NaN operands give NaN */                       \
}

EXPRC_FLOAT_HELPERS(double, )
EXPRC_FLOAT_HELPERS(float, f)

/* a b - fl(a b), exactly where a b is finite and no part underflows: one fused multiply-add where the
 * target has one (x86-64 with FMA3 under -march=native, CUDA: --fmad=false contracts nothing, fma() is
 * still one instruction), else Dekker's product of Veltkamp's halves (2**27 + 1; float: 2**12 + 1),
 * the 17 operations the stability rules once spelled out in the graph (the Gaussian's
 * exp(-x**2/2) (1 + lo) spent 25% of its time there), exact only for factors below 2**996 (float:
 * 2**100), where the split does not overflow; the NumPy op splits the significands instead. */
#if defined(__CUDACC__) || defined(__FMA__)
EXPRC_INLINE double exprc_two_prod_err(double a, double b) { return fma(a, b, -(a * b)); }
EXPRC_INLINE float exprc_two_prod_errf(float a, float b) { return fmaf(a, b, -(a * b)); }
#else
#define EXPRC_TWO_PROD_ERR(T, S, SPLIT)                                                   \
EXPRC_INLINE T exprc_two_prod_err##S(T a, T b) {                                          \
    T p = a * b, ta = a * (T)SPLIT, tb = b * (T)SPLIT;                                    \
    T ah = ta - (ta - a), al = a - ah, bh = tb - (tb - b), bl = b - bh;                   \
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl;                                 \
}
EXPRC_TWO_PROD_ERR(double, , 134217729.0)
EXPRC_TWO_PROD_ERR(float, f, 4097.0f)
#endif

/* tanh(x) = -t / (2 + t) with t = expm1(-2|x|), sign of x: a loop of libmvec's vector expm1 and a
 * division takes 3/5 of the time of one calling the C library's tanh, which gcc does not vectorize
 * (16384 doubles: 17.6 against 31 us), within 3.4 ulps (the C library's: 1.2), as libmvec's other
 * functions are within 4.  -2|x| is exact, t lies in [-1, 0], 2 + t in [1, 2]; +-0, +-inf and NaN
 * come out as tanh gives them.  With precise math (no libmvec) the C library's tanh is kept, and CUDA
 * (NVRTC defines __CUDACC__) keeps its own. */
#if defined(EXPRC_PRECISE_MATH) || defined(__CUDACC__)
EXPRC_INLINE double exprc_tanh(double x) { return tanh(x); }
EXPRC_INLINE float exprc_tanhf(float x) { return tanhf(x); }
#else
EXPRC_INLINE double exprc_tanh(double x) { double t = expm1(-2.0 * fabs(x)); return copysign(-t / (2.0 + t), x); }
EXPRC_INLINE float exprc_tanhf(float x) { float t = expm1f(-2.0f * fabsf(x)); return copysignf(-t / (2.0f + t), x); }
#endif

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

/* log(1 - exp(x)) without cancellation (Maechler 2012): log(-expm1(x)) near 0,
 * log1p(-exp(x)) below -ln 2; NaN for x > 0 and -inf at 0, as the naive form. */
EXPRC_INLINE double exprc_log1mexp(double x) {
    return x > -0.693147180559945309417 ? log(-expm1(x)) : log1p(-exp(x));
}
EXPRC_INLINE float exprc_log1mexpf(float x) {
    return x > -0.693147180559945309417f ? logf(-expm1f(x)) : log1pf(-expf(x));
}

/* erfcx(x) = exp(x*x) erfc(x), finite where erfc underflows (x > 26.5).  Below x = 10 it is
 * exp(h) erfc(x) (1 + l) with x*x = h + l exactly (the rounding of x*x would cost x*x ulps);
 * from 10 up, the asymptotic series 1/(x sqrt(pi)) sum_k (-1)^k (2k-1)!! / (2x^2)^k to k = 14
 * (the next term is 2e-19 of the first at x = 10; ops/elemwise.py's _erfcx is the same in NumPy).
 * Branch-free, so loops calling it still vectorize; float32 rounds the float64 value. */
EXPRC_INLINE double exprc_erfcx(double x) {
    const double h = x * x;
    const double l = fma(x, x, -h);
    const double p = exp(h) * erfc(x);
    const double c = p + p * l;  /* (NaN where p is inf: then p) */
    const double v = 0.5 / h;
    double s = 213458046676875.0;
    s = s * v - 7905853580625.0; s = s * v + 316234143225.0; s = s * v - 13749310575.0;
    s = s * v + 654729075.0; s = s * v - 34459425.0; s = s * v + 2027025.0; s = s * v - 135135.0;
    s = s * v + 10395.0; s = s * v - 945.0; s = s * v + 105.0; s = s * v - 15.0; s = s * v + 3.0;
    s = s * v - 1.0; s = s * v + 1.0;
    return x >= 10.0 ? 0.56418958354775628695 / x * s : (c == c ? c : p);
}
EXPRC_INLINE float exprc_erfcxf(float x) { return (float)exprc_erfcx((double)x); }
