//! Suite B: the same small-number arithmetic in ten surface forms, and
//! suite C/D's translations between them.
//!
//! A problem is (op, a, b) with a, b in 0..operands; subtraction only where
//! a ≥ b, so every form can write the result. Every form keys a problem the
//! same way, in the split group "arithmetic", so a statement held out in one
//! form is held out in all of them and in every translation.

use serde::Deserialize;

use super::spec::ParamContext;
use super::{Family, Vocab};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Sub,
    Mul,
}

impl Op {
    pub fn apply(self, a: u64, b: u64) -> u64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }

    fn code(self) -> u64 {
        self as u64
    }
}

/// Every (op, a, b) over the configured operand range and operations.
#[derive(Clone, Debug)]
pub struct ProblemSpace {
    pub operands: u64,
    pub ops: Vec<Op>,
}

impl ProblemSpace {
    fn count(&self, op: Op) -> u64 {
        let r = self.operands;
        match op {
            Op::Sub => r * (r + 1) / 2,
            Op::Add | Op::Mul => r * r,
        }
    }

    pub fn size(&self) -> u64 {
        self.ops.iter().map(|&op| self.count(op)).sum()
    }

    /// (op, a, b) of problem p.
    pub fn problem(&self, mut p: u64) -> (Op, u64, u64) {
        for &op in &self.ops {
            let n = self.count(op);
            if p < n {
                return match op {
                    // Pairs a ≥ b in order (0,0), (1,0), (1,1), (2,0), …
                    Op::Sub => {
                        let mut a = ((((8 * p + 1) as f64).sqrt() - 1.0) / 2.0) as u64;
                        while a * (a + 1) / 2 > p {
                            a -= 1;
                        }
                        while (a + 1) * (a + 2) / 2 <= p {
                            a += 1;
                        }
                        (op, a, p - a * (a + 1) / 2)
                    }
                    _ => (op, p / self.operands, p % self.operands),
                };
            }
            p -= n;
        }
        unreachable!("problem beyond the space")
    }

    /// A key that names (op, a, b) whatever the operand range and op list;
    /// `a op b` and `b op a` of a commutative op are one problem.
    pub fn key(&self, p: u64) -> u64 {
        let (op, a, b) = self.problem(p);
        let (a, b) = if op == Op::Sub { (a, b) } else { (a.max(b), a.min(b)) };
        (op.code() << 48) | (a << 24) | b
    }

    pub fn max_result(&self) -> u64 {
        let r = self.operands - 1;
        self.ops.iter().map(|&op| if op == Op::Sub { r } else { op.apply(r, r) }).max().unwrap_or(0)
    }
}

/// The ten surface forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormName {
    /// `3 + 4 = 7`, one token per digit.
    Digits,
    /// `three plus four equals seven`.
    Words,
    /// An invented language: digit words, MSB first, infix.
    Zu,
    /// Another invented language: digit words, LSB first, postfix (`a lo b op eq c`).
    Ko,
    /// `+ 3 , 4 = 7`.
    Prefix,
    /// Digits least significant first: `21 + 3 = 42` is `1 2 + 3 = 4 2`.
    Reversed,
    /// Base 7 digits.
    Base7,
    /// Base 2 digits.
    Binary,
    /// Roman numerals, one token per letter; zero is `N`.
    Roman,
    /// Tally marks: `卌` for five, `|` for one; zero is `∅`.
    Tally,
}

pub const FORM_NAMES: [&str; 10] =
    ["digits", "words", "zu", "ko", "prefix", "reversed", "base7", "binary", "roman", "tally"];

/// The invented languages' digit words and operator words.
pub const ZU_DIGITS: [&str; 10] = ["zu", "ka", "mi", "ro", "te", "pa", "lu", "ni", "so", "ve"];
pub const ZU_OPS: [&str; 3] = ["plo", "dak", "vim"];
pub const ZU_EQUALS: &str = "esh";
pub const KO_DIGITS: [&str; 10] = ["bo", "gi", "fe", "ya", "wu", "ha", "ji", "qo", "xe", "de"];
pub const KO_OPS: [&str; 3] = ["nap", "sil", "gru"];
pub const KO_EQUALS: &str = "tor";
/// Ko's word between the two operands.
pub const KO_AND: &str = "lo";

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
const WORD_OPS: [&str; 3] = ["plus", "minus", "times"];

/// One surface form with its token ids.
pub struct Form {
    pub name: FormName,
    /// Digit tokens (or digit words) of the form's base.
    digits: Vec<u32>,
    ops: [u32; 3],
    equals: u32,
    /// Words for English numbers: ONES then TENS then "hundred".
    words: Vec<u32>,
    /// Roman letters I V X L C D M and N (zero); tally 卌 | ∅.
    marks: Vec<u32>,
    /// Between adjacent operands (prefix `,`, ko `lo`), whose digits would run together.
    separator: u32,
}

impl Form {
    pub fn new(name: FormName, vocab: &mut Vocab) -> Form {
        let digit_tokens =
            |base: usize, vocab: &mut Vocab| (0..base).map(|d| vocab.intern(&d.to_string())).collect::<Vec<_>>();
        let symbol_ops = |vocab: &mut Vocab| [vocab.intern("+"), vocab.intern("-"), vocab.intern("*")];
        let (digits, ops, equals) = match name {
            FormName::Digits | FormName::Prefix | FormName::Reversed => {
                (digit_tokens(10, vocab), symbol_ops(vocab), vocab.intern("="))
            }
            FormName::Base7 => (digit_tokens(7, vocab), symbol_ops(vocab), vocab.intern("=")),
            FormName::Binary => (digit_tokens(2, vocab), symbol_ops(vocab), vocab.intern("=")),
            FormName::Zu => {
                (vocab.intern_all(&ZU_DIGITS), vocab.intern_all(&ZU_OPS).try_into().unwrap(), vocab.intern(ZU_EQUALS))
            }
            FormName::Ko => {
                (vocab.intern_all(&KO_DIGITS), vocab.intern_all(&KO_OPS).try_into().unwrap(), vocab.intern(KO_EQUALS))
            }
            FormName::Words => (Vec::new(), vocab.intern_all(&WORD_OPS).try_into().unwrap(), vocab.intern("equals")),
            FormName::Roman | FormName::Tally => (Vec::new(), symbol_ops(vocab), vocab.intern("=")),
        };
        let words = if name == FormName::Words {
            let mut w = vocab.intern_all(&ONES);
            w.extend(TENS.iter().map(|t| if t.is_empty() { 0 } else { vocab.intern(t) }));
            w.push(vocab.intern("hundred"));
            w.push(vocab.intern("thousand"));
            w
        } else {
            Vec::new()
        };
        let marks = match name {
            FormName::Roman => vocab.intern_all(&["I", "V", "X", "L", "C", "D", "M", "N"]),
            FormName::Tally => vocab.intern_all(&["卌", "|", "∅"]),
            _ => Vec::new(),
        };
        let separator = match name {
            FormName::Ko => vocab.intern(KO_AND),
            FormName::Prefix => vocab.intern(","),
            _ => 0,
        };
        Form { name, digits, ops, equals, words, marks, separator }
    }

    fn number(&self, n: u64, out: &mut Vec<u32>) {
        match self.name {
            FormName::Digits | FormName::Prefix | FormName::Zu => push_base(n, 10, &self.digits, false, out),
            FormName::Reversed | FormName::Ko => push_base(n, 10, &self.digits, true, out),
            FormName::Base7 => push_base(n, 7, &self.digits, false, out),
            FormName::Binary => push_base(n, 2, &self.digits, false, out),
            FormName::Words => self.english(n, out),
            FormName::Roman => self.roman(n, out),
            FormName::Tally => {
                if n == 0 {
                    out.push(self.marks[2]);
                }
                out.extend(std::iter::repeat_n(self.marks[0], (n / 5) as usize));
                out.extend(std::iter::repeat_n(self.marks[1], (n % 5) as usize));
            }
        }
    }

    fn english(&self, n: u64, out: &mut Vec<u32>) {
        let (ones, tens, hundred, thousand) = (&self.words[..20], &self.words[20..30], self.words[30], self.words[31]);
        if n >= 1000 {
            self.english(n / 1000, out);
            out.push(thousand);
            if !n.is_multiple_of(1000) {
                self.english(n % 1000, out);
            }
            return;
        }
        if n >= 100 {
            out.push(ones[(n / 100) as usize]);
            out.push(hundred);
            if n.is_multiple_of(100) {
                return;
            }
        }
        let r = n % 100;
        if r < 20 {
            out.push(ones[r as usize]);
        } else {
            out.push(tens[(r / 10) as usize]);
            if !r.is_multiple_of(10) {
                out.push(ones[(r % 10) as usize]);
            }
        }
    }

    fn roman(&self, n: u64, out: &mut Vec<u32>) {
        let m = &self.marks; // I V X L C D M N
        if n == 0 {
            out.push(m[7]);
            return;
        }
        let mut n = n;
        // (value, letters as indices into `marks`)
        const TABLE: [(u64, &[usize]); 13] = [
            (1000, &[6]),
            (900, &[4, 6]),
            (500, &[5]),
            (400, &[4, 5]),
            (100, &[4]),
            (90, &[2, 4]),
            (50, &[3]),
            (40, &[2, 3]),
            (10, &[2]),
            (9, &[0, 2]),
            (5, &[1]),
            (4, &[0, 1]),
            (1, &[0]),
        ];
        for &(value, letters) in &TABLE {
            while n >= value {
                out.extend(letters.iter().map(|&i| m[i]));
                n -= value;
            }
        }
    }

    /// Writes `a op b = c` in this form; returns the prompt length (all
    /// but the result).
    pub fn statement(&self, op: Op, a: u64, b: u64, out: &mut Vec<u32>) -> usize {
        let opt = self.ops[op as usize];
        match self.name {
            FormName::Prefix => {
                out.push(opt);
                self.number(a, out);
                out.push(self.separator);
                self.number(b, out);
            }
            FormName::Ko => {
                self.number(a, out);
                out.push(self.separator);
                self.number(b, out);
                out.push(opt);
            }
            _ => {
                self.number(a, out);
                out.push(opt);
                self.number(b, out);
            }
        }
        out.push(self.equals);
        let prompt = out.len();
        self.number(op.apply(a, b), out);
        prompt
    }

    /// The most tokens any number in 0..=upto takes.
    fn max_number_len(&self, upto: u64) -> usize {
        let mut out = Vec::new();
        (0..=upto)
            .map(|n| {
                out.clear();
                self.number(n, &mut out);
                out.len()
            })
            .max()
            .unwrap_or(0)
    }

    /// An upper bound on a statement's tokens over `space`: two operands,
    /// the operator, a separator, `=` and the result, each at its longest.
    fn max_statement(&self, space: &ProblemSpace) -> usize {
        2 * self.max_number_len(space.operands - 1) + 3 + self.max_number_len(space.max_result())
    }
}

/// Digits of n in `base` (most significant first unless reversed).
fn push_base(mut n: u64, base: u64, digits: &[u32], reversed: bool, out: &mut Vec<u32>) {
    let start = out.len();
    loop {
        out.push(digits[(n % base) as usize]);
        n /= base;
        if n == 0 {
            break;
        }
    }
    if !reversed {
        out[start..].reverse();
    }
}

/// Statements of the arithmetic problems. Without `source`, the prompt is
/// the statement in `form` up to `=` and the answer its result; with a
/// source (translation), the prompt is the whole statement in the source
/// form and a target tag, and the answer the whole statement in `form`.
struct Statements {
    space: ProblemSpace,
    source: Option<(Form, u32)>,
    form: Form,
    max_len: usize,
}

impl Family for Statements {
    fn space(&self) -> u64 {
        self.space.size()
    }

    fn render(&self, p: u64, out: &mut Vec<u32>) -> usize {
        let (op, a, b) = self.space.problem(p);
        match &self.source {
            None => self.form.statement(op, a, b, out),
            Some((source, tag)) => {
                source.statement(op, a, b, out);
                out.push(*tag);
                let prompt = out.len();
                self.form.statement(op, a, b, out);
                prompt
            }
        }
    }

    fn split_key(&self, p: u64) -> u64 {
        self.space.key(p)
    }

    fn split_group(&self) -> Option<&str> {
        Some("arithmetic")
    }

    fn max_len(&self) -> usize {
        self.max_len
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArithmeticParams {
    #[serde(default = "default_form")]
    form: FormName,
    #[serde(default = "default_operands")]
    operands: u64,
    #[serde(default = "default_ops")]
    ops: Vec<Op>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TranslateParams {
    from: FormName,
    to: FormName,
    #[serde(default = "default_operands")]
    operands: u64,
    #[serde(default = "default_ops")]
    ops: Vec<Op>,
}

fn default_form() -> FormName {
    FormName::Digits
}
fn default_operands() -> u64 {
    20
}
fn default_ops() -> Vec<Op> {
    vec![Op::Add, Op::Sub]
}

fn check_form(form: FormName, space: &ProblemSpace, key: &str, ctx: &ParamContext) -> Result<()> {
    if form == FormName::Roman && space.max_result() > 3999 {
        return Err(ctx.error(
            key,
            "\"roman\"",
            format!("roman numerals stop at 3999; these operands reach {}", space.max_result()),
        ));
    }
    Ok(())
}

fn problem_space(operands: u64, ops: Vec<Op>, ctx: &ParamContext) -> Result<ProblemSpace> {
    if !(1..=1000).contains(&operands) {
        return Err(ctx.error("operands", operands, "must be between 1 and 1000"));
    }
    if ops.is_empty() {
        return Err(ctx.error("ops", "[]", "needs at least one of add, sub, mul"));
    }
    let mut unique = ops.clone();
    unique.dedup();
    if unique.len() != ops.len() || ops.iter().enumerate().any(|(i, o)| ops[..i].contains(o)) {
        return Err(ctx.error("ops", format!("{ops:?}"), "lists an operation twice"));
    }
    Ok(ProblemSpace { operands, ops })
}

pub(super) fn build(
    family: &str,
    params: &toml::Table,
    vocab: &mut Vocab,
    ctx: &ParamContext,
) -> Result<Box<dyn Family>> {
    if family == "arithmetic" {
        let p: ArithmeticParams = ctx.parse(params)?;
        let space = problem_space(p.operands, p.ops, ctx)?;
        check_form(p.form, &space, "form", ctx)?;
        let form = Form::new(p.form, vocab);
        let max_len = form.max_statement(&space);
        return Ok(Box::new(Statements { space, source: None, form, max_len }));
    }
    let p: TranslateParams = ctx.parse(params)?;
    if p.from == p.to {
        return Err(ctx.error("to", format!("{:?}", p.to).to_lowercase(), "translates a form into itself"));
    }
    let space = problem_space(p.operands, p.ops, ctx)?;
    check_form(p.from, &space, "from", ctx)?;
    check_form(p.to, &space, "to", ctx)?;
    let (from, to) = (Form::new(p.from, vocab), Form::new(p.to, vocab));
    let tag = vocab.intern(&format!("→{}", FORM_NAMES[p.to as usize]));
    let max_len = from.max_statement(&space) + 1 + to.max_statement(&space);
    Ok(Box::new(Statements { space, source: Some((from, tag)), form: to, max_len }))
}
