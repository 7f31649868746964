//! The CUDA backend: every Backend op as one or a few kernels from
//! `kernels/*.cu` (compiled by NVRTC for the device's architecture the first
//! time a device is opened in the process), on one stream.
//!
//! Each op below names its kernels; the kernel files name the CPU twin.
//! Determinism: no floating-point atomics; every sum runs in a fixed order
//! (see the kernels), so the same inputs give the same bits on every run.
//! Dropout masks are the CPU's bit for bit (`DropoutArgs`).
//!
//! Errors: opening a device returns a clear error. Once open, the first
//! failure inside an op (an allocation, a copy, a launch, a driver error, a
//! buffer too small for the op) is kept as a one-line message naming the op
//! (`DeviceFailure`); from then on ops do no device work and reads give
//! zeros, and `Backend::check` returns the failure as `Error::Device`.
//! Nothing here panics on a driver result.

pub mod compile;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};

use super::{
    Activation, AdamW, Backend, Backprop, DecayGroup, DeviceFailure, Dropout, Embeddings, Heads, LayerNorm, Linear,
    Logits, MATMUL_TILE, NormStats, Params, Product, ROWS_PER_SUM_BLOCK, Rows, SUM_SQUARES_CHUNK, Sequences, SoftSlots,
    THREADS_PER_BLOCK, View, WARPS_PER_BLOCK, WeightGrads,
};

/// Threads per block of every launch (the kernels' THREADS_PER_BLOCK).
const BLOCK: u32 = THREADS_PER_BLOCK as u32;

/// A buffer on the device: `len` elements (at least one is allocated, as
/// the driver refuses empty allocations). `data` is None only when its
/// allocation failed, and then the backend holds that failure.
pub struct DeviceBuf<T> {
    data: Option<CudaSlice<T>>,
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
    /// The first failure inside an op; once set, ops do no device work.
    failure: DeviceFailure,
    device: String,
    arch: String,
}

/// A driver error in words, e.g. "out of memory (CUDA_ERROR_OUT_OF_MEMORY)".
fn driver(e: &DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{} ({:?})", s.to_string_lossy(), e.0),
        Err(_) => format!("{:?}", e.0),
    }
}

/// `bytes` for a person: "512 B", "12.0 MiB", "3.50 GiB".
fn size_in_words(bytes: usize) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes {
        b if b < 1 << 20 => format!("{b} B"),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / MIB),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * MIB)),
    }
}

/// The message of a failed allocation of `bytes` in `op`; out of memory
/// says what to change.
fn alloc_failure(op: &str, bytes: usize, out_of_memory: bool, why: &str) -> String {
    let size = size_in_words(bytes);
    if out_of_memory {
        format!("cuda: out of memory allocating {size} in {op}; try a smaller train.batch_size or model")
    } else {
        format!("cuda: {op}: allocating {size}: {why}")
    }
}

/// Launches `$kernel` (a name from kernels/*.cu) with `$cfg` and the
/// arguments in the kernel's order; skips empty grids, and everything once
/// the backend holds a failure.
macro_rules! launch {
    ($self:expr, $kernel:literal, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let cfg: LaunchConfig = $cfg;
        if !$self.failure.is_set() && cfg.grid_dim.0 > 0 && cfg.grid_dim.1 > 0 && cfg.grid_dim.2 > 0 {
            match $self.kernels.get($kernel) {
                None => $self.record($kernel, "no such kernel loaded"),
                Some(f) => {
                    let mut b = $self.stream.launch_builder(f);
                    $( b.arg($arg); )*
                    // SAFETY: the arguments match the kernel's parameters in kernels/*.cu,
                    // and every pointer is checked (`need`) to cover what the kernel
                    // touches: a failed check holds a failure, which skips the launch.
                    match unsafe { b.launch(cfg) } {
                        Ok(_) => $self.after_op($kernel),
                        Err(e) => $self.record($kernel, driver(&e)),
                    }
                }
            }
        }
    }};
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
            failure: DeviceFailure::default(),
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

    /// Waits for every queued op; a failure is kept (see `check`).
    pub fn synchronize(&self) {
        if !self.failure.is_set()
            && let Err(e) = self.stream.synchronize()
        {
            self.record("synchronize", driver(&e));
        }
    }

    /// Keeps the failure of `op` (the first one only): "cuda: OP: WHY".
    #[cold]
    fn record(&self, op: &str, why: impl std::fmt::Display) {
        self.failure.record(format!("cuda: {op}: {why}"));
    }

    fn after_op(&self, what: &str) {
        if self.synchronous.load(Ordering::Relaxed)
            && let Err(e) = self.stream.synchronize()
        {
            self.record(what, driver(&e));
        }
    }

    /// `x` as the kernels' `int`; one too large is a failure (and 0).
    fn int(&self, x: usize, what: &str) -> i32 {
        i32::try_from(x).unwrap_or_else(|_| {
            self.record(what, format!("{x} is more than the kernels' int shapes allow ({})", i32::MAX));
            0
        })
    }

    /// A grid dimension of `blocks`; one too large is a failure (and an empty grid).
    fn grid(&self, blocks: usize, what: &str) -> u32 {
        u32::try_from(blocks).unwrap_or_else(|_| {
            self.record(what, format!("a grid of {blocks} blocks is more than a launch allows"));
            0
        })
    }

    /// Records a failure of `op` when `buf` holds fewer than `len` elements.
    fn need<T>(&self, buf: &DeviceBuf<T>, len: usize, op: &str, name: &str) {
        if buf.len < len {
            self.record(op, format!("{name} holds {} elements, the op needs {len}", buf.len));
        }
    }

    fn need_view<T>(&self, buf: &DeviceBuf<T>, view: View, op: &str, name: &str) {
        self.need(buf, view.offset + view.len, op, name);
    }

    /// One thread per element of `n`.
    fn elementwise(&self, n: usize) -> LaunchConfig {
        let blocks = self.grid(n.div_ceil(BLOCK as usize), "elements");
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// One warp per row of `rows`.
    fn warp_per_row(&self, rows: usize) -> LaunchConfig {
        let blocks = self.grid(rows.div_ceil(WARPS_PER_BLOCK), "rows");
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// One thread per (row block, column): grid (blocks, ceil(width / BLOCK)).
    fn per_block_column(&self, blocks: usize, width: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.grid(blocks, "row blocks"), self.grid(width.div_ceil(BLOCK as usize), "columns"), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A zeroed buffer of `len` elements for `op`. When the allocation
    /// fails (or a failure is held already) the buffer has no memory, and
    /// the failure says how much `op` asked for.
    fn alloc_of<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize, op: &str) -> DeviceBuf<T> {
        if self.failure.is_set() {
            return DeviceBuf { data: None, len };
        }
        let data = match self.stream.alloc_zeros::<T>(len.max(1)) {
            Ok(d) => Some(d),
            Err(e) => {
                let bytes = len.max(1).saturating_mul(std::mem::size_of::<T>());
                let oom = e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
                self.failure.record(alloc_failure(op, bytes, oom, &driver(&e)));
                None
            }
        };
        DeviceBuf { data, len }
    }

    /// The device address of element `offset` of `buf` (0 for a buffer
    /// whose allocation failed: the failure is held, so nothing launches).
    fn ptr<T>(&self, buf: &DeviceBuf<T>, offset: usize) -> u64 {
        let Some(data) = &buf.data else { return 0 };
        let (p, _record) = data.device_ptr(&self.stream);
        p + (offset * std::mem::size_of::<T>()) as u64
    }

    /// The partials scratch, at least `len` long; returns its address.
    fn partials(&self, scratch: &mut Scratch, len: usize, op: &str) -> u64 {
        if scratch.partials.as_ref().is_none_or(|p| p.len < len) {
            scratch.partials = None; // the old one goes first
        }
        let partials = scratch.partials.get_or_insert_with(|| self.alloc_of::<f32>(len, op));
        self.ptr(partials, 0)
    }

    /// The attention score-gradient scratch, at least `len` long; returns its address.
    fn attention_grads(&self, scratch: &mut Scratch, len: usize, op: &str) -> u64 {
        if scratch.attention_grads.as_ref().is_none_or(|g| g.len < len) {
            scratch.attention_grads = None; // the old one goes first
        }
        let grads = scratch.attention_grads.get_or_insert_with(|| self.alloc_of::<f32>(len, op));
        self.ptr(grads, 0)
    }

    /// out (W) += Σ rows of x (N,W), in row blocks of ROWS_PER_SUM_BLOCK then
    /// block order (the CPU's add_block_sums order): column_partials, sum_partials.
    fn add_column_sums(&self, out: u64, x: u64, n: usize, width: usize, op: &str) {
        let blocks = n.div_ceil(ROWS_PER_SUM_BLOCK);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let partial = self.partials(&mut scratch, blocks * width, op);
        let (ni, wi, rows) = (self.int(n, "rows"), self.int(width, "width"), ROWS_PER_SUM_BLOCK as i32);
        launch!(self, "column_partials", self.per_block_column(blocks, width), &partial, &x, &ni, &wi, &rows);
        let bi = self.int(blocks, "blocks");
        launch!(self, "sum_partials", self.elementwise(width), &out, &partial, &bi, &wi, &wi);
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
            grid_dim: (self.grid(n.div_ceil(MATMUL_TILE), "columns"), self.grid(m.div_ceil(MATMUL_TILE), "rows"), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (a_rs, a_cs, b_rs, b_cs) = (a_strides.0 as i64, a_strides.1 as i64, b_strides.0 as i64, b_strides.1 as i64);
        let (bias_ptr, has_bias) = (bias.unwrap_or(0), bias.is_some() as i32);
        let (mi, ni, ki, acc) =
            (self.int(m, "rows"), self.int(n, "columns"), self.int(k, "inner size"), accumulate as i32);
        launch!(
            self, "matmul", cfg, &out, &a, &a_rs, &a_cs, &b, &b_rs, &b_cs, &bias_ptr, &has_bias, &mi, &ni, &ki, &acc
        );
    }

    /// Copies `src` into `dst`, which must hold exactly as many elements.
    fn upload_of<T: DeviceRepr>(&self, dst: &mut DeviceBuf<T>, src: &[T], op: &str) {
        if dst.len != src.len() {
            self.record(op, format!("{} host elements into a buffer of {}", src.len(), dst.len));
        }
        if src.is_empty() || self.failure.is_set() {
            return;
        }
        if let Some(data) = &mut dst.data
            && let Err(e) = self.stream.memcpy_htod(src, &mut data.slice_mut(0..src.len()))
        {
            self.record(op, driver(&e));
        }
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

    // Waits for the queued work, then returns the first failure, if any.
    fn check(&self) -> crate::error::Result<()> {
        self.synchronize();
        self.failure.check()
    }

    fn alloc(&self, len: usize) -> DeviceBuf<f32> {
        self.alloc_of(len, "alloc")
    }

    fn alloc_tokens(&self, len: usize) -> DeviceBuf<u32> {
        self.alloc_of(len, "alloc_tokens")
    }

    // The probabilities, and those after dropout if the layer has dropout;
    // the backward pass's (B,H,T,T) scratch grows here, once, shared by all layers.
    fn alloc_attention(&self, shape: Heads, dropout: bool) -> AttentionState {
        let Heads { b, t, h, .. } = shape;
        let tt = b * h * t * t;
        let op = "alloc_attention";
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.attention_grads(&mut scratch, tt, op);
        AttentionState { probs: self.alloc_of(tt, op), dropped: self.alloc_of(if dropout { tt } else { 0 }, op) }
    }

    fn upload(&self, dst: &mut DeviceBuf<f32>, src: &[f32]) {
        self.upload_of(dst, src, "upload");
    }

    fn upload_tokens(&self, dst: &mut DeviceBuf<u32>, src: &[u32]) {
        self.upload_of(dst, src, "upload_tokens");
    }

    // After a failure, `dst` is zeros.
    fn download(&self, dst: &mut [f32], src: &DeviceBuf<f32>) {
        if dst.len() != src.len {
            self.record("download", format!("a buffer of {} into {} host elements", src.len, dst.len()));
        }
        if !dst.is_empty()
            && !self.failure.is_set()
            && let Some(data) = &src.data
            && let Err(e) = self.stream.memcpy_dtoh(&data.slice(0..dst.len()), dst)
        {
            self.record("download", driver(&e));
        }
        self.synchronize();
        if self.failure.is_set() {
            dst.fill(0.0);
        }
    }

    fn zero(&self, buf: &mut DeviceBuf<f32>) {
        if !self.failure.is_set()
            && let Some(data) = &mut buf.data
        {
            match self.stream.memset_zeros(data) {
                Ok(()) => self.after_op("zero"),
                Err(e) => self.record("zero", driver(&e)),
            }
        }
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
        self.need(out, n * c, op, "out");
        self.need(tokens, n, op, "tokens");
        self.need_view(params, wte, op, "params");
        self.need_view(params, wpe, op, "params");
        let (o, tok, te, pe) =
            (self.ptr(out, 0), self.ptr(tokens, 0), self.ptr(params, wte.offset), self.ptr(params, wpe.offset));
        let (ni, ti, ci) = (self.int(n, "n"), self.int(t, "t"), self.int(c, "c"));
        launch!(self, "encoder_forward", self.elementwise(n * c), &o, &tok, &te, &pe, &ni, &ti, &ci);
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
        self.need(dout, n * c, op, "dout");
        self.need(tokens, n, op, "tokens");
        self.need_view(grads, wte, op, "grads");
        self.need_view(grads, wpe, op, "grads");
        let vocab = wte.len.checked_div(c).unwrap_or(0);
        if wpe.len < t * c {
            self.record(op, format!("wpe holds {} elements, T·C = {}", wpe.len, t * c));
        }
        if vocab > 65535 {
            self.record(op, format!("a vocabulary of {vocab} tokens is more than this kernel's grid allows (65535)"));
        }
        let (dte, dpe, d, tok) =
            (self.ptr(grads, wte.offset), self.ptr(grads, wpe.offset), self.ptr(dout, 0), self.ptr(tokens, 0));
        let (ni, ti, ci, vi) = (self.int(n, "n"), self.int(t, "t"), self.int(c, "c"), self.int(vocab, "vocabulary"));
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(BLOCK as usize) as u32, vocab as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "encoder_backward_wte", cfg, &dte, &d, &tok, &ni, &vi, &ci);
        launch!(self, "encoder_backward_wpe", self.elementwise(t * c), &dpe, &d, &ni, &ti, &ci);
    }

    // The encoder with K soft embeddings after each sequence's first token: soft_prompt_forward.
    fn soft_prompt_forward(
        &self,
        out: &mut DeviceBuf<f32>,
        tokens: &DeviceBuf<u32>,
        soft: &DeviceBuf<f32>,
        params: &DeviceBuf<f32>,
        emb: Embeddings,
        shape: SoftSlots,
    ) {
        let (Embeddings { wte, wpe }, SoftSlots { n, t, c, k }) = (emb, shape);
        let op = "soft_prompt_forward";
        self.need(out, n * c, op, "out");
        self.need(tokens, n, op, "tokens");
        self.need(soft, k * c, op, "soft");
        self.need_view(params, wte, op, "params");
        self.need_view(params, wpe, op, "params");
        if k >= t {
            self.record(op, format!("{k} soft embeddings after the first position do not fit T = {t}"));
        }
        let (o, tok, s, te, pe) = (
            self.ptr(out, 0),
            self.ptr(tokens, 0),
            self.ptr(soft, 0),
            self.ptr(params, wte.offset),
            self.ptr(params, wpe.offset),
        );
        let (ni, ti, ci, ki) = (self.int(n, "n"), self.int(t, "t"), self.int(c, "c"), self.int(k, "k"));
        launch!(self, "soft_prompt_forward", self.elementwise(n * c), &o, &tok, &s, &te, &pe, &ni, &ti, &ci, &ki);
    }

    // dsoft (K,C) += rows of dout at positions 1..=K: soft_prompt_backward.
    fn soft_prompt_backward(&self, dsoft: &mut DeviceBuf<f32>, dout: &DeviceBuf<f32>, shape: SoftSlots) {
        let SoftSlots { n, t, c, k } = shape;
        let op = "soft_prompt_backward";
        self.need(dsoft, k * c, op, "dsoft");
        self.need(dout, n * c, op, "dout");
        if k == 0 {
            return;
        }
        let (ds, d) = (self.ptr(dsoft, 0), self.ptr(dout, 0));
        let (ni, ti, ci, ki) = (self.int(n, "n"), self.int(t, "t"), self.int(c, "c"), self.int(k, "k"));
        launch!(self, "soft_prompt_backward", self.elementwise(k * c), &ds, &d, &ni, &ti, &ci, &ki);
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
        self.need(out, n * c, op, "out");
        self.need(inp, n * c, op, "inp");
        self.need(mean, n, op, "mean");
        self.need(rstd, n, op, "rstd");
        self.need_view(params, w, op, "params");
        self.need_view(params, b, op, "params");
        let (o, m, r, x, wp, bp) = (
            self.ptr(out, 0),
            self.ptr(mean, 0),
            self.ptr(rstd, 0),
            self.ptr(inp, 0),
            self.ptr(params, w.offset),
            self.ptr(params, b.offset),
        );
        let (ni, ci) = (self.int(n, "n"), self.int(c, "c"));
        launch!(self, "layernorm_forward", self.warp_per_row(n), &o, &m, &r, &x, &wp, &bp, &ni, &ci);
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
        self.need(dinp, n * c, op, "dinp");
        self.need(dout, n * c, op, "dout");
        self.need(inp, n * c, op, "inp");
        self.need(mean, n, op, "mean");
        self.need(rstd, n, op, "rstd");
        self.need_view(params, w, op, "params");
        self.need_view(grads, w, op, "grads");
        self.need_view(grads, b, op, "grads");
        let (di, d, x, wp, m, r) = (
            self.ptr(dinp, 0),
            self.ptr(dout, 0),
            self.ptr(inp, 0),
            self.ptr(params, w.offset),
            self.ptr(mean, 0),
            self.ptr(rstd, 0),
        );
        let (ni, ci, acc) = (self.int(n, "n"), self.int(c, "c"), accumulate as i32);
        launch!(self, "layernorm_backward", self.warp_per_row(n), &di, &acc, &d, &x, &wp, &m, &r, &ni, &ci);

        let blocks = n.div_ceil(ROWS_PER_SUM_BLOCK);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let partial = self.partials(&mut scratch, blocks * 2 * c, op);
        let rows = ROWS_PER_SUM_BLOCK as i32;
        launch!(
            self,
            "layernorm_backward_partials",
            self.per_block_column(blocks, c),
            &partial,
            &d,
            &x,
            &m,
            &r,
            &ni,
            &ci,
            &rows
        );
        let (bi, stride) = (self.int(blocks, "blocks"), self.int(2 * c, "2c"));
        let (dw, db, partial_b) = (self.ptr(grads, w.offset), self.ptr(grads, b.offset), partial + (c * 4) as u64);
        launch!(self, "sum_partials", self.elementwise(c), &dw, &partial, &bi, &stride, &ci);
        launch!(self, "sum_partials", self.elementwise(c), &db, &partial_b, &bi, &stride, &ci);
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
        self.need(out, n * oc, op, "out");
        self.need(inp, n * c, op, "inp");
        self.need(params, w.offset + oc * c, op, "params");
        if let Some(b) = b {
            self.need(params, b.offset + oc, op, "params");
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
        weights: WeightGrads,
    ) {
        let (Linear { w, b }, Product { n, c, oc }) = (linear, shape);
        let (Backprop { dinp, dout, inp }, Params { values: params, grads }) = (grad, params);
        let op = "matmul_backward";
        self.need(dinp, n * c, op, "dinp");
        self.need(dout, n * oc, op, "dout");
        self.need(inp, n * c, op, "inp");
        self.need(params, w.offset + oc * c, op, "params");
        self.need(grads, w.offset + oc * c, op, "grads");
        let (d, x, wp) = (self.ptr(dout, 0), self.ptr(inp, 0), self.ptr(params, w.offset));
        self.gemm(self.ptr(dinp, 0), d, (oc, 1), wp, (c, 1), None, n, c, oc, accumulate);
        if weights == WeightGrads::Skip {
            return;
        }
        self.gemm(self.ptr(grads, w.offset), d, (1, oc), x, (c, 1), None, oc, c, n, true);
        if let Some(b) = b {
            self.need(grads, b.offset + oc, op, "grads");
            self.add_column_sums(self.ptr(grads, b.offset), d, n, oc, op);
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
        self.need(out, b * t * c, op, "out");
        self.need(probs, tt, op, "probs");
        self.need(qkv, b * t * 3 * c, op, "qkv");
        if dropout.active() {
            self.need(dropped, tt, op, "dropped probs");
        }
        let hs = c / h;
        let scale = (1.0 / (hs as f64).sqrt()) as f32;
        let (o, a, q) = (self.ptr(out, 0), self.ptr(probs, 0), self.ptr(qkv, 0));
        let ad = if dropout.active() { self.ptr(dropped, 0) } else { a };
        let (bi, ti, ci, hi, rows) =
            (self.int(b, "b"), self.int(t, "t"), self.int(c, "c"), self.int(h, "h"), self.int(b * h * t, "rows"));
        let dr = DropoutArgs::of(dropout);
        let on = dropout.active() as i32;
        launch!(self, "attention_forward_scores", self.elementwise(tt), &a, &q, &bi, &ti, &ci, &hi, &scale);
        launch!(
            self,
            "attention_forward_softmax",
            self.warp_per_row(b * h * t),
            &a,
            &ad,
            &rows,
            &ti,
            &on,
            &dr.key,
            &dr.threshold,
            &dr.keep_scale
        );
        launch!(self, "attention_forward_values", self.elementwise(b * t * c), &o, &ad, &q, &bi, &ti, &ci, &hi);
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
        self.need(dqkv, b * t * 3 * c, op, "dqkv");
        self.need(dout, b * t * c, op, "dout");
        self.need(qkv, b * t * 3 * c, op, "qkv");
        self.need(probs, tt, op, "probs");
        if dropout.active() {
            self.need(dropped, tt, op, "dropped probs");
        }
        let hs = c / h;
        let scale = (1.0 / (hs as f64).sqrt()) as f32;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let ds = self.attention_grads(&mut scratch, tt, op);
        let (dq, dy, q, p) = (self.ptr(dqkv, 0), self.ptr(dout, 0), self.ptr(qkv, 0), self.ptr(probs, 0));
        let pd = if dropout.active() { self.ptr(dropped, 0) } else { p };
        let (bi, ti, ci, hi, rows) =
            (self.int(b, "b"), self.int(t, "t"), self.int(c, "c"), self.int(h, "h"), self.int(b * h * t, "rows"));
        let dr = DropoutArgs::of(dropout);
        let on = dropout.active() as i32;
        launch!(
            self,
            "attention_backward_dprobs",
            self.elementwise(tt),
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
        launch!(self, "attention_backward_dscores", self.warp_per_row(b * h * t), &ds, &p, &rows, &ti, &scale);
        launch!(
            self,
            "attention_backward_dqkv",
            self.elementwise(b * t * c),
            &dq,
            &ds,
            &pd,
            &dy,
            &q,
            &bi,
            &ti,
            &ci,
            &hi
        );
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
        self.need(out, len, op, "out");
        self.need(inp, len, op, "inp");
        self.need_view(params, b, op, "params");
        let (o, x, bias, total, width, kind) = (
            self.ptr(out, 0),
            self.ptr(inp, 0),
            self.ptr(params, b.offset),
            len as i64,
            self.int(b.len, "width"),
            activation_kind(act),
        );
        launch!(self, "activation_forward", self.elementwise(len), &o, &x, &bias, &total, &width, &kind);
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
        self.need(dinp, len, op, "dinp");
        self.need(dout, len, op, "dout");
        self.need(inp, len, op, "inp");
        self.need_view(params, b, op, "params");
        self.need_view(grads, b, op, "grads");
        let (di, d, x, bias) = (self.ptr(dinp, 0), self.ptr(dout, 0), self.ptr(inp, 0), self.ptr(params, b.offset));
        let (total, width, kind) = (len as i64, self.int(b.len, "width"), activation_kind(act));
        launch!(self, "activation_backward", self.elementwise(len), &di, &d, &x, &bias, &total, &width, &kind);
        self.add_column_sums(self.ptr(grads, b.offset), di, n, b.len, op);
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
        self.need(out, len, op, "out");
        self.need(inp, len, op, "inp");
        self.need_view(params, b, op, "params");
        let dr = DropoutArgs::of(dropout);
        let (o, x, bias, total, width) =
            (self.ptr(out, 0), self.ptr(inp, 0), self.ptr(params, b.offset), len as i64, self.int(b.len, "width"));
        launch!(
            self,
            "residual_forward",
            self.elementwise(len),
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
        launch!(self, "dropout_backward", self.elementwise(n), &di, &d, &len, &dr.key, &dr.threshold, &dr.keep_scale);
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
        self.need(losses, n, op, "losses");
        self.need(probs, n * v, op, "probs");
        self.need(logits, n * v, op, "logits");
        self.need(targets, n, op, "targets");
        self.need(mask, n, op, "mask");
        let (l, p, z, tg, m) =
            (self.ptr(losses, 0), self.ptr(probs, 0), self.ptr(logits, 0), self.ptr(targets, 0), self.ptr(mask, 0));
        let (ni, vi) = (self.int(n, "n"), self.int(v, "v"));
        launch!(self, "crossentropy_forward", self.warp_per_row(n), &l, &p, &z, &tg, &m, &ni, &vi);
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
        self.need(dlogits, n * v, op, "dlogits");
        self.need(probs, n * v, op, "probs");
        self.need(targets, n, op, "targets");
        self.need(mask, n, op, "mask");
        let (d, p, tg, m, s) =
            (self.ptr(dlogits, 0), self.ptr(probs, 0), self.ptr(targets, 0), self.ptr(mask, 0), scale as f32);
        let (ni, vi) = (self.int(n, "n"), self.int(v, "v"));
        launch!(self, "crossentropy_backward", self.elementwise(n * v), &d, &p, &tg, &m, &s, &ni, &vi);
    }

    // Σ g² in f64: sum_squares per chunk of each view on the device, the
    // chunks added in order on the host.
    fn sum_squares(&self, buf: &DeviceBuf<f32>, views: &[View]) -> f64 {
        let op = "sum_squares";
        let chunks = views.iter().map(|v| v.len.div_ceil(SUM_SQUARES_CHUNK)).sum();
        views.iter().for_each(|&v| self.need_view(buf, v, op, "buf"));
        if chunks == 0 || self.failure.is_set() {
            return 0.0;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let Scratch { squares, host_squares, .. } = &mut *scratch;
        if squares.as_ref().is_none_or(|s| s.len != chunks) {
            *squares = None; // first call only: the views never change
            *host_squares = vec![0.0; chunks];
        }
        let squares = squares.get_or_insert_with(|| self.alloc_of::<f64>(chunks, op));
        let mut at = 0;
        for v in views.iter().filter(|v| v.len > 0) {
            let n = v.len.div_ceil(SUM_SQUARES_CHUNK);
            let (out, x, len, chunk) =
                (self.ptr(squares, at), self.ptr(buf, v.offset), v.len as i64, SUM_SQUARES_CHUNK as i32);
            let cfg = LaunchConfig {
                grid_dim: (self.grid(n, "chunks"), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "sum_squares", cfg, &out, &x, &len, &chunk);
            at += n;
        }
        if !self.failure.is_set()
            && let Some(data) = &squares.data
            && let Err(e) = self.stream.memcpy_dtoh(&data.slice(0..chunks), host_squares.as_mut_slice())
        {
            self.record(op, driver(&e));
        }
        self.synchronize();
        if self.failure.is_set() {
            return 0.0;
        }
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
                self.need(buf, offset + len, op, name);
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
                self.elementwise(len),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_failure_is_one_line_that_says_what_to_change() {
        let oom = alloc_failure("alloc_attention", 12 << 20, true, "unused");
        assert_eq!(
            oom,
            "cuda: out of memory allocating 12.0 MiB in alloc_attention; try a smaller train.batch_size or model"
        );
        let other = alloc_failure("alloc", 512, false, "invalid context (CUDA_ERROR_INVALID_CONTEXT)");
        assert_eq!(other, "cuda: alloc: allocating 512 B: invalid context (CUDA_ERROR_INVALID_CONTEXT)");
        assert_eq!(size_in_words(3 << 29), "1.50 GiB");
        assert!(!oom.contains('\n') && !other.contains('\n'));
    }
}
