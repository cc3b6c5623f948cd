//! `instagen merge SHARD_DIR... --out DIR`: the shard folders of one sharded `instagen generate` run joined into
//! one dataset folder, byte-equal in `instances.json` to what one unsharded process writes.
//!
//! Everything is checked before anything is written: every shard's manifest (the same `settings`,
//! `total_images` and shard count; distinct shard indices; no shard missing), every owned index of every shard
//! (its record present and consistent with its file names and the run's categories; its image decodes at the
//! recorded size; its latent, when the run keeps them, holds one f32 tensor `latent` `[h, w, 4]` of the same
//! shape for every image, the image side an equal whole multiple of the latent side), and no stray record of an
//! index the shard does not own. Then images and latents are hard-linked (copied across file systems), records
//! copied, each through a temporary name and a rename, the record last, and `instances.json` is rebuilt with
//! [`instances_json`] (the function `generate` uses). The manifest, written first, records `merged_from` (the canonical shard folders in
//! shard order), so a rerun on an earlier merge of the same shards resumes (and is a no-op once complete); any
//! other non-empty `--out` is refused.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::pipeline::generate::folder::{
    image_name, instances_json, latent_name, read_records, record_name, remove_stale_temps, Manifest, Record, FORMAT, IMAGES, INSTANCES,
    LATENTS, MANIFEST, RECORDS,
};
use crate::pipeline::generate::Shard;
use crate::util::files::{canonical, temp_path, write_atomic};

/// What `instagen merge` does.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// The shard folders, in any order.
    pub shards: Vec<PathBuf>,
    pub out: PathBuf,
    /// The command line, for the merged manifest.
    pub command: String,
}

/// What a merge wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    pub out: PathBuf,
    pub shards: usize,
    pub images: u64,
    pub boxes: u64,
    /// Image and latent files hard-linked / copied (a copy when the link fails, e.g. across file systems).
    pub linked: u64,
    pub copied: u64,
    /// Images already merged by an earlier, interrupted run of the same merge.
    pub resumed: u64,
    /// The contact sheets, browser and card written at the end.
    pub views: crate::pipeline::views::ViewsReport,
}

impl std::fmt::Display for MergeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "merged {} shards: {} images, {} boxes -> {} ({} files hard-linked, {} copied, {} images already there)",
            self.shards,
            self.images,
            self.boxes,
            self.out.display(),
            self.linked,
            self.copied,
            self.resumed
        )?;
        write!(f, "{}", self.views)
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {msg}", path.display()))
}

/// One shard folder and its manifest.
struct ShardDir {
    dir: PathBuf,
    manifest: Manifest,
}

/// The run's category names (`settings.categories`): a non-empty list of distinct names.
fn categories(m: &Manifest) -> std::result::Result<Vec<String>, String> {
    let names: Vec<String> = m
        .settings
        .get("categories")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .ok_or("field settings.categories is missing or not a list of names")?;
    if names.is_empty() {
        return Err("field settings.categories is empty".into());
    }
    if let Some((i, n)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
        return Err(format!("field settings.categories[{i}]: {n:?} appears twice"));
    }
    Ok(names)
}

/// `dir/generate.json`, checked beyond what `generate` checks on its own folder: a shard index below the count,
/// the run's categories and seed.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    if !dir.is_dir() {
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        return Err(invalid(dir, format!("{what} (want a shard folder written by `instagen generate`)")));
    }
    let m = Manifest::load(dir)?;
    let path = dir.join(MANIFEST);
    if m.shard.count == 0 || m.shard.index >= m.shard.count {
        return Err(invalid(&path, format!("field shard is {}, want i/n with i < n", m.shard)));
    }
    categories(&m).map_err(|e| invalid(&path, e))?;
    if m.settings.get("seed").and_then(|s| s.as_u64()).is_none() {
        return Err(invalid(&path, "field settings.seed is missing or not a whole number"));
    }
    Ok(m)
}

/// Reads and cross-checks the shard manifests; returns them in shard order.
fn read_shards(dirs: &[PathBuf]) -> Result<Vec<ShardDir>> {
    if dirs.is_empty() {
        return Err(Error::Other("merge: no shard folders given".into()));
    }
    let mut shards: Vec<ShardDir> = dirs.iter().map(|d| Ok(ShardDir { dir: d.clone(), manifest: read_manifest(d)? })).collect::<Result<_>>()?;
    shards.sort_by_key(|s| s.manifest.shard.index);
    let first = &shards[0];
    let (m0, d0) = (&first.manifest, first.dir.display());
    for s in &shards[1..] {
        let (m, d) = (&s.manifest, s.dir.display());
        // Settings and total_images must agree; the shards differ in `shard` by design (its count is checked below).
        let diffs: Vec<String> = m0.differences(m).into_iter().filter(|l| !l.starts_with("shard:")).collect();
        if !diffs.is_empty() {
            return Err(Error::Other(format!(
                "shard folders {d0} and {d} were made with different settings ({MANIFEST}, {d0} -> {d}: {}); they are not shards of one run",
                diffs.join("; ")
            )));
        }
        if m.shard.count != m0.shard.count {
            return Err(Error::Other(format!(
                "shard folders {d0} and {d}: shard count {} vs {} in {MANIFEST}; they are not shards of one run",
                m0.shard.count, m.shard.count
            )));
        }
    }
    for w in shards.windows(2) {
        if w[0].manifest.shard.index == w[1].manifest.shard.index {
            let same = canonical(&w[0].dir) == canonical(&w[1].dir);
            return Err(Error::Other(format!(
                "shard folders {} and {} are both shard {}/{}{}",
                w[0].dir.display(),
                w[1].dir.display(),
                w[0].manifest.shard.index,
                w[0].manifest.shard.count,
                if same { " (the same folder given twice)" } else { "" }
            )));
        }
    }
    let count = m0.shard.count;
    if shards.len() as u64 != count {
        let have: Vec<u64> = shards.iter().map(|s| s.manifest.shard.index).collect();
        let missing: Vec<String> = (0..count).filter(|i| !have.contains(i)).map(|i| i.to_string()).collect();
        let given: Vec<String> = shards.iter().map(|s| format!("{} ({})", s.manifest.shard.index, s.dir.display())).collect();
        return Err(Error::Other(format!(
            "the run has {count} shards; shard {} of {count} missing (given: {})",
            missing.join(", "),
            given.join(", ")
        )));
    }
    Ok(shards)
}

/// The merged folder's manifest.
fn merged_manifest(shards: &[ShardDir], command: &str) -> Manifest {
    let m0 = &shards[0].manifest;
    Manifest {
        format: FORMAT.into(),
        command: command.into(),
        instagen_version: env!("CARGO_PKG_VERSION").into(),
        settings: m0.settings.clone(),
        total_images: m0.total_images,
        shard: Shard { index: 0, count: 1 },
        merged_from: Some(shards.iter().map(|s| canonical(&s.dir).display().to_string()).collect()),
    }
}

/// Whether `--out` is new (`false`) or an earlier merge of the same shards (`true`); anything else is an error.
fn check_out(out: &Path, shards: &[ShardDir], want: &Manifest) -> Result<bool> {
    let out_c = canonical(out);
    for s in shards {
        let d = canonical(&s.dir);
        if out_c.starts_with(&d) || d.starts_with(&out_c) {
            return Err(invalid(out, format!("--out overlaps the shard folder {} (write the merge to a new folder)", s.dir.display())));
        }
    }
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        return Err(invalid(out, "--out is a file, not a folder (give a new folder for the merged dataset)"));
    }
    let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
    if empty {
        return Ok(false);
    }
    let refuse = |why: String| invalid(out, format!("--out is not empty and is not an earlier merge of these shards ({why}); give a new folder"));
    let old = Manifest::load(out).map_err(|e| refuse(e.to_string()))?;
    if old.merged_from != want.merged_from {
        return Err(refuse(format!("it was merged from {:?}", old.merged_from.unwrap_or_default())));
    }
    let diffs = old.differences(want);
    if !diffs.is_empty() {
        return Err(refuse(format!("its manifest differs: {}", diffs.join("; "))));
    }
    Ok(true)
}

/// Decodes `path` and checks its size; a JPEG must also end with its end-of-image marker (a truncated JPEG
/// decodes without error).
fn check_image(path: &Path, width: u32, height: u32) -> Result<()> {
    let bytes = crate::util::files::read_input(path, None).map_err(|e| Error::io(path, e))?;
    let img = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| invalid(path, format!("does not decode (truncated or corrupt?): {e}")))?;
    let jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    if jpeg && !bytes.ends_with(&[0xFF, 0xD9]) {
        return Err(invalid(path, "JPEG without its end marker (truncated?)"));
    }
    if (img.width(), img.height()) != (width, height) {
        return Err(invalid(path, format!("image is {}x{}, its record says {width}x{height}", img.width(), img.height())));
    }
    Ok(())
}

/// The shape `[h, w, 4]` of the latent file's f32 tensor `latent` (a leading 1 is allowed), checked against the
/// image size (a whole, equal factor on both sides).
fn check_latent(path: &Path, width: u32, height: u32) -> Result<[usize; 3]> {
    let s = crate::params::ParamStore::load_safetensors(path)?;
    let t = s.get("latent").ok_or_else(|| invalid(path, "no tensor 'latent' (the t=1 latent, [h, w, 4] f32)"))?;
    let shape = match t.shape.as_slice() {
        &[h, w, 4] | &[1, h, w, 4] if h > 0 && w > 0 => [h, w, 4],
        other => return Err(invalid(path, format!("tensor 'latent' is {other:?}, want [h, w, 4]"))),
    };
    if t.dtype != crate::tensor::DType::F32 {
        return Err(invalid(path, format!("tensor 'latent' is {}, want f32", t.dtype)));
    }
    let (h, w) = (shape[0] as u32, shape[1] as u32);
    if !width.is_multiple_of(w) || !height.is_multiple_of(h) || width / w != height / h {
        return Err(invalid(path, format!("tensor 'latent' is {h}x{w}, not the {width}x{height} image scaled down by one whole factor")));
    }
    Ok(shape)
}

/// Checks the record of global index `index` (file `path`) against the run: its file names (of its index, the
/// run's `format` and `latents`), a non-empty size, prompt categories of the run, each box of a prompt category,
/// finite, non-empty and inside the image, with a score in [0, 1], in descending score order.
fn check_record(r: &Record, path: &Path, m: &Manifest, categories: &[String]) -> Result<()> {
    let bad = |msg: String| Err(invalid(path, msg));
    let k = r.index;
    let ext = m.settings.get("format").and_then(|f| f.as_str());
    let exts: &[&str] = match ext {
        Some(e) => &[e],
        None => &["png", "jpg"],
    };
    if !exts.iter().any(|e| r.file_name == image_name(k, e)) {
        return bad(format!("field file_name is {:?}, want {:?} (the run's format)", r.file_name, image_name(k, exts[0])));
    }
    let latents = m.settings.get("latents").and_then(|l| l.as_bool());
    match (&r.latent, latents) {
        (Some(l), _) if *l != latent_name(k) => return bad(format!("field latent is {l:?}, want {:?}", latent_name(k))),
        (Some(_), Some(false)) => return bad("field latent is set; the run's settings.latents is false (want null)".into()),
        (None, Some(true)) => return bad(format!("field latent is null; the run's settings.latents is true (want {:?})", latent_name(k))),
        _ => {}
    }
    if r.width == 0 || r.height == 0 {
        return bad(format!("fields width x height are {} x {} (want > 0)", r.width, r.height));
    }
    if r.categories.is_empty() {
        return bad("field categories is empty (an image names at least one category)".into());
    }
    if let Some(c) = r.categories.iter().find(|c| !categories.contains(c)) {
        return bad(format!("field categories: {c:?} is not a category of the run ({})", categories.join(", ")));
    }
    const EPS: f64 = 1e-3;
    let (w, h) = (r.width as f64, r.height as f64);
    for (i, b) in r.boxes.iter().enumerate() {
        let what = format!("boxes[{i}]");
        if !r.categories.contains(&b.category) {
            return bad(format!("{what}: field category {:?} is not one of the prompt's categories {:?}", b.category, r.categories));
        }
        let [x, y, bw, bh] = b.bbox.map(f64::from);
        if b.bbox.iter().any(|v| !v.is_finite()) || bw <= 0.0 || bh <= 0.0 {
            return bad(format!("{what}: field bbox {:?} is not finite with width and height > 0", b.bbox));
        }
        if x < -EPS || y < -EPS || x + bw > w + EPS || y + bh > h + EPS {
            return bad(format!("{what}: field bbox {:?} reaches outside the {}x{} image", b.bbox, r.width, r.height));
        }
        if !(0.0..=1.0).contains(&b.score) {
            return bad(format!("{what}: field score {} is not in [0, 1]", b.score));
        }
        if i > 0 && b.score > r.boxes[i - 1].score {
            return bad(format!("{what}: field score {} is above the previous box's {} (boxes are in descending score order)", b.score, r.boxes[i - 1].score));
        }
    }
    Ok(())
}

/// The records of a shard folder, checked: each of an index the shard owns ([`check_record`]), and one for every
/// owned index (a missing one is an image not finished).
fn shard_records(s: &ShardDir, categories: &[String]) -> Result<Vec<Record>> {
    let m = &s.manifest;
    let records = read_records(&s.dir, m.total_images)?;
    let mut next = m.shard.indices(m.total_images);
    for r in &records {
        let path = s.dir.join(record_name(r.index));
        if !m.shard.owns(r.index) {
            return Err(invalid(&path, format!("image {} does not belong to this folder's shard {} of {} images", r.index, m.shard, m.total_images)));
        }
        check_record(r, &path, m, categories)?;
        // Records come sorted and owned, so the first owned index not seen yet is missing.
        let want = next.next();
        if want != Some(r.index) {
            return Err(missing(&s.dir, want.expect("fewer owned indices than owned records")));
        }
    }
    match next.next() {
        Some(k) => Err(missing(&s.dir, k)),
        None => Ok(records),
    }
}

fn missing(dir: &Path, k: u64) -> Error {
    invalid(&dir.join(record_name(k)), format!("is missing: image {k} is not finished (rerun the `instagen generate` that made {})", dir.display()))
}

/// One record whose files are checked.
struct Checked {
    record: Record,
    /// Its shard folder.
    dir: PathBuf,
    latent_shape: Option<[usize; 3]>,
}

/// Checks the image and latent files of a record of shard folder `dir`.
fn check_files(dir: &Path, record: Record) -> Result<Checked> {
    check_image(&dir.join(&record.file_name), record.width, record.height)?;
    let latent_shape = match &record.latent {
        Some(l) => Some(check_latent(&dir.join(l), record.width, record.height)?),
        None => None,
    };
    Ok(Checked { record, dir: dir.to_path_buf(), latent_shape })
}

/// `src` to `dst` through a temporary name: a hard link where the file system allows, else a copy. Returns
/// whether it linked. A `dst` that is already a link to `src` stays (renaming a link over another link of the
/// same file does nothing and would leave the temporary name behind).
fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if id(dst).is_some() && id(dst) == id(src) {
        return Ok(true);
    }
    let tmp = temp_path(dst);
    let linked = std::fs::hard_link(src, &tmp).is_ok();
    let result = (|| {
        if !linked {
            std::fs::copy(src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, dst)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(dst, e));
    }
    Ok(linked)
}

/// Whether image `k` of an earlier run of this merge is complete in `out`: its record equal to the shard's
/// (written last, after its image and latent).
fn already_merged(out: &Path, c: &Checked) -> bool {
    let name = record_name(c.record.index);
    std::fs::read(out.join(&name)).is_ok_and(|b| std::fs::read(c.dir.join(&name)).is_ok_and(|s| s == b))
        && out.join(&c.record.file_name).is_file()
        && c.record.latent.as_ref().is_none_or(|l| out.join(l).is_file())
}

/// `instagen merge`: see the module documentation.
pub fn merge(o: &MergeOptions) -> Result<MergeReport> {
    let shards = read_shards(&o.shards)?;
    let manifest = merged_manifest(&shards, &o.command);
    let resume = check_out(&o.out, &shards, &manifest)?;
    let categories = categories(&manifest).map_err(|e| invalid(&shards[0].dir.join(MANIFEST), e))?;

    // Check everything before writing anything: the records of each shard, then every image and latent.
    let mut todo: Vec<(&Path, Record)> = Vec::with_capacity(manifest.total_images as usize);
    for s in &shards {
        todo.extend(shard_records(s, &categories)?.into_iter().map(|r| (s.dir.as_path(), r)));
    }
    todo.sort_by_key(|(_, r)| r.index);
    let checked: Vec<Result<Checked>> = todo.into_par_iter().map(|(dir, r)| check_files(dir, r)).collect();
    let checked: Vec<Checked> = checked.into_iter().collect::<Result<_>>()?;
    let mut first_latent: Option<(u64, [usize; 3])> = None;
    for c in &checked {
        match (c.latent_shape, first_latent) {
            (Some(shape), None) => first_latent = Some((c.record.index, shape)),
            (Some(shape), Some((k0, s0))) if s0 != shape => {
                return Err(invalid(
                    &c.dir.join(latent_name(c.record.index)),
                    format!("tensor 'latent' is {shape:?}; image {k0}'s is {s0:?} (one run has one latent shape)"),
                ));
            }
            _ => {}
        }
    }

    // Write: the manifest first, then per image its files and its record last, then instances.json.
    let out = &o.out;
    for sub in [IMAGES, LATENTS, RECORDS] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        remove_stale_temps(&d)?;
    }
    remove_stale_temps(out)?;
    if !resume {
        manifest.save(out)?;
    }
    let mut report = MergeReport { out: out.clone(), shards: shards.len(), images: manifest.total_images, ..MergeReport::default() };
    for c in &checked {
        let r = &c.record;
        report.boxes += r.boxes.len() as u64;
        if resume && already_merged(out, c) {
            report.resumed += 1;
            continue;
        }
        for f in std::iter::once(&r.file_name).chain(r.latent.as_ref()) {
            if link_or_copy(&c.dir.join(f), &out.join(f))? {
                report.linked += 1;
            } else {
                report.copied += 1;
            }
        }
        let (src, dst) = (c.dir.join(record_name(r.index)), out.join(record_name(r.index)));
        let bytes = crate::util::files::read_input(&src, None).map_err(|e| Error::io(&src, e))?;
        write_atomic(&dst, &bytes).map_err(|e| Error::io(&dst, e))?;
    }
    let records: Vec<Record> = checked.into_iter().map(|c| c.record).collect();
    let instances = instances_json(&manifest, &records)?;
    let path = out.join(INSTANCES);
    write_atomic(&path, &instances).map_err(|e| Error::io(&path, e))?;
    report.views = crate::pipeline::views::write_views(out, &crate::pipeline::views::ViewOptions::default())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::generate::RecordBox;

    fn manifest(latents: bool) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            command: "instagen generate".into(),
            instagen_version: env!("CARGO_PKG_VERSION").into(),
            settings: serde_json::json!({"categories": ["star", "moon", "sun"], "seed": 7, "format": "png", "latents": latents}),
            total_images: 10,
            shard: Shard { index: 0, count: 2 },
            merged_from: None,
        }
    }

    fn record(index: u64, boxes: Vec<RecordBox>) -> Record {
        Record {
            index,
            file_name: image_name(index, "png"),
            width: 32,
            height: 24,
            prompt: "a photograph of star and moon".into(),
            categories: vec!["star".into(), "moon".into()],
            seed: 1 << 40,
            latent: Some(latent_name(index)),
            boxes,
        }
    }

    fn bx(c: &str, bbox: [f32; 4], score: f32) -> RecordBox {
        RecordBox { category: c.into(), bbox, score }
    }

    #[test]
    fn record_checks_name_the_field() {
        let m = manifest(true);
        let cats = categories(&m).unwrap();
        let p = Path::new("shard/records/00000004.json");
        let good = record(4, vec![bx("moon", [0.0, 0.0, 32.0, 24.0], 0.9), bx("star", [31.0, 23.0, 1.0, 1.0], 0.5)]);
        check_record(&good, p, &m, &cats).unwrap();
        let cases: Vec<(Record, &str)> = vec![
            (Record { file_name: "images/4.png".into(), ..record(4, vec![]) }, "field file_name"),
            (Record { file_name: image_name(4, "jpg"), ..record(4, vec![]) }, "the run's format"),
            (Record { latent: Some("x.safetensors".into()), ..record(4, vec![]) }, "field latent"),
            (Record { latent: None, ..record(4, vec![]) }, "settings.latents is true"),
            (Record { width: 0, ..record(4, vec![]) }, "width x height"),
            (Record { categories: vec![], ..record(4, vec![]) }, "field categories is empty"),
            (Record { categories: vec!["comet".into()], ..record(4, vec![]) }, "\"comet\" is not a category"),
            (record(4, vec![bx("sun", [0.0, 0.0, 1.0, 1.0], 0.5)]), "not one of the prompt's categories"),
            (record(4, vec![bx("star", [0.0, 0.0, 0.0, 1.0], 0.5)]), "width and height > 0"),
            (record(4, vec![bx("star", [0.0, 0.0, f32::NAN, 1.0], 0.5)]), "not finite"),
            (record(4, vec![bx("star", [30.0, 0.0, 3.0, 1.0], 0.5)]), "outside the 32x24 image"),
            (record(4, vec![bx("star", [0.0, -1.0, 3.0, 1.0], 0.5)]), "outside"),
            (record(4, vec![bx("star", [0.0, 0.0, 3.0, 1.0], 1.5)]), "score 1.5 is not in [0, 1]"),
            (record(4, vec![bx("star", [0.0, 0.0, 3.0, 1.0], 0.2), bx("moon", [0.0, 0.0, 3.0, 1.0], 0.3)]), "descending"),
        ];
        for (r, want) in cases {
            let e = check_record(&r, p, &m, &cats).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("shard/records/00000004.json"), "want {want:?} in: {e}");
        }
        let e = check_record(&good, p, &manifest(false), &cats).unwrap_err().to_string();
        assert!(e.contains("settings.latents is false"), "{e}");
    }

    #[test]
    fn settings_categories_are_checked() {
        let mut m = manifest(true);
        assert_eq!(categories(&m).unwrap(), vec!["star", "moon", "sun"]);
        m.settings["categories"] = serde_json::json!([]);
        assert!(categories(&m).unwrap_err().contains("empty"));
        m.settings["categories"] = serde_json::json!(["a", "b", "a"]);
        assert!(categories(&m).unwrap_err().contains("categories[2]: \"a\" appears twice"));
        m.settings["categories"] = serde_json::json!("a,b");
        assert!(categories(&m).unwrap_err().contains("not a list of names"));
    }
}
