//! The embedded default models: the small SD and grounding head trained on the miniature world (issue 15),
//! committed under `models/world/` as `sd/` (a diffusers folder) and `head/` (a head folder) with `MANIFEST.json`:
//! per model the commands and seed that made it and, per file, its size and SHA-256. `instagen generate` without
//! `--sd` / `--head` takes them from there (or from `$INSTAGEN_MODELS`) after checking every file against the
//! manifest; `instagen models verify` runs the same check, `instagen models pack` writes such a folder from trained
//! models (SD tensors stored as f16: the engine converts them to the graph's dtype on load).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::tensor::DType;
use crate::util::files;

pub const MANIFEST: &str = "MANIFEST.json";
pub const FORMAT: &str = "instagen-models/1";
/// Where the embedded models are looked for instead of the source tree's `models/world/`.
pub const ENV: &str = "INSTAGEN_MODELS";
/// The budget of all embedded model files (issue 15: at most 20 MB).
pub const BUDGET_BYTES: u64 = 20_000_000;
/// The two models of a bundle, by manifest key and folder.
pub const SD: &str = "sd";
pub const HEAD: &str = "head";

/// `MANIFEST.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// What the models are, in words.
    pub description: String,
    /// The category names the models were trained on.
    pub categories: Vec<String>,
    /// `sd` and `head`.
    pub models: BTreeMap<String, ModelEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The commands that made the model from nothing, in order (run from the repository root).
    pub commands: Vec<String>,
    /// The seed of its training run.
    pub seed: u64,
    /// Every file of the model's folder (`MANIFEST.json`'s folder / the model key): relative path -> size, SHA-256.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// A checked bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub total_bytes: u64,
}

impl Bundle {
    pub fn sd(&self) -> PathBuf {
        self.dir.join(SD)
    }
    pub fn head(&self) -> PathBuf {
        self.dir.join(HEAD)
    }
}

impl std::fmt::Display for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {}", self.dir.display(), self.manifest.description)?;
        for (name, m) in &self.manifest.models {
            let bytes: u64 = m.files.values().map(|e| e.bytes).sum();
            writeln!(f, "  {name}: {} files, {:.2} MB, seed {}; made by:", m.files.len(), bytes as f64 / 1e6, m.seed)?;
            for c in &m.commands {
                writeln!(f, "    {c}")?;
            }
        }
        writeln!(
            f,
            "every file matches its SHA-256; {:.2} MB in all (budget {:.0} MB); categories: {}",
            self.total_bytes as f64 / 1e6,
            BUDGET_BYTES as f64 / 1e6,
            self.manifest.categories.join(", ")
        )
    }
}

/// `$INSTAGEN_MODELS`, else `models/world/` of the source tree this binary was built from.
pub fn default_dir() -> PathBuf {
    match std::env::var_os(ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join("world"),
    }
}

/// The SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A manifest path: relative, `/`-separated, no `.`/`..` parts.
fn plain_relative(p: &str) -> bool {
    !p.is_empty() && !p.contains('\\') && Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Every file under `dir` (relative `/`-separated paths, sorted); hidden names are refused (a temporary file left
/// by an interrupted write is not part of a model).
fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let p = e.path();
            let ft = e.file_type().map_err(|e| Error::io(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
                out.push(rel.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads `DIR/MANIFEST.json` and checks every model file against it: present, of its size and SHA-256, and no
/// file in a model folder that the manifest does not list. Errors name the file.
pub fn verify(dir: &Path) -> Result<Bundle> {
    let mp = dir.join(MANIFEST);
    if !mp.is_file() {
        return Err(Error::io(
            &mp,
            std::io::Error::other(format!(
                "no embedded models here (a folder written by `instagen models pack`; set {ENV} or pass --sd and --head)"
            )),
        ));
    }
    let text = files::read_text(&mp, Some(files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&mp, e))?;
    let manifest: Manifest = crate::util::json::from_object(&text).map_err(|e| Error::Other(format!("{}: {e}", mp.display())))?;
    let bad = |msg: String| Error::Other(format!("{}: {msg}", mp.display()));
    if manifest.format != FORMAT {
        return Err(bad(format!("format '{}', want '{FORMAT}'", manifest.format)));
    }
    for key in [SD, HEAD] {
        if !manifest.models.contains_key(key) {
            return Err(bad(format!("models: no '{key}' entry")));
        }
    }
    let mut total = 0u64;
    for (name, m) in &manifest.models {
        if name != SD && name != HEAD {
            return Err(bad(format!("models: unknown model '{name}' (want '{SD}' and '{HEAD}')")));
        }
        if m.commands.is_empty() {
            return Err(bad(format!("models.{name}.commands: empty (the commands that made the model are required)")));
        }
        let md = dir.join(name);
        for (rel, fe) in &m.files {
            if !plain_relative(rel) {
                return Err(bad(format!("models.{name}.files: '{rel}' is not a plain relative path")));
            }
            let p = md.join(rel);
            let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            if meta.len() != fe.bytes {
                return Err(Error::io(
                    &p,
                    std::io::Error::other(format!("{} bytes, {MANIFEST} says {} (a truncated or replaced file)", meta.len(), fe.bytes)),
                ));
            }
            let sha = sha256_file(&p)?;
            if sha != fe.sha256 {
                return Err(Error::io(&p, std::io::Error::other(format!("SHA-256 {sha} differs from {MANIFEST}'s {} (a changed file)", fe.sha256))));
            }
            total += fe.bytes;
        }
        for rel in list_files(&md)? {
            if !m.files.contains_key(&rel) {
                return Err(Error::io(md.join(&rel), std::io::Error::other(format!("not listed in {}", mp.display()))));
            }
        }
    }
    Ok(Bundle { dir: dir.to_path_buf(), manifest, total_bytes: total })
}

/// What `pack` is given: the trained models and, per model, how they were made.
#[derive(Clone, Debug)]
pub struct PackOptions {
    pub sd: PathBuf,
    pub head: PathBuf,
    /// A JSON file `{"description": ..., "categories": [...], "models": {"sd": {"commands": [...], "seed": N},
    /// "head": {...}}}` (the manifest without the file lists).
    pub provenance: PathBuf,
    pub out: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Provenance {
    description: String,
    categories: Vec<String>,
    models: BTreeMap<String, ProvenanceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvenanceEntry {
    commands: Vec<String>,
    seed: u64,
}

/// Copies `src` into `dst` (file by file); `.safetensors` files are rewritten with their float tensors cast to
/// `dtype` when given. Hidden files are skipped.
fn copy_model(src: &Path, dst: &Path, dtype: Option<DType>) -> Result<()> {
    for rel in list_files(src)? {
        if rel.split('/').any(|p| p.starts_with('.')) {
            continue;
        }
        let (s, d) = (src.join(&rel), dst.join(&rel));
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        match dtype {
            Some(dt) if rel.ends_with(".safetensors") => {
                let store = ParamStore::load_safetensors(&s)?;
                let mut out = ParamStore::new();
                for (k, t) in store.iter() {
                    out.insert(k, if t.dtype.is_float() { t.cast(dt) } else { t.clone() });
                }
                out.save_safetensors(&d)?;
            }
            _ => {
                std::fs::copy(&s, &d).map_err(|e| Error::io(&d, e))?;
            }
        }
    }
    Ok(())
}

/// Writes a bundle: `OUT/sd` (the SD folder, tensors as f16), `OUT/head` (the head folder as it is, its
/// `levels.json` naming `../sd`), `OUT/MANIFEST.json`, all in a temporary sibling renamed to `OUT` at the end (an
/// interrupted pack leaves no partial `OUT`); then verifies it. `OUT` must not exist or be empty. A bundle over
/// [`BUDGET_BYTES`] is an error (the folder is left for inspection).
pub fn pack(o: &PackOptions) -> Result<Bundle> {
    let text = files::read_text(&o.provenance, Some(files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&o.provenance, e))?;
    let prov: Provenance = crate::util::json::from_object(&text).map_err(|e| Error::Other(format!("{}: {e}", o.provenance.display())))?;
    for key in prov.models.keys() {
        if key != SD && key != HEAD {
            return Err(Error::Other(format!("{}: models: unknown model '{key}' (want '{SD}' and '{HEAD}')", o.provenance.display())));
        }
    }
    let entry = |key: &str| {
        prov.models.get(key).filter(|e| !e.commands.is_empty()).ok_or_else(|| {
            Error::Other(format!("{}: models.{key}: missing, or without commands", o.provenance.display()))
        })
    };
    let (sd_e, head_e) = (entry(SD)?, entry(HEAD)?);
    if prov.categories.is_empty() {
        return Err(Error::Other(format!("{}: categories: empty", o.provenance.display())));
    }
    // Both models must open (and fit together) before anything is written.
    crate::models::weights::SdCheckpoint::open(&o.sd)?;
    let head = crate::pipeline::ground::head::Head::open(&o.head)?;
    if o.out.exists() {
        let empty = std::fs::read_dir(&o.out).map_err(|e| Error::io(&o.out, e))?.next().is_none();
        if !empty {
            return Err(Error::io(&o.out, std::io::Error::other("exists and is not empty (pack writes a new folder)")));
        }
    }
    // Everything is written into a temporary sibling and renamed into place at the end, so an interrupted pack
    // leaves no half bundle at OUT (a rerun starts over; a stale temporary folder of a dead process is replaced).
    let parent = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = o.out.file_name().map_or("bundle".into(), |n| n.to_string_lossy().to_string());
    let tmp = parent.join(format!(".{name}.tmp-pack"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    copy_model(&o.sd, &tmp.join(SD), Some(DType::F16))?;
    crate::pipeline::ground::head::Head::save(&tmp.join(HEAD), &head.config, &head.levels, head.image_side, Path::new("../sd"), &head.params)?;
    // `Head::save` records the SD folder canonicalised; the bundle's head names its sibling.
    let lp = tmp.join(HEAD).join(crate::pipeline::ground::head::LEVELS);
    let mut lf: serde_json::Value =
        serde_json::from_str(&files::read_text(&lp, None).map_err(|e| Error::io(&lp, e))?).map_err(|e| Error::Other(format!("{}: {e}", lp.display())))?;
    lf["sd"] = serde_json::Value::String(format!("../{SD}"));
    let bytes = serde_json::to_vec_pretty(&lf).map_err(|e| Error::Other(e.to_string()))?;
    files::write_atomic(&lp, &bytes).map_err(|e| Error::io(&lp, e))?;

    let mut models = BTreeMap::new();
    for (key, e) in [(SD, sd_e), (HEAD, head_e)] {
        let md = tmp.join(key);
        let mut fl = BTreeMap::new();
        for rel in list_files(&md)? {
            let p = md.join(&rel);
            let bytes = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            fl.insert(rel, FileEntry { bytes, sha256: sha256_file(&p)? });
        }
        models.insert(key.to_string(), ModelEntry { commands: e.commands.clone(), seed: e.seed, files: fl });
    }
    let manifest = Manifest { format: FORMAT.into(), description: prov.description, categories: prov.categories, models };
    let mp = tmp.join(MANIFEST);
    let mut text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?;
    text.push('\n');
    files::write_atomic(&mp, text.as_bytes()).map_err(|e| Error::io(&mp, e))?;
    if o.out.exists() {
        std::fs::remove_dir(&o.out).map_err(|e| Error::io(&o.out, e))?;
    }
    std::fs::rename(&tmp, &o.out).map_err(|e| Error::io(&o.out, e))?;
    let bundle = verify(&o.out)?;
    if bundle.total_bytes > BUDGET_BYTES {
        let mut big: Vec<(String, u64)> =
            manifest.models.iter().flat_map(|(k, m)| m.files.iter().map(move |(r, e)| (format!("{k}/{r}"), e.bytes))).collect();
        big.sort_by_key(|b| std::cmp::Reverse(b.1));
        let top: Vec<String> = big.iter().take(3).map(|(n, b)| format!("{n} {:.2} MB", *b as f64 / 1e6)).collect();
        return Err(Error::Other(format!(
            "{}: {:.2} MB in all, over the {:.0} MB budget (largest: {})",
            o.out.display(),
            bundle.total_bytes as f64 / 1e6,
            BUDGET_BYTES as f64 / 1e6,
            top.join(", ")
        )));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_strings() {
        let d = std::env::temp_dir().join(format!("instagen-sha-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        // FIPS 180-2 appendix B.1.
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn manifest_paths_must_be_plain() {
        assert!(plain_relative("unet/diffusion_pytorch_model.safetensors"));
        for p in ["", "/etc/passwd", "../x", "a/../b", "./a", "a\\b"] {
            assert!(!plain_relative(p), "{p}");
        }
    }
}
