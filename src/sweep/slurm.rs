//! Sweeps on a Slurm cluster: one job array, array task `i` running shard
//! `i+1/n` of the plan through `ebb sweep --shard`, so the cluster runs the
//! same code as a local sweep and nothing sits in between.
//!
//! What a submission leaves in the sweep directory:
//! - `slurm/sweep.sbatch`, the batch script (readable, editable, submittable by hand);
//! - `slurm/<job>_<task>.out`, each array task's output;
//! - `slurm/jobs.csv`, one row per submission: job id, time, array, tasks.
//!
//! Resubmitting is safe: only array tasks whose shard still has unfinished
//! runs are submitted, each skips finished runs and resumes interrupted ones,
//! and a run another process is training (it holds the run's lock) is left to it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Plan, RunStatus};
use crate::error::{Error, Result};

/// How to submit: the `--slurm` flags of `ebb sweep`.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// Array tasks running at once (`%N`); default: as many as Slurm allows.
    pub array_parallel: Option<usize>,
    /// Array size `n`; default: one task per run, at most 1000.
    pub array_tasks: Option<usize>,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    /// Further `#SBATCH` options, verbatim (e.g. `--mem=2G`).
    pub sbatch_args: Vec<String>,
    /// Block until the array ends (`sbatch --wait`).
    pub wait: bool,
    /// Write the script and print the command; submit nothing.
    pub dry_run: bool,
    /// Every run's `--device` (`cpu`, `cuda` or `auto`).
    pub device: &'static str,
    /// The sweep's `--set` overrides, passed on to every array task.
    pub overrides: Vec<String>,
}

/// What `submit` did.
#[derive(Debug)]
pub struct Submission {
    pub script: PathBuf,
    /// The array indices submitted (empty: nothing was missing).
    pub indices: Vec<usize>,
    pub array_tasks: usize,
    /// Runs still to do, and runs another process is training now.
    pub missing_runs: usize,
    pub running_runs: usize,
    /// The job id (none for a dry run or when nothing was missing).
    pub job: Option<String>,
}

/// `0-3,5,7-9`: sorted indices as Slurm array ranges.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { indices[i].to_string() } else { format!("{}-{}", indices[i], indices[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// `path` quoted for bash.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A path the batch script can name in `#SBATCH` lines and reach from a
/// compute node: absolute, existing, and free of the characters Slurm or the
/// `#SBATCH` parser treat specially.
fn reachable(what: &str, path: &Path) -> Result<PathBuf> {
    nameable(what, path)?;
    let abs = path
        .canonicalize()
        .map_err(|e| Error::input(format!("{what} {}: the batch script cannot reach it: {e}", path.display())))?;
    nameable(what, &abs)?;
    Ok(abs)
}

fn nameable(what: &str, path: &Path) -> Result<()> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::input(format!("{what} {}: the batch script cannot reach it: {e}", path.display())))?;
    match abs.to_string_lossy().chars().find(|c| c.is_whitespace() || matches!(c, '%' | '\'' | '"' | '\\' | '$' | '`'))
    {
        Some(c) => Err(Error::input(format!(
            "{what} {}: the batch script cannot name a path containing {c:?}; choose another directory",
            abs.display()
        ))),
        None => Ok(()),
    }
}

/// The first program called `name` on the PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The batch script for `n` array tasks over the sweep in `out`.
fn batch_script(
    plan: &Plan,
    sweep_file: &Path,
    out: &Path,
    exe: &Path,
    n: usize,
    indices: &[usize],
    opts: &SlurmOptions,
) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# ebb sweep: {} runs as a Slurm job array of {n} tasks, written by `ebb sweep --slurm`.\n",
        plan.runs.len()
    ));
    s.push_str(&format!("# Array task i runs shard i+1/{n} of the plan: finished runs are skipped and interrupted\n"));
    s.push_str("# ones resume from their checkpoints, so submitting again is always safe.\n");
    s.push_str(&format!("# Submit by hand: sbatch {}\n", quote(&out.join("slurm/sweep.sbatch"))));
    let job_name: String = plan
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    s.push_str(&format!("#SBATCH --job-name=ebb-{job_name}\n"));
    let parallel = opts.array_parallel.map(|p| format!("%{p}")).unwrap_or_default();
    s.push_str(&format!("#SBATCH --array={}{parallel}\n", array_spec(indices)));
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", opts.cpus_per_task));
    s.push_str(&format!("#SBATCH --chdir={}\n", out.display()));
    s.push_str(&format!("#SBATCH --output={}/slurm/%A_%a.out\n", out.display()));
    if let Some(p) = &opts.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &opts.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    // Runs on `--device cuda` need a GPU each; an explicit GPU request wins.
    let asks_for_gpu = |a: &String| ["--gres", "--gpus", "-G"].iter().any(|p| a.starts_with(p));
    if opts.device == "cuda" && !opts.sbatch_args.iter().any(asks_for_gpu) {
        s.push_str("#SBATCH --gres=gpu:1\n");
    }
    for a in &opts.sbatch_args {
        s.push_str(&format!("#SBATCH {a}\n"));
    }
    s.push_str("set -eu\n");
    s.push_str(&format!(
        "exec {} sweep {} --out {} --shard \"$((SLURM_ARRAY_TASK_ID + 1))/{n}\" --jobs 1 --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\" --device {}{} --no-aggregate --quiet\n",
        quote(exe),
        quote(sweep_file),
        quote(out),
        opts.cpus_per_task,
        opts.device,
        opts.overrides.iter().map(|o| format!(" --set {}", quote(Path::new(o)))).collect::<String>()
    ));
    s
}

/// Writes the batch script for the runs of `plan` still missing in `out`
/// and submits it as one job array (unless a dry run or nothing is missing).
/// Prepares `out` (`super::prepare`) once the options and paths are known
/// to be good. Any refusal is an error naming its cause, with nothing submitted.
pub fn submit(plan: &Plan, sweep_file: &Path, out: &Path, opts: &SlurmOptions) -> Result<Submission> {
    let sbatch = if opts.dry_run {
        None
    } else {
        Some(on_path("sbatch").ok_or_else(|| Error::input("--slurm: no `sbatch` on the PATH; is this a Slurm login node? (--dry-run writes the batch script without it)"))?)
    };
    for (flag, v) in [
        ("--cpus-per-task", Some(opts.cpus_per_task)),
        ("--array-parallel", opts.array_parallel),
        ("--array-tasks", opts.array_tasks),
    ] {
        if v == Some(0) {
            return Err(Error::input(format!("{flag} 0: must be at least 1")));
        }
    }
    let sweep_file = reachable("sweep file", sweep_file)?;
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find the ebb executable: {e}")))?;
    let exe = reachable("ebb executable", &exe)?;
    nameable("sweep directory", out)?;
    super::prepare(plan, out)?;
    let out = reachable("sweep directory", out)?;

    let n = opts.array_tasks.unwrap_or(plan.runs.len().min(1000)).min(plan.runs.len());
    let (mut missing_runs, mut running_runs) = (0, 0);
    let mut wanted = vec![false; n];
    for (k, r) in plan.runs.iter().enumerate() {
        match RunStatus::of(&out.join(&r.id)) {
            s if s.is_done() => {}
            RunStatus::Running => running_runs += 1,
            _ => {
                missing_runs += 1;
                wanted[super::shard_of(k, n) - 1] = true; // array task i runs shard i+1
            }
        }
    }
    let indices: Vec<usize> = (0..n).filter(|&i| wanted[i]).collect();
    let dir = out.join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let script = dir.join("sweep.sbatch");
    let mut submission =
        Submission { script: script.clone(), indices, array_tasks: n, missing_runs, running_runs, job: None };
    if submission.indices.is_empty() {
        return Ok(submission);
    }
    crate::run_dir::write_atomic(
        &script,
        batch_script(plan, &sweep_file, &out, &exe, n, &submission.indices, opts).as_bytes(),
    )?;
    let Some(sbatch) = sbatch else { return Ok(submission) };
    // An earlier array still queued would run the same shards again: wait for it.
    if let Some(job) = last_job(&out)
        && let Ok(states) = queued_tasks(&job)
        && !states.is_empty()
    {
        return Err(Error::input(format!(
            "--slurm: job {job} of this sweep is still in the queue ({}); wait for it to end or `scancel {job}`, then submit again",
            describe_states(&states)
        )));
    }

    // `--parsable` prints "<job>[;cluster]" as soon as the job is queued;
    // with --wait sbatch then blocks until the array ends.
    let mut cmd = Command::new(&sbatch);
    cmd.arg("--parsable");
    if opts.wait {
        cmd.arg("--wait");
    }
    let mut child = cmd
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::input(format!("--slurm: cannot start {}: {e}", sbatch.display())))?;
    let mut first = String::new();
    let _ = BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut first);
    let job = first.trim().split(';').next().unwrap_or("").to_string();
    if !job.is_empty() {
        if opts.wait {
            eprintln!(
                "submitted job {job} (array {} of {n} tasks); waiting for it to end",
                array_spec(&submission.indices)
            );
        }
        let row = format!("{job},{},{},{n}\n", unix_seconds(), array_spec(&submission.indices).replace(',', " "));
        append(&dir.join("jobs.csv"), "job,submitted_unix,array,array_tasks\n", &row)?;
    }
    // With --wait, sbatch's exit status says whether every array task
    // succeeded; the run directories say it better (a diverged run fails
    // its task yet completes the sweep), so the caller reads those instead.
    child.wait().map_err(|e| Error::input(format!("--slurm: waiting for sbatch: {e}")))?;
    let mut err = String::new();
    let _ = child.stderr.as_mut().expect("piped").read_to_string(&mut err);
    if job.is_empty() {
        let why = err.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no job id printed");
        return Err(Error::input(format!("sbatch refused the job ({}): {why}", script.display())));
    }
    submission.job = Some(job);
    Ok(submission)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Appends `row` to a small CSV (rewritten whole, atomically), starting it with `header`.
fn append(path: &Path, header: &str, row: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| header.to_string());
    text.push_str(row);
    crate::run_dir::write_atomic(path, text.as_bytes())
}

/// Where a sweep stands, from its directory alone: `manifest.csv`, each
/// run's directory, and `slurm/jobs.csv` when it was submitted to Slurm.
pub struct SweepStatus {
    pub runs: Vec<(String, RunStatus)>,
    pub last_job: Option<String>,
}

impl SweepStatus {
    pub fn read(out: &Path) -> Result<SweepStatus> {
        let manifest = out.join("manifest.csv");
        let text = std::fs::read_to_string(&manifest).map_err(|e| {
            Error::input(format!("{}: not a sweep directory (cannot read manifest.csv: {e})", out.display()))
        })?;
        let runs = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next())
            .filter(|id| !id.is_empty())
            .map(|id| (id.to_string(), RunStatus::of(&out.join(id))))
            .collect();
        Ok(SweepStatus { runs, last_job: last_job(out) })
    }

    pub fn count(&self, status: RunStatus) -> usize {
        self.runs.iter().filter(|(_, s)| *s == status).count()
    }

    /// Every run is finished or diverged.
    pub fn complete(&self) -> bool {
        self.runs.iter().all(|(_, s)| s.is_done())
    }

    /// The report `ebb status` prints.
    pub fn describe(&self, out: &Path) -> String {
        let mut s = format!("sweep {}: {} runs", out.display(), self.runs.len());
        for status in [
            RunStatus::Finished,
            RunStatus::Running,
            RunStatus::Interrupted,
            RunStatus::Failed,
            RunStatus::Diverged,
            RunStatus::Pending,
        ] {
            s.push_str(&format!("\n  {:<12} {}", status.name(), self.count(status)));
        }
        if let Some(job) = &self.last_job {
            s.push_str(&format!(
                "\nlast Slurm job: {job}, {}; array task output in {}",
                queue_state(job),
                out.join("slurm").display()
            ));
        }
        for (id, _) in self.runs.iter().filter(|(_, st)| *st == RunStatus::Failed) {
            let why = std::fs::read_to_string(out.join(id).join("failed.txt")).unwrap_or_default();
            s.push_str(&format!("\nfailed {id}: {}", why.lines().next().unwrap_or("")));
        }
        s
    }
}

/// `job`'s array tasks still in the queue, counted by state (e.g.
/// [("pending", 8), ("running", 2)]; empty once the job has left the queue),
/// or why squeue could not say.
fn queued_tasks(job: &str) -> std::result::Result<Vec<(String, usize)>, String> {
    if on_path("squeue").is_none() {
        return Err("no squeue here".to_string());
    }
    let out = Command::new("squeue")
        .args(["-h", "-r", "-j", job, "-o", "%T"])
        .output()
        .map_err(|e| format!("squeue does not start: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // A job purged from the controller's memory is an "invalid job id".
        if err.to_lowercase().contains("invalid job id") {
            return Ok(Vec::new());
        }
        return Err(format!("squeue: {}", err.lines().next().unwrap_or("failed").trim()));
    }
    let mut states: Vec<(String, usize)> = Vec::new();
    for state in String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_lowercase()).filter(|l| !l.is_empty())
    {
        match states.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => states.push((state, 1)),
        }
    }
    Ok(states)
}

fn describe_states(states: &[(String, usize)]) -> String {
    states.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
}

/// What `squeue` says of `job`, for `ebb status`.
fn queue_state(job: &str) -> String {
    match queued_tasks(job) {
        Err(why) => format!("queue unknown ({why})"),
        Ok(states) if states.is_empty() => "no longer in the queue".to_string(),
        Ok(states) => format!("in the queue: {}", describe_states(&states)),
    }
}

/// The job id of the newest submission recorded in `out`.
fn last_job(out: &Path) -> Option<String> {
    std::fs::read_to_string(out.join("slurm/jobs.csv"))
        .ok()
        .and_then(|t| t.lines().skip(1).last().and_then(|l| l.split(',').next()).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_compress_runs_of_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[0, 2, 3, 4, 7, 9, 10]), "0,2-4,7,9-10");
        assert_eq!(array_spec(&[5]), "5");
    }
}
