//! Every op of the CPU backend (f32), forward and backward, against its f64
//! reference (`tests/common/reference.rs`, the one the CUDA kernels are
//! checked against on the emulator too), at shapes that are not multiples of
//! any block size. The whole model's gradients are checked against finite
//! differences by the gradient check.

mod common;

use common::reference::{self as refs, accumulated, assert_close};
use ebb::backend::cpu::CpuBackend;
use ebb::backend::{
    Activation, AdamW, Backend, Backprop, DecayGroup, Dropout, Embeddings, Heads, LayerNorm, Linear, Logits, NormStats,
    Params, Product, Rows, Sequences, SoftSlots, View, WeightGrads,
};
use ebb::rng;

/// f32 ops against f64 references: relative to the output's scale.
const TOL: f64 = 1e-5;
/// Ops whose result is exact in f32 (see the reference): bit for bit.
const EXACT: f64 = 0.0;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng::stream(seed, "ops-test", n as u64);
    (0..n).map(|_| rng::normal(&mut r) as f32).collect()
}

/// What an activation gradient's buffer holds after a backward pass that
/// wrote `want` into it, adding to its `initial` values when `accumulate`.
fn written(accumulate: bool, initial: &[f32], want: Vec<f64>) -> Vec<f64> {
    if accumulate { accumulated(initial, &want) } else { want }
}

#[test]
fn matmul_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    for (n, c, oc) in [(1, 1, 1), (7, 5, 3), (37, 19, 23), (130, 64, 192)] {
        let shape = Product { n, c, oc };
        let (inp, dout) = (random(n * c, 1), random(n * oc, 3));
        // params: weight (OC,C) then bias (OC)
        let params = random(oc * c + oc, 2);
        let (w, b) = (View { offset: 0, len: oc * c }, View { offset: oc * c, len: oc });
        for bias in [None, Some(b)] {
            let (linear, what) = (Linear { w, b: bias }, format!("matmul {n}x{c}x{oc} bias={}", bias.is_some()));
            let mut out = vec![0.0f32; n * oc];
            cpu.matmul_forward(&mut out, &inp, &params, linear, shape);
            let want = refs::matmul_forward(&inp, &params[w.range()], bias.map(|b| &params[b.range()]), shape);
            assert_close(&out, &want, TOL, &what);

            for (accumulate, weights) in
                [(false, WeightGrads::Add), (true, WeightGrads::Add), (true, WeightGrads::Skip)]
            {
                let (mut dinp, mut grads) = (random(n * c, 4), random(params.len(), 5));
                let (dinp0, grads0) = (dinp.clone(), grads.clone());
                let grad = Backprop { dinp: &mut dinp, dout: &dout, inp: &inp };
                let to = Params { values: &params, grads: &mut grads };
                cpu.matmul_backward(grad, accumulate, to, linear, shape, weights);
                let what = format!("{what} accumulate={accumulate} {weights:?}");
                let want = written(accumulate, &dinp0, refs::matmul_backward_dinp(&dout, &params[w.range()], shape));
                assert_close(&dinp, &want, TOL, &format!("{what} dinp"));
                if weights == WeightGrads::Skip {
                    assert_eq!(grads, grads0, "{what}: the gradients are left as they were");
                    continue;
                }
                let dw = refs::matmul_backward_dw(&dout, &inp, shape);
                assert_close(&grads[w.range()], &accumulated(&grads0[w.range()], &dw), TOL, &format!("{what} dw"));
                let db = if bias.is_some() { refs::column_sums(&dout, oc) } else { vec![0.0; oc] };
                assert_close(&grads[b.range()], &accumulated(&grads0[b.range()], &db), TOL, &format!("{what} db"));
            }
        }
    }
}

#[test]
fn attention_matches_reference_with_and_without_dropout() {
    let cpu = CpuBackend::<f32>::new();
    for dropout in [Dropout::OFF, Dropout { p: 0.2, key: 7 }] {
        for (b, t, c, h) in [(1, 1, 4, 1), (2, 5, 12, 3), (3, 17, 20, 4), (2, 77, 8, 2)] {
            let (heads, what) = (Heads { b, t, c, h }, format!("attention b{b} t{t} c{c} h{h} p{}", dropout.p));
            let (qkv, dout) = (random(b * t * 3 * c, 3), random(b * t * c, 6));
            let (mut out, mut state) = (vec![0.0f32; b * t * c], cpu.alloc_attention(heads, dropout.active()));
            cpu.attention_forward(&mut out, &mut state, &qkv, heads, dropout);
            assert_close(&out, &refs::attention_forward(&qkv, heads, dropout).out, TOL, &format!("{what} out"));
            let mut dqkv = vec![0.0f32; b * t * 3 * c];
            cpu.attention_backward(Backprop { dinp: &mut dqkv, dout: &dout, inp: &qkv }, &state, heads, dropout);
            let want = refs::attention_backward(&dout, &qkv, heads, dropout);
            assert_close(&dqkv, &want, TOL, &format!("{what} dqkv"));
        }
    }
}

#[test]
fn layernorm_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    for (n, c) in [(1, 3), (9, 31), (40, 64)] {
        let (rows, what) = (Rows { n, c }, format!("layernorm {n}x{c}"));
        let (inp, dout) = (random(n * c, 4), random(n * c, 8));
        let params = random(2 * c, 5);
        let (w, b) = (View { offset: 0, len: c }, View { offset: c, len: c });
        let (mut out, mut stats) = (vec![0.0f32; n * c], NormStats { mean: vec![0.0f32; n], rstd: vec![0.0f32; n] });
        cpu.layernorm_forward(&mut out, &mut stats, &inp, &params, LayerNorm { w, b }, rows);
        let want = refs::layernorm_forward(&inp, &params[w.range()], &params[b.range()], rows);
        assert_close(&out, &want.out, TOL, &format!("{what} out"));
        assert_close(&stats.mean, &want.mean, TOL, &format!("{what} mean"));
        assert_close(&stats.rstd, &want.rstd, TOL, &format!("{what} rstd"));

        let want = refs::layernorm_backward(&dout, &inp, &params[w.range()], rows);
        for accumulate in [false, true] {
            let (mut dinp, mut grads) = (random(n * c, 9), random(2 * c, 10));
            let (dinp0, grads0) = (dinp.clone(), grads.clone());
            let grad = Backprop { dinp: &mut dinp, dout: &dout, inp: &inp };
            let weights = Params { values: &params, grads: &mut grads };
            cpu.layernorm_backward(grad, accumulate, &stats, weights, LayerNorm { w, b }, rows);
            let what = format!("{what} accumulate={accumulate}");
            assert_close(&dinp, &written(accumulate, &dinp0, want.dinp.clone()), TOL, &format!("{what} dinp"));
            assert_close(&grads[w.range()], &accumulated(&grads0[w.range()], &want.dw), TOL, &format!("{what} dw"));
            assert_close(&grads[b.range()], &accumulated(&grads0[b.range()], &want.db), TOL, &format!("{what} db"));
        }
    }
}

#[test]
fn crossentropy_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    let shape @ Logits { n, v } = Logits { n: 13, v: 29 };
    let logits: Vec<f32> = random(n * v, 6).iter().map(|x| 3.0 * x).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let mask: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let (mut losses, mut probs, mut dlogits) = (vec![0.0f32; n], vec![0.0f32; n * v], vec![0.0f32; n * v]);
    cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &targets, &mask, shape);
    let (want_probs, want_losses) = refs::crossentropy_forward(&logits, &targets, &mask, shape);
    assert_close(&probs, &want_probs, TOL, "softmax");
    assert_close(&losses, &want_losses, TOL, "masked loss");
    cpu.crossentropy_backward(&mut dlogits, &probs, &targets, &mask, 0.25, shape);
    assert_close(&dlogits, &refs::crossentropy_backward(&logits, &targets, &mask, 0.25, shape), TOL, "dlogits");
}

/// Confident rows: the target's logit 20 to 40 above the rest, so that from
/// the second row on p_target rounds to 1 in float32. The loss and the
/// target's gradient keep their size, to float32's relative precision, as
/// float64 computes them (with p − 1 rounded they were exactly 0).
#[test]
fn crossentropy_keeps_confident_rows() {
    let cpu = CpuBackend::<f32>::new();
    let shape @ Logits { n, v } = Logits { n: 6, v: 50 };
    let mut logits = random(n * v, 12);
    let targets = refs::make_confident(&mut logits, shape);
    let mask = vec![1.0f32; n];
    let (mut losses, mut probs, mut dlogits) = (vec![0.0f32; n], vec![0.0f32; n * v], vec![0.0f32; n * v]);
    cpu.crossentropy_forward(&mut losses, &mut probs, &logits, &targets, &mask, shape);
    cpu.crossentropy_backward(&mut dlogits, &probs, &targets, &mask, 1.0, shape);
    let (_, want_losses) = refs::crossentropy_forward(&logits, &targets, &mask, shape);
    let want_dlogits = refs::crossentropy_backward(&logits, &targets, &mask, 1.0, shape);
    for r in 0..n {
        let t = r * v + targets[r] as usize;
        assert!(r == 0 || probs[t] == 1.0, "row {r}: p_target {} should round to 1 in float32", probs[t]);
        let loss = f64::from(losses[r]) / want_losses[r];
        assert_close(&[loss], &[1.0], 1e-5, &format!("row {r}: loss relative to the reference"));
        let grad = f64::from(dlogits[t]) / want_dlogits[t];
        assert_close(&[grad], &[1.0], 1e-5, &format!("row {r}: target gradient relative to the reference"));
    }
}

#[test]
fn encoder_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    let (v, t, c, rows) = (7, 5, 6, 3);
    let shape @ Sequences { n, .. } = Sequences { n: rows * t, t, c };
    let params = random(v * c + t * c, 7);
    let (wte, wpe) = (View { offset: 0, len: v * c }, View { offset: v * c, len: t * c });
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 3) % v as u32).collect();
    let mut out = vec![0.0f32; n * c];
    cpu.encoder_forward(&mut out, &tokens, &params, Embeddings { wte, wpe }, shape);
    let want = refs::encoder_forward(&tokens, &params[wte.range()], &params[wpe.range()], shape);
    assert_close(&out, &want, EXACT, "encoder_forward");

    let dout = random(n * c, 11);
    let mut grads = random(params.len(), 14);
    let grads0 = grads.clone();
    cpu.encoder_backward(&mut grads, Embeddings { wte, wpe }, &dout, &tokens, shape);
    let (dwte, dwpe) = refs::encoder_backward(&dout, &tokens, v, shape);
    assert_close(&grads[wte.range()], &accumulated(&grads0[wte.range()], &dwte), TOL, "encoder_backward wte");
    assert_close(&grads[wpe.range()], &accumulated(&grads0[wpe.range()], &dwpe), TOL, "encoder_backward wpe");
}

/// Soft prompts: K soft embeddings after each sequence's first token, the
/// tokens after them at their own positions; their gradient sums dout's
/// rows at the soft positions. K = 0 is the plain encoder.
#[test]
fn soft_prompt_matches_reference() {
    let cpu = CpuBackend::<f32>::new();
    let (v, t, c, rows) = (7, 8, 5, 3);
    let params = random(v * c + t * c, 21);
    let emb = Embeddings { wte: View { offset: 0, len: v * c }, wpe: View { offset: v * c, len: t * c } };
    for k in [0, 1, 3, t - 1] {
        let shape @ SoftSlots { n, .. } = SoftSlots { n: rows * t, t, c, k };
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 1) % v as u32).collect();
        let soft = random(k * c, 22);
        let mut out = random(n * c, 23);
        cpu.soft_prompt_forward(&mut out, &tokens, &soft, &params, emb, shape);
        let want = refs::soft_prompt_forward(&tokens, &soft, &params[emb.wte.range()], &params[emb.wpe.range()], shape);
        assert_close(&out, &want, EXACT, &format!("soft_prompt_forward k {k}"));
        if k == 0 {
            let mut plain = vec![0.0; n * c];
            cpu.encoder_forward(&mut plain, &tokens, &params, emb, Sequences { n, t, c });
            assert_eq!(out, plain, "no soft embeddings: the encoder's output, bit for bit");
        }

        let dout = random(n * c, 24);
        let mut dsoft = random(k * c, 25);
        let dsoft0 = dsoft.clone();
        cpu.soft_prompt_backward(&mut dsoft, &dout, shape);
        let want = accumulated(&dsoft0, &refs::soft_prompt_backward(&dout, shape));
        assert_close(&dsoft, &want, TOL, &format!("soft_prompt_backward k {k}"));
    }
}

/// Activations and the residual add, each with the bias of the product
/// before it (params: one row of F), over N rows of F; dropout's backward.
#[test]
fn elementwise_ops_match_reference() {
    let cpu = CpuBackend::<f32>::new();
    let (rows, f) = (25, 40);
    let (x, dout, branch) = (random(rows * f, 8), random(rows * f, 15), random(rows * f, 9));
    let bias = random(f, 10);
    let bv = View { offset: 0, len: f };
    for (act, tol) in [(Activation::Gelu, TOL), (Activation::Relu, EXACT)] {
        let mut y = vec![0.0f32; rows * f];
        cpu.activation_forward(&mut y, &x, &bias, bv, rows, act);
        assert_close(&y, &refs::activation_forward(&x, &bias, act), tol, &format!("{act:?} forward"));
        let mut db = random(f, 16);
        let db0 = db.clone();
        let grad = Backprop { dinp: &mut y, dout: &dout, inp: &x };
        cpu.activation_backward(grad, Params { values: &bias, grads: &mut db }, bv, rows, act);
        let want = refs::activation_backward(&dout, &x, &bias, act);
        assert_close(&y, &want, tol, &format!("{act:?} backward"));
        assert_close(&db, &accumulated(&db0, &refs::column_sums(&want, f)), TOL, &format!("{act:?} bias gradient"));
    }

    // The residual, in place over the branch, and dropout's backward; about
    // p of the elements are dropped.
    for dropout in [Dropout::OFF, Dropout { p: 0.25, key: 99 }] {
        let mut y = branch.clone();
        cpu.residual_forward(&mut y, &x, &bias, bv, rows, dropout);
        let want = refs::residual_forward(&x, &branch, &bias, dropout);
        assert_close(&y, &want, EXACT, &format!("residual_forward p{}", dropout.p));
        cpu.dropout_backward(&mut y, &dout, dropout);
        assert_close(&y, &refs::dropout_backward(&dout, dropout), EXACT, &format!("dropout_backward p{}", dropout.p));
        let dropped = (0..rows * f).filter(|&i| dropout.factor::<f32>(i) == 0.0).count();
        let expected = (dropout.p * (rows * f) as f64) as usize;
        assert!(dropped.abs_diff(expected) < 50, "dropped {dropped} of {} at p = {}", rows * f, dropout.p);
    }
}

#[test]
fn sum_squares_and_adamw_match_reference() {
    let cpu = CpuBackend::<f32>::new();
    for n in [1, 100, 40_000] {
        let x = random(n, 17);
        let whole = [View { offset: 0, len: n }];
        assert_close(&[cpu.sum_squares(&x, &whole)], &[refs::sum_squares(&x)], 1e-9, &format!("sum_squares n{n}"));
    }
    // Over views: only what they cover (one spans chunks, one is empty), in their order.
    let x = random(40_000, 22);
    let views = [View { offset: 10, len: 20_000 }, View { offset: 25_000, len: 0 }, View { offset: 30_000, len: 7 }];
    let want: f64 = views.iter().map(|v| refs::sum_squares(&x[v.range()])).sum();
    assert_close(&[cpu.sum_squares(&x, &views)], &[want], 1e-9, "sum_squares over views");
    // Two groups with different weight decays.
    let n = 777;
    let (mut p, grads, mut m) = (random(n, 18), random(n, 19), random(n, 20));
    let mut v: Vec<f32> = random(n, 21).iter().map(|x| 0.1 * x.abs()).collect();
    let (p0, m0, v0) = (p.clone(), m.clone(), v.clone());
    let groups = [(View { offset: 0, len: 500 }, 0.1), (View { offset: 500, len: 277 }, 0.0)];
    let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, t: 3, grad_scale: 0.5 };
    let decay_groups = groups.map(|(view, weight_decay)| DecayGroup { view, weight_decay });
    cpu.adamw_update(&mut p, &grads, &mut m, &mut v, &decay_groups, hp);
    for (view, weight_decay) in groups {
        let r = view.range();
        let k = refs::AdamWConstants::of(hp, weight_decay);
        let [want_p, want_m, want_v] =
            refs::adamw_update(&p0[r.clone()], &grads[r.clone()], &m0[r.clone()], &v0[r.clone()], &k);
        let what = format!("adamw weight decay {weight_decay}");
        assert_close(&p[r.clone()], &want_p, EXACT, &format!("{what} params"));
        assert_close(&m[r.clone()], &want_m, EXACT, &format!("{what} m"));
        assert_close(&v[r], &want_v, EXACT, &format!("{what} v"));
    }
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
