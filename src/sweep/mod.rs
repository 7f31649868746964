//! Sweeps: a grid of experiments expanded from one file, run in parallel,
//! resumed, sharded, and aggregated into scaling relations.
//!
//! ```toml
//! name = "smoke"
//! base = "quickstart.toml"          # experiment config, relative to this file
//! seeds = [1, 2]
//! [set]                             # the same in every run
//! "train.steps" = 600
//! [grid]                            # cartesian product over these keys
//! "train.weight_decay" = [0.0, 0.1]
//! [[zip]]                           # lists varied together
//! "model.d_model" = [32, 64]
//! "model.n_heads" = [2, 4]
//! [report]
//! heatmap = ["train.weight_decay", "model.d_model"]
//! ```
//!
//! A grid key `base` picks among several experiment files (e.g. the four
//! overlap conditions). Every run's id is a hash of its resolved config, so
//! the same config always lands in the same directory, and re-running a
//! sweep skips finished runs and resumes interrupted ones.

pub mod aggregate;
pub mod slurm;
pub mod study;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Deserialize;

use crate::config::{Config, set_key};
use crate::error::{Error, Result};
use crate::experiment::Experiment;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub name: String,
    /// The experiment config every run starts from (unless a `base` axis varies it).
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Checkpoint interval of every run (default: a tenth of its steps).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// Keys set the same way in every run (before the axes).
    #[serde(default)]
    pub set: toml::Table,
    #[serde(default)]
    pub grid: toml::Table,
    #[serde(default)]
    pub zip: Vec<toml::Table>,
    #[serde(default)]
    pub report: ReportSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Two varied keys for the heatmap of mean half-life.
    #[serde(default)]
    pub heatmap: Vec<String>,
    /// Where `ebb report` writes the study's Markdown page (relative to the
    /// sweep file; its HTML page and figures go beside it). Without it, the
    /// report goes into the sweep directory.
    #[serde(default)]
    pub study: Option<String>,
    /// Fine-tuning steps at most of the report's erasure batteries (`relearn`).
    #[serde(default)]
    pub relearn_steps: Option<u64>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One run of the plan.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub id: String,
    /// (key, value) of every varied key, in axis order; `seed` last.
    pub point: Vec<(String, String)>,
    /// The resolved config, self-contained.
    pub config: String,
}

/// The expanded sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub keys: Vec<String>,
    pub runs: Vec<PlannedRun>,
    pub report: ReportSpec,
    /// The `ebb sweep` invocation that made this plan (the sweep file as
    /// given and every `--set`), so a report can print how to regenerate it.
    pub command: String,
}

/// `word` as one shell word: bare when it is plain, else in single quotes.
fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn short(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Plan {
    /// Reads and expands a sweep file, resolving and validating every run's
    /// config. Any bad input is an error before anything runs.
    /// `overrides` (`--set KEY=VALUE`) change the sweep file before it
    /// is read: `seeds` and `report.*` set those keys, a key that names an
    /// axis (in `grid` or a `zip` group) replaces its list of values, and
    /// any other key is set in every run (as under `[set]`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Plan> {
        let text = Error::read_text(path)?;
        let mut table = Error::parse_toml(path, &text)?;
        for ov in overrides {
            override_sweep(&mut table, ov)?;
        }
        let sweep: SweepFile = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            Error::key(path, &e.path().to_string(), "", e.inner().message().lines().next().unwrap_or("invalid value"))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| Error::key(path, key, value, why);
        let mut sweep = sweep;
        sweep.report.study = sweep.report.study.map(|s| normalize(&dir.join(s)).display().to_string());
        if sweep.seeds.is_empty() {
            return Err(bad("seeds", &"[]", "the seed axis is empty"));
        }
        // Axes: each grid key, each zip group, then the seeds.
        let mut axes: Vec<Vec<Vec<(String, toml::Value)>>> = Vec::new();
        for (key, values) in &sweep.grid {
            let list =
                values.as_array().ok_or_else(|| bad(&format!("grid.{key}"), values, "must be a list of values"))?;
            if list.is_empty() {
                return Err(bad(&format!("grid.{key}"), &"[]", "the axis is empty"));
            }
            axes.push(list.iter().map(|v| vec![(key.clone(), v.clone())]).collect());
        }
        for (i, group) in sweep.zip.iter().enumerate() {
            let mut len = None;
            for (key, values) in group {
                let list = values
                    .as_array()
                    .ok_or_else(|| bad(&format!("zip[{i}].{key}"), values, "must be a list of values"))?;
                if list.is_empty() {
                    return Err(bad(&format!("zip[{i}].{key}"), &"[]", "the axis is empty"));
                }
                match len {
                    None => len = Some(list.len()),
                    Some(n) if n != list.len() => {
                        return Err(bad(
                            &format!("zip[{i}].{key}"),
                            &list.len(),
                            &format!("zipped lists must have equal lengths (the first has {n})"),
                        ));
                    }
                    _ => {}
                }
            }
            let n = len.ok_or_else(|| bad(&format!("zip[{i}]"), &"{}", "the zip group is empty"))?;
            axes.push(
                (0..n)
                    .map(|j| {
                        group.iter().map(|(k, v)| (k.clone(), v.as_array().expect("checked")[j].clone())).collect()
                    })
                    .collect(),
            );
        }
        axes.push(sweep.seeds.iter().map(|&s| vec![("seed".to_string(), toml::Value::Integer(s as i64))]).collect());
        let keys: Vec<String> = axes.iter().flat_map(|a| a[0].iter().map(|(k, _)| k.clone())).collect();
        let command = std::iter::once(format!("ebb sweep {}", shell_word(&path.display().to_string())))
            .chain(overrides.iter().map(|o| format!("--set {}", shell_word(o))))
            .collect::<Vec<_>>()
            .join(" ");

        let mut runs = Vec::new();
        let mut index = vec![0usize; axes.len()];
        loop {
            let point: Vec<(String, toml::Value)> = axes.iter().zip(&index).flat_map(|(a, &i)| a[i].clone()).collect();
            runs.push(Self::resolve(&sweep, dir, path, &point)?);
            // Odometer over the axes, last axis fastest.
            let mut k = axes.len();
            loop {
                if k == 0 {
                    return Ok(Plan { name: sweep.name, keys, runs, report: sweep.report, command });
                }
                k -= 1;
                index[k] += 1;
                if index[k] < axes[k].len() {
                    break;
                }
                index[k] = 0;
            }
        }
    }

    /// The resolved config of one point of the grid.
    fn resolve(sweep: &SweepFile, dir: &Path, path: &Path, point: &[(String, toml::Value)]) -> Result<PlannedRun> {
        let base = point
            .iter()
            .find(|(k, _)| k == "base")
            .map(|(_, v)| short(v))
            .or_else(|| sweep.base.clone())
            .ok_or_else(|| Error::key(path, "base", "(missing)", "name the experiment config the sweep varies"))?;
        let base_path = dir.join(&base);
        let text = std::fs::read_to_string(&base_path).map_err(|e| {
            Error::key(path, "base", format!("{base:?}"), format!("cannot read {}: {e}", base_path.display()))
        })?;
        let mut table: toml::Table = Error::parse_toml(&base_path, &text)?;
        for (key, value) in &sweep.set {
            set_key(&mut table, key, value.clone())
                .map_err(|why| Error::key(path, &format!("set.{key}"), value, why))?;
        }
        for (key, value) in point.iter().filter(|(k, _)| k != "base") {
            set_key(&mut table, key, value.clone()).map_err(|why| Error::key(path, key, value, why))?;
        }
        set_key(&mut table, "name", toml::Value::String(sweep.name.clone())).expect("top-level key");
        let mut cfg = Config::from_table(table, &base_path)
            .and_then(|cfg| Experiment::resolve(cfg, &base_path))
            .map_err(|e| Error::input(format!("{}: run {}: {e}", path.display(), describe(point))))?
            .config;
        cfg.train.checkpoint_every = sweep.checkpoint_every.unwrap_or((cfg.train.steps / 10).max(1));
        let config = cfg.to_toml();
        let id = format!("{:016x}", crate::rng::fnv1a(config.as_bytes()))[..12].to_string();
        Ok(PlannedRun { id, point: point.iter().map(|(k, v)| (k.clone(), short(v))).collect(), config })
    }

    /// Runs of shard `i` of `n` (1-based): every n-th run of the plan.
    pub fn shard(&self, i: usize, n: usize) -> Vec<&PlannedRun> {
        self.runs.iter().enumerate().filter(|&(k, _)| shard_of(k, n) == i).map(|(_, r)| r).collect()
    }

    /// `manifest.csv`: one row per run, its id and varied values.
    pub fn manifest(&self) -> String {
        let mut out = format!("id,{}\n", self.keys.join(","));
        for r in &self.runs {
            out.push_str(&format!(
                "{},{}\n",
                r.id,
                r.point.iter().map(|(_, v)| v.replace(',', ";")).collect::<Vec<_>>().join(",")
            ));
        }
        out
    }
}

/// `path` with `.` and `dir/..` taken out, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if matches!(out.components().next_back(), Some(std::path::Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Applies one `--set` to the sweep file's table (see `Plan::load`).
fn override_sweep(table: &mut toml::Table, ov: &str) -> Result<()> {
    let (key, value) = crate::config::parse_override(ov)?;
    let bad = |why: &str| Error::input(format!("--set {ov}: {why}"));
    if key == "seeds" || key.starts_with("report.") {
        return set_key(table, &key, value).map_err(|why| bad(&why));
    }
    let mut axis = false;
    for (name, section) in table.iter_mut() {
        let groups: Vec<&mut toml::Value> = match (name.as_str(), section) {
            ("grid", grid) => vec![grid],
            ("zip", toml::Value::Array(zip)) => zip.iter_mut().collect(),
            _ => continue,
        };
        for group in groups.into_iter().filter_map(|g| g.as_table_mut()).filter(|g| g.contains_key(&key)) {
            if !value.is_array() {
                return Err(bad("an axis takes a list of values, e.g. [1, 2]"));
            }
            group.insert(key.clone(), value.clone());
            axis = true;
        }
    }
    if axis {
        return Ok(());
    }
    match table.entry("set").or_insert_with(|| toml::Value::Table(toml::Table::new())) {
        toml::Value::Table(set) => {
            set.insert(key, value);
            Ok(())
        }
        _ => Err(bad("`set` is not a section")),
    }
}

fn describe(point: &[(String, toml::Value)]) -> String {
    point.iter().map(|(k, v)| format!("{k}={}", short(v))).collect::<Vec<_>>().join(" ")
}

/// The shard (1-based, of `n`) that runs the plan's run `k` (0-based): the
/// one rule `--shard` and Slurm's array tasks share.
pub fn shard_of(k: usize, n: usize) -> usize {
    k % n + 1
}

/// Parses `--shard i/n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::input(format!("--shard {s}: expected i/n with 1 ≤ i ≤ n, e.g. 2/4"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Where a run stands, from its directory alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Pending,
    /// A process is training it now (it holds the run's lock).
    Running,
    /// Started and stopped before the end: resumes from its newest checkpoint.
    Interrupted,
    Finished,
    Diverged,
    Failed,
}

impl RunStatus {
    pub fn of(dir: &Path) -> RunStatus {
        if dir.join("failed.txt").exists() {
            return RunStatus::Failed;
        }
        match crate::analysis::stored_outcome(dir) {
            Some((_, true)) => return RunStatus::Diverged,
            Some((true, false)) => return RunStatus::Finished,
            _ => {}
        }
        if crate::run_dir::RunLock::held(dir) {
            RunStatus::Running
        } else if dir.join("config.toml").exists() {
            RunStatus::Interrupted
        } else {
            RunStatus::Pending
        }
    }

    /// Finished or diverged: nothing more to run.
    pub fn is_done(self) -> bool {
        matches!(self, RunStatus::Finished | RunStatus::Diverged)
    }

    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Finished => "finished",
            RunStatus::Diverged => "diverged",
            RunStatus::Failed => "failed",
        }
    }
}

/// Options for running a sweep locally.
pub struct RunOptions {
    pub out: PathBuf,
    pub jobs: usize,
    pub threads_per_job: usize,
    pub shard: (usize, usize),
    /// Every run's `--device` (`cpu`, `cuda` or `auto`).
    pub device: &'static str,
    pub quiet: bool,
}

/// What became of the runs a sweep command was responsible for.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    pub finished: Vec<String>,
    pub skipped: Vec<String>,
    pub diverged: Vec<String>,
    pub failed: Vec<String>,
    pub interrupted: Vec<String>,
    /// Runs another process was training: left to it.
    pub busy: Vec<String>,
}

/// Writes what every way of running a sweep starts from: the sweep
/// directory, `manifest.csv`, `report.json` and every run's resolved config
/// (`configs/<id>.toml`).
pub fn prepare(plan: &Plan, out: &Path) -> Result<()> {
    crate::run_dir::create(out)?;
    // Rewritten only when different: array tasks all prepare the same directory.
    let spec = &plan.report;
    let report = serde_json::json!({
        "heatmap": spec.heatmap,
        "study": spec.study,
        "relearn_steps": spec.relearn_steps,
        "command": plan.command,
    })
    .to_string();
    for (name, text) in [("manifest.csv", plan.manifest()), ("report.json", report)] {
        let path = out.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            crate::run_dir::write_atomic(&path, text.as_bytes())?;
        }
    }
    let configs = out.join("configs");
    std::fs::create_dir_all(&configs).map_err(|e| Error::io(&configs, e))?;
    for r in &plan.runs {
        let path = configs.join(format!("{}.toml", r.id));
        if !path.exists() {
            crate::run_dir::write_atomic(&path, r.config.as_bytes())?;
        }
    }
    Ok(())
}

/// The header of `sweep-log.csv`: one row per `ebb sweep` that ran runs
/// here, so a report can say on what machine and device, and in how long,
/// the sweep ran.
const SESSION_COLUMNS: &str = "started_unix,seconds,runs_finished,jobs,threads_per_job,cores,cpu,device";

/// The header before `device` was logged; its rows get an empty device.
const SESSION_COLUMNS_WITHOUT_DEVICE: &str = "started_unix,seconds,runs_finished,jobs,threads_per_job,cores,cpu";

/// Appends this session of `ebb sweep` to `out/sweep-log.csv`.
pub fn log_session(out: &Path, started: std::time::SystemTime, opts: &RunOptions, finished: usize) -> Result<()> {
    if finished == 0 {
        return Ok(());
    }
    let path = out.join("sweep-log.csv");
    let mut text = match std::fs::read_to_string(&path) {
        Ok(old) if old.lines().next() == Some(SESSION_COLUMNS_WITHOUT_DEVICE) => {
            let rows = old.lines().skip(1).map(|l| format!("{l},\n"));
            std::iter::once(format!("{SESSION_COLUMNS}\n")).chain(rows).collect()
        }
        Ok(text) => text,
        Err(_) => format!("{SESSION_COLUMNS}\n"),
    };
    let unix = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    text.push_str(&format!(
        "{unix},{:.0},{finished},{},{},{cores},{},{}\n",
        started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        opts.jobs,
        opts.threads_per_job,
        cpu_model().replace(',', " "),
        opts.device
    ));
    crate::run_dir::write_atomic(&path, text.as_bytes())
}

/// The CPU's model name (Linux), or "unknown CPU".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Runs this shard's runs that are not finished, `jobs` at a time, each as
/// its own `ebb` process (after `prepare`). A run another process is
/// training is left to it.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<SweepOutcome> {
    let configs = opts.out.join("configs");
    let mut outcome = SweepOutcome::default();
    let mut queue = VecDeque::new();
    for r in plan.shard(opts.shard.0, opts.shard.1) {
        match RunStatus::of(&opts.out.join(&r.id)) {
            s if s.is_done() => outcome.skipped.push(r.id.clone()),
            RunStatus::Running => outcome.busy.push(r.id.clone()),
            _ => queue.push_back(r),
        }
    }
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find the ebb executable: {e}")))?;
    let queue = Mutex::new(queue);
    let results = Mutex::new(Vec::new());
    let done_elsewhere = Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Some(r) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { break };
                    let dir = opts.out.join(&r.id);
                    // Another process may have finished or taken it since the queue was made.
                    match RunStatus::of(&dir) {
                        s if s.is_done() => {
                            done_elsewhere.lock().unwrap_or_else(|e| e.into_inner()).push(r.id.clone());
                            continue;
                        }
                        RunStatus::Running => {
                            results.lock().unwrap_or_else(|e| e.into_inner()).push((r.id.clone(), RunStatus::Running));
                            continue;
                        }
                        _ => {}
                    }
                    let _ = std::fs::remove_file(dir.join("failed.txt"));
                    let mut cmd = Command::new(&exe);
                    if RunStatus::of(&dir) == RunStatus::Interrupted {
                        cmd.arg("resume").arg(&dir);
                    } else {
                        cmd.arg("run").arg(configs.join(format!("{}.toml", r.id))).arg("--out").arg(&dir);
                    }
                    cmd.args(["--quiet", "--device", opts.device, "--threads", &opts.threads_per_job.to_string()])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped());
                    if !opts.quiet {
                        eprintln!(
                            "start  {} ({})",
                            r.id,
                            r.point.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
                        );
                    }
                    let result = cmd.output();
                    let status = match &result {
                        Ok(out) if out.status.success() => RunStatus::Finished,
                        Ok(out) if std::os::unix::process::ExitStatusExt::signal(&out.status).is_some() => {
                            // Killed (Ctrl-C, preemption): resumable, not failed. Stop taking new runs.
                            stop.store(true, std::sync::atomic::Ordering::SeqCst);
                            RunStatus::Interrupted
                        }
                        Ok(_) if RunStatus::of(&dir) == RunStatus::Diverged => RunStatus::Diverged,
                        // Another process took the run between our look and the child's start.
                        Ok(out) if out.status.code() == Some(Error::BUSY_EXIT_CODE) => RunStatus::Running,
                        Ok(out) => {
                            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
                            let _ = std::fs::create_dir_all(&dir);
                            let _ = std::fs::write(dir.join("failed.txt"), format!("{msg}\n"));
                            RunStatus::Failed
                        }
                        Err(e) => {
                            let _ = std::fs::create_dir_all(&dir);
                            let _ = std::fs::write(dir.join("failed.txt"), format!("cannot start ebb: {e}\n"));
                            RunStatus::Failed
                        }
                    };
                    if !opts.quiet {
                        eprintln!("{:<6} {}", status.name(), r.id);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((r.id.clone(), status));
                }
            });
        }
    });
    outcome.skipped.extend(done_elsewhere.into_inner().unwrap_or_else(|e| e.into_inner()));
    for (id, status) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match status {
            RunStatus::Finished => outcome.finished.push(id),
            RunStatus::Diverged => outcome.diverged.push(id),
            RunStatus::Failed => outcome.failed.push(id),
            RunStatus::Running => outcome.busy.push(id),
            _ => outcome.interrupted.push(id),
        }
    }
    Ok(outcome)
}
