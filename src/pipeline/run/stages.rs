//! The InstaGen stages of a pipeline config, in order, as [`Stage`]s: their folders, command lines, inputs and
//! the in-process steps that derive files between them (category filtering and id remapping, the detector run
//! configs).
//!
//! | folder | command | output |
//! |---|---|---|
//! | `00-finetune` | `finetune` on the real base boxes | `run/model` (diffusers folder) |
//! | `01-head-init` | `ground init` | `head/` |
//! | `02-generate-base` | `generate` base categories (sampler: the fine-tuned SD; features: the original) | `data/` |
//! | `03-labeller` | `detect train` on the real base boxes | `run/model.safetensors`, `run/labels.json` |
//! | `04-label` | `detect infer` on `data/`, ids mapped by name, `ground label` | `labels.json` |
//! | `05-ground-train` | `ground train` | `run/` (`run/head`) |
//! | `06-generate-novel` | `generate` base + novel, `--novel` novel (OV-COCO: a novel category first in each prompt), with the trained head | `data/` |
//! | `07-selftrain` | `ground selftrain` | `run/head` |
//! | `08-generate-final` | `generate` base + novel with the self-trained head | `data/` |
//! | `09-detect` | `detect train` on the final images (+ the real base boxes) | `run/model.safetensors` |
//! | `10-eval` | `detect eval` on `[data] val_*` | `results.json`, the table in `log.txt` |
//!
//! Generated datasets number their categories 1..K in their own order; detectors use the real data's ids. The
//! label stage maps the labeller's detections to the dataset's ids by category name (dropping categories the
//! dataset lacks), and the detect stage writes a copy of the final instances with the real ids (names the real
//! data lacks get new ids above its largest).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::config::*;
use super::engine::{Input, Stage, Step};
use crate::error::{Error, Result};

/// The stage names, in order (their folders are `NN-name`).
pub const NAMES: [&str; 11] = [
    "finetune", "head-init", "generate-base", "labeller", "label", "ground-train", "generate-novel", "selftrain",
    "generate-final", "detect", "eval",
];

fn utf8(p: &Path) -> Result<String> {
    p.to_str().map(String::from).ok_or_else(|| Error::Other(format!("{}: the pipeline needs UTF-8 paths", p.display())))
}

/// A command line being built.
struct Cmd(Vec<String>);

impl Cmd {
    fn new(words: &[&str]) -> Cmd {
        Cmd(words.iter().map(|s| s.to_string()).collect())
    }
    fn arg(mut self, flag: &str, v: impl std::fmt::Display) -> Cmd {
        self.0.push(flag.into());
        self.0.push(v.to_string());
        self
    }
    fn opt<T: std::fmt::Display>(self, flag: &str, v: &Option<T>) -> Cmd {
        match v {
            Some(v) => self.arg(flag, v),
            None => self,
        }
    }
    fn path(self, flag: &str, p: &Path) -> Result<Cmd> {
        Ok(self.arg(flag, utf8(p)?))
    }
    fn backend(self, run: &RunSection) -> Cmd {
        self.opt("--backend", &run.backend)
    }
    fn extra(mut self, args: &[String]) -> Cmd {
        self.0.extend(args.iter().cloned());
        self
    }
}

/// A stage's output: where it is and what a consumer fingerprints.
#[derive(Clone, Debug)]
struct Product {
    path: PathBuf,
    input: Input,
}

fn given(path: &Path, table: &str) -> Product {
    Product { path: path.to_path_buf(), input: Input::Path { path: path.to_path_buf(), what: format!("[{table}] use") } }
}

fn external(path: &Path, what: &str) -> Input {
    Input::Path { path: path.to_path_buf(), what: what.to_string() }
}

fn need<'a>(p: &'a Option<Product>, consumer: &str, producer: &str) -> Result<&'a Product> {
    p.as_ref().ok_or_else(|| {
        Error::Other(format!(
            "stage {consumer} needs the output of stage {producer}, which is disabled: enable it or give its output as [{}] use = PATH",
            producer.replace('-', "_")
        ))
    })
}

fn need_data<'a>(p: &'a Option<PathBuf>, consumer: &str, key: &str) -> Result<&'a PathBuf> {
    p.as_ref().ok_or_else(|| Error::Other(format!("stage {consumer} needs [data] {key} (or disable the stage: [{}] enabled = false)", consumer.replace('-', "_"))))
}

fn read_json(p: &Path) -> Result<Value> {
    let text = crate::util::files::read_text(p, Some(crate::util::files::DATA_JSON_MAX_BYTES)).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {}", p.display(), crate::util::json::describe(text.as_bytes(), &e))))
}

fn write_json(p: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string(v).expect("json");
    crate::util::files::write_atomic(p, text.as_bytes()).map_err(|e| Error::io(p, e))
}

/// The `categories` of a COCO file: id -> name.
fn categories(p: &Path) -> Result<BTreeMap<u64, String>> {
    let v = read_json(p)?;
    let list = v.get("categories").and_then(Value::as_array).ok_or_else(|| Error::Other(format!("{}: no \"categories\" array", p.display())))?;
    let mut out = BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        let (Some(id), Some(name)) = (c.get("id").and_then(Value::as_u64), c.get("name").and_then(Value::as_str)) else {
            return Err(Error::Other(format!("{}: categories[{i}] lacks an integer id or a string name", p.display())));
        };
        out.insert(id, name.to_string());
    }
    Ok(out)
}

/// `from` (a COCO file) restricted to the categories named `keep` (and their annotations) -> `to`; returns the
/// kept ids. A name the file lacks is an error naming the file and `what`.
pub fn filter_coco(from: &Path, keep: &[String], to: &Path, what: &str) -> Result<Vec<u64>> {
    let mut v = read_json(from)?;
    let by_name: HashMap<String, u64> = categories(from)?.into_iter().map(|(id, n)| (n, id)).collect();
    let mut ids = Vec::new();
    for n in keep {
        ids.push(*by_name.get(n).ok_or_else(|| Error::Other(format!("{}: has no category {n:?} ({what})", from.display())))?);
    }
    let obj = v.as_object_mut().ok_or_else(|| Error::Other(format!("{}: not a JSON object", from.display())))?;
    let keep_cat = |c: &Value| c.get("id").and_then(Value::as_u64).is_some_and(|id| ids.contains(&id));
    if let Some(Value::Array(cats)) = obj.get_mut("categories") {
        cats.retain(keep_cat);
    }
    let keep_ann = |a: &Value| a.get("category_id").and_then(Value::as_u64).is_some_and(|id| ids.contains(&id));
    if let Some(Value::Array(anns)) = obj.get_mut("annotations") {
        anns.retain(keep_ann);
    }
    write_json(to, &v)?;
    Ok(ids)
}

/// COCO results `from` whose category ids `names` (a COCO file) names -> the same results with the ids of those
/// names in `dataset` (a COCO file) -> `to`; results of a category the dataset lacks are dropped. Returns (kept,
/// dropped).
pub fn remap_results(from: &Path, names: &Path, dataset: &Path, to: &Path) -> Result<(usize, usize)> {
    let src = categories(names)?;
    let dst: HashMap<String, u64> = categories(dataset)?.into_iter().map(|(id, n)| (n, id)).collect();
    let v = read_json(from)?;
    let list = v.as_array().ok_or_else(|| Error::Other(format!("{}: not a JSON array of results", from.display())))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let id = r.get("category_id").and_then(Value::as_u64).ok_or_else(|| Error::Other(format!("{}: [{i}] lacks an integer category_id", from.display())))?;
        let name = src.get(&id).ok_or_else(|| Error::Other(format!("{}: [{i}] category_id {id} is not a category of {}", from.display(), names.display())))?;
        if let Some(&new) = dst.get(name) {
            let mut r = r.clone();
            r["category_id"] = json!(new);
            out.push(r);
        }
    }
    let kept = out.len();
    write_json(to, &Value::Array(out))?;
    Ok((kept, list.len() - kept))
}

/// A generated dataset's instances (`dataset`) with the category ids of `real` (a COCO file) by name; names the
/// real file lacks get ids above its largest, in the dataset's order -> `to`.
pub fn synthetic_instances(dataset: &Path, real: Option<&Path>, to: &Path) -> Result<()> {
    let mut v = read_json(dataset)?;
    let real = match real {
        Some(r) => categories(r)?,
        None => BTreeMap::new(),
    };
    let by_name: HashMap<&str, u64> = real.iter().map(|(id, n)| (n.as_str(), *id)).collect();
    let mut next = real.keys().max().copied().unwrap_or(0) + 1;
    let mut map = HashMap::new();
    let cats = v.get_mut("categories").and_then(Value::as_array_mut).ok_or_else(|| Error::Other(format!("{}: no \"categories\" array", dataset.display())))?;
    for c in cats.iter_mut() {
        let id = c.get("id").and_then(Value::as_u64);
        let name = c.get("name").and_then(Value::as_str).map(String::from);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(Error::Other(format!("{}: a category lacks an integer id or a string name", dataset.display())));
        };
        let new = by_name.get(name.as_str()).copied().unwrap_or_else(|| {
            next += 1;
            next - 1
        });
        map.insert(id, new);
        c["id"] = json!(new);
    }
    if let Some(anns) = v.get_mut("annotations").and_then(Value::as_array_mut) {
        for (i, a) in anns.iter_mut().enumerate() {
            let id = a.get("category_id").and_then(Value::as_u64);
            let new = id.and_then(|id| map.get(&id)).ok_or_else(|| Error::Other(format!("{}: annotations[{i}]: unknown category_id", dataset.display())))?;
            a["category_id"] = json!(new);
        }
    }
    write_json(to, &v)
}

/// The `detect train` run config of a stage table (only the keys it sets; the rest keep the config's defaults).
fn detector_config(t: &DetectTrainStage, seed: u64, sources: Vec<Value>) -> Result<Value> {
    let model = t.model_section().map_err(|m| Error::Other(format!("detector model settings: {m}")))?;
    let mut optim = serde_json::Map::new();
    if let Some(lr) = t.lr {
        optim.insert("lr".into(), json!(lr));
    }
    if let Some(w) = t.warmup_iters {
        optim.insert("warmup_iters".into(), json!(w));
    }
    if let Some(m) = &t.milestones {
        optim.insert("milestones".into(), json!(m));
    }
    let mut c = json!({"model": model, "optimizer": optim, "sources": sources, "seed": seed});
    if let Some(b) = t.batch {
        c["batch"] = json!(b);
    }
    if let Some(e) = t.epochs {
        c["epochs"] = json!(e);
    }
    if let Some(s) = t.steps {
        c["steps"] = json!(s);
    }
    Ok(c)
}

fn detect_train_cmd(t: &DetectTrainStage, run: &RunSection, config: &Path, out: &Path) -> Result<Vec<String>> {
    Ok(Cmd::new(&["detect", "train"])
        .path("--config", config)?
        .path("--out", out)?
        .opt("--save-every", &t.save_every)
        .opt("--workers", &t.workers)
        .backend(run)
        .extra(&t.args)
        .0)
}

#[allow(clippy::too_many_arguments)]
fn generate_cmd(g: &GenerateStage, run: &RunSection, sd: &Path, features_sd: &Path, head: &Path, cats: &[String], novel: Option<&[String]>, out: &Path, table: &str) -> Result<Vec<String>> {
    let n = g.images_per_category.ok_or_else(|| Error::Other(format!("stage {}: [{table}] images_per_category is required", table.replace('_', "-"))))?;
    let mut c = Cmd::new(&["generate"]).path("--sd", sd)?;
    if sd != features_sd {
        c = c.path("--features-sd", features_sd)?;
    }
    Ok(c.path("--head", head)?
        .arg("--categories", cats.join(","))
        .opt("--novel", &novel.map(|n| n.join(",")))
        .arg("--images-per-category", n)
        .path("--out", out)?
        .arg("--seed", g.seed.unwrap_or(run.seed))
        .opt("--per-prompt", &g.per_prompt)
        .opt("--batch", &g.batch)
        .opt("--steps", &g.steps)
        .opt("--guidance", &g.guidance)
        .opt("--score", &g.score)
        .opt("--format", &g.format)
        .opt("--dtype", &g.dtype)
        .backend(run)
        .extra(&g.args)
        .0)
}

fn config_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("config to json")
}

/// The stages of `cfg` with their folders under `out` (disabled stages and stages given by `use` left out).
pub fn build(cfg: &PipelineConfig, out: &Path) -> Result<Vec<Stage>> {
    let run = &cfg.run;
    let dir = |i: usize| out.join(format!("{i:02}-{}", NAMES[i]));
    let mut stages: Vec<Stage> = Vec::new();
    let sd = external(&run.sd, "[run] sd");
    let sd_product = Product { path: run.sd.clone(), input: sd.clone() };
    let novel_all: Vec<String> = run.base.iter().chain(&run.novel).cloned().collect();
    // A stage's recorded config is its table; what it takes from [run] and [data] is in its command lines and
    // inputs (the labeller and detect stages, whose in-process steps use more, add it to their table's record).
    let stage_config = |table: Value| json!({"stage": table});
    let mut add = |stages: &mut Vec<Stage>, i: usize, table: Value, inputs: Vec<Input>, steps: Vec<Step>| {
        let mut seen = Vec::new();
        let inputs = inputs
            .into_iter()
            .filter(|inp| {
                let key = format!("{inp:?}");
                let new = !seen.contains(&key);
                seen.push(key);
                new
            })
            .collect();
        stages.push(Stage { name: NAMES[i].into(), dir: dir(i), config: stage_config(table), inputs, steps });
    };

    // 00 finetune -> the sampler.
    let f = &cfg.finetune;
    let sampler = if let Some(p) = &f.given {
        given(p, "finetune")
    } else if f.enabled {
        let (inst, imgs) = (need_data(&cfg.data.train_instances, NAMES[0], "train_instances")?, need_data(&cfg.data.train_images, NAMES[0], "train_images")?);
        let cmd = Cmd::new(&["finetune"])
            .path("--weights", &run.sd)?
            .path("--data", inst)?
            .path("--images", imgs)?
            .path("--out", &dir(0).join("run"))?
            .arg("--categories", run.base.join(","))
            .arg("--seed", run.seed)
            .opt("--steps", &f.steps)
            .opt("--epochs", &f.epochs)
            .opt("--batch", &f.batch)
            .opt("--lr", &f.lr)
            .opt("--ema-decay", &f.ema_decay)
            .opt("--resolution", &f.resolution)
            .opt("--save-every", &f.save_every)
            .opt("--dtype", &f.dtype)
            .backend(run)
            .extra(&f.args)
            .0;
        let inputs = vec![sd.clone(), external(inst, "[data] train_instances"), external(imgs, "[data] train_images")];
        add(&mut stages, 0, config_value(f), inputs, vec![Step::exec(cmd, true)]);
        Product { path: dir(0).join("run/model"), input: Input::Stage(NAMES[0].into()) }
    } else {
        sd_product.clone()
    };

    // 01 head-init.
    let h = &cfg.head_init;
    let head0 = if let Some(p) = &h.given {
        Some(given(p, "head_init"))
    } else if h.enabled {
        let cmd = Cmd::new(&["ground", "init"])
            .arg("--config", h.config.as_deref().unwrap_or("default"))
            .path("--sd", &run.sd)?
            .path("--out", &dir(1).join("head"))?
            .arg("--seed", run.seed)
            .extra(&h.args)
            .0;
        let mut inputs = vec![sd.clone()];
        if let Some(c) = h.config.as_deref().filter(|c| *c != "tiny" && *c != "default") {
            inputs.push(external(Path::new(c), "[head_init] config"));
        }
        add(&mut stages, 1, config_value(h), inputs, vec![Step::exec(cmd, false)]);
        Some(Product { path: dir(1).join("head"), input: Input::Stage(NAMES[1].into()) })
    } else {
        None
    };

    // A generate stage: sampler + original SD + a head.
    let generate = |stages: &mut Vec<Stage>, add: &mut dyn FnMut(&mut Vec<Stage>, usize, Value, Vec<Input>, Vec<Step>), i: usize, g: &GenerateStage, table: &str, head: Option<&Product>, head_from: &str, default_cats: &[String], default_novel: Option<&[String]>| -> Result<Option<Product>> {
        if let Some(p) = &g.given {
            return Ok(Some(given(p, table)));
        }
        if !g.enabled {
            return Ok(None);
        }
        let head = head.ok_or_else(|| Error::Other(format!(
            "stage {} needs the output of stage {head_from}, which is disabled: enable it or give its output as [{}] use = PATH",
            NAMES[i], head_from.replace('-', "_")
        )))?;
        let cats = g.categories.clone().unwrap_or_else(|| default_cats.to_vec());
        if cats.is_empty() {
            return Err(Error::Other(format!("stage {}: no categories to generate (set [{table}] categories, or [run] novel)", NAMES[i])));
        }
        let novel = g.novel.as_deref().or(default_novel);
        if novel.is_some_and(|n| n.is_empty()) {
            return Err(Error::Other(format!("stage {}: [run] novel is empty (disable the stage: [{table}] enabled = false)", NAMES[i])));
        }
        let cmd = generate_cmd(g, run, &sampler.path, &run.sd, &head.path, &cats, novel, &dir(i).join("data"), table)?;
        add(stages, i, config_value(g), vec![sampler.input.clone(), sd.clone(), head.input.clone()], vec![Step::exec(cmd, false)]);
        Ok(Some(Product { path: dir(i).join("data"), input: Input::Stage(NAMES[i].into()) }))
    };

    // 02 generate-base.
    let gen_base = generate(&mut stages, &mut add, 2, &cfg.generate_base, "generate_base", head0.as_ref(), NAMES[1], &run.base, None)?;

    // 03 labeller: weights (+ labels) and the file naming its ids.
    let l = &cfg.labeller;
    let names_file = |consumer: &str| -> Result<PathBuf> {
        match &l.names {
            Some(n) => Ok(n.clone()),
            None => need_data(&cfg.data.train_instances, consumer, "train_instances").cloned(),
        }
    };
    let labeller: Option<(PathBuf, Option<PathBuf>, Input)> = if let Some(p) = &l.given {
        let input = given(p, "labeller").input;
        if p.is_dir() {
            let labels = p.join("labels.json");
            Some((p.join("model.safetensors"), labels.is_file().then_some(labels), input))
        } else {
            Some((p.clone(), None, input))
        }
    } else if l.enabled {
        let (inst, imgs) = (need_data(&cfg.data.train_instances, NAMES[3], "train_instances")?, need_data(&cfg.data.train_images, NAMES[3], "train_images")?);
        let d = dir(3);
        let (real, conf) = (d.join("real_base.json"), d.join("detector.json"));
        let (inst2, imgs2, base, seed, t) = (inst.clone(), imgs.clone(), run.base.clone(), run.seed, l.clone());
        let (real2, conf2) = (real.clone(), conf.clone());
        let prep = Step::internal(format!("{} restricted to [run] base -> real_base.json; detector.json", inst.display()), move |log| {
            let ids = filter_coco(&inst2, &base, &real2, "[run] base")?;
            let src = json!({"name": "real", "instances": real2, "images": imgs2, "classify": ids});
            write_json(&conf2, &detector_config(&t, seed, vec![src])?)?;
            writeln!(log, "{} base categories kept", ids.len()).map_err(|e| Error::io(&real2, e))
        });
        let cmd = detect_train_cmd(l, run, &conf, &d.join("run"))?;
        let rec = json!({"table": config_value(l), "base": run.base, "seed": run.seed, "train_instances": inst, "train_images": imgs});
        add(&mut stages, 3, rec, vec![external(inst, "[data] train_instances"), external(imgs, "[data] train_images")], vec![prep, Step::exec(cmd, true)]);
        Some((d.join("run/model.safetensors"), Some(d.join("run/labels.json")), Input::Stage(NAMES[3].into())))
    } else {
        None
    };

    // 04 label.
    let lb = &cfg.label;
    let labels = if let Some(p) = &lb.given {
        Some(given(p, "label"))
    } else if lb.enabled {
        let gd = need(&gen_base, NAMES[4], NAMES[2])?;
        let (weights, lmap, linput) = labeller.clone().ok_or_else(|| Error::Other(format!(
            "stage {} needs a labelling detector: enable [labeller] (trained on [data] train_*) or give one as [labeller] use = PATH", NAMES[4]
        )))?;
        let names = names_file(NAMES[4])?;
        let d = dir(4);
        let (raw, dets) = (d.join("detections_raw.json"), d.join("detections.json"));
        let mut infer = Cmd::new(&["detect", "infer"]).path("--weights", &weights)?;
        if let Some(m) = &lmap {
            infer = infer.path("--labels", m)?;
        }
        let infer = infer
            .path("--data", &gd.path.join("instances.json"))?
            .path("--images", &gd.path)?
            .path("--out", &raw)?
            .opt("--score-thresh", &lb.score_thresh)
            .opt("--min-size", &lb.min_size)
            .opt("--max-size", &lb.max_size)
            .backend(run)
            .extra(&lb.infer_args)
            .0;
        let (raw2, dets2, names2, inst2) = (raw.clone(), dets.clone(), names.clone(), gd.path.join("instances.json"));
        let remap = Step::internal(format!("detections_raw.json: category ids of {} -> the dataset's by name -> detections.json", names.display()), move |log| {
            let (kept, dropped) = remap_results(&raw2, &names2, &inst2, &dets2)?;
            writeln!(log, "{kept} detections kept, {dropped} of categories the dataset lacks dropped").map_err(|e| Error::io(&dets2, e))
        });
        let label = Cmd::new(&["ground", "label"])
            .path("--dataset", &gd.path)?
            .path("--detections", &dets)?
            .opt("--alpha", &lb.alpha)
            .path("--out", &d.join("labels.json"))?
            .extra(&lb.args)
            .0;
        let inputs = vec![gd.input.clone(), linput, external(&names, "[labeller] names or [data] train_instances")];
        add(&mut stages, 4, config_value(lb), inputs, vec![Step::exec(infer, false), remap, Step::exec(label, false)]);
        Some(Product { path: d.join("labels.json"), input: Input::Stage(NAMES[4].into()) })
    } else {
        None
    };

    // 05 ground-train -> a run folder.
    let gt = &cfg.ground_train;
    let gt_run = if let Some(p) = &gt.given {
        Some(given(p, "ground_train"))
    } else if gt.enabled {
        let labels = need(&labels, NAMES[5], NAMES[4])?;
        let head0 = need(&head0, NAMES[5], NAMES[1])?;
        let d = dir(5);
        let mut cmd = Cmd::new(&["ground", "train"])
            .path("--sd", &run.sd)?
            .path("--labels", &labels.path)?
            .path("--head", &head0.path)?
            .path("--out", &d.join("run"))?
            .arg("--seed", run.seed);
        if gt.features_cache.unwrap_or(true) {
            cmd = cmd.path("--features-cache", &d.join("features"))?;
        }
        let cmd = cmd
            .opt("--epochs", &gt.epochs)
            .opt("--steps", &gt.steps)
            .opt("--batch", &gt.batch)
            .opt("--lr", &gt.lr)
            .opt("--teacher-epoch", &gt.teacher_epoch)
            .opt("--lr-drop-epoch", &gt.lr_drop_epoch)
            .opt("--save-every", &gt.save_every)
            .backend(run)
            .extra(&gt.args)
            .0;
        add(&mut stages, 5, config_value(gt), vec![sd.clone(), labels.input.clone(), head0.input.clone()], vec![Step::exec(cmd, true)]);
        Some(Product { path: d.join("run"), input: Input::Stage(NAMES[5].into()) })
    } else {
        None
    };
    let head1 = gt_run.as_ref().map(|r| Product { path: r.path.join("head"), input: r.input.clone() });

    // 06 generate-novel.
    let gen_novel = generate(&mut stages, &mut add, 6, &cfg.generate_novel, "generate_novel", head1.as_ref(), NAMES[5], &novel_all, Some(&run.novel))?;

    // 07 selftrain -> a head.
    let st = &cfg.selftrain;
    let head2 = if let Some(p) = &st.given {
        Some(given(p, "selftrain"))
    } else if st.enabled {
        let gt_run = need(&gt_run, NAMES[7], NAMES[5])?;
        let novel = need(&gen_novel, NAMES[7], NAMES[6])?;
        if run.novel.is_empty() {
            return Err(Error::Other(format!("stage {}: [run] novel is empty (disable the stage: [selftrain] enabled = false)", NAMES[7])));
        }
        let d = dir(7);
        let cmd = Cmd::new(&["ground", "selftrain"])
            .path("--run", &gt_run.path)?
            .path("--novel-dataset", &novel.path)?
            .path("--out", &d.join("run"))?
            .arg("--novel-categories", run.novel.join(","))
            .opt("--beta", &st.beta)
            .opt("--momentum", &st.momentum)
            .opt("--nms", &st.nms)
            .opt("--steps", &st.steps)
            .opt("--save-every", &st.save_every)
            .backend(run)
            .extra(&st.args)
            .0;
        add(&mut stages, 7, config_value(st), vec![gt_run.input.clone(), novel.input.clone()], vec![Step::exec(cmd, true)]);
        Some(Product { path: d.join("run/head"), input: Input::Stage(NAMES[7].into()) })
    } else {
        head1.clone()
    };

    // 08 generate-final.
    let head_from = if st.enabled || st.given.is_some() { NAMES[7] } else { NAMES[5] };
    let gen_final = generate(&mut stages, &mut add, 8, &cfg.generate_final, "generate_final", head2.as_ref(), head_from, &novel_all, None)?;

    // 09 detect.
    let dt = &cfg.detect;
    let detector = if let Some(p) = &dt.given {
        Some(given(p, "detect"))
    } else if dt.enabled {
        let gd = need(&gen_final, NAMES[9], NAMES[8])?;
        let real = match (dt.real, &cfg.data.train_instances, &cfg.data.train_images) {
            (Some(false), _, _) | (None, None, _) => None,
            (_, Some(i), Some(m)) => Some((i.clone(), m.clone())),
            _ => {
                return Err(Error::Other(format!(
                    "stage {} trains on the real base data: it needs [data] train_instances and train_images (or [detect] real = false)",
                    NAMES[9]
                )))
            }
        };
        let d = dir(9);
        let (syn, conf) = (d.join("synthetic.json"), d.join("detector.json"));
        let (gen_dir, real2, base, seed, t, syn2, conf2) = (gd.path.clone(), real.clone(), run.base.clone(), run.seed, dt.clone(), syn.clone(), conf.clone());
        let real_base = d.join("real_base.json");
        let prep = Step::internal("the final dataset's instances with the real category ids -> synthetic.json; real_base.json; detector.json", move |log| {
            synthetic_instances(&gen_dir.join("instances.json"), real2.as_ref().map(|r| r.0.as_path()), &syn2)?;
            let mut syn_src = json!({"name": "synthetic", "instances": syn2, "images": gen_dir});
            if let Some(m) = &t.synthetic_min_size {
                syn_src["min_size"] = json!(m);
            }
            let mut sources = vec![syn_src];
            if let Some((inst, imgs)) = &real2 {
                let ids = filter_coco(inst, &base, &real_base, "[run] base")?;
                sources.push(json!({"name": "real", "instances": real_base, "images": imgs, "rpn_loss": false, "classify": ids}));
            }
            writeln!(log, "{} sources", sources.len()).map_err(|e| Error::io(&conf2, e))?;
            write_json(&conf2, &detector_config(&t, seed, sources)?)
        });
        let cmd = detect_train_cmd(dt, run, &conf, &d.join("run"))?;
        let mut inputs = vec![gd.input.clone()];
        if let Some((i, m)) = &real {
            inputs.push(external(i, "[data] train_instances"));
            inputs.push(external(m, "[data] train_images"));
        }
        let rec = json!({"table": config_value(dt), "base": run.base, "seed": run.seed, "real": real});
        add(&mut stages, 9, rec, inputs, vec![prep, Step::exec(cmd, true)]);
        Some(Product { path: d.join("run"), input: Input::Stage(NAMES[9].into()) })
    } else {
        None
    };

    // 10 eval.
    let ev = &cfg.eval;
    if ev.enabled {
        let det = need(&detector, NAMES[10], NAMES[9])?;
        let (inst, imgs) = (need_data(&cfg.data.val_instances, NAMES[10], "val_instances")?, need_data(&cfg.data.val_images, NAMES[10], "val_images")?);
        let mut cmd = Cmd::new(&["detect", "eval"]).path("--weights", &det.path.join("model.safetensors"))?;
        let labels = det.path.join("labels.json");
        if dt.given.is_none() || labels.is_file() {
            cmd = cmd.path("--labels", &labels)?;
        }
        let cmd = cmd
            .path("--data", inst)?
            .path("--images", imgs)?
            .path("--out", &dir(10).join("results.json"))?
            .opt("--split", &ev.split)
            .opt("--score-thresh", &ev.score_thresh)
            .opt("--min-size", &ev.min_size)
            .opt("--max-size", &ev.max_size)
            .backend(run)
            .extra(&ev.args)
            .0;
        let mut inputs = vec![det.input.clone(), external(inst, "[data] val_instances"), external(imgs, "[data] val_images")];
        if let Some(sp) = ev.split.as_deref().filter(|sp| crate::detection::eval::split_by_name(sp).is_none()) {
            inputs.push(external(Path::new(sp), "[eval] split"));
        }
        add(&mut stages, 10, config_value(ev), inputs, vec![Step::exec(cmd, false)]);
    }
    let _ = (f, &sampler);
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> PipelineConfig {
        let text = format!(
            "[run]\nsd = \"/m/sd\"\nbase = [\"person\", \"dog\"]\nnovel = [\"cat\"]\n[data]\ntrain_instances = \"/d/train.json\"\ntrain_images = \"/d/train\"\nval_instances = \"/d/val.json\"\nval_images = \"/d/val\"\n[generate_base]\nimages_per_category = 2\n[generate_novel]\nimages_per_category = 2\n[generate_final]\nimages_per_category = 3\n{extra}"
        );
        PipelineConfig::parse(Path::new("p.toml"), &text).unwrap()
    }

    fn names(st: &[Stage]) -> Vec<&str> {
        st.iter().map(|s| s.name.as_str()).collect()
    }

    fn cmd(st: &[Stage], name: &str, step: usize) -> String {
        st.iter().find(|s| s.name == name).unwrap().steps[step].describe()
    }

    #[test]
    fn the_full_pipeline_wires_each_stage_to_its_inputs() {
        let out = Path::new("/o");
        let st = build(&cfg(""), out).unwrap();
        assert_eq!(names(&st), NAMES);
        assert_eq!(st[2].dir, out.join("02-generate-base"));
        let g = cmd(&st, "generate-base", 0);
        assert!(g.contains("--sd /o/00-finetune/run/model --features-sd /m/sd --head /o/01-head-init/head --categories person,dog --images-per-category 2 --out /o/02-generate-base/data --seed 42"), "{g}");
        assert!(cmd(&st, "generate-novel", 0).contains("--head /o/05-ground-train/run/head --categories person,dog,cat --novel cat "));
        assert!(cmd(&st, "generate-final", 0).contains("--head /o/07-selftrain/run/head --categories person,dog,cat "));
        assert!(cmd(&st, "label", 0).contains("detect infer --weights /o/03-labeller/run/model.safetensors --labels /o/03-labeller/run/labels.json --data /o/02-generate-base/data/instances.json"));
        assert!(cmd(&st, "label", 2).contains("ground label --dataset /o/02-generate-base/data --detections /o/04-label/detections.json"));
        assert!(cmd(&st, "ground-train", 0).contains("--labels /o/04-label/labels.json --head /o/01-head-init/head --out /o/05-ground-train/run"));
        assert!(cmd(&st, "selftrain", 0).contains("--run /o/05-ground-train/run --novel-dataset /o/06-generate-novel/data --out /o/07-selftrain/run --novel-categories cat"));
        assert!(cmd(&st, "eval", 0).contains("--weights /o/09-detect/run/model.safetensors --labels /o/09-detect/run/labels.json --data /d/val.json"));
        assert!(cmd(&st, "finetune", 0).ends_with("[+ --resume when resuming]"));
        let ins = |n: &str| format!("{:?}", st.iter().find(|s| s.name == n).unwrap().inputs);
        assert!(ins("selftrain").contains("ground-train") && ins("selftrain").contains("generate-novel"), "{}", ins("selftrain"));
        assert!(ins("generate-base").contains("finetune") && ins("generate-base").contains("/m/sd") && ins("generate-base").contains("head-init"));
    }

    #[test]
    fn a_stage_records_only_what_it_uses() {
        let record = |c: &PipelineConfig| {
            build(c, Path::new("/o")).unwrap().iter().map(|s| format!("{:?} {}", s.steps.iter().map(Step::describe).collect::<Vec<_>>(), s.config)).collect::<Vec<_>>()
        };
        let a = record(&cfg(""));
        // The val data is eval's alone.
        let mut c = cfg("");
        c.data.val_instances = Some("/d/val2.json".into());
        let b = record(&c);
        assert_eq!(a[..10], b[..10]);
        assert_ne!(a[10], b[10]);
        // The base list reaches finetune (its command), the labeller and detect (their records).
        let mut c = cfg("");
        c.run.base = vec!["person".into(), "dog".into(), "cow".into()];
        let b = record(&c);
        for i in [0, 3, 9] {
            assert_ne!(a[i], b[i], "{}", NAMES[i]);
        }
        assert_eq!(a[1], b[1], "head-init does not use the base list");
    }

    #[test]
    fn detector_model_settings_and_a_split_file_reach_their_stages() {
        let c = cfg("[detect]\nmilestones = [3]\nmodel = { representation_size = 256, anchor_sizes = [[8], [16], [32], [64], [128]] }\n[eval]\nsplit = \"/w/world.json\"\n");
        let v = detector_config(&c.detect, 3, vec![]).unwrap();
        assert_eq!(v["optimizer"]["milestones"], json!([3]));
        assert_eq!(v["model"]["representation_size"], 256);
        assert_eq!(v["model"]["anchor_sizes"][4][0], 128.0);
        let parsed: crate::pipeline::detect::config::ModelConfig = serde_json::from_value(v["model"].clone()).unwrap();
        assert_eq!(parsed.representation_size, 256);
        let st = build(&c, Path::new("/o")).unwrap();
        let e = st.iter().find(|s| s.name == "eval").unwrap();
        assert!(cmd(&st, "eval", 0).contains("--split /w/world.json"), "{}", cmd(&st, "eval", 0));
        assert!(format!("{:?}", e.inputs).contains("/w/world.json"), "{:?}", e.inputs);
        // A named split is no file input.
        let st = build(&cfg("[eval]\nsplit = \"ovcoco\"\n"), Path::new("/o")).unwrap();
        assert!(!format!("{:?}", st.iter().find(|s| s.name == "eval").unwrap().inputs).contains("ovcoco"));
    }

    #[test]
    fn disabled_and_given_stages() {
        let out = Path::new("/o");
        // No finetune: the original SD samples (and no --features-sd); a given labeller.
        let mut c = cfg("[finetune]\nenabled = false\n[labeller]\nuse = \"/w/det.safetensors\"\nnames = \"/w/names.json\"\n");
        c.generate_base.batch = Some(4);
        c.generate_base.args = vec!["--format".into(), "jpg".into()];
        let st = build(&c, out);
        let st = st.unwrap();
        assert_eq!(names(&st), ["head-init", "generate-base", "label", "ground-train", "generate-novel", "selftrain", "generate-final", "detect", "eval"]);
        let g = cmd(&st, "generate-base", 0);
        assert!(g.contains("--sd /m/sd --head") && g.ends_with("--batch 4 --format jpg"), "{g}");
        let l = cmd(&st, "label", 0);
        assert!(l.contains("--weights /w/det.safetensors --data"), "{l}");
        // No selftrain: the final images come from the ground-train head.
        let st = build(&cfg("[selftrain]\nenabled = false\n"), out).unwrap();
        assert!(cmd(&st, "generate-final", 0).contains("--head /o/05-ground-train/run/head"));
        // What is missing names the stage.
        let e = build(&cfg("[head_init]\nenabled = false\n"), out).unwrap_err().to_string();
        assert!(e.contains("generate-base") && e.contains("head-init") && e.contains("[head_init] use"), "{e}");
        let mut c = cfg("");
        c.data.val_images = None;
        let e = build(&c, out).unwrap_err().to_string();
        assert!(e.contains("stage eval needs [data] val_images"), "{e}");
        let mut c = cfg("");
        c.generate_novel.images_per_category = None;
        let e = build(&c, out).unwrap_err().to_string();
        assert!(e.contains("[generate_novel] images_per_category is required"), "{e}");
    }
}
