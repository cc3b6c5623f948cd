//! `instagen eval`: COCO box evaluation of a detections file against a ground truth, as pycocotools' COCOeval
//! (bbox), with the open-vocabulary split figures. The evaluator itself is [`crate::detection::eval`]; this reads
//! and validates the files, prints the table and writes the figures.

use std::path::Path;

use crate::detection::coco::{Dataset, LoadOptions, Policy, load_results, write_atomic};
use crate::detection::eval::{EvalParams, STAT_NAMES, evaluate, split_by_name};
use crate::util::files::same_file;

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
    let split = match split {
        None => None,
        Some(s) => Some(split_by_name(s).ok_or_else(|| crate::Error::Other(format!("unknown split '{s}' (known: ovcoco)")))?),
    };
    let policy = if lenient { Policy::Lenient } else { Policy::Strict };
    let (gt, gs) = Dataset::load(gt_path, &LoadOptions { policy, ..Default::default() })?;
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
        out.push_str(&format!(
            "{}: AP50 base {:.1} ({} classes) | novel {:.1} ({}) | all {:.1} ({})\n",
            rep.name,
            rep.base_ap50 * 100.0,
            rep.n_base,
            rep.novel_ap50 * 100.0,
            rep.n_novel,
            rep.all_ap50 * 100.0,
            rep.n_all
        ));
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
