// Causal multi-head self-attention (Backend::attention_forward / attention_backward).
// qkv (B,T,3C): q, k, v side by side in each row, head h in columns
// [h*hs, (h+1)*hs) of each third; hs = C / H. att, att_drop, datt (B,H,T,T);
// element (bh, i, j) of those is at bh*T*T + i*T + j, which is also its
// dropout index. out/dout (B,T,C).
#include "common.cuh"

// att (B,H,T,T): att[bh,i,j] = scale · q[b,i,h] · k[b,j,h] for j ≤ i, 0 above
// the diagonal. One thread per element.
extern "C" __global__ void attention_forward_scores(float* att, const float* qkv, int b, int t, int c, int h, float scale) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)b * h * t * t) return;
    int j = (int)(idx % t), i = (int)((idx / t) % t), bh = (int)(idx / ((i64)t * t));
    if (j > i) {
        att[idx] = 0.0f;
        return;
    }
    int bi = bh / h, hi = bh % h, hs = c / h;
    const float* q = qkv + ((i64)bi * t + i) * 3 * c + hi * hs;
    const float* k = qkv + ((i64)bi * t + j) * 3 * c + c + hi * hs;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += q[d] * k[d];
    att[idx] = s * scale;
}

// In place over att (B,H,T,T): each row i becomes softmax(att[bh,i,0..=i]),
// zeros above the diagonal; with dropout, att_drop = att · factor(index) over
// the whole row (zeros stay zeros). One warp per row (bh, i).
extern "C" __global__ void attention_forward_softmax(float* att, float* att_drop, int rows, int t, int dropout, u64 key, u32 threshold, float keep_scale) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32; // = bh*T + i
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int i = row % t;
    float* a = att + (i64)row * t;
    float m = -INF_F;
    for (int j = lane; j <= i; j += 32) m = fmaxf(m, a[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j <= i; j += 32) {
        float e = expf(a[j] - m);
        a[j] = e;
        s += e;
    }
    float inv = 1.0f / warp_sum(s);
    for (int j = lane; j < t; j += 32) a[j] = j <= i ? a[j] * inv : 0.0f;
    if (dropout) {
        float* d = att_drop + (i64)row * t;
        for (int j = lane; j < t; j += 32) d[j] = a[j] * dropout_factor(key, threshold, keep_scale, (u64)row * t + j);
    }
}

// out[b,i,h] (hs) = Σ_{j ≤ i} probs[bh,i,j] · v[b,j,h]; probs is att_drop
// with dropout, att without. One thread per output element of out (B,T,C).
extern "C" __global__ void attention_forward_values(float* out, const float* probs, const float* qkv, int b, int t, int c, int h) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)b * t * c) return;
    int col = (int)(idx % c), i = (int)((idx / c) % t), bi = (int)(idx / ((i64)t * c));
    int hs = c / h, hi = col / hs, d = col % hs;
    const float* p = probs + (((i64)bi * h + hi) * t + i) * t;
    const float* v = qkv + (i64)bi * t * 3 * c + 2 * c + hi * hs + d;
    float s = 0.0f;
    for (int j = 0; j <= i; j++) s += p[j] * v[(i64)j * 3 * c];
    out[idx] = s;
}

// datt (B,H,T,T) = ∂L/∂(probabilities before dropout): for j ≤ i,
// dy[b,i,h] · v[b,j,h] times factor(index) with dropout; 0 above the
// diagonal. One thread per element.
extern "C" __global__ void attention_backward_dprobs(float* datt, const float* dout, const float* qkv, int b, int t, int c, int h, int dropout, u64 key, u32 threshold, float keep_scale) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)b * h * t * t) return;
    int j = (int)(idx % t), i = (int)((idx / t) % t), bh = (int)(idx / ((i64)t * t));
    if (j > i) {
        datt[idx] = 0.0f;
        return;
    }
    int bi = bh / h, hi = bh % h, hs = c / h;
    const float* dy = dout + ((i64)bi * t + i) * c + hi * hs;
    const float* v = qkv + ((i64)bi * t + j) * 3 * c + 2 * c + hi * hs;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += dy[d] * v[d];
    datt[idx] = dropout ? s * dropout_factor(key, threshold, keep_scale, (u64)idx) : s;
}

// In place over datt (B,H,T,T): through the softmax, row by row:
// ds[j] = p[j] · (dp[j] − Σ_{j' ≤ i} p[j'] dp[j']) · scale for j ≤ i, 0 above;
// p = att (before dropout). One warp per row (bh, i).
extern "C" __global__ void attention_backward_dscores(float* datt, const float* att, int rows, int t, float scale) {
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int i = row % t;
    float* ds = datt + (i64)row * t;
    const float* p = att + (i64)row * t;
    float s = 0.0f;
    for (int j = lane; j <= i; j += 32) s += ds[j] * p[j];
    float dp = warp_sum(s);
    for (int j = lane; j < t; j += 32) ds[j] = j <= i ? p[j] * (ds[j] - dp) * scale : 0.0f;
}

// dqkv (B,T,3C), overwritten; ds = datt after attention_backward_dscores,
// pd = att_drop with dropout, att without; one thread per (b, i, column):
//   dq[b,i,h] = Σ_{j ≤ i} ds[bh,i,j] · k[b,j,h]
//   dk[b,i,h] = Σ_{j ≥ i} ds[bh,j,i] · q[b,j,h]
//   dv[b,i,h] = Σ_{j ≥ i} pd[bh,j,i] · dy[b,j,h]
extern "C" __global__ void attention_backward_dqkv(float* dqkv, const float* ds, const float* pd, const float* dout, const float* qkv, int b, int t, int c, int h) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)b * t * c) return;
    int col = (int)(idx % c), i = (int)((idx / c) % t), bi = (int)(idx / ((i64)t * c));
    int hs = c / h, hi = col / hs;
    i64 bh_tt = ((i64)bi * h + hi) * t * t;
    const float* row0 = qkv + (i64)bi * t * 3 * c + col; // q of row 0 at this column
    i64 stride = 3 * (i64)c;
    float dq = 0.0f, dk = 0.0f, dv = 0.0f;
    for (int j = 0; j <= i; j++) dq += ds[bh_tt + (i64)i * t + j] * row0[(i64)j * stride + c];
    for (int j = i; j < t; j++) {
        dk += ds[bh_tt + (i64)j * t + i] * row0[(i64)j * stride];
        dv += pd[bh_tt + (i64)j * t + i] * dout[((i64)bi * t + j) * c + col];
    }
    float* o = dqkv + ((i64)bi * t + i) * stride + col;
    o[0] = dq;
    o[c] = dk;
    o[2 * c] = dv;
}
