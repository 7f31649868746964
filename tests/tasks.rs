//! Task suites: determinism, train/eval disjointness, independent parsers
//! for every surface form of suite B, zero-shot pairs never trained.

mod common;

use std::collections::{BTreeSet, HashSet};

use ebb::data::{Batch, TrainStream};
use ebb::tasks::arithmetic::{KO_AND, KO_DIGITS, KO_EQUALS, KO_OPS, ZU_DIGITS, ZU_EQUALS, ZU_OPS};
use ebb::tasks::{Suite, spec};

fn suite(name: &str, seed: u64) -> Suite {
    let path = common::root().join("tasks").join(format!("{name}.toml"));
    let (spec, path) = ebb::experiment::load_suite_spec(path.to_str().unwrap()).unwrap();
    Suite::build(&spec, seed, &path).unwrap()
}

/// A suite of the classic families, written inline.
fn classic(seed: u64) -> Suite {
    let text = r#"
        name = "classic"
        [[tasks]]
        id = "mod-add"
        family = "modular"
        modulus = 23
        [[tasks]]
        id = "mod-div"
        family = "modular"
        modulus = 23
        op = "div"
        train_fraction = 0.5
        [[tasks]]
        id = "add3r"
        family = "addition"
        digits = 3
        reverse_answer = true
    "#;
    let file: spec::SuiteFile = toml::from_str(text).unwrap();
    let spec = file.expand("classic", std::path::Path::new("inline")).unwrap();
    Suite::build(&spec, seed, std::path::Path::new("inline")).unwrap()
}

fn all_suites(seed: u64) -> Vec<Suite> {
    let mut v: Vec<Suite> =
        ["a-unrelated", "b-shared", "c-translate", "d-zero-shot"].iter().map(|n| suite(n, seed)).collect();
    v.push(classic(seed));
    v
}

/// `steps` training batches of `rows` rows: (task index, example tokens,
/// prompt length) per row.
fn training_rows(s: &Suite, seed: u64, steps: u64, rows: usize) -> Vec<(usize, Vec<u32>, usize)> {
    let ctx = s.max_len() + 1;
    let mut batch = Batch::<f32>::new(rows, ctx);
    let mut stream = TrainStream::new(s, false);
    let mut out = Vec::new();
    for step in 0..steps {
        batch.fill_train(s, &mut stream, seed, step);
        for row in 0..rows {
            // The example is the row's targets up to (not including) EOS;
            // the loss mask starts at the answer.
            let tgt = &batch.targets[row * ctx..(row + 1) * ctx];
            let len = tgt.iter().position(|&t| t == ebb::tasks::EOS).unwrap();
            let prompt = batch.mask[row * ctx..(row + 1) * ctx].iter().position(|&m| m > 0.0).unwrap();
            out.push((batch.row_task[row], tgt[..len].to_vec(), prompt));
        }
    }
    out
}

fn render(s: &Suite, task: usize, p: u64) -> Vec<u32> {
    let mut out = Vec::new();
    s.tasks[task].render(p, &mut out);
    out
}

#[test]
fn every_family_is_deterministic_for_a_seed() {
    for (a, b) in all_suites(11).iter().zip(all_suites(11).iter()) {
        assert_eq!(a.vocab.len(), b.vocab.len());
        for (ta, tb) in a.tasks.iter().zip(&b.tasks) {
            assert_eq!(ta.eval_problems(50), tb.eval_problems(50), "{}: eval set", ta.id);
            assert_eq!(ta.train_set, tb.train_set, "{}: train set", ta.id);
        }
        assert_eq!(training_rows(a, 11, 5, 32), training_rows(b, 11, 5, 32), "{}: training batches", a.name);
    }
    // Another seed draws other batches and holds out other problems.
    for (a, b) in all_suites(11).iter().zip(all_suites(12).iter()) {
        assert_ne!(training_rows(a, 11, 3, 32), training_rows(b, 12, 3, 32), "{}", a.name);
        let differing =
            a.tasks.iter().zip(&b.tasks).filter(|(x, y)| x.eval_problems(20) != y.eval_problems(20)).count();
        assert!(differing * 2 > a.tasks.len(), "{}: only {differing} eval sets depend on the seed", a.name);
    }
}

#[test]
fn training_never_draws_a_held_out_example() {
    for s in all_suites(3) {
        // (example, prompt length): a bracket prefix and a longer prefix of
        // the same sequence are different problems with equal tokens.
        let eval: Vec<HashSet<(Vec<u32>, usize)>> = s
            .tasks
            .iter()
            .map(|t| {
                t.eval_problems(10_000)
                    .into_iter()
                    .map(|p| {
                        let mut out = Vec::new();
                        let prompt = t.render(p, &mut out);
                        (out, prompt)
                    })
                    .collect()
            })
            .collect();
        for (i, t) in s.tasks.iter().enumerate() {
            // By construction: eval problems are held out, training ones are not.
            assert!(!eval[i].is_empty(), "{}: empty eval set", t.id);
            assert!(t.eval_problems(10_000).iter().all(|&p| t.is_held_out(p)));
            if let Some(set) = &t.train_set {
                assert!(set.iter().all(|&p| !t.is_held_out(p)), "{}: train set holds a held-out problem", t.id);
            }
        }
        // By test: no rendered training example equals an eval example of its task.
        let rows = training_rows(&s, 3, 200, 64);
        for (task, example, prompt) in rows {
            assert!(
                !eval[task].contains(&(example.clone(), prompt)),
                "{}: training drew held-out {}",
                s.tasks[task].id,
                s.vocab.decode(&example)
            );
        }
    }
}

// ---- Independent parsers for suite B's forms: tokens → (a, op, b, c) ----

type Statement = (u64, char, u64, u64);

fn digits_in(tokens: &[&str], base: u64, reversed: bool) -> u64 {
    let mut ds: Vec<u64> = tokens.iter().map(|t| t.parse::<u64>().unwrap()).collect();
    assert!(ds.iter().all(|&d| d < base), "digit out of base {base}: {tokens:?}");
    if reversed {
        ds.reverse();
    }
    ds.iter().fold(0, |n, d| n * base + d)
}

fn english(tokens: &[&str]) -> u64 {
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
    const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    let (mut total, mut current) = (0, 0);
    for t in tokens {
        if let Some(v) = ONES.iter().position(|w| w == t) {
            current += v as u64;
        } else if let Some(v) = TENS.iter().position(|w| w == t) {
            current += 20 + 10 * v as u64;
        } else if *t == "hundred" {
            current *= 100;
        } else if *t == "thousand" {
            total += current * 1000;
            current = 0;
        } else {
            panic!("not an English number word: {t}");
        }
    }
    total + current
}

fn roman(tokens: &[&str]) -> u64 {
    if tokens == ["N"] {
        return 0;
    }
    let value = |t: &str| match t {
        "I" => 1,
        "V" => 5,
        "X" => 10,
        "L" => 50,
        "C" => 100,
        "D" => 500,
        "M" => 1000,
        _ => panic!("not a roman numeral letter: {t}"),
    };
    let vals: Vec<u64> = tokens.iter().map(|t| value(t)).collect();
    let mut n = 0i64;
    for i in 0..vals.len() {
        if i + 1 < vals.len() && vals[i] < vals[i + 1] { n -= vals[i] as i64 } else { n += vals[i] as i64 }
    }
    n as u64
}

fn tally(tokens: &[&str]) -> u64 {
    if tokens == ["∅"] {
        return 0;
    }
    tokens
        .iter()
        .map(|t| match *t {
            "卌" => 5,
            "|" => 1,
            _ => panic!("not a tally mark: {t}"),
        })
        .sum()
}

fn words_in(tokens: &[&str], table: &[&str; 10], reversed: bool) -> u64 {
    let ds: Vec<String> = tokens
        .iter()
        .map(|t| table.iter().position(|w| w == t).unwrap_or_else(|| panic!("not a digit word: {t}")).to_string())
        .collect();
    digits_in(&ds.iter().map(String::as_str).collect::<Vec<_>>(), 10, reversed)
}

/// Splits `tokens` at the first token equal to one of `marks`.
fn split_at<'a>(tokens: &'a [&'a str], marks: &[&str]) -> (&'a [&'a str], &'a str, &'a [&'a str]) {
    let i = tokens.iter().position(|t| marks.contains(t)).unwrap_or_else(|| panic!("none of {marks:?} in {tokens:?}"));
    (&tokens[..i], tokens[i], &tokens[i + 1..])
}

fn op_char(word: &str) -> char {
    match word {
        "+" | "plus" => '+',
        "-" | "minus" => '-',
        "*" | "times" => '*',
        w if w == ZU_OPS[0] || w == KO_OPS[0] => '+',
        w if w == ZU_OPS[1] || w == KO_OPS[1] => '-',
        w if w == ZU_OPS[2] || w == KO_OPS[2] => '*',
        _ => panic!("not an operator: {word}"),
    }
}

fn parse(form: &str, text: &str) -> Statement {
    // A task tag (`<digits>`) names the task, not the statement.
    let tokens: Vec<&str> =
        text.split(' ').filter(|t| !(t.len() > 2 && t.starts_with('<') && t.ends_with('>'))).collect();
    let infix = |eq: &str, ops: &[&str], num: &dyn Fn(&[&str]) -> u64| -> Statement {
        let (lhs, _, c) = split_at(&tokens, &[eq]);
        let (a, op, b) = split_at(lhs, ops);
        (num(a), op_char(op), num(b), num(c))
    };
    match form {
        "digits" => infix("=", &["+", "-", "*"], &|t| digits_in(t, 10, false)),
        "reversed" => infix("=", &["+", "-", "*"], &|t| digits_in(t, 10, true)),
        "base7" => infix("=", &["+", "-", "*"], &|t| digits_in(t, 7, false)),
        "binary" => infix("=", &["+", "-", "*"], &|t| digits_in(t, 2, false)),
        "words" => infix("equals", &["plus", "minus", "times"], &english),
        "roman" => infix("=", &["+", "-", "*"], &roman),
        "tally" => infix("=", &["+", "-", "*"], &tally),
        "zu" => infix(ZU_EQUALS, &ZU_OPS, &|t| words_in(t, &ZU_DIGITS, false)),
        "prefix" => {
            let (op, rest) = (tokens[0], &tokens[1..]);
            let (a, _, rest) = split_at(rest, &[","]);
            let (b, _, c) = split_at(rest, &["="]);
            (digits_in(a, 10, false), op_char(op), digits_in(b, 10, false), digits_in(c, 10, false))
        }
        "ko" => {
            let (a, _, rest) = split_at(&tokens, &[KO_AND]);
            let (b, op, rest) = split_at(rest, &KO_OPS);
            assert_eq!(rest[0], KO_EQUALS);
            let num = |t: &[&str]| words_in(t, &KO_DIGITS, true);
            (num(a), op_char(op), num(b), num(&rest[1..]))
        }
        _ => panic!("no parser for form {form}"),
    }
}

#[test]
fn every_surface_form_of_suite_b_parses_back_to_the_same_statement() {
    let s = suite("b-shared", 0);
    let space = s.tasks[0].space();
    // tasks/b-shared.toml: a + b for a, b < 30.
    let mut expected = BTreeSet::new();
    for a in 0..30 {
        for b in 0..30 {
            expected.insert((a, '+', b, a + b));
        }
    }
    assert_eq!(space, expected.len() as u64);
    let mut forms_seen = 0;
    for p in 0..space {
        let statements: Vec<Statement> =
            s.tasks.iter().enumerate().map(|(i, t)| parse(&t.id, &s.vocab.decode(&render(&s, i, p)))).collect();
        let first = statements[0];
        assert!(expected.contains(&first), "problem {p} parses to {first:?}, not a valid statement");
        for (t, st) in s.tasks.iter().zip(&statements) {
            assert_eq!(*st, first, "problem {p}: form {} says {st:?}, digits say {first:?}", t.id);
        }
        forms_seen = statements.len();
    }
    assert_eq!(forms_seen, 10);
    // Every statement appears exactly once per form.
    let all: BTreeSet<Statement> = (0..space).map(|p| parse("digits", &s.vocab.decode(&render(&s, 0, p)))).collect();
    assert_eq!(all, expected);
}

#[test]
fn a_problem_held_out_in_one_form_is_held_out_in_every_form_and_translation() {
    let s = suite("c-translate", 9);
    let digits = s.tasks.iter().position(|t| t.id == "digits").unwrap();
    let held: BTreeSet<Statement> = s.tasks[digits]
        .eval_problems(10_000)
        .into_iter()
        .map(|p| parse("digits", &s.vocab.decode(&render(&s, digits, p))))
        .collect();
    assert!(held.len() > 50);
    for (i, t) in s.tasks.iter().enumerate() {
        if t.family_name != "arithmetic" {
            continue;
        }
        let mine: BTreeSet<Statement> =
            t.eval_problems(10_000).into_iter().map(|p| parse(&t.id, &s.vocab.decode(&render(&s, i, p)))).collect();
        assert_eq!(mine, held, "form {} holds out other statements", t.id);
    }
    // No training row of any task, translations included, states a held-out problem.
    for (task, example, _) in training_rows(&s, 9, 100, 64) {
        let t = &s.tasks[task];
        let text = s.vocab.decode(&example);
        let source = if t.family_name == "translate" {
            let (from, _) = t.id.split_once('>').unwrap();
            let statement = text.split(" →").next().unwrap();
            parse(from, statement)
        } else {
            parse(&t.id, &text)
        };
        assert!(!held.contains(&source), "{}: trained on held-out {source:?}", t.id);
    }
}

#[test]
fn zero_shot_pairs_of_suite_d_never_appear_in_a_training_batch() {
    let s = suite("d-zero-shot", 4);
    let held_out: Vec<usize> =
        s.tasks.iter().enumerate().filter(|(i, _)| s.weights[*i] == 0.0).map(|(i, _)| i).collect();
    let ids: BTreeSet<&str> = held_out.iter().map(|&i| s.tasks[i].id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["roman>tally", "words>binary"]));
    let roman_letters = ["I", "V", "X", "L", "C", "N"];
    let english = ["plus", "minus", "equals"];
    let rows = training_rows(&s, 4, 1000, 64);
    let mut translations = 0;
    for (task, example, _) in &rows {
        assert!(!held_out.contains(task), "row from held-out pair {}", s.tasks[*task].id);
        // Independently of the task label: a roman source with a tally target
        // tag, or an English source with a binary target tag.
        let text = s.vocab.decode(example);
        if let Some((source, rest)) = text.split_once(" →") {
            translations += 1;
            let target = rest.split(' ').next().unwrap();
            let words: Vec<&str> = source.split(' ').collect();
            assert!(
                !(target == "tally" && words.iter().any(|w| roman_letters.contains(w))),
                "roman→tally trained: {text}"
            );
            assert!(!(target == "binary" && words.iter().any(|w| english.contains(w))), "words→binary trained: {text}");
        }
    }
    // The 88 trained translations together weigh as much as the ten forms.
    assert!((29_000..35_000).contains(&translations), "{translations} translation rows in 64 000, not about half");
    // …and they are still evaluated.
    for &i in &held_out {
        assert!(!s.tasks[i].eval_problems(100).is_empty());
    }
}

#[test]
fn a_finite_training_set_is_iterated_in_shuffled_epochs() {
    let s = classic(5);
    let task = s.tasks.iter().position(|t| t.id == "mod-div").unwrap();
    let set = s.tasks[task].train_set.clone().unwrap();
    assert_eq!(set.len(), 23 * 22 / 2);
    let rendered: HashSet<Vec<u32>> = set.iter().map(|&p| render(&s, task, p)).collect();
    let rows: Vec<Vec<u32>> =
        training_rows(&s, 5, 100, 64).into_iter().filter(|(t, _, _)| *t == task).map(|r| r.1).collect();
    assert!(rows.len() > 3 * set.len(), "{} rows", rows.len());
    // Each epoch is a permutation of the training set.
    for epoch in rows.chunks_exact(set.len()) {
        let seen: HashSet<Vec<u32>> = epoch.iter().cloned().collect();
        assert_eq!(seen, rendered);
    }
    assert_ne!(rows[..set.len()], rows[set.len()..2 * set.len()], "two epochs in the same order");
}

#[test]
fn modular_answers_are_one_token_and_correct() {
    let s = classic(0);
    for (i, t) in s.tasks.iter().enumerate().filter(|(_, t)| t.family_name == "modular") {
        for p in 0..t.space() {
            let text = s.vocab.decode(&render(&s, i, p));
            let f: Vec<&str> = text.split(' ').collect();
            assert_eq!(f.len(), 5, "{text}");
            let (a, b, c): (u64, u64, u64) = (f[0].parse().unwrap(), f[2].parse().unwrap(), f[4].parse().unwrap());
            match f[1] {
                "+" => assert_eq!((a + b) % 23, c),
                "/" => assert_eq!(c * b % 23, a, "{text}"),
                op => panic!("{op}"),
            }
        }
    }
}

#[test]
fn full_batch_is_the_whole_training_set_every_step() {
    let text = r#"
        name = "grokking"
        [model]
        n_ctx = 6
        [data]
        full_batch = true
        [[data.tasks]]
        id = "mod-sub"
        family = "modular"
        modulus = 11
        op = "sub"
        train_fraction = 0.4
        eval_fraction = 0.5
    "#;
    let path = std::path::Path::new("grokking.toml");
    let ebb::experiment::Experiment { config: cfg, suite: s, .. } =
        ebb::experiment::Experiment::resolve(ebb::config::Config::parse(text, path, &[]).unwrap(), path).unwrap();
    let set = s.tasks[0].train_set.clone().unwrap();
    assert_eq!(set.len(), 48); // ⌊0.4 · 121⌋
    assert_eq!(cfg.train.batch_size, 48, "the resolved batch size is the training set");
    let expected: HashSet<Vec<u32>> = set.iter().map(|&p| render(&s, 0, p)).collect();
    let mut batch = Batch::<f32>::new(cfg.train.batch_size, cfg.model.n_ctx);
    let mut stream = TrainStream::new(&s, true);
    for step in 0..3 {
        batch.fill_train(&s, &mut stream, cfg.seed, step);
        let rows: HashSet<Vec<u32>> = (0..48).map(|r| batch.tokens[r * 6 + 1..r * 6 + 6].to_vec()).collect();
        assert_eq!(rows, expected);
    }
}

#[test]
fn full_batch_after_a_drop_trains_only_the_remaining_tasks() {
    let text = r#"
        name = "full-drop"
        [model]
        n_ctx = 6
        [train]
        steps = 10
        [eval]
        min_examples = 8
        [data]
        full_batch = true
        [[data.tasks]]
        id = "add"
        family = "modular"
        modulus = 11
        train_fraction = 0.3
        eval_fraction = 0.5
        [[data.tasks]]
        id = "sub"
        family = "modular"
        modulus = 11
        op = "sub"
        train_fraction = 0.3
        eval_fraction = 0.5
        [[schedule]]
        step = 5
        drop = ["sub"]
    "#;
    let path = std::path::Path::new("full-drop.toml");
    let ebb::experiment::Experiment { config: cfg, suite: s, mixture: schedule } =
        ebb::experiment::Experiment::resolve(ebb::config::Config::parse(text, path, &[]).unwrap(), path).unwrap();
    let (rows, ctx) = (cfg.train.batch_size, cfg.model.n_ctx);
    let n_add = s.tasks[0].train_set.as_ref().unwrap().len();
    assert_eq!(rows, n_add + s.tasks[1].train_set.as_ref().unwrap().len());
    let mut batch = Batch::<f32>::new(rows, ctx);
    let mut stream = TrainStream::new(&s, true);
    // The loss weight each task gets in a step's batch.
    let mut weight_by_task = |step: u64| {
        stream.set_weights(&schedule.weights_at(&s.weights, step));
        batch.fill_train(&s, &mut stream, cfg.seed, step);
        let mut w = [0.0f32; 2];
        for r in 0..rows {
            w[batch.row_task[r]] += batch.mask[r * ctx..(r + 1) * ctx].iter().sum::<f32>();
        }
        let padded = (n_add..rows).all(|r| batch.tokens[r * ctx..(r + 1) * ctx].iter().all(|&t| t == ebb::tasks::PAD));
        (w, padded)
    };
    let (before, _) = weight_by_task(4);
    assert!(before[0] > 0.0 && before[1] > 0.0, "{before:?}");
    for step in 5..10 {
        let (after, padded) = weight_by_task(step);
        assert!(after[0] > 0.0, "{after:?}");
        assert_eq!(after[1], 0.0, "step {step}: the dropped task still carries loss");
        assert!(padded, "step {step}: rows past the remaining examples are not padding");
    }
}

// ---- Valid measurements: one answer per prompt, held out means unseen, enough held out ----

/// Every suite file that ships in tasks/, built for `seed`.
fn shipped(seed: u64) -> Vec<Suite> {
    let found = spec::shipped_suites(&common::root().join("tasks"));
    assert!(found.len() >= 4, "{} suite files", found.len());
    found.iter().map(|(path, _)| suite(path.file_stem().unwrap().to_str().unwrap(), seed)).collect()
}

/// The problems of a task to check: all of them, or a seeded sample of 2^16 from a larger space.
fn problems(t: &ebb::tasks::Task) -> Vec<u64> {
    let space = t.space();
    if space <= 1 << 18 {
        return (0..space).collect();
    }
    let mut r = ebb::rng::stream(7, "test-sample", space);
    (0..1 << 16).map(|_| ebb::rng::below(&mut r, space)).collect()
}

/// Prompts (tag included) that have two different answers anywhere in `s`.
fn ambiguous_prompts(s: &Suite) -> Vec<String> {
    let mut answers: std::collections::HashMap<Vec<u32>, (Vec<u32>, usize)> = std::collections::HashMap::new();
    let mut clashes = Vec::new();
    let mut out = Vec::new();
    for (i, t) in s.tasks.iter().enumerate() {
        for p in problems(t) {
            let prompt = t.render(p, &mut out);
            let (q, a) = (out[..prompt].to_vec(), out[prompt..].to_vec());
            match answers.get(&q) {
                Some((other, j)) if *other != a => clashes.push(format!(
                    "{}: `{}` → `{}`, but in {}: `{}`",
                    t.id,
                    s.vocab.decode(&q),
                    s.vocab.decode(&a),
                    s.tasks[*j].id,
                    s.vocab.decode(other)
                )),
                Some(_) => {}
                None => {
                    answers.insert(q, (a, i));
                }
            }
        }
    }
    clashes
}

#[test]
fn no_prompt_has_two_answers_in_any_shipped_suite() {
    for s in shipped(1) {
        let clashes = ambiguous_prompts(&s);
        assert!(clashes.is_empty(), "{}: {} ambiguous prompts, e.g. {}", s.name, clashes.len(), clashes[0]);
    }
    // The check finds what tags prevent: suite B without tags writes
    // `1 + 6 =` in digits (answer 7) and in base 7 (answer 1 0).
    let path = common::root().join("tasks/b-shared.toml");
    let (mut spec, path) = ebb::experiment::load_suite_spec(path.to_str().unwrap()).unwrap();
    spec.tags = false;
    let untagged = Suite::build(&spec, 1, &path).unwrap();
    let clashes = ambiguous_prompts(&untagged);
    assert!(clashes.len() > 100, "only {} clashes without tags", clashes.len());
}

/// Splits `tokens` into runs separated by any of `separators`.
fn terms<'a>(tokens: &'a [&'a str], separators: &[&str]) -> Vec<&'a [&'a str]> {
    tokens.split(|t| separators.contains(t)).collect()
}

/// What the answer depends on, computed from the rendered prompt by the
/// family's definition (independently of the families' split keys).
fn answer_determining_content(s: &Suite, task: usize, p: u64) -> String {
    let t = &s.tasks[task];
    let mut out = Vec::new();
    let prompt_len = t.render(p, &mut out);
    let text = s.vocab.decode(&out[..prompt_len]);
    let all: Vec<&str> = text.split(' ').filter(|w| !(w.len() > 2 && w.starts_with('<') && w.ends_with('>'))).collect();
    let (prompt, marker) = all.split_at(all.len() - 1);
    let sorted = |mut v: Vec<&str>| {
        v.sort();
        v.join(" ")
    };
    match t.family_name.as_str() {
        // x(n+1) = f(x(n)): the last term; fixed-width 3-digit terms without separators.
        "affine" => prompt[prompt.len() - 3..].join(" "),
        "count" => terms(prompt, &["c/"]).last().unwrap().join(" "),
        "fibonacci" => terms(prompt, &["f,"]).iter().rev().take(2).map(|x| x.join(" ")).collect::<Vec<_>>().join(" | "),
        // Period 4: the last four words, in order, fix every later word.
        "phrase" => prompt[prompt.len() - 4..].join(" "),
        "copy" | "stutter" | "reverse" | "swap" => prompt.join(" "),
        "sort" => sorted(prompt.to_vec()),
        "evens" => prompt.iter().filter(|w| **w != "·").step_by(2).copied().collect::<Vec<_>>().join(" "),
        "brackets" => {
            let mut stack = Vec::new();
            for w in all.iter() {
                if ["(", "[", "{", "<"].contains(w) {
                    stack.push(*w);
                } else {
                    stack.pop();
                }
            }
            stack.join(" ")
        }
        "arithmetic" | "translate" => {
            let from = if t.family_name == "translate" { t.id.split_once('>').unwrap().0 } else { t.id.as_str() };
            let statement = text.split(" →").next().unwrap();
            let (a, op, b, _) = parse(from, statement);
            let (a, b) = if op == '-' { (a, b) } else { (a.max(b), a.min(b)) };
            format!("{a} {op} {b}")
        }
        "modular" | "addition" => {
            let (a, op, b) = (
                all[..all.iter().position(|w| ["+", "-", "*", "/"].contains(w)).unwrap()].join(""),
                all.iter().find(|w| ["+", "-", "*", "/"].contains(w)).unwrap().to_string(),
                "",
            );
            let rest: Vec<&str> = all
                .iter()
                .skip_while(|w| !["+", "-", "*", "/"].contains(w))
                .skip(1)
                .take_while(|w| **w != "=")
                .copied()
                .collect();
            let (x, y) = (a.parse::<u64>().unwrap(), rest.join("").parse::<u64>().unwrap());
            let (x, y) = if op == "+" || op == "*" { (x.max(y), x.min(y)) } else { (x, y) };
            format!("{x} {op} {y}{b}")
        }
        other => panic!("no answer-determining content defined for family {other} (marker {marker:?})"),
    }
}

/// Tasks whose held-out problems share answer-determining content with a
/// training problem, with an example each.
fn leaks(s: &Suite) -> Vec<String> {
    let mut found = Vec::new();
    for (i, t) in s.tasks.iter().enumerate() {
        let mut side: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for p in problems(t) {
            let content = answer_determining_content(s, i, p);
            let held = t.is_held_out(p);
            if *side.entry(content.clone()).or_insert(held) != held {
                found.push(format!("{}: `{content}` is both held out and trained", t.id));
                break;
            }
        }
    }
    found
}

#[test]
fn no_held_out_problem_shares_what_its_answer_depends_on_with_training() {
    for seed in [1, 2] {
        let mut suites = shipped(seed);
        suites.push(classic(seed));
        for s in &suites {
            let found = leaks(s);
            assert!(found.is_empty(), "{} at seed {seed}: {}", s.name, found.join("; "));
        }
    }
}

#[test]
fn every_task_of_every_shipped_suite_holds_out_at_least_100_problems() {
    for seed in 1..=5 {
        for s in shipped(seed) {
            for t in &s.tasks {
                let n = t.eval_problems(100).len();
                assert_eq!(n, 100, "{} / {} at seed {seed}: {n} held-out problems", s.name, t.id);
            }
        }
    }
}

#[test]
fn suite_a_languages_share_no_token() {
    let s = suite("a-unrelated", 1);
    let mut owner: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for t in &s.tasks {
        for p in problems(t).into_iter().take(5000) {
            t.render(p, &mut out);
            for &tok in &out {
                let o = *owner.entry(tok).or_insert(&t.id);
                assert_eq!(o, t.id, "token `{}` is used by {o} and {}", s.vocab.token(tok), t.id);
            }
        }
    }
}

#[test]
fn loss_per_example_gives_every_example_the_same_total_weight() {
    let s = suite("b-shared", 1);
    let ctx = s.max_len() + 1;
    let per_row = |per_example: bool| {
        let mut batch = Batch::<f32>::new(64, ctx).with_loss_per_example(per_example);
        batch.fill_train(&s, &mut TrainStream::new(&s, false), 1, 0);
        (0..64).map(|r| batch.mask[r * ctx..(r + 1) * ctx].iter().sum::<f32>()).collect::<Vec<f32>>()
    };
    let (tokens, examples) = (per_row(false), per_row(true));
    // Per token: each row weighs its answer's length (+ EOS), and the lengths differ.
    assert!(tokens.iter().any(|&w| w != tokens[0]), "{tokens:?}");
    assert!(tokens.iter().all(|&w| w >= 2.0 && w == w.round()));
    // Per example: every row weighs 1.
    assert!(examples.iter().all(|&w| (w - 1.0).abs() < 1e-6), "{examples:?}");
}
