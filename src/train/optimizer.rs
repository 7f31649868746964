//! AdamW over the flat parameter buffer (every tensor but the frozen ones),
//! with per-tensor weight decay and global gradient-norm clipping.

use crate::backend::{AdamW, Backend, DecayGroup};
use crate::config::{DecayGroupName, TrainConfig};
use crate::model::{ParamKind, ParamLayout};

pub struct Optimizer<B: Backend> {
    pub m: B::Buf,
    pub v: B::Buf,
    groups: Vec<DecayGroup>,
    /// Steps taken so far.
    pub t: u64,
}

/// Which config group a tensor belongs to.
fn group_of(kind: ParamKind) -> DecayGroupName {
    match kind {
        ParamKind::Weight | ParamKind::ResidualWeight => DecayGroupName::Weights,
        ParamKind::TokenEmbedding => DecayGroupName::Embeddings,
        ParamKind::PositionEmbedding => DecayGroupName::Positions,
        ParamKind::Bias => DecayGroupName::Biases,
        ParamKind::NormWeight | ParamKind::NormBias => DecayGroupName::Norms,
    }
}

impl<B: Backend> Optimizer<B> {
    /// AdamW over every tensor but those `cfg.frozen` names.
    pub fn new(backend: &B, layout: &ParamLayout, cfg: &TrainConfig) -> Self {
        let frozen = layout.named_by(&cfg.frozen);
        let groups = layout
            .tensors
            .iter()
            .zip(frozen)
            .filter(|(_, frozen)| !frozen)
            .map(|(t, _)| DecayGroup {
                view: t.view,
                weight_decay: if cfg.decay.contains(&group_of(t.kind)) { cfg.weight_decay } else { 0.0 },
            })
            .collect();
        Optimizer { m: backend.alloc(layout.len()), v: backend.alloc(layout.len()), groups, t: 0 }
    }

    /// The global gradient norm, summed in a fixed order.
    pub fn grad_norm(backend: &B, grads: &B::Buf) -> f64 {
        backend.sum_squares(grads).sqrt()
    }

    /// Clips by global norm `norm` (when `grad_clip > 0`) and takes one AdamW step.
    pub fn step(&mut self, backend: &B, params: &mut B::Buf, grads: &B::Buf, cfg: &TrainConfig, lr: f64, norm: f64) {
        let grad_scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip { cfg.grad_clip / norm } else { 1.0 };
        self.t += 1;
        let hp = AdamW { lr, beta1: cfg.betas[0], beta2: cfg.betas[1], eps: cfg.eps, t: self.t, grad_scale };
        backend.adamw_update(params, grads, &mut self.m, &mut self.v, &self.groups, hp);
    }
}
