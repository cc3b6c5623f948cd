//! Helpers shared by the SD model tests (tests/sd_clip.rs, tests/sd_vae.rs).
#![allow(dead_code)]

use std::path::PathBuf;

use instagen::backend::Backend;
use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::graph::{Graph, NodeId};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::HostTensor;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

pub fn activations(name: &str) -> ParamStore {
    ParamStore::load_safetensors(&fixtures().join(name)).expect("fixture activations")
}

/// `max |got - want| / max |want|`: the largest error relative to the tensor's scale (elementwise relative
/// errors are meaningless where activations cross zero).
pub fn rel_max(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| if a.is_nan() { f32::INFINITY } else { m.max((a - b).abs()) });
    err / scale
}

/// Run `g` with `feed` on a backend and read back `outs` (always `Some`: every op has a kernel now, so any
/// failure, a missing kernel included, panics).
pub fn run_on<B: Backend>(backend: B, g: &Graph, store: &ParamStore, feed: &[(String, HostTensor)], outs: &[NodeId]) -> Option<Vec<HostTensor>> {
    let mut ex = Executor::new(backend, g.clone(), store).expect("executor");
    ex.poison_arena().expect("poison");
    let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    match ex.run(&feed) {
        Ok(()) => Some(outs.iter().map(|o| ex.get(*o).expect("get")).collect()),
        Err(e) => panic!("run: {e}"),
    }
}

pub fn run(backend: &str, g: &Graph, store: &ParamStore, feed: &[(String, HostTensor)], outs: &[NodeId]) -> Option<Vec<HostTensor>> {
    match backend {
        "cpu" => run_on(CpuBackend, g, store, feed, outs),
        "emu" => run_on(EmuBackend::new(), g, store, feed, outs),
        other => panic!("unknown backend {other}"),
    }
}

/// [`run`] on the CPU, which has every op.
pub fn run_cpu(g: &Graph, store: &ParamStore, feed: &[(String, HostTensor)], outs: &[NodeId]) -> Vec<HostTensor> {
    run("cpu", g, store, feed, outs).expect("the CPU backend has every op")
}
