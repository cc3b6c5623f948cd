//! The InstaGen stages: the engine self-check, the kernel parity suite / benches, text to images (`sample`),
//! COCO evaluation (`eval`), the checks on what a run is given (`checks`), model-bench timing (`timing`) and
//! `instagen bench cpu` (`bench_cpu`: our CPU time next to PyTorch's).

pub mod bench_cpu;
pub mod checks;
pub mod detect;
pub mod eval;
pub mod finetune;
pub mod ground;
pub mod kernels;
pub mod sdtrain;
pub mod selfcheck;
pub mod sample;
pub mod timing;
pub mod txt2img;
