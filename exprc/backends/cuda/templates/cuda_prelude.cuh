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

/* exprc: numpy_semantics.h is spliced in here by the renderer */

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
