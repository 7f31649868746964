//! Tasks: families of problems rendered as prompt and answer tokens, grouped
//! into suites that share one vocabulary.
//!
//! - A *family* (one file each: `sequences.rs`, `arithmetic.rs`,
//!   `classic.rs`) numbers its problems 0..space and renders problem `p` as
//!   prompt tokens then answer tokens.
//! - A *task* is a family with an id, an optional tag token, a held-out
//!   evaluation split and optionally a finite training set.
//! - A *suite* is a list of tasks over one shared vocabulary.
//!
//! An example is `BOS [tag] prompt answer EOS`; the loss mask covers the
//! answer and its EOS.
//!
//! The train/eval split is decided per *underlying problem*: a problem is
//! held out when a hash of (run seed, split group, problem key) falls under
//! the task's eval fraction. Surface forms of the same arithmetic share a
//! split group and problem keys, so a statement held out in one form is held
//! out in all of them. Training never draws a held-out problem; evaluation
//! draws only held-out problems: disjoint by construction.

pub mod arithmetic;
mod classic;
mod sequences;
pub mod spec;

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::rng;

pub use spec::{SuiteSpec, TaskSpec};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

/// Token strings and their ids, shared by every task of a suite.
#[derive(Clone, Debug)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

impl Default for Vocab {
    fn default() -> Self {
        Self::new()
    }
}

impl Vocab {
    pub fn new() -> Self {
        let mut v = Vocab { tokens: Vec::new(), index: HashMap::new() };
        for special in ["<pad>", "<bos>", "<eos>"] {
            v.intern(special);
        }
        v
    }

    /// The id of `token`, adding it if new.
    pub fn intern(&mut self, token: &str) -> u32 {
        if let Some(&id) = self.index.get(token) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.tokens.push(token.to_string());
        self.index.insert(token.to_string(), id);
        id
    }

    /// Ids of several tokens.
    pub fn intern_all<S: AsRef<str>>(&mut self, tokens: &[S]) -> Vec<u32> {
        tokens.iter().map(|t| self.intern(t.as_ref())).collect()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token(&self, id: u32) -> &str {
        &self.tokens[id as usize]
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    /// Tokens joined by spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.token(i)).collect::<Vec<_>>().join(" ")
    }
}

/// A family of problems numbered 0..space.
pub trait Family: Send + Sync {
    /// How many distinct problems there are.
    fn space(&self) -> u64;
    /// Writes problem `p`'s prompt then answer tokens after what `out`
    /// holds; returns the prompt length.
    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize;
    /// The underlying problem, for the train/eval split: equal keys mean the
    /// same problem in another surface form.
    fn split_key(&self, p: u64) -> u64 {
        p
    }
    /// The group whose problems share keys (e.g. every arithmetic form).
    fn split_group(&self) -> Option<&str> {
        None
    }
    /// The most tokens prompt + answer can have.
    fn max_len(&self) -> usize;
}

/// A family as configured in a suite: id, tag, split and training set.
pub struct Task {
    pub id: String,
    pub family_name: String,
    family: Box<dyn Family>,
    tag: Option<u32>,
    split_seed: u64,
    eval_fraction: f64,
    /// A finite training set (problem numbers), when configured.
    pub train_set: Option<Vec<u64>>,
    /// Exact-match accuracy of guessing the most common answer.
    pub chance: f64,
    /// The tokens that occur in its answers, EOS included, sorted: what
    /// `exact_match_restricted` lets the model choose from.
    pub answer_tokens: Vec<u32>,
}

/// Problems at most this many are enumerated exactly (chance level, held-out
/// counts); larger spaces are sampled.
pub const ENUMERATE_LIMIT: u64 = 1 << 18;

impl Task {
    pub fn space(&self) -> u64 {
        self.family.space()
    }

    pub fn max_len(&self) -> usize {
        self.family.max_len() + self.tag.is_some() as usize
    }

    pub fn is_held_out(&self, p: u64) -> bool {
        let h = rng::mix64(self.split_seed ^ rng::mix64(self.family.split_key(p)));
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.eval_fraction
    }

    /// Clears `out`, writes `[tag] prompt answer` and returns the prompt length.
    pub fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        out.clear();
        if let Some(tag) = self.tag {
            out.push(tag);
        }
        self.family.render(p, out)
    }

    /// A problem drawn uniformly from `rng` among those not held out.
    pub fn sample_train(&self, rng: &mut ChaCha8Rng) -> u64 {
        loop {
            let p = rng::below(rng, self.space());
            if !self.is_held_out(p) {
                return p;
            }
        }
    }

    /// The held-out evaluation problems: up to `n` held-out problems with
    /// distinct split keys (problems that share answer-determining content
    /// count once), in a seeded order; all of them when fewer exist.
    pub fn eval_problems(&self, n: usize) -> Vec<u64> {
        let space = self.space();
        let mut keys = std::collections::HashSet::new();
        let mut distinct = |p: u64| self.is_held_out(p) && keys.insert(self.family.split_key(p));
        let mut r = rng::stream(self.split_seed, "eval-order", 0);
        if space <= ENUMERATE_LIMIT {
            let mut order: Vec<u64> = (0..space).collect();
            shuffle(&mut order, &mut r);
            return order.into_iter().filter(|&p| distinct(p)).take(n).collect();
        }
        let mut out = Vec::with_capacity(n.min(1 << 16));
        let mut tries = 0u64;
        while out.len() < n && tries < 1000 * n as u64 {
            tries += 1;
            let p = rng::below(&mut r, space);
            if distinct(p) {
                out.push(p);
            }
        }
        out
    }
}

/// Fisher–Yates with the given stream.
pub fn shuffle<T>(items: &mut [T], r: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = rng::below(r, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Exact-match chance, the share of problems whose answer is the most
/// common one, and the tokens that occur in answers (EOS included, sorted).
/// Over every problem, or a fixed sample of 65,536 where there are more
/// than `ENUMERATE_LIMIT`.
fn answer_stats(family: &dyn Family) -> (f64, Vec<u32>) {
    let space = family.space();
    let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
    let mut out = Vec::new();
    let mut count = |p: u64| {
        out.clear();
        let prompt = family.render(p, &mut out);
        *counts.entry(out[prompt..].to_vec()).or_default() += 1;
    };
    let total = if space <= ENUMERATE_LIMIT {
        (0..space).for_each(&mut count);
        space
    } else {
        let mut r = rng::stream(0, "chance-sample", space);
        let samples = 1 << 16;
        (0..samples).for_each(|_| count(rng::below(&mut r, space)));
        samples
    };
    let chance = counts.values().copied().max().unwrap_or(0) as f64 / total as f64;
    let mut tokens: Vec<u32> = counts.keys().flatten().copied().chain([EOS]).collect();
    tokens.sort_unstable();
    tokens.dedup();
    (chance, tokens)
}

/// A suite built for one run: its tasks and their shared vocabulary.
pub struct Suite {
    pub name: String,
    pub vocab: Vocab,
    pub tasks: Vec<Task>,
    /// Mixture weight of each task (0: evaluated, never trained).
    pub weights: Vec<f64>,
    /// Each task's held-out evaluation problems: empty until
    /// `choose_eval_sets` (a run's config chooses them once, when loaded).
    pub eval_sets: Vec<Vec<u64>>,
}

impl Suite {
    /// Builds every task of `spec` for run seed `seed`. `file` is named in errors.
    pub fn build(spec: &SuiteSpec, seed: u64, file: &std::path::Path) -> Result<Suite> {
        if spec.tasks.is_empty() {
            return Err(Error::key(file, "data.tasks", "[]", "the suite has no tasks"));
        }
        let mut vocab = Vocab::new();
        let mut tasks = Vec::with_capacity(spec.tasks.len());
        for t in &spec.tasks {
            if tasks.iter().any(|x: &Task| x.id == t.id) {
                return Err(Error::key(
                    file,
                    &format!("tasks.{}.id", t.id),
                    format!("{:?}", t.id),
                    "duplicate task id",
                ));
            }
            let family = build_family(t, &mut vocab, file)?;
            let tag = spec.tags.then(|| vocab.intern(&format!("<{}>", t.id)));
            let group = t
                .split_group
                .clone()
                .or_else(|| family.split_group().map(str::to_string))
                .unwrap_or_else(|| t.id.clone());
            let split_seed = rng::stream_key(seed, "split", rng::purpose_id(&group));
            let (chance, answer_tokens) = answer_stats(family.as_ref());
            let mut task = Task {
                id: t.id.clone(),
                family_name: t.family.clone(),
                family,
                tag,
                split_seed,
                eval_fraction: t.eval_fraction,
                train_set: None,
                chance,
                answer_tokens,
            };
            task.train_set = spec::train_set(&task, t, seed, file)?;
            tasks.push(task);
        }
        Ok(Suite {
            name: spec.name.clone(),
            vocab,
            tasks,
            weights: spec.tasks.iter().map(|t| t.weight).collect(),
            eval_sets: Vec::new(),
        })
    }

    /// Chooses up to `n` held-out problems of every task (`Task::eval_problems`).
    pub fn choose_eval_sets(&mut self, n: usize) {
        self.eval_sets = self.tasks.iter().map(|t| t.eval_problems(n)).collect();
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    pub fn max_len(&self) -> usize {
        self.tasks.iter().map(Task::max_len).max().unwrap_or(0)
    }
}

/// One line per family for `ebb tasks list`.
pub const FAMILIES: &[(&str, &str)] = &[
    (
        "affine",
        "suite A: x → mul·x + add (mod modulus), fixed-width numbers in their own digits; continue the sequence",
    ),
    (
        "phrase",
        "suite A: a phrase of `period` words (\"brink bronk poot toot\"), new in every problem, repeated; continue it",
    ),
    ("count", "suite A: counting in base k from a random start; write the next numbers"),
    ("pattern", "a fixed periodic symbol pattern; continue it"),
    ("fibonacci", "Fibonacci mod m in fixed-width numbers from two terms; continue it"),
    ("copy", "suite A: copy a string (`a b c copy`)"),
    ("reverse", "suite A: reverse a string (`⟪ i j k ⟫`)"),
    ("sort", "suite A: sort a string's letters (`sort q s r ;`)"),
    ("brackets", "suite A: close every open bracket of a prefix"),
    ("cipher", "encode a word with a fixed substitution cipher (`A B encode`)"),
    ("evens", "suite A: every other letter of a string, from the first (`I · J · K ⇢`)"),
    ("stutter", "suite A: every symbol of a string twice (`twice ♠ ~ ♣ !`)"),
    ("swap", "suite A: a string's letters swapped in adjacent pairs (`⌈ а б в г ⌋ ⇄`)"),
    (
        "arithmetic",
        "suite B: \"a op b = c\" in one surface form (digits, words, zu, ko, prefix, reversed, base7, binary, roman, tally)",
    ),
    ("translate", "suite C/D: a statement in one surface form → the same statement in another"),
    ("modular", "a ∘ b mod p (add, sub, mul, div), the answer one token"),
    ("addition", "n-digit addition, the answer's digits plain or reversed"),
];

fn build_family(t: &TaskSpec, vocab: &mut Vocab, file: &std::path::Path) -> Result<Box<dyn Family>> {
    let ctx = spec::ParamContext { file, task: &t.id };
    match t.family.as_str() {
        "affine" | "phrase" | "count" | "pattern" | "fibonacci" | "copy" | "reverse" | "sort" | "brackets"
        | "cipher" | "evens" | "stutter" | "swap" => sequences::build(&t.family, &t.params, vocab, &ctx),
        "arithmetic" | "translate" => arithmetic::build(&t.family, &t.params, vocab, &ctx),
        "modular" | "addition" => classic::build(&t.family, &t.params, vocab, &ctx),
        other => Err(Error::key(
            file,
            &format!("tasks.{}.family", t.id),
            format!("{other:?}"),
            format!("unknown task family (known: {})", FAMILIES.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")),
        )),
    }
}
