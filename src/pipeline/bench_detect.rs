//! `instagen bench detect`: Faster R-CNN inference and training images/s, ours next to torchvision's measured in
//! the same run on the same machine with the same thread count (as `instagen bench cpu`).
//!
//! Cases: ResNet-18/50-FPN at short side 320 (images 320x480, padded 320x480) and ResNet-50-FPN at 800x1333
//! (padded 800x1344); `.infer` = the eval forward (transform, backbone + FPN, RPN, RoI heads, postprocess) of a
//! batch, `.train` = a training step of batch 2 (transform, forward, the four losses, backward, SGD with
//! momentum and weight decay on torchvision's trainable set). Random weights: torchvision's initialisation
//! (`backbone::init_params`, `train::init_heads`) with the class-score weights times [`CLS_SCALE`], so the
//! softmax spreads and post-processing sees a normal number of candidates (a few hundred per image above the
//! 0.05 threshold, the 100 kept). The images and ground-truth boxes are pure functions of their index that
//! `tools/bench_detect_torch.py` computes too, and torchvision runs the very parameters timed here (written to a
//! temporary safetensors file under torchvision's names), so both sides do the same work; the table shows the
//! detections per image of both for the inference cases.
//!
//! On cpu / cpu-reference our side runs under [`Profiled`] and the report gives the op kinds that took the
//! most time per call, and the host's share (proposals, targets, post-processing, the transform). On cuda the
//! inference cases can run in f16 (`--dtype`); training stays f32 there (untested: no GPU on the machine this
//! was written on).

use std::path::{Path, PathBuf};

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::models::detector::backbone::{self, BackboneConfig};
use crate::models::detector::faster_rcnn::{build_eval_graph, FasterRcnn, FasterRcnnConfig};
use crate::models::detector::transform::TransformConfig;
use crate::params::ParamStore;
use crate::pipeline::bench_cpu::{fmt_secs, load_average, parse_torch_output, run_peer, stderr_tail, Machine, TorchInfo};
use crate::pipeline::detect::data::DetectSample;
use crate::pipeline::detect::train::{init_heads, DetectTrainer};
use crate::pipeline::finetune::bench::Profiled;
use crate::pipeline::timing::{median, Timing};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// torchvision's side, run by `--torch PYTHON` (stdin: this text).
pub const TORCH_SCRIPT: &str = include_str!("../../tools/bench_detect_torch.py");

/// The class-score weights are multiplied by this after initialisation (the script's `CLS_SCALE`).
pub const CLS_SCALE: f32 = 4.0;
/// Ground-truth boxes per training image.
pub const GT_BOXES: usize = 8;
/// SGD settings of the training cases (the script's).
const LR: f32 = 1e-4;
const MOMENTUM: f32 = 0.9;
const WEIGHT_DECAY: f32 = 1e-4;

/// A case: the same name and settings on both sides.
#[derive(Debug)]
pub struct DetectCase {
    pub name: &'static str,
    /// ResNet depth.
    pub depth: usize,
    pub batch: usize,
    /// Input image (h, w) before the transform.
    pub image: (usize, usize),
    /// The transform's short side (max side 1333).
    pub min_size: usize,
    pub train: bool,
}

/// Every case, cheap first (the 800x1333 training step needs several GB of activations).
pub const CASES: &[DetectCase] = &[
    DetectCase { name: "r18-fpn-320.infer", depth: 18, batch: 2, image: (320, 480), min_size: 320, train: false },
    DetectCase { name: "r18-fpn-320.train", depth: 18, batch: 2, image: (320, 480), min_size: 320, train: true },
    DetectCase { name: "r50-fpn-320.infer", depth: 50, batch: 2, image: (320, 480), min_size: 320, train: false },
    DetectCase { name: "r50-fpn-320.train", depth: 50, batch: 2, image: (320, 480), min_size: 320, train: true },
    DetectCase { name: "r50-fpn-800.infer", depth: 50, batch: 1, image: (800, 1333), min_size: 800, train: false },
    DetectCase { name: "r50-fpn-800.train", depth: 50, batch: 2, image: (800, 1333), min_size: 800, train: true },
];

impl DetectCase {
    /// The model of the case: torchvision's `fasterrcnn_resnet50_fpn` settings on a ResNet of `depth` with
    /// frozen norms and 3 trainable layers, 91 classes, the case's short side.
    pub fn config(&self) -> FasterRcnnConfig {
        FasterRcnnConfig {
            backbone: BackboneConfig { depth: self.depth, ..Default::default() },
            transform: TransformConfig { min_size: vec![self.min_size], ..Default::default() },
            ..Default::default()
        }
    }

    fn about(&self) -> String {
        let what = if self.train { "training step (4 losses, backward, SGD)" } else { "inference" };
        format!("ResNet-{}-FPN {what}, batch {}, images {}x{}", self.depth, self.batch, self.image.0, self.image.1)
    }
}

/// The cases `filter` selects: comma-separated alternatives, each matching the names that contain it; empty:
/// every case. No match is an error listing the names.
pub fn select(filter: &str) -> Result<Vec<&'static DetectCase>> {
    let alts: Vec<&str> = filter.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let sel: Vec<_> = CASES.iter().filter(|c| alts.is_empty() || alts.iter().any(|a| c.name.contains(a))).collect();
    if sel.is_empty() {
        let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        return Err(Error::Other(format!("--filter '{filter}': no bench detect case matches (cases: {})", names.join(", "))));
    }
    Ok(sel)
}

/// Image `index` `[h, w, 3]` in [0, 1): element e = frac((e * 2654435761 + index * 40503 + 12345) mod 2^32 / 2^32),
/// as the script computes it.
pub fn image(index: usize, h: usize, w: usize) -> Vec<f32> {
    (0..h * w * 3)
        .map(|e| {
            let v = (e as u64).wrapping_mul(2654435761).wrapping_add(index as u64 * 40503 + 12345) % (1u64 << 32);
            (v as f64 / (1u64 << 32) as f64) as f32
        })
        .collect()
}

/// Image `index`'s ground truth: [`GT_BOXES`] boxes (x1, y1, x2, y2, pixels of an `h` x `w` image) and labels
/// in 1..=90, as the script computes them.
pub fn targets(index: usize, h: usize, w: usize) -> (Vec<[f32; 4]>, Vec<i64>) {
    (0..GT_BOXES)
        .map(|j| {
            let bw = 32 + (53 * j + 17 * index) % 160;
            let bh = 32 + (71 * j + 29 * index) % 160;
            let x1 = (97 * j + 31 * index) % (w - bw);
            let y1 = (61 * j + 43 * index) % (h - bh);
            ([x1 as f32, y1 as f32, (x1 + bw) as f32, (y1 + bh) as f32], 1 + ((7 * j + 3 * index) % 90) as i64)
        })
        .unzip()
}

/// The case's parameters: torchvision's initialisation (seeded), class scores times [`CLS_SCALE`].
pub fn weights(cfg: &FasterRcnnConfig, seed: u64) -> Result<ParamStore> {
    let probe = build_eval_graph(cfg, 1, (64, 64))?;
    let mut store = backbone::init_params(&probe.g, seed)?;
    for (name, t) in init_heads(&probe.g, seed)?.iter() {
        store.insert(name, t.clone());
    }
    let name = "roi_heads.box_predictor.cls_score.weight";
    let w = store.get(name).ok_or_else(|| Error::Other(format!("bench detect: no '{name}'")))?;
    let scaled: Vec<f32> = w.to_f32().iter().map(|v| v * CLS_SCALE).collect();
    let t = HostTensor::from_f32(&w.shape, w.dtype, &scaled)?;
    store.insert(name, t);
    Ok(store)
}

/// What `instagen bench detect` was asked.
#[derive(Clone, Debug)]
pub struct DetectBenchOptions {
    /// cpu, cpu-reference or cuda.
    pub kind: BackendKind,
    pub filter: String,
    pub min_seconds: f64,
    /// Storage dtype of the inference cases (f16 / bf16: cuda's fast path; f32 on the CPU).
    pub dtype: DType,
    /// The Python with torch and torchvision that runs `tools/bench_detect_torch.py`; none: ours only.
    pub torch: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: &'static DetectCase,
    pub ours: Timing,
    pub torch: Option<Timing>,
    /// Detections per image of the last call (inference cases).
    pub ours_dets: Option<Vec<usize>>,
    pub torch_dets: Option<Vec<usize>>,
    /// The op kinds that took the most time per call (seconds per call, calls per call), and the rest of the
    /// call (host work: transform, proposals, targets, post-processing, optimiser bookkeeping); cpu only.
    pub profile: Vec<(String, f64, f64)>,
    pub host_seconds: Option<f64>,
}

impl Row {
    /// ours / torchvision's (seconds).
    pub fn ratio(&self) -> Option<f64> {
        self.torch.map(|t| self.ours.seconds / t.seconds)
    }
}

/// The results of `instagen bench detect`; `Display` is the table.
#[derive(Clone, Debug)]
pub struct DetectBenchReport {
    pub kind: BackendKind,
    pub dtype: DType,
    pub machine: Machine,
    pub threads: usize,
    pub min_seconds: f64,
    pub torch: Option<TorchInfo>,
    pub load: (Option<f64>, Option<f64>),
    pub rows: Vec<Row>,
}

fn ips(case: &DetectCase, t: &Timing) -> f64 {
    case.batch as f64 / t.seconds
}

impl std::fmt::Display for DetectBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.machine;
        let kind = match self.kind {
            BackendKind::CpuReference => "cpu-reference",
            BackendKind::Cuda => "cuda",
            _ => "cpu",
        };
        writeln!(f, "instagen bench detect: backend {kind}, inference {}, training f32, random weights (class scores x{CLS_SCALE})", self.dtype)?;
        writeln!(f, "machine: {}, {} cores, {} logical CPUs", m.cpu, m.cores, m.logical)?;
        match &self.torch {
            Some(t) => writeln!(f, "threads: ours {} (rayon), torch {} (torch {}, {}; CPU, f32)", self.threads, t.threads, t.version, t.python)?,
            None => writeln!(f, "threads: ours {} (rayon)", self.threads)?,
        }
        let load = |l: Option<f64>| l.map_or("?".into(), |v| format!("{v:.2}"));
        writeln!(
            f,
            "load average (1 min): {} before, {} after; each side: 1 warm-up call, then the median of the timed calls (at least 1, at least {} s)",
            load(self.load.0),
            load(self.load.1),
            self.min_seconds
        )?;
        writeln!(f, "{:<18} {:>10} {:>8} {:>4} {:>10} {:>8} {:>4} {:>10}  what", "case", "ours", "img/s", "runs", "torch", "img/s", "runs", "ours/torch")?;
        for r in &self.rows {
            let (t, ti, tr, q) = match (r.torch, r.ratio()) {
                (Some(t), Some(q)) => (fmt_secs(t.seconds), format!("{:.3}", ips(r.case, &t)), t.runs.to_string(), format!("{q:.2}")),
                _ => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<18} {:>10} {:>8.3} {:>4} {:>10} {:>8} {:>4} {:>10}  {}",
                r.case.name,
                fmt_secs(r.ours.seconds),
                ips(r.case, &r.ours),
                r.ours.runs,
                t,
                ti,
                tr,
                q,
                r.case.about()
            )?;
        }
        for r in &self.rows {
            if let Some(d) = &r.ours_dets {
                let theirs = r.torch_dets.as_ref().map_or("-".into(), |t| format!("{t:?}"));
                writeln!(f, "{}: detections per image: ours {d:?}, torch {theirs}", r.case.name)?;
            }
        }
        for r in self.rows.iter().filter(|r| !r.profile.is_empty()) {
            writeln!(f, "{}: ours per call, by op kind (longest first):", r.case.name)?;
            for (k, s, n) in &r.profile {
                writeln!(f, "  {k:<28} {:>10} {n:>6.0} calls", fmt_secs(*s))?;
            }
            if let Some(h) = r.host_seconds {
                writeln!(f, "  {:<28} {:>10}", "host (outside ops)", fmt_secs(h))?;
            }
        }
        match &self.torch {
            None => writeln!(
                f,
                "torch: not run. To time torchvision in the same run, give --torch PYTHON (or set INSTAGEN_TORCH_PYTHON) \
                 naming a Python with torch, torchvision and safetensors."
            )?,
            Some(t) if t.threads != self.threads => {
                writeln!(f, "warning: torch ran {} threads, ours {}: the ratios compare different thread counts", t.threads, self.threads)?
            }
            Some(_) => {}
        }
        if self.busy() {
            writeln!(
                f,
                "warning: the machine was busy before the run (load {:.2} on {} CPUs, {} threads asked): the figures are \
                 noisy, and PyTorch's OpenMP threads suffer more from shared cores than ours",
                self.load.0.unwrap_or(0.0),
                self.machine.logical,
                self.threads
            )?;
        }
        Ok(())
    }
}

impl DetectBenchReport {
    /// Whether the load before the run plus our threads exceeded the CPUs (by more than half a CPU).
    pub fn busy(&self) -> bool {
        self.kind != BackendKind::Cuda && self.load.0.is_some_and(|l| l + self.threads as f64 > self.machine.logical as f64 + 0.5)
    }

    /// The results as JSON (what `--json` writes).
    pub fn to_json(&self) -> serde_json::Value {
        let timing = |c: &DetectCase, t: &Timing| serde_json::json!({ "seconds": t.seconds, "runs": t.runs, "images_per_second": ips(c, t) });
        serde_json::json!({
            "backend": match self.kind { BackendKind::CpuReference => "cpu-reference", BackendKind::Cuda => "cuda", _ => "cpu" },
            "inference_dtype": self.dtype.to_string(),
            "machine": self.machine,
            "threads": self.threads,
            "min_seconds": self.min_seconds,
            "torch": self.torch,
            "load_average": [self.load.0, self.load.1],
            "busy": self.busy(),
            "cases": self.rows.iter().map(|r| serde_json::json!({
                "case": r.case.name,
                "about": r.case.about(),
                "batch": r.case.batch,
                "ours": timing(r.case, &r.ours),
                "torch": r.torch.as_ref().map(|t| timing(r.case, t)),
                "ratio": r.ratio(),
                "detections": { "ours": r.ours_dets, "torch": r.torch_dets },
                "profile": r.profile.iter().map(|(k, s, n)| serde_json::json!({ "op": k, "seconds": s, "calls": n })).collect::<Vec<_>>(),
                "host_seconds": r.host_seconds,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `instagen bench detect`.
pub fn run(o: &DetectBenchOptions) -> Result<DetectBenchReport> {
    if !matches!(o.kind, BackendKind::Cpu | BackendKind::CpuReference | BackendKind::Cuda) {
        return Err(Error::Other(format!("bench detect: --backend {:?} is not cpu, cpu-reference or cuda", o.kind)));
    }
    if !o.dtype.is_float() {
        return Err(Error::Other(format!("bench detect: --dtype {} is not a floating type", o.dtype)));
    }
    crate::pipeline::sample::check_bench_args(1, o.min_seconds)?;
    let cases = select(&o.filter)?;
    if let Some(path) = &o.json {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if path.is_dir() || !parent.is_dir() {
            let why = if path.is_dir() { "is a directory" } else { "has no such parent folder" };
            return Err(Error::Other(format!("--json {}: {why}", path.display())));
        }
    }
    let threads = rayon::current_num_threads();
    let load_before = load_average();
    let mut torch_info: Option<TorchInfo> = None;
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let cfg = case.config();
        let store = weights(&cfg, 7)?;
        let (torch, torch_dets) = match &o.torch {
            Some(py) => {
                let (t, dets, info) = torch_case(py, case, &store, threads, o.min_seconds)?;
                eprintln!("[{}/{}] {}: torch {} ({} runs)", i + 1, cases.len(), case.name, fmt_secs(t.seconds), t.runs);
                torch_info.get_or_insert(info);
                (Some(t), dets)
            }
            None => (None, None),
        };
        let ours = crate::with_backend!(o.kind, |mk| ours_case(mk()?, o.kind != BackendKind::Cuda, case, &cfg, store, o.dtype, o.min_seconds));
        let ours = ours.map_err(|e| e.building(format!("bench detect case {}", case.name)))?;
        eprintln!("[{}/{}] {}: ours {} ({} runs)", i + 1, cases.len(), case.name, fmt_secs(ours.timing.seconds), ours.timing.runs);
        rows.push(Row {
            case,
            ours: ours.timing,
            torch,
            ours_dets: ours.dets,
            torch_dets,
            profile: ours.profile,
            host_seconds: ours.host_seconds,
        });
    }
    let report = DetectBenchReport {
        kind: o.kind,
        dtype: o.dtype,
        machine: Machine::probe(),
        threads,
        min_seconds: o.min_seconds,
        torch: torch_info,
        load: (load_before, load_average()),
        rows,
    };
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| Error::Other(format!("JSON: {e}")))?;
        crate::util::files::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))?;
    }
    Ok(report)
}

/// Our side of a case.
struct Ours {
    timing: Timing,
    dets: Option<Vec<usize>>,
    profile: Vec<(String, f64, f64)>,
    host_seconds: Option<f64>,
}

/// Op kinds listed per case.
const PROFILE_ROWS: usize = 12;

/// Times `call` as `timing::measure` (one warm-up, then until at least one call and `min_seconds`; the median),
/// with `reset` run after the warm-up (so a profile covers the timed calls alone).
fn timed(min_seconds: f64, reset: impl Fn(), mut call: impl FnMut() -> Result<()>) -> Result<Timing> {
    call()?;
    reset();
    let start = std::time::Instant::now();
    let mut times = Vec::new();
    while times.is_empty() || start.elapsed().as_secs_f64() < min_seconds {
        let t = std::time::Instant::now();
        call()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing { seconds: median(&mut times), runs: times.len() })
}

fn ours_case<B: Backend + 'static>(
    backend: B,
    profile: bool,
    case: &DetectCase,
    cfg: &FasterRcnnConfig,
    store: ParamStore,
    dtype: DType,
    min_seconds: f64,
) -> Result<Ours> {
    if profile {
        let prof = Profiled::new(backend);
        let r = ours_timed(prof.clone(), || prof.reset(), case, cfg, store, dtype, min_seconds);
        r.map(|(timing, dets)| {
            let runs = timing.runs as f64;
            let report = prof.report();
            let op_total: f64 = report.iter().map(|r| r.1).sum::<f64>() / runs;
            // The timed calls' total is not kept; the median stands in for the mean call.
            let host_seconds = Some((timing.seconds - op_total).max(0.0));
            let profile = report.into_iter().take(PROFILE_ROWS).map(|(k, s, n)| (k, s / runs, n as f64 / runs)).collect();
            Ours { timing, dets, profile, host_seconds }
        })
    } else {
        let r = ours_timed(backend, || {}, case, cfg, store, dtype, min_seconds);
        r.map(|(timing, dets)| Ours { timing, dets, profile: Vec::new(), host_seconds: None })
    }
}

fn ours_timed<B: Backend + 'static>(
    backend: B,
    reset: impl Fn(),
    case: &DetectCase,
    cfg: &FasterRcnnConfig,
    store: ParamStore,
    dtype: DType,
    min_seconds: f64,
) -> Result<(Timing, Option<Vec<usize>>)> {
    let (h, w) = case.image;
    let images: Vec<Vec<f32>> = (0..case.batch).map(|i| image(i, h, w)).collect();
    let t = &cfg.transform;
    if !case.train {
        let store = if dtype == DType::F32 { store } else { cast_store(&store, dtype)? };
        let mut model = FasterRcnn::new(cfg.clone(), store, move || Ok(backend.clone()))?.with_dtype(dtype);
        let views: Vec<(&[f32], usize, usize)> = images.iter().map(|im| (im.as_slice(), h, w)).collect();
        let mut dets = Vec::new();
        let timing = timed(min_seconds, reset, || {
            dets = model.detect_images(&views)?.iter().map(|d| d.boxes.len()).collect();
            Ok(())
        })?;
        return Ok((timing, Some(dets)));
    }
    let mut trainer = DetectTrainer::new(backend, cfg.clone(), &store, MOMENTUM, WEIGHT_DECAY)?;
    drop(store);
    let mut rng = Rng::new(3);
    let num_logits = cfg.roi_heads.num_classes;
    let timing = timed(min_seconds, reset, || {
        let samples = (0..case.batch)
            .map(|i| {
                let (boxes, labels) = targets(i, h, w);
                Ok(DetectSample {
                    image: t.prepare(&images[i], h, w, case.min_size)?,
                    boxes,
                    labels,
                    image_id: i as u64,
                    source: 0,
                    flipped: false,
                    min_size: case.min_size,
                    rpn_weight: 1.0,
                    class_mask: vec![1.0; num_logits],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let st = trainer.step(&samples, LR, &mut rng)?;
        if st.losses.iter().any(|l| !l.is_finite()) {
            return Err(Error::Other(format!("bench detect: non-finite losses {:?}", st.losses)));
        }
        Ok(())
    })?;
    Ok((timing, None))
}

fn cast_store(store: &ParamStore, dtype: DType) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (name, t) in store.iter() {
        out.insert(name, HostTensor::from_f32(&t.shape, dtype, &t.to_f32())?);
    }
    Ok(out)
}

/// torchvision's side of one case: the parameters go to a temporary safetensors file, then `python - --cases
/// NAME --weights FILE ...` with [`TORCH_SCRIPT`] on stdin; its JSON lines are read back.
fn torch_case(
    python: &Path,
    case: &DetectCase,
    store: &ParamStore,
    threads: usize,
    min_seconds: f64,
) -> Result<(Timing, Option<Vec<usize>>, TorchInfo)> {
    let file = std::env::temp_dir().join(format!("instagen-bench-detect-{}-{}.safetensors", std::process::id(), case.name));
    store.save_safetensors(&file)?;
    let args = [
        "-".to_string(),
        "--cases".into(),
        case.name.into(),
        "--threads".into(),
        threads.to_string(),
        "--min-seconds".into(),
        min_seconds.to_string(),
        "--weights".into(),
        file.display().to_string(),
    ];
    let shown = format!(
        "{} - --cases {} --threads {threads} --min-seconds {min_seconds} --weights {} (tools/bench_detect_torch.py on stdin)",
        python.display(),
        case.name,
        file.display()
    );
    let out = run_peer(python, TORCH_SCRIPT, &args, threads, &shown);
    let _ = std::fs::remove_file(&file);
    let (stdout, stderr) = out?;
    let fail = |msg: String| Error::Other(format!("the PyTorch side `{shown}`: {msg}; its stderr ends:\n{}", stderr_tail(&stderr)));
    let (timings, info) = parse_torch_output(&stdout).map_err(fail)?;
    let info = TorchInfo { python: python.display().to_string(), ..info.ok_or_else(|| fail("printed no {\"torch\": ...} line".into()))? };
    let t = timings.iter().find(|(n, _)| n == case.name).map(|p| p.1).ok_or_else(|| fail(format!("printed no result for case {}", case.name)))?;
    let dets = detections_of(&stdout, case.name).map_err(fail)?;
    if !case.train && dets.is_none() {
        return Err(fail(format!("printed no \"detections\" for inference case {}", case.name)));
    }
    Ok((t, dets, info))
}

/// The `"detections"` list (per image) of `case`'s line, if it has one.
pub fn detections_of(stdout: &str, case: &str) -> std::result::Result<Option<Vec<usize>>, String> {
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {line:?} is not JSON ({e})"))?;
        if v.get("case").and_then(|c| c.as_str()) != Some(case) {
            continue;
        }
        let Some(d) = v.get("detections") else { return Ok(None) };
        let list = d.as_array().ok_or_else(|| format!("\"detections\" of {case} is not a list: {line:?}"))?;
        return list
            .iter()
            .map(|n| n.as_u64().map(|n| n as usize).ok_or_else(|| format!("\"detections\" of {case} holds a non-count: {line:?}")))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case has one counterpart of the same name and settings in the script, and the script no others.
    #[test]
    fn script_has_the_same_cases() {
        let mut script: Vec<String> = TORCH_SCRIPT
            .lines()
            .filter_map(|l| l.strip_prefix("case(\"").map(|r| r.trim_end_matches(')').replace('"', "")))
            .collect();
        let mut ours: Vec<String> = CASES
            .iter()
            .map(|c| {
                let t = if c.train { "True" } else { "False" };
                format!("{}, {}, {}, {}, {}, {}, {t}", c.name, c.depth, c.batch, c.image.0, c.image.1, c.min_size)
            })
            .collect();
        script.sort();
        ours.sort();
        assert_eq!(script, ours);
        assert!(TORCH_SCRIPT.contains(&format!("\nCLS_SCALE = {CLS_SCALE:.1}\n")), "CLS_SCALE differs");
        assert!(TORCH_SCRIPT.contains(&format!("\nGT_BOXES = {GT_BOXES}\n")), "GT_BOXES differs");
        assert!(TORCH_SCRIPT.contains(&format!("lr={LR:e}, momentum={MOMENTUM}, weight_decay={WEIGHT_DECAY:e}")), "SGD settings differ");
    }

    #[test]
    fn filter_selects_and_names_the_cases() {
        let names = |f: &str| select(f).unwrap().iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names("").len(), CASES.len());
        assert_eq!(names("r18"), ["r18-fpn-320.infer", "r18-fpn-320.train"]);
        assert_eq!(names("800.infer, r18-fpn-320.train"), ["r18-fpn-320.train", "r50-fpn-800.infer"]);
        let e = select("r34").unwrap_err().to_string();
        assert!(e.contains("r34") && e.contains("r50-fpn-800.train"), "{e}");
    }

    /// The images and boxes are the script's formulas: values in [0, 1), the first few pinned by the formula
    /// written out, boxes inside the image with positive sides.
    #[test]
    fn images_and_targets() {
        let im = image(1, 4, 5);
        assert_eq!(im.len(), 60);
        assert!(im.iter().all(|v| (0.0..1.0).contains(v)));
        let want = |e: u64| (((e * 2654435761 + 40503 + 12345) % (1 << 32)) as f64 / 4294967296.0) as f32;
        assert_eq!(im[0], want(0));
        assert_eq!(im[59], want(59));
        assert_ne!(image(0, 4, 5), im);
        for i in 0..3 {
            let (boxes, labels) = targets(i, 320, 480);
            assert_eq!((boxes.len(), labels.len()), (GT_BOXES, GT_BOXES));
            for b in &boxes {
                assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 480.0 && b[3] <= 320.0 && b[2] - b[0] >= 32.0 && b[3] - b[1] >= 32.0, "{b:?}");
            }
            assert!(labels.iter().all(|&l| (1..=90).contains(&l)));
        }
    }

    #[test]
    fn detections_are_read_from_the_case_line() {
        let out = "{\"torch\": \"2\", \"threads\": 2}\n{\"case\": \"a.infer\", \"seconds\": 1, \"runs\": 1, \"detections\": [100, 37]}\n";
        assert_eq!(detections_of(out, "a.infer").unwrap(), Some(vec![100, 37]));
        assert_eq!(detections_of(out, "b.train").unwrap(), None);
        assert!(detections_of("{\"case\": \"a\", \"detections\": [1.5]}", "a").unwrap_err().contains("non-count"));
        assert!(detections_of("{\"case\": \"a\", \"detections\": 3}", "a").unwrap_err().contains("not a list"));
    }

    #[test]
    fn table_has_images_per_second_and_ratio() {
        let t = |seconds, runs| Timing { seconds, runs };
        let r = DetectBenchReport {
            kind: BackendKind::Cpu,
            dtype: DType::F32,
            machine: Machine { cpu: "test CPU".into(), cores: 2, logical: 2 },
            threads: 2,
            min_seconds: 0.0,
            torch: Some(TorchInfo { python: "py".into(), version: "9".into(), threads: 2 }),
            load: (Some(0.1), Some(0.2)),
            rows: vec![Row {
                case: &CASES[1],
                ours: t(4.0, 3),
                torch: Some(t(2.0, 5)),
                ours_dets: None,
                torch_dets: None,
                profile: vec![("Conv2d".into(), 1.5, 40.0)],
                host_seconds: Some(0.25),
            }],
        };
        let s = r.to_string();
        let row = s.lines().find(|l| l.starts_with("r18-fpn-320.train")).unwrap().split_whitespace().take(11).collect::<Vec<_>>().join(" ");
        assert_eq!(row, "r18-fpn-320.train 4.00 s 0.500 3 2.00 s 1.000 5 2.00 ResNet-18-FPN");
        assert!(s.contains("Conv2d") && s.contains("host (outside ops)"), "{s}");
        let j = r.to_json();
        assert_eq!(j["cases"][0]["ratio"].as_f64(), Some(2.0));
        assert_eq!(j["cases"][0]["ours"]["images_per_second"].as_f64(), Some(0.5));
    }
}
