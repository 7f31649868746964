//! Soft-prompt elicitation: with the model frozen, can k optimized input
//! embeddings after BOS bring the task back? A model that still holds the
//! capability needs fewer of them than one that never learned it.
//!
//! For every model (P, D, C) and every k of `K` the context holds
//! (1 + k + the task's longest example ≤ n_ctx), a soft prompt of k
//! embeddings after BOS (the example after it keeping its own positions,
//! `model::SoftPrompt`: shifted, a model trained with its examples right
//! after BOS fails the task for that alone) is optimized with Adam on T's problems (`STEPS` steps, the
//! run's batch size, step size `LR_RELATIVE` times the RMS of the model's
//! token embeddings, the model's parameters untouched) from three starts:
//! the embeddings of k random tokens, the embedding of the task's first
//! prompt token (its tag, where it has one) in every slot, and Gaussian
//! noise at the token embeddings' RMS. The start whose prompt has the
//! lowest loss on a fixed sample of T is kept (chosen without V), and its
//! exact match on V reported; k = 0 is plain evaluation. Every start sees
//! the same batches (drawn by step), so the models are compared on the
//! same data.
//!
//! Fragility: the kept prompt of each k under random perturbations of
//! relative size ε (each soft embedding moved by ε times its norm in a
//! random direction), `FRAGILITY_DRAWS` draws per ε; the first ε of the
//! grid at which the mean accuracy is at most half the unperturbed one
//! (not measured for a prompt at accuracy 0: there is nothing to halve).

use serde::{Deserialize, Serialize};

use super::Scorer;
use crate::backend::{AdamW, Backend, DecayGroup, View};
use crate::data::Batch;
use crate::error::Result;
use crate::eval::Evaluator;
use crate::float::Float;
use crate::model::{ModelShape, ParamLayout, SoftPrompt, to_host};
use crate::rng;
use crate::tasks::Task;

/// The soft-prompt lengths tried.
pub const K: [usize; 7] = [0, 1, 2, 4, 8, 16, 32];
/// Adam steps per soft prompt.
pub const STEPS: u64 = 150;
/// Adam's step size, relative to the RMS of the model's token embeddings.
pub const LR_RELATIVE: f64 = 0.05;
/// The problems of T a start is chosen on (the first of T).
pub const SELECTION_EXAMPLES: usize = 256;
/// Relative perturbation sizes, and draws per size.
pub const EPSILONS: [f64; 5] = [0.01, 0.03, 0.1, 0.3, 1.0];
pub const FRAGILITY_DRAWS: u64 = 32;

/// Where a soft prompt's optimization starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// No soft prompt (k = 0): plain evaluation.
    None,
    /// The token embeddings of k tokens drawn uniformly from the vocabulary.
    RandomTokens,
    /// The embedding of the task's first prompt token (its tag) in every slot.
    TaskToken,
    /// Gaussian noise with the token embeddings' RMS.
    Noise,
}

/// One start's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartResult {
    pub start: Start,
    /// Loss per answer token on the selection sample of T after optimization.
    pub selection_loss: f64,
    /// Exact match on V.
    pub accuracy: f64,
}

/// Accuracy under perturbations of one relative size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Perturbed {
    pub epsilon: f64,
    pub mean: f64,
    pub draws: Vec<f64>,
}

/// The best soft prompt of k embeddings on one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoftPromptPoint {
    pub k: usize,
    /// Exact match on V of the kept start, and its 95% Wilson interval.
    pub accuracy: f64,
    pub accuracy_interval: [f64; 2],
    /// Its loss per answer token on the selection sample of T (k = 0: the
    /// model's own), which falls with k even where exact match stays at 0.
    pub selection_loss: f64,
    pub start: Start,
    /// Every start (empty for k = 0).
    pub starts: Vec<StartResult>,
    /// The kept prompt under perturbation (empty for k = 0 and at accuracy 0).
    pub fragility: Vec<Perturbed>,
    /// The first ε at which the mean accuracy is at most half of `accuracy`
    /// (null when none is, or `accuracy` is 0).
    pub halving_epsilon: Option<f64>,
}

/// One model's soft prompts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoftPromptModel {
    /// `P`, `D` or `C`.
    pub model: String,
    pub points: Vec<SoftPromptPoint>,
    /// The least k whose accuracy reaches 0.5·A(P) and 0.9·A(P) (null: none tried).
    pub k_half: Option<usize>,
    pub k_ninety: Option<usize>,
}

impl SoftPromptModel {
    /// The point whose prompt fits the selection sample of T best (the least
    /// loss; ties: the smaller k): this model's soft-prompt capacity, chosen
    /// without the held-out set, and never at a k whose optimization failed.
    pub fn best_fit(&self) -> Option<&SoftPromptPoint> {
        self.points.iter().min_by(|a, b| a.selection_loss.total_cmp(&b.selection_loss).then(a.k.cmp(&b.k)))
    }
}

/// What the soft-prompt instrument measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoftPrompts {
    pub steps: u64,
    pub lr_relative: f64,
    pub train_examples: usize,
    pub selection_examples: usize,
    /// The model's context and the task's longest example (tag, prompt, answer).
    pub n_ctx: usize,
    pub longest_example: usize,
    /// The k tried: those the context holds.
    pub k_fit: Vec<usize>,
    /// The k of `K` it does not hold, and what giving the largest room costs.
    pub k_no_room: Vec<usize>,
    pub room: Option<String>,
    /// A(P), plain: the reference of k_half and k_ninety.
    pub accuracy_p: f64,
    pub models: Vec<SoftPromptModel>,
    /// Per k: D's accuracy minus C's.
    pub gap_d_minus_c: Vec<(usize, f64)>,
}

/// Soft prompts for each of `models` (name, parameters), optimized on T's
/// problems `t` and scored on V's `v`.
pub(super) fn soft_prompts<B: Backend>(
    scorer: &mut Scorer<B>,
    task: &Task,
    t: &[u64],
    v: &[u64],
    models: &[(&str, &[f32], f64)],
    accuracy_p: f64,
    seed: u64,
) -> Result<SoftPrompts> {
    let shape = scorer.model.shape.clone();
    let layout = ParamLayout::new(&shape);
    let longest = task.max_len();
    let fits = |k: usize| 1 + k + longest <= shape.n_ctx;
    let k_fit: Vec<usize> = K.into_iter().filter(|&k| fits(k)).collect();
    let k_no_room: Vec<usize> = K.into_iter().filter(|&k| !fits(k)).collect();
    let room = k_no_room.last().map(|&k| room_cost(&shape, &layout, k, longest, scorer.model.batch));
    let selection = &t[..t.len().min(SELECTION_EXAMPLES)];
    let mut out = Vec::new();
    for &(name, params, _) in models {
        let mut points = Vec::new();
        for &k in &k_fit {
            points.push(soft_prompt_point(scorer, task, (t, selection, v), params, &layout, k, seed)?);
        }
        let least = |share: f64| {
            (accuracy_p > 0.0).then(|| points.iter().find(|p| p.accuracy >= share * accuracy_p).map(|p| p.k)).flatten()
        };
        let (k_half, k_ninety) = (least(0.5), least(0.9));
        out.push(SoftPromptModel { model: name.to_string(), points, k_half, k_ninety });
    }
    scorer.model.soft_prompt = None;
    let of = |m: &str| out.iter().find(|x| x.model == m);
    let gap_d_minus_c = match (of("D"), of("C")) {
        (Some(d), Some(c)) => d.points.iter().zip(&c.points).map(|(d, c)| (d.k, d.accuracy - c.accuracy)).collect(),
        _ => Vec::new(),
    };
    Ok(SoftPrompts {
        steps: STEPS,
        lr_relative: LR_RELATIVE,
        train_examples: t.len(),
        selection_examples: selection.len(),
        n_ctx: shape.n_ctx,
        longest_example: longest,
        k_fit,
        k_no_room,
        room,
        accuracy_p,
        models: out,
        gap_d_minus_c,
    })
}

/// What a context with room for `k` soft embeddings would take: the
/// context, the position parameters it adds and the training step's FLOPs
/// against this model's.
fn room_cost(shape: &ModelShape, layout: &ParamLayout, k: usize, longest: usize, batch: usize) -> String {
    let need = 1 + k + longest;
    let wider = ModelShape { n_ctx: need, ..shape.clone() };
    let extra = (need - shape.n_ctx) * shape.d_model;
    let ratio =
        wider.train_flops(layout.len() + extra, batch, need) / shape.train_flops(layout.len(), batch, shape.n_ctx);
    format!(
        "k = {k} needs n_ctx ≥ {need} (1 + k + the longest example, {longest}); this model has {}: a run trained \
         at n_ctx {need} has {extra} more position parameters and {ratio:.2}× the FLOPs per training step",
        shape.n_ctx
    )
}

/// The best soft prompt of `k` for the model with `params`, its accuracy on
/// V and its fragility. `sets` are T, the selection sample of T, and V.
fn soft_prompt_point<B: Backend>(
    scorer: &mut Scorer<B>,
    task: &Task,
    sets: (&[u64], &[u64], &[u64]),
    params: &[f32],
    layout: &ParamLayout,
    k: usize,
    seed: u64,
) -> Result<SoftPromptPoint> {
    let (t, selection, v) = sets;
    let shape = &scorer.model.shape;
    let (rows, ctx, c, vocab) = (scorer.model.batch, shape.n_ctx, shape.d_model, shape.vocab);
    let evaluator = |problems: &[u64]| Evaluator::for_problems(task, problems, rows, ctx, vocab).with_soft_slots(k);
    let (mut on_v, mut on_selection) = (evaluator(v), evaluator(selection));
    scorer.load(params);
    scorer.model.soft_prompt = None;
    if k == 0 {
        let selection_loss = on_selection.run(scorer.backend, &mut scorer.model).loss;
        let r = on_v.run(scorer.backend, &mut scorer.model);
        scorer.backend.check()?;
        return Ok(SoftPromptPoint {
            k,
            accuracy: r.exact_match,
            accuracy_interval: [r.exact_match_lo, r.exact_match_hi],
            selection_loss,
            start: Start::None,
            starts: Vec::new(),
            fragility: Vec::new(),
            halving_epsilon: None,
        });
    }
    let wte = &params[layout.wte.range()];
    let rms = super::rms(wte);
    let mut first = Vec::new();
    task.render(t[0], &mut first);
    // The kept start: its values, outcome and interval on V.
    let mut best: Option<(Vec<B::F>, StartResult, [f64; 2])> = None;
    let mut starts = Vec::new();
    for start in [Start::RandomTokens, Start::TaskToken, Start::Noise] {
        let values = start_values(start, wte, rms, first[0], k, c, seed);
        scorer.model.soft_prompt = Some(SoftPrompt::new(scorer.backend, &values, c));
        optimize(scorer, task, t, k, LR_RELATIVE * rms, seed)?;
        let selection_loss = on_selection.run(scorer.backend, &mut scorer.model).loss;
        let r = on_v.run(scorer.backend, &mut scorer.model);
        scorer.backend.check()?;
        let result = StartResult { start, selection_loss, accuracy: r.exact_match };
        starts.push(result.clone());
        if best.as_ref().is_none_or(|b| selection_loss < b.1.selection_loss) {
            let soft = scorer.model.soft_prompt.as_ref().expect("set above");
            best = Some((to_host(scorer.backend, &soft.values, k * c), result, [r.exact_match_lo, r.exact_match_hi]));
        }
    }
    let (values, kept, interval) = best.expect("three starts");
    let fragility = if kept.accuracy > 0.0 { fragility(scorer, &mut on_v, &values, k, c, seed)? } else { Vec::new() };
    let halving_epsilon = (kept.accuracy > 0.0)
        .then(|| fragility.iter().find(|f| f.mean <= kept.accuracy / 2.0).map(|f| f.epsilon))
        .flatten();
    Ok(SoftPromptPoint {
        k,
        accuracy: kept.accuracy,
        accuracy_interval: interval,
        selection_loss: kept.selection_loss,
        start: kept.start,
        starts,
        fragility,
        halving_epsilon,
    })
}

/// A start's k soft embeddings (K,C); `tag` is the task's first prompt token.
fn start_values<F: Float>(start: Start, wte: &[f32], rms: f64, tag: u32, k: usize, c: usize, seed: u64) -> Vec<F> {
    let row = |token: usize| wte[token * c..(token + 1) * c].iter().map(|&x| F::of(x as f64));
    let vocab = (wte.len() / c) as u64;
    match start {
        Start::None => Vec::new(),
        Start::RandomTokens => {
            let mut r = rng::stream(seed, "soft-prompt-tokens", k as u64);
            (0..k).flat_map(|_| row(rng::below(&mut r, vocab) as usize)).collect()
        }
        Start::TaskToken => (0..k).flat_map(|_| row(tag as usize)).collect(),
        Start::Noise => {
            let mut r = rng::stream(seed, "soft-prompt-noise", k as u64);
            (0..k * c).map(|_| F::of(rms * rng::normal(&mut r))).collect()
        }
    }
}

/// `STEPS` Adam steps on the model's soft prompt (k embeddings) over
/// batches of T's problems, step s's batch drawn from the stream
/// (seed, "soft-prompt-batch", s); the model's parameters stay as they are.
fn optimize<B: Backend>(scorer: &mut Scorer<B>, task: &Task, t: &[u64], k: usize, lr: f64, seed: u64) -> Result<()> {
    let (backend, model) = (scorer.backend, &mut scorer.model);
    let (rows, c) = (model.batch, model.shape.d_model);
    let mut batch = Batch::<B::F>::new(rows, model.shape.n_ctx);
    batch.soft_slots = k;
    let (mut m, mut v) = (backend.alloc(k * c), backend.alloc(k * c));
    let groups = [DecayGroup { view: View { offset: 0, len: k * c }, weight_decay: 0.0 }];
    let mut example = Vec::new();
    for step in 0..STEPS {
        let mut r = rng::stream(seed, "soft-prompt-batch", step);
        for row in 0..rows {
            let prompt = task.render(t[rng::below(&mut r, t.len() as u64) as usize], &mut example);
            batch.set_row(row, &example, prompt);
        }
        model.forward(backend, &batch.tokens, &batch.targets, &batch.mask, None);
        model.backward(backend);
        let soft = model.soft_prompt.as_mut().expect("a soft prompt to optimize");
        let hp = AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: step + 1, grad_scale: 1.0 };
        backend.adamw_update(&mut soft.values, &soft.grads, &mut m, &mut v, &groups, hp);
    }
    backend.check()
}

/// Accuracy on V of the soft prompt `values` (K,C) moved by ε times each
/// embedding's norm in a random direction, for every ε of `EPSILONS`.
fn fragility<B: Backend>(
    scorer: &mut Scorer<B>,
    on_v: &mut Evaluator<B::F>,
    values: &[B::F],
    k: usize,
    c: usize,
    seed: u64,
) -> Result<Vec<Perturbed>> {
    let mut moved = values.to_vec();
    let mut out = Vec::new();
    for (i, &epsilon) in EPSILONS.iter().enumerate() {
        let mut draws = Vec::new();
        for d in 0..FRAGILITY_DRAWS {
            let mut r = rng::stream(seed, "soft-prompt-fragility", (k * EPSILONS.len() + i) as u64 * 1000 + d);
            for (slot, out) in values.chunks(c).zip(moved.chunks_mut(c)) {
                let dir: Vec<f64> = (0..c).map(|_| rng::normal(&mut r)).collect();
                let dir_norm = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
                let norm = slot.iter().map(|x| x.f64().powi(2)).sum::<f64>().sqrt();
                for ((o, s), u) in out.iter_mut().zip(slot).zip(&dir) {
                    *o = B::F::of(s.f64() + epsilon * norm * u / dir_norm);
                }
            }
            let soft = scorer.model.soft_prompt.as_mut().expect("the kept prompt's slot");
            scorer.backend.upload(&mut soft.values, &moved);
            draws.push(on_v.run(scorer.backend, &mut scorer.model).exact_match);
        }
        scorer.backend.check()?;
        out.push(Perturbed { epsilon, mean: draws.iter().sum::<f64>() / draws.len() as f64, draws });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(k: usize, accuracy: f64, selection_loss: f64) -> SoftPromptPoint {
        SoftPromptPoint {
            k,
            accuracy,
            accuracy_interval: [accuracy, accuracy],
            selection_loss,
            start: Start::Noise,
            starts: Vec::new(),
            fragility: Vec::new(),
            halving_epsilon: None,
        }
    }

    #[test]
    fn best_fit_is_the_least_selection_loss_not_the_largest_k_or_the_best_accuracy() {
        // At k = 32 the optimization failed (loss up, accuracy down); at k = 2
        // the held-out accuracy is highest, but the fit is better at k = 8.
        let model = SoftPromptModel {
            model: "C".into(),
            points: vec![point(0, 0.0, 5.0), point(2, 0.7, 0.4), point(8, 0.6, 0.3), point(32, 0.05, 1.0)],
            k_half: None,
            k_ninety: None,
        };
        assert_eq!(model.best_fit().map(|p| p.k), Some(8));
        // Ties go to the fewer tokens.
        let tied = SoftPromptModel { points: vec![point(16, 0.2, 0.3), point(4, 0.1, 0.3)], ..model };
        assert_eq!(tied.best_fit().map(|p| p.k), Some(4));
        assert!(SoftPromptModel { points: Vec::new(), ..tied }.best_fit().is_none());
    }
}
