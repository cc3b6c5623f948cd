//! `instagen merge` and `instagen export --format yolo` on synthetic generated-dataset folders written here (small
//! PNGs, latents, records and manifests in the layout of `instagen generate`), and the syntax of the Slurm and
//! Kubernetes example files.
//!
//! - four shards merged == the same images written as one folder: `instances.json` byte-equal, every image,
//!   latent and record identical; a rerun is a no-op; an interrupted merge resumes;
//! - hostile shards: a missing record, a truncated image, an image of the wrong size, a bad latent, a stray or
//!   inconsistent record, two shards with one index, different settings, a missing shard, `--out` a file or a
//!   foreign folder: errors naming the shard folder and file, nothing written;
//! - the YOLO export of the merged folder (labels, splits, `data.yaml`), checked in Rust and, when python3 with
//!   PyYAML is present, by tools/check_yaml.py (which also checks the Kubernetes files; else SKIP);
//! - the real thing: four `instagen generate` shards (`--shard i/4`, a 1-based Slurm array task, a Kubernetes
//!   indexed-job index) on the small random-weight SD folder, merged == one unsharded run, image for image (skips
//!   without the CLIP vocabulary data).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use instagen::params::ParamStore;
use instagen::pipeline::dataset::export::{self, DataYaml, ExportFormat, ExportOptions};
use instagen::pipeline::dataset::merge::{merge, MergeOptions};
use instagen::pipeline::generate::folder::{
    image_name, instances_json, latent_name, record_name, Manifest, Record, RecordBox, FORMAT, INSTANCES, MANIFEST,
};
use instagen::pipeline::generate::Shard;
use instagen::tensor::{DType, HostTensor};

const W: u32 = 32;
const H: u32 = 24;
const CATS: [&str; 3] = ["star", "moon", "comet"];
const TOTAL: u64 = 10;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_merge_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn manifest(shard: Shard) -> Manifest {
    let settings = serde_json::json!({
        "categories": CATS, "seed": 42, "format": "png", "latents": true, "steps": 3, "guidance": 5.0, "score": 0.4,
    });
    Manifest {
        format: FORMAT.into(),
        command: format!("instagen generate ... --shard {}/{}", shard.index, shard.count),
        instagen_version: env!("CARGO_PKG_VERSION").into(),
        settings,
        total_images: TOTAL,
        shard,
        merged_from: None,
    }
}

/// The record of image `k`: one or two categories, 0-2 boxes (one at the image border), descending scores.
fn record(k: u64) -> Record {
    let cats: Vec<String> = if k % 2 == 0 {
        vec![CATS[k as usize % 3].into()]
    } else {
        vec![CATS[k as usize % 3].into(), CATS[(k as usize + 1) % 3].into()]
    };
    let mut boxes = Vec::new();
    if k % 3 != 2 {
        boxes.push(RecordBox { category: cats[0].clone(), bbox: [0.0, 0.0, W as f32, H as f32 / 2.0], score: 0.9 - k as f32 * 0.01 });
    }
    if k % 2 == 1 {
        boxes.push(RecordBox { category: cats[1].clone(), bbox: [3.25 + k as f32, 4.5, 10.0, 19.5], score: 0.45 });
    }
    let prompt = format!("a photograph of {}", cats.join(" and "));
    Record { index: k, file_name: image_name(k, "png"), width: W, height: H, prompt, categories: cats, seed: 1_000_000_007 * k, latent: Some(latent_name(k)), boxes }
}

fn png(k: u64, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + k as u32 * 31) as u8, (y * 9) as u8, (k * 40) as u8]));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn save_latent(path: &Path, shape: &[usize], k: u64) {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1 + k as f32).sin()).collect();
    let mut s = ParamStore::new();
    s.insert("latent", HostTensor::from_f32(shape, DType::F32, &vals).unwrap());
    s.save_safetensors(path).unwrap();
}

/// A dataset folder as `instagen generate --shard i/n` writes it (n = 1: one unsharded folder).
fn write_folder(dir: &Path, shard: Shard) {
    for sub in ["images", "latents", "records"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let m = manifest(shard);
    m.save(dir).unwrap();
    let mut records = Vec::new();
    for k in m.shard.indices(TOTAL) {
        let r = record(k);
        std::fs::write(dir.join(&r.file_name), png(k, W, H)).unwrap();
        save_latent(&dir.join(r.latent.as_ref().unwrap()), &[(H / 8) as usize, (W / 8) as usize, 4], k);
        std::fs::write(dir.join(record_name(k)), r.to_bytes()).unwrap();
        records.push(r);
    }
    std::fs::write(dir.join(INSTANCES), instances_json(&m, &records).unwrap()).unwrap();
}

/// Four shard folders `root/shard-i`.
fn write_shards(root: &Path) -> Vec<PathBuf> {
    (0..4)
        .map(|i| {
            let d = root.join(format!("shard-{i}"));
            write_folder(&d, Shard { index: i, count: 4 });
            d
        })
        .collect()
}

fn opts(shards: &[PathBuf], out: &Path) -> MergeOptions {
    MergeOptions { shards: shards.to_vec(), out: out.to_path_buf(), command: "instagen merge (test)".into() }
}

/// Every file under `dir/sub`, by name.
fn files(dir: &Path, sub: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn assert_same_dataset(a: &Path, b: &Path) {
    assert_eq!(std::fs::read(a.join(INSTANCES)).unwrap(), std::fs::read(b.join(INSTANCES)).unwrap(), "instances.json differs");
    for sub in ["images", "latents", "records"] {
        let (fa, fb) = (files(a, sub), files(b, sub));
        assert_eq!(fa.len(), TOTAL as usize, "{sub}: {:?}", fa.iter().map(|f| &f.0).collect::<Vec<_>>());
        assert!(fa == fb, "{sub} differ between {} and {}", a.display(), b.display());
    }
}

#[test]
fn four_shards_merge_into_the_unsharded_folder() {
    let root = tmp("equal");
    let shards = write_shards(&root);
    let one = root.join("one");
    write_folder(&one, Shard { index: 0, count: 1 });
    // Shards in any order.
    let given = vec![shards[2].clone(), shards[0].clone(), shards[3].clone(), shards[1].clone()];
    let out = root.join("merged");
    let r = merge(&opts(&given, &out)).unwrap();
    assert_eq!((r.shards, r.images, r.resumed), (4, TOTAL, 0));
    assert_eq!(r.boxes, (0..TOTAL).map(|k| record(k).boxes.len() as u64).sum::<u64>());
    assert_eq!(r.linked + r.copied, 2 * TOTAL);
    assert_same_dataset(&out, &one);
    // Images are hard links to the shard files (one file system here).
    {
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(out.join(image_name(5, "png"))).unwrap();
        let b = std::fs::metadata(shards[1].join(image_name(5, "png"))).unwrap();
        assert_eq!((r.linked, a.ino()), (2 * TOTAL, b.ino()));
    }
    // The merged manifest.
    let m = Manifest::load(&out).unwrap();
    assert_eq!((m.shard, m.total_images), (Shard { index: 0, count: 1 }, TOTAL));
    assert_eq!(m.settings, manifest(Shard { index: 0, count: 1 }).settings);
    let from: Vec<PathBuf> = shards.iter().map(|s| s.canonicalize().unwrap()).collect();
    assert_eq!(m.merged_from.unwrap(), from.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    // The grounding / detection readers take it: image ids index + 1, annotation ids renumbered 1..
    let set = instagen::pipeline::ground::GroundSet::open_dir(&out).unwrap();
    assert_eq!(set.images.iter().map(|i| i.id).collect::<Vec<_>>(), (1..=TOTAL).collect::<Vec<_>>());
    let ann: Vec<u64> = set.coco.annotations.iter().map(|a| a.id).collect();
    assert_eq!(ann, (1..=r.boxes).collect::<Vec<_>>());
    assert_eq!(set.images[3].latent.as_deref(), Some(out.join(latent_name(3)).as_path()));

    // A rerun is a no-op.
    let again = merge(&opts(&shards, &out)).unwrap();
    assert_eq!((again.resumed, again.linked + again.copied), (TOTAL, 0));
    assert_same_dataset(&out, &one);

    // An interrupted merge (records and instances.json missing, a half-written temp file left) resumes.
    for k in [0, 4, 9] {
        std::fs::remove_file(out.join(record_name(k))).unwrap();
    }
    std::fs::remove_file(out.join(image_name(9, "png"))).unwrap();
    std::fs::remove_file(out.join(INSTANCES)).unwrap();
    std::fs::write(out.join("images/.00000004.png.tmp-999999999-0"), b"half").unwrap();
    let resumed = merge(&opts(&shards, &out)).unwrap();
    assert_eq!((resumed.resumed, resumed.linked + resumed.copied), (TOTAL - 3, 6));
    assert_same_dataset(&out, &one);
    assert!(!out.join("images/.00000004.png.tmp-999999999-0").exists());

    // The same through the command line.
    let cli_out = root.join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_instagen")).arg("merge").args(&shards).arg("--out").arg(&cli_out).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("merged 4 shards: 10 images"), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_same_dataset(&cli_out, &one);
    assert!(Manifest::load(&cli_out).unwrap().command.contains(" merge "));
    std::fs::remove_dir_all(&root).ok();
}

/// Merges `shards` into a new folder, which must fail with every string of `want`, writing nothing.
fn merge_err(root: &Path, shards: &[PathBuf], want: &[&str]) {
    let out = root.join("out");
    let e = match merge(&opts(shards, &out)) {
        Ok(r) => panic!("merge succeeded: {r}"),
        Err(e) => e.to_string(),
    };
    for w in want {
        assert!(e.contains(w), "error lacks {w:?}:\n{e}");
    }
    assert!(!out.exists(), "a failed merge wrote {}", out.display());
}

#[test]
fn hostile_shards_are_refused_naming_folder_and_file() {
    let root = tmp("hostile");
    let shards = write_shards(&root);
    let s = |i: usize| shards[i].display().to_string();

    // Shard-level problems.
    merge_err(&root, &shards[..3], &["shard 3 of 4 missing", &s(2)]);
    merge_err(&root, &[shards[0].clone(), shards[1].clone(), shards[1].clone(), shards[3].clone()], &["both shard 1/4", "given twice"]);
    let dup = root.join("dup");
    write_folder(&dup, Shard { index: 2, count: 4 });
    merge_err(&root, &[shards[0].clone(), shards[1].clone(), dup.clone(), shards[2].clone(), shards[3].clone()], &["both shard 2/4"]);
    let edit_manifest = |dir: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = dir.join(MANIFEST);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let other = root.join("other");
    write_folder(&other, Shard { index: 2, count: 4 });
    edit_manifest(&other, &|v| v["settings"]["steps"] = 50.into());
    merge_err(&root, &[shards[0].clone(), shards[1].clone(), other.clone(), shards[3].clone()], &["different settings", "steps: 3 -> 50", &other.display().to_string()]);
    edit_manifest(&other, &|v| {
        v["settings"]["steps"] = 3.into();
        v["total_images"] = 12.into();
    });
    merge_err(&root, &[shards[0].clone(), shards[1].clone(), other.clone(), shards[3].clone()], &["total_images: 10 -> 12"]);
    edit_manifest(&other, &|v| v["format"] = "something-else".into());
    merge_err(&root, &[shards[0].clone(), other.clone()], &["field format", "generate.json"]);
    std::fs::remove_file(other.join(MANIFEST)).unwrap();
    merge_err(&root, &[shards[0].clone(), other.clone()], &["generate.json"]);

    // File-level problems, each on a fresh copy of the shards.
    type Break = Box<dyn Fn(&Path)>;
    let cases: Vec<(usize, Break, Vec<&str>)> = vec![
        (1, Box::new(|d: &Path| std::fs::remove_file(d.join(record_name(5))).unwrap()), vec!["records/00000005.json", "is missing", "not finished"]),
        (2, Box::new(|d: &Path| {
            let p = d.join(image_name(6, "png"));
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        }), vec!["images/00000006.png", "does not decode"]),
        (3, Box::new(|d: &Path| std::fs::write(d.join(image_name(3, "png")), png(3, 16, 16)).unwrap()), vec!["images/00000003.png", "image is 16x16, its record says 32x24"]),
        (3, Box::new(|d: &Path| std::fs::remove_file(d.join(image_name(7, "png"))).unwrap()), vec!["images/00000007.png"]),
        (0, Box::new(|d: &Path| std::fs::remove_file(d.join(latent_name(4))).unwrap()), vec!["latents/00000004.safetensors"]),
        (0, Box::new(|d: &Path| save_latent(&d.join(latent_name(8)), &[3, 4, 3], 8)), vec!["latents/00000008.safetensors", "want [h, w, 4]"]),
        (0, Box::new(|d: &Path| save_latent(&d.join(latent_name(8)), &[4, 4, 4], 8)), vec!["latents/00000008.safetensors", "not the 32x24 image scaled down"]),
        (0, Box::new(|d: &Path| save_latent(&d.join(latent_name(8)), &[6, 8, 4], 8)), vec!["latents/00000008.safetensors", "image 0's is [3, 4, 4]"]),
        (0, Box::new(|d: &Path| std::fs::write(d.join(latent_name(0)), b"not a safetensors file").unwrap()), vec!["latents/00000000.safetensors"]),
        (1, Box::new(|d: &Path| std::fs::write(d.join(record_name(2)), serde_json::to_vec(&record(2)).unwrap()).unwrap()), vec!["records/00000002.json", "does not belong to this folder's shard 1/4"]),
        (1, Box::new(|d: &Path| std::fs::write(d.join(record_name(1)), serde_json::to_vec(&record(5)).unwrap()).unwrap()), vec!["records/00000001.json", "field index 5"]),
        (2, Box::new(|d: &Path| std::fs::write(d.join(record_name(2)), b"{\"index\": 2,").unwrap()), vec!["records/00000002.json"]),
        (2, Box::new(|d: &Path| {
            let mut r = record(6);
            r.latent = None;
            std::fs::write(d.join(record_name(6)), serde_json::to_vec(&r).unwrap()).unwrap()
        }), vec!["records/00000006.json", "settings.latents is true"]),
        (2, Box::new(|d: &Path| {
            let mut r = record(6);
            r.boxes[0].category = "sun".into();
            std::fs::write(d.join(record_name(6)), serde_json::to_vec(&r).unwrap()).unwrap()
        }), vec!["records/00000006.json", "boxes[0]", "\"sun\""]),
    ];
    for (n, (shard, breaks, want)) in cases.into_iter().enumerate() {
        let case = root.join(format!("case{n}"));
        let shards = write_shards(&case);
        breaks(&shards[shard]);
        let dir = shards[shard].display().to_string();
        let mut want = want.clone();
        want.push(&dir);
        merge_err(&case, &shards, &want);
        std::fs::remove_dir_all(&case).ok();
    }

    // --out: a file, a foreign non-empty folder, a shard folder, a merge of other shards.
    let file = root.join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = merge(&opts(&shards, &file)).unwrap_err().to_string();
    assert!(e.contains("is a file") && e.contains(&file.display().to_string()), "{e}");
    let e = merge(&opts(&shards, &shards[0])).unwrap_err().to_string();
    assert!(e.contains("overlaps the shard folder"), "{e}");
    let foreign = root.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let e = merge(&opts(&shards, &foreign)).unwrap_err().to_string();
    assert!(e.contains("not empty and is not an earlier merge"), "{e}");
    assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
    let merged = root.join("merged");
    merge(&opts(&shards, &merged)).unwrap();
    let copies = write_shards(&root.join("copies"));
    let e = merge(&opts(&copies, &merged)).unwrap_err().to_string();
    assert!(e.contains("not an earlier merge of these shards") && e.contains("merged from"), "{e}");

    // The command line exits non-zero with the message.
    let o = Command::new(env!("CARGO_BIN_EXE_instagen")).arg("merge").args(&shards[..2]).arg("--out").arg(root.join("x")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

fn python_yaml() -> bool {
    let ok = Command::new("python3").args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIP: python3 with PyYAML not found; the YAML checks of tools/check_yaml.py did not run");
    }
    ok
}

fn check_yaml(kind: &str, path: &Path) -> (bool, String) {
    let o = Command::new("python3").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_yaml.py")).arg(kind).arg(path).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn yolo_export_of_a_merged_folder() {
    let root = tmp("yolo");
    let shards = write_shards(&root);
    let data = root.join("merged");
    merge(&opts(&shards, &data)).unwrap();
    let out = root.join("yolo");
    let o = ExportOptions { dataset: data.clone(), format: ExportFormat::Yolo, out: out.clone(), val_fraction: 0.3, seed: 1 };
    let r = export::export(&o).unwrap();
    assert_eq!((r.train, r.val, r.classes, r.dropped), (7, 3, 3, 0));
    assert_eq!(r.boxes as u64, (0..TOTAL).map(|k| record(k).boxes.len() as u64).sum::<u64>());

    let y = DataYaml::parse(&std::fs::read_to_string(out.join("data.yaml")).unwrap()).unwrap();
    assert_eq!(PathBuf::from(&y.path), out.canonicalize().unwrap());
    assert_eq!((y.train.as_str(), y.val.as_str()), ("images/train", "images/val"));
    assert_eq!(y.names, CATS.iter().enumerate().map(|(i, n)| (i as u64, n.to_string())).collect::<Vec<_>>());
    // Every image has its label file with its record's boxes, class = category order.
    let mut seen = 0;
    for split in ["train", "val"] {
        for (name, bytes) in files(&out, &format!("images/{split}")) {
            let k: u64 = name.trim_end_matches(".png").parse().unwrap();
            assert_eq!(bytes, std::fs::read(data.join(image_name(k, "png"))).unwrap());
            let label = std::fs::read_to_string(out.join(format!("labels/{split}/{k:08}.txt"))).unwrap();
            let want: Vec<String> = record(k)
                .boxes
                .iter()
                .map(|b| {
                    let c = CATS.iter().position(|n| *n == b.category).unwrap();
                    let [x, y, w, h] = b.bbox.map(f64::from);
                    export::yolo_line(c, [x, y, x + w, y + h], W, H).unwrap()
                })
                .collect();
            assert_eq!(label.lines().collect::<Vec<_>>(), want, "image {k}");
            if k % 3 == 2 && k % 2 == 0 {
                assert_eq!(label, "", "image {k} has no boxes: an empty label file");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, TOTAL);
    // The border box of image 0: the whole width, the top half.
    let l0 = ["train", "val"].iter().find_map(|s| std::fs::read_to_string(out.join(format!("labels/{s}/00000000.txt"))).ok()).unwrap();
    assert_eq!(l0.lines().next(), Some("0 0.500000 0.250000 1.000000 0.500000"));

    // An existing folder is refused; a missing dataset names the folder.
    let e = export::export(&o).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    let e = export::export(&ExportOptions { dataset: root.join("nothing"), out: root.join("y2"), ..o.clone() }).unwrap_err().to_string();
    assert!(e.contains("nothing"), "{e}");
    assert!(!root.join("y2").exists());

    // The command line, with --val-fraction 0.
    let cli = root.join("yolo0");
    let c = Command::new(env!("CARGO_BIN_EXE_instagen"))
        .args(["export"])
        .arg(&data)
        .args(["--format", "yolo", "--val-fraction", "0", "--out"])
        .arg(&cli)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(DataYaml::parse(&std::fs::read_to_string(cli.join("data.yaml")).unwrap()).unwrap().val, "images/train");
    let c = Command::new(env!("CARGO_BIN_EXE_instagen")).arg("export").arg(&data).args(["--format", "yolo", "--val-fraction", "1", "--out"]).arg(root.join("y3")).output().unwrap();
    assert!(!c.status.success() && String::from_utf8_lossy(&c.stderr).contains("not in [0, 1)"));

    if python_yaml() {
        for d in [&out, &cli] {
            let (ok, text) = check_yaml("yolo", d);
            assert!(ok, "{text}");
        }
        // The checker can fail: a label line out of range.
        std::fs::write(cli.join("labels/train/00000001.txt"), "0 0.5 0.5 1.2 0.1\n").unwrap();
        let (ok, text) = check_yaml("yolo", &cli);
        assert!(!ok && text.contains("not normalised"), "{text}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn scheduler_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let sbatch = root.join("slurm/generate.sbatch");
    let o = Command::new("bash").arg("-n").arg(&sbatch).output().unwrap();
    assert!(o.status.success(), "bash -n {}: {}", sbatch.display(), String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&sbatch).unwrap();
    for want in ["#SBATCH --array=", "#SBATCH --gres=gpu:1", "instagen generate", "--out \"$SHARD_DIR\"", "shard-$SLURM_ARRAY_TASK_ID", "--dependency=\"afterok:$SLURM_ARRAY_JOB_ID\"", "instagen merge"] {
        assert!(text.contains(want), "{} lacks {want:?}", sbatch.display());
    }
    if python_yaml() {
        let job = root.join("kubernetes/generate-job.yaml");
        let (ok, text) = check_yaml("k8s-indexed-job", &job);
        assert!(ok, "{text}");
        let (ok, text) = check_yaml("k8s-job", &root.join("kubernetes/merge-job.yaml"));
        assert!(ok, "{text}");
        // The checker can fail: completions that disagree with --shards.
        let bad = std::env::temp_dir().join(format!("instagen_bad_job_{}.yaml", std::process::id()));
        std::fs::write(&bad, std::fs::read_to_string(&job).unwrap().replace("completions: 4", "completions: 3")).unwrap();
        let (ok, text) = check_yaml("k8s-indexed-job", &bad);
        assert!(!ok && text.contains("parallelism"), "{text}");
        std::fs::remove_file(&bad).ok();
    }
}

/// The scheduler variables `instagen generate` reads, removed so the test's own environment cannot leak in.
const SHARD_VARS: [&str; 6] =
    ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "JOB_COMPLETION_INDEX"];

#[test]
fn four_generate_shards_merge_into_one_run() {
    use common::generate::{fixture, run_ok};
    let Some(f) = fixture("merge") else { return };
    let clean = |mut c: Command| {
        for v in SHARD_VARS {
            c.env_remove(v);
        }
        c
    };
    // Batch 1 everywhere (the default): the cpu backend is not bitwise batch-independent (at --batch 3 the
    // unsharded run's latents and scores differ in the last bits), and shards batch other images together.
    let one = f.root.join("one");
    run_ok(clean(f.generate(&one, &[])));
    let shard = |i: usize| f.root.join(format!("shard-{i}"));
    // Shards 0 and 3 by flag, shard 1 as task 2 of a Slurm array 1-4, shard 2 as a Kubernetes indexed-job pod.
    for i in [0, 3] {
        run_ok(clean(f.generate(&shard(i), &["--shard", &format!("{i}/4")])));
    }
    let mut c = clean(f.generate(&shard(1), &[]));
    c.envs([("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
    run_ok(c);
    let mut c = clean(f.generate(&shard(2), &["--shards", "4"]));
    c.env("JOB_COMPLETION_INDEX", "2");
    run_ok(c);
    for i in 0..4 {
        assert_eq!(Manifest::load(&shard(i)).unwrap().shard, Shard { index: i as u64, count: 4 });
    }

    let merged = f.root.join("merged");
    let mut c = Command::new(env!("CARGO_BIN_EXE_instagen"));
    c.arg("merge").args([shard(3), shard(1), shard(0), shard(2)]).arg("--out").arg(&merged);
    let text = run_ok(c);
    let (m1, mm) = (Manifest::load(&one).unwrap(), Manifest::load(&merged).unwrap());
    assert!(text.contains(&format!("merged 4 shards: {} images", m1.total_images)), "{text}");
    assert_eq!((&mm.settings, mm.total_images, mm.shard), (&m1.settings, m1.total_images, Shard { index: 0, count: 1 }));
    // Image for image: instances.json byte-equal, every image, latent and record identical.
    assert_eq!(std::fs::read(merged.join(INSTANCES)).unwrap(), std::fs::read(one.join(INSTANCES)).unwrap(), "instances.json differs");
    for sub in ["images", "latents", "records"] {
        let (a, b) = (files(&merged, sub), files(&one, sub));
        assert_eq!(a.len() as u64, m1.total_images, "{sub}");
        assert!(a == b, "{sub} of the merge differ from the unsharded run's");
    }
    let set = instagen::pipeline::ground::GroundSet::open_dir(&merged).unwrap();
    assert_eq!(set.images.len() as u64, m1.total_images);
    println!("{} images, {} boxes: merged == unsharded", set.images.len(), set.coco.annotations.len());
    std::fs::remove_dir_all(&f.root).ok();
}
