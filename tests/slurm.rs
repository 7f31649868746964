//! Sweeps on a real Slurm cluster (`scripts/slurm-local.sh up` starts a
//! one-node one; `.ci/run` does so). Without Slurm the cluster test says why
//! and skips, except under CI=true or EBB_REQUIRE_SLURM=1, where it fails.
//! The bad-input tests need no cluster.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// Why there is no usable Slurm here, if there is none.
fn no_slurm() -> Option<String> {
    match Command::new("sinfo").args(["-h", "-o", "%t"]).output() {
        Err(e) => Some(format!("no sinfo on the PATH ({e}); run `scripts/slurm-local.sh up` and eval its `env`")),
        Ok(o) if !o.status.success() => Some(format!("sinfo fails: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Ok(o) if !String::from_utf8_lossy(&o.stdout).lines().any(|s| ["idle", "mix", "alloc"].contains(&s.trim())) => {
            Some(format!("no usable node: sinfo says {:?}", String::from_utf8_lossy(&o.stdout).trim()))
        }
        Ok(_) => None,
    }
}

/// True when Slurm is here; otherwise prints why and returns false, or
/// panics where the cluster test must run.
fn slurm_here() -> bool {
    let Some(why) = no_slurm() else { return true };
    assert!(!required("SLURM"), "Slurm is required here (CI=true or EBB_REQUIRE_SLURM=1) but {why}");
    eprintln!("skipping the Slurm cluster test: {why}");
    false
}

fn status_counts(dir: &Path) -> Vec<(String, usize)> {
    let o = run_ok(ebb().arg("status").arg(dir));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, n) = (w.next()?, w.next()?.parse().ok()?);
            Some((name.to_string(), n))
        })
        .collect()
}

fn count(counts: &[(String, usize)], name: &str) -> usize {
    counts.iter().find(|(n, _)| n == name).map_or_else(|| panic!("no {name} in {counts:?}"), |(_, n)| *n)
}

fn squeue_has(job: &str) -> bool {
    let o = Command::new("squeue").args(["-h", "-j", job, "-o", "%i"]).output().expect("squeue runs");
    // An unknown job id (already purged) is an error with no lines: gone.
    !String::from_utf8_lossy(&o.stdout).trim().is_empty()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_slurm_sweep_aggregates_like_a_local_one_and_resubmission_runs_only_what_is_missing() {
    if !slurm_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&local).args(["--jobs", "2", "--quiet"]));
    let want = sweep_aggregate(&local);

    // The whole sweep as one job array, two array tasks at a time.
    let whole = tmp.path().join("whole");
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&whole).args([
        "--slurm",
        "--array-parallel",
        "2",
        "--wait",
    ]));
    assert!(stdout(&o).contains("submitted job") && stdout(&o).contains("array tasks 0-11 of 12"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read_dir(whole.join("slurm"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
            .count(),
        12,
        "one output file per array task"
    );
    assert_eq!(sweep_aggregate(&whole), want, "the Slurm sweep aggregates differently from the local one");
    assert_eq!(count(&status_counts(&whole), "finished"), 12);
    // `ebb aggregate` on the directory gives the same files again.
    run_ok(ebb().arg("aggregate").arg(&whole));
    assert_eq!(sweep_aggregate(&whole), want);

    // Again, and cancel one array task while its run is training.
    let killed = tmp.path().join("killed");
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&killed).args([
        "--slurm",
        "--array-parallel",
        "2",
    ]));
    let job =
        stdout(&o).split("submitted job ").nth(1).and_then(|s| s.split(':').next()).expect("a job id").to_string();
    // While that array is queued, another submission would run its shards twice: refused.
    let again = ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&killed).arg("--slurm").output().unwrap();
    assert_input_error(&again, &[&format!("job {job} of this sweep is still in the queue")]);
    let ids: Vec<String> = std::fs::read_to_string(killed.join("manifest.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let finished = |id: &String| killed.join(id).join("summary.json").exists();
    let mut victim = None;
    wait_for("a run in training after two finished ones", Duration::from_secs(120), || {
        // A run in training has written its config but not its summary.
        victim = ids.iter().position(|id| killed.join(id).join("config.toml").exists() && !finished(id));
        ids.iter().filter(|id| finished(id)).count() >= 2 && victim.is_some()
    });
    let k = victim.unwrap();
    let task = format!("{job}_{k}");
    let cancel = Command::new("scancel").arg(&task).output().unwrap();
    assert!(cancel.status.success(), "scancel {task}: {}", String::from_utf8_lossy(&cancel.stderr));
    wait_for("the rest of the array", Duration::from_secs(180), || !squeue_has(&job));
    assert!(!finished(&ids[k]), "the cancelled run finished anyway; the cancel came too late");
    let counts = status_counts(&killed);
    assert_eq!(
        (count(&counts, "finished"), count(&counts, "interrupted"), count(&counts, "running")),
        (11, 1, 0),
        "{counts:?}"
    );
    let stamp = |id: &String| std::fs::metadata(killed.join(id).join("summary.json")).unwrap().modified().unwrap();
    let before: Vec<_> = ids.iter().filter(|id| finished(id)).map(|id| (id.clone(), stamp(id))).collect();

    // Resubmitting runs only the cancelled run's array task, resumed from its checkpoint.
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&killed).args(["--slurm", "--wait"]));
    assert!(stdout(&o).contains(&format!("1 runs to do in array tasks {k} of 12")), "{}", stdout(&o));
    assert!(
        std::fs::read_to_string(killed.join("slurm/sweep.sbatch")).unwrap().contains(&format!("#SBATCH --array={k}\n"))
    );
    for (id, t) in &before {
        assert_eq!(&stamp(id), t, "finished run {id} was run again");
    }
    assert_eq!(sweep_aggregate(&killed), want, "the resubmitted sweep aggregates differently");

    // Nothing is missing now: a third submission submits nothing.
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&killed).arg("--slurm"));
    assert!(stdout(&o).contains("nothing to submit"), "{}", stdout(&o));

    // A partition the cluster lacks: sbatch's own words, exit 2, no job.
    let o = ebb()
        .arg("sweep")
        .arg(test_sweep())
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .args(["--slurm", "--partition", "no-such-partition"])
        .output()
        .unwrap();
    let err = assert_input_error(&o, &["sbatch refused the job"]);
    assert!(err.to_lowercase().contains("partition"), "{err}");
    assert!(!tmp.path().join("bad/slurm/jobs.csv").exists(), "a job was recorded");
}

/// `ebb sweep` with `args`: exit 2, one line containing every `expect`.
fn refused(args: &[&str], path: Option<&str>, expect: &[&str]) {
    let mut cmd = ebb();
    cmd.arg("sweep").arg(test_sweep()).args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    assert_input_error(&cmd.output().unwrap(), expect);
}

#[test]
fn bad_slurm_submissions_are_refused_before_anything_is_submitted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    refused(&["--out", o, "--slurm"], Some(empty.to_str().unwrap()), &["no `sbatch` on the PATH"]);
    assert!(!out.exists(), "the sweep directory was written");
    refused(
        &["--out", "/proc/ebb-cannot-be-here/sweep", "--slurm", "--dry-run"],
        None,
        &["/proc/ebb-cannot-be-here/sweep"],
    );
    let spaced = tmp.path().join("a sweep");
    refused(&["--out", spaced.to_str().unwrap(), "--slurm", "--dry-run"], None, &["cannot name a path containing ' '"]);
    assert!(!spaced.exists());
    refused(&["--out", o, "--slurm", "--dry-run", "--array-parallel", "0"], None, &["--array-parallel 0"]);
    refused(&["--out", o, "--slurm", "--shard", "1/2"], None, &["--shard"]);
}

#[test]
fn a_dry_run_writes_a_batch_script_one_can_read_and_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&out).args([
        "--slurm",
        "--dry-run",
        "--array-parallel",
        "3",
        "--array-tasks",
        "5",
        "--partition",
        "gpu",
        "--time",
        "1:00:00",
        "--cpus-per-task",
        "2",
        "--sbatch-arg=--mem=2G",
    ]));
    assert!(stdout(&o).contains("12 runs to do in array tasks 0-4 of 5"), "{}", stdout(&o));
    let script = std::fs::read_to_string(out.join("slurm/sweep.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-4%3\n",
        "#SBATCH --partition=gpu\n",
        "#SBATCH --time=1:00:00\n",
        "#SBATCH --cpus-per-task=2\n",
        "#SBATCH --mem=2G\n",
        "--shard \"$((SLURM_ARRAY_TASK_ID + 1))/5\"",
        " --device cpu ",
    ] {
        assert!(script.contains(line), "script lacks {line:?}:\n{script}");
    }
    assert!(!script.contains("--gres"), "a CPU sweep asks for a GPU:\n{script}");
    assert!(!out.join("slurm/jobs.csv").exists(), "a dry run submitted something");

    // Array task 2 of that script is exactly `--shard 3/5`: run it by hand.
    let exec = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    let shell = Command::new("bash")
        .arg("-c")
        .arg(exec)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_CPUS_PER_TASK", "2")
        .output()
        .unwrap();
    assert!(shell.status.success(), "{}", String::from_utf8_lossy(&shell.stderr));
    let counts = status_counts(&out);
    let shard: Vec<String> = stdout(&run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&out).args([
        "--dry-run",
        "--shard",
        "3/5",
    ])))
    .lines()
    .skip(1)
    .map(|l| l.split_whitespace().next().unwrap().to_string())
    .collect();
    assert_eq!(count(&counts, "finished"), shard.len(), "{counts:?}");
    assert_eq!(count(&counts, "pending"), 12 - shard.len(), "{counts:?}");
    // `ebb sweep FILE --status` reads the same directory the same way.
    let via_sweep = run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&out).arg("--status"));
    assert_eq!(stdout(&via_sweep), stdout(&run_ok(ebb().arg("status").arg(&out))));
}

#[test]
fn a_cuda_sweep_passes_its_device_to_every_run_and_asks_slurm_for_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let script_of = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        run_ok(ebb().arg("sweep").arg(test_sweep()).arg("--out").arg(&out).args(["--slurm", "--dry-run"]).args(extra));
        std::fs::read_to_string(out.join("slurm/sweep.sbatch")).unwrap()
    };
    let script = script_of("cuda", &["--device", "cuda"]);
    let exec = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(exec.contains(" --device cuda "), "{exec}");
    assert!(script.contains("#SBATCH --gres=gpu:1\n"), "{script}");
    // A GPU request of one's own replaces the default one.
    let script = script_of("gpus", &["--device", "cuda", "--sbatch-arg=--gpus=2"]);
    assert!(script.contains("#SBATCH --gpus=2\n") && !script.contains("--gres"), "{script}");
}
