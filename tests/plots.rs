//! Plots and the report, drawn from real run directories.

mod common;

use std::path::Path;

use common::*;

const CONFIG: &str = r#"
name = "plotted"
seed = 2

[model]
d_model = 64
n_layers = 2
n_heads = 2
n_ctx = 16

[train]
steps = 400
batch_size = 32
lr = 3e-3
warmup_steps = 2

[[data.tasks]]
id = "evens"
family = "evens"
length = [4, 5]

[[data.tasks]]
id = "mod7"
family = "modular"
modulus = 7
eval_fraction = 0.5

[eval]
every = 20
examples = 16
min_examples = 8

[[schedule]]
step = 250
drop = ["evens"]

[[schedule]]
step = 330
revive = ["evens"]
"#;

/// Decodes a PNG: (width, height, distinct colours).
fn decode(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = bytes.chunks(px).collect();
    (info.width, info.height, colours.len())
}

fn run(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("exp.toml");
    write(&cfg, text);
    run_ok(ebb().arg("run").arg(&cfg).arg("--out").arg(dir.join("run")).arg("--quiet"));
}

#[test]
fn a_run_draws_every_plot_and_a_report_holding_them() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), CONFIG);
    let dir = tmp.path().join("run");
    let names = ["accuracy", "accuracy_tasks", "loss", "retention", "retention_log"];
    for name in names {
        let (w, h, colours) = decode(&dir.join("plots").join(format!("{name}.png")));
        assert_eq!((w, h), (1000, 600), "{name}");
        assert!(colours > 20, "{name}.png looks blank ({colours} colours)");
    }
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(report.matches("<svg").count(), names.len(), "one inline SVG per plot");
    assert!(
        !report.contains("<script") && !report.contains("src=\"http") && !report.contains("href=\"http"),
        "the report loads nothing"
    );
    assert!(report.contains("<polygon"), "the Wilson bands are drawn");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let drop = &summary["drops"][0];
    for key in ["accuracy_at_drop", "aurc"] {
        let v = drop[key].as_f64().unwrap();
        assert!(report.contains(&format!("{v:.3}")), "report lacks {key} = {v:.3}");
    }
    assert!(report.contains("evens") && report.contains("mod7") && report.contains("name = &quot;plotted&quot;"));
}

#[test]
fn plot_redraws_an_interrupted_run_from_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), CONFIG);
    let dir = tmp.path().join("run");
    // Cut the logs back to step 300, drop the Wilson rows (as in runs logged
    // before they existed) and remove what the end of a run writes.
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let old = |l: &&str| !l.contains(",exact_match_lo,") && !l.contains(",exact_match_hi,");
    let cut: String = metrics
        .lines()
        .filter(old)
        .filter(|l| l.starts_with("step") || l.split(',').next().unwrap().parse::<u64>().unwrap() <= 300)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("metrics.csv"), cut).unwrap();
    std::fs::remove_dir_all(dir.join("plots")).unwrap();
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    std::fs::remove_file(dir.join("report.html")).unwrap();
    run_ok(ebb().arg("plot").arg(&dir).args(["--format", "svg"]));
    for name in ["accuracy", "accuracy_tasks", "loss", "retention", "retention_log"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{name}.svg");
        assert!(!svg.contains("<polygon"), "{name}.svg: a band without its rows");
    }
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("Interrupted: logged up to step 300 of 400"), "the report says the run is incomplete");
}

#[test]
fn a_sequential_run_gets_its_accuracy_matrix_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let text = CONFIG.split("[[schedule]]").next().unwrap().to_string() + "[sequential]\nphase_steps = 30\n";
    run(tmp.path(), &text);
    let dir = tmp.path().join("run");
    let (w, h, colours) = decode(&dir.join("plots/accuracy_matrix.png"));
    assert_eq!((w, h), (1000, 600));
    assert!(colours > 10);
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("backward transfer"));
}
