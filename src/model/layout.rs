//! The parameter layout: every tensor a named view into one flat buffer.

use super::{Init, ModelShape, Norm};
use crate::backend::View;
use crate::float::Float;

/// What a tensor is, which decides its initialisation and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A weight matrix of a linear layer.
    Weight,
    /// The output projection of a residual branch: a weight matrix whose
    /// initial scale shrinks with depth.
    ResidualWeight,
    /// The token embedding (also the unembedding when tied).
    TokenEmbedding,
    PositionEmbedding,
    Bias,
    NormWeight,
    NormBias,
}

#[derive(Clone, Debug)]
pub struct ParamTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub view: View,
}

/// One block's tensors. Without LayerNorm the norm views are empty.
#[derive(Clone, Debug)]
pub struct BlockViews {
    pub ln1_w: View,
    pub ln1_b: View,
    pub qkv_w: View,  // (3C,C)
    pub qkv_b: View,  // (3C)
    pub proj_w: View, // (C,C)
    pub proj_b: View, // (C)
    pub ln2_w: View,
    pub ln2_b: View,
    pub fc_w: View,  // (F,C)
    pub fc_b: View,  // (F)
    pub out_w: View, // (C,F)
    pub out_b: View, // (C)
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub tensors: Vec<ParamTensor>,
    pub wte: View, // (V,C)
    pub wpe: View, // (T,C)
    pub blocks: Vec<BlockViews>,
    pub lnf_w: View,
    pub lnf_b: View,
    /// The unembedding (V,C): the token embedding when tied.
    pub unembed: View,
    len: usize,
}

/// Whether `pattern` (a tensor's name, or a prefix ending in `*`) names tensor `name`.
fn names(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

impl ParamLayout {
    pub fn new(s: &ModelShape) -> Self {
        let mut lay = ParamLayout {
            tensors: Vec::new(),
            wte: View { offset: 0, len: 0 },
            wpe: View { offset: 0, len: 0 },
            blocks: Vec::new(),
            lnf_w: View { offset: 0, len: 0 },
            lnf_b: View { offset: 0, len: 0 },
            unembed: View { offset: 0, len: 0 },
            len: 0,
        };
        let (v, t, c, f) = (s.vocab, s.n_ctx, s.d_model, s.d_mlp);
        let pre = s.norm == Norm::Pre;
        lay.wte = lay.push("wte", &[v, c], ParamKind::TokenEmbedding);
        lay.wpe = lay.push("wpe", &[t, c], ParamKind::PositionEmbedding);
        for l in 0..s.n_layers {
            let norm = |lay: &mut Self, name: &str| {
                if pre {
                    (
                        lay.push(&format!("h{l}.{name}.w"), &[c], ParamKind::NormWeight),
                        lay.push(&format!("h{l}.{name}.b"), &[c], ParamKind::NormBias),
                    )
                } else {
                    (View { offset: lay.len, len: 0 }, View { offset: lay.len, len: 0 })
                }
            };
            let (ln1_w, ln1_b) = norm(&mut lay, "ln1");
            let qkv_w = lay.push(&format!("h{l}.attn.qkv.w"), &[3 * c, c], ParamKind::Weight);
            let qkv_b = lay.push(&format!("h{l}.attn.qkv.b"), &[3 * c], ParamKind::Bias);
            let proj_w = lay.push(&format!("h{l}.attn.proj.w"), &[c, c], ParamKind::ResidualWeight);
            let proj_b = lay.push(&format!("h{l}.attn.proj.b"), &[c], ParamKind::Bias);
            let (ln2_w, ln2_b) = norm(&mut lay, "ln2");
            let fc_w = lay.push(&format!("h{l}.mlp.fc.w"), &[f, c], ParamKind::Weight);
            let fc_b = lay.push(&format!("h{l}.mlp.fc.b"), &[f], ParamKind::Bias);
            let out_w = lay.push(&format!("h{l}.mlp.proj.w"), &[c, f], ParamKind::ResidualWeight);
            let out_b = lay.push(&format!("h{l}.mlp.proj.b"), &[c], ParamKind::Bias);
            lay.blocks.push(BlockViews {
                ln1_w,
                ln1_b,
                qkv_w,
                qkv_b,
                proj_w,
                proj_b,
                ln2_w,
                ln2_b,
                fc_w,
                fc_b,
                out_w,
                out_b,
            });
        }
        if pre {
            lay.lnf_w = lay.push("lnf.w", &[c], ParamKind::NormWeight);
            lay.lnf_b = lay.push("lnf.b", &[c], ParamKind::NormBias);
        }
        lay.unembed = if s.tied_embeddings { lay.wte } else { lay.push("unembed.w", &[v, c], ParamKind::Weight) };
        lay
    }

    /// The tensors `pattern` names: one tensor's name (`wte`,
    /// `h0.attn.qkv.w`, as in the weights files), or a prefix ending in `*`
    /// (`h1.*`: every tensor of block 1).
    pub fn matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = &'a ParamTensor> + 'a {
        self.tensors.iter().filter(move |t| names(pattern, &t.name))
    }

    /// Per tensor, in layout order: whether one of `patterns` names it.
    pub fn named_by(&self, patterns: &[String]) -> Vec<bool> {
        self.tensors.iter().map(|t| patterns.iter().any(|p| names(p, &t.name))).collect()
    }

    fn push(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> View {
        let len = shape.iter().product();
        let view = View { offset: self.len, len };
        self.tensors.push(ParamTensor { name: name.to_string(), shape: shape.to_vec(), kind, view });
        self.len += len;
        view
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Initial parameters by `s.init` (see `Init`); biases 0, LayerNorm
    /// gains 1. Each tensor draws from its own stream (seed, "init", index),
    /// so adding a tensor never shifts another's values.
    pub fn init<F: Float>(&self, s: &ModelShape, seed: u64) -> Vec<F> {
        let mut out = vec![F::zero(); self.len];
        let resid_std = 0.02 / (2.0 * s.n_layers.max(1) as f64).sqrt();
        for (i, t) in self.tensors.iter().enumerate() {
            let dst = &mut out[t.view.range()];
            let std = match (t.kind, s.init) {
                (ParamKind::NormWeight, _) => {
                    dst.fill(F::one());
                    continue;
                }
                (ParamKind::Bias | ParamKind::NormBias, _) => continue,
                (ParamKind::Weight | ParamKind::TokenEmbedding | ParamKind::PositionEmbedding, Init::Gpt2) => 0.02,
                (ParamKind::ResidualWeight, Init::Gpt2) => resid_std,
                // (out, in) matrices: 1/√in; embeddings (rows, d_model): 1/√d_model.
                (_, Init::FanIn) => 1.0 / (t.shape[1] as f64).sqrt(),
            };
            let mut rng = crate::rng::stream(seed, "init", i as u64);
            for x in dst {
                *x = F::of(std * crate::rng::normal(&mut rng));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    fn shape(init: Init) -> ModelShape {
        ModelShape {
            vocab: 300,
            n_ctx: 64,
            d_model: 48,
            n_layers: 3,
            n_heads: 4,
            d_mlp: 192,
            activation: Activation::Gelu,
            norm: Norm::Pre,
            tied_embeddings: false,
            dropout: 0.0,
            init,
        }
    }

    fn std_of(values: &[f64]) -> f64 {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn each_scheme_draws_every_tensor_at_its_stated_scale() {
        for init in [Init::Gpt2, Init::FanIn] {
            let s = shape(init);
            let layout = ParamLayout::new(&s);
            let params = layout.init::<f64>(&s, 5);
            for t in &layout.tensors {
                let values = &params[t.view.range()];
                let expected = match (t.kind, init) {
                    (ParamKind::NormWeight, _) => {
                        assert!(values.iter().all(|&x| x == 1.0), "{}", t.name);
                        continue;
                    }
                    (ParamKind::Bias | ParamKind::NormBias, _) => {
                        assert!(values.iter().all(|&x| x == 0.0), "{}", t.name);
                        continue;
                    }
                    (ParamKind::ResidualWeight, Init::Gpt2) => 0.02 / 6f64.sqrt(),
                    (_, Init::Gpt2) => 0.02,
                    (ParamKind::Weight | ParamKind::ResidualWeight, Init::FanIn) => 1.0 / (t.shape[1] as f64).sqrt(),
                    (_, Init::FanIn) => 1.0 / (s.d_model as f64).sqrt(),
                };
                // The sample std of n ≥ 2304 normals is within 6% of the true one (≥ 4 standard errors).
                let got = std_of(values);
                assert!((got / expected - 1.0).abs() < 0.06, "{init:?} {}: std {got}, expected {expected}", t.name);
            }
        }
    }
}
