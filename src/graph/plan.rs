//! The memory planner: every activation gets an offset in one arena, reusing the bytes of buffers that
//! are dead, and overwriting an input in place where the op allows it and nothing reads that input later.
//!
//! Pure and backend-independent: a plan is a function of the graph alone. A node whose kernels need scratch
//! memory (`ops::workspace_bytes`) gets a workspace buffer alive only during that node.

use super::{Graph, NodeId, Op};

/// Offsets (and their alignment) are multiples of this many bytes.
pub const ALIGN: usize = 256;

/// Where one node's output lives and for how long. Steps are positions in [`Plan::order`] (for a graph with
/// one stage, the node index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub node: NodeId,
    pub offset: usize,
    /// Bytes the tensor occupies (before alignment).
    pub bytes: usize,
    /// The step that writes it.
    pub first: usize,
    /// The last step that reads it (`usize::MAX` for graph outputs, which live to the end; the last step of
    /// its stage for a stage output).
    pub last: usize,
    /// The input whose bytes this node overwrites in place.
    pub inplace_of: Option<NodeId>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// Per node: its buffer, or `None` for parameters (which live in the parameter region) and for nodes the
    /// outputs do not need (they are not computed).
    pub buffers: Vec<Option<Buffer>>,
    /// Per node: its workspace (`first == last`, the node's step), for nodes that need one.
    pub workspaces: Vec<Option<Buffer>>,
    /// Execution order: every node, stably sorted by (stage, index); topological because a node's stage is at
    /// least its inputs' stages.
    pub order: Vec<NodeId>,
    /// Stage `k` runs `order[stage_starts[k]..stage_starts[k + 1]]` (`num_stages + 1` entries).
    pub stage_starts: Vec<usize>,
    /// Bytes of the arena.
    pub arena_bytes: usize,
    /// Bytes a plan without any reuse would need (every buffer its own aligned range).
    pub naive_bytes: usize,
}

fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN).max(1) * ALIGN
}

/// Nodes that the graph's outputs and stage outputs depend on.
pub fn needed(graph: &Graph) -> Vec<bool> {
    let mut need = vec![false; graph.len()];
    for o in graph.outputs().iter().chain(graph.stage_outputs()) {
        need[o.0] = true;
    }
    for i in (0..graph.len()).rev() {
        if need[i] {
            for inp in &graph.nodes()[i].inputs {
                need[inp.0] = true;
            }
        }
    }
    need
}

/// The execution order (stable sort by (stage, order key): index order, recomputed copies moved to just before
/// their first reader) and where each stage starts in it.
pub fn stage_order(graph: &Graph) -> (Vec<NodeId>, Vec<usize>) {
    let mut order: Vec<NodeId> = (0..graph.len()).map(NodeId).collect();
    order.sort_by_key(|&id| (graph.stage(id), graph.order_key(id))); // stable: copies in creation order
    let stages = graph.num_stages();
    let starts = (0..=stages).map(|k| order.partition_point(|&id| graph.stage(id) < k)).collect();
    (order, starts)
}

/// Per node, the last step (position in `order`) reading it: its own step if nobody reads it; `usize::MAX`
/// for outputs; at least the last step of its stage for a stage output.
fn last_uses(graph: &Graph, need: &[bool], pos: &[usize], starts: &[usize]) -> Vec<usize> {
    let mut last: Vec<usize> = pos.to_vec();
    for (i, n) in graph.nodes().iter().enumerate() {
        if need[i] {
            for inp in &n.inputs {
                last[inp.0] = last[inp.0].max(pos[i]);
            }
        }
    }
    for o in graph.stage_outputs() {
        last[o.0] = last[o.0].max(starts[graph.stage(*o) + 1] - 1);
    }
    for o in graph.outputs() {
        last[o.0] = usize::MAX;
    }
    last
}

/// A first-fit free list over `[0, end)` with coalescing.
#[derive(Default)]
struct FreeList {
    free: Vec<(usize, usize)>, // (offset, size), sorted by offset, never adjacent
    end: usize,
}

impl FreeList {
    fn alloc(&mut self, size: usize) -> usize {
        // Best fit: the smallest free block that holds `size`.
        let best = (self.free.iter().enumerate())
            .filter(|(_, (_, s))| *s >= size)
            .min_by_key(|(_, (_, s))| *s)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let (off, s) = self.free[i];
            if s == size {
                self.free.remove(i);
            } else {
                self.free[i] = (off + size, s - size);
            }
            return off;
        }
        // Grow the arena, absorbing a free block that ends at the top.
        if let Some(&(off, s)) = self.free.last() {
            if off + s == self.end {
                self.free.pop();
                self.end = off + size;
                return off;
            }
        }
        let off = self.end;
        self.end += size;
        off
    }

    fn release(&mut self, off: usize, size: usize) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, size));
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

impl Plan {
    /// Plan `graph` with reuse of dead buffers and in-place ops.
    pub fn new(graph: &Graph) -> Plan {
        Self::build(graph, true)
    }

    /// Every buffer in its own range: the baseline the planner is checked against.
    pub fn naive(graph: &Graph) -> Plan {
        Self::build(graph, false)
    }

    fn build(graph: &Graph, reuse: bool) -> Plan {
        let need = needed(graph);
        let (order, stage_starts) = stage_order(graph);
        let mut pos = vec![0; graph.len()];
        for (p, id) in order.iter().enumerate() {
            pos[id.0] = p;
        }
        let last = last_uses(graph, &need, &pos, &stage_starts);
        let nodes = graph.nodes();
        let mut buffers: Vec<Option<Buffer>> = vec![None; nodes.len()];
        let mut workspaces: Vec<Option<Buffer>> = vec![None; nodes.len()];
        let mut list = FreeList::default();
        let mut naive = 0;
        // Buffers that die at each step, released after that step's output is placed.
        let mut dying: Vec<Vec<NodeId>> = vec![Vec::new(); nodes.len()];
        for (p, &NodeId(i)) in order.iter().enumerate() {
            let n = &nodes[i];
            if !need[i] || matches!(n.op, Op::Param { .. }) {
                continue;
            }
            let size = aligned(n.bytes());
            naive += size;
            let donor = if reuse { inplace_donor(graph, i, &buffers, &last, &pos) } else { None };
            let offset = match donor {
                Some(d) => {
                    // The output takes over the donor's bytes; the donor no longer frees them.
                    dying[p].retain(|x| *x != d);
                    buffers[d.0].map_or(0, |b| b.offset)
                }
                None if reuse => list.alloc(size),
                None => {
                    list.end += size;
                    list.end - size
                }
            };
            buffers[i] = Some(Buffer { node: NodeId(i), offset, bytes: n.bytes(), first: p, last: last[i], inplace_of: donor });
            if last[i] != usize::MAX {
                // A buffer nobody reads dies at once; otherwise at its last reader.
                dying[last[i]].push(NodeId(i));
            }
            // The workspace: placed while the inputs and the output are live, released right after.
            let ws = crate::ops::workspace_bytes(graph, NodeId(i));
            if ws > 0 {
                let size = aligned(ws);
                naive += size;
                let offset = if reuse {
                    list.alloc(size)
                } else {
                    list.end += size;
                    list.end - size
                };
                workspaces[i] = Some(Buffer { node: NodeId(i), offset, bytes: ws, first: p, last: p, inplace_of: None });
                if reuse {
                    list.release(offset, size);
                }
            }
            if reuse {
                for d in std::mem::take(&mut dying[p]) {
                    if let Some(b) = buffers[d.0] {
                        list.release(b.offset, aligned(b.bytes));
                    }
                }
            }
        }
        Plan { buffers, workspaces, order, stage_starts, arena_bytes: list.end, naive_bytes: naive }
    }

    /// Node `id`'s workspace as (arena offset, bytes); (0, 0) when it has none.
    pub fn workspace(&self, id: NodeId) -> (usize, usize) {
        self.workspaces.get(id.0).copied().flatten().map_or((0, 0), |b| (b.offset, b.bytes))
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.stage_starts.len() - 1
    }

    /// The nodes of stage `k`, in execution order.
    pub fn stage_nodes(&self, k: usize) -> &[NodeId] {
        &self.order[self.stage_starts[k]..self.stage_starts[k + 1]]
    }

    /// The buffers, in node order.
    pub fn iter(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().flatten()
    }

    /// `planned X MiB (naive Y MiB)`.
    pub fn summary(&self) -> String {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        format!("planned {:.2} MiB (naive {:.2} MiB)", mib(self.arena_bytes), mib(self.naive_bytes))
    }
}

/// The input of node `i` whose buffer node `i` may overwrite: an elementwise op, an input of the same byte
/// size and shape that is an activation (not a parameter), read for the last time here, not a graph output,
/// not a stage output (the host reads it after the stage).
fn inplace_donor(graph: &Graph, i: usize, buffers: &[Option<Buffer>], last: &[usize], pos: &[usize]) -> Option<NodeId> {
    let n = &graph.nodes()[i];
    if !n.op.is_elementwise() {
        return None;
    }
    n.inputs.iter().copied().find(|&inp| {
        let src = graph.node(inp);
        let same_layout = src.dtype == n.dtype && (src.shape == n.shape || matches!(n.op, Op::Reshape { .. }));
        same_layout
            && last[inp.0] == pos[i]
            && buffers[inp.0].is_some()
            && !graph.stage_outputs().contains(&inp)
            && !matches!(src.op, Op::Param { .. })
            // A value read twice by this op (e.g. x * x) is fine: elementwise reads precede the write.
    })
}
