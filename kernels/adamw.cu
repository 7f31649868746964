// AdamW over a run of the flat buffers (Backend::adamw_update): the host
// launches it once per run of adjacent tensors sharing a weight decay.
// Every constant is computed on the host in f64 and rounded to f32 as the
// CPU twin does, and the explicit _rn intrinsics keep the compiler from
// fusing a multiply and an add, so each element gets the CPU's bits.
#include "common.cuh"

// params/grads/m/v (N) over [0, N) of this run; one thread per element:
//   g = grad · grad_scale; m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g·g
//   p = p · decay − lr · (m·bc1) / (sqrt(v·bc2) + eps),  decay = 1 − lr·wd
extern "C" __global__ void adamw_update(float* params, const float* grads, float* m, float* v, i64 n,
                                        float b1, float b2, float one_b1, float one_b2, float lr, float eps,
                                        float grad_scale, float bc1, float bc2, float decay) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = __fmul_rn(grads[i], grad_scale);
    float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_b1, g));
    float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_b2, g), g));
    m[i] = mi;
    v[i] = vi;
    float mhat = __fmul_rn(mi, bc1);
    float vhat = __fmul_rn(vi, bc2);
    float step = __fdiv_rn(__fmul_rn(lr, mhat), __fadd_rn(__fsqrt_rn(vhat), eps));
    params[i] = __fsub_rn(__fmul_rn(params[i], decay), step);
}
