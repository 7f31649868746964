//! The Python package (`python/`) against ebb: its numpy forward pass
//! reproduces `ebb eval --logits` for every architecture variant, it reads
//! a fresh run and sweep, and `ebb tasks export` gives back the token rows
//! ebb evaluates. The checks are `python/tests/check_package.py`, run under
//! the Python in `EBB_PYTHON` (`.ci/python.sh`); without it this skips, and
//! fails instead under CI=true or EBB_REQUIRE_PYTHON=1.

mod common;

use std::process::Command;

use common::*;

fn package_python() -> Option<String> {
    if let Ok(python) = std::env::var("EBB_PYTHON") {
        return Some(python);
    }
    if required("PYTHON") {
        panic!("the Python package's tests are required here: set EBB_PYTHON (eval \"$(bash .ci/python.sh)\")");
    }
    eprintln!(
        "skipped: no EBB_PYTHON (eval \"$(bash .ci/python.sh)\" installs the package and numpy, pandas, safetensors)"
    );
    None
}

/// A small model of `activation`, `norm` and tied or untied embeddings on two tasks.
fn variant(activation: &str, norm: &str, tied: bool) -> String {
    format!(
        r#"name = "py-{activation}-{norm}-{tied}"
seed = 4

[model]
d_model = 32
n_layers = 2
n_heads = 4
n_ctx = 16
activation = "{activation}"
norm = "{norm}"
tied_embeddings = {tied}

[train]
steps = 30
batch_size = 16
lr = 3e-3
warmup_steps = 5

[[data.tasks]]
id = "copy"
family = "copy"

[[data.tasks]]
id = "reverse"
family = "reverse"

[eval]
every = 10
examples = 40
"#
    )
}

#[test]
fn the_python_package_reproduces_ebbs_logits_and_reads_its_runs_sweeps_and_exports() {
    let Some(python) = package_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (activation, norm, tied) in [("gelu", "pre", true), ("relu", "none", false), ("relu", "pre", false)] {
        let cfg = tmp.path().join(format!("{activation}-{norm}-{tied}.toml"));
        write(&cfg, &variant(activation, norm, tied));
        let run = tmp.path().join(format!("run-{activation}-{norm}-{tied}"));
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&run).arg("--quiet"));
        run_ok(ebb().arg("eval").arg(&run).arg("--logits").arg(run.join("logits.safetensors")));
        runs.push(run);
    }
    // The eval split of the first run's tasks, as that run chose it.
    let export = tmp.path().join("export");
    run_ok(
        ebb()
            .args(["tasks", "export"])
            .arg(runs[0].join("config.toml"))
            .args(["--split", "eval", "-n", "40", "--seed", "4", "--out"])
            .arg(&export),
    );
    let fixtures = root().join("tests/fixtures");
    std::fs::copy(fixtures.join("tiny.toml"), tmp.path().join("tiny.toml")).unwrap();
    let sweep_file = tmp.path().join("sweep.toml");
    write(
        &sweep_file,
        "name = \"py\"\nbase = \"tiny.toml\"\nseeds = [1]\n\n[[zip]]\n\"model.d_model\" = [16, 24]\n\"model.n_heads\" = [4, 4]\n",
    );
    let sweep = tmp.path().join("sweep");
    run_ok(ebb().arg("sweep").arg(&sweep_file).arg("--out").arg(&sweep).args(["--jobs", "2", "--quiet"]));

    let mut args = vec!["--run".into()];
    args.extend(runs.iter().map(|r| r.clone().into_os_string()));
    args.extend(["--sweep".into(), sweep.into_os_string(), "--export".into(), export.into_os_string()]);
    passes(&python, "check_package.py", &args);

    // TransformerLens (with torch) is heavy: its check runs under EBB_LENS_PYTHON, a Python that has it.
    let Ok(lens_python) = std::env::var("EBB_LENS_PYTHON") else {
        eprintln!("skipped: the TransformerLens check (set EBB_LENS_PYTHON to a Python with transformer_lens and ebb)");
        return;
    };
    let runs: Vec<std::ffi::OsString> = runs.into_iter().map(|r| r.into_os_string()).collect();
    passes(&lens_python, "check_lens.py", &runs);
}

/// Runs `python/tests/SCRIPT` with `args` under `python`; it must end in PASS.
fn passes(python: &str, script: &str, args: &[std::ffi::OsString]) {
    let out = Command::new(python)
        .arg(root().join("python/tests").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{python} {script}: {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success() && report.contains("PASS"), "{script}:\n{report}");
}

#[test]
fn eval_and_export_refuse_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    assert_input_error(&ebb().arg("eval").arg(&missing).output().unwrap(), &["nothing", "config.toml"]);
    let cfg = tmp.path().join("v.toml");
    write(&cfg, &variant("gelu", "pre", true).replace("steps = 30", "steps = 4"));
    let run = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&run).arg("--quiet"));
    assert_input_error(
        &ebb().arg("eval").arg(&run).args(["--step", "3"]).output().unwrap(),
        &["--step 3", "kept: [4]"],
    );
    let out = tmp.path().join("export");
    let export = |args: &[&str]| ebb().args(["tasks", "export"]).args(args).arg("--out").arg(&out).output().unwrap();
    assert_input_error(&export(&["no-such-suite", "--split", "eval"]), &["no-such-suite"]);
    assert_input_error(&export(&["a-unrelated", "--split", "eval", "-n", "0"]), &["-n 0"]);
    assert!(!out.exists(), "nothing written on a refusal");
}
