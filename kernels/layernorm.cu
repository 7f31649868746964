// LayerNorm over the last dimension (Backend::layernorm_forward / layernorm_backward).
#include "common.cuh"

// out (N,C) = (inp - mean) * rstd * w + b; inp (N,C), mean/rstd (N), w/b (C).
// One warp per row.
extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b, int n, int c) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* x = inp + (i64)row * c;
    float s = 0.0f;
    for (int j = lane; j < c; j += 32) s += x[j];
    float m = warp_sum(s) / (float)c;
    float var = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float d = x[j] - m;
        var += d * d;
    }
    var = warp_sum(var) / (float)c;
    float r = 1.0f / sqrtf(var + 1e-5f);
    float* o = out + (i64)row * c;
    for (int j = lane; j < c; j += 32) o[j] = (x[j] - m) * r * w[j] + b[j];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// dinp (N,C) (+)= rstd * (dout*w - mean(dout*w) - xhat * mean(dout*w*xhat)),
// xhat = (inp - mean) * rstd; dout/inp (N,C), mean/rstd (N), w (C).
// One warp per row. The parameter gradients are layernorm_backward_partials'.
extern "C" __global__ void layernorm_backward(float* dinp, int accumulate, const float* dout, const float* inp, const float* w, const float* mean, const float* rstd, int n, int c) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* x = inp + (i64)row * c;
    const float* d = dout + (i64)row * c;
    float m = mean[row], r = rstd[row];
    float dw_sum = 0.0f, dw_xhat_sum = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float dw = d[j] * w[j];
        dw_sum += dw;
        dw_xhat_sum += dw * ((x[j] - m) * r);
    }
    float mean_dxhat = warp_sum(dw_sum) / (float)c;
    float mean_dxhat_xhat = warp_sum(dw_xhat_sum) / (float)c;
    float* di = dinp + (i64)row * c;
    for (int j = lane; j < c; j += 32) {
        float xhat = (x[j] - m) * r;
        float g = r * (d[j] * w[j] - mean_dxhat - xhat * mean_dxhat_xhat);
        di[j] = accumulate ? di[j] + g : g;
    }
}

// partial (blocks, 2C): row block k (rows [k*rows_per_block, …) ∩ [0, N))
// writes Σ xhat*dout into partial[k, 0..C) and Σ dout into partial[k, C..2C),
// each column summed over its rows in order. dout/inp (N,C), mean/rstd (N).
// Grid (blocks, ceil(C / blockDim)); one thread per (block, column).
// sum_partials then adds the blocks in order into dw and db.
extern "C" __global__ void layernorm_backward_partials(float* partial, const float* dout, const float* inp, const float* mean, const float* rstd, int n, int c, int rows_per_block) {
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c) return;
    int r0 = blockIdx.x * rows_per_block;
    int r1 = min(r0 + rows_per_block, n);
    float pw = 0.0f, pb = 0.0f;
    for (int row = r0; row < r1; row++) {
        float d = dout[(i64)row * c + j];
        float xhat = (inp[(i64)row * c + j] - mean[row]) * rstd[row];
        pw += xhat * d;
        pb += d;
    }
    partial[(i64)blockIdx.x * 2 * c + j] = pw;
    partial[(i64)blockIdx.x * 2 * c + c + j] = pb;
}
