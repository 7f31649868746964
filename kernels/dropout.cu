// Residual add with dropout on the branch, and dropout's backward
// (Backend::residual_forward / dropout_backward). The mask is
// dropout_factor(key, …, i): the CPU's Dropout::factor bit for bit. The
// products use __fmul_rn so they are never fused into an FMA: the results
// equal the CPU's bits.
#include "common.cuh"

// out (N,W) = inp (N,W) + (out + bias (W)) · factor(i) in place (out holds
// the branch on entry), n = N·W; one thread per element. With dropout off
// the host passes threshold 0 and keep_scale 1.
extern "C" __global__ void residual_forward(float* out, const float* inp, const float* bias, i64 n, int width, u64 key, u32 threshold, float keep_scale) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = inp[i] + __fmul_rn(out[i] + bias[i % width], dropout_factor(key, threshold, keep_scale, (u64)i));
}

// dinp (N) = dout (N) · factor(i); one thread per element.
extern "C" __global__ void dropout_backward(float* dinp, const float* dout, i64 n, u64 key, u32 threshold, float keep_scale) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dinp[i] = dout[i] * dropout_factor(key, threshold, keep_scale, (u64)i);
}
