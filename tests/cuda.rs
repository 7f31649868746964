//! The CUDA backend.
//!
//! - Without a GPU: every kernel file compiles with NVRTC for sm_80 and
//!   sm_90 (ptxas runs: no spills), every kernel runs on a CPU emulation of
//!   CUDA against the ops' f64 references (`tests/common/reference.rs`), and
//!   the dropout mask the kernels compute is the CPU's. The compile test
//!   skips when NVRTC is absent, and fails instead under `CI=true` or
//!   `EBB_REQUIRE_NVRTC=1`. NVRTC is found on the loader path or in
//!   `EBB_NVRTC_DIR` (see `.ci/nvrtc.sh`).
//! - With a GPU: every op against the CPU backend at several shapes (not
//!   multiples of any tile), training runs against the CPU's loss curve,
//!   determinism, checkpoints across devices. These are ignored unless asked
//!   for (`-- --include-ignored`), so a machine without a GPU reports them
//!   as ignored, not passed; asked for without a GPU they skip with a
//!   printed reason, and fail instead under `EBB_REQUIRE_GPU=1`.

mod common;

use common::reference::{self as refs, accumulated, assert_close};
use common::{env_is, required};
use ebb::backend::cpu::CpuBackend;
use ebb::backend::cuda::compile::{self, FILES};
use ebb::backend::cuda::{CudaBackend, DropoutArgs};
use ebb::backend::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats,
    Params, Product, Rows, Sequences, SoftSlots, View, WeightGrads,
};
use ebb::rng;

// ---------------------------------------------------------------- without a GPU

#[test]
fn kernels_compile_for_sm80_and_sm90() {
    if let Err(why) = compile::load_nvrtc() {
        if required("NVRTC") {
            panic!("NVRTC is required here (CI=true or EBB_REQUIRE_NVRTC=1): {why}");
        }
        eprintln!("skipped kernels_compile_for_sm80_and_sm90: {why}");
        return;
    }
    let (major, minor) = compile::nvrtc_version().expect("NVRTC version");
    eprintln!("NVRTC {major}.{minor}");
    for arch in ["sm_80", "sm_90"] {
        let all = compile::compile_all(arch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), FILES.len());
        for (file, c) in FILES.iter().zip(&all) {
            assert!(c.cubin.len() > 100, "{} for {arch}: CUBIN of {} bytes", file.name, c.cubin.len());
            for line in c.log.lines() {
                assert!(!line.to_lowercase().contains("warning"), "{} for {arch}: {line}", file.name);
            }
            let report = compile::resources(&c.log);
            for &k in file.kernels {
                let r = report.iter().find(|r| r.kernel == k).unwrap_or_else(|| {
                    panic!("{} for {arch}: ptxas reported no kernel {k}; log:\n{}", file.name, c.log)
                });
                eprintln!(
                    "{arch} {:<28} {:>3} registers {:>6} B smem {:>4} B stack",
                    k, r.registers, r.shared_bytes, r.stack_bytes
                );
                assert!(r.registers > 0 && r.registers <= 255, "{k} for {arch}: {} registers", r.registers);
                assert_eq!((r.spill_store_bytes, r.spill_load_bytes), (0, 0), "{k} for {arch} spills registers");
                assert!(
                    r.shared_bytes <= 48 * 1024,
                    "{k} for {arch}: {} bytes of static shared memory",
                    r.shared_bytes
                );
            }
            assert_eq!(
                report.len(),
                file.kernels.len(),
                "{} for {arch}: kernels in the file vs. FILES: {:?}",
                file.name,
                report.iter().map(|r| &r.kernel).collect::<Vec<_>>()
            );
        }
    }
}

/// Without the shared constants the kernels do not compile: a copy of a
/// constant cannot creep back in as a default. (The C++ compiler stands in
/// for NVRTC, which `compile` always gives the defines.)
#[test]
fn kernels_refuse_to_compile_without_the_shared_constants() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = match std::process::Command::new("g++")
        .args(["-std=c++20", "-fsyntax-only", "-Ikernels", "kernels/emu/check.cpp"])
        .current_dir(root)
        .output()
    {
        Err(e) => {
            assert!(!env_is("CI", "true"), "g++ is required under CI=true: {e}");
            eprintln!("skipped: no g++ ({e})");
            return;
        }
        Ok(o) => o,
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the kernels compiled without the defines");
    assert!(stderr.contains("compile the kernels with cuda::compile::defines()"), "{stderr}");
}

#[test]
fn a_broken_kernel_fails_to_compile_with_its_log() {
    if compile::load_nvrtc().is_err() {
        eprintln!("skipped: no NVRTC");
        return;
    }
    let bad = compile::KernelFile {
        name: "bad.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n",
        kernels: &["k"],
    };
    let err = compile::compile(&bad, "sm_80").unwrap_err();
    assert!(err.contains("bad.cu") && err.contains("undefined_name"), "{err}");
    assert!(compile::compile(&FILES[0], "compute_90").unwrap_err().contains("real one"));
}

#[test]
fn dropout_args_give_the_cpu_mask_bit_for_bit() {
    // The kernels compute DropoutArgs::factor (kernels/common.cuh); it must
    // be Dropout::factor exactly, edges of the threshold included.
    let edge = 5.0 / (1u64 << 24) as f64; // p exactly on the 2^-24 grid
    for p in [0.0, 0.1, 0.25, 0.5, 0.9, edge, edge + 1e-12, 1.0 / 3.0] {
        for key in [0u64, 99, 0xdead_beef_1234_5678] {
            let d = Dropout { p, key };
            let args = DropoutArgs::of(d);
            for i in 0..20_000u64 {
                let want: f32 = d.factor(i as usize);
                assert_eq!(args.factor(i).to_bits(), want.to_bits(), "p {p} key {key} element {i}");
            }
        }
    }
    // On the threshold: for element i with top bits u, p = u/2^24 keeps it
    // (u < p fails), p just above drops it.
    let key = 7u64;
    let grid = (1u64 << 24) as f64;
    for i in 0..300u64 {
        let u = (rng::mix64(key ^ rng::mix64(i)) >> 40) as f64;
        for p in [u / grid, (u + 0.5) / grid, (u + 1.0) / grid, (u - 0.5) / grid, u / grid + 1e-12, u / grid - 1e-12] {
            if p <= 0.0 || p >= 1.0 {
                continue;
            }
            let d = Dropout { p, key };
            assert_eq!(
                DropoutArgs::of(d).factor(i).to_bits(),
                d.factor::<f32>(i as usize).to_bits(),
                "p {p} element {i}"
            );
        }
    }
}

// ---------------------------- without a GPU: the kernels on the CPU emulator

/// Every kernel run on the CPU through `kernels/emu/emu.h` (blocks one after
/// another, a block's threads as real threads, barriers for `__syncthreads`
/// and the warp shuffles) against the ops' f64 references
/// (`tests/common/reference.rs`, the CPU backend's too) at shapes that are
/// not multiples of any tile: the kernels' indexing, reductions, causal
/// masks and dropout, checked with no GPU. `kernels/emu/check.cpp` launches
/// the kernels of one case per run on inputs made here and hands back their
/// outputs (see `Emulator`). Tolerances, relative to an output's scale: bit
/// for bit for the ops exact in f32, 1e-6 for element-wise ones and short
/// sums, 1e-5 for longer sums. Needs a C++20 compiler; skips without one,
/// except under CI=true.
#[test]
fn kernels_match_f64_references_on_the_cpu_emulator() {
    let Some(emu) = Emulator::build() else { return };
    emulated_encoder(&emu);
    emulated_soft_prompt(&emu);
    emulated_layernorm(&emu);
    emulated_matmul_and_bias_grad(&emu);
    emulated_attention(&emu);
    emulated_elementwise(&emu);
    emulated_crossentropy(&emu);
    emulated_sum_squares_and_adamw(&emu);
}

/// The kernels built as C++ against the CPU emulator (`kernels/emu/check.cpp`).
struct Emulator {
    dir: tempfile::TempDir,
}

/// An input array for the emulator.
enum Array<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
}
use Array::{F32, U32};

impl Emulator {
    /// g++ builds the runner, with the shared constants as the defines
    /// NVRTC gets (`compile::defines()`); None (with the reason printed)
    /// without g++, except under CI=true.
    fn build() -> Option<Emulator> {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> =
            ["-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-Ikernels"].map(String::from).to_vec();
        args.extend(compile::defines());
        args.extend(["kernels/emu/check.cpp".to_string(), "-o".to_string()]);
        args.push(dir.path().join("ebb-emu").display().to_string());
        eprintln!("g++ {}", args.join(" "));
        let built = match std::process::Command::new("g++").args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output()
        {
            Err(e) => {
                assert!(!env_is("CI", "true"), "g++ is required under CI=true: {e}");
                eprintln!("skipped: no g++ ({e})");
                return None;
            }
            Ok(o) => o,
        };
        let stderr = String::from_utf8_lossy(&built.stderr);
        assert!(built.status.success(), "the kernels do not compile as C++:\n{stderr}");
        Some(Emulator { dir })
    }

    /// Runs `ebb-emu CASE ARGS...` (`args`, split at spaces) with `inputs` on
    /// stdin and returns the K arrays it writes to stdout. Both ways an array
    /// is its length in bytes (u64), then its elements, little-endian.
    fn run<const K: usize>(&self, args: &str, inputs: &[Array]) -> [Vec<u8>; K] {
        let mut stdin = Vec::new();
        for input in inputs {
            let bytes: Vec<u8> = match input {
                F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                U32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            stdin.extend((bytes.len() as u64).to_le_bytes());
            stdin.extend(bytes);
        }
        let mut child = std::process::Command::new(self.dir.path().join("ebb-emu"))
            .args(args.split(' '))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ebb-emu starts");
        let mut pipe = child.stdin.take().unwrap();
        // Written from a thread, so that neither side waits on a full pipe.
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut pipe, &stdin));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join(); // it fails only when the runner stopped early, which its status says
        assert!(out.status.success(), "ebb-emu {args}: {}", String::from_utf8_lossy(&out.stderr));
        let (mut arrays, mut rest) = (Vec::new(), &out.stdout[..]);
        while !rest.is_empty() {
            let (len, tail) = rest.split_at(8);
            let (array, tail) = tail.split_at(u64::from_le_bytes(len.try_into().unwrap()) as usize);
            arrays.push(array.to_vec());
            rest = tail;
        }
        arrays.try_into().unwrap_or_else(|a: Vec<_>| panic!("ebb-emu {args}: {} outputs, expected {K}", a.len()))
    }
}

fn f32s(bytes: Vec<u8>) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn f64s(bytes: Vec<u8>) -> Vec<f64> {
    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// A dropout as the kernels take it, on the runner's command line:
/// KEY THRESHOLD KEEP_SCALE (f32 written so that it reads back the same).
fn dropout_args(d: Dropout) -> String {
    let DropoutArgs { key, threshold, keep_scale } = DropoutArgs::of(d);
    format!("{key} {threshold} {keep_scale}")
}

fn emulated_encoder(emu: &Emulator) {
    let (v, shape @ Sequences { n, t, c }) = (7, Sequences { n: 3 * 5, t: 5, c: 37 });
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 3) % v as u32).collect();
    let (wte, wpe, dout) = (random(v * c, 30), random(t * c, 31), random(n * c, 32));
    let (dwte, dwpe) = (random(v * c, 33), random(t * c, 34));
    let inputs = [U32(&tokens), F32(&wte), F32(&wpe), F32(&dout), F32(&dwte), F32(&dwpe)];
    let [out, got_dwte, got_dwpe] = emu.run(&format!("encoder {n} {t} {c} {v}"), &inputs).map(f32s);
    assert_close(&out, &refs::encoder_forward(&tokens, &wte, &wpe, shape), EXACT, "encoder_forward");
    let (want_dwte, want_dwpe) = refs::encoder_backward(&dout, &tokens, v, shape);
    assert_close(&got_dwte, &accumulated(&dwte, &want_dwte), 1e-6, "encoder_backward wte");
    assert_close(&got_dwpe, &accumulated(&dwpe, &want_dwpe), 1e-6, "encoder_backward wpe");
}

fn emulated_soft_prompt(emu: &Emulator) {
    let (v, shape @ SoftSlots { n, t, c, k }) = (6, SoftSlots { n: 4 * 9, t: 9, c: 37, k: 5 });
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 2) % v as u32).collect();
    let (soft, wte, wpe) = (random(k * c, 50), random(v * c, 51), random(t * c, 52));
    let (dout, dsoft) = (random(n * c, 53), random(k * c, 54));
    let inputs = [U32(&tokens), F32(&soft), F32(&wte), F32(&wpe), F32(&dout), F32(&dsoft)];
    let [out, got_dsoft] = emu.run(&format!("soft_prompt {n} {t} {c} {k} {v}"), &inputs).map(f32s);
    assert_close(&out, &refs::soft_prompt_forward(&tokens, &soft, &wte, &wpe, shape), EXACT, "soft_prompt_forward");
    let want = accumulated(&dsoft, &refs::soft_prompt_backward(&dout, shape));
    assert_close(&got_dsoft, &want, 1e-6, "soft_prompt_backward");
}

fn emulated_layernorm(emu: &Emulator) {
    let shape @ Rows { n, c } = Rows { n: 70, c: 45 };
    let x: Vec<f32> = random(n * c, 35).iter().map(|v| 2.0 * v).collect();
    let (w, b, dout) = (random(c, 36), random(c, 37), random(n * c, 38));
    let (dinp, dw, db) = (random(n * c, 39), random(c, 40), random(c, 41));
    let inputs = [F32(&x), F32(&w), F32(&b), F32(&dout), F32(&dinp), F32(&dw), F32(&db)];
    let [out, mean, rstd, got_dinp, got_dw, got_db] = emu.run(&format!("layernorm {n} {c}"), &inputs).map(f32s);
    let want = refs::layernorm_forward(&x, &w, &b, shape);
    assert_close(&out, &want.out, 1e-5, "layernorm_forward out");
    assert_close(&mean, &want.mean, 1e-5, "layernorm_forward mean");
    assert_close(&rstd, &want.rstd, 1e-5, "layernorm_forward rstd");
    let want = refs::layernorm_backward(&dout, &x, &w, shape);
    assert_close(&got_dinp, &accumulated(&dinp, &want.dinp), 1e-5, "layernorm_backward dinp (accumulated)");
    assert_close(&got_dw, &accumulated(&dw, &want.dw), 1e-5, "layernorm_backward dw");
    assert_close(&got_db, &accumulated(&db, &want.db), 1e-5, "layernorm_backward db");
}

fn emulated_matmul_and_bias_grad(emu: &Emulator) {
    // The runner's (M,N,K) in the backend's three products (see check.cpp),
    // each the reference's product of its shape.
    for (m, n, k) in [(1, 1, 1), (7, 5, 3), (37, 70, 19), (130, 65, 77)] {
        let (a, w, bias, out) = (random(m * k, 42), random(n * k, 43), random(n, 44), random(m * n, 45));
        let styles = [
            ("forward", refs::matmul_forward(&a, &w, Some(&bias), Product { n: m, c: k, oc: n })),
            ("dinp", accumulated(&out, &refs::matmul_backward_dinp(&a, &w, Product { n: m, c: n, oc: k }))),
            ("dw", accumulated(&out, &refs::matmul_backward_dw(&a, &w, Product { n: k, c: n, oc: m }))),
        ];
        for (style, want) in styles {
            let args = format!("matmul {style} {m} {n} {k}");
            let [got] = emu.run(&args, &[F32(&a), F32(&w), F32(&bias), F32(&out)]).map(f32s);
            assert_close(&got, &want, 1e-5, &args);
        }
    }
    let (n, width) = (150, 300);
    let (x, out) = (random(n * width, 46), random(width, 47));
    let [got] = emu.run(&format!("bias_grad {n} {width}"), &[F32(&x), F32(&out)]).map(f32s);
    assert_close(&got, &accumulated(&out, &refs::column_sums(&x, width)), 1e-5, "bias grad");
}

fn emulated_attention(emu: &Emulator) {
    let shape @ Heads { b, t, c, h } = Heads { b: 2, t: 37, c: 12, h: 3 };
    let (qkv, dout) = (random(b * t * 3 * c, 48), random(b * t * c, 49));
    for dropout in [Dropout::OFF, Dropout { p: 0.2, key: 4242 }] {
        let (drop, what) = (u8::from(dropout.active()), format!("attention p{}", dropout.p));
        let args = format!("attention {b} {t} {c} {h} {drop} {}", dropout_args(dropout));
        let [probs, dropped, out, dqkv] = emu.run(&args, &[F32(&qkv), F32(&dout)]).map(f32s);
        let want = refs::attention_forward(&qkv, shape, dropout);
        assert_close(&probs, &want.probs, 1e-5, &format!("{what} probs"));
        assert_close(&dropped, &want.dropped, 1e-5, &format!("{what} dropped probs"));
        assert_close(&out, &want.out, 1e-5, &format!("{what} out"));
        assert_close(&dqkv, &refs::attention_backward(&dout, &qkv, shape, dropout), 1e-5, &format!("{what} dqkv"));
    }
}

fn emulated_elementwise(emu: &Emulator) {
    // Activations and residual, each with a bias of width W over the rows.
    let (n, width) = (1000, 40);
    let x: Vec<f32> = random(n, 50).iter().map(|v| 3.0 * v).collect();
    let (d, bias) = (random(n, 51), random(width, 52));
    for (act, kind, tol) in [(Activation::Gelu, 0, 1e-6), (Activation::Relu, 1, EXACT)] {
        let args = format!("activation {n} {width} {kind}");
        let [y, dx] = emu.run(&args, &[F32(&x), F32(&d), F32(&bias)]).map(f32s);
        assert_close(&y, &refs::activation_forward(&x, &bias, act), tol, &format!("{act:?} forward"));
        assert_close(&dx, &refs::activation_backward(&d, &x, &bias, act), tol, &format!("{act:?} backward"));
    }
    for dropout in [Dropout::OFF, Dropout { p: 0.25, key: 99 }] {
        let args = format!("residual {n} {width} {}", dropout_args(dropout));
        let [y] = emu.run(&args, &[F32(&x), F32(&d), F32(&bias)]).map(f32s);
        assert_close(&y, &refs::residual_forward(&x, &d, &bias, dropout), EXACT, &args);
        let args = format!("dropout_backward {n} {}", dropout_args(dropout));
        let [dx] = emu.run(&args, &[F32(&d)]).map(f32s);
        assert_close(&dx, &refs::dropout_backward(&d, dropout), EXACT, &args);
    }
}

fn emulated_crossentropy(emu: &Emulator) {
    let shape @ Logits { n, v } = Logits { n: 13, v: 100 };
    let z: Vec<f32> = random(n * v, 53).iter().map(|x| 3.0 * x).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let mask: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let args = format!("crossentropy {n} {v} 0.25");
    let [losses, probs, dlogits] = emu.run(&args, &[F32(&z), U32(&targets), F32(&mask)]).map(f32s);
    let (want_probs, want_losses) = refs::crossentropy_forward(&z, &targets, &mask, shape);
    assert_close(&probs, &want_probs, 1e-6, "crossentropy probs");
    assert_close(&losses, &want_losses, 1e-6, "crossentropy losses");
    assert_close(
        &dlogits,
        &refs::crossentropy_backward(&z, &targets, &mask, 0.25, shape),
        1e-6,
        "crossentropy dlogits",
    );

    // Confident rows: the target's logit 20 to 40 above the rest, so p_target
    // rounds to 1 in float32; the loss and the target's gradient must keep
    // their size (relative error against the reference).
    let shape @ Logits { n, v } = Logits { n: 6, v: 100 };
    let mut z = random(n * v, 54);
    let targets = refs::make_confident(&mut z, shape);
    let mask = vec![1.0f32; n];
    let args = format!("crossentropy {n} {v} 1");
    let [losses, _, dlogits] = emu.run(&args, &[F32(&z), U32(&targets), F32(&mask)]).map(f32s);
    let (_, want_losses) = refs::crossentropy_forward(&z, &targets, &mask, shape);
    let want_dlogits = refs::crossentropy_backward(&z, &targets, &mask, 1.0, shape);
    for r in 0..n {
        let t = r * v + targets[r] as usize;
        let what = format!("crossentropy confident row {r}");
        assert_close(&[f64::from(losses[r]) / want_losses[r]], &[1.0], 1e-5, &format!("{what}: loss (relative)"));
        let grad = f64::from(dlogits[t]) / want_dlogits[t];
        assert_close(&[grad], &[1.0], 1e-5, &format!("{what}: target gradient (relative)"));
    }
}

fn emulated_sum_squares_and_adamw(emu: &Emulator) {
    let n = 40_000;
    let x = random(n, 55);
    // The host adds the kernel's per-chunk partial sums in order.
    let [partials] = emu.run(&format!("sum_squares {n}"), &[F32(&x)]).map(f64s);
    assert_close(&[partials.iter().sum::<f64>()], &[refs::sum_squares(&x)], 1e-9, "sum_squares");

    let n = 777;
    let (p, g) = (random(n, 56), random(n, 57));
    let m: Vec<f32> = random(n, 58).iter().map(|x| 0.1 * x).collect();
    let v: Vec<f32> = random(n, 59).iter().map(|x| 0.1 * x.abs()).collect();
    let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, t: 3, grad_scale: 0.5 };
    let k = refs::AdamWConstants::of(hp, 0.1);
    let args = format!(
        "adamw {n} {} {} {} {} {} {} {} {} {} {}",
        k.b1, k.b2, k.one_b1, k.one_b2, k.lr, k.eps, k.grad_scale, k.bc1, k.bc2, k.decay
    );
    let [got_p, got_m, got_v] = emu.run(&args, &[F32(&p), F32(&g), F32(&m), F32(&v)]).map(f32s);
    let [want_p, want_m, want_v] = refs::adamw_update(&p, &g, &m, &v, &k);
    assert_close(&got_p, &want_p, EXACT, "adamw params");
    assert_close(&got_m, &want_m, EXACT, "adamw m");
    assert_close(&got_v, &want_v, EXACT, "adamw v");
}

/// A device failure is an error, not a panic: a backend that fails the way
/// the CUDA backend does (the first failure kept, then no device work,
/// `check` returning the failure), run by the real training loop.
mod device_failures {
    use super::*;
    use ebb::backend::DeviceFailure;
    use ebb::error::Error;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The CPU backend whose `nth` call of op `op` fails.
    struct Failing {
        cpu: CpuBackend<f32>,
        op: &'static str,
        nth: usize,
        calls: AtomicUsize,
        failure: DeviceFailure,
    }

    impl Failing {
        fn new(op: &'static str, nth: usize) -> Self {
            Failing { cpu: CpuBackend::new(), op, nth, calls: AtomicUsize::new(0), failure: DeviceFailure::default() }
        }

        /// Whether op `name` must do nothing: this call fails, or one before it did.
        fn skip(&self, name: &str) -> bool {
            if name == self.op && self.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.nth {
                self.failure.record(format!("cuda: {name}: injected failure"));
            }
            self.failure.is_set()
        }
    }

    /// Forwards each op to the CPU backend until the failure.
    macro_rules! failing_ops {
        ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* ) $(-> $ret:ty)?; )*) => {
            $(
                fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                    if self.skip(stringify!($name)) {
                        return Default::default();
                    }
                    self.cpu.$name($($arg),*)
                }
            )*
        };
    }

    impl Backend for Failing {
        type F = f32;
        type Buf = Vec<f32>;
        type Tokens = Vec<u32>;
        type AttentionState = Vec<f32>;

        fn name(&self) -> String {
            "failing".to_string()
        }
        fn check(&self) -> ebb::Result<()> {
            self.failure.check()
        }
        fn alloc(&self, len: usize) -> Vec<f32> {
            self.cpu.alloc(len)
        }
        fn alloc_tokens(&self, len: usize) -> Vec<u32> {
            self.cpu.alloc_tokens(len)
        }
        fn alloc_attention(&self, shape: Heads, dropout: bool) -> Vec<f32> {
            self.cpu.alloc_attention(shape, dropout)
        }
        ebb::with_backend_ops!(failing_ops);
    }

    /// The small test config: 40 steps, the loss logged every 5, an evaluation every 10.
    fn run_until_failure(backend: &Failing, dir: &Path) -> Error {
        let path = dir.join("small.toml");
        std::fs::write(&path, common::SMALL_CONFIG).unwrap();
        let experiment = ebb::experiment::Experiment::load(&path, &[]).expect("config loads");
        let err = ebb::train::run::run(backend, &experiment, &dir.join("run"), true).expect_err("the run fails");
        assert!(matches!(&err, Error::Device(_)), "not a device error: {err:?}");
        assert_eq!(err.to_string(), format!("cuda: {}: injected failure", backend.op));
        assert_eq!(err.exit_code(), 1, "a device failure is not bad input");
        err
    }

    #[test]
    fn a_device_failure_in_a_step_stops_the_run_with_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        // The 13th update is step 13's: steps 1 to 12 ran, and what they logged stays.
        run_until_failure(&Failing::new("adamw_update", 13), tmp.path());
        let run = tmp.path().join("run");
        let logged =
            |task, split, name| common::metric(&run, task, split, name).iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(logged("all", "train", "loss"), [5, 10]);
        assert_eq!(logged("add1", "eval", "loss").last(), Some(&10));
    }

    #[test]
    fn a_device_failure_in_an_evaluation_logs_none_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        // The first loss is the step-0 evaluation's.
        run_until_failure(&Failing::new("crossentropy_forward", 1), tmp.path());
        let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.csv")).unwrap_or_default();
        assert!(metrics.lines().count() <= 1, "an evaluation on a failed device was logged:\n{metrics}");
    }

    #[test]
    fn a_failed_backend_stays_failed_and_keeps_its_first_failure() {
        let f = DeviceFailure::default();
        assert!(f.check().is_ok() && !f.is_set());
        f.record("cuda: alloc: out of memory".to_string());
        f.record("cuda: matmul: a later failure".to_string());
        for _ in 0..2 {
            let err = f.check().unwrap_err();
            assert_eq!(err.to_string(), "cuda: alloc: out of memory");
            assert_eq!(err.exit_code(), 1);
        }
    }
}

// ---------------------------------------------------------------- with a GPU

/// The GPU backend, or None (with the reason printed) where none works;
/// panics instead under EBB_REQUIRE_GPU=1.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new() {
        Ok(b) => Some(b),
        Err(why) if env_is("EBB_REQUIRE_GPU", "1") => panic!("EBB_REQUIRE_GPU=1 but no GPU backend: {why}"),
        Err(why) => {
            eprintln!("skipped: no GPU: {why}");
            None
        }
    }
}

/// Tolerances of the GPU against the CPU, relative to the largest
/// magnitude of the reference output. Ops that do the same float operations
/// in the same order are compared bit for bit (`EXACT`).
const EXACT: f64 = 0.0;
/// Sums of up to a few hundred terms, in another order (and with FMA).
const TOL_SUM: f64 = 2e-5;
/// Long sums (weight gradients over N rows) and chained ops (attention backward).
const TOL_LONG_SUM: f64 = 1e-4;
/// Element-wise transcendental functions (tanh, exp) against the CPU's own.
const TOL_ELEMENTWISE: f64 = 1e-6;

/// Shapes (rows N, width C, output width OC) for the matrix products: none
/// a multiple of the 64×64 tile, plus degenerate ones.
const MATMUL_SHAPES: [(usize, usize, usize); 6] =
    [(1, 1, 1), (7, 5, 3), (37, 19, 23), (130, 64, 192), (257, 96, 65), (640, 128, 512)];
/// (B, T, C, H) for attention.
const ATTENTION_SHAPES: [(usize, usize, usize, usize); 5] =
    [(1, 1, 4, 1), (2, 5, 12, 3), (3, 17, 20, 4), (2, 77, 8, 2), (2, 64, 64, 4)];
/// (N, C) for LayerNorm and the encoder.
const ROW_SHAPES: [(usize, usize); 5] = [(1, 3), (9, 31), (40, 64), (131, 96), (300, 33)];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng::stream(seed, "cuda-test", n as u64);
    (0..n).map(|_| rng::normal(&mut r) as f32).collect()
}

fn up(g: &CudaBackend, x: &[f32]) -> <CudaBackend as Backend>::Buf {
    let mut b = g.alloc(x.len());
    g.upload(&mut b, x);
    b
}

fn up_tokens(g: &CudaBackend, x: &[u32]) -> <CudaBackend as Backend>::Tokens {
    let mut b = g.alloc_tokens(x.len());
    g.upload_tokens(&mut b, x);
    b
}

fn down(g: &CudaBackend, b: &<CudaBackend as Backend>::Buf) -> Vec<f32> {
    let mut out = vec![0.0; b.len()];
    g.download(&mut out, b);
    out
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_encoder_matches_cpu_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for (i, &(n_rows, c)) in ROW_SHAPES.iter().enumerate() {
        let (t, v) = (5 + i, 7 + 3 * i);
        let n = n_rows * t;
        let (wte, wpe) = (View { offset: 3, len: v * c }, View { offset: 3 + v * c + 2, len: t * c });
        let (emb, shape) = (Embeddings { wte, wpe }, Sequences { n, t, c });
        let params = random(wpe.offset + wpe.len, 1);
        let tokens: Vec<u32> = (0..n as u32).map(|k| (k * 7 + k / 3) % v as u32).collect();
        let mut out = vec![0.0; n * c];
        cpu.encoder_forward(&mut out, &tokens, &params, emb, shape);
        let (gp, gt) = (up(&g, &params), up_tokens(&g, &tokens));
        let mut gout = g.alloc(n * c);
        g.encoder_forward(&mut gout, &gt, &gp, emb, shape);
        assert_close(&down(&g, &gout), &out, EXACT, &format!("encoder_forward n{n} c{c}"));

        // Backward accumulates into existing gradients.
        let dout = random(n * c, 2);
        let mut grads = random(params.len(), 3);
        let mut ggrads = up(&g, &grads);
        cpu.encoder_backward(&mut grads, emb, &dout, &tokens, shape);
        g.encoder_backward(&mut ggrads, emb, &up(&g, &dout), &gt, shape);
        assert_close(&down(&g, &ggrads), &grads, EXACT, &format!("encoder_backward n{n} c{c}"));
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_soft_prompt_matches_cpu_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for (i, &(n_rows, c)) in ROW_SHAPES.iter().enumerate() {
        let (t, v) = (5 + i, 7 + 3 * i);
        let (k, n) = (t - 1 - i % 2, n_rows * t);
        let (wte, wpe) = (View { offset: 3, len: v * c }, View { offset: 3 + v * c + 2, len: t * c });
        let (emb, shape) = (Embeddings { wte, wpe }, SoftSlots { n, t, c, k });
        let (params, soft) = (random(wpe.offset + wpe.len, 6), random(k * c, 7));
        let tokens: Vec<u32> = (0..n as u32).map(|x| (x * 7 + x / 3) % v as u32).collect();
        let mut out = vec![0.0; n * c];
        cpu.soft_prompt_forward(&mut out, &tokens, &soft, &params, emb, shape);
        let mut gout = g.alloc(n * c);
        g.soft_prompt_forward(&mut gout, &up_tokens(&g, &tokens), &up(&g, &soft), &up(&g, &params), emb, shape);
        assert_close(&down(&g, &gout), &out, EXACT, &format!("soft_prompt_forward n{n} c{c} k{k}"));

        let dout = random(n * c, 9);
        let mut dsoft = random(k * c, 10);
        let mut gdsoft = up(&g, &dsoft);
        cpu.soft_prompt_backward(&mut dsoft, &dout, shape);
        g.soft_prompt_backward(&mut gdsoft, &up(&g, &dout), shape);
        assert_close(&down(&g, &gdsoft), &dsoft, EXACT, &format!("soft_prompt_backward n{n} c{c} k{k}"));
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_layernorm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for &(n, c) in &ROW_SHAPES {
        let (w, b) = (View { offset: 1, len: c }, View { offset: 1 + c + 5, len: c });
        let (ln, rows) = (LayerNorm { w, b }, Rows { n, c });
        let params = random(b.offset + c, 4);
        let inp: Vec<f32> = random(n * c, 5).iter().map(|x| 2.0 * x + 0.5).collect();
        let (mut out, mut stats) = (vec![0.0; n * c], NormStats { mean: vec![0.0; n], rstd: vec![0.0; n] });
        cpu.layernorm_forward(&mut out, &mut stats, &inp, &params, ln, rows);
        let (gp, gi) = (up(&g, &params), up(&g, &inp));
        let (mut gout, mut gstats) = (g.alloc(n * c), NormStats { mean: g.alloc(n), rstd: g.alloc(n) });
        g.layernorm_forward(&mut gout, &mut gstats, &gi, &gp, ln, rows);
        assert_close(&down(&g, &gout), &out, TOL_SUM, &format!("layernorm out {n}x{c}"));
        assert_close(&down(&g, &gstats.mean), &stats.mean, TOL_SUM, &format!("layernorm mean {n}x{c}"));
        assert_close(&down(&g, &gstats.rstd), &stats.rstd, TOL_SUM, &format!("layernorm rstd {n}x{c}"));

        let dout = random(n * c, 6);
        for accumulate in [false, true] {
            let mut dinp = random(n * c, 7);
            let mut grads = random(params.len(), 8);
            let (mut gdinp, mut ggrads) = (up(&g, &dinp), up(&g, &grads));
            // Same statistics on both sides, so only the backward differs.
            let same_stats = NormStats { mean: up(&g, &stats.mean), rstd: up(&g, &stats.rstd) };
            let grad = Backprop { dinp: &mut dinp, dout: &dout, inp: &inp };
            cpu.layernorm_backward(grad, accumulate, &stats, Params { values: &params, grads: &mut grads }, ln, rows);
            let gdout = up(&g, &dout);
            let grad = Backprop { dinp: &mut gdinp, dout: &gdout, inp: &gi };
            g.layernorm_backward(grad, accumulate, &same_stats, Params { values: &gp, grads: &mut ggrads }, ln, rows);
            let what = format!("layernorm_backward {n}x{c} accumulate={accumulate}");
            assert_close(&down(&g, &gdinp), &dinp, TOL_SUM, &format!("{what} dinp"));
            let gg = down(&g, &ggrads);
            assert_close(&gg[w.range()], &grads[w.range()], TOL_LONG_SUM, &format!("{what} dw"));
            // db adds the same terms in the same order as the CPU.
            assert_close(&gg[b.range()], &grads[b.range()], EXACT, &format!("{what} db"));
            let untouched: Vec<usize> =
                (0..params.len()).filter(|i| !w.range().contains(i) && !b.range().contains(i)).collect();
            assert!(untouched.iter().all(|&i| gg[i].to_bits() == grads[i].to_bits()), "{what}: wrote outside dw/db");
        }
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_matmul_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for &(n, c, oc) in &MATMUL_SHAPES {
        let (w, b) = (View { offset: 2, len: oc * c }, View { offset: 2 + oc * c + 1, len: oc });
        let params = random(b.offset + oc + 3, 9);
        let inp = random(n * c, 10);
        let (gp, gi) = (up(&g, &params), up(&g, &inp));
        // Tolerance grows with the reduction length.
        let tol = |k: usize| if k > 256 { TOL_LONG_SUM } else { TOL_SUM };
        for bias in [None, Some(b)] {
            let what = format!("matmul {n}x{c}x{oc} bias={}", bias.is_some());
            let mut out = vec![0.0; n * oc];
            let (linear, shape) = (Linear { w, b: bias }, Product { n, c, oc });
            cpu.matmul_forward(&mut out, &inp, &params, linear, shape);
            let mut gout = g.alloc(n * oc);
            g.matmul_forward(&mut gout, &gi, &gp, linear, shape);
            assert_close(&down(&g, &gout), &out, tol(c), &format!("{what} forward"));

            let dout = random(n * oc, 11);
            for (accumulate, weights) in
                [(false, WeightGrads::Add), (true, WeightGrads::Add), (true, WeightGrads::Skip)]
            {
                let mut dinp = random(n * c, 12);
                let mut grads = random(params.len(), 13);
                let (mut gdinp, mut ggrads) = (up(&g, &dinp), up(&g, &grads));
                let grad = Backprop { dinp: &mut dinp, dout: &dout, inp: &inp };
                cpu.matmul_backward(
                    grad,
                    accumulate,
                    Params { values: &params, grads: &mut grads },
                    linear,
                    shape,
                    weights,
                );
                let gdout = up(&g, &dout);
                let grad = Backprop { dinp: &mut gdinp, dout: &gdout, inp: &gi };
                g.matmul_backward(grad, accumulate, Params { values: &gp, grads: &mut ggrads }, linear, shape, weights);
                let what = format!("{what} accumulate={accumulate} {weights:?}");
                assert_close(&down(&g, &gdinp), &dinp, tol(oc), &format!("{what} dinp"));
                let gg = down(&g, &ggrads);
                assert_close(&gg[w.range()], &grads[w.range()], tol(n), &format!("{what} dw"));
                // db: the same additions in the same order as the CPU.
                assert_close(&gg[b.range()], &grads[b.range()], EXACT, &format!("{what} db"));
                assert_close(&gg[..w.offset], &grads[..w.offset], EXACT, &format!("{what} before dw"));
                assert_close(&gg[b.offset + oc..], &grads[b.offset + oc..], EXACT, &format!("{what} after db"));
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_attention_matches_cpu_with_and_without_dropout() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for &(b, t, c, h) in &ATTENTION_SHAPES {
        for dropout in [Dropout::OFF, Dropout { p: 0.2, key: 1234 }] {
            let what = format!("attention b{b} t{t} c{c} h{h} p{}", dropout.p);
            let qkv = random(b * t * 3 * c, 14);
            let heads = Heads { b, t, c, h };
            let (mut out, mut state) = (vec![0.0; b * t * c], cpu.alloc_attention(heads, dropout.active()));
            cpu.attention_forward(&mut out, &mut state, &qkv, heads, dropout);
            let gq = up(&g, &qkv);
            let (mut gout, mut gstate) = (g.alloc(b * t * c), g.alloc_attention(heads, dropout.active()));
            g.attention_forward(&mut gout, &mut gstate, &gq, heads, dropout);
            assert_close(&down(&g, &gout), &out, TOL_SUM, &format!("{what} out"));
            // The backends keep different state for the backward pass (the
            // GPU the probabilities, the CPU row statistics); the GPU's
            // dropped probabilities are the mask's zeros, element for element.
            if dropout.active() {
                let gd = down(&g, &gstate.dropped);
                for (i, &x) in gd.iter().enumerate() {
                    let (row, j) = (i / t, i % t);
                    let kept = dropout.factor::<f32>(i) != 0.0;
                    assert_eq!(x != 0.0, kept && j <= row % t, "{what}: dropout mask differs at {i}");
                }
            }

            // Each backend's backward from its own forward state.
            let dout = random(b * t * c, 15);
            let mut dqkv = vec![0.0; b * t * 3 * c];
            let grad = Backprop { dinp: &mut dqkv, dout: &dout, inp: &qkv };
            cpu.attention_backward(grad, &state, heads, dropout);
            let (mut gdqkv, gdout) = (g.alloc(b * t * 3 * c), up(&g, &dout));
            let grad = Backprop { dinp: &mut gdqkv, dout: &gdout, inp: &gq };
            g.attention_backward(grad, &gstate, heads, dropout);
            assert_close(&down(&g, &gdqkv), &dqkv, TOL_LONG_SUM, &format!("{what} dqkv"));
        }
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_elementwise_ops_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    // (rows, width): the bias (width) is added to every row.
    for (rows, width) in [(1, 1), (25, 40), (257, 255)] {
        let n = rows * width;
        let x: Vec<f32> = random(n, 16).iter().map(|v| 3.0 * v).collect();
        let d = random(n, 17);
        let bias = random(width, 18);
        let bv = View { offset: 0, len: width };
        let (gx, gd, gbias) = (up(&g, &x), up(&g, &d), up(&g, &bias));
        // The bias gradient sums `rows` GELU gradients, each within TOL_ELEMENTWISE.
        for (act, tol, sum_tol) in [(Activation::Gelu, TOL_ELEMENTWISE, TOL_LONG_SUM), (Activation::Relu, EXACT, EXACT)]
        {
            let mut y = vec![0.0; n];
            cpu.activation_forward(&mut y, &x, &bias, bv, rows, act);
            let mut gy = g.alloc(n);
            g.activation_forward(&mut gy, &gx, &gbias, bv, rows, act);
            assert_close(&down(&g, &gy), &y, tol, &format!("{act:?} forward n{n}"));
            let mut db = vec![0.5; width];
            let mut gdb = up(&g, &db);
            let grad = Backprop { dinp: &mut y, dout: &d, inp: &x };
            cpu.activation_backward(grad, Params { values: &bias, grads: &mut db }, bv, rows, act);
            let grad = Backprop { dinp: &mut gy, dout: &gd, inp: &gx };
            g.activation_backward(grad, Params { values: &gbias, grads: &mut gdb }, bv, rows, act);
            assert_close(&down(&g, &gy), &y, tol, &format!("{act:?} backward n{n}"));
            assert_close(&down(&g, &gdb), &db, sum_tol, &format!("{act:?} bias gradient n{n}"));
        }
        for dropout in [Dropout::OFF, Dropout { p: 0.1, key: 5 }, Dropout { p: 0.5, key: u64::MAX }] {
            // In place over the branch (d).
            let mut y = d.clone();
            let mut gy = up(&g, &d);
            cpu.residual_forward(&mut y, &x, &bias, bv, rows, dropout);
            g.residual_forward(&mut gy, &gx, &gbias, bv, rows, dropout);
            assert_close(&down(&g, &gy), &y, EXACT, &format!("residual_forward n{n} p{}", dropout.p));
            cpu.dropout_backward(&mut y, &d, dropout);
            g.dropout_backward(&mut gy, &gd, dropout);
            assert_close(&down(&g, &gy), &y, EXACT, &format!("dropout_backward n{n} p{}", dropout.p));
        }
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_crossentropy_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for (n, v) in [(1, 2), (13, 29), (200, 64), (37, 1000)] {
        let logits: Vec<f32> = random(n * v, 18).iter().map(|x| 3.0 * x).collect();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
        let mask: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
        let (mut losses, mut probs) = (vec![0.0; n], vec![0.0; n * v]);
        cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &targets, &mask, Logits { n, v });
        let (gt, gm) = (up_tokens(&g, &targets), up(&g, &mask));
        let (mut gl, mut gp) = (g.alloc(n), g.alloc(n * v));
        g.crossentropy_forward(&mut gl, &mut gp, &up(&g, &logits), &gt, &gm, Logits { n, v });
        assert_close(&down(&g, &gp), &probs, TOL_SUM, &format!("softmax {n}x{v}"));
        assert_close(&down(&g, &gl), &losses, TOL_SUM, &format!("losses {n}x{v}"));

        let mut dl = vec![0.0; n * v];
        cpu.crossentropy_backward(&mut dl, &probs, &targets, &mask, 1.0 / 7.0, Logits { n, v });
        let mut gdl = g.alloc(n * v);
        g.crossentropy_backward(&mut gdl, &up(&g, &probs), &gt, &gm, 1.0 / 7.0, Logits { n, v });
        assert_close(&down(&g, &gdl), &dl, EXACT, &format!("crossentropy_backward {n}x{v}"));
    }
}

#[test]
#[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
fn gpu_sum_squares_and_adamw_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    for n in [1, 100, 16_384, 16_385, 300_001] {
        let x = random(n, 19);
        let whole = [View { offset: 0, len: n }];
        let want = cpu.sum_squares(&x, &whole);
        let got = g.sum_squares(&up(&g, &x), &whole);
        assert!((got - want).abs() <= 1e-12 * want, "sum_squares n{n}: got {got}, want {want}");
        assert_eq!(got.to_bits(), g.sum_squares(&up(&g, &x), &whole).to_bits(), "sum_squares repeats");
    }
    // Over views (the trainable tensors when some are frozen): offsets, a view
    // over chunks, an empty one.
    let x = random(300_001, 23);
    let views = [View { offset: 3, len: 40_000 }, View { offset: 50_000, len: 0 }, View { offset: 200_000, len: 17 }];
    let (want, got) = (cpu.sum_squares(&x, &views), g.sum_squares(&up(&g, &x), &views));
    assert!((got - want).abs() <= 1e-12 * want, "sum_squares over views: got {got}, want {want}");
    // AdamW: the same f32 operations as the CPU, so the same bits, over
    // groups with different decays and a gap no group covers.
    let n = 5000;
    let groups = [
        DecayGroup { view: View { offset: 0, len: 1000 }, weight_decay: 0.1 },
        DecayGroup { view: View { offset: 1000, len: 500 }, weight_decay: 0.1 },
        DecayGroup { view: View { offset: 1500, len: 1500 }, weight_decay: 0.0 },
        DecayGroup { view: View { offset: 3100, len: 1900 }, weight_decay: 0.05 },
    ];
    let (mut p, grads) = (random(n, 20), random(n, 21));
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (mut gp, gg, mut gm, mut gv) = (up(&g, &p), up(&g, &grads), g.alloc(n), g.alloc(n));
    for t in 1..=3 {
        let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, t, grad_scale: if t == 2 { 0.37 } else { 1.0 } };
        cpu.adamw_update(&mut p, &grads, &mut m, &mut v, &groups, hp);
        g.adamw_update(&mut gp, &gg, &mut gm, &mut gv, &groups, hp);
    }
    assert_close(&down(&g, &gp), &p, EXACT, "adamw params");
    assert_close(&down(&g, &gm), &m, EXACT, "adamw m");
    assert_close(&down(&g, &gv), &v, EXACT, "adamw v");
}

// ------------------------------------------------- whole runs on the GPU

mod runs {
    use super::*;
    use ebb::experiment::Experiment;
    use std::path::Path;

    /// The tests' small config (1-digit addition, a 2-layer d32 model, with
    /// dropout) for 200 steps, checkpointed at 100.
    fn config(dir: &Path) -> Experiment {
        let path = dir.join("cuda-small.toml");
        std::fs::write(&path, common::SMALL_CONFIG).unwrap();
        let overrides: Vec<String> =
            ["train.steps=200", "train.log_every=10", "train.checkpoint_every=100", "eval.every=50"]
                .map(String::from)
                .to_vec();
        Experiment::load(&path, &overrides).expect("config loads")
    }

    /// The logged training losses (step, loss) of a run directory.
    fn losses(dir: &Path) -> Vec<(u64, f64)> {
        common::metric(dir, "all", "train", "loss")
    }

    /// The two loss curves log the same steps and stay within `tol` of
    /// each other (absolute, in nats).
    fn assert_curves_close(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: logged steps");
        assert!(a.len() >= 10, "{what}: too few losses logged");
        for (&(sa, la), &(sb, lb)) in a.iter().zip(b) {
            assert_eq!(sa, sb);
            assert!((la - lb).abs() <= tol, "{what}: at step {sa} loss {la} vs {lb} (tolerance {tol})");
        }
    }

    fn run_on<B: Backend>(backend: &B, dir: &Path) -> ebb::train::run::RunOutcome {
        ebb::train::run::run(backend, &config(dir.parent().unwrap()), dir, true).expect("run finishes")
    }

    fn resume_on<B: Backend>(backend: &B, from: &Path, at: u64, dir: &Path) -> ebb::train::run::RunOutcome {
        let experiment = config(dir.parent().unwrap());
        let ckpt = ebb::checkpoint::read(&ebb::checkpoint::path_for(from, at)).expect("checkpoint");
        ebb::train::run::Run::from_checkpoint(backend, &experiment, dir, ckpt)
            .expect("resumes")
            .train(true)
            .expect("run finishes")
    }

    /// Loss-curve tolerance between devices: the GPU sums in other orders,
    /// so the runs drift apart slowly over 200 steps.
    const CURVE_TOL: f64 = 0.05;

    #[test]
    #[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
    fn gpu_training_follows_the_cpu_loss_curve_and_repeats_bit_for_bit() {
        let Some(g) = gpu() else { return };
        let tmp = tempfile::tempdir().unwrap();
        run_on(&CpuBackend::<f32>::new(), &tmp.path().join("cpu"));
        let a = run_on(&g, &tmp.path().join("gpu-a"));
        let b = run_on(&CudaBackend::new().unwrap(), &tmp.path().join("gpu-b"));
        assert_eq!(a.fingerprint, b.fingerprint, "two GPU runs of one config differ");
        assert_eq!(
            losses(&tmp.path().join("gpu-a")),
            losses(&tmp.path().join("gpu-b")),
            "two GPU runs log different losses"
        );
        let (cpu_losses, gpu_losses) = (losses(&tmp.path().join("cpu")), losses(&tmp.path().join("gpu-a")));
        assert_curves_close(&gpu_losses, &cpu_losses, CURVE_TOL, "GPU vs CPU");
        let (first, last) = (gpu_losses[0].1, gpu_losses.last().unwrap().1);
        assert!(last < 0.7 * first, "the GPU run did not learn: loss {first} -> {last}");
    }

    #[test]
    #[ignore = "needs a GPU: cargo test --release --test cuda -- --include-ignored (EBB_REQUIRE_GPU=1 to fail without one)"]
    fn checkpoints_move_between_gpu_and_cpu() {
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::<f32>::new();
        let tmp = tempfile::tempdir().unwrap();
        let (gpu_dir, cpu_dir) = (tmp.path().join("gpu"), tmp.path().join("cpu"));
        run_on(&g, &gpu_dir);
        run_on(&cpu, &cpu_dir);
        // A GPU checkpoint continues on the CPU, and a CPU one on the GPU;
        // each follows the run it came from.
        resume_on(&cpu, &gpu_dir, 100, &tmp.path().join("gpu-then-cpu"));
        resume_on(&g, &cpu_dir, 100, &tmp.path().join("cpu-then-gpu"));
        assert_curves_close(
            &losses(&tmp.path().join("gpu-then-cpu")),
            &losses(&gpu_dir),
            CURVE_TOL,
            "GPU run resumed on the CPU",
        );
        assert_curves_close(
            &losses(&tmp.path().join("cpu-then-gpu")),
            &losses(&cpu_dir),
            CURVE_TOL,
            "CPU run resumed on the GPU",
        );
        // Up to the checkpoint the resumed logs are the original's, bit for bit.
        let upto = |v: Vec<(u64, f64)>| v.into_iter().filter(|&(s, _)| s <= 100).collect::<Vec<_>>();
        assert_eq!(upto(losses(&tmp.path().join("gpu-then-cpu"))), upto(losses(&gpu_dir)));
        // And a GPU run resumed on the GPU is the uninterrupted run, bit for bit.
        let again = resume_on(&g, &gpu_dir, 100, &tmp.path().join("gpu-then-gpu"));
        assert_eq!(losses(&tmp.path().join("gpu-then-gpu")), losses(&gpu_dir));
        assert_eq!(again.fingerprint, run_on(&g, &tmp.path().join("gpu-again")).fingerprint);
    }
}
