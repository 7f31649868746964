//! Evaluation on a fixed list of a task's problems (its held-out set, or a
//! sample of its finite training set): loss on answer tokens, token
//! accuracy, exact match with its 95% Wilson interval, and the probability
//! of the whole correct answer.
//!
//! Exact match is measured by teacher forcing: an answer counts when every
//! answer token (and the EOS) is the model's top choice given the correct
//! prefix. That is exactly greedy decoding's verdict: if every token is the
//! argmax, greedy decoding writes the answer; if one is not, greedy decoding
//! first departs from the answer at that token. One forward pass suffices.
//!
//! `exact_match_restricted` is the same with the choice restricted to the
//! tokens that occur in the task's answers (and EOS): when exact match falls
//! to 0 after a drop but this stays high, the model still computes the
//! answer and has only stopped emitting its tokens.

use crate::backend::Backend;
use crate::data::Batch;
use crate::float::Float;
use crate::model::Gpt;
use crate::tasks::{Suite, Task};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy per answer token.
    pub loss: f64,
    pub token_acc: f64,
    pub exact_match: f64,
    /// The 95% Wilson score interval of `exact_match` over the examples.
    pub exact_match_lo: f64,
    pub exact_match_hi: f64,
    /// Mean over examples of P(whole answer | prompt).
    pub p_correct: f64,
    /// Exact match with every prediction restricted to the task's answer tokens.
    pub exact_match_restricted: f64,
}

impl EvalResult {
    pub fn metrics(&self) -> [(&'static str, f64); 7] {
        [
            ("loss", self.loss),
            ("token_acc", self.token_acc),
            ("exact_match", self.exact_match),
            ("exact_match_lo", self.exact_match_lo),
            ("exact_match_hi", self.exact_match_hi),
            ("p_correct", self.p_correct),
            ("exact_match_restricted", self.exact_match_restricted),
        ]
    }
}

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959963984540054;

/// The 95% Wilson score interval of a binomial proportion: `successes` of
/// `n` trials. Total: no trials give the uninformative (0, 1).
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (successes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    // At 0 and n the bound is exactly the end point; rounding would move it.
    let lo = if k == 0.0 { 0.0 } else { centre - half };
    let hi = if k == n { 1.0 } else { centre + half };
    (lo, hi)
}

/// The candidate with the highest probability; the first of them on a tie.
fn argmax<F: Float>(p: &[F], mut candidates: impl Iterator<Item = usize>) -> usize {
    let first = candidates.next().expect("at least one candidate");
    candidates.fold(first, |best, i| if p[i] > p[best] { i } else { best })
}

/// A fixed list of a task's problems, rendered once, and the buffers to
/// evaluate the model on them.
pub struct Evaluator<F> {
    examples: Vec<(Vec<u32>, usize)>,
    /// The task's answer tokens and those of these examples, sorted.
    answer_tokens: Vec<u32>,
    batch: Batch<F>,
    probs: Vec<F>,
}

impl<F: Float> Evaluator<F> {
    /// Renders the given problems of `task`.
    pub fn for_problems(task: &Task, problems: &[u64], rows: usize, ctx: usize, vocab: usize) -> Self {
        let examples = problems
            .iter()
            .map(|&p| {
                let mut out = Vec::new();
                let prompt = task.render(p, &mut out);
                (out, prompt)
            })
            .collect::<Vec<(Vec<u32>, usize)>>();
        let mut answer_tokens = task.answer_tokens.clone();
        answer_tokens.extend(examples.iter().flat_map(|(example, prompt)| &example[*prompt..]));
        answer_tokens.sort_unstable();
        answer_tokens.dedup();
        Evaluator { examples, answer_tokens, batch: Batch::new(rows, ctx), probs: vec![F::zero(); rows * ctx * vocab] }
    }

    /// The same examples with `k` soft-prompt slots after BOS in every row
    /// (`Batch::soft_slots`), for a model with a soft prompt of `k`.
    pub fn with_soft_slots(mut self, k: usize) -> Self {
        self.batch.soft_slots = k;
        self
    }

    /// One evaluator per task of `suite`, on its held-out set.
    pub fn for_held_out_sets(suite: &Suite, rows: usize, ctx: usize, vocab: usize) -> Vec<Self> {
        suite.tasks.iter().zip(&suite.eval_sets).map(|(t, set)| Self::for_problems(t, set, rows, ctx, vocab)).collect()
    }

    /// All the examples in one batch, a row each (as `ebb run --dump-batches` writes them).
    pub fn as_batch(&self) -> Batch<F> {
        let mut batch = Batch::new(self.examples.len(), self.batch.ctx);
        for (row, (example, prompt)) in self.examples.iter().enumerate() {
            batch.set_row(row, example, *prompt);
        }
        batch
    }

    /// The batch of its first examples, a row each (rows past the last example empty).
    pub fn first_batch(&mut self) -> &Batch<F> {
        for row in 0..self.batch.rows {
            match self.examples.get(row) {
                Some((example, prompt)) => self.batch.set_row(row, example, *prompt),
                None => self.batch.clear_row(row),
            }
        }
        &self.batch
    }

    /// How many examples this evaluator scores.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Evaluates the model on all its examples (no dropout; the training
    /// streams are untouched).
    pub fn run<B: Backend<F = F>>(&mut self, backend: &B, model: &mut Gpt<B>) -> EvalResult {
        let (rows, t, v) = (self.batch.rows, self.batch.ctx, model.shape.vocab);
        let (mut loss, mut tokens, mut correct_tokens, mut exact, mut p_correct) = (0.0, 0usize, 0usize, 0usize, 0.0);
        let mut exact_restricted = 0usize;
        for chunk in self.examples.chunks(rows) {
            for row in 0..rows {
                match chunk.get(row) {
                    Some((example, prompt)) => self.batch.set_row(row, example, *prompt),
                    None => self.batch.clear_row(row),
                }
            }
            model.forward(backend, &self.batch.tokens, &self.batch.targets, &self.batch.mask, None);
            backend.download(&mut self.probs, &model.probs);
            let losses = model.position_losses();
            for row in 0..chunk.len() {
                let (mut all_right, mut all_right_restricted) = (true, true);
                let mut row_loss = 0.0;
                for j in 0..t {
                    let pos = row * t + j;
                    if self.batch.mask[pos] == F::zero() {
                        continue;
                    }
                    let p = &self.probs[pos * v..(pos + 1) * v];
                    let target = self.batch.targets[pos] as usize;
                    let right = argmax(p, 0..v) == target;
                    correct_tokens += right as usize;
                    all_right &= right;
                    all_right_restricted &= argmax(p, self.answer_tokens.iter().map(|&i| i as usize)) == target;
                    tokens += 1;
                    row_loss += losses[pos].f64();
                }
                loss += row_loss;
                exact += all_right as usize;
                exact_restricted += all_right_restricted as usize;
                p_correct += (-row_loss).exp();
            }
        }
        let n = self.examples.len() as f64;
        let (exact_match_lo, exact_match_hi) = wilson_interval(exact, self.examples.len());
        EvalResult {
            loss: loss / tokens as f64,
            token_acc: correct_tokens as f64 / tokens as f64,
            exact_match: exact as f64 / n,
            exact_match_lo,
            exact_match_hi,
            p_correct: p_correct / n,
            exact_match_restricted: exact_restricted as f64 / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{argmax, wilson_interval};

    #[test]
    fn argmax_takes_the_best_candidate_and_the_first_on_a_tie() {
        let p = [0.1f32, 0.5, 0.2, 0.2];
        assert_eq!(argmax(&p, 0..4), 1);
        // Restricted to tokens 0, 2, 3: the best of them, the first of a tie.
        assert_eq!(argmax(&p, [0, 2, 3].into_iter()), 2);
        assert_eq!(argmax(&p, [0].into_iter()), 0);
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // Reference values from the closed form and, independently, from
        // bisection on (k/n − p)² = z²·p(1 − p)/n (Python, double precision).
        let cases = [
            (0, 10, 0.0, 0.277_532_799_862_889_3),
            (5, 10, 0.236_593_090_512_564, 0.763_406_909_487_436_1),
            (10, 10, 0.722_467_200_137_110_7, 1.0),
            (37, 100, 0.281_823_605_343_245_24, 0.467_794_704_190_570_9),
            (0, 1, 0.0, 0.793_450_685_622_762_6),
        ];
        for (k, n, lo, hi) in cases {
            let (l, h) = wilson_interval(k, n);
            assert!((l - lo).abs() < 1e-12 && (h - hi).abs() < 1e-12, "{k}/{n}: got ({l}, {h}), want ({lo}, {hi})");
        }
    }

    #[test]
    fn wilson_interval_is_total_and_ordered() {
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
        for n in 1..60 {
            for k in 0..=n {
                let (lo, hi) = wilson_interval(k, n);
                let p = k as f64 / n as f64;
                assert!(0.0 <= lo && lo <= p && p <= hi && hi <= 1.0, "{k}/{n}: ({lo}, {hi})");
            }
        }
    }
}
