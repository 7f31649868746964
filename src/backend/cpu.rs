//! The CPU backend: the reference implementation of every op.
//!
//! Multi-threaded with rayon, matrix products through the `gemm` crate.
//! Determinism: work is split only over independent outputs (rows, columns,
//! attention heads, fixed-size chunks) and every reduction runs in a fixed
//! order, so results are the same bits at any thread count.

use std::marker::PhantomData;
use std::sync::Mutex;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats,
    Params, Product, ROWS_PER_SUM_BLOCK, Rows, SUM_SQUARES_CHUNK, Sequences, SoftSlots, View, WeightGrads,
};
use crate::float::Float;

mod attention;

/// Rows per rayon task in row-wise ops.
const ROWS_PER_TASK: usize = 8;
/// Elements per rayon task in element-wise ops (`sum_squares` cuts its
/// fixed-order sum at SUM_SQUARES_CHUNK, shared with the CUDA backend).
const ELEMS_PER_TASK: usize = 1 << 14;
/// Columns per rayon task in column-wise passes (embedding gradients, block sums).
const COLS_PER_TASK: usize = 16;

/// Row blocks a weight gradient's reduction over N is split into (when N is
/// large enough). Fixed, not tied to the thread count, so the summation
/// order, and with it every bit, is the same however many threads run.
const WEIGHT_GRAD_SPLITS: usize = 4;

pub struct CpuBackend<F> {
    /// Partial sums of `sum_squares`, one per fixed-size chunk, kept between calls.
    partials: Mutex<Vec<f64>>,
    /// Per-row-block partial gradients (weights, biases, LayerNorm), kept between calls.
    block_partials: Mutex<Vec<F>>,
    /// Run the AVX-512 builds of the hot loops (where the CPU has it).
    avx512: bool,
    _float: PhantomData<F>,
}

impl<F: Float> Default for CpuBackend<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> CpuBackend<F> {
    pub fn new() -> Self {
        CpuBackend {
            partials: Mutex::new(Vec::new()),
            block_partials: Mutex::new(Vec::new()),
            avx512: has_avx512(),
            _float: PhantomData,
        }
    }

    /// The same backend without its AVX-512 builds, for checking that both
    /// builds give the same bits.
    pub fn without_avx512(self) -> Self {
        CpuBackend { avx512: false, ..self }
    }
}

/// A raw pointer that may cross threads; each user writes disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut<F>(*mut F);
unsafe impl<F> Send for SharedMut<F> {}
unsafe impl<F> Sync for SharedMut<F> {}
impl<F> SharedMut<F> {
    #[inline]
    fn at(self, offset: usize) -> *mut F {
        unsafe { self.0.add(offset) }
    }
}

/// A strided matrix operand: element (i, j) is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
struct Strided<F> {
    ptr: *const F,
    rs: usize,
    cs: usize,
}

/// A slot in per-thread scratch for the thread running this closure: the
/// rayon worker's index, or one past the last for the calling thread (a
/// parallel loop that does not split runs there). Scratch for an op is held
/// for the whole op, so no two threads share a slot.
fn scratch_slot() -> usize {
    rayon::current_thread_index().unwrap_or(rayon::current_num_threads())
}

/// Slots `scratch_slot` can return.
fn scratch_slots() -> usize {
    rayon::current_num_threads() + 1
}

/// gemm's threading for the current rayon pool: none on one thread.
pub(crate) fn threads_for_gemm() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// dst (m,n) (+)= scale · lhs (m,k) · rhs (k,n), through the gemm crate.
///
/// # Safety
/// Every pointer must be valid for the strided extent it describes, and `dst`
/// must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided<F: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut F,
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided<F>,
    rhs: Strided<F>,
    scale: F,
    parallelism: Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            F::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Σ x in a fixed order: eight interleaved partial sums (x[0], x[8], …),
/// (x[1], x[9], …), …, combined pairwise, then the tail. Eight independent
/// chains let the adds overlap and vectorize, unlike one running sum.
#[inline(always)]
fn sum<F: Float>(x: &[F]) -> F {
    sum_zip(x, x, x, |x, _, _| x)
}

/// Σ a·b in the same fixed order as `sum`.
#[inline(always)]
fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    sum_zip(a, b, b, |a, b, _| a * b)
}

/// Σ f(a[j], b[j], c[j]) over three slices of a's length, in `sum`'s fixed
/// order, accumulated in f's result type (F, or f64 for the gradient norm).
/// Whole chunks of eight, so no element access needs a bounds check and the
/// lanes vectorize.
#[inline(always)]
fn sum_zip<F: Float, S: Float>(a: &[F], b: &[F], c: &[F], f: impl Fn(F, F, F) -> S) -> S {
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let mut acc = [S::zero(); 8];
    for ((a, b), c) in a.chunks_exact(8).zip(b.chunks_exact(8)).zip(c.chunks_exact(8)) {
        for (lane, s) in acc.iter_mut().enumerate() {
            *s += f(a[lane], b[lane], c[lane]);
        }
    }
    let mut total = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for j in n / 8 * 8..n {
        total += f(a[j], b[j], c[j]);
    }
    total
}

/// p_t − 1 computed as −Σ_{j≠t} p_j: the sum of a row's probabilities other
/// than the target's, in index order (the CUDA kernel sums in the same order).
fn others_sum<F: Float>(p: &[F], t: usize) -> F {
    p.iter().enumerate().filter(|&(j, _)| j != t).fold(F::zero(), |s, (_, &p)| s + p)
}

/// The largest element of NaN-free input. Eight independent running maxima
/// (a max is the same whatever the order) instead of one chain of compares,
/// each waiting for the last.
#[inline(always)]
fn max<F: Float>(x: &[F]) -> F {
    let larger = |m: F, v: F| if v > m { v } else { m };
    let mut acc = [F::neg_infinity(); 8];
    let lanes = x.chunks_exact(8);
    let tail = lanes.remainder();
    for chunk in lanes {
        for (m, &v) in acc.iter_mut().zip(chunk) {
            *m = larger(*m, v);
        }
    }
    acc.iter().chain(tail).fold(F::neg_infinity(), |m, &v| larger(m, v))
}

/// a += x and b += x, element-wise (separate slices, so the loop vectorizes).
#[inline]
fn add_to_both<F: Float>(a: &mut [F], b: &mut [F], x: &[F]) {
    for ((a, b), &x) in a.iter_mut().zip(b.iter_mut()).zip(x) {
        *a += x;
        *b += x;
    }
}

/// out += x, element-wise.
#[inline]
fn add_assign<F: Float>(out: &mut [F], x: &[F]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o += x;
    }
}

/// GELU's gate 0.5·(1 + tanh u) with u = s·(x + a·x³), in its sigmoid form
/// 1 / (1 + e^(−2u)): one exp and one division, fewer steps than through tanh
/// (and libm's tanh is several times slower than either).
#[inline]
fn gelu_gate<F: Float>(x: F) -> F {
    let u = F::of((2.0 / std::f64::consts::PI).sqrt()) * x * (F::one() + F::of(0.044715) * x * x);
    F::one() / (F::one() + (F::of(-2.0) * u).fast_exp())
}

/// GELU (the tanh approximation): x · gate(x).
#[inline]
fn gelu<F: Float>(x: F) -> F {
    x * gelu_gate(x)
}

/// GELU′(x) = g + x·g·(1 − g)·2u′ with g = gate(x), u′ = s·(1 + 3a·x²).
#[inline]
fn gelu_grad<F: Float>(x: F) -> F {
    let g = gelu_gate(x);
    let du = F::of(2.0 * (2.0 / std::f64::consts::PI).sqrt()) * (F::one() + F::of(3.0 * 0.044715) * x * x);
    g + x * g * (F::one() - g) * du
}

impl<F: Float> CpuBackend<F> {
    /// The scratch buffer, at least `len` long. It grows on the first step
    /// only: every later step asks for the same sizes.
    fn scratch(&self, len: usize) -> std::sync::MutexGuard<'_, Vec<F>> {
        let mut s = self.block_partials.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < len {
            s.resize(len, F::zero());
            advise_huge_pages(&s);
        }
        s
    }

    /// Sums over rows in a fixed order, for parameter gradients: rows are cut
    /// into blocks of ROWS_PER_SUM_BLOCK; `add_block(rows, partial)` adds a
    /// block's contributions into its zeroed partial (the outputs laid end to
    /// end); then each output gets Σ partials in block order. The blocks
    /// depend only on `rows`, so the bits do not depend on the thread count.
    fn add_block_sums(
        &self,
        outs: &mut [&mut [F]],
        rows: usize,
        add_block: impl Fn(std::ops::Range<usize>, &mut [F]) + Sync,
    ) {
        let width: usize = outs.iter().map(|o| o.len()).sum();
        let blocks = rows.div_ceil(ROWS_PER_SUM_BLOCK);
        let mut partials = self.scratch(blocks * width);
        partials[..blocks * width].par_chunks_mut(width).enumerate().for_each(|(b, part)| {
            part.fill(F::zero());
            add_block(b * ROWS_PER_SUM_BLOCK..((b + 1) * ROWS_PER_SUM_BLOCK).min(rows), part);
        });
        let partials = &partials[..blocks * width];
        let mut offset = 0;
        for out in outs.iter_mut() {
            out.par_chunks_mut(COLS_PER_TASK).enumerate().for_each(|(chunk, o)| {
                let j0 = offset + chunk * COLS_PER_TASK;
                for part in partials.chunks(width) {
                    add_assign(o, &part[j0..j0 + o.len()]);
                }
            });
            offset += out.len();
        }
    }

    /// dw (OC,C) += doutᵀ (OC,N) · inp (N,C).
    ///
    /// One matrix product with a long reduction (N) and a small output runs
    /// on one core, so N is cut into WEIGHT_GRAD_SPLITS row blocks: the first
    /// accumulates into dw, the others into partials, all in parallel; then
    /// dw += partial₁ + partial₂ + … in that order.
    fn weight_grad(&self, dw: &mut [F], dout: &[F], inp: &[F], shape: Product) {
        let Product { n, c, oc } = shape;
        let splits = if n >= 256 * WEIGHT_GRAD_SPLITS { WEIGHT_GRAD_SPLITS } else { 1 };
        let rows = n.div_ceil(splits);
        let need = (splits - 1) * oc * c;
        let mut partials = self.scratch(need);
        let dw_ptr = SharedMut(dw.as_mut_ptr());
        let partial_ptr = SharedMut(partials.as_mut_ptr());
        (0..splits).into_par_iter().for_each(|split| {
            let r0 = split * rows;
            let r1 = (r0 + rows).min(n);
            let (dst, accumulate) =
                if split == 0 { (dw_ptr.at(0), true) } else { (partial_ptr.at((split - 1) * oc * c), false) };
            unsafe {
                gemm_strided(
                    oc,
                    c,
                    r1 - r0,
                    dst,
                    c,
                    accumulate,
                    Strided { ptr: dout[r0 * oc..].as_ptr(), rs: 1, cs: oc },
                    Strided { ptr: inp[r0 * c..].as_ptr(), rs: c, cs: 1 },
                    F::one(),
                    if splits == 1 { threads_for_gemm() } else { Parallelism::None },
                );
            }
        });
        if splits > 1 {
            let partials = &partials[..need];
            dw.par_chunks_mut(ELEMS_PER_TASK).enumerate().for_each(|(chunk, out)| {
                let base = chunk * ELEMS_PER_TASK;
                for p in partials.chunks(oc * c) {
                    add_assign(out, &p[base..base + out.len()]);
                }
            });
        }
    }
}

/// Declares `fn NAME<F: Float>(avx512: bool, args…)`: the body is built twice,
/// once as usual (8-lane vectors) and once with AVX-512 enabled (16-lane),
/// and `avx512` picks the build. Both do the same operations in the same
/// order, so they give the same bits (tests/ops.rs checks it).
macro_rules! built_for_avx512_too {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        mod $name {
            use super::*;

            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            pub(super) fn plain<F: Float>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl"))]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn avx512<F: Float>($($arg: $ty),*) $(-> $ret)? {
                plain($($arg),*)
            }
        }

        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name<F: Float>(avx512: bool, $($arg: $ty),*) $(-> $ret)? {
            if avx512 { unsafe { $name::avx512($($arg),*) } } else { $name::plain($($arg),*) }
        }
    };
}

built_for_avx512_too! {
    /// One row: out (F) = GELU(inp + b).
    fn gelu_forward(out: &mut [F], inp: &[F], b: &[F]) {
        for (o, (&x, &b)) in out.iter_mut().zip(inp.iter().zip(b)) {
            *o = gelu(x + b);
        }
    }
}

built_for_avx512_too! {
    /// One row: dinp (F) = dout · GELU'(inp + b), and db += dinp.
    fn gelu_backward(dinp: &mut [F], db: &mut [F], dout: &[F], inp: &[F], b: &[F]) {
        for ((di, db), (&d, (&x, &b))) in dinp.iter_mut().zip(db).zip(dout.iter().zip(inp.iter().zip(b))) {
            *di = d * gelu_grad(x + b);
            *db += *di;
        }
    }
}

built_for_avx512_too! {
    /// One LayerNorm row: out (C) = (x − mean) · rstd · w + b; returns (mean, rstd).
    fn layernorm_row(out: &mut [F], x: &[F], w: &[F], b: &[F]) -> (F, F) {
        let cf = F::of(x.len() as f64);
        let m = sum(x) / cf;
        let var = sum_zip(x, x, x, |x, _, _| (x - m) * (x - m)) / cf;
        let r = F::one() / (var + F::of(1e-5)).sqrt();
        for (o, (&x, (&w, &b))) in out.iter_mut().zip(x.iter().zip(w.iter().zip(b))) {
            *o = (x - m) * r * w + b;
        }
        (m, r)
    }
}

built_for_avx512_too! {
    /// One LayerNorm row backward: dinp (C) (+)= its input gradient, and the
    /// row's share of the weight and bias gradients is added to dw, db.
    fn layernorm_row_backward(dinp: &mut [F], accumulate: bool, dw: &mut [F], db: &mut [F], dout: &[F], x: &[F], w: &[F], mean: F, rstd: F) {
        let c = x.len();
        let cf = F::of(c as f64);
        let (d, w) = (&dout[..c], &w[..c]);
        let (m, r) = (mean, rstd);
        let mean_dxhat = dot(d, w) / cf;
        let mean_dxhat_xhat = sum_zip(d, w, x, |d, w, x| (d * w) * ((x - m) * r)) / cf;
        for (((di, dw), db), (&d, (&x, &w))) in dinp.iter_mut().zip(dw).zip(db).zip(d.iter().zip(x.iter().zip(w))) {
            let xhat = (x - m) * r;
            let g = r * (d * w - mean_dxhat - xhat * mean_dxhat_xhat);
            if accumulate { *di += g } else { *di = g }
            *dw += xhat * d;
            *db += d;
        }
    }
}

built_for_avx512_too! {
    /// One row: out (C) = x + (out + b) ⊙ mask, the mask's elements
    /// numbered from `first` (AVX-512 has the 64-bit multiplies the mask's
    /// hash needs in vectors).
    fn residual_dropout(out: &mut [F], x: &[F], b: &[F], dropout: Dropout, first: usize) {
        for (i, (o, (&x, &b))) in out.iter_mut().zip(x.iter().zip(b)).enumerate() {
            *o = x + (*o + b) * dropout.factor::<F>(first + i);
        }
    }
}

built_for_avx512_too! {
    /// dinp = dout ⊙ mask, the mask's elements numbered from `first`.
    fn dropout_scale(dinp: &mut [F], dout: &[F], dropout: Dropout, first: usize) {
        for (i, (di, &d)) in dinp.iter_mut().zip(dout).enumerate() {
            *di = d * dropout.factor::<F>(first + i);
        }
    }
}

/// One row: dinp (F) = dout where inp + b > 0, else 0; and db += dinp.
fn relu_backward<F: Float>(dinp: &mut [F], db: &mut [F], dout: &[F], inp: &[F], b: &[F]) {
    for ((di, db), (&d, (&x, &b))) in dinp.iter_mut().zip(db).zip(dout.iter().zip(inp.iter().zip(b))) {
        *di = if x + b > F::zero() { d } else { F::zero() };
        *db += *di;
    }
}

/// Rows per rayon task in a row-wise pass over rows `width` long: about
/// ELEMS_PER_TASK elements, and at least one row.
fn rows_per_task(width: usize) -> usize {
    (ELEMS_PER_TASK / width.max(1)).max(1)
}

/// Asks Linux to back `buf` with 2 MB pages where it allows them on request
/// (transparent huge pages in `madvise` mode, the common default). A step
/// streams through hundreds of MB of activations; with 4 KB pages, rows of a
/// strided operand (q, k and v lie 3C apart) each cost a TLB miss. Pages
/// already touched keep their size; the contents never change.
fn advise_huge_pages<F>(buf: &[F]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 1 << 21;
        let start = buf.as_ptr() as usize;
        let (first, last) =
            (start.next_multiple_of(HUGE_PAGE), (start + std::mem::size_of_val(buf)) / HUGE_PAGE * HUGE_PAGE);
        if last > first {
            // SAFETY: advice over whole pages inside `buf`; it changes how
            // they are backed, not what they hold.
            unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Whether this CPU runs AVX-512 (the answer is cached by std).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl<F: Float> Backend for CpuBackend<F> {
    type F = F;
    type Buf = Vec<F>;
    type Tokens = Vec<u32>;
    /// Each softmax row's maximum and 1/Σ, (B,H,T,2): see `attention`.
    type AttentionState = Vec<F>;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn check(&self) -> crate::error::Result<()> {
        Ok(())
    }

    fn alloc(&self, len: usize) -> Vec<F> {
        let buf = vec![F::zero(); len];
        advise_huge_pages(&buf);
        buf
    }

    fn alloc_tokens(&self, len: usize) -> Vec<u32> {
        vec![0; len]
    }

    fn alloc_attention(&self, shape: Heads, _dropout: bool) -> Vec<F> {
        let Heads { b, t, h, .. } = shape;
        self.alloc(b * h * t * 2)
    }

    fn upload(&self, dst: &mut Vec<F>, src: &[F]) {
        dst.copy_from_slice(src);
    }

    fn upload_tokens(&self, dst: &mut Vec<u32>, src: &[u32]) {
        dst.copy_from_slice(src);
    }

    fn download(&self, dst: &mut [F], src: &Vec<F>) {
        dst.copy_from_slice(src);
    }

    fn zero(&self, buf: &mut Vec<F>) {
        buf.par_chunks_mut(ELEMS_PER_TASK).for_each(|c| c.fill(F::zero()));
    }

    fn encoder_forward(&self, out: &mut Vec<F>, tokens: &Vec<u32>, params: &Vec<F>, emb: Embeddings, shape: Sequences) {
        let Sequences { n, t, c } = shape;
        let (wte, wpe) = (&params[emb.wte.range()], &params[emb.wpe.range()]);
        out[..n * c].par_chunks_mut(c).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(row, o)| {
            let tok = tokens[row] as usize;
            let pos = row % t;
            for ((o, &e), &p) in o.iter_mut().zip(&wte[tok * c..(tok + 1) * c]).zip(&wpe[pos * c..(pos + 1) * c]) {
                *o = e + p;
            }
        });
    }

    fn encoder_backward(
        &self,
        grads: &mut Vec<F>,
        emb: Embeddings,
        dout: &Vec<F>,
        tokens: &Vec<u32>,
        shape: Sequences,
    ) {
        let Sequences { n, t, c } = shape;
        // Each task owns a block of columns of both tables and walks the rows in order.
        let dwte = SharedMut(grads[emb.wte.range()].as_mut_ptr());
        let dwpe = SharedMut(grads[emb.wpe.range()].as_mut_ptr());
        let blocks = c.div_ceil(COLS_PER_TASK);
        (0..blocks).into_par_iter().for_each(|block| {
            let j0 = block * COLS_PER_TASK;
            let j1 = (j0 + COLS_PER_TASK).min(c);
            for row in 0..n {
                let (tok, pos) = (tokens[row] as usize, row % t);
                // The two tables are disjoint views of the gradients, and this
                // task alone writes columns [j0, j1) of both.
                let (dtok, dpos) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(dwte.at(tok * c + j0), j1 - j0),
                        std::slice::from_raw_parts_mut(dwpe.at(pos * c + j0), j1 - j0),
                    )
                };
                add_to_both(dtok, dpos, &dout[row * c + j0..row * c + j1]);
            }
        });
    }

    fn soft_prompt_forward(
        &self,
        out: &mut Vec<F>,
        tokens: &Vec<u32>,
        soft: &Vec<F>,
        params: &Vec<F>,
        emb: Embeddings,
        shape: SoftSlots,
    ) {
        let SoftSlots { n, t, c, k } = shape;
        let (wte, wpe) = (&params[emb.wte.range()], &params[emb.wpe.range()]);
        out[..n * c].par_chunks_mut(c).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(row, o)| {
            let p = row % t;
            if (1..=k).contains(&p) {
                o.copy_from_slice(&soft[(p - 1) * c..p * c]);
                return;
            }
            let (tok, pos) = (tokens[row] as usize, if p == 0 { 0 } else { p - k });
            for ((o, &e), &w) in o.iter_mut().zip(&wte[tok * c..(tok + 1) * c]).zip(&wpe[pos * c..(pos + 1) * c]) {
                *o = e + w;
            }
        });
    }

    fn soft_prompt_backward(&self, dsoft: &mut Vec<F>, dout: &Vec<F>, shape: SoftSlots) {
        let SoftSlots { n, t, c, k } = shape;
        // Each task owns one soft embedding and adds its rows in row order.
        dsoft[..k * c].par_chunks_mut(c).enumerate().for_each(|(i, d)| {
            for row in (i + 1..n).step_by(t) {
                add_assign(d, &dout[row * c..(row + 1) * c]);
            }
        });
    }

    fn layernorm_forward(
        &self,
        out: &mut Vec<F>,
        stats: &mut NormStats<Vec<F>>,
        inp: &Vec<F>,
        params: &Vec<F>,
        ln: LayerNorm,
        shape: Rows,
    ) {
        let Rows { n, c } = shape;
        let (w, b) = (&params[ln.w.range()], &params[ln.b.range()]);
        out[..n * c]
            .par_chunks_mut(c)
            .zip(stats.mean[..n].par_iter_mut().zip(stats.rstd[..n].par_iter_mut()))
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(row, (o, (mu, rs)))| {
                (*mu, *rs) = layernorm_row(self.avx512, o, &inp[row * c..(row + 1) * c], w, b)
            });
    }

    fn layernorm_backward(
        &self,
        grad: Backprop<'_, Vec<F>>,
        accumulate: bool,
        stats: &NormStats<Vec<F>>,
        params: Params<'_, Vec<F>>,
        ln: LayerNorm,
        shape: Rows,
    ) {
        let Rows { n, c } = shape;
        let Backprop { dinp, dout, inp } = grad;
        let (mean, rstd) = (&stats.mean, &stats.rstd);
        let wt = &params.values[ln.w.range()];
        assert!(dinp.len() >= n * c && dout.len() >= n * c && inp.len() >= n * c);
        let dinp = SharedMut(dinp.as_mut_ptr());
        let (dw, db) = grads_pair(params.grads, ln.w, ln.b);
        // Each row block writes its rows of dinp and its partial (dw, db).
        self.add_block_sums(&mut [dw, db], n, |rows, part| {
            let (pw, pb) = part.split_at_mut(c);
            for row in rows {
                let di = unsafe { std::slice::from_raw_parts_mut(dinp.at(row * c), c) };
                let (d, x) = (&dout[row * c..(row + 1) * c], &inp[row * c..(row + 1) * c]);
                layernorm_row_backward(self.avx512, di, accumulate, pw, pb, d, x, wt, mean[row], rstd[row]);
            }
        });
    }

    fn matmul_forward(&self, out: &mut Vec<F>, inp: &Vec<F>, params: &Vec<F>, linear: Linear, shape: Product) {
        let (Linear { w, b }, Product { n, c, oc }) = (linear, shape);
        let out = &mut out[..n * oc];
        if let Some(b) = b {
            let bias = &params[b.range()];
            out.par_chunks_mut(oc).with_min_len(ROWS_PER_TASK).for_each(|o| o.copy_from_slice(bias));
        }
        let wt = &params[w.range()];
        // rhs (C,OC) = wᵀ: element (k, j) = w[j*C + k]
        unsafe {
            gemm_strided(
                n,
                oc,
                c,
                out.as_mut_ptr(),
                oc,
                b.is_some(),
                Strided { ptr: inp.as_ptr(), rs: c, cs: 1 },
                Strided { ptr: wt.as_ptr(), rs: 1, cs: c },
                F::one(),
                threads_for_gemm(),
            );
        }
    }

    fn matmul_backward(
        &self,
        grad: Backprop<'_, Vec<F>>,
        accumulate: bool,
        params: Params<'_, Vec<F>>,
        linear: Linear,
        shape: Product,
        weights: WeightGrads,
    ) {
        let (Linear { w, b }, Product { n, c, oc }) = (linear, shape);
        let (Backprop { dinp, dout, inp }, Params { values, grads }) = (grad, params);
        let wt = &values[w.range()];
        assert!(dinp.len() >= n * c && dout.len() >= n * oc && inp.len() >= n * c);
        unsafe {
            // dinp (N,C) (+)= dout (N,OC) · w (OC,C)
            gemm_strided(
                n,
                c,
                oc,
                dinp.as_mut_ptr(),
                c,
                accumulate,
                Strided { ptr: dout.as_ptr(), rs: oc, cs: 1 },
                Strided { ptr: wt.as_ptr(), rs: c, cs: 1 },
                F::one(),
                threads_for_gemm(),
            );
        }
        if weights == WeightGrads::Skip {
            return;
        }
        self.weight_grad(&mut grads[w.range()], dout, inp, shape);
        if let Some(b) = b {
            self.add_block_sums(&mut [&mut grads[b.range()]], n, |rows, part| {
                for row in rows {
                    add_assign(part, &dout[row * oc..(row + 1) * oc]);
                }
            });
        }
    }

    /// `state` keeps each softmax row's maximum and normalizer: see `attention`.
    fn attention_forward(&self, out: &mut Vec<F>, state: &mut Vec<F>, qkv: &Vec<F>, shape: Heads, dropout: Dropout) {
        attention::forward(self, out, state, qkv, shape, dropout);
    }

    /// The probabilities come from `state`'s statistics again: see `attention`.
    fn attention_backward(&self, grad: Backprop<'_, Vec<F>>, state: &Vec<F>, shape: Heads, dropout: Dropout) {
        attention::backward(self, grad.dinp, grad.dout, state, grad.inp, shape, dropout);
    }

    fn activation_forward(&self, out: &mut Vec<F>, inp: &Vec<F>, params: &Vec<F>, b: View, n: usize, act: Activation) {
        let (f, bias) = (b.len, &params[b.range()]);
        out[..n * f].par_chunks_mut(f).zip(inp[..n * f].par_chunks(f)).with_min_len(rows_per_task(f)).for_each(
            |(o, x)| match act {
                Activation::Gelu => gelu_forward(self.avx512, o, x, bias),
                Activation::Relu => {
                    o.iter_mut().zip(x.iter().zip(bias)).for_each(|(o, (&x, &b))| *o = (x + b).max(F::zero()))
                }
            },
        );
    }

    fn activation_backward(
        &self,
        grad: Backprop<'_, Vec<F>>,
        params: Params<'_, Vec<F>>,
        b: View,
        n: usize,
        act: Activation,
    ) {
        let (Backprop { dinp, dout, inp }, Params { values, grads }) = (grad, params);
        let (f, bias) = (b.len, &values[b.range()]);
        assert!(dinp.len() >= n * f && dout.len() >= n * f && inp.len() >= n * f);
        let dinp = SharedMut(dinp.as_mut_ptr());
        self.add_block_sums(&mut [&mut grads[b.range()]], n, |rows, db| {
            for row in rows {
                let di = unsafe { std::slice::from_raw_parts_mut(dinp.at(row * f), f) };
                let (d, x) = (&dout[row * f..(row + 1) * f], &inp[row * f..(row + 1) * f]);
                match act {
                    Activation::Gelu => gelu_backward(self.avx512, di, db, d, x, bias),
                    Activation::Relu => relu_backward(di, db, d, x, bias),
                }
            }
        });
    }

    fn residual_forward(&self, out: &mut Vec<F>, inp: &Vec<F>, params: &Vec<F>, b: View, n: usize, dropout: Dropout) {
        let (c, bias) = (b.len, &params[b.range()]);
        let rows = out[..n * c].par_chunks_mut(c).zip(inp[..n * c].par_chunks(c));
        rows.enumerate().with_min_len(rows_per_task(c)).for_each(|(row, (o, x))| {
            if dropout.active() {
                residual_dropout(self.avx512, o, x, bias, dropout, row * c);
            } else {
                o.iter_mut().zip(x.iter().zip(bias)).for_each(|(o, (&x, &b))| *o = x + (*o + b));
            }
        });
    }

    fn dropout_backward(&self, dinp: &mut Vec<F>, dout: &Vec<F>, dropout: Dropout) {
        dinp.par_chunks_mut(ELEMS_PER_TASK).zip(dout.par_chunks(ELEMS_PER_TASK)).enumerate().for_each(
            |(chunk, (di, d))| {
                dropout_scale(self.avx512, di, d, dropout, chunk * ELEMS_PER_TASK);
            },
        );
    }

    // The target's term is kept apart from the others in the loss and its
    // gradient: when the model is confident, Σ_{j≠t} e^(z_j − z_t) is below
    // half an ulp of 1, the total rounds to 1, and log(total) or p_t − 1
    // would be exactly 0 instead of ~Σ_{j≠t} p_j.
    fn crossentropy_forward(
        &self,
        losses: &mut Vec<F>,
        probs: &mut Vec<F>,
        logits: &Vec<F>,
        targets: &Vec<u32>,
        mask: &Vec<F>,
        shape: Logits,
    ) {
        let Logits { n, v } = shape;
        probs[..n * v]
            .par_chunks_mut(v)
            .zip(losses[..n].par_iter_mut())
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(row, (p, loss))| {
                let (z, t) = (&logits[row * v..(row + 1) * v], targets[row] as usize);
                let zmax = max(z);
                for (p, &z) in p.iter_mut().zip(z) {
                    *p = (z - zmax).fast_exp();
                }
                let target_exp = std::mem::replace(&mut p[t], F::zero());
                let others = sum(p);
                p[t] = target_exp;
                let total = target_exp + others;
                let inv = F::one() / total;
                p.iter_mut().for_each(|p| *p *= inv);
                // -log softmax(z)[t] = log Σ exp(z - max) + max - z[t]; = log(1 + others) when z[t] is the max
                let nll = if z[t] == zmax { others.ln_1p() } else { total.ln() + zmax - z[t] };
                *loss = if mask[row] != F::zero() { nll * mask[row] } else { F::zero() };
            });
    }

    fn crossentropy_backward(
        &self,
        dlogits: &mut Vec<F>,
        probs: &Vec<F>,
        targets: &Vec<u32>,
        mask: &Vec<F>,
        scale: f64,
        shape: Logits,
    ) {
        let Logits { n, v } = shape;
        let scale = F::of(scale);
        dlogits[..n * v].par_chunks_mut(v).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(row, d)| {
            let (w, t) = (mask[row] * scale, targets[row] as usize);
            let p = &probs[row * v..(row + 1) * v];
            for (d, &p) in d.iter_mut().zip(p) {
                *d = p * w;
            }
            d[t] = -others_sum(p, t) * w;
        });
    }

    // Σ g² in f64 per chunk of SUM_SQUARES_CHUNK elements, the chunks added in order.
    fn sum_squares(&self, buf: &Vec<F>, views: &[View]) -> f64 {
        let mut partials = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        let chunks = views.iter().map(|v| v.len.div_ceil(SUM_SQUARES_CHUNK)).sum();
        if partials.len() != chunks {
            partials.resize(chunks, 0.0); // first call only: the views never change
        }
        let mut rest = &mut partials[..];
        for v in views {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(v.len.div_ceil(SUM_SQUARES_CHUNK));
            mine.par_iter_mut()
                .zip(buf[v.range()].par_chunks(SUM_SQUARES_CHUNK))
                .for_each(|(s, c)| *s = sum_zip(c, c, c, |g, _, _| g.f64() * g.f64()));
            rest = tail;
        }
        partials.iter().sum()
    }

    fn adamw_update(
        &self,
        params: &mut Vec<F>,
        grads: &Vec<F>,
        m: &mut Vec<F>,
        v: &mut Vec<F>,
        groups: &[DecayGroup],
        hp: AdamW,
    ) {
        let (b1, b2) = (F::of(hp.beta1), F::of(hp.beta2));
        let (one_b1, one_b2) = (F::of(1.0 - hp.beta1), F::of(1.0 - hp.beta2));
        let lr = F::of(hp.lr);
        let eps = F::of(hp.eps);
        let gscale = F::of(hp.grad_scale);
        let bc1 = F::of(1.0 / (1.0 - hp.beta1.powf(hp.t as f64)));
        let bc2 = F::of(1.0 / (1.0 - hp.beta2.powf(hp.t as f64)));
        for group in groups {
            let r = group.view.range();
            let decay = F::of(1.0 - hp.lr * group.weight_decay);
            params[r.clone()]
                .par_chunks_mut(ELEMS_PER_TASK)
                .zip(grads[r.clone()].par_chunks(ELEMS_PER_TASK))
                .zip(m[r.clone()].par_chunks_mut(ELEMS_PER_TASK).zip(v[r].par_chunks_mut(ELEMS_PER_TASK)))
                .for_each(|((p, g), (m, v))| {
                    for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                        let g = g * gscale;
                        *m = b1 * *m + one_b1 * g;
                        *v = b2 * *v + one_b2 * g * g;
                        let mhat = *m * bc1;
                        let vhat = *v * bc2;
                        *p = *p * decay - lr * mhat / (vhat.sqrt() + eps);
                    }
                });
        }
    }
}

/// Two disjoint parameter-gradient views as mutable slices.
fn grads_pair<F>(grads: &mut [F], a: View, b: View) -> (&mut [F], &mut [F]) {
    assert!(a.offset + a.len <= b.offset || b.offset + b.len <= a.offset, "views overlap");
    let ptr = grads.as_mut_ptr();
    assert!(a.offset + a.len <= grads.len() && b.offset + b.len <= grads.len());
    // SAFETY: both ranges are in bounds and disjoint.
    unsafe {
        (
            std::slice::from_raw_parts_mut(ptr.add(a.offset), a.len),
            std::slice::from_raw_parts_mut(ptr.add(b.offset), b.len),
        )
    }
}
