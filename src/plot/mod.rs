//! Plots and the HTML report of a run, drawn from its files alone (never
//! trains): `ebb plot RUN_DIR`, and the end of every `ebb run`.
//!
//! Each plot is drawn once per format through plotters: PNG files in
//! `plots/`, SVG inlined into `report.html`. The font (DejaVu Sans) is
//! compiled in, so no system font library is involved. Every task keeps one
//! colour across all plots of a run.

pub mod charts;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analysis::RunData;
use crate::error::{Error, Result};

pub use charts::{Chart, charts_for};

/// Plot size in pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;

pub type DrawResult = std::result::Result<(), String>;

static FONT: Once = Once::new();

/// Registers the compiled-in font as "sans-serif" (once per process).
pub fn register_font() {
    FONT.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).ok();
        plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold()).ok();
    });
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

/// Draws `chart` to an SVG string.
pub fn to_svg(chart: &dyn Chart) -> std::result::Result<String, String> {
    register_font();
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, chart.size()).into_drawing_area();
        chart.draw_svg(&area)?;
        area.present().map_err(|e| format!("{e:?}"))?;
    }
    Ok(svg)
}

/// Draws `chart` into a PNG file.
pub fn to_png(chart: &dyn Chart, path: &Path) -> std::result::Result<(), String> {
    register_font();
    let tmp = path.with_extension("tmp.png");
    {
        let area = BitMapBackend::new(&tmp, chart.size()).into_drawing_area();
        chart.draw_png(&area)?;
        area.present().map_err(|e| format!("{e:?}"))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// A chart's title and its SVG text.
pub type TitledSvg = (String, String);

/// Draws `charts` into `dir/plots` in `format`; returns the files and each
/// chart's (title, SVG) for a report.
pub fn draw_all(dir: &Path, charts: &[Box<dyn Chart + '_>], format: Format) -> Result<(Vec<PathBuf>, Vec<TitledSvg>)> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let mut written = Vec::new();
    let mut svgs = Vec::new();
    for chart in charts {
        let fail = |e: String| Error::input(format!("{}: cannot draw {}: {e}", dir.display(), chart.name()));
        let svg = to_svg(chart.as_ref()).map_err(fail)?;
        let path = plots.join(format!("{}.{}", chart.name(), if format == Format::Png { "png" } else { "svg" }));
        match format {
            Format::Png => to_png(chart.as_ref(), &path).map_err(fail)?,
            Format::Svg => crate::run_dir::write_atomic(&path, svg.as_bytes())?,
        }
        written.push(path);
        svgs.push((chart.title(), svg));
    }
    Ok((written, svgs))
}

/// The drawing areas the charts draw on.
pub type PngArea<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub type SvgArea<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws every chart that applies to the run in `dir` into `dir/plots`
/// (PNG or SVG files) and writes `dir/report.html`. Returns the files written.
pub fn plot_run(dir: &Path, format: Format) -> Result<Vec<std::path::PathBuf>> {
    let data = RunData::load(dir)?;
    let summary = crate::analysis::read_summary(dir)?;
    let (mut written, svgs) = draw_all(dir, &charts_for(&data, &summary), format)?;
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
    let html = report::render(&data, &summary, &svgs, &crate::erasure::report_section(dir)?, &config);
    let report = dir.join("report.html");
    crate::run_dir::write_atomic(&report, html.as_bytes())?;
    written.push(report);
    Ok(written)
}
