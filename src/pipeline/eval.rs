//! `instagen eval`: COCO box evaluation of a detections file against a ground truth, as pycocotools' COCOeval
//! (bbox), with the open-vocabulary split figures. The evaluator itself is [`crate::detection::eval`]; this reads
//! and validates the files, prints the table and writes the figures.

use std::path::Path;

use crate::detection::coco::{Dataset, LoadOptions, Policy, load_results, write_atomic};
use crate::detection::eval::{EvalParams, OvSplit, STAT_NAMES, evaluate, split_by_name};
use crate::util::files::same_file;

/// What `--split` names: `ovcoco`, or a JSON file (a `world.json`, whose `categories` carry `novel` flags, or
/// `{"base": [names], "novel": [names]}`), read before the slow work so a bad file fails early.
#[derive(Clone, Debug, PartialEq)]
pub enum SplitSpec {
    Known(OvSplit),
    /// Category names from `file`.
    Names { file: std::path::PathBuf, base: Vec<String>, novel: Vec<String> },
}

impl SplitSpec {
    pub fn parse(spec: &str) -> crate::Result<SplitSpec> {
        if let Some(s) = split_by_name(spec) {
            return Ok(SplitSpec::Known(s));
        }
        let file = Path::new(spec);
        if !file.is_file() {
            return Err(crate::Error::Other(format!(
                "unknown split '{spec}': neither a known split (ovcoco) nor a file (a world.json or {{\"base\": [names], \"novel\": [names]}})"
            )));
        }
        let bad = |m: String| crate::Error::Other(format!("{}: {m}", file.display()));
        let text = crate::util::files::read_text(file, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| crate::Error::io(file, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(crate::util::json::describe(text.as_bytes(), &e)))?;
        let names = |key: &str| -> crate::Result<Vec<String>> {
            let list = v.get(key).and_then(|l| l.as_array()).ok_or_else(|| bad(format!("\"{key}\" must be a list of category names")))?;
            list.iter()
                .enumerate()
                .map(|(i, n)| n.as_str().map(String::from).ok_or_else(|| bad(format!("{key}[{i}] is not a string"))))
                .collect()
        };
        let (base, novel) = if let Some(cats) = v.get("categories") {
            // A world.json: every category with its novel flag.
            let cats = cats.as_array().ok_or_else(|| bad("\"categories\" is not a list".into()))?;
            let (mut base, mut novel) = (Vec::new(), Vec::new());
            for (i, c) in cats.iter().enumerate() {
                let name = c.get("name").and_then(|n| n.as_str()).ok_or_else(|| bad(format!("categories[{i}] has no string \"name\"")))?;
                let is_novel = c.get("novel").and_then(|n| n.as_bool()).ok_or_else(|| bad(format!("categories[{i}] ({name:?}) has no boolean \"novel\"")))?;
                if is_novel { novel.push(name.to_string()) } else { base.push(name.to_string()) }
            }
            (base, novel)
        } else if v.get("base").is_some() || v.get("novel").is_some() {
            (names("base")?, names("novel")?)
        } else {
            return Err(bad("not a split: expected a world.json (\"categories\" with \"novel\" flags) or {\"base\": [names], \"novel\": [names]}".into()));
        };
        if base.is_empty() && novel.is_empty() {
            return Err(bad("the split names no category".into()));
        }
        Ok(SplitSpec::Names { file: file.to_path_buf(), base, novel })
    }

    /// The split's ids in the ground truth `gt`: names resolved by name (an unknown one is an error naming the
    /// split file and the name).
    pub fn resolve(&self, gt: &Dataset) -> crate::Result<OvSplit> {
        match self {
            SplitSpec::Known(s) => Ok(s.clone()),
            SplitSpec::Names { file, base, novel } => {
                let cats: Vec<(u64, String)> = gt.categories.iter().map(|c| (c.id, c.name.clone())).collect();
                let name = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
                OvSplit::from_names(&name, base, novel, &cats).map_err(|m| crate::Error::Other(format!("{}: {m}", file.display())))
            }
        }
    }
}

/// `instagen eval`: loads GT and detections (validated), evaluates, returns the printable report and writes
/// the figures as JSON to `json_out` (atomically) when given.
pub fn run(gt_path: &Path, dt_path: &Path, split: Option<&str>, json_out: Option<&Path>, lenient: bool) -> crate::Result<String> {
    for (flag, input) in [("--gt", gt_path), ("--dt", dt_path)] {
        if let Some(jp) = json_out.filter(|jp| same_file(jp, input)) {
            return Err(crate::Error::Other(format!(
                "--json {} is the {flag} input {}: refusing to overwrite an input",
                jp.display(),
                input.display()
            )));
        }
    }
    let split = split.map(SplitSpec::parse).transpose()?;
    let policy = if lenient { Policy::Lenient } else { Policy::Strict };
    let (gt, gs) = Dataset::load(gt_path, &LoadOptions { policy, ..Default::default() })?;
    let split = split.map(|s| s.resolve(&gt)).transpose()?;
    let (dts, ds) = load_results(dt_path, &gt, policy)?;
    let r = evaluate(&gt, &dts, &EvalParams::default());
    let mut out = String::new();
    out.push_str(&format!("{gs}"));
    if !ds.is_clean() {
        out.push_str(&format!("{ds}"));
    }
    out.push_str(&format!(
        "{} images, {} categories, {} detections\n",
        r.img_ids.len(),
        r.cat_ids.len(),
        dts.len()
    ));
    out.push_str(&r.summary_lines());
    let rep = split.map(|s| r.split_report(&s));
    if let Some(rep) = &rep {
        out.push_str(&rep.line());
    }
    if let Some(jp) = json_out {
        let stats: serde_json::Map<String, serde_json::Value> =
            STAT_NAMES.iter().zip(r.stats.iter()).map(|(n, v)| (n.to_string(), serde_json::json!(v))).collect();
        let j = serde_json::json!({
            "gt": gt_path.display().to_string(),
            "dt": dt_path.display().to_string(),
            "num_images": r.img_ids.len(),
            "num_detections": dts.len(),
            "skipped_gt": gs.skipped.len(),
            "skipped_dt": ds.skipped.len(),
            "stats": stats,
            "stats_array": r.stats.to_vec(),
            "per_category": r.per_category,
            "split": rep,
        });
        let bytes = serde_json::to_vec_pretty(&j).map_err(|e| crate::Error::Other(format!("{}: {e}", jp.display())))?;
        write_atomic(jp, &bytes)?;
        out.push_str(&format!("figures written to {}\n", jp.display()));
    }
    Ok(out)
}
