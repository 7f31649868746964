//! The overlap study end to end on real processes: tasks/study-overlap.toml
//! shrunk with `ebb sweep --set` (fewer seeds, sizes and steps; a lower
//! learned threshold, so that tiny models have drops to measure), then
//! `ebb report` with its erasure batteries.

mod common;

use common::*;

/// The quick variant: three seeds, one weight decay, two small sizes (18k
/// and 30k parameters), 1000 steps, a drop at step 900 or once every
/// dropped task reaches exact match 0.1. Checked to give learned drops in
/// at least two runs of every condition and size (seeds 1-3).
const QUICK: [&str; 16] = [
    "seeds=[1,2,3]",
    "train.weight_decay=[0.1]",
    "model.d_model=[24,32]",
    "model.n_heads=[2,4]",
    "train.steps=1000",
    "schedule[0].step=900",
    "schedule[0].when_learned=0.1",
    "analysis.learned=0.1",
    "train.end_after_events=100",
    "analysis.horizon=100",
    "eval.every=50",
    "eval.examples=32",
    "eval.after_events=false",
    "train.batch_size=32",
    "train.lr=5e-3",
    "report.relearn_steps=20",
];

/// The rows of the Markdown table under `heading`.
fn table_rows(md: &str, heading: &str) -> Vec<Vec<String>> {
    let section = md.split(heading).nth(1).unwrap_or_else(|| panic!("no {heading} in the report:\n{md}"));
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect()
}

/// "x [lo, hi]" with two numbers in the brackets.
fn has_interval(cell: &str) -> bool {
    let Some(inside) = cell.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(i, _)| i) else {
        return false;
    };
    let bounds: Vec<&str> = inside.split(", ").collect();
    bounds.len() == 2 && bounds.iter().all(|b| b.trim().parse::<f64>().is_ok())
}

#[test]
#[ignore = "about 10 minutes on 2 cores (24 runs and 8 erasure batteries), over the suite's budget: run with --ignored"]
fn the_quick_study_reports_every_section_and_every_answer_with_an_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("study");
    let mut sweep = ebb();
    sweep.arg("sweep").arg(root().join("tasks/study-overlap.toml")).arg("--out").arg(&dir).arg("--quiet");
    for s in QUICK {
        sweep.args(["--set", s]);
    }
    run_ok(&mut sweep);
    let md_path = tmp.path().join("page/quick.md");
    run_ok(ebb().arg("report").arg(&dir).arg("--out").arg(&md_path).arg("--quiet"));
    let md = std::fs::read_to_string(&md_path).unwrap();
    for heading in [
        "## Answers",
        "## Decay by condition and size",
        "## Retention after the drop",
        "## Half-life against model size",
        "## Zero-shot translation",
        "## Depth of erasure",
    ] {
        assert!(md.contains(heading), "no {heading}:\n{md}");
    }
    assert!(
        md.contains("Regenerate: `ebb sweep ") && md.contains("--set 'seeds=[1,2,3]'"),
        "no regenerate line:\n{md}"
    );
    for figure in ["retention", "half_life", "zero_shot", "soft_prompt"] {
        assert!(md.contains(&format!("(quick/{figure}.png)")), "{figure} not on the page");
        let png = std::fs::read(tmp.path().join(format!("page/quick/{figure}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{figure}.png");
    }
    let html = std::fs::read_to_string(tmp.path().join("page/quick.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "the page inlines its four figures");

    let answers = table_rows(&md, "## Answers");
    let asked = |q: &str| answers.iter().filter(|r| r[0].contains(q)).count();
    assert_eq!(asked("decay more slowly"), 2 * 3, "three condition pairs at each of two sizes");
    assert_eq!(asked("scale with size"), 4, "one per condition");
    assert_eq!(asked("zero-shot pair survive"), 2, "condition D at each size");
    assert_eq!(asked("Gated or erased"), 4 * 2, "each condition at the smallest and largest size");
    assert_eq!(answers.len(), 6 + 4 + 2 + 8, "{answers:?}");
    for row in &answers {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(has_interval(&row[2]) || row[2].starts_with("b ∈ (−∞, ∞)"), "no interval: {row:?}");
        let resolved = ["yes", "no", "grows", "shrinks", "rises", "gated", "erased", "nothing", "not decayed"];
        assert!(
            row[3] == "not resolved at this size"
                || row[3] == "not resolved over these sizes"
                || resolved.iter().any(|w| row[3].starts_with(w)),
            "{row:?}"
        );
    }
    let batteries = table_rows(&md, "## Depth of erasure");
    assert_eq!(batteries.len(), 8, "{batteries:?}");

    // A second report reuses the batteries and writes the same page.
    run_ok(ebb().arg("report").arg(&dir).arg("--out").arg(&md_path).arg("--quiet"));
    assert_eq!(std::fs::read_to_string(&md_path).unwrap(), md);
}

#[test]
fn sweep_set_changes_seeds_axes_and_run_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = |sets: &[&str]| {
        let mut cmd = ebb();
        cmd.arg("sweep").arg(root().join("tasks/study-overlap.toml")).arg("--out").arg(tmp.path()).arg("--dry-run");
        for s in sets {
            cmd.args(["--set", s]);
        }
        String::from_utf8_lossy(&run_ok(&mut cmd).stdout).to_string()
    };
    let full = plan(&[]);
    assert!(full.starts_with("sweep study-overlap: 120 runs"), "{full}");
    let quick = plan(&["seeds=[7]", "model.d_model=[16,32,64]", "train.weight_decay=[0.1]"]);
    assert!(quick.starts_with("sweep study-overlap: 12 runs"), "{quick}");
    assert!(quick.contains("seed=7") && !quick.contains("seed=1") && quick.contains("model.d_model=16"), "{quick}");
    // A run key changes every run's config, so every run id.
    let ids =
        |text: &str| text.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect::<Vec<_>>();
    let longer = plan(&["seeds=[7]", "model.d_model=[16,32,64]", "train.weight_decay=[0.1]", "train.steps=8000"]);
    assert!(ids(&quick).iter().all(|id| !ids(&longer).contains(id)));

    // The plan records the command that made it, one shell word per argument,
    // for the report's "Regenerate" line.
    let file = root().join("tasks/study-overlap.toml");
    let sets = ["seeds=[7]".to_string(), "train.steps=8000".to_string()];
    let recorded = ebb::sweep::Plan::load(&file, &sets).unwrap().command;
    assert_eq!(recorded, format!("ebb sweep {} --set 'seeds=[7]' --set train.steps=8000", file.display()));

    for (set, expect) in [
        ("model.d_model=32", &["--set model.d_model=32", "list"][..]),
        ("schedule[3].step=10", &["schedule", "no [3]"][..]),
        ("seeds", &["--set seeds", "key=value"][..]),
    ] {
        let out = ebb()
            .arg("sweep")
            .arg(root().join("tasks/study-overlap.toml"))
            .arg("--out")
            .arg(tmp.path())
            .args(["--dry-run", "--set", set])
            .output()
            .unwrap();
        assert_input_error(&out, expect);
    }
}
