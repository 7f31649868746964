//! Training: one step (forward, backward, clip, AdamW) and the run loop that
//! evaluates, logs and writes the run directory.

pub mod events;
mod optimizer;
pub mod run;
pub mod schedule;

pub use optimizer::Optimizer;

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::rng;

/// What one training step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The model and its optimizer state: everything a step changes.
pub struct Trainer<B: Backend> {
    pub model: Gpt<B>,
    pub opt: Optimizer<B>,
    pub cfg: TrainConfig,
    pub seed: u64,
}

impl<B: Backend> Trainer<B> {
    pub fn new(backend: &B, model: Gpt<B>, cfg: TrainConfig, seed: u64) -> Self {
        let opt = Optimizer::new(backend, &model.layout, &cfg);
        Trainer { model, opt, cfg, seed }
    }

    /// One optimizer step on `batch` as 0-based step `step`. A non-finite
    /// loss or gradient norm stops before the parameters change. The
    /// backend is checked once, at the end (and before a divergence is
    /// reported, as a failed device's numbers mean nothing): a device
    /// failure during the step is its error.
    pub fn step(&mut self, backend: &B, batch: &Batch<B::F>, step: u64) -> Result<StepStats> {
        let lr = schedule::lr_at(&self.cfg, step);
        let dropout_key = rng::stream_key(self.seed, "dropout", step);
        let loss = self.model.forward(backend, &batch.tokens, &batch.targets, &batch.mask, Some(dropout_key));
        if !loss.is_finite() {
            backend.check()?;
            return Err(Error::Diverged { step, what: format!("loss is {loss}") });
        }
        self.model.backward(backend);
        let grad_norm = self.opt.grad_norm(backend, &self.model.grads);
        if !grad_norm.is_finite() {
            backend.check()?;
            return Err(Error::Diverged { step, what: format!("gradient norm is {grad_norm}") });
        }
        self.opt.step(backend, &mut self.model.params, &self.model.grads, &self.cfg, lr, grad_norm);
        backend.check()?;
        Ok(StepStats { loss, grad_norm, lr })
    }
}

/// A 64-bit hash of the parameters' bytes, printed as 16 hex digits (check
/// the backend before trusting it).
pub fn fingerprint<B: Backend>(backend: &B, model: &Gpt<B>) -> String {
    let host = crate::model::to_host(backend, &model.params, model.n_params());
    let mut bytes = Vec::with_capacity(host.len() * 8);
    for x in host {
        crate::float::Float::write_le(x, &mut bytes);
    }
    format!("{:016x}", rng::fnv1a(&bytes))
}
