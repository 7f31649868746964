//! The CUDA backend: every Backend op as one or a few kernels from
//! `kernels/*.cu` (compiled by NVRTC for the device's architecture the first
//! time a device is opened in the process), on one stream.
//!
//! Each op below names its kernels; the kernel files name the CPU twin.
//! Determinism: no floating-point atomics; every sum runs in a fixed order
//! (see the kernels), so the same inputs give the same bits on every run.
//! Dropout masks are the CPU's bit for bit (`DropoutArgs`).
//!
//! Errors: opening a device returns a clear error. Once open, a failing
//! driver call inside an op (the Backend trait returns no Result) panics with
//! a one-line message naming the op and the driver's error.

pub mod compile;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};

use super::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits,
    MATMUL_TILE, NormStats, Params, Product, ROWS_PER_SUM_BLOCK, Rows, SUM_SQUARES_CHUNK, Sequences, THREADS_PER_BLOCK,
    View, WARPS_PER_BLOCK,
};

/// Threads per block of every launch (the kernels' THREADS_PER_BLOCK).
const BLOCK: u32 = THREADS_PER_BLOCK as u32;

/// A buffer on the device: `len` elements (at least one is allocated, as
/// the driver refuses empty allocations).
pub struct DeviceBuf<T> {
    data: CudaSlice<T>,
    len: usize,
}

impl<T> DeviceBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one attention layer's forward pass keeps for its backward pass.
pub struct AttentionState {
    /// The softmax probabilities (B,H,T,T), zero above the diagonal.
    pub probs: DeviceBuf<f32>,
    /// The probabilities after dropout (B,H,T,T); empty for a layer without dropout.
    pub dropped: DeviceBuf<f32>,
}

/// Dropout as the kernels take it: `Dropout::factor` in integers. Element
/// `i` is dropped when the top 24 bits of `mix64(key ^ mix64(i))` are below
/// `threshold`, kept and scaled by `keep_scale` otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutArgs {
    pub key: u64,
    /// `Dropout::drop_below`, ⌈p · 2²⁴⌉.
    pub threshold: u32,
    /// (1 / (1 − p)) rounded to f32, as `F::of` rounds it.
    pub keep_scale: f32,
}

impl DropoutArgs {
    pub fn of(d: Dropout) -> Self {
        if !d.active() {
            return DropoutArgs { key: 0, threshold: 0, keep_scale: 1.0 };
        }
        DropoutArgs { key: d.key, threshold: d.drop_below() as u32, keep_scale: (1.0 / (1.0 - d.p)) as f32 }
    }

    /// The factor for element `i`, computed as the kernels compute it
    /// (`dropout_factor` in kernels/common.cuh).
    pub fn factor(&self, i: u64) -> f32 {
        let u = (crate::rng::mix64(self.key ^ crate::rng::mix64(i)) >> 40) as u32;
        if u < self.threshold { 0.0 } else { self.keep_scale }
    }
}

/// Scratch kept between calls: it grows during the first step, then every
/// step asks for the same sizes and nothing is allocated.
#[derive(Default)]
struct Scratch {
    /// Per-row-block partial sums of parameter gradients.
    partials: Option<DeviceBuf<f32>>,
    /// The score gradients (B,H,T,T) of attention's backward pass, for the
    /// largest attention layer allocated (`alloc_attention`).
    attention_grads: Option<DeviceBuf<f32>>,
    /// Per-chunk partial sums of `sum_squares`, on the device and the host.
    squares: Option<DeviceBuf<f64>>,
    host_squares: Vec<f64>,
    /// AdamW's groups as last given, and the runs of adjacent tensors with
    /// one weight decay they merge into: (offset, len, weight decay).
    adam_groups: Vec<(usize, usize, u64)>,
    adam_runs: Vec<(usize, usize, f64)>,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: HashMap<&'static str, CudaFunction>,
    scratch: Mutex<Scratch>,
    /// Wait for every op to finish before returning (for per-op timing).
    synchronous: AtomicBool,
    device: String,
    arch: String,
}

/// How every failure inside an op begins: the binary turns panics with this
/// prefix back into one-line errors.
pub const FAILURE: &str = "ebb cuda:";

/// A failed driver call inside an op: the trait has no error path.
#[cold]
fn fail(what: &str, err: impl std::fmt::Display) -> ! {
    panic!("{FAILURE} {what}: {err}")
}

/// Elements that fit the kernels' `int` shapes.
fn int(x: usize, what: &str) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| fail(what, format!("{x} is too large for the kernels (limit {})", i32::MAX)))
}

fn need<T>(buf: &DeviceBuf<T>, len: usize, op: &str, name: &str) {
    if buf.len < len {
        fail(op, format!("{name} holds {} elements, the op needs {len}", buf.len));
    }
}

fn need_view<T>(buf: &DeviceBuf<T>, view: View, op: &str, name: &str) {
    need(buf, view.offset + view.len, op, name);
}

/// Launches `$kernel` (a name from kernels/*.cu) with `$cfg` and the
/// arguments in the kernel's order; skips empty grids.
macro_rules! launch {
    ($self:expr, $kernel:literal, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let cfg: LaunchConfig = $cfg;
        if cfg.grid_dim.0 > 0 && cfg.grid_dim.1 > 0 && cfg.grid_dim.2 > 0 {
            let f = $self.kernel($kernel);
            let mut b = $self.stream.launch_builder(f);
            $( b.arg($arg); )*
            // SAFETY: the arguments match the kernel's parameters in kernels/*.cu,
            // and every pointer is checked (`need`) to cover what the kernel touches.
            if let Err(e) = unsafe { b.launch(cfg) } {
                fail($kernel, e);
            }
            $self.after_op($kernel);
        }
    }};
}

/// One thread per element of `n`.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = u32::try_from(n.div_ceil(BLOCK as usize))
        .unwrap_or_else(|_| fail("launch", format!("{n} elements is too many")));
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row of `rows`.
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per (row block, column): grid (blocks, ceil(width / BLOCK)).
fn per_block_column(blocks: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, width.div_ceil(BLOCK as usize) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// The first CUDA device, with every kernel compiled and loaded.
    pub fn new() -> Result<Self, String> {
        Self::on_device(0)
    }

    /// Device `ordinal`, with every kernel compiled and loaded.
    pub fn on_device(ordinal: usize) -> Result<Self, String> {
        if !super::cuda_driver_present() {
            return Err("no CUDA driver library (libcuda.so.1) on this machine".to_string());
        }
        compile::load_nvrtc()?;
        let count = CudaContext::device_count().map_err(|e| format!("no usable CUDA device ({e})"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!("no CUDA device {ordinal} (this machine has {count})"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("opening CUDA device {ordinal}: {e}"))?;
        // One stream: its order is the only synchronization the ops need.
        // SAFETY: every buffer is created after this call and used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) =
            ctx.compute_capability().map_err(|e| format!("CUDA device {ordinal}: compute capability: {e}"))?;
        let arch = format!("sm_{major}{minor}");
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
        let compiled =
            compile::compiled_once(&arch).map_err(|e| format!("compiling the kernels for {name} ({arch}): {e}"))?;
        let mut kernels = HashMap::new();
        for (file, c) in compile::FILES.iter().zip(&compiled) {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin.clone()))
                .map_err(|e| format!("loading {} for {arch}: {e}", file.name))?;
            for &k in file.kernels {
                let f = module.load_function(k).map_err(|e| format!("{}: kernel {k}: {e}", file.name))?;
                kernels.insert(k, f);
            }
        }
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            scratch: Mutex::new(Scratch::default()),
            synchronous: AtomicBool::new(false),
            device: name,
            arch,
        })
    }

    /// The GPU's name and architecture, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        format!("{} ({}, device {})", self.device, self.arch, self.ctx.ordinal())
    }

    /// When on, every op waits for the GPU to finish before returning, so
    /// wall time around a call is the op's time (`ebb bench --breakdown`).
    pub fn set_synchronous(&self, on: bool) {
        self.synchronous.store(on, Ordering::Relaxed);
    }

    /// Waits for every queued op.
    pub fn synchronize(&self) {
        if let Err(e) = self.stream.synchronize() {
            fail("synchronize", e);
        }
    }

    fn after_op(&self, what: &str) {
        if self.synchronous.load(Ordering::Relaxed)
            && let Err(e) = self.stream.synchronize()
        {
            fail(what, e);
        }
    }

    fn kernel(&self, name: &str) -> &CudaFunction {
        self.kernels.get(name).unwrap_or_else(|| fail(name, "no such kernel loaded"))
    }

    fn alloc_of<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> DeviceBuf<T> {
        let data =
            self.stream.alloc_zeros::<T>(len.max(1)).unwrap_or_else(|e| fail("alloc", format!("{len} elements: {e}")));
        DeviceBuf { data, len }
    }

    /// The device address of element `offset` of `buf`.
    fn ptr<T>(&self, buf: &DeviceBuf<T>, offset: usize) -> u64 {
        let (p, _record) = buf.data.device_ptr(&self.stream);
        p + (offset * std::mem::size_of::<T>()) as u64
    }

    /// The partials scratch, at least `len` long; returns its address.
    fn partials(&self, scratch: &mut Scratch, len: usize) -> u64 {
        if scratch.partials.as_ref().is_none_or(|p| p.len < len) {
            scratch.partials = Some(self.alloc_of::<f32>(len));
        }
        self.ptr(scratch.partials.as_ref().expect("just allocated"), 0)
    }

    /// The attention score-gradient scratch, at least `len` long; returns its address.
    fn attention_grads(&self, scratch: &mut Scratch, len: usize) -> u64 {
        if scratch.attention_grads.as_ref().is_none_or(|g| g.len < len) {
            scratch.attention_grads = Some(self.alloc_of::<f32>(len));
        }
        self.ptr(scratch.attention_grads.as_ref().expect("just allocated"), 0)
    }

    /// out (W) += Σ rows of x (N,W), in row blocks of ROWS_PER_SUM_BLOCK then
    /// block order (the CPU's add_block_sums order): column_partials, sum_partials.
    fn add_column_sums(&self, out: u64, x: u64, n: usize, width: usize) {
        let blocks = n.div_ceil(ROWS_PER_SUM_BLOCK);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let partial = self.partials(&mut scratch, blocks * width);
        let (ni, wi, rows) = (int(n, "rows"), int(width, "width"), ROWS_PER_SUM_BLOCK as i32);
        launch!(self, "column_partials", per_block_column(blocks, width), &partial, &x, &ni, &wi, &rows);
        let bi = int(blocks, "blocks");
        launch!(self, "sum_partials", elementwise(width), &out, &partial, &bi, &wi, &wi);
    }

    /// out (M,N) (+)= A (M,K) · B (K,N) [+ bias (N)] with A(i,k) = a[i·a_rs + k·a_cs],
    /// B(k,j) = b[k·b_rs + j·b_cs]: the `matmul` kernel.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        out: u64,
        a: u64,
        a_strides: (usize, usize),
        b: u64,
        b_strides: (usize, usize),
        bias: Option<u64>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(MATMUL_TILE) as u32, m.div_ceil(MATMUL_TILE) as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (a_rs, a_cs, b_rs, b_cs) = (a_strides.0 as i64, a_strides.1 as i64, b_strides.0 as i64, b_strides.1 as i64);
        let (bias_ptr, has_bias) = (bias.unwrap_or(0), bias.is_some() as i32);
        let (mi, ni, ki, acc) = (int(m, "rows"), int(n, "columns"), int(k, "inner size"), accumulate as i32);
        launch!(
            self, "matmul", cfg, &out, &a, &a_rs, &a_cs, &b, &b_rs, &b_cs, &bias_ptr, &has_bias, &mi, &ni, &ki, &acc
        );
    }

    /// AdamW's groups merged into runs of adjacent tensors with one weight
    /// decay; recomputed only when the groups change (never, in a run).
    fn adam_runs(scratch: &mut Scratch, groups: &[DecayGroup]) {
        let same = scratch.adam_groups.len() == groups.len()
            && scratch
                .adam_groups
                .iter()
                .zip(groups)
                .all(|(&(o, l, wd), g)| o == g.view.offset && l == g.view.len && wd == g.weight_decay.to_bits());
        if same {
            return;
        }
        scratch.adam_groups = groups.iter().map(|g| (g.view.offset, g.view.len, g.weight_decay.to_bits())).collect();
        scratch.adam_runs.clear();
        for g in groups {
            match scratch.adam_runs.last_mut() {
                Some((o, l, wd)) if *o + *l == g.view.offset && wd.to_bits() == g.weight_decay.to_bits() => {
                    *l += g.view.len
                }
                _ => scratch.adam_runs.push((g.view.offset, g.view.len, g.weight_decay)),
            }
        }
    }
}

impl Backend for CudaBackend {
    type F = f32;
    type Buf = DeviceBuf<f32>;
    type Tokens = DeviceBuf<u32>;
    type AttentionState = AttentionState;

    fn name(&self) -> String {
        "cuda".to_string()
    }

    fn alloc(&self, len: usize) -> DeviceBuf<f32> {
        self.alloc_of(len)
    }

    fn alloc_tokens(&self, len: usize) -> DeviceBuf<u32> {
        self.alloc_of(len)
    }

    // The probabilities, and those after dropout if the layer has dropout;
    // the backward pass's (B,H,T,T) scratch grows here, once, shared by all layers.
    fn alloc_attention(&self, shape: Heads, dropout: bool) -> AttentionState {
        let Heads { b, t, h, .. } = shape;
        let tt = b * h * t * t;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.attention_grads(&mut scratch, tt);
        AttentionState { probs: self.alloc_of(tt), dropped: self.alloc_of(if dropout { tt } else { 0 }) }
    }

    fn upload(&self, dst: &mut DeviceBuf<f32>, src: &[f32]) {
        if dst.len != src.len() {
            fail("upload", format!("{} host elements into a buffer of {}", src.len(), dst.len));
        }
        if src.is_empty() {
            return;
        }
        let mut view = dst.data.slice_mut(0..src.len());
        self.stream.memcpy_htod(src, &mut view).unwrap_or_else(|e| fail("upload", e));
    }

    fn upload_tokens(&self, dst: &mut DeviceBuf<u32>, src: &[u32]) {
        if dst.len != src.len() {
            fail("upload_tokens", format!("{} host tokens into a buffer of {}", src.len(), dst.len));
        }
        if src.is_empty() {
            return;
        }
        let mut view = dst.data.slice_mut(0..src.len());
        self.stream.memcpy_htod(src, &mut view).unwrap_or_else(|e| fail("upload_tokens", e));
    }

    fn download(&self, dst: &mut [f32], src: &DeviceBuf<f32>) {
        if dst.len() != src.len {
            fail("download", format!("a buffer of {} into {} host elements", src.len, dst.len()));
        }
        if dst.is_empty() {
            return;
        }
        let view = src.data.slice(0..dst.len());
        self.stream.memcpy_dtoh(&view, dst).unwrap_or_else(|e| fail("download", e));
        self.synchronize();
    }

    fn zero(&self, buf: &mut DeviceBuf<f32>) {
        self.stream.memset_zeros(&mut buf.data).unwrap_or_else(|e| fail("zero", e));
        self.after_op("zero");
    }

    // out (N,C) = wte[tokens[n]] + wpe[n mod T]: encoder_forward.
    fn encoder_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        tokens: &DeviceBuf<u32>,
        params: &DeviceBuf<f32>,
        emb: Embeddings,
        shape: Sequences,
    ) {
        let (Embeddings { wte, wpe }, Sequences { n, t, c }) = (emb, shape);
        let op = "encoder_forward";
        need(out, n * c, op, "out");
        need(tokens, n, op, "tokens");
        need_view(params, wte, op, "params");
        need_view(params, wpe, op, "params");
        let (o, tok, te, pe) =
            (self.ptr(out, 0), self.ptr(tokens, 0), self.ptr(params, wte.offset), self.ptr(params, wpe.offset));
        let (ni, ti, ci) = (int(n, "n"), int(t, "t"), int(c, "c"));
        launch!(self, "encoder_forward", elementwise(n * c), &o, &tok, &te, &pe, &ni, &ti, &ci);
    }

    // dwte (V,C) += rows of dout by token: encoder_backward_wte;
    // dwpe (T,C) += rows of dout by position: encoder_backward_wpe.
    fn encoder_backward(
        &self,
        grads: &mut DeviceBuf<f32>,
        emb: Embeddings,
        dout: &DeviceBuf<f32>,
        tokens: &DeviceBuf<u32>,
        shape: Sequences,
    ) {
        let (Embeddings { wte, wpe }, Sequences { n, t, c }) = (emb, shape);
        let op = "encoder_backward";
        need(dout, n * c, op, "dout");
        need(tokens, n, op, "tokens");
        need_view(grads, wte, op, "grads");
        need_view(grads, wpe, op, "grads");
        let vocab = wte.len.checked_div(c).unwrap_or(0);
        if wpe.len < t * c {
            fail(op, format!("wpe holds {} elements, T·C = {}", wpe.len, t * c));
        }
        if vocab > 65535 {
            fail(op, format!("a vocabulary of {vocab} tokens is more than this kernel's grid allows (65535)"));
        }
        let (dte, dpe, d, tok) =
            (self.ptr(grads, wte.offset), self.ptr(grads, wpe.offset), self.ptr(dout, 0), self.ptr(tokens, 0));
        let (ni, ti, ci, vi) = (int(n, "n"), int(t, "t"), int(c, "c"), int(vocab, "vocabulary"));
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(BLOCK as usize) as u32, vocab as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "encoder_backward_wte", cfg, &dte, &d, &tok, &ni, &vi, &ci);
        launch!(self, "encoder_backward_wpe", elementwise(t * c), &dpe, &d, &ni, &ti, &ci);
    }

    // out (N,C), mean/rstd (N) from inp (N,C), w/b (C): layernorm_forward.
    fn layernorm_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        stats: &mut NormStats<DeviceBuf<f32>>,
        inp: &DeviceBuf<f32>,
        params: &DeviceBuf<f32>,
        ln: LayerNorm,
        shape: Rows,
    ) {
        let (LayerNorm { w, b }, Rows { n, c }) = (ln, shape);
        let (mean, rstd) = (&stats.mean, &stats.rstd);
        let op = "layernorm_forward";
        need(out, n * c, op, "out");
        need(inp, n * c, op, "inp");
        need(mean, n, op, "mean");
        need(rstd, n, op, "rstd");
        need_view(params, w, op, "params");
        need_view(params, b, op, "params");
        let (o, m, r, x, wp, bp) = (
            self.ptr(out, 0),
            self.ptr(mean, 0),
            self.ptr(rstd, 0),
            self.ptr(inp, 0),
            self.ptr(params, w.offset),
            self.ptr(params, b.offset),
        );
        let (ni, ci) = (int(n, "n"), int(c, "c"));
        launch!(self, "layernorm_forward", warp_per_row(n), &o, &m, &r, &x, &wp, &bp, &ni, &ci);
    }

    // dinp (N,C) (+)= ...: layernorm_backward; dw, db (C) += Σ rows:
    // layernorm_backward_partials, then sum_partials for each.
    fn layernorm_backward(
        &self,
        grad: Backprop<'_, DeviceBuf<f32>>,
        accumulate: bool,
        stats: &NormStats<DeviceBuf<f32>>,
        params: Params<'_, DeviceBuf<f32>>,
        ln: LayerNorm,
        shape: Rows,
    ) {
        let (LayerNorm { w, b }, Rows { n, c }) = (ln, shape);
        let (Backprop { dinp, dout, inp }, Params { values: params, grads }) = (grad, params);
        let (mean, rstd) = (&stats.mean, &stats.rstd);
        let op = "layernorm_backward";
        need(dinp, n * c, op, "dinp");
        need(dout, n * c, op, "dout");
        need(inp, n * c, op, "inp");
        need(mean, n, op, "mean");
        need(rstd, n, op, "rstd");
        need_view(params, w, op, "params");
        need_view(grads, w, op, "grads");
        need_view(grads, b, op, "grads");
        let (di, d, x, wp, m, r) = (
            self.ptr(dinp, 0),
            self.ptr(dout, 0),
            self.ptr(inp, 0),
            self.ptr(params, w.offset),
            self.ptr(mean, 0),
            self.ptr(rstd, 0),
        );
        let (ni, ci, acc) = (int(n, "n"), int(c, "c"), accumulate as i32);
        launch!(self, "layernorm_backward", warp_per_row(n), &di, &acc, &d, &x, &wp, &m, &r, &ni, &ci);

        let blocks = n.div_ceil(ROWS_PER_SUM_BLOCK);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let partial = self.partials(&mut scratch, blocks * 2 * c);
        let rows = ROWS_PER_SUM_BLOCK as i32;
        launch!(
            self,
            "layernorm_backward_partials",
            per_block_column(blocks, c),
            &partial,
            &d,
            &x,
            &m,
            &r,
            &ni,
            &ci,
            &rows
        );
        let (bi, stride) = (int(blocks, "blocks"), int(2 * c, "2c"));
        let (dw, db, partial_b) = (self.ptr(grads, w.offset), self.ptr(grads, b.offset), partial + (c * 4) as u64);
        launch!(self, "sum_partials", elementwise(c), &dw, &partial, &bi, &stride, &ci);
        launch!(self, "sum_partials", elementwise(c), &db, &partial_b, &bi, &stride, &ci);
    }

    // out (N,OC) = inp (N,C) · w (OC,C)ᵀ + b (OC): matmul.
    fn matmul_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        inp: &DeviceBuf<f32>,
        params: &DeviceBuf<f32>,
        linear: Linear,
        shape: Product,
    ) {
        let (Linear { w, b }, Product { n, c, oc }) = (linear, shape);
        let op = "matmul_forward";
        need(out, n * oc, op, "out");
        need(inp, n * c, op, "inp");
        need(params, w.offset + oc * c, op, "params");
        if let Some(b) = b {
            need(params, b.offset + oc, op, "params");
        }
        let bias = b.map(|b| self.ptr(params, b.offset));
        self.gemm(
            self.ptr(out, 0),
            self.ptr(inp, 0),
            (c, 1),
            self.ptr(params, w.offset),
            (1, c),
            bias,
            n,
            oc,
            c,
            false,
        );
    }

    // dinp (N,C) (+)= dout (N,OC) · w (OC,C): matmul; dw (OC,C) += doutᵀ · inp:
    // matmul; db (OC) += Σₙ dout: column_partials, sum_partials.
    fn matmul_backward(
        &self,
        grad: Backprop<'_, DeviceBuf<f32>>,
        accumulate: bool,
        params: Params<'_, DeviceBuf<f32>>,
        linear: Linear,
        shape: Product,
    ) {
        let (Linear { w, b }, Product { n, c, oc }) = (linear, shape);
        let (Backprop { dinp, dout, inp }, Params { values: params, grads }) = (grad, params);
        let op = "matmul_backward";
        need(dinp, n * c, op, "dinp");
        need(dout, n * oc, op, "dout");
        need(inp, n * c, op, "inp");
        need(params, w.offset + oc * c, op, "params");
        need(grads, w.offset + oc * c, op, "grads");
        let (d, x, wp) = (self.ptr(dout, 0), self.ptr(inp, 0), self.ptr(params, w.offset));
        self.gemm(self.ptr(dinp, 0), d, (oc, 1), wp, (c, 1), None, n, c, oc, accumulate);
        self.gemm(self.ptr(grads, w.offset), d, (1, oc), x, (c, 1), None, oc, c, n, true);
        if let Some(b) = b {
            need(grads, b.offset + oc, op, "grads");
            self.add_column_sums(self.ptr(grads, b.offset), d, n, oc);
        }
    }

    // qkv (B,T,3C) → probs, dropped probs (B,H,T,T), out (B,T,C):
    // attention_forward_scores, attention_forward_softmax, attention_forward_values.
    fn attention_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        state: &mut AttentionState,
        qkv: &DeviceBuf<f32>,
        shape: Heads,
        dropout: Dropout,
    ) {
        let Heads { b, t, c, h } = shape;
        let AttentionState { probs, dropped } = state;
        let op = "attention_forward";
        let tt = b * h * t * t;
        need(out, b * t * c, op, "out");
        need(probs, tt, op, "probs");
        need(qkv, b * t * 3 * c, op, "qkv");
        if dropout.active() {
            need(dropped, tt, op, "dropped probs");
        }
        let hs = c / h;
        let scale = (1.0 / (hs as f64).sqrt()) as f32;
        let (o, a, q) = (self.ptr(out, 0), self.ptr(probs, 0), self.ptr(qkv, 0));
        let ad = if dropout.active() { self.ptr(dropped, 0) } else { a };
        let (bi, ti, ci, hi, rows) = (int(b, "b"), int(t, "t"), int(c, "c"), int(h, "h"), int(b * h * t, "rows"));
        let dr = DropoutArgs::of(dropout);
        let on = dropout.active() as i32;
        launch!(self, "attention_forward_scores", elementwise(tt), &a, &q, &bi, &ti, &ci, &hi, &scale);
        launch!(
            self,
            "attention_forward_softmax",
            warp_per_row(b * h * t),
            &a,
            &ad,
            &rows,
            &ti,
            &on,
            &dr.key,
            &dr.threshold,
            &dr.keep_scale
        );
        launch!(self, "attention_forward_values", elementwise(b * t * c), &o, &ad, &q, &bi, &ti, &ci, &hi);
    }

    // dqkv (B,T,3C) from dout (B,T,C), the score gradients (B,H,T,T) in scratch:
    // attention_backward_dprobs, attention_backward_dscores, attention_backward_dqkv.
    fn attention_backward(
        &self,
        grad: Backprop<'_, DeviceBuf<f32>>,
        state: &AttentionState,
        shape: Heads,
        dropout: Dropout,
    ) {
        let Heads { b, t, c, h } = shape;
        let Backprop { dinp: dqkv, dout, inp: qkv } = grad;
        let AttentionState { probs, dropped } = state;
        let op = "attention_backward";
        let tt = b * h * t * t;
        need(dqkv, b * t * 3 * c, op, "dqkv");
        need(dout, b * t * c, op, "dout");
        need(qkv, b * t * 3 * c, op, "qkv");
        need(probs, tt, op, "probs");
        if dropout.active() {
            need(dropped, tt, op, "dropped probs");
        }
        let hs = c / h;
        let scale = (1.0 / (hs as f64).sqrt()) as f32;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let ds = self.attention_grads(&mut scratch, tt);
        let (dq, dy, q, p) = (self.ptr(dqkv, 0), self.ptr(dout, 0), self.ptr(qkv, 0), self.ptr(probs, 0));
        let pd = if dropout.active() { self.ptr(dropped, 0) } else { p };
        let (bi, ti, ci, hi, rows) = (int(b, "b"), int(t, "t"), int(c, "c"), int(h, "h"), int(b * h * t, "rows"));
        let dr = DropoutArgs::of(dropout);
        let on = dropout.active() as i32;
        launch!(
            self,
            "attention_backward_dprobs",
            elementwise(tt),
            &ds,
            &dy,
            &q,
            &bi,
            &ti,
            &ci,
            &hi,
            &on,
            &dr.key,
            &dr.threshold,
            &dr.keep_scale
        );
        launch!(self, "attention_backward_dscores", warp_per_row(b * h * t), &ds, &p, &rows, &ti, &scale);
        launch!(self, "attention_backward_dqkv", elementwise(b * t * c), &dq, &ds, &pd, &dy, &q, &bi, &ti, &ci, &hi);
    }

    // out (N,F) = act(inp (N,F) + b (F)): activation_forward.
    fn activation_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        inp: &DeviceBuf<f32>,
        params: &DeviceBuf<f32>,
        b: View,
        n: usize,
        act: Activation,
    ) {
        let op = "activation_forward";
        let len = n * b.len;
        need(out, len, op, "out");
        need(inp, len, op, "inp");
        need_view(params, b, op, "params");
        let (o, x, bias, total, width, kind) = (
            self.ptr(out, 0),
            self.ptr(inp, 0),
            self.ptr(params, b.offset),
            len as i64,
            int(b.len, "width"),
            activation_kind(act),
        );
        launch!(self, "activation_forward", elementwise(len), &o, &x, &bias, &total, &width, &kind);
    }

    // dinp (N,F) = act'(inp + b) · dout: activation_backward; db (F) += Σₙ dinp:
    // column_partials, sum_partials.
    fn activation_backward(
        &self,
        grad: Backprop<'_, DeviceBuf<f32>>,
        params: Params<'_, DeviceBuf<f32>>,
        b: View,
        n: usize,
        act: Activation,
    ) {
        let (Backprop { dinp, dout, inp }, Params { values: params, grads }) = (grad, params);
        let op = "activation_backward";
        let len = n * b.len;
        need(dinp, len, op, "dinp");
        need(dout, len, op, "dout");
        need(inp, len, op, "inp");
        need_view(params, b, op, "params");
        need_view(grads, b, op, "grads");
        let (di, d, x, bias) = (self.ptr(dinp, 0), self.ptr(dout, 0), self.ptr(inp, 0), self.ptr(params, b.offset));
        let (total, width, kind) = (len as i64, int(b.len, "width"), activation_kind(act));
        launch!(self, "activation_backward", elementwise(len), &di, &d, &x, &bias, &total, &width, &kind);
        self.add_column_sums(self.ptr(grads, b.offset), di, n, b.len);
    }

    // out (N,C) = inp (N,C) + dropout(out + b (C)) in place: residual_forward.
    fn residual_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        inp: &DeviceBuf<f32>,
        params: &DeviceBuf<f32>,
        b: View,
        n: usize,
        dropout: Dropout,
    ) {
        let op = "residual_forward";
        let len = n * b.len;
        need(out, len, op, "out");
        need(inp, len, op, "inp");
        need_view(params, b, op, "params");
        let dr = DropoutArgs::of(dropout);
        let (o, x, bias, total, width) =
            (self.ptr(out, 0), self.ptr(inp, 0), self.ptr(params, b.offset), len as i64, int(b.len, "width"));
        launch!(
            self,
            "residual_forward",
            elementwise(len),
            &o,
            &x,
            &bias,
            &total,
            &width,
            &dr.key,
            &dr.threshold,
            &dr.keep_scale
        );
    }

    // dinp (N) = mask · dout (N): dropout_backward.
    fn dropout_backward(&self, dinp: &mut DeviceBuf<f32>, dout: &DeviceBuf<f32>, dropout: Dropout) {
        let n = dinp.len.min(dout.len);
        let dr = DropoutArgs::of(dropout);
        let (di, d, len) = (self.ptr(dinp, 0), self.ptr(dout, 0), n as i64);
        launch!(self, "dropout_backward", elementwise(n), &di, &d, &len, &dr.key, &dr.threshold, &dr.keep_scale);
    }

    // probs (N,V), losses (N) from logits (N,V), targets/mask (N): crossentropy_forward.
    fn crossentropy_forward(
        &self,
        losses: &mut DeviceBuf<f32>,
        probs: &mut DeviceBuf<f32>,
        logits: &DeviceBuf<f32>,
        targets: &DeviceBuf<u32>,
        mask: &DeviceBuf<f32>,
        shape: Logits,
    ) {
        let Logits { n, v } = shape;
        let op = "crossentropy_forward";
        need(losses, n, op, "losses");
        need(probs, n * v, op, "probs");
        need(logits, n * v, op, "logits");
        need(targets, n, op, "targets");
        need(mask, n, op, "mask");
        let (l, p, z, tg, m) =
            (self.ptr(losses, 0), self.ptr(probs, 0), self.ptr(logits, 0), self.ptr(targets, 0), self.ptr(mask, 0));
        let (ni, vi) = (int(n, "n"), int(v, "v"));
        launch!(self, "crossentropy_forward", warp_per_row(n), &l, &p, &z, &tg, &m, &ni, &vi);
    }

    // dlogits (N,V) = (probs - onehot(target)) · mask · scale: crossentropy_backward.
    fn crossentropy_backward(
        &self,
        dlogits: &mut DeviceBuf<f32>,
        probs: &DeviceBuf<f32>,
        targets: &DeviceBuf<u32>,
        mask: &DeviceBuf<f32>,
        scale: f64,
        shape: Logits,
    ) {
        let Logits { n, v } = shape;
        let op = "crossentropy_backward";
        need(dlogits, n * v, op, "dlogits");
        need(probs, n * v, op, "probs");
        need(targets, n, op, "targets");
        need(mask, n, op, "mask");
        let (d, p, tg, m, s) =
            (self.ptr(dlogits, 0), self.ptr(probs, 0), self.ptr(targets, 0), self.ptr(mask, 0), scale as f32);
        let (ni, vi) = (int(n, "n"), int(v, "v"));
        launch!(self, "crossentropy_backward", elementwise(n * v), &d, &p, &tg, &m, &s, &ni, &vi);
    }

    // Σ g² in f64: sum_squares per chunk on the device, the chunks added in
    // order on the host.
    fn sum_squares(&self, buf: &DeviceBuf<f32>) -> f64 {
        let chunks = buf.len.div_ceil(SUM_SQUARES_CHUNK);
        if chunks == 0 {
            return 0.0;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if scratch.squares.as_ref().is_none_or(|s| s.len != chunks) {
            scratch.squares = Some(self.alloc_of::<f64>(chunks)); // first call only: the size never changes
            scratch.host_squares = vec![0.0; chunks];
        }
        let squares = scratch.squares.as_ref().expect("just allocated");
        let (out, x, n, chunk) = (self.ptr(squares, 0), self.ptr(buf, 0), buf.len as i64, SUM_SQUARES_CHUNK as i32);
        let cfg = LaunchConfig { grid_dim: (chunks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, "sum_squares", cfg, &out, &x, &n, &chunk);
        let Scratch { squares, host_squares, .. } = &mut *scratch;
        let view = squares.as_ref().expect("allocated above").data.slice(0..chunks);
        self.stream.memcpy_dtoh(&view, host_squares.as_mut_slice()).unwrap_or_else(|e| fail("sum_squares", e));
        self.synchronize();
        host_squares.iter().sum()
    }

    // One AdamW step: adamw_update once per run of adjacent groups with one
    // weight decay, constants rounded to f32 as the CPU twin rounds them.
    fn adamw_update(
        &self,
        params: &mut DeviceBuf<f32>,
        grads: &DeviceBuf<f32>,
        m: &mut DeviceBuf<f32>,
        v: &mut DeviceBuf<f32>,
        groups: &[DecayGroup],
        hp: AdamW,
    ) {
        let op = "adamw_update";
        let (b1, b2) = (hp.beta1 as f32, hp.beta2 as f32);
        let (one_b1, one_b2) = ((1.0 - hp.beta1) as f32, (1.0 - hp.beta2) as f32);
        let (lr, eps, gscale) = (hp.lr as f32, hp.eps as f32, hp.grad_scale as f32);
        let bc1 = (1.0 / (1.0 - hp.beta1.powf(hp.t as f64))) as f32;
        let bc2 = (1.0 / (1.0 - hp.beta2.powf(hp.t as f64))) as f32;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        Self::adam_runs(&mut scratch, groups);
        for &(offset, len, weight_decay) in &scratch.adam_runs {
            for (buf, name) in [(&*params, "params"), (grads, "grads"), (&*m, "m"), (&*v, "v")] {
                need(buf, offset + len, op, name);
            }
            let decay = (1.0 - hp.lr * weight_decay) as f32;
            let (p, g, mp, vp, n) = (
                self.ptr(params, offset),
                self.ptr(grads, offset),
                self.ptr(m, offset),
                self.ptr(v, offset),
                len as i64,
            );
            launch!(
                self,
                "adamw_update",
                elementwise(len),
                &p,
                &g,
                &mp,
                &vp,
                &n,
                &b1,
                &b2,
                &one_b1,
                &one_b2,
                &lr,
                &eps,
                &gscale,
                &bc1,
                &bc2,
                &decay
            );
        }
    }
}

fn activation_kind(act: Activation) -> i32 {
    match act {
        Activation::Gelu => 0,
        Activation::Relu => 1,
    }
}
