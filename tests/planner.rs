//! Memory planner properties on random graphs: no two simultaneously live buffers overlap (except an
//! in-place pair at its hand-over step), the planned arena is no larger than the naive one, and a planned run
//! gives bit-identical results to an unplanned run. Staged graphs: the order is topological, stage outputs
//! survive their stage, a stage-by-stage run equals a run in one go bit for bit, and each node runs once.

use std::cell::RefCell;
use std::rc::Rc;

use instagen::backend::cpu::{CpuBackend, CpuMem};
use instagen::backend::{AdamWSlot, Backend, Loc, Mems, SgdSlot};
use instagen::error::Result;
use instagen::optim::{AdamWConfig, SgdConfig};
use instagen::graph::plan::Buffer;
use instagen::graph::{autodiff, BinaryOp, Graph, NodeId, Op, Plan, ReduceOp, UnaryOp};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

/// A random graph over a few inputs: elementwise chains, broadcasts, matmuls, reductions, reshapes and
/// concatenations on tensors of shape (4, 6) or derived from it, with a random subset marked as outputs.
fn random_graph(rng: &mut Rng, steps: usize) -> Graph {
    random_staged_graph(rng, steps, 0)
}

/// As [`random_graph`], with `later` more inputs (`x3`, ...) of stages 1, 2, ..., added to the pool midway, so
/// that nodes of every stage read nodes of earlier ones.
fn random_staged_graph(rng: &mut Rng, steps: usize, later: usize) -> Graph {
    let mut g = Graph::new();
    let mut pool: Vec<NodeId> = (0..3).map(|i| g.input(&format!("x{i}"), &[4, 6], DType::F32).unwrap()).collect();
    let mut next_stage = 1;
    let unary = [UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Exp, UnaryOp::Square, UnaryOp::Neg, UnaryOp::Gelu];
    let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max];
    while g.len() < steps {
        if next_stage <= later && g.len() >= steps * next_stage / (later + 1) {
            let name = format!("x{}", 2 + next_stage);
            pool.push(g.input_stage(&name, &[4, 6], DType::F32, next_stage).unwrap());
            next_stage += 1;
        }
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
        let mut o = pool[3 + rng.below(pool.len() - 3)];
        while g.nodes()[o.0].inputs.is_empty() {
            o = pool[3 + rng.below(pool.len() - 3)]; // a later-stage input: pick again
        }
        let o = g.unary(UnaryOp::Tanh, o).unwrap();
        g.mark_output(o);
    }
    g
}

fn live_together(a: &Buffer, b: &Buffer) -> bool {
    a.first <= b.last && b.first <= a.last
}

fn check_no_overlap(plan: &Plan) {
    let bufs: Vec<&Buffer> = plan.iter().chain(plan.workspaces.iter().flatten()).collect();
    for (i, a) in bufs.iter().enumerate() {
        assert!(a.offset + a.bytes <= plan.arena_bytes, "buffer {a:?} beyond the arena");
        for b in &bufs[i + 1..] {
            if !live_together(a, b) || a.bytes == 0 || b.bytes == 0 {
                continue;
            }
            // (Either way round: a recomputed copy can have a higher index than the node that takes it over.)
            let handover = (b.inplace_of == Some(a.node) && a.last == b.first)
                || (a.inplace_of == Some(b.node) && b.last == a.first);
            let overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
            assert!(!overlap || handover, "live buffers overlap: {a:?} and {b:?}");
        }
    }
}

/// Random values for every input of the graph, with each input's stage.
fn staged_feed(g: &Graph, rng: &mut Rng) -> Vec<(String, HostTensor, usize)> {
    (0..g.len())
        .filter_map(|i| match &g.nodes()[i].op {
            Op::Input { name } => {
                let s = g.shape(NodeId(i)).to_vec();
                let n = s.iter().product();
                let t = HostTensor::from_f32(&s, DType::F32, &rng.normal_vec(n, 0.5)).unwrap();
                Some((name.clone(), t, g.stage(NodeId(i))))
            }
            _ => None,
        })
        .collect()
}

fn feed(g: &Graph, rng: &mut Rng) -> Vec<(String, HostTensor)> {
    staged_feed(g, rng).into_iter().map(|(n, t, _)| (n, t)).collect()
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

/// Adds the backward pass of the sum of the outputs w.r.t. the stage-0 inputs, gradients marked as outputs.
fn add_backward(g: &mut Graph) {
    let outs = g.outputs().to_vec();
    let mut total = g.sum_all(outs[0]).unwrap();
    for o in &outs[1..] {
        let s = g.sum_all(*o).unwrap();
        total = g.add(total, s).unwrap();
    }
    let grads = autodiff::backward(g, total, &[NodeId(0), NodeId(1), NodeId(2)]).unwrap();
    for d in grads {
        g.mark_output(d);
    }
}

#[test]
fn staged_random_graphs_plan_soundly_and_match_one_go() {
    let mut crossing = 0;
    for seed in 0..100u64 {
        let mut rng = Rng::new(1000 + seed);
        let steps = 16 + rng.below(40);
        let later = 1 + rng.below(2);
        let mut g = random_staged_graph(&mut rng, steps, later);
        if seed % 2 == 0 {
            add_backward(&mut g);
        }
        // Stage outputs: a few computed nodes of random stages, read on the host between stages.
        for _ in 0..1 + rng.below(3) {
            let id = NodeId(3 + rng.below(g.len() - 3));
            if !g.nodes()[id.0].inputs.is_empty() {
                g.mark_stage_output(id);
            }
        }
        let plan = Plan::new(&g);
        check_no_overlap(&plan);
        assert!(plan.arena_bytes <= plan.naive_bytes, "seed {seed}: {}", plan.summary());
        assert_eq!(plan.num_stages(), g.num_stages());
        // The order is topological, sorted by stage, and each stage holds exactly the nodes of that stage.
        let mut pos = vec![0; g.len()];
        for (p, id) in plan.order.iter().enumerate() {
            pos[id.0] = p;
        }
        for (i, n) in g.nodes().iter().enumerate() {
            for inp in &n.inputs {
                assert!(pos[inp.0] < pos[i], "seed {seed}: node {i} runs before its input {}", inp.0);
                assert!(g.stage(*inp) <= g.stage(NodeId(i)));
            }
        }
        for k in 0..plan.num_stages() {
            assert!(plan.stage_nodes(k).iter().all(|id| g.stage(*id) == k), "seed {seed}: stage {k}");
        }
        // A value of an earlier stage that a later stage reads lives across the boundary.
        for b in plan.iter() {
            let readers = g.nodes().iter().enumerate().filter(|(_, n)| n.inputs.contains(&b.node));
            for (r, _) in readers.filter(|(r, _)| plan.buffers[*r].is_some()) {
                assert!(b.last >= pos[r], "seed {seed}: node {} dies before its reader {r}", b.node.0);
                crossing += usize::from(g.stage(NodeId(r)) > g.stage(b.node));
            }
        }
        let f = staged_feed(&g, &mut rng);
        // Reference: the same graph in one go with the stage outputs as graph outputs.
        let mut reference = g.clone();
        for o in g.stage_outputs() {
            reference.mark_output(*o);
        }
        let all: Vec<(&str, &HostTensor)> = f.iter().map(|(n, t, _)| (n.as_str(), t)).collect();
        let mut ex_ref = Executor::new(CpuBackend, reference, &ParamStore::new()).unwrap();
        ex_ref.run(&all).unwrap();
        // Staged: each stage with its own inputs, stage outputs read right after their stage.
        let mut ex = Executor::with_plan(CpuBackend, g.clone(), plan, &ParamStore::new()).unwrap();
        ex.poison_arena().unwrap();
        for k in 0..g.num_stages() {
            let ins: Vec<(&str, &HostTensor)> =
                f.iter().filter(|(_, _, s)| *s == k).map(|(n, t, _)| (n.as_str(), t)).collect();
            ex.run_stage(k, &ins).unwrap();
            for o in g.stage_outputs().iter().filter(|o| g.stage(**o) == k) {
                assert_eq!(ex.get(*o).unwrap(), ex_ref.get(*o).unwrap(), "seed {seed}: stage output {}", o.0);
            }
        }
        for o in g.outputs() {
            assert_eq!(ex.get(*o).unwrap(), ex_ref.get(*o).unwrap(), "seed {seed}: output {}", o.0);
        }
        // And the whole staged graph in one go (`run`) gives the same outputs.
        let mut ex_all = Executor::new(CpuBackend, g.clone(), &ParamStore::new()).unwrap();
        ex_all.run(&all).unwrap();
        for o in g.outputs() {
            assert_eq!(ex_all.get(*o).unwrap(), ex_ref.get(*o).unwrap(), "seed {seed}: output {} (run)", o.0);
        }
    }
    assert!(crossing > 0, "no value crossed a stage boundary");
}

/// The CPU backend, recording which nodes it executes.
#[derive(Clone)]
struct Counting(Rc<RefCell<Vec<NodeId>>>);

impl Backend for Counting {
    type Mem = CpuMem;
    fn name(&self) -> &'static str {
        "counting"
    }
    fn alloc(&self, bytes: usize) -> Result<CpuMem> {
        CpuBackend.alloc(bytes)
    }
    fn write(&self, mem: &mut CpuMem, offset: usize, data: &[u8]) -> Result<()> {
        CpuBackend.write(mem, offset, data)
    }
    fn read(&self, mem: &CpuMem, offset: usize, out: &mut [u8]) -> Result<()> {
        CpuBackend.read(mem, offset, out)
    }
    #[allow(clippy::too_many_arguments)]
    fn exec(&self, g: &Graph, id: NodeId, ins: &[Loc], out: Loc, ws: Loc, inplace: Option<usize>, m: &mut Mems<CpuMem>) -> Result<()> {
        self.0.borrow_mut().push(id);
        CpuBackend.exec(g, id, ins, out, ws, inplace, m)
    }
    fn adamw(&self, s: &AdamWSlot, c: &AdamWConfig, step: u32, gs: f32, m: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.adamw(s, c, step, gs, m)
    }
    fn sum_squares(&self, loc: Loc, dtype: DType, m: &Mems<CpuMem>) -> Result<f64> {
        CpuBackend.sum_squares(loc, dtype, m)
    }
    fn sgd(&self, s: &SgdSlot, c: &SgdConfig, first: bool, gs: f32, m: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.sgd(s, c, first, gs, m)
    }
    fn ema(&self, e: Loc, src: Loc, dt: DType, n: usize, decay: f32, m: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.ema(e, src, dt, n, decay, m)
    }
    fn accumulate(&self, acc: Loc, g: Loc, dt: DType, n: usize, first: bool, m: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.accumulate(acc, g, dt, n, first, m)
    }
}

/// A detection-like step: the forward gives scores, the host picks a target per row from them (as matching
/// would), feeds it as a stage-1 input, and stage 1 runs the loss and the backward without recomputing the
/// forward. Every node runs exactly once, and the gradient equals the one of an unstaged graph fed the same
/// target.
#[test]
fn forward_runs_once_across_stages() {
    let build = |target_stage: usize| {
        let mut g = Graph::new();
        let x = g.input("x", &[5, 8], DType::F32).unwrap();
        let w = g.input("w", &[3, 8], DType::F32).unwrap();
        let h = g.matmul_t(x, w, false, true).unwrap();
        let s = g.unary(UnaryOp::Tanh, h).unwrap();
        let t = g.input_stage("target", &[5, 3], DType::F32, target_stage).unwrap();
        let d = g.sub(s, t).unwrap();
        let sq = g.unary(UnaryOp::Square, d).unwrap();
        let loss = g.sum_all(sq).unwrap();
        g.mark_output(loss);
        let gw = autodiff::backward(&mut g, loss, &[w]).unwrap()[0];
        g.mark_output(gw);
        g.mark_stage_output(s);
        (g, s, loss, gw)
    };
    let mut rng = Rng::new(7);
    let x = HostTensor::from_f32(&[5, 8], DType::F32, &rng.normal_vec(40, 1.0)).unwrap();
    let w = HostTensor::from_f32(&[3, 8], DType::F32, &rng.normal_vec(24, 1.0)).unwrap();

    let (g, s, loss, gw) = build(1);
    assert_eq!(g.num_stages(), 2);
    let forward: Vec<NodeId> = (0..g.len()).map(NodeId).filter(|id| g.stage(*id) == 0).collect();
    assert!(forward.contains(&s));
    let mut ex = Executor::new(Counting(Rc::new(RefCell::new(Vec::new()))), g.clone(), &ParamStore::new()).unwrap();
    // Out of order, missing inputs and inputs of the wrong stage are refused.
    let err = ex.run_stage(1, &[]).unwrap_err().to_string();
    assert!(err.contains("out of order"), "{err}");
    let err = ex.run_stage(0, &[("x", &x)]).unwrap_err().to_string();
    assert!(err.contains("'w'") && err.contains("not given"), "{err}");
    let zeros = HostTensor::zeros(&[5, 3], DType::F32);
    let err = ex.run_stage(0, &[("x", &x), ("w", &w), ("target", &zeros)]).unwrap_err().to_string();
    assert!(err.contains("'target'") && err.contains("stage 1"), "{err}");
    ex.backend().0.borrow_mut().clear();

    ex.run_stage(0, &[("x", &x), ("w", &w)]).unwrap();
    let scores = ex.get(s).unwrap().to_f32();
    // Host "matching": one-hot of each row's best score.
    let mut target = vec![0.0f32; 15];
    for r in 0..5 {
        let best = (0..3).max_by(|&a, &b| scores[r * 3 + a].total_cmp(&scores[r * 3 + b])).unwrap();
        target[r * 3 + best] = 1.0;
    }
    let target = HostTensor::from_f32(&[5, 3], DType::F32, &target).unwrap();
    let err = ex.run_stage(1, &[]).unwrap_err().to_string();
    assert!(err.contains("'target'"), "{err}");
    // A failed stage leaves the pass to be restarted from stage 0.
    let err = ex.run_stage(1, &[("target", &target)]).unwrap_err().to_string();
    assert!(err.contains("out of order"), "{err}");
    ex.backend().0.borrow_mut().clear();
    ex.run_stage(0, &[("x", &x), ("w", &w)]).unwrap();
    ex.run_stage(1, &[("target", &target)]).unwrap();
    assert!(ex.get(s).is_err(), "a stage output must not be readable after the next stage ran");

    let ran = ex.backend().0.borrow().clone();
    let mut counts = vec![0; g.len()];
    for id in &ran {
        counts[id.0] += 1;
    }
    let plan = Plan::new(&g);
    for (i, b) in plan.buffers.iter().enumerate() {
        let computed = b.is_some() && !matches!(g.nodes()[i].op, Op::Input { .. });
        assert_eq!(counts[i], usize::from(computed), "node {i} ({}) ran {} times", g.nodes()[i].op.describe(), counts[i]);
    }
    assert!(forward.iter().filter(|id| !g.nodes()[id.0].inputs.is_empty()).all(|id| counts[id.0] == 1));
    assert!(forward.len() < g.len(), "the backward must be in stage 1");

    // The same computation unstaged, fed the target directly.
    let (g1, _, loss1, gw1) = build(0);
    let mut ex1 = Executor::new(CpuBackend, g1, &ParamStore::new()).unwrap();
    ex1.run(&[("x", &x), ("w", &w), ("target", &target)]).unwrap();
    assert_eq!(ex.get(loss).unwrap(), ex1.get(loss1).unwrap());
    assert_eq!(ex.get(gw).unwrap(), ex1.get(gw1).unwrap());
    assert!(ex1.get(loss1).unwrap().to_f32()[0] > 0.0);
}

/// A long reduction gets a workspace (the two-pass kernel path), alive only during its node, overlapping no
/// live buffer; the CPU run (which ignores it) is unchanged.
#[test]
fn workspaces_live_only_during_their_node() {
    let mut g = Graph::new();
    let x = g.input("x", &[3, 40_000], DType::F32).unwrap();
    let a = g.unary(UnaryOp::Tanh, x).unwrap();
    let r = g.sum(a, &[1], true).unwrap();
    let b = g.unary(UnaryOp::Exp, a).unwrap();
    let c = g.add(b, r).unwrap();
    let short = g.slice(c, 1, 0, 100).unwrap();
    let r2 = g.sum(short, &[1], false).unwrap(); // 100 elements: no workspace
    g.mark_output(r2);
    let plan = Plan::new(&g);
    check_no_overlap(&plan);
    let ws = plan.workspaces[r.0].expect("the long reduction has a workspace");
    assert!(ws.bytes >= 3 * 2 * 4, "{ws:?}");
    assert_eq!((ws.first, ws.last), (plan.buffers[r.0].unwrap().first, plan.buffers[r.0].unwrap().first));
    assert!(plan.workspaces[r2.0].is_none());
    assert_eq!(plan.workspaces.iter().flatten().count(), 1);
    let naive = Plan::naive(&g);
    assert!(naive.naive_bytes >= plan.naive_bytes && plan.arena_bytes <= naive.arena_bytes);
    let mut rng = Rng::new(3);
    let f = feed(&g, &mut rng);
    assert_eq!(run(&g, plan, &f), run(&g, naive, &f));
}

/// Activation recomputation: a 4-layer tanh MLP whose first two layers are recomputed (one call per layer)
/// plans a smaller arena, runs the copies in the backward only, and gives bit-identical gradients.
#[test]
fn recomputation_saves_memory_and_keeps_gradients() {
    let build = |recompute: bool| {
        let mut g = Graph::new();
        let x = g.input("x", &[32, 128], DType::F32).unwrap();
        let ws: Vec<NodeId> = (0..4).map(|i| g.input(&format!("w{i}"), &[128, 128], DType::F32).unwrap()).collect();
        let mut h = x;
        let mut layers = Vec::new();
        for &w in &ws {
            let m = g.matmul(h, w).unwrap();
            h = g.unary(UnaryOp::Tanh, m).unwrap();
            layers.push(vec![m, h]);
        }
        let loss = g.sum_all(h).unwrap();
        g.mark_output(loss);
        let fwd_end = g.len();
        let grads = autodiff::backward(&mut g, loss, &ws).unwrap();
        for d in &grads {
            g.mark_output(*d);
        }
        let mut copies = 0;
        if recompute {
            for layer in &layers[..2] {
                copies += g.recompute(layer, fwd_end).unwrap().len();
            }
        }
        (g, grads, copies)
    };
    let (ga, grads_a, _) = build(false);
    let (gb, grads_b, copies) = build(true);
    assert_eq!(copies, 4);
    let (pa, pb) = (Plan::new(&ga), Plan::new(&gb));
    check_no_overlap(&pb);
    eprintln!("recomputation of 2 of 4 layers: {} -> {}", pa.summary(), pb.summary());
    assert!(pb.arena_bytes < pa.arena_bytes, "{} vs {}", pb.summary(), pa.summary());
    let mut pos = vec![0; gb.len()];
    for (p, id) in pb.order.iter().enumerate() {
        pos[id.0] = p;
    }
    for (i, n) in gb.nodes().iter().enumerate() {
        for inp in &n.inputs {
            assert!(pos[inp.0] < pos[i], "node {i} runs before its input {}", inp.0);
        }
    }
    let mut rng = Rng::new(9);
    let f = feed(&ga, &mut rng);
    let run_grads = |g: &Graph, plan: Plan, grads: &[NodeId]| {
        let mut ex = Executor::with_plan(Counting(Rc::new(RefCell::new(Vec::new()))), g.clone(), plan, &ParamStore::new()).unwrap();
        ex.poison_arena().unwrap();
        let fd: Vec<(&str, &HostTensor)> = f.iter().map(|(n, t)| (n.as_str(), t)).collect();
        ex.run(&fd).unwrap();
        let ran = ex.backend().0.borrow().len();
        (grads.iter().map(|d| ex.get(*d).unwrap()).collect::<Vec<_>>(), ran)
    };
    let (a, ran_a) = run_grads(&ga, pa, &grads_a);
    let (b, ran_b) = run_grads(&gb, pb, &grads_b);
    assert_eq!(a, b, "gradients differ with recomputation");
    assert_eq!(ran_b, ran_a + copies, "each copy runs once, in addition to the forward");
}
