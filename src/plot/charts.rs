//! The charts: accuracy and loss over training with the schedule marked,
//! retention of dropped tasks with their fitted decay, and the accuracy
//! matrix of a sequential run.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{DrawResult, PngArea, SvgArea};
use crate::analysis::fit::{Fit, Form};
use crate::analysis::{RetentionPoint, RunData, Summary};

/// A chart that owns (or borrows) what it draws.
pub trait Chart {
    /// File stem in `plots/`.
    fn name(&self) -> &'static str;
    fn title(&self) -> String;
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32) {
        (super::WIDTH, super::HEIGHT)
    }
    fn draw_png(&self, area: &PngArea) -> DrawResult;
    fn draw_svg(&self, area: &SvgArea) -> DrawResult;
}

/// Implements the two backend entry points with the chart's generic `draw`.
macro_rules! both_backends {
    () => {
        fn draw_png(&self, area: &$crate::plot::PngArea) -> $crate::plot::DrawResult {
            self.draw(area)
        }
        fn draw_svg(&self, area: &$crate::plot::SvgArea) -> $crate::plot::DrawResult {
            self.draw(area)
        }
    };
}
pub(crate) use both_backends;

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

pub(crate) const FONT: &str = "sans-serif";

/// Twenty distinguishable colours; task i always gets colour i mod 20.
const PALETTE: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (57, 59, 121),
    (173, 73, 74),
    (99, 121, 57),
    (206, 109, 189),
    (140, 162, 82),
    (189, 158, 57),
    (82, 84, 163),
    (231, 150, 156),
    (107, 110, 207),
    (222, 158, 214),
];

pub fn color(index: usize) -> RGBColor {
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}

/// (step, value) points of a curve.
type Points = Vec<(f64, f64)>;

/// One line to draw: a task (or the mean of a group of tasks).
#[derive(Clone, Debug)]
struct Line {
    label: String,
    color: RGBColor,
    /// Drawn dashed from this step on (the task was dropped then).
    dashed_from: Option<u64>,
    task_ids: Vec<String>,
}

impl Line {
    /// The mean of `metric` over the line's tasks at each logged step.
    fn points(&self, data: &RunData, metric: &str) -> Vec<(f64, f64)> {
        self.mean_of(|t| data.series(t, metric))
    }

    /// Exact match on the tasks' training-set samples (empty when they have none).
    fn train_points(&self, data: &RunData) -> Vec<(f64, f64)> {
        self.mean_of(|t| data.train_series(t, "exact_match"))
    }

    /// The 95% Wilson band (lower, upper) of a one-task line, when logged
    /// (a mean over tasks has no binomial interval; old runs have no band).
    fn band(&self, data: &RunData) -> Option<(Points, Points)> {
        let (lo, hi) = (self.points(data, "exact_match_lo"), self.points(data, "exact_match_hi"));
        (self.task_ids.len() == 1 && !lo.is_empty() && lo.len() == hi.len()).then_some((lo, hi))
    }

    /// The mean over the line's tasks of `series(task)` at each step all have.
    fn mean_of<'d>(&self, series: impl Fn(&str) -> &'d [(u64, f64)]) -> Vec<(f64, f64)> {
        let series: Vec<&[(u64, f64)]> = self.task_ids.iter().map(|t| series(t)).collect();
        let Some(first) = series.first() else { return Vec::new() };
        first
            .iter()
            .enumerate()
            .filter_map(|(i, &(step, _))| {
                let vals: Vec<f64> =
                    series.iter().filter_map(|s| s.get(i).filter(|p| p.0 == step).map(|p| p.1)).collect();
                (vals.len() == series.len()).then(|| (step as f64, vals.iter().sum::<f64>() / vals.len() as f64))
            })
            .collect()
    }
}

/// The lines of a run: every task, except that suites with more than 20
/// tasks show their (never dropped, trained) translation pairs as one mean line.
fn lines(data: &RunData) -> Vec<Line> {
    let drop_step = |id: &str| data.events.iter().find(|e| e.event == "drop" && e.task == id).map(|e| e.step);
    let group = data.tasks.len() > 20;
    let mut out = Vec::new();
    let mut grouped = Vec::new();
    for (i, t) in data.tasks.iter().enumerate() {
        let dropped = drop_step(&t.id);
        if group && t.family == "translate" && dropped.is_none() && t.weight > 0.0 {
            grouped.push(t.id.clone());
            continue;
        }
        let label = if t.weight == 0.0 { format!("{} (never trained)", t.id) } else { t.id.clone() };
        out.push(Line { label, color: color(i), dashed_from: dropped, task_ids: vec![t.id.clone()] });
    }
    if !grouped.is_empty() {
        out.push(Line {
            label: format!("translation, mean of {}", grouped.len()),
            color: BLACK,
            dashed_from: None,
            task_ids: grouped,
        });
    }
    out
}

/// (start, end, label) spans during which some task was dropped.
fn drop_spans(data: &RunData) -> Vec<(u64, u64, String)> {
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for e in data.events.iter().filter(|e| e.event == "drop") {
        let end = data
            .events
            .iter()
            .find(|r| r.event == "revive" && r.task == e.task && r.step > e.step)
            .map_or(data.last_step, |r| r.step);
        match spans.iter_mut().find(|s| s.0 == e.step && s.1 == end) {
            Some(s) => s.2.push_str(&format!(", {}", e.task)),
            None => spans.push((e.step, end, format!("{} dropped", e.task))),
        }
    }
    spans
}

/// Draws one series, solid up to `dashed_from` and dashed after it.
fn draw_line<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    pts: &[(f64, f64)],
    line: &Line,
    width: u32,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    // Dropped tasks stand out; the others recede.
    let (width, color) = if line.dashed_from.is_some() {
        (width + 1, line.color.to_rgba())
    } else {
        (width.saturating_sub(1).max(1), line.color.mix(0.75))
    };
    let style = ShapeStyle::from(&color).stroke_width(width);
    let split =
        line.dashed_from.map_or(pts.len(), |d| pts.iter().position(|p| p.0 >= d as f64).map_or(pts.len(), |i| i + 1));
    let color = line.color;
    let label = line.label.clone();
    chart
        .draw_series(LineSeries::new(pts[..split].iter().copied(), style))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&color).stroke_width(3)));
    if split < pts.len() {
        chart.draw_series(DashedLineSeries::new(pts[split - 1..].iter().copied(), 6, 4, style)).map_err(err)?;
    }
    Ok(())
}

/// A light translucent band between `lo` and `hi` (same steps) in `color`.
fn draw_band<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lo: &[(f64, f64)],
    hi: &[(f64, f64)],
    color: RGBColor,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    let outline: Vec<(f64, f64)> = hi.iter().chain(lo.iter().rev()).copied().collect();
    chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(err)?;
    Ok(())
}

/// A thin dotted line: a task's exact match on its training problems.
fn draw_train<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    pts: &[(f64, f64)],
    color: RGBColor,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .draw_series(DashedLineSeries::new(pts.iter().copied(), 2, 4, ShapeStyle::from(&color).stroke_width(2)))
        .map_err(err)?;
    Ok(())
}

/// Legend entries (after the tasks') for the band and the dotted line.
fn band_and_train_legend<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    band: Option<&str>,
    train: bool,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    let nothing = || std::iter::empty::<PathElement<(f64, f64)>>();
    if let Some(band) = band {
        chart
            .draw_series(nothing())
            .map_err(err)?
            .label(band)
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], RGBColor(120, 120, 120).mix(0.3).filled()));
    }
    if train {
        let dot = |x| Circle::new((x, 0), 1, BLACK.filled());
        chart
            .draw_series(nothing())
            .map_err(err)?
            .label("dotted: on the task's training problems")
            .legend(move |(x, y)| EmptyElement::at((x, y)) + dot(2) + dot(10) + dot(18));
    }
    Ok(())
}

/// Vertical markers for drop (red) and revive (green) events, with shaded
/// spans while tasks are dropped.
fn draw_schedule<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    data: &RunData,
    y: (f64, f64),
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    for (start, end, _) in drop_spans(data) {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start as f64, y.0), (end as f64, y.1)],
                RGBColor(120, 120, 120).mix(0.12).filled(),
            )))
            .map_err(err)?;
    }
    for e in &data.events {
        let c = match e.event.as_str() {
            "drop" => RGBColor(200, 30, 30),
            "revive" => RGBColor(30, 150, 30),
            "phase" => RGBColor(90, 90, 90),
            _ => continue,
        };
        chart
            .draw_series(DashedLineSeries::new(
                vec![(e.step as f64, y.0), (e.step as f64, y.1)],
                4,
                4,
                ShapeStyle::from(&c).stroke_width(1),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// The legend box at `position`, drawn when there are at most 24 entries.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    lines: usize,
    position: SeriesLabelPosition,
) -> DrawResult {
    if lines <= 24 {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn max_step(data: &RunData) -> f64 {
    (data.last_step.max(1)) as f64
}

/// Exact match of every task over training, the schedule marked; the Wilson
/// band of each dropped task and, dotted, exact match on the training
/// problems of tasks with a finite training set. Every task's band is in
/// `AccuracyPanels`: ten overlapping bands here would be unreadable.
pub struct Accuracy<'a>(&'a RunData);

impl Accuracy<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let data = self.0;
        area.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: exact match on held-out problems (dashed: after the task's drop)", data.config.name),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_step(data), 0f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("exact match")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        draw_schedule(&mut chart, data, (0.0, 1.02))?;
        let lines = lines(data);
        let (mut banded, mut trained) = (false, false);
        for line in &lines {
            if let Some((lo, hi)) = line.band(data).filter(|_| line.dashed_from.is_some()) {
                draw_band(&mut chart, &lo, &hi, line.color)?;
                banded = true;
            }
            let train = line.train_points(data);
            trained |= !train.is_empty();
            draw_train(&mut chart, &train, line.color)?;
        }
        for line in &lines {
            draw_line(&mut chart, &line.points(data, "exact_match"), line, 2)?;
        }
        band_and_train_legend(&mut chart, banded.then_some("95% Wilson interval (dropped tasks)"), trained)?;
        legend(&mut chart, lines.len() + banded as usize + trained as usize, SeriesLabelPosition::UpperLeft)
    }
}

impl Chart for Accuracy<'_> {
    fn name(&self) -> &'static str {
        "accuracy"
    }
    fn title(&self) -> String {
        "Exact match of every task".into()
    }
    both_backends!();
}

/// Small multiples: one panel per line of `Accuracy`, each with its Wilson
/// band and, dotted, its exact match on its training problems.
pub struct AccuracyPanels<'a>(&'a RunData);

impl AccuracyPanels<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let data = self.0;
        area.fill(&WHITE).map_err(err)?;
        let lines = lines(data);
        let has_train = lines.iter().any(|l| !l.train_points(data).is_empty());
        let title = format!(
            "{}: exact match on held-out problems, shaded: 95% Wilson interval{}",
            data.config.name,
            if has_train { ", dotted: on the task's training problems" } else { "" }
        );
        let area = area.titled(&title, (FONT, 17)).map_err(err)?;
        // Panels about as wide as the plot's aspect: 10 tasks in 5 × 2.
        let cols = ((lines.len() as f64 * super::WIDTH as f64 / super::HEIGHT as f64).sqrt().ceil() as usize)
            .clamp(1, lines.len().max(1));
        let rows = lines.len().div_ceil(cols).max(1);
        for (panel, line) in area.split_evenly((rows, cols)).iter().zip(&lines) {
            let mut chart = ChartBuilder::on(panel)
                .caption(&line.label, (FONT, 13).into_font().color(&line.color))
                .margin(6)
                .x_label_area_size(20)
                .y_label_area_size(36)
                .build_cartesian_2d(0f64..max_step(data), 0f64..1.02f64)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_labels(3)
                .y_labels(3)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .label_style((FONT, 11))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            draw_schedule(&mut chart, data, (0.0, 1.02))?;
            if let Some((lo, hi)) = line.band(data) {
                draw_band(&mut chart, &lo, &hi, line.color)?;
            }
            draw_train(&mut chart, &line.train_points(data), line.color)?;
            draw_line(&mut chart, &line.points(data, "exact_match"), line, 2)?;
        }
        Ok(())
    }
}

impl Chart for AccuracyPanels<'_> {
    fn name(&self) -> &'static str {
        "accuracy_tasks"
    }
    fn title(&self) -> String {
        "Exact match of each task with its 95% Wilson interval".into()
    }
    both_backends!();
}

/// Held-out loss per task (log scale) above train loss and learning rate.
pub struct Loss<'a>(&'a RunData);

impl Loss<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let data = self.0;
        area.fill(&WHITE).map_err(err)?;
        let (top, bottom) = area.split_vertically(HEIGHT_SPLIT);
        let lines = lines(data);
        let all: Vec<Vec<(f64, f64)>> = lines.iter().map(|l| l.points(data, "loss")).collect();
        let (lo, hi) = bounds(all.iter().flatten().map(|p| p.1));
        let mut chart = ChartBuilder::on(&top)
            .caption("held-out loss per answer token (log scale)", (FONT, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step(data), (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(LOG_LABELS)
            .y_label_formatter(&log_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        draw_schedule(&mut chart, data, (lo, hi))?;
        for (line, pts) in lines.iter().zip(&all) {
            draw_line(&mut chart, pts, line, 2)?;
        }
        legend(&mut chart, lines.len(), SeriesLabelPosition::UpperLeft)?;

        let loss: Vec<(f64, f64)> =
            data.train.get("loss").map_or(Vec::new(), |s| s.iter().map(|&(t, v)| (t as f64, v)).collect());
        let lr: Vec<(f64, f64)> =
            data.train.get("lr").map_or(Vec::new(), |s| s.iter().map(|&(t, v)| (t as f64, v)).collect());
        let (llo, lhi) = bounds(loss.iter().map(|p| p.1));
        let lr_hi = lr.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-12) * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .caption("training loss (log scale, left) and learning rate (right)", (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..max_step(data), (llo..lhi).log_scale())
            .map_err(err)?
            .set_secondary_coord(0f64..max_step(data), 0f64..lr_hi);
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("train loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(LOG_LABELS)
            .y_label_formatter(&log_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        draw_schedule(&mut chart, data, (llo, lhi))?;
        chart
            .draw_series(LineSeries::new(loss, ShapeStyle::from(&BLACK).stroke_width(1)))
            .map_err(err)?
            .label("train loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        let lr_color = RGBColor(230, 120, 0);
        chart
            .draw_secondary_series(LineSeries::new(lr, ShapeStyle::from(&lr_color).stroke_width(2)))
            .map_err(err)?
            .label("learning rate")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], lr_color));
        legend(&mut *chart, 2, SeriesLabelPosition::UpperRight)
    }
}

const HEIGHT_SPLIT: u32 = super::HEIGHT * 11 / 20;

/// A positive range around the values, for a log axis.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() && hi > 0.0 { (lo * 0.8, hi * 1.25) } else { (0.01, 10.0) }
}

impl Chart for Loss<'_> {
    fn name(&self) -> &'static str {
        "loss"
    }
    fn title(&self) -> String {
        "Loss per task, training loss and learning rate".into()
    }
    both_backends!();
}

/// At most this many labels on a log axis, so that they never overlap.
const LOG_LABELS: usize = 6;

/// A log axis label: short (1, 0.1, 1e-4) whatever the decade.
fn log_label(v: &f64) -> String {
    if (1e-3..1e4).contains(&v.abs()) { format!("{}", (v * 1e6).round() / 1e6) } else { format!("{v:.0e}") }
}

/// One dropped task's retention curve and its `ok` fits, from the summary.
#[derive(Clone)]
struct DropCurve {
    task: String,
    color: RGBColor,
    points: Vec<RetentionPoint>,
    /// The fits whose status is `ok`; the preferred one is drawn thicker.
    fits: Vec<(Fit, bool)>,
    half_life: Option<f64>,
}

/// Retention of each dropped task against steps since its drop, with both
/// fitted curves (exponential dashed, power law dotted) and the half-life.
pub struct Retention {
    run: String,
    curves: Vec<DropCurve>,
    log_x: bool,
}

impl Retention {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let max_d = self.curves.iter().flat_map(|c| c.points.iter().map(|p| p.delta)).fold(1.0f64, f64::max);
        let (rlo, rhi) = self
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.r))
            .fold((0.0f64, 1.05f64), |(lo, hi), r| (lo.min(r - 0.05), hi.max(r + 0.05)));
        let caption = format!(
            "{}: retention after the drop, {} (dashed: exponential, dotted: power law, fits with status ok only; |: half-life)",
            self.run,
            if self.log_x { "log steps" } else { "steps" }
        );
        let mut builder = ChartBuilder::on(area);
        builder.caption(caption, (FONT, 17)).margin(12).x_label_area_size(40).y_label_area_size(55);
        if self.log_x {
            let mut chart = builder.build_cartesian_2d((1f64..max_d.max(2.0)).log_scale(), rlo..rhi).map_err(err)?;
            self.fill(&mut chart, |d| d >= 1.0)
        } else {
            let mut chart = builder.build_cartesian_2d(0f64..max_d, rlo..rhi).map_err(err)?;
            self.fill(&mut chart, |_| true)
        }
    }

    fn fill<'a, DB: DrawingBackend + 'a, X>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
        keep: impl Fn(f64) -> bool,
    ) -> DrawResult
    where
        X: plotters::coord::ranged1d::Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc("steps since the drop (Δ)")
            .y_desc("retention r(Δ)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(err)?;
        let max_d = self.curves.iter().flat_map(|c| c.points.iter().map(|p| p.delta)).fold(1.0f64, f64::max);
        let grid: Vec<f64> = (0..=400)
            .map(|i| if keep(0.0) { max_d * i as f64 / 400.0 } else { max_d.powf(i as f64 / 400.0) })
            .collect();
        for c in &self.curves {
            let style = ShapeStyle::from(&c.color).stroke_width(2);
            let pts: Vec<&RetentionPoint> = c.points.iter().filter(|p| keep(p.delta)).collect();
            let color = c.color;
            chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.delta, p.r)), style))
                .map_err(err)?
                .label(format!("{} (measured, 95% interval)", c.task))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&color).stroke_width(3))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new((p.delta, p.r), 3, c.color.filled()))).map_err(err)?;
            chart
                .draw_series(pts.iter().filter_map(|p| {
                    Some(ErrorBar::new_vertical(p.delta, p.lo?, p.r, p.hi?, c.color.mix(0.5).stroke_width(1), 4))
                }))
                .map_err(err)?;
            for (fit, preferred) in &c.fits {
                let curve = grid.iter().filter_map(|&d| Some((d, fit.curve(d)?)));
                let width = if *preferred { 3 } else { 1 };
                let which = if *preferred { ", preferred" } else { "" };
                let color = c.color;
                match fit.form {
                    Form::Exponential => chart
                        .draw_series(DashedLineSeries::new(curve, 10, 6, ShapeStyle::from(&color).stroke_width(width)))
                        .map_err(err)?
                        .label(format!("{}: exponential, τ = {:.0}{which}", c.task, fit.tau.unwrap_or(f64::NAN)))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 8, y)], ShapeStyle::from(&color).stroke_width(2))
                        }),
                    Form::Power => {
                        let dark = RGBColor(c.color.0 / 2, c.color.1 / 2, c.color.2 / 2);
                        chart
                            .draw_series(DottedLineSeries::new(curve, 0, 6 + 2 * width, move |p| {
                                Circle::new(p, width as i32 + 1, dark.filled())
                            }))
                            .map_err(err)?
                            .label(format!(
                                "{}: power law, τ = {:.0}, β = {:.2}{which}",
                                c.task,
                                fit.tau.unwrap_or(f64::NAN),
                                fit.beta.unwrap_or(f64::NAN)
                            ))
                            .legend(move |(x, y)| Circle::new((x + 10, y), 3, dark.filled()))
                    }
                };
            }
            if let Some(h) = c.half_life.filter(|&h| keep(h)) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(h, 0.4), (h, 0.6)],
                        ShapeStyle::from(&c.color).stroke_width(3),
                    )))
                    .map_err(err)?;
            }
        }
        chart
            .draw_series(DashedLineSeries::new(
                grid.iter().map(|&d| (d, 0.5)),
                3,
                6,
                ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1),
            ))
            .map_err(err)?;
        legend(chart, 3 * self.curves.len(), SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Retention {
    fn name(&self) -> &'static str {
        if self.log_x { "retention_log" } else { "retention" }
    }
    fn title(&self) -> String {
        format!("Retention of dropped tasks ({} steps)", if self.log_x { "log" } else { "linear" })
    }
    both_backends!();
}

/// The accuracy matrix of a sequential run as a heatmap, values in the cells.
pub struct Matrix {
    run: String,
    order: Vec<String>,
    values: Vec<Vec<Option<f64>>>,
    /// Per phase but the last: whether its task was learned at its end.
    learned: Vec<Option<bool>>,
    learned_threshold: f64,
}

impl Matrix {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        area.fill(&WHITE).map_err(err)?;
        let n = self.order.len();
        let rows = self.values.len();
        // Cells are centred on integer coordinates, so the axis ticks label them.
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: exact match of each task (columns) after each phase (rows); *: not learned (< {})",
                    self.run, self.learned_threshold
                ),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(120)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, -0.5f64..rows as f64 - 0.5)
            .map_err(err)?;
        let name_at = |names: &[String], v: f64, flip: bool| -> String {
            let i = v.round();
            if (v - i).abs() > 1e-6 || i < 0.0 || i as usize >= names.len() {
                return String::new();
            }
            let i = if flip { names.len() - 1 - i as usize } else { i as usize };
            names[i].clone()
        };
        let cols = self.order.clone();
        let not_learned = |i: usize| self.learned.get(i).copied().flatten() == Some(false);
        let phases: Vec<String> = self
            .order
            .iter()
            .take(rows)
            .enumerate()
            .map(|(i, t)| format!("after {t}{}", if not_learned(i) { " *" } else { "" }))
            .collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n + 1)
            .y_labels(rows + 1)
            .x_label_formatter(&|v| name_at(&cols, *v, false))
            .y_label_formatter(&|v| name_at(&phases, *v, true))
            .x_desc("task (in phase order)")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (i, row) in self.values.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (x, y) = (j as f64, (rows - 1 - i) as f64);
                let fill = match v {
                    Some(a) => RGBColor(
                        (255.0 - 200.0 * a.clamp(0.0, 1.0)) as u8,
                        (255.0 - 120.0 * a.clamp(0.0, 1.0)) as u8,
                        255,
                    ),
                    None => RGBColor(230, 230, 230),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                let text = v.map_or("-".to_string(), |a| format!("{a:.2}"));
                let style = (FONT, 14).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                chart.draw_series(std::iter::once(Text::new(text, (x, y), style))).map_err(err)?;
            }
        }
        Ok(())
    }
}

impl Chart for Matrix {
    fn name(&self) -> &'static str {
        "accuracy_matrix"
    }
    fn title(&self) -> String {
        "Accuracy matrix (sequential phases)".into()
    }
    both_backends!();
}

/// The charts that apply to a run: accuracy (overview and per task) and
/// loss always; retention when
/// a task was dropped and learned; the matrix for sequential runs.
pub fn charts_for<'a>(data: &'a RunData, summary: &Summary) -> Vec<Box<dyn Chart + 'a>> {
    let mut charts: Vec<Box<dyn Chart + 'a>> =
        vec![Box::new(Accuracy(data)), Box::new(AccuracyPanels(data)), Box::new(Loss(data))];
    let run = data.config.name.clone();
    let color_of = |id: &str| color(data.tasks.iter().position(|t| t.id == id).unwrap_or(0));
    let curves: Vec<DropCurve> = summary
        .drops
        .iter()
        .filter(|d| d.learned())
        .map(|d| DropCurve {
            task: d.task.clone(),
            color: color_of(&d.task),
            points: d.retention.clone(),
            fits: d
                .fits
                .iter()
                .flat_map(|f| [&f.exponential, &f.power].map(|fit| (fit.ok().cloned(), f.preferred == Some(fit.form))))
                .filter_map(|(fit, preferred)| Some((fit?, preferred)))
                .collect(),
            half_life: d.half_life.and_then(|h| h.reached()),
        })
        .collect();
    if !curves.is_empty() {
        charts.push(Box::new(Retention { run: run.clone(), curves: curves.clone(), log_x: false }));
        charts.push(Box::new(Retention { run: run.clone(), curves, log_x: true }));
    }
    if let Some(seq) = &summary.sequential {
        charts.push(Box::new(Matrix {
            run,
            order: seq.order.clone(),
            values: seq.accuracy_matrix.clone(),
            learned: seq.learned.clone(),
            learned_threshold: seq.learned_threshold,
        }));
    }
    charts
}
