//! The miniature world generator (`instagen world make`): determinism, exact boxes, the base / novel split, the
//! captions, and that every split loads with the project's COCO and grounding-dataset readers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use instagen::detection::coco::{Dataset, LoadOptions};
use instagen::pipeline::ground::dataset::{prompt_names, GroundSet};
use instagen::util::Rng;
use instagen::world::{self, make::image_rng, Counts, Scene, Split, WorldInfo, WorldOptions, SHAPES};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_world_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(out: &Path, seed: u64) -> WorldOptions {
    let mut o = WorldOptions::new(out, seed);
    o.counts = Counts { corpus: 24, train: 24, val: 16 };
    o
}

/// Every file under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn same_seed_same_bytes_on_any_thread_count_and_other_seed_differs() {
    let (a, b, c) = (tmp("det_a"), tmp("det_b"), tmp("det_c"));
    world::make(&small(&a, 7)).unwrap();
    // The second run on one thread: the output must not depend on how rayon shares the images.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| world::make(&small(&b, 7))).unwrap();
    world::make(&small(&c, 8)).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    assert_eq!(fa.len(), 3 + 24 + 24 + 16 + 1, "{:?}", fa.keys().collect::<Vec<_>>());
    assert!(fa == fb, "two runs with seed 7 differ");
    let pngs_differ = fa.iter().filter(|(k, v)| k.extension().is_some_and(|e| e == "png") && fc.get(*k) != Some(v)).count();
    assert_eq!(pngs_differ, 24 + 24 + 16, "seed 8 should change every image");
    // A world folder is not overwritten.
    let err = world::make(&small(&a, 7)).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn boxes_are_the_visible_extent_of_the_drawn_pixels() {
    for seed in 0..30u64 {
        let scene = Scene::sample(&mut image_rng(seed, Split::Val, 0), 64, &SHAPES, None);
        let r = scene.render();
        let bg = scene.render_background();
        let n = 64usize;
        // Pixels that differ from the background-only render lie in some object's box...
        for (x, y, p) in r.image.enumerate_pixels() {
            if p != bg.get_pixel(x, y) {
                let inside = r.objects.iter().any(|d| {
                    (x as f64) < d.bbox[2] && (x as f64 + 1.0) > d.bbox[0] && (y as f64) < d.bbox[3] && (y as f64 + 1.0) > d.bbox[1]
                });
                assert!(inside, "seed {seed}: pixel ({x}, {y}) changed by the objects is in no box");
            }
        }
        for (k, d) in r.objects.iter().enumerate() {
            // ... and each box is the tight box of its object's coverage: every covered pixel touches the box,
            // and each side of the box passes through a covered pixel whose samples reach that side.
            let covered: Vec<(usize, usize)> = (0..n * n).filter(|&i| d.coverage[i] > 0).map(|i| (i % n, i / n)).collect();
            assert!(!covered.is_empty(), "seed {seed}: object {k} drew nothing");
            let (x0, x1) = (covered.iter().map(|c| c.0).min().unwrap(), covered.iter().map(|c| c.0).max().unwrap());
            let (y0, y1) = (covered.iter().map(|c| c.1).min().unwrap(), covered.iter().map(|c| c.1).max().unwrap());
            let b = d.bbox;
            assert_eq!([b[0].floor() as usize, b[1].floor() as usize], [x0, y0], "seed {seed} object {k}: box {b:?}");
            assert_eq!([b[2].ceil() as usize - 1, b[3].ceil() as usize - 1], [x1, y1], "seed {seed} object {k}: box {b:?}");
            // Partial pixels at the box edges: the box edge is inside the edge pixel, not at its far side.
            let area: f64 = d.coverage.iter().map(|&c| c as f64).sum::<f64>() / 16.0;
            assert!((area - d.area).abs() < 1e-9 && area <= (b[2] - b[0]) * (b[3] - b[1]));
            // The object covers its edge pixels where its own samples are: pixels of full coverage lie inside.
            for &(x, y) in &covered {
                if d.coverage[y * n + x] == 16 {
                    assert!(b[0] <= x as f64 && b[2] >= x as f64 + 1.0 && b[1] <= y as f64 && b[3] >= y as f64 + 1.0);
                }
            }
            // The object is visibly there: its pixels differ from the background somewhere.
            assert!(covered.iter().any(|&(x, y)| r.image.get_pixel(x as u32, y as u32) != bg.get_pixel(x as u32, y as u32)));
        }
    }
}

#[test]
fn splits_annotate_as_ov_coco_and_load_with_the_project_readers() {
    let out = tmp("splits");
    let o = small(&out, 3);
    let report = world::make(&o).unwrap();
    let info = WorldInfo::load(&out).unwrap();
    assert_eq!(info, report.info);
    assert_eq!((info.seed, info.size, info.counts), (3, 64, o.counts));
    let novel: Vec<&str> = info.categories.iter().filter(|c| c.novel).map(|c| c.name.as_str()).collect();
    assert_eq!(novel, ["heart", "hexagon", "moon", "bolt"]);
    assert_eq!(info.base_ids().len(), 8);
    let novel_ids = info.novel_ids();

    let opts = |root: &Path| LoadOptions { image_root: Some(root.to_path_buf()), check_image_sizes: true, ..LoadOptions::default() };
    let mut seen_novel_unannotated = false;
    for split in ["corpus", "train", "val"] {
        let dir = out.join(split);
        let s = &info.splits[split];
        let (ds, summary) = Dataset::load(out.join(&s.instances), &opts(&dir)).unwrap();
        assert!(summary.is_clean());
        assert_eq!(ds.images.len(), s.images);
        assert_eq!(ds.annotations.len(), s.annotations);
        assert_eq!(ds.categories.len(), 12, "every split lists all categories (the same ids)");
        for im in &ds.images {
            let caption = im.extra["caption"].as_str().unwrap();
            let cats: Vec<&str> = im.extra["categories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let parsed = prompt_names(caption).unwrap_or_else(|| panic!("{caption:?} does not parse"));
            assert_eq!(parsed, cats, "{caption:?}");
            let mut uniq = cats.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), cats.len(), "{caption:?} names a category twice");
            for c in &cats {
                let art = if c.starts_with('a') { "an" } else { "a" };
                assert!(caption.contains(&format!("{art} {c}")), "{caption:?}");
            }
            let anns: Vec<_> = ds.annotations.iter().filter(|a| a.image_id == im.id).collect();
            let ann_names: Vec<&str> =
                anns.iter().map(|a| ds.categories.iter().find(|c| c.id == a.category_id).unwrap().name.as_str()).collect();
            for n in &ann_names {
                assert!(cats.contains(n), "{split}: annotation {n} not in the caption {caption:?}");
            }
            let cat_ids: Vec<u64> = cats.iter().map(|n| ds.categories.iter().find(|c| &c.name == n).unwrap().id).collect();
            if split == "train" {
                assert!(anns.iter().all(|a| !novel_ids.contains(&a.category_id)), "train annotates a novel object");
                // Base objects are all annotated: every base name of the caption has a box.
                for &id in cat_ids.iter().filter(|id| !novel_ids.contains(id)) {
                    assert!(anns.iter().any(|a| a.category_id == id));
                }
                seen_novel_unannotated |= cat_ids.iter().any(|id| novel_ids.contains(id));
            } else {
                // Every named category has a box, and every object is annotated.
                for &id in &cat_ids {
                    assert!(anns.iter().any(|a| a.category_id == id), "{split}: {caption:?} without a box for {id}");
                }
            }
            assert!((1..=4).contains(&cats.len()));
        }
        if split != "train" {
            assert_eq!(s.annotations, s.objects);
        }
        // The grounding-dataset reader takes the captions as prompts.
        let g = GroundSet::open_dir(&dir).unwrap();
        assert_eq!(g.images.len(), s.images);
    }
    assert!(seen_novel_unannotated, "no novel object appeared in the training images");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn bad_options_are_errors_naming_the_flag() {
    let e = Counts::parse("corpus=10,tran=3").unwrap_err().to_string();
    assert!(e.contains("\"tran\"") && e.contains("known: corpus, train, val"), "{e}");
    let e = Counts::parse("val=x").unwrap_err().to_string();
    assert!(e.contains("val") && e.contains("not a whole number"), "{e}");
    assert_eq!(Counts::parse("train=5").unwrap(), Counts { train: 5, ..Counts::default() });
    let e = WorldOptions::new("x", 1).with_names(Some("circle,blob"), None).unwrap_err().to_string();
    assert!(e.contains("--categories") && e.contains("\"blob\""), "{e}");
    let e = WorldOptions::new("x", 1).with_names(Some("circle,star"), Some("moon")).map(|o| world::make(&o)).unwrap().unwrap_err();
    assert!(e.to_string().contains("--novel") && e.to_string().contains("moon"), "{e}");
    let o = WorldOptions::new("x", 1).with_names(Some("circle,star,moon"), None).unwrap();
    assert_eq!(o.novel, vec![world::Shape::Moon]);
    let mut o = WorldOptions::new("x", 1);
    o.size = 60;
    assert!(world::make(&o).unwrap_err().to_string().contains("--size 60"));
}

#[test]
fn scenes_vary_and_use_every_category() {
    let mut seen = [0usize; 12];
    let mut counts = [0usize; 5];
    for i in 0..200 {
        let s = Scene::sample(&mut Rng::new(i), 64, &SHAPES, None);
        counts[s.objects.len()] += 1;
        for o in &s.objects {
            seen[o.category] += 1;
        }
    }
    assert_eq!(counts[0], 0);
    assert!(counts[1..].iter().all(|&c| c > 10), "objects per scene: {counts:?}");
    assert!(seen.iter().all(|&c| c > 15), "objects per category: {seen:?}");
}
