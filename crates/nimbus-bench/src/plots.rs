//! PNG plots of `nimbus-bench all` with plotters: throughput bars, latency CDFs and cold-start
//! distributions. Text is drawn with ab_glyph from a TrueType font read at run time (DejaVu
//! Sans from the system, or NIMBUS_BENCH_FONT), so building the bench needs no system library.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::model::{median, AllResults, Cfg, Kind};

const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];
const FONT: &str = "sans-serif";

/// Map a plotters error (whose types differ per backend) into anyhow.
fn p<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

/// Register the font once per process.
fn load_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let r = REGISTERED.get_or_init(|| {
        let explicit = std::env::var_os("NIMBUS_BENCH_FONT").map(PathBuf::from);
        let path = match &explicit {
            Some(p) => p.clone(),
            None => FONT_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "no TrueType font for the plot labels (looked for {}); install one with \
                     `apt-get install fonts-dejavu-core`, or set NIMBUS_BENCH_FONT=/path/to/font.ttf",
                    FONT_CANDIDATES.join(", ")
                )
            })?,
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read the font {}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType font plotters can use", path.display()))
    });
    r.clone().map_err(|e| anyhow!(e))
}

/// Write every plot into `dir`; the files written, or why none could be.
pub fn write_all(r: &AllResults, dir: &Path, _quick: bool) -> std::result::Result<Vec<PathBuf>, String> {
    let go = || -> Result<Vec<PathBuf>> {
        load_font()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut out = Vec::new();
        let f = dir.join("all-throughput.png");
        throughput(r, &f).context("the throughput plot")?;
        out.push(f);
        let f = dir.join("all-latency-cdf.png");
        latency_cdf(r, &f).context("the latency CDF plot")?;
        out.push(f);
        let f = dir.join("all-cold-start.png");
        cold_starts(r, &f).context("the cold-start plot")?;
        out.push(f);
        Ok(out)
    };
    go().map_err(|e| format!("{e:#}"))
}

fn measured_cfgs(r: &AllResults) -> Vec<Cfg> {
    Cfg::ALL.into_iter().filter(|&c| r.runs.iter().any(|run| run.measured(c).is_some())).collect()
}

fn color(cfg: Cfg) -> RGBColor {
    match cfg.kind() {
        Kind::Limit => RGBColor(110, 110, 110),
        Kind::Nimbus => RGBColor(31, 119, 180),
        Kind::Peer => RGBColor(230, 126, 34),
    }
}

fn line_color(i: usize) -> PaletteColor<Palette99> {
    Palette99::pick(i)
}

fn label_of(names: &[String], v: &SegmentValue<i32>) -> String {
    match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            usize::try_from(*i).ok().and_then(|i| names.get(i)).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    }
}

fn n_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Per configuration, the req/s of each run at concurrency `c`.
fn rps_samples(r: &AllResults, cfgs: &[Cfg], c: usize) -> Vec<Vec<f64>> {
    cfgs.iter()
        .map(|&cfg| {
            r.runs.iter().filter_map(|run| run.measured(cfg)?.tput(c).map(crate::load::Throughput::rps)).collect()
        })
        .collect()
}

/// Horizontal bars of req/s (median over runs, a dot per run), one panel per concurrency.
fn throughput(r: &AllResults, file: &Path) -> Result<()> {
    let cfgs = measured_cfgs(r);
    let names: Vec<String> = cfgs.iter().map(|c| c.key().to_owned()).collect();
    let height = 160 + 34 * cfgs.len().max(1) as u32;
    let root = BitMapBackend::new(file, (1400, height)).into_drawing_area();
    p(root.fill(&WHITE))?;
    let (title, body) = root.split_vertically(50);
    p(title.titled(
        &format!(
            "nimbus-bench all: requests/s (bar = median of {} run(s), dot = each run; grey = limit, blue = nimbus, orange = peer)",
            r.settings.runs
        ),
        (FONT, 20),
    ))?;
    let panels = body.split_evenly((1, r.settings.concurrency.len()));
    for (panel, &c) in panels.iter().zip(r.settings.concurrency.iter()) {
        let per = rps_samples(r, &cfgs, c);
        let max = per.iter().flatten().copied().fold(10.0_f64, f64::max) * 1.5;
        let mut chart = p(ChartBuilder::on(panel)
            .caption(format!("concurrency {c}"), (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(if c == r.settings.concurrency.first().copied().unwrap_or(1) { 170 } else { 10 })
            .build_cartesian_2d((10.0_f64..max).log_scale(), (0..n_i32(cfgs.len())).into_segmented()))?;
        let first = c == r.settings.concurrency.first().copied().unwrap_or(1);
        let fmt = |v: &SegmentValue<i32>| if first { label_of(&names, v) } else { String::new() };
        p(chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(cfgs.len())
            .y_label_formatter(&fmt)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("requests/s (log scale)")
            .label_style((FONT, 14))
            .draw())?;
        for (i, (cfg, samples)) in cfgs.iter().zip(&per).enumerate() {
            if samples.is_empty() {
                continue;
            }
            let m = median(samples);
            let i = n_i32(i);
            let bar = [(10.0, SegmentValue::Exact(i)), (m, SegmentValue::Exact(i + 1))];
            p(chart.draw_series(std::iter::once(Rectangle::new(bar.clone(), color(*cfg).mix(0.75).filled()))))?;
            // A white outline leaves a gap between neighbouring bars.
            p(chart.draw_series(std::iter::once(Rectangle::new(bar, WHITE.stroke_width(6)))))?;
            p(chart
                .draw_series(samples.iter().map(|&v| Circle::new((v, SegmentValue::CenterOf(i)), 4, BLACK.filled()))))?;
            p(chart.draw_series(std::iter::once(Text::new(
                format!("{:.0}", m),
                (m * 1.05, SegmentValue::CenterOf(i)),
                (FONT, 13),
            ))))?;
        }
    }
    p(root.present())
}

/// Latency CDFs over all runs, one panel per concurrency, log time axis.
fn latency_cdf(r: &AllResults, file: &Path) -> Result<()> {
    let cfgs = measured_cfgs(r);
    let root = BitMapBackend::new(file, (1400, 700)).into_drawing_area();
    p(root.fill(&WHITE))?;
    let (title, body) = root.split_vertically(50);
    p(title.titled("nimbus-bench all: latency CDF (all requests of all runs)", (FONT, 20)))?;
    let panels = body.split_evenly((1, r.settings.concurrency.len()));
    for (panel, &c) in panels.iter().zip(r.settings.concurrency.iter()) {
        let series: Vec<(Cfg, Vec<f64>)> = cfgs
            .iter()
            .map(|&cfg| {
                let mut v: Vec<f64> = r
                    .runs
                    .iter()
                    .filter_map(|run| run.measured(cfg)?.tput(c))
                    .flat_map(|t| t.latencies_us.iter().map(|us| us / 1e3))
                    .collect();
                v.sort_by(f64::total_cmp);
                (cfg, v)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let lo = series.iter().filter_map(|(_, v)| v.first()).copied().fold(f64::INFINITY, f64::min).max(0.005) * 0.8;
        let hi = series.iter().filter_map(|(_, v)| v.last()).copied().fold(0.01_f64, f64::max) * 1.25;
        let lo = if lo.is_finite() && lo < hi { lo } else { 0.01 };
        let mut chart = p(ChartBuilder::on(panel)
            .caption(format!("concurrency {c}"), (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0_f64..1.0))?;
        p(chart
            .configure_mesh()
            .x_label_formatter(&|v| short_ms(*v))
            .x_desc("latency, ms (log scale)")
            .y_desc("fraction of requests")
            .label_style((FONT, 14))
            .draw())?;
        for (i, (cfg, v)) in series.iter().enumerate() {
            // At most ~500 points a line: enough for a smooth curve, small PNGs.
            let step = (v.len() / 500).max(1);
            let n = v.len() as f64;
            let points: Vec<(f64, f64)> =
                v.iter().enumerate().step_by(step).map(|(k, &x)| (x, (k + 1) as f64 / n)).collect();
            let style = line_color(i).stroke_width(2);
            let anno = p(chart.draw_series(LineSeries::new(points, style)))?;
            anno.label(cfg.key()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        p(chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw())?;
    }
    p(root.present())
}

/// Every cold-start sample (a dot each, a bar at the median), one row per configuration, and
/// for nimbus a second row: the first request to a never-invoked function.
fn cold_starts(r: &AllResults, file: &Path) -> Result<()> {
    let mut rows: Vec<(String, Cfg, Vec<f64>)> = Vec::new();
    for cfg in measured_cfgs(r) {
        let starts: Vec<f64> =
            r.runs.iter().filter_map(|run| run.measured(cfg)).flat_map(|m| m.start_ms.iter().copied()).collect();
        rows.push((format!("{}: start", cfg.key()), cfg, starts));
        if cfg.kind() == Kind::Nimbus {
            let first: Vec<f64> = r
                .runs
                .iter()
                .filter_map(|run| run.measured(cfg))
                .flat_map(|m| m.cold_first_ms.iter().copied())
                .collect();
            rows.push((format!("{}: never-run fn", cfg.key()), cfg, first));
        }
    }
    let names: Vec<String> = rows.iter().map(|(n, _, _)| n.clone()).collect();
    let all: Vec<f64> = rows.iter().flat_map(|(_, _, v)| v.iter().copied()).filter(|v| *v > 0.0).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0_f64, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 { (lo * 0.7, hi * 1.5) } else { (0.01, 10_000.0) };
    let height = 160 + 30 * rows.len().max(1) as u32;
    let root = BitMapBackend::new(file, (1400, height)).into_drawing_area();
    p(root.fill(&WHITE))?;
    let (title, body) = root.split_vertically(50);
    p(title.titled(
        "nimbus-bench all: cold start, ms (start = spawn -> first correct answer; never-run fn = first request to a deployed, never-invoked nimbus function)",
        (FONT, 16),
    ))?;
    let mut chart = p(ChartBuilder::on(&body)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n_i32(rows.len())).into_segmented()))?;
    let fmt = |v: &SegmentValue<i32>| label_of(&names, v);
    p(chart
        .configure_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&fmt)
        .x_label_formatter(&|v| short_ms(*v))
        .x_desc("ms (log scale)")
        .label_style((FONT, 14))
        .draw())?;
    for (i, (_, cfg, v)) in rows.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let i = n_i32(i);
        let c = color(*cfg);
        p(chart.draw_series(v.iter().map(|&x| Circle::new((x, SegmentValue::CenterOf(i)), 4, c.mix(0.8).filled()))))?;
        let m = median(v);
        p(chart.draw_series(std::iter::once(PathElement::new(
            vec![(m, SegmentValue::Exact(i)), (m, SegmentValue::Exact(i + 1))],
            BLACK.stroke_width(2),
        ))))?;
        p(chart.draw_series(std::iter::once(Text::new(short_ms(m), (m * 1.08, SegmentValue::Exact(i)), (FONT, 12)))))?;
    }
    p(root.present())
}

fn short_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
