//! `report.html`: one self-contained page (inline SVG, no scripts, no
//! network) with the summary table, every plot and the resolved config.

use crate::analysis::{DropSummary, ReviveStatus, RunData, Summary};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

/// The preferred fit of a drop, as (τ, β, r∞) cells; the fits' statuses when none is `ok`.
fn fit_cells(drop: &DropSummary) -> [String; 3] {
    let Some(fits) = &drop.fits else { return ["–".into(), "–".into(), "–".into()] };
    let Some(f) = fits.best() else {
        return [
            format!("– (exponential {}, power {})", fits.exponential.status.name(), fits.power.status.name()),
            "–".into(),
            "–".into(),
        ];
    };
    [format!("{} ({})", num(f.tau, 1), f.form.name()), num(f.beta, 2), num(f.r_inf, 3)]
}

/// A half-life cell: the value, "> W" when censored at W.
pub fn half_life_cell(drop: &DropSummary) -> String {
    match drop.half_life {
        Some(h) if h.reached().is_some() => format!("{:.1}", h.steps),
        Some(h) => format!("> {:.0} (censored)", h.steps),
        None => "–".into(),
    }
}

/// A savings cell: the value, or why there is none.
pub fn savings_cell(drop: &DropSummary) -> String {
    match &drop.revive {
        None => "–".into(),
        Some(r) => match r.status {
            ReviveStatus::Regained => num(r.savings, 3),
            ReviveStatus::NotForgotten => "– (not forgotten)".into(),
            ReviveStatus::NotRegained => format!("– (not regained in {} steps)", r.censored_at.unwrap_or(0)),
        },
    }
}

/// The run's page; `erasure` is the HTML of its erasure batteries (or empty).
pub fn render(data: &RunData, summary: &Summary, plots: &[(String, String)], erasure: &str, config: &str) -> String {
    let mut rows = String::new();
    for t in &data.tasks {
        let info = summary.tasks.get(&t.id);
        let drop = summary.drops.iter().find(|d| d.task == t.id);
        let cells = match drop {
            Some(d) if !d.learned() => [
                format!("{}", d.step),
                num(d.accuracy_at_drop, 3),
                "not learned".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ],
            Some(d) => {
                let [tau, beta, r_inf] = fit_cells(d);
                [
                    format!("{}", d.step),
                    num(d.accuracy_at_drop, 3),
                    half_life_cell(d),
                    tau,
                    beta,
                    r_inf,
                    num(d.aurc, 3),
                    savings_cell(d),
                ]
            }
            None => std::array::from_fn(|_| "–".to_string()),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>\n",
            escape(&t.id),
            escape(&t.family),
            num(info.map(|i| i.chance), 3),
            num(info.and_then(|i| i.final_exact_match), 3),
            cells.iter().map(|c| format!("<td>{}</td>", escape(c))).collect::<String>()
        ));
    }
    let status = if let Some(d) = &summary.diverged {
        format!("<p class=\"bad\">{}</p>", escape(&d.message))
    } else if summary.finished {
        format!("<p>Finished {} steps.</p>", summary.steps)
    } else {
        format!(
            "<p class=\"bad\">Interrupted: logged up to step {} of {}.</p>",
            summary.last_logged_step, summary.steps
        )
    };
    let sequential = match &summary.sequential {
        Some(s) => format!(
            "<p>Sequential phases: average accuracy {}, backward transfer {}, forgetting {} ({})</p>",
            num(s.average_accuracy, 3),
            num(s.backward_transfer, 3),
            num(s.forgetting, 3),
            escape(&s.normalization)
        ),
        None => String::new(),
    };
    let figures: String = plots
        .iter()
        .map(|(title, svg)| format!("<figure><figcaption>{}</figcaption>{svg}</figure>\n", escape(title)))
        .collect();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ebb run {name}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, td:nth-child(2) {{ text-align: left; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 2em 0; }} figcaption {{ font-weight: bold; margin-bottom: .5em; }}
pre {{ background: #f6f6f6; padding: 1em; font-size: 13px; }}
.bad {{ color: #b00; font-weight: bold; }}
</style></head><body>
<h1>ebb run {name}</h1>
{status}
<h2>Summary</h2>
<p>Exact match on each task's held-out problems. For dropped tasks: accuracy at the drop, half-life (steps until the
chance-normalized retention falls to 0.5), the preferred decay fit (τ, β, r∞), the mean retention over the horizon (AURC)
and, after a revive, the savings.</p>
<table>
<tr><th>task</th><th>family</th><th>chance</th><th>final</th><th>dropped at</th><th>accuracy at drop</th><th>half-life</th><th>τ</th><th>β</th><th>r∞</th><th>AURC</th><th>savings</th></tr>
{rows}</table>
{sequential}
<h2>Plots</h2>
{figures}
{erasure}
<h2>Resolved config</h2>
<pre>{config}</pre>
</body></html>
"#,
        name = escape(&data.config.name),
        config = escape(config),
    )
}
