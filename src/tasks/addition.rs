//! n-digit addition: prompt `a+b=`, answer the digits of a+b (most
//! significant first, or reversed).

use std::collections::HashSet;

use rand_chacha::ChaCha8Rng;

use super::Task;
use crate::rng;

pub struct Addition {
    id: String,
    vocab: Vec<String>,
    digits: u32,
    reverse_answer: bool,
    /// Operand pairs held out for evaluation, in their seeded order.
    held_out_order: Vec<(u64, u64)>,
    held_out: HashSet<(u64, u64)>,
}

const DIGIT0: u32 = 3;
const PLUS: u32 = 13;
const EQUALS: u32 = 14;

impl Addition {
    /// The held-out pairs are a seeded sample of a tenth of all operand
    /// pairs (at most 4096); `eval_set(n)` takes the first `n` of them.
    pub fn new(digits: u32, reverse_answer: bool, seed: u64) -> Self {
        let mut vocab: Vec<String> = ["<pad>", "<bos>", "<eos>"].iter().map(|s| s.to_string()).collect();
        vocab.extend((0..10).map(|d| d.to_string()));
        vocab.push("+".into());
        vocab.push("=".into());
        let range = 10u64.pow(digits);
        let held = ((range * range) / 10).clamp(1, 4096) as usize;
        let mut rng = rng::stream(seed, "addition/held-out", digits as u64);
        let mut held_out = HashSet::with_capacity(held);
        let mut held_out_order = Vec::with_capacity(held);
        while held_out_order.len() < held {
            let pair = (rng::below(&mut rng, range), rng::below(&mut rng, range));
            if held_out.insert(pair) {
                held_out_order.push(pair);
            }
        }
        let id = format!("add{digits}{}", if reverse_answer { "r" } else { "" });
        Addition { id, vocab, digits, reverse_answer, held_out_order, held_out }
    }

    fn render(&self, a: u64, b: u64, out: &mut Vec<u32>) -> usize {
        out.clear();
        push_digits(a, out, false);
        out.push(PLUS);
        push_digits(b, out, false);
        out.push(EQUALS);
        let prompt = out.len();
        push_digits(a + b, out, self.reverse_answer);
        prompt
    }
}

/// Pushes the decimal digits of `x` (no leading zeros), optionally reversed.
fn push_digits(x: u64, out: &mut Vec<u32>, reversed: bool) {
    let start = out.len();
    let mut v = x;
    loop {
        out.push(DIGIT0 + (v % 10) as u32);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if !reversed {
        out[start..].reverse();
    }
}

impl Task for Addition {
    fn id(&self) -> &str {
        &self.id
    }

    fn vocab(&self) -> &[String] {
        &self.vocab
    }

    fn max_len(&self) -> usize {
        let d = self.digits as usize;
        d + 1 + d + 1 + d + 1
    }

    fn chance(&self) -> f64 {
        // a+b takes 2·10^d − 1 distinct values
        1.0 / (2.0 * 10f64.powi(self.digits as i32) - 1.0)
    }

    fn eval_capacity(&self) -> usize {
        self.held_out_order.len()
    }

    fn render_train(&self, rng: &mut ChaCha8Rng, out: &mut Vec<u32>) -> usize {
        let range = 10u64.pow(self.digits);
        loop {
            let pair = (rng::below(rng, range), rng::below(rng, range));
            if !self.held_out.contains(&pair) {
                return self.render(pair.0, pair.1, out);
            }
        }
    }

    fn eval_set(&self, n: usize) -> Vec<(Vec<u32>, usize)> {
        self.held_out_order[..n.min(self.held_out_order.len())]
            .iter()
            .map(|&(a, b)| {
                let mut out = Vec::new();
                let prompt = self.render(a, b, &mut out);
                (out, prompt)
            })
            .collect()
    }
}
