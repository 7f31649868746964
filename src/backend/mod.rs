//! The Backend trait: every op the model needs, forward and backward, over
//! device buffers. The CPU backend (`cpu.rs`) is the reference; other backends
//! implement the same methods under the same names and are tested against it.
//!
//! Conventions shared by every op:
//! - Sizes come as named shapes (`Rows`, `Product`, `Heads`, `Sequences`,
//!   `Logits`): `N` is the number of rows (batch × time), `C` the model width.
//! - Parameter tensors are named views (`View`) into one flat parameter
//!   buffer, grouped by layer (`Linear`, `LayerNorm`, `Embeddings`); their
//!   gradients live at the same offsets in the gradient buffer. A backward
//!   pass gets both buffers as `Params`.
//! - A layer's backward pass reads the gradient at its output and the
//!   forward's input, and writes the gradient at its input (`Backprop`).
//! - Parameter gradients are accumulated (`+=`); the caller zeroes the
//!   gradient buffer once per step. Activation gradients are overwritten,
//!   unless an op takes `accumulate: bool`.
//! - Ops return no `Result`: a backend whose device can fail (CUDA) keeps
//!   the first failure (`DeviceFailure`), does no more device work after it,
//!   and reports it from `check`, which the training step, the evaluation
//!   and the bench call (once per step, once per evaluation, at the end).

pub mod cpu;
pub mod cuda;
pub mod profiled;

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::float::Float;

// Constants the backends and the kernels must agree on, defined here once.
// The CPU and CUDA backends use them by name; the kernels get them as NVRTC
// defines (`cuda::compile::defines`), as does the kernels' C++ emulation in
// the tests, and `kernels/common.cuh` refuses to compile without them.

/// Rows per block of the fixed-order sums over rows (bias and LayerNorm
/// parameter gradients): each block's rows are summed in order into a
/// partial, then the partials in block order. Both backends cut the rows
/// alike, so their bias gradients are the same bits.
pub const ROWS_PER_SUM_BLOCK: usize = 64;
/// Elements per partial sum of `sum_squares` (the global gradient norm):
/// each chunk is summed on its own, then the chunks' sums in order.
pub const SUM_SQUARES_CHUNK: usize = 1 << 14;
/// Threads per block of every CUDA kernel launch.
pub const THREADS_PER_BLOCK: usize = 256;
/// Rows per block of the CUDA row-wise kernels, one warp (32 threads) per row.
pub const WARPS_PER_BLOCK: usize = THREADS_PER_BLOCK / 32;
/// Output tile (rows and columns) of one block of the CUDA `matmul` kernel.
pub const MATMUL_TILE: usize = 64;

/// The shared constants the kernels use, by name: each reaches NVRTC (and
/// the emulation check's C++ compiler) as `-DNAME=value`.
pub const KERNEL_CONSTANTS: [(&str, usize); 5] = [
    ("ROWS_PER_SUM_BLOCK", ROWS_PER_SUM_BLOCK),
    ("SUM_SQUARES_CHUNK", SUM_SQUARES_CHUNK),
    ("THREADS_PER_BLOCK", THREADS_PER_BLOCK),
    ("WARPS_PER_BLOCK", WARPS_PER_BLOCK),
    ("MATMUL_TILE", MATMUL_TILE),
];

/// Whether the CUDA driver library can be loaded on this machine. cudarc
/// panics when asked to open a context without it, so ask this first.
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to load the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The first failure of a backend's device work, kept until the backend is
/// dropped. Ops have no error path, so a backend records its failure here
/// and skips all later device work: the first failure explains the rest,
/// and work after it would only read what was never written. A failed
/// backend stays failed (`check` returns the failure every time); to go on,
/// open a new one.
#[derive(Debug, Default)]
pub struct DeviceFailure(OnceLock<String>);

impl DeviceFailure {
    /// Keeps `message`, a one-line account of what failed, unless a failure
    /// is already held.
    pub fn record(&self, message: String) {
        let _ = self.0.set(message);
    }

    /// Whether a failure is held.
    pub fn is_set(&self) -> bool {
        self.0.get().is_some()
    }

    /// Ok while nothing failed; the held failure as `Error::Device` otherwise.
    pub fn check(&self) -> Result<()> {
        match self.0.get() {
            None => Ok(()),
            Some(msg) => Err(Error::Device(msg.clone())),
        }
    }
}

/// Where one parameter tensor lives in the flat buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub offset: usize,
    pub len: usize,
}

impl View {
    pub fn range(self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Inverted dropout with a counter-based mask: element `i` is kept when
/// `hash(key, i)` maps to a uniform value ≥ `p`, so the mask is a pure
/// function of (key, index) and can be recomputed in the backward pass on
/// any thread, in any order. `p == 0` means no dropout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub key: u64,
}

impl Dropout {
    pub const OFF: Dropout = Dropout { p: 0.0, key: 0 };

    pub fn active(self) -> bool {
        self.p > 0.0
    }

    /// The multiplier for element `i`: 0 when dropped, 1/(1-p) when kept.
    /// Element i is dropped when u = h/2²⁴ < p for its 24-bit hash h; as h is
    /// an integer, that is h < ⌈p·2²⁴⌉, so the test needs no float at all.
    #[inline]
    pub fn factor<F: Float>(self, i: usize) -> F {
        let h = crate::rng::mix64(self.key ^ crate::rng::mix64(i as u64)) >> 40;
        if h < self.drop_below() { F::zero() } else { F::of(1.0 / (1.0 - self.p)) }
    }

    /// ⌈p·2²⁴⌉: hashes below it are dropped (p·2²⁴ is exact in f64; at
    /// most 2²⁴ as p < 1). The CUDA kernels take it as their threshold.
    #[inline]
    pub fn drop_below(self) -> u64 {
        (self.p * (1u64 << 24) as f64).ceil() as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
}

/// AdamW hyper-parameters for one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1-based step count, for bias correction.
    pub t: u64,
    /// Multiplier applied to every gradient first (global-norm clipping).
    pub grad_scale: f64,
}

/// One parameter tensor's share of an AdamW update: its view and its weight decay.
#[derive(Clone, Copy, Debug)]
pub struct DecayGroup {
    pub view: View,
    pub weight_decay: f64,
}

/// N rows of width C: the (N,C) activations a row-wise op (LayerNorm) reads
/// and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub n: usize,
    pub c: usize,
}

/// A matrix product with a weight: inp (N,C) · w (OC,C)ᵀ → out (N,OC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    pub n: usize,
    pub c: usize,
    pub oc: usize,
}

/// Causal self-attention: B sequences of T positions, width C split into H
/// heads of C/H; qkv (B,T,3C), out (B,T,C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub h: usize,
}

/// N rows of width C cut into sequences of T positions: row n is position
/// n mod T (the encoder's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequences {
    pub n: usize,
    pub t: usize,
    pub c: usize,
}

/// N rows of width C cut into sequences of T positions, of which positions
/// 1..=K (after the first) take K soft input embeddings (soft prompts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftSlots {
    pub n: usize,
    pub t: usize,
    pub c: usize,
    pub k: usize,
}

/// N rows of V logits, one per vocabulary entry (the loss's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logits {
    pub n: usize,
    pub v: usize,
}

/// A linear layer's parameters: weight w (OC,C) and, if it has one, bias b (OC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub w: View,
    pub b: Option<View>,
}

/// Whether `matmul_backward` adds the weight's and bias's gradients (`Add`),
/// or only computes the input's (`Skip`: every parameter is frozen, as while
/// a soft prompt is optimized, and the dW product would be wasted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGrads {
    Add,
    Skip,
}

/// A LayerNorm's parameters: gain w (C) and bias b (C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNorm {
    pub w: View,
    pub b: View,
}

/// The embedding tables: tokens wte (V,C) and positions wpe (T,C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embeddings {
    pub wte: View,
    pub wpe: View,
}

/// A LayerNorm's statistics per row, kept by its forward pass for its
/// backward: mean (N) and 1/standard deviation rstd (N).
pub struct NormStats<Buf> {
    pub mean: Buf,
    pub rstd: Buf,
}

/// The parameters in a backward pass: their values, read, and the gradient
/// buffer their gradients are added to (at the same offsets).
pub struct Params<'a, Buf> {
    pub values: &'a Buf,
    pub grads: &'a mut Buf,
}

/// The activations of a layer's backward pass: it reads the gradient at the
/// layer's output `dout` and the forward's input `inp`, and writes the
/// gradient at its input `dinp` (the same shape as `inp`).
pub struct Backprop<'a, Buf> {
    pub dinp: &'a mut Buf,
    pub dout: &'a Buf,
    pub inp: &'a Buf,
}

/// Every op of the `Backend` trait, its doc comment and signature written
/// once: `with_backend_ops!(m)` hands the list to macro `m`, which makes one
/// item per op. The trait declares them (`declare_ops`), the profiling
/// wrapper times them, the tests' failing backend forwards them; a backend
/// implements them. Adding an op is one line here and one implementation
/// per backend.
#[macro_export]
macro_rules! with_backend_ops {
    ($callback:ident) => {
        $callback! {
            fn upload(&self, dst: &mut Self::Buf, src: &[Self::F]);
            fn upload_tokens(&self, dst: &mut Self::Tokens, src: &[u32]);
            fn download(&self, dst: &mut [Self::F], src: &Self::Buf);
            fn zero(&self, buf: &mut Self::Buf);

            /// out (N,C) = wte[tokens[n]] + wpe[n mod T]; tokens (N), wte (V,C), wpe (T,C)
            fn encoder_forward(&self, out: &mut Self::Buf, tokens: &Self::Tokens, params: &Self::Buf, emb: Embeddings, shape: Sequences);
            /// dwte[tokens[n]] += dout[n]; dwpe[n mod T] += dout[n]; dout (N,C)
            fn encoder_backward(&self, grads: &mut Self::Buf, emb: Embeddings, dout: &Self::Buf, tokens: &Self::Tokens, shape: Sequences);
            /// The encoder with K soft input embeddings after each sequence's first
            /// token, the tokens after them keeping their own positions: at position
            /// p = n mod T, out[n] = wte[tokens[n]] + wpe[p] for p = 0, soft[p - 1] for
            /// 1 ≤ p ≤ K, wte[tokens[n]] + wpe[p - K] after. soft (K,C), tokens (N), out (N,C)
            fn soft_prompt_forward(&self, out: &mut Self::Buf, tokens: &Self::Tokens, soft: &Self::Buf, params: &Self::Buf, emb: Embeddings, shape: SoftSlots);
            /// dsoft[i] += Σ dout[n] over the rows n at position n mod T = i + 1, in row
            /// order: the loss's gradient with respect to the soft input embeddings.
            /// dsoft (K,C), dout (N,C)
            fn soft_prompt_backward(&self, dsoft: &mut Self::Buf, dout: &Self::Buf, shape: SoftSlots);

            /// out (N,C) = (inp - mean) * rstd * w + b; inp (N,C), mean/rstd (N), w/b (C)
            fn layernorm_forward(&self, out: &mut Self::Buf, stats: &mut NormStats<Self::Buf>, inp: &Self::Buf, params: &Self::Buf, ln: LayerNorm, shape: Rows);
            /// dinp (N,C) (+)= ∂L/∂inp; dw, db (C) += ...; dout, inp (N,C)
            fn layernorm_backward(&self, grad: Backprop<'_, Self::Buf>, accumulate: bool, stats: &NormStats<Self::Buf>, params: Params<'_, Self::Buf>, ln: LayerNorm, shape: Rows);

            /// out (N,OC) = inp (N,C) · w (OC,C)ᵀ + b (OC)
            fn matmul_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, linear: Linear, shape: Product);
            /// dinp (N,C) (+)= dout (N,OC) · w; with `WeightGrads::Add` also
            /// dw (OC,C) += doutᵀ · inp and db (OC) += Σₙ dout
            fn matmul_backward(&self, grad: Backprop<'_, Self::Buf>, accumulate: bool, params: Params<'_, Self::Buf>, linear: Linear, shape: Product, weights: WeightGrads);

            /// Causal multi-head self-attention: qkv (B,T,3C) → out (B,T,C).
            /// `state` (from `alloc_attention`) keeps what the backend's backward
            /// pass needs: the CUDA backend the softmax probabilities and those after
            /// dropout (B,H,T,T each); the CPU backend each softmax row's maximum and
            /// normalizer (B,H,T,2: it computes the probabilities again).
            fn attention_forward(&self, out: &mut Self::Buf, state: &mut Self::AttentionState, qkv: &Self::Buf, shape: Heads, dropout: Dropout);
            /// dqkv (B,T,3C) = ∂L/∂qkv from dout (B,T,C), qkv and the forward's state
            fn attention_backward(&self, grad: Backprop<'_, Self::Buf>, state: &Self::AttentionState, shape: Heads, dropout: Dropout);

            /// out (N,F) = act(inp (N,F) + b (F)). The bias of the matrix product
            /// that made `inp` is added here, in the same pass as the activation, so
            /// the product need not write its output twice; F = b.len.
            fn activation_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, b: View, n: usize, act: Activation);
            /// dinp (N,F) = act'(inp + b) · dout; db (F) += Σₙ dinp; dout, inp (N,F)
            fn activation_backward(&self, grad: Backprop<'_, Self::Buf>, params: Params<'_, Self::Buf>, b: View, n: usize, act: Activation);

            /// out (N,C) = inp (N,C) + dropout(out + b (C)), in place: `out` holds
            /// the branch's last product on entry and the residual sum on return
            /// (the product's output is dead after this, and writing over it spares
            /// a fresh buffer's trip through memory). The product's bias is added
            /// here (see `activation_forward`); its gradient is that product's,
            /// Σₙ of the branch gradient. C = b.len.
            fn residual_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, b: View, n: usize, dropout: Dropout);
            /// dinp (N) = dropout mask · dout (N)
            fn dropout_backward(&self, dinp: &mut Self::Buf, dout: &Self::Buf, dropout: Dropout);

            /// probs (N,V) = softmax(logits (N,V)); losses (N) = -log probs[target] · mask (0 where masked out)
            fn crossentropy_forward(&self, losses: &mut Self::Buf, probs: &mut Self::Buf, logits: &Self::Buf, targets: &Self::Tokens, mask: &Self::Buf, shape: Logits);
            /// dlogits (N,V) = (probs - onehot(target)) · mask · scale
            fn crossentropy_backward(&self, dlogits: &mut Self::Buf, probs: &Self::Buf, targets: &Self::Tokens, mask: &Self::Buf, scale: f64, shape: Logits);

            /// Σ g² over `views` of buf (each cut into chunks of SUM_SQUARES_CHUNK, the chunks added in order)
            fn sum_squares(&self, buf: &Self::Buf, views: &[View]) -> f64;
            /// One AdamW step over every group (each group one parameter tensor).
            fn adamw_update(&self, params: &mut Self::Buf, grads: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, groups: &[DecayGroup], hp: AdamW);
        }
    };
}

/// The op list as trait method declarations.
macro_rules! declare_ops {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* ) $(-> $ret:ty)?; )*) => {
        $( $(#[$doc])* fn $name(&self $(, $arg: $ty)*) $(-> $ret)?; )*
    };
}

pub trait Backend {
    type F: Float;
    /// A buffer of `F` on the device.
    type Buf;
    /// A buffer of token ids on the device.
    type Tokens;
    /// What one attention layer's forward pass keeps for its backward pass;
    /// each backend keeps what its backward needs (see `attention_forward`).
    type AttentionState;

    fn name(&self) -> String;
    /// The first failure of the device work asked for so far (out of
    /// memory, a driver or kernel error) as `Error::Device`, or Ok. Waits
    /// for queued work first, so a failure of work already queued is seen.
    /// After a failure, ops do nothing and reads give zeros, so a caller
    /// checks before it trusts or keeps what it read back: the training step
    /// checks once per step, the run after each evaluation and before it
    /// writes weights or a checkpoint, the bench at the end. The CPU backend
    /// never fails.
    fn check(&self) -> Result<()>;
    /// A zeroed buffer of `len` elements.
    fn alloc(&self, len: usize) -> Self::Buf;
    fn alloc_tokens(&self, len: usize) -> Self::Tokens;
    /// The state of one attention layer of this shape, run with dropout or
    /// not (any scratch its backward pass needs is the backend's own).
    fn alloc_attention(&self, shape: Heads, dropout: bool) -> Self::AttentionState;

    with_backend_ops!(declare_ops);
}
