//! The runtime layer on the CPU backend: device parameters shared by executors, the trainer (AdamW, SGD,
//! parameter groups, frozen parameters, clipping, loss scaling, accumulation, EMA), optimiser state that saves
//! and loads bit-exactly, and the learning-rate schedules.

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{autodiff, Graph, NodeId, Plan, UnaryOp};
use instagen::nn;
use instagen::optim::{AdamWConfig, Algorithm, LossScaleConfig, ParamGroup, SgdConfig, TrainConfig};
use instagen::params::ParamStore;
use instagen::runtime::{scaled_loss, DeviceParams, Executor, Schedule, Trainer};
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

const IN: usize = 4;

/// A small regression net: linear 4->16 (bias), tanh, layer norm, linear 16->1 (bias), MSE against `y`.
struct Net {
    graph: Graph,
    loss: NodeId,
    pred: NodeId,
    grads: Vec<(String, NodeId)>,
}

fn net(batch: usize, dtype: DType, loss_scaling: bool, trainable: impl Fn(&str) -> bool) -> Net {
    let mut g = Graph::new();
    let x = g.input("x", &[batch, IN], dtype).unwrap();
    let y = g.input("y", &[batch, 1], dtype).unwrap();
    let h = nn::linear(&mut g, "fc1", x, 16, true).unwrap();
    let h = g.unary(UnaryOp::Tanh, h).unwrap();
    let h = nn::layer_norm(&mut g, "ln", h, 1e-5).unwrap();
    let pred = nn::linear(&mut g, "fc2", h, 1, true).unwrap();
    let loss = nn::mse(&mut g, pred, y).unwrap();
    let loss = if dtype == DType::F32 { loss } else { g.cast(loss, DType::F32).unwrap() };
    g.mark_output(pred);
    let grads = if loss_scaling {
        let scaled = scaled_loss(&mut g, loss).unwrap();
        let grads = autodiff::param_grads_for(&mut g, scaled, &trainable).unwrap();
        g.mark_output(loss);
        grads
    } else {
        autodiff::param_grads_for(&mut g, loss, &trainable).unwrap()
    };
    Net { graph: g, loss, pred, grads }
}

/// Fixed data for `batch` rows: y = sin(sum of x).
fn data(batch: usize, dtype: DType, seed: u64) -> (HostTensor, HostTensor) {
    let mut rng = Rng::new(seed);
    let xs = rng.uniform_vec(batch * IN, -1.0, 1.0);
    let ys: Vec<f32> = xs.chunks(IN).map(|r| r.iter().sum::<f32>().sin()).collect();
    (
        HostTensor::from_f32(&[batch, IN], dtype, &xs).unwrap(),
        HostTensor::from_f32(&[batch, 1], dtype, &ys).unwrap(),
    )
}

fn init(dtype: DType) -> ParamStore {
    let g = net(1, DType::F32, false, |_| true).graph;
    let mut s = ParamStore::new();
    for (name, t) in nn::init_params(&g, 7).unwrap().iter() {
        s.insert(name, t.cast(dtype));
    }
    s
}

fn names(grads: &[(String, NodeId)]) -> Vec<String> {
    grads.iter().map(|g| g.0.clone()).collect()
}

fn adamw(lr: f32, wd: f32) -> TrainConfig {
    TrainConfig { algorithm: Algorithm::AdamW(AdamWConfig { lr, weight_decay: wd, ..AdamWConfig::default() }), ..TrainConfig::default() }
}

fn bytes_equal(a: &ParamStore, b: &ParamStore) -> bool {
    a.len() == b.len() && a.iter().all(|(n, t)| b.get(n).is_some_and(|u| u.data == t.data && u.shape == t.shape))
}

#[test]
fn executors_share_parameters_and_see_each_others_updates() {
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let train = net(8, DType::F32, false, |_| true);
    let eval = net(3, DType::F32, false, |_| true);
    let mut tex = Executor::with_params(train.graph.clone(), Plan::new(&train.graph), &dev).unwrap();
    let mut eex = Executor::with_params(eval.graph.clone(), Plan::new(&eval.graph), &dev).unwrap();
    let (x3, y3) = data(3, DType::F32, 2);
    eex.run(&[("x", &x3), ("y", &y3)]).unwrap();
    let before = eex.get(eval.pred).unwrap().to_f32();

    let mut trainer = Trainer::new(&dev, &names(&train.grads), adamw(1e-2, 0.0), |_, _| ParamGroup::default_for(0.0)).unwrap();
    let (x8, y8) = data(8, DType::F32, 1);
    tex.run(&[("x", &x8), ("y", &y8)]).unwrap();
    let stats = trainer.step(&mut tex, &train.grads, 1e-2).unwrap();
    assert!(!stats.skipped && stats.grad_norm > 0.0 && stats.step == 1, "{stats:?}");

    eex.run(&[("x", &x3), ("y", &y3)]).unwrap();
    let after = eex.get(eval.pred).unwrap().to_f32();
    assert_ne!(before, after, "the eval executor did not see the update");
    // What the eval graph computes is exactly what a fresh executor on the updated weights computes.
    let updated = dev.download().unwrap();
    assert!(bytes_equal(&updated, &tex.device_params().download().unwrap()));
    let mut fresh = Executor::new(CpuBackend, eval.graph.clone(), &updated).unwrap();
    fresh.run(&[("x", &x3), ("y", &y3)]).unwrap();
    assert_eq!(fresh.get(eval.pred).unwrap().to_f32(), after);
    // And a graph whose parameter does not fit the device's is refused with the name.
    let mut bad = Graph::new();
    let x = bad.input("x", &[2, 5], DType::F32).unwrap();
    let y = nn::linear(&mut bad, "fc1", x, 16, true).unwrap();
    bad.mark_output(y);
    let err = Executor::with_params(bad.clone(), Plan::new(&bad), &dev).err().unwrap().to_string();
    assert!(err.contains("fc1.weight") && err.contains("[16, 5]"), "{err}");
}

/// Run `steps` steps of `cfg` on fresh weights, returning the executor's trainer and device parameters.
fn train_steps(dtype: DType, cfg: TrainConfig, steps: std::ops::Range<u64>, resume: Option<(&ParamStore, &ParamStore, &instagen::runtime::TrainerState)>) -> (ParamStore, ParamStore, instagen::runtime::TrainerState, ParamStore) {
    let n = net(8, dtype, cfg.loss_scale.is_some(), |_| true);
    let start = match resume {
        Some((p, _, _)) => p.clone(),
        None => init(dtype),
    };
    let dev = DeviceParams::upload(CpuBackend, &start).unwrap();
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let mut t = Trainer::new(&dev, &names(&n.grads), cfg, ParamGroup::no_decay_on_1d(0.1)).unwrap();
    if let Some((_, s, st)) = resume {
        t.load_state(s, st).unwrap();
    }
    let sched = Schedule::WarmupCosine { start_factor: 0.1, warmup: 3, total: 10, eta_min: 1e-4 };
    for step in steps {
        let (x, y) = data(8, dtype, 100 + step);
        let ls = t.loss_scale_input(&[]).unwrap();
        let mut feed = vec![("x", &x), ("y", &y)];
        if cfg.loss_scale.is_some() {
            feed.push(("loss_scale", &ls));
        }
        ex.run(&feed).unwrap();
        let lr = sched.lr(5e-2, t.steps()) as f32;
        t.step(&mut ex, &n.grads, lr).unwrap();
    }
    let (s, st) = t.export_state().unwrap();
    let ema = if cfg.ema_decay.is_some() { t.ema_model().unwrap() } else { ParamStore::new() };
    (dev.download().unwrap(), s, st, ema)
}

#[test]
fn save_load_continue_is_bit_identical() {
    let cases = [
        (DType::F32, TrainConfig { ema_decay: Some(0.9), max_grad_norm: Some(0.5), ..adamw(0.0, 0.1) }),
        (
            DType::BF16,
            TrainConfig { ema_decay: Some(0.8), loss_scale: Some(LossScaleConfig { growth_interval: 2, ..Default::default() }), ..adamw(0.0, 0.1) },
        ),
        (
            DType::F32,
            TrainConfig {
                algorithm: Algorithm::Sgd(SgdConfig { lr: 0.0, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: true }),
                ema_decay: Some(0.9),
                ..TrainConfig::default()
            },
        ),
    ];
    for (dtype, cfg) in cases {
        let (p_all, s_all, st_all, ema_all) = train_steps(dtype, cfg, 0..8, None);
        let (p_half, s_half, st_half, _) = train_steps(dtype, cfg, 0..4, None);
        let (p_res, s_res, st_res, ema_res) = train_steps(dtype, cfg, 4..8, Some((&p_half, &s_half, &st_half)));
        let what = format!("{dtype} {}", cfg.algorithm.name());
        assert!(!bytes_equal(&p_half, &p_all), "{what}: training did not change the weights after step 4");
        assert!(bytes_equal(&p_all, &p_res), "{what}: parameters differ after resume");
        assert!(bytes_equal(&s_all, &s_res), "{what}: optimiser state differs after resume");
        assert!(bytes_equal(&ema_all, &ema_res), "{what}: EMA differs after resume");
        assert_eq!(st_all, st_res, "{what}");
        assert_eq!(st_all.step, 8 - st_all.skipped_steps, "{what}");
        let kinds: Vec<&str> = s_all.iter().map(|(n, _)| n.split('/').next().unwrap()).collect();
        assert!(kinds.contains(&"ema"), "{what}: no ema tensors in {kinds:?}");
        if dtype != DType::F32 {
            assert!(kinds.contains(&"master"), "{what}: no master weights");
        }
    }
}

#[test]
fn frozen_parameters_get_no_gradient_nodes() {
    let all = net(8, DType::F32, false, |_| true);
    let frozen = net(8, DType::F32, false, |n| n.starts_with("fc2."));
    assert_eq!(names(&frozen.grads), vec!["fc2.weight".to_string(), "fc2.bias".to_string()]);
    // Only fc2's gradients are built: nothing flows back through the layer norm, tanh or fc1.
    let forward = net(8, DType::F32, false, |_| false).graph.len();
    eprintln!("nodes: forward {forward}, fc2 trainable {}, all trainable {}", frozen.graph.len(), all.graph.len());
    assert!(frozen.graph.len() < all.graph.len());
    // No backward node reaches into the frozen layers: none has fc1.weight's shape [16, 4] (its gradient would),
    // none is a layer-norm or tanh backward; with everything trainable, all of those exist. (The MSE's own
    // backward, a unary_bwd Square, is needed for fc2 and present in both.)
    let into_frozen = |g: &Graph| {
        g.nodes()[forward..]
            .iter()
            .filter(|n| n.shape == [16, 4] || ["LayerNormBwd", "unary_bwd Tanh"].iter().any(|o| n.op.describe().starts_with(o)))
            .count()
    };
    assert_eq!(into_frozen(&frozen.graph), 0);
    assert!(into_frozen(&all.graph) >= 3, "{}", into_frozen(&all.graph));
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let before = dev.download().unwrap();
    let mut ex = Executor::with_params(frozen.graph.clone(), Plan::new(&frozen.graph), &dev).unwrap();
    let mut t = Trainer::new(&dev, &names(&frozen.grads), adamw(1e-2, 0.1), ParamGroup::no_decay_on_1d(0.1)).unwrap();
    let (x, y) = data(8, DType::F32, 3);
    ex.run(&[("x", &x), ("y", &y)]).unwrap();
    t.step(&mut ex, &frozen.grads, 1e-2).unwrap();
    let after = dev.download().unwrap();
    for (name, t0) in before.iter() {
        let changed = after.get(name).unwrap().data != t0.data;
        assert_eq!(changed, name.starts_with("fc2."), "{name}");
    }
    // A gradient of a frozen parameter is refused.
    let err = t.step(&mut ex, &all.grads[..1], 1e-2).err().unwrap().to_string();
    assert!(err.contains("fc1.weight"), "{err}");
}

#[test]
fn parameter_groups_apply_their_weight_decay_and_lr_factor() {
    // With zero gradients (lr factor 0 on everything but decay), AdamW only decays: p <- p (1 - lr wd).
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let n = net(8, DType::F32, false, |_| true);
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let before = dev.download().unwrap();
    let rule = |name: &str, shape: &[usize]| ParamGroup {
        lr_factor: if name.starts_with("fc1.") { 2.0 } else { 1.0 },
        weight_decay: if shape.len() <= 1 { 0.0 } else { 0.5 },
    };
    let mut t = Trainer::new(&dev, &names(&n.grads), adamw(0.0, 0.0), rule).unwrap();
    let (x, y) = data(8, DType::F32, 4);
    ex.run(&[("x", &x), ("y", &y)]).unwrap();
    let lr = 1e-2f32;
    t.step(&mut ex, &n.grads, lr).unwrap();
    let after = dev.download().unwrap();
    // The AdamW update of step 1 is lr * m_hat / (sqrt(v_hat) + eps) = lr * sign(g) (up to eps): take it out
    // and what is left is the decay.
    for (name, t0) in before.iter() {
        let (p0, p1) = (t0.to_f32(), after.get(name).unwrap().to_f32());
        let factor = if name.starts_with("fc1.") { 2.0 } else { 1.0 };
        let wd = if t0.shape.len() <= 1 { 0.0 } else { 0.5 };
        let lr_g = lr * factor;
        for (a, b) in p0.iter().zip(&p1) {
            let decayed = a * (1.0 - lr_g * wd);
            let step = (decayed - b).abs();
            assert!(step <= lr_g * 1.0001 && (step >= lr_g * 0.999 || step < 1e-6), "{name}: {a} -> {b}, lr {lr_g}, wd {wd}");
        }
    }
}

#[test]
fn sgd_trains_and_matches_the_pytorch_formula() {
    // Two steps by hand for one parameter tensor: PyTorch's SGD with momentum, dampening, Nesterov, decay.
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.2, weight_decay: 0.05, nesterov: true };
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let n = net(8, DType::F32, false, |_| true);
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let tc = TrainConfig { algorithm: Algorithm::Sgd(cfg), ..TrainConfig::default() };
    let mut t = Trainer::new(&dev, &names(&n.grads), tc, |_, _| ParamGroup::default_for(0.05)).unwrap();
    let w = dev.get("fc1.weight").unwrap().to_f32();
    let gid = n.grads.iter().find(|g| g.0 == "fc1.weight").unwrap().1;
    let mut want: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut buf = vec![0f64; w.len()];
    for step in 0..2 {
        let (x, y) = data(8, DType::F32, 20 + step);
        ex.run(&[("x", &x), ("y", &y)]).unwrap();
        let g = ex.get(gid).unwrap().to_f32();
        t.step(&mut ex, &n.grads, cfg.lr).unwrap();
        for i in 0..w.len() {
            let d = g[i] as f64 + 0.05 * want[i];
            buf[i] = if step == 0 { d } else { 0.9 * buf[i] + (1.0 - 0.2) * d };
            want[i] -= 0.1 * (d + 0.9 * buf[i]);
        }
    }
    let got = dev.get("fc1.weight").unwrap().to_f32();
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
    // And it trains: the loss on fixed data falls.
    let (x, y) = data(64, DType::F32, 5);
    let big = net(64, DType::F32, false, |_| true);
    let mut bex = Executor::with_params(big.graph.clone(), Plan::new(&big.graph), &dev).unwrap();
    let mut losses = Vec::new();
    for _ in 0..150 {
        bex.run(&[("x", &x), ("y", &y)]).unwrap();
        losses.push(bex.get(big.loss).unwrap().scalar_f32().unwrap());
        t.step(&mut bex, &big.grads, 0.05).unwrap();
    }
    eprintln!("sgd: loss {} -> {}", losses[0], losses[losses.len() - 1]);
    assert!(losses[losses.len() - 1] < 0.25 * losses[0], "{} -> {}", losses[0], losses[losses.len() - 1]);
}

#[test]
fn gradient_norm_and_clipping() {
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let n = net(8, DType::F32, false, |_| true);
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let sgd = TrainConfig { algorithm: Algorithm::Sgd(SgdConfig::default()), max_grad_norm: Some(0.01), ..TrainConfig::default() };
    let mut t = Trainer::new(&dev, &names(&n.grads), sgd, |_, _| ParamGroup::default_for(0.0)).unwrap();
    let (x, y) = data(8, DType::F32, 6);
    ex.run(&[("x", &x), ("y", &y)]).unwrap();
    let grads: Vec<Vec<f32>> = n.grads.iter().map(|g| ex.get(g.1).unwrap().to_f32()).collect();
    let want: f64 = grads.iter().flatten().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let before = dev.download().unwrap();
    let stats = t.step(&mut ex, &n.grads, 1.0).unwrap();
    assert!((stats.grad_norm as f64 - want).abs() <= 1e-6 * want, "{} vs {want}", stats.grad_norm);
    assert!(want > 0.01, "the test needs a gradient norm above the clip ({want})");
    // Plain SGD with lr 1: the update is the clipped gradient, whose norm is the clip.
    let after = dev.download().unwrap();
    let moved: f64 = before
        .iter()
        .flat_map(|(name, t0)| t0.to_f32().into_iter().zip(after.get(name).unwrap().to_f32()).map(|(a, b)| ((a - b) as f64).powi(2)))
        .sum::<f64>()
        .sqrt();
    assert!((moved - 0.01).abs() <= 1e-4 * 0.01 + 1e-7, "update norm {moved}");
}

#[test]
fn loss_scaling_skips_overflowing_steps_and_backs_off() {
    // f16 parameters and activations; the loss is scaled in f32 and the gradients come back in f16, which
    // overflows at the initial scale 2^16 (f16's largest value is 65504): the first steps are skipped and the
    // scale halves until the gradients fit; then the scale grows after `growth_interval` good steps.
    let n = net(8, DType::F16, true, |_| true);
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F16)).unwrap();
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let ls = LossScaleConfig { growth_interval: 3, ..LossScaleConfig::default() };
    let cfg = TrainConfig { loss_scale: Some(ls), ..adamw(1e-2, 0.0) };
    let mut t = Trainer::new(&dev, &names(&n.grads), cfg, ParamGroup::no_decay_on_1d(0.0)).unwrap();
    let mut log = Vec::new();
    let (x, y) = data(8, DType::F16, 9);
    let mut poisoned = y.clone();
    poisoned.data[0..2].copy_from_slice(&[0x00, 0x7c]); // +inf in f16
    for step in 0..14 {
        let before = dev.download().unwrap();
        let scale = t.loss_scale_input(&[]).unwrap();
        // Step 10 is fed an inf target: an injected overflow whatever the scale.
        let yy = if step == 10 { &poisoned } else { &y };
        ex.run(&[("x", &x), ("y", yy), ("loss_scale", &scale)]).unwrap();
        let finite = n.grads.iter().all(|g| ex.get(g.1).unwrap().to_f32().iter().all(|v| v.is_finite()));
        let s = t.step(&mut ex, &n.grads, 1e-2).unwrap();
        let unchanged = bytes_equal(&before, &dev.download().unwrap());
        assert_eq!(s.skipped, !finite, "step {step}: {s:?}");
        assert_eq!(s.skipped, unchanged, "step {step}: {s:?}");
        log.push((s.skipped, s.loss_scale));
    }
    eprintln!("(skipped, loss scale): {log:?}");
    assert!(log[0].0 && log[0].1 == 65536.0, "2^16 should overflow f16 gradients: {log:?}");
    assert!(log[10].0, "the injected inf was not skipped: {log:?}");
    assert!(log.iter().filter(|l| !l.0).count() >= 5, "too few good steps: {log:?}");
    // GradScaler's rule, replayed: halve after a skipped step, double after 3 good steps in a row.
    let (mut scale, mut good) = (65536f32, 0);
    for (k, &(skipped, s)) in log.iter().enumerate() {
        assert_eq!(s, scale, "step {k}: {log:?}");
        if skipped {
            scale *= 0.5;
            good = 0;
        } else {
            good += 1;
            if good == 3 {
                scale *= 2.0;
                good = 0;
            }
        }
    }
    assert_eq!(t.loss_scale(), scale);
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    for k in [2usize, 4] {
        let (xb, yb) = data(16, DType::F32, 30);
        let big = net(16, DType::F32, false, |_| true);
        let small = net(16 / k, DType::F32, false, |_| true);
        let cfg = TrainConfig { accumulation: true, ..adamw(1e-2, 0.1) };
        let run = |micro: bool| {
            let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
            let n = if micro { &small } else { &big };
            let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
            let mut t = Trainer::new(&dev, &names(&n.grads), cfg, ParamGroup::no_decay_on_1d(0.1)).unwrap();
            let mut norms = Vec::new();
            for _ in 0..3 {
                if !micro {
                    ex.run(&[("x", &xb), ("y", &yb)]).unwrap();
                    norms.push(t.step(&mut ex, &n.grads, 1e-2).unwrap().grad_norm);
                    continue;
                }
                let rows = 16 / k;
                for j in 0..k {
                    let x = HostTensor::from_bytes(&[rows, IN], DType::F32, xb.data[j * rows * IN * 4..(j + 1) * rows * IN * 4].to_vec()).unwrap();
                    let y = HostTensor::from_bytes(&[rows, 1], DType::F32, yb.data[j * rows * 4..(j + 1) * rows * 4].to_vec()).unwrap();
                    ex.run(&[("x", &x), ("y", &y)]).unwrap();
                    if j + 1 < k {
                        t.accumulate(&mut ex, &n.grads).unwrap();
                    } else {
                        norms.push(t.step(&mut ex, &n.grads, 1e-2).unwrap().grad_norm);
                    }
                }
            }
            (dev.download().unwrap(), norms)
        };
        let ((pa, na), (pb, nb)) = (run(false), run(true));
        for (a, b) in na.iter().zip(&nb) {
            assert!((a - b).abs() <= 1e-5 * a, "k={k}: grad norm {a} vs {b}");
        }
        let mut worst = 0f32;
        for (name, t) in pa.iter() {
            for (a, b) in t.to_f32().iter().zip(pb.get(name).unwrap().to_f32()) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("k={k}: largest parameter difference after 3 steps {worst:e}");
        // AdamW steps are ~lr per element; f32 rounding of the gradients moves them by far less.
        assert!(worst <= 1e-5, "k={k}: {worst}");
        assert!(!bytes_equal(&pa, &init(DType::F32)));
    }
}

#[test]
fn ema_follows_the_weights() {
    let dev = DeviceParams::upload(CpuBackend, &init(DType::BF16)).unwrap();
    let n = net(8, DType::BF16, false, |_| true);
    let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
    let cfg = TrainConfig { ema_decay: Some(0.75), ..adamw(1e-2, 0.0) };
    let mut t = Trainer::new(&dev, &names(&n.grads), cfg, ParamGroup::no_decay_on_1d(0.0)).unwrap();
    let mut want: Vec<Vec<f64>> = Vec::new();
    for step in 0..4 {
        let (x, y) = data(8, DType::BF16, 40 + step);
        ex.run(&[("x", &x), ("y", &y)]).unwrap();
        t.step(&mut ex, &n.grads, 1e-2).unwrap();
        // The EMA follows the f32 master weights (exported with the optimiser state).
        let (state, _) = t.export_state().unwrap();
        for (k, name) in t.trainable().iter().enumerate() {
            let w = state.get(&format!("master/{name}")).unwrap().to_f32();
            if want.len() <= k {
                want.push(init(DType::BF16).get(name).unwrap().to_f32().iter().map(|&v| v as f64).collect());
            }
            for (e, &w) in want[k].iter_mut().zip(&w) {
                *e = 0.75 * *e + 0.25 * w as f64;
            }
        }
    }
    let ema = t.ema_params_f32().unwrap();
    for (k, name) in t.trainable().iter().enumerate() {
        for (g, w) in ema.get(name).unwrap().to_f32().iter().zip(&want[k]) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w.abs().max(1e-2), "{name}: {g} vs {w}");
        }
    }
    // The model export holds the EMA in the parameters' dtype, and the frozen ones as they are.
    let model = t.ema_model().unwrap();
    assert_eq!(model.get("fc1.weight").unwrap().dtype, DType::BF16);
    assert_eq!(model.get("fc1.weight").unwrap().data, ema.get("fc1.weight").unwrap().cast(DType::BF16).data);
}

#[test]
fn schedules_follow_the_pytorch_formulas() {
    let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
    // LinearLR(start_factor=0.25, total_iters=4), base 0.1: 0.1 * (0.25 + 0.75 * min(t, 4) / 4).
    let s = Schedule::LinearWarmup { start_factor: 0.25, warmup: 4 };
    for (t, want) in [(0, 0.025), (1, 0.04375), (2, 0.0625), (3, 0.08125), (4, 0.1), (10, 0.1)] {
        close(s.lr(0.1, t), want);
    }
    // MultiStepLR(milestones=[3, 6], gamma=0.1), base 1.
    let s = Schedule::MultiStep { milestones: vec![3, 6], gamma: 0.1 };
    for (t, want) in [(0, 1.0), (2, 1.0), (3, 0.1), (5, 0.1), (6, 0.01), (100, 0.01)] {
        close(s.lr(1.0, t), want);
    }
    // CosineAnnealingLR(T_max=10, eta_min=0.1), base 1: 0.1 + 0.9 (1 + cos(pi t / 10)) / 2;
    // cos(pi/5) = 0.80901699437494745, cos(pi/2) = 0.
    let s = Schedule::Cosine { t_max: 10, eta_min: 0.1 };
    for (t, want) in [(0, 1.0), (2, 0.1 + 0.45 * 1.809_016_994_374_947_5), (5, 0.55), (10, 0.1)] {
        close(s.lr(1.0, t), want);
    }
    // Warmup (start 0.5, 2 steps) then cosine over the remaining 10 steps to 0.
    let s = Schedule::WarmupCosine { start_factor: 0.5, warmup: 2, total: 12, eta_min: 0.0 };
    for (t, want) in [(0, 0.5), (1, 0.75), (2, 1.0), (4, 0.5 * 1.809_016_994_374_947_5), (7, 0.5), (12, 0.0)] {
        close(s.lr(1.0, t), want);
    }
}

/// The whole trainer on the emulated kernels (device gradient norm, SGD with master weights, accumulation,
/// EMA, loss scaling) tracks the CPU backend step for step.
#[test]
fn trainer_on_emu_tracks_the_cpu() {
    use instagen::backend::emu::EmuBackend;
    use instagen::backend::Backend;
    fn run<B: Backend>(b: B, dtype: DType, cfg: TrainConfig) -> (Vec<f32>, ParamStore, ParamStore) {
        let n = net(4, dtype, true, |_| true);
        let dev = DeviceParams::upload(b, &init(dtype)).unwrap();
        let mut ex = Executor::with_params(n.graph.clone(), Plan::new(&n.graph), &dev).unwrap();
        let mut t = Trainer::new(&dev, &names(&n.grads), cfg, ParamGroup::no_decay_on_1d(0.05)).unwrap();
        let mut norms = Vec::new();
        for step in 0..6u64 {
            let (x, y) = data(4, dtype, 50 + step);
            let s = t.loss_scale_input(&[]).unwrap();
            ex.run(&[("x", &x), ("y", &y), ("loss_scale", &s)]).unwrap();
            if step % 2 == 0 {
                t.accumulate(&mut ex, &n.grads).unwrap();
            } else {
                norms.push(t.step(&mut ex, &n.grads, 0.05).unwrap().grad_norm);
            }
        }
        (norms, dev.download().unwrap(), t.ema_params_f32().unwrap())
    }
    let sgd = Algorithm::Sgd(SgdConfig { lr: 0.0, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true });
    for (dtype, algorithm) in [(DType::F32, sgd), (DType::BF16, sgd), (DType::F16, Algorithm::AdamW(AdamWConfig::default()))] {
        let cfg = TrainConfig {
            algorithm,
            max_grad_norm: Some(0.5),
            loss_scale: Some(LossScaleConfig { init_scale: 256.0, ..Default::default() }),
            ema_decay: Some(0.9),
            accumulation: true,
        };
        let (cn, cp, ce) = run(CpuBackend, dtype, cfg);
        let (en, ep, ee) = run(EmuBackend::new(), dtype, cfg);
        // The gradients are stored in the parameters' dtype, each rounded once on both sides from f32 values
        // that differ by summation order: the norms agree to two units of that dtype (f32: 1e-5 relative).
        let unit = match dtype {
            DType::F16 => 2f32.powi(-11),
            DType::BF16 => 2f32.powi(-8),
            _ => 5e-6,
        };
        eprintln!("{dtype}: grad norms cpu {cn:?} emu {en:?}");
        for (a, b) in cn.iter().zip(&en) {
            assert!((a - b).abs() <= 2.0 * unit * a.abs(), "{dtype}: grad norm cpu {a} emu {b}");
        }
        // Both backends compute in f32 with the same formulas; the parameters may differ by rounding of the
        // stored activations (f16/bf16), compounded over three steps.
        let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        for (store, other, what) in [(&cp, &ep, "params"), (&ce, &ee, "ema")] {
            for (name, t) in store.iter() {
                for (a, b) in t.to_f32().iter().zip(other.get(name).unwrap().to_f32()) {
                    assert!((a - b).abs() <= tol * a.abs().max(1e-1), "{dtype} {what} {name}: cpu {a} emu {b}");
                }
            }
        }
        assert!(!bytes_equal(&cp, &init(dtype)), "{dtype}: nothing trained");
    }
}

#[test]
fn loading_mismatched_optimiser_state_names_what_is_wrong() {
    let n = net(4, DType::F32, false, |_| true);
    let dev = DeviceParams::upload(CpuBackend, &init(DType::F32)).unwrap();
    let t = Trainer::new(&dev, &names(&n.grads), TrainConfig { ema_decay: Some(0.9), ..adamw(1e-3, 0.0) }, |_, _| ParamGroup::default_for(0.0)).unwrap();
    let (tensors, state) = t.export_state().unwrap();
    let mut other = Trainer::new(&dev, &names(&n.grads), TrainConfig { ema_decay: Some(0.9), ..adamw(1e-3, 0.0) }, |_, _| ParamGroup::default_for(0.0)).unwrap();
    other.load_state(&tensors, &state).unwrap();
    let mut missing = ParamStore::new();
    for (name, t) in tensors.iter().filter(|(n, _)| *n != "exp_avg/fc1.bias") {
        missing.insert(name, t.clone());
    }
    let err = other.load_state(&missing, &state).err().unwrap().to_string();
    assert!(err.contains("exp_avg/fc1.bias"), "{err}");
    let mut extra = tensors.clone();
    extra.insert("ema/nope", HostTensor::zeros(&[1], DType::F32));
    let err = other.load_state(&extra, &state).err().unwrap().to_string();
    assert!(err.contains("ema/nope"), "{err}");
    let sgd = TrainConfig { algorithm: Algorithm::Sgd(SgdConfig::default()), ema_decay: Some(0.9), ..TrainConfig::default() };
    let mut s = Trainer::new(&dev, &names(&n.grads), sgd, |_, _| ParamGroup::default_for(0.0)).unwrap();
    let err = s.load_state(&tensors, &state).err().unwrap().to_string();
    assert!(err.contains("adamw") && err.contains("sgd"), "{err}");
}
