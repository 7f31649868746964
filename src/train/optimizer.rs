//! AdamW over the flat parameter buffer (every tensor but the frozen ones),
//! with per-tensor weight decay and global gradient-norm clipping.

use crate::backend::{AdamW, Backend, DecayGroup, View};
use crate::config::{DecayGroupName, TrainConfig};
use crate::model::{ParamKind, ParamLayout};

pub struct Optimizer<B: Backend> {
    pub m: B::Buf,
    pub v: B::Buf,
    groups: Vec<DecayGroup>,
    /// The trainable tensors merged into runs of adjacent ones: what the
    /// gradient norm is taken over (the whole buffer when nothing is frozen).
    trainable: Vec<View>,
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
        let groups: Vec<DecayGroup> = layout
            .tensors
            .iter()
            .zip(frozen)
            .filter(|(_, frozen)| !frozen)
            .map(|(t, _)| DecayGroup {
                view: t.view,
                weight_decay: if cfg.decay.contains(&group_of(t.kind)) { cfg.weight_decay } else { 0.0 },
            })
            .collect();
        let mut trainable: Vec<View> = Vec::new();
        for g in &groups {
            match trainable.last_mut() {
                Some(run) if run.offset + run.len == g.view.offset => run.len += g.view.len,
                _ => trainable.push(g.view),
            }
        }
        Optimizer { m: backend.alloc(layout.len()), v: backend.alloc(layout.len()), groups, trainable, t: 0 }
    }

    /// The global norm of the trainable tensors' gradient, summed in a fixed
    /// order (frozen tensors are neither stepped nor counted in the clipping).
    pub fn grad_norm(&self, backend: &B, grads: &B::Buf) -> f64 {
        backend.sum_squares(grads, &self.trainable).sqrt()
    }

    /// Clips by global norm `norm` (when `grad_clip > 0`) and takes one AdamW step.
    pub fn step(&mut self, backend: &B, params: &mut B::Buf, grads: &B::Buf, cfg: &TrainConfig, lr: f64, norm: f64) {
        let grad_scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip { cfg.grad_clip / norm } else { 1.0 };
        self.t += 1;
        let hp = AdamW { lr, beta1: cfg.betas[0], beta2: cfg.betas[1], eps: cfg.eps, t: self.t, grad_scale };
        backend.adamw_update(params, grads, &mut self.m, &mut self.v, &self.groups, hp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::config::Config;

    #[test]
    fn the_gradient_norm_leaves_frozen_tensors_out() {
        let mut cfg: Config = toml::from_str("name = 'frozen'").unwrap();
        let layout = ParamLayout::new(&cfg.model_shape(20));
        let cpu = CpuBackend::<f32>::new();
        let grads: Vec<f32> = (0..layout.len()).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let norm_over = |frozen: &dyn Fn(&str) -> bool| {
            let trainable = layout.tensors.iter().filter(|t| !frozen(&t.name));
            trainable.flat_map(|t| grads[t.view.range()].iter()).map(|&g| g as f64 * g as f64).sum::<f64>().sqrt()
        };

        let whole = Optimizer::new(&cpu, &layout, &cfg.train).grad_norm(&cpu, &grads);
        assert_eq!(whole.to_bits(), cpu.sum_squares(&grads, &[View { offset: 0, len: layout.len() }]).sqrt().to_bits());

        cfg.train.frozen = vec!["wte".into(), "h0.*".into()];
        let some = Optimizer::new(&cpu, &layout, &cfg.train).grad_norm(&cpu, &grads);
        let want = norm_over(&|name| name == "wte" || name.starts_with("h0."));
        assert!((some - want).abs() <= 1e-12 * want && some < whole, "{some} against {want} (all: {whole})");
    }
}
