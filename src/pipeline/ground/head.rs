//! Head folders and `instagen ground init`.
//!
//! A head folder `HEAD/` holds `config.json` (the `GroundingConfig`), `levels.json` (the t=1 feature levels the
//! head was made for: names, `[h, w, C]` shapes, the SD folder and its image side) and `head.safetensors` (the
//! parameters, f32). `ground init` writes a random one for an SD model's feature shapes; `ground train` starts from
//! one and writes its result as `RUN/head/`; `ground infer --head` takes either.

use std::path::{Path, PathBuf};

use super::features::Level;
use crate::error::{Error, Result};
use crate::models::grounding::{self, GroundingConfig};
use crate::models::weights::SdCheckpoint;
use crate::params::ParamStore;

pub const CONFIG: &str = "config.json";
pub const LEVELS: &str = "levels.json";
pub const PARAMS: &str = "head.safetensors";

/// What `levels.json` records.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelsFile {
    /// The SD folder the head was made for (informative).
    pub sd: String,
    /// The image side the features come from.
    pub image_side: usize,
    /// `(name, [h, w, C])` per level, largest first.
    pub levels: Vec<(String, [usize; 3])>,
}

/// A loaded head.
#[derive(Clone, Debug)]
pub struct Head {
    pub dir: PathBuf,
    pub config: GroundingConfig,
    pub levels: Vec<Level>,
    pub image_side: usize,
    pub params: ParamStore,
}

impl Head {
    /// Reads `dir` (a head folder, or a run folder with `head/`), checking the parameters against the config and the
    /// levels' channels against the config's `feature_channels`.
    pub fn open(dir: &Path) -> Result<Head> {
        let dir = if !dir.join(CONFIG).exists() && dir.join("head").join(CONFIG).exists() { dir.join("head") } else { dir.to_path_buf() };
        if !dir.join(CONFIG).exists() {
            return Err(Error::io(dir.join(CONFIG), std::io::Error::other("not a head folder (config.json, levels.json, head.safetensors) nor a run folder with head/")));
        }
        let config = GroundingConfig::from_file(&dir.join(CONFIG))?;
        let lp = dir.join(LEVELS);
        let text = crate::util::files::read_text(&lp, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&lp, e))?;
        let lf: LevelsFile = crate::util::json::from_object(&text).map_err(|e| Error::Weights { path: lp.clone(), msg: e })?;
        let chans: Vec<usize> = lf.levels.iter().map(|(_, s)| s[2]).collect();
        if chans != config.feature_channels {
            return Err(Error::Weights {
                path: lp,
                msg: format!("level channels {chans:?} differ from feature_channels {:?} of {}", config.feature_channels, dir.join(CONFIG).display()),
            });
        }
        let pp = dir.join(PARAMS);
        let params = ParamStore::load_safetensors(&pp)?;
        grounding::check_params(&config, &params).map_err(|e| Error::Weights { path: pp.clone(), msg: e.to_string() })?;
        let levels = lf.levels.iter().map(|(n, s)| Level { name: n.clone(), shape: *s }).collect();
        Ok(Head { dir, config, levels, image_side: lf.image_side, params })
    }

    /// Writes a head folder (into a temporary sibling, then renamed over `dir`).
    pub fn save(dir: &Path, config: &GroundingConfig, levels: &[Level], image_side: usize, sd: &Path, params: &ParamStore) -> Result<()> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = dir.file_name().map_or("head".into(), |n| n.to_string_lossy().to_string());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        crate::util::files::write_atomic(&tmp.join(CONFIG), config.to_json().as_bytes()).map_err(|e| Error::io(tmp.join(CONFIG), e))?;
        let lf = LevelsFile {
            sd: crate::util::files::canonical(sd).display().to_string(),
            image_side,
            levels: levels.iter().map(|l| (l.name.clone(), l.shape)).collect(),
        };
        let text = serde_json::to_string_pretty(&lf).map_err(|e| Error::Other(format!("levels.json: {e}")))?;
        crate::util::files::write_atomic(&tmp.join(LEVELS), text.as_bytes()).map_err(|e| Error::io(tmp.join(LEVELS), e))?;
        params.save_safetensors(&tmp.join(PARAMS))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    }

    /// The feature levels of `levels` (an SD model's) must be this head's: an error names the level.
    pub fn check_levels(&self, sd: &Path, levels: &[Level]) -> Result<()> {
        let names = |l: &[Level]| l.iter().map(|l| format!("{} {:?}", l.name, l.shape)).collect::<Vec<_>>().join(", ");
        if levels.len() != self.levels.len() {
            return Err(Error::Weights {
                path: self.dir.join(LEVELS),
                msg: format!("the head has {} feature levels ({}), the SD model {} gives {} ({})", self.levels.len(), names(&self.levels), sd.display(), levels.len(), names(levels)),
            });
        }
        for (a, b) in self.levels.iter().zip(levels) {
            if a != b {
                return Err(Error::Weights {
                    path: self.dir.join(LEVELS),
                    msg: format!("feature level {} is {:?} in the head, but the SD model {} gives {} {:?}", a.name, a.shape, sd.display(), b.name, b.shape),
                });
            }
        }
        Ok(())
    }
}

/// `--config`: `tiny`, `default` (the paper's sizes) or a config file; the feature channels and text width are
/// set from the SD model (a file's own are replaced, with a note when they differed).
pub fn config_for(spec: &str, sd: &Path) -> Result<(GroundingConfig, Vec<Level>, usize)> {
    let ckpt = SdCheckpoint::open(sd)?;
    let unet = ckpt.unet_config()?;
    let text_dim = ckpt.text_config.hidden_size;
    let base = match spec {
        "tiny" => GroundingConfig::tiny(Vec::new(), text_dim),
        "default" | "paper" => GroundingConfig::paper(),
        file => GroundingConfig::from_file(Path::new(file))?,
    };
    let cfg = base.for_sd(&unet, text_dim)?;
    // The level shapes at the model's native size.
    let side = unet.sample_size;
    let shape = crate::models::unet::UNetShape {
        batch: 2,
        height: side,
        width: side,
        context_len: 1,
        dtype: crate::tensor::DType::F32,
        features: true,
        taps: false,
    };
    let ug = crate::models::unet::build(&unet, &shape).map_err(|e| e.building("the UNet graph for its feature shapes"))?;
    let levels = ug
        .features
        .iter()
        .map(|(n, id)| {
            let s = ug.graph.shape(*id);
            Level { name: n.clone(), shape: [s[1], s[2], s[3]] }
        })
        .collect();
    Ok((cfg, levels, side * ckpt.vae_config.downscale()))
}

/// `instagen ground init`: a random head for `sd`'s feature shapes.
pub fn init(spec: &str, sd: &Path, out: &Path, seed: u64) -> Result<String> {
    let (cfg, levels, side) = config_for(spec, sd)?;
    let params = grounding::init_params(&cfg, seed)?;
    Head::save(out, &cfg, &levels, side, sd, &params)?;
    let n: usize = params.iter().map(|(_, t)| t.numel()).sum();
    let lv: Vec<String> = levels.iter().map(|l| format!("{} {}x{}x{}", l.name, l.shape[0], l.shape[1], l.shape[2])).collect();
    Ok(format!(
        "grounding head ({spec}): hidden {}, {} queries, {} + {} layers, {n} parameters\nfeature levels of {} ({side}x{side} images): {}\nwrote {}\n",
        cfg.hidden,
        cfg.queries,
        cfg.enc_layers,
        cfg.dec_layers,
        sd.display(),
        lv.join(", "),
        out.display()
    ))
}
