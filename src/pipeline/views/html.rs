//! `index.html`: a static, self-contained dataset browser (no network, no external files but the thumbnails).
//! The data are inline as JSON in a `<script type="application/json">` (file:// pages cannot fetch), with `<`,
//! `>` and `&` written as `\u003c` etc. so no name or prompt can close the script; names in the HTML itself are
//! escaped, and the script puts every string into the page with `textContent`, never as markup.
//!
//! The page shows one page of thumbnails at a time (so thousands of images stay fast) with their boxes as
//! absolutely positioned outlines in the category colour and `name score` labels; category checkboxes, a score
//! slider (boxes below it are hidden) and "only images with shown boxes" filter; the counts say what is shown.
//! Opened as `index.html#layout`, the page also writes the screen rectangles and colours of the boxes it drew
//! into `<pre id="layout">` (read by `tools/browser_screenshot.sh` through `--dump-dom` for the screenshot check).

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ViewOptions, Views, draw, relative_path, sheet::thumb_name};
use crate::util::files;
use crate::{Error, Result};

/// Display side of a thumbnail cell in the page, CSS pixels.
pub const CELL_PX: u32 = 240;
/// Box outline width in the page, CSS pixels.
pub const BORDER_PX: u32 = 2;

/// `s` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON text safe inside a `<script>` element: `<`, `>` and `&` (which can only occur inside strings) written as
/// unicode escapes.
pub fn script_json(v: &Value) -> String {
    let s = v.to_string();
    s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// The data the page script reads.
pub fn page_data(v: &Views, o: &ViewOptions) -> Value {
    let mut cat_images = vec![0usize; v.categories.len()];
    let mut cat_boxes = vec![0usize; v.categories.len()];
    for im in &v.images {
        let mut seen = vec![false; v.categories.len()];
        for b in &im.boxes {
            cat_boxes[b.cat] += 1;
            if !std::mem::replace(&mut seen[b.cat], true) {
                cat_images[b.cat] += 1;
            }
        }
    }
    let categories: Vec<Value> = v
        .categories
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = draw::category_colour(i);
            json!({"name": n, "colour": draw::hex(c), "tc": draw::hex(draw::text_colour_on(c)),
                   "images": cat_images[i], "boxes": cat_boxes[i]})
        })
        .collect();
    let images: Vec<Value> = v
        .images
        .iter()
        .enumerate()
        .map(|(pos, im)| {
            let full = relative_path(&v.image_path(im), &v.dir).map(|p| p.to_string_lossy().into_owned());
            let boxes: Vec<Value> = im
                .boxes
                .iter()
                .map(|b| {
                    json!([b.cat, round(b.bbox[0], 1), round(b.bbox[1], 1), round(b.bbox[2], 1), round(b.bbox[3], 1),
                           b.score.map(|s| round(s, 3))])
                })
                .collect();
            json!({"i": im.index, "f": full, "t": thumb_name(pos), "w": im.width, "h": im.height, "p": im.prompt, "b": boxes})
        })
        .collect();
    json!({"cell": CELL_PX, "border": BORDER_PX, "page": o.page, "nboxes": v.boxes(), "categories": categories, "images": images})
}

/// The title of the page: the dataset folder's name.
fn title(v: &Views) -> String {
    let dir = files::canonical(&v.dir);
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
}

/// Writes `DIR/index.html`.
pub fn write_index(v: &Views, o: &ViewOptions) -> Result<PathBuf> {
    let path = v.dir.join("index.html");
    files::write_atomic(&path, render(v, o).as_bytes()).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The page.
pub fn render(v: &Views, o: &ViewOptions) -> String {
    let data = page_data(v, o);
    let mut cats = String::new();
    for (i, c) in data["categories"].as_array().into_iter().flatten().enumerate() {
        cats.push_str(&format!(
            "<label><input type=\"checkbox\" data-i=\"{i}\" checked><span class=\"sw\" style=\"background:{}\"></span>{} <span class=\"n\">({} img, {} boxes)</span></label>\n",
            c["colour"].as_str().unwrap_or("#888"),
            escape(c["name"].as_str().unwrap_or("")),
            c["images"],
            c["boxes"],
        ));
    }
    let t = escape(&title(v));
    let s = CELL_PX;
    let css = format!(
        "body{{margin:0;font:14px/1.35 sans-serif;background:#1e1e1e;color:#ddd}}\
header{{padding:8px 12px;background:#2b2b2b}}h1{{font-size:17px;margin:0 0 6px}}\
#cats{{max-height:96px;overflow:auto;margin:4px 0}}#cats label{{display:inline-block;margin:1px 10px 1px 0;white-space:nowrap}}\
.sw{{display:inline-block;width:11px;height:11px;margin:0 4px;vertical-align:-1px}}.n{{color:#999;font-size:12px}}\
.bar>*{{margin-right:10px}}button{{font:inherit}}\
#grid{{display:flex;flex-wrap:wrap;gap:8px;padding:8px}}.cell{{width:{s}px}}\
.frame{{width:{s}px;height:{s}px;background:#383838;display:flex;align-items:center;justify-content:center}}\
.pic{{position:relative;display:block;overflow:visible}}.pic img{{display:block;width:100%;height:100%}}\
.box{{position:absolute;box-sizing:border-box;border:{BORDER_PX}px solid}}\
.lab{{position:absolute;left:0;top:0;font:10px/12px monospace;padding:0 2px;white-space:nowrap}}\
.cap{{font-size:11px;color:#aaa;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}}"
    );
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body>
<header><h1>{t}</h1>
<div class="bar"><span id="counts"></span>
<label>min score <input id="score" type="range" min="0" max="1" step="0.01" value="0"> <span id="scoreval">0.00</span></label>
<label><input id="hide" type="checkbox"> only images with shown boxes</label>
<button id="all">all categories</button><button id="none">none</button>
<button id="prev">&larr;</button><span id="pageinfo"></span><button id="next">&rarr;</button></div>
<div id="cats">
{cats}</div></header>
<div id="grid"></div>
<pre id="layout" hidden></pre>
<script type="application/json" id="data">{data}</script>
<script>{JS}</script>
</body></html>
"#,
        data = script_json(&data),
    )
}

const JS: &str = r##"
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const cats = D.categories;
  const boxes = document.querySelectorAll("#cats input");
  let minScore = 0, page = 0;
  const on = () => Array.from(boxes, (b) => b.checked);
  const visible = (b, o) => o[b[0]] && (b[5] === null || b[5] >= minScore);
  boxes.forEach((b) => (b.onchange = () => { page = 0; render(); }));
  $("all").onclick = () => { boxes.forEach((b) => (b.checked = true)); page = 0; render(); };
  $("none").onclick = () => { boxes.forEach((b) => (b.checked = false)); page = 0; render(); };
  $("hide").onchange = () => { page = 0; render(); };
  $("score").oninput = (e) => { minScore = +e.target.value; $("scoreval").textContent = minScore.toFixed(2); render(); };
  $("prev").onclick = () => { if (page > 0) { page--; render(); } };
  $("next").onclick = () => { page++; render(); };
  document.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") $("prev").click();
    if (e.key === "ArrowRight") $("next").click();
  });

  function render() {
    const o = on();
    const every = o.every((x) => x);
    const hide = $("hide").checked;
    const shown = [];
    let nb = 0;
    for (const im of D.images) {
      const vb = im.b.filter((b) => visible(b, o));
      if (vb.length > 0 || (every && !hide)) { shown.push([im, vb]); nb += vb.length; }
    }
    const pages = Math.max(1, Math.ceil(shown.length / D.page));
    page = Math.min(page, pages - 1);
    $("counts").textContent = shown.length + " of " + D.images.length + " images, " + nb + " of " + D.nboxes + " boxes shown";
    $("pageinfo").textContent = "page " + (page + 1) + " of " + pages;
    const grid = $("grid");
    grid.replaceChildren();
    for (const [im, vb] of shown.slice(page * D.page, (page + 1) * D.page)) {
      const s = Math.min(D.cell / im.w, D.cell / im.h);
      const cell = el("div", "cell"), frame = el("div", "frame");
      const pic = el(im.f ? "a" : "div", "pic");
      if (im.f) { pic.href = im.f; pic.target = "_blank"; }
      pic.style.width = im.w * s + "px";
      pic.style.height = im.h * s + "px";
      const img = el("img");
      img.loading = "lazy";
      img.alt = "";
      img.src = im.t;
      pic.append(img);
      for (const b of vb.slice().reverse()) {
        const c = cats[b[0]];
        const d = el("div", "box");
        d.style.left = b[1] * s + "px";
        d.style.top = b[2] * s + "px";
        d.style.width = Math.max(2 * D.border + 2, b[3] * s) + "px";
        d.style.height = Math.max(2 * D.border + 2, b[4] * s) + "px";
        d.style.borderColor = c.colour;
        d.dataset.c = c.colour;
        const lab = el("span", "lab", c.name + (b[5] === null ? "" : " " + b[5].toFixed(2)));
        lab.style.background = c.colour;
        lab.style.color = c.tc;
        d.append(lab);
        pic.append(d);
      }
      frame.append(pic);
      cell.append(frame);
      const cap = el("div", "cap", "#" + im.i + (im.p ? " " + im.p : ""));
      cap.title = im.p || "";
      cell.append(cap);
      grid.append(cell);
    }
    if (location.hash === "#layout") {
      const rects = Array.from(document.querySelectorAll(".box"), (d) => {
        const r = d.getBoundingClientRect();
        return { x: r.left, y: r.top, w: r.width, h: r.height, c: d.dataset.c };
      });
      $("layout").textContent = JSON.stringify({ width: innerWidth, height: innerHeight, border: D.border, boxes: rects });
    }
  }
  render();
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<script>a&'\"</script>"), "&lt;script&gt;a&amp;&#39;&quot;&lt;/script&gt;");
        let j = script_json(&json!({"n": "</script><script>alert(1)</script>&"}));
        assert!(!j.contains('<') && !j.contains('>') && !j.contains('&'), "{j}");
        let back: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["n"], "</script><script>alert(1)</script>&");
    }
}
