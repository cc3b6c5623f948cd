//! Checkpoints and the training loop: save/load/validate, keep-last-K, resume, NaN stop, the metrics file and
//! curves, and the kill test (a child process SIGKILLed after checkpoint k, resumed to N, gives bit-identical
//! parameters and optimiser state to an uninterrupted run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instagen::backend::cpu::CpuBackend;
use instagen::data::{stack, Batch, Dataset, LoaderConfig, Position};
use instagen::error::{Error, Result};
use instagen::graph::{autodiff, Graph, NodeId, UnaryOp};
use instagen::nn;
use instagen::optim::AdamWConfig;
use instagen::params::ParamStore;
use instagen::runtime::checkpoint::{self, Checkpoint, CheckpointState};
use instagen::runtime::runlog::{self, StepRecord};
use instagen::runtime::TrainerState;
use instagen::runtime::train_loop::{kill_at_checkpoint, train, LoopConfig, StepOutput, TrainState, TrainTask};
use instagen::runtime::Executor;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_ck_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_checkpoint(step: u64, ema: bool) -> Checkpoint {
    let mut rng = Rng::new(step);
    let t = |n: usize, rng: &mut Rng| HostTensor::from_f32(&[n], DType::F32, &rng.normal_vec(n, 1.0)).unwrap();
    let mut params = ParamStore::new();
    params.insert("w", t(6, &mut rng));
    params.insert("b", t(2, &mut rng).cast(DType::BF16));
    let mut optim = ParamStore::new();
    optim.insert("w.exp_avg", t(6, &mut rng));
    let state = CheckpointState {
        step,
        position: Position { epoch: 1, index: 8 },
        rng: rng.state(),
        config: serde_json::json!({ "lr": 1e-4, "model": { "width": 8 }, "steps": 100 }),
        version: checkpoint::VERSION.into(),
        loss_scale: Some(1024.0),
        ema,
        scalars: BTreeMap::from([("adam_step".to_string(), serde_json::json!(step))]),
        skipped_samples: 0,
    };
    Checkpoint { params: params.clone(), optim, ema: ema.then_some(params), state }
}

#[test]
fn save_load_keep_and_latest() {
    let run = temp_dir("keep");
    assert_eq!(checkpoint::latest(&run).unwrap(), None);
    for step in [5, 10, 15, 20] {
        let ck = small_checkpoint(step, step % 10 == 0);
        let dir = ck.save(&run, 2).unwrap();
        assert_eq!(dir, run.join(format!("checkpoints/step-{step:06}")));
        assert_eq!(Checkpoint::load(&dir).unwrap(), ck);
    }
    let steps: Vec<u64> = checkpoint::list(&run).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![15, 20]);
    // A temporary folder (a save cut short) and a folder without state.json are not checkpoints.
    std::fs::create_dir_all(run.join("checkpoints/.step-000025.tmp-1-0")).unwrap();
    std::fs::create_dir_all(run.join("checkpoints/step-000030")).unwrap();
    assert_eq!(checkpoint::latest(&run).unwrap(), Some(run.join("checkpoints/step-000020")));
    // Saving the same step again replaces it.
    let ck = small_checkpoint(20, false);
    ck.save(&run, 2).unwrap();
    assert_eq!(Checkpoint::load(&run.join("checkpoints/step-000020")).unwrap(), ck);
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn loading_names_what_is_wrong() {
    let run = temp_dir("bad");
    let dir = small_checkpoint(7, true).save(&run, 3).unwrap();
    let err = |f: &dyn Fn(&Path)| {
        let copy = run.join("copy");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        f(&copy);
        Checkpoint::load(&copy).err().expect("should fail").to_string()
    };
    let e = err(&|d| std::fs::remove_file(d.join("ema.safetensors")).unwrap());
    assert!(e.contains("ema.safetensors") && e.contains("No such file"), "{e}");
    let e = err(&|d| {
        let p = d.join("optim.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 5]).unwrap();
    });
    assert!(e.contains("optim.safetensors") && e.contains("w.exp_avg"), "{e}");
    let e = err(&|d| {
        let p = d.join("state.json");
        let t = std::fs::read_to_string(&p).unwrap().replace("\"step\": 7", "\"step\": \"seven\"");
        std::fs::write(&p, t).unwrap();
    });
    assert!(e.contains("state.json") && e.contains("key \"step\""), "{e}");
    let e = err(&|d| std::fs::write(d.join("state.json"), "{\"step\": 7, ").unwrap());
    assert!(e.contains("state.json") && e.contains("EOF"), "{e}");
    let e = err(&|d| {
        let p = d.join("state.json");
        let t = std::fs::read_to_string(&p).unwrap().replace(checkpoint::VERSION, "0.0.0-old");
        std::fs::write(&p, t).unwrap();
    });
    assert!(e.contains("state.json") && e.contains("0.0.0-old") && e.contains(checkpoint::VERSION), "{e}");

    let saved = serde_json::json!({ "lr": 1e-4, "model": { "width": 8 }, "steps": 100 });
    checkpoint::check_config(&saved, &serde_json::json!({ "lr": 1e-4, "model": { "width": 8 }, "steps": 200 }), &["steps"]).unwrap();
    let e = checkpoint::check_config(&saved, &serde_json::json!({ "lr": 1e-4, "model": { "width": 16 }, "steps": 100 }), &[]).unwrap_err().to_string();
    assert!(e.contains("'model.width'") && e.contains("8") && e.contains("16"), "{e}");
    let e = checkpoint::check_config(&saved, &serde_json::json!({ "lr": 1e-4, "model": { "width": 8 } }), &[]).unwrap_err().to_string();
    assert!(e.contains("'steps'"), "{e}");
    std::fs::remove_dir_all(&run).ok();
}

// ---- a small real model: an MLP trained with AdamW through the Executor on the CPU backend ----

const B: usize = 8;

/// 64 points x in [-1, 1]^2 with y = sin(3 x0) cos(2 x1); a sample also draws a jitter of x from its generator
/// (so the per-sample generators matter).
struct Points;

impl Dataset for Points {
    type Item = ([f32; 2], f32);
    fn len(&self) -> usize {
        64
    }
    fn get(&self, index: usize, rng: &mut Rng) -> Result<([f32; 2], f32)> {
        let mut r = Rng::new(index as u64);
        let x = [r.range(-1.0, 1.0) + 0.01 * rng.normal(), r.range(-1.0, 1.0)];
        Ok((x, (3.0 * x[0]).sin() * (2.0 * x[1]).cos()))
    }
}

struct Mlp {
    graph: Graph,
    loss: NodeId,
    grads: Vec<(String, NodeId)>,
    ex: Executor<CpuBackend>,
    /// Seconds to sleep after each step from step `K` on (the child of the kill test, so that it is surely
    /// killed between checkpoint `K` and the end even on a busy machine).
    pause: f32,
    /// Make the loss of this step (0-based) NaN.
    nan_at: Option<u64>,
}

impl Mlp {
    fn new(seed: u64) -> Mlp {
        let mut g = Graph::new();
        let x = g.input("x", &[B, 2], DType::F32).unwrap(); // (B, 2)
        let y = g.input("y", &[B, 1], DType::F32).unwrap(); // (B, 1)
        let h = nn::linear(&mut g, "fc1", x, 16, true).unwrap(); // (B, 16)
        let h = g.unary(UnaryOp::Tanh, h).unwrap(); // (B, 16)
        let p = nn::linear(&mut g, "fc2", h, 1, true).unwrap(); // (B, 1)
        let loss = nn::mse(&mut g, p, y).unwrap(); // ()
        let grads = autodiff::param_grads(&mut g, loss).unwrap();
        let store = nn::init_params(&g, seed).unwrap();
        let ex = Executor::new(CpuBackend, g.clone(), &store).unwrap();
        Mlp { graph: g, loss, grads, ex, pause: 0.0, nan_at: None }
    }
}

impl TrainTask for Mlp {
    type Item = ([f32; 2], f32);
    fn step(&mut self, step: u64, batch: Batch<Self::Item>, rng: &mut Rng) -> Result<StepOutput> {
        let xs: Vec<HostTensor> = batch.items.iter().map(|(x, _)| HostTensor::from_f32(&[2], DType::F32, x)).collect::<Result<_>>()?;
        // Target noise from the loop's generator: a resume that lost the RNG state would differ.
        let ys: Vec<f32> = batch.items.iter().map(|(_, y)| y + 0.01 * rng.normal()).collect();
        let (xt, yt) = (stack(&xs)?, HostTensor::from_f32(&[B, 1], DType::F32, &ys)?);
        self.ex.run(&[("x", &xt), ("y", &yt)])?;
        let mut loss = self.ex.get(self.loss)?.scalar_f32()?;
        if self.nan_at == Some(step) {
            loss = f32::NAN;
        }
        // Cosine schedule from the step number.
        let lr = 1e-2 * (0.5 + 0.5 * (std::f32::consts::PI * step as f32 / 40.0).cos());
        let cfg = adamw(lr);
        let norm = self.ex.adamw_step(&self.grads, &cfg, Some(1.0))?;
        if self.pause > 0.0 && step >= K {
            std::thread::sleep(Duration::from_secs_f32(self.pause));
        }
        Ok(StepOutput { losses: vec![("mse".into(), loss)], lr, grad_norm: Some(norm), loss_scale: None, skipped: false, samples: B })
    }
    fn save_state(&mut self) -> Result<TrainState> {
        let (optim, state) = self.ex.adamw_state()?.ok_or_else(|| Error::Other("no optimiser step yet".into()))?;
        let scalars = BTreeMap::from([("trainer".to_string(), serde_json::to_value(state).map_err(|e| Error::Other(e.to_string()))?)]);
        Ok(TrainState { params: self.ex.params()?, optim, ema: None, loss_scale: None, scalars })
    }
    fn load_state(&mut self, st: TrainState) -> Result<()> {
        let state = st.scalars.get("trainer").cloned().ok_or_else(|| Error::Other("scalar 'trainer' missing".into()))?;
        let state: TrainerState = serde_json::from_value(state).map_err(|e| Error::Other(format!("scalar 'trainer': {e}")))?;
        self.ex = Executor::new(CpuBackend, self.graph.clone(), &st.params)?;
        self.ex.set_adamw_state(&self.grads, &adamw(0.0), &st.optim, &state)
    }
}

fn adamw(lr: f32) -> AdamWConfig {
    AdamWConfig { lr, weight_decay: 0.01, ..AdamWConfig::default() }
}

const N: u64 = 40;
const K: u64 = 15;

fn loop_config(run: &Path, resume: bool) -> LoopConfig {
    LoopConfig {
        run_dir: run.to_path_buf(),
        steps: N,
        save_every: 5,
        keep: 3,
        resume,
        seed: 9,
        config: serde_json::json!({ "model": "mlp-2-16-1", "batch": B, "seed": 9 }),
        may_differ: vec![],
        // INSTAGEN_TEST_PROGRESS=1 shows the bar (when stderr is a terminal), to look at it.
        progress: std::env::var_os("INSTAGEN_TEST_PROGRESS").is_some(),
    }
}

fn run_mlp(run: &Path, resume: bool, workers: usize, pause: f32) -> Result<()> {
    let mut mlp = Mlp::new(3);
    mlp.pause = pause;
    train(Arc::new(Points), LoaderConfig::new(B, workers, 5), &mut mlp, &loop_config(run, resume)).map(|_| ())
}

/// The child of the kill test: trains the MLP in the folder named by the variable, slowly.
#[test]
fn kill_test_child() {
    if let Ok(run) = std::env::var("INSTAGEN_KILL_TEST_RUN") {
        run_mlp(Path::new(&run), false, 2, 0.1).unwrap();
    }
}

fn metrics(run: &Path) -> Vec<StepRecord> {
    let text = std::fs::read_to_string(run.join(runlog::METRICS_FILE)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn kill_and_resume_is_bit_identical() {
    let straight = temp_dir("straight");
    run_mlp(&straight, false, 1, 0.0).unwrap();
    let want = Checkpoint::load(&checkpoint::checkpoint_dir(&straight, N)).unwrap();

    let killed = temp_dir("killed");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "kill_test_child", "--nocapture", "--test-threads", "1"]).env("INSTAGEN_KILL_TEST_RUN", &killed);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    assert!(kill_at_checkpoint(&mut cmd, &killed, K, Duration::from_secs(120)).unwrap(), "the child finished before it was killed");
    let at = checkpoint::list(&killed).unwrap().last().unwrap().0;
    assert!((K..N).contains(&at), "killed at checkpoint {at}");
    // Fresh start without --resume is refused.
    let e = run_mlp(&killed, false, 0, 0.0).unwrap_err().to_string();
    assert!(e.contains("already holds checkpoints"), "{e}");
    // Resume with a different worker count (the data does not depend on it).
    run_mlp(&killed, true, 3, 0.0).unwrap();
    let got = Checkpoint::load(&checkpoint::checkpoint_dir(&killed, N)).unwrap();
    assert!(got.params == want.params, "parameters differ after kill and resume (killed after checkpoint {at})");
    assert!(got.optim == want.optim, "optimiser state differs");
    assert_eq!(got.state.rng, want.state.rng);
    assert_eq!(got.state.position, want.state.position);
    // metrics.jsonl lists every step once, with the uninterrupted run's losses.
    let (a, b) = (metrics(&straight), metrics(&killed));
    assert_eq!(b.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());
    assert_eq!(a.iter().map(|r| &r.losses).collect::<Vec<_>>(), b.iter().map(|r| &r.losses).collect::<Vec<_>>());
    let first = a[0].losses["mse"].unwrap();
    let last = a.last().unwrap().losses["mse"].unwrap();
    eprintln!("MLP mse {first:.4} -> {last:.4} over {N} steps; killed after checkpoint {at}");
    assert!(last < first, "the loss should fall");
    // Curves and their description were written.
    for f in [runlog::LOSS_PNG, runlog::LR_PNG, runlog::CURVES_JSON] {
        assert!(std::fs::metadata(killed.join(f)).unwrap().len() > 100, "{f}");
    }
    let img = image::open(killed.join(runlog::LOSS_PNG)).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 480));
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]), "the loss curve is not drawn");
    let curves: serde_json::Value = serde_json::from_slice(&std::fs::read(killed.join(runlog::CURVES_JSON)).unwrap()).unwrap();
    assert_eq!(curves["steps"], N);
    assert_eq!(curves["loss.png"]["x"]["max"], N as f64);
    // INSTAGEN_KEEP_TEST_RUN=1 keeps the run folders to look at (the curves, metrics.jsonl).
    if std::env::var_os("INSTAGEN_KEEP_TEST_RUN").is_none() {
        std::fs::remove_dir_all(&straight).ok();
        std::fs::remove_dir_all(&killed).ok();
    } else {
        eprintln!("kept {} and {}", straight.display(), killed.display());
    }
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let run = temp_dir("nan");
    let mut mlp = Mlp::new(3);
    mlp.nan_at = Some(7);
    let e = train(Arc::new(Points), LoaderConfig::new(B, 0, 5), &mut mlp, &loop_config(&run, false)).unwrap_err().to_string();
    assert!(e.contains("step 8") && e.contains("'mse'") && e.contains("step-000005"), "{e}");
    assert_eq!(checkpoint::latest(&run).unwrap(), Some(checkpoint::checkpoint_dir(&run, 5)));
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn ticks_are_round() {
    assert_eq!(runlog::ticks(0.0, 40.0, 8), vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]);
    assert_eq!(runlog::ticks(0.13, 0.61, 6), vec![0.2, 0.3, 0.4, 0.5, 0.6]);
}

#[test]
fn resuming_with_another_config_names_the_field() {
    let run = temp_dir("config");
    let mut cfg = loop_config(&run, false);
    cfg.steps = 10;
    train(Arc::new(Points), LoaderConfig::new(B, 0, 5), &mut Mlp::new(3), &cfg).unwrap();
    let mut cfg = loop_config(&run, true);
    cfg.config["batch"] = serde_json::json!(16);
    cfg.may_differ = vec!["steps".into()];
    let e = train(Arc::new(Points), LoaderConfig::new(B, 0, 5), &mut Mlp::new(3), &cfg).unwrap_err().to_string();
    assert!(e.contains("state.json") && e.contains("'batch'") && e.contains("16"), "{e}");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn metrics_are_cut_back_to_the_checkpoint_on_resume() {
    let run = temp_dir("metrics");
    let rec = |step: u64| StepRecord {
        step,
        losses: BTreeMap::from([("mse".to_string(), Some(1.0 / step as f32)), ("nan".to_string(), None)]),
        lr: 1e-3,
        grad_norm: Some(0.5),
        loss_scale: None,
        samples_per_s: 10.0,
        skipped: false,
    };
    {
        let mut log = runlog::RunLog::open(&run, 0, 10, false).unwrap();
        for s in 1..=9 {
            log.log_step(rec(s)).unwrap();
        }
    }
    // A line cut short by a crash.
    let path = run.join(runlog::METRICS_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"step\":10,\"los");
    std::fs::write(&path, text).unwrap();
    let mut log = runlog::RunLog::open(&run, 6, 10, false).unwrap();
    assert_eq!(log.history().iter().map(|r| r.step).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    log.log_step(rec(7)).unwrap();
    drop(log);
    let back: Vec<StepRecord> = metrics(&run);
    assert_eq!(back, (1..=7).map(rec).collect::<Vec<_>>());
    // A fresh run starts the file again.
    drop(runlog::RunLog::open(&run, 0, 10, false).unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn lenient_skips_are_counted_across_a_resume() {
    struct SomeBad;
    impl Dataset for SomeBad {
        type Item = ([f32; 2], f32);
        fn len(&self) -> usize {
            64
        }
        fn get(&self, index: usize, rng: &mut Rng) -> Result<([f32; 2], f32)> {
            match index % 10 {
                3 => Err(Error::Other(format!("image {index}: cannot be read"))),
                _ => Points.get(index, rng),
            }
        }
    }
    let run = temp_dir("lenient");
    let loader = LoaderConfig { lenient: true, ..LoaderConfig::new(B, 2, 5) };
    let mut cfg = loop_config(&run, false);
    cfg.steps = 10;
    let first = train(Arc::new(SomeBad), loader, &mut Mlp::new(3), &cfg).unwrap();
    // 10 steps of 8 read 80 + k samples; the 64-sample order has 7 bad indices (3, 13, ..., 63) per epoch.
    assert!(first.skipped_samples >= 7, "{first:?}");
    let ck = checkpoint::read_state(&checkpoint::checkpoint_dir(&run, 10)).unwrap();
    assert_eq!(ck.skipped_samples, first.skipped_samples);
    let mut cfg = loop_config(&run, true);
    cfg.steps = 20;
    let second = train(Arc::new(SomeBad), loader, &mut Mlp::new(3), &cfg).unwrap();
    assert!(second.skipped_samples > first.skipped_samples, "{second:?}");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn curves_of_a_long_noisy_run() {
    let run = temp_dir("curves");
    let mut rng = Rng::new(1);
    let history: Vec<StepRecord> = (1..=300u64)
        .map(|step| StepRecord {
            step,
            losses: BTreeMap::from([
                ("total".to_string(), Some(0.2 + 0.8 / (1.0 + step as f32 / 30.0) + 0.05 * rng.normal())),
                ("aux".to_string(), if step == 50 { None } else { Some(0.1 + 0.02 * rng.normal()) }),
            ]),
            lr: 1e-4 * (step as f32 / 20.0).min(1.0),
            grad_norm: None,
            loss_scale: None,
            samples_per_s: 1.0,
            skipped: false,
        })
        .collect();
    runlog::write_curves(&run, &history).unwrap();
    let curves: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join(runlog::CURVES_JSON)).unwrap()).unwrap();
    assert_eq!(curves["loss.png"]["x"]["ticks"], serde_json::json!([50.0, 100.0, 150.0, 200.0, 250.0, 300.0]));
    assert_eq!(curves["loss.png"]["smoothing"], "light: every step; dark: mean of the last 6 steps");
    assert_eq!(curves["loss.png"]["series"][0]["name"], "aux");
    let y = &curves["lr.png"]["y"];
    let ticks: Vec<f64> = y["ticks"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert!(ticks.len() >= 3 && ticks.iter().all(|t| (y["min"].as_f64().unwrap()..=y["max"].as_f64().unwrap()).contains(t)), "{y}");
    let img = image::open(run.join(runlog::LOSS_PNG)).unwrap().to_rgb8();
    for colour in [[31, 119, 180], [255, 127, 14]] {
        assert!(img.pixels().any(|p| p.0 == colour), "series {colour:?} not drawn");
    }
    if std::env::var_os("INSTAGEN_KEEP_TEST_RUN").is_none() {
        std::fs::remove_dir_all(&run).ok();
    } else {
        eprintln!("kept {}", run.display());
    }
}
