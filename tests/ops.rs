//! Every forward op of the CPU backend (f32) against a plain f64 reference
//! written from its definition, at shapes that are not multiples of any
//! block size. Backward ops are checked by the gradient check.

use ebb::backend::cpu::CpuBackend;
use ebb::backend::{
    Activation, Backend, Backprop, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats, Params, Product,
    Rows, Sequences, View,
};
use ebb::rng;

/// f32 ops against f64 references: relative to the output's scale.
const TOL: f64 = 1e-5;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng::stream(seed, "ops-test", n as u64);
    (0..n).map(|_| rng::normal(&mut r) as f32).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / scale;
        assert!(err < TOL, "{what}[{i}]: got {g}, want {w} (error {err:e})");
    }
}

#[test]
fn matmul_forward_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    for (n, c, oc) in [(1, 1, 1), (7, 5, 3), (37, 19, 23), (130, 64, 192)] {
        let inp = random(n * c, 1);
        // params: weight (OC,C) then bias (OC)
        let params = random(oc * c + oc, 2);
        let (w, b) = (View { offset: 0, len: oc * c }, View { offset: oc * c, len: oc });
        for bias in [None, Some(b)] {
            let mut out = vec![0.0f32; n * oc];
            cpu.matmul_forward(&mut out, &inp, &params, Linear { w, b: bias }, Product { n, c, oc });
            let want: Vec<f64> = (0..n * oc)
                .map(|i| {
                    let (r, j) = (i / oc, i % oc);
                    let dot: f64 = (0..c).map(|k| inp[r * c + k] as f64 * params[j * c + k] as f64).sum();
                    dot + bias.map_or(0.0, |b| params[b.offset + j] as f64)
                })
                .collect();
            assert_close(&out, &want, &format!("matmul {n}x{c}x{oc} bias={}", bias.is_some()));
        }
    }
}

#[test]
fn attention_forward_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    for (b, t, c, h) in [(1, 1, 4, 1), (2, 5, 12, 3), (3, 17, 20, 4), (2, 77, 8, 2)] {
        let hs = c / h;
        let qkv = random(b * t * 3 * c, 3);
        let mut out = vec![0.0f32; b * t * c];
        let heads = Heads { b, t, c, h };
        let mut state = cpu.alloc_attention(heads, false);
        cpu.attention_forward(&mut out, &mut state, &qkv, heads, Dropout::OFF);
        let mut want = vec![0.0f64; b * t * c];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..t {
                    let q = |d: usize| qkv[(bi * t + i) * 3 * c + hi * hs + d] as f64;
                    let k = |j: usize, d: usize| qkv[(bi * t + j) * 3 * c + c + hi * hs + d] as f64;
                    let v = |j: usize, d: usize| qkv[(bi * t + j) * 3 * c + 2 * c + hi * hs + d] as f64;
                    let scores: Vec<f64> =
                        (0..=i).map(|j| (0..hs).map(|d| q(d) * k(j, d)).sum::<f64>() / (hs as f64).sqrt()).collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for d in 0..hs {
                        want[(bi * t + i) * c + hi * hs + d] =
                            (0..=i).map(|j| (scores[j] - max).exp() / z * v(j, d)).sum();
                    }
                }
            }
        }
        assert_close(&out, &want, &format!("attention b{b} t{t} c{c} h{h}"));
    }
}

#[test]
fn layernorm_forward_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    for (n, c) in [(1, 3), (9, 31), (40, 64)] {
        let inp = random(n * c, 4);
        let params = random(2 * c, 5);
        let (mut out, mut stats) = (vec![0.0f32; n * c], NormStats { mean: vec![0.0f32; n], rstd: vec![0.0f32; n] });
        let ln = LayerNorm { w: View { offset: 0, len: c }, b: View { offset: c, len: c } };
        cpu.layernorm_forward(&mut out, &mut stats, &inp, &params, ln, Rows { n, c });
        let mut want = vec![0.0; n * c];
        for r in 0..n {
            let x: Vec<f64> = inp[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
            let m = x.iter().sum::<f64>() / c as f64;
            let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / c as f64;
            for j in 0..c {
                want[r * c + j] = (x[j] - m) / (var + 1e-5).sqrt() * params[j] as f64 + params[c + j] as f64;
            }
        }
        assert_close(&out, &want, &format!("layernorm {n}x{c}"));
    }
}

#[test]
fn crossentropy_forward_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    let (n, v) = (13, 29);
    let logits: Vec<f32> = random(n * v, 6).iter().map(|x| 3.0 * x).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let mask: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let (mut losses, mut probs) = (vec![0.0f32; n], vec![0.0f32; n * v]);
    cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &targets, &mask, Logits { n, v });
    let mut want_losses = vec![0.0; n];
    let mut want_probs = vec![0.0; n * v];
    for r in 0..n {
        let z: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        for j in 0..v {
            want_probs[r * v + j] = (z[j] - lse).exp();
        }
        want_losses[r] = mask[r] as f64 * (lse - z[targets[r] as usize]);
    }
    assert_close(&probs, &want_probs, "softmax");
    assert_close(&losses, &want_losses, "masked loss");
}

/// Confident rows: the target's logit 20 to 40 above the rest, so that from
/// the second row on p_target rounds to 1 in float32. The loss and the
/// target's gradient keep their size, to float32's relative precision, as
/// float64 computes them (with p − 1 rounded they were exactly 0).
#[test]
fn crossentropy_keeps_confident_rows() {
    let cpu = CpuBackend::<f32>::new();
    let (n, v) = (6, 50);
    let mut logits = random(n * v, 12);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 13) % v as u32).collect();
    for r in 0..n {
        logits[r * v + targets[r] as usize] += 20.0 + 4.0 * r as f32;
    }
    let mask = vec![1.0f32; n];
    let (mut losses, mut probs, mut dlogits) = (vec![0.0f32; n], vec![0.0f32; n * v], vec![0.0f32; n * v]);
    cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &targets, &mask, Logits { n, v });
    cpu.crossentropy_backward(&mut dlogits, &probs, &targets, &mask, 1.0, Logits { n, v });
    for r in 0..n {
        let t = targets[r] as usize;
        let z = &logits[r * v..(r + 1) * v];
        let others: f64 = (0..v).filter(|&j| j != t).map(|j| (z[j] as f64 - z[t] as f64).exp()).sum();
        let (loss, dt) = (others.ln_1p(), -others / (1.0 + others));
        assert!(
            r == 0 || probs[r * v + t] == 1.0,
            "row {r}: p_target {} should round to 1 in float32",
            probs[r * v + t]
        );
        let loss_err = (losses[r] as f64 - loss).abs() / loss;
        let grad_err = (dlogits[r * v + t] as f64 - dt).abs() / dt.abs();
        assert!(loss_err < 1e-5, "row {r}: loss {} against {loss:e} (relative {loss_err:e})", losses[r]);
        assert!(
            grad_err < 1e-5,
            "row {r}: target gradient {} against {dt:e} (relative {grad_err:e})",
            dlogits[r * v + t]
        );
    }
}

#[test]
fn encoder_and_elementwise_ops_match_reference() {
    let cpu = CpuBackend::<f32>::new();
    let (v, t, c, rows) = (7, 5, 6, 3);
    let params = random(v * c + t * c, 7);
    let tokens: Vec<u32> = (0..(rows * t) as u32).map(|i| (i * 3) % v as u32).collect();
    let mut out = vec![0.0f32; rows * t * c];
    let emb = Embeddings { wte: View { offset: 0, len: v * c }, wpe: View { offset: v * c, len: t * c } };
    cpu.encoder_forward(&mut out, &tokens, &params, emb, Sequences { n: rows * t, t, c });
    let want: Vec<f64> = (0..rows * t * c)
        .map(|i| {
            let (n, j) = (i / c, i % c);
            params[tokens[n] as usize * c + j] as f64 + params[v * c + (n % t) * c + j] as f64
        })
        .collect();
    assert_close(&out, &want, "encoder");

    // Activations and the residual add, each with the bias of the product
    // before it (params: one row of F), over N rows of F.
    let (rows, f) = (25, 40);
    let x = random(rows * f, 8);
    let bias = random(f, 10);
    let bv = View { offset: 0, len: f };
    let with_bias = |i: usize| x[i] as f64 + bias[i % f] as f64;
    let mut y = vec![0.0f32; rows * f];
    cpu.activation_forward(&mut y, &x, &bias, bv, rows, Activation::Gelu);
    let s = (2.0 / std::f64::consts::PI).sqrt();
    let want: Vec<f64> = (0..rows * f)
        .map(|i| {
            let x = with_bias(i);
            0.5 * x * (1.0 + (s * (x + 0.044715 * x * x * x)).tanh())
        })
        .collect();
    assert_close(&y, &want, "gelu");
    cpu.activation_forward(&mut y, &x, &bias, bv, rows, Activation::Relu);
    assert_close(&y, &(0..rows * f).map(|i| with_bias(i).max(0.0)).collect::<Vec<_>>(), "relu");

    // Residual (in place over the branch) with dropout: every element is
    // either x or x + (branch + b)/(1-p), and about p of them are dropped.
    let branch = random(rows * f, 9);
    let drop = Dropout { p: 0.25, key: 99 };
    y.copy_from_slice(&branch);
    cpu.residual_forward(&mut y, &x, &bias, bv, rows, drop);
    let mut dropped = 0;
    for i in 0..rows * f {
        let added = branch[i] as f64 + bias[i % f] as f64;
        if y[i] == x[i] && added != 0.0 {
            dropped += 1;
        } else {
            assert!(((y[i] - x[i]) as f64 - added / 0.75).abs() < 1e-5, "residual[{i}]");
        }
    }
    assert!((200..300).contains(&dropped), "dropped {dropped} of 1000 at p = 0.25");
    y.copy_from_slice(&branch);
    cpu.residual_forward(&mut y, &x, &bias, bv, rows, Dropout::OFF);
    assert_close(&y, &(0..rows * f).map(|i| with_bias(i) + branch[i] as f64).collect::<Vec<_>>(), "residual");
}

/// The bits of each buffer, for exact comparisons.
fn bits(bufs: &[&[f32]]) -> Vec<Vec<u32>> {
    bufs.iter().map(|b| b.iter().map(|x| x.to_bits()).collect()).collect()
}

/// The CPU backend with and without its AVX-512 builds. On a CPU without
/// AVX-512 both run the same build and the comparisons check repeatability
/// only; on one with it (the development machine), 16-lane against 8-lane.
fn both_builds() -> [CpuBackend<f32>; 2] {
    [CpuBackend::<f32>::new(), CpuBackend::<f32>::new().without_avx512()]
}

#[test]
fn attention_builds_with_and_without_avx512_give_the_same_bits() {
    for dropout in [Dropout::OFF, Dropout { p: 0.2, key: 7 }] {
        for (b, t, c, h) in [(2, 128, 64, 2), (3, 37, 48, 3), (2, 33, 40, 2), (1, 64, 64, 4), (2, 9, 8, 1)] {
            let qkv = random(b * t * 3 * c, 11);
            let dout = random(b * t * c, 12);
            let heads = Heads { b, t, c, h };
            let [wide, narrow] = both_builds().map(|cpu| {
                let (mut out, mut state) = (vec![0.0f32; b * t * c], cpu.alloc_attention(heads, dropout.active()));
                cpu.attention_forward(&mut out, &mut state, &qkv, heads, dropout);
                let mut dqkv = vec![0.0f32; b * t * 3 * c];
                let grad = Backprop { dinp: &mut dqkv, dout: &dout, inp: &qkv };
                cpu.attention_backward(grad, &state, heads, dropout);
                bits(&[&out, &state, &dqkv])
            });
            assert!(
                wide == narrow,
                "attention b{b} t{t} c{c} h{h} p{}: the AVX-512 and 8-lane builds differ",
                dropout.p
            );
        }
    }
}

#[test]
fn elementwise_builds_with_and_without_avx512_give_the_same_bits() {
    let (n, c) = (37, 48);
    let inp = random(n * c, 13);
    let dout = random(n * c, 14);
    let params = random(2 * c, 15);
    let (w, b) = (View { offset: 0, len: c }, View { offset: c, len: c });
    let [wide, narrow] = both_builds().map(|cpu| {
        let (mut gelu, mut dgelu, mut dbias) = (vec![0.0f32; n * c], vec![0.0f32; n * c], vec![0.0f32; 2 * c]);
        cpu.activation_forward(&mut gelu, &inp, &params, b, n, Activation::Gelu);
        let grad = Backprop { dinp: &mut dgelu, dout: &dout, inp: &inp };
        cpu.activation_backward(grad, Params { values: &params, grads: &mut dbias }, b, n, Activation::Gelu);
        let (mut ln, mut stats) = (vec![0.0f32; n * c], NormStats { mean: vec![0.0f32; n], rstd: vec![0.0f32; n] });
        cpu.layernorm_forward(&mut ln, &mut stats, &inp, &params, LayerNorm { w, b }, Rows { n, c });
        let (mut dln, mut grads) = (vec![0.0f32; n * c], vec![0.0f32; 2 * c]);
        let grad = Backprop { dinp: &mut dln, dout: &dout, inp: &inp };
        let weights = Params { values: &params, grads: &mut grads };
        cpu.layernorm_backward(grad, false, &stats, weights, LayerNorm { w, b }, Rows { n, c });
        let drop = Dropout { p: 0.3, key: 5 };
        let (mut res, mut dres) = (dout.clone(), vec![0.0f32; n * c]);
        cpu.residual_forward(&mut res, &inp, &params, b, n, drop);
        cpu.dropout_backward(&mut dres, &dout, drop);
        bits(&[&gelu, &dgelu, &dbias, &ln, &stats.mean, &stats.rstd, &dln, &grads, &res, &dres])
    });
    assert!(wide == narrow, "GELU, LayerNorm or dropout: the AVX-512 and 8-lane builds differ");
}

#[test]
fn dropout_drops_exactly_the_elements_whose_hash_is_below_p() {
    // The definition: element i, with u = (top 24 bits of its hash) / 2^24,
    // is dropped when u < p and kept (scaled by 1/(1 − p)) otherwise. p on
    // the 2^-24 grid and just beside it are the edges of the integer test.
    let grid = (1u64 << 24) as f64;
    let key = 0x5eed_u64;
    for i in 0..2000usize {
        let u = (rng::mix64(key ^ rng::mix64(i as u64)) >> 40) as f64;
        for p in
            [0.1, 0.5, 0.9, 1.0 / 3.0, u / grid, u / grid + 1e-12, u / grid - 1e-12, (u + 1.0) / grid, (u - 1.0) / grid]
        {
            if p <= 0.0 || p >= 1.0 {
                continue;
            }
            let d = Dropout { p, key };
            let want = if u / grid < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 };
            assert_eq!(d.factor::<f32>(i).to_bits(), want.to_bits(), "p {p} element {i}");
        }
    }
}
