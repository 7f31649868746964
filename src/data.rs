//! Batches: fixed-shape rows of tokens, next-token targets and a loss mask,
//! drawn from a suite's mixture of tasks.

use crate::float::Float;
use crate::rng;
use crate::tasks::{BOS, EOS, PAD, Suite};

/// One batch of `rows` rows of `ctx` positions, reused from step to step.
pub struct Batch<F> {
    pub rows: usize,
    pub ctx: usize,
    pub tokens: Vec<u32>,  // (rows, ctx)
    pub targets: Vec<u32>, // (rows, ctx)
    pub mask: Vec<F>,      // (rows, ctx): 1 where the target is an answer token or its EOS
    /// The task index each row came from.
    pub row_task: Vec<usize>,
    /// Each example's answer tokens share a loss weight of 1 (so every
    /// example weighs the same whatever its answer's length), instead of 1
    /// per token.
    pub loss_per_example: bool,
    /// Slots left after BOS in every row for a soft prompt's embeddings
    /// (`model::SoftPrompt`): they hold PAD, targets PAD, no loss.
    pub soft_slots: usize,
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
            row_task: vec![0; rows],
            loss_per_example: false,
            soft_slots: 0,
            example: Vec::with_capacity(ctx + 2),
        }
    }

    pub fn with_loss_per_example(mut self, on: bool) -> Self {
        self.loss_per_example = on;
        self
    }

    /// Writes `BOS example EOS` into `row` as inputs and shifted targets
    /// (`BOS PAD… example EOS` with `soft_slots` PADs, their targets PAD);
    /// `prompt` is how many of `example`'s tokens are prompt. The mask is
    /// the loss weight of each answer token and the EOS: 1, or 1/(their
    /// count) with `loss_per_example`.
    pub fn set_row(&mut self, row: usize, example: &[u32], prompt: usize) {
        let (t, k) = (self.ctx, self.soft_slots);
        let len = example.len() + 1 + k; // inputs: BOS + slots + example; targets: slots + example + EOS
        assert!(len <= t, "example of {} tokens (and {k} soft slots) does not fit n_ctx {t}", example.len());
        let (tok, tgt, mask) = (
            &mut self.tokens[row * t..(row + 1) * t],
            &mut self.targets[row * t..(row + 1) * t],
            &mut self.mask[row * t..(row + 1) * t],
        );
        tok[0] = BOS;
        tok[1..1 + k].fill(PAD);
        tok[1 + k..len].copy_from_slice(example);
        tok[len..].fill(PAD);
        tgt[..k].fill(PAD);
        tgt[k..len - 1].copy_from_slice(example);
        tgt[len - 1] = EOS;
        tgt[len..].fill(PAD);
        let first = prompt + k; // the position whose target is the answer's first token
        let weight = if self.loss_per_example { F::of(1.0 / (len - first) as f64) } else { F::one() };
        for (j, m) in mask.iter_mut().enumerate() {
            *m = if j >= first && j < len { weight } else { F::zero() };
        }
    }

    /// Clears `row`: padding, no loss.
    pub fn clear_row(&mut self, row: usize) {
        let t = self.ctx;
        self.tokens[row * t..(row + 1) * t].fill(PAD);
        self.targets[row * t..(row + 1) * t].fill(PAD);
        self.mask[row * t..(row + 1) * t].fill(F::zero());
    }

    /// The training batch of `step`. Each row's task is drawn by mixture
    /// weight from the stream (seed, "train-batch", step); its problem comes
    /// from the same stream, or from the task's training set in shuffled
    /// epochs. A step's rows depend only on the seed, the step and the
    /// epoch positions in `stream`, never on evaluation.
    pub fn fill_train(&mut self, suite: &Suite, stream: &mut TrainStream, seed: u64, step: u64) {
        let mut r = rng::stream(seed, "train-batch", step);
        let mut example = std::mem::take(&mut self.example);
        if stream.full_batch {
            let mut row = 0;
            for (ti, task) in suite.tasks.iter().enumerate() {
                if stream.weights[ti] == 0.0 {
                    continue;
                }
                for &p in task.train_set.as_deref().unwrap_or(&[]) {
                    let prompt = task.render(p, &mut example);
                    self.set_row(row, &example, prompt);
                    self.row_task[row] = ti;
                    row += 1;
                }
            }
            // Rows past this step's examples (after a drop or a phase
            // change shrank the set) hold padding and carry no loss.
            for rest in row..self.rows {
                self.clear_row(rest);
            }
        } else {
            for row in 0..self.rows {
                let ti = stream.pick_task(rng::uniform(&mut r));
                let task = &suite.tasks[ti];
                let p = match &task.train_set {
                    Some(set) => stream.next_in_epoch(ti, set, seed),
                    None => task.sample_train(&mut r),
                };
                let prompt = task.render(p, &mut example);
                self.set_row(row, &example, prompt);
                self.row_task[row] = ti;
            }
        }
        self.example = example;
    }
}

/// Where training draws from: the mixture weights and, for tasks with a
/// finite training set, the position in the current shuffled epoch.
pub struct TrainStream {
    pub weights: Vec<f64>,
    cumulative: Vec<f64>,
    /// The last task with a positive weight (catches rounding at the top of `cumulative`).
    last_weighted: usize,
    pub full_batch: bool,
    epochs: Vec<EpochPosition>,
}

/// Position in a task's training set: which epoch, how far into it, and that
/// epoch's order (a shuffle fixed by (seed, task, epoch)).
#[derive(Clone, Default)]
struct EpochPosition {
    epoch: u64,
    next: usize,
    order: Vec<u64>,
}

impl TrainStream {
    pub fn new(suite: &Suite, full_batch: bool) -> Self {
        let mut s = TrainStream {
            weights: Vec::new(),
            cumulative: Vec::new(),
            last_weighted: 0,
            full_batch,
            epochs: vec![EpochPosition::default(); suite.tasks.len()],
        };
        s.set_weights(&suite.weights);
        s
    }

    /// New mixture weights (one per task; at least one positive).
    pub fn set_weights(&mut self, weights: &[f64]) {
        self.weights = weights.to_vec();
        self.last_weighted = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        self.cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
    }

    /// The task whose cumulative-weight interval holds u ∈ [0, 1).
    fn pick_task(&self, u: f64) -> usize {
        self.cumulative.iter().position(|&c| u < c).map_or(self.last_weighted, |i| i.min(self.last_weighted))
    }

    /// (epoch, position) in each task's training set, for checkpoints.
    pub fn positions(&self) -> Vec<(u64, u64)> {
        self.epochs.iter().map(|p| (p.epoch, p.next as u64)).collect()
    }

    /// Restores positions saved by `positions` (the orders are recomputed).
    pub fn restore_positions(&mut self, suite: &Suite, seed: u64, positions: &[(u64, u64)]) {
        for (task, (pos, &(epoch, next))) in self.epochs.iter_mut().zip(positions).enumerate() {
            pos.order.clear();
            pos.epoch = epoch;
            pos.next = next as usize;
            if let Some(set) = &suite.tasks[task].train_set
                && (next > 0 || epoch > 0)
            {
                Self::fill_order(pos, set, seed, task);
            }
        }
    }

    fn fill_order(pos: &mut EpochPosition, set: &[u64], seed: u64, task: usize) {
        pos.order.clear();
        pos.order.extend_from_slice(set);
        crate::tasks::shuffle(&mut pos.order, &mut rng::stream(seed, "epoch", rng::mix64(task as u64) ^ pos.epoch));
    }

    fn next_in_epoch(&mut self, task: usize, set: &[u64], seed: u64) -> u64 {
        let pos = &mut self.epochs[task];
        if pos.order.is_empty() || pos.next == pos.order.len() {
            if !pos.order.is_empty() {
                pos.epoch += 1;
            }
            Self::fill_order(pos, set, seed, task);
            pos.next = 0;
        }
        pos.next += 1;
        pos.order[pos.next - 1]
    }
}
