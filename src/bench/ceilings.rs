//! The machine's ceilings, measured: how fast could a training step be?
//!
//! - The f32 FMA peak: every thread of the pool runs independent fused
//!   multiply-adds on full vector registers, nothing else.
//! - A register-tiled product kernel (the inner loop of every fast matrix
//!   product) on packed operands held in cache: what products can reach
//!   once the arithmetic has to be fed from memory, however good the
//!   library around the kernel.
//! - Copy bandwidth: how fast the element-wise passes (GELU, LayerNorm,
//!   residuals, AdamW) can stream their operands at best.
//! - The matrix-product library (`gemm`, as the CPU backend calls it) on a
//!   large square product, its best case.
//! - The same library on exactly the products of one training step of a
//!   bench config (forward, both backward products, attention per head):
//!   the step's time if everything but its products were free; and on the
//!   linear maps' products alone (most of a step's FLOPs, and the part the
//!   CPU backend hands to the library as it is timed here).

use std::time::Instant;

use serde::Serialize;

use super::{BenchConfig, BenchResult};
use crate::backend::cpu::CpuBackend;

/// Rounds of an FMA burst followed by steps, for the step's share measured
/// beside the peak (odd, so the median is one round's).
pub const PAIRED_ROUNDS: usize = 7;

/// Measured ceilings for one config on the current rayon pool.
#[derive(Clone, Debug)]
pub struct Ceilings {
    pub threads: usize,
    /// f32 FMA peak, GFLOP/s.
    pub fma_gflops: f64,
    pub kernel_gflops: f64,
    pub copy_gb_per_s: f64,
    /// `gemm` on a 1024³ product, GFLOP/s.
    pub square_gflops: f64,
    /// `gemm` on the step's own products: GFLOP/s, and ms per step.
    pub step_products_gflops: f64,
    pub step_products_ms: f64,
    /// `gemm` on the linear maps' products of the step alone (no
    /// attention): GFLOP/s, and ms per step.
    pub linear_products_gflops: f64,
    pub linear_products_ms: f64,
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
    acc.iter()
        .map(|&r| {
            // SAFETY: `lanes` holds eight f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), r) };
            lanes.iter().sum::<f32>()
        })
        .sum()
}

/// A loop of FMA chains run for a number of iterations.
type FmaLoop = fn(u64) -> f32;

/// FLOPs of `iters` iterations of the widest FMA loop this CPU has, and the loop.
fn fma_loop() -> Option<(f64, FmaLoop)> {
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
/// Accumulator rows of the tiled kernel; each row is two 16-lane vectors
/// (32 columns), so 24 of the 32 vector registers hold the tile.
const KERNEL_ROWS: usize = 12;
const KERNEL_COLS: usize = 32;

/// c (12×32) = Σ_k a[k] (12) ⊗ b[k] (32): a packed as 12 values per k, b as
/// 32 per k; per k two vector loads, twelve broadcasts, 24 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_kernel_avx512(k: usize, a: *const f32, b: *const f32, c: *mut f32) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; KERNEL_ROWS];
        for p in 0..k {
            let (b0, b1) = (_mm512_loadu_ps(b.add(p * KERNEL_COLS)), _mm512_loadu_ps(b.add(p * KERNEL_COLS + 16)));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(p * KERNEL_ROWS + r));
                row[0] = _mm512_fmadd_ps(x, b0, row[0]);
                row[1] = _mm512_fmadd_ps(x, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * KERNEL_COLS), _mm512_add_ps(_mm512_loadu_ps(c.add(r * KERNEL_COLS)), row[0]));
            _mm512_storeu_ps(
                c.add(r * KERNEL_COLS + 16),
                _mm512_add_ps(_mm512_loadu_ps(c.add(r * KERNEL_COLS + 16)), row[1]),
            );
        }
    }
}

/// The tiled kernel's rate on every thread at once, GFLOP/s in all: each
/// thread multiplies a 120×256 packed block of a (120 KB, in L2) by 24
/// packed 256×32 panels of b (32 KB each, one in L1 at a time), i.e. base's
/// qkv product shape with everything in cache. NaN without AVX-512.
pub fn tiled_kernel_rate() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if !is_x86_feature_detected!("avx512f") {
            return f64::NAN;
        }
        let (k, row_tiles, col_tiles) = (256, 10, 24);
        let flops_per_pass = 2.0 * (row_tiles * KERNEL_ROWS * k * col_tiles * KERNEL_COLS) as f64;
        let passes = 200;
        let threads = rayon::current_num_threads() as f64;
        let once = || {
            let a: Vec<f32> = (0..row_tiles * KERNEL_ROWS * k).map(|i| (i % 13) as f32 * 1e-3).collect();
            let b: Vec<f32> = (0..col_tiles * KERNEL_COLS * k).map(|i| (i % 7) as f32 * 1e-3).collect();
            let mut c = vec![0f32; KERNEL_ROWS * KERNEL_COLS];
            let t0 = Instant::now();
            for _ in 0..passes {
                for jt in 0..col_tiles {
                    for it in 0..row_tiles {
                        unsafe {
                            tile_kernel_avx512(
                                k,
                                a[it * KERNEL_ROWS * k..].as_ptr(),
                                b[jt * KERNEL_COLS * k..].as_ptr(),
                                c.as_mut_ptr(),
                            )
                        };
                    }
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            std::hint::black_box(&c);
            secs
        };
        (0..5)
            .map(|_| {
                let secs = rayon::broadcast(|_| once()).into_iter().fold(0.0, f64::max);
                flops_per_pass * passes as f64 * threads / secs / 1e9
            })
            .fold(0.0, f64::max)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f64::NAN
    }
}

/// Copy bandwidth, GB/s counting the bytes read and written: every thread
/// copies its own 64 MB buffer (far past any cache) into another.
pub fn copy_bandwidth() -> f64 {
    let len = 16 << 20;
    let threads = rayon::current_num_threads() as f64;
    let buffers: Vec<(Vec<f32>, std::sync::Mutex<Vec<f32>>)> = (0..rayon::current_num_threads())
        .map(|i| (vec![i as f32; len], std::sync::Mutex::new(vec![0f32; len])))
        .collect();
    (0..5)
        .map(|_| {
            let secs = rayon::broadcast(|ctx| {
                let (src, dst) = &buffers[ctx.index()];
                let mut dst = dst.lock().unwrap_or_else(|e| e.into_inner());
                let t0 = Instant::now();
                dst.copy_from_slice(src);
                t0.elapsed().as_secs_f64()
            })
            .into_iter()
            .fold(0.0, f64::max);
            2.0 * 4.0 * len as f64 * threads / secs / 1e9
        })
        .fold(0.0, f64::max)
}

/// The f32 FMA peak in GFLOP/s on the current pool's threads: the best of
/// five `fma_rate` measurements.
pub fn fma_peak() -> f64 {
    (0..5).map(|_| fma_rate()).fold(0.0, f64::max)
}

/// One measurement of the FMA loop on every thread of the current pool
/// (about 50 ms), in GFLOP/s; NaN on a CPU without FMA.
pub fn fma_rate() -> f64 {
    let Some((flops_per_iter, chains)) = fma_loop() else { return f64::NAN };
    let iters = 20_000_000u64;
    let threads = rayon::current_num_threads() as f64;
    let t0 = Instant::now();
    let sums = rayon::broadcast(|_| chains(iters));
    std::hint::black_box(sums);
    flops_per_iter * iters as f64 * threads / t0.elapsed().as_secs_f64() / 1e9
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
                gemm::gemm(
                    p.m,
                    p.n,
                    p.k,
                    dst.as_mut_ptr(),
                    1,
                    p.n as isize,
                    false,
                    lhs.as_ptr(),
                    1,
                    p.k as isize,
                    rhs.as_ptr(),
                    1,
                    p.n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    best
}

/// The linear maps' products of one training step of `cfg`: for each map
/// (C→3C, C→C, C→4C, 4C→C per layer, and the unembedding C→V) the forward
/// product and the two backward ones.
fn linear_products(cfg: &BenchConfig) -> Vec<Product> {
    let (n, c) = (cfg.batch * cfg.ctx, cfg.d_model);
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
    out
}

/// Every matrix product of one training step of `cfg`: the linear maps'
/// and, for attention, per batch row and head, the scores and the weighted
/// sum forward and their four backward products (full T×T, as the
/// model-FLOP formula counts them).
fn step_products(cfg: &BenchConfig) -> Vec<Product> {
    let (c, t) = (cfg.d_model, cfg.ctx);
    let hs = c / cfg.n_heads;
    let mut out = linear_products(cfg);
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
    let linear = linear_products(cfg);
    let linear_secs = time_products(&linear, 5);
    let gflops = |products: &[Product], secs: f64| products.iter().map(Product::flops).sum::<f64>() / secs / 1e9;
    Ceilings {
        threads: rayon::current_num_threads(),
        fma_gflops: fma_peak(),
        kernel_gflops: tiled_kernel_rate(),
        copy_gb_per_s: copy_bandwidth(),
        square_gflops,
        step_products_gflops: gflops(&products, secs),
        step_products_ms: secs * 1e3,
        linear_products_gflops: gflops(&linear, linear_secs),
        linear_products_ms: linear_secs * 1e3,
    }
}

/// What `ebb bench --ceilings` reports for one config: the machine's
/// ceilings and the measured step `step` set against them. `--json` prints
/// it as one JSON object; otherwise `lines`.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingsReport {
    pub config: &'static str,
    pub threads: usize,
    pub fma_peak_gflops: f64,
    /// A register-tiled product kernel on operands held in cache.
    pub tiled_kernel_gflops: f64,
    pub copy_gb_per_s: f64,
    pub gemm_1024_gflops: f64,
    /// `gemm` on exactly this step's products: GFLOP/s and ms per step.
    pub step_products_gflops: f64,
    pub step_products_ms: f64,
    /// `gemm` on the step's linear maps alone.
    pub linear_products_gflops: f64,
    pub linear_products_ms: f64,
    /// Tokens per second if all but the products were free.
    pub products_only_tokens_per_s: f64,
    /// The median step's and the fastest step's share of the FMA peak.
    pub step_share_of_fma_peak: f64,
    pub best_step_share_of_fma_peak: f64,
    /// The step's share measured beside the peak, round by round (an FMA
    /// burst, then `steps_per_round` steps): the median and the range.
    pub step_share_beside_fma_peak: f64,
    pub step_share_beside_fma_peak_range: [f64; 2],
    pub rounds: usize,
    pub steps_per_round: usize,
}

/// Measures the ceilings for `cfg` on the current rayon pool and sets the
/// step `step` (timed over `steps` steps) against them.
pub fn report(cfg: &BenchConfig, step: &BenchResult, steps: usize) -> crate::error::Result<CeilingsReport> {
    let m = measure(cfg);
    // Each round of steps beside its own peak burst (after one untimed
    // step, which allocates the fresh trainer's buffers).
    let steps_per_round = (steps / PAIRED_ROUNDS).max(1);
    let paired = super::shares_beside_fma_peak(&CpuBackend::<f32>::new(), cfg, 1, PAIRED_ROUNDS, steps_per_round)?;
    Ok(CeilingsReport {
        config: cfg.name,
        threads: m.threads,
        fma_peak_gflops: m.fma_gflops,
        tiled_kernel_gflops: m.kernel_gflops,
        copy_gb_per_s: m.copy_gb_per_s,
        gemm_1024_gflops: m.square_gflops,
        step_products_gflops: m.step_products_gflops,
        step_products_ms: m.step_products_ms,
        linear_products_gflops: m.linear_products_gflops,
        linear_products_ms: m.linear_products_ms,
        products_only_tokens_per_s: (cfg.batch * cfg.ctx) as f64 / (m.step_products_ms / 1e3),
        step_share_of_fma_peak: step.gflops / m.fma_gflops,
        // The FMA peak is a best of five; the same share for the fastest step.
        best_step_share_of_fma_peak: step.gflops * step.ms_per_step / step.best_ms_per_step / m.fma_gflops,
        step_share_beside_fma_peak: paired[paired.len() / 2],
        step_share_beside_fma_peak_range: [paired[0], paired[paired.len() - 1]],
        rounds: PAIRED_ROUNDS,
        steps_per_round,
    })
}

impl CeilingsReport {
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers serializes")
    }

    /// Readable lines, indented under the step's own line.
    pub fn lines(&self) -> String {
        let pct = |x: f64| 100.0 * x;
        [
            format!("  ceilings, {} threads:", self.threads),
            format!("    f32 FMA peak               {:8.0} GFLOP/s", self.fma_peak_gflops),
            if self.tiled_kernel_gflops.is_nan() {
                "    tiled kernel, in cache          - (an AVX-512 kernel; this CPU has none)".to_string()
            } else {
                format!("    tiled kernel, in cache     {:8.0} GFLOP/s", self.tiled_kernel_gflops)
            },
            format!("    copy                       {:8.1} GB/s", self.copy_gb_per_s),
            format!("    gemm 1024³                 {:8.0} GFLOP/s", self.gemm_1024_gflops),
            format!(
                "    gemm, this step's products {:8.0} GFLOP/s = {:.2} ms/step: at most {:.0} tok/s if all else were free",
                self.step_products_gflops, self.step_products_ms, self.products_only_tokens_per_s
            ),
            format!(
                "    gemm, its linear maps      {:8.0} GFLOP/s = {:.2} ms/step, {:.0}% of the FMA peak",
                self.linear_products_gflops,
                self.linear_products_ms,
                pct(self.linear_products_gflops / self.fma_peak_gflops)
            ),
            format!(
                "    the step: {:.0}% of the FMA peak (fastest step {:.0}%); beside the peak ({} rounds of a burst then {} steps) {:.0}% (rounds {:.0}–{:.0}%)",
                pct(self.step_share_of_fma_peak),
                pct(self.best_step_share_of_fma_peak),
                self.rounds,
                self.steps_per_round,
                pct(self.step_share_beside_fma_peak),
                pct(self.step_share_beside_fma_peak_range[0]),
                pct(self.step_share_beside_fma_peak_range[1])
            ),
        ]
        .join("\n")
    }
}
