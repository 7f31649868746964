//! `ebb erasure` on a real run with a drop: the instruments agree with the
//! models they interpolate between, restoring every component gives back
//! P exactly, the output is the same bits at any thread count, and bad
//! requests get one-line errors.

mod common;

use std::path::Path;

use common::{ebb, run_ok, write};

/// Two additions, `add1` dropped at step 60 of 120.
fn config() -> String {
    common::two_tasks("[[schedule]]\nstep = 60\ndrop = [\"add1\"]\n")
        .replace("steps = 40", "steps = 120")
        .replace("every = 10", "every = 20")
        .replace("\nexamples = 8\n", "\nexamples = 32\n")
}

/// The same with a faster learning rate and `add1` dropped at step 100 of
/// 200: P scores above 0 on it, so relearning has a target to stop at.
fn learned_config() -> String {
    config().replace("lr = 3e-3", "lr = 1e-2").replace("step = 60", "step = 100").replace("steps = 120", "steps = 200")
}

/// Runs the whole battery afresh (every fine-tune retrained) at `threads`.
fn erasure_json(run: &Path, threads: &str) -> (serde_json::Value, String) {
    let _ = std::fs::remove_dir_all(run.join("erasure"));
    run_ok(ebb().args(["erasure", "--task", "add1", "--relearn-steps", "40", "--threads", threads]).arg(run));
    let text = std::fs::read_to_string(run.join("erasure/add1/erasure.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

#[test]
fn the_battery_agrees_with_p_and_d_and_is_the_same_bits_at_any_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("erase.toml"), &learned_config());
    let run = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(tmp.path().join("erase.toml")).arg("--out").arg(&run).arg("--quiet"));
    let (e, one) = erasure_json(&run, "1");
    assert!(e["before"]["exact_match"].as_f64().unwrap() > 0.0, "P must score for relearning to have a target");
    // Relearning starts from each model: its fine-tune's first evaluation is that model's score.
    let relearn = &e["relearn"];
    assert_eq!(relearn["cap"].as_u64(), Some(40));
    for (model, score) in [("P", &e["before"]), ("D", &e["after"])] {
        let m = relearn["models"].as_array().unwrap().iter().find(|m| m["model"] == model).unwrap();
        let curve: Vec<(u64, f64)> =
            m["curve"].as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect();
        assert_eq!(curve[0], (0, score["exact_match"].as_f64().unwrap()), "{model}");
        // The log-spaced grid, to the cap or to one step after two evaluations in a row at the target.
        let target = relearn["target"].as_f64().unwrap();
        let steps: Vec<u64> = curve.iter().map(|p| p.0).collect();
        let grid = [0, 1, 2, 4, 8, 16, 32, 40];
        let n = steps.len();
        let held = (1..n).find(|&i| curve[i - 1].1 >= target && curve[i].1 >= target);
        match held {
            Some(i) => {
                assert_eq!(steps[..=i], grid[..=i], "{model}");
                assert_eq!(steps[i + 1..], [steps[i] + 1], "{model}: ends one step after the target held");
            }
            None => assert_eq!(steps, grid, "{model}: never held the target, so it ran to the cap"),
        }
        let first = curve.iter().find(|p| p.1 >= target).map(|p| p.0);
        assert_eq!(m["steps_to_target"].as_u64(), first, "{model}");
    }
    // Here D holds the target at its first evaluations in a row and stops early.
    let d = relearn["models"].as_array().unwrap().iter().find(|m| m["model"] == "D").unwrap();
    let last = d["curve"].as_array().unwrap().last().unwrap()[0].as_u64().unwrap();
    assert!(last < 40, "D's fine-tune ran to the cap ({last}) though it held the target");
    let (_, two) = erasure_json(&run, "2");
    assert_eq!(one, two, "erasure.json differs between 1 and 2 threads");
    let (before, after) = (&e["before"], &e["after"]);
    assert_eq!((before["step"].as_u64(), after["step"].as_u64()), (Some(100), Some(200)));
    // P and D are the run's own evaluations at those steps.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    for (model, step) in [(before, 100), (after, 200)] {
        let logged = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{step},add1,eval,exact_match,")))
            .and_then(|l| l.rsplit(',').next())
            .map(|v| v.parse::<f64>().unwrap());
        assert_eq!(model["exact_match"].as_f64(), logged, "step {step}");
    }
    // Every component of P restored into D, one by one, is P.
    let restore = &e["restore"];
    assert_eq!(restore["all_from_p_into_d"], before["exact_match"]);
    let names: Vec<&str> =
        restore["components"].as_array().unwrap().iter().map(|c| c["component"].as_str().unwrap()).collect();
    assert_eq!(names, ["embeddings", "block 0", "block 1", "final"]);
    let params: u64 = restore["components"].as_array().unwrap().iter().map(|c| c["params"].as_u64().unwrap()).sum();
    let n_params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(params, n_params["params"].as_u64().unwrap(), "the components cover every parameter once");
    // The line from P to D starts at P and ends at D, for the task and the kept task.
    let line = e["interpolation"].as_array().unwrap();
    assert_eq!(line.len(), 11);
    for (point, model) in [(&line[0], before), (&line[10], after)] {
        assert_eq!(point["exact_match"], model["exact_match"]);
        assert_eq!(point["kept_exact_match"], model["kept_exact_match"]);
    }
    // Few-shot: n = 1, 4, 16 (T holds half of add1's 70 training problems), P and D, recovery D/P.
    let few = e["few_shot"].as_array().unwrap();
    assert_eq!(few.iter().map(|f| f["examples"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 4, 16]);
    for f in few {
        let acc = |m: &str| f["accuracy"].as_array().unwrap().iter().find(|a| a[0] == m).unwrap()[1].as_f64().unwrap();
        if acc("P") > 0.0 {
            assert_eq!(f["recovery_d_over_p"].as_f64(), Some(acc("D") / acc("P")));
        }
    }
    // Noise: 6 levels × 8 draws for each of P and D; the smallest noise leaves D close to itself.
    let noise = e["noise"].as_array().unwrap();
    assert_eq!(noise.len(), 12);
    assert!(noise.iter().all(|l| l["draws"].as_array().unwrap().len() == 8));
    // Relearning with parts frozen: from D (and C), the frozen tensors stay D's exactly.
    let frozen = e["relearn_frozen"].as_array().unwrap();
    let trainable: Vec<&str> = frozen.iter().map(|r| r["trainable"].as_str().unwrap()).collect();
    assert_eq!(trainable, ["embeddings and block 0", "block 1"]);
    let experiment = ebb::experiment::Experiment::load(&run.join("config.toml"), &[]).unwrap();
    let layout = ebb::model::ParamLayout::new(&experiment.config.model_shape(experiment.suite.vocab.len()));
    let d = ebb::weights::read_weights(&ebb::weights::path_for(&run, 200), &layout).unwrap();
    for (r, kept) in frozen.iter().zip([&["wte", "wpe", "h0."][..], &["h1."][..]]) {
        let m = &r["models"].as_array().unwrap()[0];
        assert_eq!(m["model"], "D", "P starts at its own accuracy: only D (and C) relearn");
        let tuned = run.join(m["run"].as_str().unwrap());
        let last = m["curve"].as_array().unwrap().last().unwrap()[0].as_u64().unwrap();
        let after = ebb::weights::read_weights(&ebb::weights::path_for(&tuned, last), &layout).unwrap();
        for t in &layout.tensors {
            let range = t.view.offset..t.view.offset + t.view.len;
            let trains = kept.iter().any(|k| t.name == *k || (k.ends_with('.') && t.name.starts_with(k)));
            assert_eq!(d[range.clone()] != after[range], trains, "{}: {}", r["trainable"], t.name);
        }
    }
    // Probes: one per layer for P and D, scores in [0, 1]; no retention without C.
    let probes = &e["probes"];
    for m in probes["models"].as_array().unwrap() {
        let layers: Vec<&str> = m["layers"].as_array().unwrap().iter().map(|l| l["layer"].as_str().unwrap()).collect();
        assert_eq!(layers, ["embeddings", "block 0", "block 1"]);
        for l in m["layers"].as_array().unwrap() {
            let (a, c) = (l["accuracy"].as_f64().unwrap(), l["control_accuracy"].as_f64().unwrap());
            assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&c) && l["selectivity"].as_f64() == Some(a - c));
        }
    }
    assert_eq!(probes["test_examples"], e["examples"]);
    assert!(probes["retention"].as_array().unwrap().iter().all(|r| r[1].is_null()), "no retention without C");
    // Soft prompts: k = 0 is plain evaluation; every longer prompt is the best of three starts.
    let soft = &e["soft_prompts"];
    let longest = soft["longest_example"].as_u64().unwrap();
    let fit: Vec<u64> = soft["k_fit"].as_array().unwrap().iter().map(|k| k.as_u64().unwrap()).collect();
    assert!(fit.iter().all(|k| 1 + k + longest <= soft["n_ctx"].as_u64().unwrap()) && fit[0] == 0 && fit.len() > 2);
    for (m, score) in soft["models"].as_array().unwrap().iter().zip([before, after]) {
        let points = m["points"].as_array().unwrap();
        assert_eq!(points[0]["accuracy"], score["exact_match"], "{}: k = 0 is plain evaluation", m["model"]);
        assert!(points[1..].iter().all(|p| p["starts"].as_array().unwrap().len() == 3));
    }
    assert!(soft["gap_d_minus_c"].as_array().unwrap().is_empty(), "no gap without C");
    for name in [
        "restore",
        "interpolation",
        "noise",
        "relearn",
        "relearn_first",
        "relearn_last",
        "probes",
        "soft_prompt",
        "soft_prompt_fragility",
    ] {
        assert!(run.join(format!("erasure/add1/plots/{name}.png")).is_file(), "{name}.png");
    }
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("Depth of erasure: add1") && report.contains("Relearning from P, D on"));
    // --only runs a subset.
    run_ok(ebb().args(["erasure", "--task", "add1", "--only", "restore"]).arg(&run));
    let text = std::fs::read_to_string(run.join("erasure/add1/erasure.json")).unwrap();
    let subset: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(subset["noise"].is_null() && subset["interpolation"].is_null() && !subset["restore"].is_null());
}

#[test]
fn a_task_never_dropped_or_weights_not_kept_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("erase.toml"), &config().replace("steps = 120", "steps = 80"));
    let run = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(tmp.path().join("erase.toml")).arg("--out").arg(&run).arg("--quiet"));
    let never = ebb().args(["erasure", "--task", "add2"]).arg(&run).output().unwrap();
    common::assert_input_error(&never, &["add2", "never dropped"]);
    std::fs::remove_file(run.join("weights/step-80.safetensors")).unwrap();
    let missing = ebb().args(["erasure", "--task", "add1"]).arg(&run).output().unwrap();
    common::assert_input_error(&missing, &["step-80.safetensors", "no weights at step 80"]);
}

/// The token ids in column 1 (after BOS: the task tag) of every row of a
/// dumped batch or eval file.
fn tags(file: &Path) -> Vec<i32> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tokens = st.tensor("tokens").unwrap();
    let (rows, ctx) = (tokens.shape()[0], tokens.shape()[1]);
    let data: Vec<i32> = tokens.data().chunks(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (0..rows).map(|r| data[r * ctx + 1]).collect()
}

#[test]
fn the_control_never_trains_the_task_and_resumes_bit_for_bit_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config().replace("[eval]", "[data]\ntags = true\n\n[eval]").replace("n_ctx = 10", "n_ctx = 11");
    write(&tmp.path().join("erase.toml"), &config);
    let run = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(tmp.path().join("erase.toml")).arg("--out").arg(&run).arg("--quiet"));
    let copy = tmp.path().join("copy");
    run_ok(std::process::Command::new("cp").arg("-r").arg(&run).arg(&copy));

    let args = ["erasure", "--task", "add1", "--control", "auto", "--only", "noise"];
    let erase = |dir: &Path| ebb().args(args).arg(dir).output().unwrap();
    run_ok(ebb().args(args).arg(&run));
    // Killed with SIGKILL while training the control (after its step-60 checkpoint), then run again.
    let killed = ebb().args(args).arg(&copy).env("EBB_KILL_AT", "step:70").output().unwrap();
    assert!(!killed.status.success(), "the kill did not happen");
    let resumed = erase(&copy);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let json = |dir: &Path| std::fs::read_to_string(dir.join("erasure/add1/erasure.json")).unwrap();
    assert_eq!(json(&run), json(&copy), "a killed and resumed control gives other bits");
    let e: serde_json::Value = serde_json::from_str(&json(&run)).unwrap();
    assert_eq!(e["control"]["step"].as_u64(), Some(120));
    assert_eq!(e["noise"].as_array().unwrap().iter().filter(|l| l["model"] == "C").count(), 6);

    // The control's batches, replayed with --dump-batches from its own config
    // (same fingerprint, so the same batches), never hold an add1 example.
    let control = run.join("erasure/add1/control-120");
    let replay = tmp.path().join("replay");
    run_ok(
        ebb()
            .arg("run")
            .arg(control.join("config.toml"))
            .arg("--out")
            .arg(&replay)
            .arg("--dump-batches")
            .arg("--quiet"),
    );
    let weights = |dir: &Path| std::fs::read(dir.join("weights/step-120.safetensors")).unwrap();
    assert_eq!(weights(&replay), weights(&control), "the replay trained on other batches");
    let add1_tag = tags(&replay.join("eval/add1.safetensors"))[0];
    let add2_tag = tags(&replay.join("eval/add2.safetensors"))[0];
    assert_ne!(add1_tag, add2_tag);
    for step in 0..120 {
        let rows = tags(&replay.join(format!("batches/step-{step}.safetensors")));
        assert!(rows.iter().all(|&t| t == add2_tag), "step {step}: a row that is not add2: {rows:?}");
    }
}
