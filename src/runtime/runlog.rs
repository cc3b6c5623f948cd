//! What a user sees of a training run: a progress bar with ETA on a terminal (a summary line per checkpoint
//! otherwise), `metrics.jsonl` (one line per step), and `loss.png` / `lr.png` with `curves.json` in the run
//! folder, refreshed at every checkpoint.
//!
//! The curves are drawn without any text: plotters draws text through a font (its `ttf` feature finds system
//! fonts, which a bare machine lacks; `ab_glyph` needs a font file we would have to ship), so the PNGs have axes,
//! grid lines and tick marks only, and `curves.json` beside them gives the axis ranges, the tick values and the
//! series (name, colour). The numbers themselves are in `metrics.jsonl`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_PNG: &str = "loss.png";
pub const LR_PNG: &str = "lr.png";
pub const CURVES_JSON: &str = "curves.json";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed, this one included (1 for the first step).
    pub step: u64,
    /// Each loss term by name (a non-finite value is written as `null`).
    pub losses: BTreeMap<String, Option<f32>>,
    pub lr: f32,
    pub grad_norm: Option<f32>,
    pub loss_scale: Option<f32>,
    /// Samples of this step divided by its wall time (data wait included).
    pub samples_per_s: f32,
    /// The step was skipped (loss scaling found inf/NaN gradients).
    pub skipped: bool,
}

impl StepRecord {
    /// "mse 0.1234, lr 1.00e-4, grad norm 0.53, loss scale 65536, 12.3 samples/s".
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = (self.losses.iter())
            .map(|(k, v)| match v {
                Some(v) => format!("{k} {v:.4}"),
                None => format!("{k} non-finite"),
            })
            .collect();
        parts.push(format!("lr {:.2e}", self.lr));
        if let Some(g) = self.grad_norm {
            parts.push(format!("grad norm {g:.3}"));
        }
        if let Some(s) = self.loss_scale {
            parts.push(format!("loss scale {s}"));
        }
        parts.push(format!("{:.1} samples/s", self.samples_per_s));
        if self.skipped {
            parts.push("skipped".into());
        }
        parts.join(", ")
    }
}

/// The run's log: metrics file, history for the curves, progress display.
pub struct RunLog {
    dir: PathBuf,
    file: std::fs::File,
    history: Vec<StepRecord>,
    total: u64,
    bar: indicatif::ProgressBar,
    terminal: bool,
}

/// The records of a `metrics.jsonl` up to and including `step` (lines that do not parse, such as one cut short by
/// a crash, and lines after a step number goes backwards are dropped).
fn read_records(path: &Path, upto: u64) -> Result<Vec<StepRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out: Vec<StepRecord> = Vec::new();
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<StepRecord>(line) else { continue };
        if r.step <= upto && out.last().is_none_or(|l| l.step < r.step) {
            out.push(r);
        }
    }
    Ok(out)
}

impl RunLog {
    /// Open the log of the run in `dir` for a run of `total` steps that starts after step `start`: the metrics
    /// file is cut back to the steps up to `start` (all of it for a fresh run, `start` = 0), so that a resumed
    /// run never lists a step twice. `progress: false` hides the bar whatever stderr is.
    pub fn open(dir: &Path, start: u64, total: u64, progress: bool) -> Result<RunLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(METRICS_FILE);
        let history = read_records(&path, start)?;
        let mut text = String::new();
        for r in &history {
            text.push_str(&serde_json::to_string(r).map_err(|e| Error::Other(e.to_string()))?);
            text.push('\n');
        }
        crate::util::files::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let terminal = progress && std::io::stderr().is_terminal();
        // The style is parsed whether or not it is shown, so that tests (never on a terminal) check it.
        let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .map_err(|e| Error::Other(format!("progress bar template: {e}")))?;
        let bar = if terminal {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(style);
            bar.set_position(start);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(RunLog { dir: dir.to_path_buf(), file, history, total, bar, terminal })
    }

    /// The records so far (those kept from before a resume included).
    pub fn history(&self) -> &[StepRecord] {
        &self.history
    }

    /// Append one step (written and flushed at once) and move the bar.
    pub fn log_step(&mut self, r: StepRecord) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        let mut line = serde_json::to_string(&r).map_err(|e| Error::Other(e.to_string()))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).and_then(|_| self.file.flush()).map_err(|e| Error::io(&path, e))?;
        self.bar.set_position(r.step);
        self.bar.set_message(r.summary());
        self.history.push(r);
        Ok(())
    }

    /// A checkpoint was written: redraw the curves and say so (a line on stderr when there is no bar).
    pub fn saved(&mut self, step: u64, checkpoint: &Path) -> Result<()> {
        write_curves(&self.dir, &self.history)?;
        let last = self.history.last().map(|r| format!(": {}", r.summary())).unwrap_or_default();
        let line = format!("step {step}/{}{last}; saved {}", self.total, checkpoint.display());
        if self.terminal {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
        Ok(())
    }

    /// A message above the bar (or on stderr).
    pub fn note(&self, msg: &str) {
        if self.terminal {
            self.bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        self.bar.abandon();
    }
}

/// Up to about `n` round tick values covering `[lo, hi]` (steps of 1, 2 or 5 times a power of ten).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    // Divide by the inverse of a step below one, so that 0.3 comes out as 0.3 rather than 3 * 0.1.
    let inv = (1.0 / step).round();
    (first..=last).map(|k| if step < 1.0 { k as f64 / inv } else { k as f64 * step }).collect()
}

const COLOURS: [(u8, u8, u8); 6] = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)];

/// One named series of points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Draw the series into a PNG at `path` (axes, grid, ticks, no text); returns the axis description for
/// `curves.json`.
fn plot(path: &Path, series: &[Series], smooth: bool) -> Result<serde_json::Value> {
    use plotters::prelude::*;
    let (w, h) = (800u32, 480u32);
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 - y0 < 1e-12 { y0.abs().max(1e-12) * 0.1 } else { (y1 - y0) * 0.05 };
    (y0, y1) = (y0 - pad, y1 + pad);
    let (xt, yt) = (ticks(x0, x1, 8), ticks(y0, y1, 6));
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let err = |e: &dyn std::fmt::Display| Error::Other(format!("{}: drawing: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root).margin(20).build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(&e))?;
        let grey = RGBColor(225, 225, 225);
        let (tx, ty) = ((y1 - y0) * 0.02, (x1 - x0) * 0.012);
        for &t in &xt {
            chart.draw_series([PathElement::new(vec![(t, y0), (t, y1)], grey)]).map_err(|e| err(&e))?;
            chart.draw_series([PathElement::new(vec![(t, y0), (t, y0 + tx)], BLACK)]).map_err(|e| err(&e))?;
        }
        for &t in &yt {
            chart.draw_series([PathElement::new(vec![(x0, t), (x1, t)], grey)]).map_err(|e| err(&e))?;
            chart.draw_series([PathElement::new(vec![(x0, t), (x0 + ty, t)], BLACK)]).map_err(|e| err(&e))?;
        }
        chart.draw_series([PathElement::new(vec![(x0, y1), (x0, y0), (x1, y0)], BLACK.stroke_width(2))]).map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let (r, g, b) = COLOURS[i % COLOURS.len()];
            let finite: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            let light = RGBColor(r / 3 + 170, g / 3 + 170, b / 3 + 170);
            let raw = if smooth && window(finite.len()) > 1 { light } else { RGBColor(r, g, b) };
            chart.draw_series(LineSeries::new(finite.clone(), raw)).map_err(|e| err(&e))?;
            if smooth && window(finite.len()) > 1 {
                chart.draw_series(LineSeries::new(moving_mean(&finite), RGBColor(r, g, b).stroke_width(2))).map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut png), &buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| err(&e))?;
    crate::util::files::write_atomic(path, &png).map_err(|e| Error::io(path, e))?;
    let names: Vec<serde_json::Value> = (series.iter().enumerate())
        .map(|(i, s)| {
            let (r, g, b) = COLOURS[i % COLOURS.len()];
            serde_json::json!({ "name": s.name, "colour": format!("#{r:02x}{g:02x}{b:02x}") })
        })
        .collect();
    let smoothing = match smooth && window(series.first().map_or(0, |s| s.points.len())) > 1 {
        true => serde_json::json!(format!("light: every step; dark: mean of the last {} steps", window(series.first().map_or(0, |s| s.points.len())))),
        false => serde_json::Value::Null,
    };
    Ok(serde_json::json!({
        "x": { "name": "step", "min": x0, "max": x1, "ticks": xt },
        "y": { "min": y0, "max": y1, "ticks": yt },
        "series": names,
        "smoothing": smoothing,
    }))
}

fn window(n: usize) -> usize {
    (n / 50).max(1)
}

fn moving_mean(p: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let w = window(p.len());
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(p.len());
    for (i, &(x, y)) in p.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= p[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    out
}

/// `loss.png` (every loss term against the step), `lr.png` and `curves.json` in `dir`.
pub fn write_curves(dir: &Path, history: &[StepRecord]) -> Result<()> {
    let mut terms: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in history {
        for (k, v) in &r.losses {
            terms.entry(k.as_str()).or_default().push((r.step as f64, v.map_or(f64::NAN, f64::from)));
        }
    }
    let losses: Vec<Series> = terms.into_iter().map(|(name, points)| Series { name: name.into(), points }).collect();
    let lr = [Series { name: "lr".into(), points: history.iter().map(|r| (r.step as f64, r.lr as f64)).collect() }];
    let loss_axes = plot(&dir.join(LOSS_PNG), &losses, true)?;
    let lr_axes = plot(&dir.join(LR_PNG), &lr, false)?;
    let mut json = serde_json::Map::new();
    json.insert(LOSS_PNG.into(), loss_axes);
    json.insert(LR_PNG.into(), lr_axes);
    json.insert("steps".into(), history.len().into());
    let path = dir.join(CURVES_JSON);
    let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::Other(e.to_string()))?;
    crate::util::files::write_atomic(&path, &text).map_err(|e| Error::io(&path, e))
}
