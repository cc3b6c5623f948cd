//! `instagen run PIPELINE.toml` end to end on the CPU: every stage once on tiny random models (the small SD folder
//! of tests/common/sd.rs, a `tiny` grounding head, a ResNet-18 detector at short side 64) and a few "real" images
//! written here; a rerun skips every stage; a changed option reruns its stage and the stages downstream only; an
//! interrupted stage resumes.
//! Skips without the CLIP vocabulary data (fails with INSTAGEN_REQUIRE_DATA=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const STAGES: [&str; 11] = [
    "00-finetune", "01-head-init", "02-generate-base", "03-labeller", "04-label", "05-ground-train", "06-generate-novel",
    "07-selftrain", "08-generate-final", "09-detect", "10-eval",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_run_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Four 64x64 PNGs with person / dog / cat rectangles and their COCO file (COCO's category ids).
fn real_data(dir: &Path) -> (PathBuf, PathBuf) {
    let imgs = dir.join("real");
    std::fs::create_dir_all(&imgs).unwrap();
    let cats = [(1u64, "person", [220u8, 40, 40]), (18, "dog", [40, 200, 60]), (17, "cat", [50, 60, 230])];
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..4u32 {
        let mut img = image::RgbImage::from_fn(64, 64, |x, y| {
            let v = ((x * 5 + y * 3 + i * 17) % 50) as u8;
            image::Rgb([v, v, v])
        });
        for (k, (id, _, rgb)) in cats.iter().enumerate() {
            if (i as usize + k) % 3 == 2 {
                continue;
            }
            let (x0, y0, w, h) = (4 + 18 * k as u32, 6 + 7 * i, 16 + i, 20 - i);
            for y in y0..y0 + h {
                for x in x0..x0 + w {
                    img.put_pixel(x, y, image::Rgb(*rgb));
                }
            }
            anns.push(serde_json::json!({"id": anns.len() + 1, "image_id": i + 1, "category_id": id,
                                         "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0}));
        }
        img.save(imgs.join(format!("{i}.png"))).unwrap();
        images.push(serde_json::json!({"id": i + 1, "file_name": format!("{i}.png"), "width": 64, "height": 64}));
    }
    let categories: Vec<_> = cats.iter().map(|(id, n, _)| serde_json::json!({"id": id, "name": n})).collect();
    let inst = dir.join("real.json");
    std::fs::write(&inst, serde_json::json!({"images": images, "annotations": anns, "categories": categories}).to_string()).unwrap();
    (inst, imgs)
}

fn config(sd: &Path, inst: &Path, imgs: &Path, final_score: &str) -> String {
    format!(
        r#"
[run]
sd = "{sd}"
seed = 5
backend = "cpu"
base = ["person", "dog"]
novel = ["cat"]

[data]
train_instances = "{inst}"
train_images = "{imgs}"
val_instances = "{inst}"
val_images = "{imgs}"

[finetune]
steps = 2
batch = 1
resolution = 32
save_every = 1
dtype = "f32"
args = ["--workers", "0"]

[head_init]
config = "tiny"

[generate_base]
images_per_category = 2
steps = 2
batch = 2

[labeller]
depth = 18
min_size = [64]
max_size = 96
batch = 2
steps = 2
lr = 0.01
warmup_iters = 2
save_every = 1
workers = 0

[label]
alpha = 0.0
score_thresh = 0.0
min_size = 64
max_size = 96

[ground_train]
epochs = 2
batch = 2
lr = 1e-3
teacher_epoch = 1
save_every = 2

[generate_novel]
images_per_category = 2
steps = 2
batch = 2

[selftrain]
beta = 0.0
steps = 2
save_every = 1

[generate_final]
images_per_category = 1
steps = 2
score = {final_score}

[detect]
depth = 18
min_size = [64]
max_size = 96
synthetic_min_size = [64]
batch = 2
steps = 2
lr = 0.01
warmup_iters = 2
save_every = 1
workers = 0

[eval]
min_size = 64
max_size = 96
"#,
        sd = sd.display(),
        inst = inst.display(),
        imgs = imgs.display()
    )
}

fn run(cfg: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_instagen")).arg("run").arg(cfg).arg("--out").arg(out).args(extra).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The report line of each stage: its action word (the report is the end of stdout, after the stages' output).
fn actions(stdout: &str) -> Vec<(String, String)> {
    let start = stdout.rfind("stages:\n").or_else(|| stdout.rfind("plan (dry run")).unwrap_or_else(|| panic!("no report in {stdout}"));
    stdout[start..]
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, action) = (w.next()?, w.next()?);
            STAGES.iter().any(|s| s[3..] == *name).then(|| (name.to_string(), action.to_string()))
        })
        .collect()
}

fn done(out: &Path) -> Vec<String> {
    STAGES.iter().map(|s| std::fs::read_to_string(out.join(s).join("done")).unwrap_or_default()).collect()
}

#[test]
fn a_small_pipeline_runs_end_to_end_then_skips_then_reruns_downstream() {
    let Some(sd) = common::sd::assemble("run_e2e") else { return };
    let d = tmp("e2e");
    let (inst, imgs) = real_data(&d);
    let cfg = d.join("pipeline.toml");
    std::fs::write(&cfg, config(&sd, &inst, &imgs, "0.0")).unwrap();
    let out = d.join("out");
    let t0 = std::time::Instant::now();
    let (ok, so, se) = run(&cfg, &out, &[]);
    assert!(ok, "{so}\n{se}");
    eprintln!("first run: {:.1} s\n{so}", t0.elapsed().as_secs_f64());
    let a = actions(&so);
    assert_eq!(a.len(), 11, "{so}");
    assert!(a.iter().all(|(_, w)| w == "run"), "{a:?}");
    for s in STAGES {
        for f in ["stage.json", "done", "log.txt"] {
            assert!(out.join(s).join(f).is_file(), "{s}/{f}");
        }
    }
    // What each stage made, where the next one read it.
    assert!(out.join("00-finetune/run/model/unet").is_dir());
    assert!(out.join("02-generate-base/data/instances.json").is_file());
    assert!(out.join("04-label/labels.json").is_file());
    assert!(out.join("05-ground-train/run/head/head.safetensors").is_file());
    assert!(out.join("07-selftrain/run/head/head.safetensors").is_file());
    assert!(out.join("09-detect/run/model.safetensors").is_file());
    let eval_log = std::fs::read_to_string(out.join("10-eval/log.txt")).unwrap();
    assert!(eval_log.contains("Average Precision"), "{eval_log}");
    let sj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("02-generate-base/stage.json")).unwrap()).unwrap();
    let cmd = sj["commands"][0].as_str().unwrap();
    assert!(cmd.starts_with("instagen generate --sd ") && cmd.contains("00-finetune/run/model --features-sd "), "{cmd}");
    assert_eq!(sj["config"]["stage"]["images_per_category"], 2);
    let inputs = sj["inputs"].to_string();
    assert!(inputs.contains("\"stage\":\"finetune\"") && inputs.contains("\"stage\":\"head-init\"") && inputs.contains("[run] sd"), "{inputs}");
    let done1 = done(&out);

    // Unchanged: every stage skipped, nothing rewritten.
    let t1 = std::time::Instant::now();
    let (ok, so, se) = run(&cfg, &out, &[]);
    assert!(ok, "{so}\n{se}");
    eprintln!("rerun: {:.1} s", t1.elapsed().as_secs_f64());
    assert!(actions(&so).iter().all(|(_, w)| w == "skip"), "{so}");
    assert_eq!(done(&out), done1);

    // One option of generate-final changed: it and its downstream stages (detect, eval) rerun; the rest is skipped.
    std::fs::write(&cfg, config(&sd, &inst, &imgs, "0.01")).unwrap();
    let (ok, so, se) = run(&cfg, &out, &["--dry-run"]);
    assert!(ok, "{so}\n{se}");
    let plan = actions(&so);
    let (ok, so, se) = run(&cfg, &out, &[]);
    assert!(ok, "{so}\n{se}");
    let a = actions(&so);
    assert_eq!(plan, a, "the dry run's plan is what ran");
    let done2 = done(&out);
    for (i, (name, w)) in a.iter().enumerate() {
        let downstream = i >= 8;
        assert_eq!(w, if downstream { "run" } else { "skip" }, "{name}: {so}");
        assert_eq!(done2[i] != done1[i], downstream, "{name}'s done marker");
    }

    // detect interrupted (its stage.json written, no done): it resumes from its checkpoint, eval reruns.
    std::fs::remove_file(out.join("09-detect/done")).unwrap();
    let (ok, so, se) = run(&cfg, &out, &[]);
    assert!(ok, "{so}\n{se}");
    let a = actions(&so);
    for (i, (name, w)) in a.iter().enumerate() {
        assert_eq!(w, match i { 9 => "resume", 10 => "run", _ => "skip" }, "{name}: {so}");
    }
    let log = std::fs::read_to_string(out.join("09-detect/log.txt")).unwrap();
    assert!(log.contains("resume: instagen detect train") && log.contains("resumed from step 2"), "{log}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&sd);
}

#[test]
fn bad_configs_are_named() {
    let d = tmp("bad");
    let (inst, imgs) = real_data(&d);
    let cfg = d.join("p.toml");
    let out = d.join("out");
    let sd = d.join("sd");
    std::fs::create_dir_all(&sd).unwrap();
    let good = config(&sd, &inst, &imgs, "0.0");
    // An unknown key: named with its table and line.
    std::fs::write(&cfg, good.replace("[selftrain]\n", "[selftrain]\nbeta_ = 3\n")).unwrap();
    let (ok, _, e) = run(&cfg, &out, &[]);
    assert!(!ok && e.contains("p.toml") && e.contains("beta_") && e.contains("[selftrain]") && e.contains("line"), "{e}");
    // A wrong type.
    std::fs::write(&cfg, good.replace("images_per_category = 1", "images_per_category = \"one\"")).unwrap();
    let (ok, _, e) = run(&cfg, &out, &[]);
    assert!(!ok && e.contains("images_per_category") && e.contains("[generate_final]"), "{e}");
    // Malformed TOML.
    std::fs::write(&cfg, good.replace("[eval]", "[eval")).unwrap();
    let (ok, _, e) = run(&cfg, &out, &[]);
    assert!(!ok && e.contains("p.toml") && e.contains("line"), "{e}");
    // A missing input path names the stage and the setting (found before anything runs).
    std::fs::write(&cfg, good.replace(&format!("train_images = \"{}\"", imgs.display()), "train_images = \"nowhere\"")).unwrap();
    let (ok, _, e) = run(&cfg, &out, &["--dry-run"]);
    assert!(!ok && e.contains("stage finetune") && e.contains("train_images") && e.contains("nowhere"), "{e}");
    // A missing required setting names the stage.
    std::fs::write(&cfg, good.replace("val_images", "#val_images")).unwrap();
    let (ok, _, e) = run(&cfg, &out, &["--dry-run"]);
    assert!(!ok && e.contains("stage eval") && e.contains("val_images"), "{e}");
    // An unknown --from stage lists the stages.
    std::fs::write(&cfg, &good).unwrap();
    let (ok, _, e) = run(&cfg, &out, &["--from", "nope"]);
    assert!(!ok && e.contains("--from nope") && e.contains("selftrain"), "{e}");
    assert!(!out.exists(), "nothing was run");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_ovcoco_config_parses_and_builds() {
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/ovcoco.toml");
    let c = instagen::pipeline::run::PipelineConfig::load(&cfg).unwrap();
    assert_eq!((c.run.base.len(), c.run.novel.len()), (48, 17));
    let stages = instagen::pipeline::run::stages::build(&c, Path::new("/runs/ovcoco")).unwrap();
    assert_eq!(stages.len(), 11);
    let cmd = stages[2].steps[0].describe();
    assert!(cmd.contains("--images-per-category 1250") && cmd.contains("--steps 50") && cmd.contains("--guidance 5"), "{cmd}");
}

#[test]
fn the_world_config_parses_and_builds() {
    use instagen::world::{DEFAULT_NOVEL, SHAPES};
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools");
    let c = instagen::pipeline::run::PipelineConfig::load(&tools.join("world.toml")).unwrap();
    // The world generator's default split.
    let novel: Vec<&str> = DEFAULT_NOVEL.iter().map(|s| s.name()).collect();
    let base: Vec<&str> = SHAPES.iter().map(|s| s.name()).filter(|n| !novel.contains(n)).collect();
    assert_eq!(c.run.novel, novel);
    let mut b = c.run.base.clone();
    b.sort();
    let mut want: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(b, want);
    assert_eq!(c.eval.split, Some(tools.join("../runs/world/world/world.json").to_string_lossy().into_owned()));
    let stages = instagen::pipeline::run::stages::build(&c, Path::new("/runs/world")).unwrap();
    assert_eq!(stages.len(), 11);
    let cmd = stages[2].steps[0].describe();
    assert!(cmd.contains("--steps 25") && cmd.contains("--categories circle,square,"), "{cmd}");
    assert!(stages[10].steps[0].describe().contains("world/world.json"));
    // The detector tables' model settings are valid detector settings.
    for d in [&c.labeller, &c.detect] {
        let m = d.model_section().unwrap();
        assert_eq!(m["min_size"][0], 128);
        assert!(m.contains_key("anchor_sizes") && m.contains_key("representation_size"), "{m:?}");
    }
}
