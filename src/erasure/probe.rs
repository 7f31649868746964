//! Linear probes: is the answer still linearly readable from the residual
//! stream, layer by layer, even where the model no longer emits it?
//!
//! For every problem, the residual stream at the last prompt position (the
//! position that predicts the answer's first token) after the embeddings
//! and after each block is the probe's input, and the answer's first token
//! its label. A multinomial logistic regression is fitted on T's problems
//! and scored on V's (never seen by the probe, nor held-out problems seen by
//! the model in training). Its control task keeps the inputs and shuffles
//! the labels across problems: a probe that scores there only memorizes, so
//! selectivity = accuracy − control accuracy is what the layer encodes.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::data::Batch;
use crate::float::Float;
use crate::model::Gpt;
use crate::tasks::Task;

/// Full-batch Adam iterations, step size and L2 penalty of the fit.
const ITERATIONS: usize = 200;
const STEP: f64 = 0.05;
const L2: f64 = 1e-3;

/// One layer's probe on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeLayer {
    /// `embeddings` (the input of block 0) or `block L` (its output).
    pub layer: String,
    /// Accuracy on V of the probe fitted on T, and its 95% Wilson interval.
    pub accuracy: f64,
    pub accuracy_interval: [f64; 2],
    /// The same with the labels shuffled across problems (control task).
    pub control_accuracy: f64,
    /// accuracy − control_accuracy.
    pub selectivity: f64,
}

/// Every layer's probe on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelProbes {
    /// `P`, `D` or `C`.
    pub model: String,
    pub layers: Vec<ProbeLayer>,
}

/// The probes of the battery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probes {
    /// Problems the probes are fitted on (T) and scored on (V).
    pub train_examples: usize,
    pub test_examples: usize,
    /// Distinct first answer tokens in T: the probe's classes.
    pub classes: usize,
    /// The share of V whose label is T's most common one: a constant probe's accuracy.
    pub chance: f64,
    pub models: Vec<ModelProbes>,
    /// Per layer: (A_D − A_C) / (A_P − A_C) of the probe accuracy, null when
    /// there is no C or P's probe is no better than C's.
    pub retention: Vec<(String, Option<f64>)>,
}

impl Probes {
    /// The probes of `models`, fitted on problems with `train_labels` and scored on `test_labels`.
    pub fn new(models: Vec<ModelProbes>, train_labels: &[u32], test_labels: &[u32]) -> Probes {
        Probes {
            train_examples: train_labels.len(),
            test_examples: test_labels.len(),
            classes: classes(train_labels).len(),
            chance: majority_share(train_labels, test_labels),
            retention: retention(&models),
            models,
        }
    }
}

/// The distinct labels, sorted: the probe's classes.
fn classes(labels: &[u32]) -> Vec<u32> {
    let mut classes = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    classes
}

/// Residual-stream states at the last prompt position: `[layer][problem]`
/// (layer 0 the embeddings' output, layer l block l−1's), each d_model
/// long, and each problem's label, its answer's first token.
pub type States = (Vec<Vec<Vec<f64>>>, Vec<u32>);

/// The states of `model` on `problems` of `task`, in batches of the model's rows.
pub fn states<B: Backend>(backend: &B, model: &mut Gpt<B>, task: &Task, problems: &[u64]) -> States {
    let (rows, t, c, layers) = (model.batch, model.shape.n_ctx, model.shape.d_model, model.shape.n_layers + 1);
    let mut batch = Batch::<B::F>::new(rows, t);
    let mut host = vec![B::F::of(0.0); rows * t * c];
    let mut out = vec![Vec::with_capacity(problems.len()); layers];
    let mut labels = Vec::with_capacity(problems.len());
    let mut example = Vec::new();
    for chunk in problems.chunks(rows) {
        let mut at = Vec::with_capacity(chunk.len());
        for row in 0..rows {
            match chunk.get(row) {
                Some(&p) => {
                    let prompt = task.render(p, &mut example);
                    batch.set_row(row, &example, prompt);
                    labels.push(example[prompt]);
                    at.push(row * t + prompt); // input: the last prompt token; target: the first answer token
                }
                None => batch.clear_row(row),
            }
        }
        model.forward(backend, &batch.tokens, &batch.targets, &batch.mask, None);
        for (layer, states) in out.iter_mut().enumerate() {
            backend.download(&mut host, model.residual_stream(layer));
            states.extend(at.iter().map(|&pos| host[pos * c..(pos + 1) * c].iter().map(|x| x.f64()).collect()));
        }
    }
    (out, labels)
}

/// A multinomial logistic regression on standardized inputs.
struct Fit {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// (classes, d + 1): the last column is the bias.
    w: Vec<Vec<f64>>,
}

impl Fit {
    /// Fits `x` (n × d) to labels `y` (class indices below `k`) by full-batch
    /// Adam on the mean cross-entropy plus L2 · ‖w‖² / 2; sums in a fixed order.
    fn new(x: &[Vec<f64>], y: &[usize], k: usize) -> Fit {
        let (n, d) = (x.len(), x.first().map_or(0, Vec::len));
        let mean: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64).collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n as f64;
                if var > 1e-12 { 1.0 / var.sqrt() } else { 0.0 }
            })
            .collect();
        let mut fit = Fit { mean, scale, w: vec![vec![0.0; d + 1]; k] };
        let z: Vec<Vec<f64>> = x.iter().map(|r| fit.standardize(r)).collect();
        let (mut m, mut v) = (vec![vec![0.0; d + 1]; k], vec![vec![0.0; d + 1]; k]);
        let (b1, b2) = (0.9f64, 0.999f64);
        let mut grad = vec![vec![0.0; d + 1]; k];
        let mut p = vec![0.0; k];
        for it in 1..=ITERATIONS {
            for (g, w) in grad.iter_mut().zip(&fit.w) {
                for (g, w) in g.iter_mut().zip(w) {
                    *g = L2 * w;
                }
            }
            grad.iter_mut().for_each(|g| g[d] = 0.0); // no penalty on the bias
            for (zi, &yi) in z.iter().zip(y) {
                fit.probabilities(zi, &mut p);
                for (class, g) in grad.iter_mut().enumerate() {
                    let e = (p[class] - (class == yi) as u8 as f64) / n as f64;
                    for (g, z) in g.iter_mut().zip(zi) {
                        *g += e * z;
                    }
                    g[d] += e;
                }
            }
            let (c1, c2) = (1.0 - b1.powi(it as i32), 1.0 - b2.powi(it as i32));
            for ((w, g), (m, v)) in fit.w.iter_mut().zip(&grad).zip(m.iter_mut().zip(v.iter_mut())) {
                for ((w, &g), (m, v)) in w.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w -= STEP * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
                }
            }
        }
        fit
    }

    fn standardize(&self, x: &[f64]) -> Vec<f64> {
        x.iter().zip(&self.mean).zip(&self.scale).map(|((x, m), s)| (x - m) * s).collect()
    }

    /// Softmax over classes of the standardized input `z` into `p`.
    fn probabilities(&self, z: &[f64], p: &mut [f64]) {
        for (p, w) in p.iter_mut().zip(&self.w) {
            *p = w[..z.len()].iter().zip(z).map(|(w, z)| w * z).sum::<f64>() + w[z.len()];
        }
        let max = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for p in p.iter_mut() {
            *p = (*p - max).exp();
            total += *p;
        }
        p.iter_mut().for_each(|p| *p /= total);
    }

    /// The most probable class of `x` (the first on a tie).
    fn predict(&self, x: &[f64]) -> usize {
        let mut p = vec![0.0; self.w.len()];
        self.probabilities(&self.standardize(x), &mut p);
        (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best })
    }
}

/// Accuracy on (`test`, `test_labels`) of a probe fitted on (`train`,
/// `train_labels`); a test label never seen in training counts as wrong.
pub fn probe_accuracy(
    train: &[Vec<f64>],
    train_labels: &[u32],
    test: &[Vec<f64>],
    test_labels: &[u32],
) -> (usize, usize) {
    let classes = classes(train_labels);
    let index = |l: &u32| classes.binary_search(l).ok();
    let y: Vec<usize> = train_labels.iter().map(|l| index(l).expect("a training label is a class")).collect();
    let fit = Fit::new(train, &y, classes.len());
    let right = test.iter().zip(test_labels).filter(|(x, l)| index(l) == Some(fit.predict(x))).count();
    (right, test.len())
}

/// The share of `test_labels` equal to the most common of `train_labels`.
pub fn majority_share(train_labels: &[u32], test_labels: &[u32]) -> f64 {
    let mut counts = std::collections::BTreeMap::new();
    for l in train_labels {
        *counts.entry(*l).or_insert(0usize) += 1;
    }
    let Some((&top, _)) = counts.iter().rev().max_by_key(|(_, c)| **c) else { return 0.0 };
    test_labels.iter().filter(|&&l| l == top).count() as f64 / test_labels.len().max(1) as f64
}

/// The control task's labels: the labels of T and V together, shuffled
/// across problems by a stream of `seed`; returned split as (T, V).
pub fn shuffled_labels(train: &[u32], test: &[u32], seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut all: Vec<u32> = train.iter().chain(test).copied().collect();
    crate::tasks::shuffle(&mut all, &mut crate::rng::stream(seed, "probe-control", 0));
    let test = all.split_off(train.len());
    (all, test)
}

/// Every layer's probe and its control for one model's states on T and V.
pub fn probe_model(model: &str, train: &States, test: &States, seed: u64) -> ModelProbes {
    let (shuffled_train, shuffled_test) = shuffled_labels(&train.1, &test.1, seed);
    let layers = (0..train.0.len())
        .map(|l| {
            let (right, n) = probe_accuracy(&train.0[l], &train.1, &test.0[l], &test.1);
            let (control, _) = probe_accuracy(&train.0[l], &shuffled_train, &test.0[l], &shuffled_test);
            let (lo, hi) = crate::eval::wilson_interval(right, n);
            let accuracy = right as f64 / n.max(1) as f64;
            let control_accuracy = control as f64 / n.max(1) as f64;
            ProbeLayer {
                layer: if l == 0 { "embeddings".into() } else { format!("block {}", l - 1) },
                accuracy,
                accuracy_interval: [lo, hi],
                control_accuracy,
                selectivity: accuracy - control_accuracy,
            }
        })
        .collect();
    ModelProbes { model: model.to_string(), layers }
}

/// Per layer, (A_D − A_C) / (A_P − A_C) of the probes' accuracy.
pub fn retention(models: &[ModelProbes]) -> Vec<(String, Option<f64>)> {
    let of = |m: &str| models.iter().find(|p| p.model == m);
    let (Some(p), Some(d)) = (of("P"), of("D")) else { return Vec::new() };
    p.layers
        .iter()
        .enumerate()
        .map(|(l, pl)| {
            let c = of("C").map(|c| c.layers[l].accuracy);
            let r = c.filter(|&c| pl.accuracy > c).map(|c| (d.layers[l].accuracy - c) / (pl.accuracy - c));
            (pl.layer.clone(), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around one of `k` centres in `d` dimensions, labelled by centre.
    fn clusters(n: usize, k: usize, d: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<u32>) {
        let mut r = crate::rng::stream(seed, "probe-test", 0);
        let centres: Vec<Vec<f64>> =
            (0..k).map(|c| (0..d).map(|j| if j % k == c { 3.0 } else { 0.0 }).collect()).collect();
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % k;
            x.push(centres[c].iter().map(|m| m + (2.0 * crate::rng::uniform(&mut r) - 1.0)).collect());
            y.push(c as u32 + 10);
        }
        (x, y)
    }

    #[test]
    fn a_probe_reads_separable_labels_and_not_shuffled_ones() {
        let (train, train_labels) = clusters(400, 4, 12, 1);
        let (test, test_labels) = clusters(200, 4, 12, 2);
        let (right, n) = probe_accuracy(&train, &train_labels, &test, &test_labels);
        assert!(right as f64 / n as f64 > 0.97, "separable clusters: {right}/{n}");
        // Shuffled labels carry nothing about the inputs: near chance (1/4)
        // on problems the probe never saw, seed after seed.
        for seed in 0..5 {
            let (st, sv) = shuffled_labels(&train_labels, &test_labels, seed);
            let (right, n) = probe_accuracy(&train, &st, &test, &sv);
            let chance = majority_share(&st, &sv);
            let acc = right as f64 / n as f64;
            assert!((acc - 0.25).abs() < 0.1 && (chance - 0.25).abs() < 0.1, "seed {seed}: {acc} (chance {chance})");
        }
    }

    #[test]
    fn an_unseen_test_label_counts_as_wrong() {
        let (train, labels) = clusters(100, 2, 4, 3);
        let (test, _) = clusters(10, 2, 4, 4);
        let (right, n) = probe_accuracy(&train, &labels, &test, &[99; 10]);
        assert_eq!((right, n), (0, 10));
    }
}
