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
//! [`super::instances_json`]. The manifest, written first, records `merged_from` (the canonical shard folders in
//! shard order), so a rerun on an earlier merge of the same shards resumes (and is a no-op once complete); any
//! other non-empty `--out` is refused.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{image_name, index_of, latent_name, read_record, record_name, Manifest, Record, Shard, IMAGES, LATENTS, MANIFEST, RECORDS};
use crate::error::{Error, Result};
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
        )
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

/// Reads and cross-checks the shard manifests; returns them in shard order.
fn read_shards(dirs: &[PathBuf]) -> Result<Vec<ShardDir>> {
    if dirs.is_empty() {
        return Err(Error::Other("merge: no shard folders given".into()));
    }
    let mut shards: Vec<ShardDir> = dirs.iter().map(|d| Ok(ShardDir { dir: d.clone(), manifest: Manifest::read(d)? })).collect::<Result<_>>()?;
    shards.sort_by_key(|s| s.manifest.shard.index);
    let first = &shards[0];
    let (m0, d0) = (&first.manifest, first.dir.display());
    for s in &shards[1..] {
        let (m, d) = (&s.manifest, s.dir.display());
        let keys = m0.differing_settings(m);
        if !keys.is_empty() {
            let show = |m: &Manifest, k: &str| m.settings.get(k).map_or("(absent)".to_string(), |v| v.to_string());
            let diffs: Vec<String> = keys.iter().map(|k| format!("{k}: {} vs {}", show(m0, k), show(m, k))).collect();
            return Err(Error::Other(format!(
                "shard folders {d0} and {d} were made with different settings ({MANIFEST}: {}); they are not shards of one run",
                diffs.join("; ")
            )));
        }
        if m.total_images != m0.total_images {
            return Err(Error::Other(format!(
                "shard folders {d0} and {d}: total_images {} vs {} in {MANIFEST}; they are not shards of one run",
                m0.total_images, m.total_images
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
        format: super::FORMAT.into(),
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
    let old = Manifest::read(out).map_err(|e| refuse(e.to_string()))?;
    if old.merged_from != want.merged_from {
        return Err(refuse(format!("it was merged from {:?}", old.merged_from.unwrap_or_default())));
    }
    let keys = old.differing_settings(want);
    if !keys.is_empty() || old.total_images != want.total_images || old.shard != want.shard {
        return Err(refuse(format!("its settings differ in: {}", keys.join(", "))));
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
    if width % w != 0 || height % h != 0 || width / w != height / h {
        return Err(invalid(path, format!("tensor 'latent' is {h}x{w}, not the {width}x{height} image scaled down by one whole factor")));
    }
    Ok(shape)
}

/// One checked image of a shard.
struct Checked {
    record: Record,
    bytes: Vec<u8>,
    latent_shape: Option<[usize; 3]>,
}

/// Checks global image `k` of shard folder `dir`.
fn check_index(dir: &Path, k: u64, m: &Manifest, categories: &[String]) -> Result<Checked> {
    let (record, bytes) = read_record(dir, k, categories)?;
    let rpath = dir.join(record_name(k));
    if let Some(Some(ext)) = m.settings.get("format").map(|f| f.as_str()) {
        if record.file_name != image_name(k, ext) {
            return Err(invalid(&rpath, format!("field file_name is {:?}; the run writes {ext} ({:?})", record.file_name, image_name(k, ext))));
        }
    }
    if let Some(Some(latents)) = m.settings.get("latents").map(|f| f.as_bool()) {
        if record.latent.is_some() != latents {
            let want = if latents { format!("{:?}", latent_name(k)) } else { "null".into() };
            return Err(invalid(&rpath, format!("field latent is {:?}; the run's settings.latents is {latents} (want {want})", record.latent)));
        }
    }
    check_image(&dir.join(&record.file_name), record.width, record.height)?;
    let latent_shape = match &record.latent {
        Some(l) => Some(check_latent(&dir.join(l), record.width, record.height)?),
        None => None,
    };
    Ok(Checked { record, bytes, latent_shape })
}

/// Records in `dir/records` of indices the shard does not own (a folder of another run or shard mixed in).
fn check_no_strays(s: &ShardDir) -> Result<()> {
    let rec = s.dir.join(RECORDS);
    let entries = match std::fs::read_dir(&rec) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&rec, e)),
    };
    for e in entries {
        let e = e.map_err(|e| Error::io(&rec, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(k) = index_of(&name).filter(|_| name.ends_with(".json")) {
            if !s.manifest.owns(k) {
                let m = &s.manifest;
                return Err(invalid(
                    &e.path(),
                    format!("image {k} does not belong to this folder's shard {}/{} of {} images", m.shard.index, m.shard.count, m.total_images),
                ));
            }
        }
    }
    Ok(())
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

/// Removes the temporary files (`.NAME.tmp-...`) an interrupted merge left in `dir`.
fn remove_temps(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Whether image `k` of an earlier run of this merge is complete in `out`: its record equal to the shard's
/// (written last, after its image and latent).
fn already_merged(out: &Path, c: &Checked) -> bool {
    std::fs::read(out.join(record_name(c.record.index))).is_ok_and(|b| b == c.bytes)
        && out.join(&c.record.file_name).is_file()
        && c.record.latent.as_ref().is_none_or(|l| out.join(l).is_file())
}

/// `instagen merge`: see the module documentation.
pub fn merge(o: &MergeOptions) -> Result<MergeReport> {
    let shards = read_shards(&o.shards)?;
    let manifest = merged_manifest(&shards, &o.command);
    let resume = check_out(&o.out, &shards, &manifest)?;
    let categories = manifest.categories().map_err(|e| invalid(&shards[0].dir.join(MANIFEST), e))?;
    let n = shards.len() as u64;

    // Check everything before writing anything.
    for s in &shards {
        check_no_strays(s)?;
    }
    let checked: Vec<Result<Checked>> = (0..manifest.total_images)
        .into_par_iter()
        .map(|k| {
            let s = &shards[(k % n) as usize];
            check_index(&s.dir, k, &s.manifest, &categories)
        })
        .collect();
    let checked: Vec<Checked> = checked.into_iter().collect::<Result<_>>()?;
    let mut first_latent: Option<(u64, [usize; 3])> = None;
    for c in &checked {
        if let Some(shape) = c.latent_shape {
            match first_latent {
                None => first_latent = Some((c.record.index, shape)),
                Some((k0, s0)) if s0 != shape => {
                    let s = &shards[(c.record.index % n) as usize];
                    return Err(invalid(
                        &s.dir.join(latent_name(c.record.index)),
                        format!("tensor 'latent' is {shape:?}; image {k0}'s is {s0:?} (one run has one latent shape)"),
                    ));
                }
                Some(_) => {}
            }
        }
    }

    // Write: the manifest first, then per image its files and its record last, then instances.json.
    let out = &o.out;
    for sub in [IMAGES, LATENTS, RECORDS] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        remove_temps(&d)?;
    }
    remove_temps(out)?;
    if !resume {
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(format!("{MANIFEST}: {e}")))?;
        write_atomic(&out.join(MANIFEST), &bytes).map_err(|e| Error::io(out.join(MANIFEST), e))?;
    }
    let mut report = MergeReport { out: out.clone(), shards: shards.len(), images: manifest.total_images, ..MergeReport::default() };
    for c in &checked {
        let r = &c.record;
        report.boxes += r.boxes.len() as u64;
        if resume && already_merged(out, c) {
            report.resumed += 1;
            continue;
        }
        let src = &shards[(r.index % n) as usize].dir;
        for f in std::iter::once(&r.file_name).chain(r.latent.as_ref()) {
            if link_or_copy(&src.join(f), &out.join(f))? {
                report.linked += 1;
            } else {
                report.copied += 1;
            }
        }
        let dst = out.join(record_name(r.index));
        write_atomic(&dst, &c.bytes).map_err(|e| Error::io(&dst, e))?;
    }
    let records: Vec<Record> = checked.into_iter().map(|c| c.record).collect();
    let instances = super::instances_json(&manifest, &records)?;
    let path = out.join(super::INSTANCES);
    write_atomic(&path, &instances).map_err(|e| Error::io(&path, e))?;
    Ok(report)
}
