//! Tasks: generators that render examples as prompt and answer tokens.
//!
//! An example is `BOS prompt answer EOS`; the loss mask covers the answer and
//! its EOS. Each task has a held-out evaluation set that training never
//! draws from.

mod addition;

use std::path::Path;

use rand_chacha::ChaCha8Rng;

pub use addition::Addition;

use crate::config::DataConfig;
use crate::error::{Error, Result};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

pub trait Task: Send + Sync {
    /// Stable id, used in metrics rows.
    fn id(&self) -> &str;
    /// Token strings indexed by id (PAD, BOS and EOS first).
    fn vocab(&self) -> &[String];
    /// The most tokens `prompt + answer` can have.
    fn max_len(&self) -> usize;
    /// Exact-match accuracy of a guesser that knows the answer distribution
    /// but not the problem (for normalized retention).
    fn chance(&self) -> f64;
    /// How many distinct problems can be held out for evaluation.
    fn eval_capacity(&self) -> usize;
    /// Clears `out`, writes a training example's prompt then answer tokens,
    /// and returns the prompt length. Never returns a held-out problem.
    fn render_train(&self, rng: &mut ChaCha8Rng, out: &mut Vec<u32>) -> usize;
    /// The held-out set: `n` examples as (tokens, prompt length), fixed by the seed.
    fn eval_set(&self, n: usize) -> Vec<(Vec<u32>, usize)>;
}

/// The task a `[data]` section describes. `file` is named in errors.
pub fn build(data: &DataConfig, seed: u64, file: &Path) -> Result<Box<dyn Task>> {
    match data.task.as_str() {
        "addition" => {
            if !(1..=6).contains(&data.digits) {
                return Err(Error::key(file, "data.digits", data.digits, "must be between 1 and 6"));
            }
            Ok(Box::new(Addition::new(data.digits, data.reverse_answer, seed)))
        }
        other => Err(Error::key(file, "data.task", format!("{other:?}"), "unknown task family (known: addition)")),
    }
}
