//! The `ebb` command line on real files: bad input gets one clear line and
//! exit code 2; the quickstart learns; a run writes its directory.

mod common;

use common::*;

/// Runs `ebb run` on `config_text` with extra args; asserts exit code 2 and a
/// single stderr line that contains every string in `expect`.
fn rejects(config_text: &str, extra: &[&str], expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, config_text);
    let out = ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join("out")).args(extra).output().unwrap();
    let stderr = assert_input_error(&out, expect);
    assert!(
        stderr.contains("exp.toml") || extra.iter().any(|e| stderr.contains(e)),
        "error does not name the file: {stderr}"
    );
}

fn with(line_in_section: (&str, &str)) -> String {
    let (section, line) = line_in_section;
    SMALL_CONFIG.replacen(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"), 1)
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    rejects("name = \"x\"\n[model\nd_model = 3\n", &[], &["line 2"]);
}

#[test]
fn unknown_key_is_named() {
    rejects(&with(("train", "lerning_rate = 0.1")), &[], &["lerning_rate"]);
}

#[test]
fn wrong_type_names_key_and_value() {
    rejects(&SMALL_CONFIG.replace("lr = 3e-3", "lr = \"fast\""), &[], &["train.lr", "fast"]);
}

#[test]
fn heads_must_divide_width() {
    rejects(&SMALL_CONFIG.replace("n_heads = 4", "n_heads = 3"), &[], &["model.n_heads", "3", "d_model"]);
}

#[test]
fn ending_zero_steps_after_the_events_is_rejected() {
    rejects(SMALL_CONFIG, &["--set", "train.end_after_events=0"], &["train.end_after_events", "0"]);
}

#[test]
fn zero_layers_is_rejected() {
    rejects(&SMALL_CONFIG.replace("n_layers = 2", "n_layers = 0"), &[], &["model.n_layers", "0"]);
}

#[test]
fn non_positive_learning_rate_is_rejected() {
    rejects(&SMALL_CONFIG.replace("lr = 3e-3", "lr = -1e-3"), &[], &["train.lr", "-0.001"]);
    rejects(SMALL_CONFIG, &["--set", "train.lr=0"], &["train.lr", "0"]);
}

#[test]
fn context_shorter_than_the_longest_example_is_rejected() {
    rejects(&SMALL_CONFIG.replace("n_ctx = 8", "n_ctx = 5"), &[], &["model.n_ctx", "5", "longest example"]);
}

#[test]
fn a_held_out_set_below_the_minimum_names_suite_task_and_size() {
    // 1-digit addition holds out 21 of its 55 distinct sums at seed 5.
    let text = SMALL_CONFIG.replace("examples = 8\nmin_examples = 8", "examples = 100\nmin_examples = 40");
    rejects(&text, &[], &["eval.min_examples", "40", "suite `inline` task `add1` has only 21 held-out problems"]);
    rejects(SMALL_CONFIG, &["--set", "eval.min_examples=20"], &["eval.examples", "8", "eval.min_examples = 20"]);
}

#[test]
fn unknown_task_family_is_rejected() {
    rejects(
        &SMALL_CONFIG.replace("family = \"addition\"", "family = \"division\""),
        &[],
        &["tasks.add1.family", "division"],
    );
}

#[test]
fn unknown_family_parameter_is_rejected() {
    rejects(&SMALL_CONFIG.replace("digits = 1", "digits = 1\nbase = 3"), &[], &["tasks.add1", "base"]);
}

#[test]
fn empty_suite_is_rejected() {
    let text = SMALL_CONFIG.split("[[data.tasks]]").next().unwrap().to_string() + "[eval]\nevery = 10\n";
    rejects(&text, &[], &["data", "no tasks"]);
}

#[test]
fn duplicate_task_ids_are_rejected() {
    let twice = SMALL_CONFIG.replace("[[data.tasks]]\nid = \"add1\"\nfamily = \"addition\"\ndigits = 1\n", "[[data.tasks]]\nid = \"add1\"\nfamily = \"addition\"\ndigits = 1\n[[data.tasks]]\nid = \"add1\"\nfamily = \"addition\"\ndigits = 2\n");
    assert_ne!(twice, SMALL_CONFIG);
    rejects(&twice, &[], &["tasks.add1.id", "duplicate"]);
}

#[test]
fn operands_whose_statements_exceed_the_context_are_rejected() {
    let tally = SMALL_CONFIG
        .replace("family = \"addition\"\ndigits = 1", "family = \"arithmetic\"\nform = \"tally\"\noperands = 50");
    rejects(&tally, &[], &["model.n_ctx", "8", "add1"]);
}

#[test]
fn translation_pair_naming_an_unknown_language_is_rejected() {
    let text = SMALL_CONFIG.replace("family = \"addition\"\ndigits = 1\neval_fraction = 0.3", "family = \"arithmetic\"\nform = \"digits\"\n[[data.tasks]]\nid = \"w\"\nfamily = \"arithmetic\"\nform = \"words\"\n[data.translate]\npairs = [[\"digits\", \"klingon\"]]");
    rejects(&text, &["--set", "model.n_ctx=40"], &["translate.pairs", "klingon"]);
}

#[test]
fn unknown_suite_file_is_rejected() {
    rejects(SMALL_CONFIG, &["--set", "data.suite=nope.toml"], &["data.suite", "nope.toml"]);
}

#[test]
fn override_of_an_unknown_key_is_rejected() {
    rejects(SMALL_CONFIG, &["--set", "train.nope=1"], &["nope"]);
}

#[test]
fn unwritable_output_directory_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, SMALL_CONFIG);
    // A path under a regular file cannot be created, even by root.
    let blocker = tmp.path().join("a-file");
    write(&blocker, "");
    let out = ebb().arg("run").arg(&cfg).arg("--out").arg(blocker.join("run")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    assert!(stderr.contains("a-file/run") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_config_file_is_rejected() {
    let out = ebb().args(["run", "/nonexistent/exp.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/exp.toml"), "{stderr}");
}

#[test]
fn a_run_writes_resolved_config_metrics_and_timing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, SMALL_CONFIG);
    let dir = tmp.path().join("out");
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&dir).args(["--quiet", "--set", "train.lr=2e-3"]));
    let resolved = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(resolved.contains("lr = 0.002"), "override lands in the resolved config:\n{resolved}");
    assert!(resolved.contains("d_mlp = 128"), "defaults are filled in:\n{resolved}");
    // The resolved config is itself a valid config that reproduces the run.
    let again =
        run_ok(ebb().arg("run").arg(dir.join("config.toml")).arg("--out").arg(tmp.path().join("again")).arg("--quiet"));
    let first = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(first, std::fs::read_to_string(tmp.path().join("again/metrics.csv")).unwrap());
    assert!(!fingerprint(&again).is_empty());
    let steps: Vec<u64> = metric(&dir, "add1", "eval", "exact_match").iter().map(|r| r.0).collect();
    // Every `eval.every` steps, and densely (1, 2, 4, …) after the start.
    assert_eq!(steps, vec![0, 1, 2, 4, 8, 10, 16, 20, 30, 32, 40]);
    assert_eq!(metric(&dir, "all", "train", "loss").len(), 8);
    let timing = std::fs::read_to_string(dir.join("timing.csv")).unwrap();
    assert!(timing.starts_with("step,seconds,tokens_per_s\n") && timing.lines().count() == 9, "{timing}");
}

/// The acceptance test: the whole quickstart (about 3 minutes on 2 cores),
/// run by `cargo test --release -- --ignored quickstart`.
#[test]
#[ignore = "acceptance test, minutes: cargo test --release -- --ignored quickstart"]
fn quickstart_learns_suite_a_and_drops_affine_once_learned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("quickstart");
    run_ok(ebb().arg("run").arg(root().join("tasks/quickstart.toml")).arg("--out").arg(&dir).arg("--quiet"));
    // Suite A: ten languages, every answer several tokens (chance ≤ 0.015).
    let languages = ["affine", "phrase", "count", "copy", "reverse", "sort", "brackets", "evens", "stutter", "swap"];
    let mut finals = Vec::new();
    for language in languages {
        let exact = metric(&dir, language, "eval", "exact_match");
        let (first, last) = (exact.first().unwrap().1, exact.last().unwrap().1);
        assert!(first < 0.1, "{language}: the untrained model already scores {first}");
        finals.push(last);
    }
    assert!(
        finals.iter().filter(|&&x| x > 0.5).count() >= 9,
        "most languages should be learned on held-out problems: {finals:?}"
    );
    // affine is dropped 300 steps after it is learned (≥ 0.9 at two
    // evaluations in a row) and revived at 1800: the summary shows a learned
    // drop, its decay, and its return.
    let exact = metric(&dir, "affine", "eval", "exact_match");
    let learned_at =
        exact.windows(2).find(|w| w[0].1 >= 0.9 && w[1].1 >= 0.9).map(|w| w[1].0).expect("affine is never learned");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let drop = &summary["drops"][0];
    assert_eq!(drop["task"], "affine");
    assert_eq!(
        drop["step"].as_u64(),
        Some(learned_at + 300),
        "the drop is not 300 steps after the second evaluation at ≥ 0.9"
    );
    assert_eq!(drop["status"], "learned");
    let (at_drop, at_end) =
        (drop["accuracy_at_drop"].as_f64().unwrap(), drop["accuracy_at_window_end"].as_f64().unwrap());
    assert!(at_drop >= 0.9 && at_end < 0.5 * at_drop, "no clear decay: {at_drop} -> {at_end}");
    assert_eq!(drop["half_life"]["status"], "reached", "{}", drop["half_life"]);
    assert!(drop["half_life"]["steps"].as_f64().unwrap() > 0.0);
    assert!(drop["fits"]["exponential"]["tau"].as_f64().unwrap() > 0.0);
    assert!(
        drop["noise_floor"]["tasks"].as_array().unwrap().len() >= 5,
        "the kept languages give the noise floor: {}",
        drop["noise_floor"]
    );
    assert_eq!(drop["revive"]["status"], "regained", "affine never came back: {}", drop["revive"]);
    assert!(drop["revive"]["steps_to_regain"].as_u64().is_some());
    assert_eq!(summary["version"], ebb::analysis::SUMMARY_VERSION);
    assert_eq!(summary["finished"], true);
}

#[test]
fn cuda_without_a_driver_fails_with_a_clear_message() {
    if ebb::backend::cuda_driver_present() {
        println!("skipped: a CUDA driver is present on this machine");
        return;
    }
    let out = ebb().args(["bench", "--device", "cuda", "--steps", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--device cuda") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_json_prints_one_object_per_config() {
    let out =
        run_ok(ebb().args(["bench", "--config", "tiny", "--steps", "2", "--warmup", "1", "--json", "--threads", "1"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["config"], "tiny");
    for key in ["tokens_per_s", "ms_per_step", "best_ms_per_step", "gflops"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    assert!(
        v["best_ms_per_step"].as_f64() <= v["ms_per_step"].as_f64(),
        "the fastest step is slower than the median: {v}"
    );
}

#[test]
fn bench_times_the_step_with_dropout_and_refuses_a_bad_probability() {
    let out = run_ok(ebb().args([
        "bench",
        "--config",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        "--threads",
        "1",
        "--dropout",
        "0.1",
    ]));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["dropout"].as_f64(), Some(0.1), "{v}");
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    let out = ebb().args(["bench", "--config", "tiny", "--steps", "1", "--dropout", "1"]).output().unwrap();
    assert_input_error(&out, &["--dropout 1", "[0, 1)"]);
}

#[test]
fn bench_ceilings_report_the_machine_limits_beside_the_step() {
    let out = run_ok(ebb().args([
        "bench",
        "--config",
        "tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        "--threads",
        "1",
        "--ceilings",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let c = &lines[1];
    assert_eq!((c["config"].as_str(), c["threads"].as_u64()), (Some("tiny"), Some(1)), "{c}");
    for key in [
        "fma_peak_gflops",
        "copy_gb_per_s",
        "gemm_1024_gflops",
        "step_products_gflops",
        "step_products_ms",
        "linear_products_gflops",
        "linear_products_ms",
        "products_only_tokens_per_s",
        "step_share_of_fma_peak",
        "best_step_share_of_fma_peak",
        "step_share_beside_fma_peak",
    ] {
        let v = c[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {c}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v} in {c}");
    }
    // The paired share is its rounds' median, so inside their range.
    let range: Vec<f64> = c["step_share_beside_fma_peak_range"]
        .as_array()
        .unwrap_or_else(|| panic!("no range in {c}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let median = c["step_share_beside_fma_peak"].as_f64().unwrap();
    assert!(
        range.len() == 2 && range[0] > 0.0 && range[0] <= median && median <= range[1],
        "{median} outside {range:?} in {c}"
    );
}

#[test]
fn every_shipped_suite_trains() {
    for suite in ["a-unrelated", "b-shared", "c-translate", "d-zero-shot"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(suite);
        run_ok(ebb().arg("run").arg(root().join("tasks/quickstart.toml")).arg("--out").arg(&dir).arg("--quiet").args(
            [
                "--set",
                &format!("data.suite={suite}.toml"),
                "--set",
                "schedule=[]",
                "--set",
                "model.n_ctx=72",
                "--set",
                "train.steps=30",
                "--set",
                "eval.every=30",
                "--set",
                "eval.examples=4",
                "--set",
                "eval.min_examples=4",
            ],
        ));
        let loss = metric(&dir, "all", "train", "loss");
        assert!(loss.last().unwrap().1 < loss.first().unwrap().1, "{suite}: loss did not fall: {loss:?}");
        let tasks: std::collections::BTreeSet<String> = std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| l.contains(",eval,"))
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect();
        assert!(tasks.len() >= 10, "{suite}: only {} tasks evaluated", tasks.len());
    }
}

#[test]
fn every_shipped_experiment_config_loads() {
    let mut count = 0;
    for entry in std::fs::read_dir(root().join("tasks")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("exp-") || name == "quickstart.toml" {
            let experiment =
                ebb::experiment::Experiment::load(&entry.path(), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(experiment.suite.tasks.len() >= 3, "{name}");
            assert!(
                !experiment.mixture.events.is_empty() || experiment.mixture.triggers().next().is_some(),
                "{name} has no schedule"
            );
            count += 1;
        }
        if name.starts_with("sweep-") {
            let plan = ebb::sweep::Plan::load(&entry.path(), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(plan.runs.len() >= 12, "{name}");
            count += 1;
        }
    }
    assert_eq!(count, 10, "8 experiments and 2 sweeps");
}

#[test]
fn a_revive_of_a_task_never_dropped_is_refused() {
    rejects(
        &format!("{SMALL_CONFIG}\n[[schedule]]\nstep = 20\nrevive = [\"add1\"]\n"),
        &[],
        &["schedule[0].revive", "\"add1\"", "no earlier event drops"],
    );
    // Dropped only after the revive: still refused.
    rejects(
        &format!(
            "{SMALL_CONFIG}\n[[schedule]]\nstep = 30\ndrop = [\"add1\"]\n\n[[schedule]]\nstep = 20\nrevive = [\"add1\"]\n"
        ),
        &[],
        &["schedule[1].revive"],
    );
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it() {
    for path in ["/dev/urandom", "/dev/zero", "/tmp"] {
        let out = ebb().args(["run", path]).output().unwrap();
        assert_input_error(&out, &[path, "not a regular file"]);
    }
}
