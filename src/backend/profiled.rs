//! A backend wrapper that times every op: `ebb bench --breakdown`.
//!
//! Ops on the CPU run synchronously, so wall time around each call is the
//! op's time. (A GPU backend would synchronize in `sync` to be timed.)

use std::sync::Mutex;
use std::time::Instant;

use super::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats,
    Params, Product, Rows, Sequences, SoftSlots, View, WeightGrads,
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
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* ) $(-> $ret:ty)?; )*) => {
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

    crate::with_backend_ops!(timed_ops);
}
