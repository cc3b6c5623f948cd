//! Reverse-mode automatic differentiation: extends a graph with the nodes of its backward pass, so forward
//! and backward are planned and run as one graph.

use super::{Graph, NodeId};
use crate::error::{Error, Result};

/// Add the gradient of scalar `loss` with respect to each of `wrt` to the graph. A node that `loss` does not
/// depend on gets a zero gradient. Gradients have the shape and dtype of the node they belong to.
pub fn backward(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>> {
    if g.node(loss).numel() != 1 {
        return Err(Error::graph("backward", format!("loss must have one element, has shape {:?}", g.shape(loss))));
    }
    let n = loss.0 + 1;
    // Nodes on a path from some `wrt` to the loss.
    let mut from_wrt = vec![false; n];
    for w in wrt {
        if w.0 < n {
            from_wrt[w.0] = true;
        }
    }
    for i in 0..n {
        if !from_wrt[i] && g.nodes()[i].inputs.iter().any(|x| from_wrt[x.0]) {
            from_wrt[i] = true;
        }
    }
    let mut grads: Vec<Option<NodeId>> = vec![None; n];
    let (ls, ld) = (g.shape(loss).to_vec(), g.dtype(loss));
    grads[loss.0] = Some(g.fill(1.0, &ls, ld));
    for i in (0..n).rev() {
        let Some(dy) = grads[i] else { continue };
        if !from_wrt[i] {
            continue;
        }
        let node = g.node(NodeId(i)).clone();
        let needs: Vec<bool> = node.inputs.iter().map(|x| from_wrt[x.0]).collect();
        let dins = input_grads(g, NodeId(i), dy, &needs)?;
        for ((inp, need), d) in node.inputs.iter().zip(&needs).zip(dins) {
            if let (true, Some(d)) = (need, d) {
                grads[inp.0] = Some(match grads[inp.0] {
                    Some(acc) => g.add(acc, d)?,
                    None => d,
                });
            }
        }
    }
    wrt.iter()
        .map(|w| match grads.get(w.0).copied().flatten() {
            Some(d) => Ok(d),
            None => {
                let (s, d) = (g.shape(*w).to_vec(), g.dtype(*w));
                Ok(g.fill(0.0, &s, d))
            }
        })
        .collect()
}

/// Gradients of every parameter of the graph w.r.t. `loss`, as (name, node); the loss and the gradients are
/// marked as outputs so they survive the run.
pub fn param_grads(g: &mut Graph, loss: NodeId) -> Result<Vec<(String, NodeId)>> {
    param_grads_for(g, loss, |_| true)
}

/// As [`param_grads`] for the parameters `trainable` accepts only: the others are frozen and get no gradient
/// nodes at all (the backward pass stops where only frozen parameters lie behind a node).
pub fn param_grads_for(g: &mut Graph, loss: NodeId, trainable: impl Fn(&str) -> bool) -> Result<Vec<(String, NodeId)>> {
    let params: Vec<(NodeId, String)> =
        g.params().into_iter().filter(|(_, n)| trainable(n)).map(|(id, n)| (id, n.to_string())).collect();
    let ids: Vec<NodeId> = params.iter().map(|p| p.0).collect();
    let gs = backward(g, loss, &ids)?;
    g.mark_output(loss);
    for d in &gs {
        g.mark_output(*d);
    }
    Ok(params.into_iter().map(|p| p.1).zip(gs).collect())
}

/// Sum `grad` (shaped like a broadcast result) down to `shape`: the gradient of a broadcast.
pub fn sum_to_shape(g: &mut Graph, grad: NodeId, shape: &[usize]) -> Result<NodeId> {
    let gs = g.shape(grad).to_vec();
    if gs == shape {
        return Ok(grad);
    }
    let pad = gs.len() - shape.len().min(gs.len());
    let axes: Vec<usize> = (0..gs.len()).filter(|&a| a < pad || (shape[a - pad] == 1 && gs[a] != 1)).collect();
    let summed = if axes.is_empty() { grad } else { g.sum(grad, &axes, true)? };
    g.reshape(summed, shape)
}

/// Gradients of node `id`'s inputs given the gradient `dy` of its output (`None` where not needed): the
/// backward rule of the op's family (`ops/<family>/mod.rs`).
fn input_grads(g: &mut Graph, id: NodeId, dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let node = g.node(id).clone();
    crate::ops::backward(g, &node.op, id, &node.inputs, dy, needs)
}
