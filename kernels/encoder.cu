// Token and position embeddings (Backend::encoder_forward / encoder_backward).
#include "common.cuh"

// out (N,C) = wte[tokens[n]] + wpe[n mod T]; tokens (N), wte (V,C), wpe (T,C).
// One thread per output element.
extern "C" __global__ void encoder_forward(float* out, const u32* tokens, const float* wte, const float* wpe, int n, int t, int c) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * c) return;
    int row = (int)(idx / c), j = (int)(idx % c);
    out[idx] = wte[(i64)tokens[row] * c + j] + wpe[(i64)(row % t) * c + j];
}

// dwte (V,C) += Σ_{n: tokens[n] = v} dout[n]; dout (N,C), tokens (N).
// One thread per (v, j) walks every row in order and adds the rows holding
// token v: the same additions in the same order as the CPU twin, no atomics.
// The block's threads share v's column range; tokens are staged in shared memory.
#define ENC_TOKENS_TILE 1024
extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout, const u32* tokens, int n, int v, int c) {
    __shared__ u32 tok[ENC_TOKENS_TILE];
    int j = blockIdx.x * blockDim.x + threadIdx.x; // channel
    int vocab = blockIdx.y;                        // token id
    float acc = (j < c) ? dwte[(i64)vocab * c + j] : 0.0f;
    for (int r0 = 0; r0 < n; r0 += ENC_TOKENS_TILE) {
        int len = min(ENC_TOKENS_TILE, n - r0);
        __syncthreads();
        for (int r = threadIdx.x; r < len; r += blockDim.x) tok[r] = tokens[r0 + r];
        __syncthreads();
        if (j < c) {
            for (int r = 0; r < len; r++) {
                if (tok[r] == (u32)vocab) acc += dout[(i64)(r0 + r) * c + j];
            }
        }
    }
    if (j < c) dwte[(i64)vocab * c + j] = acc;
}

// dwpe (T,C) += Σ_{n: n mod T = pos} dout[n]; one thread per (pos, j),
// rows pos, T + pos, 2T + pos, … in order, as the CPU twin adds them.
extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, int n, int t, int c) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)t * c) return;
    int pos = (int)(idx / c), j = (int)(idx % c);
    float acc = dwpe[idx];
    for (int row = pos; row < n; row += t) acc += dout[(i64)row * c + j];
    dwpe[idx] = acc;
}

// The encoder with K soft input embeddings after each sequence's first
// token, the tokens after them keeping their own positions: at position
// p = n mod T, out[n] = wte[tokens[n]] + wpe[p] for p = 0, soft[p - 1] for
// 1 <= p <= K, wte[tokens[n]] + wpe[p - K] after. soft (K,C), out (N,C).
// One thread per output element.
extern "C" __global__ void soft_prompt_forward(float* out, const u32* tokens, const float* soft, const float* wte, const float* wpe, int n, int t, int c, int k) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * c) return;
    int row = (int)(idx / c), j = (int)(idx % c), p = row % t;
    if (p >= 1 && p <= k) {
        out[idx] = soft[(i64)(p - 1) * c + j];
        return;
    }
    int pos = p == 0 ? 0 : p - k;
    out[idx] = wte[(i64)tokens[row] * c + j] + wpe[(i64)pos * c + j];
}

// dsoft (K,C) += Σ dout[n] over the rows n at position n mod T = i + 1;
// one thread per (i, j), rows in order, as the CPU twin adds them.
extern "C" __global__ void soft_prompt_backward(float* dsoft, const float* dout, int n, int t, int c, int k) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)k * c) return;
    int i = (int)(idx / c), j = (int)(idx % c);
    float acc = dsoft[idx];
    for (int row = i + 1; row < n; row += t) acc += dout[(i64)row * c + j];
    dsoft[idx] = acc;
}
