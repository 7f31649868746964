// Test harness only: emulates the CUDA built-ins the kernels use so that
// kernels/*.cu compile as C++ and run on the CPU (see check.cpp).
// A tiny CPU emulator for the ebb kernels: blocks run one after another,
// a block's threads as std::threads; __syncthreads and warp shuffles via barriers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <barrier>
#include <vector>
#include <memory>
#include <algorithm>
#include <cstdio>
#include <bit>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
static std::unique_ptr<std::barrier<>> block_bar;
static std::unique_ptr<std::barrier<>> warp_bar[32];
static float warp_vals[32][32];
inline void __syncthreads() { block_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float x, int o) {
    int t = threadIdx.x, w = t / 32, lane = t % 32;
    warp_vals[w][lane] = x;
    warp_bar[w]->arrive_and_wait();
    float r = warp_vals[w][lane ^ o];
    warp_bar[w]->arrive_and_wait();
    return r;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
#include <math.h>

template <class F, class... A> void launch(F f, dim3 grid, dim3 block, A... args) {
    blockDim = block; gridDim = grid;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            block_bar = std::make_unique<std::barrier<>>(block.x);
            for (int w = 0; w < 32; w++) warp_bar[w] = std::make_unique<std::barrier<>>(32);
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < block.x; t++)
                ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; f(args...); });
            for (auto& t : ts) t.join();
        }
}
