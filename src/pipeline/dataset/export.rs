//! `instagen export DATASET --format yolo --out DIR [--val-fraction F] [--seed S]`: a dataset folder (its
//! `instances.json`, read by [`GroundSet::open_dir`]) in the layout Ultralytics YOLO reads:
//!
//! ```text
//! DIR/data.yaml                 path (DIR, absolute), train: images/train, val: images/val, names: {0: first, ...}
//! DIR/images/train|val/NAME     the images (hard-linked where possible, else copied)
//! DIR/labels/train|val/STEM.txt one line `class cx cy w h` per box, normalised to [0, 1]; empty without boxes
//! ```
//!
//! Classes are the dataset's categories in their order (class 0 = the first). Boxes are clipped to the image;
//! a box with nothing left inside is dropped (and counted). The validation images are a seeded random
//! `round(F * n)` of the images (at least one when F > 0, never all of them); with F = 0, `val` names the
//! training images (Ultralytics needs a validation set). The folder is written beside DIR under a temporary
//! name and renamed into place, so DIR is never half written; an existing non-empty DIR is refused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pipeline::ground::GroundSet;
use crate::util::files::canonical;

/// The layouts `instagen export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Ultralytics YOLO (`data.yaml`, `images/`, `labels/`).
    Yolo,
}

/// What `instagen export` does.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub dataset: PathBuf,
    pub format: ExportFormat,
    pub out: PathBuf,
    /// The fraction of images in the validation split, in [0, 1).
    pub val_fraction: f64,
    /// Seeds the choice of validation images.
    pub seed: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportReport {
    pub out: PathBuf,
    pub train: usize,
    pub val: usize,
    pub boxes: usize,
    /// Boxes with no area left inside their image.
    pub dropped: usize,
    pub classes: usize,
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "exported {} train + {} val images, {} boxes, {} classes (YOLO) -> {}{}",
            self.train,
            self.val,
            self.boxes,
            self.classes,
            self.out.display(),
            if self.dropped > 0 { format!(" ({} boxes outside their image dropped)", self.dropped) } else { String::new() }
        )
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {msg}", path.display()))
}

/// The YOLO label line of a box `[x1, y1, x2, y2]` (pixels) of class `class` in a `width` x `height` image:
/// `class cx cy w h` normalised to [0, 1] after clipping to the image, or `None` when nothing is left inside.
pub fn yolo_line(class: usize, b: [f64; 4], width: u32, height: u32) -> Option<String> {
    let (w, h) = (width as f64, height as f64);
    let (x1, x2) = (b[0].clamp(0.0, w), b[2].clamp(0.0, w));
    let (y1, y2) = (b[1].clamp(0.0, h), b[3].clamp(0.0, h));
    if !(x2 > x1 && y2 > y1) {
        return None;
    }
    let (cx, cy, bw, bh) = ((x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h);
    Some(format!("{class} {cx:.6} {cy:.6} {bw:.6} {bh:.6}"))
}

/// Which of `n` images go to the validation split (see the module documentation).
pub fn val_split(n: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut k = (fraction * n as f64).round() as usize;
    if fraction > 0.0 {
        k = k.max(1);
    }
    k = k.min(n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = crate::util::Rng::new(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut val = vec![false; n];
    for &i in &order[..k] {
        val[i] = true;
    }
    val
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// `data.yaml`.
fn data_yaml(path: &Path, val_is_train: bool, names: &[&str], source: &Path) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "# Ultralytics YOLO dataset written by `instagen export` from {}", source.display());
    let _ = writeln!(y, "path: {}", yaml_str(&path.display().to_string()));
    let _ = writeln!(y, "train: images/train");
    if val_is_train {
        let _ = writeln!(y, "# --val-fraction 0: the training images double as the validation set");
        let _ = writeln!(y, "val: images/train");
    } else {
        let _ = writeln!(y, "val: images/val");
    }
    let _ = writeln!(y, "names:");
    for (i, n) in names.iter().enumerate() {
        let _ = writeln!(y, "  {i}: {}", yaml_str(n));
    }
    y
}

/// The fields of a `data.yaml` as [`export`] writes it, read back (a check of the structure for tests and
/// tools: top-level `key: value` lines, `names:` followed by indented `id: "name"` lines; comments and blank
/// lines skipped). Not a general YAML reader.
#[derive(Clone, Debug, PartialEq)]
pub struct DataYaml {
    pub path: String,
    pub train: String,
    pub val: String,
    pub names: Vec<(u64, String)>,
}

impl DataYaml {
    pub fn parse(text: &str) -> std::result::Result<DataYaml, String> {
        let scalar = |v: &str| -> std::result::Result<String, String> {
            let v = v.trim();
            if v.starts_with('"') {
                serde_json::from_str(v).map_err(|e| format!("bad quoted scalar {v}: {e}"))
            } else if v.is_empty() || v.contains(": ") || v.starts_with(['#', '{', '[', '&', '*', '!', '|', '>', '\'', '%', '@']) {
                Err(format!("unexpected plain scalar {v:?}"))
            } else {
                Ok(v.to_string())
            }
        };
        let (mut path, mut train, mut val, mut names) = (None, None, None, None::<Vec<(u64, String)>>);
        let mut in_names = false;
        for (i, line) in text.lines().enumerate() {
            let at = |m: String| format!("line {}: {m}", i + 1);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let indented = line.starts_with(' ');
            let (k, v) = line.trim().split_once(':').ok_or_else(|| at(format!("{line:?} is not `key: value`")))?;
            if indented {
                let list = names.as_mut().filter(|_| in_names).ok_or_else(|| at("indented line outside names:".into()))?;
                let id: u64 = k.parse().map_err(|_| at(format!("names key {k:?} is not a class id")))?;
                if id != list.len() as u64 {
                    return Err(at(format!("names key {id}, want {} (ids in order from 0)", list.len())));
                }
                list.push((id, scalar(v).map_err(at)?));
                continue;
            }
            in_names = false;
            let slot = match k {
                "path" => &mut path,
                "train" => &mut train,
                "val" => &mut val,
                "names" if v.trim().is_empty() && names.is_none() => {
                    names = Some(Vec::new());
                    in_names = true;
                    continue;
                }
                _ => return Err(at(format!("unexpected key {k:?}"))),
            };
            if slot.is_some() {
                return Err(at(format!("key {k:?} appears twice")));
            }
            *slot = Some(scalar(v).map_err(at)?);
        }
        let need = |v: Option<String>, k: &str| v.ok_or_else(|| format!("key {k:?} is missing"));
        let names = names.filter(|n| !n.is_empty()).ok_or("key \"names\" is missing or empty")?;
        Ok(DataYaml { path: need(path, "path")?, train: need(train, "train")?, val: need(val, "val")?, names })
    }
}

/// Refuses an `--out` that exists and is a file or a non-empty folder.
fn check_new_out(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(invalid(out, "--out is a file, not a folder"));
    }
    if std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(invalid(out, "--out is a folder that is not empty (give a new folder)"));
    }
    Ok(())
}

/// `instagen export`: see the module documentation.
pub fn export(o: &ExportOptions) -> Result<ExportReport> {
    if !(0.0..1.0).contains(&o.val_fraction) {
        return Err(Error::Other(format!("--val-fraction {} is not in [0, 1)", o.val_fraction)));
    }
    let ExportFormat::Yolo = o.format;
    check_new_out(&o.out)?;
    let set = GroundSet::open_dir(&o.dataset)?;
    let names: Vec<&str> = set.coco.categories.iter().map(|c| c.name.as_str()).collect();
    let class_of = |id: u64| set.coco.categories.iter().position(|c| c.id == id).expect("GroundSet checked the category");

    // Output names: the image file's own name, which must be unique.
    let mut seen = std::collections::HashMap::new();
    let mut files = Vec::with_capacity(set.images.len());
    for g in &set.images {
        let name = g.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = g.path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = seen.insert(stem.clone(), g.path.clone()) {
            return Err(invalid(&set.source, format!("images {} and {} have the same file stem {stem:?} (YOLO labels are named by it)", other.display(), g.path.display())));
        }
        files.push((name, stem));
    }

    let parent = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let final_path = canonical(&o.out);
    let tmp = crate::util::files::temp_path(&o.out);
    let result = (|| -> Result<ExportReport> {
        for split in ["train", "val"] {
            for kind in ["images", "labels"] {
                let d = tmp.join(kind).join(split);
                std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
        let val = val_split(set.images.len(), o.val_fraction, o.seed);
        let mut report = ExportReport { out: o.out.clone(), classes: names.len(), ..ExportReport::default() };
        for ((g, (name, stem)), is_val) in set.images.iter().zip(&files).zip(&val) {
            let split = if *is_val { "val" } else { "train" };
            let mut text = String::new();
            for (b, cat, _) in &g.boxes {
                match yolo_line(class_of(*cat), b.map(f64::from), g.width, g.height) {
                    Some(l) => {
                        text.push_str(&l);
                        text.push('\n');
                        report.boxes += 1;
                    }
                    None => report.dropped += 1,
                }
            }
            let label = tmp.join("labels").join(split).join(format!("{stem}.txt"));
            std::fs::write(&label, text).map_err(|e| Error::io(&label, e))?;
            let dst = tmp.join("images").join(split).join(name);
            if std::fs::hard_link(&g.path, &dst).is_err() {
                std::fs::copy(&g.path, &dst).map_err(|e| Error::io(&g.path, e))?;
            }
            if *is_val {
                report.val += 1;
            } else {
                report.train += 1;
            }
        }
        let yaml = data_yaml(&final_path, report.val == 0, &names, &canonical(&o.dataset));
        let p = tmp.join("data.yaml");
        std::fs::write(&p, yaml).map_err(|e| Error::io(&p, e))?;
        if o.out.is_dir() {
            // An empty folder (checked above): rename replaces it.
            std::fs::remove_dir(&o.out).map_err(|e| Error::io(&o.out, e))?;
        }
        std::fs::rename(&tmp, &o.out).map_err(|e| Error::io(&o.out, e))?;
        Ok(report)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_lines_at_the_borders() {
        // The whole image, a box touching each corner, a box overshooting the border (clipped), a box outside.
        assert_eq!(yolo_line(0, [0.0, 0.0, 64.0, 32.0], 64, 32).unwrap(), "0 0.500000 0.500000 1.000000 1.000000");
        assert_eq!(yolo_line(2, [0.0, 0.0, 16.0, 8.0], 64, 32).unwrap(), "2 0.125000 0.125000 0.250000 0.250000");
        assert_eq!(yolo_line(1, [48.0, 24.0, 64.0, 32.0], 64, 32).unwrap(), "1 0.875000 0.875000 0.250000 0.250000");
        assert_eq!(yolo_line(1, [-8.0, 30.0, 8.0, 40.0], 64, 32).unwrap(), "1 0.062500 0.968750 0.125000 0.062500");
        assert_eq!(yolo_line(3, [62.0, 30.0, 64.0, 32.0], 64, 32).unwrap(), "3 0.984375 0.968750 0.031250 0.062500");
        assert!(yolo_line(0, [64.0, 0.0, 70.0, 10.0], 64, 32).is_none());
        assert!(yolo_line(0, [10.0, 10.0, 10.0, 20.0], 64, 32).is_none());
        // Every value is in [0, 1] for boxes anywhere.
        let mut rng = crate::util::Rng::new(3);
        for _ in 0..500 {
            let b = [rng.range(-20.0, 80.0), rng.range(-20.0, 50.0), rng.range(-20.0, 80.0), rng.range(-20.0, 50.0)].map(f64::from);
            if let Some(l) = yolo_line(0, b, 64, 32) {
                let v: Vec<f64> = l.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
                assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{b:?} -> {l}");
                assert!(v[0] - v[2] / 2.0 >= -1e-6 && v[0] + v[2] / 2.0 <= 1.0 + 1e-6, "{b:?} -> {l}");
            }
        }
    }

    #[test]
    fn val_split_is_seeded_and_sized() {
        let a = val_split(100, 0.2, 5);
        assert_eq!(a.iter().filter(|v| **v).count(), 20);
        assert_eq!(a, val_split(100, 0.2, 5));
        assert_ne!(a, val_split(100, 0.2, 6));
        assert_eq!(val_split(10, 0.0, 1).iter().filter(|v| **v).count(), 0);
        assert_eq!(val_split(10, 0.01, 1).iter().filter(|v| **v).count(), 1);
        assert_eq!(val_split(2, 0.9, 1).iter().filter(|v| **v).count(), 1);
        assert_eq!(val_split(1, 0.5, 1), vec![false]);
        assert!(val_split(0, 0.5, 1).is_empty());
    }

    #[test]
    fn data_yaml_round_trips_and_rejects_other_shapes() {
        let names = ["star", "hot: dog", "a \"quoted\" #name", "- dash"];
        let y = data_yaml(Path::new("/data/yolo out"), false, &names, Path::new("/data/set"));
        let d = DataYaml::parse(&y).unwrap();
        assert_eq!(d.path, "/data/yolo out");
        assert_eq!((d.train.as_str(), d.val.as_str()), ("images/train", "images/val"));
        assert_eq!(d.names.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), names);
        assert_eq!(d.names.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let y0 = data_yaml(Path::new("/d"), true, &names, Path::new("/s"));
        assert_eq!(DataYaml::parse(&y0).unwrap().val, "images/train");
        for (bad, want) in [
            ("path: /a\ntrain: t\nval: v\n", "names"),
            ("path: /a\ntrain: t\nnames:\n  0: \"x\"\n", "\"val\" is missing"),
            ("path: /a\ntrain: t\nval: v\nnames:\n  1: \"x\"\n", "want 0"),
            ("path: /a\npath: /b\n", "appears twice"),
            ("path: /a\ntrain: t\nval: v\nnames:\n  0: \"x\n", "bad quoted"),
            ("  0: \"x\"\n", "outside names"),
            ("colour: red\n", "unexpected key"),
        ] {
            let e = DataYaml::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
