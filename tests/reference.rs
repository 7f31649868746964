//! ebb against its reference replica (`reference/replica.py`, JAX): the same
//! initial weights and the same batches, compared one step at a time from
//! identical state (`compare.py --resync`): training loss, learning rate and
//! gradient norm at every logged step, held-out loss, token accuracy, exact
//! match and p_correct at every evaluation, every parameter tensor after
//! every step, to the tolerances `compare.py` states (about ten times the
//! float32 rounding noise of two programs that sum in different orders).
//!
//! The replica runs under the Python in `EBB_REPLICA_PYTHON` (see
//! `.ci/replica.sh`); without it these tests skip, and fail instead under
//! `CI=true` or `EBB_REQUIRE_REPLICA=1`. The long checks (thousands of
//! steps) are `reference/long_checks.sh`.

mod common;

use std::process::Command;

use common::*;

fn replica_python() -> Option<String> {
    if let Ok(python) = std::env::var("EBB_REPLICA_PYTHON") {
        return Some(python);
    }
    if required("REPLICA") {
        panic!(
            "the reference replica is required here (CI=true or EBB_REQUIRE_REPLICA=1): set EBB_REPLICA_PYTHON (eval \"$(bash .ci/replica.sh)\")"
        );
    }
    eprintln!("skipped: no EBB_REPLICA_PYTHON (eval \"$(bash .ci/replica.sh)\" installs the replica's JAX)");
    None
}

/// Trains `config` in ebb with every step's weights and batch written, then
/// the replica beside it, one step at a time; panics with the comparison's
/// report when any difference exceeds its tolerance.
fn matches_the_replica(name: &str, config: &str) {
    let Some(python) = replica_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join(format!("{name}.toml"));
    write(&cfg, config);
    let run = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&run).args([
        "--quiet",
        "--weights-every",
        "1",
        "--dump-batches",
    ]));
    let out = Command::new(&python)
        .arg(root().join("reference/compare.py"))
        .arg(&run)
        .arg("--resync")
        .output()
        .expect("the replica's Python runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name}: ebb and the replica differ beyond float32 rounding:\n{report}");
    assert!(report.contains("PASS"), "{report}");
}

const TASKS: &str = r#"
[[data.tasks]]
id = "copy"
family = "copy"

[[data.tasks]]
id = "reverse"
family = "reverse"

[eval]
every = 25
examples = 64
"#;

#[test]
fn gelu_pre_norm_tied_cosine_clipped_training_matches_the_replica() {
    let config = format!(
        r#"name = "replica-gelu"
seed = 3

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 16

[train]
steps = 120
batch_size = 16
lr = 3e-3
warmup_steps = 20
schedule = "cosine"
grad_clip = 0.5
log_every = 1
{TASKS}"#
    );
    matches_the_replica("gelu", &config);
}

#[test]
fn relu_untied_fan_in_per_example_decay_everywhere_and_dropout_matches_the_replica() {
    let config = format!(
        r#"name = "replica-relu"
seed = 5

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 16
activation = "relu"
norm = "none"
tied_embeddings = false
init = "fan_in"
dropout = 0.1

[train]
steps = 120
batch_size = 16
lr = 1e-2
warmup_steps = 10
schedule = "linear"
loss_per = "example"
grad_clip = 0.5
decay = ["weights", "embeddings", "positions", "biases", "norms"]
weight_decay = 0.05
log_every = 1
{TASKS}"#
    );
    matches_the_replica("relu", &config);
}
