//! Evaluation on a task's fixed held-out set: loss on answer tokens, token
//! accuracy, exact match and the probability of the whole correct answer.
//!
//! Exact match is measured by teacher forcing: an answer counts when every
//! answer token (and the EOS) is the model's top choice given the correct
//! prefix. That is exactly greedy decoding's verdict: if every token is the
//! argmax, greedy decoding writes the answer; if one is not, greedy decoding
//! first departs from the answer at that token. One forward pass suffices.

use crate::backend::Backend;
use crate::data::Batch;
use crate::float::Float;
use crate::model::Gpt;
use crate::tasks::Task;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy per answer token.
    pub loss: f64,
    pub token_acc: f64,
    pub exact_match: f64,
    /// Mean over examples of P(whole answer | prompt).
    pub p_correct: f64,
}

impl EvalResult {
    pub fn metrics(&self) -> [(&'static str, f64); 4] {
        [("loss", self.loss), ("token_acc", self.token_acc), ("exact_match", self.exact_match), ("p_correct", self.p_correct)]
    }
}

/// A task's held-out set, rendered once, and the buffers to evaluate it.
pub struct Evaluator<F> {
    examples: Vec<(Vec<u32>, usize)>,
    batch: Batch<F>,
    probs: Vec<F>,
}

impl<F: Float> Evaluator<F> {
    /// Renders up to `examples` of `task`'s held-out problems.
    pub fn new(task: &Task, examples: usize, rows: usize, ctx: usize, vocab: usize) -> Self {
        let examples = task
            .eval_problems(examples)
            .into_iter()
            .map(|p| {
                let mut out = Vec::new();
                let prompt = task.render(p, &mut out);
                (out, prompt)
            })
            .collect();
        Evaluator { examples, batch: Batch::new(rows, ctx), probs: vec![F::zero(); rows * ctx * vocab] }
    }

    /// How many held-out examples this evaluator scores.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Evaluates the model on the whole held-out set (no dropout; the
    /// training streams are untouched).
    pub fn run<B: Backend<F = F>>(&mut self, backend: &B, model: &mut Gpt<B>) -> EvalResult {
        let (rows, t, v) = (self.batch.rows, self.batch.ctx, model.shape.vocab);
        let (mut loss, mut tokens, mut correct_tokens, mut exact, mut p_correct) = (0.0, 0usize, 0usize, 0usize, 0.0);
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
                let mut all_right = true;
                let mut row_loss = 0.0;
                for j in 0..t {
                    let pos = row * t + j;
                    if self.batch.mask[pos] == F::zero() {
                        continue;
                    }
                    let p = &self.probs[pos * v..(pos + 1) * v];
                    let argmax = p.iter().enumerate().fold(0, |best, (i, &x)| if x > p[best] { i } else { best });
                    let right = argmax == self.batch.targets[pos] as usize;
                    correct_tokens += right as usize;
                    all_right &= right;
                    tokens += 1;
                    row_loss += losses[pos].f64();
                }
                loss += row_loss;
                exact += all_right as usize;
                p_correct += (-row_loss).exp();
            }
        }
        let n = self.examples.len() as f64;
        EvalResult { loss: loss / tokens as f64, token_acc: correct_tokens as f64 / tokens as f64, exact_match: exact as f64 / n, p_correct: p_correct / n }
    }
}
