//! Decay experiments on real runs: events at exactly their step, evaluation
//! that never changes training, resume after SIGKILL, fork, divergence.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn run_config(dir: &Path, text: &str, extra_args: &[&str]) -> std::process::Output {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("exp.toml");
    write(&cfg, text);
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(dir.join("run")).arg("--quiet").args(extra_args))
}

fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    metric(run, "all", "train", "loss")
}

#[test]
fn a_drop_takes_effect_exactly_at_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let dropped = tmp.path().join("dropped");
    run_config(&base, &two_tasks(""), &[]);
    run_config(&dropped, &two_tasks("[[schedule]]\nstep = 12\ndrop = [\"add1\"]\n"), &[]);
    let (a, b) = (train_losses(&base.join("run")), train_losses(&dropped.join("run")));
    // Loss rows are logged after step `done`: steps 1..=12 trained on the same
    // mixture, step 13 (0-based step 12) is the first without add1.
    for ((da, la), (db, lb)) in a.iter().zip(&b) {
        assert_eq!(da, db);
        if *da <= 12 {
            assert_eq!(la, lb, "step {da} differs before the drop");
        } else if *da == 13 {
            assert_ne!(la, lb, "step 13 trained as if nothing were dropped");
        }
    }
    let events = std::fs::read_to_string(dropped.join("run/events.csv")).unwrap();
    assert_eq!(events, "step,event,task,value\n12,drop,add1,\n");
    // The dropped task is evaluated throughout, and densely right after the drop.
    let steps: Vec<u64> = metric(&dropped.join("run"), "add1", "eval", "exact_match").iter().map(|r| r.0).collect();
    assert_eq!(steps, vec![0, 1, 2, 4, 8, 10, 12, 13, 14, 16, 20, 28, 30, 32, 40]);
}

#[test]
fn evaluating_every_step_does_not_change_training() {
    let tmp = tempfile::tempdir().unwrap();
    let schedule = "[[schedule]]\nstep = 15\ndrop = [\"add2\"]\n[[schedule]]\nstep = 30\nrevive = [\"add2\"]\n";
    // add2's finite training set is evaluated too (split = train) at every evaluation.
    let text = two_tasks(schedule).replace("digits = 2\n", "digits = 2\ntrain_examples = 32\n");
    let sparse = run_config(&tmp.path().join("sparse"), &text.replace("every = 10", "every = 100"), &[]);
    let dense = run_config(&tmp.path().join("dense"), &text.replace("every = 10", "every = 1"), &[]);
    assert_eq!(fingerprint(&sparse), fingerprint(&dense));
    assert_eq!(metric(&tmp.path().join("dense/run"), "add1", "eval", "exact_match").len(), 41);
    assert_eq!(metric(&tmp.path().join("dense/run"), "add2", "train", "exact_match").len(), 41);
    // Restricting the choice to the answer tokens can only turn a wrong
    // answer right, never a right one wrong.
    let dense = tmp.path().join("dense/run");
    for (task, split) in [("add1", "eval"), ("add2", "eval"), ("add2", "train")] {
        let (plain, restricted) =
            (metric(&dense, task, split, "exact_match"), metric(&dense, task, split, "exact_match_restricted"));
        assert_eq!(plain.len(), restricted.len());
        for (p, r) in plain.iter().zip(&restricted) {
            assert!(r.1 >= p.1, "{task} {split} step {}: restricted {} < plain {}", p.0, r.1, p.1);
        }
    }
}

#[test]
fn a_tiny_training_set_is_evaluated_on_the_train_split_and_memorized() {
    let tmp = tempfile::tempdir().unwrap();
    // add2 trains on 16 problems only and is scored on the first 12 of them;
    // add1 has no finite training set, so no train-split rows.
    let text = two_tasks("")
        .replace("digits = 2\n", "digits = 2\ntrain_examples = 16\n")
        .replace("examples = 8", "examples = 12")
        .replace("steps = 40", "steps = 300")
        .replace("every = 10", "every = 50");
    run_config(tmp.path(), &text, &[]);
    let dir = tmp.path().join("run");
    let held_out = metric(&dir, "add2", "eval", "exact_match");
    let steps: Vec<u64> = held_out.iter().map(|r| r.0).collect();
    assert_eq!(steps, vec![0, 1, 2, 4, 8, 16, 32, 50, 64, 100, 128, 150, 200, 250, 256, 300]);
    for name in
        ["loss", "token_acc", "exact_match", "exact_match_lo", "exact_match_hi", "p_correct", "exact_match_restricted"]
    {
        assert_eq!(
            metric(&dir, "add2", "train", name).iter().map(|r| r.0).collect::<Vec<_>>(),
            steps,
            "add2 train {name}"
        );
        assert!(metric(&dir, "add1", "train", name).is_empty(), "add1 has no finite training set");
    }
    // Every row's interval is the Wilson interval of k of 12 examples.
    let (exact, lo, hi) = (
        metric(&dir, "add2", "train", "exact_match"),
        metric(&dir, "add2", "train", "exact_match_lo"),
        metric(&dir, "add2", "train", "exact_match_hi"),
    );
    for ((e, l), h) in exact.iter().zip(&lo).zip(&hi) {
        let k = (e.1 * 12.0).round();
        assert!((e.1 * 12.0 - k).abs() < 1e-9, "exact match {} is not k/12", e.1);
        assert_eq!((l.1, h.1), ebb::eval::wilson_interval(k as usize, 12), "step {}", e.0);
    }
    let (train_end, held_end) = (exact.last().unwrap().1, held_out.last().unwrap().1);
    assert!(train_end >= 0.9, "16 problems were not memorized: train-split exact match {train_end}");
    assert!(train_end >= held_end, "train {train_end} < held out {held_end}");
    // The analysis keeps the two kinds of train rows apart.
    let data = ebb::analysis::RunData::load(&dir).unwrap();
    assert_eq!(data.train.keys().map(String::as_str).collect::<Vec<_>>(), ["grad_norm", "loss", "lr"]);
    assert_eq!(data.train_series("add2", "exact_match").len(), steps.len());
    assert!(data.train_series("add1", "exact_match").is_empty());
}

/// A config big enough that writing a checkpoint takes a good share of each
/// step, so that kills land inside writes.
fn heavy(steps: u64) -> String {
    two_tasks("")
        .replace("d_model = 32", "d_model = 256")
        .replace("batch_size = 16", "batch_size = 4")
        .replace("steps = 40", &format!("steps = {steps}"))
        .replace("every = 10", "every = 7")
        + "[[schedule]]\nstep = 20\ndrop = [\"add1\"]\n"
}

fn spawn_run(cfg: &Path, dir: &Path) -> std::process::Child {
    ebb()
        .arg("run")
        .arg(cfg)
        .arg("--out")
        .arg(dir)
        .args(["--quiet", "--checkpoint-every", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn resume(dir: &Path) -> std::process::Output {
    run_ok(ebb().arg("resume").arg(dir).arg("--quiet"))
}

fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("checkpoints"))
        .map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).count())
}

/// SIGKILL, the real thing.
fn kill(child: &mut std::process::Child) {
    let status = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    child.wait().unwrap();
}

#[test]
fn a_run_directory_in_use_is_refused_with_the_busy_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &two_tasks(""));
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let _held = ebb::run_dir::RunLock::take(&dir).unwrap(); // as a training process holds it
    let out = ebb().arg("run").arg(&cfg).arg("--out").arg(&dir).arg("--quiet").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(ebb::error::Error::BUSY_EXIT_CODE), "{stderr}");
    assert!(stderr.contains("in use by another ebb process") && stderr.lines().count() == 1, "{stderr}");
    assert!(!dir.join("metrics.csv").exists(), "the busy directory was written");
}

#[test]
fn resume_after_sigkill_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("heavy.toml");
    write(&cfg, &heavy(60));
    let reference = tmp.path().join("reference");
    let whole =
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&reference).args(["--quiet", "--checkpoint-every", "1"]));
    let want_metrics = std::fs::read_to_string(reference.join("metrics.csv")).unwrap();

    // One run killed three times (SIGKILL at a given step, `EBB_KILL_AT`),
    // before, at and after its drop at step 20, resumed each time.
    let dir = tmp.path().join("killed");
    killed_at(&cfg, &dir, "step:13");
    killed_at(&cfg, &dir, "step:20");
    killed_at(&cfg, &dir, "step:41");
    let resumed = resume(&dir);
    assert_eq!(fingerprint(&resumed), fingerprint(&whole));
    assert_eq!(std::fs::read_to_string(dir.join("metrics.csv")).unwrap(), want_metrics);
    assert_eq!(
        std::fs::read_to_string(dir.join("events.csv")).unwrap(),
        std::fs::read_to_string(reference.join("events.csv")).unwrap()
    );

    // Killed half way through writing a checkpoint: its temporary file is
    // left behind, the run resumes from the one before.
    for step in [17, 20] {
        let dir = tmp.path().join(format!("mid-write-{step}"));
        killed_at(&cfg, &dir, &format!("checkpoint:{step}"));
        assert!(tmp_files(&dir) > 0, "no half-written checkpoint at step {step}");
        assert_eq!(ebb::checkpoint::steps(&dir).last(), Some(&(step - 1)));
        let resumed = resume(&dir);
        assert_eq!(fingerprint(&resumed), fingerprint(&whole), "killed writing checkpoint {step}");
        assert_eq!(std::fs::read_to_string(dir.join("metrics.csv")).unwrap(), want_metrics);
    }
}

#[test]
fn a_bad_kill_point_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &two_tasks(""));
    let out = ebb()
        .arg("run")
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .env("EBB_KILL_AT", "soon")
        .output()
        .unwrap();
    assert_input_error(&out, &["EBB_KILL_AT=soon", "step:N or checkpoint:N"]);
}

/// `ebb run` of `cfg` into `dir` (checkpoint every step), or `ebb resume`
/// when `dir` holds a run, killed by SIGKILL at `kill_at` (`EBB_KILL_AT`).
fn killed_at(cfg: &Path, dir: &Path, kill_at: &str) {
    let mut cmd = ebb();
    if dir.join("config.toml").exists() {
        cmd.arg("resume").arg(dir);
    } else {
        cmd.arg("run").arg(cfg).arg("--out").arg(dir).args(["--checkpoint-every", "1"]);
    }
    let out = cmd.arg("--quiet").env("EBB_KILL_AT", kill_at).output().unwrap();
    let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
    assert_eq!(signal, Some(libc::SIGKILL), "not killed at {kill_at}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_damaged_checkpoint_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &two_tasks(""));
    let dir = tmp.path().join("run");
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&dir).args(["--quiet", "--checkpoint-every", "10"]));
    std::fs::remove_file(dir.join("summary.json")).unwrap(); // as if interrupted
    let latest = dir.join("checkpoints/step-30.bin");
    let bytes = std::fs::read(&latest).unwrap();
    for (damage, expect) in [
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("checksum", {
            let mut b = bytes.clone();
            let i = b.len() / 2;
            b[i] ^= 0x40;
            b
        }),
    ] {
        std::fs::write(&latest, &expect).unwrap();
        let out = ebb().arg("resume").arg(&dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("step-30.bin") && stderr.contains(damage) && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_fork_shares_the_trunk_and_branches_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &two_tasks(""));
    let trunk = tmp.path().join("trunk");
    let whole =
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&trunk).args(["--quiet", "--checkpoint-every", "20"]));
    // A fork with the same config continues exactly like the trunk.
    let same =
        run_ok(ebb().arg("fork").arg(&trunk).args(["--at", "20", "--out"]).arg(tmp.path().join("same")).arg("--quiet"));
    assert_eq!(fingerprint(&same), fingerprint(&whole));
    // A branch that drops add1 at the fork point.
    let branch = tmp.path().join("branch");
    let forked = run_ok(ebb().arg("fork").arg(&trunk).args(["--at", "20", "--out"]).arg(&branch).args([
        "--quiet",
        "--set",
        "schedule=[{step=20, drop=[\"add1\"]}]",
    ]));
    assert_ne!(fingerprint(&forked), fingerprint(&whole));
    let (t, b) = (metric(&trunk, "add1", "eval", "exact_match"), metric(&branch, "add1", "eval", "exact_match"));
    assert_eq!(
        t.iter().filter(|r| r.0 <= 20).collect::<Vec<_>>(),
        b.iter().filter(|r| r.0 <= 20).collect::<Vec<_>>(),
        "the trunk's history is kept"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(branch.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["drops"][0]["task"], "add1");
    assert_eq!(summary["drops"][0]["step"], 20);
    // No checkpoint at the requested step: a clear error.
    let out = ebb().arg("fork").arg(&trunk).args(["--at", "25", "--out"]).arg(tmp.path().join("x")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it has: 20"));
    // A fork refused for its config leaves nothing behind, so its retry runs.
    let retry = tmp.path().join("retry");
    for bad in ["model.n_layers=3", "schedule=[{step=500, drop=[\"add1\"]}]"] {
        let out = ebb()
            .arg("fork")
            .arg(&trunk)
            .args(["--at", "20", "--out"])
            .arg(&retry)
            .args(["--quiet", "--set", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!retry.exists(), "the refused fork ({bad}) left {} behind", retry.display());
    }
    run_ok(ebb().arg("fork").arg(&trunk).args(["--at", "20", "--out"]).arg(&retry).arg("--quiet"));
}

#[test]
fn divergence_stops_the_run_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &two_tasks("").replace("lr = 3e-3", "lr = 1e30\ngrad_clip = 0"));
    let dir = tmp.path().join("run");
    let out = ebb().arg("run").arg(&cfg).arg("--out").arg(&dir).arg("--quiet").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("diverged at step"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["diverged"]["message"].as_str().unwrap().starts_with("diverged at step"), "{summary}");
    assert_eq!(summary["finished"], false);
    // What was logged before the divergence is still there.
    assert!(!metric(&dir, "add1", "eval", "exact_match").is_empty());
    assert!(dir.join("metrics.jsonl").exists());
}

#[test]
fn a_sequential_run_reports_its_accuracy_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("seq");
    run_config(&dir, &two_tasks("[sequential]\nphase_steps = 20\n"), &[]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap()).unwrap();
    let seq = &summary["sequential"];
    assert_eq!(seq["order"], serde_json::json!(["add1", "add2"]));
    assert_eq!(seq["phase_ends"], serde_json::json!([20, 40]));
    let r = seq["accuracy_matrix"].as_array().unwrap();
    let acc = |i: usize, j: usize| r[i][j].as_f64().unwrap();
    let bwt = acc(1, 0) - acc(0, 0);
    assert!((seq["backward_transfer"].as_f64().unwrap() - bwt).abs() < 1e-12);
    assert!((seq["average_accuracy"].as_f64().unwrap() - (acc(1, 0) + acc(1, 1)) / 2.0).abs() < 1e-12);
    let events = std::fs::read_to_string(dir.join("run/events.csv")).unwrap();
    assert_eq!(events, "step,event,task,value\n0,phase,add1,\n20,phase,add2,\n");
}

/// Every other letter of a string, named "phrase" (learned on held-out
/// strings within ~250 steps), and 2-digit addition (not learned in 300);
/// `schedule` is appended.
fn phrase_and_add2(schedule: &str) -> String {
    two_tasks(schedule)
        .replace(
            "id = \"add1\"\nfamily = \"addition\"\ndigits = 1",
            "id = \"phrase\"\nfamily = \"evens\"\nlength = [4, 5]",
        )
        .replace("d_model = 32", "d_model = 64")
        .replace("batch_size = 16", "batch_size = 32")
        .replace("n_ctx = 10", "n_ctx = 32")
        .replace("steps = 40", "steps = 300")
        .replace("every = 10", "every = 20")
}

const DROP_PHRASE_WHEN_LEARNED: &str = "[[schedule]]\nwhen_learned = 0.6\nafter = 10\ndrop = [\"phrase\"]\n";

/// The step of the second of the first two evaluations in a row with exact match ≥ `threshold`.
fn first_learned(series: &[(u64, f64)], threshold: f64) -> Option<u64> {
    series.windows(2).find(|w| w[0].1 >= threshold && w[1].1 >= threshold).map(|w| w[1].0)
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_learned_trigger_fires_after_two_evaluations_at_the_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("learned");
    run_config(&dir, &phrase_and_add2(DROP_PHRASE_WHEN_LEARNED), &[]);
    let run = dir.join("run");
    let learned = first_learned(&metric(&run, "phrase", "eval", "exact_match"), 0.6)
        .expect("the phrase task is learned in 300 steps");
    let fired = learned + 10;
    let events = std::fs::read_to_string(run.join("events.csv")).unwrap();
    assert_eq!(events, format!("step,event,task,value\n{learned},learned,phrase,0.6\n{fired},drop,phrase,\n"));
    // Evaluated densely after the resolved event, as after a fixed one.
    let steps: Vec<u64> = metric(&run, "phrase", "eval", "exact_match").iter().map(|r| r.0).collect();
    for d in [0, 1, 2, 4, 8] {
        assert!(steps.contains(&(fired + d)), "no evaluation {d} steps after the event at {fired}: {steps:?}");
    }
    let s = summary(&run);
    assert_eq!(s["drops"][0]["step"], fired);
    assert_eq!(s["drops"][0]["learned_threshold"], 0.6);
    assert_eq!(s["learned_events"][0]["learned_at"], learned);
    assert_eq!(s["learned_events"][0]["fired_at"], fired);
    assert_eq!(s["learned_events"][0]["status"], "fired_when_learned");
    // Losses are those of the run without the event up to the drop.
    let base = tmp.path().join("base");
    run_config(&base, &phrase_and_add2(""), &[]);
    for ((da, la), (db, lb)) in train_losses(&base.join("run")).iter().zip(&train_losses(&run)) {
        assert_eq!(da, db);
        if *da <= fired {
            assert_eq!(la, lb, "step {da} differs before the drop");
        } else if *da == fired + 1 {
            assert_ne!(la, lb, "the step after the drop trained as if nothing were dropped");
        }
    }
}

#[test]
fn a_learned_trigger_fires_at_its_cap_and_never_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    // add2 never reaches exact match 1.0 in 300 steps: the cap fires.
    let capped = tmp.path().join("capped");
    let out = run_config(
        &capped,
        &phrase_and_add2("[[schedule]]\nwhen_learned = 1.0\nafter = 5\nstep = 100\ndrop = [\"add2\"]\n"),
        &[],
    );
    let events = std::fs::read_to_string(capped.join("run/events.csv")).unwrap();
    assert_eq!(events, "step,event,task,value\n100,learned_cap,add2,1\n100,drop,add2,\n");
    let s = summary(&capped.join("run"));
    assert_eq!(s["learned_events"][0]["status"], "fired_at_cap");
    // Dropped below its threshold: reported as not learned, outside every fit.
    let d = &s["drops"][0];
    assert_eq!(
        (d["status"].clone(), d["learned_threshold"].clone()),
        (serde_json::json!("not_learned"), serde_json::json!(1.0))
    );
    assert!(
        d["half_life"].is_null()
            && d["aurc"].is_null()
            && d["fits"].is_null()
            && d["noise_floor"].is_null()
            && d["retention"].as_array().unwrap().is_empty(),
        "{d}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("dropped add2 at step 100: not learned (accuracy 0.000 < 1.0 at the drop)"), "{stdout}");

    // Without a cap the event never fires, and the summary says so.
    let never = tmp.path().join("never");
    let out = run_config(&never, &phrase_and_add2("[[schedule]]\nwhen_learned = 1.0\ndrop = [\"add2\"]\n"), &[]);
    assert_eq!(std::fs::read_to_string(never.join("run/events.csv")).unwrap(), "step,event,task,value\n");
    let s = summary(&never.join("run"));
    assert_eq!(s["learned_events"][0]["status"], "never_learned");
    assert!(s["learned_events"][0]["fired_at"].is_null());
    assert!(String::from_utf8_lossy(&out.stdout).contains("schedule[0] (when_learned, add2): never fired"));
}

#[test]
fn a_fixed_step_drop_below_analysis_learned_is_not_learned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fixed");
    let out = run_config(&dir, &two_tasks("[[schedule]]\nstep = 12\ndrop = [\"add2\"]\n"), &[]);
    let d = &summary(&dir.join("run"))["drops"][0];
    assert_eq!(d["status"], "not_learned");
    assert_eq!(d["learned_threshold"], 0.9);
    assert!(d["half_life"].is_null(), "{d}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dropped add2 at step 12: not learned (accuracy") && stdout.contains("< 0.9 at the drop)"),
        "{stdout}"
    );
}

/// A copy of `run` as if killed after checkpoint `step` was written.
fn killed_copy(run: &Path, to: &Path, step: u64) {
    assert!(Command::new("cp").arg("-r").arg(run).arg(to).status().unwrap().success());
    std::fs::remove_file(to.join("summary.json")).unwrap();
    for s in ebb::checkpoint::steps(to).into_iter().filter(|&s| s > step) {
        std::fs::remove_file(ebb::checkpoint::path_for(to, s)).unwrap();
    }
}

#[test]
fn resume_across_a_learned_trigger_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &phrase_and_add2(DROP_PHRASE_WHEN_LEARNED));
    let reference = tmp.path().join("reference");
    let whole =
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&reference).args(["--quiet", "--checkpoint-every", "1"]));
    let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let series = metric(&reference, "phrase", "eval", "exact_match");
    let learned = first_learned(&series, 0.6).unwrap();
    let first_qualifying = series.iter().rev().find(|p| p.0 < learned).unwrap().0;
    // Killed between the two qualifying evaluations, and after the condition
    // held but before the event fired.
    for step in [(first_qualifying + learned) / 2, learned, learned + 5] {
        let dir = tmp.path().join(format!("killed-{step}"));
        killed_copy(&reference, &dir, step);
        let resumed = resume(&dir);
        assert_eq!(fingerprint(&resumed), fingerprint(&whole), "killed after step {step}");
        assert_eq!(read(&dir, "metrics.csv"), read(&reference, "metrics.csv"), "killed after step {step}");
        assert_eq!(read(&dir, "events.csv"), read(&reference, "events.csv"), "killed after step {step}");
    }
    // A real SIGKILL once the first qualifying evaluation is done, resumed.
    let dir = tmp.path().join("sigkill");
    let mut child = spawn_run(&cfg, &dir);
    while ebb::checkpoint::steps(&dir).last().is_none_or(|&s| s <= first_qualifying) {
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(&mut child);
    let resumed = resume(&dir);
    assert_eq!(fingerprint(&resumed), fingerprint(&whole));
    assert_eq!(read(&dir, "metrics.csv"), read(&reference, "metrics.csv"));
    assert_eq!(read(&dir, "events.csv"), read(&reference, "events.csv"));
}

#[test]
fn a_run_ends_end_after_events_steps_after_its_learned_drop_and_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    let text = phrase_and_add2(DROP_PHRASE_WHEN_LEARNED);
    write(&cfg, &text.replace("[train]\n", "[train]\nend_after_events = 30\n"));
    let ended = tmp.path().join("ended");
    let whole =
        run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&ended).args(["--quiet", "--checkpoint-every", "1"]));
    let full = tmp.path().join("full");
    run_config(&full, &text, &[]);
    let full = full.join("run");
    let fired = summary(&full)["drops"][0]["step"].as_u64().unwrap();
    let end = fired + 30;
    assert!(end < 300, "the phrase task is learned early enough to end before train.steps");
    let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert!(read(&ended, "events.csv").ends_with(&format!("{fired},drop,phrase,\n{end},end,all,\n")));
    let s = summary(&ended);
    assert_eq!(
        (s["steps"].as_u64(), s["last_logged_step"].as_u64(), s["finished"].as_bool()),
        (Some(end), Some(end), Some(true))
    );
    // Up to its end it is the run that goes on to train.steps, and it writes its final weights there.
    let (ended_losses, full_losses) = (train_losses(&ended), train_losses(&full));
    assert_eq!(ended_losses.last().unwrap().0, end);
    assert_eq!(ended_losses[..], full_losses[..ended_losses.len()]);
    assert!(ebb::weights::path_for(&ended, end).exists());
    assert!(ebb::checkpoint::steps(&ended).iter().all(|&s| s < end));
    // Killed after the drop, resumed: the same end, bit for bit.
    let dir = tmp.path().join("killed");
    killed_copy(&ended, &dir, fired + 10);
    assert_eq!(fingerprint(&resume(&dir)), fingerprint(&whole));
    assert_eq!(read(&dir, "metrics.csv"), read(&ended, "metrics.csv"));
    assert_eq!(read(&dir, "events.csv"), read(&ended, "events.csv"));
}

#[test]
fn frozen_tensors_keep_their_initial_values_and_the_rest_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let text = two_tasks("").replace("[train]\n", "[train]\nfrozen = [\"wte\", \"h0.*\"]\n");
    let dir = tmp.path().join("frozen");
    run_config(&dir, &text, &["--weights-every", "1000"]);
    let run = dir.join("run");
    let experiment = ebb::experiment::Experiment::load(&run.join("config.toml"), &[]).unwrap();
    let layout = ebb::model::ParamLayout::new(&experiment.config.model_shape(experiment.suite.vocab.len()));
    let steps = experiment.config.train.steps;
    let first = ebb::weights::read_weights(&ebb::weights::path_for(&run, 0), &layout).unwrap();
    let last = ebb::weights::read_weights(&ebb::weights::path_for(&run, steps), &layout).unwrap();
    for t in &layout.tensors {
        let r = t.view.offset..t.view.offset + t.view.len;
        let is_frozen = t.name == "wte" || t.name.starts_with("h0.");
        assert_eq!(first[r.clone()] == last[r], is_frozen, "{}: frozen {is_frozen}", t.name);
    }
    assert!(layout.tensors.iter().any(|t| t.name.starts_with("h1.")), "a block stays trainable");
    // A pattern naming no tensor, and freezing everything, are errors naming the key.
    for (pattern, value) in [("[\"h9.*\"]", "\"h9.*\""), ("[\"*\"]", "[\"*\"]")] {
        let cfg = tmp.path().join("bad.toml");
        write(&cfg, &two_tasks("").replace("[train]\n", &format!("[train]\nfrozen = {pattern}\n")));
        let out = ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join("bad")).output().unwrap();
        assert_input_error(&out, &["bad.toml", &format!("`train.frozen` = {value}")]);
    }
}

#[test]
fn a_learned_sequential_phase_ends_after_its_task_is_learned_and_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("exp.toml");
    write(&cfg, &phrase_and_add2("[sequential]\nphase_steps = 150\nwhen_learned = 0.6\nafter = 10\n"));
    let run = tmp.path().join("run");
    let whole = run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(&run).args(["--quiet", "--checkpoint-every", "1"]));
    let series = metric(&run, "phrase", "eval", "exact_match");
    let learned = first_learned(&series, 0.6).expect("phrase, trained alone, is learned");
    assert!(learned + 10 < 150, "phrase learned at {learned}: the test needs it learned before the cap");
    let next = learned + 10;
    let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(
        read(&run, "events.csv"),
        format!("step,event,task,value\n0,phase,phrase,\n{learned},learned,phrase,0.6\n{next},phase,add2,\n")
    );
    let seq = &summary(&run)["sequential"];
    assert_eq!(seq["phase_ends"], serde_json::json!([next, 300]));
    assert_eq!(
        (seq["learned"].clone(), seq["learned_threshold"].clone()),
        (serde_json::json!([true]), serde_json::json!(0.6))
    );
    assert!(
        String::from_utf8_lossy(&whole.stdout)
            .contains("sequential, accuracy at each phase's end (learned: ≥ 0.6): phrase "),
        "{}",
        String::from_utf8_lossy(&whole.stdout)
    );
    // Killed between the two qualifying evaluations and before the phase changed.
    let first_qualifying = series.iter().rev().find(|p| p.0 < learned).unwrap().0;
    for step in [(first_qualifying + learned) / 2, learned + 5] {
        let dir = tmp.path().join(format!("killed-{step}"));
        killed_copy(&run, &dir, step);
        assert_eq!(fingerprint(&resume(&dir)), fingerprint(&whole), "killed after step {step}");
        assert_eq!(read(&dir, "events.csv"), read(&run, "events.csv"), "killed after step {step}");
    }
}

#[test]
fn learned_trigger_config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[[schedule]]\nwhen_learned = 0.0\ndrop = [\"add1\"]\n", "schedule[0].when_learned", "0"),
        ("[[schedule]]\nwhen_learned = 1.5\ndrop = [\"add1\"]\n", "schedule[0].when_learned", "1.5"),
        ("[[schedule]]\ndrop = [\"add1\"]\n", "schedule[0].step", "(missing)"),
        ("[[schedule]]\nstep = 10\nafter = 500\ndrop = [\"add1\"]\n", "schedule[0].after", "500"),
        ("[[schedule]]\nwhen_learned = 0.9\nstep = 40\ndrop = [\"add1\"]\n", "schedule[0].step", "40"),
        ("[analysis]\nlearned = 0\n", "analysis.learned", "0"),
        ("[sequential]\nphase_steps = 20\nwhen_learned = 2.0\n", "sequential.when_learned", "2"),
        ("[sequential]\nphase_steps = 20\nafter = 5\n", "sequential.after", "5"),
        ("[sequential]\nphase_steps = 20\nwhen_learned = 0.9\nafter = 20\n", "sequential.after", "20"),
    ];
    for (extra, key, value) in cases {
        let cfg = tmp.path().join("bad.toml");
        write(&cfg, &two_tasks(extra));
        let out = ebb().arg("run").arg(&cfg).arg("--out").arg(tmp.path().join("run")).output().unwrap();
        assert_input_error(&out, &["bad.toml", &format!("`{key}` = {value}")]);
    }
}

/// The header of a safetensors file: tensor name → (dtype, shape).
fn safetensors_header(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<u64>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(),
                ),
            )
        })
        .collect()
}

#[test]
fn weights_and_batches_go_out_as_safetensors_and_weights_come_back_in() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let out = run_config(&first, &two_tasks(""), &["--weights-every", "15", "--dump-batches"]);
    let run = first.join("run");
    let written = files_in(&run.join("weights"));
    assert_eq!(
        written,
        ["step-0.safetensors", "step-15.safetensors", "step-30.safetensors", "step-40.safetensors"],
        "step 0, every 15, the end"
    );
    let weights = safetensors_header(&run.join("weights/step-40.safetensors"));
    // d_model 32, 2 layers, n_ctx 10, tied embeddings: every tensor under its layout name.
    assert_eq!(weights["h1.attn.qkv.w"], ("F32".to_string(), vec![96, 32]));
    assert_eq!(weights["wpe"], ("F32".to_string(), vec![10, 32]));
    assert!(
        weights.contains_key("h0.ln1.w") && weights.contains_key("lnf.b") && !weights.contains_key("unembed.w"),
        "{weights:?}"
    );
    assert_eq!(std::fs::read_dir(run.join("batches")).unwrap().count(), 40, "one batch per step");
    let batch = safetensors_header(&run.join("batches/step-39.safetensors"));
    assert_eq!(batch["tokens"].0, "I32");
    assert_eq!(batch["mask"].0, "F32");
    assert!(run.join("eval/add1.safetensors").is_file() && run.join("eval/add2.safetensors").is_file());
    // Dumping changes nothing; a run from the first run's step-0 weights trains to the same bits.
    let plain = run_config(&tmp.path().join("plain"), &two_tasks(""), &[]);
    assert_eq!(fingerprint(&plain), fingerprint(&out));
    let again = run_config(
        &tmp.path().join("again"),
        &two_tasks(""),
        &["--init-from", run.join("weights/step-0.safetensors").to_str().unwrap()],
    );
    assert_eq!(fingerprint(&again), fingerprint(&out));
    // Weights of another model are refused before anything is written.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    write(&other.join("exp.toml"), &two_tasks("").replace("d_model = 32", "d_model = 48"));
    let refused = ebb()
        .arg("run")
        .arg(other.join("exp.toml"))
        .arg("--out")
        .arg(other.join("run"))
        .arg("--init-from")
        .arg(run.join("weights/step-0.safetensors"))
        .arg("--quiet")
        .output()
        .unwrap();
    let err = assert_input_error(&refused, &["step-0.safetensors", "tensor `wte`", "[15, 32]", "[15, 48]"]);
    assert!(!other.join("run").exists(), "{err}");
}

#[test]
fn every_run_keeps_its_weights_before_each_event_and_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let schedule = "[[schedule]]\nstep = 15\ndrop = [\"add2\"]\n[[schedule]]\nstep = 30\nrevive = [\"add2\"]\n";
    run_config(&tmp.path().join("dropped"), &two_tasks(schedule), &[]);
    let run = tmp.path().join("dropped/run");
    let written = files_in(&run.join("weights"));
    assert_eq!(
        written,
        ["step-15.safetensors", "step-30.safetensors", "step-40.safetensors"],
        "just before the drop, at the end of its window (the revive), at the end"
    );
    // Step 15's weights are those before the drop took effect: the same bits
    // as a run that never drops, written there by --weights-every.
    run_config(&tmp.path().join("kept"), &two_tasks(""), &["--weights-every", "15"]);
    let kept = tmp.path().join("kept/run");
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&run.join("weights/step-15.safetensors")), bytes(&kept.join("weights/step-15.safetensors")));
    assert_ne!(bytes(&run.join("weights/step-30.safetensors")), bytes(&kept.join("weights/step-30.safetensors")));
}
