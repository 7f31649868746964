//! Golden fingerprints: the parameter fingerprint of a few short runs,
//! pinned. Any change that moves a single bit of training fails here until
//! the pinned value is updated on purpose, with the reason in the commit.
//!
//! And the same bits on any x86-64 CPU with AVX2: one run again under
//! `qemu-x86_64 -cpu Haswell` (AVX2 and FMA, no AVX-512), which must give
//! the host's fingerprint. Skipped when qemu-user is not installed, unless
//! `CI=true` or `EBB_REQUIRE_QEMU=1`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ebb, fingerprint, required, run_ok};

/// Two classic tasks on sampled batches; `model` and `extra` complete it.
fn config(name: &str, model: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
seed = 7

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 16
{model}

[train]
steps = 40
batch_size = 16
lr = 3e-3
warmup_steps = 5

[eval]
every = 20
examples = 32
min_examples = 8

[[data.tasks]]
id = "copy"
family = "copy"

[[data.tasks]]
id = "reverse"
family = "reverse"
{extra}
"#
    )
}

/// GELU, pre-norm, tied embeddings (the defaults), no dropout, `copy`
/// dropped at step 20.
fn gelu_drop() -> String {
    config("gelu-drop", "", "[[schedule]]\nstep = 20\ndrop = [\"copy\"]\n")
}

/// ReLU, no LayerNorm, untied, fan_in initialization, dropout 0.1, loss per example.
fn relu_dropout() -> String {
    config(
        "relu-dropout",
        "activation = \"relu\"\nnorm = \"none\"\ntied_embeddings = false\ninit = \"fan_in\"\ndropout = 0.1",
        "",
    )
    .replace("warmup_steps = 5", "warmup_steps = 5\nloss_per = \"example\"")
}

/// Full batch on a finite modular-addition task, weight decay on.
fn full_batch() -> String {
    r#"
name = "full-batch"
seed = 7

[model]
d_model = 32
n_layers = 1
n_heads = 4
n_ctx = 8
activation = "relu"

[train]
steps = 40
lr = 3e-3
warmup_steps = 5
weight_decay = 1.0

[eval]
every = 20
min_examples = 8

[data]
full_batch = true

[[data.tasks]]
id = "add"
family = "modular"
modulus = 13
train_fraction = 0.3
eval_fraction = 0.5
"#
    .to_string()
}

/// Runs `text` with `program` (the ebb binary, or qemu with it) and returns its fingerprint.
fn fingerprint_of(dir: &Path, text: &str, mut cmd: Command) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("exp.toml");
    std::fs::write(&cfg, text).unwrap();
    fingerprint(&run_ok(cmd.arg("run").arg(&cfg).arg("--out").arg(dir.join("run")).args(["--quiet", "--threads", "2"])))
}

#[test]
fn short_runs_keep_their_pinned_fingerprints() {
    // Updated on purpose only: say why in the commit.
    let golden = [
        ("gelu-drop", gelu_drop(), "fb2a3dafcccce801"),
        ("relu-dropout", relu_dropout(), "1f070ab00bd09cd4"),
        ("full-batch", full_batch(), "f8351b5200a47716"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut changed = Vec::new();
    for (name, text, want) in golden {
        let got = fingerprint_of(&tmp.path().join(name), &text, ebb());
        if got != want {
            changed.push(format!("{name}: pinned {want}, now {got}"));
        }
    }
    assert!(changed.is_empty(), "training bits changed (update the pinned values on purpose):\n{}", changed.join("\n"));
}

#[test]
fn an_avx2_only_cpu_gives_the_same_bits() {
    let qemu = Command::new("qemu-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    if !qemu {
        assert!(!required("QEMU"), "qemu-x86_64 is required here (CI=true or EBB_REQUIRE_QEMU=1)");
        eprintln!("qemu-x86_64 not installed: the AVX2-only check is skipped");
        return;
    }
    // Emulated AVX2 runs about 1000 times slower: 8 steps, evaluated at the
    // start and the end only, `copy` dropped at step 4.
    let text = gelu_drop()
        .replace("steps = 40", "steps = 8")
        .replace("every = 20", "every = 8\nafter_events = false")
        .replace("examples = 32", "examples = 8")
        .replace("step = 20", "step = 4");
    let tmp = tempfile::tempdir().unwrap();
    let host = fingerprint_of(&tmp.path().join("host"), &text, ebb());
    let mut emulated = Command::new("qemu-x86_64");
    emulated.args(["-cpu", "Haswell", env!("CARGO_BIN_EXE_ebb")]);
    let haswell = fingerprint_of(&tmp.path().join("haswell"), &text, emulated);
    assert_eq!(haswell, host, "an AVX2-only CPU (qemu -cpu Haswell) trains other bits than this one");
}
