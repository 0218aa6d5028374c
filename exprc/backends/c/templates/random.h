/* exprc random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as
 * easy as 1, 2, 3", SC'11), a counter-based generator.  Element ``idx`` of draw ``draw`` under
 * the key (seed, ctr) is a pure function of those numbers, so any loop order, thread count or
 * device gives the same bits, and a draw fused into its consumer's loop costs no memory traffic.
 * Shared by the C and CUDA targets; exprc/ops/random.py is the NumPy reference that must agree
 * bit for bit.  Only integer operations and correctly rounded + - * / sqrt on doubles are used
 * (no libm, no FMA: C is compiled in ISO mode, NVRTC with --fmad=false), which is what makes the
 * three backends agree; the log and cos below are polynomials accurate to a few ulps.
 *
 * Counter words: c0 = idx bits 0-31, c1 = idx bits 32-47 | sub << 16 (the sub-stream of a draw
 * that needs several blocks per element), c2 = draw (20 bits) | ctr bits 32-43 << 20,
 * c3 = ctr bits 0-31.  Key: the seed's two halves. */
#if defined(__CUDACC_RTC__)
EXPRC_INLINE uint64_t exprc_d2u(double x) { return (uint64_t)__double_as_longlong(x); }
EXPRC_INLINE double exprc_u2d(uint64_t x) { return __longlong_as_double((long long)x); }
EXPRC_INLINE float exprc_u2f(uint32_t x) { return __uint_as_float(x); }
#else
EXPRC_INLINE uint64_t exprc_d2u(double x) { union { double d; uint64_t u; } v; v.d = x; return v.u; }
EXPRC_INLINE double exprc_u2d(uint64_t x) { union { double d; uint64_t u; } v; v.u = x; return v.d; }
EXPRC_INLINE float exprc_u2f(uint32_t x) { union { float f; uint32_t u; } v; v.u = x; return v.f; }
#endif

typedef struct { uint32_t w0, w1, w2, w3; } exprc_rblock;

/* One Philox round (the 32x32 -> 64-bit products are a vector multiply on AVX2), then the Weyl key bump. */
#define EXPRC_PHILOX_ROUND                                                                          \
    {                                                                                               \
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;            \
        c0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;                                                        \
        c1 = (uint32_t)p1;                                                                          \
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;                                                        \
        c3 = (uint32_t)p0;                                                                          \
        k0 += 0x9E3779B9u;                                                                          \
        k1 += 0xBB67AE85u;                                                                          \
    }

EXPRC_INLINE exprc_rblock exprc_philox(int64_t seed, int64_t ctr, int64_t idx, uint32_t draw, uint32_t sub)
{
    const uint64_t i = (uint64_t)idx, c = (uint64_t)ctr, s = (uint64_t)seed;
    uint32_t c0 = (uint32_t)i, c1 = ((uint32_t)(i >> 32) & 0xFFFFu) | (sub << 16);
    uint32_t c2 = (draw & 0xFFFFFu) | ((uint32_t)(c >> 32) << 20), c3 = (uint32_t)c;
    uint32_t k0 = (uint32_t)s, k1 = (uint32_t)(s >> 32);
    /* ten rounds, written out: gcc vectorizes the element loop only when no loop is left inside it */
    EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND
    EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND
    exprc_rblock b = {c0, c1, c2, c3};
    return b;
}

/* A double in [0, 1): 52 random bits as the mantissa of a number in [1, 2), minus 1 (exact). */
EXPRC_INLINE double exprc_unit52(uint32_t lo, uint32_t hi)
{
    const uint64_t x = ((uint64_t)hi << 32) | lo;
    return exprc_u2d((x >> 12) | 0x3FF0000000000000ull) - 1.0;
}

EXPRC_INLINE double exprc_runiform(exprc_rblock b) { return exprc_unit52(b.w0, b.w1); }

/* A float in [0, 1) from 23 random bits, the same way. */
EXPRC_INLINE float exprc_unit23(uint32_t w)
{
    return exprc_u2f((w >> 9) | 0x3F800000u) - 1.0f;
}

/* exprc: the polynomial helpers (exprc_rlog, exprc_rcos2pi) are spliced in here from exprc/ops/random.py */

/* Box-Muller: one standard normal from one block. */
EXPRC_INLINE double exprc_rnormal(exprc_rblock b)
{
    const double u1 = 1.0 - exprc_unit52(b.w0, b.w1), u2 = exprc_unit52(b.w2, b.w3);
    return sqrt(-2.0 * exprc_rlog(u1)) * exprc_rcos2pi(u2);
}

/* The high 64 bits of the 128-bit product x * r, from 32-bit limbs (no __int128 on every target). */
EXPRC_INLINE uint64_t exprc_mulhi64(uint64_t x, uint64_t r)
{
    const uint64_t xl = x & 0xFFFFFFFFu, xh = x >> 32, rl = r & 0xFFFFFFFFu, rh = r >> 32;
    const uint64_t ll = xl * rl, lh = xl * rh, hl = xh * rl, hh = xh * rh;
    const uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFu) + (hl & 0xFFFFFFFFu);
    return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

/* An integer in [low, low + range) (Lemire's multiply-shift on 64 random bits; the bias is below
 * range / 2**64). */
EXPRC_INLINE int64_t exprc_rinteger(exprc_rblock b, int64_t low, uint64_t range)
{
    return (int64_t)((uint64_t)low + exprc_mulhi64(((uint64_t)b.w1 << 32) | b.w0, range));
}

/* The number of successes in n Bernoulli(p) trials, one block (sub-stream k) per trial. */
EXPRC_INLINE int64_t exprc_rbinomial(int64_t seed, int64_t ctr, int64_t idx, uint32_t draw, int64_t n, double p)
{
    int64_t count = 0;
    for (int64_t k = 0; k < n; k++) {
        const exprc_rblock b = exprc_philox(seed, ctr, idx, draw, (uint32_t)k);
        count += exprc_unit52(b.w0, b.w1) < p;
    }
    return count;
}
