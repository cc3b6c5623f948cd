//! Kernel benches: every family's bench cases (SD-sized shapes) with their bytes or FLOPs, on the backend from
//! `INSTAGEN_BACKEND` (default: cuda when a GPU is present, else the CPU reference, whose figures are then
//! those of the Rust implementations). `instagen bench kernels` prints the same cases as one table with the
//! fraction of the device's ceiling.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use instagen::backend::cpu::CpuBackend;
use instagen::backend::cuda::CudaBackend;
use instagen::backend::emu::EmuBackend;
use instagen::backend::{Backend, BackendKind};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::parity::{self, random_tensor, Work};
use instagen::util::Rng;

fn bench_all<B: Backend + Clone>(c: &mut Criterion, backend: B) {
    let mut group = c.benchmark_group(format!("kernels_{}", backend.name()));
    group.sample_size(10);
    for (case, work) in parity::all_bench_cases() {
        let mut g = instagen::Graph::new();
        let mut store = ParamStore::new();
        let mut rng = Rng::new(1);
        let ids: Vec<_> = (case.inputs.iter().enumerate())
            .map(|(i, (s, d, how))| {
                store.insert(&format!("in{i}"), random_tensor(s, *d, *how, &mut rng).unwrap());
                g.param(&format!("in{i}"), s, *d).unwrap()
            })
            .collect();
        let out = (case.build)(&mut g, &ids).unwrap();
        g.mark_output(out);
        let Ok(mut ex) = Executor::new(backend.clone(), g, &store) else { continue };
        group.throughput(match work {
            Work::Bytes(b) => Throughput::Bytes(b),
            Work::Flops(f) => Throughput::Elements(f),
        });
        group.bench_function(&case.name, |b| {
            b.iter(|| {
                ex.run(&[]).unwrap();
                ex.backend().synchronize().unwrap();
            })
        });
    }
    // AdamW is not a graph op: time the backend's fused update directly (4 reads + 3 writes of 4 bytes/param).
    let n = parity::adamw::ADAMW_BENCH_NUMEL;
    if let Ok((mut mems, slot)) =
        parity::adamw::adamw_setup(&backend, n, instagen::DType::F32, instagen::DType::F32, false, &mut Rng::new(1))
    {
        let cfg = instagen::optim::AdamWConfig::default();
        group.throughput(Throughput::Bytes(28 * n as u64));
        let mut step = 0;
        group.bench_function(format!("adamw f32 [{n}]"), |b| {
            b.iter(|| {
                step += 1;
                backend.adamw(&slot, &cfg, step, 1.0, &mut mems).unwrap();
                backend.synchronize().unwrap();
            })
        });
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    match BackendKind::default_for_machine().unwrap_or(BackendKind::Cpu) {
        BackendKind::Cuda => bench_all(c, CudaBackend::new(0).unwrap()),
        BackendKind::Emu => bench_all(c, EmuBackend::new()),
        BackendKind::Cpu => bench_all(c, CpuBackend),
        BackendKind::CpuReference => bench_all(c, instagen::backend::cpu::CpuReference),
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
