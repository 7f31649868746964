//! The GPT: a parameter layout over one flat buffer, preallocated
//! activations, and a forward and a backward pass that call the backend's ops
//! in order and in reverse.

mod layout;

pub use layout::{ParamKind, ParamLayout, ParamTensor};

use crate::backend::{
    Activation, Backend, Backprop, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats, Params, Product,
    Rows, Sequences, SoftSlots, WeightGrads,
};
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
    ln1: B::Buf,                  // (N,C)
    ln1_stats: NormStats<B::Buf>, // (N) each
    qkv: B::Buf,                  // (N,3C)
    att: B::AttentionState,       // what attention's backward pass needs (the backend decides)
    atty: B::Buf,                 // (N,C)
    res_mid: B::Buf,              // (N,C) residual after attention (first the attention branch's output projection)
    ln2: B::Buf,                  // (N,C)
    ln2_stats: NormStats<B::Buf>, // (N) each
    fc: B::Buf,                   // (N,F)
    fc_act: B::Buf,               // (N,F)
    res_out: B::Buf, // (N,C) residual after the MLP: the next block's input (first the MLP's output projection)
}

/// Gradient scratch shared by all blocks in the backward pass.
struct GradScratch<B: Backend> {
    residual: B::Buf, // (N,C) ∂L/∂residual stream, updated in place block by block
    branch: B::Buf,   // (N,C) ∂L/∂branch output after dropout (only with dropout)
    norm_out: B::Buf, // (N,C) ∂L/∂(LayerNorm output)
    qkv: B::Buf,      // (N,3C)
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

/// A soft prompt: K input embeddings inserted after BOS in every row (the
/// batch leaves those slots to it, see `Batch::soft_slots`), and their
/// gradient after a backward pass. The tokens after them keep the position
/// embeddings they have without it (1, 2, …), so a model trained with its
/// examples right after BOS is not also asked to read them at shifted
/// positions; the soft embeddings, free vectors, take none. The model's
/// own parameters stay as they are: soft-prompt elicitation optimizes
/// these alone.
pub struct SoftPrompt<B: Backend> {
    pub k: usize,
    pub values: B::Buf, // (K,C)
    pub grads: B::Buf,  // (K,C)
}

impl<B: Backend> SoftPrompt<B> {
    /// A soft prompt holding `values` (K,C) of width `c`.
    pub fn new(backend: &B, values: &[B::F], c: usize) -> Self {
        let mut buf = backend.alloc(values.len());
        backend.upload(&mut buf, values);
        SoftPrompt { k: values.len() / c, values: buf, grads: backend.alloc(values.len()) }
    }
}

pub struct Gpt<B: Backend> {
    pub shape: ModelShape,
    pub layout: ParamLayout,
    pub batch: usize,
    pub params: B::Buf,
    pub grads: B::Buf,
    /// Input embeddings in the first slots of every row, if set. The model's
    /// parameters are then frozen: `backward` computes the soft prompt's
    /// gradient and skips the products' weight gradients, so `grads` is not
    /// the parameters' gradient.
    pub soft_prompt: Option<SoftPrompt<B>>,
    tokens: B::Tokens,  // (N)
    targets: B::Tokens, // (N)
    mask: B::Buf,       // (N)
    encoded: B::Buf,    // (N,C)
    blocks: Vec<BlockActs<B>>,
    lnf: B::Buf,                  // (N,C)
    lnf_stats: NormStats<B::Buf>, // (N) each
    logits: B::Buf,               // (N,V)
    /// Softmax of the logits after a forward pass.
    pub probs: B::Buf, // (N,V)
    losses: B::Buf,               // (N)
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
        let norm_stats = || NormStats { mean: backend.alloc(norm_len(n)), rstd: backend.alloc(norm_len(n)) };
        let heads = Heads { b: batch, t, c, h };
        let blocks = (0..shape.n_layers)
            .map(|_| BlockActs {
                ln1: backend.alloc(norm_len(n * c)),
                ln1_stats: norm_stats(),
                qkv: backend.alloc(n * 3 * c),
                att: backend.alloc_attention(heads, shape.dropout > 0.0),
                atty: backend.alloc(n * c),
                res_mid: backend.alloc(n * c),
                ln2: backend.alloc(norm_len(n * c)),
                ln2_stats: norm_stats(),
                fc: backend.alloc(n * f),
                fc_act: backend.alloc(n * f),
                res_out: backend.alloc(n * c),
            })
            .collect();
        let mut params = backend.alloc(layout.len());
        backend.upload(&mut params, &layout.init::<B::F>(&shape, seed));
        Gpt {
            grads: backend.alloc(layout.len()),
            soft_prompt: None,
            layout,
            batch,
            params,
            tokens: backend.alloc_tokens(n),
            targets: backend.alloc_tokens(n),
            mask: backend.alloc(n),
            encoded: backend.alloc(n * c),
            blocks,
            lnf: backend.alloc(norm_len(n * c)),
            lnf_stats: norm_stats(),
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

        let rows = Rows { n, c };
        let embeddings = Embeddings { wte: lay.wte, wpe: lay.wpe };
        match &self.soft_prompt {
            None => backend.encoder_forward(
                &mut self.encoded,
                &self.tokens,
                &self.params,
                embeddings,
                Sequences { n, t, c },
            ),
            Some(soft) => {
                let slots = SoftSlots { n, t, c, k: soft.k };
                backend.soft_prompt_forward(
                    &mut self.encoded,
                    &self.tokens,
                    &soft.values,
                    &self.params,
                    embeddings,
                    slots,
                );
            }
        }
        for l in 0..s.n_layers {
            let (before, rest) = self.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let x = if l == 0 { &self.encoded } else { &before[l - 1].res_out };
            let bl = &lay.blocks[l];
            let attn_in = if pre {
                let ln1 = LayerNorm { w: bl.ln1_w, b: bl.ln1_b };
                backend.layernorm_forward(&mut a.ln1, &mut a.ln1_stats, x, &self.params, ln1, rows);
                &a.ln1
            } else {
                x
            };
            let qkv = Linear { w: bl.qkv_w, b: Some(bl.qkv_b) };
            backend.matmul_forward(&mut a.qkv, attn_in, &self.params, qkv, Product { n, c, oc: 3 * c });
            let heads = Heads { b: bsz, t, c, h };
            backend.attention_forward(&mut a.atty, &mut a.att, &a.qkv, heads, dropout_for(p, dropout_key, l, 0));
            // The biases of proj, fc and out are added by the ops that read
            // their products (one pass fewer over each product's output);
            // the residual adds run in place over the branch's product.
            let proj = Linear { w: bl.proj_w, b: None };
            backend.matmul_forward(&mut a.res_mid, &a.atty, &self.params, proj, Product { n, c, oc: c });
            backend.residual_forward(&mut a.res_mid, x, &self.params, bl.proj_b, n, dropout_for(p, dropout_key, l, 1));
            let mlp_in = if pre {
                let ln2 = LayerNorm { w: bl.ln2_w, b: bl.ln2_b };
                backend.layernorm_forward(&mut a.ln2, &mut a.ln2_stats, &a.res_mid, &self.params, ln2, rows);
                &a.ln2
            } else {
                &a.res_mid
            };
            let fc = Linear { w: bl.fc_w, b: None };
            backend.matmul_forward(&mut a.fc, mlp_in, &self.params, fc, Product { n, c, oc: f });
            backend.activation_forward(&mut a.fc_act, &a.fc, &self.params, bl.fc_b, n, s.activation);
            let out = Linear { w: bl.out_w, b: None };
            backend.matmul_forward(&mut a.res_out, &a.fc_act, &self.params, out, Product { n, c: f, oc: c });
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
            let lnf = LayerNorm { w: lay.lnf_w, b: lay.lnf_b };
            backend.layernorm_forward(&mut self.lnf, &mut self.lnf_stats, last, &self.params, lnf, rows);
            &self.lnf
        } else {
            last
        };
        let unembed = Linear { w: lay.unembed, b: None };
        backend.matmul_forward(&mut self.logits, head_in, &self.params, unembed, Product { n, c, oc: v });
        let logits = Logits { n, v };
        backend.crossentropy_forward(
            &mut self.losses,
            &mut self.probs,
            &self.logits,
            &self.targets,
            &self.mask,
            logits,
        );
        backend.download(&mut self.host_losses, &self.losses);
        let total: f64 = self.host_losses.iter().map(|l| l.f64()).sum();
        if self.masked_count > 0.0 { total / self.masked_count } else { 0.0 }
    }

    /// Sets the parameters to `values` (the layout's order), as read from a
    /// weights file.
    pub fn load_params(&mut self, backend: &B, values: &[f32]) {
        let host: Vec<B::F> = values.iter().map(|&x| B::F::of(x as f64)).collect();
        backend.upload(&mut self.params, &host);
    }

    /// The logits (N,V) of the last forward pass.
    pub fn logits(&self) -> &B::Buf {
        &self.logits
    }

    /// The residual stream (N,C) after the last forward: entering block
    /// `layer` (0: the embeddings' output), or after the last block when
    /// `layer` is n_layers.
    pub fn residual_stream(&self, layer: usize) -> &B::Buf {
        if layer == 0 { &self.encoded } else { &self.blocks[layer - 1].res_out }
    }

    /// Backward pass for the last forward: overwrites `grads` with
    /// ∂loss/∂params. With a soft prompt, its `grads` get ∂loss/∂(its
    /// values) and the parameters are frozen: the embedding tables get
    /// nothing and the products' weight gradients are skipped, so the
    /// model's `grads` is not to be read (the prompt trains alone).
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
        // With a soft prompt every parameter is frozen: the products' weight gradients would go unused.
        let weights = if self.soft_prompt.is_some() { WeightGrads::Skip } else { WeightGrads::Add };
        let scale = if self.masked_count > 0.0 { 1.0 / self.masked_count } else { 0.0 };
        let logits = Logits { n, v };
        backend.crossentropy_backward(&mut g.logits, &self.probs, &self.targets, &self.mask, scale, logits);
        let (values, grads) = (&self.params, &mut self.grads);
        let rows = Rows { n, c };
        let last = self.blocks.last().map_or(&self.encoded, |b| &b.res_out);
        let unembed = Linear { w: lay.unembed, b: None };
        if pre {
            backend.matmul_backward(
                Backprop { dinp: &mut g.norm_out, dout: &g.logits, inp: &self.lnf },
                false,
                Params { values, grads },
                unembed,
                Product { n, c, oc: v },
                weights,
            );
            backend.layernorm_backward(
                Backprop { dinp: &mut g.residual, dout: &g.norm_out, inp: last },
                false,
                &self.lnf_stats,
                Params { values, grads },
                LayerNorm { w: lay.lnf_w, b: lay.lnf_b },
                rows,
            );
        } else {
            backend.matmul_backward(
                Backprop { dinp: &mut g.residual, dout: &g.logits, inp: last },
                false,
                Params { values, grads },
                unembed,
                Product { n, c, oc: v },
                weights,
            );
        }
        for l in (0..s.n_layers).rev() {
            let a = &self.blocks[l];
            let x = if l == 0 { &self.encoded } else { &self.blocks[l - 1].res_out };
            let bl = &lay.blocks[l];
            // MLP branch: g.residual holds ∂L/∂res_out.
            let d_fcproj = branch_grad(backend, &mut g.branch, &g.residual, dropout_for(p, key, l, 2));
            backend.matmul_backward(
                Backprop { dinp: &mut g.fc_act, dout: d_fcproj, inp: &a.fc_act },
                false,
                Params { values, grads },
                Linear { w: bl.out_w, b: Some(bl.out_b) },
                Product { n, c: f, oc: c },
                weights,
            );
            // fc's bias gradient comes from the activation's backward pass.
            backend.activation_backward(
                Backprop { dinp: &mut g.fc, dout: &g.fc_act, inp: &a.fc },
                Params { values, grads },
                bl.fc_b,
                n,
                s.activation,
            );
            let fc = Linear { w: bl.fc_w, b: None };
            if pre {
                backend.matmul_backward(
                    Backprop { dinp: &mut g.norm_out, dout: &g.fc, inp: &a.ln2 },
                    false,
                    Params { values, grads },
                    fc,
                    Product { n, c, oc: f },
                    weights,
                );
                backend.layernorm_backward(
                    Backprop { dinp: &mut g.residual, dout: &g.norm_out, inp: &a.res_mid },
                    true,
                    &a.ln2_stats,
                    Params { values, grads },
                    LayerNorm { w: bl.ln2_w, b: bl.ln2_b },
                    rows,
                );
            } else {
                backend.matmul_backward(
                    Backprop { dinp: &mut g.residual, dout: &g.fc, inp: &a.res_mid },
                    true,
                    Params { values, grads },
                    fc,
                    Product { n, c, oc: f },
                    weights,
                );
            }
            // Attention branch: g.residual now holds ∂L/∂res_mid.
            let d_attproj = branch_grad(backend, &mut g.branch, &g.residual, dropout_for(p, key, l, 1));
            backend.matmul_backward(
                Backprop { dinp: &mut g.atty, dout: d_attproj, inp: &a.atty },
                false,
                Params { values, grads },
                Linear { w: bl.proj_w, b: Some(bl.proj_b) },
                Product { n, c, oc: c },
                weights,
            );
            backend.attention_backward(
                Backprop { dinp: &mut g.qkv, dout: &g.atty, inp: &a.qkv },
                &a.att,
                Heads { b: bsz, t, c, h },
                dropout_for(p, key, l, 0),
            );
            let qkv = Linear { w: bl.qkv_w, b: Some(bl.qkv_b) };
            if pre {
                backend.matmul_backward(
                    Backprop { dinp: &mut g.norm_out, dout: &g.qkv, inp: &a.ln1 },
                    false,
                    Params { values, grads },
                    qkv,
                    Product { n, c, oc: 3 * c },
                    weights,
                );
                backend.layernorm_backward(
                    Backprop { dinp: &mut g.residual, dout: &g.norm_out, inp: x },
                    true,
                    &a.ln1_stats,
                    Params { values, grads },
                    LayerNorm { w: bl.ln1_w, b: bl.ln1_b },
                    rows,
                );
            } else {
                backend.matmul_backward(
                    Backprop { dinp: &mut g.residual, dout: &g.qkv, inp: x },
                    true,
                    Params { values, grads },
                    qkv,
                    Product { n, c, oc: 3 * c },
                    weights,
                );
            }
        }
        let embeddings = Embeddings { wte: lay.wte, wpe: lay.wpe };
        match &mut self.soft_prompt {
            None => backend.encoder_backward(grads, embeddings, &g.residual, &self.tokens, Sequences { n, t, c }),
            Some(soft) => {
                backend.zero(&mut soft.grads);
                backend.soft_prompt_backward(&mut soft.grads, &g.residual, SoftSlots { n, t, c, k: soft.k });
            }
        }
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
