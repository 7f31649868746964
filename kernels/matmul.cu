// Matrix products (Backend::matmul_forward / matmul_backward), fp32 with
// fp32 accumulation, tiled through shared memory.
#include "common.cuh"

#define TILE MATMUL_TILE // output tile: TILE x TILE per block
#define TK 16             // reduction slice staged in shared memory per step
#define MICRO 4           // each of the 16x16 threads computes MICRO x MICRO outputs
static_assert(THREADS_PER_BLOCK == 256 && TILE == 16 * MICRO, "matmul: 16x16 threads, MICRO x MICRO outputs each");

// out (M,N) (+)= A (M,K) · B (K,N) [+ bias (N)], out row-major (row stride N).
// A(i,k) = a[i*a_rs + k*a_cs] and B(k,j) = b[k*b_rs + j*b_cs], so one kernel
// serves every product of the layer:
//   forward   out (N,OC)  = inp (N,C) · w (OC,C)ᵀ + b   a = inp (C,1),  b = w (1,C)
//   backward  dinp (N,C) (+)= dout (N,OC) · w (OC,C)    a = dout (OC,1), b = w (C,1)
//   backward  dw (OC,C)  += dout (N,OC)ᵀ · inp (N,C)    a = dout (1,OC), b = inp (C,1)
// Grid (ceil(N / TILE), ceil(M / TILE)), 256 (THREADS_PER_BLOCK) threads. Each output is one
// thread's sum over k in increasing order, so the result has fixed bits.
extern "C" __global__ void matmul(float* out, const float* a, i64 a_rs, i64 a_cs, const float* b, i64 b_rs, i64 b_cs,
                                  const float* bias, int has_bias, int m, int n, int k, int accumulate) {
    __shared__ float as[TK][TILE]; // as[kk][i] = A(i0 + i, k0 + kk)
    __shared__ float bs[TK][TILE]; // bs[kk][j] = B(k0 + kk, j0 + j)
    int tid = threadIdx.x;
    int tx = tid % 16, ty = tid / 16;
    int i0 = blockIdx.y * TILE, j0 = blockIdx.x * TILE;
    float acc[MICRO][MICRO];
    for (int r = 0; r < MICRO; r++)
        for (int s = 0; s < MICRO; s++) acc[r][s] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += TK) {
        // Stage the slices; consecutive threads read consecutive addresses
        // whichever of the two strides is the unit one.
        for (int e = tid; e < TILE * TK; e += THREADS_PER_BLOCK) {
            int i, kk;
            if (a_cs == 1) { i = e / TK; kk = e % TK; } else { kk = e / TILE; i = e % TILE; }
            int gi = i0 + i, gk = k0 + kk;
            as[kk][i] = (gi < m && gk < k) ? a[gi * a_rs + gk * a_cs] : 0.0f;
        }
        for (int e = tid; e < TILE * TK; e += THREADS_PER_BLOCK) {
            int j, kk;
            if (b_cs == 1) { kk = e / TILE; j = e % TILE; } else { j = e / TK; kk = e % TK; }
            int gj = j0 + j, gk = k0 + kk;
            bs[kk][j] = (gj < n && gk < k) ? b[gk * b_rs + gj * b_cs] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TK; kk++) {
            float ar[MICRO], br[MICRO];
            for (int r = 0; r < MICRO; r++) ar[r] = as[kk][ty + 16 * r];
            for (int s = 0; s < MICRO; s++) br[s] = bs[kk][tx + 16 * s];
            for (int r = 0; r < MICRO; r++)
                for (int s = 0; s < MICRO; s++) acc[r][s] += ar[r] * br[s];
        }
        __syncthreads();
    }

    for (int r = 0; r < MICRO; r++) {
        int i = i0 + ty + 16 * r;
        if (i >= m) continue;
        for (int s = 0; s < MICRO; s++) {
            int j = j0 + tx + 16 * s;
            if (j >= n) continue;
            float v = acc[r][s];
            if (has_bias) v += bias[j];
            float* o = out + (i64)i * n + j;
            *o = accumulate ? *o + v : v;
        }
    }
}
