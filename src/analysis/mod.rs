//! Decay analysis: pure functions over a run's logged files. Works on any
//! run directory, finished, interrupted or diverged (`ebb analyze RUN_DIR`),
//! and writes the typed `Summary` as `summary.json`.
//!
//! Per dropped task, from its drop step t₀ (A = exact match):
//! - retention r(Δ) = (A(t₀+Δ) − chance) / (A(t₀) − chance), with the 95%
//!   interval of A(t₀+Δ) and A(t₀) carried over (the widest ratio);
//! - half-life: the first Δ with r ≤ 0.5, linearly interpolated, or
//!   censored at the window's length when r stays above 0.5;
//! - exponential and power-law fits with their status (see `fit`), the
//!   preferred by AICc among those `ok`;
//! - AURC: the mean of r over [0, horizon] (trapezoid rule);
//! - forgetting: best accuracy before the drop − accuracy at the window's
//!   end, and accuracy at the drop − accuracy at the window's end;
//! - a noise floor: the same statistics for the tasks still trained over the
//!   same window and more right than wrong at the drop (`NOISE_FLOOR_ACCURACY`);
//! - after a revive: steps to regain `regain`·A(t₀) against the steps it
//!   first took from entering training, both on the dense evaluation grid.
//!
//! For sequential runs: the accuracy matrix, average accuracy, backward
//! transfer and forgetting.

pub mod fit;
pub mod stats;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use self::fit::{Fit, Form};

use crate::config::Config;
use crate::error::{Error, Result};

/// Below this accuracy gap over chance at the drop, retention is undefined
/// (the task was not learned, so there is nothing to decay).
const MIN_LEARNED_GAP: f64 = 0.05;

/// A task kept in training joins the noise floor when its exact match at the
/// drop is at least its learned threshold or this, whichever is lower: more
/// right than wrong, so its retention is resolved (about ±0.17 at the bar
/// on 128 problems) even where the kept tasks are still being learned.
pub const NOISE_FLOOR_ACCURACY: f64 = 0.5;

/// One task as recorded in `tasks.csv`.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub id: String,
    pub family: String,
    pub chance: f64,
    pub weight: f64,
}

/// One row of `events.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub step: u64,
    pub event: String,
    pub task: String,
    pub value: String,
}

/// What a run directory holds, parsed.
pub struct RunData {
    pub config: Config,
    pub tasks: Vec<TaskInfo>,
    pub events: Vec<EventRow>,
    /// (task, metric) → (step, value), eval split, sorted by step.
    pub eval: BTreeMap<(String, String), Vec<(u64, f64)>>,
    /// metric → (step, value) of the training batches (split `train`,
    /// task `all`: loss, lr, grad_norm).
    pub train: BTreeMap<String, Vec<(u64, f64)>>,
    /// (task, metric) → (step, value), split `train` of one task: the
    /// evaluation of a task with a finite training set on a fixed sample of
    /// it, sorted by step.
    pub train_eval: BTreeMap<(String, String), Vec<(u64, f64)>>,
    /// The last step with any logged row.
    pub last_step: u64,
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
}

impl RunData {
    /// The step the run ends at: its `end` event (`train.end_after_events`), else `train.steps`.
    pub fn end_step(&self) -> u64 {
        self.events.iter().find(|e| e.event == "end").map_or(self.config.train.steps, |e| e.step)
    }

    pub fn load(dir: &Path) -> Result<RunData> {
        let config = crate::experiment::Experiment::load(&dir.join("config.toml"), &[])?.config;
        let bad =
            |file: &str, line: &str| Error::input(format!("{}: malformed row {line:?}", dir.join(file).display()));
        let mut tasks = Vec::new();
        for line in read(dir, "tasks.csv")?.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 5 {
                return Err(bad("tasks.csv", line));
            }
            tasks.push(TaskInfo {
                id: f[0].into(),
                family: f[1].into(),
                chance: f[2].parse().map_err(|_| bad("tasks.csv", line))?,
                weight: f[4].parse().map_err(|_| bad("tasks.csv", line))?,
            });
        }
        let mut events = Vec::new();
        if let Ok(text) = read(dir, "events.csv") {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.splitn(4, ',').collect();
                if f.len() != 4 {
                    return Err(bad("events.csv", line));
                }
                events.push(EventRow {
                    step: f[0].parse().map_err(|_| bad("events.csv", line))?,
                    event: f[1].into(),
                    task: f[2].into(),
                    value: f[3].into(),
                });
            }
        }
        let mut eval: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
        let mut train: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        let mut train_eval: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
        let mut last_step = 0;
        for line in read(dir, "metrics.csv")?.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 5 {
                return Err(bad("metrics.csv", line));
            }
            let step: u64 = f[0].parse().map_err(|_| bad("metrics.csv", line))?;
            last_step = last_step.max(step);
            let value: f64 = f[4].parse().map_err(|_| bad("metrics.csv", line))?;
            match (f[2], f[1]) {
                ("eval", task) => eval.entry((task.into(), f[3].into())).or_default().push((step, value)),
                ("train", "all") => train.entry(f[3].into()).or_default().push((step, value)),
                ("train", task) => train_eval.entry((task.into(), f[3].into())).or_default().push((step, value)),
                _ => {}
            }
        }
        for series in eval.values_mut().chain(train_eval.values_mut()) {
            series.sort_by_key(|p| p.0);
            series.dedup_by_key(|p| p.0);
        }
        Ok(RunData { config, tasks, events, eval, train, train_eval, last_step })
    }

    pub fn accuracy(&self, task: &str) -> &[(u64, f64)] {
        self.series(task, "exact_match")
    }

    /// An eval metric of a task over steps.
    pub fn series(&self, task: &str, metric: &str) -> &[(u64, f64)] {
        self.eval.get(&(task.to_string(), metric.to_string())).map_or(&[], Vec::as_slice)
    }

    /// A metric of a task on its training-set sample over steps (empty for
    /// tasks without a finite training set).
    pub fn train_series(&self, task: &str, metric: &str) -> &[(u64, f64)] {
        self.train_eval.get(&(task.to_string(), metric.to_string())).map_or(&[], Vec::as_slice)
    }
}

/// The value of `series` at the last point with step ≤ `step`.
pub fn at(series: &[(u64, f64)], step: u64) -> Option<f64> {
    series.iter().take_while(|p| p.0 <= step).last().map(|p| p.1)
}

/// Normalized retention points (Δ, r) over [t0, end].
pub fn retention(series: &[(u64, f64)], t0: u64, end: u64, chance: f64) -> Option<Vec<(f64, f64)>> {
    let a0 = at(series, t0)?;
    if a0 - chance < MIN_LEARNED_GAP {
        return None;
    }
    Some(
        series
            .iter()
            .filter(|p| p.0 >= t0 && p.0 <= end)
            .map(|&(t, a)| ((t - t0) as f64, (a - chance) / (a0 - chance)))
            .collect(),
    )
}

/// The first Δ where r ≤ 0.5, interpolated between evaluations; censored
/// at the last Δ when r stays above 0.5.
pub fn half_life(points: &[(f64, f64)]) -> Option<HalfLife> {
    let Some(i) = points.iter().position(|p| p.1 <= 0.5) else {
        return points.last().map(|p| HalfLife { status: HalfLifeStatus::Censored, steps: p.0 });
    };
    if i == 0 {
        return Some(HalfLife { status: HalfLifeStatus::Reached, steps: points[0].0 });
    }
    let ((d0, r0), (d1, r1)) = (points[i - 1], points[i]);
    Some(HalfLife { status: HalfLifeStatus::Reached, steps: d0 + (r0 - 0.5) / (r0 - r1) * (d1 - d0) })
}

/// The mean of r over [0, horizon] by the trapezoid rule, over the points
/// available (the last value is held if the data stop early).
pub fn aurc(points: &[(f64, f64)], horizon: f64) -> Option<f64> {
    if points.is_empty() || horizon <= 0.0 {
        return None;
    }
    let mut area = 0.0;
    for w in points.windows(2) {
        let ((d0, r0), (d1, r1)) = (w[0], w[1]);
        if d0 >= horizon {
            break;
        }
        let (d1c, r1c) = if d1 > horizon { (horizon, r0 + (r1 - r0) * (horizon - d0) / (d1 - d0)) } else { (d1, r1) };
        area += 0.5 * (r0 + r1c) * (d1c - d0);
    }
    let (dl, rl) = *points.last().unwrap();
    if dl < horizon {
        area += rl * (horizon - dl);
    }
    Some(area / horizon)
}

/// The first step at or after `from` where the accuracy reaches `level`.
fn first_reaching(series: &[(u64, f64)], from: u64, level: f64) -> Option<u64> {
    series.iter().find(|p| p.0 >= from && p.1 >= level).map(|p| p.0)
}

/// `x` when it is a finite number (JSON has no NaN).
fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

/// The format of `summary.json`; a summary of another version is recomputed
/// from the run's files when read.
pub const SUMMARY_VERSION: u32 = 4;

/// Everything `summary.json` holds about a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub version: u32,
    pub run: String,
    /// Trainable parameters (absent when model.json is missing).
    pub params: Option<u64>,
    pub suite: Option<String>,
    /// The step the run ends at (`train.steps`, or earlier with `train.end_after_events`).
    pub steps: u64,
    pub last_logged_step: u64,
    pub finished: bool,
    pub diverged: Option<Diverged>,
    pub tasks: BTreeMap<String, TaskSummary>,
    pub drops: Vec<DropSummary>,
    pub learned_events: Vec<LearnedEvent>,
    pub sequential: Option<Sequential>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Diverged {
    pub step: u64,
    pub what: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSummary {
    pub family: String,
    pub chance: f64,
    pub initial_weight: f64,
    pub final_exact_match: Option<f64>,
    pub best_exact_match: Option<f64>,
}

/// Whether a dropped task was learned when it was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropStatus {
    Learned,
    NotLearned,
}

/// One retention point: r at Δ steps after the drop, with its 95% interval
/// (absent for runs logged without exact-match intervals).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionPoint {
    pub delta: f64,
    pub r: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HalfLifeStatus {
    /// r fell to 0.5 at `steps`.
    Reached,
    /// r stayed above 0.5 for the whole window: the half-life exceeds
    /// `steps`, the window's length.
    Censored,
}

impl HalfLifeStatus {
    pub fn name(self) -> &'static str {
        match self {
            HalfLifeStatus::Reached => "reached",
            HalfLifeStatus::Censored => "censored",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HalfLife {
    pub status: HalfLifeStatus,
    pub steps: f64,
}

impl HalfLife {
    /// The value when reached.
    pub fn reached(&self) -> Option<f64> {
        (self.status == HalfLifeStatus::Reached).then_some(self.steps)
    }

    pub fn observation(&self) -> stats::Observation {
        stats::Observation { value: self.steps, censored: self.status == HalfLifeStatus::Censored }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fits {
    pub exponential: Fit,
    pub power: Fit,
    /// The `ok` fit with the lower AICc; none when neither is `ok`.
    pub preferred: Option<Form>,
}

impl Fits {
    pub fn get(&self, form: Form) -> &Fit {
        match form {
            Form::Exponential => &self.exponential,
            Form::Power => &self.power,
        }
    }

    /// The preferred fit.
    pub fn best(&self) -> Option<&Fit> {
        self.preferred.map(|f| self.get(f))
    }
}

/// What "no decay" looks like in this run: the tasks still trained over the
/// same window as the dropped task and at least `min_accuracy` at the drop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    pub tasks: Vec<String>,
    /// Their exact match at the drop, in the order of `tasks`.
    pub accuracy_at_drop: Vec<f64>,
    /// The bar they passed: the lower of the learned threshold and
    /// `NOISE_FLOOR_ACCURACY`.
    pub min_accuracy: f64,
    /// Their mean AURC over the same horizon.
    pub aurc_mean: Option<f64>,
    /// Their mean retention at the window's end.
    pub retention_at_end_mean: Option<f64>,
    /// The lowest retention any of them reached in the window.
    pub lowest_retention: Option<f64>,
    /// How many of them fell to r ≤ 0.5 at some evaluation.
    pub half_lives_reached: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviveStatus {
    /// Accuracy at the revive was still at the regain level: nothing to relearn.
    NotForgotten,
    /// The regain level was reached again after `steps_to_regain` steps.
    Regained,
    /// Not regained within the window: censored at `censored_at` steps.
    NotRegained,
}

impl ReviveStatus {
    pub fn name(self) -> &'static str {
        match self {
            ReviveStatus::NotForgotten => "not_forgotten",
            ReviveStatus::Regained => "regained",
            ReviveStatus::NotRegained => "not_regained",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revive {
    pub step: u64,
    /// `analysis.regain` · accuracy at the drop.
    pub regain_level: Option<f64>,
    pub accuracy_at_revive: Option<f64>,
    pub status: ReviveStatus,
    pub steps_to_regain: Option<u64>,
    pub censored_at: Option<u64>,
    /// The step the task entered training (first learning is timed from it).
    pub entered_training: u64,
    pub steps_first_learned: Option<u64>,
    /// 1 − steps to regain / steps first learned (regained only).
    pub savings: Option<f64>,
    /// Steps to regain / steps first learned (regained only).
    pub relearn_ratio: Option<f64>,
}

/// Everything about one drop of one task. A task below its learned
/// threshold at the drop has status `not_learned` and no retention, fits or
/// half-life, so it stays out of every fit and mean.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DropSummary {
    pub task: String,
    pub step: u64,
    pub window_end: u64,
    pub chance: f64,
    pub accuracy_at_drop: Option<f64>,
    pub best_accuracy_before_drop: Option<f64>,
    pub accuracy_at_window_end: Option<f64>,
    pub forgetting_from_best: Option<f64>,
    pub forgetting_from_drop: Option<f64>,
    pub learned_threshold: f64,
    pub status: DropStatus,
    pub retention: Vec<RetentionPoint>,
    pub half_life: Option<HalfLife>,
    pub aurc: Option<f64>,
    pub aurc_horizon: f64,
    pub fits: Option<Fits>,
    pub noise_floor: Option<NoiseFloor>,
    pub revive: Option<Revive>,
}

impl DropSummary {
    pub fn learned(&self) -> bool {
        self.status == DropStatus::Learned
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnedStatus {
    FiredWhenLearned,
    FiredAtCap,
    NeverLearned,
    DueAfterTheEnd,
}

/// A `when_learned` schedule entry: when its tasks were learned and when it fired.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearnedEvent {
    pub schedule: usize,
    pub tasks: Vec<String>,
    pub when_learned: f64,
    pub after: u64,
    pub cap: Option<u64>,
    pub learned_at: Option<u64>,
    pub fired_at: Option<u64>,
    pub status: LearnedStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sequential {
    pub order: Vec<String>,
    pub phase_ends: Vec<u64>,
    pub normalization: String,
    /// R[i][j]: accuracy on the task of phase j after phase i.
    pub accuracy_matrix: Vec<Vec<Option<f64>>>,
    /// Per phase but the last: whether its task was learned when the phase
    /// ended (R[i][i] ≥ `learned_threshold`); none where R[i][i] is unknown.
    /// A task not learned in its phase cannot show forgetting.
    pub learned: Vec<Option<bool>>,
    /// `sequential.when_learned`, else `analysis.learned`.
    pub learned_threshold: f64,
    pub average_accuracy: Option<f64>,
    pub backward_transfer: Option<f64>,
    pub forgetting: Option<f64>,
}

/// Whether an `events.csv` row records a learned trigger (learned, or its cap reached).
fn is_learned_row(e: &EventRow) -> bool {
    e.event == "learned" || e.event == "learned_cap"
}

/// The exact match at which `task`, dropped at `t0`, counts as learned: the
/// threshold of its latest learned-trigger row up to `t0` (the `when_learned`
/// of the event that dropped it), else `analysis.learned`.
fn learned_threshold(run: &RunData, task: &str, t0: u64) -> f64 {
    run.events
        .iter()
        .filter(|e| e.task == task && e.step <= t0 && is_learned_row(e))
        .filter_map(|e| e.value.parse().ok())
        .next_back()
        .unwrap_or(run.config.analysis.learned)
}

/// The end of the window that starts at `from` for `task`: the next event
/// touching it (or a phase change), else the last logged step.
fn window_end(run: &RunData, task: &str, from: u64) -> u64 {
    run.events
        .iter()
        .filter(|e| e.step > from && !is_learned_row(e) && (e.task == task || e.event == "phase"))
        .map(|e| e.step)
        .min()
        .unwrap_or(run.last_step)
}

/// The step `task` entered training before `t0`: 0 when it starts with a
/// positive weight, else its first revive, phase or positive weight event.
fn entered_training(run: &RunData, task: &TaskInfo, t0: u64) -> u64 {
    if task.weight > 0.0 {
        return 0;
    }
    let enters = |e: &EventRow| {
        e.event == "revive"
            || e.event == "phase"
            || (e.event == "weight" && e.value.parse::<f64>().is_ok_and(|w| w > 0.0))
    };
    run.events.iter().filter(|e| e.task == task.id && e.step < t0 && enters(e)).map(|e| e.step).min().unwrap_or(0)
}

/// Retention points of `task` over [t0, end] with intervals: r's interval
/// takes A(t)'s Wilson bounds over A(t₀)'s (the widest ratio of the two).
fn retention_points(run: &RunData, task: &TaskInfo, t0: u64, end: u64) -> Option<Vec<RetentionPoint>> {
    let series = run.accuracy(&task.id);
    let points = retention(series, t0, end, task.chance)?;
    let (lo, hi) = (run.series(&task.id, "exact_match_lo"), run.series(&task.id, "exact_match_hi"));
    let c = task.chance;
    let (lo0, hi0) = (at(lo, t0).map(|v| v - c), at(hi, t0).map(|v| v - c));
    Some(
        points
            .into_iter()
            .map(|(d, r)| {
                let t = t0 + d as u64;
                let lo_t = lo.iter().find(|p| p.0 == t).map(|p| p.1 - c);
                let hi_t = hi.iter().find(|p| p.0 == t).map(|p| p.1 - c);
                let ratio =
                    |num: Option<f64>, den: Option<f64>| finite(num.zip(den.filter(|&x| x > 0.0)).map(|(n, d)| n / d));
                // The low end: A(t)'s low over A(t₀)'s high (or low when A(t) is below chance); the high end alike.
                let low = ratio(lo_t, if lo_t.is_some_and(|v| v < 0.0) { lo0 } else { hi0 });
                let high = ratio(hi_t, if hi_t.is_some_and(|v| v < 0.0) { hi0 } else { lo0 });
                RetentionPoint { delta: d, r, lo: low.map(|l| l.min(r)), hi: high.map(|h| h.max(r)) }
            })
            .collect(),
    )
}

/// The noise floor of a drop at `t0` with window end `end`: the tasks trained
/// throughout the window and at `NOISE_FLOOR_ACCURACY` (or their learned
/// threshold, when lower) at the drop. None where no task qualifies, as in
/// sequential runs, where no task stays in training.
fn noise_floor(run: &RunData, dropped: &str, t0: u64, end: u64, horizon: f64) -> Option<NoiseFloor> {
    /// A kept task: the bar it passed, its accuracy at the drop and its retention over the window.
    struct Kept<'a> {
        task: &'a TaskInfo,
        bar: f64,
        at_drop: f64,
        retention: Vec<(f64, f64)>,
    }
    let touched = |id: &str| run.events.iter().any(|e| e.task == id && e.step <= end && !is_learned_row(e));
    let kept: Vec<Kept> = run
        .tasks
        .iter()
        .filter(|t| t.id != dropped && t.weight > 0.0 && !touched(&t.id))
        .filter_map(|task| {
            let bar = learned_threshold(run, &task.id, t0).min(NOISE_FLOOR_ACCURACY);
            let at_drop = at(run.accuracy(&task.id), t0).filter(|&a| a >= bar)?;
            Some(Kept { task, bar, at_drop, retention: retention(run.accuracy(&task.id), t0, end, task.chance)? })
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mean = |xs: Vec<f64>| finite(stats::mean_ci(&xs).map(|m| m.mean));
    Some(NoiseFloor {
        tasks: kept.iter().map(|k| k.task.id.clone()).collect(),
        accuracy_at_drop: kept.iter().map(|k| k.at_drop).collect(),
        min_accuracy: kept.iter().map(|k| k.bar).fold(NOISE_FLOOR_ACCURACY, f64::min),
        aurc_mean: mean(kept.iter().filter_map(|k| aurc(&k.retention, horizon)).collect()),
        retention_at_end_mean: mean(kept.iter().filter_map(|k| k.retention.last().map(|p| p.1)).collect()),
        lowest_retention: finite(kept.iter().flat_map(|k| k.retention.iter().map(|p| p.1)).reduce(f64::min)),
        half_lives_reached: kept.iter().filter(|k| k.retention.iter().any(|p| p.1 <= 0.5)).count(),
    })
}

/// The relearning after `task`'s revive (dropped at `t0` from accuracy `a0`).
fn revive_summary(run: &RunData, task: &TaskInfo, t0: u64, a0: Option<f64>, revive: u64) -> Revive {
    let series = run.accuracy(&task.id);
    let level = finite(a0.map(|a| run.config.analysis.regain * a));
    let accuracy_at_revive = at(series, revive);
    let end = window_end(run, &task.id, revive);
    let entered = entered_training(run, task, t0);
    let first = level.and_then(|l| first_reaching(series, entered, l)).filter(|&s| s <= t0).map(|s| s - entered);
    let regained = level.and_then(|l| first_reaching(series, revive, l)).filter(|&s| s <= end).map(|s| s - revive);
    let status = match (level, accuracy_at_revive, regained) {
        (Some(l), Some(a), _) if a >= l => ReviveStatus::NotForgotten,
        (_, _, Some(_)) => ReviveStatus::Regained,
        _ => ReviveStatus::NotRegained,
    };
    let ratio = match (status, regained, first) {
        (ReviveStatus::Regained, Some(r), Some(f)) if f > 0 => Some(r as f64 / f as f64),
        _ => None,
    };
    Revive {
        step: revive,
        regain_level: level,
        accuracy_at_revive,
        status,
        steps_to_regain: regained.filter(|_| status == ReviveStatus::Regained),
        censored_at: (status == ReviveStatus::NotRegained).then_some(end - revive),
        entered_training: entered,
        steps_first_learned: first,
        savings: ratio.map(|r| 1.0 - r),
        relearn_ratio: ratio,
    }
}

fn drop_summary(run: &RunData, task: &TaskInfo, t0: u64) -> DropSummary {
    let series = run.accuracy(&task.id);
    let end = window_end(run, &task.id, t0);
    let a0 = at(series, t0);
    let threshold = learned_threshold(run, &task.id, t0);
    let learned = a0.is_some_and(|a| a >= threshold);
    let best_before = series.iter().filter(|p| p.0 <= t0).map(|p| p.1).reduce(f64::max);
    let a_end = at(series, end);
    let points = if learned { retention_points(run, task, t0, end) } else { None };
    let rd: Option<Vec<(f64, f64)>> = points.as_ref().map(|p| p.iter().map(|p| (p.delta, p.r)).collect());
    let horizon = run.config.analysis.horizon.unwrap_or(end - t0) as f64;
    let fits = rd.as_deref().map(|p| {
        let (exponential, power, preferred) = fit::fit_both(p);
        Fits { exponential, power, preferred }
    });
    DropSummary {
        task: task.id.clone(),
        step: t0,
        window_end: end,
        chance: task.chance,
        accuracy_at_drop: finite(a0),
        best_accuracy_before_drop: finite(best_before),
        accuracy_at_window_end: finite(a_end),
        forgetting_from_best: finite(best_before.zip(a_end).map(|(b, e)| b - e)),
        forgetting_from_drop: finite(a0.zip(a_end).map(|(a, e)| a - e)),
        learned_threshold: threshold,
        status: if rd.is_some() { DropStatus::Learned } else { DropStatus::NotLearned },
        half_life: rd.as_deref().and_then(half_life),
        aurc: finite(rd.as_deref().and_then(|p| aurc(p, horizon))),
        aurc_horizon: horizon,
        fits,
        noise_floor: if rd.is_some() { noise_floor(run, &task.id, t0, end, horizon) } else { None },
        revive: run
            .events
            .iter()
            .find(|e| e.step > t0 && e.task == task.id && e.event == "revive")
            .map(|e| revive_summary(run, task, t0, a0, e.step)),
        retention: points.unwrap_or_default(),
    }
}

/// Every `when_learned` event: when its tasks were learned (its `learned`
/// rows), and when it fired, at the cap or after learning, or that it never did.
fn learned_events(run: &RunData) -> Vec<LearnedEvent> {
    let mut out = Vec::new();
    for (i, e) in run.config.schedule.iter().enumerate() {
        let Some(threshold) = e.when_learned else { continue };
        let tasks = e.tasks();
        let learned_row = |step: u64, task: &str| {
            run.events
                .iter()
                .any(|r| r.step == step && r.task == task && r.event == "learned" && r.value.parse() == Ok(threshold))
        };
        let learned_at = run.events.iter().map(|r| r.step).find(|&s| tasks.iter().all(|t| learned_row(s, t)));
        let due = learned_at.map(|s| s + e.after.unwrap_or(0)).into_iter().chain(e.step).min();
        let fired_at = due.filter(|&s| {
            run.events.iter().any(|r| {
                r.step == s
                    && tasks.contains(&r.task.as_str())
                    && ["drop", "revive", "weight"].contains(&r.event.as_str())
            })
        });
        let status = match (fired_at, learned_at) {
            (Some(s), Some(l)) if l + e.after.unwrap_or(0) == s => LearnedStatus::FiredWhenLearned,
            (Some(_), _) => LearnedStatus::FiredAtCap,
            (None, None) => LearnedStatus::NeverLearned,
            (None, Some(_)) => LearnedStatus::DueAfterTheEnd,
        };
        out.push(LearnedEvent {
            schedule: i,
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            when_learned: threshold,
            after: e.after.unwrap_or(0),
            cap: e.step,
            learned_at,
            fired_at,
            status,
        });
    }
    out
}

/// The accuracy matrix of a sequential run: R[i][j] = accuracy on the task
/// of phase j after phase i.
fn sequential_summary(run: &RunData) -> Option<Sequential> {
    let phases: Vec<&EventRow> = run.events.iter().filter(|e| e.event == "phase").collect();
    if phases.len() < 2 {
        return None;
    }
    let ends: Vec<u64> = phases.iter().skip(1).map(|e| e.step).chain([run.end_step()]).collect();
    let order: Vec<&str> = phases.iter().map(|e| e.task.as_str()).collect();
    let t = order.len();
    let r: Vec<Vec<Option<f64>>> = ends
        .iter()
        .map(|&end| order.iter().map(|task| at(run.accuracy(task), end).filter(|_| end <= run.last_step)).collect())
        .collect();
    let complete = r.iter().all(|row| row.iter().all(Option::is_some));
    let v = |i: usize, j: usize| r[i][j].unwrap_or(f64::NAN);
    let (average, bwt, forgetting) = if complete {
        let average = (0..t).map(|j| v(t - 1, j)).sum::<f64>() / t as f64;
        let bwt = (0..t - 1).map(|j| v(t - 1, j) - v(j, j)).sum::<f64>() / (t - 1) as f64;
        let forgetting = (0..t - 1)
            .map(|j| (0..t - 1).map(|i| v(i, j)).fold(f64::NEG_INFINITY, f64::max) - v(t - 1, j))
            .sum::<f64>()
            / (t - 1) as f64;
        (Some(average), Some(bwt), Some(forgetting))
    } else {
        (None, None, None)
    };
    let threshold = run.config.sequential.as_ref().and_then(|s| s.when_learned).unwrap_or(run.config.analysis.learned);
    Some(Sequential {
        order: order.iter().map(|o| o.to_string()).collect(),
        phase_ends: ends,
        normalization:
            "raw exact-match accuracy (not chance-corrected); R[i][j] is task j (in phase order) after phase i".into(),
        learned: (0..t - 1).map(|i| r[i][i].map(|a| a >= threshold)).collect(),
        learned_threshold: threshold,
        accuracy_matrix: r.iter().map(|row| row.iter().map(|&x| finite(x)).collect()).collect(),
        average_accuracy: finite(average),
        backward_transfer: finite(bwt),
        forgetting: finite(forgetting),
    })
}

/// The summary of a run directory, computed from its files.
pub fn summarize(dir: &Path) -> Result<Summary> {
    let run = RunData::load(dir)?;
    let diverged = run.events.iter().find(|e| e.event == "diverged").map(|e| Diverged {
        step: e.step,
        what: e.value.clone(),
        message: format!("diverged at step {}", e.step),
    });
    let finished = diverged.is_none() && run.last_step >= run.end_step();
    let tasks = run
        .tasks
        .iter()
        .map(|t| {
            let series = run.accuracy(&t.id);
            let summary = TaskSummary {
                family: t.family.clone(),
                chance: t.chance,
                initial_weight: t.weight,
                final_exact_match: finite(series.last().map(|p| p.1)),
                best_exact_match: finite(series.iter().map(|p| p.1).reduce(f64::max)),
            };
            (t.id.clone(), summary)
        })
        .collect();
    let drops = run
        .events
        .iter()
        .filter(|e| e.event == "drop")
        .filter_map(|e| run.tasks.iter().find(|t| t.id == e.task).map(|t| drop_summary(&run, t, e.step)))
        .collect();
    let model: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("model.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    Ok(Summary {
        version: SUMMARY_VERSION,
        run: run.config.name.clone(),
        params: model.as_ref().and_then(|m| m["params"].as_u64()),
        suite: model.as_ref().and_then(|m| m["suite"].as_str().map(String::from)),
        steps: run.end_step(),
        last_logged_step: run.last_step,
        finished,
        diverged,
        tasks,
        drops,
        learned_events: learned_events(&run),
        sequential: sequential_summary(&run),
    })
}

/// Writes `summary.json` into the run directory.
pub fn write_summary(dir: &Path) -> Result<Summary> {
    let summary = summarize(dir)?;
    let text = serde_json::to_string_pretty(&summary).expect("a summary serializes");
    crate::run_dir::write_atomic(&dir.join("summary.json"), format!("{text}\n").as_bytes())?;
    Ok(summary)
}

/// How a run ended, as its `summary.json` says (any version): (finished,
/// diverged); None without a summary.
pub fn stored_outcome(dir: &Path) -> Option<(bool, bool)> {
    #[derive(Deserialize)]
    struct Outcome {
        finished: bool,
        diverged: Option<serde::de::IgnoredAny>,
    }
    let o: Outcome = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).ok()?).ok()?;
    Some((o.finished, o.diverged.is_some()))
}

/// A run's summary: `summary.json` when it is of this version, else
/// recomputed from the run's files (and rewritten).
pub fn read_summary(dir: &Path) -> Result<Summary> {
    let stored =
        std::fs::read_to_string(dir.join("summary.json")).ok().and_then(|t| serde_json::from_str::<Summary>(&t).ok());
    match stored {
        Some(s) if s.version == SUMMARY_VERSION => Ok(s),
        _ => write_summary(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life_interpolates_between_evaluations() {
        let pts = [(0.0, 1.0), (10.0, 0.8), (20.0, 0.4), (30.0, 0.2)];
        assert!((half_life(&pts).unwrap().reached().unwrap() - 17.5).abs() < 1e-12);
        // Never below 0.5 in the window: censored at the window's length, not missing.
        assert_eq!(
            half_life(&[(0.0, 1.0), (5.0, 0.9)]),
            Some(HalfLife { status: HalfLifeStatus::Censored, steps: 5.0 })
        );
    }

    #[test]
    fn aurc_is_the_mean_retention_over_the_horizon() {
        let pts = [(0.0, 1.0), (10.0, 0.0)];
        assert!((aurc(&pts, 10.0).unwrap() - 0.5).abs() < 1e-12);
        // Beyond the data the last value is held; inside, the curve is cut at the horizon.
        assert!((aurc(&pts, 20.0).unwrap() - 0.25).abs() < 1e-12);
        assert!((aurc(&pts, 5.0).unwrap() - 0.75).abs() < 1e-12);
    }

    /// A run of four tasks over steps 0..=300: `dropped` falls from 1.0 after
    /// its drop at 100; the three kept ones stand at 0.95, 0.6 and 0.3 at the
    /// drop and hold, rise and rise.
    fn run_with_kept_tasks() -> RunData {
        let mut config: Config = toml::from_str("name = 'noise'").unwrap();
        config.analysis.learned = 0.9;
        let task = |id: &str| TaskInfo { id: id.into(), family: id.into(), chance: 0.0, weight: 1.0 };
        let mut eval = BTreeMap::new();
        let steps = [0, 100, 200, 300];
        for (id, values) in [
            ("dropped", [0.2, 1.0, 0.4, 0.1]),
            ("learned", [0.5, 0.95, 0.95, 0.95]),
            ("halfway", [0.1, 0.6, 0.7, 0.8]),
            ("early", [0.0, 0.3, 0.6, 0.9]),
        ] {
            let series = steps.iter().zip(values).map(|(&s, v)| (s, v)).collect();
            eval.insert((id.to_string(), "exact_match".to_string()), series);
        }
        RunData {
            config,
            tasks: ["dropped", "learned", "halfway", "early"].map(task).to_vec(),
            events: vec![EventRow { step: 100, event: "drop".into(), task: "dropped".into(), value: String::new() }],
            eval,
            train: BTreeMap::new(),
            train_eval: BTreeMap::new(),
            last_step: 300,
        }
    }

    #[test]
    fn noise_floor_takes_kept_tasks_more_right_than_wrong_at_the_drop() {
        let run = run_with_kept_tasks();
        let floor = noise_floor(&run, "dropped", 100, 300, 200.0).unwrap();
        assert_eq!(floor.tasks, ["learned", "halfway"]);
        assert_eq!(floor.accuracy_at_drop, [0.95, 0.6]);
        assert_eq!(floor.min_accuracy, NOISE_FLOOR_ACCURACY);
        // Retention: learned 1, 1, 1 (AURC 1); halfway 1, 7/6, 4/3 (AURC 7/6).
        assert!((floor.aurc_mean.unwrap() - (1.0 + 7.0 / 6.0) / 2.0).abs() < 1e-12, "{floor:?}");
        assert_eq!((floor.lowest_retention, floor.half_lives_reached), (Some(1.0), 0));

        // A learned bar below 0.5 is the bar: the task at 0.3 joins.
        let mut low = run_with_kept_tasks();
        low.config.analysis.learned = 0.25;
        let floor = noise_floor(&low, "dropped", 100, 300, 200.0).unwrap();
        assert_eq!((floor.tasks.len(), floor.min_accuracy), (3, 0.25));

        // No kept task at the bar: no noise floor, rather than one of noise.
        let mut none = run_with_kept_tasks();
        none.tasks.truncate(1);
        assert!(noise_floor(&none, "dropped", 100, 300, 200.0).is_none());
    }

    #[test]
    fn retention_is_normalized_by_chance_and_undefined_for_unlearned_tasks() {
        let series = [(0, 0.1), (100, 0.9), (110, 0.5), (120, 0.1)];
        let r = retention(&series, 100, 120, 0.1).unwrap();
        assert_eq!(r, vec![(0.0, 1.0), (10.0, 0.5), (20.0, 0.0)]);
        assert!(retention(&series, 0, 120, 0.1).is_none());
    }
}
