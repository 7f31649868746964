//! The GPT: a parameter layout over one flat buffer, preallocated
//! activations, and a forward and a backward pass that call the backend's ops
//! in order and in reverse.

mod layout;

pub use layout::{ParamKind, ParamLayout, ParamTensor};

use crate::backend::{Activation, Backend, Dropout, attention_saved_len};
use crate::float::Float;
use num_traits::Zero;

/// Where LayerNorm goes: before each block's attention and MLP plus once
/// before the unembedding (`pre`), or nowhere (`none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Pre,
    None,
}

/// How the initial parameters are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Weights and embeddings normal(0, 0.02), residual output projections
    /// normal(0, 0.02/√(2·layers)).
    #[default]
    Gpt2,
    /// Every weight matrix normal(0, 1/√fan_in) (fan_in: its input width);
    /// the token and position embeddings normal(0, 1/√d_model).
    FanIn,
}

/// Everything that fixes the model's shapes and arithmetic.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub vocab: usize,
    pub n_ctx: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_mlp: usize,
    pub activation: Activation,
    pub norm: Norm,
    pub tied_embeddings: bool,
    pub dropout: f64,
    pub init: Init,
}

impl ModelShape {
    /// Model FLOPs of one training step (forward and backward) over `tokens`
    /// tokens in rows of `t`: 6·params·tokens for the matrix products plus
    /// 12·layers·tokens·T·d_model for attention (the nanoGPT/PaLM convention).
    pub fn train_flops(&self, params: usize, batch: usize, t: usize) -> f64 {
        let tokens = (batch * t) as f64;
        6.0 * params as f64 * tokens + 12.0 * (self.n_layers * batch * t * t * self.d_model) as f64
    }
}

/// One block's forward activations, kept for the backward pass.
struct BlockActs<B: Backend> {
    ln1: B::Buf,      // (N,C)
    ln1_mean: B::Buf, // (N)
    ln1_rstd: B::Buf, // (N)
    qkv: B::Buf,      // (N,3C)
    att: B::Buf,      // (B,H,T,T)
    att_drop: B::Buf, // (B,H,T,T), empty without dropout
    atty: B::Buf,     // (N,C)
    res_mid: B::Buf,  // (N,C) residual after attention (first the attention branch's output projection)
    ln2: B::Buf,      // (N,C)
    ln2_mean: B::Buf, // (N)
    ln2_rstd: B::Buf, // (N)
    fc: B::Buf,       // (N,F)
    fc_act: B::Buf,   // (N,F)
    res_out: B::Buf,  // (N,C) residual after the MLP: the next block's input (first the MLP's output projection)
}

/// Gradient scratch shared by all blocks in the backward pass.
struct GradScratch<B: Backend> {
    residual: B::Buf, // (N,C) ∂L/∂residual stream, updated in place block by block
    branch: B::Buf,   // (N,C) ∂L/∂branch output after dropout (only with dropout)
    norm_out: B::Buf, // (N,C) ∂L/∂(LayerNorm output)
    qkv: B::Buf,      // (N,3C)
    att: B::Buf,      // (B,H,T,T)
    atty: B::Buf,     // (N,C)
    fc_act: B::Buf,   // (N,F)
    fc: B::Buf,       // (N,F)
    logits: B::Buf,   // (N,V)
}

/// Where a block's two residual-branch dropouts and its attention dropout draw
/// their masks from, for a given training step.
fn dropout_for(p: f64, key: Option<u64>, layer: usize, site: u64) -> Dropout {
    match key {
        Some(k) if p > 0.0 => Dropout { p, key: crate::rng::mix64(k ^ crate::rng::mix64((layer as u64) << 8 | site)) },
        _ => Dropout::OFF,
    }
}

pub struct Gpt<B: Backend> {
    pub shape: ModelShape,
    pub layout: ParamLayout,
    pub batch: usize,
    pub params: B::Buf,
    pub grads: B::Buf,
    tokens: B::Tokens,  // (N)
    targets: B::Tokens, // (N)
    mask: B::Buf,       // (N)
    encoded: B::Buf,    // (N,C)
    blocks: Vec<BlockActs<B>>,
    lnf: B::Buf,      // (N,C)
    lnf_mean: B::Buf, // (N)
    lnf_rstd: B::Buf, // (N)
    logits: B::Buf,   // (N,V)
    /// Softmax of the logits after a forward pass.
    pub probs: B::Buf, // (N,V)
    losses: B::Buf,   // (N)
    host_losses: Vec<B::F>,
    host_mask: Vec<B::F>,
    masked_count: f64,
    dropout_key: Option<u64>,
    grad: GradScratch<B>,
}

impl<B: Backend> Gpt<B> {
    /// A model with every buffer allocated for batches of `batch` rows of
    /// `shape.n_ctx` tokens, parameters initialised from `seed`.
    pub fn new(backend: &B, shape: ModelShape, batch: usize, seed: u64) -> Self {
        let layout = ParamLayout::new(&shape);
        let (t, c, f, v, h) = (shape.n_ctx, shape.d_model, shape.d_mlp, shape.vocab, shape.n_heads);
        let n = batch * t;
        let pre = shape.norm == Norm::Pre;
        let norm_len = |len: usize| if pre { len } else { 0 };
        let drop_len = if shape.dropout > 0.0 { batch * h * t * t } else { 0 };
        let blocks = (0..shape.n_layers)
            .map(|_| BlockActs {
                ln1: backend.alloc(norm_len(n * c)),
                ln1_mean: backend.alloc(norm_len(n)),
                ln1_rstd: backend.alloc(norm_len(n)),
                qkv: backend.alloc(n * 3 * c),
                att: backend.alloc(attention_saved_len(batch, h, t)),
                att_drop: backend.alloc(drop_len),
                atty: backend.alloc(n * c),
                res_mid: backend.alloc(n * c),
                ln2: backend.alloc(norm_len(n * c)),
                ln2_mean: backend.alloc(norm_len(n)),
                ln2_rstd: backend.alloc(norm_len(n)),
                fc: backend.alloc(n * f),
                fc_act: backend.alloc(n * f),
                res_out: backend.alloc(n * c),
            })
            .collect();
        let mut params = backend.alloc(layout.len());
        backend.upload(&mut params, &layout.init::<B::F>(&shape, seed));
        Gpt {
            grads: backend.alloc(layout.len()),
            layout,
            batch,
            params,
            tokens: backend.alloc_tokens(n),
            targets: backend.alloc_tokens(n),
            mask: backend.alloc(n),
            encoded: backend.alloc(n * c),
            blocks,
            lnf: backend.alloc(norm_len(n * c)),
            lnf_mean: backend.alloc(norm_len(n)),
            lnf_rstd: backend.alloc(norm_len(n)),
            logits: backend.alloc(n * v),
            probs: backend.alloc(n * v),
            losses: backend.alloc(n),
            host_losses: vec![B::F::zero(); n],
            host_mask: vec![B::F::zero(); n],
            masked_count: 0.0,
            dropout_key: None,
            grad: GradScratch {
                residual: backend.alloc(n * c),
                branch: backend.alloc(if shape.dropout > 0.0 { n * c } else { 0 }),
                norm_out: backend.alloc(n * c),
                qkv: backend.alloc(n * 3 * c),
                att: backend.alloc(batch * h * t * t),
                atty: backend.alloc(n * c),
                fc_act: backend.alloc(n * f),
                fc: backend.alloc(n * f),
                logits: backend.alloc(n * v),
            },
            shape,
        }
    }

    /// Per-position losses of the last forward pass (0 where masked out).
    pub fn position_losses(&self) -> &[B::F] {
        &self.host_losses
    }

    pub fn n_params(&self) -> usize {
        self.layout.len()
    }

    /// Forward pass over one batch: tokens and targets (B·T), loss mask
    /// (B·T, 1 where the target counts). `dropout_key` is `Some` in training
    /// (masks drawn from it) and `None` in evaluation (no dropout).
    /// Returns the mean loss over masked positions (0 when none are masked).
    pub fn forward(
        &mut self,
        backend: &B,
        tokens: &[u32],
        targets: &[u32],
        mask: &[B::F],
        dropout_key: Option<u64>,
    ) -> f64 {
        let s = &self.shape;
        let (bsz, t, c, f, v, h) = (self.batch, s.n_ctx, s.d_model, s.d_mlp, s.vocab, s.n_heads);
        let n = bsz * t;
        let pre = s.norm == Norm::Pre;
        let p = s.dropout;
        let lay = &self.layout;
        self.dropout_key = dropout_key;
        backend.upload_tokens(&mut self.tokens, tokens);
        backend.upload_tokens(&mut self.targets, targets);
        backend.upload(&mut self.mask, mask);
        self.host_mask.copy_from_slice(mask);
        self.masked_count = mask.iter().map(|m| m.f64()).sum();

        backend.encoder_forward(&mut self.encoded, &self.tokens, &self.params, lay.wte, lay.wpe, n, t, c);
        for l in 0..s.n_layers {
            let (before, rest) = self.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let x = if l == 0 { &self.encoded } else { &before[l - 1].res_out };
            let bl = &lay.blocks[l];
            let attn_in = if pre {
                backend.layernorm_forward(
                    &mut a.ln1,
                    &mut a.ln1_mean,
                    &mut a.ln1_rstd,
                    x,
                    &self.params,
                    bl.ln1_w,
                    bl.ln1_b,
                    n,
                    c,
                );
                &a.ln1
            } else {
                x
            };
            backend.matmul_forward(&mut a.qkv, attn_in, &self.params, bl.qkv_w, Some(bl.qkv_b), n, c, 3 * c);
            backend.attention_forward(
                &mut a.atty,
                &mut a.att,
                &mut a.att_drop,
                &a.qkv,
                bsz,
                t,
                c,
                h,
                dropout_for(p, dropout_key, l, 0),
            );
            // The biases of proj, fc and out are added by the ops that read
            // their products (one pass fewer over each product's output);
            // the residual adds run in place over the branch's product.
            backend.matmul_forward(&mut a.res_mid, &a.atty, &self.params, bl.proj_w, None, n, c, c);
            backend.residual_forward(&mut a.res_mid, x, &self.params, bl.proj_b, n, dropout_for(p, dropout_key, l, 1));
            let mlp_in = if pre {
                backend.layernorm_forward(
                    &mut a.ln2,
                    &mut a.ln2_mean,
                    &mut a.ln2_rstd,
                    &a.res_mid,
                    &self.params,
                    bl.ln2_w,
                    bl.ln2_b,
                    n,
                    c,
                );
                &a.ln2
            } else {
                &a.res_mid
            };
            backend.matmul_forward(&mut a.fc, mlp_in, &self.params, bl.fc_w, None, n, c, f);
            backend.activation_forward(&mut a.fc_act, &a.fc, &self.params, bl.fc_b, n, s.activation);
            backend.matmul_forward(&mut a.res_out, &a.fc_act, &self.params, bl.out_w, None, n, f, c);
            backend.residual_forward(
                &mut a.res_out,
                &a.res_mid,
                &self.params,
                bl.out_b,
                n,
                dropout_for(p, dropout_key, l, 2),
            );
        }
        let last = self.blocks.last().map_or(&self.encoded, |b| &b.res_out);
        let head_in = if pre {
            backend.layernorm_forward(
                &mut self.lnf,
                &mut self.lnf_mean,
                &mut self.lnf_rstd,
                last,
                &self.params,
                lay.lnf_w,
                lay.lnf_b,
                n,
                c,
            );
            &self.lnf
        } else {
            last
        };
        backend.matmul_forward(&mut self.logits, head_in, &self.params, lay.unembed, None, n, c, v);
        backend.crossentropy_forward(&mut self.losses, &mut self.probs, &self.logits, &self.targets, &self.mask, n, v);
        backend.download(&mut self.host_losses, &self.losses);
        let total: f64 = self.host_losses.iter().map(|l| l.f64()).sum();
        if self.masked_count > 0.0 { total / self.masked_count } else { 0.0 }
    }

    /// Backward pass for the last forward: overwrites `grads` with ∂loss/∂params.
    pub fn backward(&mut self, backend: &B) {
        let s = &self.shape;
        let (bsz, t, c, f, v, h) = (self.batch, s.n_ctx, s.d_model, s.d_mlp, s.vocab, s.n_heads);
        let n = bsz * t;
        let pre = s.norm == Norm::Pre;
        let p = s.dropout;
        let key = self.dropout_key;
        let lay = &self.layout;
        let g = &mut self.grad;
        backend.zero(&mut self.grads);
        let scale = if self.masked_count > 0.0 { 1.0 / self.masked_count } else { 0.0 };
        backend.crossentropy_backward(&mut g.logits, &self.probs, &self.targets, &self.mask, scale, n, v);
        let last = self.blocks.last().map_or(&self.encoded, |b| &b.res_out);
        if pre {
            backend.matmul_backward(
                &mut g.norm_out,
                false,
                &mut self.grads,
                lay.unembed,
                None,
                &g.logits,
                &self.lnf,
                &self.params,
                n,
                c,
                v,
            );
            backend.layernorm_backward(
                &mut g.residual,
                false,
                &mut self.grads,
                lay.lnf_w,
                lay.lnf_b,
                &g.norm_out,
                last,
                &self.params,
                &self.lnf_mean,
                &self.lnf_rstd,
                n,
                c,
            );
        } else {
            backend.matmul_backward(
                &mut g.residual,
                false,
                &mut self.grads,
                lay.unembed,
                None,
                &g.logits,
                last,
                &self.params,
                n,
                c,
                v,
            );
        }
        for l in (0..s.n_layers).rev() {
            let a = &self.blocks[l];
            let x = if l == 0 { &self.encoded } else { &self.blocks[l - 1].res_out };
            let bl = &lay.blocks[l];
            // MLP branch: g.residual holds ∂L/∂res_out.
            let d_fcproj = branch_grad(backend, &mut g.branch, &g.residual, dropout_for(p, key, l, 2));
            backend.matmul_backward(
                &mut g.fc_act,
                false,
                &mut self.grads,
                bl.out_w,
                Some(bl.out_b),
                d_fcproj,
                &a.fc_act,
                &self.params,
                n,
                f,
                c,
            );
            // fc's bias gradient comes from the activation's backward pass.
            backend.activation_backward(
                &mut g.fc,
                &mut self.grads,
                bl.fc_b,
                &g.fc_act,
                &a.fc,
                &self.params,
                n,
                s.activation,
            );
            if pre {
                backend.matmul_backward(
                    &mut g.norm_out,
                    false,
                    &mut self.grads,
                    bl.fc_w,
                    None,
                    &g.fc,
                    &a.ln2,
                    &self.params,
                    n,
                    c,
                    f,
                );
                backend.layernorm_backward(
                    &mut g.residual,
                    true,
                    &mut self.grads,
                    bl.ln2_w,
                    bl.ln2_b,
                    &g.norm_out,
                    &a.res_mid,
                    &self.params,
                    &a.ln2_mean,
                    &a.ln2_rstd,
                    n,
                    c,
                );
            } else {
                backend.matmul_backward(
                    &mut g.residual,
                    true,
                    &mut self.grads,
                    bl.fc_w,
                    None,
                    &g.fc,
                    &a.res_mid,
                    &self.params,
                    n,
                    c,
                    f,
                );
            }
            // Attention branch: g.residual now holds ∂L/∂res_mid.
            let d_attproj = branch_grad(backend, &mut g.branch, &g.residual, dropout_for(p, key, l, 1));
            backend.matmul_backward(
                &mut g.atty,
                false,
                &mut self.grads,
                bl.proj_w,
                Some(bl.proj_b),
                d_attproj,
                &a.atty,
                &self.params,
                n,
                c,
                c,
            );
            backend.attention_backward(
                &mut g.qkv,
                &mut g.att,
                &g.atty,
                &a.qkv,
                &a.att,
                &a.att_drop,
                bsz,
                t,
                c,
                h,
                dropout_for(p, key, l, 0),
            );
            if pre {
                backend.matmul_backward(
                    &mut g.norm_out,
                    false,
                    &mut self.grads,
                    bl.qkv_w,
                    Some(bl.qkv_b),
                    &g.qkv,
                    &a.ln1,
                    &self.params,
                    n,
                    c,
                    3 * c,
                );
                backend.layernorm_backward(
                    &mut g.residual,
                    true,
                    &mut self.grads,
                    bl.ln1_w,
                    bl.ln1_b,
                    &g.norm_out,
                    x,
                    &self.params,
                    &a.ln1_mean,
                    &a.ln1_rstd,
                    n,
                    c,
                );
            } else {
                backend.matmul_backward(
                    &mut g.residual,
                    true,
                    &mut self.grads,
                    bl.qkv_w,
                    Some(bl.qkv_b),
                    &g.qkv,
                    x,
                    &self.params,
                    n,
                    c,
                    3 * c,
                );
            }
        }
        backend.encoder_backward(&mut self.grads, lay.wte, lay.wpe, &g.residual, &self.tokens, n, t, c);
    }
}

/// ∂L/∂(branch output): the residual gradient through the branch's dropout,
/// or the residual gradient itself when dropout is off.
fn branch_grad<'a, B: Backend>(
    backend: &B,
    scratch: &'a mut B::Buf,
    residual: &'a B::Buf,
    dropout: Dropout,
) -> &'a B::Buf {
    if dropout.active() {
        backend.dropout_backward(scratch, residual, dropout);
        scratch
    } else {
        residual
    }
}

/// Host copy of a device buffer.
pub fn to_host<B: Backend>(backend: &B, buf: &B::Buf, len: usize) -> Vec<B::F> {
    let mut out = vec![B::F::zero(); len];
    backend.download(&mut out, buf);
    out
}
