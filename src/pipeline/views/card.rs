//! The dataset card: `card.md` (images and boxes per category, images without boxes, the score distribution,
//! box sizes, and the command, settings and versions from `generate.json` when present) and
//! `card/box_sizes.png`, a histogram of box sizes (sqrt of the box area, two bins per octave) with each bar
//! stacked by category in the category colours.

use std::fmt::Write as _;
use std::path::PathBuf;

use image::{Rgb, RgbImage};
use serde_json::Value;

use super::{Views, draw, font, make_dir};
use crate::util::files;
use crate::{Error, Result};

/// Bins per octave of the box-size histogram.
pub const BINS_PER_OCTAVE: f64 = 2.0;

/// `s` safe in Markdown text and table cells: HTML-escaped, Markdown punctuation backslash-escaped, line
/// breaks as spaces.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' | '{' | '}' | '(' | ')' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A fenced code block holding `s` verbatim (the fence is longer than any backtick run in `s`).
fn code_block(s: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}\n{s}\n{fence}\n")
}

/// The `q`-quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

/// The box-size histogram: bin `b` holds sizes in `[2^(lo + b/2), 2^(lo + (b+1)/2))`; counts per category.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeHistogram {
    /// log2 of the lower edge of bin 0.
    pub lo: f64,
    /// `counts[bin][category]`.
    pub counts: Vec<Vec<usize>>,
}

impl SizeHistogram {
    pub fn new(v: &Views) -> SizeHistogram {
        let sizes: Vec<(f64, usize)> = v
            .images
            .iter()
            .flat_map(|im| im.boxes.iter().map(|b| ((b.bbox[2] * b.bbox[3]).max(0.0).sqrt(), b.cat)))
            .filter(|(s, _)| *s > 0.0)
            .collect();
        if sizes.is_empty() {
            return SizeHistogram { lo: 0.0, counts: Vec::new() };
        }
        let bin_of = |s: f64| (s.log2() * BINS_PER_OCTAVE).floor();
        let lo_bin = sizes.iter().map(|&(s, _)| bin_of(s)).fold(f64::INFINITY, f64::min);
        let hi_bin = sizes.iter().map(|&(s, _)| bin_of(s)).fold(f64::NEG_INFINITY, f64::max);
        let mut counts = vec![vec![0usize; v.categories.len()]; (hi_bin - lo_bin) as usize + 1];
        for (s, cat) in sizes {
            counts[(bin_of(s) - lo_bin) as usize][cat] += 1;
        }
        SizeHistogram { lo: lo_bin / BINS_PER_OCTAVE, counts }
    }
    /// Lower and upper edge of bin `b`, in pixels.
    pub fn edges(&self, b: usize) -> (f64, f64) {
        let e = |k: f64| (self.lo + k / BINS_PER_OCTAVE).exp2();
        (e(b as f64), e(b as f64 + 1.0))
    }
    pub fn total(&self, b: usize) -> usize {
        self.counts[b].iter().sum()
    }
}

/// Draws the histogram (bars stacked by category, a legend of the largest categories).
pub fn draw_histogram(h: &SizeHistogram, v: &Views) -> RgbImage {
    const W: u32 = 900;
    const H: u32 = 420;
    let (left, right, top, bottom) = (56i64, 210i64, 34i64, 44i64);
    let ink = [30, 30, 30];
    let grid = [215, 215, 215];
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let boxes: usize = (0..h.counts.len()).map(|b| h.total(b)).sum();
    let title = format!("box size sqrt(w*h) in pixels, log scale, {} bins per octave: {boxes} boxes", BINS_PER_OCTAVE);
    draw::text(&mut img, left, 10, &title, 1, ink);
    let (pw, ph) = (W as i64 - left - right, H as i64 - top - bottom);
    draw::fill_rect(&mut img, left, top + ph, left + pw, top + ph + 1, ink);
    draw::fill_rect(&mut img, left - 1, top, left, top + ph + 1, ink);
    if h.counts.is_empty() {
        draw::text(&mut img, left + 10, top + ph / 2, "no boxes", 2, ink);
        return img;
    }
    let max = (0..h.counts.len()).map(|b| h.total(b)).max().unwrap_or(1).max(1);
    // Y ticks at 0, max/2, max.
    for t in [0, max / 2, max] {
        let y = top + ph - (t as f64 / max as f64 * ph as f64).round() as i64;
        draw::fill_rect(&mut img, left, y, left + pw, y + 1, grid);
        let s = t.to_string();
        draw::text(&mut img, left - 6 - font::text_width(&s, 1) as i64, y - 3, &s, 1, ink);
    }
    let n = h.counts.len() as i64;
    let bw = (pw / n).max(1);
    for (b, per_cat) in h.counts.iter().enumerate() {
        let x0 = left + b as i64 * bw;
        let mut acc = 0usize;
        for (cat, &c) in per_cat.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let ya = top + ph - (acc as f64 / max as f64 * ph as f64).round() as i64;
            acc += c;
            let yb = top + ph - (acc as f64 / max as f64 * ph as f64).round() as i64;
            draw::fill_rect(&mut img, x0 + 1, yb, x0 + bw - 1, ya, draw::category_colour(cat));
        }
        // Edge label at every whole octave.
        let (lo, _) = h.edges(b);
        if ((h.lo + b as f64 / BINS_PER_OCTAVE).fract()).abs() < 1e-9 {
            draw::fill_rect(&mut img, x0, top + ph, x0 + 1, top + ph + 5, ink);
            let s = format!("{}", lo.round() as i64);
            draw::text(&mut img, x0 - font::text_width(&s, 1) as i64 / 2, top + ph + 9, &s, 1, ink);
        }
    }
    draw::text(&mut img, left + pw / 2 - 60, H as i64 - 16, "sqrt(area), pixels", 1, ink);
    // Legend: the categories with the most boxes.
    let mut order: Vec<(usize, usize)> = (0..v.categories.len()).map(|c| (h.counts.iter().map(|r| r[c]).sum(), c)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let shown: Vec<_> = order.iter().filter(|(n, _)| *n > 0).collect();
    let lx = left + pw + 16;
    for (row, (n, c)) in shown.iter().take(24).enumerate() {
        let y = top + row as i64 * 12;
        draw::fill_rect(&mut img, lx, y, lx + 9, y + 9, draw::category_colour(*c));
        let s = draw::fit_text(&format!("{} ({n})", v.categories[*c]), 1, (right - 34) as u32);
        draw::text(&mut img, lx + 13, y + 1, &s, 1, ink);
    }
    if shown.len() > 24 {
        draw::text(&mut img, lx, top + 24 * 12, &format!("+{} more", shown.len() - 24), 1, ink);
    }
    img
}

/// Per-category counts for the card.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CategoryStats {
    /// Images whose prompt named the category (generated datasets).
    pub prompted: usize,
    /// Images with at least one box of the category.
    pub images: usize,
    pub boxes: usize,
    pub scores: Vec<f64>,
    pub sizes: Vec<f64>,
}

pub fn category_stats(v: &Views) -> Vec<CategoryStats> {
    let mut st = vec![CategoryStats::default(); v.categories.len()];
    for im in &v.images {
        let mut seen = vec![false; v.categories.len()];
        for &p in &im.prompted {
            st[p].prompted += 1;
        }
        for b in &im.boxes {
            let s = &mut st[b.cat];
            s.boxes += 1;
            if !std::mem::replace(&mut seen[b.cat], true) {
                s.images += 1;
            }
            s.scores.extend(b.score);
            s.sizes.push((b.bbox[2] * b.bbox[3]).max(0.0).sqrt());
        }
    }
    for s in &mut st {
        s.scores.sort_by(f64::total_cmp);
        s.sizes.sort_by(f64::total_cmp);
    }
    st
}

fn fmt_opt(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "-".into() }
}

/// The card's Markdown.
pub fn render(v: &Views, hist: &SizeHistogram) -> String {
    let mut s = String::new();
    let name = files::canonical(&v.dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let boxes = v.boxes();
    let empty = v.images.iter().filter(|im| im.boxes.is_empty()).count();
    let max_per = v.images.iter().map(|im| im.boxes.len()).max().unwrap_or(0);
    let _ = writeln!(s, "# Dataset card: {}\n", md(&name));
    let _ = writeln!(
        s,
        "Written by `instagen views` {} from `{}`. Browse it in [index.html](index.html); contact sheets are in `contact/`.\n",
        env!("CARGO_PKG_VERSION"),
        md(&v.instances.display().to_string())
    );
    let _ = writeln!(s, "## Summary\n\n| | |\n|---|---|");
    let _ = writeln!(s, "| images | {} |", v.images.len());
    let _ = writeln!(s, "| boxes | {boxes} |");
    let _ = writeln!(s, "| categories | {} |", v.categories.len());
    let _ = writeln!(s, "| images without boxes | {empty} |");
    let mean = if v.images.is_empty() { f64::NAN } else { boxes as f64 / v.images.len() as f64 };
    let _ = writeln!(s, "| boxes per image | mean {}, max {max_per} |", fmt_opt(mean, 2));
    let mut sizes: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    for im in &v.images {
        *sizes.entry((im.width, im.height)).or_default() += 1;
    }
    let mut sizes: Vec<_> = sizes.into_iter().collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = sizes.iter().take(5).map(|((w, h), n)| format!("{w}x{h}: {n}")).collect();
    let more = if sizes.len() > 5 { format!(" (+{} more sizes)", sizes.len() - 5) } else { String::new() };
    let _ = writeln!(s, "| image sizes | {}{more} |\n", list.join(", "));

    let st = category_stats(v);
    let any_prompted = st.iter().any(|c| c.prompted > 0);
    let _ = writeln!(s, "## Per category\n");
    let _ = writeln!(
        s,
        "| category | {}images with boxes | boxes | mean score | median box size (px) |\n|---|{}---|---|---|---|",
        if any_prompted { "prompted in | " } else { "" },
        if any_prompted { "---|" } else { "" }
    );
    for (name, c) in v.categories.iter().zip(&st) {
        let mean = if c.scores.is_empty() { f64::NAN } else { c.scores.iter().sum::<f64>() / c.scores.len() as f64 };
        let prompted = if any_prompted { format!("{} | ", c.prompted) } else { String::new() };
        let _ = writeln!(
            s,
            "| {} | {prompted}{} | {} | {} | {} |",
            md(name),
            c.images,
            c.boxes,
            fmt_opt(mean, 3),
            fmt_opt(quantile(&c.sizes, 0.5), 1)
        );
    }

    let mut scores: Vec<f64> = st.iter().flat_map(|c| c.scores.iter().copied()).collect();
    scores.sort_by(f64::total_cmp);
    let _ = writeln!(s, "\n## Scores\n");
    if scores.is_empty() {
        let _ = writeln!(s, "No box has a score (human annotations).");
    } else {
        let q: Vec<String> = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0].iter().map(|&p| format!("{:.3}", quantile(&scores, p))).collect();
        let _ = writeln!(
            s,
            "{} scored boxes{}. min / p10 / p25 / median / p75 / p90 / max: {}\n",
            scores.len(),
            if scores.len() < boxes { format!(" ({} without a score)", boxes - scores.len()) } else { String::new() },
            q.join(" / ")
        );
        let _ = writeln!(s, "| score | boxes |\n|---|---|");
        for k in 0..10 {
            let (a, b) = (k as f64 / 10.0, (k + 1) as f64 / 10.0);
            let n = scores.iter().filter(|&&x| x >= a && (x < b || (k == 9 && x <= b))).count();
            let _ = writeln!(s, "| [{a:.1}, {b:.1}{} | {n} |", if k == 9 { "]" } else { ")" });
        }
    }

    let _ = writeln!(s, "\n## Box sizes\n\n![box sizes](card/box_sizes.png)\n");
    let all_sizes: Vec<f64> = st.iter().flat_map(|c| c.sizes.iter().copied()).collect();
    let (small, medium) = (all_sizes.iter().filter(|&&x| x < 32.0).count(), all_sizes.iter().filter(|&&x| (32.0..96.0).contains(&x)).count());
    let _ = writeln!(
        s,
        "COCO area ranges: small (< 32^2) {small}, medium {medium}, large (>= 96^2) {}.\n",
        all_sizes.len() - small - medium
    );
    if !hist.counts.is_empty() {
        let _ = writeln!(s, "| sqrt(area), px | boxes |\n|---|---|");
        for b in 0..hist.counts.len() {
            let (lo, hi) = hist.edges(b);
            let _ = writeln!(s, "| [{lo:.1}, {hi:.1}) | {} |", hist.total(b));
        }
    }

    let _ = writeln!(s, "\n## How it was made\n");
    match &v.manifest {
        None => {
            let _ = writeln!(s, "No `generate.json` in the folder: not written by `instagen generate`, or its manifest is missing.");
        }
        Some(m) => {
            if let Some(cmd) = m.get("command").and_then(Value::as_str) {
                let _ = writeln!(s, "Command:\n\n{}", code_block(cmd));
            }
            let _ = writeln!(s, "| field | value |\n|---|---|");
            for key in ["format", "instagen_version", "total_images", "shard", "merged_from"] {
                if let Some(val) = m.get(key) {
                    let _ = writeln!(s, "| {key} | {} |", md(&compact(val)));
                }
            }
            if let Some(set) = m.get("settings").and_then(Value::as_object) {
                let _ = writeln!(s, "\nSettings:\n\n| setting | value |\n|---|---|");
                for (k, val) in set {
                    let _ = writeln!(s, "| {} | {} |", md(k), md(&compact(val)));
                }
            }
        }
    }
    s
}

/// A JSON value as one line (strings without their quotes).
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Writes `card.md` and `card/box_sizes.png`.
pub fn write_card(v: &Views) -> Result<(PathBuf, PathBuf)> {
    let hist = SizeHistogram::new(v);
    let dir = v.dir.join("card");
    make_dir(&dir)?;
    let png = dir.join("box_sizes.png");
    let mut buf = Vec::new();
    draw_histogram(&hist, v)
        .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("{}: cannot encode: {e}", png.display())))?;
    files::write_atomic(&png, &buf).map_err(|e| Error::io(&png, e))?;
    let card = v.dir.join("card.md");
    files::write_atomic(&card, render(v, &hist).as_bytes()).map_err(|e| Error::io(&card, e))?;
    Ok((card, png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_escaped_and_fences_hold() {
        assert_eq!(md("a|b <script> *x*\n"), "a\\|b &lt;script&gt; \\*x\\* ");
        let b = code_block("echo ```x```");
        assert!(b.starts_with("````\n") && b.ends_with("\n````\n"), "{b}");
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }
}
