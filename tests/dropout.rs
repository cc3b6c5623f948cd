//! Dropout's counter-based mask: the kept fraction is 1 - p, masks of different (seed, step) are independent,
//! the same (seed, step) gives the same mask, and the op's output and gradient on the CPU backend follow it.

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{autodiff, Graph, Op};
use instagen::ops::dropout::{draw24, keep_scale, stream_key, threshold};
use instagen::params::ParamStore;
use instagen::runtime::Executor;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

#[test]
fn mask_rate_and_independence() {
    let n = 200_000u64;
    for p in [0.1f32, 0.5, 0.9] {
        let thr = threshold(p);
        let kept = (0..n).filter(|&i| draw24(stream_key(7, 3), i) >= thr).count() as f64 / n as f64;
        let sd = ((p * (1.0 - p)) as f64 / n as f64).sqrt();
        assert!((kept - (1.0 - p as f64)).abs() < 5.0 * sd, "p {p}: kept {kept}");
    }
    let thr = threshold(0.5);
    let mask = |seed, step| (0..4096u64).map(|i| draw24(stream_key(seed, step), i) >= thr).collect::<Vec<_>>();
    let agree = |a: &[bool], b: &[bool]| a.iter().zip(b).filter(|(x, y)| x == y).count();
    let base = mask(7, 3);
    for other in [mask(7, 4), mask(8, 3), mask(3, 7)] {
        let same = agree(&base, &other);
        assert!((1800..2300).contains(&same), "masks of different (seed, step) agree on {same} of 4096");
    }
    assert_eq!(base, mask(7, 3));
    assert_eq!(threshold(0.0), 0);
}

#[test]
fn op_and_gradient_follow_the_mask() {
    let (p, n) = (0.25f32, 1000usize);
    let mut g = Graph::new();
    let x = g.input("x", &[n], DType::F32).unwrap();
    let key = g.input("key", &[2], DType::I64).unwrap();
    let y = g.push(Op::Dropout { p }, &[x, key]).unwrap();
    let w = g.input("w", &[n], DType::F32).unwrap();
    let yw = g.mul(y, w).unwrap();
    let loss = g.sum_all(yw).unwrap();
    let dx = autodiff::backward(&mut g, loss, &[x]).unwrap()[0];
    g.mark_output(y);
    g.mark_output(dx);
    let mut rng = Rng::new(5);
    let xs = rng.normal_vec(n, 1.0);
    let ws = rng.normal_vec(n, 1.0);
    let xt = HostTensor::from_f32(&[n], DType::F32, &xs).unwrap();
    let wt = HostTensor::from_f32(&[n], DType::F32, &ws).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &ParamStore::new()).unwrap();
    let mut masks = Vec::new();
    for (seed, step) in [(11u64, 0u64), (11, 1)] {
        let mut kb = Vec::new();
        kb.extend(seed.to_le_bytes());
        kb.extend(step.to_le_bytes());
        let kt = HostTensor { shape: vec![2], dtype: DType::I64, data: kb };
        ex.run(&[("x", &xt), ("key", &kt), ("w", &wt)]).unwrap();
        let (yv, dv) = (ex.get(y).unwrap().to_f32(), ex.get(dx).unwrap().to_f32());
        let s = stream_key(seed, step);
        let mut kept = Vec::new();
        for i in 0..n {
            let keep = draw24(s, i as u64) >= threshold(p);
            let m = if keep { keep_scale(p) } else { 0.0 };
            assert_eq!(yv[i].to_bits(), (xs[i] * m).to_bits(), "y[{i}]");
            assert_eq!(dv[i].to_bits(), (ws[i] * m).to_bits(), "dx[{i}]");
            kept.push(keep);
        }
        masks.push(kept);
    }
    assert_ne!(masks[0], masks[1], "a new step must draw a new mask");
}
