//! Decay analysis: pure functions over a run's logged files. Works on any
//! run directory, finished, interrupted or diverged (`ebb analyze RUN_DIR`).
//!
//! Per dropped task, from its drop step t₀ (A = exact match):
//! - retention r(Δ) = (A(t₀+Δ) − chance) / (A(t₀) − chance);
//! - half-life: the first Δ with r ≤ 0.5, linearly interpolated;
//! - exponential and power-law fits (see `fit`), the preferred by AIC;
//! - AURC: the mean of r over [0, horizon] (trapezoid rule);
//! - forgetting: best accuracy before the drop − accuracy at the window's
//!   end, and accuracy at the drop − accuracy at the window's end;
//! - after a revive: savings = 1 − (steps to regain `regain`·A(t₀)) /
//!   (steps it first took to reach that level).
//! For sequential runs: the accuracy matrix, average accuracy, backward
//! transfer and forgetting.

pub mod fit;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::config::Config;
use crate::error::{Error, Result};

/// Below this accuracy gap over chance at the drop, retention is undefined
/// (the task was not learned, so there is nothing to decay).
const MIN_LEARNED_GAP: f64 = 0.05;

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
    pub fn load(dir: &Path) -> Result<RunData> {
        let config: Config = toml::from_str(&read(dir, "config.toml")?).map_err(|e| Error::input(format!("{}: {}", dir.join("config.toml").display(), e.message())))?;
        let bad = |file: &str, line: &str| Error::input(format!("{}: malformed row {line:?}", dir.join(file).display()));
        let mut tasks = Vec::new();
        for line in read(dir, "tasks.csv")?.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 5 {
                return Err(bad("tasks.csv", line));
            }
            tasks.push(TaskInfo { id: f[0].into(), family: f[1].into(), chance: f[2].parse().map_err(|_| bad("tasks.csv", line))?, weight: f[4].parse().map_err(|_| bad("tasks.csv", line))? });
        }
        let mut events = Vec::new();
        if let Ok(text) = read(dir, "events.csv") {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.splitn(4, ',').collect();
                if f.len() != 4 {
                    return Err(bad("events.csv", line));
                }
                events.push(EventRow { step: f[0].parse().map_err(|_| bad("events.csv", line))?, event: f[1].into(), task: f[2].into(), value: f[3].into() });
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
fn at(series: &[(u64, f64)], step: u64) -> Option<f64> {
    series.iter().take_while(|p| p.0 <= step).last().map(|p| p.1)
}

/// Normalized retention points (Δ, r) over [t0, end].
pub fn retention(series: &[(u64, f64)], t0: u64, end: u64, chance: f64) -> Option<Vec<(f64, f64)>> {
    let a0 = at(series, t0)?;
    if a0 - chance < MIN_LEARNED_GAP {
        return None;
    }
    Some(series.iter().filter(|p| p.0 >= t0 && p.0 <= end).map(|&(t, a)| ((t - t0) as f64, (a - chance) / (a0 - chance))).collect())
}

/// The first Δ where r ≤ 0.5, interpolated between evaluations.
pub fn half_life(points: &[(f64, f64)]) -> Option<f64> {
    let i = points.iter().position(|p| p.1 <= 0.5)?;
    if i == 0 {
        return Some(points[0].0);
    }
    let ((d0, r0), (d1, r1)) = (points[i - 1], points[i]);
    Some(d0 + (r0 - 0.5) / (r0 - r1) * (d1 - d0))
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

fn opt(x: Option<f64>) -> Value {
    x.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(v))
}

/// Whether an `events.csv` row records a learned trigger (learned, or its cap reached).
fn is_learned_row(e: &EventRow) -> bool {
    e.event == "learned" || e.event == "learned_cap"
}

/// The exact match at which `task`, dropped at `t0`, counts as learned: the
/// threshold of its latest learned-trigger row up to `t0` (the `when_learned`
/// of the event that dropped it), else `analysis.learned`.
fn learned_threshold(run: &RunData, task: &str, t0: u64) -> f64 {
    run.events.iter().filter(|e| e.task == task && e.step <= t0 && is_learned_row(e)).filter_map(|e| e.value.parse().ok()).next_back().unwrap_or(run.config.analysis.learned)
}

/// Everything about one drop of one task. A task below its learned
/// threshold at the drop gets `status: not_learned` and no retention, fits
/// or half-life, so it stays out of every fit and mean.
fn drop_summary(run: &RunData, task: &TaskInfo, t0: u64) -> Value {
    let series = run.accuracy(&task.id);
    // The window ends at the next event touching this task, or the last step.
    let next = run.events.iter().filter(|e| e.step > t0 && !is_learned_row(e) && (e.task == task.id || e.event == "phase")).map(|e| e.step).min();
    let end = next.unwrap_or(run.last_step);
    let a0 = at(series, t0);
    let threshold = learned_threshold(run, &task.id, t0);
    let learned = a0.is_some_and(|a| a >= threshold);
    let best_before = series.iter().filter(|p| p.0 <= t0).map(|p| p.1).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let a_end = at(series, end);
    let points = if learned { retention(series, t0, end, task.chance) } else { None };
    let horizon = run.config.analysis.horizon.unwrap_or(end - t0) as f64;
    let (exp, pow) = match &points {
        Some(p) => (fit::fit_exponential(p), fit::fit_power(p)),
        None => (None, None),
    };
    let preferred = match (&exp, &pow) {
        (Some(e), Some(p)) => Some(if p.aic < e.aic { "power" } else { "exponential" }),
        (Some(_), None) => Some("exponential"),
        _ => None,
    };
    let mut out = json!({
        "task": task.id,
        "step": t0,
        "window_end": end,
        "chance": task.chance,
        "accuracy_at_drop": opt(a0),
        "best_accuracy_before_drop": opt(best_before),
        "accuracy_at_window_end": opt(a_end),
        "forgetting_from_best": opt(best_before.zip(a_end).map(|(b, e)| b - e)),
        "forgetting_from_drop": opt(a0.zip(a_end).map(|(a, e)| a - e)),
        "learned": learned,
        "learned_threshold": threshold,
        "status": if learned { "learned" } else { "not_learned" },
        "learned_at_drop": points.is_some(),
        "retention": points.clone().unwrap_or_default().iter().map(|&(d, r)| json!([d, r])).collect::<Vec<_>>(),
        "half_life": opt(points.as_deref().and_then(half_life)),
        "aurc": opt(points.as_deref().and_then(|p| aurc(p, horizon))),
        "aurc_horizon": horizon,
        "fits": { "exponential": exp, "power": pow, "preferred": preferred },
    });
    if let Some(revive) = run.events.iter().find(|e| e.step > t0 && e.task == task.id && e.event == "revive") {
        let level = a0.map(|a| run.config.analysis.regain * a);
        let regained = level.and_then(|l| first_reaching(series, revive.step, l)).map(|t| t - revive.step);
        let started = run.events.iter().filter(|e| e.task == task.id && e.step < t0 && (e.event == "revive" || e.event == "phase")).map(|e| e.step).min().unwrap_or(0);
        let first = level.and_then(|l| first_reaching(series, started, l)).map(|t| t - started);
        let savings = match (regained, first) {
            (Some(r), Some(f)) if f > 0 => Some(1.0 - r as f64 / f as f64),
            _ => None,
        };
        out["revive"] = json!({
            "step": revive.step,
            "regain_level": opt(level),
            "steps_to_regain": regained,
            "steps_first_learned": first,
            "savings": opt(savings),
        });
    }
    out
}

/// Every `when_learned` event: when its tasks were learned (its `learned`
/// rows), and when it fired, at the cap or after learning, or that it never did.
fn learned_events(run: &RunData) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, e) in run.config.schedule.iter().enumerate() {
        let Some(threshold) = e.when_learned else { continue };
        let tasks = e.tasks();
        let learned_row = |step: u64, task: &str| run.events.iter().any(|r| r.step == step && r.task == task && r.event == "learned" && r.value.parse() == Ok(threshold));
        let learned_at = run.events.iter().map(|r| r.step).find(|&s| tasks.iter().all(|t| learned_row(s, t)));
        let due = learned_at.map(|s| s + e.after.unwrap_or(0)).into_iter().chain(e.step).min();
        let fired_at = due.filter(|&s| run.events.iter().any(|r| r.step == s && tasks.contains(&r.task.as_str()) && ["drop", "revive", "weight"].contains(&r.event.as_str())));
        let status = match (fired_at, learned_at) {
            (Some(s), Some(l)) if l + e.after.unwrap_or(0) == s => "fired_when_learned",
            (Some(_), _) => "fired_at_cap",
            (None, None) => "never_learned",
            (None, Some(_)) => "due_after_the_end",
        };
        out.push(json!({
            "schedule": i,
            "tasks": tasks,
            "when_learned": threshold,
            "after": e.after.unwrap_or(0),
            "cap": e.step,
            "learned_at": learned_at,
            "fired_at": fired_at,
            "status": status,
        }));
    }
    out
}

/// The accuracy matrix of a sequential run: R[i][j] = accuracy on the task
/// of phase j after phase i.
fn sequential_summary(run: &RunData) -> Option<Value> {
    let phases: Vec<&EventRow> = run.events.iter().filter(|e| e.event == "phase").collect();
    if phases.len() < 2 {
        return None;
    }
    let ends: Vec<u64> = phases.iter().skip(1).map(|e| e.step).chain([run.config.train.steps]).collect();
    let order: Vec<&str> = phases.iter().map(|e| e.task.as_str()).collect();
    let t = order.len();
    let r: Vec<Vec<Option<f64>>> = ends.iter().map(|&end| order.iter().map(|task| at(run.accuracy(task), end).filter(|_| end <= run.last_step)).collect()).collect();
    let complete = r.iter().all(|row| row.iter().all(Option::is_some));
    let v = |i: usize, j: usize| r[i][j].unwrap_or(f64::NAN);
    let (average, bwt, forgetting) = if complete {
        let average = (0..t).map(|j| v(t - 1, j)).sum::<f64>() / t as f64;
        let bwt = (0..t - 1).map(|j| v(t - 1, j) - v(j, j)).sum::<f64>() / (t - 1) as f64;
        let forgetting = (0..t - 1).map(|j| (0..t - 1).map(|i| v(i, j)).fold(f64::NEG_INFINITY, f64::max) - v(t - 1, j)).sum::<f64>() / (t - 1) as f64;
        (Some(average), Some(bwt), Some(forgetting))
    } else {
        (None, None, None)
    };
    Some(json!({
        "order": order,
        "phase_ends": ends,
        "normalization": "raw exact-match accuracy (not chance-corrected); R[i][j] is task j (in phase order) after phase i",
        "accuracy_matrix": r.iter().map(|row| row.iter().map(|&x| opt(x)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "average_accuracy": opt(average),
        "backward_transfer": opt(bwt),
        "forgetting": opt(forgetting),
    }))
}

/// The summary of a run directory.
pub fn summarize(dir: &Path) -> Result<Value> {
    let run = RunData::load(dir)?;
    let diverged = run.events.iter().find(|e| e.event == "diverged").map(|e| json!({ "step": e.step, "what": e.value, "message": format!("diverged at step {}", e.step) }));
    let finished = diverged.is_none() && run.last_step >= run.config.train.steps;
    let tasks: serde_json::Map<String, Value> = run
        .tasks
        .iter()
        .map(|t| {
            let series = run.accuracy(&t.id);
            let final_acc = series.last().map(|p| p.1);
            (t.id.clone(), json!({ "family": t.family, "chance": t.chance, "initial_weight": t.weight, "final_exact_match": opt(final_acc), "best_exact_match": opt(series.iter().map(|p| p.1).reduce(f64::max)) }))
        })
        .collect();
    let drops: Vec<Value> = run
        .events
        .iter()
        .filter(|e| e.event == "drop")
        .filter_map(|e| run.tasks.iter().find(|t| t.id == e.task).map(|t| drop_summary(&run, t, e.step)))
        .collect();
    let model: Value = std::fs::read_to_string(dir.join("model.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    Ok(json!({
        "run": run.config.name,
        "params": model["params"],
        "suite": model["suite"],
        "steps": run.config.train.steps,
        "last_logged_step": run.last_step,
        "finished": finished,
        "diverged": diverged,
        "tasks": tasks,
        "drops": drops,
        "learned_events": learned_events(&run),
        "sequential": sequential_summary(&run),
    }))
}

/// Writes `summary.json` into the run directory.
pub fn write_summary(dir: &Path) -> Result<Value> {
    let summary = summarize(dir)?;
    let text = serde_json::to_string_pretty(&summary).expect("JSON values serialize");
    crate::run_dir::write_atomic(&dir.join("summary.json"), format!("{text}\n").as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life_interpolates_between_evaluations() {
        let pts = [(0.0, 1.0), (10.0, 0.8), (20.0, 0.4), (30.0, 0.2)];
        assert!((half_life(&pts).unwrap() - 17.5).abs() < 1e-12);
        assert_eq!(half_life(&[(0.0, 1.0), (5.0, 0.9)]), None);
    }

    #[test]
    fn aurc_is_the_mean_retention_over_the_horizon() {
        let pts = [(0.0, 1.0), (10.0, 0.0)];
        assert!((aurc(&pts, 10.0).unwrap() - 0.5).abs() < 1e-12);
        // Beyond the data the last value is held; inside, the curve is cut at the horizon.
        assert!((aurc(&pts, 20.0).unwrap() - 0.25).abs() < 1e-12);
        assert!((aurc(&pts, 5.0).unwrap() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn retention_is_normalized_by_chance_and_undefined_for_unlearned_tasks() {
        let series = [(0, 0.1), (100, 0.9), (110, 0.5), (120, 0.1)];
        let r = retention(&series, 100, 120, 0.1).unwrap();
        assert_eq!(r, vec![(0.0, 1.0), (10.0, 0.5), (20.0, 0.0)]);
        assert!(retention(&series, 0, 120, 0.1).is_none());
    }
}
