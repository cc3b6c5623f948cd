//! The views of a dataset folder: contact sheets, index.html, card.md, and (where Chromium is installed) the
//! browser screenshot check.

mod common;

use std::path::{Path, PathBuf};

use instagen::pipeline::views::{self, ViewOptions, draw, sheet};
use serde_json::{Value, json};

const CATS: [&str; 4] = ["cat", "<script>alert(1)</script>", "猫 chat|x", "a_b*c"];
const PROMPT_HOSTILE: &str = "a photo of </script><img src=x onerror=alert(1)>";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_views_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("images")).unwrap();
    d
}

/// Image `i`: 96x64 or 64x96 (alternating), a grey gradient.
fn image_size(i: usize) -> (u32, u32) {
    if i % 2 == 0 { (96, 64) } else { (64, 96) }
}

/// Boxes of image `i`: (category, bbox, score). Image 0 has none; 1..=4 one each of category i-1; 5 has three.
fn boxes_of(i: usize) -> Vec<(usize, [f64; 4], f64)> {
    let (w, h) = image_size(i);
    let (w, h) = (w as f64, h as f64);
    match i {
        1..=4 => vec![(i - 1, [w * 0.2, h * 0.25, w * 0.5, h * 0.5], 0.9 - 0.1 * i as f64)],
        5 => vec![(0, [2.0, 2.0, 30.0, 40.0], 0.95), (1, [40.0, 10.0, 20.0, 20.0], 0.5), (0, [10.0, 50.0, 5.0, 5.0], 0.41)],
        _ if i % 7 == 0 && i > 0 => vec![(3, [0.0, 0.0, w, h], 0.6)],
        _ => vec![],
    }
}

/// A generated-dataset folder (the layout of `instagen generate`) with `n` images.
fn make_dataset(dir: &Path, n: usize, manifest: bool) {
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..n {
        let (w, h) = image_size(i);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = (60 + x + y) as u8;
            image::Rgb([v, v, v])
        });
        let file = format!("images/{i:08}.png");
        img.save(dir.join(&file)).unwrap();
        let prompt = if i == 3 { PROMPT_HOSTILE.to_string() } else { format!("a photograph of a {}", CATS[i % 4]) };
        images.push(json!({"id": i + 1, "file_name": file, "width": w, "height": h, "prompt": prompt,
                           "categories": [CATS[i % 4]], "seed": 1000 + i, "index": i}));
        for (cat, b, s) in boxes_of(i) {
            anns.push(json!({"id": anns.len() + 1, "image_id": i + 1, "category_id": cat + 1, "bbox": b,
                             "area": b[2] * b[3], "iscrowd": 0, "score": s}));
        }
    }
    let cats: Vec<Value> = CATS.iter().enumerate().map(|(i, n)| json!({"id": i + 1, "name": n, "supercategory": ""})).collect();
    let inst = json!({"info": {"description": "instagen generate", "version": "0.1.0", "seed": 7},
                      "categories": cats, "images": images, "annotations": anns});
    std::fs::write(dir.join("instances.json"), serde_json::to_vec(&inst).unwrap()).unwrap();
    if manifest {
        let m = json!({"format": "instagen-dataset/1", "command": "instagen generate --categories cat --out ```x```",
                       "instagen_version": "0.1.0", "settings": {"categories": CATS, "steps": 2, "seed": 7, "score": 0.4},
                       "total_images": n, "shard": {"index": 0, "count": 1}, "merged_from": null});
        std::fs::write(dir.join("generate.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

fn opts() -> ViewOptions {
    ViewOptions { cell: 96, thumb: 48, ..Default::default() }
}

#[test]
fn sheets_browser_and_card_of_a_generated_folder() {
    let dir = tmp("gen");
    let n = 66;
    make_dataset(&dir, n, true);
    let o = opts();
    let r = views::write_views(&dir, &o).unwrap();
    let nboxes: usize = (0..n).map(|i| boxes_of(i).len()).sum();
    assert_eq!((r.images, r.boxes, r.categories, r.sheets.len(), r.thumbs), (n, nboxes, 4, 2, n), "{r}");

    // Contact sheets: the full 8x8 size; each lone box's edges in its category colour, its inside not.
    for k in 0..2 {
        let s = image::open(dir.join(format!("contact/sheet_{k:04}.png"))).unwrap().to_rgb8();
        assert_eq!(s.dimensions(), sheet::sheet_size(o.cell));
        assert_eq!(s.dimensions(), (8 * (96 + sheet::GAP) + sheet::GAP, 8 * (96 + sheet::GAP) + sheet::GAP));
    }
    let s0 = image::open(dir.join("contact/sheet_0000.png")).unwrap().to_rgb8();
    for i in 1..=4 {
        let (w, h) = image_size(i);
        let (cat, b, _) = boxes_of(i)[0];
        let c = draw::category_colour(cat);
        let r = sheet::box_rect(o.cell, i, w, h, b);
        let (my, mx) = ((r[1] + r[3]) / 2, (r[0] + r[2]) / 2);
        for (x, y) in [(r[0], my), (r[2] - 1, my), (mx, r[3] - 1)] {
            assert_eq!(s0.get_pixel(x as u32, y as u32).0, c, "image {i}: box edge at ({x}, {y})");
        }
        assert_ne!(s0.get_pixel(mx as u32, my as u32).0, c, "image {i}: the box inside");
        // The label sits at the box's top-left corner, on the category colour.
        let (line, _) = sheet::line_and_scale(o.cell);
        assert_eq!(s0.get_pixel((r[0] + line) as u32, (r[1] + line) as u32).0, c);
    }
    // Image 64 (the first of sheet 1) is drawn: its cell is not the gutter colour.
    let s1 = image::open(dir.join("contact/sheet_0001.png")).unwrap().to_rgb8();
    let (cx, cy) = sheet::cell_origin(o.cell, 0);
    assert_ne!(s1.get_pixel(cx + 48, cy + 48).0, sheet::GUTTER);
    let (cx, cy) = sheet::cell_origin(o.cell, 5);
    assert_eq!(s1.get_pixel(cx + 48, cy + 48).0, sheet::GUTTER, "an empty cell of the last sheet");

    // Thumbnails: one per image, at most 48 pixels, aspect kept.
    for i in [0, 1, 65] {
        let t = image::open(dir.join(sheet::thumb_name(i))).unwrap();
        let (w, h) = image_size(i);
        assert_eq!((t.width(), t.height()), sheet::fit(w, h, 48));
    }

    // index.html: names escaped, no injected markup, the inline data intact.
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the category name is escaped in the legend");
    assert_eq!(html.matches("<script").count(), 2, "only the data and the page script");
    assert!(!html.contains("<img src=x") && !html.contains("</script><img"));
    let start = html.find("<script type=\"application/json\" id=\"data\">").unwrap();
    let body = &html[start..];
    let body = &body[body.find('>').unwrap() + 1..body.find("</script>").unwrap()];
    let data: Value = serde_json::from_str(body).unwrap();
    assert_eq!(data["images"].as_array().unwrap().len(), n);
    assert_eq!(data["categories"][1]["name"], CATS[1]);
    assert_eq!(data["images"][3]["p"], PROMPT_HOSTILE);
    assert_eq!(data["images"][5]["b"].as_array().unwrap().len(), 3);
    assert_eq!(data["images"][0]["f"], "images/00000000.png");
    assert_eq!(data["nboxes"], nboxes);

    // card.md: counts per category as computed here, the manifest, names escaped.
    let card = std::fs::read_to_string(dir.join("card.md")).unwrap();
    assert!(card.contains(&format!("| images | {n} |")), "{card}");
    assert!(card.contains(&format!("| boxes | {nboxes} |")));
    let empty = (0..n).filter(|&i| boxes_of(i).is_empty()).count();
    assert!(card.contains(&format!("| images without boxes | {empty} |")), "{card}");
    for (c, name) in CATS.iter().enumerate() {
        let prompted = (0..n).filter(|i| i % 4 == c).count();
        let with = (0..n).filter(|&i| boxes_of(i).iter().any(|b| b.0 == c)).count();
        let nb: usize = (0..n).map(|i| boxes_of(i).iter().filter(|b| b.0 == c).count()).sum();
        let row = format!("| {} | {prompted} | {with} | {nb} |", views::card::md(name));
        assert!(card.contains(&row), "missing row {row}\n{card}");
    }
    assert!(card.contains("&lt;script&gt;") && !card.contains("<script>"));
    assert!(card.contains("````\ninstagen generate --categories cat --out ```x```\n````"), "{card}");
    assert!(card.contains("| steps | 2 |") && card.contains("| total_images | 66 |"));
    let hist = image::open(dir.join("card/box_sizes.png")).unwrap().to_rgb8();
    for c in 0..4 {
        let col = draw::category_colour(c);
        assert!(hist.pixels().any(|p| p.0 == col), "category {c}'s colour is in the histogram");
    }

    // Rerun on a smaller dataset: the second sheet and the extra thumbnails go.
    std::fs::remove_file(dir.join("generate.json")).unwrap();
    make_dataset(&dir, 10, false);
    let r = views::write_views(&dir, &o).unwrap();
    assert_eq!((r.images, r.sheets.len()), (10, 1));
    assert!(!dir.join("contact/sheet_0001.png").exists());
    assert_eq!(std::fs::read_dir(dir.join("thumbs")).unwrap().count(), 10);
    let card = std::fs::read_to_string(dir.join("card.md")).unwrap();
    assert!(card.contains("No `generate.json`"), "{card}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = tmp("bad");
    make_dataset(&dir, 3, true);
    let o = opts();
    std::fs::write(dir.join("generate.json"), b"{\"command\": 3,").unwrap();
    let e = views::write_views(&dir, &o).unwrap_err().to_string();
    assert!(e.contains("generate.json"), "{e}");
    std::fs::write(dir.join("generate.json"), b"[1]").unwrap();
    let e = views::write_views(&dir, &o).unwrap_err().to_string();
    assert!(e.contains("generate.json") && e.contains("not a JSON object"), "{e}");
    std::fs::remove_file(dir.join("generate.json")).unwrap();
    // An image whose size differs from the instances file.
    image::RgbImage::new(10, 10).save(dir.join("images/00000001.png")).unwrap();
    let e = views::write_views(&dir, &o).unwrap_err().to_string();
    assert!(e.contains("00000001.png") && e.contains("10x10") && e.contains("64x96"), "{e}");
    std::fs::remove_file(dir.join("images/00000001.png")).unwrap();
    let e = views::write_views(&dir, &o).unwrap_err().to_string();
    assert!(e.contains("00000001.png"), "{e}");
    std::fs::remove_file(dir.join("instances.json")).unwrap();
    let e = views::write_views(&dir, &o).unwrap_err().to_string();
    assert!(e.contains("instances.json"), "{e}");
    let e = views::write_views(&dir, &ViewOptions { cell: 8, ..opts() }).unwrap_err().to_string();
    assert!(e.contains("cell side 8"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `instagen views OUT --instances FILE --images DIR` on real COCO images.
#[test]
fn cli_on_real_coco() {
    let Some(data) = common::shared_data("tiny_coco") else { return };
    let out = tmp("coco");
    let inst = data.join("annotations/instances_val2017.json");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_instagen"))
        .args(["views", out.to_str().unwrap(), "--instances", inst.to_str().unwrap(), "--images"])
        .arg(data.join("val2017"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}\n{}", String::from_utf8_lossy(&st.stderr));
    let coco: Value = serde_json::from_slice(&std::fs::read(&inst).unwrap()).unwrap();
    let (ni, na) = (coco["images"].as_array().unwrap().len(), coco["annotations"].as_array().unwrap().len());
    assert!(text.contains(&format!("{ni} images, {na} boxes")), "{text}");
    assert!(out.join("contact/sheet_0000.png").is_file() && out.join("index.html").is_file());
    let card = std::fs::read_to_string(out.join("card.md")).unwrap();
    assert!(card.contains("No box has a score"), "{card}");
    // Links to the full images are relative to the output folder.
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("val2017/"), "links to the images");
    std::fs::remove_dir_all(&out).ok();
}

/// The browser in headless Chromium shows the boxes (skipped where no Chromium is installed).
#[test]
fn browser_screenshot_shows_boxes() {
    let found = ["chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|c| std::process::Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success()));
    if !found && std::env::var_os("CHROMIUM").is_none() {
        println!("SKIP: no headless Chromium (apt-get install chromium-headless-shell)");
        return;
    }
    let dir = tmp("shot");
    make_dataset(&dir, 12, true);
    views::write_views(&dir, &opts()).unwrap();
    let png = dir.join("shot.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/browser_screenshot.sh");
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(&png)
        .env("INSTAGEN", env!("CARGO_BIN_EXE_instagen"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}\n{}", String::from_utf8_lossy(&st.stderr));
    assert!(text.contains("PASS"), "{text}");
    // With the boxes hidden (a page whose box borders are transparent) the same check fails.
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    std::fs::write(dir.join("index.html"), html.replace("border:2px solid}", "border:2px solid transparent!important}")).unwrap();
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(&png)
        .env("INSTAGEN", env!("CARGO_BIN_EXE_instagen"))
        .output()
        .unwrap();
    assert!(!st.status.success(), "{}", String::from_utf8_lossy(&st.stdout));
    std::fs::remove_dir_all(&dir).ok();
}
