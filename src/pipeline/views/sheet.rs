//! Contact sheets and thumbnails: one pass over the images (each decoded once, sheets in parallel) writes
//! `contact/sheet_{k:04}.png` (8 x 8 cells of `cell` pixels with a `GAP`-pixel gutter; each image scaled to fit
//! its cell, its boxes outlined in their category colour with a `name score` label, its index at the bottom
//! left) and `thumbs/{position:08}.jpg`.

use std::io::Cursor;
use std::path::PathBuf;

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use super::{PER_SHEET, SHEET_COLS, ViewOptions, Views, draw, font, make_dir, remove_stale};
use crate::util::files;
use crate::{Error, Result};

/// Gutter between cells and around the sheet, in pixels.
pub const GAP: u32 = 4;
/// Gutter colour and the colour of a cell where the image does not reach (letterbox).
pub const GUTTER: [u8; 3] = [24, 24, 24];
pub const CELL_BG: [u8; 3] = [56, 56, 56];

/// Width and height of a sheet with cells of side `cell` (always the full 8 x 8 grid).
pub fn sheet_size(cell: u32) -> (u32, u32) {
    let side = SHEET_COLS as u32 * (cell + GAP) + GAP;
    (side, side)
}

/// Top-left corner of cell `i` (0..64, row-major) of a sheet.
pub fn cell_origin(cell: u32, i: usize) -> (u32, u32) {
    let (col, row) = ((i % SHEET_COLS) as u32, (i / SHEET_COLS) as u32);
    (GAP + col * (cell + GAP), GAP + row * (cell + GAP))
}

/// The size of a `w` x `h` image scaled to fit a `side` x `side` square (aspect kept, at least 1 pixel).
pub fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    let s = side as f64 / w.max(h).max(1) as f64;
    (((w as f64 * s).round() as u32).clamp(1, side), ((h as f64 * s).round() as u32).clamp(1, side))
}

/// Where an image of `w` x `h` sits inside its cell (offset from the cell's corner, and its drawn size).
pub fn placement(cell: u32, w: u32, h: u32) -> (u32, u32, u32, u32) {
    let (dw, dh) = fit(w, h, cell);
    ((cell - dw) / 2, (cell - dh) / 2, dw, dh)
}

/// The outline rectangle `[x0, y0, x1, y1)` (sheet pixels) of COCO box `bbox` of a `w` x `h` image in cell `i`.
pub fn box_rect(cell: u32, i: usize, w: u32, h: u32, bbox: [f64; 4]) -> [i64; 4] {
    let (cx, cy) = cell_origin(cell, i);
    let (ox, oy, dw, dh) = placement(cell, w, h);
    let (sx, sy) = (dw as f64 / w.max(1) as f64, dh as f64 / h.max(1) as f64);
    let (x0, y0) = ((cx + ox) as f64, (cy + oy) as f64);
    let r = |v: f64| v.round() as i64;
    let rect = [r(x0 + bbox[0] * sx), r(y0 + bbox[1] * sy), r(x0 + (bbox[0] + bbox[2]) * sx), r(y0 + (bbox[1] + bbox[3]) * sy)];
    // At least 2 pixels each way, so a tiny box stays visible.
    [rect[0], rect[1], rect[2].max(rect[0] + 2), rect[3].max(rect[1] + 2)]
}

/// Outline thickness and text scale for a cell side.
pub fn line_and_scale(cell: u32) -> (i64, u32) {
    ((cell as i64 / 96).max(2), if cell >= 384 { 2 } else { 1 })
}

/// The thumbnail of the image at position `pos`, relative to the dataset folder.
pub fn thumb_name(pos: usize) -> String {
    format!("thumbs/{pos:08}.jpg")
}

/// `score` as a label shows it: two decimals, nothing when absent.
pub fn score_text(score: Option<f64>) -> String {
    score.map(|s| format!(" {s:.2}")).unwrap_or_default()
}

/// Decodes an image of the dataset as RGB and checks its size against the instances file.
fn decode(v: &Views, im: &super::ImageView) -> Result<RgbImage> {
    let path = v.image_path(im);
    let img = image::ImageReader::open(&path)
        .map_err(|e| Error::io(&path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(&path, e))?
        .decode()
        .map_err(|e| Error::Other(format!("{}: cannot decode the image: {e}", path.display())))?
        .to_rgb8();
    if img.dimensions() != (im.width, im.height) {
        return Err(Error::Other(format!(
            "{}: the image is {}x{} but {} says {}x{} for '{}'",
            path.display(),
            img.width(),
            img.height(),
            v.instances.display(),
            im.width,
            im.height,
            im.file_name
        )));
    }
    Ok(img)
}

fn encode(img: &RgbImage, format: image::ImageFormat, path: &std::path::Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match format {
        image::ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85).encode_image(img),
        _ => img.write_to(&mut Cursor::new(&mut buf), format),
    }
    .map_err(|e| Error::Other(format!("{}: cannot encode: {e}", path.display())))?;
    Ok(buf)
}

/// Draws the image at position `pos` with its boxes into cell `i` of `sheet`, and writes its thumbnail.
fn draw_cell(v: &Views, o: &ViewOptions, sheet: &mut RgbImage, pos: usize, i: usize) -> Result<()> {
    let im = &v.images[pos];
    let img = decode(v, im)?;
    let (tw, th) = fit(im.width, im.height, o.thumb.min(im.width.max(im.height)));
    let thumb = image::imageops::resize(&img, tw, th, FilterType::Triangle);
    let tpath = v.dir.join(thumb_name(pos));
    files::write_atomic(&tpath, &encode(&thumb, image::ImageFormat::Jpeg, &tpath)?).map_err(|e| Error::io(&tpath, e))?;

    let (cx, cy) = cell_origin(o.cell, i);
    draw::fill_rect(sheet, cx as i64, cy as i64, (cx + o.cell) as i64, (cy + o.cell) as i64, CELL_BG);
    let (ox, oy, dw, dh) = placement(o.cell, im.width, im.height);
    let scaled = image::imageops::resize(&img, dw, dh, FilterType::Triangle);
    image::imageops::replace(sheet, &scaled, (cx + ox) as i64, (cy + oy) as i64);
    let (line, scale) = line_and_scale(o.cell);
    let right = (cx + o.cell) as i64;
    // Lowest score first, so the best box and its label end up on top.
    for b in im.boxes.iter().rev() {
        let r = box_rect(o.cell, i, im.width, im.height, b.bbox);
        draw::outline_rect(sheet, r[0], r[1], r[2], r[3], line, draw::category_colour(b.cat));
    }
    let max_label = o.cell - 2 * scale;
    for b in im.boxes.iter().rev() {
        let r = box_rect(o.cell, i, im.width, im.height, b.bbox);
        let text = draw::fit_text(&format!("{}{}", v.categories[b.cat], score_text(b.score)), scale, max_label);
        draw::label(sheet, r[0] + line, r[1] + line, &text, scale, draw::category_colour(b.cat), right);
    }
    let caption = format!("{}", im.index);
    let ch = ((font::GLYPH_H + 2) * scale) as i64;
    draw::label(sheet, cx as i64, (cy + o.cell) as i64 - ch, &caption, scale, GUTTER, right);
    Ok(())
}

/// Writes contact sheet `k`.
fn write_sheet(v: &Views, o: &ViewOptions, k: usize) -> Result<PathBuf> {
    let (w, h) = sheet_size(o.cell);
    let mut sheet = RgbImage::from_pixel(w, h, Rgb(GUTTER));
    let end = ((k + 1) * PER_SHEET).min(v.images.len());
    for pos in k * PER_SHEET..end {
        draw_cell(v, o, &mut sheet, pos, pos - k * PER_SHEET)?;
    }
    let path = v.dir.join(format!("contact/sheet_{k:04}.png"));
    files::write_atomic(&path, &encode(&sheet, image::ImageFormat::Png, &path)?).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Writes every contact sheet and thumbnail (sheets in parallel); returns the sheets and the thumbnail count.
pub fn write_sheets_and_thumbs(v: &Views, o: &ViewOptions) -> Result<(Vec<PathBuf>, usize)> {
    let (contact, thumbs) = (v.dir.join("contact"), v.dir.join("thumbs"));
    make_dir(&contact)?;
    make_dir(&thumbs)?;
    let n = v.images.len();
    let sheets = n.div_ceil(PER_SHEET);
    let paths = (0..sheets).into_par_iter().map(|k| write_sheet(v, o, k)).collect::<Result<Vec<_>>>()?;
    remove_stale(&contact, "sheet_", ".png", sheets)?;
    remove_stale(&thumbs, "", ".jpg", n)?;
    Ok((paths, n))
}
