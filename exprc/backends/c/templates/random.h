/* exprc random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as
 * easy as 1, 2, 3", SC'11), a counter-based generator.  Element ``idx`` of draw ``draw`` under
 * the key (seed, ctr) is a pure function of those numbers, so any loop order, thread count or
 * device gives the same bits, and a draw fused into its consumer's loop costs no memory traffic.
 * Shared by the C and CUDA targets; exprc/ops/random.py is the NumPy reference that must agree
 * bit for bit.  Only integer operations and correctly rounded + - * / sqrt on doubles are used
 * (no libm, no FMA: C is compiled in ISO mode, NVRTC with --fmad=false), which is what makes the
 * three backends agree; the log, cos and sin below are polynomials accurate to a few ulps.
 *
 * Blocks: one Philox call gives 128 bits, (a, b) = (w1:w0, w3:w2).  Element idx of a draw reads
 * block idx >> shift: 64-bit draws (float64 uniforms, integers) take a or b by idx & 1 (shift 1);
 * float32 uniforms one 32-bit word by idx & 3 (shift 2); normals are Box-Muller pairs (shift 1:
 * the radius from a, the angle from b, cos for even idx, sin for odd).
 *
 * Counter words: c0 = block bits 0-31, c1 = block bits 32-47 | sub << 16 (the sub-stream of a draw
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

/* One element's 128 random bits. */
typedef struct { uint64_t a, b; } exprc_rbits;

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

/* Block ``blk`` (sub-stream ``sub``) of a draw. */
EXPRC_INLINE exprc_rbits exprc_philox(int64_t seed, int64_t ctr, int64_t blk, uint32_t draw, uint32_t sub)
{
    const uint64_t i = (uint64_t)blk, c = (uint64_t)ctr, s = (uint64_t)seed;
    uint32_t c0 = (uint32_t)i, c1 = ((uint32_t)(i >> 32) & 0xFFFFu) | (sub << 16);
    uint32_t c2 = (draw & 0xFFFFFu) | ((uint32_t)(c >> 32) << 20), c3 = (uint32_t)c;
    uint32_t k0 = (uint32_t)s, k1 = (uint32_t)(s >> 32);
    /* ten rounds, written out: gcc vectorizes the element loop only when no loop is left inside it */
    EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND
    EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND EXPRC_PHILOX_ROUND
    exprc_rbits r = {((uint64_t)c1 << 32) | c0, ((uint64_t)c3 << 32) | c2};
    return r;
}

/* Element ``idx``'s bits computed on the spot (``shift``: log2 of the elements per block). */
EXPRC_INLINE exprc_rbits exprc_rbits_at(int64_t seed, int64_t ctr, int64_t idx, uint32_t draw, int shift)
{
    return exprc_philox(seed, ctr, idx >> shift, draw, 0u);
}

/* A double in [0, 1): 52 random bits as the mantissa of a number in [1, 2), minus 1 (exact). */
EXPRC_INLINE double exprc_unit52(uint64_t x)
{
    return exprc_u2d((x >> 12) | 0x3FF0000000000000ull) - 1.0;
}

/* A float in [0, 1) from 23 random bits, the same way. */
EXPRC_INLINE float exprc_unit23(uint32_t w)
{
    return exprc_u2f((w >> 9) | 0x3F800000u) - 1.0f;
}

/* exprc: the polynomial helpers (exprc_rlog, exprc_rcossin2pi) are spliced in here from exprc/ops/random.py */

EXPRC_INLINE double exprc_runiform(exprc_rbits r, int64_t idx)
{
    return exprc_unit52((idx & 1) ? r.b : r.a);
}

EXPRC_INLINE float exprc_runiformf(exprc_rbits r, int64_t idx)
{
    const uint64_t x = (idx & 2) ? r.b : r.a;
    return exprc_unit23((uint32_t)((idx & 1) ? x >> 32 : x));
}

/* Box-Muller: the pair (r cos t, r sin t) of one block, cos for even idx, sin for odd. */
EXPRC_INLINE double exprc_rnormal(exprc_rbits r, int64_t idx)
{
    const double u1 = 1.0 - exprc_unit52(r.a), u2 = exprc_unit52(r.b);
    double c, s;
    exprc_rcossin2pi(u2, &c, &s);
    return sqrt(-2.0 * exprc_rlog(u1)) * ((idx & 1) ? s : c);
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
EXPRC_INLINE int64_t exprc_rinteger_x(uint64_t x, int64_t low, uint64_t range)
{
    return (int64_t)((uint64_t)low + exprc_mulhi64(x, range));
}

EXPRC_INLINE int64_t exprc_rinteger(exprc_rbits r, int64_t idx, int64_t low, uint64_t range)
{
    return exprc_rinteger_x((idx & 1) ? r.b : r.a, low, range);
}

/* The number of successes in n Bernoulli(p) trials, one block (sub-stream k) per trial. */
EXPRC_INLINE int64_t exprc_rbinomial(int64_t seed, int64_t ctr, int64_t idx, uint32_t draw, int64_t n, double p)
{
    int64_t count = 0;
    for (int64_t k = 0; k < n; k++)
        count += exprc_unit52(exprc_philox(seed, ctr, idx, draw, (uint32_t)k).a) < p;
    return count;
}

#ifndef __cplusplus  /* C only (CUDA sources are C++) */
/* Batches: the contiguous loop of a kernel that draws fills one batch per draw before each run of
 * EXPRC_RBATCH elements, so that Philox runs in a loop of its own (with AVX2 four blocks per vector
 * in 64-bit lanes, one vpmuludq per product and no shuffles: gcc gets half that speed on the fused
 * loop) and a Box-Muller pair is computed once for its two elements.  The element loop then reads
 * element lo + j of the batch as x[off + j] (64-bit draws: the blocks' a, b in order are the
 * elements' words), w[off + j] (float32 uniforms: the blocks' 32-bit words in order) or z[off + j]
 * (normals).  The same bits as exprc_rbits_at and exprc_rnormal, element for element. */
#define EXPRC_RBATCH 256
typedef struct {
    int64_t off;
    union { uint64_t x[EXPRC_RBATCH + 8]; uint32_t w[2 * EXPRC_RBATCH + 16]; double z[EXPRC_RBATCH + 8]; } u;
} exprc_rbatch;

#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Blocks blk0 .. blk0 + nblk - 1 of a draw as (a, b) pairs into x. */
static void exprc_rblocks(uint64_t *restrict x, int64_t seed, int64_t ctr, int64_t blk0, int64_t nblk, uint32_t draw)
{
    int64_t k = 0;
#ifdef __AVX2__
    const uint64_t c = (uint64_t)ctr, s = (uint64_t)seed;
    const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
    const __m256i c2i = _mm256_set1_epi64x((draw & 0xFFFFFu) | ((uint32_t)(c >> 32) << 20));
    const __m256i c3i = _mm256_set1_epi64x((uint32_t)c);
    const __m256i lane = _mm256_set_epi64x(3, 2, 1, 0), lo32 = _mm256_set1_epi64x(0xFFFFFFFF);
    const __m256i mid16 = _mm256_set1_epi64x(0xFFFF);
    __m256i k0[10], k1[10];
    uint32_t kk0 = (uint32_t)s, kk1 = (uint32_t)(s >> 32);
    for (int r = 0; r < 10; r++) {
        k0[r] = _mm256_set1_epi64x(kk0);
        k1[r] = _mm256_set1_epi64x(kk1);
        kk0 += 0x9E3779B9u;
        kk1 += 0xBB67AE85u;
    }
    for (; k + 4 <= nblk; k += 4) {
        const __m256i blk = _mm256_add_epi64(_mm256_set1_epi64x(blk0 + k), lane);
        __m256i c0 = _mm256_and_si256(blk, lo32), c1 = _mm256_and_si256(_mm256_srli_epi64(blk, 32), mid16);
        __m256i c2 = c2i, c3 = c3i;
        for (int r = 0; r < 10; r++) {  /* the high lane halves hold junk: vpmuludq reads the low ones */
            const __m256i p0 = _mm256_mul_epu32(c0, m0), p1 = _mm256_mul_epu32(c2, m1);
            c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), k0[r]);
            c1 = p1;
            c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), k1[r]);
            c3 = p0;
        }
        const __m256i a = _mm256_or_si256(_mm256_slli_epi64(c1, 32), _mm256_and_si256(c0, lo32));
        const __m256i b = _mm256_or_si256(_mm256_slli_epi64(c3, 32), _mm256_and_si256(c2, lo32));
        /* unpack: (a0 b0 | a2 b2) and (a1 b1 | a3 b3); stored as (a0 b0 a1 b1) (a2 b2 a3 b3) */
        const __m256i ab02 = _mm256_unpacklo_epi64(a, b), ab13 = _mm256_unpackhi_epi64(a, b);
        _mm256_storeu_si256((__m256i *)(x + 2 * k), _mm256_permute2x128_si256(ab02, ab13, 0x20));
        _mm256_storeu_si256((__m256i *)(x + 2 * k + 4), _mm256_permute2x128_si256(ab02, ab13, 0x31));
    }
#endif
    for (; k < nblk; k++) {
        const exprc_rbits r = exprc_philox(seed, ctr, blk0 + k, draw, 0u);
        x[2 * k] = r.a;
        x[2 * k + 1] = r.b;
    }
}

/* The batch of elements lo .. lo + n - 1 (n <= EXPRC_RBATCH) of a draw of ``kind``: 1 (64 bits per
 * element), 2 (32 bits) or 3 (normals). */
static void exprc_rfill(exprc_rbatch *restrict out, int64_t seed, int64_t ctr, int64_t lo, int64_t n,
                        uint32_t draw, int kind)
{
    const int shift = kind == 2 ? 2 : 1;
    const int64_t blk0 = lo >> shift, nblk = ((lo + n - 1) >> shift) - blk0 + 1;
    out->off = lo - (blk0 << shift);
    exprc_rblocks(out->u.x, seed, ctr, blk0, nblk, draw);
    if (kind == 3) {
        uint64_t *restrict x = out->u.x;
        #pragma omp simd
        for (int64_t k = 0; k < nblk; k++) {
            const double u1 = 1.0 - exprc_unit52(x[2 * k]), u2 = exprc_unit52(x[2 * k + 1]);
            const double r = sqrt(-2.0 * exprc_rlog(u1));
            double c, s;
            exprc_rcossin2pi(u2, &c, &s);
            x[2 * k] = exprc_d2u(r * c);
            x[2 * k + 1] = exprc_d2u(r * s);
        }
    }
}
#endif
