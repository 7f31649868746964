//! Aggregation of a sweep from its directories alone: `sweep.csv` (one row
//! per run), `drops.csv` (one row per run and dropped task), `scaling.json`
//! (half-life and the exponential τ against parameter count per condition),
//! plots and `report.html`.
//!
//! Only finished runs enter numbers and fits; diverged, failed and
//! unfinished runs are listed (`excluded_runs` in scaling.json, their status
//! in sweep.csv). Half-lives not reached inside their window are censored:
//! per condition and size the half-life across drops is the Kaplan–Meier
//! median, and the power law against size is fitted by censored regression
//! with censored half-lives as lower bounds. Fit parameters enter means only
//! when their fit's status is `ok`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use super::RunStatus;
use crate::analysis::fit::Fit;
use crate::analysis::stats::{self, Mean, Median, Observation, PowerLaw};
use crate::analysis::{DropSummary, ReviveStatus, Summary};
use crate::error::{Error, Result};
use crate::plot::charts::{Chart, FONT, both_backends, color, err, legend};
use crate::plot::{DrawResult, Format};

/// One run as aggregated.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub id: String,
    pub point: Vec<(String, String)>,
    pub status: RunStatus,
    /// The run's summary (none when the run left none to compute).
    pub summary: Option<Summary>,
}

impl RunRow {
    /// The condition: every varied value except the seed and model shape.
    pub fn condition(&self) -> String {
        let c: Vec<String> = self
            .point
            .iter()
            .filter(|(k, _)| k != "seed" && !k.starts_with("model."))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if c.is_empty() { "all".into() } else { c.join(" ") }
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.point.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn params(&self) -> Option<f64> {
        self.summary.as_ref()?.params.map(|p| p as f64)
    }

    /// The drops that count: learned drops of a finished run.
    pub fn learned_drops(&self) -> impl Iterator<Item = &DropSummary> {
        self.summary
            .iter()
            .filter(|_| self.status == RunStatus::Finished)
            .flat_map(|s| s.drops.iter().filter(|d| d.learned()))
    }
}

/// Reads the manifest and every run's summary (recomputed from the run's
/// files when summary.json is missing or of another version).
pub fn load(dir: &Path) -> Result<(Vec<String>, Vec<RunRow>)> {
    let path = dir.join("manifest.csv");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::input(format!("{}: not a sweep directory ({e})", dir.display())))?;
    let mut lines = text.lines();
    let keys: Vec<String> = lines.next().unwrap_or("id").split(',').skip(1).map(String::from).collect();
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let id = f[0].to_string();
        let run = dir.join(&id);
        let status = RunStatus::of(&run);
        let summary = if matches!(status, RunStatus::Finished | RunStatus::Diverged | RunStatus::Interrupted) {
            crate::analysis::read_summary(&run).ok()
        } else {
            None
        };
        rows.push(RunRow {
            point: keys.iter().cloned().zip(f[1..].iter().map(|s| s.to_string())).collect(),
            status,
            summary,
            id,
        });
    }
    Ok((keys, rows))
}

/// The columns of one drop in drops.csv.
const DROP_COLUMNS: [&str; 17] = [
    "half_life",
    "half_life_status",
    "exp_tau",
    "exp_r_inf",
    "exp_status",
    "pow_tau",
    "pow_beta",
    "pow_r_inf",
    "pow_status",
    "preferred",
    "aurc",
    "noise_floor_aurc",
    "accuracy_at_drop",
    "final_accuracy",
    "revive_status",
    "savings",
    "relearn_ratio",
];

fn cell(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite()).map_or(String::new(), |v| v.to_string())
}

/// A fit's parameter when its status is `ok`.
fn ok_param(fit: Option<&Fit>, param: impl Fn(&Fit) -> Option<f64>) -> Option<f64> {
    fit.and_then(Fit::ok).and_then(param)
}

fn drop_cells(run: &RunRow, d: &DropSummary) -> Vec<String> {
    let (exp, pow) = (d.fits.as_ref().map(|f| &f.exponential), d.fits.as_ref().map(|f| &f.power));
    let status = |f: Option<&Fit>| f.map_or(String::new(), |f| f.status.name().to_string());
    let param = |f: Option<&Fit>, p: fn(&Fit) -> Option<f64>| cell(f.and_then(p));
    let final_accuracy = run.summary.as_ref().and_then(|s| s.tasks.get(&d.task)).and_then(|t| t.final_exact_match);
    vec![
        cell(d.half_life.map(|h| h.steps)),
        d.half_life
            .map_or(if d.learned() { String::new() } else { "not_learned".into() }, |h| h.status.name().to_string()),
        param(exp, |f| f.tau),
        param(exp, |f| f.r_inf),
        status(exp),
        param(pow, |f| f.tau),
        param(pow, |f| f.beta),
        param(pow, |f| f.r_inf),
        status(pow),
        d.fits.as_ref().and_then(|f| f.preferred).map_or(String::new(), |f| f.name().to_string()),
        cell(d.aurc),
        cell(d.noise_floor.as_ref().and_then(|n| n.aurc_mean)),
        cell(d.accuracy_at_drop),
        cell(final_accuracy),
        d.revive.as_ref().map_or(String::new(), |r| r.status.name().to_string()),
        cell(d.revive.as_ref().and_then(|r| r.savings)),
        cell(d.revive.as_ref().and_then(|r| r.relearn_ratio)),
    ]
}

/// The columns of one run in sweep.csv, over its learned drops.
const RUN_COLUMNS: [&str; 10] = [
    "dropped",
    "learned",
    "censored",
    "half_life_km_median",
    "half_life_median_status",
    "exp_tau_mean",
    "exp_fits_ok",
    "aurc_mean",
    "savings_mean",
    "not_regained",
];

/// The mean of the finite values, if any.
pub(crate) fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
    stats::mean_ci(&v).map(|m| m.mean)
}

fn median_cells(m: Option<Median>) -> [String; 2] {
    match m {
        Some(Median::Reached { value }) => [cell(Some(value)), "reached".into()],
        Some(Median::Above { value }) => [cell(Some(value)), "above".into()],
        None => [String::new(), String::new()],
    }
}

fn half_life_observations<'a>(drops: impl Iterator<Item = &'a DropSummary>) -> Vec<Observation> {
    drops.filter_map(|d| d.half_life.map(|h| h.observation())).collect()
}

fn run_cells(run: &RunRow) -> Vec<String> {
    let all = run.summary.as_ref().map_or(0, |s| s.drops.len());
    let learned: Vec<&DropSummary> = run.learned_drops().collect();
    let obs = half_life_observations(learned.iter().copied());
    let exp_ok: Vec<f64> =
        learned.iter().filter_map(|d| ok_param(d.fits.as_ref().map(|f| &f.exponential), |f| f.tau)).collect();
    let [median, median_status] = median_cells(stats::km_median(&obs));
    vec![
        all.to_string(),
        learned.len().to_string(),
        obs.iter().filter(|o| o.censored).count().to_string(),
        median,
        median_status,
        cell(mean(exp_ok.iter().copied())),
        exp_ok.len().to_string(),
        cell(mean(learned.iter().filter_map(|d| d.aurc))),
        cell(mean(learned.iter().filter_map(|d| d.revive.as_ref().and_then(|r| r.savings)))),
        learned
            .iter()
            .filter(|d| d.revive.as_ref().is_some_and(|r| r.status == ReviveStatus::NotRegained))
            .count()
            .to_string(),
    ]
}

/// One parameter count of one condition in scaling.json.
#[derive(Clone, Debug, Serialize)]
pub struct SizePoint {
    pub params: f64,
    pub runs: usize,
    /// Learned drops over those runs, and how many of their half-lives are censored.
    pub drops: usize,
    pub censored: usize,
    /// Kaplan–Meier median half-life over the drops.
    pub half_life_median: Option<Median>,
    /// Mean over runs of each run's mean exponential τ (`ok` fits only), with a t interval over runs.
    pub exp_tau: Option<Mean>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConditionScaling {
    pub by_params: Vec<SizePoint>,
    /// Half-life = prefactor · params^exponent, censored half-lives as lower bounds.
    pub half_life_law: Option<PowerLaw>,
    /// Exponential τ (`ok` fits, run means) against params, least squares.
    pub exp_tau_law: Option<PowerLaw>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Excluded {
    pub id: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Scaling {
    pub method: &'static str,
    pub conditions: BTreeMap<String, ConditionScaling>,
    pub excluded_runs: Vec<Excluded>,
}

fn scaling(rows: &[RunRow]) -> Scaling {
    scaling_by(rows, RunRow::condition)
}

/// `scaling` with the runs grouped into conditions by `condition`.
pub fn scaling_by(rows: &[RunRow], condition: impl Fn(&RunRow) -> String) -> Scaling {
    let mut by_condition: BTreeMap<String, Vec<&RunRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == RunStatus::Finished && r.params().is_some()) {
        by_condition.entry(condition(r)).or_default().push(r);
    }
    let conditions = by_condition
        .into_iter()
        .map(|(condition, runs)| {
            let mut sizes: BTreeMap<u64, Vec<&RunRow>> = BTreeMap::new();
            for r in &runs {
                sizes.entry(r.params().unwrap_or(0.0) as u64).or_default().push(r);
            }
            let run_tau = |r: &RunRow| {
                mean(r.learned_drops().filter_map(|d| ok_param(d.fits.as_ref().map(|f| &f.exponential), |f| f.tau)))
            };
            let by_params = sizes
                .iter()
                .map(|(&p, rs)| {
                    let obs = half_life_observations(rs.iter().flat_map(|r| r.learned_drops()));
                    let taus: Vec<f64> = rs.iter().filter_map(|r| run_tau(r)).collect();
                    SizePoint {
                        params: p as f64,
                        runs: rs.len(),
                        drops: obs.len(),
                        censored: obs.iter().filter(|o| o.censored).count(),
                        half_life_median: stats::km_median(&obs),
                        exp_tau: stats::mean_ci(&taus),
                    }
                })
                .collect();
            let half_lives: Vec<(f64, Observation)> = runs
                .iter()
                .flat_map(|r| r.learned_drops().filter_map(|d| Some((r.params()?, d.half_life?.observation()))))
                .collect();
            let taus: Vec<(f64, Observation)> = runs
                .iter()
                .filter_map(|r| Some((r.params()?, Observation { value: run_tau(r)?, censored: false })))
                .collect();
            (
                condition,
                ConditionScaling {
                    by_params,
                    half_life_law: stats::power_law(&half_lives),
                    exp_tau_law: stats::power_law(&taus),
                },
            )
        })
        .collect();
    Scaling {
        method: "per condition: every learned drop of every finished run is one half-life observation at its run's parameter count; a half-life not reached inside its window is censored at the window's length. half_life_median: Kaplan–Meier median per size. half_life_law: ln(half-life) = ln(prefactor) + exponent·ln(params), censored-normal (Tobit) maximum likelihood with censored values as lower bounds (least squares when none is censored); exponent_ci95 from the observed information with the t quantile at n − 2 degrees of freedom. exp_tau: runs' mean τ of exponential fits with status ok, mean and 95% t interval over runs (none with one run).",
        conditions,
        excluded_runs: rows
            .iter()
            .filter(|r| r.status != RunStatus::Finished)
            .map(|r| Excluded { id: r.id.clone(), status: r.status.name() })
            .collect(),
    }
}

/// Writes sweep.csv, drops.csv, scaling.json, plots/ and report.html.
pub fn aggregate(dir: &Path, heatmap: &[String]) -> Result<Vec<PathBuf>> {
    let (keys, rows) = load(dir)?;
    let head = format!("id,{},params,status", keys.join(","));
    let mut sweep = format!("{head},{}\n", RUN_COLUMNS.join(","));
    let mut drops = format!("{head},task,{}\n", DROP_COLUMNS.join(","));
    for r in &rows {
        let prefix = format!(
            "{},{},{},{}",
            r.id,
            r.point.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(","),
            cell(r.params()),
            r.status.name()
        );
        sweep.push_str(&format!("{prefix},{}\n", run_cells(r).join(",")));
        for d in r.summary.iter().flat_map(|s| &s.drops) {
            drops.push_str(&format!("{prefix},{},{}\n", d.task, drop_cells(r, d).join(",")));
        }
    }
    let scaling = scaling(&rows);
    let mut written = Vec::new();
    for (name, text) in [
        ("sweep.csv", sweep),
        ("drops.csv", drops),
        ("scaling.json", serde_json::to_string_pretty(&scaling).expect("JSON") + "\n"),
    ] {
        crate::run_dir::write_atomic(&dir.join(name), text.as_bytes())?;
        written.push(dir.join(name));
    }
    let mut charts: Vec<Box<dyn Chart>> = vec![
        Box::new(HalfLifeScaling::new(rows.clone(), RunRow::condition, HALF_LIFE_CAPTION.into())),
        Box::new(RetentionBySize { rows: rows.clone() }),
    ];
    if heatmap.len() == 2 {
        charts.push(Box::new(Heatmap { x: heatmap[0].clone(), y: heatmap[1].clone(), rows: rows.clone() }));
    }
    let (files, svgs) = crate::plot::draw_all(dir, &charts, Format::Png)?;
    written.extend(files);
    let table = std::fs::read_to_string(dir.join("sweep.csv")).unwrap_or_default();
    let excluded = if scaling.excluded_runs.is_empty() {
        String::new()
    } else {
        format!(
            "<p>Left out of every number and fit: {}.</p>",
            scaling.excluded_runs.iter().map(|e| format!("{} ({})", e.id, e.status)).collect::<Vec<_>>().join(", ")
        )
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ebb sweep</title><style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} pre{{font-size:12px;background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body><h1>ebb sweep {}</h1><p>{} runs: {} finished, {} diverged, {} failed.</p>{}{}<h2>sweep.csv</h2><pre>{}</pre></body></html>\n",
        dir.display(),
        rows.len(),
        rows.iter().filter(|r| r.status == RunStatus::Finished).count(),
        rows.iter().filter(|r| r.status == RunStatus::Diverged).count(),
        rows.iter().filter(|r| r.status == RunStatus::Failed).count(),
        excluded.replace('&', "&amp;").replace('<', "&lt;"),
        svgs.iter()
            .map(|(t, s)| format!("<figure><figcaption><b>{t}</b></figcaption>{s}</figure>"))
            .collect::<String>(),
        table.replace('&', "&amp;").replace('<', "&lt;"),
    );
    crate::run_dir::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    written.push(dir.join("report.html"));
    Ok(written)
}

const HALF_LIFE_CAPTION: &str = "half-life of dropped tasks against model size (dots: drops, ▵: censored; large: Kaplan–Meier median; dashed: censored power law)";

/// Half-life against parameter count, log-log, one colour per condition:
/// every drop (hollow triangles: censored, a lower bound), the Kaplan–Meier
/// median per size (large circles; triangles when it is only a lower bound)
/// and the censored power law (dashed), its exponent and 95% interval in
/// the legend.
/// A parameter count for a person: "950", "30k", "1.2M".
pub(crate) fn short_params(p: f64) -> String {
    if p >= 1e6 {
        format!("{:.1}M", p / 1e6)
    } else if p >= 1e3 {
        format!("{:.0}k", p / 1e3)
    } else {
        format!("{p:.0}")
    }
}

/// Ticks for a log axis over [lo, hi]: 1, 2, 3 and 5 times the powers of ten
/// inside it, so that a span short of a decade still gets labels.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.max(f64::MIN_POSITIVE).log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    (first..=last)
        .flat_map(|e| [1.0, 2.0, 3.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|t| (lo..=hi).contains(t))
        .collect()
}

pub(crate) struct HalfLifeScaling {
    rows: Vec<RunRow>,
    scaling: Scaling,
    condition: fn(&RunRow) -> String,
    caption: String,
}

impl HalfLifeScaling {
    pub(crate) fn new(rows: Vec<RunRow>, condition: fn(&RunRow) -> String, caption: String) -> Self {
        let scaling = scaling_by(&rows, condition);
        HalfLifeScaling { rows, scaling, condition, caption }
    }

    pub(crate) fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let drops: Vec<(String, f64, Observation)> = self
            .rows
            .iter()
            .filter(|r| r.status == RunStatus::Finished)
            .flat_map(|r| {
                r.learned_drops().filter_map(|d| Some(((self.condition)(r), r.params()?, d.half_life?.observation())))
            })
            .collect();
        let (pmin, pmax) = drops.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (hmin, hmax) = drops
            .iter()
            .filter(|p| p.2.value > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min(p.2.value), b.max(p.2.value)));
        let (pmin, pmax) = if pmin.is_finite() { (pmin * 0.8, pmax * 1.25) } else { (1.0, 10.0) };
        let (hmin, hmax) = if hmin.is_finite() && hmin > 0.0 { (hmin * 0.7, hmax * 1.6) } else { (1.0, 10.0) };
        let mut chart = ChartBuilder::on(area)
            .caption(&self.caption, (FONT, 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (pmin..pmax).log_scale().with_key_points(log_ticks(pmin, pmax)),
                (hmin..hmax).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("parameters")
            .y_desc("half-life (steps)")
            .x_label_formatter(&|v| short_params(*v))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        for (i, (condition, scaling)) in self.scaling.conditions.iter().enumerate() {
            let c = color(i);
            let mine = drops.iter().filter(|d| &d.0 == condition);
            chart
                .draw_series(
                    mine.clone()
                        .filter(|d| !d.2.censored)
                        .map(|d| Circle::new((d.1, d.2.value), 3, c.mix(0.5).filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(
                    mine.filter(|d| d.2.censored)
                        .map(|d| TriangleMarker::new((d.1, d.2.value), 5, c.mix(0.7).stroke_width(1))),
                )
                .map_err(err)?;
            let medians = scaling.by_params.iter().filter_map(|s| Some((s.params, s.half_life_median?)));
            chart
                .draw_series(medians.map(|(p, m)| -> DynElement<DB, (f64, f64)> {
                    match m {
                        Median::Reached { value } => Circle::new((p, value), 6, c.filled()).into_dyn(),
                        Median::Above { value } => TriangleMarker::new((p, value), 8, c.filled()).into_dyn(),
                    }
                }))
                .map_err(err)?
                .label(match scaling.half_life_law {
                    Some(law) => format!("{condition}: exponent {:.2} {}", law.exponent, plus_minus(law.exponent_ci95)),
                    None => format!("{condition}: no power law (too few half-lives reached)"),
                })
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
            if let Some(law) = scaling.half_life_law {
                // Over the sizes measured, and only where it stays on the chart.
                let (lo, hi) = scaling
                    .by_params
                    .iter()
                    .filter(|s| s.drops > 0)
                    .fold((f64::INFINITY, 0.0f64), |(l, h), s| (l.min(s.params), h.max(s.params)));
                let line: Vec<(f64, f64)> = (0..=50)
                    .map(|k| lo * (hi / lo).powf(k as f64 / 50.0))
                    .map(|p| (p, law.prefactor * p.powf(law.exponent)))
                    .filter(|p| (hmin..=hmax).contains(&p.1))
                    .collect();
                chart
                    .draw_series(DashedLineSeries::new(line, 8, 5, ShapeStyle::from(&c).stroke_width(2)))
                    .map_err(err)?;
            }
        }
        legend(&mut chart, self.scaling.conditions.len(), SeriesLabelPosition::UpperLeft)
    }
}

/// "± h (95%)", or what stands for an interval that is undefined.
pub(crate) fn plus_minus(half_width: Option<f64>) -> String {
    half_width.map_or("(no interval: too few points)".into(), |h| format!("± {h:.2} (95%)"))
}

impl Chart for HalfLifeScaling {
    fn name(&self) -> &'static str {
        "half_life_scaling"
    }
    fn title(&self) -> String {
        "Half-life against parameter count".into()
    }
    both_backends!();
}

/// Retention curves of every run's first learned drop, coloured by model size.
struct RetentionBySize {
    rows: Vec<RunRow>,
}

impl RetentionBySize {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let curves: Vec<(f64, Vec<(f64, f64)>)> = self
            .rows
            .iter()
            .filter_map(|r| {
                let d = r.learned_drops().next()?;
                Some((r.params()?, d.retention.iter().map(|p| (p.delta, p.r)).collect()))
            })
            .collect();
        let max_d = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).fold(1.0f64, f64::max);
        let (lo, hi) = curves
            .iter()
            .flat_map(|c| c.1.iter().map(|p| p.1))
            .fold((0.0f64, 1.05f64), |(l, h), r| (l.min(r - 0.05), h.max(r + 0.05)));
        let mut chart = ChartBuilder::on(area)
            .caption("retention after the first drop of every run, coloured by parameter count", (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_d, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("steps since the drop")
            .y_desc("retention")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        let mut sizes: Vec<u64> = curves.iter().map(|c| c.0 as u64).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for (i, &size) in sizes.iter().enumerate() {
            let c = color(i);
            let mut first = true;
            for (_, pts) in curves.iter().filter(|x| x.0 as u64 == size) {
                let s = chart
                    .draw_series(LineSeries::new(pts.clone(), ShapeStyle::from(&c.mix(0.8)).stroke_width(2)))
                    .map_err(err)?;
                if first {
                    s.label(format!("{size} parameters")).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&c).stroke_width(3))
                    });
                    first = false;
                }
            }
        }
        legend(&mut chart, sizes.len(), SeriesLabelPosition::UpperRight)
    }
}

impl Chart for RetentionBySize {
    fn name(&self) -> &'static str {
        "retention_by_size"
    }
    fn title(&self) -> String {
        "Retention curves across model sizes".into()
    }
    both_backends!();
}

/// Mean half-life over two varied keys.
struct Heatmap {
    x: String,
    y: String,
    rows: Vec<RunRow>,
}

impl Heatmap {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let values = |key: &str| {
            let mut v: Vec<String> = self.rows.iter().filter_map(|r| r.value(key).map(String::from)).collect();
            v.sort_by(|a, b| {
                a.parse::<f64>().ok().zip(b.parse::<f64>().ok()).map_or(a.cmp(b), |(x, y)| x.total_cmp(&y))
            });
            v.dedup();
            v
        };
        let (xs, ys) = (values(&self.x), values(&self.y));
        let cell = |xv: &str, yv: &str| {
            stats::km_median(&half_life_observations(
                self.rows
                    .iter()
                    .filter(|r| r.value(&self.x) == Some(xv) && r.value(&self.y) == Some(yv))
                    .flat_map(|r| r.learned_drops()),
            ))
        };
        let value = |m: Median| match m {
            Median::Reached { value } | Median::Above { value } => value,
        };
        let max = xs.iter().flat_map(|x| ys.iter().filter_map(move |y| cell(x, y))).map(value).fold(1e-9f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "median half-life (steps, Kaplan–Meier over drops; > W: censored) by {} and {}",
                    self.x, self.y
                ),
                (FONT, 17),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(-0.5f64..xs.len() as f64 - 0.5, -0.5f64..ys.len() as f64 - 0.5)
            .map_err(err)?;
        let at = |names: &[String], v: f64| {
            let i = v.round();
            if (v - i).abs() > 1e-6 || i < 0.0 {
                String::new()
            } else {
                names.get(i as usize).cloned().unwrap_or_default()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(xs.len() + 1)
            .y_labels(ys.len() + 1)
            .x_label_formatter(&|v| at(&xs, *v))
            .y_label_formatter(&|v| at(&ys, *v))
            .x_desc(self.x.as_str())
            .y_desc(self.y.as_str())
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for (i, xv) in xs.iter().enumerate() {
            for (j, yv) in ys.iter().enumerate() {
                let m = cell(xv, yv);
                let v = m.map(value);
                let a = v.map_or(0.0, |v| v / max);
                let fill = if v.is_some() {
                    RGBColor((255.0 - 200.0 * a) as u8, (255.0 - 120.0 * a) as u8, 255)
                } else {
                    RGBColor(230, 230, 230)
                };
                let (x, y) = (i as f64, j as f64);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                let style = (FONT, 15).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                chart
                    .draw_series(std::iter::once(Text::new(
                        match m {
                            Some(Median::Reached { value }) => format!("{value:.0}"),
                            Some(Median::Above { value }) => format!("> {value:.0}"),
                            None => "-".to_string(),
                        },
                        (x, y),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

impl Chart for Heatmap {
    fn name(&self) -> &'static str {
        "half_life_heatmap"
    }
    fn title(&self) -> String {
        format!("Median half-life by {} and {}", self.x, self.y)
    }
    both_backends!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_spans_shorter_than_a_decade() {
        assert_eq!(log_ticks(24_000.0, 146_000.0), [30_000.0, 50_000.0, 100_000.0]);
        assert_eq!(log_ticks(0.9, 25.0), [1.0, 2.0, 3.0, 5.0, 10.0, 20.0]);
        assert_eq!(short_params(117_200.0), "117k");
        assert_eq!(short_params(1_250_000.0), "1.2M");
    }
    use crate::analysis::fit::FitStatus;

    #[test]
    fn fit_parameters_count_only_when_their_fit_is_ok() {
        let fit = |status| Fit {
            form: crate::analysis::fit::Form::Exponential,
            status,
            tau: Some(10.0),
            beta: None,
            r_inf: Some(0.0),
            rss: Some(0.1),
            aicc: Some(-5.0),
            points: 9,
        };
        assert_eq!(ok_param(Some(&fit(FitStatus::Ok)), |f| f.tau), Some(10.0));
        for status in [FitStatus::AtBound, FitStatus::NoDecay, FitStatus::TooFewPoints] {
            assert_eq!(ok_param(Some(&fit(status)), |f| f.tau), None);
        }
    }
}
