//! A backend wrapper that times every op: `ebb bench --breakdown`.
//!
//! Ops on the CPU run synchronously, so wall time around each call is the
//! op's time. (A GPU backend would synchronize in `sync` to be timed.)

use std::sync::Mutex;
use std::time::Instant;

use super::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats,
    Params, Product, Rows, Sequences, View,
};

/// Total seconds and calls per op name, in first-call order.
pub struct Profiled<B> {
    pub inner: B,
    totals: Mutex<Vec<(&'static str, f64, u64)>>,
}

impl<B: Backend> Profiled<B> {
    pub fn new(inner: B) -> Self {
        Profiled { inner, totals: Mutex::new(Vec::with_capacity(32)) }
    }

    fn time<R>(&self, name: &'static str, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 += dt;
                entry.2 += 1;
            }
            None => totals.push((name, dt, 1)),
        }
        r
    }

    /// (op, total seconds, calls) since the last reset.
    pub fn totals(&self) -> Vec<(&'static str, f64, u64)> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reset(&self) {
        self.totals.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Forwards each listed op to the inner backend under a timer named after it.
macro_rules! timed_ops {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)* ) $(-> $ret:ty)?; )*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                self.time(stringify!($name), || self.inner.$name($($arg),*))
            }
        )*
    };
}

impl<B: Backend> Backend for Profiled<B> {
    type F = B::F;
    type Buf = B::Buf;
    type Tokens = B::Tokens;
    type AttentionState = B::AttentionState;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn check(&self) -> crate::error::Result<()> {
        self.inner.check()
    }
    fn alloc(&self, len: usize) -> Self::Buf {
        self.inner.alloc(len)
    }
    fn alloc_tokens(&self, len: usize) -> Self::Tokens {
        self.inner.alloc_tokens(len)
    }
    fn alloc_attention(&self, shape: Heads, dropout: bool) -> Self::AttentionState {
        self.inner.alloc_attention(shape, dropout)
    }

    timed_ops! {
        fn upload(&self, dst: &mut Self::Buf, src: &[Self::F]);
        fn upload_tokens(&self, dst: &mut Self::Tokens, src: &[u32]);
        fn download(&self, dst: &mut [Self::F], src: &Self::Buf);
        fn zero(&self, buf: &mut Self::Buf);
        fn encoder_forward(&self, out: &mut Self::Buf, tokens: &Self::Tokens, params: &Self::Buf, emb: Embeddings, shape: Sequences);
        fn encoder_backward(&self, grads: &mut Self::Buf, emb: Embeddings, dout: &Self::Buf, tokens: &Self::Tokens, shape: Sequences);
        fn layernorm_forward(&self, out: &mut Self::Buf, stats: &mut NormStats<Self::Buf>, inp: &Self::Buf, params: &Self::Buf, ln: LayerNorm, shape: Rows);
        fn layernorm_backward(&self, grad: Backprop<'_, Self::Buf>, accumulate: bool, stats: &NormStats<Self::Buf>, params: Params<'_, Self::Buf>, ln: LayerNorm, shape: Rows);
        fn matmul_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, linear: Linear, shape: Product);
        fn matmul_backward(&self, grad: Backprop<'_, Self::Buf>, accumulate: bool, params: Params<'_, Self::Buf>, linear: Linear, shape: Product);
        fn attention_forward(&self, out: &mut Self::Buf, state: &mut Self::AttentionState, qkv: &Self::Buf, shape: Heads, dropout: Dropout);
        fn attention_backward(&self, grad: Backprop<'_, Self::Buf>, state: &Self::AttentionState, shape: Heads, dropout: Dropout);
        fn activation_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, b: View, n: usize, act: Activation);
        fn activation_backward(&self, grad: Backprop<'_, Self::Buf>, params: Params<'_, Self::Buf>, b: View, n: usize, act: Activation);
        fn residual_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, params: &Self::Buf, b: View, n: usize, dropout: Dropout);
        fn dropout_backward(&self, dinp: &mut Self::Buf, dout: &Self::Buf, dropout: Dropout);
        fn crossentropy_forward(&self, losses: &mut Self::Buf, probs: &mut Self::Buf, logits: &Self::Buf, targets: &Self::Tokens, mask: &Self::Buf, shape: Logits);
        fn crossentropy_backward(&self, dlogits: &mut Self::Buf, probs: &Self::Buf, targets: &Self::Tokens, mask: &Self::Buf, scale: f64, shape: Logits);
        fn sum_squares(&self, buf: &Self::Buf) -> f64;
        fn adamw_update(&self, params: &mut Self::Buf, grads: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, groups: &[DecayGroup], hp: AdamW);
    }
}
