//! Drawing on RGB images: filled and outlined rectangles clipped to the image, text in the bitmap font with a
//! coloured label background, and the category palette.

use image::{Rgb, RgbImage};

use super::font;

/// Twelve well-separated colours; category `i` gets `PALETTE[i % 12]` for its first round, then hues spaced by
/// the golden angle (so colours never run out).
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [0, 128, 128],
    [170, 110, 40],
    [128, 0, 0],
];

/// The colour of the category at position `i` of the dataset's category list.
pub fn category_colour(i: usize) -> [u8; 3] {
    if i < PALETTE.len() {
        return PALETTE[i];
    }
    let hue = (i as f64 * 0.618_033_988_75).fract() * 6.0;
    let (sector, f) = (hue.floor() as u32, hue.fract());
    // Saturated, bright enough to read on photos: s = 0.85, v = 0.95.
    let (v, s) = (0.95, 0.85);
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match sector {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [(r * 255.0).round() as u8, (g * 255.0).round() as u8, (b * 255.0).round() as u8]
}

/// `#rrggbb`.
pub fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Black or white, whichever reads better on `bg`.
pub fn text_colour_on(bg: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * bg[0] as f32 + 0.587 * bg[1] as f32 + 0.114 * bg[2] as f32;
    if luma > 140.0 { [0, 0, 0] } else { [255, 255, 255] }
}

/// Fills the rectangle [x0, x1) x [y0, y1) (clipped to the image).
pub fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }
}

/// The outline of [x0, x1) x [y0, y1), `t` pixels thick, drawn inside the rectangle.
pub fn outline_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, t: i64, c: [u8; 3]) {
    let t = t.max(1);
    fill_rect(img, x0, y0, x1, (y0 + t).min(y1), c);
    fill_rect(img, x0, (y1 - t).max(y0), x1, y1, c);
    fill_rect(img, x0, y0, (x0 + t).min(x1), y1, c);
    fill_rect(img, (x1 - t).max(x0), y0, x1, y1, c);
}

/// Draws `text` with its top-left corner at (x, y) (clipped to the image).
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: u32, c: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    font::for_each_ink(s, scale, |dx, dy| {
        let (px, py) = (x + dx as i64, y + dy as i64);
        if (0..w).contains(&px) && (0..h).contains(&py) {
            img.put_pixel(px as u32, py as u32, Rgb(c));
        }
    });
}

/// `s` cut to at most `max_px` pixels wide at `scale`, ending in `~` when cut.
pub fn fit_text(s: &str, scale: u32, max_px: u32) -> String {
    if font::text_width(s, scale) <= max_px {
        return s.to_string();
    }
    let fits = ((max_px / scale + 1) / font::ADVANCE) as usize;
    if fits == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(fits - 1).collect();
    out.push('~');
    out
}

/// A label: `s` on a filled `bg` background, its top-left at (x, y), kept inside `[lo_x, hi_x)` horizontally
/// when it fits. Returns the label's height.
pub fn label(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: u32, bg: [u8; 3], hi_x: i64) -> i64 {
    let w = font::text_width(s, scale) as i64 + 2 * scale as i64;
    let h = (font::GLYPH_H + 2) as i64 * scale as i64;
    let x = if x + w > hi_x { (hi_x - w).max(0) } else { x };
    fill_rect(img, x, y, x + w, y + h, bg);
    text(img, x + scale as i64, y + scale as i64, s, scale, text_colour_on(bg));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_distinct_and_outlines_stay_inside() {
        let cs: std::collections::HashSet<_> = (0..64).map(category_colour).collect();
        assert_eq!(cs.len(), 64);
        assert_eq!(hex([255, 0, 16]), "#ff0010");
        let mut img = RgbImage::new(10, 10);
        outline_rect(&mut img, 2, 3, 8, 9, 2, [9, 9, 9]);
        assert_eq!(img.get_pixel(2, 3).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(7, 8).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(3, 4).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(4, 5).0, [0, 0, 0]); // the inside stays
        assert_eq!(img.get_pixel(8, 8).0, [0, 0, 0]); // x1 is exclusive
        outline_rect(&mut img, -5, -5, 50, 50, 1, [1, 1, 1]); // clipped, no panic
        assert_eq!(fit_text("abcdefgh", 1, 17), "ab~");
        assert_eq!(fit_text("abc", 1, 17), "abc");
    }
}
