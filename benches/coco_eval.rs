//! The COCO box evaluator on the COCO128 annotations (939 GT boxes, 128 images, 80 categories) with the
//! committed detection sets `tests/fixtures/coco_eval/coco128_{jitter,crowd_dups}.json`. The peer is pycocotools'
//! `evaluate()` + `accumulate()` on the same files: `tools/bench_cocoeval.py`, run in the same session.
//! Needs `../shared/data` (or `$INSTAGEN_DATA`, or /work/shared/data); prints a message and benches nothing
//! without it.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use instagen::detection::coco::{Dataset, LoadOptions, Policy, load_results};
use instagen::detection::eval::{EvalParams, evaluate};
use std::hint::black_box;

fn data_dir() -> Option<PathBuf> {
    let cands = match std::env::var_os("INSTAGEN_DATA") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"), PathBuf::from("/work/shared/data")],
    };
    cands.into_iter().find(|d| d.join("coco128").is_dir())
}

fn bench(c: &mut Criterion) {
    let Some(data) = data_dir() else {
        println!("SKIP: no shared data folder with coco128 (set INSTAGEN_DATA)");
        return;
    };
    let (gt, _) = Dataset::load(data.join("coco128/annotations/instances_train2017.json"), &LoadOptions::default())
        .expect("coco128 annotations");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_eval");
    let p = EvalParams::default();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut group = c.benchmark_group("coco_eval");
    for set in ["jitter", "crowd_dups"] {
        let (dts, _) = load_results(fixtures.join(format!("coco128_{set}.json")), &gt, Policy::Strict).expect("fixture");
        group.bench_function(format!("coco128_{set}"), |b| b.iter(|| evaluate(black_box(&gt), black_box(&dts), &p)));
        group.bench_function(format!("coco128_{set}_1thread"), |b| {
            b.iter(|| one.install(|| evaluate(black_box(&gt), black_box(&dts), &p)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
