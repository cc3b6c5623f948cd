//! Graphs: nodes in topological order (a node's inputs always come before it), with shapes and dtypes
//! inferred and checked as each node is added. Models build graphs; backends run them.

pub mod autodiff;
pub mod plan;

/// The ops and their shape rules live in `crate::ops`; `graph::op` is the name graph code knew them by.
pub use crate::ops as op;

pub use crate::ops::{BinaryOp, Op, ReduceOp, UnaryOp};
pub use plan::Plan;

use crate::error::{Error, Result};
use crate::tensor::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Node {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// A static-shape computation graph.
///
/// Stages: an input may belong to a later stage ([`Graph::input_stage`]), fed only after the host has read
/// the outputs of the earlier stages ([`Graph::mark_stage_output`]). A node's stage is the largest stage of its
/// inputs (leaves: 0 unless declared), so a stage never reads a later one; the planner orders nodes by
/// (stage, index) and the executor runs one stage at a time (`Executor::run_stage`).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
    /// Per node: its stage.
    stages: Vec<usize>,
    /// Nodes read on the host after their stage runs (live until the end of their stage).
    stage_outputs: Vec<NodeId>,
    /// Recomputed copies ([`Graph::recompute`]): (copy, the node it runs just before).
    recomputed: std::collections::BTreeMap<NodeId, NodeId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.nodes[id.0].shape
    }
    pub fn dtype(&self, id: NodeId) -> DType {
        self.nodes[id.0].dtype
    }
    /// Nodes whose values must survive the run (read back after it).
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }
    pub fn mark_output(&mut self, id: NodeId) {
        if !self.outputs.contains(&id) {
            self.outputs.push(id);
        }
    }
    /// The stage node `id` runs in.
    pub fn stage(&self, id: NodeId) -> usize {
        self.stages[id.0]
    }
    /// Number of stages: one more than the largest stage of any node (1 for an unstaged graph).
    pub fn num_stages(&self) -> usize {
        self.stages.iter().max().map_or(1, |s| s + 1)
    }
    /// Order key within a stage: node `i` sorts at `2i + 1`; a recomputed copy just before the first node
    /// that reads it (`2 * anchor`), copies of one call in creation order.
    pub fn order_key(&self, id: NodeId) -> usize {
        match self.recomputed.get(&id) {
            Some(anchor) => 2 * anchor.0,
            None => 2 * id.0 + 1,
        }
    }

    /// Activation recomputation: the nodes at index `>= backward_from` (the backward pass, appended after the
    /// forward) stop reading the forward nodes `nodes` and read copies instead, computed just before the first
    /// of them runs. The forward values then die after their last forward reader; the copies live only in the
    /// backward. A copy reads the copies of the other nodes of `nodes` and the originals of everything else (the
    /// sub-graph's inputs stay alive until the copies run). Leaves, and nodes at or after `backward_from`, are
    /// refused. Returns the copies (in the order of `nodes`, which need not be sorted).
    pub fn recompute(&mut self, nodes: &[NodeId], backward_from: usize) -> Result<Vec<NodeId>> {
        let mut marked: Vec<NodeId> = nodes.to_vec();
        marked.sort();
        marked.dedup();
        for &id in &marked {
            if id.0 >= backward_from || id.0 >= self.nodes.len() || self.nodes[id.0].inputs.is_empty() {
                return Err(Error::graph(
                    format!("recompute node {}", id.0),
                    format!("must be a non-leaf forward node (index < {backward_from})"),
                ));
            }
        }
        // The first backward node that reads a marked node: every copy runs just before it. Copies of an
        // earlier call keep reading the originals (their anchor may come first).
        let readers: Vec<usize> = (backward_from..self.nodes.len())
            .filter(|&r| !self.recomputed.contains_key(&NodeId(r)))
            .filter(|&r| self.nodes[r].inputs.iter().any(|i| marked.binary_search(i).is_ok()))
            .collect();
        let Some(&anchor) = readers.first() else {
            return Ok(Vec::new()); // nothing in the backward reads them
        };
        let mut copy_of = std::collections::HashMap::new();
        for &id in &marked {
            let n = self.nodes[id.0].clone();
            let inputs: Vec<NodeId> = n.inputs.iter().map(|i| *copy_of.get(i).unwrap_or(i)).collect();
            let c = self.push(n.op, &inputs)?;
            self.recomputed.insert(c, NodeId(anchor));
            copy_of.insert(id, c);
        }
        for r in readers {
            for i in self.nodes[r].inputs.iter_mut() {
                if let Some(c) = copy_of.get(i) {
                    *i = *c;
                }
            }
        }
        Ok(nodes.iter().map(|i| copy_of[i]).collect())
    }

    /// Nodes read on the host between stages.
    pub fn stage_outputs(&self) -> &[NodeId] {
        &self.stage_outputs
    }
    /// Mark `id` to be read on the host after its stage has run (before the next stage runs): its buffer lives
    /// until the end of its stage. A graph output ([`mark_output`](Self::mark_output)) can be read at any time.
    pub fn mark_stage_output(&mut self, id: NodeId) {
        if !self.stage_outputs.contains(&id) {
            self.stage_outputs.push(id);
        }
    }
    /// The input node fed under `name`, if any.
    pub fn find_input(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| matches!(&n.op, Op::Input { name: m } if m == name)).map(NodeId)
    }
    /// Every parameter node with its name.
    pub fn params(&self) -> Vec<(NodeId, &str)> {
        (self.nodes.iter().enumerate())
            .filter_map(|(i, n)| match &n.op {
                Op::Param { name } => Some((NodeId(i), name.as_str())),
                _ => None,
            })
            .collect()
    }

    fn push_leaf(&mut self, op: Op, shape: &[usize], dtype: DType) -> NodeId {
        self.nodes.push(Node { op, inputs: vec![], shape: shape.to_vec(), dtype });
        self.stages.push(0);
        NodeId(self.nodes.len() - 1)
    }

    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<NodeId> {
        self.input_stage(name, shape, dtype, 0)
    }

    /// An input fed in stage `stage` (0 is the first): nodes that read it run in that stage or later.
    pub fn input_stage(&mut self, name: &str, shape: &[usize], dtype: DType, stage: usize) -> Result<NodeId> {
        if self.find_input(name).is_some() {
            return Err(Error::graph(format!("input '{name}'"), "an input with this name already exists"));
        }
        let id = self.push_leaf(Op::Input { name: name.into() }, shape, dtype);
        self.stages[id.0] = stage;
        Ok(id)
    }

    /// A parameter; the same name always gives the same node (weights are shared by name).
    pub fn param(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<NodeId> {
        if let Some((id, _)) = self.params().into_iter().find(|(_, n)| *n == name) {
            let node = self.node(id);
            if node.shape != shape || node.dtype != dtype {
                return Err(Error::graph(
                    format!("param '{name}'"),
                    format!("declared as {} {:?} and again as {dtype} {shape:?}", node.dtype, node.shape),
                ));
            }
            return Ok(id);
        }
        Ok(self.push_leaf(Op::Param { name: name.into() }, shape, dtype))
    }

    pub fn fill(&mut self, value: f32, shape: &[usize], dtype: DType) -> NodeId {
        self.push_leaf(Op::Fill { value }, shape, dtype)
    }

    /// Add a non-leaf node, inferring and checking its shape and dtype.
    pub fn push(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        if let Some(bad) = inputs.iter().find(|i| i.0 >= self.nodes.len()) {
            return Err(Error::graph(op.describe(), format!("input node {} does not exist", bad.0)));
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|i| self.nodes[i.0].shape.as_slice()).collect();
        let dtypes: Vec<DType> = inputs.iter().map(|i| self.nodes[i.0].dtype).collect();
        let (shape, dtype) = op::infer(&op, &shapes, &dtypes)?;
        self.stages.push(inputs.iter().map(|i| self.stages[i.0]).max().unwrap_or(0));
        self.nodes.push(Node { op, inputs: inputs.to_vec(), shape, dtype });
        Ok(NodeId(self.nodes.len() - 1))
    }

    // ---- builder conveniences -------------------------------------------------------------------------

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        self.push(Op::Unary(op), &[x])
    }
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Binary(op), &[a, b])
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Div, a, b)
    }
    /// `mul * x + add`.
    pub fn affine(&mut self, x: NodeId, mul: f32, add: f32) -> Result<NodeId> {
        self.unary(UnaryOp::Affine { mul, add }, x)
    }
    pub fn scale(&mut self, x: NodeId, s: f32) -> Result<NodeId> {
        self.affine(x, s, 0.0)
    }
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize], keepdim: bool) -> Result<NodeId> {
        self.push(Op::Reduce { op, axes: axes.to_vec(), keepdim }, &[x])
    }
    pub fn sum(&mut self, x: NodeId, axes: &[usize], keepdim: bool) -> Result<NodeId> {
        self.reduce(ReduceOp::Sum, x, axes, keepdim)
    }
    pub fn mean(&mut self, x: NodeId, axes: &[usize], keepdim: bool) -> Result<NodeId> {
        self.reduce(ReduceOp::Mean, x, axes, keepdim)
    }
    /// Sum of every element, as a tensor of shape `[]`.
    pub fn sum_all(&mut self, x: NodeId) -> Result<NodeId> {
        let axes: Vec<usize> = (0..self.shape(x).len()).collect();
        self.sum(x, &axes, false)
    }
    pub fn mean_all(&mut self, x: NodeId) -> Result<NodeId> {
        let axes: Vec<usize> = (0..self.shape(x).len()).collect();
        self.mean(x, &axes, false)
    }
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::MatMul { ta: false, tb: false }, &[a, b])
    }
    pub fn matmul_t(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> Result<NodeId> {
        self.push(Op::MatMul { ta, tb }, &[a, b])
    }
    pub fn softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        self.push(Op::Softmax { axis }, &[x])
    }
    pub fn layer_norm(&mut self, x: NodeId, weight: Option<(NodeId, NodeId)>, eps: f32) -> Result<NodeId> {
        match weight {
            Some((w, b)) => self.push(Op::LayerNorm { eps, affine: true }, &[x, w, b]),
            None => self.push(Op::LayerNorm { eps, affine: false }, &[x]),
        }
    }
    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> Result<NodeId> {
        self.push(Op::Reshape { shape: shape.to_vec() }, &[x])
    }
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        self.push(Op::Permute { perm: perm.to_vec() }, &[x])
    }
    pub fn broadcast_to(&mut self, x: NodeId, shape: &[usize]) -> Result<NodeId> {
        self.push(Op::BroadcastTo { shape: shape.to_vec() }, &[x])
    }
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        self.push(Op::Concat { axis }, xs)
    }
    pub fn slice(&mut self, x: NodeId, axis: usize, start: usize, end: usize) -> Result<NodeId> {
        self.push(Op::Slice { axis, start, end }, &[x])
    }
    pub fn pad(&mut self, x: NodeId, axis: usize, before: usize, after: usize) -> Result<NodeId> {
        self.push(Op::Pad { axis, before, after }, &[x])
    }
    /// `x` unchanged, with no gradient flowing back (PyTorch's `detach`).
    pub fn stop_gradient(&mut self, x: NodeId) -> Result<NodeId> {
        self.push(Op::StopGradient, &[x])
    }
    pub fn cast(&mut self, x: NodeId, dtype: DType) -> Result<NodeId> {
        self.push(Op::Cast { dtype }, &[x])
    }
}
