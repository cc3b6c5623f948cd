//! Helpers shared by the integration tests.
#![allow(dead_code)]

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{Executor, Graph, NodeId};
use instagen::params::ParamStore;
use instagen::tensor::HostTensor;

/// Run `g` on the CPU backend with `feed` and return the values of `outs` (which must be graph outputs).
pub fn run_cpu(g: &Graph, store: &ParamStore, feed: &[(&str, &HostTensor)], outs: &[NodeId]) -> Vec<HostTensor> {
    let mut ex = Executor::new(CpuBackend, g.clone(), store).expect("executor");
    ex.run(feed).expect("run");
    outs.iter().map(|o| ex.get(*o).expect("get")).collect()
}
