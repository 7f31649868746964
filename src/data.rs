//! Batches: fixed-shape rows of tokens, next-token targets and a loss mask.

use crate::float::Float;
use crate::rng;
use crate::tasks::{BOS, EOS, PAD, Task};

/// One batch of `rows` rows of `ctx` positions, reused from step to step.
pub struct Batch<F> {
    pub rows: usize,
    pub ctx: usize,
    pub tokens: Vec<u32>,  // (rows, ctx)
    pub targets: Vec<u32>, // (rows, ctx)
    pub mask: Vec<F>,      // (rows, ctx): 1 where the target is an answer token or its EOS
    example: Vec<u32>,
}

impl<F: Float> Batch<F> {
    pub fn new(rows: usize, ctx: usize) -> Self {
        Batch {
            rows,
            ctx,
            tokens: vec![PAD; rows * ctx],
            targets: vec![PAD; rows * ctx],
            mask: vec![F::zero(); rows * ctx],
            example: Vec::with_capacity(ctx + 2),
        }
    }

    /// Writes `BOS example EOS` into `row` as inputs and shifted targets;
    /// `prompt` is how many of `example`'s tokens are prompt.
    pub fn set_row(&mut self, row: usize, example: &[u32], prompt: usize) {
        let t = self.ctx;
        let len = example.len() + 1; // inputs: BOS + example; targets: example + EOS
        assert!(len <= t, "example of {} tokens does not fit n_ctx {t}", example.len());
        let (tok, tgt, mask) = (&mut self.tokens[row * t..(row + 1) * t], &mut self.targets[row * t..(row + 1) * t], &mut self.mask[row * t..(row + 1) * t]);
        tok[0] = BOS;
        tok[1..len].copy_from_slice(example);
        tok[len..].fill(PAD);
        tgt[..len - 1].copy_from_slice(example);
        tgt[len - 1] = EOS;
        tgt[len..].fill(PAD);
        for (j, m) in mask.iter_mut().enumerate() {
            *m = if j >= prompt && j < len { F::one() } else { F::zero() };
        }
    }

    /// Clears `row`: padding, no loss.
    pub fn clear_row(&mut self, row: usize) {
        let t = self.ctx;
        self.tokens[row * t..(row + 1) * t].fill(PAD);
        self.targets[row * t..(row + 1) * t].fill(PAD);
        self.mask[row * t..(row + 1) * t].fill(F::zero());
    }

    /// The training batch of `step`: every row drawn from the stream
    /// (seed, "train-batch", step), so a step's data never depends on what
    /// ran before it.
    pub fn fill_train(&mut self, task: &dyn Task, seed: u64, step: u64) {
        let mut r = rng::stream(seed, "train-batch", step);
        let mut example = std::mem::take(&mut self.example);
        for row in 0..self.rows {
            let prompt = task.render_train(&mut r, &mut example);
            self.set_row(row, &example, prompt);
        }
        self.example = example;
    }
}
