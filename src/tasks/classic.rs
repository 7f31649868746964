//! Families for classic toy experiments: modular arithmetic (the answer one
//! token) and n-digit addition (answer digits plain or reversed).

use serde::Deserialize;

use super::spec::ParamContext;
use super::{Family, Vocab};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a ∘ b =` → `c`, with c = a ∘ b mod p; every number is one token.
struct Modular {
    modulus: u64,
    op: ModOp,
    numbers: Vec<u32>,
    op_token: u32,
    equals: u32,
}

fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1 % m;
    b %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % m;
        }
        b = b * b % m;
        e >>= 1;
    }
    r
}

impl Modular {
    /// (a, b) of problem p; division skips b = 0.
    fn operands(&self, p: u64) -> (u64, u64) {
        match self.op {
            ModOp::Div => (p / (self.modulus - 1), 1 + p % (self.modulus - 1)),
            _ => (p / self.modulus, p % self.modulus),
        }
    }

    fn result(&self, a: u64, b: u64) -> u64 {
        let m = self.modulus;
        match self.op {
            ModOp::Add => (a + b) % m,
            ModOp::Sub => (a + m - b) % m,
            ModOp::Mul => a * b % m,
            // b⁻¹ = b^(p−2) for prime p
            ModOp::Div => a * pow_mod(b, m - 2, m) % m,
        }
    }
}

impl Family for Modular {
    fn space(&self) -> u64 {
        match self.op {
            ModOp::Div => self.modulus * (self.modulus - 1),
            _ => self.modulus * self.modulus,
        }
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (a, b) = self.operands(p);
        out.extend([self.numbers[a as usize], self.op_token, self.numbers[b as usize], self.equals]);
        let prompt = out.len();
        out.push(self.numbers[self.result(a, b) as usize]);
        prompt
    }

    /// `a ∘ b` and `b ∘ a` of a commutative operation are one problem.
    fn split_key(&self, p: u64) -> u64 {
        let (a, b) = self.operands(p);
        match self.op {
            ModOp::Add | ModOp::Mul => a.max(b) * self.modulus + a.min(b),
            ModOp::Sub | ModOp::Div => p,
        }
    }

    fn max_len(&self) -> usize {
        5
    }
}

/// `a + b =` → the digits of a + b; operands have up to `digits` digits.
struct Addition {
    digits: u32,
    reverse_answer: bool,
    digit_tokens: Vec<u32>,
    plus: u32,
    equals: u32,
}

impl Addition {
    fn push_digits(&self, mut x: u64, reversed: bool, out: &mut Vec<u32>) {
        let start = out.len();
        loop {
            out.push(self.digit_tokens[(x % 10) as usize]);
            x /= 10;
            if x == 0 {
                break;
            }
        }
        if !reversed {
            out[start..].reverse();
        }
    }
}

impl Family for Addition {
    fn space(&self) -> u64 {
        10u64.pow(2 * self.digits)
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let range = 10u64.pow(self.digits);
        let (a, b) = (p / range, p % range);
        self.push_digits(a, false, out);
        out.push(self.plus);
        self.push_digits(b, false, out);
        out.push(self.equals);
        let prompt = out.len();
        self.push_digits(a + b, self.reverse_answer, out);
        prompt
    }

    /// `a + b` and `b + a` are one problem.
    fn split_key(&self, p: u64) -> u64 {
        let range = 10u64.pow(self.digits);
        let (a, b) = (p / range, p % range);
        a.max(b) * range + a.min(b)
    }

    fn max_len(&self) -> usize {
        let d = self.digits as usize;
        d + 1 + d + 1 + d + 1
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModularParams {
    #[serde(default = "default_modulus")]
    modulus: u64,
    #[serde(default = "default_mod_op")]
    op: ModOp,
}

fn default_modulus() -> u64 {
    97
}
fn default_mod_op() -> ModOp {
    ModOp::Add
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdditionParams {
    #[serde(default = "default_digits")]
    digits: u32,
    #[serde(default)]
    reverse_answer: bool,
}

fn default_digits() -> u32 {
    2
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

pub(super) fn build(
    family: &str,
    params: &toml::Table,
    vocab: &mut Vocab,
    ctx: &ParamContext,
) -> Result<Box<dyn Family>> {
    if family == "modular" {
        let p: ModularParams = ctx.parse(params)?;
        if !(2..=1000).contains(&p.modulus) {
            return Err(ctx.error("modulus", p.modulus, "must be between 2 and 1000 (one token per residue)"));
        }
        if p.op == ModOp::Div && !is_prime(p.modulus) {
            return Err(ctx.error("modulus", p.modulus, "division needs a prime modulus"));
        }
        let numbers = (0..p.modulus).map(|n| vocab.intern(&n.to_string())).collect();
        let op_token = vocab.intern(["+", "-", "*", "/"][p.op as usize]);
        return Ok(Box::new(Modular { modulus: p.modulus, op: p.op, numbers, op_token, equals: vocab.intern("=") }));
    }
    let p: AdditionParams = ctx.parse(params)?;
    if !(1..=9).contains(&p.digits) {
        return Err(ctx.error("digits", p.digits, "must be between 1 and 9"));
    }
    let digit_tokens = (0..10).map(|d| vocab.intern(&d.to_string())).collect();
    Ok(Box::new(Addition {
        digits: p.digits,
        reverse_answer: p.reverse_answer,
        digit_tokens,
        plus: vocab.intern("+"),
        equals: vocab.intern("="),
    }))
}
