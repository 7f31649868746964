// Activations with the bias of the product before them (Backend::activation_forward / activation_backward).
// kind: 0 = GELU (tanh approximation), 1 = ReLU.
#include "common.cuh"

#define GELU_S 0.7978845608028654f // sqrt(2 / pi)
#define GELU_A 0.044715f

// out (N,W) = act(inp (N,W) + bias (W)), n = N·W; one thread per element.
extern "C" __global__ void activation_forward(float* out, const float* inp, const float* bias, i64 n, int width, int kind) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = inp[i] + bias[i % width];
    if (kind == 0) {
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_S * (x + GELU_A * x * x * x)));
    } else {
        out[i] = fmaxf(x, 0.0f);
    }
}

// dinp (N,W) = act'(inp + bias) · dout, n = N·W; one thread per element.
// The bias gradient (Σ over rows of dinp) is column_partials' and sum_partials'.
extern "C" __global__ void activation_backward(float* dinp, const float* dout, const float* inp, const float* bias, i64 n, int width, int kind) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = inp[i] + bias[i % width], d = dout[i];
    if (kind == 0) {
        float th = tanhf(GELU_S * (x + GELU_A * x * x * x));
        float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_S * (1.0f + 3.0f * GELU_A * x * x);
        dinp[i] = d * grad;
    } else {
        dinp[i] = x > 0.0f ? d : 0.0f;
    }
}
