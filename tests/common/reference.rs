//! The f64 reference of every op, and the one rule for comparing an output
//! with its reference. Both the CPU backend (`tests/ops.rs`) and the CUDA
//! kernels run on the CPU emulator (`tests/cuda.rs`) are checked against
//! these functions.
//!
//! Each reference is written from its op's definition, with the op's shapes
//! in its comment, and returns the op's own value: an op that adds into a
//! buffer (parameter gradients, `accumulate`) is checked against
//! `accumulated(initial, reference)`. Where an op's result is exact in f32 (a
//! sum of two values, a product by a dropout factor, ReLU, AdamW's f32
//! formula), the reference rounds where the definition does, so those are
//! compared bit for bit. Dropout factors are `Dropout::factor`'s, the hash
//! both backends share.

use ebb::backend::{Activation, AdamW, Dropout, Heads, Logits, Product, Rows, Sequences, SoftSlots};

/// got ≈ want: every element within `tol` of the output's scale, the largest
/// magnitude in `want` (at least 1e-3); bit for bit when `tol` is 0. A
/// relative check of one value v is `assert_close(&[v / want], &[1.0], …)`.
pub fn assert_close<G: Copy + Into<f64>, W: Copy + Into<f64>>(got: &[G], want: &[W], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, &w| m.max(w.into().abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        let err = (g - w).abs() / scale;
        let ok = if tol == 0.0 { g.to_bits() == w.to_bits() } else { err <= tol };
        assert!(ok, "{what}[{i}]: got {g}, want {w} (error {err:e} of scale {scale:e}, tolerance {tol:e})");
    }
}

/// initial + delta: what an op that adds `delta` into a buffer leaves there.
pub fn accumulated(initial: &[f32], delta: &[f64]) -> Vec<f64> {
    assert_eq!(initial.len(), delta.len());
    initial.iter().zip(delta).map(|(&a, &d)| f64::from(a) + d).collect()
}

// ------------------------------------------------------------------ encoder

/// out (N,C) = wte[tokens[n]] + wpe[n mod T]; tokens (N), wte (V,C), wpe (T,C).
/// Each sum rounded to f32, as the op adds: exact.
pub fn encoder_forward(tokens: &[u32], wte: &[f32], wpe: &[f32], shape: Sequences) -> Vec<f64> {
    let Sequences { n, t, c } = shape;
    (0..n * c)
        .map(|i| (i / c, i % c))
        .map(|(r, j)| f64::from(wte[tokens[r] as usize * c + j] + wpe[(r % t) * c + j]))
        .collect()
}

/// (dwte (V,C), dwpe (T,C)): dwte[v] = Σ dout[n] over the rows n with
/// tokens[n] = v, dwpe[p] = Σ dout[n] over the rows at position n mod T = p;
/// dout (N,C), tokens (N)
pub fn encoder_backward(dout: &[f32], tokens: &[u32], vocab: usize, shape: Sequences) -> (Vec<f64>, Vec<f64>) {
    let Sequences { n, t, c } = shape;
    let (mut dwte, mut dwpe) = (vec![0.0; vocab * c], vec![0.0; t * c]);
    for r in 0..n {
        for j in 0..c {
            dwte[tokens[r] as usize * c + j] += f64::from(dout[r * c + j]);
            dwpe[(r % t) * c + j] += f64::from(dout[r * c + j]);
        }
    }
    (dwte, dwpe)
}

/// The encoder with K soft embeddings after each sequence's first token,
/// the tokens after them at their own positions: at p = n mod T,
/// wte[tokens[n]] + wpe[p] for p = 0, soft[p − 1] for 1 ≤ p ≤ K,
/// wte[tokens[n]] + wpe[p − K] after; each sum rounded to f32 as the op
/// adds: exact. soft (K,C), wte (V,C), wpe (T,C)
pub fn soft_prompt_forward(tokens: &[u32], soft: &[f32], wte: &[f32], wpe: &[f32], shape: SoftSlots) -> Vec<f64> {
    let SoftSlots { n, t, c, k } = shape;
    let token = |r: usize, pos: usize, j: usize| f64::from(wte[tokens[r] as usize * c + j] + wpe[pos * c + j]);
    (0..n * c)
        .map(|i| (i / c, i / c % t, i % c))
        .map(|(r, p, j)| match p {
            0 => token(r, 0, j),
            p if p <= k => f64::from(soft[(p - 1) * c + j]),
            p => token(r, p - k, j),
        })
        .collect()
}

/// dsoft (K,C): dsoft[i] = Σ dout[n] over the rows at position n mod T = i + 1; dout (N,C)
pub fn soft_prompt_backward(dout: &[f32], shape: SoftSlots) -> Vec<f64> {
    let SoftSlots { n, t, c, k } = shape;
    let mut dsoft = vec![0.0; k * c];
    for r in (0..n).filter(|r| (1..=k).contains(&(r % t))) {
        for j in 0..c {
            dsoft[(r % t - 1) * c + j] += f64::from(dout[r * c + j]);
        }
    }
    dsoft
}

// ---------------------------------------------------------------- layernorm

/// LayerNorm's forward values: out (N,C), each row's mean and rstd (N).
pub struct Normalized {
    pub out: Vec<f64>,
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
}

/// (mean, 1/√(variance + 1e-5)) of one row.
fn row_stats(x: &[f32]) -> (f64, f64) {
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / x.len() as f64;
    (mean, 1.0 / (var + 1e-5).sqrt())
}

/// out (N,C) = (inp − mean) · rstd · w + b; inp (N,C), w/b (C), mean/rstd (N)
/// of each row of inp, rstd = 1/√(variance + 1e-5)
pub fn layernorm_forward(inp: &[f32], w: &[f32], b: &[f32], shape: Rows) -> Normalized {
    let Rows { n, c } = shape;
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    for r in 0..n {
        (mean[r], rstd[r]) = row_stats(&inp[r * c..(r + 1) * c]);
        for j in 0..c {
            let xhat = (f64::from(inp[r * c + j]) - mean[r]) * rstd[r];
            out[r * c + j] = xhat * f64::from(w[j]) + f64::from(b[j]);
        }
    }
    Normalized { out, mean, rstd }
}

/// LayerNorm's gradients: dinp (N,C), dw and db (C).
pub struct NormGrads {
    pub dinp: Vec<f64>,
    pub dw: Vec<f64>,
    pub db: Vec<f64>,
}

/// dinp (N,C) = rstd · (g − mean_j g − x̂ · mean_j(g · x̂)) with g = dout · w and
/// x̂ = (inp − mean) · rstd; dw (C) = Σₙ x̂ · dout; db (C) = Σₙ dout;
/// dout, inp (N,C), w (C)
pub fn layernorm_backward(dout: &[f32], inp: &[f32], w: &[f32], shape: Rows) -> NormGrads {
    let Rows { n, c } = shape;
    let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    for r in 0..n {
        let (mean, rstd) = row_stats(&inp[r * c..(r + 1) * c]);
        let xhat: Vec<f64> = (0..c).map(|j| (f64::from(inp[r * c + j]) - mean) * rstd).collect();
        let g: Vec<f64> = (0..c).map(|j| f64::from(dout[r * c + j]) * f64::from(w[j])).collect();
        let g_mean = g.iter().sum::<f64>() / c as f64;
        let gx_mean = g.iter().zip(&xhat).map(|(g, x)| g * x).sum::<f64>() / c as f64;
        for j in 0..c {
            dinp[r * c + j] = rstd * (g[j] - g_mean - xhat[j] * gx_mean);
            dw[j] += xhat[j] * f64::from(dout[r * c + j]);
            db[j] += f64::from(dout[r * c + j]);
        }
    }
    NormGrads { dinp, dw, db }
}

// ------------------------------------------------------------------- matmul

/// out (N,OC) = inp (N,C) · w (OC,C)ᵀ + b (OC)
pub fn matmul_forward(inp: &[f32], w: &[f32], bias: Option<&[f32]>, shape: Product) -> Vec<f64> {
    let Product { n, c, oc } = shape;
    let dot = |r: usize, o: usize| (0..c).map(|k| f64::from(inp[r * c + k]) * f64::from(w[o * c + k])).sum::<f64>();
    (0..n * oc).map(|i| dot(i / oc, i % oc) + bias.map_or(0.0, |b| f64::from(b[i % oc]))).collect()
}

/// dinp (N,C) = dout (N,OC) · w (OC,C)
pub fn matmul_backward_dinp(dout: &[f32], w: &[f32], shape: Product) -> Vec<f64> {
    let Product { n, c, oc } = shape;
    let dot = |r: usize, j: usize| (0..oc).map(|o| f64::from(dout[r * oc + o]) * f64::from(w[o * c + j])).sum();
    (0..n * c).map(|i| dot(i / c, i % c)).collect()
}

/// dw (OC,C) = dout (N,OC)ᵀ · inp (N,C)
pub fn matmul_backward_dw(dout: &[f32], inp: &[f32], shape: Product) -> Vec<f64> {
    let Product { n, c, oc } = shape;
    let dot = |o: usize, j: usize| (0..n).map(|r| f64::from(dout[r * oc + o]) * f64::from(inp[r * c + j])).sum();
    (0..oc * c).map(|i| dot(i / c, i % c)).collect()
}

/// out (W) = Σₙ x (N,W): a bias's gradient from the gradient at its output.
pub fn column_sums<T: Copy + Into<f64>>(x: &[T], width: usize) -> Vec<f64> {
    (0..width).map(|j| x.iter().skip(j).step_by(width).map(|&v| v.into()).sum()).collect()
}

// ---------------------------------------------------------------- attention

/// Attention's forward values: the softmax probabilities and those after
/// dropout (B,H,T,T, 0 above the diagonal), and out (B,T,C).
pub struct Attended {
    pub probs: Vec<f64>,
    pub dropped: Vec<f64>,
    pub out: Vec<f64>,
}

/// Element (bi, i, part, hi, d) of qkv (B,T,3C): part 0, 1, 2 = q, k, v of
/// head hi, dimension d.
fn qkv_at(qkv: &[f32], shape: Heads, bi: usize, i: usize, part: usize, hi: usize, d: usize) -> f64 {
    let Heads { t, c, h, .. } = shape;
    f64::from(qkv[(bi * t + i) * 3 * c + part * c + hi * (c / h) + d])
}

/// out (B,T,C): per head (width C/H), probs = causal softmax(q · kᵀ / √(C/H)),
/// dropped = probs · factor (element (b,h,i,j) of (B,H,T,T)), out = dropped · v;
/// qkv (B,T,3C) holds q, k, v
pub fn attention_forward(qkv: &[f32], shape: Heads, dropout: Dropout) -> Attended {
    let Heads { b, t, c, h } = shape;
    let hs = c / h;
    let at = |bi, i, part, hi, d| qkv_at(qkv, shape, bi, i, part, hi, d);
    let (mut probs, mut dropped, mut out) = (vec![0.0; b * h * t * t], vec![0.0; b * h * t * t], vec![0.0; b * t * c]);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                let row = ((bi * h + hi) * t + i) * t;
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hs).map(|d| at(bi, i, 0, hi, d) * at(bi, j, 1, hi, d)).sum::<f64>() / (hs as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for j in 0..=i {
                    probs[row + j] = (scores[j] - max).exp() / total;
                    dropped[row + j] = probs[row + j] * f64::from(dropout.factor::<f32>(row + j));
                }
                for d in 0..hs {
                    out[(bi * t + i) * c + hi * hs + d] = (0..=i).map(|j| dropped[row + j] * at(bi, j, 2, hi, d)).sum();
                }
            }
        }
    }
    Attended { probs, dropped, out }
}

/// dqkv (B,T,3C) from dout (B,T,C) and qkv (B,T,3C), per head: dv = droppedᵀ ·
/// dout; dprobs = (dout · vᵀ) · factor; dscores = probs · (dprobs − Σⱼ dprobs ·
/// probs) / √(C/H); dq = dscores · k; dk = dscoresᵀ · q
pub fn attention_backward(dout: &[f32], qkv: &[f32], shape: Heads, dropout: Dropout) -> Vec<f64> {
    let Heads { b, t, c, h } = shape;
    let hs = c / h;
    let at = |bi, i, part, hi, d| qkv_at(qkv, shape, bi, i, part, hi, d);
    let Attended { probs, dropped, .. } = attention_forward(qkv, shape, dropout);
    let mut dqkv = vec![0.0; b * t * 3 * c];
    for bi in 0..b {
        for hi in 0..h {
            let head = (bi * h + hi) * t * t;
            let dy = |i: usize, d: usize| f64::from(dout[(bi * t + i) * c + hi * hs + d]);
            let mut dscores = vec![0.0; t * t];
            for i in 0..t {
                let dprobs: Vec<f64> = (0..=i)
                    .map(|j| {
                        let dot: f64 = (0..hs).map(|d| dy(i, d) * at(bi, j, 2, hi, d)).sum();
                        dot * f64::from(dropout.factor::<f32>(head + i * t + j))
                    })
                    .collect();
                let p = &probs[head + i * t..head + i * t + i + 1];
                let dot: f64 = dprobs.iter().zip(p).map(|(dp, p)| dp * p).sum();
                for j in 0..=i {
                    dscores[i * t + j] = p[j] * (dprobs[j] - dot) / (hs as f64).sqrt();
                }
            }
            for i in 0..t {
                for d in 0..hs {
                    let base = (bi * t + i) * 3 * c + hi * hs + d;
                    dqkv[base] = (0..t).map(|j| dscores[i * t + j] * at(bi, j, 1, hi, d)).sum();
                    dqkv[base + c] = (0..t).map(|j| dscores[j * t + i] * at(bi, j, 0, hi, d)).sum();
                    dqkv[base + 2 * c] = (0..t).map(|j| dropped[head + j * t + i] * dy(j, d)).sum();
                }
            }
        }
    }
    dqkv
}

// ------------------------------------------------- activations and dropout

/// √(2/π) and the cubic's coefficient in GELU's tanh form.
const GELU_S: f64 = 0.7978845608028654;
const GELU_A: f64 = 0.044715;

/// out (N,F) = act(inp (N,F) + b (F)), the sum rounded to f32 as the op adds
/// it; GELU in its tanh form, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
pub fn activation_forward(inp: &[f32], bias: &[f32], act: Activation) -> Vec<f64> {
    let biased = inp.iter().enumerate().map(|(i, &x)| f64::from(x + bias[i % bias.len()]));
    match act {
        Activation::Gelu => biased.map(|x| 0.5 * x * (1.0 + (GELU_S * (x + GELU_A * x * x * x)).tanh())).collect(),
        Activation::Relu => biased.map(|x| x.max(0.0)).collect(),
    }
}

/// dinp (N,F) = act'(inp + b) · dout; dout, inp (N,F), b (F). The bias's
/// gradient is `column_sums(dinp)`.
pub fn activation_backward(dout: &[f32], inp: &[f32], bias: &[f32], act: Activation) -> Vec<f64> {
    let grad = |i: usize| {
        let (x, d) = (f64::from(inp[i] + bias[i % bias.len()]), f64::from(dout[i]));
        match act {
            Activation::Gelu => {
                let th = (GELU_S * (x + GELU_A * x * x * x)).tanh();
                d * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * GELU_S * (1.0 + 3.0 * GELU_A * x * x))
            }
            Activation::Relu => {
                if x > 0.0 {
                    d
                } else {
                    0.0
                }
            }
        }
    };
    (0..dout.len()).map(grad).collect()
}

/// out (N,W) = inp + (branch + b) · factor(i); inp, branch (N,W), b (W). In
/// f32, as the op rounds: exact.
pub fn residual_forward(inp: &[f32], branch: &[f32], bias: &[f32], dropout: Dropout) -> Vec<f64> {
    let sum = |i: usize| inp[i] + (branch[i] + bias[i % bias.len()]) * dropout.factor::<f32>(i);
    (0..inp.len()).map(|i| f64::from(sum(i))).collect()
}

/// dinp (N) = dout (N) · factor(i). In f32, as the op rounds: exact.
pub fn dropout_backward(dout: &[f32], dropout: Dropout) -> Vec<f64> {
    dout.iter().enumerate().map(|(i, &d)| f64::from(d * dropout.factor::<f32>(i))).collect()
}

// ----------------------------------------------------------- cross-entropy

/// softmax(z) of one row of logits.
fn softmax(z: &[f32]) -> Vec<f64> {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let e: Vec<f64> = z.iter().map(|&x| (f64::from(x) - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|x| x / total).collect()
}

/// Makes every row of `logits` (N,V) confident: target t = 13·r mod V, its
/// logit raised 20 + 4r above the rest, so that from the second row on
/// p_target rounds to 1 in float32. Returns the targets (N).
pub fn make_confident(logits: &mut [f32], shape: Logits) -> Vec<u32> {
    let Logits { n, v } = shape;
    let targets: Vec<u32> = (0..n as u32).map(|r| (r * 13) % v as u32).collect();
    for r in 0..n {
        logits[r * v + targets[r] as usize] += 20.0 + 4.0 * r as f32;
    }
    targets
}

/// (probs (N,V), losses (N)): probs = softmax(logits (N,V)); losses = −log
/// probs[target] · mask, as log1p(Σ_{j≠t} e^(z_j − z_t)), which keeps its size
/// on confident rows (p_t ≈ 1); targets, mask (N)
pub fn crossentropy_forward(logits: &[f32], targets: &[u32], mask: &[f32], shape: Logits) -> (Vec<f64>, Vec<f64>) {
    let Logits { n, v } = shape;
    let probs = (0..n).flat_map(|r| softmax(&logits[r * v..(r + 1) * v])).collect();
    let losses = (0..n)
        .map(|r| {
            let (z, t) = (&logits[r * v..(r + 1) * v], targets[r] as usize);
            let others: f64 = (0..v).filter(|&j| j != t).map(|j| (f64::from(z[j]) - f64::from(z[t])).exp()).sum();
            f64::from(mask[r]) * others.ln_1p()
        })
        .collect();
    (probs, losses)
}

/// dlogits (N,V) = (probs − onehot(target)) · mask · scale, the target's entry
/// as −Σ_{j≠t} p_j (which keeps its size on confident rows); logits (N,V),
/// targets, mask (N)
pub fn crossentropy_backward(logits: &[f32], targets: &[u32], mask: &[f32], scale: f64, shape: Logits) -> Vec<f64> {
    let Logits { n, v } = shape;
    let mut dlogits = vec![0.0; n * v];
    for r in 0..n {
        let (p, t, w) = (softmax(&logits[r * v..(r + 1) * v]), targets[r] as usize, f64::from(mask[r]) * scale);
        for j in 0..v {
            dlogits[r * v + j] = p[j] * w;
        }
        dlogits[r * v + t] = -(0..v).filter(|&j| j != t).map(|j| p[j]).sum::<f64>() * w;
    }
    dlogits
}

// ---------------------------------------------------------------- optimizer

/// Σ x² over x (N)
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// AdamW's constants as both backends hand them to the update: each computed
/// in f64 from the hyper-parameters and rounded to f32 (bc1, bc2: the bias
/// corrections 1/(1 − βᵗ); decay = 1 − lr · weight decay).
pub struct AdamWConstants {
    pub b1: f32,
    pub b2: f32,
    pub one_b1: f32,
    pub one_b2: f32,
    pub lr: f32,
    pub eps: f32,
    pub grad_scale: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub decay: f32,
}

impl AdamWConstants {
    pub fn of(hp: AdamW, weight_decay: f64) -> Self {
        AdamWConstants {
            b1: hp.beta1 as f32,
            b2: hp.beta2 as f32,
            one_b1: (1.0 - hp.beta1) as f32,
            one_b2: (1.0 - hp.beta2) as f32,
            lr: hp.lr as f32,
            eps: hp.eps as f32,
            grad_scale: hp.grad_scale as f32,
            bc1: (1.0 / (1.0 - hp.beta1.powf(hp.t as f64))) as f32,
            bc2: (1.0 / (1.0 - hp.beta2.powf(hp.t as f64))) as f32,
            decay: (1.0 - hp.lr * weight_decay) as f32,
        }
    }
}

/// [params, m, v] (N) after one AdamW step from params, grads, m, v (N), in
/// f32 in the order the definition writes it (exact): g = grad · grad_scale;
/// m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g·g; p = p·decay − lr·(m·bc1) /
/// (√(v·bc2) + eps)
pub fn adamw_update(params: &[f32], grads: &[f32], m: &[f32], v: &[f32], k: &AdamWConstants) -> [Vec<f64>; 3] {
    let mut out = [vec![0.0; params.len()], vec![0.0; params.len()], vec![0.0; params.len()]];
    for i in 0..params.len() {
        let g = grads[i] * k.grad_scale;
        let mi = k.b1 * m[i] + k.one_b1 * g;
        let vi = k.b2 * v[i] + k.one_b2 * g * g;
        let p = params[i] * k.decay - k.lr * (mi * k.bc1) / ((vi * k.bc2).sqrt() + k.eps);
        [out[0][i], out[1][i], out[2][i]] = [p, mi, vi].map(f64::from);
    }
    out
}
