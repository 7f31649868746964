// Fused softmax and masked cross-entropy (Backend::crossentropy_forward /
// crossentropy_backward).
#include "common.cuh"

// probs (N,V) = softmax(logits (N,V)); losses (N) = (log Σ exp(z − max) + max
// − z[target]) · mask where mask ≠ 0, else 0; targets/mask (N).
// One warp per row.
extern "C" __global__ void crossentropy_forward(float* losses, float* probs, const float* logits, const u32* targets, const float* mask, int n, int v) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* z = logits + (i64)row * v;
    float* p = probs + (i64)row * v;
    float zmax = -INF_F;
    for (int j = lane; j < v; j += 32) zmax = fmaxf(zmax, z[j]);
    zmax = warp_max(zmax);
    float s = 0.0f;
    for (int j = lane; j < v; j += 32) {
        float e = expf(z[j] - zmax);
        p[j] = e;
        s += e;
    }
    float total = warp_sum(s);
    float inv = 1.0f / total;
    for (int j = lane; j < v; j += 32) p[j] *= inv;
    if (lane == 0) {
        float m = mask[row];
        losses[row] = m != 0.0f ? (logf(total) + zmax - z[targets[row]]) * m : 0.0f;
    }
}

// dlogits (N,V) = (probs − onehot(target)) · (mask · scale); one thread per
// element. Same operations as the CPU twin, so the same bits.
extern "C" __global__ void crossentropy_backward(float* dlogits, const float* probs, const u32* targets, const float* mask, float scale, int n, int v) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * v) return;
    int row = (int)(idx / v), j = (int)(idx % v);
    float w = mask[row] * scale;
    float onehot = (u32)j == targets[row] ? 1.0f : 0.0f;
    dlogits[idx] = (probs[idx] - onehot) * w;
}
