//! The pipeline config of `instagen run` (TOML): a `[run]` table of global settings, a `[data]` table of the real
//! detection data, and one table per stage with that stage's options (see `tools/ovcoco.toml` for every key).
//!
//! - Unknown keys are errors naming the key, the table and the line; a wrong type names the key and the line.
//! - Relative paths are taken from the config file's folder.
//! - Every stage table has `enabled` (default true), `use` (a path: the stage's output is given from outside and
//!   the stage does not run) and `args` (extra flags appended to the stage's command line). The other keys map to
//!   the stage command's flags; a key left out leaves the command's default.
//! - What `use` names per stage: finetune a diffusers folder; head_init a head folder; generate_* a dataset folder
//!   (with instances.json); labeller a detector (a torchvision-layout .safetensors, or a folder with
//!   model.safetensors [+ labels.json]) with `names` a COCO file naming its category ids; label a grounding labels
//!   file; ground_train a `ground train` run folder (head/ and the student snapshot selftrain starts from);
//!   selftrain a head folder; detect a folder with model.safetensors [+ labels.json].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn d_true() -> bool {
    true
}
fn d_seed() -> u64 {
    42
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub run: RunSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub finetune: FinetuneStage,
    #[serde(default)]
    pub head_init: HeadInitStage,
    #[serde(default)]
    pub generate_base: GenerateStage,
    #[serde(default)]
    pub labeller: DetectTrainStage,
    #[serde(default)]
    pub label: LabelStage,
    #[serde(default)]
    pub ground_train: GroundTrainStage,
    #[serde(default)]
    pub generate_novel: GenerateStage,
    #[serde(default)]
    pub selftrain: SelftrainStage,
    #[serde(default)]
    pub generate_final: GenerateStage,
    #[serde(default)]
    pub detect: DetectTrainStage,
    #[serde(default)]
    pub eval: EvalStage,
}

/// Global settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// The run folder (`--out` overrides it).
    pub out: Option<PathBuf>,
    /// The ORIGINAL SD diffusers folder (t=1 features, category embeddings; the sampler when finetune is off).
    pub sd: PathBuf,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// `cpu`, `cpu-reference`, `emu` or `cuda`, passed to every stage that takes `--backend`.
    pub backend: Option<String>,
    /// Base category names (labelled by the detector; the fine-tuning and real training classes).
    pub base: Vec<String>,
    /// Novel category names (self-training; no real labels).
    #[serde(default)]
    pub novel: Vec<String>,
}

/// The real detection data (COCO instances files and their image folders).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub train_instances: Option<PathBuf>,
    pub train_images: Option<PathBuf>,
    pub val_instances: Option<PathBuf>,
    pub val_images: Option<PathBuf>,
}

/// `instagen finetune` (its output: RUN/model, a diffusers folder).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// A fine-tuned diffusers folder to use instead of running the stage.
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    pub batch: Option<u64>,
    pub lr: Option<f64>,
    pub ema_decay: Option<f64>,
    pub resolution: Option<u64>,
    pub save_every: Option<u64>,
    pub dtype: Option<String>,
}

/// `instagen ground init` (its output: a head folder).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadInitStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    /// `tiny`, `default` or a config JSON file.
    pub config: Option<String>,
}

/// `instagen generate` (its output: a dataset folder).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The categories to generate (default: base for generate_base, base + novel for generate_novel and
    /// generate_final).
    pub categories: Option<Vec<String>>,
    /// `--novel`: the categories that come first in each prompt, the others drawn from `categories` (default:
    /// `[run] novel` for generate_novel, the OV-COCO novel set; none for the other two).
    pub novel: Option<Vec<String>>,
    pub images_per_category: Option<u64>,
    pub per_prompt: Option<u64>,
    pub batch: Option<u64>,
    pub steps: Option<u64>,
    pub guidance: Option<f64>,
    pub score: Option<f64>,
    pub seed: Option<u64>,
    pub format: Option<String>,
    pub dtype: Option<String>,
}

/// `instagen detect train` (the labeller on the real base data, or the final detector on real + synthetic data).
/// Its output: RUN/model.safetensors and RUN/labels.json.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectTrainStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// A detector run folder (model.safetensors [+ labels.json]) to use instead of training one.
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Labeller only: a COCO file whose `categories` name the given detector's category ids (default:
    /// `[data] train_instances`).
    pub names: Option<PathBuf>,
    /// Detect only: also train on the real base data (default true when `[data] train_instances` is set).
    pub real: Option<bool>,
    /// Detect only: the short sides of the synthetic images (the real ones use `min_size`).
    pub synthetic_min_size: Option<Vec<u64>>,
    pub depth: Option<u64>,
    pub trainable_layers: Option<u64>,
    pub min_size: Option<Vec<u64>>,
    pub max_size: Option<u64>,
    pub weights: Option<PathBuf>,
    pub backbone_weights: Option<PathBuf>,
    pub batch: Option<u64>,
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub lr: Option<f64>,
    pub warmup_iters: Option<u64>,
    /// Epochs at which the rate drops x0.1 (default torchvision's [8, 11]).
    pub milestones: Option<Vec<u64>>,
    pub save_every: Option<u64>,
    pub workers: Option<u64>,
    /// More keys of the detector run config's `model` section (`anchor_sizes`, `rpn_batch_size_per_image`,
    /// `roi_batch_size_per_image`, `representation_size`, `detections_per_img`, ...; see `instagen detect
    /// train`), for those this table has no key of its own.
    pub model: Option<toml::Table>,
}

/// `instagen detect infer` with the labeller on the generated base images, then `instagen ground label`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabelStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// A grounding labels file to use instead.
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    /// Extra flags of `ground label`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra flags of `detect infer`.
    #[serde(default)]
    pub infer_args: Vec<String>,
    pub alpha: Option<f64>,
    pub score_thresh: Option<f64>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
}

/// `instagen ground train` (its output: a run folder with head/).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroundTrainStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub batch: Option<u64>,
    pub lr: Option<f64>,
    pub teacher_epoch: Option<u64>,
    pub lr_drop_epoch: Option<u64>,
    pub save_every: Option<u64>,
    /// Cache the t=1 features in the stage folder (default true).
    pub features_cache: Option<bool>,
}

/// `instagen ground selftrain` (its output: a run folder with head/).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelftrainStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(rename = "use")]
    pub given: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    pub beta: Option<f64>,
    pub momentum: Option<f64>,
    pub nms: Option<f64>,
    pub steps: Option<u64>,
    pub save_every: Option<u64>,
}

/// `instagen detect eval` of the final detector on `[data] val_*`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default)]
    pub args: Vec<String>,
    /// The base / novel / all AP50 split: `ovcoco`, or a JSON file (a world.json, or `{"base": [names],
    /// "novel": [names]}`; a relative path is from the config's folder).
    pub split: Option<String>,
    pub score_thresh: Option<f64>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
}

impl DetectTrainStage {
    /// The `model` section of the detector run config this table gives (its keys and `model`'s extra keys),
    /// checked against the detector's model settings.
    pub fn model_section(&self) -> std::result::Result<serde_json::Map<String, serde_json::Value>, String> {
        let mut m = serde_json::Map::new();
        let own: [(&str, Option<serde_json::Value>); 6] = [
            ("depth", self.depth.map(|v| v.into())),
            ("trainable_layers", self.trainable_layers.map(|v| v.into())),
            ("min_size", self.min_size.as_ref().map(|v| serde_json::json!(v))),
            ("max_size", self.max_size.map(|v| v.into())),
            ("weights", self.weights.as_ref().map(|v| serde_json::json!(v))),
            ("backbone_weights", self.backbone_weights.as_ref().map(|v| serde_json::json!(v))),
        ];
        if let Some(extra) = &self.model {
            for (k, v) in extra {
                if own.iter().any(|(o, _)| o == k) {
                    return Err(format!("{k:?} is a key of the table itself: set it there"));
                }
                m.insert(k.clone(), serde_json::to_value(v).map_err(|e| format!("{k}: {e}"))?);
            }
        }
        for (k, v) in own {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        let parsed: crate::pipeline::detect::config::ModelConfig =
            serde_json::from_value(serde_json::Value::Object(m.clone())).map_err(|e| e.to_string())?;
        parsed.validate()?;
        Ok(m)
    }
}

macro_rules! default_stage {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // Every field is optional except `enabled`: an empty table gives the defaults.
                toml::from_str("").expect("an empty stage table")
            }
        }
    )*};
}
default_stage!(FinetuneStage, HeadInitStage, GenerateStage, DetectTrainStage, LabelStage, GroundTrainStage, SelftrainStage, EvalStage);

/// The name of the innermost `[table]` (or `[[array]]`) header before byte `offset` of `text` (`top level`
/// when none).
fn table_at(text: &str, offset: usize) -> String {
    let mut table = None;
    for line in text[..offset.min(text.len())].lines() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[');
            let end = name.find(']').unwrap_or(name.len());
            table = Some(name[..end].trim().to_string());
        }
    }
    table.map_or("the top level".into(), |t| format!("table [{t}]"))
}

impl PipelineConfig {
    /// Parses TOML text; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig> {
        toml::from_str(text).map_err(|e| {
            let place = e.span().map(|s| format!(" (in {})", table_at(text, s.start))).unwrap_or_default();
            Error::Other(format!("{}{place}: {}", path.display(), e.to_string().trim_end()))
        })
    }

    /// `text` with the overrides `sets` (`TABLE.KEY=VALUE`, the value a TOML value or else a string) applied.
    pub fn parse_with(path: &Path, text: &str, sets: &[String]) -> Result<PipelineConfig> {
        // The file alone first: its errors name the line.
        let parsed = Self::parse(path, text)?;
        if sets.is_empty() {
            return Ok(parsed);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        for set in sets {
            let bad = |m: &str| Error::Other(format!("--set {set}: {m}"));
            let (key, value) = set.split_once('=').ok_or_else(|| bad("expected TABLE.KEY=VALUE"))?;
            let (table, key) = key.trim().split_once('.').ok_or_else(|| bad("expected TABLE.KEY=VALUE"))?;
            if table.is_empty() || key.is_empty() || key.contains('.') {
                return Err(bad("expected TABLE.KEY=VALUE"));
            }
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let t = doc.entry(table.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            t.as_table_mut().ok_or_else(|| bad(&format!("{table} is not a table")))?.insert(key.to_string(), value);
        }
        toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| Error::Other(format!("{} with --set {}: {}", path.display(), sets.join(" --set "), e.to_string().trim_end())))
    }

    /// Reads `path`, resolves relative paths from its folder, checks the names.
    pub fn load(path: &Path) -> Result<PipelineConfig> {
        Self::load_with(path, &[])
    }

    /// [`load`](Self::load) with `--set` overrides ([`parse_with`](Self::parse_with)); relative paths in them are
    /// from the config's folder too.
    pub fn load_with(path: &Path, sets: &[String]) -> Result<PipelineConfig> {
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        let mut c = Self::parse_with(path, &text, sets)?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        c.resolve_paths(base);
        c.check(path)?;
        Ok(c)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                fix(p)
            }
        };
        fix_opt(&mut self.run.out);
        fix(&mut self.run.sd);
        for p in [&mut self.data.train_instances, &mut self.data.train_images, &mut self.data.val_instances, &mut self.data.val_images] {
            fix_opt(p);
        }
        fix_opt(&mut self.finetune.given);
        fix_opt(&mut self.head_init.given);
        if let Some(c) = &mut self.head_init.config {
            if c != "tiny" && c != "default" && Path::new(c).is_relative() {
                *c = base.join(&*c).to_string_lossy().into_owned();
            }
        }
        for g in [&mut self.generate_base, &mut self.generate_novel, &mut self.generate_final] {
            fix_opt(&mut g.given);
        }
        for d in [&mut self.labeller, &mut self.detect] {
            fix_opt(&mut d.given);
            fix_opt(&mut d.names);
            fix_opt(&mut d.weights);
            fix_opt(&mut d.backbone_weights);
        }
        if let Some(sp) = &mut self.eval.split
            && crate::detection::eval::split_by_name(sp).is_none()
            && Path::new(sp.as_str()).is_relative()
        {
            *sp = base.join(&*sp).to_string_lossy().into_owned();
        }
        fix_opt(&mut self.label.given);
        fix_opt(&mut self.ground_train.given);
        fix_opt(&mut self.selftrain.given);
    }

    /// Category names and the backend: what the stages cannot check until they run.
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Error::Other(format!("{}: {m}", path.display()));
        if let Some(b) = &self.run.backend {
            if !["cpu", "cpu-reference", "emu", "cuda"].contains(&b.as_str()) {
                return Err(bad(format!("[run] backend \"{b}\" is not one of cpu, cpu-reference, emu, cuda")));
            }
        }
        for (table, d) in [("labeller", &self.labeller), ("detect", &self.detect)] {
            d.model_section().map_err(|m| bad(format!("[{table}] model: {m}")))?;
        }
        if self.run.base.is_empty() {
            return Err(bad("[run] base is empty: the pipeline needs base categories".into()));
        }
        let mut seen = std::collections::HashSet::new();
        let lists = [("[run] base", &self.run.base), ("[run] novel", &self.run.novel)];
        for (what, list) in lists {
            for n in list {
                if n.trim().is_empty() || n.contains(',') || n.chars().any(char::is_control) {
                    return Err(bad(format!("{what}: category name {n:?} is empty or holds a comma or a control character")));
                }
                if !seen.insert(n.as_str()) {
                    return Err(bad(format!("{what}: category {n:?} is listed twice (base and novel must be distinct)")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[run]
out = "out"
sd = "sd"
base = ["person", "dog"]
novel = ["cat"]

[generate_base]
images_per_category = 4
steps = 2
"#;

    fn parse(text: &str) -> std::result::Result<PipelineConfig, String> {
        PipelineConfig::parse(Path::new("p.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.run.seed, 42);
        assert_eq!(c.generate_base.images_per_category, Some(4));
        assert!(c.finetune.enabled && c.generate_novel.enabled && c.generate_novel.images_per_category.is_none());
        assert!(c.detect.args.is_empty() && c.eval.split.is_none());
    }

    #[test]
    fn hostile_configs_name_the_key_table_and_line() {
        // An unknown key in a stage table.
        let e = parse(&format!("{GOOD}\n[ground_train]\nepochs = 2\nepoch = 3\n")).unwrap_err();
        assert!(e.contains("p.toml") && e.contains("epoch") && e.contains("[ground_train]") && e.contains("line 14"), "{e}");
        // An unknown table.
        let e = parse(&format!("{GOOD}\n[generate_basis]\nsteps = 2\n")).unwrap_err();
        assert!(e.contains("generate_basis"), "{e}");
        // A wrong type.
        let e = parse(&GOOD.replace("steps = 2", "steps = \"two\"")).unwrap_err();
        assert!(e.contains("line 10") && e.contains("[generate_base]") && e.contains("steps = \"two\"") && e.contains("u64"), "{e}");
        // A missing required key.
        let e = parse(&GOOD.replace("sd = \"sd\"\n", "")).unwrap_err();
        assert!(e.contains("sd"), "{e}");
        // Malformed TOML.
        let e = parse(&GOOD.replace("[generate_base]", "[generate_base")).unwrap_err();
        assert!(e.contains("line 8"), "{e}");
    }

    #[test]
    fn set_overrides_keys_and_names_bad_ones() {
        let p = Path::new("p.toml");
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = PipelineConfig::parse_with(p, GOOD, &sets(&["generate_base.steps=7", "finetune.enabled=false", "run.sd=/abs/sd", "detect.model={ representation_size = 256 }", "eval.split=world.json"])).unwrap();
        assert_eq!(c.generate_base.steps, Some(7));
        assert!(!c.finetune.enabled);
        assert_eq!(c.run.sd, PathBuf::from("/abs/sd"));
        assert_eq!(c.detect.model_section().unwrap()["representation_size"], 256);
        assert_eq!(c.eval.split.as_deref(), Some("world.json"));
        // Unchanged keys keep the file's values.
        assert_eq!(c.generate_base.images_per_category, Some(4));
        for (set, want) in [
            ("generate_base.stepz=7", "stepz"),
            ("generate_base.steps=\"x\"", "u64"),
            ("steps=7", "TABLE.KEY=VALUE"),
            ("generate_base.steps", "TABLE.KEY=VALUE"),
            ("run.seed.x=1", "TABLE.KEY=VALUE"),
        ] {
            let e = PipelineConfig::parse_with(p, GOOD, &sets(&[set])).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(set.split('=').next().unwrap()), "{set}: {e}");
        }
    }

    #[test]
    fn detector_model_settings_are_checked_at_load() {
        let d = std::env::temp_dir().join(format!("instagen_runcfg_model_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("p.toml");
        for (extra, want) in [
            ("[detect]\nmodel = { anchor_sizes = [[16], [32]] }\n", "[detect] model: model.anchor_sizes needs one list per FPN level (5), got 2"),
            ("[labeller]\nmodel = { roi_batch = 128 }\n", "[labeller] model: unknown field `roi_batch`"),
            ("[detect]\nmodel = { depth = 50 }\n", "[detect] model: \"depth\" is a key of the table itself"),
            ("[detect]\nmodel = { representation_size = 0 }\n", "representation_size"),
        ] {
            std::fs::write(&p, format!("{GOOD}{extra}")).unwrap();
            let e = PipelineConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("p.toml"), "{extra}: {e}");
        }
        // A split file is resolved from the config's folder; ovcoco stays a name.
        std::fs::write(&p, format!("{GOOD}[eval]\nsplit = \"w/world.json\"\n")).unwrap();
        assert_eq!(PipelineConfig::load(&p).unwrap().eval.split, Some(d.join("w/world.json").to_string_lossy().into_owned()));
        std::fs::write(&p, format!("{GOOD}[eval]\nsplit = \"ovcoco\"\n")).unwrap();
        assert_eq!(PipelineConfig::load(&p).unwrap().eval.split.as_deref(), Some("ovcoco"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn load_resolves_paths_and_checks_names() {
        let d = std::env::temp_dir().join(format!("instagen_runcfg_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("p.toml");
        std::fs::write(&p, GOOD).unwrap();
        let c = PipelineConfig::load(&p).unwrap();
        assert_eq!(c.run.sd, d.join("sd"));
        assert_eq!(c.run.out, Some(d.join("out")));
        for (from, to, want) in [
            ("novel = [\"cat\"]", "novel = [\"dog\"]", "listed twice"),
            ("base = [\"person\", \"dog\"]", "base = []", "base is empty"),
            ("novel = [\"cat\"]", "novel = [\"cat,cow\"]", "comma"),
            ("sd = \"sd\"", "sd = \"sd\"\nbackend = \"gpu\"", "backend"),
        ] {
            std::fs::write(&p, GOOD.replace(from, to)).unwrap();
            let e = PipelineConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("p.toml"), "{from} -> {to}: {e}");
        }
        let e = PipelineConfig::load(&d.join("none.toml")).unwrap_err().to_string();
        assert!(e.contains("none.toml"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
