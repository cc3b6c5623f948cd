//! Memory planner properties on random graphs: no two simultaneously live buffers overlap (except an
//! in-place pair at its hand-over step), the planned arena is no larger than the naive one, and a planned run
//! gives bit-identical results to an unplanned run.

use instagen::backend::cpu::CpuBackend;
use instagen::graph::plan::Buffer;
use instagen::graph::{autodiff, BinaryOp, Graph, NodeId, Plan, ReduceOp, UnaryOp};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

/// A random graph over a few inputs: elementwise chains, broadcasts, matmuls, reductions, reshapes and
/// concatenations on tensors of shape (4, 6) or derived from it, with a random subset marked as outputs.
fn random_graph(rng: &mut Rng, steps: usize) -> Graph {
    let mut g = Graph::new();
    let mut pool: Vec<NodeId> = (0..3).map(|i| g.input(&format!("x{i}"), &[4, 6], DType::F32).unwrap()).collect();
    let unary = [UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Exp, UnaryOp::Square, UnaryOp::Neg, UnaryOp::Gelu];
    let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max];
    while g.len() < steps {
        let a = pool[rng.below(pool.len())];
        let b = pool[rng.below(pool.len())];
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        let made = match rng.below(8) {
            0 | 1 => g.unary(unary[rng.below(unary.len())], a),
            2 | 3 if sa == sb => g.binary(binary[rng.below(binary.len())], a, b),
            4 if sa.len() == 2 && sb.len() == 2 && sa[1] == sb[1] => g.matmul_t(a, b, false, true),
            5 if sa.len() == 2 => g.reduce(ReduceOp::Sum, a, &[1], true).and_then(|r| g.add(a, r)),
            6 if sa.len() == 2 && sa == sb => g.concat(&[a, b], 0).and_then(|c| g.slice(c, 0, sa[0] / 2, sa[0] / 2 + sa[0])),
            7 if sa == [4, 6] => g.reshape(a, &[6, 4]).and_then(|r| g.matmul(a, r)),
            _ => continue,
        };
        pool.push(made.unwrap());
    }
    // Bounded magnitudes keep exp/square finite: squash every output.
    let n_out = 1 + rng.below(3);
    for _ in 0..n_out {
        let o = pool[3 + rng.below(pool.len() - 3)];
        let o = g.unary(UnaryOp::Tanh, o).unwrap();
        g.mark_output(o);
    }
    g
}

fn live_together(a: &Buffer, b: &Buffer) -> bool {
    a.first <= b.last && b.first <= a.last
}

fn check_no_overlap(plan: &Plan) {
    let bufs: Vec<&Buffer> = plan.iter().collect();
    for (i, a) in bufs.iter().enumerate() {
        assert!(a.offset + a.bytes <= plan.arena_bytes, "buffer {a:?} beyond the arena");
        for b in &bufs[i + 1..] {
            if !live_together(a, b) || a.bytes == 0 || b.bytes == 0 {
                continue;
            }
            let handover = b.inplace_of == Some(a.node) && a.last == b.first;
            let overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
            assert!(!overlap || handover, "live buffers overlap: {a:?} and {b:?}");
        }
    }
}

fn feed(g: &Graph, rng: &mut Rng) -> Vec<(String, HostTensor)> {
    (0..3)
        .map(|i| {
            let s = g.shape(NodeId(i)).to_vec();
            let n = s.iter().product();
            (format!("x{i}"), HostTensor::from_f32(&s, DType::F32, &rng.normal_vec(n, 0.5)).unwrap())
        })
        .collect()
}

fn run(g: &Graph, plan: Plan, feed: &[(String, HostTensor)]) -> Vec<HostTensor> {
    let mut ex = Executor::with_plan(CpuBackend, g.clone(), plan, &ParamStore::new()).unwrap();
    let f: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    ex.run(&f).unwrap();
    g.outputs().iter().map(|o| ex.get(*o).unwrap()).collect()
}

#[test]
fn random_graphs_plan_soundly_and_run_identically() {
    let mut inplace = 0;
    let (mut planned, mut naive) = (0usize, 0usize);
    for seed in 0..150u64 {
        let mut rng = Rng::new(seed);
        let steps = 12 + rng.below(40);
        let mut g = random_graph(&mut rng, steps);
        // Half the graphs also carry their backward pass (gradients w.r.t. the inputs).
        if seed % 2 == 0 {
            let outs = g.outputs().to_vec();
            let mut total = g.sum_all(outs[0]).unwrap();
            for o in &outs[1..] {
                let s = g.sum_all(*o).unwrap();
                total = g.add(total, s).unwrap();
            }
            let grads = autodiff::backward(&mut g, total, &[NodeId(0), NodeId(1), NodeId(2)]).unwrap();
            for d in grads {
                g.mark_output(d);
            }
        }
        let plan = Plan::new(&g);
        check_no_overlap(&plan);
        assert!(plan.arena_bytes <= plan.naive_bytes, "seed {seed}: {}", plan.summary());
        inplace += plan.iter().filter(|b| b.inplace_of.is_some()).count();
        planned += plan.arena_bytes;
        naive += plan.naive_bytes;
        let f = feed(&g, &mut rng);
        let a = run(&g, plan, &f);
        let b = run(&g, Plan::naive(&g), &f);
        assert_eq!(a, b, "seed {seed}: planned and unplanned runs differ");
    }
    eprintln!("150 random graphs: planned {planned} B vs naive {naive} B, {inplace} in-place buffers");
    assert!(inplace > 0, "no graph exercised in-place reuse");
    assert!(planned < naive, "the planner never reused memory");
}

#[test]
fn outputs_survive_and_dead_nodes_are_not_planned() {
    let mut g = Graph::new();
    let x = g.input("x", &[8], DType::F32).unwrap();
    let dead = g.unary(UnaryOp::Exp, x).unwrap();
    let y = g.unary(UnaryOp::Tanh, x).unwrap();
    let z = g.unary(UnaryOp::Neg, y).unwrap();
    g.mark_output(y);
    g.mark_output(z);
    let plan = Plan::new(&g);
    assert!(plan.buffers[dead.0].is_none(), "a node no output needs got a buffer");
    // y is an output, so z must not overwrite it in place.
    assert_eq!(plan.buffers[z.0].unwrap().inplace_of, None);
    let t = HostTensor::from_f32(&[8], DType::F32, &[0.5; 8]).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &ParamStore::new()).unwrap();
    ex.run(&[("x", &t)]).unwrap();
    assert_eq!(ex.get(y).unwrap().to_f32(), vec![0.5f32.tanh(); 8]);
    assert_eq!(ex.get(z).unwrap().to_f32(), vec![-(0.5f32.tanh()); 8]);
    assert!(ex.get(x).is_err(), "reading a non-output node must be refused");
}
