//! The machine's ceilings, measured: how fast could a training step be?
//!
//! - The f32 FMA peak: every thread of the pool runs independent fused
//!   multiply-adds on full vector registers, nothing else.
//! - The matrix-product library (`gemm`, as the CPU backend calls it) on a
//!   large square product, its best case.
//! - The same library on exactly the products of one training step of a
//!   bench config (forward, both backward products, attention per head):
//!   the step's time if everything but its products were free.

use std::time::Instant;

use super::BenchConfig;

/// Measured ceilings for one config on the current rayon pool.
#[derive(Clone, Debug)]
pub struct Ceilings {
    pub threads: usize,
    /// f32 FMA peak, GFLOP/s.
    pub fma_gflops: f64,
    /// `gemm` on a 1024³ product, GFLOP/s.
    pub square_gflops: f64,
    /// `gemm` on the step's own products: GFLOP/s, and ms per step.
    pub step_products_gflops: f64,
    pub step_products_ms: f64,
}

/// Twelve independent FMA chains on 512-bit registers (two FMA ports with a
/// four-cycle latency need at least eight to stay busy). Returns the sum, so
/// the work cannot be optimized away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

/// The same on 256-bit registers, for CPUs without AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    acc.iter().map(|&r| {
        // SAFETY: `lanes` holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), r) };
        lanes.iter().sum::<f32>()
    }).sum()
}

/// FLOPs of `iters` iterations of the widest FMA loop this CPU has, and the loop.
fn fma_loop() -> Option<(f64, fn(u64) -> f32)> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature is present.
            return Some((12.0 * 16.0 * 2.0, |n| unsafe { fma_chains_avx512(n) }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features are present.
            return Some((12.0 * 8.0 * 2.0, |n| unsafe { fma_chains_avx2(n) }));
        }
    }
    None
}

/// f32 FMA GFLOP/s with every thread of the pool busy (best of 5 rounds of
/// about 0.2 s); NaN where no FMA vector unit is known.
pub fn fma_peak() -> f64 {
    let Some((flops_per_iter, chains)) = fma_loop() else { return f64::NAN };
    let iters = 20_000_000u64;
    let threads = rayon::current_num_threads() as f64;
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let sums = rayon::broadcast(|_| chains(iters));
            std::hint::black_box(sums);
            flops_per_iter * iters as f64 * threads / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// One product `(m,k)·(k,n)`, row-major, through `gemm`.
struct Product {
    m: usize,
    k: usize,
    n: usize,
}

impl Product {
    fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

/// Seconds for `products` back to back through `gemm` (best of `rounds`).
fn time_products(products: &[Product], rounds: usize) -> f64 {
    let size = |f: fn(&Product) -> usize| products.iter().map(f).max().unwrap_or(0);
    let lhs: Vec<f32> = (0..size(|p| p.m * p.k)).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let rhs: Vec<f32> = (0..size(|p| p.k * p.n)).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut dst = vec![0f32; size(|p| p.m * p.n)];
    let par = crate::backend::cpu::threads_for_gemm();
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t0 = Instant::now();
        for p in products {
            // SAFETY: each buffer holds at least the (row-major, contiguous) extent of its operand.
            unsafe {
                gemm::gemm(p.m, p.n, p.k, dst.as_mut_ptr(), 1, p.n as isize, false, lhs.as_ptr(), 1, p.k as isize, rhs.as_ptr(), 1, p.n as isize, 0.0, 1.0, false, false, false, par);
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    best
}

/// Every matrix product of one training step of `cfg`: for each linear map
/// (C→3C, C→C, C→4C, 4C→C per layer, and the unembedding C→V) the forward
/// product and the two backward ones; for attention, per batch row and head,
/// the scores and the weighted sum forward and their four backward products
/// (full T×T, as the model-FLOP formula counts them).
fn step_products(cfg: &BenchConfig) -> Vec<Product> {
    let (n, c, t) = (cfg.batch * cfg.ctx, cfg.d_model, cfg.ctx);
    let hs = c / cfg.n_heads;
    let mut maps = Vec::new();
    for _ in 0..cfg.n_layers {
        maps.extend([(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]);
    }
    maps.push((c, cfg.vocab));
    let mut out = Vec::new();
    for (i, o) in maps {
        out.push(Product { m: n, k: i, n: o }); // out = inp · W
        out.push(Product { m: n, k: o, n: i }); // dinp = dout · Wᵀ
        out.push(Product { m: i, k: n, n: o }); // dW = inpᵀ · dout
    }
    for _ in 0..cfg.n_layers * cfg.batch * cfg.n_heads {
        out.push(Product { m: t, k: hs, n: t }); // scores = q · kᵀ
        out.push(Product { m: t, k: t, n: hs }); // y = att · v
        out.push(Product { m: t, k: hs, n: t }); // datt = dy · vᵀ
        out.push(Product { m: t, k: t, n: hs }); // dv = attᵀ · dy
        out.push(Product { m: t, k: t, n: hs }); // dq = dscores · k
        out.push(Product { m: t, k: t, n: hs }); // dk = dscoresᵀ · q
    }
    out
}

/// Measures the ceilings for `cfg` on the current rayon pool.
pub fn measure(cfg: &BenchConfig) -> Ceilings {
    let square = [Product { m: 1024, k: 1024, n: 1024 }];
    let square_gflops = square[0].flops() / time_products(&square, 5) / 1e9;
    let products = step_products(cfg);
    let secs = time_products(&products, 5);
    Ceilings {
        threads: rayon::current_num_threads(),
        fma_gflops: fma_peak(),
        square_gflops,
        step_products_gflops: products.iter().map(Product::flops).sum::<f64>() / secs / 1e9,
        step_products_ms: secs * 1e3,
    }
}
