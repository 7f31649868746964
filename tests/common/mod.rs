//! Helpers shared by the integration tests: running the real `ebb` binary;
//! the ops' f64 references (`reference`).

#![allow(dead_code)]

pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether environment variable `name` is set to `value`.
pub fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
}

/// Whether a tool a test needs (`what`: NVRTC, REPLICA, SLURM, QEMU) must be
/// there, so that its absence fails the test instead of skipping it: under
/// `CI=true` or `EBB_REQUIRE_<what>=1`.
pub fn required(what: &str) -> bool {
    env_is("CI", "true") || env_is(&format!("EBB_REQUIRE_{what}"), "1")
}

pub fn ebb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
}

/// The project root, where `tasks/` lives.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("ebb starts");
    assert!(
        out.status.success(),
        "ebb failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The `params fingerprint: …` value, which must be the last line of stdout.
pub fn fingerprint(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("stdout has lines");
    last.strip_prefix("params fingerprint: ")
        .unwrap_or_else(|| panic!("last line is not the fingerprint: {last}"))
        .to_string()
}

/// Asserts that `out` is a refusal: exit code 2, one line on stderr, no
/// panic report, every string of `expect` in it. Returns that line.
pub fn assert_input_error(out: &Output, expect: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "expected exit 2, stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line, got: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "error lacks {e:?}: {stderr}");
    }
    stderr
}

/// The test sweep, `tests/fixtures/sweep-tiny.toml`: twelve runs of a
/// tiny experiment, seconds in all.
pub fn test_sweep() -> PathBuf {
    root().join("tests/fixtures/sweep-tiny.toml")
}

/// A sweep's aggregate files, which must not depend on how the sweep was run.
pub fn sweep_aggregate(dir: &Path) -> Vec<String> {
    ["sweep.csv", "drops.csv", "scaling.json"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display())))
        .collect()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}

/// Reads `metrics.csv` rows (step, task, split, metric, value).
pub fn metric(dir: &Path, task: &str, split: &str, name: &str) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1] == task && f[2] == split && f[3] == name).then(|| (f[0].parse().unwrap(), f[4].parse().unwrap()))
        })
        .collect()
}

/// A small, fast config: 1-digit addition, a 2-layer d32 model.
pub const SMALL_CONFIG: &str = r#"
name = "small"
seed = 5

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 8
dropout = 0.1

[train]
steps = 40
batch_size = 16
lr = 3e-3
warmup_steps = 5
log_every = 5

[[data.tasks]]
id = "add1"
family = "addition"
digits = 1
eval_fraction = 0.3

[eval]
every = 10
examples = 8
min_examples = 8
"#;

/// 1-digit addition and a 2-digit one; `extra` is appended to the config.
pub fn two_tasks(extra: &str) -> String {
    format!(
        r#"
name = "two"
seed = 3

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 10

[train]
steps = 40
batch_size = 16
lr = 3e-3
warmup_steps = 2
log_every = 1

[[data.tasks]]
id = "add1"
family = "addition"
digits = 1
eval_fraction = 0.3

[[data.tasks]]
id = "add2"
family = "addition"
digits = 2

[eval]
every = 10
examples = 8
min_examples = 8
{extra}"#
    )
}

/// The names of the files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
