//! The training-step benchmark: fixed model configs on random tokens, the
//! same step code as a real run, timed after a warm-up.
//!
//! The configs match the PyTorch peer model (pre-LayerNorm, GELU, MLP 4·d,
//! tied embeddings). Model FLOPs per step follow the peer's formula.

pub mod ceilings;

use std::time::Instant;

use crate::backend::{Activation, Backend};
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::error::Result;
use crate::model::{Gpt, ModelShape, Norm};
use crate::rng;
use crate::train::{Trainer, fingerprint};
use num_traits::One;

#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    pub name: &'static str,
    pub vocab: usize,
    pub ctx: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub batch: usize,
    /// Dropout probability (residual branches and attention weights).
    pub dropout: f64,
}

pub const CONFIGS: [BenchConfig; 3] = [
    BenchConfig { name: "tiny", vocab: 64, ctx: 64, d_model: 64, n_layers: 2, n_heads: 4, batch: 32, dropout: 0.0 },
    BenchConfig { name: "small", vocab: 64, ctx: 64, d_model: 128, n_layers: 2, n_heads: 4, batch: 32, dropout: 0.0 },
    BenchConfig { name: "base", vocab: 64, ctx: 128, d_model: 256, n_layers: 4, n_heads: 8, batch: 32, dropout: 0.0 },
];

impl BenchConfig {
    pub fn by_name(name: &str) -> Option<BenchConfig> {
        CONFIGS.iter().copied().find(|c| c.name == name)
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            vocab: self.vocab,
            n_ctx: self.ctx,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            d_mlp: 4 * self.d_model,
            activation: Activation::Gelu,
            norm: Norm::Pre,
            tied_embeddings: true,
            dropout: self.dropout,
            init: crate::model::Init::Gpt2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchResult {
    pub config: &'static str,
    pub dropout: f64,
    pub device: String,
    pub threads: usize,
    pub n_params: usize,
    pub tokens_per_step: usize,
    /// The median step.
    pub ms_per_step: f64,
    /// The fastest step: on a shared machine, the one least disturbed (the
    /// ceilings are best-of figures too).
    pub best_ms_per_step: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    /// The parameters' fingerprint after the last step.
    pub fingerprint: String,
}

impl BenchResult {
    pub fn json(&self) -> String {
        serde_json::json!({
            "config": self.config,
            "dropout": self.dropout,
            "device": self.device,
            "threads": self.threads,
            "params": self.n_params,
            "tokens_per_s": self.tokens_per_s,
            "ms_per_step": self.ms_per_step,
            "best_ms_per_step": self.best_ms_per_step,
            "gflops": self.gflops,
        })
        .to_string()
    }

    pub fn line(&self) -> String {
        let dropout = if self.dropout > 0.0 { format!(" dropout={}", self.dropout) } else { String::new() };
        format!(
            "ebb-{} threads={} {:<5}{dropout} params={} tok/step={} median_step={:.2}ms tok/s={:.0} GFLOP/s={:.1}",
            self.device,
            self.threads,
            self.config,
            self.n_params,
            self.tokens_per_step,
            self.ms_per_step,
            self.tokens_per_s,
            self.gflops
        )
    }
}

/// Trains `cfg` on random tokens: `warmup` untimed steps, then `steps` timed
/// ones; reports the median step. A device failure (or, unexpectedly on
/// random tokens, a divergence) is the error.
pub fn run<B: Backend>(backend: &B, cfg: &BenchConfig, warmup: usize, steps: usize) -> Result<BenchResult> {
    run_with(backend, cfg, warmup, steps, || {})
}

/// A trainer for `cfg` that will take `steps` steps, and its batch of random
/// tokens.
fn bench_trainer<B: Backend>(backend: &B, cfg: &BenchConfig, steps: usize) -> (Trainer<B>, Batch<B::F>) {
    let model = Gpt::new(backend, cfg.shape(), cfg.batch, 0);
    let train = TrainConfig { steps: steps as u64, weight_decay: 0.1, warmup_steps: 0, ..TrainConfig::default() };
    let trainer = Trainer::new(backend, model, train, 0);
    let mut batch = Batch::<B::F>::new(cfg.batch, cfg.ctx);
    let mut r = rng::stream(0, "bench", 0);
    for i in 0..cfg.batch * cfg.ctx {
        batch.tokens[i] = rng::below(&mut r, cfg.vocab as u64) as u32;
        batch.targets[i] = rng::below(&mut r, cfg.vocab as u64) as u32;
        batch.mask[i] = B::F::one();
    }
    (trainer, batch)
}

/// `run`, calling `after_warmup` between the warm-up and the timed steps.
fn run_with<B: Backend>(
    backend: &B,
    cfg: &BenchConfig,
    warmup: usize,
    steps: usize,
    after_warmup: impl FnOnce(),
) -> Result<BenchResult> {
    assert!(steps > 0, "at least one timed step");
    let shape = cfg.shape();
    let (mut trainer, batch) = bench_trainer(backend, cfg, warmup + steps);
    let n_params = trainer.model.n_params();
    let mut times = Vec::with_capacity(steps);
    let mut after_warmup = Some(after_warmup);
    for step in 0..warmup + steps {
        if step == warmup {
            after_warmup.take().expect("called once")();
        }
        let t0 = Instant::now();
        trainer.step(backend, &batch, step as u64)?;
        if step >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = cfg.batch * cfg.ctx;
    let fingerprint = fingerprint(backend, &trainer.model);
    backend.check()?;
    Ok(BenchResult {
        config: cfg.name,
        dropout: cfg.dropout,
        device: backend.name(),
        threads: rayon::current_num_threads(),
        n_params,
        tokens_per_step: tokens,
        ms_per_step: median * 1e3,
        best_ms_per_step: times[0] * 1e3,
        tokens_per_s: tokens as f64 / median,
        gflops: shape.train_flops(n_params, cfg.batch, cfg.ctx) / median / 1e9,
        fingerprint,
    })
}

/// The step's share of the f32 FMA peak with each measurement beside its
/// own peak: `rounds` times, one FMA-peak burst then `steps` timed steps,
/// the round's share being its median step's model FLOP rate over the
/// burst's rate. On a shared machine whose speed moves within a minute a
/// best-of peak and a median step measured apart read the share high or
/// low by the phase each caught; paired, both see the same phase (as the
/// comparisons with the peer are paired). Returns the rounds' shares, sorted.
pub fn shares_beside_fma_peak<B: Backend>(
    backend: &B,
    cfg: &BenchConfig,
    warmup: usize,
    rounds: usize,
    steps: usize,
) -> Result<Vec<f64>> {
    assert!(rounds > 0 && steps > 0, "at least one round of one step");
    let (mut trainer, batch) = bench_trainer(backend, cfg, warmup + rounds * steps);
    let flops = cfg.shape().train_flops(trainer.model.n_params(), cfg.batch, cfg.ctx);
    let mut step = 0u64;
    let mut take_step = |trainer: &mut Trainer<B>| -> Result<f64> {
        let t0 = Instant::now();
        trainer.step(backend, &batch, step)?;
        step += 1;
        Ok(t0.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        take_step(&mut trainer)?;
    }
    let mut shares: Vec<f64> = (0..rounds)
        .map(|_| {
            let peak = ceilings::fma_rate();
            let mut times: Vec<f64> = (0..steps).map(|_| take_step(&mut trainer)).collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            Ok(flops / times[steps / 2] / 1e9 / peak)
        })
        .collect::<Result<_>>()?;
    shares.sort_by(f64::total_cmp);
    Ok(shares)
}

/// Time per op over `steps` steps after `warmup`: (op, ms per step, calls
/// per step), slowest first.
pub fn breakdown<B: Backend>(
    backend: B,
    cfg: &BenchConfig,
    warmup: usize,
    steps: usize,
) -> Result<Vec<(&'static str, f64, u64)>> {
    let profiled = crate::backend::profiled::Profiled::new(backend);
    run_with(&profiled, cfg, warmup, steps, || profiled.reset())?;
    let mut rows: Vec<_> = profiled
        .totals()
        .into_iter()
        .map(|(name, secs, calls)| (name, secs * 1e3 / steps as f64, calls / steps as u64))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(rows)
}

/// Median milliseconds to fill one training batch of `rows` × `ctx` from
/// `suite` (over `iters` batches after a warm-up).
pub fn batch_generation_ms(suite: &crate::tasks::Suite, rows: usize, ctx: usize, iters: usize) -> f64 {
    let mut batch = Batch::<f32>::new(rows, ctx.max(suite.max_len() + 1));
    let mut stream = crate::data::TrainStream::new(suite, false);
    let mut times: Vec<f64> = (0..iters + 3)
        .map(|step| {
            let t0 = Instant::now();
            batch.fill_train(suite, &mut stream, 0, step as u64);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .skip(3)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
