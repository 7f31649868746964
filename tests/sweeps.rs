//! Sweeps on real processes: parallel, killed and resumed, sharded.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn dry_run_ids(extra: &[&str], out: &Path) -> Vec<String> {
    let o = run_ok(ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(out).arg("--dry-run").args(extra));
    String::from_utf8_lossy(&o.stdout).lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect()
}

#[test]
fn a_killed_sweep_resumes_to_the_same_aggregate_and_shards_partition_it() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_ok(ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(&whole).args(["--jobs", "2", "--quiet"]));
    let want = sweep_aggregate(&whole);
    assert_eq!(want[0].lines().count(), 13, "12 runs and a header:\n{}", want[0]);
    assert!(want[0].lines().skip(1).all(|l| l.contains(",finished,")), "{}", want[0]);

    // The same sweep, killed (runner and runs, SIGKILL) partway, then run again.
    let killed = tmp.path().join("killed");
    let mut child = ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(&killed).args(["--jobs", "2", "--quiet"]).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn().unwrap();
    // Kill once a few runs have finished, while others are in flight.
    let finished = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.path().join("summary.json").exists()).count());
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
    let done_before = std::fs::read_dir(&killed).unwrap().flatten().filter(|e| e.path().join("summary.json").exists()).count();
    assert!(done_before < 12, "the kill came too late to interrupt anything");
    let again = run_ok(ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(&killed).args(["--jobs", "2"]));
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
    run_ok(ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(&sharded).args(["--shard", "1/2", "--quiet"]));
    let ran: Vec<String> = std::fs::read_dir(&sharded).unwrap().flatten().filter(|e| e.path().join("summary.json").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(ran.len(), one.len());
    assert!(ran.iter().all(|id| one.contains(id)), "shard 1/2 ran a run of shard 2/2");
    run_ok(ebb().arg("sweep").arg(smoke_sweep()).arg("--out").arg(&sharded).args(["--shard", "2/2", "--quiet"]));
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
    rejects(&format!("{HEAD}[[zip]]\n\"model.d_model\" = [32, 64]\n\"model.n_heads\" = [4]\n"), &[], &["zip[0]", "equal lengths"]);
    rejects(&format!("{HEAD}seeds = [1]\n"), &["--shard", "3/2"], &["--shard 3/2"]);
    rejects(&format!("{HEAD}seeds = []\n"), &[], &["seeds", "empty"]);
}
