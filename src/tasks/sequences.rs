//! Suite A: ten unrelated "languages". Each uses its own tokens, so no two
//! share a surface form. The prompt is a prefix; the answer continues it.
//! Every prompt ends in the family's own marker token (`x>`, `…`, `copy`, …)
//! so that the answer's end, and with it the EOS, is determined.

use serde::Deserialize;

use super::spec::ParamContext;
use super::{Family, Vocab};
use crate::error::Result;

/// An inclusive range of lengths, written `[min, max]`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(from = "[usize; 2]")]
struct Lengths {
    min: usize,
    max: usize,
}

impl From<[usize; 2]> for Lengths {
    fn from([min, max]: [usize; 2]) -> Self {
        Lengths { min, max }
    }
}

impl Lengths {
    fn count(self) -> u64 {
        (self.max - self.min + 1) as u64
    }

    fn check(self, ctx: &ParamContext, key: &str, least: usize) -> Result<()> {
        if self.min < least || self.max < self.min || self.max > 64 {
            return Err(ctx.error(
                key,
                format!("[{}, {}]", self.min, self.max),
                format!("must be [min, max] with {least} ≤ min ≤ max ≤ 64"),
            ));
        }
        Ok(())
    }
}

/// Problems that are (start, prompt length): p = start · lengths + (len − min).
fn start_and_len(p: u64, lens: Lengths) -> (u64, usize) {
    (p / lens.count(), lens.min + (p % lens.count()) as usize)
}

fn at_least(ctx: &ParamContext, key: &str, value: u64, least: u64) -> Result<()> {
    if value < least {
        return Err(ctx.error(key, value, format!("must be at least {least}")));
    }
    Ok(())
}

/// The rule that takes a sequence from one term to the next.
#[derive(Clone, Copy)]
enum Rule {
    /// x → mul·x + add (mod modulus).
    Affine { mul: u64, add: u64, modulus: u64 },
    /// x → x + 1.
    Count,
    /// (prev, x) → prev + x (mod modulus).
    Fibonacci { modulus: u64 },
}

impl Rule {
    fn next(self, prev: u64, cur: u64) -> u64 {
        match self {
            Rule::Affine { mul, add, modulus } => (mul * cur + add) % modulus,
            Rule::Count => cur + 1,
            Rule::Fibonacci { modulus } => (prev + cur) % modulus,
        }
    }

    /// How many of the last terms determine the continuation.
    fn memory(self) -> usize {
        if matches!(self, Rule::Fibonacci { .. }) { 2 } else { 1 }
    }
}

/// A number sequence written in the family's own digit tokens: a start,
/// then terms by `rule`, cut into prompt and answer terms. Problems are
/// (start, prompt length): p = start · lengths + (len − min).
struct Numbers {
    /// Token of each digit 0..base.
    digits: Vec<u32>,
    base: u64,
    /// Every term written with this many digits (leading zeros), or as few as it needs.
    width: Option<usize>,
    /// Between terms, when terms are not fixed-width.
    separator: Option<u32>,
    /// Ends the prompt.
    marker: u32,
    starts: u64,
    prompt: Lengths,
    answer: usize,
    rule: Rule,
}

impl Numbers {
    /// The terms of problem `p` (prompt then answer, without allocating)
    /// and the prompt's term count.
    fn terms(&self, p: u64) -> (impl Iterator<Item = u64>, usize) {
        let (start, len) = start_and_len(p, self.prompt);
        // A Fibonacci start is the hidden term before the first and the first: prev·modulus + first.
        let (mut prev, mut cur) = match self.rule {
            Rule::Fibonacci { modulus } => (start / modulus, start % modulus),
            _ => (0, start),
        };
        let rule = self.rule;
        let terms = (0..len + self.answer).map(move |_| {
            let term = cur;
            (prev, cur) = (cur, rule.next(prev, cur));
            term
        });
        (terms, len)
    }

    fn push_number(&self, n: u64, out: &mut Vec<u32>) {
        let start = out.len();
        let mut x = n;
        loop {
            out.push(self.digits[(x % self.base) as usize]);
            x /= self.base;
            if x == 0 && self.width.is_none_or(|w| out.len() - start >= w) {
                break;
            }
        }
        out[start..].reverse();
    }

    fn digits_of(&self, n: u64) -> usize {
        self.width.unwrap_or_else(|| {
            let (mut w, mut x) = (1, n / self.base);
            while x > 0 {
                w += 1;
                x /= self.base;
            }
            w
        })
    }
}

impl Family for Numbers {
    fn space(&self) -> u64 {
        self.starts * self.prompt.count()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (terms, len) = self.terms(p);
        let count = len + self.answer;
        let mut prompt = 0;
        for (i, t) in terms.enumerate() {
            self.push_number(t, out);
            if i + 1 == len {
                out.push(self.marker);
                prompt = out.len();
            } else if let Some(sep) = self.separator.filter(|_| i + 1 < count) {
                out.push(sep);
            }
        }
        prompt
    }

    /// The continuation depends only on the prompt's last term (the last
    /// two for Fibonacci): problems that end alike are one problem.
    fn split_key(&self, p: u64) -> u64 {
        let (terms, len) = self.terms(p);
        terms.take(len).skip(len - self.rule.memory()).fold(0, |key, t| (key << 32) | t)
    }

    fn max_len(&self) -> usize {
        let largest = match self.rule {
            Rule::Affine { modulus, .. } | Rule::Fibonacci { modulus } => modulus - 1,
            Rule::Count => self.starts - 1 + (self.prompt.max + self.answer) as u64,
        };
        (self.digits_of(largest) + self.separator.is_some() as usize) * (self.prompt.max + self.answer) + 1
    }
}

/// A phrase of `period` words, different in every problem, repeated: the
/// prompt shows at least one whole period, the answer continues it. Problems
/// are (phrase, offset, prompt length).
struct Phrase {
    words: Vec<u32>,
    period: usize,
    /// Ends the prompt.
    marker: u32,
    prompt: Lengths,
    answer: usize,
}

impl Phrase {
    /// Problem `p`'s phrase code (its words as base-`words` digits), its
    /// rotation and its prompt length.
    fn phrase(&self, p: u64) -> (u64, usize, usize) {
        let (rest, len) = start_and_len(p, self.prompt);
        (rest / self.period as u64, (rest % self.period as u64) as usize, len)
    }

    /// Word `i` (an index into `words`) of the phrase `code` rotated by `offset`.
    fn word(&self, code: u64, offset: usize, i: usize) -> usize {
        let k = self.words.len() as u64;
        (code / k.pow(((offset + i) % self.period) as u32) % k) as usize
    }
}

impl Family for Phrase {
    fn space(&self) -> u64 {
        (self.words.len() as u64).pow(self.period as u32) * self.period as u64 * self.prompt.count()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (code, offset, len) = self.phrase(p);
        let mut prompt = 0;
        for i in 0..len + self.answer {
            out.push(self.words[self.word(code, offset, i)]);
            if i + 1 == len {
                out.push(self.marker);
                prompt = out.len();
            }
        }
        prompt
    }

    /// The continuation is the phrase read from where the prompt stops.
    fn split_key(&self, p: u64) -> u64 {
        let (code, offset, len) = self.phrase(p);
        (0..self.period).fold(0, |key, i| key * self.words.len() as u64 + self.word(code, offset, len + i) as u64)
    }

    fn max_len(&self) -> usize {
        self.prompt.max + 1 + self.answer
    }
}

/// A cycle of tokens (a phrase or a symbol pattern) from an offset.
struct Cycle {
    cycle: Vec<u32>,
    /// Ends the prompt.
    marker: u32,
    prompt: Lengths,
    answer: usize,
}

impl Family for Cycle {
    fn space(&self) -> u64 {
        self.cycle.len() as u64 * self.prompt.count()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (offset, len) = start_and_len(p, self.prompt);
        let n = self.cycle.len();
        let mut prompt = 0;
        for i in 0..len + self.answer {
            out.push(self.cycle[(offset as usize + i) % n]);
            if i + 1 == len {
                out.push(self.marker);
                prompt = out.len();
            }
        }
        prompt
    }

    /// The continuation depends only on where in the cycle the prompt stops.
    fn split_key(&self, p: u64) -> u64 {
        let (offset, len) = start_and_len(p, self.prompt);
        (offset + len as u64) % self.cycle.len() as u64
    }

    fn max_len(&self) -> usize {
        self.prompt.max + 1 + self.answer
    }
}

#[derive(Clone, Copy, PartialEq)]
enum StringOp {
    Copy,
    Reverse,
    /// The letters in alphabet order.
    Sort,
    /// Substitute each letter through a fixed permutation.
    Cipher,
    /// Every other letter, from the first.
    Evens,
    /// Every letter twice.
    Stutter,
    /// Adjacent letters swapped in pairs (an odd last letter stays).
    Swap,
}

/// String problems: every string of length in [min, max] over an alphabet,
/// written in the family's own template (tokens before, between and after
/// the letters); the answer is the transformed string.
struct Strings {
    letters: Vec<u32>,
    /// Output token for each letter (the letters themselves except for the cipher).
    outputs: Vec<u32>,
    before: Vec<u32>,
    between: Option<u32>,
    /// Ends the prompt.
    after: Vec<u32>,
    lengths: Lengths,
    op: StringOp,
}

/// A string's letters (indices into `letters`) on the stack, so that
/// rendering allocates nothing: at most 64 letters, 128 once stuttered.
struct Letters {
    letters: [usize; 128],
    len: usize,
}

impl std::ops::Deref for Letters {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.letters[..self.len]
    }
}

impl std::ops::DerefMut for Letters {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.letters[..self.len]
    }
}

impl Strings {
    /// The letters of problem p.
    fn string(&self, mut p: u64) -> Letters {
        let k = self.letters.len() as u64;
        for len in self.lengths.min..=self.lengths.max {
            let n = k.pow(len as u32);
            if p < n {
                let mut s = Letters { letters: [0; 128], len };
                for letter in s.iter_mut() {
                    *letter = (p % k) as usize;
                    p /= k;
                }
                return s;
            }
            p -= n;
        }
        unreachable!("problem beyond the space")
    }

    fn transform(&self, mut s: Letters) -> Letters {
        match self.op {
            StringOp::Copy | StringOp::Cipher => {}
            StringOp::Reverse => s.reverse(),
            StringOp::Sort => s.sort_unstable(),
            StringOp::Evens => {
                let kept = s.len.div_ceil(2);
                for i in 0..kept {
                    s.letters[i] = s.letters[2 * i];
                }
                s.len = kept;
            }
            StringOp::Stutter => {
                for i in (0..s.len).rev() {
                    (s.letters[2 * i], s.letters[2 * i + 1]) = (s.letters[i], s.letters[i]);
                }
                s.len *= 2;
            }
            StringOp::Swap => {
                for pair in s.chunks_exact_mut(2) {
                    pair.swap(0, 1);
                }
            }
        }
        s
    }
}

impl Family for Strings {
    fn space(&self) -> u64 {
        let k = self.letters.len() as u64;
        (self.lengths.min..=self.lengths.max).map(|l| k.pow(l as u32)).sum()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let s = self.string(p);
        out.extend_from_slice(&self.before);
        for (i, &l) in s.iter().enumerate() {
            if let Some(sep) = self.between.filter(|_| i > 0) {
                out.push(sep);
            }
            out.push(self.letters[l]);
        }
        out.extend_from_slice(&self.after);
        let prompt = out.len();
        out.extend(self.transform(s).iter().map(|&l| self.outputs[l]));
        prompt
    }

    /// The answer determines everything it depends on (the string; for
    /// sort the multiset of letters; for evens the kept letters).
    fn split_key(&self, p: u64) -> u64 {
        answer_key(self, p)
    }

    fn max_len(&self) -> usize {
        let answer = match self.op {
            StringOp::Stutter => 2 * self.lengths.max,
            _ => self.lengths.max,
        };
        self.before.len()
            + self.after.len()
            + if self.between.is_some() { 2 * self.lengths.max - 1 } else { self.lengths.max }
            + answer
    }
}

/// A key naming problem `p`'s answer tokens: for families whose answer
/// determines everything it depends on, problems with equal answers are one
/// problem.
fn answer_key(family: &dyn Family, p: u64) -> u64 {
    thread_local! {
        /// Reused so that a split-key lookup in the training step allocates nothing.
        static TOKENS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    TOKENS.with_borrow_mut(|out| {
        out.clear();
        let prompt = family.render(p, out);
        out[prompt..].iter().fold(crate::rng::FNV1A_START, |h, t| crate::rng::fnv1a_extend(h, &t.to_le_bytes()))
    })
}

/// Bracket completion: every prefix of a bracket sequence (lengths in
/// range, at least one bracket left open); the answer closes them all.
struct Brackets {
    opens: Vec<u32>,
    closes: Vec<u32>,
    /// Every valid prefix, each as bracket moves (type, or CLOSE), end to end.
    moves: Vec<u8>,
    /// Start of each prefix in `moves` (one extra at the end).
    starts: Vec<u32>,
    max_prompt: usize,
}

const CLOSE: u8 = u8::MAX;

impl Brackets {
    fn enumerate(types: u8, lens: Lengths) -> (Vec<u8>, Vec<u32>) {
        fn walk(
            prefix: &mut Vec<u8>,
            stack: &mut Vec<u8>,
            types: u8,
            lens: Lengths,
            moves: &mut Vec<u8>,
            starts: &mut Vec<u32>,
        ) {
            if prefix.len() >= lens.min && !stack.is_empty() {
                moves.extend_from_slice(prefix);
                starts.push(moves.len() as u32);
            }
            if prefix.len() == lens.max {
                return;
            }
            for t in 0..types {
                prefix.push(t);
                stack.push(t);
                walk(prefix, stack, types, lens, moves, starts);
                stack.pop();
                prefix.pop();
            }
            if let Some(t) = stack.pop() {
                prefix.push(CLOSE);
                walk(prefix, stack, types, lens, moves, starts);
                prefix.pop();
                stack.push(t);
            }
        }
        let (mut moves, mut starts) = (Vec::new(), vec![0]);
        walk(&mut Vec::new(), &mut Vec::new(), types, lens, &mut moves, &mut starts);
        (moves, starts)
    }
}

impl Family for Brackets {
    fn space(&self) -> u64 {
        (self.starts.len() - 1) as u64
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let moves = &self.moves[self.starts[p as usize] as usize..self.starts[p as usize + 1] as usize];
        let stack_start = out.len();
        // The prompt: opens push their type, a close pops it.
        let mut depth_types: [u8; 64] = [0; 64];
        let mut depth = 0;
        for &m in moves {
            if m == CLOSE {
                depth -= 1;
                out.push(self.closes[depth_types[depth] as usize]);
            } else {
                depth_types[depth] = m;
                depth += 1;
                out.push(self.opens[m as usize]);
            }
        }
        let prompt = out.len();
        debug_assert!(prompt > stack_start);
        for d in (0..depth).rev() {
            out.push(self.closes[depth_types[d] as usize]);
        }
        prompt
    }

    /// The answer depends only on the brackets left open, which it names:
    /// prefixes with the same open stack are one problem.
    fn split_key(&self, p: u64) -> u64 {
        answer_key(self, p)
    }

    fn max_len(&self) -> usize {
        2 * self.max_prompt
    }
}

/// The number families' parameters (`mul` and `add` for affine only,
/// `starts` for count only).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumberParams {
    mul: Option<u64>,
    add: Option<u64>,
    modulus: Option<u64>,
    base: Option<u64>,
    starts: Option<u64>,
    prompt_terms: Option<Lengths>,
    #[serde(default = "default_answer_terms")]
    answer_terms: usize,
}

fn default_answer_terms() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CycleParams {
    /// The repeating tokens.
    cycle: Vec<String>,
    prompt_len: Lengths,
    answer_len: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PhraseParams {
    /// The words phrases are made of.
    words: Vec<String>,
    /// Words per phrase.
    period: usize,
    prompt_len: Lengths,
    answer_len: usize,
}

impl Default for PhraseParams {
    fn default() -> Self {
        let words = ["brink", "bronk", "poot", "toot", "wug", "dax", "blick", "fep"];
        PhraseParams {
            words: words.iter().map(|w| w.to_string()).collect(),
            period: 4,
            prompt_len: Lengths { min: 4, max: 7 },
            answer_len: 4,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StringParams {
    letters: Vec<String>,
    length: Lengths,
    /// Cipher only: the seed of the letter substitution.
    key: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BracketParams {
    /// How many bracket types: 1 to 4 of (), [], {}, <>.
    types: u8,
    prompt_len: Lengths,
}

impl Default for BracketParams {
    fn default() -> Self {
        BracketParams { types: 3, prompt_len: Lengths { min: 2, max: 8 } }
    }
}

fn letters(range: std::ops::RangeInclusive<char>) -> Vec<String> {
    range.map(|c| c.to_string()).collect()
}

pub(super) fn build(
    family: &str,
    params: &toml::Table,
    vocab: &mut Vocab,
    ctx: &ParamContext,
) -> Result<Box<dyn Family>> {
    Ok(match family {
        "affine" | "fibonacci" | "count" => {
            let p: NumberParams = ctx.parse(params)?;
            for (key, value) in [("mul", p.mul), ("add", p.add)] {
                if let Some(v) = value.filter(|_| family != "affine") {
                    return Err(ctx.error(key, v, "only affine sequences take mul and add"));
                }
            }
            // (default base, default modulus or none, default prompt terms, token prefix)
            let (base, modulus, prompt, prefix) = match family {
                "affine" => (
                    p.base.unwrap_or(10),
                    Some(p.modulus.unwrap_or(1000)),
                    p.prompt_terms.unwrap_or(Lengths { min: 1, max: 3 }),
                    "x",
                ),
                "fibonacci" => (
                    p.base.unwrap_or(10),
                    Some(p.modulus.unwrap_or(100)),
                    p.prompt_terms.unwrap_or(Lengths { min: 2, max: 4 }),
                    "f",
                ),
                _ => (p.base.unwrap_or(3), None, p.prompt_terms.unwrap_or(Lengths { min: 2, max: 4 }), "c"),
            };
            if !(2..=16).contains(&base) {
                return Err(ctx.error("base", base, "must be between 2 and 16"));
            }
            if family == "count" && p.modulus.is_some() {
                return Err(ctx.error("modulus", p.modulus.unwrap_or(0), "counting takes no modulus"));
            }
            if family != "count" && p.starts.is_some() {
                return Err(ctx.error(
                    "starts",
                    p.starts.unwrap_or(0),
                    "only count takes starts (the others start anywhere below the modulus)",
                ));
            }
            prompt.check(ctx, "prompt_terms", if family == "fibonacci" { 2 } else { 1 })?;
            at_least(ctx, "answer_terms", p.answer_terms as u64, 1)?;
            let digits = (0..base).map(|d| vocab.intern(&format!("{prefix}{d}"))).collect();
            let (rule, starts, width, separator) = match (family, modulus) {
                ("count", _) => {
                    let starts = p.starts.unwrap_or(1000);
                    if !(1..=1_000_000).contains(&starts) {
                        return Err(ctx.error("starts", starts, "must be between 1 and 10^6"));
                    }
                    (Rule::Count, starts, None, Some(vocab.intern("c/")))
                }
                (_, Some(m)) => {
                    if !(2..=1_000_000).contains(&m) {
                        return Err(ctx.error("modulus", m, "must be between 2 and 10^6"));
                    }
                    // Fixed-width terms: as many digits as modulus − 1 needs.
                    let width =
                        std::iter::successors(Some(m - 1), |x| Some(x / base)).take_while(|&x| x > 0).count().max(1);
                    if family == "affine" {
                        (
                            Rule::Affine { mul: p.mul.unwrap_or(2) % m, add: p.add.unwrap_or(1) % m, modulus: m },
                            m,
                            Some(width),
                            None,
                        )
                    } else {
                        (Rule::Fibonacci { modulus: m }, m * m, Some(width), Some(vocab.intern("f,")))
                    }
                }
                _ => unreachable!("affine and fibonacci have a modulus"),
            };
            let marker = vocab.intern(&format!("{prefix}{}", if family == "affine" { "=" } else { ">" }));
            Box::new(Numbers { digits, base, width, separator, marker, starts, prompt, answer: p.answer_terms, rule })
        }
        "phrase" => {
            let p: PhraseParams = ctx.parse(params)?;
            if p.words.len() < 2 {
                return Err(ctx.error("words", p.words.len(), "needs at least 2 words"));
            }
            if p.period < 2 || (p.words.len() as f64).powi(p.period as i32) > 1e12 {
                return Err(ctx.error("period", p.period, "must be at least 2, with at most 10^12 phrases"));
            }
            p.prompt_len.check(ctx, "prompt_len", p.period)?;
            at_least(ctx, "answer_len", p.answer_len as u64, 1)?;
            Box::new(Phrase {
                words: vocab.intern_all(&p.words),
                period: p.period,
                marker: vocab.intern("…"),
                prompt: p.prompt_len,
                answer: p.answer_len,
            })
        }
        "pattern" => {
            let mut table = params.clone();
            table.entry("cycle").or_insert_with(|| {
                toml::Value::Array(
                    ["◆", "◆", "◇", "●", "◆", "○"].iter().map(|s| toml::Value::String(s.to_string())).collect(),
                )
            });
            table.entry("prompt_len").or_insert_with(|| toml::Value::Array(vec![2.into(), 8.into()]));
            table.entry("answer_len").or_insert_with(|| 4.into());
            let p: CycleParams = ctx.parse(&table)?;
            if p.cycle.len() < 2 {
                return Err(ctx.error("cycle", p.cycle.len(), "needs at least 2 tokens"));
            }
            p.prompt_len.check(ctx, "prompt_len", 1)?;
            at_least(ctx, "answer_len", p.answer_len as u64, 1)?;
            Box::new(Cycle {
                cycle: vocab.intern_all(&p.cycle),
                marker: vocab.intern("▷"),
                prompt: p.prompt_len,
                answer: p.answer_len,
            })
        }
        "copy" | "reverse" | "sort" | "cipher" | "evens" | "stutter" | "swap" => {
            // Each family its own letters and template: (letters, op, tokens before, between and after the string).
            let (default_letters, op, before, between, after): (Vec<String>, StringOp, &[&str], Option<&str>, &[&str]) =
                match family {
                    "copy" => (letters('a'..='h'), StringOp::Copy, &[], None, &["copy"]),
                    "reverse" => (letters('i'..='p'), StringOp::Reverse, &["⟪"], None, &["⟫"]),
                    "sort" => (letters('q'..='x'), StringOp::Sort, &["sort"], None, &[";"]),
                    "cipher" => (letters('A'..='H'), StringOp::Cipher, &[], None, &["encode"]),
                    "evens" => (letters('I'..='P'), StringOp::Evens, &[], Some("·"), &["⇢"]),
                    "swap" => (letters('а'..='з'), StringOp::Swap, &["⌈"], None, &["⌋", "⇄"]),
                    _ => (
                        ["♠", "♣", "♥", "♦", "♤", "♧", "♡", "♢"].iter().map(|s| s.to_string()).collect(),
                        StringOp::Stutter,
                        &["twice"],
                        Some("~"),
                        &["!"],
                    ),
                };
            let mut table = params.clone();
            table
                .entry("letters")
                .or_insert_with(|| toml::Value::Array(default_letters.into_iter().map(toml::Value::String).collect()));
            table.entry("length").or_insert_with(|| toml::Value::Array(vec![3.into(), 6.into()]));
            table.entry("key").or_insert_with(|| 7.into());
            let p: StringParams = ctx.parse(&table)?;
            if p.letters.len() < 2 {
                return Err(ctx.error("letters", p.letters.len(), "needs at least 2 letters"));
            }
            p.length.check(ctx, "length", if op == StringOp::Evens { 2 } else { 1 })?;
            let space: f64 = (p.length.min..=p.length.max).map(|l| (p.letters.len() as f64).powi(l as i32)).sum();
            if space > 1e15 {
                return Err(ctx.error(
                    "length",
                    format!("[{}, {}]", p.length.min, p.length.max),
                    "too many strings (more than 10^15)",
                ));
            }
            let letter_ids = vocab.intern_all(&p.letters);
            let outputs = match op {
                StringOp::Cipher => {
                    // A seeded permutation of Greek letters, one per plain letter.
                    let greek: Vec<String> = ('α'..='ω').filter(|&c| c != 'ς').map(|c| c.to_string()).collect();
                    if p.letters.len() > greek.len() {
                        return Err(ctx.error(
                            "letters",
                            p.letters.len(),
                            format!("the cipher has {} symbols", greek.len()),
                        ));
                    }
                    let mut order: Vec<usize> = (0..greek.len()).collect();
                    super::shuffle(&mut order, &mut crate::rng::stream(p.key, "cipher", 0));
                    order[..p.letters.len()].iter().map(|&g| vocab.intern(&greek[g])).collect()
                }
                _ => letter_ids.clone(),
            };
            Box::new(Strings {
                letters: letter_ids,
                outputs,
                before: vocab.intern_all(before),
                between: between.map(|t| vocab.intern(t)),
                after: vocab.intern_all(after),
                lengths: p.length,
                op,
            })
        }
        "brackets" => {
            let p: BracketParams = ctx.parse(params)?;
            if !(1..=4).contains(&p.types) {
                return Err(ctx.error("types", p.types, "must be between 1 and 4"));
            }
            p.prompt_len.check(ctx, "prompt_len", 1)?;
            if p.prompt_len.max > 12 {
                return Err(ctx.error(
                    "prompt_len",
                    format!("[{}, {}]", p.prompt_len.min, p.prompt_len.max),
                    "max must be at most 12 (every prefix is enumerated)",
                ));
            }
            let pairs = [("(", ")"), ("[", "]"), ("{", "}"), ("<", ">")];
            let opens = pairs[..p.types as usize].iter().map(|(o, _)| vocab.intern(o)).collect();
            let closes = pairs[..p.types as usize].iter().map(|(_, c)| vocab.intern(c)).collect();
            let (moves, starts) = Brackets::enumerate(p.types, p.prompt_len);
            Box::new(Brackets { opens, closes, moves, starts, max_prompt: p.prompt_len.max })
        }
        _ => unreachable!("dispatched by tasks::build_family"),
    })
}

impl Default for CycleParams {
    fn default() -> Self {
        CycleParams { cycle: Vec::new(), prompt_len: Lengths { min: 2, max: 8 }, answer_len: 4 }
    }
}

impl Default for StringParams {
    fn default() -> Self {
        StringParams { letters: Vec::new(), length: Lengths { min: 3, max: 6 }, key: 7 }
    }
}
