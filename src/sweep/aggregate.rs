//! Aggregation of a sweep from its directories alone: `sweep.csv` (one row
//! per run), `drops.csv` (one row per run and dropped task), `scaling.json`
//! (half-life and τ against parameter count, a power law per condition with
//! 95% intervals), plots and `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::RunStatus;
use crate::error::{Error, Result};
use crate::plot::charts::{Chart, FONT, both_backends, color, err, legend};
use crate::plot::{DrawResult, Format};

/// One run as aggregated.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub id: String,
    pub point: Vec<(String, String)>,
    pub status: RunStatus,
    pub params: Option<f64>,
    pub drops: Vec<Value>,
    pub summary: Value,
}

impl RunRow {
    /// The condition: every varied value except the seed and model shape.
    fn condition(&self) -> String {
        let c: Vec<String> = self.point.iter().filter(|(k, _)| k != "seed" && !k.starts_with("model.")).map(|(k, v)| format!("{k}={v}")).collect();
        if c.is_empty() { "all".into() } else { c.join(" ") }
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.point.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Reads the manifest and every run's summary.
pub fn load(dir: &Path) -> Result<(Vec<String>, Vec<RunRow>)> {
    let path = dir.join("manifest.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::input(format!("{}: not a sweep directory ({e})", dir.display())))?;
    let mut lines = text.lines();
    let keys: Vec<String> = lines.next().unwrap_or("id").split(',').skip(1).map(String::from).collect();
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let id = f[0].to_string();
        let run = dir.join(&id);
        let summary: Value = std::fs::read_to_string(run.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
        rows.push(RunRow {
            point: keys.iter().cloned().zip(f[1..].iter().map(|s| s.to_string())).collect(),
            status: RunStatus::of(&run),
            params: summary["params"].as_f64(),
            drops: summary["drops"].as_array().cloned().unwrap_or_default(),
            summary,
            id,
        });
    }
    Ok((keys, rows))
}

/// Whether a drop started from a learned state (summaries from before the
/// `learned` key count as learned).
fn is_learned(d: &Value) -> bool {
    d["learned"] != false
}

/// The numbers reported per drop: half-life, preferred fit, AURC, final
/// accuracy, savings; none for a drop of an unlearned task, which stays out
/// of every mean.
fn drop_numbers(run: &RunRow, d: &Value) -> [Option<f64>; 7] {
    if !is_learned(d) {
        return [None; 7];
    }
    let fits = &d["fits"];
    let fit = fits["preferred"].as_str().map_or(&Value::Null, |p| &fits[p]);
    let task = d["task"].as_str().unwrap_or("");
    [
        d["half_life"].as_f64(),
        fit["tau"].as_f64(),
        fit["beta"].as_f64(),
        fit["r_inf"].as_f64(),
        d["aurc"].as_f64(),
        run.summary["tasks"][task]["final_exact_match"].as_f64(),
        d["revive"]["savings"].as_f64(),
    ]
}

const COLUMNS: [&str; 7] = ["half_life", "tau", "beta", "r_inf", "aurc", "final_accuracy", "savings"];

fn cell(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite()).map_or(String::new(), |v| v.to_string())
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Two-sided 95% Student-t quantiles for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// Least squares of ln y on ln x: (exponent, its 95% half-width, prefactor).
pub fn power_law(points: &[(f64, f64)]) -> Option<(f64, Option<f64>, f64)> {
    let pts: Vec<(f64, f64)> = points.iter().filter(|p| p.0 > 0.0 && p.1 > 0.0).map(|p| (p.0.ln(), p.1.ln())).collect();
    let n = pts.len();
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if n < 2 || sxx <= 0.0 {
        return None;
    }
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let slope = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let intercept = my - slope * mx;
    let ci = (n > 2).then(|| {
        let rss: f64 = pts.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
        let se = (rss / (n - 2) as f64 / sxx).sqrt();
        T95.get(n - 3).copied().unwrap_or(1.96) * se
    });
    Some((slope, ci, intercept.exp()))
}

/// Per condition and parameter count: (params, mean, standard error, n) of
/// the runs' mean `column` over their drops.
fn grouped(rows: &[RunRow], column: usize) -> BTreeMap<String, Vec<(f64, f64, f64, usize)>> {
    let mut groups: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for r in rows {
        let (Some(p), Some(v)) = (r.params, mean(r.drops.iter().filter_map(|d| drop_numbers(r, d)[column]))) else { continue };
        groups.entry(r.condition()).or_default().entry(p as u64).or_default().push(v);
    }
    groups
        .into_iter()
        .map(|(c, by)| {
            let pts = by
                .into_iter()
                .map(|(p, vs)| {
                    let n = vs.len();
                    let m = vs.iter().sum::<f64>() / n as f64;
                    let se = if n > 1 { (vs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() / (n as f64).sqrt() } else { 0.0 };
                    (p as f64, m, se, n)
                })
                .collect();
            (c, pts)
        })
        .collect()
}

fn scaling(rows: &[RunRow]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, column) in [("half_life", 0), ("tau", 1)] {
        let mut per = serde_json::Map::new();
        for (condition, pts) in grouped(rows, column) {
            let raw: Vec<(f64, f64)> = rows.iter().filter(|r| r.condition() == condition).filter_map(|r| Some((r.params?, mean(r.drops.iter().filter_map(|d| drop_numbers(r, d)[column]))?))).collect();
            let fit = power_law(&raw);
            per.insert(condition, json!({
                "exponent": fit.map(|f| f.0),
                "exponent_ci95": fit.and_then(|f| f.1),
                "prefactor": fit.map(|f| f.2),
                "runs": raw.len(),
                "by_params": pts.iter().map(|&(p, m, se, n)| json!({ "params": p, "mean": m, "standard_error": se, "seeds": n })).collect::<Vec<_>>(),
            }));
        }
        out.insert(name.into(), Value::Object(per));
    }
    json!({ "law": "value = prefactor · params^exponent, least squares in log-log over every run; 95% interval from the slope's standard error", "fits": out })
}

/// Writes sweep.csv, drops.csv, scaling.json, plots/ and report.html.
pub fn aggregate(dir: &Path, heatmap: &[String]) -> Result<Vec<PathBuf>> {
    let (keys, rows) = load(dir)?;
    let head = format!("id,{},params,status", keys.join(","));
    let mut sweep = format!("{head},dropped,{}\n", COLUMNS.join(","));
    let mut drops = format!("{head},task,{}\n", COLUMNS.join(","));
    for r in &rows {
        let prefix = format!("{},{},{},{}", r.id, r.point.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(","), cell(r.params), r.status.name());
        let numbers: Vec<[Option<f64>; 7]> = r.drops.iter().map(|d| drop_numbers(r, d)).collect();
        let means: Vec<String> = (0..7).map(|c| cell(mean(numbers.iter().filter_map(|n| n[c])))).collect();
        sweep.push_str(&format!("{prefix},{},{}\n", r.drops.len(), means.join(",")));
        for (d, n) in r.drops.iter().zip(&numbers) {
            drops.push_str(&format!("{prefix},{},{}\n", d["task"].as_str().unwrap_or(""), n.iter().map(|&x| cell(x)).collect::<Vec<_>>().join(",")));
        }
    }
    let mut written = Vec::new();
    for (name, text) in [("sweep.csv", sweep), ("drops.csv", drops), ("scaling.json", serde_json::to_string_pretty(&scaling(&rows)).expect("JSON") + "\n")] {
        crate::run_dir::write_atomic(&dir.join(name), text.as_bytes())?;
        written.push(dir.join(name));
    }
    let mut charts: Vec<Box<dyn Chart>> = vec![Box::new(HalfLifeScaling { groups: grouped(&rows, 0) }), Box::new(RetentionBySize { rows: rows.clone() })];
    if heatmap.len() == 2 {
        charts.push(Box::new(Heatmap { x: heatmap[0].clone(), y: heatmap[1].clone(), rows: rows.clone() }));
    }
    let (files, svgs) = crate::plot::draw_all(dir, &charts, Format::Png)?;
    written.extend(files);
    let table = std::fs::read_to_string(dir.join("sweep.csv")).unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ebb sweep</title><style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} pre{{font-size:12px;background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body><h1>ebb sweep {}</h1><p>{} runs: {} finished, {} diverged, {} failed.</p>{}<h2>sweep.csv</h2><pre>{}</pre></body></html>\n",
        dir.display(),
        rows.len(),
        rows.iter().filter(|r| r.status == RunStatus::Finished).count(),
        rows.iter().filter(|r| r.status == RunStatus::Diverged).count(),
        rows.iter().filter(|r| r.status == RunStatus::Failed).count(),
        svgs.iter().map(|(t, s)| format!("<figure><figcaption><b>{t}</b></figcaption>{s}</figure>")).collect::<String>(),
        table.replace('&', "&amp;").replace('<', "&lt;"),
    );
    crate::run_dir::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    written.push(dir.join("report.html"));
    Ok(written)
}

/// Half-life against parameter count, log-log, one series per condition,
/// error bars over seeds and the fitted power law.
struct HalfLifeScaling {
    groups: BTreeMap<String, Vec<(f64, f64, f64, usize)>>,
}

impl HalfLifeScaling {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let all: Vec<&(f64, f64, f64, usize)> = self.groups.values().flatten().collect();
        let (pmin, pmax) = all.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (hmin, hmax) = all.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min((p.1 - p.2).max(p.1 * 0.5)), b.max(p.1 + p.2)));
        let (pmin, pmax) = if pmin.is_finite() { (pmin * 0.7, pmax * 1.4) } else { (1.0, 10.0) };
        let (hmin, hmax) = if hmin.is_finite() && hmin > 0.0 { (hmin * 0.7, hmax * 1.4) } else { (1.0, 10.0) };
        let mut chart = ChartBuilder::on(area)
            .caption("half-life of dropped tasks against model size (mean ± s.e. over seeds, fitted power law)", (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((pmin..pmax).log_scale(), (hmin..hmax).log_scale())
            .map_err(err)?;
        chart.configure_mesh().x_desc("parameters").y_desc("half-life (steps)").label_style((FONT, 13)).axis_desc_style((FONT, 14)).draw().map_err(err)?;
        for (i, (condition, pts)) in self.groups.iter().enumerate() {
            let c = color(i);
            chart.draw_series(pts.iter().map(|&(p, m, se, _)| ErrorBar::new_vertical(p, (m - se).max(m * 0.05), m, m + se, c.filled(), 8))).map_err(err)?;
            chart.draw_series(pts.iter().map(|&(p, m, _, _)| Circle::new((p, m), 4, c.filled()))).map_err(err)?.label(condition.clone()).legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
            if let Some((b, _, a)) = power_law(&pts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>()) {
                let (lo, hi) = pts.iter().fold((f64::INFINITY, 0.0f64), |(l, h), p| (l.min(p.0), h.max(p.0)));
                let line: Vec<(f64, f64)> = (0..=50).map(|k| lo * (hi / lo).powf(k as f64 / 50.0)).map(|p| (p, a * p.powf(b))).collect();
                chart.draw_series(DashedLineSeries::new(line, 8, 5, ShapeStyle::from(&c).stroke_width(2))).map_err(err)?;
            }
        }
        legend(&mut chart, self.groups.len(), SeriesLabelPosition::UpperLeft)
    }
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
                let d = r.drops.iter().find(|d| is_learned(d))?;
                let pts: Vec<(f64, f64)> = d["retention"].as_array()?.iter().filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?))).collect();
                Some((r.params?, pts))
            })
            .collect();
        let max_d = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).fold(1.0f64, f64::max);
        let (lo, hi) = curves.iter().flat_map(|c| c.1.iter().map(|p| p.1)).fold((0.0f64, 1.05f64), |(l, h), r| (l.min(r - 0.05), h.max(r + 0.05)));
        let mut chart = ChartBuilder::on(area)
            .caption("retention after the first drop of every run, coloured by parameter count", (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_d, lo..hi)
            .map_err(err)?;
        chart.configure_mesh().x_desc("steps since the drop").y_desc("retention").x_label_formatter(&|v| format!("{v:.0}")).label_style((FONT, 13)).axis_desc_style((FONT, 14)).draw().map_err(err)?;
        let mut sizes: Vec<u64> = curves.iter().map(|c| c.0 as u64).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for (i, &size) in sizes.iter().enumerate() {
            let c = color(i);
            let mut first = true;
            for (_, pts) in curves.iter().filter(|x| x.0 as u64 == size) {
                let s = chart.draw_series(LineSeries::new(pts.clone(), ShapeStyle::from(&c.mix(0.8)).stroke_width(2))).map_err(err)?;
                if first {
                    s.label(format!("{size} parameters")).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&c).stroke_width(3)));
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
            v.sort_by(|a, b| a.parse::<f64>().ok().zip(b.parse::<f64>().ok()).map_or(a.cmp(b), |(x, y)| x.total_cmp(&y)));
            v.dedup();
            v
        };
        let (xs, ys) = (values(&self.x), values(&self.y));
        let cell = |xv: &str, yv: &str| mean(self.rows.iter().filter(|r| r.value(&self.x) == Some(xv) && r.value(&self.y) == Some(yv)).filter_map(|r| mean(r.drops.iter().filter_map(|d| d["half_life"].as_f64()))));
        let max = xs.iter().flat_map(|x| ys.iter().filter_map(move |y| cell(x, y))).fold(1e-9f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("mean half-life (steps) by {} and {}", self.x, self.y), (FONT, 17))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(-0.5f64..xs.len() as f64 - 0.5, -0.5f64..ys.len() as f64 - 0.5)
            .map_err(err)?;
        let at = |names: &[String], v: f64| {
            let i = v.round();
            if (v - i).abs() > 1e-6 || i < 0.0 { String::new() } else { names.get(i as usize).cloned().unwrap_or_default() }
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
                let v = cell(xv, yv);
                let a = v.map_or(0.0, |v| v / max);
                let fill = if v.is_some() { RGBColor((255.0 - 200.0 * a) as u8, (255.0 - 120.0 * a) as u8, 255) } else { RGBColor(230, 230, 230) };
                let (x, y) = (i as f64, j as f64);
                chart.draw_series(std::iter::once(Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], fill.filled()))).map_err(err)?;
                let style = (FONT, 15).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
                chart.draw_series(std::iter::once(Text::new(v.map_or("-".to_string(), |v| format!("{v:.0}")), (x, y), style))).map_err(err)?;
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
        format!("Mean half-life by {} and {}", self.x, self.y)
    }
    both_backends!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_of_an_unlearned_task_has_no_numbers() {
        let run = RunRow { id: "r".into(), point: Vec::new(), status: RunStatus::Finished, params: Some(1.0), drops: Vec::new(), summary: json!({ "tasks": { "t": { "final_exact_match": 0.5 } } }) };
        let learned = json!({ "task": "t", "half_life": 10.0, "learned": true });
        let unlearned = json!({ "task": "t", "half_life": 10.0, "learned": false });
        assert_eq!(drop_numbers(&run, &learned)[0], Some(10.0));
        assert_eq!(drop_numbers(&run, &unlearned), [None; 7]);
    }
}
