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
            return Err(ctx.error(key, format!("[{}, {}]", self.min, self.max), format!("must be [min, max] with {least} ≤ min ≤ max ≤ 64")));
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

/// A sequence given by a start and a step function, cut into prompt and answer terms.
struct Sequence {
    /// Token of each value 0..values.
    tokens: Vec<u32>,
    /// Ends the prompt.
    marker: u32,
    starts: u64,
    prompt: Lengths,
    answer: usize,
    /// value → next value, given the previous one too (for Fibonacci).
    step: fn(&SequenceRule, u64, u64) -> u64,
    rule: SequenceRule,
}

#[derive(Clone, Copy)]
struct SequenceRule {
    mul: u64,
    add: u64,
    modulus: u64,
}

impl Family for Sequence {
    fn space(&self) -> u64 {
        self.starts * self.prompt.count()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (start, len) = start_and_len(p, self.prompt);
        // A start encodes the first two values (prev, cur) as prev·modulus + cur.
        let (mut prev, mut cur) = (start / self.rule.modulus, start % self.rule.modulus);
        let mut prompt = 0;
        for i in 0..len + self.answer {
            out.push(self.tokens[cur as usize]);
            if i + 1 == len {
                out.push(self.marker);
                prompt = out.len();
            }
            let next = (self.step)(&self.rule, prev, cur);
            prev = cur;
            cur = next;
        }
        prompt
    }

    fn max_len(&self) -> usize {
        self.prompt.max + 1 + self.answer
    }
}

/// Counting in base k: numbers separated by a separator token.
struct Count {
    digits: Vec<u32>,
    separator: u32,
    /// Ends the prompt.
    marker: u32,
    base: u64,
    starts: u64,
    prompt: Lengths,
    answer: usize,
}

impl Count {
    fn push_number(&self, mut n: u64, out: &mut Vec<u32>) {
        let start = out.len();
        loop {
            out.push(self.digits[(n % self.base) as usize]);
            n /= self.base;
            if n == 0 {
                break;
            }
        }
        out[start..].reverse();
    }

    fn width(&self, n: u64) -> usize {
        let mut w = 1;
        let mut x = n / self.base;
        while x > 0 {
            w += 1;
            x /= self.base;
        }
        w
    }
}

impl Family for Count {
    fn space(&self) -> u64 {
        self.starts * self.prompt.count()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (start, len) = start_and_len(p, self.prompt);
        let mut prompt = 0;
        for i in 0..len + self.answer {
            self.push_number(start + i as u64, out);
            if i + 1 == len {
                out.push(self.marker);
                prompt = out.len();
            } else if i + 1 < len + self.answer {
                out.push(self.separator);
            }
        }
        prompt
    }

    fn max_len(&self) -> usize {
        let last = self.starts - 1 + (self.prompt.max + self.answer) as u64;
        (self.width(last) + 1) * (self.prompt.max + self.answer)
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

    fn max_len(&self) -> usize {
        self.prompt.max + 1 + self.answer
    }
}

#[derive(Clone, Copy)]
enum StringOp {
    Copy,
    Reverse,
    Sort,
    /// Substitute each letter through `cipher`.
    Cipher,
}

/// String problems: every string of length in [min, max] over an alphabet,
/// followed by an operator word; the answer is the transformed string.
struct Strings {
    letters: Vec<u32>,
    /// Output token for each letter (the letters themselves except for the cipher).
    outputs: Vec<u32>,
    operator: u32,
    lengths: Lengths,
    op: StringOp,
}

impl Strings {
    /// (length, index among strings of that length) of problem p.
    fn locate(&self, mut p: u64) -> (usize, u64) {
        let k = self.letters.len() as u64;
        for len in self.lengths.min..=self.lengths.max {
            let n = k.pow(len as u32);
            if p < n {
                return (len, p);
            }
            p -= n;
        }
        unreachable!("problem beyond the space")
    }
}

impl Family for Strings {
    fn space(&self) -> u64 {
        let k = self.letters.len() as u64;
        (self.lengths.min..=self.lengths.max).map(|l| k.pow(l as u32)).sum()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (len, mut idx) = self.locate(p);
        let k = self.letters.len() as u64;
        let start = out.len();
        for _ in 0..len {
            out.push((idx % k) as u32); // letter indices for now
            idx /= k;
        }
        let prompt = out.len() + 1;
        out.push(self.operator);
        for i in 0..len {
            let letter = out[start + i];
            out.push(letter);
        }
        let answer = &mut out[prompt..];
        match self.op {
            StringOp::Copy | StringOp::Cipher => {}
            StringOp::Reverse => answer.reverse(),
            StringOp::Sort => answer.sort_unstable(),
        }
        for x in &mut out[start..prompt - 1] {
            *x = self.letters[*x as usize];
        }
        for x in &mut out[prompt..] {
            *x = self.outputs[*x as usize];
        }
        prompt
    }

    fn max_len(&self) -> usize {
        2 * self.lengths.max + 1
    }
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
        fn walk(prefix: &mut Vec<u8>, stack: &mut Vec<u8>, types: u8, lens: Lengths, moves: &mut Vec<u8>, starts: &mut Vec<u32>) {
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

    /// Every prefix of one completed sequence is the same underlying
    /// problem: their full token strings are equal and differ only in where
    /// the answer starts, so they are held out (or not) together.
    fn split_key(&self, p: u64) -> u64 {
        let mut out = Vec::with_capacity(2 * self.max_prompt);
        self.render(p, &mut out);
        let bytes: Vec<u8> = out.iter().flat_map(|t| t.to_le_bytes()).collect();
        crate::rng::fnv1a(&bytes)
    }

    fn max_len(&self) -> usize {
        2 * self.max_prompt
    }
}

fn affine_step(r: &SequenceRule, _prev: u64, cur: u64) -> u64 {
    (r.mul * cur + r.add) % r.modulus
}

fn fibonacci_step(r: &SequenceRule, prev: u64, cur: u64) -> u64 {
    (prev + cur) % r.modulus
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AffineParams {
    mul: u64,
    add: u64,
    modulus: u64,
    prompt_terms: Lengths,
    answer_terms: usize,
}

impl Default for AffineParams {
    fn default() -> Self {
        AffineParams { mul: 2, add: 1, modulus: 37, prompt_terms: Lengths { min: 2, max: 5 }, answer_terms: 3 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FibonacciParams {
    modulus: u64,
    prompt_terms: Lengths,
    answer_terms: usize,
}

impl Default for FibonacciParams {
    fn default() -> Self {
        FibonacciParams { modulus: 13, prompt_terms: Lengths { min: 2, max: 5 }, answer_terms: 3 }
    }
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
struct CountParams {
    base: u64,
    /// Starts are 0..starts.
    starts: u64,
    prompt_terms: Lengths,
    answer_terms: usize,
}

impl Default for CountParams {
    fn default() -> Self {
        CountParams { base: 3, starts: 200, prompt_terms: Lengths { min: 2, max: 4 }, answer_terms: 1 }
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

pub(super) fn build(family: &str, params: &toml::Table, vocab: &mut Vocab, ctx: &ParamContext) -> Result<Box<dyn Family>> {
    Ok(match family {
        "affine" | "fibonacci" => {
            let (rule, prompt, answer, prefix, step): (SequenceRule, Lengths, usize, &str, fn(&SequenceRule, u64, u64) -> u64) = if family == "affine" {
                let p: AffineParams = ctx.parse(params)?;
                at_least(ctx, "modulus", p.modulus, 2)?;
                (SequenceRule { mul: p.mul, add: p.add, modulus: p.modulus }, p.prompt_terms, p.answer_terms, "x", affine_step)
            } else {
                let p: FibonacciParams = ctx.parse(params)?;
                at_least(ctx, "modulus", p.modulus, 2)?;
                (SequenceRule { mul: 1, add: 0, modulus: p.modulus }, p.prompt_terms, p.answer_terms, "f", fibonacci_step)
            };
            if rule.modulus > 1000 {
                return Err(ctx.error("modulus", rule.modulus, "must be at most 1000 (one token per value)"));
            }
            prompt.check(ctx, "prompt_terms", if family == "fibonacci" { 2 } else { 1 })?;
            at_least(ctx, "answer_terms", answer as u64, 1)?;
            let tokens = (0..rule.modulus).map(|v| vocab.intern(&format!("{prefix}{v}"))).collect();
            let marker = vocab.intern(&format!("{prefix}>"));
            // Affine sequences start anywhere; Fibonacci from any pair of values.
            let starts = if family == "affine" { rule.modulus } else { rule.modulus * rule.modulus };
            Box::new(Sequence { tokens, marker, starts, prompt, answer, step, rule })
        }
        "phrase" | "pattern" => {
            let default_cycle: Vec<String> = if family == "phrase" {
                ["brink", "bronk", "poot", "toot"].iter().map(|s| s.to_string()).collect()
            } else {
                ["◆", "◆", "◇", "●", "◆", "○"].iter().map(|s| s.to_string()).collect()
            };
            let mut table = params.clone();
            table.entry("cycle").or_insert_with(|| toml::Value::Array(default_cycle.into_iter().map(toml::Value::String).collect()));
            table.entry("prompt_len").or_insert_with(|| toml::Value::Array(vec![2.into(), 8.into()]));
            table.entry("answer_len").or_insert_with(|| 4.into());
            let p: CycleParams = ctx.parse(&table)?;
            if p.cycle.len() < 2 {
                return Err(ctx.error("cycle", p.cycle.len(), "needs at least 2 tokens"));
            }
            p.prompt_len.check(ctx, "prompt_len", 1)?;
            at_least(ctx, "answer_len", p.answer_len as u64, 1)?;
            let marker = vocab.intern(if family == "phrase" { "…" } else { "▷" });
            Box::new(Cycle { cycle: vocab.intern_all(&p.cycle), marker, prompt: p.prompt_len, answer: p.answer_len })
        }
        "count" => {
            let p: CountParams = ctx.parse(params)?;
            if !(2..=16).contains(&p.base) {
                return Err(ctx.error("base", p.base, "must be between 2 and 16"));
            }
            at_least(ctx, "starts", p.starts, 1)?;
            p.prompt_terms.check(ctx, "prompt_terms", 1)?;
            at_least(ctx, "answer_terms", p.answer_terms as u64, 1)?;
            let digits = (0..p.base).map(|d| vocab.intern(&format!("c{d}"))).collect();
            Box::new(Count { digits, separator: vocab.intern("c/"), marker: vocab.intern("c>"), base: p.base, starts: p.starts, prompt: p.prompt_terms, answer: p.answer_terms })
        }
        "copy" | "reverse" | "sort" | "cipher" => {
            let (default_letters, operator, op) = match family {
                "copy" => (letters('a'..='h'), "copy", StringOp::Copy),
                "reverse" => (letters('i'..='p'), "reverse", StringOp::Reverse),
                "sort" => (letters('q'..='x'), "sort", StringOp::Sort),
                _ => (letters('A'..='H'), "encode", StringOp::Cipher),
            };
            let mut table = params.clone();
            table.entry("letters").or_insert_with(|| toml::Value::Array(default_letters.into_iter().map(toml::Value::String).collect()));
            table.entry("length").or_insert_with(|| toml::Value::Array(vec![3.into(), 6.into()]));
            table.entry("key").or_insert_with(|| 7.into());
            let p: StringParams = ctx.parse(&table)?;
            if p.letters.len() < 2 {
                return Err(ctx.error("letters", p.letters.len(), "needs at least 2 letters"));
            }
            p.length.check(ctx, "length", 1)?;
            let space: f64 = (p.length.min..=p.length.max).map(|l| (p.letters.len() as f64).powi(l as i32)).sum();
            if space > 1e15 {
                return Err(ctx.error("length", format!("[{}, {}]", p.length.min, p.length.max), "too many strings (more than 10^15)"));
            }
            let letter_ids = vocab.intern_all(&p.letters);
            let outputs = match op {
                StringOp::Cipher => {
                    // A seeded permutation of Greek letters, one per plain letter.
                    let greek: Vec<String> = ('α'..='ω').filter(|&c| c != 'ς').map(|c| c.to_string()).collect();
                    if p.letters.len() > greek.len() {
                        return Err(ctx.error("letters", p.letters.len(), format!("the cipher has {} symbols", greek.len())));
                    }
                    let mut order: Vec<usize> = (0..greek.len()).collect();
                    super::shuffle(&mut order, &mut crate::rng::stream(p.key, "cipher", 0));
                    order[..p.letters.len()].iter().map(|&g| vocab.intern(&greek[g])).collect()
                }
                _ => letter_ids.clone(),
            };
            Box::new(Strings { letters: letter_ids, outputs, operator: vocab.intern(operator), lengths: p.length, op })
        }
        "brackets" => {
            let p: BracketParams = ctx.parse(params)?;
            if !(1..=4).contains(&p.types) {
                return Err(ctx.error("types", p.types, "must be between 1 and 4"));
            }
            p.prompt_len.check(ctx, "prompt_len", 1)?;
            if p.prompt_len.max > 12 {
                return Err(ctx.error("prompt_len", format!("[{}, {}]", p.prompt_len.min, p.prompt_len.max), "max must be at most 12 (every prefix is enumerated)"));
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
