//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod generate;
pub mod rcnn_gen;
pub mod sd;

use std::path::PathBuf;

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{Graph, NodeId};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::HostTensor;

/// Run `g` on the CPU backend with `feed` and return the values of `outs` (which must be graph outputs).
pub fn run_cpu(g: &Graph, store: &ParamStore, feed: &[(&str, &HostTensor)], outs: &[NodeId]) -> Vec<HostTensor> {
    let mut ex = Executor::new(CpuBackend, g.clone(), store).expect("executor");
    ex.run(feed).expect("run");
    outs.iter().map(|o| ex.get(*o).expect("get")).collect()
}

/// `rel` inside the shared data folder: `$INSTAGEN_DATA`, else `../shared/data` beside the checkout, else
/// `/work/shared/data`. When it is absent the caller skips (returns early) after a `SKIP` line, unless
/// `INSTAGEN_REQUIRE_DATA=1` (set by tools/test.sh), which makes a missing data folder a test failure.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let roots = match std::env::var_os("INSTAGEN_DATA") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"), PathBuf::from("/work/shared/data")],
    };
    let found = roots.iter().map(|r| r.join(rel)).find(|p| p.exists());
    if found.is_none() {
        let msg = format!("no {rel} in the shared data folder (looked in {roots:?}; set INSTAGEN_DATA)");
        if std::env::var("INSTAGEN_REQUIRE_DATA").is_ok_and(|v| v == "1") {
            panic!("INSTAGEN_REQUIRE_DATA=1: {msg}");
        }
        println!("SKIP: {msg}");
    }
    found
}
