//! Sweeps on real processes: parallel, killed and resumed, sharded.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn dry_run_ids(extra: &[&str], out: &Path) -> Vec<String> {
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(out).arg("--dry-run").args(extra));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_sweep_resumes_to_the_same_aggregate_and_shards_partition_it() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&whole).args(["--jobs", "2", "--quiet"]));
    let want = sweep_aggregate(&whole);
    assert_eq!(want[0].lines().count(), 13, "12 runs and a header:\n{}", want[0]);
    assert!(want[0].lines().skip(1).all(|l| l.contains(",finished,")), "{}", want[0]);

    // The same sweep, killed (runner and runs, SIGKILL) partway, then run again.
    let killed = tmp.path().join("killed");
    let mut child = ebb()
        .arg("sweep")
        .arg(test_sweep())
        .arg("--out")
        .arg(&killed)
        .args(["--jobs", "2", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Kill once a few runs have finished, while others are in flight.
    let finished = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.path().join("summary.json").exists()).count())
    };
    for _ in 0..600 {
        if finished(&killed) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL to the whole process group: the runner and its runs.
    let pgid = child.id() as i32;
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let done_before =
        std::fs::read_dir(&killed).unwrap().flatten().filter(|e| e.path().join("summary.json").exists()).count();
    assert!(done_before < 12, "the kill came too late to interrupt anything");
    let again = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&killed).args(["--jobs", "2"]));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains(&format!("{} already done", done_before)), "{said}");
    assert_eq!(sweep_aggregate(&killed), want, "the resumed sweep aggregates differently");

    // Shards 1/2 and 2/2 cover the plan exactly once.
    let sharded = tmp.path().join("sharded");
    let all = dry_run_ids(&[], &sharded);
    let (one, two) = (dry_run_ids(&["--shard", "1/2"], &sharded), dry_run_ids(&["--shard", "2/2"], &sharded));
    assert_eq!(all.len(), 12);
    assert!(one.iter().all(|id| !two.contains(id)), "a run is in both shards");
    let mut union: Vec<String> = one.iter().chain(&two).cloned().collect();
    union.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(union, sorted);
    run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&sharded).args(["--shard", "1/2", "--quiet"]));
    let ran: Vec<String> = std::fs::read_dir(&sharded)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("summary.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ran.len(), one.len());
    assert!(ran.iter().all(|id| one.contains(id)), "shard 1/2 ran a run of shard 2/2");
    run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&sharded).args(["--shard", "2/2", "--quiet"]));
    assert_eq!(sweep_aggregate(&sharded), want);
}

/// Writes a sweep file next to a copy of the smoke experiment; asserts exit 2,
/// one line naming `expect`, and that nothing ran.
fn rejects(sweep: &str, extra: &[&str], expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tasks/exp-smoke.toml"), tmp.path().join("exp-smoke.toml")).unwrap();
    let path = tmp.path().join("sweep.toml");
    write(&path, sweep);
    let out_dir = tmp.path().join("out");
    let out = ebb().arg("sweep").arg(&path).arg("--out").arg(&out_dir).args(extra).output().unwrap();
    assert_input_error(&out, expect);
    assert!(!out_dir.exists(), "something ran");
}

const HEAD: &str = "name = \"bad\"\nbase = \"exp-smoke.toml\"\n";

#[test]
fn bad_sweeps_are_refused_before_anything_runs() {
    rejects(&format!("{HEAD}[grid]\n\"train.nope\" = [1, 2]\n"), &[], &["nope"]);
    rejects(&format!("{HEAD}[grid]\n\"train.lr\" = []\n"), &[], &["grid.train.lr", "empty"]);
    rejects(&format!("{HEAD}[grid]\n\"train.lr\" = [\"fast\"]\n"), &[], &["train.lr", "fast"]);
    rejects(
        &format!("{HEAD}[[zip]]\n\"model.d_model\" = [32, 64]\n\"model.n_heads\" = [4]\n"),
        &[],
        &["zip[0]", "equal lengths"],
    );
    rejects(&format!("{HEAD}seeds = [1]\n"), &["--shard", "3/2"], &["--shard 3/2"]);
    rejects(&format!("{HEAD}seeds = []\n"), &[], &["seeds", "empty"]);
}

/// A real run's resolved config, made 2000 steps long.
fn config_2000_steps(tmp: &Path) -> String {
    let base = tmp.join("base");
    run_ok(ebb().arg("run").arg(root().join("tasks/exp-smoke.toml")).arg("--out").arg(&base).args([
        "--quiet",
        "--set",
        "train.steps=2",
        "--set",
        "schedule=[]",
    ]));
    let config =
        std::fs::read_to_string(base.join("config.toml")).unwrap().replace("\nsteps = 2\n", "\nsteps = 2000\n");
    assert!(config.contains("\nsteps = 2000\n"), "{config}");
    config
}

/// A run directory with synthetic logs over 2000 steps: `tasks` (id,
/// initial weight), `events` (events.csv rows), exact match `accuracy(task,
/// step)` at every 50th step and 1, 2, 4, … steps after the start and after
/// each event, as a run evaluates; `config` is a real run's config.toml.
fn synthetic_run(
    dir: &Path,
    config: &str,
    params: u64,
    tasks: &[(&str, f64)],
    events: &str,
    accuracy: impl Fn(&str, u64) -> f64,
) {
    std::fs::create_dir_all(dir).unwrap();
    write(&dir.join("config.toml"), config);
    write(&dir.join("model.json"), &format!("{{\"params\": {params}, \"suite\": \"synthetic\"}}\n"));
    let rows: String = tasks.iter().map(|(id, w)| format!("{id},copy,0,128,{w}\n")).collect();
    write(&dir.join("tasks.csv"), &format!("task,family,chance,eval_examples,weight\n{rows}"));
    write(&dir.join("events.csv"), &format!("step,event,task,value\n{events}"));
    let starts: Vec<u64> =
        std::iter::once(0).chain(events.lines().map(|l| l.split(',').next().unwrap().parse().unwrap())).collect();
    let mut steps: Vec<u64> = (0..=2000)
        .step_by(50)
        .chain(starts.iter().flat_map(|&e| std::iter::once(e).chain((0..11).map(move |k| e + (1 << k)))))
        .filter(|&s| s <= 2000)
        .collect();
    steps.sort_unstable();
    steps.dedup();
    let mut metrics = String::from("step,task,split,metric,value\n");
    for s in steps {
        for (task, _) in tasks {
            metrics.push_str(&format!("{s},{task},eval,exact_match,{}\n", accuracy(task, s)));
        }
    }
    write(&dir.join("metrics.csv"), &metrics);
}

/// Task `gone` dropped at step 500 with an exponential decay of the given
/// half-life; task `kept` at exact match 1 throughout.
fn decaying_run(dir: &Path, config: &str, params: u64, half_life: f64, ending: &str) {
    let accuracy = |task: &str, s: u64| {
        if task == "kept" || s <= 500 { 1.0 } else { (-((s - 500) as f64) * std::f64::consts::LN_2 / half_life).exp() }
    };
    synthetic_run(dir, config, params, &[("gone", 1.0), ("kept", 1.0)], &format!("500,drop,gone,\n{ending}"), accuracy);
}

#[test]
fn savings_are_timed_on_one_grid_and_undefined_without_forgetting() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_2000_steps(tmp.path());
    let dir = tmp.path().join("relearn");
    // a: first reaches 0.95 at step 64, dropped at 500, gone by 600, revived
    // at 1000, back at 0.95 at step 1016. b: dropped, never forgotten. c:
    // never comes back. d: enters training at 200 (weight 0 before), learned
    // at 200 + 128; dropped and revived like a, back after 32 steps.
    let events = "200,weight,d,1\n500,drop,a,\n500,drop,b,\n500,drop,c,\n500,drop,d,\n1000,revive,a,\n1000,revive,b,\n1000,revive,c,\n1000,revive,d,\n";
    let accuracy = |task: &str, s: u64| match task {
        "a" => {
            if s < 64 {
                0.1
            } else if s <= 500 || s >= 1016 {
                1.0
            } else {
                0.0
            }
        }
        "b" => {
            if s < 64 {
                0.1
            } else {
                1.0
            }
        }
        "c" => {
            if s < 64 {
                0.1
            } else if s <= 500 {
                1.0
            } else {
                0.0
            }
        }
        _ => {
            if s < 328 {
                0.0
            } else if s <= 500 || s >= 1032 {
                1.0
            } else {
                0.0
            }
        }
    };
    synthetic_run(&dir, &config, 1000, &[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 0.0)], events, accuracy);
    run_ok(ebb().arg("analyze").arg(&dir));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let revive =
        |task: &str| summary["drops"].as_array().unwrap().iter().find(|d| d["task"] == task).unwrap()["revive"].clone();
    let a = revive("a");
    assert_eq!(
        (a["status"].as_str(), a["steps_first_learned"].as_u64(), a["steps_to_regain"].as_u64()),
        (Some("regained"), Some(64), Some(16)),
        "{a}"
    );
    assert!(
        (a["savings"].as_f64().unwrap() - 0.75).abs() < 1e-12
            && (a["relearn_ratio"].as_f64().unwrap() - 0.25).abs() < 1e-12,
        "{a}"
    );
    let b = revive("b");
    assert_eq!(b["status"], "not_forgotten", "{b}");
    assert!(b["savings"].is_null() && b["relearn_ratio"].is_null(), "no forgetting is not instant relearning: {b}");
    let c = revive("c");
    assert_eq!((c["status"].as_str(), c["censored_at"].as_u64()), (Some("not_regained"), Some(1000)), "{c}");
    assert!(c["savings"].is_null(), "{c}");
    let d = revive("d");
    assert_eq!(
        (d["entered_training"].as_u64(), d["steps_first_learned"].as_u64(), d["steps_to_regain"].as_u64()),
        (Some(200), Some(128), Some(32)),
        "timed from entering training: {d}"
    );
    assert!((d["savings"].as_f64().unwrap() - 0.75).abs() < 1e-12, "{d}");
}

#[test]
fn an_aggregate_counts_censored_half_lives_and_fits_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_2000_steps(tmp.path());
    // Half-life = 0.6 · params^0.5 with a fixed scatter; the window after the
    // drop is 1500 steps, so the largest models' half-lives are censored.
    let sweep = tmp.path().join("sweep");
    let mut manifest = String::from("id,model.d_model,seed\n");
    let mut censored = 0;
    for k in 0..6u32 {
        let params = 10_000 * 4u64.pow(k);
        for seed in 1..=3u32 {
            let half_life =
                0.6 * (params as f64).sqrt() * (0.15 * (k as f64 * 12.9898 + seed as f64 * 78.233).sin()).exp();
            censored += (half_life > 1500.0) as usize;
            let id = format!("r{k}s{seed}");
            decaying_run(&sweep.join(&id), &config, params, half_life, "");
            run_ok(ebb().arg("analyze").arg(sweep.join(&id)));
            manifest.push_str(&format!("{id},{k},{seed}\n"));
        }
    }
    assert!(censored >= 3, "the synthetic sweep censors the largest size");
    // A diverged run and a failed one: listed, left out of every fit.
    decaying_run(&sweep.join("div"), &config, 10_000, 1.0, "900,diverged,all,loss\n");
    run_ok(ebb().arg("analyze").arg(sweep.join("div")));
    std::fs::create_dir_all(sweep.join("bad")).unwrap();
    write(&sweep.join("bad/failed.txt"), "config refused\n");
    manifest.push_str("div,0,9\nbad,0,10\n");
    write(&sweep.join("manifest.csv"), &manifest);
    run_ok(ebb().arg("aggregate").arg(&sweep));

    let scaling: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep.join("scaling.json")).unwrap()).unwrap();
    let all = &scaling["conditions"]["all"];
    let law = &all["half_life_law"];
    assert_eq!(law["points"], 18, "every finished run's drop is one point: {law}");
    assert_eq!(law["censored"].as_u64().unwrap() as usize, censored, "{law}");
    let exponent = law["exponent"].as_f64().unwrap();
    assert!((exponent - 0.5).abs() < 0.05, "the censored fit recovers the exponent 0.5: {exponent}");
    let largest = all["by_params"].as_array().unwrap().last().unwrap();
    assert_eq!(largest["censored"].as_u64().unwrap() as usize, censored.min(3), "{largest}");
    let excluded: Vec<(String, String)> = scaling["excluded_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().into(), e["status"].as_str().unwrap().into()))
        .collect();
    assert_eq!(excluded, vec![("div".to_string(), "diverged".to_string()), ("bad".to_string(), "failed".to_string())]);

    // Per run: the censored drop is counted; per drop: censored at the window, fits with their status.
    let sweep_csv = std::fs::read_to_string(sweep.join("sweep.csv")).unwrap();
    let head: Vec<&str> = sweep_csv.lines().next().unwrap().split(',').collect();
    let col =
        |name: &str| head.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name} in {head:?}"));
    let row = |id: &str| {
        sweep_csv
            .lines()
            .find(|l| l.starts_with(&format!("{id},")))
            .unwrap()
            .split(',')
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("r5s1")[col("censored")], "1");
    assert_eq!(row("r5s1")[col("half_life_median_status")], "above");
    assert_eq!(row("r0s1")[col("censored")], "0");
    assert_eq!(row("div")[col("status")], "diverged");
    let drops_csv = std::fs::read_to_string(sweep.join("drops.csv")).unwrap();
    let dhead: Vec<&str> = drops_csv.lines().next().unwrap().split(',').collect();
    let dcol = |name: &str| dhead.iter().position(|h| *h == name).unwrap();
    let r5: Vec<&str> = drops_csv.lines().find(|l| l.starts_with("r5s1,")).unwrap().split(',').collect();
    assert_eq!((r5[dcol("half_life_status")], r5[dcol("half_life")]), ("censored", "1500"));
    let r1: Vec<&str> = drops_csv.lines().find(|l| l.starts_with("r1s1,")).unwrap().split(',').collect();
    assert_eq!(r1[dcol("exp_status")], "ok", "{r1:?}");
    assert_eq!(r1[dcol("preferred")], "exponential", "{r1:?}");
    let tau: f64 = r1[dcol("exp_tau")].parse().unwrap();
    let want = 0.6 * 40_000f64.sqrt() * (0.15 * (12.9898f64 + 78.233).sin()).exp() / std::f64::consts::LN_2;
    assert!((tau / want - 1.0).abs() < 0.02, "τ {tau} vs {want}");
    // The kept task gives the noise floor: no decay.
    assert_eq!(r1[dcol("noise_floor_aurc")], "1");
}
