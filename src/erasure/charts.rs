//! The plots of `ebb erasure`, drawn from `erasure.json` alone: restored
//! accuracy per component as bars, accuracy along the line from P to D,
//! accuracy under weight noise, relearning curves, few-shot recovery, and
//! per-layer probe accuracy as bars.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::Erasure;
use crate::plot::DrawResult;
use crate::plot::charts::{Chart, FONT, both_backends, color, err, legend};

/// The top of the accuracy axis: the legend sits above accuracy 1.
const TOP: f64 = 1.4;

/// The charts that apply to `e` (one per instrument it ran).
pub fn charts_for(e: &Erasure) -> Vec<Box<dyn Chart + '_>> {
    let mut charts: Vec<Box<dyn Chart + '_>> = Vec::new();
    if e.restore.is_some() {
        charts.push(Box::new(Restore(e)));
    }
    if e.interpolation.is_some() {
        charts.push(Box::new(Interpolation(e)));
    }
    if e.noise.is_some() {
        charts.push(Box::new(Noise(e)));
    }
    if let Some(r) = &e.relearn {
        charts.push(Box::new(Relearn(e, r, "relearn")));
    }
    for (r, name) in e.relearn_frozen.iter().flatten().zip(["relearn_first", "relearn_last"]) {
        charts.push(Box::new(Relearn(e, r, name)));
    }
    if e.few_shot.as_ref().is_some_and(|f| !f.is_empty()) {
        charts.push(Box::new(FewShot(e)));
    }
    if e.probes.is_some() {
        charts.push(Box::new(Probes(e)));
    }
    if e.soft_prompts.is_some() {
        charts.push(Box::new(SoftPrompts(e)));
        charts.push(Box::new(Fragility(e)));
    }
    charts
}

/// A titled chart, exact match on y (0 to `TOP`, labelled up to 1) and
/// `x` on x, its mesh drawn.
fn accuracy_axes<'a, DB: DrawingBackend, X: AsRangedCoord<Value = f64>>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    x: X,
    x_desc: &str,
    x_label: &dyn Fn(&f64) -> String,
    x_labels: usize,
) -> Result<ChartContext<'a, DB, Cartesian2d<X::CoordDescType, RangedCoordf64>>, String>
where
    X::CoordDescType: ValueFormatter<f64>,
{
    area.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x, 0f64..TOP)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(x_label)
        .x_desc(x_desc)
        .y_desc("held-out accuracy")
        .y_label_formatter(&|v| if *v <= 1.0 + 1e-9 { format!("{v:.1}") } else { String::new() })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// Accuracy axes with one category per name on x, at 0, 1, ….
fn category_axes<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    names: &[String],
    x_desc: &str,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let name_at = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    accuracy_axes(area, caption, -0.5f64..names.len() as f64 - 0.5, x_desc, &name_at, names.len())
}

/// The colour of model P, D or C in every chart.
fn model_color(model: &str) -> RGBColor {
    match model {
        "P" => color(0),
        "D" => color(3),
        _ => color(2),
    }
}

/// Dashed horizontal reference lines: P's and D's accuracy and chance.
fn references<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    e: &Erasure,
    x: (f64, f64),
) -> DrawResult {
    let mut lines = vec![
        (format!("P (step {}): {:.3}", e.before.step, e.before.exact_match), e.before.exact_match, color(0)),
        (format!("D (step {}): {:.3}", e.after.step, e.after.exact_match), e.after.exact_match, color(3)),
    ];
    if let Some(c) = &e.control {
        lines.push((format!("C, never learned (step {}): {:.3}", c.step, c.exact_match), c.exact_match, color(2)));
    }
    lines.push((format!("chance {:.3}", e.chance), e.chance, RGBColor(128, 128, 128)));
    for (label, y, c) in lines {
        let style = ShapeStyle::from(c.mix(0.8)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(x.0, y), (x.1, y)], 6, 4, style))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
    }
    Ok(())
}

/// Per component: D with P's component (does the capability come back?)
/// and P with D's (is the component enough to lose it?).
struct Restore<'a>(&'a Erasure);

impl Restore<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let components = &e.restore.as_ref().expect("charted only with restore").components;
        let n = components.len() as f64;
        let names: Vec<String> = components.iter().map(|c| c.component.clone()).collect();
        let caption = format!("{}: {} held-out exact match with one component swapped", e.run, e.task);
        let mut chart = category_axes(area, caption, &names, "")?;
        for (k, (label, c)) in
            [("D with P's component", color(0)), ("P with D's component", color(3))].into_iter().enumerate()
        {
            let bar = |i: usize| {
                let comp = &components[i];
                let (y, [lo, hi]) = if k == 0 {
                    (comp.p_into_d, comp.p_into_d_interval)
                } else {
                    (comp.d_into_p, comp.d_into_p_interval)
                };
                (i as f64 - 0.38 + 0.38 * k as f64, y, lo, hi)
            };
            let bars = (0..components.len())
                .map(bar)
                .map(|(x0, y, _, _)| Rectangle::new([(x0, 0.0), (x0 + 0.36, y)], c.mix(0.75).filled()));
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(format!("{label} (whiskers: 95% Wilson interval)"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.mix(0.75).filled()));
            let whiskers = (0..components.len()).map(bar).map(|(x0, _, lo, hi)| {
                PathElement::new([(x0 + 0.18, lo), (x0 + 0.18, hi)], ShapeStyle::from(BLACK).stroke_width(1))
            });
            chart.draw_series(whiskers).map_err(err)?;
        }
        references(&mut chart, e, (-0.5, n - 0.5))?;
        legend(&mut chart, 6, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Restore<'_> {
    fn name(&self) -> &'static str {
        "restore"
    }
    fn title(&self) -> String {
        "Accuracy with one component swapped between P and D".into()
    }
    both_backends!();
}

/// Accuracy of the dropped task and of the kept tasks along (1 − α)·P + α·D.
struct Interpolation<'a>(&'a Erasure);

impl Interpolation<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let points = e.interpolation.as_ref().expect("charted only with interpolation");
        let caption = format!("{}: held-out exact match along the line from P to D", e.run);
        let mut chart = accuracy_axes(area, caption, 0f64..1f64, "α: (1 − α)·P + α·D", &|v| format!("{v:.1}"), 11)?;
        let kept = format!("kept tasks (mean of {})", e.kept_tasks.len());
        for (label, c, get) in [
            (e.task.clone(), color(3), (|p: &super::InterpolationPoint| Some(p.exact_match)) as fn(&_) -> Option<f64>),
            (kept, color(2), |p: &super::InterpolationPoint| p.kept_exact_match),
        ] {
            let line: Vec<(f64, f64)> = points.iter().filter_map(|p| Some((p.alpha, get(p)?))).collect();
            if line.is_empty() {
                continue;
            }
            let style = ShapeStyle::from(c).stroke_width(2);
            chart
                .draw_series(LineSeries::new(line.clone(), style))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
        }
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, e.chance), (1.0, e.chance)],
                6,
                4,
                ShapeStyle::from(RGBColor(128, 128, 128)).stroke_width(1),
            ))
            .map_err(err)?;
        legend(&mut chart, 2, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Interpolation<'_> {
    fn name(&self) -> &'static str {
        "interpolation"
    }
    fn title(&self) -> String {
        "Accuracy along the straight line from P to D".into()
    }
    both_backends!();
}

/// Mean accuracy under relative weight noise against σ (log scale), with
/// every draw as a dot, for P and D.
struct Noise<'a>(&'a Erasure);

impl Noise<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let levels = e.noise.as_ref().expect("charted only with noise");
        let (lo, hi) = (super::NOISE_SIGMAS[0] / 1.5, super::NOISE_SIGMAS[super::NOISE_SIGMAS.len() - 1] * 1.5);
        let caption = format!("{}: {} held-out exact match under weight noise", e.run, e.task);
        let x = (lo..hi).log_scale().with_key_points(super::NOISE_SIGMAS.to_vec());
        let mut chart = accuracy_axes(area, caption, x, "σ (relative to each tensor's RMS)", &|v| format!("{v}"), 6)?;
        // C first, so D, often at the same accuracy, is drawn over it.
        for (model, c) in [("C", color(2)), ("P", color(0)), ("D", color(3))] {
            let mine: Vec<&super::NoiseLevel> = levels.iter().filter(|l| l.model == model).collect();
            if mine.is_empty() {
                continue;
            }
            let style = ShapeStyle::from(c).stroke_width(2);
            chart
                .draw_series(LineSeries::new(mine.iter().map(|l| (l.sigma, l.mean)), style))
                .map_err(err)?
                .label(format!("{model}: mean of {} draws (dots: each draw)", super::NOISE_DRAWS))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
            chart
                .draw_series(
                    mine.iter()
                        .flat_map(|l| l.draws.iter().map(|&y| Circle::new((l.sigma, y), 2, c.mix(0.5).filled()))),
                )
                .map_err(err)?;
        }
        legend(&mut chart, 5, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Noise<'_> {
    fn name(&self) -> &'static str {
        "noise"
    }
    fn title(&self) -> String {
        "Accuracy under relative weight noise".into()
    }
    both_backends!();
}

/// Held-out exact match while P, D and C are fine-tuned on the task alone
/// (one of the battery's relearnings, and its file stem), with the target 0.9·A(P).
struct Relearn<'a>(&'a Erasure, &'a super::Relearn, &'static str);

impl Relearn<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let (e, r) = (self.0, self.1);
        let caption = format!("{}: relearning {} ({} trainable)", e.run, e.task, r.trainable);
        let x = 0f64..r.cap.max(1) as f64;
        let mut chart = accuracy_axes(area, caption, x, "fine-tuning step", &|v| format!("{v:.0}"), 10)?;
        for m in &r.models {
            let c = model_color(&m.model);
            let style = ShapeStyle::from(c).stroke_width(2);
            let reached = m
                .steps_to_target
                .map_or(format!("target not reached in {} steps", r.cap), |s| format!("target after {s} steps"));
            chart
                .draw_series(LineSeries::new(m.curve.iter().map(|&(s, a)| (s as f64, a)), style))
                .map_err(err)?
                .label(format!("from {}: {reached}", m.model))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        }
        let target = ShapeStyle::from(BLACK.mix(0.6)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(0.0, r.target), (r.cap as f64, r.target)], 6, 4, target))
            .map_err(err)?
            .label(format!("target 0.9·A(P) = {:.3}", r.target))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], target));
        legend(&mut chart, 4, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Relearn<'_> {
    fn name(&self) -> &'static str {
        self.2
    }
    fn title(&self) -> String {
        let models: Vec<&str> = self.1.models.iter().map(|m| m.model.as_str()).collect();
        format!(
            "Relearning from {} on {} training problems, {} trainable",
            models.join(", "),
            self.1.examples,
            self.1.trainable
        )
    }
    both_backends!();
}

/// Accuracy after a short fine-tune on n training problems, against n (log
/// scale), for P, D and C.
struct FewShot<'a>(&'a Erasure);

impl FewShot<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let levels = e.few_shot.as_ref().expect("charted only with few-shot");
        let ns: Vec<f64> = levels.iter().map(|f| f.examples as f64).collect();
        let steps = levels.first().map_or(0, |f| f.steps);
        let caption = format!("{}: {} after {steps} fine-tuning steps on n problems", e.run, e.task);
        let x = (0.7..ns[ns.len() - 1] * 1.4).log_scale().with_key_points(ns.clone());
        let mut chart = accuracy_axes(area, caption, x, "n training problems", &|v| format!("{v}"), ns.len())?;
        for (model, c) in [("C", color(2)), ("P", color(0)), ("D", color(3))] {
            let points: Vec<(f64, f64)> = levels
                .iter()
                .filter_map(|f| Some((f.examples as f64, f.accuracy.iter().find(|a| a.0 == model)?.1)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let style = ShapeStyle::from(c).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(err)?
                .label(format!("from {model}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
        }
        legend(&mut chart, 3, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for FewShot<'_> {
    fn name(&self) -> &'static str {
        "few_shot"
    }
    fn title(&self) -> String {
        "Few-shot recovery from P, D and C".into()
    }
    both_backends!();
}

/// Per layer, the probe's held-out accuracy for P, D and C as bars (with
/// the shuffled-label control's accuracy as a black tick on each bar).
struct Probes<'a>(&'a Erasure);

impl Probes<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let p = e.probes.as_ref().expect("charted only with probes");
        let names: Vec<String> =
            p.models.first().map_or_else(Vec::new, |m| m.layers.iter().map(|l| l.layer.clone()).collect());
        let n = names.len() as f64;
        let caption = format!("{}: probes for {}'s first answer token", e.run, e.task);
        let mut chart = category_axes(area, caption, &names, "residual stream after")?;
        let width = 0.8 / p.models.len().max(1) as f64;
        for (k, m) in p.models.iter().enumerate() {
            let c = model_color(&m.model);
            let x0 = |i: usize| i as f64 - 0.4 + width * k as f64;
            chart
                .draw_series(m.layers.iter().enumerate().map(|(i, l)| {
                    Rectangle::new([(x0(i), 0.0), (x0(i) + width * 0.9, l.accuracy)], c.mix(0.75).filled())
                }))
                .map_err(err)?
                .label(format!("{} (whiskers: 95% Wilson interval)", m.model))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.mix(0.75).filled()));
            let mid = |i: usize| x0(i) + width * 0.45;
            chart
                .draw_series(m.layers.iter().enumerate().map(|(i, l)| {
                    PathElement::new(
                        [(mid(i), l.accuracy_interval[0]), (mid(i), l.accuracy_interval[1])],
                        ShapeStyle::from(BLACK).stroke_width(1),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(m.layers.iter().enumerate().map(|(i, l)| {
                    PathElement::new(
                        [(x0(i), l.control_accuracy), (x0(i) + width * 0.9, l.control_accuracy)],
                        ShapeStyle::from(BLACK).stroke_width(3),
                    )
                }))
                .map_err(err)?;
        }
        let style = ShapeStyle::from(RGBColor(128, 128, 128)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(-0.5, p.chance), (n - 0.5, p.chance)], 6, 4, style))
            .map_err(err)?
            .label(format!("constant guess {:.3}; black ticks: shuffled-label control", p.chance))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        legend(&mut chart, 4, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Probes<'_> {
    fn name(&self) -> &'static str {
        "probes"
    }
    fn title(&self) -> String {
        "Linear probes per layer on P, D and C, fitted on T and scored on V".into()
    }
    both_backends!();
}

/// Held-out accuracy of the best soft prompt against its length k, for P,
/// D and C, with 95% Wilson whiskers and the targets 0.5·A(P), 0.9·A(P).
struct SoftPrompts<'a>(&'a Erasure);

impl SoftPrompts<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let s = e.soft_prompts.as_ref().expect("charted only with soft prompts");
        let names: Vec<String> = s.k_fit.iter().map(|k| k.to_string()).collect();
        let n = names.len() as f64;
        let caption = format!("{}: {} with k soft embeddings after BOS, model frozen", e.run, e.task);
        let mut chart = category_axes(area, caption, &names, "k (soft-prompt length)")?;
        for (i, m) in s.models.iter().enumerate() {
            let c = model_color(&m.model);
            let style = ShapeStyle::from(c).stroke_width(2);
            let shift = (i as f64 - 1.0) * 0.06; // keeps equal points' whiskers apart
            let points: Vec<(f64, f64)> =
                m.points.iter().enumerate().map(|(x, p)| (x as f64 + shift, p.accuracy)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(err)?
                .label(format!("{} (whiskers: 95% Wilson interval)", m.model))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
            chart
                .draw_series(m.points.iter().enumerate().map(|(x, p)| {
                    let x = x as f64 + shift;
                    PathElement::new([(x, p.accuracy_interval[0]), (x, p.accuracy_interval[1])], ShapeStyle::from(c))
                }))
                .map_err(err)?;
        }
        for (share, grey) in [(0.5, 160), (0.9, 96)] {
            let style = ShapeStyle::from(RGBColor(grey, grey, grey)).stroke_width(1);
            let y = share * s.accuracy_p;
            chart
                .draw_series(DashedLineSeries::new([(-0.5, y), (n - 0.5, y)], 6, 4, style))
                .map_err(err)?
                .label(format!("{share}·A(P) = {y:.3}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        }
        legend(&mut chart, 5, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for SoftPrompts<'_> {
    fn name(&self) -> &'static str {
        "soft_prompt"
    }
    fn title(&self) -> String {
        "Soft-prompt elicitation: accuracy against the number of soft embeddings".into()
    }
    both_backends!();
}

/// The longest soft prompt of each model under random perturbations of
/// relative size ε (log scale): mean accuracy, every draw a dot.
struct Fragility<'a>(&'a Erasure);

impl Fragility<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let e = self.0;
        let s = e.soft_prompts.as_ref().expect("charted only with soft prompts");
        let eps = super::soft_prompt::EPSILONS;
        let k = s.k_fit.last().copied().unwrap_or(0);
        let caption = format!("{}: {} with the best soft prompt of k = {k}, perturbed", e.run, e.task);
        let x = (eps[0] / 1.5..eps[eps.len() - 1] * 1.5).log_scale().with_key_points(eps.to_vec());
        let desc = "ε (each soft embedding moved by ε times its norm)";
        let mut chart = accuracy_axes(area, caption, x, desc, &|v| format!("{v}"), eps.len())?;
        for m in &s.models {
            let Some(point) = m.points.iter().find(|p| p.k == k) else { continue };
            let c = model_color(&m.model);
            if point.fragility.is_empty() {
                let style = ShapeStyle::from(c).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(Vec::<(f64, f64)>::new(), style))
                    .map_err(err)?
                    .label(format!("{}: {:.3} unperturbed, nothing to halve", m.model, point.accuracy))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
                continue;
            }
            let style = ShapeStyle::from(c).stroke_width(2);
            let halves = point.halving_epsilon.map_or("never halves".to_string(), |x| format!("halves at ε {x}"));
            chart
                .draw_series(LineSeries::new(point.fragility.iter().map(|f| (f.epsilon, f.mean)), style))
                .map_err(err)?
                .label(format!("{}: {:.3} unperturbed, {halves} (dots: each draw)", m.model, point.accuracy))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
            let dots = point.fragility.iter().flat_map(|f| f.draws.iter().map(|&y| (f.epsilon, y)));
            chart.draw_series(dots.map(|p| Circle::new(p, 2, c.mix(0.4).filled()))).map_err(err)?;
        }
        legend(&mut chart, 3, SeriesLabelPosition::UpperRight)
    }
}

impl Chart for Fragility<'_> {
    fn name(&self) -> &'static str {
        "soft_prompt_fragility"
    }
    fn title(&self) -> String {
        "Fragility of the best soft prompts under random perturbation".into()
    }
    both_backends!();
}
