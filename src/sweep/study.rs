//! `ebb report SWEEP_DIR`: the study a sweep was built for, written from
//! the sweep directory alone, so that a rerun regenerates every number.
//!
//! A condition is a suite (the runs' `data.suite`: the overlap condition);
//! a size is a model shape (the varied `model.*` keys); a stratum is every
//! other varied key but the seed (e.g. the weight decay). Only finished runs
//! enter, and only their learned drops (a drop below the learned threshold
//! is counted and left out, as everywhere in ebb).
//!
//! The report draws retention against steps since the drop (mean and 95% t
//! band over runs, the kept tasks' retention dotted beside it as the noise
//! floor), half-life against parameter count with the censored power law,
//! the zero-shot tasks (trained never, evaluated throughout) over training
//! and around the drop, and the soft-prompt accuracy of the erasure
//! batteries. It runs those batteries itself (`ebb erasure --only
//! restore,relearn,soft-prompt --control auto`) on one dropped task per
//! condition at the smallest and the largest size, and keeps them: a rerun
//! reuses every battery already measured. Then it answers the study's
//! questions, each with its measurement and 95% interval, and says "not
//! resolved at this size" where the interval does not exclude no effect.
//!
//! Writes `NAME.md`, `NAME.html` (self-contained, SVG inline) and
//! `NAME/*.png` for the Markdown page.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::RunStatus;
use super::aggregate::{self, HalfLifeScaling, RunRow, mean, short_params};
use crate::analysis::stats::{self, Mean, Median, Observation};
use crate::analysis::{DropSummary, RunData, Summary};
use crate::erasure::Erasure;
use crate::error::{Error, Result};
use crate::plot::DrawResult;
use crate::plot::charts::{Chart, FONT, both_backends, color, err, legend};

/// The instruments of the report's batteries (soft prompts on D and C only:
/// P's would cost most of the battery and answer nothing asked here).
const BATTERY: &str = "restore,relearn,soft-prompt";

/// What `ebb report` is asked.
pub struct ReportOptions {
    /// The Markdown page (default: the sweep's `[report] study`, else `SWEEP_DIR/study.md`).
    pub out: Option<PathBuf>,
    /// Erasure batteries at once (default: one per core on the CPU, one on a GPU).
    pub jobs: Option<usize>,
    /// Every battery's `--device` (`cpu`, `cuda` or `auto`).
    pub device: &'static str,
    pub quiet: bool,
}

/// One finished run, as the study sees it.
struct StudyRun {
    row: RunRow,
    dir: PathBuf,
    condition: String,
    stratum: String,
    size: String,
    data: RunData,
}

/// The condition of a run: its suite.
fn condition_of(r: &RunRow) -> String {
    r.summary.as_ref().and_then(|s| s.suite.clone()).unwrap_or_else(|| r.condition())
}

/// Every varied value but the seed, the base and the model shape.
fn stratum_of(r: &RunRow) -> String {
    let s: Vec<String> = r
        .point
        .iter()
        .filter(|(k, _)| k != "seed" && k != "base" && !k.starts_with("model."))
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    if s.is_empty() { "all runs".into() } else { s.join(", ") }
}

/// The model shape of a run: its varied `model.*` values.
fn size_of(r: &RunRow) -> String {
    let s: Vec<String> =
        r.point.iter().filter_map(|(k, v)| Some(format!("{} = {v}", k.strip_prefix("model.")?))).collect();
    if s.is_empty() { "one size".into() } else { s.join(", ") }
}

impl StudyRun {
    fn summary(&self) -> &Summary {
        self.row.summary.as_ref().expect("a finished run has a summary")
    }

    fn params(&self) -> f64 {
        self.row.params().unwrap_or(0.0)
    }

    fn learned(&self) -> Vec<&DropSummary> {
        self.row.learned_drops().collect()
    }

    /// The mean AURC of its learned drops.
    fn aurc(&self) -> Option<f64> {
        mean(self.learned().iter().filter_map(|d| d.aurc))
    }

    /// The mean AURC of the kept tasks over the same window (the noise floor).
    fn kept_aurc(&self) -> Option<f64> {
        self.learned().first().and_then(|d| d.noise_floor.as_ref()?.aurc_mean)
    }

    /// Retention of the learned drops, averaged over them, at each Δ.
    fn dropped_curve(&self) -> Vec<(i64, f64)> {
        let curves: Vec<Vec<(i64, f64)>> = self
            .learned()
            .iter()
            .map(|d| d.retention.iter().map(|p| (p.delta.round() as i64, p.r)).collect())
            .collect();
        pointwise(&curves, curves.len()).into_iter().map(|(k, m)| (k, m.mean)).collect()
    }

    /// Retention of the kept tasks (the noise floor's) over the first learned drop's window.
    fn kept_curve(&self) -> Vec<(i64, f64)> {
        let Some(d) = self.learned().first().copied() else { return Vec::new() };
        let tasks = d.noise_floor.as_ref().map_or(&[][..], |n| n.tasks.as_slice());
        let curves: Vec<Vec<(i64, f64)>> = tasks
            .iter()
            .filter_map(|t| {
                let chance = self.summary().tasks.get(t)?.chance;
                let r = crate::analysis::retention(self.data.accuracy(t), d.step, d.window_end, chance)?;
                Some(r.into_iter().map(|(delta, r)| (delta.round() as i64, r)).collect())
            })
            .collect();
        pointwise(&curves, curves.len()).into_iter().map(|(k, m)| (k, m.mean)).collect()
    }

    /// Tasks never trained (weight 0 from the start, no schedule event) but evaluated.
    fn zero_shot_tasks(&self) -> Vec<String> {
        self.summary()
            .tasks
            .iter()
            .filter(|(t, s)| s.initial_weight == 0.0 && !self.data.events.iter().any(|e| &e.task == *t))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The zero-shot tasks' mean accuracy at each evaluation on the regular grid.
    fn zero_shot_curve(&self) -> Vec<(i64, f64)> {
        let every = self.data.config.eval.every.max(1);
        let curves: Vec<Vec<(i64, f64)>> = self
            .zero_shot_tasks()
            .iter()
            .map(|t| self.data.accuracy(t).iter().filter(|p| p.0 % every == 0).map(|&(s, a)| (s as i64, a)).collect())
            .collect();
        pointwise(&curves, curves.len()).into_iter().map(|(k, m)| (k, m.mean)).collect()
    }

    /// The step of its (first) drop.
    fn drop_step(&self) -> Option<u64> {
        self.summary().drops.first().map(|d| d.step)
    }
}

/// Mean and 95% t interval over `curves` at each x present in at least `min` of them.
fn pointwise<K: Ord + Copy>(curves: &[Vec<(K, f64)>], min: usize) -> Vec<(K, Mean)> {
    let mut at: BTreeMap<K, Vec<f64>> = BTreeMap::new();
    for c in curves {
        for &(k, v) in c {
            at.entry(k).or_default().push(v);
        }
    }
    at.into_iter().filter(|(_, v)| v.len() >= min.max(1)).filter_map(|(k, v)| Some((k, stats::mean_ci(&v)?))).collect()
}

/// Welch's difference of means `a − b` and its 95% half-width (None with fewer than two values on a side).
fn welch(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let (ma, mb) = (stats::mean_ci(a)?, stats::mean_ci(b)?);
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let var = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    let (qa, qb) = (var(a, ma.mean) / a.len() as f64, var(b, mb.mean) / b.len() as f64);
    let se2 = qa + qb;
    let diff = ma.mean - mb.mean;
    if se2 <= 0.0 {
        return Some((diff, 0.0));
    }
    let df = se2 * se2 / (qa * qa / (a.len() - 1) as f64 + qb * qb / (b.len() - 1) as f64);
    Some((diff, stats::t95(df) * se2.sqrt()))
}

/// Newcombe's interval for p1 − p2 from the two Wilson intervals.
fn newcombe(p1: f64, [l1, u1]: [f64; 2], p2: f64, [l2, u2]: [f64; 2]) -> (f64, f64, f64) {
    let d = p1 - p2;
    (d, d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(), d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt())
}

/// Where an accuracy's interval is clipped: a t interval over a few runs
/// can reach past what an accuracy can be.
const ACCURACY: Option<(f64, f64)> = Some((0.0, 1.0));
/// Where a step count's interval is clipped.
const STEPS: Option<(f64, f64)> = Some((0.0, f64::INFINITY));

/// `0.123 [0.100, 0.150]`, or the value and why it has no interval; the
/// interval clipped to `bounds` where given.
fn with_ci(m: Option<Mean>, digits: usize, bounds: Option<(f64, f64)>) -> String {
    let (lo, hi) = bounds.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    match m {
        Some(Mean { mean, ci95: Some(h), .. }) => {
            format!("{mean:.digits$} [{:.digits$}, {:.digits$}]", (mean - h).max(lo), (mean + h).min(hi))
        }
        Some(Mean { mean, n, .. }) => format!("{mean:.digits$} (n = {n}: no interval)"),
        None => "–".into(),
    }
}

fn signed_ci(diff: f64, half: f64, digits: usize) -> String {
    format!("{diff:+.digits$} [{:+.digits$}, {:+.digits$}]", diff - half, diff + half)
}

/// The page, as blocks rendered to Markdown and to HTML.
enum Block {
    Heading(String),
    Text(String),
    Table(Vec<String>, Vec<Vec<String>>),
    Figure(usize),
}

/// Lines with bands over panels (retention, zero-shot, soft prompts).
struct CurvePanels {
    name: &'static str,
    title: String,
    cols: usize,
    panel_height: u32,
    x_desc: String,
    y_desc: String,
    /// Tick labels for integer x (soft prompts: the k tried).
    x_ticks: Option<Vec<String>>,
    panels: Vec<CurvePanel>,
    /// Legend lines that are not curves (what dotted and dashed mean).
    notes: Vec<String>,
    /// Where in each panel the legend goes: where its curves leave room.
    legend_at: SeriesLabelPosition,
    /// Whether the y range grows to leave the legend (at the top) its own room.
    legend_above_data: bool,
}

struct CurvePanel {
    title: String,
    curves: Vec<Curve>,
    /// Vertical lines (x, colour index).
    marks: Vec<(f64, usize)>,
}

/// (x, y, 95% interval).
type CurvePoint = (f64, f64, Option<(f64, f64)>);

struct Curve {
    label: Option<String>,
    color: usize,
    dotted: bool,
    points: Vec<CurvePoint>,
    /// The x of one point to circle (soft prompts: the best fit, the k the answers compare).
    circled: Option<f64>,
}

impl Curve {
    fn from_means(label: Option<String>, color: usize, dotted: bool, pts: &[(i64, Mean)]) -> Curve {
        Curve {
            label,
            color,
            dotted,
            points: pts.iter().map(|(x, m)| (*x as f64, m.mean, m.ci95.map(|h| (m.mean - h, m.mean + h)))).collect(),
            circled: None,
        }
    }

    /// The mean alone, without its band.
    fn without_band(mut self) -> Curve {
        self.points.iter_mut().for_each(|p| p.2 = None);
        self
    }
}

impl CurvePanels {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let area = area.titled(&self.title, (FONT, 18)).map_err(err)?;
        let rows = self.panels.len().div_ceil(self.cols).max(1);
        // One y range for every panel, so that panels compare at a glance.
        let pts = || self.panels.iter().flat_map(|p| p.curves.iter()).flat_map(|c| c.points.iter());
        let (y0, y1) = pts()
            .fold((0.0f64, 1.0f64), |(a, b), p| (a.min(p.2.map_or(p.1, |i| i.0)), b.max(p.2.map_or(p.1, |i| i.1))));
        let (y0, y1) = (y0.max(-0.5) - 0.02, y1.min(2.0));
        // With `legend_above_data`, the top share of the plot that the legend
        // takes is left empty: its rows at about 18 px each, in a plot about
        // 80 px shorter than its panel.
        let labelled = self.panels.iter().map(|p| p.curves.iter().filter(|c| c.label.is_some()).count()).max();
        let legend_px = (labelled.unwrap_or(0) + self.notes.len()) * 18 + 24;
        let share = (legend_px as f64 / (self.panel_height as f64 - 80.0)).min(0.8);
        let y = if self.legend_above_data { (y0, (y1 + 0.05 - share * y0) / (1.0 - share)) } else { (y0, y1 + 0.15) };
        for (panel, sub) in self.panels.iter().zip(area.split_evenly((rows, self.cols))) {
            self.draw_panel(panel, y, &sub)?;
        }
        Ok(())
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        panel: &CurvePanel,
        (y0, y1): (f64, f64),
        area: &DrawingArea<DB, Shift>,
    ) -> DrawResult {
        let pts = || panel.curves.iter().flat_map(|c| c.points.iter());
        let (x0, x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 14))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(44)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let ticks = self.x_ticks.clone();
        let tick = move |v: &f64| match &ticks {
            Some(t) if (v - v.round()).abs() < 1e-6 && *v >= 0.0 => {
                t.get(v.round() as usize).cloned().unwrap_or_default()
            }
            Some(_) => String::new(),
            None => format!("{v:.0}"),
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc.as_str())
            .x_label_formatter(&tick)
            .y_label_formatter(&|v| format!("{:.1}", if v.abs() < 0.05 { 0.0 } else { *v }))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13));
        if let Some(t) = &self.x_ticks {
            mesh.x_labels(t.len());
        }
        mesh.draw().map_err(err)?;
        for &(x, c) in &panel.marks {
            let col = color(c);
            chart
                .draw_series(DashedLineSeries::new(
                    [(x, y0), (x, y1)],
                    4,
                    4,
                    ShapeStyle::from(&col.mix(0.7)).stroke_width(1),
                ))
                .map_err(err)?;
        }
        let mut labels = 0;
        for c in &panel.curves {
            let col = color(c.color);
            let band: Vec<(f64, f64, f64)> = c.points.iter().filter_map(|p| Some((p.0, p.2?.0, p.2?.1))).collect();
            if band.len() > 1 {
                let outline: Vec<(f64, f64)> =
                    band.iter().map(|b| (b.0, b.2)).chain(band.iter().rev().map(|b| (b.0, b.1))).collect();
                let alpha = if c.dotted { 0.08 } else { 0.18 };
                chart.draw_series(std::iter::once(Polygon::new(outline, col.mix(alpha).filled()))).map_err(err)?;
            }
            let line = c.points.iter().map(|p| (p.0, p.1));
            let style = ShapeStyle::from(&col).stroke_width(if c.dotted { 1 } else { 2 });
            let series = if c.dotted {
                chart.draw_series(DashedLineSeries::new(line, 3, 4, style)).map_err(err)?
            } else {
                chart.draw_series(LineSeries::new(line, style)).map_err(err)?
            };
            if let Some(label) = &c.label {
                labels += 1;
                series.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&col).stroke_width(3))
                });
            }
            if let Some(p) = c.circled.and_then(|x| c.points.iter().find(|p| p.0 == x)) {
                let ring = ShapeStyle::from(&col).stroke_width(2);
                chart.draw_series(std::iter::once(Circle::new((p.0, p.1), 6, ring))).map_err(err)?;
            }
        }
        for note in &self.notes {
            labels += 1;
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(err)?
                .label(note)
                .legend(|(x, y)| EmptyElement::at((x, y)));
        }
        legend(&mut chart, labels, self.legend_at.clone())
    }
}

impl Chart for CurvePanels {
    fn name(&self) -> &'static str {
        self.name
    }
    fn title(&self) -> String {
        self.title.clone()
    }
    fn size(&self) -> (u32, u32) {
        (1600, 60 + self.panel_height * self.panels.len().div_ceil(self.cols).max(1) as u32)
    }
    both_backends!();
}

/// Half-life against parameter count, one panel per stratum.
struct HalfLifePanels {
    panels: Vec<HalfLifeScaling>,
}

impl HalfLifePanels {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        for (p, sub) in self.panels.iter().zip(area.split_evenly((1, self.panels.len().max(1)))) {
            p.draw(&sub)?;
        }
        Ok(())
    }
}

impl Chart for HalfLifePanels {
    fn name(&self) -> &'static str {
        "half_life"
    }
    fn title(&self) -> String {
        "Half-life of dropped tasks against parameter count".into()
    }
    fn size(&self) -> (u32, u32) {
        (1600, 650)
    }
    both_backends!();
}

/// One battery of the report: a dropped task of one run.
struct Battery<'a> {
    run: &'a StudyRun,
    task: String,
    /// `smallest` or `largest`.
    which: &'static str,
    result: Option<Erasure>,
}

/// For each condition, at its smallest and largest size: the first run (in
/// the sweep's order) with a learned drop, and its most decayed learned task.
fn pick_batteries<'a>(runs: &'a [StudyRun], sizes: &[String]) -> Vec<Battery<'a>> {
    let mut out = Vec::new();
    for condition in conditions(runs) {
        let mine: Vec<&String> =
            sizes.iter().filter(|s| runs.iter().any(|r| r.condition == condition && &r.size == *s)).collect();
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else { continue };
        let ends: Vec<(&'static str, &String)> =
            if first == last { vec![("smallest", *first)] } else { vec![("smallest", *first), ("largest", *last)] };
        for (which, size) in ends {
            let pick = runs.iter().filter(|r| r.condition == condition && &r.size == size).find_map(|r| {
                let d = r.learned().into_iter().min_by(|a, b| {
                    a.accuracy_at_window_end.unwrap_or(1.0).total_cmp(&b.accuracy_at_window_end.unwrap_or(1.0))
                })?;
                Some((r, d.task.clone()))
            });
            if let Some((run, task)) = pick {
                out.push(Battery { run, task, which, result: None });
            }
        }
    }
    out
}

/// The battery's erasure.json when it holds this report's instruments.
fn current_battery(run_dir: &Path, task: &str, relearn_steps: u64) -> Option<Erasure> {
    let text = std::fs::read_to_string(crate::erasure::out_dir(run_dir, task).join("erasure.json")).ok()?;
    let e: Erasure = serde_json::from_str(&text).ok()?;
    let relearn_cap = e.relearn.as_ref()?.cap;
    let prompted = |m: &str| e.soft_prompts.as_ref().is_some_and(|s| s.models.iter().any(|x| x.model == m));
    (e.version == crate::erasure::ERASURE_VERSION
        && e.restore.is_some()
        && prompted("D")
        && prompted("C")
        && e.control.is_some()
        && relearn_cap == relearn_steps)
        .then_some(e)
}

/// The `ebb erasure` that measures `task` in `run_dir` for the report.
fn battery_command(
    exe: &Path,
    run_dir: &Path,
    task: &str,
    relearn_steps: u64,
    threads: usize,
    device: &str,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("erasure")
        .arg(run_dir)
        .args(["--task", task, "--only", BATTERY, "--control", "auto", "--device", device])
        .args(["--soft-prompt-on", "D,C"])
        .args(["--relearn-steps", &relearn_steps.to_string(), "--threads", &threads.to_string()]);
    cmd
}

/// Runs the batteries not yet measured, `opts.jobs` at a time (default: one
/// per core on the CPU, one on a GPU), each as its own `ebb erasure`.
fn run_batteries(batteries: &mut [Battery], relearn_steps: u64, opts: &ReportOptions) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find the ebb executable: {e}")))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = opts.jobs.unwrap_or(if opts.device == "cpu" { cores } else { 1 }).max(1);
    let threads = (cores / jobs).max(1);
    let todo: Vec<usize> = (0..batteries.len())
        .filter(|&i| current_battery(&batteries[i].run.dir, &batteries[i].task, relearn_steps).is_none())
        .collect();
    let next = std::sync::Mutex::new(todo.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    let jobs_list: Vec<(PathBuf, String)> = batteries.iter().map(|b| (b.run.dir.clone(), b.task.clone())).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some(i) = next.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                    let (dir, task) = &jobs_list[i];
                    if !opts.quiet {
                        eprintln!("erasure battery: {} in {}", task, dir.display());
                    }
                    let out = battery_command(&exe, dir, task, relearn_steps, threads, opts.device)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .output();
                    let failed = match out {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(why) = failed {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{task} in {}: {why}", dir.display()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if !failures.is_empty() {
        return Err(Error::input(format!("erasure batteries failed: {}", failures.join("; "))));
    }
    for b in batteries.iter_mut() {
        b.result = current_battery(&b.run.dir, &b.task, relearn_steps);
    }
    Ok(())
}

fn conditions(runs: &[StudyRun]) -> Vec<String> {
    let mut c: Vec<String> = runs.iter().map(|r| r.condition.clone()).collect();
    c.sort();
    c.dedup();
    c
}

fn strata(runs: &[StudyRun]) -> Vec<String> {
    let mut s: Vec<String> = Vec::new();
    for r in runs {
        if !s.contains(&r.stratum) {
            s.push(r.stratum.clone());
        }
    }
    s
}

/// The sizes, smallest first (by their mean parameter count).
fn sizes(runs: &[StudyRun]) -> Vec<String> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        by.entry(r.size.clone()).or_default().push(r.params());
    }
    let mut s: Vec<(String, f64)> = by.into_iter().map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64)).collect();
    s.sort_by(|a, b| a.1.total_cmp(&b.1));
    s.into_iter().map(|(k, _)| k).collect()
}

/// What `ebb sweep` left in the sweep directory's report.json for the report.
struct Spec {
    /// Where the page goes ([report] study), unless `--out` says otherwise.
    study: Option<PathBuf>,
    /// The batteries' `--relearn-steps`.
    relearn_steps: u64,
    /// The `ebb sweep` command that planned the sweep.
    command: Option<String>,
}

/// The sweep's `[report]` settings and command (report.json).
fn spec(dir: &Path) -> Spec {
    let v: serde_json::Value = std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    Spec {
        study: v["study"].as_str().map(PathBuf::from),
        relearn_steps: v["relearn_steps"].as_u64().unwrap_or(1000),
        command: v["command"].as_str().map(String::from),
    }
}

/// Where and in how long the sweep ran (sweep-log.csv), and the batteries' compute.
fn provenance(dir: &Path, batteries: &[Battery]) -> String {
    let log = std::fs::read_to_string(dir.join("sweep-log.csv")).unwrap_or_default();
    // Columns as in `sweep::SESSION_COLUMNS`; a log from before `device` has none.
    let rows: Vec<Vec<&str>> =
        log.lines().skip(1).map(|l| l.split(',').collect()).filter(|f: &Vec<&str>| f.len() >= 7).collect();
    let seconds: f64 = rows.iter().filter_map(|f| f[1].parse::<f64>().ok()).sum();
    let machines: Vec<String> = {
        let device = |f: &[&str]| match f.get(7) {
            Some(&d) if !d.is_empty() => format!(", device {d}"),
            _ => String::new(),
        };
        let mut m: Vec<String> = rows
            .iter()
            .map(|f| format!("{} ({} cores; {} runs at once, {} threads each{})", f[6], f[5], f[3], f[4], device(f)))
            .collect();
        m.dedup();
        m
    };
    let battery_seconds: f64 = batteries
        .iter()
        .filter_map(|b| std::fs::read_to_string(crate::erasure::out_dir(&b.run.dir, &b.task).join("timing.csv")).ok())
        .flat_map(|t| t.lines().skip(1).filter_map(|l| l.split(',').nth(1)?.parse::<f64>().ok()).collect::<Vec<_>>())
        .sum();
    if rows.is_empty() {
        return format!(
            "The sweep left no sweep-log.csv (it ran elsewhere, e.g. on Slurm). The erasure batteries took {:.1} minutes of compute (summed over the batteries).",
            battery_seconds / 60.0
        );
    }
    format!(
        "The sweep ran on {} in {:.1} minutes of wall time ({} session{} of `ebb sweep`); the erasure batteries took {:.1} minutes of compute more (summed over the batteries).",
        machines.join("; "),
        seconds / 60.0,
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        battery_seconds / 60.0
    )
}

/// Runs `ebb report`: batteries, figures, tables and answers; returns the files written.
pub fn report(dir: &Path, opts: &ReportOptions) -> Result<Vec<PathBuf>> {
    let (_, rows) = aggregate::load(dir)?;
    let spec = spec(dir);
    let md_path = opts.out.clone().or(spec.study.clone()).unwrap_or_else(|| dir.join("study.md"));
    if md_path.extension().and_then(|e| e.to_str()) != Some("md") {
        return Err(Error::input(format!("--out {}: the report is a Markdown file (NAME.md)", md_path.display())));
    }
    let excluded: Vec<String> = rows
        .iter()
        .filter(|r| r.status != RunStatus::Finished)
        .map(|r| format!("{} ({})", r.id, r.status.name()))
        .collect();
    let mut runs = Vec::new();
    for row in rows.iter().filter(|r| r.status == RunStatus::Finished && r.summary.is_some()) {
        let run_dir = dir.join(&row.id);
        runs.push(StudyRun {
            condition: condition_of(row),
            stratum: stratum_of(row),
            size: size_of(row),
            data: RunData::load(&run_dir)?,
            dir: run_dir,
            row: row.clone(),
        });
    }
    if runs.is_empty() {
        return Err(Error::input(format!("{}: no finished run to report on", dir.display())));
    }
    let sizes = sizes(&runs);
    let mut batteries = pick_batteries(&runs, &sizes);
    run_batteries(&mut batteries, spec.relearn_steps, opts)?;

    let (blocks, charts) = compose(dir, &spec, &rows, &runs, &sizes, &batteries, &excluded);
    write(&md_path, &blocks, &charts)
}

/// Writes NAME.md, NAME.html and NAME/*.png.
fn write(md_path: &Path, blocks: &[Block], charts: &[Box<dyn Chart + '_>]) -> Result<Vec<PathBuf>> {
    let stem = md_path.file_stem().and_then(|s| s.to_str()).unwrap_or("study").to_string();
    let parent = md_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fig_dir = parent.join(&stem);
    std::fs::create_dir_all(&fig_dir).map_err(|e| Error::io(&fig_dir, e))?;
    let mut written = Vec::new();
    let mut svgs = Vec::new();
    for chart in charts {
        let fail = |e: String| Error::input(format!("{}: cannot draw {}: {e}", fig_dir.display(), chart.name()));
        let png = fig_dir.join(format!("{}.png", chart.name()));
        crate::plot::to_png(chart.as_ref(), &png).map_err(fail)?;
        svgs.push(crate::plot::to_svg(chart.as_ref()).map_err(fail)?);
        written.push(png);
    }
    let mut md = String::new();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ebb study</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;font-size:13px;margin:1em 0} td,th{border:1px solid #ccc;padding:3px 7px;text-align:left} svg{max-width:100%;height:auto}</style></head><body>\n",
    );
    let esc = crate::plot::report::escape;
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Heading(t) if i == 0 => {
                md.push_str(&format!("# {t}\n\n"));
                html.push_str(&format!("<h1>{}</h1>\n", esc(t)));
            }
            Block::Heading(t) => {
                md.push_str(&format!("## {t}\n\n"));
                html.push_str(&format!("<h2>{}</h2>\n", esc(t)));
            }
            Block::Text(t) => {
                md.push_str(&format!("{t}\n\n"));
                html.push_str(&format!("<p>{}</p>\n", esc(t).replace('`', "")));
            }
            Block::Table(head, rows) => {
                md.push_str(&format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len())));
                html.push_str("<table><tr>");
                for h in head {
                    html.push_str(&format!("<th>{}</th>", esc(h)));
                }
                html.push_str("</tr>\n");
                for r in rows {
                    md.push_str(&format!(
                        "| {} |\n",
                        r.iter().map(|c| c.replace('|', "/")).collect::<Vec<_>>().join(" | ")
                    ));
                    html.push_str(&format!(
                        "<tr>{}</tr>\n",
                        r.iter().map(|c| format!("<td>{}</td>", esc(c))).collect::<String>()
                    ));
                }
                md.push('\n');
                html.push_str("</table>\n");
            }
            Block::Figure(k) => {
                let chart = &charts[*k];
                md.push_str(&format!("![{}]({stem}/{}.png)\n\n", chart.title(), chart.name()));
                html.push_str(&format!(
                    "<figure>{}<figcaption>{}</figcaption></figure>\n",
                    svgs[*k],
                    esc(&chart.title())
                ));
            }
        }
    }
    html.push_str("</body></html>\n");
    let html_path = md_path.with_extension("html");
    crate::run_dir::write_atomic(md_path, md.as_bytes())?;
    crate::run_dir::write_atomic(&html_path, html.as_bytes())?;
    written.push(md_path.to_path_buf());
    written.push(html_path);
    Ok(written)
}

/// The runs of a condition at a size (all strata).
fn cell<'a>(runs: &'a [StudyRun], condition: &str, size: &str) -> Vec<&'a StudyRun> {
    runs.iter().filter(|r| r.condition == condition && r.size == size).collect()
}

/// An answer's verdict from an interval [lo, hi] of an effect.
fn verdict(lo: f64, hi: f64, above: &str, below: &str) -> String {
    if lo > 0.0 {
        above.into()
    } else if hi < 0.0 {
        below.into()
    } else {
        "not resolved at this size".into()
    }
}

/// The blocks of the page and its charts.
fn compose<'a>(
    dir: &Path,
    spec: &Spec,
    rows: &[RunRow],
    runs: &'a [StudyRun],
    sizes: &[String],
    batteries: &[Battery],
    excluded: &[String],
) -> (Vec<Block>, Vec<Box<dyn Chart + 'a>>) {
    let conditions = conditions(runs);
    let strata = strata(runs);
    let horizon = runs.iter().filter_map(|r| r.learned().first().map(|d| d.aurc_horizon)).fold(0.0f64, f64::max);
    let size_color = |s: &str| sizes.iter().position(|x| x == s).unwrap_or(0);
    let mut blocks = vec![Block::Heading(format!(
        "The overlap study: {}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("sweep")
    ))];
    let mut charts: Vec<Box<dyn Chart + 'a>> = Vec::new();

    // What was run.
    let mut axes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in rows {
        for (k, v) in &r.point {
            let e = axes.entry(k.as_str()).or_default();
            if !e.contains(&v.as_str()) {
                e.push(v.as_str());
            }
        }
    }
    let dropped_total: usize = runs.iter().map(|r| r.summary().drops.len()).sum();
    let learned_total: usize = runs.iter().map(|r| r.learned().len()).sum();
    let obs: Vec<Observation> =
        runs.iter().flat_map(|r| r.learned()).filter_map(|d| Some(d.half_life?.observation())).collect();
    let censored = obs.iter().filter(|o| o.censored).count();
    blocks.push(Block::Text(format!(
        "Generated by `ebb report` from the sweep directory `{}` alone: {} runs ({} finished{}), {}. {}",
        dir.display(),
        rows.len(),
        runs.len(),
        if excluded.is_empty() {
            String::new()
        } else {
            format!("; left out of every number: {}", excluded.join(", "))
        },
        axes.iter().map(|(k, v)| format!("{k} ∈ {{{}}}", v.join(", "))).collect::<Vec<_>>().join("; "),
        provenance(dir, batteries)
    )));
    blocks.push(Block::Text(match &spec.command {
        Some(sweep) => format!("Regenerate: `{sweep} && ebb report {}`.", dir.display()),
        None => "The sweep directory does not record the `ebb sweep` command that made it (it predates report.json's `command`).".into(),
    }));
    blocks.push(Block::Text(format!(
        "Dropped tasks: {dropped_total} drops; {learned_total} learned at the drop (the rest are reported below and left out of every fit and mean); of the learned, {censored} of {} half-lives censored ({:.0}%): still above half their drop accuracy at the window's end.",
        obs.len(),
        100.0 * censored as f64 / obs.len().max(1) as f64
    )));

    // Answers first; filled below.
    let answers_at = blocks.len();
    let mut answers: Vec<Vec<String>> = Vec::new();

    // Decay by condition and size.
    blocks.push(Block::Heading("Decay by condition and size".into()));
    blocks.push(Block::Text(format!(
        "AURC: the mean retention r over the {horizon:.0} steps after the drop (1: no decay; 0: back to chance at once), per run the mean over its learned drops; the noise floor is the same statistic for the tasks that stayed in training and were more right than wrong at the drop (exact match ≥ {floor}, or the learned bar where that is lower; – where none was, and \"k of n runs\" where only some runs had one); above 1, they were still being learned. Intervals: 95% t over runs (an accuracy's clipped to [0, 1]). Half-life: Kaplan–Meier median over drops (\"> x\": half or more censored).",
        floor = crate::analysis::NOISE_FLOOR_ACCURACY
    )));
    let mut table = Vec::new();
    for c in &conditions {
        for s in sizes {
            let cell = cell(runs, c, s);
            if cell.is_empty() {
                continue;
            }
            let aurc: Vec<f64> = cell.iter().filter_map(|r| r.aurc()).collect();
            let kept: Vec<f64> = cell.iter().filter_map(|r| r.kept_aurc()).collect();
            let drops: Vec<&DropSummary> = cell.iter().flat_map(|r| r.summary().drops.iter()).collect();
            let learned: Vec<&DropSummary> = cell.iter().flat_map(|r| r.learned()).collect();
            let obs: Vec<Observation> = learned.iter().filter_map(|d| Some(d.half_life?.observation())).collect();
            let steps: Vec<f64> = cell.iter().filter_map(|r| r.drop_step()).map(|s| s as f64).collect();
            let at_drop: Vec<f64> = learned.iter().filter_map(|d| d.accuracy_at_drop).collect();
            table.push(vec![
                c.clone(),
                s.clone(),
                short_params(cell[0].params()),
                cell.len().to_string(),
                format!("{} of {}", learned.len(), drops.len()),
                with_ci(stats::mean_ci(&steps), 0, STEPS),
                with_ci(stats::mean_ci(&at_drop), 3, ACCURACY),
                with_ci(stats::mean_ci(&aurc), 3, None),
                match (with_ci(stats::mean_ci(&kept), 3, None), kept.len()) {
                    (floor, k) if k > 0 && k < cell.len() => format!("{floor} ({k} of {} runs)", cell.len()),
                    (floor, _) => floor,
                },
                match stats::km_median(&obs) {
                    Some(Median::Reached { value }) => format!("{value:.0}"),
                    Some(Median::Above { value }) => format!("> {value:.0}"),
                    None => "–".into(),
                },
                format!("{} of {}", obs.iter().filter(|o| o.censored).count(), obs.len()),
            ]);
        }
    }
    blocks.push(Block::Table(
        [
            "condition",
            "size",
            "params",
            "runs",
            "learned drops",
            "drop step",
            "accuracy at drop",
            "AURC (dropped)",
            "AURC (kept: noise floor)",
            "half-life (steps)",
            "censored",
        ]
        .map(String::from)
        .to_vec(),
        table,
    ));

    // Retention figure: rows = strata, columns = conditions.
    let mut panels = Vec::new();
    for st in &strata {
        for c in &conditions {
            let mut curves = Vec::new();
            for s in sizes {
                let cell: Vec<&StudyRun> = cell(runs, c, s).into_iter().filter(|r| &r.stratum == st).collect();
                let dropped: Vec<Vec<(i64, f64)>> =
                    cell.iter().map(|r| r.dropped_curve()).filter(|v| !v.is_empty()).collect();
                let kept: Vec<Vec<(i64, f64)>> =
                    cell.iter().map(|r| r.kept_curve()).filter(|v| !v.is_empty()).collect();
                if dropped.is_empty() {
                    continue;
                }
                let label = format!("{s} ({}, {} runs)", short_params(cell[0].params()), dropped.len());
                curves.push(Curve::from_means(Some(label), size_color(s), false, &pointwise(&dropped, dropped.len())));
                curves.push(Curve::from_means(None, size_color(s), true, &pointwise(&kept, kept.len())).without_band());
            }
            panels.push(CurvePanel { title: format!("{c} ({st})"), curves, marks: Vec::new() });
        }
    }
    charts.push(Box::new(CurvePanels {
        name: "retention",
        title: "Retention of dropped tasks against steps since the drop: mean and 95% band over runs (solid); the kept tasks' mean over the same window, dotted (noise floor)".into(),
        cols: conditions.len().max(1),
        panel_height: 420,
        x_desc: "steps since the drop".into(),
        y_desc: "retention r".into(),
        x_ticks: None,
        panels,
        notes: vec!["dotted: kept tasks' mean (noise floor)".into()],
        legend_at: SeriesLabelPosition::UpperRight,
        legend_above_data: true,
    }));
    blocks.push(Block::Heading("Retention after the drop".into()));
    blocks.push(Block::Figure(charts.len() - 1));

    // Half-life scaling.
    let half_life_panels: Vec<HalfLifeScaling> = strata
        .iter()
        .map(|st| {
            let rows: Vec<RunRow> = runs.iter().filter(|r| &r.stratum == st).map(|r| r.row.clone()).collect();
            HalfLifeScaling::new(
                rows,
                condition_of,
                format!("half-life vs parameters ({st}); ▵ censored; dashed: censored power law"),
            )
        })
        .collect();
    charts.push(Box::new(HalfLifePanels { panels: half_life_panels }));
    blocks.push(Block::Heading("Half-life against model size".into()));
    blocks.push(Block::Text("Every learned drop is one half-life at its run's parameter count; censored half-lives (▵) are lower bounds, fitted as such (censored-normal likelihood in log-log); the legend gives each condition's exponent with its 95% interval.".into()));
    blocks.push(Block::Figure(charts.len() - 1));

    // Answer 1: does overlap slow decay?
    for s in sizes {
        for w in conditions.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let va: Vec<f64> = cell(runs, a, s).iter().filter_map(|r| r.aurc()).collect();
            let vb: Vec<f64> = cell(runs, b, s).iter().filter_map(|r| r.aurc()).collect();
            if va.is_empty() && vb.is_empty() {
                continue;
            }
            let question = format!("Does {b} decay more slowly than {a}? ({s})");
            match welch(&vb, &va) {
                Some((d, h)) => answers.push(vec![
                    question,
                    format!("AURC {b} − {a} over {} vs {} runs", vb.len(), va.len()),
                    signed_ci(d, h, 3),
                    verdict(d - h, d + h, &format!("yes: {b} retains more"), &format!("no: {b} decays faster")),
                ]),
                None => answers.push(vec![
                    question,
                    format!("AURC {b} − {a} over {} vs {} runs", vb.len(), va.len()),
                    "no interval: fewer than two runs with learned drops on a side".into(),
                    "not resolved at this size".into(),
                ]),
            }
        }
    }
    // Answer 2: half-life scaling per condition (all strata together).
    let all_rows: Vec<RunRow> = runs.iter().map(|r| r.row.clone()).collect();
    let pooled = aggregate::scaling_by(&all_rows, condition_of);
    for c in &conditions {
        let law = pooled.conditions.get(c).and_then(|s| s.half_life_law);
        let n = pooled.conditions.get(c).map_or(0, |s| s.by_params.iter().map(|p| p.drops).sum::<usize>());
        let question = format!("How does half-life scale with size in {c}?");
        match law {
            Some(l) => {
                let h = l.exponent_ci95;
                answers.push(vec![
                    question,
                    format!("half-life ∝ params^b over {} drops ({} censored)", l.points, l.censored),
                    h.map_or(format!("b = {:.2} (no interval: too few points)", l.exponent), |h| {
                        signed_ci(l.exponent, h, 2)
                    }),
                    match h {
                        Some(h) => verdict(l.exponent - h, l.exponent + h, "grows with size", "shrinks with size")
                            .replace("at this size", "over these sizes"),
                        None => "not resolved over these sizes".into(),
                    },
                ]);
            }
            None => answers.push(vec![
                question,
                format!("half-life ∝ params^b over {n} drops"),
                "b ∈ (−∞, ∞): fewer than two half-lives reached, or one size".into(),
                "not resolved over these sizes".into(),
            ]),
        }
    }

    // Zero-shot tasks.
    let zero_shot_runs: Vec<&StudyRun> = runs.iter().filter(|r| !r.zero_shot_tasks().is_empty()).collect();
    blocks.push(Block::Heading("Zero-shot translation".into()));
    if zero_shot_runs.is_empty() {
        blocks.push(Block::Text("No condition has tasks that are evaluated but never trained.".into()));
    } else {
        let names: Vec<String> = {
            let mut n: Vec<String> = zero_shot_runs.iter().flat_map(|r| r.zero_shot_tasks()).collect();
            n.sort();
            n.dedup();
            n
        };
        blocks.push(Block::Text(format!(
            "{}: the tasks never trained but evaluated throughout ({}): their mean exact match over training (left; dashed: each size's mean drop step) and around the drop of their languages' arithmetic (right), mean and 95% band over runs.",
            conditions.iter().filter(|c| zero_shot_runs.iter().any(|r| &&r.condition == c)).cloned().collect::<Vec<_>>().join(", "),
            names.join(", ")
        )));
        let mut panels = Vec::new();
        for st in &strata {
            let mut over = Vec::new();
            let mut around = Vec::new();
            let mut marks = Vec::new();
            for s in sizes {
                let cell: Vec<&&StudyRun> =
                    zero_shot_runs.iter().filter(|r| &r.size == s && &r.stratum == st).collect();
                if cell.is_empty() {
                    continue;
                }
                let curves: Vec<Vec<(i64, f64)>> = cell.iter().map(|r| r.zero_shot_curve()).collect();
                let aligned: Vec<Vec<(i64, f64)>> = cell
                    .iter()
                    .filter_map(|r| {
                        let t0 = r.drop_step()? as i64;
                        Some(r.zero_shot_curve().into_iter().map(|(s, a)| (s - t0, a)).collect())
                    })
                    .collect();
                let label = format!("{s} ({} runs)", cell.len());
                let half = curves.len().div_ceil(2);
                over.push(Curve::from_means(Some(label.clone()), size_color(s), false, &pointwise(&curves, half)));
                around.push(Curve::from_means(
                    Some(label),
                    size_color(s),
                    false,
                    &pointwise(&aligned, aligned.len().div_ceil(2)),
                ));
                let steps: Vec<f64> = cell.iter().filter_map(|r| r.drop_step()).map(|s| s as f64).collect();
                if let Some(m) = stats::mean_ci(&steps) {
                    marks.push((m.mean, size_color(s)));
                }
            }
            panels.push(CurvePanel { title: format!("over training ({st})"), curves: over, marks });
            panels.push(CurvePanel { title: format!("around the drop ({st})"), curves: around, marks: vec![(0.0, 7)] });
        }
        charts.push(Box::new(CurvePanels {
            name: "zero_shot",
            title: "Zero-shot translation pairs (never trained): exact match on held-out problems".into(),
            cols: 2,
            panel_height: 380,
            x_desc: "step (right: steps since the drop)".into(),
            y_desc: "exact match".into(),
            x_ticks: None,
            panels,
            notes: Vec::new(),
            legend_at: SeriesLabelPosition::UpperRight,
            legend_above_data: false,
        }));
        blocks.push(Block::Figure(charts.len() - 1));
        // Answer 3: does the zero-shot pair survive the drop?
        for s in sizes {
            let cell: Vec<&&StudyRun> = zero_shot_runs.iter().filter(|r| &r.size == s).collect();
            if cell.is_empty() {
                continue;
            }
            let pairs: Vec<(f64, f64, f64)> = cell
                .iter()
                .filter_map(|r| {
                    let d = r.summary().drops.first()?;
                    let at = |step: u64| {
                        mean(r.zero_shot_tasks().iter().filter_map(|t| crate::analysis::at(r.data.accuracy(t), step)))
                    };
                    let chance =
                        mean(r.zero_shot_tasks().iter().filter_map(|t| Some(r.summary().tasks.get(t)?.chance)))?;
                    Some((at(d.step)?, at(d.window_end)?, chance))
                })
                .collect();
            let before: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let after: Vec<f64> = pairs.iter().map(|p| p.1).collect();
            let change: Vec<f64> = pairs.iter().map(|p| p.1 - p.0).collect();
            let chance = mean(pairs.iter().map(|p| p.2)).unwrap_or(0.0);
            let question = format!("Does the zero-shot pair survive the drop? ({s})");
            let measured = format!(
                "exact match at the drop {}, at the window's end {} (chance {chance:.3}); change over {} runs",
                with_ci(stats::mean_ci(&before), 3, ACCURACY),
                with_ci(stats::mean_ci(&after), 3, ACCURACY),
                change.len()
            );
            let m = stats::mean_ci(&change);
            let answer = match m.and_then(|m| Some((m.mean, m.ci95?))) {
                Some((c, h)) => {
                    let transferred =
                        stats::mean_ci(&before).is_some_and(|b| b.mean - b.ci95.unwrap_or(0.0) > chance + 0.05);
                    let v = if transferred {
                        verdict(c - h, c + h, "rises after the drop", "no: it falls after the drop")
                    } else {
                        "nothing to survive: at the drop it was within 0.05 of chance".into()
                    };
                    answers.push(vec![question, measured, signed_ci(c, h, 3), v]);
                    continue;
                }
                None => "not resolved at this size".to_string(),
            };
            answers.push(vec![question, measured, "no interval: fewer than two runs".into(), answer]);
        }
    }

    // Erasure batteries.
    blocks.push(Block::Heading("Depth of erasure".into()));
    blocks.push(Block::Text(format!(
        "One dropped task per condition at the smallest and the largest size (the first run in the sweep's order with a learned drop; its most decayed task), measured by `ebb erasure --only {BATTERY} --control auto`: P is the model just before the drop, D at the window's end, C the same config and seed trained with the task at weight 0 throughout (never learned it). Soft prompt: k input embeddings optimized on the task's training problems with the model frozen, scored on its held-out problems; k½ is the least k that brings back half of A(P). Relearning: fine-tuning steps to 0.9·A(P). Restore: the component of P copied into D that brings back the most."
    )));
    let mut table = Vec::new();
    for b in batteries {
        let Some(e) = &b.result else { continue };
        let ci = |x: f64, i: [f64; 2]| format!("{x:.3} [{:.3}, {:.3}]", i[0], i[1]);
        let k = |m: &str| {
            e.soft_prompts.as_ref().and_then(|s| s.models.iter().find(|x| x.model == m)).map_or("–".into(), |x| {
                x.k_half.map_or(
                    format!("> {}", e.soft_prompts.as_ref().and_then(|s| s.k_fit.last().copied()).unwrap_or(0)),
                    |k| k.to_string(),
                )
            })
        };
        let steps = |m: &str| {
            e.relearn.as_ref().and_then(|r| r.models.iter().find(|x| x.model == m)).map_or("–".into(), |x| {
                x.steps_to_target.map_or(format!("> {}", e.relearn.as_ref().map_or(0, |r| r.cap)), |s| s.to_string())
            })
        };
        let speedup = e.relearn.as_ref().and_then(|r| Some((r.speedup_d_over_c?, r.speedup_is_lower_bound))).map_or(
            "–".into(),
            |(s, lb)| {
                if lb { format!("≥ {s:.1}×") } else { format!("{s:.1}×") }
            },
        );
        let best =
            e.restore.as_ref().and_then(|r| r.components.iter().max_by(|a, b| a.p_into_d.total_cmp(&b.p_into_d)));
        table.push(vec![
            b.run.condition.clone(),
            format!("{} ({})", b.run.size, b.which),
            format!("{} ({})", b.task, b.run.row.id),
            ci(e.before.exact_match, e.before.exact_match_interval),
            ci(e.after.exact_match, e.after.exact_match_interval),
            e.control.as_ref().map_or("–".into(), |c| ci(c.exact_match, c.exact_match_interval)),
            format!("{} / {}", k("D"), k("C")),
            format!("{} / {}", steps("D"), steps("C")),
            speedup,
            best.map_or("–".into(), |c| format!("{}: {}", c.component, ci(c.p_into_d, c.p_into_d_interval))),
        ]);
    }
    blocks.push(Block::Table(
        [
            "condition",
            "size",
            "task (run)",
            "A(P)",
            "A(D)",
            "A(C)",
            "soft prompt k½ (D / C)",
            "relearn steps (D / C)",
            "relearn speed-up D over C",
            "restore P→D: best component",
        ]
        .map(String::from)
        .to_vec(),
        table,
    ));
    // Soft-prompt figure: one panel per end of the size range.
    let ks = crate::erasure::soft_prompt::K;
    let mut panels = Vec::new();
    for which in ["smallest", "largest"] {
        let mut curves = Vec::new();
        for b in batteries.iter().filter(|b| b.which == which) {
            let Some(sp) = b.result.as_ref().and_then(|e| e.soft_prompts.as_ref()) else { continue };
            let ci = conditions.iter().position(|c| c == &b.run.condition).unwrap_or(0);
            for m in sp.models.iter().filter(|m| m.model == "D" || m.model == "C") {
                let points = m
                    .points
                    .iter()
                    .filter_map(|p| {
                        Some((
                            ks.iter().position(|&k| k == p.k)? as f64,
                            p.accuracy,
                            Some((p.accuracy_interval[0], p.accuracy_interval[1])),
                        ))
                    })
                    .collect();
                let label = (m.model == "D").then(|| format!("{}: {}", b.run.condition, b.task));
                let circled = m.best_fit().and_then(|p| ks.iter().position(|&k| k == p.k)).map(|i| i as f64);
                curves.push(Curve { label, color: ci, dotted: m.model == "C", points, circled });
            }
        }
        if !curves.is_empty() {
            panels.push(CurvePanel { title: format!("{which} size"), curves, marks: Vec::new() });
        }
    }
    if !panels.is_empty() {
        charts.push(Box::new(CurvePanels {
            name: "soft_prompt",
            title: "Soft-prompt elicitation of the dropped task: D (after the decay, solid) against the never-trained control C (dotted), 95% Wilson bands; circled: the best fit".into(),
            cols: panels.len(),
            panel_height: 520,
            x_desc: "soft-prompt tokens k".into(),
            y_desc: "exact match".into(),
            x_ticks: Some(ks.iter().map(|k| k.to_string()).collect()),
            panels,
            notes: vec!["dotted: the control C".into(), "circled: each model's best fit (compared in the answers)".into()],
            legend_at: SeriesLabelPosition::UpperLeft,
            legend_above_data: false,
        }));
        blocks.push(Block::Figure(charts.len() - 1));
    }
    // Answer 4: gated or erased?
    for b in batteries {
        let question = format!("Gated or erased? ({}, {} size)", b.run.condition, b.which);
        let Some(e) = &b.result else {
            answers.push(vec![
                question,
                "no battery".into(),
                "no interval: the battery did not run".into(),
                "not resolved at this size".into(),
            ]);
            continue;
        };
        // Each model at the k whose prompt fits its selection sample of the
        // training problems best: chosen without the held-out set, and never
        // at a k where the prompt's optimization failed.
        let gap = e.soft_prompts.as_ref().and_then(|sp| {
            let best = |m: &str| sp.models.iter().find(|x| x.model == m)?.best_fit();
            let (d, c) = (best("D")?, best("C")?);
            Some((d.k, c.k, newcombe(d.accuracy, d.accuracy_interval, c.accuracy, c.accuracy_interval)))
        });
        let decayed = e.after.exact_match < 0.5 * e.before.exact_match;
        let measured = format!(
            "soft prompt on D − on C, exact match (A(P) {:.3}, A(D) {:.3}, A(C) {:.3})",
            e.before.exact_match,
            e.after.exact_match,
            e.control.as_ref().map_or(f64::NAN, |c| c.exact_match)
        );
        match gap {
            Some((k_d, k_c, (d, lo, hi))) => {
                let answer = if !decayed {
                    "not decayed by the window's end: nothing erased to test".into()
                } else if lo > 0.0 {
                    "gated: a soft prompt brings back more on D than on the control".into()
                } else if hi < 0.0 {
                    "erased: D is no easier to prompt than the control".into()
                } else {
                    "not resolved at this size".into()
                };
                answers.push(vec![
                    question,
                    format!("{measured}, D at k = {k_d}, C at k = {k_c}"),
                    format!("{d:+.3} [{lo:+.3}, {hi:+.3}]"),
                    answer,
                ]);
            }
            None => answers.push(vec![
                question,
                measured,
                "no interval: no soft prompts".into(),
                "not resolved at this size".into(),
            ]),
        }
    }

    let answer_blocks = vec![
        Block::Heading("Answers".into()),
        Block::Text("Each answer gives its measurement and 95% interval; where the interval does not exclude no effect, it says so. AURC differences: Welch's t interval over runs (all strata together); exponents: the censored power law's interval; soft-prompt gaps: Newcombe's interval from the two Wilson intervals, each model at the k whose prompt has the least loss on its selection sample of training problems (chosen without the held-out problems; a k where the optimization failed is never chosen).".into()),
        Block::Table(["question", "measurement", "estimate [95% interval]", "answer"].map(String::from).to_vec(), answers),
    ];
    blocks.splice(answers_at..answers_at, answer_blocks);
    (blocks, charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_says_on_what_machine_and_device_the_sweep_ran_even_from_an_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sweep-log.csv");
        let old = "started_unix,seconds,runs_finished,jobs,threads_per_job,cores,cpu\n1,120,4,2,1,2,Old CPU\n";
        std::fs::write(&log, old).unwrap();
        let opts = crate::sweep::RunOptions {
            out: dir.path().to_path_buf(),
            jobs: 1,
            threads_per_job: 16,
            shard: (1, 1),
            device: "cuda",
            quiet: true,
        };
        crate::sweep::log_session(dir.path(), std::time::SystemTime::now(), &opts, 3).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            ["started_unix,seconds,runs_finished,jobs,threads_per_job,cores,cpu,device", "1,120,4,2,1,2,Old CPU,"]
        );
        assert!(lines[2].ends_with(",cuda") && lines.len() == 3, "{text}");
        let page = provenance(dir.path(), &[]);
        assert!(page.contains("Old CPU (2 cores; 2 runs at once, 1 threads each)"), "{page}");
        assert!(page.contains("1 runs at once, 16 threads each, device cuda)"), "{page}");
    }

    #[test]
    fn a_battery_runs_on_the_reports_device() {
        for device in ["cpu", "cuda", "auto"] {
            let cmd = battery_command(Path::new("/bin/ebb"), Path::new("runs/s/abc"), "ko", 20, 2, device);
            let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
            let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
            assert_eq!(args[..2], ["erasure", "runs/s/abc"]);
            assert_eq!(after("--device"), Some(device));
            assert_eq!((after("--task"), after("--only")), (Some("ko"), Some(BATTERY)));
            assert_eq!((after("--relearn-steps"), after("--threads")), (Some("20"), Some("2")));
        }
    }
}
