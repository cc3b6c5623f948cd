//! `instagen bench cpu`: for each case, our time on the CPU, PyTorch's time on the CPU measured in the same run
//! with the same thread count, and the ratio (ours / PyTorch's).
//!
//! Our side reuses the model benches (`sample::bench_unet`, `txt2img::bench_clip` / `bench_vae`,
//! `finetune::bench::bench_train_unet`) and times single-op graphs for attention and convolution; every case
//! is f32 with random weights and times calls with [`measure`] (one warm-up, then the median of the timed calls,
//! at least one and at least `min_seconds` of them). PyTorch's side is `tools/bench_cpu_torch.py` (embedded in
//! the binary, fed to the given Python on stdin), run once per case right before ours so both sides of a row
//! see the same load; it times the same models and ops the same way and prints JSON lines. Our thread count is
//! rayon's global pool (`--threads`, else `RAYON_NUM_THREADS`, else every CPU); PyTorch gets the same number
//! (`torch.set_num_threads`, `OMP_NUM_THREADS`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::graph::{autodiff, Graph, NodeId, Op};
use crate::params::ParamStore;
use crate::pipeline::timing::{measure, Timing};
use crate::runtime::Executor;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// PyTorch's side, run by `--torch PYTHON` (stdin: this text).
pub const TORCH_SCRIPT: &str = include_str!("../../tools/bench_cpu_torch.py");

/// A case: its name (the same on both sides) and what it runs.
#[derive(Debug)]
pub struct CaseSpec {
    pub name: &'static str,
    pub about: &'static str,
}

/// Every case, in the order they run (the cheap ones first).
pub const CASES: &[CaseSpec] = &[
    CaseSpec { name: "unet-fixture.fwd", about: "fixture UNet (16/32 ch, 2 levels) forward, batch 2, 16x16 latents, 77x32 context" },
    CaseSpec { name: "unet-fixture.train", about: "fixture UNet training step (noise, forward, MSE, backward, AdamW), batch 2, 16x16" },
    CaseSpec { name: "clip-sd1.fwd", about: "CLIP text encoder, SD v1 config (12 layers, width 768), batch 2 x 77 tokens" },
    CaseSpec { name: "conv3x3.fwd", about: "3x3 convolution with bias, 2x64x64x320 -> 320, padding 1, forward" },
    CaseSpec { name: "conv3x3.fwd+bwd", about: "the same convolution, forward and the gradients of input, weight and bias" },
    CaseSpec { name: "attention.fwd", about: "self-attention, B2 x 4096 tokens x 8 heads x 40, forward" },
    CaseSpec { name: "attention.fwd+bwd", about: "the same attention, forward and the gradients of q, k and v" },
    CaseSpec { name: "msda.fwd", about: "deformable attention of the grounding head: B2, 900 queries, 8 heads x 32, levels 64..8^2, 4 points" },
    CaseSpec { name: "msda.fwd+bwd", about: "the same deformable attention, forward and the gradients of value, locations and weights" },
    CaseSpec { name: "vae-sd1.decode", about: "VAE decoder, SD v1 config, 64x64 latents -> 512x512 image, batch 1" },
    CaseSpec { name: "unet-sd1.fwd", about: "SD v1.x UNet forward, batch 2, 64x64 latents, 77x768 context" },
];

/// The cases `filter` selects: a comma-separated list of alternatives, each matching the names that contain
/// it; empty: every case. No match is an error listing the names.
pub fn select(filter: &str) -> Result<Vec<&'static CaseSpec>> {
    let alts: Vec<&str> = filter.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let sel: Vec<_> = CASES.iter().filter(|c| alts.is_empty() || alts.iter().any(|a| c.name.contains(a))).collect();
    if sel.is_empty() {
        let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        return Err(Error::Other(format!("--filter '{filter}': no bench cpu case matches (cases: {})", names.join(", "))));
    }
    Ok(sel)
}

/// What `instagen bench cpu` was asked.
#[derive(Clone, Debug)]
pub struct CpuBenchOptions {
    /// `Cpu` (the engine) or `CpuReference` (the exact reference alone: the "before" column).
    pub kind: BackendKind,
    pub filter: String,
    pub min_seconds: f64,
    /// The Python that runs `tools/bench_cpu_torch.py` (with torch, diffusers, transformers); none: ours only.
    pub torch: Option<PathBuf>,
    /// Also write the results here as JSON.
    pub json: Option<PathBuf>,
}

/// The CPU and what ran on it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    /// Physical cores (from /proc/cpuinfo; the logical count where that does not say).
    pub cores: usize,
    /// Logical CPUs this process may use.
    pub logical: usize,
}

impl Machine {
    pub fn probe() -> Machine {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |l: &str, key: &str| -> Option<String> {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let cpu = info.lines().find_map(|l| field(l, "model name")).unwrap_or_else(|| "unknown CPU".into());
        // Unique (physical id, core id) pairs; lines come in processor blocks.
        let mut cores = std::collections::BTreeSet::new();
        let mut phys = String::new();
        for l in info.lines() {
            if let Some(v) = field(l, "physical id") {
                phys = v;
            } else if let Some(v) = field(l, "core id") {
                cores.insert((phys.clone(), v));
            }
        }
        Machine { cpu, cores: if cores.is_empty() { logical } else { cores.len() }, logical }
    }
}

/// The 1-minute load average (Linux), for the report: the figures are noisy when it exceeds the threads.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// What the PyTorch side said about itself.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TorchInfo {
    pub python: String,
    pub version: String,
    pub threads: usize,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: &'static CaseSpec,
    pub ours: Timing,
    pub torch: Option<Timing>,
}

impl Row {
    /// ours / PyTorch's.
    pub fn ratio(&self) -> Option<f64> {
        self.torch.map(|t| self.ours.seconds / t.seconds)
    }
}

/// The results of `instagen bench cpu`; `Display` is the table.
#[derive(Clone, Debug)]
pub struct CpuBenchReport {
    pub kind: BackendKind,
    pub machine: Machine,
    /// Our threads (rayon's global pool).
    pub threads: usize,
    pub min_seconds: f64,
    pub torch: Option<TorchInfo>,
    pub load: (Option<f64>, Option<f64>),
    pub rows: Vec<Row>,
}

fn backend_label(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::CpuReference => "cpu-reference (the exact reference alone)",
        _ => "cpu (the engine: fast paths where an op family has one)",
    }
}

/// Seconds in a readable unit.
pub(crate) fn fmt_secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

impl std::fmt::Display for CpuBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.machine;
        writeln!(f, "instagen bench cpu: backend {}, f32, random weights", backend_label(self.kind))?;
        writeln!(f, "machine: {}, {} cores, {} logical CPUs", m.cpu, m.cores, m.logical)?;
        match &self.torch {
            Some(t) => writeln!(f, "threads: ours {} (rayon), torch {} (torch {}, {})", self.threads, t.threads, t.version, t.python)?,
            None => writeln!(f, "threads: ours {} (rayon)", self.threads)?,
        }
        let load = |l: Option<f64>| l.map_or("?".into(), |v| format!("{v:.2}"));
        writeln!(
            f,
            "load average (1 min): {} before, {} after; each side: 1 warm-up call, then the median of the timed calls \
             (at least 1, at least {} s)",
            load(self.load.0),
            load(self.load.1),
            self.min_seconds
        )?;
        writeln!(f, "{:<20} {:>11} {:>5} {:>11} {:>5} {:>10}  {}", "case", "ours", "runs", "torch", "runs", "ours/torch", "what")?;
        for r in &self.rows {
            let (t, tr, ratio) = match (r.torch, r.ratio()) {
                (Some(t), Some(q)) => (fmt_secs(t.seconds), t.runs.to_string(), format!("{q:.2}")),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<20} {:>11} {:>5} {:>11} {:>5} {:>10}  {}",
                r.case.name,
                fmt_secs(r.ours.seconds),
                r.ours.runs,
                t,
                tr,
                ratio,
                r.case.about
            )?;
        }
        match &self.torch {
            None => writeln!(
                f,
                "torch: not run. To time PyTorch in the same run, give --torch PYTHON (or set INSTAGEN_TORCH_PYTHON) \
                 naming a Python with torch, diffusers and transformers."
            )?,
            Some(t) if t.threads != self.threads => writeln!(
                f,
                "warning: torch ran {} threads, ours {}: the ratios compare different thread counts",
                t.threads, self.threads
            )?,
            Some(_) => {}
        }
        if self.busy() {
            writeln!(
                f,
                "warning: the machine was busy before the run (load {:.2} on {} CPUs, {} threads asked): the figures are \
                 noisy, and PyTorch's OpenMP threads, which spin-wait at every op, suffer far more from shared cores \
                 than ours; compare on an idle machine",
                self.load.0.unwrap_or(0.0),
                self.machine.logical,
                self.threads
            )?;
        }
        Ok(())
    }
}

impl CpuBenchReport {
    /// Whether the load before the run plus our threads exceeded the CPUs (by more than half a CPU).
    pub fn busy(&self) -> bool {
        self.load.0.is_some_and(|l| l + self.threads as f64 > self.machine.logical as f64 + 0.5)
    }

    /// The results as JSON (what `--json` writes).
    pub fn to_json(&self) -> serde_json::Value {
        let timing = |t: &Timing| serde_json::json!({ "seconds": t.seconds, "runs": t.runs });
        serde_json::json!({
            "backend": match self.kind { BackendKind::CpuReference => "cpu-reference", _ => "cpu" },
            "machine": self.machine,
            "threads": self.threads,
            "min_seconds": self.min_seconds,
            "torch": self.torch,
            "load_average": [self.load.0, self.load.1],
            "busy": self.busy(),
            "cases": self.rows.iter().map(|r| serde_json::json!({
                "case": r.case.name,
                "about": r.case.about,
                "ours": timing(&r.ours),
                "torch": r.torch.as_ref().map(timing),
                "ratio": r.ratio(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The Python of PyTorch's side: `--torch` if given, else `INSTAGEN_TORCH_PYTHON` if set and not empty.
pub fn torch_python(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("INSTAGEN_TORCH_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// Builds rayon's global pool with `threads` threads (before anything else uses rayon).
pub fn set_threads(threads: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::Other(format!("--threads {threads}: could not build the thread pool ({e})")))
}

/// `instagen bench cpu`.
pub fn run(o: &CpuBenchOptions) -> Result<CpuBenchReport> {
    if !matches!(o.kind, BackendKind::Cpu | BackendKind::CpuReference) {
        return Err(Error::Other(format!("bench cpu: --backend {:?} is not a CPU backend (cpu or cpu-reference)", o.kind)));
    }
    crate::pipeline::sample::check_bench_args(1, o.min_seconds)?;
    let cases = select(&o.filter)?;
    if let Some(path) = &o.json {
        // Checked before the minutes of timing, not after.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
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
        let torch = match &o.torch {
            Some(py) => {
                let (t, info) = torch_case(py, case.name, threads, o.min_seconds)?;
                eprintln!("[{}/{}] {}: torch {} ({} runs)", i + 1, cases.len(), case.name, fmt_secs(t.seconds), t.runs);
                torch_info.get_or_insert(info);
                Some(t)
            }
            None => None,
        };
        let ours = ours_case(o.kind, case.name, o.min_seconds).map_err(|e| e.building(format!("bench cpu case {}", case.name)))?;
        eprintln!("[{}/{}] {}: ours {} ({} runs)", i + 1, cases.len(), case.name, fmt_secs(ours.seconds), ours.runs);
        rows.push(Row { case, ours, torch });
    }
    let report = CpuBenchReport {
        kind: o.kind,
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

/// Our side of one case.
fn ours_case(kind: BackendKind, name: &str, min_seconds: f64) -> Result<Timing> {
    use crate::pipeline::{finetune::bench::bench_train_unet, sample::bench_unet, txt2img};
    let f32 = DType::F32;
    Ok(match name {
        "unet-sd1.fwd" => bench_unet(kind, "sd-v1", 2, None, f32, min_seconds)?.timing,
        "unet-fixture.fwd" => bench_unet(kind, "fixture", 2, None, f32, min_seconds)?.timing,
        "unet-fixture.train" => bench_train_unet(kind, "fixture", 2, None, f32, min_seconds)?.timing,
        "clip-sd1.fwd" => txt2img::bench_clip(kind, "sd-v1", 2, f32, min_seconds)?.timing,
        "vae-sd1.decode" => txt2img::bench_vae(kind, "sd-v1", 1, Some(64), f32, min_seconds)?.timing,
        _ => {
            let (g, store) = op_graph(name)?;
            crate::with_backend!(kind, |mk| time_op_graph(mk()?, g, &store, min_seconds)?)
        }
    })
}

/// The single-op cases as graphs: inputs are parameters (uploaded once, so a call is the ops alone); `.fwd`
/// outputs the op, `.fwd+bwd` the gradients of `sum(op(inputs) * r)` (r random) with respect to every input,
/// as PyTorch's side computes them.
fn op_graph(name: &str) -> Result<(Graph, ParamStore)> {
    let (base, grads) = name.split_once('.').map(|(b, k)| (b, k == "fwd+bwd")).unwrap_or((name, false));
    let mut g = Graph::new();
    let mut store = ParamStore::new();
    let mut rng = Rng::new(11);
    let msda_shape = crate::ops::msda::parity::head_shape(2);
    if base == "msda" {
        // Sampling locations uniform over the maps and a little past their borders, as the head's are.
        let n = msda_shape.loc().iter().product();
        store.insert("loc", HostTensor::from_f32(&msda_shape.loc(), DType::F32, &rng.uniform_vec(n, -0.1, 1.1))?);
    }
    let mut param = |g: &mut Graph, n: &str, shape: &[usize], std: f32| -> Result<NodeId> {
        let vals = rng.normal_vec(shape.iter().product(), std);
        store.insert(n, HostTensor::from_f32(shape, DType::F32, &vals)?);
        g.param(n, shape, DType::F32)
    };
    let (ins, out) = match base {
        "attention" => {
            let s = [2, 4096, 8, 40]; // [B, T, H, D]
            let q = param(&mut g, "q", &s, 1.0)?;
            let k = param(&mut g, "k", &s, 1.0)?;
            let v = param(&mut g, "v", &s, 1.0)?;
            let o = g.push(Op::Attention { causal: false, scale: 1.0 / 40f32.sqrt() }, &[q, k, v])?; // (B, T, H, D)
            (vec![q, k, v], o)
        }
        "conv3x3" => {
            let x = param(&mut g, "x", &[2, 64, 64, 320], 1.0)?; // (B, H, W, C)
            let w = param(&mut g, "w", &[320, 320, 3, 3], 1.0 / (320.0f32 * 9.0).sqrt())?;
            let b = param(&mut g, "b", &[320], 1.0)?;
            let y = g.push(Op::Conv2d { stride: 1, padding: 1, bias: true }, &[x, w, b])?; // (B, H, W, O)
            (vec![x, w, b], y)
        }
        "msda" => {
            let sh = &msda_shape;
            let value = param(&mut g, "value", &sh.value(), 1.0)?; // (B, S, H, D)
            let loc = g.param("loc", &sh.loc(), DType::F32)?; // (B, Q, H, L, P, 2)
            let attn = param(&mut g, "attn", &sh.attn(), 1.0)?; // (B, Q, H, L, P)
            let o = crate::nn::msda::msda(&mut g, value, loc, attn, &sh.levels)?; // (B, Q, H * D)
            (vec![value, loc, attn], o)
        }
        _ => return Err(Error::Other(format!("bench cpu: no case '{name}'"))),
    };
    if grads {
        let shape = g.shape(out).to_vec();
        let r = param(&mut g, "r", &shape, 1.0)?;
        let prod = g.mul(out, r)?;
        let loss = g.sum_all(prod)?;
        for d in autodiff::backward(&mut g, loss, &ins)? {
            g.mark_output(d);
        }
    } else {
        g.mark_output(out);
    }
    Ok((g, store))
}

fn time_op_graph<B: Backend>(backend: B, g: Graph, store: &ParamStore, min_seconds: f64) -> Result<Timing> {
    let mut ex = Executor::new(backend, g, store)?;
    measure(1, min_seconds, || {
        ex.run(&[])?;
        ex.backend().synchronize()
    })
}

/// PyTorch's side of one case: runs `python - --cases NAME ...` with [`TORCH_SCRIPT`] on stdin and reads its
/// JSON lines.
fn torch_case(python: &Path, case: &str, threads: usize, min_seconds: f64) -> Result<(Timing, TorchInfo)> {
    let args = [
        "-".to_string(),
        "--cases".into(),
        case.into(),
        "--threads".into(),
        threads.to_string(),
        "--min-seconds".into(),
        min_seconds.to_string(),
        "--fixture-unet-config".into(),
        crate::pipeline::sample::FIXTURE_UNET_CONFIG.into(),
    ];
    let shown = format!("{} - --cases {case} --threads {threads} --min-seconds {min_seconds} (tools/bench_cpu_torch.py on stdin)", python.display());
    let (stdout, stderr) = run_peer(python, TORCH_SCRIPT, &args, threads, &shown)?;
    let fail = |msg: String| Error::Other(format!("the PyTorch side `{shown}`: {msg}"));
    let (timings, info) = parse_torch_output(&stdout).map_err(|m| fail(format!("{m}; its stderr ends:\n{}", stderr_tail(&stderr))))?;
    let info = TorchInfo { python: python.display().to_string(), ..info.ok_or_else(|| fail("printed no {\"torch\": ...} line".into()))? };
    let t = timings.iter().find(|(n, _)| n == case).map(|p| p.1).ok_or_else(|| fail(format!("printed no result for case {case}")))?;
    Ok((t, info))
}

/// The last 15 lines of a peer's stderr.
pub(crate) fn stderr_tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `python ARGS` with `script` on stdin and `threads` OpenMP/MKL threads; its (stdout, stderr) when it
/// exits 0, else an error naming `shown` with the end of its stderr.
pub(crate) fn run_peer(python: &Path, script: &str, args: &[String], threads: usize, shown: &str) -> Result<(String, String)> {
    let fail = |msg: String| Error::Other(format!("the PyTorch side `{shown}`: {msg}"));
    let mut child = Command::new(python)
        .args(args)
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not start {} ({e}); --torch / INSTAGEN_TORCH_PYTHON must name a Python", python.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A peer that exits without reading its stdin is judged by its exit status and output below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("could not wait for it ({e})")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(fail(format!("failed ({}); its stderr ends:\n{}", out.status, stderr_tail(&stderr))));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr.into_owned()))
}

/// The script's stdout: every non-empty line a JSON object, either `{"torch": VERSION, "threads": N}` or
/// `{"case": NAME, "seconds": S, "runs": N}` (S finite and > 0, N >= 1). Anything else is an error naming the line.
pub fn parse_torch_output(stdout: &str) -> std::result::Result<(Vec<(String, Timing)>, Option<TorchInfo>), String> {
    let mut timings = Vec::new();
    let mut info = None;
    for (i, line) in stdout.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| format!("line {} of its output {why}: {line:?}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("is not JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| bad("is not a JSON object"))?;
        if let Some(version) = obj.get("torch") {
            let version = version.as_str().ok_or_else(|| bad("has a \"torch\" that is not a string"))?.to_string();
            let threads = obj.get("threads").and_then(|t| t.as_u64()).ok_or_else(|| bad("lacks a whole \"threads\""))?;
            info = Some(TorchInfo { python: String::new(), version, threads: threads as usize });
        } else if let Some(case) = obj.get("case") {
            let case = case.as_str().ok_or_else(|| bad("has a \"case\" that is not a string"))?.to_string();
            let seconds = obj.get("seconds").and_then(|s| s.as_f64()).filter(|s| s.is_finite() && *s > 0.0);
            let seconds = seconds.ok_or_else(|| bad("lacks a finite positive \"seconds\""))?;
            let runs = obj.get("runs").and_then(|r| r.as_u64()).filter(|&r| r >= 1).ok_or_else(|| bad("lacks a whole \"runs\" >= 1"))?;
            timings.push((case, Timing { seconds, runs: runs as usize }));
        } else {
            return Err(bad("has neither \"case\" nor \"torch\""));
        }
    }
    Ok((timings, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_alternatives_and_no_match() {
        let names = |f: &str| select(f).unwrap().iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names("").len(), CASES.len());
        assert_eq!(names("fixture"), ["unet-fixture.fwd", "unet-fixture.train"]);
        assert_eq!(names("conv3x3.fwd+bwd, clip"), ["clip-sd1.fwd", "conv3x3.fwd+bwd"]);
        let e = select("nothing-like-this").unwrap_err().to_string();
        assert!(e.contains("nothing-like-this") && e.contains("unet-sd1.fwd"), "{e}");
    }

    /// Every case has one PyTorch counterpart of the same name in the script, and the script has no others.
    #[test]
    fn script_names_the_same_cases() {
        let mut script: Vec<&str> = TORCH_SCRIPT.split("@case(\"").skip(1).filter_map(|s| s.split('"').next()).collect();
        let mut ours: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        script.sort();
        ours.sort();
        assert_eq!(script, ours);
    }

    #[test]
    fn parses_the_peer_and_rejects_garbage() {
        let (t, info) = parse_torch_output("{\"torch\": \"2.5\", \"threads\": 2}\n\n{\"case\": \"a.fwd\", \"seconds\": 0.25, \"runs\": 4}\n").unwrap();
        assert_eq!(t, vec![("a.fwd".to_string(), Timing { seconds: 0.25, runs: 4 })]);
        assert_eq!(info.unwrap().threads, 2);
        for bad in [
            "Warning: something",
            "[1, 2]",
            "{\"case\": \"a\", \"seconds\": -1, \"runs\": 1}",
            "{\"case\": \"a\", \"seconds\": 1}",
            "{\"case\": 3, \"seconds\": 1, \"runs\": 1}",
            "{\"torch\": \"2.5\"}",
            "{\"other\": 1}",
        ] {
            let e = parse_torch_output(bad).unwrap_err();
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn table_rows_ratio_and_busy_warning() {
        let t = |seconds, runs| Timing { seconds, runs };
        let mut r = CpuBenchReport {
            kind: BackendKind::Cpu,
            machine: Machine { cpu: "test CPU".into(), cores: 2, logical: 2 },
            threads: 2,
            min_seconds: 1.0,
            torch: Some(TorchInfo { python: "py".into(), version: "9.9".into(), threads: 2 }),
            load: (Some(0.3), Some(1.9)),
            rows: vec![
                Row { case: &CASES[0], ours: t(0.03, 40), torch: Some(t(0.02, 51)) },
                Row { case: &CASES[CASES.len() - 1], ours: t(250.0, 1), torch: None },
            ],
        };
        let s = r.to_string();
        let row = |name: &str| s.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().take(8).collect::<Vec<_>>().join(" ");
        assert_eq!(row(CASES[0].name), "unet-fixture.fwd 30.00 ms 40 20.00 ms 51 1.50");
        assert_eq!(row(CASES[CASES.len() - 1].name), "unet-sd1.fwd 250.00 s 1 - - - SD");
        assert!(!s.contains("warning"), "{s}");
        r.load.0 = Some(1.2);
        assert!(r.to_string().contains("warning: the machine was busy before the run (load 1.20 on 2 CPUs"));
        assert_eq!(r.to_json()["cases"][0]["ratio"].as_f64(), Some(0.03 / 0.02));
    }

    #[test]
    fn op_graphs_build_and_differentiate() {
        for name in ["attention.fwd", "attention.fwd+bwd", "conv3x3.fwd", "conv3x3.fwd+bwd", "msda.fwd", "msda.fwd+bwd"] {
            let (g, store) = op_graph(name).unwrap();
            let outs = g.outputs().len();
            assert_eq!(outs, if name.ends_with("bwd") { 3 } else { 1 }, "{name}");
            assert!(store.numel() > 0);
        }
        assert!(op_graph("nope.fwd").is_err());
    }
}
