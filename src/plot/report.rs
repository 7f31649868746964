//! `report.html`: one self-contained page (inline SVG, no scripts, no
//! network) with the summary table, every plot and the resolved config.

use serde_json::Value;

use crate::analysis::RunData;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

/// The preferred fit of a drop, as (τ, β, r∞) cells.
fn fit_cells(drop: &Value) -> [String; 3] {
    let fits = &drop["fits"];
    let Some(name) = fits["preferred"].as_str() else { return ["–".into(), "–".into(), "–".into()] };
    let f = &fits[name];
    [format!("{} ({name})", num(&f["tau"], 1)), num(&f["beta"], 2), num(&f["r_inf"], 3)]
}

pub fn render(data: &RunData, summary: &Value, plots: &[(String, String)], config: &str) -> String {
    let mut rows = String::new();
    for t in &data.tasks {
        let info = &summary["tasks"][&t.id];
        let drop = summary["drops"].as_array().and_then(|d| d.iter().find(|d| d["task"] == t.id.as_str()));
        let cells = match drop {
            Some(d) => {
                let [tau, beta, r_inf] = fit_cells(d);
                let savings = d.get("revive").map_or("–".to_string(), |r| num(&r["savings"], 3));
                [format!("{}", d["step"]), num(&d["accuracy_at_drop"], 3), num(&d["half_life"], 1), tau, beta, r_inf, num(&d["aurc"], 3), savings]
            }
            None => std::array::from_fn(|_| "–".to_string()),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>\n",
            escape(&t.id),
            escape(&t.family),
            num(&info["chance"], 3),
            num(&info["final_exact_match"], 3),
            cells.iter().map(|c| format!("<td>{}</td>", escape(c))).collect::<String>()
        ));
    }
    let status = if let Some(d) = summary["diverged"]["message"].as_str() {
        format!("<p class=\"bad\">{}</p>", escape(d))
    } else if summary["finished"] == true {
        format!("<p>Finished {} steps.</p>", summary["steps"])
    } else {
        format!("<p class=\"bad\">Interrupted: logged up to step {} of {}.</p>", summary["last_logged_step"], summary["steps"])
    };
    let sequential = match summary["sequential"].as_object() {
        Some(s) => format!(
            "<p>Sequential phases: average accuracy {}, backward transfer {}, forgetting {} ({})</p>",
            num(&s["average_accuracy"], 3),
            num(&s["backward_transfer"], 3),
            num(&s["forgetting"], 3),
            escape(s["normalization"].as_str().unwrap_or(""))
        ),
        None => String::new(),
    };
    let figures: String = plots.iter().map(|(title, svg)| format!("<figure><figcaption>{}</figcaption>{svg}</figure>\n", escape(title))).collect();
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
<h2>Resolved config</h2>
<pre>{config}</pre>
</body></html>
"#,
        name = escape(&data.config.name),
        config = escape(config),
    )
}
