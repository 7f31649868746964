// Fixed-order reductions: bias gradients (Backend::matmul_backward's db),
// the second stage of every per-block partial sum, and the global gradient
// norm (Backend::sum_squares). No atomics: each output is summed by one
// thread, or one block's fixed tree, in a fixed order.
#include "common.cuh"

// partial (blocks, W): partial[k, j] = Σ x[row, j] over the rows of block k,
// rows [k*rows_per_block, …) ∩ [0, N), in order; x (N,W); rows_per_block
// is ROWS_PER_SUM_BLOCK, as the CPU twin's (add_block_sums).
// Grid (blocks, ceil(W / blockDim)); one thread per (block, column).
extern "C" __global__ void column_partials(float* partial, const float* x, int n, int width, int rows_per_block) {
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= width) return;
    int r0 = blockIdx.x * rows_per_block;
    int r1 = min(r0 + rows_per_block, n);
    float s = 0.0f;
    for (int row = r0; row < r1; row++) s += x[(i64)row * width + j];
    partial[(i64)blockIdx.x * width + j] = s;
}

// out (W) += partial[0, j], then += partial[1, j], … in block order, as the
// CPU twin (add_block_sums) adds them; partial[k, j] = partial[k*stride + j].
// One thread per column.
extern "C" __global__ void sum_partials(float* out, const float* partial, int blocks, int stride, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float s = out[j];
    for (int k = 0; k < blocks; k++) s += partial[(i64)k * stride + j];
    out[j] = s;
}

// partial (ceil(N / chunk)) = Σ x² over each chunk of `chunk` elements of
// x (N), in double: each thread sums a strided slice in order, then a
// fixed shared-memory tree combines the block's THREADS_PER_BLOCK threads.
// The host adds the partials in order; chunk is SUM_SQUARES_CHUNK, as the
// CPU twin's. blockDim must be THREADS_PER_BLOCK, a power of two.
static_assert((THREADS_PER_BLOCK & (THREADS_PER_BLOCK - 1)) == 0, "sum_squares: a tree over a power of two");
extern "C" __global__ void sum_squares(double* partial, const float* x, i64 n, int chunk) {
    __shared__ double sh[THREADS_PER_BLOCK];
    i64 start = (i64)blockIdx.x * chunk;
    i64 end = min(start + (i64)chunk, n);
    double s = 0.0;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        double g = (double)x[i];
        s += g * g;
    }
    sh[threadIdx.x] = s;
    __syncthreads();
    for (unsigned half = THREADS_PER_BLOCK / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}
