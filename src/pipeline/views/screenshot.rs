//! The browser screenshot check: given a PNG screenshot of `index.html` and the layout the page reported for the
//! same window (`index.html#layout` dumped with `--dump-dom`: a `<pre id="layout">` holding
//! `{"width", "height", "border", "boxes": [{"x", "y", "w", "h", "c": "#rrggbb"}]}` in CSS pixels), checks that
//! the screenshot shows each box that lies wholly inside it: the pixels one pixel inside each of its four edges
//! (where its border is) have its category colour. Edge pixels that a box drawn later (on top, in page order)
//! covers with its border or its `name score` label are left out; a box with fewer than [`MIN_SAMPLES`] pixels
//! left is counted as occluded, not checked. `tools/browser_screenshot.sh` makes both files and runs this.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::util::files;
use crate::{Error, Result};

/// Per-channel tolerance when comparing a pixel with a box colour.
pub const TOLERANCE: i32 = 24;
/// A box counts as shown when at least this fraction of its edge samples has its colour.
pub const BOX_MIN_FRACTION: f64 = 0.75;
/// The check passes when at least this fraction of the boxes inside the screenshot are shown.
pub const MIN_SHOWN: f64 = 0.9;
/// A box with fewer uncovered edge samples than this is occluded (not checked).
pub const MIN_SAMPLES: usize = 8;
/// The label of a box (10 px monospace `name score`, 12 px tall, at the top left inside the border) is taken to
/// cover at most this many CSS pixels to the right of the box's left edge (about 25 characters).
pub const LABEL_MAX_W: f64 = 160.0;
/// The label's height in CSS pixels (its line height).
pub const LABEL_H: f64 = 12.0;

#[derive(Clone, Debug, Deserialize)]
pub struct LayoutBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub c: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub border: f64,
    pub boxes: Vec<LayoutBox>,
}

/// What the check saw.
#[derive(Clone, Debug)]
pub struct ScreenshotCheck {
    pub width: u32,
    pub height: u32,
    /// Boxes the page drew, boxes wholly inside the screenshot (and not occluded), and those found in the pixels.
    pub drawn: usize,
    pub inside: usize,
    /// Boxes inside the screenshot whose edges are (almost) all under boxes or labels drawn later.
    pub occluded: usize,
    pub shown: usize,
    /// Distinct box colours found.
    pub colours: usize,
    /// Fraction of all edge samples that matched.
    pub sample_fraction: f64,
}

impl ScreenshotCheck {
    pub fn passed(&self) -> bool {
        self.inside > 0 && self.shown as f64 >= MIN_SHOWN * self.inside as f64
    }
}

impl fmt::Display for ScreenshotCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "screenshot {}x{}: the page drew {} boxes, {} lie wholly inside the screenshot and are not covered by later \
             boxes ({} are), {} of them are visible in their category colour ({} colours; {:.1}% of uncovered edge \
             samples matched): {}",
            self.width,
            self.height,
            self.drawn,
            self.inside,
            self.occluded,
            self.shown,
            self.colours,
            100.0 * self.sample_fraction,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// The layout JSON from a `--dump-dom` of `index.html#layout` (or the bare JSON).
pub fn parse_layout(text: &str, path: &Path) -> Result<Layout> {
    let json = match text.find("id=\"layout\"") {
        Some(at) => {
            let rest = &text[at..];
            let open = rest.find('>').ok_or_else(|| Error::Other(format!("{}: unterminated <pre id=\"layout\">", path.display())))?;
            let body = &rest[open + 1..];
            let close = body.find("</pre>").ok_or_else(|| Error::Other(format!("{}: no </pre> after the layout", path.display())))?;
            body[..close].replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        }
        None => text.to_string(),
    };
    if json.trim().is_empty() {
        return Err(Error::Other(format!(
            "{}: the layout is empty (open the page as index.html#layout, with JavaScript on)",
            path.display()
        )));
    }
    crate::util::json::from_object(&json).map_err(|e| Error::Other(format!("{}: layout: {e}", path.display())))
}

fn parse_hex(c: &str) -> Option<[u8; 3]> {
    let h = c.strip_prefix('#')?;
    if h.len() != 6 {
        return None;
    }
    let v = u32::from_str_radix(h, 16).ok()?;
    Some([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

/// Checks the screenshot `png` against the layout in `layout` (a DOM dump or the JSON itself).
pub fn check(png: &Path, layout: &Path) -> Result<ScreenshotCheck> {
    let text = files::read_text(layout, Some(files::DATA_JSON_MAX_BYTES)).map_err(|e| Error::io(layout, e))?;
    let lay = parse_layout(&text, layout)?;
    let img = image::open(png).map_err(|e| Error::Other(format!("{}: cannot read the screenshot: {e}", png.display())))?.to_rgb8();
    check_image(&img, &lay)
}

/// [`check`] on a decoded screenshot.
pub fn check_image(img: &image::RgbImage, lay: &Layout) -> Result<ScreenshotCheck> {
    let (w, h) = img.dimensions();
    // A screenshot at another device scale than the layout's CSS pixels is scaled back.
    let k = if lay.width > 0.0 { w as f64 / lay.width } else { 1.0 };
    let (mut inside, mut occluded, mut shown, mut hits, mut samples) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut colours = std::collections::HashSet::new();
    // Screen rectangles (pixels) of each box's border band and label, for the occlusion test.
    let bw = lay.border.max(1.0) * k;
    let rects: Vec<(f64, f64, f64, f64)> = lay.boxes.iter().map(|b| (b.x * k, b.y * k, (b.x + b.w) * k, (b.y + b.h) * k)).collect();
    let covered_by = |j: usize, x: f64, y: f64| -> bool {
        let (x0, y0, x1, y1) = rects[j];
        let in_outer = x >= x0 - 1.0 && x <= x1 + 1.0 && y >= y0 - 1.0 && y <= y1 + 1.0;
        let in_inner = x > x0 + bw + 1.0 && x < x1 - bw - 1.0 && y > y0 + bw + 1.0 && y < y1 - bw - 1.0;
        let in_label = x >= x0 - 1.0 && x <= x0 + bw + LABEL_MAX_W * k && y >= y0 - 1.0 && y <= y0 + bw + LABEL_H * k + 1.0;
        (in_outer && !in_inner) || in_label
    };
    for (i, b) in lay.boxes.iter().enumerate() {
        let c = parse_hex(&b.c).ok_or_else(|| Error::Other(format!("layout: box colour '{}' is not #rrggbb", b.c)))?;
        let (x0, y0, x1, y1) = (b.x * k, b.y * k, (b.x + b.w) * k, (b.y + b.h) * k);
        if x0 < 0.0 || y0 < 0.0 || x1 > w as f64 || y1 > h as f64 || b.w * k < 8.0 || b.h * k < 8.0 {
            continue;
        }
        inside += 1;
        // The pixel column/row wholly inside each border line (borders are >= 2 CSS pixels wide).
        let (xl, xr) = (x0.floor() as i64 + 1, x1.ceil() as i64 - 2);
        let (yt, yb) = (y0.floor() as i64 + 1, y1.ceil() as i64 - 2);
        let mut pts = Vec::new();
        for x in (xl + 3..=xr - 3).step_by(2) {
            pts.push((x, yt));
            pts.push((x, yb));
        }
        for y in (yt + 3..=yb - 3).step_by(2) {
            pts.push((xl, y));
            pts.push((xr, y));
        }
        // Edge pixels under a later box's border or label show that box, not this one.
        pts.retain(|&(x, y)| !(i + 1..rects.len()).any(|j| covered_by(j, x as f64 + 0.5, y as f64 + 0.5)));
        if pts.len() < MIN_SAMPLES {
            inside -= 1;
            occluded += 1;
            continue;
        }
        let matched = pts
            .iter()
            .filter(|&&(x, y)| {
                let p = img.get_pixel(x as u32, y as u32).0;
                (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= TOLERANCE)
            })
            .count();
        hits += matched;
        samples += pts.len();
        if !pts.is_empty() && matched as f64 >= BOX_MIN_FRACTION * pts.len() as f64 {
            shown += 1;
            colours.insert(c);
        }
    }
    Ok(ScreenshotCheck {
        width: w,
        height: h,
        drawn: lay.boxes.len(),
        inside,
        occluded,
        shown,
        colours: colours.len(),
        sample_fraction: if samples == 0 { 0.0 } else { hits as f64 / samples as f64 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::views::draw;

    #[test]
    fn finds_drawn_boxes_and_fails_without_them() {
        let mut img = image::RgbImage::from_pixel(200, 100, image::Rgb([90, 90, 90]));
        let lay = parse_layout(
            r##"<html><pre id="layout" hidden="">{"width":200,"height":100,"border":2,"boxes":[
               {"x":10.4,"y":20.6,"w":50.5,"h":30.2,"c":"#e6194b"},{"x":100,"y":10,"w":60,"h":60,"c":"#3cb44b"},
               {"x":190,"y":90,"w":40,"h":40,"c":"#3cb44b"}]}</pre>"##,
            Path::new("dump.html"),
        )
        .unwrap();
        let before = check_image(&img, &lay).unwrap();
        assert_eq!((before.drawn, before.inside, before.shown), (3, 2, 0));
        assert!(!before.passed());
        // Draw the borders as a browser would: 2 pixels wide, covering [x, x + 2) from the box's edge.
        for b in &lay.boxes[..2] {
            let c = parse_hex(&b.c).unwrap();
            let (x0, y0, x1, y1) = (b.x.round() as i64, b.y.round() as i64, (b.x + b.w).round() as i64, (b.y + b.h).round() as i64);
            draw::outline_rect(&mut img, x0, y0, x1, y1, 2, c);
        }
        let after = check_image(&img, &lay).unwrap();
        assert_eq!((after.inside, after.shown, after.colours), (2, 2, 2), "{after}");
        assert!(after.passed());
        assert!(parse_layout("<pre id=\"layout\" hidden=\"\"></pre>", Path::new("d")).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn edges_under_later_boxes_are_left_out() {
        // A (red) drawn first, B (green) on top overlapping two thirds of A's top and bottom edges, C (blue) drawn
        // exactly under D (yellow): C's edges are all covered.
        let mut img = image::RgbImage::from_pixel(300, 120, image::Rgb([90, 90, 90]));
        let lay = parse_layout(
            r##"{"width":300,"height":120,"border":2,"boxes":[
               {"x":10,"y":30,"w":60,"h":60,"c":"#e6194b"},{"x":30,"y":30,"w":60,"h":60,"c":"#3cb44b"},
               {"x":150,"y":30,"w":50,"h":50,"c":"#4363d8"},{"x":150,"y":30,"w":50,"h":50,"c":"#ffe119"}]}"##,
            Path::new("layout.json"),
        )
        .unwrap();
        for b in &lay.boxes {
            let c = parse_hex(&b.c).unwrap();
            let (x0, y0, x1, y1) = (b.x as i64, b.y as i64, (b.x + b.w) as i64, (b.y + b.h) as i64);
            draw::outline_rect(&mut img, x0, y0, x1, y1, 2, c);
        }
        let r = check_image(&img, &lay).unwrap();
        assert_eq!((r.drawn, r.inside, r.occluded, r.shown), (4, 3, 1, 3), "{r}");
        assert!(r.passed());
        // Without B on top A's uncovered edges must still be red: paint them grey and A is no longer shown.
        let a = &lay.boxes[0];
        draw::outline_rect(&mut img, a.x as i64, a.y as i64, 30, (a.y + a.h) as i64, 2, [90, 90, 90]);
        let r = check_image(&img, &lay).unwrap();
        assert_eq!((r.inside, r.shown), (3, 2), "{r}");
    }
}
