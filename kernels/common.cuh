// Shared by every kernel file: integer types, the dropout hash and warp
// reductions. Handed to NVRTC as the header "common.cuh".
//
// Conventions: every kernel is `extern "C"` and named after the Backend op
// it implements (or `<op>_<stage>` when an op takes several kernels). Shapes
// are in the comment above each kernel. Nothing that is summed uses atomics:
// every sum runs in a fixed order, so two runs give the same bits.
#pragma once

// Constants shared with the host code come as defines (-DNAME=value), made
// from one list in Rust (backend::KERNEL_CONSTANTS, via
// cuda::compile::defines): the CUDA backend passes them to NVRTC and the
// emulation check (tests/cuda.rs) to g++. Without them nothing compiles.
#if !defined(THREADS_PER_BLOCK) || !defined(WARPS_PER_BLOCK) || !defined(MATMUL_TILE) || \
    !defined(ROWS_PER_SUM_BLOCK) || !defined(SUM_SQUARES_CHUNK)
#error "compile the kernels with cuda::compile::defines() (THREADS_PER_BLOCK, WARPS_PER_BLOCK, MATMUL_TILE, ROWS_PER_SUM_BLOCK, SUM_SQUARES_CHUNK)"
#endif
// Row-wise kernels give each row one warp, WARPS_PER_BLOCK rows to a block
// of THREADS_PER_BLOCK threads.
static_assert(WARPS_PER_BLOCK * 32 == THREADS_PER_BLOCK, "one warp per row fills a block");

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// +infinity (NVRTC has no <math.h> INFINITY without CUDA headers).
#define INF_F __int_as_float(0x7f800000)

// rng::mix64: the SplitMix64 finalizer, bit for bit.
__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Dropout::factor for element i: the top 24 bits of mix64(key ^ mix64(i))
// as u in [0, 2^24); dropped (0) when u < threshold, else keep_scale.
// threshold = ceil(p * 2^24) and keep_scale = (float)(1 / (1 - p)) are
// computed on the host (DropoutArgs), so the mask is the CPU's exactly:
// u / 2^24 < p  <=>  u < ceil(p * 2^24) for an integer u.
__device__ __forceinline__ float dropout_factor(u64 key, u32 threshold, float keep_scale, u64 i) {
    u32 u = (u32)(mix64(key ^ mix64(i)) >> 40);
    return u < threshold ? 0.0f : keep_scale;
}

// Butterfly sums over a warp: every lane ends with the same bits (a + b ==
// b + a), in an order fixed by the lane numbers.
__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
