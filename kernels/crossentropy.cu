// Fused softmax and masked cross-entropy (Backend::crossentropy_forward /
// crossentropy_backward).
#include "common.cuh"

// probs (N,V) = softmax(logits (N,V)); losses (N) = −log probs[target] ·
// mask where mask ≠ 0, else 0; targets/mask (N). The target's exponential is
// summed apart from the others, and the loss is log1p(others) when the
// target is the largest logit: a confident row keeps its loss instead of
// log(1) = 0. One warp per row.
extern "C" __global__ void crossentropy_forward(float* losses, float* probs, const float* logits, const u32* targets, const float* mask, int n, int v) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* z = logits + (i64)row * v;
    float* p = probs + (i64)row * v;
    u32 t = targets[row];
    float zmax = -INF_F;
    for (int j = lane; j < v; j += 32) zmax = fmaxf(zmax, z[j]);
    zmax = warp_max(zmax);
    float s = 0.0f;
    for (int j = lane; j < v; j += 32) {
        float e = expf(z[j] - zmax);
        p[j] = e;
        if ((u32)j != t) s += e;
    }
    float others = warp_sum(s);
    float total = expf(z[t] - zmax) + others;
    float inv = 1.0f / total;
    for (int j = lane; j < v; j += 32) p[j] *= inv;
    if (lane == 0) {
        float m = mask[row];
        float nll = z[t] == zmax ? log1pf(others) : logf(total) + zmax - z[t];
        losses[row] = m != 0.0f ? nll * m : 0.0f;
    }
}

// dlogits (N,V) = (probs − onehot(target)) · (mask · scale), the target's as
// −Σ_{j≠t} probs_j (summed in index order) so that it keeps its size when
// probs[target] rounds to 1; one thread per element. Same operations as the
// CPU twin, so the same bits.
extern "C" __global__ void crossentropy_backward(float* dlogits, const float* probs, const u32* targets, const float* mask, float scale, int n, int v) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * v) return;
    int row = (int)(idx / v), j = (int)(idx % v);
    float w = mask[row] * scale;
    u32 t = targets[row];
    const float* p = probs + (i64)row * v;
    if ((u32)j != t) {
        dlogits[idx] = p[j] * w;
        return;
    }
    float others = 0.0f;
    for (int k = 0; k < v; k++)
        if ((u32)k != t) others += p[k];
    dlogits[idx] = -others * w;
}
